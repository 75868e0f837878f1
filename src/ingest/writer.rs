//! Stores what a payload or a batch of native records carries, in one transaction, so that an
//! acknowledgement always means "committed". Each call is written under its own savepoint: a
//! call that fails rolls back alone and the others still commit.

use sqlx::{PgConnection, PgPool};

use crate::db::calls::{CallRefs, StoreOutcome, StoredCall, store_call};
use crate::db::quality::StoredQuality;
use crate::db::{DbError, catalog, numbers, quality};
use crate::domain::TenantId;
use crate::domain::call::Call;
use crate::ingest::Batch;

/// What storing a batch did, item by item, in batch order.
#[derive(Debug, Default)]
pub struct BatchResults {
    pub calls: Vec<Result<StoredCall, DbError>>,
    /// Numbers: the number's id and what happened.
    pub numbers: Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>,
    pub quality: Vec<Result<StoredQuality, DbError>>,
}

/// How often a batch that lost a deadlock or serialization race is tried again.
const ATTEMPTS: usize = 3;

/// Writes a batch; returns one result per item. The outer error means nothing was committed.
pub async fn store_batch(
    pool: &PgPool,
    tenant: &TenantId,
    batch: &Batch,
) -> Result<BatchResults, DbError> {
    let mut attempt = 1;
    loop {
        match try_store_batch(pool, tenant, batch).await {
            Err(DbError::Aborted(error)) if attempt < ATTEMPTS => {
                tracing::info!(error = %error, attempt, "batch aborted by a concurrent one; retrying");
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn try_store_batch(
    pool: &PgPool,
    tenant: &TenantId,
    batch: &Batch,
) -> Result<BatchResults, DbError> {
    let mut transaction = pool.begin().await?;
    catalog::ensure_tenant(&mut transaction, tenant).await?;
    for group in &batch.tag_groups {
        catalog::upsert_tag_group(&mut transaction, tenant, group).await?;
    }
    for tag in &batch.tags {
        catalog::upsert_tag(&mut transaction, tenant, tag).await?;
    }
    for level in &batch.levels {
        catalog::upsert_level(&mut transaction, tenant, level).await?;
    }
    for task in &batch.tasks {
        catalog::upsert_task(&mut transaction, tenant, task).await?;
    }

    let mut results = BatchResults::default();
    for call in &batch.calls {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = store_one(&mut savepoint, tenant, call).await;
        results.calls.push(settle(savepoint, outcome).await?);
    }
    for number in &batch.numbers {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = store_number(&mut savepoint, tenant, number).await;
        results.numbers.push(settle(savepoint, outcome).await?);
    }
    for imported in &batch.quality {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = quality::import_quality(&mut savepoint, tenant, imported).await;
        results.quality.push(settle(savepoint, outcome).await?);
    }
    transaction.commit().await?;
    Ok(results)
}

/// Keeps an item's writes (release the savepoint) or undoes them alone (roll back to it). An
/// error that loses the whole transaction fails the batch, never half of it.
async fn settle<T>(
    savepoint: sqlx::Transaction<'_, sqlx::Postgres>,
    outcome: Result<T, DbError>,
) -> Result<Result<T, DbError>, DbError> {
    match outcome {
        Ok(value) => {
            savepoint.commit().await?;
            Ok(Ok(value))
        }
        Err(error @ (DbError::Aborted(_) | DbError::Unavailable(_))) => Err(error),
        Err(error) => {
            savepoint.rollback().await?;
            Ok(Err(error))
        }
    }
}

async fn store_one(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call: &Call,
) -> Result<StoredCall, DbError> {
    let refs = resolve_refs(connection, tenant, call).await?;
    store_call(connection, tenant, call, &refs).await
}

/// Turns the call's source references into server ids, creating what is missing.
async fn resolve_refs(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call: &Call,
) -> Result<CallRefs, DbError> {
    let system = call.key.system.as_str();
    let format = call.source_format;
    let task_id = match &call.source_task_id {
        Some(source_task_id) => {
            let key = crate::domain::SourceKey {
                system: system.to_owned(),
                id: source_task_id.clone(),
            };
            Some(catalog::task_id_for(connection, tenant, format, &key).await?)
        }
        None => None,
    };
    let level_id = match &call.level {
        Some(level) => {
            Some(catalog::level_id_for(connection, tenant, format, system, level).await?)
        }
        None => None,
    };
    let mut tag_ids = Vec::with_capacity(call.tags.len());
    for tag in &call.tags {
        tag_ids.push(catalog::tag_id_for(connection, tenant, format, system, tag).await?);
    }
    let mut turn_tag_ids = Vec::with_capacity(call.turns.len());
    for turn in &call.turns {
        let mut ids = Vec::with_capacity(turn.tags.len());
        for tag in &turn.tags {
            ids.push(catalog::tag_id_for(connection, tenant, format, system, tag).await?);
        }
        turn_tag_ids.push(ids);
    }
    Ok(CallRefs {
        task_id,
        level_id,
        tag_ids,
        turn_tag_ids,
    })
}

/// A catalog item of an `Upsert*` request.
#[derive(Debug, Clone)]
pub enum CatalogItem {
    Task(crate::domain::task::Task),
    TagGroup(crate::domain::tag::TagGroup),
    Tag(crate::domain::tag::Tag),
    Level(crate::domain::tag::Level),
    Number(crate::domain::task::TaskNumber),
}

/// Stores catalog items in one transaction, a savepoint each; one result per item, in order.
pub async fn store_catalog(
    pool: &PgPool,
    tenant: &TenantId,
    items: &[CatalogItem],
) -> Result<Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>, DbError> {
    let mut attempt = 1;
    loop {
        match try_store_catalog(pool, tenant, items).await {
            Err(DbError::Aborted(error)) if attempt < ATTEMPTS => {
                tracing::info!(error = %error, attempt, "upsert aborted by a concurrent one; retrying");
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn try_store_catalog(
    pool: &PgPool,
    tenant: &TenantId,
    items: &[CatalogItem],
) -> Result<Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>, DbError> {
    let mut transaction = pool.begin().await?;
    catalog::ensure_tenant(&mut transaction, tenant).await?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = match item {
            CatalogItem::Task(task) => catalog::upsert_task(&mut savepoint, tenant, task).await,
            CatalogItem::TagGroup(group) => {
                catalog::upsert_tag_group(&mut savepoint, tenant, group).await
            }
            CatalogItem::Tag(tag) => catalog::upsert_tag(&mut savepoint, tenant, tag).await,
            CatalogItem::Level(level) => catalog::upsert_level(&mut savepoint, tenant, level).await,
            CatalogItem::Number(number) => store_number(&mut savepoint, tenant, number).await,
        };
        results.push(settle(savepoint, outcome).await?);
    }
    transaction.commit().await?;
    Ok(results)
}

async fn store_number(
    connection: &mut PgConnection,
    tenant: &TenantId,
    number: &crate::domain::task::TaskNumber,
) -> Result<(uuid::Uuid, StoreOutcome), DbError> {
    let task_id =
        catalog::task_id_for(&mut *connection, tenant, number.source_format, &number.task).await?;
    numbers::upsert_task_number(connection, tenant, task_id, number).await
}
