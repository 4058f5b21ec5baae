//! The engine's reads: records, listings, the changes after a sequence,
//! due buffer entries, counts. They run on the reader connection (never
//! the writer's) and answer only with what is durable: [`Engine::read`]
//! waits until every commit the query could have seen is fsynced.

use std::sync::atomic::Ordering;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sitelink_commons::{
    unix_ms_to_utc, TrackedOperationId, TrackedOperationStatus, TrackingRecord,
};

use super::{writer, AttemptRecord, DeliveryRequest, DueEntry, Engine, EngineError, ForwardItem};

/// An operation's attempt history and what it would send: what central's
/// detail page and the admin API show an operator about to replay or
/// discard it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct History {
    /// The last attempts, oldest first (none for a call that succeeded at
    /// once).
    pub attempts: Vec<AttemptRecord>,
    /// The request as stored for retries (target, method and parameters,
    /// or connection, statement and parameters), values under names that
    /// look secret masked; `None` once the operation ended (the site drops
    /// it then).
    pub request: Option<serde_json::Value>,
}

/// Names whose values a shown request masks (case-insensitive, anywhere
/// in the name).
const SECRET_NAMES: [&str; 7] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "authorization",
];

/// Masks, at any depth, the value of every member whose name looks secret.
pub fn mask_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                let name = k.to_ascii_lowercase();
                if SECRET_NAMES.iter().any(|s| name.contains(s)) {
                    *v = serde_json::Value::String("***".into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// The record's columns, then (13th) when central acknowledged a forwarded
/// notification.
pub(super) const SELECT_RECORD: &str =
    "SELECT id, kind, target_summary, status, retry_count, last_error, provenance,
        created_at_ms, updated_at_ms, terminal_at_ms, revision, change_seq, forwarded_at_ms FROM tracking";

/// A forwarded notification: central owns its delivery, so it is no work
/// of the site's (the SQL of [`LocalRecord::forwarded_at_utc`]).
pub(super) const FORWARDED: &str = "(kind = 'Notification' AND forwarded_at_ms IS NOT NULL)";

/// A tracking record as the site's own admin API shows it: the §7 record,
/// and for a notification when central acknowledged it (from then on
/// central owns its delivery: it is forwarded, not pending work here).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalRecord {
    #[serde(flatten)]
    pub record: TrackingRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_at_utc: Option<String>,
}

/// Counts per status of the site's own work, and forwarded notifications
/// apart (they are central's now).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub by_status: Vec<(TrackedOperationStatus, u64)>,
    pub forwarded_notifications: u64,
}

impl Engine {
    /// Runs a query on the reader connection and answers once everything
    /// it could have seen is durable. SQLite shows a commit to readers
    /// before the syncer's fsync; this waits that out (at most one fsync),
    /// so no read answers with what a power loss could take back.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, EngineError> {
        let reader = self.reader.clone();
        let signals = self.signals.clone();
        let (value, seen) = tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            let value = f(&conn);
            // After the query: at least the generation of every commit it saw.
            (value, signals.committed_gen.load(Ordering::Acquire))
        })
        .await
        .map_err(|_| EngineError::Stopped)?;
        let value = value.map_err(|e| EngineError::Storage(e.to_string()))?;
        self.wait_durable(seen).await?;
        Ok(value)
    }

    pub(super) async fn wait_durable(&self, gen: u64) -> Result<(), EngineError> {
        let broken = || self.signals.broken.load(Ordering::Acquire);
        let mut durable = self.signals.durable_gen.subscribe();
        durable
            .wait_for(|d| *d >= gen || broken())
            .await
            .map_err(|_| EngineError::Stopped)?;
        if broken() {
            return Err(writer::broken_error());
        }
        Ok(())
    }

    /// The tracking record of `id` (what `Tracking.Status` answers).
    pub async fn get(&self, id: TrackedOperationId) -> Result<Option<TrackingRecord>, EngineError> {
        let site = self.site.clone();
        self.read(move |c| {
            c.query_row(
                &format!("{SELECT_RECORD} WHERE id = ?1"),
                [id.to_string()],
                |r| row_to_record(r, &site),
            )
            .optional()
        })
        .await
    }

    /// The attempt history and stored request of `id` (`None`: no such
    /// operation here).
    pub async fn history(&self, id: TrackedOperationId) -> Result<Option<History>, EngineError> {
        self.read(move |c| {
            let key = id.to_string();
            let Some(request) = c
                .query_row("SELECT request FROM tracking WHERE id = ?1", [&key], |r| {
                    r.get::<_, Option<String>>(0)
                })
                .optional()?
            else {
                return Ok(None);
            };
            let attempts = c
                .prepare_cached(
                    "SELECT n, at_ms, duration_ms, outcome, error, code FROM attempts
                     WHERE id = ?1 ORDER BY n",
                )?
                .query_map([&key], |r| {
                    Ok(AttemptRecord {
                        number: r.get(0)?,
                        at_ms: r.get(1)?,
                        duration_ms: r.get(2)?,
                        outcome: r.get(3)?,
                        error: r.get(4)?,
                        code: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let request = request.and_then(|json| {
                let mut v: serde_json::Value = serde_json::from_str(&json).ok()?;
                mask_secrets(&mut v);
                Some(v)
            });
            Ok(Some(History { attempts, request }))
        })
        .await
    }

    /// The parked operations of one target, oldest first, at most `limit`:
    /// an external system's calls (target `system.method`, any method) or
    /// a database connection's writes.
    pub async fn parked_of_target(
        &self,
        kind: sitelink_commons::Kind,
        target: &str,
        limit: u32,
    ) -> Result<Vec<TrackedOperationId>, EngineError> {
        let target = target.to_owned();
        self.read(move |c| {
            // `system.` as a prefix, its LIKE wildcards escaped.
            let mut prefix = String::new();
            for ch in target.chars() {
                if matches!(ch, '%' | '_' | '!') {
                    prefix.push('!');
                }
                prefix.push(ch);
            }
            prefix.push_str(".%");
            let rows = c
                .prepare_cached(
                    "SELECT id FROM tracking WHERE status = 'Parked' AND kind = ?1
                       AND (target_summary = ?2 OR target_summary LIKE ?3 ESCAPE '!')
                     ORDER BY id LIMIT ?4",
                )?
                .query_map(params![kind.as_str(), target, prefix, limit], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows.iter().filter_map(|s| s.parse().ok()).collect())
        })
        .await
    }

    /// The record of `id` with its forwarding record (the admin API).
    pub async fn get_local(
        &self,
        id: TrackedOperationId,
    ) -> Result<Option<LocalRecord>, EngineError> {
        let site = self.site.clone();
        self.read(move |c| {
            c.query_row(
                &format!("{SELECT_RECORD} WHERE id = ?1"),
                [id.to_string()],
                |r| row_to_local(r, &site),
            )
            .optional()
        })
        .await
    }

    /// Notifications not yet acknowledged by central, oldest first, with
    /// what the link forwards.
    pub async fn notifications_to_forward(
        &self,
        limit: u32,
    ) -> Result<Vec<ForwardItem>, EngineError> {
        let rows: Vec<(String, Option<String>, String, i64)> = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT t.id, t.request, t.provenance, t.created_at_ms
                     FROM buffer b JOIN tracking t ON t.id = b.id
                     WHERE b.category = 'Notification'
                     ORDER BY b.next_attempt_at_ms, b.id LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect()
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, request, provenance, created_at_ms) in rows {
            let id: TrackedOperationId = id
                .parse()
                .map_err(|e| EngineError::Storage(format!("corrupt id in buffer: {e}")))?;
            let request: DeliveryRequest = request
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| EngineError::Storage(format!("unreadable notification {id}: {e}")))?
                .ok_or_else(|| EngineError::Storage(format!("notification {id} has no content")))?;
            let DeliveryRequest::Notification {
                list,
                subject,
                body,
            } = request
            else {
                return Err(EngineError::Storage(format!(
                    "buffer entry {id} is not a notification"
                )));
            };
            out.push(ForwardItem {
                id,
                list,
                subject,
                body,
                provenance,
                created_at_ms,
            });
        }
        Ok(out)
    }

    /// When central acknowledged notification `id`, if it did.
    pub async fn forwarded_at_ms(
        &self,
        id: TrackedOperationId,
    ) -> Result<Option<i64>, EngineError> {
        self.read(move |c| {
            c.query_row(
                "SELECT forwarded_at_ms FROM tracking WHERE id = ?1",
                [id.to_string()],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
        })
        .await
    }

    /// [`Self::list`] as the admin API shows it: with forwarding records,
    /// and a status filter that leaves forwarded notifications out (they
    /// are no work of the site's; they show under no status).
    pub async fn list_local(
        &self,
        status: Option<TrackedOperationStatus>,
        after: Option<TrackedOperationId>,
        limit: u32,
    ) -> Result<Vec<LocalRecord>, EngineError> {
        let site = self.site.clone();
        self.read(move |c| {
            // The status is a literal from the closed enum (never outside
            // text), so SQLite can use the partial status index.
            let filter = status
                .map(|s| format!("status = '{}' AND NOT {FORWARDED} AND", s.as_str()))
                .unwrap_or_default();
            let mut stmt = c.prepare_cached(&format!(
                "{SELECT_RECORD} WHERE {filter} (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after.map(|a| a.to_string()), limit], |r| {
                row_to_local(r, &site)
            })?;
            rows.collect()
        })
        .await
    }

    /// Rows in id order (so creation order), optionally of one status,
    /// after the id `after` (keyset paging).
    pub async fn list(
        &self,
        status: Option<TrackedOperationStatus>,
        after: Option<TrackedOperationId>,
        limit: u32,
    ) -> Result<Vec<TrackingRecord>, EngineError> {
        let site = self.site.clone();
        self.read(move |c| {
            // The status is a literal from the closed enum (never outside
            // text), so SQLite can use the partial status index.
            let filter = status
                .map(|s| format!("status = '{}' AND", s.as_str()))
                .unwrap_or_default();
            let mut stmt = c.prepare_cached(&format!(
                "{SELECT_RECORD} WHERE {filter} (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after.map(|a| a.to_string()), limit], |r| {
                row_to_record(r, &site)
            })?;
            rows.collect()
        })
        .await
    }

    /// Rows whose change sequence is above `after_seq`, in change-sequence
    /// order: the telemetry stream and the reconcile pull both read this.
    pub async fn changes_after(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<TrackingRecord>, EngineError> {
        let site = self.site.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "{SELECT_RECORD} WHERE change_seq > ?1 ORDER BY change_seq LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after_seq, limit], |r| row_to_record(r, &site))?;
            rows.collect()
        })
        .await
    }

    /// Buffer entries due at `now_ms`, oldest due first, with their
    /// requests. An entry whose retry material cannot be read comes back as
    /// `Err(reason)` so the worker can fail that one row with the reason
    /// instead of stalling every other entry behind it.
    pub async fn due(&self, now_ms: i64, limit: u32) -> Result<Vec<DueEntry>, EngineError> {
        let rows: Vec<(String, Option<String>)> = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT b.id, t.request FROM buffer b JOIN tracking t ON t.id = b.id
                     WHERE b.next_attempt_at_ms <= ?1 AND b.category <> 'Notification'
                     ORDER BY b.next_attempt_at_ms LIMIT ?2",
                )?;
                let rows =
                    stmt.query_map(params![now_ms, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, request) in rows {
            let id: TrackedOperationId = id
                .parse()
                .map_err(|e| EngineError::Storage(format!("corrupt id in buffer: {e}")))?;
            let request = match request {
                None => Err("the buffered operation has no retry material".to_owned()),
                Some(r) => {
                    serde_json::from_str(&r).map_err(|e| format!("unreadable retry material: {e}"))
                }
            };
            out.push(DueEntry { id, request });
        }
        Ok(out)
    }

    /// Number of buffer entries (operations waiting for a retry).
    pub async fn buffer_len(&self) -> Result<u64, EngineError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM buffer", [], |r| r.get(0)))
            .await
    }

    /// When the earliest buffer entry is due (ms since epoch), if any.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, EngineError> {
        self.read(|c| {
            c.query_row("SELECT MIN(next_attempt_at_ms) FROM buffer", [], |r| {
                r.get(0)
            })
        })
        .await
    }

    pub async fn acked_cursor(&self) -> Result<u64, EngineError> {
        self.read(|c| {
            c.query_row(
                "SELECT value FROM meta WHERE key = 'acked_cursor'",
                [],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Rows per status, forwarded notifications counted apart (for the
    /// admin API and logs).
    pub async fn status_counts(&self) -> Result<StatusCounts, EngineError> {
        let rows: Vec<(Option<String>, u64)> = self
            .read(|c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT CASE WHEN {FORWARDED} THEN NULL ELSE status END AS s, COUNT(*)
                     FROM tracking GROUP BY s"
                ))?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        let mut counts = StatusCounts::default();
        for (status, n) in rows {
            match status {
                None => counts.forwarded_notifications = n,
                Some(s) => counts.by_status.extend(s.parse().ok().map(|s| (s, n))),
            }
        }
        Ok(counts)
    }
}

pub(super) fn row_to_local(r: &rusqlite::Row<'_>, site: &str) -> rusqlite::Result<LocalRecord> {
    Ok(LocalRecord {
        record: row_to_record(r, site)?,
        forwarded_at_utc: r.get::<_, Option<i64>>(12)?.map(|ms| {
            unix_ms_to_utc(ms)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        }),
    })
}

pub(super) fn row_to_record(r: &rusqlite::Row<'_>, site: &str) -> rusqlite::Result<TrackingRecord> {
    fn parse<T: std::str::FromStr>(i: usize, s: String) -> rusqlite::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        s.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    }
    Ok(TrackingRecord {
        tracked_operation_id: parse(0, r.get(0)?)?,
        source_site: site.to_owned(),
        kind: parse(1, r.get(1)?)?,
        target_summary: r.get(2)?,
        status: parse(3, r.get(3)?)?,
        retry_count: r.get(4)?,
        last_error: r.get(5)?,
        provenance: r.get(6)?,
        created_at_utc: unix_ms_to_utc(r.get(7)?),
        updated_at_utc: unix_ms_to_utc(r.get(8)?),
        terminal_at_utc: r.get::<_, Option<i64>>(9)?.map(unix_ms_to_utc),
        revision: r.get(10)?,
        change_seq: r.get(11)?,
    })
}
