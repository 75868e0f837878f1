//! Quality inspection (质检): metrics computed from a call's dialogue, and rule sets that score
//! it.
//!
//! Everything but [`rescore`] (the background runner of re-scoring jobs) is pure: no I/O, no
//! clock. [`metrics`] measures a [`Dialogue`] (who spoke,
//! how long, the silences and interruptions between turns), [`rules`] holds validated rule sets
//! and compiles them, and [`score`] applies a compiled rule set and a scoring profile to the
//! measured dialogue. The ingest writer, the re-scoring jobs and the API build on these.

use serde::{Deserialize, Serialize};

use crate::domain::call::Turn;
use crate::domain::quality::Segment;
use crate::proto::Speaker;

pub mod metrics;
pub mod rescore;
pub mod rules;
pub mod score;

/// When an utterance was said, as precisely as its format tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Timing {
    /// Start and end, milliseconds from the call's start (native turn offsets, Huawei QC
    /// segments). Every metric can be computed.
    Span { start_ms: i64, end_ms: i64 },
    /// Only how long it lasted (task API `speak_ms` / `play_ms`); the order is the sequence.
    /// Speaking times and rates can be computed, silences and interruptions cannot.
    Duration { ms: i64 },
    /// Only when it started, to the second (hangup push `talk_datetime`), milliseconds from the
    /// first utterance. Orders the turns; no length can be computed from it.
    Start { at_ms: i64 },
    /// Nothing about time.
    Unknown,
}

/// One utterance of a dialogue, as quality inspection sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    /// The turn's sequence (Huawei: the segment id).
    pub sequence: i32,
    pub speaker: Speaker,
    pub text: String,
    pub timing: Timing,
    /// Script node of a robot line (its name, else its id).
    pub node: Option<String>,
}

/// A call's dialogue with what the metrics need of the call itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dialogue {
    /// In sequence order.
    pub utterances: Vec<Utterance>,
    /// The call's talk time (answer to hang-up), when known: the denominator of speech ratios.
    pub talk_duration_ms: Option<i64>,
    /// The script node the source says the call ended on, when it says so.
    pub end_node: Option<String>,
}

impl Dialogue {
    /// The dialogue of a call's turns. Each turn takes the best timing it carries: start and
    /// end offsets, else its duration (`speak_ms` of a customer or agent line, `play_ms` of a
    /// robot line), else its time relative to the first turn's, else none. A robot line after
    /// a transfer to a human is the agent's.
    pub fn from_turns(
        turns: &[Turn],
        talk_duration_ms: Option<i64>,
        end_node: Option<String>,
    ) -> Self {
        let first_time = turns.iter().filter_map(|turn| turn.time).min();
        let mut utterances: Vec<Utterance> = turns
            .iter()
            .map(|turn| {
                let duration = match turn.speaker {
                    Speaker::Robot => turn.play_ms,
                    _ => turn.speak_ms,
                };
                let timing = match (turn.start_offset_ms, turn.end_offset_ms, duration) {
                    (Some(start_ms), Some(end_ms), _) => Timing::Span { start_ms, end_ms },
                    (_, _, Some(ms)) => Timing::Duration { ms },
                    _ => match (turn.time, first_time) {
                        (Some(time), Some(first)) => Timing::Start {
                            at_ms: (time - first).num_milliseconds(),
                        },
                        _ => Timing::Unknown,
                    },
                };
                // After a transfer the other side of the customer is the human agent.
                let speaker = match turn.speaker {
                    Speaker::Robot if turn.after_transfer => Speaker::Agent,
                    speaker => speaker,
                };
                Utterance {
                    sequence: turn.sequence,
                    speaker,
                    text: turn.text.clone(),
                    timing,
                    node: turn.node_name.clone().or_else(|| turn.node_id.clone()),
                }
            })
            .collect();
        utterances.sort_by_key(|utterance| utterance.sequence);
        Self {
            utterances,
            talk_duration_ms,
            end_node,
        }
    }

    /// The dialogue of an imported result's speech segments (Huawei QC): exact spans.
    pub fn from_segments(segments: &[Segment], duration_ms: Option<i64>) -> Self {
        let mut utterances: Vec<Utterance> = segments
            .iter()
            .map(|segment| Utterance {
                sequence: i32::try_from(segment.segment_id).unwrap_or(i32::MAX),
                speaker: segment.speaker,
                text: segment.text.clone(),
                timing: Timing::Span {
                    start_ms: segment.start_offset_ms,
                    end_ms: segment.end_offset_ms,
                },
                node: None,
            })
            .collect();
        utterances.sort_by_key(|utterance| utterance.sequence);
        Self {
            utterances,
            talk_duration_ms: duration_ms,
            end_node: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.utterances.is_empty()
    }
}

/// What a rule set brings to scoring: its compiled rules and its profile.
#[derive(Debug, Clone)]
pub struct Scorer {
    /// Shared: a rule set's version never changes, so its compiled form is cached.
    pub rules: std::sync::Arc<rules::CompiledRuleSet>,
    pub profile: score::Profile,
}

/// A computed quality result: the metrics, and the score when a rule set was applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    pub metrics: metrics::Metrics,
    pub scoring: Option<Scoring>,
}

/// The scoring part of a computed result.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    pub rule_set_id: uuid::Uuid,
    pub rule_set_version: i64,
    pub profile: score::Profile,
    pub scored: score::Scored,
}

/// Measures a dialogue and, with a scorer, scores it.
pub fn inspect(dialogue: &Dialogue, scorer: Option<&Scorer>) -> Computed {
    let metrics = metrics::measure(dialogue);
    let scoring = scorer.map(|scorer| Scoring {
        rule_set_id: scorer.rules.rule_set_id,
        rule_set_version: scorer.rules.version,
        profile: scorer.profile.clone(),
        scored: score::score(&scorer.rules, &scorer.profile, dialogue, &metrics),
    });
    Computed { metrics, scoring }
}

impl Computed {
    /// The score, when the result was scored.
    pub fn score(&self) -> Option<f64> {
        self.scoring.as_ref().map(|scoring| scoring.scored.score)
    }

    /// The ids of the rules that fired, each once, sorted.
    pub fn hit_rule_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .scoring
            .iter()
            .flat_map(|scoring| scoring.scored.hits.iter().map(|hit| hit.rule_id.clone()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Total rule hits, when scored.
    pub fn violation_count(&self) -> Option<i32> {
        self.scoring
            .as_ref()
            .map(|scoring| i32::try_from(scoring.scored.hits.len()).unwrap_or(i32::MAX))
    }

    /// The result as stored in `quality_results.details` (the names the API reads back), with
    /// unknown values left out.
    pub fn details(&self) -> serde_json::Value {
        serde_json::to_value(self.stored()).unwrap_or_default()
    }

    /// [`Self::details`] as JSON text, what is stored and hashed. Written straight from the
    /// result (no intermediate JSON tree): it is on the ingest path of every call.
    pub fn details_json(&self) -> String {
        serde_json::to_string(&self.stored()).unwrap_or_else(|_| "{}".to_owned())
    }

    fn stored(&self) -> StoredDetails<'_> {
        let metrics = &self.metrics;
        StoredDetails {
            duration_ms: metrics.duration_ms,
            sides: metrics.sides.iter().map(StoredSide).collect(),
            silence_time_ms: metrics.silence_time_ms,
            longest_silence_ms: metrics.longest_silence_ms,
            interruption_count: metrics.interruption_count,
            interruption_overlap_ms: metrics.interruption_overlap_ms,
            customer_last_reply: metrics.customer_last_reply.as_deref(),
            end_node: metrics.end_node.as_deref(),
            profile: self.scoring.as_ref().map(|scoring| &scoring.profile),
            rule_hits: self
                .scoring
                .as_ref()
                .map(|scoring| scoring.scored.hits.iter().map(StoredHit::of).collect()),
            violations: self.scoring.as_ref().map(|scoring| {
                scoring
                    .scored
                    .violations
                    .iter()
                    .map(|&(severity, count)| StoredViolation { severity, count })
                    .collect()
            }),
        }
    }

    /// SHA-256 of everything the result says: equal hashes mean a re-score changed nothing.
    pub fn content_hash(&self) -> Vec<u8> {
        Self::content_hash_of(&self.details_json(), self.scoring.as_ref())
    }

    /// [`Self::content_hash`] of a result whose [`Self::details_json`] is already made.
    pub fn content_hash_of(details_json: &str, scoring: Option<&Scoring>) -> Vec<u8> {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(details_json);
        if let Some(scoring) = scoring {
            hasher.update(scoring.rule_set_id.as_bytes());
            hasher.update(scoring.rule_set_version.to_be_bytes());
            hasher.update(scoring.scored.score.to_be_bytes());
        }
        hasher.finalize().to_vec()
    }
}

/// The stored form of a computed result (see `Computed::details`).
#[derive(Serialize)]
struct StoredDetails<'result> {
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<i64>,
    sides: Vec<StoredSide<'result>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silence_time_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    longest_silence_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interruption_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interruption_overlap_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_last_reply: Option<&'result str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_node: Option<&'result str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'result score::Profile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_hits: Option<Vec<StoredHit<'result>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<Vec<StoredViolation>>,
}

/// A rule hit as stored: short keys, as every scored call has several (a result's rule-set
/// version is its column, not repeated per hit). `convert_read` reads both these keys and the
/// long ones.
#[derive(Serialize)]
struct StoredHit<'result> {
    /// Rule id.
    r: &'result str,
    /// Rule name.
    n: &'result str,
    /// Turn sequence.
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<i32>,
    /// Character offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    o: Option<i32>,
    /// Matched text.
    #[serde(skip_serializing_if = "str::is_empty")]
    m: &'result str,
    /// Points.
    p: f64,
    /// Severity (its enum number).
    s: i32,
}

impl<'result> StoredHit<'result> {
    fn of(hit: &'result score::Hit) -> Self {
        Self {
            r: &hit.rule_id,
            n: &hit.rule_name,
            t: hit.turn_sequence,
            o: hit.offset,
            m: &hit.matched_text,
            p: hit.points,
            s: hit.severity as i32,
        }
    }
}

#[derive(Serialize)]
struct StoredViolation {
    severity: crate::proto::Severity,
    count: i32,
}

/// A side's metrics without its unknown values.
struct StoredSide<'result>(&'result crate::domain::quality::SideMetrics);

impl Serialize for StoredSide<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let side = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("speaker", &side.speaker)?;
        if let Some(channel) = &side.channel {
            map.serialize_entry("channel", channel)?;
        }
        if let Some(value) = side.speaking_time_ms {
            map.serialize_entry("speaking_time_ms", &value)?;
        }
        if let Some(value) = side.speech_ratio {
            map.serialize_entry("speech_ratio", &value)?;
        }
        if let Some(value) = side.speaking_rate_cpm {
            map.serialize_entry("speaking_rate_cpm", &value)?;
        }
        if let Some(value) = side.turn_count {
            map.serialize_entry("turn_count", &value)?;
        }
        if let Some(value) = side.silence_time_ms {
            map.serialize_entry("silence_time_ms", &value)?;
        }
        if !side.emotions.is_empty() {
            map.serialize_entry("emotions", &side.emotions)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};

    use super::*;

    fn turn(sequence: i32, speaker: Speaker) -> Turn {
        Turn {
            sequence,
            speaker,
            text: format!("line {sequence}"),
            ..Turn::default()
        }
    }

    #[test]
    fn each_turn_takes_the_best_timing_it_carries() {
        let first = Utc.with_ymd_and_hms(2025, 4, 14, 10, 0, 0).single();
        let turns = vec![
            Turn {
                start_offset_ms: Some(100),
                end_offset_ms: Some(900),
                play_ms: Some(5),
                ..turn(3, Speaker::Robot)
            },
            Turn {
                play_ms: Some(700),
                speak_ms: Some(1),
                ..turn(1, Speaker::Robot)
            },
            Turn {
                speak_ms: Some(400),
                ..turn(2, Speaker::Customer)
            },
            Turn {
                time: first.map(|time| time + chrono::Duration::seconds(3)),
                ..turn(5, Speaker::Customer)
            },
            Turn {
                time: first,
                ..turn(4, Speaker::Customer)
            },
            turn(6, Speaker::Robot),
        ];
        let dialogue = Dialogue::from_turns(&turns, Some(9_000), Some("end".to_owned()));
        let timings: Vec<(i32, Timing)> = dialogue
            .utterances
            .iter()
            .map(|utterance| (utterance.sequence, utterance.timing))
            .collect();
        assert_eq!(
            timings,
            [
                (1, Timing::Duration { ms: 700 }),
                (2, Timing::Duration { ms: 400 }),
                (
                    3,
                    Timing::Span {
                        start_ms: 100,
                        end_ms: 900
                    }
                ),
                (4, Timing::Start { at_ms: 0 }),
                (5, Timing::Start { at_ms: 3_000 }),
                (6, Timing::Unknown),
            ]
        );
        assert_eq!(dialogue.talk_duration_ms, Some(9_000));
    }

    #[test]
    fn robot_lines_after_a_transfer_are_the_agents() {
        let turns = vec![
            turn(1, Speaker::Robot),
            Turn {
                after_transfer: true,
                ..turn(2, Speaker::Robot)
            },
            Turn {
                after_transfer: true,
                ..turn(3, Speaker::Customer)
            },
        ];
        let speakers: Vec<Speaker> = Dialogue::from_turns(&turns, None, None)
            .utterances
            .iter()
            .map(|utterance| utterance.speaker)
            .collect();
        assert_eq!(
            speakers,
            [Speaker::Robot, Speaker::Agent, Speaker::Customer]
        );
    }
}
