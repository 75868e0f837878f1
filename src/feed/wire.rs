//! Messages of WatchCalls as the wire carries them: encoded once, shared by every stream.
//!
//! An event goes to every stream of its tenant that wants it. Encoding it per stream (and
//! cloning the record to do so) cost most of the server's time at 100 streams, so the tailer
//! encodes each event once per view and the streams send those bytes. A stream whose cursor
//! differs from the shared one (it still skips what its snapshot saw) appends its own `cursor`
//! field: of a repeated scalar field protobuf keeps the last value.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::proto::{WatchCallsRequest, WatchCallsResponse};

/// Field number of `WatchCallsResponse.cursor`.
const CURSOR_FIELD: u32 = 2;

/// One encoded `WatchCallsResponse`, and the cursor it carries.
#[derive(Debug, Clone)]
pub struct Outgoing {
    body: Bytes,
    /// Replaces the cursor encoded in `body`.
    cursor_override: Option<Arc<str>>,
    cursor: Arc<str>,
}

impl Outgoing {
    /// Encodes a message of one stream (a heartbeat, a snapshot message).
    pub fn encode(message: &WatchCallsResponse) -> Self {
        Self {
            body: Bytes::from(message.encode_to_vec()),
            cursor_override: None,
            cursor: Arc::from(message.cursor.as_str()),
        }
    }

    /// A shared encoded event with the cursor it carries.
    pub fn shared(body: Bytes, cursor: Arc<str>) -> Self {
        Self {
            body,
            cursor_override: None,
            cursor,
        }
    }

    /// The same message with another cursor.
    pub fn with_cursor(mut self, cursor: Arc<str>) -> Self {
        self.cursor_override = Some(cursor.clone());
        self.cursor = cursor;
        self
    }

    /// The cursor the client will read from this message (empty on snapshot messages).
    pub fn cursor(&self) -> &Arc<str> {
        &self.cursor
    }

    fn write_to(&self, buffer: &mut impl bytes::BufMut) {
        buffer.put_slice(&self.body);
        if let Some(cursor) = &self.cursor_override {
            encode_key(CURSOR_FIELD, WireType::LengthDelimited, buffer);
            encode_varint(cursor.len() as u64, buffer);
            buffer.put_slice(cursor.as_bytes());
        }
    }
}

/// Decodes `WatchCallsRequest`s with prost and writes [`Outgoing`] bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = Outgoing;
    type Decode = WatchCallsRequest;
    type Encoder = OutgoingEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

#[derive(Debug)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, destination: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write_to(destination);
        Ok(())
    }
}

#[derive(Debug)]
pub struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = WatchCallsRequest;
    type Error = Status;

    fn decode(&mut self, source: &mut DecodeBuf<'_>) -> Result<Option<WatchCallsRequest>, Status> {
        WatchCallsRequest::decode(source)
            .map(Some)
            .map_err(|error| Status::internal(format!("cannot decode the request: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_bytes(outgoing: &Outgoing) -> Bytes {
        let mut buffer = bytes::BytesMut::new();
        outgoing.write_to(&mut buffer);
        buffer.freeze()
    }

    #[test]
    fn a_cursor_appended_to_shared_bytes_wins() {
        let message = WatchCallsResponse {
            kind: 1,
            cursor: "shared".to_owned(),
            call_id: "0193".to_owned(),
            call_version: 4,
            ..WatchCallsResponse::default()
        };
        let shared = Outgoing::shared(Bytes::from(message.encode_to_vec()), Arc::from("shared"));
        let decoded = WatchCallsResponse::decode(to_bytes(&shared)).expect("decodes");
        assert_eq!(decoded, message);

        let own = shared.with_cursor(Arc::from("own"));
        assert_eq!(&**own.cursor(), "own");
        let decoded = WatchCallsResponse::decode(to_bytes(&own)).expect("decodes");
        assert_eq!(
            decoded,
            WatchCallsResponse {
                cursor: "own".to_owned(),
                ..message
            }
        );
    }
}
