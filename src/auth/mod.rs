//! Who is calling: API keys (or client certificates) bound to a tenant and scopes, checked in
//! one tower layer in front of every service but health and reflection.
//!
//! A request carries `authorization: Bearer <key>`. A tenant key acts for its tenant only: an
//! `x-tenant-id` naming another tenant is refused, so no request can reach into another
//! tenant's data. An operator key (`keys create` without `--tenant`) acts for the tenant the
//! request names in `x-tenant-id`. Each RPC needs a scope: `ingest` (IngestService and the
//! webhooks), `read` (QueryService and quality reads), `watch` (WatchService), `admin` (rule
//! sets, profiles, re-scoring). Missing or unknown credentials are UNAUTHENTICATED, a missing
//! scope or another tenant PERMISSION_DENIED. Handlers take the tenant from the [`Caller`] the
//! layer leaves in the request; only the explicit `--insecure-no-auth` mode lets them read it
//! from `x-tenant-id` unchecked.

pub mod admin;
pub mod keys;
pub mod layer;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use crate::db::keys as stored_keys;
use crate::domain::TenantId;
use crate::error::ApiError;
use keys::{KeyOwner, PresentedKey};

/// Metadata naming the tenant a request acts for.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Ingest,
    Read,
    Watch,
    Admin,
}

impl Scope {
    pub const ALL: [Self; 4] = [Self::Ingest, Self::Read, Self::Watch, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Watch => "watch",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text.trim())
    }
}

/// An authenticated credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub owner: KeyOwner,
    pub key_id: String,
    pub scopes: Vec<Scope>,
}

/// The caller of a request, left in its extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    /// The key (or certificate principal) that authenticated the request.
    pub key_id: String,
}

/// Left in a request's extensions in `--insecure-no-auth` mode: the tenant is read from the
/// request's `x-tenant-id`, unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAuth;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `authorization: Bearer <key>`")]
    Missing,
    #[error("the credentials are not valid")]
    Invalid,
    #[error("the key lacks the {0} scope")]
    Scope(&'static str),
    #[error("the key is bound to another tenant than the request names")]
    OtherTenant,
    #[error("an operator key must name the tenant in x-tenant-id")]
    TenantRequired,
    #[error("x-tenant-id: {0}")]
    BadTenant(String),
    #[error("the credentials cannot be checked now; retry")]
    Unavailable,
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing | AuthError::Invalid => Self::Unauthenticated(error.to_string()),
            AuthError::Scope(_) | AuthError::OtherTenant => {
                Self::PermissionDenied(error.to_string())
            }
            AuthError::TenantRequired => Self::invalid_field(
                format!("metadata.{TENANT_HEADER}"),
                "is required with an operator key: name the tenant",
            ),
            AuthError::BadTenant(description) => {
                Self::invalid_field(format!("metadata.{TENANT_HEADER}"), description)
            }
            AuthError::Unavailable => Self::Unavailable(error.to_string()),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks and reflection: no credentials.
    Public,
    Needs(Scope),
}

/// The access an RPC path (`/package.Service/Method`) needs. Unknown paths need admin, so a
/// new service is closed until it is given a scope here.
pub fn access_of(path: &str) -> Access {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Access::Public,
        "callstore.v1.IngestService" => Access::Needs(Scope::Ingest),
        "callstore.v1.QueryService" => Access::Needs(Scope::Read),
        "callstore.v1.WatchService" => Access::Needs(Scope::Watch),
        "callstore.v1.QualityService" => match method {
            "GetQuality"
            | "GetRuleSet"
            | "ListRuleSets"
            | "ListScoringProfiles"
            | "GetRescoreJob" => Access::Needs(Scope::Read),
            _ => Access::Needs(Scope::Admin),
        },
        _ => Access::Needs(Scope::Admin),
    }
}

/// How long a checked credential is trusted before it is read again (a revocation takes
/// effect within this time).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);

/// Entries kept before the cache is emptied.
const CACHE_SIZE: usize = 10_000;

/// Checks credentials against the store, caching answers (unknown keys too, so a caller
/// retrying a bad key does not reach the database each time).
#[derive(Debug)]
pub struct Authenticator {
    pool: PgPool,
    ttl: Duration,
    cache: Mutex<CheckedCredentials>,
}

/// Credentials checked, by the SHA-256 of what was presented: when, and whose (none: invalid).
type CheckedCredentials = HashMap<[u8; 32], (Instant, Option<Principal>)>;

impl Authenticator {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The principal of a presented key text (the part after `Bearer `).
    pub async fn key(&self, text: &str) -> Result<Principal, AuthError> {
        let key = PresentedKey::parse(text).ok_or(AuthError::Invalid)?;
        let cache_key: [u8; 32] = Sha256::digest(text.trim().as_bytes()).into();
        if let Some(cached) = self.cached(&cache_key) {
            return cached.ok_or(AuthError::Invalid);
        }
        let row = stored_keys::find(&self.pool, key.owner.column(), &key.key_id)
            .await
            .map_err(|error| {
                tracing::warn!(error = %error, "cannot read api keys");
                AuthError::Unavailable
            })?;
        let principal = row
            .filter(|row| row.revoke_time.is_none())
            .filter(|row| {
                row.secret_sha256
                    .as_deref()
                    .is_some_and(|hash| key.matches(hash))
            })
            .map(|row| principal_of(&row, key.owner.clone()));
        self.remember(cache_key, principal.clone());
        principal.ok_or(AuthError::Invalid)
    }

    /// The principal of a verified client certificate (DER), if one is registered.
    pub async fn certificate(&self, der: &[u8]) -> Result<Principal, AuthError> {
        let fingerprint = keys::certificate_sha256(der);
        let mut cache_key = [0_u8; 32];
        cache_key.copy_from_slice(&Sha256::digest(
            [b"cert:".as_slice(), &fingerprint].concat(),
        ));
        if let Some(cached) = self.cached(&cache_key) {
            return cached.ok_or(AuthError::Invalid);
        }
        let row = stored_keys::find_by_certificate(&self.pool, &fingerprint)
            .await
            .map_err(|error| {
                tracing::warn!(error = %error, "cannot read api keys");
                AuthError::Unavailable
            })?;
        let principal = row.and_then(|row| {
            let owner = KeyOwner::from_column(&row.tenant_id)?;
            Some(principal_of(&row, owner))
        });
        self.remember(cache_key, principal.clone());
        principal.ok_or(AuthError::Invalid)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Option<Principal>> {
        let cache = self.cache.lock().ok()?;
        let (at, principal) = cache.get(key)?;
        (at.elapsed() < self.ttl).then(|| principal.clone())
    }

    fn remember(&self, key: [u8; 32], principal: Option<Principal>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), principal));
        }
    }
}

fn principal_of(row: &stored_keys::KeyRow, owner: KeyOwner) -> Principal {
    Principal {
        owner,
        key_id: row.key_id.clone(),
        scopes: row
            .scopes
            .iter()
            .filter_map(|scope| Scope::parse(scope))
            .collect(),
    }
}

/// The caller a principal is for a request that needs `scope` and names `named_tenant`.
pub fn authorize(
    principal: &Principal,
    scope: Scope,
    named_tenant: Option<&str>,
) -> Result<Caller, AuthError> {
    if !principal.scopes.contains(&scope) {
        return Err(AuthError::Scope(scope.as_str()));
    }
    let tenant = match (&principal.owner, named_tenant) {
        (KeyOwner::Tenant(own), None) => own.clone(),
        (KeyOwner::Tenant(own), Some(named)) if named == own.as_str() => own.clone(),
        (KeyOwner::Tenant(_), Some(_)) => return Err(AuthError::OtherTenant),
        (KeyOwner::Operator, None) => return Err(AuthError::TenantRequired),
        (KeyOwner::Operator, Some(named)) => {
            TenantId::parse(named).map_err(AuthError::BadTenant)?
        }
    };
    Ok(Caller {
        tenant,
        key_id: principal.key_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(owner: KeyOwner, scopes: &[Scope]) -> Principal {
        Principal {
            owner,
            key_id: "0123456789abcdef".to_owned(),
            scopes: scopes.to_vec(),
        }
    }

    fn acme() -> TenantId {
        TenantId::parse("acme").expect("tenant")
    }

    #[test]
    fn a_tenant_key_acts_for_its_tenant_only() {
        let key = principal(KeyOwner::Tenant(acme()), &[Scope::Read]);
        assert_eq!(
            authorize(&key, Scope::Read, None).map(|caller| caller.tenant),
            Ok(acme())
        );
        assert_eq!(
            authorize(&key, Scope::Read, Some("acme")).map(|caller| caller.tenant),
            Ok(acme())
        );
        assert_eq!(
            authorize(&key, Scope::Read, Some("other")),
            Err(AuthError::OtherTenant)
        );
        assert_eq!(
            authorize(&key, Scope::Ingest, None),
            Err(AuthError::Scope("ingest"))
        );
    }

    #[test]
    fn an_operator_key_acts_for_the_tenant_named() {
        let key = principal(KeyOwner::Operator, &Scope::ALL);
        assert_eq!(
            authorize(&key, Scope::Admin, Some("other")).map(|caller| caller.tenant.to_string()),
            Ok("other".to_owned())
        );
        assert_eq!(
            authorize(&key, Scope::Admin, None),
            Err(AuthError::TenantRequired)
        );
        assert!(matches!(
            authorize(&key, Scope::Admin, Some("not a tenant")),
            Err(AuthError::BadTenant(_))
        ));
    }

    #[test]
    fn every_service_has_its_scope_and_unknown_paths_need_admin() {
        for (path, access) in [
            ("/grpc.health.v1.Health/Check", Access::Public),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                Access::Public,
            ),
            (
                "/callstore.v1.IngestService/IngestCalls",
                Access::Needs(Scope::Ingest),
            ),
            (
                "/callstore.v1.QueryService/ListCalls",
                Access::Needs(Scope::Read),
            ),
            (
                "/callstore.v1.WatchService/WatchCalls",
                Access::Needs(Scope::Watch),
            ),
            (
                "/callstore.v1.QualityService/GetQuality",
                Access::Needs(Scope::Read),
            ),
            (
                "/callstore.v1.QualityService/CreateRuleSet",
                Access::Needs(Scope::Admin),
            ),
            (
                "/callstore.v1.QualityService/RescoreCalls",
                Access::Needs(Scope::Admin),
            ),
            ("/callstore.v2.Anything/New", Access::Needs(Scope::Admin)),
            ("", Access::Needs(Scope::Admin)),
        ] {
            assert_eq!(access_of(path), access, "{path}");
        }
    }
}
