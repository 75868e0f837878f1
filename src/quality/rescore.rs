//! The re-scoring runner: the one part of quality inspection that does I/O. Each replica runs
//! one; it claims a job (see `db::rescore`), steps through it page by page and looks for the next.
//! A job started on this replica wakes it at once; jobs of other replicas, and jobs a dead
//! replica left behind, are found by polling.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::rescore::{self, Claimed, Step};

/// How re-scoring jobs run.
#[derive(Debug, Clone)]
pub struct RescoreSettings {
    /// Calls scored per step (one transaction).
    pub page: i64,
    /// How long a claim lasts without a step; a replica that dies leaves a job for this long.
    pub lease: Duration,
    /// How often a runner without work looks for jobs.
    pub poll_interval: Duration,
}

impl Default for RescoreSettings {
    fn default() -> Self {
        Self {
            page: 200,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// Wakes the replica's runner when a job is created here. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RescoreWaker(Arc<Notify>);

impl RescoreWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Starts the replica's runner; it stops when `stop` is cancelled (between steps: a step is
/// one transaction, never left half done).
pub fn spawn_runner(
    pool: PgPool,
    settings: RescoreSettings,
    stop: CancellationToken,
) -> RescoreWaker {
    let waker = RescoreWaker::default();
    let wakes = Arc::clone(&waker.0);
    tokio::spawn(async move {
        let owner = Uuid::new_v4();
        loop {
            match rescore::claim_job(&pool, owner, settings.lease).await {
                Ok(Some(claimed)) => {
                    run_job(&pool, &settings, owner, &claimed, &stop).await;
                    continue;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(error = %error, "cannot look for re-scoring jobs"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = wakes.notified() => {}
                () = tokio::time::sleep(settings.poll_interval) => {}
            }
        }
    });
    waker
}

async fn run_job(
    pool: &PgPool,
    settings: &RescoreSettings,
    owner: Uuid,
    claimed: &Claimed,
    stop: &CancellationToken,
) {
    tracing::info!(tenant = %claimed.tenant, job_id = %claimed.id, "re-scoring job started");
    while !stop.is_cancelled() {
        match rescore::step(pool, claimed, owner, settings.page.max(1), settings.lease).await {
            Ok(Step::Progressed) => {}
            Ok(Step::Finished) => {
                tracing::info!(tenant = %claimed.tenant, job_id = %claimed.id, "re-scoring job finished");
                return;
            }
            Ok(Step::Lost) => {
                tracing::info!(tenant = %claimed.tenant, job_id = %claimed.id, "re-scoring job gone or taken over");
                return;
            }
            Err(error) => {
                // The lease runs out and the job is claimed again, here or elsewhere.
                tracing::warn!(tenant = %claimed.tenant, job_id = %claimed.id, error = %error, "re-scoring step failed");
                return;
            }
        }
    }
}
