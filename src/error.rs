//! The one error type of the API layer and its mapping to `tonic::Status`.
//!
//! Every handler returns `Result<_, ApiError>`; the conversion below is the only place that
//! decides which gRPC code a client sees. Internal causes are logged here with their full chain
//! and never sent to the client.

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The domain of the `google.rpc.ErrorInfo` details callstore sends.
pub const ERROR_DOMAIN: &str = "callstore.v1";

/// One field of a request that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `calls[3].callee`.
    pub field: String,
    /// What is wrong with it, in lowercase English.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument: {} field violation(s)", .0.len())]
    InvalidArgument(Vec<FieldViolation>),

    #[error("{resource} not found")]
    NotFound { resource: &'static str },

    #[error("{0}")]
    AlreadyExists(String),

    #[error("{0}")]
    FailedPrecondition(String),

    /// A feed cursor older than retention: FAILED_PRECONDITION with reason CURSOR_EXPIRED.
    #[error("{0}")]
    CursorExpired(String),

    /// A stream ended early and can be resumed: UNAVAILABLE with the reason and the cursor to
    /// resume from in its ErrorInfo.
    #[error("{message}")]
    StreamEnded {
        reason: &'static str,
        message: String,
        cursor: String,
    },

    #[error("{0}")]
    ResourceExhausted(String),

    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),

    /// Valid credentials that do not allow the request.
    #[error("{0}")]
    PermissionDenied(String),

    #[error("{0}")]
    Unavailable(String),

    #[error("{0}")]
    Aborted(String),

    #[error("{0}")]
    DeadlineExceeded(String),

    #[error("{method} is not implemented yet")]
    Unimplemented { method: &'static str },

    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn unimplemented(method: &'static str) -> Self {
        Self::Unimplemented { method }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) | Self::CursorExpired(_) => Code::FailedPrecondition,
            Self::StreamEnded { .. } => Code::Unavailable,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Aborted(_) => Code::Aborted,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Unimplemented { .. } => Code::Unimplemented,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> Self {
        Self::from(&error)
    }
}

/// By reference, for an error shared by every call of a failed group commit.
impl From<&crate::db::DbError> for ApiError {
    fn from(error: &crate::db::DbError) -> Self {
        use crate::db::DbError;
        match error {
            DbError::NotFound => Self::NotFound {
                resource: "resource",
            },
            DbError::Conflict { constraint } => {
                tracing::debug!(constraint = %constraint, "unique constraint violated");
                Self::AlreadyExists("the resource already exists".to_owned())
            }
            DbError::MissingReference { constraint } => {
                tracing::debug!(constraint = %constraint, "foreign key violated");
                Self::FailedPrecondition("a resource it refers to does not exist".to_owned())
            }
            DbError::InvalidData(cause) => {
                tracing::warn!(error = %cause, "the database rejected a value");
                Self::InvalidArgument(vec![FieldViolation::new(
                    "request",
                    "contains a value the store cannot hold",
                )])
            }
            DbError::Aborted(cause) => {
                tracing::info!(error = %cause, "transaction aborted");
                Self::Aborted("the transaction conflicted with another; retry".to_owned())
            }
            DbError::Cancelled(cause) => {
                tracing::info!(error = %cause, "statement cancelled");
                Self::DeadlineExceeded("the request took too long".to_owned())
            }
            DbError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Self::Unavailable("the database is unavailable, retry later".to_owned())
            }
            DbError::Other(cause) => Self::Internal(anyhow::anyhow!("{cause}")),
        }
    }
}

impl ApiError {
    /// The error as a `google.rpc.Status` message, for per-item results of batch RPCs.
    pub fn into_rpc_status(self) -> tonic_types::pb::Status {
        use prost::Message as _;
        let status = tonic::Status::from(self);
        // with_error_details puts the encoded google.rpc.Status (with its details) in details.
        tonic_types::pb::Status::decode(status.details())
            .ok()
            .filter(|decoded| decoded.code == status.code() as i32)
            .unwrap_or_else(|| tonic_types::pb::Status {
                code: status.code() as i32,
                message: status.message().to_owned(),
                details: Vec::new(),
            })
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => {
                let summary = match violations.as_slice() {
                    [only] => format!("invalid {}: {}", only.field, only.description),
                    many => format!("{} invalid fields", many.len()),
                };
                let mut details = ErrorDetails::new();
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.description);
                }
                tonic::Status::with_error_details(Code::InvalidArgument, summary, details)
            }
            ApiError::CursorExpired(message) => {
                let mut details = ErrorDetails::new();
                details.set_error_info("CURSOR_EXPIRED", ERROR_DOMAIN, []);
                tonic::Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            ApiError::StreamEnded {
                reason,
                message,
                cursor,
            } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(reason, ERROR_DOMAIN, [("cursor".to_owned(), cursor)]);
                details.set_retry_info(Some(std::time::Duration::from_millis(100)));
                tonic::Status::with_error_details(Code::Unavailable, message, details)
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                tonic::Status::internal("internal error")
            }
            other => tonic::Status::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status = tonic::Status::from(ApiError::InvalidArgument(vec![
            FieldViolation::new("calls[0].callee", "must not be empty"),
            FieldViolation::new("calls[2].dial_time", "is in the future"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status
            .get_details_bad_request()
            .expect("status carries a BadRequest");
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(fields, ["calls[0].callee", "calls[2].dial_time"]);
    }

    #[test]
    fn item_errors_become_rpc_statuses_with_their_details() {
        let status =
            ApiError::invalid_field("calls[1].callee", "must not be empty").into_rpc_status();
        assert_eq!(status.code, Code::InvalidArgument as i32);
        assert_eq!(status.details.len(), 1);
        assert!(
            status.details[0]
                .type_url
                .ends_with("google.rpc.BadRequest")
        );

        let plain = ApiError::FailedPrecondition("no".to_owned()).into_rpc_status();
        assert_eq!(plain.code, Code::FailedPrecondition as i32);
        assert_eq!(plain.message, "no");
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status = tonic::Status::from(ApiError::Internal(anyhow::anyhow!(
            "relation \"calls\" does not exist"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
