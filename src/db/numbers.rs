//! The `task_numbers` aggregate: a number of a task with its dial attempts.

use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::DbError;
use crate::db::calls::StoreOutcome;
use crate::domain::TenantId;
use crate::domain::task::{CallAttempt, TaskNumber};

/// Creates or updates a number of a task (keyed by the number within the task) and upserts its
/// attempts. Attempts are never deleted: a list fetched without `call_history` must not erase
/// the ones stored before.
pub async fn upsert_task_number(
    connection: &mut PgConnection,
    tenant: &TenantId,
    task_id: Uuid,
    number: &TaskNumber,
) -> Result<(Uuid, StoreOutcome), DbError> {
    let content_hash = Sha256::digest(serde_json::to_vec(number).unwrap_or_default()).to_vec();
    let region = &number.region;
    let row: Option<(Uuid, bool)> = sqlx::query_as(
        "INSERT INTO task_numbers (tenant_id, task_id, source_format, source_number_id, number,
             province, city, area_code, post_code, carrier, carrier_name, blacklisted, status,
             latest_source_call_id, extra, content_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (tenant_id, task_id, number) DO UPDATE SET
             source_format = EXCLUDED.source_format, source_number_id = EXCLUDED.source_number_id,
             province = EXCLUDED.province, city = EXCLUDED.city, area_code = EXCLUDED.area_code,
             post_code = EXCLUDED.post_code, carrier = EXCLUDED.carrier,
             carrier_name = EXCLUDED.carrier_name, blacklisted = EXCLUDED.blacklisted,
             status = EXCLUDED.status, latest_source_call_id = EXCLUDED.latest_source_call_id,
             extra = EXCLUDED.extra, content_hash = EXCLUDED.content_hash, update_time = now()
         WHERE task_numbers.content_hash IS DISTINCT FROM EXCLUDED.content_hash
         RETURNING id, (xmax = 0)",
    )
    .bind(tenant.as_str())
    .bind(task_id)
    .bind(number.source_format as i16)
    .bind(number.source_number_id.as_deref())
    .bind(&number.number)
    .bind(region.province.as_deref())
    .bind(region.city.as_deref())
    .bind(region.area_code.as_deref())
    .bind(region.post_code.as_deref())
    .bind(region.carrier as i16)
    .bind(region.carrier_name.as_deref())
    .bind(number.blacklisted)
    .bind(number.status as i16)
    .bind(number.latest_source_call_id.as_deref())
    .bind(sqlx::types::Json(&number.extra))
    .bind(content_hash)
    .fetch_optional(&mut *connection)
    .await?;

    let Some((id, inserted)) = row else {
        let id: Uuid = sqlx::query_scalar(
            "SELECT id FROM task_numbers WHERE tenant_id = $1 AND task_id = $2 AND number = $3",
        )
        .bind(tenant.as_str())
        .bind(task_id)
        .bind(&number.number)
        .fetch_one(&mut *connection)
        .await?;
        return Ok((id, StoreOutcome::Unchanged));
    };
    for attempt in &number.attempts {
        upsert_attempt(connection, tenant, id, attempt).await?;
    }
    let outcome = if inserted {
        StoreOutcome::Created
    } else {
        StoreOutcome::Updated
    };
    Ok((id, outcome))
}

/// What identifies an attempt within its number: the source's attempt id, else its call id,
/// else its time.
fn attempt_key(attempt: &CallAttempt) -> Option<String> {
    attempt
        .source_attempt_id
        .as_ref()
        .map(|id| format!("id:{id}"))
        .or_else(|| {
            attempt
                .source_call_id
                .as_ref()
                .map(|id| format!("call:{id}"))
        })
        .or_else(|| {
            attempt
                .call_time
                .map(|time| format!("time:{}", time.to_rfc3339()))
        })
}

async fn upsert_attempt(
    connection: &mut PgConnection,
    tenant: &TenantId,
    number_id: Uuid,
    attempt: &CallAttempt,
) -> Result<(), DbError> {
    let Some(key) = attempt_key(attempt) else {
        // Nothing identifies it: it is kept in the number's extra by the parser, not here.
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO call_attempts (tenant_id, task_number_id, attempt_key, source_attempt_id,
             source_call_id, call_time, duration_ms, talk_duration_ms, hangup_cause, sip_code,
             call_status, status, record_file, calling_number, extra)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (tenant_id, task_number_id, attempt_key) DO UPDATE SET
             source_call_id = EXCLUDED.source_call_id, call_time = EXCLUDED.call_time,
             duration_ms = EXCLUDED.duration_ms, talk_duration_ms = EXCLUDED.talk_duration_ms,
             hangup_cause = EXCLUDED.hangup_cause, sip_code = EXCLUDED.sip_code,
             call_status = EXCLUDED.call_status, status = EXCLUDED.status,
             record_file = EXCLUDED.record_file, calling_number = EXCLUDED.calling_number,
             extra = EXCLUDED.extra",
    )
    .bind(tenant.as_str())
    .bind(number_id)
    .bind(key)
    .bind(attempt.source_attempt_id.as_deref())
    .bind(attempt.source_call_id.as_deref())
    .bind(attempt.call_time)
    .bind(attempt.duration_ms)
    .bind(attempt.talk_duration_ms)
    .bind(attempt.hangup_cause.as_deref())
    .bind(attempt.sip_code.as_deref())
    .bind(attempt.call_status.as_deref())
    .bind(attempt.status as i16)
    .bind(attempt.record_file.as_deref())
    .bind(attempt.calling_number.as_deref())
    .bind(sqlx::types::Json(&attempt.extra))
    .execute(connection)
    .await?;
    Ok(())
}
