use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{FromTemplate, config_for, fresh_database, spawn_app, start};

#[tokio::test]
async fn overall_health_and_readiness_are_serving_once_the_database_is_migrated() {
    let app = spawn_app().await;

    assert_eq!(
        app.health("").await.expect("health check"),
        ServingStatus::Serving
    );
    assert_eq!(
        app.health(callstore::health::READINESS)
            .await
            .expect("readiness check"),
        ServingStatus::Serving
    );

    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn readiness_is_not_serving_while_the_database_is_unreachable() {
    // Nothing listens on port 1: the server starts, but the database never answers.
    let unreachable = "postgres://callstore@127.0.0.1:1/callstore"
        .parse()
        .expect("valid URL");
    let app = start(config_for(&unreachable, |config| {
        config.pool.acquire_timeout = Duration::from_millis(200);
    }))
    .await;

    assert_eq!(
        app.health("").await.expect("health check"),
        ServingStatus::Serving
    );
    assert_eq!(
        app.health(callstore::health::READINESS)
            .await
            .expect("readiness check"),
        ServingStatus::NotServing
    );

    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn readiness_waits_for_migrations_when_the_server_does_not_apply_them() {
    let database = fresh_database(FromTemplate::No).await;
    let app = start(config_for(&database, |config| {
        config.migrate_on_start = false
    }))
    .await;

    assert_eq!(
        app.health(callstore::health::READINESS)
            .await
            .expect("readiness check"),
        ServingStatus::NotServing
    );

    // An operator runs `callstore migrate`; readiness follows.
    let pool = sqlx::PgPool::connect_with(database)
        .await
        .expect("connects");
    callstore::db::migrate(&pool).await.expect("migrates");
    pool.close().await;
    app.wait_for_readiness(ServingStatus::Serving).await;

    app.shutdown().await.expect("clean shutdown");
}
