//! Tenants, tasks, tag groups, tags and levels: the things calls refer to by source id.
//!
//! Each upsert writes only when the content changed (by hash), so re-deliveries of the same
//! payload do not rewrite rows. References from calls create a minimal row when the referenced
//! thing has not arrived yet; its full description updates that row later.

use std::sync::LazyLock;

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

/// A kind of row that calls refer to by source key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Task,
    TagGroup,
    Tag,
    Level,
}

impl RefKind {
    const ALL: [Self; 4] = [Self::Task, Self::TagGroup, Self::Tag, Self::Level];

    /// The table and its source-id column.
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Self::Task => ("tasks", "source_task_id"),
            Self::TagGroup => ("tag_groups", "source_tag_group_id"),
            Self::Tag => ("tags", "source_tag_id"),
            Self::Level => ("levels", "source_level_id"),
        }
    }

    /// Looks rows up by `(source_system, source id)` pairs given as two arrays: one index
    /// lookup per pair (the LIMIT keeps the planner from turning it into a join that scans the
    /// table), whatever the table's size or statistics.
    fn select_sql(self) -> &'static str {
        static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
            RefKind::ALL
                .iter()
                .map(|kind| {
                    let (table, column) = kind.table();
                    format!(
                        "SELECT t.id, k.system, k.id, t.name
                         FROM unnest($2::text[], $3::text[]) AS k (system, id)
                         CROSS JOIN LATERAL (
                             SELECT id, name FROM {table}
                             WHERE tenant_id = $1 AND source_system = k.system AND {column} = k.id
                             LIMIT 1
                         ) t"
                    )
                })
                .collect()
        });
        SQL[self as usize].as_str()
    }

    /// Creates minimal rows (format, key and name) for keys not stored yet. Keys arrive
    /// sorted, so concurrent batches lock new keys in the same order and cannot deadlock.
    fn insert_sql(self) -> &'static str {
        static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
            RefKind::ALL
                .iter()
                .map(|kind| {
                    let (table, column) = kind.table();
                    format!(
                        "INSERT INTO {table} (tenant_id, source_format, source_system, {column}, name)
                         SELECT $1, k.format, k.system, k.id, k.name
                         FROM unnest($2::smallint[], $3::text[], $4::text[], $5::text[])
                           AS k (format, system, id, name)
                         ON CONFLICT DO NOTHING RETURNING id, source_system, {column}, name"
                    )
                })
                .collect()
        });
        SQL[self as usize].as_str()
    }

    /// Names a row that was first created without one (only tags are named by references).
    fn rename_sql(self) -> Option<&'static str> {
        match self {
            Self::Tag => Some(
                "UPDATE tags SET name = k.name
                 FROM unnest($2::uuid[], $3::text[]) AS k (id, name)
                 WHERE tags.tenant_id = $1 AND tags.id = k.id AND tags.name = ''",
            ),
            _ => None,
        }
    }
}

/// What a reference knows of the row it points at: the format of the payload it came in, and
/// the name it gives (empty when it gives none).
#[derive(Debug, Clone)]
pub struct RefSeed {
    pub format: SourceFormat,
    pub name: String,
}

/// Source keys, sorted, each with what creating a minimal row needs.
pub type RefKeys = std::collections::BTreeMap<(String, String), RefSeed>;

/// Server ids by source key `(system, id)`.
pub type RefIds = std::collections::HashMap<(String, String), Uuid>;

type RefRow = (Uuid, String, String, String);

/// Finds the rows of `kind` with the given source keys, creating minimal rows for those not
/// stored yet; a row stored without a name gets the one its reference gives. One round trip
/// when everything exists, which is the common case once a tenant's catalog is known.
pub async fn ids_for(
    connection: &mut PgConnection,
    tenant: &TenantId,
    kind: RefKind,
    keys: &RefKeys,
) -> Result<RefIds, DbError> {
    let mut ids = RefIds::with_capacity(keys.len());
    if keys.is_empty() {
        return Ok(ids);
    }
    let (systems, source_ids): (Vec<&str>, Vec<&str>) = keys
        .keys()
        .map(|(system, id)| (system.as_str(), id.as_str()))
        .unzip();
    let found: Vec<RefRow> = sqlx::query_as(kind.select_sql())
        .bind(tenant.as_str())
        .bind(&systems)
        .bind(&source_ids)
        .fetch_all(&mut *connection)
        .await?;
    let mut unnamed: Vec<(Uuid, &str)> = Vec::new();
    for (id, system, source_id, name) in found {
        let key = (system, source_id);
        if let Some(seed) = keys.get(&key)
            && name.is_empty()
            && !seed.name.is_empty()
        {
            unnamed.push((id, seed.name.as_str()));
        }
        ids.insert(key, id);
    }
    if let Some(rename_sql) = kind.rename_sql()
        && !unnamed.is_empty()
    {
        let (row_ids, names): (Vec<Uuid>, Vec<&str>) = unnamed.into_iter().unzip();
        sqlx::query(rename_sql)
            .bind(tenant.as_str())
            .bind(row_ids)
            .bind(names)
            .execute(&mut *connection)
            .await?;
    }
    if ids.len() == keys.len() {
        return Ok(ids);
    }

    let missing: Vec<(&(String, String), &RefSeed)> = keys
        .iter()
        .filter(|(key, _)| !ids.contains_key(*key))
        .collect();
    let formats: Vec<i16> = missing.iter().map(|(_, seed)| seed.format as i16).collect();
    let systems: Vec<&str> = missing
        .iter()
        .map(|((system, _), _)| system.as_str())
        .collect();
    let source_ids: Vec<&str> = missing.iter().map(|((_, id), _)| id.as_str()).collect();
    let names: Vec<&str> = missing.iter().map(|(_, seed)| seed.name.as_str()).collect();
    let inserted: Vec<RefRow> = sqlx::query_as(kind.insert_sql())
        .bind(tenant.as_str())
        .bind(formats)
        .bind(&systems)
        .bind(&source_ids)
        .bind(names)
        .fetch_all(&mut *connection)
        .await?;
    for (id, system, source_id, _) in inserted {
        ids.insert((system, source_id), id);
    }
    if ids.len() == keys.len() {
        return Ok(ids);
    }

    // Other transactions created the rest meanwhile; a new statement sees them committed.
    let found: Vec<RefRow> = sqlx::query_as(kind.select_sql())
        .bind(tenant.as_str())
        .bind(&systems)
        .bind(&source_ids)
        .fetch_all(&mut *connection)
        .await?;
    for (id, system, source_id, _) in found {
        ids.insert((system, source_id), id);
    }
    if ids.len() == keys.len() {
        Ok(ids)
    } else {
        Err(DbError::NotFound)
    }
}

/// The id of one row by its source key, creating a minimal row if needed.
async fn id_for(
    connection: &mut PgConnection,
    tenant: &TenantId,
    kind: RefKind,
    format: SourceFormat,
    key: &SourceKey,
    name: Option<&str>,
) -> Result<Uuid, DbError> {
    let seed = RefSeed {
        format,
        name: name.unwrap_or_default().to_owned(),
    };
    let keys = RefKeys::from([((key.system.clone(), key.id.clone()), seed)]);
    let ids = ids_for(connection, tenant, kind, &keys).await?;
    ids.into_values().next().ok_or(DbError::NotFound)
}

/// The id of a task known by its source key, creating a minimal task if needed.
pub async fn task_id_for(
    connection: &mut PgConnection,
    tenant: &TenantId,
    format: SourceFormat,
    key: &SourceKey,
) -> Result<Uuid, DbError> {
    id_for(connection, tenant, RefKind::Task, format, key, None).await
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
    id_for(connection, tenant, RefKind::TagGroup, format, key, None).await
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
    id_for(
        connection,
        tenant,
        RefKind::Tag,
        format,
        &key,
        reference.name.as_deref(),
    )
    .await
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
    id_for(connection, tenant, RefKind::Level, format, &key, None).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_finds_its_own_statements() {
        for kind in RefKind::ALL {
            let (table, column) = kind.table();
            assert_eq!(RefKind::ALL[kind as usize], kind);
            assert!(kind.select_sql().contains(&format!("FROM {table}\n")));
            assert!(kind.select_sql().contains(column));
            assert!(
                kind.insert_sql()
                    .starts_with(&format!("INSERT INTO {table} "))
            );
        }
    }
}
