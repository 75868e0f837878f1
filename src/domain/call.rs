//! A call record and its dialogue, as every ingest path produces them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::domain::SourceKey;
use crate::proto::{
    CallMode, CallOutcome, CallState, Carrier, Gender, HangupSide, JumpType, NodeType,
    NumberCheckStatus, NumberStatus, Satisfaction, SourceFormat, Speaker, TransferState,
    TransferTarget,
};

/// JSON object of fields the model does not cover, kept verbatim (keys sorted).
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// Where a phone number is registered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Region {
    pub province: Option<String>,
    pub city: Option<String>,
    pub area_code: Option<String>,
    pub post_code: Option<String>,
    pub carrier: Carrier,
    pub carrier_name: Option<String>,
    pub text: Option<String>,
}

/// The person called.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Customer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_phone: Option<String>,
}

/// Transfer to a human agent (the state is a column; the rest is kept as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Transfer {
    pub state: TransferState,
    pub target: TransferTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_dial_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_answer_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// The source's transfer type code when `target` is `Other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_code: Option<i32>,
}

/// Huawei CEC result-callback fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct HuaweiResult {
    pub call_status: i32,
    pub fail_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdn_id: Option<i64>,
}

/// The dialer's classification of the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Classification {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manual_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classify: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
}

/// An audio piece of a robot line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct AudioPiece {
    pub file_id: String,
    pub sort: i32,
    pub text: String,
    pub duration_ms: i64,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty", default)]
    pub extra: Extra,
}

/// Reference to a tag by the source's id, with what the payload says about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TagRef {
    pub source_tag_id: String,
    /// The tag's name, when the payload carries it (then the tag is created or updated).
    pub name: Option<String>,
}

/// Reference to a level by the source's id.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LevelRef {
    pub source_level_id: String,
}

/// One utterance of the dialogue.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Turn {
    pub sequence: i32,
    pub speaker: Speaker,
    pub text: String,
    pub time: Option<DateTime<Utc>>,
    pub start_offset_ms: Option<i64>,
    pub end_offset_ms: Option<i64>,
    pub speak_ms: Option<i64>,
    pub play_ms: Option<i64>,
    pub node_id: Option<String>,
    pub node_name: Option<String>,
    pub node_class: Option<String>,
    pub node_type: NodeType,
    pub trigger_title: Option<String>,
    pub matched_keyword: Option<String>,
    pub jump_type: JumpType,
    pub match_type: Option<i32>,
    pub score_delta: Option<i64>,
    pub label: Option<String>,
    pub audio_file: Option<String>,
    pub audio_pieces: Vec<AudioPiece>,
    pub asr_engine: Option<String>,
    pub asr_latency_ms: Option<i64>,
    pub record_ms: Option<i64>,
    pub volume_gain: Option<f64>,
    pub question_index: Option<i32>,
    pub after_transfer: bool,
    pub source_turn_id: Option<String>,
    pub tags: Vec<TagRef>,
    pub extra: Extra,
}

/// A call record ready to be stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    pub source_format: SourceFormat,
    pub key: SourceKey,
    pub state: CallState,
    pub source_task_id: Option<String>,
    pub source_record_id: Option<String>,
    pub script_group_id: Option<String>,
    pub callee: String,
    pub caller: Option<String>,
    pub callee_region: Region,
    pub customer: Option<Customer>,
    pub dial_time: DateTime<Utc>,
    pub answer_time: Option<DateTime<Utc>>,
    pub hangup_time: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub talk_duration_ms: Option<i64>,
    pub billed_minutes: Option<i32>,
    pub outcome: CallOutcome,
    pub number_status: NumberStatus,
    pub hangup_cause: Option<String>,
    pub end_reason: Option<String>,
    pub sip_code: Option<String>,
    pub hangup_side: HangupSide,
    pub error_code: Option<i32>,
    pub huawei: Option<HuaweiResult>,
    pub number_check_status: NumberCheckStatus,
    pub rounds: Option<i32>,
    pub asks_count: Option<i32>,
    pub call_count: Option<i32>,
    pub score: Option<i64>,
    pub level: Option<LevelRef>,
    pub gender: Gender,
    pub last_reply: Option<String>,
    pub end_node: Option<String>,
    pub classification: Option<Classification>,
    pub labels: Vec<String>,
    pub dynamic_labels: Vec<String>,
    pub satisfaction: Satisfaction,
    pub call_mode: CallMode,
    pub call_mode_code: Option<i32>,
    pub first_connected: Option<bool>,
    pub transfer: Option<Transfer>,
    pub record_file: Option<String>,
    pub record_path: Option<String>,
    pub read_time: Option<DateTime<Utc>>,
    pub tags: Vec<TagRef>,
    pub custom_fields: BTreeMap<String, String>,
    pub turns: Vec<Turn>,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub extra: Extra,
}

impl Call {
    /// A call with only its identity, callee and dial time set.
    pub fn new(
        source_format: SourceFormat,
        key: SourceKey,
        callee: String,
        dial_time: DateTime<Utc>,
    ) -> Self {
        Self {
            source_format,
            key,
            state: CallState::Completed,
            source_task_id: None,
            source_record_id: None,
            script_group_id: None,
            callee,
            caller: None,
            callee_region: Region::default(),
            customer: None,
            dial_time,
            answer_time: None,
            hangup_time: None,
            duration_ms: None,
            talk_duration_ms: None,
            billed_minutes: None,
            outcome: CallOutcome::Unspecified,
            number_status: NumberStatus::Unspecified,
            hangup_cause: None,
            end_reason: None,
            sip_code: None,
            hangup_side: HangupSide::Unspecified,
            error_code: None,
            huawei: None,
            number_check_status: NumberCheckStatus::Unspecified,
            rounds: None,
            asks_count: None,
            call_count: None,
            score: None,
            level: None,
            gender: Gender::Unspecified,
            last_reply: None,
            end_node: None,
            classification: None,
            labels: Vec::new(),
            dynamic_labels: Vec::new(),
            satisfaction: Satisfaction::Unspecified,
            call_mode: CallMode::Unspecified,
            call_mode_code: None,
            first_connected: None,
            transfer: None,
            record_file: None,
            record_path: None,
            read_time: None,
            tags: Vec::new(),
            custom_fields: BTreeMap::new(),
            turns: Vec::new(),
            source_create_time: None,
            source_update_time: None,
            extra: Extra::new(),
        }
    }

    /// SHA-256 of the call's content. Equal hashes mean a re-delivery changed nothing; the
    /// decision never depends on timestamps of delivery.
    pub fn content_hash(&self) -> Vec<u8> {
        // Serialising plain data (strings, numbers, sorted maps) cannot fail.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Call {
        let key = SourceKey::parse("native", "call-1").expect("valid key");
        let dial_time = DateTime::parse_from_rfc3339("2025-04-14T10:19:13+08:00")
            .expect("valid time")
            .with_timezone(&Utc);
        Call::new(
            SourceFormat::Native,
            key,
            "15899770637".to_owned(),
            dial_time,
        )
    }

    #[test]
    fn equal_content_has_equal_hashes_and_any_change_changes_it() {
        let call = sample();
        assert_eq!(call.content_hash(), sample().content_hash());

        let mut scored = sample();
        scored.score = Some(80);
        assert_ne!(call.content_hash(), scored.content_hash());

        let mut with_turn = sample();
        with_turn.turns.push(Turn {
            sequence: 1,
            speaker: Speaker::Robot,
            text: "您好".to_owned(),
            ..Turn::default()
        });
        assert_ne!(call.content_hash(), with_turn.content_hash());

        let mut with_extra = sample();
        with_extra
            .extra
            .insert("data1".to_owned(), serde_json::Value::from("x"));
        assert_ne!(call.content_hash(), with_extra.content_hash());
    }
}
