//! Edge conversion of native wire records (`CallRecord`) into validated domain calls.
//!
//! [`call_from_proto`] never stops at the first problem: it walks the whole record and reports
//! every field violation, each named by its proto field path under the caller's prefix
//! (`calls[3].turns[2].speaker`), so a client can fix a batch in one round trip.
//!
//! Output-only fields are ignored on input: `id`, `tenant_id`, `version`, `task_id`,
//! `turn_count`, `tag_group_ids`, `quality`, `task`, `create_time`, `update_time`, and the
//! server fields of an embedded `level` or `tags[]` (ids, tenant, format, groups, times, …).
//! Two server-id fields are rejected instead of ignored, because silently dropping them would
//! lose the client's intent: `level_id` without `level.source_level_id`, and any `tag_ids`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use prost_types::value::Kind;

use crate::domain::SourceKey;
use crate::domain::call::{
    AudioPiece, Call, Classification, Customer, HuaweiResult, LevelRef, Region, TagRef, Transfer,
    Turn,
};
use crate::error::FieldViolation;
use crate::proto;

/// Limits on what one call may carry.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// Most turns in one call's dialogue.
    pub max_turns: usize,
    /// Most characters (not bytes) in any one text field.
    pub max_text_chars: usize,
    /// Most tags on one call.
    pub max_tags: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_turns: 2000,
            max_text_chars: 10_000,
            max_tags: 200,
        }
    }
}

/// Most entries in `custom_fields`.
pub const MAX_CUSTOM_FIELDS: usize = 100;

/// Longest phone number accepted, in characters.
pub const MAX_PHONE_CHARS: usize = 32;

/// Source system of a native record that names none.
pub const DEFAULT_SOURCE_SYSTEM: &str = "native";

/// Seconds of 9999-12-31T23:59:59Z, the last second a timestamp may carry.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// Largest integer an `f64` holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

const PHONE_RULE: &str =
    "must be a phone number: digits, '+', '*', '#' or '-', at most 32 characters";
const TIMESTAMP_RULE: &str =
    "must be a valid timestamp between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z";

/// Converts one wire record; `path` prefixes every violation's field, e.g. "calls[3]".
pub fn call_from_proto(
    record: proto::CallRecord,
    path: &str,
    limits: &CallLimits,
) -> Result<Call, Vec<FieldViolation>> {
    let mut checker = Checker::new(limits);
    let at = |name: &str| join(path, name);

    // Identity. UNSPECIFIED means the native contract itself.
    let source_format = match proto::SourceFormat::try_from(record.source_format) {
        Ok(proto::SourceFormat::Unspecified) => proto::SourceFormat::Native,
        Ok(format) => format,
        Err(_) => {
            checker.undefined_enum(at("source_format"), record.source_format);
            proto::SourceFormat::Native
        }
    };
    let key = source_key(
        crate::ingest::formats::default_source_system_of(source_format),
        &mut checker,
        path,
        &record.source_system,
        &record.source_call_id,
    );
    let state = match proto::CallState::try_from(record.state) {
        Ok(proto::CallState::Unspecified) => proto::CallState::Completed,
        Ok(state) => state,
        Err(_) => {
            checker.undefined_enum(at("state"), record.state);
            proto::CallState::Completed
        }
    };

    let source_task_id = checker.text(at("source_task_id"), record.source_task_id);
    let source_record_id = checker.text(at("source_record_id"), record.source_record_id);
    let script_group_id = checker.text(at("script_group_id"), record.script_group_id);

    // The parties.
    let callee = checker.phone(at("callee"), &record.callee);
    if callee.is_none() && record.callee.trim().is_empty() {
        checker.violation(at("callee"), "is required");
    }
    let caller = checker.phone(at("caller"), &record.caller);
    let callee_region = region(
        &mut checker,
        &at("callee_region"),
        record.callee_region.unwrap_or_default(),
    );
    let customer = record
        .customer
        .and_then(|wire| customer(&mut checker, &at("customer"), wire));

    // Times and durations.
    let dial_time = match &record.dial_time {
        Some(value) => checker.time(at("dial_time"), Some(value)),
        None => {
            checker.violation(at("dial_time"), "is required");
            None
        }
    };
    let answer_time = checker.time(at("answer_time"), record.answer_time.as_ref());
    let hangup_time = checker.time(at("hangup_time"), record.hangup_time.as_ref());
    if let Some(dial) = dial_time {
        if answer_time.is_some_and(|answer| answer < dial) {
            checker.violation(at("answer_time"), "must not be before dial_time");
        }
        if hangup_time.is_some_and(|hangup| hangup < dial) {
            checker.violation(at("hangup_time"), "must not be before dial_time");
        }
    }
    let duration_ms = checker.non_negative(at("duration_ms"), record.duration_ms);
    let talk_duration_ms = checker.non_negative(at("talk_duration_ms"), record.talk_duration_ms);
    let billed_minutes = checker.non_negative(at("billed_minutes"), record.billed_minutes);

    // Outcome.
    let outcome = checker.enumeration(at("outcome"), record.outcome);
    let number_status = checker.enumeration(at("number_status"), record.number_status);
    let hangup_cause = checker.text(at("hangup_cause"), record.hangup_cause);
    let end_reason = checker.text(at("end_reason"), record.end_reason);
    let sip_code = checker.text(at("sip_code"), record.sip_code);
    let hangup_side = checker.enumeration(at("hangup_side"), record.hangup_side);
    let huawei = record
        .huawei
        .map(|wire| huawei(&mut checker, &at("huawei"), wire));
    let number_check_status =
        checker.enumeration(at("number_check_status"), record.number_check_status);

    // Dialogue results.
    let rounds = checker.non_negative(at("rounds"), record.rounds);
    let asks_count = checker.non_negative(at("asks_count"), record.asks_count);
    let call_count = checker.non_negative(at("call_count"), record.call_count);
    let level = level(&mut checker, path, record.level, &record.level_id);
    let gender = checker.enumeration(at("gender"), record.gender);
    let last_reply = checker.text(at("last_reply"), record.last_reply);
    let end_node = checker.text(at("end_node"), record.end_node);
    let classification = record
        .classification
        .and_then(|wire| classification(&mut checker, &at("classification"), wire));
    let labels = checker.labels(&at("labels"), record.labels);
    let dynamic_labels = checker.labels(&at("dynamic_labels"), record.dynamic_labels);
    let satisfaction = checker.enumeration(at("satisfaction"), record.satisfaction);
    let call_mode = checker.enumeration(at("call_mode"), record.call_mode);

    // Transfer and recording.
    let transfer = record
        .transfer
        .map(|wire| transfer(&mut checker, &at("transfer"), wire));
    let record_file = checker.text(at("record_file"), record.record_file);
    let record_path = checker.text(at("record_path"), record.record_path);
    let read_time = checker.time(at("read_time"), record.read_time.as_ref());

    // Tags, custom fields and the dialogue.
    if !record.tag_ids.is_empty() {
        checker.violation(
            at("tag_ids"),
            "server tag ids are not supported on input yet; send tags[].source_tag_id",
        );
    }
    let tags = tags(&mut checker, path, record.tags);
    let custom_fields = custom_fields(&mut checker, &at("custom_fields"), record.custom_fields);
    let turns = turns(&mut checker, path, record.turns);

    let source_create_time =
        checker.time(at("source_create_time"), record.source_create_time.as_ref());
    let source_update_time =
        checker.time(at("source_update_time"), record.source_update_time.as_ref());
    let extra = record.extra.map(struct_to_json).unwrap_or_default();

    // Every missing required part pushed a violation, so this only returns the collected list.
    let (Some(key), Some(callee), Some(dial_time)) = (key, callee, dial_time) else {
        return Err(checker.violations);
    };
    if !checker.violations.is_empty() {
        return Err(checker.violations);
    }
    Ok(Call {
        source_format,
        key,
        state,
        source_task_id,
        source_record_id,
        script_group_id,
        callee,
        caller,
        callee_region,
        customer,
        dial_time,
        answer_time,
        hangup_time,
        duration_ms,
        talk_duration_ms,
        billed_minutes,
        outcome,
        number_status,
        hangup_cause,
        end_reason,
        sip_code,
        hangup_side,
        error_code: record.error_code,
        huawei,
        number_check_status,
        rounds,
        asks_count,
        call_count,
        score: record.score,
        level,
        gender,
        last_reply,
        end_node,
        classification,
        labels,
        dynamic_labels,
        satisfaction,
        call_mode,
        call_mode_code: record.call_mode_code,
        first_connected: record.first_connected,
        transfer,
        record_file,
        record_path,
        read_time,
        tags,
        custom_fields,
        turns,
        source_create_time,
        source_update_time,
        extra,
    })
}

/// google.protobuf.Struct to a JSON object, lossless for JSON values.
///
/// Struct numbers are doubles: integral values within ±2^53 become JSON integers (so integers
/// sent as JSON come back as integers), others stay floating point. NaN and infinities, which
/// JSON cannot hold, become null, as does a value with no kind set.
pub fn struct_to_json(value: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    value
        .fields
        .into_iter()
        .map(|(name, field)| (name, value_to_json(field)))
        .collect()
}

/// A JSON object to google.protobuf.Struct, lossless for JSON values (integers beyond ±2^53 lose
/// precision: Struct numbers are doubles).
pub fn json_to_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(name, field)| (name.clone(), json_to_value(field)))
            .collect(),
    }
}

/// Timestamp conversion with validation: `None` unless the seconds fall within the years
/// 1970..=9999 and the nanos within 0..1_000_000_000.
pub fn timestamp_to_utc(value: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    if !(0..=MAX_TIMESTAMP_SECONDS).contains(&value.seconds) {
        return None;
    }
    let nanos = u32::try_from(value.nanos).ok()?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    DateTime::from_timestamp(value.seconds, nanos)
}

/// An optional request time, validated: INVALID_ARGUMENT on `field` when it is not a valid
/// timestamp.
pub fn optional_time(
    value: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, crate::error::ApiError> {
    value
        .map(|timestamp| {
            timestamp_to_utc(timestamp)
                .ok_or_else(|| crate::error::ApiError::invalid_field(field, "is not a valid time"))
        })
        .transpose()
}

/// A UTC time as a protobuf Timestamp (a leap second's extra nanos are clamped into the second).
pub fn utc_to_timestamp(value: DateTime<Utc>) -> prost_types::Timestamp {
    let nanos = value.timestamp_subsec_nanos().min(999_999_999);
    prost_types::Timestamp {
        seconds: value.timestamp(),
        nanos: i32::try_from(nanos).unwrap_or(999_999_999),
    }
}

fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(number)) => number_to_json(number),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text),
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(flag),
        Some(Kind::StructValue(object)) => serde_json::Value::Object(struct_to_json(object)),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
    }
}

fn number_to_json(number: f64) -> serde_json::Value {
    if number.fract() == 0.0 && number.abs() <= MAX_EXACT_INTEGER {
        // Integral and within ±2^53, so the cast is exact.
        serde_json::Value::from(number as i64)
    } else {
        serde_json::Number::from_f64(number)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

fn json_to_value(value: &serde_json::Value) -> prost_types::Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        serde_json::Value::Bool(flag) => Kind::BoolValue(*flag),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(text) => Kind::StringValue(text.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// `path.name`, or `name` alone under an empty path.
fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Collects the violations of one record while converting it.
struct Checker<'limits> {
    limits: &'limits CallLimits,
    violations: Vec<FieldViolation>,
}

impl<'limits> Checker<'limits> {
    fn new(limits: &'limits CallLimits) -> Self {
        Self {
            limits,
            violations: Vec::new(),
        }
    }

    fn violation(&mut self, field: String, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    fn undefined_enum(&mut self, field: String, value: i32) {
        self.violation(field, format!("{value} is not a defined enum value"));
    }

    /// Reports a text longer than the limit (counted in characters).
    fn check_length(&mut self, field: String, value: &str) {
        let limit = self.limits.max_text_chars;
        if value.len() > limit && value.chars().nth(limit).is_some() {
            self.violation(field, format!("must be at most {limit} characters"));
        } else if value.contains('\0') {
            self.violation(field, "must not contain NUL characters");
        }
    }

    /// An optional text: empty is `None`.
    fn text(&mut self, field: String, value: String) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        self.check_length(field, &value);
        Some(value)
    }

    /// A text kept as a plain string (empty allowed).
    fn plain_text(&mut self, field: String, value: String) -> String {
        self.check_length(field, &value);
        value
    }

    /// An optional phone number, trimmed; `None` when empty or invalid (invalid is reported).
    fn phone(&mut self, field: String, value: &str) -> Option<String> {
        let number = value.trim();
        if number.is_empty() {
            return None;
        }
        let valid = number.chars().count() <= MAX_PHONE_CHARS
            && number
                .chars()
                .all(|character| character.is_ascii_digit() || "+*#-".contains(character));
        if !valid {
            self.violation(field, PHONE_RULE);
            return None;
        }
        Some(number.to_owned())
    }

    /// An optional timestamp; an invalid one is reported and dropped.
    fn time(
        &mut self,
        field: String,
        value: Option<&prost_types::Timestamp>,
    ) -> Option<DateTime<Utc>> {
        let value = value?;
        let converted = timestamp_to_utc(value);
        if converted.is_none() {
            self.violation(field, TIMESTAMP_RULE);
        }
        converted
    }

    /// A count or duration that must not be negative.
    fn non_negative<T>(&mut self, field: String, value: Option<T>) -> Option<T>
    where
        T: Copy + Default + PartialOrd,
    {
        if value.is_some_and(|number| number < T::default()) {
            self.violation(field, "must not be negative");
        }
        value
    }

    /// A code-table value: any defined value, unspecified included.
    fn enumeration<E>(&mut self, field: String, value: i32) -> E
    where
        E: TryFrom<i32> + Default,
    {
        E::try_from(value).unwrap_or_else(|_| {
            self.undefined_enum(field, value);
            E::default()
        })
    }

    /// Labels without their empty entries (violations keep the wire index).
    fn labels(&mut self, field: &str, values: Vec<String>) -> Vec<String> {
        let mut labels = Vec::with_capacity(values.len());
        for (index, value) in values.into_iter().enumerate() {
            if let Some(label) = self.text(format!("{field}[{index}]"), value) {
                labels.push(label);
            }
        }
        labels
    }
}

fn source_key(
    default_system: &'static str,
    checker: &mut Checker<'_>,
    path: &str,
    system: &str,
    call_id: &str,
) -> Option<SourceKey> {
    let system = if system.is_empty() {
        default_system
    } else {
        system
    };
    match SourceKey::parse(system, call_id) {
        Ok(key) => Some(key),
        Err((part, description)) => {
            let field = if part == "source_system" {
                "source_system"
            } else {
                "source_call_id"
            };
            checker.violation(join(path, field), description);
            // A bad system hides the id's own check; run it so both are reported.
            if field == "source_system"
                && let Err((_, id_description)) = SourceKey::parse(DEFAULT_SOURCE_SYSTEM, call_id)
            {
                checker.violation(join(path, "source_call_id"), id_description);
            }
            None
        }
    }
}

fn region(checker: &mut Checker<'_>, path: &str, wire: proto::Region) -> Region {
    let at = |name: &str| join(path, name);
    Region {
        province: checker.text(at("province"), wire.province),
        city: checker.text(at("city"), wire.city),
        area_code: checker.text(at("area_code"), wire.area_code),
        post_code: checker.text(at("post_code"), wire.post_code),
        carrier: checker.enumeration(at("carrier"), wire.carrier),
        carrier_name: checker.text(at("carrier_name"), wire.carrier_name),
        text: checker.text(at("text"), wire.text),
    }
}

/// `None` when every field is empty.
fn customer(checker: &mut Checker<'_>, path: &str, wire: proto::Customer) -> Option<Customer> {
    let at = |name: &str| join(path, name);
    let customer = Customer {
        name: checker.text(at("name"), wire.name),
        address: checker.text(at("address"), wire.address),
        company: checker.text(at("company"), wire.company),
        company_phone: checker.text(at("company_phone"), wire.company_phone),
    };
    (customer != Customer::default()).then_some(customer)
}

/// `None` when every field is empty.
fn classification(
    checker: &mut Checker<'_>,
    path: &str,
    wire: proto::Classification,
) -> Option<Classification> {
    let at = |name: &str| join(path, name);
    let classification = Classification {
        intent_class: checker.text(at("intent_class"), wire.intent_class),
        manual_class: checker.text(at("manual_class"), wire.manual_class),
        sub_class: checker.text(at("sub_class"), wire.sub_class),
        classify: checker.text(at("classify"), wire.classify),
        mark: checker.text(at("mark"), wire.mark),
    };
    (classification != Classification::default()).then_some(classification)
}

fn transfer(checker: &mut Checker<'_>, path: &str, wire: proto::Transfer) -> Transfer {
    let at = |name: &str| join(path, name);
    Transfer {
        state: checker.enumeration(at("state"), wire.state),
        target: checker.enumeration(at("target"), wire.target),
        bridge_call_id: checker.text(at("bridge_call_id"), wire.bridge_call_id),
        bridge_number: checker.text(at("bridge_number"), wire.bridge_number),
        bridge_dial_time: checker.time(at("bridge_dial_time"), wire.bridge_dial_time.as_ref()),
        bridge_answer_time: checker
            .time(at("bridge_answer_time"), wire.bridge_answer_time.as_ref()),
        agent_id: checker.text(at("agent_id"), wire.agent_id),
        agent_name: checker.text(at("agent_name"), wire.agent_name),
        target_code: wire.target_code,
    }
}

/// The wire's `vdn_id` is not optional: 0 (unset in proto3) means none.
fn huawei(checker: &mut Checker<'_>, path: &str, wire: proto::HuaweiResult) -> HuaweiResult {
    let at = |name: &str| join(path, name);
    HuaweiResult {
        call_status: wire.call_status,
        fail_code: checker.plain_text(at("fail_code"), wire.fail_code),
        session_id: checker.text(at("session_id"), wire.session_id),
        vdn_id: (wire.vdn_id != 0).then_some(wire.vdn_id),
    }
}

/// The level by the source's id; a server `level_id` alone is not resolvable here yet.
fn level(
    checker: &mut Checker<'_>,
    path: &str,
    level: Option<proto::Level>,
    level_id: &str,
) -> Option<LevelRef> {
    match level {
        Some(level) => {
            let field = join(path, "level.source_level_id");
            let source_level_id = level.source_level_id.trim();
            if source_level_id.is_empty() {
                checker.violation(field, "must not be empty when level is given");
                return None;
            }
            checker.check_length(field, source_level_id);
            Some(LevelRef {
                source_level_id: source_level_id.to_owned(),
            })
        }
        None if !level_id.is_empty() => {
            checker.violation(
                join(path, "level_id"),
                "server level ids are not supported on input yet; send level.source_level_id",
            );
            None
        }
        None => None,
    }
}

/// Tag references by the source's id; duplicates collapse into the first, which takes a later
/// duplicate's name when it has none.
fn tags(checker: &mut Checker<'_>, path: &str, wire: Vec<proto::Tag>) -> Vec<TagRef> {
    let field = join(path, "tags");
    let limit = checker.limits.max_tags;
    if wire.len() > limit {
        checker.violation(field.clone(), format!("must have at most {limit} tags"));
    }
    let mut tags: Vec<TagRef> = Vec::with_capacity(wire.len());
    for (index, tag) in wire.into_iter().enumerate() {
        let at = |name: &str| format!("{field}[{index}].{name}");
        let source_tag_id = tag.source_tag_id.trim();
        if source_tag_id.is_empty() {
            checker.violation(
                at("source_tag_id"),
                "must not be empty: tags are given by the source's id",
            );
            continue;
        }
        checker.check_length(at("source_tag_id"), source_tag_id);
        let name = checker.text(at("name"), tag.name);
        match tags
            .iter_mut()
            .find(|known| known.source_tag_id == source_tag_id)
        {
            Some(known) => {
                if known.name.is_none() {
                    known.name = name;
                }
            }
            None => tags.push(TagRef {
                source_tag_id: source_tag_id.to_owned(),
                name,
            }),
        }
    }
    tags
}

fn custom_fields(
    checker: &mut Checker<'_>,
    field: &str,
    wire: HashMap<String, String>,
) -> BTreeMap<String, String> {
    if wire.len() > MAX_CUSTOM_FIELDS {
        checker.violation(
            field.to_owned(),
            format!("must have at most {MAX_CUSTOM_FIELDS} entries"),
        );
    }
    // Sorted, so that violations come out in a stable order.
    let sorted: BTreeMap<String, String> = wire.into_iter().collect();
    let mut fields = BTreeMap::new();
    for (name, value) in sorted {
        let at = format!("{field}[{name:?}]");
        if name.is_empty() {
            checker.violation(at, "keys must not be empty");
            continue;
        }
        let limit = checker.limits.max_text_chars;
        if name.chars().nth(limit).is_some() {
            checker.violation(
                at.clone(),
                format!("the key must be at most {limit} characters"),
            );
        }
        let value = checker.plain_text(at, value);
        fields.insert(name, value);
    }
    fields
}

/// Converts turns sent on their own (AppendTurns) with exactly the rules of a record's turns,
/// so a dialogue is validated the same whether it arrives whole or turn by turn; `path`
/// prefixes the fields (`turns[2].speaker` under an empty path).
pub(crate) fn turns_from_proto(
    wire: Vec<proto::Turn>,
    path: &str,
    limits: &CallLimits,
) -> Result<Vec<Turn>, Vec<FieldViolation>> {
    let mut checker = Checker::new(limits);
    let turns = turns(&mut checker, path, wire);
    if checker.violations.is_empty() {
        Ok(turns)
    } else {
        Err(checker.violations)
    }
}

fn turns(checker: &mut Checker<'_>, path: &str, wire: Vec<proto::Turn>) -> Vec<Turn> {
    let field = join(path, "turns");
    let limit = checker.limits.max_turns;
    if wire.len() > limit {
        checker.violation(field.clone(), format!("must have at most {limit} turns"));
    }
    let mut turns = Vec::with_capacity(wire.len());
    let mut previous_sequence: Option<i32> = None;
    for (index, wire_turn) in wire.into_iter().enumerate() {
        let turn_path = format!("{field}[{index}]");
        let sequence = wire_turn.sequence;
        if sequence < 1 {
            checker.violation(join(&turn_path, "sequence"), "must be at least 1");
        } else if let Some(previous) = previous_sequence.filter(|previous| sequence <= *previous) {
            checker.violation(
                join(&turn_path, "sequence"),
                format!("must be greater than {previous}, the highest sequence before it"),
            );
        }
        previous_sequence =
            Some(previous_sequence.map_or(sequence, |previous| previous.max(sequence)));
        turns.push(turn(checker, &turn_path, wire_turn));
    }
    turns
}

fn turn(checker: &mut Checker<'_>, path: &str, wire: proto::Turn) -> Turn {
    let at = |name: &str| join(path, name);
    let speaker = checker.enumeration(at("speaker"), wire.speaker);
    if wire.speaker == proto::Speaker::Unspecified as i32 {
        checker.violation(
            at("speaker"),
            "must be set: SPEAKER_ROBOT, SPEAKER_CUSTOMER or SPEAKER_AGENT",
        );
    }
    let node = wire.node.unwrap_or_default();
    let node_path = at("node");
    let node_at = |name: &str| join(&node_path, name);
    let volume_gain = wire.volume_gain;
    if volume_gain.is_some_and(|gain| !gain.is_finite()) {
        checker.violation(at("volume_gain"), "must be a finite number");
    }
    if !wire.tag_ids.is_empty() {
        checker.violation(
            at("tag_ids"),
            "server tag ids are not supported on input yet; leave empty",
        );
    }
    let audio_pieces = wire
        .audio_pieces
        .into_iter()
        .enumerate()
        .map(|(index, piece)| {
            audio_piece(checker, &format!("{}[{index}]", at("audio_pieces")), piece)
        })
        .collect();
    Turn {
        sequence: wire.sequence,
        speaker,
        text: checker.plain_text(at("text"), wire.text),
        time: checker.time(at("time"), wire.time.as_ref()),
        start_offset_ms: checker.non_negative(at("start_offset_ms"), wire.start_offset_ms),
        end_offset_ms: checker.non_negative(at("end_offset_ms"), wire.end_offset_ms),
        speak_ms: checker.non_negative(at("speak_ms"), wire.speak_ms),
        play_ms: checker.non_negative(at("play_ms"), wire.play_ms),
        node_id: checker.text(node_at("id"), node.id),
        node_name: checker.text(node_at("name"), node.name),
        node_class: checker.text(node_at("node_class"), node.node_class),
        node_type: checker.enumeration(node_at("type"), node.r#type),
        trigger_title: checker.text(node_at("trigger_title"), node.trigger_title),
        matched_keyword: checker.text(at("matched_keyword"), wire.matched_keyword),
        jump_type: checker.enumeration(at("jump_type"), wire.jump_type),
        match_type: wire.match_type,
        score_delta: wire.score_delta,
        label: checker.text(at("label"), wire.label),
        audio_file: checker.text(at("audio_file"), wire.audio_file),
        audio_pieces,
        asr_engine: checker.text(at("asr_engine"), wire.asr_engine),
        asr_latency_ms: checker.non_negative(at("asr_latency_ms"), wire.asr_latency_ms),
        record_ms: checker.non_negative(at("record_ms"), wire.record_ms),
        volume_gain,
        question_index: wire.question_index,
        after_transfer: wire.after_transfer,
        source_turn_id: checker.text(at("source_turn_id"), wire.source_turn_id),
        // The wire carries only server tag ids on turns (rejected above).
        tags: Vec::new(),
        extra: wire.extra.map(struct_to_json).unwrap_or_default(),
    }
}

fn audio_piece(checker: &mut Checker<'_>, path: &str, wire: proto::AudioPiece) -> AudioPiece {
    let at = |name: &str| join(path, name);
    AudioPiece {
        file_id: checker.plain_text(at("file_id"), wire.file_id),
        sort: wire.sort,
        text: checker.plain_text(at("text"), wire.text),
        duration_ms: checker
            .non_negative(at("duration_ms"), Some(wire.duration_ms))
            .unwrap_or_default(),
        extra: wire.extra.map(struct_to_json).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PATH: &str = "calls[0]";

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    fn utc(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("valid test time")
    }

    fn extra(value: serde_json::Value) -> prost_types::Struct {
        match value {
            serde_json::Value::Object(map) => json_to_struct(&map),
            other => panic!("test extra must be an object, got {other}"),
        }
    }

    /// The smallest valid record.
    fn minimal() -> proto::CallRecord {
        proto::CallRecord {
            source_call_id: "call-1".to_owned(),
            callee: "15899770637".to_owned(),
            dial_time: Some(at(1_744_597_153)),
            ..proto::CallRecord::default()
        }
    }

    fn turn(sequence: i32, speaker: proto::Speaker) -> proto::Turn {
        proto::Turn {
            sequence,
            speaker: speaker as i32,
            text: "您好".to_owned(),
            ..proto::Turn::default()
        }
    }

    fn tag(source_tag_id: &str, name: &str) -> proto::Tag {
        proto::Tag {
            source_tag_id: source_tag_id.to_owned(),
            name: name.to_owned(),
            ..proto::Tag::default()
        }
    }

    /// A record with every input field set.
    fn full() -> proto::CallRecord {
        proto::CallRecord {
            source_format: proto::SourceFormat::HangupPush as i32,
            source_system: "dialer-1".to_owned(),
            source_call_id: " db57f262 ".to_owned(),
            state: proto::CallState::InProgress as i32,
            source_task_id: "task-7".to_owned(),
            source_record_id: "record-9".to_owned(),
            script_group_id: "group-3".to_owned(),
            callee: " +86-158*997#0637 ".to_owned(),
            caller: "02588886666".to_owned(),
            callee_region: Some(proto::Region {
                province: "江苏".to_owned(),
                city: "南京".to_owned(),
                area_code: "025".to_owned(),
                post_code: "210000".to_owned(),
                carrier: proto::Carrier::ChinaUnicom as i32,
                carrier_name: "联通".to_owned(),
                text: String::new(),
            }),
            customer: Some(proto::Customer {
                name: "张三".to_owned(),
                address: String::new(),
                company: "ACME".to_owned(),
                company_phone: "025-1234".to_owned(),
            }),
            dial_time: Some(at(1_744_597_153)),
            answer_time: Some(prost_types::Timestamp {
                seconds: 1_744_597_160,
                nanos: 500_000_000,
            }),
            hangup_time: Some(at(1_744_597_250)),
            duration_ms: Some(97_000),
            talk_duration_ms: Some(90_000),
            billed_minutes: Some(2),
            outcome: proto::CallOutcome::Answered as i32,
            number_status: proto::NumberStatus::Connected as i32,
            hangup_cause: "NORMAL_CLEARING".to_owned(),
            end_reason: "对方挂机".to_owned(),
            sip_code: "200".to_owned(),
            hangup_side: proto::HangupSide::Customer as i32,
            error_code: Some(0),
            huawei: Some(proto::HuaweiResult {
                call_status: 6,
                fail_code: "00603".to_owned(),
                session_id: "session-1".to_owned(),
                vdn_id: 42,
            }),
            number_check_status: proto::NumberCheckStatus::Real as i32,
            rounds: Some(5),
            asks_count: Some(1),
            call_count: Some(3),
            score: Some(-20),
            level: Some(proto::Level {
                id: "ignored-server-id".to_owned(),
                source_level_id: " A ".to_owned(),
                name: "A级".to_owned(),
                ..proto::Level::default()
            }),
            gender: proto::Gender::Female as i32,
            last_reply: "好的".to_owned(),
            end_node: "15转人工#3".to_owned(),
            classification: Some(proto::Classification {
                intent_class: "A".to_owned(),
                mark: "vip".to_owned(),
                ..proto::Classification::default()
            }),
            labels: vec!["意向".to_owned(), String::new(), "回访".to_owned()],
            dynamic_labels: vec![String::new(), "amount=100".to_owned()],
            satisfaction: proto::Satisfaction::Satisfied as i32,
            call_mode: proto::CallMode::AgentAssisted as i32,
            call_mode_code: Some(6),
            first_connected: Some(true),
            transfer: Some(proto::Transfer {
                state: proto::TransferState::Answered as i32,
                target: proto::TransferTarget::Other as i32,
                bridge_call_id: "bridge-1".to_owned(),
                bridge_number: "8001".to_owned(),
                bridge_dial_time: Some(at(1_744_597_200)),
                bridge_answer_time: Some(at(1_744_597_205)),
                agent_id: "agent-9".to_owned(),
                agent_name: "李四".to_owned(),
                target_code: Some(5),
            }),
            record_file: "rec.wav".to_owned(),
            record_path: "/records/2025".to_owned(),
            read_time: Some(at(1_744_600_000)),
            tags: vec![tag("t1", ""), tag("t2", "脏话"), tag("t1", "有意向")],
            custom_fields: HashMap::from([
                ("data1".to_owned(), "x".to_owned()),
                ("ext1".to_owned(), String::new()),
            ]),
            turns: vec![
                proto::Turn {
                    time: Some(at(1_744_597_161)),
                    start_offset_ms: Some(0),
                    end_offset_ms: Some(2_500),
                    play_ms: Some(2_400),
                    node: Some(proto::ScriptNode {
                        id: "n1".to_owned(),
                        name: "开场白".to_owned(),
                        node_class: "greeting".to_owned(),
                        r#type: proto::NodeType::MainFlow as i32,
                        trigger_title: "主流程".to_owned(),
                    }),
                    jump_type: proto::JumpType::Affirmative as i32,
                    audio_file: "robot-1.wav".to_owned(),
                    audio_pieces: vec![proto::AudioPiece {
                        file_id: "f1".to_owned(),
                        sort: 1,
                        text: "您好".to_owned(),
                        duration_ms: 1_200,
                        extra: Some(extra(json!({"voice": "female"}))),
                    }],
                    source_turn_id: "turn-1".to_owned(),
                    ..turn(1, proto::Speaker::Robot)
                },
                proto::Turn {
                    speak_ms: Some(800),
                    matched_keyword: "好的".to_owned(),
                    match_type: Some(2),
                    score_delta: Some(-5),
                    label: "意向".to_owned(),
                    asr_engine: "aliyun".to_owned(),
                    asr_latency_ms: Some(120),
                    record_ms: Some(900),
                    volume_gain: Some(1.5),
                    question_index: Some(0),
                    after_transfer: true,
                    extra: Some(extra(json!({"asr_confidence": 0.93}))),
                    ..turn(3, proto::Speaker::Customer)
                },
            ],
            source_create_time: Some(at(1_744_597_100)),
            source_update_time: Some(at(1_744_597_300)),
            extra: Some(extra(json!({"data30": "z", "nested": {"n": 1}}))),
            ..proto::CallRecord::default()
        }
    }

    fn convert(record: proto::CallRecord) -> Result<Call, Vec<FieldViolation>> {
        call_from_proto(record, PATH, &CallLimits::default())
    }

    /// The fields of the violations of a record that must fail.
    fn violated_fields(record: proto::CallRecord) -> Vec<String> {
        match convert(record) {
            Ok(call) => panic!("expected violations, converted {call:?}"),
            Err(violations) => violations
                .into_iter()
                .map(|violation| violation.field)
                .collect(),
        }
    }

    fn description_of(record: proto::CallRecord, field: &str) -> String {
        match convert(record) {
            Ok(call) => panic!("expected violations, converted {call:?}"),
            Err(violations) => violations
                .into_iter()
                .find(|violation| violation.field == field)
                .map(|violation| violation.description)
                .unwrap_or_else(|| panic!("no violation on {field}")),
        }
    }

    #[test]
    fn a_full_record_converts_every_field() {
        let call = convert(full()).expect("the full record is valid");

        assert_eq!(call.source_format, proto::SourceFormat::HangupPush);
        assert_eq!(
            call.key,
            SourceKey::parse("dialer-1", "db57f262").expect("key")
        );
        assert_eq!(call.state, proto::CallState::InProgress);
        assert_eq!(call.source_task_id.as_deref(), Some("task-7"));
        assert_eq!(call.source_record_id.as_deref(), Some("record-9"));
        assert_eq!(call.script_group_id.as_deref(), Some("group-3"));
        assert_eq!(call.callee, "+86-158*997#0637");
        assert_eq!(call.caller.as_deref(), Some("02588886666"));
        assert_eq!(
            call.callee_region,
            Region {
                province: Some("江苏".to_owned()),
                city: Some("南京".to_owned()),
                area_code: Some("025".to_owned()),
                post_code: Some("210000".to_owned()),
                carrier: proto::Carrier::ChinaUnicom,
                carrier_name: Some("联通".to_owned()),
                text: None,
            }
        );
        assert_eq!(
            call.customer,
            Some(Customer {
                name: Some("张三".to_owned()),
                address: None,
                company: Some("ACME".to_owned()),
                company_phone: Some("025-1234".to_owned()),
            })
        );
        assert_eq!(call.dial_time, utc(1_744_597_153));
        assert_eq!(
            call.answer_time,
            DateTime::from_timestamp(1_744_597_160, 500_000_000)
        );
        assert_eq!(call.hangup_time, Some(utc(1_744_597_250)));
        assert_eq!(call.duration_ms, Some(97_000));
        assert_eq!(call.talk_duration_ms, Some(90_000));
        assert_eq!(call.billed_minutes, Some(2));
        assert_eq!(call.outcome, proto::CallOutcome::Answered);
        assert_eq!(call.number_status, proto::NumberStatus::Connected);
        assert_eq!(call.hangup_cause.as_deref(), Some("NORMAL_CLEARING"));
        assert_eq!(call.end_reason.as_deref(), Some("对方挂机"));
        assert_eq!(call.sip_code.as_deref(), Some("200"));
        assert_eq!(call.hangup_side, proto::HangupSide::Customer);
        assert_eq!(call.error_code, Some(0));
        assert_eq!(
            call.huawei,
            Some(HuaweiResult {
                call_status: 6,
                fail_code: "00603".to_owned(),
                session_id: Some("session-1".to_owned()),
                vdn_id: Some(42),
            })
        );
        assert_eq!(call.number_check_status, proto::NumberCheckStatus::Real);
        assert_eq!(call.rounds, Some(5));
        assert_eq!(call.asks_count, Some(1));
        assert_eq!(call.call_count, Some(3));
        assert_eq!(call.score, Some(-20));
        assert_eq!(
            call.level,
            Some(LevelRef {
                source_level_id: "A".to_owned()
            })
        );
        assert_eq!(call.gender, proto::Gender::Female);
        assert_eq!(call.last_reply.as_deref(), Some("好的"));
        assert_eq!(call.end_node.as_deref(), Some("15转人工#3"));
        assert_eq!(
            call.classification,
            Some(Classification {
                intent_class: Some("A".to_owned()),
                mark: Some("vip".to_owned()),
                ..Classification::default()
            })
        );
        assert_eq!(call.labels, ["意向", "回访"]);
        assert_eq!(call.dynamic_labels, ["amount=100"]);
        assert_eq!(call.satisfaction, proto::Satisfaction::Satisfied);
        assert_eq!(call.call_mode, proto::CallMode::AgentAssisted);
        assert_eq!(call.call_mode_code, Some(6));
        assert_eq!(call.first_connected, Some(true));
        assert_eq!(
            call.transfer,
            Some(Transfer {
                state: proto::TransferState::Answered,
                target: proto::TransferTarget::Other,
                bridge_call_id: Some("bridge-1".to_owned()),
                bridge_number: Some("8001".to_owned()),
                bridge_dial_time: Some(utc(1_744_597_200)),
                bridge_answer_time: Some(utc(1_744_597_205)),
                agent_id: Some("agent-9".to_owned()),
                agent_name: Some("李四".to_owned()),
                target_code: Some(5),
            })
        );
        assert_eq!(call.record_file.as_deref(), Some("rec.wav"));
        assert_eq!(call.record_path.as_deref(), Some("/records/2025"));
        assert_eq!(call.read_time, Some(utc(1_744_600_000)));
        assert_eq!(
            call.tags,
            [
                TagRef {
                    source_tag_id: "t1".to_owned(),
                    name: Some("有意向".to_owned()),
                },
                TagRef {
                    source_tag_id: "t2".to_owned(),
                    name: Some("脏话".to_owned()),
                },
            ]
        );
        assert_eq!(
            call.custom_fields.into_iter().collect::<Vec<_>>(),
            [
                ("data1".to_owned(), "x".to_owned()),
                ("ext1".to_owned(), String::new())
            ]
        );
        assert_eq!(call.source_create_time, Some(utc(1_744_597_100)));
        assert_eq!(call.source_update_time, Some(utc(1_744_597_300)));
        assert_eq!(
            serde_json::Value::Object(call.extra),
            json!({"data30": "z", "nested": {"n": 1}})
        );

        let [robot, customer] = call.turns.as_slice() else {
            panic!("expected two turns, got {:?}", call.turns);
        };
        assert_eq!(
            robot,
            &Turn {
                sequence: 1,
                speaker: proto::Speaker::Robot,
                text: "您好".to_owned(),
                time: Some(utc(1_744_597_161)),
                start_offset_ms: Some(0),
                end_offset_ms: Some(2_500),
                play_ms: Some(2_400),
                node_id: Some("n1".to_owned()),
                node_name: Some("开场白".to_owned()),
                node_class: Some("greeting".to_owned()),
                node_type: proto::NodeType::MainFlow,
                trigger_title: Some("主流程".to_owned()),
                jump_type: proto::JumpType::Affirmative,
                audio_file: Some("robot-1.wav".to_owned()),
                audio_pieces: vec![AudioPiece {
                    file_id: "f1".to_owned(),
                    sort: 1,
                    text: "您好".to_owned(),
                    duration_ms: 1_200,
                    extra: struct_to_json(extra(json!({"voice": "female"}))),
                }],
                source_turn_id: Some("turn-1".to_owned()),
                ..Turn::default()
            }
        );
        assert_eq!(customer.sequence, 3);
        assert_eq!(customer.speaker, proto::Speaker::Customer);
        assert_eq!(customer.speak_ms, Some(800));
        assert_eq!(customer.matched_keyword.as_deref(), Some("好的"));
        assert_eq!(customer.match_type, Some(2));
        assert_eq!(customer.score_delta, Some(-5));
        assert_eq!(customer.label.as_deref(), Some("意向"));
        assert_eq!(customer.asr_engine.as_deref(), Some("aliyun"));
        assert_eq!(customer.asr_latency_ms, Some(120));
        assert_eq!(customer.record_ms, Some(900));
        assert_eq!(customer.volume_gain, Some(1.5));
        assert_eq!(customer.question_index, Some(0));
        assert!(customer.after_transfer);
        assert_eq!(customer.node_id, None);
        assert_eq!(customer.node_type, proto::NodeType::Unspecified);
        assert_eq!(customer.extra.get("asr_confidence"), Some(&json!(0.93)));
    }

    #[test]
    fn a_minimal_record_takes_the_defaults() {
        let call = convert(minimal()).expect("the minimal record is valid");
        assert_eq!(call.source_format, proto::SourceFormat::Native);
        assert_eq!(call.key.system, "native");
        assert_eq!(call.key.id, "call-1");
        assert_eq!(call.state, proto::CallState::Completed);
        assert_eq!(call.caller, None);
        assert_eq!(call.callee_region, Region::default());
        assert_eq!(call.customer, None);
        assert_eq!(call.transfer, None);
        assert_eq!(call.classification, None);
        assert_eq!(call.huawei, None);
        assert_eq!(call.level, None);
        assert_eq!(call.outcome, proto::CallOutcome::Unspecified);
        assert!(call.turns.is_empty());
        assert!(call.extra.is_empty());
    }

    #[test]
    fn output_only_fields_are_ignored() {
        let record = proto::CallRecord {
            id: "0195f3c2-0000-7000-8000-000000000000".to_owned(),
            tenant_id: "acme".to_owned(),
            version: 7,
            task_id: "server-task".to_owned(),
            tag_group_ids: vec!["server-group".to_owned()],
            turn_count: 99,
            quality: Some(proto::QualityResult::default()),
            task: Some(proto::Task::default()),
            create_time: Some(at(-5)),
            update_time: Some(at(-5)),
            ..minimal()
        };
        assert_eq!(convert(record), convert(minimal()));
    }

    #[test]
    fn an_empty_path_names_fields_without_prefix() {
        let record = proto::CallRecord {
            callee: String::new(),
            ..minimal()
        };
        let violations =
            call_from_proto(record, "", &CallLimits::default()).expect_err("callee is required");
        assert_eq!(violations, [FieldViolation::new("callee", "is required")]);
    }

    #[test]
    fn an_undefined_source_format_is_a_violation_and_defined_ones_are_kept() {
        let record = proto::CallRecord {
            source_format: 99,
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].source_format"]);

        let record = proto::CallRecord {
            source_format: proto::SourceFormat::HuaweiQc as i32,
            ..minimal()
        };
        let call = convert(record).expect("a defined format is accepted");
        assert_eq!(call.source_format, proto::SourceFormat::HuaweiQc);
    }

    #[test]
    fn the_source_key_is_validated() {
        let record = proto::CallRecord {
            source_call_id: "  ".to_owned(),
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].source_call_id"]);

        let record = proto::CallRecord {
            source_system: "bad system".to_owned(),
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].source_system"]);

        let record = proto::CallRecord {
            source_system: "bad system".to_owned(),
            source_call_id: String::new(),
            ..minimal()
        };
        assert_eq!(
            violated_fields(record),
            ["calls[0].source_system", "calls[0].source_call_id"]
        );
    }

    #[test]
    fn the_state_defaults_to_completed_and_must_be_defined() {
        let record = proto::CallRecord {
            state: proto::CallState::InProgress as i32,
            ..minimal()
        };
        assert_eq!(
            convert(record).expect("in progress is accepted").state,
            proto::CallState::InProgress
        );

        let record = proto::CallRecord {
            state: 3,
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].state"]);
    }

    #[test]
    fn callee_is_a_required_phone_number_and_caller_an_optional_one() {
        for bad in ["", "   "] {
            let record = proto::CallRecord {
                callee: bad.to_owned(),
                ..minimal()
            };
            assert_eq!(
                description_of(record, "calls[0].callee"),
                "is required",
                "{bad:?}"
            );
        }
        for bad in ["158 9977 0637", "158x", "１５８", &"1".repeat(33)] {
            let record = proto::CallRecord {
                callee: bad.to_owned(),
                ..minimal()
            };
            assert_eq!(
                description_of(record, "calls[0].callee"),
                PHONE_RULE,
                "{bad:?}"
            );

            let record = proto::CallRecord {
                caller: bad.to_owned(),
                ..minimal()
            };
            assert_eq!(violated_fields(record), ["calls[0].caller"], "{bad:?}");
        }

        let record = proto::CallRecord {
            callee: format!(" {} ", "1".repeat(32)),
            caller: "  ".to_owned(),
            ..minimal()
        };
        let call = convert(record).expect("32 digits are accepted");
        assert_eq!(call.callee, "1".repeat(32));
        assert_eq!(call.caller, None);
    }

    #[test]
    fn dial_time_is_required_and_every_time_must_be_valid() {
        let record = proto::CallRecord {
            dial_time: None,
            ..minimal()
        };
        assert_eq!(description_of(record, "calls[0].dial_time"), "is required");

        let invalid_times = [
            prost_types::Timestamp {
                seconds: 1,
                nanos: 1_000_000_000,
            },
            prost_types::Timestamp {
                seconds: 1,
                nanos: -1,
            },
            at(-1),
            at(MAX_TIMESTAMP_SECONDS + 1),
        ];
        for invalid in invalid_times {
            let record = proto::CallRecord {
                dial_time: Some(invalid),
                answer_time: Some(invalid),
                hangup_time: Some(invalid),
                read_time: Some(invalid),
                source_create_time: Some(invalid),
                source_update_time: Some(invalid),
                transfer: Some(proto::Transfer {
                    bridge_dial_time: Some(invalid),
                    bridge_answer_time: Some(invalid),
                    ..proto::Transfer::default()
                }),
                turns: vec![proto::Turn {
                    time: Some(invalid),
                    ..turn(1, proto::Speaker::Robot)
                }],
                ..minimal()
            };
            assert_eq!(
                violated_fields(record),
                [
                    "calls[0].dial_time",
                    "calls[0].answer_time",
                    "calls[0].hangup_time",
                    "calls[0].transfer.bridge_dial_time",
                    "calls[0].transfer.bridge_answer_time",
                    "calls[0].read_time",
                    "calls[0].turns[0].time",
                    "calls[0].source_create_time",
                    "calls[0].source_update_time",
                ],
                "{invalid:?}"
            );
        }
    }

    #[test]
    fn answer_and_hangup_must_not_precede_the_dial() {
        let record = proto::CallRecord {
            dial_time: Some(at(1_000)),
            answer_time: Some(at(999)),
            hangup_time: Some(at(998)),
            ..minimal()
        };
        assert_eq!(
            violated_fields(record),
            ["calls[0].answer_time", "calls[0].hangup_time"]
        );

        let record = proto::CallRecord {
            dial_time: Some(at(1_000)),
            answer_time: Some(at(1_000)),
            hangup_time: Some(at(1_000)),
            ..minimal()
        };
        assert!(convert(record).is_ok());
    }

    #[test]
    fn counts_and_durations_must_not_be_negative() {
        let record = proto::CallRecord {
            duration_ms: Some(-1),
            talk_duration_ms: Some(-1),
            billed_minutes: Some(-1),
            rounds: Some(-1),
            asks_count: Some(-1),
            call_count: Some(-1),
            score: Some(-1),
            turns: vec![proto::Turn {
                start_offset_ms: Some(-1),
                end_offset_ms: Some(-1),
                speak_ms: Some(-1),
                play_ms: Some(-1),
                asr_latency_ms: Some(-1),
                record_ms: Some(-1),
                score_delta: Some(-1),
                audio_pieces: vec![proto::AudioPiece {
                    duration_ms: -1,
                    ..proto::AudioPiece::default()
                }],
                ..turn(1, proto::Speaker::Robot)
            }],
            ..minimal()
        };
        assert_eq!(
            violated_fields(record),
            [
                "calls[0].duration_ms",
                "calls[0].talk_duration_ms",
                "calls[0].billed_minutes",
                "calls[0].rounds",
                "calls[0].asks_count",
                "calls[0].call_count",
                "calls[0].turns[0].audio_pieces[0].duration_ms",
                "calls[0].turns[0].start_offset_ms",
                "calls[0].turns[0].end_offset_ms",
                "calls[0].turns[0].speak_ms",
                "calls[0].turns[0].play_ms",
                "calls[0].turns[0].asr_latency_ms",
                "calls[0].turns[0].record_ms",
            ]
        );
    }

    #[test]
    fn every_enum_must_be_defined() {
        let record = proto::CallRecord {
            outcome: 100,
            number_status: 100,
            hangup_side: 100,
            gender: 100,
            satisfaction: 100,
            call_mode: 100,
            number_check_status: 100,
            callee_region: Some(proto::Region {
                carrier: 100,
                ..proto::Region::default()
            }),
            transfer: Some(proto::Transfer {
                state: 100,
                target: -1,
                ..proto::Transfer::default()
            }),
            turns: vec![proto::Turn {
                node: Some(proto::ScriptNode {
                    r#type: 100,
                    ..proto::ScriptNode::default()
                }),
                jump_type: 100,
                ..turn(1, proto::Speaker::Robot)
            }],
            ..minimal()
        };
        assert_eq!(
            violated_fields(record),
            [
                "calls[0].callee_region.carrier",
                "calls[0].outcome",
                "calls[0].number_status",
                "calls[0].hangup_side",
                "calls[0].number_check_status",
                "calls[0].gender",
                "calls[0].satisfaction",
                "calls[0].call_mode",
                "calls[0].transfer.state",
                "calls[0].transfer.target",
                "calls[0].turns[0].node.type",
                "calls[0].turns[0].jump_type",
            ]
        );
        assert_eq!(
            description_of(
                proto::CallRecord {
                    outcome: 100,
                    ..minimal()
                },
                "calls[0].outcome"
            ),
            "100 is not a defined enum value"
        );
    }

    #[test]
    fn texts_are_limited_in_characters_not_bytes() {
        let limits = CallLimits {
            max_text_chars: 4,
            ..CallLimits::default()
        };
        let record = proto::CallRecord {
            end_reason: "对方挂机".to_owned(),
            ..minimal()
        };
        assert!(call_from_proto(record, PATH, &limits).is_ok());

        let too_long = "对方挂机了".to_owned();
        let record = proto::CallRecord {
            end_reason: too_long.clone(),
            labels: vec![String::new(), too_long.clone()],
            custom_fields: HashMap::from([("k".to_owned(), too_long.clone())]),
            customer: Some(proto::Customer {
                name: too_long.clone(),
                ..proto::Customer::default()
            }),
            tags: vec![tag("t1", &too_long)],
            turns: vec![proto::Turn {
                text: too_long.clone(),
                audio_pieces: vec![proto::AudioPiece {
                    text: too_long.clone(),
                    ..proto::AudioPiece::default()
                }],
                ..turn(1, proto::Speaker::Customer)
            }],
            ..minimal()
        };
        let violations = call_from_proto(record, PATH, &limits).expect_err("texts are too long");
        let fields: Vec<_> = violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "calls[0].customer.name",
                "calls[0].end_reason",
                "calls[0].labels[1]",
                "calls[0].tags[0].name",
                "calls[0].custom_fields[\"k\"]",
                "calls[0].turns[0].audio_pieces[0].text",
                "calls[0].turns[0].text",
            ]
        );
        assert_eq!(violations[1].description, "must be at most 4 characters");
    }

    #[test]
    fn empty_strings_become_none_and_empty_labels_are_dropped() {
        let record = proto::CallRecord {
            customer: Some(proto::Customer::default()),
            classification: Some(proto::Classification::default()),
            transfer: Some(proto::Transfer::default()),
            huawei: Some(proto::HuaweiResult::default()),
            labels: vec![String::new(), "a".to_owned(), String::new()],
            dynamic_labels: vec![String::new()],
            ..minimal()
        };
        let call = convert(record).expect("valid");
        assert_eq!(call.customer, None);
        assert_eq!(call.classification, None);
        assert_eq!(call.transfer, Some(Transfer::default()));
        assert_eq!(call.huawei, Some(HuaweiResult::default()));
        assert_eq!(call.labels, ["a"]);
        assert!(call.dynamic_labels.is_empty());
        assert_eq!(call.hangup_cause, None);
    }

    #[test]
    fn custom_fields_need_keys_and_are_limited_in_number() {
        let record = proto::CallRecord {
            custom_fields: HashMap::from([(String::new(), "x".to_owned())]),
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].custom_fields[\"\"]"]);

        let record = proto::CallRecord {
            custom_fields: (0..=MAX_CUSTOM_FIELDS)
                .map(|index| (format!("data{index}"), "x".to_owned()))
                .collect(),
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].custom_fields"]);
    }

    #[test]
    fn tags_are_given_by_source_id_and_collapsed() {
        let record = proto::CallRecord {
            tags: vec![tag("t1", "a"), tag(" ", "b"), tag("t1", "c"), tag("t2", "")],
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].tags[1].source_tag_id"]);

        let record = proto::CallRecord {
            tags: vec![tag("t1", "a"), tag(" t1 ", "c"), tag("t2", "")],
            ..minimal()
        };
        let call = convert(record).expect("valid tags");
        assert_eq!(
            call.tags,
            [
                TagRef {
                    source_tag_id: "t1".to_owned(),
                    name: Some("a".to_owned()),
                },
                TagRef {
                    source_tag_id: "t2".to_owned(),
                    name: None,
                },
            ]
        );
    }

    #[test]
    fn tags_are_limited_in_number() {
        let limits = CallLimits {
            max_tags: 2,
            ..CallLimits::default()
        };
        let record = proto::CallRecord {
            tags: vec![tag("t1", ""), tag("t2", ""), tag("t3", "")],
            ..minimal()
        };
        let violations = call_from_proto(record, PATH, &limits).expect_err("too many tags");
        assert_eq!(
            violations,
            [FieldViolation::new(
                "calls[0].tags",
                "must have at most 2 tags"
            )]
        );
    }

    #[test]
    fn server_ids_are_not_accepted_on_input() {
        let record = proto::CallRecord {
            level_id: "0195f3c2-0000-7000-8000-000000000000".to_owned(),
            tag_ids: vec!["0195f3c2-0000-7000-8000-000000000001".to_owned()],
            turns: vec![proto::Turn {
                tag_ids: vec!["0195f3c2-0000-7000-8000-000000000001".to_owned()],
                ..turn(1, proto::Speaker::Robot)
            }],
            ..minimal()
        };
        assert_eq!(
            violated_fields(record.clone()),
            [
                "calls[0].level_id",
                "calls[0].tag_ids",
                "calls[0].turns[0].tag_ids"
            ]
        );
        assert!(description_of(record, "calls[0].level_id").contains("level.source_level_id"));

        // A level given by the source's id wins over a server id (a FULL view echoed back).
        let record = proto::CallRecord {
            level_id: "0195f3c2-0000-7000-8000-000000000000".to_owned(),
            level: Some(proto::Level {
                source_level_id: "B".to_owned(),
                ..proto::Level::default()
            }),
            ..minimal()
        };
        assert_eq!(
            convert(record).expect("valid level").level,
            Some(LevelRef {
                source_level_id: "B".to_owned()
            })
        );

        let record = proto::CallRecord {
            level: Some(proto::Level::default()),
            ..minimal()
        };
        assert_eq!(violated_fields(record), ["calls[0].level.source_level_id"]);
    }

    #[test]
    fn turns_are_limited_in_number() {
        let limits = CallLimits {
            max_turns: 1,
            ..CallLimits::default()
        };
        let record = proto::CallRecord {
            turns: vec![
                turn(1, proto::Speaker::Robot),
                turn(2, proto::Speaker::Customer),
            ],
            ..minimal()
        };
        let violations = call_from_proto(record, PATH, &limits).expect_err("too many turns");
        assert_eq!(
            violations,
            [FieldViolation::new(
                "calls[0].turns",
                "must have at most 1 turns"
            )]
        );
    }

    #[test]
    fn turn_sequences_start_at_one_and_strictly_increase() {
        let record = proto::CallRecord {
            turns: vec![
                turn(0, proto::Speaker::Robot),
                turn(2, proto::Speaker::Customer),
                turn(2, proto::Speaker::Robot),
                turn(5, proto::Speaker::Customer),
                turn(4, proto::Speaker::Robot),
                turn(6, proto::Speaker::Customer),
            ],
            ..minimal()
        };
        assert_eq!(
            violated_fields(record.clone()),
            [
                "calls[0].turns[0].sequence",
                "calls[0].turns[2].sequence",
                "calls[0].turns[4].sequence"
            ]
        );
        assert_eq!(
            description_of(record, "calls[0].turns[4].sequence"),
            "must be greater than 5, the highest sequence before it"
        );
    }

    #[test]
    fn a_turn_needs_a_speaker_and_a_finite_gain() {
        let record = proto::CallRecord {
            turns: vec![
                turn(1, proto::Speaker::Robot),
                proto::Turn {
                    volume_gain: Some(f64::NAN),
                    ..turn(2, proto::Speaker::Unspecified)
                },
                proto::Turn {
                    speaker: 9,
                    ..turn(3, proto::Speaker::Robot)
                },
            ],
            ..minimal()
        };
        assert_eq!(
            violated_fields(record),
            [
                "calls[0].turns[1].speaker",
                "calls[0].turns[1].volume_gain",
                "calls[0].turns[2].speaker"
            ]
        );
    }

    #[test]
    fn all_violations_are_reported_together() {
        let record = proto::CallRecord {
            source_call_id: String::new(),
            callee: "not a number".to_owned(),
            dial_time: None,
            outcome: 77,
            duration_ms: Some(-3),
            tags: vec![tag("", "x")],
            turns: vec![
                turn(2, proto::Speaker::Robot),
                turn(1, proto::Speaker::Unspecified),
            ],
            ..full()
        };
        assert_eq!(
            violated_fields(record),
            [
                "calls[0].source_call_id",
                "calls[0].callee",
                "calls[0].dial_time",
                "calls[0].duration_ms",
                "calls[0].outcome",
                "calls[0].tags[0].source_tag_id",
                "calls[0].turns[1].sequence",
                "calls[0].turns[1].speaker",
            ]
        );
    }

    #[test]
    fn struct_and_json_round_trip() {
        let value = json!({
            "string": "文本",
            "integer": 42,
            "negative": -7,
            "float": 0.25,
            "big": 9_007_199_254_740_992_i64,
            "true": true,
            "false": false,
            "null": null,
            "list": [1, "two", [3.5, null], {"four": false}],
            "object": {"nested": {"deeper": [{"a": 1}, []]}, "empty": {}},
        });
        let serde_json::Value::Object(map) = value.clone() else {
            panic!("test value is an object");
        };
        let wire = json_to_struct(&map);
        assert_eq!(
            wire.fields.get("integer"),
            Some(&prost_types::Value {
                kind: Some(Kind::NumberValue(42.0))
            })
        );
        let back = struct_to_json(wire.clone());
        assert_eq!(serde_json::Value::Object(back.clone()), value);
        assert_eq!(json_to_struct(&back), wire);
    }

    #[test]
    fn struct_values_json_cannot_hold_become_null() {
        let wire = prost_types::Struct {
            fields: [
                ("nan", Some(Kind::NumberValue(f64::NAN))),
                ("infinite", Some(Kind::NumberValue(f64::INFINITY))),
                ("unset", None),
            ]
            .into_iter()
            .map(|(name, kind)| (name.to_owned(), prost_types::Value { kind }))
            .collect(),
        };
        assert_eq!(
            serde_json::Value::Object(struct_to_json(wire)),
            json!({"nan": null, "infinite": null, "unset": null})
        );
    }

    #[test]
    fn timestamps_convert_within_the_valid_range() {
        let time = DateTime::from_timestamp(1_744_597_153, 123_456_789).expect("valid");
        let wire = utc_to_timestamp(time);
        assert_eq!(
            wire,
            prost_types::Timestamp {
                seconds: 1_744_597_153,
                nanos: 123_456_789
            }
        );
        assert_eq!(timestamp_to_utc(&wire), Some(time));

        assert_eq!(timestamp_to_utc(&at(0)), Some(utc(0)));
        let last = prost_types::Timestamp {
            seconds: MAX_TIMESTAMP_SECONDS,
            nanos: 999_999_999,
        };
        assert_eq!(
            timestamp_to_utc(&last).map(|time| time.to_rfc3339()),
            Some("9999-12-31T23:59:59.999999999+00:00".to_owned())
        );
        assert_eq!(timestamp_to_utc(&at(-1)), None);
        assert_eq!(timestamp_to_utc(&at(MAX_TIMESTAMP_SECONDS + 1)), None);
        assert_eq!(
            timestamp_to_utc(&prost_types::Timestamp {
                seconds: 0,
                nanos: 1_000_000_000
            }),
            None
        );
        assert_eq!(
            timestamp_to_utc(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
