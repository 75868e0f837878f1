//! Reads of the `feed_events` table below the xid8 watermark, the snapshot a `snapshot` start
//! reads calls in, and retention.
//!
//! A plain `id > cursor` over the identity column skips rows of transactions that took their ids
//! early and committed late. Instead each read takes `pg_snapshot_xmin(pg_current_snapshot())`,
//! the oldest transaction still in progress, in the same statement as the rows: every
//! transaction below it has ended, and any transaction that has not written yet will get a
//! larger id, so the rows below it are final. Rows are read in `(tx_id, id)` order, which the
//! index `(tenant_id, tx_id, id)` serves.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::db::{DbError, Scope};
use crate::domain::TenantId;
use crate::feed::cursor::{Position, SeenBySnapshot};

/// One row of `feed_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    /// Where the row sorts: its `tx_id` (an ordering key, at least its writer's transaction id)
    /// and `id`.
    pub position: Position,
    /// The transaction that wrote the row.
    pub writer_tx: u64,
    pub kind: i16,
    pub call_id: Uuid,
    pub call_version: i64,
    pub task_id: Option<Uuid>,
    pub turn_sequence: Option<i32>,
    pub quality_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
}

/// What one read of the feed found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// The rows after the position asked for and below the watermark, in feed order.
    pub rows: Vec<FeedRow>,
    /// Where the reader stands after this read: the last row when the page is full, else the
    /// watermark (everything below it has been read).
    pub next: Position,
    /// The page is full: there may be more below the watermark.
    pub full: bool,
    /// How far retention has pruned this tenant's feed.
    pub horizon: Option<Position>,
}

/// Rows a reader wants: event kinds and tasks (empty = all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedSelection {
    pub kinds: Vec<i16>,
    pub task_ids: Vec<Uuid>,
}

#[derive(FromRow)]
struct PageRow {
    watermark: String,
    horizon_tx: Option<String>,
    horizon_id: Option<i64>,
    id: Option<i64>,
    tx_id: Option<String>,
    writer_tx: Option<String>,
    kind: Option<i16>,
    call_id: Option<Uuid>,
    call_version: Option<i64>,
    task_id: Option<Uuid>,
    turn_sequence: Option<i32>,
    quality_id: Option<Uuid>,
    create_time: Option<DateTime<Utc>>,
}

/// The watermark, the horizon, and up to `$4` rows after `($2, $3)` below the watermark, in one
/// statement (one snapshot). Always one row, with the event columns NULL when there is none.
const READ_PAGE: &str = "
    WITH w AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT w.xmin::text AS watermark,
           h.tx_id::text AS horizon_tx, h.id AS horizon_id,
           f.id, f.tx_id::text AS tx_id, f.writer_tx::text AS writer_tx, f.kind, f.call_id, f.call_version, f.task_id,
           f.turn_sequence, f.quality_id, f.create_time
    FROM w
    LEFT JOIN feed_horizons h ON h.tenant_id = $1
    LEFT JOIN LATERAL (
        SELECT e.* FROM feed_events e
        WHERE e.tenant_id = $1
          AND (e.tx_id, e.id) > ($2::text::xid8, $3)
          AND e.tx_id < w.xmin
          AND (cardinality($5::smallint[]) = 0 OR e.kind = ANY($5))
          AND (cardinality($6::uuid[]) = 0 OR e.task_id = ANY($6))
        ORDER BY e.tx_id, e.id
        LIMIT $4
    ) f ON true
    ORDER BY f.tx_id, f.id";

/// Reads the tenant's feed after `after`, below the watermark, at most `limit` rows.
pub async fn read_page(
    pool: &PgPool,
    tenant: &TenantId,
    after: Position,
    limit: usize,
    selection: &FeedSelection,
) -> Result<FeedPage, DbError> {
    let limit = limit.max(1);
    let rows: Vec<PageRow> = super::read(pool, tenant, async |connection| {
        Ok(sqlx::query_as(READ_PAGE)
            .bind(tenant.as_str())
            .bind(after.tx.to_string())
            .bind(after.id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(&selection.kinds)
            .bind(&selection.task_ids)
            .fetch_all(connection)
            .await?)
    })
    .await?;
    let first = rows.first().ok_or(DbError::NotFound)?;
    let watermark = parse_xid(&first.watermark)?;
    let horizon = match (&first.horizon_tx, first.horizon_id) {
        (Some(tx), Some(id)) => Some(Position {
            tx: parse_xid(tx)?,
            id,
        }),
        _ => None,
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let (
            Some(id),
            Some(tx),
            Some(writer_tx),
            Some(kind),
            Some(call_id),
            Some(call_version),
            Some(time),
        ) = (
            row.id,
            row.tx_id.as_deref(),
            row.writer_tx.as_deref(),
            row.kind,
            row.call_id,
            row.call_version,
            row.create_time,
        )
        else {
            continue;
        };
        events.push(FeedRow {
            position: Position {
                tx: parse_xid(tx)?,
                id,
            },
            writer_tx: parse_xid(writer_tx)?,
            kind,
            call_id,
            call_version,
            task_id: row.task_id,
            turn_sequence: row.turn_sequence,
            quality_id: row.quality_id,
            create_time: time,
        });
    }
    let full = events.len() >= limit;
    let next = match events.last() {
        Some(last) if full => last.position,
        _ => after.max(Position::watermark(watermark)),
    };
    Ok(FeedPage {
        rows: events,
        next,
        full,
        horizon,
    })
}

/// The transactions the database has ended now: its current snapshot. Its `xmin` is the
/// watermark; everything it saw has committed (or aborted) before this call.
pub async fn current_snapshot(pool: &PgPool) -> Result<SeenBySnapshot, DbError> {
    let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(pool)
        .await?;
    parse_snapshot(&text)
}

/// How far retention has pruned the tenant's feed.
pub async fn horizon(pool: &PgPool, tenant: &TenantId) -> Result<Option<Position>, DbError> {
    let row: Option<(String, i64)> = super::read(pool, tenant, async |connection| {
        Ok(
            sqlx::query_as("SELECT tx_id::text, id FROM feed_horizons WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(connection)
                .await?,
        )
    })
    .await?;
    row.map(|(tx, id)| {
        Ok(Position {
            tx: parse_xid(&tx)?,
            id,
        })
    })
    .transpose()
}

/// Starts the read-only snapshot a `snapshot` start shows calls from, and returns what it saw.
/// The caller reads the calls in the transaction, then ends it.
pub async fn begin_snapshot(
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<(Transaction<'static, Postgres>, SeenBySnapshot), DbError> {
    let mut transaction = super::begin_with(
        pool,
        tenant,
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await?;
    let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *transaction)
        .await?;
    let seen = parse_snapshot(&text)?;
    Ok((transaction, seen))
}

/// Which calls a snapshot shows: all AND'ed, each list OR'ed, empty lists match all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    pub task_ids: Vec<Uuid>,
    pub tag_ids: Vec<Uuid>,
    pub level_ids: Vec<Uuid>,
    pub score_min: Option<i64>,
    pub score_max: Option<i64>,
    pub outcomes: Vec<i16>,
}

/// The ids of up to `limit` matching calls after `after` in id order (the primary key's order).
pub async fn snapshot_page(
    connection: &mut PgConnection,
    tenant: &TenantId,
    filter: &SnapshotFilter,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<Uuid>, DbError> {
    let has_score = filter.score_min.is_some() || filter.score_max.is_some();
    Ok(sqlx::query_scalar(
        "SELECT c.id FROM calls c
         WHERE c.tenant_id = $1
           AND ($2::uuid IS NULL OR c.id > $2)
           AND (cardinality($3::uuid[]) = 0 OR c.task_id = ANY($3))
           AND (cardinality($4::uuid[]) = 0 OR EXISTS (
                   SELECT 1 FROM call_tags ct
                   WHERE ct.tenant_id = $1 AND ct.call_id = c.id AND ct.tag_id = ANY($4)))
           AND (cardinality($5::uuid[]) = 0 OR c.level_id = ANY($5))
           AND (NOT $6 OR (c.score IS NOT NULL
                           AND ($7::bigint IS NULL OR c.score >= $7)
                           AND ($8::bigint IS NULL OR c.score < $8)))
           AND (cardinality($9::smallint[]) = 0 OR c.outcome = ANY($9))
         ORDER BY c.id
         LIMIT $10",
    )
    .bind(tenant.as_str())
    .bind(after)
    .bind(&filter.task_ids)
    .bind(&filter.tag_ids)
    .bind(&filter.level_ids)
    .bind(has_score)
    .bind(filter.score_min)
    .bind(filter.score_max)
    .bind(&filter.outcomes)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(connection)
    .await?)
}

/// Deletes up to `limit` of the tenant's events written before `cutoff` (of transactions below
/// the watermark) and moves its horizon past them. Returns how many were deleted.
pub async fn prune(
    pool: &PgPool,
    tenant: &str,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<u64, DbError> {
    let deleted: i64 = super::write(pool, Scope::Tenant(tenant), async |connection| {
        Ok(sqlx::query_scalar(
            "WITH doomed AS (
             SELECT e.id FROM feed_events e
             WHERE e.tenant_id = $1 AND e.create_time < $2
               AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY e.create_time
             LIMIT $3
         ),
         deleted AS (
             DELETE FROM feed_events e USING doomed d
             WHERE e.tenant_id = $1 AND e.id = d.id
             RETURNING e.tx_id, e.id
         ),
         last AS (
             SELECT tx_id, id FROM deleted ORDER BY tx_id DESC, id DESC LIMIT 1
         ),
         moved AS (
             INSERT INTO feed_horizons (tenant_id, tx_id, id)
             SELECT $1, tx_id, id FROM last
             ON CONFLICT (tenant_id) DO UPDATE
             SET tx_id = EXCLUDED.tx_id, id = EXCLUDED.id, update_time = now()
             WHERE (feed_horizons.tx_id, feed_horizons.id) < (EXCLUDED.tx_id, EXCLUDED.id)
         )
         SELECT count(*) FROM deleted",
        )
        .bind(tenant)
        .bind(cutoff)
        .bind(limit)
        .fetch_one(connection)
        .await?)
    })
    .await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// Every tenant, for the pruner.
pub async fn tenants(pool: &PgPool) -> Result<Vec<String>, DbError> {
    super::read(pool, Scope::AllTenants, async |connection| {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM tenants ORDER BY tenant_id")
                .fetch_all(connection)
                .await?,
        )
    })
    .await
}

fn parse_snapshot(text: &str) -> Result<SeenBySnapshot, DbError> {
    SeenBySnapshot::parse(text).ok_or_else(|| {
        DbError::Other(sqlx::Error::Protocol(format!(
            "unreadable pg_snapshot {text:?}"
        )))
    })
}

fn parse_xid(text: &str) -> Result<u64, DbError> {
    text.parse().map_err(|_| {
        DbError::Other(sqlx::Error::Protocol(format!(
            "unreadable transaction id {text:?}"
        )))
    })
}
