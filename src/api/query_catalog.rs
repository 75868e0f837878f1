//! Tasks with progress, task numbers with attempts, tags, tag groups and levels.

use sqlx::PgPool;

use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::{
    GetTaskRequest, GetTaskResponse, ListLevelsRequest, ListLevelsResponse, ListTagGroupsRequest,
    ListTagGroupsResponse, ListTagsRequest, ListTagsResponse, ListTaskNumbersRequest,
    ListTaskNumbersResponse, ListTasksRequest, ListTasksResponse,
};

pub(super) async fn list_task_numbers(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: ListTaskNumbersRequest,
) -> Result<ListTaskNumbersResponse, ApiError> {
    Err(ApiError::unimplemented("ListTaskNumbers"))
}

pub(super) async fn get_task(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: GetTaskRequest,
) -> Result<GetTaskResponse, ApiError> {
    Err(ApiError::unimplemented("GetTask"))
}

pub(super) async fn list_tasks(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: ListTasksRequest,
) -> Result<ListTasksResponse, ApiError> {
    Err(ApiError::unimplemented("ListTasks"))
}

pub(super) async fn list_tags(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: ListTagsRequest,
) -> Result<ListTagsResponse, ApiError> {
    Err(ApiError::unimplemented("ListTags"))
}

pub(super) async fn list_tag_groups(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: ListTagGroupsRequest,
) -> Result<ListTagGroupsResponse, ApiError> {
    Err(ApiError::unimplemented("ListTagGroups"))
}

pub(super) async fn list_levels(
    _pool: &PgPool,
    _tenant: &TenantId,
    _request: ListLevelsRequest,
) -> Result<ListLevelsResponse, ApiError> {
    Err(ApiError::unimplemented("ListLevels"))
}
