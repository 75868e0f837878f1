//! Rule sets: what each kind of rule checks, their validation and their compiled form.

use std::collections::{HashMap, HashSet};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::domain::transcript::normalize;
use crate::proto::{Severity, Speaker};

/// The most rules a rule set may have.
pub const MAX_RULES: usize = 200;
/// The longest rule id, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// The longest rule name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The largest magnitude of a rule's points.
pub const MAX_POINTS: f64 = 1e6;
/// The most keywords a keyword rule may have.
pub const MAX_KEYWORDS: usize = 100;
/// The most patterns a keyword rule may have.
pub const MAX_PATTERNS: usize = 100;
/// The longest keyword, in characters.
pub const MAX_KEYWORD_CHARS: usize = 200;
/// The longest pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 512;
/// The most memory a compiled pattern may take, in bytes.
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A rule of a rule set (stored as JSON in `rule_set_versions.rules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique within the rule set.
    pub id: String,
    pub name: String,
    /// Added per hit (negative: deducted).
    pub points: f64,
    pub severity: Severity,
    pub kind: RuleKind,
}

/// What a rule checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Words said by a side (`None`: any side): forbidden (a hit per turn that says one), or
    /// required (one hit when none of them is said).
    Keyword {
        speaker: Option<Speaker>,
        keywords: Vec<String>,
        patterns: Vec<String>,
        required: bool,
    },
    /// A hit per silence longer than the limit.
    Silence { max_silence_ms: i64 },
    /// One hit when more than `max_times` interruptions overlap longer than `min_overlap_ms`.
    Interruption { min_overlap_ms: i64, max_times: i32 },
    /// One hit when the side's speaking rate is outside the range (an unset bound is open).
    SpeakingRate {
        speaker: Speaker,
        min_cpm: Option<f64>,
        max_cpm: Option<f64>,
    },
    /// One hit when the call's talk time is outside the range (an unset bound is open).
    TalkTime {
        min_talk_ms: Option<i64>,
        max_talk_ms: Option<i64>,
    },
}

/// A field of a rule set that is not valid: its path (proto field names, e.g.
/// `rules[2].keyword.patterns[0]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    fn new(field: String, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// Checks rules; every problem is reported, none is fixed silently.
pub fn validate(rules: &[Rule]) -> Vec<Violation> {
    inspect(rules).0
}

/// Checks rules like [`validate`], also returning each rule's patterns as compiled while
/// checking them (empty for a rule without patterns), so that compiling builds each once.
fn inspect(rules: &[Rule]) -> (Vec<Violation>, Vec<Vec<Regex>>) {
    let mut violations = Vec::new();
    let mut compiled = Vec::with_capacity(rules.len());
    if rules.len() > MAX_RULES {
        violations.push(Violation::new(
            "rules".to_owned(),
            format!("must have at most {MAX_RULES} rules"),
        ));
    }
    let mut ids: HashSet<&str> = HashSet::new();
    for (index, rule) in rules.iter().enumerate() {
        let at = format!("rules[{index}]");
        check_header(rule, &at, &mut ids, &mut violations);
        let patterns = match &rule.kind {
            RuleKind::Keyword {
                speaker,
                keywords,
                patterns,
                required: _,
            } => check_keyword(*speaker, keywords, patterns, &at, &mut violations),
            RuleKind::Silence { max_silence_ms } => {
                check_silence(*max_silence_ms, &at, &mut violations);
                Vec::new()
            }
            RuleKind::Interruption {
                min_overlap_ms,
                max_times,
            } => {
                check_interruption(*min_overlap_ms, *max_times, &at, &mut violations);
                Vec::new()
            }
            RuleKind::SpeakingRate {
                speaker,
                min_cpm,
                max_cpm,
            } => {
                check_speaking_rate(*speaker, *min_cpm, *max_cpm, &at, &mut violations);
                Vec::new()
            }
            RuleKind::TalkTime {
                min_talk_ms,
                max_talk_ms,
            } => {
                check_talk_time(*min_talk_ms, *max_talk_ms, &at, &mut violations);
                Vec::new()
            }
        };
        compiled.push(patterns);
    }
    (violations, compiled)
}

/// Id, name, points and severity: what every kind of rule has.
fn check_header<'rule>(
    rule: &'rule Rule,
    at: &str,
    ids: &mut HashSet<&'rule str>,
    violations: &mut Vec<Violation>,
) {
    if rule.id.trim().is_empty() {
        violations.push(Violation::new(format!("{at}.id"), "must not be blank"));
    } else if rule.id.chars().count() > MAX_ID_CHARS {
        violations.push(Violation::new(
            format!("{at}.id"),
            format!("must be at most {MAX_ID_CHARS} characters"),
        ));
    } else if !ids.insert(rule.id.as_str()) {
        violations.push(Violation::new(
            format!("{at}.id"),
            format!(
                "must be unique in the rule set: \"{}\" is used twice",
                rule.id
            ),
        ));
    }
    if rule.name.trim().is_empty() {
        violations.push(Violation::new(format!("{at}.name"), "must not be blank"));
    } else if rule.name.chars().count() > MAX_NAME_CHARS {
        violations.push(Violation::new(
            format!("{at}.name"),
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if !rule.points.is_finite() || rule.points.abs() > MAX_POINTS {
        violations.push(Violation::new(
            format!("{at}.points"),
            "must be a finite number between -1000000 and 1000000",
        ));
    }
    if rule.severity == Severity::Unspecified {
        violations.push(Violation::new(
            format!("{at}.severity"),
            "must be set (SEVERITY_UNSPECIFIED is not a severity)",
        ));
    }
}

/// Checks a keyword rule; returns the patterns that compiled.
fn check_keyword(
    speaker: Option<Speaker>,
    keywords: &[String],
    patterns: &[String],
    at: &str,
    violations: &mut Vec<Violation>,
) -> Vec<Regex> {
    if speaker == Some(Speaker::Unspecified) {
        violations.push(Violation::new(
            format!("{at}.keyword.speaker"),
            "must be a side (robot, customer or agent) or unset for any side",
        ));
    }
    if keywords.is_empty() && patterns.is_empty() {
        violations.push(Violation::new(
            format!("{at}.keyword"),
            "must have at least one keyword or pattern",
        ));
    }
    if keywords.len() > MAX_KEYWORDS {
        violations.push(Violation::new(
            format!("{at}.keyword.keywords"),
            format!("must have at most {MAX_KEYWORDS} keywords"),
        ));
    }
    if patterns.len() > MAX_PATTERNS {
        violations.push(Violation::new(
            format!("{at}.keyword.patterns"),
            format!("must have at most {MAX_PATTERNS} patterns"),
        ));
    }
    for (index, keyword) in keywords.iter().enumerate() {
        if keyword.trim().is_empty() {
            violations.push(Violation::new(
                format!("{at}.keyword.keywords[{index}]"),
                "must not be blank",
            ));
        } else if keyword.chars().count() > MAX_KEYWORD_CHARS {
            violations.push(Violation::new(
                format!("{at}.keyword.keywords[{index}]"),
                format!("must be at most {MAX_KEYWORD_CHARS} characters"),
            ));
        }
    }
    let mut compiled = Vec::with_capacity(patterns.len());
    for (index, pattern) in patterns.iter().enumerate() {
        if pattern.chars().count() > MAX_PATTERN_CHARS {
            violations.push(Violation::new(
                format!("{at}.keyword.patterns[{index}]"),
                format!("must be at most {MAX_PATTERN_CHARS} characters"),
            ));
            continue;
        }
        match compile_pattern(pattern) {
            Ok(regex) => compiled.push(regex),
            Err(error) => violations.push(Violation::new(
                format!("{at}.keyword.patterns[{index}]"),
                format!(
                    "must be a valid regular expression: {}",
                    short_message(&error)
                ),
            )),
        }
    }
    compiled
}

fn check_silence(max_silence_ms: i64, at: &str, violations: &mut Vec<Violation>) {
    if max_silence_ms <= 0 {
        violations.push(Violation::new(
            format!("{at}.silence.max_silence_ms"),
            "must be greater than 0",
        ));
    }
}

fn check_interruption(
    min_overlap_ms: i64,
    max_times: i32,
    at: &str,
    violations: &mut Vec<Violation>,
) {
    if min_overlap_ms < 0 {
        violations.push(Violation::new(
            format!("{at}.interruption.min_overlap_ms"),
            "must not be negative",
        ));
    }
    if max_times < 0 {
        violations.push(Violation::new(
            format!("{at}.interruption.max_times"),
            "must not be negative",
        ));
    }
}

fn check_speaking_rate(
    speaker: Speaker,
    min_cpm: Option<f64>,
    max_cpm: Option<f64>,
    at: &str,
    violations: &mut Vec<Violation>,
) {
    if !matches!(speaker, Speaker::Robot | Speaker::Customer | Speaker::Agent) {
        violations.push(Violation::new(
            format!("{at}.speaking_rate.speaker"),
            "must be a side: robot, customer or agent",
        ));
    }
    let valid = |bound: Option<f64>| bound.is_none_or(|cpm| cpm.is_finite() && cpm >= 0.0);
    if !valid(min_cpm) {
        violations.push(Violation::new(
            format!("{at}.speaking_rate.min_cpm"),
            "must be a finite number, 0 or more",
        ));
    }
    if !valid(max_cpm) {
        violations.push(Violation::new(
            format!("{at}.speaking_rate.max_cpm"),
            "must be a finite number, 0 or more",
        ));
    }
    match (min_cpm, max_cpm) {
        (None, None) => violations.push(Violation::new(
            format!("{at}.speaking_rate"),
            "must set min_cpm, max_cpm or both",
        )),
        (Some(min), Some(max)) if min > max => violations.push(Violation::new(
            format!("{at}.speaking_rate.max_cpm"),
            "must not be less than min_cpm",
        )),
        _ => {}
    }
}

fn check_talk_time(
    min_talk_ms: Option<i64>,
    max_talk_ms: Option<i64>,
    at: &str,
    violations: &mut Vec<Violation>,
) {
    if min_talk_ms.is_some_and(|ms| ms < 0) {
        violations.push(Violation::new(
            format!("{at}.talk_time.min_talk_ms"),
            "must not be negative",
        ));
    }
    if max_talk_ms.is_some_and(|ms| ms < 0) {
        violations.push(Violation::new(
            format!("{at}.talk_time.max_talk_ms"),
            "must not be negative",
        ));
    }
    match (min_talk_ms, max_talk_ms) {
        (None, None) => violations.push(Violation::new(
            format!("{at}.talk_time"),
            "must set min_talk_ms, max_talk_ms or both",
        )),
        (Some(min), Some(max)) if min > max => violations.push(Violation::new(
            format!("{at}.talk_time.max_talk_ms"),
            "must not be less than min_talk_ms",
        )),
        _ => {}
    }
}

/// Compiles a pattern the way it is applied: case-insensitive, within the size limit.
fn compile_pattern(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
}

/// The one-line gist of a regex error. A syntax error's text spans several lines (a heading,
/// the pattern, a caret, then `error: ...`); its `error:` line says what is wrong, so that
/// line is used, else the first non-empty line.
fn short_message(error: &regex::Error) -> String {
    let text = error.to_string();
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("error:"))
        .or_else(|| text.lines().map(str::trim).find(|line| !line.is_empty()))
        .unwrap_or("invalid pattern");
    line.trim().to_owned()
}

/// A rule ready to apply: what it reports in a hit and its compiled check.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule's id, as in [`Rule::id`].
    pub id: String,
    /// The rule's name, as in [`Rule::name`].
    pub name: String,
    /// Added per hit, as in [`Rule::points`].
    pub points: f64,
    /// The severity of its hits.
    pub severity: Severity,
    /// What it checks.
    pub check: Check,
}

/// A rule's check, compiled: keywords normalised, patterns built.
#[derive(Debug, Clone)]
pub enum Check {
    /// See [`RuleKind::Keyword`]; keywords are normalised like the text they are looked for
    /// in, patterns are case-insensitive.
    Keyword {
        speaker: Option<Speaker>,
        keywords: Vec<String>,
        patterns: Vec<Regex>,
        required: bool,
    },
    /// See [`RuleKind::Silence`].
    Silence { max_silence_ms: i64 },
    /// See [`RuleKind::Interruption`].
    Interruption { min_overlap_ms: i64, max_times: i32 },
    /// See [`RuleKind::SpeakingRate`].
    SpeakingRate {
        speaker: Speaker,
        min_cpm: Option<f64>,
        max_cpm: Option<f64>,
    },
    /// See [`RuleKind::TalkTime`].
    TalkTime {
        min_talk_ms: Option<i64>,
        max_talk_ms: Option<i64>,
    },
}

/// A rule set ready to apply: patterns compiled, keywords normalised and indexed.
#[derive(Debug, Clone)]
pub struct CompiledRuleSet {
    pub rule_set_id: uuid::Uuid,
    pub version: i64,
    rules: Vec<CompiledRule>,
    keywords: KeywordIndex,
}

impl CompiledRuleSet {
    /// Compiles valid rules (see [`validate`]); an invalid one is reported, never skipped.
    pub fn compile(
        rule_set_id: uuid::Uuid,
        version: i64,
        rules: &[Rule],
    ) -> Result<Self, Vec<Violation>> {
        let (violations, patterns) = inspect(rules);
        if !violations.is_empty() {
            return Err(violations);
        }
        let rules = rules
            .iter()
            .zip(patterns)
            .map(|(rule, patterns)| CompiledRule {
                id: rule.id.clone(),
                name: rule.name.clone(),
                points: rule.points,
                severity: rule.severity,
                check: compile_check(&rule.kind, patterns),
            })
            .collect::<Vec<_>>();
        let keywords = KeywordIndex::new(&rules);
        Ok(Self {
            rule_set_id,
            version,
            rules,
            keywords,
        })
    }

    /// The rules, in the rule set's order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// The keywords of all its keyword rules, to find in one pass over a text.
    pub fn keyword_index(&self) -> &KeywordIndex {
        &self.keywords
    }
}

/// The normalised keywords of every keyword rule of a rule set, each distinct keyword once
/// (its id), in one Aho–Corasick automaton: a text is scanned once for all of them.
#[derive(Debug, Clone)]
pub struct KeywordIndex {
    /// Over `keywords`, pattern id = keyword id; `None` when there are no keywords (or, should
    /// it ever fail to build, then each keyword is searched for on its own).
    automaton: Option<AhoCorasick>,
    /// The distinct keywords, by id.
    keywords: Vec<String>,
    /// The id of each keyword of each rule, rule after rule, in keyword order.
    ids: Vec<u32>,
    /// Where each rule's ids start in `ids` (one more entry than rules: the end).
    starts: Vec<usize>,
    /// The sides some rule looks for keywords in: every side, or these.
    every_side: bool,
    sides: Vec<Speaker>,
}

impl KeywordIndex {
    /// Indexes the keywords of the rules' [`Check::Keyword`]s.
    fn new(rules: &[CompiledRule]) -> Self {
        let mut keywords: Vec<String> = Vec::new();
        let mut by_text: HashMap<&str, u32> = HashMap::new();
        let mut ids = Vec::new();
        let mut starts = Vec::with_capacity(rules.len() + 1);
        let mut every_side = false;
        let mut sides = Vec::new();
        for rule in rules {
            starts.push(ids.len());
            let Check::Keyword {
                speaker,
                keywords: words,
                ..
            } = &rule.check
            else {
                continue;
            };
            if words.is_empty() {
                continue;
            }
            match speaker {
                None => every_side = true,
                Some(side) if !sides.contains(side) => sides.push(*side),
                Some(_) => {}
            }
            for word in words {
                let next = u32::try_from(keywords.len()).unwrap_or(u32::MAX);
                let id = *by_text.entry(word.as_str()).or_insert_with(|| {
                    keywords.push(word.clone());
                    next
                });
                ids.push(id);
            }
        }
        starts.push(ids.len());
        // At most MAX_RULES * MAX_KEYWORDS patterns of MAX_KEYWORD_CHARS: far within the
        // automaton's limits, but a failure falls back to searching keyword by keyword.
        let automaton = if keywords.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&keywords)
                .ok()
        };
        Self {
            automaton,
            keywords,
            ids,
            starts,
            every_side,
            sides,
        }
    }

    /// How many distinct keywords there are: ids are below this.
    pub fn len(&self) -> usize {
        self.keywords.len()
    }

    /// Whether there are no keywords at all.
    pub fn is_empty(&self) -> bool {
        self.keywords.is_empty()
    }

    /// The id of each keyword of the rule at `rule` (its index in [`CompiledRuleSet::rules`]),
    /// in the rule's keyword order; empty for a rule that is not a keyword rule.
    pub fn ids(&self, rule: usize) -> &[u32] {
        match (self.starts.get(rule), self.starts.get(rule + 1)) {
            (Some(&start), Some(&end)) => &self.ids[start..end],
            _ => &[],
        }
    }

    /// Whether some rule looks for keywords in what `speaker` says.
    pub fn checks(&self, speaker: Speaker) -> bool {
        self.every_side || self.sides.contains(&speaker)
    }

    /// Calls `found(id, byte start)` for occurrences of the keywords in `text` (normalised);
    /// the first call for an id is at that keyword's first occurrence (its leftmost start, as
    /// `str::find` gives), later ones (if any) are further right.
    pub fn find(&self, text: &str, mut found: impl FnMut(u32, usize)) {
        match &self.automaton {
            // Overlapping matches come in the order they end; for one keyword (one length)
            // that is the order they start.
            Some(automaton) => {
                for matched in automaton.find_overlapping_iter(text) {
                    found(matched.pattern().as_u32(), matched.start());
                }
            }
            None => {
                for (id, keyword) in (0u32..).zip(&self.keywords) {
                    if let Some(start) = text.find(keyword.as_str()) {
                        found(id, start);
                    }
                }
            }
        }
    }
}

/// A validated rule's check, with its patterns compiled by [`inspect`].
fn compile_check(kind: &RuleKind, patterns: Vec<Regex>) -> Check {
    match kind {
        RuleKind::Keyword {
            speaker,
            keywords,
            patterns: _,
            required,
        } => Check::Keyword {
            speaker: *speaker,
            keywords: keywords.iter().map(|keyword| normalize(keyword)).collect(),
            patterns,
            required: *required,
        },
        RuleKind::Silence { max_silence_ms } => Check::Silence {
            max_silence_ms: *max_silence_ms,
        },
        RuleKind::Interruption {
            min_overlap_ms,
            max_times,
        } => Check::Interruption {
            min_overlap_ms: *min_overlap_ms,
            max_times: *max_times,
        },
        RuleKind::SpeakingRate {
            speaker,
            min_cpm,
            max_cpm,
        } => Check::SpeakingRate {
            speaker: *speaker,
            min_cpm: *min_cpm,
            max_cpm: *max_cpm,
        },
        RuleKind::TalkTime {
            min_talk_ms,
            max_talk_ms,
        } => Check::TalkTime {
            min_talk_ms: *min_talk_ms,
            max_talk_ms: *max_talk_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, kind: RuleKind) -> Rule {
        Rule {
            id: id.to_owned(),
            name: format!("rule {id}"),
            points: -5.0,
            severity: Severity::Major,
            kind,
        }
    }

    fn keyword(keywords: &[&str], patterns: &[&str]) -> RuleKind {
        RuleKind::Keyword {
            speaker: Some(Speaker::Robot),
            keywords: keywords.iter().map(|&keyword| keyword.to_owned()).collect(),
            patterns: patterns.iter().map(|&pattern| pattern.to_owned()).collect(),
            required: false,
        }
    }

    fn silence(max_silence_ms: i64) -> RuleKind {
        RuleKind::Silence { max_silence_ms }
    }

    fn fields(violations: &[Violation]) -> Vec<&str> {
        violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect()
    }

    #[test]
    fn a_valid_rule_set_has_no_violations_and_compiles_in_order() {
        let rules = vec![
            rule("k", keyword(&["ABC", "脏话"], &["Re+fund"])),
            rule("s", silence(1)),
            rule(
                "i",
                RuleKind::Interruption {
                    min_overlap_ms: 0,
                    max_times: 0,
                },
            ),
            rule(
                "r",
                RuleKind::SpeakingRate {
                    speaker: Speaker::Customer,
                    min_cpm: Some(0.0),
                    max_cpm: Some(0.0),
                },
            ),
            rule(
                "t",
                RuleKind::TalkTime {
                    min_talk_ms: None,
                    max_talk_ms: Some(0),
                },
            ),
            Rule {
                points: 1e6,
                ..rule("max", silence(5))
            },
            Rule {
                points: -1e6,
                ..rule("min", silence(5))
            },
        ];
        assert_eq!(validate(&rules), Vec::new());
        let id = uuid::Uuid::nil();
        let Ok(compiled) = CompiledRuleSet::compile(id, 3, &rules) else {
            panic!("a valid rule set must compile");
        };
        assert_eq!(compiled.rule_set_id, id);
        assert_eq!(compiled.version, 3);
        let ids: Vec<&str> = compiled
            .rules()
            .iter()
            .map(|rule| rule.id.as_str())
            .collect();
        assert_eq!(ids, ["k", "s", "i", "r", "t", "max", "min"]);
        let first = &compiled.rules()[0];
        assert_eq!(first.name, "rule k");
        assert_eq!(first.points, -5.0);
        assert_eq!(first.severity, Severity::Major);
        let Check::Keyword {
            speaker,
            keywords,
            patterns,
            required,
        } = &first.check
        else {
            panic!("the first rule is a keyword rule");
        };
        assert_eq!(*speaker, Some(Speaker::Robot));
        assert_eq!(keywords, &["abc", "脏话"]);
        assert!(!required);
        assert_eq!(patterns.len(), 1);
        assert_eq!(
            patterns[0]
                .find("a REEFUND now")
                .map(|found| found.as_str()),
            Some("REEFUND")
        );
        assert!(matches!(
            compiled.rules()[1].check,
            Check::Silence { max_silence_ms: 1 }
        ));
    }

    #[test]
    fn every_header_problem_is_reported() {
        let rules = vec![
            Rule {
                id: "  ".to_owned(),
                name: " ".to_owned(),
                points: f64::NAN,
                severity: Severity::Unspecified,
                kind: silence(1),
            },
            Rule {
                id: "x".repeat(65),
                name: "名".repeat(201),
                points: f64::INFINITY,
                ..rule("unused", silence(1))
            },
            Rule {
                points: 1_000_000.5,
                ..rule("a", silence(1))
            },
            Rule {
                points: -1_000_000.5,
                ..rule("a", silence(1))
            },
            // 64 and 200 characters are at the limits.
            Rule {
                id: "好".repeat(64),
                name: "名".repeat(200),
                ..rule("unused", silence(1))
            },
        ];
        let violations = validate(&rules);
        assert_eq!(
            fields(&violations),
            [
                "rules[0].id",
                "rules[0].name",
                "rules[0].points",
                "rules[0].severity",
                "rules[1].id",
                "rules[1].name",
                "rules[1].points",
                "rules[2].points",
                "rules[3].id",
                "rules[3].points",
            ]
        );
        assert_eq!(violations[0].description, "must not be blank");
        assert_eq!(violations[4].description, "must be at most 64 characters");
        assert_eq!(violations[5].description, "must be at most 200 characters");
        assert_eq!(
            violations[8].description,
            "must be unique in the rule set: \"a\" is used twice"
        );
    }

    #[test]
    fn too_many_rules_are_reported_once_on_rules() {
        let rules: Vec<Rule> = (0..=MAX_RULES)
            .map(|index| rule(&index.to_string(), silence(1)))
            .collect();
        let violations = validate(&rules);
        assert_eq!(fields(&violations), ["rules"]);
        assert_eq!(violations[0].description, "must have at most 200 rules");
        let at_limit = &rules[..MAX_RULES];
        assert_eq!(validate(at_limit), Vec::new());
    }

    #[test]
    fn every_keyword_problem_is_reported() {
        let too_many_keywords: Vec<String> = (0..=MAX_KEYWORDS).map(|i| i.to_string()).collect();
        let too_many_patterns: Vec<String> = (0..=MAX_PATTERNS).map(|i| i.to_string()).collect();
        let rules = vec![
            rule("empty", keyword(&[], &[])),
            rule(
                "unspecified",
                RuleKind::Keyword {
                    speaker: Some(Speaker::Unspecified),
                    keywords: vec!["a".to_owned()],
                    patterns: Vec::new(),
                    required: true,
                },
            ),
            rule(
                "counts",
                RuleKind::Keyword {
                    speaker: None,
                    keywords: too_many_keywords,
                    patterns: too_many_patterns,
                    required: false,
                },
            ),
            rule(
                "items",
                keyword(
                    &[" ", &"字".repeat(201), &"字".repeat(200)],
                    &[&"a".repeat(513), "(", &"a".repeat(512), r"\w{1000}{1000}"],
                ),
            ),
        ];
        let violations = validate(&rules);
        assert_eq!(
            fields(&violations),
            [
                "rules[0].keyword",
                "rules[1].keyword.speaker",
                "rules[2].keyword.keywords",
                "rules[2].keyword.patterns",
                "rules[3].keyword.keywords[0]",
                "rules[3].keyword.keywords[1]",
                "rules[3].keyword.patterns[0]",
                "rules[3].keyword.patterns[1]",
                "rules[3].keyword.patterns[3]",
            ]
        );
        assert_eq!(
            violations[0].description,
            "must have at least one keyword or pattern"
        );
        assert_eq!(violations[2].description, "must have at most 100 keywords");
        assert_eq!(violations[3].description, "must have at most 100 patterns");
        assert_eq!(violations[4].description, "must not be blank");
        assert_eq!(violations[5].description, "must be at most 200 characters");
        assert_eq!(violations[6].description, "must be at most 512 characters");
        assert_eq!(
            violations[7].description,
            "must be a valid regular expression: unclosed group"
        );
        assert!(
            violations[8].description.contains("size limit"),
            "{}",
            violations[8].description
        );
        assert!(!violations[8].description.contains('\n'));
    }

    #[test]
    fn every_other_kind_problem_is_reported() {
        let rules = vec![
            rule("silence zero", silence(0)),
            rule("silence negative", silence(-1)),
            rule(
                "interruption",
                RuleKind::Interruption {
                    min_overlap_ms: -1,
                    max_times: -1,
                },
            ),
            rule(
                "rate",
                RuleKind::SpeakingRate {
                    speaker: Speaker::Unspecified,
                    min_cpm: Some(f64::NAN),
                    max_cpm: Some(-1.0),
                },
            ),
            rule(
                "rate open",
                RuleKind::SpeakingRate {
                    speaker: Speaker::Agent,
                    min_cpm: None,
                    max_cpm: None,
                },
            ),
            rule(
                "rate inverted",
                RuleKind::SpeakingRate {
                    speaker: Speaker::Robot,
                    min_cpm: Some(200.0),
                    max_cpm: Some(100.0),
                },
            ),
            rule(
                "rate infinite",
                RuleKind::SpeakingRate {
                    speaker: Speaker::Robot,
                    min_cpm: None,
                    max_cpm: Some(f64::INFINITY),
                },
            ),
            rule(
                "talk",
                RuleKind::TalkTime {
                    min_talk_ms: Some(-1),
                    max_talk_ms: Some(-2),
                },
            ),
            rule(
                "talk open",
                RuleKind::TalkTime {
                    min_talk_ms: None,
                    max_talk_ms: None,
                },
            ),
            rule(
                "talk inverted",
                RuleKind::TalkTime {
                    min_talk_ms: Some(2),
                    max_talk_ms: Some(1),
                },
            ),
        ];
        let violations = validate(&rules);
        assert_eq!(
            fields(&violations),
            [
                "rules[0].silence.max_silence_ms",
                "rules[1].silence.max_silence_ms",
                "rules[2].interruption.min_overlap_ms",
                "rules[2].interruption.max_times",
                "rules[3].speaking_rate.speaker",
                "rules[3].speaking_rate.min_cpm",
                "rules[3].speaking_rate.max_cpm",
                "rules[4].speaking_rate",
                "rules[5].speaking_rate.max_cpm",
                "rules[6].speaking_rate.max_cpm",
                "rules[7].talk_time.min_talk_ms",
                "rules[7].talk_time.max_talk_ms",
                "rules[7].talk_time.max_talk_ms",
                "rules[8].talk_time",
                "rules[9].talk_time.max_talk_ms",
            ]
        );
        assert_eq!(violations[8].description, "must not be less than min_cpm");
        assert_eq!(
            violations[12].description,
            "must not be less than min_talk_ms"
        );
    }

    #[test]
    fn compile_reports_the_violations_of_an_invalid_set() {
        let rules = vec![rule("ok", silence(1)), rule("bad", keyword(&[], &["["]))];
        let Err(violations) = CompiledRuleSet::compile(uuid::Uuid::nil(), 1, &rules) else {
            panic!("an invalid rule set must not compile");
        };
        assert_eq!(violations, validate(&rules));
        assert_eq!(fields(&violations), ["rules[1].keyword.patterns[0]"]);
    }

    /// (id, byte start) of the first call of `find` for each keyword id, by id.
    fn first_found(index: &KeywordIndex, text: &str) -> Vec<(u32, usize)> {
        let mut first: Vec<(u32, usize)> = Vec::new();
        index.find(text, |id, start| {
            if !first.iter().any(|&(seen, _)| seen == id) {
                first.push((id, start));
            }
        });
        first.sort_unstable();
        first
    }

    #[test]
    fn keywords_are_indexed_once_each_across_rules() {
        let rules = vec![
            rule("a", keyword(&["不需要", "需要"], &[])),
            rule("s", silence(1)),
            rule("p", keyword(&[], &["x"])),
            rule(
                "b",
                RuleKind::Keyword {
                    speaker: None,
                    keywords: vec!["需要".to_owned(), "OK".to_owned(), "ok".to_owned()],
                    patterns: Vec::new(),
                    required: true,
                },
            ),
        ];
        let Ok(compiled) = CompiledRuleSet::compile(uuid::Uuid::nil(), 1, &rules) else {
            panic!("a valid rule set must compile");
        };
        let index = compiled.keyword_index();
        assert_eq!(index.len(), 3);
        assert_eq!(index.ids(0), [0, 1]);
        assert_eq!(index.ids(1), [0u32; 0]);
        assert_eq!(index.ids(2), [0u32; 0]);
        assert_eq!(index.ids(3), [1, 2, 2]);
        assert_eq!(index.ids(4), [0u32; 0]);
        assert!(index.checks(Speaker::Customer));
        // Without the automaton (should it fail to build), each keyword is searched for on
        // its own, with the same first occurrences.
        let fallback = KeywordIndex {
            automaton: None,
            ..index.clone()
        };
        for text in ["", "ok 需要不需要", "不需要需要 okok", "不需"] {
            assert_eq!(
                first_found(index, text),
                first_found(&fallback, text),
                "{text}"
            );
        }
        assert_eq!(
            first_found(index, "ok 需要不需要"),
            [(0, 9), (1, 3), (2, 0)]
        );

        let robot_only = vec![
            rule("r", keyword(&["a"], &[])),
            rule("p", keyword(&[], &["b"])),
        ];
        let Ok(compiled) = CompiledRuleSet::compile(uuid::Uuid::nil(), 1, &robot_only) else {
            panic!("a valid rule set must compile");
        };
        let index = compiled.keyword_index();
        assert!(index.checks(Speaker::Robot));
        assert!(!index.checks(Speaker::Customer));
        assert!(!index.is_empty());
    }
}
