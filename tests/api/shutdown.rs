use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{DEADLINE, spawn_app_with};

/// On shutdown, readiness turns NOT_SERVING while in-flight calls keep running (an open health
/// watch keeps receiving), the listener stops accepting, and calls still running after the
/// grace period are cut so the process can exit.
#[tokio::test]
async fn shutdown_turns_readiness_off_drains_in_flight_calls_then_stops() {
    let grace = Duration::from_secs(1);
    let mut app = spawn_app_with(|config| config.shutdown_grace = grace).await;

    let mut client = HealthClient::new(app.channel().await);
    let mut readiness = client
        .watch(HealthCheckRequest {
            service: callstore::health::READINESS.to_owned(),
        })
        .await
        .expect("health watch starts")
        .into_inner();
    let first = readiness
        .message()
        .await
        .expect("streams")
        .expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    app.signal_shutdown();

    // The in-flight stream is not cut at the signal: it is told readiness went away.
    let next = tokio::time::timeout(DEADLINE, readiness.message())
        .await
        .expect("a status before the deadline")
        .expect("the stream still runs during the grace period")
        .expect("a status");
    assert_eq!(next.status(), ServingStatus::NotServing);

    // The server waits the grace period for the endless watch, then cuts it and exits.
    let started = std::time::Instant::now();
    let address = app.address;
    app.shutdown().await.expect("clean shutdown");
    let waited = started.elapsed();
    assert!(
        waited >= grace - Duration::from_millis(200),
        "cut before the grace period: {waited:?}"
    );
    assert!(
        waited < grace + Duration::from_secs(5),
        "waited too long: {waited:?}"
    );

    // Nothing accepts connections any more.
    let refused = tokio::net::TcpStream::connect(address).await;
    assert!(refused.is_err(), "the listener is closed");
}

/// The binary stops cleanly on SIGTERM, as Kubernetes stops it.
#[tokio::test]
async fn the_binary_shuts_down_gracefully_on_sigterm() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    let database = crate::helpers::fresh_database(crate::helpers::FromTemplate::Yes).await;
    let url = sqlx::ConnectOptions::to_url_lossy(&database).to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_callstore"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", url)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts callstore serve");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();

    let address = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("reads the log") {
            let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
            if entry["message"] == "serving gRPC" {
                return entry["address"].as_str().expect("an address").to_owned();
            }
        }
        panic!("the server exited before serving");
    })
    .await
    .expect("serves before the deadline");
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .expect("valid endpoint")
        .connect()
        .await
        .expect("connects");
    let mut health = HealthClient::new(channel);
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("answers health checks");

    let pid = i32::try_from(child.id().expect("running")).expect("a pid");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits before the deadline")
        .expect("waits for the child");
    assert!(status.success(), "exit status {status:?}");
    let mut stopped = false;
    while let Ok(Some(line)) = lines.next_line().await {
        stopped |= line.contains("\"stopped\"");
    }
    assert!(stopped, "the shutdown ran to the end");
}
