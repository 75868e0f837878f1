//! GetCall and GetCallDetail: one call, brief or with everything it refers to.

use sqlx::PgPool;

use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::{GetCallDetailRequest, GetCallDetailResponse, GetCallRequest, GetCallResponse};

pub(super) async fn get_call(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: GetCallRequest,
) -> Result<GetCallResponse, ApiError> {
    Err(ApiError::unimplemented("GetCall"))
}

pub(super) async fn get_call_detail(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: GetCallDetailRequest,
) -> Result<GetCallDetailResponse, ApiError> {
    Err(ApiError::unimplemented("GetCallDetail"))
}
