//! What the central benchmarks share: a central on a fresh database
//! (SQLite in a temporary folder, or a new database on a PostgreSQL server
//! that is dropped afterwards) and synthetic site-call rows.

use sitelink_central::{Central, CentralConfig};
use sitelink_commons::{
    unix_ms_to_utc, Kind, TrackedOperationId, TrackedOperationStatus, TrackingRecord,
};
use sqlx::{Connection, Executor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh central database for one benchmark run.
pub struct BenchDb {
    pub url: String,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl BenchDb {
    pub async fn new(db: Db) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        match db {
            Db::Sqlite => Ok(Self {
                url: format!("sqlite://{}", dir.path().join("central.db").display()),
                _dir: dir,
                pg: None,
            }),
            Db::Postgres => {
                let base = std::env::var("SITELINK_BENCH_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                sqlx::any::install_default_drivers();
                let name = format!("sl_bench_{:016x}", rand::random::<u64>());
                let mut admin = sqlx::AnyConnection::connect(&base).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await?;
                let (head, _) = base
                    .rsplit_once('/')
                    .ok_or_else(|| anyhow::anyhow!("no database in {base}"))?;
                Ok(Self {
                    url: format!("{head}/{name}"),
                    _dir: dir,
                    pg: Some((base, name)),
                })
            }
        }
    }

    pub async fn central(
        &self,
        reconcile_interval_seconds: u64,
        reconcile_page: u32,
    ) -> anyhow::Result<Central> {
        self.central_with(reconcile_interval_seconds, reconcile_page, "")
            .await
    }

    /// A central with `extra` sections (the Notification Outbox) appended.
    pub async fn central_with(
        &self,
        reconcile_interval_seconds: u64,
        reconcile_page: u32,
        extra: &str,
    ) -> anyhow::Result<Central> {
        let cfg = CentralConfig::parse(
            &format!(
                "[central]\ndatabase_url = \"{}\"\nlink_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\nreconcile_interval_seconds = {reconcile_interval_seconds}\nreconcile_page = {reconcile_page}\n{extra}",
                self.url
            ),
            self._dir.path(),
        )
        .map_err(anyhow::Error::msg)?;
        Central::build(cfg).await
    }

    pub async fn drop_database(self) {
        if let Some((base, name)) = self.pg {
            if let Ok(mut admin) = sqlx::AnyConnection::connect(&base).await {
                let _ = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE {name} WITH (FORCE)"
                    )))
                    .await;
            }
        }
    }
}

/// Runs `central` until `cancel`, once it is the active node: on
/// PostgreSQL a fresh node takes the leader lease only after it starts,
/// and a standby refuses site streams, so a bench that connected at once
/// would be told "try the next address".
pub async fn run_active(
    central: Central,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let cluster = central.cluster_handle();
    let server = tokio::spawn(central.run(cancel.clone()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cluster.is_active() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "central did not become the active node within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(server)
}

/// Registers site `name` at `database` and builds it in `dir`, linked to
/// central at `link` (the caller runs it).
pub async fn build_site(
    database: &sitelink_central::configuration_database::Database,
    name: &str,
    link: std::net::SocketAddr,
    dir: &std::path::Path,
) -> anyhow::Result<sitelink_site::Site> {
    build_site_with(database, name, link, dir, "").await
}

/// [`build_site`] with `extra` sections (external systems) appended.
pub async fn build_site_with(
    database: &sitelink_central::configuration_database::Database,
    name: &str,
    link: std::net::SocketAddr,
    dir: &std::path::Path,
    extra: &str,
) -> anyhow::Result<sitelink_site::Site> {
    let token = database
        .sites()
        .add(&sitelink_commons::SiteName::parse(name)?)
        .await?;
    let cfg = sitelink_site::SiteConfig::parse(
        &format!(
            "[site]\nname = \"{name}\"\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\n[central]\naddresses = [\"http://{link}\"]\ntoken = \"{}\"\n{extra}",
            token.as_str()
        ),
        dir,
    )?;
    sitelink_site::Site::build(cfg).await
}

/// `n` site calls of `site` with change sequences `first_seq..`, in the
/// mix of a busy fleet (the same as `bench queries`): 97 % Delivered, 1 %
/// Failed, 1 % Parked, 0.5 % Pending, 0.5 % Retrying.
pub fn rows(site: &str, n: usize, first_seq: u64) -> Vec<TrackingRecord> {
    use TrackedOperationStatus as S;
    let now = sitelink_commons::utc_to_unix_ms(time::OffsetDateTime::now_utc());
    (0..n)
        .map(|i| {
            let status = match i % 200 {
                0 | 1 => S::Failed,
                2 | 3 => S::Parked,
                4 => S::Pending,
                5 => S::Retrying,
                _ => S::Delivered,
            };
            TrackingRecord {
                tracked_operation_id: TrackedOperationId::new(),
                source_site: site.into(),
                kind: if i % 3 == 0 {
                    Kind::DatabaseWrite
                } else {
                    Kind::ExternalCall
                },
                target_summary: "erp.postOrder".into(),
                status,
                retry_count: (i % 4) as u32,
                last_error: (status != S::Delivered).then(|| "HTTP 503 from erp".into()),
                provenance: "line1/orders".into(),
                created_at_utc: unix_ms_to_utc(now - 60_000 + i as i64 % 60_000),
                updated_at_utc: unix_ms_to_utc(now),
                terminal_at_utc: status.is_terminal().then(|| unix_ms_to_utc(now)),
                revision: 2,
                change_seq: first_seq + i as u64,
            }
        })
        .collect()
}
