//! [`Notifications`]: the Notification Outbox's table (SPEC §5.3). Central
//! is the deliverer and the source of truth here: rows are inserted once
//! (insert if not exists) when a site forwards a notification, and then
//! changed only by central itself — the dispatcher's attempts and
//! operator Retry/Discard — each change through the one transition table
//! and with revision + 1.

use sitelink_commons::{
    lifecycle::check_transition, safe_body, safe_subject, truncate_chars, RetryPolicy, SiteName,
    TrackedOperationId, TrackedOperationStatus, TrackingRecord, LAST_ERROR_MAX_CHARS,
    NOTIFICATION_LIST_MAX_CHARS,
};
use sqlx::Row;

use super::{
    groups::{self, FailureGroup, GroupFilter, Grouped},
    listing::{export_rows, page_rows, ListFilter, Listing, Page, PageCursor},
    site_calls::{decode, kpis_with, purge_terminal},
    Database, Kpis,
};
use TrackedOperationStatus::*;

/// A notification as a site forwards it.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub id: TrackedOperationId,
    pub list: String,
    pub subject: String,
    pub body: String,
    pub provenance: String,
    pub created_at_ms: i64,
}

/// One notification in the shape of SPEC §7: a tracking record plus
/// `list` and `subject`; `body` and `recipients` on the detail view only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NotificationRecord {
    #[serde(flatten)]
    pub tracking: TrackingRecord,
    pub list: String,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
}

/// A notification the dispatcher owes an attempt.
#[derive(Clone, Debug)]
pub struct DueNotification {
    pub id: TrackedOperationId,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body: String,
    pub status: TrackedOperationStatus,
    pub retry_count: u32,
    pub revision: i64,
}

/// How one SMTP attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// Connection errors, timeouts, 4xx replies.
    Transient(String),
    /// 5xx replies, unusable addresses.
    Permanent(String),
}

/// The answer to an operator Retry or Discard of a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotificationCommand {
    Applied,
    NotFound,
    NotParked,
}

pub struct Notifications<'a> {
    db: &'a Database,
}

/// The first twelve columns are a tracking row as [`site_calls::record`]
/// reads it (the list is the target summary), then the notification's own.
const SELECT: &str = "SELECT id, source_site, 'Notification', list_name, status, retry_count,
    last_error, provenance, created_at_ms, updated_at_ms, terminal_at_ms, revision,
    subject, body, recipients
    FROM notifications";

impl<'a> Notifications<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    /// Stores a forwarded notification unless its id is already there;
    /// returns whether it was new. `recipients` is the named list resolved
    /// from central's configuration, or why it could not be: then the
    /// notification is stored `Failed` with that reason (the site could not
    /// know central's lists while the WAN was down, so it accepted it).
    pub async fn accept(
        &self,
        site: &SiteName,
        n: &NewNotification,
        recipients: Result<&[String], String>,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        Ok(self
            .accept_many(site, vec![(n, recipients)], now_ms)
            .await?[0])
    }

    /// [`Notifications::accept`] for several notifications of one site, in
    /// one transaction (one commit for a burst a site forwarded); whether
    /// each was new, in order.
    pub async fn accept_many(
        &self,
        site: &SiteName,
        items: Vec<(&NewNotification, Result<&[String], String>)>,
        now_ms: i64,
    ) -> Result<Vec<bool>, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        let mut new = Vec::with_capacity(items.len());
        for (n, recipients) in items {
            let (status, revision, last_error, terminal, next, to) = match recipients {
                Ok(to) => (Pending, 1i64, None, None, Some(now_ms), to.join(",")),
                Err(why) => (Failed, 2, Some(why), Some(now_ms), None, String::new()),
            };
            let fingerprint = last_error.as_deref().map(sitelink_commons::fingerprint);
            let done = sqlx::query(
                "INSERT INTO notifications (id, source_site, list_name, subject, body, recipients, status,
                     retry_count, last_error, provenance, created_at_ms, updated_at_ms, terminal_at_ms,
                     next_attempt_at_ms, revision, fingerprint)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(n.id.to_string())
            .bind(site.as_str())
            .bind(truncate_chars(&n.list, NOTIFICATION_LIST_MAX_CHARS).into_owned())
            .bind(safe_subject(&n.subject))
            .bind(safe_body(&n.body))
            .bind(to)
            .bind(status.as_str())
            .bind(last_error.map(|e| truncate_chars(&e, LAST_ERROR_MAX_CHARS).into_owned()))
            .bind(truncate_chars(&n.provenance, 200).into_owned())
            .bind(n.created_at_ms)
            .bind(now_ms)
            .bind(terminal)
            .bind(next)
            .bind(revision)
            .bind(fingerprint)
            .execute(&mut *tx)
            .await?;
            new.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Up to `limit` notifications whose next attempt is due, oldest first.
    pub async fn due(&self, now_ms: i64, limit: u32) -> Result<Vec<DueNotification>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, recipients, subject, body, status, retry_count, revision FROM notifications
             WHERE next_attempt_at_ms IS NOT NULL AND next_attempt_at_ms <= $1
             ORDER BY next_attempt_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueNotification {
                    id: decode(r.try_get(0)?, "id")?,
                    recipients: split_recipients(&r.try_get::<String, _>(1)?),
                    subject: r.try_get(2)?,
                    body: r.try_get(3)?,
                    status: decode(r.try_get(4)?, "status")?,
                    retry_count: r.try_get::<i64, _>(5)? as u32,
                    revision: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Records how attempts ended, all in one transaction; returns each
    /// one's new status, or `None` when the row changed meanwhile (an
    /// operator acted) and the attempt's outcome no longer applies.
    pub async fn record_attempts(
        &self,
        attempts: &[(DueNotification, SendOutcome)],
        policy: &RetryPolicy,
        now_ms: i64,
    ) -> Result<Vec<Option<TrackedOperationStatus>>, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        self.db.fence(&mut tx).await?;
        let mut out = Vec::with_capacity(attempts.len());
        for (n, outcome) in attempts {
            // The attempt just made was retry number `retries_done` (0: the
            // first attempt, which is not a retry).
            let retries_done = if n.status == Retrying {
                n.retry_count + 1
            } else {
                0
            };
            let (to, retry_count, last_error, next) = match outcome {
                SendOutcome::Delivered => (Delivered, n.retry_count, None, None),
                SendOutcome::Permanent(e) => (Failed, n.retry_count, Some(e.as_str()), None),
                SendOutcome::Transient(e) if retries_done >= policy.max_retries => {
                    (Parked, retries_done, Some(e.as_str()), None)
                }
                SendOutcome::Transient(e) => {
                    let delay = policy.delay(retries_done).as_millis() as i64;
                    (
                        Retrying,
                        retries_done,
                        Some(e.as_str()),
                        Some(now_ms + delay),
                    )
                }
            };
            if check_transition(Some(n.status), to).is_err() {
                out.push(None);
                continue;
            }
            let change = Change {
                to,
                retry_count,
                last_error,
                next_attempt_at_ms: next,
            };
            let changed = change_row(&mut tx, n.id, n.revision, change, now_ms).await?;
            out.push(changed.then_some(to));
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Operator Retry (`Parked` → `Retrying`, fresh budget, due now) or
    /// Discard (`Parked` → `Discarded`); with the notification's site, for
    /// the audit log (None when there is no such notification).
    pub async fn operator(
        &self,
        id: TrackedOperationId,
        retry: bool,
        now_ms: i64,
    ) -> Result<(NotificationCommand, Option<String>), sqlx::Error> {
        let row =
            sqlx::query("SELECT status, revision, source_site FROM notifications WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(self.db.pool())
                .await?;
        let Some(row) = row else {
            return Ok((NotificationCommand::NotFound, None));
        };
        let site: String = row.try_get(2)?;
        let status: TrackedOperationStatus = decode(row.try_get(0)?, "status")?;
        if status != Parked {
            return Ok((NotificationCommand::NotParked, Some(site)));
        }
        let revision: i64 = row.try_get(1)?;
        let change = if retry {
            Change {
                to: Retrying,
                retry_count: 0,
                last_error: None,
                next_attempt_at_ms: Some(now_ms),
            }
        } else {
            Change {
                to: Discarded,
                retry_count: 0,
                last_error: Some("discarded by operator"),
                next_attempt_at_ms: None,
            }
        };
        let mut conn = self.db.pool().acquire().await?;
        let changed = change_row(&mut conn, id, revision, change, now_ms).await?;
        // Lost a race with the dispatcher: the row is no longer Parked.
        let outcome = if changed {
            NotificationCommand::Applied
        } else {
            NotificationCommand::NotParked
        };
        Ok((outcome, Some(site)))
    }

    /// One notification with its body and recipients.
    pub async fn get(
        &self,
        id: TrackedOperationId,
    ) -> Result<Option<NotificationRecord>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(|r| record(r, true)).transpose()
    }

    /// One page, newest first, with the cursors either side (see
    /// [`Listing`]); `kind` is ignored and the filter's target text matches
    /// the list name.
    pub async fn list_page(
        &self,
        f: &ListFilter,
        page: &Page,
        limit: u32,
    ) -> Result<Listing<NotificationRecord>, sqlx::Error> {
        let f = ListFilter {
            kind: None,
            ..f.clone()
        };
        page_rows(
            self.db,
            (SELECT, "list_name"),
            &f,
            page,
            limit,
            |r| record(r, false),
            |n| PageCursor::of(&n.tracking),
        )
        .await
    }

    /// The failure groups of `f`: by list and error fingerprint (see
    /// [`groups`]).
    pub async fn groups(
        &self,
        f: &GroupFilter,
        limit: usize,
    ) -> Result<(Vec<FailureGroup>, usize), sqlx::Error> {
        groups::groups(self.db, Grouped::Notifications, f, limit).await
    }

    /// Every notification `f` matches (with body and recipients), newest
    /// first, streamed in constant memory (see [`export_rows`]).
    pub fn export(
        &self,
        f: &ListFilter,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<NotificationRecord, sqlx::Error>> {
        let f = ListFilter {
            kind: None,
            ..f.clone()
        };
        export_rows(self.db, (SELECT, "list_name"), &f, |r| record(r, true))
    }

    /// KPIs per site in the shape of Site Call Audit's. Open notifications
    /// are counted from the status index: their number is bounded by what
    /// an SMTP outage leaves behind, not by history.
    pub async fn kpis_per_site(
        &self,
        now_ms: i64,
        interval_seconds: i64,
        stuck_threshold_seconds: i64,
    ) -> Result<std::collections::BTreeMap<String, Kpis>, sqlx::Error> {
        kpis_with(
            self.db,
            "notifications",
            "SELECT source_site, status, COUNT(*),
                    CASE WHEN status = 'Parked' THEN NULL ELSE MIN(created_at_ms) END,
                    SUM(CASE WHEN created_at_ms >= $1 THEN 1 ELSE 0 END)
             FROM notifications WHERE status IN ('Pending', 'Retrying', 'Parked')
             GROUP BY source_site, status",
            now_ms,
            interval_seconds,
            stuck_threshold_seconds,
        )
        .await
    }

    /// Deletes terminal notifications that became terminal before
    /// `before_ms`; never Pending, Retrying or Parked ones.
    pub async fn purge(&self, before_ms: i64) -> Result<u64, sqlx::Error> {
        purge_terminal(self.db, "notifications", before_ms).await
    }
}

/// What one change sets.
struct Change<'e> {
    to: TrackedOperationStatus,
    /// Ignored for `Discarded`, which keeps the row's count.
    retry_count: u32,
    last_error: Option<&'e str>,
    next_attempt_at_ms: Option<i64>,
}

/// One change of a row whose revision is still `revision`; false when it
/// is not (someone else changed it first).
async fn change_row(
    conn: &mut sqlx::AnyConnection,
    id: TrackedOperationId,
    revision: i64,
    c: Change<'_>,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications SET status = $1,
             retry_count = CASE WHEN $2 THEN retry_count ELSE $3 END,
             last_error = $4, next_attempt_at_ms = $5, updated_at_ms = $6,
             terminal_at_ms = $7, revision = revision + 1, fingerprint = $10
         WHERE id = $8 AND revision = $9",
    )
    .bind(c.to.as_str())
    .bind(c.to == Discarded)
    .bind(c.retry_count as i64)
    .bind(
        c.last_error
            .map(|e| truncate_chars(e, LAST_ERROR_MAX_CHARS).into_owned()),
    )
    .bind(c.next_attempt_at_ms)
    .bind(now_ms)
    .bind(c.to.is_terminal().then_some(now_ms))
    .bind(id.to_string())
    .bind(revision)
    .bind(c.last_error.map(sitelink_commons::fingerprint))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn split_recipients(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

fn record(r: &sqlx::any::AnyRow, detail: bool) -> Result<NotificationRecord, sqlx::Error> {
    let tracking = super::site_calls::record(r)?;
    Ok(NotificationRecord {
        list: tracking.target_summary.clone(),
        tracking,
        subject: r.try_get(12)?,
        body: if detail { Some(r.try_get(13)?) } else { None },
        recipients: if detail {
            Some(split_recipients(&r.try_get::<String, _>(14)?))
        } else {
            None
        },
    })
}
