//! Tasks with progress, task numbers with attempts, tags, tag groups and levels.
//!
//! Every list is keyset-paged with the tokens of `page.rs`: a token names the position after
//! the last item of its page and the query it belongs to (tenant, RPC, validated filters).
//! Orders: tasks newest first (`create_time DESC, id DESC`); numbers by number; tags, tag groups
//! and levels by `(source_system, source id)`, their key within the tenant.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::convert_read::{
    level_to_proto, optional_id, required_id, tag_group_to_proto, tag_to_proto,
    task_number_to_proto, task_to_proto,
};
use crate::api::page::{Fingerprint, PageSize, decode_token, encode_token};
use crate::db::catalog_read::{self, AttemptRow, NumberFilter};
use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::{
    Carrier, GetTaskRequest, GetTaskResponse, ListLevelsRequest, ListLevelsResponse,
    ListTagGroupsRequest, ListTagGroupsResponse, ListTagsRequest, ListTagsResponse,
    ListTaskNumbersRequest, ListTaskNumbersResponse, ListTasksRequest, ListTasksResponse,
    NumberStatus,
};

const TASKS_PAGE: (u32, u32) = (15, 1000);
const NUMBERS_PAGE: (u32, u32) = (15, 1000);
const CATALOG_PAGE: (u32, u32) = (100, 1000);

/// Longest number keyword accepted, in characters.
const MAX_KEYWORD_CHARS: usize = 64;

/// Position after a tag, tag group or level: its `(source_system, source id)`.
type SourceKeyPosition = (String, String);

pub(super) async fn list_task_numbers(
    pool: &PgPool,
    tenant: &TenantId,
    request: ListTaskNumbersRequest,
) -> Result<ListTaskNumbersResponse, ApiError> {
    let task_id = required_id(&request.task_id, "task_id")?;
    let statuses: Vec<NumberStatus> = enum_filter(&request.statuses, "statuses")?;
    let carriers: Vec<Carrier> = enum_filter(&request.carriers, "carriers")?;
    let keyword = request.number_keyword.trim();
    if keyword.chars().count() > MAX_KEYWORD_CHARS {
        return Err(ApiError::invalid_field(
            "number_keyword",
            format!("must be at most {MAX_KEYWORD_CHARS} characters"),
        ));
    }
    let page_size = page_size(request.page_size, NUMBERS_PAGE)?;
    let filter = NumberFilter {
        task_id,
        statuses,
        carriers,
        number_keyword: (!keyword.is_empty()).then(|| keyword.to_owned()),
    };
    let fingerprint = Fingerprint::of(tenant, "ListTaskNumbers", &filter);
    let after: Option<String> = decode_token(&request.page_token, fingerprint, "page_token")?;

    if !catalog_read::task_exists(pool, tenant, task_id).await? {
        return Err(ApiError::NotFound { resource: "task" });
    }
    let rows = catalog_read::list_task_numbers(
        pool,
        tenant,
        &filter,
        after.as_deref(),
        page_size.probe_limit(),
    )
    .await?;
    let (rows, next_page_token) = page(rows, page_size, fingerprint, |row| row.number.clone());

    let mut attempts: HashMap<Uuid, Vec<AttemptRow>> = HashMap::new();
    if request.include_attempts {
        let number_ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        for attempt in catalog_read::attempts_of(pool, tenant, &number_ids).await? {
            attempts
                .entry(attempt.task_number_id)
                .or_default()
                .push(attempt);
        }
    }
    let numbers = rows
        .into_iter()
        .map(|row| {
            let attempts = attempts.remove(&row.id).unwrap_or_default();
            task_number_to_proto(row, attempts)
        })
        .collect();
    Ok(ListTaskNumbersResponse {
        numbers,
        next_page_token,
    })
}

pub(super) async fn get_task(
    pool: &PgPool,
    tenant: &TenantId,
    request: GetTaskRequest,
) -> Result<GetTaskResponse, ApiError> {
    let task_id = required_id(&request.task_id, "task_id")?;
    let mut connection = crate::db::begin(pool, tenant).await?;
    let task = catalog_read::tasks_by_ids(&mut connection, tenant, &[task_id])
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound { resource: "task" })?;
    Ok(GetTaskResponse {
        task: Some(task_to_proto(task)),
    })
}

pub(super) async fn list_tasks(
    pool: &PgPool,
    tenant: &TenantId,
    request: ListTasksRequest,
) -> Result<ListTasksResponse, ApiError> {
    let page_size = page_size(request.page_size, TASKS_PAGE)?;
    let fingerprint = Fingerprint::of(tenant, "ListTasks", &());
    let after: Option<(DateTime<Utc>, Uuid)> =
        decode_token(&request.page_token, fingerprint, "page_token")?;
    let rows = catalog_read::list_tasks(pool, tenant, after, page_size.probe_limit()).await?;
    let (rows, next_page_token) = page(rows, page_size, fingerprint, |row| {
        (row.create_time, row.id)
    });
    Ok(ListTasksResponse {
        tasks: rows.into_iter().map(task_to_proto).collect(),
        next_page_token,
    })
}

pub(super) async fn list_tags(
    pool: &PgPool,
    tenant: &TenantId,
    request: ListTagsRequest,
) -> Result<ListTagsResponse, ApiError> {
    let group = optional_id(&request.tag_group_id, "tag_group_id")?;
    let page_size = page_size(request.page_size, CATALOG_PAGE)?;
    let fingerprint = Fingerprint::of(tenant, "ListTags", &group);
    let after: Option<SourceKeyPosition> =
        decode_token(&request.page_token, fingerprint, "page_token")?;
    let rows =
        catalog_read::list_tags(pool, tenant, group, after.as_ref(), page_size.probe_limit())
            .await?;
    let (rows, next_page_token) = page(rows, page_size, fingerprint, |row| {
        (row.source_system.clone(), row.source_tag_id.clone())
    });
    Ok(ListTagsResponse {
        tags: rows.into_iter().map(tag_to_proto).collect(),
        next_page_token,
    })
}

pub(super) async fn list_tag_groups(
    pool: &PgPool,
    tenant: &TenantId,
    request: ListTagGroupsRequest,
) -> Result<ListTagGroupsResponse, ApiError> {
    let page_size = page_size(request.page_size, CATALOG_PAGE)?;
    let fingerprint = Fingerprint::of(tenant, "ListTagGroups", &());
    let after: Option<SourceKeyPosition> =
        decode_token(&request.page_token, fingerprint, "page_token")?;
    let rows = catalog_read::list_tag_groups(pool, tenant, after.as_ref(), page_size.probe_limit())
        .await?;
    let (rows, next_page_token) = page(rows, page_size, fingerprint, |row| {
        (row.source_system.clone(), row.source_tag_group_id.clone())
    });
    Ok(ListTagGroupsResponse {
        tag_groups: rows.into_iter().map(tag_group_to_proto).collect(),
        next_page_token,
    })
}

pub(super) async fn list_levels(
    pool: &PgPool,
    tenant: &TenantId,
    request: ListLevelsRequest,
) -> Result<ListLevelsResponse, ApiError> {
    let page_size = page_size(request.page_size, CATALOG_PAGE)?;
    let fingerprint = Fingerprint::of(tenant, "ListLevels", &());
    let after: Option<SourceKeyPosition> =
        decode_token(&request.page_token, fingerprint, "page_token")?;
    let rows =
        catalog_read::list_levels(pool, tenant, after.as_ref(), page_size.probe_limit()).await?;
    let (rows, next_page_token) = page(rows, page_size, fingerprint, |row| {
        (row.source_system.clone(), row.source_level_id.clone())
    });
    Ok(ListLevelsResponse {
        levels: rows.into_iter().map(level_to_proto).collect(),
        next_page_token,
    })
}

fn page_size(requested: i32, (default, max): (u32, u32)) -> Result<PageSize, ApiError> {
    PageSize::parse(requested, default, max, "page_size")
}

/// The page out of rows fetched with `page_size.probe_limit()`, and the token of the next page
/// (empty on the last one), made from the position of the page's last row.
fn page<T, P: Serialize>(
    mut rows: Vec<T>,
    page_size: PageSize,
    fingerprint: Fingerprint,
    position: impl Fn(&T) -> P,
) -> (Vec<T>, String) {
    let size = usize::try_from(page_size.get()).unwrap_or(usize::MAX);
    if rows.len() <= size {
        return (rows, String::new());
    }
    rows.truncate(size);
    let token = rows
        .last()
        .map(|last| encode_token(fingerprint, &position(last)))
        .unwrap_or_default();
    (rows, token)
}

/// The values of a repeated enum filter, each defined (else INVALID_ARGUMENT on `field[i]`),
/// sorted and without repeats so that equal filters have equal fingerprints.
fn enum_filter<E>(values: &[i32], field: &str) -> Result<Vec<E>, ApiError>
where
    E: TryFrom<i32> + Ord,
{
    let mut parsed = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let value = E::try_from(*value).map_err(|_| {
            ApiError::invalid_field(
                format!("{field}[{index}]"),
                format!("{value} is not a defined enum value"),
            )
        })?;
        parsed.push(value);
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}
