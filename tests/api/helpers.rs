//! Starting the application for a test, exactly as `callstore serve` does.

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use callstore::config::Config;
use callstore::db::server::{self, DatabaseSettings, quote_identifier};
use callstore::startup::Application;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, PgConnection};
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a test waits for a condition before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

static LOGS: Once = Once::new();

/// `TEST_LOG=1 cargo test` shows the server's logs.
fn init_logs() {
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = callstore::telemetry::init(
                callstore::telemetry::LogFormat::Pretty,
                "info,sqlx=warn",
                std::io::stdout,
            );
        }
    });
}

pub struct TestApp {
    pub address: SocketAddr,
    /// The webhook listener, when the configuration asked for one.
    pub webhook: Option<SocketAddr>,
    /// The metrics listener, when the configuration asked for one.
    pub metrics: Option<SocketAddr>,
    /// The plaintext health listener, when the configuration asked for one.
    pub health: Option<SocketAddr>,
    /// Options for connecting to the test's own database, as the service does (as
    /// [`SERVICE_ROLE`]).
    pub database: PgConnectOptions,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the application on port 0 against a fresh database, and waits until it is ready.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with the configuration adjusted first.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    let database = fresh_database(FromTemplate::Yes).await;
    let app = start(config_for(&database, customize)).await;
    app.wait_for_readiness(ServingStatus::Serving).await;
    app
}

/// The role test servers connect as: an ordinary role, neither a superuser nor BYPASSRLS, that
/// owns the test databases and their tables, so row-level security binds every test as it
/// binds production (the policies are FORCEd on the owner). Tests check what was stored
/// through [`TestApp::pool`], as the superuser that created the database.
pub const SERVICE_ROLE: &str = "callstore_service";

/// `database` reached as [`SERVICE_ROLE`].
pub fn as_service(database: &PgConnectOptions) -> PgConnectOptions {
    database
        .clone()
        .username(SERVICE_ROLE)
        .password(SERVICE_ROLE)
}

/// A configuration for a test server on port 0 using `database` as [`SERVICE_ROLE`].
pub fn config_for(database: &PgConnectOptions, customize: impl FnOnce(&mut Config)) -> Config {
    let url = as_service(database).to_url_lossy().to_string();
    let mut config = Config::new(loopback_port_0(), Some(url));
    config.readiness_interval = Duration::from_millis(100);
    config.shutdown_grace = Duration::from_secs(5);
    // Tests of other concerns name their tenant in x-tenant-id; tests/api/auth.rs turns
    // authentication on.
    config.auth.required = false;
    customize(&mut config);
    config
}

pub fn loopback_port_0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Builds and runs the application without waiting for readiness.
pub async fn start(config: Config) -> TestApp {
    init_logs();
    let application = Application::build(config)
        .await
        .expect("the application builds");
    let address = application.local_addr();
    let webhook = application.webhook_addr();
    let metrics = application.metrics_addr();
    let health = application.health_addr();
    let database = application.database_connect_options().clone();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        webhook,
        metrics,
        health,
        database,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// A request acting for `tenant`.
pub fn as_tenant<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-tenant-id", tenant.parse().expect("ASCII tenant"));
    request
}

impl TestApp {
    /// A pool on the test's own database, to check what was stored: as the superuser, whom
    /// row-level security does not restrict.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect_with(superuser(&self.database).await)
            .await
            .expect("connects to the test database")
    }

    pub async fn ingest_client(
        &self,
    ) -> callstore::proto::ingest_service_client::IngestServiceClient<Channel> {
        callstore::proto::ingest_service_client::IngestServiceClient::new(self.channel().await)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connects to the server")
    }

    pub async fn health(&self, service: &str) -> Result<ServingStatus, tonic::Status> {
        let mut client = HealthClient::new(self.channel().await);
        let response = client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok(response.into_inner().status())
    }

    /// Waits until the `readiness` entry reports `expected`.
    pub async fn wait_for_readiness(&self, expected: ServingStatus) {
        let mut client = HealthClient::new(self.channel().await);
        let mut statuses = client
            .watch(HealthCheckRequest {
                service: callstore::health::READINESS.to_owned(),
            })
            .await
            .expect("health watch starts")
            .into_inner();
        let reached = tokio::time::timeout(DEADLINE, async {
            while let Some(message) = statuses.message().await.expect("health watch streams") {
                if message.status() == expected {
                    return;
                }
            }
            panic!("health watch ended before readiness was {expected:?}");
        })
        .await;
        assert!(
            reached.is_ok(),
            "readiness did not become {expected:?} within {DEADLINE:?}"
        );
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Signals shutdown and waits for the server to stop; returns what it returned.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.signal_shutdown();
        let server = self.server.take().expect("server runs");
        tokio::time::timeout(DEADLINE, server)
            .await
            .expect("the server stops in time")
            .expect("the server task does not panic")
    }
}

/// Whether a fresh database starts migrated (a copy of the template) or empty.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FromTemplate {
    Yes,
    No,
}

/// The Postgres server the tests use: `DATABASE_URL`'s when set, else the embedded default of
/// `callstore serve`. Only the server is taken from it; every test gets its own database.
struct TestServer {
    maintenance: PgConnectOptions,
    template: String,
}

static TEST_SERVER: OnceCell<TestServer> = OnceCell::const_new();

async fn test_server() -> &'static TestServer {
    TEST_SERVER
        .get_or_init(|| async {
            let defaults = Config::new(loopback_port_0(), std::env::var("DATABASE_URL").ok());
            let settings = DatabaseSettings {
                url: defaults.database.url,
                local_url: defaults.database.local_url,
                data_dir: defaults.database.data_dir,
            };
            let mut resolved = server::resolve(&settings)
                .await
                .expect("a Postgres server for the tests");
            // A private server started for the tests stays up for later runs to reuse.
            if let Some(private_server) = resolved.private_server.take() {
                std::mem::forget(private_server);
            }
            let maintenance = resolved.connect_options.database("postgres");
            let template = ensure_template(&maintenance).await;
            TestServer {
                maintenance,
                template,
            }
        })
        .await
}

/// `database` reached as the superuser that created it.
pub async fn superuser(database: &PgConnectOptions) -> PgConnectOptions {
    let name = database.get_database().expect("a test database is named");
    test_server().await.maintenance.clone().database(name)
}

/// Creates a database of its own for one test, owned by [`SERVICE_ROLE`]. The options returned
/// connect as the superuser; [`config_for`] and [`as_service`] connect as the service.
pub async fn fresh_database(from_template: FromTemplate) -> PgConnectOptions {
    let server = test_server().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let name = format!("callstore_test_{now}_{}", uuid::Uuid::new_v4().simple());
    let mut statement = format!(
        "CREATE DATABASE {} OWNER {SERVICE_ROLE}",
        quote_identifier(&name)
    );
    if from_template == FromTemplate::Yes {
        statement.push_str(&format!(" TEMPLATE {}", quote_identifier(&server.template)));
    }
    let mut connection = server
        .maintenance
        .connect()
        .await
        .expect("connects to the maintenance database");
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(&mut connection)
        .await
        .expect("creates the test database");
    connection.close().await.ok();
    server.maintenance.clone().database(&name)
}

/// A migrated template database, named by the migrations' checksums so that a changed migration
/// gets a new template. Built under an advisory lock, under a temporary name renamed at the end,
/// so concurrent test processes never see half a template.
async fn ensure_template(maintenance: &PgConnectOptions) -> String {
    let mut fingerprint: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in callstore::db::MIGRATOR.iter() {
        for byte in migration
            .checksum
            .iter()
            .chain(migration.version.to_le_bytes().iter())
        {
            fingerprint = (fingerprint ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    // Templates of earlier layouts (tables owned by the superuser) are not reused.
    for byte in SERVICE_ROLE.bytes() {
        fingerprint = (fingerprint ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let template = format!("callstore_template_{fingerprint:016x}");

    let mut connection = maintenance
        .connect()
        .await
        .expect("connects to the maintenance database");
    sqlx::query("SELECT pg_advisory_lock(hashtext('callstore_test_template'))")
        .execute(&mut connection)
        .await
        .expect("takes the template lock");

    drop_stale_test_databases(&mut connection).await;
    ensure_service_role(&mut connection).await;

    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut connection)
            .await
            .expect("looks up the template");
    if !exists {
        let building = format!(
            "callstore_template_building_{}",
            uuid::Uuid::new_v4().simple()
        );
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {} OWNER {SERVICE_ROLE}",
            quote_identifier(&building)
        )))
        .execute(&mut connection)
        .await
        .expect("creates the template database");
        // Migrated as the service role, so it owns the tables, as where the service migrates
        // its own database.
        let pool = sqlx::PgPool::connect_with(as_service(&maintenance.clone().database(&building)))
            .await
            .expect("connects to the template database as the service role");
        callstore::db::migrate(&pool)
            .await
            .expect("migrations apply to the template");
        pool.close().await;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_identifier(&building),
            quote_identifier(&template)
        )))
        .execute(&mut connection)
        .await
        .expect("renames the template database");
    }

    sqlx::query("SELECT pg_advisory_unlock(hashtext('callstore_test_template'))")
        .execute(&mut connection)
        .await
        .expect("releases the template lock");
    connection.close().await.ok();
    template
}

/// Names `tenant` for row-level security in the transaction `connection` is in, as the
/// service's `db::begin` does.
pub async fn scope_to(connection: &mut PgConnection, tenant: &str) {
    sqlx::query("SELECT set_config('callstore.tenant', $1, true)")
        .bind(tenant)
        .execute(connection)
        .await
        .expect("names the tenant");
}

/// Creates [`SERVICE_ROLE`] unless it exists (under the caller's advisory lock).
async fn ensure_service_role(connection: &mut PgConnection) {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(SERVICE_ROLE)
            .fetch_one(&mut *connection)
            .await
            .expect("looks up the service role");
    if !exists {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE ROLE {SERVICE_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE \
             PASSWORD '{SERVICE_ROLE}'"
        )))
        .execute(&mut *connection)
        .await
        .expect("creates the service role (the test server's user needs CREATEROLE)");
    }
}

/// Drops test databases (and unfinished templates) older than an hour, left by earlier runs.
async fn drop_stale_test_databases(connection: &mut PgConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database
         WHERE (datname LIKE 'callstore\\_test\\_%'
                AND split_part(datname, '_', 3)::bigint < extract(epoch FROM now()) - 3600)
            OR datname LIKE 'callstore\\_template\\_building\\_%'",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap_or_default();
    for name in names {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_identifier(&name)
        )))
        .execute(&mut *connection)
        .await;
    }
}
