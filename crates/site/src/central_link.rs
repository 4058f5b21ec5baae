//! Central–Site Communication, site half (SPEC §2 component 6, §5.1): the
//! one stream the site opens to central, kept open by [`CentralLink::run`].
//!
//! On each connection: Hello (site, protocol version, high change sequence)
//! with the token in the `authorization` metadata; then, concurrently,
//! - telemetry: every committed change since the connection's start is
//!   pushed in change-sequence order, in batches that say which range
//!   `(from, to]` they cover completely (best-effort: a batch lost with a
//!   broken stream is healed by central's reconcile);
//! - forwarded notifications: every notification not yet acknowledged
//!   (at most 64 unacknowledged at a time), until central acknowledges it
//!   after its insert-if-not-exists commit; then the engine marks it
//!   forwarded. Sent again after a reconnect when no acknowledgement came;
//! - `Notify.Status` questions, answered by central's outbox;
//! - answers to central: reconcile pages (`changes_after`), Retry/Discard
//!   of parked operations (applied by the engine, answered with the
//!   outcome), and CursorAcks (stored as the acknowledged cursor that the
//!   purge rule uses).
//!
//! The link reconnects by itself, trying each central address in turn: a
//! random first delay within `reconnect_spread_ms` after a lost stream,
//! then backoff with jitter, and central's "busy, retry after" waited as
//! asked at the same address ([`sitelink_commons::reconnect`]). Architecture invariant: the site never depends on central: the
//! link only reads the engine's change stream and applies commands through
//! the engine; with central down nothing else notices.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde::Deserialize;
use sitelink_commons::{
    contracts::v1::{
        self, central_message, site_link_client::SiteLinkClient, site_message, SiteMessage,
    },
    reconnect::{Ended, ReconnectSchedule},
    truncate_chars, Kind, TrackedOperationId, TrackingRecord, LAST_ERROR_MAX_CHARS,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    external_system_gateway::recovery::ReplayWanted,
    notification_service::StatusQueries,
    store_and_forward::{BulkItemOutcome, CommandOutcome, Engine},
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Rows per telemetry batch.
const TELEMETRY_BATCH: u32 = 500;

/// `[central]` in site.toml; without it the site runs alone.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// Central's link addresses (`http://host:port`), tried in turn.
    pub addresses: Vec<String>,
    /// The token `sitelink central site add` printed for this site.
    pub token: String,
    /// PEM file of the CA (or self-signed certificate) that central's TLS
    /// certificate must chain to; required for `https://` addresses.
    pub ca_file: Option<std::path::PathBuf>,
    /// The name in central's certificate, if not the address's host.
    pub tls_domain: Option<String>,
    /// Longest wait between reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// After a stream to central is lost, the first attempt to dial again
    /// waits a random time within this window, in milliseconds (0: at
    /// once), so a fleet that lost central together does not come back in
    /// one instant.
    #[serde(default = "default_reconnect_spread_ms")]
    pub reconnect_spread_ms: u64,
    /// How long `Notify.Status` waits for central before it answers from
    /// the local record, in milliseconds.
    #[serde(default = "default_status_timeout_ms")]
    pub status_timeout_ms: u64,
    /// HTTP/2 keepalive pings to central this often; a link whose ping is
    /// not answered within the same time again is dropped and dialled anew
    /// (a silent link is noticed within twice this).
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u64,
}

fn default_reconnect_max_ms() -> u64 {
    10_000
}
fn default_reconnect_spread_ms() -> u64 {
    1_000
}
fn default_status_timeout_ms() -> u64 {
    2_000
}
fn default_keepalive_ms() -> u64 {
    5_000
}

impl CentralConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.addresses.is_empty() {
            return Err((
                "addresses".into(),
                "needs at least one central address".into(),
            ));
        }
        for a in &self.addresses {
            tonic::transport::Endpoint::from_shared(a.clone()).map_err(|e| {
                (
                    "addresses".to_owned(),
                    format!("{a:?} is not a valid address: {e}"),
                )
            })?;
        }
        if self.addresses.iter().any(|a| a.starts_with("https://")) && self.ca_file.is_none() {
            return Err((
                "ca_file".into(),
                "https:// addresses need the CA certificate that signed central's".into(),
            ));
        }
        if let Some(ca) = &self.ca_file {
            std::fs::metadata(ca)
                .map_err(|e| ("ca_file".to_owned(), format!("{}: {e}", ca.display())))?;
        }
        if self.token.trim().is_empty() {
            return Err(("token".into(), "must not be empty".into()));
        }
        for (key, value, lo, hi) in [
            ("reconnect_max_ms", self.reconnect_max_ms, 100, 3_600_000),
            (
                "reconnect_spread_ms",
                self.reconnect_spread_ms,
                0,
                3_600_000,
            ),
            ("status_timeout_ms", self.status_timeout_ms, 10, 600_000),
            ("keepalive_ms", self.keepalive_ms, 100, 600_000),
        ] {
            sitelink_commons::in_range(key, value, lo, hi).map_err(|e| (key.to_owned(), e))?;
        }
        Ok(())
    }
}

pub struct CentralLink {
    engine: Engine,
    config: CentralConfig,
    /// What the site wants replayed on recovery (sent after every connect
    /// and whenever it changes).
    replay: watch::Receiver<ReplayWanted>,
    /// `Notify.Status` questions for central (one stream at a time serves
    /// them; the lock is held by the session that is open).
    queries: Option<tokio::sync::Mutex<StatusQueries>>,
}

/// Parked calls of one recovered target sent for replay, at most: 50,000
/// ids keep the message under half of central's 4 MiB limit.
const REPLAY_MAX_IDS: u32 = 50_000;

/// Notifications forwarded and not yet acknowledged, at most.
const FORWARD_WINDOW: usize = 64;

impl CentralLink {
    pub fn new(
        engine: Engine,
        config: CentralConfig,
        queries: Option<StatusQueries>,
        replay: watch::Receiver<ReplayWanted>,
    ) -> Self {
        Self {
            engine,
            config,
            replay,
            queries: queries.map(tokio::sync::Mutex::new),
        }
    }

    /// Keeps a stream to central open until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        // When to dial again: a random first delay within the spread after
        // a lost stream, then backoff with jitter; central's "busy, retry
        // after" is waited as asked (sitelink_commons::reconnect).
        let mut schedule = ReconnectSchedule::new(
            Duration::from_millis(self.config.reconnect_spread_ms),
            Duration::from_millis(self.config.reconnect_max_ms.max(100)),
        );
        // The address whose stream central closed cleanly is tried first
        // again (a restart, a node that stepped down and now refuses), and
        // so is one that answered "busy"; one that refused (a standby
        // central node), could not be reached, or whose stream broke (a
        // dead or paused node) moves the site to the next.
        let addresses = &self.config.addresses;
        let mut at = 0;
        loop {
            let address = &addresses[at % addresses.len()];
            let started = tokio::time::Instant::now();
            let mut established = false;
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.session(address, &mut established) => r,
            };
            let busy = result.as_ref().err().and_then(|e| {
                e.downcast_ref::<tonic::Status>()
                    .and_then(sitelink_commons::reconnect::pushback)
            });
            let ended = match busy {
                Some(after) => Ended::Busy(after),
                None if established => Ended::Lost(started.elapsed()),
                None => Ended::Failed,
            };
            if busy.is_none() && !(established && result.is_ok()) {
                at += 1;
            }
            match (&result, ended) {
                (_, Ended::Busy(after)) => {
                    tracing::info!(%address, after_ms = after.as_millis() as u64, "central is busy admitting other sites; retrying when it said")
                }
                (Ok(()), _) => tracing::info!(%address, "central closed the stream"),
                (Err(e), _) => tracing::warn!(%address, error = %e, "central link down"),
            }
            let delay = schedule.next_delay(ended);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::debug!("central link stopped");
    }

    /// One stream to `address`; `established` turns true once central has
    /// accepted it.
    async fn session(&self, address: &str, established: &mut bool) -> anyhow::Result<()> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())?;
        if let Some(ca) = &self.config.ca_file {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca)?));
            if let Some(domain) = &self.config.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_millis(self.config.keepalive_ms))
            .keep_alive_timeout(Duration::from_millis(self.config.keepalive_ms))
            .keep_alive_while_idle(true)
            .connect()
            .await?;
        let mut client = SiteLinkClient::new(channel);
        let (tx, rx) = mpsc::channel::<SiteMessage>(64);
        let high = self.engine.high_seq();
        let hello = v1::Hello {
            site: self.engine.site().to_owned(),
            protocol_version: PROTOCOL_VERSION,
            high_seq: high,
        };
        tx.send(SiteMessage {
            correlation: 0,
            body: Some(site_message::Body::Hello(hello)),
        })
        .await?;
        // When Hello left: with central's clock in the Welcome and the time
        // it arrived, this bounds the offset between the two clocks.
        let hello_sent_ms = sitelink_commons::now_unix_ms();
        let mut clock: Option<ClockOffset> = None;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.config.token).parse()?,
        );
        let mut inbound = client.open(request).await?.into_inner();
        *established = true;
        tracing::info!(%address, "connected to central");
        let mut queries = match &self.queries {
            Some(q) => Some(q.lock().await),
            None => None,
        };
        let _connected = queries.as_ref().map(|q| Connected::mark(&q.connected));
        // Status questions sent and not yet answered, by correlation.
        let mut asked: HashMap<u64, oneshot::Sender<Option<TrackingRecord>>> = HashMap::new();
        let mut correlation = 0u64;
        // Forwarded and not yet acknowledged (all of them again after a
        // reconnect: at-least-once; central inserts if not exists).
        let mut in_flight: HashSet<TrackedOperationId> = HashSet::new();
        // Subscribe before anything is read: a watch subscription counts
        // the current value as seen, so a change published between a read
        // and a later subscription would never wake this loop (a
        // notification recorded right after the first look then waited for
        // the next unrelated change, or for ever).
        let mut changes = self.engine.subscribe_changes();
        // Read before looking, so a notification recorded meanwhile moves
        // it again and is looked for at the next change. (The writer bumps
        // the counter after its commit and before it publishes the change.)
        let mut notifications_seen = self.engine.notifications_recorded();
        self.forward(&tx, &mut in_flight).await?;
        let mut replay = self.replay.clone();
        let wanted = replay.borrow_and_update().clone();
        self.send_replay(&tx, wanted).await?;

        // Telemetry covers what changes from now on; central's reconcile on
        // connect covers everything up to now.
        let mut sent = high;
        // Acknowledged notifications not yet marked forwarded: marked in one
        // write once no message is waiting (biased select below).
        let mut acked: Vec<TrackedOperationId> = Vec::new();
        loop {
            tokio::select! {
                biased;
                msg = inbound.message() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    match msg.body {
                        Some(central_message::Body::NotificationAck(ack)) => {
                            match ack.id.parse::<TrackedOperationId>() {
                                Ok(id) => acked.push(id),
                                Err(e) => tracing::warn!(id = %ack.id, error = %e, "acknowledgement of an unreadable id; ignored"),
                            }
                        }
                        Some(central_message::Body::NotificationStatus(answer)) => {
                            if let Some(reply) = asked.remove(&msg.correlation) {
                                let record = answer
                                    .record
                                    .filter(|_| answer.found)
                                    .and_then(|r| TrackingRecord::try_from(&r).ok());
                                let _ = reply.send(record);
                            }
                        }
                        Some(central_message::Body::Welcome(ref w)) => {
                            clock = Some(ClockOffset::measure(hello_sent_ms, w.central_time_unix_ms, sitelink_commons::now_unix_ms()));
                            self.answer(msg, clock).await?;
                        }
                        _ => {
                            if let Some(answer) = self.answer(msg, clock).await? {
                                tx.send(answer).await?;
                            }
                        }
                    }
                }
                _ = std::future::ready(()), if !acked.is_empty() => {
                    let ids = std::mem::take(&mut acked);
                    for id in &ids {
                        in_flight.remove(id);
                    }
                    self.engine.mark_forwarded(ids).await?;
                    self.forward(&tx, &mut in_flight).await?;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    while sent < self.engine.high_seq() {
                        let (rows, to, _) = self.page(sent, TELEMETRY_BATCH).await?;
                        let batch = v1::TelemetryBatch { from_seq: sent, to_seq: to, rows };
                        tx.send(SiteMessage { correlation: 0, body: Some(site_message::Body::Telemetry(batch)) }).await?;
                        sent = to;
                    }
                    // Only when Notify.Send recorded something: the common
                    // change (a cached call) costs no notification query.
                    let recorded = self.engine.notifications_recorded();
                    if recorded != notifications_seen {
                        notifications_seen = recorded;
                        self.forward(&tx, &mut in_flight).await?;
                    }
                }
                Ok(()) = replay.changed() => {
                    let wanted = replay.borrow_and_update().clone();
                    self.send_replay(&tx, wanted).await?;
                }
                Some(q) = async { queries.as_mut()?.rx.recv().await }, if queries.is_some() => {
                    correlation += 1;
                    asked.insert(correlation, q.reply);
                    let query = v1::NotificationStatusQuery { id: q.id.to_string() };
                    tx.send(SiteMessage { correlation, body: Some(site_message::Body::NotificationStatusQuery(query)) }).await?;
                }
            }
        }
    }

    /// Sends the replay state (nothing when there is none): each recovered
    /// target with its parked calls now.
    async fn send_replay(
        &self,
        tx: &mpsc::Sender<SiteMessage>,
        wanted: ReplayWanted,
    ) -> anyhow::Result<()> {
        if wanted == ReplayWanted::default() {
            return Ok(());
        }
        let mut state = v1::ReplayState {
            recovered: Vec::new(),
            stopped: wanted.stopped,
        };
        for r in wanted.recovered {
            let ids = self
                .engine
                .parked_of_target(r.kind, &r.target, REPLAY_MAX_IDS)
                .await?;
            state.recovered.push(v1::ReplayRecovery {
                recovery_id: r.recovery_id,
                kind: v1::Kind::from(r.kind) as i32,
                target: r.target,
                at_once: r.pace.at_once,
                per_minute: r.pace.per_minute,
                ids: ids.iter().map(|i| i.to_string()).collect(),
            });
        }
        tx.send(SiteMessage {
            correlation: 0,
            body: Some(site_message::Body::ReplayState(state)),
        })
        .await?;
        Ok(())
    }

    /// Forwards notifications not yet acknowledged nor in flight, keeping
    /// at most [`FORWARD_WINDOW`] unacknowledged.
    async fn forward(
        &self,
        tx: &mpsc::Sender<SiteMessage>,
        in_flight: &mut HashSet<TrackedOperationId>,
    ) -> anyhow::Result<()> {
        if in_flight.len() >= FORWARD_WINDOW {
            return Ok(());
        }
        let waiting = self
            .engine
            .notifications_to_forward(FORWARD_WINDOW as u32)
            .await?;
        for n in waiting {
            if in_flight.len() >= FORWARD_WINDOW {
                break;
            }
            if !in_flight.insert(n.id) {
                continue;
            }
            let body = v1::ForwardNotification {
                id: n.id.to_string(),
                source_site: self.engine.site().to_owned(),
                list: n.list,
                subject: n.subject,
                body: n.body,
                provenance: n.provenance,
                created_at_unix_ms: n.created_at_ms,
            };
            tx.send(SiteMessage {
                correlation: 0,
                body: Some(site_message::Body::ForwardNotification(body)),
            })
            .await?;
        }
        Ok(())
    }

    /// Site calls changed after `after`, the sequence up to which they cover
    /// every change completely, and whether the page was full. Notification
    /// rows are left out (they reach central as forwarded notifications,
    /// never as site calls) but still count as covered.
    async fn page(
        &self,
        after: u64,
        limit: u32,
    ) -> anyhow::Result<(Vec<v1::CachedCallTelemetry>, u64, bool)> {
        // Read the high mark first: every change up to it is either in the
        // page or was superseded by a later change of the same row.
        let high = self.engine.high_seq();
        let rows = self.engine.changes_after(after, limit).await?;
        let last = rows.last().map_or(after, |r| r.change_seq);
        let to = if (rows.len() as u32) < limit {
            last.max(high).max(after)
        } else {
            last
        };
        let full = rows.len() as u32 == limit;
        let calls = rows
            .iter()
            .filter(|r| r.kind != Kind::Notification)
            .map(telemetry)
            .collect();
        Ok((calls, to, full))
    }

    async fn answer(
        &self,
        msg: v1::CentralMessage,
        clock: Option<ClockOffset>,
    ) -> anyhow::Result<Option<SiteMessage>> {
        let reply = |body| {
            Some(SiteMessage {
                correlation: msg.correlation,
                body: Some(body),
            })
        };
        Ok(match msg.body {
            Some(central_message::Body::Welcome(w)) => {
                tracing::info!(
                    cursor = w.cursor,
                    "central has this site's changes up to its cursor"
                );
                self.engine.set_acked_cursor(w.cursor).await?;
                None
            }
            Some(central_message::Body::CursorAck(a)) => {
                self.engine.set_acked_cursor(a.cursor).await?;
                None
            }
            Some(central_message::Body::Reconcile(r)) => {
                let limit = r.limit.clamp(1, 10_000);
                let (rows, next_seq, has_more) = self.page(r.after_seq, limit).await?;
                reply(site_message::Body::Reconcile(
                    v1::CachedCallReconcileResponse {
                        rows,
                        next_seq,
                        has_more,
                    },
                ))
            }
            Some(central_message::Body::Retry(v1::RetryParkedOperation {
                id,
                expires_at_unix_ms,
            })) => reply(site_message::Body::CommandResult(
                self.command(&id, true, expires_at_unix_ms, clock).await,
            )),
            Some(central_message::Body::Discard(v1::DiscardParkedOperation {
                id,
                expires_at_unix_ms,
            })) => reply(site_message::Body::CommandResult(
                self.command(&id, false, expires_at_unix_ms, clock).await,
            )),
            Some(central_message::Body::BulkCommand(b)) => reply(
                site_message::Body::BulkCommandResult(self.bulk(b, clock).await),
            ),
            Some(central_message::Body::AttemptHistoryQuery(q)) => reply(
                site_message::Body::AttemptHistory(self.history(&q.id).await),
            ),
            // Handled by the session loop, which owns their state.
            Some(central_message::Body::NotificationAck(_))
            | Some(central_message::Body::NotificationStatus(_)) => None,
            None => {
                tracing::warn!("a message from central with no body (newer central?); ignored");
                None
            }
        })
    }

    /// An operation's attempt history and stored request, for central's
    /// detail page.
    async fn history(&self, id: &str) -> v1::AttemptHistoryAnswer {
        let mut answer = v1::AttemptHistoryAnswer {
            id: id.to_owned(),
            ..Default::default()
        };
        let parsed = match id.parse::<TrackedOperationId>() {
            Ok(p) => p,
            Err(e) => {
                answer.error = Some(e.to_string());
                return answer;
            }
        };
        match self.engine.history(parsed).await {
            Ok(None) => {}
            Ok(Some(h)) => {
                answer.found = true;
                answer.attempts = h
                    .attempts
                    .into_iter()
                    .map(|a| v1::Attempt {
                        number: a.number,
                        at_unix_ms: a.at_ms,
                        duration_ms: a.duration_ms,
                        outcome: a.outcome,
                        error: a
                            .error
                            .map(|e| truncate_chars(&e, LAST_ERROR_MAX_CHARS).into_owned()),
                        code: a.code,
                    })
                    .collect();
                answer.request_json = h.request.map(|r| r.to_string());
            }
            Err(e) => answer.error = Some(e.to_string()),
        }
        answer
    }

    /// A bulk action's next ids for this site: one transaction, one
    /// outcome per id (issue 21). Expired, it applies none of them.
    async fn bulk(&self, b: v1::BulkCommand, clock: Option<ClockOffset>) -> v1::BulkCommandResult {
        let item = |id: &str, outcome: v1::CommandOutcome, error: Option<String>, at: i64| {
            v1::BulkCommandItem {
                id: id.to_owned(),
                outcome: outcome as i32,
                error,
                applied_at_unix_ms: at,
            }
        };
        let answer = |items| v1::BulkCommandResult {
            bulk_action: b.bulk_action.clone(),
            items,
        };
        let retry = match v1::BulkVerb::try_from(b.verb) {
            Ok(v1::BulkVerb::Retry) => true,
            Ok(v1::BulkVerb::Discard) => false,
            _ => {
                let e = format!("unknown bulk verb {}", b.verb);
                return answer(
                    b.ids
                        .iter()
                        .map(|id| item(id, v1::CommandOutcome::Error, Some(e.clone()), 0))
                        .collect(),
                );
            }
        };
        let expired = b.expires_at_unix_ms != 0
            && clock.is_none_or(|c| {
                c.latest_central_time(sitelink_commons::now_unix_ms()) >= b.expires_at_unix_ms
            });
        if expired {
            tracing::warn!(bulk_action = %b.bulk_action, ids = b.ids.len(), "a bulk command from central arrived after its expiry; not applied");
            let e = "arrived after its expiry; not applied";
            return answer(
                b.ids
                    .iter()
                    .map(|id| item(id, v1::CommandOutcome::Expired, Some(e.into()), 0))
                    .collect(),
            );
        }
        // Ids that do not parse are answered as errors; the rest go to the
        // engine in one write, their answers put back in order.
        let parsed: Vec<Result<TrackedOperationId, String>> = b
            .ids
            .iter()
            .map(|id| id.parse::<TrackedOperationId>().map_err(|e| e.to_string()))
            .collect();
        let good: Vec<TrackedOperationId> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
        let key = format!("bulk:{}", b.bulk_action);
        let applied = self.engine.apply_bulk(&key, retry, good).await;
        tracing::info!(bulk_action = %b.bulk_action, ids = b.ids.len(), retry, ok = applied.is_ok(), "bulk command from central");
        let mut outcomes = match applied {
            Ok(items) => items.into_iter(),
            Err(e) => {
                let e = e.to_string();
                return answer(
                    b.ids
                        .iter()
                        .map(|id| item(id, v1::CommandOutcome::Error, Some(e.clone()), 0))
                        .collect(),
                );
            }
        };
        let items = b
            .ids
            .iter()
            .zip(parsed)
            .map(|(id, p)| match p {
                Err(e) => item(id, v1::CommandOutcome::Error, Some(e), 0),
                Ok(_) => match outcomes.next() {
                    Some(BulkItemOutcome::Applied { at_ms }) => {
                        item(id, v1::CommandOutcome::Applied, None, at_ms)
                    }
                    Some(BulkItemOutcome::NotFound) => {
                        item(id, v1::CommandOutcome::NotFound, None, 0)
                    }
                    Some(BulkItemOutcome::NotParked(s)) => item(
                        id,
                        v1::CommandOutcome::NotParked,
                        Some(format!("status is {s}")),
                        0,
                    ),
                    Some(BulkItemOutcome::Error(e)) => {
                        item(id, v1::CommandOutcome::Error, Some(e), 0)
                    }
                    None => item(
                        id,
                        v1::CommandOutcome::Error,
                        Some("no answer from the engine".into()),
                        0,
                    ),
                },
            })
            .collect();
        answer(items)
    }

    async fn command(
        &self,
        id: &str,
        retry: bool,
        expires_at_unix_ms: i64,
        clock: Option<ClockOffset>,
    ) -> v1::CommandResult {
        let expired = expires_at_unix_ms != 0
            && clock.is_none_or(|c| {
                c.latest_central_time(sitelink_commons::now_unix_ms()) >= expires_at_unix_ms
            });
        let (outcome, error) = match id.parse::<TrackedOperationId>() {
            Err(e) => (v1::CommandOutcome::Error, Some(e.to_string())),
            Ok(_) if expired => {
                tracing::warn!(%id, retry, "operator command from central arrived after its expiry; not applied");
                (
                    v1::CommandOutcome::Expired,
                    Some("arrived after its expiry; not applied".into()),
                )
            }
            Ok(op) => {
                let applied = if retry {
                    self.engine.retry_parked(op).await
                } else {
                    self.engine.discard_parked(op).await
                };
                tracing::info!(%id, retry, ?applied, "operator command from central");
                match applied {
                    Ok(CommandOutcome::Applied) => (v1::CommandOutcome::Applied, None),
                    Ok(CommandOutcome::NotFound) => (v1::CommandOutcome::NotFound, None),
                    Ok(CommandOutcome::NotParked(s)) => (
                        v1::CommandOutcome::NotParked,
                        Some(format!("status is {s}")),
                    ),
                    Err(e) => (v1::CommandOutcome::Error, Some(e.to_string())),
                }
            }
        };
        v1::CommandResult {
            id: id.to_owned(),
            outcome: outcome as i32,
            error,
        }
    }
}

/// How far central's clock may be from this site's, as measured on one
/// connection: central stamped its Welcome at `central` between our Hello
/// (`sent`) and the Welcome's arrival (`received`), so central's clock at
/// site time `t` lies within `t + offset ± error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    pub offset_ms: i64,
    pub error_ms: i64,
}

impl ClockOffset {
    pub fn measure(sent: i64, central: i64, received: i64) -> Self {
        let mid = sent + (received - sent) / 2;
        Self {
            offset_ms: central - mid,
            // Half the round trip, plus the clocks' millisecond granularity.
            error_ms: (received - sent).max(0) / 2 + 2,
        }
    }

    /// The latest central's clock can read at site time `now`.
    pub fn latest_central_time(&self, now: i64) -> i64 {
        now + self.offset_ms + self.error_ms
    }
}

/// Marks the link connected for `Notify.Status` while it lives.
struct Connected(std::sync::Arc<AtomicBool>);

impl Connected {
    fn mark(flag: &std::sync::Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        Self(flag.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn telemetry(r: &TrackingRecord) -> v1::CachedCallTelemetry {
    let mut t = v1::CachedCallTelemetry::from(r);
    t.last_error = t
        .last_error
        .map(|e| truncate_chars(&e, LAST_ERROR_MAX_CHARS).into_owned());
    t
}

#[cfg(test)]
mod tests {
    use super::ClockOffset;

    /// Central 5 s ahead, a 40 ms round trip: central's clock is known to
    /// within half the round trip, and the latest it can read errs late.
    #[test]
    fn the_clock_offset_is_bounded_by_half_the_round_trip() {
        let c = ClockOffset::measure(1_000, 6_020, 1_040);
        assert_eq!(c.offset_ms, 5_000);
        assert_eq!(c.error_ms, 22);
        assert_eq!(c.latest_central_time(2_000), 7_022);
        // Wherever within the round trip central stamped the Welcome, the
        // bound is never below central's real clock.
        let true_offset = 5_000;
        for stamped_at_site_time in 1_000..=1_040 {
            let c = ClockOffset::measure(1_000, stamped_at_site_time + true_offset, 1_040);
            assert!(c.latest_central_time(2_000) >= 2_000 + true_offset);
        }
    }
}
