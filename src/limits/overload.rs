//! [`OverloadLayer`]: bounded concurrency, load shedding and deadlines in front of the gRPC
//! services.
//!
//! tonic's own `Server::timeout` (and, even without it, tonic's handling of `grpc-timeout`)
//! sits outside every layer added with `Server::builder().layer()` and answers CANCELLED
//! ("Timeout expired"). This layer starts its deadline before tonic's, from the same
//! `grpc-timeout`, and also treats a deadline whose instant has passed as expired when tonic's
//! timer happens to wake the task first, so a unary client always sees DEADLINE_EXCEEDED.
//! `Server::timeout` should therefore stay unset: `request_timeout` replaces it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{
    LimitSettings, OVERLOAD_RETRY_AFTER, REASON_OVERLOADED, REASON_TOO_MANY_STREAMS,
    resource_exhausted,
};

/// The header in which a gRPC client sends its deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Path prefixes of the services that are never shed: health checks and reflection.
const EXEMPT_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Path prefixes of services whose every RPC is a long-lived stream.
const STREAMING_SERVICES: &[&str] = &["/callstore.v1.WatchService/"];

/// Paths of long-lived streaming RPCs in services that are otherwise unary.
const STREAMING_METHODS: &[&str] = &["/callstore.v1.IngestService/IngestCallStream"];

/// How the layer treats an RPC, decided by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    /// Health checks and reflection: never shed, never cut.
    Exempt,
    /// A long-lived stream (WatchCalls, IngestCallStream): takes a stream slot until its
    /// response body ends or is dropped; not cut by `request_timeout`.
    Stream,
    /// Everything else: takes a request slot and is cut at its deadline.
    Unary,
}

/// The kind of the RPC at `path` (`/package.Service/Method`).
pub fn classify(path: &str) -> RpcKind {
    if EXEMPT_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix))
    {
        RpcKind::Exempt
    } else if STREAMING_SERVICES
        .iter()
        .any(|prefix| path.starts_with(prefix))
        || STREAMING_METHODS.contains(&path)
    {
        RpcKind::Stream
    } else {
        RpcKind::Unary
    }
}

/// Parses a `grpc-timeout` value (1 to 8 digits and a unit among `H M S m u n`); `None` when it
/// is malformed, which gRPC servers treat as no deadline.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let unit_at = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at_checked(unit_at)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // At most 99_999_999: no product below can overflow a u64.
    let amount: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(amount.saturating_mul(3600))),
        "M" => Some(Duration::from_secs(amount.saturating_mul(60))),
        "S" => Some(Duration::from_secs(amount)),
        "m" => Some(Duration::from_millis(amount)),
        "u" => Some(Duration::from_micros(amount)),
        "n" => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

/// Counts of what the layer did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OverloadSnapshot {
    /// Unary requests holding a request slot now.
    pub requests_in_flight: usize,
    /// Streams holding a stream slot now.
    pub streams_open: usize,
    /// Unary requests shed so far because every request slot was taken.
    pub requests_shed: u64,
    /// Streams refused so far because every stream slot was taken.
    pub streams_shed: u64,
    /// Requests refused so far because their deadline had expired on arrival.
    pub deadlines_expired_on_arrival: u64,
    /// Unary requests cut so far at their deadline.
    pub requests_timed_out: u64,
}

#[derive(Debug)]
struct Shared {
    requests: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    max_requests: usize,
    max_streams: usize,
    request_timeout: Duration,
    requests_shed: AtomicU64,
    streams_shed: AtomicU64,
    deadlines_expired_on_arrival: AtomicU64,
    requests_timed_out: AtomicU64,
}

impl Shared {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Protects the services behind it from overload (see the module `limits`).
///
/// The slots are shared by every connection and every clone: one layer per server.
#[derive(Debug, Clone)]
pub struct OverloadLayer {
    shared: Arc<Shared>,
}

impl OverloadLayer {
    /// A layer with the bounds and the request timeout of `settings`. A bound of 0 sheds every
    /// request of its kind ([`LimitSettings::validate`] refuses it).
    pub fn new(settings: &LimitSettings) -> Self {
        let max_requests = settings.max_concurrent_requests.min(Semaphore::MAX_PERMITS);
        let max_streams = settings.max_concurrent_streams.min(Semaphore::MAX_PERMITS);
        Self {
            shared: Arc::new(Shared {
                requests: Arc::new(Semaphore::new(max_requests)),
                streams: Arc::new(Semaphore::new(max_streams)),
                max_requests,
                max_streams,
                request_timeout: settings.request_timeout,
                requests_shed: AtomicU64::new(0),
                streams_shed: AtomicU64::new(0),
                deadlines_expired_on_arrival: AtomicU64::new(0),
                requests_timed_out: AtomicU64::new(0),
            }),
        }
    }

    /// What the layer holds and has refused so far.
    pub fn snapshot(&self) -> OverloadSnapshot {
        let shared = &self.shared;
        OverloadSnapshot {
            requests_in_flight: shared
                .max_requests
                .saturating_sub(shared.requests.available_permits()),
            streams_open: shared
                .max_streams
                .saturating_sub(shared.streams.available_permits()),
            requests_shed: shared.requests_shed.load(Ordering::Relaxed),
            streams_shed: shared.streams_shed.load(Ordering::Relaxed),
            deadlines_expired_on_arrival: shared
                .deadlines_expired_on_arrival
                .load(Ordering::Relaxed),
            requests_timed_out: shared.requests_timed_out.load(Ordering::Relaxed),
        }
    }
}

impl<S> Layer<S> for OverloadLayer {
    type Service = OverloadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OverloadService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of [`OverloadLayer`].
#[derive(Debug, Clone)]
pub struct OverloadService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OverloadService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<OverloadBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let client_timeout = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(parse_grpc_timeout);
        if client_timeout == Some(Duration::ZERO) {
            Shared::count(&shared.deadlines_expired_on_arrival);
            tracing::debug!(rpc = %request.uri().path(), "deadline expired on arrival");
            return refusal(tonic::Status::deadline_exceeded(
                "the deadline expired before the request started",
            ));
        }

        match classify(request.uri().path()) {
            RpcKind::Exempt => {
                let response = self.inner.call(request);
                Box::pin(async move { Ok(response.await?.map(OverloadBody::new)) })
            }
            RpcKind::Stream => {
                let Ok(permit) = Arc::clone(&shared.streams).try_acquire_owned() else {
                    Shared::count(&shared.streams_shed);
                    tracing::debug!(rpc = %request.uri().path(), "stream refused: too many open");
                    return refusal(resource_exhausted(
                        "too many streams are open on this server; retry later",
                        REASON_TOO_MANY_STREAMS,
                        OVERLOAD_RETRY_AFTER,
                    ));
                };
                let response = self.inner.call(request);
                Box::pin(async move {
                    Ok(response
                        .await?
                        .map(|body| OverloadBody::holding(body, permit)))
                })
            }
            RpcKind::Unary => {
                let Ok(permit) = Arc::clone(&shared.requests).try_acquire_owned() else {
                    Shared::count(&shared.requests_shed);
                    tracing::debug!(rpc = %request.uri().path(), "request shed: too many in flight");
                    return refusal(resource_exhausted(
                        "the server is overloaded; retry later",
                        REASON_OVERLOADED,
                        OVERLOAD_RETRY_AFTER,
                    ));
                };
                let timeout = client_timeout.map_or(shared.request_timeout, |client| {
                    client.min(shared.request_timeout)
                });
                // Taken before tonic's own grpc-timeout timer starts, so it is never later.
                let deadline = Instant::now().checked_add(timeout);
                let shared = Arc::clone(shared);
                let response = self.inner.call(request);
                Box::pin(async move {
                    let outcome = match deadline {
                        Some(deadline) => until(response, deadline).await,
                        None => Some(response.await),
                    };
                    match outcome {
                        Some(response) => {
                            Ok(response?.map(|body| OverloadBody::holding(body, permit)))
                        }
                        None => {
                            // The handler's future is dropped by now; its slot goes with it.
                            drop(permit);
                            Shared::count(&shared.requests_timed_out);
                            tracing::debug!(
                                timeout_ms = timeout.as_millis() as u64,
                                "request cut at its deadline"
                            );
                            Ok(tonic::Status::deadline_exceeded(
                                "the request did not finish within its deadline",
                            )
                            .into_http())
                        }
                    }
                })
            }
        }
    }
}

/// A response refusing the request, ready at once.
fn refusal<B, E>(status: tonic::Status) -> BoxFuture<Result<Response<OverloadBody<B>>, E>>
where
    B: Send + 'static,
    E: Send + 'static,
{
    Box::pin(std::future::ready(Ok(status.into_http())))
}

/// Runs `future` until `deadline`: its output, or `None` once the deadline has passed, in
/// which case `future` has been dropped when this returns.
async fn until<F: Future>(future: F, deadline: Instant) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
    std::future::poll_fn(|context| {
        if let Poll::Ready(output) = future.as_mut().poll(context) {
            return Poll::Ready(Some(output));
        }
        // tonic's timer for the same grpc-timeout may wake this task before this one has
        // fired: a passed deadline counts as fired.
        if sleep.as_mut().poll(context).is_ready() || Instant::now() >= deadline {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// A response body that holds its RPC's slot until it ends or is dropped.
#[derive(Debug)]
pub struct OverloadBody<B> {
    /// `None` for the empty body of a refusal.
    inner: Option<B>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<B> OverloadBody<B> {
    /// `body`, holding no slot.
    pub fn new(body: B) -> Self {
        Self {
            inner: Some(body),
            permit: None,
        }
    }

    fn holding(body: B, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner: Some(body),
            permit: Some(permit),
        }
    }
}

/// The empty body (of a refusal, a trailers-only gRPC response).
impl<B> Default for OverloadBody<B> {
    fn default() -> Self {
        Self {
            inner: None,
            permit: None,
        }
    }
}

impl<B> Body for OverloadBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(context);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // The RPC is over: free its slot now rather than when hyper drops the body.
            this.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use bytes::Bytes;
    use tokio::sync::mpsc;
    use tonic::Code;
    use tonic_types::StatusExt as _;
    use tower::ServiceExt as _;

    use super::*;

    const GET_CALL: &str = "/callstore.v1.QueryService/GetCall";
    const WATCH_CALLS: &str = "/callstore.v1.WatchService/WatchCalls";
    const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
    const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

    /// A body that yields what its sender sends and ends when the sender is dropped.
    struct TestBody(mpsc::UnboundedReceiver<Bytes>);

    impl Body for TestBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(context)
                .map(|data| data.map(|data| Ok(Frame::data(data))))
        }
    }

    fn body() -> (mpsc::UnboundedSender<Bytes>, TestBody) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (sender, TestBody(receiver))
    }

    async fn next_frame<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|context| Pin::new(&mut *body).poll_frame(context)).await
    }

    fn request(path: &str) -> Request<()> {
        Request::builder()
            .uri(format!("http://callstore{path}"))
            .body(())
            .expect("valid request")
    }

    fn request_with_timeout(path: &str, timeout: &str) -> Request<()> {
        let mut request = request(path);
        request.headers_mut().insert(
            GRPC_TIMEOUT,
            HeaderValue::from_str(timeout).expect("valid header"),
        );
        request
    }

    fn settings(requests: usize, streams: usize) -> LimitSettings {
        LimitSettings {
            max_concurrent_requests: requests,
            max_concurrent_streams: streams,
            ..LimitSettings::default()
        }
    }

    /// The status a response carries in its headers (trailers-only) or none (a normal one).
    fn status_of<B>(response: &Response<B>) -> Option<tonic::Status> {
        tonic::Status::from_header_map(response.headers())
    }

    fn code_of<B>(response: &Response<B>) -> Code {
        status_of(response).map_or(Code::Ok, |status| status.code())
    }

    /// An inner service whose non-exempt responses each wait for a permit of `gate`; it counts
    /// its calls and answers with a body kept open by the sender it hands to `bodies`.
    #[derive(Clone)]
    struct Gated {
        calls: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
        bodies: mpsc::UnboundedSender<mpsc::UnboundedSender<Bytes>>,
    }

    impl Gated {
        fn new() -> (Self, mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>) {
            let (bodies, senders) = mpsc::unbounded_channel();
            let gated = Self {
                calls: Arc::new(AtomicUsize::new(0)),
                gate: Arc::new(Semaphore::new(0)),
                bodies,
            };
            (gated, senders)
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Service<Request<()>> for Gated {
        type Response = Response<TestBody>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Response<TestBody>, Infallible>>;

        fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&self.gate);
            let bodies = self.bodies.clone();
            let exempt = classify(request.uri().path()) == RpcKind::Exempt;
            Box::pin(async move {
                if !exempt && let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                let (sender, body) = body();
                let _ = bodies.send(sender);
                Ok(Response::new(body))
            })
        }
    }

    fn assert_is_overload_refusal<B>(response: &Response<B>, reason: &str) {
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(
            response.headers().get(http::header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/grpc"))
        );
        assert_eq!(
            response.headers().get("grpc-status"),
            Some(&HeaderValue::from_static("8"))
        );
        assert!(response.headers().contains_key("grpc-status-details-bin"));
        let status = status_of(response).expect("a trailers-only status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status
            .get_details_retry_info()
            .expect("status carries a RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(100)));
        let info = status
            .get_details_error_info()
            .expect("status carries an ErrorInfo");
        assert_eq!(info.reason, reason);
    }

    #[test]
    fn paths_are_classified() {
        assert_eq!(classify(GET_CALL), RpcKind::Unary);
        assert_eq!(
            classify("/callstore.v1.IngestService/IngestCalls"),
            RpcKind::Unary
        );
        assert_eq!(classify(WATCH_CALLS), RpcKind::Stream);
        assert_eq!(
            classify("/callstore.v1.IngestService/IngestCallStream"),
            RpcKind::Stream
        );
        assert_eq!(classify(HEALTH_CHECK), RpcKind::Exempt);
        assert_eq!(classify("/grpc.health.v1.Health/Watch"), RpcKind::Exempt);
        assert_eq!(classify(REFLECTION), RpcKind::Exempt);
        assert_eq!(
            classify("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            RpcKind::Exempt
        );
        assert_eq!(classify("/unknown.Service/Method"), RpcKind::Unary);
    }

    #[test]
    fn grpc_timeouts_are_parsed() {
        let parse = |text: &str| parse_grpc_timeout(&HeaderValue::from_str(text).expect("valid"));
        assert_eq!(parse("3H"), Some(Duration::from_secs(10_800)));
        assert_eq!(parse("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse("42S"), Some(Duration::from_secs(42)));
        assert_eq!(parse("13m"), Some(Duration::from_millis(13)));
        assert_eq!(parse("2u"), Some(Duration::from_micros(2)));
        assert_eq!(parse("82n"), Some(Duration::from_nanos(82)));
        assert_eq!(parse("0m"), Some(Duration::ZERO));
        assert_eq!(
            parse("99999999H"),
            Some(Duration::from_secs(359_999_996_400))
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("82f"), None);
        assert_eq!(parse("123456789H"), None);
        assert_eq!(parse("oneH"), None);
        assert_eq!(parse("-1S"), None);
        assert_eq!(parse("+1S"), None);
    }

    #[tokio::test]
    async fn the_request_over_the_limit_is_shed_but_health_and_reflection_are_not() {
        let layer = OverloadLayer::new(&settings(2, 10));
        let (gated, mut bodies) = Gated::new();
        let mut service = layer.layer(gated.clone());

        // Calling takes the slot at once, before the future is polled.
        let first = service.call(request(GET_CALL));
        let second = service.call(request(GET_CALL));
        assert_eq!(layer.snapshot().requests_in_flight, 2);

        let shed = service.call(request(GET_CALL)).await.expect("infallible");
        assert_is_overload_refusal(&shed, "OVERLOADED");
        let message = shed
            .headers()
            .get("grpc-message")
            .expect("a message")
            .to_str()
            .expect("ASCII");
        assert_eq!(message, "the%20server%20is%20overloaded;%20retry%20later");
        assert_eq!(gated.calls(), 2);

        // Health checks and reflection pass however full the server is.
        let health = service
            .call(request(HEALTH_CHECK))
            .await
            .expect("infallible");
        assert_eq!(code_of(&health), Code::Ok);
        let reflection = service.call(request(REFLECTION)).await.expect("infallible");
        assert_eq!(code_of(&reflection), Code::Ok);
        assert_eq!(gated.calls(), 4);

        // The first two finish; their slots are free once their bodies are done.
        gated.gate.add_permits(2);
        let first = first.await.expect("infallible");
        let second = second.await.expect("infallible");
        assert_eq!(code_of(&first), Code::Ok);
        assert_eq!(layer.snapshot().requests_in_flight, 2);
        drop((first, second));
        assert_eq!(layer.snapshot().requests_in_flight, 0);
        while bodies.try_recv().is_ok() {}
        let _admitted = service.call(request(GET_CALL));
        assert_eq!(gated.calls(), 5);

        let snapshot = layer.snapshot();
        assert_eq!(snapshot.requests_shed, 1);
        assert_eq!(snapshot.streams_shed, 0);
    }

    #[tokio::test]
    async fn streams_take_stream_slots_released_when_the_body_is_dropped() {
        let layer = OverloadLayer::new(&settings(1, 1));
        let (gated, mut bodies) = Gated::new();
        let mut service = layer.layer(gated.clone());

        gated.gate.add_permits(1);
        let stream = service
            .call(request(WATCH_CALLS))
            .await
            .expect("infallible");
        let sender = bodies.try_recv().expect("the body's sender");
        assert_eq!(code_of(&stream), Code::Ok);
        assert_eq!(layer.snapshot().streams_open, 1);
        assert_eq!(layer.snapshot().requests_in_flight, 0);

        // The stream slot is taken: a second stream is refused without calling the service.
        let refused = service
            .call(request(WATCH_CALLS))
            .await
            .expect("infallible");
        assert_is_overload_refusal(&refused, "TOO_MANY_STREAMS");
        assert_eq!(gated.calls(), 1);

        // The request slot is not taken by the stream.
        let unary = service.call(request(GET_CALL));
        assert_eq!(layer.snapshot().requests_in_flight, 1);
        drop(unary);
        assert_eq!(layer.snapshot().requests_in_flight, 0);

        // The client goes away: hyper drops the body, the slot is free, a stream is let in.
        drop(stream);
        drop(sender);
        assert_eq!(layer.snapshot().streams_open, 0);
        let _again = service.call(request(WATCH_CALLS));
        assert_eq!(layer.snapshot().streams_open, 1);
        // The first stream, the unary request and this stream.
        assert_eq!(gated.calls(), 3);
        assert_eq!(layer.snapshot().streams_shed, 1);
    }

    #[tokio::test]
    async fn a_stream_slot_is_released_when_the_body_ends() {
        let layer = OverloadLayer::new(&settings(1, 1));
        let (gated, mut bodies) = Gated::new();
        let mut service = layer.layer(gated.clone());

        gated.gate.add_permits(1);
        let mut stream = service
            .call(request(WATCH_CALLS))
            .await
            .expect("infallible");
        let sender = bodies.try_recv().expect("the body's sender");
        let _ = sender.send(Bytes::from_static(b"event"));
        drop(sender);
        let body = stream.body_mut();
        let frame = next_frame(body)
            .await
            .expect("a frame")
            .expect("infallible");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"event")));
        assert_eq!(layer.snapshot().streams_open, 1);
        assert!(next_frame(body).await.is_none());
        // Ended but not yet dropped: the slot is already free.
        assert_eq!(layer.snapshot().streams_open, 0);
    }

    #[tokio::test]
    async fn an_expired_deadline_is_refused_without_calling_the_service() {
        let layer = OverloadLayer::new(&settings(1, 1));
        let (gated, _bodies) = Gated::new();
        let mut service = layer.layer(gated.clone());

        for (path, timeout) in [
            (GET_CALL, "0m"),
            (GET_CALL, "0n"),
            (WATCH_CALLS, "0S"),
            (HEALTH_CHECK, "0u"),
        ] {
            let response = service
                .call(request_with_timeout(path, timeout))
                .await
                .expect("infallible");
            assert_eq!(
                code_of(&response),
                Code::DeadlineExceeded,
                "{path} {timeout}"
            );
            assert_eq!(
                response.headers().get("grpc-status"),
                Some(&HeaderValue::from_static("4"))
            );
        }
        assert_eq!(gated.calls(), 0);
        let snapshot = layer.snapshot();
        assert_eq!(snapshot.deadlines_expired_on_arrival, 4);
        assert_eq!(snapshot.requests_in_flight, 0);
        assert_eq!(snapshot.streams_open, 0);

        // A malformed deadline is no deadline: the request is served.
        let _served = service.call(request_with_timeout(GET_CALL, "soon"));
        assert_eq!(gated.calls(), 1);
    }

    /// Sets its flag when dropped.
    struct DropGuard(Arc<AtomicBool>);

    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// An inner service whose response never comes, holding a guard.
    fn never_answering(
        dropped: &Arc<AtomicBool>,
    ) -> impl Service<
        Request<()>,
        Response = Response<TestBody>,
        Error = Infallible,
        Future = BoxFuture<Result<Response<TestBody>, Infallible>>,
    > + Clone {
        let dropped = Arc::clone(dropped);
        tower::service_fn(move |_request: Request<()>| {
            let guard = DropGuard(Arc::clone(&dropped));
            let future: BoxFuture<Result<Response<TestBody>, Infallible>> = Box::pin(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(Response::new(body().1))
            });
            future
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_unary_request_is_cut_at_the_client_deadline_and_its_future_dropped() {
        let layer = OverloadLayer::new(&settings(1, 1));
        let dropped = Arc::new(AtomicBool::new(false));
        let service = layer.layer(never_answering(&dropped));

        let started = Instant::now();
        let response = service
            .oneshot(request_with_timeout(GET_CALL, "50m"))
            .await
            .expect("infallible");
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(code_of(&response), Code::DeadlineExceeded);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler future was dropped"
        );
        let snapshot = layer.snapshot();
        assert_eq!(snapshot.requests_in_flight, 0);
        assert_eq!(snapshot.requests_timed_out, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_caps_the_client_deadline() {
        let layer = OverloadLayer::new(&LimitSettings {
            request_timeout: Duration::from_millis(20),
            ..LimitSettings::default()
        });
        let dropped = Arc::new(AtomicBool::new(false));

        // The client allows 1 s; the server 20 ms.
        let started = Instant::now();
        let response = layer
            .layer(never_answering(&dropped))
            .oneshot(request_with_timeout(GET_CALL, "1S"))
            .await
            .expect("infallible");
        assert_eq!(started.elapsed(), Duration::from_millis(20));
        assert_eq!(code_of(&response), Code::DeadlineExceeded);
        assert!(dropped.load(Ordering::SeqCst));

        // No client deadline: the server's.
        dropped.store(false, Ordering::SeqCst);
        let started = Instant::now();
        let response = layer
            .layer(never_answering(&dropped))
            .oneshot(request(GET_CALL))
            .await
            .expect("infallible");
        assert_eq!(started.elapsed(), Duration::from_millis(20));
        assert_eq!(code_of(&response), Code::DeadlineExceeded);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_are_not_cut_by_the_request_timeout() {
        let layer = OverloadLayer::new(&LimitSettings {
            request_timeout: Duration::from_millis(10),
            ..LimitSettings::default()
        });
        let slow_to_open = tower::service_fn(|_request: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Infallible>(Response::new(body().1))
        });
        let response = layer
            .layer(slow_to_open)
            .oneshot(request(WATCH_CALLS))
            .await
            .expect("infallible");
        assert_eq!(code_of(&response), Code::Ok);
        assert_eq!(layer.snapshot().requests_timed_out, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_finishing_in_time_is_answered() {
        let layer = OverloadLayer::new(&settings(1, 1));
        let quick = tower::service_fn(|_request: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok::<_, Infallible>(Response::new(body().1))
        });
        let response = layer
            .layer(quick)
            .oneshot(request_with_timeout(GET_CALL, "50m"))
            .await
            .expect("infallible");
        assert_eq!(code_of(&response), Code::Ok);
        // The body still holds the slot.
        assert_eq!(layer.snapshot().requests_in_flight, 1);
        drop(response);
        assert_eq!(layer.snapshot().requests_in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_passed_counts_even_before_its_timer_fires() {
        // As when tonic's grpc-timeout timer wakes the task before this layer's has fired.
        let deadline = Instant::now() + Duration::from_millis(5);
        tokio::time::advance(Duration::from_millis(5)).await;
        let outcome = until(std::future::pending::<()>(), deadline).await;
        assert_eq!(outcome, None);
    }

    /// Calls `service` the way tonic's server does around its layers: tonic's `GrpcTimeout`
    /// starts its own timer for `grpc-timeout` after calling the service, polls the service's
    /// future first, and answers CANCELLED when its timer fires.
    async fn call_inside_tonic_timeout<S>(service: &mut S, request: Request<()>) -> Code
    where
        S: Service<Request<()>, Response = Response<OverloadBody<TestBody>>, Error = Infallible>,
    {
        let timeout = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(parse_grpc_timeout);
        let mut response = std::pin::pin!(service.call(request));
        let mut sleep = timeout.map(|timeout| Box::pin(tokio::time::sleep(timeout)));
        std::future::poll_fn(|context| {
            if let Poll::Ready(Ok(response)) = response.as_mut().poll(context) {
                return Poll::Ready(code_of(&response));
            }
            if let Some(sleep) = sleep.as_mut()
                && sleep.as_mut().poll(context).is_ready()
            {
                return Poll::Ready(Code::Cancelled);
            }
            Poll::Pending
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_layer_answers_before_tonics_own_timer_for_the_same_deadline() {
        let layer = OverloadLayer::new(&settings(64, 1));
        let dropped = Arc::new(AtomicBool::new(false));
        let mut service = layer.layer(never_answering(&dropped));
        for millis in 1..=20 {
            dropped.store(false, Ordering::SeqCst);
            let request = request_with_timeout(GET_CALL, &format!("{millis}m"));
            let code = call_inside_tonic_timeout(&mut service, request).await;
            assert_eq!(code, Code::DeadlineExceeded, "{millis} ms");
            assert!(dropped.load(Ordering::SeqCst));
        }
        assert_eq!(layer.snapshot().requests_timed_out, 20);
    }

    /// Through a real HTTP/2 connection and tonic's client: what a client sees.
    mod wire {
        use std::net::SocketAddr;

        use tokio_stream::wrappers::TcpListenerStream;
        use tonic::server::NamedService;
        use tonic::transport::{Channel, Server};
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

        use super::*;

        /// Stands in for QueryService: every call waits forever, holding a guard.
        #[derive(Clone)]
        struct Stuck {
            calls: Arc<AtomicUsize>,
            dropped: Arc<AtomicUsize>,
        }

        struct CountDrop(Arc<AtomicUsize>);

        impl Drop for CountDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }

        impl NamedService for Stuck {
            const NAME: &'static str = "callstore.v1.QueryService";
        }

        impl Service<Request<tonic::body::Body>> for Stuck {
            type Response = Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = BoxFuture<Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _request: Request<tonic::body::Body>) -> Self::Future {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let guard = CountDrop(Arc::clone(&self.dropped));
                Box::pin(async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(tonic::Status::internal("unreachable").into_http())
                })
            }
        }

        async fn serve(settings: &LimitSettings, stuck: Stuck) -> SocketAddr {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let router = Server::builder()
                .layer(OverloadLayer::new(settings))
                .add_service(health)
                .add_service(stuck);
            tokio::spawn(async move {
                let _reporter = reporter;
                router
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await
            });
            address
        }

        async fn channel(address: SocketAddr) -> Channel {
            Channel::from_shared(format!("http://{address}"))
                .expect("valid URI")
                .connect()
                .await
                .expect("connect")
        }

        async fn get_call(
            channel: Channel,
            timeout: Option<Duration>,
        ) -> Result<tonic::Response<()>, tonic::Status> {
            let mut client = tonic::client::Grpc::new(channel);
            client
                .ready()
                .await
                .map_err(|error| tonic::Status::unknown(error.to_string()))?;
            let mut request = tonic::Request::new(());
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
            client
                .unary(
                    request,
                    http::uri::PathAndQuery::from_static(GET_CALL),
                    tonic_prost::ProstCodec::<(), ()>::default(),
                )
                .await
        }

        fn stuck() -> Stuck {
            Stuck {
                calls: Arc::new(AtomicUsize::new(0)),
                dropped: Arc::new(AtomicUsize::new(0)),
            }
        }

        #[tokio::test]
        async fn a_client_sees_resource_exhausted_with_retry_info_and_health_still_serves() {
            let stuck = stuck();
            let address = serve(&settings(1, 1), stuck.clone()).await;
            let channel = channel(address).await;

            let first = tokio::spawn(get_call(channel.clone(), None));
            while stuck.calls.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let status = get_call(channel.clone(), None).await.expect_err("shed");
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert_eq!(status.message(), "the server is overloaded; retry later");
            let retry = status
                .get_details_retry_info()
                .expect("status carries a RetryInfo");
            assert_eq!(retry.retry_delay, Some(Duration::from_millis(100)));
            assert_eq!(stuck.calls.load(Ordering::SeqCst), 1);

            let health = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health is never shed");
            assert_eq!(health.into_inner().status, ServingStatus::Serving as i32);
            first.abort();
        }

        #[tokio::test]
        async fn a_client_sees_deadline_exceeded_at_the_request_timeout() {
            let stuck = stuck();
            let settings = LimitSettings {
                request_timeout: Duration::from_millis(50),
                ..LimitSettings::default()
            };
            let address = serve(&settings, stuck.clone()).await;
            let channel = channel(address).await;

            // The client's deadline (sent as grpc-timeout, which tonic's server also times) is
            // longer: the layer cuts the request first, drops the handler's future, and the
            // client sees DEADLINE_EXCEEDED rather than tonic's CANCELLED.
            for attempt in 1..=3 {
                let started = std::time::Instant::now();
                let status = get_call(channel.clone(), Some(Duration::from_secs(5)))
                    .await
                    .expect_err("cut");
                assert_eq!(status.code(), Code::DeadlineExceeded, "attempt {attempt}");
                assert!(started.elapsed() >= Duration::from_millis(50));
                assert!(started.elapsed() < Duration::from_secs(5));
                assert_eq!(stuck.calls.load(Ordering::SeqCst), attempt);
                assert_eq!(stuck.dropped.load(Ordering::SeqCst), attempt);
            }
        }
    }
}
