//! GetTaskStats: a task's statistics over a time window, read from rollups.

use sqlx::PgPool;

use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::{GetTaskStatsRequest, GetTaskStatsResponse};

pub(super) async fn get_task_stats(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: GetTaskStatsRequest,
) -> Result<GetTaskStatsResponse, ApiError> {
    Err(ApiError::unimplemented("GetTaskStats"))
}
