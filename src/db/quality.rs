//! The `quality_results` aggregate: computed and imported inspection results, versioned per
//! call and source.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::DbError;
use crate::db::calls::StoreOutcome;
use crate::domain::TenantId;
use crate::domain::quality::ImportedQuality;
use crate::proto::{CallEventKind, QualitySource, QualityStatus, SourceFormat};
use crate::quality::Computed;

/// A stored quality result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredQuality {
    pub id: Uuid,
    pub version: i64,
    pub outcome: StoreOutcome,
}

/// Stores an imported result for the call with the same source key. The same content again
/// adds nothing; other content is a new version with a QUALITY_ADDED event. A result for a call
/// callstore does not hold is refused (`NotFound`), so the sender retries once the call is in.
pub async fn import_quality(
    connection: &mut PgConnection,
    tenant: &TenantId,
    quality: &ImportedQuality,
) -> Result<StoredQuality, DbError> {
    let call: Option<(Uuid, i64, Option<Uuid>)> = sqlx::query_as(
        "SELECT id, version, task_id FROM calls
         WHERE tenant_id = $1 AND source_system = $2 AND source_call_id = $3
         FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(&quality.call.system)
    .bind(&quality.call.id)
    .fetch_optional(&mut *connection)
    .await?;
    let Some((call_id, call_version, task_id)) = call else {
        return Err(DbError::NotFound);
    };

    let content_hash = Sha256::digest(serde_json::to_vec(quality).unwrap_or_default()).to_vec();
    let latest: Option<(Uuid, i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, version, content_hash FROM quality_results
         WHERE tenant_id = $1 AND call_id = $2 AND source = $3
         ORDER BY version DESC LIMIT 1",
    )
    .bind(tenant.as_str())
    .bind(call_id)
    .bind(QualitySource::Imported as i16)
    .fetch_optional(&mut *connection)
    .await?;
    if let Some((id, version, Some(hash))) = &latest
        && *hash == content_hash
    {
        return Ok(StoredQuality {
            id: *id,
            version: *version,
            outcome: StoreOutcome::Unchanged,
        });
    }

    let version = latest.as_ref().map_or(1, |(_, version, _)| version + 1);
    let details = serde_json::json!({
        "staff_id": quality.staff_id,
        "staff_name": quality.staff_name,
        "file_name": quality.file_name,
        "call_time": quality.call_time,
        "upload_time": quality.upload_time,
        "duration_ms": quality.duration_ms,
        "call_type": quality.call_type,
        "sides": quality.sides,
        "segments": quality.segments,
        "deal": quality.deal,
        "source_system": quality.call.system,
        "source_call_id": quality.call.id,
    });
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO quality_results (tenant_id, call_id, source, version, source_format, status,
             violation_count, content_hash, details, extra)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         RETURNING id",
    )
    .bind(tenant.as_str())
    .bind(call_id)
    .bind(QualitySource::Imported as i16)
    .bind(version)
    .bind(quality.source_format as i16)
    .bind(quality.status as i16)
    .bind(quality.violation_count)
    .bind(content_hash)
    .bind(details)
    .bind(sqlx::types::Json(&quality.extra))
    .fetch_one(&mut *connection)
    .await?;
    // The stream announces the result with its id, so a consumer can fetch that version.
    sqlx::query(
        "INSERT INTO feed_events (tenant_id, kind, call_id, call_version, task_id, quality_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant.as_str())
    .bind(CallEventKind::QualityAdded as i16)
    .bind(call_id)
    .bind(call_version)
    .bind(task_id)
    .bind(id)
    .execute(&mut *connection)
    .await?;
    let outcome = if version == 1 {
        StoreOutcome::Created
    } else {
        StoreOutcome::Updated
    };
    Ok(StoredQuality {
        id,
        version,
        outcome,
    })
}

/// A computed result to store for a call.
#[derive(Debug, Clone, Copy)]
pub struct ComputedFor<'result> {
    pub call_id: Uuid,
    pub call_version: i64,
    pub task_id: Option<Uuid>,
    pub source_format: SourceFormat,
    pub computed: &'result Computed,
    /// The call was created by this transaction: it has no earlier result to compare with.
    pub first: bool,
}

/// Computed results as [`STORE_COMPUTED_SQL`] takes them: a vector per column, sent as typed
/// arrays (binary, nothing for Postgres to parse but the JSON of `details`). The rule ids of
/// all results go in one array; each result names its slice of it (1-based, inclusive; an
/// empty slice when `hits_to < hits_from`).
#[derive(Default)]
struct ComputedColumns {
    /// Time-ordered (v7), so new results append to the primary key's index instead of
    /// landing on random pages of it.
    id: Vec<Uuid>,
    call_id: Vec<Uuid>,
    call_version: Vec<i64>,
    task_id: Vec<Option<Uuid>>,
    source_format: Vec<i16>,
    status: Vec<i16>,
    score: Vec<Option<f64>>,
    rule_set_id: Vec<Option<Uuid>>,
    rule_set_version: Vec<Option<i64>>,
    violation_count: Vec<Option<i32>>,
    content_hash: Vec<Vec<u8>>,
    details: Vec<String>,
    hits_from: Vec<i32>,
    hits_to: Vec<i32>,
    first: Vec<bool>,
    hit_rule_ids: Vec<String>,
}

impl ComputedColumns {
    fn push(&mut self, result: &ComputedFor<'_>) {
        let computed = result.computed;
        let scoring = computed.scoring.as_ref();
        let details = computed.details_json();
        self.id.push(Uuid::now_v7());
        self.call_id.push(result.call_id);
        self.call_version.push(result.call_version);
        self.task_id.push(result.task_id);
        self.source_format.push(result.source_format as i16);
        self.status.push(QualityStatus::Done as i16);
        self.score.push(computed.score());
        self.rule_set_id
            .push(scoring.map(|scoring| scoring.rule_set_id));
        self.rule_set_version
            .push(scoring.map(|scoring| scoring.rule_set_version));
        self.violation_count.push(computed.violation_count());
        self.content_hash
            .push(Computed::content_hash_of(&details, scoring).to_vec());
        self.details.push(details);
        let position = |count: usize| i32::try_from(count).unwrap_or(i32::MAX);
        self.hits_from.push(position(self.hit_rule_ids.len() + 1));
        self.hit_rule_ids.extend(computed.hit_rule_ids());
        self.hits_to.push(position(self.hit_rule_ids.len()));
        self.first.push(result.first);
    }
}

/// Stores computed results, each as the call's next computed version, in one statement. A
/// result equal to the call's latest computed one adds nothing. With `announce`, each new
/// version gets a QUALITY_ADDED event. Of several results for one call, the last is stored.
/// The caller holds the calls' rows locked (it wrote them, or selected them `FOR UPDATE`), so
/// versions cannot race. Returns the new versions.
pub async fn store_computed(
    connection: &mut PgConnection,
    tenant: &TenantId,
    results: &[ComputedFor<'_>],
    announce: bool,
) -> Result<Vec<StoredQuality>, DbError> {
    let mut last_of_call: HashMap<Uuid, &ComputedFor<'_>> = HashMap::with_capacity(results.len());
    for result in results {
        last_of_call.insert(result.call_id, result);
    }
    if last_of_call.is_empty() {
        return Ok(Vec::new());
    }
    let mut columns = ComputedColumns::default();
    for result in last_of_call.into_values() {
        columns.push(result);
    }
    let stored: Vec<(Uuid, i64, Uuid)> = sqlx::query_as(STORE_COMPUTED_SQL)
        .bind(tenant.as_str())
        .bind(QualitySource::Computed as i16)
        .bind(announce)
        .bind(CallEventKind::QualityAdded as i16)
        .bind(columns.id)
        .bind(columns.call_id)
        .bind(columns.call_version)
        .bind(columns.task_id)
        .bind(columns.source_format)
        .bind(columns.status)
        .bind(columns.score)
        .bind(columns.rule_set_id)
        .bind(columns.rule_set_version)
        .bind(columns.violation_count)
        .bind(columns.content_hash)
        .bind(columns.details)
        .bind(columns.hits_from)
        .bind(columns.hits_to)
        .bind(columns.first)
        .bind(columns.hit_rule_ids)
        .fetch_all(&mut *connection)
        .await?;
    Ok(stored
        .into_iter()
        .map(|(id, version, _call_id)| StoredQuality {
            id,
            version,
            outcome: if version == 1 {
                StoreOutcome::Created
            } else {
                StoreOutcome::Updated
            },
        })
        .collect())
}

const STORE_COMPUTED_SQL: &str = "
WITH input AS (
    SELECT *
    FROM unnest($5::uuid[], $6::uuid[], $7::bigint[], $8::uuid[], $9::smallint[], $10::smallint[],
                $11::double precision[], $12::uuid[], $13::bigint[], $14::integer[], $15::bytea[],
                $16::text[], $17::integer[], $18::integer[], $19::boolean[])
        AS i (id, call_id, call_version, task_id, source_format, status, score, rule_set_id,
              rule_set_version, violation_count, content_hash, details, hits_from, hits_to,
              first)
), latest AS (
    SELECT i.call_id, l.version, l.content_hash
    FROM input i
    CROSS JOIN LATERAL (
        SELECT q.version, q.content_hash FROM quality_results q
        WHERE q.tenant_id = $1 AND q.call_id = i.call_id AND q.source = $2
        ORDER BY q.version DESC
        LIMIT 1
    ) l
    WHERE NOT i.first
), inserted AS (
    INSERT INTO quality_results (tenant_id, id, call_id, source, version, source_format, status,
        score, rule_set_id, rule_set_version, violation_count, content_hash, details,
        hit_rule_ids)
    SELECT $1, i.id, i.call_id, $2, coalesce(l.version, 0) + 1, i.source_format, i.status, i.score,
        i.rule_set_id, i.rule_set_version, i.violation_count, i.content_hash, i.details::json,
        coalesce(($20::text[])[i.hits_from:i.hits_to], '{}')
    FROM input i
    LEFT JOIN latest l ON l.call_id = i.call_id
    WHERE l.content_hash IS DISTINCT FROM i.content_hash
    RETURNING id, version, call_id
), announced AS (
    INSERT INTO feed_events (tenant_id, kind, call_id, call_version, task_id, quality_id)
    SELECT $1, $4, n.call_id, i.call_version, i.task_id, n.id
    FROM inserted n
    JOIN input i ON i.call_id = n.call_id
    WHERE $3
)
SELECT id, version, call_id FROM inserted";

/// Results of a call: the latest of each source (computed first), or with `history` every
/// version, newest first within each source.
pub async fn results_of_call(
    pool: &sqlx::PgPool,
    tenant: &TenantId,
    call_id: Uuid,
    history: bool,
) -> Result<Vec<crate::db::calls_read::QualityRow>, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM quality_results q
         WHERE q.tenant_id = $1 AND q.call_id = $2
           AND ($3 OR q.version = (
               SELECT max(version) FROM quality_results l
               WHERE l.tenant_id = q.tenant_id AND l.call_id = q.call_id AND l.source = q.source))
         ORDER BY q.source, q.version DESC",
        crate::db::calls_read::QUALITY_COLUMNS
    )))
    .bind(tenant.as_str())
    .bind(call_id)
    .bind(history)
    .fetch_all(&mut *connection)
    .await?)
}

/// Whether the tenant has the call.
pub async fn call_exists(
    pool: &sqlx::PgPool,
    tenant: &TenantId,
    call_id: Uuid,
) -> Result<bool, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM calls WHERE tenant_id = $1 AND id = $2)")
            .bind(tenant.as_str())
            .bind(call_id)
            .fetch_one(&mut *connection)
            .await?,
    )
}

/// Quality scores of a task's calls in a window: one row per bucket of `width`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ScoreBucket {
    /// The bucket's index: its lower bound is `index * width`.
    pub index: f64,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// The latest computed score of every scored call of the task dialled in `[start, end)`,
/// counted in buckets of `width` (ascending). Read from the results directly: one index probe
/// per call of the window.
pub async fn score_distribution(
    pool: &sqlx::PgPool,
    tenant: &TenantId,
    query: &crate::db::stats::StatsQuery,
    width: f64,
) -> Result<Vec<ScoreBucket>, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(
        "SELECT floor(latest.score / $5) AS index, count(*) AS count, sum(latest.score) AS sum,
                min(latest.score) AS min, max(latest.score) AS max
         FROM calls c
         CROSS JOIN LATERAL (
             SELECT q.score FROM quality_results q
             WHERE q.tenant_id = c.tenant_id AND q.call_id = c.id AND q.source = $6
             ORDER BY q.version DESC
             LIMIT 1
         ) latest
         WHERE c.tenant_id = $1 AND c.task_id = $2
           AND ($3::timestamptz IS NULL OR c.dial_time >= $3) AND c.dial_time < $4
           AND latest.score IS NOT NULL
         GROUP BY 1
         ORDER BY 1",
    )
    .bind(tenant.as_str())
    .bind(query.task_id)
    .bind(query.start)
    .bind(query.end)
    .bind(width)
    .bind(QualitySource::Computed as i16)
    .fetch_all(&mut *connection)
    .await?)
}
