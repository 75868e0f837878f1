//! Huawei CEC payloads (seed 002): the outbound campaign result callback (`huawei_result`) and
//! the quality-inspection result of one call (`huawei_qc`).
//!
//! Both are read through [`Fields`], so every key a parser does not model ends up in `extra`.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::domain::SourceKey;
use crate::domain::call::{Call, HuaweiResult};
use crate::domain::quality::{Emotion, ImportedQuality, Segment, SideMetrics};
use crate::domain::task::Task;
use crate::ingest::Batch;
use crate::ingest::formats::fields::{Fields, parse_json};
use crate::ingest::formats::{FormatError, ParseContext};
use crate::proto::{
    CallOutcome, EmotionPolarity, QualityCallType, QualityStatus, SourceFormat, Speaker,
};

/// Format name of the campaign result callback.
const RESULT_FORMAT: &str = "huawei_result";
/// Format name of the quality-inspection result.
const QC_FORMAT: &str = "huawei_qc";

/// `callStatus` of a successful call (呼叫成功).
const CALL_SUCCEEDED: i32 = 6;
/// `callStatus` of a failed call (呼叫失败).
const CALL_FAILED: i32 = 5;
/// `failCode` of a successful call (外呼成功), normalised to five digits.
const SUCCESS_CODE: &str = "00000";

/// Keys the seed names for the result list. The seed says the callback body *is* the list
/// ("此处仅做说明,实际无此实体对象"): `callResultList` (table 1) and `callDataList` (table 2) are
/// documentation names only. An object whose single key is one of them holding a list is still
/// accepted, since unwrapping it loses nothing.
const RESULT_LIST_KEYS: [&str; 2] = ["callResultList", "callDataList"];

// ---------------------------------------------------------------------------------------------
// Campaign result callback
// ---------------------------------------------------------------------------------------------

/// Parses a campaign result callback: a JSON list of call results (or one result, or the list
/// wrapped in a documented key). Yields one call per result and one minimal task per distinct
/// `campaignId`, in payload order. A bad item fails the whole payload, naming its path.
pub fn parse_results(payload: &[u8], context: &ParseContext) -> Result<Batch, FormatError> {
    let value = parse_json(RESULT_FORMAT, payload)?;
    let mut batch = Batch::default();
    let mut campaigns = HashSet::new();
    for (path, item) in result_items(value)? {
        let (call, campaign) = parse_result(&path, item, context)?;
        batch.tasks.extend(first_sight(&mut campaigns, campaign));
        batch.calls.push(call);
    }
    Ok(batch)
}

/// A minimal task for a campaign not seen before in the payload.
fn first_sight(seen: &mut HashSet<String>, campaign: Option<SourceKey>) -> Option<Task> {
    let campaign = campaign?;
    seen.insert(campaign.id.clone())
        .then(|| Task::new(SourceFormat::HuaweiResult, campaign))
}

/// The result objects of the payload, with their JSON paths.
fn result_items(value: Value) -> Result<Vec<(String, Value)>, FormatError> {
    match value {
        Value::Array(items) => Ok(indexed("$", items)),
        Value::Object(mut object) => match wrapped_list(&mut object) {
            Some((key, items)) => Ok(indexed(&format!("$.{key}"), items)),
            None => Ok(vec![("$".to_owned(), Value::Object(object))]),
        },
        _ => Err(FormatError {
            format: RESULT_FORMAT,
            path: "$".to_owned(),
            message: "expected a list of call results or one call result".to_owned(),
        }),
    }
}

/// The list of an object that only wraps it in one of [`RESULT_LIST_KEYS`].
fn wrapped_list(object: &mut Map<String, Value>) -> Option<(&'static str, Vec<Value>)> {
    if object.len() != 1 {
        return None;
    }
    let key = RESULT_LIST_KEYS
        .iter()
        .copied()
        .find(|key| object.contains_key(*key))?;
    match object.remove(key) {
        Some(Value::Array(items)) => Some((key, items)),
        Some(other) => {
            object.insert(key.to_owned(), other);
            None
        }
        None => None,
    }
}

/// Items of a list with their paths (`{path}[i]`).
fn indexed(path: &str, items: Vec<Value>) -> Vec<(String, Value)> {
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| (format!("{path}[{index}]"), item))
        .collect()
}

/// One call result, and the key of its campaign when it names one.
fn parse_result(
    path: &str,
    value: Value,
    context: &ParseContext,
) -> Result<(Call, Option<SourceKey>), FormatError> {
    let mut fields = Fields::new(RESULT_FORMAT, path, value, context)?;
    let key = source_key(&mut fields, "callId")?;
    let callee = fields.required_string("called")?;
    let dial_time = fields
        .local_time("callTimeStr")?
        .ok_or_else(|| fields.error("callTimeStr", "is required"))?;
    let campaign = optional_source_key(&mut fields, "campaignId")?;

    let mut call = Call::new(SourceFormat::HuaweiResult, key, callee, dial_time);
    call.source_task_id = campaign.as_ref().map(|campaign| campaign.id.clone());
    let call_status = fields.i32("callStatus")?;
    let huawei = huawei_result(&mut fields, call_status)?;
    call.outcome = outcome_of(call_status, &huawei.fail_code);
    call.huawei = Some(huawei);
    call.record_path = fields.string("recordPath")?;
    if let Some(custom) = custom_field(&mut fields) {
        call.custom_fields.insert("customField".to_owned(), custom);
    }
    call.extra = fields.rest();
    Ok((call, campaign))
}

/// The Huawei-specific columns of a result.
///
/// A missing `callStatus` is stored as 0, which is neither of the documented values (5 failed,
/// 6 succeeded); the outcome then comes from `failCode` alone.
fn huawei_result(
    fields: &mut Fields<'_>,
    call_status: Option<i32>,
) -> Result<HuaweiResult, FormatError> {
    Ok(HuaweiResult {
        call_status: call_status.unwrap_or_default(),
        fail_code: fields.string("failCode")?.unwrap_or_default(),
        session_id: fields.string("sessionId")?,
        vdn_id: fields.i64("vdnId")?,
    })
}

/// `customField` when it is text; any other shape (object, list, number, flag) stays in `extra`
/// as sent, so that nothing is flattened into a string.
fn custom_field(fields: &mut Fields<'_>) -> Option<String> {
    match fields.take("customField")? {
        Value::String(text) if text.trim().is_empty() => None,
        Value::String(text) => Some(text),
        other => {
            fields.keep("customField", other);
            None
        }
    }
}

/// A required source id, validated as a [`SourceKey`] of the context's source system.
fn source_key(fields: &mut Fields<'_>, key: &str) -> Result<SourceKey, FormatError> {
    let id = fields.required_string(key)?;
    key_of(fields, key, &id)
}

/// An optional source id, validated as a [`SourceKey`] of the context's source system.
fn optional_source_key(
    fields: &mut Fields<'_>,
    key: &str,
) -> Result<Option<SourceKey>, FormatError> {
    match fields.string(key)? {
        None => Ok(None),
        Some(id) => key_of(fields, key, &id).map(Some),
    }
}

fn key_of(fields: &Fields<'_>, key: &str, id: &str) -> Result<SourceKey, FormatError> {
    SourceKey::parse(&fields.context().source_system, id)
        .map_err(|(part, message)| fields.error(key, format!("invalid {part}: {message}")))
}

/// The outcome of a result from its `callStatus` and `failCode`.
///
/// Judgement calls (the seed's code table, 表4 外呼结果错误原因码说明, is the reference):
/// - `callStatus` 6 (呼叫成功) wins: the seed calls `failCode` "失败的原因码" (the reason of a
///   failure), so a code sent with a successful call is not an outcome; it is kept verbatim in
///   `huawei.fail_code` all the same.
/// - The success code (00000, or 0 as in the seed's own sample) means answered, unless
///   `callStatus` says 5 (呼叫失败): that contradiction is left unspecified rather than stored
///   as an answered call.
/// - 34606 (试呼失败) is listed twice in the seed, under platform releases and under lack of
///   resources; the seed's wording (the dial attempt failed, e.g. concurrency cap) is read as
///   a platform failure.
/// - Codes without their leading zeros ("603", or the number 603) are padded to five digits for
///   the lookup only.
pub fn outcome_of(call_status: Option<i32>, fail_code: &str) -> CallOutcome {
    if call_status == Some(CALL_SUCCEEDED) {
        return CallOutcome::Answered;
    }
    let code = normalised_fail_code(fail_code);
    if code == SUCCESS_CODE {
        return if call_status == Some(CALL_FAILED) {
            CallOutcome::Unspecified
        } else {
            CallOutcome::Answered
        };
    }
    outcome_of_fail_code(&code)
}

/// A fail code padded with leading zeros to five digits when it is all digits.
fn normalised_fail_code(fail_code: &str) -> String {
    let code = fail_code.trim();
    if !code.is_empty() && code.chars().all(|character| character.is_ascii_digit()) {
        format!("{code:0>5}")
    } else {
        code.to_owned()
    }
}

/// The outcome a normalised, non-success fail code stands for.
fn outcome_of_fail_code(code: &str) -> CallOutcome {
    match code {
        // 用户侧拆线: the callee side released the call before it was answered.
        "00531" | "00551" | "00601" => CallOutcome::HungUpBeforeAnswer,
        "00537" => CallOutcome::Busy,
        "00538" => CallOutcome::VacantNumber,
        "00548" => CallOutcome::PoweredOff,
        "00549" => CallOutcome::OutOfServiceArea,
        "00603" | "01040" => CallOutcome::NoAnswer,
        "00604" => CallOutcome::Rejected,
        "00701" | "00702" => CallOutcome::AbandonedInQueue,
        "01043" | "01046" | "01049" | "34601" | "34605" | "34606" | "34608" => {
            CallOutcome::PlatformFailure
        }
        "00602" | "00605" | "01048" => CallOutcome::ResourceFailure,
        "00606" | "34611" => CallOutcome::SystemFailure,
        _ => CallOutcome::Unspecified,
    }
}

// ---------------------------------------------------------------------------------------------
// Quality-inspection result
// ---------------------------------------------------------------------------------------------

/// Parses a quality-inspection result. The seed documents one bare object per call (the
/// response of the "get the QC result of a call" API); a list of such objects is accepted too.
pub fn parse_qc(payload: &[u8], context: &ParseContext) -> Result<Batch, FormatError> {
    let value = parse_json(QC_FORMAT, payload)?;
    let items = match value {
        Value::Array(items) => indexed("$", items),
        other => vec![("$".to_owned(), other)],
    };
    let mut batch = Batch::default();
    for (path, item) in items {
        batch.quality.push(parse_quality(&path, item, context)?);
    }
    Ok(batch)
}

/// One QC result object.
fn parse_quality(
    path: &str,
    value: Value,
    context: &ParseContext,
) -> Result<ImportedQuality, FormatError> {
    let mut fields = Fields::new(QC_FORMAT, path, value, context)?;
    let call = inspected_call(&mut fields)?;
    let status = coded(&mut fields, "status", quality_status)?;
    let call_type = coded(&mut fields, "call_type", quality_call_type)?;
    let staff_id = fields.string("staff_id")?;
    let staff_name = fields.string("staff_name")?;
    let file_name = fields.string("file_name")?;
    let call_time = fields.unix_time("call_time")?;
    let upload_time = fields.unix_time("upload_time")?;
    let duration_ms = fields.f64("duration")?.map(seconds_to_ms);
    let sides = sides(&mut fields)?;
    let segments = segments(&mut fields)?;
    let violation_count = fields.i32("rule_severity_violation_count")?;
    let deal = fields.bool("deal")?;
    Ok(ImportedQuality {
        source_format: SourceFormat::HuaweiQc,
        call,
        status,
        staff_id,
        staff_name,
        file_name,
        call_time,
        upload_time,
        duration_ms,
        call_type,
        sides,
        segments,
        violation_count,
        deal,
        extra: fields.rest(),
    })
}

/// The inspected call: `call_id`, or `call_uuid` when `call_id` is absent (the seed lists both;
/// the one not used stays in `extra`).
fn inspected_call(fields: &mut Fields<'_>) -> Result<SourceKey, FormatError> {
    if let Some(id) = fields.string("call_id")? {
        return key_of(fields, "call_id", &id);
    }
    match fields.string("call_uuid")? {
        Some(id) => key_of(fields, "call_uuid", &id),
        None => Err(fields.error("call_id", "is required (or call_uuid)")),
    }
}

/// An integer code decoded by `decode`. An unknown code gives the default (unspecified) value
/// and its raw value stays in `extra`; a value that is not an integer is an error.
fn coded<T: Default>(
    fields: &mut Fields<'_>,
    key: &str,
    decode: fn(i64) -> Option<T>,
) -> Result<T, FormatError> {
    let Some(raw) = fields.take(key) else {
        return Ok(T::default());
    };
    fields.keep(key, raw.clone());
    let code = fields.i64(key)?;
    match code.map(decode) {
        Some(Some(decoded)) => Ok(decoded),
        Some(None) => {
            fields.keep(key, raw);
            Ok(T::default())
        }
        None => Ok(T::default()),
    }
}

/// QC `status` (seed table 3, 1.21).
fn quality_status(code: i64) -> Option<QualityStatus> {
    match code {
        0 => Some(QualityStatus::Waiting),
        1 => Some(QualityStatus::Processing),
        2 => Some(QualityStatus::Done),
        3 => Some(QualityStatus::Transcribing),
        9 => Some(QualityStatus::Failed),
        31 => Some(QualityStatus::AsrEmpty),
        32 => Some(QualityStatus::SpeechToTextFailed),
        33 => Some(QualityStatus::AsrUploadFailed),
        34 => Some(QualityStatus::AsrSubmitFailed),
        35 => Some(QualityStatus::MultimediaQcFailed),
        36 => Some(QualityStatus::TucQcFailed),
        37 => Some(QualityStatus::AsrConversionFailed),
        38 => Some(QualityStatus::SaveFailed),
        39 => Some(QualityStatus::QcJobFailed),
        40 => Some(QualityStatus::InvalidAudio),
        _ => None,
    }
}

/// QC `call_type`. The seed only says "文本,音频" (text, audio) without codes; the contract
/// reads 0 as audio and 1 as text, which the seed's sample agrees with (0 on a result with
/// audio metrics: silence times, speaking rates, ASR segments).
fn quality_call_type(code: i64) -> Option<QualityCallType> {
    match code {
        0 => Some(QualityCallType::Audio),
        1 => Some(QualityCallType::Text),
        _ => None,
    }
}

/// Seconds (possibly fractional) as whole milliseconds. Out-of-range values saturate.
fn seconds_to_ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// Who a channel or segment speaker is. The seed's samples say `customer` / `staff`; its tables
/// describe the values as 客户 / 座席, which are accepted too.
fn speaker_of(text: &str) -> Option<Speaker> {
    match text.trim().to_ascii_lowercase().as_str() {
        "customer" | "客户" => Some(Speaker::Customer),
        "staff" | "agent" | "座席" | "坐席" => Some(Speaker::Agent),
        _ => None,
    }
}

/// Polarity of an emotion `type` (`positive` / `negative`; the seed's tables say 积极 / 消极).
fn polarity_of(text: &str) -> Option<EmotionPolarity> {
    match text.trim().to_ascii_lowercase().as_str() {
        "positive" | "积极" => Some(EmotionPolarity::Positive),
        "negative" | "消极" => Some(EmotionPolarity::Negative),
        _ => None,
    }
}

/// The left and right channel metrics; a side the result says nothing about is left out.
fn sides(fields: &mut Fields<'_>) -> Result<Vec<SideMetrics>, FormatError> {
    let mut sides = Vec::with_capacity(2);
    for channel in ["left", "right"] {
        if let Some(side) = side(fields, channel)? {
            sides.push(side);
        }
    }
    Ok(sides)
}

/// One channel's metrics from its `{channel}_*` keys.
///
/// `*_speed` is stored as characters per minute: the seed gives no unit (发话语速), and the
/// sample's 324 and 231 are Mandarin speaking rates in characters per minute, not per second.
/// The seed says emotions are only scored for the staff side, but stores them per channel; both
/// channels' emotions are kept as sent.
fn side(fields: &mut Fields<'_>, channel: &str) -> Result<Option<SideMetrics>, FormatError> {
    let speaker = channel_speaker(fields, &format!("{channel}_channel"))?;
    let speech_ratio = fields.f64(&format!("{channel}_speech_ratio"))?;
    let speaking_rate_cpm = fields.f64(&format!("{channel}_speed"))?;
    let silence_time_ms = fields
        .f64(&format!("{channel}_silence_time"))?
        .map(seconds_to_ms);
    let emotions = emotions(fields, &format!("{channel}_emotions"))?;
    let described = speaker.is_some()
        || speech_ratio.is_some()
        || speaking_rate_cpm.is_some()
        || silence_time_ms.is_some()
        || !emotions.is_empty();
    Ok(described.then(|| SideMetrics {
        speaker: speaker.unwrap_or_default(),
        channel: Some(channel.to_owned()),
        speech_ratio,
        speaking_rate_cpm,
        silence_time_ms,
        emotions,
        ..SideMetrics::default()
    }))
}

/// The speaker of a channel; `None` when the key is absent. An unknown value gives an
/// unspecified speaker and stays in `extra`.
fn channel_speaker(fields: &mut Fields<'_>, key: &str) -> Result<Option<Speaker>, FormatError> {
    let Some(text) = fields.string(key)? else {
        return Ok(None);
    };
    match speaker_of(&text) {
        Some(speaker) => Ok(Some(speaker)),
        None => {
            fields.keep(key, Value::String(text));
            Ok(Some(Speaker::Unspecified))
        }
    }
}

/// A list as sent, and its items with their paths.
type SentList = (Value, Vec<(String, Value)>);

/// A list of objects, with the list as sent (to put back into `extra` when an item holds more
/// than the model can).
fn object_list(fields: &mut Fields<'_>, key: &str) -> Result<Option<SentList>, FormatError> {
    let path = fields.path_of(key);
    match fields.take(key) {
        None => Ok(None),
        Some(Value::Array(items)) => {
            let sent = Value::Array(items.clone());
            Ok(Some((sent, indexed(&path, items))))
        }
        Some(other) => {
            fields.keep(key, other);
            Err(fields.error(key, "expected a list"))
        }
    }
}

/// An item parsed from a list, and whether the model holds all of it.
struct Item<T> {
    value: T,
    complete: bool,
}

/// Parses a list of objects with `parse`. When any item holds more than the model can (an
/// unknown key or an unknown code), the list as sent also stays in `extra`, so nothing is lost.
fn parsed_list<T>(
    fields: &mut Fields<'_>,
    key: &str,
    parse: fn(Fields<'_>) -> Result<Item<T>, FormatError>,
) -> Result<Vec<T>, FormatError> {
    let Some((sent, items)) = object_list(fields, key)? else {
        return Ok(Vec::new());
    };
    let mut parsed = Vec::with_capacity(items.len());
    let mut complete = true;
    for (path, item) in items {
        let item = parse(Fields::new(fields.format(), path, item, fields.context())?)?;
        complete &= item.complete;
        parsed.push(item.value);
    }
    if !complete {
        fields.keep(key, sent);
    }
    Ok(parsed)
}

/// A side's emotions (`*_emotions`).
fn emotions(fields: &mut Fields<'_>, key: &str) -> Result<Vec<Emotion>, FormatError> {
    parsed_list(fields, key, emotion)
}

/// One emotion: `type` (positive / negative) and `score` (required).
fn emotion(mut fields: Fields<'_>) -> Result<Item<Emotion>, FormatError> {
    let polarity = fields.string("type")?.map(|text| polarity_of(&text));
    let score = fields
        .f64("score")?
        .ok_or_else(|| fields.error("score", "is required"))?;
    let known = !matches!(polarity, Some(None));
    Ok(Item {
        value: Emotion {
            polarity: polarity.flatten().unwrap_or_default(),
            score,
        },
        complete: known && fields.rest().is_empty(),
    })
}

/// The ASR segments (`segments`).
fn segments(fields: &mut Fields<'_>) -> Result<Vec<Segment>, FormatError> {
    parsed_list(fields, "segments", segment)
}

/// One segment: `segment_id`, `start_time` and `end_time` are required (the model has no
/// "unknown" for them); a missing `asr_text` is empty text. The seed also lists a per-segment
/// `status` (通话状态), which the model does not hold: the list then stays in `extra` as well.
fn segment(mut fields: Fields<'_>) -> Result<Item<Segment>, FormatError> {
    let segment_id = required_i64(&mut fields, "segment_id")?;
    let speaker = fields.string("speaker")?.map(|text| speaker_of(&text));
    let text = fields.string("asr_text")?.unwrap_or_default();
    let start_offset_ms = required_seconds_as_ms(&mut fields, "start_time")?;
    let end_offset_ms = required_seconds_as_ms(&mut fields, "end_time")?;
    let known = !matches!(speaker, Some(None));
    Ok(Item {
        value: Segment {
            segment_id,
            speaker: speaker.flatten().unwrap_or_default(),
            text,
            start_offset_ms,
            end_offset_ms,
        },
        complete: known && fields.rest().is_empty(),
    })
}

fn required_i64(fields: &mut Fields<'_>, key: &str) -> Result<i64, FormatError> {
    fields
        .i64(key)?
        .ok_or_else(|| fields.error(key, "is required"))
}

fn required_seconds_as_ms(fields: &mut Fields<'_>, key: &str) -> Result<i64, FormatError> {
    fields
        .f64(key)?
        .map(seconds_to_ms)
        .ok_or_else(|| fields.error(key, "is required"))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::ingest::formats::DEFAULT_TIME_ZONE;

    const RESULTS: &[u8] = include_bytes!("../../../tests/fixtures/huawei_campaign_results.json");
    const QC: &[u8] = include_bytes!("../../../tests/fixtures/huawei_qc_result.json");

    fn context() -> ParseContext {
        ParseContext::new("huawei_cec", DEFAULT_TIME_ZONE)
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn results(value: Value) -> Result<Batch, FormatError> {
        parse_results(value.to_string().as_bytes(), &context())
    }

    fn qc(value: Value) -> Result<Batch, FormatError> {
        parse_qc(value.to_string().as_bytes(), &context())
    }

    fn qc_sample() -> Value {
        serde_json::from_slice(QC).expect("valid sample")
    }

    fn one_result(changes: Value) -> Value {
        let mut item = json!({
            "campaignId": "3",
            "called": "60584",
            "callTimeStr": "2020-08-30 20:00:00",
            "callStatus": 5,
            "failCode": "00603",
            "callId": "0023-1",
        });
        if let (Some(item), Some(changes)) = (item.as_object_mut(), changes.as_object()) {
            for (key, value) in changes {
                item.insert(key.clone(), value.clone());
            }
        }
        item
    }

    #[test]
    fn reads_the_seed_result_sample() {
        let batch = parse_results(RESULTS, &context()).expect("parses");
        assert_eq!(batch.calls.len(), 1);
        let call = &batch.calls[0];
        assert_eq!(call.source_format, SourceFormat::HuaweiResult);
        assert_eq!(call.key.system, "huawei_cec");
        assert_eq!(call.key.id, "0023-134864174");
        assert_eq!(call.source_task_id.as_deref(), Some("3"));
        assert_eq!(call.callee, "60584");
        // 20:00 in Asia/Shanghai (UTC+8) is 12:00 UTC.
        assert_eq!(call.dial_time, utc("2020-08-30T12:00:00Z"));
        assert_eq!(call.outcome, CallOutcome::Answered);
        assert_eq!(
            call.huawei,
            Some(HuaweiResult {
                call_status: 6,
                fail_code: "0".to_owned(),
                session_id: Some("1202_test013".to_owned()),
                vdn_id: Some(11),
            })
        );
        assert_eq!(
            call.record_path.as_deref(),
            Some("Y:/1/11/20200830/3408/0949218.V3")
        );
        assert!(call.custom_fields.is_empty());
        assert!(
            call.extra.is_empty(),
            "every sample key is modelled: {:?}",
            call.extra
        );
        assert!(call.turns.is_empty());

        assert_eq!(batch.tasks.len(), 1);
        assert_eq!(batch.tasks[0].source_format, SourceFormat::HuaweiResult);
        assert_eq!(batch.tasks[0].key.system, "huawei_cec");
        assert_eq!(batch.tasks[0].key.id, "3");
        assert!(batch.quality.is_empty());
    }

    #[test]
    fn keeps_fail_codes_as_sent_and_unmodelled_keys_in_extra() {
        let batch = results(json!([one_result(json!({
            "failCode": 603,
            "customField": "order-7",
            "tenantId": "00030010",
        }))]))
        .expect("parses");
        let call = &batch.calls[0];
        assert_eq!(call.outcome, CallOutcome::NoAnswer);
        assert_eq!(
            call.huawei.as_ref().map(|huawei| huawei.fail_code.as_str()),
            Some("603")
        );
        assert_eq!(
            call.custom_fields.get("customField").map(String::as_str),
            Some("order-7")
        );
        assert_eq!(call.extra.get("tenantId"), Some(&json!("00030010")));
        assert!(!call.extra.contains_key("customField"));
        assert!(call.record_path.is_none());
    }

    #[test]
    fn keeps_structured_custom_fields_in_extra() {
        let batch =
            results(json!([one_result(json!({"customField": {"orderId": 7}}))])).expect("parses");
        let call = &batch.calls[0];
        assert!(call.custom_fields.is_empty());
        assert_eq!(call.extra.get("customField"), Some(&json!({"orderId": 7})));
    }

    #[test]
    fn yields_one_task_per_distinct_campaign_in_payload_order() {
        let batch = results(json!([
            one_result(json!({"callId": "a", "campaignId": "7"})),
            one_result(json!({"callId": "b", "campaignId": "3"})),
            one_result(json!({"callId": "c", "campaignId": "7"})),
            one_result(json!({"callId": "d", "campaignId": null})),
        ]))
        .expect("parses");
        let calls: Vec<_> = batch
            .calls
            .iter()
            .map(|call| call.key.id.as_str())
            .collect();
        assert_eq!(calls, ["a", "b", "c", "d"]);
        let tasks: Vec<_> = batch
            .tasks
            .iter()
            .map(|task| task.key.id.as_str())
            .collect();
        assert_eq!(tasks, ["7", "3"]);
        assert_eq!(batch.calls[3].source_task_id, None);
    }

    #[test]
    fn accepts_one_result_or_a_wrapped_list() {
        let single = results(one_result(json!({}))).expect("one object");
        assert_eq!(single.calls.len(), 1);
        let wrapped = results(json!({"callResultList": [one_result(json!({}))]})).expect("wrapped");
        assert_eq!(wrapped.calls.len(), 1);
        let error = results(json!({"callDataList": [{"called": "1"}]})).expect_err("no callId");
        assert_eq!(error.path, "$.callDataList[0].callId");
        let empty = results(json!([])).expect("empty list");
        assert!(empty.calls.is_empty() && empty.tasks.is_empty());
    }

    #[test]
    fn maps_every_documented_fail_code() {
        let table = [
            ("00000", CallOutcome::Answered),
            ("0", CallOutcome::Answered),
            ("00531", CallOutcome::HungUpBeforeAnswer),
            ("00537", CallOutcome::Busy),
            ("00538", CallOutcome::VacantNumber),
            ("00548", CallOutcome::PoweredOff),
            ("00549", CallOutcome::OutOfServiceArea),
            ("00551", CallOutcome::HungUpBeforeAnswer),
            ("00601", CallOutcome::HungUpBeforeAnswer),
            ("00603", CallOutcome::NoAnswer),
            ("00604", CallOutcome::Rejected),
            ("00701", CallOutcome::AbandonedInQueue),
            ("00702", CallOutcome::AbandonedInQueue),
            ("01040", CallOutcome::NoAnswer),
            ("01043", CallOutcome::PlatformFailure),
            ("01046", CallOutcome::PlatformFailure),
            ("01049", CallOutcome::PlatformFailure),
            ("34601", CallOutcome::PlatformFailure),
            ("34605", CallOutcome::PlatformFailure),
            ("34606", CallOutcome::PlatformFailure),
            ("34608", CallOutcome::PlatformFailure),
            ("00602", CallOutcome::ResourceFailure),
            ("00605", CallOutcome::ResourceFailure),
            ("01048", CallOutcome::ResourceFailure),
            ("00606", CallOutcome::SystemFailure),
            ("34611", CallOutcome::SystemFailure),
            ("99999", CallOutcome::Unspecified),
            ("", CallOutcome::Unspecified),
            ("abc", CallOutcome::Unspecified),
        ];
        for (code, outcome) in table {
            assert_eq!(outcome_of(None, code), outcome, "code {code:?}");
            if outcome != CallOutcome::Answered {
                assert_eq!(
                    outcome_of(Some(5), code),
                    outcome,
                    "code {code:?}, status 5"
                );
            }
        }
    }

    #[test]
    fn reads_codes_without_leading_zeros_and_lets_call_status_decide_success() {
        assert_eq!(outcome_of(Some(5), "603"), CallOutcome::NoAnswer);
        assert_eq!(outcome_of(Some(5), " 1040 "), CallOutcome::NoAnswer);
        assert_eq!(outcome_of(Some(5), "537"), CallOutcome::Busy);
        assert_eq!(outcome_of(Some(6), "0"), CallOutcome::Answered);
        assert_eq!(outcome_of(Some(6), ""), CallOutcome::Answered);
        assert_eq!(outcome_of(Some(6), "00603"), CallOutcome::Answered);
        assert_eq!(outcome_of(Some(5), "0"), CallOutcome::Unspecified);
        assert_eq!(outcome_of(Some(5), ""), CallOutcome::Unspecified);
    }

    #[test]
    fn rejects_malformed_results_with_their_path() {
        let invalid = parse_results(b"[{", &context()).expect_err("not JSON");
        assert_eq!(
            (invalid.format, invalid.path.as_str()),
            ("huawei_result", "$")
        );

        let missing = results(json!([{"called": "1", "callTimeStr": "2020-08-30 20:00:00"}]))
            .expect_err("no callId");
        assert_eq!(missing.path, "$[0].callId");
        assert!(missing.message.contains("required"), "{}", missing.message);

        let second = results(json!([
            one_result(json!({})),
            one_result(json!({"called": ""}))
        ]))
        .expect_err("empty callee");
        assert_eq!(second.path, "$[1].called");

        let no_time =
            results(json!([one_result(json!({"callTimeStr": null}))])).expect_err("no time");
        assert_eq!(no_time.path, "$[0].callTimeStr");
        let bad_time = results(json!([one_result(json!({"callTimeStr": "30/08/2020"}))]))
            .expect_err("bad time");
        assert_eq!(bad_time.path, "$[0].callTimeStr");

        let object_id =
            results(json!([one_result(json!({"callId": {"id": 1}}))])).expect_err("object");
        assert_eq!(object_id.path, "$[0].callId");
        let text_status =
            results(json!([one_result(json!({"callStatus": "ok"}))])).expect_err("not an integer");
        assert_eq!(text_status.path, "$[0].callStatus");
        let list_code = results(json!([one_result(json!({"failCode": []}))])).expect_err("a list");
        assert_eq!(list_code.path, "$[0].failCode");
        let long_campaign = results(json!([one_result(json!({"campaignId": "x".repeat(300)}))]))
            .expect_err("too long");
        assert_eq!(long_campaign.path, "$[0].campaignId");

        let scalar = results(json!("x")).expect_err("not a list");
        assert_eq!(scalar.path, "$");
        let item = results(json!([1])).expect_err("not an object");
        assert_eq!(item.path, "$[0]");
    }

    #[test]
    fn reads_the_seed_qc_sample() {
        let batch = parse_qc(QC, &context()).expect("parses");
        assert!(batch.calls.is_empty() && batch.tasks.is_empty());
        assert_eq!(batch.quality.len(), 1);
        let quality = &batch.quality[0];
        assert_eq!(quality.source_format, SourceFormat::HuaweiQc);
        assert_eq!(quality.call.system, "huawei_cec");
        assert_eq!(quality.call.id, "17af55af-e51d-4cc0-8a62-84222e1d1eea");
        assert_eq!(quality.status, QualityStatus::Done);
        assert_eq!(quality.call_type, QualityCallType::Audio);
        assert_eq!(quality.staff_id.as_deref(), Some("1679888582905592626"));
        assert_eq!(quality.staff_name.as_deref(), Some("xieyiling"));
        assert_eq!(quality.file_name.as_deref(), Some("1111"));
        assert_eq!(quality.call_time, Some(utc("2021-10-27T07:14:14Z")));
        assert_eq!(quality.upload_time, Some(utc("2021-10-27T07:14:14Z")));
        assert_eq!(quality.duration_ms, Some(104_120));
        assert_eq!(quality.violation_count, None);
        assert_eq!(quality.deal, None);
        assert_eq!(
            quality.extra.get("create_time"),
            Some(&json!(1_635_318_854))
        );
        assert_eq!(
            quality.extra.len(),
            1,
            "only create_time is unmodelled: {:?}",
            quality.extra
        );
    }

    #[test]
    fn reads_both_sides_of_the_qc_sample() {
        let batch = parse_qc(QC, &context()).expect("parses");
        let quality = &batch.quality[0];
        let left = SideMetrics {
            speaker: Speaker::Customer,
            channel: Some("left".to_owned()),
            speech_ratio: Some(0.6081),
            speaking_rate_cpm: Some(324.068),
            silence_time_ms: Some(40_800),
            emotions: vec![
                Emotion {
                    polarity: EmotionPolarity::Negative,
                    score: 65.0,
                },
                Emotion {
                    polarity: EmotionPolarity::Positive,
                    score: 80.0,
                },
            ],
            ..SideMetrics::default()
        };
        let right = SideMetrics {
            speaker: Speaker::Agent,
            channel: Some("right".to_owned()),
            speech_ratio: Some(0.185),
            speaking_rate_cpm: Some(230.53),
            silence_time_ms: Some(84_860),
            emotions: vec![
                Emotion {
                    polarity: EmotionPolarity::Negative,
                    score: 32.0,
                },
                Emotion {
                    polarity: EmotionPolarity::Positive,
                    score: 69.0,
                },
            ],
            ..SideMetrics::default()
        };
        assert_eq!(quality.sides, vec![left, right]);
    }

    #[test]
    fn reads_the_segments_of_the_qc_sample() {
        let batch = parse_qc(QC, &context()).expect("parses");
        let segments = &batch.quality[0].segments;
        assert_eq!(segments.len(), 4);
        assert_eq!(
            segments[0],
            Segment {
                segment_id: 1,
                speaker: Speaker::Customer,
                text: "请问是您想询价吗".to_owned(),
                start_offset_ms: 0,
                end_offset_ms: 11_320,
            }
        );
        assert_eq!(
            segments[1],
            Segment {
                segment_id: 2,
                speaker: Speaker::Agent,
                text: "对".to_owned(),
                start_offset_ms: 13_360,
                end_offset_ms: 13_880,
            }
        );
        assert_eq!(segments[2].start_offset_ms, 14_560);
        assert_eq!(segments[2].end_offset_ms, 16_740);
        assert_eq!(segments[3].segment_id, 4);
        assert_eq!(segments[3].text, "是的");
        assert_eq!(segments[3].end_offset_ms, 19_680);
    }

    #[test]
    fn reads_the_remaining_qc_fields() {
        let mut sample = qc_sample();
        if let Some(object) = sample.as_object_mut() {
            object.insert("rule_severity_violation_count".to_owned(), json!(3));
            object.insert("deal".to_owned(), json!(1));
            object.insert("call_type".to_owned(), json!(1));
        }
        let batch = qc(sample).expect("parses");
        let quality = &batch.quality[0];
        assert_eq!(quality.violation_count, Some(3));
        assert_eq!(quality.deal, Some(true));
        assert_eq!(quality.call_type, QualityCallType::Text);
    }

    #[test]
    fn maps_every_qc_status() {
        let table = [
            (0, QualityStatus::Waiting),
            (1, QualityStatus::Processing),
            (2, QualityStatus::Done),
            (3, QualityStatus::Transcribing),
            (9, QualityStatus::Failed),
            (31, QualityStatus::AsrEmpty),
            (32, QualityStatus::SpeechToTextFailed),
            (33, QualityStatus::AsrUploadFailed),
            (34, QualityStatus::AsrSubmitFailed),
            (35, QualityStatus::MultimediaQcFailed),
            (36, QualityStatus::TucQcFailed),
            (37, QualityStatus::AsrConversionFailed),
            (38, QualityStatus::SaveFailed),
            (39, QualityStatus::QcJobFailed),
            (40, QualityStatus::InvalidAudio),
        ];
        for (code, status) in table {
            let batch = qc(json!({"call_id": "c", "status": code})).expect("parses");
            assert_eq!(batch.quality[0].status, status, "status {code}");
            assert!(batch.quality[0].extra.is_empty());
        }
        let text = qc(json!({"call_id": "c", "status": "31"})).expect("parses");
        assert_eq!(text.quality[0].status, QualityStatus::AsrEmpty);
    }

    #[test]
    fn keeps_unknown_codes_in_extra() {
        let batch =
            qc(json!({"call_id": "c", "status": "7", "call_type": 5, "left_channel": "robot"}))
                .expect("parses");
        let quality = &batch.quality[0];
        assert_eq!(quality.status, QualityStatus::Unspecified);
        assert_eq!(quality.extra.get("status"), Some(&json!("7")));
        assert_eq!(quality.call_type, QualityCallType::Unspecified);
        assert_eq!(quality.extra.get("call_type"), Some(&json!(5)));
        assert_eq!(quality.sides.len(), 1);
        assert_eq!(quality.sides[0].speaker, Speaker::Unspecified);
        assert_eq!(quality.extra.get("left_channel"), Some(&json!("robot")));
    }

    #[test]
    fn a_minimal_qc_result_has_no_sides_or_segments() {
        let batch = qc(json!({"call_id": 12345, "status": 9})).expect("parses");
        let quality = &batch.quality[0];
        assert_eq!(quality.call.id, "12345");
        assert_eq!(quality.status, QualityStatus::Failed);
        assert_eq!(quality.call_type, QualityCallType::Unspecified);
        assert!(quality.sides.is_empty());
        assert!(quality.segments.is_empty());
        assert!(quality.extra.is_empty());
    }

    #[test]
    fn falls_back_to_call_uuid_and_keeps_it_otherwise() {
        let fallback = qc(json!({"call_uuid": "434l2j4242424jjl242"})).expect("parses");
        assert_eq!(fallback.quality[0].call.id, "434l2j4242424jjl242");
        assert!(fallback.quality[0].extra.is_empty());

        let both = qc(json!({"call_id": "a", "call_uuid": "b"})).expect("parses");
        assert_eq!(both.quality[0].call.id, "a");
        assert_eq!(both.quality[0].extra.get("call_uuid"), Some(&json!("b")));
    }

    #[test]
    fn keeps_segment_and_emotion_lists_as_sent_when_they_hold_more_than_the_model() {
        let segments = json!([
            {"segment_id": 1, "speaker": "customer", "asr_text": "喂", "start_time": 0.5, "end_time": 1.25, "status": 2}
        ]);
        let emotions = json!([{"type": "calm", "score": 10}]);
        let batch = qc(json!({"call_id": "c", "segments": segments, "right_emotions": emotions}))
            .expect("parses");
        let quality = &batch.quality[0];
        assert_eq!(quality.segments[0].start_offset_ms, 500);
        assert_eq!(quality.segments[0].end_offset_ms, 1_250);
        assert_eq!(quality.extra.get("segments"), Some(&segments));
        assert_eq!(quality.sides.len(), 1);
        assert_eq!(quality.sides[0].channel.as_deref(), Some("right"));
        assert_eq!(quality.sides[0].speaker, Speaker::Unspecified);
        assert_eq!(
            quality.sides[0].emotions[0].polarity,
            EmotionPolarity::Unspecified
        );
        assert_eq!(quality.extra.get("right_emotions"), Some(&emotions));
    }

    #[test]
    fn accepts_a_list_of_qc_results() {
        let batch = qc(json!([qc_sample(), {"call_id": "other", "status": 0}])).expect("parses");
        assert_eq!(batch.quality.len(), 2);
        assert_eq!(batch.quality[1].call.id, "other");
        assert_eq!(batch.quality[1].status, QualityStatus::Waiting);
        let error = qc(json!([qc_sample(), {"status": 0}])).expect_err("no call id");
        assert_eq!(error.path, "$[1].call_id");
    }

    #[test]
    fn rejects_malformed_qc_results_with_their_path() {
        let invalid = parse_qc(b"{\"call_id\":", &context()).expect_err("not JSON");
        assert_eq!((invalid.format, invalid.path.as_str()), ("huawei_qc", "$"));

        let mut sample = qc_sample();
        if let Some(object) = sample.as_object_mut() {
            object.remove("call_id");
        }
        let missing = qc(sample).expect_err("no call id");
        assert_eq!(
            (missing.format, missing.path.as_str()),
            ("huawei_qc", "$.call_id")
        );

        let cases = [
            (
                json!({"call_id": "c", "left_speed": "fast"}),
                "$.left_speed",
            ),
            (json!({"call_id": "c", "status": "done"}), "$.status"),
            (
                json!({"call_id": "c", "call_time": "yesterday"}),
                "$.call_time",
            ),
            (json!({"call_id": "c", "deal": 2}), "$.deal"),
            (
                json!({"call_id": "c", "segments": {"segment_id": 1}}),
                "$.segments",
            ),
            (
                json!({"call_id": "c", "segments": [{"start_time": 0, "end_time": 1}]}),
                "$.segments[0].segment_id",
            ),
            (
                json!({"call_id": "c", "segments": [{"segment_id": 1, "end_time": 1}]}),
                "$.segments[0].start_time",
            ),
            (json!({"call_id": "c", "segments": ["x"]}), "$.segments[0]"),
            (
                json!({"call_id": "c", "left_emotions": [{"type": "positive"}]}),
                "$.left_emotions[0].score",
            ),
            (json!({"call_id": ["c"]}), "$.call_id"),
            (json!("c"), "$"),
        ];
        for (payload, path) in cases {
            let error = qc(payload.clone()).expect_err("malformed");
            assert_eq!(error.path, path, "{payload}");
            assert_eq!(error.format, "huawei_qc");
        }
    }
}
