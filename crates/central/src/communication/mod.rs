//! Central–Site Communication, central half (SPEC §2 component 6, §5.1):
//! the gRPC service every site opens one bidirectional stream to.
//!
//! Main types: [`LinkService`] (the tonic service: authentication, one task
//! per stream), [`Sessions`] (the live streams by site; relays operator
//! commands and waits for their results), [`LinkSettings`].
//!
//! Per stream: the token in the `authorization` metadata must name a known,
//! unrevoked site; the first message must be a Hello from that same site.
//! Then central asks for a reconcile from its cursor, ingests telemetry and
//! reconcile pages (advancing the cursor only over complete ranges, and
//! telling the site with a CursorAck), reconciles again every
//! `reconcile_interval`, and relays commands. A malformed message ends that
//! stream with a logged reason; nothing else is affected.
//!
//! Invariant: rows are ingested as the authenticated site; a row that names
//! another site is rejected and logged, and the rest of its batch lands.

mod session;

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use sitelink_commons::{
    contracts::v1::{
        self, central_message, site_link_server::SiteLink, CentralMessage, SiteMessage,
    },
    TrackedOperationId,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::{configuration_database::Database, site_call_audit::IngestBatcher};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug)]
pub struct LinkSettings {
    /// Rows per reconcile page.
    pub reconcile_page: u32,
    /// How often a connected site is reconciled (besides on connect).
    pub reconcile_interval: Duration,
    /// How long a relayed command may take before it is a timeout.
    pub command_timeout: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            reconcile_page: 1000,
            reconcile_interval: Duration::from_secs(300),
            command_timeout: Duration::from_secs(5),
        }
    }
}

/// An operator command for a parked call, relayed to its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Retry(TrackedOperationId),
    Discard(TrackedOperationId),
}

/// How a relayed command ended (SPEC §7 names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayOutcome {
    Applied,
    NotFound,
    NotParked,
    SiteUnreachable,
    Timeout,
    Error(String),
}

/// One live stream.
struct Live {
    /// Which stream this is, so an old stream ending does not remove a newer.
    generation: u64,
    tx: mpsc::Sender<Result<CentralMessage, Status>>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<v1::CommandResult>>>>,
    correlation: Arc<AtomicU64>,
}

/// Counters of what the link transferred (exported in `/metrics`).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Rows received in telemetry batches.
    pub telemetry_rows: AtomicU64,
    /// Rows received in reconcile pages.
    pub reconcile_rows: AtomicU64,
}

/// The live streams, by site name.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    generations: AtomicU64,
    pub stats: Arc<LinkStats>,
}

impl Sessions {
    /// Names of the sites with a live stream.
    pub fn online(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    pub fn is_online(&self, site: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(site)
    }

    /// Relays a command to the owning site and waits for its answer: at once
    /// `SiteUnreachable` without a live stream, `Timeout` after `timeout`.
    pub async fn relay(&self, site: &str, command: Command, timeout: Duration) -> RelayOutcome {
        let (tx, pending, correlation) = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            match live.get(site) {
                None => return RelayOutcome::SiteUnreachable,
                Some(l) => (
                    l.tx.clone(),
                    l.pending.clone(),
                    l.correlation.fetch_add(1, Ordering::Relaxed) + 1,
                ),
            }
        };
        let (done, answer) = oneshot::channel();
        pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation, done);
        let body = match command {
            Command::Retry(id) => {
                central_message::Body::Retry(v1::RetryParkedOperation { id: id.to_string() })
            }
            Command::Discard(id) => {
                central_message::Body::Discard(v1::DiscardParkedOperation { id: id.to_string() })
            }
        };
        if tx
            .send(Ok(CentralMessage {
                correlation,
                body: Some(body),
            }))
            .await
            .is_err()
        {
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&correlation);
            return RelayOutcome::SiteUnreachable;
        }
        let result = tokio::time::timeout(timeout, answer).await;
        pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&correlation);
        match result {
            Err(_) => RelayOutcome::Timeout,
            // The stream ended before the answer came.
            Ok(Err(_)) => RelayOutcome::SiteUnreachable,
            Ok(Ok(r)) => match v1::CommandOutcome::try_from(r.outcome) {
                Ok(v1::CommandOutcome::Applied) => RelayOutcome::Applied,
                Ok(v1::CommandOutcome::NotFound) => RelayOutcome::NotFound,
                Ok(v1::CommandOutcome::NotParked) => RelayOutcome::NotParked,
                _ => {
                    RelayOutcome::Error(r.error.unwrap_or_else(|| format!("outcome {}", r.outcome)))
                }
            },
        }
    }

    fn register(&self, site: &str, live: Live) {
        if let Some(old) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.to_owned(), live)
        {
            tracing::info!(
                site,
                generation = old.generation,
                "a newer stream replaces the site's old one"
            );
        }
    }

    fn deregister(&self, site: &str, generation: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(site).is_some_and(|l| l.generation == generation) {
            live.remove(site);
        }
    }
}

/// The tonic service.
pub struct LinkService {
    db: Database,
    sessions: Arc<Sessions>,
    settings: LinkSettings,
    /// The one task that commits what every stream receives.
    ingest: IngestBatcher,
}

impl LinkService {
    pub fn new(db: Database, sessions: Arc<Sessions>, settings: LinkSettings) -> Self {
        let ingest = IngestBatcher::spawn(db.clone());
        Self {
            db,
            sessions,
            settings,
            ingest,
        }
    }
}

type OutStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<CentralMessage, Status>> + Send>>;

#[tonic::async_trait]
impl SiteLink for LinkService {
    type OpenStream = OutStream;

    async fn open(
        &self,
        request: Request<Streaming<SiteMessage>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?
            .to_owned();
        let site = self
            .db
            .sites()
            .authenticate(&token)
            .await
            .map_err(|e| Status::internal(format!("central database: {e}")))?
            .ok_or_else(|| {
                tracing::warn!("stream refused: unknown or revoked site token");
                Status::unauthenticated("unknown or revoked site token")
            })?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await {
            Ok(Some(SiteMessage {
                body: Some(v1::site_message::Body::Hello(h)),
                ..
            })) => h,
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ))
            }
            Err(e) => return Err(Status::invalid_argument(format!("reading the Hello: {e}"))),
        };
        if hello.site != site.as_str() {
            tracing::warn!(authenticated = %site, claimed = %hello.site, "Hello names another site; stream refused");
            return Err(Status::permission_denied(format!(
                "this token belongs to site {site}, not {:?}",
                hello.site
            )));
        }
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported (central speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            )));
        }
        let (tx, rx) = mpsc::channel(256);
        let generation = self.sessions.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let pending = Arc::new(Mutex::new(HashMap::new()));
        let correlation = Arc::new(AtomicU64::new(0));
        self.sessions.register(
            site.as_str(),
            Live {
                generation,
                tx: tx.clone(),
                pending: pending.clone(),
                correlation: correlation.clone(),
            },
        );
        tracing::info!(%site, high_seq = hello.high_seq, "site connected");
        let session = session::Session {
            site: site.clone(),
            db: self.db.clone(),
            tx,
            pending,
            correlation,
            settings: self.settings,
            stats: self.sessions.stats.clone(),
            ingest: self.ingest.clone(),
        };
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            if let Err(reason) = session.run(inbound, hello.high_seq).await {
                tracing::warn!(site = %session.site, %reason, "site stream closed");
            } else {
                tracing::info!(site = %session.site, "site disconnected");
            }
            sessions.deregister(session.site.as_str(), generation);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
