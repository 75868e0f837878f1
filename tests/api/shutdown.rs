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

    // The server exits once the grace period has passed, cutting the endless watch.
    let started = std::time::Instant::now();
    let address = app.address;
    app.shutdown().await.expect("clean shutdown");
    assert!(started.elapsed() < grace + Duration::from_secs(5));

    // Nothing accepts connections any more.
    let refused = tokio::net::TcpStream::connect(address).await;
    assert!(refused.is_err(), "the listener is closed");
}
