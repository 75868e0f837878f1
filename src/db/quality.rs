//! The `quality_results` aggregate: imported inspection results, versioned per call.

use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::DbError;
use crate::db::calls::StoreOutcome;
use crate::domain::TenantId;
use crate::domain::quality::ImportedQuality;
use crate::proto::{CallEventKind, QualitySource};

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
