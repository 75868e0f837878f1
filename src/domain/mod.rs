//! Validated domain types. Wire messages are converted into these at the API edge (and vendor
//! payloads by `ingest::formats`); everything below the API works on them.
//!
//! Code-table values use the generated protobuf enums (plain `i32`-backed Rust enums): they are
//! the contract's vocabulary, and the database stores their numbers.

pub mod call;
pub mod call_query;
pub mod ids;
pub mod quality;
pub mod tag;
pub mod task;
pub mod transcript;

pub use ids::{SourceKey, TenantId};
