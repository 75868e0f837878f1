//! GetTaskStats against a brute-force computation over the same `calls` and `call_tags` rows,
//! before compaction (deltas only), after it, with pending changes on top of compacted rollups
//! (re-deliveries that move calls, change their tags and remove the calls holding the extreme
//! talk times; calls opened and completed), and after compacting those.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, DurationRound as _, TimeDelta, TimeZone as _, Utc};
use prost_types::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use callstore::api::convert::utc_to_timestamp;
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    AppendTurnsRequest, CallOutcome, CallRecord, CallState, CompleteCallRequest, CountBucket,
    GetTaskStatsRequest, GetTaskStatsResponse, HangupSide, IngestCallsRequest, IngestOutcome,
    Level, NumberStatus, OpenCallRequest, Speaker, StatsInterval, StatsPoint, Tag, Transfer,
    TransferState, Turn,
};

use crate::helpers::{DEADLINE, TestApp, as_tenant, spawn_app_with};

const TENANT: &str = "acme";
const OTHER_TENANT: &str = "globex";
const TASK_A: &str = "stats-task-a";
const TASK_B: &str = "stats-task-b";

/// Midnight UTC of the first day calls are dialled on; calls span four days.
fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0)
        .single()
        .expect("a valid time")
}

fn at(days: i64, hours: i64, minutes: i64, seconds: i64, micros: i64) -> DateTime<Utc> {
    base()
        + TimeDelta::days(days)
        + TimeDelta::hours(hours)
        + TimeDelta::minutes(minutes)
        + TimeDelta::seconds(seconds)
        + TimeDelta::microseconds(micros)
}

/// The window with unaligned edges: whole days 1 and 2, hours, minutes and bits of minutes.
fn unaligned() -> (DateTime<Utc>, DateTime<Utc>) {
    (at(0, 5, 17, 23, 250_000), at(3, 13, 41, 7, 500_000))
}

const OUTCOMES: [CallOutcome; 5] = [
    CallOutcome::NoAnswer,
    CallOutcome::Busy,
    CallOutcome::Rejected,
    CallOutcome::PoweredOff,
    CallOutcome::VacantNumber,
];
const STATUSES: [NumberStatus; 4] = [
    NumberStatus::Connected,
    NumberStatus::NoAnswer,
    NumberStatus::Busy,
    NumberStatus::Unspecified,
];
const SIDES: [HangupSide; 5] = [
    HangupSide::Unspecified,
    HangupSide::Robot,
    HangupSide::Customer,
    HangupSide::Agent,
    HangupSide::System,
];
/// Talk times and answer delays on and around the bucket bounds.
const BOUNDARY_MS: [i64; 12] = [
    1_000, 2_999, 3_000, 4_999, 5_000, 9_999, 10_000, 29_999, 30_000, 59_999, 60_000, 60_001,
];

fn ms(value: i64) -> TimeDelta {
    TimeDelta::milliseconds(value)
}

/// A varied call: outcome, number status, hang-up side, level, tags, transfer, talk time and
/// answer delay drawn from `rng`, dialled at `dial_time` for task `task` (none when empty).
fn call(
    rng: &mut StdRng,
    source_call_id: &str,
    task: &str,
    dial_time: DateTime<Utc>,
) -> CallRecord {
    let answered = rng.random_bool(0.6);
    let outcome = if answered {
        CallOutcome::Answered
    } else {
        OUTCOMES[rng.random_range(0..OUTCOMES.len())]
    };
    let duration = |rng: &mut StdRng| {
        if rng.random_bool(0.2) {
            BOUNDARY_MS[rng.random_range(0..BOUNDARY_MS.len())]
        } else {
            rng.random_range(2..150_000)
        }
    };
    let talk_duration_ms = match (answered, rng.random_range(0..10)) {
        (true, 0) => None,
        (true, _) => Some(duration(rng)),
        (false, 0..3) => Some(rng.random_range(0..5_000)),
        (false, _) => None,
    };
    let answer_time = if answered && rng.random_bool(0.9) {
        Some(dial_time + ms(duration(rng)))
    } else {
        None
    };
    let tags = (1..=8)
        .filter(|_| rng.random_bool(0.25))
        .map(|number| Tag {
            source_tag_id: format!("tag-{number}"),
            name: format!("标签{number}"),
            ..Tag::default()
        })
        .collect();
    let level = match rng.random_range(0..5) {
        0 => None,
        number => Some(Level {
            source_level_id: format!("L{number}"),
            name: format!("{number}级"),
            ..Level::default()
        }),
    };
    let transfer = match rng.random_range(0..6) {
        0 => None,
        1 => Some(TransferState::Unspecified),
        2 | 3 => Some(TransferState::NotTransferred),
        4 => Some(TransferState::NotAnswered),
        _ => Some(TransferState::Answered),
    }
    .map(|state| Transfer {
        state: state as i32,
        ..Transfer::default()
    });
    CallRecord {
        source_call_id: source_call_id.to_owned(),
        source_task_id: task.to_owned(),
        callee: format!("138{:08}", rng.random_range(0..100_000_000)),
        dial_time: Some(utc_to_timestamp(dial_time)),
        answer_time: answer_time.map(utc_to_timestamp),
        talk_duration_ms,
        outcome: outcome as i32,
        number_status: STATUSES[rng.random_range(0..STATUSES.len())] as i32,
        hangup_side: SIDES[rng.random_range(0..SIDES.len())] as i32,
        level,
        tags,
        transfer,
        ..CallRecord::default()
    }
}

/// A dial time in the four days, to the microsecond.
fn random_time(rng: &mut StdRng) -> DateTime<Utc> {
    base() + TimeDelta::microseconds(rng.random_range(0..4 * 86_400_000_000))
}

/// Version 1 of the calls: random times, plus calls exactly on and around the bounds of the
/// windows the test reads, so that every piece of a cover holds calls.
fn first_versions(rng: &mut StdRng) -> Vec<CallRecord> {
    let (start, end) = unaligned();
    let mut times: Vec<DateTime<Utc>> = (0..1_300).map(|_| random_time(rng)).collect();
    for bound in [
        start,
        end,
        at(1, 3, 0, 0, 0),
        at(1, 9, 0, 0, 0),
        at(1, 0, 0, 0, 0),
    ] {
        for offset_ms in [-61_000, -30_000, -1, 0, 1, 30_000, 61_000] {
            times.push(bound + ms(offset_ms));
        }
    }
    times.push(at(0, 5, 17, 30, 0));
    times.push(at(0, 5, 17, 40, 123));
    let mut calls: Vec<CallRecord> = times
        .into_iter()
        .enumerate()
        .map(|(index, time)| {
            let task = match index % 10 {
                0..=5 => TASK_A,
                6..=8 => TASK_B,
                _ if index % 20 == 9 => "",
                _ => TASK_A,
            };
            call(rng, &format!("call-{index}"), task, time)
        })
        .collect();
    // Task A's shortest and longest talk times, each held by one call.
    for (name, talk) in [("shortest", 1), ("longest", 1_000_000)] {
        let mut extreme = call(rng, name, TASK_A, at(1, 14, 15, 16, 0));
        extreme.outcome = CallOutcome::Answered as i32;
        extreme.talk_duration_ms = Some(talk);
        calls.push(extreme);
    }
    calls
}

async fn ingest(client: &mut IngestServiceClient<Channel>, tenant: &str, calls: Vec<CallRecord>) {
    for chunk in calls.chunks(250) {
        let response = client
            .ingest_calls(as_tenant(
                tenant,
                IngestCallsRequest {
                    calls: chunk.to_vec(),
                },
            ))
            .await
            .expect("ingest answers")
            .into_inner();
        for result in response.results {
            assert!(
                [IngestOutcome::Created, IngestOutcome::Updated].contains(&result.outcome()),
                "stored: {result:?}"
            );
        }
    }
}

/// A call as the brute force reads it.
#[derive(Debug, sqlx::FromRow)]
struct StoredCall {
    task_id: Uuid,
    dial_time: DateTime<Utc>,
    answer_time: Option<DateTime<Utc>>,
    outcome: i16,
    number_status: i16,
    hangup_side: i16,
    level_id: Option<Uuid>,
    transfer_state: i16,
    talk_duration_ms: Option<i64>,
    tag_ids: Vec<Uuid>,
}

async fn stored_calls(pool: &PgPool) -> Vec<StoredCall> {
    sqlx::query_as(
        "SELECT c.task_id, c.dial_time, c.answer_time, c.outcome, c.number_status,
                c.hangup_side, c.level_id, c.transfer_state, c.talk_duration_ms,
                ARRAY(SELECT t.tag_id FROM call_tags t
                      WHERE t.tenant_id = c.tenant_id AND t.call_id = c.id) AS tag_ids
         FROM calls c
         WHERE c.tenant_id = $1 AND c.task_id IS NOT NULL",
    )
    .bind(TENANT)
    .fetch_all(pool)
    .await
    .expect("reads the calls")
}

/// Bucket 0..=5 of a duration against 3, 5, 10, 30 and 60 seconds.
fn duration_bucket(duration: TimeDelta) -> usize {
    [3, 5, 10, 30, 60]
        .iter()
        .position(|seconds| duration < TimeDelta::seconds(*seconds))
        .unwrap_or(5)
}

fn labelled(buckets: [i64; 6]) -> Vec<CountBucket> {
    let labels = ["lt_3s", "lt_5s", "lt_10s", "lt_30s", "lt_60s", "ge_60s"];
    (0..6)
        .map(|index| CountBucket {
            key: labels[index].to_owned(),
            count: if index == 5 {
                buckets[5]
            } else {
                buckets[..=index].iter().sum()
            },
        })
        .collect()
}

fn counted(counts: BTreeMap<String, i64>) -> Vec<CountBucket> {
    counts
        .into_iter()
        .map(|(key, count)| CountBucket { key, count })
        .collect()
}

/// What GetTaskStats must answer, computed from the rows themselves.
fn expected(
    calls: &[StoredCall],
    task: Uuid,
    start: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
    interval: StatsInterval,
) -> GetTaskStatsResponse {
    let in_window: Vec<&StoredCall> = calls
        .iter()
        .filter(|call| {
            call.task_id == task
                && start.is_none_or(|start| call.dial_time >= start)
                && call.dial_time < end
        })
        .collect();
    let answered = |call: &StoredCall| call.outcome == CallOutcome::Answered as i16;
    let talks: Vec<i64> = in_window
        .iter()
        .filter(|call| answered(call))
        .filter_map(|call| call.talk_duration_ms)
        .collect();
    let total = in_window.len() as i64;
    let answered_calls = in_window.iter().filter(|call| answered(call)).count() as i64;
    let mut by_outcome = BTreeMap::new();
    let mut by_status = BTreeMap::new();
    let mut by_side = BTreeMap::new();
    let mut by_level = BTreeMap::new();
    let mut by_tag = BTreeMap::new();
    let mut talk_buckets = [0; 6];
    let mut delay_buckets = [0; 6];
    let mut points: BTreeMap<DateTime<Utc>, StatsPoint> = BTreeMap::new();
    for call in &in_window {
        let name = |number: i16, known: Option<&'static str>| {
            known.map_or_else(|| number.to_string(), str::to_owned)
        };
        *by_outcome
            .entry(name(
                call.outcome,
                CallOutcome::try_from(i32::from(call.outcome))
                    .ok()
                    .map(|o| o.as_str_name()),
            ))
            .or_insert(0) += 1;
        *by_status
            .entry(name(
                call.number_status,
                NumberStatus::try_from(i32::from(call.number_status))
                    .ok()
                    .map(|s| s.as_str_name()),
            ))
            .or_insert(0) += 1;
        *by_side
            .entry(name(
                call.hangup_side,
                HangupSide::try_from(i32::from(call.hangup_side))
                    .ok()
                    .map(|s| s.as_str_name()),
            ))
            .or_insert(0) += 1;
        if let Some(level) = call.level_id {
            *by_level.entry(level.to_string()).or_insert(0) += 1;
        }
        for tag in &call.tag_ids {
            *by_tag.entry(tag.to_string()).or_insert(0) += 1;
        }
        let is_answered = answered(call);
        if is_answered {
            if let Some(talk) = call.talk_duration_ms {
                talk_buckets[duration_bucket(ms(talk))] += 1;
            }
            if let Some(answer) = call.answer_time {
                delay_buckets[duration_bucket(answer - call.dial_time)] += 1;
            }
        }
        let unit = match interval {
            StatsInterval::Hour => TimeDelta::hours(1),
            _ => TimeDelta::days(1),
        };
        let point_start = call.dial_time.duration_trunc(unit).expect("truncates");
        let point = points.entry(point_start).or_insert_with(|| StatsPoint {
            start_time: Some(utc_to_timestamp(point_start)),
            ..StatsPoint::default()
        });
        point.calls += 1;
        if is_answered {
            point.answered += 1;
            point.talk_duration_ms += call.talk_duration_ms.unwrap_or(0);
        }
    }
    let talk_sum: i64 = talks.iter().sum();
    GetTaskStatsResponse {
        total_calls: total,
        answered_calls,
        connect_rate: if total == 0 {
            0.0
        } else {
            answered_calls as f64 / total as f64
        },
        by_outcome: counted(by_outcome),
        by_number_status: counted(by_status),
        talk_time_buckets: labelled(talk_buckets),
        answer_delay_buckets: labelled(delay_buckets),
        min_talk_duration_ms: talks.iter().copied().min().unwrap_or(0),
        max_talk_duration_ms: talks.iter().copied().max().unwrap_or(0),
        avg_talk_duration_ms: if talks.is_empty() {
            0.0
        } else {
            talk_sum as f64 / talks.len() as f64
        },
        by_hangup_side: counted(by_side),
        transferred_calls: in_window
            .iter()
            .filter(|call| {
                ![
                    TransferState::Unspecified as i16,
                    TransferState::NotTransferred as i16,
                ]
                .contains(&call.transfer_state)
            })
            .count() as i64,
        by_level: counted(by_level),
        by_tag: counted(by_tag),
        series: if interval == StatsInterval::Unspecified {
            Vec::new()
        } else {
            points.into_values().collect()
        },
        // No rule set is active: calls are measured, none is scored.
        ..GetTaskStatsResponse::default()
    }
}

struct Fixture {
    app: TestApp,
    pool: PgPool,
    query: QueryServiceClient<Channel>,
    ingest: IngestServiceClient<Channel>,
    task_a: Uuid,
    task_b: Uuid,
}

async fn task_id(pool: &PgPool, tenant: &str, source_task_id: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM tasks WHERE tenant_id = $1 AND source_task_id = $2")
        .bind(tenant)
        .bind(source_task_id)
        .fetch_one(pool)
        .await
        .expect("the task exists")
}

async fn deltas(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_stats_deltas")
        .fetch_one(pool)
        .await
        .expect("counts deltas")
}

async fn stats(
    client: &mut QueryServiceClient<Channel>,
    tenant: &str,
    request: GetTaskStatsRequest,
) -> Result<GetTaskStatsResponse, tonic::Status> {
    Ok(client
        .get_task_stats(as_tenant(tenant, request))
        .await?
        .into_inner())
}

fn request(
    task: Uuid,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    interval: StatsInterval,
) -> GetTaskStatsRequest {
    GetTaskStatsRequest {
        task_id: task.to_string(),
        start_time: start.map(utc_to_timestamp),
        end_time: end.map(utc_to_timestamp),
        interval: interval as i32,
        ..GetTaskStatsRequest::default()
    }
}

/// Every window of the test, for both tasks, against the brute force. `phase` names the state
/// in failure messages.
async fn assert_all_windows_exact(fixture: &mut Fixture, phase: &str) {
    let calls = stored_calls(&fixture.pool).await;
    let (start, end) = unaligned();
    let far_future = Utc::now() + TimeDelta::days(1);
    let windows = [
        ("whole range", None, None, StatsInterval::Day),
        (
            "whole range, no series",
            None,
            None,
            StatsInterval::Unspecified,
        ),
        ("whole range by hour", None, None, StatsInterval::Hour),
        (
            "aligned hours",
            Some(at(1, 3, 0, 0, 0)),
            Some(at(1, 9, 0, 0, 0)),
            StatsInterval::Hour,
        ),
        (
            "unaligned by hour",
            Some(start),
            Some(end),
            StatsInterval::Hour,
        ),
        (
            "unaligned by day",
            Some(start),
            Some(end),
            StatsInterval::Day,
        ),
        (
            "unaligned, no series",
            Some(start),
            Some(end),
            StatsInterval::Unspecified,
        ),
        (
            "within one minute",
            Some(at(0, 5, 17, 10, 0)),
            Some(at(0, 5, 17, 50, 0)),
            StatsInterval::Hour,
        ),
        (
            "minutes within an hour",
            Some(at(0, 5, 17, 10, 0)),
            Some(at(0, 5, 48, 50, 0)),
            StatsInterval::Hour,
        ),
        (
            "empty",
            Some(at(-10, 0, 0, 0, 0)),
            Some(at(-9, 0, 0, 0, 0)),
            StatsInterval::Day,
        ),
        (
            "open start",
            None,
            Some(at(1, 12, 34, 56, 789_000)),
            StatsInterval::Day,
        ),
        (
            "open end",
            Some(at(2, 7, 30, 30, 0)),
            None,
            StatsInterval::Hour,
        ),
    ];
    for task in [fixture.task_a, fixture.task_b] {
        for (name, window_start, window_end, interval) in &windows {
            let actual = stats(
                &mut fixture.query,
                TENANT,
                request(task, *window_start, *window_end, *interval),
            )
            .await
            .unwrap_or_else(|status| panic!("{phase}, {name}: {status:?}"));
            let wanted = expected(
                &calls,
                task,
                *window_start,
                window_end.unwrap_or(far_future),
                *interval,
            );
            assert_eq!(actual, wanted, "{phase}, {name}, task {task}");
        }
    }
    // The windows hold what they are meant to test.
    let whole = expected(&calls, fixture.task_a, None, far_future, StatsInterval::Day);
    assert!(whole.total_calls > 500 && whole.by_tag.len() == 8 && whole.by_level.len() == 4);
    assert!(whole.transferred_calls > 0 && whole.series.len() >= 4);
    let edge = expected(
        &calls,
        fixture.task_a,
        Some(at(0, 5, 17, 10, 0)),
        at(0, 5, 17, 50, 0),
        StatsInterval::Hour,
    );
    assert!(edge.total_calls > 0, "the one-minute window holds calls");
}

/// Folds every delta, waiting for the lock if the background compactor holds it.
async fn compact(pool: &PgPool) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let folded = callstore::stats::compact_once(pool)
                .await
                .expect("compaction runs");
            if folded.is_some() && deltas(pool).await == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("compaction completes in time");
    assert_eq!(deltas(pool).await, 0, "every delta is folded");
}

async fn fixture(compaction_interval: Duration) -> (Fixture, Vec<CallRecord>, StdRng) {
    let app = spawn_app_with(|config| config.stats.compaction_interval = compaction_interval).await;
    let pool = app.pool().await;
    let mut ingest_client = app.ingest_client().await;
    let query = QueryServiceClient::new(app.channel().await);
    let mut rng = StdRng::seed_from_u64(20_261_123);
    let calls = first_versions(&mut rng);
    ingest(&mut ingest_client, TENANT, calls.clone()).await;
    let task_a = task_id(&pool, TENANT, TASK_A).await;
    let task_b = task_id(&pool, TENANT, TASK_B).await;
    let fixture = Fixture {
        app,
        pool,
        query,
        ingest: ingest_client,
        task_a,
        task_b,
    };
    (fixture, calls, rng)
}

/// The answered call of task A with the shortest (`true`) or longest talk time.
async fn extreme_call(pool: &PgPool, task: Uuid, shortest: bool) -> String {
    let order = if shortest {
        "SELECT source_call_id FROM calls
         WHERE tenant_id = $1 AND task_id = $2 AND outcome = 1 AND talk_duration_ms IS NOT NULL
         ORDER BY talk_duration_ms ASC, id LIMIT 1"
    } else {
        "SELECT source_call_id FROM calls
         WHERE tenant_id = $1 AND task_id = $2 AND outcome = 1 AND talk_duration_ms IS NOT NULL
         ORDER BY talk_duration_ms DESC, id LIMIT 1"
    };
    sqlx::query_scalar(order)
        .bind(TENANT)
        .bind(task)
        .fetch_one(pool)
        .await
        .expect("an answered call")
}

/// Version 2 of some calls: other outcomes, talk times, tags, levels, dial times (another
/// minute, hour or day) and tasks; the calls with task A's shortest and longest talk times lose
/// them; one call leaves its task. Then calls opened, appended to and completed.
async fn change_calls(fixture: &mut Fixture, calls: &[CallRecord], rng: &mut StdRng) {
    let shortest = extreme_call(&fixture.pool, fixture.task_a, true).await;
    let longest = extreme_call(&fixture.pool, fixture.task_a, false).await;
    assert_eq!(
        (shortest.as_str(), longest.as_str()),
        ("shortest", "longest")
    );
    let mut changed: Vec<CallRecord> = Vec::new();
    let mut seen = HashSet::new();
    for (index, original) in calls.iter().enumerate() {
        let id = original.source_call_id.clone();
        let pick = id == shortest || id == longest || index % 7 == 3;
        if !pick || !seen.insert(id.clone()) {
            continue;
        }
        let dial_time = callstore::api::convert::timestamp_to_utc(
            original.dial_time.as_ref().expect("a dial time"),
        )
        .expect("a valid time");
        let moved = match index % 5 {
            0 => dial_time + TimeDelta::seconds(61),
            1 => dial_time + TimeDelta::minutes(97),
            2 => dial_time + TimeDelta::days(1),
            _ => dial_time,
        };
        let task = match index % 11 {
            0 => TASK_B,
            1 => "",
            _ => original.source_task_id.as_str(),
        };
        let mut record = call(rng, &id, task, moved);
        if id == shortest || id == longest {
            record.outcome = CallOutcome::Answered as i32;
            record.talk_duration_ms = Some(45_000);
            record.source_task_id = TASK_A.to_owned();
            record.dial_time = original.dial_time;
            record.answer_time = None;
        }
        changed.push(record);
    }
    assert!(changed.len() > 150);
    ingest(&mut fixture.ingest, TENANT, changed).await;

    // Calls in progress: opened (answered, no talk time yet), appended to, completed.
    for number in 0..3 {
        let dial_time = at(1, 3 + number, 5, 7, 0);
        let mut record = call(rng, &format!("live-{number}"), TASK_A, dial_time);
        record.state = CallState::InProgress as i32;
        record.outcome = CallOutcome::Answered as i32;
        record.talk_duration_ms = None;
        let opened = fixture
            .ingest
            .open_call(as_tenant(
                TENANT,
                OpenCallRequest {
                    call: Some(record.clone()),
                },
            ))
            .await
            .expect("opens")
            .into_inner()
            .result
            .expect("a result");
        fixture
            .ingest
            .append_turns(as_tenant(
                TENANT,
                AppendTurnsRequest {
                    call_id: opened.id.clone(),
                    turns: vec![Turn {
                        sequence: 1,
                        speaker: Speaker::Robot as i32,
                        text: "您好".to_owned(),
                        ..Turn::default()
                    }],
                    ..AppendTurnsRequest::default()
                },
            ))
            .await
            .expect("appends");
        if number < 2 {
            record.state = CallState::Completed as i32;
            record.talk_duration_ms = Some(7_000 + 1_000 * number);
            record.tags = vec![Tag {
                source_tag_id: "tag-3".to_owned(),
                ..Tag::default()
            }];
            fixture
                .ingest
                .complete_call(as_tenant(
                    TENANT,
                    CompleteCallRequest {
                        call: Some(record),
                        hangup_time: Some(utc_to_timestamp(dial_time + TimeDelta::minutes(2))),
                    },
                ))
                .await
                .expect("completes");
        }
    }
    let mut never_opened = call(rng, "completed-only", TASK_B, at(2, 2, 2, 2, 2));
    never_opened.state = CallState::Completed as i32;
    fixture
        .ingest
        .complete_call(as_tenant(
            TENANT,
            CompleteCallRequest {
                call: Some(never_opened),
                hangup_time: None,
            },
        ))
        .await
        .expect("completes");
}

#[tokio::test]
async fn task_stats_are_exact_before_and_after_compaction_and_through_changes() {
    // No background compaction: this test compacts when it means to.
    let (mut fixture, calls, mut rng) = fixture(Duration::from_secs(3_600)).await;
    // Another tenant's calls under the same source ids must not count.
    let mut other_client = fixture.app.ingest_client().await;
    ingest(&mut other_client, OTHER_TENANT, calls[..300].to_vec()).await;

    assert!(deltas(&fixture.pool).await > 0, "ingest appended deltas");
    assert_all_windows_exact(&mut fixture, "deltas only").await;

    compact(&fixture.pool).await;
    let compacted: i64 = sqlx::query_scalar("SELECT count(*) FROM call_stats_buckets")
        .fetch_one(&fixture.pool)
        .await
        .expect("counts buckets");
    assert!(compacted > 0);
    assert_all_windows_exact(&mut fixture, "compacted").await;

    change_calls(&mut fixture, &calls, &mut rng).await;
    let removals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_stats_deltas WHERE removed_min IS NOT NULL")
            .fetch_one(&fixture.pool)
            .await
            .expect("counts deltas");
    assert!(removals > 0, "the changes removed talk times");
    assert_all_windows_exact(&mut fixture, "compacted plus pending changes").await;

    compact(&fixture.pool).await;
    assert_all_windows_exact(&mut fixture, "changes compacted").await;

    fixture.app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_background_compactor_folds_deltas_and_stats_stay_exact() {
    let (mut fixture, _calls, _rng) = fixture(Duration::from_millis(100)).await;
    tokio::time::timeout(DEADLINE, async {
        while deltas(&fixture.pool).await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the compactor folds every delta in time");
    assert_all_windows_exact(&mut fixture, "compacted in the background").await;
    fixture.app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn stats_answer_only_for_the_tenants_tasks_and_valid_windows() {
    let (mut fixture, calls, _rng) = fixture(Duration::from_secs(3_600)).await;
    let mut other_client = fixture.app.ingest_client().await;
    ingest(&mut other_client, OTHER_TENANT, calls[..20].to_vec()).await;
    let other_task = task_id(&fixture.pool, OTHER_TENANT, TASK_A).await;
    let task = fixture.task_a;

    let other = stats(
        &mut fixture.query,
        TENANT,
        request(other_task, None, None, StatsInterval::Day),
    )
    .await
    .expect_err("another tenant's task");
    let unknown = stats(
        &mut fixture.query,
        TENANT,
        request(Uuid::now_v7(), None, None, StatsInterval::Day),
    )
    .await
    .expect_err("an unknown task");
    assert_eq!(other.code(), Code::NotFound, "{other:?}");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(other.message(), unknown.message());
    let own = stats(
        &mut fixture.query,
        OTHER_TENANT,
        request(other_task, None, None, StatsInterval::Day),
    )
    .await
    .expect("the owner sees its task");
    let owned = calls[..20]
        .iter()
        .filter(|call| call.source_task_id == TASK_A)
        .count();
    assert_eq!(
        own.total_calls, owned as i64,
        "the other tenant's calls of its task"
    );

    let invalid = [
        (
            GetTaskStatsRequest {
                task_id: "not-a-uuid".to_owned(),
                ..GetTaskStatsRequest::default()
            },
            "task_id",
        ),
        (GetTaskStatsRequest::default(), "task_id"),
        (
            request(
                task,
                Some(at(1, 0, 0, 0, 0)),
                Some(at(1, 0, 0, 0, 0)),
                StatsInterval::Day,
            ),
            "end_time",
        ),
        (
            request(
                task,
                Some(at(2, 0, 0, 0, 0)),
                Some(at(1, 0, 0, 0, 0)),
                StatsInterval::Day,
            ),
            "end_time",
        ),
        (
            request(
                task,
                Some(Utc::now() + TimeDelta::days(1)),
                None,
                StatsInterval::Day,
            ),
            "start_time",
        ),
        (
            GetTaskStatsRequest {
                interval: 42,
                ..request(task, None, None, StatsInterval::Day)
            },
            "interval",
        ),
        (
            GetTaskStatsRequest {
                end_time: Some(Timestamp {
                    seconds: 0,
                    nanos: 1_000_000_000,
                }),
                ..request(task, None, None, StatsInterval::Day)
            },
            "end_time",
        ),
    ];
    for (message, field) in invalid {
        let status = stats(&mut fixture.query, TENANT, message.clone())
            .await
            .expect_err("invalid");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{message:?}: {status:?}"
        );
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violations: Vec<String> = details
            .bad_request()
            .map(|bad| {
                bad.field_violations
                    .iter()
                    .map(|v| v.field.clone())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(violations, [field], "{message:?}");
    }
    fixture.app.shutdown().await.expect("clean shutdown");
}
