//! Calls in progress: `OpenCall` stores a call at answer time, `AppendTurns` adds its turns as
//! they happen, `CompleteCall` stores the final record at hangup. Each answers after commit.
//!
//! Opening and completing go through the same writer as `IngestCalls`, so a call in progress is
//! an ordinary stored call (versions, content hash, feed events) whose state says it is not
//! final yet. Appended turns do not change the call's version or content hash: they are
//! announced by their own TURN_APPENDED events, and folded into the content when the call is
//! completed.

use sqlx::PgPool;
use tonic::Request;

use crate::api::convert::{
    DEFAULT_SOURCE_SYSTEM, call_from_proto, timestamp_to_utc, turns_from_proto,
};
use crate::api::ingest::{IngestLimits, item_result};
use crate::api::tenant_of;
use crate::db::calls::{StoreOutcome, StoredCall};
use crate::db::live::{self, AppendError, CallTarget, LiveError, Stage};
use crate::domain::call::Call;
use crate::domain::{SourceKey, TenantId};
use crate::error::{ApiError, FieldViolation};
use crate::ingest::writer::WriteOptions;
use crate::proto::{
    AppendTurnsRequest, AppendTurnsResponse, CallRecord, CallState, CompleteCallRequest,
    CompleteCallResponse, OpenCallRequest, OpenCallResponse,
};

/// Handles `OpenCall`: the record as known at answer time, stored in progress.
#[tracing::instrument(skip_all, fields(tenant, source_call_id))]
pub(super) async fn open_call(
    pool: &PgPool,
    limits: &IngestLimits,
    request: Request<OpenCallRequest>,
) -> Result<OpenCallResponse, ApiError> {
    let tenant = tenant_of(&request)?;
    let mut record = required_record(request.into_inner().call)?;
    record_span(&tenant, &record);
    let mut violations = Vec::new();
    match CallState::try_from(record.state) {
        Ok(CallState::Unspecified) => record.state = CallState::InProgress as i32,
        // An undefined value is reported by the conversion.
        Ok(CallState::InProgress) | Err(_) => {}
        Ok(CallState::Completed) => violations.push(FieldViolation::new(
            "call.state",
            "must be CALL_STATE_IN_PROGRESS or unset: a completed call is sent with CompleteCall",
        )),
    }
    let call = convert(record, limits, violations)?;
    let source_id = call.key.id.clone();
    let stored = store_live(pool, &tenant, call, Stage::Open, WriteOptions::default()).await?;
    Ok(OpenCallResponse {
        result: Some(item_result(0, &source_id, Ok::<_, ApiError>(stored))),
    })
}

/// Handles `AppendTurns`: turns added to a call in progress.
#[tracing::instrument(skip_all, fields(tenant, call))]
pub(super) async fn append_turns(
    pool: &PgPool,
    limits: &IngestLimits,
    request: Request<AppendTurnsRequest>,
) -> Result<AppendTurnsResponse, ApiError> {
    let tenant = tenant_of(&request)?;
    let request = request.into_inner();
    let mut violations = Vec::new();
    let target = target_of(&request, &mut violations);
    let turns = if request.turns.is_empty() {
        violations.push(FieldViolation::new("turns", "must not be empty"));
        Vec::new()
    } else {
        match turns_from_proto(request.turns, "", &limits.call) {
            Ok(turns) => turns,
            Err(turn_violations) => {
                violations.extend(turn_violations);
                Vec::new()
            }
        }
    };
    let Some(target) = target.filter(|_| violations.is_empty()) else {
        return Err(ApiError::InvalidArgument(violations));
    };
    let target = match &target {
        Target::Id(id) => CallTarget::Id(*id),
        Target::Source(key) => CallTarget::Source(key),
    };
    let span = tracing::Span::current();
    span.record("tenant", tenant.as_str());
    match target {
        CallTarget::Id(id) => span.record("call", tracing::field::display(id)),
        CallTarget::Source(key) => span.record("call", key.id.as_str()),
    };

    let appended = live::append_turns(pool, &tenant, target, &turns, limits.call.max_turns)
        .await
        .map_err(append_error)?;
    let outcome = if appended.added == 0 {
        StoreOutcome::Unchanged
    } else {
        StoreOutcome::Updated
    };
    tracing::debug!(
        added = appended.added,
        turn_count = appended.turn_count,
        "turns appended"
    );
    let stored = StoredCall {
        id: appended.id,
        version: appended.version,
        outcome,
    };
    Ok(AppendTurnsResponse {
        result: Some(item_result(
            0,
            &appended.source_call_id,
            Ok::<_, ApiError>(stored),
        )),
        turn_count: appended.turn_count,
    })
}

/// Handles `CompleteCall`: the final record, keeping the appended turns when it has none.
#[tracing::instrument(skip_all, fields(tenant, source_call_id))]
pub(super) async fn complete_call(
    pool: &PgPool,
    limits: &IngestLimits,
    write: WriteOptions,
    request: Request<CompleteCallRequest>,
) -> Result<CompleteCallResponse, ApiError> {
    let tenant = tenant_of(&request)?;
    let request = request.into_inner();
    let record = required_record(request.call)?;
    record_span(&tenant, &record);
    let mut violations = Vec::new();
    if record.state == CallState::InProgress as i32 {
        violations.push(FieldViolation::new(
            "call.state",
            "must be CALL_STATE_COMPLETED or unset: the record completes the call",
        ));
    }
    let hangup_time = match &request.hangup_time {
        Some(time) => {
            let converted = timestamp_to_utc(time);
            if converted.is_none() {
                violations.push(FieldViolation::new(
                    "hangup_time",
                    "must be a valid timestamp between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z",
                ));
            }
            converted
        }
        None => None,
    };
    let dial_time = record.dial_time.as_ref().and_then(timestamp_to_utc);
    if let (Some(hangup), Some(dial)) = (hangup_time, dial_time)
        && record.hangup_time.is_none()
        && hangup < dial
    {
        violations.push(FieldViolation::new(
            "hangup_time",
            "must not be before call.dial_time",
        ));
    }
    let mut call = convert(record, limits, violations)?;
    if call.hangup_time.is_none() {
        call.hangup_time = hangup_time;
    }
    let source_id = call.key.id.clone();
    let stored = store_live(pool, &tenant, call, Stage::Complete, write).await?;
    Ok(CompleteCallResponse {
        result: Some(item_result(0, &source_id, Ok::<_, ApiError>(stored))),
    })
}

fn required_record(record: Option<CallRecord>) -> Result<CallRecord, ApiError> {
    record.ok_or_else(|| ApiError::invalid_field("call", "is required"))
}

fn record_span(tenant: &TenantId, record: &CallRecord) {
    tracing::Span::current()
        .record("tenant", tenant.as_str())
        .record("source_call_id", record.source_call_id.as_str());
}

/// Converts a record like `IngestCalls` does (fields under `call.`), adding the RPC's own
/// violations so the client sees all of them at once.
fn convert(
    record: CallRecord,
    limits: &IngestLimits,
    mut violations: Vec<FieldViolation>,
) -> Result<Call, ApiError> {
    match call_from_proto(record, "call", &limits.call) {
        Ok(call) if violations.is_empty() => Ok(call),
        Ok(_) => Err(ApiError::InvalidArgument(violations)),
        Err(record_violations) => {
            let mut all = record_violations;
            all.append(&mut violations);
            Err(ApiError::InvalidArgument(all))
        }
    }
}

/// The call an AppendTurns request names.
enum Target {
    Id(uuid::Uuid),
    Source(SourceKey),
}

fn target_of(request: &AppendTurnsRequest, violations: &mut Vec<FieldViolation>) -> Option<Target> {
    if !request.call_id.is_empty() {
        if !request.source_call_id.is_empty() {
            violations.push(FieldViolation::new(
                "call_id",
                "name the call by call_id or by source_system and source_call_id, not both",
            ));
            return None;
        }
        return match uuid::Uuid::parse_str(&request.call_id) {
            Ok(id) => Some(Target::Id(id)),
            Err(_) => {
                violations.push(FieldViolation::new("call_id", "must be a call id (a UUID)"));
                None
            }
        };
    }
    let system = if request.source_system.is_empty() {
        DEFAULT_SOURCE_SYSTEM
    } else {
        request.source_system.as_str()
    };
    match SourceKey::parse(system, &request.source_call_id) {
        Ok(key) => Some(Target::Source(key)),
        Err((part, description)) => {
            let (field, description) = match part {
                "source_system" => ("source_system", description),
                _ if request.source_call_id.trim().is_empty() => (
                    "source_call_id",
                    "is required when call_id is empty".to_owned(),
                ),
                _ => ("source_call_id", description),
            };
            violations.push(FieldViolation::new(field, description));
            None
        }
    }
}

fn append_error(error: AppendError) -> ApiError {
    match error {
        AppendError::NotFound => ApiError::NotFound { resource: "call" },
        AppendError::NotInProgress => ApiError::FailedPrecondition(
            "the call is completed: turns can only be appended to a call in progress".to_owned(),
        ),
        AppendError::Conflict { index, sequence } => ApiError::FailedPrecondition(format!(
            "turns[{index}]: sequence {sequence} is already stored with other content"
        )),
        AppendError::NotAfterStored {
            index,
            sequence,
            last,
        } => ApiError::FailedPrecondition(format!(
            "turns[{index}].sequence: {sequence} is not stored and must be greater than {last}, \
             the last stored sequence"
        )),
        AppendError::TooManyTurns { total, limit } => ApiError::invalid_field(
            "turns",
            format!("the call would have {total} turns; a call has at most {limit}"),
        ),
        AppendError::Db(error) => ApiError::from(error),
    }
}

/// Stores an opened or completed call; see [`live::store_live`].
async fn store_live(
    pool: &PgPool,
    tenant: &TenantId,
    call: Call,
    stage: Stage,
    write: WriteOptions,
) -> Result<StoredCall, ApiError> {
    let stored = live::store_live(pool, tenant, &call, stage, write)
        .await
        .map_err(|error| match error {
            LiveError::AlreadyCompleted => {
                ApiError::FailedPrecondition("the call is already completed".to_owned())
            }
            LiveError::Db(error) => ApiError::from(error),
        })?;
    tracing::debug!(outcome = ?stored.outcome, version = stored.version, "call stored");
    Ok(stored)
}
