//! `Database.CachedWrite` (and `Query`/`Write`) against real SQLite,
//! PostgreSQL and MariaDB: injection attempts stay data, syntax errors and
//! constraint violations fail at once, lock timeouts and dropped connections
//! are buffered and retried until delivered.
//!
//! PostgreSQL and MariaDB run when `SITELINK_TEST_POSTGRES_URL` /
//! `SITELINK_TEST_MYSQL_URL` are set (`.ci/run` sets both); otherwise those
//! tests print that they were skipped.

use crate::common;

use common::{build_site, TestSite};
use sitelink_commons::TrackedOperationStatus::*;
use sitelink_test_support::fresh_database;
use sqlx::{Connection, Executor};

const INJECTION: &str = "x'); DROP TABLE batches; --";

fn db_section(name: &str, url: &str, init: &str) -> String {
    format!(
        r#"
[databases.{name}]
url = "{url}"
init = [{init}]
acquire_timeout_ms = 500
retry = {{ interval_ms = 1, backoff = 1.0, max_interval_ms = 1, max_retries = 50, jitter = 0.0 }}
"#
    )
}

async fn write(site: &TestSite, conn: &str, sql: &str, params: &str) -> String {
    site.run_ok(&format!(
        r#"Database.CachedWrite("{conn}", "{sql}", {params})"#
    ))
    .await
    .as_str()
    .unwrap()
    .to_owned()
}

/// The checks every backend must pass. `lock_sql` takes a lock (inside an
/// open transaction on its own connection) that makes
/// `UPDATE batches ... WHERE id = 1` time out.
async fn scenario(site: &TestSite, url: &str, lock_sql: &str) {
    site.run_ok(r#"Database.Write("plant", "CREATE TABLE batches(id INTEGER PRIMARY KEY, note TEXT, kg REAL)", [])"#).await;
    // Injection attempt: stored as plain text, the table survives.
    let id = write(
        site,
        "plant",
        "INSERT INTO batches(id, note, kg) VALUES (?, ?, ?)",
        &format!("[1, {INJECTION:?}, 12.5]"),
    )
    .await;
    assert_eq!(site.record(&id).await.status, Delivered);
    let rows = site.run_ok(r#"Database.Query("plant", "SELECT id, note, kg FROM batches WHERE note = ?", [ "x'); DROP TABLE batches; --" ])"#).await;
    assert_eq!(rows[0]["note"], INJECTION, "{rows}");
    assert_eq!(rows[0]["kg"], 12.5);
    assert_eq!(rows[0]["id"], 1);

    // Syntax error and constraint violation: Failed, and the script hears it.
    for (sql, params) in [
        ("INSERT INTO batches VALUES (", "[]"),
        (
            "INSERT INTO batches(id, note, kg) VALUES (?, ?, ?)",
            "[1, \"dup\", 1.0]",
        ),
    ] {
        let run = site
            .run(&format!(
                r#"Database.CachedWrite("plant", "{sql}", {params})"#
            ))
            .await;
        let err = run.unwrap_err();
        assert!(err.to_string().contains("failed permanently"), "{err}");
        let sitelink_site::site_runtime::ScriptError::Runtime { ids, .. } = err else {
            panic!()
        };
        let r = site.record(&ids[0].to_string()).await;
        assert_eq!(r.status, Failed, "{sql}: {:?}", r.last_error);
    }

    // A lock held elsewhere: the write times out, is buffered, and is
    // delivered once the lock is gone.
    let mut holder = sqlx::AnyConnection::connect(url).await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    holder
        .execute(sqlx::AssertSqlSafe(lock_sql.to_owned()))
        .await
        .unwrap();
    let id = write(
        site,
        "plant",
        "UPDATE batches SET kg = ? WHERE id = 1",
        "[99.5]",
    )
    .await;
    let r = site.record(&id).await;
    assert_eq!(
        r.status, Pending,
        "a lock timeout is transient: {:?}",
        r.last_error
    );
    assert_eq!(site.engine.buffer_len().await.unwrap(), 1);
    holder.execute("COMMIT").await.unwrap();
    holder.close().await.unwrap();
    let pass = site.retry_once().await;
    assert_eq!(
        pass.delivered,
        1,
        "{pass:?} {:?}",
        site.record(&id).await.last_error
    );
    let kg = site
        .run_ok(r#"Database.Query("plant", "SELECT kg FROM batches WHERE id = ?", [1])"#)
        .await;
    assert_eq!(kg[0]["kg"], 99.5);
}

#[tokio::test]
async fn sqlite_cached_writes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("plant.db").display());
    let site = build_site(&db_section("plant", &url, r#""PRAGMA busy_timeout = 50""#)).await;
    // SQLite has no LOCK statement: an exclusive transaction is the lock.
    scenario(
        &site,
        &format!("{url}?mode=rwc"),
        "UPDATE batches SET kg = 0 WHERE id = 1",
    )
    .await;
}

/// The connection itself goes away (a proxy cuts it and refuses new ones):
/// transient, and delivered exactly once after it comes back.
async fn dropped_connection(site: &TestSite, proxy: &sitelink_test_support::TcpProxy) {
    proxy.cut();
    let id = write(
        site,
        "proxied",
        "INSERT INTO batches(id, note, kg) VALUES (?, ?, ?)",
        "[2, \"offline\", 1.0]",
    )
    .await;
    let r = site.record(&id).await;
    assert_eq!(r.status, Pending, "{:?}", r.last_error);
    proxy.heal();
    assert_eq!(
        site.retry_once().await.delivered,
        1,
        "{:?}",
        site.record(&id).await.last_error
    );
    let n = site
        .run_ok(r#"Database.Query("plant", "SELECT COUNT(*) AS n FROM batches WHERE id = 2", [])"#)
        .await;
    assert_eq!(n[0]["n"], 1);
}

#[tokio::test]
async fn postgres_cached_writes() {
    let Some(db) = fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        return;
    };
    let proxy = sitelink_test_support::TcpProxy::start(db.server_addr()).await;
    let site = build_site(&format!(
        "{}{}",
        db_section("plant", &db.url, r#""SET lock_timeout = '200ms'""#),
        db_section("proxied", &db.url_via(proxy.addr()), "")
    ))
    .await;
    scenario(
        &site,
        &db.url,
        "LOCK TABLE batches IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    dropped_connection(&site, &proxy).await;
    drop(site);
    db.drop_database().await;
}

#[tokio::test]
async fn mariadb_cached_writes() {
    let Some(db) = fresh_database("SITELINK_TEST_MYSQL_URL").await else {
        return;
    };
    let proxy = sitelink_test_support::TcpProxy::start(db.server_addr()).await;
    let site = build_site(&format!(
        "{}{}",
        db_section(
            "plant",
            &db.url,
            r#""SET SESSION innodb_lock_wait_timeout = 1""#
        ),
        db_section("proxied", &db.url_via(proxy.addr()), "")
    ))
    .await;
    scenario(
        &site,
        &db.url,
        "SELECT * FROM batches WHERE id = 1 FOR UPDATE",
    )
    .await;
    dropped_connection(&site, &proxy).await;
    drop(site);
    db.drop_database().await;
}
