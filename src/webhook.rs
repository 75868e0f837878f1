//! The webhook bridge: an optional HTTP listener where vendors push payloads directly,
//! `POST /hooks/{tenant}/{format}`, authenticated with a key of the tenant (or an operator
//! key) with the `ingest` scope: in `authorization: Bearer <key>`, in `x-api-key`, or, for
//! vendors that can only be given a URL, as a last path segment
//! (`/hooks/{tenant}/{format}/{key}`). It runs the same code as `IngestVendorPayload` and answers
//! the vendor's success body only once everything in the payload is committed; any other answer
//! is an error status, so the vendor sends the payload again (re-deliveries are idempotent).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use crate::auth::layer::AuthMode;
use crate::auth::{AuthError, Scope, authorize};
use crate::domain::TenantId;
use crate::error::ApiError;
use crate::ingest::group_commit::GroupCommitter;
use crate::ingest::payload::{PayloadOptions, ingest_payload};
use crate::limits::IngestRateLimiter;
use crate::proto::PayloadFormat;

/// Largest payload accepted.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What the webhook handlers share.
#[derive(Debug, Clone)]
pub struct HookState {
    pub store: GroupCommitter,
    pub auth: AuthMode,
    /// The tenants' ingest rate, shared with the gRPC ingest service; a payload takes one call
    /// of it, as IngestVendorPayload does.
    pub rate: IngestRateLimiter,
}

/// The router of the webhook listener.
pub fn router(store: GroupCommitter, auth: AuthMode, rate: IngestRateLimiter) -> Router {
    Router::new()
        .route("/hooks/{tenant}/{format}", post(receive))
        .route("/hooks/{tenant}/{format}/{key}", post(receive_with_key))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(HookState { store, auth, rate })
}

async fn receive_with_key(
    State(state): State<HookState>,
    Path((tenant, format, key)): Path<(String, String, String)>,
    query: Query<HookQuery>,
    body: Bytes,
) -> Response {
    handle(
        state,
        tenant,
        format,
        Some(key),
        HeaderMap::new(),
        query,
        body,
    )
    .await
}

async fn receive(
    State(state): State<HookState>,
    Path((tenant, format)): Path<(String, String)>,
    headers: HeaderMap,
    query: Query<HookQuery>,
    body: Bytes,
) -> Response {
    handle(state, tenant, format, None, headers, query, body).await
}

/// Authenticates a webhook for `tenant`: its key from the path or the headers.
async fn authenticate(
    auth: &AuthMode,
    tenant: &TenantId,
    path_key: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), AuthError> {
    let AuthMode::Keys(authenticator) = auth else {
        return Ok(());
    };
    let header_key = || {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.strip_prefix("Bearer "));
        bearer.or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|value| value.to_str().ok())
        })
    };
    let key = path_key.or_else(header_key).ok_or(AuthError::Missing)?;
    let principal = authenticator.key(key).await?;
    authorize(&principal, Scope::Ingest, Some(tenant.as_str()))?;
    Ok(())
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

#[tracing::instrument(skip(state, key, headers, query, body), fields(bytes = body.len()))]
async fn handle(
    state: HookState,
    tenant: String,
    format: String,
    key: Option<String>,
    headers: HeaderMap,
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
    if let Err(error) = authenticate(&state.auth, &tenant, key.as_deref(), &headers).await {
        let status = match error {
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        };
        return failure(reply, status, &error.to_string());
    }
    if let Err(retry_after) = state.rate.check(&tenant, 1) {
        tracing::info!(tenant = %tenant, retry_after_ms = retry_after.as_millis() as u64, "webhook over the tenant's ingest rate");
        let mut response = failure(
            reply,
            StatusCode::TOO_MANY_REQUESTS,
            "over the tenant's ingest rate; send it again later",
        );
        // Whole seconds, rounded up (RFC 9110).
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        if let Ok(value) = header::HeaderValue::from_str(&seconds.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let store = state.store;
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
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        ApiError::Unavailable(_) | ApiError::StreamEnded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        ApiError::Unimplemented { .. } => StatusCode::NOT_IMPLEMENTED,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
