//! Edge conversion of wire tasks, numbers, tags, tag groups and levels into domain types, for
//! the `Upsert*` RPCs. Output-only fields (ids, tenant, progress, times kept by callstore) are
//! ignored on input; everything is keyed by the source's ids.

use chrono::{DateTime, Utc};

use crate::api::convert::{struct_to_json, timestamp_to_utc};
use crate::domain::SourceKey;
use crate::domain::call::Region;
use crate::domain::tag::{Level, Tag, TagGroup};
use crate::domain::task::{CallAttempt, Task, TaskNumber};
use crate::error::FieldViolation;
use crate::ingest::formats::default_source_system_of;
use crate::proto;

/// Longest text accepted in a catalog field.
const MAX_TEXT_CHARS: usize = 10_000;

/// Collects the violations of one item.
struct Check {
    path: String,
    violations: Vec<FieldViolation>,
}

impl Check {
    fn new(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            violations: Vec::new(),
        }
    }

    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn violation(&mut self, name: &str, description: impl Into<String>) {
        let field = self.field(name);
        self.violations
            .push(FieldViolation::new(field, description));
    }

    fn text(&mut self, name: &str, value: String) -> Option<String> {
        if value.chars().count() > MAX_TEXT_CHARS {
            self.violation(name, format!("must be at most {MAX_TEXT_CHARS} characters"));
        }
        (!value.trim().is_empty()).then_some(value)
    }

    fn time(&mut self, name: &str, value: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
        let value = value?;
        let time = timestamp_to_utc(&value);
        if time.is_none() {
            self.violation(name, "must be a valid time between 1970 and 9999");
        }
        time
    }

    fn non_negative(&mut self, name: &str, value: Option<i32>) -> Option<i32> {
        if value.is_some_and(|value| value < 0) {
            self.violation(name, "must not be negative");
        }
        value
    }

    fn non_negative_i64(&mut self, name: &str, value: Option<i64>) -> Option<i64> {
        if value.is_some_and(|value| value < 0) {
            self.violation(name, "must not be negative");
        }
        value
    }

    /// An enum value that must be defined.
    fn enumeration<E: TryFrom<i32> + Default>(&mut self, name: &str, value: i32) -> E {
        E::try_from(value).unwrap_or_else(|_| {
            self.violation(name, format!("{value} is not a defined enum value"));
            E::default()
        })
    }

    fn source_format(&mut self, value: i32) -> proto::SourceFormat {
        match self.enumeration("source_format", value) {
            proto::SourceFormat::Unspecified => proto::SourceFormat::Native,
            format => format,
        }
    }

    /// The item's key: `source_system` (the format's family when empty) and its source id.
    fn key(
        &mut self,
        format: proto::SourceFormat,
        system: &str,
        id_field: &str,
        id: &str,
    ) -> Option<SourceKey> {
        let system = if system.is_empty() {
            default_source_system_of(format)
        } else {
            system
        };
        match SourceKey::parse(system, id) {
            Ok(key) => Some(key),
            Err((part, description)) => {
                let name = if part == "source_system" {
                    "source_system"
                } else {
                    id_field
                };
                self.violation(name, description);
                None
            }
        }
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldViolation>> {
        match value {
            Some(value) if self.violations.is_empty() => Ok(value),
            _ => Err(self.violations),
        }
    }
}

/// Stands in for an invalid key while the other fields are checked; never stored.
fn placeholder_key() -> SourceKey {
    SourceKey {
        system: String::new(),
        id: String::new(),
    }
}

fn region(check: &mut Check, region: Option<proto::Region>) -> Region {
    let region = region.unwrap_or_default();
    Region {
        province: check.text("region.province", region.province),
        city: check.text("region.city", region.city),
        area_code: check.text("region.area_code", region.area_code),
        post_code: check.text("region.post_code", region.post_code),
        carrier: check.enumeration("region.carrier", region.carrier),
        carrier_name: check.text("region.carrier_name", region.carrier_name),
        text: check.text("region.text", region.text),
    }
}

/// A wire task as a domain task.
pub fn task_from_proto(task: proto::Task, path: &str) -> Result<Task, Vec<FieldViolation>> {
    let mut check = Check::new(path);
    let format = check.source_format(task.source_format);
    let key = check.key(
        format,
        &task.source_system,
        "source_task_id",
        &task.source_task_id,
    );
    let script_group = task.script_group.unwrap_or_default();
    let project = task.project.unwrap_or_default();
    // Every field is checked even when the key is invalid, so all violations are reported.
    let value = Task {
        source_format: format,
        key: placeholder_key(),
        name: check.text("name", task.name),
        source_create_time: check.time("source_create_time", task.source_create_time),
        source_update_time: check.time("source_update_time", task.source_update_time),
        run_state: check.enumeration("run_state", task.run_state),
        max_concurrent_calls: check.non_negative("max_concurrent_calls", task.max_concurrent_calls),
        calls_per_second: check.non_negative("calls_per_second", task.calls_per_second),
        redial_rounds: check.non_negative("redial_rounds", task.redial_rounds),
        ring_timeout_seconds: check.non_negative("ring_timeout_seconds", task.ring_timeout_seconds),
        caller_id_number: check.text("caller_id_number", task.caller_id_number),
        call_notify_url: check.text("call_notify_url", task.call_notify_url),
        script_group_id: check.text("script_group.id", script_group.id),
        script_group_name: check.text("script_group.name", script_group.name),
        tag_scene_id: check.text("script_group.tag_scene_id", script_group.tag_scene_id),
        project_id: check.text("project.id", project.id),
        project_name: check.text("project.name", project.name),
        extra: task.extra.map(struct_to_json).unwrap_or_default(),
    };
    check.finish(key.map(|key| Task { key, ..value }))
}

/// A wire tag group as a domain tag group.
pub fn tag_group_from_proto(
    group: proto::TagGroup,
    path: &str,
) -> Result<TagGroup, Vec<FieldViolation>> {
    let mut check = Check::new(path);
    let format = check.source_format(group.source_format);
    let key = check.key(
        format,
        &group.source_system,
        "source_tag_group_id",
        &group.source_tag_group_id,
    );
    // Every field is checked even when the key is invalid, so all violations are reported.
    let value = TagGroup {
        source_format: format,
        key: placeholder_key(),
        name: check.text("name", group.name).unwrap_or_default(),
        scene_id: check.text("scene_id", group.scene_id),
        source_create_time: check.time("source_create_time", group.source_create_time),
        source_update_time: check.time("source_update_time", group.source_update_time),
        extra: group.extra.map(struct_to_json).unwrap_or_default(),
    };
    check.finish(key.map(|key| TagGroup { key, ..value }))
}

/// A wire tag as a domain tag; its groups are named by `tag_groups[].source_tag_group_id`.
pub fn tag_from_proto(tag: proto::Tag, path: &str) -> Result<Tag, Vec<FieldViolation>> {
    let mut check = Check::new(path);
    let format = check.source_format(tag.source_format);
    let key = check.key(
        format,
        &tag.source_system,
        "source_tag_id",
        &tag.source_tag_id,
    );
    if !tag.tag_group_ids.is_empty() {
        check.violation(
            "tag_group_ids",
            "server ids are not accepted on input: name the groups by tag_groups[].source_tag_group_id",
        );
    }
    let mut group_ids = Vec::with_capacity(tag.tag_groups.len());
    for (index, group) in tag.tag_groups.into_iter().enumerate() {
        match check.text(
            &format!("tag_groups[{index}].source_tag_group_id"),
            group.source_tag_group_id,
        ) {
            Some(id) => group_ids.push(id.trim().to_owned()),
            None => check.violation(
                &format!("tag_groups[{index}].source_tag_group_id"),
                "is required",
            ),
        }
    }
    // Every field is checked even when the key is invalid, so all violations are reported.
    let value = Tag {
        source_format: format,
        key: placeholder_key(),
        name: check.text("name", tag.name).unwrap_or_default(),
        description: check.text("description", tag.description),
        color: check.text("color", tag.color),
        enabled: tag.enabled,
        group_ids,
        source_create_time: check.time("source_create_time", tag.source_create_time),
        source_update_time: check.time("source_update_time", tag.source_update_time),
        extra: tag.extra.map(struct_to_json).unwrap_or_default(),
    };
    check.finish(key.map(|key| Tag { key, ..value }))
}

/// A wire level as a domain level; its score range is half-open, [min_score, max_score).
pub fn level_from_proto(level: proto::Level, path: &str) -> Result<Level, Vec<FieldViolation>> {
    let mut check = Check::new(path);
    let format = check.source_format(level.source_format);
    let key = check.key(
        format,
        &level.source_system,
        "source_level_id",
        &level.source_level_id,
    );
    if let (Some(min), Some(max)) = (level.min_score, level.max_score)
        && min > max
    {
        check.violation("max_score", "must not be below min_score");
    }
    // Every field is checked even when the key is invalid, so all violations are reported.
    let value = Level {
        source_format: format,
        key: placeholder_key(),
        name: check.text("name", level.name).unwrap_or_default(),
        alias: check.text("alias", level.alias),
        color: check.text("color", level.color),
        min_score: level.min_score,
        max_score: level.max_score,
        extra: level.extra.map(struct_to_json).unwrap_or_default(),
    };
    check.finish(key.map(|key| Level { key, ..value }))
}

/// A wire number of the task `task` as a domain number with its attempts.
pub fn task_number_from_proto(
    number: proto::TaskNumber,
    task: &SourceKey,
    path: &str,
) -> Result<TaskNumber, Vec<FieldViolation>> {
    let mut check = Check::new(path);
    let format = check.source_format(number.source_format);
    let phone = number.number.trim().to_owned();
    if phone.is_empty() || phone.chars().count() > 32 {
        check.violation("number", "is required, at most 32 characters");
    }
    let mut attempts = Vec::with_capacity(number.attempts.len());
    for (index, attempt) in number.attempts.into_iter().enumerate() {
        let at = |name: &str| format!("attempts[{index}].{name}");
        attempts.push(CallAttempt {
            source_attempt_id: check.text(&at("source_attempt_id"), attempt.source_attempt_id),
            source_call_id: check.text(&at("source_call_id"), attempt.source_call_id),
            call_time: check.time(&at("call_time"), attempt.call_time),
            duration_ms: check.non_negative_i64(&at("duration_ms"), attempt.duration_ms),
            talk_duration_ms: check
                .non_negative_i64(&at("talk_duration_ms"), attempt.talk_duration_ms),
            hangup_cause: check.text(&at("hangup_cause"), attempt.hangup_cause),
            sip_code: check.text(&at("sip_code"), attempt.sip_code),
            call_status: check.text(&at("call_status"), attempt.call_status),
            status: check.enumeration(&at("status"), attempt.status),
            record_file: check.text(&at("record_file"), attempt.record_file),
            calling_number: check.text(&at("calling_number"), attempt.calling_number),
            extra: attempt.extra.map(struct_to_json).unwrap_or_default(),
        });
    }
    let converted = TaskNumber {
        source_format: format,
        task: task.clone(),
        source_number_id: check.text("source_number_id", number.source_number_id),
        number: phone,
        region: region(&mut check, number.region),
        blacklisted: number.blacklisted,
        status: check.enumeration("status", number.status),
        latest_source_call_id: check.text("latest_source_call_id", number.latest_source_call_id),
        attempts,
        extra: number.extra.map(struct_to_json).unwrap_or_default(),
    };
    check.finish(Some(converted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_keyed_by_its_source_id_and_system() {
        let task = task_from_proto(
            proto::Task {
                source_task_id: "t-1".to_owned(),
                name: "回访".to_owned(),
                redial_rounds: Some(2),
                run_state: proto::TaskRunState::Paused as i32,
                ..Default::default()
            },
            "tasks[0]",
        )
        .expect("valid");
        assert_eq!(task.key.system, "native");
        assert_eq!(task.key.id, "t-1");
        assert_eq!(task.name.as_deref(), Some("回访"));
        assert_eq!(task.run_state, proto::TaskRunState::Paused);
    }

    #[test]
    fn violations_name_the_item_and_field() {
        let violations = task_from_proto(
            proto::Task {
                redial_rounds: Some(-1),
                run_state: 99,
                ..Default::default()
            },
            "tasks[3]",
        )
        .expect_err("invalid");
        let fields: Vec<&str> = violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert!(fields.contains(&"tasks[3].source_task_id"), "{fields:?}");
        assert!(fields.contains(&"tasks[3].redial_rounds"), "{fields:?}");
        assert!(fields.contains(&"tasks[3].run_state"), "{fields:?}");
    }

    #[test]
    fn tags_name_their_groups_by_source_id_only() {
        let tag = tag_from_proto(
            proto::Tag {
                source_tag_id: "g1".to_owned(),
                name: "有意向".to_owned(),
                tag_groups: vec![proto::TagGroup {
                    source_tag_group_id: "grp".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "tags[0]",
        )
        .expect("valid");
        assert_eq!(tag.group_ids, ["grp"]);

        let violations = tag_from_proto(
            proto::Tag {
                source_tag_id: "g1".to_owned(),
                tag_group_ids: vec!["0190-…".to_owned()],
                ..Default::default()
            },
            "tags[0]",
        )
        .expect_err("server ids refused");
        assert_eq!(violations[0].field, "tags[0].tag_group_ids");
    }

    #[test]
    fn level_ranges_are_ordered() {
        let violations = level_from_proto(
            proto::Level {
                source_level_id: "A".to_owned(),
                min_score: Some(100),
                max_score: Some(50),
                ..Default::default()
            },
            "levels[0]",
        )
        .expect_err("unordered");
        assert_eq!(violations[0].field, "levels[0].max_score");
    }

    #[test]
    fn numbers_need_a_number_and_valid_attempts() {
        let task = SourceKey::parse("native", "t-1").expect("key");
        let violations = task_number_from_proto(
            proto::TaskNumber {
                attempts: vec![proto::CallAttempt {
                    duration_ms: Some(-5),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &task,
            "numbers[0]",
        )
        .expect_err("invalid");
        let fields: Vec<&str> = violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(
            fields,
            ["numbers[0].number", "numbers[0].attempts[0].duration_ms"]
        );
    }
}
