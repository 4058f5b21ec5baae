//! The group-commit writer: one thread owns the only write connection to the
//! buffer database. Callers send [`WriteOp`]s over a channel; the thread
//! takes everything queued, applies it in ONE transaction, commits once
//! (synchronous=FULL) and only then answers each caller.
//!
//! Why a thread of its own with rusqlite rather than sqlx: at high
//! concurrency the limit is per-statement overhead, not fsync; a dedicated
//! thread with cached prepared statements and one commit per batch is what
//! lets durable cached calls keep up with plain calls (see BENCHMARKS.md).
//!
//! Invariants: every row change bumps the row's `revision` by one and takes
//! the next value of the site-wide change sequence, in the same transaction;
//! every status change passes [`check_transition`]; the sequence counter is
//! persisted in `meta` in the same transaction as the rows that used it.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use anyhow::Context;
use rusqlite::{named_params, params, OptionalExtension, Transaction};
use sitelink_commons::{
    lifecycle::check_transition, Kind, TrackedOperationId, TrackedOperationStatus,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::{AttemptKind, AttemptOutcome, CommandOutcome, EngineError, RetryPolicy};

/// Most operations one transaction takes; bounds commit latency.
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

pub(super) struct Job {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteResult, EngineError>>,
}

/// Shared counters and wake-ups the writer publishes after each commit.
pub(super) struct Signals {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    /// Nanoseconds the writer spent applying statements (SQLite CPU, page
    /// cache) and in `COMMIT` (the WAL write and its fsync), for the
    /// benchmarks' account of what binds.
    pub statements_ns: AtomicU64,
    pub commit_ns: AtomicU64,
    /// Highest committed change sequence (telemetry forwarder waits on it).
    pub high_seq: watch::Sender<u64>,
    /// Woken when a buffer entry became due now (operator retry, recovery).
    pub buffer_due: Notify,
    /// Notifications recorded so far (`Notify.Send`), bumped before
    /// `high_seq` is published: the forwarder looks for notifications to
    /// send only when this moved, not on every commit.
    pub notifications: AtomicU64,
}

pub(super) fn spawn(
    mut conn: rusqlite::Connection,
    mut rx: mpsc::Receiver<Job>,
    signals: Arc<Signals>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut seq: u64 =
        conn.query_row("SELECT value FROM meta WHERE key = 'change_seq'", [], |r| {
            r.get(0)
        })?;
    signals.high_seq.send_replace(seq);
    std::thread::Builder::new()
        .name("sf-writer".into())
        .spawn(move || {
            let mut batch: Vec<Job> = Vec::with_capacity(64);
            // Ends when every Engine handle (sender) is gone.
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let seq_before = seq;
                match apply_batch(&mut conn, &mut seq, &batch, &signals) {
                    Ok((results, wake)) => {
                        signals.commits.fetch_add(1, Ordering::Relaxed);
                        signals.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        let notifications = batch
                            .iter()
                            .filter(|j| {
                                matches!(
                                    j.op,
                                    WriteOp::Insert {
                                        kind: Kind::Notification,
                                        ..
                                    }
                                )
                            })
                            .count();
                        if notifications > 0 {
                            signals
                                .notifications
                                .fetch_add(notifications as u64, Ordering::Release);
                        }
                        if seq != seq_before {
                            signals.high_seq.send_replace(seq);
                        }
                        if wake {
                            signals.buffer_due.notify_one();
                        }
                        for (job, res) in batch.drain(..).zip(results) {
                            let _ = job.reply.send(res);
                        }
                    }
                    Err(e) => {
                        // The transaction rolled back: nothing of this batch
                        // is stored, so every caller hears the failure.
                        seq = seq_before;
                        tracing::error!(error = %format!("{e:#}"), "buffer database commit failed");
                        for job in batch.drain(..) {
                            let _ = job.reply.send(Err(EngineError::Storage(format!("{e:#}"))));
                        }
                    }
                }
            }
        })
        .context("spawning the store-and-forward writer thread")
}

type BatchResults = (Vec<Result<WriteResult, EngineError>>, bool);

fn apply_batch(
    conn: &mut rusqlite::Connection,
    seq: &mut u64,
    batch: &[Job],
    signals: &Signals,
) -> anyhow::Result<BatchResults> {
    let started = std::time::Instant::now();
    let tx = conn.transaction()?;
    let mut results = Vec::with_capacity(batch.len());
    let mut wake = false;
    for job in batch {
        results.push(apply(&tx, seq, &job.op, &mut wake)?);
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'change_seq'",
        [*seq],
    )?;
    let committing = std::time::Instant::now();
    tx.commit()?;
    let done = std::time::Instant::now();
    signals
        .statements_ns
        .fetch_add((committing - started).as_nanos() as u64, Ordering::Relaxed);
    signals
        .commit_ns
        .fetch_add((done - committing).as_nanos() as u64, Ordering::Relaxed);
    Ok((results, wake))
}

/// The row fields a change needs to know.
struct Current {
    status: TrackedOperationStatus,
    retry_count: u32,
}

fn current(tx: &Transaction, id: &str) -> anyhow::Result<Option<Current>> {
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
    tx: &Transaction,
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
    let updated = tx
        .prepare_cached(
            "UPDATE tracking SET status = :status, retry_count = :retry_count, last_error = :last_error,
             updated_at_ms = :now, terminal_at_ms = CASE WHEN :terminal THEN :now ELSE NULL END,
             revision = revision + 1, change_seq = :seq,
             request = CASE WHEN :terminal THEN NULL ELSE request END
         WHERE id = :id AND status = :from",
        )?
        .execute(named_params! {
            ":status": c.to.as_str(), ":retry_count": c.retry_count, ":last_error": c.last_error,
            ":now": now_ms, ":terminal": terminal, ":seq": *seq + 1, ":id": id,
            ":from": from.status.as_str(),
        })?;
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
    tx: &Transaction,
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
            tx.prepare_cached(
                "INSERT INTO tracking(id, kind, target_summary, status, retry_count, provenance,
                     created_at_ms, updated_at_ms, revision, change_seq, request)
                 VALUES (?1, ?2, ?3, 'Pending', 0, ?4, ?5, ?5, 1, ?6, ?7)",
            )?
            .execute(params![
                id.to_string(),
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
                .execute(params![id.to_string(), now_ms])?;
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
            let key = id.to_string();
            // Fast path: the immediate attempt is for a row that was just
            // recorded, so it is Pending with no retries; `change` checks
            // that in its UPDATE and we read the row only if it was not.
            let cur = if *attempt == AttemptKind::Immediate {
                Current {
                    status: Pending,
                    retry_count: 0,
                }
            } else {
                match current(tx, &key)? {
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
            match change(tx, seq, &key, &cur, c, *now_ms)? {
                Ok(()) => Ok(Ok(WriteResult::Status(to))),
                // The fast path's assumption did not hold: say why.
                Err(_) if *attempt == AttemptKind::Immediate => Ok(Err(match current(tx, &key)? {
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
            let n = tx
                .prepare_cached(
                    "DELETE FROM tracking
                     WHERE (terminal_at_ms IS NOT NULL
                       AND ( (terminal_at_ms < ?1
                              AND change_seq <= (SELECT value FROM meta WHERE key = 'acked_cursor'))
                          OR terminal_at_ms < ?2 ))
                        -- A forwarded notification: central owns it now.
                        OR (kind = 'Notification' AND forwarded_at_ms < ?1)",
                )?
                .execute(params![acked_before_ms, hard_before_ms])?;
            Ok(Ok(WriteResult::Count(n as u64)))
        }
        WriteOp::MarkForwarded { ids, now_ms } => {
            let mut n = 0;
            for id in ids {
                let key = id.to_string();
                tx.prepare_cached(
                    "DELETE FROM buffer WHERE id = ?1 AND category = 'Notification'",
                )?
                .execute([&key])?;
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
