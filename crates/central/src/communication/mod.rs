//! Central–Site Communication, central half (SPEC §2 component 6, §5.1):
//! the gRPC service every site opens one bidirectional stream to.
//!
//! Main types: [`LinkService`] (the tonic service: authentication, one task
//! per stream), [`LinkStats`], [`LinkSettings`]. The commands it carries and
//! how they end are the Site Call Audit actor's vocabulary
//! ([`crate::site_call_audit::Command`], [`crate::site_call_audit::CommandOutcome`]).
//!
//! Per stream: the token in the `authorization` metadata must name a known,
//! unrevoked site; then the stream must be admitted at the configured rate
//! ([`Admission`]: a site above it is answered "busy, retry after", its
//! turn reserved); the first message must be a Hello from that same site.
//! Then the stream registers with the Site Call Audit actor
//! ([`crate::site_call_audit`]), which decides when to reconcile and which
//! commands to relay; the stream speaks the protocol: it pulls reconcile
//! pages, hands telemetry and pages to the actor's ingest (the cursor
//! advances only over complete ranges, and the site hears of it in a
//! CursorAck), and routes command results back. A malformed message ends
//! that stream with a logged reason; nothing else is affected.
//!
//! Invariant: rows are ingested as the authenticated site; a row that names
//! another site is rejected and logged, and the rest of its batch lands.

mod admission;
mod session;

pub use admission::{Admission, AdmissionRate, Admitted};

use std::{
    pin::Pin,
    sync::{atomic::AtomicU64, Arc},
};

use sitelink_commons::contracts::v1::{
    self, site_link_server::SiteLink, CentralMessage, SiteMessage,
};
use sitelink_net::ConnectionInfo;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    configuration_database::Database, notification_outbox::Outbox, site_call_audit::SiteCallAudit,
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug)]
pub struct LinkSettings {
    /// Rows per reconcile page.
    pub reconcile_page: u32,
    /// New streams admitted: a burst, then so many a second.
    pub admit: AdmissionRate,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            reconcile_page: 1000,
            admit: AdmissionRate::default(),
        }
    }
}

/// Counters of what the link transferred (exported in `/metrics`).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Rows received in telemetry batches.
    pub telemetry_rows: AtomicU64,
    /// Rows received in reconcile pages.
    pub reconcile_rows: AtomicU64,
    /// Forwarded notifications stored (or found already stored) and
    /// acknowledged.
    pub notifications_forwarded: AtomicU64,
    /// Streams accepted (authenticated, Hello checked): a site that keeps
    /// reconnecting shows here.
    pub streams_opened: AtomicU64,
    /// Streams answered "busy, retry after" (over the admission rate).
    pub streams_busy: AtomicU64,
    /// The admission rate configured (a gauge beside the counters, so a
    /// dashboard can hold `streams_opened_total` against it).
    pub admit: AdmissionRate,
}

/// The tonic service.
pub struct LinkService {
    db: Database,
    settings: LinkSettings,
    stats: Arc<LinkStats>,
    /// Where every stream's rows, orders and answers go.
    audit: SiteCallAudit,
    /// Where forwarded notifications go.
    outbox: Outbox,
    /// Only an active node accepts streams; a stream ends when its node
    /// steps down (Cluster Infrastructure).
    leadership: tokio::sync::watch::Receiver<crate::cluster::Leadership>,
    /// New streams at the configured rate.
    admission: Admission,
}

impl LinkService {
    pub fn new(
        db: Database,
        audit: SiteCallAudit,
        outbox: Outbox,
        stats: Arc<LinkStats>,
        settings: LinkSettings,
        leadership: tokio::sync::watch::Receiver<crate::cluster::Leadership>,
    ) -> Self {
        Self {
            db,
            settings,
            stats,
            audit,
            outbox,
            leadership,
            admission: Admission::new(settings.admit),
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
        if !self.leadership.borrow().is_active() {
            return Err(Status::unavailable(
                "this central node is the standby: try the next address",
            ));
        }
        // The connection this stream came on (tonic gives its info, over
        // TLS too): marked established once the stream has authenticated,
        // which lifts its setup deadline (sitelink_net::listeners).
        let connection = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|c| c.established.clone());
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
            .map_err(|e| {
                // The database's words stay in central's log.
                tracing::error!(error = %e, "authenticating a site stream");
                Status::internal("central could not check the token; see central's log")
            })?
            .ok_or_else(|| {
                tracing::warn!("stream refused: unknown or revoked site token");
                Status::unauthenticated("unknown or revoked site token")
            })?;
        // After the token check, so only known sites spend or reserve a
        // cell; before anything that touches the database again.
        if let Admitted::RetryAfter(after) = self.admission.admit(&site) {
            self.stats
                .streams_busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%site, after_ms = after.as_millis() as u64, "stream admission: busy");
            return Err(sitelink_commons::reconnect::busy(after));
        }
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
        if let Some(established) = connection {
            established.mark();
        }
        self.stats
            .streams_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(256);
        tracing::info!(%site, high_seq = hello.high_seq, "site connected");
        let session = session::Session {
            site: site.clone(),
            db: self.db.clone(),
            tx,
            settings: self.settings,
            stats: self.stats.clone(),
            audit: self.audit.clone(),
            correlation: 0,
            commands: Default::default(),
            outbox: self.outbox.clone(),
        };
        let mut leadership = self.leadership.clone();
        tokio::spawn(async move {
            // The stream ends when this node stops being active: the site
            // then tries its next address.
            let stepped_down = async move {
                while leadership.borrow_and_update().is_active() {
                    if leadership.changed().await.is_err() {
                        return;
                    }
                }
            };
            let ended = tokio::select! {
                r = session.run(inbound, hello.high_seq) => r,
                () = stepped_down => Err("this central node stepped down to standby".into()),
            };
            match ended {
                Err(reason) => tracing::warn!(%site, %reason, "site stream closed"),
                Ok(()) => tracing::info!(%site, "site disconnected"),
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
