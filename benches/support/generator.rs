//! Realistic native call records for the benches and the oracle test.
//!
//! Every call is a pure function of `(seed, index)`: its own RNG is seeded from both, so any
//! call of a run can be regenerated on its own (an oracle compares what the server stored with
//! `Generator::call(index)` without keeping the batch in memory), and two runs with the same
//! seed send byte-identical data, which keeps benchmark numbers comparable across commits.
//!
//! The shape follows the vendor samples (`../shared/samples/`): a robot script in Chinese with
//! the customer's replies, 8–20 alternating turns whose offsets add up to the talk time, a few
//! tags out of a tenant-wide pool of ~30, a score mapped to a level, Chinese mobile numbers with
//! their province, city and carrier, and an outcome mix where most calls are answered.

use std::collections::HashMap;

use callstore::api::convert::utc_to_timestamp;
use callstore::proto;
use chrono::{DateTime, Duration, TimeZone as _, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng, SeedableRng};

/// The tenant every bench acts for (sent as `x-tenant-id`).
pub const BENCH_TENANT: &str = "bench";

/// The source system of generated calls: part of their idempotency key.
pub const BENCH_SOURCE_SYSTEM: &str = "bench";

/// What varies between runs; everything else is fixed so that runs stay comparable.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Seeds every call (together with its index).
    pub seed: u64,
    /// Local midnight (Asia/Shanghai) of the first day calls are dialled on.
    pub window_start: DateTime<Utc>,
    /// Days the dial times are spread over (calls are dialled 09:00–20:00 local time).
    pub window_days: u32,
    /// How many tasks (campaigns) the calls belong to.
    pub tasks: u32,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            // 2025-04-01 00:00 in Asia/Shanghai.
            window_start: Utc
                .with_ymd_and_hms(2025, 3, 31, 16, 0, 0)
                .single()
                .unwrap_or_default(),
            window_days: 30,
            tasks: 8,
        }
    }
}

/// Generates calls; cheap to clone and to share between client tasks.
#[derive(Debug, Clone)]
pub struct Generator {
    config: GeneratorConfig,
}

/// The tag pool: (source tag id, name). Calls reference tags by source id plus name, as a
/// dialer does, so the server creates each tag on first sight.
pub const TAGS: &[(&str, &str)] = &[
    ("bench-tag-01", "有意向"),
    ("bench-tag-02", "无意向"),
    ("bench-tag-03", "询问来源"),
    ("bench-tag-04", "投诉倾向"),
    ("bench-tag-05", "要求回电"),
    ("bench-tag-06", "已有贷款"),
    ("bench-tag-07", "需要资料"),
    ("bench-tag-08", "价格敏感"),
    ("bench-tag-09", "正在忙"),
    ("bench-tag-10", "主动挂断"),
    ("bench-tag-11", "方言"),
    ("bench-tag-12", "老年人"),
    ("bench-tag-13", "学生"),
    ("bench-tag-14", "转人工"),
    ("bench-tag-15", "加微信"),
    ("bench-tag-16", "明确拒绝"),
    ("bench-tag-17", "敏感词"),
    ("bench-tag-18", "脏话"),
    ("bench-tag-19", "重复来电"),
    ("bench-tag-20", "空号风险"),
    ("bench-tag-21", "关注利率"),
    ("bench-tag-22", "关注额度"),
    ("bench-tag-23", "已婚"),
    ("bench-tag-24", "有房"),
    ("bench-tag-25", "有车"),
    ("bench-tag-26", "有公积金"),
    ("bench-tag-27", "有社保"),
    ("bench-tag-28", "个体户"),
    ("bench-tag-29", "上班族"),
    ("bench-tag-30", "再次跟进"),
];

/// Levels by score: (source level id, name, lowest score). Unanswered calls get "E".
const LEVELS: &[(&str, &str, i64)] = &[
    ("A", "A级", 60),
    ("B", "B级", 30),
    ("C", "C级", 0),
    ("D", "D级", i64::MIN),
];
const UNANSWERED_LEVEL: (&str, &str) = ("E", "E级");

const COMPANIES: &[&str] = &[
    "招商银行",
    "平安银行",
    "浦发银行",
    "中信银行",
    "民生银行",
    "兴业银行",
    "光大银行",
    "华夏银行",
];

/// Script nodes of the robot's flow: (node id, title, robot line). `{company}` is filled in.
const OPENING: (&str, &str, &str) = (
    "questions20180709154413gKV5",
    "01打招呼+开场白",
    "您好，我是{company}的客服小张，请问您最近有资金周转方面的需求吗？",
);
const MAIN_FLOW: &[(&str, &str, &str)] = &[
    (
        "questions20180709154413XBm13",
        "02企业介绍",
        "我们这边是{company}官方合作的贷款服务，额度最高可以到五十万，您了解一下可以吗？",
    ),
    (
        "questions20180709154413Bm311",
        "03贷款资质1",
        "请问一下您名下有没有车或者房子呢？",
    ),
    (
        "questions20180709154413Cq722",
        "04贷款资质2",
        "您现在有缴纳公积金或者社保吗？",
    ),
    (
        "questions20180709154413Dk104",
        "05额度说明",
        "根据您的情况，初步评估额度在十万到二十万之间，日息最低万分之二点五。",
    ),
    (
        "questions20180709154413Ew930",
        "06加微信",
        "我稍后加一下您的微信，把详细的资料发给您，您看方便吗？",
    ),
    (
        "questions20180709154413Fz488",
        "07预约回访",
        "那我这边帮您登记一下，明天上午安排专属顾问给您回电，可以吗？",
    ),
];
const BUSINESS_QUESTIONS: &[(&str, &str, &str)] = &[
    (
        "business20180709160021aQ1",
        "问号码来源",
        "您的号码是我们系统随机筛选的，如果打扰到您非常抱歉。",
    ),
    (
        "business20180709160021bQ2",
        "问公司",
        "我们是{company}的官方合作机构，正规持牌经营，您可以放心。",
    ),
    (
        "business20180709160021cQ3",
        "问利息",
        "利息是按天计算的，日息最低万分之二点五，借一万元一天最低只要两块五。",
    ),
    (
        "business20180709160021dQ4",
        "问是否机器人",
        "我是智能客服，有什么问题您都可以直接问我。",
    ),
];
const TRANSFER_NODE: (&str, &str, &str) = (
    "transfer20180709170000tH1",
    "15转人工",
    "好的，这边马上为您转接人工客服，请稍等。",
);
const CLOSING: (&str, &str, &str) = (
    "questions20180709154413Zend",
    "99结束语",
    "好的，那就不打扰您了，祝您生活愉快，再见！",
);

/// How a customer reply steers the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Positive,
    Negative,
    Neutral,
    Question(usize),
    WantsHuman,
}

const POSITIVE_REPLIES: &[&str] = &[
    "嗯，好的",
    "可以啊",
    "你说吧",
    "有的",
    "嗯，有需要",
    "好的，你发过来吧",
    "行，那你加我微信吧",
    "可以，明天上午都在",
];
const NEGATIVE_REPLIES: &[&str] = &[
    "不需要，谢谢",
    "没兴趣",
    "我不需要贷款",
    "不用了，我在开车",
    "以后别打了",
    "没有，都没有",
];
const NEUTRAL_REPLIES: &[&str] = &["嗯", "哦", "喂？", "啊？你说什么", "我考虑一下", "再说吧"];
/// Customer questions, each answered by the business question node of the same index.
const QUESTION_REPLIES: &[&str] = &[
    "你们是怎么拿到我电话的",
    "你们是什么公司啊",
    "利息多少",
    "你是机器人吗",
];
const HUMAN_REPLIES: &[&str] = &["转人工", "我要找人工客服", "你让真人跟我说"];

const SURNAMES: &[&str] = &[
    "张", "王", "李", "赵", "刘", "陈", "杨", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林",
];

/// Callee regions: (province, city, area code, post code).
const REGIONS: &[(&str, &str, &str, &str)] = &[
    ("北京", "北京", "010", "100000"),
    ("上海", "上海", "021", "200000"),
    ("广东", "广州", "020", "510000"),
    ("广东", "深圳", "0755", "518000"),
    ("江苏", "南京", "025", "210000"),
    ("江苏", "苏州", "0512", "215000"),
    ("浙江", "杭州", "0571", "310000"),
    ("浙江", "宁波", "0574", "315000"),
    ("四川", "成都", "028", "610000"),
    ("湖北", "武汉", "027", "430000"),
    ("陕西", "西安", "029", "710000"),
    ("山东", "济南", "0531", "250000"),
    ("山东", "青岛", "0532", "266000"),
    ("河南", "郑州", "0371", "450000"),
    ("福建", "福州", "0591", "350000"),
    ("湖南", "长沙", "0731", "410000"),
];

/// Mobile prefixes by carrier (all match 1[3-9]x).
const MOBILE_PREFIXES: &[&str] = &[
    "134", "135", "136", "137", "138", "139", "150", "151", "152", "157", "158", "159", "182",
    "183", "184", "187", "188", "195", "198",
];
const UNICOM_PREFIXES: &[&str] = &[
    "130", "131", "132", "155", "156", "166", "175", "176", "185", "186",
];
const TELECOM_PREFIXES: &[&str] = &[
    "133", "153", "173", "177", "180", "181", "189", "191", "199",
];

/// Not-answered outcomes with their weights, number status, hang-up cause and SIP code.
const UNANSWERED: &[(proto::CallOutcome, u32, proto::NumberStatus, &str, &str)] = &[
    (
        proto::CallOutcome::NoAnswer,
        12,
        proto::NumberStatus::NoAnswer,
        "NO_ANSWER",
        "480",
    ),
    (
        proto::CallOutcome::Busy,
        4,
        proto::NumberStatus::Busy,
        "USER_BUSY",
        "486",
    ),
    (
        proto::CallOutcome::Rejected,
        4,
        proto::NumberStatus::Rejected,
        "CALL_REJECTED",
        "603",
    ),
    (
        proto::CallOutcome::PoweredOff,
        4,
        proto::NumberStatus::PoweredOff,
        "SUBSCRIBER_ABSENT",
        "480",
    ),
    (
        proto::CallOutcome::VacantNumber,
        3,
        proto::NumberStatus::Vacant,
        "UNALLOCATED_NUMBER",
        "404",
    ),
    (
        proto::CallOutcome::Suspended,
        2,
        proto::NumberStatus::Suspended,
        "CALL_REJECTED",
        "403",
    ),
    (
        proto::CallOutcome::LineFault,
        1,
        proto::NumberStatus::LineFault,
        "NETWORK_OUT_OF_ORDER",
        "503",
    ),
    (
        proto::CallOutcome::Arrears,
        1,
        proto::NumberStatus::Arrears,
        "CALL_REJECTED",
        "402",
    ),
    (
        proto::CallOutcome::CallLoss,
        1,
        proto::NumberStatus::CallLoss,
        "RECOVERY_ON_TIMER_EXPIRE",
        "408",
    ),
];
/// Weight of answered calls against the sum of [`UNANSWERED`]'s (32): about 70% answered.
const ANSWERED_WEIGHT: u32 = 75;

/// One generated turn before it becomes a wire turn.
struct Line {
    speaker: proto::Speaker,
    text: String,
    node: (&'static str, &'static str, &'static str),
    node_type: proto::NodeType,
    reply: Option<Reply>,
}

impl Generator {
    /// A generator for `config`.
    pub fn new(config: GeneratorConfig) -> Self {
        Self { config }
    }

    /// The configuration the calls are generated from.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// The source call id of call `index`: unique per index (the index is part of it), and
    /// shaped like the telephony UUIDs of the samples.
    pub fn source_call_id(&self, index: u64) -> String {
        let hash = mix(self.config.seed, index);
        format!(
            "{:08x}-{:04x}-11f0-{:04x}-{:012x}",
            hash >> 32,
            (hash >> 16) & 0xffff,
            0x8000 | (hash & 0x3fff),
            index
        )
    }

    /// The source task id of task `number` (0-based).
    pub fn source_task_id(number: u32) -> String {
        format!("bench-task-{:02}", number + 1)
    }

    /// Call `index` of the run: the same record every time for the same seed and index.
    pub fn call(&self, index: u64) -> proto::CallRecord {
        let mut rng = StdRng::seed_from_u64(mix(self.config.seed, index));
        let rng = &mut rng;
        let source_call_id = self.source_call_id(index);

        let task_number = rng.random_range(0..self.config.tasks.max(1));
        let company = COMPANIES[task_number as usize % COMPANIES.len()];
        let caller = format!("0571{:08}", 86_000_000 + task_number);

        let (callee, carrier, carrier_name) = callee(rng);
        let (province, city, area_code, post_code) = *pick(rng, REGIONS);

        let day = i64::from(rng.random_range(0..self.config.window_days.max(1)));
        let second_of_day = rng.random_range(9 * 3600..20 * 3600);
        let dial_time = self.config.window_start
            + Duration::seconds(day * 86_400 + second_of_day)
            + Duration::milliseconds(rng.random_range(0..1000));
        let ring_ms: i64 = rng.random_range(3_000..20_000);

        let total_weight = ANSWERED_WEIGHT + UNANSWERED.iter().map(|o| o.1).sum::<u32>();
        let mut draw = rng.random_range(0..total_weight);
        let unanswered = if draw < ANSWERED_WEIGHT {
            None
        } else {
            draw -= ANSWERED_WEIGHT;
            UNANSWERED.iter().find(|outcome| {
                if draw < outcome.1 {
                    true
                } else {
                    draw -= outcome.1;
                    false
                }
            })
        };

        let date_path = (dial_time + Duration::hours(8))
            .format("%Y%m%d/%H%M")
            .to_string();
        let mut record = proto::CallRecord {
            source_format: proto::SourceFormat::Native as i32,
            source_system: BENCH_SOURCE_SYSTEM.to_owned(),
            source_call_id: source_call_id.clone(),
            state: proto::CallState::Completed as i32,
            source_task_id: Self::source_task_id(task_number),
            script_group_id: format!("bench-script-{:02}", task_number + 1),
            callee: callee.clone(),
            caller,
            callee_region: Some(proto::Region {
                province: province.to_owned(),
                city: city.to_owned(),
                area_code: area_code.to_owned(),
                post_code: post_code.to_owned(),
                carrier: carrier as i32,
                carrier_name: carrier_name.to_owned(),
                text: format!("{province}{city}{carrier_name}"),
            }),
            customer: Some(proto::Customer {
                name: format!(
                    "{}{}",
                    pick(rng, SURNAMES),
                    if rng.random_bool(0.5) {
                        "先生"
                    } else {
                        "女士"
                    }
                ),
                ..proto::Customer::default()
            }),
            dial_time: Some(utc_to_timestamp(dial_time)),
            call_count: Some(rng.random_range(1..4)),
            number_check_status: if rng.random_bool(0.9) {
                proto::NumberCheckStatus::Real as i32
            } else {
                proto::NumberCheckStatus::NotChecked as i32
            },
            call_mode: proto::CallMode::AutoOutbound as i32,
            call_mode_code: Some(0),
            custom_fields: HashMap::from([
                ("data1".to_owned(), format!("KH{:08}", index % 100_000_000)),
                (
                    "data2".to_owned(),
                    format!(
                        "{company}-{}",
                        (dial_time + Duration::hours(8)).format("%m月批次")
                    ),
                ),
            ]),
            ..proto::CallRecord::default()
        };

        match unanswered {
            Some(&(outcome, _, number_status, cause, sip)) => {
                let hangup_time = dial_time + Duration::milliseconds(ring_ms);
                record.outcome = outcome as i32;
                record.number_status = number_status as i32;
                record.hangup_cause = cause.to_owned();
                record.sip_code = sip.to_owned();
                record.hangup_side = proto::HangupSide::System as i32;
                record.end_reason = "未接通".to_owned();
                record.hangup_time = Some(utc_to_timestamp(hangup_time));
                record.duration_ms = Some(ring_ms);
                record.talk_duration_ms = Some(0);
                record.billed_minutes = Some(0);
                record.rounds = Some(0);
                record.score = Some(0);
                record.level = Some(level(UNANSWERED_LEVEL.0, UNANSWERED_LEVEL.1));
                record.gender = proto::Gender::Unknown as i32;
                record.source_create_time = Some(utc_to_timestamp(hangup_time));
                record.source_update_time = Some(utc_to_timestamp(hangup_time));
            }
            None => {
                let answer_time = dial_time + Duration::milliseconds(ring_ms);
                answered(
                    rng,
                    &mut record,
                    company,
                    answer_time,
                    &date_path,
                    &source_call_id,
                    &callee,
                );
            }
        }
        record
    }
}

/// Fills in the answered part of a call: the dialogue, its timing, tags, score and level.
fn answered(
    rng: &mut StdRng,
    record: &mut proto::CallRecord,
    company: &str,
    answer_time: DateTime<Utc>,
    date_path: &str,
    source_call_id: &str,
    callee: &str,
) {
    let lines = dialogue(rng, company);
    let mut turns = Vec::with_capacity(lines.len());
    let mut cursor_ms: i64 = 0;
    let mut score: i64 = 0;
    let mut labels: Vec<String> = Vec::new();
    let mut asks = 0;
    let mut rounds = 0;
    let mut question_index = 0;
    let mut last_reply = String::new();
    let mut end_node = "";
    let suffix = &callee[callee.len().saturating_sub(4)..];
    let recording = format!("{date_path}/{source_call_id}_{suffix}");

    for (position, line) in lines.into_iter().enumerate() {
        let sequence = i32::try_from(position + 1).unwrap_or(i32::MAX);
        let chars = i64::try_from(line.text.chars().count()).unwrap_or(0);
        let node = proto::ScriptNode {
            id: line.node.0.to_owned(),
            name: line.node.1.to_owned(),
            node_class: if line.node_type == proto::NodeType::MainFlow {
                "16".to_owned()
            } else {
                "18".to_owned()
            },
            r#type: line.node_type as i32,
            trigger_title: line.node.1.to_owned(),
        };
        let mut turn = proto::Turn {
            sequence,
            speaker: line.speaker as i32,
            node: Some(node),
            source_turn_id: format!("talk_info_sn|{:032x}", rng.random::<u128>()),
            ..proto::Turn::default()
        };
        match line.reply {
            None => {
                // The robot: its audio plays for about 220 ms a character.
                let gap = rng.random_range(200..800);
                let play = chars * 220 + rng.random_range(0..800);
                let start = cursor_ms + gap;
                turn.start_offset_ms = Some(start);
                turn.end_offset_ms = Some(start + play);
                turn.play_ms = Some(play);
                turn.time = Some(utc_to_timestamp(
                    answer_time + Duration::milliseconds(start),
                ));
                turn.audio_file = format!(
                    "/usr/local/freeswitch/sounds/zh/cn/bench/{}.wav",
                    line.node.0
                );
                turn.audio_pieces = vec![proto::AudioPiece {
                    file_id: format!("{:032x}", rng.random::<u128>()),
                    sort: 0,
                    text: line.text.clone(),
                    duration_ms: play,
                    extra: None,
                }];
                end_node = line.node.1;
                cursor_ms = start + play;
            }
            Some(reply) => {
                // The customer: speech at about 250 ms a character, after the ASR's pause.
                let gap = rng.random_range(300..1500);
                let speak = chars * 250 + rng.random_range(200..800);
                let start = cursor_ms + gap;
                let (jump, delta, label) = match reply {
                    Reply::Positive => (proto::JumpType::Affirmative, 20, "有需求"),
                    Reply::Negative => (proto::JumpType::Negative, -15, "无需求"),
                    Reply::Neutral => (proto::JumpType::Neutral, 0, ""),
                    Reply::Question(_) => (proto::JumpType::Continue, 5, "有疑问"),
                    Reply::WantsHuman => (proto::JumpType::Continue, 10, "转人工"),
                };
                score += delta;
                rounds += 1;
                question_index += 1;
                if matches!(reply, Reply::Question(_)) {
                    asks += 1;
                }
                if !label.is_empty() && !labels.iter().any(|known| known == label) {
                    labels.push(label.to_owned());
                }
                turn.start_offset_ms = Some(start);
                turn.end_offset_ms = Some(start + speak);
                turn.speak_ms = Some(speak);
                turn.record_ms = Some(speak + rng.random_range(100..600));
                turn.time = Some(utc_to_timestamp(
                    answer_time + Duration::milliseconds(start),
                ));
                turn.matched_keyword = line.text.clone();
                turn.match_type = Some(2);
                turn.jump_type = jump as i32;
                turn.score_delta = Some(delta);
                turn.label = label.to_owned();
                turn.asr_engine = "aliyun".to_owned();
                turn.asr_latency_ms = Some(rng.random_range(300..1200));
                turn.volume_gain = Some(f64::from(rng.random_range(400_u32..900)) / 100.0);
                turn.question_index = Some(question_index);
                turn.audio_file = format!(
                    "/mnt/record/{date_path}/segmental_record/subsection_{}_{source_call_id}_{sequence}.wav",
                    line.node.0
                );
                last_reply = line.text.clone();
                cursor_ms = start + speak;
            }
        }
        turn.text = line.text;
        turns.push(turn);
    }

    let talk_ms = cursor_ms + rng.random_range(500..2500);
    let hangup_time = answer_time + Duration::milliseconds(talk_ms);
    let dial_time = record
        .dial_time
        .as_ref()
        .and_then(callstore::api::convert::timestamp_to_utc)
        .unwrap_or(answer_time);
    let hangup_side = match rng.random_range(0..100) {
        0..55 => proto::HangupSide::Customer,
        55..95 => proto::HangupSide::Robot,
        _ => proto::HangupSide::System,
    };
    let (level_id, level_name) = LEVELS
        .iter()
        .find(|(_, _, lowest)| score >= *lowest)
        .map_or(("D", "D级"), |(id, name, _)| (*id, *name));

    let tag_count = rng.random_range(0..=5);
    let tags = rand::seq::index::sample(rng, TAGS.len(), tag_count)
        .iter()
        .map(|position| proto::Tag {
            source_tag_id: TAGS[position].0.to_owned(),
            name: TAGS[position].1.to_owned(),
            ..proto::Tag::default()
        })
        .collect();

    record.outcome = proto::CallOutcome::Answered as i32;
    record.number_status = proto::NumberStatus::Connected as i32;
    record.hangup_cause = "NORMAL_CLEARING".to_owned();
    record.sip_code = "200".to_owned();
    record.hangup_side = hangup_side as i32;
    record.end_reason = match hangup_side {
        proto::HangupSide::Customer => "对方挂机",
        proto::HangupSide::Robot => "机器人挂机",
        _ => "系统挂机",
    }
    .to_owned();
    record.answer_time = Some(utc_to_timestamp(answer_time));
    record.hangup_time = Some(utc_to_timestamp(hangup_time));
    record.duration_ms = Some((hangup_time - dial_time).num_milliseconds());
    record.talk_duration_ms = Some(talk_ms);
    record.billed_minutes = Some(i32::try_from((talk_ms + 59_999) / 60_000).unwrap_or(i32::MAX));
    record.rounds = Some(rounds);
    record.asks_count = Some(asks);
    record.score = Some(score);
    record.level = Some(level(level_id, level_name));
    record.gender = *pick(
        rng,
        &[
            proto::Gender::Unknown as i32,
            proto::Gender::Female as i32,
            proto::Gender::Male as i32,
            proto::Gender::ProbablyFemale as i32,
            proto::Gender::ProbablyMale as i32,
        ],
    );
    record.last_reply = last_reply;
    record.end_node = end_node.to_owned();
    record.classification = Some(proto::Classification {
        intent_class: level_id.to_owned(),
        ..proto::Classification::default()
    });
    record.labels = labels;
    record.first_connected = Some(rng.random_bool(0.8));
    record.record_path = "/mnt/record".to_owned();
    record.record_file = format!("/mnt/record/{recording}.wav");
    record.tags = tags;
    record.turns = turns;
    record.source_create_time = Some(utc_to_timestamp(hangup_time));
    record.source_update_time = Some(utc_to_timestamp(
        hangup_time + Duration::seconds(rng.random_range(1..60)),
    ));
}

/// The lines of an answered call: 8–20 turns, robot and customer alternating, the robot first.
fn dialogue(rng: &mut StdRng, company: &str) -> Vec<Line> {
    let count = rng.random_range(8..=20);
    let mut lines = Vec::with_capacity(count);
    let mut flow = 0;
    let mut pending: Option<Reply> = None;
    for position in 0..count {
        let last = position + 1 == count;
        if position % 2 == 0 {
            // The robot answers the previous reply: a question gets its business answer, a
            // request for a human the transfer, anything else moves the main flow on.
            let (node, node_type) = match pending {
                _ if position == 0 => (OPENING, proto::NodeType::MainFlow),
                _ if last || position + 2 == count => (CLOSING, proto::NodeType::MainFlow),
                Some(Reply::Question(question)) => (
                    BUSINESS_QUESTIONS[question],
                    proto::NodeType::BusinessQuestion,
                ),
                Some(Reply::WantsHuman) => (TRANSFER_NODE, proto::NodeType::TransferToHuman),
                _ => {
                    let node = MAIN_FLOW[flow % MAIN_FLOW.len()];
                    flow += 1;
                    (node, proto::NodeType::MainFlow)
                }
            };
            lines.push(Line {
                speaker: proto::Speaker::Robot,
                text: node.2.replace("{company}", company),
                node,
                node_type,
                reply: None,
            });
        } else {
            let reply = match rng.random_range(0..100) {
                0..40 => Reply::Positive,
                40..60 => Reply::Negative,
                60..80 => Reply::Neutral,
                80..96 => Reply::Question(rng.random_range(0..QUESTION_REPLIES.len())),
                _ => Reply::WantsHuman,
            };
            let text = match reply {
                Reply::Positive => pick(rng, POSITIVE_REPLIES),
                Reply::Negative => pick(rng, NEGATIVE_REPLIES),
                Reply::Neutral => pick(rng, NEUTRAL_REPLIES),
                Reply::Question(question) => &QUESTION_REPLIES[question],
                Reply::WantsHuman => pick(rng, HUMAN_REPLIES),
            };
            let node = lines.last().map_or(OPENING, |robot: &Line| robot.node);
            lines.push(Line {
                speaker: proto::Speaker::Customer,
                text: (*text).to_owned(),
                node,
                node_type: lines
                    .last()
                    .map_or(proto::NodeType::MainFlow, |robot| robot.node_type),
                reply: Some(reply),
            });
            pending = Some(reply);
        }
    }
    lines
}

/// A Chinese mobile number (1[3-9] + 9 digits) with its carrier.
fn callee(rng: &mut StdRng) -> (String, proto::Carrier, &'static str) {
    let (prefixes, carrier, name) = match rng.random_range(0..100) {
        0..55 => (MOBILE_PREFIXES, proto::Carrier::ChinaMobile, "移动"),
        55..80 => (UNICOM_PREFIXES, proto::Carrier::ChinaUnicom, "联通"),
        _ => (TELECOM_PREFIXES, proto::Carrier::ChinaTelecom, "电信"),
    };
    let number = format!(
        "{}{:08}",
        pick(rng, prefixes),
        rng.random_range(0..100_000_000)
    );
    (number, carrier, name)
}

fn level(source_level_id: &str, name: &str) -> proto::Level {
    proto::Level {
        source_level_id: source_level_id.to_owned(),
        name: name.to_owned(),
        ..proto::Level::default()
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    // Every pool is a non-empty constant.
    items.choose(rng).unwrap_or(&items[0])
}

/// SplitMix64 of the seed and the index: well-spread RNG seeds for neighbouring indexes.
fn mix(seed: u64, index: u64) -> u64 {
    let mut state = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    state ^ (state >> 31)
}

/// Checks the invariants every generated call keeps, beyond the server's validation: the
/// dialogue's shape and timing, the tag count, the callee's format. The bench runs it on its
/// first calls and the oracle test can run it on any; it returns what is wrong.
pub fn check_invariants(record: &proto::CallRecord) -> Result<(), String> {
    let callee = record.callee.as_bytes();
    let mobile = callee.len() == 11
        && callee[0] == b'1'
        && (b'3'..=b'9').contains(&callee[1])
        && callee.iter().all(u8::is_ascii_digit);
    if !mobile {
        return Err(format!(
            "callee {} is not a Chinese mobile number",
            record.callee
        ));
    }
    if record.source_system != BENCH_SOURCE_SYSTEM {
        return Err(format!("source_system is {:?}", record.source_system));
    }
    if record.tags.len() > 5 {
        return Err(format!("{} tags, at most 5", record.tags.len()));
    }
    let mut tag_ids: Vec<&str> = record
        .tags
        .iter()
        .map(|tag| tag.source_tag_id.as_str())
        .collect();
    tag_ids.sort_unstable();
    tag_ids.dedup();
    if tag_ids.len() != record.tags.len() {
        return Err("a tag is repeated".to_owned());
    }
    if record.level.is_none() || record.score.is_none() {
        return Err("no level or score".to_owned());
    }
    let answered = record.outcome == proto::CallOutcome::Answered as i32;
    if !answered {
        return if record.turns.is_empty() && record.answer_time.is_none() {
            Ok(())
        } else {
            Err("an unanswered call has turns or an answer time".to_owned())
        };
    }
    if !(8..=20).contains(&record.turns.len()) {
        return Err(format!("{} turns, expected 8-20", record.turns.len()));
    }
    let talk = record.talk_duration_ms.unwrap_or_default();
    let mut previous_end = 0;
    for (position, turn) in record.turns.iter().enumerate() {
        let expected = if position % 2 == 0 {
            proto::Speaker::Robot
        } else {
            proto::Speaker::Customer
        };
        if turn.speaker != expected as i32 {
            return Err(format!("turn {position} is not spoken by {expected:?}"));
        }
        let (Some(start), Some(end)) = (turn.start_offset_ms, turn.end_offset_ms) else {
            return Err(format!("turn {position} has no offsets"));
        };
        if start < previous_end || end < start || end > talk {
            return Err(format!(
                "turn {position} spans {start}..{end} ms after {previous_end} ms, talk time {talk} ms"
            ));
        }
        previous_end = end;
    }
    let ring = record.duration_ms.unwrap_or_default() - talk;
    if ring <= 0 {
        return Err(format!(
            "duration {:?} is not longer than the talk time {talk}",
            record.duration_ms
        ));
    }
    Ok(())
}
