//! Feed events as streams send them: a feed row with its call, turn or quality result read and
//! rendered once, whichever number of streams it goes to, and the filter streams apply.
//!
//! The tailer renders every event of a batch for all the streams of its tenant, so the wire
//! messages are built here, once, rather than once per stream at the API edge.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::convert::utc_to_timestamp;
use crate::api::convert_read::{call_to_proto, quality_to_proto, turn_to_proto};
use crate::db::DbError;
use crate::db::calls_read::{self, CallEmbed, CallRead, CallRow};
use crate::db::feed::{FeedRow, FeedSelection, SnapshotFilter};
use crate::domain::TenantId;
use crate::domain::call_query::Range;
use crate::feed::cursor::{Cursor, Position};
use crate::feed::wire::Outgoing;
use crate::proto;

/// What the filter looks at of a call, as read when the event is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    pub tag_ids: Vec<Uuid>,
    pub level_id: Option<Uuid>,
    pub score: Option<i64>,
    pub outcome: i16,
}

impl CallFacts {
    fn of(row: &CallRow) -> Self {
        Self {
            tag_ids: row.tag_ids.clone(),
            level_id: row.level_id,
            score: row.score,
            outcome: row.outcome,
        }
    }
}

/// One event, ready to send.
#[derive(Debug)]
pub struct Event {
    pub position: Position,
    /// The transaction that wrote the event (a snapshot may have seen it).
    pub writer_tx: u64,
    pub kind: i16,
    pub task_id: Option<Uuid>,
    /// `None` when the call cannot be read (it never is deleted, so only in a damaged store).
    pub facts: Option<CallFacts>,
    /// The message encoded in the FULL view, and in BASIC, with `cursor`.
    pub full: Bytes,
    pub basic: Bytes,
    /// The cursor after the event, for a stream without a snapshot to skip.
    pub cursor: Arc<str>,
    /// When the change was committed (the feed row's time).
    pub time: chrono::DateTime<chrono::Utc>,
}

impl Event {
    fn new(row: &FeedRow, facts: Option<CallFacts>, message: proto::WatchCallsResponse) -> Self {
        let full = Bytes::from(message.encode_to_vec());
        let basic = match &message.call {
            Some(call) if !call.tags.is_empty() || call.level.is_some() => {
                let mut basic = message.clone();
                if let Some(call) = basic.call.as_mut() {
                    to_basic(call);
                }
                Bytes::from(basic.encode_to_vec())
            }
            // Nothing for BASIC to leave out: the same bytes.
            _ => full.clone(),
        };
        Self {
            time: row.create_time,
            position: row.position,
            writer_tx: row.writer_tx,
            kind: row.kind,
            task_id: row.task_id,
            facts,
            full,
            basic,
            cursor: Arc::from(message.cursor.as_str()),
        }
    }

    /// The message for a stream: the view it asked for, and its own cursor when it carries a
    /// snapshot.
    pub fn message_for(&self, view: CallEmbed, cursor: Option<String>) -> Outgoing {
        let body = match view {
            CallEmbed::Basic => self.basic.clone(),
            CallEmbed::Full | CallEmbed::Detail => self.full.clone(),
        };
        let outgoing = Outgoing::shared(body, self.cursor.clone());
        match cursor {
            Some(cursor) => outgoing.with_cursor(Arc::from(cursor)),
            None => outgoing,
        }
    }
}

/// Strips what the FULL view adds to BASIC: the tag and level objects (their ids stay).
pub fn to_basic(call: &mut proto::CallRecord) {
    call.tags.clear();
    call.level = None;
}

/// Reads what the rows refer to and renders them, in the rows' order: one statement each for
/// the calls (with their tags and levels), the turns and the quality results.
pub async fn load(
    pool: &PgPool,
    tenant: &TenantId,
    rows: Vec<FeedRow>,
) -> Result<Vec<Arc<Event>>, DbError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let call_ids: Vec<Uuid> = rows
        .iter()
        .map(|row| row.call_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let turn_keys: Vec<(Uuid, i32)> = rows
        .iter()
        .filter_map(|row| row.turn_sequence.map(|sequence| (row.call_id, sequence)))
        .collect();
    let quality_ids: Vec<Uuid> = rows.iter().filter_map(|row| row.quality_id).collect();

    // A read in the tenant's scope; dropping it at the end rolls it back.
    let mut connection = crate::db::begin(pool, tenant).await?;
    let calls: HashMap<Uuid, CallRead> =
        calls_read::load_calls_on(&mut connection, tenant, &call_ids, CallEmbed::Full)
            .await?
            .into_iter()
            .map(|read| (read.call.id, read))
            .collect();
    let mut turns: HashMap<(Uuid, i32), proto::Turn> =
        calls_read::load_turns_at(&mut connection, tenant, &turn_keys)
            .await?
            .into_iter()
            .map(|turn| ((turn.call_id, turn.sequence), turn_to_proto(turn)))
            .collect();
    let mut quality: HashMap<Uuid, proto::QualityResult> =
        calls_read::load_quality_by_ids(&mut connection, tenant, &quality_ids)
            .await?
            .into_iter()
            .map(|result| (result.id, quality_to_proto(result)))
            .collect();
    drop(connection);

    // A call with several events in the batch is rendered once and cloned.
    let mut records: HashMap<Uuid, proto::CallRecord> = HashMap::with_capacity(calls.len());
    Ok(rows
        .into_iter()
        .map(|row| {
            let read = calls.get(&row.call_id);
            let call = read.map(|read| {
                records
                    .entry(row.call_id)
                    .or_insert_with(|| call_to_proto(read.clone()))
                    .clone()
            });
            let turn = row
                .turn_sequence
                .and_then(|sequence| turns.remove(&(row.call_id, sequence)));
            let quality = row.quality_id.and_then(|id| quality.remove(&id));
            let facts = read.map(|read| CallFacts::of(&read.call));
            Arc::new(Event::new(
                &row,
                facts,
                proto::WatchCallsResponse {
                    kind: i32::from(row.kind),
                    cursor: Cursor::at(row.position).encode(tenant),
                    call,
                    turn,
                    quality,
                    call_id: row.call_id.to_string(),
                    call_version: row.call_version,
                    event_time: Some(utc_to_timestamp(row.create_time)),
                },
            ))
        })
        .collect())
}

/// Which events a stream wants: all AND'ed, each list OR'ed, empty lists match all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    pub task_ids: Vec<Uuid>,
    pub tag_ids: Vec<Uuid>,
    pub level_ids: Vec<Uuid>,
    /// A call without a score never matches a score range.
    pub score: Option<Range>,
    pub outcomes: Vec<i16>,
    pub kinds: Vec<i16>,
}

impl WatchFilter {
    /// Whether the stream wants `event`.
    pub fn matches(&self, event: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&event.kind) {
            return false;
        }
        if !self.task_ids.is_empty()
            && !event
                .task_id
                .is_some_and(|task| self.task_ids.contains(&task))
        {
            return false;
        }
        self.matches_call(event.facts.as_ref())
    }

    fn matches_call(&self, facts: Option<&CallFacts>) -> bool {
        let needs_call = !self.tag_ids.is_empty()
            || !self.level_ids.is_empty()
            || self.score.is_some()
            || !self.outcomes.is_empty();
        let Some(facts) = facts else {
            return !needs_call;
        };
        (self.tag_ids.is_empty() || facts.tag_ids.iter().any(|tag| self.tag_ids.contains(tag)))
            && (self.level_ids.is_empty()
                || facts
                    .level_id
                    .is_some_and(|level| self.level_ids.contains(&level)))
            && self
                .score
                .is_none_or(|range| facts.score.is_some_and(|score| range.contains(score)))
            && (self.outcomes.is_empty() || self.outcomes.contains(&facts.outcome))
    }

    /// What the database can select by itself when a stream reads the feed on its own.
    pub fn selection(&self) -> FeedSelection {
        FeedSelection {
            kinds: self.kinds.clone(),
            task_ids: self.task_ids.clone(),
        }
    }

    /// The calls a snapshot shows.
    pub fn snapshot_filter(&self) -> SnapshotFilter {
        SnapshotFilter {
            task_ids: self.task_ids.clone(),
            tag_ids: self.tag_ids.clone(),
            level_ids: self.level_ids.clone(),
            score_min: self.score.and_then(|range| range.min),
            score_max: self.score.and_then(|range| range.max),
            outcomes: self.outcomes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: i16, task_id: Option<Uuid>, facts: Option<CallFacts>) -> Event {
        let row = FeedRow {
            position: Position { tx: 10, id: 1 },
            writer_tx: 10,
            kind,
            call_id: Uuid::now_v7(),
            call_version: 1,
            task_id,
            turn_sequence: None,
            quality_id: None,
            create_time: chrono::Utc::now(),
        };
        Event::new(&row, facts, proto::WatchCallsResponse::default())
    }

    #[test]
    fn every_filter_is_anded_and_each_list_ored() {
        let task = Uuid::now_v7();
        let tag = Uuid::now_v7();
        let level = Uuid::now_v7();
        let facts = CallFacts {
            tag_ids: vec![Uuid::now_v7(), tag],
            level_id: Some(level),
            score: Some(70),
            outcome: 1,
        };
        let created = event(1, Some(task), Some(facts.clone()));
        assert!(WatchFilter::default().matches(&created));

        let all = WatchFilter {
            task_ids: vec![Uuid::now_v7(), task],
            tag_ids: vec![tag],
            level_ids: vec![level],
            score: Some(Range {
                min: Some(60),
                max: Some(71),
            }),
            outcomes: vec![1, 2],
            kinds: vec![1, 2],
        };
        assert!(all.matches(&created));

        let misses = [
            WatchFilter {
                task_ids: vec![Uuid::now_v7()],
                ..all.clone()
            },
            WatchFilter {
                tag_ids: vec![Uuid::now_v7()],
                ..all.clone()
            },
            WatchFilter {
                level_ids: vec![Uuid::now_v7()],
                ..all.clone()
            },
            WatchFilter {
                score: Some(Range {
                    min: Some(71),
                    max: None,
                }),
                ..all.clone()
            },
            WatchFilter {
                outcomes: vec![3],
                ..all.clone()
            },
            WatchFilter {
                kinds: vec![4],
                ..all.clone()
            },
        ];
        for filter in misses {
            assert!(!filter.matches(&created), "{filter:?}");
        }

        let unscored = event(
            1,
            None,
            Some(CallFacts {
                score: None,
                ..facts
            }),
        );
        let scored = WatchFilter {
            score: Some(Range::default()),
            ..WatchFilter::default()
        };
        assert!(!scored.matches(&unscored), "no score never matches a range");
        let by_task = WatchFilter {
            task_ids: vec![task],
            ..WatchFilter::default()
        };
        assert!(!by_task.matches(&unscored), "no task never matches tasks");
    }
}
