//! The tower layer that authenticates every gRPC request before a handler sees it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::auth::{
    Access, AuthError, Authenticator, Caller, NoAuth, Principal, TENANT_HEADER, access_of,
    authorize,
};
use crate::error::ApiError;

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// API keys or client certificates.
    Keys(Arc<Authenticator>),
    /// `--insecure-no-auth`: every request is let through; the tenant is whatever it names.
    Off,
}

/// Authenticates requests (see the module `auth`).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    mode: AuthMode,
}

impl AuthLayer {
    pub fn new(mode: AuthMode) -> Self {
        Self { mode }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            mode: self.mode.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    mode: AuthMode,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mode = self.mode.clone();
        Box::pin(async move {
            match admit(&mode, &mut request).await {
                Ok(()) => inner.call(request).await,
                Err(error) => {
                    tracing::info!(rpc = %request.uri().path(), error = %error, "request refused by auth");
                    let status: tonic::Status = ApiError::from(error).into();
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Checks a request and leaves its [`Caller`] (or [`NoAuth`]) in its extensions.
async fn admit<B>(mode: &AuthMode, request: &mut Request<B>) -> Result<(), AuthError> {
    let authenticator = match mode {
        AuthMode::Off => {
            request.extensions_mut().insert(NoAuth);
            return Ok(());
        }
        AuthMode::Keys(authenticator) => authenticator,
    };
    let Access::Needs(scope) = access_of(request.uri().path()) else {
        return Ok(());
    };
    // What the check needs, taken out of the request so it is not held across awaits.
    let bearer = match request.headers().get(http::header::AUTHORIZATION) {
        Some(value) => Some(bearer_key(value)?.to_owned()),
        None => None,
    };
    let named = match request.headers().get(TENANT_HEADER) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| AuthError::BadTenant("must be ASCII text".to_owned()))?
                .to_owned(),
        ),
        None => None,
    };
    let certificate = peer_certificate(request);
    let principal: Principal = match (bearer, certificate) {
        (Some(key), _) => authenticator.key(&key).await?,
        (None, Some(certificate)) => authenticator.certificate(&certificate).await?,
        (None, None) => return Err(AuthError::Missing),
    };
    let caller: Caller = authorize(&principal, scope, named.as_deref())?;
    request.extensions_mut().insert(caller);
    Ok(())
}

/// The key of an `authorization: Bearer <key>` value.
pub fn bearer_key(value: &http::HeaderValue) -> Result<&str, AuthError> {
    let text = value.to_str().map_err(|_| AuthError::Invalid)?;
    text.strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(AuthError::Invalid)
}

/// The first certificate the client presented, when the connection is TLS with client auth
/// (rustls has verified it against the client CA).
fn peer_certificate<B>(request: &Request<B>) -> Option<Vec<u8>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certificates = info.peer_certs()?;
    certificates.first().map(|certificate| certificate.to_vec())
}
