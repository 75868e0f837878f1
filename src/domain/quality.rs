//! Quality results imported from an external inspection system.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::SourceKey;
use crate::domain::call::Extra;
use crate::proto::{EmotionPolarity, QualityCallType, QualityStatus, SourceFormat, Speaker};

/// An emotion detected for one side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Emotion {
    pub polarity: EmotionPolarity,
    pub score: f64,
}

/// Metrics of one side of a call.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SideMetrics {
    pub speaker: Speaker,
    pub channel: Option<String>,
    pub speaking_time_ms: Option<i64>,
    pub speech_ratio: Option<f64>,
    pub speaking_rate_cpm: Option<f64>,
    pub turn_count: Option<i32>,
    pub silence_time_ms: Option<i64>,
    pub emotions: Vec<Emotion>,
}

/// A speech segment of an inspected call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub segment_id: i64,
    pub speaker: Speaker,
    pub text: String,
    pub start_offset_ms: i64,
    pub end_offset_ms: i64,
}

/// A quality result from outside, attached to the call with the same source key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportedQuality {
    pub source_format: SourceFormat,
    /// The inspected call.
    pub call: SourceKey,
    pub status: QualityStatus,
    pub staff_id: Option<String>,
    pub staff_name: Option<String>,
    pub file_name: Option<String>,
    pub call_time: Option<DateTime<Utc>>,
    pub upload_time: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub call_type: QualityCallType,
    pub sides: Vec<SideMetrics>,
    pub segments: Vec<Segment>,
    pub violation_count: Option<i32>,
    pub deal: Option<bool>,
    pub extra: Extra,
}
