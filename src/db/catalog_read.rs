//! Reads of the catalog: tasks with their progress, task numbers with their attempts, tags with
//! their groups, tag groups and levels. Every statement is scoped by tenant first; lists are
//! keyset-paged (the caller passes the position after the last row of the previous page).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::db::DbError;
use crate::domain::TenantId;
use crate::domain::call::Extra;
use crate::proto::{Carrier, NumberStatus};

/// A tag group as stored. Also read from JSON, where tags embed their groups.
#[derive(Debug, Clone, PartialEq, FromRow, serde::Deserialize)]
pub struct TagGroupRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub source_format: i16,
    pub source_system: String,
    pub source_tag_group_id: String,
    pub name: String,
    pub scene_id: Option<String>,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub extra: Json<Extra>,
}

/// A tag with the groups it belongs to (sorted by id).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct TagRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub source_format: i16,
    pub source_system: String,
    pub source_tag_id: String,
    pub name: String,
    pub description: Option<String>,
    pub color: Option<String>,
    pub enabled: bool,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub extra: Json<Extra>,
    pub tag_groups: Json<Vec<TagGroupRow>>,
}

/// A level as stored.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct LevelRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub source_format: i16,
    pub source_system: String,
    pub source_level_id: String,
    pub name: String,
    pub alias: Option<String>,
    pub color: Option<String>,
    pub min_score: Option<i64>,
    pub max_score: Option<i64>,
    pub extra: Json<Extra>,
}

/// A task with its progress, computed from its numbers when read (never stored).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct TaskRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub source_format: i16,
    pub source_system: String,
    pub source_task_id: String,
    pub name: String,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub run_state: i16,
    pub max_concurrent_calls: Option<i32>,
    pub calls_per_second: Option<i32>,
    pub redial_rounds: Option<i32>,
    pub ring_timeout_seconds: Option<i32>,
    pub caller_id_number: Option<String>,
    pub call_notify_url: Option<String>,
    pub script_group_id: Option<String>,
    pub script_group_name: Option<String>,
    pub tag_scene_id: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub extra: Json<Extra>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// Numbers in the task.
    pub total_numbers: i64,
    /// Numbers called: a number counts as called when its status is neither UNSPECIFIED nor
    /// WAITING (the dialer reported a result for it), or when it has at least one stored
    /// attempt (a call history whose status update has not arrived yet).
    pub called_numbers: i64,
}

/// A number of a task.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct TaskNumberRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub task_id: Uuid,
    pub source_format: i16,
    pub source_number_id: Option<String>,
    pub number: String,
    pub province: Option<String>,
    pub city: Option<String>,
    pub area_code: Option<String>,
    pub post_code: Option<String>,
    pub carrier: i16,
    pub carrier_name: Option<String>,
    pub blacklisted: bool,
    pub status: i16,
    pub latest_source_call_id: Option<String>,
    pub extra: Json<Extra>,
    pub update_time: DateTime<Utc>,
}

/// A dial attempt of a number, with the server id of its call when callstore holds it.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct AttemptRow {
    pub task_number_id: Uuid,
    pub source_attempt_id: Option<String>,
    pub source_call_id: Option<String>,
    pub call_id: Option<Uuid>,
    pub call_time: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub talk_duration_ms: Option<i64>,
    pub hangup_cause: Option<String>,
    pub sip_code: Option<String>,
    pub call_status: Option<String>,
    pub status: i16,
    pub record_file: Option<String>,
    pub calling_number: Option<String>,
    pub extra: Json<Extra>,
}

/// The validated filters of a task's number list. Serialised, it is the query's fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NumberFilter {
    pub task_id: Uuid,
    /// OR'ed; empty means any (sorted and deduplicated by the caller).
    pub statuses: Vec<NumberStatus>,
    /// OR'ed; empty means any.
    pub carriers: Vec<Carrier>,
    /// Substring of the number; `None` means any.
    pub number_keyword: Option<String>,
}

/// Number statuses that do not count as called: not set, and waiting to be called.
const NOT_CALLED: [NumberStatus; 2] = [NumberStatus::Unspecified, NumberStatus::Waiting];

/// The columns of a tag, `t` being the tag, with its groups embedded as JSON (sorted by id, one
/// index lookup per tag); `$1` is the tenant.
macro_rules! tag_columns {
    () => {
        "t.id, t.tenant_id, t.source_format, t.source_system, t.source_tag_id, t.name,
         t.description, t.color, t.enabled, t.source_create_time, t.source_update_time, t.extra,
         COALESCE((
             SELECT jsonb_agg(jsonb_build_object(
                        'id', g.id, 'tenant_id', g.tenant_id, 'source_format', g.source_format,
                        'source_system', g.source_system,
                        'source_tag_group_id', g.source_tag_group_id, 'name', g.name,
                        'scene_id', g.scene_id, 'source_create_time', g.source_create_time,
                        'source_update_time', g.source_update_time, 'extra', g.extra)
                    ORDER BY g.id)
             FROM tag_group_members m
             JOIN tag_groups g ON g.tenant_id = m.tenant_id AND g.id = m.tag_group_id
             WHERE m.tenant_id = $1 AND m.tag_id = t.id
         ), '[]'::jsonb) AS tag_groups"
    };
}

macro_rules! tag_group_columns {
    () => {
        "g.id, g.tenant_id, g.source_format, g.source_system, g.source_tag_group_id, g.name,
         g.scene_id, g.source_create_time, g.source_update_time, g.extra"
    };
}

macro_rules! level_columns {
    () => {
        "l.id, l.tenant_id, l.source_format, l.source_system, l.source_level_id, l.name, l.alias,
         l.color, l.min_score, l.max_score, l.extra"
    };
}

/// A task's columns (`t`) and its progress (`p`, from `task_progress!`).
macro_rules! task_columns {
    () => {
        "t.id, t.tenant_id, t.source_format, t.source_system, t.source_task_id, t.name,
         t.source_create_time, t.source_update_time, t.run_state, t.max_concurrent_calls,
         t.calls_per_second, t.redial_rounds, t.ring_timeout_seconds, t.caller_id_number,
         t.call_notify_url, t.script_group_id, t.script_group_name, t.tag_scene_id, t.project_id,
         t.project_name, t.extra, t.create_time, t.update_time,
         p.total_numbers, p.called_numbers"
    };
}

/// Progress of the task `t`: its numbers, and those called. A number counts as called when its
/// status is anything but UNSPECIFIED or WAITING (the dialer reported a result), or when it has
/// at least one stored attempt (a history without a status update yet). One grouped count per
/// task; `$2` is the array of statuses that do not count as called.
macro_rules! task_progress {
    () => {
        "CROSS JOIN LATERAL (
             SELECT count(*) AS total_numbers,
                    count(*) FILTER (
                        WHERE n.status <> ALL($2::smallint[])
                           OR EXISTS (SELECT 1 FROM call_attempts a
                                      WHERE a.tenant_id = $1 AND a.task_number_id = n.id)
                    ) AS called_numbers
             FROM task_numbers n
             WHERE n.tenant_id = $1 AND n.task_id = t.id
         ) p"
    };
}

fn not_called() -> Vec<i16> {
    NOT_CALLED.iter().map(|status| *status as i16).collect()
}

/// The tags `ids` of `tenant` (any order), with their groups.
pub async fn tags_by_ids(
    connection: &mut PgConnection,
    tenant: &TenantId,
    ids: &[Uuid],
) -> Result<Vec<TagRow>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        tag_columns!(),
        " FROM tags t WHERE t.tenant_id = $1 AND t.id = ANY($2)"
    ))
    .bind(tenant.as_str())
    .bind(ids)
    .fetch_all(connection)
    .await?)
}

/// A page of the tenant's tags (of one group, when given), in `(source_system, source_tag_id)`
/// order, after `after`.
pub async fn list_tags(
    pool: &PgPool,
    tenant: &TenantId,
    group: Option<Uuid>,
    after: Option<&(String, String)>,
    limit: i64,
) -> Result<Vec<TagRow>, DbError> {
    let (after_system, after_id) = split_position(after);
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        tag_columns!(),
        " FROM tags t
          WHERE t.tenant_id = $1
            AND ($2::uuid IS NULL OR EXISTS (
                SELECT 1 FROM tag_group_members gm
                WHERE gm.tenant_id = $1 AND gm.tag_group_id = $2 AND gm.tag_id = t.id))
            AND ($3::text IS NULL OR (t.source_system, t.source_tag_id) > ($3, $4::text))
          ORDER BY t.source_system, t.source_tag_id
          LIMIT $5"
    ))
    .bind(tenant.as_str())
    .bind(group)
    .bind(after_system)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?)
}

/// A page of the tenant's tag groups in `(source_system, source_tag_group_id)` order.
pub async fn list_tag_groups(
    pool: &PgPool,
    tenant: &TenantId,
    after: Option<&(String, String)>,
    limit: i64,
) -> Result<Vec<TagGroupRow>, DbError> {
    let (after_system, after_id) = split_position(after);
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        tag_group_columns!(),
        " FROM tag_groups g
          WHERE g.tenant_id = $1
            AND ($2::text IS NULL OR (g.source_system, g.source_tag_group_id) > ($2, $3::text))
          ORDER BY g.source_system, g.source_tag_group_id
          LIMIT $4"
    ))
    .bind(tenant.as_str())
    .bind(after_system)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?)
}

/// The levels `ids` of `tenant` (any order).
pub async fn levels_by_ids(
    connection: &mut PgConnection,
    tenant: &TenantId,
    ids: &[Uuid],
) -> Result<Vec<LevelRow>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        level_columns!(),
        " FROM levels l WHERE l.tenant_id = $1 AND l.id = ANY($2)"
    ))
    .bind(tenant.as_str())
    .bind(ids)
    .fetch_all(connection)
    .await?)
}

/// A page of the tenant's levels in `(source_system, source_level_id)` order.
pub async fn list_levels(
    pool: &PgPool,
    tenant: &TenantId,
    after: Option<&(String, String)>,
    limit: i64,
) -> Result<Vec<LevelRow>, DbError> {
    let (after_system, after_id) = split_position(after);
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        level_columns!(),
        " FROM levels l
          WHERE l.tenant_id = $1
            AND ($2::text IS NULL OR (l.source_system, l.source_level_id) > ($2, $3::text))
          ORDER BY l.source_system, l.source_level_id
          LIMIT $4"
    ))
    .bind(tenant.as_str())
    .bind(after_system)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?)
}

/// The tasks `ids` of `tenant` (any order) with their progress, in one statement.
pub async fn tasks_by_ids(
    connection: &mut PgConnection,
    tenant: &TenantId,
    ids: &[Uuid],
) -> Result<Vec<TaskRow>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks t ",
        task_progress!(),
        " WHERE t.tenant_id = $1 AND t.id = ANY($3)"
    ))
    .bind(tenant.as_str())
    .bind(not_called())
    .bind(ids)
    .fetch_all(connection)
    .await?)
}

/// A page of the tenant's tasks, newest first (`create_time DESC, id DESC`), after `after`,
/// with their progress: the page is chosen first, then counted, in one statement.
pub async fn list_tasks(
    pool: &PgPool,
    tenant: &TenantId,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<TaskRow>, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM (
              SELECT * FROM tasks
              WHERE tenant_id = $1
                AND ($3::timestamptz IS NULL OR (create_time, id) < ($3, $4::uuid))
              ORDER BY create_time DESC, id DESC
              LIMIT $5
          ) t ",
        task_progress!(),
        " ORDER BY t.create_time DESC, t.id DESC"
    ))
    .bind(tenant.as_str())
    .bind(not_called())
    .bind(after.map(|(time, _)| time))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?)
}

/// Whether the task exists in the tenant.
pub async fn task_exists(pool: &PgPool, tenant: &TenantId, id: Uuid) -> Result<bool, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tasks WHERE tenant_id = $1 AND id = $2)")
            .bind(tenant.as_str())
            .bind(id)
            .fetch_one(&mut *connection)
            .await?,
    )
}

/// The source key (system, task id) of the tenant's task `id`.
pub async fn task_source_key(
    pool: &PgPool,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<(String, String)>, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(
        "SELECT source_system, source_task_id FROM tasks WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?)
}

/// `text` with the LIKE metacharacters (`\`, `%`, `_`) escaped with `\`.
pub fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// A page of a task's numbers matching `filter`, in number order, after the number `after`.
pub async fn list_task_numbers(
    pool: &PgPool,
    tenant: &TenantId,
    filter: &NumberFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TaskNumberRow>, DbError> {
    let statuses: Vec<i16> = filter
        .statuses
        .iter()
        .map(|status| *status as i16)
        .collect();
    let carriers: Vec<i16> = filter
        .carriers
        .iter()
        .map(|carrier| *carrier as i16)
        .collect();
    let pattern = filter
        .number_keyword
        .as_deref()
        .map(|keyword| format!("%{}%", escape_like(keyword)));
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(
        "SELECT n.id, n.tenant_id, n.task_id, n.source_format, n.source_number_id, n.number,
                n.province, n.city, n.area_code, n.post_code, n.carrier, n.carrier_name,
                n.blacklisted, n.status, n.latest_source_call_id, n.extra, n.update_time
         FROM task_numbers n
         WHERE n.tenant_id = $1 AND n.task_id = $2
           AND (cardinality($3::smallint[]) = 0 OR n.status = ANY($3))
           AND (cardinality($4::smallint[]) = 0 OR n.carrier = ANY($4))
           AND ($5::text IS NULL OR n.number LIKE $5 ESCAPE '\\')
           AND ($6::text IS NULL OR n.number > $6)
         ORDER BY n.number
         LIMIT $7",
    )
    .bind(tenant.as_str())
    .bind(filter.task_id)
    .bind(statuses)
    .bind(carriers)
    .bind(pattern)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?)
}

/// The attempts of the numbers `number_ids`, grouped by number, newest first. Each attempt's
/// call is looked up by its telephony call id among the calls of the task's source system (an
/// index lookup on the calls' source key).
pub async fn attempts_of(
    pool: &PgPool,
    tenant: &TenantId,
    number_ids: &[Uuid],
) -> Result<Vec<AttemptRow>, DbError> {
    if number_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(
        "SELECT a.task_number_id, a.source_attempt_id, a.source_call_id,
                (SELECT c.id FROM calls c
                 WHERE c.tenant_id = $1 AND c.source_system = t.source_system
                   AND c.source_call_id = a.source_call_id
                 LIMIT 1) AS call_id,
                a.call_time, a.duration_ms, a.talk_duration_ms, a.hangup_cause, a.sip_code,
                a.call_status, a.status, a.record_file, a.calling_number, a.extra
         FROM call_attempts a
         JOIN task_numbers n ON n.tenant_id = $1 AND n.id = a.task_number_id
         JOIN tasks t ON t.tenant_id = $1 AND t.id = n.task_id
         WHERE a.tenant_id = $1 AND a.task_number_id = ANY($2)
         ORDER BY a.task_number_id, a.call_time DESC NULLS LAST, a.attempt_key",
    )
    .bind(tenant.as_str())
    .bind(number_ids)
    .fetch_all(&mut *connection)
    .await?)
}

fn split_position(after: Option<&(String, String)>) -> (Option<&str>, Option<&str>) {
    match after {
        Some((system, id)) => (Some(system.as_str()), Some(id.as_str())),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(escape_like("138"), "138");
        assert_eq!(escape_like("1%3_8\\"), "1\\%3\\_8\\\\");
    }
}
