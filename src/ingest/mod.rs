//! Ingest: turning native records and vendor payloads into domain types, and storing them.

pub mod formats;
pub mod group_commit;
pub mod payload;
pub mod writer;

use crate::domain::call::Call;
use crate::domain::quality::ImportedQuality;
use crate::domain::tag::{Level, Tag, TagGroup};
use crate::domain::task::{Task, TaskNumber};

/// Everything one payload carries, in domain types. Items keep payload order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub calls: Vec<Call>,
    pub tasks: Vec<Task>,
    pub numbers: Vec<TaskNumber>,
    pub tags: Vec<Tag>,
    pub tag_groups: Vec<TagGroup>,
    pub levels: Vec<Level>,
    pub quality: Vec<ImportedQuality>,
}

impl Batch {
    /// Whether the batch carries calls and nothing else.
    pub fn has_only_calls(&self) -> bool {
        self.tasks.is_empty()
            && self.numbers.is_empty()
            && self.tags.is_empty()
            && self.tag_groups.is_empty()
            && self.levels.is_empty()
            && self.quality.is_empty()
    }
}
