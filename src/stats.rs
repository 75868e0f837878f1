//! The statistics compactor: folds the deltas that ingest appends (by trigger, see migration
//! `20261123000002_call_stats.sql`) into the compacted rollups, every few seconds, so that
//! GetTaskStats reads few rows. Reads are exact with or without it; it keeps them fast. Every
//! replica runs one; an advisory lock lets one at a time work on a database.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::{self, DbError};

/// How the compactor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSettings {
    /// Pause between compactions.
    pub compaction_interval: Duration,
}

impl Default for StatsSettings {
    fn default() -> Self {
        Self {
            compaction_interval: Duration::from_secs(2),
        }
    }
}

/// Folds every visible delta, in passes of at most [`db::stats::COMPACTION_BATCH`], each its own
/// transaction. Returns how many deltas were folded, or `None` when another compactor holds the
/// database's lock (it is folding them).
pub async fn compact_once(pool: &PgPool) -> Result<Option<u64>, DbError> {
    let mut folded = 0;
    loop {
        match db::stats::compact_pass(pool, db::stats::COMPACTION_BATCH).await? {
            None => return Ok(if folded == 0 { None } else { Some(folded) }),
            Some(count) => {
                folded += count;
                if count < db::stats::COMPACTION_BATCH.unsigned_abs() {
                    return Ok(Some(folded));
                }
            }
        }
    }
}

/// Starts the compactor: after each `compaction_interval`, once the database is migrated, a
/// [`compact_once`]. Stops when `stop` is cancelled (a pass under way finishes first).
pub fn spawn_compactor(
    pool: PgPool,
    settings: StatsSettings,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut migrated = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(settings.compaction_interval) => {}
            }
            if !migrated {
                migrated = matches!(db::is_migrated(&pool).await, Ok(true));
                if !migrated {
                    continue;
                }
            }
            let started = std::time::Instant::now();
            match compact_once(&pool).await {
                Ok(Some(folded)) if folded > 0 => tracing::debug!(
                    folded,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "statistics compacted"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "statistics compaction failed; retrying later");
                }
            }
        }
    })
}
