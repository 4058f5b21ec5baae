//! Site Call Audit (SPEC §2 component 8, §5.2): central's view of every
//! site's cached calls.
//!
//! - [`SiteCallAuditActor`] and its handle [`SiteCallAudit`]: the one task
//!   that owns ingest batching, the reconcile schedule, the Retry/Discard
//!   relay, the fold of the KPI counters and the daily retention purge.
//! - [`RetentionPurge`]: terminal rows older than the retention window are
//!   deleted; `Parked`, `Pending` and `Retrying` rows never are.
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

/// The daily retention purge of `SiteCalls`.
pub struct RetentionPurge {
    db: Database,
    retention_days: i64,
}

impl RetentionPurge {
    pub fn new(db: Database, retention_days: i64) -> Self {
        Self { db, retention_days }
    }

    /// Deletes terminal rows that became terminal before `now_ms` minus the
    /// retention window; returns how many.
    pub async fn run_once(&self, now_ms: i64) -> Result<u64, sqlx::Error> {
        self.db
            .site_calls()
            .purge(now_ms - self.retention_days * 86_400_000)
            .await
    }
}
