//! GetCall and GetCallDetail: one call, brief or with everything it refers to.
//!
//! Another tenant's call answers exactly like an unknown id: NOT_FOUND "call not found".

use sqlx::PgPool;

use crate::api::convert_read::{call_embed, call_to_proto, required_id};
use crate::db::calls_read::{self, CallEmbed};
use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::{GetCallDetailRequest, GetCallDetailResponse, GetCallRequest, GetCallResponse};

/// The brief record (BASIC: one statement) or with its tags and level (FULL).
pub(super) async fn get_call(
    pool: &PgPool,
    tenant: &TenantId,
    request: GetCallRequest,
) -> Result<GetCallResponse, ApiError> {
    let id = required_id(&request.call_id, "call_id")?;
    let embed = call_embed(request.view, "view")?;
    let call = calls_read::load_calls(pool, tenant, &[id], embed)
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound { resource: "call" })?;
    Ok(GetCallResponse {
        call: Some(call_to_proto(call)),
    })
}

/// The call with its dialogue, tags with groups, level, task with progress and latest quality
/// result.
pub(super) async fn get_call_detail(
    pool: &PgPool,
    tenant: &TenantId,
    request: GetCallDetailRequest,
) -> Result<GetCallDetailResponse, ApiError> {
    let id = required_id(&request.call_id, "call_id")?;
    let call = calls_read::load_calls(pool, tenant, &[id], CallEmbed::Detail)
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound { resource: "call" })?;
    Ok(GetCallDetailResponse {
        call: Some(call_to_proto(call)),
    })
}
