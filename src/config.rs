//! Typed configuration of the server, validated once at start-up. The command line (`cli.rs`)
//! fills it from flags and `CALLSTORE_*` / `DATABASE_URL` environment variables; tests build it
//! directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::ingest::IngestLimits;
use crate::db::PoolSettings;
use crate::db::server::DatabaseSettings;
use crate::ingest::group_commit::GroupCommitSettings;

/// The local server tried when `DATABASE_URL` is unset.
pub const DEFAULT_LOCAL_DATABASE_URL: &str = "postgres://localhost:5432/callstore";
/// Where a private PostgreSQL server keeps its data by default.
pub const DEFAULT_DATA_DIR: &str = ".callstore";

#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the gRPC listener; port 0 picks a free port.
    pub listen_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub pool: PoolSettings,
    /// Apply pending migrations at start-up (under the advisory lock).
    pub migrate_on_start: bool,
    /// How long in-flight calls may run on after a shutdown signal before they are cut.
    pub shutdown_grace: Duration,
    /// How often readiness re-checks the database.
    pub readiness_interval: Duration,
    /// HTTP/2 keepalive ping interval, so idle streams survive proxies.
    pub http2_keepalive_interval: Duration,
    /// How long to wait for a keepalive ping's answer before closing the connection.
    pub http2_keepalive_timeout: Duration,
    /// What one ingest request may carry.
    pub ingest: IngestLimits,
    /// How concurrent small ingest requests share commits.
    pub group_commit: GroupCommitSettings,
    /// Address of the optional webhook listener where vendors push payloads.
    pub webhook_listen_addr: Option<SocketAddr>,
    /// How the task statistics compactor runs.
    pub stats: crate::stats::StatsSettings,
    /// How the live feed is read, fanned out to WatchCalls streams and kept.
    pub watch: crate::feed::WatchSettings,
    /// How re-scoring jobs run.
    pub rescore: crate::quality::rescore::RescoreSettings,
    /// How callers are authenticated.
    pub auth: AuthSettings,
    /// TLS of the gRPC listener, when set.
    pub tls: Option<TlsSettings>,
    /// Overload protection: concurrency, deadlines, ingest rate, message size.
    pub limits: crate::limits::LimitSettings,
    /// Address of the optional metrics listener (`GET /metrics`, Prometheus text).
    pub metrics_listen_addr: Option<SocketAddr>,
    /// Address of the optional plaintext listener serving `grpc.health.v1` only.
    pub health_listen_addr: Option<SocketAddr>,
}

/// How callers are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `false` only with `--insecure-no-auth` (or the embedded default on loopback): every
    /// request is let through and names its own tenant.
    pub required: bool,
    /// How long a checked credential is trusted before it is read again.
    pub cache_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            required: true,
            cache_ttl: crate::auth::DEFAULT_CACHE_TTL,
        }
    }
}

/// TLS of the gRPC listener (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by this CA are required (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl Config {
    /// A configuration with the defaults of `callstore serve`, for the given listener and
    /// database URL (`None` means the embedded default).
    pub fn new(listen_addr: SocketAddr, database_url: Option<String>) -> Self {
        Self {
            listen_addr,
            database: DatabaseSettings {
                url: database_url,
                local_url: DEFAULT_LOCAL_DATABASE_URL.to_owned(),
                data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            },
            pool: PoolSettings {
                max_connections: 16,
                acquire_timeout: Duration::from_secs(5),
                idle_in_transaction_timeout: Duration::from_secs(60),
            },
            migrate_on_start: true,
            shutdown_grace: Duration::from_secs(20),
            readiness_interval: Duration::from_secs(5),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            ingest: IngestLimits::default(),
            group_commit: GroupCommitSettings::default(),
            webhook_listen_addr: None,
            stats: crate::stats::StatsSettings::default(),
            watch: crate::feed::WatchSettings::default(),
            rescore: crate::quality::rescore::RescoreSettings::default(),
            auth: AuthSettings::default(),
            tls: None,
            limits: crate::limits::LimitSettings::default(),
            metrics_listen_addr: None,
            health_listen_addr: None,
        }
    }
}
