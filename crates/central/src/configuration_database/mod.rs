//! Configuration Database (SPEC §2 component 7, §5.4): the central
//! database, SQLite (one file, zero set-up) or PostgreSQL, with the same
//! schema and the same SQL on both through sqlx's `Any` driver.
//!
//! Main types: [`Database`] (pool + backend; [`Database::connect`] applies
//! the migrations), [`Sites`] (registered sites, their hashed tokens and
//! reconcile cursors), [`SiteCalls`] (the mirror of every site's tracking
//! rows: ingest, lookups, KPIs), [`Notifications`] (the Notification
//! Outbox's own rows), [`Users`] and [`AuditLog`].
//!
//! Invariants: one schema, versioned migrations applied at start in order,
//! each in its own transaction; SQL uses `$n` placeholders, which both
//! backends accept; database errors are classified by code
//! ([`is_unique_violation`]), never by message text.

mod migrations;
mod notifications;
mod site_calls;
mod sites;
mod users;

use std::time::Duration;

use anyhow::Context;
use sqlx::{any::AnyPoolOptions, AnyPool, Executor};

pub use notifications::{
    DueNotification, NewNotification, NotificationCommand, NotificationRecord, Notifications,
    SendOutcome,
};
pub use site_calls::{
    IngestJob, IngestOutcome, Kpis, PageCursor, SiteCallFilter, SiteCalls, ROWS_PER_STATEMENT,
};
pub use sites::{SiteRecord, SiteToken, Sites};
pub use users::{
    rfc3339, AuditEntry, AuditLog, Role, StoredCredentials, TokenInfo, User, Users, UsersError,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The central database.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

impl Database {
    /// Connects to `sqlite://path` (created if missing) or `postgres://…`
    /// and applies pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
            {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
            }
            let sep = if url.contains('?') { '&' } else { '?' };
            (
                Backend::Sqlite,
                if url.contains("mode=") {
                    url.to_owned()
                } else {
                    format!("{url}{sep}mode=rwc")
                },
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            anyhow::bail!(
                "unsupported central database URL {url:?} (sqlite://PATH or postgres://...)"
            );
        };
        let pool = AnyPoolOptions::new()
            // SQLite serializes writers anyway; a few connections serve reads.
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL for concurrent readers; synchronous=NORMAL is
                        // enough for a mirror that reconciliation heals (the
                        // cursor commits with the rows it covers).
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // 64 MiB of page cache: index inserts and KPI scans
                        // at millions of rows stay in memory.
                        conn.execute("PRAGMA cache_size = -65536").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the central database {}", redact(&url)))?;
        let db = Self { pool, backend };
        migrations::apply(&db).await?;
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn sites(&self) -> Sites<'_> {
        Sites::new(self)
    }

    pub fn site_calls(&self) -> SiteCalls<'_> {
        SiteCalls::new(self)
    }

    pub fn notifications(&self) -> Notifications<'_> {
        Notifications::new(self)
    }

    pub fn users(&self) -> Users<'_> {
        Users::new(self)
    }

    pub fn audit_log(&self) -> AuditLog<'_> {
        AuditLog::new(self)
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Lower-case hex SHA-256: how site and API tokens (256 random bits, so
/// unguessable) are stored.
fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether an error is a unique-key violation (SQLSTATE 23505 on
/// PostgreSQL, extended code 1555/2067 on SQLite): by code, not by text.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation),
        _ => false,
    }
}

pub use sitelink_commons::{now_unix_ms as now_ms, LAST_ERROR_MAX_CHARS};
