//! Call lists: a validated [`CallListQuery`] as one keyset-paged statement.
//!
//! The statement selects only the ids and sort keys of a page (`db::calls_read` loads the
//! records), so the filters and the order are all this module knows. Paging is by keyset: a page
//! continues after the `(sort key, id)` of the previous page's last call, which costs the same on
//! page 10,000 as on page 1 and neither repeats nor skips a call when new calls arrive between
//! pages. Each order has an index within a task (`(tenant_id, task_id, key, id)`), so an
//! unfiltered page reads only the rows it returns; filters are checked on the way, or lead the
//! plan when they are selective (callee, tags, levels, transcript grams).
//!
//! The builder is public so the query benchmark runs the very same SQL directly against
//! Postgres as its baseline.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::db::DbError;
use crate::domain::TenantId;
use crate::domain::call_query::{CallFilter, CallListQuery, CallOrder, CallPosition, Range};
use crate::proto::{QualitySource, TransferState};

/// `total_size` is counted exactly up to this many calls, and estimated beyond.
pub const EXACT_COUNT_LIMIT: i64 = 10_000;

/// The sort key expression of an order, as the indexes define it.
fn sort_key(order: CallOrder) -> &'static str {
    match order {
        CallOrder::DialTime => "c.dial_time",
        CallOrder::Score => "coalesce(c.score, -9223372036854775808)",
        CallOrder::TalkTime => "coalesce(c.talk_duration_ms, -9223372036854775808)",
        CallOrder::Rounds => "coalesce(c.rounds, -2147483648)",
    }
}

/// The sort key as the `i64` of a [`CallPosition`]: dial time in microseconds (`extract`
/// answers an exact numeric), the others as they are.
fn position_key(order: CallOrder) -> String {
    match order {
        CallOrder::DialTime => "(extract(epoch FROM c.dial_time) * 1000000)::bigint".to_owned(),
        other => format!("({})::bigint", sort_key(other)),
    }
}

/// The page statement: ids and positions of up to `limit` calls after `after`.
pub fn page_query(
    tenant: &TenantId,
    query: &CallListQuery,
    after: Option<CallPosition>,
    limit: i64,
) -> QueryBuilder<Postgres> {
    page_statement("", tenant, query, after, limit)
}

/// The plan of the page statement, run: `EXPLAIN (ANALYZE, BUFFERS)`, one line per row. For the
/// benchmark's report of a query that misses its target.
pub async fn explain_page(
    pool: &PgPool,
    tenant: &TenantId,
    query: &CallListQuery,
    after: Option<CallPosition>,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    let mut sql = page_statement("EXPLAIN (ANALYZE, BUFFERS) ", tenant, query, after, limit);
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sql.build_query_scalar().fetch_all(&mut *connection).await?)
}

fn page_statement(
    prefix: &str,
    tenant: &TenantId,
    query: &CallListQuery,
    after: Option<CallPosition>,
    limit: i64,
) -> QueryBuilder<Postgres> {
    let key = sort_key(query.order);
    let mut sql = QueryBuilder::new(format!(
        "{prefix}SELECT c.id, {} AS position_key FROM calls c WHERE c.tenant_id = ",
        position_key(query.order)
    ));
    sql.push_bind(tenant.as_str().to_owned());
    push_filters(&mut sql, tenant, query);
    if let Some(after) = after {
        let comparison = if query.ascending { ">" } else { "<" };
        sql.push(format!(" AND ({key}, c.id) {comparison} ("));
        match query.order {
            CallOrder::DialTime => {
                sql.push_bind(DateTime::<Utc>::from_timestamp_micros(after.key));
            }
            CallOrder::Rounds => {
                sql.push_bind(i32::try_from(after.key).unwrap_or(i32::MIN));
            }
            CallOrder::Score | CallOrder::TalkTime => {
                sql.push_bind(after.key);
            }
        }
        sql.push(", ").push_bind(after.id).push(")");
    }
    let direction = if query.ascending { "ASC" } else { "DESC" };
    sql.push(format!(
        " ORDER BY {key} {direction}, c.id {direction} LIMIT "
    ))
    .push_bind(limit);
    sql
}

/// The count statement: how many calls match, counting at most `EXACT_COUNT_LIMIT + 1`.
pub fn count_query(tenant: &TenantId, query: &CallListQuery) -> QueryBuilder<Postgres> {
    let mut sql =
        QueryBuilder::new("SELECT count(*) FROM (SELECT 1 FROM calls c WHERE c.tenant_id = ");
    sql.push_bind(tenant.as_str().to_owned());
    push_filters(&mut sql, tenant, query);
    sql.push(" LIMIT ")
        .push_bind(EXACT_COUNT_LIMIT + 1)
        .push(") bounded");
    sql
}

/// One page of a call list: ids in order, each with its position.
pub async fn list_page(
    pool: &PgPool,
    tenant: &TenantId,
    query: &CallListQuery,
    after: Option<CallPosition>,
    limit: i64,
) -> Result<Vec<CallPosition>, DbError> {
    let mut sql = page_query(tenant, query, after, limit);
    let mut connection = super::begin(pool, tenant).await?;
    let rows: Vec<(Uuid, i64)> = sql.build_query_as().fetch_all(&mut *connection).await?;
    Ok(rows
        .into_iter()
        .map(|(id, key)| CallPosition { key, id })
        .collect())
}

/// How many calls match: exact up to [`EXACT_COUNT_LIMIT`], else the planner's estimate
/// (never below the exact limit), flagged as such.
pub async fn count(
    pool: &PgPool,
    tenant: &TenantId,
    query: &CallListQuery,
) -> Result<(i64, bool), DbError> {
    let mut sql = count_query(tenant, query);
    let mut connection = super::begin(pool, tenant).await?;
    let exact: i64 = sql.build_query_scalar().fetch_one(&mut *connection).await?;
    if exact <= EXACT_COUNT_LIMIT {
        return Ok((exact, false));
    }
    // The planner's row estimate of the unbounded count: EXPLAIN, not a scan.
    let mut explain =
        QueryBuilder::new("EXPLAIN (FORMAT JSON) SELECT 1 FROM calls c WHERE c.tenant_id = ");
    explain.push_bind(tenant.as_str().to_owned());
    push_filters(&mut explain, tenant, query);
    let plan: serde_json::Value = explain
        .build_query_scalar()
        .fetch_one(&mut *connection)
        .await?;
    let estimate = plan
        .pointer("/0/Plan/Plan Rows")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    // An f64 row estimate far beyond i64 is saturated by `as`, which is what is wanted.
    Ok(((estimate.round() as i64).max(EXACT_COUNT_LIMIT + 1), true))
}

fn push_filters(sql: &mut QueryBuilder<Postgres>, tenant: &TenantId, query: &CallListQuery) {
    if let Some(task_id) = query.task_id {
        sql.push(" AND c.task_id = ").push_bind(task_id);
    }
    let filter: &CallFilter = &query.filter;
    if !filter.score_ranges.is_empty() {
        sql.push(" AND (");
        for (index, range) in filter.score_ranges.iter().enumerate() {
            if index > 0 {
                sql.push(" OR ");
            }
            push_range(sql, "c.score", range, 1);
        }
        sql.push(")");
    }
    if !filter.level_ids.is_empty() {
        sql.push(" AND c.level_id = ANY(")
            .push_bind(filter.level_ids.clone())
            .push(")");
    }
    if let Some(callee) = &filter.callee {
        sql.push(" AND c.callee = ").push_bind(callee.clone());
    }
    if let Some(prefix) = &filter.callee_prefix {
        sql.push(" AND c.callee LIKE ")
            .push_bind(format!("{}%", escape_like(prefix)));
    }
    if let Some(range) = &filter.talk_seconds {
        sql.push(" AND ");
        push_range(sql, "c.talk_duration_ms", range, 1000);
    }
    if let Some(range) = &filter.rounds {
        sql.push(" AND ");
        push_range(sql, "c.rounds", range, 1);
    }
    if !filter.any_tag_ids.is_empty() {
        sql.push(
            " AND EXISTS (SELECT 1 FROM call_tags t \
             WHERE t.tenant_id = c.tenant_id AND t.call_id = c.id AND t.tag_id = ANY(",
        )
        .push_bind(filter.any_tag_ids.clone())
        .push("))");
    }
    if !filter.all_tag_ids.is_empty() {
        sql.push(
            " AND (SELECT count(*) FROM call_tags t \
             WHERE t.tenant_id = c.tenant_id AND t.call_id = c.id AND t.tag_id = ANY(",
        )
        .push_bind(filter.all_tag_ids.clone())
        .push(")) = ")
        .push_bind(i64::try_from(filter.all_tag_ids.len()).unwrap_or(i64::MAX));
    }
    if let Some(start) = filter.dial_time_start {
        sql.push(" AND c.dial_time >= ").push_bind(start);
    }
    if let Some(end) = filter.dial_time_end {
        sql.push(" AND c.dial_time < ").push_bind(end);
    }
    for (column, values) in [
        ("c.outcome", &filter.outcomes),
        ("c.number_status", &filter.number_statuses),
        ("c.gender", &filter.genders),
        ("c.hangup_side", &filter.hangup_sides),
        ("c.carrier", &filter.carriers),
    ] {
        if !values.is_empty() {
            sql.push(format!(" AND {column} = ANY("))
                .push_bind(values.clone())
                .push(")");
        }
    }
    if let Some(province) = &filter.province {
        sql.push(" AND c.province = ").push_bind(province.clone());
    }
    if let Some(city) = &filter.city {
        sql.push(" AND c.city = ").push_bind(city.clone());
    }
    if let Some(transferred) = filter.transferred {
        // Literal, not bound: the partial index `calls_transferred_idx` has this predicate.
        const _: () =
            assert!(TransferState::NotAnswered as i32 == 2 && TransferState::Answered as i32 == 3);
        sql.push(if transferred {
            " AND c.transfer_state >= 2"
        } else {
            " AND c.transfer_state < 2"
        });
    }
    if let Some(read) = filter.read {
        sql.push(if read {
            " AND c.read_time IS NOT NULL"
        } else {
            " AND c.read_time IS NULL"
        });
    }
    if let Some(transcript) = &filter.transcript {
        sql.push(
            " AND EXISTS (SELECT 1 FROM call_transcripts x \
             WHERE x.tenant_id = c.tenant_id AND x.call_id = c.id",
        );
        if let Some(speaker) = transcript.speaker {
            sql.push(" AND x.speaker = ").push_bind(speaker);
        }
        sql.push(" AND x.grams @> ")
            .push_bind(transcript.needle.grams(tenant))
            .push(" AND strpos(x.text, ")
            .push_bind(transcript.needle.as_str().to_owned())
            .push(") > 0)");
    }
    push_quality(sql, filter);
}

/// The call's latest computed quality result has a score in the range and hit one of the
/// rules (each part when asked).
fn push_quality(sql: &mut QueryBuilder<Postgres>, filter: &CallFilter) {
    if filter.quality_score.is_none() && filter.rule_hits.is_empty() {
        return;
    }
    sql.push(
        " AND EXISTS (SELECT 1 FROM (SELECT q.score, q.rule_set_id, q.hit_rule_ids \
         FROM quality_results q \
         WHERE q.tenant_id = c.tenant_id AND q.call_id = c.id AND q.source = ",
    )
    .push_bind(QualitySource::Computed as i16)
    .push(" ORDER BY q.version DESC LIMIT 1) latest WHERE true");
    if let Some(range) = filter.quality_score {
        sql.push(" AND latest.score IS NOT NULL");
        if let Some(min) = range.min {
            sql.push(" AND latest.score >= ").push_bind(min);
        }
        if let Some(max) = range.max {
            sql.push(" AND latest.score < ").push_bind(max);
        }
    }
    if !filter.rule_hits.is_empty() {
        sql.push(" AND (");
        for (index, hit) in filter.rule_hits.iter().enumerate() {
            if index > 0 {
                sql.push(" OR ");
            }
            sql.push("(")
                .push_bind(hit.rule_id.clone())
                .push(" = ANY (latest.hit_rule_ids)");
            if let Some(rule_set_id) = hit.rule_set_id {
                sql.push(" AND latest.rule_set_id = ")
                    .push_bind(rule_set_id);
            }
            sql.push(")");
        }
        sql.push(")");
    }
    sql.push(")");
}

/// `column` within `range`, the bounds multiplied by `scale` (seconds to milliseconds).
fn push_range(sql: &mut QueryBuilder<Postgres>, column: &str, range: &Range, scale: i64) {
    sql.push("(");
    let mut bounded = false;
    if let Some(min) = range.min {
        sql.push(format!("{column} >= "))
            .push_bind(min.saturating_mul(scale));
        bounded = true;
    }
    if let Some(max) = range.max {
        if bounded {
            sql.push(" AND ");
        }
        sql.push(format!("{column} < "))
            .push_bind(max.saturating_mul(scale));
        bounded = true;
    }
    if !bounded {
        // An open range still asks for a value.
        sql.push(format!("{column} IS NOT NULL"));
    }
    sql.push(")");
}

/// Escapes `LIKE` metacharacters (with the default escape character, backslash).
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for char in text.chars() {
        if matches!(char, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(char);
    }
    escaped
}
