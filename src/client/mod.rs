//! Client-side commands: `callstore <command>` talking to a running server over gRPC. One file
//! per command. Results go to stdout, one line per record; progress, errors and the summary go
//! to stderr.

pub mod ingest;
pub mod watch;

use std::fmt;
use std::str::FromStr;

use clap::Args;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Endpoint;

use crate::api::TENANT_HEADER;

/// Where `--server` points when neither the flag nor `CALLSTORE_SERVER` says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The server, the tenant and the key: the flags every client command takes.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// URL of the callstore gRPC server.
    #[arg(long, env = "CALLSTORE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Tenant to act for (sent as the x-tenant-id metadata).
    #[arg(long, env = "CALLSTORE_TENANT", value_parser = parse_tenant)]
    pub tenant: String,
    /// API key, sent as `authorization: Bearer <key>`.
    #[arg(long, env = "CALLSTORE_API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKey>,
}

impl ConnectionArgs {
    /// The server's endpoint (connecting within 10 s) and the metadata every request carries.
    pub(crate) fn endpoint(&self) -> Result<(Endpoint, CallerMetadata), String> {
        let endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|error| format!("--server {}: {error}", self.server))?
            .connect_timeout(std::time::Duration::from_secs(10));
        let metadata = CallerMetadata::new(&self.tenant, self.api_key.as_ref())?;
        Ok((endpoint, metadata))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_prints() {
        let key: ApiKey = "s3cret".parse().expect("a key");
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!("two words".parse::<ApiKey>().is_err());
    }
}
