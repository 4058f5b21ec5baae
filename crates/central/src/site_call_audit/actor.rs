//! The `SiteCallAuditActor` (SPEC §5.2): the one task on a central node
//! that owns Site Call Audit's moving parts. Everything reaches it as a
//! message through its handle, [`SiteCallAudit`]:
//!
//! - **ingest batching**: site streams hand over telemetry batches and
//!   reconcile pages; the actor commits everything queued in one
//!   transaction (at most one commit in flight on SQLite, two on
//!   PostgreSQL) and answers each stream when its rows are committed;
//! - **the reconcile schedule**: a reconcile on every connect, then every
//!   `reconcile_interval` for each connected site whose cursor stood still
//!   for the whole period (while telemetry advances the cursor there is no
//!   gap to heal, and a pull would transfer rows twice);
//! - **the command relay**: which site has a live stream (and which of its
//!   streams is the newest), routing Retry/Discard to it and its answer
//!   back; `SiteUnreachable` at once without a stream or when the stream
//!   ends first;
//! - **the daily retention purge** and the fold of the open-call counters
//!   behind the KPIs (migration 4).
//!
//! The actor never waits on the database in its own loop: commits, folds
//! and purges run as child tasks it tracks, so a slow commit never delays a
//! relay. Its state (sessions, cursors, pending relays, queued jobs) is
//! plain data only this task touches: no locks.
//!
//! Invariant: a site has at most one registered stream (the newest); an
//! older stream that ends never unregisters a newer one.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use sitelink_commons::{contracts::v1, SiteName, TrackingRecord};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{Command, CommandOutcome, RetentionPurge};
use crate::configuration_database::{now_ms, Backend, Database, IngestJob, IngestOutcome};

/// Most rows one ingest transaction takes; bounds commit latency.
const MAX_ROWS_PER_COMMIT: usize = 5_000;
/// Most jobs one ingest transaction takes: each costs statements of its
/// own (contact, rows, cursor), so a thousand sites' one-row batches
/// made multi-second commits that a lease renewal had to wait behind.
const MAX_JOBS_PER_COMMIT: usize = 256;

/// What the actor needs to know of its schedule.
#[derive(Clone, Copy, Debug)]
pub struct AuditSettings {
    /// How often a connected site is reconciled (besides on connect).
    pub reconcile_interval: Duration,
    /// Terminal rows older than this many days are purged.
    pub retention_days: i64,
    /// How often the purge runs (daily).
    pub purge_every: Duration,
    /// How often the open-call deltas are folded into the counters.
    pub fold_every: Duration,
    /// How often the sites table is read for revocations (a `site revoke`
    /// from the command line ends that site's live stream within this).
    pub revocation_every: Duration,
    /// Web sessions idle this long are purged with the rest.
    pub ui_idle: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(300),
            retention_days: 365,
            purge_every: Duration::from_secs(86_400),
            fold_every: Duration::from_secs(5),
            revocation_every: Duration::from_secs(1),
            ui_idle: Duration::from_secs(8 * 3600),
        }
    }
}

/// What the actor asks a site's stream to do. The stream turns it into
/// wire messages and owns their correlations.
#[derive(Debug)]
pub enum StreamOrder {
    /// Pull pages of changes above `after_seq`, then report
    /// [`SiteCallAudit::reconcile_finished`].
    Reconcile { after_seq: u64 },
    /// Relay an operator command; report the site's answer with
    /// [`SiteCallAudit::command_result`] quoting `relay`.
    /// The site must not apply it once central's clock passes
    /// `expires_at_ms` (the waiter reports `Timeout` a margin later).
    Command {
        relay: u64,
        command: Command,
        expires_at_ms: i64,
    },
    /// Send `body` (a bulk command, an attempt-history query) and report
    /// the site's answer with [`SiteCallAudit::answered`] quoting `relay`.
    Ask {
        relay: u64,
        body: v1::central_message::Body,
    },
    /// End the stream now, telling the site why (its token was revoked).
    Close { reason: String },
}

/// Identifies one registered stream of a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamId(u64);

enum Msg {
    Connected {
        site: SiteName,
        cursor: u64,
        orders: mpsc::UnboundedSender<StreamOrder>,
        reply: oneshot::Sender<StreamId>,
    },
    Disconnected {
        site: SiteName,
        stream: StreamId,
    },
    Ingest {
        job: IngestJob,
        reply: oneshot::Sender<Result<IngestOutcome, String>>,
    },
    ReconcileFinished {
        site: SiteName,
        stream: StreamId,
    },
    Relay {
        by: String,
        site: String,
        command: Command,
        expires_at_ms: i64,
        reply: oneshot::Sender<CommandOutcome>,
    },
    CommandResult {
        relay: u64,
        result: v1::CommandResult,
    },
    Ask {
        site: String,
        body: v1::central_message::Body,
        reply: oneshot::Sender<Result<v1::site_message::Body, CommandOutcome>>,
    },
    Answered {
        relay: u64,
        body: v1::site_message::Body,
    },
    Online {
        reply: oneshot::Sender<Vec<String>>,
    },
    ScheduleNow {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the actor. Cheap to clone; every method fails softly (an
/// error or `SiteUnreachable`) once the actor has stopped.
#[derive(Clone)]
pub struct SiteCallAudit {
    /// The running actor's mailbox. Swapped when a new actor starts (a new
    /// leader term, Cluster Infrastructure); while none runs, sends fail.
    tx: Arc<std::sync::RwLock<mpsc::Sender<Msg>>>,
}

const STOPPED: &str = "the Site Call Audit actor has stopped";

impl SiteCallAudit {
    /// A handle with no actor behind it yet: sends fail (nobody online,
    /// relays unreachable) until [`SiteCallAuditActor::new_for`] starts one.
    pub fn without_actor() -> Self {
        let (tx, _) = mpsc::channel(1);
        Self {
            tx: Arc::new(std::sync::RwLock::new(tx)),
        }
    }

    /// Registers a new stream of `site` whose stored cursor is `cursor`;
    /// the actor orders its first reconcile at once.
    pub async fn connected(
        &self,
        site: &SiteName,
        cursor: u64,
        orders: mpsc::UnboundedSender<StreamOrder>,
    ) -> Result<StreamId, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Connected {
            site: site.clone(),
            cursor,
            orders,
            reply,
        })
        .await?;
        rx.await.map_err(|_| STOPPED.to_owned())
    }

    /// The stream ended; its pending relays answer `SiteUnreachable`.
    pub async fn disconnected(&self, site: &SiteName, stream: StreamId) {
        let _ = self
            .send(Msg::Disconnected {
                site: site.clone(),
                stream,
            })
            .await;
    }

    /// Ingests rows of `site` covering `complete_range` (if given), and
    /// records the site as seen up to `seen_seq` (telemetry); resolves once
    /// they are committed.
    pub async fn ingest(
        &self,
        site: &SiteName,
        rows: Vec<TrackingRecord>,
        complete_range: Option<(u64, u64)>,
        seen_seq: Option<u64>,
    ) -> Result<IngestOutcome, String> {
        self.submit(site, rows, complete_range, seen_seq)
            .await?
            .await
            .map_err(|_| STOPPED.to_owned())?
    }

    /// Like [`Self::ingest`], but returns as soon as the job is queued: the
    /// receiver answers once it is committed. A stream keeps a few of these
    /// outstanding, so the actor finds more to commit at once; one site's
    /// jobs still commit in the order they were submitted.
    pub async fn submit(
        &self,
        site: &SiteName,
        rows: Vec<TrackingRecord>,
        complete_range: Option<(u64, u64)>,
        seen_seq: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<IngestOutcome, String>>, String> {
        let (reply, rx) = oneshot::channel();
        let job = IngestJob {
            site: site.clone(),
            rows,
            complete_range,
            seen_seq,
        };
        self.send(Msg::Ingest { job, reply }).await?;
        Ok(rx)
    }

    /// The reconcile the actor ordered on this stream is done (or failed).
    pub async fn reconcile_finished(&self, site: &SiteName, stream: StreamId) {
        let _ = self
            .send(Msg::ReconcileFinished {
                site: site.clone(),
                stream,
            })
            .await;
    }

    /// The site's answer to relayed command `relay`.
    pub async fn command_result(&self, relay: u64, result: v1::CommandResult) {
        let _ = self.send(Msg::CommandResult { relay, result }).await;
    }

    /// Relays `command`, asked for by operator `by`, to `site` and waits
    /// for its answer: at once `SiteUnreachable` without a live stream,
    /// `Timeout` after `timeout`. The command expires [`expiry_margin`]
    /// before that: the site does not apply it later, so `Timeout` means
    /// "not applied" unless the site's answer took longer than the margin
    /// to come back. An answer that comes after the waiter gave up is
    /// written to the audit log as what it was (`late answer: …`).
    pub async fn relay(
        &self,
        by: &str,
        site: &str,
        command: Command,
        timeout: Duration,
    ) -> CommandOutcome {
        let (reply, rx) = oneshot::channel();
        let expires_at_ms = now_ms() + (timeout - expiry_margin(timeout)).as_millis() as i64;
        let msg = Msg::Relay {
            by: by.to_owned(),
            site: site.to_owned(),
            command,
            expires_at_ms,
            reply,
        };
        if self.send(msg).await.is_err() {
            return CommandOutcome::SiteUnreachable;
        }
        // The waiter keeps the clock; the actor drops the pending relay when
        // this receiver is gone (see `sweep_relays`).
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => CommandOutcome::Timeout,
            Ok(Err(_)) => CommandOutcome::SiteUnreachable,
            Ok(Ok(outcome)) => outcome,
        }
    }

    /// Relays a bulk action's next ids (`bulk`, without its expiry) to
    /// `site` and waits for the site's answer, one outcome per id (see
    /// [`Self::ask`] for the errors). The command expires
    /// [`expiry_margin`] before the timeout, as a single one does; the site
    /// applies a bulk action to a call at most once, so sending the ids
    /// again after an error is safe.
    pub async fn relay_bulk(
        &self,
        site: &str,
        mut bulk: v1::BulkCommand,
        timeout: Duration,
    ) -> Result<v1::BulkCommandResult, CommandOutcome> {
        bulk.expires_at_unix_ms = now_ms() + (timeout - expiry_margin(timeout)).as_millis() as i64;
        match self
            .ask(site, v1::central_message::Body::BulkCommand(bulk), timeout)
            .await?
        {
            v1::site_message::Body::BulkCommandResult(r) => Ok(r),
            _ => Err(CommandOutcome::Error(
                "the site answered something else".into(),
            )),
        }
    }

    /// Asks `site` for the attempt history and stored request of `id`.
    pub async fn attempt_history(
        &self,
        site: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<v1::AttemptHistoryAnswer, CommandOutcome> {
        let query = v1::AttemptHistoryQuery { id: id.to_owned() };
        match self
            .ask(
                site,
                v1::central_message::Body::AttemptHistoryQuery(query),
                timeout,
            )
            .await?
        {
            v1::site_message::Body::AttemptHistory(a) => Ok(a),
            _ => Err(CommandOutcome::Error(
                "the site answered something else".into(),
            )),
        }
    }

    /// Sends `body` to `site`'s stream and waits for the answer with its
    /// correlation: `Err(SiteUnreachable)` at once without a live stream or
    /// when the stream ends first, `Err(Timeout)` after `timeout`.
    async fn ask(
        &self,
        site: &str,
        body: v1::central_message::Body,
        timeout: Duration,
    ) -> Result<v1::site_message::Body, CommandOutcome> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Ask {
            site: site.to_owned(),
            body,
            reply,
        };
        if self.send(msg).await.is_err() {
            return Err(CommandOutcome::SiteUnreachable);
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(CommandOutcome::Timeout),
            Ok(Err(_)) => Err(CommandOutcome::SiteUnreachable),
            Ok(Ok(answer)) => answer,
        }
    }

    /// The site's answer to what was asked as `relay` ([`StreamOrder::Ask`]).
    pub async fn answered(&self, relay: u64, body: v1::site_message::Body) {
        let _ = self.send(Msg::Answered { relay, body }).await;
    }

    /// Names of the sites with a live stream, sorted.
    pub async fn online(&self) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.send(Msg::Online { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Runs one step of the reconcile schedule now, as a period ending
    /// would (tests drive the schedule with this instead of waiting).
    pub async fn run_schedule_once(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Msg::ScheduleNow { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn is_online(&self, site: &str) -> bool {
        self.online().await.iter().any(|s| s == site)
    }

    async fn send(&self, msg: Msg) -> Result<(), String> {
        let tx = self.tx.read().unwrap_or_else(|p| p.into_inner()).clone();
        tx.send(msg).await.map_err(|_| STOPPED.to_owned())
    }
}

/// A registered stream.
struct Stream {
    id: StreamId,
    orders: mpsc::UnboundedSender<StreamOrder>,
    /// The cursor as the last commit left it.
    cursor: u64,
    /// The cursor at the previous schedule tick (None: no tick yet).
    cursor_at_last_tick: Option<u64>,
    reconciling: bool,
}

/// A question to a site (a bulk command, an attempt-history query)
/// waiting for its answer.
struct PendingAsk {
    stream: StreamId,
    reply: oneshot::Sender<Result<v1::site_message::Body, CommandOutcome>>,
}

struct PendingRelay {
    stream: StreamId,
    reply: oneshot::Sender<CommandOutcome>,
    by: String,
    site: String,
    command: Command,
    /// When the waiter gave up (its relay is kept a while for a late
    /// answer).
    abandoned_at: Option<Instant>,
}

/// How long a relay whose waiter timed out is kept for its late answer.
const LATE_ANSWER_WINDOW: Duration = Duration::from_secs(600);

/// How long before the waiter's timeout a command expires at the site: the
/// time its answer has to come back.
pub fn expiry_margin(timeout: Duration) -> Duration {
    (timeout / 5).min(Duration::from_secs(1))
}

struct QueuedIngest {
    job: IngestJob,
    reply: oneshot::Sender<Result<IngestOutcome, String>>,
}

/// What a child task reports back.
enum Done {
    /// Site and cursor of each committed job (the replies went directly).
    Ingest(Vec<(SiteName, u64)>),
    Fold(Result<u64, sqlx::Error>),
    Purge(Result<super::Purged, sqlx::Error>),
    /// The revoked sites among those connected when the check started.
    Revoked(Result<Vec<String>, sqlx::Error>),
    /// An audit-log entry (a late answer) was written.
    Logged(Result<(), sqlx::Error>),
}

pub struct SiteCallAuditActor {
    db: Database,
    settings: AuditSettings,
    rx: mpsc::Receiver<Msg>,
    streams: HashMap<SiteName, Stream>,
    next_stream: u64,
    relays: HashMap<u64, PendingRelay>,
    asks: HashMap<u64, PendingAsk>,
    next_relay: u64,
    queued: Vec<QueuedIngest>,
    /// The commit tasks running now, with the sites whose rows each holds.
    /// A site's jobs never run in two commits at once, so they commit in
    /// the order its stream sent them (cursor ranges then chain).
    commits: HashMap<tokio::task::Id, HashSet<SiteName>>,
    /// 1 on SQLite (one writer at a time is all it has), 2 on PostgreSQL
    /// (two transactions in flight keep both cores busy).
    max_commits_in_flight: usize,
    /// The fold task running now, if any (never two at once).
    fold: Option<tokio::task::Id>,
    /// A revocation check is running (never two at once).
    checking_revocations: bool,
    children: JoinSet<Done>,
}

impl SiteCallAuditActor {
    /// The actor and its handle; run the actor with [`Self::run`].
    pub fn new(db: Database, settings: AuditSettings) -> (Self, SiteCallAudit) {
        let (tx, rx) = mpsc::channel(1024);
        let handle = SiteCallAudit {
            tx: Arc::new(std::sync::RwLock::new(tx)),
        };
        (Self::with_mailbox(db, settings, rx), handle)
    }

    /// A new actor behind an existing handle (a new leader term, or the
    /// first one of [`SiteCallAudit::without_actor`]): the
    /// handle's messages go to it from now on.
    pub fn new_for(handle: &SiteCallAudit, db: Database, settings: AuditSettings) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        *handle.tx.write().unwrap_or_else(|p| p.into_inner()) = tx;
        Self::with_mailbox(db, settings, rx)
    }

    fn with_mailbox(db: Database, settings: AuditSettings, rx: mpsc::Receiver<Msg>) -> Self {
        let max_commits_in_flight = if db.backend() == Backend::Sqlite {
            1
        } else {
            2
        };
        Self {
            db,
            settings,
            rx,
            streams: HashMap::new(),
            next_stream: 0,
            relays: HashMap::new(),
            asks: HashMap::new(),
            next_relay: 0,
            queued: Vec::new(),
            commits: HashMap::new(),
            max_commits_in_flight,
            fold: None,
            checking_revocations: false,
            children: JoinSet::new(),
        }
    }

    /// Runs until `cancel` fires, then lets in-flight commits finish so
    /// every stream gets its answer.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut schedule = tokio::time::interval(self.settings.reconcile_interval);
        let mut fold = tokio::time::interval(self.settings.fold_every);
        let mut revocations = tokio::time::interval(self.settings.revocation_every);
        // The first purge an hour after start, not at once: a restart loop
        // should not purge in a loop.
        let mut purge = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(3600).min(self.settings.purge_every),
            self.settings.purge_every,
        );
        for t in [&mut schedule, &mut fold, &mut purge, &mut revocations] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        schedule.tick().await; // the first tick is now; connects order their own
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                Some(done) = self.children.join_next_with_id(), if !self.children.is_empty() => {
                    self.finished(done);
                }
                _ = schedule.tick() => self.schedule_reconciles(),
                _ = fold.tick() => self.start_fold(),
                _ = purge.tick() => self.start_purge(),
                _ = revocations.tick(), if !self.streams.is_empty() && !self.checking_revocations => {
                    self.start_revocation_check();
                }
            }
        }
        while let Some(done) = self.children.join_next_with_id().await {
            self.finished(done);
        }
        tracing::info!("Site Call Audit actor stopped");
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Connected {
                site,
                cursor,
                orders,
                reply,
            } => {
                self.next_stream += 1;
                let id = StreamId(self.next_stream);
                let reconciling = orders
                    .send(StreamOrder::Reconcile { after_seq: cursor })
                    .is_ok();
                let stream = Stream {
                    id,
                    orders,
                    cursor,
                    cursor_at_last_tick: None,
                    reconciling,
                };
                if let Some(old) = self.streams.insert(site.clone(), stream) {
                    tracing::info!(%site, old = old.id.0, "a newer stream replaces the site's old one");
                    self.unreachable(old.id);
                }
                let _ = reply.send(id);
            }
            Msg::Disconnected { site, stream } => {
                if self.streams.get(&site).is_some_and(|s| s.id == stream) {
                    self.streams.remove(&site);
                }
                self.unreachable(stream);
            }
            Msg::Ingest { job, reply } => {
                self.queued.push(QueuedIngest { job, reply });
                self.start_commits();
            }
            Msg::ReconcileFinished { site, stream } => {
                if let Some(s) = self.streams.get_mut(&site).filter(|s| s.id == stream) {
                    s.reconciling = false;
                }
            }
            Msg::Relay {
                by,
                site,
                command,
                expires_at_ms,
                reply,
            } => {
                self.sweep_relays();
                let Some(stream) = SiteName::parse(&site)
                    .ok()
                    .and_then(|s| self.streams.get(&s))
                else {
                    let _ = reply.send(CommandOutcome::SiteUnreachable);
                    return;
                };
                self.next_relay += 1;
                let relay = self.next_relay;
                let order = StreamOrder::Command {
                    relay,
                    command,
                    expires_at_ms,
                };
                if stream.orders.send(order).is_err() {
                    let _ = reply.send(CommandOutcome::SiteUnreachable);
                    return;
                }
                self.relays.insert(
                    relay,
                    PendingRelay {
                        stream: stream.id,
                        reply,
                        by,
                        site,
                        command,
                        abandoned_at: None,
                    },
                );
            }
            Msg::CommandResult { relay, result } => {
                if let Some(PendingRelay {
                    reply,
                    by,
                    site,
                    command,
                    ..
                }) = self.relays.remove(&relay)
                {
                    if let Err(outcome) = reply.send(relay_outcome(&result)) {
                        self.late_answer(by, site, command, &result, outcome);
                    }
                }
            }
            Msg::Ask { site, body, reply } => {
                self.sweep_relays();
                let Some(stream) = SiteName::parse(&site)
                    .ok()
                    .and_then(|s| self.streams.get(&s))
                else {
                    let _ = reply.send(Err(CommandOutcome::SiteUnreachable));
                    return;
                };
                self.next_relay += 1;
                let relay = self.next_relay;
                if stream
                    .orders
                    .send(StreamOrder::Ask { relay, body })
                    .is_err()
                {
                    let _ = reply.send(Err(CommandOutcome::SiteUnreachable));
                    return;
                }
                self.asks.insert(
                    relay,
                    PendingAsk {
                        stream: stream.id,
                        reply,
                    },
                );
            }
            Msg::Answered { relay, body } => {
                // An answer after its waiter gave up is dropped: the bulk
                // runner sends those ids again (the site applies each at
                // most once), and a query is asked again.
                if let Some(p) = self.asks.remove(&relay) {
                    let _ = p.reply.send(Ok(body));
                }
            }
            Msg::ScheduleNow { reply } => {
                self.schedule_reconciles();
                let _ = reply.send(());
            }
            Msg::Online { reply } => {
                let mut names: Vec<String> =
                    self.streams.keys().map(|s| s.as_str().to_owned()).collect();
                names.sort();
                let _ = reply.send(names);
            }
        }
    }

    fn finished(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if self.commits.remove(&id).is_some() {
            self.start_commits();
        }
        if self.fold == Some(id) {
            self.fold = None;
        }
        match done.map(|(_, d)| d) {
            Ok(Done::Ingest(cursors)) => {
                for (site, cursor) in cursors {
                    if let Some(s) = self.streams.get_mut(&site) {
                        s.cursor = s.cursor.max(cursor);
                    }
                }
            }
            Ok(Done::Fold(result)) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "folding the open-call counters failed");
                }
            }
            Ok(Done::Purge(Ok(p))) if p == super::Purged::default() => {}
            Ok(Done::Purge(Ok(p))) => tracing::info!(
                site_calls = p.site_calls,
                relay_requests = p.relay_requests,
                ui_sessions = p.ui_sessions,
                "retention purge"
            ),
            Ok(Done::Purge(Err(e))) => tracing::error!(error = %e, "retention purge failed"),
            Ok(Done::Logged(Ok(()))) => {}
            Ok(Done::Logged(Err(e))) => {
                tracing::error!(error = %e, "writing a late answer to the audit log failed")
            }
            Ok(Done::Revoked(result)) => {
                self.checking_revocations = false;
                match result {
                    Ok(sites) => {
                        for site in sites {
                            self.close_revoked(&site);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reading revoked sites failed"),
                }
            }
            // A panicked commit dropped its replies: those streams see
            // an error and close; their sites send the rows again.
            Err(e) => tracing::error!(error = %e, "a Site Call Audit task failed"),
        }
    }

    /// Starts commits while a slot is free, each taking what is queued (up
    /// to [`MAX_ROWS_PER_COMMIT`] rows and [`MAX_JOBS_PER_COMMIT`] jobs), except jobs of sites that have rows
    /// in a commit still running: those wait for the next one.
    fn start_commits(&mut self) {
        while self.commits.len() < self.max_commits_in_flight && !self.queued.is_empty() {
            // Sites whose next job must wait: in a running commit, or an
            // earlier job of theirs stays queued (order within a site).
            let mut held: HashSet<SiteName> = self.commits.values().flatten().cloned().collect();
            let mut rows = 0;
            let mut batch = Vec::new();
            let mut rest = Vec::new();
            for q in self.queued.drain(..) {
                let fits = batch.is_empty()
                    || (rows + q.job.rows.len() <= MAX_ROWS_PER_COMMIT
                        && batch.len() < MAX_JOBS_PER_COMMIT);
                if fits && !held.contains(&q.job.site) {
                    rows += q.job.rows.len();
                    batch.push(q);
                } else {
                    held.insert(q.job.site.clone());
                    rest.push(q);
                }
            }
            self.queued = rest;
            if batch.is_empty() {
                return;
            }
            let sites = batch.iter().map(|q| q.job.site.clone()).collect();
            let db = self.db.clone();
            let task = self.children.spawn(async move { commit(db, batch).await });
            self.commits.insert(task.id(), sites);
        }
    }

    fn schedule_reconciles(&mut self) {
        self.sweep_relays();
        for (site, s) in self.streams.iter_mut() {
            if !s.reconciling && s.cursor_at_last_tick == Some(s.cursor) {
                s.reconciling = s
                    .orders
                    .send(StreamOrder::Reconcile {
                        after_seq: s.cursor,
                    })
                    .is_ok();
                tracing::debug!(%site, cursor = s.cursor, "periodic reconcile");
            }
            s.cursor_at_last_tick = Some(s.cursor);
        }
    }

    fn start_fold(&mut self) {
        if self.fold.is_some() {
            return;
        }
        let db = self.db.clone();
        let task = self
            .children
            .spawn(async move { Done::Fold(db.site_calls().fold_open_counts().await) });
        self.fold = Some(task.id());
    }

    fn start_purge(&mut self) {
        let purge = RetentionPurge::new(self.db.clone(), self.settings.retention_days)
            .with_ui_idle(self.settings.ui_idle);
        self.children
            .spawn(async move { Done::Purge(purge.run_once(now_ms()).await) });
    }

    fn start_revocation_check(&mut self) {
        self.checking_revocations = true;
        let db = self.db.clone();
        self.children
            .spawn(async move { Done::Revoked(db.sites().revoked_names().await) });
    }

    /// Ends the live stream of a site whose token was revoked: it is told
    /// why, its waiting relays answer `SiteUnreachable`, and it is offline.
    fn close_revoked(&mut self, site: &str) {
        let Some(name) = SiteName::parse(site).ok() else {
            return;
        };
        if let Some(stream) = self.streams.remove(&name) {
            tracing::warn!(%site, "site revoked: its stream is closed");
            let _ = stream.orders.send(StreamOrder::Close {
                reason: format!("site {site} was revoked"),
            });
            self.unreachable(stream.id);
        }
    }

    /// Answers `SiteUnreachable` to every relay waiting on `stream`.
    fn unreachable(&mut self, stream: StreamId) {
        let gone: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, p)| p.stream == stream)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(p) = self.relays.remove(&id) {
                let _ = p.reply.send(CommandOutcome::SiteUnreachable);
            }
        }
        for (_, p) in self.asks.extract_if(|_, p| p.stream == stream) {
            let _ = p.reply.send(Err(CommandOutcome::SiteUnreachable));
        }
    }

    /// Notes when a waiter gave up, and drops relays abandoned longer than
    /// [`LATE_ANSWER_WINDOW`] ago.
    fn sweep_relays(&mut self) {
        let now = Instant::now();
        self.asks.retain(|_, p| !p.reply.is_closed());
        self.relays.retain(|_, p| {
            if p.reply.is_closed() {
                let since = *p.abandoned_at.get_or_insert(now);
                now.duration_since(since) < LATE_ANSWER_WINDOW
            } else {
                true
            }
        });
    }

    /// The site answered a command whose waiter had already reported
    /// `Timeout`: the audit log gets what really happened.
    fn late_answer(
        &mut self,
        by: String,
        site: String,
        command: Command,
        result: &v1::CommandResult,
        outcome: CommandOutcome,
    ) {
        let (action, id) = match command {
            Command::Retry(id) => ("retry", id),
            Command::Discard(id) => ("discard", id),
        };
        let expired = result.outcome == v1::CommandOutcome::Expired as i32;
        let what = if expired {
            "late answer: Expired (not applied)".to_owned()
        } else {
            format!("late answer: {}", outcome.name())
        };
        tracing::warn!(%site, %id, action, answer = %what, "a relayed command was answered after its timeout");
        let db = self.db.clone();
        self.children.spawn(async move {
            Done::Logged(
                db.audit_log()
                    .record(&by, action, &id.to_string(), Some(&site), &what)
                    .await,
            )
        });
    }
}

/// One ingest transaction for `batch`; answers each job.
async fn commit(db: Database, batch: Vec<QueuedIngest>) -> Done {
    let started = Instant::now();
    let (jobs, replies): (Vec<IngestJob>, Vec<_>) =
        batch.into_iter().map(|q| (q.job, q.reply)).unzip();
    let sites: Vec<SiteName> = jobs.iter().map(|j| j.site.clone()).collect();
    let mut cursors = Vec::with_capacity(sites.len());
    match db.site_calls().ingest_many(jobs).await {
        Ok(outcomes) => {
            for ((site, reply), out) in sites.into_iter().zip(replies).zip(outcomes) {
                cursors.push((site, out.cursor));
                let _ = reply.send(Ok(out));
            }
            tracing::trace!(jobs = cursors.len(), elapsed = ?started.elapsed(), "ingest committed");
        }
        Err(e) => {
            // Rolled back: nothing of this batch is stored; each stream
            // closes and its site sends the rows again after reconnecting.
            tracing::error!(error = %e, jobs = sites.len(), "ingest transaction failed");
            for reply in replies {
                let _ = reply.send(Err(format!("ingest: {e}")));
            }
        }
    }
    Done::Ingest(cursors)
}

fn relay_outcome(r: &v1::CommandResult) -> CommandOutcome {
    match v1::CommandOutcome::try_from(r.outcome) {
        Ok(v1::CommandOutcome::Applied) => CommandOutcome::Applied,
        Ok(v1::CommandOutcome::NotFound) => CommandOutcome::NotFound,
        Ok(v1::CommandOutcome::NotParked) => CommandOutcome::NotParked,
        // Not applied, and the waiter is (about to be) out of time.
        Ok(v1::CommandOutcome::Expired) => CommandOutcome::Timeout,
        _ => CommandOutcome::Error(
            r.error
                .clone()
                .unwrap_or_else(|| format!("outcome {}", r.outcome)),
        ),
    }
}
