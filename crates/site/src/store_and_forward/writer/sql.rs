//! The writer's SQL: how each [`WriteOp`] changes the tracking table, the
//! buffer and the change sequence inside the open transaction (every row
//! change bumps its revision and takes the next sequence value; every
//! status change passes `check_transition`), and the purge statement. The
//! threads that run it and commit it are in the parent module.

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use sitelink_commons::{
    lifecycle::check_transition, Kind, TrackedOperationId, TrackedOperationStatus,
};

use super::{WriteOp, WriteResult};
use crate::store_and_forward::{
    AttemptKind, AttemptNote, AttemptOutcome, BulkItemOutcome, CommandOutcome, EngineError,
    ATTEMPTS_KEPT,
};

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

/// Appends an attempt to the row's history (same transaction as its
/// outcome) and keeps only the last [`ATTEMPTS_KEPT`].
fn record_attempt(
    tx: &Connection,
    key: &str,
    outcome: &AttemptOutcome,
    note: Option<&AttemptNote>,
    now_ms: i64,
) -> anyhow::Result<()> {
    let (name, error) = match outcome {
        AttemptOutcome::Delivered => ("Delivered", None),
        AttemptOutcome::Transient(e) => ("Transient", Some(e.as_str())),
        AttemptOutcome::Permanent(e) => ("Permanent", Some(e.as_str())),
    };
    let n: u32 = tx
        .prepare_cached("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE id = ?1")?
        .query_row([key], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO attempts(id, n, at_ms, duration_ms, outcome, error, code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        key,
        n,
        note.map_or(now_ms, |n| n.at_ms),
        note.map_or(0, |n| n.duration_ms),
        name,
        error,
        note.and_then(|n| n.code.as_deref()),
    ])?;
    if n > ATTEMPTS_KEPT {
        tx.prepare_cached("DELETE FROM attempts WHERE id = ?1 AND n <= ?2")?
            .execute(params![key, n - ATTEMPTS_KEPT])?;
    }
    Ok(())
}

/// What an operator's Retry (fresh budget, due at once) or Discard does to
/// a parked row.
fn operator_change(cur: &Current, retry: bool, now_ms: i64) -> Change<'static> {
    if retry {
        Change {
            to: TrackedOperationStatus::Retrying,
            retry_count: 0,
            last_error: None,
            buffer: BufferEntry::Due(now_ms),
        }
    } else {
        Change {
            to: TrackedOperationStatus::Discarded,
            retry_count: cur.retry_count,
            last_error: Some("discarded by operator"),
            buffer: BufferEntry::Absent,
        }
    }
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

pub(super) fn apply(
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
            note,
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
                Ok(()) => {
                    // An immediate success is the hot path: no history.
                    let at_once =
                        *attempt == AttemptKind::Immediate && *outcome == AttemptOutcome::Delivered;
                    if !at_once {
                        record_attempt(tx, key, outcome, note.as_ref(), *now_ms)?;
                    }
                    Ok(Ok(WriteResult::Status(to)))
                }
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
            *wake |= retry;
            let c = operator_change(&cur, retry, *now_ms);
            Ok(change(tx, seq, &key, &cur, c, *now_ms)?
                .map(|()| WriteResult::Command(CommandOutcome::Applied)))
        }
        WriteOp::OperatorBulk {
            key,
            retry,
            ids,
            now_ms,
        } => {
            let mut items = Vec::with_capacity(ids.len());
            let mut buf = [0; 36];
            for id in ids {
                let row = id.encode(&mut buf);
                let found = tx
                    .prepare_cached(
                        "SELECT status, retry_count, command_key, command_at_ms
                         FROM tracking WHERE id = ?1",
                    )?
                    .query_row([row], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, u32>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                        ))
                    })
                    .optional()?;
                let Some((status, retry_count, done_by, done_at)) = found else {
                    items.push(BulkItemOutcome::NotFound);
                    continue;
                };
                if done_by.as_deref() == Some(key.as_str()) {
                    // A repeat: this bulk action changed the row already.
                    items.push(BulkItemOutcome::Applied {
                        at_ms: done_at.unwrap_or(*now_ms),
                    });
                    continue;
                }
                let cur = Current {
                    status: status.parse().context("corrupt status in tracking table")?,
                    retry_count,
                };
                if cur.status != Parked {
                    items.push(BulkItemOutcome::NotParked(cur.status));
                    continue;
                }
                let c = operator_change(&cur, *retry, *now_ms);
                match change(tx, seq, row, &cur, c, *now_ms)? {
                    Ok(()) => {
                        tx.prepare_cached(
                            "UPDATE tracking SET command_key = ?2, command_at_ms = ?3 WHERE id = ?1",
                        )?
                        .execute(params![row, key, now_ms])?;
                        *wake |= *retry;
                        items.push(BulkItemOutcome::Applied { at_ms: *now_ms });
                    }
                    Err(e) => items.push(BulkItemOutcome::Error(e.to_string())),
                }
            }
            Ok(Ok(WriteResult::Bulk(items)))
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
        crate::store_and_forward::schema::migrate(&mut conn).unwrap();
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
