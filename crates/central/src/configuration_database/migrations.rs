//! Versioned migrations of the central schema, the same SQL for SQLite and
//! PostgreSQL. Hand-written (a table of statements and a version table)
//! because sqlx's migrator embeds files only through its macros, which this
//! build does without.

use anyhow::Context;
use sqlx::{AssertSqlSafe, Executor};

use super::{Backend, Database};

/// Append only: a released migration is never edited. Each entry is a list
/// of statements (the `Any` driver runs one statement per call).
const MIGRATIONS: &[&[&str]] = &[
    // 1: sites and the SiteCalls mirror.
    &[
        "CREATE TABLE sites (
            name          TEXT PRIMARY KEY,
            token_hash    TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            revoked_at_ms BIGINT,
            reconcile_cursor BIGINT NOT NULL DEFAULT 0,
            high_seq      BIGINT NOT NULL DEFAULT 0,
            last_seen_ms  BIGINT
        )",
        "CREATE TABLE site_calls (
            id             TEXT PRIMARY KEY,
            source_site    TEXT NOT NULL,
            kind           TEXT NOT NULL,
            target_summary TEXT NOT NULL,
            status         TEXT NOT NULL,
            retry_count    BIGINT NOT NULL,
            last_error     TEXT,
            provenance     TEXT NOT NULL,
            created_at_ms  BIGINT NOT NULL,
            updated_at_ms  BIGINT NOT NULL,
            terminal_at_ms BIGINT,
            revision       BIGINT NOT NULL
        )",
        // Site Calls page: newest first, optionally per site (keyset paging).
        "CREATE INDEX site_calls_by_created ON site_calls (created_at_ms, id)",
        "CREATE INDEX site_calls_by_site_created ON site_calls (source_site, created_at_ms, id)",
        // KPIs and purge.
        "CREATE INDEX site_calls_by_status ON site_calls (status, source_site)",
        "CREATE INDEX site_calls_by_terminal ON site_calls (terminal_at_ms)",
    ],
    // 2: users, API tokens, the operator audit log.
    &[
        "CREATE TABLE users (
            name          TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            role          TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL
        )",
        "CREATE TABLE api_tokens (
            token_hash    TEXT PRIMARY KEY,
            user_name     TEXT NOT NULL REFERENCES users (name),
            created_at_ms BIGINT NOT NULL
        )",
        // id: UUID v7 text, so it sorts by time on both backends.
        "CREATE TABLE audit_log (
            id          TEXT PRIMARY KEY,
            at_ms       BIGINT NOT NULL,
            user_name   TEXT NOT NULL,
            action      TEXT NOT NULL,
            target_id   TEXT NOT NULL,
            source_site TEXT,
            outcome     TEXT NOT NULL
        )",
    ],
    // 3: indexes that answer the KPIs and the filtered first pages from the
    // index alone at millions of rows (BENCHMARKS.md, bench queries).
    &[
        "DROP INDEX site_calls_by_status",
        "DROP INDEX site_calls_by_terminal",
        "CREATE INDEX site_calls_by_status ON site_calls (status, source_site, created_at_ms)",
        "CREATE INDEX site_calls_by_terminal ON site_calls (terminal_at_ms, status, source_site)",
        "CREATE INDEX site_calls_by_site_status_created ON site_calls (source_site, status, created_at_ms, id)",
        "CREATE INDEX site_calls_by_status_created ON site_calls (status, created_at_ms, id)",
    ],
];

pub(super) async fn apply(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.pool().acquire().await?;
    if db.backend() == Backend::Postgres {
        // Two central nodes starting together must not both migrate.
        conn.execute("SELECT pg_advisory_lock(7365726)").await?;
    }
    let result = apply_locked(&mut conn).await;
    if db.backend() == Backend::Postgres {
        conn.execute("SELECT pg_advisory_unlock(7365726)").await?;
    }
    result
}

async fn apply_locked(conn: &mut sqlx::AnyConnection) -> anyhow::Result<()> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS sitelink_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
    )
    .await?;
    let (current,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM sitelink_migrations")
            .fetch_one(&mut *conn)
            .await?;
    if current as usize > MIGRATIONS.len() {
        anyhow::bail!(
            "the central database has schema version {current}, newer than this build knows ({}); \
             refusing to run an older sitelink on it",
            MIGRATIONS.len()
        );
    }
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for sql in *statements {
            tx.execute(AssertSqlSafe(*sql))
                .await
                .with_context(|| format!("central migration {version}"))?;
        }
        sqlx::query("INSERT INTO sitelink_migrations (version, applied_at_ms) VALUES ($1, $2)")
            .bind(version)
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied central migration");
    }
    Ok(())
}
