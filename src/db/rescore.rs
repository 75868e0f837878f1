//! Re-scoring jobs: a task's or a window's calls scored again with a rule set, in steps.
//!
//! A job is a row of `rescore_jobs`. Any replica may run it: it claims the job with a lease,
//! and each step (a page of calls, in `(dial_time, id)` order after the last one done) renews
//! the lease in the same transaction that stores the page's results and moves the job's
//! position. A replica that dies leaves its lease to run out; the next one resumes from the
//! committed position, so no call is scored twice by one job and none is skipped.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::db::quality::{ComputedFor, store_computed};
use crate::db::{DbError, quality_rules, retry_aborted};
use crate::domain::TenantId;
use crate::domain::call::Turn;
use crate::proto::{SourceFormat, Speaker};
use crate::quality::Dialogue;

/// A stored job.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub rule_set_id: Uuid,
    pub rule_set_version: i64,
    pub task_id: Option<Uuid>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub total_calls: i64,
    pub done_calls: i64,
    pub rescored_calls: i64,
    pub finished: bool,
    pub create_time: DateTime<Utc>,
    pub finish_time: Option<DateTime<Utc>>,
}

/// Which calls a job re-scores, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub rule_set_id: Uuid,
    pub task_id: Option<Uuid>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "id, tenant_id, rule_set_id, rule_set_version, task_id, start_time,
     end_time, total_calls, done_calls, rescored_calls, finished, create_time, finish_time";

/// The calls a job covers: those with a dialogue, of the task, in the window.
const JOB_CALLS: &str = "c.tenant_id = $1 AND c.turn_count > 0
     AND ($2::uuid IS NULL OR c.task_id = $2)
     AND ($3::timestamptz IS NULL OR c.dial_time >= $3)
     AND ($4::timestamptz IS NULL OR c.dial_time < $4)";

/// Creates a job with the rule set's latest version and the number of calls it covers now.
/// `NotFound` when the tenant has no such rule set.
pub async fn create_job(
    pool: &PgPool,
    tenant: &TenantId,
    spec: &JobSpec,
) -> Result<JobRow, DbError> {
    let mut transaction = super::begin(pool, tenant).await?;
    let version: i64 =
        sqlx::query_scalar("SELECT version FROM rule_sets WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(spec.rule_set_id)
            .fetch_optional(&mut *transaction)
            .await?
            .ok_or(DbError::NotFound)?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM calls c WHERE {JOB_CALLS}"
    )))
    .bind(tenant.as_str())
    .bind(spec.task_id)
    .bind(spec.start_time)
    .bind(spec.end_time)
    .fetch_one(&mut *transaction)
    .await?;
    let job = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO rescore_jobs (tenant_id, rule_set_id, rule_set_version, task_id, start_time,
             end_time, total_calls)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING {JOB_COLUMNS}"
    )))
    .bind(tenant.as_str())
    .bind(spec.rule_set_id)
    .bind(version)
    .bind(spec.task_id)
    .bind(spec.start_time)
    .bind(spec.end_time)
    .bind(total)
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(job)
}

pub async fn get_job(
    pool: &PgPool,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<JobRow>, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM rescore_jobs WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant.as_str())
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?)
}

/// A job claimed by a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub tenant: TenantId,
    pub id: Uuid,
}

/// Claims an unfinished job of any tenant whose lease has run out (or that never had one),
/// oldest first, for `lease`.
pub async fn claim_job(
    pool: &PgPool,
    owner: Uuid,
    lease: std::time::Duration,
) -> Result<Option<Claimed>, DbError> {
    // Jobs of every tenant are candidates.
    let mut transaction = super::begin(pool, super::Scope::AllTenants).await?;
    let claimed: Option<(String, Uuid)> = sqlx::query_as(
        "UPDATE rescore_jobs j
         SET lease_owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
         FROM (
             SELECT tenant_id, id FROM rescore_jobs
             WHERE NOT finished AND (lease_until IS NULL OR lease_until < clock_timestamp())
             ORDER BY create_time
             LIMIT 1
             FOR UPDATE SKIP LOCKED
         ) free
         WHERE j.tenant_id = free.tenant_id AND j.id = free.id
         RETURNING j.tenant_id, j.id",
    )
    .bind(owner)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .fetch_optional(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(claimed.and_then(|(tenant, id)| {
        TenantId::parse(&tenant)
            .ok()
            .map(|tenant| Claimed { tenant, id })
    }))
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A page was done; more may follow.
    Progressed,
    /// The job is finished.
    Finished,
    /// The job is gone (its rule set was deleted) or another runner holds it now.
    Lost,
}

#[derive(FromRow)]
struct JobState {
    rule_set_id: Uuid,
    rule_set_version: i64,
    task_id: Option<Uuid>,
    start_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    last_dial_time: Option<DateTime<Utc>>,
    last_call_id: Option<Uuid>,
    finished: bool,
    lease_owner: Option<Uuid>,
}

#[derive(FromRow)]
struct JobCall {
    id: Uuid,
    version: i64,
    task_id: Option<Uuid>,
    dial_time: DateTime<Utc>,
    source_format: i16,
    talk_duration_ms: Option<i64>,
    end_node: Option<String>,
}

#[derive(FromRow)]
struct DialogueTurn {
    call_id: Uuid,
    sequence: i32,
    speaker: i16,
    text: String,
    time: Option<DateTime<Utc>>,
    start_offset_ms: Option<i64>,
    end_offset_ms: Option<i64>,
    speak_ms: Option<i64>,
    play_ms: Option<i64>,
    node_id: Option<String>,
    node_name: Option<String>,
}

/// Re-scores the next `page` calls of a job held by `owner`, and renews its lease. One
/// transaction: the results, their QUALITY_ADDED events and the job's progress commit together.
pub async fn step(
    pool: &PgPool,
    claimed: &Claimed,
    owner: Uuid,
    page: i64,
    lease: std::time::Duration,
) -> Result<Step, DbError> {
    retry_aborted("rescore step", || {
        try_step(pool, claimed, owner, page, lease)
    })
    .await
}

async fn try_step(
    pool: &PgPool,
    claimed: &Claimed,
    owner: Uuid,
    page: i64,
    lease: std::time::Duration,
) -> Result<Step, DbError> {
    let tenant = &claimed.tenant;
    let mut transaction = super::begin(pool, tenant).await?;
    let state: Option<JobState> = sqlx::query_as(
        "SELECT rule_set_id, rule_set_version, task_id, start_time, end_time, last_dial_time,
                last_call_id, finished, lease_owner
         FROM rescore_jobs WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(claimed.id)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(state) = state else {
        return Ok(Step::Lost);
    };
    if state.finished || state.lease_owner != Some(owner) {
        return Ok(Step::Lost);
    }
    let Some(scorer) = quality_rules::scorer(
        &mut transaction,
        tenant,
        state.rule_set_id,
        Some(state.rule_set_version),
    )
    .await?
    else {
        return Ok(Step::Lost);
    };
    // The calls' rows are locked, as ingest locks them, so a call's versions never race.
    let calls: Vec<JobCall> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT c.id, c.version, c.task_id, c.dial_time, c.source_format, c.talk_duration_ms,
                c.end_node
         FROM calls c
         WHERE {JOB_CALLS}
           AND ($5::timestamptz IS NULL OR (c.dial_time, c.id) > ($5, $6))
         ORDER BY c.dial_time, c.id
         LIMIT $7
         FOR UPDATE OF c"
    )))
    .bind(tenant.as_str())
    .bind(state.task_id)
    .bind(state.start_time)
    .bind(state.end_time)
    .bind(state.last_dial_time)
    .bind(state.last_call_id)
    .bind(page)
    .fetch_all(&mut *transaction)
    .await?;

    let dialogues = dialogues(&mut transaction, tenant, &calls).await?;
    let computed: Vec<_> = dialogues
        .iter()
        .map(|dialogue| crate::quality::inspect(dialogue, Some(&scorer)))
        .collect();
    let results: Vec<ComputedFor<'_>> = calls
        .iter()
        .zip(&computed)
        .map(|(call, computed)| ComputedFor {
            call_id: call.id,
            call_version: call.version,
            task_id: call.task_id,
            source_format: SourceFormat::try_from(i32::from(call.source_format))
                .unwrap_or(SourceFormat::Unspecified),
            computed,
            first: false,
        })
        .collect();
    let stored = store_computed(&mut transaction, tenant, &results, true).await?;

    let finished = i64::try_from(calls.len()).unwrap_or(i64::MAX) < page;
    let last = calls.last();
    sqlx::query(
        "UPDATE rescore_jobs
         SET done_calls = done_calls + $3, rescored_calls = rescored_calls + $4,
             last_dial_time = coalesce($5, last_dial_time), last_call_id = coalesce($6, last_call_id),
             finished = $7, finish_time = CASE WHEN $7 THEN now() END,
             lease_until = clock_timestamp() + $8 * interval '1 millisecond'
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(claimed.id)
    .bind(i64::try_from(calls.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(stored.len()).unwrap_or(i64::MAX))
    .bind(last.map(|call| call.dial_time))
    .bind(last.map(|call| call.id))
    .bind(finished)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    crate::metrics::global().record_rescore(u64::try_from(stored.len()).unwrap_or(u64::MAX));
    Ok(if finished {
        Step::Finished
    } else {
        Step::Progressed
    })
}

/// The dialogues of `calls`, in their order.
async fn dialogues(
    connection: &mut PgConnection,
    tenant: &TenantId,
    calls: &[JobCall],
) -> Result<Vec<Dialogue>, DbError> {
    let ids: Vec<Uuid> = calls.iter().map(|call| call.id).collect();
    let rows: Vec<DialogueTurn> = sqlx::query_as(
        "SELECT call_id, sequence, speaker, text, time, start_offset_ms, end_offset_ms, speak_ms,
                play_ms, node_id, node_name
         FROM turns WHERE tenant_id = $1 AND call_id = ANY($2)
         ORDER BY call_id, sequence",
    )
    .bind(tenant.as_str())
    .bind(&ids)
    .fetch_all(connection)
    .await?;
    let mut turns: std::collections::HashMap<Uuid, Vec<Turn>> =
        std::collections::HashMap::with_capacity(calls.len());
    for row in rows {
        turns.entry(row.call_id).or_default().push(Turn {
            sequence: row.sequence,
            speaker: Speaker::try_from(i32::from(row.speaker)).unwrap_or(Speaker::Unspecified),
            text: row.text,
            time: row.time,
            start_offset_ms: row.start_offset_ms,
            end_offset_ms: row.end_offset_ms,
            speak_ms: row.speak_ms,
            play_ms: row.play_ms,
            node_id: row.node_id,
            node_name: row.node_name,
            ..Turn::default()
        });
    }
    Ok(calls
        .iter()
        .map(|call| {
            let call_turns = turns.remove(&call.id).unwrap_or_default();
            Dialogue::from_turns(&call_turns, call.talk_duration_ms, call.end_node.clone())
        })
        .collect())
}
