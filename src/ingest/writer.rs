//! Stores what a payload or a batch of native records carries, in one transaction, so that an
//! acknowledgement always means "committed". Each call is written under its own savepoint: a
//! call that fails rolls back alone and the others still commit.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use crate::db::calls::{StoreOutcome, StoredCall};
use crate::db::quality::{ComputedFor, StoredQuality};
use crate::db::{
    ATTEMPTS, DbError, calls, catalog, numbers, quality, quality_rules, retry_aborted,
};
use crate::domain::call::Call;
use crate::domain::quality::ImportedQuality;
use crate::domain::{SourceKey, TenantId};
use crate::ingest::Batch;
use crate::proto::SourceFormat;
use crate::quality::{Computed, Dialogue};

/// What storing a batch did, item by item, in batch order.
#[derive(Debug, Default)]
pub struct BatchResults {
    pub calls: Vec<Result<StoredCall, DbError>>,
    /// Catalog rows: each row's id and what happened.
    pub tasks: Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>,
    pub tag_groups: Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>,
    pub tags: Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>,
    pub levels: Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>,
    /// Numbers: the number's id and what happened.
    pub numbers: Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>,
    pub quality: Vec<Result<StoredQuality, DbError>>,
}

/// Counts the calls of a committed batch by outcome, and the turns written.
fn record_calls(batch: &Batch, results: &BatchResults) {
    let metrics = crate::metrics::global();
    for (call, result) in batch.calls.iter().zip(&results.calls) {
        match result {
            Ok(stored) => {
                metrics.record_ingest(stored.outcome.into(), 1);
                if stored.outcome != StoreOutcome::Unchanged {
                    metrics.record_turns(u64::try_from(call.turns.len()).unwrap_or(u64::MAX));
                }
            }
            Err(_) => metrics.record_ingest(crate::metrics::IngestOutcome::Rejected, 1),
        }
    }
}

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Compute the quality result (metrics, and a score with the tenant's active rule set) of
    /// every new or changed call with a dialogue, in the same transaction.
    pub inspect: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { inspect: true }
    }
}

/// Writes a batch; returns one result per item. The outer error means nothing was committed.
///
/// The calls are first written together, a few statements for the whole batch. Should one of
/// them fail, the transaction is rolled back and the batch written again call by call, each
/// under its own savepoint, so the failing call is rejected alone and the others still commit.
pub async fn store_batch(
    pool: &PgPool,
    tenant: &TenantId,
    batch: &Batch,
    options: WriteOptions,
) -> Result<BatchResults, DbError> {
    let mut attempt = 1;
    let mut mode = Mode::Together;
    loop {
        match try_store_batch(pool, tenant, batch, mode, options).await {
            Ok(results) => {
                record_calls(batch, &results);
                return Ok(results);
            }
            Err(BatchError::Calls(error)) if mode == Mode::Together => {
                tracing::debug!(error = %error, "a call of the batch failed; storing them one by one");
                mode = Mode::OneByOne;
            }
            Err(BatchError::Other(DbError::Aborted(error))) if attempt < ATTEMPTS => {
                tracing::info!(error = %error, attempt, "batch aborted by a concurrent one; retrying");
                attempt += 1;
            }
            Err(BatchError::Calls(error) | BatchError::Other(error)) => return Err(error),
        }
    }
}

/// How the calls of a batch are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// All calls in a few statements; any failure fails the batch.
    Together,
    /// Each call under its own savepoint; a failure rejects that call only.
    OneByOne,
}

/// Why a batch was not committed.
enum BatchError {
    /// Writing the calls together failed for a reason one call may carry alone (bad data, a
    /// constraint); writing them one by one isolates it.
    Calls(DbError),
    /// Anything else: the database, a lost race, or an item that fails the batch.
    Other(DbError),
}

impl BatchError {
    fn of_calls(error: DbError) -> Self {
        match error {
            DbError::Aborted(_) | DbError::Unavailable(_) | DbError::Cancelled(_) => {
                Self::Other(error)
            }
            other => Self::Calls(other),
        }
    }
}

impl From<DbError> for BatchError {
    fn from(error: DbError) -> Self {
        Self::Other(error)
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        Self::Other(error.into())
    }
}

async fn try_store_batch(
    pool: &PgPool,
    tenant: &TenantId,
    batch: &Batch,
    mode: Mode,
    options: WriteOptions,
) -> Result<BatchResults, BatchError> {
    let mut transaction = crate::db::begin(pool, tenant).await?;
    catalog::ensure_tenant(&mut transaction, tenant).await?;
    // Catalog rows first: the calls refer to them.
    let mut results = BatchResults::default();
    for group in &batch.tag_groups {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = catalog::upsert_tag_group(&mut savepoint, tenant, group).await;
        results.tag_groups.push(settle(savepoint, outcome).await?);
    }
    for tag in &batch.tags {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = catalog::upsert_tag(&mut savepoint, tenant, tag).await;
        results.tags.push(settle(savepoint, outcome).await?);
    }
    for level in &batch.levels {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = catalog::upsert_level(&mut savepoint, tenant, level).await;
        results.levels.push(settle(savepoint, outcome).await?);
    }
    for task in &batch.tasks {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = catalog::upsert_task(&mut savepoint, tenant, task).await;
        results.tasks.push(settle(savepoint, outcome).await?);
    }

    match mode {
        Mode::Together => {
            let mut stored: Vec<Option<StoredCall>> = vec![None; batch.calls.len()];
            for round in rounds(&batch.calls) {
                let calls: Vec<&Call> = round.iter().map(|&index| &batch.calls[index]).collect();
                let written = calls::store_calls(&mut transaction, tenant, &calls)
                    .await
                    .map_err(BatchError::of_calls)?;
                for (index, call) in round.into_iter().zip(written) {
                    stored[index] = Some(call);
                }
            }
            results.calls = stored
                .into_iter()
                .map(|call| call.ok_or(DbError::NotFound))
                .collect();
        }
        Mode::OneByOne => {
            for call in &batch.calls {
                let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
                let outcome = calls::store_calls(&mut savepoint, tenant, &[call])
                    .await
                    .and_then(|mut stored| stored.pop().ok_or(DbError::NotFound));
                results.calls.push(settle(savepoint, outcome).await?);
            }
        }
    }
    if options.inspect {
        inspect_calls(&mut transaction, tenant, &batch.calls, &results.calls).await?;
    }
    for number in &batch.numbers {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let outcome = store_number(&mut savepoint, tenant, number).await;
        results.numbers.push(settle(savepoint, outcome).await?);
    }
    for imported in &batch.quality {
        let mut savepoint = sqlx::Connection::begin(&mut *transaction).await?;
        let mut outcome = quality::import_quality(&mut savepoint, tenant, imported).await;
        if let Ok(stored) = &outcome
            && options.inspect
            && stored.outcome != StoreOutcome::Unchanged
            && !imported.segments.is_empty()
            && let Err(error) = inspect_segments(&mut savepoint, tenant, imported).await
        {
            outcome = Err(error);
        }
        results.quality.push(settle(savepoint, outcome).await?);
    }
    transaction.commit().await?;
    Ok(results)
}

/// Stores the quality result of each call the batch created or changed that has a dialogue.
pub(crate) async fn inspect_calls(
    connection: &mut PgConnection,
    tenant: &TenantId,
    calls: &[Call],
    stored: &[Result<StoredCall, DbError>],
) -> Result<(), DbError> {
    let inspected: Vec<(&Call, &StoredCall)> = calls
        .iter()
        .zip(stored)
        .filter_map(|(call, stored)| match stored {
            Ok(stored) if stored.outcome != StoreOutcome::Unchanged && !call.turns.is_empty() => {
                Some((call, stored))
            }
            _ => None,
        })
        .collect();
    if inspected.is_empty() {
        return Ok(());
    }
    let scorer = quality_rules::active_scorer(&mut *connection, tenant).await?;
    let computed: Vec<Computed> = inspected
        .iter()
        .map(|(call, _)| {
            let dialogue =
                Dialogue::from_turns(&call.turns, call.talk_duration_ms, call.end_node.clone());
            crate::quality::inspect(&dialogue, scorer.as_ref())
        })
        .collect();
    let results: Vec<ComputedFor<'_>> = inspected
        .iter()
        .zip(&computed)
        .map(|((call, stored), computed)| ComputedFor {
            call_id: stored.id,
            call_version: stored.version,
            task_id: None,
            source_format: call.source_format,
            computed,
            first: stored.outcome == StoreOutcome::Created,
        })
        .collect();
    quality::store_computed(connection, tenant, &results, false).await?;
    Ok(())
}

/// Computes the quality of a call that has no dialogue of its own from an imported result's
/// speech segments (Huawei QC): exact spans, so every metric is known.
async fn inspect_segments(
    connection: &mut PgConnection,
    tenant: &TenantId,
    imported: &ImportedQuality,
) -> Result<(), DbError> {
    let call: Option<(uuid::Uuid, i64, Option<uuid::Uuid>, i32, i16)> = sqlx::query_as(
        "SELECT id, version, task_id, turn_count, source_format FROM calls
         WHERE tenant_id = $1 AND source_system = $2 AND source_call_id = $3",
    )
    .bind(tenant.as_str())
    .bind(&imported.call.system)
    .bind(&imported.call.id)
    .fetch_optional(&mut *connection)
    .await?;
    let Some((call_id, call_version, task_id, 0, source_format)) = call else {
        return Ok(());
    };
    let scorer = quality_rules::active_scorer(&mut *connection, tenant).await?;
    let dialogue = Dialogue::from_segments(&imported.segments, imported.duration_ms);
    let computed = crate::quality::inspect(&dialogue, scorer.as_ref());
    let result = ComputedFor {
        call_id,
        call_version,
        task_id,
        source_format: SourceFormat::try_from(i32::from(source_format))
            .unwrap_or(imported.source_format),
        computed: &computed,
        first: false,
    };
    quality::store_computed(connection, tenant, &[result], false).await?;
    Ok(())
}

/// Splits calls into rounds in which each key appears once (an upsert cannot touch a row
/// twice): the first delivery of every key, then the second, and so on. Indexes into `calls`.
fn rounds(calls: &[Call]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&SourceKey, usize> = HashMap::with_capacity(calls.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (index, call) in calls.iter().enumerate() {
        let occurrence = seen.entry(&call.key).or_insert(0);
        if rounds.len() <= *occurrence {
            rounds.push(Vec::new());
        }
        rounds[*occurrence].push(index);
        *occurrence += 1;
    }
    rounds
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
    retry_aborted("upsert", || try_store_catalog(pool, tenant, items)).await
}

async fn try_store_catalog(
    pool: &PgPool,
    tenant: &TenantId,
    items: &[CatalogItem],
) -> Result<Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>, DbError> {
    let mut transaction = crate::db::begin(pool, tenant).await?;
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
