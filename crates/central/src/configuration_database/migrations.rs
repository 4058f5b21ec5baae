//! Versioned migrations of the central schema, the same SQL for SQLite and
//! PostgreSQL. Hand-written (a table of statements and a version table)
//! because sqlx's migrator embeds files only through its macros, which this
//! build does without.

use anyhow::Context;
use sqlx::{AssertSqlSafe, Executor};

use super::{Backend, Database};

/// One schema version: statements for both backends, then the ones whose
/// syntax differs (triggers).
struct Migration {
    both: &'static [&'static str],
    sqlite: &'static [&'static str],
    postgres: &'static [&'static str],
}

/// A migration whose SQL is the same on both backends.
const fn both(statements: &'static [&'static str]) -> Migration {
    Migration {
        both: statements,
        sqlite: &[],
        postgres: &[],
    }
}

/// Append only: a released migration is never edited. Each entry is a list
/// of statements (the `Any` driver runs one statement per call).
const MIGRATIONS: &[Migration] = &[
    // 1: sites and the SiteCalls mirror.
    both(&[
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
    ]),
    // 2: users, API tokens, the operator audit log.
    both(&[
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
    ]),
    // 3: indexes that answer the KPIs and the filtered first pages from the
    // index alone at millions of rows (BENCHMARKS.md, bench queries).
    both(&[
        "DROP INDEX site_calls_by_status",
        "DROP INDEX site_calls_by_terminal",
        "CREATE INDEX site_calls_by_status ON site_calls (status, source_site, created_at_ms)",
        "CREATE INDEX site_calls_by_terminal ON site_calls (terminal_at_ms, status, source_site)",
        "CREATE INDEX site_calls_by_site_status_created ON site_calls (source_site, status, created_at_ms, id)",
        "CREATE INDEX site_calls_by_status_created ON site_calls (status, created_at_ms, id)",
    ]),
    // 4: maintained counters of open calls per (site, status), so the KPIs
    // cost O(sites), not O(open rows), at 10 million rows on PostgreSQL
    // (the tables exist on both backends; SQLite does not fill them, see
    // below). Triggers append
    // +1/-1 rows to `site_call_open_deltas` (an insert never waits for
    // another transaction's lock, unlike an update of a shared counter
    // row); the Site Call Audit actor folds them into
    // `site_call_open_counts` every few seconds; KPIs read the sum of both.
    Migration {
        both: &[
            "CREATE TABLE site_call_open_counts (
                source_site TEXT NOT NULL,
                status      TEXT NOT NULL,
                n           BIGINT NOT NULL,
                PRIMARY KEY (source_site, status)
            )",
            "CREATE TABLE site_call_open_deltas (
                source_site TEXT NOT NULL,
                status      TEXT NOT NULL,
                delta       BIGINT NOT NULL
            )",
            "INSERT INTO site_call_open_counts (source_site, status, n)
             SELECT source_site, status, COUNT(*) FROM site_calls
             WHERE status IN ('Pending', 'Retrying', 'Parked') GROUP BY source_site, status",
        ],
        // SQLite: no triggers. Even with a false WHEN clause a row trigger
        // cost a third of SQLite's ingest rate (bench ingest), while its
        // KPI scan stays within bounds at 10 million rows (bench queries);
        // see `SiteCalls::kpis_per_site`.
        sqlite: &[],
        postgres: &[
            "CREATE FUNCTION site_calls_open_delta() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                IF TG_OP <> 'INSERT' THEN
                    IF OLD.status IN ('Pending', 'Retrying', 'Parked') THEN
                        INSERT INTO site_call_open_deltas VALUES (OLD.source_site, OLD.status, -1);
                    END IF;
                END IF;
                IF TG_OP <> 'DELETE' THEN
                    IF NEW.status IN ('Pending', 'Retrying', 'Parked') THEN
                        INSERT INTO site_call_open_deltas VALUES (NEW.source_site, NEW.status, 1);
                    END IF;
                END IF;
                RETURN NULL;
             END $$",
            // WHEN clauses keep the function call off the common path (a
            // row that arrives Delivered, or a retry-count update).
            "CREATE TRIGGER site_calls_open_insert AFTER INSERT ON site_calls FOR EACH ROW
             WHEN (NEW.status IN ('Pending', 'Retrying', 'Parked'))
             EXECUTE FUNCTION site_calls_open_delta()",
            "CREATE TRIGGER site_calls_open_update AFTER UPDATE OF status ON site_calls FOR EACH ROW
             WHEN (OLD.status IS DISTINCT FROM NEW.status
               AND (OLD.status IN ('Pending', 'Retrying', 'Parked') OR NEW.status IN ('Pending', 'Retrying', 'Parked')))
             EXECUTE FUNCTION site_calls_open_delta()",
            "CREATE TRIGGER site_calls_open_delete AFTER DELETE ON site_calls FOR EACH ROW
             WHEN (OLD.status IN ('Pending', 'Retrying', 'Parked'))
             EXECUTE FUNCTION site_calls_open_delta()",
        ],
    },
    // 5: the Notification Outbox (SPEC §5.3). `next_attempt_at_ms` is set
    // while the dispatcher owes an attempt (Pending, Retrying) and NULL
    // otherwise, so the due index holds only the work to do.
    both(&[
        "CREATE TABLE notifications (
            id                 TEXT PRIMARY KEY,
            source_site        TEXT NOT NULL,
            list_name          TEXT NOT NULL,
            subject            TEXT NOT NULL,
            body               TEXT NOT NULL,
            recipients         TEXT NOT NULL,
            status             TEXT NOT NULL,
            retry_count        BIGINT NOT NULL,
            last_error         TEXT,
            provenance         TEXT NOT NULL,
            created_at_ms      BIGINT NOT NULL,
            updated_at_ms      BIGINT NOT NULL,
            terminal_at_ms     BIGINT,
            next_attempt_at_ms BIGINT,
            revision           BIGINT NOT NULL
        )",
        "CREATE INDEX notifications_due ON notifications (next_attempt_at_ms) WHERE next_attempt_at_ms IS NOT NULL",
        "CREATE INDEX notifications_by_created ON notifications (created_at_ms, id)",
        "CREATE INDEX notifications_by_site_created ON notifications (source_site, created_at_ms, id)",
        "CREATE INDEX notifications_by_status ON notifications (status, source_site, created_at_ms)",
        "CREATE INDEX notifications_by_terminal ON notifications (terminal_at_ms, status, source_site)",
    ]),
    // 6: the status-led indexes leave Delivered rows out. Nearly every row
    // of a fleet is Delivered (97 % in bench queries), and no query needs
    // an index to find them: a Delivered listing walks the creation-time
    // indexes, where Delivered rows are dense, and the KPIs count them
    // through the terminal-time index. So a Delivered row costs three
    // secondary index entries instead of six, on every ingest (bench
    // ingest), and the indexes that remain are a few percent of the table.
    // Queries name the predicate word for word (`OPEN_PREDICATE`,
    // `NOT_DELIVERED_PREDICATE` in listing.rs), since that is how both
    // planners prove a partial index applies.
    both(&[
        "DROP INDEX site_calls_by_status",
        "DROP INDEX site_calls_by_site_status_created",
        "DROP INDEX site_calls_by_status_created",
        "CREATE INDEX site_calls_open ON site_calls (status, source_site, created_at_ms)
         WHERE status IN ('Pending', 'Retrying', 'Parked')",
        "CREATE INDEX site_calls_by_site_status_created ON site_calls (source_site, status, created_at_ms, id)
         WHERE status <> 'Delivered'",
        "CREATE INDEX site_calls_by_status_created ON site_calls (status, created_at_ms, id)
         WHERE status <> 'Delivered'",
    ]),
    // 7: revocation (issue 9): a user can be disabled (every way in stops
    // at once), and an API token has a name (to list and revoke it by) and
    // a last-used time. Tokens issued before get their hash's first eight
    // characters as a name.
    both(&[
        "ALTER TABLE users ADD COLUMN disabled_at_ms BIGINT",
        "ALTER TABLE api_tokens ADD COLUMN name TEXT",
        "ALTER TABLE api_tokens ADD COLUMN last_used_at_ms BIGINT",
        "UPDATE api_tokens SET name = substr(token_hash, 1, 8)",
        "CREATE UNIQUE INDEX api_tokens_by_user_name ON api_tokens (user_name, name)",
    ]),
    // 8: the web UI (issue 10): server-side sessions (the cookie carries a
    // random secret, the table its SHA-256, so a database reader cannot
    // take over a session), and the audit-log entries of one id or subject
    // for a detail page.
    both(&[
        "CREATE TABLE ui_sessions (
            secret_hash     TEXT PRIMARY KEY,
            user_name       TEXT NOT NULL REFERENCES users (name),
            csrf_token      TEXT NOT NULL,
            created_at_ms   BIGINT NOT NULL,
            last_seen_at_ms BIGINT NOT NULL
        )",
        "CREATE INDEX ui_sessions_by_user ON ui_sessions (user_name)",
        "CREATE INDEX audit_log_by_target ON audit_log (target_id, id)",
    ]),
    // 9: the leader lease of the active/standby pair (issue 12; PostgreSQL
    // only: with SQLite one node runs, without a lease). Times are the
    // database's clock in ms.
    Migration {
        both: &[],
        sqlite: &[],
        postgres: &[
            // acquired_at_ms / renewed_at_ms: when the holder took it and
            // last renewed (or released) it; last_gap_ms: at the latest
            // change of holder, the time from the old holder's last renewal
            // to the new holder's acquisition (the failover's duration).
            "CREATE TABLE leader_lease (
                name           TEXT PRIMARY KEY,
                holder         TEXT,
                epoch          BIGINT NOT NULL,
                expires_at_ms  BIGINT NOT NULL,
                acquired_at_ms BIGINT NOT NULL,
                renewed_at_ms  BIGINT NOT NULL,
                last_gap_ms    BIGINT
            )",
            "INSERT INTO leader_lease (name, holder, epoch, expires_at_ms, acquired_at_ms, renewed_at_ms)
             VALUES ('central', NULL, 0, 0, 0, 0)",
            // Retry/Discard received by a standby, carried out by the
            // active node (which holds the site's stream).
            "CREATE TABLE relay_requests (
                id            TEXT PRIMARY KEY,
                by_user       TEXT NOT NULL,
                site          TEXT NOT NULL,
                tracked_id    TEXT NOT NULL,
                command       TEXT NOT NULL,
                created_at_ms BIGINT NOT NULL,
                claimed_by    TEXT,
                outcome       TEXT,
                error         TEXT
            )",
            "CREATE INDEX relay_requests_open ON relay_requests (created_at_ms) WHERE claimed_by IS NULL",
            // Every node of the cluster as it last reported itself.
            "CREATE TABLE cluster_nodes (
                name         TEXT PRIMARY KEY,
                http_address TEXT NOT NULL,
                role         TEXT NOT NULL,
                since_ms     BIGINT NOT NULL,
                seen_ms      BIGINT NOT NULL
            )",
        ],
    },
    // 10: user names are unique regardless of case (`Admin` beside
    // `admin` would be two accounts an operator reads as one). Both
    // backends index an expression.
    both(&["CREATE UNIQUE INDEX users_name_nocase ON users (lower(name))"]),
    // 11: failure groups (issue 21): the fingerprint of a row's last
    // error (sitelink_commons::fingerprint), set at ingest, and an index
    // that holds only Parked and Failed rows (a few percent of a fleet's)
    // in group order, covering what the groups show, so grouping reads the
    // index alone. Rows stored before get theirs from `backfill`. (Leading
    // with status measured slower on PostgreSQL for three of the four
    // filters of `bench operator`: BENCHMARKS.md.)
    both(&[
        "ALTER TABLE site_calls ADD COLUMN fingerprint TEXT",
        "CREATE INDEX site_calls_groups ON site_calls
            (target_summary, fingerprint, source_site, status, kind, created_at_ms, updated_at_ms)
         WHERE status IN ('Parked', 'Failed')",
    ]),
    // 12: failure groups of the Notification Outbox (issue 21): the same
    // for notifications, whose target is their list.
    both(&[
        "ALTER TABLE notifications ADD COLUMN fingerprint TEXT",
        "CREATE INDEX notifications_groups ON notifications
            (list_name, fingerprint, source_site, status, created_at_ms, updated_at_ms)
         WHERE status IN ('Parked', 'Failed')",
    ]),
    // 13: bulk actions (issue 21): who asked what of which filter, at
    // which pace, with counters per outcome kept in the same transaction
    // as the items; the items are the set frozen at creation, each with
    // its outcome once its site answered. Open items (no outcome yet) are
    // found through a partial index; a call's actions through `by_call`.
    both(&[
        "CREATE TABLE bulk_actions (
            id              TEXT PRIMARY KEY,
            verb            TEXT NOT NULL,
            operator        TEXT NOT NULL,
            created_at_ms   BIGINT NOT NULL,
            filter          TEXT NOT NULL,
            total           BIGINT NOT NULL,
            pace_at_once    BIGINT,
            pace_per_minute BIGINT,
            state           TEXT NOT NULL,
            finished_at_ms  BIGINT,
            cancelled_by    TEXT,
            applied         BIGINT NOT NULL,
            not_parked      BIGINT NOT NULL,
            not_found       BIGINT NOT NULL,
            errors          BIGINT NOT NULL,
            cancelled       BIGINT NOT NULL
        )",
        "CREATE INDEX bulk_actions_running ON bulk_actions (state, id)",
        "CREATE TABLE bulk_action_items (
            action_id     TEXT NOT NULL,
            call_id       TEXT NOT NULL,
            source_site   TEXT NOT NULL,
            outcome       TEXT,
            error         TEXT,
            applied_at_ms BIGINT,
            decided_at_ms BIGINT,
            PRIMARY KEY (action_id, call_id)
        )",
        "CREATE INDEX bulk_action_items_open ON bulk_action_items (action_id, source_site, call_id)
         WHERE outcome IS NULL",
        "CREATE INDEX bulk_action_items_by_call ON bulk_action_items (call_id)",
    ]),
];

/// Rust run after a migration's SQL, in its transaction: what SQL cannot
/// compute (migrations 11 and 12: the fingerprints of the rows stored
/// before).
async fn backfill(version: i64, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> anyhow::Result<()> {
    let table = match version {
        11 => "site_calls",
        12 => "notifications",
        _ => return Ok(()),
    };
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, last_error FROM {table} WHERE last_error IS NOT NULL"
    )))
    .fetch_all(&mut **tx)
    .await?;
    for (id, error) in rows {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET fingerprint = $1 WHERE id = $2"
        )))
        .bind(sitelink_commons::fingerprint(&error))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub(super) async fn apply(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.pool().acquire().await?;
    if db.backend() == Backend::Postgres {
        // Two central nodes starting together must not both migrate.
        conn.execute("SELECT pg_advisory_lock(7365726)").await?;
    }
    let result = apply_locked(&mut conn, db.backend()).await;
    if db.backend() == Backend::Postgres {
        conn.execute("SELECT pg_advisory_unlock(7365726)").await?;
    }
    result
}

async fn apply_locked(conn: &mut sqlx::AnyConnection, backend: Backend) -> anyhow::Result<()> {
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
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let specific = match backend {
            Backend::Sqlite => migration.sqlite,
            Backend::Postgres => migration.postgres,
        };
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for sql in migration.both.iter().chain(specific) {
            tx.execute(AssertSqlSafe(*sql))
                .await
                .with_context(|| format!("central migration {version}"))?;
        }
        backfill(version, &mut tx)
            .await
            .with_context(|| format!("central migration {version}: backfill"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use sitelink_commons::TrackedOperationStatus;

    /// The statuses the open-call counters of migration 4 count, as its
    /// SQL spells them.
    const OPEN_STATUSES_SQL: &str = "('Pending', 'Retrying', 'Parked')";

    /// The counters' status list is exactly the non-terminal statuses, and
    /// every trigger and the initial count spell it the same way.
    #[test]
    fn open_status_list_matches_the_lifecycle() {
        for s in TrackedOperationStatus::ALL {
            assert_eq!(
                OPEN_STATUSES_SQL.contains(&format!("'{}'", s.as_str())),
                !s.is_terminal(),
                "{s:?}"
            );
        }
        let m = &MIGRATIONS[3];
        for sql in m.both[2..].iter().chain(m.sqlite).chain(m.postgres) {
            let mentions = sql.matches("'Pending'").count();
            assert!(mentions > 0, "{sql}");
            assert_eq!(sql.matches(OPEN_STATUSES_SQL).count(), mentions, "{sql}");
        }
    }

    /// The partial indexes of migration 6 say their predicates exactly as
    /// the queries that rely on them do (a planner uses a partial index
    /// only when the query's WHERE names its predicate).
    #[test]
    fn partial_index_predicates_match_the_queries() {
        use crate::configuration_database::{
            listing::NOT_DELIVERED_PREDICATE, site_calls::OPEN_PREDICATE,
        };
        assert_eq!(OPEN_PREDICATE, format!("status IN {OPEN_STATUSES_SQL}"));
        let m = &MIGRATIONS[5];
        let predicates: Vec<&str> = m
            .both
            .iter()
            .filter_map(|sql| sql.split_once(" WHERE ").map(|(_, w)| w.trim()))
            .collect();
        assert_eq!(
            predicates,
            [
                OPEN_PREDICATE,
                NOT_DELIVERED_PREDICATE,
                NOT_DELIVERED_PREDICATE
            ]
        );
    }
}
