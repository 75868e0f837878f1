//! Postgres row-level security: the database itself keeps tenants apart, behind the service's
//! own `tenant_id` filters. Every other test also runs the server as the ordinary
//! [`SERVICE_ROLE`], so a request path that opened a transaction without its tenant's scope
//! would find nothing there and fail.

use sqlx::PgPool;

use callstore::db::{self, DbError, Scope};
use callstore::domain::TenantId;
use callstore::proto::IngestCallsRequest;

use crate::helpers::{SERVICE_ROLE, as_service, as_tenant, spawn_app};
use crate::ingest::native_call;

/// Counts rows of `table` with no filter of its own: only the policies restrict it.
async fn unfiltered_count(connection: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(connection)
        .await
        .expect("counts")
}

async fn ingest(app: &crate::helpers::TestApp, tenant: &str, ids: &[&str]) {
    let calls = ids
        .iter()
        .map(|id| native_call(id, "13800000001"))
        .collect();
    app.ingest_client()
        .await
        .ingest_calls(as_tenant(tenant, IngestCallsRequest { calls }))
        .await
        .expect("ingests");
}

#[tokio::test]
async fn every_tenant_table_forces_row_level_security_with_a_policy() {
    let app = spawn_app().await;
    let pool = app.pool().await;
    let unprotected: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r'
           AND EXISTS (SELECT 1 FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
           AND NOT (c.relrowsecurity AND c.relforcerowsecurity
                    AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("lists tables");
    assert!(
        unprotected.is_empty(),
        "tenant tables without forced row-level security: {unprotected:?}"
    );
    let tenant_tables: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT a.attrelid) FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'r'
         JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
         WHERE a.attname = 'tenant_id'",
    )
    .fetch_one(&pool)
    .await
    .expect("counts tables");
    assert_eq!(tenant_tables, 23, "every tenant table is checked");
}

#[tokio::test]
async fn a_transaction_sees_and_writes_only_the_rows_of_the_tenant_it_names() {
    let app = spawn_app().await;
    ingest(&app, "acme", &["a-1", "a-2"]).await;
    ingest(&app, "globex", &["g-1"]).await;
    let service = PgPool::connect_with(as_service(&app.database))
        .await
        .expect("connects as the service role");
    assert!(
        db::row_security_enforced(&service).await.expect("checks"),
        "{SERVICE_ROLE} is bound by the policies"
    );

    let acme = TenantId::parse("acme").expect("tenant");
    let mut transaction = db::begin(&service, &acme).await.expect("begins");
    for (table, expected) in [
        ("calls", 2),
        ("turns", 4),
        ("feed_events", 2),
        ("tenants", 1),
    ] {
        assert_eq!(
            unfiltered_count(&mut transaction, table).await,
            expected,
            "{table} as acme"
        );
    }
    let tenants: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM calls")
        .fetch_all(&mut *transaction)
        .await
        .expect("reads");
    assert_eq!(tenants, ["acme"]);
    // Writing another tenant's row is refused (the policy's check), and so is changing one:
    // the update finds nothing.
    let refused = sqlx::query("INSERT INTO tenants (tenant_id) VALUES ('initech')")
        .execute(&mut *transaction)
        .await
        .expect_err("another tenant's row is refused");
    let code = refused
        .as_database_error()
        .and_then(|error| error.code())
        .map(|code| code.into_owned());
    assert_eq!(code.as_deref(), Some("42501"), "{refused}");
    drop(transaction);
    let mut transaction = db::begin(&service, &acme).await.expect("begins");
    let updated = sqlx::query("UPDATE calls SET callee = 'x' WHERE tenant_id = 'globex'")
        .execute(&mut *transaction)
        .await
        .expect("updates")
        .rows_affected();
    assert_eq!(updated, 0);
    drop(transaction);

    // Without a scope: nothing. Every tenant's rows only when asked for.
    let mut plain = service.begin().await.expect("begins");
    assert_eq!(unfiltered_count(&mut plain, "calls").await, 0);
    assert_eq!(unfiltered_count(&mut plain, "tenants").await, 0);
    drop(plain);
    let mut all = db::begin(&service, Scope::AllTenants)
        .await
        .expect("begins");
    assert_eq!(unfiltered_count(&mut all, "calls").await, 3);
    drop(all);

    // The scope ends with its transaction: the next one on the same connection sees nothing.
    let mut connection = service.acquire().await.expect("acquires");
    let mut scoped = sqlx::Connection::begin(&mut *connection)
        .await
        .expect("begins");
    sqlx::query("SET LOCAL callstore.tenant = 'acme'")
        .execute(&mut *scoped)
        .await
        .expect("sets");
    assert_eq!(unfiltered_count(&mut scoped, "calls").await, 2);
    scoped.commit().await.expect("commits");
    assert_eq!(unfiltered_count(&mut connection, "calls").await, 0);
}

#[tokio::test]
async fn a_scope_names_only_a_plain_tenant_id() {
    let app = spawn_app().await;
    let service = PgPool::connect_with(as_service(&app.database))
        .await
        .expect("connects as the service role");
    for bad in ["", "acme'; SET LOCAL callstore.all_tenants = 'on", "a b"] {
        match db::begin(&service, Scope::Tenant(bad)).await {
            Err(DbError::Other(sqlx::Error::InvalidArgument(_))) => {}
            Err(other) => panic!("{bad:?}: expected a refusal, got {other:?}"),
            Ok(_) => panic!("{bad:?}: expected a refusal"),
        }
    }
    // The superuser the tests inspect with is not bound, and the service says so.
    assert!(
        !db::row_security_enforced(&app.pool().await)
            .await
            .expect("checks")
    );
}

/// A batch of many turns is written with one statement under the policies (Postgres refuses
/// `COPY FROM` on a table with row-level security, which ingest once used for big batches).
#[tokio::test]
async fn a_batch_of_many_turns_is_written_in_one_statement_under_the_policies() {
    use callstore::api::convert::{CallLimits, call_from_proto};
    use callstore::proto::{Speaker, Turn};

    let app = spawn_app().await;
    // The tenant's row, through the API.
    ingest(&app, "acme", &["first"]).await;
    let service = PgPool::connect_with(as_service(&app.database))
        .await
        .expect("connects as the service role");
    let tenant = TenantId::parse("acme").expect("tenant");
    let calls: Vec<_> = (0..100)
        .map(|index| {
            let mut record = native_call(&format!("many-{index}"), "13800000001");
            record.turns = (1..=12)
                .map(|sequence| Turn {
                    sequence,
                    speaker: if sequence % 2 == 1 {
                        Speaker::Robot as i32
                    } else {
                        Speaker::Customer as i32
                    },
                    text: format!("第{sequence}句\ttab\\slash"),
                    ..Default::default()
                })
                .collect();
            call_from_proto(record, "call", &CallLimits::default()).expect("a valid call")
        })
        .collect();
    let refs: Vec<_> = calls.iter().collect();
    let mut transaction = db::begin(&service, &tenant).await.expect("begins");
    let stored = callstore::db::calls::store_calls(&mut transaction, &tenant, &refs)
        .await
        .expect("1,200 turns in one go");
    transaction.commit().await.expect("commits");
    assert_eq!(stored.len(), 100);

    let pool = app.pool().await;
    let turns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM turns WHERE tenant_id = 'acme' AND text LIKE '第%'",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!(turns, 1200);
    let text: String = sqlx::query_scalar(
        "SELECT t.text FROM turns t JOIN calls c ON c.tenant_id = t.tenant_id AND c.id = t.call_id
         WHERE c.source_call_id = 'many-7' AND t.sequence = 3",
    )
    .fetch_one(&pool)
    .await
    .expect("reads");
    assert_eq!(text, "第3句\ttab\\slash");
}
