//! The SQLite schema of the site buffer database and its migrations
//! (versioned by `PRAGMA user_version`).

use anyhow::Context;
use rusqlite::Connection;

/// Ordered migrations; index + 1 is the schema version they lead to.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: tracking table, buffer, meta counters.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO meta(key, value) VALUES ('change_seq', 0), ('acked_cursor', 0);

    -- One row per TrackedOperationId: the status record (SPEC 4.1).
    CREATE TABLE tracking (
        id              TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,
        target_summary  TEXT NOT NULL,
        status          TEXT NOT NULL,
        retry_count     INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        provenance      TEXT NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        terminal_at_ms  INTEGER,
        revision        INTEGER NOT NULL,
        change_seq      INTEGER NOT NULL,
        -- What is needed to retry (JSON DeliveryRequest); NULL once terminal.
        request         TEXT
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX tracking_by_change_seq ON tracking(change_seq);
    -- Listing by status for what operators look for (Parked, Retrying,
    -- Failed, Discarded). Pending and Delivered rows stay out of it, so the
    -- hot path of a cached call (insert Pending, update to Delivered) never
    -- touches it.
    CREATE INDEX tracking_by_status ON tracking(status, id) WHERE status NOT IN ('Pending', 'Delivered');
    CREATE INDEX tracking_by_terminal ON tracking(terminal_at_ms) WHERE terminal_at_ms IS NOT NULL;

    -- The retry mechanism: operations due for a retry. Only references the row.
    CREATE TABLE buffer (
        id                  TEXT PRIMARY KEY REFERENCES tracking(id) ON DELETE CASCADE,
        category            TEXT NOT NULL,
        next_attempt_at_ms  INTEGER NOT NULL
    );
    CREATE INDEX buffer_by_due ON buffer(next_attempt_at_ms);
    "#,
    // 2: notifications (SPEC 4.4). A notification's row stays Pending at
    // the site (central owns its delivery); `forwarded_at_ms` says central
    // acknowledged it. Its buffer entry (category Notification) means "not
    // yet forwarded"; the forwarder reads them through their own index.
    r#"
    ALTER TABLE tracking ADD COLUMN forwarded_at_ms INTEGER;
    CREATE INDEX buffer_notifications ON buffer(next_attempt_at_ms, id) WHERE category = 'Notification';
    "#,
    // 3: purge finds old rows by id (UUID v7: ids sort by creation time,
    // and a row ends after it began), so the index of terminal times goes:
    // it cost an entry and its pages in every commit on the hot path of a
    // cached call, and the purge statement never used it (SQLite scanned
    // the table for its OR).
    r#"
    DROP INDEX tracking_by_terminal;
    "#,
    // 4: the bulk action that last changed a row (issue 21): a bulk
    // action is applied to a call at most once, so central may send an id
    // again after losing the answer and hear when it was applied.
    r#"
    ALTER TABLE tracking ADD COLUMN command_key TEXT;
    ALTER TABLE tracking ADD COLUMN command_at_ms INTEGER;
    "#,
    // 5: the attempt history (issue 21): the last 20 attempts of every
    // operation that did not succeed at once, written in the transaction
    // of the outcome each records; they go with their row.
    r#"
    CREATE TABLE attempts (
        id           TEXT NOT NULL REFERENCES tracking(id) ON DELETE CASCADE,
        n            INTEGER NOT NULL,
        at_ms        INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        outcome      TEXT NOT NULL,
        error        TEXT,
        code         TEXT,
        PRIMARY KEY (id, n)
    ) WITHOUT ROWID;
    "#,
];

/// Opens (creating if needed) the buffer database with the settings every
/// connection must have: WAL, synchronous=FULL (a commit that handed out an
/// id survives power loss), foreign keys, a busy timeout for readers. The
/// writer's connection then trades FULL for NORMAL plus an fdatasync of
/// its own after each commit, the same durability (`writer::spawn`).
pub fn open(path: &std::path::Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("opening buffer database {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Applies the migrations not yet applied, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "buffer database has schema version {version}, newer than this build knows ({}); \
             refusing to run an older sitelink on it",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("buffer database migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_2_database_migrates_to_version_3_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i + 1).unwrap();
        }
        conn.execute(
            "INSERT INTO tracking(id, kind, target_summary, status, provenance, created_at_ms,
                 updated_at_ms, terminal_at_ms, revision, change_seq)
             VALUES ('0190a0b0-0000-7000-8000-000000000001', 'ExternalCall', 'erp.post',
                 'Delivered', 'i/s', 1, 2, 2, 2, 1)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let index: u32 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tracking_by_terminal'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 0, "the index by terminal time is gone");
        let rows: u32 = conn
            .query_row("SELECT count(*) FROM tracking", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        // Migrating again applies nothing (dropping the index a second
        // time would fail).
        migrate(&mut conn).unwrap();
    }
}
