//! Site Call Audit (SPEC §2 component 8, §5.2): central's view of every
//! site's cached calls.
//!
//! - [`SiteCallAuditActor`] and its handle [`SiteCallAudit`]: the one task
//!   that owns ingest batching, the reconcile schedule, the Retry/Discard
//!   relay, the fold of the KPI counters and the daily retention purge.
//! - [`RetentionPurge`]: terminal rows older than the retention window are
//!   deleted; `Parked`, `Pending` and `Retrying` rows never are. The same
//!   daily run deletes what nothing else would: forwarded relay requests
//!   whose waiter died, and web sessions idle past their timeout (a
//!   login purges those too, but a central nobody logs in to kept them).
//!
//! The SQL lives in [`crate::configuration_database::SiteCalls`] (ingest
//! rule, listing, KPIs); the wire protocol in [`crate::communication`]; the
//! operator audit log is written by the REST API, which knows who asked.

mod actor;
mod command;

use crate::configuration_database::Database;

pub use actor::{
    expiry_margin, AuditSettings, SiteCallAudit, SiteCallAuditActor, StreamId, StreamOrder,
};
pub use command::{Command, CommandOutcome};

/// The daily retention purge of `SiteCalls`, relay left-overs and idle
/// web sessions.
pub struct RetentionPurge {
    db: Database,
    retention_days: i64,
    ui_idle_ms: i64,
}

/// What one purge deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub site_calls: u64,
    pub relay_requests: u64,
    pub ui_sessions: u64,
}

impl RetentionPurge {
    /// Web sessions are purged after the default idle timeout (8 hours)
    /// unless [`Self::with_ui_idle`] says otherwise.
    pub fn new(db: Database, retention_days: i64) -> Self {
        Self {
            db,
            retention_days,
            ui_idle_ms: 8 * 3_600_000,
        }
    }

    /// Web sessions idle longer than this are deleted.
    pub fn with_ui_idle(mut self, idle: std::time::Duration) -> Self {
        self.ui_idle_ms = idle.as_millis() as i64;
        self
    }

    /// Deletes terminal rows that became terminal before `now_ms` minus the
    /// retention window, relay requests older than
    /// [`crate::configuration_database::RELAY_REQUEST_KEPT`] and sessions
    /// idle past the timeout.
    pub async fn run_once(&self, now_ms: i64) -> Result<Purged, sqlx::Error> {
        let site_calls = self
            .db
            .site_calls()
            .purge(now_ms - self.retention_days * 86_400_000)
            .await?;
        let kept = crate::configuration_database::RELAY_REQUEST_KEPT.as_millis() as i64;
        let relay_requests = self.db.relay_requests().purge(now_ms - kept).await?;
        let ui_sessions = self.db.ui_sessions().purge_idle(self.ui_idle_ms).await?;
        Ok(Purged {
            site_calls,
            relay_requests,
            ui_sessions,
        })
    }
}
