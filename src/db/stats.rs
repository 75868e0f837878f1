//! Task statistics: reads of the rollups of migration `20261123000002_call_stats.sql` (which
//! explains how triggers maintain them at ingest), and the compaction pass that folds the
//! pending deltas into them (run by `crate::stats`).
//!
//! A window is read as a cover of pieces (see [`Cover`]): its unaligned edges straight from
//! `calls`, whole minutes, hours and days from `call_stats_buckets`, plus the deltas not
//! compacted yet in its whole minutes. All statements of one read run in one REPEATABLE READ
//! snapshot, so a compaction committing meanwhile is seen entirely or not at all. Counts of
//! zero (keys and points) are left out.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::DbError;
use crate::domain::TenantId;

/// Span of the finest bucket (a minute), in seconds. The migration's `call_stats_slot` and the
/// spans of `call_stats_buckets` are the same.
pub const SLOT_SECONDS: i64 = 60;
/// Span of an hour bucket, in seconds.
pub const HOUR_SECONDS: i64 = 3_600;
/// Span of a day bucket (a UTC day), in seconds.
pub const DAY_SECONDS: i64 = 86_400;

/// What a count is keyed by: the `dimension` codes of the rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// `CallOutcome` number.
    Outcome,
    /// `NumberStatus` number.
    NumberStatus,
    /// `HangupSide` number.
    HangupSide,
    /// Level id (calls without a level are not counted).
    Level,
    /// Tag id (a call counts once under each of its tags).
    Tag,
    /// Talk time of an answered call: bucket 0..=5 of [`DURATION_BUCKETS`].
    TalkTime,
    /// Answer delay (answer time - dial time) of an answered call: bucket 0..=5.
    AnswerDelay,
}

impl Dimension {
    /// The dimension of a rollup code; `None` for a code this version does not know.
    pub fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            1 => Self::Outcome,
            2 => Self::NumberStatus,
            3 => Self::HangupSide,
            4 => Self::Level,
            5 => Self::Tag,
            6 => Self::TalkTime,
            7 => Self::AnswerDelay,
            _ => return None,
        })
    }
}

/// Upper bounds (exclusive, in milliseconds) of the duration buckets 0..=4 of talk time and
/// answer delay; bucket 5 is 60 s and more. The migration's `call_stats_duration_bucket` uses
/// the same bounds.
pub const DURATION_BUCKETS: [i64; 5] = [3_000, 5_000, 10_000, 30_000, 60_000];

/// Granularity of a statistics time series (UTC hours or days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesInterval {
    Hour,
    Day,
}

impl SeriesInterval {
    fn unit(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// Statistics of one task over a window of dial times.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    pub task_id: Uuid,
    /// Inclusive; `None` means from the first call of the task.
    pub start: Option<DateTime<Utc>>,
    /// Exclusive.
    pub end: DateTime<Utc>,
    /// Time series granularity, if one is wanted.
    pub series: Option<SeriesInterval>,
}

/// A count of calls under a key: `code` for enum dimensions and duration buckets, `id` for
/// levels and tags.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CountRow {
    pub dimension: i16,
    pub code: Option<i16>,
    pub id: Option<Uuid>,
    pub count: i64,
}

/// Totals of the calls dialled in one interval of the series (UTC hour or day; the whole window
/// is the sum of the points).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PointRow {
    pub start: DateTime<Utc>,
    pub calls: i64,
    /// Calls with outcome ANSWERED.
    pub answered: i64,
    /// Calls with a transfer state other than UNSPECIFIED and NOT_TRANSFERRED.
    pub transferred: i64,
    /// Sum of the talk times of answered calls that have one, in milliseconds.
    pub talk_sum: i64,
    /// How many answered calls have a talk time.
    pub talk_count: i64,
}

/// What a window holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Non-zero counts per dimension and key, in no particular order.
    pub counts: Vec<CountRow>,
    /// Per UTC hour (when the series asked for hours) or day, in time order; intervals without
    /// calls are left out.
    pub points: Vec<PointRow>,
    /// Shortest and longest talk time of answered calls, in milliseconds.
    pub talk_min: Option<i64>,
    pub talk_max: Option<i64>,
}

/// The pieces a window `[t0, t7)` is read from, as monotone boundaries `t0 <= t1 <= … <= t7`:
/// `[t0, t1)` from calls, `[t1, t2)` minutes, `[t2, t3)` hours, `[t3, t4)` days, `[t4, t5)`
/// hours, `[t5, t6)` minutes, `[t6, t7)` from calls. Empty pieces have equal boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cover {
    pub bounds: [DateTime<Utc>; 8],
}

impl Cover {
    /// The cover of `[start, end)` with the largest buckets no larger than `top` (a day, or an
    /// hour for an hourly series): every whole bucket is read from the rollups, only the parts
    /// of a minute at either edge from calls.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>, top: SeriesInterval) -> Self {
        let end = end.max(start);
        let core_start = ceil_to(start, SLOT_SECONDS);
        let core_end = floor_to(end, SLOT_SECONDS);
        if core_start >= core_end {
            return Self {
                bounds: [start, end, end, end, end, end, end, end],
            };
        }
        let hour_start = ceil_to(core_start, HOUR_SECONDS);
        let hour_end = floor_to(core_end, HOUR_SECONDS);
        if hour_start >= hour_end {
            return Self {
                bounds: [
                    start, core_start, core_end, core_end, core_end, core_end, core_end, end,
                ],
            };
        }
        let (day_start, day_end) = match top {
            SeriesInterval::Hour => (hour_end, hour_end),
            SeriesInterval::Day => {
                let day_start = ceil_to(hour_start, DAY_SECONDS);
                let day_end = floor_to(hour_end, DAY_SECONDS);
                if day_start < day_end {
                    (day_start, day_end)
                } else {
                    (hour_end, hour_end)
                }
            }
        };
        Self {
            bounds: [
                start, core_start, hour_start, day_start, day_end, hour_end, core_end, end,
            ],
        }
    }
}

/// `time` rounded down to a multiple of `seconds` since the Unix epoch.
fn floor_to(time: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    let micros = time.timestamp_micros();
    let unit = seconds * 1_000_000;
    let floored = micros.div_euclid(unit) * unit;
    time + TimeDelta::microseconds(floored - micros)
}

/// `time` rounded up to a multiple of `seconds` since the Unix epoch.
fn ceil_to(time: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    let floored = floor_to(time, seconds);
    if floored < time {
        floored + TimeDelta::seconds(seconds)
    } else {
        floored
    }
}

/// The whole buckets of a cover, selecting `columns` of `call_stats_buckets b` (`$1` tenant,
/// `$2` task, `$3`..`$8` the bounds t1..t6).
fn pieces(columns: &str) -> String {
    [
        (60, 3, 4),
        (3600, 4, 5),
        (86400, 5, 6),
        (3600, 6, 7),
        (60, 7, 8),
    ]
    .iter()
    .map(|(span, low, high)| {
        format!(
            "SELECT {columns} FROM call_stats_buckets b
                 WHERE b.tenant_id = $1 AND b.task_id = $2 AND b.span = {span}
                   AND b.bucket >= ${low} AND b.bucket < ${high}"
        )
    })
    .collect::<Vec<_>>()
    .join("\nUNION ALL\n")
}

/// The deltas not compacted yet in the cover's whole minutes.
const PENDING: &str = "call_stats_deltas d
    WHERE d.tenant_id = $1 AND d.task_id = $2 AND d.slot >= $3 AND d.slot < $8";

const PACKED_COLUMNS: &str =
    "b.code_dimensions, b.codes, b.code_counts, b.id_dimensions, b.ids, b.id_counts";

/// Counts per dimension and key over the rollups of a cover.
static COUNTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH packed AS (
             {pieces}
             UNION ALL
             SELECT d.code_dimensions, d.codes, d.code_counts, d.id_dimensions, d.ids, d.id_counts
             FROM {PENDING}
         )
         SELECT e.dimension, e.code, e.id, sum(e.count)::bigint AS count
         FROM packed p
         CROSS JOIN LATERAL call_stats_entries(p.code_dimensions, p.codes, p.code_counts,
                                               p.id_dimensions, p.ids, p.id_counts) AS e
         GROUP BY e.dimension, e.code, e.id",
        pieces = pieces(PACKED_COLUMNS),
    )
});

/// Totals per UTC hour or day (`$9`) over the rollups of a cover.
static POINTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH parts AS (
             {pieces}
             UNION ALL
             SELECT d.slot, d.calls, d.answered, d.transferred, d.talk_sum, d.talk_count
             FROM {PENDING}
         )
         SELECT date_trunc($9, at, 'UTC') AS start, sum(calls)::bigint AS calls,
                sum(answered)::bigint AS answered, sum(transferred)::bigint AS transferred,
                sum(talk_sum)::bigint AS talk_sum, sum(talk_count)::bigint AS talk_count
         FROM parts
         GROUP BY 1
         ORDER BY 1",
        pieces =
            pieces("b.bucket AS at, b.calls, b.answered, b.transferred, b.talk_sum, b.talk_count"),
    )
});

/// Shortest and longest talk time over the rollups of a cover, and the minutes where a pending
/// removal reaches the candidate extreme (the min and max cannot be decremented, see the
/// migration): a piece with a pending removal is read minute by minute, and such a minute
/// ("stale") has to be recomputed from calls.
static EXTREMES_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH pending AS (
             SELECT d.slot, min(d.added_min) AS added_min, max(d.added_max) AS added_max,
                    min(d.removed_min) AS removed_min, max(d.removed_max) AS removed_max
             FROM {PENDING}
             GROUP BY d.slot
         ),
         pieces AS (
             {pieces}
         ),
         split AS (
             SELECT p.span, p.bucket
             FROM pieces p
             WHERE p.span > 60
               AND EXISTS (SELECT 1 FROM pending r
                           WHERE r.removed_min IS NOT NULL AND r.slot >= p.bucket
                             AND r.slot < p.bucket + p.span * interval '1 second')
         ),
         slots AS (
             SELECT p.bucket AS slot, p.talk_min, p.talk_max FROM pieces p WHERE p.span = 60
             UNION ALL
             SELECT b.bucket, b.talk_min, b.talk_max
             FROM split s
             JOIN call_stats_buckets b
               ON b.tenant_id = $1 AND b.task_id = $2 AND b.span = 60
              AND b.bucket >= s.bucket AND b.bucket < s.bucket + s.span * interval '1 second'
         ),
         candidates AS (
             SELECT coalesce(s.slot, p.slot) AS slot,
                    least(s.talk_min, p.added_min) AS talk_min,
                    greatest(s.talk_max, p.added_max) AS talk_max,
                    coalesce(p.removed_min <= least(s.talk_min, p.added_min)
                             OR p.removed_max >= greatest(s.talk_max, p.added_max), false) AS stale
             FROM slots s
             FULL JOIN pending p ON p.slot = s.slot
         ),
         extremes AS (
             SELECT p.talk_min, p.talk_max, false AS stale, NULL::timestamptz AS slot
             FROM pieces p
             WHERE p.span > 60
               AND NOT EXISTS (SELECT 1 FROM split s WHERE s.span = p.span AND s.bucket = p.bucket)
             UNION ALL
             SELECT c.talk_min, c.talk_max, c.stale, c.slot FROM candidates c
         )
         SELECT min(talk_min) FILTER (WHERE NOT stale) AS talk_min,
                max(talk_max) FILTER (WHERE NOT stale) AS talk_max,
                coalesce(array_agg(slot) FILTER (WHERE stale), '{{}}') AS stale_slots
         FROM extremes",
        pieces = pieces("b.span, b.bucket, b.talk_min, b.talk_max"),
    )
});

/// The calls of a cover's edges, with their tags (`$3`..`$4` and `$5`..`$6`).
const EDGES_SQL: &str = "
    SELECT c.dial_time, c.answer_time, c.outcome, c.number_status, c.hangup_side, c.level_id,
           c.transfer_state, c.talk_duration_ms,
           ARRAY(SELECT t.tag_id FROM call_tags t
                 WHERE t.tenant_id = c.tenant_id AND t.call_id = c.id) AS tag_ids
    FROM (SELECT tenant_id, id, dial_time, answer_time, outcome, number_status, hangup_side,
                 level_id, transfer_state, talk_duration_ms
          FROM calls
          WHERE tenant_id = $1 AND task_id = $2 AND dial_time >= $3 AND dial_time < $4
          UNION ALL
          SELECT tenant_id, id, dial_time, answer_time, outcome, number_status, hangup_side,
                 level_id, transfer_state, talk_duration_ms
          FROM calls
          WHERE tenant_id = $1 AND task_id = $2 AND dial_time >= $5 AND dial_time < $6) AS c";

/// Shortest and longest talk time in the given minutes, from calls.
const RECOMPUTE_SQL: &str = "
    SELECT min(call_stats_talk(x.outcome, x.talk_duration_ms)) AS talk_min,
           max(call_stats_talk(x.outcome, x.talk_duration_ms)) AS talk_max
    FROM unnest($3::timestamptz[]) AS s (slot)
    CROSS JOIN LATERAL (
        SELECT c.outcome, c.talk_duration_ms FROM calls c
        WHERE c.tenant_id = $1 AND c.task_id = $2
          AND c.dial_time >= s.slot AND c.dial_time < s.slot + interval '1 minute'
        OFFSET 0
    ) AS x";

/// A call of a window's edges, read from `calls` itself and counted here with the
/// definitions of the migration's SQL functions (`call_stats_talk`, `call_stats_keys`, …): the
/// tests compare both against a computation of their own.
#[derive(sqlx::FromRow)]
struct EdgeCall {
    dial_time: DateTime<Utc>,
    answer_time: Option<DateTime<Utc>>,
    outcome: i16,
    number_status: i16,
    hangup_side: i16,
    level_id: Option<Uuid>,
    transfer_state: i16,
    talk_duration_ms: Option<i64>,
    tag_ids: Vec<Uuid>,
}

/// The duration bucket 0..=5 of a duration in microseconds (see [`DURATION_BUCKETS`]).
fn duration_bucket(micros: i64) -> i16 {
    let position = DURATION_BUCKETS
        .iter()
        .position(|bound| micros < bound * 1_000)
        .unwrap_or(DURATION_BUCKETS.len());
    i16::try_from(position).unwrap_or(5)
}

impl EdgeCall {
    /// The talk time it counts with: an answered call's (the migration's `call_stats_talk`).
    fn talk(&self) -> Option<i64> {
        (self.outcome == ANSWERED)
            .then_some(self.talk_duration_ms)
            .flatten()
    }

    /// The keys it counts under (the migration's `call_stats_keys`, and its tags).
    fn keys(&self) -> Vec<(i16, Option<i16>, Option<Uuid>)> {
        let mut keys = vec![
            (1, Some(self.outcome), None),
            (2, Some(self.number_status), None),
            (3, Some(self.hangup_side), None),
        ];
        if let Some(level) = self.level_id {
            keys.push((4, None, Some(level)));
        }
        keys.extend(self.tag_ids.iter().map(|tag| (5, None, Some(*tag))));
        if self.outcome == ANSWERED {
            if let Some(talk) = self.talk_duration_ms {
                keys.push((6, Some(duration_bucket(talk.saturating_mul(1_000))), None));
            }
            if let Some(answer) = self.answer_time {
                let delay = (answer - self.dial_time)
                    .num_microseconds()
                    .unwrap_or(i64::MAX);
                keys.push((7, Some(duration_bucket(delay)), None));
            }
        }
        keys
    }
}

/// `CallOutcome::Answered`.
const ANSWERED: i16 = 1;

/// The statistics of a task over a window; `None` when the tenant has no such task.
///
/// In one REPEATABLE READ snapshot: the task and its first call, the calls of the window's
/// edges, then the rollups with generic plans (planning those statements, with the SQL
/// functions they inline, costs twice running them; they read only `call_stats_buckets` and
/// `call_stats_deltas` through keys led by tenant and task, the one plan any statistics give),
/// without parallel workers or JIT, whose start-up would cost more than the reads.
/// Statements that read `calls` are planned for their parameters, like every statement of the
/// service: a generic plan made while the table was small would read a task's every call.
#[tracing::instrument(skip_all, fields(tenant = %tenant.as_str(), task_id = %query.task_id))]
pub async fn task_stats(
    pool: &PgPool,
    tenant: &TenantId,
    query: &StatsQuery,
) -> Result<Option<TaskStats>, DbError> {
    let mut transaction = super::begin_with(
        pool,
        tenant,
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await?;
    let task: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
        "SELECT (SELECT min(c.dial_time) FROM calls c
                 WHERE c.tenant_id = $1 AND c.task_id = $2) AS first_dial_time
         FROM tasks t
         WHERE t.tenant_id = $1 AND t.id = $2",
    )
    .bind(tenant.as_str())
    .bind(query.task_id)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some((first_dial_time,)) = task else {
        return Ok(None);
    };
    // From the first call: from the start of its UTC day, which holds no earlier call and keeps
    // the window aligned.
    let start = match (query.start, first_dial_time) {
        (Some(start), _) => start,
        (None, Some(first)) => floor_to(first, DAY_SECONDS),
        (None, None) => return Ok(Some(TaskStats::default())),
    };
    if start >= query.end {
        return Ok(Some(TaskStats::default()));
    }
    let series = query.series.unwrap_or(SeriesInterval::Day);
    let days = Cover::new(start, query.end, SeriesInterval::Day);
    let points_cover = Cover::new(start, query.end, series);
    let [t0, t1, .., t6, t7] = days.bounds;

    let edges: Vec<EdgeCall> = sqlx::query_as(EDGES_SQL)
        .bind(tenant.as_str())
        .bind(query.task_id)
        .bind(t0)
        .bind(t1)
        .bind(t6)
        .bind(t7)
        .fetch_all(&mut *transaction)
        .await?;

    sqlx::raw_sql(
        "SET LOCAL plan_cache_mode = force_generic_plan;
         SET LOCAL max_parallel_workers_per_gather = 0;
         SET LOCAL jit = off",
    )
    .execute(&mut *transaction)
    .await?;
    let counts: Vec<CountRow> =
        bind_cover(sqlx::query_as(COUNTS_SQL.as_str()), tenant, query, &days)
            .fetch_all(&mut *transaction)
            .await?;
    let points: Vec<PointRow> = bind_cover(
        sqlx::query_as(POINTS_SQL.as_str()),
        tenant,
        query,
        &points_cover,
    )
    .bind(series.unit())
    .fetch_all(&mut *transaction)
    .await?;
    let (mut talk_min, mut talk_max, stale_slots): (Option<i64>, Option<i64>, Vec<DateTime<Utc>>) =
        bind_cover(sqlx::query_as(EXTREMES_SQL.as_str()), tenant, query, &days)
            .fetch_one(&mut *transaction)
            .await?;
    if !stale_slots.is_empty() {
        sqlx::raw_sql("SET LOCAL plan_cache_mode = force_custom_plan")
            .execute(&mut *transaction)
            .await?;
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(RECOMPUTE_SQL)
            .bind(tenant.as_str())
            .bind(query.task_id)
            .bind(&stale_slots)
            .fetch_one(&mut *transaction)
            .await?;
        talk_min = min_of(talk_min, min);
        talk_max = max_of(talk_max, max);
    }
    transaction.commit().await?;

    let mut stats = TaskStats {
        counts,
        points,
        talk_min,
        talk_max,
    };
    add_edges(&mut stats, &edges, series);
    stats.counts.retain(|row| row.count != 0);
    stats.points.retain(|point| point.calls != 0);
    Ok(Some(stats))
}

/// Adds the calls of the edges into what the rollups gave.
fn add_edges(stats: &mut TaskStats, edges: &[EdgeCall], series: SeriesInterval) {
    if edges.is_empty() {
        return;
    }
    let mut counts: HashMap<(i16, Option<i16>, Option<Uuid>), i64> = stats
        .counts
        .drain(..)
        .map(|row| ((row.dimension, row.code, row.id), row.count))
        .collect();
    let mut points: std::collections::BTreeMap<DateTime<Utc>, PointRow> = stats
        .points
        .drain(..)
        .map(|point| (point.start, point))
        .collect();
    let unit = match series {
        SeriesInterval::Hour => HOUR_SECONDS,
        SeriesInterval::Day => DAY_SECONDS,
    };
    for call in edges {
        for key in call.keys() {
            *counts.entry(key).or_insert(0) += 1;
        }
        let start = floor_to(call.dial_time, unit);
        let point = points.entry(start).or_insert(PointRow {
            start,
            calls: 0,
            answered: 0,
            transferred: 0,
            talk_sum: 0,
            talk_count: 0,
        });
        point.calls += 1;
        point.answered += i64::from(call.outcome == ANSWERED);
        point.transferred += i64::from(!matches!(call.transfer_state, 0 | 1));
        if let Some(talk) = call.talk() {
            point.talk_sum += talk;
            point.talk_count += 1;
        }
        stats.talk_min = min_of(stats.talk_min, call.talk());
        stats.talk_max = max_of(stats.talk_max, call.talk());
    }
    stats.counts = counts
        .into_iter()
        .map(|((dimension, code, id), count)| CountRow {
            dimension,
            code,
            id,
            count,
        })
        .collect();
    stats.points = points.into_values().collect();
}

type QueryAs<'q, O> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, O, <sqlx::Postgres as sqlx::Database>::Arguments>;

/// Binds `$1` tenant, `$2` task and `$3`..`$8` the bounds t1..t6 of the cover.
fn bind_cover<'q, O>(
    statement: QueryAs<'q, O>,
    tenant: &TenantId,
    query: &StatsQuery,
    cover: &Cover,
) -> QueryAs<'q, O> {
    let statement = statement
        .bind(tenant.as_str().to_owned())
        .bind(query.task_id);
    cover.bounds[1..7]
        .iter()
        .fold(statement, |statement, bound| statement.bind(*bound))
}

/// Most deltas one compaction pass folds (one transaction).
pub const COMPACTION_BATCH: i64 = 20_000;

/// Key of the advisory lock that lets one compactor run at a time in a database.
const COMPACTION_LOCK: i64 = 0x6361_6c6c_7374_6174; // "callstat"

/// The spans of the compacted buckets, finest first.
const SPANS: [i64; 3] = [SLOT_SECONDS, HOUR_SECONDS, DAY_SECONDS];

/// Folds visible deltas into the compacted rows (see the migration): removes up to `limit`
/// deltas and adds them into the minute, hour and day rows they fall in, deletes rows left
/// without calls and recomputes the min and max talk time of rows whose extreme a delta
/// removed, all in one transaction. `None` when another compactor holds the lock; otherwise
/// how many deltas were folded.
///
/// The rows are merged here rather than in SQL: unpacking, regrouping and repacking the
/// arrays of every touched bucket costs Postgres several microseconds a key, and a batch of
/// calls spread over a month touches a bucket of each span for nearly every call.
pub async fn compact_pass(pool: &PgPool, limit: i64) -> Result<Option<u64>, DbError> {
    // Deltas of every tenant are folded together.
    let mut transaction = super::begin(pool, super::Scope::AllTenants).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(COMPACTION_LOCK)
        .fetch_one(&mut *transaction)
        .await?;
    if !locked {
        return Ok(None);
    }
    let deltas: Vec<PackedRow> = sqlx::query_as(
        "DELETE FROM call_stats_deltas
         WHERE ctid = ANY (ARRAY (SELECT ctid FROM call_stats_deltas LIMIT $1))
         RETURNING tenant_id, task_id, slot AS bucket, calls, answered, transferred, talk_sum,
                   talk_count, added_min, added_max, removed_min, removed_max, code_dimensions,
                   codes, code_counts, id_dimensions, ids, id_counts",
    )
    .bind(limit)
    .fetch_all(&mut *transaction)
    .await?;
    if deltas.is_empty() {
        transaction.commit().await?;
        return Ok(Some(0));
    }
    let consumed = deltas.len();

    // What the deltas change, per bucket of each span.
    let mut changes: HashMap<BucketKey, Change> = HashMap::new();
    for delta in &deltas {
        for span in SPANS {
            let key = BucketKey {
                tenant_id: delta.tenant_id.clone(),
                task_id: delta.task_id,
                span: span_code(span),
                bucket: floor_to(delta.bucket, span),
            };
            changes.entry(key).or_default().add(delta);
        }
    }
    let keys = BucketKeys::from_keys(changes.keys());
    let existing: Vec<BucketRow> = sqlx::query_as(
        "SELECT b.tenant_id, b.task_id, b.span, b.bucket, b.calls, b.answered, b.transferred,
                b.talk_sum, b.talk_count, b.talk_min, b.talk_max, b.code_dimensions, b.codes,
                b.code_counts, b.id_dimensions, b.ids, b.id_counts
         FROM unnest($1::text[], $2::uuid[], $3::integer[], $4::timestamptz[])
              AS k (tenant_id, task_id, span, bucket)
         JOIN call_stats_buckets b
           ON b.tenant_id = k.tenant_id AND b.task_id = k.task_id AND b.span = k.span
          AND b.bucket = k.bucket",
    )
    .bind(&keys.tenant_ids)
    .bind(&keys.task_ids)
    .bind(&keys.spans)
    .bind(&keys.buckets)
    .fetch_all(&mut *transaction)
    .await?;
    let mut existing: HashMap<BucketKey, BucketRow> =
        existing.into_iter().map(|row| (row.key(), row)).collect();

    let mut saved = Vec::with_capacity(changes.len());
    let mut emptied = BucketKeys::default();
    let mut stale: HashMap<i32, BucketKeys> = HashMap::new();
    for (key, change) in changes {
        let merged = change.merge(existing.remove(&key), &key);
        if merged.row.calls == 0 {
            emptied.push(&key);
        } else {
            if merged.stale {
                stale.entry(key.span).or_default().push(&key);
            }
            saved.push(merged.row);
        }
    }
    if !saved.is_empty() {
        let rows = serde_json::to_string(&saved)
            .map_err(|error| DbError::InvalidData(sqlx::Error::Encode(Box::new(error))))?;
        sqlx::query(
            "INSERT INTO call_stats_buckets AS o (tenant_id, task_id, span, bucket, calls, answered,
                                                 transferred, talk_sum, talk_count, talk_min,
                                                 talk_max, code_dimensions, codes, code_counts,
                                                 id_dimensions, ids, id_counts)
             SELECT r.tenant_id, r.task_id, r.span, r.bucket, r.calls, r.answered, r.transferred,
                    r.talk_sum, r.talk_count, r.talk_min, r.talk_max, r.code_dimensions, r.codes,
                    r.code_counts, r.id_dimensions, r.ids, r.id_counts
             FROM json_populate_recordset(NULL::call_stats_buckets, $1::json) AS r
             ON CONFLICT (tenant_id, task_id, span, bucket) DO UPDATE
             SET calls = EXCLUDED.calls, answered = EXCLUDED.answered,
                 transferred = EXCLUDED.transferred, talk_sum = EXCLUDED.talk_sum,
                 talk_count = EXCLUDED.talk_count, talk_min = EXCLUDED.talk_min,
                 talk_max = EXCLUDED.talk_max, code_dimensions = EXCLUDED.code_dimensions,
                 codes = EXCLUDED.codes, code_counts = EXCLUDED.code_counts,
                 id_dimensions = EXCLUDED.id_dimensions, ids = EXCLUDED.ids,
                 id_counts = EXCLUDED.id_counts",
        )
        .bind(rows)
        .execute(&mut *transaction)
        .await?;
    }
    if !emptied.is_empty() {
        sqlx::query(
            "DELETE FROM call_stats_buckets o
             USING unnest($1::text[], $2::uuid[], $3::integer[], $4::timestamptz[])
                   AS k (tenant_id, task_id, span, bucket)
             WHERE o.tenant_id = k.tenant_id AND o.task_id = k.task_id AND o.span = k.span
               AND o.bucket = k.bucket",
        )
        .bind(&emptied.tenant_ids)
        .bind(&emptied.task_ids)
        .bind(&emptied.spans)
        .bind(&emptied.buckets)
        .execute(&mut *transaction)
        .await?;
    }
    let no_keys = BucketKeys::default();
    let [slots, hours, days] = SPANS.map(|span| stale.get(&span_code(span)).unwrap_or(&no_keys));
    if !slots.is_empty() {
        sqlx::query(
            "UPDATE call_stats_buckets o
             SET talk_min = r.talk_min, talk_max = r.talk_max
             FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS k (tenant_id, task_id, bucket)
             CROSS JOIN LATERAL (
                 SELECT min(call_stats_talk(c.outcome, c.talk_duration_ms)) AS talk_min,
                        max(call_stats_talk(c.outcome, c.talk_duration_ms)) AS talk_max
                 FROM calls c
                 WHERE c.tenant_id = k.tenant_id AND c.task_id = k.task_id
                   AND c.dial_time >= k.bucket AND c.dial_time < k.bucket + interval '1 minute'
             ) AS r
             WHERE o.tenant_id = k.tenant_id AND o.task_id = k.task_id AND o.span = 60
               AND o.bucket = k.bucket",
        )
        .bind(&slots.tenant_ids)
        .bind(&slots.task_ids)
        .bind(&slots.buckets)
        .execute(&mut *transaction)
        .await?;
    }
    // Hours from their (now exact) minutes, then days from their hours.
    for (keys, span, child_span) in [
        (hours, HOUR_SECONDS, SLOT_SECONDS),
        (days, DAY_SECONDS, HOUR_SECONDS),
    ] {
        if keys.is_empty() {
            continue;
        }
        sqlx::query(
            "UPDATE call_stats_buckets o
             SET talk_min = r.talk_min, talk_max = r.talk_max
             FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS k (tenant_id, task_id, bucket)
             CROSS JOIN LATERAL (
                 SELECT min(x.talk_min) AS talk_min, max(x.talk_max) AS talk_max
                 FROM call_stats_buckets x
                 WHERE x.tenant_id = k.tenant_id AND x.task_id = k.task_id AND x.span = $5
                   AND x.bucket >= k.bucket AND x.bucket < k.bucket + $4 * interval '1 second'
             ) AS r
             WHERE o.tenant_id = k.tenant_id AND o.task_id = k.task_id AND o.span = $4
               AND o.bucket = k.bucket",
        )
        .bind(&keys.tenant_ids)
        .bind(&keys.task_ids)
        .bind(&keys.buckets)
        .bind(span_code(span))
        .bind(span_code(child_span))
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    tracing::debug!(
        consumed,
        saved = saved.len(),
        emptied = emptied.len(),
        stale_minutes = slots.len(),
        stale_hours = hours.len(),
        stale_days = days.len(),
        "compacted task statistics"
    );
    Ok(Some(u64::try_from(consumed).unwrap_or(0)))
}

/// A span in seconds as the `span` column holds it.
fn span_code(span: i64) -> i32 {
    i32::try_from(span).unwrap_or(i32::MAX)
}

/// A compacted bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BucketKey {
    tenant_id: String,
    task_id: Uuid,
    span: i32,
    bucket: DateTime<Utc>,
}

/// A delta as the compactor reads it (its slot in `bucket`).
#[derive(sqlx::FromRow)]
struct PackedRow {
    tenant_id: String,
    task_id: Uuid,
    bucket: DateTime<Utc>,
    calls: i64,
    answered: i64,
    transferred: i64,
    talk_sum: i64,
    talk_count: i64,
    added_min: Option<i64>,
    added_max: Option<i64>,
    removed_min: Option<i64>,
    removed_max: Option<i64>,
    code_dimensions: Vec<i16>,
    codes: Vec<i16>,
    code_counts: Vec<i64>,
    id_dimensions: Vec<i16>,
    ids: Vec<Uuid>,
    id_counts: Vec<i64>,
}

/// A row of `call_stats_buckets`, as read and as written (the JSON field names are the
/// columns).
#[derive(sqlx::FromRow, serde::Serialize)]
struct BucketRow {
    tenant_id: String,
    task_id: Uuid,
    span: i32,
    bucket: DateTime<Utc>,
    calls: i64,
    answered: i64,
    transferred: i64,
    talk_sum: i64,
    talk_count: i64,
    talk_min: Option<i64>,
    talk_max: Option<i64>,
    code_dimensions: Vec<i16>,
    codes: Vec<i16>,
    code_counts: Vec<i64>,
    id_dimensions: Vec<i16>,
    ids: Vec<Uuid>,
    id_counts: Vec<i64>,
}

impl BucketRow {
    fn key(&self) -> BucketKey {
        BucketKey {
            tenant_id: self.tenant_id.clone(),
            task_id: self.task_id,
            span: self.span,
            bucket: self.bucket,
        }
    }
}

/// The key of a count: a dimension with an enum code or an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum EntryKey {
    Code(i16, i16),
    Id(i16, Uuid),
}

/// Adds parallel arrays of counts into `entries`.
fn add_entries(
    entries: &mut HashMap<EntryKey, i64>,
    code_dimensions: &[i16],
    codes: &[i16],
    code_counts: &[i64],
    id_dimensions: &[i16],
    ids: &[Uuid],
    id_counts: &[i64],
) {
    for ((dimension, code), count) in code_dimensions.iter().zip(codes).zip(code_counts) {
        *entries
            .entry(EntryKey::Code(*dimension, *code))
            .or_insert(0) += count;
    }
    for ((dimension, id), count) in id_dimensions.iter().zip(ids).zip(id_counts) {
        *entries.entry(EntryKey::Id(*dimension, *id)).or_insert(0) += count;
    }
}

/// The deltas that fall in one bucket, added up.
#[derive(Default)]
struct Change {
    calls: i64,
    answered: i64,
    transferred: i64,
    talk_sum: i64,
    talk_count: i64,
    added_min: Option<i64>,
    added_max: Option<i64>,
    removed_min: Option<i64>,
    removed_max: Option<i64>,
    entries: HashMap<EntryKey, i64>,
}

/// A merged bucket, and whether its min or max must be recomputed.
struct Merged {
    row: BucketRow,
    stale: bool,
}

fn min_of(left: Option<i64>, right: Option<i64>) -> Option<i64> {
    match (left, right) {
        (Some(left), Some(right)) => Some(left.min(right)),
        (value, None) | (None, value) => value,
    }
}

fn max_of(left: Option<i64>, right: Option<i64>) -> Option<i64> {
    match (left, right) {
        (Some(left), Some(right)) => Some(left.max(right)),
        (value, None) | (None, value) => value,
    }
}

impl Change {
    fn add(&mut self, delta: &PackedRow) {
        self.calls += delta.calls;
        self.answered += delta.answered;
        self.transferred += delta.transferred;
        self.talk_sum += delta.talk_sum;
        self.talk_count += delta.talk_count;
        self.added_min = min_of(self.added_min, delta.added_min);
        self.added_max = max_of(self.added_max, delta.added_max);
        self.removed_min = min_of(self.removed_min, delta.removed_min);
        self.removed_max = max_of(self.removed_max, delta.removed_max);
        add_entries(
            &mut self.entries,
            &delta.code_dimensions,
            &delta.codes,
            &delta.code_counts,
            &delta.id_dimensions,
            &delta.ids,
            &delta.id_counts,
        );
    }

    /// The bucket after this change (see the migration for the min and max rule).
    fn merge(self, old: Option<BucketRow>, key: &BucketKey) -> Merged {
        let mut entries = self.entries;
        let (mut calls, mut answered, mut transferred, mut talk_sum, mut talk_count) = (
            self.calls,
            self.answered,
            self.transferred,
            self.talk_sum,
            self.talk_count,
        );
        let (mut talk_min, mut talk_max) = (self.added_min, self.added_max);
        if let Some(old) = old {
            calls += old.calls;
            answered += old.answered;
            transferred += old.transferred;
            talk_sum += old.talk_sum;
            talk_count += old.talk_count;
            talk_min = min_of(old.talk_min, talk_min);
            talk_max = max_of(old.talk_max, talk_max);
            add_entries(
                &mut entries,
                &old.code_dimensions,
                &old.codes,
                &old.code_counts,
                &old.id_dimensions,
                &old.ids,
                &old.id_counts,
            );
        }
        let stale = matches!((self.removed_min, talk_min), (Some(removed), Some(min)) if removed <= min)
            || matches!((self.removed_max, talk_max), (Some(removed), Some(max)) if removed >= max);
        let mut counted: Vec<(EntryKey, i64)> = entries
            .into_iter()
            .filter(|(_, count)| *count != 0)
            .collect();
        counted.sort_unstable();
        let mut row = BucketRow {
            tenant_id: key.tenant_id.clone(),
            task_id: key.task_id,
            span: key.span,
            bucket: key.bucket,
            calls,
            answered,
            transferred,
            talk_sum,
            talk_count,
            talk_min,
            talk_max,
            code_dimensions: Vec::new(),
            codes: Vec::new(),
            code_counts: Vec::new(),
            id_dimensions: Vec::new(),
            ids: Vec::new(),
            id_counts: Vec::new(),
        };
        for (entry, count) in counted {
            match entry {
                EntryKey::Code(dimension, code) => {
                    row.code_dimensions.push(dimension);
                    row.codes.push(code);
                    row.code_counts.push(count);
                }
                EntryKey::Id(dimension, id) => {
                    row.id_dimensions.push(dimension);
                    row.ids.push(id);
                    row.id_counts.push(count);
                }
            }
        }
        Merged { row, stale }
    }
}

/// Bucket keys as parallel arrays, for `unnest`.
#[derive(Default)]
struct BucketKeys {
    tenant_ids: Vec<String>,
    task_ids: Vec<Uuid>,
    spans: Vec<i32>,
    buckets: Vec<DateTime<Utc>>,
}

impl BucketKeys {
    fn from_keys<'a>(keys: impl Iterator<Item = &'a BucketKey>) -> Self {
        let mut all = Self::default();
        for key in keys {
            all.push(key);
        }
        all
    }

    fn push(&mut self, key: &BucketKey) {
        self.tenant_ids.push(key.tenant_id.clone());
        self.task_ids.push(key.task_id);
        self.spans.push(key.span);
        self.buckets.push(key.bucket);
    }

    fn len(&self) -> usize {
        self.tenant_ids.len()
    }

    fn is_empty(&self) -> bool {
        self.tenant_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn bounds(cover: Cover) -> Vec<String> {
        cover
            .bounds
            .iter()
            .map(|bound| bound.format("%d %H:%M:%S%.3f").to_string())
            .collect()
    }

    #[test]
    fn a_cover_reads_days_then_hours_then_minutes_then_calls() {
        let cover = Cover::new(
            at("2025-04-03T01:02:03.5Z"),
            at("2025-04-27T03:04:05Z"),
            SeriesInterval::Day,
        );
        assert_eq!(
            bounds(cover),
            [
                "03 01:02:03.500",
                "03 01:03:00.000",
                "03 02:00:00.000",
                "04 00:00:00.000",
                "27 00:00:00.000",
                "27 03:00:00.000",
                "27 03:04:00.000",
                "27 03:04:05.000",
            ]
        );
    }

    #[test]
    fn an_hourly_cover_has_no_days() {
        let cover = Cover::new(
            at("2025-04-03T01:02:03Z"),
            at("2025-04-27T03:04:05Z"),
            SeriesInterval::Hour,
        );
        assert_eq!(
            bounds(cover),
            [
                "03 01:02:03.000",
                "03 01:03:00.000",
                "03 02:00:00.000",
                "27 03:00:00.000",
                "27 03:00:00.000",
                "27 03:00:00.000",
                "27 03:04:00.000",
                "27 03:04:05.000",
            ]
        );
    }

    #[test]
    fn aligned_windows_read_no_calls_and_short_ones_only_calls() {
        let aligned = Cover::new(
            at("2025-04-03T00:00:00Z"),
            at("2025-04-05T00:00:00Z"),
            SeriesInterval::Day,
        );
        assert_eq!(aligned.bounds[0], aligned.bounds[1]);
        assert_eq!(aligned.bounds[6], aligned.bounds[7]);
        assert_eq!(aligned.bounds[3], at("2025-04-03T00:00:00Z"));
        assert_eq!(aligned.bounds[4], at("2025-04-05T00:00:00Z"));

        let short = Cover::new(
            at("2025-04-03T10:00:10Z"),
            at("2025-04-03T10:00:50Z"),
            SeriesInterval::Day,
        );
        assert_eq!(
            bounds(short),
            [
                "03 10:00:10.000",
                "03 10:00:50.000",
                "03 10:00:50.000",
                "03 10:00:50.000",
                "03 10:00:50.000",
                "03 10:00:50.000",
                "03 10:00:50.000",
                "03 10:00:50.000",
            ]
        );

        let minutes = Cover::new(
            at("2025-04-03T10:00:10Z"),
            at("2025-04-03T10:30:50Z"),
            SeriesInterval::Day,
        );
        assert_eq!(
            bounds(minutes),
            [
                "03 10:00:10.000",
                "03 10:01:00.000",
                "03 10:30:00.000",
                "03 10:30:00.000",
                "03 10:30:00.000",
                "03 10:30:00.000",
                "03 10:30:00.000",
                "03 10:30:50.000",
            ]
        );
    }

    #[test]
    fn every_cover_is_monotone_and_spans_the_window() {
        let start = at("2025-04-03T00:00:00Z");
        for (offset, length) in [
            (0, 1),
            (59, 61),
            (3_599, 7_201),
            (86_399, 200_000),
            (7, 3_000_000),
        ] {
            for top in [SeriesInterval::Hour, SeriesInterval::Day] {
                let low = start + TimeDelta::seconds(offset);
                let high = low + TimeDelta::seconds(length);
                let cover = Cover::new(low, high, top);
                assert_eq!(cover.bounds[0], low);
                assert_eq!(cover.bounds[7], high);
                assert!(cover.bounds.windows(2).all(|pair| pair[0] <= pair[1]));
                assert!(cover.bounds[1] - cover.bounds[0] < TimeDelta::minutes(1));
                assert!(cover.bounds[7] - cover.bounds[6] < TimeDelta::minutes(1));
            }
        }
    }

    #[test]
    fn times_round_to_epoch_multiples() {
        assert_eq!(
            floor_to(at("1969-12-31T23:59:30Z"), 60),
            at("1969-12-31T23:59:00Z")
        );
        assert_eq!(
            ceil_to(at("2025-04-03T10:00:00Z"), 3600),
            at("2025-04-03T10:00:00Z")
        );
        assert_eq!(
            ceil_to(at("2025-04-03T10:00:00.000001Z"), 3600),
            at("2025-04-03T11:00:00Z")
        );
    }
}
