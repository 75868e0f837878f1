//! Calls in progress: turns appended one request at a time, and opening and completing a call
//! without losing them.
//!
//! Opening and completing rewrite a call's turns whole (the writer deletes them and inserts the
//! record's). A completion that carries no turns keeps the appended ones by loading them and
//! storing them with the final record, so the stored call and its content hash cover them.
//! Both run in one transaction that first locks the call's row (`SELECT … FOR UPDATE`), the
//! lock every append takes too: an append either commits before the completion reads the turns
//! (and is kept) or waits for it and finds the call completed (and is refused, never
//! acknowledged and then lost).

use chrono::{DateTime, Duration, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db::calls::{self, StoreOutcome, StoredCall, insert_turns};
use crate::db::{DbError, MaybeAborted, catalog, retry_aborted};
use crate::domain::call::{AudioPiece, Call, Extra, TagRef, Turn};
use crate::domain::{SourceKey, TenantId};
use crate::ingest::writer::{WriteOptions, inspect_calls};
use crate::proto::{CallEventKind, CallState};

/// A stored call as opening or completing needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentCall {
    pub id: Uuid,
    pub version: i64,
    pub state: CallState,
    pub content_hash: Vec<u8>,
}

/// Whether a call is being opened or completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Open,
    Complete,
}

/// Why opening or completing a call was refused.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// An open of a call that is already completed.
    #[error("the call is already completed")]
    AlreadyCompleted,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl MaybeAborted for LiveError {
    fn aborted(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Db(error) => error.aborted(),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for LiveError {
    fn from(error: sqlx::Error) -> Self {
        Self::Db(DbError::from(error))
    }
}

/// Stores an opened or completed call, under the call row's lock (see the module's doc).
///
/// A record without turns keeps the stored ones; one with turns replaces them. A repeated
/// open is recognised by the record's own hash (appended turns do not change the stored hash),
/// so retrying an open after turns were appended still answers UNCHANGED.
///
/// A completion is inspected as ingest inspects a whole call (see `WriteOptions`): its
/// quality result is computed from the final dialogue in the same transaction.
pub async fn store_live(
    pool: &PgPool,
    tenant: &TenantId,
    call: &Call,
    stage: Stage,
    write: WriteOptions,
) -> Result<StoredCall, LiveError> {
    retry_aborted("store", || try_store_live(pool, tenant, call, stage, write)).await
}

async fn try_store_live(
    pool: &PgPool,
    tenant: &TenantId,
    call: &Call,
    stage: Stage,
    write: WriteOptions,
) -> Result<StoredCall, LiveError> {
    let mut transaction = crate::db::begin(pool, tenant).await?;
    catalog::ensure_tenant(&mut transaction, tenant).await?;
    let current: Option<(Uuid, i64, i16, Vec<u8>)> = sqlx::query_as(
        "SELECT id, version, state, content_hash FROM calls
         WHERE tenant_id = $1 AND source_system = $2 AND source_call_id = $3
         FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(&call.key.system)
    .bind(&call.key.id)
    .fetch_optional(&mut *transaction)
    .await?;
    let mut appended = None;
    if let Some((id, version, state, content_hash)) = current {
        if stage == Stage::Open {
            if state == CallState::Completed as i16 {
                return Err(LiveError::AlreadyCompleted);
            }
            if content_hash == call.content_hash() {
                return Ok(StoredCall {
                    id,
                    version,
                    outcome: StoreOutcome::Unchanged,
                });
            }
        }
        if call.turns.is_empty() {
            appended = Some(load_turns(&mut transaction, tenant, id, None).await?);
        }
    }
    let with_appended = appended.map(|turns| Call {
        turns,
        ..call.clone()
    });
    let call = with_appended.as_ref().unwrap_or(call);
    let stored = calls::store_calls(&mut transaction, tenant, &[call]).await?;
    let stored = stored.into_iter().next().ok_or(DbError::NotFound)?;
    if stage == Stage::Complete && write.inspect {
        inspect_calls(
            &mut transaction,
            tenant,
            std::slice::from_ref(call),
            &[Ok(stored)],
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(stored)
}

/// Which call an append names.
#[derive(Debug, Clone, Copy)]
pub enum CallTarget<'a> {
    /// The server id.
    Id(Uuid),
    /// The source's key.
    Source(&'a SourceKey),
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub id: Uuid,
    /// The call's version, which appends leave as it is.
    pub version: i64,
    pub source_call_id: String,
    /// Turns the call has now.
    pub turn_count: i32,
    /// Turns this request added; 0 for a retry of turns already stored.
    pub added: usize,
}

/// Why an append was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// No such call in the tenant.
    #[error("call not found")]
    NotFound,
    /// The call is completed.
    #[error("the call is not in progress")]
    NotInProgress,
    /// The turn at `index` has a sequence already stored, with other content.
    #[error("sequence {sequence} is already stored with other content")]
    Conflict { index: usize, sequence: i32 },
    /// The turn at `index` is new but does not come after the last stored sequence.
    #[error("sequence {sequence} does not follow the last stored sequence {last}")]
    NotAfterStored {
        index: usize,
        sequence: i32,
        last: i32,
    },
    /// The call would have more turns than allowed.
    #[error("{total} turns exceed the limit of {limit}")]
    TooManyTurns { total: usize, limit: usize },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl MaybeAborted for AppendError {
    fn aborted(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Db(error) => error.aborted(),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        Self::Db(DbError::from(error))
    }
}

/// Appends validated turns (strictly increasing sequences) to a call in progress, in one
/// transaction with the call's turn count and one TURN_APPENDED feed event per turn.
///
/// Turns whose sequence is already stored with the same content are skipped, so a retried
/// request changes nothing; the new ones must come after the last stored sequence.
pub async fn append_turns(
    pool: &PgPool,
    tenant: &TenantId,
    target: CallTarget<'_>,
    turns: &[Turn],
    max_turns: usize,
) -> Result<Appended, AppendError> {
    retry_aborted("append", || {
        try_append_turns(pool, tenant, target, turns, max_turns)
    })
    .await
}

#[derive(sqlx::FromRow)]
struct LockedCall {
    id: Uuid,
    version: i64,
    state: i16,
    task_id: Option<Uuid>,
    source_call_id: String,
}

async fn try_append_turns(
    pool: &PgPool,
    tenant: &TenantId,
    target: CallTarget<'_>,
    turns: &[Turn],
    max_turns: usize,
) -> Result<Appended, AppendError> {
    let mut transaction = crate::db::begin(pool, tenant).await?;

    let key = match target {
        CallTarget::Source(key) => key.clone(),
        CallTarget::Id(id) => {
            let key: Option<(String, String)> = sqlx::query_as(
                "SELECT source_system, source_call_id FROM calls WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?;
            let (system, id) = key.ok_or(AppendError::NotFound)?;
            SourceKey { system, id }
        }
    };
    // The lock that opening and completing take too (see the module's doc).
    let call: LockedCall = sqlx::query_as(
        "SELECT id, version, state, task_id, source_call_id FROM calls
         WHERE tenant_id = $1 AND source_system = $2 AND source_call_id = $3
         FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(&key.system)
    .bind(&key.id)
    .fetch_optional(&mut *transaction)
    .await?
    .ok_or(AppendError::NotFound)?;
    if call.state != CallState::InProgress as i16 {
        return Err(AppendError::NotInProgress);
    }

    let (last, stored_count): (i32, i64) = sqlx::query_as(
        "SELECT coalesce(max(sequence), 0), count(*) FROM turns
         WHERE tenant_id = $1 AND call_id = $2",
    )
    .bind(tenant.as_str())
    .bind(call.id)
    .fetch_one(&mut *transaction)
    .await?;

    // Sequences strictly increase, so the turns already stored (or claimed) come first.
    let claimed: Vec<i32> = turns
        .iter()
        .map(|turn| turn.sequence)
        .filter(|sequence| *sequence <= last)
        .collect();
    let stored = load_turns(&mut transaction, tenant, call.id, Some(&claimed)).await?;
    for (index, turn) in turns.iter().enumerate().take(claimed.len()) {
        match stored
            .iter()
            .find(|stored| stored.sequence == turn.sequence)
        {
            Some(stored) if same_turn(stored, turn) => {}
            Some(_) => {
                return Err(AppendError::Conflict {
                    index,
                    sequence: turn.sequence,
                });
            }
            None => {
                return Err(AppendError::NotAfterStored {
                    index,
                    sequence: turn.sequence,
                    last,
                });
            }
        }
    }
    let new = &turns[claimed.len()..];
    let stored_count = usize::try_from(stored_count).unwrap_or(usize::MAX);
    let mut appended = Appended {
        id: call.id,
        version: call.version,
        source_call_id: call.source_call_id,
        turn_count: i32::try_from(stored_count).unwrap_or(i32::MAX),
        added: new.len(),
    };
    if new.is_empty() {
        // A retry: nothing to write. Rolling back releases the locks.
        transaction.rollback().await?;
        return Ok(appended);
    }
    let total = stored_count.saturating_add(new.len());
    if total > max_turns {
        return Err(AppendError::TooManyTurns {
            total,
            limit: max_turns,
        });
    }

    insert_turns(&mut transaction, tenant, call.id, new, &[]).await?;
    appended.turn_count = i32::try_from(total).unwrap_or(i32::MAX);
    // The feed's ordering key: never before the call's previous event (see the migration
    // `feed_order_key`).
    let feed_tx: String = sqlx::query_scalar(
        "UPDATE calls SET turn_count = $3, update_time = now(),
                          feed_tx = greatest(feed_tx, pg_current_xact_id())
         WHERE tenant_id = $1 AND id = $2
         RETURNING feed_tx::text",
    )
    .bind(tenant.as_str())
    .bind(call.id)
    .bind(appended.turn_count)
    .fetch_one(&mut *transaction)
    .await?;
    let sequences: Vec<i32> = new.iter().map(|turn| turn.sequence).collect();
    sqlx::query(
        "INSERT INTO feed_events
             (tenant_id, kind, call_id, call_version, task_id, turn_sequence, tx_id)
         SELECT $1, $2, $3, $4, $5, appended.sequence, $7::text::xid8
         FROM unnest($6::integer[]) WITH ORDINALITY AS appended (sequence, position)
         ORDER BY appended.position",
    )
    .bind(tenant.as_str())
    .bind(CallEventKind::TurnAppended as i16)
    .bind(call.id)
    .bind(call.version)
    .bind(call.task_id)
    .bind(sequences)
    .bind(feed_tx)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(appended)
}

/// Whether a stored turn is the one sent again. Times are compared to the microsecond, the
/// precision the table keeps (whether the value was rounded or truncated on the way in).
fn same_turn(stored: &Turn, sent: &Turn) -> bool {
    let times_match = match (stored.time, sent.time) {
        (Some(stored), Some(sent)) => (stored - sent).abs() < Duration::microseconds(1),
        (stored, sent) => stored == sent,
    };
    times_match
        && Turn {
            time: None,
            ..stored.clone()
        } == Turn {
            time: None,
            ..sent.clone()
        }
}

#[derive(sqlx::FromRow)]
struct TurnRow {
    sequence: i32,
    speaker: i16,
    text: String,
    time: Option<DateTime<Utc>>,
    start_offset_ms: Option<i64>,
    end_offset_ms: Option<i64>,
    speak_ms: Option<i64>,
    play_ms: Option<i64>,
    node_id: Option<String>,
    node_name: Option<String>,
    node_class: Option<String>,
    node_type: i16,
    trigger_title: Option<String>,
    matched_keyword: Option<String>,
    jump_type: i16,
    match_type: Option<i32>,
    score_delta: Option<i64>,
    label: Option<String>,
    audio_file: Option<String>,
    audio_pieces: Option<Json<Vec<AudioPiece>>>,
    asr_engine: Option<String>,
    asr_latency_ms: Option<i64>,
    record_ms: Option<i64>,
    volume_gain: Option<f64>,
    question_index: Option<i32>,
    after_transfer: bool,
    source_turn_id: Option<String>,
    extra: Json<Extra>,
}

/// Reads turns back into domain turns, column by column as `insert_turns` wrote them, with
/// their tags by the source's id (names are not kept per turn: `None`). `sequences` limits the
/// load to those sequences.
pub async fn load_turns(
    connection: &mut PgConnection,
    tenant: &TenantId,
    call_id: Uuid,
    sequences: Option<&[i32]>,
) -> Result<Vec<Turn>, DbError> {
    if sequences.is_some_and(<[i32]>::is_empty) {
        return Ok(Vec::new());
    }
    let rows: Vec<TurnRow> = sqlx::query_as(
        "SELECT sequence, speaker, text, time, start_offset_ms, end_offset_ms, speak_ms, play_ms,
                node_id, node_name, node_class, node_type, trigger_title, matched_keyword,
                jump_type, match_type, score_delta, label, audio_file, audio_pieces, asr_engine,
                asr_latency_ms, record_ms, volume_gain, question_index, after_transfer,
                source_turn_id, extra
         FROM turns
         WHERE tenant_id = $1 AND call_id = $2 AND ($3::integer[] IS NULL OR sequence = ANY($3))
         ORDER BY sequence",
    )
    .bind(tenant.as_str())
    .bind(call_id)
    .bind(sequences)
    .fetch_all(&mut *connection)
    .await?;
    let tags: Vec<(i32, String)> = sqlx::query_as(
        "SELECT turn_tags.sequence, tags.source_tag_id FROM turn_tags
         JOIN tags ON tags.tenant_id = turn_tags.tenant_id AND tags.id = turn_tags.tag_id
         WHERE turn_tags.tenant_id = $1 AND turn_tags.call_id = $2
           AND ($3::integer[] IS NULL OR turn_tags.sequence = ANY($3))
         ORDER BY turn_tags.sequence, tags.source_tag_id",
    )
    .bind(tenant.as_str())
    .bind(call_id)
    .bind(sequences)
    .fetch_all(&mut *connection)
    .await?;

    Ok(rows
        .into_iter()
        .map(|row| {
            let turn_tags = tags
                .iter()
                .filter(|(sequence, _)| *sequence == row.sequence)
                .map(|(_, source_tag_id)| TagRef {
                    source_tag_id: source_tag_id.clone(),
                    name: None,
                })
                .collect();
            turn_from_row(row, turn_tags)
        })
        .collect())
}

fn turn_from_row(row: TurnRow, tags: Vec<TagRef>) -> Turn {
    Turn {
        sequence: row.sequence,
        speaker: code(row.speaker),
        text: row.text,
        time: row.time,
        start_offset_ms: row.start_offset_ms,
        end_offset_ms: row.end_offset_ms,
        speak_ms: row.speak_ms,
        play_ms: row.play_ms,
        node_id: row.node_id,
        node_name: row.node_name,
        node_class: row.node_class,
        node_type: code(row.node_type),
        trigger_title: row.trigger_title,
        matched_keyword: row.matched_keyword,
        jump_type: code(row.jump_type),
        match_type: row.match_type,
        score_delta: row.score_delta,
        label: row.label,
        audio_file: row.audio_file,
        audio_pieces: row.audio_pieces.map(|pieces| pieces.0).unwrap_or_default(),
        asr_engine: row.asr_engine,
        asr_latency_ms: row.asr_latency_ms,
        record_ms: row.record_ms,
        volume_gain: row.volume_gain,
        question_index: row.question_index,
        after_transfer: row.after_transfer,
        source_turn_id: row.source_turn_id,
        tags,
        extra: row.extra.0,
    }
}

/// A stored code-table number as its enum; the columns only ever hold defined values.
fn code<E: TryFrom<i32> + Default>(value: i16) -> E {
    E::try_from(i32::from(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_sent_again_matches_its_stored_copy_to_the_microsecond() {
        let time = |nanos| DateTime::from_timestamp(1_744_597_153, nanos);
        let sent = Turn {
            sequence: 1,
            text: "您好".to_owned(),
            time: time(123_456_789),
            ..Turn::default()
        };
        for stored_nanos in [123_456_000, 123_457_000] {
            let stored = Turn {
                time: time(stored_nanos),
                ..sent.clone()
            };
            assert!(same_turn(&stored, &sent), "{stored_nanos}");
        }
        let later = Turn {
            time: time(123_458_000),
            ..sent.clone()
        };
        assert!(!same_turn(&later, &sent));
        let untimed = Turn {
            time: None,
            ..sent.clone()
        };
        assert!(!same_turn(&untimed, &sent));
        let other_text = Turn {
            text: "喂".to_owned(),
            ..sent.clone()
        };
        assert!(!same_turn(&other_text, &sent));
    }
}
