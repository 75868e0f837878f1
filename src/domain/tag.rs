//! Tags, tag groups and levels.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::SourceKey;
use crate::domain::call::Extra;
use crate::proto::SourceFormat;

/// A tag group (母标签).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagGroup {
    pub source_format: SourceFormat,
    pub key: SourceKey,
    pub name: String,
    pub scene_id: Option<String>,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub extra: Extra,
}

/// A tag (子标签) with the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tag {
    pub source_format: SourceFormat,
    pub key: SourceKey,
    pub name: String,
    pub description: Option<String>,
    pub color: Option<String>,
    pub enabled: bool,
    /// Source ids of the tag's groups.
    pub group_ids: Vec<String>,
    pub source_create_time: Option<DateTime<Utc>>,
    pub source_update_time: Option<DateTime<Utc>>,
    pub extra: Extra,
}

/// A level (评分等级).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Level {
    pub source_format: SourceFormat,
    pub key: SourceKey,
    pub name: String,
    pub alias: Option<String>,
    pub color: Option<String>,
    pub min_score: Option<i64>,
    pub max_score: Option<i64>,
    pub extra: Extra,
}
