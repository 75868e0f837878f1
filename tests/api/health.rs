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
    let pool = sqlx::PgPool::connect_with(crate::helpers::as_service(&database))
        .await
        .expect("connects");
    callstore::db::migrate(&pool).await.expect("migrates");
    pool.close().await;
    app.wait_for_readiness(ServingStatus::Serving).await;

    app.shutdown().await.expect("clean shutdown");
}

/// Readiness follows the database: it turns NOT_SERVING when the database stops taking
/// connections, and SERVING again when it is back.
#[tokio::test]
async fn readiness_follows_the_database_going_away_and_coming_back() {
    let app = spawn_app().await;
    let database = app
        .database
        .get_database()
        .expect("a database name")
        .to_owned();
    let mut admin = sqlx::ConnectOptions::connect(&app.database.clone().database("postgres"))
        .await
        .expect("connects to the maintenance database");
    let quoted = callstore::db::server::quote_identifier(&database);

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {quoted} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .expect("closes the database to new connections");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&database)
        .execute(&mut admin)
        .await
        .expect("drops the server's connections");
    app.wait_for_readiness(ServingStatus::NotServing).await;
    assert_eq!(
        app.health("").await.expect("health check"),
        ServingStatus::Serving
    );

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {quoted} ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .expect("reopens the database");
    app.wait_for_readiness(ServingStatus::Serving).await;

    app.shutdown().await.expect("clean shutdown");
}
