//! A validated call list query: which calls (filters), in which order. The API layer builds it
//! from a `ListCallsRequest`; `db::calls_list` turns it into SQL. It serializes, so page tokens
//! can fingerprint it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::transcript::Needle;

/// A half-open range `[min, max)`; an unset bound is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Range {
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl Range {
    pub fn contains(&self, value: i64) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value < max)
    }
}

/// Text said in the dialogue, by one speaker or anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TranscriptFilter {
    /// The speaker's number (`Speaker`); `None` for anyone.
    pub speaker: Option<i16>,
    pub needle: Needle,
}

/// A half-open range of quality scores `[min, max)`; an unset bound is open. The bounds are
/// finite (checked at the edge), which makes equality total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ScoreRange {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Eq for ScoreRange {}

/// A rule that fired, in the call's latest computed quality result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleHitFilter {
    pub rule_id: String,
    /// `None`: the rule id in any rule set.
    pub rule_set_id: Option<Uuid>,
}

/// Every filter of a call list; all set filters must hold, values within one are OR'ed.
/// Enum filters hold the enum numbers as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallFilter {
    pub score_ranges: Vec<Range>,
    pub level_ids: Vec<Uuid>,
    pub callee: Option<String>,
    pub callee_prefix: Option<String>,
    /// Talk time in whole seconds.
    pub talk_seconds: Option<Range>,
    pub rounds: Option<Range>,
    pub any_tag_ids: Vec<Uuid>,
    pub all_tag_ids: Vec<Uuid>,
    pub dial_time_start: Option<DateTime<Utc>>,
    pub dial_time_end: Option<DateTime<Utc>>,
    pub outcomes: Vec<i16>,
    pub number_statuses: Vec<i16>,
    pub genders: Vec<i16>,
    pub hangup_sides: Vec<i16>,
    pub carriers: Vec<i16>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub transferred: Option<bool>,
    pub read: Option<bool>,
    pub transcript: Option<TranscriptFilter>,
    /// Score of the latest computed quality result.
    pub quality_score: Option<ScoreRange>,
    /// Rules the latest computed quality result hit, OR'ed.
    pub rule_hits: Vec<RuleHitFilter>,
}

/// The key calls are ordered by (then by id, which makes the order total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum CallOrder {
    #[default]
    DialTime,
    Score,
    TalkTime,
    Rounds,
}

/// Which calls, in which order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallListQuery {
    /// Calls of this task; `None` for every task of the tenant.
    pub task_id: Option<Uuid>,
    pub filter: CallFilter,
    pub order: CallOrder,
    pub ascending: bool,
}

/// Where a page ends: the last call's sort key and id. The next page starts after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CallPosition {
    /// The sort key: dial time in microseconds since the epoch, or the score, talk time (ms) or
    /// rounds with a missing value as the type's minimum.
    pub key: i64,
    pub id: Uuid,
}
