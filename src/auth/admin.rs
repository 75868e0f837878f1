//! `callstore keys`: creating, listing and revoking credentials, in the database directly (an
//! operator's command, like `migrate`: no running server, no key, is needed to make the first).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::auth::Scope;
use crate::auth::keys::{KeyOwner, NewKey, certificate_sha256};
use crate::cli::DatabaseArgs;
use crate::db::keys::{self, KeyRow, NewKeyRow};
use crate::domain::TenantId;

/// `callstore keys …`
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once (only its hash is kept). With --client-cert, register
    /// a client certificate (mTLS) as the credential instead.
    Create {
        /// The tenant the key acts for.
        #[arg(
            long,
            required_unless_present = "operator",
            conflicts_with = "operator"
        )]
        tenant: Option<String>,
        /// An operator key: acts for the tenant each request names in x-tenant-id.
        #[arg(long)]
        operator: bool,
        /// What the key allows, comma-separated: ingest, read, watch, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A name to recognise the key by (the calling service).
        #[arg(long, default_value = "")]
        name: String,
        /// PEM file of a client certificate that authenticates as this principal.
        #[arg(long)]
        client_cert: Option<PathBuf>,
    },
    /// List keys (never their secrets).
    List {
        /// Only this tenant's keys (`*` for operator keys).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key; servers stop accepting it within their auth cache time (10 s by default).
    Revoke {
        /// The key's tenant (`*` for an operator key).
        #[arg(long)]
        tenant: String,
        /// The key id (the third part of the key, as `keys list` shows it).
        key_id: String,
    },
}

/// Runs a `keys` command.
pub async fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let mut database = crate::db::server::resolve(&args.database.settings()).await?;
    let result = async {
        let pool = sqlx::PgPool::connect_with(database.connect_options.clone())
            .await
            .with_context(|| format!("cannot connect to {}", database.description))?;
        anyhow::ensure!(
            crate::db::is_migrated(&pool).await?,
            "the database is not migrated: run `callstore migrate` first"
        );
        let result = command(&pool, args.command).await;
        pool.close().await;
        result
    }
    .await;
    if let Some(private_server) = database.private_server.as_mut() {
        private_server.stop().await?;
    }
    result
}

async fn command(pool: &sqlx::PgPool, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match command {
        KeysCommand::Create {
            tenant,
            operator: _,
            scopes,
            name,
            client_cert,
        } => {
            let owner = match tenant {
                Some(tenant) => KeyOwner::Tenant(
                    TenantId::parse(&tenant)
                        .map_err(|description| anyhow::anyhow!("--tenant {description}"))?,
                ),
                None => KeyOwner::Operator,
            };
            let scopes = parse_scopes(&scopes)?;
            let certificate = client_cert
                .map(|path| read_certificate(&path))
                .transpose()?;
            let key = NewKey::generate(&owner);
            let row = keys::insert(
                pool,
                &NewKeyRow {
                    tenant_id: owner.column(),
                    key_id: &key.key_id,
                    name: &name,
                    scopes: &scopes,
                    secret_sha256: certificate
                        .is_none()
                        .then_some(key.secret_sha256.as_slice()),
                    client_cert_sha256: certificate.as_deref(),
                },
            )
            .await?;
            if certificate.is_some() {
                writeln!(stdout, "{}", row.key_id)?;
                eprintln!(
                    "client certificate registered as {} for {} with scopes {}",
                    row.key_id,
                    describe_owner(&row.tenant_id),
                    row.scopes.join(",")
                );
            } else {
                writeln!(stdout, "{}", key.text)?;
                eprintln!(
                    "key {} for {} with scopes {}: store it now, it is not shown again",
                    row.key_id,
                    describe_owner(&row.tenant_id),
                    row.scopes.join(",")
                );
            }
        }
        KeysCommand::List { tenant } => {
            writeln!(
                stdout,
                "TENANT\tKEY_ID\tKIND\tSCOPES\tCREATED\tREVOKED\tNAME"
            )?;
            for row in keys::list(pool, tenant.as_deref()).await? {
                writeln!(stdout, "{}", list_line(&row))?;
            }
        }
        KeysCommand::Revoke { tenant, key_id } => {
            let row = keys::revoke(pool, &tenant, &key_id.to_ascii_lowercase())
                .await
                .map_err(|error| match error {
                    crate::db::DbError::NotFound => {
                        anyhow::anyhow!("tenant {tenant} has no key {key_id}")
                    }
                    other => other.into(),
                })?;
            writeln!(stdout, "{}", list_line(&row))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_scopes(scopes: &[String]) -> anyhow::Result<Vec<String>> {
    let mut parsed: Vec<Scope> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        parsed.push(Scope::parse(scope).ok_or_else(|| {
            anyhow::anyhow!("unknown scope {scope:?}: use ingest, read, watch or admin")
        })?);
    }
    parsed.sort_unstable();
    parsed.dedup();
    anyhow::ensure!(!parsed.is_empty(), "--scopes names no scope");
    Ok(parsed
        .into_iter()
        .map(|scope| scope.as_str().to_owned())
        .collect())
}

/// The DER bytes' SHA-256 of the first certificate of a PEM file.
fn read_certificate(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let body: String = text
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
        .filter(|der| !der.is_empty())
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    Ok(certificate_sha256(&der))
}

fn describe_owner(tenant_id: &str) -> String {
    if tenant_id == crate::auth::keys::OPERATOR_TENANT {
        "every tenant (operator key)".to_owned()
    } else {
        format!("tenant {tenant_id}")
    }
}

fn list_line(row: &KeyRow) -> String {
    let kind = if row.client_cert_sha256.is_some() {
        "certificate"
    } else {
        "key"
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        row.tenant_id,
        row.key_id,
        kind,
        row.scopes.join(","),
        row.create_time.to_rfc3339(),
        row.revoke_time
            .map(|time| time.to_rfc3339())
            .unwrap_or_else(|| "-".to_owned()),
        row.name
    )
}
