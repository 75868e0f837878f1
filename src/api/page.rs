//! Paging of every list RPC (AIP-158): page sizes and opaque, versioned page tokens.
//!
//! A token carries the keyset position after the last item of a page (never an offset) and a
//! fingerprint of the query it belongs to: the tenant, the RPC and its validated filters and
//! order. A token presented with another query, or by another tenant, is refused with
//! INVALID_ARGUMENT instead of silently paging something else. The page size is not part of the
//! fingerprint: a client may change it between pages.
//!
//! Wire form: base64url (no padding) of `version byte ‖ 8-byte fingerprint ‖ JSON position`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use crate::domain::TenantId;
use crate::error::ApiError;

/// Version of the token layout; a token of another version is refused.
const TOKEN_VERSION: u8 = 1;

/// Tokens longer than this are refused before decoding.
const MAX_TOKEN_LEN: usize = 2048;

const FINGERPRINT_LEN: usize = 8;

/// Identifies the query a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// The fingerprint of `query` (its validated filters and order) for `rpc` of `tenant`.
    pub fn of(tenant: &TenantId, rpc: &str, query: &impl Serialize) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(tenant.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(rpc.as_bytes());
        hasher.update([0]);
        // Serializing plain data structs to JSON cannot fail; an empty body would only make
        // tokens of such queries interchangeable, never wrong.
        hasher.update(serde_json::to_vec(query).unwrap_or_default());
        let digest = hasher.finalize();
        let mut bytes = [0; FINGERPRINT_LEN];
        bytes.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Self(bytes)
    }
}

/// Encodes the position after the last item of a page.
pub fn encode_token<P: Serialize>(fingerprint: Fingerprint, position: &P) -> String {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&fingerprint.0);
    bytes.extend(serde_json::to_vec(position).unwrap_or_default());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a token of the query `fingerprint`; `None` for an empty token (the first page).
/// `field` names the request field in the violation (`page_token`).
pub fn decode_token<P: DeserializeOwned>(
    token: &str,
    fingerprint: Fingerprint,
    field: &str,
) -> Result<Option<P>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || {
        ApiError::invalid_field(
            field,
            "is not a page token of this service: pass next_page_token from the previous \
             response unchanged",
        )
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    let (&version, rest) = bytes.split_first().ok_or_else(malformed)?;
    if version != TOKEN_VERSION || rest.len() < FINGERPRINT_LEN {
        return Err(malformed());
    }
    let (issued_for, position) = rest.split_at(FINGERPRINT_LEN);
    if issued_for != fingerprint.0 {
        return Err(ApiError::invalid_field(
            field,
            "was issued for a different query: keep the filters and order of the first page, \
             or start again without a page token",
        ));
    }
    serde_json::from_slice(position)
        .map(Some)
        .map_err(|_| malformed())
}

/// A validated page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// `requested` as AIP-158 reads it: 0 means `default`, above `max` is coerced to `max`,
    /// negative is INVALID_ARGUMENT on `field`.
    pub fn parse(requested: i32, default: u32, max: u32, field: &str) -> Result<Self, ApiError> {
        match u32::try_from(requested) {
            Err(_) => Err(ApiError::invalid_field(field, "must not be negative")),
            Ok(0) => Ok(Self(default)),
            Ok(size) => Ok(Self(size.min(max))),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The LIMIT that also tells whether another page follows: one row more than the page.
    pub fn probe_limit(self) -> i64 {
        i64::from(self.0) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    #[test]
    fn a_token_round_trips_for_the_same_query() {
        let fingerprint = Fingerprint::of(&tenant("acme"), "ListCalls", &("task", 3));
        let token = encode_token(fingerprint, &(1_700_000_000_i64, "id-1"));
        let position: Option<(i64, String)> =
            decode_token(&token, fingerprint, "page_token").unwrap();
        assert_eq!(position, Some((1_700_000_000, "id-1".to_owned())));
    }

    #[test]
    fn an_empty_token_is_the_first_page() {
        let fingerprint = Fingerprint::of(&tenant("acme"), "ListCalls", &());
        let position: Option<i64> = decode_token("", fingerprint, "page_token").unwrap();
        assert_eq!(position, None);
    }

    #[test]
    fn a_token_of_another_query_or_tenant_is_refused() {
        let mine = Fingerprint::of(&tenant("acme"), "ListCalls", &("task", 3));
        let token = encode_token(mine, &42);
        for other in [
            Fingerprint::of(&tenant("acme"), "ListCalls", &("task", 4)),
            Fingerprint::of(&tenant("other"), "ListCalls", &("task", 3)),
            Fingerprint::of(&tenant("acme"), "ListTasks", &("task", 3)),
        ] {
            let error = decode_token::<i64>(&token, other, "page_token").unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert!(
                format!("{error:?}").contains("different query"),
                "{error:?}"
            );
        }
    }

    #[test]
    fn garbage_tokens_are_invalid_arguments_not_panics() {
        let fingerprint = Fingerprint::of(&tenant("acme"), "ListCalls", &());
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        for token in [
            "!!!",
            "AA",
            "AQ",
            long.as_str(),
            &encode_token(fingerprint, &"text"),
        ] {
            let error = decode_token::<i64>(token, fingerprint, "page_token").unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{token}");
        }
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(PageSize::parse(0, 15, 1000, "page_size").unwrap().get(), 15);
        assert_eq!(
            PageSize::parse(50, 15, 1000, "page_size").unwrap().get(),
            50
        );
        assert_eq!(
            PageSize::parse(5000, 15, 1000, "page_size").unwrap().get(),
            1000
        );
        assert_eq!(
            PageSize::parse(50, 15, 1000, "page_size")
                .unwrap()
                .probe_limit(),
            51
        );
        assert!(PageSize::parse(-1, 15, 1000, "page_size").is_err());
    }
}
