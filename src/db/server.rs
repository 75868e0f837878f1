//! Finds the Postgres server to use.
//!
//! In order: the configured `DATABASE_URL`; else the local default
//! (`postgres://localhost:5432/callstore`) if a server answers there, creating the database if it
//! is missing; else a private server started from the installed PostgreSQL binaries in a data
//! directory of ours, stopped again when callstore exits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};

/// Name of the database callstore uses on the local default and private servers.
pub const DEFAULT_DATABASE: &str = "callstore";
/// Superuser created in a private server's data directory.
const PRIVATE_SUPERUSER: &str = "callstore";
/// OS user that runs a private server when callstore runs as root (Postgres refuses root).
const POSTGRES_OS_USER: &str = "postgres";
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the database comes from.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`, if set.
    pub url: Option<String>,
    /// The local default tried when `url` is unset.
    pub local_url: String,
    /// Directory for a private server's data (`<data_dir>/pg`).
    pub data_dir: PathBuf,
}

/// The server picked, and the private server's handle when we started one.
#[derive(Debug)]
pub struct ResolvedDatabase {
    pub connect_options: PgConnectOptions,
    /// Where the data lives, for logs (never contains a password).
    pub description: String,
    pub private_server: Option<PrivatePostgres>,
}

pub async fn resolve(settings: &DatabaseSettings) -> anyhow::Result<ResolvedDatabase> {
    if let Some(url) = &settings.url {
        let connect_options =
            parse_url(url).context("DATABASE_URL is not a valid postgres:// URL")?;
        let description = describe(&connect_options);
        tracing::info!(database = %description, "using the database from DATABASE_URL");
        return Ok(ResolvedDatabase {
            connect_options,
            description,
            private_server: None,
        });
    }

    let local = parse_url(&settings.local_url)
        .with_context(|| format!("invalid local database URL {}", settings.local_url))?;
    match probe(&local).await {
        Probe::Answered => {
            ensure_database_exists(&local).await?;
            let description = describe(&local);
            tracing::info!(database = %description, "using the local PostgreSQL server");
            let private_data = settings.data_dir.join("pg");
            if private_data.join("PG_VERSION").exists() {
                tracing::warn!(
                    data_dir = %private_data.display(),
                    "a private PostgreSQL data directory exists from a run when no local server answered; its data is not used now"
                );
            }
            Ok(ResolvedDatabase {
                connect_options: local,
                description,
                private_server: None,
            })
        }
        Probe::Refused(cause) => Err(anyhow::Error::new(cause).context(format!(
            "cannot use the PostgreSQL server at {}; set DATABASE_URL to a server and credentials that work",
            describe(&local)
        ))),
        Probe::NoServer(cause) => {
            tracing::info!(
                tried = %describe(&local),
                error = %cause,
                "no PostgreSQL server answers; starting a private one"
            );
            let server = PrivatePostgres::start(&settings.data_dir).await?;
            let connect_options = server.connect_options(DEFAULT_DATABASE);
            ensure_database_exists(&connect_options).await?;
            let description = describe(&connect_options);
            tracing::info!(
                database = %description,
                data_dir = %server.data_dir.display(),
                started_by_us = server.owned,
                "using a private PostgreSQL server"
            );
            Ok(ResolvedDatabase {
                connect_options,
                description,
                private_server: Some(server),
            })
        }
    }
}

/// Parses a postgres:// URL. Like libpq, a URL without a user name (and no `PGUSER`) connects
/// as the operating-system user.
pub fn parse_url(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let names_user = url
        .split_once("://")
        .map(|(_, rest)| {
            rest.split(['/', '?'])
                .next()
                .unwrap_or_default()
                .contains('@')
        })
        .unwrap_or(false);
    if names_user || std::env::var_os("PGUSER").is_some() {
        return Ok(options);
    }
    Ok(match os_user_name() {
        Some(user) => options.username(&user),
        None => options,
    })
}

/// Name of the effective operating-system user.
fn os_user_name() -> Option<String> {
    let mut buffer = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain old data; getpwuid_r writes into `entry` and `buffer` (whose
    // length we pass) and sets `result` to &entry on success or null otherwise.
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let status = libc::getpwuid_r(
            libc::geteuid(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        );
        if status != 0 || result.is_null() || entry.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(entry.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// `host:port/database` of connection options, without credentials.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

enum Probe {
    Answered,
    Refused(sqlx::Error),
    NoServer(sqlx::Error),
}

async fn probe(options: &PgConnectOptions) -> Probe {
    let maintenance = options.clone().database("postgres");
    match tokio::time::timeout(PROBE_TIMEOUT, maintenance.connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Probe::Answered
        }
        Ok(Err(sqlx::Error::Io(io_error)))
            if matches!(
                io_error.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) =>
        {
            Probe::NoServer(sqlx::Error::Io(io_error))
        }
        Ok(Err(error)) => Probe::Refused(error),
        // A server that is slow to answer is still a server: falling back to a private one
        // would put the data somewhere the next start would not look.
        Err(_elapsed) => Probe::Refused(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {PROBE_TIMEOUT:?}"),
        ))),
    }
}

/// Creates the database of `options` on its server if it does not exist yet.
pub async fn ensure_database_exists(options: &PgConnectOptions) -> anyhow::Result<()> {
    let database = options
        .get_database()
        .unwrap_or(DEFAULT_DATABASE)
        .to_owned();
    let mut connection = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", describe(options)))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut connection)
            .await?;
    if !exists {
        let statement = format!("CREATE DATABASE {}", quote_identifier(&database));
        // The name is quoted by quote_identifier; CREATE DATABASE takes no bind parameters.
        match sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut connection)
            .await
        {
            Ok(_) => tracing::info!(database = %database, "created database"),
            // Another process created it in the meantime.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P04") => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot create database {database}"));
            }
        }
    }
    connection.close().await.ok();
    Ok(())
}

/// Quotes a Postgres identifier.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A PostgreSQL server run from the installed binaries in a data directory of ours.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    /// Whether this process started the server (and so stops it). A server left running in the
    /// same data directory by another process is used but not stopped.
    owned: bool,
    stopped: bool,
}

impl PrivatePostgres {
    /// Starts (or reuses) the private server in `<data_root>/pg`, creating it on first use.
    pub async fn start(data_root: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir().await?;
        std::fs::create_dir_all(data_root)
            .with_context(|| format!("cannot create {}", data_root.display()))?;
        let data_root = std::path::absolute(data_root)?;
        let data_dir = data_root.join("pg");
        let run_as = running_as_root().then_some(POSTGRES_OS_USER);

        let mut server = Self {
            bin_dir,
            data_dir,
            port: 0,
            run_as,
            owned: false,
            stopped: false,
        };
        // Processes starting together take turns: one initialises and starts the server, the
        // others then find it running.
        let _lock = DirLock::acquire(&data_root.join("pg.lock")).await?;
        server.prepare_data_dir().await?;

        if let Some(port) = server.running_port().await {
            tracing::info!(
                port,
                "a private PostgreSQL server already runs in the data directory"
            );
            server.port = port;
            return Ok(server);
        }

        let log_file = server.data_dir.join("server.log");
        let mut last_error = None;
        // A free port is only free until someone takes it: try a few.
        for _attempt in 0..3 {
            server.port = free_port()?;
            let started = server.pg_ctl_start().await;
            match started {
                Ok(()) => {
                    server.owned = true;
                    tracing::info!(port = server.port, "started a private PostgreSQL server");
                    return Ok(server);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("pg_ctl start did not run"))
            .context(format!(
                "the private PostgreSQL server did not start; see {}",
                log_file.display()
            )))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(PRIVATE_SUPERUSER)
            .database(database)
    }

    /// Stops the server if this process started it and no other process is connected to it
    /// (another callstore that found it running keeps it).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.owned || self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self.has_other_clients().await {
            tracing::info!(
                port = self.port,
                "other clients use the private PostgreSQL server; leaving it running"
            );
            return Ok(());
        }
        self.pg_ctl_stop("fast").await?;
        tracing::info!("stopped the private PostgreSQL server");
        Ok(())
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no checkpoint;
    /// the next start recovers from the WAL). For crash-safety drills.
    pub async fn stop_immediately(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate").await
    }

    /// Starts the server again on its port after [`Self::stop_immediately`].
    pub async fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start().await
    }

    /// `pg_ctl start` on the server's port, logging to `server.log` in the data directory.
    async fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let port_option = format!("-p {}", self.port);
        let log_file = self.data_dir.join("server.log");
        self.run_pg(
            "pg_ctl",
            &[
                "start".as_ref(),
                "--wait".as_ref(),
                "--timeout=60".as_ref(),
                "--silent".as_ref(),
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-l".as_ref(),
                log_file.as_os_str(),
                "-o".as_ref(),
                port_option.as_ref(),
            ],
        )
        .await
    }

    /// `pg_ctl stop` in `mode` (`fast`, `immediate`).
    async fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        self.run_pg(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "--wait".as_ref(),
                "--silent".as_ref(),
                "-m".as_ref(),
                mode.as_ref(),
                "-D".as_ref(),
                self.data_dir.as_os_str(),
            ],
        )
        .await
    }

    async fn has_other_clients(&self) -> bool {
        let Ok(mut connection) = self.connect_options("postgres").connect().await else {
            return false;
        };
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap_or(0);
        connection.close().await.ok();
        others > 0
    }

    async fn prepare_data_dir(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
        if let Some(user) = self.run_as {
            let (uid, gid) = os_user_ids(user).await?;
            std::os::unix::fs::chown(&self.data_dir, Some(uid), Some(gid)).with_context(|| {
                format!("cannot give {} to the {user} user", self.data_dir.display())
            })?;
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;

        if self.data_dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        tracing::info!(data_dir = %self.data_dir.display(), "initialising a private PostgreSQL data directory");
        let user_option = format!("--username={PRIVATE_SUPERUSER}");
        self.run_pg(
            "initdb",
            &[
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                user_option.as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )
        .await
        .with_context(|| match self.run_as {
            Some(user) => format!(
                "initdb failed; the {user} user must be able to reach {} (set CALLSTORE_DATA_DIR to a directory it can reach)",
                self.data_dir.display()
            ),
            None => "initdb failed".to_owned(),
        })?;
        // Only TCP on loopback: no socket file whose path could be too long, nothing exposed.
        let settings = "\n# set by callstore\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nfsync = on\n";
        let conf = self.data_dir.join("postgresql.conf");
        let mut contents = std::fs::read_to_string(&conf)?;
        contents.push_str(settings);
        std::fs::write(&conf, contents)?;
        Ok(())
    }

    /// The port of a server already running in the data directory, from `postmaster.pid`.
    async fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let status = self
            .run_pg(
                "pg_ctl",
                &["status".as_ref(), "-D".as_ref(), self.data_dir.as_os_str()],
            )
            .await;
        if status.is_err() {
            return None;
        }
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    async fn run_pg(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let program_path = self.bin_dir.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = tokio::process::Command::new("runuser");
                command.arg("-u").arg(user).arg("--").arg(&program_path);
                command
            }
            None => tokio::process::Command::new(&program_path),
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .output()
            .await
            .with_context(|| format!("cannot run {}", program_path.display()))?;
        if output.status.success() {
            return Ok(());
        }
        bail!(
            "{} exited with {}: {}",
            program,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.owned && !self.stopped {
            let program = self.bin_dir.join("pg_ctl");
            let mut command = match self.run_as {
                Some(user) => {
                    let mut command = std::process::Command::new("runuser");
                    command.arg("-u").arg(user).arg("--").arg(&program);
                    command
                }
                None => std::process::Command::new(&program),
            };
            let _ = command
                .args(["stop", "--wait", "--silent", "-m", "fast", "-D"])
                .arg(&self.data_dir)
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, the PATH, or Debian's versioned dirs.
async fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();

    if let Ok(output) = tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .await
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| has_tools(dir))
    {
        return Ok(dir);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| has_tools(dir))
        .collect();
    versioned.sort();
    versioned.pop().context(
        "no PostgreSQL server answers at the local default and no PostgreSQL binaries (initdb, pg_ctl) were found: \
         install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL to a server",
    )
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

async fn os_user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &'static str| async move {
        let output = tokio::process::Command::new("id")
            .arg(flag)
            .arg(user)
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "the {user} OS user does not exist; running as root, callstore starts PostgreSQL as {user}"
        );
        Ok::<u32, anyhow::Error>(String::from_utf8_lossy(&output.stdout).trim().parse()?)
    };
    Ok((id("-u").await?, id("-g").await?))
}

/// An exclusive advisory lock on a file, released when dropped (or when the process dies).
struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    async fn acquire(path: &Path) -> anyhow::Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd as _;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
            let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            anyhow::ensure!(
                status == 0,
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            Ok(Self { _file: file })
        })
        .await?
    }
}

/// A TCP port on loopback that is free right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
