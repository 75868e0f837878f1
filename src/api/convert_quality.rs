//! Conversions of quality inspection's wire messages: rules, rule sets, scoring profiles and
//! re-scoring jobs, validated into domain values on the way in.

use crate::error::FieldViolation;
use uuid::Uuid;

use crate::api::convert::utc_to_timestamp;
use crate::db::quality_rules::{ProfileRow, ProfileValues, RuleSetRow, RuleSetValues};
use crate::db::rescore::JobRow;
use crate::proto;
use crate::proto::{Severity, Speaker};
use crate::quality::rules::{self, Rule, RuleKind};

/// Longest name of a rule set or profile, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// The largest magnitude of a profile's numbers.
pub const MAX_PROFILE_VALUE: f64 = 1e9;

/// Collects field violations under a prefix (`rule_set`, `profile`).
pub struct Violations<'prefix> {
    prefix: &'prefix str,
    pub list: Vec<FieldViolation>,
}

impl<'prefix> Violations<'prefix> {
    pub fn new(prefix: &'prefix str) -> Self {
        Self {
            prefix,
            list: Vec::new(),
        }
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.list.push(FieldViolation::new(
            format!("{}.{field}", self.prefix),
            description,
        ));
    }

    /// A name: not blank, at most [`MAX_NAME_CHARS`].
    pub fn name(&mut self, name: &str) {
        if name.trim().is_empty() {
            self.add("name", "is required");
        } else if name.chars().count() > MAX_NAME_CHARS {
            self.add(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            );
        }
    }

    /// An optional server id.
    pub fn optional_id(&mut self, field: &str, text: &str) -> Option<Uuid> {
        if text.is_empty() {
            return None;
        }
        let id = Uuid::parse_str(text).ok();
        if id.is_none() {
            self.add(field, "must be a server id (a UUID)");
        }
        id
    }
}

/// Checks a profile's values: finite, bounds ordered, the base within them.
pub fn check_profile(values: &ProfileValues, violations: &mut Violations<'_>) {
    violations.name(&values.name);
    for (field, value) in [
        ("base", values.base),
        ("lower_bound", values.lower_bound),
        ("upper_bound", values.upper_bound),
    ] {
        if !value.is_finite() || value.abs() > MAX_PROFILE_VALUE {
            violations.add(
                field,
                format!("must be a finite number within ±{MAX_PROFILE_VALUE:e}"),
            );
        }
    }
    if values.lower_bound > values.upper_bound {
        violations.add("upper_bound", "must not be below lower_bound");
    } else if values.base < values.lower_bound || values.base > values.upper_bound {
        violations.add("base", "must be within [lower_bound, upper_bound]");
    }
}

/// A profile's values from the wire.
pub fn profile_values(profile: &proto::ScoringProfile) -> ProfileValues {
    ProfileValues {
        name: profile.name.trim().to_owned(),
        base: profile.base,
        lower_bound: profile.lower_bound,
        upper_bound: profile.upper_bound,
    }
}

pub fn profile_to_proto(row: ProfileRow) -> proto::ScoringProfile {
    proto::ScoringProfile {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        name: row.name,
        base: row.base,
        lower_bound: row.lower_bound,
        upper_bound: row.upper_bound,
    }
}

/// The rules of a wire rule set, checked; violations name `{prefix}.rules[i]…`.
pub fn rules_from_proto(rules: &[proto::Rule], violations: &mut Violations<'_>) -> Vec<Rule> {
    let mut converted = Vec::with_capacity(rules.len());
    for (index, rule) in rules.iter().enumerate() {
        let field = |name: &str| format!("rules[{index}].{name}");
        let severity = Severity::try_from(rule.severity).unwrap_or_else(|_| {
            violations.add(&field("severity"), "is not a value of Severity");
            Severity::Unspecified
        });
        let speaker = |value: i32, name: &str, violations: &mut Violations<'_>| {
            Speaker::try_from(value).unwrap_or_else(|_| {
                violations.add(&field(name), "is not a value of Speaker");
                Speaker::Unspecified
            })
        };
        let kind = match &rule.kind {
            None => {
                violations.add(
                    &format!("rules[{index}]"),
                    "must set what it checks: keyword, silence, interruption, speaking_rate or \
                     talk_time",
                );
                continue;
            }
            Some(proto::rule::Kind::Keyword(keyword)) => RuleKind::Keyword {
                speaker: match speaker(keyword.speaker, "keyword.speaker", violations) {
                    Speaker::Unspecified => None,
                    side => Some(side),
                },
                keywords: keyword.keywords.clone(),
                patterns: keyword.patterns.clone(),
                required: keyword.required,
            },
            Some(proto::rule::Kind::Silence(silence)) => RuleKind::Silence {
                max_silence_ms: silence.max_silence_ms,
            },
            Some(proto::rule::Kind::Interruption(interruption)) => RuleKind::Interruption {
                min_overlap_ms: interruption.min_overlap_ms,
                max_times: interruption.max_times,
            },
            Some(proto::rule::Kind::SpeakingRate(rate)) => RuleKind::SpeakingRate {
                speaker: speaker(rate.speaker, "speaking_rate.speaker", violations),
                min_cpm: (rate.min_cpm != 0.0).then_some(rate.min_cpm),
                max_cpm: (rate.max_cpm != 0.0).then_some(rate.max_cpm),
            },
            Some(proto::rule::Kind::TalkTime(talk)) => RuleKind::TalkTime {
                min_talk_ms: (talk.min_talk_ms != 0).then_some(talk.min_talk_ms),
                max_talk_ms: (talk.max_talk_ms != 0).then_some(talk.max_talk_ms),
            },
        };
        converted.push((
            index,
            Rule {
                id: rule.id.trim().to_owned(),
                name: rule.name.trim().to_owned(),
                points: rule.points,
                severity,
                kind,
            },
        ));
    }
    // The domain's checks name rules by their place among the converted ones; map it back to
    // the place in the request (a rule without a kind was left out above).
    let places: Vec<usize> = converted.iter().map(|(index, _)| *index).collect();
    let rules: Vec<Rule> = converted.into_iter().map(|(_, rule)| rule).collect();
    for violation in rules::validate(&rules) {
        violations.add(&renumber(&violation.field, &places), violation.description);
    }
    rules
}

/// `rules[i]…` with `i` replaced by `places[i]`.
fn renumber(field: &str, places: &[usize]) -> String {
    let Some(rest) = field.strip_prefix("rules[") else {
        return field.to_owned();
    };
    let Some((number, tail)) = rest.split_once(']') else {
        return field.to_owned();
    };
    match number
        .parse::<usize>()
        .ok()
        .and_then(|index| places.get(index))
    {
        Some(place) => format!("rules[{place}]{tail}"),
        None => field.to_owned(),
    }
}

pub fn rule_to_proto(rule: Rule) -> proto::Rule {
    let kind = match rule.kind {
        RuleKind::Keyword {
            speaker,
            keywords,
            patterns,
            required,
        } => proto::rule::Kind::Keyword(proto::KeywordRule {
            speaker: speaker.unwrap_or(Speaker::Unspecified) as i32,
            keywords,
            patterns,
            required,
        }),
        RuleKind::Silence { max_silence_ms } => {
            proto::rule::Kind::Silence(proto::SilenceRule { max_silence_ms })
        }
        RuleKind::Interruption {
            min_overlap_ms,
            max_times,
        } => proto::rule::Kind::Interruption(proto::InterruptionRule {
            min_overlap_ms,
            max_times,
        }),
        RuleKind::SpeakingRate {
            speaker,
            min_cpm,
            max_cpm,
        } => proto::rule::Kind::SpeakingRate(proto::SpeakingRateRule {
            speaker: speaker as i32,
            min_cpm: min_cpm.unwrap_or_default(),
            max_cpm: max_cpm.unwrap_or_default(),
        }),
        RuleKind::TalkTime {
            min_talk_ms,
            max_talk_ms,
        } => proto::rule::Kind::TalkTime(proto::TalkTimeRule {
            min_talk_ms: min_talk_ms.unwrap_or_default(),
            max_talk_ms: max_talk_ms.unwrap_or_default(),
        }),
    };
    proto::Rule {
        id: rule.id,
        name: rule.name,
        points: rule.points,
        severity: rule.severity as i32,
        kind: Some(kind),
    }
}

/// A rule set's values from the wire, checked.
pub fn rule_set_values(
    rule_set: &proto::RuleSet,
    violations: &mut Violations<'_>,
) -> RuleSetValues {
    violations.name(&rule_set.name);
    RuleSetValues {
        name: rule_set.name.trim().to_owned(),
        rules: rules_from_proto(&rule_set.rules, violations),
        scoring_profile_id: violations
            .optional_id("scoring_profile_id", &rule_set.scoring_profile_id),
        active: rule_set.active,
    }
}

pub fn rule_set_to_proto(row: RuleSetRow) -> proto::RuleSet {
    proto::RuleSet {
        id: row.id.to_string(),
        tenant_id: row.tenant_id,
        name: row.name,
        version: row.version,
        rules: row.rules.0.into_iter().map(rule_to_proto).collect(),
        scoring_profile_id: row
            .scoring_profile_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        update_time: Some(utc_to_timestamp(row.update_time)),
        active: row.active,
    }
}

pub fn job_to_proto(row: JobRow) -> proto::RescoreJob {
    proto::RescoreJob {
        id: row.id.to_string(),
        total_calls: row.total_calls,
        done_calls: row.done_calls,
        finished: row.finished,
        rule_set_id: row.rule_set_id.to_string(),
        rule_set_version: row.rule_set_version,
        task_id: row.task_id.map(|id| id.to_string()).unwrap_or_default(),
        start_time: row.start_time.map(utc_to_timestamp),
        end_time: row.end_time.map(utc_to_timestamp),
        rescored_calls: row.rescored_calls,
        create_time: Some(utc_to_timestamp(row.create_time)),
        finish_time: row.finish_time.map(utc_to_timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyword_rule(id: &str, patterns: &[&str]) -> proto::Rule {
        proto::Rule {
            id: id.to_owned(),
            name: "forbidden".to_owned(),
            points: -10.0,
            severity: Severity::Major as i32,
            kind: Some(proto::rule::Kind::Keyword(proto::KeywordRule {
                speaker: Speaker::Robot as i32,
                keywords: vec!["脏话".to_owned()],
                patterns: patterns.iter().map(|&pattern| pattern.to_owned()).collect(),
                required: false,
            })),
        }
    }

    #[test]
    fn violations_name_the_rule_by_its_place_in_the_request() {
        let kindless = proto::Rule {
            id: "x".to_owned(),
            name: "no kind".to_owned(),
            severity: Severity::Minor as i32,
            ..proto::Rule::default()
        };
        let rules = [kindless, keyword_rule("a", &["("])];
        let mut violations = Violations::new("rule_set");
        let converted = rules_from_proto(&rules, &mut violations);
        assert_eq!(converted.len(), 1);
        let fields: Vec<&str> = violations.list.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["rule_set.rules[0]", "rule_set.rules[1].keyword.patterns[0]"]
        );
    }

    #[test]
    fn rules_round_trip_through_the_domain() {
        let rule = keyword_rule("a", &["王.*"]);
        let mut violations = Violations::new("rule_set");
        let converted = rules_from_proto(std::slice::from_ref(&rule), &mut violations);
        assert!(violations.list.is_empty(), "{:?}", violations.list);
        assert_eq!(rule_to_proto(converted[0].clone()), rule);
    }

    #[test]
    fn profile_bounds_must_be_ordered_and_hold_the_base() {
        let mut values = ProfileValues {
            name: "p".to_owned(),
            base: 100.0,
            lower_bound: 0.0,
            upper_bound: 100.0,
        };
        let mut violations = Violations::new("profile");
        check_profile(&values, &mut violations);
        assert!(violations.list.is_empty());

        values.base = 120.0;
        check_profile(&values, &mut violations);
        values.lower_bound = 200.0;
        check_profile(&values, &mut violations);
        values.upper_bound = f64::NAN;
        check_profile(&values, &mut violations);
        let fields: Vec<&str> = violations.list.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "profile.base",
                "profile.upper_bound",
                "profile.upper_bound",
                "profile.base"
            ]
        );
    }
}
