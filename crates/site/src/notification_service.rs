//! Notification Service, site side (SPEC §2 component 5, §4.4):
//! `Notify.Send` and `Notify.Status`.
//!
//! - [`NotificationService::send`] checks the notification (clear errors for
//!   an empty list name, a line break in the subject, an oversized body),
//!   then commits a `Notification` tracking row and its buffer entry
//!   (category Notification) in one transaction and returns the id at
//!   once. [`NotificationService::send_in`], which script runs use, returns
//!   it before the commit: the run settles its writes before anything
//!   leaves it (see `PendingCommits`), so a script sending many shares
//!   commits. The central link forwards buffer entries to central until
//!   central acknowledges each (after its own insert-if-not-exists commit);
//!   only then does the entry go and the row keep a forwarding record.
//! - [`NotificationService::status`] asks central's Notification Outbox,
//!   the source of truth, through the link ([`StatusQueries`]) with a short
//!   timeout; when central cannot be asked it answers from the local row:
//!   `Pending`, with `last_error` saying why this is all the site knows.
//!
//! Where it shares the tracking model with cached calls: the same ids,
//! statuses and tracking table. Where it differs: the site never attempts a
//! notification (the retry worker skips them), the row stays `Pending` at
//! the site, and notifications never reach `SiteCalls`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use sitelink_commons::{
    check_notification, Kind, NotificationError, TrackedOperationId, TrackingRecord,
};
use tokio::sync::{mpsc, oneshot};

use crate::store_and_forward::{DeliveryRequest, Engine, EngineError, PendingCommits};

/// Why `Notify.Send` refused.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Invalid(#[from] NotificationError),
    #[error("Notify.Send: {0}")]
    Storage(#[from] EngineError),
}

/// A status question for central, answered with its record (or `None`:
/// central does not know the id).
pub struct StatusQuery {
    pub id: TrackedOperationId,
    pub reply: oneshot::Sender<Option<TrackingRecord>>,
}

/// The link's end of status questions.
pub struct StatusQueries {
    pub rx: mpsc::Receiver<StatusQuery>,
    /// Set by the link while a stream to central is open.
    pub connected: Arc<AtomicBool>,
}

pub struct NotificationService {
    engine: Engine,
    /// None: the site has no central configured.
    queries: Option<(mpsc::Sender<StatusQuery>, Arc<AtomicBool>)>,
    timeout: Duration,
}

impl NotificationService {
    /// The service, and (when `with_central`) the end of status questions
    /// the central link serves.
    pub fn new(
        engine: Engine,
        with_central: bool,
        timeout: Duration,
    ) -> (Self, Option<StatusQueries>) {
        if !with_central {
            return (
                Self {
                    engine,
                    queries: None,
                    timeout,
                },
                None,
            );
        }
        let (tx, rx) = mpsc::channel(64);
        let connected = Arc::new(AtomicBool::new(false));
        (
            Self {
                engine,
                queries: Some((tx, connected.clone())),
                timeout,
            },
            Some(StatusQueries { rx, connected }),
        )
    }

    /// `Notify.Send(list, subject, body)`: durable before it returns.
    pub async fn send(
        &self,
        list: &str,
        subject: &str,
        body: &str,
        provenance: &str,
    ) -> Result<TrackedOperationId, SendError> {
        let request = Self::request(list, subject, body)?;
        Ok(self.engine.record_pending(&request, provenance).await?)
    }

    /// `Notify.Send` for a caller that settles its own [`PendingCommits`]
    /// (a script run): the id comes back as soon as the writer has the
    /// row, which it commits with its next batch; the caller settles before
    /// the id can leave the process. A script sending many notifications in
    /// a row so shares commits instead of waiting for one per send.
    pub async fn send_in(
        &self,
        list: &str,
        subject: &str,
        body: &str,
        provenance: &str,
        pending: &mut PendingCommits,
    ) -> Result<TrackedOperationId, SendError> {
        let request = Self::request(list, subject, body)?;
        Ok(self
            .engine
            .record_pending_deferred(&request, provenance, pending)
            .await?)
    }

    fn request(list: &str, subject: &str, body: &str) -> Result<DeliveryRequest, SendError> {
        check_notification(list, subject, body)?;
        Ok(DeliveryRequest::Notification {
            list: list.to_owned(),
            subject: subject.to_owned(),
            body: body.to_owned(),
        })
    }

    /// `Notify.Status(id)` (and `Tracking.Status` of a notification, or of
    /// an id the site no longer has): central's record when central can be
    /// asked, else the local one, else `None`.
    pub async fn status(
        &self,
        id: TrackedOperationId,
    ) -> Result<Option<TrackingRecord>, EngineError> {
        let local = self.engine.get(id).await?;
        if local.as_ref().is_some_and(|r| r.kind != Kind::Notification) {
            return Ok(local);
        }
        let why_local = match self.ask_central(id).await {
            Ok(Some(record)) => return Ok(Some(record)),
            Ok(None) if local.is_none() => return Ok(None),
            Ok(None) => "central does not know it yet",
            Err(why) => why,
        };
        let Some(mut record) = local else {
            return Ok(None);
        };
        let forwarded = self.engine.forwarded_at_ms(id).await?.is_some();
        record.last_error = Some(if forwarded {
            format!("forwarded to central; its delivery status is unknown here ({why_local})")
        } else {
            format!("not yet forwarded to central ({why_local})")
        });
        Ok(Some(record))
    }

    async fn ask_central(
        &self,
        id: TrackedOperationId,
    ) -> Result<Option<TrackingRecord>, &'static str> {
        let Some((tx, connected)) = &self.queries else {
            return Err("no central configured");
        };
        if !connected.load(Ordering::Relaxed) {
            return Err("central unreachable");
        }
        let (reply, answer) = oneshot::channel();
        tx.try_send(StatusQuery { id, reply })
            .map_err(|_| "central unreachable")?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(record)) => Ok(record),
            Ok(Err(_)) => Err("central unreachable"),
            Err(_) => Err("central did not answer in time"),
        }
    }
}
