//! Building and running a site: [`Site::build`] wires the components from a
//! [`SiteConfig`] and binds the admin listener (port 0 works: tests read
//! [`Site::admin_addr`]); [`Site::run`] owns the background loops until the
//! cancellation token fires.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::{
    admin_api,
    central_link::{CentralConfig, CentralLink},
    config::SiteConfig,
    external_system_gateway::{
        database::Databases, http::HttpSystems, recovery::RecoveryWatch, Gateway,
    },
    notification_service::{NotificationService, StatusQueries},
    site_runtime::ScriptRuntime,
    store_and_forward::{now_ms, Engine, RetryWorker},
};

pub struct Site {
    engine: Engine,
    gateway: Arc<Gateway>,
    runtime: Arc<ScriptRuntime>,
    listener: tokio::net::TcpListener,
    admin_guard: admin_api::AdminGuard,
    admin_addr: SocketAddr,
    /// The link's configuration and its end of `Notify.Status` questions.
    central: Option<(CentralConfig, Option<StatusQueries>)>,
}

impl Site {
    pub async fn build(config: SiteConfig) -> anyhow::Result<Self> {
        let engine = Engine::open(
            &config.buffer_db_path(),
            config.site.name.as_str(),
            config.store_and_forward,
        )
        .await?;
        let http = HttpSystems::new(&config.external_systems).context("external systems")?;
        let databases = Databases::new(&config.databases).context("database connections")?;
        let paces = config
            .external_systems
            .iter()
            .filter_map(|(name, s)| {
                s.replay_parked_on_recovery
                    .map(|p| ((sitelink_commons::Kind::ExternalCall, name.clone()), p))
            })
            .chain(config.databases.iter().filter_map(|(name, d)| {
                d.replay_parked_on_recovery
                    .map(|p| ((sitelink_commons::Kind::DatabaseWrite, name.clone()), p))
            }))
            .collect();
        let gateway = Gateway::new(http, databases, engine.clone(), RecoveryWatch::new(paces));
        let (notifications, status_queries) = NotificationService::new(
            engine.clone(),
            config.central.is_some(),
            Duration::from_millis(
                config
                    .central
                    .as_ref()
                    .map_or(2_000, |c| c.status_timeout_ms),
            ),
        );
        let runtime = ScriptRuntime::new(
            &config.scripts,
            config.limits,
            gateway.clone(),
            Arc::new(notifications),
        )?;
        let listener = tokio::net::TcpListener::bind(config.admin.bind)
            .await
            .with_context(|| format!("binding the admin API to {}", config.admin.bind))?;
        let admin_addr = listener.local_addr()?;
        Ok(Self {
            engine,
            gateway,
            runtime,
            listener,
            admin_addr,
            admin_guard: admin_api::AdminGuard {
                allowed_hosts: config.admin.allowed_hosts.clone(),
                token: config.admin.token.clone(),
            },
            central: config.central.map(|c| (c, status_queries)),
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn runtime(&self) -> &Arc<ScriptRuntime> {
        &self.runtime
    }

    /// Runs the admin API, the retry worker, the script schedules and the
    /// purge until `cancel` fires, then lets each finish its current step.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        tasks
            .spawn(RetryWorker::new(self.engine.clone(), self.gateway.clone()).run(cancel.clone()));
        tasks.spawn(self.runtime.clone().run_schedules(cancel.clone()));
        tasks.spawn(purge_loop(self.engine.clone(), cancel.clone()));
        if let Some((central, queries)) = self.central {
            tasks.spawn(
                CentralLink::new(
                    self.engine.clone(),
                    central,
                    queries,
                    self.gateway.recovery().subscribe(),
                )
                .run(cancel.clone()),
            );
        }
        let app = admin_api::router(self.engine.clone(), self.runtime.clone(), self.admin_guard);
        tracing::info!(admin = %self.admin_addr, site = self.engine.site(), "site running");
        let listener = sitelink_net::GuardedListener::new(self.listener, ADMIN_LIMITS, "admin");
        let served = sitelink_net::http_server::serve(listener, app, None, cancel.clone())
            .await
            .context("admin API");
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
        tracing::info!("site stopped");
        served
    }
}

/// The admin API's connection caps (in all, and per client address), and
/// the time a connection has for its request headers, then its body (and
/// may stay idle between requests): a local operator or a supervisor needs
/// a handful, and nothing may hold them for ever.
const ADMIN_LIMITS: sitelink_net::ConnectionLimits = sitelink_net::ConnectionLimits {
    max_connections: 64,
    max_per_address: 16,
    per_address: sitelink_net::PerAddress::WhileOpen,
    setup_timeout: Duration::from_secs(5),
};

/// Owns the purge schedule (SPEC §4.1).
async fn purge_loop(engine: Engine, cancel: CancellationToken) {
    let every = Duration::from_secs(engine.settings().purge_interval_seconds.max(1));
    loop {
        match engine.purge(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged terminal tracking rows"),
            Err(e) => tracing::error!(error = %e, "purge failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
