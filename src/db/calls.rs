//! The `calls` aggregate: a call with its turns, tags and feed event, written together.

use std::sync::LazyLock;

use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::db::DbError;
use crate::domain::TenantId;
use crate::domain::call::{Call, Turn};
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

/// Columns written from a [`Call`], in bind order. The upsert's update list is derived from
/// it, so a column is added in one place.
const WRITTEN_COLUMNS: &[&str] = &[
    "source_format",
    "state",
    "content_hash",
    "task_id",
    "source_task_id",
    "source_record_id",
    "script_group_id",
    "callee",
    "caller",
    "province",
    "city",
    "area_code",
    "post_code",
    "carrier",
    "carrier_name",
    "region_text",
    "customer",
    "dial_time",
    "answer_time",
    "hangup_time",
    "duration_ms",
    "talk_duration_ms",
    "billed_minutes",
    "outcome",
    "number_status",
    "hangup_cause",
    "end_reason",
    "sip_code",
    "hangup_side",
    "error_code",
    "huawei",
    "number_check_status",
    "rounds",
    "asks_count",
    "call_count",
    "score",
    "level_id",
    "gender",
    "last_reply",
    "end_node",
    "classification",
    "labels",
    "dynamic_labels",
    "satisfaction",
    "call_mode",
    "call_mode_code",
    "first_connected",
    "transfer_state",
    "transfer",
    "record_file",
    "record_path",
    "read_time",
    "custom_fields",
    "turn_count",
    "source_create_time",
    "source_update_time",
    "extra",
];

/// Insert, or update when the content hash differs; returns nothing when unchanged.
static UPSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (0..WRITTEN_COLUMNS.len())
        .map(|index| format!("${}", index + 5))
        .collect();
    let updates: Vec<String> = WRITTEN_COLUMNS
        .iter()
        .map(|column| format!("{column} = EXCLUDED.{column}"))
        .collect();
    format!(
        "WITH previous AS (
             SELECT state FROM calls
             WHERE tenant_id = $1 AND source_system = $3 AND source_call_id = $4
         )
         INSERT INTO calls (tenant_id, id, source_system, source_call_id, {columns})
         VALUES ($1, $2, $3, $4, {placeholders})
         ON CONFLICT (tenant_id, source_system, source_call_id) DO UPDATE
         SET {updates}, version = calls.version + 1, update_time = now()
         WHERE calls.content_hash IS DISTINCT FROM EXCLUDED.content_hash
         RETURNING id, version, (xmax = 0) AS inserted, (SELECT state FROM previous) AS previous_state",
        columns = WRITTEN_COLUMNS.join(", "),
        placeholders = placeholders.join(", "),
        updates = updates.join(", "),
    )
});

#[derive(sqlx::FromRow)]
struct UpsertRow {
    id: Uuid,
    version: i64,
    inserted: bool,
    previous_state: Option<i16>,
}

/// Stores a call with its turns, tags and feed event. The caller owns the transaction, so the
/// call is committed whole or not at all.
pub async fn store_call(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call: &Call,
    refs: &CallRefs,
) -> Result<StoredCall, DbError> {
    let content_hash = call.content_hash();
    let row: Option<UpsertRow> = bind_call(
        sqlx::query_as(UPSERT_SQL.as_str())
            .bind(tenant.as_str())
            .bind(Uuid::now_v7())
            .bind(&call.key.system)
            .bind(&call.key.id),
        call,
        refs,
        content_hash,
    )
    .fetch_optional(&mut *connection)
    .await?;

    let Some(row) = row else {
        let (id, version): (Uuid, i64) = sqlx::query_as(
            "SELECT id, version FROM calls
             WHERE tenant_id = $1 AND source_system = $2 AND source_call_id = $3",
        )
        .bind(tenant.as_str())
        .bind(&call.key.system)
        .bind(&call.key.id)
        .fetch_one(&mut *connection)
        .await?;
        return Ok(StoredCall {
            id,
            version,
            outcome: StoreOutcome::Unchanged,
        });
    };

    if !row.inserted {
        sqlx::query("DELETE FROM turns WHERE tenant_id = $1 AND call_id = $2")
            .bind(tenant.as_str())
            .bind(row.id)
            .execute(&mut *connection)
            .await?;
        sqlx::query("DELETE FROM call_tags WHERE tenant_id = $1 AND call_id = $2")
            .bind(tenant.as_str())
            .bind(row.id)
            .execute(&mut *connection)
            .await?;
    }
    insert_turns(connection, tenant, row.id, &call.turns, &refs.turn_tag_ids).await?;
    insert_call_tags(connection, tenant, row.id, &refs.tag_ids).await?;

    let kind = if row.inserted {
        CallEventKind::CallCreated
    } else if row.previous_state == Some(CallState::InProgress as i16)
        && call.state == CallState::Completed
    {
        CallEventKind::CallCompleted
    } else {
        CallEventKind::CallUpdated
    };
    append_feed_event(connection, tenant, row.id, row.version, refs.task_id, kind).await?;

    Ok(StoredCall {
        id: row.id,
        version: row.version,
        outcome: if row.inserted {
            StoreOutcome::Created
        } else {
            StoreOutcome::Updated
        },
    })
}

type CallQuery<'query> =
    sqlx::query::QueryAs<'query, Postgres, UpsertRow, sqlx::postgres::PgArguments>;

/// Binds the [`WRITTEN_COLUMNS`] of a call, in that order.
fn bind_call<'query>(
    query: CallQuery<'query>,
    call: &'query Call,
    refs: &CallRefs,
    content_hash: Vec<u8>,
) -> CallQuery<'query> {
    let region = &call.callee_region;
    query
        .bind(call.source_format as i16)
        .bind(call.state as i16)
        .bind(content_hash)
        .bind(refs.task_id)
        .bind(call.source_task_id.as_deref())
        .bind(call.source_record_id.as_deref())
        .bind(call.script_group_id.as_deref())
        .bind(&call.callee)
        .bind(call.caller.as_deref())
        .bind(region.province.as_deref())
        .bind(region.city.as_deref())
        .bind(region.area_code.as_deref())
        .bind(region.post_code.as_deref())
        .bind(region.carrier as i16)
        .bind(region.carrier_name.as_deref())
        .bind(region.text.as_deref())
        .bind(json_or_null(&call.customer))
        .bind(call.dial_time)
        .bind(call.answer_time)
        .bind(call.hangup_time)
        .bind(call.duration_ms)
        .bind(call.talk_duration_ms)
        .bind(call.billed_minutes)
        .bind(call.outcome as i16)
        .bind(call.number_status as i16)
        .bind(call.hangup_cause.as_deref())
        .bind(call.end_reason.as_deref())
        .bind(call.sip_code.as_deref())
        .bind(call.hangup_side as i16)
        .bind(call.error_code)
        .bind(json_or_null(&call.huawei))
        .bind(call.number_check_status as i16)
        .bind(call.rounds)
        .bind(call.asks_count)
        .bind(call.call_count)
        .bind(call.score)
        .bind(refs.level_id)
        .bind(call.gender as i16)
        .bind(call.last_reply.as_deref())
        .bind(call.end_node.as_deref())
        .bind(json_or_null(&call.classification))
        .bind(&call.labels)
        .bind(&call.dynamic_labels)
        .bind(call.satisfaction as i16)
        .bind(call.call_mode as i16)
        .bind(call.call_mode_code)
        .bind(call.first_connected)
        .bind(
            call.transfer
                .as_ref()
                .map_or(0, |transfer| transfer.state as i16),
        )
        .bind(json_or_null(&call.transfer))
        .bind(call.record_file.as_deref())
        .bind(call.record_path.as_deref())
        .bind(call.read_time)
        .bind(sqlx::types::Json(&call.custom_fields))
        .bind(i32::try_from(call.turns.len()).unwrap_or(i32::MAX))
        .bind(call.source_create_time)
        .bind(call.source_update_time)
        .bind(sqlx::types::Json(&call.extra))
}

fn json_or_null<T: serde::Serialize>(value: &Option<T>) -> Option<Value> {
    value
        .as_ref()
        .and_then(|value| serde_json::to_value(value).ok())
}

/// Rows per INSERT statement, well under Postgres' 65,535 bind parameters.
const TURNS_PER_STATEMENT: usize = 1000;

async fn insert_turns(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call_id: Uuid,
    turns: &[Turn],
    turn_tag_ids: &[Vec<Uuid>],
) -> Result<(), DbError> {
    for chunk in turns.chunks(TURNS_PER_STATEMENT) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO turns (tenant_id, call_id, sequence, speaker, text, time, start_offset_ms,
             end_offset_ms, speak_ms, play_ms, node_id, node_name, node_class, node_type,
             trigger_title, matched_keyword, jump_type, match_type, score_delta, label, audio_file,
             audio_pieces, asr_engine, asr_latency_ms, record_ms, volume_gain, question_index,
             after_transfer, source_turn_id, extra) ",
        );
        builder.push_values(chunk, |mut row, turn| {
            row.push_bind(tenant.as_str())
                .push_bind(call_id)
                .push_bind(turn.sequence)
                .push_bind(turn.speaker as i16)
                .push_bind(&turn.text)
                .push_bind(turn.time)
                .push_bind(turn.start_offset_ms)
                .push_bind(turn.end_offset_ms)
                .push_bind(turn.speak_ms)
                .push_bind(turn.play_ms)
                .push_bind(turn.node_id.as_deref())
                .push_bind(turn.node_name.as_deref())
                .push_bind(turn.node_class.as_deref())
                .push_bind(turn.node_type as i16)
                .push_bind(turn.trigger_title.as_deref())
                .push_bind(turn.matched_keyword.as_deref())
                .push_bind(turn.jump_type as i16)
                .push_bind(turn.match_type)
                .push_bind(turn.score_delta)
                .push_bind(turn.label.as_deref())
                .push_bind(turn.audio_file.as_deref())
                .push_bind(
                    (!turn.audio_pieces.is_empty())
                        .then(|| sqlx::types::Json(turn.audio_pieces.clone())),
                )
                .push_bind(turn.asr_engine.as_deref())
                .push_bind(turn.asr_latency_ms)
                .push_bind(turn.record_ms)
                .push_bind(turn.volume_gain)
                .push_bind(turn.question_index)
                .push_bind(turn.after_transfer)
                .push_bind(turn.source_turn_id.as_deref())
                .push_bind(sqlx::types::Json(turn.extra.clone()));
        });
        builder.build().execute(&mut *connection).await?;
    }

    let links: Vec<(i32, Uuid)> = turns
        .iter()
        .zip(turn_tag_ids)
        .flat_map(|(turn, tag_ids)| tag_ids.iter().map(move |tag_id| (turn.sequence, *tag_id)))
        .collect();
    if !links.is_empty() {
        let (sequences, tag_ids): (Vec<i32>, Vec<Uuid>) = links.into_iter().unzip();
        sqlx::query(
            "INSERT INTO turn_tags (tenant_id, call_id, sequence, tag_id)
             SELECT $1, $2, link.sequence, link.tag_id
             FROM unnest($3::integer[], $4::uuid[]) AS link (sequence, tag_id)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(call_id)
        .bind(sequences)
        .bind(tag_ids)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

async fn insert_call_tags(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call_id: Uuid,
    tag_ids: &[Uuid],
) -> Result<(), DbError> {
    if tag_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO call_tags (tenant_id, call_id, tag_id)
         SELECT $1, $2, tag_id FROM unnest($3::uuid[]) AS tag_id
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.as_str())
    .bind(call_id)
    .bind(tag_ids)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Appends a committed-change event for the stream, in the caller's transaction.
pub async fn append_feed_event(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call_id: Uuid,
    call_version: i64,
    task_id: Option<Uuid>,
    kind: CallEventKind,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO feed_events (tenant_id, kind, call_id, call_version, task_id)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant.as_str())
    .bind(kind as i16)
    .bind(call_id)
    .bind(call_version)
    .bind(task_id)
    .execute(&mut *connection)
    .await?;
    Ok(())
}
