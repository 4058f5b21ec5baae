//! Cluster Infrastructure (SPEC §2 component 12, §5.6): with PostgreSQL,
//! several central nodes share one database and exactly one is active: it
//! alone accepts site streams and runs the singletons (the Site Call Audit
//! actor, the outbox dispatcher, the purges). The others are standby: they
//! serve the web UI and the REST API, refuse site streams (the site tries
//! its next address), and take over when the active node's lease expires or
//! is released.
//!
//! Main types: [`Elector`] (one per node: acquires, renews, releases the
//! lease in `configuration_database::leader_lease`; publishes [`Leadership`] on a watch channel) and
//! [`ClusterSettings`].
//!
//! Invariants:
//! - At most one node holds an unexpired lease: acquiring needs an expired
//!   one, in one UPDATE, on the database's clock.
//! - An active node that has not renewed for `step_down_after` (its own
//!   monotonic clock; shorter than the lease's TTL) steps down before its
//!   lease can expire, so it stops before a standby can start.
//! - Whatever a stale node still does is fenced: each singleton write
//!   transaction checks the term (`lease::check`, `FOR SHARE`), and the
//!   dispatcher checks it before every round of sends.
//! - With SQLite there is one node (a lock file refuses a second), always
//!   active, without a lease.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::configuration_database::{leader_lease as lease, Database};
pub use lease::Term;

/// Timing of the lease (defaults: TTL 10 s, renew every 2 s, step down
/// after 6 s without a renewal, standby tries every 1 s).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// This node's name in the lease and on the cluster page.
    pub node: String,
    pub ttl: Duration,
    pub renew_every: Duration,
    pub step_down_after: Duration,
    pub standby_poll: Duration,
}

/// What this node is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    Standby,
    /// Active in this term (epoch 0: a single node without a lease).
    Active(Term),
}

impl Leadership {
    pub fn is_active(&self) -> bool {
        matches!(self, Leadership::Active(_))
    }
}

/// The connection lease writes run on: this node's own, not the pool's.
///
/// A lease write cut off by a timeout (a renewal that waited past the step
/// down) must not go back to a pool half done: its transaction — or its
/// wait for the exclusive lease lock — would live on in the server, on a
/// connection the pool hands to other queries, and hold the lease lock
/// against every node. A chaos run saw exactly that: a standby that stayed
/// standby for a minute after the active node was killed. So the
/// connection of a call that failed or was cut off is dropped: its
/// session ends, and the server releases whatever it held or waited for.
struct LeaseConnection {
    url: String,
    conn: Option<sqlx::AnyConnection>,
}

impl LeaseConnection {
    /// Runs `call` on the connection (opening it first if needed) within
    /// `within`; on an error or the timeout the connection is dropped.
    async fn run<T>(
        &mut self,
        within: Duration,
        call: impl for<'c> FnOnce(
            &'c mut sqlx::AnyConnection,
        ) -> futures::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, String> {
        let url = &self.url;
        let slot = &mut self.conn;
        let outcome = tokio::time::timeout(within, async {
            if slot.is_none() {
                *slot = Some(crate::configuration_database::dedicated_connection(url).await?);
            }
            call(slot.as_mut().expect("opened above")).await
        })
        .await;
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e.to_string())
            }
            Err(_) => {
                self.conn = None;
                Err(format!("no answer within {within:?}"))
            }
        }
    }
}

/// Acquires, renews and releases the lease for one node.
pub struct Elector {
    db: Database,
    url: String,
    settings: ClusterSettings,
    /// Where this node's HTTP port is (for the cluster page).
    http_address: String,
    tx: watch::Sender<Leadership>,
}

impl Elector {
    /// The elector of a node on PostgreSQL at `url`, publishing on `tx`
    /// (which starts as Standby).
    pub fn new(
        db: Database,
        url: &str,
        settings: ClusterSettings,
        http_address: String,
        tx: watch::Sender<Leadership>,
    ) -> Self {
        Self {
            db,
            url: url.to_owned(),
            settings,
            http_address,
            tx,
        }
    }

    /// Two active nodes cannot happen (one unexpired lease); if another
    /// node reported itself active within a lease's time anyway, say so
    /// loudly.
    async fn no_other_active(&self, epoch: i64) {
        let Ok(nodes) = lease::nodes(self.db.pool()).await else {
            return;
        };
        let Ok(acquired) = lease::state(self.db.pool()).await.map(|s| s.acquired_at_ms) else {
            return;
        };
        // A node that reported "active" after this term began (the old
        // holder's last report is older).
        for n in nodes {
            if n.name != self.settings.node && n.role == "active" && n.seen_ms > acquired {
                tracing::error!(
                    node = %self.settings.node,
                    other = %n.name,
                    epoch,
                    "another central node reported itself active while this one holds the lease"
                );
            }
        }
    }

    async fn report(&self, role: &str) {
        if let Err(e) = lease::report_node(
            self.db.pool(),
            &self.settings.node,
            &self.http_address,
            role,
        )
        .await
        {
            tracing::debug!(error = %e, "reporting this node for the cluster page");
        }
    }

    /// Standby and active in turn until `cancel` fires; an active node
    /// releases the lease when it stops (the standby, listening, takes over
    /// in about a second).
    ///
    /// `idle` says whether this node's singletons are stopped: a graceful
    /// stop releases the lease only once they are (or after one TTL), so
    /// the sends and commits of the last round are recorded under this
    /// term instead of being fenced and repeated by the next node.
    pub async fn run(self, cancel: CancellationToken, mut idle: watch::Receiver<bool>) {
        let s = &self.settings;
        let ttl_ms = s.ttl.as_millis() as i64;
        let mut listener = match sqlx::postgres::PgListener::connect(&self.url).await {
            Ok(mut l) => match l.listen(lease::RELEASE_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for lease releases; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for lease releases; polling only");
                None
            }
        };
        let mut lease_conn = LeaseConnection {
            url: self.url.clone(),
            conn: None,
        };
        let node = s.node.clone();
        loop {
            // Standby: try now, then every poll period or at a release.
            let term = loop {
                self.report("standby").await;
                let node = node.clone();
                match lease_conn
                    .run(s.ttl, move |c| {
                        Box::pin(async move { lease::try_acquire(c, &node, ttl_ms).await })
                    })
                    .await
                {
                    Ok(Some(term)) => break term,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "trying the leader lease"),
                }
                let released = async {
                    match listener.as_mut() {
                        Some(l) => {
                            if l.recv().await.is_err() {
                                // The listener reconnects by itself; do not spin.
                                tokio::time::sleep(s.standby_poll).await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(s.standby_poll) => {}
                    _ = released => {}
                }
            };
            tracing::info!(node = %s.node, epoch = term.epoch, "this central node is active");
            let _ = self.tx.send(Leadership::Active(term.clone()));
            self.report("active").await;
            let mut renewed = Instant::now();
            let stopping = loop {
                tokio::select! {
                    _ = cancel.cancelled() => break true,
                    _ = tokio::time::sleep(s.renew_every) => {}
                }
                // A renewal may wait as long as this node may stay active
                // without one: cut off sooner, it would lose its place
                // behind the commits running (the lease lock's queue) and
                // a busy node would never renew.
                let t = term.clone();
                match lease_conn
                    .run(
                        s.step_down_after.saturating_sub(renewed.elapsed()),
                        move |c| Box::pin(async move { lease::renew(c, &t, ttl_ms).await }),
                    )
                    .await
                {
                    Ok(true) => {
                        renewed = Instant::now();
                        self.report("active").await;
                        self.no_other_active(term.epoch).await;
                    }
                    Ok(false) => {
                        tracing::error!(node = %s.node, epoch = term.epoch, "the leader lease was taken by another node: stepping down");
                        break false;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the leader lease"),
                }
                if renewed.elapsed() >= s.step_down_after {
                    tracing::error!(
                        node = %s.node,
                        epoch = term.epoch,
                        "no lease renewal for {:?}: stepping down before the lease can expire",
                        renewed.elapsed()
                    );
                    break false;
                }
            };
            let _ = self.tx.send(Leadership::Standby);
            self.report(if stopping { "stopped" } else { "standby" })
                .await;
            if stopping {
                let _ = tokio::time::timeout(s.ttl, idle.wait_for(|stopped| *stopped)).await;
                let t = term.clone();
                if let Err(e) = lease_conn
                    .run(s.ttl, move |c| {
                        Box::pin(async move { lease::release(c, &t).await })
                    })
                    .await
                {
                    tracing::warn!(error = %e, "releasing the leader lease (the standby waits for its expiry)");
                }
                tracing::info!(node = %s.node, epoch = term.epoch, "released the leader lease");
                return;
            }
        }
    }
}

/// What the cluster page and `/api/v1/cluster` show.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// `single` (SQLite: one node, no lease) or `active-standby`.
    pub mode: String,
    /// The node that answered.
    pub this_node: String,
    /// Whether the node that answered is active.
    pub this_node_active: bool,
    pub nodes: Vec<NodeView>,
    /// The lease (active-standby only).
    pub lease: Option<LeaseView>,
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    pub http_address: String,
    /// `active`, `standby` or `stopped`, as the node last reported.
    pub role: String,
    pub since_utc: String,
    pub last_seen_utc: String,
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// Terms so far: each acquisition adds one.
    pub epoch: i64,
    pub expires_at_utc: String,
    pub acquired_at_utc: String,
    /// At the latest change of holder: from the old holder's last renewal
    /// or release to the new holder's acquisition, in ms.
    pub last_failover_ms: Option<i64>,
}

/// This node's view of the cluster, for pages, the REST API and metrics.
#[derive(Clone)]
pub struct ClusterHandle {
    db: Database,
    node: String,
    http_address: String,
    clustered: bool,
    leadership: watch::Receiver<Leadership>,
}

impl ClusterHandle {
    pub fn new(
        db: Database,
        node: String,
        http_address: String,
        clustered: bool,
        leadership: watch::Receiver<Leadership>,
    ) -> Self {
        Self {
            db,
            node,
            http_address,
            clustered,
            leadership,
        }
    }

    pub fn is_active(&self) -> bool {
        self.leadership.borrow().is_active()
    }

    /// Several nodes share the database (PostgreSQL), so a standby exists.
    pub fn clustered(&self) -> bool {
        self.clustered
    }

    /// The nodes and the lease as the database has them now.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let utc = crate::configuration_database::rfc3339;
        if !self.clustered {
            return Ok(ClusterView {
                mode: "single".into(),
                this_node: self.node.clone(),
                this_node_active: true,
                nodes: vec![NodeView {
                    name: self.node.clone(),
                    http_address: self.http_address.clone(),
                    role: "active".into(),
                    since_utc: String::new(),
                    last_seen_utc: utc(crate::configuration_database::now_ms()),
                }],
                lease: None,
            });
        }
        let pool = self.db.pool();
        let l = lease::state(pool).await?;
        let nodes = lease::nodes(pool).await?;
        Ok(ClusterView {
            mode: "active-standby".into(),
            this_node: self.node.clone(),
            this_node_active: self.is_active(),
            nodes: nodes
                .into_iter()
                .map(|n| NodeView {
                    name: n.name,
                    http_address: n.http_address,
                    role: n.role,
                    since_utc: utc(n.since_ms),
                    last_seen_utc: utc(n.seen_ms),
                })
                .collect(),
            lease: Some(LeaseView {
                holder: l.holder.filter(|_| l.expires_at_ms > l.now_ms),
                epoch: l.epoch,
                expires_at_utc: utc(l.expires_at_ms),
                acquired_at_utc: utc(l.acquired_at_ms),
                last_failover_ms: l.last_gap_ms,
            }),
        })
    }
}
