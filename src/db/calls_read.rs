//! Reads of call records: the `calls` row mapped back (the inverse of `calls.rs`), with what the
//! embed asks for. A bounded number of statements whatever the number of calls, turns or tags.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::db::DbError;
use crate::db::catalog_read::{self, LevelRow, TagRow, TaskRow};
use crate::domain::TenantId;
use crate::domain::call::{AudioPiece, Classification, Customer, Extra, HuaweiResult, Transfer};

/// How much of a call to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEmbed {
    /// The row, its tag ids, tag group ids and level id: one statement.
    Basic,
    /// Basic, and the tag objects (with their groups) and the level.
    Full,
    /// Full, and the dialogue, the task with its progress and the latest quality result.
    Detail,
}

/// One row of `calls` as stored, with the ids of its tags and of their groups (each sorted).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct CallRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub source_format: i16,
    pub source_system: String,
    pub source_call_id: String,
    pub version: i64,
    pub state: i16,
    pub task_id: Option<Uuid>,
    pub source_task_id: Option<String>,
    pub source_record_id: Option<String>,
    pub script_group_id: Option<String>,
    pub callee: String,
    pub caller: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub area_code: Option<String>,
    pub post_code: Option<String>,
    pub carrier: i16,
    pub carrier_name: Option<String>,
    pub region_text: Option<String>,
    pub customer: Option<Json<Customer>>,
    pub dial_time: DateTime<Utc>,
    pub answer_time: Option<DateTime<Utc>>,
    pub hangup_time: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub talk_duration_ms: Option<i64>,
    pub billed_minutes: Option<i32>,
    pub outcome: i16,
    pub number_status: i16,
    pub hangup_cause: Option<String>,
    pub end_reason: Option<String>,
    pub sip_code: Option<String>,
    pub hangup_side: i16,
    pub error_code: Option<i32>,
    pub huawei: Option<Json<HuaweiResult>>,
    pub number_check_status: i16,
    pub rounds: Option<i32>,
    pub asks_count: Option<i32>,
    pub call_count: Option<i32>,
    pub score: Option<i64>,
    pub level_id: Option<Uuid>,
    pub gender: i16,
    pub last_reply: Option<String>,
    pub end_node: Option<String>,
    pub classification: Option<Json<Classification>>,
    pub labels: Vec<String>,
    pub dynamic_labels: Vec<String>,
    pub satisfaction: i16,
    pub call_mode: i16,
    pub call_mode_code: Option<i32>,
    pub first_connected: Option<bool>,
    pub transfer_state: i16,
    pub transfer: Option<Json<Transfer>>,
    pub record_file: Option<String>,
    pub record_path: Option<String>,
    pub read_time: Option<DateTime<Utc>>,
    pub custom_fields: Json<BTreeMap<String, String>>,
    pub turn_count: i32,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub extra: Json<Extra>,
    /// Server ids of the call's tags, sorted.
    pub tag_ids: Vec<Uuid>,
    /// Server ids of the groups of those tags, distinct, sorted.
    pub tag_group_ids: Vec<Uuid>,
}

/// One turn as stored, with the ids of the tags it hit (sorted).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct TurnRow {
    pub call_id: Uuid,
    pub sequence: i32,
    pub speaker: i16,
    pub text: String,
    pub time: Option<DateTime<Utc>>,
    pub start_offset_ms: Option<i64>,
    pub end_offset_ms: Option<i64>,
    pub speak_ms: Option<i64>,
    pub play_ms: Option<i64>,
    pub node_id: Option<String>,
    pub node_name: Option<String>,
    pub node_class: Option<String>,
    pub node_type: i16,
    pub trigger_title: Option<String>,
    pub matched_keyword: Option<String>,
    pub jump_type: i16,
    pub match_type: Option<i32>,
    pub score_delta: Option<i64>,
    pub label: Option<String>,
    pub audio_file: Option<String>,
    pub audio_pieces: Option<Json<Vec<AudioPiece>>>,
    pub asr_engine: Option<String>,
    pub asr_latency_ms: Option<i64>,
    pub record_ms: Option<i64>,
    pub volume_gain: Option<f64>,
    pub question_index: Option<i32>,
    pub after_transfer: bool,
    pub source_turn_id: Option<String>,
    pub extra: Json<Extra>,
    pub tag_ids: Vec<Uuid>,
}

/// One row of `quality_results`. `details` holds the rest of the result as the API models it
/// (side metrics, segments, rule hits, profile, …); the API layer reads it.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct QualityRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub call_id: Uuid,
    pub source: i16,
    pub version: i64,
    pub source_format: i16,
    pub status: i16,
    pub score: Option<f64>,
    pub rule_set_id: Option<Uuid>,
    pub rule_set_version: Option<i64>,
    pub violation_count: Option<i32>,
    pub details: Json<serde_json::Value>,
    pub extra: Json<Extra>,
    pub create_time: DateTime<Utc>,
}

/// A call as read: the row, and what the embed asked for (empty otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct CallRead {
    pub call: CallRow,
    /// Full and Detail: the call's tags with their groups, in `call.tag_ids` order.
    pub tags: Vec<TagRow>,
    /// Full and Detail: the call's level.
    pub level: Option<LevelRow>,
    /// Detail: the dialogue in sequence order.
    pub turns: Vec<TurnRow>,
    /// Detail: the task with its progress.
    pub task: Option<TaskRow>,
    /// Detail: the latest quality result (the highest version of each source; of an imported
    /// and a computed one, the one stored last).
    pub quality: Option<QualityRow>,
}

impl CallRead {
    fn basic(call: CallRow) -> Self {
        Self {
            call,
            tags: Vec::new(),
            level: None,
            turns: Vec::new(),
            task: None,
            quality: None,
        }
    }
}

/// Every column of `calls` that the API shows (`c`), with the tag ids and the tag group ids as
/// array subqueries (index lookups on `call_tags` and `tag_group_members`); `$1` is the tenant.
/// The arrays are sorted and deduplicated in Rust ([`tidy`]): GetCall runs this statement alone
/// and is planned on every execution (`plan_cache_mode = force_custom_plan`), and these forms
/// plan about a third faster than with `DISTINCT … ORDER BY` and a join.
macro_rules! call_columns {
    () => {
        "c.id, c.tenant_id, c.source_format, c.source_system, c.source_call_id, c.version,
         c.state, c.task_id, c.source_task_id, c.source_record_id, c.script_group_id, c.callee,
         c.caller, c.province, c.city, c.area_code, c.post_code, c.carrier, c.carrier_name,
         c.region_text, c.customer, c.dial_time, c.answer_time, c.hangup_time, c.duration_ms,
         c.talk_duration_ms, c.billed_minutes, c.outcome, c.number_status, c.hangup_cause,
         c.end_reason, c.sip_code, c.hangup_side, c.error_code, c.huawei, c.number_check_status,
         c.rounds, c.asks_count, c.call_count, c.score, c.level_id, c.gender, c.last_reply,
         c.end_node, c.classification, c.labels, c.dynamic_labels, c.satisfaction, c.call_mode,
         c.call_mode_code, c.first_connected, c.transfer_state, c.transfer, c.record_file,
         c.record_path, c.read_time, c.custom_fields, c.turn_count, c.source_create_time,
         c.source_update_time, c.create_time, c.update_time, c.extra,
         ARRAY(SELECT ct.tag_id FROM call_tags ct
               WHERE ct.tenant_id = $1 AND ct.call_id = c.id) AS tag_ids,
         ARRAY(SELECT m.tag_group_id FROM tag_group_members m
               WHERE m.tenant_id = $1
                 AND m.tag_id = ANY(ARRAY(SELECT ct.tag_id FROM call_tags ct
                                          WHERE ct.tenant_id = $1 AND ct.call_id = c.id))
              ) AS tag_group_ids"
    };
}

const SELECT_ONE_CALL: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls c WHERE c.tenant_id = $1 AND c.id = $2"
);

const SELECT_CALLS: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls c WHERE c.tenant_id = $1 AND c.id = ANY($2)"
);

/// Every column of `turns` that the API shows (`t`), with the ids of the tags each turn hit;
/// `$1` is the tenant.
macro_rules! turn_columns {
    () => {
        "t.call_id, t.sequence, t.speaker, t.text, t.time,
        t.start_offset_ms, t.end_offset_ms, t.speak_ms, t.play_ms, t.node_id, t.node_name,
        t.node_class, t.node_type, t.trigger_title, t.matched_keyword, t.jump_type, t.match_type,
        t.score_delta, t.label, t.audio_file, t.audio_pieces, t.asr_engine, t.asr_latency_ms,
        t.record_ms, t.volume_gain, t.question_index, t.after_transfer, t.source_turn_id,
        t.extra,
        ARRAY(SELECT tt.tag_id FROM turn_tags tt
              WHERE tt.tenant_id = $1 AND tt.call_id = t.call_id AND tt.sequence = t.sequence
              ORDER BY tt.tag_id) AS tag_ids"
    };
}

const SELECT_TURNS: &str = concat!(
    "SELECT ",
    turn_columns!(),
    " FROM turns t
    WHERE t.tenant_id = $1 AND t.call_id = ANY($2)
    ORDER BY t.call_id, t.sequence"
);

/// Given turns by (call, sequence) pairs, `$2` and `$3` zipped.
const SELECT_TURNS_AT: &str = concat!(
    "SELECT ",
    turn_columns!(),
    " FROM turns t
    JOIN unnest($2::uuid[], $3::integer[]) AS wanted (call_id, sequence)
      ON t.call_id = wanted.call_id AND t.sequence = wanted.sequence
    WHERE t.tenant_id = $1
    ORDER BY t.call_id, t.sequence"
);

macro_rules! quality_columns {
    () => {
        "q.id, q.tenant_id, q.call_id, q.source, q.version, q.source_format, q.status, q.score,
        q.rule_set_id, q.rule_set_version, q.violation_count, q.details, q.extra, q.create_time"
    };
}

/// The columns of a [`QualityRow`], of `quality_results` aliased `q`.
pub const QUALITY_COLUMNS: &str = quality_columns!();

const SELECT_QUALITY_BY_IDS: &str = concat!(
    "SELECT ",
    quality_columns!(),
    " FROM quality_results q WHERE q.tenant_id = $1 AND q.id = ANY($2)"
);

/// The latest result of each call: the highest version of each source (computed, imported),
/// then of those the one stored last (a tie in time goes to the higher source number).
const SELECT_QUALITY: &str = concat!(
    "SELECT DISTINCT ON (q.call_id) ",
    quality_columns!(),
    " FROM (
        SELECT DISTINCT ON (call_id, source) *
        FROM quality_results
        WHERE tenant_id = $1 AND call_id = ANY($2)
        ORDER BY call_id, source, version DESC
    ) q
    ORDER BY q.call_id, q.create_time DESC, q.source DESC"
);

/// The calls `ids` of `tenant`, in the order of `ids`; ids that do not exist (or belong to
/// another tenant) are left out, as are repeats. A bounded number of statements whatever the
/// number of ids: Basic is one statement; Full adds one for the tags (with their groups) and one
/// for the levels; Detail adds the turns, the tasks (with their progress) and the quality
/// results, all read in one read-only snapshot so the dialogue matches the row.
#[tracing::instrument(skip_all, fields(tenant = %tenant, calls = ids.len(), ?embed))]
pub async fn load_calls(
    pool: &PgPool,
    tenant: &TenantId,
    ids: &[Uuid],
    embed: CallEmbed,
) -> Result<Vec<CallRead>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    match embed {
        CallEmbed::Basic => {
            let mut connection = super::begin(pool, tenant).await?;
            let rows = fetch_rows(&mut *connection, tenant, ids).await?;
            Ok(in_order(rows, ids)
                .into_iter()
                .map(CallRead::basic)
                .collect())
        }
        CallEmbed::Full => {
            let mut connection = super::begin(pool, tenant).await?;
            let rows = fetch_rows(&mut *connection, tenant, ids).await?;
            let calls = in_order(rows, ids);
            embed_full(&mut connection, tenant, calls).await
        }
        CallEmbed::Detail => {
            let mut transaction = super::begin_with(
                pool,
                tenant,
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            )
            .await?;
            let rows = fetch_rows(&mut *transaction, tenant, ids).await?;
            let calls = in_order(rows, ids);
            let mut reads = embed_full(&mut transaction, tenant, calls).await?;
            embed_detail(&mut transaction, tenant, &mut reads).await?;
            transaction.commit().await?;
            Ok(reads)
        }
    }
}

/// Like [`load_calls`] with the Basic or Full embed, on a connection the caller holds (inside
/// its transaction, say). Detail is read as Full.
pub async fn load_calls_on(
    connection: &mut PgConnection,
    tenant: &TenantId,
    ids: &[Uuid],
    embed: CallEmbed,
) -> Result<Vec<CallRead>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = fetch_rows(&mut *connection, tenant, ids).await?;
    let calls = in_order(rows, ids);
    match embed {
        CallEmbed::Basic => Ok(calls.into_iter().map(CallRead::basic).collect()),
        CallEmbed::Full | CallEmbed::Detail => embed_full(connection, tenant, calls).await,
    }
}

/// The turns at the given (call, sequence) pairs, in call and sequence order; pairs without a
/// turn are left out.
pub async fn load_turns_at(
    connection: &mut PgConnection,
    tenant: &TenantId,
    keys: &[(Uuid, i32)],
) -> Result<Vec<TurnRow>, DbError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (calls, sequences): (Vec<Uuid>, Vec<i32>) = keys.iter().copied().unzip();
    Ok(sqlx::query_as(SELECT_TURNS_AT)
        .bind(tenant.as_str())
        .bind(calls)
        .bind(sequences)
        .fetch_all(connection)
        .await?)
}

/// The quality results with the given ids, in no particular order.
pub async fn load_quality_by_ids(
    connection: &mut PgConnection,
    tenant: &TenantId,
    ids: &[Uuid],
) -> Result<Vec<QualityRow>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(SELECT_QUALITY_BY_IDS)
        .bind(tenant.as_str())
        .bind(ids)
        .fetch_all(connection)
        .await?)
}

async fn fetch_rows<'connection>(
    executor: impl sqlx::PgExecutor<'connection>,
    tenant: &TenantId,
    ids: &[Uuid],
) -> Result<Vec<CallRow>, DbError> {
    let mut rows: Vec<CallRow> = match ids {
        [only] => {
            sqlx::query_as(SELECT_ONE_CALL)
                .bind(tenant.as_str())
                .bind(only)
                .fetch_all(executor)
                .await?
        }
        many => {
            sqlx::query_as(SELECT_CALLS)
                .bind(tenant.as_str())
                .bind(many)
                .fetch_all(executor)
                .await?
        }
    };
    rows.iter_mut().for_each(tidy);
    Ok(rows)
}

/// Sorts the tag ids and the tag group ids and removes repeats (a group shared by two tags).
fn tidy(row: &mut CallRow) {
    row.tag_ids.sort_unstable();
    row.tag_ids.dedup();
    row.tag_group_ids.sort_unstable();
    row.tag_group_ids.dedup();
}

/// The rows in the order of `ids`, each once.
fn in_order(rows: Vec<CallRow>, ids: &[Uuid]) -> Vec<CallRow> {
    let mut by_id: HashMap<Uuid, CallRow> = rows.into_iter().map(|row| (row.id, row)).collect();
    ids.iter().filter_map(|id| by_id.remove(id)).collect()
}

/// Adds the tags and levels of the calls: one statement each for all the calls.
async fn embed_full(
    connection: &mut PgConnection,
    tenant: &TenantId,
    calls: Vec<CallRow>,
) -> Result<Vec<CallRead>, DbError> {
    let tag_ids: Vec<Uuid> = calls
        .iter()
        .flat_map(|call| call.tag_ids.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let level_ids: Vec<Uuid> = calls
        .iter()
        .filter_map(|call| call.level_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tags: HashMap<Uuid, TagRow> = catalog_read::tags_by_ids(connection, tenant, &tag_ids)
        .await?
        .into_iter()
        .map(|tag| (tag.id, tag))
        .collect();
    let levels: HashMap<Uuid, LevelRow> =
        catalog_read::levels_by_ids(connection, tenant, &level_ids)
            .await?
            .into_iter()
            .map(|level| (level.id, level))
            .collect();
    Ok(calls
        .into_iter()
        .map(|call| {
            let mut read = CallRead::basic(call);
            read.tags = read
                .call
                .tag_ids
                .iter()
                .filter_map(|id| tags.get(id).cloned())
                .collect();
            read.level = read.call.level_id.and_then(|id| levels.get(&id).cloned());
            read
        })
        .collect())
}

/// Adds the turns, tasks and quality results of the calls: one statement each for all the calls.
async fn embed_detail(
    connection: &mut PgConnection,
    tenant: &TenantId,
    reads: &mut [CallRead],
) -> Result<(), DbError> {
    let call_ids: Vec<Uuid> = reads.iter().map(|read| read.call.id).collect();
    let task_ids: Vec<Uuid> = reads
        .iter()
        .filter_map(|read| read.call.task_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let turns: Vec<TurnRow> = sqlx::query_as(SELECT_TURNS)
        .bind(tenant.as_str())
        .bind(&call_ids)
        .fetch_all(&mut *connection)
        .await?;
    let mut turns_by_call: HashMap<Uuid, Vec<TurnRow>> = HashMap::new();
    for turn in turns {
        turns_by_call.entry(turn.call_id).or_default().push(turn);
    }

    let tasks: HashMap<Uuid, TaskRow> =
        catalog_read::tasks_by_ids(&mut *connection, tenant, &task_ids)
            .await?
            .into_iter()
            .map(|task| (task.id, task))
            .collect();

    let quality: Vec<QualityRow> = sqlx::query_as(SELECT_QUALITY)
        .bind(tenant.as_str())
        .bind(&call_ids)
        .fetch_all(&mut *connection)
        .await?;
    let mut quality_by_call: HashMap<Uuid, QualityRow> = quality
        .into_iter()
        .map(|result| (result.call_id, result))
        .collect();

    for read in reads {
        read.turns = turns_by_call.remove(&read.call.id).unwrap_or_default();
        read.task = read.call.task_id.and_then(|id| tasks.get(&id).cloned());
        read.quality = quality_by_call.remove(&read.call.id);
    }
    Ok(())
}
