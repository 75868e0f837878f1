//! The hangup push (挂机后流水推送): one JSON document per finished call, sent about a minute
//! after hangup and possibly several times. It yields one call and, when the payload names one,
//! the call's task.
//!
//! The dialogue (`talk_info`) comes either as a list of objects or as delimited text; both give
//! the same turns.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::domain::SourceKey;
use crate::domain::call::{Call, Classification, Customer, Transfer, Turn};
use crate::domain::task::Task;
use crate::ingest::Batch;
use crate::ingest::formats::fields::{Fields, kind, parse_json, parse_local_time};
use crate::ingest::formats::{FormatError, ParseContext};
use crate::proto::{
    CallMode, CallOutcome, CallState, Gender, HangupSide, JumpType, NodeType, NumberCheckStatus,
    Satisfaction, SourceFormat, Speaker, TransferState, TransferTarget,
};

const FORMAT: &str = "hangup_push";

/// What customer lines carry in the robot-only keys of the list form.
const LISTEN_PLACEHOLDER: &str = "listen";

/// Separators of the text form of `talk_info`.
const UTTERANCE_SEPARATOR: &str = "##";
const ROBOT_SEPARATOR: &str = "#!";
const CUSTOMER_SEPARATOR: &str = "#@";

/// Parses one hangup push into its call and task.
///
/// # Errors
///
/// A [`FormatError`] naming the JSON path when the payload is not JSON, lacks `uuid`, `phone` or
/// every dial time, or holds a value of the wrong shape (e.g. a malformed `talk_info` utterance).
pub fn parse(payload: &[u8], context: &ParseContext) -> Result<Batch, FormatError> {
    let value = parse_json(FORMAT, payload)?;
    let mut fields = Fields::new(FORMAT, "$", value, context)?;

    let uuid = fields.required_string("uuid")?;
    let key = source_key(&fields, "uuid", &uuid)?;
    let callee = fields.required_string("phone")?.trim().to_owned();
    let times = CallTimes::read(&mut fields)?;

    let mut call = Call::new(SourceFormat::HangupPush, key, callee, times.dial);
    call.state = CallState::Completed;
    call.source_record_id = fields.string("id")?;
    times.apply(&mut call);

    let task = read_task(&mut fields, &mut call)?;
    read_parties(&mut fields, &mut call)?;
    read_result(&mut fields, &mut call)?;
    read_assessment(&mut fields, &mut call)?;
    read_codes(&mut fields, &mut call)?;
    call.transfer = read_transfer(&mut fields)?;
    call.custom_fields = read_custom_fields(&mut fields);

    let clock = TurnClock::new(
        call.answer_time.unwrap_or(call.dial_time),
        context.time_zone,
    );
    call.turns = read_turns(&mut fields, &clock)?;
    call.extra = fields.rest();

    Ok(Batch {
        calls: vec![call],
        tasks: task.into_iter().collect(),
        ..Batch::default()
    })
}

/// Builds an idempotency key from a payload id, blaming the key the id came from.
fn source_key(fields: &Fields<'_>, key: &str, id: &str) -> Result<SourceKey, FormatError> {
    let system = &fields.context().source_system;
    SourceKey::parse(system, id).map_err(|(part, message)| match part {
        "source_system" => FormatError {
            format: FORMAT,
            path: "$".to_owned(),
            message: format!("source system {system:?} {message}"),
        },
        _ => fields.error(key, message),
    })
}

/// The call's timestamps, read together because the dial time falls back on the others.
struct CallTimes {
    dial: DateTime<Utc>,
    answer: Option<DateTime<Utc>>,
    hangup: Option<DateTime<Utc>>,
    created: Option<DateTime<Utc>>,
    updated: Option<DateTime<Utc>>,
}

impl CallTimes {
    fn read(fields: &mut Fields<'_>) -> Result<Self, FormatError> {
        let started = fields.local_time("started_at")?;
        let answer = fields.local_time("connected_at")?;
        let hangup = fields.local_time("disconnected_at")?;
        let created = fields.local_time("created_at")?;
        let updated = fields.local_time("updated_at")?;
        let dial = started.or(answer).or(created).ok_or_else(|| {
            fields.error(
                "started_at",
                "is required (or, failing it, connected_at or created_at)",
            )
        })?;
        Ok(Self {
            dial,
            answer,
            hangup,
            created,
            updated,
        })
    }

    fn apply(&self, call: &mut Call) {
        call.answer_time = self.answer;
        call.hangup_time = self.hangup;
        call.source_create_time = self.created;
        call.source_update_time = self.updated;
    }
}

/// The task named by the payload; its id also becomes the call's `source_task_id`.
fn read_task(fields: &mut Fields<'_>, call: &mut Call) -> Result<Option<Task>, FormatError> {
    let main = fields.string("dial_task_main_sn")?;
    let cdr = fields.string("cdr_sn")?;
    let (id, id_key) = match (main, cdr) {
        (Some(main), Some(cdr)) => {
            // Both normally hold the same id; a differing `cdr_sn` is information to keep.
            if cdr.trim() != main.trim() {
                fields.keep("cdr_sn", Value::String(cdr));
            }
            (main, "dial_task_main_sn")
        }
        (Some(main), None) => (main, "dial_task_main_sn"),
        (None, Some(cdr)) => (cdr, "cdr_sn"),
        // Without a task, its name and project stay in the call's extra.
        (None, None) => return Ok(None),
    };
    let key = source_key(fields, id_key, &id)?;
    call.source_task_id = Some(key.id.clone());
    let mut task = Task::new(SourceFormat::HangupPush, key);
    task.name = fields.string("source")?;
    task.project_id = fields.string("project_sn")?;
    task.project_name = fields.string("project_caption")?;
    Ok(Some(task))
}

/// Caller, callee's region and the customer's details.
fn read_parties(fields: &mut Fields<'_>, call: &mut Call) -> Result<(), FormatError> {
    call.caller = fields.string("caller")?;
    call.callee_region.text = fields.string("area_code")?;
    let customer = Customer {
        name: fields.string("name")?,
        address: fields.string("address")?,
        company: fields.string("unit")?,
        company_phone: fields.string("unit_phone")?,
    };
    call.customer = (customer != Customer::default()).then_some(customer);
    Ok(())
}

/// How the call went and ended.
fn read_result(fields: &mut Fields<'_>, call: &mut Call) -> Result<(), FormatError> {
    let talk_seconds = fields.i64("talktimes")?;
    call.talk_duration_ms = talk_seconds
        .map(|seconds| {
            seconds
                .checked_mul(1000)
                .ok_or_else(|| fields.error("talktimes", format!("{seconds} is out of range")))
        })
        .transpose()?;
    // No answer code is pushed; only a connected call with talk time is known to be answered.
    if call.answer_time.is_some() && talk_seconds.is_some_and(|seconds| seconds > 0) {
        call.outcome = CallOutcome::Answered;
    }
    call.billed_minutes = fields.i32("charging_minute")?;
    call.end_reason = fields.string("endreason")?;
    call.hangup_side = call
        .end_reason
        .as_deref()
        .map_or(HangupSide::Unspecified, hangup_side);
    call.sip_code = fields.string("sip_error_code")?;
    call.record_path = fields.string("recordpath")?;
    call.record_file = fields.string("recordfile")?;
    Ok(())
}

/// Who hung up, from the end reason's wording (e.g. 对方挂机, "the other side hung up").
/// Reasons that do not speak of hanging up (挂) say nothing about the side.
fn hangup_side(reason: &str) -> HangupSide {
    let reason = reason.to_lowercase();
    if !reason.contains('挂') {
        return HangupSide::Unspecified;
    }
    let says = |words: &[&str]| words.iter().any(|word| reason.contains(word));
    if says(&["对方", "客户", "用户"]) {
        HangupSide::Customer
    } else if says(&["机器人", "ai"]) {
        HangupSide::Robot
    } else if says(&["坐席", "人工"]) {
        HangupSide::Agent
    } else if says(&["系统", "平台"]) {
        HangupSide::System
    } else {
        HangupSide::Unspecified
    }
}

/// Score, counters, classification and labels.
fn read_assessment(fields: &mut Fields<'_>, call: &mut Call) -> Result<(), FormatError> {
    call.score = fields.i64("score")?;
    call.call_count = fields.i32("call_count")?;
    call.asks_count = fields.i32("asks_count")?;
    call.last_reply = fields.string("last_reply")?;
    call.end_node = fields.string("hangup_serial_number")?;
    call.first_connected = fields.bool("is_first_connected")?;
    call.labels = split_labels(fields.string("labelling")?.as_deref());
    call.dynamic_labels = split_labels(fields.string("dynamic_labelling")?.as_deref());
    let classification = Classification {
        intent_class: fields.string("status")?,
        manual_class: fields.string("status_manual")?,
        sub_class: fields.string("status_sub")?,
        classify: fields.string("classify")?,
        mark: fields.string("mark")?,
    };
    call.classification = (classification != Classification::default()).then_some(classification);
    Ok(())
}

/// Labels joined by `;`, with empty entries (the vendor writes leading and trailing `;`) dropped.
fn split_labels(text: Option<&str>) -> Vec<String> {
    text.iter()
        .flat_map(|text| text.split(';'))
        .map(str::trim)
        .filter(|label| !label.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The call-level code tables.
fn read_codes(fields: &mut Fields<'_>, call: &mut Call) -> Result<(), FormatError> {
    // The raw mode code is modelled (`call_mode_code`), so an unknown one needs no copy in extra.
    if let Some(code) = read_code(fields, "call_from_type")? {
        call.call_mode = call_mode(code.value).unwrap_or_default();
        call.call_mode_code = Some(code_i32(fields, "call_from_type", code.value)?);
    }
    call.gender = mapped_code(fields, "rec_sex", gender)?.unwrap_or_default();
    call.satisfaction =
        mapped_code(fields, "degree_of_satisfaction", satisfaction)?.unwrap_or_default();
    call.number_check_status =
        mapped_code(fields, "number_status", number_check_status)?.unwrap_or_default();
    Ok(())
}

fn call_mode(code: i64) -> Option<CallMode> {
    match code {
        0 => Some(CallMode::AutoOutbound),
        1 => Some(CallMode::Inbound),
        2 => Some(CallMode::ManualOutbound),
        3 => Some(CallMode::VoiceTest),
        4..=7 => Some(CallMode::AgentAssisted),
        _ => None,
    }
}

/// `rec_sex` codes (0 unknown, 1 male, 2 female), unlike the task API's gender codes.
fn gender(code: i64) -> Option<Gender> {
    match code {
        0 => Some(Gender::Unknown),
        1 => Some(Gender::Male),
        2 => Some(Gender::Female),
        _ => None,
    }
}

fn satisfaction(code: i64) -> Option<Satisfaction> {
    match code {
        0 => Some(Satisfaction::NotRated),
        1 => Some(Satisfaction::Satisfied),
        2 => Some(Satisfaction::Neutral),
        3 => Some(Satisfaction::Unsatisfied),
        4 => Some(Satisfaction::VerySatisfied),
        5 => Some(Satisfaction::VeryUnsatisfied),
        _ => None,
    }
}

fn number_check_status(code: i64) -> Option<NumberCheckStatus> {
    match code {
        0 => Some(NumberCheckStatus::Vacant),
        1 => Some(NumberCheckStatus::Real),
        2 => Some(NumberCheckStatus::Suspended),
        3 => Some(NumberCheckStatus::NotInDatabase),
        4 => Some(NumberCheckStatus::Silent),
        5 => Some(NumberCheckStatus::Risky),
        100 => Some(NumberCheckStatus::NotChecked),
        101 => Some(NumberCheckStatus::LandlineFiltered),
        _ => None,
    }
}

fn transfer_state(code: i64) -> Option<TransferState> {
    match code {
        0 => Some(TransferState::NotTransferred),
        1 => Some(TransferState::NotAnswered),
        2 => Some(TransferState::Answered),
        _ => None,
    }
}

/// The transfer to a human; absent only when the payload says nothing about one.
fn read_transfer(fields: &mut Fields<'_>) -> Result<Option<Transfer>, FormatError> {
    let state = mapped_code(fields, "is_transfertoagent", transfer_state)?;
    let target = read_code(fields, "transfer_type")?;
    let agent_id = fields.string("agent_sn")?;
    let agent_name = fields.string("agent_name")?;
    if state.is_none() && target.is_none() && agent_id.is_none() && agent_name.is_none() {
        return Ok(None);
    }
    let (target, target_code) = match target.map(|code| code.value) {
        None => (TransferTarget::Unspecified, None),
        Some(0) => (TransferTarget::AgentSeat, None),
        Some(1) => (TransferTarget::Mobile, None),
        Some(other) => (
            TransferTarget::Other,
            Some(code_i32(fields, "transfer_type", other)?),
        ),
    };
    Ok(Some(Transfer {
        state: state.unwrap_or_default(),
        target,
        agent_id,
        agent_name,
        target_code,
        ..Transfer::default()
    }))
}

/// `data1`..`data30` and `ext1`..`ext5`: the filled ones become custom fields; empty ones stay
/// in extra as they were.
fn read_custom_fields(fields: &mut Fields<'_>) -> BTreeMap<String, String> {
    (1..=30)
        .map(|number| format!("data{number}"))
        .chain((1..=5).map(|number| format!("ext{number}")))
        .filter_map(|key| take_custom_field(fields, &key).map(|value| (key, value)))
        .collect()
}

fn take_custom_field(fields: &mut Fields<'_>, key: &str) -> Option<String> {
    if !fields.has(key) {
        return None;
    }
    let value = fields.take(key).unwrap_or(Value::Null);
    let text = match &value {
        Value::String(text) if !text.trim().is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    if text.is_none() {
        fields.keep(key, value);
    }
    text
}

/// An integer code together with the value it was read from.
struct Code {
    value: i64,
    raw: Value,
}

/// Reads an integer code, keeping its raw value so that a caller can put an unknown one back.
fn read_code(fields: &mut Fields<'_>, key: &str) -> Result<Option<Code>, FormatError> {
    let Some(raw) = fields.take(key) else {
        return Ok(None);
    };
    fields.keep(key, raw.clone());
    Ok(fields.i64(key)?.map(|value| Code { value, raw }))
}

/// A code through its table; an unknown code reads as the unspecified variant and stays in
/// extra, so a newer vendor code is stored rather than rejected.
fn mapped_code<T: Default>(
    fields: &mut Fields<'_>,
    key: &str,
    table: fn(i64) -> Option<T>,
) -> Result<Option<T>, FormatError> {
    let Some(code) = read_code(fields, key)? else {
        return Ok(None);
    };
    Ok(Some(table(code.value).unwrap_or_else(|| {
        fields.keep(key, code.raw);
        T::default()
    })))
}

/// A text code through its table, with the same rule for unknown codes as [`mapped_code`].
fn mapped_text<T: Default>(
    fields: &mut Fields<'_>,
    key: &str,
    table: fn(&str) -> Option<T>,
) -> Result<T, FormatError> {
    let Some(raw) = fields.take(key) else {
        return Ok(T::default());
    };
    fields.keep(key, raw.clone());
    let Some(text) = fields.string(key)? else {
        return Ok(T::default());
    };
    Ok(table(text.trim()).unwrap_or_else(|| {
        fields.keep(key, raw);
        T::default()
    }))
}

fn code_i32(fields: &Fields<'_>, key: &str, value: i64) -> Result<i32, FormatError> {
    i32::try_from(value).map_err(|_| fields.error(key, format!("{value} is out of range")))
}

/// Turn times are times of day; this places them on the call's local day.
struct TurnClock {
    zone: Tz,
    day: NaiveDate,
    /// When the dialogue started (answer, else dial time).
    start: DateTime<Utc>,
}

impl TurnClock {
    fn new(start: DateTime<Utc>, zone: Tz) -> Self {
        Self {
            zone,
            day: start.with_timezone(&zone).date_naive(),
            start,
        }
    }

    /// A dialogue that runs past local midnight writes times of day smaller than its start;
    /// those belong to the next day. No call lasts twelve hours, so the threshold is safe.
    fn settle(&self, time: DateTime<Utc>) -> DateTime<Utc> {
        let long_before_start = time
            .checked_add_signed(TimeDelta::hours(12))
            .is_some_and(|later| later < self.start);
        if long_before_start {
            time.checked_add_signed(TimeDelta::days(1)).unwrap_or(time)
        } else {
            time
        }
    }

    /// `HH:MM:SS` on the call's day, or a full local date-time.
    fn parse(&self, text: &str, context: &ParseContext) -> Option<DateTime<Utc>> {
        let text = text.trim();
        match NaiveTime::parse_from_str(text, "%H:%M:%S") {
            Ok(time) => self
                .zone
                .from_local_datetime(&self.day.and_time(time))
                .earliest()
                .map(|local| self.settle(local.with_timezone(&Utc))),
            Err(_) => parse_local_time(text, context),
        }
    }
}

/// The dialogue, from either form of `talk_info`.
fn read_turns(fields: &mut Fields<'_>, clock: &TurnClock) -> Result<Vec<Turn>, FormatError> {
    let Some(raw) = fields.take("talk_info") else {
        return Ok(Vec::new());
    };
    match raw {
        Value::Array(_) => {
            fields.keep("talk_info", raw);
            list_turns(fields, clock)
        }
        Value::String(text) => match embedded_list(&text) {
            // Some senders put the list form into the text column as JSON.
            Some(list) => {
                fields.keep("talk_info", list);
                list_turns(fields, clock)
            }
            None => text_turns(&text, &fields.path_of("talk_info"), clock, fields.context()),
        },
        other => {
            let message = format!(
                "expected a list of turns or delimited text, found {}",
                kind(&other)
            );
            fields.keep("talk_info", other);
            Err(fields.error("talk_info", message))
        }
    }
}

fn embedded_list(text: &str) -> Option<Value> {
    if !text.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(Value::is_array)
}

/// The list form: one object per utterance, in dialogue order.
fn list_turns(fields: &mut Fields<'_>, clock: &TurnClock) -> Result<Vec<Turn>, FormatError> {
    let context = fields.context();
    fields
        .array("talk_info")?
        .into_iter()
        .enumerate()
        .map(|(index, (path, item))| {
            let sequence = sequence_number(index, &path)?;
            let item = Fields::new(FORMAT, path, item, context)?;
            list_turn(item, sequence, clock)
        })
        .collect()
}

fn sequence_number(index: usize, path: &str) -> Result<i32, FormatError> {
    index
        .checked_add(1)
        .and_then(|number| i32::try_from(number).ok())
        .ok_or_else(|| FormatError {
            format: FORMAT,
            path: path.to_owned(),
            message: "too many turns".to_owned(),
        })
}

fn list_turn(
    mut fields: Fields<'_>,
    sequence: i32,
    clock: &TurnClock,
) -> Result<Turn, FormatError> {
    let mut turn = Turn {
        sequence,
        ..Turn::default()
    };
    // An unknown `is_answer` leaves the speaker unspecified and its keys in extra: the turn is
    // stored rather than the whole call rejected.
    match read_code(&mut fields, "is_answer")? {
        Some(Code { value: 0, .. }) => read_robot_line(&mut fields, &mut turn)?,
        Some(Code { value: 1, .. }) => read_customer_line(&mut fields, &mut turn)?,
        Some(Code { raw, .. }) => fields.keep("is_answer", raw),
        None => {}
    }
    read_turn_common(&mut fields, &mut turn, clock)?;
    turn.extra = fields.rest();
    Ok(turn)
}

fn read_robot_line(fields: &mut Fields<'_>, turn: &mut Turn) -> Result<(), FormatError> {
    turn.speaker = Speaker::Robot;
    turn.text = fields.string("caption")?.unwrap_or_default();
    turn.audio_file = fields.string("vocfile")?;
    turn.node_name = fields.string("title")?;
    turn.node_id = fields.string("process_code")?;
    drop_if(fields, "answer", is_blank);
    drop_if(fields, "fenduanluyin", is_blank);
    Ok(())
}

fn read_customer_line(fields: &mut Fields<'_>, turn: &mut Turn) -> Result<(), FormatError> {
    turn.speaker = Speaker::Customer;
    turn.text = fields.string("answer")?.unwrap_or_default();
    turn.audio_file = fields.string("fenduanluyin")?;
    for key in ["caption", "vocfile", "title"] {
        drop_if(fields, key, is_listen_placeholder);
    }
    Ok(())
}

/// Takes a key only when its value carries nothing, so anything else stays in extra.
fn drop_if(fields: &mut Fields<'_>, key: &str, carries_nothing: fn(&Value) -> bool) {
    if let Some(value) = fields.take(key)
        && !carries_nothing(&value)
    {
        fields.keep(key, value);
    }
}

fn is_blank(value: &Value) -> bool {
    value.as_str().is_some_and(|text| text.trim().is_empty())
}

fn is_listen_placeholder(value: &Value) -> bool {
    value.as_str() == Some(LISTEN_PLACEHOLDER)
}

fn read_turn_common(
    fields: &mut Fields<'_>,
    turn: &mut Turn,
    clock: &TurnClock,
) -> Result<(), FormatError> {
    turn.node_type = mapped_text(fields, "trigger_process_type", node_type)?;
    turn.trigger_title = fields.string("trigger_process_title")?;
    turn.matched_keyword = fields.string("trigger_word")?;
    turn.jump_type = mapped_text(fields, "trigger_jump_type", jump_type)?;
    turn.match_type = fields.i32("match_type")?;
    turn.label = fields.string("labelling")?;
    turn.score_delta = fields.i64("score")?;
    turn.time = fields
        .time_on("talk_datetime", clock.day)?
        .map(|time| clock.settle(time));
    turn.source_turn_id = fields.string("talk_info_sn")?;
    Ok(())
}

fn node_type(text: &str) -> Option<NodeType> {
    match text {
        "主干" => Some(NodeType::MainFlow),
        "业务问题" => Some(NodeType::BusinessQuestion),
        "转人工" => Some(NodeType::TransferToHuman),
        _ => None,
    }
}

fn jump_type(text: &str) -> Option<JumpType> {
    match text {
        "肯定" => Some(JumpType::Affirmative),
        "否定" => Some(JumpType::Negative),
        "中性" => Some(JumpType::Neutral),
        "接续" => Some(JumpType::Continue),
        _ => None,
    }
}

/// The text form: utterances separated by `##`; a robot utterance's parts by `#!`, a customer
/// utterance's by `#@`. Empty utterances (e.g. after a trailing `##`) are skipped.
fn text_turns(
    text: &str,
    path: &str,
    clock: &TurnClock,
    context: &ParseContext,
) -> Result<Vec<Turn>, FormatError> {
    let mut turns = Vec::new();
    for (index, utterance) in text.split(UTTERANCE_SEPARATOR).enumerate() {
        if utterance.trim().is_empty() {
            continue;
        }
        let utterance = Utterance {
            text: utterance,
            number: index.saturating_add(1),
            path,
            clock,
            context,
        };
        let sequence = sequence_number(turns.len(), path)?;
        turns.push(utterance.turn(sequence)?);
    }
    Ok(turns)
}

/// One `##`-separated utterance of the text form; `number` (from 1, empty pieces included)
/// names it in errors.
struct Utterance<'text> {
    text: &'text str,
    number: usize,
    path: &'text str,
    clock: &'text TurnClock,
    context: &'text ParseContext,
}

/// Parts of a robot utterance, in order.
const ROBOT_PARTS: [&str; 9] = [
    "voice_file",
    "title",
    "description",
    "process_code",
    "similarity",
    "talk_info_sn",
    "label",
    "context_sn",
    "time",
];

/// Parts of a customer utterance, in order. Without an answer only the first two are written.
const CUSTOMER_PARTS: [&str; 6] = [
    "words",
    "voice_file",
    "score",
    "label",
    "talk_info_sn",
    "time",
];

impl<'text> Utterance<'text> {
    fn turn(&self, sequence: i32) -> Result<Turn, FormatError> {
        let robot = self.text.contains(ROBOT_SEPARATOR);
        let customer = self.text.contains(CUSTOMER_SEPARATOR);
        match (robot, customer) {
            (true, false) => self.robot_turn(sequence),
            (false, true) => self.customer_turn(sequence),
            (true, true) => Err(self.error("mixes the robot (#!) and customer (#@) separators")),
            (false, false) => {
                Err(self.error("has neither the robot (#!) nor the customer (#@) separator"))
            }
        }
    }

    fn robot_turn(&self, sequence: i32) -> Result<Turn, FormatError> {
        let parts = self.parts(ROBOT_SEPARATOR, &ROBOT_PARTS)?;
        let mut turn = Turn {
            sequence,
            speaker: Speaker::Robot,
            audio_file: parts.get("voice_file"),
            node_name: parts.get("title"),
            node_id: parts.get("process_code"),
            source_turn_id: parts.get("talk_info_sn"),
            label: parts.get("label"),
            time: self.time(parts.get("time"))?,
            ..Turn::default()
        };
        for (part, extra_key) in [
            ("description", "description"),
            ("similarity", "similarity"),
            ("context_sn", "context_sn"),
        ] {
            if let Some(value) = parts.get(part) {
                turn.extra
                    .insert(extra_key.to_owned(), Value::String(value));
            }
        }
        Ok(turn)
    }

    fn customer_turn(&self, sequence: i32) -> Result<Turn, FormatError> {
        let parts = self.parts(CUSTOMER_SEPARATOR, &CUSTOMER_PARTS)?;
        Ok(Turn {
            sequence,
            speaker: Speaker::Customer,
            text: parts.get("words").unwrap_or_default(),
            audio_file: parts.get("voice_file"),
            score_delta: self.score(parts.get("score"))?,
            label: parts.get("label"),
            source_turn_id: parts.get("talk_info_sn"),
            time: self.time(parts.get("time"))?,
            ..Turn::default()
        })
    }

    /// Splits the utterance; trailing parts may be missing (older senders and unanswered
    /// customer lines write fewer), but more parts than the layout has cannot be placed.
    fn parts(
        &self,
        separator: &str,
        names: &'static [&'static str],
    ) -> Result<Parts<'text>, FormatError> {
        let values: Vec<&str> = self.text.split(separator).collect();
        if values.len() > names.len() {
            return Err(self.error(format!(
                "has {} parts separated by {separator}, expected at most {}",
                values.len(),
                names.len()
            )));
        }
        Ok(Parts { names, values })
    }

    fn score(&self, text: Option<String>) -> Result<Option<i64>, FormatError> {
        text.map(|text| {
            text.parse::<i64>()
                .map_err(|_| self.error(format!("score {text:?} is not an integer")))
        })
        .transpose()
    }

    fn time(&self, text: Option<String>) -> Result<Option<DateTime<Utc>>, FormatError> {
        text.map(|text| {
            self.clock
                .parse(&text, self.context)
                .ok_or_else(|| self.error(format!("time {text:?} is not a time such as 10:19:21")))
        })
        .transpose()
    }

    fn error(&self, message: impl std::fmt::Display) -> FormatError {
        FormatError {
            format: FORMAT,
            path: self.path.to_owned(),
            message: format!("utterance {}: {message}", self.number),
        }
    }
}

/// The named parts of one utterance.
struct Parts<'text> {
    names: &'static [&'static str],
    values: Vec<&'text str>,
}

impl Parts<'_> {
    /// A part by name, trimmed; empty or missing is `None`.
    fn get(&self, name: &str) -> Option<String> {
        let position = self.names.iter().position(|candidate| *candidate == name)?;
        self.values
            .get(position)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::formats::DEFAULT_TIME_ZONE;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/hangup_push.json");

    fn context() -> ParseContext {
        ParseContext::new("hangup_push", DEFAULT_TIME_ZONE)
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn parse_value(value: &Value) -> Result<Batch, FormatError> {
        parse(
            &serde_json::to_vec(value).expect("serialisable"),
            &context(),
        )
    }

    fn only_call(batch: Batch) -> Call {
        assert_eq!(batch.calls.len(), 1);
        batch.calls.into_iter().next().expect("one call")
    }

    fn fixture_call() -> Call {
        only_call(parse(FIXTURE, &context()).expect("the fixture parses"))
    }

    /// A minimal push with the given `talk_info`.
    fn with_talk_info(talk_info: Value) -> Value {
        json!({
            "uuid": "call-1",
            "phone": "13800000000",
            "connected_at": "2025-04-14 10:19:21",
            "talktimes": 10,
            "talk_info": talk_info,
        })
    }

    fn text_turns_of(text: &str) -> Vec<Turn> {
        only_call(parse_value(&with_talk_info(json!(text))).expect("parses")).turns
    }

    #[test]
    fn fixture_identity_task_and_parties() {
        let batch = parse(FIXTURE, &context()).expect("the fixture parses");
        assert_eq!(batch.tasks.len(), 1);
        let task = &batch.tasks[0];
        assert_eq!(task.source_format, SourceFormat::HangupPush);
        assert_eq!(task.key.system, "hangup_push");
        assert_eq!(
            task.key.id,
            "dial_task_main_sn|1c41217cc6866d22bcb6cfe1aa5f4e47"
        );
        assert_eq!(task.name.as_deref(), Some("20250414101849"));
        assert_eq!(
            task.project_id.as_deref(),
            Some("projects|af4a802d7cb2972dea6aa47d11b7e0f9")
        );
        assert_eq!(task.project_name.as_deref(), Some("liuy-转人工测试新"));

        let call = only_call(batch);
        assert_eq!(call.source_format, SourceFormat::HangupPush);
        assert_eq!(call.key.system, "hangup_push");
        assert_eq!(call.key.id, "db57f262-18d6-11f0-88c8-2f2b0aba51d7");
        assert_eq!(call.state, CallState::Completed);
        assert_eq!(call.source_record_id.as_deref(), Some("1989"));
        assert_eq!(
            call.source_task_id.as_deref(),
            Some("dial_task_main_sn|1c41217cc6866d22bcb6cfe1aa5f4e47")
        );
        assert_eq!(call.callee, "15899770637");
        assert_eq!(call.caller.as_deref(), Some("900002"));
        assert_eq!(call.customer, None);
        assert_eq!(call.callee_region.text.as_deref(), Some("广东省深圳市"));
    }

    #[test]
    fn fixture_times_are_converted_from_shanghai_to_utc() {
        let call = fixture_call();
        assert_eq!(call.dial_time, utc("2025-04-14T02:19:13Z"));
        assert_eq!(call.answer_time, Some(utc("2025-04-14T02:19:21Z")));
        assert_eq!(call.hangup_time, Some(utc("2025-04-14T02:20:48Z")));
        assert_eq!(call.source_create_time, Some(utc("2025-04-14T02:20:50Z")));
        assert_eq!(call.source_update_time, Some(utc("2025-04-14T02:20:50Z")));
        assert_eq!(call.talk_duration_ms, Some(88_000));
        assert_eq!(call.duration_ms, None);
        assert_eq!(call.billed_minutes, Some(2));
    }

    #[test]
    fn fixture_result_assessment_and_codes() {
        let call = fixture_call();
        assert_eq!(call.outcome, CallOutcome::Answered);
        assert_eq!(call.end_reason.as_deref(), Some("对方挂机"));
        assert_eq!(call.hangup_side, HangupSide::Customer);
        assert_eq!(call.sip_code, None);
        assert_eq!(call.record_path.as_deref(), Some("/mnt/record"));
        assert!(
            call.record_file
                .as_deref()
                .is_some_and(|file| file.ends_with("db57f262-18d6-11f0-88c8-2f2b0aba51d7_0637.wav"))
        );
        assert_eq!(call.score, Some(80));
        assert_eq!(call.call_count, Some(1));
        assert_eq!(call.asks_count, Some(3));
        assert_eq!(call.last_reply.as_deref(), Some("转人工"));
        assert_eq!(call.end_node.as_deref(), Some("15转人工#3"));
        assert_eq!(call.first_connected, Some(true));
        assert_eq!(
            call.labels,
            [
                "有需求",
                "询问公司信息",
                "想知道公司实力",
                "贷款额度",
                "A转人工",
                "转人工时间:2025-04-14 10:20:17"
            ]
        );
        assert_eq!(call.dynamic_labels, ["20万"]);
        assert_eq!(
            call.classification,
            Some(Classification {
                intent_class: Some("B".to_owned()),
                classify: Some("-".to_owned()),
                ..Classification::default()
            })
        );
        assert_eq!(call.call_mode, CallMode::AutoOutbound);
        assert_eq!(call.call_mode_code, Some(0));
        assert_eq!(call.gender, Gender::Male);
        assert_eq!(call.satisfaction, Satisfaction::NotRated);
        assert_eq!(call.number_check_status, NumberCheckStatus::NotChecked);
    }

    #[test]
    fn fixture_transfer_and_custom_fields() {
        let call = fixture_call();
        let transfer = call.transfer.expect("a transfer");
        assert_eq!(transfer.state, TransferState::NotAnswered);
        assert_eq!(transfer.target, TransferTarget::Other);
        assert_eq!(transfer.target_code, Some(3));
        assert_eq!(transfer.agent_id, None);
        assert_eq!(transfer.agent_name, None);
        assert_eq!(
            call.custom_fields,
            BTreeMap::from([("ext1".to_owned(), "88".to_owned())])
        );
    }

    #[test]
    fn fixture_keeps_what_is_not_modelled_in_extra() {
        let extra = fixture_call().extra;
        for (key, value) in [
            ("user_sn", json!("SYSUSER|555c429205989f5dd5cfee599ccd87af")),
            ("sn", json!("account|4216aedbab119baf899c6533e444605b")),
            ("team_name", json!("人工智能客户组")),
            ("fs_push_screens", json!(2)),
            ("qc_status", json!("1")),
            (
                "base_info",
                json!("db57f262-18d6-11f0-88c8-2f2b0aba51d7out"),
            ),
            ("data1", json!("")),
            ("ext2", Value::Null),
            ("pushed_at", Value::Null),
            ("operator", json!("zzh")),
        ] {
            assert_eq!(extra.get(key), Some(&value), "extra key {key}");
        }
        for taken in [
            "uuid",
            "phone",
            "talk_info",
            "ext1",
            "cdr_sn",
            "dial_task_main_sn",
            "source",
            "labelling",
            "transfer_type",
            "number_status",
            "rec_sex",
            "connected_at",
        ] {
            assert!(!extra.contains_key(taken), "{taken} should be modelled");
        }
    }

    #[test]
    fn fixture_turns_alternate_robot_and_customer_in_order() {
        let turns = fixture_call().turns;
        assert_eq!(turns.len(), 17);
        for (index, turn) in turns.iter().enumerate() {
            assert_eq!(turn.sequence, i32::try_from(index + 1).expect("small"));
            let expected = if index % 2 == 0 {
                Speaker::Robot
            } else {
                Speaker::Customer
            };
            assert_eq!(turn.speaker, expected, "turn {index}");
        }
        let texts: Vec<&str> = turns.iter().map(|turn| turn.text.as_str()).collect();
        assert_eq!(texts[1], "可以啊");
        assert_eq!(texts[5], "什么公司啊");
        assert_eq!(texts[13], "嗯20万吧");
        assert_eq!(texts[16], "转人工");
        assert!(!texts.contains(&"listen"));
    }

    #[test]
    fn fixture_robot_turn() {
        let turns = fixture_call().turns;
        let first = &turns[0];
        assert_eq!(
            first.text,
            "您好,我这边是专业办理银行贷款的,请问您有资金需求吗?"
        );
        assert_eq!(first.node_name.as_deref(), Some("01打招呼+开场白"));
        assert_eq!(
            first.node_id.as_deref(),
            Some("questions20180709154413gKV5")
        );
        assert!(
            first
                .audio_file
                .as_deref()
                .is_some_and(|file| file.ends_with("question20180122145218iIV.wav"))
        );
        assert_eq!(first.node_type, NodeType::MainFlow);
        assert_eq!(first.trigger_title.as_deref(), Some("01打招呼+开场白"));
        assert_eq!(first.jump_type, JumpType::Unspecified);
        assert_eq!(first.time, Some(utc("2025-04-14T02:19:21Z")));
        assert_eq!(first.score_delta, None);
        assert_eq!(first.source_turn_id, None);
        assert_eq!(first.extra.get("recognition_status"), Some(&json!(0)));
        assert_eq!(first.extra.get("outType"), Some(&Value::Null));
        assert!(!first.extra.contains_key("answer"));
        assert!(!first.extra.contains_key("is_answer"));

        let last = &turns[16];
        assert_eq!(last.node_type, NodeType::TransferToHuman);
        assert_eq!(
            last.label.as_deref(),
            Some("A转人工;转人工时间:2025-04-14 10:20:17")
        );
        // A robot answer to a business question names no flow type.
        assert_eq!(turns[6].node_type, NodeType::Unspecified);
        assert_eq!(turns[6].label.as_deref(), Some("询问公司信息"));
    }

    #[test]
    fn fixture_customer_turns() {
        let turns = fixture_call().turns;
        let second = &turns[1];
        assert_eq!(second.speaker, Speaker::Customer);
        assert!(
            second
                .audio_file
                .as_deref()
                .is_some_and(|file| file.ends_with("_0637_2.wav"))
        );
        assert_eq!(second.node_id, None);
        assert_eq!(second.node_name, None);
        assert_eq!(second.jump_type, JumpType::Affirmative);
        assert_eq!(second.matched_keyword.as_deref(), Some("可以啊"));
        assert_eq!(second.match_type, Some(2));
        assert_eq!(second.score_delta, Some(20));
        assert_eq!(second.label.as_deref(), Some("有需求"));
        assert_eq!(
            second.source_turn_id.as_deref(),
            Some("talk_info_sn|988e884392f176735160f2ff63c5b1e3")
        );
        assert_eq!(second.time, Some(utc("2025-04-14T02:19:29Z")));
        assert_eq!(second.extra.get("recognition_status"), Some(&json!(0)));
        assert_eq!(second.extra.get("seating_info"), Some(&json!(false)));
        assert_eq!(
            second.extra.get("process_code"),
            Some(&json!("questions20180709154413XBm13"))
        );
        for placeholder in ["caption", "vocfile", "title"] {
            assert!(!second.extra.contains_key(placeholder), "{placeholder}");
        }

        assert_eq!(turns[3].jump_type, JumpType::Neutral);
        assert_eq!(turns[5].node_type, NodeType::BusinessQuestion);
        assert_eq!(turns[9].jump_type, JumpType::Continue);
        assert_eq!(
            turns[9].matched_keyword.as_deref(),
            Some("客户任意回答跳转")
        );
        assert_eq!(turns[15].time, Some(utc("2025-04-14T02:20:17Z")));
    }

    #[test]
    fn text_form_robot_utterance() {
        let turns = text_turns_of(
            "/a.wav#!01打招呼#!开场白描述#!questions1#!0.95#!sn-1#!有需求#!ctx-1#!10:19:21##",
        );
        assert_eq!(turns.len(), 1);
        let turn = &turns[0];
        assert_eq!(turn.sequence, 1);
        assert_eq!(turn.speaker, Speaker::Robot);
        assert_eq!(turn.audio_file.as_deref(), Some("/a.wav"));
        assert_eq!(turn.node_name.as_deref(), Some("01打招呼"));
        assert_eq!(turn.node_id.as_deref(), Some("questions1"));
        assert_eq!(turn.source_turn_id.as_deref(), Some("sn-1"));
        assert_eq!(turn.label.as_deref(), Some("有需求"));
        assert_eq!(turn.time, Some(utc("2025-04-14T02:19:21Z")));
        assert_eq!(turn.extra.get("description"), Some(&json!("开场白描述")));
        assert_eq!(turn.extra.get("similarity"), Some(&json!("0.95")));
        assert_eq!(turn.extra.get("context_sn"), Some(&json!("ctx-1")));
    }

    #[test]
    fn text_form_customer_line_cases() {
        let turns = text_turns_of(concat!(
            "/a.wav#!01打招呼#!#!q1#!#!#!#!#!10:19:21",
            "##可以啊#@/b.wav#@20#@有需求#@sn-2#@10:19:29",
            "##嗯嗯#@/c.wav#@0#@",
            "###@/d.wav",
            "##",
        ));
        assert_eq!(turns.len(), 4);
        assert_eq!(
            turns.iter().map(|turn| turn.sequence).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );

        let full = &turns[1];
        assert_eq!(full.speaker, Speaker::Customer);
        assert_eq!(full.text, "可以啊");
        assert_eq!(full.audio_file.as_deref(), Some("/b.wav"));
        assert_eq!(full.score_delta, Some(20));
        assert_eq!(full.label.as_deref(), Some("有需求"));
        assert_eq!(full.source_turn_id.as_deref(), Some("sn-2"));
        assert_eq!(full.time, Some(utc("2025-04-14T02:19:29Z")));

        let score_only = &turns[2];
        assert_eq!(score_only.text, "嗯嗯");
        assert_eq!(score_only.score_delta, Some(0));
        assert_eq!(score_only.label, None);
        assert_eq!(score_only.time, None);

        let no_answer = &turns[3];
        assert_eq!(no_answer.speaker, Speaker::Customer);
        assert_eq!(no_answer.text, "");
        assert_eq!(no_answer.audio_file.as_deref(), Some("/d.wav"));
        assert_eq!(no_answer.score_delta, None);
        assert_eq!(no_answer.source_turn_id, None);
    }

    #[test]
    fn text_form_rejects_malformed_utterances_by_number() {
        for (text, expected) in [
            (
                "/a.wav#!t##可以啊#@/b.wav#@abc",
                "utterance 2: score \"abc\"",
            ),
            ("可以啊#@/b.wav#@1#@l#@sn#@25:61:00", "utterance 1: time"),
            ("a#@b#@1#@l#@sn#@10:00:00#@x", "utterance 1: has 7 parts"),
            ("/a.wav#!t####hello", "utterance 3: has neither"),
            ("a#!b#@c", "utterance 1: mixes"),
        ] {
            let error = parse_value(&with_talk_info(json!(text))).expect_err(text);
            assert_eq!(error.path, "$.talk_info", "{text}");
            assert!(
                error.message.starts_with(expected),
                "{text}: {}",
                error.message
            );
        }
    }

    #[test]
    fn text_form_times_after_midnight_fall_on_the_next_day() {
        let mut push = with_talk_info(json!(
            "晚上好#!t#!#!#!#!#!#!#!23:59:58##好#@/b.wav#@0#@#@#@00:00:05"
        ));
        push["connected_at"] = json!("2025-04-14 23:59:50");
        let turns = only_call(parse_value(&push).expect("parses")).turns;
        assert_eq!(turns[0].time, Some(utc("2025-04-14T15:59:58Z")));
        assert_eq!(turns[1].time, Some(utc("2025-04-14T16:00:05Z")));
    }

    #[test]
    fn list_form_as_json_text_is_read_as_a_list() {
        let list = json!([{"is_answer": 1, "answer": "好", "caption": "listen"}]).to_string();
        let turns = only_call(parse_value(&with_talk_info(json!(list))).expect("parses")).turns;
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0].speaker, Speaker::Customer);
        assert_eq!(turns[0].text, "好");
    }

    #[test]
    fn unknown_codes_read_as_unspecified_and_stay_in_extra() {
        let mut push = with_talk_info(json!([{
            "is_answer": 7,
            "caption": "x",
            "trigger_process_type": "新类型",
            "trigger_jump_type": "肯定",
        }]));
        push["number_status"] = json!(42);
        push["rec_sex"] = json!("9");
        push["is_transfertoagent"] = json!(5);
        push["call_from_type"] = json!(9);
        push["endreason"] = json!("机器人挂机");
        let call = only_call(parse_value(&push).expect("parses"));
        assert_eq!(call.number_check_status, NumberCheckStatus::Unspecified);
        assert_eq!(call.extra.get("number_status"), Some(&json!(42)));
        assert_eq!(call.gender, Gender::Unspecified);
        assert_eq!(call.extra.get("rec_sex"), Some(&json!("9")));
        assert_eq!(call.call_mode, CallMode::Unspecified);
        assert_eq!(call.call_mode_code, Some(9));
        assert_eq!(call.hangup_side, HangupSide::Robot);
        let transfer = call.transfer.expect("a transfer");
        assert_eq!(transfer.state, TransferState::Unspecified);
        assert_eq!(call.extra.get("is_transfertoagent"), Some(&json!(5)));

        let turn = &call.turns[0];
        assert_eq!(turn.speaker, Speaker::Unspecified);
        assert_eq!(turn.extra.get("is_answer"), Some(&json!(7)));
        assert_eq!(turn.extra.get("caption"), Some(&json!("x")));
        assert_eq!(turn.node_type, NodeType::Unspecified);
        assert_eq!(
            turn.extra.get("trigger_process_type"),
            Some(&json!("新类型"))
        );
        assert_eq!(turn.jump_type, JumpType::Affirmative);
    }

    #[test]
    fn minimal_push_has_no_task_transfer_or_customer() {
        let mut push = with_talk_info(Value::Null);
        push["source"] = json!("任务名");
        push["name"] = json!("张三");
        let batch = parse_value(&push).expect("parses");
        assert!(batch.tasks.is_empty());
        let call = only_call(batch);
        assert_eq!(call.source_task_id, None);
        assert_eq!(call.transfer, None);
        assert!(call.turns.is_empty());
        assert_eq!(call.dial_time, utc("2025-04-14T02:19:21Z"));
        assert_eq!(
            call.customer,
            Some(Customer {
                name: Some("张三".to_owned()),
                ..Customer::default()
            })
        );
        // Without a task the task's name has nowhere to go but extra.
        assert_eq!(call.extra.get("source"), Some(&json!("任务名")));
    }

    #[test]
    fn differing_cdr_sn_is_kept_and_a_lone_one_names_the_task() {
        let mut push = with_talk_info(Value::Null);
        push["dial_task_main_sn"] = json!("task-a");
        push["cdr_sn"] = json!("task-b");
        let call = only_call(parse_value(&push).expect("parses"));
        assert_eq!(call.source_task_id.as_deref(), Some("task-a"));
        assert_eq!(call.extra.get("cdr_sn"), Some(&json!("task-b")));

        let mut push = with_talk_info(Value::Null);
        push["cdr_sn"] = json!("task-b");
        let batch = parse_value(&push).expect("parses");
        assert_eq!(batch.tasks[0].key.id, "task-b");
    }

    #[test]
    fn invalid_json_is_an_error_at_the_root() {
        let error = parse(b"{not json", &context()).expect_err("invalid");
        assert_eq!(error.format, "hangup_push");
        assert_eq!(error.path, "$");
        let error = parse(b"[]", &context()).expect_err("not an object");
        assert_eq!(error.path, "$");
    }

    #[test]
    fn required_keys_are_named_in_errors() {
        let mut push = with_talk_info(Value::Null);
        push.as_object_mut().expect("object").remove("uuid");
        assert_eq!(parse_value(&push).expect_err("no uuid").path, "$.uuid");

        let mut push = with_talk_info(Value::Null);
        push["uuid"] = json!("  ");
        assert_eq!(parse_value(&push).expect_err("empty uuid").path, "$.uuid");

        let mut push = with_talk_info(Value::Null);
        push["phone"] = json!("");
        assert_eq!(parse_value(&push).expect_err("no phone").path, "$.phone");

        let push = json!({"uuid": "call-1", "phone": "1"});
        let error = parse_value(&push).expect_err("no time");
        assert_eq!(error.path, "$.started_at");
    }

    #[test]
    fn talk_info_of_a_wrong_type_is_an_error() {
        for talk_info in [json!(5), json!({"a": 1}), json!(true)] {
            let error = parse_value(&with_talk_info(talk_info)).expect_err("wrong type");
            assert_eq!(error.path, "$.talk_info");
            assert!(error.to_string().contains("$.talk_info"));
        }
        let error = parse_value(&with_talk_info(json!(["x"]))).expect_err("item not an object");
        assert_eq!(error.path, "$.talk_info[0]");
        let error = parse_value(&with_talk_info(
            json!([{"is_answer": 0, "talk_datetime": "x"}]),
        ))
        .expect_err("bad time");
        assert_eq!(error.path, "$.talk_info[0].talk_datetime");
    }
}
