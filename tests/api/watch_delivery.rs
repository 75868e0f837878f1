//! WatchCalls delivery guarantees: late commits are neither skipped nor overtaken, a consumer
//! killed anywhere resumes without gaps or duplicates, a snapshot and its tail add up to the
//! database, and slow consumers hold back neither ingest nor anyone else.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use callstore::api::convert::{CallLimits, call_from_proto};
use callstore::domain::ids::TenantId;
use callstore::proto::{CallEventKind, CallRecord, WatchCallsRequest, WatchCallsResponse};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sqlx::{ConnectOptions as _, Connection as _};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{DEADLINE, TestApp, spawn_app, spawn_app_with};
use crate::watch::support::{
    FeedEvent, IngestClient, Stream, TENANT, call, changed, collect_events, error_info, events_of,
    feed_order, from_cursor, from_now, generated_call, id_of, ingest_calls, millis,
    narrow_watch_client, next_event, next_message, snapshot, wait_for_feed_len, watch,
    watch_client,
};

/// A transaction that wrote an event first and commits last holds back every later event until
/// it commits; then all arrive, its own first.
#[tokio::test]
async fn a_transaction_committing_late_holds_back_later_events_and_is_not_skipped() {
    // A quick fallback poll, so that a server that ignored the open transaction would have sent
    // the later events well within the bounded wait below even without a notification.
    let app = spawn_app_with(|config| config.watch.poll_interval = Duration::from_millis(50)).await;
    let pool = app.pool().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;
    ingest_calls(&mut ingest, TENANT, vec![call("first")]).await;
    // A snapshot start: `first` is in the snapshot, and the tail starts after it.
    let mut stream = watch(&mut client, TENANT, snapshot()).await;
    let snapshot_end = collect_events(&mut stream, 2).await;
    assert_eq!(
        snapshot_end
            .iter()
            .map(WatchCallsResponse::kind)
            .collect::<Vec<_>>(),
        [CallEventKind::Snapshot, CallEventKind::SnapshotComplete]
    );

    // Through the library's own write path, inside a transaction this test holds open.
    let mut connection = app
        .database
        .connect()
        .await
        .expect("connects to the test database");
    let mut held = connection.begin().await.expect("begins");
    crate::helpers::scope_to(&mut held, TENANT).await;
    let tenant = TenantId::parse(TENANT).expect("a tenant id");
    let held_call =
        call_from_proto(call("held"), "calls[0]", &CallLimits::default()).expect("a valid call");
    let stored = callstore::db::calls::store_calls(&mut held, &tenant, &[&held_call])
        .await
        .expect("stores the call");
    let held_id = stored[0].id;

    // Later transactions commit first.
    let later: Vec<Uuid> = [
        ingest_calls(&mut ingest, TENANT, vec![call("later-1")]).await,
        ingest_calls(&mut ingest, TENANT, vec![call("later-2"), call("later-3")]).await,
    ]
    .iter()
    .flatten()
    .map(id_of)
    .collect();
    wait_for_feed_len(&pool, TENANT, 4).await;

    // The one bounded negative wait: the later events are committed and visible, and must
    // still not be sent while the held transaction is open. There is no positive condition to
    // wait for; 300 ms is several tailer polls (50 ms) and notifications, so a server that
    // skipped the open transaction would have sent them by then.
    let early = tokio::time::timeout(Duration::from_millis(300), next_event(&mut stream)).await;
    assert!(
        early.is_err(),
        "an event was sent while an earlier transaction was open: {early:?}"
    );

    held.commit().await.expect("commits");
    let received = events_of(&collect_events(&mut stream, 4).await);
    let feed = feed_order(&pool, TENANT).await;
    assert_eq!(
        received,
        feed[1..],
        "every event after `first`, in feed order"
    );
    assert_eq!(
        received[0].call_id, held_id,
        "the held transaction's event first"
    );
    let mut later_received: Vec<Uuid> = received[1..].iter().map(|event| event.call_id).collect();
    later_received.sort_unstable();
    let mut later = later;
    later.sort_unstable();
    assert_eq!(later_received, later);
}

/// `from_now` starts after every transaction committed before the call, even when an older
/// transaction is still open and holds the watermark behind them.
#[tokio::test]
async fn from_now_skips_what_committed_before_it_even_behind_an_open_transaction() {
    let app = spawn_app().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;

    let mut connection = app
        .database
        .connect()
        .await
        .expect("connects to the test database");
    let mut open = connection.begin().await.expect("begins");
    // The transaction gets its id now, before the calls below; it writes no event.
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *open)
        .await
        .expect("takes a transaction id");
    let before = ingest_calls(&mut ingest, TENANT, vec![call("before")]).await;
    let mut stream = watch(&mut client, TENANT, from_now()).await;
    let after = ingest_calls(&mut ingest, TENANT, vec![call("after")]).await;
    open.commit().await.expect("commits");

    let first = next_event(&mut stream).await;
    assert_eq!(
        first.call_id, after[0].id,
        "the first event is the call stored after the stream started, not {} stored before",
        before[0].id
    );
}

/// Starts one writer per client, each storing `calls` calls of its own in requests of one to
/// four and, after about a third of them, storing an earlier call again changed. Returns the
/// writers' handles.
fn start_writers(
    clients: Vec<IngestClient>,
    calls: usize,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(writer, mut client)| {
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(writer as u64));
                let prefix = format!("writer-{writer}");
                let mut stored: Vec<CallRecord> = Vec::new();
                let mut revision = 0;
                while stored.len() < calls {
                    let size = rng.random_range(1..=4).min(calls - stored.len());
                    let batch: Vec<CallRecord> = (stored.len()..stored.len() + size)
                        .map(|index| generated_call(&prefix, index))
                        .collect();
                    ingest_calls(&mut client, TENANT, batch.clone()).await;
                    stored.extend(batch);
                    if rng.random_bool(0.3) {
                        revision += 1;
                        let pick = rng.random_range(0..stored.len());
                        let update = changed(&stored[pick], revision);
                        ingest_calls(&mut client, TENANT, vec![update.clone()]).await;
                        stored[pick] = update;
                    }
                }
            })
        })
        .collect()
}

async fn ingest_clients(app: &TestApp, count: usize) -> Vec<IngestClient> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(app.ingest_client().await);
    }
    clients
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    let joined = tokio::time::timeout(DEADLINE, async {
        for handle in handles {
            handle.await.expect("a writer succeeds");
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "the writers did not finish within {DEADLINE:?}"
    );
}

/// A consumer that drops its stream after a random number of messages and resumes from the last
/// cursor it received, while concurrent writers commit out of order, reads the feed exactly.
#[tokio::test]
async fn a_consumer_killed_at_random_points_resumes_without_gaps_or_duplicates() {
    let app = spawn_app().await;
    let pool = app.pool().await;
    let mut client = watch_client(&app).await;
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);

    // Heartbeats every 100 ms let the consumer notice the end while it waits, and give it
    // heartbeat cursors to resume from too.
    let request = |start: WatchCallsRequest| WatchCallsRequest {
        heartbeat_interval: Some(millis(100)),
        ..start
    };
    let mut stream = watch(&mut client, TENANT, request(from_now())).await;
    let writers = start_writers(ingest_clients(&app, 3).await, 100, seed);

    let mut received: Vec<FeedEvent> = Vec::new();
    let mut cursor = String::new();
    let mut streams = 1;
    let mut total: Option<usize> = None;
    let mut writers = Some(writers);
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            let take = rng.random_range(1..=40);
            for _ in 0..take {
                if total.is_none()
                    && writers
                        .as_ref()
                        .is_some_and(|handles| handles.iter().all(|handle| handle.is_finished()))
                {
                    join_all(writers.take().expect("writers")).await;
                    total = Some(feed_order(&pool, TENANT).await.len());
                }
                if total == Some(received.len()) {
                    return;
                }
                let message = next_message(&mut stream).await;
                assert!(!message.cursor.is_empty(), "{message:?}");
                cursor.clone_from(&message.cursor);
                if message.kind() != CallEventKind::Heartbeat {
                    received.push(FeedEvent::of(&message));
                }
            }
            drop(stream);
            stream = watch(&mut client, TENANT, request(from_cursor(&cursor))).await;
            streams += 1;
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "seed {seed}: read {} events of {total:?} within {DEADLINE:?}",
        received.len()
    );
    let feed = feed_order(&pool, TENANT).await;
    assert!(feed.len() >= 300, "{}", feed.len());
    assert!(streams > 5, "seed {seed}: only {streams} streams");
    assert_eq!(received, feed, "seed {seed}, {streams} streams");
}

/// A snapshot taken while writers add and change calls, followed by its tail, accounts for
/// every change exactly once and ends equal to the database.
#[tokio::test]
async fn a_snapshot_and_its_tail_under_concurrent_ingest_add_up_to_the_database() {
    let app = spawn_app().await;
    let pool = app.pool().await;
    let mut ingest = app.ingest_client().await;
    let mut client = watch_client(&app).await;
    let seed: u64 = rand::rng().random();

    let preloaded: Vec<CallRecord> = (0..200).map(|index| generated_call("pre", index)).collect();
    for chunk in preloaded.chunks(50) {
        ingest_calls(&mut ingest, TENANT, chunk.to_vec()).await;
    }

    // Writers that add calls and change preloaded ones while the snapshot is read.
    let mut writers = Vec::new();
    for writer in 0..2_u64 {
        let mut client = app.ingest_client().await;
        let preloaded = preloaded.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(writer));
            for round in 0..80 {
                let record = if rng.random_bool(0.5) {
                    generated_call(&format!("new-{writer}"), round)
                } else {
                    let pick = rng.random_range(0..preloaded.len());
                    changed(
                        &preloaded[pick],
                        usize::try_from(writer).expect("small") * 1000 + round,
                    )
                };
                ingest_calls(&mut client, TENANT, vec![record]).await;
            }
        }));
    }
    let mut stream = watch(&mut client, TENANT, snapshot()).await;

    let mut snapshot_versions: HashMap<Uuid, i64> = HashMap::new();
    let complete = tokio::time::timeout(DEADLINE, async {
        loop {
            let message = next_message(&mut stream).await;
            match message.kind() {
                CallEventKind::Snapshot => {
                    assert!(message.cursor.is_empty(), "{message:?}");
                    let record = message.call.as_ref().expect("a snapshot carries the call");
                    assert_eq!(record.id, message.call_id);
                    assert_eq!(record.version, message.call_version, "{message:?}");
                    let id = Uuid::parse_str(&message.call_id).expect("a call id");
                    assert!(
                        snapshot_versions.insert(id, record.version).is_none(),
                        "{id} twice in the snapshot"
                    );
                }
                CallEventKind::SnapshotComplete => return message,
                kind => panic!("{kind:?} before the snapshot was complete: {message:?}"),
            }
        }
    })
    .await
    .expect("the snapshot completes within the deadline");
    assert!(!complete.cursor.is_empty(), "{complete:?}");
    assert!(
        complete.call.is_none() && complete.call_id.is_empty(),
        "{complete:?}"
    );
    let preloaded_ids: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM calls WHERE source_call_id LIKE 'pre-%'")
            .fetch_all(&pool)
            .await
            .expect("reads ids")
            .into_iter()
            .collect();
    assert!(
        preloaded_ids
            .iter()
            .all(|id| snapshot_versions.contains_key(id)),
        "every call stored before the snapshot is in it"
    );

    join_all(writers).await;
    let stored: HashMap<Uuid, i64> =
        sqlx::query_as("SELECT id, version FROM calls WHERE tenant_id = $1")
            .bind(TENANT)
            .fetch_all(&pool)
            .await
            .expect("reads the calls")
            .into_iter()
            .collect();

    // The tail, until the consumer's view equals the database.
    let mut latest = snapshot_versions.clone();
    let mut tail: Vec<FeedEvent> = Vec::new();
    let caught_up = tokio::time::timeout(DEADLINE, async {
        while latest != stored {
            let message = next_event(&mut stream).await;
            assert!(
                !matches!(
                    message.kind(),
                    CallEventKind::Snapshot | CallEventKind::SnapshotComplete
                ),
                "a snapshot message in the tail: {message:?}"
            );
            assert!(!message.cursor.is_empty(), "{message:?}");
            let event = FeedEvent::of(&message);
            let previous = latest.insert(event.call_id, event.call_version);
            assert!(
                previous.is_none_or(|previous| previous < event.call_version),
                "seed {seed}: {event:?} after version {previous:?}"
            );
            tail.push(event);
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "seed {seed}: the tail did not catch up; {} calls differ",
        stored
            .iter()
            .filter(|(id, version)| latest.get(id) != Some(version))
            .count()
    );

    // Every event of the feed is either in the tail, in feed order, or contained in the
    // snapshot; the tail has nothing else.
    let feed = feed_order(&pool, TENANT).await;
    let mut next_tail = 0;
    for event in &feed {
        if tail.get(next_tail) == Some(event) {
            next_tail += 1;
        } else {
            let in_snapshot = snapshot_versions.get(&event.call_id).copied();
            assert!(
                in_snapshot.is_some_and(|version| version >= event.call_version),
                "seed {seed}: {event:?} is neither in the tail nor in the snapshot ({in_snapshot:?})"
            );
        }
    }
    assert_eq!(
        next_tail,
        tail.len(),
        "seed {seed}: the tail is not the feed's order: {:?}",
        &tail[next_tail..]
    );
    assert!(!tail.is_empty(), "the writers ran on after the snapshot");
}

/// Reads `stream` into `received` until it holds `total` events, keeping the last cursor seen
/// in `cursor`; returns the error the stream ends with first, if it does.
async fn drain(
    stream: &mut Stream,
    total: usize,
    received: &mut Vec<FeedEvent>,
    cursor: &mut String,
) -> Option<tonic::Status> {
    tokio::time::timeout(DEADLINE, async {
        while received.len() < total {
            match stream.message().await {
                Ok(Some(message)) => {
                    cursor.clone_from(&message.cursor);
                    if message.kind() != CallEventKind::Heartbeat {
                        received.push(FeedEvent::of(&message));
                    }
                }
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return Some(status),
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of {total} events within {DEADLINE:?}",
            received.len()
        )
    })
}

/// The record with a 4 KB custom field. The server's HTTP/2 layer buffers a few hundred KB per
/// stream on its own; messages this big make a consumer that does not keep up push back on the
/// feed after a hundred or so, well within the tests' few hundred calls.
fn padded(record: CallRecord) -> CallRecord {
    let mut record = record;
    record
        .custom_fields
        .insert("padding".to_owned(), "x".repeat(4000));
    record
}

/// Ingests `count` calls of `prefix` from `writers` concurrent writers in requests of `size`, padded.
async fn ingest_concurrently(
    app: &TestApp,
    prefix: &str,
    count: usize,
    writers: usize,
    size: usize,
) {
    let clients = ingest_clients(app, writers).await;
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(writer, mut client)| {
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                let mine: Vec<CallRecord> = (writer..count)
                    .step_by(writers)
                    .map(|index| padded(generated_call(&prefix, index)))
                    .collect();
                for chunk in mine.chunks(size) {
                    ingest_calls(&mut client, TENANT, chunk.to_vec()).await;
                }
            })
        })
        .collect();
    join_all(handles).await;
}

#[tokio::test]
async fn a_consumer_that_does_not_read_blocks_neither_ingest_nor_other_consumers() {
    let app = spawn_app_with(|config| {
        config.watch.live_buffer = 2;
        config.watch.send_buffer = 4;
        config.watch.stuck_timeout = Duration::from_secs(2);
    })
    .await;
    let pool = app.pool().await;

    // Not read until the end, on a connection of its own with a narrow window, so the server
    // feels it at once.
    let mut slow_client = narrow_watch_client(&app).await;
    let mut slow = watch(&mut slow_client, TENANT, from_now()).await;
    let mut reader_client = watch_client(&app).await;
    let mut reader = watch(&mut reader_client, TENANT, from_now()).await;
    let reading = tokio::spawn(async move { events_of(&collect_events(&mut reader, 500).await) });

    // `ingest_concurrently` fails the test unless everything is stored within the deadline.
    ingest_concurrently(&app, "busy", 500, 4, 5).await;
    let read = reading.await.expect("the reader reads");
    let feed = feed_order(&pool, TENANT).await;
    assert_eq!(feed.len(), 500);
    assert_eq!(read, feed, "the reading consumer got everything in order");

    let mut received = Vec::new();
    let mut cursor = String::new();
    if let Some(status) = drain(&mut slow, feed.len(), &mut received, &mut cursor).await {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "SLOW_CONSUMER", "{info:?}");
        let last_sent = info
            .metadata
            .get("cursor")
            .unwrap_or_else(|| panic!("a cursor in {info:?}"));
        if cursor.is_empty() {
            cursor.clone_from(last_sent);
        }
        assert!(!cursor.is_empty(), "somewhere to resume from");
        let mut resumed = watch(&mut slow_client, TENANT, from_cursor(&cursor)).await;
        let rest = drain(&mut resumed, feed.len(), &mut received, &mut cursor).await;
        assert!(rest.is_none(), "the resumed stream failed: {rest:?}");
    }
    assert_eq!(received, feed, "the slow consumer's events, resumed or not");
}

/// A consumer reading slowly through a narrow window falls more than `live_buffer` batches
/// behind the tailer, is served from the database, and still gets every event in order.
#[tokio::test]
async fn a_lagging_consumer_still_gets_every_event_in_order() {
    let app = spawn_app_with(|config| {
        config.watch.live_buffer = 2;
        config.watch.send_buffer = 4;
        config.watch.stuck_timeout = Duration::from_secs(2);
    })
    .await;
    let pool = app.pool().await;
    let mut client = narrow_watch_client(&app).await;
    let mut stream = watch(&mut client, TENANT, from_now()).await;

    let reading = tokio::spawn(async move {
        let mut messages: Vec<WatchCallsResponse> = Vec::new();
        while messages.len() < 300 {
            messages.push(next_event(&mut stream).await);
            // Reading slowly on purpose (this waits for nothing): a pause every few messages
            // keeps the consumer behind the writers, each pause far below stuck_timeout.
            if messages.len().is_multiple_of(5) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        events_of(&messages)
    });
    ingest_concurrently(&app, "lag", 300, 4, 3).await;
    let read = tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("the slow reader finishes within the deadline")
        .expect("the slow reader reads");
    assert_eq!(read, feed_order(&pool, TENANT).await);
}

/// A consumer that stops reading altogether is ended after `stuck_timeout` with UNAVAILABLE
/// (SLOW_CONSUMER) and the cursor of the last message the server handed out; resuming from the
/// last message it did receive gets the rest, nothing missing, nothing twice.
#[tokio::test]
async fn a_consumer_stuck_beyond_the_deadline_is_ended_with_a_retryable_status() {
    let stuck_timeout = Duration::from_millis(300);
    let app = spawn_app_with(|config| {
        config.watch.send_buffer = 1;
        config.watch.stuck_timeout = stuck_timeout;
    })
    .await;
    let pool = app.pool().await;
    let mut stuck_client = narrow_watch_client(&app).await;
    let mut stuck = watch(&mut stuck_client, TENANT, from_now()).await;

    // About 1.2 MB of messages: far more than HTTP/2 buffers for a stream nobody reads.
    ingest_concurrently(&app, "stuck", 300, 2, 10).await;
    wait_for_feed_len(&pool, TENANT, 300).await;
    // What is under test is the passage of time itself: the stream has been unread for well
    // over `stuck_timeout` once this returns.
    tokio::time::sleep(stuck_timeout * 5).await;

    let feed = feed_order(&pool, TENANT).await;
    let mut received = Vec::new();
    let mut cursor = String::new();
    let status = drain(&mut stuck, feed.len(), &mut received, &mut cursor)
        .await
        .expect("the stuck stream was ended by the server");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "SLOW_CONSUMER", "{info:?}");
    assert!(info.metadata.contains_key("cursor"), "{info:?}");
    assert!(
        received.len() < feed.len(),
        "it was ended before it had everything ({} of {})",
        received.len(),
        feed.len()
    );
    assert_eq!(received, feed[..received.len()], "what it got is a prefix");

    let mut resumed = watch(&mut stuck_client, TENANT, from_cursor(&cursor)).await;
    let rest = drain(&mut resumed, feed.len(), &mut received, &mut cursor).await;
    assert!(rest.is_none(), "the resumed stream failed: {rest:?}");
    assert_eq!(received, feed, "everything, once, in feed order");
}

/// Two transactions racing to change one call: the one that took its transaction id first (it
/// wrote something else) waits for the other's lock on the call and changes it second. The
/// stream still sends the two changes in the order they were made: created (version 1), then
/// updated (version 2), though the second writer's transaction id is the smaller.
#[tokio::test]
async fn changes_of_one_call_come_in_the_order_they_were_made() {
    let app = spawn_app().await;
    let pool = app.pool().await;
    let tenant = TenantId::parse(TENANT).expect("a tenant id");
    let mut client = watch_client(&app).await;
    let mut stream = watch(&mut client, TENANT, from_now()).await;

    // The second writer takes its transaction id first.
    let mut second = app.database.connect().await.expect("connects");
    sqlx::query("BEGIN")
        .execute(&mut second)
        .await
        .expect("begins");
    crate::helpers::scope_to(&mut second, TENANT).await;
    let second_xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut second)
        .await
        .expect("takes a transaction id");

    // The first writer creates the call and holds it.
    let mut first = app.database.connect().await.expect("connects");
    sqlx::query("BEGIN")
        .execute(&mut first)
        .await
        .expect("begins");
    crate::helpers::scope_to(&mut first, TENANT).await;
    let created =
        call_from_proto(call("raced"), "calls[0]", &CallLimits::default()).expect("a valid call");
    callstore::db::calls::store_calls(&mut first, &tenant, &[&created])
        .await
        .expect("stores the call");
    let first_xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut first)
        .await
        .expect("reads its transaction id");
    assert!(
        second_xid.parse::<u64>().expect("a number") < first_xid.parse::<u64>().expect("a number"),
        "the second writer's id is the smaller"
    );

    // The second writer changes the same call: it waits for the first's lock.
    let updated = call_from_proto(
        changed(&call("raced"), 1),
        "calls[0]",
        &CallLimits::default(),
    )
    .expect("a valid call");
    let waiting = tokio::spawn(async move {
        callstore::db::calls::store_calls(&mut second, &tenant, &[&updated])
            .await
            .expect("stores the change");
        sqlx::query("COMMIT")
            .execute(&mut second)
            .await
            .expect("commits");
    });
    // Until the second writer is blocked on the call's lock, the first must not commit.
    tokio::time::timeout(DEADLINE, async {
        loop {
            let blocked: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE datname = current_database() AND wait_event_type = 'Lock')",
            )
            .fetch_one(&pool)
            .await
            .expect("reads the locks");
            if blocked {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the second writer waits for the first");
    sqlx::query("COMMIT")
        .execute(&mut first)
        .await
        .expect("commits");
    waiting.await.expect("the second writer finishes");

    let events = events_of(&collect_events(&mut stream, 2).await);
    let versions: Vec<(CallEventKind, i64)> = events
        .iter()
        .map(|event| (event.kind, event.call_version))
        .collect();
    assert_eq!(
        versions,
        [
            (CallEventKind::CallCreated, 1),
            (CallEventKind::CallUpdated, 2)
        ]
    );
    assert_eq!(events, feed_order(&pool, TENANT).await, "the feed's order");
}
