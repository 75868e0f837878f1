//! Limits and overload protection.
//!
//! Two independent pieces, both in memory and per replica:
//!
//! - [`OverloadLayer`], a tower layer in front of every gRPC service: it bounds the unary
//!   requests in flight and the open streams, sheds what is over the bounds at once with
//!   RESOURCE_EXHAUSTED and a `RetryInfo`, refuses requests whose deadline has already expired,
//!   and cuts unary requests at `min(grpc-timeout, request_timeout)` with DEADLINE_EXCEEDED
//!   (dropping the handler's future, which cancels its database work).
//! - [`IngestRateLimiter`], a token bucket per tenant that the ingest handlers consult; a
//!   refusal becomes [`rate_limited_status`].
//!
//! Health checks and reflection are never shed, so an overloaded replica still answers its
//! probes.

mod overload;
mod rate;

use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::error::ERROR_DOMAIN;

pub use overload::{
    OverloadBody, OverloadLayer, OverloadService, OverloadSnapshot, RpcKind, classify,
    parse_grpc_timeout,
};
pub use rate::{DEFAULT_MAX_TRACKED_TENANTS, IngestRateLimiter};

/// How long a shed client is told to wait before retrying (the `RetryInfo` of an overload
/// refusal).
pub const OVERLOAD_RETRY_AFTER: Duration = Duration::from_millis(100);

/// `ErrorInfo` reason of a unary request shed because too many are in flight.
pub const REASON_OVERLOADED: &str = "OVERLOADED";
/// `ErrorInfo` reason of a stream refused because too many are open.
pub const REASON_TOO_MANY_STREAMS: &str = "TOO_MANY_STREAMS";
/// `ErrorInfo` reason of an ingest request over its tenant's rate.
pub const REASON_RATE_LIMITED: &str = "RATE_LIMITED";

/// Calls per second a tenant may ingest through one replica by default: above what one
/// replica stores (about 4,000 a second on 2 cores), so it only holds back a tenant that
/// would starve the others.
pub const DEFAULT_INGEST_RATE: f64 = 10_000.0;
/// The burst a tenant may ingest at once by default.
pub const DEFAULT_INGEST_BURST: u32 = 20_000;

/// The limits of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Unary requests in flight at once; the next one is shed with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Open streaming RPCs (WatchCalls, IngestCallStream) at once; the next one is refused
    /// with RESOURCE_EXHAUSTED.
    pub max_concurrent_streams: usize,
    /// The longest a unary request may run (a shorter `grpc-timeout` wins). Streams are not
    /// cut by it.
    pub request_timeout: Duration,
    /// Calls per second each tenant may ingest, and the burst it may use at once; `None`
    /// ingests without a rate limit.
    pub ingest_rate_per_tenant: Option<(f64, u32)>,
    /// The largest request message a service decodes, in bytes.
    pub max_decoding_message_size: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 256,
            max_concurrent_streams: 1000,
            request_timeout: Duration::from_secs(30),
            ingest_rate_per_tenant: Some((DEFAULT_INGEST_RATE, DEFAULT_INGEST_BURST)),
            max_decoding_message_size: 16 * 1024 * 1024,
        }
    }
}

impl LimitSettings {
    /// Checks the settings once at start-up: every bound must let at least something through.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_concurrent_requests == 0 {
            return Err(LimitsError::invalid(
                "max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(LimitsError::invalid(
                "max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(LimitsError::invalid(
                "request_timeout",
                "must be longer than zero",
            ));
        }
        if self.max_decoding_message_size == 0 {
            return Err(LimitsError::invalid(
                "max_decoding_message_size",
                "must be at least 1 byte",
            ));
        }
        if let Some((rate, burst)) = self.ingest_rate_per_tenant {
            rate::validate(rate, burst)?;
        }
        Ok(())
    }
}

/// A limit setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {problem}")]
pub struct LimitsError {
    /// The setting at fault.
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl LimitsError {
    fn invalid(setting: &'static str, problem: &'static str) -> Self {
        Self { setting, problem }
    }
}

/// The status for an ingest request refused by [`IngestRateLimiter::check`]:
/// RESOURCE_EXHAUSTED with `ErrorInfo` reason `RATE_LIMITED` and a `RetryInfo` of
/// `retry_after`.
pub fn rate_limited_status(retry_after: Duration) -> tonic::Status {
    resource_exhausted(
        format!(
            "the tenant's ingest rate limit is exceeded; retry after {} ms",
            retry_after.as_millis()
        ),
        REASON_RATE_LIMITED,
        retry_after,
    )
}

/// RESOURCE_EXHAUSTED carrying an `ErrorInfo` and a `RetryInfo`.
fn resource_exhausted(
    message: impl Into<String>,
    reason: &'static str,
    retry_after: Duration,
) -> tonic::Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, []);
    details.set_retry_info(Some(retry_after));
    tonic::Status::with_error_details(Code::ResourceExhausted, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let settings = LimitSettings::default();
        assert_eq!(settings.max_concurrent_requests, 256);
        assert_eq!(settings.max_concurrent_streams, 1000);
        assert_eq!(settings.request_timeout, Duration::from_secs(30));
        assert_eq!(settings.ingest_rate_per_tenant, Some((10_000.0, 20_000)));
        assert_eq!(settings.max_decoding_message_size, 16_777_216);
        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn settings_that_let_nothing_through_are_refused() {
        let refused = |change: fn(&mut LimitSettings)| {
            let mut settings = LimitSettings::default();
            change(&mut settings);
            settings.validate().err().map(|error| error.setting)
        };
        assert_eq!(
            refused(|s| s.max_concurrent_requests = 0),
            Some("max_concurrent_requests")
        );
        assert_eq!(
            refused(|s| s.max_concurrent_streams = 0),
            Some("max_concurrent_streams")
        );
        assert_eq!(
            refused(|s| s.request_timeout = Duration::ZERO),
            Some("request_timeout")
        );
        assert_eq!(
            refused(|s| s.max_decoding_message_size = 0),
            Some("max_decoding_message_size")
        );
        assert_eq!(
            refused(|s| s.ingest_rate_per_tenant = Some((0.0, 10))),
            Some("ingest_rate_per_tenant")
        );
        assert_eq!(
            refused(|s| s.ingest_rate_per_tenant = Some((f64::NAN, 10))),
            Some("ingest_rate_per_tenant")
        );
        assert_eq!(
            refused(|s| s.ingest_rate_per_tenant = Some((10.0, 0))),
            Some("ingest_rate_per_tenant")
        );
        assert_eq!(refused(|s| s.ingest_rate_per_tenant = None), None);
    }

    #[test]
    fn rate_limited_status_carries_reason_and_retry_delay() {
        let status = rate_limited_status(Duration::from_millis(250));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the tenant's ingest rate limit is exceeded; retry after 250 ms"
        );
        let retry = status
            .get_details_retry_info()
            .expect("status carries a RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
        let info = status
            .get_details_error_info()
            .expect("status carries an ErrorInfo");
        assert_eq!(info.reason, "RATE_LIMITED");
        assert_eq!(info.domain, "callstore.v1");
    }
}
