//! Prometheus metrics: RED metrics of every RPC (through [`MetricsLayer`]), ingest, group
//! commit, database pool, `WatchCalls` and re-scoring figures, served as OpenMetrics text by
//! [`serve`] on a port of their own.
//!
//! Metrics are process-wide, so [`global`] is the instance the server records into; tests make
//! their own with [`Metrics::new`]. Other modules call the small methods of [`Metrics`] and
//! never see prometheus-client.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::task::{Context, Poll, ready};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response as AxumResponse};
use axum::routing::get;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::telemetry::split_rpc_path;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the RPC duration buckets, in seconds: 0.5 ms … 10 s.
const RPC_DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Upper bounds of the group commit size buckets, in calls: 1 … 256.
const GROUP_COMMIT_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Distinct RPC paths labelled by name; later ones (only a client calling made-up methods gets
/// there) share the `unknown` labels, so the series stay bounded.
const MAX_RPC_NAMES: usize = 256;
/// Longest service or method name used as a label.
const MAX_RPC_NAME_LEN: usize = 128;
/// The label of RPCs whose path is not a gRPC method.
const UNKNOWN: &str = "unknown";

/// gRPC status names, indexed by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CODE_CANCELLED: u8 = 1;
const CODE_UNKNOWN: u8 = 2;

/// What ingesting one call did, as `callstore_ingest_calls_total{outcome}` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestOutcome {
    /// A new call was stored.
    Created,
    /// A stored call was changed.
    Updated,
    /// The call was already stored as sent (a duplicate delivery).
    Unchanged,
    /// The call was refused.
    Rejected,
}

impl IngestOutcome {
    const ALL: [Self; 4] = [
        Self::Created,
        Self::Updated,
        Self::Unchanged,
        Self::Rejected,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
        }
    }
}

impl From<crate::db::calls::StoreOutcome> for IngestOutcome {
    fn from(outcome: crate::db::calls::StoreOutcome) -> Self {
        use crate::db::calls::StoreOutcome;
        match outcome {
            StoreOutcome::Created => Self::Created,
            StoreOutcome::Updated => Self::Updated,
            StoreOutcome::Unchanged => Self::Unchanged,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    service: Arc<str>,
    method: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcCodeLabels {
    service: Arc<str>,
    method: Arc<str>,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolStateLabels {
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metrics of one RPC path, resolved once.
#[derive(Debug)]
struct RpcMetrics {
    labels: RpcLabels,
    in_flight: Gauge,
    duration: Histogram,
}

struct Inner {
    registry: Registry,
    rpc_requests: Family<RpcCodeLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    rpc_in_flight: Family<RpcLabels, Gauge>,
    ingest_calls: Family<OutcomeLabels, Counter>,
    ingest_turns: Counter,
    group_commit_calls: Histogram,
    db_pool_connections: Family<PoolStateLabels, Gauge>,
    db_pool_max_connections: Gauge,
    watch_streams: Gauge,
    feed_lag: Gauge<f64, AtomicU64>,
    rescore_calls: Counter,
    /// RPC path → its metrics, at most [`MAX_RPC_NAMES`] of them.
    rpcs: RwLock<HashMap<Box<str>, Arc<RpcMetrics>>>,
    unknown_rpc: Arc<RpcMetrics>,
}

/// callstore's metrics. Cheap to clone: clones share the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics the server records into and serves.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

fn rpc_duration_histogram() -> Histogram {
    Histogram::new(RPC_DURATION_BUCKETS)
}

impl Metrics {
    /// A fresh set of metrics in a registry of its own (all at zero).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("callstore");
        let rpc_requests = Family::<RpcCodeLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "RPCs completed, by gRPC status code",
            rpc_requests.clone(),
        );
        let rpc_duration: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(rpc_duration_histogram);
        registry.register_with_unit(
            "rpc_duration",
            "Time from an RPC's request to the end of its response stream",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let rpc_in_flight = Family::<RpcLabels, Gauge>::default();
        registry.register(
            "rpc_in_flight",
            "RPCs started and not yet completed",
            rpc_in_flight.clone(),
        );
        let ingest_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ingest_calls",
            "Calls ingested, by outcome",
            ingest_calls.clone(),
        );
        for outcome in IngestOutcome::ALL {
            ingest_calls.get_or_create_owned(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        let ingest_turns = Counter::default();
        registry.register(
            "ingest_turns",
            "Transcript turns of the calls ingested",
            ingest_turns.clone(),
        );
        let group_commit_calls = Histogram::new(GROUP_COMMIT_BUCKETS);
        registry.register(
            "group_commit_calls",
            "Calls written per group commit transaction",
            group_commit_calls.clone(),
        );
        let db_pool_connections = Family::<PoolStateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Open database connections, by state",
            db_pool_connections.clone(),
        );
        for state in ["idle", "in_use"] {
            db_pool_connections.get_or_create_owned(&PoolStateLabels { state });
        }
        let db_pool_max_connections = Gauge::default();
        registry.register(
            "db_pool_max_connections",
            "Most database connections the pool opens",
            db_pool_max_connections.clone(),
        );
        let watch_streams = Gauge::default();
        registry.register(
            "watch_streams",
            "Active WatchCalls streams",
            watch_streams.clone(),
        );
        let feed_lag = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "feed_lag",
            "Age of the newest feed event not yet delivered",
            Unit::Seconds,
            feed_lag.clone(),
        );
        let rescore_calls = Counter::default();
        registry.register(
            "rescore_calls",
            "Calls re-scored by re-scoring jobs",
            rescore_calls.clone(),
        );
        let unknown_rpc = Arc::new(rpc_metrics(
            &rpc_in_flight,
            &rpc_duration,
            RpcLabels {
                service: Arc::from(UNKNOWN),
                method: Arc::from(UNKNOWN),
            },
        ));
        Self {
            inner: Arc::new(Inner {
                registry,
                rpc_requests,
                rpc_duration,
                rpc_in_flight,
                ingest_calls,
                ingest_turns,
                group_commit_calls,
                db_pool_connections,
                db_pool_max_connections,
                watch_streams,
                feed_lag,
                rescore_calls,
                rpcs: RwLock::new(HashMap::new()),
                unknown_rpc,
            }),
        }
    }

    /// The tower layer recording the RPC metrics into these metrics.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer::new(self.clone())
    }

    /// Counts `calls` ingested calls with this outcome.
    pub fn record_ingest(&self, outcome: IngestOutcome, calls: u64) {
        self.inner
            .ingest_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc_by(calls);
    }

    /// Counts `turns` transcript turns of ingested calls.
    pub fn record_turns(&self, turns: u64) {
        self.inner.ingest_turns.inc_by(turns);
    }

    /// Records the size of one group commit transaction.
    pub fn observe_group_commit(&self, calls: usize) {
        let calls = u32::try_from(calls).unwrap_or(u32::MAX);
        self.inner.group_commit_calls.observe(f64::from(calls));
    }

    /// Counts `calls` calls re-scored.
    pub fn record_rescore(&self, calls: u64) {
        self.inner.rescore_calls.inc_by(calls);
    }

    /// Counts one more active `WatchCalls` stream until the returned guard is dropped.
    pub fn stream_opened(&self) -> WatchStreamGuard {
        self.inner.watch_streams.inc();
        WatchStreamGuard {
            metrics: self.clone(),
        }
    }

    /// Sets the age, in seconds, of the newest feed event not yet delivered (0 when every event
    /// is delivered). Negative or non-finite ages count as 0.
    pub fn set_feed_lag(&self, seconds: f64) {
        let seconds = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        self.inner.feed_lag.set(seconds);
    }

    /// Copies the pool's figures into the pool gauges (done at every scrape by [`serve`]).
    pub fn observe_pool(&self, pool: &PgPool) {
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
        let connections = &self.inner.db_pool_connections;
        connections
            .get_or_create(&PoolStateLabels { state: "idle" })
            .set(i64::from(idle));
        connections
            .get_or_create(&PoolStateLabels { state: "in_use" })
            .set(i64::from(size - idle));
        self.inner
            .db_pool_max_connections
            .set(i64::from(pool.options().get_max_connections()));
    }

    /// The metrics as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }

    /// The metrics of the RPC at this path, made on first use.
    fn rpc(&self, path: &str) -> Arc<RpcMetrics> {
        let rpcs = &self.inner.rpcs;
        if let Some(rpc) = rpcs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
        {
            return Arc::clone(rpc);
        }
        let Some((service, method)) =
            split_rpc_path(path).filter(|(service, method)| is_name(service) && is_name(method))
        else {
            return Arc::clone(&self.inner.unknown_rpc);
        };
        let mut rpcs = rpcs.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(rpc) = rpcs.get(path) {
            return Arc::clone(rpc);
        }
        if rpcs.len() >= MAX_RPC_NAMES {
            return Arc::clone(&self.inner.unknown_rpc);
        }
        let rpc = Arc::new(rpc_metrics(
            &self.inner.rpc_in_flight,
            &self.inner.rpc_duration,
            RpcLabels {
                service: Arc::from(service),
                method: Arc::from(method),
            },
        ));
        rpcs.insert(Box::from(path), Arc::clone(&rpc));
        rpc
    }
}

fn rpc_metrics(
    in_flight: &Family<RpcLabels, Gauge>,
    duration: &HistogramFamily<RpcLabels>,
    labels: RpcLabels,
) -> RpcMetrics {
    RpcMetrics {
        in_flight: in_flight.get_or_create_owned(&labels),
        duration: duration.get_or_create_owned(&labels),
        labels,
    }
}

/// Whether a service or method name is fit for a label (what protobuf allows in names).
fn is_name(name: &str) -> bool {
    name.len() <= MAX_RPC_NAME_LEN
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'.')
}

/// Counts an active `WatchCalls` stream while it lives (see [`Metrics::stream_opened`]).
#[must_use = "the stream is counted only while the guard lives"]
#[derive(Debug)]
pub struct WatchStreamGuard {
    metrics: Metrics,
}

impl Drop for WatchStreamGuard {
    fn drop(&mut self) {
        self.metrics.inner.watch_streams.dec();
    }
}

/// The gRPC status code of `grpc-status` in these headers or trailers: `None` when absent,
/// `UNKNOWN` when not a valid code.
fn grpc_status(headers: &http::HeaderMap) -> Option<u8> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u8>().ok())
        .filter(|code| usize::from(*code) < CODE_NAMES.len())
        .unwrap_or(CODE_UNKNOWN);
    Some(code)
}

fn code_name(code: u8) -> &'static str {
    CODE_NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Codes a server reports as an error on its span (OpenTelemetry's gRPC conventions).
fn is_server_error(code: u8) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// One RPC being measured; completes once, at the latest when dropped (as `CANCELLED`).
struct RpcCall {
    metrics: Metrics,
    rpc: Arc<RpcMetrics>,
    start: Instant,
    /// The RPC's span ([`crate::telemetry::rpc_span`]), to record the status on.
    span: Option<tracing::Span>,
    done: bool,
}

impl RpcCall {
    fn start(metrics: Metrics, path: &str) -> Self {
        let rpc = metrics.rpc(path);
        rpc.in_flight.inc();
        Self {
            metrics,
            rpc,
            start: Instant::now(),
            span: None,
            done: false,
        }
    }

    /// Keeps the current span when it is an RPC span (one with a `grpc.status_code` field).
    fn capture_span(&mut self) {
        if self.span.is_none() {
            let span = tracing::Span::current();
            if span
                .metadata()
                .is_some_and(|metadata| metadata.fields().field("grpc.status_code").is_some())
            {
                self.span = Some(span);
            }
        }
    }

    /// Records the outcome. `reenter` enters the span while recording, so a span that outlived
    /// its future (a stream) ends now.
    fn finish(&mut self, code: u8, reenter: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let rpc = &self.rpc;
        rpc.in_flight.dec();
        rpc.duration.observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .inner
            .rpc_requests
            .get_or_create(&RpcCodeLabels {
                service: Arc::clone(&rpc.labels.service),
                method: Arc::clone(&rpc.labels.method),
                code: code_name(code),
            })
            .inc();
        if let Some(span) = self.span.take() {
            let record = || {
                span.record("grpc.status_code", i64::from(code));
                if is_server_error(code) {
                    span.record("otel.status_code", "ERROR");
                }
            };
            if reenter {
                span.in_scope(record);
            } else {
                record();
            }
        }
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        self.finish(CODE_CANCELLED, true);
    }
}

/// A tower layer recording the RED metrics of every RPC, for tonic's
/// `Server::builder().layer(...)`: `callstore_rpc_requests_total{service,method,code}`,
/// `callstore_rpc_duration_seconds{service,method}` and `callstore_rpc_in_flight{service,
/// method}`. Service and method come from the path; the code from `grpc-status` in the
/// response headers (trailers-only responses) or, at the end of the body, its trailers.
///
/// A response whose body ends without a status counts as `UNKNOWN`, one dropped before its end
/// (the client went away) as `CANCELLED`, an error of the inner service or of the body as
/// `UNKNOWN`. Bodies are passed through frame by frame, never buffered.
///
/// Under the span of [`crate::telemetry::rpc_span`] (tonic's `trace_fn`), the layer also
/// records `grpc.status_code` (and `otel.status_code = "ERROR"` for server errors) on it and
/// keeps the span open until the response stream ends.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResBody> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = RpcCall::start(self.metrics.clone(), request.uri().path());
        ResponseFuture {
            inner: Box::pin(self.inner.call(request)),
            call: Some(call),
        }
    }
}

/// The response future of [`MetricsService`].
pub struct ResponseFuture<F> {
    inner: Pin<Box<F>>,
    call: Option<RpcCall>,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<http::Response<MetricsBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(call) = this.call.as_mut() {
            // tonic polls the response future inside the RPC's span.
            call.capture_span();
        }
        let result = ready!(this.inner.as_mut().poll(context));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = grpc_status(response.headers())
                    && let Some(mut call) = call.take()
                {
                    // Trailers-only: the status is known now, the body is empty.
                    call.finish(code, false);
                }
                Ok(response.map(|body| MetricsBody {
                    inner: Box::pin(body),
                    call,
                }))
            }
            Err(error) => {
                if let Some(mut call) = call {
                    call.finish(CODE_UNKNOWN, false);
                }
                Err(error)
            }
        })
    }
}

/// The response body of [`MetricsService`]: the inner body, frame by frame, completing the
/// RPC's metrics when the trailers or the end arrive, or when it is dropped.
pub struct MetricsBody<B: Body> {
    inner: Pin<Box<B>>,
    call: Option<RpcCall>,
}

impl<B: Body> fmt::Debug for MetricsBody<B> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MetricsBody")
            .finish_non_exhaustive()
    }
}

impl<B: Body> MetricsBody<B> {
    fn finish(&mut self, code: u8) {
        if let Some(mut call) = self.call.take() {
            call.finish(code, true);
        }
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(this.inner.as_mut().poll_frame(context));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.finish(code);
                }
            }
            Some(Err(_)) | None => this.finish(CODE_UNKNOWN),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for MetricsBody<B> {
    fn drop(&mut self) {
        if let Some(mut call) = self.call.take() {
            // A body that was complete (and so, maybe, never polled) ended without a status;
            // one cut short was cancelled.
            let code = if self.inner.is_end_stream() {
                CODE_UNKNOWN
            } else {
                CODE_CANCELLED
            };
            call.finish(code, true);
        }
    }
}

/// The `/metrics` and `/healthz` routes.
#[derive(Debug, Clone)]
struct ScrapeState {
    metrics: Metrics,
    pool: Option<PgPool>,
}

/// The router of [`serve`]: `GET /metrics` (OpenMetrics text; the pool gauges read from `pool`
/// at each scrape, 0 without a pool) and `GET /healthz` (200 `ok`).
pub fn router(metrics: Metrics, pool: Option<PgPool>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ScrapeState { metrics, pool })
}

async fn scrape(State(state): State<ScrapeState>) -> AxumResponse {
    if let Some(pool) = &state.pool {
        state.metrics.observe_pool(pool);
    }
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(error = %error, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics",
            )
                .into_response()
        }
    }
}

/// Serves [`router`] on `listener` (HTTP/1.1) until `shutdown` resolves, then lets the requests
/// in progress finish.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    pool: Option<PgPool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(address = %address, "serving metrics");
    }
    axum::serve(listener, router(metrics, pool))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use opentelemetry::Value;
    use tower::ServiceExt as _;
    use tracing::Instrument as _;

    use super::*;
    use crate::telemetry::tests::{attribute, capturing_subscriber};

    const PATH: &str = "/callstore.v1.QueryService/ListCalls";
    const LABELS: &str = r#"service="callstore.v1.QueryService",method="ListCalls""#;

    /// A body of given frames, ready one by one; optionally failing after them.
    struct TestBody {
        frames: VecDeque<Frame<Bytes>>,
        fail: bool,
    }

    impl TestBody {
        fn new(frames: Vec<Frame<Bytes>>) -> Self {
            Self {
                frames: frames.into(),
                fail: false,
            }
        }

        fn empty() -> Self {
            Self::new(Vec::new())
        }
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _context: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            match self.frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None if self.fail => {
                    self.fail = false;
                    Poll::Ready(Some(Err("broken")))
                }
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty() && !self.fail
        }
    }

    fn status(code: &str) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_str(code).unwrap());
        trailers
    }

    fn data(text: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(text.as_bytes()))
    }

    /// A service answering every request with the response `make` builds.
    fn service(
        metrics: &Metrics,
        make: impl Fn() -> http::Response<TestBody> + Clone + Send + 'static,
    ) -> MetricsService<
        impl Service<
            http::Request<()>,
            Response = http::Response<TestBody>,
            Error = Infallible,
            Future: Send,
        > + Clone,
    > {
        metrics.layer().layer(tower::service_fn(move |_request| {
            let response = make();
            async move { Ok::<_, Infallible>(response) }
        }))
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    async fn next_frame<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|context| Pin::new(&mut *body).poll_frame(context)).await
    }

    /// Polls the body to its end; returns how many frames it gave.
    async fn drain<B: Body + Unpin>(body: &mut B) -> usize {
        let mut frames = 0;
        while let Some(frame) = next_frame(body).await {
            frames += 1;
            if frame.is_err() {
                break;
            }
        }
        frames
    }

    fn text(metrics: &Metrics) -> String {
        metrics.encode().unwrap()
    }

    fn assert_has(text: &str, line: &str) {
        assert!(
            text.lines().any(|sample| sample == line),
            "missing `{line}` in:\n{text}"
        );
    }

    fn assert_lacks(text: &str, prefix: &str) {
        assert!(
            !text.lines().any(|sample| sample.starts_with(prefix)),
            "unexpected `{prefix}` in:\n{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unary_ok_with_the_status_in_trailers() {
        let metrics = Metrics::new();
        let svc = service(&metrics, || {
            http::Response::new(TestBody::new(vec![
                data("reply"),
                Frame::trailers(status("0")),
            ]))
        });
        let mut response = svc.oneshot(request(PATH)).await.unwrap();
        tokio::time::advance(Duration::from_millis(3)).await;
        let text_before = text(&metrics);
        assert_has(
            &text_before,
            &format!("callstore_rpc_in_flight{{{LABELS}}} 1"),
        );
        assert_lacks(&text_before, "callstore_rpc_requests_total{");
        assert_eq!(drain(response.body_mut()).await, 2);
        let text = text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_requests_total{{{LABELS},code=\"OK\"}} 1"),
        );
        assert_has(&text, &format!("callstore_rpc_in_flight{{{LABELS}}} 0"));
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_count{{{LABELS}}} 1"),
        );
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_sum{{{LABELS}}} 0.003"),
        );
        // 3 ms: above the 2.5 ms bound, within the 5 ms one.
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_bucket{{le=\"0.0025\",{LABELS}}} 0"),
        );
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_bucket{{le=\"0.005\",{LABELS}}} 1"),
        );
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_bucket{{le=\"+Inf\",{LABELS}}} 1"),
        );
        // Dropping the finished body changes nothing.
        drop(response);
        assert_has(
            &self::text(&metrics),
            &format!("callstore_rpc_requests_total{{{LABELS},code=\"OK\"}} 1"),
        );
    }

    #[tokio::test]
    async fn trailers_only_error_counts_at_the_response() {
        let metrics = Metrics::new();
        let svc = service(&metrics, || {
            let mut response = http::Response::new(TestBody::empty());
            *response.headers_mut() = status("3");
            response
        });
        let response = svc.oneshot(request(PATH)).await.unwrap();
        let text = text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_requests_total{{{LABELS},code=\"INVALID_ARGUMENT\"}} 1"),
        );
        assert_has(&text, &format!("callstore_rpc_in_flight{{{LABELS}}} 0"));
        // The body, never polled (as hyper does with an empty one), is not counted again.
        drop(response);
        let text = self::text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_count{{{LABELS}}} 1"),
        );
        assert_lacks(
            &text,
            "callstore_rpc_requests_total{service=\"callstore.v1.QueryService\",method=\"ListCalls\",code=\"UNKNOWN\"}",
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_counts_when_its_trailers_arrive() {
        let metrics = Metrics::new();
        let path = "/callstore.v1.WatchService/WatchCalls";
        let labels = r#"service="callstore.v1.WatchService",method="WatchCalls""#;
        let svc = service(&metrics, || {
            http::Response::new(TestBody::new(vec![
                data("event 1"),
                data("event 2"),
                Frame::trailers(status("0")),
            ]))
        });
        let mut response = svc.oneshot(request(path)).await.unwrap();
        let body = response.body_mut();
        assert!(next_frame(body).await.unwrap().unwrap().is_data());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(next_frame(body).await.unwrap().unwrap().is_data());
        let text_mid = text(&metrics);
        assert_has(&text_mid, &format!("callstore_rpc_in_flight{{{labels}}} 1"));
        assert_lacks(&text_mid, "callstore_rpc_requests_total{");
        assert_has(
            &text_mid,
            &format!("callstore_rpc_duration_seconds_count{{{labels}}} 0"),
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(next_frame(body).await.unwrap().unwrap().is_trailers());
        let text = text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_requests_total{{{labels},code=\"OK\"}} 1"),
        );
        assert_has(&text, &format!("callstore_rpc_in_flight{{{labels}}} 0"));
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_sum{{{labels}}} 2.5"),
        );
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_bucket{{le=\"1.0\",{labels}}} 0"),
        );
        assert_has(
            &text,
            &format!("callstore_rpc_duration_seconds_bucket{{le=\"2.5\",{labels}}} 1"),
        );
        assert!(next_frame(body).await.is_none());
        assert_has(
            &self::text(&metrics),
            &format!("callstore_rpc_requests_total{{{labels},code=\"OK\"}} 1"),
        );
    }

    #[tokio::test]
    async fn a_stream_dropped_before_its_end_is_cancelled() {
        let metrics = Metrics::new();
        let svc = service(&metrics, || {
            http::Response::new(TestBody::new(vec![
                data("event 1"),
                data("event 2"),
                Frame::trailers(status("0")),
            ]))
        });
        let mut response = svc.oneshot(request(PATH)).await.unwrap();
        assert!(next_frame(response.body_mut()).await.is_some());
        drop(response);
        let text = text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_requests_total{{{LABELS},code=\"CANCELLED\"}} 1"),
        );
        assert_has(&text, &format!("callstore_rpc_in_flight{{{LABELS}}} 0"));
    }

    #[tokio::test]
    async fn a_body_ending_without_status_or_failing_is_unknown() {
        let metrics = Metrics::new();
        // Ends without trailers.
        let svc = service(&metrics, || {
            http::Response::new(TestBody::new(vec![data("x")]))
        });
        let mut response = svc.oneshot(request(PATH)).await.unwrap();
        assert_eq!(drain(response.body_mut()).await, 1);
        // Empty and never polled.
        let svc = service(&metrics, || http::Response::new(TestBody::empty()));
        drop(svc.oneshot(request(PATH)).await.unwrap());
        // Trailers without a status, then the end.
        let svc = service(&metrics, || {
            http::Response::new(TestBody::new(vec![Frame::trailers(http::HeaderMap::new())]))
        });
        let mut response = svc.oneshot(request(PATH)).await.unwrap();
        assert_eq!(drain(response.body_mut()).await, 1);
        // Fails mid-stream.
        let svc = service(&metrics, || {
            let mut body = TestBody::new(vec![data("x")]);
            body.fail = true;
            http::Response::new(body)
        });
        let mut response = svc.oneshot(request(PATH)).await.unwrap();
        assert_eq!(drain(response.body_mut()).await, 2);
        drop(response);
        let text = text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_requests_total{{{LABELS},code=\"UNKNOWN\"}} 4"),
        );
        assert_has(&text, &format!("callstore_rpc_in_flight{{{LABELS}}} 0"));
    }

    #[tokio::test]
    async fn an_error_of_the_inner_service_is_unknown() {
        let metrics = Metrics::new();
        let svc = metrics
            .layer()
            .layer(tower::service_fn(|_request: http::Request<()>| async {
                Err::<http::Response<TestBody>, _>("no connection")
            }));
        assert_eq!(
            svc.oneshot(request(PATH)).await.unwrap_err(),
            "no connection"
        );
        let text = text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_requests_total{{{LABELS},code=\"UNKNOWN\"}} 1"),
        );
        assert_has(&text, &format!("callstore_rpc_in_flight{{{LABELS}}} 0"));
    }

    #[tokio::test]
    async fn a_response_future_dropped_is_cancelled() {
        let metrics = Metrics::new();
        let mut svc = metrics
            .layer()
            .layer(tower::service_fn(|_request: http::Request<()>| {
                std::future::pending::<Result<http::Response<TestBody>, Infallible>>()
            }));
        let future = svc.ready().await.unwrap().call(request(PATH));
        assert_has(
            &text(&metrics),
            &format!("callstore_rpc_in_flight{{{LABELS}}} 1"),
        );
        drop(future);
        let text = text(&metrics);
        assert_has(
            &text,
            &format!("callstore_rpc_requests_total{{{LABELS},code=\"CANCELLED\"}} 1"),
        );
        assert_has(&text, &format!("callstore_rpc_in_flight{{{LABELS}}} 0"));
    }

    #[tokio::test]
    async fn codes_are_named_and_invalid_ones_are_unknown() {
        let metrics = Metrics::new();
        for code in ["16", "5", "17", "x", " 14 "] {
            let svc = service(&metrics, move || {
                http::Response::new(TestBody::new(vec![Frame::trailers(status(code))]))
            });
            let mut response = svc.oneshot(request(PATH)).await.unwrap();
            drain(response.body_mut()).await;
        }
        let text = text(&metrics);
        for (name, count) in [
            ("UNAUTHENTICATED", 1),
            ("NOT_FOUND", 1),
            ("UNKNOWN", 2),
            ("UNAVAILABLE", 1),
        ] {
            assert_has(
                &text,
                &format!("callstore_rpc_requests_total{{{LABELS},code=\"{name}\"}} {count}"),
            );
        }
    }

    #[tokio::test]
    async fn health_and_odd_paths_are_labelled() {
        let metrics = Metrics::new();
        let svc = service(&metrics, || {
            http::Response::new(TestBody::new(vec![Frame::trailers(status("0"))]))
        });
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/",
            "/a/b/c",
            "/bad-name/Method",
        ] {
            let mut response = svc.clone().oneshot(request(path)).await.unwrap();
            drain(response.body_mut()).await;
        }
        let text = text(&metrics);
        assert_has(
            &text,
            r#"callstore_rpc_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"} 1"#,
        );
        assert_has(
            &text,
            r#"callstore_rpc_requests_total{service="grpc.reflection.v1.ServerReflection",method="ServerReflectionInfo",code="OK"} 1"#,
        );
        assert_has(
            &text,
            r#"callstore_rpc_requests_total{service="unknown",method="unknown",code="OK"} 3"#,
        );
    }

    #[test]
    fn rpc_labels_are_bounded() {
        let metrics = Metrics::new();
        for index in 0..MAX_RPC_NAMES {
            let rpc = metrics.rpc(&format!("/s.Service/Method{index}"));
            assert_eq!(&*rpc.labels.method, format!("Method{index}"));
        }
        // The same path again is still known; a new one is not.
        let again = metrics.rpc("/s.Service/Method0");
        assert_eq!(&*again.labels.method, "Method0");
        let more = metrics.rpc("/s.Service/OneTooMany");
        assert_eq!(&*more.labels.service, UNKNOWN);
        assert_eq!(&*more.labels.method, UNKNOWN);
        let long = format!("/s.Service/{}", "m".repeat(MAX_RPC_NAME_LEN + 1));
        assert_eq!(&*Metrics::new().rpc(&long).labels.method, UNKNOWN);
        let longest = format!("/s.Service/{}", "m".repeat(MAX_RPC_NAME_LEN));
        assert_eq!(
            Metrics::new().rpc(&longest).labels.method.len(),
            MAX_RPC_NAME_LEN
        );
    }

    #[tokio::test]
    async fn the_status_is_recorded_on_the_rpc_span() {
        let (subscriber, spans) = capturing_subscriber();
        let _default = tracing::subscriber::set_default(subscriber);
        let metrics = Metrics::new();
        let mut exported = Vec::new();
        for code in ["0", "13"] {
            let svc = service(&metrics, move || {
                http::Response::new(TestBody::new(vec![
                    data("reply"),
                    Frame::trailers(status(code)),
                ]))
            });
            let request = request(PATH);
            // As tonic does: the future is polled inside the span of `trace_fn`.
            let span = crate::telemetry::rpc_span(&request);
            let mut response = svc.oneshot(request).instrument(span).await.unwrap();
            // The span stays open while the body streams.
            assert!(spans.take().is_empty());
            let before_the_end = std::time::SystemTime::now();
            drain(response.body_mut()).await;
            // It ended with the stream.
            let ended = spans.take();
            assert_eq!(ended.len(), 1);
            assert!(ended[0].end_time >= before_the_end);
            exported.extend(ended);
            drop(response);
        }
        // A trailers-only error.
        let svc = service(&metrics, || {
            let mut response = http::Response::new(TestBody::empty());
            *response.headers_mut() = status("14");
            response
        });
        let request = request(PATH);
        let span = crate::telemetry::rpc_span(&request);
        drop(svc.oneshot(request).instrument(span).await.unwrap());
        exported.extend(spans.take());

        let spans = exported;
        assert_eq!(spans.len(), 3);
        let codes: Vec<_> = spans
            .iter()
            .map(|span| attribute(span, "grpc.status_code").cloned())
            .collect();
        assert_eq!(
            codes,
            [
                Some(Value::I64(0)),
                Some(Value::I64(13)),
                Some(Value::I64(14))
            ]
        );
        assert_eq!(spans[0].status, opentelemetry::trace::Status::Unset);
        for span in &spans[1..] {
            assert!(matches!(
                span.status,
                opentelemetry::trace::Status::Error { .. }
            ));
        }
    }

    #[test]
    fn ingest_and_other_figures() {
        let metrics = Metrics::new();
        let fresh = text(&metrics);
        for outcome in ["created", "updated", "unchanged", "rejected"] {
            assert_has(
                &fresh,
                &format!("callstore_ingest_calls_total{{outcome=\"{outcome}\"}} 0"),
            );
        }
        assert_has(&fresh, "callstore_feed_lag_seconds 0.0");
        assert_has(&fresh, r#"callstore_db_pool_connections{state="idle"} 0"#);
        assert_has(&fresh, r#"callstore_db_pool_connections{state="in_use"} 0"#);

        metrics.record_ingest(IngestOutcome::Created, 3);
        metrics.record_ingest(IngestOutcome::Created, 2);
        metrics.record_ingest(IngestOutcome::Rejected, 1);
        metrics.record_ingest(crate::db::calls::StoreOutcome::Unchanged.into(), 4);
        metrics.record_turns(40);
        metrics.record_turns(2);
        metrics.observe_group_commit(1);
        metrics.observe_group_commit(3);
        metrics.observe_group_commit(300);
        metrics.record_rescore(7);
        metrics.set_feed_lag(1.5);
        let first = metrics.stream_opened();
        let second = metrics.stream_opened();
        drop(first);
        let text_open = text(&metrics);
        assert_has(&text_open, "callstore_watch_streams 1");
        drop(second);

        let text = text(&metrics);
        assert_has(
            &text,
            r#"callstore_ingest_calls_total{outcome="created"} 5"#,
        );
        assert_has(
            &text,
            r#"callstore_ingest_calls_total{outcome="updated"} 0"#,
        );
        assert_has(
            &text,
            r#"callstore_ingest_calls_total{outcome="unchanged"} 4"#,
        );
        assert_has(
            &text,
            r#"callstore_ingest_calls_total{outcome="rejected"} 1"#,
        );
        assert_has(&text, "callstore_ingest_turns_total 42");
        assert_has(&text, "callstore_group_commit_calls_sum 304.0");
        assert_has(&text, "callstore_group_commit_calls_count 3");
        assert_has(&text, r#"callstore_group_commit_calls_bucket{le="1.0"} 1"#);
        assert_has(&text, r#"callstore_group_commit_calls_bucket{le="2.0"} 1"#);
        assert_has(&text, r#"callstore_group_commit_calls_bucket{le="4.0"} 2"#);
        assert_has(
            &text,
            r#"callstore_group_commit_calls_bucket{le="256.0"} 2"#,
        );
        assert_has(&text, r#"callstore_group_commit_calls_bucket{le="+Inf"} 3"#);
        assert_has(&text, "callstore_rescore_calls_total 7");
        assert_has(&text, "callstore_feed_lag_seconds 1.5");
        assert_has(&text, "callstore_watch_streams 0");
        assert_has(&text, "# TYPE callstore_rpc_duration_seconds histogram");
        assert_has(&text, "# UNIT callstore_feed_lag_seconds seconds");
        assert!(text.ends_with("# EOF\n"));

        for odd in [-3.0, f64::NAN, f64::INFINITY] {
            metrics.set_feed_lag(odd);
            assert_has(&self::text(&metrics), "callstore_feed_lag_seconds 0.0");
        }
    }

    #[tokio::test]
    async fn pool_gauges_come_from_the_pool() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(7)
            .connect_lazy_with(sqlx::postgres::PgConnectOptions::new());
        let metrics = Metrics::new();
        metrics.observe_pool(&pool);
        let text = text(&metrics);
        assert_has(&text, "callstore_db_pool_max_connections 7");
        assert_has(&text, r#"callstore_db_pool_connections{state="idle"} 0"#);
        assert_has(&text, r#"callstore_db_pool_connections{state="in_use"} 0"#);
    }

    #[test]
    fn the_global_metrics_are_one_instance() {
        assert!(Arc::ptr_eq(&global().inner, &global().clone().inner));
    }
}
