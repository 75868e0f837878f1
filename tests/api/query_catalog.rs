//! GetTask, ListTasks, ListTaskNumbers, ListTags, ListTagGroups and ListLevels: progress,
//! filters, keyset pages and tenant isolation, through the real server.

use std::collections::HashSet;

use tonic::Code;
use tonic::transport::Channel;

use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    CallAttempt, CallRecord, Carrier, GetTaskRequest, IngestCallsRequest,
    IngestVendorPayloadRequest, Level, ListLevelsRequest, ListTagGroupsRequest, ListTagsRequest,
    ListTaskNumbersRequest, ListTaskNumbersResponse, ListTasksRequest, NumberStatus, PayloadFormat,
    Region, Tag, TagGroup, Task, TaskNumber, UpsertLevelsRequest, UpsertTagGroupsRequest,
    UpsertTagsRequest, UpsertTaskNumbersRequest, UpsertTasksRequest,
};

use crate::helpers::{TestApp, as_tenant, spawn_app};

const TASK_NUMBERS: &[u8] = include_bytes!("../fixtures/task_api_task_numbers.json");
/// The fixture's task, and the telephony id of its number's latest attempt.
const FIXTURE_TASK: &str = "772dd881-dcf7-42ee-a32b-b40a0ee5afb7";
const LATEST_ATTEMPT_CALL: &str = "90a48ed3-a5f6-4904-b1f3-a9ec883b069f";

/// The numbers of the native task `t-numbers`, in number order.
const NUMBERS: [(&str, NumberStatus, Carrier); 7] = [
    ("13800000001", NumberStatus::Connected, Carrier::ChinaMobile),
    ("13800000002", NumberStatus::Busy, Carrier::ChinaUnicom),
    ("13800000003", NumberStatus::Waiting, Carrier::ChinaTelecom),
    // Waiting, but with an attempt: called.
    ("13900000004", NumberStatus::Waiting, Carrier::ChinaMobile),
    ("13900000005", NumberStatus::NoAnswer, Carrier::ChinaMobile),
    ("18600000006", NumberStatus::Vacant, Carrier::Other),
    (
        "400_800_1234",
        NumberStatus::Unspecified,
        Carrier::Unspecified,
    ),
];

async fn query_client(app: &TestApp) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(app.channel().await)
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// The server ids of the tasks `t-numbers` and `t-empty` of `tenant`, after storing them, the
/// numbers of `t-numbers`, and the fixture's task with its number and attempts.
struct Tasks {
    numbers: String,
    empty: String,
    fixture: String,
}

async fn seed_tasks(app: &TestApp, tenant: &str) -> Tasks {
    let mut ingest = app.ingest_client().await;
    // The fixture's task first, then the native ones: creation order is list order reversed.
    ingest
        .ingest_vendor_payload(as_tenant(
            tenant,
            IngestVendorPayloadRequest {
                format: PayloadFormat::TaskApiTaskNumbers as i32,
                payload: TASK_NUMBERS.to_vec(),
                ..Default::default()
            },
        ))
        .await
        .expect("the number list is ingested");
    // The call of the latest attempt (same system as the task); the older attempt's call is not
    // stored.
    ingest
        .ingest_calls(as_tenant(
            tenant,
            IngestCallsRequest {
                calls: vec![CallRecord {
                    source_system: "task_api".to_owned(),
                    source_call_id: LATEST_ATTEMPT_CALL.to_owned(),
                    callee: "18651683344".to_owned(),
                    dial_time: at(1_583_507_077),
                    ..Default::default()
                }],
            },
        ))
        .await
        .expect("the call is ingested");
    for name in ["t-numbers", "t-empty"] {
        ingest
            .upsert_tasks(as_tenant(
                tenant,
                UpsertTasksRequest {
                    tasks: vec![Task {
                        source_task_id: name.to_owned(),
                        name: format!("任务 {name}"),
                        ..Default::default()
                    }],
                },
            ))
            .await
            .expect("the task is stored");
    }
    let numbers = NUMBERS
        .iter()
        .map(|(number, status, carrier)| TaskNumber {
            number: (*number).to_owned(),
            status: *status as i32,
            region: Some(Region {
                carrier: *carrier as i32,
                province: "江苏".to_owned(),
                ..Default::default()
            }),
            attempts: if *number == "13900000004" {
                vec![CallAttempt {
                    source_attempt_id: "a-4".to_owned(),
                    call_time: at(1_700_000_000),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        })
        .collect();
    let results = ingest
        .upsert_task_numbers(as_tenant(
            tenant,
            UpsertTaskNumbersRequest {
                source_task_id: "t-numbers".to_owned(),
                numbers,
                ..Default::default()
            },
        ))
        .await
        .expect("the numbers are stored")
        .into_inner()
        .results;
    assert!(
        results.iter().all(|result| result.error.is_none()),
        "{results:?}"
    );

    let tasks = query_client(app)
        .await
        .list_tasks(as_tenant(tenant, ListTasksRequest::default()))
        .await
        .expect("the tasks")
        .into_inner()
        .tasks;
    let id_of = |source_task_id: &str| {
        tasks
            .iter()
            .find(|task| task.source_task_id == source_task_id)
            .map(|task| task.id.clone())
            .expect("the task is listed")
    };
    Tasks {
        numbers: id_of("t-numbers"),
        empty: id_of("t-empty"),
        fixture: id_of(FIXTURE_TASK),
    }
}

async fn list_numbers(
    app: &TestApp,
    tenant: &str,
    request: ListTaskNumbersRequest,
) -> Result<ListTaskNumbersResponse, tonic::Status> {
    Ok(query_client(app)
        .await
        .list_task_numbers(as_tenant(tenant, request))
        .await?
        .into_inner())
}

/// The numbers of one page of `request`.
async fn numbers_of(app: &TestApp, request: ListTaskNumbersRequest) -> Vec<String> {
    list_numbers(app, "acme", request)
        .await
        .expect("a page of numbers")
        .numbers
        .into_iter()
        .map(|number| number.number)
        .collect()
}

fn progress_of(task: &Task) -> (i64, i64, f64) {
    let progress = task.progress.as_ref().expect("progress");
    (
        progress.total_numbers,
        progress.called_numbers,
        progress.percent,
    )
}

#[tokio::test]
async fn tasks_are_listed_newest_first_with_their_progress_and_paged() {
    let app = spawn_app().await;
    let tasks = seed_tasks(&app, "acme").await;
    let mut client = query_client(&app).await;

    let listed = client
        .list_tasks(as_tenant("acme", ListTasksRequest::default()))
        .await
        .expect("the tasks")
        .into_inner();
    assert!(listed.next_page_token.is_empty());
    let order: Vec<&str> = listed.tasks.iter().map(|task| task.id.as_str()).collect();
    assert_eq!(order, [&tasks.empty, &tasks.numbers, &tasks.fixture]);
    // 5 of 7 called: statuses other than waiting/unspecified, and the waiting one with an attempt.
    let (total, called, percent) = progress_of(&listed.tasks[1]);
    assert_eq!((total, called), (7, 5));
    assert!((percent - 500.0 / 7.0).abs() < 1e-9, "{percent}");
    assert_eq!(progress_of(&listed.tasks[0]), (0, 0, 0.0));
    assert_eq!(progress_of(&listed.tasks[2]), (1, 1, 100.0));
    assert_eq!(listed.tasks[1].name, "任务 t-numbers");

    // GetTask: the same progress.
    let task = client
        .get_task(as_tenant(
            "acme",
            GetTaskRequest {
                task_id: tasks.numbers.clone(),
            },
        ))
        .await
        .expect("the task")
        .into_inner()
        .task
        .expect("a task");
    assert_eq!(task.source_task_id, "t-numbers");
    assert_eq!(progress_of(&task).0, 7);
    assert_eq!(progress_of(&task).1, 5);

    // Pages of two: every task once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_tasks(as_tenant(
                "acme",
                ListTasksRequest {
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .expect("a page")
            .into_inner();
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|task| task.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, order);

    let error = client
        .list_tasks(as_tenant(
            "acme",
            ListTasksRequest {
                page_size: -1,
                ..Default::default()
            },
        ))
        .await
        .expect_err("a negative page size");
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn task_numbers_are_filtered_by_status_carrier_and_keyword() {
    let app = spawn_app().await;
    let tasks = seed_tasks(&app, "acme").await;
    let request =
        |statuses: &[NumberStatus], carriers: &[Carrier], keyword: &str| ListTaskNumbersRequest {
            task_id: tasks.numbers.clone(),
            statuses: statuses.iter().map(|status| *status as i32).collect(),
            carriers: carriers.iter().map(|carrier| *carrier as i32).collect(),
            number_keyword: keyword.to_owned(),
            ..Default::default()
        };
    let all: Vec<String> = NUMBERS
        .iter()
        .map(|(number, ..)| (*number).to_owned())
        .collect();
    assert_eq!(numbers_of(&app, request(&[], &[], "")).await, all);
    assert_eq!(
        numbers_of(&app, request(&[NumberStatus::Waiting], &[], "")).await,
        ["13800000003", "13900000004"]
    );
    assert_eq!(
        numbers_of(
            &app,
            request(&[NumberStatus::Waiting, NumberStatus::Connected], &[], "")
        )
        .await,
        ["13800000001", "13800000003", "13900000004"]
    );
    assert_eq!(
        numbers_of(&app, request(&[], &[Carrier::ChinaMobile], "")).await,
        ["13800000001", "13900000004", "13900000005"]
    );
    assert_eq!(
        numbers_of(
            &app,
            request(&[], &[Carrier::ChinaUnicom, Carrier::Other], "")
        )
        .await,
        ["13800000002", "18600000006"]
    );
    assert_eq!(
        numbers_of(
            &app,
            request(&[NumberStatus::Waiting], &[Carrier::ChinaMobile], "")
        )
        .await,
        ["13900000004"]
    );
    assert_eq!(
        numbers_of(&app, request(&[], &[], "1390")).await,
        ["13900000004", "13900000005"]
    );
    assert_eq!(
        numbers_of(&app, request(&[], &[], "0000000")).await,
        all[..6]
    );
    // LIKE metacharacters are literal.
    assert_eq!(
        numbers_of(&app, request(&[], &[], "_")).await,
        ["400_800_1234"]
    );
    assert!(numbers_of(&app, request(&[], &[], "%")).await.is_empty());
    assert!(
        numbers_of(&app, request(&[NumberStatus::Barred], &[], ""))
            .await
            .is_empty()
    );

    // The number's fields come back.
    let page = list_numbers(&app, "acme", request(&[NumberStatus::Busy], &[], ""))
        .await
        .expect("a page");
    let number = &page.numbers[0];
    assert_eq!(number.task_id, tasks.numbers);
    assert_eq!(number.tenant_id, "acme");
    assert_eq!(number.status(), NumberStatus::Busy);
    let region = number.region.as_ref().expect("a region");
    assert_eq!(region.carrier(), Carrier::ChinaUnicom);
    assert_eq!(region.province, "江苏");
    assert!(number.attempts.is_empty(), "attempts only when asked");

    // Undefined enum values and bad ids are refused, naming the field.
    for (bad, field) in [
        (
            ListTaskNumbersRequest {
                statuses: vec![NumberStatus::Busy as i32, 99],
                ..request(&[], &[], "")
            },
            "statuses[1]",
        ),
        (
            ListTaskNumbersRequest {
                carriers: vec![42],
                ..request(&[], &[], "")
            },
            "carriers[0]",
        ),
        (
            ListTaskNumbersRequest {
                task_id: String::new(),
                ..request(&[], &[], "")
            },
            "task_id",
        ),
        (
            ListTaskNumbersRequest {
                task_id: "t-numbers".to_owned(),
                ..request(&[], &[], "")
            },
            "task_id",
        ),
    ] {
        let error = list_numbers(&app, "acme", bad).await.expect_err("refused");
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(error.message().contains(field), "{}", error.message());
    }
    let error = list_numbers(
        &app,
        "acme",
        ListTaskNumbersRequest {
            task_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        },
    )
    .await
    .expect_err("an unknown task");
    assert_eq!(error.code(), Code::NotFound);
    let _ = tasks.empty;
}

#[tokio::test]
async fn task_numbers_page_through_every_number_once_and_tokens_keep_their_filters() {
    let app = spawn_app().await;
    let tasks = seed_tasks(&app, "acme").await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list_numbers(
            &app,
            "acme",
            ListTaskNumbersRequest {
                task_id: tasks.numbers.clone(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("a page");
        pages += 1;
        assert!(page.numbers.len() <= 2);
        seen.extend(page.numbers.into_iter().map(|number| number.number));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 4);
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no repeats: {seen:?}");
    let all: Vec<String> = NUMBERS
        .iter()
        .map(|(number, ..)| (*number).to_owned())
        .collect();
    assert_eq!(seen, all, "no misses, in number order");

    // A filtered list pages too, and its token refuses other filters.
    let first = list_numbers(
        &app,
        "acme",
        ListTaskNumbersRequest {
            task_id: tasks.numbers.clone(),
            carriers: vec![Carrier::ChinaMobile as i32],
            page_size: 2,
            ..Default::default()
        },
    )
    .await
    .expect("a page");
    let numbers: Vec<&str> = first.numbers.iter().map(|n| n.number.as_str()).collect();
    assert_eq!(numbers, ["13800000001", "13900000004"]);
    assert!(!first.next_page_token.is_empty());
    let second = list_numbers(
        &app,
        "acme",
        ListTaskNumbersRequest {
            task_id: tasks.numbers.clone(),
            carriers: vec![Carrier::ChinaMobile as i32],
            // The page size may change between pages.
            page_size: 5,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("the next page");
    let numbers: Vec<&str> = second.numbers.iter().map(|n| n.number.as_str()).collect();
    assert_eq!(numbers, ["13900000005"]);
    assert!(second.next_page_token.is_empty());

    for other in [
        ListTaskNumbersRequest {
            task_id: tasks.numbers.clone(),
            carriers: vec![Carrier::ChinaUnicom as i32],
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
        ListTaskNumbersRequest {
            task_id: tasks.numbers.clone(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
        ListTaskNumbersRequest {
            task_id: tasks.numbers.clone(),
            carriers: vec![Carrier::ChinaMobile as i32],
            number_keyword: "139".to_owned(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
        ListTaskNumbersRequest {
            task_id: tasks.fixture.clone(),
            carriers: vec![Carrier::ChinaMobile as i32],
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    ] {
        let error = list_numbers(&app, "acme", other)
            .await
            .expect_err("a token of other filters");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(
            error.message().contains("page_token"),
            "{}",
            error.message()
        );
    }
}

#[tokio::test]
async fn task_numbers_come_with_their_attempts_newest_first_and_their_calls() {
    let app = spawn_app().await;
    let tasks = seed_tasks(&app, "acme").await;
    let page = list_numbers(
        &app,
        "acme",
        ListTaskNumbersRequest {
            task_id: tasks.fixture.clone(),
            include_attempts: true,
            ..Default::default()
        },
    )
    .await
    .expect("the fixture's numbers");
    assert_eq!(page.numbers.len(), 1);
    let number = &page.numbers[0];
    assert_eq!(number.number, "18651683344");
    assert_eq!(number.status(), NumberStatus::Connected);
    assert_eq!(number.latest_source_call_id, LATEST_ATTEMPT_CALL);
    let region = number.region.as_ref().expect("a region");
    assert_eq!(region.carrier(), Carrier::ChinaUnicom);
    assert_eq!(
        (region.area_code.as_str(), region.post_code.as_str()),
        ("025", "210000")
    );

    let attempts = &number.attempts;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].source_call_id, LATEST_ATTEMPT_CALL);
    assert_eq!(attempts[0].sip_code, "200");
    assert_eq!(attempts[0].talk_duration_ms, Some(26_638));
    assert_eq!(attempts[0].status(), NumberStatus::Connected);
    assert_eq!(
        attempts[1].source_call_id,
        "1569523c-d3d3-48fd-97a0-ad88d6606a19"
    );
    assert_eq!(attempts[1].call_status, "busy now");
    assert_eq!(attempts[1].status(), NumberStatus::Busy);
    assert!(
        attempts[0].call_time.as_ref().map(|time| time.seconds)
            > attempts[1].call_time.as_ref().map(|time| time.seconds)
    );
    // The latest attempt's call is stored: its server id; the older one's is not.
    let call_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM calls WHERE tenant_id = 'acme' AND source_call_id = $1")
            .bind(LATEST_ATTEMPT_CALL)
            .fetch_one(&app.pool().await)
            .await
            .expect("the call");
    assert_eq!(attempts[0].call_id, call_id.to_string());
    assert!(attempts[1].call_id.is_empty());

    // The native number with one attempt.
    let page = list_numbers(
        &app,
        "acme",
        ListTaskNumbersRequest {
            task_id: tasks.numbers.clone(),
            number_keyword: "13900000004".to_owned(),
            include_attempts: true,
            ..Default::default()
        },
    )
    .await
    .expect("the number");
    assert_eq!(page.numbers[0].attempts.len(), 1);
    assert_eq!(page.numbers[0].attempts[0].source_attempt_id, "a-4");
}

#[tokio::test]
async fn tags_are_listed_with_their_groups_and_by_group_and_levels_in_key_order() {
    let app = spawn_app().await;
    let mut ingest = app.ingest_client().await;
    let group = |id: &str, name: &str| TagGroup {
        source_tag_group_id: id.to_owned(),
        name: name.to_owned(),
        scene_id: "scene-1".to_owned(),
        ..Default::default()
    };
    ingest
        .upsert_tag_groups(as_tenant(
            "acme",
            UpsertTagGroupsRequest {
                tag_groups: vec![group("g1", "有意向"), group("g2", "无意向")],
            },
        ))
        .await
        .expect("groups stored");
    let tag = |id: &str, name: &str, groups: &[&str]| Tag {
        source_tag_id: id.to_owned(),
        name: name.to_owned(),
        color: "#2d8cf0".to_owned(),
        enabled: true,
        tag_groups: groups
            .iter()
            .map(|group| TagGroup {
                source_tag_group_id: (*group).to_owned(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    ingest
        .upsert_tags(as_tenant(
            "acme",
            UpsertTagsRequest {
                tags: vec![
                    tag("t-a", "价格", &["g1"]),
                    tag("t-b", "脏话", &["g1", "g2"]),
                    tag("t-c", "拒绝", &["g2"]),
                    tag("t-d", "其他", &[]),
                ],
            },
        ))
        .await
        .expect("tags stored");
    let level = |id: &str, name: &str, min: i64, max: i64| Level {
        source_level_id: id.to_owned(),
        name: name.to_owned(),
        alias: format!("{name} alias"),
        min_score: Some(min),
        max_score: Some(max),
        ..Default::default()
    };
    ingest
        .upsert_levels(as_tenant(
            "acme",
            UpsertLevelsRequest {
                levels: vec![
                    level("l-b", "B级", 60, 80),
                    level("l-a", "A级", 80, 101),
                    level("l-c", "C级", 0, 60),
                ],
            },
        ))
        .await
        .expect("levels stored");
    let mut client = query_client(&app).await;

    let groups = client
        .list_tag_groups(as_tenant("acme", ListTagGroupsRequest::default()))
        .await
        .expect("groups")
        .into_inner()
        .tag_groups;
    let names: Vec<&str> = groups.iter().map(|group| group.name.as_str()).collect();
    assert_eq!(names, ["有意向", "无意向"]);
    assert_eq!(groups[0].scene_id, "scene-1");
    assert_eq!(groups[0].source_system, "native");
    let (g1, g2) = (groups[0].id.clone(), groups[1].id.clone());

    let list_tags = |tag_group_id: &str, page_size: i32, page_token: &str| ListTagsRequest {
        tag_group_id: tag_group_id.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
    };
    let tags = client
        .list_tags(as_tenant("acme", list_tags("", 0, "")))
        .await
        .expect("tags")
        .into_inner()
        .tags;
    let names: Vec<&str> = tags.iter().map(|tag| tag.name.as_str()).collect();
    assert_eq!(names, ["价格", "脏话", "拒绝", "其他"]);
    let both = &tags[1];
    let mut expected_groups = vec![g1.clone(), g2.clone()];
    expected_groups.sort();
    assert_eq!(both.tag_group_ids, expected_groups);
    let mut group_names: Vec<&str> = both.tag_groups.iter().map(|g| g.name.as_str()).collect();
    group_names.sort_unstable();
    assert_eq!(group_names, ["无意向", "有意向"]);
    assert_eq!(both.color, "#2d8cf0");
    assert!(both.enabled);
    assert!(tags[3].tag_groups.is_empty() && tags[3].tag_group_ids.is_empty());

    for (group_id, expected) in [(&g1, ["价格", "脏话"]), (&g2, ["脏话", "拒绝"])] {
        let tags = client
            .list_tags(as_tenant("acme", list_tags(group_id, 0, "")))
            .await
            .expect("a group's tags")
            .into_inner()
            .tags;
        let names: Vec<&str> = tags.iter().map(|tag| tag.name.as_str()).collect();
        assert_eq!(names, expected);
    }

    // Pages of one through a group's tags; the token refuses another group.
    let first = client
        .list_tags(as_tenant("acme", list_tags(&g2, 1, "")))
        .await
        .expect("a page")
        .into_inner();
    assert_eq!(first.tags[0].name, "脏话");
    let second = client
        .list_tags(as_tenant("acme", list_tags(&g2, 1, &first.next_page_token)))
        .await
        .expect("the next page")
        .into_inner();
    assert_eq!(second.tags[0].name, "拒绝");
    assert!(second.next_page_token.is_empty());
    let error = client
        .list_tags(as_tenant("acme", list_tags(&g1, 1, &first.next_page_token)))
        .await
        .expect_err("a token of another group");
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = client
        .list_tags(as_tenant("acme", list_tags("g1", 0, "")))
        .await
        .expect_err("a malformed group id");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("tag_group_id"),
        "{}",
        error.message()
    );

    // Levels by source id, paged by two.
    let first = client
        .list_levels(as_tenant(
            "acme",
            ListLevelsRequest {
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .expect("levels")
        .into_inner();
    let second = client
        .list_levels(as_tenant(
            "acme",
            ListLevelsRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
            },
        ))
        .await
        .expect("more levels")
        .into_inner();
    assert!(second.next_page_token.is_empty());
    let levels: Vec<&Level> = first.levels.iter().chain(&second.levels).collect();
    let names: Vec<&str> = levels.iter().map(|level| level.name.as_str()).collect();
    assert_eq!(names, ["A级", "B级", "C级"]);
    assert_eq!(levels[0].alias, "A级 alias");
    assert_eq!(
        (levels[0].min_score, levels[0].max_score),
        (Some(80), Some(101))
    );
    assert_eq!(levels[0].source_level_id, "l-a");
}

#[tokio::test]
async fn another_tenant_sees_none_of_the_catalog() {
    let app = spawn_app().await;
    let tasks = seed_tasks(&app, "acme").await;
    let mut ingest = app.ingest_client().await;
    ingest
        .upsert_tags(as_tenant(
            "acme",
            UpsertTagsRequest {
                tags: vec![Tag {
                    source_tag_id: "t-a".to_owned(),
                    name: "价格".to_owned(),
                    tag_groups: vec![TagGroup {
                        source_tag_group_id: "g1".to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            },
        ))
        .await
        .expect("tags stored");
    ingest
        .upsert_levels(as_tenant(
            "acme",
            UpsertLevelsRequest {
                levels: vec![Level {
                    source_level_id: "l-a".to_owned(),
                    name: "A级".to_owned(),
                    ..Default::default()
                }],
            },
        ))
        .await
        .expect("levels stored");
    let mut client = query_client(&app).await;
    let acme_group = client
        .list_tag_groups(as_tenant("acme", ListTagGroupsRequest::default()))
        .await
        .expect("acme's groups")
        .into_inner()
        .tag_groups[0]
        .id
        .clone();

    // Another tenant: empty lists, NOT_FOUND for the task, like an unknown one.
    let other = "globex";
    let listed = client
        .list_tasks(as_tenant(other, ListTasksRequest::default()))
        .await
        .expect("tasks")
        .into_inner();
    assert!(listed.tasks.is_empty());
    for request in [
        ListTagsRequest::default(),
        ListTagsRequest {
            tag_group_id: acme_group.clone(),
            ..Default::default()
        },
    ] {
        let tags = client
            .list_tags(as_tenant(other, request))
            .await
            .expect("tags")
            .into_inner()
            .tags;
        assert!(tags.is_empty());
    }
    let groups = client
        .list_tag_groups(as_tenant(other, ListTagGroupsRequest::default()))
        .await
        .expect("groups")
        .into_inner()
        .tag_groups;
    assert!(groups.is_empty());
    let levels = client
        .list_levels(as_tenant(other, ListLevelsRequest::default()))
        .await
        .expect("levels")
        .into_inner()
        .levels;
    assert!(levels.is_empty());

    let unknown = uuid::Uuid::now_v7().to_string();
    let mut messages = Vec::new();
    for (tenant, task_id) in [(other, &tasks.numbers), ("acme", &unknown)] {
        let error = client
            .get_task(as_tenant(
                tenant,
                GetTaskRequest {
                    task_id: task_id.clone(),
                },
            ))
            .await
            .expect_err("not found");
        assert_eq!(error.code(), Code::NotFound);
        messages.push(error.message().to_owned());
        let error = list_numbers(
            &app,
            tenant,
            ListTaskNumbersRequest {
                task_id: task_id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect_err("not found");
        assert_eq!(error.code(), Code::NotFound);
        messages.push(error.message().to_owned());
    }
    assert_eq!(messages[0], messages[2]);
    assert_eq!(messages[1], messages[3]);
    let error = client
        .get_task(as_tenant(
            "acme",
            GetTaskRequest {
                task_id: "t-numbers".to_owned(),
            },
        ))
        .await
        .expect_err("a malformed id");
    assert_eq!(error.code(), Code::InvalidArgument);

    // A page token of one tenant is refused for another.
    let page = client
        .list_tasks(as_tenant(
            "acme",
            ListTasksRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("a page")
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let error = client
        .list_tasks(as_tenant(
            other,
            ListTasksRequest {
                page_size: 1,
                page_token: page.next_page_token,
            },
        ))
        .await
        .expect_err("another tenant's token");
    assert_eq!(error.code(), Code::InvalidArgument);
    let _ = (tasks.empty, tasks.fixture);
}
