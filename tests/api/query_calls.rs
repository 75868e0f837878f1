//! ListCalls against an oracle: generated calls with known attributes are ingested through the
//! API, and every filter, alone and combined, in every order and direction, is paged through to
//! the end and compared with what a plain Rust evaluation of the same records says.

use std::collections::{HashMap, HashSet};

use callstore::api::convert::{timestamp_to_utc, utc_to_timestamp};
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    self, CallFilter, CallOrderBy, CallOutcome, CallView, Carrier, Gender, HangupSide,
    IngestCallsRequest, IngestOutcome, Int64Range, ListCallsRequest, NumberStatus, Speaker,
    TranscriptFilter, TransferState,
};
use chrono::Duration;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::helpers::{TestApp, as_tenant, spawn_app};

#[path = "../../benches/support/generator.rs"]
#[allow(dead_code)]
mod generator;

use generator::{Generator, GeneratorConfig};

const TENANT: &str = "oracle";

/// A stored call as the oracle sees it: the record sent, with the server ids it was given.
struct Known {
    id: Uuid,
    record: proto::CallRecord,
    tag_ids: HashSet<Uuid>,
    level_id: Option<Uuid>,
    task_id: Uuid,
}

/// The generator's calls, varied where it keeps a field constant, so every filter has both
/// matching and non-matching calls.
fn varied(generator: &Generator, index: u64) -> proto::CallRecord {
    let mut record = generator.call(index);
    let dial_time = record.dial_time.and_then(|time| timestamp_to_utc(&time));
    if index.is_multiple_of(5)
        && let Some(dial_time) = dial_time
    {
        record.read_time = Some(utc_to_timestamp(dial_time + Duration::hours(2)));
    }
    if index.is_multiple_of(7) {
        record.transfer = Some(proto::Transfer {
            state: TransferState::Answered as i32,
            ..proto::Transfer::default()
        });
    } else if index % 7 == 1 {
        record.transfer = Some(proto::Transfer {
            state: TransferState::NotTransferred as i32,
            ..proto::Transfer::default()
        });
    }
    if record.outcome == CallOutcome::Answered as i32 {
        record.hangup_side = if index.is_multiple_of(2) {
            HangupSide::Customer as i32
        } else {
            HangupSide::Robot as i32
        };
    }
    if index.is_multiple_of(13) {
        // Unscored calls sort as the lowest score.
        record.score = None;
        record.rounds = None;
    }
    record
}

async fn ingest(app: &TestApp, tenant: &str, records: Vec<proto::CallRecord>) {
    let mut client = app.ingest_client().await;
    for chunk in records.chunks(250) {
        let response = client
            .ingest_calls(as_tenant(
                tenant,
                IngestCallsRequest {
                    calls: chunk.to_vec(),
                },
            ))
            .await
            .expect("the batch is ingested")
            .into_inner();
        for result in response.results {
            assert_ne!(
                result.outcome(),
                IngestOutcome::Rejected,
                "a call was refused: {result:?}"
            );
        }
    }
}

/// Ingests `indexes` of the generator and returns the oracle's view of them.
async fn load(app: &TestApp, generator: &Generator, count: u64) -> Vec<Known> {
    let records: Vec<proto::CallRecord> =
        (0..count).map(|index| varied(generator, index)).collect();
    ingest(app, TENANT, records.clone()).await;

    let pool = app.pool().await;
    let ids: HashMap<String, Uuid> = pairs(&pool, "SELECT source_call_id, id FROM calls").await;
    let tags: HashMap<String, Uuid> = pairs(&pool, "SELECT source_tag_id, id FROM tags").await;
    let levels: HashMap<String, Uuid> =
        pairs(&pool, "SELECT source_level_id, id FROM levels").await;
    let tasks: HashMap<String, Uuid> = pairs(&pool, "SELECT source_task_id, id FROM tasks").await;
    records
        .into_iter()
        .map(|record| Known {
            id: ids[&record.source_call_id],
            tag_ids: record
                .tags
                .iter()
                .map(|tag| tags[&tag.source_tag_id])
                .collect(),
            level_id: record
                .level
                .as_ref()
                .map(|level| levels[&level.source_level_id]),
            task_id: tasks[&record.source_task_id],
            record,
        })
        .collect()
}

async fn pairs(pool: &sqlx::PgPool, sql: &'static str) -> HashMap<String, Uuid> {
    sqlx::query_as::<_, (String, Uuid)>(sql)
        .fetch_all(pool)
        .await
        .expect("reads ids")
        .into_iter()
        .collect()
}

/// Whether `known` passes `filter`, evaluated straight from the record sent.
fn matches(known: &Known, filter: &CallFilter) -> bool {
    let record = &known.record;
    let in_range = |value: Option<i64>, range: &Int64Range, scale: i64| {
        value.is_some_and(|value| {
            range.min.is_none_or(|min| value >= min * scale)
                && range.max.is_none_or(|max| value < max * scale)
        })
    };
    let region = record.callee_region.clone().unwrap_or_default();
    let dial_time = record.dial_time.and_then(|time| timestamp_to_utc(&time));
    let transfer_state = record
        .transfer
        .as_ref()
        .map_or(0, |transfer| transfer.state);
    (filter.score_ranges.is_empty()
        || filter
            .score_ranges
            .iter()
            .any(|range| in_range(record.score, range, 1)))
        && (filter.level_ids.is_empty()
            || known
                .level_id
                .is_some_and(|level| filter.level_ids.contains(&level.to_string())))
        && (filter.callee.is_empty() || record.callee == filter.callee)
        && record.callee.starts_with(&filter.callee_prefix)
        && filter
            .talk_seconds
            .as_ref()
            .is_none_or(|range| in_range(record.talk_duration_ms, range, 1000))
        && filter
            .rounds
            .as_ref()
            .is_none_or(|range| in_range(record.rounds.map(i64::from), range, 1))
        && (filter.any_tag_ids.is_empty()
            || filter
                .any_tag_ids
                .iter()
                .any(|tag| known.tag_ids.contains(&tag.parse().unwrap())))
        && filter
            .all_tag_ids
            .iter()
            .all(|tag| known.tag_ids.contains(&tag.parse().unwrap()))
        && filter
            .dial_time_start
            .is_none_or(|start| dial_time >= timestamp_to_utc(&start))
        && filter
            .dial_time_end
            .is_none_or(|end| dial_time < timestamp_to_utc(&end))
        && (filter.outcomes.is_empty() || filter.outcomes.contains(&record.outcome))
        && (filter.number_statuses.is_empty()
            || filter.number_statuses.contains(&record.number_status))
        && (filter.genders.is_empty() || filter.genders.contains(&record.gender))
        && (filter.hangup_sides.is_empty() || filter.hangup_sides.contains(&record.hangup_side))
        && (filter.carriers.is_empty() || filter.carriers.contains(&region.carrier))
        && (filter.province.is_empty() || region.province == filter.province)
        && (filter.city.is_empty() || region.city == filter.city)
        && filter.transferred.is_none_or(|transferred| {
            let not_transferred = [
                TransferState::Unspecified as i32,
                TransferState::NotTransferred as i32,
            ];
            transferred != not_transferred.contains(&transfer_state)
        })
        && filter
            .read
            .is_none_or(|read| read == record.read_time.is_some())
        && filter.transcript.as_ref().is_none_or(|transcript| {
            let needle = transcript.contains.to_lowercase();
            record.turns.iter().any(|turn| {
                (transcript.speaker == Speaker::Unspecified as i32
                    || turn.speaker == transcript.speaker)
                    && turn.text.to_lowercase().contains(&needle)
            })
        })
}

/// The oracle's sort key of an order, as the contract defines it (missing values lowest).
fn sort_key(known: &Known, order: CallOrderBy) -> i64 {
    let record = &known.record;
    match order {
        CallOrderBy::Unspecified | CallOrderBy::DialTime => record
            .dial_time
            .and_then(|time| timestamp_to_utc(&time))
            .map(|time| time.timestamp_micros())
            .unwrap(),
        CallOrderBy::Score => record.score.unwrap_or(i64::MIN),
        CallOrderBy::TalkTime => record.talk_duration_ms.unwrap_or(i64::MIN),
        CallOrderBy::Rounds => record.rounds.map_or(i64::from(i32::MIN), i64::from),
    }
}

fn expected(
    calls: &[Known],
    task: Option<Uuid>,
    filter: &CallFilter,
    order: CallOrderBy,
    ascending: bool,
) -> Vec<Uuid> {
    let mut found: Vec<&Known> = calls
        .iter()
        .filter(|known| task.is_none_or(|task| known.task_id == task))
        .filter(|known| matches(known, filter))
        .collect();
    found.sort_by_key(|known| (sort_key(known, order), known.id));
    if !ascending {
        found.reverse();
    }
    found.into_iter().map(|known| known.id).collect()
}

/// Pages through a list to its end; checks total_size on the first page.
async fn page_through(
    client: &mut QueryServiceClient<Channel>,
    request: ListCallsRequest,
    expected_total: Option<usize>,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut first = true;
    loop {
        let response = client
            .list_calls(as_tenant(
                TENANT,
                ListCallsRequest {
                    page_token: token.clone(),
                    include_total_size: first && expected_total.is_some(),
                    ..request.clone()
                },
            ))
            .await
            .unwrap_or_else(|status| panic!("{request:?} fails: {status:?}"))
            .into_inner();
        if first && let Some(total) = expected_total {
            assert_eq!(
                response.total_size, total as i64,
                "total_size of {request:?}"
            );
            assert!(!response.total_size_is_estimate);
        }
        first = false;
        let page_size = if request.page_size == 0 {
            15
        } else {
            request.page_size
        };
        assert!(response.calls.len() <= page_size as usize);
        ids.extend(
            response
                .calls
                .iter()
                .map(|call| call.id.parse::<Uuid>().unwrap()),
        );
        if response.next_page_token.is_empty() {
            return ids;
        }
        token = response.next_page_token;
    }
}

fn ids(values: &[Uuid]) -> Vec<String> {
    values.iter().map(Uuid::to_string).collect()
}

/// The filters the oracle checks, alone and combined, chosen from the data so that each matches
/// some calls and not others.
fn cases(calls: &[Known]) -> Vec<(&'static str, CallFilter)> {
    let with_two_tags = calls
        .iter()
        .find(|known| known.tag_ids.len() >= 2)
        .expect("a call with two tags");
    let mut two_tags: Vec<Uuid> = with_two_tags.tag_ids.iter().copied().collect();
    two_tags.sort();
    two_tags.truncate(2);
    let levels: Vec<Uuid> = {
        let mut levels: Vec<Uuid> = calls.iter().filter_map(|known| known.level_id).collect();
        levels.sort();
        levels.dedup();
        levels.into_iter().take(2).collect()
    };
    let sample = &calls[17].record;
    let region = sample.callee_region.clone().unwrap();
    let start = calls
        .iter()
        .filter_map(|known| known.record.dial_time)
        .map(|time| time.seconds)
        .min()
        .unwrap();
    let window = (
        prost_types::Timestamp {
            seconds: start + 5 * 86_400,
            nanos: 0,
        },
        prost_types::Timestamp {
            seconds: start + 15 * 86_400,
            nanos: 0,
        },
    );
    let range = |min: Option<i64>, max: Option<i64>| Int64Range { min, max };
    let transcript = |speaker: Speaker, text: &str| {
        Some(TranscriptFilter {
            speaker: speaker as i32,
            contains: text.to_owned(),
        })
    };
    vec![
        ("no filter", CallFilter::default()),
        (
            "score ranges",
            CallFilter {
                score_ranges: vec![range(Some(0), Some(20)), range(Some(40), Some(60))],
                ..CallFilter::default()
            },
        ),
        (
            "open score range",
            CallFilter {
                score_ranges: vec![range(Some(50), None)],
                ..CallFilter::default()
            },
        ),
        (
            "levels",
            CallFilter {
                level_ids: ids(&levels),
                ..CallFilter::default()
            },
        ),
        (
            "callee",
            CallFilter {
                callee: sample.callee.clone(),
                ..CallFilter::default()
            },
        ),
        (
            "callee prefix",
            CallFilter {
                callee_prefix: "138".to_owned(),
                ..CallFilter::default()
            },
        ),
        (
            "talk seconds",
            CallFilter {
                talk_seconds: Some(range(Some(30), Some(90))),
                ..CallFilter::default()
            },
        ),
        (
            "rounds",
            CallFilter {
                rounds: Some(range(Some(3), Some(6))),
                ..CallFilter::default()
            },
        ),
        (
            "any tag",
            CallFilter {
                any_tag_ids: ids(&two_tags),
                ..CallFilter::default()
            },
        ),
        (
            "all tags",
            CallFilter {
                all_tag_ids: ids(&two_tags),
                ..CallFilter::default()
            },
        ),
        (
            "dial window",
            CallFilter {
                dial_time_start: Some(window.0),
                dial_time_end: Some(window.1),
                ..CallFilter::default()
            },
        ),
        (
            "outcomes",
            CallFilter {
                outcomes: vec![CallOutcome::NoAnswer as i32, CallOutcome::Busy as i32],
                ..CallFilter::default()
            },
        ),
        (
            "number statuses",
            CallFilter {
                number_statuses: vec![NumberStatus::PoweredOff as i32, NumberStatus::Vacant as i32],
                ..CallFilter::default()
            },
        ),
        (
            "genders",
            CallFilter {
                genders: vec![Gender::Female as i32],
                ..CallFilter::default()
            },
        ),
        (
            "hang-up sides",
            CallFilter {
                hangup_sides: vec![HangupSide::Customer as i32],
                ..CallFilter::default()
            },
        ),
        (
            "carriers",
            CallFilter {
                carriers: vec![Carrier::ChinaUnicom as i32],
                ..CallFilter::default()
            },
        ),
        (
            "province",
            CallFilter {
                province: region.province.clone(),
                ..CallFilter::default()
            },
        ),
        (
            "city",
            CallFilter {
                city: region.city.clone(),
                ..CallFilter::default()
            },
        ),
        (
            "transferred",
            CallFilter {
                transferred: Some(true),
                ..CallFilter::default()
            },
        ),
        (
            "not transferred",
            CallFilter {
                transferred: Some(false),
                ..CallFilter::default()
            },
        ),
        (
            "read",
            CallFilter {
                read: Some(true),
                ..CallFilter::default()
            },
        ),
        (
            "unread",
            CallFilter {
                read: Some(false),
                ..CallFilter::default()
            },
        ),
        (
            "customer said 不需要",
            CallFilter {
                transcript: transcript(Speaker::Customer, "不需要"),
                ..CallFilter::default()
            },
        ),
        (
            "customer said 好 (one character)",
            CallFilter {
                transcript: transcript(Speaker::Customer, "好"),
                ..CallFilter::default()
            },
        ),
        (
            "robot said 利息 (two characters)",
            CallFilter {
                transcript: transcript(Speaker::Robot, "利息"),
                ..CallFilter::default()
            },
        ),
        (
            "anyone said 微信",
            CallFilter {
                transcript: transcript(Speaker::Unspecified, "微信"),
                ..CallFilter::default()
            },
        ),
        (
            "nobody said this",
            CallFilter {
                transcript: transcript(Speaker::Unspecified, "火星探测器"),
                ..CallFilter::default()
            },
        ),
        (
            "answered, scored 40 or more, customer hung up",
            CallFilter {
                outcomes: vec![CallOutcome::Answered as i32],
                score_ranges: vec![range(Some(40), None)],
                hangup_sides: vec![HangupSide::Customer as i32],
                ..CallFilter::default()
            },
        ),
        (
            "a tag, talk time and a dial window",
            CallFilter {
                any_tag_ids: ids(&two_tags[..1]),
                talk_seconds: Some(range(Some(20), None)),
                dial_time_start: Some(window.0),
                dial_time_end: Some(window.1),
                ..CallFilter::default()
            },
        ),
        (
            "customer words, province and unread",
            CallFilter {
                transcript: transcript(Speaker::Customer, "好的"),
                province: region.province.clone(),
                read: Some(false),
                ..CallFilter::default()
            },
        ),
    ]
}

#[tokio::test]
async fn every_filter_alone_and_combined_pages_exactly_the_matching_calls_in_order() {
    let app = spawn_app().await;
    let generator = Generator::new(GeneratorConfig {
        tasks: 3,
        ..GeneratorConfig::default()
    });
    let calls = load(&app, &generator, 2000).await;
    let mut client = QueryServiceClient::new(app.channel().await);
    let task = calls[0].task_id;

    let orders = [
        CallOrderBy::Unspecified,
        CallOrderBy::Score,
        CallOrderBy::TalkTime,
        CallOrderBy::Rounds,
    ];
    for (name, filter) in cases(&calls) {
        let everywhere = expected(&calls, None, &filter, CallOrderBy::DialTime, false);
        assert!(
            everywhere.len() < calls.len() || name == "no filter",
            "{name}: the filter must exclude some calls"
        );
        assert!(
            !everywhere.is_empty() || name == "nobody said this",
            "{name}: matches nothing"
        );
        for order in orders {
            for ascending in [false, true] {
                for task in [None, Some(task)] {
                    let want = expected(&calls, task, &filter, order, ascending);
                    let got = page_through(
                        &mut client,
                        ListCallsRequest {
                            task_id: task.map(|task| task.to_string()).unwrap_or_default(),
                            filter: Some(filter.clone()),
                            order_by: order as i32,
                            ascending,
                            page_size: 400,
                            ..ListCallsRequest::default()
                        },
                        Some(want.len()),
                    )
                    .await;
                    assert_eq!(
                        got.len(),
                        want.len(),
                        "{name}, {order:?}, ascending {ascending}, task {task:?}"
                    );
                    assert!(
                        got == want,
                        "{name}, {order:?}, ascending {ascending}, task {task:?}: order differs"
                    );
                }
            }
        }
    }

    // Small pages: the default size, and a size that does not divide the total.
    let want = expected(
        &calls,
        Some(task),
        &CallFilter::default(),
        CallOrderBy::Score,
        false,
    );
    for page_size in [0, 7] {
        let got = page_through(
            &mut client,
            ListCallsRequest {
                task_id: task.to_string(),
                order_by: CallOrderBy::Score as i32,
                page_size,
                ..ListCallsRequest::default()
            },
            None,
        )
        .await;
        assert_eq!(got, want, "page size {page_size}");
    }
    let first = client
        .list_calls(as_tenant(TENANT, ListCallsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.calls.len(), 15, "the seed's default page size");
}

#[tokio::test]
async fn paging_neither_repeats_nor_misses_a_call_while_new_calls_arrive() {
    let app = spawn_app().await;
    let generator = Generator::new(GeneratorConfig {
        tasks: 1,
        ..GeneratorConfig::default()
    });
    let calls = load(&app, &generator, 600).await;
    let mut client = QueryServiceClient::new(app.channel().await);

    let mut seen: Vec<(i64, Uuid)> = Vec::new();
    let mut token = String::new();
    let mut arriving = 100_000;
    loop {
        let response = client
            .list_calls(as_tenant(
                TENANT,
                ListCallsRequest {
                    page_size: 25,
                    page_token: token,
                    ..ListCallsRequest::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for call in &response.calls {
            let dial_time = timestamp_to_utc(&call.dial_time.unwrap()).unwrap();
            seen.push((dial_time.timestamp_micros(), call.id.parse().unwrap()));
        }
        if response.next_page_token.is_empty() {
            break;
        }
        token = response.next_page_token;
        // New calls, dialled all over the window (before and after the page's position).
        let records = (arriving..arriving + 10)
            .map(|index| varied(&generator, index))
            .collect();
        ingest(&app, TENANT, records).await;
        arriving += 10;
    }

    let unique: HashSet<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(unique.len(), seen.len(), "a call was listed twice");
    for known in &calls {
        assert!(unique.contains(&known.id), "call {} was missed", known.id);
    }
    assert!(
        seen.windows(2).all(|pair| pair[0] > pair[1]),
        "the list is not in descending dial-time order"
    );
    assert!(
        seen.len() > calls.len(),
        "calls that arrived behind the cursor are listed too"
    );
}

#[tokio::test]
async fn views_embed_tags_and_level_only_when_full() {
    let app = spawn_app().await;
    let generator = Generator::new(GeneratorConfig::default());
    let calls = load(&app, &generator, 40).await;
    let mut client = QueryServiceClient::new(app.channel().await);
    let tagged = calls
        .iter()
        .find(|known| !known.tag_ids.is_empty() && known.level_id.is_some())
        .unwrap();
    let filter = CallFilter {
        callee: tagged.record.callee.clone(),
        ..CallFilter::default()
    };
    for (view, embedded) in [(CallView::Basic, false), (CallView::Full, true)] {
        let response = client
            .list_calls(as_tenant(
                TENANT,
                ListCallsRequest {
                    filter: Some(filter.clone()),
                    view: view as i32,
                    ..ListCallsRequest::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let call = response
            .calls
            .iter()
            .find(|call| call.id == tagged.id.to_string())
            .expect("the call is listed");
        let tag_ids: HashSet<Uuid> = call.tag_ids.iter().map(|id| id.parse().unwrap()).collect();
        assert_eq!(tag_ids, tagged.tag_ids, "{view:?} carries the tag ids");
        assert_eq!(call.level_id, tagged.level_id.unwrap().to_string());
        assert_eq!(
            call.tags.len(),
            if embedded { tagged.tag_ids.len() } else { 0 },
            "{view:?}"
        );
        assert_eq!(call.level.is_some(), embedded, "{view:?}");
        if embedded {
            assert!(call.tags.iter().all(|tag| !tag.name.is_empty()));
        }
    }
}

#[tokio::test]
async fn another_tenant_lists_none_of_these_calls_and_cannot_use_their_tokens() {
    let app = spawn_app().await;
    let generator = Generator::new(GeneratorConfig::default());
    load(&app, &generator, 30).await;
    let mut client = QueryServiceClient::new(app.channel().await);

    let page = client
        .list_calls(as_tenant(
            TENANT,
            ListCallsRequest {
                page_size: 10,
                ..ListCallsRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.calls.len(), 10);

    let theirs = client
        .list_calls(as_tenant(
            "intruder",
            ListCallsRequest {
                include_total_size: true,
                ..ListCallsRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.calls.is_empty());
    assert_eq!(theirs.total_size, 0);

    let status = client
        .list_calls(as_tenant(
            "intruder",
            ListCallsRequest {
                page_size: 10,
                page_token: page.next_page_token.clone(),
                ..ListCallsRequest::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn invalid_requests_name_the_field_at_fault() {
    let app = spawn_app().await;
    let generator = Generator::new(GeneratorConfig::default());
    load(&app, &generator, 30).await;
    let mut client = QueryServiceClient::new(app.channel().await);
    let first = client
        .list_calls(as_tenant(
            TENANT,
            ListCallsRequest {
                page_size: 5,
                ..ListCallsRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let filter = |filter: CallFilter| Some(filter);
    let cases: Vec<(&str, ListCallsRequest)> = vec![
        (
            "task_id",
            ListCallsRequest {
                task_id: "not-a-uuid".to_owned(),
                ..ListCallsRequest::default()
            },
        ),
        (
            "page_size",
            ListCallsRequest {
                page_size: -1,
                ..ListCallsRequest::default()
            },
        ),
        (
            "order_by",
            ListCallsRequest {
                order_by: 99,
                ..ListCallsRequest::default()
            },
        ),
        (
            "view",
            ListCallsRequest {
                view: 99,
                ..ListCallsRequest::default()
            },
        ),
        (
            "filter.score_ranges[1]",
            ListCallsRequest {
                filter: filter(CallFilter {
                    score_ranges: vec![
                        Int64Range {
                            min: Some(0),
                            max: Some(10),
                        },
                        Int64Range {
                            min: Some(10),
                            max: Some(10),
                        },
                    ],
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ),
        (
            "filter.any_tag_ids[0]",
            ListCallsRequest {
                filter: filter(CallFilter {
                    any_tag_ids: vec!["tag-1".to_owned()],
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ),
        (
            "filter.outcomes[0]",
            ListCallsRequest {
                filter: filter(CallFilter {
                    outcomes: vec![999],
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ),
        (
            "filter.talk_seconds",
            ListCallsRequest {
                filter: filter(CallFilter {
                    talk_seconds: Some(Int64Range {
                        min: Some(-5),
                        max: None,
                    }),
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ),
        (
            "filter.dial_time_end",
            ListCallsRequest {
                filter: filter(CallFilter {
                    dial_time_start: Some(prost_types::Timestamp {
                        seconds: 2_000,
                        nanos: 0,
                    }),
                    dial_time_end: Some(prost_types::Timestamp {
                        seconds: 1_000,
                        nanos: 0,
                    }),
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ),
        (
            "filter.transcript.contains",
            ListCallsRequest {
                filter: filter(CallFilter {
                    transcript: Some(TranscriptFilter {
                        speaker: Speaker::Customer as i32,
                        contains: String::new(),
                    }),
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ),
        (
            "page_token",
            ListCallsRequest {
                page_token: "garbage".to_owned(),
                ..ListCallsRequest::default()
            },
        ),
        (
            // The token of an unfiltered list, presented with a filter.
            "page_token",
            ListCallsRequest {
                page_token: first.next_page_token.clone(),
                filter: filter(CallFilter {
                    read: Some(true),
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ),
        (
            "page_token",
            ListCallsRequest {
                page_token: first.next_page_token.clone(),
                order_by: CallOrderBy::Score as i32,
                ..ListCallsRequest::default()
            },
        ),
    ];
    for (field, request) in cases {
        let status = client
            .list_calls(as_tenant(TENANT, request.clone()))
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violations = details
            .bad_request()
            .expect("a BadRequest")
            .field_violations
            .clone();
        assert!(
            violations.iter().any(|violation| violation.field == field),
            "{field}: {violations:?}"
        );
    }

    // The same token with a different page size is fine (AIP-158).
    let next = client
        .list_calls(as_tenant(
            TENANT,
            ListCallsRequest {
                page_size: 7,
                page_token: first.next_page_token,
                ..ListCallsRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.calls.len(), 7);
}
