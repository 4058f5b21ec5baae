//! Simulated sites for fleet tests and `sitelink bench fleet` (issue 22):
//! thin sites that speak the real link protocol to a real central, so a
//! thousand of them fit in one process.
//!
//! Main types: [`SimSite`] (one site: its rows in memory, one task that
//! keeps its stream open), [`SimSpec`] (who it is and where central is),
//! [`SimReport`] (what it saw: attempts, "busy" answers and their
//! pushbacks, when it streamed, lost and redialled, its change-to-commit
//! latencies).
//!
//! What is real: the gRPC stream (`SiteLink.Open`) with the token in the
//! metadata, Hello/Welcome, telemetry batches that cover `(from, to]`,
//! reconcile pages with the same completeness rule as the real site
//! (`central_link::page`), CursorAck, and the reconnect schedule, which is
//! the real one ([`sitelink_commons::reconnect`]). What is thin: the rows
//! live in a map instead of the Store-and-Forward Engine (no fsync, no
//! scripts), commands and notifications are not spoken, and each site
//! dials from its own loopback address (`127.x.y.z`), as a fleet does from
//! its own hosts.
//!
//! A change is committed at central when a CursorAck covers its sequence
//! (central acknowledges only ranges it has committed); the latency
//! recorded is from the change to that acknowledgement.
//!
//! Every loop here stops on the cancellation token it was given.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sitelink_commons::{
    contracts::v1::{self, central_message, site_link_client::SiteLinkClient, site_message},
    reconnect::{pushback, Ended, ReconnectSchedule},
    TrackedOperationId,
};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The protocol version the simulated site speaks (the real site's).
const PROTOCOL_VERSION: u32 = 1;
/// Rows per telemetry batch (the real site's).
const TELEMETRY_BATCH: usize = 500;

/// Who a simulated site is and how it reaches central.
#[derive(Clone, Debug)]
pub struct SimSpec {
    pub name: String,
    pub token: String,
    pub central: SocketAddr,
    /// The loopback address it dials from.
    pub from: Ipv4Addr,
    /// `reconnect_spread_ms` of a real site.
    pub spread: Duration,
    /// `reconnect_max_ms` of a real site.
    pub reconnect_max: Duration,
}

/// The `i`-th loopback address of a fleet (127.1.0.1, 127.1.0.2, …).
pub fn loopback(i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// The most of `sorted` (instants or durations, in order) that fall
/// within `window` of one of them: how bunched a set of events is.
pub fn most_within<T>(sorted: &[T], window: Duration) -> usize
where
    T: Copy + std::ops::Sub<Output = Duration>,
{
    let mut most = 0;
    let mut end = 0;
    for (start, t) in sorted.iter().enumerate() {
        end = end.max(start);
        while end < sorted.len() && sorted[end] - *t < window {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

/// What one simulated site saw.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Dials started.
    pub attempts: u64,
    /// Dials that failed before central accepted a stream (refused,
    /// unreachable, an error status), "busy" answers not counted.
    pub failed: u64,
    /// "Busy, retry after" answers, each with when it came and the
    /// pushback it carried.
    pub busy: Vec<(Instant, Duration)>,
    /// Dials made before the last pushback had passed (must stay 0).
    pub early: u64,
    /// Streams central accepted, each with when.
    pub admitted: Vec<Instant>,
    /// Whether a stream is up now.
    pub streaming: bool,
    /// When the last stream was lost.
    pub lost_at: Option<Instant>,
    /// The first dial after the last loss.
    pub redialled_at: Option<Instant>,
    /// The site's high sequence when its current stream opened.
    pub high_at_connect: u64,
    /// Central's acknowledged cursor.
    pub cursor: u64,
    /// When the cursor first covered `high_at_connect` on the current
    /// stream: everything central missed before it is in.
    pub reconciled_at: Option<Instant>,
    /// Change-to-acknowledgement latencies while recording.
    pub latencies: Vec<Duration>,
    /// Changes made.
    pub changes: u64,
}

struct State {
    /// Each row's latest state, by its change sequence.
    rows: BTreeMap<u64, v1::CachedCallTelemetry>,
    /// Where each id's row is in `rows`.
    seq_of: HashMap<String, u64>,
    /// When each change not yet acknowledged was made.
    made_at: BTreeMap<u64, Instant>,
    high: u64,
    /// The call opened last and not yet delivered (the next change
    /// delivers it).
    open: Option<String>,
    recording: bool,
    report: SimReport,
}

/// One simulated site.
#[derive(Clone)]
pub struct SimSite {
    spec: Arc<SimSpec>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl SimSite {
    pub fn new(spec: SimSpec) -> Self {
        Self {
            spec: Arc::new(spec),
            state: Arc::new(Mutex::new(State {
                rows: BTreeMap::new(),
                seq_of: HashMap::new(),
                made_at: BTreeMap::new(),
                high: 0,
                open: None,
                recording: false,
                report: SimReport::default(),
            })),
            changed: Arc::new(Notify::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What it saw so far.
    pub fn report(&self) -> SimReport {
        self.state().report.clone()
    }

    /// Records change-to-commit latencies from now on (or stops), and
    /// forgets those recorded so far.
    pub fn record_latencies(&self, on: bool) {
        let mut s = self.state();
        s.recording = on;
        s.report.latencies.clear();
    }

    /// The site's highest change sequence.
    pub fn high(&self) -> u64 {
        self.state().high
    }

    /// One change, as a real site makes them: a new call (Pending), or the
    /// call opened before it delivered (terminal), alternately.
    pub fn change(&self) {
        let now_ms = sitelink_commons::now_unix_ms();
        let mut s = self.state();
        s.high += 1;
        let seq = s.high;
        let row = match s.open.take() {
            Some(id) => {
                let old = s.seq_of.get(&id).copied().expect("the open call has a row");
                let mut row = s.rows.remove(&old).expect("the open call has a row");
                row.status = v1::Status::Delivered as i32;
                row.revision += 1;
                row.updated_at_unix_ms = now_ms;
                row.terminal_at_unix_ms = Some(now_ms);
                row.change_seq = seq;
                row
            }
            None => {
                let id = TrackedOperationId::new().to_string();
                s.open = Some(id.clone());
                v1::CachedCallTelemetry {
                    id,
                    source_site: self.spec.name.clone(),
                    kind: v1::Kind::ExternalCall as i32,
                    target_summary: "erp.postOrder".into(),
                    status: v1::Status::Pending as i32,
                    retry_count: 0,
                    last_error: None,
                    created_at_unix_ms: now_ms,
                    updated_at_unix_ms: now_ms,
                    terminal_at_unix_ms: None,
                    provenance: "line1/orders".into(),
                    revision: 1,
                    change_seq: seq,
                }
            }
        };
        s.seq_of.insert(row.id.clone(), seq);
        s.rows.insert(seq, row);
        s.made_at.insert(seq, Instant::now());
        s.report.changes += 1;
        drop(s);
        self.changed.notify_one();
    }

    /// Keeps a stream to central open until `cancel` fires, redialling on
    /// the real site's schedule.
    pub async fn run(self, cancel: CancellationToken) {
        let mut schedule = ReconnectSchedule::new(self.spec.spread, self.spec.reconnect_max);
        // A dial before this is early (a pushback not waited out).
        let mut not_before: Option<Instant> = None;
        loop {
            {
                let mut s = self.state();
                let now = Instant::now();
                s.report.attempts += 1;
                if not_before.is_some_and(|t| now < t) {
                    s.report.early += 1;
                }
                if s.report.lost_at.is_some() && s.report.redialled_at.is_none() {
                    s.report.redialled_at = Some(now);
                }
            }
            let mut accepted: Option<Instant> = None;
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.stream(&mut accepted) => r,
            };
            let now = Instant::now();
            let ended = {
                let mut s = self.state();
                s.report.streaming = false;
                match (&result, accepted) {
                    (Err(status), None) => match pushback(status) {
                        Some(after) => {
                            s.report.busy.push((now, after));
                            not_before = Some(now + after);
                            Ended::Busy(after)
                        }
                        None => {
                            s.report.failed += 1;
                            Ended::Failed
                        }
                    },
                    (_, Some(since)) => {
                        s.report.lost_at = Some(now);
                        s.report.redialled_at = None;
                        Ended::Lost(now - since)
                    }
                    (Ok(()), None) => {
                        s.report.failed += 1;
                        Ended::Failed
                    }
                }
            };
            let delay = schedule.next_delay(ended);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream; `accepted` is set once central accepted it.
    async fn stream(&self, accepted: &mut Option<Instant>) -> Result<(), tonic::Status> {
        let unreachable = |e: tonic::transport::Error| tonic::Status::unavailable(e.to_string());
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.spec.central))
                .map_err(unreachable)?
                .local_address(Some(self.spec.from.into()))
                .connect_timeout(Duration::from_secs(3))
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect()
                .await
                .map_err(unreachable)?;
        let mut client = SiteLinkClient::new(channel);
        let (tx, rx) = mpsc::channel::<v1::SiteMessage>(64);
        let high = self.high();
        let hello = v1::Hello {
            site: self.spec.name.clone(),
            protocol_version: PROTOCOL_VERSION,
            high_seq: high,
        };
        let _ = tx
            .send(v1::SiteMessage {
                correlation: 0,
                body: Some(site_message::Body::Hello(hello)),
            })
            .await;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let token = format!("Bearer {}", self.spec.token)
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("token"))?;
        request.metadata_mut().insert("authorization", token);
        let mut inbound = client.open(request).await?.into_inner();
        {
            let now = Instant::now();
            *accepted = Some(now);
            let mut s = self.state();
            s.report.admitted.push(now);
            s.report.streaming = true;
            s.report.high_at_connect = high;
            s.report.reconciled_at = None;
        }
        let lost = |_| tonic::Status::unavailable("the stream's sender is gone");
        let mut sent = high;
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    match msg.body {
                        Some(central_message::Body::Welcome(w)) => self.acknowledged(w.cursor, false),
                        Some(central_message::Body::CursorAck(a)) => self.acknowledged(a.cursor, true),
                        Some(central_message::Body::Reconcile(r)) => {
                            let page = self.page(r.after_seq, r.limit as usize);
                            tx.send(v1::SiteMessage {
                                correlation: msg.correlation,
                                body: Some(site_message::Body::Reconcile(page)),
                            })
                            .await
                            .map_err(lost)?;
                        }
                        // Commands and notification answers: not spoken.
                        _ => {}
                    }
                }
                () = self.changed.notified() => {
                    while let Some((rows, to)) = self.batch(sent) {
                        let batch = v1::TelemetryBatch { from_seq: sent, to_seq: to, rows };
                        tx.send(v1::SiteMessage {
                            correlation: 0,
                            body: Some(site_message::Body::Telemetry(batch)),
                        })
                        .await
                        .map_err(lost)?;
                        sent = to;
                    }
                }
            }
        }
    }

    /// Rows changed after `after` for a telemetry batch, and the sequence
    /// it covers up to; `None` when nothing changed.
    fn batch(&self, after: u64) -> Option<(Vec<v1::CachedCallTelemetry>, u64)> {
        let s = self.state();
        if s.high <= after {
            return None;
        }
        let rows: Vec<_> = s
            .rows
            .range(after + 1..)
            .take(TELEMETRY_BATCH)
            .map(|(_, r)| r.clone())
            .collect();
        let to = if rows.len() < TELEMETRY_BATCH {
            s.high
        } else {
            rows.last().map_or(s.high, |r| r.change_seq)
        };
        Some((rows, to))
    }

    /// A reconcile page: the real site's completeness rule.
    fn page(&self, after: u64, limit: usize) -> v1::CachedCallReconcileResponse {
        let s = self.state();
        let rows: Vec<_> = s
            .rows
            .range(after + 1..)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect();
        let full = rows.len() == limit;
        let last = rows.last().map_or(after, |r| r.change_seq);
        let next_seq = if full {
            last
        } else {
            last.max(s.high).max(after)
        };
        v1::CachedCallReconcileResponse {
            rows,
            next_seq,
            has_more: full,
        }
    }

    /// Central has everything up to `cursor` (a CursorAck when `ack`).
    fn acknowledged(&self, cursor: u64, ack: bool) {
        let now = Instant::now();
        let mut s = self.state();
        s.report.cursor = s.report.cursor.max(cursor);
        if s.report.reconciled_at.is_none() && s.report.cursor >= s.report.high_at_connect {
            s.report.reconciled_at = Some(now);
        }
        let rest = s.made_at.split_off(&(cursor + 1));
        let covered = std::mem::replace(&mut s.made_at, rest);
        if ack && s.recording {
            s.report
                .latencies
                .extend(covered.values().map(|t| now.duration_since(*t)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_within_counts_the_densest_window() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let w = Duration::from_millis(200);
        assert_eq!(
            most_within(&ms(&[0, 100, 150, 900, 1000, 1050, 1099]), w),
            4
        );
        assert_eq!(
            most_within(&ms(&[0, 100, 150, 900, 1000, 1050, 1100]), w),
            3
        );
        assert_eq!(most_within(&ms(&[0, 200, 400]), w), 1);
        assert_eq!(most_within::<Duration>(&[], w), 0);
    }
}
