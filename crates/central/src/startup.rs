//! Building and running central: [`Central::build`] opens the database and
//! binds the link and HTTP listeners (port 0 works: tests read
//! [`Central::link_addr`] and [`Central::http_addr`]); [`Central::run`]
//! serves both until the cancellation token fires.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sitelink_commons::contracts::v1::site_link_server::SiteLinkServer;
use tokio_util::sync::CancellationToken;

use crate::{
    authentication::{Authenticator, ThrottleSettings},
    communication::{LinkService, LinkSettings, LinkStats},
    config::CentralConfig,
    configuration_database::{Database, Role},
    notification_outbox::{Dispatcher, Outbox},
    rest_api::{self, ApiState, KpiSettings},
    site_call_audit::{AuditSettings, SiteCallAudit, SiteCallAuditActor},
};

/// Largest message accepted on the link; a bigger one closes that stream.
pub const MAX_LINK_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub struct Central {
    db: Database,
    /// The Site Call Audit actor, run by [`Central::run`]; its handle.
    actor: SiteCallAuditActor,
    audit: SiteCallAudit,
    /// The Notification Outbox's dispatcher, run by [`Central::run`]; its
    /// handle.
    dispatcher: Dispatcher,
    outbox: Outbox,
    stats: Arc<LinkStats>,
    settings: LinkSettings,
    command_timeout: Duration,
    kpis: KpiSettings,
    auth: Authenticator,
    metrics_token: Option<String>,
    /// The link's TLS identity, read at build so a bad file fails the start.
    tls: Option<tonic::transport::Identity>,
    link_listener: tokio::net::TcpListener,
    link_addr: SocketAddr,
    http_listener: tokio::net::TcpListener,
    http_addr: SocketAddr,
}

impl Central {
    pub async fn build(config: CentralConfig) -> anyhow::Result<Self> {
        let c = &config.central;
        let db = Database::connect(&c.database_url).await?;
        // The first admin, for automation: only while there is no user.
        if let Ok(password) = std::env::var("SITELINK_ADMIN_PASSWORD") {
            if db.users().count().await? == 0 {
                db.users().add("admin", &password, Role::Admin).await?;
                tracing::info!("created user admin from SITELINK_ADMIN_PASSWORD");
            } else {
                tracing::warn!(
                    "SITELINK_ADMIN_PASSWORD ignored: users exist already (it only creates the first \
                     admin); change passwords with `sitelink central user ...`"
                );
            }
        }
        let tls = match &c.tls {
            None => None,
            Some(files) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                Some(tonic::transport::Identity::from_pem(
                    read(&files.cert_file)?,
                    read(&files.key_file)?,
                ))
            }
        };
        let link_listener = tokio::net::TcpListener::bind(c.link_bind)
            .await
            .with_context(|| format!("binding the site link to {}", c.link_bind))?;
        let http_listener = tokio::net::TcpListener::bind(c.http_bind)
            .await
            .with_context(|| format!("binding the HTTP API to {}", c.http_bind))?;
        let (actor, audit) = SiteCallAuditActor::new(
            db.clone(),
            AuditSettings {
                reconcile_interval: Duration::from_secs(c.reconcile_interval_seconds.max(1)),
                retention_days: c.retention_days,
                ..AuditSettings::default()
            },
        );
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
        Ok(Self {
            actor,
            audit,
            dispatcher,
            outbox,
            stats: Arc::default(),
            settings: LinkSettings {
                reconcile_page: c.reconcile_page,
            },
            command_timeout: Duration::from_millis(c.command_timeout_ms),
            kpis: KpiSettings {
                interval_seconds: c.kpi_interval_seconds,
                stuck_threshold_seconds: c.stuck_threshold_seconds,
            },
            auth,
            metrics_token: c.metrics_token.clone(),
            tls,
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

    /// Serves the site link and the HTTP API until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let service = SiteLinkServer::new(LinkService::new(
            self.db.clone(),
            self.audit.clone(),
            self.outbox.clone(),
            self.stats.clone(),
            self.settings,
        ))
        .max_decoding_message_size(MAX_LINK_MESSAGE_BYTES);
        tracing::info!(link = %self.link_addr, http = %self.http_addr, "central running");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.link_listener);
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = self.tls {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .context("TLS configuration of the site link")?;
        }
        let link = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
        let api = rest_api::router(ApiState {
            db: self.db.clone(),
            audit: self.audit.clone(),
            outbox: self.outbox.clone(),
            stats: self.stats.clone(),
            command_timeout: self.command_timeout,
            kpis: self.kpis,
            auth: self.auth,
            metrics_token: self.metrics_token,
        });
        let http = axum::serve(
            self.http_listener,
            api.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(cancel.clone().cancelled_owned());
        let actor = self.actor.run(cancel.clone());
        let dispatcher = self.dispatcher.run(cancel.clone());
        let (link, http, (), ()) = tokio::join!(
            link,
            std::future::IntoFuture::into_future(http),
            actor,
            dispatcher
        );
        link.context("site link server")?;
        http.context("HTTP API")?;
        tracing::info!("central stopped");
        Ok(())
    }
}
