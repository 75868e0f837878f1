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
/// writes): `COPY` for many, an `INSERT` for a few (see [`COPY_MIN_TURNS`]); then their turn
/// tags and call tags with one statement each.
async fn insert_contents(
    connection: &mut PgConnection,
    tenant: &TenantId,
    contents: &[CallContent<'_>],
) -> Result<(), DbError> {
    let turns: usize = contents.iter().map(|content| content.turns.len()).sum();
    if turns >= COPY_MIN_TURNS {
        copy_turns(connection, tenant, contents).await?;
    } else if turns > 0 {
        let rows: Vec<TurnRow<'_>> = contents
            .iter()
            .flat_map(|content| {
                content
                    .turns
                    .iter()
                    .map(|turn| TurnRow::new(content.call_id, turn))
            })
            .collect();
        let rows = serde_json::to_string(&rows)
            .map_err(|error| DbError::InvalidData(sqlx::Error::Encode(Box::new(error))))?;
        sqlx::query(INSERT_TURNS_SQL.as_str())
            .bind(tenant.as_str())
            .bind(rows)
            .execute(&mut *connection)
            .await?;
    }

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

/// Turns written with `COPY` rather than an `INSERT`. `COPY` is the cheaper for the database
/// by far, but `COPY … FROM STDIN` sends its data and its end in two writes, and on a TCP
/// connection without `TCP_NODELAY` (sqlx sets none) the second waits for the server's delayed
/// acknowledgement: 40 ms a transaction, which a big batch amortises and a small group commit
/// cannot.
const COPY_MIN_TURNS: usize = 1000;

/// Writes turns with one `COPY`.
async fn copy_turns(
    connection: &mut PgConnection,
    tenant: &TenantId,
    contents: &[CallContent<'_>],
) -> Result<(), DbError> {
    let mut rows = CopyText::default();
    for content in contents {
        for turn in content.turns {
            write_turn(&mut rows, tenant, content.call_id, turn);
        }
    }
    let mut copy = connection.copy_in_raw(COPY_TURNS_SQL).await?;
    if let Err(error) = copy.send(rows.into_bytes()).await {
        // Leaves the connection usable; the error is what the caller needs.
        let _ = copy.abort("sending the rows failed").await;
        return Err(error.into());
    }
    copy.finish().await?;
    Ok(())
}

/// One row of `turns` as the insert reads it (`json_populate_recordset(NULL::turns, …)`); the
/// field names are the column names, and the statement's column list is derived from them.
#[derive(Serialize)]
struct TurnRow<'turn> {
    call_id: Uuid,
    sequence: i32,
    speaker: i16,
    text: &'turn str,
    time: Option<DateTime<Utc>>,
    start_offset_ms: Option<i64>,
    end_offset_ms: Option<i64>,
    speak_ms: Option<i64>,
    play_ms: Option<i64>,
    node_id: Option<&'turn str>,
    node_name: Option<&'turn str>,
    node_class: Option<&'turn str>,
    node_type: i16,
    trigger_title: Option<&'turn str>,
    matched_keyword: Option<&'turn str>,
    jump_type: i16,
    match_type: Option<i32>,
    score_delta: Option<i64>,
    label: Option<&'turn str>,
    audio_file: Option<&'turn str>,
    audio_pieces: Option<&'turn [crate::domain::call::AudioPiece]>,
    asr_engine: Option<&'turn str>,
    asr_latency_ms: Option<i64>,
    record_ms: Option<i64>,
    volume_gain: Option<f64>,
    question_index: Option<i32>,
    after_transfer: bool,
    source_turn_id: Option<&'turn str>,
    extra: &'turn crate::domain::call::Extra,
}

impl<'turn> TurnRow<'turn> {
    fn new(call_id: Uuid, turn: &'turn Turn) -> Self {
        Self {
            call_id,
            sequence: turn.sequence,
            speaker: turn.speaker as i16,
            text: &turn.text,
            time: turn.time,
            start_offset_ms: turn.start_offset_ms,
            end_offset_ms: turn.end_offset_ms,
            speak_ms: turn.speak_ms,
            play_ms: turn.play_ms,
            node_id: turn.node_id.as_deref(),
            node_name: turn.node_name.as_deref(),
            node_class: turn.node_class.as_deref(),
            node_type: turn.node_type as i16,
            trigger_title: turn.trigger_title.as_deref(),
            matched_keyword: turn.matched_keyword.as_deref(),
            jump_type: turn.jump_type as i16,
            match_type: turn.match_type,
            score_delta: turn.score_delta,
            label: turn.label.as_deref(),
            audio_file: turn.audio_file.as_deref(),
            audio_pieces: (!turn.audio_pieces.is_empty()).then_some(turn.audio_pieces.as_slice()),
            asr_engine: turn.asr_engine.as_deref(),
            asr_latency_ms: turn.asr_latency_ms,
            record_ms: turn.record_ms,
            volume_gain: turn.volume_gain,
            question_index: turn.question_index,
            after_transfer: turn.after_transfer,
            source_turn_id: turn.source_turn_id.as_deref(),
            extra: &turn.extra,
        }
    }
}

/// Inserts the turns given as a JSON array of [`TurnRow`]s.
static INSERT_TURNS_SQL: LazyLock<String> = LazyLock::new(|| {
    let sample = Turn::default();
    let columns: Vec<String> = match serde_json::to_value(TurnRow::new(Uuid::nil(), &sample)) {
        Ok(Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let columns = columns.join(", ");
    format!(
        "INSERT INTO turns (tenant_id, {columns})
         SELECT $1, {columns} FROM json_populate_recordset(NULL::turns, $2::json)"
    )
});

const COPY_TURNS_SQL: &str = "COPY turns (tenant_id, call_id, sequence, speaker, text, time,
    start_offset_ms, end_offset_ms, speak_ms, play_ms, node_id, node_name, node_class, node_type,
    trigger_title, matched_keyword, jump_type, match_type, score_delta, label, audio_file,
    audio_pieces, asr_engine, asr_latency_ms, record_ms, volume_gain, question_index,
    after_transfer, source_turn_id, extra) FROM STDIN";

/// One turn as a row of [`COPY_TURNS_SQL`], fields in its column order.
fn write_turn(rows: &mut CopyText, tenant: &TenantId, call_id: Uuid, turn: &Turn) {
    rows.text(tenant.as_str());
    rows.display(call_id);
    rows.display(turn.sequence);
    rows.display(turn.speaker as i16);
    rows.text(&turn.text);
    rows.time(turn.time);
    rows.optional(turn.start_offset_ms);
    rows.optional(turn.end_offset_ms);
    rows.optional(turn.speak_ms);
    rows.optional(turn.play_ms);
    rows.optional_text(turn.node_id.as_deref());
    rows.optional_text(turn.node_name.as_deref());
    rows.optional_text(turn.node_class.as_deref());
    rows.display(turn.node_type as i16);
    rows.optional_text(turn.trigger_title.as_deref());
    rows.optional_text(turn.matched_keyword.as_deref());
    rows.display(turn.jump_type as i16);
    rows.optional(turn.match_type);
    rows.optional(turn.score_delta);
    rows.optional_text(turn.label.as_deref());
    rows.optional_text(turn.audio_file.as_deref());
    if turn.audio_pieces.is_empty() {
        rows.null();
    } else {
        rows.json(&turn.audio_pieces);
    }
    rows.optional_text(turn.asr_engine.as_deref());
    rows.optional(turn.asr_latency_ms);
    rows.optional(turn.record_ms);
    rows.optional(turn.volume_gain);
    rows.optional(turn.question_index);
    rows.display(turn.after_transfer);
    rows.optional_text(turn.source_turn_id.as_deref());
    rows.json(&turn.extra);
    rows.end_row();
}

/// Rows in the text format of `COPY … FROM STDIN`: tab-separated fields, `\N` for NULL,
/// backslash escapes for backslash, tab, newline and carriage return.
#[derive(Default)]
struct CopyText {
    buffer: String,
}

impl CopyText {
    fn separator(&mut self) {
        if !self.buffer.is_empty() && !self.buffer.ends_with('\n') {
            self.buffer.push('\t');
        }
    }

    fn null(&mut self) {
        self.separator();
        self.buffer.push_str("\\N");
    }

    fn text(&mut self, value: &str) {
        self.separator();
        for character in value.chars() {
            match character {
                '\\' => self.buffer.push_str("\\\\"),
                '\t' => self.buffer.push_str("\\t"),
                '\n' => self.buffer.push_str("\\n"),
                '\r' => self.buffer.push_str("\\r"),
                other => self.buffer.push(other),
            }
        }
    }

    fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    /// A value whose `Display` needs no escaping (numbers, booleans, UUIDs).
    fn display(&mut self, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.separator();
        let _ = write!(self.buffer, "{value}");
    }

    fn optional(&mut self, value: Option<impl std::fmt::Display>) {
        match value {
            Some(value) => self.display(value),
            None => self.null(),
        }
    }

    fn time(&mut self, value: Option<DateTime<Utc>>) {
        match value {
            Some(time) => self.display(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            None => self.null(),
        }
    }

    fn json(&mut self, value: &impl Serialize) {
        // Serialising plain data (strings, numbers, maps) cannot fail.
        let json = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
        self.text(&json);
    }

    fn end_row(&mut self) {
        self.buffer.push('\n');
    }

    fn into_bytes(self) -> Vec<u8> {
        self.buffer.into_bytes()
    }
}
