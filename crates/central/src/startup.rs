//! Building and running central: [`Central::build`] opens the database and
//! binds the link listener (port 0 works: tests read [`Central::link_addr`]);
//! [`Central::run`] serves until the cancellation token fires.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sitelink_commons::contracts::v1::site_link_server::SiteLinkServer;
use tokio_util::sync::CancellationToken;

use crate::{
    communication::{LinkService, LinkSettings, Sessions},
    config::CentralConfig,
    configuration_database::Database,
};

/// Largest message accepted on the link; a bigger one closes that stream.
pub const MAX_LINK_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub struct Central {
    db: Database,
    sessions: Arc<Sessions>,
    settings: LinkSettings,
    link_listener: tokio::net::TcpListener,
    link_addr: SocketAddr,
}

impl Central {
    pub async fn build(config: CentralConfig) -> anyhow::Result<Self> {
        let c = &config.central;
        let db = Database::connect(&c.database_url).await?;
        let link_listener = tokio::net::TcpListener::bind(c.link_bind)
            .await
            .with_context(|| format!("binding the site link to {}", c.link_bind))?;
        let link_addr = link_listener.local_addr()?;
        let settings = LinkSettings {
            reconcile_page: c.reconcile_page,
            reconcile_interval: Duration::from_secs(c.reconcile_interval_seconds.max(1)),
            command_timeout: Duration::from_millis(c.command_timeout_ms),
        };
        Ok(Self {
            db,
            sessions: Arc::new(Sessions::default()),
            settings,
            link_listener,
            link_addr,
        })
    }

    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub fn settings(&self) -> LinkSettings {
        self.settings
    }

    /// Serves the site link until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let service = SiteLinkServer::new(LinkService::new(
            self.db.clone(),
            self.sessions.clone(),
            self.settings,
        ))
        .max_decoding_message_size(MAX_LINK_MESSAGE_BYTES);
        tracing::info!(link = %self.link_addr, "central running");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.link_listener);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, cancel.cancelled())
            .await
            .context("site link server")?;
        tracing::info!("central stopped");
        Ok(())
    }
}
