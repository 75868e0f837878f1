use tonic::Code;

use callstore::proto::{
    CallRecord, IngestCallsRequest, IngestOutcome, Level, Tag, TagGroup, Task, TaskNumber,
    UpsertLevelsRequest, UpsertTagGroupsRequest, UpsertTagsRequest, UpsertTaskNumbersRequest,
    UpsertTasksRequest,
};

use crate::helpers::{as_tenant, spawn_app};

fn task(source_task_id: &str, name: &str) -> Task {
    Task {
        source_task_id: source_task_id.to_owned(),
        name: name.to_owned(),
        redial_rounds: Some(2),
        ..Default::default()
    }
}

#[tokio::test]
async fn tasks_are_created_left_alone_when_unchanged_and_updated_when_changed() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let mut outcomes = Vec::new();
    for tasks in [
        vec![task("t-1", "回访"), task("", "no id")],
        vec![task("t-1", "回访")],
        vec![task("t-1", "回访二期")],
    ] {
        let results = client
            .upsert_tasks(as_tenant("acme", UpsertTasksRequest { tasks }))
            .await
            .expect("answered")
            .into_inner()
            .results;
        outcomes.push(
            results
                .iter()
                .map(|result| result.outcome())
                .collect::<Vec<_>>(),
        );
        if results.len() == 2 {
            let error = results[1].error.as_ref().expect("the bad item's error");
            assert_eq!(error.code, Code::InvalidArgument as i32);
        }
    }
    assert_eq!(
        outcomes,
        [
            vec![IngestOutcome::Created, IngestOutcome::Rejected],
            vec![IngestOutcome::Unchanged],
            vec![IngestOutcome::Updated],
        ]
    );
    let name: String = sqlx::query_scalar("SELECT name FROM tasks WHERE source_task_id = 't-1'")
        .fetch_one(&app.pool().await)
        .await
        .expect("the task");
    assert_eq!(name, "回访二期");
}

#[tokio::test]
async fn a_task_first_named_by_a_call_is_the_one_its_description_fills_in() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let call = CallRecord {
        source_call_id: "c-1".to_owned(),
        source_task_id: "t-9".to_owned(),
        callee: "13800000000".to_owned(),
        dial_time: Some(prost_types::Timestamp {
            seconds: 1_744_597_153,
            nanos: 0,
        }),
        ..Default::default()
    };
    client
        .ingest_calls(as_tenant("acme", IngestCallsRequest { calls: vec![call] }))
        .await
        .expect("ingests");
    let results = client
        .upsert_tasks(as_tenant(
            "acme",
            UpsertTasksRequest {
                tasks: vec![task("t-9", "新任务")],
            },
        ))
        .await
        .expect("upserts")
        .into_inner()
        .results;
    assert_eq!(results[0].outcome(), IngestOutcome::Created);

    let (tasks, linked_name): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tasks), tasks.name FROM calls
         JOIN tasks ON tasks.tenant_id = calls.tenant_id AND tasks.id = calls.task_id",
    )
    .fetch_one(&app.pool().await)
    .await
    .expect("the call's task");
    assert_eq!((tasks, linked_name.as_str()), (1, "新任务"));
}

#[tokio::test]
async fn tags_join_their_groups_and_levels_keep_their_range() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    client
        .upsert_tag_groups(as_tenant(
            "acme",
            UpsertTagGroupsRequest {
                tag_groups: vec![TagGroup {
                    source_tag_group_id: "grp-1".to_owned(),
                    name: "有意向".to_owned(),
                    ..Default::default()
                }],
            },
        ))
        .await
        .expect("upserts groups");
    let results = client
        .upsert_tags(as_tenant(
            "acme",
            UpsertTagsRequest {
                tags: vec![Tag {
                    source_tag_id: "tag-1".to_owned(),
                    name: "询问价格".to_owned(),
                    enabled: true,
                    tag_groups: vec![TagGroup {
                        source_tag_group_id: "grp-1".to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            },
        ))
        .await
        .expect("upserts tags")
        .into_inner()
        .results;
    assert_eq!(results[0].outcome(), IngestOutcome::Created);
    let levels = client
        .upsert_levels(as_tenant(
            "acme",
            UpsertLevelsRequest {
                levels: vec![
                    Level {
                        source_level_id: "A".to_owned(),
                        name: "A级".to_owned(),
                        min_score: Some(100),
                        max_score: Some(500),
                        ..Default::default()
                    },
                    Level {
                        source_level_id: "B".to_owned(),
                        min_score: Some(100),
                        max_score: Some(0),
                        ..Default::default()
                    },
                ],
            },
        ))
        .await
        .expect("upserts levels")
        .into_inner()
        .results;
    assert_eq!(levels[0].outcome(), IngestOutcome::Created);
    assert_eq!(levels[1].outcome(), IngestOutcome::Rejected);

    let pool = app.pool().await;
    let group: String = sqlx::query_scalar(
        "SELECT tag_groups.name FROM tags
         JOIN tag_group_members ON tag_group_members.tag_id = tags.id
         JOIN tag_groups ON tag_groups.id = tag_group_members.tag_group_id
         WHERE tags.source_tag_id = 'tag-1'",
    )
    .fetch_one(&pool)
    .await
    .expect("the tag's group");
    assert_eq!(group, "有意向");
    let range: (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT min_score, max_score FROM levels WHERE source_level_id = 'A'")
            .fetch_one(&pool)
            .await
            .expect("the level");
    assert_eq!(range, (Some(100), Some(500)));
}

#[tokio::test]
async fn numbers_are_upserted_under_a_task_named_by_source_or_server_id() {
    let app = spawn_app().await;
    let mut client = app.ingest_client().await;
    let number = |digits: &str| TaskNumber {
        number: digits.to_owned(),
        status: callstore::proto::NumberStatus::Waiting as i32,
        ..Default::default()
    };
    let by_source = client
        .upsert_task_numbers(as_tenant(
            "acme",
            UpsertTaskNumbersRequest {
                source_task_id: "t-5".to_owned(),
                numbers: vec![number("13800000001")],
                ..Default::default()
            },
        ))
        .await
        .expect("upserts")
        .into_inner()
        .results;
    assert_eq!(by_source[0].outcome(), IngestOutcome::Created);

    let pool = app.pool().await;
    let task_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM tasks WHERE source_task_id = 't-5'")
            .fetch_one(&pool)
            .await
            .expect("the task");
    let by_server_id = client
        .upsert_task_numbers(as_tenant(
            "acme",
            UpsertTaskNumbersRequest {
                task_id: task_id.to_string(),
                numbers: vec![number("13800000001"), number("13800000002")],
                ..Default::default()
            },
        ))
        .await
        .expect("upserts")
        .into_inner()
        .results;
    let outcomes: Vec<IngestOutcome> = by_server_id.iter().map(|result| result.outcome()).collect();
    assert_eq!(outcomes, [IngestOutcome::Unchanged, IngestOutcome::Created]);

    let unknown = client
        .upsert_task_numbers(as_tenant(
            "acme",
            UpsertTaskNumbersRequest {
                task_id: uuid::Uuid::new_v4().to_string(),
                numbers: vec![number("13800000003")],
                ..Default::default()
            },
        ))
        .await
        .expect_err("no such task");
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = client
        .upsert_task_numbers(as_tenant(
            "acme",
            UpsertTaskNumbersRequest {
                task_id: "not-a-uuid".to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("not an id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
}
