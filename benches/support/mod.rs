//! Shared parts of the benches (ingest, query, stream) and the oracle test: realistic calls, a
//! fresh database with a real server process per scenario, and CPU accounting.
//!
//! Each bench includes this tree with `mod support;` and uses only part of it, so unused items
//! are expected in any one of them.
#![allow(dead_code)]

pub mod cpu;
pub mod generator;
pub mod report;
pub mod server;
