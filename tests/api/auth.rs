//! Authentication and tenant isolation: API keys made by `callstore keys`, scopes, tenant-bound
//! and operator keys, the webhook bridge, mutual TLS, and a key of one tenant on every RPC
//! with another tenant's ids (BOLA).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use callstore::auth::keys::{KeyOwner, NewKey};
use callstore::db::keys::{NewKeyRow, insert};
use callstore::domain::TenantId;
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::quality_service_client::QualityServiceClient;
use callstore::proto::query_service_client::QueryServiceClient;
use callstore::proto::watch_service_client::WatchServiceClient;
use callstore::proto::{
    AppendTurnsRequest, CreateRuleSetRequest, CreateScoringProfileRequest, DeleteRuleSetRequest,
    DeleteScoringProfileRequest, GetCallDetailRequest, GetCallRequest, GetQualityRequest,
    GetRescoreJobRequest, GetRuleSetRequest, GetTaskRequest, GetTaskStatsRequest,
    IngestCallsRequest, ListCallsRequest, ListLevelsRequest, ListRuleSetsRequest,
    ListScoringProfilesRequest, ListTagGroupsRequest, ListTagsRequest, ListTaskNumbersRequest,
    ListTasksRequest, RescoreCallsRequest, RuleSet, ScoringProfile, UpdateRuleSetRequest,
    UpdateScoringProfileRequest, WatchCallsRequest, watch_calls_request,
};

use crate::helpers::{TestApp, loopback_port_0, spawn_app_with};
use crate::ingest::native_call;

const DEADLINE: Duration = Duration::from_secs(20);
const HANGUP_PUSH: &[u8] = include_bytes!("../fixtures/hangup_push.json");

async fn spawn_secure() -> TestApp {
    spawn_app_with(|config| {
        config.auth.required = true;
        // Revocations take effect at once in these tests.
        config.auth.cache_ttl = Duration::ZERO;
        config.webhook_listen_addr = Some(loopback_port_0());
    })
    .await
}

/// A key stored for `owner` with `scopes`; returns its text.
async fn key(app: &TestApp, owner: KeyOwner, scopes: &[&str]) -> String {
    let key = NewKey::generate(&owner);
    let scopes: Vec<String> = scopes.iter().map(|&scope| scope.to_owned()).collect();
    insert(
        &app.pool().await,
        &NewKeyRow {
            tenant_id: owner.column(),
            key_id: &key.key_id,
            name: "test",
            scopes: &scopes,
            secret_sha256: Some(&key.secret_sha256),
            client_cert_sha256: None,
        },
    )
    .await
    .expect("stores the key");
    key.text
}

fn tenant(name: &str) -> KeyOwner {
    KeyOwner::Tenant(TenantId::parse(name).expect("a tenant"))
}

const ALL: &[&str] = &["ingest", "read", "watch", "admin"];

/// A request with `key` as bearer and, when given, `tenant` named in x-tenant-id.
fn with<T>(key: Option<&str>, tenant: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("ASCII"),
        );
    }
    if let Some(tenant) = tenant {
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().expect("ASCII"));
    }
    request
}

async fn list_tasks(
    channel: &Channel,
    key: Option<&str>,
    tenant: Option<&str>,
) -> Result<usize, Status> {
    QueryServiceClient::new(channel.clone())
        .list_tasks(with(key, tenant, ListTasksRequest::default()))
        .await
        .map(|response| response.into_inner().tasks.len())
}

#[tokio::test]
async fn credentials_scopes_and_tenants_are_enforced() {
    let app = spawn_secure().await;
    let channel = app.channel().await;
    let reader = key(&app, tenant("acme"), &["read"]).await;
    let operator = key(&app, KeyOwner::Operator, ALL).await;

    let code = |result: Result<usize, Status>| {
        result
            .map(|_| Code::Ok)
            .unwrap_or_else(|status| status.code())
    };
    assert_eq!(
        code(list_tasks(&channel, None, Some("acme")).await),
        Code::Unauthenticated
    );
    let forged = reader.replace(&reader[reader.len() - 4..], "AAAA");
    assert_eq!(
        code(list_tasks(&channel, Some(&forged), None).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(list_tasks(&channel, Some("not-a-key"), None).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(list_tasks(&channel, Some(&reader), None).await),
        Code::Ok
    );
    assert_eq!(
        code(list_tasks(&channel, Some(&reader), Some("acme")).await),
        Code::Ok
    );
    assert_eq!(
        code(list_tasks(&channel, Some(&reader), Some("globex")).await),
        Code::PermissionDenied,
        "a tenant key never acts for another tenant"
    );
    assert_eq!(
        code(list_tasks(&channel, Some(&operator), Some("globex")).await),
        Code::Ok
    );
    assert_eq!(
        code(list_tasks(&channel, Some(&operator), None).await),
        Code::InvalidArgument,
        "an operator key names the tenant"
    );

    // A read key cannot ingest or change rule sets.
    let ingest = IngestServiceClient::new(channel.clone())
        .ingest_calls(with(
            Some(&reader),
            None,
            IngestCallsRequest {
                calls: vec![native_call("c-1", "13800000001")],
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(ingest.code(), Code::PermissionDenied);
    let admin = QualityServiceClient::new(channel.clone())
        .create_scoring_profile(with(
            Some(&reader),
            None,
            CreateScoringProfileRequest::default(),
        ))
        .await
        .expect_err("refused");
    assert_eq!(admin.code(), Code::PermissionDenied);

    // Health and reflection need no key.
    assert!(app.health("readiness").await.is_ok());
    app.shutdown().await.expect("clean shutdown");
}

async fn run(args: &[&str], database: &str) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_callstore"));
    command
        .args(["--log", "warn", "keys"])
        .args(args)
        .env("DATABASE_URL", database)
        .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("ends in time")
        .expect("runs")
}

#[tokio::test]
async fn keys_are_made_listed_and_revoked_by_the_command_and_only_their_hash_is_kept() {
    let app = spawn_secure().await;
    let database = sqlx::ConnectOptions::to_url_lossy(&app.database).to_string();
    let created = run(
        &[
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "read,ingest",
            "--name",
            "crm",
        ],
        &database,
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    let text = String::from_utf8(created.stdout.clone()).expect("UTF-8");
    let key = text.trim().to_owned();
    assert!(key.starts_with("csk1."), "{key}");
    assert!(
        String::from_utf8_lossy(&created.stderr).contains("not shown again"),
        "{created:?}"
    );

    let pool = app.pool().await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys")
        .fetch_all(&pool)
        .await
        .expect("reads");
    let secret = key.rsplit('.').next().expect("a secret");
    assert_eq!(stored.len(), 1);
    assert_ne!(
        stored[0],
        secret.as_bytes(),
        "the secret itself is not stored"
    );
    assert_eq!(stored[0].len(), 32, "a SHA-256");

    let channel = app.channel().await;
    list_tasks(&channel, Some(&key), None)
        .await
        .expect("the new key is accepted");

    let listed = run(&["list", "--tenant", "acme"], &database).await;
    let listing = String::from_utf8(listed.stdout).expect("UTF-8");
    let key_id = key.split('.').nth(2).expect("a key id");
    assert!(
        listing.contains(key_id) && listing.contains("ingest,read"),
        "{listing}"
    );
    assert!(!listing.contains(secret), "the list never shows a secret");

    let revoked = run(&["revoke", "--tenant", "acme", key_id], &database).await;
    assert!(revoked.status.success(), "{revoked:?}");
    let refused = list_tasks(&channel, Some(&key), None)
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let bad = run(
        &["create", "--tenant", "acme", "--scopes", "read,everything"],
        &database,
    )
    .await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));
    app.shutdown().await.expect("clean shutdown");
}

/// A plain HTTP/1.1 POST with extra header lines; the status code.
async fn post(address: SocketAddr, path: &str, headers: &str, body: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: callstore\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream.write_all(body).await.expect("writes");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reads");
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code")
}

#[tokio::test]
async fn webhooks_take_a_key_in_the_path_or_a_header() {
    let app = spawn_secure().await;
    let webhook = app.webhook.expect("a webhook listener");
    let ingester = key(&app, tenant("acme"), &["ingest"]).await;
    let reader = key(&app, tenant("acme"), &["read"]).await;
    let other = key(&app, tenant("globex"), &["ingest"]).await;

    assert_eq!(
        post(webhook, "/hooks/acme/hangup-push", "", HANGUP_PUSH).await,
        401
    );
    assert_eq!(
        post(
            webhook,
            &format!("/hooks/acme/hangup-push/{other}"),
            "",
            HANGUP_PUSH
        )
        .await,
        403,
        "another tenant's key"
    );
    assert_eq!(
        post(
            webhook,
            "/hooks/acme/hangup-push",
            &format!("Authorization: Bearer {reader}\r\n"),
            HANGUP_PUSH
        )
        .await,
        403,
        "a key without the ingest scope"
    );
    let pool = app.pool().await;
    let calls = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM calls")
            .fetch_one(&pool)
            .await
            .expect("counts")
    };
    assert_eq!(calls().await, 0, "nothing refused was stored");
    assert_eq!(
        post(
            webhook,
            &format!("/hooks/acme/hangup-push/{ingester}"),
            "",
            HANGUP_PUSH
        )
        .await,
        200
    );
    assert_eq!(
        post(
            webhook,
            "/hooks/acme/hangup-push",
            &format!("X-Api-Key: {ingester}\r\n"),
            HANGUP_PUSH
        )
        .await,
        200
    );
    assert_eq!(calls().await, 1);
    app.shutdown().await.expect("clean shutdown");
}

/// Status codes, or OK, of a list of RPC outcomes, for readable failures.
fn code<T>(result: &Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// What tenant B holds, made with B's operator access: a task with a call, a rule set, a
/// profile and a re-scoring job.
struct Other {
    call_id: String,
    task_id: String,
    rule_set_id: String,
    profile_id: String,
    job_id: String,
}

async fn other_tenants_data(channel: &Channel, operator: &str) -> Other {
    let mut call = native_call("b-1", "13900000001");
    call.source_task_id = "b-task".to_owned();
    let ingested = IngestServiceClient::new(channel.clone())
        .ingest_calls(with(
            Some(operator),
            Some("globex"),
            IngestCallsRequest { calls: vec![call] },
        ))
        .await
        .expect("B ingests")
        .into_inner();
    let call_id = ingested.results[0].id.clone();
    let mut quality = QualityServiceClient::new(channel.clone());
    let profile_id = quality
        .create_scoring_profile(with(
            Some(operator),
            Some("globex"),
            CreateScoringProfileRequest {
                profile: Some(ScoringProfile {
                    name: "b".to_owned(),
                    base: 100.0,
                    upper_bound: 100.0,
                    ..ScoringProfile::default()
                }),
            },
        ))
        .await
        .expect("B's profile")
        .into_inner()
        .profile
        .expect("a profile")
        .id;
    let rule_set_id = quality
        .create_rule_set(with(
            Some(operator),
            Some("globex"),
            CreateRuleSetRequest {
                rule_set: Some(RuleSet {
                    name: "b".to_owned(),
                    scoring_profile_id: profile_id.clone(),
                    ..RuleSet::default()
                }),
            },
        ))
        .await
        .expect("B's rule set")
        .into_inner()
        .rule_set
        .expect("a rule set")
        .id;
    let job_id = quality
        .rescore_calls(with(
            Some(operator),
            Some("globex"),
            RescoreCallsRequest {
                rule_set_id: rule_set_id.clone(),
                ..RescoreCallsRequest::default()
            },
        ))
        .await
        .expect("B's job")
        .into_inner()
        .job
        .expect("a job")
        .id;
    let task_id = QueryServiceClient::new(channel.clone())
        .get_call(with(
            Some(operator),
            Some("globex"),
            GetCallRequest {
                call_id: call_id.clone(),
                ..GetCallRequest::default()
            },
        ))
        .await
        .expect("B's call")
        .into_inner()
        .call
        .expect("a call")
        .task_id;
    Other {
        call_id,
        task_id,
        rule_set_id,
        profile_id,
        job_id,
    }
}

/// A key of tenant A, with every scope, on every RPC with tenant B's ids: nothing of B is
/// returned or changed.
#[tokio::test]
async fn a_key_of_one_tenant_reaches_nothing_of_another_on_any_rpc() {
    let app = spawn_secure().await;
    let channel = app.channel().await;
    let operator = key(&app, KeyOwner::Operator, ALL).await;
    let b = other_tenants_data(&channel, &operator).await;
    let a = key(&app, tenant("acme"), ALL).await;
    let a = Some(a.as_str());

    let mut query = QueryServiceClient::new(channel.clone());
    let mut quality = QualityServiceClient::new(channel.clone());
    let mut ingest = IngestServiceClient::new(channel.clone());

    // Reads by B's ids: NOT_FOUND, as if they did not exist.
    let not_found = [
        (
            "GetCall",
            code(
                &query
                    .get_call(with(
                        a,
                        None,
                        GetCallRequest {
                            call_id: b.call_id.clone(),
                            ..Default::default()
                        },
                    ))
                    .await,
            ),
        ),
        (
            "GetCallDetail",
            code(
                &query
                    .get_call_detail(with(
                        a,
                        None,
                        GetCallDetailRequest {
                            call_id: b.call_id.clone(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "GetTask",
            code(
                &query
                    .get_task(with(
                        a,
                        None,
                        GetTaskRequest {
                            task_id: b.task_id.clone(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "GetTaskStats",
            code(
                &query
                    .get_task_stats(with(
                        a,
                        None,
                        GetTaskStatsRequest {
                            task_id: b.task_id.clone(),
                            ..Default::default()
                        },
                    ))
                    .await,
            ),
        ),
        (
            "GetQuality",
            code(
                &quality
                    .get_quality(with(
                        a,
                        None,
                        GetQualityRequest {
                            call_id: b.call_id.clone(),
                            include_history: true,
                        },
                    ))
                    .await,
            ),
        ),
        (
            "GetRuleSet",
            code(
                &quality
                    .get_rule_set(with(
                        a,
                        None,
                        GetRuleSetRequest {
                            rule_set_id: b.rule_set_id.clone(),
                            version: 0,
                        },
                    ))
                    .await,
            ),
        ),
        (
            "GetRescoreJob",
            code(
                &quality
                    .get_rescore_job(with(
                        a,
                        None,
                        GetRescoreJobRequest {
                            job_id: b.job_id.clone(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "RescoreCalls",
            code(
                &quality
                    .rescore_calls(with(
                        a,
                        None,
                        RescoreCallsRequest {
                            rule_set_id: b.rule_set_id.clone(),
                            ..Default::default()
                        },
                    ))
                    .await,
            ),
        ),
        (
            "UpdateRuleSet",
            code(
                &quality
                    .update_rule_set(with(
                        a,
                        None,
                        UpdateRuleSetRequest {
                            rule_set: Some(RuleSet {
                                id: b.rule_set_id.clone(),
                                name: "taken".to_owned(),
                                ..Default::default()
                            }),
                            update_mask: None,
                        },
                    ))
                    .await,
            ),
        ),
        (
            "DeleteRuleSet",
            code(
                &quality
                    .delete_rule_set(with(
                        a,
                        None,
                        DeleteRuleSetRequest {
                            rule_set_id: b.rule_set_id.clone(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "UpdateScoringProfile",
            code(
                &quality
                    .update_scoring_profile(with(
                        a,
                        None,
                        UpdateScoringProfileRequest {
                            profile: Some(ScoringProfile {
                                id: b.profile_id.clone(),
                                name: "taken".to_owned(),
                                base: 1.0,
                                upper_bound: 1.0,
                                ..Default::default()
                            }),
                            update_mask: None,
                        },
                    ))
                    .await,
            ),
        ),
        (
            "DeleteScoringProfile",
            code(
                &quality
                    .delete_scoring_profile(with(
                        a,
                        None,
                        DeleteScoringProfileRequest {
                            profile_id: b.profile_id.clone(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "AppendTurns",
            code(
                &ingest
                    .append_turns(with(
                        a,
                        None,
                        AppendTurnsRequest {
                            call_id: b.call_id.clone(),
                            turns: native_call("x", "1").turns,
                            ..Default::default()
                        },
                    ))
                    .await,
            ),
        ),
    ];
    for (rpc, code) in not_found {
        assert_eq!(code, Code::NotFound, "{rpc}");
    }

    // Lists by B's task, and lists of A's own: nothing of B.
    let calls = query
        .list_calls(with(
            a,
            None,
            ListCallsRequest {
                task_id: b.task_id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert!(
        calls.as_ref().map_or_else(
            |status| status.code() == Code::NotFound,
            |response| response.get_ref().calls.is_empty()
        ),
        "ListCalls of B's task: {calls:?}"
    );
    let numbers = query
        .list_task_numbers(with(
            a,
            None,
            ListTaskNumbersRequest {
                task_id: b.task_id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert!(
        numbers.as_ref().map_or_else(
            |status| status.code() == Code::NotFound,
            |response| response.get_ref().numbers.is_empty()
        ),
        "ListTaskNumbers of B's task: {numbers:?}"
    );
    assert_eq!(list_tasks(&channel, a, None).await.expect("lists"), 0);
    assert!(
        query
            .list_tags(with(a, None, ListTagsRequest::default()))
            .await
            .expect("lists")
            .into_inner()
            .tags
            .is_empty()
    );
    assert!(
        query
            .list_tag_groups(with(a, None, ListTagGroupsRequest::default()))
            .await
            .expect("lists")
            .into_inner()
            .tag_groups
            .is_empty()
    );
    assert!(
        query
            .list_levels(with(a, None, ListLevelsRequest::default()))
            .await
            .expect("lists")
            .into_inner()
            .levels
            .is_empty()
    );
    assert!(
        quality
            .list_rule_sets(with(a, None, ListRuleSetsRequest::default()))
            .await
            .expect("lists")
            .into_inner()
            .rule_sets
            .is_empty()
    );
    assert!(
        quality
            .list_scoring_profiles(with(a, None, ListScoringProfilesRequest::default()))
            .await
            .expect("lists")
            .into_inner()
            .profiles
            .is_empty()
    );

    // Naming B, even with its own key: refused, nothing stored for B.
    let named = ingest
        .ingest_calls(with(
            a,
            Some("globex"),
            IngestCallsRequest {
                calls: vec![native_call("a-into-b", "1380000000")],
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(named.code(), Code::PermissionDenied);

    // A snapshot of A's stream shows none of B's calls.
    let mut stream = WatchServiceClient::new(channel.clone())
        .watch_calls(with(
            a,
            None,
            WatchCallsRequest {
                start: Some(watch_calls_request::Start::Snapshot(true)),
                ..Default::default()
            },
        ))
        .await
        .expect("A watches")
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("a message");
    assert_eq!(
        first.kind(),
        callstore::proto::CallEventKind::SnapshotComplete,
        "{first:?}"
    );

    // B's data is untouched.
    let pool = app.pool().await;
    let b_rows: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM calls WHERE tenant_id = 'globex'),
                (SELECT count(*) FROM rule_sets WHERE tenant_id = 'globex' AND name = 'b'),
                (SELECT count(*) FROM scoring_profiles WHERE tenant_id = 'globex' AND name = 'b')",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!(b_rows, (1, 1, 1));
    let a_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE tenant_id <> 'globex'")
        .fetch_one(&pool)
        .await
        .expect("counts");
    assert_eq!(a_rows, 0);
    app.shutdown().await.expect("clean shutdown");
}

/// PEM files of a test CA, a server certificate for localhost and a client certificate.
struct Pki {
    dir: std::path::PathBuf,
    ca: String,
    client_cert: String,
    client_key: String,
    client_der: Vec<u8>,
}

impl Pki {
    /// The server's TLS settings, requiring client certificates of the CA with `mutual`.
    fn server_tls(&self, mutual: bool) -> callstore::config::TlsSettings {
        callstore::config::TlsSettings {
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server.key"),
            client_ca: mutual.then(|| self.dir.join("ca.pem")),
        }
    }
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "callstore test CA");
    let ca = ca_params.self_signed(&ca_key).expect("the CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let certificate = params.signed_by(&key, &issuer).expect("signed");
        (certificate, key)
    };
    let (server, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf("crm.acme", ExtendedKeyUsagePurpose::ClientAuth);
    let dir = std::env::temp_dir().join(format!("callstore-pki-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    for (name, text) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), text).expect("writes");
    }
    Pki {
        dir,
        ca: ca.pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
        client_der: client.der().to_vec(),
    }
}

#[tokio::test]
async fn a_registered_client_certificate_authenticates_over_mutual_tls() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let pki = pki();
    let database = crate::helpers::fresh_database(crate::helpers::FromTemplate::Yes).await;
    let config = crate::helpers::config_for(&database, |config| {
        config.auth.required = true;
        config.tls = Some(pki.server_tls(true));
    });
    let app = crate::helpers::start(config).await;
    let pool = sqlx::PgPool::connect_with(database)
        .await
        .expect("connects");
    let fingerprint = callstore::auth::keys::certificate_sha256(&pki.client_der);
    insert(
        &pool,
        &NewKeyRow {
            tenant_id: "acme",
            key_id: "00000000000000c1",
            name: "crm certificate",
            scopes: &["read".to_owned()],
            secret_sha256: None,
            client_cert_sha256: Some(&fingerprint),
        },
    )
    .await
    .expect("registers the certificate");

    let endpoint = |identity: bool| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost");
        if identity {
            tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
        }
        Channel::from_shared(format!("https://{}", app.address))
            .expect("an endpoint")
            .tls_config(tls)
            .expect("TLS")
            .connect_timeout(Duration::from_secs(5))
    };
    let channel = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(channel) = endpoint(true).connect().await {
                break channel;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("connects over mutual TLS");
    let tasks = tokio::time::timeout(DEADLINE, async {
        loop {
            match list_tasks(&channel, None, None).await {
                Err(status) if status.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        }
    })
    .await
    .expect("answered in time");
    assert_eq!(tasks.expect("the certificate authenticates as acme"), 0);
    let other = list_tasks(&channel, None, Some("globex"))
        .await
        .expect_err("bound to acme");
    assert_eq!(other.code(), Code::PermissionDenied);

    // Without a client certificate the handshake is refused.
    let anonymous = match endpoint(false).connect().await {
        Err(_) => true,
        Ok(channel) => list_tasks(&channel, None, None).await.is_err(),
    };
    assert!(anonymous, "a client without a certificate is refused");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// With TLS on the main listener, `--health-listen` serves the health checks alone in plaintext
/// and without credentials, for the kubelet's gRPC probes; nothing else is reachable there.
#[tokio::test]
async fn the_plaintext_health_listener_serves_health_checks_only() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let pki = pki();
    let database = crate::helpers::fresh_database(crate::helpers::FromTemplate::Yes).await;
    let config = crate::helpers::config_for(&database, |config| {
        config.auth.required = true;
        config.tls = Some(pki.server_tls(false));
        config.health_listen_addr = Some(crate::helpers::loopback_port_0());
    });
    let app = crate::helpers::start(config).await;
    let health = app.health.expect("a health listener");
    let channel = Channel::from_shared(format!("http://{health}"))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connects in plaintext");
    let mut client = HealthClient::new(channel.clone());
    let mut readiness = client
        .watch(HealthCheckRequest {
            service: callstore::health::READINESS.to_owned(),
        })
        .await
        .expect("watches readiness")
        .into_inner();
    tokio::time::timeout(DEADLINE, async {
        while let Some(status) = readiness.message().await.expect("a status") {
            if status.status() == ServingStatus::Serving {
                return;
            }
        }
        panic!("the watch ended before readiness was SERVING");
    })
    .await
    .expect("readiness reaches SERVING");
    let liveness = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("liveness answers")
        .into_inner();
    assert_eq!(liveness.status(), ServingStatus::Serving);

    // The API is not served there, with or without credentials.
    let refused = list_tasks(&channel, None, Some("acme"))
        .await
        .expect_err("not served on the health listener");
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    // And the main listener still wants TLS: a plaintext client gets no answer from it.
    let plaintext = Channel::from_shared(format!("http://{}", app.address))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(list_tasks(&channel, None, Some("acme")).await.is_err());
    }
    let _ = std::fs::remove_dir_all(&pki.dir);
}
