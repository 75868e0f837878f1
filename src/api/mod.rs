//! The gRPC services, one file each. Handlers convert wire messages into validated domain types
//! at the edge and answer with `ApiError`, which `error.rs` maps to a status.
//!
//! RPCs that a later milestone fills in are not overridden: the generated default answers
//! UNIMPLEMENTED.

pub mod ingest;
pub mod quality;
pub mod query;
pub mod watch;
