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
use rusqlite::Connection;
use sitelink_commons::{Kind, TrackedOperationId, TrackedOperationStatus};
use tokio::sync::{mpsc, oneshot, watch, Notify};

mod sql;

use super::{
    AttemptKind, AttemptNote, AttemptOutcome, BulkItemOutcome, CommandOutcome, EngineError,
    RetryPolicy,
};
use sql::apply;

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
        /// For the history (`None`: dated `now_ms`, no duration or code).
        note: Option<AttemptNote>,
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
    /// A bulk action's Retry/Discard of many ids, applied at most once per
    /// call and `key`.
    OperatorBulk {
        key: String,
        retry: bool,
        ids: Vec<TrackedOperationId>,
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
    Bulk(Vec<BulkItemOutcome>),
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

/// What callers hear when the buffer database could not write. A full disk
/// (SQLite's `SQLITE_FULL`, classified by code) is said in words a script
/// writer and an operator act on: the call was not recorded, so the script
/// got no id for it.
pub(super) fn storage_error(message: String, e: Option<&rusqlite::Error>) -> EngineError {
    match e {
        Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull => {
            EngineError::Storage(format!(
                "the site's disk is full: the call was not recorded (free space where the site \
                 keeps its data): {message}"
            ))
        }
        _ => EngineError::Storage(message),
    }
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
    cache_mib: u32,
) -> anyhow::Result<()> {
    // The syncer makes each commit durable; SQLite keeps the file
    // consistent under NORMAL (see the module doc).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The hot pages of every tree stay in SQLite's cache rather than being
    // read back from the OS on each batch (`cache_mib`, default 64 MiB; a
    // negative cache_size is in KiB).
    conn.pragma_update(None, "cache_size", -(i64::from(cache_mib) * 1024))?;
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
                let _ = job
                    .reply
                    .send(Err(storage_error(format!("{e:#}"), Some(&e))));
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
                let cause = e.chain().find_map(|c| c.downcast_ref::<rusqlite::Error>());
                for (reply, _) in batch.replies {
                    let _ = reply.send(Err(storage_error(message.clone(), cause)));
                }
                let _ = job.reply.send(Err(storage_error(message, cause)));
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
                    .map(|(r, _)| (r, Err(storage_error(message.clone(), Some(&e)))))
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
