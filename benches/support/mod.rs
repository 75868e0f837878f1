//! Shared parts of the benches (ingest, query, stream) and the oracle test: realistic calls, a
//! fresh database with a real server process per scenario, and CPU accounting.
//!
//! Each bench includes this tree with `mod support;` and uses only part of it, so unused items
//! are expected in any one of them.
#![allow(dead_code)]

pub mod cpu;
pub mod generator;
pub mod header;
pub mod load;
pub mod report;
pub mod server;

/// Runs a bench's async body on a multi-threaded runtime and turns its outcome into the exit
/// status, printing the error chain on failure.
pub fn run_bench<F>(name: &str, body: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name} bench: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\n{name} bench FAILED: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
