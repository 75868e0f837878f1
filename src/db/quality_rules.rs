//! Rule sets (versioned) and scoring profiles of quality inspection.
//!
//! A rule set's row holds its current state; every version's rules are kept in
//! `rule_set_versions`, so a result scored with an older version can still be explained and
//! re-scored. A change of rules, name or profile makes a new version; making a rule set active
//! or inactive does not (it changes which calls are scored, not how).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::db::{DbError, catalog, retry_aborted};
use crate::domain::TenantId;
use crate::quality::Scorer;
use crate::quality::rules::{CompiledRuleSet, Rule};
use crate::quality::score::Profile;

/// A stored scoring profile.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct ProfileRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub base: f64,
    pub lower_bound: f64,
    pub upper_bound: f64,
    pub create_time: DateTime<Utc>,
}

impl ProfileRow {
    /// The profile as scoring uses it.
    pub fn profile(&self) -> Profile {
        Profile {
            id: Some(self.id),
            name: self.name.clone(),
            base: self.base,
            lower_bound: self.lower_bound,
            upper_bound: self.upper_bound,
        }
    }
}

/// What a profile says (the API validates it: bounds ordered, base within them).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileValues {
    pub name: String,
    pub base: f64,
    pub lower_bound: f64,
    pub upper_bound: f64,
}

/// A rule set at one version.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct RuleSetRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub version: i64,
    pub scoring_profile_id: Option<Uuid>,
    /// Whether the rule set is active now (whatever version was read).
    pub active: bool,
    pub rules: Json<Vec<Rule>>,
    pub create_time: DateTime<Utc>,
    /// When this version was made.
    pub update_time: DateTime<Utc>,
}

/// What a rule set says.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSetValues {
    pub name: String,
    pub rules: Vec<Rule>,
    pub scoring_profile_id: Option<Uuid>,
    pub active: bool,
}

/// Why an update did not happen: its change refused the values, or the database failed.
#[derive(Debug)]
pub enum UpdateError<E> {
    Refused(E),
    Db(DbError),
}

impl<E> From<DbError> for UpdateError<E> {
    fn from(error: DbError) -> Self {
        Self::Db(error)
    }
}

impl<E> From<sqlx::Error> for UpdateError<E> {
    fn from(error: sqlx::Error) -> Self {
        Self::Db(DbError::from(error))
    }
}

impl<E> crate::db::MaybeAborted for UpdateError<E> {
    fn aborted(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Db(error) => error.aborted(),
            Self::Refused(_) => None,
        }
    }
}

/// Where a page of rule sets or profiles ends: creation time and id.
pub type ListPosition = (DateTime<Utc>, Uuid);

const PROFILE_COLUMNS: &str = "id, tenant_id, name, base, lower_bound, upper_bound, create_time";

const RULE_SET_COLUMNS: &str =
    "r.id, r.tenant_id, v.name, v.version, v.scoring_profile_id, r.active,
     v.rules, r.create_time, v.create_time AS update_time";

pub async fn create_profile(
    pool: &PgPool,
    tenant: &TenantId,
    values: &ProfileValues,
) -> Result<ProfileRow, DbError> {
    let mut transaction = super::begin(pool, tenant).await?;
    catalog::ensure_tenant(&mut transaction, tenant).await?;
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO scoring_profiles (tenant_id, name, base, lower_bound, upper_bound)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING {PROFILE_COLUMNS}"
    )))
    .bind(tenant.as_str())
    .bind(&values.name)
    .bind(values.base)
    .bind(values.lower_bound)
    .bind(values.upper_bound)
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(row)
}

pub async fn get_profile(
    connection: &mut PgConnection,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<ProfileRow>, DbError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROFILE_COLUMNS} FROM scoring_profiles WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant.as_str())
    .bind(id)
    .fetch_optional(connection)
    .await?)
}

/// Profiles in creation order, after `after`.
pub async fn list_profiles(
    pool: &PgPool,
    tenant: &TenantId,
    after: Option<&ListPosition>,
    limit: i64,
) -> Result<Vec<ProfileRow>, DbError> {
    list_after(
        pool,
        tenant,
        &format!("SELECT {PROFILE_COLUMNS} FROM scoring_profiles WHERE tenant_id = $1"),
        "",
        after,
        limit,
    )
    .await
}

/// Rows of `select` (which binds the tenant as `$1`) in `(create_time, id)` order of the table
/// aliased `alias` (empty: unaliased), after `after`.
async fn list_after<Row>(
    pool: &PgPool,
    tenant: &TenantId,
    select: &str,
    alias: &str,
    after: Option<&ListPosition>,
    limit: i64,
) -> Result<Vec<Row>, DbError>
where
    Row: for<'row> FromRow<'row, sqlx::postgres::PgRow> + Send + Unpin,
{
    let key = format!("({alias}create_time, {alias}id)");
    let mut connection = super::begin(pool, tenant).await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{select} AND ($2::timestamptz IS NULL OR {key} > ($2, $3)) ORDER BY {key} LIMIT $4"
    )))
    .bind(tenant.as_str())
    .bind(after.map(|(time, _)| *time))
    .bind(after.map(|(_, id)| *id))
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?)
}

/// Updates a profile: `change` edits its current values (and may refuse them). `NotFound`
/// when there is no such profile.
pub async fn update_profile<E, F>(
    pool: &PgPool,
    tenant: &TenantId,
    id: Uuid,
    change: F,
) -> Result<ProfileRow, UpdateError<E>>
where
    F: Fn(&mut ProfileValues) -> Result<(), E>,
{
    retry_aborted("update scoring profile", || async {
        let mut transaction = super::begin(pool, tenant).await?;
        let current: ProfileRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PROFILE_COLUMNS} FROM scoring_profiles
             WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        )))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(DbError::from)?
        .ok_or(DbError::NotFound)?;
        let mut values = ProfileValues {
            name: current.name,
            base: current.base,
            lower_bound: current.lower_bound,
            upper_bound: current.upper_bound,
        };
        change(&mut values).map_err(UpdateError::Refused)?;
        let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE scoring_profiles
             SET name = $3, base = $4, lower_bound = $5, upper_bound = $6, update_time = now()
             WHERE tenant_id = $1 AND id = $2
             RETURNING {PROFILE_COLUMNS}"
        )))
        .bind(tenant.as_str())
        .bind(id)
        .bind(&values.name)
        .bind(values.base)
        .bind(values.lower_bound)
        .bind(values.upper_bound)
        .fetch_one(&mut *transaction)
        .await
        .map_err(DbError::from)?;
        transaction.commit().await.map_err(DbError::from)?;
        Ok(row)
    })
    .await
}

/// Deletes a profile. `NotFound` when there is none; `MissingReference` (the foreign key of
/// `rule_sets`) while a rule set uses it.
pub async fn delete_profile(pool: &PgPool, tenant: &TenantId, id: Uuid) -> Result<(), DbError> {
    let mut transaction = super::begin(pool, tenant).await?;
    let deleted = sqlx::query("DELETE FROM scoring_profiles WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.as_str())
        .bind(id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(DbError::NotFound);
    }
    transaction.commit().await?;
    Ok(())
}

/// Creates a rule set at version 1. A profile id of another tenant or none is
/// `MissingReference`.
pub async fn create_rule_set(
    pool: &PgPool,
    tenant: &TenantId,
    values: &RuleSetValues,
) -> Result<RuleSetRow, DbError> {
    retry_aborted("create rule set", || async {
        let mut transaction = super::begin(pool, tenant).await?;
        catalog::ensure_tenant(&mut transaction, tenant).await?;
        if values.active {
            deactivate_all(&mut transaction, tenant).await?;
        }
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO rule_sets (tenant_id, name, scoring_profile_id, active)
             VALUES ($1, $2, $3, $4)
             RETURNING id",
        )
        .bind(tenant.as_str())
        .bind(&values.name)
        .bind(values.scoring_profile_id)
        .bind(values.active)
        .fetch_one(&mut *transaction)
        .await?;
        insert_version(&mut transaction, tenant, id, 1, values).await?;
        let row = read_rule_set(&mut transaction, tenant, id, None)
            .await?
            .ok_or(DbError::NotFound)?;
        transaction.commit().await?;
        Ok(row)
    })
    .await
}

/// A rule set at `version`, or at its latest when `None`.
pub async fn get_rule_set(
    pool: &PgPool,
    tenant: &TenantId,
    id: Uuid,
    version: Option<i64>,
) -> Result<Option<RuleSetRow>, DbError> {
    let mut connection = super::begin(pool, tenant).await?;
    read_rule_set(&mut connection, tenant, id, version).await
}

/// Rule sets at their latest version, in creation order, after `after`.
pub async fn list_rule_sets(
    pool: &PgPool,
    tenant: &TenantId,
    after: Option<&ListPosition>,
    limit: i64,
) -> Result<Vec<RuleSetRow>, DbError> {
    list_after(
        pool,
        tenant,
        &format!(
            "SELECT {RULE_SET_COLUMNS}
             FROM rule_sets r
             JOIN rule_set_versions v
               ON v.tenant_id = r.tenant_id AND v.rule_set_id = r.id AND v.version = r.version
             WHERE r.tenant_id = $1"
        ),
        "r.",
        after,
        limit,
    )
    .await
}

/// Updates a rule set: `change` edits its current values (and may refuse them). A change of
/// name, rules or profile makes a new version; the active flag alone does not.
pub async fn update_rule_set<E, F>(
    pool: &PgPool,
    tenant: &TenantId,
    id: Uuid,
    change: F,
) -> Result<RuleSetRow, UpdateError<E>>
where
    F: Fn(&mut RuleSetValues) -> Result<(), E>,
{
    retry_aborted("update rule set", || async {
        let mut transaction = super::begin(pool, tenant).await?;
        // The tenant's row orders concurrent activations.
        lock_tenant(&mut transaction, tenant).await?;
        let current = read_rule_set(&mut transaction, tenant, id, None)
            .await?
            .ok_or(DbError::NotFound)?;
        let before = RuleSetValues {
            name: current.name,
            rules: current.rules.0,
            scoring_profile_id: current.scoring_profile_id,
            active: current.active,
        };
        let mut values = before.clone();
        change(&mut values).map_err(UpdateError::Refused)?;
        if values.active && !before.active {
            deactivate_all(&mut transaction, tenant).await?;
        }
        let new_version = values.name != before.name
            || values.rules != before.rules
            || values.scoring_profile_id != before.scoring_profile_id;
        let version = if new_version {
            current.version + 1
        } else {
            current.version
        };
        sqlx::query(
            "UPDATE rule_sets
             SET name = $3, version = $4, scoring_profile_id = $5, active = $6, update_time = now()
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(&values.name)
        .bind(version)
        .bind(values.scoring_profile_id)
        .bind(values.active)
        .execute(&mut *transaction)
        .await
        .map_err(DbError::from)?;
        if new_version {
            insert_version(&mut transaction, tenant, id, version, &values).await?;
        }
        let row = read_rule_set(&mut transaction, tenant, id, None)
            .await?
            .ok_or(DbError::NotFound)?;
        transaction.commit().await.map_err(DbError::from)?;
        Ok(row)
    })
    .await
}

/// Deletes a rule set with its versions and re-scoring jobs. Results scored with it keep its id,
/// version and hits. `NotFound` when there is none.
pub async fn delete_rule_set(pool: &PgPool, tenant: &TenantId, id: Uuid) -> Result<(), DbError> {
    let mut transaction = super::begin(pool, tenant).await?;
    let deleted = sqlx::query("DELETE FROM rule_sets WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.as_str())
        .bind(id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(DbError::NotFound);
    }
    transaction.commit().await?;
    Ok(())
}

/// Compiled rule sets by id and version. A version, once written, never changes, so an entry
/// is never stale; the map is emptied when it grows past [`COMPILED_CACHE_SIZE`].
static COMPILED: LazyLock<Mutex<CompiledCache>> = LazyLock::new(Mutex::default);

/// Compiled rules by rule set id and version.
type CompiledCache = HashMap<(Uuid, i64), Arc<CompiledRuleSet>>;

const COMPILED_CACHE_SIZE: usize = 1024;

/// The scorer of the tenant's active rule set at its latest version, if there is one. One
/// statement when the version's compiled rules are cached.
pub async fn active_scorer(
    connection: &mut PgConnection,
    tenant: &TenantId,
) -> Result<Option<Scorer>, DbError> {
    scorer_where(connection, tenant, None, None).await
}

/// The scorer of a rule set at `version` (latest when `None`), with its profile (the built-in
/// one when it names none).
pub async fn scorer(
    connection: &mut PgConnection,
    tenant: &TenantId,
    id: Uuid,
    version: Option<i64>,
) -> Result<Option<Scorer>, DbError> {
    scorer_where(connection, tenant, Some(id), version).await
}

#[derive(FromRow)]
struct ScorerRow {
    id: Uuid,
    version: i64,
    profile_id: Option<Uuid>,
    profile_name: Option<String>,
    base: Option<f64>,
    lower_bound: Option<f64>,
    upper_bound: Option<f64>,
}

/// The scorer of rule set `id` (the active one when `None`) at `version` (latest when `None`).
async fn scorer_where(
    connection: &mut PgConnection,
    tenant: &TenantId,
    id: Option<Uuid>,
    version: Option<i64>,
) -> Result<Option<Scorer>, DbError> {
    let row: Option<ScorerRow> = sqlx::query_as(
        "SELECT v.rule_set_id AS id, v.version, p.id AS profile_id, p.name AS profile_name,
                p.base, p.lower_bound, p.upper_bound
         FROM rule_sets r
         JOIN rule_set_versions v
           ON v.tenant_id = r.tenant_id AND v.rule_set_id = r.id
          AND v.version = coalesce($3, r.version)
         LEFT JOIN scoring_profiles p
           ON p.tenant_id = v.tenant_id AND p.id = v.scoring_profile_id
         WHERE r.tenant_id = $1 AND (r.id = $2 OR ($2 IS NULL AND r.active))",
    )
    .bind(tenant.as_str())
    .bind(id)
    .bind(version)
    .fetch_optional(&mut *connection)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let profile = match (
        row.profile_id,
        row.profile_name,
        row.base,
        row.lower_bound,
        row.upper_bound,
    ) {
        (Some(id), Some(name), Some(base), Some(lower_bound), Some(upper_bound)) => Profile {
            id: Some(id),
            name,
            base,
            lower_bound,
            upper_bound,
        },
        _ => Profile::builtin(),
    };
    let key = (row.id, row.version);
    let cached = COMPILED
        .lock()
        .ok()
        .and_then(|compiled| compiled.get(&key).cloned());
    let rules = match cached {
        Some(rules) => rules,
        None => {
            let Some(stored) = read_rule_set(connection, tenant, row.id, Some(row.version)).await?
            else {
                return Ok(None);
            };
            // Stored rules were validated when written; rules that no longer compile (a
            // stricter release) score nothing rather than fail ingest.
            let rules = match CompiledRuleSet::compile(row.id, row.version, &stored.rules.0) {
                Ok(rules) => Arc::new(rules),
                Err(violations) => {
                    tracing::warn!(rule_set_id = %row.id, version = row.version, ?violations, "stored rule set does not compile; not scoring with it");
                    return Ok(None);
                }
            };
            if let Ok(mut compiled) = COMPILED.lock() {
                if compiled.len() >= COMPILED_CACHE_SIZE {
                    compiled.clear();
                }
                compiled.insert(key, Arc::clone(&rules));
            }
            rules
        }
    };
    Ok(Some(Scorer { rules, profile }))
}

async fn read_rule_set(
    connection: &mut PgConnection,
    tenant: &TenantId,
    id: Uuid,
    version: Option<i64>,
) -> Result<Option<RuleSetRow>, DbError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RULE_SET_COLUMNS}
         FROM rule_sets r
         JOIN rule_set_versions v
           ON v.tenant_id = r.tenant_id AND v.rule_set_id = r.id
          AND v.version = coalesce($3, r.version)
         WHERE r.tenant_id = $1 AND r.id = $2"
    )))
    .bind(tenant.as_str())
    .bind(id)
    .bind(version)
    .fetch_optional(connection)
    .await?)
}

async fn insert_version(
    connection: &mut PgConnection,
    tenant: &TenantId,
    id: Uuid,
    version: i64,
    values: &RuleSetValues,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO rule_set_versions (tenant_id, rule_set_id, version, name, rules,
             scoring_profile_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant.as_str())
    .bind(id)
    .bind(version)
    .bind(&values.name)
    .bind(Json(&values.rules))
    .bind(values.scoring_profile_id)
    .execute(connection)
    .await?;
    Ok(())
}

async fn lock_tenant(connection: &mut PgConnection, tenant: &TenantId) -> Result<(), DbError> {
    sqlx::query("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant.as_str())
        .execute(connection)
        .await?;
    Ok(())
}

async fn deactivate_all(connection: &mut PgConnection, tenant: &TenantId) -> Result<(), DbError> {
    lock_tenant(&mut *connection, tenant).await?;
    sqlx::query("UPDATE rule_sets SET active = false WHERE tenant_id = $1 AND active")
        .bind(tenant.as_str())
        .execute(connection)
        .await?;
    Ok(())
}
