//! One site's stream, as central runs it: the wire protocol of reconcile
//! pages, telemetry and commands. What to do and when (reconcile on
//! connect and on schedule, which command to relay) comes from the Site
//! Call Audit actor as [`StreamOrder`]s; what arrives goes to it.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
};

use futures::{stream::FuturesOrdered, FutureExt, StreamExt};
use sitelink_commons::{
    contracts::v1::{self, central_message, site_message, CentralMessage, SiteMessage},
    SiteName, TrackingRecord,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::LinkSettings;
use crate::{
    configuration_database::{BulkState, Database, IngestOutcome, NewNotification, Pace},
    notification_outbox::Outbox,
    site_call_audit::{Command, SiteCallAudit, StreamId, StreamOrder},
};

pub(super) struct Session {
    pub site: SiteName,
    pub db: Database,
    pub tx: mpsc::Sender<Result<CentralMessage, Status>>,
    pub settings: LinkSettings,
    pub stats: Arc<super::LinkStats>,
    pub audit: SiteCallAudit,
    /// Correlation of the last message this stream sent.
    pub correlation: u64,
    /// Commands (single and bulk) sent and not yet answered: wire
    /// correlation → relay id.
    pub commands: HashMap<u64, u64>,
    /// Where forwarded notifications go.
    pub outbox: Outbox,
}

/// Telemetry batches one stream may have handed over and not yet seen
/// committed.
const MAX_OUTSTANDING: usize = 4;
/// At most this many forwarded notifications are stored in one
/// transaction (a site keeps up to 64 unacknowledged).
const FORWARD_BURST: usize = 64;

/// Answers once a submitted ingest is committed.
type Committed = oneshot::Receiver<Result<IngestOutcome, String>>;

/// A reconcile in progress: the correlation of the page asked for and the
/// sequence it starts after.
struct Reconcile {
    correlation: u64,
    after_seq: u64,
}

impl Session {
    async fn send(&self, correlation: u64, body: central_message::Body) -> Result<(), String> {
        self.tx
            .send(Ok(CentralMessage {
                correlation,
                body: Some(body),
            }))
            .await
            .map_err(|_| "the site's stream is gone".to_owned())
    }

    fn next_correlation(&mut self) -> u64 {
        self.correlation += 1;
        self.correlation
    }

    async fn request_page(&mut self, after_seq: u64) -> Result<Reconcile, String> {
        let correlation = self.next_correlation();
        let body = central_message::Body::Reconcile(v1::CachedCallReconcileRequest {
            after_seq,
            limit: self.settings.reconcile_page,
        });
        self.send(correlation, body).await?;
        Ok(Reconcile {
            correlation,
            after_seq,
        })
    }

    async fn cursor(&self) -> Result<u64, String> {
        Ok(self
            .db
            .sites()
            .get(self.site.as_str())
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |s| s.reconcile_cursor))
    }

    /// Hands rows that cover `(from, to]` to the actor's ingest; the
    /// receiver answers once they are committed (see [`Self::settle`]).
    async fn submit(
        &self,
        rows: &[v1::CachedCallTelemetry],
        from: u64,
        to: u64,
        telemetry: bool,
    ) -> Result<Committed, String> {
        let mut records = Vec::with_capacity(rows.len());
        let mut malformed = 0usize;
        for row in rows {
            match TrackingRecord::try_from(row) {
                Ok(r) => records.push(r),
                Err(e) => {
                    malformed += 1;
                    tracing::warn!(site = %self.site, id = %row.id, error = %e, "telemetry row rejected");
                }
            }
        }
        // A range with a row this build cannot read is not complete here:
        // apply the rest, leave the cursor, let a newer central reconcile it.
        let range = (malformed == 0).then_some((from, to));
        let seen = telemetry.then_some(to);
        self.audit.submit(&self.site, records, range, seen).await
    }

    /// Logs what the ingest refused and acknowledges the cursor when it
    /// moved.
    async fn settle(
        &self,
        committed: Result<Result<IngestOutcome, String>, oneshot::error::RecvError>,
    ) -> Result<(), String> {
        let outcome =
            committed.map_err(|_| "the Site Call Audit actor has stopped".to_owned())??;
        if outcome.revoked {
            let reason = format!("site {} was revoked", self.site);
            let _ = self
                .tx
                .send(Err(Status::permission_denied(reason.clone())))
                .await;
            return Err(reason);
        }
        for (id, why) in &outcome.rejected {
            tracing::warn!(site = %self.site, %id, reason = %why, "telemetry row rejected");
        }
        if outcome.cursor_advanced {
            self.send(
                0,
                central_message::Body::CursorAck(v1::CursorAck {
                    cursor: outcome.cursor,
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// Runs the stream until it ends; tells the actor it is gone.
    pub async fn run(
        mut self,
        inbound: Streaming<SiteMessage>,
        high_seq: u64,
    ) -> Result<(), String> {
        self.db
            .sites()
            .seen(self.site.as_str(), high_seq)
            .await
            .map_err(|e| e.to_string())?;
        let cursor = self.cursor().await?;
        self.send(
            0,
            central_message::Body::Welcome(v1::Welcome {
                protocol_version: super::PROTOCOL_VERSION,
                cursor,
                central_time_unix_ms: crate::configuration_database::now_ms(),
            }),
        )
        .await?;
        let (orders_tx, orders) = mpsc::unbounded_channel();
        let id = self.audit.connected(&self.site, cursor, orders_tx).await?;
        let result = self.serve(inbound, orders, id).await;
        self.audit.disconnected(&self.site, id).await;
        result
    }

    async fn serve(
        &mut self,
        mut inbound: Streaming<SiteMessage>,
        // Unbounded: the actor must never wait on a stream; it sends at
        // most one reconcile per period and one message per operator action.
        mut orders: mpsc::UnboundedReceiver<StreamOrder>,
        id: StreamId,
    ) -> Result<(), String> {
        let mut reconcile: Option<Reconcile> = None;
        // Telemetry batches handed to the ingest and not yet committed, in
        // order. Reading on while they commit lets the actor batch more.
        let mut outstanding: FuturesOrdered<Committed> = FuturesOrdered::new();
        // A message read while draining a burst of forwarded notifications
        // that was not one of them: handled next.
        let mut held: Option<Result<Option<SiteMessage>, Status>> = None;
        loop {
            let msg = if let Some(m) = held.take() {
                m
            } else {
                tokio::select! {
                    m = inbound.message(), if outstanding.len() < MAX_OUTSTANDING => m,
                    Some(committed) = outstanding.next(), if !outstanding.is_empty() => {
                        self.settle(committed).await?;
                        continue;
                    }
                    order = orders.recv() => {
                        match order {
                            Some(StreamOrder::Reconcile { after_seq }) => {
                                if reconcile.is_none() {
                                    reconcile = Some(self.request_page(after_seq).await?);
                                }
                            }
                            Some(StreamOrder::Command { relay, command, expires_at_ms }) => {
                                self.send_command(relay, command, expires_at_ms).await?;
                            }
                            Some(StreamOrder::Ask { relay, body }) => {
                                let correlation = self.next_correlation();
                                self.commands.insert(correlation, relay);
                                self.send(correlation, body).await?;
                            }
                            Some(StreamOrder::Close { reason }) => {
                                let _ = self.tx.send(Err(Status::permission_denied(reason.clone()))).await;
                                return Err(reason);
                            }
                            // The actor replaced this stream with a newer one
                            // or stopped: this stream has nothing left to do.
                            None => return Ok(()),
                        }
                        continue;
                    }
                }
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(status) => return Err(stream_error(&status)),
            };
            match msg.body {
                Some(site_message::Body::Telemetry(batch)) => {
                    if batch.to_seq < batch.from_seq {
                        return Err(format!(
                            "telemetry range ({}, {}] is reversed",
                            batch.from_seq, batch.to_seq
                        ));
                    }
                    self.stats
                        .telemetry_rows
                        .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
                    let committed = self
                        .submit(&batch.rows, batch.from_seq, batch.to_seq, true)
                        .await?;
                    outstanding.push_back(committed);
                }
                Some(site_message::Body::Reconcile(page)) => {
                    let Some(r) = reconcile
                        .as_ref()
                        .filter(|r| r.correlation == msg.correlation)
                    else {
                        tracing::debug!(site = %self.site, "reconcile page nobody asked for; ignored");
                        continue;
                    };
                    if page.next_seq < r.after_seq {
                        return Err(format!(
                            "reconcile page ends at {} before it starts ({})",
                            page.next_seq, r.after_seq
                        ));
                    }
                    self.stats
                        .reconcile_rows
                        .fetch_add(page.rows.len() as u64, Ordering::Relaxed);
                    let after_seq = r.after_seq;
                    let committed = self
                        .submit(&page.rows, after_seq, page.next_seq, false)
                        .await?;
                    self.settle(committed.await).await?;
                    reconcile = if page.has_more {
                        Some(self.request_page(page.next_seq).await?)
                    } else {
                        self.audit.reconcile_finished(&self.site, id).await;
                        None
                    };
                }
                Some(site_message::Body::CommandResult(result)) => {
                    if let Some(relay) = self.commands.remove(&msg.correlation) {
                        self.audit.command_result(relay, result).await;
                    }
                }
                Some(
                    body @ (site_message::Body::BulkCommandResult(_)
                    | site_message::Body::AttemptHistory(_)),
                ) => {
                    if let Some(relay) = self.commands.remove(&msg.correlation) {
                        self.audit.answered(relay, body).await;
                    }
                }
                Some(site_message::Body::ReplayState(state)) => {
                    // A failure here costs the replay, not the stream: the
                    // site sends the state again after its next connect.
                    if let Err(e) = self.replay(state).await {
                        tracing::error!(site = %self.site, error = %e, "replay on recovery not recorded");
                    }
                }
                Some(site_message::Body::ForwardNotification(n)) => {
                    // A site forwards in bursts (up to 64 unacknowledged):
                    // those already received are stored in one transaction.
                    let mut burst = vec![n];
                    // (Only while this stream may read on at all: a
                    // telemetry batch met here is handled next.)
                    while burst.len() < FORWARD_BURST && outstanding.len() < MAX_OUTSTANDING {
                        match inbound.message().now_or_never() {
                            Some(Ok(Some(SiteMessage {
                                body: Some(site_message::Body::ForwardNotification(n)),
                                ..
                            }))) => burst.push(n),
                            Some(other) => {
                                held = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    self.forwarded(burst).await?;
                }
                Some(site_message::Body::NotificationStatusQuery(q)) => {
                    let answer = self.notification_status(&q.id).await?;
                    self.send(
                        msg.correlation,
                        central_message::Body::NotificationStatus(answer),
                    )
                    .await?;
                }
                Some(site_message::Body::Hello(_)) => {
                    return Err("a second Hello on one stream".into())
                }
                None => return Err("a message with no body (from a newer site?)".into()),
            }
        }
    }

    /// Stores forwarded notifications (insert if not exists, one
    /// transaction) and, once that is committed, acknowledges each. One for
    /// another site or with an unreadable id is refused, logged and not
    /// acknowledged; the rest land.
    async fn forwarded(&self, burst: Vec<v1::ForwardNotification>) -> Result<(), String> {
        let mut news = Vec::with_capacity(burst.len());
        for n in burst {
            if n.source_site != self.site.as_str() {
                tracing::warn!(site = %self.site, claimed = %n.source_site, id = %n.id, "notification for another site refused");
                continue;
            }
            let id = match n.id.parse() {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(site = %self.site, id = %n.id, error = %e, "notification with an unreadable id refused");
                    continue;
                }
            };
            news.push(NewNotification {
                id,
                list: n.list,
                subject: n.subject,
                body: n.body,
                provenance: n.provenance,
                created_at_ms: n.created_at_unix_ms,
            });
        }
        if news.is_empty() {
            return Ok(());
        }
        let inserted = self
            .outbox
            .accept_many(&self.site, &news)
            .await
            .map_err(|e| format!("storing {} forwarded notifications: {e}", news.len()))?;
        for (n, inserted) in news.iter().zip(inserted) {
            tracing::debug!(site = %self.site, id = %n.id, inserted, "notification forwarded");
            self.send(
                0,
                central_message::Body::NotificationAck(v1::NotificationAck {
                    id: n.id.to_string(),
                }),
            )
            .await?;
            self.stats
                .notifications_forwarded
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Central's record of a notification of this site (never another's).
    async fn notification_status(&self, id: &str) -> Result<v1::NotificationStatusAnswer, String> {
        let record = match id.parse() {
            Ok(id) => self
                .db
                .notifications()
                .get(id)
                .await
                .map_err(|e| e.to_string())?
                .filter(|r| r.tracking.source_site == self.site.as_str()),
            Err(_) => None,
        };
        Ok(v1::NotificationStatusAnswer {
            id: id.to_owned(),
            found: record.is_some(),
            record: record.map(|r| v1::CachedCallTelemetry::from(&r.tracking)),
        })
    }

    /// The site's replay state: a bulk Retry (operator `site:<name>`) for
    /// each recovery not recorded yet, a cancel for each stopped one of
    /// this site's.
    async fn replay(&self, state: v1::ReplayState) -> Result<(), sqlx::Error> {
        let me = format!("site:{}", self.site);
        let bulk = self.db.bulk_actions();
        for r in state.recovered {
            let pace = match Pace::new(r.at_once, r.per_minute) {
                Ok(p) if sitelink_commons::is_hyphenated_uuid(&r.recovery_id) => p,
                Ok(_) => {
                    tracing::warn!(site = %self.site, id = %r.recovery_id, "replay with an id that is not a UUID; ignored");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(site = %self.site, error = %e, "replay with a bad pace; ignored");
                    continue;
                }
            };
            let ids: Vec<String> = r
                .ids
                .into_iter()
                .filter(|i| sitelink_commons::is_hyphenated_uuid(i))
                .collect();
            if let Some(a) = bulk
                .create_replay(self.site.as_str(), &r.recovery_id, &r.target, pace, &ids)
                .await?
            {
                tracing::info!(site = %self.site, target = %r.target, calls = a.total, "replay on recovery recorded");
                self.db
                    .audit_log()
                    .record(
                        &me,
                        "bulk retry",
                        &a.id,
                        Some(self.site.as_str()),
                        &format!(
                            "started: replay of {} parked calls of {} on its recovery, {} at once, then {} a minute",
                            a.total, r.target, pace.at_once, pace.per_minute
                        ),
                    )
                    .await?;
            }
        }
        for id in state.stopped {
            let Some(a) = bulk.get(&id).await? else {
                continue;
            };
            // A site stops only its own replays, and only running ones.
            if a.operator != me || a.state != BulkState::Running {
                continue;
            }
            if let Some((a, true)) = bulk.cancel(&id, &me).await? {
                self.db
                    .audit_log()
                    .record(
                        &me,
                        "bulk cancel",
                        &id,
                        Some(self.site.as_str()),
                        &format!(
                            "stopped: the target failed again; {} calls not sent",
                            a.counts.cancelled
                        ),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn send_command(
        &mut self,
        relay: u64,
        command: Command,
        expires_at_unix_ms: i64,
    ) -> Result<(), String> {
        let correlation = self.next_correlation();
        self.commands.insert(correlation, relay);
        let body = match command {
            Command::Retry(id) => central_message::Body::Retry(v1::RetryParkedOperation {
                id: id.to_string(),
                expires_at_unix_ms,
            }),
            Command::Discard(id) => central_message::Body::Discard(v1::DiscardParkedOperation {
                id: id.to_string(),
                expires_at_unix_ms,
            }),
        };
        self.send(correlation, body).await
    }
}

/// Why a stream's read failed, in an operator's words: the connection went
/// away (a site that crashed, a cable pulled, a keepalive unanswered) is
/// "connection lost"; anything else is a malformed stream. Told apart by
/// the error's source (a transport error underneath), never by its text.
fn stream_error(status: &Status) -> String {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<h2::Error>() || e.is::<hyper::Error>() || e.is::<std::io::Error>() {
            return format!("connection lost ({})", status.message());
        }
        source = e.source();
    }
    format!("malformed stream: {status}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_told_from_a_malformed_stream() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let lost = Status::from_error(Box::new(reset));
        assert!(
            stream_error(&lost).starts_with("connection lost"),
            "{}",
            stream_error(&lost)
        );
        let h2 = Status::from_error(Box::new(h2::Error::from(h2::Reason::PROTOCOL_ERROR)));
        assert!(
            stream_error(&h2).starts_with("connection lost"),
            "{}",
            stream_error(&h2)
        );
        let garbage = Status::internal("failed to decode Protobuf message: invalid wire type");
        assert!(stream_error(&garbage).starts_with("malformed stream"));
    }
}
