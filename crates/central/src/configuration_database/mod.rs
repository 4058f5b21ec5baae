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

mod audit_log;
pub mod bulk_actions;
pub mod groups;
pub mod leader_lease;
pub mod listing;
mod migrations;
mod notifications;
mod relay_requests;
mod site_calls;
mod sites;
mod ui_sessions;
mod users;

use std::time::Duration;

use anyhow::Context;
use sqlx::{any::AnyPoolOptions, AnyPool, Executor};

pub use audit_log::{AuditEntry, AuditLog};
pub use bulk_actions::{
    BulkAction, BulkActions, BulkState, BulkVerb, CreateError, ItemOutcome, ItemResult,
    NewBulkAction, Pace, Preview,
};
pub use groups::{FailureGroup, GroupFilter, GroupParams, Grouped, NotificationGroupParams};
pub use listing::{
    Dialect, ListFilter, ListQuery, ListQueryError, Listed, Listing, Page, PageCursor,
};
pub use notifications::{
    DueNotification, NewNotification, NotificationCommand, NotificationRecord, Notifications,
    SendOutcome,
};
pub use relay_requests::{RelayRequests, RELAY_REQUEST_KEPT};
pub use site_calls::{IngestJob, IngestOutcome, Kpis, SiteCalls, ROWS_PER_STATEMENT};
pub use sites::{SiteRecord, SiteToken, Sites, SitesError};
pub use ui_sessions::{random_secret, UiSession, UiSessions};
pub use users::{
    rfc3339, PasswordHash, Role, StoredCredentials, TokenInfo, User, UserInfo, Users, UsersError,
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
    /// The leader term a singleton's handle writes under (Cluster
    /// Infrastructure): its write transactions pass the fence first.
    term: Option<std::sync::Arc<leader_lease::Term>>,
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
        let pool = match open_pool(backend, &url).await {
            Ok(pool) => pool,
            // 3D000 invalid_catalog_name: the database does not exist yet.
            Err(e)
                if backend == Backend::Postgres
                    && e.as_database_error().and_then(|d| d.code()).as_deref() == Some("3D000") =>
            {
                create_postgres_database(&url).await?;
                open_pool(backend, &url).await.map_err(|e| {
                    anyhow::anyhow!("connecting to the central database {}: {e}", redact(&url))
                })?
            }
            // The error's own text only: its source repeats it word for word.
            Err(e) => anyhow::bail!("connecting to the central database {}: {e}", redact(&url)),
        };
        let db = Self {
            pool,
            backend,
            term: None,
        };
        migrations::apply(&db).await?;
        Ok(db)
    }

    /// This handle, for a singleton of leader term `term`: its write
    /// transactions are refused once the term is over.
    pub fn fenced(&self, term: leader_lease::Term) -> Self {
        Self {
            term: Some(std::sync::Arc::new(term)),
            ..self.clone()
        }
    }

    /// The fence at the start of a singleton's write transaction (nothing
    /// without a term: one node, or not a singleton).
    pub(crate) async fn fence(&self, conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        match &self.term {
            Some(term) => leader_lease::check(conn, term).await,
            None => Ok(()),
        }
    }

    /// The fence checked now, outside a write (before a singleton starts
    /// work that is not a database write, such as an SMTP send).
    pub async fn fence_now(&self) -> Result<(), sqlx::Error> {
        if self.term.is_none() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        self.fence(&mut tx).await?;
        tx.commit().await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Creates the PostgreSQL database `url` names (its server's `postgres`
/// database is where `CREATE DATABASE` runs), and says so; or says exactly
/// what to run when that is not allowed.
async fn create_postgres_database(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let parsed = url::Url::parse(url).context("the central database URL")?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    // Quoted as an identifier below: only plain names, nothing to escape.
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "the central database name {name:?} is not a plain name (letters, digits, '_', '-')"
    );
    let mut admin = parsed.clone();
    admin.set_path("/postgres");
    let created = async {
        let mut conn = sqlx::PgConnection::connect(admin.as_str()).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await;
    match created {
        Ok(()) => {
            tracing::warn!(database = %name, "the central database did not exist: created it");
            Ok(())
        }
        Err(e) => anyhow::bail!(
            "the central database {name} does not exist on {}, and creating it failed ({e}); \
             create it with `createdb -h {} -p {} -U {} {name}` (or CREATE DATABASE \"{name}\")",
            redact(url),
            parsed.host_str().unwrap_or("localhost"),
            parsed.port().unwrap_or(5432),
            if parsed.username().is_empty() {
                "postgres"
            } else {
                parsed.username()
            },
        ),
    }
}

/// What every PostgreSQL session of central sets first (see `open_pool`).
const PG_SESSION_SETUP: &str = "SET idle_in_transaction_session_timeout = 5000";

/// A PostgreSQL connection of its own, outside the pool, set up as the
/// pool's are: for the leader lease's writes, whose connection is dropped
/// rather than reused when a call is cut off (`cluster::LeaseConnection`).
pub async fn dedicated_connection(url: &str) -> Result<sqlx::AnyConnection, sqlx::Error> {
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await?;
    conn.execute(PG_SESSION_SETUP).await?;
    Ok(conn)
}

async fn open_pool(backend: Backend, url: &str) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
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
                } else {
                    // A node paused inside a transaction (SIGSTOP, a
                    // frozen VM) must not hold its locks — the leader
                    // lease's row above all — for ever: the server ends
                    // such a session after 5 s, and a takeover proceeds.
                    // Central's transactions never wait on anything but
                    // the database itself.
                    conn.execute(PG_SESSION_SETUP).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
}

impl Database {
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

    pub fn bulk_actions(&self) -> bulk_actions::BulkActions<'_> {
        bulk_actions::BulkActions::new(self)
    }

    pub fn ui_sessions(&self) -> UiSessions<'_> {
        UiSessions::new(self)
    }

    pub fn relay_requests(&self) -> RelayRequests<'_> {
        RelayRequests::new(self)
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
