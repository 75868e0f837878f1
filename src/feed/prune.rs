//! Retention: deletes feed events older than `retention`, in the background, and records how far
//! it went so an older cursor is refused rather than silently resumed past the gap.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::DbError;
use crate::db::feed;
use crate::feed::WatchSettings;

/// Events deleted per statement, so one prune never holds many locks for long.
const PRUNE_BATCH: i64 = 5_000;

/// Runs [`prune_once`] every `prune_interval` until `stop`. Every replica runs it; deleting the
/// same rows twice is harmless.
pub fn spawn_pruner(pool: PgPool, settings: &WatchSettings, stop: CancellationToken) {
    let interval = settings.prune_interval.max(Duration::from_millis(10));
    let retention = settings.retention;
    tokio::spawn(async move {
        // The first pass waits one interval: at start-up the migrations may still be running.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match prune_once(&pool, retention).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "pruned feed events past retention"),
                Err(error) => tracing::warn!(error = %error, "cannot prune the feed; retrying"),
            }
        }
    });
}

/// Deletes every tenant's events older than `retention`. Returns how many were deleted.
pub async fn prune_once(pool: &PgPool, retention: Duration) -> Result<u64, DbError> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = Utc::now()
        .checked_sub_signed(retention)
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let mut total = 0;
    for tenant in feed::tenants(pool).await? {
        loop {
            let deleted = feed::prune(pool, &tenant, cutoff, PRUNE_BATCH).await?;
            total += deleted;
            if deleted < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
    }
    Ok(total)
}
