//! ListCalls: filtered, ordered, keyset-paged call lists.

use sqlx::PgPool;

use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::{ListCallsRequest, ListCallsResponse};

pub(super) async fn list_calls(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: ListCallsRequest,
) -> Result<ListCallsResponse, ApiError> {
    Err(ApiError::unimplemented("ListCalls"))
}
