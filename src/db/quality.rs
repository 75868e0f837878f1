//! The `quality_results` aggregate: computed and imported inspection results, versioned per
//! call and source.

use std::collections::HashMap;

use serde::Serialize;
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

#[derive(Serialize)]
struct ComputedRow<'result> {
    /// Time-ordered (v7), so new results append to the primary key's index instead of
    /// landing on random pages of it.
    id: Uuid,
    call_id: Uuid,
    call_version: i64,
    task_id: Option<Uuid>,
    source_format: i16,
    status: i16,
    score: Option<f64>,
    rule_set_id: Option<Uuid>,
    rule_set_version: Option<i64>,
    violation_count: Option<i32>,
    /// bytea in its text form, `\x` and hex digits.
    content_hash: String,
    details: Box<serde_json::value::RawValue>,
    hit_rule_ids: Vec<String>,
    first: bool,
    #[serde(skip)]
    _result: std::marker::PhantomData<&'result ()>,
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
    let rows: Vec<ComputedRow<'_>> = last_of_call
        .into_values()
        .map(|result| {
            let computed = result.computed;
            let scoring = computed.scoring.as_ref();
            let details = computed.details_json();
            ComputedRow {
                id: Uuid::now_v7(),
                call_id: result.call_id,
                call_version: result.call_version,
                task_id: result.task_id,
                source_format: result.source_format as i16,
                status: QualityStatus::Done as i16,
                score: computed.score(),
                rule_set_id: scoring.map(|scoring| scoring.rule_set_id),
                rule_set_version: scoring.map(|scoring| scoring.rule_set_version),
                violation_count: computed.violation_count(),
                content_hash: Computed::content_hash_of(&details, scoring).iter().fold(
                    String::from("\\x"),
                    |mut text, byte| {
                        text.push_str(&format!("{byte:02x}"));
                        text
                    },
                ),
                // The text is JSON made by serde_json, so it is valid as a raw value.
                details: serde_json::value::RawValue::from_string(details)
                    .unwrap_or_else(|_| empty_object()),
                hit_rule_ids: computed.hit_rule_ids(),
                first: result.first,
                _result: std::marker::PhantomData,
            }
        })
        .collect();
    let rows = serde_json::to_string(&rows)
        .map_err(|error| DbError::InvalidData(sqlx::Error::Encode(Box::new(error))))?;
    let stored: Vec<(Uuid, i64, Uuid)> = sqlx::query_as(STORE_COMPUTED_SQL)
        .bind(tenant.as_str())
        .bind(rows)
        .bind(QualitySource::Computed as i16)
        .bind(announce)
        .bind(CallEventKind::QualityAdded as i16)
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

fn empty_object() -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(&serde_json::Map::new())
        .unwrap_or_else(|_| Box::<serde_json::value::RawValue>::default())
}

const STORE_COMPUTED_SQL: &str = "
WITH input AS (
    SELECT *
    FROM json_to_recordset($2::json) AS i(
        id uuid, call_id uuid, call_version bigint, task_id uuid, source_format smallint, status smallint,
        score double precision, rule_set_id uuid, rule_set_version bigint,
        violation_count integer, content_hash bytea, details jsonb, hit_rule_ids text[],
        first boolean)
), latest AS (
    SELECT i.call_id, l.version, l.content_hash
    FROM input i
    CROSS JOIN LATERAL (
        SELECT q.version, q.content_hash FROM quality_results q
        WHERE q.tenant_id = $1 AND q.call_id = i.call_id AND q.source = $3
        ORDER BY q.version DESC
        LIMIT 1
    ) l
    WHERE NOT i.first
), inserted AS (
    INSERT INTO quality_results (tenant_id, id, call_id, source, version, source_format, status,
        score, rule_set_id, rule_set_version, violation_count, content_hash, details,
        hit_rule_ids)
    SELECT $1, i.id, i.call_id, $3, coalesce(l.version, 0) + 1, i.source_format, i.status, i.score,
        i.rule_set_id, i.rule_set_version, i.violation_count, i.content_hash, i.details,
        i.hit_rule_ids
    FROM input i
    LEFT JOIN latest l ON l.call_id = i.call_id
    WHERE l.content_hash IS DISTINCT FROM i.content_hash
    RETURNING id, version, call_id
), announced AS (
    INSERT INTO feed_events (tenant_id, kind, call_id, call_version, task_id, quality_id)
    SELECT $1, $5, n.call_id, i.call_version, i.task_id, n.id
    FROM inserted n
    JOIN input i ON i.call_id = n.call_id
    WHERE $4
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
