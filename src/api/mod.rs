//! The gRPC services, one file each. Handlers convert wire messages into validated domain types
//! at the edge and answer with `ApiError`, which `error.rs` maps to a status.
//!
//! RPCs that a later milestone fills in are not overridden: the generated default answers
//! UNIMPLEMENTED.

pub mod convert;
pub mod convert_catalog;
pub mod convert_quality;
pub mod convert_read;
pub mod ingest;
mod ingest_live;
pub mod page;
pub mod quality;
pub mod query;
pub mod query_calls;
mod query_catalog;
mod query_detail;
mod query_stats;
pub mod watch;

use crate::domain::TenantId;
use crate::error::ApiError;

/// Metadata key naming the tenant a request acts for (see `auth`).
pub use crate::auth::TENANT_HEADER;

/// The tenant a request acts for: its authenticated caller's, or in `--insecure-no-auth` mode
/// the one its `x-tenant-id` names. A request that passed neither (no auth layer in front) is
/// refused: the service never falls back to trusting the request.
pub fn tenant_of<T>(request: &tonic::Request<T>) -> Result<TenantId, ApiError> {
    let extensions = request.extensions();
    if let Some(caller) = extensions.get::<crate::auth::Caller>() {
        return Ok(caller.tenant.clone());
    }
    if extensions.get::<crate::auth::NoAuth>().is_none() {
        return Err(ApiError::Unauthenticated(
            "the request was not authenticated".to_owned(),
        ));
    }
    let field = format!("metadata.{TENANT_HEADER}");
    let value = request
        .metadata()
        .get(TENANT_HEADER)
        .ok_or_else(|| ApiError::invalid_field(&field, "is required: name the tenant"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid_field(&field, "must be ASCII text"))?;
    TenantId::parse(text).map_err(|description| ApiError::invalid_field(&field, description))
}
