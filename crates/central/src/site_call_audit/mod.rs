//! Site Call Audit (SPEC §2 component 8, §5.2): central's view of every
//! site's cached calls.
//!
//! - [`IngestBatcher`]: the one task that commits ingest, batching the
//!   telemetry and reconcile pages of all sites into few transactions.
//!
//! Its other parts live where they run: the reconcile schedule in each
//! site's stream ([`crate::communication`]), the Retry/Discard relay
//! in [`crate::communication::Sessions`] (called by the REST API, which
//! writes the audit log), KPIs and listing in
//! [`crate::configuration_database::SiteCalls`]. This module owns the
//! retention purge ([`RetentionPurge`]): terminal rows older than the
//! retention window are deleted daily; `Parked`, `Pending` and `Retrying`
//! rows never are.

mod ingest;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::configuration_database::{now_ms, Database};

pub use ingest::IngestBatcher;

/// The daily retention purge of `SiteCalls`.
pub struct RetentionPurge {
    db: Database,
    retention_days: i64,
    every: Duration,
}

impl RetentionPurge {
    pub fn new(db: Database, retention_days: i64) -> Self {
        Self {
            db,
            retention_days,
            every: Duration::from_secs(86_400),
        }
    }

    /// Deletes terminal rows that became terminal before `now_ms` minus the
    /// retention window; returns how many.
    pub async fn run_once(&self, now_ms: i64) -> Result<u64, sqlx::Error> {
        let before = now_ms - self.retention_days * 86_400_000;
        let done = sqlx::query(
            "DELETE FROM site_calls
             WHERE terminal_at_ms IS NOT NULL AND terminal_at_ms < $1
               AND status IN ('Delivered', 'Failed', 'Discarded')",
        )
        .bind(before)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Purges now and then daily until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            match self.run_once(now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "retention purge of site calls"),
                Err(e) => tracing::error!(error = %e, "retention purge failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }
}
