//! callstore: the system of record for the results of AI outbound phone calls, served over gRPC.
//!
//! `main.rs` is a thin shell over this library; the integration tests start the server through
//! the same [`startup::Application`].

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod feed;
pub mod health;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod quality;
pub mod startup;
pub mod stats;
pub mod telemetry;
pub mod webhook;

/// Code generated from `proto/callstore/v1` by `build.rs`. Never edited by hand.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("callstore.v1");
}
