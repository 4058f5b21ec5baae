//! The retention rule: terminal rows older than the window go, open ones
//! (Pending, Retrying, Parked) never do.

use super::SiteCalls;
use crate::configuration_database::Database;

impl SiteCalls<'_> {
    /// Deletes terminal rows that became terminal before `before_ms`;
    /// never Pending, Retrying or Parked ones.
    pub async fn purge(&self, before_ms: i64) -> Result<u64, sqlx::Error> {
        purge_terminal(self.db, "site_calls", before_ms).await
    }
}

/// The retention rule of `table` (`site_calls` or `notifications`):
/// terminal rows older than `before_ms` go, open ones never.
pub(in crate::configuration_database) async fn purge_terminal(
    db: &Database,
    table: &str,
    before_ms: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    db.fence(&mut tx).await?;
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {table}
         WHERE terminal_at_ms IS NOT NULL AND terminal_at_ms < $1
           AND status IN ('Delivered', 'Failed', 'Discarded')"
    )))
    .bind(before_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}
