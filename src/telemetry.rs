//! Structured logging through `tracing`, and distributed traces through OpenTelemetry.
//!
//! [`init`] installs the log subscriber only. [`init_with_otlp`] (what `main` uses) does the same
//! and, when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, also
//! exports every span by OTLP/gRPC. Without either variable nothing of OpenTelemetry is
//! installed. [`rpc_span`] and [`db_span`] are the spans of one RPC and of one database
//! transaction; the RPC span continues the W3C trace context the caller sent.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector as _};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// The variable naming the OTLP endpoint of every signal.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The variable naming the OTLP endpoint of traces; it wins over [`OTLP_ENDPOINT_VAR`].
pub const OTLP_TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The `service.name` of the exported spans unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` name another.
pub const DEFAULT_SERVICE_NAME: &str = "callstore";
/// The instrumentation scope of callstore's spans.
const TRACER_NAME: &str = "callstore";
/// How long the guard waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the global subscriber. `filter` uses the `RUST_LOG` syntax (e.g. `info,sqlx=warn`).
/// The sink is a parameter so tests can silence logs or send them to the test output.
pub fn init<W>(format: LogFormat, filter: &str, sink: W) -> anyhow::Result<()>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    install(format, filter, sink, None)
}

/// Installs the global subscriber like [`init`] and, when [`OTLP_TRACES_ENDPOINT_VAR`] or
/// [`OTLP_ENDPOINT_VAR`] is set, a layer exporting every span by OTLP/gRPC.
///
/// The exporter honours the standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, default
/// [`DEFAULT_SERVICE_NAME`]; `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG`; `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION`;
/// `OTEL_BSP_*` for the batching). Spans are batched by the SDK's batch processor (a background
/// thread) and sent through a tonic channel that lives on the current tokio runtime, so this
/// must be called from within one when exporting is enabled. The global propagator becomes W3C
/// Trace Context either way.
///
/// Keep the returned guard alive until the end of `main` (inside the runtime): dropping it, or
/// [`TelemetryGuard::shutdown`], flushes the spans not yet sent.
pub fn init_with_otlp<W>(format: LogFormat, filter: &str, sink: W) -> anyhow::Result<TelemetryGuard>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let Some(endpoint) = otlp_endpoint() else {
        install(format, filter, sink, None)?;
        return Ok(TelemetryGuard { provider: None });
    };
    if tokio::runtime::Handle::try_current().is_err() {
        anyhow::bail!("exporting traces by OTLP needs a tokio runtime");
    }
    let resource = resource();
    let service = resource
        .get(&opentelemetry::Key::new("service.name"))
        .map(|name| name.to_string())
        .unwrap_or_default();
    let provider = otlp_provider(&endpoint, resource)?;
    let tracer = provider.tracer(TRACER_NAME);
    let guard = TelemetryGuard {
        provider: Some(provider.clone()),
    };
    // On error the guard shuts the provider down as it drops.
    install(format, filter, sink, Some(tracer))?;
    opentelemetry::global::set_tracer_provider(provider);
    tracing::info!(
        endpoint = %redact_userinfo(&endpoint),
        service = %service,
        "exporting trace spans by OTLP/gRPC"
    );
    Ok(guard)
}

/// Flushes and shuts down the span exporter of [`init_with_otlp`] when dropped. Holds nothing
/// when exporting is off.
#[must_use = "dropping the guard stops exporting spans"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans not yet exported (waiting up to 5 s) and stops the exporter. Later calls,
    /// and the drop, do nothing. Blocks the calling thread: call it from `main`, not from a task.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(error = %error, "could not flush the last trace spans");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The span of one RPC, for tonic's `Server::builder().trace_fn(telemetry::rpc_span)`.
///
/// Named `grpc`, with `rpc.system = "grpc"`, `rpc.service` and `rpc.method` from the path
/// (`/callstore.v1.QueryService/ListCalls`), `otel.kind = "server"`, and `grpc.status_code`,
/// `otel.status_code` and `tenant` left empty for later (`crate::metrics::MetricsLayer`
/// records the status; the handlers record the tenant). Its parent is the W3C trace context of
/// the request's `traceparent`/`tracestate` headers, when they hold a valid one; without the
/// OTLP layer installed that is a no-op.
pub fn rpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = split_rpc_path(path).unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        otel.kind = "server",
        grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    // Based on an empty context, not the current one: without a valid `traceparent`, an RPC
    // starts a trace of its own.
    let parent = TraceContextPropagator::new().extract_with_context(
        &opentelemetry::Context::new(),
        &HeaderExtractor(request.headers()),
    );
    // Fails only when no OpenTelemetry layer is installed or the span is filtered out; the span
    // is then a plain tracing span.
    let _ = span.set_parent(parent);
    span
}

/// The span of one database transaction: named `db.transaction`, with
/// `db.system = "postgresql"`, `db.operation = what` and `otel.kind = "client"`. Use it as
/// `future.instrument(db_span("store_batch"))`.
pub fn db_span(what: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db.transaction",
        db.system = "postgresql",
        db.operation = what,
        otel.kind = "client",
    )
}

/// The service and method of a gRPC path (`/package.Service/Method`), or `None` when the path
/// does not have that shape.
pub(crate) fn split_rpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// Reads W3C trace context from HTTP headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Installs the subscriber: the filter, the log lines, and the OpenTelemetry layer when there
/// is a tracer.
fn install<W>(
    format: LogFormat,
    filter: &str,
    sink: W,
    tracer: Option<SdkTracer>,
) -> anyhow::Result<()>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter)?;
    let logs = tracing_subscriber::fmt::layer().with_writer(sink);
    let logs = match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => logs.compact().boxed(),
    };
    let spans = tracer.map(otel_layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|error| anyhow::anyhow!("cannot install the log subscriber: {error}"))
}

/// Crates whose own spans and events are not exported: the transport (including the one the
/// exporter sends by, which would otherwise feed its own spans back when debugging) and
/// OpenTelemetry itself.
const UNEXPORTED_TARGETS: [&str; 9] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "tower_http",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// Whether spans and events of this target are exported.
fn is_exported(target: &str) -> bool {
    !UNEXPORTED_TARGETS.iter().any(|unexported| {
        target
            .strip_prefix(unexported)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The layer turning tracing spans into OpenTelemetry spans of `tracer`.
fn otel_layer<S>(tracer: SdkTracer) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            is_exported(metadata.target())
        }))
}

/// A tracer provider batching spans to the OTLP/gRPC `endpoint`. Needs a tokio runtime.
fn otlp_provider(endpoint: &str, resource: Resource) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .context("cannot build the OTLP span exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The OTLP endpoint of traces from the environment, when one is set.
fn otlp_endpoint() -> Option<String> {
    [OTLP_TRACES_ENDPOINT_VAR, OTLP_ENDPOINT_VAR]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|value| value.trim().to_owned())
        .find(|value| !value.is_empty())
}

/// The resource of the exported spans: the SDK's detectors (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, the SDK's own attributes), with callstore's service name unless
/// the environment names one.
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.trim().is_empty())
        || EnvResourceDetector::new()
            .detect()
            .get(&opentelemetry::Key::new("service.name"))
            .is_some();
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

/// An endpoint without the credentials its URL may carry (`http://user:secret@host` →
/// `http://host`), for the log.
fn redact_userinfo(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_userinfo, host)| host);
    if scheme.is_empty() {
        format!("{host}{tail}")
    } else {
        format!("{scheme}://{host}{tail}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use opentelemetry::trace::{SpanId, SpanKind, TraceId};
    use opentelemetry::{KeyValue, Value};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing::Instrument as _;

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";

    /// Keeps every exported span, for the assertions.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct CapturedSpans(Arc<Mutex<Vec<SpanData>>>);

    impl CapturedSpans {
        pub(crate) fn take(&self) -> Vec<SpanData> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    impl SpanExporter for CapturedSpans {
        fn export(
            &self,
            batch: Vec<SpanData>,
        ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(batch);
            std::future::ready(Ok(()))
        }
    }

    /// A subscriber exporting every span, synchronously, to the returned capture.
    pub(crate) fn capturing_subscriber() -> (impl tracing::Subscriber + Send + Sync, CapturedSpans)
    {
        let spans = CapturedSpans::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(otel_layer(provider.tracer("test")));
        (subscriber, spans)
    }

    pub(crate) fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|KeyValue { key: name, .. }| name.as_str() == key)
            .map(|KeyValue { value, .. }| value)
    }

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::builder().uri("/callstore.v1.QueryService/ListCalls");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn string(value: Option<&Value>) -> Option<String> {
        value.map(Value::to_string)
    }

    #[test]
    fn rpc_span_continues_the_callers_trace() {
        let (subscriber, spans) = capturing_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let span = rpc_span(&request(&[
                ("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-01")),
                ("tracestate", "congo=t61rcWkgMzE"),
            ]));
            span.in_scope(|| {});
        });
        let spans = spans.take();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "grpc");
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_hex(TRACE_ID).unwrap()
        );
        assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT_ID).unwrap());
        assert!(span.parent_span_is_remote);
        assert_ne!(span.span_context.span_id(), span.parent_span_id);
        assert_eq!(
            span.span_context.trace_state().header(),
            "congo=t61rcWkgMzE"
        );
        assert!(span.span_context.is_sampled());
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(
            string(attribute(span, "rpc.system")).as_deref(),
            Some("grpc")
        );
        assert_eq!(
            string(attribute(span, "rpc.service")).as_deref(),
            Some("callstore.v1.QueryService")
        );
        assert_eq!(
            string(attribute(span, "rpc.method")).as_deref(),
            Some("ListCalls")
        );
    }

    #[test]
    fn rpc_span_without_a_traceparent_starts_a_trace() {
        let (subscriber, spans) = capturing_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            // The RPC span is a root even inside another span.
            let outer = tracing::info_span!("outer");
            outer.in_scope(|| rpc_span(&request(&[])).in_scope(|| {}));
        });
        let spans = spans.take();
        let rpc = spans.iter().find(|span| span.name == "grpc").unwrap();
        assert_eq!(rpc.parent_span_id, SpanId::INVALID);
        assert!(!rpc.parent_span_is_remote);
        assert_ne!(rpc.span_context.trace_id(), TraceId::INVALID);
    }

    #[test]
    fn rpc_span_ignores_a_malformed_traceparent() {
        let (subscriber, spans) = capturing_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            // Version 00 with a trace id of zeros is invalid.
            let zeros = format!("00-{}-{PARENT_ID}-01", "0".repeat(32));
            rpc_span(&request(&[("traceparent", &zeros)])).in_scope(|| {});
            rpc_span(&request(&[("traceparent", "garbage")])).in_scope(|| {});
        });
        let spans = spans.take();
        assert_eq!(spans.len(), 2);
        for span in &spans {
            assert_eq!(span.parent_span_id, SpanId::INVALID);
            assert_ne!(span.span_context.trace_id(), TraceId::INVALID);
        }
    }

    #[test]
    fn rpc_span_works_without_the_opentelemetry_layer() {
        // No subscriber at all: a disabled span.
        let span = rpc_span(&request(&[(
            "traceparent",
            &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
        )]));
        span.in_scope(|| {});
        // A subscriber without the layer: the span exists, the parent is simply not set.
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = rpc_span(&request(&[(
                "traceparent",
                &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
            )]));
            assert!(!span.is_disabled());
            span.record("tenant", "acme");
            span.in_scope(|| {});
        });
    }

    #[test]
    fn rpc_span_records_tenant_and_status_later() {
        let (subscriber, spans) = capturing_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let span = rpc_span(&request(&[]));
            span.in_scope(|| {
                tracing::Span::current().record("tenant", "acme");
            });
            span.record("grpc.status_code", 5_i64);
        });
        let spans = spans.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            string(attribute(&spans[0], "tenant")).as_deref(),
            Some("acme")
        );
        assert_eq!(
            attribute(&spans[0], "grpc.status_code"),
            Some(&Value::I64(5))
        );
    }

    #[test]
    fn db_span_is_a_client_child_of_the_rpc() {
        let (subscriber, spans) = capturing_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let rpc = rpc_span(&request(&[(
                "traceparent",
                &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
            )]));
            rpc.in_scope(|| db_span("store_batch").in_scope(|| {}));
        });
        let spans = spans.take();
        assert_eq!(spans.len(), 2);
        let db = spans
            .iter()
            .find(|span| span.name == "db.transaction")
            .unwrap();
        let rpc = spans.iter().find(|span| span.name == "grpc").unwrap();
        assert_eq!(db.span_kind, SpanKind::Client);
        assert_eq!(
            db.span_context.trace_id(),
            TraceId::from_hex(TRACE_ID).unwrap()
        );
        assert_eq!(db.parent_span_id, rpc.span_context.span_id());
        assert_eq!(
            string(attribute(db, "db.system")).as_deref(),
            Some("postgresql")
        );
        assert_eq!(
            string(attribute(db, "db.operation")).as_deref(),
            Some("store_batch")
        );
    }

    #[tokio::test]
    async fn db_span_instruments_a_future() {
        let (subscriber, spans) = capturing_subscriber();
        let _default = tracing::subscriber::set_default(subscriber);
        let answer = async { 42 }.instrument(db_span("rescore")).await;
        assert_eq!(answer, 42);
        let spans = spans.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            string(attribute(&spans[0], "db.operation")).as_deref(),
            Some("rescore")
        );
    }

    #[test]
    fn rpc_paths_split_into_service_and_method() {
        assert_eq!(
            split_rpc_path("/callstore.v1.QueryService/ListCalls"),
            Some(("callstore.v1.QueryService", "ListCalls"))
        );
        assert_eq!(
            split_rpc_path("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        assert_eq!(split_rpc_path("/"), None);
        assert_eq!(split_rpc_path(""), None);
        assert_eq!(split_rpc_path("/NoMethod"), None);
        assert_eq!(split_rpc_path("/Service/"), None);
        assert_eq!(split_rpc_path("//Method"), None);
        assert_eq!(split_rpc_path("/a/b/c"), None);
        assert_eq!(split_rpc_path("a/b"), None);
    }

    #[test]
    fn span_of_an_unusual_path_keeps_the_whole_path() {
        let (subscriber, spans) = capturing_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder().uri("/metrics").body(()).unwrap();
            rpc_span(&request).in_scope(|| {});
        });
        let spans = spans.take();
        assert_eq!(
            string(attribute(&spans[0], "rpc.service")).as_deref(),
            Some("/metrics")
        );
        assert_eq!(
            string(attribute(&spans[0], "rpc.method")).as_deref(),
            Some("")
        );
    }

    #[test]
    fn transport_spans_are_not_exported() {
        let (subscriber, spans) = capturing_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!(target: "h2::proto", "poll").in_scope(|| {});
            tracing::info_span!(target: "hyper_util::client", "connect").in_scope(|| {});
            tracing::info_span!(target: "tonic", "call").in_scope(|| {});
            tracing::info_span!(target: "h2o", "kept").in_scope(|| {});
            tracing::info_span!(target: "callstore::api", "kept").in_scope(|| {});
        });
        let names: Vec<_> = spans.take().into_iter().map(|span| span.name).collect();
        assert_eq!(names, ["kept", "kept"]);
        assert!(is_exported("towering"));
        assert!(!is_exported("tower::buffer::worker"));
        assert!(!is_exported("opentelemetry_sdk"));
    }

    #[test]
    fn endpoints_lose_their_credentials_in_the_log() {
        assert_eq!(
            redact_userinfo("http://user:secret@collector:4317"),
            "http://collector:4317"
        );
        assert_eq!(
            redact_userinfo("https://collector:4317/v1?x=a@b"),
            "https://collector:4317/v1?x=a@b"
        );
        assert_eq!(redact_userinfo("collector:4317"), "collector:4317");
        assert_eq!(redact_userinfo("u@collector:4317"), "collector:4317");
        assert_eq!(redact_userinfo("http://[::1]:4317"), "http://[::1]:4317");
    }

    /// Answers every OTLP export with success and keeps the request bodies.
    #[derive(Debug, Clone, Default)]
    struct FakeCollector {
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl tonic::server::NamedService for FakeCollector {
        const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    }

    impl tower::Service<http::Request<tonic::body::Body>> for FakeCollector {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            _context: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            let requests = Arc::clone(&self.requests);
            Box::pin(async move {
                let mut body = request.into_body();
                let mut received = Vec::new();
                while let Some(Ok(frame)) = std::future::poll_fn(|context| {
                    http_body::Body::poll_frame(std::pin::Pin::new(&mut body), context)
                })
                .await
                {
                    if let Some(data) = frame.data_ref() {
                        received.extend_from_slice(data);
                    }
                }
                requests
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(received);
                // An empty ExportTraceServiceResponse, then status OK.
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let reply = GrpcReply(vec![
                    http_body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0])),
                    http_body::Frame::trailers(trailers),
                ]);
                let mut response = http::Response::new(tonic::body::Body::new(reply));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                Ok(response)
            })
        }
    }

    /// A body of given frames.
    struct GrpcReply(Vec<http_body::Frame<bytes::Bytes>>);

    impl http_body::Body for GrpcReply {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _context: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            let frame = (!self.0.is_empty()).then(|| self.0.remove(0));
            std::task::Poll::Ready(frame.map(Ok))
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_an_otlp_collector() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let collector = FakeCollector::default();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(collector.clone())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let resource = Resource::builder_empty()
            .with_service_name("callstore-test")
            .build();
        let provider = otlp_provider(&format!("http://{address}"), resource).unwrap();
        let subscriber = tracing_subscriber::registry().with(otel_layer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            rpc_span(&request(&[(
                "traceparent",
                &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
            )]))
            .in_scope(|| {});
        });
        let mut guard = TelemetryGuard {
            provider: Some(provider),
        };
        // Shutting down blocks while the batch is sent through the runtime.
        tokio::task::spawn_blocking(move || guard.shutdown())
            .await
            .unwrap();

        let requests = collector
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(requests.len(), 1);
        let export = &requests[0];
        let trace_id = TraceId::from_hex(TRACE_ID).unwrap().to_bytes();
        let parent_id = SpanId::from_hex(PARENT_ID).unwrap().to_bytes();
        assert!(contains(export, &trace_id));
        assert!(contains(export, &parent_id));
        assert!(contains(export, b"callstore-test"));
        assert!(contains(export, b"callstore.v1.QueryService"));
        server.abort();
    }

    #[tokio::test]
    async fn an_https_endpoint_needs_tls_support() {
        let error =
            otlp_provider("https://collector:4317", Resource::builder_empty().build()).unwrap_err();
        assert!(format!("{error:#}").contains("TLS"), "{error:#}");
    }

    #[test]
    fn a_guard_without_exporter_does_nothing() {
        let mut guard = TelemetryGuard { provider: None };
        assert!(!guard.is_exporting());
        guard.shutdown();
        guard.shutdown();
    }

    #[test]
    fn the_guard_flushes_batched_spans_on_shutdown() {
        let spans = CapturedSpans::default();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(otel_layer(provider.tracer("test")));
        let mut guard = TelemetryGuard {
            provider: Some(provider),
        };
        assert!(guard.is_exporting());
        tracing::subscriber::with_default(subscriber, || {
            db_span("flush").in_scope(|| {});
        });
        guard.shutdown();
        assert!(!guard.is_exporting());
        let spans = spans.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "db.transaction");
    }
}
