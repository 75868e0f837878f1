use prost::Message as _;
use sqlx::PgPool;
use tonic::{Code, Request};

use callstore::proto::{
    CallRecord, IngestCallsRequest, IngestOutcome, IngestVendorPayloadRequest, PayloadFormat,
    Speaker, Turn,
};

use crate::helpers::{as_tenant, spawn_app};

const HANGUP_PUSH: &[u8] = include_bytes!("../fixtures/hangup_push.json");
const RECORD_INFO: &[u8] = include_bytes!("../fixtures/task_api_record_info.json");
const RECORD_BRIEF: &[u8] = include_bytes!("../fixtures/task_api_record_brief.json");
const CALL_LIST: &[u8] = include_bytes!("../fixtures/task_api_done_task_phones.json");
const HUAWEI_RESULTS: &[u8] = include_bytes!("../fixtures/huawei_campaign_results.json");

fn payload(format: PayloadFormat, bytes: &[u8]) -> IngestVendorPayloadRequest {
    IngestVendorPayloadRequest {
        format: format as i32,
        payload: bytes.to_vec(),
        ..Default::default()
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("counts")
}

#[derive(sqlx::FromRow)]
struct StoredHangupPush {
    callee: String,
    talk_ms: Option<i64>,
    score: Option<i64>,
    labels: Vec<String>,
    transfer_state: i16,
    ext1: Option<String>,
    user_sn: Option<String>,
    turn_count: i32,
}

#[tokio::test]
async fn a_hangup_push_is_stored_with_its_dialogue_and_everything_else_kept() {
    let app = spawn_app().await;
    let response = app
        .ingest_client()
        .await
        .ingest_vendor_payload(as_tenant(
            "acme",
            payload(PayloadFormat::HangupPush, HANGUP_PUSH),
        ))
        .await
        .expect("ingests")
        .into_inner();
    assert_eq!(response.calls.len(), 1);
    let result = &response.calls[0];
    assert_eq!(result.outcome(), IngestOutcome::Created);
    assert_eq!(result.version, 1);
    assert_eq!(result.source_id, "db57f262-18d6-11f0-88c8-2f2b0aba51d7");

    let pool = app.pool().await;
    let stored: StoredHangupPush = sqlx::query_as(
        "SELECT callee, talk_duration_ms AS talk_ms, score, labels, transfer_state,
                custom_fields->>'ext1' AS ext1, extra->>'user_sn' AS user_sn, turn_count
         FROM calls WHERE tenant_id = 'acme' AND source_call_id = $1",
    )
    .bind(&result.source_id)
    .fetch_one(&pool)
    .await
    .expect("the call is stored");
    let StoredHangupPush {
        callee,
        talk_ms,
        score,
        labels,
        transfer_state,
        ext1,
        user_sn,
        turn_count,
    } = stored;
    assert_eq!(callee, "15899770637");
    assert_eq!(talk_ms, Some(88_000));
    assert_eq!(score, Some(80));
    assert!(labels.contains(&"有需求".to_owned()));
    assert_eq!(transfer_state, 2, "transferred, not answered");
    assert_eq!(ext1.as_deref(), Some("88"));
    assert_eq!(
        user_sn.as_deref(),
        Some("SYSUSER|555c429205989f5dd5cfee599ccd87af")
    );

    let turns: Vec<(i32, i16, String)> = sqlx::query_as(
        "SELECT sequence, speaker, text FROM turns WHERE tenant_id = 'acme' ORDER BY sequence",
    )
    .fetch_all(&pool)
    .await
    .expect("turns");
    assert_eq!(turns.len() as i32, turn_count);
    assert_eq!(turns[0].1, Speaker::Robot as i16);
    assert!(turns[0].2.starts_with("您好"));
    assert_eq!(turns[1], (2, Speaker::Customer as i16, "可以啊".to_owned()));
    let task_name: String = sqlx::query_scalar(
        "SELECT tasks.name FROM calls JOIN tasks ON tasks.tenant_id = calls.tenant_id AND tasks.id = calls.task_id
         WHERE calls.tenant_id = 'acme'",
    )
    .fetch_one(&pool)
    .await
    .expect("the call links its task");
    assert_eq!(task_name, "20250414101849");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM feed_events WHERE kind = 1").await,
        1
    );
}

#[tokio::test]
async fn task_api_payloads_store_calls_turns_tags_levels_and_tasks() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    for (format, bytes) in [
        (PayloadFormat::TaskApiRecord, RECORD_INFO),
        (PayloadFormat::TaskApiRecord, RECORD_BRIEF),
        (PayloadFormat::TaskApiCallList, CALL_LIST),
    ] {
        let response = client
            .ingest_vendor_payload(as_tenant("acme", payload(format, bytes)))
            .await
            .expect("ingests")
            .into_inner();
        assert!(
            response
                .calls
                .iter()
                .all(|call| call.outcome() == IngestOutcome::Created),
            "{response:?}"
        );
    }
    let pool = app.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM calls").await, 3);

    // The detail's dialogue: in order, without the interim ASR rows, which stay in extra.
    let speakers: Vec<(i16, String)> = sqlx::query_as(
        "SELECT turns.speaker, turns.text FROM turns JOIN calls ON calls.id = turns.call_id
         WHERE calls.source_call_id = '281db55e-64e8-11e9-9bb2-3564eb72c846' ORDER BY turns.sequence",
    )
    .fetch_all(&pool)
    .await
    .expect("turns");
    assert!(speakers.len() >= 3, "{speakers:?}");
    assert_eq!(speakers[0].0, Speaker::Robot as i16);
    assert!(
        speakers
            .iter()
            .any(|(speaker, text)| *speaker == Speaker::Customer as i16 && text == "啊")
    );
    let interim: i64 = count(
        &pool,
        "SELECT jsonb_array_length(extra->'interim_asr_records')::bigint FROM calls
         WHERE source_call_id = '281db55e-64e8-11e9-9bb2-3564eb72c846'",
    )
    .await;
    assert_eq!(interim, 2);

    let (task_name, redial_rounds): (String, Option<i32>) = sqlx::query_as(
        "SELECT name, redial_rounds FROM tasks WHERE source_task_id = '840a4346-d0ac-4800-9c73-3d06275a9158'",
    )
    .fetch_one(&pool)
    .await
    .expect("the detail's task");
    assert!(task_name.starts_with("教育"));
    assert_eq!(redial_rounds, Some(1));

    let level: (String, Option<String>) = sqlx::query_as(
        "SELECT levels.name, levels.alias FROM calls JOIN levels ON levels.id = calls.level_id
         WHERE calls.source_call_id = '281db55e-64e8-11e9-9bb2-3564eb72c846'",
    )
    .fetch_one(&pool)
    .await
    .expect("the call's level");
    assert!(level.0.starts_with('D'));

    // The call list's tag, with its group.
    let tagged: (String, String) = sqlx::query_as(
        "SELECT tags.name, tag_groups.name FROM call_tags
         JOIN tags ON tags.id = call_tags.tag_id
         JOIN tag_group_members ON tag_group_members.tag_id = tags.id
         JOIN tag_groups ON tag_groups.id = tag_group_members.tag_group_id
         JOIN calls ON calls.id = call_tags.call_id
         WHERE calls.source_call_id = 'd6a577d4-7180-11e9-80bd-7fed30fcff3f'",
    )
    .fetch_one(&pool)
    .await
    .expect("the listed call's tag and group");
    assert_eq!(tagged.0, "臟話");
    assert_eq!(tagged.1, "無意向");
}

#[tokio::test]
async fn huawei_results_are_stored_with_the_fail_code_as_sent() {
    let app = spawn_app().await;
    let response = app
        .ingest_client()
        .await
        .ingest_vendor_payload(as_tenant(
            "acme",
            payload(PayloadFormat::HuaweiResult, HUAWEI_RESULTS),
        ))
        .await
        .expect("ingests")
        .into_inner();
    assert_eq!(response.calls.len(), 1);
    let pool = app.pool().await;
    let (callee, fail_code, source_system): (String, Option<String>, String) = sqlx::query_as(
        "SELECT callee, huawei->>'fail_code', source_system FROM calls WHERE source_call_id = '0023-134864174'",
    )
    .fetch_one(&pool)
    .await
    .expect("stored");
    assert_eq!(callee, "60584");
    assert_eq!(fail_code.as_deref(), Some("0"));
    assert_eq!(source_system, "huawei_cec");
}

#[tokio::test]
async fn a_call_delivered_three_times_is_stored_once_with_one_event() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let response = client
            .ingest_vendor_payload(as_tenant(
                "acme",
                payload(PayloadFormat::HangupPush, HANGUP_PUSH),
            ))
            .await
            .expect("ingests")
            .into_inner();
        outcomes.push((response.calls[0].outcome(), response.calls[0].version));
    }
    assert_eq!(
        outcomes,
        [
            (IngestOutcome::Created, 1),
            (IngestOutcome::Unchanged, 1),
            (IngestOutcome::Unchanged, 1)
        ]
    );
    let pool = app.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM calls").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM feed_events").await, 1);
}

#[tokio::test]
async fn concurrent_duplicate_deliveries_store_one_call_and_one_event() {
    let app = spawn_app().await;
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let mut client = app.ingest_client().await;
        deliveries.push(tokio::spawn(async move {
            client
                .ingest_vendor_payload(as_tenant(
                    "acme",
                    payload(PayloadFormat::HangupPush, HANGUP_PUSH),
                ))
                .await
                .expect("ingests")
                .into_inner()
                .calls[0]
                .outcome()
        }));
    }
    let mut outcomes = Vec::new();
    for delivery in deliveries {
        outcomes.push(delivery.await.expect("joins"));
    }
    outcomes.sort_by_key(|outcome| *outcome as i32);
    assert_eq!(
        outcomes,
        [
            IngestOutcome::Created,
            IngestOutcome::Unchanged,
            IngestOutcome::Unchanged
        ]
    );
    let pool = app.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM calls").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM feed_events").await, 1);
}

#[tokio::test]
async fn a_changed_redelivery_is_version_two_with_a_second_event() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    client
        .ingest_vendor_payload(as_tenant(
            "acme",
            payload(PayloadFormat::HangupPush, HANGUP_PUSH),
        ))
        .await
        .expect("ingests");

    let mut changed: serde_json::Value = serde_json::from_slice(HANGUP_PUSH).expect("JSON");
    changed["score"] = serde_json::json!(95);
    let response = client
        .ingest_vendor_payload(as_tenant(
            "acme",
            payload(
                PayloadFormat::HangupPush,
                &serde_json::to_vec(&changed).expect("JSON"),
            ),
        ))
        .await
        .expect("ingests")
        .into_inner();
    assert_eq!(response.calls[0].outcome(), IngestOutcome::Updated);
    assert_eq!(response.calls[0].version, 2);

    let pool = app.pool().await;
    let (score, version): (Option<i64>, i64) = sqlx::query_as("SELECT score, version FROM calls")
        .fetch_one(&pool)
        .await
        .expect("stored");
    assert_eq!((score, version), (Some(95), 2));
    let kinds: Vec<(i16, i64)> =
        sqlx::query_as("SELECT kind, call_version FROM feed_events ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("events");
    assert_eq!(kinds, [(1, 1), (2, 2)]);
    // The dialogue was replaced, not appended to.
    assert_eq!(count(&pool, "SELECT count(*) FROM turns").await, 17);
}

pub(crate) fn native_call(source_call_id: &str, callee: &str) -> CallRecord {
    CallRecord {
        source_call_id: source_call_id.to_owned(),
        callee: callee.to_owned(),
        dial_time: Some(prost_types::Timestamp {
            seconds: 1_744_597_153,
            nanos: 0,
        }),
        turns: vec![
            Turn {
                sequence: 1,
                speaker: Speaker::Robot as i32,
                text: "您好".to_owned(),
                ..Default::default()
            },
            Turn {
                sequence: 2,
                speaker: Speaker::Customer as i32,
                text: "你好".to_owned(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_bad_item_is_rejected_with_its_field_and_the_others_are_stored() {
    let app = spawn_app().await;
    let response = app
        .ingest_client()
        .await
        .ingest_calls(as_tenant(
            "acme",
            IngestCallsRequest {
                calls: vec![
                    native_call("n-1", "13800000001"),
                    native_call("n-2", "not a number"),
                    native_call("n-3", "13800000003"),
                ],
            },
        ))
        .await
        .expect("the batch is answered")
        .into_inner();
    let outcomes: Vec<IngestOutcome> = response
        .results
        .iter()
        .map(|result| result.outcome())
        .collect();
    assert_eq!(
        outcomes,
        [
            IngestOutcome::Created,
            IngestOutcome::Rejected,
            IngestOutcome::Created
        ]
    );
    let error = response.results[1].error.as_ref().expect("an error");
    assert_eq!(error.code, Code::InvalidArgument as i32);
    let bad_request = tonic_types::pb::BadRequest::decode(error.details[0].value.as_slice())
        .expect("a BadRequest");
    assert_eq!(bad_request.field_violations[0].field, "calls[1].callee");

    let pool = app.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM calls").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM turns").await, 4);
}

#[tokio::test]
async fn malformed_payloads_are_refused_naming_the_format_and_the_path() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let mut no_uuid: serde_json::Value = serde_json::from_slice(HANGUP_PUSH).expect("JSON");
    no_uuid.as_object_mut().expect("an object").remove("uuid");
    let cases: Vec<(PayloadFormat, Vec<u8>, &str)> = vec![
        (
            PayloadFormat::HangupPush,
            b"{not json".to_vec(),
            "hangup_push payload: $",
        ),
        (
            PayloadFormat::HangupPush,
            serde_json::to_vec(&no_uuid).expect("JSON"),
            "$.uuid",
        ),
        (
            PayloadFormat::TaskApiRecord,
            b"[]".to_vec(),
            "task_api payload",
        ),
        (
            PayloadFormat::HuaweiResult,
            br#"[{"called":"1"}]"#.to_vec(),
            "$[0].callId",
        ),
    ];
    for (format, bytes, expected) in cases {
        let status = client
            .ingest_vendor_payload(as_tenant("acme", payload(format, &bytes)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let bad_request =
            tonic_types::StatusExt::get_details_bad_request(&status).expect("details");
        assert_eq!(bad_request.field_violations[0].field, "payload");
        assert!(
            bad_request.field_violations[0]
                .description
                .contains(expected),
            "{expected} not in {:?}",
            bad_request.field_violations[0].description
        );
    }
    let pool = app.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM calls").await, 0);
}

#[tokio::test]
async fn ingest_needs_a_valid_tenant() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let missing = client
        .ingest_calls(Request::new(IngestCallsRequest::default()))
        .await
        .expect_err("refused");
    assert_eq!(missing.code(), Code::InvalidArgument);
    let bad = client
        .ingest_calls(as_tenant("-bad tenant", IngestCallsRequest::default()))
        .await
        .expect_err("refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let field = tonic_types::StatusExt::get_details_bad_request(&bad).expect("details");
    assert_eq!(field.field_violations[0].field, "metadata.x-tenant-id");
}

#[tokio::test]
async fn tenants_do_not_share_calls_with_the_same_source_id() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    for tenant in ["acme", "globex"] {
        let response = client
            .ingest_vendor_payload(as_tenant(
                tenant,
                payload(PayloadFormat::HangupPush, HANGUP_PUSH),
            ))
            .await
            .expect("ingests")
            .into_inner();
        assert_eq!(response.calls[0].outcome(), IngestOutcome::Created);
    }
    let pool = app.pool().await;
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT tenant_id) FROM calls").await,
        2
    );
}

const TASK_NUMBERS: &[u8] = include_bytes!("../fixtures/task_api_task_numbers.json");
const HUAWEI_QC: &[u8] = include_bytes!("../fixtures/huawei_qc_result.json");

#[tokio::test]
async fn task_numbers_are_stored_with_their_attempts_once() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let response = client
            .ingest_vendor_payload(as_tenant(
                "acme",
                payload(PayloadFormat::TaskApiTaskNumbers, TASK_NUMBERS),
            ))
            .await
            .expect("ingests")
            .into_inner();
        assert!(response.calls.is_empty());
        outcomes.push(response.other[0].outcome());
    }
    assert_eq!(outcomes, [IngestOutcome::Created, IngestOutcome::Unchanged]);

    let pool = app.pool().await;
    let (number, status, task): (String, i16, String) = sqlx::query_as(
        "SELECT task_numbers.number, task_numbers.status, tasks.source_task_id
         FROM task_numbers JOIN tasks ON tasks.tenant_id = task_numbers.tenant_id AND tasks.id = task_numbers.task_id",
    )
    .fetch_one(&pool)
    .await
    .expect("the number");
    assert_eq!(number, "18651683344");
    assert_eq!(status, callstore::proto::NumberStatus::Connected as i16);
    assert_eq!(task, "772dd881-dcf7-42ee-a32b-b40a0ee5afb7");
    let attempts: Vec<(Option<String>, i16)> =
        sqlx::query_as("SELECT sip_code, status FROM call_attempts ORDER BY call_time DESC")
            .fetch_all(&pool)
            .await
            .expect("attempts");
    assert_eq!(
        attempts,
        [
            (
                Some("200".to_owned()),
                callstore::proto::NumberStatus::Connected as i16
            ),
            (None, callstore::proto::NumberStatus::Busy as i16)
        ]
    );
}

#[tokio::test]
async fn a_huawei_qc_result_attaches_to_its_call_once() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;

    // Before the call is stored the result is refused, so the sender retries.
    let early = client
        .ingest_vendor_payload(as_tenant(
            "acme",
            payload(PayloadFormat::HuaweiQc, HUAWEI_QC),
        ))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(early.other[0].outcome(), IngestOutcome::Rejected);
    assert_eq!(
        early.other[0].error.as_ref().expect("an error").code,
        Code::FailedPrecondition as i32
    );

    let mut call = native_call("17af55af-e51d-4cc0-8a62-84222e1d1eea", "13800000000");
    call.source_system = "huawei_cec".to_owned();
    call.source_format = callstore::proto::SourceFormat::HuaweiResult as i32;
    client
        .ingest_calls(as_tenant("acme", IngestCallsRequest { calls: vec![call] }))
        .await
        .expect("ingests the call");

    let mut outcomes = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = client
            .ingest_vendor_payload(as_tenant(
                "acme",
                payload(PayloadFormat::HuaweiQc, HUAWEI_QC),
            ))
            .await
            .expect("ingests")
            .into_inner();
        outcomes.push((response.other[0].outcome(), response.other[0].version));
        ids.push(response.other[0].id.clone());
    }
    let first_id = ids[0].clone();
    assert_eq!(
        outcomes,
        [(IngestOutcome::Created, 1), (IngestOutcome::Unchanged, 1)]
    );
    let pool = app.pool().await;
    let (source, staff, segments): (i16, Option<String>, i64) = sqlx::query_as(
        "SELECT source, details->>'staff_name', json_array_length(details->'segments')::bigint
         FROM quality_results WHERE source = 2",
    )
    .fetch_one(&pool)
    .await
    .expect("the imported result");
    assert_eq!(source, callstore::proto::QualitySource::Imported as i16);
    assert_eq!(staff.as_deref(), Some("xieyiling"));
    assert!(segments >= 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM feed_events WHERE kind = 5").await,
        1,
        "one quality event"
    );
    let announced: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT quality_id FROM feed_events WHERE kind = 5")
            .fetch_one(&pool)
            .await
            .expect("reads the event");
    assert_eq!(
        announced.map(|id| id.to_string()),
        Some(first_id),
        "the event names the result it announces"
    );
}

#[tokio::test]
async fn a_call_stream_acknowledges_every_item_in_order_once_committed() {
    use callstore::proto::IngestCallStreamRequest;

    let app = spawn_app().await;
    let mut messages = Vec::new();
    for index in 0..300 {
        let call = match index {
            // A bad item, and a repeat of item 0: neither stops the stream.
            7 => native_call("s-7", "not a number"),
            8 => native_call("s-0", "13800000000"),
            _ => native_call(&format!("s-{index}"), "13800000000"),
        };
        messages.push(IngestCallStreamRequest {
            call: Some(call),
            client_token: format!("token-{index}"),
        });
    }
    let mut acks = app
        .ingest_client()
        .await
        .ingest_call_stream(as_tenant("acme", tokio_stream::iter(messages)))
        .await
        .expect("the stream starts")
        .into_inner();

    let mut received = Vec::new();
    while let Some(ack) = acks.message().await.expect("acknowledgements stream") {
        received.push(ack);
    }
    assert_eq!(received.len(), 300);
    for (index, ack) in received.iter().enumerate() {
        assert_eq!(ack.client_token, format!("token-{index}"));
        let result = ack.result.as_ref().expect("a result");
        assert_eq!(result.index as usize, index);
        let expected = match index {
            7 => IngestOutcome::Rejected,
            8 => IngestOutcome::Unchanged,
            _ => IngestOutcome::Created,
        };
        assert_eq!(result.outcome(), expected, "item {index}");
    }
    let pool = app.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM calls").await, 298);
    assert_eq!(count(&pool, "SELECT count(*) FROM feed_events").await, 298);
}
