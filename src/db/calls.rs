//! The `calls` aggregate: a call with its turns, tags and feed event, written together.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::DbError;
use crate::db::catalog::{self, RefIds, RefKeys, RefKind, RefSeed};
use crate::domain::TenantId;
use crate::domain::call::{Call, TagRef, Turn};
use crate::domain::transcript;
use crate::proto::{CallEventKind, CallState};

/// Server ids of what a call refers to, resolved from its source ids.
#[derive(Debug, Clone, Default)]
pub struct CallRefs {
    pub task_id: Option<Uuid>,
    pub level_id: Option<Uuid>,
    /// Ids of the call's tags, in the call's order.
    pub tag_ids: Vec<Uuid>,
    /// Ids of each turn's tags, in turn order.
    pub turn_tag_ids: Vec<Vec<Uuid>>,
}

/// What storing a call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCall {
    pub id: Uuid,
    pub version: i64,
    pub outcome: StoreOutcome,
}

/// One row of `calls` as the upsert reads it (`json_populate_recordset(NULL::calls, …)`): the
/// field names are the column names. The column lists of the statement are derived from this
/// struct, so a column is added in one place.
#[derive(Serialize)]
struct CallRow<'call> {
    id: Uuid,
    source_system: &'call str,
    source_call_id: &'call str,
    source_format: i16,
    state: i16,
    /// bytea in its text form, `\x` and hex digits.
    content_hash: String,
    task_id: Option<Uuid>,
    source_task_id: Option<&'call str>,
    source_record_id: Option<&'call str>,
    script_group_id: Option<&'call str>,
    callee: &'call str,
    caller: Option<&'call str>,
    province: Option<&'call str>,
    city: Option<&'call str>,
    area_code: Option<&'call str>,
    post_code: Option<&'call str>,
    carrier: i16,
    carrier_name: Option<&'call str>,
    region_text: Option<&'call str>,
    customer: Option<&'call crate::domain::call::Customer>,
    dial_time: DateTime<Utc>,
    answer_time: Option<DateTime<Utc>>,
    hangup_time: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    talk_duration_ms: Option<i64>,
    billed_minutes: Option<i32>,
    outcome: i16,
    number_status: i16,
    hangup_cause: Option<&'call str>,
    end_reason: Option<&'call str>,
    sip_code: Option<&'call str>,
    hangup_side: i16,
    error_code: Option<i32>,
    huawei: Option<&'call crate::domain::call::HuaweiResult>,
    number_check_status: i16,
    rounds: Option<i32>,
    asks_count: Option<i32>,
    call_count: Option<i32>,
    score: Option<i64>,
    level_id: Option<Uuid>,
    gender: i16,
    last_reply: Option<&'call str>,
    end_node: Option<&'call str>,
    classification: Option<&'call crate::domain::call::Classification>,
    labels: &'call [String],
    dynamic_labels: &'call [String],
    satisfaction: i16,
    call_mode: i16,
    call_mode_code: Option<i32>,
    first_connected: Option<bool>,
    transfer_state: i16,
    transfer: Option<&'call crate::domain::call::Transfer>,
    record_file: Option<&'call str>,
    record_path: Option<&'call str>,
    read_time: Option<DateTime<Utc>>,
    custom_fields: &'call std::collections::BTreeMap<String, String>,
    turn_count: i32,
    source_create_time: Option<DateTime<Utc>>,
    source_update_time: Option<DateTime<Utc>>,
    extra: &'call crate::domain::call::Extra,
}

impl<'call> CallRow<'call> {
    fn new(call: &'call Call, refs: &CallRefs) -> Self {
        let region = &call.callee_region;
        let hash: String = call
            .content_hash()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Self {
            id: Uuid::now_v7(),
            source_system: &call.key.system,
            source_call_id: &call.key.id,
            source_format: call.source_format as i16,
            state: call.state as i16,
            content_hash: format!("\\x{hash}"),
            task_id: refs.task_id,
            source_task_id: call.source_task_id.as_deref(),
            source_record_id: call.source_record_id.as_deref(),
            script_group_id: call.script_group_id.as_deref(),
            callee: &call.callee,
            caller: call.caller.as_deref(),
            province: region.province.as_deref(),
            city: region.city.as_deref(),
            area_code: region.area_code.as_deref(),
            post_code: region.post_code.as_deref(),
            carrier: region.carrier as i16,
            carrier_name: region.carrier_name.as_deref(),
            region_text: region.text.as_deref(),
            customer: call.customer.as_ref(),
            dial_time: call.dial_time,
            answer_time: call.answer_time,
            hangup_time: call.hangup_time,
            duration_ms: call.duration_ms,
            talk_duration_ms: call.talk_duration_ms,
            billed_minutes: call.billed_minutes,
            outcome: call.outcome as i16,
            number_status: call.number_status as i16,
            hangup_cause: call.hangup_cause.as_deref(),
            end_reason: call.end_reason.as_deref(),
            sip_code: call.sip_code.as_deref(),
            hangup_side: call.hangup_side as i16,
            error_code: call.error_code,
            huawei: call.huawei.as_ref(),
            number_check_status: call.number_check_status as i16,
            rounds: call.rounds,
            asks_count: call.asks_count,
            call_count: call.call_count,
            score: call.score,
            level_id: refs.level_id,
            gender: call.gender as i16,
            last_reply: call.last_reply.as_deref(),
            end_node: call.end_node.as_deref(),
            classification: call.classification.as_ref(),
            labels: &call.labels,
            dynamic_labels: &call.dynamic_labels,
            satisfaction: call.satisfaction as i16,
            call_mode: call.call_mode as i16,
            call_mode_code: call.call_mode_code,
            first_connected: call.first_connected,
            transfer_state: call
                .transfer
                .as_ref()
                .map_or(0, |transfer| transfer.state as i16),
            transfer: call.transfer.as_ref(),
            record_file: call.record_file.as_deref(),
            record_path: call.record_path.as_deref(),
            read_time: call.read_time,
            custom_fields: &call.custom_fields,
            turn_count: i32::try_from(call.turns.len()).unwrap_or(i32::MAX),
            source_create_time: call.source_create_time,
            source_update_time: call.source_update_time,
            extra: &call.extra,
        }
    }
}

/// The columns of [`CallRow`], in its field order.
static CALL_COLUMNS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let sample = Call::new(
        crate::proto::SourceFormat::Native,
        crate::domain::SourceKey {
            system: String::new(),
            id: String::new(),
        },
        String::new(),
        DateTime::<Utc>::UNIX_EPOCH,
    );
    let row = CallRow::new(&sample, &CallRefs::default());
    match serde_json::to_value(&row) {
        Ok(Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => Vec::new(),
    }
});

/// Upserts a set of calls (distinct keys) and writes a feed event for each one that changed,
/// in one statement. Rows whose content hash is unchanged are left alone and not returned.
static UPSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = CALL_COLUMNS.join(", ");
    let updates: Vec<String> = CALL_COLUMNS
        .iter()
        .filter(|column| !["id", "source_system", "source_call_id"].contains(&column.as_str()))
        .map(|column| format!("{column} = EXCLUDED.{column}"))
        .collect();
    format!(
        "WITH input AS (
             SELECT * FROM json_populate_recordset(NULL::calls, $2::json)
         ),
         upserted AS (
             INSERT INTO calls AS c (tenant_id, feed_tx, {columns})
             SELECT $1, pg_current_xact_id(), {columns} FROM input
             ON CONFLICT (tenant_id, source_system, source_call_id) DO UPDATE
             SET {updates}, version = c.version + 1, update_time = now(),
                 -- The feed's ordering key: never before the call's previous event.
                 feed_tx = greatest(c.feed_tx, pg_current_xact_id())
             WHERE c.content_hash IS DISTINCT FROM EXCLUDED.content_hash
             RETURNING c.id, c.version, c.task_id, c.state, c.feed_tx, (c.xmax = 0) AS inserted,
                       c.source_system, c.source_call_id,
                       -- The statement's snapshot: the state before this upsert.
                       (SELECT p.state FROM calls p
                        WHERE p.tenant_id = $1 AND p.source_system = c.source_system
                          AND p.source_call_id = c.source_call_id) AS previous_state
         ),
         events AS (
             INSERT INTO feed_events (tenant_id, tx_id, kind, call_id, call_version, task_id)
             SELECT $1, u.feed_tx,
                    CASE WHEN u.inserted THEN $3::smallint
                         WHEN u.previous_state = $6::smallint AND u.state = $7::smallint
                         THEN $5::smallint
                         ELSE $4::smallint END,
                    u.id, u.version, u.task_id
             FROM upserted u
         )
         SELECT id, source_system, source_call_id, version, inserted FROM upserted",
        updates = updates.join(", "),
    )
});

type KeyedRow = (Uuid, String, String, i64);

/// Stores calls with their turns, tags and feed events. The keys must be distinct (the writer
/// splits repeated keys into rounds). The caller owns the transaction, so each call is
/// committed whole or not at all. Returns one result per call, in order.
pub async fn store_calls(
    connection: &mut PgConnection,
    tenant: &TenantId,
    calls: &[&Call],
) -> Result<Vec<StoredCall>, DbError> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let refs = resolve_refs(connection, tenant, calls).await?;
    let rows: Vec<CallRow<'_>> = calls
        .iter()
        .zip(&refs)
        .map(|(call, refs)| CallRow::new(call, refs))
        .collect();
    let rows = serde_json::to_string(&rows)
        .map_err(|error| DbError::InvalidData(sqlx::Error::Encode(Box::new(error))))?;
    let changed: Vec<(Uuid, String, String, i64, bool)> = sqlx::query_as(UPSERT_SQL.as_str())
        .bind(tenant.as_str())
        .bind(rows)
        .bind(CallEventKind::CallCreated as i16)
        .bind(CallEventKind::CallUpdated as i16)
        .bind(CallEventKind::CallCompleted as i16)
        .bind(CallState::InProgress as i16)
        .bind(CallState::Completed as i16)
        .fetch_all(&mut *connection)
        .await?;

    let mut stored: HashMap<(String, String), StoredCall> = HashMap::with_capacity(calls.len());
    let mut updated_ids = Vec::new();
    for (id, system, source_id, version, inserted) in changed {
        if !inserted {
            updated_ids.push(id);
        }
        let outcome = if inserted {
            StoreOutcome::Created
        } else {
            StoreOutcome::Updated
        };
        stored.insert(
            (system, source_id),
            StoredCall {
                id,
                version,
                outcome,
            },
        );
    }

    // The dialogue, its transcripts and the tags of changed calls are replaced whole.
    if !updated_ids.is_empty() {
        sqlx::query(
            "WITH turn_tags AS (
                 DELETE FROM turn_tags WHERE tenant_id = $1 AND call_id = ANY($2)
             ),
             turns AS (
                 DELETE FROM turns WHERE tenant_id = $1 AND call_id = ANY($2)
             ),
             transcripts AS (
                 DELETE FROM call_transcripts WHERE tenant_id = $1 AND call_id = ANY($2)
             )
             DELETE FROM call_tags WHERE tenant_id = $1 AND call_id = ANY($2)",
        )
        .bind(tenant.as_str())
        .bind(&updated_ids)
        .execute(&mut *connection)
        .await?;
    }
    let mut written = Vec::with_capacity(stored.len());
    for (call, refs) in calls.iter().zip(&refs) {
        if let Some(stored) = stored.get(&(call.key.system.clone(), call.key.id.clone())) {
            written.push(CallContent {
                call_id: stored.id,
                turns: &call.turns,
                turn_tag_ids: &refs.turn_tag_ids,
                tag_ids: &refs.tag_ids,
            });
        }
    }
    insert_contents(connection, tenant, &written).await?;

    // Unchanged calls (duplicate deliveries) were not returned by the upsert.
    if stored.len() < calls.len() {
        let (systems, source_ids): (Vec<&str>, Vec<&str>) = calls
            .iter()
            .filter(|call| !stored.contains_key(&(call.key.system.clone(), call.key.id.clone())))
            .map(|call| (call.key.system.as_str(), call.key.id.as_str()))
            .unzip();
        let unchanged: Vec<KeyedRow> = sqlx::query_as(
            "SELECT c.id, k.system, k.id, c.version
             FROM unnest($2::text[], $3::text[]) AS k (system, id)
             CROSS JOIN LATERAL (
                 SELECT id, version FROM calls
                 WHERE tenant_id = $1 AND source_system = k.system AND source_call_id = k.id
                 LIMIT 1
             ) c",
        )
        .bind(tenant.as_str())
        .bind(systems)
        .bind(source_ids)
        .fetch_all(&mut *connection)
        .await?;
        for (id, system, source_id, version) in unchanged {
            stored.entry((system, source_id)).or_insert(StoredCall {
                id,
                version,
                outcome: StoreOutcome::Unchanged,
            });
        }
    }

    calls
        .iter()
        .map(|call| {
            stored
                .get(&(call.key.system.clone(), call.key.id.clone()))
                .copied()
                .ok_or(DbError::NotFound)
        })
        .collect()
}

/// Turns the calls' source references into server ids, creating what is missing: one lookup
/// per kind of reference for the whole set of calls.
async fn resolve_refs(
    connection: &mut PgConnection,
    tenant: &TenantId,
    calls: &[&Call],
) -> Result<Vec<CallRefs>, DbError> {
    let mut tasks = RefKeys::new();
    let mut levels = RefKeys::new();
    let mut tags = RefKeys::new();
    let seed = |call: &Call, name: Option<&String>| RefSeed {
        format: call.source_format,
        name: name.cloned().unwrap_or_default(),
    };
    let mut add_tag = |call: &Call, tag: &TagRef| {
        let entry = tags
            .entry((call.key.system.clone(), tag.source_tag_id.clone()))
            .or_insert_with(|| seed(call, None));
        if entry.name.is_empty()
            && let Some(name) = &tag.name
        {
            entry.name.clone_from(name);
        }
    };
    for call in calls {
        for tag in call
            .tags
            .iter()
            .chain(call.turns.iter().flat_map(|turn| &turn.tags))
        {
            add_tag(call, tag);
        }
        if let Some(task) = &call.source_task_id {
            tasks
                .entry((call.key.system.clone(), task.clone()))
                .or_insert_with(|| seed(call, None));
        }
        if let Some(level) = &call.level {
            levels
                .entry((call.key.system.clone(), level.source_level_id.clone()))
                .or_insert_with(|| seed(call, None));
        }
    }
    let task_ids = catalog::ids_for(connection, tenant, RefKind::Task, &tasks).await?;
    let level_ids = catalog::ids_for(connection, tenant, RefKind::Level, &levels).await?;
    let tag_ids = catalog::ids_for(connection, tenant, RefKind::Tag, &tags).await?;

    let lookup = |ids: &RefIds, system: &str, id: &str| {
        ids.get(&(system.to_owned(), id.to_owned()))
            .copied()
            .ok_or(DbError::NotFound)
    };
    calls
        .iter()
        .map(|call| {
            let system = call.key.system.as_str();
            let tag_ids_of = |tags: &[TagRef]| {
                tags.iter()
                    .map(|tag| lookup(&tag_ids, system, &tag.source_tag_id))
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok(CallRefs {
                task_id: call
                    .source_task_id
                    .as_ref()
                    .map(|task| lookup(&task_ids, system, task))
                    .transpose()?,
                level_id: call
                    .level
                    .as_ref()
                    .map(|level| lookup(&level_ids, system, &level.source_level_id))
                    .transpose()?,
                tag_ids: tag_ids_of(&call.tags)?,
                turn_tag_ids: call
                    .turns
                    .iter()
                    .map(|turn| tag_ids_of(&turn.tags))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// What is written under a call besides its row: turns (with their tags) and call tags.
struct CallContent<'call> {
    call_id: Uuid,
    turns: &'call [Turn],
    /// Ids of each turn's tags, in turn order.
    turn_tag_ids: &'call [Vec<Uuid>],
    tag_ids: &'call [Uuid],
}

/// Inserts a call's turns (after those it has) with their tags.
pub(crate) async fn insert_turns(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call_id: Uuid,
    turns: &[Turn],
    turn_tag_ids: &[Vec<Uuid>],
) -> Result<(), DbError> {
    let content = CallContent {
        call_id,
        turns,
        turn_tag_ids,
        tag_ids: &[],
    };
    insert_contents(connection, tenant, std::slice::from_ref(&content)).await
}

/// Writes the turns of all the calls with one statement (turns are most of the rows ingest
/// writes), then their turn tags and call tags with one statement each.
async fn insert_contents(
    connection: &mut PgConnection,
    tenant: &TenantId,
    contents: &[CallContent<'_>],
) -> Result<(), DbError> {
    insert_turn_rows(connection, tenant, contents).await?;

    let mut link_calls = Vec::new();
    let mut link_sequences = Vec::new();
    let mut link_tags = Vec::new();
    for content in contents {
        for (turn, tag_ids) in content.turns.iter().zip(content.turn_tag_ids) {
            for tag_id in tag_ids {
                link_calls.push(content.call_id);
                link_sequences.push(turn.sequence);
                link_tags.push(*tag_id);
            }
        }
    }
    if !link_calls.is_empty() {
        sqlx::query(
            "INSERT INTO turn_tags (tenant_id, call_id, sequence, tag_id)
             SELECT $1, link.call_id, link.sequence, link.tag_id
             FROM unnest($2::uuid[], $3::integer[], $4::uuid[]) AS link (call_id, sequence, tag_id)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(link_calls)
        .bind(link_sequences)
        .bind(link_tags)
        .execute(&mut *connection)
        .await?;
    }

    insert_transcripts(connection, tenant, contents).await?;

    let (tag_calls, tag_ids): (Vec<Uuid>, Vec<Uuid>) = contents
        .iter()
        .flat_map(|content| {
            content
                .tag_ids
                .iter()
                .map(|tag_id| (content.call_id, *tag_id))
        })
        .unzip();
    if !tag_calls.is_empty() {
        sqlx::query(
            "INSERT INTO call_tags (tenant_id, call_id, tag_id)
             SELECT $1, tag.call_id, tag.tag_id FROM unnest($2::uuid[], $3::uuid[]) AS tag (call_id, tag_id)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(tag_calls)
        .bind(tag_ids)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Adds what each speaker said in `contents` to the calls' transcripts (the transcript filter's
/// index, see `domain::transcript`): new rows for new calls, appended lines and merged grams for
/// turns appended to a call in progress.
async fn insert_transcripts(
    connection: &mut PgConnection,
    tenant: &TenantId,
    contents: &[CallContent<'_>],
) -> Result<(), DbError> {
    let mut rows = Vec::new();
    for content in contents {
        for transcript in transcript::transcripts(tenant, content.turns) {
            rows.push(TranscriptRow {
                call_id: content.call_id,
                speaker: transcript.speaker as i16,
                text: transcript.text,
                grams: transcript.grams,
            });
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let rows = serde_json::to_string(&rows)
        .map_err(|error| DbError::InvalidData(sqlx::Error::Encode(Box::new(error))))?;
    sqlx::query(
        "INSERT INTO call_transcripts AS x (tenant_id, call_id, speaker, text, grams)
         SELECT $1, r.call_id, r.speaker, r.text, r.grams
         FROM json_populate_recordset(NULL::call_transcripts, $2::json) r
         ON CONFLICT (tenant_id, call_id, speaker) DO UPDATE
         SET text = x.text || E'\\n' || EXCLUDED.text,
             grams = ARRAY(SELECT DISTINCT g FROM unnest(x.grams || EXCLUDED.grams) g ORDER BY g)",
    )
    .bind(tenant.as_str())
    .bind(rows)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// One row of `call_transcripts` as the insert reads it.
#[derive(Serialize)]
struct TranscriptRow {
    call_id: Uuid,
    speaker: i16,
    text: String,
    grams: Vec<i32>,
}

/// Writes the turns with one `INSERT … SELECT FROM unnest(…)` of a typed array per column,
/// sent in binary. `COPY` would cost Postgres less, but it cannot write a table under
/// row-level security; this costs less than a JSON document Postgres would parse.
async fn insert_turn_rows(
    connection: &mut PgConnection,
    tenant: &TenantId,
    contents: &[CallContent<'_>],
) -> Result<(), DbError> {
    let count: usize = contents.iter().map(|content| content.turns.len()).sum();
    if count == 0 {
        return Ok(());
    }
    let mut columns = TurnColumns::with_capacity(count);
    for content in contents {
        for turn in content.turns {
            columns.push(content.call_id, turn)?;
        }
    }
    sqlx::query(INSERT_TURNS_SQL)
        .bind(tenant.as_str())
        .bind(columns.call_id)
        .bind(columns.sequence)
        .bind(columns.speaker)
        .bind(columns.text)
        .bind(columns.time)
        .bind(columns.start_offset_ms)
        .bind(columns.end_offset_ms)
        .bind(columns.speak_ms)
        .bind(columns.play_ms)
        .bind(columns.node_id)
        .bind(columns.node_name)
        .bind(columns.node_class)
        .bind(columns.node_type)
        .bind(columns.trigger_title)
        .bind(columns.matched_keyword)
        .bind(columns.jump_type)
        .bind(columns.match_type)
        .bind(columns.score_delta)
        .bind(columns.label)
        .bind(columns.audio_file)
        .bind(columns.audio_pieces)
        .bind(columns.asr_engine)
        .bind(columns.asr_latency_ms)
        .bind(columns.record_ms)
        .bind(columns.volume_gain)
        .bind(columns.question_index)
        .bind(columns.after_transfer)
        .bind(columns.source_turn_id)
        .bind(columns.extra)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

const INSERT_TURNS_SQL: &str = "INSERT INTO turns (tenant_id, call_id, sequence, speaker, text,
    time, start_offset_ms, end_offset_ms, speak_ms, play_ms, node_id, node_name, node_class,
    node_type, trigger_title, matched_keyword, jump_type, match_type, score_delta, label,
    audio_file, audio_pieces, asr_engine, asr_latency_ms, record_ms, volume_gain, question_index,
    after_transfer, source_turn_id, extra)
SELECT $1, t.call_id, t.sequence, t.speaker, t.text, t.time, t.start_offset_ms, t.end_offset_ms,
    t.speak_ms, t.play_ms, t.node_id, t.node_name, t.node_class, t.node_type, t.trigger_title,
    t.matched_keyword, t.jump_type, t.match_type, t.score_delta, t.label, t.audio_file,
    t.audio_pieces::jsonb, t.asr_engine, t.asr_latency_ms, t.record_ms, t.volume_gain,
    t.question_index, t.after_transfer, t.source_turn_id, t.extra::jsonb
FROM unnest($2::uuid[], $3::integer[], $4::smallint[], $5::text[], $6::timestamptz[],
    $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::text[],
    $13::text[], $14::smallint[], $15::text[], $16::text[], $17::smallint[], $18::integer[],
    $19::bigint[], $20::text[], $21::text[], $22::text[], $23::text[], $24::bigint[],
    $25::bigint[], $26::double precision[], $27::integer[], $28::boolean[], $29::text[],
    $30::text[])
    AS t (call_id, sequence, speaker, text, time, start_offset_ms, end_offset_ms, speak_ms,
          play_ms, node_id, node_name, node_class, node_type, trigger_title, matched_keyword,
          jump_type, match_type, score_delta, label, audio_file, audio_pieces, asr_engine,
          asr_latency_ms, record_ms, volume_gain, question_index, after_transfer,
          source_turn_id, extra)";

/// The turns of [`INSERT_TURNS_SQL`], a vector per column; the JSON columns as text.
#[derive(Default)]
struct TurnColumns<'turn> {
    call_id: Vec<Uuid>,
    sequence: Vec<i32>,
    speaker: Vec<i16>,
    text: Vec<&'turn str>,
    time: Vec<Option<DateTime<Utc>>>,
    start_offset_ms: Vec<Option<i64>>,
    end_offset_ms: Vec<Option<i64>>,
    speak_ms: Vec<Option<i64>>,
    play_ms: Vec<Option<i64>>,
    node_id: Vec<Option<&'turn str>>,
    node_name: Vec<Option<&'turn str>>,
    node_class: Vec<Option<&'turn str>>,
    node_type: Vec<i16>,
    trigger_title: Vec<Option<&'turn str>>,
    matched_keyword: Vec<Option<&'turn str>>,
    jump_type: Vec<i16>,
    match_type: Vec<Option<i32>>,
    score_delta: Vec<Option<i64>>,
    label: Vec<Option<&'turn str>>,
    audio_file: Vec<Option<&'turn str>>,
    audio_pieces: Vec<Option<String>>,
    asr_engine: Vec<Option<&'turn str>>,
    asr_latency_ms: Vec<Option<i64>>,
    record_ms: Vec<Option<i64>>,
    volume_gain: Vec<Option<f64>>,
    question_index: Vec<Option<i32>>,
    after_transfer: Vec<bool>,
    source_turn_id: Vec<Option<&'turn str>>,
    extra: Vec<String>,
}

fn to_json(value: &impl Serialize) -> Result<String, DbError> {
    serde_json::to_string(value)
        .map_err(|error| DbError::InvalidData(sqlx::Error::Encode(Box::new(error))))
}

impl<'turn> TurnColumns<'turn> {
    fn with_capacity(count: usize) -> Self {
        Self {
            call_id: Vec::with_capacity(count),
            sequence: Vec::with_capacity(count),
            text: Vec::with_capacity(count),
            ..Self::default()
        }
    }

    fn push(&mut self, call_id: Uuid, turn: &'turn Turn) -> Result<(), DbError> {
        self.call_id.push(call_id);
        self.sequence.push(turn.sequence);
        self.speaker.push(turn.speaker as i16);
        self.text.push(&turn.text);
        self.time.push(turn.time);
        self.start_offset_ms.push(turn.start_offset_ms);
        self.end_offset_ms.push(turn.end_offset_ms);
        self.speak_ms.push(turn.speak_ms);
        self.play_ms.push(turn.play_ms);
        self.node_id.push(turn.node_id.as_deref());
        self.node_name.push(turn.node_name.as_deref());
        self.node_class.push(turn.node_class.as_deref());
        self.node_type.push(turn.node_type as i16);
        self.trigger_title.push(turn.trigger_title.as_deref());
        self.matched_keyword.push(turn.matched_keyword.as_deref());
        self.jump_type.push(turn.jump_type as i16);
        self.match_type.push(turn.match_type);
        self.score_delta.push(turn.score_delta);
        self.label.push(turn.label.as_deref());
        self.audio_file.push(turn.audio_file.as_deref());
        self.audio_pieces.push(if turn.audio_pieces.is_empty() {
            None
        } else {
            Some(to_json(&turn.audio_pieces)?)
        });
        self.asr_engine.push(turn.asr_engine.as_deref());
        self.asr_latency_ms.push(turn.asr_latency_ms);
        self.record_ms.push(turn.record_ms);
        self.volume_gain.push(turn.volume_gain);
        self.question_index.push(turn.question_index);
        self.after_transfer.push(turn.after_transfer);
        self.source_turn_id.push(turn.source_turn_id.as_deref());
        self.extra.push(to_json(&turn.extra)?);
        Ok(())
    }
}
