//! A fresh database and a real `callstore serve` process per scenario.
//!
//! The benches measure the release binary exactly as it is deployed: a child process with its
//! own runtime, pool and allocator, talking gRPC over loopback, so that its CPU and memory can
//! be read from `/proc` apart from the bench's own. Each scenario gets a database of its own,
//! so no scenario measures another's leftovers (bloat, caches, sequence positions).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use callstore::db::server::quote_identifier;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, PgPool};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The Postgres server the benches use when neither `--database-url` nor `DATABASE_URL` says.
pub const DEFAULT_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres";

/// How long the server may take to become ready, or to stop.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(60);

/// The release server binary cargo built for this bench.
pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_callstore"))
}

/// The common prefix of this run's database names, `callstore_bench_<pid>_`: it shows in the
/// process titles of their Postgres backends (see `cpu::PostgresTicks`).
pub fn database_marker() -> String {
    format!("callstore_bench_{}_", std::process::id())
}

/// Creates and drops the benches' databases on one Postgres server.
///
/// Every database it created is remembered, so that [`Databases::drop_all`] cleans up after a
/// scenario that failed half-way.
pub struct Databases {
    admin: PgConnectOptions,
    next: AtomicUsize,
    created: Mutex<Vec<String>>,
}

/// One database of a bench run.
#[derive(Debug, Clone)]
pub struct BenchDatabase {
    pub name: String,
    pub options: PgConnectOptions,
}

impl BenchDatabase {
    /// The URL the server is started with.
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// A small pool on this database, for counting and copying rows.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(self.options.clone())
            .await
            .with_context(|| format!("connecting to database {}", self.name))
    }
}

impl Databases {
    /// Connects to the server of `admin_url` (any database the role can create databases from).
    pub async fn connect(admin_url: &str) -> anyhow::Result<Self> {
        let admin: PgConnectOptions = admin_url
            .parse()
            .with_context(|| "the admin database URL is not a valid Postgres URL")?;
        let connection = admin
            .connect()
            .await
            .context("connecting to the admin database (set --database-url or DATABASE_URL)")?;
        connection.close().await.ok();
        Ok(Self {
            admin,
            next: AtomicUsize::new(1),
            created: Mutex::new(Vec::new()),
        })
    }

    /// Runs one statement on the admin database.
    pub async fn admin_scalar(&self, sql: &'static str) -> anyhow::Result<String> {
        let mut connection = self.admin.connect().await?;
        let value: String = sqlx::query_scalar(sql).fetch_one(&mut connection).await?;
        connection.close().await.ok();
        Ok(value)
    }

    /// Creates an empty database `callstore_bench_<pid>_<n>`.
    pub async fn create(&self) -> anyhow::Result<BenchDatabase> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{number}", database_marker());
        let mut connection = self.admin.connect().await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_identifier(&name)
        )))
        .execute(&mut connection)
        .await
        .with_context(|| format!("creating database {name}"))?;
        connection.close().await.ok();
        if let Ok(mut created) = self.created.lock() {
            created.push(name.clone());
        }
        Ok(BenchDatabase {
            options: self.admin.clone().database(&name),
            name,
        })
    }

    /// Drops a database, cutting off whoever is still connected.
    pub async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let mut connection = self.admin.connect().await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_identifier(name)
        )))
        .execute(&mut connection)
        .await
        .with_context(|| format!("dropping database {name}"))?;
        connection.close().await.ok();
        if let Ok(mut created) = self.created.lock() {
            created.retain(|known| known != name);
        }
        Ok(())
    }

    /// Drops every database this run created and has not dropped yet.
    pub async fn drop_all(&self) {
        let names = self
            .created
            .lock()
            .map(|created| created.clone())
            .unwrap_or_default();
        for name in names {
            if let Err(error) = self.drop_database(&name).await {
                eprintln!("warning: could not drop database {name}: {error:#}");
            }
        }
    }
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set now (`VmRSS`).
    pub rss: u64,
    /// Peak resident set since start (`VmHWM`).
    pub peak: u64,
}

/// Reads `VmRSS` and `VmHWM` of a process from `/proc/<pid>/status`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(key))
            .with_context(|| format!("{path} has no {key}"))?;
        let value = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("{path}: {key} has no value"))?;
        Ok(value.parse::<u64>()? * 1024)
    };
    Ok(Memory {
        rss: kib("VmRSS:")?,
        peak: kib("VmHWM:")?,
    })
}

/// A free loopback port: bound by the OS, then released for the server to take.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running `callstore serve` child process.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    address: SocketAddr,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `binary serve` on a free loopback port against `database_url` and waits until
    /// its readiness health entry reports SERVING (so migrations have been applied).
    pub async fn start(binary: &Path, database_url: &str) -> anyhow::Result<Self> {
        Self::start_with(binary, database_url, &[]).await
    }

    /// Like [`ServerProcess::start`], with `extra_args` appended to the `serve` command line
    /// (e.g. `["--quality-at-ingest", "false"]`).
    pub async fn start_with(
        binary: &Path,
        database_url: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path =
            std::env::temp_dir().join(format!("callstore_bench_{}_{port}.log", std::process::id()));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        // CALLSTORE_BENCH_SERVER_LOG widens the server's log filter (e.g. to see group commits);
        // any line logged keeps the log file after the run.
        let filter = std::env::var("CALLSTORE_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into());
        let child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                &address.to_string(),
                "--log-format",
                "json",
                "--log",
                &filter,
                // The benches measure the service's own work; they make no API keys.
                "--insecure-no-auth",
            ])
            .args(extra_args)
            .env("DATABASE_URL", database_url)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut server = Self {
            child,
            pid,
            address,
            log_path,
        };
        if let Err(error) = server.wait_until_ready().await {
            let log = server.log_tail();
            return Err(anyhow::anyhow!(
                "the server did not become ready: {error:#}\nits log ({}):\n{log}",
                server.log_path.display()
            ));
        }
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A new HTTP/2 connection to the server.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Channel::from_shared(self.endpoint())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.endpoint()))
    }

    /// The server's resident memory now and at its peak.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid)
    }

    /// CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        super::cpu::process_cpu_seconds(Some(self.pid))
    }

    /// The last lines of the server's log (it logs warnings and errors only), each cut short:
    /// a slow-statement warning carries the whole statement.
    pub fn log_tail(&self) -> String {
        const LINES: usize = 10;
        const CHARS: usize = 400;
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LINES)..]
            .iter()
            .map(|line| match line.char_indices().nth(CHARS) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => (*line).to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Where the server's log is.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Stops the server: SIGTERM (graceful), then SIGKILL if it has not exited in time.
    /// Returns how many lines its log has (warnings and errors).
    pub async fn stop(mut self) -> anyhow::Result<usize> {
        let pid = libc::pid_t::try_from(self.pid)?;
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(SERVER_DEADLINE, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!(
                    "warning: the server did not stop within {SERVER_DEADLINE:?}; killing it"
                );
                self.child.kill().await?;
            }
        }
        let lines = std::fs::read_to_string(&self.log_path)
            .map(|text| text.lines().count())
            .unwrap_or(0);
        if lines == 0 {
            std::fs::remove_file(&self.log_path).ok();
        }
        Ok(lines)
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SERVER_DEADLINE;
        // The listener is bound only after start-up; until then connecting fails fast.
        let channel = loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited during start-up with {status}");
            }
            match self.channel().await {
                Ok(channel) => break channel,
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!("no listener within {SERVER_DEADLINE:?}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        // Then follow the readiness entry until it is SERVING: no fixed wait.
        let mut health = HealthClient::new(channel);
        let mut statuses = health
            .watch(HealthCheckRequest {
                service: callstore::health::READINESS.to_owned(),
            })
            .await
            .context("watching the readiness health entry")?
            .into_inner();
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining, async {
            while let Some(message) = statuses.message().await? {
                if message.status() == ServingStatus::Serving {
                    return Ok(());
                }
            }
            bail!("the health watch ended before readiness was SERVING")
        })
        .await
        .with_context(|| format!("readiness was not SERVING within {SERVER_DEADLINE:?}"))?
    }
}

/// A request acting for `tenant` (the `x-tenant-id` metadata).
pub fn tenant_request<T>(tenant: &'static str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        callstore::api::TENANT_HEADER,
        tonic::metadata::MetadataValue::from_static(tenant),
    );
    request
}
