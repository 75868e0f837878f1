//! Tenants, tasks, tag groups, tags and levels: the things calls refer to by source id.
//!
//! Each upsert writes only when the content changed (by hash), so re-deliveries of the same
//! payload do not rewrite rows. References from calls create a minimal row when the referenced
//! thing has not arrived yet; its full description updates that row later.

use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::DbError;
use crate::db::calls::StoreOutcome;
use crate::domain::call::{LevelRef, TagRef};
use crate::domain::tag::{Level, Tag, TagGroup};
use crate::domain::task::Task;
use crate::domain::{SourceKey, TenantId};
use crate::proto::SourceFormat;

/// Creates the tenant's row on first sight.
pub async fn ensure_tenant(
    connection: &mut PgConnection,
    tenant: &TenantId,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(tenant.as_str())
        .execute(connection)
        .await?;
    Ok(())
}

fn hash_of<T: serde::Serialize>(value: &T) -> Vec<u8> {
    Sha256::digest(serde_json::to_vec(value).unwrap_or_default()).to_vec()
}

/// The content hash a row had before an upsert (none when it was never described).
async fn previous_hash(
    connection: &mut PgConnection,
    select_sql: &'static str,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<Vec<u8>>, DbError> {
    Ok(sqlx::query_scalar(select_sql)
        .bind(tenant.as_str())
        .bind(id)
        .fetch_one(connection)
        .await?)
}

/// What an upsert did: a row never described before (only referenced, or new) counts as
/// created when its description arrives.
fn outcome(previous_hash: Option<Vec<u8>>, changed: bool) -> StoreOutcome {
    match (changed, previous_hash) {
        (false, _) => StoreOutcome::Unchanged,
        (true, None) => StoreOutcome::Created,
        (true, Some(_)) => StoreOutcome::Updated,
    }
}

/// Finds a row by its source key, creating it with `insert_sql` (which must end in
/// `ON CONFLICT DO NOTHING RETURNING id` and bind tenant, format, system, id) when missing.
async fn find_or_create(
    connection: &mut PgConnection,
    tenant: &TenantId,
    format: SourceFormat,
    key: &SourceKey,
    select_sql: &'static str,
    insert_sql: &'static str,
) -> Result<Uuid, DbError> {
    let lookup = || {
        sqlx::query_scalar::<_, Uuid>(select_sql)
            .bind(tenant.as_str())
            .bind(&key.system)
            .bind(&key.id)
    };
    if let Some(id) = lookup().fetch_optional(&mut *connection).await? {
        return Ok(id);
    }
    let inserted: Option<Uuid> = sqlx::query_scalar(insert_sql)
        .bind(tenant.as_str())
        .bind(format as i16)
        .bind(&key.system)
        .bind(&key.id)
        .fetch_optional(&mut *connection)
        .await?;
    match inserted {
        Some(id) => Ok(id),
        // Another transaction created it meanwhile; it is visible once that one committed.
        None => Ok(lookup().fetch_one(&mut *connection).await?),
    }
}

/// The id of a task known by its source key, creating a minimal task if needed.
pub async fn task_id_for(
    connection: &mut PgConnection,
    tenant: &TenantId,
    format: SourceFormat,
    key: &SourceKey,
) -> Result<Uuid, DbError> {
    find_or_create(
        connection,
        tenant,
        format,
        key,
        "SELECT id FROM tasks WHERE tenant_id = $1 AND source_system = $2 AND source_task_id = $3",
        "INSERT INTO tasks (tenant_id, source_format, source_system, source_task_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id",
    )
    .await
}

/// Creates or updates a task from its full description.
pub async fn upsert_task(
    connection: &mut PgConnection,
    tenant: &TenantId,
    task: &Task,
) -> Result<(Uuid, StoreOutcome), DbError> {
    let id = task_id_for(connection, tenant, task.source_format, &task.key).await?;
    let previous = previous_hash(
        connection,
        "SELECT content_hash FROM tasks WHERE tenant_id = $1 AND id = $2",
        tenant,
        id,
    )
    .await?;
    let changed = sqlx::query(
        "UPDATE tasks SET name = $3, source_create_time = $4, source_update_time = $5,
             run_state = $6, max_concurrent_calls = $7, calls_per_second = $8, redial_rounds = $9,
             ring_timeout_seconds = $10, caller_id_number = $11, call_notify_url = $12,
             script_group_id = $13, script_group_name = $14, tag_scene_id = $15, project_id = $16,
             project_name = $17, extra = $18, content_hash = $19, update_time = now()
         WHERE tenant_id = $1 AND id = $2 AND content_hash IS DISTINCT FROM $19",
    )
    .bind(tenant.as_str())
    .bind(id)
    .bind(task.name.as_deref().unwrap_or_default())
    .bind(task.source_create_time)
    .bind(task.source_update_time)
    .bind(task.run_state as i16)
    .bind(task.max_concurrent_calls)
    .bind(task.calls_per_second)
    .bind(task.redial_rounds)
    .bind(task.ring_timeout_seconds)
    .bind(task.caller_id_number.as_deref())
    .bind(task.call_notify_url.as_deref())
    .bind(task.script_group_id.as_deref())
    .bind(task.script_group_name.as_deref())
    .bind(task.tag_scene_id.as_deref())
    .bind(task.project_id.as_deref())
    .bind(task.project_name.as_deref())
    .bind(sqlx::types::Json(&task.extra))
    .bind(hash_of(task))
    .execute(connection)
    .await?
    .rows_affected()
        > 0;
    Ok((id, outcome(previous, changed)))
}

/// The id of a tag group known by its source key, creating a minimal group if needed.
async fn tag_group_id_for(
    connection: &mut PgConnection,
    tenant: &TenantId,
    format: SourceFormat,
    key: &SourceKey,
) -> Result<Uuid, DbError> {
    find_or_create(
        connection,
        tenant,
        format,
        key,
        "SELECT id FROM tag_groups
         WHERE tenant_id = $1 AND source_system = $2 AND source_tag_group_id = $3",
        "INSERT INTO tag_groups (tenant_id, source_format, source_system, source_tag_group_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id",
    )
    .await
}

/// Creates or updates a tag group.
pub async fn upsert_tag_group(
    connection: &mut PgConnection,
    tenant: &TenantId,
    group: &TagGroup,
) -> Result<(Uuid, StoreOutcome), DbError> {
    let id = tag_group_id_for(connection, tenant, group.source_format, &group.key).await?;
    let previous = previous_hash(
        connection,
        "SELECT content_hash FROM tag_groups WHERE tenant_id = $1 AND id = $2",
        tenant,
        id,
    )
    .await?;
    let changed = sqlx::query(
        "UPDATE tag_groups SET name = $3, scene_id = $4, source_create_time = $5,
             source_update_time = $6, extra = $7, content_hash = $8, update_time = now()
         WHERE tenant_id = $1 AND id = $2 AND content_hash IS DISTINCT FROM $8",
    )
    .bind(tenant.as_str())
    .bind(id)
    .bind(&group.name)
    .bind(group.scene_id.as_deref())
    .bind(group.source_create_time)
    .bind(group.source_update_time)
    .bind(sqlx::types::Json(&group.extra))
    .bind(hash_of(group))
    .execute(connection)
    .await?
    .rows_affected()
        > 0;
    Ok((id, outcome(previous, changed)))
}

/// The id of a tag a call refers to, creating a minimal tag (named as the reference says)
/// if needed.
pub async fn tag_id_for(
    connection: &mut PgConnection,
    tenant: &TenantId,
    format: SourceFormat,
    system: &str,
    reference: &TagRef,
) -> Result<Uuid, DbError> {
    let key = SourceKey {
        system: system.to_owned(),
        id: reference.source_tag_id.clone(),
    };
    let id = find_or_create(
        connection,
        tenant,
        format,
        &key,
        "SELECT id FROM tags WHERE tenant_id = $1 AND source_system = $2 AND source_tag_id = $3",
        "INSERT INTO tags (tenant_id, source_format, source_system, source_tag_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id",
    )
    .await?;
    if let Some(name) = &reference.name {
        // A tag first seen without a name gets the one a later reference carries.
        sqlx::query("UPDATE tags SET name = $3 WHERE tenant_id = $1 AND id = $2 AND name = ''")
            .bind(tenant.as_str())
            .bind(id)
            .bind(name)
            .execute(connection)
            .await?;
    }
    Ok(id)
}

/// Creates or updates a tag and its group memberships.
pub async fn upsert_tag(
    connection: &mut PgConnection,
    tenant: &TenantId,
    tag: &Tag,
) -> Result<(Uuid, StoreOutcome), DbError> {
    let reference = TagRef {
        source_tag_id: tag.key.id.clone(),
        name: None,
    };
    let id = tag_id_for(
        connection,
        tenant,
        tag.source_format,
        &tag.key.system,
        &reference,
    )
    .await?;
    let previous = previous_hash(
        connection,
        "SELECT content_hash FROM tags WHERE tenant_id = $1 AND id = $2",
        tenant,
        id,
    )
    .await?;
    let changed = sqlx::query(
        "UPDATE tags SET name = $3, description = $4, color = $5, enabled = $6,
             source_create_time = $7, source_update_time = $8, extra = $9, content_hash = $10,
             update_time = now()
         WHERE tenant_id = $1 AND id = $2 AND content_hash IS DISTINCT FROM $10",
    )
    .bind(tenant.as_str())
    .bind(id)
    .bind(&tag.name)
    .bind(tag.description.as_deref())
    .bind(tag.color.as_deref())
    .bind(tag.enabled)
    .bind(tag.source_create_time)
    .bind(tag.source_update_time)
    .bind(sqlx::types::Json(&tag.extra))
    .bind(hash_of(tag))
    .execute(&mut *connection)
    .await?
    .rows_affected()
        > 0;
    if changed {
        let mut group_ids = Vec::with_capacity(tag.group_ids.len());
        for group_source_id in &tag.group_ids {
            let key = SourceKey {
                system: tag.key.system.clone(),
                id: group_source_id.clone(),
            };
            group_ids.push(tag_group_id_for(connection, tenant, tag.source_format, &key).await?);
        }
        sqlx::query("DELETE FROM tag_group_members WHERE tenant_id = $1 AND tag_id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *connection)
            .await?;
        sqlx::query(
            "INSERT INTO tag_group_members (tenant_id, tag_group_id, tag_id)
             SELECT $1, group_id, $2 FROM unnest($3::uuid[]) AS group_id
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(group_ids)
        .execute(connection)
        .await?;
    }
    Ok((id, outcome(previous, changed)))
}

/// The id of a level a call refers to, creating a minimal level if needed.
pub async fn level_id_for(
    connection: &mut PgConnection,
    tenant: &TenantId,
    format: SourceFormat,
    system: &str,
    reference: &LevelRef,
) -> Result<Uuid, DbError> {
    let key = SourceKey {
        system: system.to_owned(),
        id: reference.source_level_id.clone(),
    };
    find_or_create(
        connection,
        tenant,
        format,
        &key,
        "SELECT id FROM levels WHERE tenant_id = $1 AND source_system = $2 AND source_level_id = $3",
        "INSERT INTO levels (tenant_id, source_format, source_system, source_level_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id",
    )
    .await
}

/// Creates or updates a level.
pub async fn upsert_level(
    connection: &mut PgConnection,
    tenant: &TenantId,
    level: &Level,
) -> Result<(Uuid, StoreOutcome), DbError> {
    let reference = LevelRef {
        source_level_id: level.key.id.clone(),
    };
    let id = level_id_for(
        connection,
        tenant,
        level.source_format,
        &level.key.system,
        &reference,
    )
    .await?;
    let previous = previous_hash(
        connection,
        "SELECT content_hash FROM levels WHERE tenant_id = $1 AND id = $2",
        tenant,
        id,
    )
    .await?;
    let changed = sqlx::query(
        "UPDATE levels SET name = $3, alias = $4, color = $5, min_score = $6, max_score = $7,
             extra = $8, content_hash = $9, update_time = now()
         WHERE tenant_id = $1 AND id = $2 AND content_hash IS DISTINCT FROM $9",
    )
    .bind(tenant.as_str())
    .bind(id)
    .bind(&level.name)
    .bind(level.alias.as_deref())
    .bind(level.color.as_deref())
    .bind(level.min_score)
    .bind(level.max_score)
    .bind(sqlx::types::Json(&level.extra))
    .bind(hash_of(level))
    .execute(connection)
    .await?
    .rows_affected()
        > 0;
    Ok((id, outcome(previous, changed)))
}
