//! Postgres access: the pool, the embedded migrations, and the one place where driver errors are
//! translated into what the rest of the service can act on.

pub mod calls;
pub mod calls_list;
pub mod calls_read;
pub mod catalog;
pub mod catalog_read;
pub mod feed;
pub mod keys;
pub mod live;
pub mod numbers;
pub mod quality;
pub mod quality_rules;
pub mod rescore;
pub mod server;
pub mod stats;

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor as _, PgConnection, PgPool, Postgres, Transaction};

use crate::domain::ids::TenantId;

/// The schema migrations, embedded in the binary. `MIGRATOR.run` takes sqlx's advisory lock, so
/// replicas starting together apply them once. Migrations the binary does not know (applied by
/// a newer release) are tolerated, so a rollback of the binary keeps working.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
});

/// What went wrong in the database, as the service needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("row not found")]
    NotFound,
    /// A unique or exclusion constraint rejected the row.
    #[error("constraint {constraint} violated")]
    Conflict { constraint: String },
    /// A foreign key points at a row that does not exist.
    #[error("constraint {constraint} violated")]
    MissingReference { constraint: String },
    /// A check constraint or a data conversion rejected a value.
    #[error("invalid data: {0}")]
    InvalidData(#[source] sqlx::Error),
    /// The transaction lost a serialization race or a deadlock; retrying it may succeed.
    #[error("transaction aborted: {0}")]
    Aborted(#[source] sqlx::Error),
    /// The statement was cancelled (statement timeout or a cancelled request).
    #[error("statement cancelled: {0}")]
    Cancelled(#[source] sqlx::Error),
    /// The database cannot be reached, is read-only or is shutting down; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Other(sqlx::Error),
}

/// How often a transaction that lost a deadlock or serialization race is tried in all.
pub const ATTEMPTS: usize = 3;

/// An error that may say the transaction lost a race, so that running it again may succeed.
pub trait MaybeAborted {
    /// The driver's error when the transaction was aborted by a deadlock or serialization
    /// failure.
    fn aborted(&self) -> Option<&sqlx::Error>;
}

impl MaybeAborted for DbError {
    fn aborted(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Aborted(error) => Some(error),
            _ => None,
        }
    }
}

/// Runs a transaction, and again while it loses races, up to [`ATTEMPTS`] times in all.
/// `what` names it in the log.
pub async fn retry_aborted<T, E, F, Fut>(what: &'static str, mut transaction: F) -> Result<T, E>
where
    E: MaybeAborted,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(error) if attempt < ATTEMPTS && error.aborted().is_some() => {
                if let Some(cause) = error.aborted() {
                    tracing::info!(error = %cause, attempt, what, "transaction aborted by a concurrent one; retrying");
                }
                attempt += 1;
            }
            other => return other,
        }
    }
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
            let code = database_error
                .code()
                .map(|code| code.into_owned())
                .unwrap_or_default();
            let constraint = || database_error.constraint().unwrap_or("unknown").to_owned();
            match code.as_str() {
                // unique_violation, exclusion_violation
                "23505" | "23P01" => DbError::Conflict {
                    constraint: constraint(),
                },
                // foreign_key_violation
                "23503" => DbError::MissingReference {
                    constraint: constraint(),
                },
                // check_violation, not_null_violation, and class 22 (data exception)
                "23514" | "23502" => DbError::InvalidData(error),
                _ if code.starts_with("22") => DbError::InvalidData(error),
                // serialization_failure, deadlock_detected
                "40001" | "40P01" => DbError::Aborted(error),
                // query_canceled
                "57014" => DbError::Cancelled(error),
                // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
                // read_only_sql_transaction (after a failover), class 08 (connection exception)
                "57P01" | "57P02" | "57P03" | "53300" | "25006" => DbError::Unavailable(error),
                _ if code.starts_with("08") => DbError::Unavailable(error),
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
    /// Sessions idle in a transaction this long are ended by the server
    /// (`idle_in_transaction_session_timeout`).
    pub idle_in_transaction_timeout: Duration,
}

/// A pool that connects on first use, so the server can start (and report NOT_SERVING) while
/// the database is still unreachable.
///
/// Connections plan every execution of a prepared statement anew (`plan_cache_mode =
/// force_custom_plan`). A cached generic plan is made once, with the statistics of that
/// moment: made while a fresh table was nearly empty (no ANALYZE yet), a lookup by source key
/// can come out as a scan of the tenant's rows through another index, and stay so as the table
/// grows to millions of rows — until autovacuum analyses it, which on a busy new deployment is
/// minutes of quadratic ingest. A custom plan sees the table's current size; planning the
/// service's statements costs microseconds.
///
/// Nor do they run parallel query (`max_parallel_workers_per_gather = 0`): the service's reads
/// are pages of a few dozen rows, for which starting workers costs more than the scan (a
/// transcript-filtered page of a 1,000,000-call task: 22 ms with two workers, 1.2 ms without),
/// and under concurrent requests the workers only take cores from the other requests.
///
/// A session left idle inside a transaction is ended after `idle_in_transaction_timeout`: an
/// open transaction holds back the feed's watermark, so every WatchCalls stream waits for it.
pub fn lazy_pool(options: PgConnectOptions, settings: &PoolSettings) -> PgPool {
    let idle_ms = settings
        .idle_in_transaction_timeout
        .as_millis()
        .max(1)
        .to_string();
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options.application_name("callstore").options([
            ("plan_cache_mode", "force_custom_plan"),
            ("max_parallel_workers_per_gather", "0"),
            ("idle_in_transaction_session_timeout", idle_ms.as_str()),
        ]))
}

/// Applies pending migrations under sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether a migration error will not go away by retrying: a changed or half-applied migration
/// needs an operator.
pub fn is_fatal_migration_error(error: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    matches!(
        error,
        MigrateError::VersionMismatch(_) | MigrateError::Dirty(_)
    )
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

/// Whose rows a transaction sees and may write.
///
/// Every tenant table has row-level security (migration `20261127000001_row_level_security`):
/// a transaction sees the rows of the tenant it names in `callstore.tenant`, or every tenant's
/// when it sets `callstore.all_tenants`, and nothing otherwise. The service's own `tenant_id`
/// filters stay the first line; this one catches a query that forgets its filter. It holds for
/// a role that is neither a superuser nor `BYPASSRLS` (see [`row_security_enforced`]).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// One tenant's rows: all work done for a request. The text is a tenant id, or `*` for the
    /// API keys of operators.
    Tenant(&'a str),
    /// Every tenant's rows: the service's background work that spans tenants (the feed tailer,
    /// pruning, statistics compaction, claiming re-score jobs, certificate lookups) and the
    /// operator's `keys` command.
    AllTenants,
}

impl<'a> From<&'a TenantId> for Scope<'a> {
    fn from(tenant: &'a TenantId) -> Self {
        Self::Tenant(tenant.as_str())
    }
}

impl Scope<'_> {
    /// `begin` (a `BEGIN` statement) followed by the settings of this scope, made local to the
    /// transaction: one simple query, one round trip.
    fn begin_statement(self, begin: &str) -> Result<String, DbError> {
        match self {
            Self::Tenant(tenant) => {
                // Tenant ids are letters, digits and `._-` (and `*`): nothing to escape. Anything
                // else is refused rather than quoted.
                let plain = !tenant.is_empty()
                    && tenant
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-*".contains(c));
                if !plain {
                    return Err(DbError::Other(sqlx::Error::InvalidArgument(
                        "tenant id with characters outside [A-Za-z0-9._-*]".to_owned(),
                    )));
                }
                Ok(format!(
                    "{begin}; SET LOCAL callstore.tenant = '{tenant}'; SET LOCAL callstore.all_tenants = 'off'"
                ))
            }
            Self::AllTenants => Ok(format!(
                "{begin}; SET LOCAL callstore.tenant = ''; SET LOCAL callstore.all_tenants = 'on'"
            )),
        }
    }
}

/// Begins a transaction that sees the rows of `scope` only.
pub async fn begin<'a>(
    pool: &PgPool,
    scope: impl Into<Scope<'a>>,
) -> Result<Transaction<'static, Postgres>, DbError> {
    begin_with(pool, scope, "BEGIN").await
}

/// Begins a transaction with `begin` (e.g. `BEGIN ISOLATION LEVEL REPEATABLE READ`) that sees
/// the rows of `scope` only.
pub async fn begin_with<'a>(
    pool: &PgPool,
    scope: impl Into<Scope<'a>>,
    begin: &'static str,
) -> Result<Transaction<'static, Postgres>, DbError> {
    let statement = scope.into().begin_statement(begin)?;
    Ok(pool.begin_with(AssertSqlSafe(statement)).await?)
}

/// Runs `work` in a transaction that sees the rows of `scope` only, and ends it without
/// committing: for reads. Dropping the transaction queues its `ROLLBACK`, which the pool sends
/// with the check it makes of every connection returned to it, so the caller waits for one
/// round trip fewer than with a commit.
pub async fn read<'a, T>(
    pool: &PgPool,
    scope: impl Into<Scope<'a>>,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let mut transaction = begin(pool, scope).await?;
    work(&mut transaction).await
}

/// Runs `work` in a transaction that sees the rows of `scope` only, and commits it.
pub async fn write<'a, T>(
    pool: &PgPool,
    scope: impl Into<Scope<'a>>,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let mut transaction = begin(pool, scope).await?;
    let value = work(&mut transaction).await?;
    transaction.commit().await?;
    Ok(value)
}

/// Whether row-level security binds the pool's role: false for a superuser or a `BYPASSRLS`
/// role, which see every tenant's rows whatever the policies say.
pub async fn row_security_enforced(pool: &PgPool) -> Result<bool, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT NOT (rolsuper OR rolbypassrls) FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await?)
}

/// Checks that the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    pool.execute("SELECT 1").await.map(|_| ())
}
