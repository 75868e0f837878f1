//! WatchCalls behaviour through the generated client: starts, views, filters, heartbeats, bad
//! requests, retention, live turns, shutdown and resuming on another server. The delivery
//! guarantees under concurrency are in `watch_delivery.rs`, which shares [`support`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use callstore::proto::{
    AppendTurnsRequest, CallEventKind, CallOutcome, CallRecord, CallView, CompleteCallRequest,
    Int64Range, Level, OpenCallRequest, Speaker, Tag, Task, Turn, UpsertLevelsRequest,
    UpsertTagsRequest, UpsertTasksRequest, WatchCallsRequest, WatchFilter,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

use crate::helpers::{DEADLINE, as_tenant, config_for, spawn_app, spawn_app_with, start};

use support::{
    FeedEvent, OTHER_TENANT, TENANT, at, call, changed, collect_events, collect_until, error_info,
    events_of, feed_order, from_cursor, from_now, ingest_calls, ingest_generated, millis,
    next_event, next_message, read_until_error, refusal, snapshot, violated_fields, watch,
    watch_client, with_level, with_tags,
};

/// What both test files share: clients, requests, reading streams with a deadline, the feed
/// order as the database has it, and calls to ingest.
pub(crate) mod support {
    use std::time::Duration;

    use callstore::proto::ingest_service_client::IngestServiceClient;
    use callstore::proto::watch_calls_request::Start;
    use callstore::proto::watch_service_client::WatchServiceClient;
    use callstore::proto::{
        CallEventKind, CallRecord, IngestCallsRequest, IngestItemResult, IngestOutcome, Level, Tag,
        WatchCallsRequest, WatchCallsResponse,
    };
    use prost_types::Timestamp;
    use sqlx::PgPool;
    use tonic::transport::{Channel, Endpoint};
    use tonic::{Request, Status, Streaming};
    use tonic_types::StatusExt as _;
    use uuid::Uuid;

    use crate::helpers::{DEADLINE, TestApp, as_tenant};

    /// The tenant the tests watch.
    pub(crate) const TENANT: &str = "watcher";
    /// Another tenant, whose calls and cursors must not reach [`TENANT`]'s streams.
    pub(crate) const OTHER_TENANT: &str = "bystander";
    /// Dial time of the generated calls.
    pub(crate) const DIAL_SECONDS: i64 = 1_744_597_153;

    pub(crate) type WatchClient = WatchServiceClient<Channel>;
    pub(crate) type IngestClient = IngestServiceClient<Channel>;
    pub(crate) type Stream = Streaming<WatchCallsResponse>;

    /// A WatchService client on a connection of its own.
    pub(crate) async fn watch_client(app: &TestApp) -> WatchClient {
        WatchServiceClient::new(app.channel().await)
    }

    /// A WatchService client whose HTTP/2 stream window is 1 KiB: the client buffers only a
    /// few messages it has not read, so a consumer that stops or slows down pushes back on the
    /// server at once instead of after the megabytes hyper's default window holds.
    pub(crate) async fn narrow_watch_client(app: &TestApp) -> WatchClient {
        let channel = Endpoint::from_shared(app.endpoint())
            .expect("valid endpoint")
            .initial_stream_window_size(1024)
            .initial_connection_window_size(65_535)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connects to the server");
        WatchServiceClient::new(channel)
    }

    pub(crate) fn from_now() -> WatchCallsRequest {
        WatchCallsRequest {
            start: Some(Start::FromNow(true)),
            ..WatchCallsRequest::default()
        }
    }

    pub(crate) fn from_cursor(cursor: &str) -> WatchCallsRequest {
        WatchCallsRequest {
            start: Some(Start::FromCursor(cursor.to_owned())),
            ..WatchCallsRequest::default()
        }
    }

    pub(crate) fn snapshot() -> WatchCallsRequest {
        WatchCallsRequest {
            start: Some(Start::Snapshot(true)),
            ..WatchCallsRequest::default()
        }
    }

    pub(crate) fn millis(milliseconds: i32) -> prost_types::Duration {
        prost_types::Duration {
            seconds: 0,
            nanos: milliseconds * 1_000_000,
        }
    }

    /// Starts a stream for `tenant`; fails the test if the server refuses it.
    pub(crate) async fn watch(
        client: &mut WatchClient,
        tenant: &str,
        request: WatchCallsRequest,
    ) -> Stream {
        tokio::time::timeout(DEADLINE, client.watch_calls(as_tenant(tenant, request)))
            .await
            .expect("the stream starts within the deadline")
            .expect("the stream starts")
            .into_inner()
    }

    /// The status a request is refused with, whether the server refuses the call itself or ends
    /// the stream with it before any message. `tenant` None sends no tenant header.
    pub(crate) async fn refusal(
        client: &mut WatchClient,
        tenant: Option<&str>,
        request: WatchCallsRequest,
    ) -> Status {
        let request = match tenant {
            Some(tenant) => as_tenant(tenant, request),
            None => Request::new(request),
        };
        tokio::time::timeout(DEADLINE, async {
            match client.watch_calls(request).await {
                Err(status) => status,
                Ok(response) => match response.into_inner().message().await {
                    Err(status) => status,
                    Ok(message) => panic!("the request was accepted: {message:?}"),
                },
            }
        })
        .await
        .expect("answered within the deadline")
    }

    /// The next message, heartbeats included.
    pub(crate) async fn next_message(stream: &mut Stream) -> WatchCallsResponse {
        tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("a message within the deadline")
            .expect("the stream goes on")
            .expect("the stream does not end")
    }

    /// The next message that is not a heartbeat.
    pub(crate) async fn next_event(stream: &mut Stream) -> WatchCallsResponse {
        loop {
            let message = next_message(stream).await;
            if message.kind() != CallEventKind::Heartbeat {
                return message;
            }
        }
    }

    /// Reads messages other than heartbeats until `done` holds for those read, within the
    /// deadline.
    pub(crate) async fn collect_until(
        stream: &mut Stream,
        mut done: impl FnMut(&[WatchCallsResponse]) -> bool,
    ) -> Vec<WatchCallsResponse> {
        let mut messages = Vec::new();
        let finished = tokio::time::timeout(DEADLINE, async {
            while !done(&messages) {
                let message = stream
                    .message()
                    .await
                    .expect("the stream goes on")
                    .expect("the stream does not end");
                if message.kind() != CallEventKind::Heartbeat {
                    messages.push(message);
                }
            }
        })
        .await;
        assert!(
            finished.is_ok(),
            "the condition did not hold within {DEADLINE:?}; received {:?}",
            events_of(&messages)
        );
        messages
    }

    /// Reads `count` messages other than heartbeats.
    pub(crate) async fn collect_events(
        stream: &mut Stream,
        count: usize,
    ) -> Vec<WatchCallsResponse> {
        collect_until(stream, |messages| messages.len() >= count).await
    }

    /// Reads every message (heartbeats included) until the stream ends with an error.
    pub(crate) async fn read_until_error(stream: &mut Stream) -> (Vec<WatchCallsResponse>, Status) {
        let mut messages = Vec::new();
        let ended = tokio::time::timeout(DEADLINE, async {
            loop {
                match stream.message().await {
                    Ok(Some(message)) => messages.push(message),
                    Ok(None) => panic!("the stream ended without a status"),
                    Err(status) => return status,
                }
            }
        })
        .await;
        match ended {
            Ok(status) => (messages, status),
            Err(_) => panic!(
                "the stream did not end within {DEADLINE:?}; received {:?}",
                events_of(&messages)
            ),
        }
    }

    /// The google.rpc.ErrorInfo of a status.
    pub(crate) fn error_info(status: &Status) -> tonic_types::ErrorInfo {
        status
            .get_details_error_info()
            .unwrap_or_else(|| panic!("an ErrorInfo in {status:?}"))
    }

    /// The fields of the BadRequest of an INVALID_ARGUMENT status.
    pub(crate) fn violated_fields(status: &Status) -> Vec<String> {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("a BadRequest in {status:?}"))
            .field_violations
            .into_iter()
            .map(|violation| violation.field)
            .collect()
    }

    /// One event as both the stream and the `feed_events` table can say it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub(crate) struct FeedEvent {
        pub call_id: Uuid,
        pub call_version: i64,
        pub kind: CallEventKind,
        pub turn_sequence: Option<i32>,
    }

    impl FeedEvent {
        /// The event a message reports; fails the test for heartbeats and snapshot messages.
        pub(crate) fn of(message: &WatchCallsResponse) -> Self {
            let kind = message.kind();
            assert!(
                !matches!(
                    kind,
                    CallEventKind::Unspecified
                        | CallEventKind::Heartbeat
                        | CallEventKind::Snapshot
                        | CallEventKind::SnapshotComplete
                ),
                "not a feed event: {message:?}"
            );
            let turn_sequence = if kind == CallEventKind::TurnAppended {
                Some(message.turn.as_ref().expect("a turn").sequence)
            } else {
                None
            };
            Self {
                call_id: Uuid::parse_str(&message.call_id)
                    .unwrap_or_else(|_| panic!("a call id in {message:?}")),
                call_version: message.call_version,
                kind,
                turn_sequence,
            }
        }
    }

    pub(crate) fn events_of(messages: &[WatchCallsResponse]) -> Vec<FeedEvent> {
        messages.iter().map(FeedEvent::of).collect()
    }

    /// The tenant's events in feed order, as the database has them.
    pub(crate) async fn feed_order(pool: &PgPool, tenant: &str) -> Vec<FeedEvent> {
        let rows: Vec<(Uuid, i64, i16, Option<i32>)> = sqlx::query_as(
            "SELECT call_id, call_version, kind, turn_sequence FROM feed_events
             WHERE tenant_id = $1 ORDER BY tx_id, id",
        )
        .bind(tenant)
        .fetch_all(pool)
        .await
        .expect("reads the feed");
        rows.into_iter()
            .map(|(call_id, call_version, kind, turn_sequence)| FeedEvent {
                call_id,
                call_version,
                kind: CallEventKind::try_from(i32::from(kind)).expect("a known kind"),
                turn_sequence,
            })
            .collect()
    }

    /// Reads events into `received` until it holds as many as the tenant's feed (read once:
    /// call it after the writes), then checks that it is the feed, in order.
    pub(crate) async fn read_to_feed_end(
        stream: &mut Stream,
        pool: &PgPool,
        tenant: &str,
        received: &mut Vec<FeedEvent>,
    ) {
        let feed = feed_order(pool, tenant).await;
        let read = tokio::time::timeout(DEADLINE, async {
            while received.len() < feed.len() {
                let message = next_message(stream).await;
                if message.kind() != CallEventKind::Heartbeat {
                    received.push(FeedEvent::of(&message));
                }
            }
        })
        .await;
        let first_difference = received
            .iter()
            .zip(&feed)
            .position(|(received, stored)| received != stored);
        assert!(
            read.is_ok() && first_difference.is_none() && received.len() == feed.len(),
            "the stream is not the feed: first difference at {first_difference:?}\n\
             received ({}): {received:#?}\nfeed ({}): {feed:#?}",
            received.len(),
            feed.len()
        );
    }

    /// Waits until the tenant's committed feed has at least `count` events.
    pub(crate) async fn wait_for_feed_len(pool: &PgPool, tenant: &str, count: usize) {
        let reached = tokio::time::timeout(DEADLINE, async {
            loop {
                let stored: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM feed_events WHERE tenant_id = $1")
                        .bind(tenant)
                        .fetch_one(pool)
                        .await
                        .expect("counts the feed");
                if usize::try_from(stored).expect("a count") >= count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "the feed did not reach {count} events");
    }

    pub(crate) fn at(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    /// A minimal valid call.
    pub(crate) fn call(source_call_id: &str) -> CallRecord {
        CallRecord {
            source_call_id: source_call_id.to_owned(),
            callee: "13800000000".to_owned(),
            dial_time: Some(at(DIAL_SECONDS)),
            ..CallRecord::default()
        }
    }

    /// The `index`th generated call of `prefix`, its callee varying with the index.
    pub(crate) fn generated_call(prefix: &str, index: usize) -> CallRecord {
        CallRecord {
            callee: format!("138{:08}", index % 100_000_000),
            dial_time: Some(at(DIAL_SECONDS + i64::try_from(index).expect("small"))),
            ..call(&format!("{prefix}-{index}"))
        }
    }

    /// The record with changed content, so storing it again makes a new version.
    pub(crate) fn changed(record: &CallRecord, revision: usize) -> CallRecord {
        CallRecord {
            end_reason: format!("revision {revision}"),
            ..record.clone()
        }
    }

    /// The record carrying tags, named by their source ids (the names are the ids uppercased).
    pub(crate) fn with_tags(record: CallRecord, source_tag_ids: &[&str]) -> CallRecord {
        CallRecord {
            tags: source_tag_ids
                .iter()
                .map(|id| Tag {
                    source_tag_id: (*id).to_owned(),
                    name: id.to_uppercase(),
                    ..Tag::default()
                })
                .collect(),
            ..record
        }
    }

    /// The record carrying a level, named by its source id uppercased.
    pub(crate) fn with_level(record: CallRecord, source_level_id: &str) -> CallRecord {
        CallRecord {
            level: Some(Level {
                source_level_id: source_level_id.to_owned(),
                name: source_level_id.to_uppercase(),
                ..Level::default()
            }),
            ..record
        }
    }

    /// Ingests calls in one request; fails the test if any is rejected.
    pub(crate) async fn ingest_calls(
        client: &mut IngestClient,
        tenant: &str,
        calls: Vec<CallRecord>,
    ) -> Vec<IngestItemResult> {
        let results = client
            .ingest_calls(as_tenant(tenant, IngestCallsRequest { calls }))
            .await
            .expect("the batch is ingested")
            .into_inner()
            .results;
        for result in &results {
            assert_ne!(
                result.outcome(),
                IngestOutcome::Rejected,
                "a call was refused: {result:?}"
            );
        }
        results
    }

    /// Ingests `count` generated calls of `prefix`, `per_request` a request, one after another.
    pub(crate) async fn ingest_generated(
        client: &mut IngestClient,
        tenant: &str,
        prefix: &str,
        count: usize,
        per_request: usize,
    ) -> Vec<IngestItemResult> {
        let calls: Vec<CallRecord> = (0..count)
            .map(|index| generated_call(prefix, index))
            .collect();
        let mut results = Vec::with_capacity(count);
        for chunk in calls.chunks(per_request.max(1)) {
            results.extend(ingest_calls(client, tenant, chunk.to_vec()).await);
        }
        results
    }

    /// The server id of an ingested call.
    pub(crate) fn id_of(result: &IngestItemResult) -> Uuid {
        Uuid::parse_str(&result.id).expect("a call id")
    }
}

#[tokio::test]
async fn from_now_sends_created_then_updated_events_in_the_requested_view() {
    let app = spawn_app().await;
    let pool = app.pool().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;

    // Stored before the stream starts: not sent.
    ingest_calls(&mut ingest, TENANT, vec![call("before")]).await;
    let mut basic = watch(&mut client, TENANT, from_now()).await;

    let records = vec![
        with_level(with_tags(call("w-1"), &["vip", "price"]), "a"),
        with_level(with_tags(call("w-2"), &["vip"]), "b"),
        call("w-3"),
    ];
    let by_source: HashMap<String, CallRecord> = records
        .iter()
        .map(|record| (record.source_call_id.clone(), record.clone()))
        .collect();
    // Another tenant's calls never reach this tenant's stream.
    ingest_calls(&mut ingest, OTHER_TENANT, vec![call("w-1")]).await;
    let results = ingest_calls(&mut ingest, TENANT, records.clone()).await;
    let created = collect_events(&mut basic, 3).await;

    let feed = feed_order(&pool, TENANT).await;
    assert_eq!(events_of(&created), feed[1..], "the events after `before`");
    let ids: HashSet<String> = results.iter().map(|result| result.id.clone()).collect();
    let mut cursors = HashSet::new();
    for message in &created {
        assert_eq!(message.kind(), CallEventKind::CallCreated, "{message:?}");
        assert!(ids.contains(&message.call_id), "{message:?}");
        assert_eq!(message.call_version, 1);
        assert!(message.event_time.is_some(), "{message:?}");
        assert!(cursors.insert(message.cursor.clone()), "a new cursor each");
        let record = message.call.as_ref().expect("the call");
        assert_eq!(
            (record.id.as_str(), record.version),
            (message.call_id.as_str(), 1)
        );
        let sent = &by_source[&record.source_call_id];
        assert_eq!(record.callee, sent.callee);
        // BASIC: ids, not objects.
        assert_eq!(record.tag_ids.len(), sent.tags.len(), "{record:?}");
        assert!(record.tags.is_empty(), "{record:?}");
        assert_eq!(
            record.level_id.is_empty(),
            sent.level.is_none(),
            "{record:?}"
        );
        assert!(record.level.is_none(), "{record:?}");
    }

    // A changed re-delivery is an update to version 2.
    let updated_record = changed(&by_source["w-2"], 1);
    let updated_result = ingest_calls(&mut ingest, TENANT, vec![updated_record.clone()]).await;
    let updated = next_event(&mut basic).await;
    assert_eq!(updated.kind(), CallEventKind::CallUpdated, "{updated:?}");
    assert_eq!(
        (updated.call_id.as_str(), updated.call_version),
        (updated_result[0].id.as_str(), 2)
    );
    let record = updated.call.as_ref().expect("the call");
    assert_eq!(
        (record.version, record.end_reason.as_str()),
        (2, "revision 1")
    );
    // An unchanged re-delivery is no event: the next one is the next change.
    ingest_calls(&mut ingest, TENANT, vec![updated_record]).await;
    ingest_calls(&mut ingest, TENANT, vec![call("w-4")]).await;
    let next = next_event(&mut basic).await;
    assert_eq!(
        (
            next.kind(),
            next.call
                .as_ref()
                .expect("the call")
                .source_call_id
                .as_str()
        ),
        (CallEventKind::CallCreated, "w-4")
    );

    // FULL, resumed after the first event: the same events, with tag and level objects.
    let mut full = watch(
        &mut client,
        TENANT,
        WatchCallsRequest {
            view: CallView::Full as i32,
            ..from_cursor(&created[0].cursor)
        },
    )
    .await;
    let replayed = collect_events(&mut full, 4).await;
    let mut expected = events_of(&created[1..]);
    expected.push(FeedEvent::of(&updated));
    expected.push(FeedEvent::of(&next));
    assert_eq!(events_of(&replayed), expected);
    for message in &replayed {
        let record = message.call.as_ref().expect("the call");
        let sent = &by_source
            .get(&record.source_call_id)
            .cloned()
            .unwrap_or_else(|| call(&record.source_call_id));
        let mut names: Vec<&str> = record.tags.iter().map(|tag| tag.name.as_str()).collect();
        names.sort_unstable();
        let mut sent_names: Vec<&str> = sent.tags.iter().map(|tag| tag.name.as_str()).collect();
        sent_names.sort_unstable();
        assert_eq!(names, sent_names, "FULL embeds the tags: {record:?}");
        assert_eq!(
            record
                .level
                .as_ref()
                .map(|level| level.source_level_id.as_str()),
            sent.level
                .as_ref()
                .map(|level| level.source_level_id.as_str()),
            "FULL embeds the level: {record:?}"
        );
    }
}

/// Streams each filtered on one attribute see the matching calls' events and nothing else.
/// Every stream's last expected event comes after every call that must not match, so a leak
/// shows as an unexpected event before it.
#[tokio::test]
async fn each_filter_passes_the_matching_calls_only() {
    let app = spawn_app().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;

    #[derive(Clone, Copy)]
    struct Shape {
        task: &'static str,
        tags: &'static [&'static str],
        level: &'static str,
        score: Option<i64>,
        outcome: CallOutcome,
    }
    let miss = Shape {
        task: "t-b",
        tags: &["tag-b"],
        level: "l-b",
        score: Some(10),
        outcome: CallOutcome::NoAnswer,
    };
    let record = |source_call_id: &str, shape: &Shape| CallRecord {
        source_task_id: shape.task.to_owned(),
        score: shape.score,
        outcome: shape.outcome as i32,
        ..with_level(with_tags(call(source_call_id), shape.tags), shape.level)
    };

    let hit = Shape {
        task: "t-a",
        tags: &["tag-a", "tag-c"],
        level: "l-a",
        score: Some(60),
        outcome: CallOutcome::Answered,
    };
    // The catalog rows the filters name exist before the streams start; upserted on their own,
    // they write no feed event a stream could start behind.
    let task_a = ingest
        .upsert_tasks(as_tenant(
            TENANT,
            UpsertTasksRequest {
                tasks: vec![Task {
                    source_task_id: "t-a".to_owned(),
                    name: "T-A".to_owned(),
                    ..Task::default()
                }],
            },
        ))
        .await
        .expect("upserts the task")
        .into_inner()
        .results[0]
        .id
        .clone();
    let tag_a = ingest
        .upsert_tags(as_tenant(
            TENANT,
            UpsertTagsRequest {
                tags: vec![Tag {
                    source_tag_id: "tag-a".to_owned(),
                    name: "TAG-A".to_owned(),
                    enabled: true,
                    ..Tag::default()
                }],
            },
        ))
        .await
        .expect("upserts the tag")
        .into_inner()
        .results[0]
        .id
        .clone();
    let level_a = ingest
        .upsert_levels(as_tenant(
            TENANT,
            UpsertLevelsRequest {
                levels: vec![Level {
                    source_level_id: "l-a".to_owned(),
                    name: "L-A".to_owned(),
                    ..Level::default()
                }],
            },
        ))
        .await
        .expect("upserts the level")
        .into_inner()
        .results[0]
        .id
        .clone();
    for id in [&task_a, &tag_a, &level_a] {
        Uuid::parse_str(id).unwrap_or_else(|_| panic!("a catalog id, not {id:?}"));
    }

    let filters = [
        (
            "task",
            WatchFilter {
                task_ids: vec![task_a.clone()],
                ..WatchFilter::default()
            },
        ),
        (
            "tag",
            WatchFilter {
                tag_ids: vec![Uuid::now_v7().to_string(), tag_a],
                ..WatchFilter::default()
            },
        ),
        (
            "level",
            WatchFilter {
                level_ids: vec![level_a],
                ..WatchFilter::default()
            },
        ),
        (
            "score",
            WatchFilter {
                score_range: Some(Int64Range {
                    min: Some(50),
                    max: Some(80),
                }),
                ..WatchFilter::default()
            },
        ),
        (
            "outcome",
            WatchFilter {
                outcomes: vec![CallOutcome::Answered as i32, CallOutcome::Busy as i32],
                ..WatchFilter::default()
            },
        ),
        (
            "kind",
            WatchFilter {
                kinds: vec![CallEventKind::CallUpdated as i32],
                ..WatchFilter::default()
            },
        ),
        (
            "task and outcome",
            WatchFilter {
                task_ids: vec![task_a],
                outcomes: vec![CallOutcome::Answered as i32],
                ..WatchFilter::default()
            },
        ),
    ];
    let mut streams = Vec::new();
    for (name, filter) in filters {
        let stream = watch(
            &mut client,
            TENANT,
            WatchCallsRequest {
                filter: Some(filter),
                ..from_now()
            },
        )
        .await;
        streams.push((name, stream));
    }

    // One request each, so the feed has them in this order.
    let calls = [
        ("miss", miss),
        (
            "unscored",
            Shape {
                score: None,
                tags: &[],
                ..miss
            },
        ),
        (
            "score-80",
            Shape {
                score: Some(80),
                ..miss
            },
        ),
        (
            "score-49",
            Shape {
                score: Some(49),
                ..miss
            },
        ),
        (
            "task-hit",
            Shape {
                task: "t-a",
                ..miss
            },
        ),
        (
            "tag-hit",
            Shape {
                tags: &["tag-c", "tag-a"],
                ..miss
            },
        ),
        (
            "level-hit",
            Shape {
                level: "l-a",
                ..miss
            },
        ),
        (
            "score-hit",
            Shape {
                score: Some(50),
                ..miss
            },
        ),
        (
            "outcome-hit",
            Shape {
                outcome: CallOutcome::Answered,
                ..miss
            },
        ),
        (
            "task-hit-not-answered",
            Shape {
                task: "t-a",
                outcome: CallOutcome::Busy,
                ..miss
            },
        ),
    ];
    let mut records = HashMap::new();
    let mut ids = HashMap::new();
    for (name, shape) in &calls {
        let sent = record(name, shape);
        let result = ingest_calls(&mut ingest, TENANT, vec![sent.clone()]).await;
        ids.insert(*name, result[0].id.clone());
        records.insert(*name, sent);
    }
    ingest_calls(&mut ingest, TENANT, vec![changed(&records["miss"], 1)]).await;
    let all = record(
        "all",
        &Shape {
            score: Some(79),
            ..hit
        },
    );
    ids.insert(
        "all",
        ingest_calls(&mut ingest, TENANT, vec![all.clone()]).await[0]
            .id
            .clone(),
    );
    ingest_calls(&mut ingest, TENANT, vec![changed(&all, 1)]).await;

    let created = |name: &str| (ids[name].clone(), CallEventKind::CallCreated);
    let updated = |name: &str| (ids[name].clone(), CallEventKind::CallUpdated);
    let expected: HashMap<&str, Vec<(String, CallEventKind)>> = HashMap::from([
        (
            "task",
            vec![created("task-hit"), created("task-hit-not-answered")],
        ),
        ("tag", vec![created("tag-hit")]),
        ("level", vec![created("level-hit")]),
        ("score", vec![created("score-hit")]),
        (
            "outcome",
            vec![created("outcome-hit"), created("task-hit-not-answered")],
        ),
        ("kind", vec![updated("miss")]),
        ("task and outcome", vec![]),
    ]);
    let last = updated("all");
    for (name, mut stream) in streams {
        let received = collect_until(&mut stream, |messages| {
            messages
                .last()
                .is_some_and(|message| (message.call_id.clone(), message.kind()) == last)
        })
        .await;
        let received: Vec<(String, CallEventKind)> = received
            .iter()
            .map(|message| (message.call_id.clone(), message.kind()))
            .collect();
        let mut wanted = expected[name].clone();
        if name != "kind" {
            wanted.push(created("all"));
        }
        wanted.push(last.clone());
        assert_eq!(received, wanted, "filter {name}");
    }
}

/// A stream whose filter matches nothing still gets heartbeats, and their cursor moves past the
/// events it skipped: resuming from it does not send them again.
#[tokio::test]
async fn heartbeats_move_past_filtered_events_and_resume_after_them() {
    let app = spawn_app().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;

    let mut filtered = watch(
        &mut client,
        TENANT,
        WatchCallsRequest {
            filter: Some(WatchFilter {
                task_ids: vec![Uuid::now_v7().to_string()],
                ..WatchFilter::default()
            }),
            heartbeat_interval: Some(millis(100)),
            ..from_now()
        },
    )
    .await;
    let mut reference = watch(&mut client, TENANT, from_now()).await;
    let first = next_message(&mut filtered).await;
    assert_eq!(first.kind(), CallEventKind::Heartbeat, "{first:?}");
    assert!(!first.cursor.is_empty(), "a heartbeat carries a cursor");
    assert!(
        first.call.is_none() && first.call_id.is_empty(),
        "{first:?}"
    );

    let skipped = ingest_generated(&mut ingest, TENANT, "skipped", 6, 2).await;
    let seen = collect_events(&mut reference, skipped.len()).await;
    let seen_at = tokio::time::Instant::now();

    // The heartbeats queued before the reference stream saw the events may carry older
    // cursors; one that arrives a few intervals later was made after the filtered stream had
    // the same batches (both streams follow one tailer), so it is past them all.
    let settled = tokio::time::timeout(DEADLINE, async {
        loop {
            let message = filtered
                .message()
                .await
                .expect("the stream goes on")
                .expect("the stream does not end");
            assert_eq!(message.kind(), CallEventKind::Heartbeat, "{message:?}");
            assert!(message.call.is_none() && message.call_id.is_empty());
            if seen_at.elapsed() >= Duration::from_millis(350) {
                return message;
            }
        }
    })
    .await
    .expect("heartbeats keep coming");
    assert_ne!(
        settled.cursor, first.cursor,
        "the cursor moved past the events"
    );

    let mut resumed = watch(&mut client, TENANT, from_cursor(&settled.cursor)).await;
    let after = ingest_calls(&mut ingest, TENANT, vec![call("after")]).await;
    let next = next_event(&mut resumed).await;
    assert_eq!(
        (next.kind(), next.call_id.as_str()),
        (CallEventKind::CallCreated, after[0].id.as_str()),
        "the first event after the heartbeat's cursor is the new call, not one of {:?}",
        events_of(&seen)
    );
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;
    ingest_calls(&mut ingest, TENANT, vec![call("c-1")]).await;

    // A valid cursor of TENANT: where its (empty-tailed) snapshot ends.
    let mut snapshot_stream = watch(&mut client, TENANT, snapshot()).await;
    let complete = next_event(&mut snapshot_stream).await;
    let complete = if complete.kind() == CallEventKind::Snapshot {
        next_event(&mut snapshot_stream).await
    } else {
        complete
    };
    assert_eq!(
        complete.kind(),
        CallEventKind::SnapshotComplete,
        "{complete:?}"
    );
    let cursor = complete.cursor.clone();
    assert!(!cursor.is_empty());
    drop(snapshot_stream);

    let no_start = refusal(&mut client, Some(TENANT), WatchCallsRequest::default()).await;
    assert_eq!(violated_fields(&no_start), ["start"]);

    let no_tenant = refusal(&mut client, None, from_now()).await;
    assert_eq!(violated_fields(&no_tenant), ["metadata.x-tenant-id"]);

    let flipped_at = |position: usize| {
        let mut bytes = cursor.clone().into_bytes();
        bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("ASCII")
    };
    for bad in [
        "not-a-cursor".to_owned(),
        "!!!".to_owned(),
        flipped_at(0),
        flipped_at(cursor.len() / 2),
        format!("{cursor}AAAA"),
    ] {
        let status = refusal(&mut client, Some(TENANT), from_cursor(&bad)).await;
        assert_eq!(violated_fields(&status), ["from_cursor"], "cursor {bad:?}");
    }
    let foreign = refusal(&mut client, Some(OTHER_TENANT), from_cursor(&cursor)).await;
    assert_eq!(
        violated_fields(&foreign),
        ["from_cursor"],
        "another tenant's cursor"
    );

    let filtered = |filter: WatchFilter| WatchCallsRequest {
        filter: Some(filter),
        ..from_now()
    };
    let bad_filters = [
        (
            WatchFilter {
                task_ids: vec!["not-a-uuid".to_owned()],
                ..WatchFilter::default()
            },
            "filter.task_ids[0]",
        ),
        (
            WatchFilter {
                tag_ids: vec![Uuid::now_v7().to_string(), "tag-1".to_owned()],
                ..WatchFilter::default()
            },
            "filter.tag_ids[1]",
        ),
        (
            WatchFilter {
                level_ids: vec!["A".to_owned()],
                ..WatchFilter::default()
            },
            "filter.level_ids[0]",
        ),
        (
            WatchFilter {
                kinds: vec![
                    CallEventKind::CallCreated as i32,
                    CallEventKind::Heartbeat as i32,
                ],
                ..WatchFilter::default()
            },
            "filter.kinds[1]",
        ),
        (
            WatchFilter {
                kinds: vec![CallEventKind::Snapshot as i32],
                ..WatchFilter::default()
            },
            "filter.kinds[0]",
        ),
        (
            WatchFilter {
                kinds: vec![CallEventKind::Unspecified as i32],
                ..WatchFilter::default()
            },
            "filter.kinds[0]",
        ),
    ];
    for (filter, field) in bad_filters {
        let status = refusal(&mut client, Some(TENANT), filtered(filter.clone())).await;
        assert_eq!(violated_fields(&status), [field], "{filter:?}");
    }

    for interval in [
        millis(1),
        millis(99),
        prost_types::Duration {
            seconds: 3601,
            nanos: 0,
        },
    ] {
        let status = refusal(
            &mut client,
            Some(TENANT),
            WatchCallsRequest {
                heartbeat_interval: Some(interval),
                ..from_now()
            },
        )
        .await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{interval:?}: {status:?}"
        );
    }

    // The bounds themselves are accepted.
    for interval in [
        millis(100),
        prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        },
    ] {
        watch(
            &mut client,
            TENANT,
            WatchCallsRequest {
                heartbeat_interval: Some(interval),
                ..from_now()
            },
        )
        .await;
    }
}

/// Cursors of every kind resume at once, with nothing written since they were taken: a
/// heartbeat's on an empty feed, an event's, and a snapshot's end.
#[tokio::test]
async fn cursors_resume_on_an_idle_feed() {
    let app = spawn_app().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;
    let resume = |client: &mut support::WatchClient, name: &'static str, cursor: String| {
        let mut client = client.clone();
        async move {
            let stream = client
                .watch_calls(as_tenant(TENANT, from_cursor(&cursor)))
                .await
                .unwrap_or_else(|status| panic!("the {name} cursor was refused: {status:?}"))
                .into_inner();
            (name, stream)
        }
    };

    let mut live = watch(
        &mut client,
        TENANT,
        WatchCallsRequest {
            heartbeat_interval: Some(millis(100)),
            ..from_now()
        },
    )
    .await;
    let heartbeat = next_message(&mut live).await;
    assert_eq!(heartbeat.kind(), CallEventKind::Heartbeat, "{heartbeat:?}");
    let mut resumed = vec![resume(&mut client, "heartbeat", heartbeat.cursor).await];

    let first = ingest_calls(&mut ingest, TENANT, vec![call("first")]).await;
    let event = next_event(&mut live).await;
    assert_eq!(event.call_id, first[0].id);
    resumed.push(resume(&mut client, "event", event.cursor).await);

    let mut snapshot_stream = watch(&mut client, TENANT, snapshot()).await;
    let snapshot_end = collect_until(&mut snapshot_stream, |messages| {
        messages
            .last()
            .is_some_and(|message| message.kind() == CallEventKind::SnapshotComplete)
    })
    .await;
    assert_eq!(snapshot_end.len(), 2, "{snapshot_end:?}");
    assert_eq!(snapshot_end[0].call_id, first[0].id);
    resumed.push(resume(&mut client, "snapshot", snapshot_end[1].cursor.clone()).await);

    let second = ingest_calls(&mut ingest, TENANT, vec![call("second")]).await;
    for (name, mut stream) in resumed {
        let mut expected = Vec::new();
        if name == "heartbeat" {
            expected.push(first[0].id.clone());
        }
        expected.push(second[0].id.clone());
        let received: Vec<String> = collect_events(&mut stream, expected.len())
            .await
            .into_iter()
            .map(|message| message.call_id)
            .collect();
        assert_eq!(received, expected, "resumed from the {name} cursor");
    }
}

#[tokio::test]
async fn a_cursor_older_than_retention_expires_and_a_fresh_one_works() {
    let app = spawn_app_with(|config| {
        config.watch.retention = Duration::from_secs(1);
        config.watch.prune_interval = Duration::from_millis(100);
    })
    .await;
    let pool = app.pool().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;

    let mut stream = watch(&mut client, TENANT, from_now()).await;
    let old = ingest_generated(&mut ingest, TENANT, "old", 2, 1).await;
    let first = next_event(&mut stream).await;
    assert_eq!(first.call_id, old[0].id);
    drop(stream);

    // Wait for the pruner to remove the events after the cursor.
    let old_ids: Vec<Uuid> = old.iter().map(support::id_of).collect();
    let pruned = tokio::time::timeout(DEADLINE, async {
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM feed_events WHERE call_id = ANY($1)")
                    .bind(&old_ids)
                    .fetch_one(&pool)
                    .await
                    .expect("counts");
            if left == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(pruned.is_ok(), "the old events were not pruned");

    let expired = refusal(&mut client, Some(TENANT), from_cursor(&first.cursor)).await;
    assert_eq!(expired.code(), Code::FailedPrecondition, "{expired:?}");
    let info = error_info(&expired);
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("CURSOR_EXPIRED", "callstore.v1")
    );
    assert!(
        expired.message().to_lowercase().contains("snapshot"),
        "{expired:?}"
    );

    // A cursor taken now works.
    let mut fresh = watch(&mut client, TENANT, snapshot()).await;
    let complete = collect_until(&mut fresh, |messages| {
        messages
            .last()
            .is_some_and(|message| message.kind() == CallEventKind::SnapshotComplete)
    })
    .await;
    let snapshot_ids: HashSet<&str> = complete
        .iter()
        .filter(|message| message.kind() == CallEventKind::Snapshot)
        .map(|message| message.call_id.as_str())
        .collect();
    assert_eq!(
        snapshot_ids,
        old.iter().map(|result| result.id.as_str()).collect(),
        "the calls outlive their events"
    );
    let cursor = complete.last().expect("complete").cursor.clone();
    let mut resumed = watch(&mut client, TENANT, from_cursor(&cursor)).await;
    let new = ingest_calls(&mut ingest, TENANT, vec![call("new")]).await;
    let next = next_event(&mut resumed).await;
    assert_eq!(
        (next.kind(), next.call_id.as_str()),
        (CallEventKind::CallCreated, new[0].id.as_str())
    );
}

#[tokio::test]
async fn live_turns_arrive_one_event_each_in_sequence_order() {
    let app = spawn_app().await;
    let pool = app.pool().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;
    let mut stream = watch(&mut client, TENANT, from_now()).await;

    let turn = |sequence: i32| Turn {
        sequence,
        speaker: if sequence % 2 == 1 {
            Speaker::Robot
        } else {
            Speaker::Customer
        } as i32,
        text: format!("line {sequence}"),
        ..Turn::default()
    };
    let opened = ingest
        .open_call(as_tenant(
            TENANT,
            OpenCallRequest {
                call: Some(call("live")),
            },
        ))
        .await
        .expect("opens")
        .into_inner()
        .result
        .expect("a result");
    for sequences in [1..=2, 3..=5, 6..=8] {
        ingest
            .append_turns(as_tenant(
                TENANT,
                AppendTurnsRequest {
                    call_id: opened.id.clone(),
                    turns: sequences.map(turn).collect(),
                    ..AppendTurnsRequest::default()
                },
            ))
            .await
            .expect("appends");
    }
    ingest
        .complete_call(as_tenant(
            TENANT,
            CompleteCallRequest {
                call: Some(call("live")),
                hangup_time: Some(at(support::DIAL_SECONDS + 60)),
            },
        ))
        .await
        .expect("completes");

    let messages = collect_events(&mut stream, 10).await;
    let id = Uuid::parse_str(&opened.id).expect("an id");
    let mut expected = vec![FeedEvent {
        call_id: id,
        call_version: 1,
        kind: CallEventKind::CallCreated,
        turn_sequence: None,
    }];
    expected.extend((1..=8).map(|sequence| FeedEvent {
        call_id: id,
        call_version: 1,
        kind: CallEventKind::TurnAppended,
        turn_sequence: Some(sequence),
    }));
    expected.push(FeedEvent {
        call_id: id,
        call_version: 2,
        kind: CallEventKind::CallCompleted,
        turn_sequence: None,
    });
    assert_eq!(events_of(&messages), expected);
    assert_eq!(feed_order(&pool, TENANT).await, expected);
    for message in &messages[1..9] {
        let sent = message.turn.as_ref().expect("the turn");
        assert_eq!(sent.text, format!("line {}", sent.sequence), "{message:?}");
    }
    assert!(messages[0].turn.is_none() && messages[9].turn.is_none());
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_cursor_another_server_resumes_from() {
    let mut app = spawn_app().await;
    let database = app.database.clone();
    let pool = app.pool().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;
    let mut stream = watch(&mut client, TENANT, from_now()).await;

    ingest_generated(&mut ingest, TENANT, "early", 5, 1).await;
    let mut received = events_of(&collect_events(&mut stream, 3).await);

    app.signal_shutdown();
    let (rest, status) = read_until_error(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "SHUTTING_DOWN", "{info:?}");
    let cursor = info
        .metadata
        .get("cursor")
        .unwrap_or_else(|| panic!("a cursor in {info:?}"))
        .clone();
    assert!(!cursor.is_empty());
    received.extend(
        rest.iter()
            .filter(|message| message.kind() != CallEventKind::Heartbeat)
            .map(FeedEvent::of),
    );
    app.shutdown().await.expect("the server stops cleanly");

    let second = start(config_for(&database, |_| {})).await;
    second.wait_for_readiness(ServingStatus::Serving).await;
    let mut ingest = second.ingest_client().await;
    ingest_generated(&mut ingest, TENANT, "late", 3, 1).await;
    let feed = feed_order(&pool, TENANT).await;
    assert_eq!(feed.len(), 8);

    let mut client = watch_client(&second).await;
    let mut resumed = watch(&mut client, TENANT, from_cursor(&cursor)).await;
    support::read_to_feed_end(&mut resumed, &pool, TENANT, &mut received).await;
}

#[tokio::test]
async fn a_stream_read_on_one_server_resumes_on_another() {
    let first = spawn_app().await;
    let second = start(config_for(&first.database, |_| {})).await;
    second.wait_for_readiness(ServingStatus::Serving).await;
    let pool = first.pool().await;
    let mut ingests = [first.ingest_client().await, second.ingest_client().await];

    let mut client = watch_client(&first).await;
    let mut stream = watch(&mut client, TENANT, from_now()).await;
    for index in 0..10 {
        ingest_calls(
            &mut ingests[index % 2],
            TENANT,
            vec![support::generated_call("early", index)],
        )
        .await;
    }
    // The first server sends the second one's calls too: it follows the shared database.
    let received = collect_events(&mut stream, 6).await;
    drop(stream);
    let cursor = received.last().expect("read").cursor.clone();

    let mut client = watch_client(&second).await;
    let mut resumed = watch(&mut client, TENANT, from_cursor(&cursor)).await;
    for index in 0..10 {
        ingest_calls(
            &mut ingests[index % 2],
            TENANT,
            vec![support::generated_call("late", index)],
        )
        .await;
    }
    let mut received = events_of(&received);
    support::read_to_feed_end(&mut resumed, &pool, TENANT, &mut received).await;
}
