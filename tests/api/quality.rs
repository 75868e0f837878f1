//! Quality inspection through the generated clients: metrics computed at ingest for each
//! format's timing, rule sets and profiles, scoring, re-scoring jobs, the call list's quality
//! filters and the score distribution of task statistics.

use std::time::Duration;

use prost_types::{FieldMask, Timestamp};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::quality_service_client::QualityServiceClient;
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    CallEventKind, CallFilter, CallRecord, CompleteCallRequest, CreateRuleSetRequest,
    CreateScoringProfileRequest, DeleteRuleSetRequest, DeleteScoringProfileRequest, DoubleRange,
    GetCallDetailRequest, GetQualityRequest, GetRescoreJobRequest, GetRuleSetRequest,
    GetTaskStatsRequest, IngestCallsRequest, IngestOutcome, IngestVendorPayloadRequest,
    InterruptionRule, KeywordRule, ListCallsRequest, ListRuleSetsRequest, OpenCallRequest,
    PayloadFormat, QualityResult, QualitySource, RescoreCallsRequest, RescoreJob, Rule,
    RuleHitFilter, RuleSet, ScoringProfile, Severity, SilenceRule, Speaker, SpeakingRateRule,
    TalkTimeRule, Turn, UpdateRuleSetRequest, UpdateScoringProfileRequest, rule,
};

use crate::helpers::{TestApp, as_tenant, spawn_app, spawn_app_with};
use crate::watch::support::{collect_until, from_now, watch, watch_client};

const TENANT: &str = "acme";
const DIAL_SECONDS: i64 = 1_744_597_153;
const DEADLINE: Duration = Duration::from_secs(20);

const TASK_API_RECORD: &[u8] = include_bytes!("../fixtures/task_api_record_info.json");
const HANGUP_PUSH: &[u8] = include_bytes!("../fixtures/hangup_push.json");
const HUAWEI_QC: &[u8] = include_bytes!("../fixtures/huawei_qc_result.json");

struct Clients {
    ingest: IngestServiceClient<Channel>,
    quality: QualityServiceClient<Channel>,
    query: QueryServiceClient<Channel>,
}

async fn clients(app: &TestApp) -> Clients {
    let channel = app.channel().await;
    Clients {
        ingest: IngestServiceClient::new(channel.clone()),
        quality: QualityServiceClient::new(channel.clone()),
        query: QueryServiceClient::new(channel),
    }
}

fn span(sequence: i32, speaker: Speaker, text: &str, start_ms: i64, end_ms: i64) -> Turn {
    Turn {
        sequence,
        speaker: speaker as i32,
        text: text.to_owned(),
        start_offset_ms: Some(start_ms),
        end_offset_ms: Some(end_ms),
        ..Turn::default()
    }
}

fn native(source_call_id: &str, talk_ms: i64, turns: Vec<Turn>) -> CallRecord {
    CallRecord {
        source_call_id: source_call_id.to_owned(),
        source_task_id: "task-q".to_owned(),
        callee: "13800000001".to_owned(),
        dial_time: Some(Timestamp {
            seconds: DIAL_SECONDS,
            nanos: 0,
        }),
        talk_duration_ms: Some(talk_ms),
        turns,
        ..CallRecord::default()
    }
}

/// A call that breaks every rule of [`every_kind`]: profanity, no greeting, a 5 s silence,
/// a 500 ms interruption, the customer at 216 characters a minute, 11 s of talk.
fn rude_call() -> CallRecord {
    native(
        "rude",
        11_000,
        vec![
            span(1, Speaker::Robot, "您好，请问是王先生吗", 0, 3_000),
            span(2, Speaker::Customer, "你他妈的别打了", 2_500, 4_000),
            span(3, Speaker::Robot, "好的", 9_000, 10_000),
            span(4, Speaker::Customer, "再见", 10_000, 11_000),
        ],
    )
}

/// A call that breaks none.
fn polite_call() -> CallRecord {
    native(
        "polite",
        40_000,
        vec![
            span(1, Speaker::Robot, "您好，感谢您的耐心", 0, 2_000),
            span(2, Speaker::Customer, "好的谢谢", 2_500, 4_000),
        ],
    )
}

fn rule(id: &str, points: f64, severity: Severity, kind: rule::Kind) -> Rule {
    Rule {
        id: id.to_owned(),
        name: format!("rule {id}"),
        points,
        severity: severity as i32,
        kind: Some(kind),
    }
}

fn every_kind() -> Vec<Rule> {
    vec![
        rule(
            "profanity",
            -30.0,
            Severity::Critical,
            rule::Kind::Keyword(KeywordRule {
                speaker: Speaker::Customer as i32,
                keywords: vec!["他妈的".to_owned()],
                ..KeywordRule::default()
            }),
        ),
        rule(
            "greeting",
            -10.0,
            Severity::Minor,
            rule::Kind::Keyword(KeywordRule {
                speaker: Speaker::Robot as i32,
                patterns: vec!["感谢您的(耐心|支持)".to_owned()],
                required: true,
                ..KeywordRule::default()
            }),
        ),
        rule(
            "silence",
            -5.0,
            Severity::Major,
            rule::Kind::Silence(SilenceRule {
                max_silence_ms: 3_000,
            }),
        ),
        rule(
            "interruption",
            -5.0,
            Severity::Minor,
            rule::Kind::Interruption(InterruptionRule {
                min_overlap_ms: 100,
                max_times: 0,
            }),
        ),
        rule(
            "rate",
            -5.0,
            Severity::Info,
            rule::Kind::SpeakingRate(SpeakingRateRule {
                speaker: Speaker::Customer as i32,
                min_cpm: 0.0,
                max_cpm: 200.0,
            }),
        ),
        rule(
            "talk",
            -10.0,
            Severity::Major,
            rule::Kind::TalkTime(TalkTimeRule {
                min_talk_ms: 30_000,
                max_talk_ms: 0,
            }),
        ),
    ]
}

async fn create_profile(clients: &mut Clients, base: f64, lower: f64, upper: f64) -> String {
    clients
        .quality
        .create_scoring_profile(as_tenant(
            TENANT,
            CreateScoringProfileRequest {
                profile: Some(ScoringProfile {
                    name: "standard".to_owned(),
                    base,
                    lower_bound: lower,
                    upper_bound: upper,
                    ..ScoringProfile::default()
                }),
            },
        ))
        .await
        .expect("creates the profile")
        .into_inner()
        .profile
        .expect("a profile")
        .id
}

async fn create_rule_set(
    clients: &mut Clients,
    rules: Vec<Rule>,
    profile_id: &str,
    active: bool,
) -> RuleSet {
    clients
        .quality
        .create_rule_set(as_tenant(
            TENANT,
            CreateRuleSetRequest {
                rule_set: Some(RuleSet {
                    name: "outbound".to_owned(),
                    rules,
                    scoring_profile_id: profile_id.to_owned(),
                    active,
                    ..RuleSet::default()
                }),
            },
        ))
        .await
        .expect("creates the rule set")
        .into_inner()
        .rule_set
        .expect("a rule set")
}

/// Ingests native calls; returns their server ids.
async fn ingest(clients: &mut Clients, calls: Vec<CallRecord>) -> Vec<String> {
    let response = clients
        .ingest
        .ingest_calls(as_tenant(TENANT, IngestCallsRequest { calls }))
        .await
        .expect("ingests")
        .into_inner();
    response
        .results
        .into_iter()
        .map(|result| {
            assert_ne!(result.outcome(), IngestOutcome::Rejected, "{result:?}");
            result.id
        })
        .collect()
}

async fn ingest_payload(clients: &mut Clients, format: PayloadFormat, payload: &[u8]) -> String {
    let response = clients
        .ingest
        .ingest_vendor_payload(as_tenant(
            TENANT,
            IngestVendorPayloadRequest {
                format: format as i32,
                payload: payload.to_vec(),
                ..IngestVendorPayloadRequest::default()
            },
        ))
        .await
        .expect("ingests the payload")
        .into_inner();
    match response.calls.first() {
        Some(call) => call.id.clone(),
        None => response.other[0].id.clone(),
    }
}

async fn results(clients: &mut Clients, call_id: &str, history: bool) -> Vec<QualityResult> {
    clients
        .quality
        .get_quality(as_tenant(
            TENANT,
            GetQualityRequest {
                call_id: call_id.to_owned(),
                include_history: history,
            },
        ))
        .await
        .expect("gets the quality")
        .into_inner()
        .results
}

async fn computed(clients: &mut Clients, call_id: &str) -> QualityResult {
    results(clients, call_id, false)
        .await
        .into_iter()
        .find(|result| result.source() == QualitySource::Computed)
        .expect("a computed result")
}

fn side(result: &QualityResult, speaker: Speaker) -> &callstore::proto::SideMetrics {
    result
        .sides
        .iter()
        .find(|side| side.speaker() == speaker)
        .unwrap_or_else(|| panic!("metrics of {speaker:?} in {result:?}"))
}

fn violations(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

fn assert_close(actual: Option<f64>, expected: f64) {
    let actual = actual.expect("a value");
    assert!(
        (actual - expected).abs() < 1e-9,
        "{actual} is not {expected}"
    );
}

#[tokio::test]
async fn metrics_use_task_api_durations_and_leave_silences_unknown() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let call_id = ingest_payload(&mut clients, PayloadFormat::TaskApiRecord, TASK_API_RECORD).await;
    let result = computed(&mut clients, &call_id).await;

    // The durations as stored: the robot's play_ms, the customer's speak_ms.
    let pool = app.pool().await;
    let (robot_ms, customer_ms, robot_turns, customer_turns): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT sum(play_ms) FILTER (WHERE speaker = 1)::bigint,
                    sum(speak_ms) FILTER (WHERE speaker = 2)::bigint,
                    count(*) FILTER (WHERE speaker = 1 AND btrim(text) <> ''),
                    count(*) FILTER (WHERE speaker = 2 AND btrim(text) <> '')
             FROM turns",
        )
        .fetch_one(&pool)
        .await
        .expect("sums the turns");
    assert!(robot_ms > 0 && customer_ms > 0, "the fixture has durations");
    let robot = side(&result, Speaker::Robot);
    let customer = side(&result, Speaker::Customer);
    assert_eq!(robot.speaking_time_ms, Some(robot_ms));
    assert_eq!(customer.speaking_time_ms, Some(customer_ms));
    assert_eq!(robot.turn_count, Some(robot_turns as i32));
    assert_eq!(customer.turn_count, Some(customer_turns as i32));
    assert!(customer.speaking_rate_cpm.is_some_and(|rate| rate > 0.0));
    // Durations do not place turns in time: no silences, no interruptions.
    assert_eq!(result.silence_time_ms, None);
    assert_eq!(result.longest_silence_ms, None);
    assert_eq!(result.interruption_count, None);
    assert_eq!(result.interruption_overlap_ms, None);
    // No rule set is active: measured, not scored.
    assert_eq!(result.score, None);
    assert_eq!(result.version, 1);
}

#[tokio::test]
async fn metrics_of_a_hangup_push_know_turns_but_not_their_lengths() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let call_id = ingest_payload(&mut clients, PayloadFormat::HangupPush, HANGUP_PUSH).await;
    let result = computed(&mut clients, &call_id).await;

    let pool = app.pool().await;
    let (robot_turns, customer_turns, last_reply): (i64, i64, Option<String>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE speaker = 1 AND btrim(text) <> ''),
                count(*) FILTER (WHERE speaker = 2 AND btrim(text) <> ''),
                (SELECT btrim(text) FROM turns WHERE speaker = 2 AND btrim(text) <> ''
                 ORDER BY sequence DESC LIMIT 1)
         FROM turns",
    )
    .fetch_one(&pool)
    .await
    .expect("counts the turns");
    for (speaker, turns) in [
        (Speaker::Robot, robot_turns),
        (Speaker::Customer, customer_turns),
    ] {
        let metrics = side(&result, speaker);
        assert_eq!(metrics.turn_count, Some(turns as i32), "{speaker:?}");
        assert_eq!(metrics.speaking_time_ms, None, "{speaker:?}");
        assert_eq!(metrics.speech_ratio, None, "{speaker:?}");
        assert_eq!(metrics.speaking_rate_cpm, None, "{speaker:?}");
    }
    assert_eq!(result.silence_time_ms, None);
    assert_eq!(result.interruption_count, None);
    assert_eq!(
        Some(result.customer_last_reply.as_str()),
        last_reply.as_deref()
    );
}

#[tokio::test]
async fn a_huawei_qc_result_gives_a_call_without_dialogue_every_metric_and_both_are_readable() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let mut call = native("17af55af-e51d-4cc0-8a62-84222e1d1eea", 104_120, Vec::new());
    call.source_system = "huawei_cec".to_owned();
    call.source_format = callstore::proto::SourceFormat::HuaweiResult as i32;
    let call_id = ingest(&mut clients, vec![call]).await.remove(0);
    assert!(
        results(&mut clients, &call_id, false).await.is_empty(),
        "no dialogue, nothing computed"
    );

    ingest_payload(&mut clients, PayloadFormat::HuaweiQc, HUAWEI_QC).await;
    let both = results(&mut clients, &call_id, false).await;
    let sources: Vec<QualitySource> = both.iter().map(QualityResult::source).collect();
    assert_eq!(sources, [QualitySource::Computed, QualitySource::Imported]);
    let imported = &both[1];
    assert_eq!(imported.staff_name, "xieyiling");

    // Segments 0–11.32 s and 14.56–16.74 s (customer), 13.36–13.88 s and 18.74–19.68 s (staff)
    // of a 104.12 s call.
    let result = &both[0];
    assert_eq!(result.duration_ms, Some(104_120));
    assert_eq!(result.silence_time_ms, Some(2_040 + 680 + 2_000));
    assert_eq!(result.longest_silence_ms, Some(2_040));
    assert_eq!(result.interruption_count, Some(0));
    assert_eq!(result.interruption_overlap_ms, Some(0));
    let customer = side(result, Speaker::Customer);
    assert_eq!(customer.speaking_time_ms, Some(11_320 + 2_180));
    assert_eq!(customer.turn_count, Some(2));
    assert_close(customer.speech_ratio, 13_500.0 / 104_120.0);
    // 8 + 14 characters in 13.5 s.
    assert_close(customer.speaking_rate_cpm, 22.0 / (13_500.0 / 60_000.0));
    let agent = side(result, Speaker::Agent);
    assert_eq!(agent.speaking_time_ms, Some(520 + 940));
    assert_eq!(result.customer_last_reply, "那您是打算在北京这边买车是吗");

    // The call's detail shows the result stored last (the imported one here).
    let detail = clients
        .query
        .get_call_detail(as_tenant(
            TENANT,
            GetCallDetailRequest {
                call_id: call_id.clone(),
            },
        ))
        .await
        .expect("gets the detail")
        .into_inner();
    assert!(
        detail
            .call
            .and_then(|call| call.quality)
            .is_some_and(|quality| quality.source() == QualitySource::Imported)
    );
}

#[tokio::test]
async fn an_active_rule_set_scores_every_kind_of_rule_at_ingest_clamped_to_its_profile() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let profile = create_profile(&mut clients, 100.0, 40.0, 100.0).await;
    let rule_set = create_rule_set(&mut clients, every_kind(), &profile, true).await;
    assert_eq!(rule_set.version, 1);
    let ids = ingest(&mut clients, vec![rude_call(), polite_call()]).await;

    let rude = computed(&mut clients, &ids[0]).await;
    let hits: Vec<(&str, Option<i32>, &str)> = rude
        .rule_hits
        .iter()
        .map(|hit| {
            (
                hit.rule_id.as_str(),
                hit.turn_sequence,
                hit.matched_text.as_str(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            ("profanity", Some(2), "他妈的"),
            ("greeting", None, ""),
            ("silence", Some(3), ""),
            ("interruption", Some(2), ""),
            ("rate", None, ""),
            ("talk", None, ""),
        ]
    );
    assert_eq!(rude.rule_hits[0].offset, Some(1));
    assert!(rude.rule_hits.iter().all(|hit| hit.rule_set_version == 1));
    // 100 - 65 = 35, clamped to the profile's lower bound.
    assert_eq!(rude.score, Some(40.0));
    assert_eq!(rude.rule_set_id, rule_set.id);
    assert_eq!(rude.rule_set_version, 1);
    assert_eq!(
        rude.profile.as_ref().map(|profile| profile.lower_bound),
        Some(40.0)
    );
    let counts: Vec<(Severity, i32)> = rude
        .violations
        .iter()
        .map(|count| (count.severity(), count.count))
        .collect();
    assert_eq!(
        counts,
        [
            (Severity::Critical, 1),
            (Severity::Major, 2),
            (Severity::Minor, 2),
            (Severity::Info, 1)
        ]
    );
    assert_eq!(rude.interruption_count, Some(1));
    assert_eq!(rude.interruption_overlap_ms, Some(500));
    assert_eq!(rude.longest_silence_ms, Some(5_000));

    let polite = computed(&mut clients, &ids[1]).await;
    assert!(polite.rule_hits.is_empty(), "{:?}", polite.rule_hits);
    assert_eq!(polite.score, Some(100.0));
}

#[tokio::test]
async fn the_call_list_filters_on_quality_and_statistics_show_the_score_distribution() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let profile = create_profile(&mut clients, 100.0, 40.0, 100.0).await;
    let rule_set = create_rule_set(&mut clients, every_kind(), &profile, true).await;
    let ids = ingest(&mut clients, vec![rude_call(), polite_call()]).await;
    let mut unscored = native("unscored", 1_000, Vec::new());
    unscored.callee = "13800000009".to_owned();
    ingest(&mut clients, vec![unscored]).await;

    let mut list = async |filter: CallFilter| -> Vec<String> {
        let mut calls: Vec<String> = clients
            .query
            .list_calls(as_tenant(
                TENANT,
                ListCallsRequest {
                    filter: Some(filter),
                    ..ListCallsRequest::default()
                },
            ))
            .await
            .expect("lists")
            .into_inner()
            .calls
            .into_iter()
            .map(|call| call.id)
            .collect();
        calls.sort();
        calls
    };
    let high = list(CallFilter {
        quality_score: Some(DoubleRange {
            min: Some(50.0),
            max: None,
        }),
        ..CallFilter::default()
    })
    .await;
    assert_eq!(high, [ids[1].clone()]);
    let any_score = list(CallFilter {
        quality_score: Some(DoubleRange::default()),
        ..CallFilter::default()
    })
    .await;
    let mut scored = ids.clone();
    scored.sort();
    assert_eq!(any_score, scored, "an open range asks for a score");
    let profane = list(CallFilter {
        rule_hits: vec![RuleHitFilter {
            rule_id: "profanity".to_owned(),
            rule_set_id: rule_set.id.clone(),
        }],
        ..CallFilter::default()
    })
    .await;
    assert_eq!(profane, [ids[0].clone()]);
    let other_set = list(CallFilter {
        rule_hits: vec![RuleHitFilter {
            rule_id: "profanity".to_owned(),
            rule_set_id: uuid::Uuid::new_v4().to_string(),
        }],
        ..CallFilter::default()
    })
    .await;
    assert!(other_set.is_empty());

    let bad = clients
        .query
        .list_calls(as_tenant(
            TENANT,
            ListCallsRequest {
                filter: Some(CallFilter {
                    quality_score: Some(DoubleRange {
                        min: Some(f64::NAN),
                        max: None,
                    }),
                    rule_hits: vec![RuleHitFilter::default()],
                    ..CallFilter::default()
                }),
                ..ListCallsRequest::default()
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&bad),
        ["filter.quality_score", "filter.rule_hits[0].rule_id"]
    );

    let pool = app.pool().await;
    let task_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tasks")
        .fetch_one(&pool)
        .await
        .expect("the task");
    let stats = clients
        .query
        .get_task_stats(as_tenant(
            TENANT,
            GetTaskStatsRequest {
                task_id: task_id.to_string(),
                ..GetTaskStatsRequest::default()
            },
        ))
        .await
        .expect("gets the statistics")
        .into_inner();
    assert_eq!(stats.total_calls, 3);
    assert_eq!(stats.scored_calls, 2);
    assert_eq!(stats.avg_quality_score, 70.0);
    assert_eq!(stats.min_quality_score, Some(40.0));
    assert_eq!(stats.max_quality_score, Some(100.0));
    let buckets: Vec<(&str, i64)> = stats
        .quality_score_buckets
        .iter()
        .map(|bucket| (bucket.key.as_str(), bucket.count))
        .collect();
    assert_eq!(buckets, [("40", 1), ("100", 1)]);
    let wide = clients
        .query
        .get_task_stats(as_tenant(
            TENANT,
            GetTaskStatsRequest {
                task_id: task_id.to_string(),
                quality_score_bucket_width: Some(50.0),
                ..GetTaskStatsRequest::default()
            },
        ))
        .await
        .expect("gets the statistics")
        .into_inner();
    let buckets: Vec<(&str, i64)> = wide
        .quality_score_buckets
        .iter()
        .map(|bucket| (bucket.key.as_str(), bucket.count))
        .collect();
    assert_eq!(buckets, [("0", 1), ("100", 1)]);
}

async fn wait_for_job(clients: &mut Clients, job_id: &str) -> RescoreJob {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let job = clients
            .quality
            .get_rescore_job(as_tenant(
                TENANT,
                GetRescoreJobRequest {
                    job_id: job_id.to_owned(),
                },
            ))
            .await
            .expect("gets the job")
            .into_inner()
            .job
            .expect("a job");
        if job.finished {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not finish: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rescore(clients: &mut Clients, rule_set_id: &str) -> RescoreJob {
    let job = clients
        .quality
        .rescore_calls(as_tenant(
            TENANT,
            RescoreCallsRequest {
                rule_set_id: rule_set_id.to_owned(),
                ..RescoreCallsRequest::default()
            },
        ))
        .await
        .expect("starts the job")
        .into_inner()
        .job
        .expect("a job");
    wait_for_job(clients, &job.id).await
}

#[tokio::test]
async fn a_rescore_after_a_rule_change_makes_version_2_and_one_quality_event() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let profile = create_profile(&mut clients, 100.0, 0.0, 100.0).await;
    let rule_set = create_rule_set(&mut clients, every_kind()[..1].to_vec(), &profile, true).await;
    let call_id = ingest(&mut clients, vec![rude_call()]).await.remove(0);
    assert_eq!(computed(&mut clients, &call_id).await.score, Some(70.0));

    // A stricter profanity rule: version 2.
    let mut rules = every_kind()[..1].to_vec();
    rules[0].points = -50.0;
    let updated = clients
        .quality
        .update_rule_set(as_tenant(
            TENANT,
            UpdateRuleSetRequest {
                rule_set: Some(RuleSet {
                    id: rule_set.id.clone(),
                    rules,
                    ..RuleSet::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["rules".to_owned()],
                }),
            },
        ))
        .await
        .expect("updates")
        .into_inner()
        .rule_set
        .expect("a rule set");
    assert_eq!(updated.version, 2);
    assert!(updated.active);
    assert_eq!(updated.name, "outbound", "fields outside the mask are kept");

    let mut watcher = watch_client(&app).await;
    let mut stream = watch(&mut watcher, TENANT, from_now()).await;
    let job = rescore(&mut clients, &rule_set.id).await;
    assert_eq!(
        (job.total_calls, job.done_calls, job.rescored_calls),
        (1, 1, 1)
    );
    assert_eq!(job.rule_set_version, 2);
    assert!(job.finish_time.is_some());

    let history = results(&mut clients, &call_id, true).await;
    let versions: Vec<(i64, i64, Option<f64>)> = history
        .iter()
        .map(|result| (result.version, result.rule_set_version, result.score))
        .collect();
    assert_eq!(versions, [(2, 2, Some(50.0)), (1, 1, Some(70.0))]);

    let events = collect_until(&mut stream, |messages| {
        messages
            .iter()
            .any(|message| message.kind() == CallEventKind::QualityAdded)
    })
    .await;
    let added = events
        .iter()
        .find(|message| message.kind() == CallEventKind::QualityAdded)
        .expect("the quality event");
    assert_eq!(added.call_id, call_id);
    assert_eq!(
        added.quality.as_ref().map(|quality| quality.version),
        Some(2)
    );
    let pool = app.pool().await;
    let quality_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feed_events WHERE kind = $1")
            .bind(CallEventKind::QualityAdded as i16)
            .fetch_one(&pool)
            .await
            .expect("counts");
    assert_eq!(quality_events, 1, "one event: the re-score");

    // The same rules again change nothing: no version, no event.
    let again = rescore(&mut clients, &rule_set.id).await;
    assert_eq!((again.done_calls, again.rescored_calls), (1, 0));
    assert_eq!(results(&mut clients, &call_id, true).await.len(), 2);
}

#[tokio::test]
async fn a_job_left_by_a_dead_runner_is_resumed_where_it_stopped() {
    use callstore::db::rescore::{self, Claimed, JobSpec, Step};
    use callstore::domain::TenantId;

    let app = spawn_app_with(|config| {
        // Keep this server's own runner away from the job.
        config.rescore.poll_interval = Duration::from_secs(3_600);
    })
    .await;
    let mut clients = clients(&app).await;
    let rule_set = create_rule_set(&mut clients, every_kind(), "", false).await;
    let calls: Vec<CallRecord> = (0..5)
        .map(|index| {
            let mut call = rude_call();
            call.source_call_id = format!("call-{index}");
            call.dial_time = Some(Timestamp {
                seconds: DIAL_SECONDS + index,
                nanos: 0,
            });
            call
        })
        .collect();
    ingest(&mut clients, calls).await;

    let pool = app.pool().await;
    let tenant = TenantId::parse(TENANT).expect("a tenant");
    let rule_set_id = uuid::Uuid::parse_str(&rule_set.id).expect("an id");
    let job = rescore::create_job(
        &pool,
        &tenant,
        &JobSpec {
            rule_set_id,
            task_id: None,
            start_time: None,
            end_time: None,
        },
    )
    .await
    .expect("creates the job");
    assert_eq!(job.total_calls, 5);
    let lease = Duration::from_millis(200);
    let dead = uuid::Uuid::new_v4();
    let claimed = rescore::claim_job(&pool, dead, lease)
        .await
        .expect("claims")
        .expect("the job");
    assert_eq!(
        claimed,
        Claimed {
            tenant: tenant.clone(),
            id: job.id
        }
    );
    assert_eq!(
        rescore::step(&pool, &claimed, dead, 2, lease)
            .await
            .expect("steps"),
        Step::Progressed
    );
    // The runner dies. While its lease lasts nobody else takes the job...
    let heir = uuid::Uuid::new_v4();
    assert_eq!(
        rescore::claim_job(&pool, heir, lease).await.expect("asks"),
        None
    );
    assert_eq!(
        rescore::step(&pool, &claimed, heir, 2, lease)
            .await
            .expect("asks"),
        Step::Lost,
        "a runner without the lease cannot step"
    );
    // ...then the heir takes it and goes on from the third call.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let taken = loop {
        if let Some(taken) = rescore::claim_job(&pool, heir, lease).await.expect("asks") {
            break taken;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while rescore::step(&pool, &taken, heir, 2, lease)
        .await
        .expect("steps")
        == Step::Progressed
    {}
    let done = rescore::get_job(&pool, &tenant, job.id)
        .await
        .expect("reads")
        .expect("the job");
    assert!(done.finished);
    assert_eq!((done.done_calls, done.rescored_calls), (5, 5));
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM quality_results WHERE rule_set_id IS NOT NULL GROUP BY call_id",
    )
    .fetch_all(&pool)
    .await
    .expect("counts");
    assert_eq!(
        versions,
        [1, 1, 1, 1, 1],
        "each call scored once by the job"
    );
}

#[tokio::test]
async fn a_completed_live_call_is_inspected() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let mut call = native("live", 11_000, Vec::new());
    call.state = callstore::proto::CallState::InProgress as i32;
    let opened = clients
        .ingest
        .open_call(as_tenant(
            TENANT,
            OpenCallRequest {
                call: Some(call.clone()),
            },
        ))
        .await
        .expect("opens")
        .into_inner()
        .result
        .expect("a result");
    clients
        .ingest
        .append_turns(as_tenant(
            TENANT,
            callstore::proto::AppendTurnsRequest {
                call_id: opened.id.clone(),
                turns: rude_call().turns,
                ..Default::default()
            },
        ))
        .await
        .expect("appends");
    assert!(
        results(&mut clients, &opened.id, false).await.is_empty(),
        "a call in progress is not inspected"
    );
    call.state = callstore::proto::CallState::Completed as i32;
    clients
        .ingest
        .complete_call(as_tenant(
            TENANT,
            CompleteCallRequest {
                call: Some(call),
                ..CompleteCallRequest::default()
            },
        ))
        .await
        .expect("completes");
    let result = computed(&mut clients, &opened.id).await;
    assert_eq!(result.interruption_count, Some(1));
    assert_eq!(side(&result, Speaker::Customer).turn_count, Some(2));
}

#[tokio::test]
async fn quality_at_ingest_can_be_turned_off() {
    let app = spawn_app_with(|config| config.group_commit.write.inspect = false).await;
    let mut clients = clients(&app).await;
    let call_id = ingest(&mut clients, vec![polite_call()]).await.remove(0);
    assert!(results(&mut clients, &call_id, false).await.is_empty());
}

#[tokio::test]
async fn rule_sets_and_profiles_are_validated_versioned_and_kept_per_tenant() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;

    let bad_profile = clients
        .quality
        .create_scoring_profile(as_tenant(
            TENANT,
            CreateScoringProfileRequest {
                profile: Some(ScoringProfile {
                    name: " ".to_owned(),
                    base: 50.0,
                    lower_bound: 60.0,
                    upper_bound: 10.0,
                    ..ScoringProfile::default()
                }),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(bad_profile.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&bad_profile),
        ["profile.name", "profile.upper_bound"]
    );

    let mut bad_rules = every_kind();
    bad_rules[0].kind = Some(rule::Kind::Keyword(KeywordRule {
        patterns: vec!["(unclosed".to_owned()],
        ..KeywordRule::default()
    }));
    bad_rules[1].id = "profanity".to_owned();
    bad_rules[2].kind = None;
    let bad_set = clients
        .quality
        .create_rule_set(as_tenant(
            TENANT,
            CreateRuleSetRequest {
                rule_set: Some(RuleSet {
                    name: "bad".to_owned(),
                    rules: bad_rules,
                    ..RuleSet::default()
                }),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(bad_set.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&bad_set),
        [
            "rule_set.rules[2]",
            "rule_set.rules[0].keyword.patterns[0]",
            "rule_set.rules[1].id"
        ]
    );
    let unknown_profile = clients
        .quality
        .create_rule_set(as_tenant(
            TENANT,
            CreateRuleSetRequest {
                rule_set: Some(RuleSet {
                    name: "x".to_owned(),
                    scoring_profile_id: uuid::Uuid::new_v4().to_string(),
                    ..RuleSet::default()
                }),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(
        violations(&unknown_profile),
        ["rule_set.scoring_profile_id"]
    );

    let profile = create_profile(&mut clients, 100.0, 0.0, 100.0).await;
    let first = create_rule_set(&mut clients, every_kind(), &profile, true).await;
    let second = create_rule_set(&mut clients, every_kind()[..2].to_vec(), "", true).await;
    let get = async |clients: &mut Clients, tenant: &str, id: &str, version: i64| {
        clients
            .quality
            .get_rule_set(as_tenant(
                tenant,
                GetRuleSetRequest {
                    rule_set_id: id.to_owned(),
                    version,
                },
            ))
            .await
            .map(|response| response.into_inner().rule_set.expect("a rule set"))
    };
    assert!(
        !get(&mut clients, TENANT, &first.id, 0)
            .await
            .expect("gets")
            .active,
        "activating another rule set deactivated the first"
    );
    assert_eq!(
        get(&mut clients, "other", &first.id, 0)
            .await
            .expect_err("another tenant's")
            .code(),
        Code::NotFound
    );

    // Only `active` changes: no new version. Then the rules: version 2, version 1 kept.
    let mut update = async |rule_set: RuleSet, paths: &[&str]| {
        clients
            .quality
            .update_rule_set(as_tenant(
                TENANT,
                UpdateRuleSetRequest {
                    rule_set: Some(rule_set),
                    update_mask: Some(FieldMask {
                        paths: paths.iter().map(|&path| path.to_owned()).collect(),
                    }),
                },
            ))
            .await
            .map(|response| response.into_inner().rule_set.expect("a rule set"))
    };
    let reactivated = update(
        RuleSet {
            id: first.id.clone(),
            active: true,
            ..RuleSet::default()
        },
        &["active"],
    )
    .await
    .expect("updates");
    assert_eq!((reactivated.version, reactivated.active), (1, true));
    assert_eq!(reactivated.rules.len(), 6);
    let renamed = update(
        RuleSet {
            id: first.id.clone(),
            rules: every_kind()[..3].to_vec(),
            ..RuleSet::default()
        },
        &["rules"],
    )
    .await
    .expect("updates");
    assert_eq!((renamed.version, renamed.rules.len()), (2, 3));
    let unknown_path = update(
        RuleSet {
            id: first.id.clone(),
            ..RuleSet::default()
        },
        &["tenant_id"],
    )
    .await
    .expect_err("refused");
    assert_eq!(violations(&unknown_path), ["update_mask.paths[0]"]);
    let old = get(&mut clients, TENANT, &first.id, 1)
        .await
        .expect("version 1");
    assert_eq!((old.version, old.rules.len()), (1, 6));
    assert_eq!(
        get(&mut clients, TENANT, &first.id, 3)
            .await
            .expect_err("no version 3")
            .code(),
        Code::NotFound
    );

    // Lists page through the tenant's rule sets only.
    let page = clients
        .quality
        .list_rule_sets(as_tenant(
            TENANT,
            ListRuleSetsRequest {
                page_size: 1,
                ..ListRuleSetsRequest::default()
            },
        ))
        .await
        .expect("lists")
        .into_inner();
    assert_eq!(page.rule_sets.len(), 1);
    let rest = clients
        .quality
        .list_rule_sets(as_tenant(
            TENANT,
            ListRuleSetsRequest {
                page_size: 1,
                page_token: page.next_page_token.clone(),
            },
        ))
        .await
        .expect("lists")
        .into_inner();
    let listed = [page.rule_sets[0].id.clone(), rest.rule_sets[0].id.clone()];
    assert_eq!(listed, [first.id.clone(), second.id.clone()]);
    assert!(rest.next_page_token.is_empty());

    // A profile in use cannot be deleted; its bounds stay ordered on update.
    let in_use = clients
        .quality
        .delete_scoring_profile(as_tenant(
            TENANT,
            DeleteScoringProfileRequest {
                profile_id: profile.clone(),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(in_use.code(), Code::FailedPrecondition);
    let unordered = clients
        .quality
        .update_scoring_profile(as_tenant(
            TENANT,
            UpdateScoringProfileRequest {
                profile: Some(ScoringProfile {
                    id: profile.clone(),
                    lower_bound: 200.0,
                    ..ScoringProfile::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["lower_bound".to_owned()],
                }),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(violations(&unordered), ["profile.upper_bound"]);
    clients
        .quality
        .delete_rule_set(as_tenant(
            TENANT,
            DeleteRuleSetRequest {
                rule_set_id: first.id.clone(),
            },
        ))
        .await
        .expect("deletes the rule set");
    clients
        .quality
        .delete_scoring_profile(as_tenant(
            TENANT,
            DeleteScoringProfileRequest {
                profile_id: profile.clone(),
            },
        ))
        .await
        .expect("deletes the unused profile");
    let gone = clients
        .quality
        .get_quality(as_tenant(
            TENANT,
            GetQualityRequest {
                call_id: uuid::Uuid::new_v4().to_string(),
                include_history: false,
            },
        ))
        .await
        .expect_err("no such call");
    assert_eq!(gone.code(), Code::NotFound);
}

/// A rule set's stored rules are what scoring uses, so a later read must equal what was
/// written: every kind survives the round trip through the database.
#[tokio::test]
async fn every_kind_of_rule_reads_back_as_written() {
    let app = spawn_app().await;
    let mut clients = clients(&app).await;
    let created = create_rule_set(&mut clients, every_kind(), "", false).await;
    assert_eq!(created.rules, every_kind());
    assert!(!created.active);
}
