//! GetCall and GetCallDetail: one call of each vendor format ingested through the real API, read
//! back with every part of the detail checked against the fixture.

use chrono::{DateTime, Utc};
use tonic::Code;
use tonic::transport::Channel;

use callstore::db::calls_read::{self, CallEmbed};
use callstore::domain::TenantId;
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    CallOutcome, CallRecord, CallView, Carrier, GetCallDetailRequest, GetCallRequest, HangupSide,
    IngestVendorPayloadRequest, NumberStatus, PayloadFormat, QualitySource, QualityStatus,
    SourceFormat, Speaker, TaskNumber, TaskRunState, UpsertTaskNumbersRequest,
};

use crate::helpers::{TestApp, as_tenant, spawn_app};

const HANGUP_PUSH: &[u8] = include_bytes!("../fixtures/hangup_push.json");
const RECORD_INFO: &[u8] = include_bytes!("../fixtures/task_api_record_info.json");
const HUAWEI_RESULTS: &[u8] = include_bytes!("../fixtures/huawei_campaign_results.json");
const HUAWEI_QC: &[u8] = include_bytes!("../fixtures/huawei_qc_result.json");

/// The fixtures' call ids.
const HANGUP_PUSH_CALL: &str = "db57f262-18d6-11f0-88c8-2f2b0aba51d7";
const TASK_API_CALL: &str = "281db55e-64e8-11e9-9bb2-3564eb72c846";
const TASK_API_TASK: &str = "840a4346-d0ac-4800-9c73-3d06275a9158";
const HUAWEI_CALL: &str = "0023-134864174";

async fn query_client(app: &TestApp) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(app.channel().await)
}

/// Ingests a vendor payload for `tenant`; the server ids of its calls, in payload order.
async fn ingest(app: &TestApp, tenant: &str, format: PayloadFormat, payload: &[u8]) -> Vec<String> {
    let response = app
        .ingest_client()
        .await
        .ingest_vendor_payload(as_tenant(
            tenant,
            IngestVendorPayloadRequest {
                format: format as i32,
                payload: payload.to_vec(),
                ..Default::default()
            },
        ))
        .await
        .expect("the payload is ingested")
        .into_inner();
    response.calls.into_iter().map(|call| call.id).collect()
}

async fn detail(app: &TestApp, tenant: &str, call_id: &str) -> Result<CallRecord, tonic::Status> {
    let response = query_client(app)
        .await
        .get_call_detail(as_tenant(
            tenant,
            GetCallDetailRequest {
                call_id: call_id.to_owned(),
            },
        ))
        .await?;
    Ok(response
        .into_inner()
        .call
        .expect("the response has the call"))
}

async fn get_call(
    app: &TestApp,
    tenant: &str,
    call_id: &str,
    view: i32,
) -> Result<CallRecord, tonic::Status> {
    let response = query_client(app)
        .await
        .get_call(as_tenant(
            tenant,
            GetCallRequest {
                call_id: call_id.to_owned(),
                view,
            },
        ))
        .await?;
    Ok(response
        .into_inner()
        .call
        .expect("the response has the call"))
}

/// Epoch seconds of a local time in Asia/Shanghai (the vendors' zone), e.g. `2025-04-14T10:19:13`.
fn shanghai(local: &str) -> i64 {
    DateTime::parse_from_rfc3339(&format!("{local}+08:00"))
        .expect("valid time")
        .with_timezone(&Utc)
        .timestamp()
}

fn seconds(timestamp: Option<&prost_types::Timestamp>) -> Option<i64> {
    timestamp.map(|timestamp| timestamp.seconds)
}

#[tokio::test]
async fn a_hangup_push_detail_has_its_record_dialogue_and_task() {
    let app = spawn_app().await;
    let ids = ingest(&app, "acme", PayloadFormat::HangupPush, HANGUP_PUSH).await;
    let call = detail(&app, "acme", &ids[0]).await.expect("the detail");

    assert_eq!(call.id, ids[0]);
    assert_eq!(call.tenant_id, "acme");
    assert_eq!(call.source_format(), SourceFormat::HangupPush);
    assert_eq!(call.source_call_id, HANGUP_PUSH_CALL);
    assert_eq!(call.version, 1);
    assert_eq!(call.callee, "15899770637");
    assert_eq!(call.caller, "900002");
    let region = call.callee_region.as_ref().expect("a region");
    assert_eq!(region.text, "广东省深圳市");
    assert_eq!(region.carrier(), Carrier::Unspecified);
    assert_eq!(call.outcome(), CallOutcome::Answered);
    assert_eq!(
        seconds(call.dial_time.as_ref()),
        Some(shanghai("2025-04-14T10:19:13"))
    );
    assert_eq!(
        seconds(call.answer_time.as_ref()),
        Some(shanghai("2025-04-14T10:19:21"))
    );
    assert_eq!(
        seconds(call.hangup_time.as_ref()),
        Some(shanghai("2025-04-14T10:20:48"))
    );
    assert_eq!(call.talk_duration_ms, Some(88_000));
    assert_eq!(call.score, Some(80));
    assert_eq!(call.end_reason, "对方挂机");
    assert_eq!(call.end_node, "15转人工#3");
    assert_eq!(call.last_reply, "转人工");
    assert!(
        call.labels.contains(&"有需求".to_owned()),
        "{:?}",
        call.labels
    );
    assert_eq!(call.dynamic_labels, ["20万"]);
    assert_eq!(
        call.custom_fields.get("ext1").map(String::as_str),
        Some("88")
    );
    let classification = call.classification.as_ref().expect("a classification");
    assert_eq!(classification.intent_class, "B");
    let transfer = call.transfer.as_ref().expect("a transfer");
    assert_eq!(transfer.state, 2, "transferred, not answered");
    let extra = call.extra.as_ref().expect("the unmodelled fields");
    assert!(
        extra.fields.contains_key("user_sn"),
        "{:?}",
        extra.fields.keys()
    );
    assert!(call.create_time.is_some() && call.update_time.is_some());

    // The dialogue, in order.
    assert_eq!(call.turn_count, 17);
    assert_eq!(call.turns.len(), 17);
    let sequences: Vec<i32> = call.turns.iter().map(|turn| turn.sequence).collect();
    assert_eq!(sequences, (1..=17).collect::<Vec<_>>());
    let first = &call.turns[0];
    assert_eq!(first.speaker(), Speaker::Robot);
    assert_eq!(
        first.text,
        "您好,我这边是专业办理银行贷款的,请问您有资金需求吗?"
    );
    assert_eq!(
        first.node.as_ref().map(|node| node.name.as_str()),
        Some("01打招呼+开场白")
    );
    let second = &call.turns[1];
    assert_eq!(second.speaker(), Speaker::Customer);
    assert_eq!(second.text, "可以啊");
    assert_eq!(second.matched_keyword, "可以啊");
    let last = call.turns.last().expect("a last turn");
    assert_eq!(last.speaker(), Speaker::Robot);
    assert_eq!(last.text, "转人工");

    // The task the push names, with its (empty) progress; no tags, level or quality.
    let task = call.task.as_ref().expect("the task");
    assert_eq!(task.name, "20250414101849");
    assert_eq!(task.id, call.task_id);
    let progress = task.progress.as_ref().expect("progress");
    assert_eq!(
        (
            progress.total_numbers,
            progress.called_numbers,
            progress.percent
        ),
        (0, 0, 0.0)
    );
    assert!(call.tags.is_empty() && call.tag_ids.is_empty());
    assert!(call.level.is_none() && call.level_id.is_empty());
    assert_measured_unscored(&call);
}

/// The dialogue was measured at ingest; with no active rule set it has no score.
fn assert_measured_unscored(call: &callstore::proto::CallRecord) {
    let quality = call.quality.as_ref().expect("the computed result");
    assert_eq!(quality.source(), QualitySource::Computed);
    assert_eq!((quality.version, quality.score), (1, None));
    assert!(!quality.sides.is_empty());
}

#[tokio::test]
async fn a_task_api_detail_has_its_dialogue_tags_with_groups_level_and_task_progress() {
    let app = spawn_app().await;
    let ids = ingest(&app, "acme", PayloadFormat::TaskApiRecord, RECORD_INFO).await;
    // Four numbers of the call's task, two of them called: progress 2 of 4.
    let numbers = [
        ("18651683344", NumberStatus::Connected),
        ("18651683345", NumberStatus::Busy),
        ("18651683346", NumberStatus::Waiting),
        ("18651683347", NumberStatus::Unspecified),
    ];
    app.ingest_client()
        .await
        .upsert_task_numbers(as_tenant(
            "acme",
            UpsertTaskNumbersRequest {
                source_task_id: TASK_API_TASK.to_owned(),
                source_system: "task_api".to_owned(),
                numbers: numbers
                    .iter()
                    .map(|(number, status)| TaskNumber {
                        number: (*number).to_owned(),
                        status: *status as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        ))
        .await
        .expect("the numbers are stored");

    let call = detail(&app, "acme", &ids[0]).await.expect("the detail");
    assert_eq!(call.source_call_id, TASK_API_CALL);
    assert_eq!(call.source_format(), SourceFormat::TaskApi);
    assert_eq!(call.callee, "18651683344");
    assert_eq!(call.caller, "17361984317");
    let region = call.callee_region.as_ref().expect("a region");
    assert_eq!(region.province, "江蘇");
    assert_eq!(region.city, "南京");
    assert_eq!(region.carrier(), Carrier::ChinaUnicom);
    assert_eq!(call.outcome(), CallOutcome::Answered);
    assert_eq!(call.hangup_side(), HangupSide::Robot);
    assert_eq!(call.hangup_cause, "NORMAL_CLEARING");
    assert_eq!(
        seconds(call.dial_time.as_ref()),
        Some(shanghai("2019-04-22T18:19:47"))
    );
    assert_eq!(
        seconds(call.answer_time.as_ref()),
        Some(shanghai("2019-04-22T18:19:55"))
    );
    assert_eq!(
        seconds(call.hangup_time.as_ref()),
        Some(shanghai("2019-04-22T18:20:05"))
    );
    assert_eq!(call.duration_ms, Some(17_600));
    assert_eq!(call.talk_duration_ms, Some(10_120));
    assert_eq!(call.rounds, Some(2));
    assert_eq!(call.script_group_id, "297");

    // The dialogue without the two interim ASR rows: robot, customer, customer, robot.
    assert_eq!(call.turn_count, 4);
    let said: Vec<(Speaker, &str)> = call
        .turns
        .iter()
        .map(|turn| (turn.speaker(), turn.text.as_str()))
        .collect();
    assert_eq!(said.len(), 4, "{said:?}");
    assert_eq!(said[0].0, Speaker::Robot);
    assert!(said[0].1.starts_with("同學(xué),您好"), "{}", said[0].1);
    assert_eq!(said[1], (Speaker::Customer, "啊"));
    assert_eq!(said[2], (Speaker::Customer, "不再見,再見。"));
    assert_eq!(
        said[3],
        (
            Speaker::Robot,
            "感謝您的接聽,我就打擾您了,祝您生活愉快,再見"
        )
    );
    let opening = &call.turns[0];
    let node = opening.node.as_ref().expect("the opening's node");
    assert_eq!(node.id, "e0b4bfc6-e87d-4e1f-af24-d44c10a5bd0a");
    assert_eq!(node.name, "流程1");
    assert_eq!(opening.audio_pieces.len(), 1);
    assert_eq!(
        opening.audio_pieces[0].file_id,
        "bf4d6a59-1a37-4ad8-a616-edcc5a9fd813"
    );
    assert_eq!(opening.audio_pieces[0].duration_ms, 15_000);
    assert_eq!(call.turns[1].speak_ms, Some(875));
    assert_eq!(call.turns[2].speak_ms, Some(1_395));

    // The tag the opening hit, with its group; the turn names it too.
    assert_eq!(call.tags.len(), 1, "{:?}", call.tags);
    let tag = &call.tags[0];
    assert_eq!(tag.name, "承認(rèn)發(fā)布");
    assert_eq!(tag.color, "#2DF0D0");
    assert_eq!(call.tag_ids, std::slice::from_ref(&tag.id));
    assert_eq!(opening.tag_ids, std::slice::from_ref(&tag.id));
    assert!(call.turns[1..].iter().all(|turn| turn.tag_ids.is_empty()));
    assert_eq!(tag.tag_groups.len(), 1);
    let group = &tag.tag_groups[0];
    assert_eq!(group.name, "弱意向");
    assert_eq!(group.scene_id, "ad2c92fe-f993-47d6-9e86-f73a5511dcae");
    assert_eq!(group.source_tag_group_id, "1");
    assert_eq!(
        seconds(group.source_create_time.as_ref()),
        Some(shanghai("2019-12-17T21:14:57"))
    );
    assert_eq!(
        seconds(tag.source_update_time.as_ref()),
        Some(shanghai("2020-01-17T11:13:46"))
    );
    assert_eq!(tag.tag_group_ids, std::slice::from_ref(&group.id));
    assert_eq!(call.tag_group_ids, std::slice::from_ref(&group.id));

    let level = call.level.as_ref().expect("the level");
    assert_eq!(level.name, "D級(jí)");
    assert_eq!(level.alias, "無意向");
    assert_eq!(level.color, "#000");
    assert_eq!(level.id, call.level_id);

    let task = call.task.as_ref().expect("the task");
    assert_eq!(task.name, "教育測(cè)試2");
    assert_eq!(task.source_task_id, TASK_API_TASK);
    assert_eq!(task.redial_rounds, Some(1));
    assert_eq!(task.run_state(), TaskRunState::Paused);
    let progress = task.progress.as_ref().expect("progress");
    assert_eq!(progress.total_numbers, 4);
    assert_eq!(progress.called_numbers, 2);
    assert!(
        (progress.percent - 50.0).abs() < 1e-9,
        "{}",
        progress.percent
    );
    assert_measured_unscored(&call);
}

#[tokio::test]
async fn a_huawei_detail_has_its_result_fields_and_latest_quality_result() {
    let app = spawn_app().await;
    let ids = ingest(&app, "acme", PayloadFormat::HuaweiResult, HUAWEI_RESULTS).await;
    // The QC sample inspects another call: point it at the campaign result's call.
    let mut qc: serde_json::Value = serde_json::from_slice(HUAWEI_QC).expect("QC JSON");
    qc["call_id"] = HUAWEI_CALL.into();
    let qc_bytes = serde_json::to_vec(&qc).expect("QC JSON");
    ingest(&app, "acme", PayloadFormat::HuaweiQc, &qc_bytes).await;

    let call = detail(&app, "acme", &ids[0]).await.expect("the detail");
    assert_eq!(call.source_call_id, HUAWEI_CALL);
    assert_eq!(call.source_format(), SourceFormat::HuaweiResult);
    assert_eq!(call.callee, "60584");
    assert_eq!(call.outcome(), CallOutcome::Answered);
    assert_eq!(
        seconds(call.dial_time.as_ref()),
        Some(shanghai("2020-08-30T20:00:00"))
    );
    assert_eq!(call.record_path, "Y:/1/11/20200830/3408/0949218.V3");
    let huawei = call.huawei.as_ref().expect("the Huawei fields");
    assert_eq!(huawei.call_status, 6);
    assert_eq!(huawei.session_id, "1202_test013");
    assert_eq!(huawei.vdn_id, 11);
    assert_eq!(
        call.task.as_ref().map(|task| task.source_task_id.as_str()),
        Some("3")
    );
    assert!(call.turns.is_empty());

    let quality = call.quality.as_ref().expect("the imported quality result");
    assert_eq!(quality.source(), QualitySource::Imported);
    assert_eq!(quality.version, 1);
    assert_eq!(quality.call_id, call.id);
    assert_eq!(quality.status(), QualityStatus::Done);
    assert_eq!(quality.staff_name, "xieyiling");
    assert_eq!(quality.staff_id, "1679888582905592626");
    assert_eq!(quality.file_name, "1111");
    assert_eq!(quality.duration_ms, Some(104_120));
    assert_eq!(seconds(quality.call_time.as_ref()), Some(1_635_318_854));
    assert_eq!(
        seconds(quality.source_create_time.as_ref()),
        Some(1_635_318_854)
    );
    assert_eq!(quality.source_call_id, HUAWEI_CALL);
    assert_eq!(quality.segments.len(), 4);
    assert_eq!(quality.segments[0].text, "请问是您想询价吗");
    assert_eq!(quality.segments[0].speaker(), Speaker::Customer);
    assert_eq!(quality.segments[1].speaker(), Speaker::Agent);
    assert_eq!(quality.segments[0].end_offset_ms, 11_320);
    assert_eq!(quality.sides.len(), 2, "{:?}", quality.sides);
    assert!(
        quality
            .sides
            .iter()
            .any(|side| side.speaker() == Speaker::Customer
                && side.speech_ratio == Some(0.6081)
                && side.emotions.len() == 2)
    );
    // Huawei QC scores no call: an imported result has no score.
    assert_eq!(quality.score, None);

    // A changed re-delivery is version 2, which replaces version 1.
    qc["status"] = 1.into();
    let qc_bytes = serde_json::to_vec(&qc).expect("QC JSON");
    ingest(&app, "acme", PayloadFormat::HuaweiQc, &qc_bytes).await;
    let quality = detail(&app, "acme", &ids[0])
        .await
        .expect("the detail")
        .quality
        .expect("the quality result");
    assert_eq!(quality.version, 2);
    assert_eq!(quality.status(), QualityStatus::Processing);

    // A computed result stored after it (version 2: ingest measured the dialogue as version 1)
    // is the latest, with its score.
    let pool = app.pool().await;
    sqlx::query(
        "INSERT INTO quality_results (tenant_id, call_id, source, version, status, score,
             rule_set_version, details, create_time)
         VALUES ('acme', $1::uuid, 1, 2, 3, 87.5, 4,
                 '{\"end_node\": \"结束\", \"customer_last_reply\": \"好的\",
                   \"rule_hits\": [{\"rule_id\": \"r1\", \"points\": -5, \"severity\": \"SEVERITY_MAJOR\"}]}',
                 now() + interval '1 second')",
    )
    .bind(&call.id)
    .execute(&pool)
    .await
    .expect("a computed result");
    let quality = detail(&app, "acme", &ids[0])
        .await
        .expect("the detail")
        .quality
        .expect("the quality result");
    assert_eq!(quality.source(), QualitySource::Computed);
    assert_eq!(quality.score, Some(87.5));
    assert_eq!(quality.rule_set_version, 4);
    assert_eq!(quality.end_node, "结束");
    assert_eq!(quality.customer_last_reply, "好的");
    assert_eq!(quality.rule_hits.len(), 1);
    assert_eq!(quality.rule_hits[0].points, -5.0);
    assert_eq!(quality.rule_hits[0].severity, 3);
}

#[tokio::test]
async fn get_call_embeds_tags_and_level_only_in_the_full_view() {
    let app = spawn_app().await;
    let ids = ingest(&app, "acme", PayloadFormat::TaskApiRecord, RECORD_INFO).await;

    for view in [CallView::Unspecified, CallView::Basic] {
        let call = get_call(&app, "acme", &ids[0], view as i32)
            .await
            .expect("the call");
        assert_eq!(call.callee, "18651683344");
        assert_eq!(call.turn_count, 4);
        assert_eq!(call.tag_ids.len(), 1, "{view:?}");
        assert_eq!(call.tag_group_ids.len(), 1, "{view:?}");
        assert!(!call.level_id.is_empty(), "{view:?}");
        assert!(call.tags.is_empty(), "{view:?}");
        assert!(call.level.is_none(), "{view:?}");
        assert!(call.turns.is_empty() && call.task.is_none() && call.quality.is_none());
    }

    let full = get_call(&app, "acme", &ids[0], CallView::Full as i32)
        .await
        .expect("the call");
    assert_eq!(full.tags.len(), 1);
    assert_eq!(full.tags[0].name, "承認(rèn)發(fā)布");
    assert_eq!(full.tags[0].tag_groups[0].name, "弱意向");
    assert_eq!(full.tags[0].id, full.tag_ids[0]);
    assert_eq!(
        full.level.as_ref().map(|level| level.name.as_str()),
        Some("D級(jí)")
    );
    assert!(full.turns.is_empty() && full.task.is_none() && full.quality.is_none());

    let error = get_call(&app, "acme", &ids[0], 7)
        .await
        .expect_err("an undefined view");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("view"), "{}", error.message());
}

#[tokio::test]
async fn unknown_and_other_tenants_calls_are_not_found_and_malformed_ids_invalid() {
    let app = spawn_app().await;
    let ids = ingest(&app, "acme", PayloadFormat::HangupPush, HANGUP_PUSH).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let for_unknown = detail(&app, "acme", &unknown).await.expect_err("unknown");
    let for_other_tenant = detail(&app, "globex", &ids[0]).await.expect_err("isolated");
    assert_eq!(for_unknown.code(), Code::NotFound);
    assert_eq!(for_other_tenant.code(), Code::NotFound);
    assert_eq!(for_unknown.message(), for_other_tenant.message());

    for view in [CallView::Basic, CallView::Full] {
        let for_unknown = get_call(&app, "acme", &unknown, view as i32)
            .await
            .expect_err("unknown");
        let for_other_tenant = get_call(&app, "globex", &ids[0], view as i32)
            .await
            .expect_err("isolated");
        assert_eq!(for_unknown.code(), Code::NotFound);
        assert_eq!(for_other_tenant.code(), Code::NotFound);
        assert_eq!(for_unknown.message(), for_other_tenant.message());
    }

    for malformed in ["", "not-a-uuid", "1234"] {
        let error = detail(&app, "acme", malformed)
            .await
            .expect_err("malformed");
        assert_eq!(error.code(), Code::InvalidArgument, "{malformed:?}");
        assert!(error.message().contains("call_id"), "{}", error.message());
        let error = get_call(&app, "acme", malformed, 0)
            .await
            .expect_err("malformed");
        assert_eq!(error.code(), Code::InvalidArgument, "{malformed:?}");
        assert!(error.message().contains("call_id"), "{}", error.message());
    }
    // The owner still reads it.
    assert!(get_call(&app, "acme", &ids[0], 0).await.is_ok());
}

#[tokio::test]
async fn load_calls_keeps_the_order_of_the_ids_and_leaves_out_others() {
    let app = spawn_app().await;
    let hangup = ingest(&app, "acme", PayloadFormat::HangupPush, HANGUP_PUSH).await;
    let task_api = ingest(&app, "acme", PayloadFormat::TaskApiRecord, RECORD_INFO).await;
    let huawei = ingest(&app, "acme", PayloadFormat::HuaweiResult, HUAWEI_RESULTS).await;
    let elsewhere = ingest(&app, "globex", PayloadFormat::HangupPush, HANGUP_PUSH).await;
    let id = |text: &str| uuid::Uuid::parse_str(text).expect("a UUID");
    let ids = [
        id(&huawei[0]),
        uuid::Uuid::now_v7(),
        id(&hangup[0]),
        id(&elsewhere[0]),
        id(&task_api[0]),
    ];
    let pool = app.pool().await;
    let tenant = TenantId::parse("acme").expect("a tenant");
    for embed in [CallEmbed::Basic, CallEmbed::Full, CallEmbed::Detail] {
        let calls = calls_read::load_calls(&pool, &tenant, &ids, embed)
            .await
            .expect("the calls");
        let read: Vec<uuid::Uuid> = calls.iter().map(|call| call.call.id).collect();
        assert_eq!(read, [ids[0], ids[2], ids[4]], "{embed:?}");
        let task_api_call = &calls[2];
        assert_eq!(
            task_api_call.tags.len(),
            usize::from(embed != CallEmbed::Basic)
        );
        assert_eq!(task_api_call.level.is_some(), embed != CallEmbed::Basic);
        assert_eq!(
            task_api_call.turns.len(),
            if embed == CallEmbed::Detail { 4 } else { 0 }
        );
        assert_eq!(
            calls[1].turns.len(),
            if embed == CallEmbed::Detail { 17 } else { 0 }
        );
    }
    let none = calls_read::load_calls(&pool, &tenant, &[], CallEmbed::Full)
        .await
        .expect("nothing");
    assert!(none.is_empty());
}

#[tokio::test]
async fn tag_and_group_ids_are_sorted_and_each_group_named_once() {
    use callstore::proto::{IngestCallsRequest, Tag, TagGroup, UpsertTagsRequest};

    let app = spawn_app().await;
    let mut ingest = app.ingest_client().await;
    let tag = |id: &str, groups: &[&str]| Tag {
        source_tag_id: id.to_owned(),
        name: format!("tag {id}"),
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
                    tag("t-a", &["g1"]),
                    tag("t-b", &["g1", "g2"]),
                    tag("t-c", &["g2", "g3"]),
                ],
            },
        ))
        .await
        .expect("tags stored");
    let call = CallRecord {
        source_call_id: "c-1".to_owned(),
        callee: "13800000000".to_owned(),
        dial_time: Some(prost_types::Timestamp {
            seconds: 1_744_597_153,
            nanos: 0,
        }),
        tags: ["t-c", "t-a", "t-b"]
            .iter()
            .map(|id| Tag {
                source_tag_id: (*id).to_owned(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let id = ingest
        .ingest_calls(as_tenant("acme", IngestCallsRequest { calls: vec![call] }))
        .await
        .expect("ingests")
        .into_inner()
        .results[0]
        .id
        .clone();

    let basic = get_call(&app, "acme", &id, CallView::Basic as i32)
        .await
        .expect("the call");
    let full = get_call(&app, "acme", &id, CallView::Full as i32)
        .await
        .expect("the call");
    assert_eq!(basic.tag_ids.len(), 3);
    assert_eq!(basic.tag_group_ids.len(), 3, "{:?}", basic.tag_group_ids);
    for ids in [&basic.tag_ids, &basic.tag_group_ids] {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, &sorted);
    }
    // The groups are those of the tags, and the full view's tags come in tag id order.
    let mut groups: Vec<String> = full
        .tags
        .iter()
        .flat_map(|tag| tag.tag_group_ids.iter().cloned())
        .collect();
    groups.sort();
    groups.dedup();
    assert_eq!(groups, basic.tag_group_ids);
    let full_ids: Vec<&str> = full.tags.iter().map(|tag| tag.id.as_str()).collect();
    assert_eq!(full_ids, basic.tag_ids);
    assert_eq!(full.tag_group_ids, basic.tag_group_ids);
}
