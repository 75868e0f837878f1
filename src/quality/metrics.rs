//! Metrics of a dialogue: per side speaking time, share and rate; silences and interruptions
//! between turns; the customer's last reply and the node the script ended on.

use crate::domain::quality::SideMetrics;
use crate::proto::Speaker;
use crate::quality::{Dialogue, Timing};

/// A silence between two turns: nobody spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The turn that held the floor before the silence.
    pub after_sequence: i32,
    /// The turn that broke it.
    pub before_sequence: i32,
    pub ms: i64,
}

/// An interruption: a turn of another side that started before the floor was free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// The interrupting turn.
    pub sequence: i32,
    pub ms: i64,
}

/// What [`measure`] finds. `None` means the dialogue's timing cannot support the metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Robot, customer, agent: each side with at least one utterance, in that order.
    pub sides: Vec<SideMetrics>,
    /// The call's length the ratios are shares of.
    pub duration_ms: Option<i64>,
    pub silence_time_ms: Option<i64>,
    pub longest_silence_ms: Option<i64>,
    pub interruption_count: Option<i32>,
    pub interruption_overlap_ms: Option<i64>,
    pub customer_last_reply: Option<String>,
    pub end_node: Option<String>,
    /// Every silence, in time order; empty when silences cannot be computed.
    pub gaps: Vec<Gap>,
    /// Every interruption, in time order; empty when they cannot be computed.
    pub overlaps: Vec<Overlap>,
}

/// The sides measured, in the order they are reported.
const SIDES: [Speaker; 3] = [Speaker::Robot, Speaker::Customer, Speaker::Agent];

/// Measures a dialogue: one [`SideMetrics`] per side that spoke (robot, customer, agent), the
/// call's length the ratios are shares of, the silences and interruptions when every utterance
/// has a valid span, the customer's last reply and the node the script ended on.
///
/// A metric the dialogue's timing cannot support is `None`, never 0.
pub fn measure(dialogue: &Dialogue) -> Metrics {
    let denominator = denominator(dialogue);
    let sides = SIDES
        .iter()
        .filter_map(|&speaker| side_metrics(dialogue, speaker, denominator))
        .collect();

    let mut metrics = Metrics {
        sides,
        duration_ms: denominator,
        customer_last_reply: customer_last_reply(dialogue),
        end_node: end_node(dialogue),
        ..Metrics::default()
    };

    if let Some(timeline) = timeline(dialogue) {
        metrics.silence_time_ms = Some(
            timeline
                .gaps
                .iter()
                .fold(0_i64, |sum, gap| sum.saturating_add(gap.ms)),
        );
        metrics.longest_silence_ms =
            Some(timeline.gaps.iter().map(|gap| gap.ms).max().unwrap_or(0));
        metrics.interruption_count = Some(count_i32(timeline.overlaps.len()));
        metrics.interruption_overlap_ms = Some(
            timeline
                .overlaps
                .iter()
                .fold(0_i64, |sum, overlap| sum.saturating_add(overlap.ms)),
        );
        metrics.gaps = timeline.gaps;
        metrics.overlaps = timeline.overlaps;
    }

    metrics
}

/// A valid span: `(start_ms, end_ms)` with `0 <= start_ms <= end_ms`.
fn valid_span(timing: Timing) -> Option<(i64, i64)> {
    match timing {
        Timing::Span { start_ms, end_ms } if start_ms >= 0 && end_ms >= start_ms => {
            Some((start_ms, end_ms))
        }
        _ => None,
    }
}

/// How long an utterance lasted, when its timing tells (and is valid).
fn length_ms(timing: Timing) -> Option<i64> {
    match timing {
        Timing::Span { .. } => valid_span(timing).map(|(start, end)| end.saturating_sub(start)),
        Timing::Duration { ms } if ms >= 0 => Some(ms),
        Timing::Duration { .. } | Timing::Start { .. } | Timing::Unknown => None,
    }
}

/// The spans of every utterance, when the dialogue has utterances and all carry a valid span.
fn all_spans(dialogue: &Dialogue) -> Option<Vec<(i64, i64)>> {
    if dialogue.utterances.is_empty() {
        return None;
    }
    dialogue
        .utterances
        .iter()
        .map(|utterance| valid_span(utterance.timing))
        .collect()
}

/// The length the speech ratios are shares of: the talk time when known and positive, else the
/// timeline's length when every utterance has a valid span and it is positive.
fn denominator(dialogue: &Dialogue) -> Option<i64> {
    if let Some(talk) = dialogue.talk_duration_ms.filter(|&ms| ms > 0) {
        return Some(talk);
    }
    let spans = all_spans(dialogue)?;
    let first_start = spans.iter().map(|&(start, _)| start).min()?;
    let last_end = spans.iter().map(|&(_, end)| end).max()?;
    Some(last_end.saturating_sub(first_start)).filter(|&ms| ms > 0)
}

/// The metrics of one side, when it has at least one utterance.
fn side_metrics(
    dialogue: &Dialogue,
    speaker: Speaker,
    denominator: Option<i64>,
) -> Option<SideMetrics> {
    let mut utterances = dialogue
        .utterances
        .iter()
        .filter(|utterance| utterance.speaker == speaker)
        .peekable();
    utterances.peek()?;

    let mut turns: usize = 0;
    let mut characters: usize = 0;
    let mut speaking_time_ms: Option<i64> = Some(0);
    for utterance in utterances {
        if !utterance.text.trim().is_empty() {
            turns = turns.saturating_add(1);
        }
        characters = characters.saturating_add(
            utterance
                .text
                .chars()
                .filter(|&character| is_letter_or_digit(character))
                .count(),
        );
        speaking_time_ms = speaking_time_ms
            .zip(length_ms(utterance.timing))
            .map(|(sum, length)| sum.saturating_add(length));
    }

    // Lossy conversions to f64 are intended: ratios and rates are approximate by nature.
    let speech_ratio = speaking_time_ms
        .zip(denominator)
        .map(|(speaking, total)| speaking as f64 / total as f64);
    let speaking_rate_cpm = speaking_time_ms
        .filter(|&ms| ms > 0)
        .map(|ms| characters as f64 * 60_000.0 / ms as f64);

    Some(SideMetrics {
        speaker,
        channel: None,
        speaking_time_ms,
        speech_ratio,
        speaking_rate_cpm,
        turn_count: Some(count_i32(turns)),
        silence_time_ms: None,
        emotions: Vec::new(),
    })
}

/// Silences and interruptions of a dialogue whose utterances all carry a valid span.
struct Timeline {
    gaps: Vec<Gap>,
    overlaps: Vec<Overlap>,
}

/// Walks the utterances in time order, tracking who holds the floor and until when.
fn timeline(dialogue: &Dialogue) -> Option<Timeline> {
    // Every utterance must have a valid span; otherwise the timeline is unknown.
    all_spans(dialogue)?;
    let mut spans: Vec<(i64, i64, i32, Speaker)> = dialogue
        .utterances
        .iter()
        .filter_map(|utterance| {
            valid_span(utterance.timing)
                .map(|(start, end)| (start, end, utterance.sequence, utterance.speaker))
        })
        .collect();
    spans.sort_by_key(|&(start, _, sequence, _)| (start, sequence));

    let mut iter = spans.into_iter();
    let (_, mut floor_end, mut floor_sequence, mut floor_speaker) = iter.next()?;
    let mut gaps = Vec::new();
    let mut overlaps = Vec::new();
    for (start, end, sequence, speaker) in iter {
        if start > floor_end {
            gaps.push(Gap {
                after_sequence: floor_sequence,
                before_sequence: sequence,
                ms: start.saturating_sub(floor_end),
            });
        } else if start < floor_end && speaker != floor_speaker {
            let ms = end.min(floor_end).saturating_sub(start);
            if ms > 0 {
                overlaps.push(Overlap { sequence, ms });
            }
        }
        if end > floor_end {
            floor_end = end;
            floor_sequence = sequence;
            floor_speaker = speaker;
        }
    }
    Some(Timeline { gaps, overlaps })
}

/// The trimmed text of the customer's last non-blank utterance.
fn customer_last_reply(dialogue: &Dialogue) -> Option<String> {
    dialogue
        .utterances
        .iter()
        .rev()
        .filter(|utterance| utterance.speaker == Speaker::Customer)
        .map(|utterance| utterance.text.trim())
        .find(|text| !text.is_empty())
        .map(str::to_owned)
}

/// The node the script ended on: the source's word when it gives one, else the node of the last
/// utterance that names one.
fn end_node(dialogue: &Dialogue) -> Option<String> {
    if let Some(node) = dialogue
        .end_node
        .as_ref()
        .filter(|node| !node.trim().is_empty())
    {
        return Some(node.clone());
    }
    dialogue
        .utterances
        .iter()
        .rev()
        .filter_map(|utterance| utterance.node.as_ref())
        .find(|node| !node.trim().is_empty())
        .cloned()
}

/// A count as the `i32` the metrics carry, saturating.
fn count_i32(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// `char::is_alphanumeric`, without its table lookup for the CJK unified ideographs (all
/// letters), which are most of a Chinese dialogue.
fn is_letter_or_digit(character: char) -> bool {
    ('\u{4E00}'..='\u{9FFF}').contains(&character) || character.is_alphanumeric()
}

#[cfg(test)]
mod tests {

    #[test]
    fn letters_and_digits_are_counted_as_char_is_alphanumeric_counts_them() {
        for code in 0x4E00..=0x9FFF_u32 {
            if let Some(character) = char::from_u32(code) {
                assert_eq!(
                    is_letter_or_digit(character),
                    character.is_alphanumeric(),
                    "U+{code:04X}"
                );
            }
        }
        for character in ['a', '7', '，', ' ', 'é', '〇', '々', '!'] {
            assert_eq!(is_letter_or_digit(character), character.is_alphanumeric());
        }
    }

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::call::Turn;
    use crate::domain::quality::Segment;
    use crate::quality::Utterance;

    fn assert_close(actual: Option<f64>, expected: f64) {
        let actual = actual.unwrap_or(f64::NAN);
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    fn side(metrics: &Metrics, speaker: Speaker) -> &SideMetrics {
        metrics
            .sides
            .iter()
            .find(|side| side.speaker == speaker)
            .unwrap_or_else(|| panic!("no side {speaker:?}"))
    }

    fn speakers(metrics: &Metrics) -> Vec<Speaker> {
        metrics.sides.iter().map(|side| side.speaker).collect()
    }

    fn assert_no_timeline(metrics: &Metrics) {
        assert_eq!(metrics.silence_time_ms, None);
        assert_eq!(metrics.longest_silence_ms, None);
        assert_eq!(metrics.interruption_count, None);
        assert_eq!(metrics.interruption_overlap_ms, None);
        assert!(metrics.gaps.is_empty());
        assert!(metrics.overlaps.is_empty());
    }

    fn utterance(sequence: i32, speaker: Speaker, text: &str, timing: Timing) -> Utterance {
        Utterance {
            sequence,
            speaker,
            text: text.to_owned(),
            timing,
            node: None,
        }
    }

    fn span(start_ms: i64, end_ms: i64) -> Timing {
        Timing::Span { start_ms, end_ms }
    }

    fn dialogue(utterances: Vec<Utterance>, talk_duration_ms: Option<i64>) -> Dialogue {
        Dialogue {
            utterances,
            talk_duration_ms,
            end_node: None,
        }
    }

    fn segment(segment_id: i64, speaker: Speaker, text: &str, start: i64, end: i64) -> Segment {
        Segment {
            segment_id,
            speaker,
            text: text.to_owned(),
            start_offset_ms: start,
            end_offset_ms: end,
        }
    }

    #[test]
    fn task_api_durations_give_speaking_times_but_no_timeline() {
        let robot = |sequence: i32, text: &str, play_ms: i64, node: &str| Turn {
            sequence,
            speaker: Speaker::Robot,
            text: text.to_owned(),
            play_ms: Some(play_ms),
            // Ignored for a robot line: its duration is play_ms.
            speak_ms: Some(99_999),
            node_name: Some(node.to_owned()),
            ..Turn::default()
        };
        let customer = |sequence: i32, text: &str, speak_ms: i64| Turn {
            sequence,
            speaker: Speaker::Customer,
            text: text.to_owned(),
            speak_ms: Some(speak_ms),
            ..Turn::default()
        };
        // Given out of order: the dialogue sorts by sequence.
        let turns = vec![
            robot(3, "好的，那再见了！", 2000, "结束语"),
            robot(1, "您好，我是小王。", 1000, "开场白"),
            customer(2, "嗯, ok 1", 1500),
            customer(4, "  ", 500),
        ];
        let dialogue = Dialogue::from_turns(&turns, Some(10_000), None);
        assert_eq!(dialogue.utterances[0].timing, Timing::Duration { ms: 1000 });
        let metrics = measure(&dialogue);

        assert_eq!(speakers(&metrics), vec![Speaker::Robot, Speaker::Customer]);
        assert_eq!(metrics.duration_ms, Some(10_000));

        // Robot: 6 + 6 alphanumeric chars in 1000 + 2000 ms = 12 / 0.05 min = 240 cpm.
        let robot = side(&metrics, Speaker::Robot);
        assert_eq!(robot.turn_count, Some(2));
        assert_eq!(robot.speaking_time_ms, Some(3000));
        assert_close(robot.speech_ratio, 0.3);
        assert_close(robot.speaking_rate_cpm, 240.0);
        assert_eq!(robot.channel, None);
        assert_eq!(robot.silence_time_ms, None);
        assert!(robot.emotions.is_empty());

        // Customer: 嗯 o k 1 = 4 chars in 1500 + 500 ms = 4 / (2000 / 60000) = 120 cpm; the
        // blank line counts in the speaking time but not as a turn.
        let customer = side(&metrics, Speaker::Customer);
        assert_eq!(customer.turn_count, Some(1));
        assert_eq!(customer.speaking_time_ms, Some(2000));
        assert_close(customer.speech_ratio, 0.2);
        assert_close(customer.speaking_rate_cpm, 120.0);

        assert_no_timeline(&metrics);
        assert_eq!(metrics.customer_last_reply.as_deref(), Some("嗯, ok 1"));
        assert_eq!(metrics.end_node.as_deref(), Some("结束语"));
    }

    #[test]
    fn hangup_push_start_times_give_counts_but_no_lengths() {
        let at = |second: u32| Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, second).single();
        let turn = |sequence: i32, speaker: Speaker, text: &str, second: u32| Turn {
            sequence,
            speaker,
            text: text.to_owned(),
            time: at(second),
            ..Turn::default()
        };
        let turns = vec![
            Turn {
                node_name: Some("开场白".to_owned()),
                ..turn(1, Speaker::Robot, "您好", 0)
            },
            turn(2, Speaker::Customer, " 不需要，谢谢 ", 3),
            Turn {
                node_name: Some("挂机".to_owned()),
                ..turn(3, Speaker::Robot, "好的再见", 5)
            },
            turn(4, Speaker::Customer, "", 8),
        ];
        let dialogue = Dialogue::from_turns(&turns, Some(12_000), None);
        assert_eq!(dialogue.utterances[1].timing, Timing::Start { at_ms: 3000 });
        let metrics = measure(&dialogue);

        assert_eq!(speakers(&metrics), vec![Speaker::Robot, Speaker::Customer]);
        assert_eq!(metrics.duration_ms, Some(12_000));
        for (speaker, turns) in [(Speaker::Robot, 2), (Speaker::Customer, 1)] {
            let side = side(&metrics, speaker);
            assert_eq!(side.turn_count, Some(turns));
            assert_eq!(side.speaking_time_ms, None);
            assert_eq!(side.speech_ratio, None);
            assert_eq!(side.speaking_rate_cpm, None);
        }
        assert_no_timeline(&metrics);
        assert_eq!(metrics.customer_last_reply.as_deref(), Some("不需要，谢谢"));
        assert_eq!(metrics.end_node.as_deref(), Some("挂机"));
    }

    #[test]
    fn huawei_segments_give_every_metric() {
        let segments = vec![
            segment(1, Speaker::Robot, "您好，这里是客服中心。", 0, 3000),
            // 2 s of silence after segment 1.
            segment(2, Speaker::Customer, "我想查一下账单", 5000, 7000),
            // The robot cuts in 400 ms before the customer is done.
            segment(3, Speaker::Robot, "请稍等", 6600, 9000),
            // Same speaker overlapping itself: not an interruption.
            segment(4, Speaker::Robot, "马上为您查询", 8500, 9500),
            // 1.5 s of silence after segment 4.
            segment(5, Speaker::Customer, "好的，谢谢", 11_000, 12_000),
        ];
        let dialogue = Dialogue::from_segments(&segments, Some(15_000));
        let metrics = measure(&dialogue);

        assert_eq!(speakers(&metrics), vec![Speaker::Robot, Speaker::Customer]);
        assert_eq!(metrics.duration_ms, Some(15_000));

        // Robot: 3000 + 2400 + 1000 ms; 9 + 3 + 6 = 18 chars → 18 * 60000 / 6400 = 168.75.
        let robot = side(&metrics, Speaker::Robot);
        assert_eq!(robot.turn_count, Some(3));
        assert_eq!(robot.speaking_time_ms, Some(6400));
        assert_close(robot.speech_ratio, 6400.0 / 15_000.0);
        assert_close(robot.speaking_rate_cpm, 168.75);

        // Customer: 2000 + 1000 ms; 7 + 4 = 11 chars → 11 * 60000 / 3000 = 220.
        let customer = side(&metrics, Speaker::Customer);
        assert_eq!(customer.turn_count, Some(2));
        assert_eq!(customer.speaking_time_ms, Some(3000));
        assert_close(customer.speech_ratio, 0.2);
        assert_close(customer.speaking_rate_cpm, 220.0);

        assert_eq!(metrics.silence_time_ms, Some(3500));
        assert_eq!(metrics.longest_silence_ms, Some(2000));
        assert_eq!(metrics.interruption_count, Some(1));
        assert_eq!(metrics.interruption_overlap_ms, Some(400));
        assert_eq!(
            metrics.gaps,
            vec![
                Gap {
                    after_sequence: 1,
                    before_sequence: 2,
                    ms: 2000
                },
                Gap {
                    after_sequence: 4,
                    before_sequence: 5,
                    ms: 1500
                },
            ]
        );
        assert_eq!(
            metrics.overlaps,
            vec![Overlap {
                sequence: 3,
                ms: 400
            }]
        );
        assert_eq!(metrics.customer_last_reply.as_deref(), Some("好的，谢谢"));
        assert_eq!(metrics.end_node, None);

        // Without the call's duration, the timeline's length (12000 - 0) is the denominator.
        let without_duration = measure(&Dialogue {
            talk_duration_ms: None,
            ..dialogue
        });
        assert_eq!(without_duration.duration_ms, Some(12_000));
        assert_close(
            side(&without_duration, Speaker::Customer).speech_ratio,
            0.25,
        );
    }

    #[test]
    fn native_offsets_with_an_agent_after_transfer() {
        let turn = |sequence: i32, speaker: Speaker, text: &str, start: i64, end: i64| Turn {
            sequence,
            speaker,
            text: text.to_owned(),
            start_offset_ms: Some(start),
            end_offset_ms: Some(end),
            // Offsets win over durations.
            speak_ms: Some(1),
            play_ms: Some(1),
            ..Turn::default()
        };
        let turns = vec![
            Turn {
                node_name: Some("询问转人工".to_owned()),
                ..turn(1, Speaker::Robot, "您好，需要转人工吗？", 0, 4000)
            },
            turn(2, Speaker::Customer, "需要", 4500, 5500),
            Turn {
                node_id: Some("node-9".to_owned()),
                node_name: Some("转人工".to_owned()),
                ..turn(3, Speaker::Robot, "正在为您转接", 5800, 7000)
            },
            Turn {
                after_transfer: true,
                ..turn(
                    4,
                    Speaker::Agent,
                    "您好，我是客服小李，请讲。",
                    9000,
                    15_000,
                )
            },
            turn(5, Speaker::Customer, "我想改地址", 14_000, 16_000),
            Turn {
                after_transfer: true,
                ..turn(6, Speaker::Agent, "好的", 16_000, 18_000)
            },
        ];
        // A blank end node from the source falls back to the last node of the dialogue.
        let dialogue = Dialogue::from_turns(&turns, None, Some("  ".to_owned()));
        let metrics = measure(&dialogue);

        assert_eq!(
            speakers(&metrics),
            vec![Speaker::Robot, Speaker::Customer, Speaker::Agent]
        );
        // No talk time: the timeline 0..18000 is the denominator.
        assert_eq!(metrics.duration_ms, Some(18_000));

        // Robot: 4000 + 1200 ms, 8 + 6 = 14 chars → 14 * 60000 / 5200.
        let robot = side(&metrics, Speaker::Robot);
        assert_eq!(robot.turn_count, Some(2));
        assert_eq!(robot.speaking_time_ms, Some(5200));
        assert_close(robot.speech_ratio, 5200.0 / 18_000.0);
        assert_close(robot.speaking_rate_cpm, 840_000.0 / 5200.0);

        // Customer: 1000 + 2000 ms, 2 + 5 = 7 chars → 140 cpm.
        let customer = side(&metrics, Speaker::Customer);
        assert_eq!(customer.turn_count, Some(2));
        assert_eq!(customer.speaking_time_ms, Some(3000));
        assert_close(customer.speech_ratio, 1.0 / 6.0);
        assert_close(customer.speaking_rate_cpm, 140.0);

        // Agent: 6000 + 2000 ms, 10 + 2 = 12 chars → 90 cpm.
        let agent = side(&metrics, Speaker::Agent);
        assert_eq!(agent.turn_count, Some(2));
        assert_eq!(agent.speaking_time_ms, Some(8000));
        assert_close(agent.speech_ratio, 4.0 / 9.0);
        assert_close(agent.speaking_rate_cpm, 90.0);

        // Gaps 500 + 300 + 2000; the customer cuts in on the agent 1000 ms early; turn 6
        // starts exactly when turn 5 ends: neither gap nor overlap.
        assert_eq!(
            metrics.gaps,
            vec![
                Gap {
                    after_sequence: 1,
                    before_sequence: 2,
                    ms: 500
                },
                Gap {
                    after_sequence: 2,
                    before_sequence: 3,
                    ms: 300
                },
                Gap {
                    after_sequence: 3,
                    before_sequence: 4,
                    ms: 2000
                },
            ]
        );
        assert_eq!(
            metrics.overlaps,
            vec![Overlap {
                sequence: 5,
                ms: 1000
            }]
        );
        assert_eq!(metrics.silence_time_ms, Some(2800));
        assert_eq!(metrics.longest_silence_ms, Some(2000));
        assert_eq!(metrics.interruption_count, Some(1));
        assert_eq!(metrics.interruption_overlap_ms, Some(1000));
        assert_eq!(metrics.customer_last_reply.as_deref(), Some("我想改地址"));
        assert_eq!(metrics.end_node.as_deref(), Some("转人工"));

        // The source's end node, when not blank, wins.
        let with_end_node = Dialogue::from_turns(&turns, None, Some("结束".to_owned()));
        assert_eq!(measure(&with_end_node).end_node.as_deref(), Some("结束"));
    }

    #[test]
    fn empty_dialogue_has_no_sides_and_nothing_known() {
        let metrics = measure(&Dialogue::default());
        assert_eq!(metrics, Metrics::default());
        assert!(metrics.sides.is_empty());
        assert_eq!(metrics.duration_ms, None);
        assert_no_timeline(&metrics);
        assert_eq!(metrics.customer_last_reply, None);
        assert_eq!(metrics.end_node, None);

        // A zero or negative talk time is not a denominator either.
        assert_eq!(measure(&dialogue(Vec::new(), Some(0))).duration_ms, None);
        assert_eq!(measure(&dialogue(Vec::new(), Some(-5))).duration_ms, None);
    }

    #[test]
    fn one_utterance_without_timing_makes_its_side_unknown_only() {
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "您好", Timing::Duration { ms: 2000 }),
                utterance(2, Speaker::Customer, "喂", Timing::Duration { ms: 1000 }),
                utterance(3, Speaker::Robot, "请问", Timing::Duration { ms: 1000 }),
                utterance(4, Speaker::Customer, "嗯", Timing::Unknown),
            ],
            Some(6000),
        ));
        let robot = side(&metrics, Speaker::Robot);
        assert_eq!(robot.speaking_time_ms, Some(3000));
        assert_close(robot.speech_ratio, 0.5);
        // 4 chars in 3000 ms = 80 cpm.
        assert_close(robot.speaking_rate_cpm, 80.0);

        let customer = side(&metrics, Speaker::Customer);
        assert_eq!(customer.turn_count, Some(2));
        assert_eq!(customer.speaking_time_ms, None);
        assert_eq!(customer.speech_ratio, None);
        assert_eq!(customer.speaking_rate_cpm, None);
        assert_no_timeline(&metrics);
        assert_eq!(metrics.customer_last_reply.as_deref(), Some("嗯"));
    }

    #[test]
    fn invalid_timings_count_as_unknown() {
        // End before start.
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "您好", span(0, 1000)),
                utterance(2, Speaker::Customer, "喂", span(5000, 4000)),
            ],
            None,
        ));
        assert_eq!(side(&metrics, Speaker::Robot).speaking_time_ms, Some(1000));
        assert_eq!(side(&metrics, Speaker::Customer).speaking_time_ms, None);
        // Not every utterance is a valid span: no timeline, no denominator.
        assert_eq!(metrics.duration_ms, None);
        assert_eq!(side(&metrics, Speaker::Robot).speech_ratio, None);
        assert_close(side(&metrics, Speaker::Robot).speaking_rate_cpm, 120.0);
        assert_no_timeline(&metrics);

        // Negative start and negative duration.
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "您好", span(-100, 1000)),
                utterance(2, Speaker::Customer, "喂", Timing::Duration { ms: -5 }),
            ],
            Some(2000),
        ));
        assert_eq!(side(&metrics, Speaker::Robot).speaking_time_ms, None);
        assert_eq!(side(&metrics, Speaker::Customer).speaking_time_ms, None);
        assert_eq!(metrics.duration_ms, Some(2000));
        assert_no_timeline(&metrics);
    }

    #[test]
    fn blank_texts_are_not_turns_nor_last_replies() {
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "", span(0, 1000)),
                utterance(2, Speaker::Customer, "  我考虑一下  ", span(1000, 2000)),
                utterance(3, Speaker::Robot, " \t\n", span(2000, 3000)),
                utterance(4, Speaker::Customer, "\u{3000}", span(3000, 4000)),
            ],
            None,
        ));
        let robot = side(&metrics, Speaker::Robot);
        assert_eq!(robot.turn_count, Some(0));
        assert_eq!(robot.speaking_time_ms, Some(2000));
        // No characters at all: a rate of 0, which is known.
        assert_close(robot.speaking_rate_cpm, 0.0);
        assert_eq!(side(&metrics, Speaker::Customer).turn_count, Some(1));
        assert_eq!(metrics.customer_last_reply.as_deref(), Some("我考虑一下"));
        assert_eq!(metrics.silence_time_ms, Some(0));
        assert_eq!(metrics.longest_silence_ms, Some(0));
        assert_eq!(metrics.interruption_count, Some(0));
        assert_eq!(metrics.interruption_overlap_ms, Some(0));
    }

    #[test]
    fn zero_speaking_time_has_no_rate() {
        let metrics = measure(&dialogue(
            vec![utterance(
                1,
                Speaker::Customer,
                "喂",
                Timing::Duration { ms: 0 },
            )],
            Some(1000),
        ));
        let customer = side(&metrics, Speaker::Customer);
        assert_eq!(customer.speaking_time_ms, Some(0));
        assert_close(customer.speech_ratio, 0.0);
        assert_eq!(customer.speaking_rate_cpm, None);
    }

    #[test]
    fn unspecified_speaker_has_no_side_but_holds_the_floor() {
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "您好", span(0, 1000)),
                utterance(2, Speaker::Unspecified, "（噪音）", span(2000, 3000)),
                utterance(3, Speaker::Customer, "喂", span(2500, 3500)),
            ],
            None,
        ));
        assert_eq!(speakers(&metrics), vec![Speaker::Robot, Speaker::Customer]);
        // Timeline 0..3500.
        assert_eq!(metrics.duration_ms, Some(3500));
        assert_eq!(
            metrics.gaps,
            vec![Gap {
                after_sequence: 1,
                before_sequence: 2,
                ms: 1000
            }]
        );
        assert_eq!(
            metrics.overlaps,
            vec![Overlap {
                sequence: 3,
                ms: 500
            }]
        );
        assert_eq!(metrics.interruption_overlap_ms, Some(500));

        let only_unspecified = measure(&dialogue(
            vec![utterance(1, Speaker::Unspecified, "嗯", span(0, 1000))],
            None,
        ));
        assert!(only_unspecified.sides.is_empty());
        assert_eq!(only_unspecified.duration_ms, Some(1000));
        assert_eq!(only_unspecified.silence_time_ms, Some(0));
    }

    #[test]
    fn a_turn_inside_another_overlaps_by_its_length() {
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Customer, "我跟你说啊", span(0, 10_000)),
                utterance(2, Speaker::Robot, "嗯", span(2000, 3000)),
                utterance(3, Speaker::Customer, "就这样", span(12_000, 13_000)),
            ],
            None,
        ));
        assert_eq!(
            metrics.overlaps,
            vec![Overlap {
                sequence: 2,
                ms: 1000
            }]
        );
        // The floor stays with turn 1 (it ends later), so the gap is after turn 1.
        assert_eq!(
            metrics.gaps,
            vec![Gap {
                after_sequence: 1,
                before_sequence: 3,
                ms: 2000
            }]
        );
        assert_eq!(metrics.silence_time_ms, Some(2000));
        assert_eq!(metrics.interruption_count, Some(1));
    }

    #[test]
    fn equal_starts_are_ordered_by_sequence() {
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "您好", span(1000, 2000)),
                utterance(2, Speaker::Customer, "喂", span(1000, 1500)),
                utterance(3, Speaker::Robot, "请讲", span(0, 500)),
            ],
            None,
        ));
        // Time order: 3 (0..500), 1 (1000..2000), 2 (1000..1500).
        assert_eq!(
            metrics.gaps,
            vec![Gap {
                after_sequence: 3,
                before_sequence: 1,
                ms: 500
            }]
        );
        assert_eq!(
            metrics.overlaps,
            vec![Overlap {
                sequence: 2,
                ms: 500
            }]
        );
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        let metrics = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "a", span(0, i64::MAX)),
                utterance(2, Speaker::Robot, "b", span(0, i64::MAX)),
                utterance(3, Speaker::Customer, "c", span(i64::MAX, i64::MAX)),
            ],
            None,
        ));
        assert_eq!(
            side(&metrics, Speaker::Robot).speaking_time_ms,
            Some(i64::MAX)
        );
        assert_eq!(metrics.duration_ms, Some(i64::MAX));
        assert_eq!(metrics.silence_time_ms, Some(0));
        assert_eq!(metrics.interruption_count, Some(0));

        let durations = measure(&dialogue(
            vec![
                utterance(1, Speaker::Agent, "x", Timing::Duration { ms: i64::MAX }),
                utterance(2, Speaker::Agent, "y", Timing::Duration { ms: i64::MAX }),
            ],
            Some(i64::MAX),
        ));
        let agent = side(&durations, Speaker::Agent);
        assert_eq!(agent.speaking_time_ms, Some(i64::MAX));
        assert_close(agent.speech_ratio, 1.0);

        let gaps = measure(&dialogue(
            vec![
                utterance(1, Speaker::Robot, "a", span(0, 0)),
                utterance(2, Speaker::Customer, "b", span(i64::MAX - 1, i64::MAX)),
                utterance(3, Speaker::Robot, "c", span(i64::MAX, i64::MAX)),
            ],
            None,
        ));
        assert_eq!(gaps.longest_silence_ms, Some(i64::MAX - 1));
        assert_eq!(gaps.silence_time_ms, Some(i64::MAX - 1));
    }
}
