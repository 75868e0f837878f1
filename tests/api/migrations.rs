use sqlx::PgPool;

use callstore::db::{self, DbError, MIGRATOR};

use crate::helpers::{FromTemplate, fresh_database};

async fn applied_migrations(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .expect("counts migrations")
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_are_idempotent() {
    let pool = PgPool::connect_with(fresh_database(FromTemplate::No).await)
        .await
        .expect("connects");
    assert!(!db::is_migrated(&pool).await.expect("checks"));

    db::migrate(&pool)
        .await
        .expect("first run applies every migration");
    assert!(db::is_migrated(&pool).await.expect("checks"));
    assert_eq!(
        applied_migrations(&pool).await,
        MIGRATOR.iter().count() as i64
    );

    db::migrate(&pool).await.expect("second run is a no-op");
    assert_eq!(
        applied_migrations(&pool).await,
        MIGRATOR.iter().count() as i64
    );

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("lists tables");
    assert_eq!(
        tables,
        [
            "api_keys",
            "call_attempts",
            "call_stats_buckets",
            "call_stats_deltas",
            "call_tags",
            "call_transcripts",
            "calls",
            "feed_events",
            "feed_horizons",
            "levels",
            "quality_results",
            "rescore_jobs",
            "rule_set_versions",
            "rule_sets",
            "scoring_profiles",
            "tag_group_members",
            "tag_groups",
            "tags",
            "task_numbers",
            "tasks",
            "tenants",
            "turn_tags",
            "turns",
        ]
    );
}

#[tokio::test]
async fn the_migrate_command_migrates_the_database_it_is_given() {
    let database = fresh_database(FromTemplate::No).await;
    let url = sqlx::ConnectOptions::to_url_lossy(&database).to_string();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_callstore"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .output()
        .await
        .expect("runs callstore migrate");
    assert!(
        output.status.success(),
        "callstore migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let pool = PgPool::connect_with(database).await.expect("connects");
    assert!(db::is_migrated(&pool).await.expect("checks"));
}

/// Every key and index of a tenant-owned table leads with tenant_id, so every lookup is
/// tenant-scoped and the schema can be distributed by tenant.
#[tokio::test]
async fn every_key_and_index_starts_with_tenant_id() {
    let pool = PgPool::connect_with(fresh_database(FromTemplate::Yes).await)
        .await
        .expect("connects");
    let offenders: Vec<String> = sqlx::query_scalar(
        "SELECT index_class.relname::text
         FROM pg_index
         JOIN pg_class index_class ON index_class.oid = pg_index.indexrelid
         JOIN pg_class table_class ON table_class.oid = pg_index.indrelid
         JOIN pg_namespace ON pg_namespace.oid = table_class.relnamespace
         LEFT JOIN pg_attribute first_column
           ON first_column.attrelid = table_class.oid AND first_column.attnum = pg_index.indkey[0]
         WHERE pg_namespace.nspname = 'public'
           AND table_class.relname <> '_sqlx_migrations'
           AND first_column.attname IS DISTINCT FROM 'tenant_id'
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("lists indexes");
    assert!(
        offenders.is_empty(),
        "indexes not led by tenant_id: {offenders:?}"
    );

    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'calls'",
    )
    .fetch_one(&pool)
    .await
    .expect("counts indexes");
    assert!(indexes >= 8, "calls has its key and list-filter indexes");
}

/// The same call from the same source system can be stored once per tenant; another tenant may
/// hold its own call with the same source id.
#[tokio::test]
async fn the_idempotency_key_admits_one_call_per_tenant_source_and_call_id() {
    let pool = PgPool::connect_with(fresh_database(FromTemplate::Yes).await)
        .await
        .expect("connects");
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ('acme'), ('globex')")
        .execute(&pool)
        .await
        .expect("creates tenants");
    let insert = |tenant: &'static str| {
        sqlx::query(
            "INSERT INTO calls (tenant_id, id, source_format, source_system, source_call_id, state, content_hash, dial_time)
             VALUES ($1, gen_random_uuid(), 3, 'hangup_push', 'db57f262', 2, '\\x00', now())",
        )
        .bind(tenant)
        .execute(&pool)
    };

    insert("acme").await.expect("first delivery is stored");
    let duplicate = insert("acme")
        .await
        .expect_err("second delivery is refused");
    match db::translate(duplicate) {
        DbError::Conflict { constraint } => assert_eq!(constraint, "calls_source_key"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    insert("globex")
        .await
        .expect("another tenant's call with the same id is its own");
}

/// A feed row records the transaction that wrote it, for the stream's xid8 watermark.
#[tokio::test]
async fn feed_events_record_their_transaction() {
    let pool = PgPool::connect_with(fresh_database(FromTemplate::Yes).await)
        .await
        .expect("connects");
    let mut transaction = pool.begin().await.expect("begins");
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ('acme')")
        .execute(&mut *transaction)
        .await
        .expect("creates the tenant");
    let same_transaction: bool = sqlx::query_scalar(
        "INSERT INTO feed_events (tenant_id, kind, call_id, call_version)
         VALUES ('acme', 1, gen_random_uuid(), 1)
         RETURNING tx_id = pg_current_xact_id()",
    )
    .fetch_one(&mut *transaction)
    .await
    .expect("appends an event");
    transaction.commit().await.expect("commits");
    assert!(same_transaction);
}
