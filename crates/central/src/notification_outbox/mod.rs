//! Notification Outbox (SPEC §2 component 9, §5.3): central's own delivery
//! of the notifications sites forward. Unlike Site Call Audit, which only
//! mirrors what sites deliver, the outbox is the deliverer and the source
//! of truth for a notification's status.
//!
//! Main types:
//! - [`Outbox`]: the handle streams use to hand over a forwarded
//!   notification ([`Outbox::accept`]: resolve the list, insert if not
//!   exists, wake the dispatcher); cheap to clone.
//! - [`Dispatcher`]: the singleton task that sends due notifications with
//!   [`Mailer`] (lettre over SMTP), records each attempt (Delivered,
//!   Retrying with backoff, Parked when the budget is spent, Failed on a
//!   permanent rejection), and runs the daily retention purge.
//!   [`Dispatcher::run_once`] does one round (tests drive it).
//!
//! Invariant: one notification id is one row, inserted once; the dispatcher
//! attempts a row only while it is Pending or Retrying, so a notification
//! forwarded many times (link cuts) is still sent once — unless the SMTP
//! server accepted it and the acknowledgement was lost, when the next
//! attempt sends it again with the same Message-ID.

mod smtp;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use sitelink_commons::{RetryPolicy, SiteName, TrackedOperationStatus};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    config::CentralConfig,
    configuration_database::{now_ms, Database, NewNotification, SendOutcome},
};
pub use smtp::{classify, message_id, Mailer};

/// Notifications one dispatch round takes.
const BATCH: u32 = 100;
/// SMTP conversations in flight at once.
pub const CONCURRENT_SENDS: usize = 8;
/// Ended sends wait at most this long for their outcomes' commit (the crash
/// window of a duplicate mail, with the commit itself).
pub const COMMIT_EVERY: Duration = Duration::from_millis(25);
/// How often the dispatcher looks for due retries when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);

/// The handle to the outbox: accepts forwarded notifications.
#[derive(Clone)]
pub struct Outbox {
    db: Database,
    lists: Arc<BTreeMap<String, Vec<String>>>,
    wake: Arc<Notify>,
}

impl Outbox {
    /// Stores a notification forwarded by `site` (insert if not exists) and
    /// wakes the dispatcher; `Ok` means it is committed and may be
    /// acknowledged. An unknown list is stored `Failed`, naming the list.
    pub async fn accept(&self, site: &SiteName, n: &NewNotification) -> Result<bool, sqlx::Error> {
        Ok(self.accept_many(site, std::slice::from_ref(n)).await?[0])
    }

    /// [`Outbox::accept`] for a burst of one site's notifications, in one
    /// transaction; whether each was new, in order.
    pub async fn accept_many(
        &self,
        site: &SiteName,
        ns: &[NewNotification],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let items = ns
            .iter()
            .map(|n| {
                let recipients = match self.lists.get(&n.list) {
                    Some(to) => Ok(to.as_slice()),
                    None => Err(format!(
                        "unknown notification list {:?} (central knows: {})",
                        n.list,
                        self.lists.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                };
                (n, recipients)
            })
            .collect();
        let new = self
            .db
            .notifications()
            .accept_many(site, items, now_ms())
            .await?;
        if new.iter().any(|&n| n) {
            self.wake.notify_one();
        }
        Ok(new)
    }
}

impl Outbox {
    /// Makes the dispatcher look for due work now (an operator Retry).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What one dispatch round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchOutcome {
    pub attempted: usize,
    pub delivered: usize,
    pub retrying: usize,
    pub parked: usize,
    pub failed: usize,
}

/// The singleton that delivers.
#[derive(Clone)]
pub struct Dispatcher {
    db: Database,
    /// None: no `[notification_outbox]` configured; notifications wait.
    mailer: Option<Mailer>,
    policy: RetryPolicy,
    retention_days: i64,
    wake: Arc<Notify>,
}

impl Dispatcher {
    /// The dispatcher and the outbox handle, from central's configuration.
    pub fn new(db: Database, config: &CentralConfig) -> anyhow::Result<(Self, Outbox)> {
        let wake = Arc::new(Notify::new());
        let (mailer, policy, retention_days) = match &config.notification_outbox {
            Some(o) => (Some(Mailer::new(o)?), o.retry, o.retention_days),
            None => (None, RetryPolicy::default(), 365),
        };
        let outbox = Outbox {
            db: db.clone(),
            lists: Arc::new(config.notification_lists.clone()),
            wake: wake.clone(),
        };
        Ok((
            Self {
                db,
                mailer,
                policy,
                retention_days,
                wake,
            },
            outbox,
        ))
    }

    /// The same dispatcher writing through `db` (a new leader term's fenced
    /// handle).
    pub fn with_database(&self, db: Database) -> Self {
        Self { db, ..self.clone() }
    }

    /// Sends what is due now (up to one batch) and records each outcome.
    pub async fn run_once(&self) -> anyhow::Result<DispatchOutcome> {
        let Some(mailer) = &self.mailer else {
            return Ok(DispatchOutcome::default());
        };
        // A node whose leader term is over starts no send.
        self.db.fence_now().await?;
        let due = self.db.notifications().due(now_ms(), BATCH).await?;
        let mut out = DispatchOutcome {
            attempted: due.len(),
            ..Default::default()
        };
        // Up to 8 sends at a time, each a task of its own, so that a slow
        // one holds up no other. The outcomes of sends that have ended are
        // committed together at most COMMIT_EVERY after the first of them
        // ended (and at the end of the round), while the other sends go
        // on. So the window in which a crash mails a message twice (the
        // SMTP server accepted it; its Delivered is not yet committed) is
        // COMMIT_EVERY plus one commit, whatever the slowest send takes;
        // and commits stay few (a write of the outbox competes with the
        // forwarded notifications' writes for SQLite's one writer).
        let mut waiting = due.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut ended = Vec::new();
        let mut commit_at: Option<tokio::time::Instant> = None;
        loop {
            while running.len() < CONCURRENT_SENDS {
                let Some(n) = waiting.next() else { break };
                let mailer = mailer.clone();
                running.spawn(async move {
                    let outcome = mailer.send(&n).await;
                    (n, outcome)
                });
            }
            if running.is_empty() && ended.is_empty() {
                break;
            }
            let commit_now = match commit_at {
                _ if running.is_empty() => true,
                None => {
                    let done = running.join_next().await.expect("sends are running");
                    ended.push(done.context("a notification send task")?);
                    commit_at = Some(tokio::time::Instant::now() + COMMIT_EVERY);
                    false
                }
                Some(at) => tokio::select! {
                    Some(done) = running.join_next() => {
                        ended.push(done.context("a notification send task")?);
                        false
                    }
                    () = tokio::time::sleep_until(at) => true,
                },
            };
            if !commit_now {
                continue;
            }
            commit_at = None;
            let statuses = self
                .db
                .notifications()
                .record_attempts(&ended, &self.policy, now_ms())
                .await?;
            for ((n, outcome), status) in ended.drain(..).zip(statuses) {
                match status {
                    Some(TrackedOperationStatus::Delivered) => out.delivered += 1,
                    Some(TrackedOperationStatus::Retrying) => out.retrying += 1,
                    Some(TrackedOperationStatus::Parked) => out.parked += 1,
                    Some(TrackedOperationStatus::Failed) => out.failed += 1,
                    _ => {}
                }
                if let SendOutcome::Transient(e) | SendOutcome::Permanent(e) = outcome {
                    tracing::warn!(id = %n.id, error = %e, ?status, "notification not delivered");
                }
            }
        }
        Ok(out)
    }

    /// Deletes terminal notifications older than the retention window.
    pub async fn purge_once(&self, now_ms: i64) -> Result<u64, sqlx::Error> {
        self.db
            .notifications()
            .purge(now_ms - self.retention_days * 86_400_000)
            .await
    }

    /// Dispatches until `cancel` fires: at once when a notification
    /// arrives, else every half second for due retries; purges daily.
    pub async fn run(self, cancel: CancellationToken) {
        if self.mailer.is_none() {
            tracing::warn!(
                "no [notification_outbox] configured: forwarded notifications are stored and wait"
            );
        }
        let mut purge = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(3600),
            Duration::from_secs(86_400),
        );
        loop {
            let busy = match self.run_once().await {
                Ok(o) => o.attempted as u32 == BATCH,
                Err(e) => {
                    tracing::error!(error = %e, "notification dispatch failed");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = purge.tick() => match self.purge_once(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "retention purge of notifications"),
                    Err(e) => tracing::error!(error = %e, "notification purge failed"),
                },
            }
        }
    }
}
