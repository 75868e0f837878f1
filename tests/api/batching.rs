//! The batch write path: calls written together, a failing call isolated, repeated keys in one
//! batch, and concurrent small requests coalesced into group commits.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tonic::Code;

use callstore::domain::TenantId;
use callstore::ingest::group_commit::{GroupCommitSettings, GroupCommitter};
use callstore::proto::{
    IngestCallsRequest, IngestOutcome, IngestVendorPayloadRequest, PayloadFormat, Speaker, Turn,
};

use crate::helpers::{DEADLINE, FromTemplate, as_tenant, fresh_database, spawn_app};
use crate::ingest::native_call;

const RECORD_INFO: &[u8] = include_bytes!("../fixtures/task_api_record_info.json");

fn extra_with(key: &str, value: &str) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            key.to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
            },
        )]
        .into(),
    }
}

async fn scalar(pool: &PgPool, sql: &'static str, tenant: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(tenant)
        .fetch_one(pool)
        .await
        .expect("query runs")
}

#[tokio::test]
async fn a_call_the_database_refuses_is_rejected_alone_and_the_rest_of_the_batch_commits() {
    let app = spawn_app().await;
    let mut refused = native_call("call-2", "13800000002");
    // Valid to the API, refused by Postgres: jsonb cannot hold \u0000.
    refused.extra = Some(extra_with("note", "a\u{0}b"));
    let calls = vec![
        native_call("call-1", "13800000001"),
        refused,
        native_call("call-3", "13800000003"),
    ];
    let results = app
        .ingest_client()
        .await
        .ingest_calls(as_tenant("acme", IngestCallsRequest { calls }))
        .await
        .expect("the request succeeds")
        .into_inner()
        .results;

    let outcomes: Vec<IngestOutcome> = results.iter().map(|result| result.outcome()).collect();
    assert_eq!(
        outcomes,
        [
            IngestOutcome::Created,
            IngestOutcome::Rejected,
            IngestOutcome::Created
        ]
    );
    let error = results[1].error.as_ref().expect("the rejection says why");
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(
        !error.message.contains("jsonb") && !error.message.contains("\\u0000"),
        "no driver text reaches the client: {}",
        error.message
    );

    let pool = app.pool().await;
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT source_call_id FROM calls WHERE tenant_id = $1 ORDER BY source_call_id",
    )
    .bind("acme")
    .fetch_all(&pool)
    .await
    .expect("reads calls");
    assert_eq!(stored, ["call-1", "call-3"]);
    let turns = scalar(
        &pool,
        "SELECT count(*) FROM turns WHERE tenant_id = $1",
        "acme",
    )
    .await;
    assert_eq!(turns, 4, "each stored call keeps its two turns");
    let events = scalar(
        &pool,
        "SELECT count(*) FROM feed_events WHERE tenant_id = $1",
        "acme",
    )
    .await;
    assert_eq!(
        events, 2,
        "one event per stored call, none for the refused one"
    );
}

#[tokio::test]
async fn text_with_nul_characters_is_a_field_violation() {
    let app = spawn_app().await;
    let mut call = native_call("call-1", "13800000001");
    call.turns[1].text = "你\u{0}好".to_owned();
    let results = app
        .ingest_client()
        .await
        .ingest_calls(as_tenant("acme", IngestCallsRequest { calls: vec![call] }))
        .await
        .expect("the request succeeds")
        .into_inner()
        .results;
    assert_eq!(results[0].outcome(), IngestOutcome::Rejected);
    let error = results[0].error.as_ref().expect("the rejection says why");
    assert_eq!(error.code, Code::InvalidArgument as i32);
    let bad_request = {
        use prost::Message as _;
        tonic_types::pb::BadRequest::decode(error.details[0].value.as_slice())
            .expect("a BadRequest")
    };
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|violation| violation.field.as_str())
        .collect();
    assert_eq!(fields, ["calls[0].turns[1].text"]);
}

#[tokio::test]
async fn one_batch_may_carry_a_call_several_times_and_each_delivery_is_answered_in_order() {
    let app = spawn_app().await;
    let first = native_call("call-1", "13800000001");
    let mut changed = first.clone();
    changed.turns.push(Turn {
        sequence: 3,
        speaker: Speaker::Robot as i32,
        text: "再见".to_owned(),
        ..Default::default()
    });
    let calls = vec![
        first.clone(),
        native_call("call-2", "13800000002"),
        first,
        changed,
    ];
    let results = app
        .ingest_client()
        .await
        .ingest_calls(as_tenant("acme", IngestCallsRequest { calls }))
        .await
        .expect("the request succeeds")
        .into_inner()
        .results;
    let outcomes: Vec<(IngestOutcome, i64)> = results
        .iter()
        .map(|result| (result.outcome(), result.version))
        .collect();
    assert_eq!(
        outcomes,
        [
            (IngestOutcome::Created, 1),
            (IngestOutcome::Created, 1),
            (IngestOutcome::Unchanged, 1),
            (IngestOutcome::Updated, 2),
        ]
    );
    assert_eq!(results[0].id, results[3].id, "one call, two versions");

    let pool = app.pool().await;
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT t.text FROM turns t JOIN calls c ON c.tenant_id = t.tenant_id AND c.id = t.call_id
         WHERE c.tenant_id = $1 AND c.source_call_id = 'call-1' ORDER BY t.sequence",
    )
    .bind("acme")
    .fetch_all(&pool)
    .await
    .expect("reads turns");
    assert_eq!(
        texts,
        ["您好", "你好", "再见"],
        "the last delivery's dialogue"
    );
    let events: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT e.kind, e.call_version FROM feed_events e
         JOIN calls c ON c.tenant_id = e.tenant_id AND c.id = e.call_id
         WHERE e.tenant_id = $1 AND c.source_call_id = 'call-1' ORDER BY e.id",
    )
    .bind("acme")
    .fetch_all(&pool)
    .await
    .expect("reads events");
    assert_eq!(
        events,
        [
            (callstore::proto::CallEventKind::CallCreated as i16, 1),
            (callstore::proto::CallEventKind::CallUpdated as i16, 2)
        ]
    );
}

#[tokio::test]
async fn calls_queued_while_a_commit_is_in_flight_share_the_next_one() {
    let database = fresh_database(FromTemplate::Yes).await;
    let pool = PgPool::connect_with(database).await.expect("connects");
    let settings = GroupCommitSettings {
        writers: 1,
        ..GroupCommitSettings::default()
    };
    let committer = GroupCommitter::start(pool.clone(), &settings);
    let tenant = TenantId::parse("acme").expect("valid tenant");
    let call = |index: usize| {
        let record = native_call(&format!("call-{index}"), "13800000001");
        callstore::api::convert::call_from_proto(record, "call", &Default::default())
            .expect("a valid call")
    };

    // Hold the feed table so that the first group cannot commit.
    let mut blocker = pool.begin().await.expect("begins");
    sqlx::query("LOCK TABLE feed_events IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locks");

    let mut requests = JoinSet::new();
    let first = committer.clone();
    let (first_tenant, first_call) = (tenant.clone(), call(0));
    requests.spawn(async move { first.store(&first_tenant, vec![first_call]).await });
    wait_until(|| async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .expect("reads activity");
        waiting == 1
    })
    .await;

    for index in 1..=20 {
        let committer = committer.clone();
        let (tenant, call) = (tenant.clone(), call(index));
        requests.spawn(async move { committer.store(&tenant, vec![call]).await });
    }
    wait_until(|| async { committer.queued() == 20 }).await;
    blocker.rollback().await.expect("releases the lock");

    while let Some(results) = requests.join_next().await {
        let results = results.expect("the request task does not panic");
        assert!(results.iter().all(Result::is_ok), "every call is stored");
    }
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT tx_id::text) FROM feed_events")
            .fetch_one(&pool)
            .await
            .expect("counts transactions");
    assert_eq!(transactions, 2, "the 20 queued calls shared one commit");
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(&pool)
        .await
        .expect("counts calls");
    assert_eq!(calls, 21);
}

#[tokio::test]
async fn concurrent_single_call_requests_are_each_answered_once_committed() {
    let app = spawn_app().await;
    let channel = app.channel().await;
    let mut requests = JoinSet::new();
    for index in 0..64 {
        let mut client =
            callstore::proto::ingest_service_client::IngestServiceClient::new(channel.clone());
        // Every fourth request repeats call-0: one delivery creates it, the rest are duplicates.
        let source_call_id = if index % 4 == 0 {
            "call-0".to_owned()
        } else {
            format!("call-{index}")
        };
        requests.spawn(async move {
            let calls = vec![native_call(&source_call_id, "13800000001")];
            client
                .ingest_calls(as_tenant("acme", IngestCallsRequest { calls }))
                .await
                .expect("the request succeeds")
                .into_inner()
                .results
        });
    }
    let mut outcomes = Vec::new();
    while let Some(results) = requests.join_next().await {
        let results = results.expect("the request task does not panic");
        assert_eq!(results.len(), 1);
        outcomes.push((results[0].source_id.clone(), results[0].outcome()));
    }
    let created = outcomes
        .iter()
        .filter(|(_, outcome)| *outcome == IngestOutcome::Created)
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|(id, outcome)| id == "call-0" && *outcome == IngestOutcome::Unchanged)
        .count();
    assert_eq!(
        created, 49,
        "48 distinct calls and the first delivery of call-0"
    );
    assert_eq!(duplicates, 15);

    let pool = app.pool().await;
    let calls = scalar(
        &pool,
        "SELECT count(*) FROM calls WHERE tenant_id = $1",
        "acme",
    )
    .await;
    let turns = scalar(
        &pool,
        "SELECT count(*) FROM turns WHERE tenant_id = $1",
        "acme",
    )
    .await;
    let events = scalar(
        &pool,
        "SELECT count(*) FROM feed_events WHERE tenant_id = $1",
        "acme",
    )
    .await;
    assert_eq!((calls, turns, events), (49, 98, 49));
}

#[tokio::test]
async fn a_vendor_payload_answers_for_its_task_tags_and_level_too() {
    let app = spawn_app().await;
    let request = || {
        as_tenant(
            "acme",
            IngestVendorPayloadRequest {
                format: PayloadFormat::TaskApiRecord as i32,
                payload: RECORD_INFO.to_vec(),
                ..Default::default()
            },
        )
    };
    let mut client = app.ingest_client().await;
    let first = client
        .ingest_vendor_payload(request())
        .await
        .expect("ingests")
        .into_inner();
    assert_eq!(first.calls.len(), 1);
    assert_eq!(first.calls[0].item_type, "call");
    let kinds: Vec<&str> = first
        .other
        .iter()
        .map(|result| result.item_type.as_str())
        .collect();
    assert!(
        kinds.contains(&"task"),
        "the task is answered for: {kinds:?}"
    );
    assert!(
        kinds.contains(&"tag"),
        "the tags are answered for: {kinds:?}"
    );
    for result in &first.other {
        assert_eq!(result.outcome(), IngestOutcome::Created, "{result:?}");
        assert!(!result.id.is_empty() && !result.source_id.is_empty());
    }

    let again = client
        .ingest_vendor_payload(request())
        .await
        .expect("ingests again")
        .into_inner();
    assert_eq!(again.other.len(), first.other.len());
    for (before, after) in first.other.iter().zip(&again.other) {
        assert_eq!(after.outcome(), IngestOutcome::Unchanged);
        assert_eq!(
            (&after.id, &after.item_type),
            (&before.id, &before.item_type)
        );
    }
}

/// Polls a condition until it holds, failing the test after the deadline.
async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A turn with every column set, and text that needs escaping in any wire format.
fn full_turn(sequence: i32) -> Turn {
    use callstore::proto::{AudioPiece, JumpType, NodeType, ScriptNode};
    Turn {
        sequence,
        speaker: Speaker::Customer as i32,
        text: format!("第{sequence}句\ttab\nnewline\r\\N back\\slash \"quote\" 😀"),
        time: Some(prost_types::Timestamp {
            seconds: 1_744_597_160,
            nanos: 123_456_000,
        }),
        start_offset_ms: Some(1_000),
        end_offset_ms: Some(2_500),
        speak_ms: Some(1_500),
        play_ms: Some(0),
        node: Some(ScriptNode {
            id: "node-1".to_owned(),
            name: "开场白".to_owned(),
            node_class: "main".to_owned(),
            r#type: NodeType::MainFlow as i32,
            trigger_title: "问候".to_owned(),
        }),
        matched_keyword: "不需要".to_owned(),
        jump_type: JumpType::Negative as i32,
        match_type: Some(2),
        score_delta: Some(-5),
        label: "拒绝".to_owned(),
        audio_file: "a/b.wav".to_owned(),
        audio_pieces: vec![AudioPiece {
            file_id: "f1".to_owned(),
            sort: 1,
            text: "片段\t1".to_owned(),
            duration_ms: 800,
            extra: Some(extra_with("k", "v\\n")),
        }],
        asr_engine: "ali".to_owned(),
        asr_latency_ms: Some(120),
        record_ms: Some(1_480),
        volume_gain: Some(0.1),
        question_index: Some(3),
        after_transfer: true,
        source_turn_id: format!("turn-{sequence}"),
        extra: Some(extra_with("raw", "line1\nline2\t\\")),
        ..Default::default()
    }
}

#[tokio::test]
async fn big_and_small_batches_store_identical_turns() {
    let app = spawn_app().await;
    let record = |index: usize| {
        let mut call = native_call(&format!("call-{index}"), "13800000001");
        call.turns = (1..=12).map(full_turn).collect();
        call
    };
    let mut client = app.ingest_client().await;
    // One call alone (a small group commit), and 100 calls of 12 turns in one request: both
    // paths the write takes for turns.
    let small = client
        .ingest_calls(as_tenant(
            "small",
            IngestCallsRequest {
                calls: vec![record(0)],
            },
        ))
        .await
        .expect("ingests")
        .into_inner();
    assert_eq!(small.results[0].outcome(), IngestOutcome::Created);
    let big = client
        .ingest_calls(as_tenant(
            "big",
            IngestCallsRequest {
                calls: (0..100).map(record).collect(),
            },
        ))
        .await
        .expect("ingests")
        .into_inner();
    assert!(
        big.results
            .iter()
            .all(|result| result.outcome() == IngestOutcome::Created)
    );

    let pool = app.pool().await;
    let turns_of = |tenant: &'static str| {
        let pool = pool.clone();
        async move {
            let rows: Vec<serde_json::Value> = sqlx::query_scalar(
                "SELECT to_jsonb(t) - 'tenant_id' - 'call_id' FROM turns t
                 JOIN calls c ON c.tenant_id = t.tenant_id AND c.id = t.call_id
                 WHERE t.tenant_id = $1 AND c.source_call_id = 'call-0' ORDER BY t.sequence",
            )
            .bind(tenant)
            .fetch_all(&pool)
            .await
            .expect("reads turns");
            rows
        }
    };
    let (small_rows, big_rows) = (turns_of("small").await, turns_of("big").await);
    assert_eq!(small_rows.len(), 12);
    assert_eq!(small_rows, big_rows, "both paths store the same rows");
    let first = &small_rows[0];
    assert_eq!(
        first["text"],
        "第1句\ttab\nnewline\r\\N back\\slash \"quote\" 😀"
    );
    assert_eq!(first["volume_gain"], 0.1);
    assert_eq!(first["extra"]["raw"], "line1\nline2\t\\");
    assert_eq!(first["audio_pieces"][0]["text"], "片段\t1");
    assert_eq!(first["node_name"], "开场白");
    let total = scalar(
        &pool,
        "SELECT count(*) FROM turns WHERE tenant_id = $1",
        "big",
    )
    .await;
    assert_eq!(total, 1200);
}
