//! Named database connections (SQLite, PostgreSQL, MySQL/MariaDB) through
//! sqlx's `Any` driver: `Query`, `Write` and the attempts of `CachedWrite`.
//!
//! Parameters are always bound, never spliced into SQL. Scripts write `?`
//! placeholders for every backend; for PostgreSQL they are rewritten to
//! `$1, $2, ...` outside quoted text ([`pg_placeholders`]).
//!
//! Errors are classified by structured codes ([`classify`]): SQLSTATE for
//! PostgreSQL, the server error number for MySQL/MariaDB, the result code for
//! SQLite; never by message text.

use std::{collections::HashMap, path::Path, sync::Once, time::Duration};

use serde::Deserialize;
use serde_json::{Map, Number, Value};
use sqlx::{
    any::{AnyArguments, AnyPoolOptions, AnyRow, AnyTypeInfoKind},
    query::Query,
    Any, AnyPool, AssertSqlSafe, Column, Executor, Row, ValueRef,
};

use super::{ErrorClass, GatewayError};
use crate::store_and_forward::RetryPolicy;

/// `[databases.NAME]` in site.toml.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path`, `postgres://...` or `mysql://...` (MariaDB too).
    pub url: String,
    /// Statements run on every new connection, e.g.
    /// `SET SESSION innodb_lock_wait_timeout = 5` or `PRAGMA busy_timeout = 2000`.
    #[serde(default)]
    pub init: Vec<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a call waits for a connection, in milliseconds.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Replay this connection's parked writes at this pace when it comes
    /// back (off when absent).
    #[serde(default)]
    pub replay_parked_on_recovery: Option<super::recovery::ReplayPace>,
}

fn default_max_connections() -> u32 {
    4
}
fn default_acquire_timeout_ms() -> u64 {
    5_000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

fn backend(url: &str) -> Result<Backend, String> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Backend::Sqlite),
        "postgres" | "postgresql" => Ok(Backend::Postgres),
        "mysql" | "mariadb" => Ok(Backend::MySql),
        _ => Err(format!(
            "unsupported database URL scheme {scheme:?} (sqlite, postgres or mysql)"
        )),
    }
}

impl DatabaseConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        backend(&self.url).map_err(|m| ("url".to_owned(), m))?;
        self.retry.validate().map_err(|m| ("retry".to_owned(), m))
    }

    /// A relative SQLite path is relative to the config file's folder.
    pub fn resolve_relative(&mut self, base: &Path) {
        if let Some(rest) = self.url.strip_prefix("sqlite://") {
            if !rest.starts_with('/') && !rest.starts_with(':') {
                self.url = format!("sqlite://{}", base.join(rest).display());
            }
        }
    }
}

struct Db {
    pool: AnyPool,
    backend: Backend,
    retry: RetryPolicy,
}

/// All database connections of the site. Pools connect lazily, so a
/// database that is down at start does not stop the site.
pub struct Databases {
    dbs: HashMap<String, Db>,
}

impl Databases {
    pub fn new(
        configs: &std::collections::BTreeMap<String, DatabaseConfig>,
    ) -> anyhow::Result<Self> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let mut dbs = HashMap::new();
        for (name, c) in configs {
            let backend = backend(&c.url).map_err(anyhow::Error::msg)?;
            let mut url = c.url.clone();
            if backend == Backend::Sqlite && !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
            let init = std::sync::Arc::new(c.init.clone());
            let pool = AnyPoolOptions::new()
                .max_connections(c.max_connections)
                .acquire_timeout(Duration::from_millis(c.acquire_timeout_ms))
                .after_connect(move |conn, _meta| {
                    let init = init.clone();
                    Box::pin(async move {
                        for stmt in init.iter() {
                            // Operator-written config, not script input.
                            conn.execute(AssertSqlSafe(stmt.clone())).await?;
                        }
                        Ok(())
                    })
                })
                .connect_lazy(&url)?;
            dbs.insert(
                name.clone(),
                Db {
                    pool,
                    backend,
                    retry: c.retry,
                },
            );
        }
        Ok(Self { dbs })
    }

    fn db(&self, name: &str) -> Result<&Db, GatewayError> {
        self.dbs
            .get(name)
            .ok_or_else(|| GatewayError::UnknownConnection(name.into()))
    }

    pub fn policy(&self, name: &str) -> RetryPolicy {
        self.dbs.get(name).map(|d| d.retry).unwrap_or_default()
    }

    /// Validates a cached write without making it.
    pub fn check(&self, name: &str, params: &[Value]) -> Result<(), GatewayError> {
        self.db(name)?;
        bindable(name, params)
    }

    pub async fn write(
        &self,
        name: &str,
        sql: &str,
        params: &[Value],
    ) -> Result<u64, GatewayError> {
        let db = self.db(name)?;
        let sql = db.sql(sql);
        let q = bind(sqlx::query(AssertSqlSafe(sql.into_owned())), name, params)?;
        let done = q.execute(&db.pool).await.map_err(|e| failed(name, &e))?;
        Ok(done.rows_affected())
    }

    pub async fn query(
        &self,
        name: &str,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Map<String, Value>>, GatewayError> {
        let db = self.db(name)?;
        let sql = db.sql(sql);
        let q = bind(sqlx::query(AssertSqlSafe(sql.into_owned())), name, params)?;
        let rows = q.fetch_all(&db.pool).await.map_err(|e| failed(name, &e))?;
        rows.iter()
            .map(|r| row_to_json(r).map_err(|e| failed(name, &e)))
            .collect()
    }
}

impl Db {
    /// The SQL text as the backend wants it. The text comes from the site's
    /// own scripts; values always travel as bound parameters.
    fn sql<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        match self.backend {
            Backend::Postgres => pg_placeholders(sql).into(),
            _ => sql.into(),
        }
    }
}

fn failed(name: &str, e: &sqlx::Error) -> GatewayError {
    GatewayError::Failed {
        target: name.into(),
        class: classify(e),
        message: describe(e),
        code: code_of(e),
    }
}

/// The error as `last_error` shows it: a database's own error led by its
/// code (`SQLSTATE 55P03: …`, `MySQL 1205: …`, `SQLite 5: …`), which an
/// operator can look up and central's failure groups keep (the
/// fingerprint); anything else as sqlx words it.
fn describe(e: &sqlx::Error) -> String {
    if let sqlx::Error::Database(db) = e {
        if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            return format!("SQLSTATE {}: {}", pg.code(), pg.message());
        }
        if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return format!("MySQL {}: {}", my.number(), my.message());
        }
        if let Some(code) = db.code() {
            return format!("SQLite {code}: {}", db.message());
        }
    }
    e.to_string()
}

/// The code [`describe`] leads with, alone (an attempt's history keeps it).
fn code_of(e: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return Some(format!("SQLSTATE {}", pg.code()));
    }
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some(format!("MySQL {}", my.number()));
    }
    db.code().map(|c| format!("SQLite {c}"))
}

fn bindable(name: &str, params: &[Value]) -> Result<(), GatewayError> {
    match params.iter().position(|v| matches!(v, Value::Array(_) | Value::Object(_))) {
        Some(i) => Err(GatewayError::BadParams {
            target: name.into(),
            reason: format!("parameter {} is an array or map; only null, booleans, numbers and strings can be bound", i + 1),
        }),
        None => Ok(()),
    }
}

fn bind<'q>(
    mut q: Query<'q, Any, AnyArguments>,
    name: &str,
    params: &'q [Value],
) -> Result<Query<'q, Any, AnyArguments>, GatewayError> {
    bindable(name, params)?;
    for v in params {
        q = match v {
            Value::Null => q.bind(None::<String>),
            Value::Bool(b) => q.bind(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => q.bind(i),
                None => q.bind(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => q.bind(s.as_str()),
            Value::Array(_) | Value::Object(_) => unreachable!("checked by bindable"),
        };
    }
    Ok(q)
}

fn row_to_json(row: &AnyRow) -> Result<Map<String, Value>, sqlx::Error> {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().kind() {
                AnyTypeInfoKind::Null => Value::Null,
                AnyTypeInfoKind::Bool => Value::Bool(row.try_get(i)?),
                AnyTypeInfoKind::SmallInt => Value::from(row.try_get::<i16, _>(i)?),
                AnyTypeInfoKind::Integer => Value::from(row.try_get::<i32, _>(i)?),
                AnyTypeInfoKind::BigInt => Value::from(row.try_get::<i64, _>(i)?),
                AnyTypeInfoKind::Real => Number::from_f64(row.try_get::<f32, _>(i)? as f64)
                    .map_or(Value::Null, Value::Number),
                AnyTypeInfoKind::Double => {
                    Number::from_f64(row.try_get::<f64, _>(i)?).map_or(Value::Null, Value::Number)
                }
                AnyTypeInfoKind::Text => Value::String(row.try_get(i)?),
                AnyTypeInfoKind::Blob => Value::Array(
                    row.try_get::<Vec<u8>, _>(i)?
                        .into_iter()
                        .map(Value::from)
                        .collect(),
                ),
            }
        };
        out.insert(col.name().to_owned(), value);
    }
    Ok(out)
}

/// Rewrites `?` placeholders to `$1, $2, ...` for PostgreSQL, leaving `?`
/// inside quoted strings, quoted identifiers and comments alone.
///
/// Hand-written because sqlx's `Any` driver passes SQL through unchanged and
/// no maintained crate does just this rewrite.
pub fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

/// SPEC §4.2: connection errors, lock timeouts and serialization failures
/// are transient; syntax errors and constraint violations (and anything not
/// known to pass by itself) are permanent.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    use sqlx::Error::*;
    match e {
        Io(_) | Tls(_) | PoolTimedOut | PoolClosed | WorkerCrashed | Protocol(_) => {
            ErrorClass::Transient
        }
        Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                classify_sqlstate(pg.code())
            } else if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                classify_mysql(my.number())
            } else if let Some(code) = db.code().and_then(|c| c.parse::<i32>().ok()) {
                classify_sqlite(code)
            } else {
                ErrorClass::Permanent
            }
        }
        _ => ErrorClass::Permanent,
    }
}

/// PostgreSQL SQLSTATE classes: 08 connection exception, 40 transaction
/// rollback (serialization failure, deadlock), 53 insufficient resources,
/// 57 operator intervention (statement timeout, shutdown), 55P03 lock not
/// available.
fn classify_sqlstate(code: &str) -> ErrorClass {
    if code == "55P03"
        || ["08", "40", "53", "57", "58"]
            .iter()
            .any(|c| code.starts_with(c))
    {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// MySQL/MariaDB server error numbers that pass by themselves.
fn classify_mysql(number: u16) -> ErrorClass {
    match number {
        // 1205 lock wait timeout, 1213 deadlock, 1040 too many connections,
        // 1053 server shutdown, 1317 query interrupted, 1927 connection
        // killed, 2006/2013 server gone away / lost connection, 3024/1969
        // statement timeout, 4031 idle-timeout disconnect.
        1205 | 1213 | 1040 | 1053 | 1317 | 1927 | 2006 | 2013 | 3024 | 1969 | 4031 => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

/// SQLite primary result codes: BUSY (5), LOCKED (6), CANTOPEN (14),
/// IOERR (10), PROTOCOL (15) pass by themselves.
fn classify_sqlite(code: i32) -> ErrorClass {
    match code & 0xff {
        5 | 6 | 10 | 14 | 15 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_quotes_only() {
        assert_eq!(
            pg_placeholders(
                "INSERT INTO t(a, b) VALUES (?, ?) -- why?\n AND c = '?' AND \"x?\" = ?"
            ),
            "INSERT INTO t(a, b) VALUES ($1, $2) -- why?\n AND c = '?' AND \"x?\" = $3"
        );
    }

    #[test]
    fn code_tables() {
        assert_eq!(classify_sqlstate("40001"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("55P03"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("42601"), ErrorClass::Permanent);
        assert_eq!(classify_sqlstate("23505"), ErrorClass::Permanent);
        assert_eq!(classify_mysql(1205), ErrorClass::Transient);
        assert_eq!(classify_mysql(1064), ErrorClass::Permanent);
        assert_eq!(classify_sqlite(5), ErrorClass::Transient);
        assert_eq!(classify_sqlite(517), ErrorClass::Transient);
        assert_eq!(classify_sqlite(1), ErrorClass::Permanent);
        assert_eq!(classify_sqlite(2067), ErrorClass::Permanent);
    }
}
