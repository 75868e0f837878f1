//! Postgres access: the pool, the embedded migrations, and the one place where driver errors are
//! translated into what the rest of the service can act on.

pub mod server;

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor as _, PgPool};

/// The schema migrations, embedded in the binary. `MIGRATOR.run` takes sqlx's advisory lock, so
/// replicas starting together apply them once.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What went wrong in the database, as the service needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("row not found")]
    NotFound,
    /// A unique or exclusion constraint rejected the row.
    #[error("constraint {constraint} violated")]
    Conflict { constraint: String },
    /// The database cannot be reached or is shutting down; the request may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Other(sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        translate(error)
    }
}

/// Translates a driver error by its kind and Postgres SQLSTATE.
pub fn translate(error: sqlx::Error) -> DbError {
    match &error {
        sqlx::Error::RowNotFound => DbError::NotFound,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            DbError::Unavailable(error)
        }
        sqlx::Error::Database(database_error) => {
            match database_error.code().as_deref() {
                // unique_violation, exclusion_violation
                Some("23505") | Some("23P01") => DbError::Conflict {
                    constraint: database_error.constraint().unwrap_or("unknown").to_owned(),
                },
                // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
                // serialization_failure, deadlock_detected: transient, retry later.
                Some("57P01") | Some("57P02") | Some("57P03") | Some("53300") | Some("40001")
                | Some("40P01") => DbError::Unavailable(error),
                _ => DbError::Other(error),
            }
        }
        _ => DbError::Other(error),
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// A pool that connects on first use, so the server can start (and report NOT_SERVING) while
/// the database is still unreachable.
pub fn lazy_pool(options: PgConnectOptions, settings: &PoolSettings) -> PgPool {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options.application_name("callstore"))
}

/// Applies pending migrations under sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether every embedded migration has been applied successfully.
pub async fn is_migrated(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !table_exists {
        return Ok(false);
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .filter(|migration| migration.migration_type.is_up_migration())
        .all(|migration| applied.contains(&migration.version)))
}

/// Checks that the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    pool.execute("SELECT 1").await.map(|_| ())
}
