use std::process::ExitCode;

use clap::Parser as _;

use callstore::cli::{Cli, Command};
use callstore::startup::Application;
use callstore::{db, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = telemetry::init(cli.log_format, &cli.log, std::io::stderr) {
        eprintln!("callstore: {error:#}");
        return ExitCode::FAILURE;
    }
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "callstore failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let application = Application::build(args.config()).await?;
            application.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate(args) => {
            let mut database = db::server::resolve(&args.settings()).await?;
            let result = migrate(&database).await;
            if let Some(private_server) = database.private_server.as_mut() {
                private_server.stop().await?;
            }
            result
        }
    }
}

async fn migrate(database: &db::server::ResolvedDatabase) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let pool = sqlx::PgPool::connect_with(database.connect_options.clone())
        .await
        .with_context(|| format!("cannot connect to {}", database.description))?;
    db::migrate(&pool).await.context("migration failed")?;
    tracing::info!(database = %database.description, "migrations applied");
    pool.close().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}
