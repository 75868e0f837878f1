use std::process::ExitCode;

use clap::Parser as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use callstore::cli::{Cli, Command};
use callstore::startup::Application;
use callstore::{client, db, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs, and trace spans by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let mut telemetry = match telemetry::init_with_otlp(cli.log_format, &cli.log, std::io::stderr) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("callstore: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "callstore failed");
            ExitCode::FAILURE
        }
    };
    // The last spans are sent before the runtime ends.
    telemetry.shutdown();
    code
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            // Handlers go in before anything else, so a signal during start-up is not fatal:
            // it is handled as soon as the server runs.
            let mut signals = Signals::install()?;
            let application = Application::build(args.config()).await?;
            application
                .run_until_stopped(async move {
                    let signal = signals.next().await;
                    tracing::info!(signal, "shutdown requested");
                    // A second signal means "now": skip the rest of the grace period.
                    tokio::spawn(async move {
                        let signal = signals.next().await;
                        tracing::warn!(signal, "second shutdown signal; exiting without draining");
                        std::process::exit(130);
                    });
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            let mut database = db::server::resolve(&args.settings()).await?;
            let result = migrate(&database).await;
            if let Some(private_server) = database.private_server.as_mut() {
                private_server.stop().await?;
            }
            result.map(|()| ExitCode::SUCCESS)
        }
        // A client command: result lines on stdout, its errors and summary on stderr; the exit
        // status says whether every record was stored.
        Command::Ingest(args) => Ok(client::ingest::run(args).await),
        // Events on stdout until Ctrl-C or --max-events; reconnections and errors on stderr.
        Command::Watch(args) => Ok(client::watch::run(args).await),
        // Key management in the database: the new key on stdout, once.
        Command::Keys(args) => callstore::auth::admin::run(args).await,
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

/// SIGINT (Ctrl-C) and SIGTERM.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
