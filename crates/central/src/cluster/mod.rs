//! Cluster Infrastructure (SPEC §2 component 12, §5.6): with PostgreSQL,
//! several central nodes share one database and exactly one is active: it
//! alone accepts site streams and runs the singletons (the Site Call Audit
//! actor, the outbox dispatcher, the purges). The others are standby: they
//! serve the web UI and the REST API, refuse site streams (the site tries
//! its next address), and take over when the active node's lease expires or
//! is released.
//!
//! Main types: [`Elector`] (one per node: acquires, renews, releases the
//! lease in [`lease`]; publishes [`Leadership`] on a watch channel) and
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

pub mod lease;

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::configuration_database::Database;
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

/// Acquires, renews and releases the lease for one node.
pub struct Elector {
    db: Database,
    url: String,
    settings: ClusterSettings,
    tx: watch::Sender<Leadership>,
}

impl Elector {
    /// The elector of a node on PostgreSQL at `url`, and the channel its
    /// leadership is published on (Standby until it acquires).
    pub fn new(
        db: Database,
        url: &str,
        settings: ClusterSettings,
    ) -> (Self, watch::Receiver<Leadership>) {
        let (tx, rx) = watch::channel(Leadership::Standby);
        (
            Self {
                db,
                url: url.to_owned(),
                settings,
                tx,
            },
            rx,
        )
    }

    /// Standby and active in turn until `cancel` fires; an active node
    /// releases the lease when it stops (the standby, listening, takes over
    /// in about a second).
    pub async fn run(self, cancel: CancellationToken) {
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
        loop {
            // Standby: try now, then every poll period or at a release.
            let term = loop {
                match lease::try_acquire(self.db.pool(), &s.node, ttl_ms).await {
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
            let mut renewed = Instant::now();
            let stopping = loop {
                tokio::select! {
                    _ = cancel.cancelled() => break true,
                    _ = tokio::time::sleep(s.renew_every) => {}
                }
                match tokio::time::timeout(
                    s.renew_every,
                    lease::renew(self.db.pool(), &term, ttl_ms),
                )
                .await
                {
                    Ok(Ok(true)) => renewed = Instant::now(),
                    Ok(Ok(false)) => {
                        tracing::error!(node = %s.node, epoch = term.epoch, "the leader lease was taken by another node: stepping down");
                        break false;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease"),
                    Err(_) => tracing::warn!("renewing the leader lease timed out"),
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
            if stopping {
                if let Err(e) = lease::release(self.db.pool(), &term).await {
                    tracing::warn!(error = %e, "releasing the leader lease (the standby waits for its expiry)");
                }
                tracing::info!(node = %s.node, epoch = term.epoch, "released the leader lease");
                return;
            }
        }
    }
}
