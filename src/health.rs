//! gRPC health: the overall service ("") is SERVING while the process runs; `readiness` is
//! SERVING only while the database is migrated and reachable, and NOT_SERVING again on shutdown.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::db;

/// Name of the readiness entry of the health service.
pub const READINESS: &str = "readiness";

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Brings the database to the migrated state, then keeps `readiness` in step with whether the
/// database answers, until `stop` is cancelled. Returns an error only for a migration problem
/// that retrying cannot fix (a changed or half-applied migration).
pub async fn track_readiness(
    pool: PgPool,
    reporter: HealthReporter,
    migrate_on_start: bool,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut retry = RETRY_MIN;
    loop {
        let outcome = if migrate_on_start {
            match db::migrate(&pool).await {
                Err(error) if db::is_fatal_migration_error(&error) => {
                    return Err(anyhow::Error::new(error).context(
                        "the database's migrations do not match this release; an operator must repair them",
                    ));
                }
                other => other.map_err(anyhow::Error::from),
            }
        } else {
            match db::is_migrated(&pool).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(anyhow::anyhow!(
                    "the database has pending migrations; run `callstore migrate`"
                )),
                Err(error) => Err(error.into()),
            }
        };
        match outcome {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(error = %error, retry_in_ms = retry.as_millis() as u64, "database not ready");
            }
        }
        if sleep_or_stop(retry, &stop).await {
            return Ok(());
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
    tracing::info!("database migrated");
    match db::row_security_enforced(&pool).await {
        Ok(true) => tracing::info!("row-level security binds the database role"),
        Ok(false) => tracing::warn!(
            "the database role is a superuser or has BYPASSRLS: row-level security does not \
             isolate tenants in the database; connect as an ordinary role (README, \"Tenant \
             isolation\")"
        ),
        Err(error) => tracing::warn!(error = %error, "could not check the database role"),
    }

    let mut serving = false;
    loop {
        let reachable = db::ping(&pool).await;
        match (&reachable, serving) {
            (Ok(()), false) => {
                reporter
                    .set_service_status(READINESS, ServingStatus::Serving)
                    .await;
                tracing::info!("ready");
                serving = true;
            }
            (Err(error), true) => {
                reporter
                    .set_service_status(READINESS, ServingStatus::NotServing)
                    .await;
                tracing::warn!(error = %error, "database unreachable; not ready");
                serving = false;
            }
            _ => {}
        }
        let wait = if serving {
            interval
        } else {
            RETRY_MIN.max(interval / 5)
        };
        if sleep_or_stop(wait, &stop).await {
            return Ok(());
        }
    }
}

/// Sleeps for `duration`; returns true if `stop` was cancelled first.
async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}
