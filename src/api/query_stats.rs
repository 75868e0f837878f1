//! GetTaskStats: a task's statistics over a window of dial times, read from rollups kept at
//! ingest (see `db::stats` and migration `20261123000002_call_stats.sql`).
//!
//! Definitions, over the calls of the task dialled in `[start_time, end_time)`:
//! - answered: outcome ANSWERED; `connect_rate` = answered / total (0 without calls);
//! - talk time: `talk_duration_ms` of answered calls that have one; `min`/`max`/`avg` are over
//!   those calls (0 when there is none), and a series point's `talk_duration_ms` is their sum;
//! - talk-time buckets: answered calls with a talk time; answer-delay buckets: answered calls,
//!   delay = answer time - dial time (calls without an answer time are not counted). Both use
//!   Huawei's cumulative labels, always all six, in this order: `lt_3s` (under 3 s), `lt_5s`,
//!   `lt_10s`, `lt_30s`, `lt_60s` (each counting the shorter ones too), `ge_60s` (60 s or more);
//! - transferred: transfer state neither UNSPECIFIED nor NOT_TRANSFERRED;
//! - `by_outcome`, `by_number_status`, `by_hangup_side`: keyed by enum name (e.g.
//!   `CALL_OUTCOME_ANSWERED`, unspecified values included; a number this release does not know
//!   by its number); `by_level` and `by_tag`: keyed by server id, calls without a level left
//!   out, a call counted once under each of its tags. Keys with a count of 0 are left out, and
//!   every list is sorted by key;
//! - series: one point per UTC hour or UTC day (its start), in time order; intervals without
//!   calls are left out.
//!
//! - quality: over the calls with a score in their latest computed quality result;
//!   `quality_score_buckets` keyed by each bucket's lower bound (`quality_score_bucket_width`,
//!   10 by default), ascending, empty buckets left out. Read from the results, not a rollup.
//!
//! Unset start: from the first call; unset end: now. Another tenant's task answers NOT_FOUND
//! exactly like an unknown one.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::convert::{optional_time, utc_to_timestamp};
use crate::db::quality;
use crate::db::stats::{self, CountRow, Dimension, SeriesInterval, StatsQuery, TaskStats};
use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::{
    CallOutcome, CountBucket, GetTaskStatsRequest, GetTaskStatsResponse, HangupSide, NumberStatus,
    StatsInterval, StatsPoint,
};

/// Labels of the talk-time and answer-delay buckets, in order.
pub const DURATION_LABELS: [&str; 6] = ["lt_3s", "lt_5s", "lt_10s", "lt_30s", "lt_60s", "ge_60s"];

pub(super) async fn get_task_stats(
    pool: &PgPool,
    tenant: &TenantId,
    request: GetTaskStatsRequest,
) -> Result<GetTaskStatsResponse, ApiError> {
    let query = stats_query(&request, Utc::now())?;
    let width = bucket_width(request.quality_score_bucket_width)?;
    let stats = stats::task_stats(pool, tenant, &query)
        .await?
        .ok_or(ApiError::NotFound { resource: "task" })?;
    let scores = quality::score_distribution(pool, tenant, &query, width).await?;
    let mut response = stats_response(stats, query.series);
    add_scores(&mut response, &scores, width);
    Ok(response)
}

/// Default width of the quality score buckets.
pub const DEFAULT_BUCKET_WIDTH: f64 = 10.0;

fn bucket_width(requested: Option<f64>) -> Result<f64, ApiError> {
    match requested {
        None => Ok(DEFAULT_BUCKET_WIDTH),
        Some(width) if width.is_finite() && width > 0.0 && width <= 1e9 => Ok(width),
        Some(_) => Err(ApiError::invalid_field(
            "quality_score_bucket_width",
            "must be a finite number above 0 (at most 1e9)",
        )),
    }
}

/// The quality part of the response.
fn add_scores(response: &mut GetTaskStatsResponse, buckets: &[quality::ScoreBucket], width: f64) {
    let scored: i64 = buckets.iter().map(|bucket| bucket.count).sum();
    let sum: f64 = buckets.iter().map(|bucket| bucket.sum).sum();
    response.scored_calls = scored;
    response.avg_quality_score = if scored == 0 {
        0.0
    } else {
        sum / scored as f64
    };
    response.min_quality_score = buckets.iter().map(|bucket| bucket.min).reduce(f64::min);
    response.max_quality_score = buckets.iter().map(|bucket| bucket.max).reduce(f64::max);
    response.quality_score_buckets = buckets
        .iter()
        .map(|bucket| CountBucket {
            key: format!("{}", bucket.index * width),
            count: bucket.count,
        })
        .collect();
}

/// Validates a request into a query; `now` ends a window without end.
fn stats_query(request: &GetTaskStatsRequest, now: DateTime<Utc>) -> Result<StatsQuery, ApiError> {
    if request.task_id.is_empty() {
        return Err(ApiError::invalid_field("task_id", "is required"));
    }
    let task_id = Uuid::parse_str(&request.task_id)
        .map_err(|_| ApiError::invalid_field("task_id", "must be a UUID"))?;
    let start = optional_time(request.start_time.as_ref(), "start_time")?;
    let end = optional_time(request.end_time.as_ref(), "end_time")?.unwrap_or(now);
    if let Some(start) = start
        && start >= end
    {
        let field = if request.end_time.is_some() {
            "end_time"
        } else {
            "start_time"
        };
        return Err(ApiError::invalid_field(
            field,
            "the window is empty: start_time must be before end_time (unset: now)",
        ));
    }
    let series = match StatsInterval::try_from(request.interval) {
        Ok(StatsInterval::Unspecified) => None,
        Ok(StatsInterval::Hour) => Some(SeriesInterval::Hour),
        Ok(StatsInterval::Day) => Some(SeriesInterval::Day),
        Err(_) => {
            return Err(ApiError::invalid_field(
                "interval",
                "is not a known StatsInterval",
            ));
        }
    };
    Ok(StatsQuery {
        task_id,
        start,
        end,
        series,
    })
}

/// The response for what the database read (see the module's definitions).
fn stats_response(stats: TaskStats, series: Option<SeriesInterval>) -> GetTaskStatsResponse {
    let total = |value: fn(&stats::PointRow) -> i64| stats.points.iter().map(value).sum::<i64>();
    let total_calls = total(|point| point.calls);
    let answered_calls = total(|point| point.answered);
    let talk_sum = total(|point| point.talk_sum);
    let talk_count = total(|point| point.talk_count);

    let mut by_outcome = Vec::new();
    let mut by_number_status = Vec::new();
    let mut by_hangup_side = Vec::new();
    let mut by_level = Vec::new();
    let mut by_tag = Vec::new();
    let mut talk_time = [0_i64; 6];
    let mut answer_delay = [0_i64; 6];
    for CountRow {
        dimension,
        code,
        id,
        count,
    } in &stats.counts
    {
        let Some(dimension) = Dimension::from_code(*dimension) else {
            continue;
        };
        let code = code.map(i32::from);
        match dimension {
            Dimension::Outcome => by_outcome.push(count_bucket(code, *count, |number| {
                CallOutcome::try_from(number)
                    .ok()
                    .map(|value| value.as_str_name())
            })),
            Dimension::NumberStatus => {
                by_number_status.push(count_bucket(code, *count, |number| {
                    NumberStatus::try_from(number)
                        .ok()
                        .map(|value| value.as_str_name())
                }))
            }
            Dimension::HangupSide => by_hangup_side.push(count_bucket(code, *count, |number| {
                HangupSide::try_from(number)
                    .ok()
                    .map(|value| value.as_str_name())
            })),
            Dimension::Level => by_level.push(id_bucket(*id, *count)),
            Dimension::Tag => by_tag.push(id_bucket(*id, *count)),
            Dimension::TalkTime => add_duration(&mut talk_time, code, *count),
            Dimension::AnswerDelay => add_duration(&mut answer_delay, code, *count),
        }
    }
    for buckets in [
        &mut by_outcome,
        &mut by_number_status,
        &mut by_hangup_side,
        &mut by_level,
        &mut by_tag,
    ] {
        buckets.sort_by(|left, right| left.key.cmp(&right.key));
    }

    GetTaskStatsResponse {
        total_calls,
        answered_calls,
        connect_rate: ratio(answered_calls, total_calls),
        by_outcome,
        by_number_status,
        talk_time_buckets: cumulative(talk_time),
        answer_delay_buckets: cumulative(answer_delay),
        min_talk_duration_ms: stats.talk_min.unwrap_or(0),
        max_talk_duration_ms: stats.talk_max.unwrap_or(0),
        avg_talk_duration_ms: ratio(talk_sum, talk_count),
        by_hangup_side,
        transferred_calls: total(|point| point.transferred),
        by_level,
        by_tag,
        series: match series {
            None => Vec::new(),
            Some(_) => stats
                .points
                .iter()
                .map(|point| StatsPoint {
                    start_time: Some(utc_to_timestamp(point.start)),
                    calls: point.calls,
                    answered: point.answered,
                    talk_duration_ms: point.talk_sum,
                })
                .collect(),
        },
        ..GetTaskStatsResponse::default()
    }
}

fn ratio(numerator: i64, denominator: i64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// A count keyed by an enum's name (by its number when this release does not know it).
fn count_bucket(
    code: Option<i32>,
    count: i64,
    name: impl Fn(i32) -> Option<&'static str>,
) -> CountBucket {
    let key = code.map_or_else(String::new, |number| {
        name(number).map_or_else(|| number.to_string(), str::to_owned)
    });
    CountBucket { key, count }
}

fn id_bucket(id: Option<Uuid>, count: i64) -> CountBucket {
    CountBucket {
        key: id.map(|id| id.to_string()).unwrap_or_default(),
        count,
    }
}

/// Adds a count of duration bucket `code` (0..=5, see `db::stats::DURATION_BUCKETS`).
fn add_duration(buckets: &mut [i64; 6], code: Option<i32>, count: i64) {
    if let Some(slot) = code
        .and_then(|code| usize::try_from(code).ok())
        .and_then(|index| buckets.get_mut(index))
    {
        *slot += count;
    }
}

/// Huawei's buckets: `lt_*` cumulative over the shorter ones, `ge_60s` on its own.
fn cumulative(buckets: [i64; 6]) -> Vec<CountBucket> {
    let mut running = 0;
    DURATION_LABELS
        .iter()
        .zip(buckets)
        .enumerate()
        .map(|(index, (label, count))| {
            running += count;
            CountBucket {
                key: (*label).to_owned(),
                count: if index + 1 == DURATION_LABELS.len() {
                    count
                } else {
                    running
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(task_id: &str) -> GetTaskStatsRequest {
        GetTaskStatsRequest {
            task_id: task_id.to_owned(),
            ..GetTaskStatsRequest::default()
        }
    }

    fn violation(error: ApiError) -> String {
        match error {
            ApiError::InvalidArgument(violations) => violations[0].field.clone(),
            other => panic!("not an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let now = Utc::now();
        let id = Uuid::now_v7().to_string();
        assert_eq!(
            violation(stats_query(&request(""), now).unwrap_err()),
            "task_id"
        );
        assert_eq!(
            violation(stats_query(&request("not-a-uuid"), now).unwrap_err()),
            "task_id"
        );
        let unknown_interval = GetTaskStatsRequest {
            interval: 7,
            ..request(&id)
        };
        assert_eq!(
            violation(stats_query(&unknown_interval, now).unwrap_err()),
            "interval"
        );
        let backwards = GetTaskStatsRequest {
            start_time: Some(utc_to_timestamp(now)),
            end_time: Some(utc_to_timestamp(now)),
            ..request(&id)
        };
        assert_eq!(
            violation(stats_query(&backwards, now).unwrap_err()),
            "end_time"
        );
        let future_start = GetTaskStatsRequest {
            start_time: Some(utc_to_timestamp(now + chrono::TimeDelta::hours(1))),
            ..request(&id)
        };
        assert_eq!(
            violation(stats_query(&future_start, now).unwrap_err()),
            "start_time"
        );
        let bad_time = GetTaskStatsRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..request(&id)
        };
        assert_eq!(
            violation(stats_query(&bad_time, now).unwrap_err()),
            "start_time"
        );

        let open = stats_query(&request(&id), now).expect("valid");
        assert_eq!((open.start, open.end, open.series), (None, now, None));
    }

    #[test]
    fn duration_buckets_are_cumulative_but_the_last() {
        let buckets = cumulative([1, 2, 3, 4, 5, 6]);
        let pairs: Vec<(&str, i64)> = buckets
            .iter()
            .map(|bucket| (bucket.key.as_str(), bucket.count))
            .collect();
        assert_eq!(
            pairs,
            [
                ("lt_3s", 1),
                ("lt_5s", 3),
                ("lt_10s", 6),
                ("lt_30s", 10),
                ("lt_60s", 15),
                ("ge_60s", 6)
            ]
        );
    }

    #[test]
    fn enum_keys_are_names_or_numbers() {
        let name = |number| {
            CallOutcome::try_from(number)
                .ok()
                .map(|value| value.as_str_name())
        };
        assert_eq!(count_bucket(Some(1), 3, name).key, "CALL_OUTCOME_ANSWERED");
        assert_eq!(count_bucket(Some(999), 3, name).key, "999");
    }
}
