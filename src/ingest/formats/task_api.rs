//! The dialer task API (seed 000): call detail and call brief (`parse_record`), a task's call
//! list (`parse_call_list`) and a task's numbers with their dial attempts (`parse_task_numbers`).
//!
//! Every key a parser does not model ends up in the `extra` of the object it belongs to; nested
//! objects that are modelled only in part keep their rest under their own key.

use serde_json::Value;

use crate::domain::SourceKey;
use crate::domain::call::{AudioPiece, Call, Extra, LevelRef, Region, TagRef, Transfer, Turn};
use crate::domain::tag::{Level, Tag, TagGroup};
use crate::domain::task::{CallAttempt, Task, TaskNumber};
use crate::ingest::Batch;
use crate::ingest::formats::fields::{Fields, parse_json};
use crate::ingest::formats::{FormatError, ParseContext};
use crate::proto::{
    CallOutcome, Carrier, Gender, HangupSide, NumberStatus, SourceFormat, Speaker, TaskRunState,
    TransferState,
};

const FORMAT: &str = "task_api";

/// `notify` of a turn row holding an interim ASR result (not part of the dialogue).
const INTERIM_ASR_NOTIFY: &str = "asrprogress_notify";

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// One call: the detail payload (`records`, `info.record`, `info.task`, `mobile_info`, …), the
/// brief payload (`{code, status, message, data: {record}}`), or a bare record object.
pub fn parse_record(payload: &[u8], context: &ParseContext) -> Result<Batch, FormatError> {
    let root = Fields::new(FORMAT, "$", parse_json(FORMAT, payload)?, context)?;
    let mut batch = Batch::default();
    let call = if root.has("info") || root.has("records") {
        parse_detail(root, &mut batch)?
    } else if root.has("callid") {
        record_to_call(root, &mut batch)?
    } else {
        parse_brief(root, &mut batch)?
    };
    batch.calls.push(call);
    Ok(batch)
}

/// A task's call list: `{data: [record…], total, last_page}`, possibly wrapped as
/// `{code, status, message, data: {data: […]}}`. Page metadata describes the response, not a
/// call, and is not stored.
pub fn parse_call_list(payload: &[u8], context: &ParseContext) -> Result<Batch, FormatError> {
    let root = Fields::new(FORMAT, "$", parse_json(FORMAT, payload)?, context)?;
    let (_, items) = page_items(root)?;
    let mut batch = Batch::default();
    for (path, item) in items {
        let record = Fields::new(FORMAT, path, item, context)?;
        let call = record_to_call(record, &mut batch)?;
        batch.calls.push(call);
    }
    Ok(batch)
}

/// A task's numbers with their attempts: `{code, status, message, data: {data: [number…]}}`.
/// The task is `context.source_task_id`, else the `task_id` of the payload's first attempt.
pub fn parse_task_numbers(payload: &[u8], context: &ParseContext) -> Result<Batch, FormatError> {
    let root = Fields::new(FORMAT, "$", parse_json(FORMAT, payload)?, context)?;
    let (list_path, items) = page_items(root)?;
    let mut batch = Batch::default();
    if items.is_empty() {
        return Ok(batch);
    }
    let task_key = numbers_task_key(&list_path, &items, context)?;
    for (path, item) in items {
        let fields = Fields::new(FORMAT, path, item, context)?;
        batch.numbers.push(parse_number(fields, &task_key)?);
    }
    batch.tasks.push(Task::new(SourceFormat::TaskApi, task_key));
    Ok(batch)
}

// ---------------------------------------------------------------------------------------------
// Payload shapes
// ---------------------------------------------------------------------------------------------

/// The detail payload: the call from `info.record`, its task, region and dialogue.
fn parse_detail(mut root: Fields<'_>, batch: &mut Batch) -> Result<Call, FormatError> {
    let mut info = root
        .object("info")?
        .ok_or_else(|| root.error("info", "is required"))?;
    let record = info
        .object("record")?
        .ok_or_else(|| info.error("record", "is required"))?;
    let mut call = record_to_call(record, batch)?;
    if let Some(task) = info.object("task")? {
        batch
            .tasks
            .push(parse_task(task, call.source_task_id.as_deref())?);
    }
    insert_nested(&mut call.extra, "info", info.rest());

    if let Some(mobile_info) = root.object("mobile_info")? {
        let rest = apply_mobile_info(mobile_info, &mut call.callee_region)?;
        insert_nested(&mut call.extra, "mobile_info", rest);
    }

    let rows = root.array("records")?;
    let dialogue = parse_dialogue(rows, root.context(), batch)?;
    call.turns = dialogue.turns;
    add_tag_refs(&mut call.tags, dialogue.tags);
    insert_list(&mut call.extra, "interim_asr_records", dialogue.interim);
    insert_list(&mut call.extra, "empty_records", dialogue.empty);

    merge_extra(&mut call.extra, root.rest(), "payload");
    Ok(call)
}

/// The brief payload: `{code, status, message, data: {record}}`; the envelope goes to extra.
fn parse_brief(mut root: Fields<'_>, batch: &mut Batch) -> Result<Call, FormatError> {
    let record = root
        .object("data")?
        .ok_or_else(|| root.error("data", "is required"))?;
    let mut call = record_to_call(record, batch)?;
    merge_extra(&mut call.extra, root.rest(), "envelope");
    Ok(call)
}

/// The items of a list page, `{data: […]}` or `{data: {data: […]}}`, with the list's path.
fn page_items(mut root: Fields<'_>) -> Result<(String, Vec<(String, Value)>), FormatError> {
    match root.take("data") {
        Some(page @ Value::Object(_)) => {
            let mut page = Fields::new(FORMAT, root.path_of("data"), page, root.context())?;
            let path = page.path_of("data");
            let items = page.array("data")?;
            Ok((path, items))
        }
        Some(list @ Value::Array(_)) => {
            root.keep("data", list);
            let path = root.path_of("data");
            let items = root.array("data")?;
            Ok((path, items))
        }
        None => Err(root.error("data", "is required")),
        Some(other) => {
            root.keep("data", other);
            Err(root.error("data", "expected a list or an object"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Call record
// ---------------------------------------------------------------------------------------------

/// A call record (detail `info.record`, brief `data`, call-list item) as a call without turns;
/// its tags, tag groups and level go to the batch.
fn record_to_call(mut fields: Fields<'_>, batch: &mut Batch) -> Result<Call, FormatError> {
    let call_id = fields.required_string("callid")?;
    let key = source_key(&fields, "callid", &call_id)?;
    let callee = fields.required_string("callee")?;
    let dial_time = fields
        .local_time("calldate")?
        .ok_or_else(|| fields.error("calldate", "is required"))?;
    let mut call = Call::new(SourceFormat::TaskApi, key, callee, dial_time);
    let mut nested = Extra::new();

    call.source_record_id = fields.string("id")?;
    call.source_task_id = fields.string("task_id")?;
    call.script_group_id = fields.string("group_id")?;
    call.caller = fields.string("caller_number")?;
    call.answer_time = fields.local_time("answerdate")?;
    call.hangup_time = fields.local_time("hangupdate")?;
    call.duration_ms = fields.i64("duration")?;
    call.talk_duration_ms = fields.i64("bill")?;
    call.hangup_cause = fields.string("hangupcause")?;
    call.error_code = fields.i32("error_code")?;
    call.hangup_side =
        code(&mut fields, "hangup_disposition", hangup_side).unwrap_or(HangupSide::Unspecified);
    call.rounds = fields.i32("rounds")?;
    call.score = fields.i64("score")?;
    call.gender = code(&mut fields, "gender", gender).unwrap_or(Gender::Unspecified);
    call.record_file = fields.string("recordfile")?;
    call.read_time = fields.local_time("read_at")?;
    call.source_create_time = fields.local_time("created_at")?;
    call.source_update_time = fields.local_time("updated_at")?;
    call.transfer = take_transfer(&mut fields)?;
    call.outcome = outcome(&call);
    call.level = take_level(&mut fields, batch)?;
    call.callee_region = take_list_region(&mut fields, &mut nested)?;
    call.tags = take_tags(&mut fields, "tags", batch)?;
    let group_ids = take_tag_groups(&mut fields, "tag_groups", batch)?;
    if !group_ids.is_empty() {
        let ids = group_ids.into_iter().map(Value::String).collect();
        nested.insert("tag_group_ids".to_owned(), Value::Array(ids));
    }

    call.extra = fields.rest();
    call.extra.extend(nested);
    Ok(call)
}

/// Answered when the call has an answer time or billed talk time.
fn outcome(call: &Call) -> CallOutcome {
    let talked = call.talk_duration_ms.is_some_and(|bill| bill > 0);
    if call.answer_time.is_some() || talked {
        CallOutcome::Answered
    } else {
        CallOutcome::Unspecified
    }
}

/// The transfer to a human (`bridge_*`); `None` when every bridge field is empty.
fn take_transfer(fields: &mut Fields<'_>) -> Result<Option<Transfer>, FormatError> {
    let bridge_call_id = fields.string("bridge_callid")?;
    let bridge_number = fields.string("bridge_number")?;
    let bridge_dial_time = fields.local_time("bridge_calldate")?;
    let bridge_answer_time = fields.local_time("bridge_answerdate")?;
    if bridge_call_id.is_none()
        && bridge_number.is_none()
        && bridge_dial_time.is_none()
        && bridge_answer_time.is_none()
    {
        return Ok(None);
    }
    let state = if bridge_call_id.is_none() {
        TransferState::NotTransferred
    } else if bridge_answer_time.is_some() {
        TransferState::Answered
    } else {
        TransferState::NotAnswered
    };
    Ok(Some(Transfer {
        state,
        bridge_call_id,
        bridge_number,
        bridge_dial_time,
        bridge_answer_time,
        ..Transfer::default()
    }))
}

/// `level_id` as the call's level reference; a `level` object also becomes a batch level.
fn take_level(fields: &mut Fields<'_>, batch: &mut Batch) -> Result<Option<LevelRef>, FormatError> {
    let level_id = fields.string("level_id")?;
    let level = match fields.object("level")? {
        Some(level) => Some(parse_level(level)?),
        None => None,
    };
    let source_level_id = level_id.or_else(|| level.as_ref().map(|level| level.key.id.clone()));
    if let Some(level) = level {
        add_level(batch, level);
    }
    Ok(source_level_id.map(|source_level_id| LevelRef { source_level_id }))
}

/// The region of a call-list item: `operator_name`, `city` {city, area_code, post_code, …} and
/// `province` {city: the province, …}. The codes `province_id`, `city_id`, `operator` stay.
fn take_list_region(fields: &mut Fields<'_>, nested: &mut Extra) -> Result<Region, FormatError> {
    let mut region = Region::default();
    set_carrier(&mut region, fields.string("operator_name")?);
    match take_text_or_object(fields, "city")? {
        TextOrObject::Absent => {}
        TextOrObject::Text(city) => region.city = Some(city),
        TextOrObject::Object(mut city) => {
            region.city = city.string("city")?;
            region.area_code = city.string("area_code")?;
            region.post_code = city.string("post_code")?;
            insert_nested(nested, "city", city.rest());
        }
    }
    match take_text_or_object(fields, "province")? {
        TextOrObject::Absent => {}
        TextOrObject::Text(province) => region.province = Some(province),
        TextOrObject::Object(mut province) => {
            region.province = province.string("city")?;
            insert_nested(nested, "province", province.rest());
        }
    }
    Ok(region)
}

/// The detail's `mobile_info` {mobile_type, province, city} onto the callee's region; returns
/// the keys not modelled.
fn apply_mobile_info(mut fields: Fields<'_>, region: &mut Region) -> Result<Extra, FormatError> {
    if let Some(carrier_name) = fields.string("mobile_type")? {
        set_carrier(region, Some(carrier_name));
    }
    if let Some(province) = fields.string("province")? {
        region.province = Some(province);
    }
    if let Some(city) = fields.string("city")? {
        region.city = Some(city);
    }
    Ok(fields.rest())
}

// ---------------------------------------------------------------------------------------------
// Dialogue
// ---------------------------------------------------------------------------------------------

/// What the `records[]` rows of a detail payload yield.
#[derive(Debug, Default)]
struct Dialogue {
    turns: Vec<Turn>,
    /// Tags of every row that is part of the dialogue, in row order.
    tags: Vec<TagRef>,
    /// Interim ASR rows, verbatim.
    interim: Vec<Value>,
    /// Rows with neither customer nor robot text, verbatim.
    empty: Vec<Value>,
}

/// Turns from the rows ordered by `sequence`; interim ASR rows and empty rows are set aside.
fn parse_dialogue(
    mut rows: Vec<(String, Value)>,
    context: &ParseContext,
    batch: &mut Batch,
) -> Result<Dialogue, FormatError> {
    rows.sort_by_key(|(_, row)| sequence_order(row));
    let mut dialogue = Dialogue::default();
    for (path, row) in rows {
        if is_interim(&row) {
            dialogue.interim.push(row);
            continue;
        }
        let customer = has_text(row.get("question"));
        let robot = has_text(row.get("answer_content"));
        if !customer && !robot {
            let mut fields = Fields::new(FORMAT, path, row.clone(), context)?;
            dialogue.tags.extend(take_tags(&mut fields, "tags", batch)?);
            dialogue.empty.push(row);
            continue;
        }
        let fields = Fields::new(FORMAT, path, row, context)?;
        let turns = row_turns(fields, customer, robot, batch)?;
        for turn in turns {
            dialogue.tags.extend(turn.tags.iter().cloned());
            dialogue.turns.push(turn);
        }
    }
    for (sequence, turn) in (1..).zip(dialogue.turns.iter_mut()) {
        turn.sequence = sequence;
    }
    Ok(dialogue)
}

/// Sort key of a row: by `sequence`, rows without one last (in payload order).
fn sequence_order(row: &Value) -> (bool, i64) {
    match row.get("sequence").and_then(integer_of) {
        Some(sequence) => (false, sequence),
        None => (true, 0),
    }
}

fn is_interim(row: &Value) -> bool {
    row.get("notify").and_then(Value::as_str) == Some(INTERIM_ASR_NOTIFY)
}

/// Whether a value is non-empty text (or a number, which reads as text).
fn has_text(value: Option<&Value>) -> bool {
    match value {
        Some(Value::String(text)) => !text.trim().is_empty(),
        Some(Value::Number(_)) => true,
        _ => false,
    }
}

/// The turns of one row: the customer's (`question`) first, then the robot's
/// (`answer_content`). The row's tags and unmodelled keys go to the first turn.
fn row_turns(
    mut fields: Fields<'_>,
    customer: bool,
    robot: bool,
    batch: &mut Batch,
) -> Result<Vec<Turn>, FormatError> {
    let common = Turn {
        source_turn_id: fields.string("id")?,
        time: fields.local_time("created_at")?,
        after_transfer: take_after_transfer(&mut fields, "bridge_status"),
        ..Turn::default()
    };
    let tags = take_tags(&mut fields, "tags", batch)?;
    let mut turns = Vec::with_capacity(2);
    if customer {
        turns.push(customer_turn(&mut fields, common.clone())?);
    }
    if robot {
        turns.push(robot_turn(&mut fields, common)?);
    }
    if let Some(first) = turns.first_mut() {
        first.tags = tags;
        first.extra = fields.rest();
    }
    Ok(turns)
}

/// What the customer said (`question`) and how it was recognised.
fn customer_turn(fields: &mut Fields<'_>, common: Turn) -> Result<Turn, FormatError> {
    Ok(Turn {
        speaker: Speaker::Customer,
        text: fields.string("question")?.unwrap_or_default(),
        speak_ms: fields.i64("speak_ms")?,
        question_index: fields.i32("question_index")?,
        matched_keyword: fields.string("keyword")?,
        score_delta: fields.i64("score")?,
        asr_engine: fields.string("asrtype")?,
        asr_latency_ms: fields.i64("asr_elapse")?,
        record_ms: fields.i64("record_ms")?,
        volume_gain: fields.f64("volume_gain")?,
        ..common
    })
}

/// What the robot said (`answer_content`), its script node and audio pieces.
fn robot_turn(fields: &mut Fields<'_>, common: Turn) -> Result<Turn, FormatError> {
    let text = fields.string("answer_content")?.unwrap_or_default();
    let mut audio_pieces = Vec::new();
    for (path, piece) in fields.array("contents")? {
        let piece = Fields::new(FORMAT, path, piece, fields.context())?;
        audio_pieces.push(audio_piece(piece)?);
    }
    Ok(Turn {
        speaker: Speaker::Robot,
        text,
        play_ms: fields.i64("play_ms")?,
        node_id: fields.string("answer_id")?,
        node_name: fields.string("answer_text")?,
        node_class: fields.string("word_class")?,
        audio_pieces,
        ..common
    })
}

/// An audio piece of a robot line (`contents[]`); `wav_second` is in seconds.
fn audio_piece(mut fields: Fields<'_>) -> Result<AudioPiece, FormatError> {
    let seconds = fields.f64("wav_second")?;
    Ok(AudioPiece {
        file_id: fields.string("file_id")?.unwrap_or_default(),
        sort: fields.i32("sort")?.unwrap_or_default(),
        text: fields.string("translate_text")?.unwrap_or_default(),
        duration_ms: seconds.map_or(0, seconds_to_ms),
        extra: fields.rest(),
    })
}

fn seconds_to_ms(seconds: f64) -> i64 {
    // Audio lengths are small; the cast saturates on anything absurd.
    (seconds * 1000.0).round() as i64
}

/// `bridge_status` 1 means the row comes after a transfer to a human; an unknown value is kept.
fn take_after_transfer(fields: &mut Fields<'_>, key: &str) -> bool {
    match fields.take(key) {
        None => false,
        Some(Value::Bool(flag)) => flag,
        Some(raw) => match integer_of(&raw) {
            Some(1) => true,
            Some(0) => false,
            _ => {
                fields.keep(key, raw);
                false
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Tags, tag groups, levels
// ---------------------------------------------------------------------------------------------

/// A list of tag objects: references for the call or turn, entities for the batch.
fn take_tags(
    fields: &mut Fields<'_>,
    key: &str,
    batch: &mut Batch,
) -> Result<Vec<TagRef>, FormatError> {
    let mut refs = Vec::new();
    for (path, tag) in fields.array(key)? {
        let tag = parse_tag(Fields::new(FORMAT, path, tag, fields.context())?, batch)?;
        refs.push(TagRef {
            source_tag_id: tag.key.id.clone(),
            name: Some(tag.name.clone()),
        });
        add_tag(batch, tag);
    }
    Ok(refs)
}

/// A tag (子标签) with its groups (`tag_groups` or `tag_group`).
fn parse_tag(mut fields: Fields<'_>, batch: &mut Batch) -> Result<Tag, FormatError> {
    let id = fields.required_string("id")?;
    let key = source_key(&fields, "id", &id)?;
    let name = fields.required_string("name")?;
    let mut group_ids = Vec::new();
    for groups_key in ["tag_groups", "tag_group"] {
        for group_id in take_tag_groups(&mut fields, groups_key, batch)? {
            if !group_ids.contains(&group_id) {
                group_ids.push(group_id);
            }
        }
    }
    Ok(Tag {
        source_format: SourceFormat::TaskApi,
        key,
        name,
        description: fields.string("description")?,
        color: fields.string("color")?,
        enabled: fields.bool("status")?.unwrap_or(true),
        group_ids,
        source_create_time: fields.local_time("created_at")?,
        source_update_time: fields.local_time("updated_at")?,
        extra: fields.rest(),
    })
}

/// A list of tag groups (objects, or bare ids): their ids in list order; objects also become
/// batch tag groups.
fn take_tag_groups(
    fields: &mut Fields<'_>,
    key: &str,
    batch: &mut Batch,
) -> Result<Vec<String>, FormatError> {
    let mut ids = Vec::new();
    for (path, group) in fields.array(key)? {
        match group {
            Value::String(id) if !id.trim().is_empty() => ids.push(id.trim().to_owned()),
            Value::Number(id) => ids.push(id.to_string()),
            group @ Value::Object(_) => {
                let group = parse_tag_group(Fields::new(FORMAT, path, group, fields.context())?)?;
                ids.push(group.key.id.clone());
                add_tag_group(batch, group);
            }
            _ => {
                return Err(FormatError {
                    format: FORMAT,
                    path,
                    message: "expected a tag group object or id".to_owned(),
                });
            }
        }
    }
    Ok(ids)
}

/// A tag group (母标签).
fn parse_tag_group(mut fields: Fields<'_>) -> Result<TagGroup, FormatError> {
    let id = fields.required_string("id")?;
    let key = source_key(&fields, "id", &id)?;
    Ok(TagGroup {
        source_format: SourceFormat::TaskApi,
        key,
        name: fields.required_string("name")?,
        scene_id: fields.string("tag_scene_id")?,
        source_create_time: fields.local_time("created_at")?,
        source_update_time: fields.local_time("updated_at")?,
        extra: fields.rest(),
    })
}

/// A level (评分等级) {id, name, alias, color}; its score range is not in the payload.
fn parse_level(mut fields: Fields<'_>) -> Result<Level, FormatError> {
    let id = fields.required_string("id")?;
    let key = source_key(&fields, "id", &id)?;
    Ok(Level {
        source_format: SourceFormat::TaskApi,
        key,
        name: fields.required_string("name")?,
        alias: fields.string("alias")?,
        color: fields.string("color")?,
        min_score: None,
        max_score: None,
        extra: fields.rest(),
    })
}

fn add_tag(batch: &mut Batch, tag: Tag) {
    if !batch.tags.iter().any(|known| known.key.id == tag.key.id) {
        batch.tags.push(tag);
    }
}

fn add_tag_group(batch: &mut Batch, group: TagGroup) {
    if !batch
        .tag_groups
        .iter()
        .any(|known| known.key.id == group.key.id)
    {
        batch.tag_groups.push(group);
    }
}

fn add_level(batch: &mut Batch, level: Level) {
    if !batch
        .levels
        .iter()
        .any(|known| known.key.id == level.key.id)
    {
        batch.levels.push(level);
    }
}

/// Adds references not yet present (by tag id), keeping first-seen order.
fn add_tag_refs(refs: &mut Vec<TagRef>, more: Vec<TagRef>) {
    for tag in more {
        if !refs
            .iter()
            .any(|known| known.source_tag_id == tag.source_tag_id)
        {
            refs.push(tag);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Task
// ---------------------------------------------------------------------------------------------

/// The detail's `info.task`; `fallback_id` (the record's `task_id`) keys it when `uuid` is
/// missing.
fn parse_task(mut fields: Fields<'_>, fallback_id: Option<&str>) -> Result<Task, FormatError> {
    let id = match fields.string("uuid")? {
        Some(uuid) => uuid,
        None => fallback_id
            .map(str::to_owned)
            .ok_or_else(|| fields.error("uuid", "is required"))?,
    };
    let key = source_key(&fields, "uuid", &id)?;
    let mut task = Task::new(SourceFormat::TaskApi, key);
    task.name = fields.string("name")?;
    task.source_create_time = fields.local_time("create_datetime")?;
    task.source_update_time = fields.local_time("alter_datetime")?;
    task.run_state = run_state(&mut fields);
    task.max_concurrent_calls = fields.i32("maximumcall")?;
    task.calls_per_second = fields.i32("call_per_second")?;
    task.redial_rounds = fields.i32("recycle_limit")?;
    task.ring_timeout_seconds = fields.i32("_originate_timeout")?;
    task.caller_id_number = fields.string("_origination_caller_id_number")?;
    task.call_notify_url = fields.string("call_notify_url")?;
    let mut nested = Extra::new();
    if let Some(mut group) = fields.object("group")? {
        task.script_group_id = group.string("id")?;
        task.script_group_name = group.string("name")?;
        task.tag_scene_id = group.string("tag_scene_id")?;
        insert_nested(&mut nested, "group", group.rest());
    }
    task.extra = fields.rest();
    task.extra.extend(nested);
    Ok(task)
}

/// `start`: 0 paused, 1 running. The raw value stays in extra in every case.
fn run_state(fields: &mut Fields<'_>) -> TaskRunState {
    let Some(raw) = fields.take("start") else {
        return TaskRunState::Unspecified;
    };
    let state = match integer_of(&raw) {
        Some(0) => TaskRunState::Paused,
        Some(1) => TaskRunState::Running,
        _ => TaskRunState::Unspecified,
    };
    fields.keep("start", raw);
    state
}

// ---------------------------------------------------------------------------------------------
// Task numbers
// ---------------------------------------------------------------------------------------------

/// The task of a number list: the context's, else the first attempt's `task_id`.
fn numbers_task_key(
    list_path: &str,
    items: &[(String, Value)],
    context: &ParseContext,
) -> Result<SourceKey, FormatError> {
    let (id, path) = match context.source_task_id.as_deref() {
        Some(id) if !id.trim().is_empty() => (id.to_owned(), "$".to_owned()),
        _ => first_attempt_task_id(items).ok_or_else(|| FormatError {
            format: FORMAT,
            path: list_path.to_owned(),
            message:
                "the task id is unknown: the payload does not name it, pass it as source_task_id"
                    .to_owned(),
        })?,
    };
    SourceKey::parse(&context.source_system, &id).map_err(|(part, message)| FormatError {
        format: FORMAT,
        path,
        message: format!("task id: {part} {message}"),
    })
}

/// The `task_id` of the first `call_history` row of the payload, with its path.
fn first_attempt_task_id(items: &[(String, Value)]) -> Option<(String, String)> {
    items.iter().find_map(|(path, item)| {
        let history = item.get("call_history")?.as_array()?;
        history.iter().enumerate().find_map(|(index, attempt)| {
            let id = match attempt.get("task_id")? {
                Value::String(id) if !id.trim().is_empty() => id.clone(),
                Value::Number(id) => id.to_string(),
                _ => return None,
            };
            Some((id, format!("{path}.call_history[{index}].task_id")))
        })
    })
}

/// A number of the task with its attempts; the latest call's own fields stay in extra.
fn parse_number(mut fields: Fields<'_>, task: &SourceKey) -> Result<TaskNumber, FormatError> {
    let number = fields.required_string("number")?;
    let mut region = Region {
        city: fields.string("city")?,
        province: fields.string("pro")?,
        area_code: fields.string("area_code")?,
        post_code: fields.string("post_code")?,
        ..Region::default()
    };
    set_carrier(&mut region, fields.string("mobile_type")?);
    let mut attempts = Vec::new();
    for (path, attempt) in fields.array("call_history")? {
        let attempt = Fields::new(FORMAT, path, attempt, fields.context())?;
        attempts.push(parse_attempt(attempt)?);
    }
    Ok(TaskNumber {
        source_format: SourceFormat::TaskApi,
        task: task.clone(),
        source_number_id: fields.string("id")?,
        number,
        region,
        blacklisted: fields.bool("is_blacklist")?.unwrap_or(false),
        status: code(&mut fields, "status", number_status).unwrap_or(NumberStatus::Unspecified),
        latest_source_call_id: fields.string("callid")?,
        attempts,
        extra: fields.rest(),
    })
}

/// One dial attempt (`call_history[]`).
fn parse_attempt(mut fields: Fields<'_>) -> Result<CallAttempt, FormatError> {
    Ok(CallAttempt {
        source_attempt_id: fields.string("id")?,
        source_call_id: fields.string("call_id")?,
        call_time: fields.local_time("call_time")?,
        duration_ms: fields.i64("duration")?,
        talk_duration_ms: fields.i64("bill")?,
        hangup_cause: fields.string("hangup_cause")?,
        sip_code: fields.string("hangup_code")?,
        call_status: fields.string("call_status")?,
        status: code(&mut fields, "status", number_status).unwrap_or(NumberStatus::Unspecified),
        record_file: fields.string("record_file")?,
        calling_number: fields.string("calling_number")?,
        extra: fields.rest(),
    })
}

// ---------------------------------------------------------------------------------------------
// Code tables
// ---------------------------------------------------------------------------------------------

/// Reads a coded integer; a value the table does not know (or that is not an integer) stays in
/// extra as it was, and the result is `None`.
fn code<T>(fields: &mut Fields<'_>, key: &str, table: fn(i64) -> Option<T>) -> Option<T> {
    let raw = fields.take(key)?;
    let mapped = integer_of(&raw).and_then(table);
    if mapped.is_none() {
        fields.keep(key, raw);
    }
    mapped
}

/// `gender`: 0 unknown, 1 female, 2 male, 3 probably female, 4 probably male.
fn gender(code: i64) -> Option<Gender> {
    match code {
        0 => Some(Gender::Unknown),
        1 => Some(Gender::Female),
        2 => Some(Gender::Male),
        3 => Some(Gender::ProbablyFemale),
        4 => Some(Gender::ProbablyMale),
        _ => None,
    }
}

/// `hangup_disposition`: who hung up first, 1 robot, 2 customer.
fn hangup_side(code: i64) -> Option<HangupSide> {
    match code {
        1 => Some(HangupSide::Robot),
        2 => Some(HangupSide::Customer),
        _ => None,
    }
}

/// Number status codes 0-12.
fn number_status(code: i64) -> Option<NumberStatus> {
    let status = match code {
        0 => NumberStatus::Waiting,
        1 => NumberStatus::Connected,
        2 => NumberStatus::LineFault,
        3 => NumberStatus::Rejected,
        4 => NumberStatus::NoAnswer,
        5 => NumberStatus::Vacant,
        6 => NumberStatus::PoweredOff,
        7 => NumberStatus::Suspended,
        8 => NumberStatus::Busy,
        9 => NumberStatus::Barred,
        10 => NumberStatus::Arrears,
        11 => NumberStatus::Blacklisted,
        12 => NumberStatus::CallLoss,
        _ => return None,
    };
    Some(status)
}

/// Sets the carrier from its name as written (kept in `carrier_name`).
fn set_carrier(region: &mut Region, name: Option<String>) {
    if let Some(name) = name {
        region.carrier = carrier(&name);
        region.carrier_name = Some(name);
    }
}

/// The carrier a name means: 联通/聯通 (`lt`), 电信/電信 (`dx`), 移动/移動 (`yd`), else other.
/// Parenthesised Latin annotations (pinyin, as in `聯(lián)通`) are ignored.
fn carrier(name: &str) -> Carrier {
    let plain = without_latin_annotations(name);
    let code = plain.trim().to_ascii_lowercase();
    let means = |simplified: &str, traditional: &str, short: &str| {
        plain.contains(simplified) || plain.contains(traditional) || code == short
    };
    if plain.trim().is_empty() {
        Carrier::Unspecified
    } else if means("联通", "聯通", "lt") {
        Carrier::ChinaUnicom
    } else if means("电信", "電信", "dx") {
        Carrier::ChinaTelecom
    } else if means("移动", "移動", "yd") {
        Carrier::ChinaMobile
    } else {
        Carrier::Other
    }
}

/// The text without parenthesised runs that contain no CJK character.
fn without_latin_annotations(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut annotation: Option<String> = None;
    for character in text.chars() {
        match (annotation.as_mut(), character) {
            (None, '(') => annotation = Some(String::new()),
            (None, other) => plain.push(other),
            (Some(inside), ')') => {
                if inside.is_empty() || inside.chars().any(is_cjk) {
                    plain.push('(');
                    plain.push_str(inside);
                    plain.push(')');
                }
                annotation = None;
            }
            (Some(inside), other) => inside.push(other),
        }
    }
    if let Some(inside) = annotation {
        plain.push('(');
        plain.push_str(&inside);
    }
    plain
}

fn is_cjk(character: char) -> bool {
    matches!(character, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{f900}'..='\u{faff}')
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// A source key in the context's system; an invalid id is an error at `key`.
fn source_key(fields: &Fields<'_>, key: &str, id: &str) -> Result<SourceKey, FormatError> {
    SourceKey::parse(&fields.context().source_system, id)
        .map_err(|(part, message)| fields.error(key, format!("{part} {message}")))
}

/// An integer in a JSON number or in text.
fn integer_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A key holding either text or an object.
enum TextOrObject<'context> {
    Absent,
    Text(String),
    Object(Fields<'context>),
}

/// Takes a key that may be text or an object; anything else stays in extra.
fn take_text_or_object<'context>(
    fields: &mut Fields<'context>,
    key: &str,
) -> Result<TextOrObject<'context>, FormatError> {
    match fields.take(key) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(TextOrObject::Text(text)),
        Some(object @ Value::Object(_)) => {
            let path = fields.path_of(key);
            Fields::new(FORMAT, path, object, fields.context()).map(TextOrObject::Object)
        }
        Some(other) => {
            fields.keep(key, other);
            Ok(TextOrObject::Absent)
        }
        None => Ok(TextOrObject::Absent),
    }
}

/// Puts the unmodelled rest of a nested object under its key, unless it is empty.
fn insert_nested(extra: &mut Extra, key: &str, rest: Extra) {
    if !rest.is_empty() {
        extra.insert(key.to_owned(), Value::Object(rest));
    }
}

/// Puts a list under its key, unless it is empty.
fn insert_list(extra: &mut Extra, key: &str, items: Vec<Value>) {
    if !items.is_empty() {
        extra.insert(key.to_owned(), Value::Array(items));
    }
}

/// Adds `more` to `extra`; keys `extra` already has go into an object under `collisions`.
fn merge_extra(extra: &mut Extra, more: Extra, collisions: &str) {
    let mut clashing = Extra::new();
    for (key, value) in more {
        if extra.contains_key(&key) {
            clashing.insert(key, value);
        } else {
            extra.insert(key, value);
        }
    }
    insert_nested(extra, collisions, clashing);
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::ingest::formats::DEFAULT_TIME_ZONE;

    const RECORD_INFO: &[u8] = include_bytes!("../../../tests/fixtures/task_api_record_info.json");
    const RECORD_BRIEF: &[u8] =
        include_bytes!("../../../tests/fixtures/task_api_record_brief.json");
    const CALL_LIST: &[u8] =
        include_bytes!("../../../tests/fixtures/task_api_done_task_phones.json");
    const TASK_NUMBERS: &[u8] =
        include_bytes!("../../../tests/fixtures/task_api_task_numbers.json");

    fn context() -> ParseContext {
        ParseContext::new("task_api", DEFAULT_TIME_ZONE)
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn only_call(batch: &Batch) -> &Call {
        assert_eq!(batch.calls.len(), 1);
        &batch.calls[0]
    }

    fn error_of(result: Result<Batch, FormatError>) -> FormatError {
        result.expect_err("the payload is rejected")
    }

    #[test]
    fn detail_record_becomes_a_call() {
        let batch = parse_record(RECORD_INFO, &context()).expect("parses");
        let call = only_call(&batch);
        assert_eq!(call.source_format, SourceFormat::TaskApi);
        assert_eq!(call.key.system, "task_api");
        assert_eq!(call.key.id, "281db55e-64e8-11e9-9bb2-3564eb72c846");
        assert_eq!(
            call.source_record_id.as_deref(),
            Some("9c736f53-0c1b-4047-b30a-dd87d2968541")
        );
        assert_eq!(
            call.source_task_id.as_deref(),
            Some("840a4346-d0ac-4800-9c73-3d06275a9158")
        );
        assert_eq!(call.script_group_id.as_deref(), Some("297"));
        assert_eq!(call.callee, "18651683344");
        assert_eq!(call.caller.as_deref(), Some("17361984317"));
        assert_eq!(call.dial_time, utc("2019-04-22T10:19:47Z"));
        assert_eq!(call.answer_time, Some(utc("2019-04-22T10:19:55Z")));
        assert_eq!(call.hangup_time, Some(utc("2019-04-22T10:20:05Z")));
        assert_eq!(call.source_create_time, Some(utc("2019-04-22T10:19:55Z")));
        assert_eq!(call.source_update_time, Some(utc("2019-04-22T10:20:07Z")));
        assert_eq!(call.read_time, None);
        assert_eq!(call.duration_ms, Some(17600));
        assert_eq!(call.talk_duration_ms, Some(10120));
        assert_eq!(call.outcome, CallOutcome::Answered);
        assert_eq!(call.hangup_cause.as_deref(), Some("NORMAL_CLEARING"));
        assert_eq!(call.error_code, Some(0));
        assert_eq!(call.hangup_side, HangupSide::Robot);
        assert_eq!(call.rounds, Some(2));
        assert_eq!(call.score, Some(0));
        assert_eq!(call.gender, Gender::Male);
        assert_eq!(
            call.level,
            Some(LevelRef {
                source_level_id: "e605e0b0-96b2-4af0-9b78-7cdd5fc6b783".to_owned()
            })
        );
        assert_eq!(
            call.record_file.as_deref(),
            Some(
                "/mnt/smartivr/recordings/2019-04-22/18651683344.297.18-19-55.281db55e-64e8-11e9-9bb2-3564eb72c846.wav"
            )
        );
        assert_eq!(call.transfer, None);

        // Derived display strings and unmodelled record keys stay in extra.
        assert_eq!(call.extra.get("gender_str"), Some(&json!("男")));
        assert_eq!(call.extra.get("hangup_disposition_str"), Some(&json!("AI")));
        assert_eq!(call.extra.get("bredge_number"), Some(&Value::Null));
        assert!(call.extra.contains_key("level_name"));
        assert_eq!(
            call.extra
                .get("crm_number")
                .and_then(|crm| crm.get("number")),
            Some(&json!("18651683344"))
        );
        // The rest of the root too; modelled keys do not.
        assert_eq!(call.extra.get("is_crm_exists"), Some(&json!(true)));
        assert_eq!(call.extra.get("is_intervene_bridge"), Some(&json!(false)));
        assert_eq!(
            call.extra
                .get("intervene_number")
                .and_then(Value::as_array)
                .map(Vec::len),
            Some(3)
        );
        assert_eq!(
            call.extra
                .get("utterances")
                .and_then(Value::as_array)
                .map(Vec::len),
            Some(6)
        );
        for modelled in [
            "callid",
            "calldate",
            "bill",
            "records",
            "info",
            "mobile_info",
            "level",
        ] {
            assert!(!call.extra.contains_key(modelled), "{modelled} is modelled");
        }
    }

    #[test]
    fn detail_region_comes_from_mobile_info() {
        let batch = parse_record(RECORD_INFO, &context()).expect("parses");
        let region = &only_call(&batch).callee_region;
        assert_eq!(region.carrier, Carrier::ChinaUnicom);
        assert_eq!(region.carrier_name.as_deref(), Some("聯(lián)通"));
        assert_eq!(region.province.as_deref(), Some("江蘇"));
        assert_eq!(region.city.as_deref(), Some("南京"));
    }

    #[test]
    fn detail_turns_skip_interim_asr_rows() {
        let batch = parse_record(RECORD_INFO, &context()).expect("parses");
        let call = only_call(&batch);
        let turns: Vec<(i32, Speaker, &str)> = call
            .turns
            .iter()
            .map(|turn| (turn.sequence, turn.speaker, turn.text.as_str()))
            .collect();
        assert_eq!(turns.len(), 4);
        assert_eq!(turns[0].0, 1);
        assert_eq!(turns[0].1, Speaker::Robot);
        assert!(turns[0].2.starts_with("同學(xué),您好"));
        assert_eq!(turns[1], (2, Speaker::Customer, "啊"));
        assert_eq!(turns[2], (3, Speaker::Customer, "不再見,再見。"));
        assert_eq!(
            turns[3],
            (
                4,
                Speaker::Robot,
                "感謝您的接聽,我就打擾您了,祝您生活愉快,再見"
            )
        );

        let interim = call
            .extra
            .get("interim_asr_records")
            .and_then(Value::as_array)
            .expect("interim rows kept");
        let interim_ids: Vec<_> = interim.iter().filter_map(|row| row.get("id")).collect();
        assert_eq!(
            interim_ids,
            [
                &json!("e68f7a65-f98e-4c12-ab1c-a8bc2071b02f"),
                &json!("8a0b22f8-a5d2-4fbf-9297-5c79da0dd82d")
            ]
        );
        // Verbatim: the interim row keeps every key it had.
        assert_eq!(interim[0].get("asrtype"), Some(&json!("aliyun")));
        assert_eq!(interim[0].get("volume_gain"), Some(&json!(8.040982)));
        for turn in &call.turns {
            assert_ne!(
                turn.source_turn_id.as_deref(),
                Some("e68f7a65-f98e-4c12-ab1c-a8bc2071b02f")
            );
            assert_ne!(
                turn.source_turn_id.as_deref(),
                Some("8a0b22f8-a5d2-4fbf-9297-5c79da0dd82d")
            );
        }
        assert!(!call.extra.contains_key("empty_records"));
    }

    #[test]
    fn detail_turn_fields() {
        let batch = parse_record(RECORD_INFO, &context()).expect("parses");
        let call = only_call(&batch);

        let opening = &call.turns[0];
        assert_eq!(
            opening.source_turn_id.as_deref(),
            Some("1c1ba3e3-83a4-4b7d-91b3-006abd3ff7bd")
        );
        assert_eq!(opening.time, Some(utc("2019-04-22T10:19:55Z")));
        assert_eq!(
            opening.node_id.as_deref(),
            Some("e0b4bfc6-e87d-4e1f-af24-d44c10a5bd0a")
        );
        assert_eq!(opening.node_name.as_deref(), Some("流程1"));
        assert_eq!(opening.node_class.as_deref(), Some("16"));
        assert_eq!(opening.play_ms, Some(0));
        assert!(!opening.after_transfer);
        assert_eq!(opening.audio_pieces.len(), 1);
        let piece = &opening.audio_pieces[0];
        assert_eq!(piece.file_id, "bf4d6a59-1a37-4ad8-a616-edcc5a9fd813");
        assert_eq!(piece.sort, 0);
        assert_eq!(piece.duration_ms, 15_000);
        assert!(piece.text.starts_with("同學(xué),您好"));
        assert_eq!(
            piece.extra.get("id"),
            Some(&json!("d2b32d5d-4b05-4b51-91ae-40da779123ab"))
        );
        assert_eq!(piece.extra.get("status"), Some(&json!(true)));
        // The opening row has no customer text, so its tags go to the robot turn.
        assert_eq!(
            opening.tags,
            [TagRef {
                source_tag_id: "4c318fbd-834f-4b41-bfbe-a631e5422812".to_owned(),
                name: Some("承認(rèn)發(fā)布".to_owned()),
            }]
        );
        // Row keys not modelled (and the unused customer fields) stay with the turn.
        assert_eq!(opening.extra.get("notify"), Some(&json!("enter")));
        assert_eq!(opening.extra.get("sequence"), Some(&json!(1)));
        assert_eq!(
            opening.extra.get("record_id"),
            Some(&json!("9c736f53-0c1b-4047-b30a-dd87d2968541"))
        );
        assert_eq!(opening.extra.get("question"), Some(&json!("")));

        let ah = &call.turns[1];
        assert_eq!(
            ah.source_turn_id.as_deref(),
            Some("8a6436b0-5b41-4dc8-bb4d-7e5451ecf5eb")
        );
        assert_eq!(ah.speak_ms, Some(875));
        assert_eq!(ah.question_index, Some(1));
        assert_eq!(ah.score_delta, Some(0));
        assert_eq!(ah.matched_keyword, None);
        assert_eq!(ah.play_ms, None);
        assert_eq!(ah.extra.get("play_ms"), Some(&json!(740)));
        assert_eq!(ah.extra.get("notify"), Some(&json!("asrmessage_notify")));

        // The last row yields a customer turn and then a robot turn.
        let goodbye = &call.turns[2];
        let closing = &call.turns[3];
        assert_eq!(goodbye.speaker, Speaker::Customer);
        assert_eq!(goodbye.matched_keyword.as_deref(), Some("再見"));
        assert_eq!(goodbye.speak_ms, Some(1395));
        assert_eq!(goodbye.question_index, Some(2));
        assert_eq!(goodbye.time, Some(utc("2019-04-22T10:20:02Z")));
        assert_eq!(goodbye.extra.get("sequence"), Some(&json!(5)));
        assert_eq!(closing.speaker, Speaker::Robot);
        assert_eq!(closing.source_turn_id, goodbye.source_turn_id);
        assert_eq!(closing.time, goodbye.time);
        assert_eq!(closing.play_ms, Some(3280));
        assert_eq!(closing.node_name.as_deref(), Some("普適結(jié)束語"));
        assert_eq!(closing.node_class.as_deref(), Some("1"));
        assert_eq!(closing.audio_pieces.len(), 1);
        assert_eq!(closing.audio_pieces[0].duration_ms, 3578);
        assert!(closing.extra.is_empty());
        assert!(closing.tags.is_empty());
    }

    #[test]
    fn detail_tags_groups_and_level() {
        let batch = parse_record(RECORD_INFO, &context()).expect("parses");
        let call = only_call(&batch);
        assert_eq!(
            call.tags,
            [TagRef {
                source_tag_id: "4c318fbd-834f-4b41-bfbe-a631e5422812".to_owned(),
                name: Some("承認(rèn)發(fā)布".to_owned()),
            }]
        );

        assert_eq!(batch.tags.len(), 1);
        let tag = &batch.tags[0];
        assert_eq!(tag.source_format, SourceFormat::TaskApi);
        assert_eq!(tag.key.id, "4c318fbd-834f-4b41-bfbe-a631e5422812");
        assert_eq!(tag.name, "承認(rèn)發(fā)布");
        assert_eq!(tag.description.as_deref(), Some("承認(rèn)發(fā)布"));
        assert_eq!(tag.color.as_deref(), Some("#2DF0D0"));
        assert!(tag.enabled);
        assert_eq!(tag.group_ids, ["1"]);
        assert_eq!(tag.source_create_time, Some(utc("2020-01-16T03:07:13Z")));
        assert_eq!(tag.source_update_time, Some(utc("2020-01-17T03:13:46Z")));
        assert!(tag.extra.contains_key("pivot"));
        assert_eq!(
            tag.extra.get("user_id"),
            Some(&json!("6cd3c09b-926d-4282-9470-946cd336e44a"))
        );

        assert_eq!(batch.tag_groups.len(), 1);
        let group = &batch.tag_groups[0];
        assert_eq!(group.key.id, "1");
        assert_eq!(group.name, "弱意向");
        assert_eq!(
            group.scene_id.as_deref(),
            Some("ad2c92fe-f993-47d6-9e86-f73a5511dcae")
        );
        assert_eq!(group.source_create_time, Some(utc("2019-12-17T13:14:57Z")));
        assert!(group.extra.contains_key("user_id"));

        assert_eq!(batch.levels.len(), 1);
        let level = &batch.levels[0];
        assert_eq!(level.key.id, "e605e0b0-96b2-4af0-9b78-7cdd5fc6b783");
        assert_eq!(level.name, "D級(jí)");
        assert_eq!(level.alias.as_deref(), Some("無意向"));
        assert_eq!(level.color.as_deref(), Some("#000"));
        assert_eq!((level.min_score, level.max_score), (None, None));
        assert!(level.extra.is_empty());
    }

    #[test]
    fn detail_task() {
        let batch = parse_record(RECORD_INFO, &context()).expect("parses");
        assert_eq!(batch.tasks.len(), 1);
        let task = &batch.tasks[0];
        assert_eq!(task.source_format, SourceFormat::TaskApi);
        assert_eq!(task.key.id, "840a4346-d0ac-4800-9c73-3d06275a9158");
        assert_eq!(task.name.as_deref(), Some("教育測(cè)試2"));
        assert_eq!(task.source_create_time, Some(utc("2018-12-20T08:43:21Z")));
        assert_eq!(task.source_update_time, Some(utc("2019-05-15T11:25:06Z")));
        assert_eq!(task.run_state, TaskRunState::Paused);
        assert_eq!(task.max_concurrent_calls, Some(1));
        assert_eq!(task.calls_per_second, Some(10));
        assert_eq!(task.redial_rounds, Some(1));
        assert_eq!(task.ring_timeout_seconds, Some(60));
        assert_eq!(task.caller_id_number.as_deref(), Some("300708"));
        assert_eq!(
            task.call_notify_url.as_deref(),
            Some("http://127.0.0.1:81/api/hangup_notify")
        );
        assert_eq!(task.script_group_id.as_deref(), Some("297"));
        assert_eq!(
            task.script_group_name.as_deref(),
            Some("電銷系統(tǒng)測(cè)試")
        );
        assert_eq!(
            task.tag_scene_id.as_deref(),
            Some("a13ad9cb-d9be-4498-bfe3-cd32c677f0dd")
        );
        assert_eq!(task.extra.get("start"), Some(&json!(0)));
        assert_eq!(task.extra.get("start_str"), Some(&json!("暫停")));
        assert_eq!(
            task.extra.get("progress_bar"),
            Some(&json!({"total": 3, "progress": 3, "percent": 100}))
        );
        assert_eq!(task.extra.get("sort"), Some(&json!(2)));
        assert_eq!(task.extra.get("dial_format"), Some(&json!("")));
        let group = task.extra.get("group").expect("group rest kept");
        assert_eq!(group.get("link_word_group_id"), Some(&json!("1")));
        assert_eq!(group.get("id"), None);
        for modelled in ["uuid", "name", "maximumcall", "_originate_timeout"] {
            assert!(!task.extra.contains_key(modelled), "{modelled} is modelled");
        }
    }

    #[test]
    fn brief_record_becomes_a_call() {
        let batch = parse_record(RECORD_BRIEF, &context()).expect("parses");
        let call = only_call(&batch);
        assert_eq!(call.key.id, "eb9464a2-adf2-4621-9157-64892e86e273");
        assert_eq!(
            call.source_record_id.as_deref(),
            Some("b1e91cb9-5994-47cc-a5df-25c3e8439a99")
        );
        assert_eq!(
            call.source_task_id.as_deref(),
            Some("d77d6f95-0e40-46d4-8bda-30343411da47")
        );
        assert_eq!(call.callee, "1890685250");
        assert_eq!(call.caller.as_deref(), Some("17368564879"));
        assert_eq!(call.dial_time, utc("2020-02-22T07:16:56Z"));
        assert_eq!(call.answer_time, Some(utc("2020-02-22T07:17:07Z")));
        assert_eq!(call.read_time, Some(utc("2020-03-02T08:08:51Z")));
        assert_eq!(call.duration_ms, Some(58999));
        assert_eq!(call.talk_duration_ms, Some(48079));
        assert_eq!(call.score, Some(165));
        assert_eq!(call.rounds, Some(12));
        assert_eq!(call.hangup_side, HangupSide::Customer);
        assert_eq!(call.gender, Gender::Male);
        assert_eq!(call.outcome, CallOutcome::Answered);
        assert_eq!(
            call.level
                .as_ref()
                .map(|level| level.source_level_id.as_str()),
            Some("d968d649-fe6f-425f-a3d4-aa800b8740ba")
        );
        assert!(call.turns.is_empty());
        assert!(call.tags.is_empty());
        assert_eq!(call.callee_region, Region::default());
        // Envelope and codes go to extra.
        assert_eq!(call.extra.get("code"), Some(&json!(200)));
        assert_eq!(call.extra.get("status"), Some(&json!("ok")));
        assert!(call.extra.contains_key("message"));
        assert_eq!(call.extra.get("operator"), Some(&json!(0)));
        assert_eq!(call.extra.get("province_id"), Some(&json!(0)));
        assert_eq!(
            call.extra.get("hangup_disposition_str"),
            Some(&json!("客戶"))
        );
        assert!(!call.extra.contains_key("data"));
        assert!(batch.tasks.is_empty());
        assert!(batch.levels.is_empty());
    }

    #[test]
    fn call_list_items_become_calls() {
        let batch = parse_call_list(CALL_LIST, &context()).expect("parses");
        let call = only_call(&batch);
        assert_eq!(call.key.id, "d6a577d4-7180-11e9-80bd-7fed30fcff3f");
        assert_eq!(
            call.source_record_id.as_deref(),
            Some("6d44d2f4-90f9-4621-8c77-e5e70c810623")
        );
        assert_eq!(
            call.source_task_id.as_deref(),
            Some("234cdcac-501c-47b5-9c06-47a658f363b8")
        );
        assert_eq!(call.script_group_id.as_deref(), Some("299"));
        assert_eq!(call.callee, "18810495721");
        assert_eq!(call.caller.as_deref(), Some("300708"));
        assert_eq!(call.dial_time, utc("2019-05-08T11:02:58Z"));
        assert_eq!(call.hangup_time, Some(utc("2019-05-08T11:03:58Z")));
        assert_eq!(call.read_time, Some(utc("2020-03-06T15:06:46Z")));
        assert_eq!(call.duration_ms, Some(60080));
        assert_eq!(call.talk_duration_ms, Some(31319));
        assert_eq!(call.gender, Gender::Female);
        assert_eq!(call.hangup_side, HangupSide::Robot);
        assert_eq!(call.rounds, Some(0));
        assert!(call.turns.is_empty());

        let region = &call.callee_region;
        assert_eq!(region.carrier, Carrier::ChinaUnicom);
        assert_eq!(region.carrier_name.as_deref(), Some("聯(lián)通"));
        assert_eq!(region.province.as_deref(), Some("江蘇"));
        assert_eq!(region.city.as_deref(), Some("南京"));
        assert_eq!(region.area_code.as_deref(), Some("025"));
        assert_eq!(region.post_code.as_deref(), Some("210000"));
        assert_eq!(call.extra.get("operator"), Some(&json!(2)));
        assert_eq!(call.extra.get("city_id"), Some(&json!(12)));
        assert_eq!(
            call.extra.get("city").and_then(|city| city.get("pid")),
            Some(&json!(3))
        );
        assert_eq!(
            call.extra
                .get("province")
                .and_then(|province| province.get("area_code")),
            Some(&json!("0519"))
        );

        assert_eq!(
            call.tags,
            [TagRef {
                source_tag_id: "ee109a20-6b98-4463-94fe-ea730e2188c7".to_owned(),
                name: Some("臟話".to_owned()),
            }]
        );
        assert_eq!(
            call.extra.get("tag_group_ids"),
            Some(&json!([
                "f7eba8dd-3721-4e15-b197-6b0c16639eec",
                "f7eba8dd-3721-4e15-b197-6b0c16639eec",
                "fbe408c5-f77f-49cd-9bd1-85ca0b434bcc"
            ]))
        );
        assert_eq!(
            call.level
                .as_ref()
                .map(|level| level.source_level_id.as_str()),
            Some("e605e0b0-96b2-4af0-9b78-7cdd5fc6b783")
        );

        assert_eq!(batch.tags.len(), 1);
        assert_eq!(batch.tags[0].color.as_deref(), Some("#2d8cf0"));
        assert_eq!(
            batch.tags[0].group_ids,
            ["fbe408c5-f77f-49cd-9bd1-85ca0b434bcc"]
        );
        let groups: Vec<(&str, &str)> = batch
            .tag_groups
            .iter()
            .map(|group| (group.key.id.as_str(), group.name.as_str()))
            .collect();
        assert_eq!(
            groups,
            [
                ("fbe408c5-f77f-49cd-9bd1-85ca0b434bcc", "無意向"),
                ("f7eba8dd-3721-4e15-b197-6b0c16639eec", "有意向"),
            ]
        );
        assert_eq!(batch.levels.len(), 1);
        assert_eq!(batch.levels[0].name, "D級(jí)");
    }

    #[test]
    fn call_list_accepts_the_envelope_and_names_bad_items() {
        let wrapped = json!({
            "code": 200, "status": "ok", "message": "ok",
            "data": {"data": [
                {"callid": "a", "callee": "1", "calldate": "2020-01-01 08:00:00"},
                {"callid": "b", "callee": "2", "calldate": "2020-01-01 08:00:00", "answerdate": "2020-01-01 08:00:05"}
            ], "total": 2, "last_page": 1}
        });
        let batch = parse_call_list(wrapped.to_string().as_bytes(), &context()).expect("parses");
        assert_eq!(batch.calls.len(), 2);
        assert_eq!(batch.calls[0].dial_time, utc("2020-01-01T00:00:00Z"));
        assert_eq!(batch.calls[0].outcome, CallOutcome::Unspecified);
        assert_eq!(batch.calls[1].outcome, CallOutcome::Answered);

        let bad = json!({"data": [
            {"callid": "a", "callee": "1", "calldate": "2020-01-01 08:00:00"},
            {"callid": "b", "callee": "2", "calldate": "yesterday"}
        ]});
        let error = error_of(parse_call_list(bad.to_string().as_bytes(), &context()));
        assert_eq!(error.format, "task_api");
        assert_eq!(error.path, "$.data[1].calldate");
    }

    #[test]
    fn transfer_and_unknown_codes() {
        let payload = json!({"data": {
            "callid": "c", "callee": "1", "calldate": "2020-01-01 08:00:00",
            "bridge_callid": "bridge-1", "bridge_number": "8001",
            "bridge_calldate": "2020-01-01 08:01:00", "bridge_answerdate": "2020-01-01 08:01:05",
            "gender": 9, "hangup_disposition": 0
        }});
        let batch = parse_record(payload.to_string().as_bytes(), &context()).expect("parses");
        let call = only_call(&batch);
        let transfer = call.transfer.as_ref().expect("transferred");
        assert_eq!(transfer.state, TransferState::Answered);
        assert_eq!(transfer.bridge_call_id.as_deref(), Some("bridge-1"));
        assert_eq!(transfer.bridge_number.as_deref(), Some("8001"));
        assert_eq!(
            transfer.bridge_answer_time,
            Some(utc("2020-01-01T00:01:05Z"))
        );
        assert_eq!(call.gender, Gender::Unspecified);
        assert_eq!(call.extra.get("gender"), Some(&json!(9)));
        assert_eq!(call.hangup_side, HangupSide::Unspecified);
        assert_eq!(call.extra.get("hangup_disposition"), Some(&json!(0)));

        let unanswered = json!({"callid": "c", "callee": "1", "calldate": "2020-01-01 08:00:00",
            "bridge_callid": "bridge-1", "bridge_answerdate": null});
        let batch = parse_record(unanswered.to_string().as_bytes(), &context()).expect("parses");
        assert_eq!(
            only_call(&batch)
                .transfer
                .as_ref()
                .map(|transfer| transfer.state),
            Some(TransferState::NotAnswered)
        );
    }

    #[test]
    fn task_numbers_with_attempts() {
        let batch = parse_task_numbers(TASK_NUMBERS, &context()).expect("parses");
        assert_eq!(batch.tasks.len(), 1);
        assert_eq!(
            batch.tasks[0].key.id,
            "772dd881-dcf7-42ee-a32b-b40a0ee5afb7"
        );
        assert_eq!(batch.numbers.len(), 1);
        let number = &batch.numbers[0];
        assert_eq!(number.source_format, SourceFormat::TaskApi);
        assert_eq!(number.task.id, "772dd881-dcf7-42ee-a32b-b40a0ee5afb7");
        assert_eq!(number.number, "18651683344");
        assert_eq!(number.source_number_id.as_deref(), Some("1691"));
        assert_eq!(number.status, NumberStatus::Connected);
        assert!(!number.blacklisted);
        assert_eq!(
            number.latest_source_call_id.as_deref(),
            Some("90a48ed3-a5f6-4904-b1f3-a9ec883b069f")
        );
        assert_eq!(number.region.city.as_deref(), Some("南京"));
        assert_eq!(number.region.province.as_deref(), Some("江蘇"));
        assert_eq!(number.region.carrier, Carrier::ChinaUnicom);
        assert_eq!(number.region.area_code.as_deref(), Some("025"));
        assert_eq!(number.region.post_code.as_deref(), Some("210000"));
        assert_eq!(number.extra.get("bill"), Some(&json!(26638)));
        assert_eq!(
            number.extra.get("calldate"),
            Some(&json!("2020-03-06 23:04:37"))
        );
        assert_eq!(number.extra.get("status_str"), Some(&json!("呼叫成功")));
        assert!(!number.extra.contains_key("call_history"));

        assert_eq!(number.attempts.len(), 2);
        let connected = &number.attempts[0];
        assert_eq!(connected.source_attempt_id.as_deref(), Some("356036"));
        assert_eq!(
            connected.source_call_id.as_deref(),
            Some("90a48ed3-a5f6-4904-b1f3-a9ec883b069f")
        );
        assert_eq!(connected.call_time, Some(utc("2020-03-06T15:04:37Z")));
        assert_eq!(connected.duration_ms, Some(35639));
        assert_eq!(connected.talk_duration_ms, Some(26638));
        assert_eq!(connected.hangup_cause.as_deref(), Some("NORMAL_CLEARING"));
        assert_eq!(connected.sip_code.as_deref(), Some("200"));
        assert_eq!(connected.call_status.as_deref(), Some("answer"));
        assert_eq!(connected.status, NumberStatus::Connected);
        assert_eq!(connected.calling_number.as_deref(), Some("17361984317"));
        assert!(connected.record_file.is_some());
        assert_eq!(connected.extra.get("number_id"), Some(&json!(1691)));
        assert_eq!(connected.extra.get("operator"), Some(&json!(2)));

        let busy = &number.attempts[1];
        assert_eq!(busy.source_attempt_id.as_deref(), Some("354060"));
        assert_eq!(busy.status, NumberStatus::Busy);
        assert_eq!(busy.sip_code, None);
        assert_eq!(busy.record_file, None);
        assert_eq!(busy.talk_duration_ms, Some(0));
        assert_eq!(busy.call_status.as_deref(), Some("busy now"));
    }

    #[test]
    fn task_numbers_use_the_context_task_and_keep_unknown_status() {
        let payload = json!({"code": 200, "data": {"data": [
            {"number": "13800000000", "status": 42, "mobile_type": "電信", "is_blacklist": 1},
            {"number": "13900000000", "status": 0, "mobile_type": "移动"},
            {"number": "13700000000", "status": "12", "mobile_type": "虚拟运营商"}
        ]}});
        let mut context = context();
        context.source_task_id = Some("task-7".to_owned());
        let batch = parse_task_numbers(payload.to_string().as_bytes(), &context).expect("parses");
        assert_eq!(batch.tasks.len(), 1);
        assert_eq!(batch.tasks[0].key.id, "task-7");
        let statuses: Vec<_> = batch.numbers.iter().map(|number| number.status).collect();
        assert_eq!(
            statuses,
            [
                NumberStatus::Unspecified,
                NumberStatus::Waiting,
                NumberStatus::CallLoss
            ]
        );
        assert_eq!(batch.numbers[0].extra.get("status"), Some(&json!(42)));
        assert!(batch.numbers[0].blacklisted);
        let carriers: Vec<_> = batch
            .numbers
            .iter()
            .map(|number| number.region.carrier)
            .collect();
        assert_eq!(
            carriers,
            [Carrier::ChinaTelecom, Carrier::ChinaMobile, Carrier::Other]
        );
        assert!(
            batch
                .numbers
                .iter()
                .all(|number| number.task.id == "task-7")
        );
    }

    #[test]
    fn task_numbers_without_a_task_id_are_rejected() {
        let payload =
            json!({"code": 200, "data": {"data": [{"number": "13800000000", "status": 0}]}});
        let error = error_of(parse_task_numbers(
            payload.to_string().as_bytes(),
            &context(),
        ));
        assert_eq!(error.path, "$.data.data");
        assert!(
            error.message.contains("task id is unknown"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("source_task_id"),
            "{}",
            error.message
        );
    }

    #[test]
    fn invalid_json_is_rejected_at_the_root() {
        for parse in [parse_record, parse_call_list, parse_task_numbers] {
            let error = error_of(parse(b"{not json", &context()));
            assert_eq!(error.format, "task_api");
            assert_eq!(error.path, "$");
        }
    }

    #[test]
    fn missing_callid_is_rejected() {
        let detail = String::from_utf8_lossy(RECORD_INFO).replace(
            "\"callid\": \"281db55e-64e8-11e9-9bb2-3564eb72c846\",\n      \"score\"",
            "\"score\"",
        );
        let error = error_of(parse_record(detail.as_bytes(), &context()));
        assert_eq!(error.path, "$.info.record.callid");
        assert_eq!(error.message, "is required");

        let brief =
            json!({"code": 200, "data": {"callee": "1", "calldate": "2020-01-01 08:00:00"}});
        let error = error_of(parse_record(brief.to_string().as_bytes(), &context()));
        assert_eq!(error.path, "$.data.callid");
    }

    #[test]
    fn missing_calldate_is_rejected() {
        let brief = String::from_utf8_lossy(RECORD_BRIEF)
            .replace("\"calldate\": \"2020-02-22 15:16:56\",", "");
        let error = error_of(parse_record(brief.as_bytes(), &context()));
        assert_eq!(error.path, "$.data.calldate");
        assert_eq!(error.message, "is required");

        let list = json!({"data": [{"callid": "a", "callee": "1"}]});
        let error = error_of(parse_call_list(list.to_string().as_bytes(), &context()));
        assert_eq!(error.path, "$.data[0].calldate");
    }

    #[test]
    fn rows_without_text_are_kept_aside() {
        let payload = json!({
            "info": {"record": {"callid": "c", "callee": "1", "calldate": "2020-01-01 08:00:00"}},
            "records": [
                {"id": "r2", "sequence": 2, "notify": "asrmessage_notify", "question": "好的", "bridge_status": 1},
                {"id": "r1", "sequence": 1, "notify": "enter", "question": "", "answer_content": null,
                 "tags": [{"id": "t1", "name": "x", "tag_groups": [7]}]}
            ]
        });
        let batch = parse_record(payload.to_string().as_bytes(), &context()).expect("parses");
        let call = only_call(&batch);
        assert_eq!(call.turns.len(), 1);
        assert_eq!(call.turns[0].sequence, 1);
        assert!(call.turns[0].after_transfer);
        assert_eq!(call.turns[0].source_turn_id.as_deref(), Some("r2"));
        let empty = call.extra.get("empty_records").and_then(Value::as_array);
        assert_eq!(empty.map(Vec::len), Some(1));
        assert_eq!(call.tags.len(), 1);
        assert_eq!(batch.tags[0].group_ids, ["7"]);
        assert!(batch.tasks.is_empty());
    }

    #[test]
    fn carrier_names() {
        assert_eq!(carrier("联通"), Carrier::ChinaUnicom);
        assert_eq!(carrier("中國聯(lián)通"), Carrier::ChinaUnicom);
        assert_eq!(carrier("電(diàn)信"), Carrier::ChinaTelecom);
        assert_eq!(carrier("移動(dòng)"), Carrier::ChinaMobile);
        assert_eq!(carrier("yd"), Carrier::ChinaMobile);
        assert_eq!(carrier("广电"), Carrier::Other);
        assert_eq!(carrier(" "), Carrier::Unspecified);
    }
}
