//! Query benchmark: ListCalls, GetCall and GetTaskStats of the release server on a task of
//! 1,000,000 generated calls, each against a baseline measured in the same run.
//!
//! ```sh
//! cargo bench --bench query                        # full run: 1,000,000 calls (loads once)
//! cargo bench --bench query -- --quick             # smoke run: 20,000 calls, short measurements
//! cargo bench --bench query -- --calls 200000 --seconds 5
//! ```
//!
//! The calls are loaded through the API (`IngestCalls`) into the database `--database`, which is
//! kept: a later run with the same generator settings loads only what is missing (`--fresh`
//! starts over). Then, with `--clients` concurrent clients for `--seconds` each:
//! 1. ListCalls, a page of 50 of the task, for each filter alone and three typical combinations:
//!    p50/p99 through gRPC, against the same SQL run directly against Postgres (the server's
//!    own `db::calls_list` and `db::calls_read` functions, called in this process);
//! 2. the page 10,000 deep (a keyset token 500,000 calls in) against page 1;
//! 3. GetCall requests/s against `pgbench -S -M prepared` transactions/s over TCP;
//! 4. GetTaskStats of the whole task, by day, and of one week by hour.
//!
//! A list query that misses its target gets its `EXPLAIN (ANALYZE, BUFFERS)` printed.
//! Results go to stdout as markdown tables, progress to stderr.

mod support;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use callstore::api::page::{Fingerprint, encode_token};
use callstore::api::query_calls::list_query;
use callstore::db::calls_read::{CallEmbed, load_calls};
use callstore::db::{PoolSettings, calls_list, lazy_pool};
use callstore::domain::TenantId;
use callstore::domain::call_query::{CallListQuery, CallPosition};
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::{
    CallFilter, CallOutcome, GetCallRequest, GetTaskStatsRequest, HangupSide, IngestCallsRequest,
    IngestOutcome, Int64Range, ListCallsRequest, Speaker, StatsInterval, TranscriptFilter,
};
use clap::Parser;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, PgPool};
use tonic::transport::Channel;
use uuid::Uuid;

use support::generator::{BENCH_TENANT, Generator, GeneratorConfig};
use support::report::{Table, millis, percentile, rate, thousands, verdict};
use support::server::{DEFAULT_ADMIN_URL, ServerProcess, server_binary, tenant_request};

/// ListCalls targets: p99 and p99 against the direct SQL.
const TARGET_LIST_P99: Duration = Duration::from_millis(10);
const TARGET_LIST_RATIO: f64 = 1.3;
/// Page 10,000 against page 1.
const TARGET_DEEP_RATIO: f64 = 1.5;
/// GetCall requests/s against pgbench -S transactions/s.
const TARGET_GET_CALL_RATIO: f64 = 0.5;
/// GetTaskStats p99.
const TARGET_STATS_P99: Duration = Duration::from_millis(20);
/// The page the list scenarios ask for.
const PAGE: i32 = 50;
/// How deep the deep page is, in pages.
const DEEP_PAGES: u64 = 10_000;
/// Calls of `--quick`.
const QUICK_CALLS: u64 = 20_000;
/// Each measurement first runs this long unmeasured (caches, plans, connections).
const WARM_UP: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(
    name = "query",
    about = "Query benchmark of callstore: lists, GetCall, statistics"
)]
struct Args {
    /// Calls of the task (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    calls: Option<u64>,
    /// Concurrent clients of each measurement.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds each measurement runs (default 10; 2 with --quick).
    #[arg(long)]
    seconds: Option<u64>,
    /// The database the calls are loaded into and kept in between runs.
    #[arg(long, default_value = "callstore_bench_query")]
    database: String,
    /// Drop the database first and load everything again.
    #[arg(long)]
    fresh: bool,
    /// Concurrent IngestCalls clients while loading.
    #[arg(long, default_value_t = 4)]
    load_clients: usize,
    /// Calls per IngestCalls request while loading (a request must stay under the server's
    /// 4 MiB message limit: about 4.4 KiB a generated call).
    #[arg(long, default_value_t = 400)]
    load_batch: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A Postgres URL of any database on the server to use.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_ADMIN_URL)]
    database_url: String,
    /// Small and short: a smoke run.
    #[arg(long)]
    quick: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    support::run_bench("query", run(Args::parse()))
}

/// What every scenario needs.
struct Bench {
    clients: usize,
    measure_for: Duration,
    tenant: TenantId,
    server: ServerProcess,
    /// A pool like the server's, for the direct-SQL baselines.
    pool: PgPool,
    task_id: Uuid,
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.clients >= 1, "--clients must be at least 1");
    let quick = args.quick || !args.bench;
    let calls = args
        .calls
        .unwrap_or(if quick { QUICK_CALLS } else { 1_000_000 });
    let measure_for = Duration::from_secs(args.seconds.unwrap_or(if quick { 2 } else { 10 }));
    // One task, so that the lists and statistics run on a task of `calls` calls.
    let generator = Generator::new(GeneratorConfig {
        seed: args.seed,
        tasks: 1,
        ..GeneratorConfig::default()
    });

    let admin: PgConnectOptions = args
        .database_url
        .parse()
        .context("--database-url is not a Postgres URL")?;
    let database = admin.clone().database(&args.database);
    prepare_database(&admin, &args.database, args.fresh).await?;
    let server = ServerProcess::start(&server_binary(), database.to_url_lossy().as_ref()).await?;
    load(&args, &server, &database, &generator, calls).await?;

    let setup = database.connect().await?;
    analyze(setup).await?;
    let pool = lazy_pool(
        database.clone(),
        &PoolSettings {
            max_connections: u32::try_from(args.clients).unwrap_or(u32::MAX),
            acquire_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
        },
    );
    let task_id: Uuid = sqlx::query_scalar("SELECT id FROM tasks WHERE tenant_id = $1 LIMIT 1")
        .bind(BENCH_TENANT)
        .fetch_one(&pool)
        .await
        .context("the bench task")?;
    let bench = Bench {
        clients: args.clients,
        measure_for,
        tenant: TenantId::parse(BENCH_TENANT).map_err(anyhow::Error::msg)?,
        server,
        pool,
        task_id,
    };
    print_header(&bench, calls).await?;

    lists(&bench).await?.print();
    deep_page(&bench, calls).await?.print();
    get_call(&bench, &admin, &args.database).await?.print();
    stats(&bench).await?.print();
    bench.server.stop().await?;
    Ok(())
}

async fn prepare_database(admin: &PgConnectOptions, name: &str, fresh: bool) -> anyhow::Result<()> {
    let mut connection = admin
        .connect()
        .await
        .context("connecting to --database-url")?;
    let quoted = callstore::db::server::quote_identifier(name);
    if fresh {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
        )))
        .execute(&mut connection)
        .await?;
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut connection)
            .await?;
    if !exists {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut connection)
            .await?;
    }
    connection.close().await.ok();
    Ok(())
}

/// Ingests the calls the database does not have yet. Loading is idempotent (a call sent twice
/// is stored once), so an interrupted load resumes a little before where it stopped.
async fn load(
    args: &Args,
    server: &ServerProcess,
    database: &PgConnectOptions,
    generator: &Generator,
    calls: u64,
) -> anyhow::Result<()> {
    let mut connection = database.connect().await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE tenant_id = $1")
        .bind(BENCH_TENANT)
        .fetch_one(&mut connection)
        .await?;
    connection.close().await.ok();
    let stored = u64::try_from(stored).unwrap_or(0);
    if stored >= calls {
        eprintln!("load: {} calls already stored", thousands(stored));
        return Ok(());
    }
    let batch = args.load_batch.max(1) as u64;
    let start = (stored.saturating_sub(batch * args.load_clients as u64) / batch) * batch;
    eprintln!(
        "load: ingesting calls {} to {}",
        thousands(start),
        thousands(calls)
    );
    let next = Arc::new(AtomicUsize::new(start as usize));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.load_clients.max(1) {
        let mut client = IngestServiceClient::new(server.channel().await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let next = Arc::clone(&next);
        let generator = generator.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch as usize, Ordering::Relaxed) as u64;
                if first >= calls {
                    return anyhow::Ok(());
                }
                let last = (first + batch).min(calls);
                let records = (first..last).map(|index| generator.call(index)).collect();
                let response = client
                    .ingest_calls(tenant_request(
                        BENCH_TENANT,
                        IngestCallsRequest { calls: records },
                    ))
                    .await?
                    .into_inner();
                if let Some(refused) = response
                    .results
                    .iter()
                    .find(|result| result.outcome() == IngestOutcome::Rejected)
                {
                    bail!("a call was refused: {refused:?}");
                }
                if last % 50_000 < batch {
                    let rate = (last - start) as f64 / started.elapsed().as_secs_f64();
                    eprintln!("load: {} calls ({} calls/s)", thousands(last), rate as u64);
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    eprintln!("load: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Fresh planner statistics and visibility maps, as autovacuum would leave them.
async fn analyze(mut connection: sqlx::PgConnection) -> anyhow::Result<()> {
    eprintln!("setup: VACUUM ANALYZE");
    sqlx::raw_sql("VACUUM ANALYZE calls, call_tags, call_transcripts, tags, levels, tasks")
        .execute(&mut connection)
        .await?;
    connection.close().await.ok();
    Ok(())
}

async fn print_header(bench: &Bench, calls: u64) -> anyhow::Result<()> {
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&bench.pool)
        .await?;
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
            .fetch_one(&bench.pool)
            .await?;
    let turns: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
        .fetch_one(&bench.pool)
        .await?;
    let flags: Vec<String> = std::env::args().skip(1).collect();
    println!("# callstore query benchmark\n");
    println!(
        "- command: `cargo bench --bench query -- {}`",
        flags.join(" ")
    );
    println!(
        "- machine: {} cores; {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        version
    );
    println!(
        "- data: one task of {} calls, {} turns, database {size}",
        thousands(calls),
        thousands(u64::try_from(turns).unwrap_or(0))
    );
    println!(
        "- load: {} concurrent clients, {} s per measurement after {} s of warm-up\n",
        bench.clients,
        bench.measure_for.as_secs(),
        WARM_UP.as_secs()
    );
    Ok(())
}

/// Runs `call` from `clients` concurrent tasks for the warm-up and then `duration`; returns the
/// sorted latencies of the measured calls and the wall time they took.
async fn measure<F, Fut>(
    clients: usize,
    duration: Duration,
    call: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let warm_until = Instant::now() + WARM_UP;
    let until = warm_until + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut round = 0;
            loop {
                let started = Instant::now();
                if started >= until {
                    return anyhow::Ok(latencies);
                }
                call(client, round).await?;
                if started >= warm_until {
                    latencies.push(started.elapsed());
                }
                round += 1;
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    Ok(all)
}

/// One gRPC client per measuring task, each on its own connection.
async fn query_clients(bench: &Bench) -> anyhow::Result<Vec<QueryServiceClient<Channel>>> {
    let mut clients = Vec::with_capacity(bench.clients);
    for _ in 0..bench.clients {
        clients.push(QueryServiceClient::new(bench.server.channel().await?));
    }
    Ok(clients)
}

/// The list scenarios: each filter alone, and three combinations a dashboard uses.
async fn list_cases(bench: &Bench) -> anyhow::Result<Vec<(&'static str, CallFilter)>> {
    let pool = &bench.pool;
    let tags: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tags WHERE tenant_id = $1 ORDER BY source_tag_id LIMIT 2",
    )
    .bind(BENCH_TENANT)
    .fetch_all(pool)
    .await?;
    let levels: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM levels WHERE tenant_id = $1 ORDER BY source_level_id LIMIT 2",
    )
    .bind(BENCH_TENANT)
    .fetch_all(pool)
    .await?;
    let (callee, province, city): (String, String, String) = sqlx::query_as(
        "SELECT callee, province, city FROM calls WHERE tenant_id = $1 AND province IS NOT NULL
         ORDER BY dial_time DESC LIMIT 1",
    )
    .bind(BENCH_TENANT)
    .fetch_one(pool)
    .await?;
    let (first, last): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT min(dial_time), max(dial_time) FROM calls WHERE tenant_id = $1")
            .bind(BENCH_TENANT)
            .fetch_one(pool)
            .await?;
    let week = (
        callstore::api::convert::utc_to_timestamp(first + (last - first) / 2),
        callstore::api::convert::utc_to_timestamp(
            first + (last - first) / 2 + chrono::Duration::days(7),
        ),
    );
    ensure!(
        tags.len() == 2 && levels.len() == 2,
        "the bench data has tags and levels"
    );
    let ids = |ids: &[Uuid]| ids.iter().map(Uuid::to_string).collect::<Vec<_>>();
    let range = |min: Option<i64>, max: Option<i64>| Some(Int64Range { min, max });
    let said = |speaker: Speaker, text: &str| {
        Some(TranscriptFilter {
            speaker: speaker as i32,
            contains: text.to_owned(),
        })
    };
    let none = CallFilter::default;
    Ok(vec![
        ("no filter", none()),
        (
            "score ranges [0,20) or [40,60)",
            CallFilter {
                score_ranges: vec![
                    range(Some(0), Some(20)).unwrap_or_default(),
                    range(Some(40), Some(60)).unwrap_or_default(),
                ],
                ..none()
            },
        ),
        (
            "two levels",
            CallFilter {
                level_ids: ids(&levels),
                ..none()
            },
        ),
        ("callee", CallFilter { callee, ..none() }),
        (
            "callee prefix 1380",
            CallFilter {
                callee_prefix: "1380".to_owned(),
                ..none()
            },
        ),
        (
            "talk 30–90 s",
            CallFilter {
                talk_seconds: range(Some(30), Some(90)),
                ..none()
            },
        ),
        (
            "rounds 3–6",
            CallFilter {
                rounds: range(Some(3), Some(6)),
                ..none()
            },
        ),
        (
            "any of two tags",
            CallFilter {
                any_tag_ids: ids(&tags),
                ..none()
            },
        ),
        (
            "all of two tags",
            CallFilter {
                all_tag_ids: ids(&tags),
                ..none()
            },
        ),
        (
            "one week",
            CallFilter {
                dial_time_start: Some(week.0),
                dial_time_end: Some(week.1),
                ..none()
            },
        ),
        (
            "outcome busy",
            CallFilter {
                outcomes: vec![CallOutcome::Busy as i32],
                ..none()
            },
        ),
        (
            "hang-up side customer",
            CallFilter {
                hangup_sides: vec![HangupSide::Customer as i32],
                ..none()
            },
        ),
        (
            "province",
            CallFilter {
                province: province.clone(),
                ..none()
            },
        ),
        ("city", CallFilter { city, ..none() }),
        (
            "transferred",
            CallFilter {
                transferred: Some(true),
                ..none()
            },
        ),
        (
            "unread",
            CallFilter {
                read: Some(false),
                ..none()
            },
        ),
        (
            "customer said 不需要",
            CallFilter {
                transcript: said(Speaker::Customer, "不需要"),
                ..none()
            },
        ),
        (
            "customer said 好 (1 char)",
            CallFilter {
                transcript: said(Speaker::Customer, "好"),
                ..none()
            },
        ),
        (
            "anyone said 人工客服",
            CallFilter {
                transcript: said(Speaker::Unspecified, "人工客服"),
                ..none()
            },
        ),
        (
            "combo: answered, score ≥ 60, one week",
            CallFilter {
                outcomes: vec![CallOutcome::Answered as i32],
                score_ranges: vec![Int64Range {
                    min: Some(60),
                    max: None,
                }],
                dial_time_start: Some(week.0),
                dial_time_end: Some(week.1),
                ..none()
            },
        ),
        (
            "combo: a tag, talk ≥ 20 s, province",
            CallFilter {
                any_tag_ids: ids(&tags[..1]),
                talk_seconds: range(Some(20), None),
                province,
                ..none()
            },
        ),
        (
            "combo: customer said 微信, two levels",
            CallFilter {
                transcript: said(Speaker::Customer, "微信"),
                level_ids: ids(&levels),
                ..none()
            },
        ),
    ])
}

async fn lists(bench: &Bench) -> anyhow::Result<Table> {
    let mut table = Table::new("ListCalls: a page of 50 of the task, p50 / p99");
    let clients = query_clients(bench).await?;
    for (name, filter) in list_cases(bench).await? {
        let request = ListCallsRequest {
            task_id: bench.task_id.to_string(),
            filter: Some(filter),
            page_size: PAGE,
            ..ListCallsRequest::default()
        };
        let query = list_query(&request).map_err(|error| anyhow::anyhow!("{name}: {error:?}"))?;
        eprintln!("lists: {name}");
        let grpc = {
            let clients = clients.clone();
            let request = request.clone();
            measure(bench.clients, bench.measure_for, move |client, _| {
                let mut client = clients[client].clone();
                let request = request.clone();
                async move {
                    client
                        .list_calls(tenant_request(BENCH_TENANT, request))
                        .await?;
                    Ok(())
                }
            })
            .await?
        };
        let direct = {
            let pool = bench.pool.clone();
            let tenant = bench.tenant.clone();
            let query = query.clone();
            measure(bench.clients, bench.measure_for, move |_, _| {
                let pool = pool.clone();
                let tenant = tenant.clone();
                let query = query.clone();
                async move {
                    direct_page(&pool, &tenant, &query, None).await?;
                    Ok(())
                }
            })
            .await?
        };
        let (grpc_p99, direct_p99) = (percentile(&grpc, 0.99), percentile(&direct, 0.99));
        let ratio = grpc_p99.as_secs_f64() / direct_p99.as_secs_f64().max(1e-9);
        let pass = grpc_p99 <= TARGET_LIST_P99 && ratio <= TARGET_LIST_RATIO;
        table.row(
            name,
            format!(
                "{} / {} (direct SQL {} / {}; {} requests)",
                millis(percentile(&grpc, 0.5)),
                millis(grpc_p99),
                millis(percentile(&direct, 0.5)),
                millis(direct_p99),
                thousands(grpc.len() as u64)
            ),
            format!("p99 ≤ 10 ms, ≤ 1.3× direct ({ratio:.2}×)"),
            verdict(pass),
        );
        if !pass {
            let plan = calls_list::explain_page(
                &bench.pool,
                &bench.tenant,
                &query,
                None,
                i64::from(PAGE) + 1,
            )
            .await?;
            eprintln!(
                "lists: {name} misses its target; its plan:\n{}",
                plan.join("\n")
            );
        }
    }
    Ok(table)
}

/// What the server does for a page, minus gRPC: the ids, then the records.
async fn direct_page(
    pool: &PgPool,
    tenant: &TenantId,
    query: &CallListQuery,
    after: Option<CallPosition>,
) -> anyhow::Result<usize> {
    let positions = calls_list::list_page(pool, tenant, query, after, i64::from(PAGE) + 1).await?;
    let ids: Vec<Uuid> = positions.iter().take(PAGE as usize).map(|p| p.id).collect();
    Ok(load_calls(pool, tenant, &ids, CallEmbed::Basic)
        .await?
        .len())
}

async fn deep_page(bench: &Bench, calls: u64) -> anyhow::Result<Table> {
    let mut table = Table::new("ListCalls: page 10,000 against page 1 (no filter, by dial time)");
    let depth = (DEEP_PAGES * PAGE as u64).min(calls.saturating_sub(PAGE as u64 * 2));
    let request = ListCallsRequest {
        task_id: bench.task_id.to_string(),
        page_size: PAGE,
        ..ListCallsRequest::default()
    };
    let query = list_query(&request).map_err(|error| anyhow::anyhow!("{error:?}"))?;
    // The position 500,000 calls in, as the token of page 10,000 carries it.
    let (id, key): (Uuid, i64) = sqlx::query_as(
        "SELECT id, (extract(epoch FROM dial_time) * 1000000)::bigint FROM calls
         WHERE tenant_id = $1 AND task_id = $2
         ORDER BY dial_time DESC, id DESC OFFSET $3 LIMIT 1",
    )
    .bind(BENCH_TENANT)
    .bind(bench.task_id)
    .bind(i64::try_from(depth).unwrap_or(i64::MAX) - 1)
    .fetch_one(&bench.pool)
    .await?;
    let token = encode_token(
        Fingerprint::of(&bench.tenant, "ListCalls", &query),
        &CallPosition { key, id },
    );
    let clients = query_clients(bench).await?;
    let mut results = Vec::new();
    for (label, page_token) in [("page 1", String::new()), ("page 10,000", token)] {
        eprintln!("deep page: {label}");
        let clients = clients.clone();
        let request = ListCallsRequest {
            page_token,
            ..request.clone()
        };
        let latencies = measure(bench.clients, bench.measure_for, move |client, _| {
            let mut client = clients[client].clone();
            let request = request.clone();
            async move {
                let page = client
                    .list_calls(tenant_request(BENCH_TENANT, request))
                    .await?
                    .into_inner();
                ensure!(page.calls.len() == PAGE as usize, "a full page");
                Ok(())
            }
        })
        .await?;
        results.push((label, latencies));
    }
    let first = &results[0].1;
    let deep = &results[1].1;
    for (label, latencies) in &results {
        table.row(
            format!("{label} p50 / p99"),
            format!(
                "{} / {}",
                millis(percentile(latencies, 0.5)),
                millis(percentile(latencies, 0.99))
            ),
            "",
            "",
        );
    }
    let ratio =
        percentile(deep, 0.99).as_secs_f64() / percentile(first, 0.99).as_secs_f64().max(1e-9);
    table.row(
        format!(
            "page {} ({} calls in) ÷ page 1, p99",
            thousands(depth / PAGE as u64 + 1),
            thousands(depth)
        ),
        format!("{ratio:.2}×"),
        "≤ 1.5×",
        verdict(ratio <= TARGET_DEEP_RATIO),
    );
    Ok(table)
}

async fn get_call(
    bench: &Bench,
    admin: &PgConnectOptions,
    database: &str,
) -> anyhow::Result<Table> {
    let mut table = Table::new("GetCall against pgbench -S (select-only, prepared, TCP)");
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM calls TABLESAMPLE SYSTEM (2) WHERE tenant_id = $1 LIMIT 20000",
    )
    .bind(BENCH_TENANT)
    .fetch_all(&bench.pool)
    .await?;
    ensure!(!ids.is_empty(), "calls to get");
    let ids = Arc::new(ids);
    let clients = query_clients(bench).await?;
    eprintln!("get call: callstore");
    let started = Instant::now();
    let latencies = {
        let ids = Arc::clone(&ids);
        measure(bench.clients, bench.measure_for, move |client, round| {
            let id = ids[(client * 7919 + round as usize * 104_729) % ids.len()];
            let mut client = clients[client].clone();
            async move {
                client
                    .get_call(tenant_request(
                        BENCH_TENANT,
                        GetCallRequest {
                            call_id: id.to_string(),
                            ..GetCallRequest::default()
                        },
                    ))
                    .await?;
                Ok(())
            }
        })
        .await?
    };
    let measured = started.elapsed().saturating_sub(WARM_UP);
    let callstore_rate = latencies.len() as f64 / measured.as_secs_f64().max(1e-9);
    eprintln!("get call: pgbench");
    let pgbench_tps = pgbench(bench, admin, database).await?;
    let ratio = callstore_rate / pgbench_tps.max(1e-9);
    table.row(
        "GetCall requests/s (p50 / p99)",
        format!(
            "{} ({} / {})",
            rate(callstore_rate),
            millis(percentile(&latencies, 0.5)),
            millis(percentile(&latencies, 0.99))
        ),
        "",
        "",
    );
    table.row("pgbench -S -M prepared TPS", rate(pgbench_tps), "", "");
    table.row(
        "GetCall ÷ pgbench",
        format!("{ratio:.2}×"),
        "≥ 0.5×",
        verdict(ratio >= TARGET_GET_CALL_RATIO),
    );
    Ok(table)
}

/// `pgbench -S -M prepared` with the same clients and duration, over TCP, on a scale-10
/// database of its own on the same server.
async fn pgbench(bench: &Bench, admin: &PgConnectOptions, database: &str) -> anyhow::Result<f64> {
    let name = format!("{database}_pgbench");
    prepare_database(admin, &name, false).await?;
    let host = admin.get_host().to_owned();
    let port = admin.get_port().to_string();
    let user = admin.get_username().to_owned();
    let binary = pgbench_binary()?;
    let initialised = tokio::process::Command::new(&binary)
        .args([
            "-i", "-q", "-s", "10", "-h", &host, "-p", &port, "-U", &user, &name,
        ])
        .output()
        .await
        .context("running pgbench -i")?;
    ensure!(
        initialised.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&initialised.stderr)
    );
    let clients = bench.clients.to_string();
    let threads = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .to_string();
    let seconds = bench.measure_for.as_secs().max(1).to_string();
    let output = tokio::process::Command::new(&binary)
        .args([
            "-S", "-M", "prepared", "-n", "-c", &clients, "-j", &threads, "-T", &seconds, "-h",
            &host, "-p", &port, "-U", &user, &name,
        ])
        .output()
        .await
        .context("running pgbench -S")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "pgbench -S failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .with_context(|| format!("no tps in pgbench's output:\n{text}"))
}

fn pgbench_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Ok(found) = which("pgbench") {
        return Ok(found);
    }
    let mut candidates: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin/pgbench"))
        .filter(|path| path.exists())
        .collect();
    candidates.sort();
    candidates
        .pop()
        .context("pgbench is not installed (package postgresql-contrib)")
}

fn which(program: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").context("no PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.exists())
        .context("not on PATH")
}

async fn stats(bench: &Bench) -> anyhow::Result<Table> {
    let mut table = Table::new("GetTaskStats of the task, p50 / p99");
    let (first, last): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT min(dial_time), max(dial_time) FROM calls WHERE tenant_id = $1")
            .bind(BENCH_TENANT)
            .fetch_one(&bench.pool)
            .await?;
    let week_start = first + (last - first) / 2 + chrono::Duration::minutes(17);
    let to = callstore::api::convert::utc_to_timestamp;
    let cases = [
        (
            "every call, by day",
            GetTaskStatsRequest {
                task_id: bench.task_id.to_string(),
                interval: StatsInterval::Day as i32,
                ..GetTaskStatsRequest::default()
            },
        ),
        (
            "one week (unaligned edges), by hour",
            GetTaskStatsRequest {
                task_id: bench.task_id.to_string(),
                start_time: Some(to(week_start)),
                end_time: Some(to(week_start + chrono::Duration::days(7))),
                interval: StatsInterval::Hour as i32,
                ..GetTaskStatsRequest::default()
            },
        ),
    ];
    let clients = query_clients(bench).await?;
    for concurrency in [1, bench.clients] {
        for (name, request) in &cases {
            eprintln!("stats: {name}, {concurrency} clients");
            let clients = clients.clone();
            let request = request.clone();
            let latencies = measure(concurrency, bench.measure_for, move |client, _| {
                let mut client = clients[client].clone();
                let request = request.clone();
                async move {
                    let stats = client
                        .get_task_stats(tenant_request(BENCH_TENANT, request))
                        .await?
                        .into_inner();
                    ensure!(stats.total_calls > 0, "statistics of some calls");
                    Ok(())
                }
            })
            .await?;
            let p99 = percentile(&latencies, 0.99);
            table.row(
                format!("{name}, {concurrency} client(s)"),
                format!("{} / {}", millis(percentile(&latencies, 0.5)), millis(p99)),
                "p99 ≤ 20 ms",
                verdict(p99 <= TARGET_STATS_P99),
            );
        }
    }
    Ok(table)
}
