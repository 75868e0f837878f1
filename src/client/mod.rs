//! Client-side commands: `callstore <command>` talking to a running server over gRPC. One file
//! per command. Results go to stdout, one line per record; progress, errors and the summary go
//! to stderr.

pub mod ingest;
