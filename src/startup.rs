//! Builds and runs the server. `main` and the tests start it the same way: `Application::build`
//! binds the listener (port 0 in tests) and finds the database; `run_until_stopped` serves until
//! the shutdown future resolves, then drains.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::api;
use crate::config::Config;
use crate::db;
use crate::db::server::ResolvedDatabase;
use crate::health::{self, READINESS};
use crate::ingest::group_commit::GroupCommitter;
use crate::proto;

/// Descriptor set of callstore's protos and their imports, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/callstore_descriptor.bin"));

pub struct Application {
    config: Config,
    listener: TcpListener,
    local_addr: SocketAddr,
    webhook_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    health_listener: Option<TcpListener>,
    pool: PgPool,
    database: ResolvedDatabase,
}

impl Application {
    /// Finds the database (starting a private server if that is what the configuration leads
    /// to) and binds the listener. Does not wait for the database to be reachable: readiness
    /// reports that.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let database = db::server::resolve(&config.database).await?;
        let pool = db::lazy_pool(database.connect_options.clone(), &config.pool);
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        let webhook_listener = bind_optional(config.webhook_listen_addr, "webhooks").await?;
        let metrics_listener = bind_optional(config.metrics_listen_addr, "metrics").await?;
        let health_listener = bind_optional(config.health_listen_addr, "health checks").await?;
        Ok(Self {
            config,
            listener,
            local_addr,
            webhook_listener,
            metrics_listener,
            health_listener,
            pool,
            database,
        })
    }

    /// The address the server listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the webhook listener, when there is one.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The address of the metrics listener (`/metrics`), when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The address of the plaintext health listener, when there is one.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Where the data lives, without credentials.
    pub fn database_description(&self) -> &str {
        &self.database.description
    }

    /// How the server connects to its database.
    pub fn database_connect_options(&self) -> &sqlx::postgres::PgConnectOptions {
        &self.database.connect_options
    }

    /// The connection pool, for tests that check what was stored.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown` resolves. Then readiness turns NOT_SERVING, the listener stops
    /// accepting, and in-flight calls get `shutdown_grace` to finish before they are cut.
    pub async fn run_until_stopped<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Self {
            config,
            listener,
            local_addr,
            webhook_listener,
            metrics_listener,
            health_listener,
            pool,
            mut database,
        } = self;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status(READINESS, ServingStatus::NotServing)
            .await;

        let stop = CancellationToken::new();
        let mut readiness = tokio::spawn(health::track_readiness(
            pool.clone(),
            reporter.clone(),
            config.migrate_on_start,
            config.readiness_interval,
            stop.child_token(),
        ));

        // Folds the statistics deltas ingest appends into the rollups GetTaskStats reads.
        crate::stats::spawn_compactor(pool.clone(), config.stats.clone(), stop.child_token());
        // The replica's feed tailer, shared by every WatchCalls stream, and feed retention.
        let hub = crate::feed::Hub::start(pool.clone(), config.watch.clone(), stop.child_token());
        crate::feed::prune::spawn_pruner(pool.clone(), &config.watch, stop.child_token());
        // Re-scoring jobs of any replica, run here when this replica's runner is free.
        let rescore = crate::quality::rescore::spawn_runner(
            pool.clone(),
            config.rescore.clone(),
            stop.child_token(),
        );
        // Ingest's way into the database, shared by the RPCs and the webhooks.
        let store = GroupCommitter::start(pool.clone(), &config.group_commit);
        let auth = auth_mode(&config, &pool);
        config.limits.validate().context("invalid limits")?;
        let overload = crate::limits::OverloadLayer::new(&config.limits);
        let ingest_rate =
            crate::limits::IngestRateLimiter::from_settings(config.limits.ingest_rate_per_tenant)
                .context("invalid ingest rate limit")?;
        let max_message = config.limits.max_decoding_message_size;
        let mut builder = Server::builder();
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls_config(tls)?)
                .context("cannot configure TLS")?;
        }
        let router = builder
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .trace_fn(crate::telemetry::rpc_span)
            // RED metrics of every RPC, refusals of the layers below included.
            .layer(crate::metrics::global().layer())
            // Then the limits: a request over them is refused before its key is looked up.
            .layer(overload)
            .layer(crate::auth::layer::AuthLayer::new(auth.clone()))
            .add_service(health_service.clone())
            .add_service(reflection_v1()?)
            .add_service(reflection_v1alpha()?)
            .add_service(
                proto::ingest_service_server::IngestServiceServer::new(
                    api::ingest::IngestApi::new(
                        pool.clone(),
                        config.ingest.clone(),
                        store.clone(),
                        ingest_rate.clone(),
                    ),
                )
                .max_decoding_message_size(max_message),
            )
            .add_service(
                proto::query_service_server::QueryServiceServer::new(api::query::QueryApi::new(
                    pool.clone(),
                ))
                .max_decoding_message_size(max_message),
            )
            .add_service(api::watch::WatchApi::new(hub))
            .add_service(
                proto::quality_service_server::QualityServiceServer::new(
                    api::quality::QualityApi::new(pool.clone(), rescore),
                )
                .max_decoding_message_size(max_message),
            );

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop_accepting = CancellationToken::new();
        let mut server = tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned()),
        );
        tracing::info!(address = %local_addr, database = %database.description, "serving gRPC");
        let webhook = webhook_listener.map(|webhook_listener| {
            if let Ok(address) = webhook_listener.local_addr() {
                tracing::info!(address = %address, "serving webhooks");
            }
            let app = crate::webhook::router(store.clone(), auth.clone(), ingest_rate);
            tokio::spawn(
                axum::serve(webhook_listener, app)
                    .with_graceful_shutdown(stop_accepting.clone().cancelled_owned())
                    .into_future(),
            )
        });

        let metrics = metrics_listener.map(|metrics_listener| {
            if let Ok(address) = metrics_listener.local_addr() {
                tracing::info!(address = %address, "serving metrics on /metrics");
            }
            tokio::spawn(crate::metrics::serve(
                metrics_listener,
                crate::metrics::global().clone(),
                Some(pool.clone()),
                stop_accepting.clone().cancelled_owned(),
            ))
        });

        // Health checks alone, in plaintext and without credentials, for probes that cannot
        // speak TLS (the kubelet's gRPC probes) when the main listener serves TLS.
        let health = health_listener.map(|health_listener| {
            if let Ok(address) = health_listener.local_addr() {
                tracing::info!(address = %address, "serving health checks");
            }
            let incoming = TcpIncoming::from(health_listener).with_nodelay(Some(true));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health_service.clone())
                    .serve_with_incoming_shutdown(
                        incoming,
                        stop_accepting.clone().cancelled_owned(),
                    ),
            )
        });

        // Whatever ends the serving, the way out is the same: readiness off, stop accepting,
        // give in-flight calls the grace period, then release the database.
        let outcome = tokio::select! {
            result = &mut server => Err(match flatten(result) {
                Ok(()) => anyhow::anyhow!("the server stopped unexpectedly"),
                Err(error) => error,
            }),
            result = &mut readiness => Err(match result {
                Ok(Err(error)) => error,
                Ok(Ok(())) => anyhow::anyhow!("the readiness task stopped unexpectedly"),
                Err(error) => anyhow::Error::new(error).context("the readiness task failed"),
            }),
            () = shutdown => Ok(()),
        };
        tracing::info!(
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "shutting down"
        );
        stop.cancel();
        // A migration waiting for another replica's lock must not hold up the shutdown.
        readiness.abort();
        reporter
            .set_service_status(READINESS, ServingStatus::NotServing)
            .await;
        stop_accepting.cancel();
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        let drained = if server.is_finished() {
            Ok(())
        } else {
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(result) => flatten(result),
                Err(_elapsed) => {
                    tracing::warn!(
                        "in-flight calls did not finish within the grace period; cutting them"
                    );
                    server.abort();
                    Ok(())
                }
            }
        };

        if let Some(mut webhook) = webhook
            && tokio::time::timeout_at(deadline, &mut webhook)
                .await
                .is_err()
        {
            webhook.abort();
        }
        if let Some(mut metrics) = metrics
            && tokio::time::timeout_at(deadline, &mut metrics)
                .await
                .is_err()
        {
            metrics.abort();
        }
        if let Some(mut health) = health
            && tokio::time::timeout_at(deadline, &mut health)
                .await
                .is_err()
        {
            health.abort();
        }
        pool.close().await;
        if let Some(private_server) = database.private_server.as_mut() {
            private_server.stop().await?;
        }
        tracing::info!("stopped");
        outcome.and(drained)
    }
}

/// Binds a listener of an optional address; `what` names it in the error.
async fn bind_optional(
    address: Option<SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<TcpListener>> {
    match address {
        Some(address) => {
            Ok(Some(TcpListener::bind(address).await.with_context(
                || format!("cannot listen for {what} on {address}"),
            )?))
        }
        None => Ok(None),
    }
}

/// How requests are authenticated, said loudly when they are not.
fn auth_mode(config: &Config, pool: &sqlx::PgPool) -> crate::auth::layer::AuthMode {
    use crate::auth::layer::AuthMode;
    if config.auth.required {
        return AuthMode::Keys(std::sync::Arc::new(crate::auth::Authenticator::new(
            pool.clone(),
            config.auth.cache_ttl,
        )));
    }
    tracing::warn!(
        address = %config.listen_addr,
        "AUTHENTICATION IS OFF: every request is served without credentials, for the tenant it \
         names. For local development only (--insecure-no-auth, or the embedded database on a \
         loopback address); set DATABASE_URL and leave --insecure-no-auth out to require API keys"
    );
    AuthMode::Off
}

/// The listener's TLS from PEM files: its identity, and the client CA for mutual TLS.
fn tls_config(
    tls: &crate::config::TlsSettings,
) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(client_ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(client_ca)?));
    }
    Ok(config)
}

fn flatten(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    result
        .context("the server task failed")?
        .context("the server failed")
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        // Both reflection versions are served, so both are listed whichever one a client asks.
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

fn reflection_v1() -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    reflection_builder()
        .build_v1()
        .context("cannot build the reflection service")
}

fn reflection_v1alpha() -> anyhow::Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
> {
    reflection_builder()
        .build_v1alpha()
        .context("cannot build the reflection service")
}
