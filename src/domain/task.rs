//! Tasks (campaigns), their numbers and the numbers' dial attempts.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::SourceKey;
use crate::domain::call::{Extra, Region};
use crate::proto::{NumberStatus, SourceFormat, TaskRunState};

/// A task as a payload describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub source_format: SourceFormat,
    pub key: SourceKey,
    pub name: Option<String>,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub run_state: TaskRunState,
    pub max_concurrent_calls: Option<i32>,
    pub calls_per_second: Option<i32>,
    pub redial_rounds: Option<i32>,
    pub ring_timeout_seconds: Option<i32>,
    pub caller_id_number: Option<String>,
    pub call_notify_url: Option<String>,
    pub script_group_id: Option<String>,
    pub script_group_name: Option<String>,
    pub tag_scene_id: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub extra: Extra,
}

impl Task {
    /// A task known only by its key.
    pub fn new(source_format: SourceFormat, key: SourceKey) -> Self {
        Self {
            source_format,
            key,
            name: None,
            source_create_time: None,
            source_update_time: None,
            run_state: TaskRunState::Unspecified,
            max_concurrent_calls: None,
            calls_per_second: None,
            redial_rounds: None,
            ring_timeout_seconds: None,
            caller_id_number: None,
            call_notify_url: None,
            script_group_id: None,
            script_group_name: None,
            tag_scene_id: None,
            project_id: None,
            project_name: None,
            extra: Extra::new(),
        }
    }
}

/// One dial attempt of a number.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallAttempt {
    pub source_attempt_id: Option<String>,
    pub source_call_id: Option<String>,
    pub call_time: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub talk_duration_ms: Option<i64>,
    pub hangup_cause: Option<String>,
    pub sip_code: Option<String>,
    pub call_status: Option<String>,
    pub status: NumberStatus,
    pub record_file: Option<String>,
    pub calling_number: Option<String>,
    pub extra: Extra,
}

/// A number of a task, with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskNumber {
    pub source_format: SourceFormat,
    /// The task the number belongs to, by the source's id.
    pub task: SourceKey,
    pub source_number_id: Option<String>,
    pub number: String,
    pub region: Region,
    pub blacklisted: bool,
    pub status: NumberStatus,
    pub latest_source_call_id: Option<String>,
    pub attempts: Vec<CallAttempt>,
    pub extra: Extra,
}
