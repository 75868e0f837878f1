//! The webhook bridge: an optional HTTP listener where vendors push payloads directly,
//! `POST /hooks/{tenant}/{format}`. It runs the same code as `IngestVendorPayload` and answers
//! the vendor's success body only once everything in the payload is committed; any other answer
//! is an error status, so the vendor sends the payload again (re-deliveries are idempotent).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use crate::domain::TenantId;
use crate::error::ApiError;
use crate::ingest::group_commit::GroupCommitter;
use crate::ingest::payload::{PayloadOptions, ingest_payload};
use crate::proto::PayloadFormat;

/// Largest payload accepted.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The router of the webhook listener.
pub fn router(store: GroupCommitter) -> Router {
    Router::new()
        .route("/hooks/{tenant}/{format}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(store)
}

/// Optional query parameters, as on `IngestVendorPayloadRequest`.
#[derive(Debug, Default, Deserialize)]
struct HookQuery {
    source_system: Option<String>,
    time_zone: Option<String>,
    source_task_id: Option<String>,
}

/// How a vendor expects to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The plain text `SUCCESS` (hangup push, task API notify).
    PlainSuccess,
    /// `{"retCode":"0","retMsg":"success"}` (Huawei CEC).
    HuaweiJson,
}

/// The URL names of the formats.
fn format_of(name: &str) -> Option<(PayloadFormat, Reply)> {
    Some(match name {
        "hangup-push" => (PayloadFormat::HangupPush, Reply::PlainSuccess),
        "task-api-record" => (PayloadFormat::TaskApiRecord, Reply::PlainSuccess),
        "task-api-call-list" => (PayloadFormat::TaskApiCallList, Reply::PlainSuccess),
        "task-api-task-numbers" => (PayloadFormat::TaskApiTaskNumbers, Reply::PlainSuccess),
        "huawei-result" => (PayloadFormat::HuaweiResult, Reply::HuaweiJson),
        "huawei-qc" => (PayloadFormat::HuaweiQc, Reply::HuaweiJson),
        _ => return None,
    })
}

#[tracing::instrument(skip(store, query, body), fields(bytes = body.len()))]
async fn receive(
    State(store): State<GroupCommitter>,
    Path((tenant, format)): Path<(String, String)>,
    Query(query): Query<HookQuery>,
    body: Bytes,
) -> Response {
    let Some((format, reply)) = format_of(&format) else {
        return (StatusCode::NOT_FOUND, "unknown format").into_response();
    };
    let tenant = match TenantId::parse(&tenant) {
        Ok(tenant) => tenant,
        Err(description) => {
            return failure(
                reply,
                StatusCode::BAD_REQUEST,
                &format!("tenant {description}"),
            );
        }
    };
    let options = PayloadOptions {
        source_system: query.source_system,
        time_zone: query.time_zone,
        source_task_id: query.source_task_id,
    };
    match ingest_payload(&store, &tenant, format, &body, &options).await {
        Ok(ingested) if ingested.all_stored() => success(reply),
        Ok(_) => failure(
            reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "some items of the payload were not stored; send it again later",
        ),
        Err(error) => {
            let status = http_status(&error);
            let message = tonic::Status::from(error).message().to_owned();
            failure(reply, status, &message)
        }
    }
}

fn success(reply: Reply) -> Response {
    match reply {
        Reply::PlainSuccess => (StatusCode::OK, "SUCCESS").into_response(),
        Reply::HuaweiJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"retCode":"0","retMsg":"success"}"#,
        )
            .into_response(),
    }
}

fn failure(reply: Reply, status: StatusCode, message: &str) -> Response {
    match reply {
        Reply::PlainSuccess => (status, message.to_owned()).into_response(),
        Reply::HuaweiJson => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "retCode": "1", "retMsg": message }).to_string(),
        )
            .into_response(),
    }
}

fn http_status(error: &ApiError) -> StatusCode {
    match error {
        ApiError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
        ApiError::AlreadyExists(_) | ApiError::Aborted(_) => StatusCode::CONFLICT,
        ApiError::FailedPrecondition(_) | ApiError::CursorExpired(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ApiError::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unavailable(_) | ApiError::StreamEnded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        ApiError::Unimplemented { .. } => StatusCode::NOT_IMPLEMENTED,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
