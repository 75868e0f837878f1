//! Ingest benchmark: how fast the release server stores realistic calls, against what Postgres
//! itself can load with COPY, and where the CPU goes.
//!
//! ```sh
//! cargo bench --bench ingest                       # full run (50,000 + 20,000 calls)
//! cargo bench --bench ingest -- --quick            # smoke run
//! cargo bench --bench ingest -- --scenarios batch,copy --calls 100000
//! ```
//!
//! Scenarios, each against a fresh database and a fresh `callstore serve` process:
//! 1. `batch`: `IngestCalls` requests of `--batch` calls from `--batch-clients` clients;
//! 2. `copy`: the rows scenario 1 wrote, dumped and loaded with `COPY FROM` into a fresh
//!    migrated database (the ceiling the write path is compared with);
//! 3. `single`: one call per request from `--single-clients` clients, durable commits.
//!
//! Results go to stdout as markdown tables, progress to stderr.

mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use callstore::api::convert::{CallLimits, call_from_proto};
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::{IngestCallsRequest, IngestOutcome};
use clap::{Parser, ValueEnum};
use prost::Message as _;
use sqlx::{AssertSqlSafe, Connection as _, PgPool};
use tonic::transport::Channel;

use support::cpu::{CpuSnapshot, CpuSplit};
use support::generator::{BENCH_TENANT, Generator, GeneratorConfig, check_invariants};
use support::header::RunHeader;
use support::report::{
    Table, bytes, latency_summary, per_second, rate, seconds, thousands, verdict,
};
use support::server::{
    BenchDatabase, DEFAULT_ADMIN_URL, Databases, Memory, ServerProcess, database_marker,
    server_binary, tenant_request,
};

/// Target of the batch scenario, calls per second.
const TARGET_BATCH_CALLS_PER_SECOND: f64 = 8_000.0;
/// Target of ingest rows/s against COPY rows/s.
const TARGET_COPY_RATIO: f64 = 0.5;
/// Target of the single-call scenario, calls per second.
const TARGET_SINGLE_CALLS_PER_SECOND: f64 = 5_000.0;
/// Calls converted with the server's own validation before anything is measured.
const SANITY_CALLS: u64 = 1_000;
/// Sizes of `--quick`.
const QUICK_CALLS: usize = 2_000;
const QUICK_SINGLE_CALLS: usize = 2_000;
/// The tables whose rows a call writes: what "rows" counts.
const CALL_TABLES: &[&str] = &["calls", "turns", "call_tags", "feed_events"];
/// The catalog tables calls create rows in, reported for information.
const CATALOG_TABLES: &[&str] = &["tenants", "tasks", "tags", "tag_groups", "levels"];
/// COPY data is sent in pieces of about this size (one CopyData message each).
const COPY_SEND_BYTES: usize = 1 << 20;
/// The largest message a tonic server decodes unless configured otherwise.
const TONIC_DEFAULT_MESSAGE_LIMIT: usize = 4 << 20;
/// How often progress is written to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "ingest",
    about = "Ingest benchmark of callstore: batch, COPY baseline, single-call"
)]
struct Args {
    /// Calls of the batch scenario (default 50,000; 2,000 with --quick).
    #[arg(long)]
    calls: Option<usize>,
    /// Calls per IngestCalls request in the batch scenario.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent clients of the batch scenario, each on its own connection.
    #[arg(long, default_value_t = 2)]
    batch_clients: usize,
    /// Calls of the single-call scenario (default 20,000; 2,000 with --quick).
    #[arg(long)]
    single_calls: Option<usize>,
    /// Concurrent clients of the single-call scenario.
    #[arg(long, default_value_t = 64)]
    single_clients: usize,
    /// HTTP/2 connections the single-call clients share (default: one per client).
    #[arg(long)]
    single_channels: Option<usize>,
    /// Scenarios to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "batch,copy,single")]
    scenarios: Vec<Scenario>,
    /// Small sizes, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Seed of the generated calls (the same seed sends the same calls).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Days the calls' dial times are spread over.
    #[arg(long, default_value_t = 30)]
    window_days: u32,
    /// Tasks the calls belong to.
    #[arg(long, default_value_t = 8)]
    tasks: u32,
    /// Data format of the COPY baseline.
    #[arg(long, value_enum, default_value = "binary")]
    copy_format: CopyFormat,
    /// A Postgres URL whose role may create databases; each scenario gets a fresh one.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_ADMIN_URL, hide_env_values = true)]
    database_url: String,
    /// Print generated call INDEX (as the gRPC client sends it) and exit.
    #[arg(long, value_name = "INDEX")]
    show_call: Option<u64>,
    /// Passed by `cargo bench`. Without it (as under `cargo test --benches`) the run is --quick.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Batch,
    Copy,
    Single,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CopyFormat {
    Binary,
    Text,
}

impl CopyFormat {
    fn sql(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Text => "text",
        }
    }
}

/// What the scenarios share.
struct Bench {
    args: Args,
    calls: usize,
    single_calls: usize,
    generator: Generator,
    databases: Databases,
}

fn main() -> ExitCode {
    support::run_bench("ingest", run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.batch >= 1, "--batch must be at least 1");
    ensure!(
        args.batch_clients >= 1,
        "--batch-clients must be at least 1"
    );
    ensure!(
        args.single_clients >= 1,
        "--single-clients must be at least 1"
    );
    ensure!(
        args.single_channels != Some(0),
        "--single-channels must be at least 1"
    );
    // Like criterion: `cargo bench` passes --bench; run any other way (`cargo test --benches`)
    // it is a smoke run.
    let quick = args.quick || !args.bench;
    let calls = args
        .calls
        .unwrap_or(if quick { QUICK_CALLS } else { 50_000 });
    let single_calls = args
        .single_calls
        .unwrap_or(if quick { QUICK_SINGLE_CALLS } else { 20_000 });
    let generator = Generator::new(GeneratorConfig {
        seed: args.seed,
        window_days: args.window_days,
        tasks: args.tasks,
        ..GeneratorConfig::default()
    });
    if let Some(index) = args.show_call {
        println!("{:#?}", generator.call(index));
        return Ok(());
    }

    sanity_check(&generator)?;
    let databases = Databases::connect(&args.database_url).await?;
    let bench = Bench {
        args,
        calls,
        single_calls,
        generator,
        databases,
    };
    print_header(&bench).await?;

    let outcome = run_scenarios(&bench).await;
    bench.databases.drop_all().await;
    outcome
}

async fn run_scenarios(bench: &Bench) -> anyhow::Result<()> {
    let scenarios = &bench.args.scenarios;
    if scenarios.contains(&Scenario::Batch) || scenarios.contains(&Scenario::Copy) {
        if !scenarios.contains(&Scenario::Batch) {
            eprintln!("copy: the baseline loads what the batch ingest wrote, so that runs first");
        }
        let (report, database) = batch_ingest(bench).await?;
        report.print();
        if scenarios.contains(&Scenario::Copy) {
            let copy = copy_baseline(bench, &database, &report).await?;
            copy.print(&report);
        }
        bench.databases.drop_database(&database.name).await?;
    }
    if scenarios.contains(&Scenario::Single) {
        single_ingest(bench).await?.print();
    }
    Ok(())
}

/// Converts the first calls with the server's own validation, so a generator bug shows up as
/// a clear message here rather than as rejected items in the middle of a measurement.
fn sanity_check(generator: &Generator) -> anyhow::Result<()> {
    let limits = CallLimits::default();
    let mut bytes = 0;
    let mut turns = 0;
    let mut answered = 0;
    let mut source_ids = std::collections::HashSet::new();
    for index in 0..SANITY_CALLS {
        let record = generator.call(index);
        bytes += record.encoded_len();
        turns += record.turns.len();
        let again = generator.call(index);
        ensure!(
            record == again,
            "the generator is not a pure function of (seed, index): call {index} differs"
        );
        if let Err(problem) = check_invariants(&record) {
            bail!("generated call {index} is not realistic: {problem}");
        }
        ensure!(
            source_ids.insert(record.source_call_id.clone()),
            "generated call {index} repeats source call id {}",
            record.source_call_id
        );
        if record.outcome == callstore::proto::CallOutcome::Answered as i32 {
            answered += 1;
        }
        if let Err(violations) = call_from_proto(record, &format!("calls[{index}]"), &limits) {
            let listed: Vec<String> = violations
                .iter()
                .map(|violation| format!("{}: {}", violation.field, violation.description))
                .collect();
            bail!(
                "generated call {index} fails the server's validation:\n  {}",
                listed.join("\n  ")
            );
        }
    }
    // Most calls are answered, as in production; a generator that drifted would change what
    // the numbers mean.
    let share = f64::from(answered) / SANITY_CALLS as f64;
    ensure!(
        (0.6..=0.8).contains(&share),
        "{:.0}% of the generated calls are answered, expected 60-80%",
        share * 100.0
    );
    eprintln!(
        "sanity: {SANITY_CALLS} generated calls pass validation ({:.0}% answered, {} bytes and {:.1} turns a call on average)",
        share * 100.0,
        bytes / SANITY_CALLS as usize,
        turns as f64 / SANITY_CALLS as f64
    );
    Ok(())
}

async fn print_header(bench: &Bench) -> anyhow::Result<()> {
    let args = &bench.args;
    let header = RunHeader::read("ingest", &bench.databases).await?;
    let (cores, cpu_model) = (header.cores, &header.cpu_model);
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or_else(|| "unknown".to_owned(), |kib| bytes(kib * 1024));

    header.print_intro("callstore ingest benchmark");
    println!(
        "- machine: {cores} CPUs (nproc), {cpu_model}, {ram} RAM, {}",
        std::env::consts::ARCH
    );
    header.print_provenance();
    println!("- server: `{}` (release)", server_binary().display());
    println!(
        "- data: seed {}, {} tasks, dial times over {} days, tenant `{BENCH_TENANT}`; batch {} calls, single {} calls",
        args.seed,
        args.tasks,
        args.window_days,
        thousands(bench.calls as u64),
        thousands(bench.single_calls as u64),
    );
    println!();
    Ok(())
}

/// What the batch scenario measured.
struct BatchReport {
    calls: usize,
    /// Request latencies, sorted.
    latencies: Vec<Duration>,
    batch: usize,
    clients: usize,
    wall: Duration,
    request_bytes: usize,
    outcomes: BTreeMap<String, usize>,
    rows: BTreeMap<&'static str, i64>,
    catalog: BTreeMap<&'static str, i64>,
    cpu: CpuSplit,
    idle: Memory,
    peak: Memory,
    log_lines: usize,
}

impl BatchReport {
    fn rows_total(&self) -> i64 {
        self.rows.values().sum()
    }

    fn calls_per_second(&self) -> f64 {
        per_second(self.calls as f64, self.wall)
    }

    fn rows_per_second(&self) -> f64 {
        per_second(self.rows_total() as f64, self.wall)
    }

    fn print(&self) {
        let calls_per_second = self.calls_per_second();
        let mut table = Table::new("1. Batch ingest (IngestCalls)");
        table.row(
            "setup",
            format!(
                "{} calls, {} a request, {} clients (one connection each)",
                thousands(self.calls as u64),
                self.batch,
                self.clients
            ),
            "",
            "",
        );
        table.row(
            "request size",
            format!(
                "{} on average ({} a call)",
                bytes((self.request_bytes / self.calls.div_ceil(self.batch).max(1)) as u64),
                bytes((self.request_bytes / self.calls.max(1)) as u64)
            ),
            "",
            "",
        );
        table.row("wall time", seconds(self.wall), "", "");
        table.row(
            "calls/s",
            rate(calls_per_second),
            format!("≥ {}", rate(TARGET_BATCH_CALLS_PER_SECOND)),
            verdict(calls_per_second >= TARGET_BATCH_CALLS_PER_SECOND),
        );
        table.row(
            "rows written",
            format!(
                "{} ({})",
                thousands(self.rows_total() as u64),
                describe_counts(&self.rows)
            ),
            "",
            "",
        );
        table.row("rows/s", rate(self.rows_per_second()), "", "");
        table.row(
            "request latency p50 / p99 / max",
            latency_summary(&self.latencies),
            "",
            "",
        );
        table.row("catalog rows", describe_counts(&self.catalog), "", "");
        table.row(
            "outcomes",
            describe_counts(&self.outcomes),
            "all CREATED",
            verdict(true),
        );
        memory_rows(&mut table, self.idle, self.peak, self.log_lines);
        cpu_rows(&mut table, &self.cpu);
        table.print();
    }
}

async fn batch_ingest(bench: &Bench) -> anyhow::Result<(BatchReport, BenchDatabase)> {
    let args = &bench.args;
    eprintln!("batch: generating {} calls", thousands(bench.calls as u64));
    let requests: VecDeque<IngestCallsRequest> = (0..bench.calls)
        .step_by(args.batch)
        .map(|first| IngestCallsRequest {
            calls: (first..(first + args.batch).min(bench.calls))
                .map(|index| bench.generator.call(index as u64))
                .collect(),
        })
        .collect();
    let request_bytes: usize = requests.iter().map(|request| request.encoded_len()).sum();
    let largest = requests
        .iter()
        .map(|request| request.encoded_len())
        .max()
        .unwrap_or_default();
    if largest > TONIC_DEFAULT_MESSAGE_LIMIT {
        eprintln!(
            "batch: warning: requests of up to {} exceed tonic's default 4 MiB message limit; \
             the server rejects them unless it raised its limit (use a smaller --batch)",
            bytes(largest as u64)
        );
    }

    let database = bench.databases.create().await?;
    let server = ServerProcess::start(&server_binary(), &database.url()).await?;
    let idle = server.memory()?;
    eprintln!(
        "batch: server ready (pid {}, {}); {} requests from {} clients",
        server.pid(),
        database.name,
        requests.len(),
        args.batch_clients
    );

    let mut clients = Vec::with_capacity(args.batch_clients);
    for _ in 0..args.batch_clients {
        clients.push(IngestServiceClient::new(server.channel().await?));
    }
    let load = run_load("batch", clients, requests, bench.calls, server.pid()).await;
    let load = match load {
        Ok(load) => load,
        Err(error) => return Err(with_server_log(error, &server)),
    };
    let peak = server.memory()?;
    let log_lines = server.stop().await?;

    check_outcomes("batch", &load.outcomes, bench.calls, &load.first_problem)?;
    let pool = database.pool().await?;
    let rows = count_rows(&pool, CALL_TABLES).await?;
    let catalog = count_rows(&pool, CATALOG_TABLES).await?;
    pool.close().await;
    let stored_calls = rows.get("calls").copied().unwrap_or_default();
    ensure!(
        usize::try_from(stored_calls).ok() == Some(bench.calls),
        "batch: the database holds {stored_calls} calls of tenant {BENCH_TENANT}, expected {}",
        bench.calls
    );

    Ok((
        BatchReport {
            calls: bench.calls,
            latencies: {
                let mut latencies = load.latencies;
                latencies.sort_unstable();
                latencies
            },
            batch: args.batch,
            clients: args.batch_clients,
            wall: load.wall,
            request_bytes,
            outcomes: load.outcomes,
            rows,
            catalog,
            cpu: load.cpu,
            idle,
            peak,
            log_lines,
        },
        database,
    ))
}

/// What the COPY baseline measured.
struct CopyReport {
    format: CopyFormat,
    wall: Duration,
    dump_bytes: usize,
    rows: BTreeMap<&'static str, i64>,
    other_rows: BTreeMap<String, u64>,
    cpu: CpuSplit,
}

impl CopyReport {
    fn rows_total(&self) -> i64 {
        self.rows.values().sum()
    }

    fn print(&self, batch: &BatchReport) {
        let copy_rows_per_second = per_second(self.rows_total() as f64, self.wall);
        let ratio = if copy_rows_per_second > 0.0 {
            batch.rows_per_second() / copy_rows_per_second
        } else {
            0.0
        };
        let batch_calls_per_second = batch.calls_per_second();
        let calls = self.rows.get("calls").copied().unwrap_or_default();
        let mut table = Table::new("2. COPY baseline of the same rows");
        table.row(
            "setup",
            format!(
                "`COPY … FROM STDIN (FORMAT {})` of the rows scenario 1 wrote ({} dumped), into a fresh migrated database, one transaction, committed",
                self.format.sql(),
                bytes(self.dump_bytes as u64)
            ),
            "",
            "",
        );
        table.row("wall time (COPY FROM + commit)", seconds(self.wall), "", "");
        table.row("server", "none: Postgres alone (no RSS to report)", "", "");
        table.row(
            "rows loaded",
            format!(
                "{} ({}); also {}",
                thousands(self.rows_total() as u64),
                describe_counts(&self.rows),
                describe_counts(&self.other_rows)
            ),
            "",
            "",
        );
        table.row("COPY rows/s", rate(copy_rows_per_second), "", "");
        table.row(
            "COPY calls/s (equivalent)",
            rate(per_second(calls as f64, self.wall)),
            "",
            "",
        );
        table.row(
            "ingest rows/s ÷ COPY rows/s",
            format!("{ratio:.2}"),
            format!("≥ {TARGET_COPY_RATIO}"),
            verdict(ratio >= TARGET_COPY_RATIO),
        );
        table.row(
            "ingest calls/s (scenario 1)",
            rate(batch_calls_per_second),
            format!("≥ {}", rate(TARGET_BATCH_CALLS_PER_SECOND)),
            verdict(batch_calls_per_second >= TARGET_BATCH_CALLS_PER_SECOND),
        );
        cpu_rows(&mut table, &self.cpu);
        table.print();
    }
}

/// A table of the schema with what COPY needs to know about it.
struct CopyTable {
    name: String,
    /// Columns COPY can write (generated columns excluded), in table order, quoted.
    columns: String,
    rows: i64,
    data: Vec<Vec<u8>>,
}

async fn copy_baseline(
    bench: &Bench,
    source: &BenchDatabase,
    batch: &BatchReport,
) -> anyhow::Result<CopyReport> {
    let format = bench.args.copy_format;
    let source_pool = source.pool().await?;
    let mut tables = tables_in_load_order(&source_pool).await?;

    // Dump every table's rows of the tenant; only the load below is timed.
    let mut dump_bytes = 0;
    {
        let mut connection = source_pool.acquire().await?;
        for table in &mut tables {
            let (rows,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT count(*) FROM {} WHERE tenant_id = $1",
                table.name
            )))
            .bind(BENCH_TENANT)
            .fetch_one(&mut *connection)
            .await?;
            table.rows = rows;
            if rows == 0 {
                continue;
            }
            let statement = format!(
                "COPY (SELECT {} FROM {} WHERE tenant_id = '{BENCH_TENANT}') TO STDOUT WITH (FORMAT {})",
                table.columns,
                table.name,
                format.sql()
            );
            let mut stream = connection.copy_out_raw(&statement).await?;
            let mut piece = Vec::with_capacity(COPY_SEND_BYTES);
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                let chunk = chunk?;
                dump_bytes += chunk.len();
                piece.extend_from_slice(&chunk);
                if piece.len() >= COPY_SEND_BYTES {
                    table.data.push(std::mem::take(&mut piece));
                }
            }
            if !piece.is_empty() {
                table.data.push(piece);
            }
        }
    }
    source_pool.close().await;
    for (name, expected) in &batch.rows {
        let dumped = tables
            .iter()
            .find(|table| table.name == *name)
            .map_or(0, |table| table.rows);
        ensure!(
            dumped == *expected,
            "copy: {name} has {dumped} rows to dump, the batch counted {expected}"
        );
    }

    let target = bench.databases.create().await?;
    let target_pool = target.pool().await?;
    callstore::db::migrate(&target_pool)
        .await
        .context("migrating the COPY target database")?;
    eprintln!(
        "copy: loading {} of {} rows into {}",
        bytes(dump_bytes as u64),
        thousands(tables.iter().map(|table| table.rows as u64).sum()),
        target.name
    );

    let mut connection = target_pool.acquire().await?;
    let before = CpuSnapshot::take(None, &database_marker())?;
    let mut loaded: Vec<(String, u64)> = Vec::new();
    {
        let mut transaction = connection.begin().await?;
        for table in tables.iter().filter(|table| table.rows > 0) {
            let statement = format!(
                "COPY {} ({}) FROM STDIN WITH (FORMAT {})",
                table.name,
                table.columns,
                format.sql()
            );
            let mut copy = transaction.copy_in_raw(&statement).await?;
            for piece in &table.data {
                copy.send(piece.as_slice()).await?;
            }
            let rows = copy
                .finish()
                .await
                .with_context(|| format!("COPY FROM into {}", table.name))?;
            loaded.push((table.name.clone(), rows));
        }
        transaction.commit().await?;
    }
    let after = CpuSnapshot::take(None, &database_marker())?;
    drop(connection);
    target_pool.close().await;
    bench.databases.drop_database(&target.name).await?;

    let mut rows = BTreeMap::new();
    let mut other_rows = BTreeMap::new();
    for (name, count) in loaded {
        let expected = tables
            .iter()
            .find(|table| table.name == name)
            .map_or(0, |table| table.rows);
        ensure!(
            i64::try_from(count).ok() == Some(expected),
            "copy: loaded {count} rows into {name}, dumped {expected}"
        );
        match CALL_TABLES.iter().find(|table| **table == name) {
            Some(table) => {
                rows.insert(*table, expected);
            }
            None => {
                other_rows.insert(name, count);
            }
        }
    }
    let cpu = before.until(&after);
    Ok(CopyReport {
        format,
        wall: cpu.wall,
        dump_bytes,
        rows,
        other_rows,
        cpu,
    })
}

/// The schema's tables with a `tenant_id`, parents before children (foreign keys), so that a
/// load in this order satisfies every reference as it goes. Read from the catalog rather than
/// listed here, so that tables a later migration adds are copied too.
async fn tables_in_load_order(pool: &PgPool) -> anyhow::Result<Vec<CopyTable>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
           AND c.relname <> '_sqlx_migrations' AND NOT c.relispartition
           AND EXISTS (SELECT 1 FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
         ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT child.relname::text, parent.relname::text FROM pg_constraint k
         JOIN pg_class child ON child.oid = k.conrelid
         JOIN pg_class parent ON parent.oid = k.confrelid
         JOIN pg_namespace n ON n.oid = child.relnamespace
         WHERE k.contype = 'f' AND n.nspname = current_schema() AND k.conrelid <> k.confrelid",
    )
    .fetch_all(pool)
    .await?;

    // Kahn's algorithm over the foreign keys, ties in name order.
    let mut order: Vec<String> = Vec::with_capacity(names.len());
    let mut pending: Vec<String> = names.clone();
    while !pending.is_empty() {
        let ready = pending.iter().position(|table| {
            references.iter().all(|(child, parent)| {
                child != table || !pending.contains(parent) || !names.contains(parent)
            })
        });
        let Some(position) = ready else {
            bail!("copy: the foreign keys between {pending:?} form a cycle");
        };
        order.push(pending.remove(position));
    }

    let mut tables = Vec::with_capacity(order.len());
    for name in order {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(attname) FROM pg_attribute
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
             ORDER BY attnum",
        )
        .bind(&name)
        .fetch_all(pool)
        .await?;
        tables.push(CopyTable {
            name,
            columns: columns.join(", "),
            rows: 0,
            data: Vec::new(),
        });
    }
    Ok(tables)
}

/// What the single-call scenario measured.
struct SingleReport {
    calls: usize,
    clients: usize,
    channels: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    outcomes: BTreeMap<String, usize>,
    rows: BTreeMap<&'static str, i64>,
    cpu: CpuSplit,
    idle: Memory,
    peak: Memory,
    log_lines: usize,
}

impl SingleReport {
    fn print(&self) {
        let calls_per_second = per_second(self.calls as f64, self.wall);
        let mut table = Table::new("3. Single-call ingest (one call per IngestCalls request)");
        let connections = if self.channels == self.clients {
            "one HTTP/2 connection each".to_owned()
        } else {
            format!("sharing {} HTTP/2 connections", self.channels)
        };
        table.row(
            "setup",
            format!(
                "{} calls, {} clients {connections}, durable commits (server default)",
                thousands(self.calls as u64),
                self.clients
            ),
            "",
            "",
        );
        table.row("wall time", seconds(self.wall), "", "");
        table.row(
            "calls/s",
            rate(calls_per_second),
            format!("≥ {}", rate(TARGET_SINGLE_CALLS_PER_SECOND)),
            verdict(calls_per_second >= TARGET_SINGLE_CALLS_PER_SECOND),
        );
        table.row(
            "rows written",
            format!(
                "{} ({})",
                thousands(self.rows.values().sum::<i64>() as u64),
                describe_counts(&self.rows)
            ),
            "",
            "",
        );
        table.row(
            "request latency p50 / p99 / max",
            latency_summary(&self.latencies),
            "",
            "",
        );
        table.row(
            "outcomes",
            describe_counts(&self.outcomes),
            "all CREATED",
            verdict(true),
        );
        memory_rows(&mut table, self.idle, self.peak, self.log_lines);
        cpu_rows(&mut table, &self.cpu);
        table.print();
    }
}

async fn single_ingest(bench: &Bench) -> anyhow::Result<SingleReport> {
    let args = &bench.args;
    let channels = args.single_channels.unwrap_or(args.single_clients);
    eprintln!(
        "single: generating {} calls",
        thousands(bench.single_calls as u64)
    );
    let requests: VecDeque<IngestCallsRequest> = (0..bench.single_calls)
        .map(|index| IngestCallsRequest {
            calls: vec![bench.generator.call(index as u64)],
        })
        .collect();

    let database = bench.databases.create().await?;
    let server = ServerProcess::start(&server_binary(), &database.url()).await?;
    let idle = server.memory()?;
    eprintln!(
        "single: server ready (pid {}, {}); {} clients on {channels} connections",
        server.pid(),
        database.name,
        args.single_clients
    );
    let mut shared = Vec::with_capacity(channels);
    for _ in 0..channels {
        shared.push(server.channel().await?);
    }
    let clients = (0..args.single_clients)
        .map(|client| IngestServiceClient::new(shared[client % channels].clone()))
        .collect();
    let load = run_load(
        "single",
        clients,
        requests,
        bench.single_calls,
        server.pid(),
    )
    .await;
    let mut load = match load {
        Ok(load) => load,
        Err(error) => return Err(with_server_log(error, &server)),
    };
    let peak = server.memory()?;
    let log_lines = server.stop().await?;

    check_outcomes(
        "single",
        &load.outcomes,
        bench.single_calls,
        &load.first_problem,
    )?;
    let pool = database.pool().await?;
    let rows = count_rows(&pool, CALL_TABLES).await?;
    pool.close().await;
    bench.databases.drop_database(&database.name).await?;
    let stored_calls = rows.get("calls").copied().unwrap_or_default();
    ensure!(
        usize::try_from(stored_calls).ok() == Some(bench.single_calls),
        "single: the database holds {stored_calls} calls, expected {}",
        bench.single_calls
    );

    load.latencies.sort_unstable();
    Ok(SingleReport {
        calls: bench.single_calls,
        clients: args.single_clients,
        channels,
        wall: load.wall,
        latencies: load.latencies,
        outcomes: load.outcomes,
        rows,
        cpu: load.cpu,
        idle,
        peak,
        log_lines,
    })
}

/// What a load of requests did.
struct Load {
    wall: Duration,
    latencies: Vec<Duration>,
    outcomes: BTreeMap<String, usize>,
    /// The first item that was not CREATED, described.
    first_problem: Option<String>,
    cpu: CpuSplit,
}

/// Sends every request, the clients taking the next one from a shared queue as soon as their
/// previous request is answered (closed loop), and tallies the per-item outcomes.
async fn run_load(
    label: &'static str,
    clients: Vec<IngestServiceClient<Channel>>,
    requests: VecDeque<IngestCallsRequest>,
    calls: usize,
    server_pid: u32,
) -> anyhow::Result<Load> {
    let queue = Arc::new(Mutex::new(requests));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = tokio::spawn(report_progress(label, Arc::clone(&done), calls));

    let before = CpuSnapshot::take(Some(server_pid), &database_marker())?;
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        let queue = Arc::clone(&queue);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut outcomes: HashMap<i32, usize> = HashMap::new();
            let mut first_problem = None;
            loop {
                let next = queue.lock().ok().and_then(|mut queue| queue.pop_front());
                let Some(request) = next else { break };
                let sent = request.calls.len();
                let first_id = request
                    .calls
                    .first()
                    .map(|call| call.source_call_id.clone())
                    .unwrap_or_default();
                let started = Instant::now();
                let response = client
                    .ingest_calls(tenant_request(BENCH_TENANT, request))
                    .await
                    .with_context(|| {
                        format!("{label}: IngestCalls failed (first call {first_id})")
                    })?
                    .into_inner();
                latencies.push(started.elapsed());
                ensure!(
                    response.results.len() == sent,
                    "{label}: {} results for {sent} calls",
                    response.results.len()
                );
                for result in response.results {
                    if result.outcome != IngestOutcome::Created as i32 && first_problem.is_none() {
                        first_problem = Some(format!(
                            "{} is {}: {:?}",
                            result.source_id,
                            outcome_name(result.outcome),
                            result.error
                        ));
                    }
                    *outcomes.entry(result.outcome).or_default() += 1;
                }
                done.fetch_add(sent, Ordering::Relaxed);
            }
            anyhow::Ok((latencies, outcomes, first_problem))
        }));
    }

    let mut latencies = Vec::new();
    let mut outcomes = BTreeMap::new();
    let mut first_problem = None;
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok((client_latencies, client_outcomes, problem))) => {
                latencies.extend(client_latencies);
                for (outcome, count) in client_outcomes {
                    *outcomes.entry(outcome_name(outcome)).or_default() += count;
                }
                first_problem = first_problem.or(problem);
            }
            Ok(Err(error)) => {
                // The others stop as the queue is drained; keep the first error.
                if let Ok(mut queue) = queue.lock() {
                    queue.clear();
                }
                failure.get_or_insert(error);
            }
            Err(error) => {
                failure.get_or_insert(anyhow::anyhow!("{label}: a client task failed: {error}"));
            }
        }
    }
    progress.abort();
    let after = CpuSnapshot::take(Some(server_pid), &database_marker())?;
    if let Some(error) = failure {
        return Err(error);
    }
    let cpu = before.until(&after);
    Ok(Load {
        wall: cpu.wall,
        latencies,
        outcomes,
        first_problem,
        cpu,
    })
}

async fn report_progress(label: &'static str, done: Arc<AtomicUsize>, total: usize) {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let done = done.load(Ordering::Relaxed);
        eprintln!(
            "{label}: {} / {} calls, {} calls/s so far",
            thousands(done as u64),
            thousands(total as u64),
            rate(per_second(done as f64, started.elapsed()))
        );
    }
}

/// Every call must have been CREATED: anything else means the numbers measure something else
/// (rejections are cheap, duplicates are no-ops), so the run stops loudly.
fn check_outcomes(
    label: &str,
    outcomes: &BTreeMap<String, usize>,
    calls: usize,
    first_problem: &Option<String>,
) -> anyhow::Result<()> {
    let created = outcomes.get("CREATED").copied().unwrap_or_default();
    if created != calls || outcomes.len() != 1 {
        bail!(
            "{label}: expected {calls} CREATED results, got {}; first: {}",
            describe_counts(outcomes),
            first_problem.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

fn outcome_name(outcome: i32) -> String {
    IngestOutcome::try_from(outcome).map_or_else(
        |_| format!("UNKNOWN({outcome})"),
        |known| {
            known
                .as_str_name()
                .trim_start_matches("INGEST_OUTCOME_")
                .to_owned()
        },
    )
}

/// The error, then the end of the server's log (kept on disk for a failed run).
fn with_server_log(error: anyhow::Error, server: &ServerProcess) -> anyhow::Error {
    anyhow::anyhow!(
        "{error:#}\nthe server's log ({}) ends with:\n{}",
        server.log_path().display(),
        server.log_tail()
    )
}

/// Rows of the bench tenant in each table.
async fn count_rows(
    pool: &PgPool,
    tables: &[&'static str],
) -> anyhow::Result<BTreeMap<&'static str, i64>> {
    let mut counts = BTreeMap::new();
    for table in tables {
        let (count,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        )))
        .bind(BENCH_TENANT)
        .fetch_one(pool)
        .await
        .with_context(|| format!("counting {table}"))?;
        counts.insert(*table, count);
    }
    Ok(counts)
}

fn memory_rows(table: &mut Table, idle: Memory, peak: Memory, log_lines: usize) {
    table.row("server RSS idle after start", bytes(idle.rss), "", "");
    table.row("server peak RSS (VmHWM)", bytes(peak.peak), "", "");
    if log_lines > 0 {
        table.row(
            "server warnings/errors logged",
            log_lines.to_string(),
            "",
            "",
        );
    }
}

fn cpu_rows(table: &mut Table, cpu: &CpuSplit) {
    table.row(
        "CPU-s: server / bench client / postgres+other",
        format!("{:.2} / {:.2} / {:.2}", cpu.server, cpu.bench, cpu.other),
        "",
        "",
    );
    support::cpu::machine_rows(table, cpu);
}

fn describe_counts<K: std::fmt::Display, V: Copy + TryInto<u64>>(
    counts: &BTreeMap<K, V>,
) -> String {
    counts
        .iter()
        .map(|(name, count)| {
            let count: u64 = (*count).try_into().unwrap_or_default();
            format!("{name} {}", thousands(count))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
