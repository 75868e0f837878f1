//! Calls in progress: OpenCall, AppendTurns and CompleteCall through the generated client.

use prost_types::Timestamp;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::{
    AppendTurnsRequest, AppendTurnsResponse, CallEventKind, CallRecord, CallState,
    CompleteCallRequest, IngestCallsRequest, IngestItemResult, IngestOutcome, OpenCallRequest,
    Speaker, Turn,
};

use crate::helpers::{as_tenant, spawn_app, spawn_app_with};

type Client = IngestServiceClient<Channel>;

const TENANT: &str = "acme";
const DIAL_SECONDS: i64 = 1_744_597_153;

fn at(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp { seconds, nanos }
}

fn record(source_call_id: &str) -> CallRecord {
    CallRecord {
        source_call_id: source_call_id.to_owned(),
        callee: "15899770637".to_owned(),
        dial_time: Some(at(DIAL_SECONDS, 0)),
        ..CallRecord::default()
    }
}

/// A turn whose time has nanoseconds, which the store keeps only to the microsecond.
fn turn(sequence: i32, text: &str) -> Turn {
    let speaker = if sequence % 2 == 1 {
        Speaker::Robot
    } else {
        Speaker::Customer
    };
    Turn {
        sequence,
        speaker: speaker as i32,
        text: text.to_owned(),
        time: Some(at(DIAL_SECONDS + 10 + i64::from(sequence), 123_456_789)),
        ..Turn::default()
    }
}

fn turns(sequences: std::ops::RangeInclusive<i32>) -> Vec<Turn> {
    sequences
        .map(|sequence| turn(sequence, &format!("line {sequence}")))
        .collect()
}

fn by_id(call_id: &str, turns: Vec<Turn>) -> AppendTurnsRequest {
    AppendTurnsRequest {
        call_id: call_id.to_owned(),
        turns,
        ..AppendTurnsRequest::default()
    }
}

fn by_source(source_call_id: &str, turns: Vec<Turn>) -> AppendTurnsRequest {
    AppendTurnsRequest {
        source_call_id: source_call_id.to_owned(),
        turns,
        ..AppendTurnsRequest::default()
    }
}

async fn open(
    client: &mut Client,
    tenant: &str,
    call: CallRecord,
) -> Result<IngestItemResult, Status> {
    let response = client
        .open_call(as_tenant(tenant, OpenCallRequest { call: Some(call) }))
        .await?;
    Ok(response.into_inner().result.expect("a result"))
}

async fn append(
    client: &mut Client,
    tenant: &str,
    request: AppendTurnsRequest,
) -> Result<AppendTurnsResponse, Status> {
    Ok(client
        .append_turns(as_tenant(tenant, request))
        .await?
        .into_inner())
}

async fn complete(
    client: &mut Client,
    tenant: &str,
    call: CallRecord,
    hangup_time: Option<Timestamp>,
) -> Result<IngestItemResult, Status> {
    let response = client
        .complete_call(as_tenant(
            tenant,
            CompleteCallRequest {
                call: Some(call),
                hangup_time,
            },
        ))
        .await?;
    Ok(response.into_inner().result.expect("a result"))
}

fn call_id(result: &IngestItemResult) -> Uuid {
    Uuid::parse_str(&result.id).expect("a call id")
}

/// Kind, turn sequence and call version of the call's feed events, in feed order.
async fn events(pool: &PgPool, call: Uuid) -> Vec<(CallEventKind, Option<i32>, i64)> {
    let rows: Vec<(i16, Option<i32>, i64)> = sqlx::query_as(
        "SELECT kind, turn_sequence, call_version FROM feed_events WHERE call_id = $1 ORDER BY id",
    )
    .bind(call)
    .fetch_all(pool)
    .await
    .expect("feed events");
    rows.into_iter()
        .map(|(kind, sequence, version)| {
            let kind = CallEventKind::try_from(i32::from(kind)).expect("a known kind");
            (kind, sequence, version)
        })
        .collect()
}

async fn stored_turns(pool: &PgPool, call: Uuid) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT sequence, text FROM turns WHERE call_id = $1 ORDER BY sequence")
        .bind(call)
        .fetch_all(pool)
        .await
        .expect("turns")
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct StoredCall {
    state: i16,
    version: i64,
    turn_count: i32,
    hangup_time: Option<chrono::DateTime<chrono::Utc>>,
}

async fn stored_call(pool: &PgPool, call: Uuid) -> StoredCall {
    sqlx::query_as("SELECT state, version, turn_count, hangup_time FROM calls WHERE id = $1")
        .bind(call)
        .fetch_one(pool)
        .await
        .expect("the call is stored")
}

fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a BadRequest")
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect()
}

#[tokio::test]
async fn a_call_is_opened_grows_turn_by_turn_and_completes_with_its_turns() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let pool = app.pool().await;

    let opened = open(&mut client, TENANT, record("live-1"))
        .await
        .expect("opens");
    assert_eq!(opened.outcome(), IngestOutcome::Created);
    assert_eq!((opened.version, opened.source_id.as_str()), (1, "live-1"));
    let id = call_id(&opened);
    let again = open(&mut client, TENANT, record("live-1"))
        .await
        .expect("opens again");
    assert_eq!(
        (again.outcome(), again.id.as_str()),
        (IngestOutcome::Unchanged, opened.id.as_str())
    );

    let first = append(&mut client, TENANT, by_id(&opened.id, turns(1..=2)))
        .await
        .expect("appends by id");
    let result = first.result.expect("a result");
    assert_eq!(result.outcome(), IngestOutcome::Updated);
    assert_eq!(
        (result.id.as_str(), result.version),
        (opened.id.as_str(), 1)
    );
    assert_eq!(first.turn_count, 2);
    let second = append(&mut client, TENANT, by_source("live-1", turns(3..=5)))
        .await
        .expect("appends by source id");
    assert_eq!(second.turn_count, 5);
    assert_eq!(
        second.result.expect("a result").version,
        1,
        "appends keep the version"
    );
    let events_before_retries = events(&pool, id).await;

    // Retries change nothing: the same turns, and the same open.
    let retry = append(&mut client, TENANT, by_source("live-1", turns(3..=5)))
        .await
        .expect("a retry is accepted");
    assert_eq!(
        retry.result.expect("a result").outcome(),
        IngestOutcome::Unchanged
    );
    assert_eq!(retry.turn_count, 5);
    let reopened = open(&mut client, TENANT, record("live-1"))
        .await
        .expect("opens again");
    assert_eq!(reopened.outcome(), IngestOutcome::Unchanged);
    assert_eq!(events(&pool, id).await, events_before_retries);
    assert_eq!(
        stored_call(&pool, id).await,
        StoredCall {
            state: CallState::InProgress as i16,
            version: 1,
            turn_count: 5,
            hangup_time: None,
        }
    );

    // The final record has no turns: the appended ones are kept.
    let hangup = at(DIAL_SECONDS + 60, 0);
    let completed = complete(&mut client, TENANT, record("live-1"), Some(hangup))
        .await
        .expect("completes");
    assert_eq!(completed.outcome(), IngestOutcome::Updated);
    assert_eq!(
        (completed.id.as_str(), completed.version),
        (opened.id.as_str(), 2)
    );
    assert_eq!(
        stored_call(&pool, id).await,
        StoredCall {
            state: CallState::Completed as i16,
            version: 2,
            turn_count: 5,
            hangup_time: chrono::DateTime::from_timestamp(DIAL_SECONDS + 60, 0),
        }
    );
    let expected_turns: Vec<(i32, String)> = (1..=5)
        .map(|sequence| (sequence, format!("line {sequence}")))
        .collect();
    assert_eq!(stored_turns(&pool, id).await, expected_turns);

    let mut expected_events = vec![(CallEventKind::CallCreated, None, 1)];
    expected_events
        .extend((1..=5).map(|sequence| (CallEventKind::TurnAppended, Some(sequence), 1)));
    expected_events.push((CallEventKind::CallCompleted, None, 2));
    assert_eq!(events(&pool, id).await, expected_events);

    // Completing again with the same record is a duplicate; the call is closed to changes of
    // the live kind.
    let duplicate = complete(&mut client, TENANT, record("live-1"), Some(hangup))
        .await
        .expect("completes again");
    assert_eq!(
        (duplicate.outcome(), duplicate.version),
        (IngestOutcome::Unchanged, 2)
    );
    let late = append(
        &mut client,
        TENANT,
        by_id(&opened.id, vec![turn(6, "late")]),
    )
    .await
    .expect_err("the call is completed");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let reopen = open(&mut client, TENANT, record("live-1"))
        .await
        .expect_err("the call is completed");
    assert_eq!(reopen.code(), Code::FailedPrecondition, "{reopen:?}");
    assert!(reopen.message().contains("already completed"), "{reopen:?}");
    assert_eq!(events(&pool, id).await, expected_events);
    assert_eq!(stored_turns(&pool, id).await, expected_turns);
}

#[tokio::test]
async fn appends_that_do_not_follow_the_stored_turns_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let pool = app.pool().await;

    // Opened with turns 1, 2 and 4 (a record's sequences may skip).
    let opened = open(
        &mut client,
        TENANT,
        CallRecord {
            turns: vec![turn(1, "one"), turn(2, "two"), turn(4, "four")],
            ..record("live-2")
        },
    )
    .await
    .expect("opens");
    let id = call_id(&opened);

    let refused = [
        // Filling the gap before the last stored turn.
        (
            vec![turn(3, "three")],
            Code::FailedPrecondition,
            "sequence: 3",
        ),
        // A stored sequence with other content.
        (
            vec![turn(2, "deux")],
            Code::FailedPrecondition,
            "sequence 2",
        ),
        (
            vec![turn(4, "four"), turn(5, "five"), turn(2, "two")],
            Code::InvalidArgument,
            "turns[2].sequence",
        ),
        (
            vec![turn(5, "five"), turn(5, "again")],
            Code::InvalidArgument,
            "turns[1].sequence",
        ),
        (
            vec![turn(0, "zero")],
            Code::InvalidArgument,
            "turns[0].sequence",
        ),
        (
            vec![Turn {
                speaker: Speaker::Unspecified as i32,
                ..turn(5, "nobody")
            }],
            Code::InvalidArgument,
            "turns[0].speaker",
        ),
        (Vec::new(), Code::InvalidArgument, "turns"),
    ];
    for (turns, code, names) in refused {
        let status = append(&mut client, TENANT, by_source("live-2", turns.clone()))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{turns:?}: {status:?}");
        if code == Code::InvalidArgument {
            assert_eq!(violated_fields(&status), [names], "{turns:?}");
        } else {
            assert!(status.message().contains(names), "{turns:?}: {status:?}");
        }
    }
    assert_eq!(stored_call(&pool, id).await.turn_count, 3);
    assert_eq!(
        stored_turns(&pool, id).await,
        [
            (1, "one".to_owned()),
            (2, "two".to_owned()),
            (4, "four".to_owned())
        ]
    );
    assert_eq!(
        events(&pool, id).await,
        [(CallEventKind::CallCreated, None, 1)]
    );

    // A retry that overlaps the stored turns appends only what is new.
    let overlapping = append(
        &mut client,
        TENANT,
        by_source("live-2", vec![turn(4, "four"), turn(5, "five")]),
    )
    .await
    .expect("appends");
    assert_eq!(overlapping.turn_count, 4);
    assert_eq!(
        events(&pool, id).await,
        [
            (CallEventKind::CallCreated, None, 1),
            (CallEventKind::TurnAppended, Some(5), 1)
        ]
    );
}

#[tokio::test]
async fn appends_are_limited_by_the_turns_a_call_may_have() {
    let app = spawn_app_with(|config| config.ingest.call.max_turns = 3).await;
    let mut client = app.ingest_client().await;
    let pool = app.pool().await;
    let opened = open(&mut client, TENANT, record("live-3"))
        .await
        .expect("opens");

    append(&mut client, TENANT, by_id(&opened.id, turns(1..=2)))
        .await
        .expect("within the limit");
    let status = append(&mut client, TENANT, by_id(&opened.id, turns(3..=4)))
        .await
        .expect_err("over the limit");
    assert_eq!(violated_fields(&status), ["turns"]);
    assert_eq!(stored_call(&pool, call_id(&opened)).await.turn_count, 2);
}

#[tokio::test]
async fn appends_reach_only_the_tenants_calls_in_progress() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let opened = open(&mut client, TENANT, record("live-4"))
        .await
        .expect("opens");

    let not_found = [
        (TENANT, by_id(&Uuid::now_v7().to_string(), turns(1..=1))),
        (TENANT, by_source("no-such-call", turns(1..=1))),
        ("globex", by_id(&opened.id, turns(1..=1))),
        ("globex", by_source("live-4", turns(1..=1))),
    ];
    for (tenant, request) in not_found {
        let status = append(&mut client, tenant, request.clone())
            .await
            .expect_err("not found");
        assert_eq!(
            status.code(),
            Code::NotFound,
            "{tenant} {request:?}: {status:?}"
        );
    }

    let status = append(&mut client, TENANT, by_id("not-a-uuid", turns(1..=1)))
        .await
        .expect_err("not an id");
    assert_eq!(violated_fields(&status), ["call_id"]);
    let status = append(&mut client, TENANT, by_source("", turns(1..=1)))
        .await
        .expect_err("no call named");
    assert_eq!(violated_fields(&status), ["source_call_id"]);

    // A call stored completed (by IngestCalls) takes no turns.
    let stored = client
        .ingest_calls(as_tenant(
            TENANT,
            IngestCallsRequest {
                calls: vec![record("finished")],
            },
        ))
        .await
        .expect("ingests")
        .into_inner()
        .results;
    assert_eq!(stored[0].outcome(), IngestOutcome::Created);
    let status = append(&mut client, TENANT, by_source("finished", turns(1..=1)))
        .await
        .expect_err("completed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = open(&mut client, TENANT, record("finished"))
        .await
        .expect_err("completed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn open_and_complete_insist_on_their_own_state() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let pool = app.pool().await;

    let status = open(
        &mut client,
        TENANT,
        CallRecord {
            state: CallState::Completed as i32,
            ..record("live-5")
        },
    )
    .await
    .expect_err("a completed state is refused");
    assert_eq!(violated_fields(&status), ["call.state"]);

    // Every violation is reported at once, the record's own under `call.`.
    let status = open(
        &mut client,
        TENANT,
        CallRecord {
            state: CallState::Completed as i32,
            callee: String::new(),
            ..record("live-5")
        },
    )
    .await
    .expect_err("refused");
    assert_eq!(violated_fields(&status), ["call.callee", "call.state"]);

    let status = complete(
        &mut client,
        TENANT,
        CallRecord {
            state: CallState::InProgress as i32,
            ..record("live-5")
        },
        None,
    )
    .await
    .expect_err("an in-progress state is refused");
    assert_eq!(violated_fields(&status), ["call.state"]);

    let status = complete(
        &mut client,
        TENANT,
        record("live-5"),
        Some(at(DIAL_SECONDS - 1, 0)),
    )
    .await
    .expect_err("hung up before dialling");
    assert_eq!(violated_fields(&status), ["hangup_time"]);

    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(&pool)
        .await
        .expect("counts");
    assert_eq!(calls, 0);
}

#[tokio::test]
async fn a_final_record_with_turns_replaces_the_appended_ones() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let pool = app.pool().await;
    let opened = open(&mut client, TENANT, record("live-6"))
        .await
        .expect("opens");
    let id = call_id(&opened);
    append(&mut client, TENANT, by_id(&opened.id, turns(1..=3)))
        .await
        .expect("appends");

    let final_record = CallRecord {
        turns: vec![turn(1, "final one"), turn(2, "final two")],
        ..record("live-6")
    };
    let completed = complete(&mut client, TENANT, final_record, None)
        .await
        .expect("completes");
    assert_eq!(
        (completed.outcome(), completed.version),
        (IngestOutcome::Updated, 2)
    );
    assert_eq!(
        stored_turns(&pool, id).await,
        [(1, "final one".to_owned()), (2, "final two".to_owned())]
    );
    let stored = stored_call(&pool, id).await;
    assert_eq!(
        (stored.state, stored.turn_count),
        (CallState::Completed as i16, 2)
    );
    assert_eq!(
        events(&pool, id).await.last(),
        Some(&(CallEventKind::CallCompleted, None, 2))
    );
}

#[tokio::test]
async fn completing_a_call_never_opened_creates_it_completed() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let pool = app.pool().await;

    let hangup = at(DIAL_SECONDS + 30, 0);
    let created = complete(&mut client, TENANT, record("live-7"), Some(hangup))
        .await
        .expect("completes");
    assert_eq!(
        (created.outcome(), created.version),
        (IngestOutcome::Created, 1)
    );
    let id = call_id(&created);
    assert_eq!(
        stored_call(&pool, id).await,
        StoredCall {
            state: CallState::Completed as i16,
            version: 1,
            turn_count: 0,
            hangup_time: chrono::DateTime::from_timestamp(DIAL_SECONDS + 30, 0),
        }
    );
    assert_eq!(
        events(&pool, id).await,
        [(CallEventKind::CallCreated, None, 1)]
    );

    let again = complete(&mut client, TENANT, record("live-7"), Some(hangup))
        .await
        .expect("completes again");
    assert_eq!(again.outcome(), IngestOutcome::Unchanged);
}

/// Appends racing a completion: each is either stored in the completed call or refused, never
/// acknowledged and then lost.
#[tokio::test]
async fn an_acknowledged_append_is_never_lost_to_a_concurrent_completion() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let pool = app.pool().await;

    for round in 0..5 {
        let source_call_id = format!("race-{round}");
        let opened = open(&mut client, TENANT, record(&source_call_id))
            .await
            .expect("opens");
        let (started, appending) = oneshot::channel();
        let mut appender = app.ingest_client().await;
        let appender_call = source_call_id.clone();
        let appends = tokio::spawn(async move {
            let mut started = Some(started);
            let mut acknowledged = Vec::new();
            for sequence in 1..=200 {
                let request = by_source(&appender_call, vec![turn(sequence, "racing")]);
                match append(&mut appender, TENANT, request).await {
                    Ok(_) => acknowledged.push(sequence),
                    Err(status) => {
                        assert!(
                            matches!(status.code(), Code::Aborted | Code::FailedPrecondition),
                            "{status:?}"
                        );
                        return acknowledged;
                    }
                }
                if sequence == 3
                    && let Some(started) = started.take()
                {
                    let _ = started.send(());
                }
            }
            acknowledged
        });
        appending.await.expect("the appender starts");
        let completed = complete(&mut client, TENANT, record(&source_call_id), None)
            .await
            .expect("completes");
        assert_eq!(completed.outcome(), IngestOutcome::Updated);
        let acknowledged = appends.await.expect("the appender finishes");

        let stored: Vec<i32> = stored_turns(&pool, call_id(&opened))
            .await
            .into_iter()
            .map(|(sequence, _)| sequence)
            .collect();
        assert_eq!(stored, acknowledged, "round {round}");
        assert!(acknowledged.len() >= 3);
    }
}
