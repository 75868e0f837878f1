//! ListCalls: filtered, ordered, keyset-paged call lists.
//!
//! The request becomes a validated [`CallListQuery`] (every violation named by its field); the
//! page is one statement for the ids (`db::calls_list`) and one for the records
//! (`db::calls_read`); `total_size`, when asked, one more.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::convert::timestamp_to_utc;
use crate::api::convert_read::{call_embed, call_to_proto};
use crate::api::page::{Fingerprint, PageSize, decode_token, encode_token};
use crate::db::{calls_list, calls_read};
use crate::domain::TenantId;
use crate::domain::call_query::{
    CallFilter, CallListQuery, CallOrder, CallPosition, Range, RuleHitFilter, ScoreRange,
    TranscriptFilter,
};
use crate::domain::transcript::Needle;
use crate::error::{ApiError, FieldViolation};
use crate::proto::{
    self, CallOrderBy, CallOutcome, Carrier, Gender, HangupSide, ListCallsRequest,
    ListCallsResponse, NumberStatus, Speaker,
};

/// Page size when the request names none (as the seed's `query_done_task_phones`).
pub const DEFAULT_PAGE_SIZE: u32 = 15;
/// The largest page.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// At most this many values in one repeated filter (ids, enum values, ranges).
const MAX_FILTER_VALUES: usize = 100;
/// Longest callee, prefix, province or city accepted.
const MAX_TEXT_FILTER_CHARS: usize = 64;

pub(super) async fn list_calls(
    pool: &PgPool,
    tenant: &TenantId,
    request: ListCallsRequest,
) -> Result<ListCallsResponse, ApiError> {
    let mut violations = Vec::new();
    let page_size = PageSize::parse(
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
        "page_size",
    )
    .map_err(|error| violations.extend(field_violations(error)))
    .ok();
    let embed = call_embed(request.view, "view")
        .map_err(|error| violations.extend(field_violations(error)))
        .ok();
    let query = check_query(&request, &mut violations);
    let (Some(page_size), Some(embed), true) = (page_size, embed, violations.is_empty()) else {
        return Err(ApiError::InvalidArgument(violations));
    };
    let fingerprint = Fingerprint::of(tenant, "ListCalls", &query);
    let after: Option<CallPosition> = decode_token(&request.page_token, fingerprint, "page_token")?;

    let mut positions =
        calls_list::list_page(pool, tenant, &query, after, page_size.probe_limit()).await?;
    let more = positions.len() > page_size.get() as usize;
    positions.truncate(page_size.get() as usize);
    let next_page_token = match (more, positions.last()) {
        (true, Some(last)) => encode_token(fingerprint, last),
        _ => String::new(),
    };
    let ids: Vec<Uuid> = positions.iter().map(|position| position.id).collect();
    let calls = calls_read::load_calls(pool, tenant, &ids, embed)
        .await?
        .into_iter()
        .map(call_to_proto)
        .collect();
    let (total_size, total_size_is_estimate) = if request.include_total_size {
        calls_list::count(pool, tenant, &query).await?
    } else {
        (0, false)
    };
    Ok(ListCallsResponse {
        calls,
        next_page_token,
        total_size,
        total_size_is_estimate,
    })
}

fn field_violations(error: ApiError) -> Vec<FieldViolation> {
    match error {
        ApiError::InvalidArgument(violations) => violations,
        _ => Vec::new(),
    }
}

/// The validated query of a request: its task, filters and order (paging and view aside).
pub fn list_query(request: &ListCallsRequest) -> Result<CallListQuery, ApiError> {
    let mut violations = Vec::new();
    let query = check_query(request, &mut violations);
    if violations.is_empty() {
        Ok(query)
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

/// The validated query of a request; what is wrong goes to `violations`.
fn check_query(request: &ListCallsRequest, violations: &mut Vec<FieldViolation>) -> CallListQuery {
    let mut check = Check { violations };
    let task_id = check.optional_uuid("task_id", &request.task_id);
    let order = match CallOrderBy::try_from(request.order_by) {
        Ok(CallOrderBy::Unspecified | CallOrderBy::DialTime) => CallOrder::DialTime,
        Ok(CallOrderBy::Score) => CallOrder::Score,
        Ok(CallOrderBy::TalkTime) => CallOrder::TalkTime,
        Ok(CallOrderBy::Rounds) => CallOrder::Rounds,
        Err(_) => {
            check.violation("order_by", "is not a CallOrderBy value");
            CallOrder::DialTime
        }
    };
    let filter = request
        .filter
        .as_ref()
        .map(|filter| call_filter(&mut check, filter))
        .unwrap_or_default();
    CallListQuery {
        task_id,
        filter,
        order,
        ascending: request.ascending,
    }
}

fn call_filter(check: &mut Check<'_>, filter: &proto::CallFilter) -> CallFilter {
    let score_ranges = check.bounded("filter.score_ranges", &filter.score_ranges);
    let score_ranges = score_ranges
        .iter()
        .enumerate()
        .map(|(index, range)| check.range(&format!("filter.score_ranges[{index}]"), range, false))
        .collect();
    let dial_time_start = check.time("filter.dial_time_start", filter.dial_time_start.as_ref());
    let dial_time_end = check.time("filter.dial_time_end", filter.dial_time_end.as_ref());
    if let (Some(start), Some(end)) = (dial_time_start, dial_time_end)
        && start >= end
    {
        check.violation(
            "filter.dial_time_end",
            "must be after filter.dial_time_start",
        );
    }
    CallFilter {
        score_ranges,
        level_ids: check.uuids("filter.level_ids", &filter.level_ids),
        callee: check.text("filter.callee", &filter.callee),
        callee_prefix: check.text("filter.callee_prefix", &filter.callee_prefix),
        talk_seconds: filter
            .talk_seconds
            .as_ref()
            .map(|range| check.range("filter.talk_seconds", range, true)),
        rounds: filter
            .rounds
            .as_ref()
            .map(|range| check.range("filter.rounds", range, true)),
        any_tag_ids: check.uuids("filter.any_tag_ids", &filter.any_tag_ids),
        all_tag_ids: check.uuids("filter.all_tag_ids", &filter.all_tag_ids),
        dial_time_start,
        dial_time_end,
        outcomes: check.enums::<CallOutcome>("filter.outcomes", &filter.outcomes),
        number_statuses: check
            .enums::<NumberStatus>("filter.number_statuses", &filter.number_statuses),
        genders: check.enums::<Gender>("filter.genders", &filter.genders),
        hangup_sides: check.enums::<HangupSide>("filter.hangup_sides", &filter.hangup_sides),
        carriers: check.enums::<Carrier>("filter.carriers", &filter.carriers),
        province: check.text("filter.province", &filter.province),
        city: check.text("filter.city", &filter.city),
        transferred: filter.transferred,
        read: filter.read,
        transcript: filter
            .transcript
            .as_ref()
            .and_then(|transcript| check.transcript(transcript)),
        quality_score: filter
            .quality_score
            .as_ref()
            .map(|range| check.score_range("filter.quality_score", range)),
        rule_hits: check.rule_hits("filter.rule_hits", &filter.rule_hits),
    }
}

/// Collects the violations of one request (ListCalls, and WatchCalls' filter).
pub(super) struct Check<'violations> {
    pub(super) violations: &'violations mut Vec<FieldViolation>,
}

impl Check<'_> {
    pub(super) fn violation(&mut self, field: &str, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    fn optional_uuid(&mut self, field: &str, text: &str) -> Option<Uuid> {
        if text.is_empty() {
            return None;
        }
        let parsed = Uuid::parse_str(text).ok();
        if parsed.is_none() {
            self.violation(field, "must be a server id (a UUID)");
        }
        parsed
    }

    fn bounded<'values, T>(&mut self, field: &str, values: &'values [T]) -> &'values [T] {
        if values.len() > MAX_FILTER_VALUES {
            self.violation(
                field,
                format!("must have at most {MAX_FILTER_VALUES} values"),
            );
            return &[];
        }
        values
    }

    pub(super) fn uuids(&mut self, field: &str, values: &[String]) -> Vec<Uuid> {
        let values = self.bounded(field, values);
        let mut ids = Vec::with_capacity(values.len());
        for (index, text) in values.iter().enumerate() {
            match Uuid::parse_str(text) {
                Ok(id) => ids.push(id),
                Err(_) => {
                    self.violation(&format!("{field}[{index}]"), "must be a server id (a UUID)")
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub(super) fn enums<E: TryFrom<i32>>(&mut self, field: &str, values: &[i32]) -> Vec<i16> {
        let values = self.bounded(field, values);
        let mut numbers = Vec::with_capacity(values.len());
        for (index, &value) in values.iter().enumerate() {
            match (E::try_from(value), i16::try_from(value)) {
                (Ok(_), Ok(number)) => numbers.push(number),
                _ => self.violation(&format!("{field}[{index}]"), "is not a value of the enum"),
            }
        }
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    fn text(&mut self, field: &str, value: &str) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        if value.chars().count() > MAX_TEXT_FILTER_CHARS || value.contains('\0') {
            self.violation(
                field,
                format!("must be at most {MAX_TEXT_FILTER_CHARS} characters, without NUL"),
            );
            return None;
        }
        Some(value.to_owned())
    }

    pub(super) fn range(
        &mut self,
        field: &str,
        range: &proto::Int64Range,
        non_negative: bool,
    ) -> Range {
        if let (Some(min), Some(max)) = (range.min, range.max)
            && min >= max
        {
            self.violation(field, "min must be less than max (the range is [min, max))");
        }
        if non_negative
            && (range.min.is_some_and(|min| min < 0) || range.max.is_some_and(|max| max < 0))
        {
            self.violation(field, "bounds must not be negative");
        }
        Range {
            min: range.min,
            max: range.max,
        }
    }

    fn time(
        &mut self,
        field: &str,
        value: Option<&prost_types::Timestamp>,
    ) -> Option<DateTime<Utc>> {
        let value = value?;
        let time = timestamp_to_utc(value);
        if time.is_none() {
            self.violation(field, "is not a valid timestamp");
        }
        time
    }

    fn score_range(&mut self, field: &str, range: &proto::DoubleRange) -> ScoreRange {
        if range.min.is_some_and(|min| !min.is_finite())
            || range.max.is_some_and(|max| !max.is_finite())
        {
            self.violation(field, "bounds must be finite numbers");
            return ScoreRange::default();
        }
        if let (Some(min), Some(max)) = (range.min, range.max)
            && min >= max
        {
            self.violation(field, "min must be less than max (the range is [min, max))");
        }
        ScoreRange {
            min: range.min,
            max: range.max,
        }
    }

    fn rule_hits(&mut self, field: &str, hits: &[proto::RuleHitFilter]) -> Vec<RuleHitFilter> {
        let hits = self.bounded(field, hits);
        let mut filters = Vec::with_capacity(hits.len());
        for (index, hit) in hits.iter().enumerate() {
            let rule_id = hit.rule_id.trim();
            if rule_id.is_empty() || rule_id.chars().count() > 64 {
                self.violation(
                    &format!("{field}[{index}].rule_id"),
                    "is required, at most 64 characters",
                );
                continue;
            }
            let rule_set_id = if hit.rule_set_id.is_empty() {
                None
            } else {
                match Uuid::parse_str(&hit.rule_set_id) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        self.violation(
                            &format!("{field}[{index}].rule_set_id"),
                            "must be a server id (a UUID)",
                        );
                        continue;
                    }
                }
            };
            filters.push(RuleHitFilter {
                rule_id: rule_id.to_owned(),
                rule_set_id,
            });
        }
        filters
    }

    fn transcript(&mut self, transcript: &proto::TranscriptFilter) -> Option<TranscriptFilter> {
        let speaker = match Speaker::try_from(transcript.speaker) {
            Ok(Speaker::Unspecified) => None,
            Ok(speaker) => Some(speaker as i16),
            Err(_) => {
                self.violation("filter.transcript.speaker", "is not a Speaker value");
                None
            }
        };
        match Needle::parse(&transcript.contains) {
            Ok(needle) => Some(TranscriptFilter { speaker, needle }),
            Err(description) => {
                self.violation("filter.transcript.contains", description);
                None
            }
        }
    }
}
