//! The group-commit writer: two threads share the only write connection to
//! the buffer database.
//!
//! - The **writer** takes the operations callers send over a channel and
//!   applies each as it arrives inside one open transaction.
//! - The **syncer** commits the open transaction (with
//!   `synchronous=NORMAL`: no fsync of its own), `fdatasync`s the WAL file,
//!   and only then answers the batch's callers, publishes the new durable
//!   change sequence and lets reads that saw it return. Then it commits
//!   whatever the writer applied meanwhile, and so on.
//!
//! So the fsync of one batch overlaps applying the next, one fsync covers a
//! whole batch, and no hand-off between threads sits between one fsync and
//! the next commit (the syncer does both; on 2 cores a writer woken to
//! commit waited behind the callers the fsync had just woken).
//!
//! Durability is that of `synchronous=FULL`, by a different hand: SQLite
//! keeps the file consistent under NORMAL (it syncs the WAL before each
//! checkpoint, the database file after it, and the WAL header when the WAL
//! is reused), and the syncer adds the one sync FULL would add: the WAL
//! after each commit, before anyone hears of it. Invariant: no caller is
//! answered, no change sequence published and no read answered (see
//! `Engine::read`) with anything that a power loss could still take back.
//! What SQLite readers may briefly see (a commit before its fsync) is held
//! back by the commit generations: [`Signals::committed_gen`] is raised
//! before each COMMIT, [`Signals::durable_gen`] after the fsync that covers
//! it.
//!
//! Why threads of their own with rusqlite rather than sqlx: at high
//! concurrency the limit is per-statement overhead and fsync; dedicated
//! threads with cached prepared statements and one sync per batch are what
//! let durable cached calls keep up with plain calls (BENCHMARKS.md).
//!
//! Invariants: every row change bumps the row's `revision` by one and takes
//! the next value of the site-wide change sequence, in the same transaction;
//! every status change passes [`check_transition`]; the sequence counter is
//! persisted in `meta` in the same transaction as the rows that used it; a
//! transaction that fails rolls back whole, its sequence values are used
//! again (so the sequence has no gaps), and each of its callers hears the
//! error.

use std::{
    fs::File,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::Instant,
};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use sitelink_commons::{
    lifecycle::check_transition, Kind, TrackedOperationId, TrackedOperationStatus,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::{AttemptKind, AttemptOutcome, CommandOutcome, EngineError, RetryPolicy};

/// Most operations one transaction takes; bounds commit latency (the
/// writer waits for the syncer to take a full batch).
const MAX_BATCH: usize = 1024;

pub(super) enum WriteOp {
    /// The request is serialized by the caller: the writer thread is the
    /// bottleneck under load, so it does only SQL.
    Insert {
        id: TrackedOperationId,
        kind: Kind,
        target_summary: String,
        request_json: String,
        provenance: String,
        now_ms: i64,
    },
    Outcome {
        id: TrackedOperationId,
        attempt: AttemptKind,
        outcome: AttemptOutcome,
        policy: RetryPolicy,
        now_ms: i64,
    },
    OperatorRetry {
        id: TrackedOperationId,
        now_ms: i64,
    },
    OperatorDiscard {
        id: TrackedOperationId,
        now_ms: i64,
    },
    SetAckedCursor(u64),
    Purge {
        acked_before_ms: i64,
        hard_before_ms: i64,
    },
    RecoverInFlight {
        now_ms: i64,
    },
    /// Central acknowledged these forwarded notifications.
    MarkForwarded {
        ids: Vec<TrackedOperationId>,
        now_ms: i64,
    },
}

pub(super) enum WriteResult {
    Inserted,
    Status(TrackedOperationStatus),
    Command(CommandOutcome),
    Count(u64),
}

type Reply = oneshot::Sender<Result<WriteResult, EngineError>>;

pub(super) struct Job {
    pub op: WriteOp,
    pub reply: Reply,
}

/// Shared counters and wake-ups the writer and syncer publish.
pub(super) struct Signals {
    /// Transactions committed, operations in them, fsyncs that covered them.
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub syncs: AtomicU64,
    /// Nanoseconds spent applying statements (the writer: SQLite CPU, page
    /// cache), in `COMMIT` (the syncer: writing the WAL, no fsync) and in
    /// fsync (the syncer), for the benchmarks' account of what binds.
    pub statements_ns: AtomicU64,
    pub commit_ns: AtomicU64,
    pub sync_ns: AtomicU64,
    /// Highest durable change sequence (telemetry forwarder waits on it).
    pub high_seq: watch::Sender<u64>,
    /// Raised by the syncer before each COMMIT: a reader that saw a commit
    /// reads a generation at least as high afterwards.
    pub committed_gen: AtomicU64,
    /// Highest generation made durable (or rolled back: nothing to wait for).
    pub durable_gen: watch::Sender<u64>,
    /// An fsync failed: what was written may not be on disk, so nothing more
    /// is accepted or answered (the site must be restarted).
    pub broken: AtomicBool,
    /// Woken when a buffer entry became due now (operator retry, recovery).
    pub buffer_due: Notify,
    /// Notifications recorded so far (`Notify.Send`), bumped before
    /// `high_seq` is published: the forwarder looks for notifications to
    /// send only when this moved, not on every commit.
    pub notifications: AtomicU64,
    /// Tests hold syncs back to prove nothing is answered before them.
    pub(super) sync_gate: (Mutex<bool>, Condvar),
}

impl Signals {
    pub fn new() -> Self {
        Self {
            commits: Default::default(),
            ops: Default::default(),
            syncs: Default::default(),
            statements_ns: Default::default(),
            commit_ns: Default::default(),
            sync_ns: Default::default(),
            high_seq: watch::channel(0).0,
            committed_gen: Default::default(),
            durable_gen: watch::channel(0).0,
            broken: Default::default(),
            buffer_due: Default::default(),
            notifications: Default::default(),
            sync_gate: (Mutex::new(false), Condvar::new()),
        }
    }
}

/// The error every caller hears once an fsync failed.
pub(super) fn broken_error() -> EngineError {
    EngineError::Storage("the buffer database could not be synced to disk; restart the site".into())
}

/// The transaction the writer has open, with its callers.
struct Open {
    replies: Vec<(Reply, Result<WriteResult, EngineError>)>,
    seq_before: u64,
    wake: bool,
    notifications: u64,
}

/// What the writer and syncer share under one lock: the connection, the
/// change sequence and the open transaction.
struct Shared {
    conn: Connection,
    seq: u64,
    gen: u64,
    open: Option<Open>,
    /// Every Engine handle is gone: the syncer finishes what is open.
    closed: bool,
}

struct Pipeline {
    shared: Mutex<Shared>,
    /// The syncer waits here for something to commit ...
    work: Condvar,
    syncer_waiting: AtomicBool,
    /// ... and the writer here while a full batch waits for the syncer.
    taken: Condvar,
}

impl Pipeline {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the writer and syncer threads on `conn`, the connection to the
/// database at `path` (whose WAL file the syncer syncs).
pub(super) fn spawn(
    conn: Connection,
    path: &Path,
    rx: mpsc::Receiver<Job>,
    signals: Arc<Signals>,
) -> anyhow::Result<()> {
    // The syncer makes each commit durable; SQLite keeps the file
    // consistent under NORMAL (see the module doc).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The hot pages of every tree stay in SQLite's cache rather than being
    // read back from the OS on each batch (64 MiB).
    conn.pragma_update(None, "cache_size", -65536)?;
    // Checkpoints (on the committing thread) less often: pages rewritten
    // by many batches are copied to the database file once.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
    // A write makes sure the WAL file exists before it is opened here.
    conn.execute("UPDATE meta SET value = value WHERE key = 'change_seq'", [])?;
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal = File::open(&wal_path)
        .with_context(|| format!("opening {}", Path::new(&wal_path).display()))?;
    wal.sync_data()
        .context("syncing the buffer database's WAL")?;
    let seq: u64 = conn.query_row("SELECT value FROM meta WHERE key = 'change_seq'", [], |r| {
        r.get(0)
    })?;
    signals.high_seq.send_replace(seq);
    let pipeline = Arc::new(Pipeline {
        shared: Mutex::new(Shared {
            conn,
            seq,
            gen: 0,
            open: None,
            closed: false,
        }),
        work: Condvar::new(),
        syncer_waiting: AtomicBool::new(false),
        taken: Condvar::new(),
    });
    let (p, s) = (pipeline.clone(), signals.clone());
    std::thread::Builder::new()
        .name("sf-syncer".into())
        .spawn(move || syncer(wal, &p, &s))
        .context("spawning the store-and-forward syncer thread")?;
    std::thread::Builder::new()
        .name("sf-writer".into())
        .spawn(move || writer(rx, &pipeline, &signals))
        .context("spawning the store-and-forward writer thread")?;
    Ok(())
}

fn writer(mut rx: mpsc::Receiver<Job>, pipeline: &Pipeline, signals: &Signals) {
    // Ends when every Engine handle (sender) is gone.
    while let Some(job) = rx.blocking_recv() {
        if signals.broken.load(Ordering::Acquire) {
            let _ = job.reply.send(Err(broken_error()));
            continue;
        }
        let mut guard = pipeline.lock();
        while guard
            .open
            .as_ref()
            .is_some_and(|o| o.replies.len() >= MAX_BATCH)
        {
            guard = pipeline
                .taken
                .wait(guard)
                .unwrap_or_else(|p| p.into_inner());
        }
        let started = Instant::now();
        let shared = &mut *guard;
        if shared.open.is_none() {
            if let Err(e) = shared.conn.execute_batch("BEGIN") {
                let _ = job.reply.send(Err(EngineError::Storage(format!("{e:#}"))));
                continue;
            }
            shared.open = Some(Open {
                replies: Vec::with_capacity(64),
                seq_before: shared.seq,
                wake: false,
                notifications: 0,
            });
        }
        let batch = shared.open.as_mut().expect("opened above");
        let applied = apply(&shared.conn, &mut shared.seq, &job.op, &mut batch.wake);
        signals
            .statements_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match applied {
            Ok(result) => {
                if matches!(
                    (&job.op, &result),
                    (
                        WriteOp::Insert {
                            kind: Kind::Notification,
                            ..
                        },
                        Ok(_)
                    )
                ) {
                    batch.notifications += 1;
                }
                batch.replies.push((job.reply, result));
            }
            Err(e) => {
                // A statement failed below the domain rules: the whole
                // transaction goes (nobody saw it: it never committed),
                // and every caller in it hears why.
                let batch = shared.open.take().expect("open");
                let _ = shared.conn.execute_batch("ROLLBACK");
                shared.seq = batch.seq_before;
                let message = format!("{e:#}");
                tracing::error!(error = %message, "buffer database write failed");
                drop(guard);
                for (reply, _) in batch.replies {
                    let _ = reply.send(Err(EngineError::Storage(message.clone())));
                }
                let _ = job.reply.send(Err(EngineError::Storage(message)));
                continue;
            }
        }
        drop(guard);
        // Only a waiting syncer needs the (syscall) wake-up.
        if pipeline.syncer_waiting.load(Ordering::Acquire) {
            let _guard = pipeline.lock();
            pipeline.work.notify_one();
        }
    }
    pipeline.lock().closed = true;
    pipeline.work.notify_one();
}

/// A committed (or rolled-back) batch the syncer answers.
struct Committed {
    replies: Vec<(Reply, Result<WriteResult, EngineError>)>,
    gen: u64,
    /// The change sequence after it (published once durable).
    seq: u64,
    wake: bool,
    notifications: u64,
}

/// Commits the open transaction, if any (waiting for one otherwise);
/// `None` once the writer is gone and nothing is left.
fn take_and_commit(pipeline: &Pipeline, signals: &Signals) -> Option<Result<Committed, Committed>> {
    let mut guard = pipeline.lock();
    let batch = loop {
        if let Some(batch) = guard.open.take() {
            break batch;
        }
        if guard.closed {
            return None;
        }
        pipeline.syncer_waiting.store(true, Ordering::Release);
        guard = pipeline.work.wait(guard).unwrap_or_else(|p| p.into_inner());
        pipeline.syncer_waiting.store(false, Ordering::Release);
    };
    let started = Instant::now();
    let shared = &mut *guard;
    shared.gen += 1;
    // Before COMMIT: a reader that sees this commit then reads this
    // generation or a later one, and waits for its fsync.
    signals.committed_gen.store(shared.gen, Ordering::Release);
    let committed = shared
        .conn
        .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'change_seq'")
        .and_then(|mut s| s.execute([shared.seq]))
        .and_then(|_| shared.conn.execute_batch("COMMIT"));
    let result = match committed {
        Ok(()) => {
            signals.commits.fetch_add(1, Ordering::Relaxed);
            signals
                .ops
                .fetch_add(batch.replies.len() as u64, Ordering::Relaxed);
            Ok(Committed {
                replies: batch.replies,
                gen: shared.gen,
                seq: shared.seq,
                wake: batch.wake,
                notifications: batch.notifications,
            })
        }
        Err(e) => {
            let _ = shared.conn.execute_batch("ROLLBACK");
            shared.seq = batch.seq_before;
            let message = format!("{e:#}");
            tracing::error!(error = %message, "buffer database commit failed");
            Err(Committed {
                replies: batch
                    .replies
                    .into_iter()
                    .map(|(r, _)| (r, Err(EngineError::Storage(message.clone()))))
                    .collect(),
                gen: shared.gen,
                seq: shared.seq,
                wake: false,
                notifications: 0,
            })
        }
    };
    drop(guard);
    pipeline.taken.notify_one();
    signals
        .commit_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Some(result)
}

fn syncer(wal: File, pipeline: &Pipeline, signals: &Signals) {
    while let Some(batch) = take_and_commit(pipeline, signals) {
        let batch = match batch {
            Ok(batch) => batch,
            Err(failed) => {
                // Rolled back: nothing to sync. Readers that noted its
                // generation before the COMMIT failed need not wait.
                signals.durable_gen.send_replace(failed.gen);
                for (reply, result) in failed.replies {
                    let _ = reply.send(result);
                }
                continue;
            }
        };
        {
            let (held, released) = &signals.sync_gate;
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            while *held {
                held = released.wait(held).unwrap_or_else(|p| p.into_inner());
            }
        }
        let started = Instant::now();
        let synced = wal.sync_data();
        signals
            .sync_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        signals.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = synced {
            // What was written may not be on disk, and a later fsync may
            // not say so: stop (as PostgreSQL does) rather than go on.
            tracing::error!(error = %e, "fsync of the buffer database's WAL failed; the engine stops accepting writes");
            signals.broken.store(true, Ordering::Release);
            signals.durable_gen.send_modify(|_| {});
            for (reply, _) in batch.replies {
                let _ = reply.send(Err(broken_error()));
            }
            continue;
        }
        if batch.notifications > 0 {
            signals
                .notifications
                .fetch_add(batch.notifications, Ordering::Release);
        }
        signals.durable_gen.send_replace(batch.gen);
        if batch.seq != *signals.high_seq.borrow() {
            signals.high_seq.send_replace(batch.seq);
        }
        if batch.wake {
            signals.buffer_due.notify_one();
        }
        for (reply, result) in batch.replies {
            let _ = reply.send(result);
        }
    }
}

/// Deletes what retention lets go: terminal rows that ended before ?1 and
/// that central acknowledged, terminal rows that ended before ?2 (the hard
/// limit), and notifications forwarded before ?1; ?3 is the lowest id of
/// the later cutoff, so only rows older than it are read.
const PURGE: &str = "DELETE FROM tracking
     WHERE id < ?3
       AND ( (terminal_at_ms IS NOT NULL
              AND ( (terminal_at_ms < ?1
                     AND change_seq <= (SELECT value FROM meta WHERE key = 'acked_cursor'))
                 OR terminal_at_ms < ?2 ))
             -- A forwarded notification: central owns it now.
             OR (kind = 'Notification' AND forwarded_at_ms < ?1) )";

/// The row fields a change needs to know.
struct Current {
    status: TrackedOperationStatus,
    retry_count: u32,
}

fn current(tx: &Connection, id: &str) -> anyhow::Result<Option<Current>> {
    let mut stmt = tx.prepare_cached("SELECT status, retry_count FROM tracking WHERE id = ?1")?;
    let row = stmt
        .query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .optional()?;
    row.map(|(s, retry_count)| {
        Ok(Current {
            status: s.parse().context("corrupt status in tracking table")?,
            retry_count,
        })
    })
    .transpose()
}

/// The one place a tracking row changes after insert.
struct Change<'a> {
    to: TrackedOperationStatus,
    retry_count: u32,
    last_error: Option<&'a str>,
    buffer: BufferEntry,
}

/// What a change does to the row's buffer entry.
enum BufferEntry {
    /// (Re)write it, due at this time (ms since epoch).
    Due(i64),
    /// Delete it.
    Remove,
    /// There is none (immediate attempt, parked row): nothing to do.
    Absent,
}

fn change(
    tx: &Connection,
    seq: &mut u64,
    id: &str,
    from: &Current,
    c: Change,
    now_ms: i64,
) -> anyhow::Result<Result<(), EngineError>> {
    // A status that stays the same (Pending after a failed immediate attempt)
    // is a field update, not a transition.
    if c.to != from.status {
        if let Err(e) = check_transition(Some(from.status), c.to) {
            return Ok(Err(EngineError::Transition(e)));
        }
    }
    let terminal = c.to.is_terminal();
    // Guarded by the status the change was computed from: if the row is not
    // in that status (only possible on the fast path, which assumes it),
    // nothing changes and the caller finds out why.
    // Positional parameters: named ones cost a name lookup each, on the
    // hot path of every cached call.
    let updated = tx
        .prepare_cached(
            "UPDATE tracking SET status = ?1, retry_count = ?2, last_error = ?3,
             updated_at_ms = ?4, terminal_at_ms = CASE WHEN ?5 THEN ?4 ELSE NULL END,
             revision = revision + 1, change_seq = ?6,
             request = CASE WHEN ?5 THEN NULL ELSE request END
         WHERE id = ?7 AND status = ?8",
        )?
        .execute(params![
            c.to.as_str(),
            c.retry_count,
            c.last_error,
            now_ms,
            terminal,
            *seq + 1,
            id,
            from.status.as_str(),
        ])?;
    if updated == 0 {
        return Ok(Err(EngineError::Storage(format!(
            "tracking row {id} is not {}",
            from.status
        ))));
    }
    *seq += 1;
    match c.buffer {
        BufferEntry::Due(due) => {
            tx.prepare_cached(
                "INSERT INTO buffer(id, category, next_attempt_at_ms)
                 SELECT id, kind, ?2 FROM tracking WHERE id = ?1
                 ON CONFLICT(id) DO UPDATE SET next_attempt_at_ms = excluded.next_attempt_at_ms",
            )?
            .execute(params![id, due])?;
        }
        BufferEntry::Remove => {
            tx.prepare_cached("DELETE FROM buffer WHERE id = ?1")?
                .execute([id])?;
        }
        BufferEntry::Absent => {}
    }
    Ok(Ok(()))
}

fn apply(
    tx: &Connection,
    seq: &mut u64,
    op: &WriteOp,
    wake: &mut bool,
) -> anyhow::Result<Result<WriteResult, EngineError>> {
    use TrackedOperationStatus::*;
    match op {
        WriteOp::Insert {
            id,
            kind,
            target_summary,
            request_json,
            provenance,
            now_ms,
        } => {
            *seq += 1;
            let mut buf = [0; 36];
            let key = id.encode(&mut buf);
            tx.prepare_cached(
                "INSERT INTO tracking(id, kind, target_summary, status, retry_count, provenance,
                     created_at_ms, updated_at_ms, revision, change_seq, request)
                 VALUES (?1, ?2, ?3, 'Pending', 0, ?4, ?5, ?5, 1, ?6, ?7)",
            )?
            .execute(params![
                key,
                kind.as_str(),
                target_summary,
                provenance,
                now_ms,
                *seq,
                request_json
            ])?;
            if *kind == Kind::Notification {
                // Not yet forwarded: the forwarder's work list.
                tx.prepare_cached(
                    "INSERT INTO buffer(id, category, next_attempt_at_ms) VALUES (?1, 'Notification', ?2)",
                )?
                .execute(params![key, now_ms])?;
            }
            Ok(Ok(WriteResult::Inserted))
        }
        WriteOp::Outcome {
            id,
            attempt,
            outcome,
            policy,
            now_ms,
        } => {
            let mut buf = [0; 36];
            let key = id.encode(&mut buf);
            // Fast path: the immediate attempt is for a row that was just
            // recorded, so it is Pending with no retries; `change` checks
            // that in its UPDATE and we read the row only if it was not.
            let cur = if *attempt == AttemptKind::Immediate {
                Current {
                    status: Pending,
                    retry_count: 0,
                }
            } else {
                match current(tx, key)? {
                    Some(cur) => cur,
                    None => return Ok(Err(EngineError::NotFound(*id))),
                }
            };
            // Only operations being delivered take attempt outcomes: a late
            // outcome for a parked or terminal row changes nothing.
            // The immediate attempt belongs to a new (Pending) row only.
            let in_flight = match attempt {
                AttemptKind::Immediate => cur.status == Pending,
                AttemptKind::Retry => matches!(cur.status, Pending | Retrying),
            };
            if !in_flight {
                return Ok(Err(EngineError::NotInFlight {
                    id: *id,
                    status: cur.status,
                }));
            }
            // An immediate attempt never has a buffer entry to remove.
            let no_entry = if *attempt == AttemptKind::Immediate {
                BufferEntry::Absent
            } else {
                BufferEntry::Remove
            };
            let c = match (outcome, attempt) {
                (AttemptOutcome::Delivered, _) => Change {
                    to: Delivered,
                    retry_count: cur.retry_count,
                    last_error: None,
                    buffer: no_entry,
                },
                (AttemptOutcome::Permanent(e), _) => Change {
                    to: Failed,
                    retry_count: cur.retry_count,
                    last_error: Some(e),
                    buffer: no_entry,
                },
                (AttemptOutcome::Transient(e), AttemptKind::Immediate)
                    if policy.max_retries == 0 =>
                {
                    Change {
                        to: Parked,
                        retry_count: 0,
                        last_error: Some(e),
                        buffer: no_entry,
                    }
                }
                // Buffered; the row stays Pending (a field update, not a
                // transition; anything but Pending fails the check).
                (AttemptOutcome::Transient(e), AttemptKind::Immediate) => Change {
                    to: Pending,
                    retry_count: cur.retry_count,
                    last_error: Some(e),
                    buffer: BufferEntry::Due(now_ms + policy.delay(0).as_millis() as i64),
                },
                (AttemptOutcome::Transient(e), AttemptKind::Retry) => {
                    let retries = cur.retry_count + 1;
                    if retries >= policy.max_retries {
                        Change {
                            to: Parked,
                            retry_count: retries,
                            last_error: Some(e),
                            buffer: BufferEntry::Remove,
                        }
                    } else {
                        Change {
                            to: Retrying,
                            retry_count: retries,
                            last_error: Some(e),
                            buffer: BufferEntry::Due(
                                now_ms + policy.delay(retries).as_millis() as i64,
                            ),
                        }
                    }
                }
            };
            let to = c.to;
            match change(tx, seq, key, &cur, c, *now_ms)? {
                Ok(()) => Ok(Ok(WriteResult::Status(to))),
                // The fast path's assumption did not hold: say why.
                Err(_) if *attempt == AttemptKind::Immediate => Ok(Err(match current(tx, key)? {
                    None => EngineError::NotFound(*id),
                    Some(actual) => EngineError::NotInFlight {
                        id: *id,
                        status: actual.status,
                    },
                })),
                Err(e) => Ok(Err(e)),
            }
        }
        WriteOp::OperatorRetry { id, now_ms } | WriteOp::OperatorDiscard { id, now_ms } => {
            let key = id.to_string();
            let Some(cur) = current(tx, &key)? else {
                return Ok(Ok(WriteResult::Command(CommandOutcome::NotFound)));
            };
            if cur.status != Parked {
                return Ok(Ok(WriteResult::Command(CommandOutcome::NotParked(
                    cur.status,
                ))));
            }
            let retry = matches!(op, WriteOp::OperatorRetry { .. });
            let c = if retry {
                // Fresh retry budget, due at once.
                Change {
                    to: Retrying,
                    retry_count: 0,
                    last_error: None,
                    buffer: BufferEntry::Due(*now_ms),
                }
            } else {
                Change {
                    to: Discarded,
                    retry_count: cur.retry_count,
                    last_error: Some("discarded by operator"),
                    buffer: BufferEntry::Absent,
                }
            };
            *wake |= retry;
            Ok(change(tx, seq, &key, &cur, c, *now_ms)?
                .map(|()| WriteResult::Command(CommandOutcome::Applied)))
        }
        WriteOp::SetAckedCursor(cursor) => {
            // The cursor only moves forward; an old acknowledgement is harmless.
            tx.prepare_cached("UPDATE meta SET value = MAX(value, ?1) WHERE key = 'acked_cursor'")?
                .execute([*cursor])?;
            Ok(Ok(WriteResult::Count(0)))
        }
        WriteOp::Purge {
            acked_before_ms,
            hard_before_ms,
        } => {
            // Every row purged ended (or was forwarded) before the later
            // cutoff, so it began before it too: its id (UUID v7) is below
            // the lowest id of that millisecond. The scan reads old rows by
            // the primary key, never the whole table.
            let created_before = TrackedOperationId::lowest_at(
                (*acked_before_ms).max(*hard_before_ms).max(0) as u64,
            );
            let mut buf = [0; 36];
            let n = tx.prepare_cached(PURGE)?.execute(params![
                acked_before_ms,
                hard_before_ms,
                created_before.encode(&mut buf)
            ])?;
            Ok(Ok(WriteResult::Count(n as u64)))
        }
        WriteOp::MarkForwarded { ids, now_ms } => {
            let mut n = 0;
            let mut buf = [0; 36];
            for id in ids {
                let key = id.encode(&mut buf);
                tx.prepare_cached(
                    "DELETE FROM buffer WHERE id = ?1 AND category = 'Notification'",
                )?
                .execute([key])?;
                n += tx
                    .prepare_cached(
                        "UPDATE tracking SET forwarded_at_ms = ?2, request = NULL
                         WHERE id = ?1 AND kind = 'Notification' AND forwarded_at_ms IS NULL",
                    )?
                    .execute(params![key, now_ms])?;
            }
            Ok(Ok(WriteResult::Count(n as u64)))
        }
        WriteOp::RecoverInFlight { now_ms } => {
            // Rows that are Pending/Retrying without a buffer entry were in
            // flight when the process stopped: make them due now.
            let n = tx
                .prepare_cached(
                    "INSERT INTO buffer(id, category, next_attempt_at_ms)
                     SELECT t.id, t.kind, ?1 FROM tracking t
                     WHERE t.status IN ('Pending', 'Retrying') AND t.kind <> 'Notification'
                       AND NOT EXISTS (SELECT 1 FROM buffer b WHERE b.id = t.id)",
                )?
                .execute([now_ms])?;
            *wake |= n > 0;
            Ok(Ok(WriteResult::Count(n as u64)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_reads_old_rows_by_the_primary_key_not_the_whole_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {PURGE}"))
            .unwrap()
            .query_map(params![0, 0, ""], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH tracking USING PRIMARY KEY (id<?)")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN tracking")),
            "{plan:?}"
        );
    }
}
