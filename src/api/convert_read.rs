//! Stored rows back into wire messages: the reverse of `convert.rs` and `convert_catalog.rs`.
//! Ids become UUID strings, enum columns their numbers, JSON columns their messages, `extra`
//! a Struct; unset optional texts are empty strings and empty objects are left out.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::api::convert::{json_to_struct, utc_to_timestamp};
use crate::db::calls_read::{CallEmbed, CallRead, CallRow, QualityRow, TurnRow};
use crate::db::catalog_read::{AttemptRow, LevelRow, TagGroupRow, TagRow, TaskNumberRow, TaskRow};
use crate::domain::call::{AudioPiece, Extra};
use crate::error::ApiError;
use crate::proto;

/// The embed a `CallView` asks for: UNSPECIFIED and BASIC are Basic, FULL is Full; an undefined
/// value is INVALID_ARGUMENT on `field`.
pub fn call_embed(view: i32, field: &str) -> Result<CallEmbed, ApiError> {
    match proto::CallView::try_from(view) {
        Ok(proto::CallView::Unspecified | proto::CallView::Basic) => Ok(CallEmbed::Basic),
        Ok(proto::CallView::Full) => Ok(CallEmbed::Full),
        Err(_) => Err(ApiError::invalid_field(
            field,
            format!("{view} is not a defined CallView value"),
        )),
    }
}

/// A required server id: INVALID_ARGUMENT on `field` when empty or not a UUID.
pub fn required_id(value: &str, field: &str) -> Result<Uuid, ApiError> {
    optional_id(value, field)?.ok_or_else(|| ApiError::invalid_field(field, "is required"))
}

/// An optional server id: `None` when empty, INVALID_ARGUMENT on `field` when not a UUID.
pub fn optional_id(value: &str, field: &str) -> Result<Option<Uuid>, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    Uuid::try_parse(value)
        .map(Some)
        .map_err(|_| ApiError::invalid_field(field, "must be a UUID"))
}

/// A call as the API shows it; the embedded parts are those `call` was read with.
pub fn call_to_proto(call: CallRead) -> proto::CallRecord {
    let CallRead {
        call: row,
        tags,
        level,
        turns,
        task,
        quality,
    } = call;
    let mut record = call_row_to_proto(row);
    record.tags = tags.into_iter().map(tag_to_proto).collect();
    record.level = level.map(level_to_proto);
    record.turns = turns.into_iter().map(turn_to_proto).collect();
    record.task = task.map(task_to_proto);
    record.quality = quality.map(quality_to_proto);
    record
}

fn call_row_to_proto(row: CallRow) -> proto::CallRecord {
    let region = proto::Region {
        province: text(row.province),
        city: text(row.city),
        area_code: text(row.area_code),
        post_code: text(row.post_code),
        carrier: i32::from(row.carrier),
        carrier_name: text(row.carrier_name),
        text: text(row.region_text),
    };
    proto::CallRecord {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        source_format: i32::from(row.source_format),
        source_system: row.source_system,
        source_call_id: row.source_call_id,
        version: row.version,
        state: i32::from(row.state),
        task_id: id_text(row.task_id),
        source_task_id: text(row.source_task_id),
        source_record_id: text(row.source_record_id),
        script_group_id: text(row.script_group_id),
        callee: row.callee,
        caller: text(row.caller),
        callee_region: (region != proto::Region::default()).then_some(region),
        customer: row.customer.map(|customer| {
            let customer = customer.0;
            proto::Customer {
                name: text(customer.name),
                address: text(customer.address),
                company: text(customer.company),
                company_phone: text(customer.company_phone),
            }
        }),
        dial_time: Some(utc_to_timestamp(row.dial_time)),
        answer_time: row.answer_time.map(utc_to_timestamp),
        hangup_time: row.hangup_time.map(utc_to_timestamp),
        duration_ms: row.duration_ms,
        talk_duration_ms: row.talk_duration_ms,
        billed_minutes: row.billed_minutes,
        outcome: i32::from(row.outcome),
        number_status: i32::from(row.number_status),
        hangup_cause: text(row.hangup_cause),
        end_reason: text(row.end_reason),
        sip_code: text(row.sip_code),
        hangup_side: i32::from(row.hangup_side),
        error_code: row.error_code,
        huawei: row.huawei.map(|huawei| {
            let huawei = huawei.0;
            proto::HuaweiResult {
                call_status: huawei.call_status,
                fail_code: huawei.fail_code,
                session_id: text(huawei.session_id),
                vdn_id: huawei.vdn_id.unwrap_or_default(),
            }
        }),
        number_check_status: i32::from(row.number_check_status),
        rounds: row.rounds,
        asks_count: row.asks_count,
        call_count: row.call_count,
        score: row.score,
        level_id: id_text(row.level_id),
        level: None,
        gender: i32::from(row.gender),
        last_reply: text(row.last_reply),
        end_node: text(row.end_node),
        classification: row.classification.map(|classification| {
            let classification = classification.0;
            proto::Classification {
                intent_class: text(classification.intent_class),
                manual_class: text(classification.manual_class),
                sub_class: text(classification.sub_class),
                classify: text(classification.classify),
                mark: text(classification.mark),
            }
        }),
        labels: row.labels,
        dynamic_labels: row.dynamic_labels,
        satisfaction: i32::from(row.satisfaction),
        call_mode: i32::from(row.call_mode),
        call_mode_code: row.call_mode_code,
        first_connected: row.first_connected,
        transfer: row.transfer.map(|transfer| {
            let transfer = transfer.0;
            proto::Transfer {
                state: transfer.state as i32,
                target: transfer.target as i32,
                bridge_call_id: text(transfer.bridge_call_id),
                bridge_number: text(transfer.bridge_number),
                bridge_dial_time: transfer.bridge_dial_time.map(utc_to_timestamp),
                bridge_answer_time: transfer.bridge_answer_time.map(utc_to_timestamp),
                agent_id: text(transfer.agent_id),
                agent_name: text(transfer.agent_name),
                target_code: transfer.target_code,
            }
        }),
        record_file: text(row.record_file),
        record_path: text(row.record_path),
        read_time: row.read_time.map(utc_to_timestamp),
        tag_ids: row.tag_ids.iter().map(Uuid::to_string).collect(),
        tags: Vec::new(),
        tag_group_ids: row.tag_group_ids.iter().map(Uuid::to_string).collect(),
        custom_fields: row.custom_fields.0.into_iter().collect(),
        turns: Vec::new(),
        turn_count: row.turn_count,
        quality: None,
        task: None,
        source_create_time: row.source_create_time.map(utc_to_timestamp),
        source_update_time: row.source_update_time.map(utc_to_timestamp),
        create_time: Some(utc_to_timestamp(row.create_time)),
        update_time: Some(utc_to_timestamp(row.update_time)),
        extra: extra(&row.extra.0),
    }
}

/// A turn of the dialogue.
pub fn turn_to_proto(row: TurnRow) -> proto::Turn {
    let node = proto::ScriptNode {
        id: text(row.node_id),
        name: text(row.node_name),
        node_class: text(row.node_class),
        r#type: i32::from(row.node_type),
        trigger_title: text(row.trigger_title),
    };
    proto::Turn {
        sequence: row.sequence,
        speaker: i32::from(row.speaker),
        text: row.text,
        time: row.time.map(utc_to_timestamp),
        start_offset_ms: row.start_offset_ms,
        end_offset_ms: row.end_offset_ms,
        speak_ms: row.speak_ms,
        play_ms: row.play_ms,
        node: (node != proto::ScriptNode::default()).then_some(node),
        matched_keyword: text(row.matched_keyword),
        jump_type: i32::from(row.jump_type),
        match_type: row.match_type,
        score_delta: row.score_delta,
        label: text(row.label),
        audio_file: text(row.audio_file),
        audio_pieces: row
            .audio_pieces
            .map(|pieces| pieces.0.into_iter().map(audio_piece_to_proto).collect())
            .unwrap_or_default(),
        asr_engine: text(row.asr_engine),
        asr_latency_ms: row.asr_latency_ms,
        record_ms: row.record_ms,
        volume_gain: row.volume_gain,
        question_index: row.question_index,
        after_transfer: row.after_transfer,
        source_turn_id: text(row.source_turn_id),
        tag_ids: row.tag_ids.iter().map(Uuid::to_string).collect(),
        extra: extra(&row.extra.0),
    }
}

fn audio_piece_to_proto(piece: AudioPiece) -> proto::AudioPiece {
    proto::AudioPiece {
        file_id: piece.file_id,
        sort: piece.sort,
        text: piece.text,
        duration_ms: piece.duration_ms,
        extra: extra(&piece.extra),
    }
}

/// A tag with its group ids and groups.
pub fn tag_to_proto(row: TagRow) -> proto::Tag {
    let groups = row.tag_groups.0;
    proto::Tag {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        source_format: i32::from(row.source_format),
        source_tag_id: row.source_tag_id,
        name: row.name,
        description: text(row.description),
        color: text(row.color),
        enabled: row.enabled,
        tag_group_ids: groups.iter().map(|group| group.id.to_string()).collect(),
        tag_groups: groups.into_iter().map(tag_group_to_proto).collect(),
        source_create_time: row.source_create_time.map(utc_to_timestamp),
        source_update_time: row.source_update_time.map(utc_to_timestamp),
        extra: extra(&row.extra.0),
        source_system: row.source_system,
    }
}

pub fn tag_group_to_proto(row: TagGroupRow) -> proto::TagGroup {
    proto::TagGroup {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        source_format: i32::from(row.source_format),
        source_tag_group_id: row.source_tag_group_id,
        name: row.name,
        scene_id: text(row.scene_id),
        source_create_time: row.source_create_time.map(utc_to_timestamp),
        source_update_time: row.source_update_time.map(utc_to_timestamp),
        extra: extra(&row.extra.0),
        source_system: row.source_system,
    }
}

pub fn level_to_proto(row: LevelRow) -> proto::Level {
    proto::Level {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        source_format: i32::from(row.source_format),
        source_level_id: row.source_level_id,
        name: row.name,
        alias: text(row.alias),
        color: text(row.color),
        min_score: row.min_score,
        max_score: row.max_score,
        extra: extra(&row.extra.0),
        source_system: row.source_system,
    }
}

/// A task with its progress; `percent` is 0 for a task without numbers.
pub fn task_to_proto(row: TaskRow) -> proto::Task {
    let percent = if row.total_numbers > 0 {
        row.called_numbers as f64 / row.total_numbers as f64 * 100.0
    } else {
        0.0
    };
    let script_group = proto::ScriptGroup {
        id: text(row.script_group_id),
        name: text(row.script_group_name),
        tag_scene_id: text(row.tag_scene_id),
    };
    let project = proto::Project {
        id: text(row.project_id),
        name: text(row.project_name),
    };
    proto::Task {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        source_format: i32::from(row.source_format),
        source_task_id: row.source_task_id,
        name: row.name,
        source_create_time: row.source_create_time.map(utc_to_timestamp),
        source_update_time: row.source_update_time.map(utc_to_timestamp),
        run_state: i32::from(row.run_state),
        max_concurrent_calls: row.max_concurrent_calls,
        calls_per_second: row.calls_per_second,
        redial_rounds: row.redial_rounds,
        ring_timeout_seconds: row.ring_timeout_seconds,
        caller_id_number: text(row.caller_id_number),
        call_notify_url: text(row.call_notify_url),
        script_group: (script_group != proto::ScriptGroup::default()).then_some(script_group),
        project: (project != proto::Project::default()).then_some(project),
        progress: Some(proto::TaskProgress {
            total_numbers: row.total_numbers,
            called_numbers: row.called_numbers,
            percent,
        }),
        extra: extra(&row.extra.0),
        create_time: Some(utc_to_timestamp(row.create_time)),
        update_time: Some(utc_to_timestamp(row.update_time)),
        source_system: row.source_system,
    }
}

/// A number of a task with the attempts given (already in order).
pub fn task_number_to_proto(row: TaskNumberRow, attempts: Vec<AttemptRow>) -> proto::TaskNumber {
    let region = proto::Region {
        province: text(row.province),
        city: text(row.city),
        area_code: text(row.area_code),
        post_code: text(row.post_code),
        carrier: i32::from(row.carrier),
        carrier_name: text(row.carrier_name),
        text: String::new(),
    };
    proto::TaskNumber {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        task_id: row.task_id.to_string(),
        source_format: i32::from(row.source_format),
        source_number_id: text(row.source_number_id),
        number: row.number,
        region: (region != proto::Region::default()).then_some(region),
        blacklisted: row.blacklisted,
        status: i32::from(row.status),
        latest_source_call_id: text(row.latest_source_call_id),
        attempts: attempts.into_iter().map(attempt_to_proto).collect(),
        extra: extra(&row.extra.0),
        update_time: Some(utc_to_timestamp(row.update_time)),
    }
}

fn attempt_to_proto(row: AttemptRow) -> proto::CallAttempt {
    proto::CallAttempt {
        source_attempt_id: text(row.source_attempt_id),
        source_call_id: text(row.source_call_id),
        call_id: id_text(row.call_id),
        call_time: row.call_time.map(utc_to_timestamp),
        duration_ms: row.duration_ms,
        talk_duration_ms: row.talk_duration_ms,
        hangup_cause: text(row.hangup_cause),
        sip_code: text(row.sip_code),
        call_status: text(row.call_status),
        status: i32::from(row.status),
        record_file: text(row.record_file),
        calling_number: text(row.calling_number),
        extra: extra(&row.extra.0),
    }
}

/// A quality result: the columns, and the rest from `details`. `details` is read leniently (a
/// missing or unreadable part is left unset) because it is written by several producers: enums
/// are accepted as numbers, as proto names or as the domain's serde names, times as RFC 3339
/// text or epoch seconds. An imported Huawei result keeps its `create_time` (epoch seconds) in
/// `extra`; it is also shown as `source_create_time`.
pub fn quality_to_proto(row: QualityRow) -> proto::QualityResult {
    let details = row.details.0;
    let field = |name: &str| details.get(name);
    let source_create_time = time_of(field("source_create_time"))
        .or_else(|| time_of(row.extra.0.get("create_time")))
        .map(utc_to_timestamp);
    proto::QualityResult {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        call_id: row.call_id.to_string(),
        version: row.version,
        source: i32::from(row.source),
        source_format: i32::from(row.source_format),
        status: i32::from(row.status),
        staff_id: string_of(field("staff_id")),
        staff_name: string_of(field("staff_name")),
        file_name: string_of(field("file_name")),
        call_time: time_of(field("call_time")).map(utc_to_timestamp),
        upload_time: time_of(field("upload_time")).map(utc_to_timestamp),
        duration_ms: i64_of(field("duration_ms")),
        call_type: enum_of(field("call_type"), proto::QualityCallType::from_str_name),
        sides: list_of(field("sides"), side_of),
        silence_time_ms: i64_of(field("silence_time_ms")),
        longest_silence_ms: i64_of(field("longest_silence_ms")),
        interruption_count: i32_of(field("interruption_count")),
        interruption_overlap_ms: i64_of(field("interruption_overlap_ms")),
        customer_last_reply: string_of(field("customer_last_reply")),
        end_node: string_of(field("end_node")),
        segments: list_of(field("segments"), segment_of),
        score: row.score,
        profile: field("profile").and_then(profile_of),
        rule_set_id: id_text(row.rule_set_id),
        rule_set_version: row
            .rule_set_version
            .or_else(|| i64_of(field("rule_set_version")))
            .unwrap_or_default(),
        rule_hits: list_of(field("rule_hits"), |hit| {
            rule_hit_of(hit, row.rule_set_version.unwrap_or_default())
        }),
        violations: list_of(field("violations"), severity_count_of),
        violation_count: row.violation_count,
        deal: field("deal").and_then(Value::as_bool),
        create_time: Some(utc_to_timestamp(row.create_time)),
        extra: extra(&row.extra.0),
        source_system: string_of(field("source_system")),
        source_call_id: string_of(field("source_call_id")),
        source_create_time,
    }
}

fn side_of(value: &Value) -> Option<proto::SideMetrics> {
    let field = |name: &str| value.get(name);
    Some(proto::SideMetrics {
        speaker: enum_of(field("speaker"), proto::Speaker::from_str_name),
        channel: string_of(field("channel")),
        speaking_time_ms: i64_of(field("speaking_time_ms")),
        speech_ratio: f64_of(field("speech_ratio")),
        speaking_rate_cpm: f64_of(field("speaking_rate_cpm")),
        turn_count: i32_of(field("turn_count")),
        silence_time_ms: i64_of(field("silence_time_ms")),
        emotions: list_of(field("emotions"), |emotion| {
            Some(proto::Emotion {
                polarity: enum_of(
                    emotion.get("polarity"),
                    proto::EmotionPolarity::from_str_name,
                ),
                score: f64_of(emotion.get("score")).unwrap_or_default(),
            })
        }),
    })
}

fn segment_of(value: &Value) -> Option<proto::QualitySegment> {
    let field = |name: &str| value.get(name);
    Some(proto::QualitySegment {
        segment_id: i64_of(field("segment_id")).unwrap_or_default(),
        speaker: enum_of(field("speaker"), proto::Speaker::from_str_name),
        text: string_of(field("text")),
        start_offset_ms: i64_of(field("start_offset_ms")).unwrap_or_default(),
        end_offset_ms: i64_of(field("end_offset_ms")).unwrap_or_default(),
    })
}

fn profile_of(value: &Value) -> Option<proto::ScoringProfile> {
    let field = |name: &str| value.get(name);
    value.as_object()?;
    Some(proto::ScoringProfile {
        id: string_of(field("id")),
        tenant_id: string_of(field("tenant_id")),
        name: string_of(field("name")),
        base: f64_of(field("base")).unwrap_or_default(),
        lower_bound: f64_of(field("lower_bound")).unwrap_or_default(),
        upper_bound: f64_of(field("upper_bound")).unwrap_or_default(),
    })
}

/// A stored rule hit, by its long keys or the short ones computed results use (`r`, `n`, `t`,
/// `o`, `m`, `p`, `s`); a hit without its own rule-set version has the result's.
fn rule_hit_of(value: &Value, result_rule_set_version: i64) -> Option<proto::RuleHit> {
    let field = |long: &str, short: &str| value.get(long).or_else(|| value.get(short));
    Some(proto::RuleHit {
        rule_id: string_of(field("rule_id", "r")),
        rule_name: string_of(field("rule_name", "n")),
        rule_set_version: i64_of(value.get("rule_set_version")).unwrap_or(result_rule_set_version),
        turn_sequence: i32_of(field("turn_sequence", "t")),
        offset: i32_of(field("offset", "o")),
        matched_text: string_of(field("matched_text", "m")),
        points: f64_of(field("points", "p")).unwrap_or_default(),
        severity: enum_of(field("severity", "s"), proto::Severity::from_str_name),
    })
}

fn severity_count_of(value: &Value) -> Option<proto::SeverityCount> {
    Some(proto::SeverityCount {
        severity: enum_of(value.get("severity"), proto::Severity::from_str_name),
        count: i32_of(value.get("count")).unwrap_or_default(),
    })
}

/// The number of an enum given as a number, a proto name (`SPEAKER_ROBOT`) or the serde name
/// of the generated enum (`Robot`); 0 (unspecified) otherwise.
fn enum_of<E>(value: Option<&Value>, from_str_name: fn(&str) -> Option<E>) -> i32
where
    E: DeserializeOwned + Into<i32>,
{
    match value {
        Some(Value::Number(number)) => number
            .as_i64()
            .and_then(|number| i32::try_from(number).ok())
            .unwrap_or_default(),
        Some(Value::String(name)) => from_str_name(name)
            .or_else(|| serde_json::from_value::<E>(Value::String(name.clone())).ok())
            .map_or(0, Into::into),
        _ => 0,
    }
}

fn list_of<T>(value: Option<&Value>, item: impl Fn(&Value) -> Option<T>) -> Vec<T> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(item).collect())
        .unwrap_or_default()
}

fn string_of(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    }
}

fn i64_of(value: Option<&Value>) -> Option<i64> {
    let value = value?;
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|number| number.is_finite())
            .map(|number| number.round() as i64)
    })
}

fn i32_of(value: Option<&Value>) -> Option<i32> {
    i64_of(value).and_then(|number| i32::try_from(number).ok())
}

fn f64_of(value: Option<&Value>) -> Option<f64> {
    value?.as_f64()
}

/// RFC 3339 text, or whole epoch seconds.
fn time_of(value: Option<&Value>) -> Option<DateTime<Utc>> {
    match value? {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| time.with_timezone(&Utc)),
        Value::Number(number) => number
            .as_i64()
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0)),
        _ => None,
    }
}

fn text(value: Option<String>) -> String {
    value.unwrap_or_default()
}

fn id_text(value: Option<Uuid>) -> String {
    value.map(|id| id.to_string()).unwrap_or_default()
}

/// `extra` as a Struct; none when empty.
fn extra(map: &Extra) -> Option<prost_types::Struct> {
    (!map.is_empty()).then(|| json_to_struct(map))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn views_map_to_embeds_and_undefined_views_are_refused() {
        assert_eq!(call_embed(0, "view").unwrap(), CallEmbed::Basic);
        assert_eq!(
            call_embed(proto::CallView::Basic as i32, "view").unwrap(),
            CallEmbed::Basic
        );
        assert_eq!(
            call_embed(proto::CallView::Full as i32, "view").unwrap(),
            CallEmbed::Full
        );
        let error = call_embed(42, "view").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(format!("{error:?}").contains("view"));
    }

    #[test]
    fn ids_are_required_uuids() {
        let id = Uuid::now_v7();
        assert_eq!(required_id(&id.to_string(), "call_id").unwrap(), id);
        for bad in ["", "  ", "not-a-uuid", "123"] {
            let error = required_id(bad, "call_id").unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert_eq!(optional_id("", "tag_group_id").unwrap(), None);
        assert!(optional_id("x", "tag_group_id").is_err());
    }

    #[test]
    fn enums_are_read_from_numbers_proto_names_and_serde_names() {
        let from = proto::Speaker::from_str_name;
        assert_eq!(enum_of(Some(&json!(2)), from), 2);
        assert_eq!(enum_of(Some(&json!("SPEAKER_AGENT")), from), 3);
        assert_eq!(enum_of(Some(&json!("Customer")), from), 2);
        assert_eq!(enum_of(Some(&json!("nobody")), from), 0);
        assert_eq!(enum_of(None, from), 0);
    }

    #[test]
    fn times_are_read_from_rfc3339_or_epoch_seconds() {
        assert_eq!(
            time_of(Some(&json!(1_635_318_854))).map(|time| time.timestamp()),
            Some(1_635_318_854)
        );
        assert_eq!(
            time_of(Some(&json!("2021-10-27T07:14:14Z"))).map(|time| time.timestamp()),
            Some(1_635_318_854)
        );
        assert_eq!(time_of(Some(&json!(true))), None);
    }
}
