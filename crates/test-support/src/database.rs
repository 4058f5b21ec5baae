//! Fresh, randomly named databases on the machine's PostgreSQL or MariaDB.

/// A fresh, randomly named database on the server named by `env_var`
/// (`SITELINK_TEST_POSTGRES_URL` or `SITELINK_TEST_MYSQL_URL`), or `None`
/// after printing why the test is skipped. With
/// `SITELINK_REQUIRE_DATABASES=1` (`.ci/run` sets it) a missing variable
/// fails the test instead: CI must not pass by skipping.
pub async fn fresh_database(env_var: &str) -> Option<FreshDatabase> {
    use sqlx::{Connection, Executor};
    let base = server_url(env_var)?;
    sqlx::any::install_default_drivers();
    let name = format!("sl_test_{:016x}", rand::random::<u64>());
    let mut admin = sqlx::AnyConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("{env_var}={base}: {e}"));
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&format!("/{name}"));
    Some(FreshDatabase {
        base,
        name,
        url: url.to_string(),
    })
}

/// The server URL in `env_var`, or `None` after printing why the caller
/// skips; with `SITELINK_REQUIRE_DATABASES=1` (`.ci/run` sets it) a
/// missing variable panics instead: CI must not pass by skipping.
pub fn server_url(env_var: &str) -> Option<String> {
    match std::env::var(env_var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var("SITELINK_REQUIRE_DATABASES").is_ok_and(|v| v == "1") => {
            panic!("{env_var} is not set, and SITELINK_REQUIRE_DATABASES=1 requires it")
        }
        Err(_) => {
            eprintln!(
                "skipped: {env_var} is not set (.ci/run sets it to the machine's server; see README)"
            );
            None
        }
    }
}

pub struct FreshDatabase {
    base: String,
    pub name: String,
    pub url: String,
}

impl FreshDatabase {
    /// The same database reached through `proxy` instead of directly.
    pub fn url_via(&self, proxy: std::net::SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url).unwrap();
        url.set_host(Some(&proxy.ip().to_string())).unwrap();
        url.set_port(Some(proxy.port())).unwrap();
        url.to_string()
    }

    pub fn server_addr(&self) -> std::net::SocketAddr {
        let url = url::Url::parse(&self.url).unwrap();
        let host = url.host_str().unwrap();
        let port = url.port().unwrap_or(if url.scheme() == "postgres" {
            5432
        } else {
            3306
        });
        use std::net::ToSocketAddrs;
        (host, port).to_socket_addrs().unwrap().next().unwrap()
    }

    pub async fn drop_database(&self) {
        use sqlx::{Connection, Executor};
        if let Ok(mut admin) = sqlx::AnyConnection::connect(&self.base).await {
            let force = if self.base.starts_with("postgres") {
                " WITH (FORCE)"
            } else {
                ""
            };
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {}{force}",
                    self.name
                )))
                .await;
        }
    }
}
