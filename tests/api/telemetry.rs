//! The metrics endpoint, scraped over plain HTTP/1.1 as Prometheus does. (The RPC metrics of
//! the real server are covered once the server records into them.)

use callstore::metrics::{self, IngestOutcome, Metrics};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::helpers::DEADLINE;

/// One HTTP/1.1 response: status code, headers (names lower-cased), body.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` with `Connection: close`, read to the end.
async fn get(address: std::net::SocketAddr, path: &str) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("send the request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .expect("read the response");
        raw
    };
    let raw = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("the response in time");
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header section");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect::<Vec<_>>();
    // Small bodies come with a Content-Length; a chunked one would need decoding.
    assert_ne!(
        headers
            .iter()
            .find(|(name, _)| name == "transfer-encoding")
            .map(|(_, value)| value.as_str()),
        Some("chunked"),
        "unexpected chunked response"
    );
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn the_metrics_endpoint_serves_every_family() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let metrics = Metrics::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), None, async {
        let _ = stopped.await;
    }));

    metrics.record_ingest(IngestOutcome::Created, 2);
    metrics.record_ingest(IngestOutcome::Rejected, 1);
    metrics.record_turns(12);
    metrics.observe_group_commit(5);
    metrics.record_rescore(3);
    metrics.set_feed_lag(0.25);
    let _stream = metrics.stream_opened();

    let response = get(address, "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let body = &response.body;
    for family in [
        "callstore_rpc_duration_seconds histogram",
        "callstore_rpc_in_flight gauge",
        "callstore_ingest_calls counter",
        "callstore_ingest_turns counter",
        "callstore_group_commit_calls histogram",
        "callstore_db_pool_connections gauge",
        "callstore_db_pool_max_connections gauge",
        "callstore_watch_streams gauge",
        "callstore_feed_lag_seconds gauge",
        "callstore_rescore_calls counter",
    ] {
        assert!(
            body.lines().any(|line| line == format!("# TYPE {family}")),
            "no `{family}` family in:\n{body}"
        );
    }
    for sample in [
        r#"callstore_ingest_calls_total{outcome="created"} 2"#,
        r#"callstore_ingest_calls_total{outcome="updated"} 0"#,
        r#"callstore_ingest_calls_total{outcome="rejected"} 1"#,
        "callstore_ingest_turns_total 12",
        "callstore_group_commit_calls_count 1",
        r#"callstore_group_commit_calls_bucket{le="4.0"} 0"#,
        r#"callstore_group_commit_calls_bucket{le="8.0"} 1"#,
        "callstore_rescore_calls_total 3",
        "callstore_feed_lag_seconds 0.25",
        "callstore_watch_streams 1",
        // No pool: the pool figures stay at zero.
        "callstore_db_pool_max_connections 0",
    ] {
        assert!(
            body.lines().any(|line| line == sample),
            "no `{sample}` in:\n{body}"
        );
    }
    assert!(body.ends_with("# EOF\n"));

    let health = get(address, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body, "ok");

    assert_eq!(get(address, "/nothing").await.status, 404);

    stop.send(()).expect("the server is running");
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the server stops in time")
        .expect("the server task")
        .expect("the server ends cleanly");
}

#[tokio::test]
async fn a_scrape_reads_the_pool() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    // A pool that never connected: nothing open, the configured maximum.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(9)
        .connect_lazy_with(sqlx::postgres::PgConnectOptions::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(
        listener,
        Metrics::new(),
        Some(pool),
        async {
            let _ = stopped.await;
        },
    ));

    let body = get(address, "/metrics").await.body;
    for sample in [
        "callstore_db_pool_max_connections 9",
        r#"callstore_db_pool_connections{state="idle"} 0"#,
        r#"callstore_db_pool_connections{state="in_use"} 0"#,
    ] {
        assert!(
            body.lines().any(|line| line == sample),
            "no `{sample}` in:\n{body}"
        );
    }

    stop.send(()).expect("the server is running");
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the server stops in time")
        .expect("the server task")
        .expect("the server ends cleanly");
}

/// The layer and the RPC span in a real tonic server (health only): a unary RPC, an error, and
/// a server stream the client abandons.
#[tokio::test]
async fn a_tonic_server_records_rpcs() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let metrics = Metrics::new();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let (stop, stopped) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .trace_fn(callstore::telemetry::rpc_span)
        .layer(metrics.layer())
        .add_service(health_service);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("overall health");
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch
        .message()
        .await
        .expect("a first status")
        .expect("a first message");

    let labels = r#"service="grpc.health.v1.Health",method="Watch""#;
    let text = metrics.encode().expect("encode");
    assert!(
        text.lines()
            .any(|line| line == format!("callstore_rpc_in_flight{{{labels}}} 1")),
        "{text}"
    );
    drop(watch);

    // The server notices the stream's reset asynchronously.
    let watch_cancelled = format!("callstore_rpc_requests_total{{{labels},code=\"CANCELLED\"}} 1");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let text = loop {
        let text = metrics.encode().expect("encode");
        if text.lines().any(|line| line == watch_cancelled) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{watch_cancelled}` in:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    for sample in [
        r#"callstore_rpc_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"} 1"#,
        r#"callstore_rpc_requests_total{service="grpc.health.v1.Health",method="Check",code="NOT_FOUND"} 1"#,
        r#"callstore_rpc_duration_seconds_count{service="grpc.health.v1.Health",method="Check"} 2"#,
        r#"callstore_rpc_in_flight{service="grpc.health.v1.Health",method="Check"} 0"#,
        r#"callstore_rpc_in_flight{service="grpc.health.v1.Health",method="Watch"} 0"#,
    ] {
        assert!(
            text.lines().any(|line| line == sample),
            "no `{sample}` in:\n{text}"
        );
    }

    stop.send(()).expect("the server is running");
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the server stops in time")
        .expect("the server task")
        .expect("the server ends cleanly");
}

/// The real server, started as in production with a metrics listener: its RPCs, ingest and
/// streams show up in `/metrics`. Metrics are process-wide and the tests share the process,
/// so the checks are of presence and lower bounds.
#[tokio::test]
async fn the_server_reports_its_rpcs_ingest_and_streams() {
    use callstore::proto::watch_service_client::WatchServiceClient;
    use callstore::proto::{IngestCallsRequest, ListTasksRequest};

    let app = crate::helpers::spawn_app_with(|config| {
        config.metrics_listen_addr = Some(crate::helpers::loopback_port_0());
    })
    .await;
    let metrics = app.metrics.expect("a metrics listener");
    app.ingest_client()
        .await
        .ingest_calls(crate::helpers::as_tenant(
            "acme",
            IngestCallsRequest {
                calls: vec![crate::ingest::native_call("m-1", "13800000001")],
            },
        ))
        .await
        .expect("ingests");
    let refused =
        callstore::proto::query_service_client::QueryServiceClient::new(app.channel().await)
            .list_tasks(tonic::Request::new(ListTasksRequest::default()))
            .await
            .expect_err("no tenant named");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let _stream = WatchServiceClient::new(app.channel().await)
        .watch_calls(crate::helpers::as_tenant(
            "acme",
            crate::watch::support::from_now(),
        ))
        .await
        .expect("watches")
        .into_inner();

    let response = get(metrics, "/metrics").await;
    let body = response.body;
    for expected in [
        "callstore_rpc_requests_total{service=\"callstore.v1.IngestService\",method=\"IngestCalls\",code=\"OK\"}",
        "callstore_rpc_requests_total{service=\"callstore.v1.QueryService\",method=\"ListTasks\",code=\"INVALID_ARGUMENT\"}",
        "callstore_rpc_duration_seconds_count{service=\"callstore.v1.IngestService\",method=\"IngestCalls\"}",
        "callstore_ingest_calls_total{outcome=\"created\"}",
        "callstore_group_commit_calls_count",
        "callstore_db_pool_connections{state=\"in_use\"}",
    ] {
        assert!(body.contains(expected), "{expected} in:\n{body}");
    }
    let streams: f64 = body
        .lines()
        .find_map(|line| line.strip_prefix("callstore_watch_streams "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the open streams gauge");
    assert!(streams >= 1.0, "{streams}");
}
