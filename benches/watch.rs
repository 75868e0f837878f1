//! Live stream benchmark (issue 5): how fast a committed call reaches `WatchCalls` subscribers,
//! what subscribers cost ingest, and what an idle subscriber costs the server in memory.
//!
//! ```sh
//! cargo bench --bench watch                        # full run
//! cargo bench --bench watch -- --quick             # smoke run
//! cargo bench --bench watch -- --scenarios latency --rate 2000 --batches 10
//! ```
//!
//! Scenarios, each against a fresh database and a fresh `callstore serve` process (the release
//! binary, as deployed), after a check that the stream delivers a call as the contract says:
//! 1. `memory`: `--idle-subscribers` idle `from_now` streams over `--idle-connections` HTTP/2
//!    connections; the server's resident memory before and after, per stream;
//! 2. `latency`: an open-loop ingest driver at `--rate` calls/s (IngestCalls requests of each of
//!    `--batches` calls, paced) while `--subscribers` subscribers (`from_now`, BASIC view, no
//!    filter, one connection each) note when each CALL_CREATED arrives; the latency of a call is
//!    its arrival minus the arrival of the acknowledgement of the request that carried it (the
//!    commit happened just before: a lower bound), and minus the send of that request (an upper
//!    bound);
//! 3. `throughput`: closed-loop batch ingest as fast as it goes for `--throughput-seconds`,
//!    in phases with 0, 1 and `--subscribers` subscribers reading everything (`--throughput-mix`),
//!    on one server and database, `--throughput-rounds` rounds.
//!
//! While it measures latency and throughput, the bench samples `pg_stat_activity` for
//! transactions of other databases holding an xid: the feed's watermark is the oldest running
//! transaction of the whole Postgres server, so such a transaction delays every event.
//!
//! Subscribers decode only the head of each message (kind and call id) by default: the bench
//! shares the machine's cores with the server and Postgres, and a full decode of every record
//! by 100 subscribers would measure the bench's decoding. `--decode full` uses the generated
//! client instead. Results go to stdout as markdown tables, progress to stderr.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::watch_calls_request::Start;
use callstore::proto::watch_service_client::WatchServiceClient;
use callstore::proto::{
    CallEventKind, CallRecord, CallView, IngestCallsRequest, IngestItemResult, IngestOutcome,
    WatchCallsRequest, WatchCallsResponse,
};
use clap::{Parser, ValueEnum};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use uuid::Uuid;

use support::cpu::{CpuSnapshot, CpuSplit};
use support::generator::{BENCH_TENANT, Generator, GeneratorConfig};
use support::header::RunHeader;
use support::report::{Table, bytes, millis, per_second, percentile, rate, thousands, verdict};
use support::server::{
    DEFAULT_ADMIN_URL, Databases, Memory, ServerProcess, database_marker, server_binary,
    tenant_request,
};

/// Target of the commit → subscriber latency, p99.
const TARGET_LATENCY_P99: Duration = Duration::from_millis(20);
/// Target of the ingest throughput drop with subscribers.
const TARGET_THROUGHPUT_DROP: f64 = 0.05;
/// How long every subscriber may take to receive an event the bench knows was committed.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// How often the bench looks at the subscribers' counters while waiting for them.
const POLL: Duration = Duration::from_millis(2);
/// How long a probe call may take to reach every subscriber before another is sent.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// Probe calls sent at most before the subscribers are declared not live.
const PROBES: usize = 5;
/// How often progress is written to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The RPC path of WatchCalls, for the head-only client.
const WATCH_CALLS_PATH: &str = "/callstore.v1.WatchService/WatchCalls";

#[derive(Debug, Parser)]
#[command(
    name = "watch",
    about = "Live stream benchmark of callstore: latency, ingest cost, memory per subscriber"
)]
struct Args {
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory,latency,throughput"
    )]
    scenarios: Vec<Scenario>,
    /// Leave the memory scenario out.
    #[arg(long)]
    skip_memory: bool,
    /// Seconds the latency scenario measures, after the warm-up (default 20; 3 with --quick).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seconds the latency scenario ingests before it measures (default 3; 1 with --quick).
    #[arg(long)]
    warm_up: Option<u64>,
    /// Calls per second the latency scenario ingests.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Calls per IngestCalls request of the latency scenario, comma-separated: one run each
    /// (10: a request every 10 ms at 1,000 calls/s; 1: a request a millisecond).
    #[arg(long, value_delimiter = ',', default_value = "10,1")]
    batches: Vec<usize>,
    /// HTTP/2 connections the paced ingest requests are spread over (the dialers).
    #[arg(long, default_value_t = 4)]
    dialers: usize,
    /// Subscribers of the latency and throughput scenarios, one HTTP/2 connection each
    /// (default 100; 20 with --quick).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Idle streams of the memory scenario (default 1,000; 100 with --quick).
    #[arg(long)]
    idle_subscribers: Option<usize>,
    /// HTTP/2 connections the idle streams share.
    #[arg(long, default_value_t = 10)]
    idle_connections: usize,
    /// Heartbeat interval the idle streams ask for, in milliseconds: the first heartbeat on
    /// every stream shows the server has set it up.
    #[arg(long, default_value_t = 1_000)]
    idle_heartbeat_ms: u64,
    /// Seconds of each throughput phase (default 10; 2 with --quick).
    #[arg(long)]
    throughput_seconds: Option<u64>,
    /// Rounds of the throughput scenario, each a phase per `--throughput-mix` entry (default
    /// 2; 1 with --quick).
    #[arg(long)]
    throughput_rounds: Option<usize>,
    /// Subscribers of each phase of a throughput round, comma-separated (default: 0, 1 and
    /// `--subscribers`). The drop is the largest count's mean against 0's; 1 separates what
    /// following the feed costs at all from what each subscriber adds.
    #[arg(long, value_delimiter = ',')]
    throughput_mix: Option<Vec<usize>>,
    /// Calls per IngestCalls request of the throughput scenario (as the ingest bench).
    #[arg(long, default_value_t = 500)]
    throughput_batch: usize,
    /// Concurrent closed-loop clients of the throughput scenario, one connection each.
    #[arg(long, default_value_t = 2)]
    throughput_clients: usize,
    /// How subscribers decode messages: the head only (kind, call id), or the whole message
    /// with the generated client.
    #[arg(long, value_enum, default_value = "light")]
    decode: Decode,
    /// Distinct generated calls the sent calls are copies of (each copy gets a source call id
    /// of its own).
    #[arg(long, default_value_t = 1_000)]
    templates: u64,
    /// Seed of the generated calls.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A Postgres URL whose role may create databases; each scenario gets a fresh one.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_ADMIN_URL, hide_env_values = true)]
    database_url: String,
    /// Small and short: a smoke run.
    #[arg(long)]
    quick: bool,
    /// Passed by `cargo bench`. Without it (as under `cargo test --benches`) the run is --quick.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Memory,
    Latency,
    Throughput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Decode {
    Light,
    Full,
}

/// The settings of this run, defaults resolved.
struct Settings {
    seconds: Duration,
    warm_up: Duration,
    subscribers: usize,
    idle_subscribers: usize,
    throughput_seconds: Duration,
    throughput_rounds: usize,
    throughput_mix: Vec<usize>,
}

/// What the scenarios share.
struct Bench {
    args: Args,
    settings: Settings,
    calls: Arc<CallSource>,
    databases: Databases,
}

fn main() -> ExitCode {
    support::run_bench("watch", run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.rate > 0.0, "--rate must be positive");
    ensure!(
        !args.batches.is_empty() && args.batches.iter().all(|batch| *batch >= 1),
        "--batches must name sizes of at least 1"
    );
    ensure!(args.dialers >= 1, "--dialers must be at least 1");
    ensure!(
        args.idle_connections >= 1,
        "--idle-connections must be at least 1"
    );
    ensure!(
        args.throughput_batch >= 1 && args.throughput_clients >= 1,
        "--throughput-batch and --throughput-clients must be at least 1"
    );
    ensure!(args.templates >= 1, "--templates must be at least 1");
    ensure!(
        args.idle_heartbeat_ms >= 100,
        "--idle-heartbeat-ms must be at least 100 (the server's minimum)"
    );
    let quick = args.quick || !args.bench;
    let settings = Settings {
        seconds: Duration::from_secs(args.seconds.unwrap_or(if quick { 3 } else { 20 })),
        warm_up: Duration::from_secs(args.warm_up.unwrap_or(if quick { 1 } else { 3 })),
        subscribers: args.subscribers.unwrap_or(if quick { 20 } else { 100 }),
        idle_subscribers: args
            .idle_subscribers
            .unwrap_or(if quick { 100 } else { 1_000 }),
        throughput_seconds: Duration::from_secs(args.throughput_seconds.unwrap_or(if quick {
            2
        } else {
            10
        })),
        throughput_rounds: args.throughput_rounds.unwrap_or(if quick { 1 } else { 2 }),
        throughput_mix: Vec::new(),
    };
    ensure!(
        settings.subscribers >= 1 && settings.idle_subscribers >= 1,
        "--subscribers and --idle-subscribers must be at least 1"
    );
    let mut settings = settings;
    settings.throughput_mix = args
        .throughput_mix
        .clone()
        .unwrap_or_else(|| vec![0, 1, settings.subscribers]);
    settings.throughput_mix.dedup();
    ensure!(
        settings.throughput_mix.contains(&0) && settings.throughput_mix.iter().any(|n| *n > 0),
        "--throughput-mix must hold 0 and a positive count"
    );
    let generator = Generator::new(GeneratorConfig {
        seed: args.seed,
        ..GeneratorConfig::default()
    });
    let calls = Arc::new(CallSource::new(generator, args.templates));
    let databases = Databases::connect(&args.database_url).await?;
    let bench = Bench {
        args,
        settings,
        calls,
        databases,
    };
    print_header(&bench).await?;
    let outcome = run_scenarios(&bench).await;
    bench.databases.drop_all().await;
    outcome
}

async fn run_scenarios(bench: &Bench) -> anyhow::Result<()> {
    contract_check(bench).await?;
    let scenarios = &bench.args.scenarios;
    // Problems found while measuring (missing events) fail the run after every table printed.
    let mut problems = Vec::new();
    if scenarios.contains(&Scenario::Memory) && !bench.args.skip_memory {
        memory_scenario(bench).await?.print();
    }
    if scenarios.contains(&Scenario::Latency) {
        let mut reports = Vec::new();
        for &batch in &bench.args.batches {
            let report = latency_scenario(bench, batch).await?;
            report.print();
            problems.extend(report.problem());
            reports.push(report);
        }
        if reports.len() > 1 {
            print_latency_summary(&reports);
        }
    }
    if scenarios.contains(&Scenario::Throughput) {
        let report = throughput_scenario(bench).await?;
        report.print();
        problems.extend(report.problem());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

async fn print_header(bench: &Bench) -> anyhow::Result<()> {
    let args = &bench.args;
    let settings = &bench.settings;
    let header = RunHeader::read("watch", &bench.databases).await?;
    let (cores, cpu_model) = (header.cores, &header.cpu_model);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned());

    header.print_intro("callstore live stream benchmark");
    println!(
        "- machine: {cores} CPUs (nproc), {cpu_model}, {}; load average at start {load}",
        std::env::consts::ARCH
    );
    header.print_provenance();
    println!(
        "- server: `{}` (release), default watch settings",
        server_binary().display()
    );
    println!(
        "- calls: copies of {} generated calls (seed {}), each with its own source call id, tenant `{BENCH_TENANT}`",
        thousands(args.templates),
        args.seed
    );
    println!(
        "- subscribers decode {}; latency: {} s warm-up + {} s measured at {} calls/s; throughput: {} rounds of {:?} subscribers, {} s a phase",
        match args.decode {
            Decode::Light => "the message head only (kind, call id)",
            Decode::Full => "whole messages (generated client)",
        },
        settings.warm_up.as_secs(),
        settings.seconds.as_secs(),
        rate(args.rate),
        settings.throughput_rounds,
        settings.throughput_mix,
        settings.throughput_seconds.as_secs()
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Calls

/// The calls the bench sends: copies of a pool of generated calls, each with a source call id
/// of its own, so every call sent is a new one. Copying is much cheaper than generating, which
/// keeps the bench's share of the cores small while it drives thousands of calls a second.
struct CallSource {
    generator: Generator,
    templates: Vec<CallRecord>,
    next: AtomicU64,
}

impl CallSource {
    fn new(generator: Generator, templates: u64) -> Self {
        let templates = (0..templates).map(|index| generator.call(index)).collect();
        Self {
            generator,
            templates,
            next: AtomicU64::new(0),
        }
    }

    /// The next `count` calls of the run.
    fn take(&self, count: usize) -> Vec<CallRecord> {
        let first = self.next.fetch_add(count as u64, Ordering::Relaxed);
        let pool = self.templates.len() as u64;
        (first..first + count as u64)
            .map(|index| {
                let mut call = self.templates[(index % pool) as usize].clone();
                call.source_call_id = self.generator.source_call_id(index);
                call
            })
            .collect()
    }

    fn request(&self, count: usize) -> IngestCallsRequest {
        IngestCallsRequest {
            calls: self.take(count),
        }
    }
}

/// Sends one IngestCalls request and checks that every call was CREATED.
async fn ingest(
    client: &mut IngestServiceClient<Channel>,
    request: IngestCallsRequest,
) -> anyhow::Result<Vec<IngestItemResult>> {
    let sent = request.calls.len();
    let first = request
        .calls
        .first()
        .map(|call| call.source_call_id.clone())
        .unwrap_or_default();
    let response = client
        .ingest_calls(tenant_request(BENCH_TENANT, request))
        .await
        .with_context(|| format!("IngestCalls failed (first call {first})"))?
        .into_inner();
    ensure!(
        response.results.len() == sent,
        "{} results for {sent} calls",
        response.results.len()
    );
    if let Some(result) = response
        .results
        .iter()
        .find(|result| result.outcome != IngestOutcome::Created as i32)
    {
        bail!(
            "call {} was not CREATED: outcome {}, {:?}",
            result.source_id,
            result.outcome,
            result.error
        );
    }
    Ok(response.results)
}

fn parse_id(id: &str) -> anyhow::Result<u128> {
    Ok(Uuid::parse_str(id)
        .with_context(|| format!("the server returned call id {id:?}, not a UUID"))?
        .as_u128())
}

// ---------------------------------------------------------------------------------------------
// Subscribers

/// The head of a `WatchCallsResponse`: the fields the bench needs. Prost skips the others
/// (the call record) without decoding them.
#[derive(Clone, PartialEq, prost::Message)]
struct EventHead {
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(string, tag = "6")]
    call_id: String,
}

/// An open WatchCalls stream, decoded one way or the other.
enum EventStream {
    Light(tonic::Streaming<EventHead>),
    Full(tonic::Streaming<WatchCallsResponse>),
}

impl EventStream {
    async fn next(&mut self) -> Result<Option<EventHead>, tonic::Status> {
        match self {
            Self::Light(stream) => stream.message().await,
            Self::Full(stream) => Ok(stream.message().await?.map(|message| EventHead {
                kind: message.kind,
                call_id: message.call_id,
            })),
        }
    }
}

fn watch_request(heartbeat: Option<Duration>) -> tonic::Request<WatchCallsRequest> {
    tenant_request(
        BENCH_TENANT,
        WatchCallsRequest {
            filter: None,
            start: Some(Start::FromNow(true)),
            view: CallView::Basic as i32,
            heartbeat_interval: heartbeat.map(|interval| prost_types::Duration {
                seconds: interval.as_secs() as i64,
                nanos: interval.subsec_nanos() as i32,
            }),
        },
    )
}

/// Opens a `from_now` stream; returns once the server has answered with its headers.
async fn open_stream(
    channel: Channel,
    decode: Decode,
    heartbeat: Option<Duration>,
) -> anyhow::Result<EventStream> {
    let request = watch_request(heartbeat);
    let opened = match decode {
        Decode::Full => WatchServiceClient::new(channel)
            .watch_calls(request)
            .await
            .map(|response| EventStream::Full(response.into_inner())),
        Decode::Light => {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|error| anyhow::anyhow!("the channel is not ready: {error}"))?;
            let codec = tonic_prost::ProstCodec::<WatchCallsRequest, EventHead>::default();
            grpc.server_streaming(request, PathAndQuery::from_static(WATCH_CALLS_PATH), codec)
                .await
                .map(|response| EventStream::Light(response.into_inner()))
        }
    };
    opened.map_err(|status| {
        if status.code() == tonic::Code::Unimplemented {
            anyhow::anyhow!(
                "the server does not implement WatchCalls yet: {}",
                status.message()
            )
        } else {
            anyhow::anyhow!("WatchCalls failed: {}", describe_status(&status))
        }
    })
}

fn describe_status(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    match status.get_details_error_info() {
        Some(info) => format!(
            "{:?} {} ({}: {})",
            status.code(),
            status.message(),
            info.domain,
            info.reason
        ),
        None => format!("{:?} {}", status.code(), status.message()),
    }
}

/// Counters a subscriber keeps up to date while it reads, for the bench to wait on.
#[derive(Default)]
struct Progress {
    created: AtomicU64,
    /// `created` when the subscribers were found live (see `Subscribers::probe`).
    base: AtomicU64,
    /// The low half of the id of the last call created.
    last_created: AtomicU64,
    heartbeats: AtomicU64,
    /// How the stream ended, when the server ended it.
    ended: OnceLock<String>,
}

/// What one subscriber received.
#[derive(Default)]
struct Received {
    /// Each CALL_CREATED: the call id and when it arrived.
    created: Vec<(u128, Instant)>,
    /// Events of other kinds (none are expected: every call sent is new).
    other: u64,
    heartbeats: u64,
    /// Call ids that were not UUIDs.
    bad_ids: u64,
}

struct Subscriber {
    progress: Arc<Progress>,
    task: tokio::task::JoinHandle<Received>,
}

/// Streams reading concurrently until stopped.
struct Subscribers {
    list: Vec<Subscriber>,
    stop: CancellationToken,
}

impl Subscribers {
    /// Opens `count` streams over `channels` (round robin), each read by a task of its own.
    async fn open(
        channels: &[Channel],
        count: usize,
        decode: Decode,
        heartbeat: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut list = Vec::with_capacity(count);
        for position in 0..count {
            let channel = channels[position % channels.len()].clone();
            let stream = open_stream(channel, decode, heartbeat)
                .await
                .with_context(|| format!("opening subscriber {position}"))?;
            let progress = Arc::new(Progress::default());
            let task = tokio::spawn(read_stream(stream, Arc::clone(&progress), stop.clone()));
            list.push(Subscriber { progress, task });
        }
        Ok(Self { list, stop })
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// The fewest and most CALL_CREATED events a subscriber has received since it was found
    /// live.
    fn created_range(&self) -> (u64, u64) {
        let counts = self.list.iter().map(|subscriber| {
            let progress = &subscriber.progress;
            progress.created.load(Ordering::Relaxed) - progress.base.load(Ordering::Relaxed)
        });
        (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0))
    }

    /// Waits until `reached` holds for every subscriber, at most `deadline`; returns how long
    /// it took, or an error saying how many fell short and how any stream ended.
    async fn wait_all(
        &self,
        what: &str,
        deadline: Duration,
        reached: impl Fn(&Progress) -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let short: Vec<&Subscriber> = self
                .list
                .iter()
                .filter(|subscriber| !reached(&subscriber.progress))
                .collect();
            if short.is_empty() {
                return Ok(started.elapsed());
            }
            let ended: Vec<&String> = short
                .iter()
                .filter_map(|subscriber| subscriber.progress.ended.get())
                .collect();
            if let Some(first) = ended.first() {
                bail!(
                    "{what}: {} of {} streams ended early, the first with {first}",
                    ended.len(),
                    self.len()
                );
            }
            if started.elapsed() >= deadline {
                bail!(
                    "{what}: {} of {} subscribers still waiting after {deadline:?}",
                    short.len(),
                    self.len()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every subscriber has at least `count` CALL_CREATED events since it was
    /// found live.
    async fn wait_created(&self, count: u64, deadline: Duration) -> anyhow::Result<Duration> {
        self.wait_all(
            &format!("waiting for {count} CALL_CREATED events"),
            deadline,
            |progress| {
                progress.created.load(Ordering::Relaxed) - progress.base.load(Ordering::Relaxed)
                    >= count
            },
        )
        .await
    }

    /// Sends probe calls until every subscriber has received one, and counts CALL_CREATED
    /// events from there on; returns how many probes it took.
    ///
    /// One ought to do: a stream that has answered with its headers has started, and the
    /// contract delivers every transaction that commits after that. A stream whose starting
    /// point is taken later than its headers misses the first probe, which this shows.
    async fn probe(
        &self,
        client: &mut IngestServiceClient<Channel>,
        bench: &Bench,
    ) -> anyhow::Result<usize> {
        let calls = &bench.calls;
        for attempt in 1..=PROBES {
            let results = ingest(client, calls.request(1)).await?;
            let probe = parse_id(&results.first().context("no result")?.id)? as u64;
            let waited = self
                .wait_all("waiting for a probe call", PROBE_WAIT, |progress| {
                    progress.last_created.load(Ordering::Relaxed) == probe
                })
                .await;
            let ended = self
                .list
                .iter()
                .any(|subscriber| subscriber.progress.ended.get().is_some());
            match waited {
                Ok(_) => {
                    // Every subscriber has the last probe, and earlier probes come before it in
                    // feed order: no probe arrives from here on.
                    for subscriber in &self.list {
                        let progress = &subscriber.progress;
                        progress
                            .base
                            .store(progress.created.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    return Ok(attempt);
                }
                Err(error) if ended => return Err(error),
                Err(error) if attempt == PROBES => {
                    // The usual cause: a transaction elsewhere on the Postgres server holds the
                    // watermark back (test suites do that on purpose).
                    let holders = foreign_holders(&bench.args.database_url)
                        .await
                        .unwrap_or_else(|error| format!("(cannot tell: {error:#})"));
                    return Err(error.context(format!(
                        "{PROBES} probe calls; transactions of other databases holding an xid now: {holders}"
                    )));
                }
                Err(_) => {}
            }
        }
        bail!("no probe call reached every subscriber")
    }

    /// Stops every reader and returns what each received, and how streams ended early.
    async fn finish(self) -> (Vec<Received>, Vec<String>) {
        self.stop.cancel();
        let mut received = Vec::with_capacity(self.list.len());
        let mut ended = Vec::new();
        for subscriber in self.list {
            if let Some(end) = subscriber.progress.ended.get() {
                ended.push(end.clone());
            }
            match subscriber.task.await {
                Ok(mine) => received.push(mine),
                Err(error) => ended.push(format!("the reader task failed: {error}")),
            }
        }
        (received, ended)
    }
}

async fn read_stream(
    mut stream: EventStream,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Received {
    let created_kind = CallEventKind::CallCreated as i32;
    let heartbeat_kind = CallEventKind::Heartbeat as i32;
    let mut received = Received::default();
    loop {
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            message = stream.next() => message,
        };
        // The arrival time is read first thing: everything after it is the bench's own work.
        let arrived = Instant::now();
        match message {
            Ok(Some(head)) if head.kind == created_kind => {
                match Uuid::parse_str(&head.call_id) {
                    Ok(id) => {
                        received.created.push((id.as_u128(), arrived));
                        progress
                            .last_created
                            .store(id.as_u128() as u64, Ordering::Relaxed);
                    }
                    Err(_) => received.bad_ids += 1,
                }
                progress.created.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(head)) if head.kind == heartbeat_kind => {
                received.heartbeats += 1;
                progress.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => received.other += 1,
            Ok(None) => {
                progress
                    .ended
                    .set("the stream ended without a status".to_owned())
                    .ok();
                break;
            }
            Err(status) => {
                progress.ended.set(describe_status(&status)).ok();
                break;
            }
        }
    }
    received
}

/// `count` new HTTP/2 connections to the server.
async fn channels(server: &ServerProcess, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(server.channel().await?);
    }
    Ok(channels)
}

// ---------------------------------------------------------------------------------------------
// Contract check

/// Before measuring anything: a stream opened from now delivers a call committed after it, as
/// CALL_CREATED with the record in BASIC view, its id, version and a cursor. Fails fast (and
/// clearly) while the server does not implement WatchCalls.
async fn contract_check(bench: &Bench) -> anyhow::Result<()> {
    let database = bench.databases.create().await?;
    let server = ServerProcess::start(&server_binary(), &database.url()).await?;
    let outcome = async {
        let channel = server.channel().await?;
        let mut stream = WatchServiceClient::new(channel.clone())
            .watch_calls(watch_request(None))
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::Unimplemented {
                    anyhow::anyhow!(
                        "the server does not implement WatchCalls yet: {}",
                        status.message()
                    )
                } else {
                    anyhow::anyhow!("WatchCalls failed: {}", describe_status(&status))
                }
            })?
            .into_inner();
        let mut client = IngestServiceClient::new(channel);
        let results = ingest(&mut client, bench.calls.request(1)).await?;
        let acked = Instant::now();
        let result = results.first().context("no result")?;
        let message = tokio::time::timeout(DELIVERY_DEADLINE, async {
            loop {
                match stream.message().await {
                    Ok(Some(message)) if message.kind == CallEventKind::Heartbeat as i32 => {}
                    Ok(Some(message)) => return Ok(message),
                    Ok(None) => bail!("the stream ended before the call arrived"),
                    Err(status) => bail!("the stream failed: {}", describe_status(&status)),
                }
            }
        })
        .await
        .context("the call did not arrive on the stream in time")??;
        ensure!(
            message.kind == CallEventKind::CallCreated as i32,
            "the first event is of kind {}, expected CALL_CREATED",
            message.kind
        );
        ensure!(
            message.call_id == result.id,
            "the event is about call {}, the ack said {}",
            message.call_id,
            result.id
        );
        let record = message.call.context("the CALL_CREATED event has no call")?;
        ensure!(
            record.id == result.id && record.source_call_id == result.source_id,
            "the event's record is call {} ({}), expected {} ({})",
            record.id,
            record.source_call_id,
            result.id,
            result.source_id
        );
        ensure!(
            message.call_version == result.version && record.version == result.version,
            "the event reports version {} (record {}), the ack {}",
            message.call_version,
            record.version,
            result.version
        );
        ensure!(!message.cursor.is_empty(), "the event has no cursor");
        eprintln!(
            "contract check: a call ingested after WatchCalls started arrived as CALL_CREATED {} after its ack ({} bytes, BASIC view)",
            millis(acked.elapsed()),
            prost::Message::encoded_len(&record)
        );
        anyhow::Ok(())
    }
    .await;
    finish(outcome, server, bench, &database.name).await
}

// ---------------------------------------------------------------------------------------------
// 1. Memory per idle subscriber

struct MemoryReport {
    streams: usize,
    connections: usize,
    heartbeat: Duration,
    before: Memory,
    idle: Memory,
    after_event: Memory,
    after_close: Memory,
    setup: Duration,
}

impl MemoryReport {
    fn per_stream(&self, after: Memory) -> String {
        let delta = after.rss as f64 - self.before.rss as f64;
        format!(
            "{:.1} KiB ({} in all)",
            delta / self.streams as f64 / 1024.0,
            signed_bytes(delta)
        )
    }

    fn print(&self) {
        let mut table = Table::new("1. Server memory per idle subscriber");
        table.row(
            "setup",
            format!(
                "{} `from_now` streams (BASIC, no filter, heartbeat every {}) over {} HTTP/2 connections, opened after one stream was served and closed",
                thousands(self.streams as u64),
                millis(self.heartbeat),
                self.connections
            ),
            "",
            "",
        );
        table.row(
            "opening the streams (all headers, then a heartbeat on each)",
            seconds_text(self.setup),
            "",
            "",
        );
        table.row(
            "server RSS: connections open, no stream",
            bytes(self.before.rss),
            "",
            "",
        );
        table.row(
            "server RSS: streams idle (each has had a heartbeat)",
            bytes(self.idle.rss),
            "",
            "",
        );
        table.row(
            "RSS per idle subscriber",
            self.per_stream(self.idle),
            "",
            "",
        );
        table.row(
            "server RSS: after one call delivered to every stream",
            format!(
                "{}; {} a subscriber",
                bytes(self.after_event.rss),
                self.per_stream(self.after_event)
            ),
            "",
            "",
        );
        table.row(
            "server RSS: 1 s after the streams were closed",
            bytes(self.after_close.rss),
            "",
            "",
        );
        table.row(
            "server peak RSS (VmHWM)",
            bytes(self.after_close.peak),
            "",
            "",
        );
        table.row(
            "in-memory size of one WatchCallsResponse / CallRecord value (not encoded)",
            format!(
                "{} / {} B",
                std::mem::size_of::<WatchCallsResponse>(),
                std::mem::size_of::<CallRecord>()
            ),
            "",
            "",
        );
        table.print();
    }
}

async fn memory_scenario(bench: &Bench) -> anyhow::Result<MemoryReport> {
    let streams = bench.settings.idle_subscribers;
    let connections = bench.args.idle_connections;
    let heartbeat = Duration::from_millis(bench.args.idle_heartbeat_ms);
    let database = bench.databases.create().await?;
    let server = ServerProcess::start(&server_binary(), &database.url()).await?;
    eprintln!(
        "memory: server ready (pid {}, {}); {streams} idle streams over {connections} connections",
        server.pid(),
        database.name
    );
    let outcome = async {
        let channels = channels(&server, connections).await?;
        let mut client = IngestServiceClient::new(server.channel().await?);
        // One stream served and closed first, so that what the first stream sets up once (the
        // tailer's state, pooled database connections, lazily built tables) does not count
        // against the idle streams.
        let warm = Subscribers::open(&channels[..1], 1, bench.args.decode, None).await?;
        warm.probe(&mut client, bench).await?;
        let (_, ended) = warm.finish().await;
        ensure!(ended.is_empty(), "the warm-up stream ended: {ended:?}");

        let before = server.memory()?;
        let started = Instant::now();
        let idle =
            Subscribers::open(&channels, streams, bench.args.decode, Some(heartbeat)).await?;
        idle.wait_all(
            "waiting for a heartbeat on every stream",
            DELIVERY_DEADLINE,
            |progress| progress.heartbeats.load(Ordering::Relaxed) >= 1,
        )
        .await?;
        let setup = started.elapsed();
        let idle_memory = server.memory()?;
        ingest(&mut client, bench.calls.request(1)).await?;
        idle.wait_created(1, DELIVERY_DEADLINE).await?;
        let after_event = server.memory()?;
        let (_, ended) = idle.finish().await;
        ensure!(
            ended.is_empty(),
            "idle streams ended early: {:?}",
            &ended[..ended.len().min(3)]
        );
        drop(channels);
        // Informational only: how much the server gives back once the connections are gone.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_close = server.memory()?;
        anyhow::Ok(MemoryReport {
            streams,
            connections,
            heartbeat,
            before,
            idle: idle_memory,
            after_event,
            after_close,
            setup,
        })
    }
    .await;
    finish(outcome, server, bench, &database.name).await
}

// ---------------------------------------------------------------------------------------------
// 2. Commit → subscriber latency

/// One call the paced driver sent.
struct Sent {
    id: u128,
    sent: Instant,
    acked: Instant,
}

struct LatencyReport {
    batch: usize,
    rate: f64,
    dialers: usize,
    subscribers: usize,
    warm_up: Duration,
    seconds: Duration,
    decode: Decode,
    /// Calls sent in the measured window.
    measured_calls: usize,
    /// When the first and the last measured request were sent.
    measured_span: Duration,
    /// Ack minus send of the measured requests, sorted.
    ack_latencies: Vec<Duration>,
    /// Arrival minus ack, in microseconds (negative: the event came first), sorted.
    from_ack: Vec<i64>,
    /// Arrival minus send, sorted.
    from_send: Vec<Duration>,
    /// Measured CALL_CREATED events each subscriber received (fewest, most).
    per_subscriber: (usize, usize),
    duplicates: u64,
    other_kinds: u64,
    heartbeats: u64,
    bad_ids: u64,
    ended: Vec<String>,
    /// From the last ack until every subscriber had every call.
    drain: Result<Duration, String>,
    max_in_flight: usize,
    /// Probe calls it took until every subscriber had received one.
    probes: usize,
    /// Transactions of other databases seen holding the watermark back.
    foreign: Result<ForeignSeen, String>,
    cpu: Cpu,
    memory: Memory,
    log_lines: usize,
}

impl LatencyReport {
    fn complete(&self) -> bool {
        self.per_subscriber == (self.measured_calls, self.measured_calls)
            && self.duplicates == 0
            && self.ended.is_empty()
            && self.drain.is_ok()
    }

    fn p99_from_ack(&self) -> Duration {
        Duration::from_micros(signed_percentile(&self.from_ack, 0.99).max(0) as u64)
    }

    fn problem(&self) -> Option<String> {
        (!self.complete()).then(|| {
            format!(
                "latency (batch {}): subscribers received {}–{} of {} calls ({} duplicates, {} streams ended{})",
                self.batch,
                self.per_subscriber.0,
                self.per_subscriber.1,
                self.measured_calls,
                self.duplicates,
                self.ended.len(),
                match &self.drain {
                    Ok(_) => String::new(),
                    Err(error) => format!(", {error}"),
                }
            )
        })
    }

    fn print(&self) {
        let title: &'static str = if self.batch == 1 {
            "2. Commit → subscriber latency, single-call requests"
        } else {
            "2. Commit → subscriber latency, batched requests"
        };
        let period = Duration::from_secs_f64(self.batch as f64 / self.rate);
        let mut table = Table::new(title);
        table.row(
            "setup",
            format!(
                "{} calls/s as IngestCalls requests of {} every {} (open loop) over {} connections; {} subscribers (`from_now`, BASIC, no filter, one HTTP/2 connection each, {} decode); {} warm-up, {} measured",
                rate(self.rate),
                self.batch,
                millis(period),
                self.dialers,
                self.subscribers,
                match self.decode {
                    Decode::Light => "head-only",
                    Decode::Full => "full",
                },
                seconds_text(self.warm_up),
                seconds_text(self.seconds)
            ),
            "",
            "",
        );
        table.row(
            "calls measured (achieved rate)",
            format!(
                "{} ({} calls/s)",
                thousands(self.measured_calls as u64),
                rate(per_second(self.measured_calls as f64, self.measured_span))
            ),
            "",
            "",
        );
        table.row(
            "IngestCalls ack p50 / p90 / p99 / max",
            quantiles(&self.ack_latencies),
            "",
            "",
        );
        let p99 = self.p99_from_ack();
        table.row(
            "arrival − ack (commit → subscriber, lower bound) p50 / p90 / p99 / max",
            signed_quantiles(&self.from_ack),
            format!("p99 ≤ {}", millis(TARGET_LATENCY_P99)),
            verdict(p99 <= TARGET_LATENCY_P99),
        );
        table.row(
            "arrival − send (upper bound) p50 / p90 / p99 / max",
            quantiles(&self.from_send),
            "",
            "",
        );
        let early = self.from_ack.iter().filter(|micros| **micros < 0).count();
        table.row(
            "events that arrived before their request's ack",
            format!(
                "{} of {} ({:.1} %)",
                thousands(early as u64),
                thousands(self.from_ack.len() as u64),
                100.0 * early as f64 / self.from_ack.len().max(1) as f64
            ),
            "",
            "",
        );
        table.row(
            "measured CALL_CREATED per subscriber (fewest / most)",
            format!(
                "{} / {} of {}; {} duplicates",
                thousands(self.per_subscriber.0 as u64),
                thousands(self.per_subscriber.1 as u64),
                thousands(self.measured_calls as u64),
                self.duplicates
            ),
            "all, once",
            verdict(self.complete()),
        );
        table.row(
            "every subscriber had every call, after the last ack",
            match &self.drain {
                Ok(drain) => millis(*drain),
                Err(error) => error.clone(),
            },
            "",
            "",
        );
        table.row(
            "other events: other kinds / heartbeats / ids not UUIDs / streams ended",
            format!(
                "{} / {} / {} / {}{}",
                self.other_kinds,
                self.heartbeats,
                self.bad_ids,
                self.ended.len(),
                self.ended
                    .first()
                    .map(|first| format!(" (first: {first})"))
                    .unwrap_or_default()
            ),
            "",
            "",
        );
        table.row(
            "probe calls until every subscriber had one (1 unless a stream started late)",
            self.probes.to_string(),
            "",
            "",
        );
        table.row(
            "transactions of other databases on the Postgres server, open with an xid (they hold every feed's watermark back)",
            match &self.foreign {
                Ok(seen) => seen.describe(),
                Err(error) => format!("not sampled: {error}"),
            },
            "",
            "",
        );
        table.row(
            "ingest requests in flight at most",
            self.max_in_flight.to_string(),
            "",
            "",
        );
        table.row(
            "server RSS at the end / peak",
            format!("{} / {}", bytes(self.memory.rss), bytes(self.memory.peak)),
            "",
            "",
        );
        if self.log_lines > 0 {
            table.row(
                "server warnings/errors logged",
                self.log_lines.to_string(),
                "",
                "",
            );
        }
        cpu_rows(&mut table, &self.cpu);
        table.print();
    }
}

fn print_latency_summary(reports: &[LatencyReport]) {
    let mut table = Table::new("2. Commit → subscriber latency, summary");
    for report in reports {
        let p99 = report.p99_from_ack();
        table.row(
            format!(
                "requests of {} call(s), {} subscribers: arrival − ack p50 / p99 (arrival − send p99)",
                report.batch, report.subscribers
            ),
            format!(
                "{} / {} ({})",
                signed_millis(signed_percentile(&report.from_ack, 0.50)),
                millis(p99),
                millis(percentile(&report.from_send, 0.99))
            ),
            format!("p99 ≤ {}", millis(TARGET_LATENCY_P99)),
            verdict(p99 <= TARGET_LATENCY_P99),
        );
    }
    table.print();
}

async fn latency_scenario(bench: &Bench, batch: usize) -> anyhow::Result<LatencyReport> {
    let args = &bench.args;
    let settings = &bench.settings;
    let database = bench.databases.create().await?;
    let server = ServerProcess::start(&server_binary(), &database.url()).await?;
    eprintln!(
        "latency: server ready (pid {}, {}); {} subscribers, {} calls/s in requests of {batch}",
        server.pid(),
        database.name,
        settings.subscribers,
        rate(args.rate)
    );
    let outcome = async {
        let subscriber_channels = channels(&server, settings.subscribers).await?;
        let dialers = channels(&server, args.dialers).await?;
        let mut probe_client = IngestServiceClient::new(dialers[0].clone());
        let subscribers = Subscribers::open(
            &subscriber_channels,
            settings.subscribers,
            args.decode,
            None,
        )
        .await?;
        // Every subscriber is live before the driver starts.
        let probes = subscribers.probe(&mut probe_client, bench).await?;

        let foreign = ForeignTransactions::start(&args.database_url);
        let driven = drive_paced(
            bench,
            &dialers,
            batch,
            settings.warm_up,
            settings.warm_up + settings.seconds,
            server.pid(),
        )
        .await?;
        let foreign = foreign.finish().await;
        let expected = driven.sent.len() as u64;
        let drain = subscribers
            .wait_created(expected, DELIVERY_DEADLINE)
            .await
            .map_err(|error| format!("{error:#}"));
        let (received, ended) = subscribers.finish().await;
        let memory = server.memory()?;
        anyhow::Ok((driven, received, ended, drain, memory, probes, foreign))
    }
    .await;
    let (driven, received, ended, drain, memory, probes, foreign) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            let error = with_server_log(error, &server);
            server.stop().await.ok();
            return Err(error);
        }
    };
    let log_lines = server.stop().await?;
    bench.databases.drop_database(&database.name).await?;

    let measured: HashMap<u128, (Instant, Instant)> = driven
        .sent
        .iter()
        .filter(|sent| sent.sent >= driven.measure_from)
        .map(|sent| (sent.id, (sent.sent, sent.acked)))
        .collect();
    let mut from_ack = Vec::with_capacity(measured.len() * received.len());
    let mut from_send = Vec::with_capacity(measured.len() * received.len());
    let mut per_subscriber = (usize::MAX, 0);
    let mut duplicates = 0;
    let (mut other_kinds, mut heartbeats, mut bad_ids) = (0, 0, 0);
    for mine in &received {
        let mut seen = HashSet::with_capacity(measured.len());
        for (id, arrived) in &mine.created {
            let Some((sent, acked)) = measured.get(id) else {
                continue;
            };
            if !seen.insert(*id) {
                duplicates += 1;
                continue;
            }
            from_ack.push(signed_micros(*arrived, *acked));
            from_send.push(arrived.saturating_duration_since(*sent));
        }
        per_subscriber.0 = per_subscriber.0.min(seen.len());
        per_subscriber.1 = per_subscriber.1.max(seen.len());
        other_kinds += mine.other;
        heartbeats += mine.heartbeats;
        bad_ids += mine.bad_ids;
    }
    if received.is_empty() {
        per_subscriber.0 = 0;
    }
    from_ack.sort_unstable();
    from_send.sort_unstable();
    let mut measured_sends: Vec<&Sent> = driven
        .sent
        .iter()
        .filter(|sent| sent.sent >= driven.measure_from)
        .collect();
    measured_sends.sort_unstable_by_key(|sent| sent.sent);
    let measured_span = match (measured_sends.first(), measured_sends.last()) {
        // The span of n paced sends is n − 1 periods: add one for the rate.
        (Some(first), Some(last)) => {
            last.sent.duration_since(first.sent) + Duration::from_secs_f64(batch as f64 / args.rate)
        }
        _ => Duration::ZERO,
    };
    // One ack latency per request, not per call: the calls of a request share both times.
    measured_sends.dedup_by_key(|sent| (sent.sent, sent.acked));
    let mut ack_latencies: Vec<Duration> = measured_sends
        .iter()
        .map(|sent| sent.acked.duration_since(sent.sent))
        .collect();
    ack_latencies.sort_unstable();
    Ok(LatencyReport {
        batch,
        rate: args.rate,
        dialers: args.dialers,
        subscribers: settings.subscribers,
        warm_up: settings.warm_up,
        seconds: settings.seconds,
        decode: args.decode,
        measured_calls: measured.len(),
        measured_span,
        ack_latencies,
        from_ack,
        from_send,
        per_subscriber,
        duplicates,
        other_kinds,
        heartbeats,
        bad_ids,
        ended,
        drain,
        max_in_flight: driven.max_in_flight,
        probes,
        foreign,
        cpu: driven.cpu,
        memory,
        log_lines,
    })
}

/// What the paced driver did.
struct Driven {
    sent: Vec<Sent>,
    /// Calls sent from this moment on are measured.
    measure_from: Instant,
    max_in_flight: usize,
    /// CPU from the first measured send until the last ack.
    cpu: Cpu,
}

/// Sends requests of `batch` calls at `--rate` calls/s for `total`, open loop: each request
/// goes out on schedule in a task of its own, whether or not earlier ones were answered, as
/// independent dialers would. Requests are spread over the `dialers` connections.
async fn drive_paced(
    bench: &Bench,
    dialers: &[Channel],
    batch: usize,
    warm_up: Duration,
    total: Duration,
    server_pid: u32,
) -> anyhow::Result<Driven> {
    let period = Duration::from_secs_f64(batch as f64 / bench.args.rate);
    let requests = (total.as_secs_f64() / period.as_secs_f64()).round() as usize;
    let warm_requests = (warm_up.as_secs_f64() / period.as_secs_f64()).round() as usize;
    let clients: Vec<IngestServiceClient<Channel>> = dialers
        .iter()
        .map(|channel| IngestServiceClient::new(channel.clone()))
        .collect();
    let mut tasks: JoinSet<anyhow::Result<Vec<Sent>>> = JoinSet::new();
    let mut sent = Vec::with_capacity(requests * batch);
    let mut max_in_flight = 0;
    let mut before = None;
    let mut measure_from = Instant::now();
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_EVERY;
    // Burst (the default) catches up after a late tick, so the average rate holds.
    let mut ticks = tokio::time::interval(period);
    for number in 0..requests {
        let request = bench.calls.request(batch);
        let mut client = clients[number % clients.len()].clone();
        ticks.tick().await;
        if number == warm_requests {
            before = Some(CpuMark::take(server_pid)?);
            measure_from = Instant::now();
        }
        tasks.spawn(async move {
            let sent = Instant::now();
            let results = ingest(&mut client, request).await?;
            let acked = Instant::now();
            results
                .iter()
                .map(|result| {
                    Ok(Sent {
                        id: parse_id(&result.id)?,
                        sent,
                        acked,
                    })
                })
                .collect()
        });
        max_in_flight = max_in_flight.max(tasks.len());
        while let Some(done) = tasks.try_join_next() {
            sent.extend(done.context("an ingest task failed")??);
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "latency: {} calls sent in {}, {} requests in flight",
                thousands(((number + 1) * batch) as u64),
                seconds_text(started.elapsed()),
                tasks.len()
            );
        }
    }
    while let Some(done) = tasks.join_next().await {
        sent.extend(done.context("an ingest task failed")??);
    }
    let after = CpuMark::take(server_pid)?;
    let before = before.context("the measured window never started (--seconds 0?)")?;
    Ok(Driven {
        sent,
        measure_from,
        max_in_flight,
        cpu: before.until(&after),
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Ingest throughput with and without subscribers

struct Phase {
    subscribers: usize,
    calls: usize,
    wall: Duration,
    cpu: Cpu,
    /// Transactions of other databases seen holding the watermark back.
    foreign: Result<ForeignSeen, String>,
    /// Subscribers only: from the last ack until every subscriber had every call.
    drain: Option<Result<Duration, String>>,
    /// Subscribers only: CALL_CREATED events of the phase each subscriber got (fewest, most).
    per_subscriber: Option<(u64, u64)>,
    ended: Vec<String>,
}

impl Phase {
    fn calls_per_second(&self) -> f64 {
        per_second(self.calls as f64, self.wall)
    }

    fn complete(&self) -> bool {
        self.ended.is_empty()
            && self.drain.as_ref().is_none_or(Result::is_ok)
            && self
                .per_subscriber
                .is_none_or(|(fewest, most)| fewest == most && most == self.calls as u64)
    }
}

struct ThroughputReport {
    batch: usize,
    clients: usize,
    seconds: Duration,
    phases: Vec<Phase>,
    warm_calls: usize,
    memory: Memory,
    log_lines: usize,
}

impl ThroughputReport {
    /// The subscriber counts of the phases, ascending.
    fn counts(&self) -> Vec<usize> {
        let mut counts: Vec<usize> = self.phases.iter().map(|phase| phase.subscribers).collect();
        counts.sort_unstable();
        counts.dedup();
        counts
    }

    /// Mean calls/s of the phases with `subscribers`.
    fn mean(&self, subscribers: usize) -> f64 {
        let rates: Vec<f64> = self
            .phases
            .iter()
            .filter(|phase| phase.subscribers == subscribers)
            .map(Phase::calls_per_second)
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    }

    /// How much slower than without subscribers ingest is with `subscribers`.
    fn drop_fraction(&self, subscribers: usize) -> f64 {
        let without = self.mean(0);
        if without > 0.0 {
            1.0 - self.mean(subscribers) / without
        } else {
            0.0
        }
    }

    fn problem(&self) -> Option<String> {
        let short: Vec<String> = self
            .phases
            .iter()
            .enumerate()
            .filter(|(_, phase)| !phase.complete())
            .map(|(number, phase)| {
                format!(
                    "throughput phase {}: subscribers got {:?} of {} calls, {} streams ended{}",
                    number + 1,
                    phase.per_subscriber,
                    phase.calls,
                    phase.ended.len(),
                    match &phase.drain {
                        Some(Err(error)) => format!(", {error}"),
                        _ => String::new(),
                    }
                )
            })
            .collect();
        (!short.is_empty()).then(|| short.join("; "))
    }

    fn print(&self) {
        let mut table = Table::new("3. Ingest throughput without and with subscribers");
        table.row(
            "setup",
            format!(
                "IngestCalls requests of {} calls from {} closed-loop clients (one connection each), {} a phase, one server and database for all phases after {} warm-up calls",
                self.batch,
                self.clients,
                seconds_text(self.seconds),
                thousands(self.warm_calls as u64)
            ),
            "",
            "",
        );
        for (number, phase) in self.phases.iter().enumerate() {
            let delivery = match (&phase.drain, phase.per_subscriber) {
                (Some(drain), Some((fewest, most))) => format!(
                    "; each subscriber got {}–{} of them, all {}",
                    thousands(fewest),
                    thousands(most),
                    match drain {
                        Ok(drain) => format!("{} after the last ack", millis(*drain)),
                        Err(error) => format!("NOT delivered: {error}"),
                    }
                ),
                _ => String::new(),
            };
            table.row(
                format!("phase {}: {} subscribers", number + 1, phase.subscribers),
                format!(
                    "{} calls/s ({} calls in {}){delivery}",
                    rate(phase.calls_per_second()),
                    thousands(phase.calls as u64),
                    seconds_text(phase.wall)
                ),
                "",
                if phase.complete() {
                    ""
                } else {
                    "MISSING EVENTS"
                },
            );
            table.row(
                format!(
                    "phase {}: CPU-s server (user+sys) / bench / our postgres / rest (cores busy)",
                    number + 1
                ),
                format!(
                    "{:.2} ({:.2}+{:.2}) / {:.2} / {:.2} / {:.2} ({:.2} of {})",
                    phase.cpu.split.server,
                    phase.cpu.server_user,
                    phase.cpu.server_system,
                    phase.cpu.split.bench,
                    phase.cpu.split.postgres_ours,
                    phase.cpu.split.other - phase.cpu.split.postgres_ours,
                    phase.cpu.split.cores_busy(),
                    std::thread::available_parallelism().map_or(0, usize::from)
                ),
                "",
                "",
            );
            let foreign = match &phase.foreign {
                Ok(seen) if seen.held == 0 => None,
                Ok(seen) => Some(seen.describe()),
                Err(error) => Some(format!("not sampled: {error}")),
            };
            if let Some(foreign) = foreign {
                table.row(
                    format!(
                        "phase {}: transactions of other databases holding the watermark",
                        number + 1
                    ),
                    foreign,
                    "",
                    "",
                );
            }
        }
        let counts = self.counts();
        let most = counts.last().copied().unwrap_or(0);
        for subscribers in counts {
            let rounds = self
                .phases
                .iter()
                .filter(|phase| phase.subscribers == subscribers)
                .count();
            if subscribers == 0 {
                table.row(
                    format!("calls/s without subscribers, mean of {rounds}"),
                    rate(self.mean(0)),
                    "",
                    "",
                );
                continue;
            }
            let drop = self.drop_fraction(subscribers);
            let target = subscribers == most;
            table.row(
                format!("calls/s with {subscribers} subscribers, mean of {rounds}; drop"),
                format!("{}; {:.1} %", rate(self.mean(subscribers)), drop * 100.0),
                if target {
                    format!("drop < {:.0} %", TARGET_THROUGHPUT_DROP * 100.0)
                } else {
                    String::new()
                },
                if target {
                    verdict(drop < TARGET_THROUGHPUT_DROP)
                } else {
                    ""
                },
            );
        }
        table.row(
            "server RSS at the end / peak",
            format!("{} / {}", bytes(self.memory.rss), bytes(self.memory.peak)),
            "",
            "",
        );
        if self.log_lines > 0 {
            table.row(
                "server warnings/errors logged",
                self.log_lines.to_string(),
                "",
                "",
            );
        }
        table.print();
    }
}

async fn throughput_scenario(bench: &Bench) -> anyhow::Result<ThroughputReport> {
    let args = &bench.args;
    let settings = &bench.settings;
    let database = bench.databases.create().await?;
    let server = ServerProcess::start(&server_binary(), &database.url()).await?;
    eprintln!(
        "throughput: server ready (pid {}, {}); {} clients, requests of {}, {} rounds of {:?} subscribers",
        server.pid(),
        database.name,
        args.throughput_clients,
        args.throughput_batch,
        settings.throughput_rounds,
        settings.throughput_mix
    );
    let outcome = async {
        let ingest_channels = channels(&server, args.throughput_clients).await?;
        // Unmeasured: the tenant, tasks, tags and levels get created, caches and plans warm.
        let warm_calls = closed_loop(bench, &ingest_channels, Duration::from_secs(2)).await?;
        let mut phases = Vec::new();
        for round in 0..settings.throughput_rounds {
            for &subscribers in &settings.throughput_mix {
                eprintln!("throughput: round {}, {subscribers} subscribers", round + 1);
                phases.push(throughput_phase(bench, &server, &ingest_channels, subscribers).await?);
            }
        }
        anyhow::Ok((warm_calls, phases, server.memory()?))
    }
    .await;
    let (warm_calls, phases, memory) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            let error = with_server_log(error, &server);
            server.stop().await.ok();
            return Err(error);
        }
    };
    let log_lines = server.stop().await?;
    bench.databases.drop_database(&database.name).await?;
    Ok(ThroughputReport {
        batch: args.throughput_batch,
        clients: args.throughput_clients,
        seconds: settings.throughput_seconds,
        phases,
        warm_calls,
        memory,
        log_lines,
    })
}

async fn throughput_phase(
    bench: &Bench,
    server: &ServerProcess,
    ingest_channels: &[Channel],
    subscribers: usize,
) -> anyhow::Result<Phase> {
    let readers = if subscribers > 0 {
        let channels = channels(server, subscribers).await?;
        let readers = Subscribers::open(&channels, subscribers, bench.args.decode, None).await?;
        let mut client = IngestServiceClient::new(ingest_channels[0].clone());
        let probes = readers.probe(&mut client, bench).await?;
        if probes > 1 {
            eprintln!("throughput: {probes} probe calls until every subscriber had one");
        }
        Some(readers)
    } else {
        None
    };
    let foreign = ForeignTransactions::start(&bench.args.database_url);
    let before = CpuMark::take(server.pid())?;
    let calls = closed_loop(bench, ingest_channels, bench.settings.throughput_seconds).await?;
    let after = CpuMark::take(server.pid())?;
    let foreign = foreign.finish().await;
    let cpu = before.until(&after);
    let (drain, per_subscriber, ended) = match readers {
        Some(readers) => {
            let drain = readers
                .wait_created(calls as u64, DELIVERY_DEADLINE)
                .await
                .map_err(|error| format!("{error:#}"));
            let (fewest, most) = readers.created_range();
            let (received, ended) = readers.finish().await;
            let duplicates = received
                .iter()
                .map(|mine| {
                    let unique: HashSet<u128> = mine.created.iter().map(|(id, _)| *id).collect();
                    mine.created.len() - unique.len()
                })
                .sum::<usize>();
            let mut ended = ended;
            if duplicates > 0 {
                ended.push(format!("{duplicates} duplicate CALL_CREATED events"));
            }
            (Some(drain), Some((fewest, most)), ended)
        }
        None => (None, None, Vec::new()),
    };
    Ok(Phase {
        subscribers,
        calls,
        wall: cpu.split.wall,
        cpu,
        foreign,
        drain,
        per_subscriber,
        ended,
    })
}

/// Closed-loop batch ingest from one client per channel for `duration`; returns the calls sent
/// (every one CREATED). A request in flight at the end is waited for and counted, as the wall
/// time the caller measures includes it.
async fn closed_loop(
    bench: &Bench,
    channels: &[Channel],
    duration: Duration,
) -> anyhow::Result<usize> {
    let end = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for channel in channels {
        let mut client = IngestServiceClient::new(channel.clone());
        let calls = Arc::clone(&bench.calls);
        let batch = bench.args.throughput_batch;
        tasks.spawn(async move {
            let mut sent = 0;
            while Instant::now() < end {
                ingest(&mut client, calls.request(batch)).await?;
                sent += batch;
            }
            anyhow::Ok(sent)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.context("an ingest task failed")??;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Other databases' transactions

/// Samples the Postgres server for transactions of databases other than this run's that hold
/// an xid: the feed's watermark is the oldest running xid of the whole server, so such a
/// transaction delays every event committed after it began, whichever database it is in. The
/// benches share the server with whatever else runs on the machine (test suites hold
/// transactions open on purpose), and this says whether that happened during a measurement.
struct ForeignTransactions {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<ForeignSeen>>,
}

/// What the sampler saw.
#[derive(Debug, Clone, Copy, Default)]
struct ForeignSeen {
    samples: u64,
    /// Samples that saw at least one such transaction.
    held: u64,
    /// The longest such transaction, as old as it was when last seen.
    longest: Duration,
}

impl ForeignSeen {
    fn describe(&self) -> String {
        if self.held == 0 {
            format!("none in {} samples (every 50 ms)", self.samples)
        } else {
            format!(
                "in {} of {} samples (every 50 ms); the longest open {}",
                self.held,
                self.samples,
                millis(self.longest)
            )
        }
    }
}

const FOREIGN_SAMPLE: Duration = Duration::from_millis(50);

/// The transactions of other databases holding an xid right now: database, age, state.
async fn foreign_holders(admin_url: &str) -> anyhow::Result<String> {
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url).await?;
    let rows: Vec<(Option<String>, Option<f64>, Option<String>)> = sqlx::query_as(
        "SELECT datname::text, extract(epoch FROM clock_timestamp() - xact_start)::float8, state
         FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL AND datname NOT LIKE $1
         ORDER BY xact_start",
    )
    .bind(format!("{}%", database_marker()))
    .fetch_all(&mut connection)
    .await?;
    sqlx::Connection::close(connection).await.ok();
    if rows.is_empty() {
        return Ok("none".to_owned());
    }
    Ok(rows
        .into_iter()
        .map(|(database, age, state)| {
            format!(
                "{} open {:.1} s ({})",
                database.unwrap_or_default(),
                age.unwrap_or_default(),
                state.unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", "))
}

impl ForeignTransactions {
    fn start(admin_url: &str) -> Self {
        let stop = CancellationToken::new();
        let url = admin_url.to_owned();
        let marker = format!("{}%", database_marker());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .context("connecting to sample pg_stat_activity")?;
            let mut seen = ForeignSeen::default();
            let mut ticks = tokio::time::interval(FOREIGN_SAMPLE);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let oldest: Option<f64> = sqlx::query_scalar(
                    "SELECT max(extract(epoch FROM clock_timestamp() - xact_start))::float8
                     FROM pg_stat_activity
                     WHERE backend_xid IS NOT NULL AND datname NOT LIKE $1",
                )
                .bind(&marker)
                .fetch_one(&mut connection)
                .await
                .context("sampling pg_stat_activity")?;
                seen.samples += 1;
                if let Some(oldest) = oldest {
                    seen.held += 1;
                    seen.longest = seen.longest.max(Duration::from_secs_f64(oldest.max(0.0)));
                }
            }
            sqlx::Connection::close(connection).await.ok();
            Ok(seen)
        });
        Self { stop, task }
    }

    async fn finish(self) -> Result<ForeignSeen, String> {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(seen)) => Ok(seen),
            Ok(Err(error)) => Err(format!("{error:#}")),
            Err(error) => Err(error.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU

/// CPU use over a measurement, with the server's time split into user and system (kernel)
/// time: a stream's messages cost the server system calls as well as encoding.
struct Cpu {
    split: CpuSplit,
    server_user: f64,
    server_system: f64,
}

struct CpuMark {
    snapshot: CpuSnapshot,
    server: (f64, f64),
    server_pid: u32,
}

impl CpuMark {
    fn take(server_pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            snapshot: CpuSnapshot::take(Some(server_pid), &database_marker())?,
            server: user_and_system_seconds(server_pid)?,
            server_pid,
        })
    }

    fn until(&self, later: &Self) -> Cpu {
        debug_assert_eq!(self.server_pid, later.server_pid);
        Cpu {
            split: self.snapshot.until(&later.snapshot),
            server_user: (later.server.0 - self.server.0).max(0.0),
            server_system: (later.server.1 - self.server.1).max(0.0),
        }
    }
}

/// User and system CPU seconds of a process so far, from `/proc/<pid>/stat`.
fn user_and_system_seconds(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces: the fields start after the last ')'; utime and stime
    // are fields 14 and 15, the 12th and 13th after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let (Some(user), Some(system)) = (fields.get(11), fields.get(12)) else {
        bail!("{path} has too few fields");
    };
    let ticks = support::cpu::clock_ticks_per_second();
    Ok((user.parse::<f64>()? / ticks, system.parse::<f64>()? / ticks))
}

// ---------------------------------------------------------------------------------------------
// Formatting

fn cpu_rows(table: &mut Table, cpu: &Cpu) {
    let (server_user, server_system) = (cpu.server_user, cpu.server_system);
    let cpu = &cpu.split;
    table.row(
        "CPU-s: server (user + system) / bench client / postgres+other",
        format!(
            "{:.2} ({server_user:.2} + {server_system:.2}) / {:.2} / {:.2}",
            cpu.server, cpu.bench, cpu.other
        ),
        "",
        "",
    );
    support::cpu::machine_rows(table, cpu);
}

/// p50 / p90 / p99 / max of sorted durations.
fn quantiles(sorted: &[Duration]) -> String {
    let Some(max) = sorted.last() else {
        return "-".to_owned();
    };
    format!(
        "{} / {} / {} / {}",
        millis(percentile(sorted, 0.50)),
        millis(percentile(sorted, 0.90)),
        millis(percentile(sorted, 0.99)),
        millis(*max)
    )
}

/// `later − earlier` in microseconds, negative when `later` came first.
fn signed_micros(later: Instant, earlier: Instant) -> i64 {
    match later.checked_duration_since(earlier) {
        Some(after) => after.as_micros() as i64,
        None => -(earlier.duration_since(later).as_micros() as i64),
    }
}

/// The nearest-rank percentile of sorted signed values (as `report::percentile`).
fn signed_percentile(sorted: &[i64], fraction: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let position = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[position - 1]
}

fn signed_millis(micros: i64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

fn signed_quantiles(sorted: &[i64]) -> String {
    let Some(max) = sorted.last() else {
        return "-".to_owned();
    };
    format!(
        "{} / {} / {} / {}",
        signed_millis(signed_percentile(sorted, 0.50)),
        signed_millis(signed_percentile(sorted, 0.90)),
        signed_millis(signed_percentile(sorted, 0.99)),
        signed_millis(*max)
    )
}

fn signed_bytes(value: f64) -> String {
    if value < 0.0 {
        format!("−{}", bytes((-value) as u64))
    } else {
        bytes(value as u64)
    }
}

fn seconds_text(duration: Duration) -> String {
    support::report::seconds(duration)
}

/// The error, then the end of the server's log (kept on disk for a failed run).
/// Ends a scenario: stops its server and drops its database, and on failure adds the end of
/// the server's log to the error.
async fn finish<T>(
    outcome: anyhow::Result<T>,
    server: ServerProcess,
    bench: &Bench,
    database: &str,
) -> anyhow::Result<T> {
    let outcome = outcome.map_err(|error| with_server_log(error, &server));
    server.stop().await?;
    bench.databases.drop_database(database).await?;
    outcome
}

fn with_server_log(error: anyhow::Error, server: &ServerProcess) -> anyhow::Error {
    anyhow::anyhow!(
        "{error:#}\nthe server's log ({}) ends with:\n{}",
        server.log_path().display(),
        server.log_tail()
    )
}
