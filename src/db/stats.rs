//! Task statistics: reads of the rollups of migration `20261123000002_call_stats.sql` (which
//! explains how triggers maintain them at ingest), and the compaction pass that folds the
//! pending deltas into them (run by `crate::stats`).
//!
//! A window is read as a cover of pieces (see [`Cover`]): its unaligned edges straight from
//! `calls`, whole minutes, hours and days from `call_stats_buckets`, plus the deltas not
//! compacted yet in its whole minutes. All statements of one read run in one REPEATABLE READ
//! snapshot, so a compaction committing meanwhile is seen entirely or not at all.

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
/// `$2` task, `$4`..`$9` the bounds t1..t6).
fn pieces(columns: &str) -> String {
    [
        (60, 4, 5),
        (3600, 5, 6),
        (86400, 6, 7),
        (3600, 7, 8),
        (60, 8, 9),
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
    WHERE d.tenant_id = $1 AND d.task_id = $2 AND d.slot >= $4 AND d.slot < $9";

/// The calls of the cover's edges, selecting `columns` of `calls c`.
fn edges(columns: &str) -> String {
    format!(
        "SELECT {columns} FROM calls c
         WHERE c.tenant_id = $1 AND c.task_id = $2 AND c.dial_time >= $3 AND c.dial_time < $4
         UNION ALL
         SELECT {columns} FROM calls c
         WHERE c.tenant_id = $1 AND c.task_id = $2 AND c.dial_time >= $9 AND c.dial_time < $10"
    )
}

const PACKED_COLUMNS: &str =
    "b.code_dimensions, b.codes, b.code_counts, b.id_dimensions, b.ids, b.id_counts";

/// Counts per dimension and key over a cover.
static COUNTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH edge AS (
             {edges}
         ),
         packed AS (
             {pieces}
             UNION ALL
             SELECT d.code_dimensions, d.codes, d.code_counts, d.id_dimensions, d.ids, d.id_counts
             FROM {PENDING}
         ),
         parts AS (
             SELECT e.dimension, e.code, e.id, e.count
             FROM packed p
             CROSS JOIN LATERAL call_stats_entries(p.code_dimensions, p.codes, p.code_counts,
                                                   p.id_dimensions, p.ids, p.id_counts) AS e
             UNION ALL
             SELECT k.dimension, k.code, k.id, 1
             FROM edge c
             CROSS JOIN LATERAL call_stats_keys(c.outcome, c.number_status, c.hangup_side,
                                                c.level_id, c.talk_duration_ms, c.dial_time,
                                                c.answer_time) AS k
             UNION ALL
             SELECT 5::smallint, NULL::smallint, t.tag_id, 1
             FROM edge c
             JOIN call_tags t ON t.tenant_id = $1 AND t.call_id = c.id
         )
         SELECT dimension, code, id, sum(count)::bigint AS count
         FROM parts
         GROUP BY dimension, code, id
         HAVING sum(count) <> 0",
        edges = edges(
            "c.id, c.outcome, c.number_status, c.hangup_side, c.level_id, c.talk_duration_ms, \
             c.dial_time, c.answer_time"
        ),
        pieces = pieces(PACKED_COLUMNS),
    )
});

/// Totals per UTC hour or day (`$11`) over a cover.
static POINTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH parts AS (
             {pieces}
             UNION ALL
             SELECT d.slot, d.calls, d.answered, d.transferred, d.talk_sum, d.talk_count
             FROM {PENDING}
             UNION ALL
             {edges}
         )
         SELECT date_trunc($11, at, 'UTC') AS start, sum(calls)::bigint AS calls,
                sum(answered)::bigint AS answered, sum(transferred)::bigint AS transferred,
                sum(talk_sum)::bigint AS talk_sum, sum(talk_count)::bigint AS talk_count
         FROM parts
         GROUP BY 1
         HAVING sum(calls) <> 0
         ORDER BY 1",
        pieces =
            pieces("b.bucket AS at, b.calls, b.answered, b.transferred, b.talk_sum, b.talk_count"),
        edges = edges(
            "c.dial_time, 1::bigint, \
             (CASE WHEN call_stats_answered(c.outcome) THEN 1 ELSE 0 END)::bigint, \
             (CASE WHEN call_stats_transferred(c.transfer_state) THEN 1 ELSE 0 END)::bigint, \
             coalesce(call_stats_talk(c.outcome, c.talk_duration_ms), 0), \
             (CASE WHEN call_stats_talk(c.outcome, c.talk_duration_ms) IS NULL THEN 0 ELSE 1 END)::bigint"
        ),
    )
});

/// Shortest and longest talk time over a cover, exact although min and max cannot be
/// decremented (see the migration): a piece with a pending removal is read minute by minute,
/// and a minute whose pending removal reaches its candidate extreme is recomputed from calls.
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
             SELECT p.talk_min, p.talk_max
             FROM pieces p
             WHERE p.span > 60
               AND NOT EXISTS (SELECT 1 FROM split s WHERE s.span = p.span AND s.bucket = p.bucket)
             UNION ALL
             SELECT CASE WHEN NOT c.stale THEN c.talk_min ELSE
                        (SELECT min(call_stats_talk(x.outcome, x.talk_duration_ms)) FROM calls x
                         WHERE x.tenant_id = $1 AND x.task_id = $2 AND x.dial_time >= c.slot
                           AND x.dial_time < c.slot + interval '1 minute') END,
                    CASE WHEN NOT c.stale THEN c.talk_max ELSE
                        (SELECT max(call_stats_talk(x.outcome, x.talk_duration_ms)) FROM calls x
                         WHERE x.tenant_id = $1 AND x.task_id = $2 AND x.dial_time >= c.slot
                           AND x.dial_time < c.slot + interval '1 minute') END
             FROM candidates c
             UNION ALL
             {edges}
         )
         SELECT min(talk_min) AS talk_min, max(talk_max) AS talk_max FROM extremes",
        pieces = pieces("b.span, b.bucket, b.talk_min, b.talk_max"),
        edges = edges(
            "call_stats_talk(c.outcome, c.talk_duration_ms), \
             call_stats_talk(c.outcome, c.talk_duration_ms)"
        ),
    )
});

/// The statistics of a task over a window; `None` when the tenant has no such task.
#[tracing::instrument(skip_all, fields(tenant = %tenant.as_str(), task_id = %query.task_id))]
pub async fn task_stats(
    pool: &PgPool,
    tenant: &TenantId,
    query: &StatsQuery,
) -> Result<Option<TaskStats>, DbError> {
    // One snapshot for every statement. Generic plans, unlike the pool's default: planning
    // these statements (with the SQL functions they inline) costs twice their execution, and
    // every table is read by a range of a key led by tenant and task, the plan any statistics
    // give. Without parallel workers or JIT, whose start-up would cost more than the reads
    // (the generic estimates assume default selectivities).
    let mut transaction = pool
        .begin_with(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
             SET LOCAL plan_cache_mode = force_generic_plan;
             SET LOCAL max_parallel_workers_per_gather = 0;
             SET LOCAL jit = off",
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

    let days = Cover::new(start, query.end, SeriesInterval::Day);
    let counts: Vec<CountRow> =
        bind_cover(sqlx::query_as(COUNTS_SQL.as_str()), tenant, query, &days)
            .fetch_all(&mut *transaction)
            .await?;
    let series = query.series.unwrap_or(SeriesInterval::Day);
    let points_cover = Cover::new(start, query.end, series);
    let points: Vec<PointRow> = bind_cover(
        sqlx::query_as(POINTS_SQL.as_str()),
        tenant,
        query,
        &points_cover,
    )
    .bind(series.unit())
    .fetch_all(&mut *transaction)
    .await?;
    let (talk_min, talk_max): (Option<i64>, Option<i64>) =
        bind_cover(sqlx::query_as(EXTREMES_SQL.as_str()), tenant, query, &days)
            .fetch_one(&mut *transaction)
            .await?;
    transaction.commit().await?;
    Ok(Some(TaskStats {
        counts,
        points,
        talk_min,
        talk_max,
    }))
}

type QueryAs<'q, O> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, O, <sqlx::Postgres as sqlx::Database>::Arguments>;

/// Binds `$1` tenant, `$2` task and `$3`..`$10` the cover's bounds.
fn bind_cover<'q, O>(
    statement: QueryAs<'q, O>,
    tenant: &TenantId,
    query: &StatsQuery,
    cover: &Cover,
) -> QueryAs<'q, O> {
    let statement = statement
        .bind(tenant.as_str().to_owned())
        .bind(query.task_id);
    cover
        .bounds
        .iter()
        .fold(statement, |statement, bound| statement.bind(*bound))
}

/// Most deltas one compaction pass folds (one transaction).
pub const COMPACTION_BATCH: i64 = 20_000;

/// Key of the advisory lock that lets one compactor run at a time in a database.
const COMPACTION_LOCK: i64 = 0x6361_6c6c_7374_6174; // "callstat"

/// Folds visible deltas into the compacted rows (see the migration): removes up to `limit`
/// deltas, adds them into the minute, hour and day rows they fall in, deletes rows left
/// without calls and recomputes the min and max talk time of rows whose extreme a delta
/// removed, all in one transaction. `None` when another compactor holds the lock; otherwise
/// how many deltas were folded.
pub async fn compact_pass(pool: &PgPool, limit: i64) -> Result<Option<u64>, DbError> {
    let mut transaction = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(COMPACTION_LOCK)
        .fetch_one(&mut *transaction)
        .await?;
    if !locked {
        return Ok(None);
    }
    let rows: Vec<FoldedRow> = sqlx::query_as(COMPACT_SQL)
        .bind(limit)
        .fetch_all(&mut *transaction)
        .await?;
    let consumed = rows.first().map_or(0, |row| row.consumed);
    if consumed == 0 {
        return Ok(Some(0));
    }

    let mut empty = BucketKeys::default();
    let mut stale = [
        BucketKeys::default(),
        BucketKeys::default(),
        BucketKeys::default(),
    ];
    for row in rows {
        let (Some(tenant_id), Some(task_id), Some(span), Some(bucket)) =
            (row.tenant_id, row.task_id, row.span, row.bucket)
        else {
            continue;
        };
        let keys = if row.empty == Some(true) {
            &mut empty
        } else {
            match i64::from(span) {
                SLOT_SECONDS => &mut stale[0],
                HOUR_SECONDS => &mut stale[1],
                _ => &mut stale[2],
            }
        };
        keys.push(tenant_id, task_id, span, bucket);
    }
    if !empty.is_empty() {
        sqlx::query(
            "DELETE FROM call_stats_buckets o
             USING unnest($1::text[], $2::uuid[], $3::integer[], $4::timestamptz[])
                   AS k (tenant_id, task_id, span, bucket)
             WHERE o.tenant_id = k.tenant_id AND o.task_id = k.task_id AND o.span = k.span
               AND o.bucket = k.bucket AND o.calls = 0",
        )
        .bind(&empty.tenant_ids)
        .bind(&empty.task_ids)
        .bind(&empty.spans)
        .bind(&empty.buckets)
        .execute(&mut *transaction)
        .await?;
    }
    let [slots, hours, days] = &stale;
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
        .bind(i32::try_from(span).unwrap_or(i32::MAX))
        .bind(i32::try_from(child_span).unwrap_or(i32::MAX))
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    tracing::debug!(
        consumed,
        emptied = empty.len(),
        stale_minutes = slots.len(),
        stale_hours = hours.len(),
        stale_days = days.len(),
        "compacted task statistics"
    );
    Ok(Some(u64::try_from(consumed).unwrap_or(0)))
}

/// What the compaction statement reports: how many deltas it folded, and each bucket left
/// without calls (`empty`) or with a min or max to recompute (`stale`). Always at least one
/// row; the bucket columns are NULL when no bucket needs anything.
#[derive(sqlx::FromRow)]
struct FoldedRow {
    consumed: i64,
    tenant_id: Option<String>,
    task_id: Option<Uuid>,
    span: Option<i32>,
    bucket: Option<DateTime<Utc>>,
    empty: Option<bool>,
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
    fn push(&mut self, tenant_id: String, task_id: Uuid, span: i32, bucket: DateTime<Utc>) {
        self.tenant_ids.push(tenant_id);
        self.task_ids.push(task_id);
        self.spans.push(span);
        self.buckets.push(bucket);
    }

    fn len(&self) -> usize {
        self.tenant_ids.len()
    }

    fn is_empty(&self) -> bool {
        self.tenant_ids.is_empty()
    }
}

/// Folds up to `$1` visible deltas into `call_stats_buckets` at the three spans. Only the
/// compactor (under its advisory lock) writes compacted rows, so the rows this statement reads
/// are the ones it updates.
const COMPACT_SQL: &str = "
WITH consumed AS (
    DELETE FROM call_stats_deltas
    WHERE ctid = ANY (ARRAY (SELECT ctid FROM call_stats_deltas LIMIT $1))
    RETURNING *
),
leveled AS (
    SELECT c.*, s.span, call_stats_bucket(c.slot, s.span) AS bucket
    FROM consumed c
    CROSS JOIN (VALUES (60), (3600), (86400)) AS s (span)
),
changes AS (
    SELECT tenant_id, task_id, span, bucket,
           sum(calls) AS calls, sum(answered) AS answered, sum(transferred) AS transferred,
           sum(talk_sum) AS talk_sum, sum(talk_count) AS talk_count,
           min(added_min) AS added_min, max(added_max) AS added_max,
           min(removed_min) AS removed_min, max(removed_max) AS removed_max
    FROM leveled
    GROUP BY tenant_id, task_id, span, bucket
),
merged AS (
    SELECT ch.tenant_id, ch.task_id, ch.span, ch.bucket,
           (coalesce(o.calls, 0) + ch.calls)::bigint AS calls,
           (coalesce(o.answered, 0) + ch.answered)::bigint AS answered,
           (coalesce(o.transferred, 0) + ch.transferred)::bigint AS transferred,
           (coalesce(o.talk_sum, 0) + ch.talk_sum)::bigint AS talk_sum,
           (coalesce(o.talk_count, 0) + ch.talk_count)::bigint AS talk_count,
           least(o.talk_min, ch.added_min) AS talk_min,
           greatest(o.talk_max, ch.added_max) AS talk_max,
           coalesce(ch.removed_min <= least(o.talk_min, ch.added_min)
                    OR ch.removed_max >= greatest(o.talk_max, ch.added_max), false) AS stale
    FROM changes ch
    LEFT JOIN call_stats_buckets o
      ON o.tenant_id = ch.tenant_id AND o.task_id = ch.task_id AND o.span = ch.span
     AND o.bucket = ch.bucket
),
entries AS (
    SELECT l.tenant_id, l.task_id, l.span, l.bucket, e.dimension, e.code, e.id, e.count
    FROM leveled l
    CROSS JOIN LATERAL call_stats_entries(l.code_dimensions, l.codes, l.code_counts,
                                          l.id_dimensions, l.ids, l.id_counts) AS e
    UNION ALL
    SELECT o.tenant_id, o.task_id, o.span, o.bucket, e.dimension, e.code, e.id, e.count
    FROM changes ch
    JOIN call_stats_buckets o
      ON o.tenant_id = ch.tenant_id AND o.task_id = ch.task_id AND o.span = ch.span
     AND o.bucket = ch.bucket
    CROSS JOIN LATERAL call_stats_entries(o.code_dimensions, o.codes, o.code_counts,
                                          o.id_dimensions, o.ids, o.id_counts) AS e
),
counted AS (
    SELECT tenant_id, task_id, span, bucket, dimension, code, id, sum(count)::bigint AS count
    FROM entries
    GROUP BY tenant_id, task_id, span, bucket, dimension, code, id
    HAVING sum(count) <> 0
),
packed AS (
    SELECT tenant_id, task_id, span, bucket,
           array_agg(dimension ORDER BY dimension, code) FILTER (WHERE id IS NULL) AS code_dimensions,
           array_agg(code ORDER BY dimension, code) FILTER (WHERE id IS NULL) AS codes,
           array_agg(count ORDER BY dimension, code) FILTER (WHERE id IS NULL) AS code_counts,
           array_agg(dimension ORDER BY dimension, id) FILTER (WHERE id IS NOT NULL) AS id_dimensions,
           array_agg(id ORDER BY dimension, id) FILTER (WHERE id IS NOT NULL) AS ids,
           array_agg(count ORDER BY dimension, id) FILTER (WHERE id IS NOT NULL) AS id_counts
    FROM counted
    GROUP BY tenant_id, task_id, span, bucket
),
saved AS (
    INSERT INTO call_stats_buckets AS o (tenant_id, task_id, span, bucket, calls, answered,
                                         transferred, talk_sum, talk_count, talk_min, talk_max,
                                         code_dimensions, codes, code_counts, id_dimensions, ids,
                                         id_counts)
    SELECT m.tenant_id, m.task_id, m.span, m.bucket, m.calls, m.answered, m.transferred,
           m.talk_sum, m.talk_count, m.talk_min, m.talk_max,
           coalesce(p.code_dimensions, '{}'), coalesce(p.codes, '{}'), coalesce(p.code_counts, '{}'),
           coalesce(p.id_dimensions, '{}'), coalesce(p.ids, '{}'), coalesce(p.id_counts, '{}')
    FROM merged m
    LEFT JOIN packed p
      ON p.tenant_id = m.tenant_id AND p.task_id = m.task_id AND p.span = m.span
     AND p.bucket = m.bucket
    ON CONFLICT (tenant_id, task_id, span, bucket) DO UPDATE
    SET calls = EXCLUDED.calls, answered = EXCLUDED.answered, transferred = EXCLUDED.transferred,
        talk_sum = EXCLUDED.talk_sum, talk_count = EXCLUDED.talk_count,
        talk_min = EXCLUDED.talk_min, talk_max = EXCLUDED.talk_max,
        code_dimensions = EXCLUDED.code_dimensions, codes = EXCLUDED.codes,
        code_counts = EXCLUDED.code_counts, id_dimensions = EXCLUDED.id_dimensions,
        ids = EXCLUDED.ids, id_counts = EXCLUDED.id_counts
)
SELECT n.consumed, f.tenant_id, f.task_id, f.span, f.bucket, f.calls = 0 AS empty
FROM (SELECT count(*) AS consumed FROM consumed) AS n
LEFT JOIN merged f ON f.stale OR f.calls = 0";

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
