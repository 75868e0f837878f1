//! Integration tests: the real server on port 0 against a real Postgres, one fresh database per
//! test, called through the generated gRPC clients. One test binary, so the database server and
//! the migrated template are set up once.

mod helpers;

mod auth;
mod batching;
mod cli_ingest;
mod cli_watch;
mod embedded_database;
mod health;
mod ingest;
mod limits;
mod live_calls;
mod migrations;
mod quality;
mod query_calls;
mod query_catalog;
mod query_detail;
mod query_stats;
mod reflection;
mod row_security;
mod shutdown;
mod telemetry;
mod upsert;
mod watch;
mod watch_delivery;
mod webhook;
