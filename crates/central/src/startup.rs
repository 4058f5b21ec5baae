//! Building and running central: [`Central::build`] opens the database and
//! binds the link and HTTP listeners (port 0 works: tests read
//! [`Central::link_addr`] and [`Central::http_addr`]); [`Central::run`]
//! serves both until the cancellation token fires.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sitelink_commons::contracts::v1::site_link_server::SiteLinkServer;
use sitelink_net::{http_server, ConnectionLimits, GuardedListener, PerAddress};
use tokio_util::sync::CancellationToken;

use crate::{
    authentication::{Authenticator, ThrottleSettings},
    central_ui::{self, UiState},
    cluster::{ClusterHandle, ClusterSettings, Elector, Leadership, Term},
    communication::{LinkService, LinkSettings, LinkStats},
    config::CentralConfig,
    configuration_database::{Database, Role},
    health_monitoring::{HealthMonitor, KpiSettings},
    notification_outbox::{Dispatcher, Outbox},
    operator_actions::{bulk::BulkRunner, OperatorActions},
    rest_api::{self, ApiState},
    site_call_audit::{AuditSettings, SiteCallAudit, SiteCallAuditActor},
};

/// Largest message accepted on the link; a bigger one closes that stream.
pub const MAX_LINK_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub struct Central {
    db: Database,
    /// The Site Call Audit actor's handle; [`Central::run`] starts an actor
    /// behind it for each term this node is active.
    audit: SiteCallAudit,
    audit_settings: AuditSettings,
    /// The Notification Outbox's dispatcher, run by [`Central::run`] while
    /// this node is active; its
    /// handle.
    dispatcher: Dispatcher,
    outbox: Outbox,
    stats: Arc<LinkStats>,
    settings: LinkSettings,
    command_timeout: Duration,
    /// Wakes the bulk runner (this node's, while active) when an operator
    /// starts a bulk action here.
    bulk_wake: Arc<tokio::sync::Notify>,
    kpis: KpiSettings,
    auth: Authenticator,
    metrics_token: Option<String>,
    ui_idle_timeout: Duration,
    /// The link's TLS identity, read at build so a bad file fails the start.
    tls: Option<tonic::transport::Identity>,
    /// The HTTP port's TLS, likewise.
    http_tls: Option<tokio_rustls::TlsAcceptor>,
    link_listener: GuardedListener,
    link_addr: SocketAddr,
    http_listener: GuardedListener,
    http_addr: SocketAddr,
    link_keepalive: Duration,
    /// With PostgreSQL: this node's lease settings (an active/standby pair).
    cluster: Option<ClusterSettings>,
    /// Whether this node is active, and its sender (the elector's).
    leadership: (
        tokio::sync::watch::Sender<Leadership>,
        tokio::sync::watch::Receiver<Leadership>,
    ),
    database_url: String,
    /// With SQLite: the lock that makes this the only node on the file,
    /// held until the node stops.
    node_lock: Option<std::fs::File>,
}

impl Central {
    pub async fn build(config: CentralConfig) -> anyhow::Result<Self> {
        let c = &config.central;
        let node_lock = sqlite_node_lock(&c.database_url)?;
        let db = Database::connect(&c.database_url).await?;
        // The first admin, for automation: only while there is no user.
        if let Ok(password) = std::env::var("SITELINK_ADMIN_PASSWORD") {
            if db.users().count().await? == 0 {
                crate::authentication::add_user(&db, "admin", &password, Role::Admin).await?;
                tracing::info!("created user admin from SITELINK_ADMIN_PASSWORD");
            } else {
                tracing::warn!(
                    "SITELINK_ADMIN_PASSWORD ignored: users exist already (it only creates the first \
                     admin); change passwords with `sitelink central user ...`"
                );
            }
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        let tls = match &c.tls {
            None => None,
            Some(files) => Some(tonic::transport::Identity::from_pem(
                read(&files.cert_file)?,
                read(&files.key_file)?,
            )),
        };
        let http_tls = c
            .http_tls
            .as_ref()
            .map(|files| tls_acceptor(&read(&files.cert_file)?, &read(&files.key_file)?))
            .transpose()
            .context("central.http_tls")?;
        warn_if_exposed_in_clear("site link", c.link_bind, tls.is_some());
        warn_if_exposed_in_clear("HTTP", c.http_bind, http_tls.is_some());
        let setup_timeout = Duration::from_millis(c.setup_timeout_ms);
        let link_listener = GuardedListener::new(
            tokio::net::TcpListener::bind(c.link_bind)
                .await
                .with_context(|| format!("binding the site link to {}", c.link_bind))?,
            ConnectionLimits {
                max_connections: c.link_max_connections,
                max_per_address: c.link_unauthenticated_per_address,
                per_address: PerAddress::UntilEstablished,
                setup_timeout,
            },
            "link",
        );
        let http_listener = GuardedListener::new(
            tokio::net::TcpListener::bind(c.http_bind)
                .await
                .with_context(|| format!("binding the HTTP API to {}", c.http_bind))?,
            ConnectionLimits {
                max_connections: c.http_max_connections,
                max_per_address: c.http_max_connections_per_address,
                per_address: PerAddress::WhileOpen,
                setup_timeout,
            },
            "http",
        );
        let audit_settings = AuditSettings {
            reconcile_interval: Duration::from_secs(c.reconcile_interval_seconds.max(1)),
            retention_days: c.retention_days,
            ui_idle: Duration::from_secs(c.ui_idle_timeout_minutes * 60),
            ..AuditSettings::default()
        };
        // Its actor starts with each term this node is active (run).
        let audit = SiteCallAudit::without_actor();
        let (dispatcher, outbox) =
            Dispatcher::new(db.clone(), &config).context("the Notification Outbox")?;
        let auth = Authenticator::new(
            db.clone(),
            c.password_checks_at_once,
            ThrottleSettings {
                free_failures: c.login_free_failures,
                max_delay: Duration::from_secs(c.login_max_delay_seconds),
            },
        )
        .await?;
        let cluster =
            (db.backend() == crate::configuration_database::Backend::Postgres).then(|| {
                let k = &config.cluster;
                ClusterSettings {
                    node: k
                        .node_name
                        .clone()
                        .unwrap_or_else(|| default_node_name(c.link_bind)),
                    ttl: Duration::from_millis(k.lease_ttl_ms),
                    renew_every: Duration::from_millis(k.renew_every_ms),
                    step_down_after: Duration::from_millis(k.step_down_after_ms),
                    standby_poll: Duration::from_millis(k.standby_poll_ms),
                }
            });
        // Who is active: with PostgreSQL the elector decides (Standby until
        // it acquires); otherwise this node, always.
        let leadership = tokio::sync::watch::channel(match &cluster {
            Some(_) => Leadership::Standby,
            None => Leadership::Active(Term {
                holder: "single node".into(),
                epoch: 0,
            }),
        });
        let admit = crate::communication::AdmissionRate {
            per_second: c.link_admit_per_second,
            burst: c.link_admit_burst,
        };
        Ok(Self {
            audit,
            audit_settings,
            dispatcher,
            outbox,
            stats: Arc::new(LinkStats {
                admit,
                ..LinkStats::default()
            }),
            settings: LinkSettings {
                reconcile_page: c.reconcile_page,
                admit,
            },
            command_timeout: Duration::from_millis(c.command_timeout_ms),
            bulk_wake: Arc::default(),
            kpis: KpiSettings {
                interval_seconds: c.kpi_interval_seconds,
                stuck_threshold_seconds: c.stuck_threshold_seconds,
            },
            auth,
            metrics_token: c.metrics_token.clone(),
            ui_idle_timeout: Duration::from_secs(c.ui_idle_timeout_minutes * 60),
            tls,
            http_tls,
            link_keepalive: Duration::from_millis(c.link_keepalive_ms),
            node_lock,
            cluster,
            leadership,
            database_url: c.database_url.clone(),
            link_addr: link_listener.local_addr()?,
            link_listener,
            http_addr: http_listener.local_addr()?,
            http_listener,
            db,
        })
    }

    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// What the link transferred (also in `/metrics`).
    pub fn link_stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }

    /// The Site Call Audit actor's handle (who is online, relays).
    pub fn audit(&self) -> &SiteCallAudit {
        &self.audit
    }

    /// This node's view of the cluster (who is active, the lease).
    pub fn cluster_handle(&self) -> ClusterHandle {
        ClusterHandle::new(
            self.db.clone(),
            self.cluster
                .as_ref()
                .map_or_else(|| default_node_name(self.link_addr), |c| c.node.clone()),
            self.http_addr.to_string(),
            self.cluster.is_some(),
            self.leadership.1.clone(),
        )
    }

    /// The HTTP port's application: the web UI's pages and the REST API
    /// on one router, every answer with the security headers. (Tests drive
    /// it in-process; it answers once [`Central::run`] runs, which owns the
    /// Site Call Audit actor the pages ask who is online.)
    pub fn http_app(&self) -> axum::Router {
        let health = HealthMonitor::new(
            self.db.clone(),
            self.audit.clone(),
            self.stats.clone(),
            self.kpis,
            self.cluster_handle(),
        );
        let actions = OperatorActions::new(
            self.db.clone(),
            self.audit.clone(),
            self.outbox.clone(),
            self.command_timeout,
            self.cluster_handle(),
            self.bulk_wake.clone(),
        );
        let pages = central_ui::router(UiState {
            db: self.db.clone(),
            health: health.clone(),
            actions: actions.clone(),
            auth: self.auth.clone(),
            tls: self.http_tls.is_some(),
            idle_timeout: self.ui_idle_timeout,
            link_port: self.link_addr.port(),
            link_tls: self.tls.is_some(),
        });
        let api = rest_api::router(ApiState {
            db: self.db.clone(),
            health,
            actions,
            auth: self.auth.clone(),
            metrics_token: self.metrics_token.clone(),
        });
        // The pages and the REST API share the port; the REST router's
        // fallback answers what neither routes. Every answer gets the
        // security headers.
        pages
            .merge(api)
            .layer(axum::middleware::from_fn(central_ui::security_headers))
    }

    /// Serves the site link and the HTTP API until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let (leadership_tx, leadership) = self.leadership.clone();
        let elector = self.cluster.as_ref().map(|settings| {
            Elector::new(
                self.db.clone(),
                &self.database_url,
                settings.clone(),
                self.http_addr.to_string(),
                leadership_tx.clone(),
            )
        });
        let service = SiteLinkServer::new(LinkService::new(
            self.db.clone(),
            self.audit.clone(),
            self.outbox.clone(),
            self.stats.clone(),
            self.settings,
            leadership.clone(),
        ))
        .max_decoding_message_size(MAX_LINK_MESSAGE_BYTES);
        tracing::info!(link = %self.link_addr, http = %self.http_addr, "central running");
        let app = self.http_app();
        let incoming = self.link_listener.into_stream();
        // Keepalive pings: a silent link (a cut cable, a paused peer) is
        // closed within two keepalive periods, and the site shows offline.
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.link_keepalive))
            .http2_keepalive_timeout(Some(self.link_keepalive));
        if let Some(identity) = self.tls {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .context("TLS configuration of the site link")?;
        }
        let link = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
        let http = http_server::serve(self.http_listener, app, self.http_tls, cancel.clone());
        let (idle_tx, idle) = tokio::sync::watch::channel(true);
        let singletons = run_singletons(
            leadership,
            idle_tx,
            Singletons {
                db: self.db.clone(),
                audit: self.audit.clone(),
                audit_settings: self.audit_settings,
                dispatcher: self.dispatcher.clone(),
                cluster: self
                    .cluster
                    .as_ref()
                    .map(|c| (self.database_url.clone(), c.node.clone())),
                command_timeout: self.command_timeout,
                bulk_wake: self.bulk_wake.clone(),
            },
            cancel.clone(),
        );
        let elector = async {
            if let Some(e) = elector {
                e.run(cancel.clone(), idle).await;
            }
        };
        let (link, http, (), ()) = tokio::join!(link, http, singletons, elector);
        drop(self.node_lock);
        link.context("site link server")?;
        http.context("HTTP API")?;
        tracing::info!("central stopped");
        Ok(())
    }
}

/// Runs the singletons — the Site Call Audit actor, the outbox
/// dispatcher (each with its purge) and the bulk runner — for every term this node is active:
/// a fresh actor behind the shared handle and the dispatcher on a database
/// handle fenced to the term; when the term ends (step-down, stop), both
/// stop before the next term can start here.
/// What [`run_singletons`] starts for each term.
struct Singletons {
    db: Database,
    audit: SiteCallAudit,
    audit_settings: AuditSettings,
    dispatcher: Dispatcher,
    /// With a lease: the database URL (to LISTEN) and this node's name.
    cluster: Option<(String, String)>,
    command_timeout: Duration,
    /// Wakes the bulk runner when an action starts on this node.
    bulk_wake: Arc<tokio::sync::Notify>,
}

async fn run_singletons(
    mut leadership: tokio::sync::watch::Receiver<Leadership>,
    idle: tokio::sync::watch::Sender<bool>,
    s: Singletons,
    cancel: CancellationToken,
) {
    let Singletons {
        db,
        audit,
        audit_settings,
        dispatcher,
        cluster,
        command_timeout,
        bulk_wake,
    } = s;
    let fenced = cluster.is_some();
    loop {
        let term = loop {
            if let Leadership::Active(term) = leadership.borrow_and_update().clone() {
                break term;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = leadership.changed() => if changed.is_err() { return },
            }
        };
        let db = if fenced {
            db.fenced(term.clone())
        } else {
            db.clone()
        };
        let _ = idle.send(false);
        let term_cancel = cancel.child_token();
        let actor = SiteCallAuditActor::new_for(&audit, db.clone(), audit_settings);
        let dispatcher = dispatcher.with_database(db.clone());
        let watch_term = async {
            loop {
                tokio::select! {
                    _ = term_cancel.cancelled() => return,
                    changed = leadership.changed() => {
                        if changed.is_err() || !matches!(&*leadership.borrow(), Leadership::Active(t) if *t == term) {
                            term_cancel.cancel();
                            return;
                        }
                    }
                }
            }
        };
        // Forwarded Retry/Discard from standby nodes.
        let forwarded = async {
            if let Some((url, node)) = &cluster {
                crate::operator_actions::relay::serve(
                    db.clone(),
                    url.clone(),
                    node.clone(),
                    audit.clone(),
                    command_timeout,
                    term_cancel.clone(),
                )
                .await;
            }
        };
        let bulk = BulkRunner::new(
            db.clone(),
            audit.clone(),
            bulk_wake.clone(),
            command_timeout,
        );
        tokio::join!(
            actor.run(term_cancel.clone()),
            dispatcher.run(term_cancel.clone()),
            bulk.run(term_cancel.clone()),
            watch_term,
            forwarded
        );
        let _ = idle.send(true);
        if cancel.is_cancelled() {
            return;
        }
        tracing::info!(
            epoch = term.epoch,
            "singletons stopped: this node is standby"
        );
    }
}

/// A node's default name: the host's name and the link port.
fn default_node_name(link: SocketAddr) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "central".into());
    format!("{host}:{}", link.port())
}

/// With SQLite, one central node per database file: an exclusive lock on
/// `<file>.node-lock`, held while the node runs, so a second node on the
/// same file is refused at start instead of becoming a second writer of
/// the singletons' data. (The CLI's `central site …`/`user …` do not take
/// it: SQLite itself serializes their few writes.) PostgreSQL needs none.
fn sqlite_node_lock(database_url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(path) = database_url.strip_prefix("sqlite://") else {
        return Ok(None);
    };
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let lock_path = format!("{path}.node-lock");
    if let Some(dir) = std::path::Path::new(&lock_path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening the node lock {lock_path}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another central node is running on the SQLite database {path} (it holds {lock_path}): \
             with SQLite one node runs at a time; two nodes need PostgreSQL (README: two central nodes)"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {lock_path}"))
        }
    }
}

/// A rustls server configuration (ring) from a PEM certificate chain and key.
fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate file (PEM)")?;
    anyhow::ensure!(
        !certs.is_empty(),
        "the certificate file holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the key file (PEM)")?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A loud warning when a port listens beyond loopback without TLS: what
/// crosses it (site tokens, passwords) can be read on the way.
fn warn_if_exposed_in_clear(port: &str, bind: SocketAddr, tls: bool) {
    if !tls && !bind.ip().is_loopback() {
        tracing::warn!(
            %bind,
            "the {port} port listens beyond loopback WITHOUT TLS: tokens and passwords cross \
             the network in clear; configure TLS for it (README, security model) or bind it to loopback"
        );
    }
}
