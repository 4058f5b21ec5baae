//! Store-and-Forward Engine (SPEC §2 component 2, §4.1): the site's durable
//! record of every cached operation and the mechanism that retries them.
//!
//! One SQLite database (WAL; each commit fsynced before anyone hears of it,
//! as with synchronous=FULL, see `writer`) holds:
//! - the **tracking table**: one row per [`TrackedOperationId`], the status
//!   record that `Tracking.Status` and the admin API answer from;
//! - the **buffer**: entries for operations due for a retry, referencing
//!   their row by id;
//! - **meta**: the site-wide change sequence and the acknowledged cursor.
//!
//! Main types: [`Engine`] (cheap to clone; all writes go through one
//! group-commit writer thread and are answered by its syncer thread after
//! the fsync, reads use their own connection and answer only with what is
//! durable), [`PendingCommits`] (writes a caller settles before anything it
//! did leaves the process),
//! [`RetryWorker`] (drives due buffer entries through a [`Deliverer`]),
//! [`DeliveryRequest`] (what is stored to retry an operation).
//!
//! Invariants:
//! - Write-ahead: [`Engine::record_pending`] commits the `Pending` row and
//!   its retry material durably before any attempt is made.
//! - A deferred write (`*_deferred`) is committed with the writer's next
//!   batch; its holder settles it before anything it did can leave the
//!   process, so an id leaves only with a durable row.
//! - Every row change bumps its revision by one and takes the next change
//!   sequence in the same transaction; telemetry and reconciliation are both
//!   "rows with change sequence above X" ([`Engine::changes_after`]).
//! - Every status change passes `lifecycle::check_transition`; terminal rows
//!   never change again.
//! - Purge deletes only terminal rows, and only once acknowledged (or past
//!   the hard limit).

mod reads;
mod retry_worker;
mod schema;
mod writer;

use std::{
    collections::VecDeque,
    path::Path,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sitelink_commons::{
    lifecycle::TransitionError, Kind, TrackedOperationId, TrackedOperationStatus,
};
use tokio::sync::{mpsc, oneshot, watch};

pub use reads::{mask_secrets, History, LocalRecord, StatusCounts};
pub use retry_worker::{Deliverer, RetryWorker, RunOnce};
pub use sitelink_commons::RetryPolicy;
use writer::{Job, Signals, WriteOp, WriteResult};

/// What is stored with a row so the call can be retried after any restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeliveryRequest {
    /// `ExternalSystem.CachedCall(system, method, params)`.
    Http {
        system: String,
        method: String,
        params: serde_json::Map<String, serde_json::Value>,
    },
    /// `Database.CachedWrite(connection, sql, params)`.
    DatabaseWrite {
        connection: String,
        sql: String,
        params: Vec<serde_json::Value>,
    },
    /// `Notify.Send(list, subject, body)`: forwarded to central, which
    /// delivers it; never attempted by the retry worker.
    Notification {
        list: String,
        subject: String,
        body: String,
    },
}

impl DeliveryRequest {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Http { .. } => Kind::ExternalCall,
            Self::DatabaseWrite { .. } => Kind::DatabaseWrite,
            Self::Notification { .. } => Kind::Notification,
        }
    }

    /// `erp.postOrder`, or the database connection name (SPEC §4.1).
    pub fn target_summary(&self) -> String {
        match self {
            Self::Http { system, method, .. } => format!("{system}.{method}"),
            Self::DatabaseWrite { connection, .. } => connection.clone(),
            Self::Notification { list, .. } => list.clone(),
        }
    }

    /// The target whose retry policy applies.
    pub fn target(&self) -> &str {
        match self {
            Self::Http { system, .. } => system,
            Self::DatabaseWrite { connection, .. } => connection,
            Self::Notification { list, .. } => list,
        }
    }
}

/// A notification waiting to be forwarded to central.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardItem {
    pub id: TrackedOperationId,
    pub list: String,
    pub subject: String,
    pub body: String,
    pub provenance: String,
    pub created_at_ms: i64,
}

/// A buffer entry that is due, with what is needed to attempt it.
#[derive(Clone, Debug, PartialEq)]
pub struct DueEntry {
    pub id: TrackedOperationId,
    pub request: Result<DeliveryRequest, String>,
}

/// Writes a caller handed to the engine without waiting for their commit
/// (group commit without the wait: the caller goes on while the writer
/// batches its write with everyone else's).
///
/// Invariant (the rule that keeps SPEC §6 guarantee 1 while a script does
/// not wait for each commit): whoever holds a `PendingCommits` calls
/// [`PendingCommits::settle`] before anything it did can be seen outside
/// the process: before an external attempt, a database statement, a status
/// read, a log line and before a script run reports its result. A deferred
/// write is committed by the writer as soon as it can be (its batch
/// follows at once); `settle` only waits for that, so an id that leaves the
/// process has a durable row, and one whose commit failed never leaves it.
#[derive(Default)]
pub struct PendingCommits {
    receipts: VecDeque<oneshot::Receiver<Result<WriteResult, EngineError>>>,
    /// A write already known to have failed (found while pruning).
    failed: Option<EngineError>,
}

impl PendingCommits {
    fn push(&mut self, receipt: oneshot::Receiver<Result<WriteResult, EngineError>>) {
        // Drop the receipts already answered, so a long run does not hold
        // one per write it ever made.
        while let Some(front) = self.receipts.front_mut() {
            match front.try_recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.failed.get_or_insert(e);
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.failed.get_or_insert(EngineError::Stopped);
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
            }
            self.receipts.pop_front();
        }
        self.receipts.push_back(receipt);
    }

    pub fn is_empty(&self) -> bool {
        self.receipts.is_empty() && self.failed.is_none()
    }

    /// Waits until every write handed over so far is committed; the first
    /// failure if one was not (every receipt is consumed either way).
    pub async fn settle(&mut self) -> Result<(), EngineError> {
        let mut first = self.failed.take();
        while let Some(receipt) = self.receipts.pop_front() {
            let outcome = match receipt.await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e,
                Err(_) => EngineError::Stopped,
            };
            first.get_or_insert(outcome);
        }
        first.map_or(Ok(()), Err)
    }
}

/// Time the engine's threads have spent, in nanoseconds since open.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterTime {
    /// The writer applying statements (SQLite CPU, page cache).
    pub statements_ns: u64,
    /// The syncer in COMMIT (writing the WAL frames, before its fsync).
    pub commit_ns: u64,
    /// The syncer in fsync of the WAL.
    pub sync_ns: u64,
}

/// See [`Engine::hold_syncs`]: releases the held fsyncs when dropped.
#[doc(hidden)]
pub struct SyncHold(Arc<Signals>);

impl Drop for SyncHold {
    fn drop(&mut self) {
        let (held, released) = &self.0.sync_gate;
        *held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        released.notify_all();
    }
}

/// Whether an attempt was the one made at call time or a later retry (only
/// retries count against the retry budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptKind {
    Immediate,
    Retry,
}

/// How one delivery attempt ended, as classified by the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Worth retrying (connection refused, timeout, 5xx, lock timeout, ...).
    Transient(String),
    /// Retrying cannot help (4xx, syntax error, constraint violation, ...).
    Permanent(String),
}

/// When an attempt started, how long it took, and the HTTP status or SQL
/// error code it ended with: what the attempt history keeps beside the
/// outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptNote {
    pub at_ms: i64,
    pub duration_ms: i64,
    pub code: Option<String>,
}

/// One attempt as the deliverer made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempted {
    pub outcome: AttemptOutcome,
    pub note: AttemptNote,
}

/// One attempt of an operation's history (the last
/// [`ATTEMPTS_KEPT`] of every operation that did not succeed at once).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt of the operation, and so on.
    pub number: u32,
    pub at_ms: i64,
    pub duration_ms: i64,
    /// `Delivered`, `Transient` or `Permanent`.
    pub outcome: String,
    pub error: Option<String>,
    pub code: Option<String>,
}

/// Attempts kept per operation.
pub const ATTEMPTS_KEPT: u32 = 20;

/// The answer to an operator Retry or Discard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    Applied,
    NotFound,
    NotParked(TrackedOperationStatus),
}

/// How one id of a bulk command ended ([`Engine::apply_bulk`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BulkItemOutcome {
    /// Applied now, or earlier by the same bulk action: when (ms, the
    /// site's clock).
    Applied {
        at_ms: i64,
    },
    NotFound,
    NotParked(TrackedOperationStatus),
    /// Not a tracked operation id, or the change broke a rule.
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no tracked operation {0}")]
    NotFound(TrackedOperationId),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("tracked operation {id} is {status}, not being delivered; the attempt outcome was not applied")]
    NotInFlight {
        id: TrackedOperationId,
        status: TrackedOperationStatus,
    },
    #[error("buffer database: {0}")]
    Storage(String),
    #[error("the store-and-forward engine has stopped")]
    Stopped,
}

/// Tunables of the engine (from `[store_and_forward]` in site.toml).
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Terminal rows older than this, and acknowledged by central, are purged.
    pub purge_after_days: u32,
    /// Terminal rows older than this are purged even if never acknowledged.
    pub purge_hard_limit_days: u32,
    /// How often the purge runs, in seconds.
    pub purge_interval_seconds: u64,
    /// The buffer's page cache, in MiB: what the writer keeps of the
    /// database in memory. It fills as the database grows, up to this bound
    /// (a site on a small gateway sets it lower; the soak run measures it).
    pub cache_mib: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            purge_after_days: 7,
            purge_hard_limit_days: 90,
            purge_interval_seconds: 3600,
            cache_mib: 64,
        }
    }
}

/// Handle to the Store-and-Forward Engine. Clones share one writer thread.
#[derive(Clone)]
pub struct Engine {
    site: Arc<str>,
    tx: mpsc::Sender<Job>,
    signals: Arc<Signals>,
    /// Reads use their own WAL connection so they never wait on a commit.
    reader: Arc<Mutex<rusqlite::Connection>>,
    settings: EngineSettings,
}

pub use sitelink_commons::now_unix_ms as now_ms;

impl Engine {
    /// Opens (creating and migrating) the buffer database at `path`, starts
    /// the writer thread, and makes operations that were in flight at the
    /// last stop due for retry.
    pub async fn open(path: &Path, site: &str, settings: EngineSettings) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut conn = schema::open(path)?;
        schema::migrate(&mut conn)?;
        let reader = schema::open(path)?;
        let (tx, rx) = mpsc::channel(8192);
        let signals = Arc::new(Signals::new());
        writer::spawn(conn, path, rx, signals.clone(), settings.cache_mib)?;
        let engine = Self {
            site: site.into(),
            tx,
            signals,
            reader: Arc::new(Mutex::new(reader)),
            settings,
        };
        let recovered = engine.recover_in_flight().await?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "operations in flight at the last stop are due for retry"
            );
        }
        Ok(engine)
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn settings(&self) -> EngineSettings {
        self.settings
    }

    /// Hands `op` to the writer; the receiver answers after its commit.
    async fn submit(
        &self,
        op: WriteOp,
    ) -> Result<oneshot::Receiver<Result<WriteResult, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        Ok(rx)
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, EngineError> {
        self.submit(op)
            .await?
            .await
            .map_err(|_| EngineError::Stopped)?
    }

    fn insert_op(
        request: &DeliveryRequest,
        provenance: &str,
    ) -> Result<(TrackedOperationId, WriteOp), EngineError> {
        let id = TrackedOperationId::new();
        let request_json = serde_json::to_string(request)
            .map_err(|e| EngineError::Storage(format!("serializing the request: {e}")))?;
        Ok((
            id,
            WriteOp::Insert {
                id,
                kind: request.kind(),
                target_summary: request.target_summary(),
                request_json,
                provenance: provenance.to_owned(),
                now_ms: now_ms(),
            },
        ))
    }

    /// Write-ahead: durably records a new `Pending` row with what is needed
    /// to retry it, and returns its id. Nothing may be attempted before this
    /// returns.
    pub async fn record_pending(
        &self,
        request: &DeliveryRequest,
        provenance: &str,
    ) -> Result<TrackedOperationId, EngineError> {
        let (id, op) = Self::insert_op(request, provenance)?;
        self.write(op).await?;
        Ok(id)
    }

    /// [`Self::record_pending`] without waiting for the commit: the row is
    /// committed with the writer's next batch and `pending` holds the
    /// receipt. For what is never attempted at the site (`Notify.Send`):
    /// the id may go to the script at once, and [`PendingCommits::settle`]
    /// keeps it inside the process until its row is durable.
    pub async fn record_pending_deferred(
        &self,
        request: &DeliveryRequest,
        provenance: &str,
        pending: &mut PendingCommits,
    ) -> Result<TrackedOperationId, EngineError> {
        let (id, op) = Self::insert_op(request, provenance)?;
        pending.push(self.submit(op).await?);
        Ok(id)
    }

    /// The immediate attempt's outcome without waiting for its commit. The
    /// row is `Pending` and durable already; should the process die before
    /// this commits, the row is found in flight at the next start and
    /// retried (at-least-once, SPEC §4.1), exactly as if it had died during
    /// the attempt. What the row becomes follows from the outcome alone
    /// (`Delivered`, `Failed`, or buffered and still `Pending`; `Parked`
    /// when the target has no retries).
    /// `note` goes into the attempt history unless the call succeeded at
    /// once (which writes nothing more than its status).
    pub async fn record_immediate_outcome_deferred(
        &self,
        id: TrackedOperationId,
        outcome: AttemptOutcome,
        note: AttemptNote,
        policy: RetryPolicy,
        pending: &mut PendingCommits,
    ) -> Result<(), EngineError> {
        let op = WriteOp::Outcome {
            id,
            attempt: AttemptKind::Immediate,
            outcome,
            note: Some(note),
            policy,
            now_ms: now_ms(),
        };
        pending.push(self.submit(op).await?);
        Ok(())
    }

    /// Records how an attempt ended and returns the row's new status (its
    /// history entry dated now, without a duration or code: see
    /// [`Self::record_attempt`]).
    pub async fn record_outcome(
        &self,
        id: TrackedOperationId,
        attempt: AttemptKind,
        outcome: AttemptOutcome,
        policy: RetryPolicy,
    ) -> Result<TrackedOperationStatus, EngineError> {
        self.record(id, attempt, outcome, None, policy).await
    }

    /// Records an attempt (its outcome, and its history entry in the same
    /// transaction) and returns the row's new status.
    pub async fn record_attempt(
        &self,
        id: TrackedOperationId,
        attempt: AttemptKind,
        attempted: Attempted,
        policy: RetryPolicy,
    ) -> Result<TrackedOperationStatus, EngineError> {
        self.record(id, attempt, attempted.outcome, Some(attempted.note), policy)
            .await
    }

    async fn record(
        &self,
        id: TrackedOperationId,
        attempt: AttemptKind,
        outcome: AttemptOutcome,
        note: Option<AttemptNote>,
        policy: RetryPolicy,
    ) -> Result<TrackedOperationStatus, EngineError> {
        match self
            .write(WriteOp::Outcome {
                id,
                attempt,
                outcome,
                note,
                policy,
                now_ms: now_ms(),
            })
            .await?
        {
            WriteResult::Status(s) => Ok(s),
            _ => unreachable!("Outcome answers with a status"),
        }
    }

    /// Operator Retry: `Parked` → `Retrying` with a fresh budget, due now.
    pub async fn retry_parked(
        &self,
        id: TrackedOperationId,
    ) -> Result<CommandOutcome, EngineError> {
        self.command(WriteOp::OperatorRetry {
            id,
            now_ms: now_ms(),
        })
        .await
    }

    /// Operator Discard: `Parked` → `Discarded` (terminal).
    pub async fn discard_parked(
        &self,
        id: TrackedOperationId,
    ) -> Result<CommandOutcome, EngineError> {
        self.command(WriteOp::OperatorDiscard {
            id,
            now_ms: now_ms(),
        })
        .await
    }

    /// Applies one bulk action's Retry (or Discard, `retry` false) to each
    /// of `ids`, in one transaction, and answers each id in order. `key`
    /// names the bulk action: a call it was already applied to answers
    /// `Applied` with the time of that first application and is not
    /// changed again, so a repeated message applies nothing twice.
    pub async fn apply_bulk(
        &self,
        key: &str,
        retry: bool,
        ids: Vec<TrackedOperationId>,
    ) -> Result<Vec<BulkItemOutcome>, EngineError> {
        match self
            .write(WriteOp::OperatorBulk {
                key: key.to_owned(),
                retry,
                ids,
                now_ms: now_ms(),
            })
            .await?
        {
            WriteResult::Bulk(items) => Ok(items),
            _ => unreachable!("a bulk command answers with its items"),
        }
    }

    async fn command(&self, op: WriteOp) -> Result<CommandOutcome, EngineError> {
        match self.write(op).await? {
            WriteResult::Command(c) => Ok(c),
            _ => unreachable!("commands answer with an outcome"),
        }
    }

    async fn recover_in_flight(&self) -> Result<u64, EngineError> {
        self.count(WriteOp::RecoverInFlight { now_ms: now_ms() })
            .await
    }

    async fn count(&self, op: WriteOp) -> Result<u64, EngineError> {
        match self.write(op).await? {
            WriteResult::Count(n) => Ok(n),
            _ => unreachable!("this operation answers with a count"),
        }
    }

    /// Records that central has every change up to `cursor` (its reconcile
    /// cursor). Only moves forward. Purge relies on it.
    pub async fn set_acked_cursor(&self, cursor: u64) -> Result<(), EngineError> {
        self.count(WriteOp::SetAckedCursor(cursor))
            .await
            .map(|_| ())
    }

    /// Deletes terminal rows older than the purge window that central has
    /// acknowledged, and any terminal row older than the hard limit.
    pub async fn purge(&self, now_ms: i64) -> Result<u64, EngineError> {
        const DAY_MS: i64 = 86_400_000;
        self.count(WriteOp::Purge {
            acked_before_ms: now_ms - self.settings.purge_after_days as i64 * DAY_MS,
            hard_before_ms: now_ms - self.settings.purge_hard_limit_days as i64 * DAY_MS,
        })
        .await
    }

    /// Holds every fsync back until the returned guard is dropped: for
    /// tests that prove nothing is answered or read before its fsync.
    #[doc(hidden)]
    pub fn hold_syncs(&self) -> SyncHold {
        *self
            .signals
            .sync_gate
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        SyncHold(self.signals.clone())
    }

    /// Central acknowledged these notifications (committed on its side):
    /// their buffer entries go, the rows keep a forwarding record, in one
    /// transaction. Repeated acknowledgements are harmless.
    pub async fn mark_forwarded(&self, ids: Vec<TrackedOperationId>) -> Result<(), EngineError> {
        self.write(WriteOp::MarkForwarded {
            ids,
            now_ms: now_ms(),
        })
        .await?;
        Ok(())
    }

    /// Highest committed change sequence; `subscribe_changes` to wait on it.
    pub fn high_seq(&self) -> u64 {
        *self.signals.high_seq.borrow()
    }

    /// A receiver that sees every new high change sequence (for telemetry).
    /// How many notifications this engine has recorded since it opened;
    /// it moves before the change sequence that announces them.
    pub fn notifications_recorded(&self) -> u64 {
        self.signals.notifications.load(Ordering::Acquire)
    }

    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.signals.high_seq.subscribe()
    }

    /// (commits, operations) since open: `commits / operations` is how well
    /// group commit amortizes.
    pub fn commit_stats(&self) -> (u64, u64) {
        (
            self.signals.commits.load(Ordering::Relaxed),
            self.signals.ops.load(Ordering::Relaxed),
        )
    }

    /// fsyncs of the WAL since open (each covers one or more commits).
    pub fn syncs(&self) -> u64 {
        self.signals.syncs.load(Ordering::Relaxed)
    }

    /// What the writer and syncer threads have spent so far.
    pub fn writer_time(&self) -> WriterTime {
        WriterTime {
            statements_ns: self.signals.statements_ns.load(Ordering::Relaxed),
            commit_ns: self.signals.commit_ns.load(Ordering::Relaxed),
            sync_ns: self.signals.sync_ns.load(Ordering::Relaxed),
        }
    }

    /// Resolves when an operator retry or recovery made an entry due now, or
    /// after `max`, whichever comes first.
    pub(crate) async fn wait_for_due(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.signals.buffer_due.notified()).await;
    }
}
