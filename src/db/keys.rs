//! The `api_keys` table: credentials of calling services (see `auth::keys`).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

use crate::db::{DbError, Scope};

/// A stored key or client-certificate principal.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct KeyRow {
    /// A tenant id, or `*` for an operator key.
    pub tenant_id: String,
    pub key_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub secret_sha256: Option<Vec<u8>>,
    pub client_cert_sha256: Option<Vec<u8>>,
    pub create_time: DateTime<Utc>,
    pub revoke_time: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "tenant_id, key_id, name, scopes, secret_sha256, client_cert_sha256,
     create_time, revoke_time";

/// What a new principal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeyRow<'key> {
    pub tenant_id: &'key str,
    pub key_id: &'key str,
    pub name: &'key str,
    pub scopes: &'key [String],
    pub secret_sha256: Option<&'key [u8]>,
    pub client_cert_sha256: Option<&'key [u8]>,
}

pub async fn insert(pool: &PgPool, key: &NewKeyRow<'_>) -> Result<KeyRow, DbError> {
    let mut transaction = super::begin(pool, Scope::Tenant(key.tenant_id)).await?;
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (tenant_id, key_id, name, scopes, secret_sha256, client_cert_sha256)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING {COLUMNS}"
    )))
    .bind(key.tenant_id)
    .bind(key.key_id)
    .bind(key.name)
    .bind(key.scopes)
    .bind(key.secret_sha256)
    .bind(key.client_cert_sha256)
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(row)
}

/// The key `(tenant_id, key_id)`, revoked or not.
pub async fn find(pool: &PgPool, tenant_id: &str, key_id: &str) -> Result<Option<KeyRow>, DbError> {
    let mut connection = super::begin(pool, Scope::Tenant(tenant_id)).await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2"
    )))
    .bind(tenant_id)
    .bind(key_id)
    .fetch_optional(&mut *connection)
    .await?)
}

/// The unrevoked principal of a client certificate. Certificates arrive without a tenant, so
/// this reads across tenants: the table is small and the authenticator caches the answer.
pub async fn find_by_certificate(
    pool: &PgPool,
    certificate_sha256: &[u8],
) -> Result<Option<KeyRow>, DbError> {
    let mut connection = super::begin(pool, Scope::AllTenants).await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys
         WHERE client_cert_sha256 = $1 AND revoke_time IS NULL
         ORDER BY create_time DESC
         LIMIT 1"
    )))
    .bind(certificate_sha256)
    .fetch_optional(&mut *connection)
    .await?)
}

/// Keys of a tenant (every tenant's when `None`), newest first.
pub async fn list(pool: &PgPool, tenant_id: Option<&str>) -> Result<Vec<KeyRow>, DbError> {
    let scope = tenant_id.map_or(Scope::AllTenants, Scope::Tenant);
    let mut connection = super::begin(pool, scope).await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys
         WHERE $1::text IS NULL OR tenant_id = $1
         ORDER BY create_time DESC, key_id"
    )))
    .bind(tenant_id)
    .fetch_all(&mut *connection)
    .await?)
}

/// Revokes a key; `NotFound` when the tenant has no such key. Revoking twice keeps the first
/// time.
pub async fn revoke(pool: &PgPool, tenant_id: &str, key_id: &str) -> Result<KeyRow, DbError> {
    let mut transaction = super::begin(pool, Scope::Tenant(tenant_id)).await?;
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoke_time = coalesce(revoke_time, now())
         WHERE tenant_id = $1 AND key_id = $2
         RETURNING {COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(key_id)
    .fetch_optional(&mut *transaction)
    .await?
    .ok_or(DbError::NotFound)?;
    transaction.commit().await?;
    Ok(row)
}
