//! Vendor payload formats, one module each, all producing the same domain [`Batch`].

pub mod fields;
pub mod hangup_push;
pub mod huawei;
pub mod task_api;

use chrono_tz::Tz;

use crate::ingest::Batch;
use crate::proto::{PayloadFormat, SourceFormat};

/// What a parser needs besides the payload.
#[derive(Debug, Clone)]
pub struct ParseContext {
    /// The producing system, part of every idempotency key the payload yields.
    pub source_system: String,
    /// Zone of dates written without one (the vendors write local time).
    pub time_zone: Tz,
    /// The source's id of the task the payload belongs to, for payloads that do not say it
    /// themselves (the task API's number list is fetched per task).
    pub source_task_id: Option<String>,
}

impl ParseContext {
    pub fn new(source_system: impl Into<String>, time_zone: Tz) -> Self {
        Self {
            source_system: source_system.into(),
            time_zone,
            source_task_id: None,
        }
    }
}

/// The default zone of zone-less vendor dates.
pub const DEFAULT_TIME_ZONE: Tz = chrono_tz::Asia::Shanghai;

/// A payload that cannot be read, naming the format and the JSON path of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} payload: {path}: {message}")]
pub struct FormatError {
    /// The format's name, e.g. `hangup_push`.
    pub format: &'static str,
    /// JSON path of the offending value, e.g. `$.talk_info[3].talk_datetime`.
    pub path: String,
    /// What is wrong, in lowercase English.
    pub message: String,
}

/// Parses a payload into its domain batch.
pub type Parser = fn(&[u8], &ParseContext) -> Result<Batch, FormatError>;

/// The parser of a payload format.
pub fn parser_for(format: PayloadFormat) -> Option<Parser> {
    match format {
        PayloadFormat::Unspecified => None,
        PayloadFormat::TaskApiRecord => Some(task_api::parse_record),
        PayloadFormat::TaskApiCallList => Some(task_api::parse_call_list),
        PayloadFormat::TaskApiTaskNumbers => Some(task_api::parse_task_numbers),
        PayloadFormat::HangupPush => Some(hangup_push::parse),
        PayloadFormat::HuaweiResult => Some(huawei::parse_results),
        PayloadFormat::HuaweiQc => Some(huawei::parse_qc),
    }
}

/// The default `source_system` of a format: the vendor family, so that payloads of one family
/// (Huawei results and QC results) refer to the same calls.
pub fn default_source_system(format: PayloadFormat) -> &'static str {
    match format {
        PayloadFormat::Unspecified => "unspecified",
        PayloadFormat::TaskApiRecord
        | PayloadFormat::TaskApiCallList
        | PayloadFormat::TaskApiTaskNumbers => "task_api",
        PayloadFormat::HangupPush => "hangup_push",
        PayloadFormat::HuaweiResult | PayloadFormat::HuaweiQc => "huawei_cec",
    }
}

/// The default `source_system` of records of a source format (native records: `native`).
pub fn default_source_system_of(format: SourceFormat) -> &'static str {
    match format {
        SourceFormat::Unspecified | SourceFormat::Native => "native",
        SourceFormat::TaskApi => "task_api",
        SourceFormat::HangupPush => "hangup_push",
        SourceFormat::HuaweiResult | SourceFormat::HuaweiQc => "huawei_cec",
    }
}
