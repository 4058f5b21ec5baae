//! [`RelayRequests`]: what the Configuration Database keeps of the
//! Retry/Discard requests a standby forwards to the active node (the
//! relay itself, claims and answers, is `operator_actions::relay`).
//!
//! The table exists on PostgreSQL only, where a cluster has a standby.
//! A request's row is deleted by the waiter that wrote it, once answered
//! or withdrawn. A waiter that dies first (its node killed mid-relay)
//! leaves its row behind; the daily retention purge deletes rows older
//! than [`RELAY_REQUEST_KEPT`], far beyond any relay's life (the command
//! timeout is at most 10 minutes).

use std::time::Duration;

use super::Database;

/// Requests older than this are left-overs of a waiter that died.
pub const RELAY_REQUEST_KEPT: Duration = Duration::from_secs(3600);

pub struct RelayRequests<'a> {
    db: &'a Database,
}

impl<'a> RelayRequests<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    /// Deletes requests made before `before_ms`; how many. (Only a
    /// cluster forwards requests: on SQLite, one node, there is no table.)
    pub async fn purge(&self, before_ms: i64) -> Result<u64, sqlx::Error> {
        if self.db.backend() != super::Backend::Postgres {
            return Ok(0);
        }
        Ok(
            sqlx::query("DELETE FROM relay_requests WHERE created_at_ms < $1")
                .bind(before_ms)
                .execute(self.db.pool())
                .await?
                .rows_affected(),
        )
    }
}
