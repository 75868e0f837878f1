//! Scoring: a compiled rule set and a profile applied to a measured dialogue.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::domain::transcript::normalize;
use crate::proto::{Severity, Speaker};
use crate::quality::Dialogue;
use crate::quality::metrics::Metrics;
use crate::quality::rules::{Check, CompiledRule, CompiledRuleSet, KeywordIndex};

/// A scoring profile: where scores start and the bounds they are clamped to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// `None` for the built-in profile.
    pub id: Option<uuid::Uuid>,
    pub name: String,
    pub base: f64,
    pub lower_bound: f64,
    pub upper_bound: f64,
}

impl Profile {
    /// The profile of a rule set that names none: 100 points, clamped to 0..=100.
    pub fn builtin() -> Self {
        Self {
            id: None,
            name: "default".to_owned(),
            base: 100.0,
            lower_bound: 0.0,
            upper_bound: 100.0,
        }
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub rule_id: String,
    pub rule_name: String,
    pub rule_set_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_sequence: Option<i32>,
    /// Character (not byte) offset of the match within the turn's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i32>,
    pub matched_text: String,
    pub points: f64,
    pub severity: Severity,
}

/// The outcome of scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Base plus every hit's points, clamped to the profile's bounds.
    pub score: f64,
    /// In rule order, then turn order.
    pub hits: Vec<Hit>,
    /// Hits per severity, for the severities that have any, most severe first.
    pub violations: Vec<(Severity, i32)>,
}

/// Severities from the most severe down: the order of [`Scored::violations`].
const SEVERITY_ORDER: [Severity; 5] = [
    Severity::Critical,
    Severity::Major,
    Severity::Minor,
    Severity::Info,
    Severity::Unspecified,
];

/// Applies the rules and the profile.
pub fn score(
    rules: &CompiledRuleSet,
    profile: &Profile,
    dialogue: &Dialogue,
    metrics: &Metrics,
) -> Scored {
    // Each utterance's text, normalised once and scanned once for all keyword rules (if there
    // are any).
    let has_keywords = rules
        .rules()
        .iter()
        .any(|rule| matches!(rule.check, Check::Keyword { .. }));
    let texts = if has_keywords {
        Texts::new(rules.keyword_index(), dialogue)
    } else {
        Texts::default()
    };
    let mut hits = Vec::new();
    for (index, rule) in rules.rules().iter().enumerate() {
        let mut found = Found {
            rule,
            version: rules.version,
            hits: &mut hits,
        };
        match &rule.check {
            Check::Keyword {
                speaker,
                keywords,
                patterns,
                required,
            } => {
                let keyword = KeywordCheck {
                    speaker: *speaker,
                    keywords,
                    ids: rules.keyword_index().ids(index),
                    patterns,
                };
                if *required {
                    keyword.required(&texts, &mut found);
                } else {
                    keyword.forbidden(&texts, &mut found);
                }
            }
            Check::Silence { max_silence_ms } => {
                for gap in metrics.gaps.iter().filter(|gap| gap.ms > *max_silence_ms) {
                    found.hit(Some(gap.before_sequence), None, String::new());
                }
            }
            Check::Interruption {
                min_overlap_ms,
                max_times,
            } => {
                if metrics.interruption_count.is_some() {
                    let limit = usize::try_from(*max_times).unwrap_or(0);
                    if let Some(beyond) = metrics
                        .overlaps
                        .iter()
                        .filter(|overlap| overlap.ms > *min_overlap_ms)
                        .nth(limit)
                    {
                        found.hit(Some(beyond.sequence), None, String::new());
                    }
                }
            }
            Check::SpeakingRate {
                speaker,
                min_cpm,
                max_cpm,
            } => {
                let rate = metrics
                    .sides
                    .iter()
                    .find(|side| side.speaker == *speaker)
                    .and_then(|side| side.speaking_rate_cpm);
                if let Some(rate) = rate
                    && (min_cpm.is_some_and(|min| rate < min)
                        || max_cpm.is_some_and(|max| rate > max))
                {
                    found.hit(None, None, String::new());
                }
            }
            Check::TalkTime {
                min_talk_ms,
                max_talk_ms,
            } => {
                let talk = metrics.duration_ms.or(dialogue.talk_duration_ms);
                if let Some(talk) = talk
                    && (min_talk_ms.is_some_and(|min| talk < min)
                        || max_talk_ms.is_some_and(|max| talk > max))
                {
                    found.hit(None, None, String::new());
                }
            }
        }
    }
    let total = hits
        .iter()
        .fold(profile.base, |total, hit| total + hit.points);
    // Not `f64::clamp`: it panics when the bounds are not ordered.
    let score = total.max(profile.lower_bound).min(profile.upper_bound);
    let violations = SEVERITY_ORDER
        .iter()
        .filter_map(|&severity| {
            let count = hits.iter().filter(|hit| hit.severity == severity).count();
            (count > 0).then(|| (severity, i32::try_from(count).unwrap_or(i32::MAX)))
        })
        .collect();
    Scored {
        score,
        hits,
        violations,
    }
}

/// Where a rule's hits go.
struct Found<'a> {
    rule: &'a CompiledRule,
    version: i64,
    hits: &'a mut Vec<Hit>,
}

impl Found<'_> {
    fn hit(&mut self, turn_sequence: Option<i32>, offset: Option<i32>, matched_text: String) {
        self.hits.push(Hit {
            rule_id: self.rule.id.clone(),
            rule_name: self.rule.name.clone(),
            rule_set_version: self.version,
            turn_sequence,
            offset,
            matched_text,
            points: self.rule.points,
            severity: self.rule.severity,
        });
    }
}

/// The utterances of a dialogue as keyword rules see them: normalised, with the first
/// occurrence of every keyword of the rule set found in one scan of each.
#[derive(Default)]
struct Texts {
    utterances: Vec<Text>,
    /// (keyword id, byte start of its first occurrence) of the keywords each utterance says,
    /// utterance after utterance (see [`Text::said`]), each utterance's sorted by id.
    said: Vec<(u32, usize)>,
}

/// An utterance's normalised text.
struct Text {
    sequence: i32,
    speaker: Speaker,
    text: String,
    /// Where its keywords are in [`Texts::said`].
    said: std::ops::Range<usize>,
}

impl Texts {
    fn new(index: &KeywordIndex, dialogue: &Dialogue) -> Self {
        let mut said = Vec::new();
        // For each keyword id, 1 + the index of the last utterance it was found in: only its
        // first occurrence in an utterance is kept.
        let mut seen: Vec<usize> = Vec::new();
        let utterances = dialogue
            .utterances
            .iter()
            .enumerate()
            .map(|(position, utterance)| {
                let text = normalize(&utterance.text);
                let start = said.len();
                if !index.is_empty() && index.checks(utterance.speaker) {
                    if seen.is_empty() {
                        seen.resize(index.len(), 0);
                    }
                    let stamp = position + 1;
                    index.find(&text, |id, at| {
                        if let Some(last) = seen.get_mut(id as usize)
                            && *last != stamp
                        {
                            *last = stamp;
                            said.push((id, at));
                        }
                    });
                    said[start..].sort_unstable_by_key(|&(id, _)| id);
                }
                Text {
                    sequence: utterance.sequence,
                    speaker: utterance.speaker,
                    text,
                    said: start..said.len(),
                }
            })
            .collect();
        Self { utterances, said }
    }

    /// The byte start of the first occurrence of keyword `id` in `text`, if it says it.
    fn first(&self, text: &Text, id: u32) -> Option<usize> {
        let said = self.said.get(text.said.clone())?;
        said.binary_search_by_key(&id, |&(id, _)| id)
            .ok()
            .map(|found| said[found].1)
    }
}

/// A keyword rule's words, applied to a dialogue.
struct KeywordCheck<'a> {
    speaker: Option<Speaker>,
    /// Normalised.
    keywords: &'a [String],
    /// The id of each keyword in the rule set's [`KeywordIndex`].
    ids: &'a [u32],
    patterns: &'a [Regex],
}

impl KeywordCheck<'_> {
    /// The checked side's utterances, in sequence order.
    fn side<'t>(&self, texts: &'t Texts) -> impl Iterator<Item = &'t Text> + 't {
        let speaker = self.speaker;
        texts
            .utterances
            .iter()
            .filter(move |text| speaker.is_none_or(|checked| text.speaker == checked))
    }

    /// A hit per keyword found (its first occurrence) and per pattern matched (its first
    /// match) in each utterance.
    fn forbidden(&self, texts: &Texts, found: &mut Found<'_>) {
        for utterance in self.side(texts) {
            let text = utterance.text.as_str();
            if !utterance.said.is_empty() {
                for (keyword, &id) in self.keywords.iter().zip(self.ids) {
                    if let Some(start) = texts.first(utterance, id) {
                        found.hit(
                            Some(utterance.sequence),
                            Some(char_offset(text, start)),
                            keyword.clone(),
                        );
                    }
                }
            }
            for pattern in self.patterns {
                if let Some(matched) = pattern.find(text) {
                    found.hit(
                        Some(utterance.sequence),
                        Some(char_offset(text, matched.start())),
                        matched.as_str().to_owned(),
                    );
                }
            }
        }
    }

    /// One hit, with no turn, when no utterance says any keyword or matches any pattern.
    fn required(&self, texts: &Texts, found: &mut Found<'_>) {
        let said = self.side(texts).any(|utterance| {
            (!utterance.said.is_empty()
                && self
                    .ids
                    .iter()
                    .any(|&id| texts.first(utterance, id).is_some()))
                || self
                    .patterns
                    .iter()
                    .any(|pattern| pattern.is_match(&utterance.text))
        });
        if !said {
            found.hit(None, None, String::new());
        }
    }
}

/// The character offset of a byte index of `text` (a char boundary).
fn char_offset(text: &str, byte_index: usize) -> i32 {
    let chars = text
        .get(..byte_index)
        .map_or(0, |before| before.chars().count());
    i32::try_from(chars).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::quality::SideMetrics;
    use crate::quality::metrics::{Gap, Overlap};
    use crate::quality::rules::{Rule, RuleKind};
    use crate::quality::{Timing, Utterance};
    use proptest::prelude::*;

    const VERSION: i64 = 7;

    fn rule(id: &str, points: f64, severity: Severity, kind: RuleKind) -> Rule {
        Rule {
            id: id.to_owned(),
            name: format!("rule {id}"),
            points,
            severity,
            kind,
        }
    }

    fn keyword(
        speaker: Option<Speaker>,
        keywords: &[&str],
        patterns: &[&str],
        required: bool,
    ) -> RuleKind {
        RuleKind::Keyword {
            speaker,
            keywords: keywords.iter().map(|&keyword| keyword.to_owned()).collect(),
            patterns: patterns.iter().map(|&pattern| pattern.to_owned()).collect(),
            required,
        }
    }

    fn compiled(rules: &[Rule]) -> CompiledRuleSet {
        match CompiledRuleSet::compile(uuid::Uuid::nil(), VERSION, rules) {
            Ok(set) => set,
            Err(violations) => panic!("test rules must be valid: {violations:?}"),
        }
    }

    fn dialogue(lines: &[(i32, Speaker, &str)]) -> Dialogue {
        Dialogue {
            utterances: lines
                .iter()
                .map(|&(sequence, speaker, text)| Utterance {
                    sequence,
                    speaker,
                    text: text.to_owned(),
                    timing: Timing::Unknown,
                    node: None,
                })
                .collect(),
            talk_duration_ms: None,
            end_node: None,
        }
    }

    fn run(rules: &[Rule], dialogue: &Dialogue, metrics: &Metrics) -> Scored {
        score(&compiled(rules), &Profile::builtin(), dialogue, metrics)
    }

    /// (turn_sequence, offset, matched_text) of each hit.
    fn places(scored: &Scored) -> Vec<(Option<i32>, Option<i32>, &str)> {
        scored
            .hits
            .iter()
            .map(|hit| (hit.turn_sequence, hit.offset, hit.matched_text.as_str()))
            .collect()
    }

    fn rule_ids(scored: &Scored) -> Vec<&str> {
        scored.hits.iter().map(|hit| hit.rule_id.as_str()).collect()
    }

    #[test]
    fn a_forbidden_keyword_hits_each_turn_of_the_side_at_its_character_offset() {
        let rules = [rule(
            "abuse",
            -10.0,
            Severity::Major,
            keyword(Some(Speaker::Robot), &["脏话", "STUPID"], &[], false),
        )];
        let said = dialogue(&[
            (1, Speaker::Robot, "您好，这是脏话测试"),
            (2, Speaker::Customer, "脏话"),
            (3, Speaker::Robot, "Stupid 脏话, stupid"),
            (4, Speaker::Robot, "没有问题"),
        ]);
        let scored = run(&rules, &said, &Metrics::default());
        assert_eq!(
            scored.hits[0],
            Hit {
                rule_id: "abuse".to_owned(),
                rule_name: "rule abuse".to_owned(),
                rule_set_version: VERSION,
                turn_sequence: Some(1),
                // 您 好 ， 这 是: 5 characters (15 bytes) before the keyword.
                offset: Some(5),
                matched_text: "脏话".to_owned(),
                points: -10.0,
                severity: Severity::Major,
            }
        );
        // Turn 2 is the customer's; turn 3 says both keywords (each once, at the first
        // occurrence), in the rule's keyword order.
        assert_eq!(
            places(&scored),
            [
                (Some(1), Some(5), "脏话"),
                (Some(3), Some(7), "脏话"),
                (Some(3), Some(0), "stupid"),
            ]
        );
        assert_eq!(scored.score, 70.0);
        assert_eq!(scored.violations, [(Severity::Major, 3)]);
    }

    #[test]
    fn a_forbidden_keyword_not_said_does_not_hit() {
        let rules = [rule(
            "abuse",
            -10.0,
            Severity::Major,
            keyword(Some(Speaker::Customer), &["脏话"], &["傻.?"], false),
        )];
        let clean = dialogue(&[
            (1, Speaker::Robot, "脏话 傻"),
            (2, Speaker::Customer, "您好"),
        ]);
        let scored = run(&rules, &clean, &Metrics::default());
        assert_eq!(scored.hits, Vec::new());
        assert_eq!(scored.score, 100.0);
        assert_eq!(scored.violations, Vec::new());
    }

    #[test]
    fn a_keyword_rule_without_a_side_checks_every_side() {
        let rules = [rule(
            "any",
            -1.0,
            Severity::Minor,
            keyword(None, &["投诉"], &[], false),
        )];
        let both = dialogue(&[
            (1, Speaker::Robot, "投诉请按一"),
            (2, Speaker::Customer, "我要投诉"),
            (3, Speaker::Agent, "好的"),
        ]);
        let scored = run(&rules, &both, &Metrics::default());
        assert_eq!(
            places(&scored),
            [(Some(1), Some(0), "投诉"), (Some(2), Some(2), "投诉")]
        );
    }

    #[test]
    fn patterns_are_case_insensitive_and_report_their_first_match() {
        let rules = [rule(
            "refund",
            -2.0,
            Severity::Minor,
            keyword(
                Some(Speaker::Customer),
                &[],
                &["RE+FUND", "退款\\d+"],
                false,
            ),
        )];
        let said = dialogue(&[
            (1, Speaker::Customer, "Please REEFUND, refund!"),
            (2, Speaker::Customer, "我要退款100元，退款200"),
        ]);
        let scored = run(&rules, &said, &Metrics::default());
        assert_eq!(
            places(&scored),
            [(Some(1), Some(7), "reefund"), (Some(2), Some(2), "退款100")]
        );
    }

    #[test]
    fn a_required_phrase_hits_once_only_when_never_said() {
        let rules = [rule(
            "greet",
            -5.0,
            Severity::Critical,
            keyword(Some(Speaker::Robot), &["您好"], &["HELLO|hi there"], true),
        )];
        let keyword_said =
            dialogue(&[(1, Speaker::Robot, "喂，您好"), (2, Speaker::Robot, "再见")]);
        assert_eq!(
            run(&rules, &keyword_said, &Metrics::default()).hits,
            Vec::new()
        );
        let pattern_said = dialogue(&[(1, Speaker::Robot, "Hello")]);
        assert_eq!(
            run(&rules, &pattern_said, &Metrics::default()).hits,
            Vec::new()
        );

        // Said by the wrong side only: not said.
        let not_said = dialogue(&[
            (1, Speaker::Customer, "您好"),
            (2, Speaker::Robot, "喂"),
            (3, Speaker::Robot, "再见"),
        ]);
        let scored = run(&rules, &not_said, &Metrics::default());
        assert_eq!(places(&scored), [(None, None, "")]);
        assert_eq!(scored.hits[0].rule_id, "greet");
        assert_eq!(scored.hits[0].severity, Severity::Critical);
        assert_eq!(scored.score, 95.0);

        // The side never spoke: not said either.
        let silent_robot = dialogue(&[(1, Speaker::Customer, "喂？")]);
        assert_eq!(
            places(&run(&rules, &silent_robot, &Metrics::default())),
            [(None, None, "")]
        );
        assert_eq!(
            places(&run(&rules, &Dialogue::default(), &Metrics::default())),
            [(None, None, "")]
        );
    }

    #[test]
    fn silence_hits_each_gap_longer_than_the_limit() {
        let rules = [rule(
            "silence",
            -3.0,
            Severity::Minor,
            RuleKind::Silence {
                max_silence_ms: 5000,
            },
        )];
        let metrics = Metrics {
            gaps: vec![
                Gap {
                    after_sequence: 1,
                    before_sequence: 2,
                    ms: 6000,
                },
                Gap {
                    after_sequence: 2,
                    before_sequence: 3,
                    ms: 5000,
                },
                Gap {
                    after_sequence: 3,
                    before_sequence: 5,
                    ms: 5001,
                },
            ],
            ..Metrics::default()
        };
        let scored = run(&rules, &Dialogue::default(), &metrics);
        assert_eq!(places(&scored), [(Some(2), None, ""), (Some(5), None, "")]);
        assert_eq!(scored.score, 94.0);

        let short = Metrics {
            gaps: vec![Gap {
                after_sequence: 1,
                before_sequence: 2,
                ms: 5000,
            }],
            ..Metrics::default()
        };
        assert_eq!(run(&rules, &Dialogue::default(), &short).hits, Vec::new());
        // No gaps known: no hits.
        assert_eq!(
            run(&rules, &Dialogue::default(), &Metrics::default()).hits,
            Vec::new()
        );
    }

    #[test]
    fn interruption_hits_once_at_the_first_overlap_beyond_the_limit() {
        let interruption = |max_times| {
            [rule(
                "interrupt",
                -4.0,
                Severity::Major,
                RuleKind::Interruption {
                    min_overlap_ms: 500,
                    max_times,
                },
            )]
        };
        let overlaps = vec![
            Overlap {
                sequence: 2,
                ms: 500,
            },
            Overlap {
                sequence: 4,
                ms: 600,
            },
            Overlap {
                sequence: 6,
                ms: 501,
            },
            Overlap {
                sequence: 8,
                ms: 900,
            },
        ];
        let metrics = Metrics {
            interruption_count: Some(4),
            overlaps: overlaps.clone(),
            ..Metrics::default()
        };
        let empty = Dialogue::default();
        // Qualifying (longer than 500 ms): turns 4, 6 and 8.
        let twice = run(&interruption(2), &empty, &metrics);
        assert_eq!(places(&twice), [(Some(8), None, "")]);
        assert_eq!(twice.score, 96.0);
        assert_eq!(
            places(&run(&interruption(0), &empty, &metrics)),
            [(Some(4), None, "")]
        );
        assert_eq!(run(&interruption(3), &empty, &metrics).hits, Vec::new());
        // Unknown timeline: no hit, whatever the overlaps say.
        let unknown = Metrics {
            interruption_count: None,
            overlaps,
            ..Metrics::default()
        };
        assert_eq!(run(&interruption(0), &empty, &unknown).hits, Vec::new());
    }

    #[test]
    fn speaking_rate_hits_when_the_side_is_outside_the_range() {
        let rate = |speaker, min_cpm, max_cpm| {
            [rule(
                "rate",
                -1.0,
                Severity::Info,
                RuleKind::SpeakingRate {
                    speaker,
                    min_cpm,
                    max_cpm,
                },
            )]
        };
        let metrics = Metrics {
            sides: vec![
                SideMetrics {
                    speaker: Speaker::Robot,
                    speaking_rate_cpm: None,
                    ..SideMetrics::default()
                },
                SideMetrics {
                    speaker: Speaker::Customer,
                    speaking_rate_cpm: Some(250.0),
                    ..SideMetrics::default()
                },
            ],
            ..Metrics::default()
        };
        let empty = Dialogue::default();
        let hit = |rules: &[Rule]| places(&run(rules, &empty, &metrics)).len();
        assert_eq!(
            places(&run(
                &rate(Speaker::Customer, Some(100.0), Some(200.0)),
                &empty,
                &metrics
            )),
            [(None, None, "")]
        );
        assert_eq!(hit(&rate(Speaker::Customer, Some(300.0), None)), 1);
        assert_eq!(hit(&rate(Speaker::Customer, Some(250.0), Some(250.0))), 0);
        assert_eq!(hit(&rate(Speaker::Customer, None, Some(260.0))), 0);
        // The robot's rate is unknown, the agent never spoke: no hit.
        assert_eq!(hit(&rate(Speaker::Robot, Some(1000.0), None)), 0);
        assert_eq!(hit(&rate(Speaker::Agent, Some(1000.0), None)), 0);
    }

    #[test]
    fn talk_time_hits_outside_the_range_preferring_the_measured_duration() {
        let talk = |min_talk_ms, max_talk_ms| {
            [rule(
                "talk",
                -1.0,
                Severity::Info,
                RuleKind::TalkTime {
                    min_talk_ms,
                    max_talk_ms,
                },
            )]
        };
        let measured = |duration_ms| Metrics {
            duration_ms,
            ..Metrics::default()
        };
        let call = |talk_duration_ms| Dialogue {
            talk_duration_ms,
            ..Dialogue::default()
        };
        let hits = |rules: &[Rule], dialogue: &Dialogue, metrics: &Metrics| {
            places(&run(rules, dialogue, metrics)).len()
        };
        let range = talk(Some(20_000), Some(30_000));
        assert_eq!(
            places(&run(&range, &call(None), &measured(Some(60_000)))),
            [(None, None, "")]
        );
        assert_eq!(hits(&range, &call(None), &measured(Some(30_000))), 0);
        assert_eq!(hits(&range, &call(None), &measured(Some(19_999))), 1);
        // The call's talk time when nothing was measured.
        assert_eq!(hits(&range, &call(Some(10_000)), &measured(None)), 1);
        assert_eq!(hits(&range, &call(Some(25_000)), &measured(None)), 0);
        // The measured duration wins over the call's.
        assert_eq!(
            hits(&range, &call(Some(100_000)), &measured(Some(25_000))),
            0
        );
        // Neither known: no hit.
        assert_eq!(hits(&range, &call(None), &measured(None)), 0);
        assert_eq!(
            hits(&talk(None, Some(0)), &call(Some(1)), &measured(None)),
            1
        );
    }

    #[test]
    fn hits_are_in_rule_order_then_turn_order() {
        let rules = [
            rule(
                "b",
                -1.0,
                Severity::Minor,
                keyword(None, &["x"], &[], false),
            ),
            rule(
                "a",
                -1.0,
                Severity::Minor,
                RuleKind::Silence { max_silence_ms: 1 },
            ),
        ];
        let said = dialogue(&[(1, Speaker::Robot, "x"), (2, Speaker::Customer, "x")]);
        let metrics = Metrics {
            gaps: vec![Gap {
                after_sequence: 1,
                before_sequence: 2,
                ms: 10,
            }],
            ..Metrics::default()
        };
        let scored = run(&rules, &said, &metrics);
        assert_eq!(rule_ids(&scored), ["b", "b", "a"]);
        assert_eq!(
            places(&scored),
            [
                (Some(1), Some(0), "x"),
                (Some(2), Some(0), "x"),
                (Some(2), None, "")
            ]
        );
        assert!(
            scored
                .hits
                .iter()
                .all(|hit| hit.rule_set_version == VERSION)
        );
    }

    #[test]
    fn the_score_is_clamped_to_the_bounds() {
        let bonus = [rule(
            "bonus",
            10.0,
            Severity::Info,
            RuleKind::TalkTime {
                min_talk_ms: None,
                max_talk_ms: Some(0),
            },
        )];
        let penalty = [rule(
            "penalty",
            -60.0,
            Severity::Critical,
            RuleKind::Silence { max_silence_ms: 1 },
        )];
        let long_call = Dialogue {
            talk_duration_ms: Some(1),
            ..Dialogue::default()
        };
        let two_gaps = Metrics {
            gaps: vec![
                Gap {
                    after_sequence: 1,
                    before_sequence: 2,
                    ms: 10,
                },
                Gap {
                    after_sequence: 2,
                    before_sequence: 3,
                    ms: 10,
                },
            ],
            ..Metrics::default()
        };
        // 100 + 10 = 110, clamped to 100.
        assert_eq!(run(&bonus, &long_call, &Metrics::default()).score, 100.0);
        // 100 - 120 = -20, clamped to 0.
        assert_eq!(run(&penalty, &long_call, &two_gaps).score, 0.0);
        // Within the bounds: kept.
        let wide = Profile {
            id: None,
            name: "wide".to_owned(),
            base: 50.0,
            lower_bound: -100.0,
            upper_bound: 200.0,
        };
        assert_eq!(
            score(&compiled(&penalty), &wide, &long_call, &two_gaps).score,
            -70.0
        );
        assert_eq!(
            score(&compiled(&bonus), &wide, &long_call, &Metrics::default()).score,
            60.0
        );
        // No rules: the base, clamped.
        assert_eq!(
            score(&compiled(&[]), &Profile::builtin(), &long_call, &two_gaps),
            Scored {
                score: 100.0,
                hits: Vec::new(),
                violations: Vec::new(),
            }
        );
    }

    #[test]
    fn unordered_bounds_do_not_panic() {
        let upside_down = Profile {
            id: None,
            name: "upside down".to_owned(),
            base: 30.0,
            lower_bound: 50.0,
            upper_bound: 10.0,
        };
        let none = compiled(&[]);
        // Raised to the lower bound (50), then lowered to the upper one (10).
        assert_eq!(
            score(
                &none,
                &upside_down,
                &Dialogue::default(),
                &Metrics::default()
            )
            .score,
            10.0
        );
    }

    #[test]
    fn violations_count_hits_per_severity_most_severe_first() {
        let rules = [
            rule(
                "info",
                -1.0,
                Severity::Info,
                keyword(None, &["a"], &[], false),
            ),
            rule(
                "critical",
                -1.0,
                Severity::Critical,
                keyword(None, &["b"], &[], false),
            ),
            rule(
                "minor",
                -1.0,
                Severity::Minor,
                keyword(None, &["c"], &[], false),
            ),
            rule(
                "critical again",
                -1.0,
                Severity::Critical,
                keyword(None, &["a"], &[], false),
            ),
        ];
        let said = dialogue(&[(1, Speaker::Robot, "a b c"), (2, Speaker::Customer, "b")]);
        let scored = run(&rules, &said, &Metrics::default());
        // info: 1; critical: turns 1 and 2, plus "critical again": 1; minor: 1; no major.
        assert_eq!(
            scored.violations,
            [
                (Severity::Critical, 3),
                (Severity::Minor, 1),
                (Severity::Info, 1),
            ]
        );
        // Five hits of -1.
        assert_eq!(scored.score, 95.0);
    }

    /// The keyword rules' hits the way they were found before the keyword index: each keyword
    /// of each rule searched for in each utterance of the rule's side with `str::find`.
    fn reference_keyword_hits(rules: &CompiledRuleSet, dialogue: &Dialogue) -> Vec<Hit> {
        let texts: Vec<(i32, Speaker, String)> = dialogue
            .utterances
            .iter()
            .map(|utterance| {
                (
                    utterance.sequence,
                    utterance.speaker,
                    normalize(&utterance.text),
                )
            })
            .collect();
        let mut hits = Vec::new();
        for rule in rules.rules() {
            let Check::Keyword {
                speaker,
                keywords,
                patterns,
                required,
            } = &rule.check
            else {
                continue;
            };
            let mut found = Found {
                rule,
                version: rules.version,
                hits: &mut hits,
            };
            let side = texts
                .iter()
                .filter(|(_, side, _)| speaker.is_none_or(|checked| *side == checked));
            if *required {
                let said = side.clone().any(|(_, _, text)| {
                    keywords
                        .iter()
                        .any(|keyword| text.contains(keyword.as_str()))
                        || patterns.iter().any(|pattern| pattern.is_match(text))
                });
                if !said {
                    found.hit(None, None, String::new());
                }
                continue;
            }
            for (sequence, _, text) in side {
                for keyword in keywords {
                    if let Some(start) = text.find(keyword.as_str()) {
                        found.hit(
                            Some(*sequence),
                            Some(char_offset(text, start)),
                            keyword.clone(),
                        );
                    }
                }
                for pattern in patterns {
                    if let Some(matched) = pattern.find(text) {
                        found.hit(
                            Some(*sequence),
                            Some(char_offset(text, matched.start())),
                            matched.as_str().to_owned(),
                        );
                    }
                }
            }
        }
        hits
    }

    /// Scores keyword rules, checking the hits against [`reference_keyword_hits`].
    fn run_keywords(rules: &[Rule], dialogue: &Dialogue) -> Scored {
        let set = compiled(rules);
        let scored = score(&set, &Profile::builtin(), dialogue, &Metrics::default());
        assert_eq!(scored.hits, reference_keyword_hits(&set, dialogue));
        scored
    }

    /// (rule_id, turn_sequence, offset, matched_text) of each hit.
    fn rule_places(scored: &Scored) -> Vec<(&str, Option<i32>, Option<i32>, &str)> {
        scored
            .hits
            .iter()
            .map(|hit| {
                (
                    hit.rule_id.as_str(),
                    hit.turn_sequence,
                    hit.offset,
                    hit.matched_text.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn overlapping_keywords_each_hit_at_their_first_occurrence() {
        let minor = |id, kind| rule(id, -1.0, Severity::Minor, kind);
        let rules = [
            minor("long", keyword(None, &["不需要"], &[], false)),
            minor("short", keyword(None, &["需要"], &[], false)),
            // Both in one rule, the shorter first; and one that is a suffix of the other.
            minor("both", keyword(None, &["需要", "不需要", "要"], &[], false)),
        ];
        let said = dialogue(&[
            (1, Speaker::Customer, "我不需要，真的不需要"),
            (2, Speaker::Customer, "需要吗？不需要"),
            (3, Speaker::Customer, "不需"),
        ]);
        let scored = run_keywords(&rules, &said);
        assert_eq!(
            rule_places(&scored),
            [
                ("long", Some(1), Some(1), "不需要"),
                ("long", Some(2), Some(4), "不需要"),
                ("short", Some(1), Some(2), "需要"),
                ("short", Some(2), Some(0), "需要"),
                ("both", Some(1), Some(2), "需要"),
                ("both", Some(1), Some(1), "不需要"),
                ("both", Some(1), Some(3), "要"),
                ("both", Some(2), Some(0), "需要"),
                ("both", Some(2), Some(4), "不需要"),
                ("both", Some(2), Some(1), "要"),
            ]
        );
    }

    #[test]
    fn a_keyword_in_two_rules_or_twice_in_one_hits_for_each() {
        let rules = [
            rule(
                "first",
                -1.0,
                Severity::Minor,
                keyword(None, &["投诉", "举报"], &[], false),
            ),
            rule(
                "second",
                -2.0,
                Severity::Major,
                // Twice, once in capitals: the same keyword once normalised.
                keyword(None, &["投诉", "ok", "OK"], &[], false),
            ),
        ];
        let said = dialogue(&[
            (1, Speaker::Robot, "投诉？Ok, 投诉"),
            (2, Speaker::Customer, "举报 ok ok"),
        ]);
        let scored = run_keywords(&rules, &said);
        assert_eq!(
            rule_places(&scored),
            [
                ("first", Some(1), Some(0), "投诉"),
                ("first", Some(2), Some(0), "举报"),
                ("second", Some(1), Some(0), "投诉"),
                ("second", Some(1), Some(3), "ok"),
                ("second", Some(1), Some(3), "ok"),
                ("second", Some(2), Some(3), "ok"),
                ("second", Some(2), Some(3), "ok"),
            ]
        );
        assert_eq!(scored.score, 100.0 - 2.0 - 10.0);
    }

    #[test]
    fn a_keyword_said_twice_in_a_turn_hits_once_at_the_first() {
        let rules = [rule(
            "twice",
            -1.0,
            Severity::Minor,
            keyword(None, &["aa"], &[], false),
        )];
        // Overlapping occurrences too: "aaa" has "aa" at 0 and 1.
        let said = dialogue(&[(1, Speaker::Robot, "xaaa aa"), (2, Speaker::Robot, "a a")]);
        assert_eq!(
            rule_places(&run_keywords(&rules, &said)),
            [("twice", Some(1), Some(1), "aa")]
        );
    }

    #[test]
    fn keywords_are_looked_for_only_in_their_rules_sides() {
        let minor = |id, speaker, required| {
            rule(
                id,
                -1.0,
                Severity::Minor,
                keyword(speaker, &["退款"], &[], required),
            )
        };
        let rules = [
            minor("robot", Some(Speaker::Robot), false),
            minor("customer", Some(Speaker::Customer), false),
            minor("agent", Some(Speaker::Agent), false),
            minor("any", None, false),
            minor("agent required", Some(Speaker::Agent), true),
            minor("robot required", Some(Speaker::Robot), true),
        ];
        let said = dialogue(&[
            (1, Speaker::Customer, "我要退款"),
            (2, Speaker::Robot, "好的"),
            (3, Speaker::Robot, "退款已受理"),
            (4, Speaker::Unspecified, "退款"),
        ]);
        assert_eq!(
            rule_places(&run_keywords(&rules, &said)),
            [
                ("robot", Some(3), Some(0), "退款"),
                ("customer", Some(1), Some(2), "退款"),
                ("any", Some(1), Some(2), "退款"),
                ("any", Some(3), Some(0), "退款"),
                ("any", Some(4), Some(0), "退款"),
                ("agent required", None, None, ""),
            ]
        );
    }

    #[test]
    fn required_and_forbidden_rules_share_keywords_and_keep_rule_order() {
        let rules = [
            rule(
                "greet",
                -5.0,
                Severity::Major,
                keyword(Some(Speaker::Robot), &["您好", "你好"], &[], true),
            ),
            rule(
                "rude",
                -3.0,
                Severity::Major,
                keyword(None, &["你好烦", "你好"], &["烦+"], false),
            ),
            rule(
                "bye",
                -2.0,
                Severity::Minor,
                keyword(Some(Speaker::Robot), &["再见"], &["拜拜"], true),
            ),
            rule(
                "silence",
                -1.0,
                Severity::Minor,
                RuleKind::Silence { max_silence_ms: 1 },
            ),
            rule(
                "customer greets",
                -1.0,
                Severity::Info,
                keyword(Some(Speaker::Customer), &["你好"], &[], true),
            ),
        ];
        let said = dialogue(&[
            (1, Speaker::Robot, "你好，我是客服"),
            (2, Speaker::Customer, "你好烦烦"),
        ]);
        let metrics = Metrics {
            gaps: vec![Gap {
                after_sequence: 1,
                before_sequence: 2,
                ms: 10,
            }],
            ..Metrics::default()
        };
        let scored = run(&rules, &said, &metrics);
        assert_eq!(
            rule_places(&scored),
            [
                ("rude", Some(1), Some(0), "你好"),
                ("rude", Some(2), Some(0), "你好烦"),
                ("rude", Some(2), Some(0), "你好"),
                ("rude", Some(2), Some(2), "烦烦"),
                ("bye", None, None, ""),
                ("silence", Some(2), None, ""),
            ]
        );
        let keyword_rules: Vec<Rule> = rules
            .iter()
            .filter(|rule| matches!(rule.kind, RuleKind::Keyword { .. }))
            .cloned()
            .collect();
        assert_eq!(run_keywords(&keyword_rules, &said).hits.len(), 5);
    }

    #[test]
    fn keyword_offsets_count_characters_of_any_width() {
        let rules = [rule(
            "offsets",
            -1.0,
            Severity::Minor,
            keyword(None, &["退款", "é", "ok", "🙂x"], &[], false),
        )];
        // a (1 byte), é (2), 退 (3), 🙂 (4): offsets in characters, not bytes.
        let said = dialogue(&[
            (1, Speaker::Robot, "aé退🙂退款"),
            (2, Speaker::Robot, "🙂🙂X OK é"),
            (3, Speaker::Robot, "ÉCOLE"),
        ]);
        assert_eq!(
            rule_places(&run_keywords(&rules, &said)),
            [
                ("offsets", Some(1), Some(4), "退款"),
                ("offsets", Some(1), Some(1), "é"),
                ("offsets", Some(2), Some(7), "é"),
                ("offsets", Some(2), Some(4), "ok"),
                ("offsets", Some(2), Some(1), "🙂x"),
                ("offsets", Some(3), Some(0), "é"),
            ]
        );
    }

    /// A keyword rule of random words of a small alphabet (so that keywords overlap, repeat
    /// and share rules often), sometimes with a pattern.
    fn random_keyword_rule() -> impl Strategy<Value = RuleKind> {
        (
            prop::sample::select(vec![
                None,
                Some(Speaker::Robot),
                Some(Speaker::Customer),
                Some(Speaker::Agent),
            ]),
            prop::collection::vec("[ab不需要好A]{1,3}", 0..5),
            prop::collection::vec(
                prop::sample::select(vec!["b+", "需要.?", "^a", "好$"]),
                0..2,
            ),
            any::<bool>(),
        )
            .prop_filter_map(
                "a keyword rule has a keyword or a pattern",
                |(speaker, keywords, patterns, required)| {
                    (!keywords.is_empty() || !patterns.is_empty()).then(|| RuleKind::Keyword {
                        speaker,
                        keywords,
                        patterns: patterns.into_iter().map(str::to_owned).collect(),
                        required,
                    })
                },
            )
    }

    fn random_dialogue() -> impl Strategy<Value = Dialogue> {
        let line = (
            prop::sample::select(vec![
                Speaker::Robot,
                Speaker::Customer,
                Speaker::Agent,
                Speaker::Unspecified,
            ]),
            "[ab不需要好A]{0,12}",
        );
        prop::collection::vec(line, 0..8).prop_map(|lines| Dialogue {
            utterances: (1..)
                .zip(lines)
                .map(|(sequence, (speaker, text))| Utterance {
                    sequence,
                    speaker,
                    text,
                    timing: Timing::Unknown,
                    node: None,
                })
                .collect(),
            talk_duration_ms: None,
            end_node: None,
        })
    }

    proptest! {
        #[test]
        fn keyword_hits_match_a_search_keyword_by_keyword(
            kinds in prop::collection::vec(random_keyword_rule(), 0..6),
            said in random_dialogue(),
        ) {
            let rules: Vec<Rule> = kinds
                .into_iter()
                .enumerate()
                .map(|(index, kind)| rule(&index.to_string(), -1.0, Severity::Minor, kind))
                .collect();
            let set = compiled(&rules);
            let scored = score(&set, &Profile::builtin(), &said, &Metrics::default());
            prop_assert_eq!(scored.hits, reference_keyword_hits(&set, &said));
        }
    }
}
