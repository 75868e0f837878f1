use tonic_health::pb::health_check_response::ServingStatus;

use callstore::config::Config;

use crate::helpers::{loopback_port_0, start};

/// With no DATABASE_URL and nothing answering at the local default, `serve` starts a private
/// PostgreSQL from the installed binaries, serves on it, and stops it on exit.
#[tokio::test]
async fn serve_starts_and_stops_a_private_postgres_when_no_server_answers() {
    let data_dir =
        std::env::temp_dir().join(format!("callstore-test-{}", uuid::Uuid::new_v4().simple()));
    let mut config = Config::new(loopback_port_0(), None);
    // Nothing listens on port 1.
    config.database.local_url = "postgres://127.0.0.1:1/callstore".to_owned();
    config.database.data_dir = data_dir.clone();
    config.readiness_interval = std::time::Duration::from_millis(100);

    let app = start(config).await;
    app.wait_for_readiness(ServingStatus::Serving).await;
    assert!(
        data_dir.join("pg").join("PG_VERSION").exists(),
        "the data directory is initialised"
    );
    let private_server = app.database.clone();
    assert_eq!(private_server.get_host(), "127.0.0.1");
    assert_ne!(private_server.get_port(), 1);

    app.shutdown().await.expect("clean shutdown");

    let after_exit = sqlx::ConnectOptions::connect(&private_server).await;
    assert!(after_exit.is_err(), "the private server is stopped on exit");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// With no DATABASE_URL and a server answering at the local default, callstore uses it and
/// creates its database there when missing.
#[tokio::test]
async fn the_local_default_creates_its_database_when_missing() {
    let existing = crate::helpers::fresh_database(crate::helpers::FromTemplate::No).await;
    let name = format!(
        "callstore_test_{}_{}",
        now_seconds(),
        uuid::Uuid::new_v4().simple()
    );
    let local = existing.clone().database(&name);
    let settings = callstore::db::server::DatabaseSettings {
        url: None,
        local_url: sqlx::ConnectOptions::to_url_lossy(&local).to_string(),
        data_dir: std::env::temp_dir().join("callstore-unused"),
    };

    let resolved = callstore::db::server::resolve(&settings)
        .await
        .expect("resolves");
    assert!(
        resolved.private_server.is_none(),
        "the local server is used"
    );
    assert_eq!(resolved.connect_options.get_database(), Some(name.as_str()));

    let mut connection = sqlx::ConnectOptions::connect(&resolved.connect_options)
        .await
        .expect("the database now exists");
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut connection)
        .await
        .expect("asks");
    assert_eq!(current, name);
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
