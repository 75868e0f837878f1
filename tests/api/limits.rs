//! Limits and overload protection through the real server: excess requests and streams are
//! refused at once with RESOURCE_EXHAUSTED (and a retry delay) while admitted work and health
//! checks go on, a tenant over its ingest rate is held back alone, and oversized messages are
//! refused. The layer and the rate limiter are unit-tested in `src/limits/`.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;

use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::watch_service_client::WatchServiceClient;
use callstore::proto::{IngestCallsRequest, ListTasksRequest};

use crate::helpers::{as_tenant, spawn_app_with};
use crate::ingest::native_call;
use crate::watch::support::from_now;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_request_over_the_concurrency_limit_is_shed_while_the_admitted_one_completes() {
    let app = spawn_app_with(|config| config.limits.max_concurrent_requests = 1).await;
    let mut ingest = app.ingest_client().await;
    ingest
        .ingest_calls(as_tenant(
            "acme",
            IngestCallsRequest {
                calls: vec![native_call("c-1", "13800000001")],
            },
        ))
        .await
        .expect("ingests");

    // Hold the call's row so that changing it waits: that request keeps the only slot.
    let pool = app.pool().await;
    let mut holder = pool.begin().await.expect("a transaction");
    sqlx::query("SELECT 1 FROM calls WHERE tenant_id = 'acme' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("locks the call");
    let mut changed = native_call("c-1", "13800000001");
    changed.talk_duration_ms = Some(1_000);
    let mut blocked_client = app.ingest_client().await;
    let blocked = tokio::spawn(async move {
        blocked_client
            .ingest_calls(as_tenant(
                "acme",
                IngestCallsRequest {
                    calls: vec![changed],
                },
            ))
            .await
    });
    // Wait until the change is waiting on the lock: then it holds the slot.
    tokio::time::timeout(DEADLINE, async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .expect("reads activity");
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the change waits on the lock");

    let shed = QueryServiceClient::new(app.channel().await)
        .list_tasks(as_tenant("acme", ListTasksRequest::default()))
        .await
        .expect_err("shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.get_details_retry_info()
            .is_some_and(|retry| retry.retry_delay.is_some()),
        "the client is told when to retry: {shed:?}"
    );
    assert!(
        app.health("readiness").await.is_ok(),
        "health is never shed"
    );

    holder.rollback().await.expect("releases the call");
    let admitted = tokio::time::timeout(DEADLINE, blocked)
        .await
        .expect("the admitted request completes")
        .expect("joins")
        .expect("the admitted request succeeds");
    assert_eq!(admitted.into_inner().results[0].version, 2);
    QueryServiceClient::new(app.channel().await)
        .list_tasks(as_tenant("acme", ListTasksRequest::default()))
        .await
        .expect("served again once the slot is free");
}

#[tokio::test]
async fn a_stream_over_the_stream_limit_is_refused() {
    let app = spawn_app_with(|config| config.limits.max_concurrent_streams = 1).await;
    let mut first = WatchServiceClient::new(app.channel().await);
    let _open = first
        .watch_calls(as_tenant("acme", from_now()))
        .await
        .expect("the first stream opens")
        .into_inner();
    let refused = tokio::time::timeout(DEADLINE, async {
        match WatchServiceClient::new(app.channel().await)
            .watch_calls(as_tenant("acme", from_now()))
            .await
        {
            Err(status) => status,
            Ok(response) => response.into_inner().message().await.expect_err("refused"),
        }
    })
    .await
    .expect("answered in time");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Unary requests do not take stream slots.
    QueryServiceClient::new(app.channel().await)
        .list_tasks(as_tenant("acme", ListTasksRequest::default()))
        .await
        .expect("served");
}

#[tokio::test]
async fn a_tenant_over_its_ingest_rate_is_held_back_alone() {
    let app = spawn_app_with(|config| config.limits.ingest_rate_per_tenant = Some((0.5, 2))).await;
    let mut ingest = app.ingest_client().await;
    let calls = |prefix: &str, count: usize| IngestCallsRequest {
        calls: (0..count)
            .map(|index| native_call(&format!("{prefix}-{index}"), "13800000001"))
            .collect(),
    };
    ingest
        .ingest_calls(as_tenant("acme", calls("a", 2)))
        .await
        .expect("the burst passes");
    let limited = ingest
        .ingest_calls(as_tenant("acme", calls("b", 1)))
        .await
        .expect_err("over the rate");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let retry = limited
        .get_details_retry_info()
        .and_then(|retry| retry.retry_delay)
        .expect("a retry delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(2),
        "{retry:?}"
    );
    ingest
        .ingest_calls(as_tenant("globex", calls("g", 2)))
        .await
        .expect("another tenant is not held back");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE tenant_id = 'acme'")
        .fetch_one(&app.pool().await)
        .await
        .expect("counts");
    assert_eq!(stored, 2, "the refused call was not stored");
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_it_is_decoded() {
    let app = spawn_app_with(|config| config.limits.max_decoding_message_size = 4 * 1024).await;
    let mut call = native_call("big", "13800000001");
    call.turns[0].text = "很长".repeat(4 * 1024);
    let refused = app
        .ingest_client()
        .await
        .ingest_calls(as_tenant("acme", IngestCallsRequest { calls: vec![call] }))
        .await
        .expect_err("refused");
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{refused:?}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(&app.pool().await)
        .await
        .expect("counts");
    assert_eq!(stored, 0);
}

/// IngestCallStream is held to the tenant's rate rather than refused: every call is stored and
/// acknowledged, no faster than the rate allows.
#[tokio::test]
async fn an_ingest_stream_is_slowed_to_the_tenants_rate() {
    use callstore::proto::{IngestCallStreamRequest, IngestOutcome};

    let (rate, burst, calls) = (20.0, 10, 30);
    let app =
        spawn_app_with(|config| config.limits.ingest_rate_per_tenant = Some((rate, burst))).await;
    let messages: Vec<IngestCallStreamRequest> = (0..calls)
        .map(|index| IngestCallStreamRequest {
            call: Some(native_call(&format!("s-{index}"), "13800000001")),
            client_token: format!("token-{index}"),
        })
        .collect();
    let started = std::time::Instant::now();
    let mut acks = app
        .ingest_client()
        .await
        .ingest_call_stream(as_tenant("acme", tokio_stream::iter(messages)))
        .await
        .expect("the stream starts")
        .into_inner();
    let mut created = 0;
    while let Some(ack) = tokio::time::timeout(DEADLINE, acks.message())
        .await
        .expect("acknowledgements keep coming")
        .expect("the stream is not refused")
    {
        let result = ack.result.expect("a result");
        assert_eq!(result.outcome(), IngestOutcome::Created, "{result:?}");
        created += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(created, calls);
    // The burst passes at once; the rest waits for the bucket to refill at `rate`.
    let least = Duration::from_secs_f64(f64::from(calls - burst) / rate);
    assert!(
        elapsed + Duration::from_millis(50) >= least,
        "{calls} calls took {elapsed:?}, less than the rate allows ({least:?})"
    );
}

/// A webhook over the tenant's rate is answered 429 with Retry-After, and nothing is stored.
#[tokio::test]
async fn a_webhook_over_the_tenants_rate_is_answered_429() {
    const HANGUP_PUSH: &[u8] = include_bytes!("../fixtures/hangup_push.json");
    let app = spawn_app_with(|config| {
        config.webhook_listen_addr = Some(crate::helpers::loopback_port_0());
        config.limits.ingest_rate_per_tenant = Some((0.5, 1));
    })
    .await;
    let webhook = app.webhook.expect("a webhook listener");
    let (status, body) =
        crate::webhook::post(webhook, "/hooks/acme/hangup-push", HANGUP_PUSH).await;
    assert_eq!((status, body.as_str()), (200, "SUCCESS"));
    let (status, head_and_body) =
        crate::webhook::post_with_head(webhook, "/hooks/acme/hangup-push", HANGUP_PUSH).await;
    assert_eq!(status, 429, "{head_and_body}");
    let retry_after = head_and_body
        .lines()
        .find_map(|line| line.strip_prefix("retry-after: "))
        .and_then(|seconds| seconds.trim().parse::<u64>().ok())
        .expect("a Retry-After header");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Another tenant is not held back.
    let (status, _) = crate::webhook::post(webhook, "/hooks/globex/hangup-push", HANGUP_PUSH).await;
    assert_eq!(status, 200);
}
