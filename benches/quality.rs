//! Quality-scoring benchmark: what scoring a call costs in-process, and how much ingest
//! throughput drops when every call is scored as it is stored.
//!
//! ```sh
//! cargo bench --bench quality                      # full run (20,000 calls, 3 rounds)
//! cargo bench --bench quality -- --quick           # smoke run (3,000 calls, short measurements)
//! cargo bench --bench quality -- --calls 50000 --rounds 5
//! ```
//!
//! 1. Scoring cost per call, in this process (the library `callstore::quality`, no server): a
//!    20-turn Chinese dialogue placed in time (a few long silences, one interruption) and a
//!    20-rule set (12 keyword, 2 silence, 2 interruption, 2 speaking-rate, 2 talk-time),
//!    compiled once. Timed: `metrics::measure` alone, `inspect` with the scorer (metrics and
//!    score), and what ingest pays besides (`Dialogue::from_turns`, `Computed::details`,
//!    `Computed::content_hash`); the median of 5 repetitions of at least 1 s each.
//! 2. Ingest throughput with scoring on and off: the same generated calls sent as `IngestCalls`
//!    batches to a fresh database and a fresh `callstore serve` process per run, in three
//!    scenarios run interleaved in rounds: `off` (`--quality-at-ingest false`), `on` (an active
//!    rule set of the same 20 rules, created through `QualityService`), `metrics only` (the
//!    default server without a rule set). The median calls/s of each, and the drop of `on`
//!    against `off`, whose target is under 10 %.
//!
//! Results go to stdout as markdown tables, progress to stderr. A missed target is reported
//! as such; only errors (a failed request, a call not stored, a quality row missing) make the
//! bench exit non-zero.

mod support;

use std::collections::VecDeque;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use callstore::api::convert_quality::rule_to_proto;
use callstore::domain::call::Turn;
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::quality_service_client::QualityServiceClient;
use callstore::proto::{
    CreateRuleSetRequest, IngestCallsRequest, QualitySource, RuleSet, Severity, Speaker,
};
use callstore::quality::rules::{CompiledRuleSet, Rule, RuleKind};
use callstore::quality::score::Profile;
use callstore::quality::{Computed, Dialogue, Scorer, inspect, metrics};
use clap::Parser;
use prost::Message as _;

use support::cpu::CpuSplit;
use support::generator::{BENCH_TENANT, Generator, GeneratorConfig};
use support::header::RunHeader;
use support::load::closed_loop_ingest;
use support::report::{Table, bytes, per_second, rate, thousands, verdict};
use support::server::{
    BenchDatabase, DEFAULT_ADMIN_URL, Databases, ServerProcess, server_binary, tenant_request,
};

/// Target: ingest with scoring on may be at most this much slower than with it off, in %.
const TARGET_MAX_DROP_PERCENT: f64 = 10.0;
/// Calls a run ingests by default, and with `--quick`.
const DEFAULT_CALLS: usize = 20_000;
const QUICK_CALLS: usize = 3_000;
/// Repetitions of each in-process measurement; the median is reported.
const REPETITIONS: usize = 5;
/// How long each in-process repetition runs at least, and with `--quick`.
const MEASURE_FOR: Duration = Duration::from_secs(1);
const QUICK_MEASURE_FOR: Duration = Duration::from_millis(200);
/// Iterations between two reads of the clock are sized to take about this long.
const CHUNK_FOR: Duration = Duration::from_millis(10);
/// Version of the in-process rule set (never stored; its id is the nil UUID).
const RULE_SET_VERSION: i64 = 1;
/// Name of the rule set the `on` scenario creates.
const RULE_SET_NAME: &str = "bench 20 rules";

#[derive(Debug, Parser)]
#[command(
    name = "quality",
    about = "Quality-scoring benchmark of callstore: in-process cost, ingest with scoring on/off"
)]
struct Args {
    /// Calls each ingest run sends (default 20,000; 3,000 with --quick).
    #[arg(long)]
    calls: Option<usize>,
    /// Rounds of the ingest scenarios (each round runs off, on, metrics only).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calls per IngestCalls request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent ingest clients, each on its own connection.
    #[arg(long, default_value_t = 2)]
    batch_clients: usize,
    /// Small sizes and short measurements, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Seed of the generated calls (the same seed sends the same calls).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A Postgres URL whose role may create databases; each run gets a fresh one.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_ADMIN_URL, hide_env_values = true)]
    database_url: String,
    /// Passed by `cargo bench`. Without it (as under `cargo test --benches`) the run is --quick.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    support::run_bench("quality", run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.batch >= 1, "--batch must be at least 1");
    ensure!(
        args.batch_clients >= 1,
        "--batch-clients must be at least 1"
    );
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    // Like criterion: `cargo bench` passes --bench; run any other way it is a smoke run.
    let quick = args.quick || !args.bench;
    let calls = args
        .calls
        .unwrap_or(if quick { QUICK_CALLS } else { DEFAULT_CALLS });
    ensure!(calls >= 1, "--calls must be at least 1");
    let measure_for = if quick {
        QUICK_MEASURE_FOR
    } else {
        MEASURE_FOR
    };

    let databases = Databases::connect(&args.database_url).await?;
    print_header(&args, calls, &databases).await?;

    let cost = scoring_cost(measure_for)?;
    cost.print();

    let outcome = ingest_comparison(&args, calls, &databases).await;
    databases.drop_all().await;
    outcome?.print();
    Ok(())
}

async fn print_header(args: &Args, calls: usize, databases: &Databases) -> anyhow::Result<()> {
    let header = RunHeader::read("quality", databases).await?;
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or_else(|| "unknown".to_owned(), |kib| bytes(kib * 1024));
    header.print_intro("callstore quality scoring benchmark");
    println!(
        "- machine: {} CPUs (nproc), {}, {ram} RAM, {}",
        header.cores,
        header.cpu_model,
        std::env::consts::ARCH
    );
    header.print_provenance();
    println!("- server: `{}` (release)", server_binary().display());
    println!(
        "- data: seed {}, tenant `{BENCH_TENANT}`; {} calls a run, {} a request, {} clients, {} rounds",
        args.seed,
        thousands(calls as u64),
        args.batch,
        args.batch_clients,
        args.rounds
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Part 1: scoring cost in-process
// ---------------------------------------------------------------------------------------------

/// The sample dialogue's lines: robot (even positions) and customer (odd) alternating.
const SAMPLE_LINES: [&str; 20] = [
    "您好，我是招商银行的客服小张，请问您需要资金周转吗？",
    "嗯，有一点需要，你说说看吧",
    "我们是招商银行官方合作的贷款服务，额度最高五十万。",
    "利息大概是多少呢，贵不贵啊",
    "日息最低万分之二点五，借一万元一天只要两块五。",
    "我考虑一下，你们是怎么拿到我电话的",
    "您的号码是系统随机筛选的，打扰到您非常抱歉。",
    "那你们是什么公司啊，正规吗",
    "我们是正规持牌经营的机构，您可以放心办理。",
    "我不需要贷款，以后别打了好吗",
    "好的，请问您名下有没有车或者房子呢？",
    "有房子，还有一辆车，贷款还没还完",
    "您现在有缴纳公积金或者社保吗？",
    "有社保的，公积金也交了三年了",
    "根据您的情况，初步评估额度在十万到二十万之间。",
    "嗯，那要准备什么资料呢，身份证可以吗",
    "我稍后加一下您的微信，把详细的资料发给您。",
    "行，那你加我微信吧，号码就是这个",
    "好的，明天安排顾问给您回电，祝您生活愉快，再见！",
    "好的，再见，谢谢你啊",
];
/// Script nodes of the robot's lines, in order.
const SAMPLE_NODES: [&str; 10] = [
    "01打招呼+开场白",
    "02企业介绍",
    "问利息",
    "问号码来源",
    "问公司",
    "03贷款资质1",
    "04贷款资质2",
    "05额度说明",
    "06加微信",
    "99结束语",
];
/// Milliseconds a character takes to say: the robot's TTS, the customer.
const ROBOT_MS_PER_CHAR: i64 = 230;
const CUSTOMER_MS_PER_CHAR: i64 = 280;
/// Where the first line starts, and the usual pause before a line.
const FIRST_START_MS: i64 = 600;
const USUAL_PAUSE_MS: i64 = 500;
/// Pauses that are not the usual one, by line position: three silences (3.2 s, 6.5 s, 2 s)
/// and one interruption (the customer starts 900 ms before the robot has finished).
const SPECIAL_PAUSES_MS: [(usize, i64); 4] = [(5, 3_200), (9, -900), (11, 6_500), (15, 2_000)];
/// The talk time runs on this long after the last line.
const HANG_UP_AFTER_MS: i64 = 800;

/// The sample call's turns as the domain holds them, with its talk time and end node.
struct Sample {
    turns: Vec<Turn>,
    talk_duration_ms: i64,
    end_node: String,
}

fn sample() -> anyhow::Result<Sample> {
    let dial = chrono::DateTime::from_timestamp(1_743_476_400, 0)
        .context("the sample's dial time is out of range")?;
    let mut turns = Vec::with_capacity(SAMPLE_LINES.len());
    let mut cursor = FIRST_START_MS - USUAL_PAUSE_MS;
    for (position, text) in SAMPLE_LINES.iter().enumerate() {
        let characters = i64::try_from(text.chars().count())?;
        ensure!(
            (8..=30).contains(&characters),
            "sample line {position} has {characters} characters, expected 8-30"
        );
        let pause = SPECIAL_PAUSES_MS
            .iter()
            .find(|(at, _)| *at == position)
            .map_or(USUAL_PAUSE_MS, |(_, pause)| *pause);
        let robot = position % 2 == 0;
        let start = cursor + pause;
        let length = characters
            * if robot {
                ROBOT_MS_PER_CHAR
            } else {
                CUSTOMER_MS_PER_CHAR
            };
        let end = start + length;
        cursor = cursor.max(end);
        let node = robot
            .then(|| SAMPLE_NODES.get(position / 2))
            .flatten()
            .map(|node| (*node).to_owned());
        turns.push(Turn {
            sequence: i32::try_from(position + 1)?,
            speaker: if robot {
                Speaker::Robot
            } else {
                Speaker::Customer
            },
            text: (*text).to_owned(),
            time: Some(dial + chrono::Duration::milliseconds(start)),
            start_offset_ms: Some(start),
            end_offset_ms: Some(end),
            speak_ms: (!robot).then_some(length),
            play_ms: robot.then_some(length),
            node_id: node.as_ref().map(|node| format!("node-{node}")),
            node_name: node,
            ..Turn::default()
        });
    }
    Ok(Sample {
        turns,
        talk_duration_ms: cursor + HANG_UP_AFTER_MS,
        end_node: SAMPLE_NODES[SAMPLE_NODES.len() - 1].to_owned(),
    })
}

impl Sample {
    fn dialogue(&self) -> Dialogue {
        Dialogue::from_turns(
            &self.turns,
            Some(self.talk_duration_ms),
            Some(self.end_node.clone()),
        )
    }
}

fn rule(id: &str, name: &str, points: f64, severity: Severity, kind: RuleKind) -> Rule {
    Rule {
        id: id.to_owned(),
        name: name.to_owned(),
        points,
        severity,
        kind,
    }
}

fn keyword(
    speaker: Option<Speaker>,
    keywords: &[&str],
    patterns: &[&str],
    required: bool,
) -> RuleKind {
    RuleKind::Keyword {
        speaker,
        keywords: keywords.iter().map(|&word| word.to_owned()).collect(),
        patterns: patterns.iter().map(|&pattern| pattern.to_owned()).collect(),
        required,
    }
}

/// The 20 rules both parts score with: 12 keyword (plain and regex, forbidden and required,
/// per side and any side), 2 silence, 2 interruption, 2 speaking-rate, 2 talk-time.
fn bench_rules() -> Vec<Rule> {
    let robot = Some(Speaker::Robot);
    let customer = Some(Speaker::Customer);
    vec![
        rule(
            "kw-guarantee",
            "承诺必过",
            -20.0,
            Severity::Critical,
            keyword(
                robot,
                &["保证通过", "百分之百", "肯定能批", "包过"],
                &[],
                false,
            ),
        ),
        rule(
            "kw-abuse",
            "辱骂",
            -10.0,
            Severity::Critical,
            keyword(None, &["骗子", "滚", "神经病", "脏话"], &[], false),
        ),
        rule(
            "kw-complaint",
            "投诉倾向",
            -5.0,
            Severity::Major,
            keyword(
                customer,
                &["投诉", "举报", "12315"],
                &["(打|找)(监管|银保监)"],
                false,
            ),
        ),
        rule(
            "kw-refusal",
            "明确拒绝",
            -2.0,
            Severity::Minor,
            keyword(customer, &["不需要", "没兴趣", "别打了"], &[], false),
        ),
        rule(
            "kw-rate-disclosure",
            "利率表述",
            -1.0,
            Severity::Info,
            keyword(
                robot,
                &[],
                &["日息.{0,6}万分之[一二三四五六七八九十点]+"],
                false,
            ),
        ),
        rule(
            "kw-phone-number",
            "泄露号码",
            -5.0,
            Severity::Major,
            keyword(None, &[], &[r"1[3-9]\d{9}"], false),
        ),
        rule(
            "kw-greeting",
            "开场问候",
            -5.0,
            Severity::Major,
            keyword(robot, &["您好", "你好"], &[], true),
        ),
        rule(
            "kw-closing",
            "结束语",
            -3.0,
            Severity::Minor,
            keyword(robot, &[], &["再见|祝您.{0,4}愉快"], true),
        ),
        rule(
            "kw-identity",
            "表明身份",
            -5.0,
            Severity::Major,
            keyword(robot, &["客服", "顾问"], &["我是.{1,12}的"], true),
        ),
        rule(
            "kw-human",
            "转人工诉求",
            -1.0,
            Severity::Info,
            keyword(customer, &["转人工", "人工客服"], &["真人|人工"], false),
        ),
        rule(
            "kw-pressure",
            "催促办理",
            -8.0,
            Severity::Major,
            keyword(
                robot,
                &[],
                &["(马上|立即|立刻)(办理|申请|放款)", r"(最后|仅剩)\d*个?名额"],
                false,
            ),
        ),
        rule(
            "kw-amount",
            "额度金额",
            -1.0,
            Severity::Info,
            keyword(
                None,
                &["五十万"],
                &["[一二三四五六七八九十百千0-9]+万"],
                false,
            ),
        ),
        rule(
            "sil-3s",
            "静音超过3秒",
            -2.0,
            Severity::Minor,
            RuleKind::Silence {
                max_silence_ms: 3_000,
            },
        ),
        rule(
            "sil-5s",
            "静音超过5秒",
            -5.0,
            Severity::Major,
            RuleKind::Silence {
                max_silence_ms: 5_000,
            },
        ),
        rule(
            "int-any",
            "抢话",
            -2.0,
            Severity::Minor,
            RuleKind::Interruption {
                min_overlap_ms: 0,
                max_times: 0,
            },
        ),
        rule(
            "int-long",
            "多次长时间抢话",
            -5.0,
            Severity::Major,
            RuleKind::Interruption {
                min_overlap_ms: 1_000,
                max_times: 1,
            },
        ),
        rule(
            "rate-robot",
            "机器人语速",
            -2.0,
            Severity::Minor,
            RuleKind::SpeakingRate {
                speaker: Speaker::Robot,
                min_cpm: Some(180.0),
                max_cpm: Some(300.0),
            },
        ),
        rule(
            "rate-customer",
            "客户语速过快",
            -1.0,
            Severity::Info,
            RuleKind::SpeakingRate {
                speaker: Speaker::Customer,
                min_cpm: None,
                max_cpm: Some(400.0),
            },
        ),
        rule(
            "talk-short",
            "通话过短",
            -3.0,
            Severity::Minor,
            RuleKind::TalkTime {
                min_talk_ms: Some(20_000),
                max_talk_ms: None,
            },
        ),
        rule(
            "talk-long",
            "通话过长",
            -3.0,
            Severity::Minor,
            RuleKind::TalkTime {
                min_talk_ms: None,
                max_talk_ms: Some(300_000),
            },
        ),
    ]
}

/// The bench rules compiled once, with the built-in profile.
fn bench_scorer() -> anyhow::Result<Scorer> {
    let rules = bench_rules();
    let compiled = CompiledRuleSet::compile(uuid::Uuid::nil(), RULE_SET_VERSION, &rules).map_err(
        |violations| {
            let listed: Vec<String> = violations
                .iter()
                .map(|violation| format!("{}: {}", violation.field, violation.description))
                .collect();
            anyhow::anyhow!("the bench rules are not valid:\n  {}", listed.join("\n  "))
        },
    )?;
    Ok(Scorer {
        rules: Arc::new(compiled),
        profile: Profile::builtin(),
    })
}

/// One in-process measurement: microseconds a call of each repetition.
struct Timing {
    per_call_us: Vec<f64>,
    iterations: u64,
}

impl Timing {
    fn median(&self) -> f64 {
        median(&self.per_call_us)
    }

    /// `median µs (min–max of 5)`.
    fn describe(&self) -> String {
        let (low, high) = self
            .per_call_us
            .iter()
            .fold((f64::INFINITY, 0.0_f64), |(low, high), value| {
                (low.min(*value), high.max(*value))
            });
        format!(
            "{:.2} µs (repetitions {low:.2}–{high:.2}; {} calls)",
            self.median(),
            thousands(self.iterations)
        )
    }
}

/// Times `body`: a warm-up of a quarter of `measure_for` (which also sizes the chunks the clock
/// is read between), then [`REPETITIONS`] runs of at least `measure_for` each.
fn time_per_call(measure_for: Duration, mut body: impl FnMut()) -> Timing {
    let warm_up = measure_for / 4;
    let started = Instant::now();
    let mut warm_calls: u64 = 0;
    while started.elapsed() < warm_up {
        body();
        warm_calls = warm_calls.saturating_add(1);
    }
    let per_call = started.elapsed().as_secs_f64() / warm_calls.max(1) as f64;
    let chunk = ((CHUNK_FOR.as_secs_f64() / per_call.max(1e-9)) as u64).max(1);
    let mut iterations: u64 = 0;
    let per_call_us = (0..REPETITIONS)
        .map(|_| {
            let started = Instant::now();
            let mut done: u64 = 0;
            loop {
                for _ in 0..chunk {
                    body();
                }
                done = done.saturating_add(chunk);
                let elapsed = started.elapsed();
                if elapsed >= measure_for {
                    iterations = iterations.saturating_add(done);
                    break elapsed.as_secs_f64() * 1e6 / done as f64;
                }
            }
        })
        .collect();
    Timing {
        per_call_us,
        iterations,
    }
}

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

/// What part 1 measured.
struct CostReport {
    measure_for: Duration,
    turns: usize,
    characters: usize,
    rules: usize,
    result: Computed,
    measure: Timing,
    inspect: Timing,
    besides: Timing,
}

impl CostReport {
    fn print(&self) {
        let mut table = Table::new("1. Scoring cost per call (in-process, 20 turns, 20 rules)");
        table.row(
            "setup",
            format!(
                "{} turns ({} characters, robot/customer alternating, spans with silences and one interruption), {} rules (12 keyword, 2 silence, 2 interruption, 2 speaking-rate, 2 talk-time) compiled once, built-in profile; median of {REPETITIONS} repetitions of ≥ {:.1} s after a warm-up",
                self.turns,
                self.characters,
                self.rules,
                self.measure_for.as_secs_f64()
            ),
            "",
            "",
        );
        let hits = self.result.hit_rule_ids();
        table.row(
            "sample result",
            format!(
                "score {:.0}, {} hits of {} rules ({}); {} silences ({} over 3 s), {} interruption",
                self.result.score().unwrap_or_default(),
                self.result.violation_count().unwrap_or_default(),
                hits.len(),
                hits.join(", "),
                self.result.metrics.gaps.len(),
                self.result
                    .metrics
                    .gaps
                    .iter()
                    .filter(|gap| gap.ms > 3_000)
                    .count(),
                self.result.metrics.interruption_count.unwrap_or_default()
            ),
            "",
            "",
        );
        table.row(
            "(a) `metrics::measure` µs/call",
            self.measure.describe(),
            "",
            "",
        );
        table.row(
            "(b) `inspect` with the scorer (metrics + score) µs/call",
            self.inspect.describe(),
            "",
            "",
        );
        let ratio = if self.measure.median() > 0.0 {
            self.inspect.median() / self.measure.median()
        } else {
            0.0
        };
        table.row("(b) ÷ (a)", format!("{ratio:.2}"), "", "");
        table.row(
            "(c) `Dialogue::from_turns` + `details()` + `content_hash()` µs/call",
            self.besides.describe(),
            "",
            "",
        );
        let total = self.inspect.median() + self.besides.median();
        table.row(
            "(b) + (c): quality CPU per ingested call",
            format!(
                "{total:.2} µs (≈ {} calls/s on one core)",
                rate(if total > 0.0 { 1e6 / total } else { 0.0 })
            ),
            "",
            "",
        );
        table.print();
    }
}

fn scoring_cost(measure_for: Duration) -> anyhow::Result<CostReport> {
    let sample = sample()?;
    let dialogue = sample.dialogue();
    let scorer = bench_scorer()?;
    let result = inspect(&dialogue, Some(&scorer));

    // The sample must exercise every kind of rule, or the numbers measure less than they say.
    ensure!(
        result.metrics.interruption_count == Some(1),
        "the sample dialogue has {:?} interruptions, expected 1",
        result.metrics.interruption_count
    );
    ensure!(
        result.metrics.gaps.iter().any(|gap| gap.ms > 5_000),
        "the sample dialogue has no silence over 5 s"
    );
    ensure!(
        result.violation_count().unwrap_or_default() > 0,
        "the sample dialogue hits no rule"
    );

    eprintln!("cost: timing metrics::measure");
    let measure = time_per_call(measure_for, || {
        black_box(metrics::measure(black_box(&dialogue)));
    });
    eprintln!("cost: timing inspect with the scorer");
    let inspected = time_per_call(measure_for, || {
        black_box(inspect(black_box(&dialogue), Some(black_box(&scorer))));
    });
    eprintln!("cost: timing from_turns + details + content_hash");
    let besides = time_per_call(measure_for, || {
        let dialogue = Dialogue::from_turns(
            black_box(&sample.turns),
            Some(sample.talk_duration_ms),
            Some(sample.end_node.clone()),
        );
        black_box(&dialogue);
        black_box(black_box(&result).details());
        black_box(black_box(&result).content_hash());
    });

    Ok(CostReport {
        measure_for,
        turns: sample.turns.len(),
        characters: sample
            .turns
            .iter()
            .map(|turn| turn.text.chars().count())
            .sum(),
        rules: scorer.rules.rules().len(),
        result,
        measure,
        inspect: inspected,
        besides,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 2: ingest throughput with scoring on and off
// ---------------------------------------------------------------------------------------------

/// How a run's server scores the calls it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `--quality-at-ingest false`: nothing computed.
    Off,
    /// Default server and an active rule set: metrics and score.
    On,
    /// Default server without a rule set: metrics, no score.
    MetricsOnly,
}

impl Scenario {
    /// The order each round runs them in.
    const ALL: [Self; 3] = [Self::Off, Self::On, Self::MetricsOnly];

    fn label(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::MetricsOnly => "metrics only",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Off => "off (`--quality-at-ingest false`)",
            Self::On => "on (active 20-rule set)",
            Self::MetricsOnly => "metrics only (no rule set)",
        }
    }

    fn server_args(self) -> &'static [&'static str] {
        match self {
            Self::Off => &["--quality-at-ingest", "false"],
            Self::On | Self::MetricsOnly => &[],
        }
    }
}

/// The calls every run sends, as requests, and what they hold.
struct Workload {
    requests: Vec<IngestCallsRequest>,
    calls: usize,
    calls_with_turns: usize,
    turns: usize,
    turns_with_offsets: usize,
    request_bytes: usize,
}

fn workload(args: &Args, calls: usize) -> Workload {
    let generator = Generator::new(GeneratorConfig {
        seed: args.seed,
        ..GeneratorConfig::default()
    });
    let mut calls_with_turns = 0;
    let mut turns = 0;
    let mut turns_with_offsets = 0;
    let requests: Vec<IngestCallsRequest> = (0..calls)
        .step_by(args.batch)
        .map(|first| IngestCallsRequest {
            calls: (first..first.saturating_add(args.batch).min(calls))
                .map(|index| {
                    let call = generator.call(index as u64);
                    if !call.turns.is_empty() {
                        calls_with_turns += 1;
                    }
                    turns += call.turns.len();
                    turns_with_offsets += call
                        .turns
                        .iter()
                        .filter(|turn| {
                            turn.start_offset_ms.is_some() && turn.end_offset_ms.is_some()
                        })
                        .count();
                    call
                })
                .collect(),
        })
        .collect();
    let request_bytes = requests.iter().map(|request| request.encoded_len()).sum();
    Workload {
        requests,
        calls,
        calls_with_turns,
        turns,
        turns_with_offsets,
        request_bytes,
    }
}

/// What the database holds after a run.
#[derive(Debug, Clone, Copy)]
struct Stored {
    calls: i64,
    calls_with_turns: i64,
    /// Computed quality rows, the calls they are for, those with a score, with a rule set.
    rows: i64,
    row_calls: i64,
    scored: i64,
    with_rule_set: i64,
    average_score: Option<f64>,
    average_hits: Option<f64>,
}

/// One run of one scenario.
struct Run {
    calls_per_second: f64,
    cpu: CpuSplit,
    stored: Stored,
}

/// What part 2 measured.
struct IngestReport {
    workload_calls: usize,
    calls_with_turns: usize,
    turns: usize,
    turns_with_offsets: usize,
    request_bytes: usize,
    batch: usize,
    clients: usize,
    rounds: usize,
    runs: Vec<(Scenario, Run)>,
}

impl IngestReport {
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

    fn calls_per_second(&self, scenario: Scenario) -> f64 {
        self.median_of(scenario, |run| run.calls_per_second)
    }

    /// How much slower `scenario` is than `off`, in % (negative: faster).
    fn drop_percent(&self, scenario: Scenario) -> f64 {
        let off = self.calls_per_second(Scenario::Off);
        if off > 0.0 {
            (off - self.calls_per_second(scenario)) / off * 100.0
        } else {
            0.0
        }
    }

    fn print(&self) {
        let mut table = Table::new("2. Ingest throughput with quality scoring on vs off");
        let share = |part: usize, whole: usize| {
            if whole > 0 {
                part as f64 * 100.0 / whole as f64
            } else {
                0.0
            }
        };
        table.row(
            "setup",
            format!(
                "{} generated calls a run ({:.0}% with turns, {:.1} turns each, {:.0}% of turns with offsets; {} a call on the wire), IngestCalls of {} calls from {} clients (one connection each); a fresh database and server per run; {} rounds of off → on → metrics only",
                thousands(self.workload_calls as u64),
                share(self.calls_with_turns, self.workload_calls),
                if self.calls_with_turns > 0 {
                    self.turns as f64 / self.calls_with_turns as f64
                } else {
                    0.0
                },
                share(self.turns_with_offsets, self.turns),
                bytes((self.request_bytes / self.workload_calls.max(1)) as u64),
                self.batch,
                self.clients,
                self.rounds
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
                    rate(self.calls_per_second(scenario)),
                    rounds.join(", ")
                ),
                "",
                "",
            );
        }
        let drop = self.drop_percent(Scenario::On);
        table.row(
            "drop of on vs off",
            format!("{drop:.1} %"),
            format!("< {TARGET_MAX_DROP_PERCENT:.0} %"),
            verdict(drop < TARGET_MAX_DROP_PERCENT),
        );
        table.row(
            "drop of metrics only vs off",
            format!("{:.1} %", self.drop_percent(Scenario::MetricsOnly)),
            "",
            "",
        );
        for scenario in Scenario::ALL {
            let server = self.median_of(scenario, |run| run.cpu.server);
            let per_thousand = self.median_of(scenario, |run| {
                run.cpu.server * 1000.0 / self.workload_calls.max(1) as f64
            });
            table.row(
                format!(
                    "CPU-s, {} (medians): server / bench client / postgres+other",
                    scenario.label()
                ),
                format!(
                    "{server:.2} / {:.2} / {:.2} (server {per_thousand:.3} CPU-s per 1,000 calls)",
                    self.median_of(scenario, |run| run.cpu.bench),
                    self.median_of(scenario, |run| run.cpu.other),
                ),
                "",
                "",
            );
        }
        let on = self.runs_of(Scenario::On).next().map(|run| run.stored);
        table.row(
            "quality rows checked (every run)",
            format!(
                "on: one scored row per call with turns ({}){}; metrics only: one unscored row per call with turns; off: none",
                thousands(self.calls_with_turns as u64),
                on.map_or_else(String::new, |stored| format!(
                    ", average score {:.1}, {:.2} hits a call",
                    stored.average_score.unwrap_or_default(),
                    stored.average_hits.unwrap_or_default()
                ))
            ),
            "all as expected",
            verdict(true),
        );
        table.print();
    }
}

async fn ingest_comparison(
    args: &Args,
    calls: usize,
    databases: &Databases,
) -> anyhow::Result<IngestReport> {
    eprintln!("ingest: generating {} calls", thousands(calls as u64));
    let workload = workload(args, calls);
    ensure!(
        workload.calls_with_turns > 0,
        "none of the generated calls has turns: nothing would be scored"
    );
    let mut runs = Vec::with_capacity(args.rounds * Scenario::ALL.len());
    for round in 1..=args.rounds {
        for scenario in Scenario::ALL {
            let run = run_scenario(args, databases, &workload, scenario)
                .await
                .with_context(|| format!("round {round}, scenario {}", scenario.label()))?;
            eprintln!(
                "ingest: round {round}/{} {}: {} calls/s, server {:.2} CPU-s",
                args.rounds,
                scenario.label(),
                rate(run.calls_per_second),
                run.cpu.server
            );
            runs.push((scenario, run));
        }
    }
    Ok(IngestReport {
        workload_calls: workload.calls,
        calls_with_turns: workload.calls_with_turns,
        turns: workload.turns,
        turns_with_offsets: workload.turns_with_offsets,
        request_bytes: workload.request_bytes,
        batch: args.batch,
        clients: args.batch_clients,
        rounds: args.rounds,
        runs,
    })
}

async fn run_scenario(
    args: &Args,
    databases: &Databases,
    workload: &Workload,
    scenario: Scenario,
) -> anyhow::Result<Run> {
    let database = databases.create().await?;
    let server =
        ServerProcess::start_with(&server_binary(), &database.url(), scenario.server_args())
            .await?;
    if scenario == Scenario::On {
        create_rule_set(&server)
            .await
            .map_err(|error| with_server_log(error, &server))?;
    }
    let mut clients = Vec::with_capacity(args.batch_clients);
    for _ in 0..args.batch_clients {
        clients.push(IngestServiceClient::new(server.channel().await?));
    }
    let requests: VecDeque<IngestCallsRequest> = workload.requests.iter().cloned().collect();
    let load = match closed_loop_ingest(scenario.label(), clients, requests, server.pid()).await {
        Ok(load) => load,
        Err(error) => return Err(with_server_log(error, &server)),
    };
    server.stop().await?;

    let created = load.ids.len();
    if created != workload.calls || load.first_problem.is_some() {
        bail!(
            "{}: {created} of {} calls CREATED; first other: {}",
            scenario.label(),
            workload.calls,
            load.first_problem.as_deref().unwrap_or("none")
        );
    }
    let stored = check_stored(&database, scenario, workload).await?;
    databases.drop_database(&database.name).await?;
    Ok(Run {
        calls_per_second: per_second(workload.calls as f64, load.cpu.wall),
        cpu: load.cpu,
        stored,
    })
}

/// Creates the active 20-rule set of the bench tenant through `QualityService`.
async fn create_rule_set(server: &ServerProcess) -> anyhow::Result<()> {
    let rules: Vec<_> = bench_rules().into_iter().map(rule_to_proto).collect();
    let expected = rules.len();
    let mut client = QualityServiceClient::new(server.channel().await?);
    let created = client
        .create_rule_set(tenant_request(
            BENCH_TENANT,
            CreateRuleSetRequest {
                rule_set: Some(RuleSet {
                    name: RULE_SET_NAME.to_owned(),
                    rules,
                    active: true,
                    ..RuleSet::default()
                }),
            },
        ))
        .await
        .context("CreateRuleSet failed")?
        .into_inner()
        .rule_set
        .context("CreateRuleSet answered no rule set")?;
    ensure!(
        created.active && created.rules.len() == expected,
        "the created rule set is active={} with {} rules, expected active with {expected}",
        created.active,
        created.rules.len()
    );
    Ok(())
}

/// Every call stored, and the computed quality rows the scenario must have written.
async fn check_stored(
    database: &BenchDatabase,
    scenario: Scenario,
    workload: &Workload,
) -> anyhow::Result<Stored> {
    let pool = database.pool().await?;
    let row: (i64, i64, i64, i64, i64, i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT
             (SELECT count(*) FROM calls WHERE tenant_id = $1),
             (SELECT count(*) FROM calls c WHERE c.tenant_id = $1 AND EXISTS
                 (SELECT 1 FROM turns t WHERE t.tenant_id = c.tenant_id AND t.call_id = c.id)),
             count(*), count(DISTINCT q.call_id), count(q.score), count(q.rule_set_id),
             avg(q.score), avg(q.violation_count)::float8
         FROM quality_results q
         WHERE q.tenant_id = $1 AND q.source = $2",
    )
    .bind(BENCH_TENANT)
    .bind(QualitySource::Computed as i16)
    .fetch_one(&pool)
    .await
    .context("counting the stored calls and quality rows")?;
    pool.close().await;
    let stored = Stored {
        calls: row.0,
        calls_with_turns: row.1,
        rows: row.2,
        row_calls: row.3,
        scored: row.4,
        with_rule_set: row.5,
        average_score: row.6,
        average_hits: row.7,
    };
    let label = scenario.label();
    ensure!(
        usize::try_from(stored.calls).ok() == Some(workload.calls),
        "{label}: the database holds {} calls, expected {}",
        stored.calls,
        workload.calls
    );
    ensure!(
        usize::try_from(stored.calls_with_turns).ok() == Some(workload.calls_with_turns),
        "{label}: {} stored calls have turns, {} were sent with turns",
        stored.calls_with_turns,
        workload.calls_with_turns
    );
    match scenario {
        Scenario::Off => ensure!(
            stored.rows == 0,
            "{label}: {} computed quality rows, expected none",
            stored.rows
        ),
        Scenario::On => ensure!(
            stored.rows == stored.calls_with_turns
                && stored.row_calls == stored.rows
                && stored.scored == stored.rows
                && stored.with_rule_set == stored.rows,
            "{label}: {} computed quality rows for {} calls ({} scored, {} with a rule set), expected one scored row for each of the {} calls with turns",
            stored.rows,
            stored.row_calls,
            stored.scored,
            stored.with_rule_set,
            stored.calls_with_turns
        ),
        Scenario::MetricsOnly => ensure!(
            stored.rows == stored.calls_with_turns
                && stored.row_calls == stored.rows
                && stored.scored == 0,
            "{label}: {} computed quality rows for {} calls ({} scored), expected one unscored row for each of the {} calls with turns",
            stored.rows,
            stored.row_calls,
            stored.scored,
            stored.calls_with_turns
        ),
    }
    Ok(stored)
}

/// The error, then the end of the server's log (kept on disk for a failed run).
fn with_server_log(error: anyhow::Error, server: &ServerProcess) -> anyhow::Error {
    anyhow::anyhow!(
        "{error:#}\nthe server's log ({}) ends with:\n{}",
        server.log_path().display(),
        server.log_tail()
    )
}
