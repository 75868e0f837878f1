//! `callstore.v1.QualityService`: quality results of calls, the tenant's rule sets and scoring
//! profiles, and re-scoring jobs.
//!
//! Updates follow AIP-134: the paths of `update_mask` are replaced; without a mask every
//! mutable field is. A change of a rule set's name, rules or profile makes a new version; its
//! `active` flag alone does not. A profile in use by a rule set cannot be deleted
//! (FAILED_PRECONDITION). Another tenant's ids answer NOT_FOUND like unknown ones.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::api::convert::optional_time;
use crate::api::convert_quality::{
    Violations, check_profile, job_to_proto, profile_to_proto, profile_values, rule_set_to_proto,
    rule_set_values, rules_from_proto,
};
use crate::api::convert_read::quality_to_proto;
use crate::api::page::{Fingerprint, PageSize, decode_token, encode_token};
use crate::api::tenant_of;
use crate::db::quality_rules::{self, ListPosition, UpdateError};
use crate::db::{DbError, quality, rescore};
use crate::domain::TenantId;
use crate::error::ApiError;
use crate::proto::quality_service_server::QualityService;
use crate::proto::{
    CreateRuleSetRequest, CreateRuleSetResponse, CreateScoringProfileRequest,
    CreateScoringProfileResponse, DeleteRuleSetRequest, DeleteRuleSetResponse,
    DeleteScoringProfileRequest, DeleteScoringProfileResponse, GetQualityRequest,
    GetQualityResponse, GetRescoreJobRequest, GetRescoreJobResponse, GetRuleSetRequest,
    GetRuleSetResponse, ListRuleSetsRequest, ListRuleSetsResponse, ListScoringProfilesRequest,
    ListScoringProfilesResponse, RescoreCallsRequest, RescoreCallsResponse, UpdateRuleSetRequest,
    UpdateRuleSetResponse, UpdateScoringProfileRequest, UpdateScoringProfileResponse,
};
use crate::quality::rescore::RescoreWaker;

/// Page size of the rule set and profile lists: default and most.
const PAGE: (u32, u32) = (50, 1000);

/// Implements `callstore.v1.QualityService`.
#[derive(Debug, Clone)]
pub struct QualityApi {
    pool: PgPool,
    rescore: RescoreWaker,
}

impl QualityApi {
    pub fn new(pool: PgPool, rescore: RescoreWaker) -> Self {
        Self { pool, rescore }
    }
}

/// Runs a handler for the request's tenant, recorded on the RPC's span.
macro_rules! handle {
    ($request:ident, |$tenant:ident, $message:ident| $body:expr) => {{
        let $tenant = tenant_of(&$request)?;
        tracing::Span::current().record("tenant", $tenant.as_str());
        let $message = $request.into_inner();
        let response: Result<_, ApiError> = async { $body }.await;
        Ok(Response::new(response?))
    }};
}

#[tonic::async_trait]
impl QualityService for QualityApi {
    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_quality(
        &self,
        request: Request<GetQualityRequest>,
    ) -> Result<Response<GetQualityResponse>, Status> {
        handle!(request, |tenant, message| {
            get_quality(&self.pool, &tenant, message).await
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn create_rule_set(
        &self,
        request: Request<CreateRuleSetRequest>,
    ) -> Result<Response<CreateRuleSetResponse>, Status> {
        handle!(request, |tenant, message| {
            create_rule_set(&self.pool, &tenant, message).await
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_rule_set(
        &self,
        request: Request<GetRuleSetRequest>,
    ) -> Result<Response<GetRuleSetResponse>, Status> {
        handle!(request, |tenant, message| {
            let id = required_id("rule_set_id", &message.rule_set_id)?;
            if message.version < 0 {
                return Err(ApiError::invalid_field("version", "must not be negative"));
            }
            let version = (message.version > 0).then_some(message.version);
            quality_rules::get_rule_set(&self.pool, &tenant, id, version)
                .await?
                .map(|row| GetRuleSetResponse {
                    rule_set: Some(rule_set_to_proto(row)),
                })
                .ok_or(ApiError::NotFound {
                    resource: "rule set",
                })
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_rule_sets(
        &self,
        request: Request<ListRuleSetsRequest>,
    ) -> Result<Response<ListRuleSetsResponse>, Status> {
        handle!(request, |tenant, message| {
            let (rows, next_page_token) = list(
                &tenant,
                ("ListRuleSets", message.page_size, &message.page_token),
                async |after, limit| {
                    quality_rules::list_rule_sets(&self.pool, &tenant, after, limit).await
                },
                |row| (row.create_time, row.id),
            )
            .await?;
            Ok(ListRuleSetsResponse {
                rule_sets: rows.into_iter().map(rule_set_to_proto).collect(),
                next_page_token,
            })
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn update_rule_set(
        &self,
        request: Request<UpdateRuleSetRequest>,
    ) -> Result<Response<UpdateRuleSetResponse>, Status> {
        handle!(request, |tenant, message| {
            update_rule_set(&self.pool, &tenant, message).await
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn delete_rule_set(
        &self,
        request: Request<DeleteRuleSetRequest>,
    ) -> Result<Response<DeleteRuleSetResponse>, Status> {
        handle!(request, |tenant, message| {
            let id = required_id("rule_set_id", &message.rule_set_id)?;
            quality_rules::delete_rule_set(&self.pool, &tenant, id)
                .await
                .map_err(|error| not_found(error, "rule set"))?;
            Ok(DeleteRuleSetResponse {})
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn create_scoring_profile(
        &self,
        request: Request<CreateScoringProfileRequest>,
    ) -> Result<Response<CreateScoringProfileResponse>, Status> {
        handle!(request, |tenant, message| {
            let profile = message
                .profile
                .ok_or_else(|| ApiError::invalid_field("profile", "is required"))?;
            let values = profile_values(&profile);
            let mut violations = Violations::new("profile");
            check_profile(&values, &mut violations);
            invalid_if_any(violations)?;
            let row = quality_rules::create_profile(&self.pool, &tenant, &values).await?;
            Ok(CreateScoringProfileResponse {
                profile: Some(profile_to_proto(row)),
            })
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_scoring_profiles(
        &self,
        request: Request<ListScoringProfilesRequest>,
    ) -> Result<Response<ListScoringProfilesResponse>, Status> {
        handle!(request, |tenant, message| {
            let (rows, next_page_token) = list(
                &tenant,
                (
                    "ListScoringProfiles",
                    message.page_size,
                    &message.page_token,
                ),
                async |after, limit| {
                    quality_rules::list_profiles(&self.pool, &tenant, after, limit).await
                },
                |row| (row.create_time, row.id),
            )
            .await?;
            Ok(ListScoringProfilesResponse {
                profiles: rows.into_iter().map(profile_to_proto).collect(),
                next_page_token,
            })
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn update_scoring_profile(
        &self,
        request: Request<UpdateScoringProfileRequest>,
    ) -> Result<Response<UpdateScoringProfileResponse>, Status> {
        handle!(request, |tenant, message| {
            update_profile(&self.pool, &tenant, message).await
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn delete_scoring_profile(
        &self,
        request: Request<DeleteScoringProfileRequest>,
    ) -> Result<Response<DeleteScoringProfileResponse>, Status> {
        handle!(request, |tenant, message| {
            let id = required_id("profile_id", &message.profile_id)?;
            quality_rules::delete_profile(&self.pool, &tenant, id)
                .await
                .map_err(|error| match error {
                    DbError::MissingReference { .. } => ApiError::FailedPrecondition(
                        "the profile is used by a rule set: give the rule set another profile \
                         first"
                            .to_owned(),
                    ),
                    other => not_found(other, "scoring profile"),
                })?;
            Ok(DeleteScoringProfileResponse {})
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn rescore_calls(
        &self,
        request: Request<RescoreCallsRequest>,
    ) -> Result<Response<RescoreCallsResponse>, Status> {
        handle!(request, |tenant, message| {
            let spec = rescore_spec(&message)?;
            let job = rescore::create_job(&self.pool, &tenant, &spec)
                .await
                .map_err(|error| not_found(error, "rule set"))?;
            tracing::info!(job_id = %job.id, total_calls = job.total_calls, "re-scoring job created");
            self.rescore.wake();
            Ok(RescoreCallsResponse {
                job: Some(job_to_proto(job)),
            })
        })
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_rescore_job(
        &self,
        request: Request<GetRescoreJobRequest>,
    ) -> Result<Response<GetRescoreJobResponse>, Status> {
        handle!(request, |tenant, message| {
            let id = required_id("job_id", &message.job_id)?;
            rescore::get_job(&self.pool, &tenant, id)
                .await?
                .map(|job| GetRescoreJobResponse {
                    job: Some(job_to_proto(job)),
                })
                .ok_or(ApiError::NotFound {
                    resource: "re-scoring job",
                })
        })
    }
}

async fn get_quality(
    pool: &PgPool,
    tenant: &TenantId,
    request: GetQualityRequest,
) -> Result<GetQualityResponse, ApiError> {
    let call_id = required_id("call_id", &request.call_id)?;
    if !quality::call_exists(pool, tenant, call_id).await? {
        return Err(ApiError::NotFound { resource: "call" });
    }
    let rows = quality::results_of_call(pool, tenant, call_id, request.include_history).await?;
    Ok(GetQualityResponse {
        results: rows.into_iter().map(quality_to_proto).collect(),
    })
}

async fn create_rule_set(
    pool: &PgPool,
    tenant: &TenantId,
    request: CreateRuleSetRequest,
) -> Result<CreateRuleSetResponse, ApiError> {
    let rule_set = request
        .rule_set
        .ok_or_else(|| ApiError::invalid_field("rule_set", "is required"))?;
    let mut violations = Violations::new("rule_set");
    let values = rule_set_values(&rule_set, &mut violations);
    invalid_if_any(violations)?;
    let row = quality_rules::create_rule_set(pool, tenant, &values)
        .await
        .map_err(unknown_profile)?;
    tracing::info!(rule_set_id = %row.id, rules = row.rules.0.len(), active = row.active, "rule set created");
    Ok(CreateRuleSetResponse {
        rule_set: Some(rule_set_to_proto(row)),
    })
}

async fn update_rule_set(
    pool: &PgPool,
    tenant: &TenantId,
    request: UpdateRuleSetRequest,
) -> Result<UpdateRuleSetResponse, ApiError> {
    let rule_set = request
        .rule_set
        .ok_or_else(|| ApiError::invalid_field("rule_set", "is required"))?;
    let id = required_id("rule_set.id", &rule_set.id)?;
    let paths = mask_paths(
        request.update_mask.as_ref(),
        &["name", "rules", "scoring_profile_id", "active"],
    )?;
    // Check the fields that will be written before touching the database.
    let mut violations = Violations::new("rule_set");
    if paths.contains(&"name") {
        violations.name(&rule_set.name);
    }
    let rules = if paths.contains(&"rules") {
        rules_from_proto(&rule_set.rules, &mut violations)
    } else {
        Vec::new()
    };
    let profile_id = if paths.contains(&"scoring_profile_id") {
        violations.optional_id("scoring_profile_id", &rule_set.scoring_profile_id)
    } else {
        None
    };
    invalid_if_any(violations)?;
    let row = quality_rules::update_rule_set(pool, tenant, id, |values| {
        for path in &paths {
            match *path {
                "name" => values.name = rule_set.name.trim().to_owned(),
                "rules" => values.rules.clone_from(&rules),
                "scoring_profile_id" => values.scoring_profile_id = profile_id,
                "active" => values.active = rule_set.active,
                _ => {}
            }
        }
        Ok::<(), ApiError>(())
    })
    .await
    .map_err(|error| match error {
        UpdateError::Refused(error) => error,
        UpdateError::Db(error) => unknown_profile(error),
    })?;
    tracing::info!(rule_set_id = %row.id, version = row.version, active = row.active, "rule set updated");
    Ok(UpdateRuleSetResponse {
        rule_set: Some(rule_set_to_proto(row)),
    })
}

async fn update_profile(
    pool: &PgPool,
    tenant: &TenantId,
    request: UpdateScoringProfileRequest,
) -> Result<UpdateScoringProfileResponse, ApiError> {
    let profile = request
        .profile
        .ok_or_else(|| ApiError::invalid_field("profile", "is required"))?;
    let id = required_id("profile.id", &profile.id)?;
    let paths = mask_paths(
        request.update_mask.as_ref(),
        &["name", "base", "lower_bound", "upper_bound"],
    )?;
    let given = profile_values(&profile);
    let row = quality_rules::update_profile(pool, tenant, id, |values| {
        for path in &paths {
            match *path {
                "name" => values.name.clone_from(&given.name),
                "base" => values.base = given.base,
                "lower_bound" => values.lower_bound = given.lower_bound,
                "upper_bound" => values.upper_bound = given.upper_bound,
                _ => {}
            }
        }
        let mut violations = Violations::new("profile");
        check_profile(values, &mut violations);
        invalid_if_any(violations)
    })
    .await
    .map_err(|error| match error {
        UpdateError::Refused(error) => error,
        UpdateError::Db(error) => not_found(error, "scoring profile"),
    })?;
    Ok(UpdateScoringProfileResponse {
        profile: Some(profile_to_proto(row)),
    })
}

fn rescore_spec(request: &RescoreCallsRequest) -> Result<rescore::JobSpec, ApiError> {
    let rule_set_id = required_id("rule_set_id", &request.rule_set_id)?;
    let task_id = if request.task_id.is_empty() {
        None
    } else {
        Some(
            Uuid::parse_str(&request.task_id)
                .map_err(|_| ApiError::invalid_field("task_id", "must be a server id (a UUID)"))?,
        )
    };
    let start_time = optional_time(request.start_time.as_ref(), "start_time")?;
    let end_time = optional_time(request.end_time.as_ref(), "end_time")?;
    if let (Some(start), Some(end)) = (start_time, end_time)
        && start >= end
    {
        return Err(ApiError::invalid_field(
            "end_time",
            "must be after start_time",
        ));
    }
    Ok(rescore::JobSpec {
        rule_set_id,
        task_id,
        start_time,
        end_time,
    })
}

/// The paths of an update mask, each one of `allowed`; every allowed path without a mask.
fn mask_paths(
    mask: Option<&prost_types::FieldMask>,
    allowed: &[&'static str],
) -> Result<Vec<&'static str>, ApiError> {
    let Some(mask) = mask.filter(|mask| !mask.paths.is_empty()) else {
        return Ok(allowed.to_vec());
    };
    let mut paths = Vec::with_capacity(mask.paths.len());
    let mut violations = Vec::new();
    for (index, path) in mask.paths.iter().enumerate() {
        match allowed.iter().find(|allowed| **allowed == path.as_str()) {
            Some(path) => paths.push(*path),
            None => violations.push(crate::error::FieldViolation::new(
                format!("update_mask.paths[{index}]"),
                format!("must be one of: {}", allowed.join(", ")),
            )),
        }
    }
    if violations.is_empty() {
        Ok(paths)
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

fn required_id(field: &str, text: &str) -> Result<Uuid, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid_field(field, "is required"));
    }
    Uuid::parse_str(text)
        .map_err(|_| ApiError::invalid_field(field, "must be a server id (a UUID)"))
}

fn invalid_if_any(violations: Violations<'_>) -> Result<(), ApiError> {
    if violations.list.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(violations.list))
    }
}

fn not_found(error: DbError, resource: &'static str) -> ApiError {
    match error {
        DbError::NotFound => ApiError::NotFound { resource },
        other => ApiError::from(other),
    }
}

/// A rule set naming a profile the tenant does not have.
fn unknown_profile(error: DbError) -> ApiError {
    match error {
        DbError::MissingReference { .. } => ApiError::invalid_field(
            "rule_set.scoring_profile_id",
            "names no scoring profile of the tenant",
        ),
        DbError::NotFound => ApiError::NotFound {
            resource: "rule set",
        },
        other => ApiError::from(other),
    }
}

/// Where a page of rule sets or profiles ends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Position {
    time: DateTime<Utc>,
    id: Uuid,
}

impl From<Position> for ListPosition {
    fn from(position: Position) -> Self {
        (position.time, position.id)
    }
}

/// A page of a list in creation order: `fetch` reads the rows after a position, one more than
/// the page to tell whether another follows; `position` says where a row is. The page and the
/// next page's token (empty on the last page).
async fn list<Row>(
    tenant: &TenantId,
    (rpc, page_size, token): (&str, i32, &str),
    fetch: impl AsyncFnOnce(Option<&ListPosition>, i64) -> Result<Vec<Row>, DbError>,
    position: impl Fn(&Row) -> ListPosition,
) -> Result<(Vec<Row>, String), ApiError> {
    let size = PageSize::parse(page_size, PAGE.0, PAGE.1, "page_size")?;
    let fingerprint = Fingerprint::of(tenant, rpc, &());
    let after: Option<Position> = decode_token(token, fingerprint, "page_token")?;
    let mut rows = fetch(after.map(ListPosition::from).as_ref(), size.probe_limit()).await?;
    let size = usize::try_from(size.get()).unwrap_or(usize::MAX);
    if rows.len() <= size {
        return Ok((rows, String::new()));
    }
    rows.truncate(size);
    let token = rows
        .last()
        .map(|last| {
            let (time, id) = position(last);
            encode_token(fingerprint, &Position { time, id })
        })
        .unwrap_or_default();
    Ok((rows, token))
}
