//! The `callstore` command line: flags, each with a `CALLSTORE_*` (or `DATABASE_URL`)
//! environment variable, turned into the typed [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::client::ingest::IngestArgs;
use crate::client::watch::WatchArgs;
use crate::config::{Config, DEFAULT_DATA_DIR, DEFAULT_LOCAL_DATABASE_URL};
use crate::db::server::DatabaseSettings;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "callstore",
    version,
    about = "System of record for the results of AI outbound calls"
)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "CALLSTORE_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, in RUST_LOG syntax.
    #[arg(
        long,
        env = "CALLSTORE_LOG",
        default_value = "info,sqlx=warn",
        global = true
    )]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Load files of call records (native JSON lines or vendor payloads) into a running server.
    Ingest(IngestArgs),
    /// Follow the changes to calls of a running server, one JSON line per event; resumes by
    /// itself after a disconnect.
    Watch(WatchArgs),
    /// Create, list and revoke API keys (in the database directly).
    Keys(crate::auth::admin::KeysArgs),
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL. When unset: the local default if a server answers there, else a private
    /// server started from the installed PostgreSQL binaries.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The local default tried when DATABASE_URL is unset.
    #[arg(long, env = "CALLSTORE_LOCAL_DATABASE_URL", default_value = DEFAULT_LOCAL_DATABASE_URL, hide_env_values = true)]
    pub local_database_url: String,
    /// Directory of the private PostgreSQL server's data (kept between runs).
    #[arg(long, env = "CALLSTORE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

impl DatabaseArgs {
    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            local_url: self.local_database_url.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the gRPC listener.
    #[arg(long, env = "CALLSTORE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Maximum connections in the database pool.
    #[arg(long, env = "CALLSTORE_DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub db_max_connections: u32,
    /// How long a request waits for a database connection.
    #[arg(long, env = "CALLSTORE_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "CALLSTORE_MIGRATE_ON_START", default_value_t = true, action = ArgAction::Set)]
    pub migrate_on_start: bool,
    /// How long in-flight calls may finish after SIGTERM/SIGINT (below Kubernetes' default
    /// 30 s termination grace, so the pool is closed before a SIGKILL).
    #[arg(long, env = "CALLSTORE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How often readiness re-checks the database.
    #[arg(long, env = "CALLSTORE_READINESS_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub readiness_interval: Duration,
    /// HTTP/2 keepalive ping interval.
    #[arg(long, env = "CALLSTORE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// Also listen for vendor webhooks (`POST /hooks/{tenant}/{format}`) on this address.
    #[arg(long, env = "CALLSTORE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long, env = "CALLSTORE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve `grpc.health.v1` alone on this address, in plaintext and without
    /// credentials: for probes that cannot speak TLS when `--tls-cert` is set.
    #[arg(long, env = "CALLSTORE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// HTTP/2 keepalive ping timeout.
    #[arg(long, env = "CALLSTORE_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// Group commits in flight at once: concurrent small ingest requests share these
    /// transactions (each holds one pool connection while it writes).
    #[arg(long, env = "CALLSTORE_GROUP_COMMIT_WRITERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub group_commit_writers: u16,
    /// Most calls in one group commit.
    #[arg(long, env = "CALLSTORE_GROUP_COMMIT_MAX_CALLS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub group_commit_max_calls: u32,
    /// How often the task statistics compactor folds pending deltas into the rollups.
    #[arg(long, env = "CALLSTORE_STATS_COMPACTION_INTERVAL", default_value = "2s", value_parser = parse_positive_duration)]
    pub stats_compaction_interval: Duration,
    /// How long WatchCalls streams keep feed events: an older cursor must re-snapshot.
    #[arg(long, env = "CALLSTORE_FEED_RETENTION", default_value = "7d", value_parser = parse_positive_duration)]
    pub feed_retention: Duration,
    /// How often expired feed events are pruned.
    #[arg(long, env = "CALLSTORE_FEED_PRUNE_INTERVAL", default_value = "1m", value_parser = parse_positive_duration)]
    pub feed_prune_interval: Duration,
    /// Fallback poll of the feed tailer, for missed notifications.
    #[arg(long, env = "CALLSTORE_WATCH_POLL_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub watch_poll_interval: Duration,
    /// How long a WatchCalls stream stays silent before a heartbeat (unless the request says).
    #[arg(long, env = "CALLSTORE_WATCH_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub watch_heartbeat_interval: Duration,
    /// How long a WatchCalls stream may go unread before it is ended (the client resumes by
    /// cursor). Keep it below --db-idle-in-transaction-timeout: a snapshot holds a transaction.
    #[arg(long, env = "CALLSTORE_WATCH_STUCK_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub watch_stuck_timeout: Duration,
    /// Batches a stream may lag behind the tailer before it reads the database by itself.
    #[arg(long, env = "CALLSTORE_WATCH_LIVE_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub watch_live_buffer: u32,
    /// Messages queued per WatchCalls stream.
    #[arg(long, env = "CALLSTORE_WATCH_SEND_BUFFER", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub watch_send_buffer: u32,
    /// The server's sessions are ended when idle in a transaction this long, so one stuck
    /// transaction cannot hold back the feed's watermark (and every stream) for longer.
    #[arg(long, env = "CALLSTORE_DB_IDLE_IN_TRANSACTION_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub db_idle_in_transaction_timeout: Duration,
    /// Compute each ingested call's quality result (metrics, and a score with the tenant's
    /// active rule set) as it is stored. `false` leaves calls unscored until a re-score.
    #[arg(long, env = "CALLSTORE_QUALITY_AT_INGEST", default_value_t = true, action = clap::ArgAction::Set)]
    pub quality_at_ingest: bool,
    /// Let every request through without credentials, naming its own tenant in x-tenant-id.
    /// For local development only: anyone who reaches the port can read and write any tenant.
    #[arg(long, env = "CALLSTORE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// How long a checked API key is trusted before it is read again (a revoked key is refused
    /// within this time).
    #[arg(long, env = "CALLSTORE_AUTH_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub auth_cache_ttl: Duration,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "CALLSTORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "CALLSTORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS. A registered
    /// certificate (`keys create --client-cert`) authenticates without an API key.
    #[arg(long, env = "CALLSTORE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Unary requests served at once; beyond it requests are refused at once with
    /// RESOURCE_EXHAUSTED (and a retry delay) instead of queueing.
    #[arg(long, env = "CALLSTORE_MAX_CONCURRENT_REQUESTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_requests: u32,
    /// Streams (WatchCalls, IngestCallStream) open at once; beyond it new ones are refused.
    #[arg(long, env = "CALLSTORE_MAX_CONCURRENT_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_streams: u32,
    /// The longest a unary request runs (a shorter client deadline wins); then it is cut,
    /// its database work cancelled, and the client told DEADLINE_EXCEEDED.
    #[arg(long, env = "CALLSTORE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,
    /// Calls per second each tenant may ingest through this replica (0: no limit).
    #[arg(long, env = "CALLSTORE_INGEST_RATE", default_value_t = crate::limits::DEFAULT_INGEST_RATE)]
    pub ingest_rate: f64,
    /// Calls a tenant may ingest at once above its rate.
    #[arg(long, env = "CALLSTORE_INGEST_BURST", default_value_t = crate::limits::DEFAULT_INGEST_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub ingest_burst: u32,
    /// The largest request message decoded, in bytes.
    #[arg(long, env = "CALLSTORE_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_message_bytes: u32,
    /// Calls a re-scoring job scores per transaction.
    #[arg(long, env = "CALLSTORE_RESCORE_PAGE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rescore_page: u32,
}

impl ServeArgs {
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.listen, None);
        config.database = self.database.settings();
        config.pool.max_connections = self.db_max_connections;
        config.pool.acquire_timeout = self.db_acquire_timeout;
        config.migrate_on_start = self.migrate_on_start;
        config.shutdown_grace = self.shutdown_grace;
        config.readiness_interval = self.readiness_interval;
        config.http2_keepalive_interval = self.http2_keepalive_interval;
        config.http2_keepalive_timeout = self.http2_keepalive_timeout;
        config.webhook_listen_addr = self.webhook_listen;
        config.metrics_listen_addr = self.metrics_listen;
        config.health_listen_addr = self.health_listen;
        config.group_commit.writers = usize::from(self.group_commit_writers);
        config.group_commit.max_group = self.group_commit_max_calls as usize;
        config.stats.compaction_interval = self.stats_compaction_interval;
        config.pool.idle_in_transaction_timeout = self.db_idle_in_transaction_timeout;
        config.watch.retention = self.feed_retention;
        config.watch.prune_interval = self.feed_prune_interval;
        config.watch.poll_interval = self.watch_poll_interval;
        config.watch.heartbeat_interval = self.watch_heartbeat_interval;
        config.watch.stuck_timeout = self.watch_stuck_timeout;
        config.watch.live_buffer = self.watch_live_buffer as usize;
        config.watch.send_buffer = self.watch_send_buffer as usize;
        config.group_commit.write.inspect = self.quality_at_ingest;
        config.rescore.page = i64::from(self.rescore_page);
        config.auth.cache_ttl = self.auth_cache_ttl;
        config.limits.max_concurrent_requests = self.max_concurrent_requests as usize;
        config.limits.max_concurrent_streams = self.max_concurrent_streams as usize;
        config.limits.request_timeout = self.request_timeout;
        config.limits.ingest_rate_per_tenant =
            (self.ingest_rate > 0.0).then_some((self.ingest_rate, self.ingest_burst));
        config.limits.max_decoding_message_size = self.max_message_bytes as usize;
        // The embedded default database is for development: on a loopback address it serves
        // without keys, like --insecure-no-auth (and says so loudly at start).
        let embedded_on_loopback =
            self.database.database_url.is_none() && self.listen.ip().is_loopback();
        config.auth.required = !(self.insecure_no_auth || embedded_on_loopback);
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::config::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        config
    }
}

/// Parses a duration that must not be zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be greater than zero".to_owned()),
        duration => Ok(duration),
    }
}

/// Parses a duration such as `500ms`, `30s`, `5m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 30s, 5m, 1h or 7d"))?;
    let seconds_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(value)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit; use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(value.saturating_mul(seconds_per_unit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn rejects_malformed_durations() {
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn serve_defaults_to_loopback_and_the_embedded_database() {
        let cli = Cli::try_parse_from(["callstore", "serve"]).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let config = args.config();
        assert!(config.listen_addr.ip().is_loopback());
        assert_eq!(config.database.local_url, DEFAULT_LOCAL_DATABASE_URL);
        assert!(config.migrate_on_start);
    }
}
