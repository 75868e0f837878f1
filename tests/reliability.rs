//! Reliability scenarios, long-running: not part of `cargo test`. Run them with
//!
//! ```sh
//! cargo test --test reliability -- --ignored --test-threads 1 --nocapture
//! ```
//!
//! Each prints what it measured; RELIABILITY.md records the results.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::Channel;

use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    CallRecord, IngestCallsRequest, IngestOutcome, ListCallsRequest, Speaker, Turn,
};

use helpers::{FromTemplate, as_tenant, fresh_database, spawn_app_with};

const TENANT: &str = "acme";

fn call(index: usize) -> CallRecord {
    CallRecord {
        source_call_id: format!("call-{index:06}"),
        source_task_id: format!("task-{}", index % 8),
        callee: format!("138{index:08}"),
        dial_time: Some(prost_types::Timestamp {
            seconds: 1_744_597_153 + i64::try_from(index).unwrap_or(0),
            nanos: 0,
        }),
        talk_duration_ms: Some(30_000),
        turns: vec![
            Turn {
                sequence: 1,
                speaker: Speaker::Robot as i32,
                text: "您好，请问是王先生吗".to_owned(),
                start_offset_ms: Some(0),
                end_offset_ms: Some(2_000),
                ..Turn::default()
            },
            Turn {
                sequence: 2,
                speaker: Speaker::Customer as i32,
                text: "是的，你说".to_owned(),
                start_offset_ms: Some(2_500),
                end_offset_ms: Some(3_500),
                ..Turn::default()
            },
        ],
        ..CallRecord::default()
    }
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("counts")
}

/// Delivers `indexes` in batches of `batch`; every item must be stored.
async fn deliver(channel: Channel, indexes: Vec<usize>, batch: usize) {
    let mut client = IngestServiceClient::new(channel);
    for chunk in indexes.chunks(batch) {
        let response = client
            .ingest_calls(as_tenant(
                TENANT,
                IngestCallsRequest {
                    calls: chunk.iter().map(|&index| call(index)).collect(),
                },
            ))
            .await
            .expect("the batch is stored")
            .into_inner();
        for result in response.results {
            assert_ne!(result.outcome(), IngestOutcome::Rejected, "{result:?}");
        }
    }
}

#[tokio::test]
#[ignore = "long: the reliability suite"]
async fn triple_delivery_of_10000_calls_stores_each_once() {
    const CALLS: usize = 10_000;
    let app = spawn_app_with(|_| {}).await;
    let started = Instant::now();
    // Once in order, then twice at the same time in other orders.
    deliver(app.channel().await, (0..CALLS).collect(), 500).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut shuffled: Vec<usize> = (0..CALLS).collect();
    for index in (1..shuffled.len()).rev() {
        shuffled.swap(index, rng.random_range(0..=index));
    }
    let reversed: Vec<usize> = (0..CALLS).rev().collect();
    tokio::join!(
        deliver(app.channel().await, shuffled, 250),
        deliver(app.channel().await, reversed, 100),
    );
    let pool = app.pool().await;
    let calls = count(&pool, "SELECT count(*) FROM calls").await;
    let events = count(&pool, "SELECT count(*) FROM feed_events").await;
    let created = count(&pool, "SELECT count(*) FROM feed_events WHERE kind = 1").await;
    let versions = count(&pool, "SELECT count(*) FROM calls WHERE version > 1").await;
    let quality = count(&pool, "SELECT count(*) FROM quality_results").await;
    println!(
        "triple delivery: {calls} calls, {events} feed events ({created} created), {versions} calls above version 1, {quality} quality results, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(calls, CALLS as i64);
    assert_eq!(events, CALLS as i64, "one event a call: no duplicate");
    assert_eq!(created, CALLS as i64);
    assert_eq!(versions, 0, "a re-delivery changes nothing");
    assert_eq!(quality, CALLS as i64, "one quality result a call");
    app.shutdown().await.expect("clean shutdown");
}

/// `callstore serve` as a child process on `address`.
fn serve(address: SocketAddr, database_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_callstore"))
        .args(["--log", "warn", "serve", "--insecure-no-auth", "--listen"])
        .arg(address.to_string())
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starts callstore serve")
}

async fn connect(address: SocketAddr) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let endpoint = Channel::from_shared(format!("http://{address}"))
            .expect("an endpoint")
            .connect_timeout(Duration::from_millis(500));
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(Instant::now() < deadline, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[ignore = "long: the reliability suite"]
async fn acknowledged_calls_survive_kill_9_of_the_server() {
    const CALLS: usize = 5_000;
    const BATCH: usize = 50;
    const KILLS: usize = 5;
    let database = fresh_database(FromTemplate::Yes).await;
    let url = sqlx::ConnectOptions::to_url_lossy(&database).to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);

    // The client's log: every call acknowledged, and what is still to send.
    let mut acknowledged: BTreeSet<usize> = BTreeSet::new();
    let mut pending: Vec<usize> = (0..CALLS).collect();
    let mut kills = 0;
    let mut failed_requests = 0;
    let mut server = serve(address, &url);
    while !pending.is_empty() {
        let channel = connect(address).await;
        let mut client = IngestServiceClient::new(channel);
        // Kill at a random moment while requests are in flight.
        let kill_after = Duration::from_millis(rng.random_range(50..400));
        let started = Instant::now();
        let mut killed = false;
        while let Some(chunk) = (!pending.is_empty()).then(|| {
            let take = pending.len().min(BATCH);
            pending[..take].to_vec()
        }) {
            let request = client.ingest_calls(as_tenant(
                TENANT,
                IngestCallsRequest {
                    calls: chunk.iter().map(|&index| call(index)).collect(),
                },
            ));
            let outcome = if kills < KILLS && started.elapsed() >= kill_after && !killed {
                // The request is sent; the server dies before or after it commits.
                let (result, _) = tokio::join!(request, async {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
                    server.start_kill().expect("kill -9");
                });
                killed = true;
                kills += 1;
                result
            } else {
                request.await
            };
            match outcome {
                Ok(response) => {
                    for (index, result) in chunk.iter().zip(response.into_inner().results) {
                        if result.outcome() != IngestOutcome::Rejected {
                            acknowledged.insert(*index);
                        }
                    }
                    pending.retain(|index| !acknowledged.contains(index));
                }
                Err(status) => {
                    // Not acknowledged: sent again to the next server.
                    assert!(
                        matches!(
                            status.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                        ),
                        "{status:?}"
                    );
                    failed_requests += 1;
                    break;
                }
            }
        }
        if killed || server.try_wait().ok().flatten().is_some() {
            let _ = server.wait().await;
            server = serve(address, &url);
        }
    }
    let _ = server.start_kill();
    let pool = sqlx::PgPool::connect_with(database)
        .await
        .expect("connects");
    let stored: Vec<String> = sqlx::query_scalar("SELECT source_call_id FROM calls")
        .fetch_all(&pool)
        .await
        .expect("reads");
    let stored_set: HashSet<&str> = stored.iter().map(String::as_str).collect();
    let missing = acknowledged
        .iter()
        .filter(|&&index| !stored_set.contains(call(index).source_call_id.as_str()))
        .count();
    let created = count(&pool, "SELECT count(*) FROM feed_events WHERE kind = 1").await;
    println!(
        "kill -9: {kills} kills, {failed_requests} requests unanswered and resent, {} calls acknowledged, {} stored, {missing} acknowledged but missing, {created} CALL_CREATED events",
        acknowledged.len(),
        stored.len()
    );
    assert_eq!(kills, KILLS);
    assert_eq!(missing, 0, "every acknowledged call is stored");
    assert_eq!(acknowledged.len(), CALLS);
    assert_eq!(stored.len(), CALLS, "none twice");
    assert_eq!(created, CALLS as i64, "one created event a call");
}

#[tokio::test]
#[ignore = "long: the reliability suite"]
async fn excess_load_is_shed_while_admitted_requests_are_served() {
    const LIMIT: usize = 4;
    let app = spawn_app_with(|config| config.limits.max_concurrent_requests = LIMIT).await;
    deliver(app.channel().await, (0..2_000).collect(), 500).await;
    let run = |clients: usize| {
        let endpoint = app.endpoint();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let endpoint = endpoint.clone();
                tasks.push(tokio::spawn(async move {
                    let channel = Channel::from_shared(endpoint)
                        .expect("an endpoint")
                        .connect()
                        .await
                        .expect("connects");
                    let mut client = QueryServiceClient::new(channel);
                    let mut served = Vec::new();
                    let mut shed = 0_usize;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        match client
                            .list_calls(as_tenant(
                                TENANT,
                                ListCallsRequest {
                                    page_size: 50,
                                    ..ListCallsRequest::default()
                                },
                            ))
                            .await
                        {
                            Ok(_) => served.push(started.elapsed()),
                            Err(status) if status.code() == Code::ResourceExhausted => {
                                shed += 1;
                                // As told by RetryInfo.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(status) => panic!("unexpected {status:?}"),
                        }
                    }
                    (served, shed)
                }));
            }
            let mut served = Vec::new();
            let mut shed = 0;
            for task in tasks {
                let (mut times, count) = task.await.expect("joins");
                served.append(&mut times);
                shed += count;
            }
            served.sort();
            (served, shed)
        }
    };
    let percentile = |sorted: &[Duration], fraction: f64| {
        sorted
            .get(((sorted.len() as f64 * fraction) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let (baseline, baseline_shed) = run(LIMIT).await;
    let (loaded, loaded_shed) = run(LIMIT * 8).await;
    println!(
        "overload (limit {LIMIT}): {} clients: {} served, p50 {:?}, p99 {:?}, {} shed; {} clients: {} served, p50 {:?}, p99 {:?}, {} shed",
        LIMIT,
        baseline.len(),
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99),
        baseline_shed,
        LIMIT * 8,
        loaded.len(),
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99),
        loaded_shed
    );
    assert!(loaded_shed > 0, "excess load is shed");
    assert!(!loaded.is_empty(), "admitted requests are served");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
#[ignore = "long: the reliability suite"]
async fn a_postgres_crash_turns_readiness_off_and_back_and_loses_no_acknowledged_call() {
    use callstore::proto::watch_service_client::WatchServiceClient;
    use callstore::proto::{CallEventKind, WatchCallsRequest, watch_calls_request::Start};
    use tonic_health::pb::health_check_response::ServingStatus;

    const BEFORE: usize = 500;
    const AFTER: usize = 500;
    let root =
        std::env::temp_dir().join(format!("callstore-crash-{}", uuid::Uuid::new_v4().simple()));
    let mut postgres = callstore::db::server::PrivatePostgres::start(&root)
        .await
        .expect("a private PostgreSQL");
    let admin = postgres.connect_options("postgres");
    let mut connection = sqlx::ConnectOptions::connect(&admin)
        .await
        .expect("connects");
    sqlx::Executor::execute(&mut connection, "CREATE DATABASE crash")
        .await
        .expect("creates the database");
    drop(connection);
    let database = postgres.connect_options("crash");
    let app = helpers::start(helpers::config_for(&database, |config| {
        config.readiness_interval = Duration::from_millis(100);
    }))
    .await;
    app.wait_for_readiness(ServingStatus::Serving).await;

    // A stream from now, and calls before the crash.
    let mut stream = WatchServiceClient::new(app.channel().await)
        .watch_calls(as_tenant(
            TENANT,
            WatchCallsRequest {
                start: Some(Start::FromNow(true)),
                ..WatchCallsRequest::default()
            },
        ))
        .await
        .expect("watches")
        .into_inner();
    deliver(app.channel().await, (0..BEFORE).collect(), 100).await;

    // The crash, with requests in flight: whatever was acknowledged must survive.
    let channel = app.channel().await;
    let in_flight = tokio::spawn(async move {
        let mut client = IngestServiceClient::new(channel);
        let mut acknowledged = Vec::new();
        for chunk in (BEFORE..BEFORE + 200).collect::<Vec<_>>().chunks(20) {
            // A request that fails is not acknowledged: it is sent again after the restart.
            if let Ok(response) = client
                .ingest_calls(as_tenant(
                    TENANT,
                    IngestCallsRequest {
                        calls: chunk.iter().map(|&index| call(index)).collect(),
                    },
                ))
                .await
            {
                for (index, result) in chunk.iter().zip(response.into_inner().results) {
                    if result.outcome() != IngestOutcome::Rejected {
                        acknowledged.push(*index);
                    }
                }
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    postgres
        .stop_immediately()
        .await
        .expect("crashes PostgreSQL");
    app.wait_for_readiness(ServingStatus::NotServing).await;
    let acknowledged_in_crash = in_flight.await.expect("joins");
    postgres.start_again().await.expect("restarts PostgreSQL");
    app.wait_for_readiness(ServingStatus::Serving).await;

    // Everything not acknowledged is sent again, then more.
    let resend: Vec<usize> = (BEFORE..BEFORE + 200)
        .filter(|index| !acknowledged_in_crash.contains(index))
        .collect();
    deliver(app.channel().await, resend, 50).await;
    deliver(
        app.channel().await,
        (BEFORE + 200..BEFORE + 200 + AFTER).collect(),
        100,
    )
    .await;
    let total = BEFORE + 200 + AFTER;

    let pool = sqlx::PgPool::connect_with(database.clone())
        .await
        .expect("connects");
    let calls = count(&pool, "SELECT count(*) FROM calls").await;
    let created = count(&pool, "SELECT count(*) FROM feed_events WHERE kind = 1").await;
    assert_eq!(calls, total as i64, "every call stored once");
    assert_eq!(created, total as i64);

    // The stream either went on or ended retryably: resume by its last cursor and see every
    // call created, once.
    let mut seen: HashSet<String> = HashSet::new();
    let mut cursor = String::new();
    let mut resumed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < total {
        assert!(Instant::now() < deadline, "saw {} of {total}", seen.len());
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(message))) => {
                if !message.cursor.is_empty() {
                    cursor = message.cursor.clone();
                }
                if message.kind() == CallEventKind::CallCreated {
                    assert!(seen.insert(message.call_id.clone()), "a duplicate event");
                }
            }
            _ => {
                resumed += 1;
                stream = WatchServiceClient::new(app.channel().await)
                    .watch_calls(as_tenant(
                        TENANT,
                        WatchCallsRequest {
                            start: Some(Start::FromCursor(cursor.clone())),
                            ..WatchCallsRequest::default()
                        },
                    ))
                    .await
                    .expect("resumes by cursor")
                    .into_inner();
            }
        }
    }
    println!(
        "postgres crash: {} acknowledged during the crash, {} resent, {total} stored once; the stream resumed {resumed} time(s) and saw {} calls created, no duplicate",
        acknowledged_in_crash.len(),
        200 - acknowledged_in_crash.len(),
        seen.len()
    );
    app.shutdown().await.expect("clean shutdown");
    postgres.stop().await.expect("stops PostgreSQL");
    let _ = std::fs::remove_dir_all(&root);
}
