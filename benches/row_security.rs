//! Row-level security benchmark: what the tenant policies of migration
//! `20261127000001_row_level_security` cost callstore, against a baseline measured in the same
//! run.
//!
//! ```sh
//! cargo bench --bench row_security                 # full run (20,000 calls, 3 rounds, 10 s reads)
//! cargo bench --bench row_security -- --quick      # smoke run (3,000 calls, 1 round, 2 s reads)
//! cargo bench --bench row_security -- --calls 50000 --rounds 5 --seconds 5 --clients 16
//! ```
//!
//! Two scenarios that differ only by the database role `callstore serve` connects as: `bypass`
//! (the baseline), a role `LOGIN NOSUPERUSER BYPASSRLS` that the policies skip, and `enforced`,
//! a role `LOGIN NOSUPERUSER NOBYPASSRLS` that they bind. The bench creates both roles (or sets
//! their attributes again) with the admin URL, password = name. Every run of a scenario gets a
//! fresh database owned by its role, which the server migrates at start, and a fresh server
//! process; the scenarios run interleaved in `--rounds` rounds, their order alternating from
//! round to round, and each number is the median over the rounds. Per run:
//!
//! 1. Ingest throughput: the same generated calls (one task) as `IngestCalls` batches of
//!    `--batch` from `--batch-clients` concurrent clients → calls/s, and the CPU the server and
//!    the run's Postgres backends used.
//! 2. Reads of the loaded data (after `VACUUM ANALYZE`), each for `--seconds` with `--clients`
//!    concurrent clients after 1 s of warm-up → requests/s, p50 and p99: (a) `ListCalls` of the
//!    task, a page of 50, no filter; (b) the same with a talk-time filter; (c) `GetCallDetail`
//!    (the call with its turns, tags, level, task and quality result) of random stored ids;
//!    (d) `GetTaskStats` of the task.
//! 3. In the enforced runs only, with the server stopped, in this process over one connection
//!    each: the same primary-key read of one call (`SELECT source_call_id FROM calls WHERE
//!    tenant_id = $1 AND id = $2`) as (i) an autocommit statement of the enforced role, its
//!    session naming the tenant (`SET callstore.tenant`), so the policy applies but no
//!    transaction is opened; (ii) inside `callstore::db::begin(&pool, Scope::Tenant(..))` that
//!    is then dropped, on a pool of one connection made by `db::lazy_pool` — exactly what the
//!    server does, the `ROLLBACK` sent with the pool's release ping; (0) an autocommit
//!    statement of the admin role (a superuser: no policy), for reference. Interleaved slices,
//!    5 s of each in all (1 s with `--quick`) → µs per read and the differences.
//!
//! Before anything is measured each run checks that row-level security is what the scenario
//! says: `SELECT NOT (rolsuper OR rolbypassrls) FROM pg_roles WHERE rolname = current_user`
//! is true for the enforced role and false for the bypass role, and after ingest a transaction
//! without any `SET LOCAL` sees no call as the enforced role (and every call as the bypass
//! role), while one with the server's scope sees every call as either.
//!
//! Results go to stdout as markdown tables, progress to stderr. The issue sets no target, so
//! no verdict is printed; only errors (a failed request, a call not stored, rows missing, a
//! role that is not what its scenario needs) make the bench exit non-zero. The two roles are
//! left in place (they own nothing once the run's databases are dropped).

mod support;

use std::collections::VecDeque;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use callstore::db::server::quote_identifier;
use callstore::db::{PoolSettings, Scope, lazy_pool};
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    CallFilter, GetCallDetailRequest, GetTaskStatsRequest, IngestCallsRequest, Int64Range,
    ListCallsRequest,
};
use clap::Parser;
use prost::Message as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, PgConnection, PgPool};
use tonic::transport::Channel;
use uuid::Uuid;

use support::cpu::CpuSplit;
use support::generator::{BENCH_TENANT, Generator, GeneratorConfig};
use support::header::RunHeader;
use support::load::closed_loop_ingest;
use support::report::{Table, bytes, millis, per_second, percentile, rate, thousands};
use support::server::{
    BenchDatabase, DEFAULT_ADMIN_URL, Databases, ServerProcess, server_binary, tenant_request,
};

/// Calls a run ingests by default, and with `--quick`.
const DEFAULT_CALLS: usize = 20_000;
const QUICK_CALLS: usize = 3_000;
/// Rounds by default, and with `--quick`.
const DEFAULT_ROUNDS: usize = 3;
const QUICK_ROUNDS: usize = 1;
/// Seconds each read workload is measured by default, and with `--quick`.
const DEFAULT_SECONDS: u64 = 10;
const QUICK_SECONDS: u64 = 2;
/// Each read workload first runs this long unmeasured (plans, caches, connections).
const WARM_UP: Duration = Duration::from_secs(1);
/// The page ListCalls asks for.
const PAGE: i32 = 50;
/// Talk time of the filtered ListCalls, in seconds: [min, max).
const TALK_SECONDS: (i64, i64) = (30, 90);
/// How long each in-process read variant is timed in all, by default and with `--quick`.
const MICRO_FOR: Duration = Duration::from_secs(5);
const QUICK_MICRO_FOR: Duration = Duration::from_secs(1);
/// The in-process timing is cut into this many slices per variant, the variants alternating.
const MICRO_SLICES: u32 = 5;
/// The in-process read, the same for every variant: one call by primary key.
const MICRO_READ: &str = "SELECT source_call_id FROM calls WHERE tenant_id = $1 AND id = $2";

#[derive(Debug, Parser)]
#[command(
    name = "row_security",
    about = "Row-level security benchmark of callstore: a BYPASSRLS role against an enforced one"
)]
struct Args {
    /// Calls each run ingests (default 20,000; 3,000 with --quick).
    #[arg(long)]
    calls: Option<usize>,
    /// Rounds; each runs both scenarios (default 3; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds each read workload is measured, after 1 s of warm-up (default 10; 2 with --quick).
    #[arg(long)]
    seconds: Option<u64>,
    /// Concurrent clients of the read workloads, each on its own connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Calls per IngestCalls request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent ingest clients, each on its own connection.
    #[arg(long, default_value_t = 4)]
    batch_clients: usize,
    /// Small sizes and short measurements, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Seed of the generated calls (the same seed sends the same calls).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A Postgres URL of a superuser (it creates the roles and the databases).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_ADMIN_URL, hide_env_values = true)]
    admin_url: String,
    /// Passed by `cargo bench`. Without it (as under `cargo test --benches`) the run is --quick.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What a run needs to know, resolved from the arguments.
struct Settings {
    calls: usize,
    rounds: usize,
    read_for: Duration,
    micro_for: Duration,
    clients: usize,
    batch: usize,
    batch_clients: usize,
    seed: u64,
}

fn main() -> ExitCode {
    support::run_bench("row_security", run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.clients >= 1, "--clients must be at least 1");
    ensure!(args.batch >= 1, "--batch must be at least 1");
    ensure!(
        args.batch_clients >= 1,
        "--batch-clients must be at least 1"
    );
    // Like criterion: `cargo bench` passes --bench; run any other way it is a smoke run.
    let quick = args.quick || !args.bench;
    let settings = Settings {
        calls: args
            .calls
            .unwrap_or(if quick { QUICK_CALLS } else { DEFAULT_CALLS }),
        rounds: args
            .rounds
            .unwrap_or(if quick { QUICK_ROUNDS } else { DEFAULT_ROUNDS }),
        read_for: Duration::from_secs(args.seconds.unwrap_or(if quick {
            QUICK_SECONDS
        } else {
            DEFAULT_SECONDS
        })),
        micro_for: if quick { QUICK_MICRO_FOR } else { MICRO_FOR },
        clients: args.clients,
        batch: args.batch,
        batch_clients: args.batch_clients,
        seed: args.seed,
    };
    ensure!(settings.calls >= 1, "--calls must be at least 1");
    ensure!(settings.rounds >= 1, "--rounds must be at least 1");
    ensure!(!settings.read_for.is_zero(), "--seconds must be at least 1");

    let admin: PgConnectOptions = args
        .admin_url
        .parse()
        .context("--admin-url is not a valid Postgres URL")?;
    let databases = Databases::connect(&args.admin_url).await?;
    ensure_roles(&admin).await?;
    let header = RunHeader::read("row_security", &databases).await?;

    let outcome = comparison(&settings, &admin, &databases).await;
    databases.drop_all().await;
    let report = outcome?;
    print_header(&header, &settings, &report);
    report.print(&settings);
    Ok(())
}

fn print_header(header: &RunHeader, settings: &Settings, report: &Report) {
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or_else(|| "unknown".to_owned(), |kib| bytes(kib * 1024));
    header.print_intro("callstore row-level security benchmark");
    println!(
        "- machine: {} CPUs (nproc), {}, {ram} RAM, {}; server, Postgres and this bench share them",
        header.cores,
        header.cpu_model,
        std::env::consts::ARCH
    );
    header.print_provenance();
    println!("- server: `{}` (release)", server_binary().display());
    println!(
        "- scenarios: `bypass` (baseline) = `callstore serve` connected as `{}` ({}); `enforced` = connected as `{}` ({}); nothing else differs",
        Scenario::Bypass.role(),
        Scenario::Bypass.attributes(),
        Scenario::Enforced.role(),
        Scenario::Enforced.attributes()
    );
    println!(
        "- data: seed {}, tenant `{BENCH_TENANT}`, one task; {} calls a run ({:.0}% with turns, {} a call on the wire); a fresh database owned by the scenario's role (migrated by the server at start) and a fresh server per run",
        settings.seed,
        thousands(settings.calls as u64),
        report.workload.calls_with_turns as f64 * 100.0 / settings.calls.max(1) as f64,
        bytes((report.workload.request_bytes / settings.calls.max(1)) as u64)
    );
    println!(
        "- rounds: {}, each running both scenarios, the order alternating (bypass first in odd rounds); medians over the rounds",
        settings.rounds
    );
    println!();
}

// ---------------------------------------------------------------------------------------------
// Scenarios, roles and databases
// ---------------------------------------------------------------------------------------------

/// The role the server connects as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// The baseline: a role the policies skip.
    Bypass,
    /// A role the policies bind.
    Enforced,
}

impl Scenario {
    const ALL: [Self; 2] = [Self::Bypass, Self::Enforced];

    /// The order of round `round` (from 1): bypass first in odd rounds.
    fn order(round: usize) -> [Self; 2] {
        if round % 2 == 1 {
            [Self::Bypass, Self::Enforced]
        } else {
            [Self::Enforced, Self::Bypass]
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Enforced => "enforced",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Bypass => "bypass (baseline: BYPASSRLS role)",
            Self::Enforced => "enforced (NOBYPASSRLS role)",
        }
    }

    /// The role's name, which is also its password.
    fn role(self) -> &'static str {
        match self {
            Self::Bypass => "callstore_bench_rls_bypass",
            Self::Enforced => "callstore_bench_rls_enforced",
        }
    }

    fn attributes(self) -> &'static str {
        match self {
            Self::Bypass => "LOGIN NOSUPERUSER BYPASSRLS",
            Self::Enforced => "LOGIN NOSUPERUSER NOBYPASSRLS",
        }
    }

    /// Whether the policies bind the role.
    fn enforced(self) -> bool {
        self == Self::Enforced
    }
}

/// Creates the scenarios' roles, or sets the attributes and password of those that exist.
async fn ensure_roles(admin: &PgConnectOptions) -> anyhow::Result<()> {
    let mut connection = admin
        .connect()
        .await
        .context("connecting with --admin-url")?;
    for scenario in Scenario::ALL {
        let role = scenario.role();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&mut connection)
                .await?;
        // The role names are constants of [a-z_]: the password literal needs no escaping.
        let statement = format!(
            "{} ROLE {} {} PASSWORD '{role}'",
            if exists { "ALTER" } else { "CREATE" },
            quote_identifier(role),
            scenario.attributes()
        );
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut connection)
            .await
            .with_context(|| {
                format!("creating or altering role {role} (--admin-url must be a superuser)")
            })?;
    }
    connection.close().await.ok();
    Ok(())
}

/// A fresh database owned by the scenario's role, and how to connect to it as that role.
async fn scenario_database(
    databases: &Databases,
    admin: &PgConnectOptions,
    scenario: Scenario,
) -> anyhow::Result<(BenchDatabase, PgConnectOptions)> {
    let database = databases.create().await?;
    let role = scenario.role();
    let mut connection = admin.connect().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER DATABASE {} OWNER TO {}",
        quote_identifier(&database.name),
        quote_identifier(role)
    )))
    .execute(&mut connection)
    .await
    .with_context(|| format!("giving database {} to {role}", database.name))?;
    connection.close().await.ok();
    let as_role = database.options.clone().username(role).password(role);
    Ok((database, as_role))
}

/// The role the server connects as is what the scenario needs: bound by the policies or not.
async fn check_role(as_role: &PgConnectOptions, scenario: Scenario) -> anyhow::Result<()> {
    let mut connection = as_role.connect().await?;
    let (user, enforced): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, NOT (rolsuper OR rolbypassrls) FROM pg_roles
         WHERE rolname = current_user",
    )
    .fetch_one(&mut connection)
    .await
    .context("reading the role's attributes")?;
    connection.close().await.ok();
    ensure!(
        user == scenario.role(),
        "{}: connected as {user}, expected {}",
        scenario.label(),
        scenario.role()
    );
    ensure!(
        enforced == scenario.enforced(),
        "{}: NOT (rolsuper OR rolbypassrls) is {enforced} for {user}, expected {}",
        scenario.label(),
        scenario.enforced()
    );
    Ok(())
}

/// Calls the scenario's role sees after ingest: in a transaction without any `SET LOCAL`, and
/// in one with the server's scope for the bench tenant.
#[derive(Debug, Clone, Copy)]
struct Visible {
    unscoped: i64,
    scoped: i64,
}

async fn check_visible(
    as_role: &PgConnectOptions,
    scenario: Scenario,
    calls: usize,
) -> anyhow::Result<Visible> {
    let mut connection = as_role.connect().await?;
    let mut transaction = connection.begin().await?;
    let unscoped: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(&mut *transaction)
        .await
        .context("counting calls without a scope")?;
    transaction.rollback().await?;
    let mut transaction = connection.begin().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET LOCAL callstore.tenant = '{BENCH_TENANT}'; SET LOCAL callstore.all_tenants = 'off'"
    )))
    .execute(&mut *transaction)
    .await?;
    let scoped: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(&mut *transaction)
        .await
        .context("counting calls in the tenant's scope")?;
    transaction.rollback().await?;
    connection.close().await.ok();

    let calls = i64::try_from(calls)?;
    let label = scenario.label();
    ensure!(
        scoped == calls,
        "{label}: a transaction scoped to the tenant sees {scoped} calls, expected {calls}"
    );
    if scenario.enforced() {
        ensure!(
            unscoped == 0,
            "{label}: a transaction without SET LOCAL sees {unscoped} calls: row-level security is not enforced"
        );
    } else {
        ensure!(
            unscoped == calls,
            "{label}: a transaction without SET LOCAL sees {unscoped} calls, expected all {calls} (BYPASSRLS)"
        );
    }
    Ok(Visible { unscoped, scoped })
}

/// Fresh planner statistics and visibility maps, the same for both scenarios (so that
/// autovacuum does not start in one run's reads and not in the other's).
async fn analyze(database: &BenchDatabase) -> anyhow::Result<()> {
    let mut connection = database.options.connect().await?;
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&mut connection)
        .await
        .with_context(|| format!("VACUUM ANALYZE of {}", database.name))?;
    connection.close().await.ok();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The runs
// ---------------------------------------------------------------------------------------------

/// The calls every run sends, as requests.
struct Workload {
    requests: Vec<IngestCallsRequest>,
    calls: usize,
    calls_with_turns: usize,
    request_bytes: usize,
}

fn workload(settings: &Settings) -> Workload {
    let generator = Generator::new(GeneratorConfig {
        seed: settings.seed,
        tasks: 1,
        ..GeneratorConfig::default()
    });
    let mut calls_with_turns = 0;
    let requests: Vec<IngestCallsRequest> = (0..settings.calls)
        .step_by(settings.batch)
        .map(|first| IngestCallsRequest {
            calls: (first..first.saturating_add(settings.batch).min(settings.calls))
                .map(|index| {
                    let call = generator.call(index as u64);
                    if !call.turns.is_empty() {
                        calls_with_turns += 1;
                    }
                    call
                })
                .collect(),
        })
        .collect();
    let request_bytes = requests.iter().map(|request| request.encoded_len()).sum();
    Workload {
        requests,
        calls: settings.calls,
        calls_with_turns,
        request_bytes,
    }
}

/// The read workloads, in the order each run measures them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    List,
    ListFiltered,
    Detail,
    Stats,
}

impl ReadKind {
    const ALL: [Self; 4] = [Self::List, Self::ListFiltered, Self::Detail, Self::Stats];

    fn label(self) -> &'static str {
        match self {
            Self::List => "ListCalls",
            Self::ListFiltered => "ListCalls, talk 30–90 s",
            Self::Detail => "GetCallDetail",
            Self::Stats => "GetTaskStats",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::List => "2a. ListCalls: a page of 50 of the task, no filter",
            Self::ListFiltered => {
                "2b. ListCalls: a page of 50 of the task, talk time 30–90 s (`talk_seconds`)"
            }
            Self::Detail => {
                "2c. GetCallDetail of random stored calls (turns, tags, level, task, quality result)"
            }
            Self::Stats => "2d. GetTaskStats of the task (every call, no series)",
        }
    }
}

/// One read workload of one run.
#[derive(Debug, Clone, Copy)]
struct ReadRun {
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
    requests: usize,
}

/// One in-process measurement: µs a read, per variant.
#[derive(Debug, Clone, Copy)]
struct MicroRun {
    superuser: f64,
    autocommit: f64,
    transaction: f64,
    reads: u64,
}

/// One run of one scenario.
struct Run {
    calls_per_second: f64,
    cpu: CpuSplit,
    visible: Visible,
    reads: Vec<(ReadKind, ReadRun)>,
    micro: Option<MicroRun>,
}

/// Everything measured.
struct Report {
    workload: Workload,
    runs: Vec<(Scenario, Run)>,
}

async fn comparison(
    settings: &Settings,
    admin: &PgConnectOptions,
    databases: &Databases,
) -> anyhow::Result<Report> {
    eprintln!("generating {} calls", thousands(settings.calls as u64));
    let workload = workload(settings);
    let mut runs = Vec::with_capacity(settings.rounds * Scenario::ALL.len());
    for round in 1..=settings.rounds {
        for scenario in Scenario::order(round) {
            let progress = format!("round {round}/{} {}", settings.rounds, scenario.label());
            let run = run_scenario(settings, admin, databases, &workload, scenario, &progress)
                .await
                .with_context(|| format!("round {round}, scenario {}", scenario.label()))?;
            runs.push((scenario, run));
        }
    }
    Ok(Report { workload, runs })
}

async fn run_scenario(
    settings: &Settings,
    admin: &PgConnectOptions,
    databases: &Databases,
    workload: &Workload,
    scenario: Scenario,
    progress: &str,
) -> anyhow::Result<Run> {
    let (database, as_role) = scenario_database(databases, admin, scenario).await?;
    let server = ServerProcess::start(&server_binary(), as_role.to_url_lossy().as_ref()).await?;
    check_role(&as_role, scenario).await?;

    let mut clients = Vec::with_capacity(settings.batch_clients);
    for _ in 0..settings.batch_clients {
        clients.push(IngestServiceClient::new(server.channel().await?));
    }
    let requests: VecDeque<IngestCallsRequest> = workload.requests.iter().cloned().collect();
    let load = match closed_loop_ingest(scenario.label(), clients, requests, server.pid()).await {
        Ok(load) => load,
        Err(error) => return Err(with_server_log(error, &server)),
    };
    if load.ids.len() != workload.calls || load.first_problem.is_some() {
        bail!(
            "{}: {} of {} calls CREATED; first other: {}",
            scenario.label(),
            load.ids.len(),
            workload.calls,
            load.first_problem.as_deref().unwrap_or("none")
        );
    }
    let calls_per_second = per_second(workload.calls as f64, load.cpu.wall);
    eprintln!(
        "{progress}: ingest {} calls/s, server {:.2} CPU-s, postgres backends {:.2} CPU-s",
        rate(calls_per_second),
        load.cpu.server,
        load.cpu.postgres_ours
    );

    let visible = check_visible(&as_role, scenario, workload.calls).await?;
    analyze(&database).await?;
    let ids = Arc::new(load.ids);
    let reads = match measure_reads(settings, &server, &database, &ids, progress).await {
        Ok(reads) => reads,
        Err(error) => return Err(with_server_log(error, &server)),
    };
    server.stop().await?;

    let micro = if scenario.enforced() {
        eprintln!("{progress}: in-process reads");
        let micro = micro(&database, &as_role, &ids, settings.micro_for).await?;
        eprintln!(
            "{progress}: µs a read: (0) superuser autocommit {:.1}, (i) autocommit {:.1}, (ii) db::begin + drop {:.1}",
            micro.superuser, micro.autocommit, micro.transaction
        );
        Some(micro)
    } else {
        None
    };
    databases.drop_database(&database.name).await?;
    Ok(Run {
        calls_per_second,
        cpu: load.cpu,
        visible,
        reads,
        micro,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 2: reads through the server
// ---------------------------------------------------------------------------------------------

async fn measure_reads(
    settings: &Settings,
    server: &ServerProcess,
    database: &BenchDatabase,
    ids: &Arc<Vec<Uuid>>,
    progress: &str,
) -> anyhow::Result<Vec<(ReadKind, ReadRun)>> {
    let task_id = {
        let pool = database.pool().await?;
        let tasks: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE tenant_id = $1")
            .bind(BENCH_TENANT)
            .fetch_all(&pool)
            .await
            .context("reading the bench task")?;
        pool.close().await;
        ensure!(
            tasks.len() == 1,
            "the bench tenant has {} tasks, expected 1",
            tasks.len()
        );
        tasks[0].to_string()
    };
    let mut clients = Vec::with_capacity(settings.clients);
    for _ in 0..settings.clients {
        clients.push(QueryServiceClient::new(server.channel().await?));
    }
    let mut reads = Vec::with_capacity(ReadKind::ALL.len());
    for kind in ReadKind::ALL {
        let run = measure_read(kind, settings, &clients, &task_id, ids)
            .await
            .with_context(|| kind.label())?;
        eprintln!(
            "{progress}: {}: {} requests/s, p50 {}, p99 {}",
            kind.label(),
            rate(run.requests_per_second),
            millis(run.p50),
            millis(run.p99)
        );
        reads.push((kind, run));
    }
    Ok(reads)
}

fn list_request(kind: ReadKind, task_id: &str) -> ListCallsRequest {
    let filter = (kind == ReadKind::ListFiltered).then(|| CallFilter {
        talk_seconds: Some(Int64Range {
            min: Some(TALK_SECONDS.0),
            max: Some(TALK_SECONDS.1),
        }),
        ..CallFilter::default()
    });
    ListCallsRequest {
        task_id: task_id.to_owned(),
        filter,
        page_size: PAGE,
        ..ListCallsRequest::default()
    }
}

async fn measure_read(
    kind: ReadKind,
    settings: &Settings,
    clients: &[QueryServiceClient<Channel>],
    task_id: &str,
    ids: &Arc<Vec<Uuid>>,
) -> anyhow::Result<ReadRun> {
    let clients = clients.to_vec();
    let (concurrency, duration) = (settings.clients, settings.read_for);
    match kind {
        ReadKind::List | ReadKind::ListFiltered => {
            let request = list_request(kind, task_id);
            // Every page must be as long as the first; the first must hold calls.
            let expected = clients[0]
                .clone()
                .list_calls(tenant_request(BENCH_TENANT, request.clone()))
                .await
                .context("ListCalls failed")?
                .into_inner()
                .calls
                .len();
            ensure!(expected > 0, "the first page holds no call");
            if kind == ReadKind::List {
                ensure!(
                    expected == usize::try_from(PAGE)?.min(ids.len()),
                    "the first page holds {expected} calls, expected a full page"
                );
            }
            measure(concurrency, duration, move |client| {
                let mut client = clients[client].clone();
                let request = request.clone();
                async move {
                    let page = client
                        .list_calls(tenant_request(BENCH_TENANT, request))
                        .await
                        .context("ListCalls failed")?
                        .into_inner();
                    ensure!(
                        page.calls.len() == expected,
                        "a page of {} calls, expected {expected}",
                        page.calls.len()
                    );
                    Ok(())
                }
            })
            .await
        }
        ReadKind::Detail => {
            let ids = Arc::clone(ids);
            measure(concurrency, duration, move |client| {
                let mut client = clients[client].clone();
                let id = ids[rand::random_range(0..ids.len())].to_string();
                async move {
                    let call = client
                        .get_call_detail(tenant_request(
                            BENCH_TENANT,
                            GetCallDetailRequest {
                                call_id: id.clone(),
                            },
                        ))
                        .await
                        .with_context(|| format!("GetCallDetail {id} failed"))?
                        .into_inner()
                        .call
                        .with_context(|| format!("GetCallDetail {id} answered no call"))?;
                    ensure!(
                        call.id == id,
                        "GetCallDetail {id} answered call {}",
                        call.id
                    );
                    Ok(())
                }
            })
            .await
        }
        ReadKind::Stats => {
            let request = GetTaskStatsRequest {
                task_id: task_id.to_owned(),
                ..GetTaskStatsRequest::default()
            };
            let expected = i64::try_from(ids.len())?;
            measure(concurrency, duration, move |client| {
                let mut client = clients[client].clone();
                let request = request.clone();
                async move {
                    let stats = client
                        .get_task_stats(tenant_request(BENCH_TENANT, request))
                        .await
                        .context("GetTaskStats failed")?
                        .into_inner();
                    ensure!(
                        stats.total_calls == expected,
                        "statistics of {} calls, expected {expected}",
                        stats.total_calls
                    );
                    Ok(())
                }
            })
            .await
        }
    }
}

/// Runs `call` from `clients` concurrent tasks (task `n` passes `n`) in a closed loop for
/// [`WARM_UP`] unmeasured and then `duration`; the requests started in the measured window
/// give the rate and the latencies.
async fn measure<F, Fut>(clients: usize, duration: Duration, call: F) -> anyhow::Result<ReadRun>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let warm_until = Instant::now() + WARM_UP;
    let until = warm_until + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let started = Instant::now();
                if started >= until {
                    return anyhow::Ok(latencies);
                }
                call(client).await?;
                if started >= warm_until {
                    latencies.push(started.elapsed());
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(measured)) => latencies.extend(measured),
            Ok(Err(error)) => {
                failure.get_or_insert(error);
            }
            Err(error) => {
                failure.get_or_insert(anyhow::anyhow!("a client task failed: {error}"));
            }
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let wall = Instant::now().saturating_duration_since(warm_until);
    latencies.sort();
    Ok(ReadRun {
        requests_per_second: per_second(latencies.len() as f64, wall),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        requests: latencies.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Part 3: one read in-process
// ---------------------------------------------------------------------------------------------

/// How the in-process read is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// (0) Autocommit, as the admin role (a superuser: no policy).
    Superuser,
    /// (i) Autocommit, as the enforced role with the tenant set for the session.
    Autocommit,
    /// (ii) Inside `db::begin`, dropped, on a pool of one connection: what the server does.
    Transaction,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Superuser, Self::Autocommit, Self::Transaction];
}

/// The connections of the in-process reads.
struct Micro<'a> {
    superuser: PgConnection,
    autocommit: PgConnection,
    pool: PgPool,
    ids: &'a [Uuid],
}

/// A connection set up like the server's pool sets up its own (see `db::lazy_pool`).
fn server_like(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .application_name("callstore_bench")
        .options([
            ("plan_cache_mode", "force_custom_plan"),
            ("max_parallel_workers_per_gather", "0"),
        ])
}

impl Micro<'_> {
    async fn read(&mut self, variant: Variant, id: Uuid) -> anyhow::Result<()> {
        let query = sqlx::query_scalar::<_, String>(MICRO_READ)
            .bind(BENCH_TENANT)
            .bind(id);
        match variant {
            Variant::Superuser => {
                query.fetch_one(&mut self.superuser).await?;
            }
            Variant::Autocommit => {
                query.fetch_one(&mut self.autocommit).await?;
            }
            Variant::Transaction => {
                let mut transaction =
                    callstore::db::begin(&self.pool, Scope::Tenant(BENCH_TENANT)).await?;
                query.fetch_one(&mut *transaction).await?;
                // Dropped, not committed: the ROLLBACK goes with the pool's release ping.
                drop(transaction);
            }
        }
        Ok(())
    }

    /// Reads random calls with `variant` for `length`; µs a read, and how many.
    async fn slice(&mut self, variant: Variant, length: Duration) -> anyhow::Result<(f64, u64)> {
        let started = Instant::now();
        let mut reads: u64 = 0;
        while started.elapsed() < length {
            let id = self.ids[rand::random_range(0..self.ids.len())];
            self.read(variant, id)
                .await
                .with_context(|| format!("{variant:?} read of call {id}"))?;
            reads += 1;
        }
        Ok((
            started.elapsed().as_secs_f64() * 1e6 / reads.max(1) as f64,
            reads,
        ))
    }
}

async fn micro(
    database: &BenchDatabase,
    as_role: &PgConnectOptions,
    ids: &[Uuid],
    measure_for: Duration,
) -> anyhow::Result<MicroRun> {
    let superuser = server_like(&database.options).connect().await?;
    let mut autocommit = server_like(as_role).connect().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET callstore.tenant = '{BENCH_TENANT}'; SET callstore.all_tenants = 'off'"
    )))
    .execute(&mut autocommit)
    .await?;
    let pool = lazy_pool(
        as_role.clone(),
        &PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
        },
    );
    let mut micro = Micro {
        superuser,
        autocommit,
        pool,
        ids,
    };
    // Connections, prepared statements and caches first.
    for variant in Variant::ALL {
        micro.slice(variant, measure_for / 10).await?;
    }
    let slice = measure_for / MICRO_SLICES;
    let mut per_read: [Vec<f64>; 3] = Default::default();
    let mut reads = 0;
    for _ in 0..MICRO_SLICES {
        for (position, variant) in Variant::ALL.into_iter().enumerate() {
            let (micros, done) = micro.slice(variant, slice).await?;
            per_read[position].push(micros);
            reads += done;
        }
    }
    let Micro {
        superuser,
        autocommit,
        pool,
        ..
    } = micro;
    superuser.close().await.ok();
    autocommit.close().await.ok();
    pool.close().await;
    Ok(MicroRun {
        superuser: median(&per_read[0]),
        autocommit: median(&per_read[1]),
        transaction: median(&per_read[2]),
        reads,
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// The middle value (the mean of the two middle ones for an even count); 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => 0.0,
        length if length % 2 == 1 => sorted[middle],
        _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
    }
}

fn median_duration(values: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(
        &values.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
    ))
}

/// How much lower `value` is than `baseline`, in % (negative: higher).
fn drop_percent(baseline: f64, value: f64) -> f64 {
    if baseline > 0.0 {
        (baseline - value) / baseline * 100.0
    } else {
        0.0
    }
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        value / baseline
    } else {
        0.0
    }
}

impl Report {
    fn runs_of(&self, scenario: Scenario) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |(of, _)| *of == scenario)
            .map(|(_, run)| run)
    }

    fn median_of(&self, scenario: Scenario, value: impl Fn(&Run) -> f64) -> f64 {
        let values: Vec<f64> = self.runs_of(scenario).map(value).collect();
        median(&values)
    }

    fn reads_of(&self, scenario: Scenario, kind: ReadKind) -> Vec<ReadRun> {
        self.runs_of(scenario)
            .flat_map(|run| run.reads.iter())
            .filter(|(of, _)| *of == kind)
            .map(|(_, read)| *read)
            .collect()
    }

    fn print(&self, settings: &Settings) {
        self.print_checks();
        self.print_ingest(settings);
        for kind in ReadKind::ALL {
            self.print_reads(settings, kind);
        }
        self.print_micro(settings);
    }

    fn print_checks(&self) {
        let mut table = Table::new("0. Row-level security is what each scenario says (every run)");
        let calls = thousands(self.workload.calls as u64);
        table.row(
            "`NOT (rolsuper OR rolbypassrls)` of the server's role",
            format!(
                "bypass (`{}`): false; enforced (`{}`): true",
                Scenario::Bypass.role(),
                Scenario::Enforced.role()
            ),
            "",
            "checked",
        );
        let seen = |scenario: Scenario, value: fn(&Visible) -> i64| {
            let values: Vec<String> = self
                .runs_of(scenario)
                .map(|run| thousands(u64::try_from(value(&run.visible)).unwrap_or(0)))
                .collect();
            values.join(", ")
        };
        table.row(
            "calls a transaction without `SET LOCAL` sees, after ingest (each run)",
            format!(
                "bypass: {} of {calls}; enforced: {} of {calls}",
                seen(Scenario::Bypass, |visible| visible.unscoped),
                seen(Scenario::Enforced, |visible| visible.unscoped)
            ),
            "",
            "checked",
        );
        table.row(
            "calls a transaction with the server's scope (`SET LOCAL callstore.tenant`) sees",
            format!(
                "bypass: {} of {calls}; enforced: {} of {calls}",
                seen(Scenario::Bypass, |visible| visible.scoped),
                seen(Scenario::Enforced, |visible| visible.scoped)
            ),
            "",
            "checked",
        );
        table.print();
    }

    fn print_ingest(&self, settings: &Settings) {
        let mut table = Table::new("1. Ingest throughput (IngestCalls)");
        table.row(
            "setup",
            format!(
                "{} calls a run as IngestCalls of {} calls from {} clients (one connection each), into an empty database; the server's own transactions (`db::begin` with the tenant's scope) are the same in both scenarios",
                thousands(self.workload.calls as u64),
                settings.batch,
                settings.batch_clients
            ),
            "",
            "",
        );
        for scenario in Scenario::ALL {
            let rounds: Vec<String> = self
                .runs_of(scenario)
                .map(|run| rate(run.calls_per_second))
                .collect();
            table.row(
                format!("calls/s, {}", scenario.describe()),
                format!(
                    "{} (median; rounds: {})",
                    rate(self.median_of(scenario, |run| run.calls_per_second)),
                    rounds.join(", ")
                ),
                "",
                "",
            );
        }
        table.row(
            "drop of enforced vs bypass",
            format!(
                "{:.1} %",
                drop_percent(
                    self.median_of(Scenario::Bypass, |run| run.calls_per_second),
                    self.median_of(Scenario::Enforced, |run| run.calls_per_second)
                )
            ),
            "",
            "",
        );
        let per_thousand = self.workload.calls.max(1) as f64 / 1000.0;
        for scenario in Scenario::ALL {
            table.row(
                format!(
                    "CPU-s per 1,000 calls, {} (medians): server / its Postgres backends / bench client",
                    scenario.label()
                ),
                format!(
                    "{:.3} / {:.3} / {:.3}",
                    self.median_of(scenario, |run| run.cpu.server / per_thousand),
                    self.median_of(scenario, |run| run.cpu.postgres_ours / per_thousand),
                    self.median_of(scenario, |run| run.cpu.bench / per_thousand)
                ),
                "",
                "",
            );
        }
        table.print();
    }

    fn print_reads(&self, settings: &Settings, kind: ReadKind) {
        let mut table = Table::new(kind.title());
        table.row(
            "setup",
            format!(
                "{} concurrent clients (one connection each, closed loop), {} s after {} s of warm-up, on the {} calls just ingested (after VACUUM ANALYZE)",
                settings.clients,
                settings.read_for.as_secs(),
                WARM_UP.as_secs(),
                thousands(self.workload.calls as u64)
            ),
            "",
            "",
        );
        let summary = |scenario: Scenario| {
            let runs = self.reads_of(scenario, kind);
            let rates: Vec<f64> = runs.iter().map(|run| run.requests_per_second).collect();
            let p50s: Vec<Duration> = runs.iter().map(|run| run.p50).collect();
            let p99s: Vec<Duration> = runs.iter().map(|run| run.p99).collect();
            (
                runs,
                median(&rates),
                median_duration(&p50s),
                median_duration(&p99s),
            )
        };
        let (bypass_runs, bypass_rate, bypass_p50, bypass_p99) = summary(Scenario::Bypass);
        let (enforced_runs, enforced_rate, enforced_p50, enforced_p99) =
            summary(Scenario::Enforced);
        for (scenario, runs, median_rate) in [
            (Scenario::Bypass, &bypass_runs, bypass_rate),
            (Scenario::Enforced, &enforced_runs, enforced_rate),
        ] {
            let rounds: Vec<String> = runs
                .iter()
                .map(|run| rate(run.requests_per_second))
                .collect();
            let requests: usize = runs.iter().map(|run| run.requests).sum();
            table.row(
                format!("requests/s, {}", scenario.describe()),
                format!(
                    "{} (median; rounds: {}; {} requests measured)",
                    rate(median_rate),
                    rounds.join(", "),
                    thousands(requests as u64)
                ),
                "",
                "",
            );
        }
        table.row(
            "drop of enforced vs bypass, requests/s",
            format!("{:.1} %", drop_percent(bypass_rate, enforced_rate)),
            "",
            "",
        );
        for (scenario, runs, p50, p99) in [
            (Scenario::Bypass, &bypass_runs, bypass_p50, bypass_p99),
            (
                Scenario::Enforced,
                &enforced_runs,
                enforced_p50,
                enforced_p99,
            ),
        ] {
            let rounds: Vec<String> = runs
                .iter()
                .map(|run| format!("{} / {}", millis(run.p50), millis(run.p99)))
                .collect();
            table.row(
                format!("p50 / p99, {}", scenario.label()),
                format!(
                    "{} / {} (medians; rounds: {})",
                    millis(p50),
                    millis(p99),
                    rounds.join(", ")
                ),
                "",
                "",
            );
        }
        table.row(
            "enforced ÷ bypass, p50 / p99",
            format!(
                "{:.2}× / {:.2}×",
                ratio(enforced_p50.as_secs_f64(), bypass_p50.as_secs_f64()),
                ratio(enforced_p99.as_secs_f64(), bypass_p99.as_secs_f64())
            ),
            "",
            "",
        );
        table.print();
    }

    fn print_micro(&self, settings: &Settings) {
        let mut table = Table::new("3. One primary-key read in-process, on the enforced database");
        let micros: Vec<MicroRun> = self
            .runs_of(Scenario::Enforced)
            .filter_map(|run| run.micro)
            .collect();
        table.row(
            "setup",
            format!(
                "`{MICRO_READ}` of a random stored call, one connection per variant, set up like the server's (`plan_cache_mode = force_custom_plan`); the server stopped; {} interleaved slices of each variant, {:.1} s of each in all, after a warm-up; the median slice of each run, then the median of the runs ({} reads in all)",
                MICRO_SLICES,
                settings.micro_for.as_secs_f64(),
                thousands(micros.iter().map(|run| run.reads).sum())
            ),
            "",
            "",
        );
        let column = |value: fn(&MicroRun) -> f64| {
            let values: Vec<f64> = micros.iter().map(value).collect();
            let rounds: Vec<String> = values.iter().map(|value| format!("{value:.1}")).collect();
            (median(&values), rounds.join(", "))
        };
        let (superuser, superuser_rounds) = column(|run| run.superuser);
        let (autocommit, autocommit_rounds) = column(|run| run.autocommit);
        let (transaction, transaction_rounds) = column(|run| run.transaction);
        table.row(
            "(0) autocommit, as the admin role (superuser: no policy), µs/read",
            format!("{superuser:.1} µs (rounds: {superuser_rounds})"),
            "",
            "",
        );
        table.row(
            "(i) autocommit, as the enforced role (tenant set for the session: the policy applies), µs/read",
            format!("{autocommit:.1} µs (rounds: {autocommit_rounds})"),
            "",
            "",
        );
        table.row(
            "(ii) `db::begin(&pool, Scope::Tenant(..))` + read + drop, pool of 1 (what the server does), µs/read",
            format!("{transaction:.1} µs (rounds: {transaction_rounds})"),
            "",
            "",
        );
        table.row(
            "(ii) − (i): the transaction a read now opens (`BEGIN; SET LOCAL …` and the ROLLBACK)",
            format!(
                "{:+.1} µs ({:.2}×)",
                transaction - autocommit,
                ratio(transaction, autocommit)
            ),
            "",
            "",
        );
        table.row(
            "(i) − (0): the policy in the statement",
            format!(
                "{:+.1} µs ({:.2}×)",
                autocommit - superuser,
                ratio(autocommit, superuser)
            ),
            "",
            "",
        );
        table.row(
            "(ii) − (0): in all",
            format!(
                "{:+.1} µs ({:.2}×)",
                transaction - superuser,
                ratio(transaction, superuser)
            ),
            "",
            "",
        );
        table.print();
    }
}

/// The error, then the end of the server's log (kept on disk for a failed run).
fn with_server_log(error: anyhow::Error, server: &ServerProcess) -> anyhow::Error {
    anyhow::anyhow!(
        "{error:#}\nthe server's log ({}) ends with:\n{}",
        server.log_path().display(),
        server.log_tail()
    )
}
