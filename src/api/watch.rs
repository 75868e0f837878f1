//! `callstore.v1.WatchService`: the request is validated here into a [`WatchRequest`]; the
//! stream itself is the feed's (`crate::feed`).

use std::time::Duration;

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};
use tower::Service;
use tracing::Instrument as _;

use crate::api::convert_read::call_embed;
use crate::api::query_calls::Check;
use crate::api::tenant_of;
use crate::domain::TenantId;
use crate::error::{ApiError, FieldViolation};
use crate::feed::Hub;
use crate::feed::cursor::Cursor;
use crate::feed::event::WatchFilter;
use crate::feed::subscription::{self, Start, WatchRequest, WatchStream};
use crate::feed::wire::{Outgoing, WatchCodec};
use crate::proto::watch_calls_request::Start as ProtoStart;
use crate::proto::{CallEventKind, CallOutcome, WatchCallsRequest};

/// Shortest and longest heartbeat interval a request may ask for.
const HEARTBEAT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

/// Implements `callstore.v1.WatchService` over the replica's feed hub.
///
/// Served by hand rather than through the generated server: the generated one encodes every
/// message with prost, once per stream, while the tailer has already encoded each event once for
/// all streams ([`WatchCodec`] writes those bytes as they are). The routing and the status
/// handling are tonic's own (`tonic::server::Grpc`), as in the generated code.
#[derive(Clone)]
pub struct WatchApi {
    hub: Hub,
}

impl WatchApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }

    async fn watch_calls(
        &self,
        request: Request<WatchCallsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tracing::field::display(&tenant));
        let request = watch_request(
            tenant,
            request.get_ref(),
            self.hub.settings().heartbeat_interval,
        )?;
        let stream = subscription::watch(&self.hub, request).await?;
        // The gauge of open streams goes down when the stream is dropped.
        let open = crate::metrics::global().stream_opened();
        let stream: WatchStream = Box::pin(futures::StreamExt::map(stream, move |item| {
            let _open = &open;
            item
        }));
        Ok(Response::new(stream))
    }
}

/// The path of the one RPC.
const WATCH_CALLS: &str = "/callstore.v1.WatchService/WatchCalls";

impl NamedService for WatchApi {
    const NAME: &'static str = "callstore.v1.WatchService";
}

impl<B> Service<http::Request<B>> for WatchApi
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_CALLS {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = WatchCalls(self.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WatchCodec);
            Ok(grpc.server_streaming(method, request).await)
        })
    }
}

struct WatchCalls(WatchApi);

impl ServerStreamingService<WatchCallsRequest> for WatchCalls {
    type Response = Outgoing;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<'static, Result<Response<WatchStream>, Status>>;

    fn call(&mut self, request: Request<WatchCallsRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(
            async move { api.watch_calls(request).await }.instrument(tracing::info_span!(
                "watch_calls",
                tenant = tracing::field::Empty
            )),
        )
    }
}

/// The validated request; every violation is reported at once.
pub fn watch_request(
    tenant: TenantId,
    request: &WatchCallsRequest,
    default_heartbeat: Duration,
) -> Result<WatchRequest, ApiError> {
    let mut violations: Vec<FieldViolation> = Vec::new();
    let filter = request.filter.clone().unwrap_or_default();
    let mut check = Check {
        violations: &mut violations,
    };
    let task_ids = check.uuids("filter.task_ids", &filter.task_ids);
    let tag_ids = check.uuids("filter.tag_ids", &filter.tag_ids);
    let level_ids = check.uuids("filter.level_ids", &filter.level_ids);
    let score = filter
        .score_range
        .as_ref()
        .map(|range| check.range("filter.score_range", range, false));
    let outcomes = check.enums::<CallOutcome>("filter.outcomes", &filter.outcomes);
    let kinds = check.enums::<CallEventKind>("filter.kinds", &filter.kinds);
    for (index, &kind) in filter.kinds.iter().enumerate() {
        if !is_event_kind(kind) {
            check.violation(
                &format!("filter.kinds[{index}]"),
                "must be CALL_CREATED, CALL_UPDATED, CALL_COMPLETED, TURN_APPENDED or QUALITY_ADDED",
            );
        }
    }
    let view = match call_embed(request.view, "view") {
        Ok(view) => Some(view),
        Err(error) => {
            match error {
                ApiError::InvalidArgument(mut refused) => check.violations.append(&mut refused),
                other => check.violation("view", other.to_string()),
            }
            None
        }
    };
    let heartbeat_interval = match &request.heartbeat_interval {
        None => default_heartbeat,
        Some(interval) => match Duration::try_from(*interval) {
            Ok(interval) if (HEARTBEAT_RANGE.0..=HEARTBEAT_RANGE.1).contains(&interval) => interval,
            _ => {
                check.violation("heartbeat_interval", "must be from 100 ms to 1 hour");
                default_heartbeat
            }
        },
    };
    let start = match &request.start {
        None => {
            check.violation("start", "is required: from_cursor, from_now or snapshot");
            None
        }
        Some(ProtoStart::FromCursor(text)) => match Cursor::decode(text, &tenant) {
            Ok(cursor) => Some(Start::After(cursor)),
            Err(description) => {
                check.violation("from_cursor", description);
                None
            }
        },
        Some(ProtoStart::FromNow(true)) => Some(Start::Now),
        Some(ProtoStart::Snapshot(true)) => Some(Start::Snapshot),
        Some(ProtoStart::FromNow(false)) => {
            check.violation("from_now", "must be true when set");
            None
        }
        Some(ProtoStart::Snapshot(false)) => {
            check.violation("snapshot", "must be true when set");
            None
        }
    };
    match (start, view) {
        (Some(start), Some(view)) if violations.is_empty() => Ok(WatchRequest {
            tenant,
            filter: WatchFilter {
                task_ids,
                tag_ids,
                level_ids,
                score,
                outcomes,
                kinds,
            },
            start,
            view,
            heartbeat_interval,
        }),
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

fn is_event_kind(kind: i32) -> bool {
    matches!(
        CallEventKind::try_from(kind),
        Ok(CallEventKind::CallCreated
            | CallEventKind::CallUpdated
            | CallEventKind::CallCompleted
            | CallEventKind::TurnAppended
            | CallEventKind::QualityAdded)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::cursor::Position;
    use crate::proto::{Int64Range, WatchFilter as ProtoFilter};

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("valid tenant")
    }

    fn fields(error: ApiError) -> Vec<String> {
        match error {
            ApiError::InvalidArgument(violations) => violations
                .into_iter()
                .map(|violation| violation.field)
                .collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_request_becomes_a_watch_request() {
        let cursor = Cursor::at(Position { tx: 900, id: 12 });
        let request = WatchCallsRequest {
            filter: Some(ProtoFilter {
                task_ids: vec!["0193a4a5-7a70-7cc2-9c45-2a5b7c0e2d11".to_owned()],
                score_range: Some(Int64Range {
                    min: Some(60),
                    max: None,
                }),
                kinds: vec![CallEventKind::TurnAppended as i32],
                ..ProtoFilter::default()
            }),
            start: Some(ProtoStart::FromCursor(cursor.encode(&tenant()))),
            view: 2,
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        };
        let watch = watch_request(tenant(), &request, Duration::from_secs(5)).expect("valid");
        assert_eq!(watch.start, Start::After(cursor));
        assert_eq!(watch.filter.task_ids.len(), 1);
        assert_eq!(watch.filter.kinds, [CallEventKind::TurnAppended as i16]);
        assert_eq!(watch.heartbeat_interval, Duration::from_secs(1));
    }

    #[test]
    fn every_bad_field_is_named() {
        let request = WatchCallsRequest {
            filter: Some(ProtoFilter {
                task_ids: vec!["nope".to_owned()],
                kinds: vec![CallEventKind::Heartbeat as i32, 99],
                score_range: Some(Int64Range {
                    min: Some(5),
                    max: Some(5),
                }),
                ..ProtoFilter::default()
            }),
            start: None,
            view: 7,
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000_000,
            }),
        };
        let mut named =
            fields(watch_request(tenant(), &request, Duration::from_secs(5)).unwrap_err());
        named.sort();
        assert_eq!(
            named,
            [
                "filter.kinds[0]",
                "filter.kinds[1]",
                "filter.kinds[1]",
                "filter.score_range",
                "filter.task_ids[0]",
                "heartbeat_interval",
                "start",
                "view",
            ]
        );
    }

    #[test]
    fn a_cursor_of_another_tenant_is_refused() {
        let other = TenantId::parse("globex").expect("valid tenant");
        let request = WatchCallsRequest {
            start: Some(ProtoStart::FromCursor(
                Cursor::at(Position { tx: 5, id: 1 }).encode(&other),
            )),
            ..WatchCallsRequest::default()
        };
        assert_eq!(
            fields(watch_request(tenant(), &request, Duration::from_secs(5)).unwrap_err()),
            ["from_cursor"]
        );
    }
}
