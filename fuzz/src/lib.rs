//! What the fuzz targets share: a real central (SQLite, in this process,
//! built once per fuzzing process) and a real site, each with its own
//! tokio runtime that the targets block on.

pub mod world {
    use std::{net::SocketAddr, sync::Arc, time::Duration};

    use sitelink_central::{
        configuration_database::{Database, Role},
        Central, CentralConfig,
    };
    use sitelink_commons::SiteName;
    use tokio_util::sync::CancellationToken;

    /// The runtime a target blocks on (two workers, as on CI's machines).
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// A running central node and the credentials the targets use.
    pub struct CentralWorld {
        pub rt: tokio::runtime::Runtime,
        pub app: axum::Router,
        pub link: SocketAddr,
        /// `Basic …` of user `admin`.
        pub basic: String,
        /// `Bearer …` of an API token of `admin`.
        pub bearer: String,
        /// `sitelink_session=…` of a browser session of `admin`.
        pub cookie: String,
        pub csrf: String,
        /// The token of site `fuzz-site`.
        pub site_token: String,
        _dir: tempfile::TempDir,
    }

    impl CentralWorld {
        pub fn start() -> Self {
            let rt = runtime();
            let dir = tempfile::tempdir().expect("a temporary directory");
            let url = format!("sqlite://{}", dir.path().join("central.db").display());
            let (app, link, bearer, cookie, csrf, site_token) = rt.block_on(async {
                let db = Database::connect(&url).await.expect("central's database");
                let site_token = db
                    .sites()
                    .add(&SiteName::parse("fuzz-site").expect("a name"))
                    .await
                    .expect("a site")
                    .as_str()
                    .to_owned();
                sitelink_central::authentication::add_user(
                    &db,
                    "admin",
                    "fuzz password",
                    Role::Admin,
                )
                .await
                .expect("a user");
                let (token, _) = db.users().issue_token("admin", Some("fuzz")).await.expect("a token");
                let (secret, csrf) = db.ui_sessions().open("admin").await.expect("a session");
                db.pool().close().await;
                let cfg = CentralConfig::parse(
                    &format!(
                        "[central]\ndatabase_url = \"{url}\"\nlink_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\n\
                         command_timeout_ms = 100\nlink_admit_per_second = 100000\nlink_admit_burst = 100000\n"
                    ),
                    dir.path(),
                )
                .expect("a configuration");
                let central = Central::build(cfg).await.expect("central");
                let app = central.http_app();
                let link = central.link_addr();
                let cluster = central.cluster_handle();
                let cancel = CancellationToken::new();
                tokio::spawn(central.run(cancel));
                while !cluster.is_active() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (
                    app,
                    link,
                    format!("Bearer {token}"),
                    format!("sitelink_session={secret}"),
                    csrf,
                    site_token,
                )
            });
            Self {
                rt,
                app,
                link,
                basic: "Basic YWRtaW46ZnV6eiBwYXNzd29yZA==".into(), // admin:fuzz password
                bearer,
                cookie,
                csrf,
                site_token,
                _dir: dir,
            }
        }
    }

    /// A site (not linked to any central) with an external system on a
    /// closed port, a SQLite target database and a notification list.
    pub struct SiteWorld {
        pub rt: tokio::runtime::Runtime,
        pub runtime: Arc<sitelink_site::site_runtime::ScriptRuntime>,
        _site: sitelink_site::Site,
        _dir: tempfile::TempDir,
    }

    impl SiteWorld {
        pub fn start() -> Self {
            let rt = runtime();
            let dir = tempfile::tempdir().expect("a temporary directory");
            let closed = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a port");
            let target = dir.path().join("plant.db");
            let cfg = sitelink_site::SiteConfig::parse(
                &format!(
                    "[site]\nname = \"fuzz-site\"\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
                     [central]\naddresses = [\"http://127.0.0.1:9\"]\ntoken = \"unused\"\n\
                     [external_systems.erp]\nbase_url = \"http://{closed}\"\ntimeout_ms = 200\n\
                     methods.postOrder = {{ http_method = \"POST\", path = \"/orders\" }}\n\
                     [databases.plant]\nurl = \"sqlite://{}\"\n\
                     init = [\"CREATE TABLE IF NOT EXISTS t(v)\"]\n",
                    target.display()
                ),
                dir.path(),
            )
            .expect("a configuration");
            let site = rt
                .block_on(sitelink_site::Site::build(cfg))
                .expect("a site");
            let runtime = site.runtime().clone();
            Self {
                rt,
                runtime,
                _site: site,
                _dir: dir,
            }
        }
    }
}
