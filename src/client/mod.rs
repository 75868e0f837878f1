//! Client-side commands: `callstore <command>` talking to a running server over gRPC. One file
//! per command. Results go to stdout, one line per record; progress, errors and the summary go
//! to stderr.

pub mod ingest;
pub mod watch;

use std::fmt;
use std::str::FromStr;

use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;

use crate::api::TENANT_HEADER;

/// An API key: never printed, and sent as sensitive metadata.
#[derive(Clone)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let key = text.trim();
        if key.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".to_owned());
        }
        Ok(Self(key.to_owned()))
    }
}

/// A tenant must fit in metadata; the server checks the rest.
pub(crate) fn parse_tenant(text: &str) -> Result<String, String> {
    let tenant = text.trim();
    if tenant.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !tenant.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".to_owned());
    }
    Ok(tenant.to_owned())
}

/// Adds the tenant (and the API key, when given) to every request.
#[derive(Clone)]
pub(crate) struct CallerMetadata {
    tenant: AsciiMetadataValue,
    authorization: Option<AsciiMetadataValue>,
}

impl CallerMetadata {
    pub(crate) fn new(tenant: &str, api_key: Option<&ApiKey>) -> Result<Self, String> {
        let tenant = AsciiMetadataValue::try_from(tenant)
            .map_err(|_| "--tenant must be printable ASCII".to_owned())?;
        let authorization = match api_key {
            None => None,
            Some(ApiKey(key)) => {
                let mut value = AsciiMetadataValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| "--api-key must be printable ASCII".to_owned())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            tenant,
            authorization,
        })
    }
}

impl Interceptor for CallerMetadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        metadata.insert(TENANT_HEADER, self.tenant.clone());
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        Ok(request)
    }
}

/// The upper-case name of a gRPC code, as in the protos (`INVALID_ARGUMENT`).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
