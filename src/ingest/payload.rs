//! Ingesting one vendor payload: the one code path behind the `IngestVendorPayload` RPC and the
//! webhook bridge.

use std::str::FromStr as _;

use crate::domain::{SourceKey, TenantId};
use crate::error::{ApiError, FieldViolation};
use crate::ingest::Batch;
use crate::ingest::formats::{DEFAULT_TIME_ZONE, ParseContext, default_source_system, parser_for};
use crate::ingest::group_commit::GroupCommitter;
use crate::ingest::writer::BatchResults;
use crate::proto::PayloadFormat;

/// How to read a payload, beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct PayloadOptions {
    /// The producing system; the format's family when unset.
    pub source_system: Option<String>,
    /// IANA zone of dates without one; Asia/Shanghai when unset.
    pub time_zone: Option<String>,
    /// The task a number list belongs to, when the list does not say.
    pub source_task_id: Option<String>,
}

/// A stored payload: what it carried and what storing each item did.
#[derive(Debug)]
pub struct IngestedPayload {
    pub batch: Batch,
    pub results: BatchResults,
}

impl IngestedPayload {
    /// Whether every item of the payload is stored (a vendor may stop retrying).
    pub fn all_stored(&self) -> bool {
        let results = &self.results;
        results.calls.iter().all(Result::is_ok)
            && results.tasks.iter().all(Result::is_ok)
            && results.tag_groups.iter().all(Result::is_ok)
            && results.tags.iter().all(Result::is_ok)
            && results.levels.iter().all(Result::is_ok)
            && results.numbers.iter().all(Result::is_ok)
            && results.quality.iter().all(Result::is_ok)
    }
}

/// Parses a payload and stores it in one transaction. Returns once it is committed.
pub async fn ingest_payload(
    store: &GroupCommitter,
    tenant: &TenantId,
    format: PayloadFormat,
    payload: &[u8],
    options: &PayloadOptions,
) -> Result<IngestedPayload, ApiError> {
    let parser =
        parser_for(format).ok_or_else(|| ApiError::invalid_field("format", "must be set"))?;
    let context = parse_context(format, options)?;
    let batch = parser(payload, &context)
        .map_err(|error| ApiError::invalid_field("payload", error.to_string()))?;
    let results = store.store_batch(tenant, &batch).await?;
    Ok(IngestedPayload { batch, results })
}

fn parse_context(
    format: PayloadFormat,
    options: &PayloadOptions,
) -> Result<ParseContext, ApiError> {
    let mut violations = Vec::new();
    let source_system = options
        .source_system
        .clone()
        .filter(|system| !system.is_empty())
        .unwrap_or_else(|| default_source_system(format).to_owned());
    if let Err((_, description)) = SourceKey::parse(&source_system, "probe") {
        violations.push(FieldViolation::new("source_system", description));
    }
    let time_zone = match options.time_zone.as_deref().filter(|zone| !zone.is_empty()) {
        None => DEFAULT_TIME_ZONE,
        Some(zone) => chrono_tz::Tz::from_str(zone).unwrap_or_else(|_| {
            violations.push(FieldViolation::new(
                "time_zone",
                "must be an IANA time zone such as Asia/Shanghai",
            ));
            DEFAULT_TIME_ZONE
        }),
    };
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
    let mut context = ParseContext::new(source_system, time_zone);
    context.source_task_id = options.source_task_id.clone().filter(|id| !id.is_empty());
    Ok(context)
}
