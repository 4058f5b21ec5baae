//! The operator audit log (SPEC §5.2): one entry per operator action (who,
//! when, what, on which id or name, the outcome), newest first. Written by
//! the layer that knows who asked (operator actions, the admin pages);
//! never changed after.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, rfc3339, Database};

/// One operator action (SPEC §5.2: who, when, which id, outcome).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at_utc: String,
    pub user: String,
    pub action: String,
    /// The TrackedOperationId acted on; for an administration action
    /// (`site …`, `user …`) the site's or user's name instead.
    pub tracked_operation_id: String,
    pub source_site: Option<String>,
    pub outcome: String,
}

pub struct AuditLog<'a> {
    db: &'a Database,
}

impl<'a> AuditLog<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    pub async fn record(
        &self,
        user: &str,
        action: &str,
        target_id: &str,
        source_site: Option<&str>,
        outcome: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, user_name, action, target_id, source_site, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(now_ms())
        .bind(user)
        .bind(action)
        .bind(target_id)
        .bind(source_site)
        .bind(outcome)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The newest `limit` entries about one id or subject, newest first.
    pub async fn for_target(
        &self,
        target: &str,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, at_ms, user_name, action, target_id, source_site, outcome FROM audit_log
             WHERE target_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(target)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(entry).collect()
    }

    /// Newest first, after the entry id `after` (keyset paging).
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, at_ms, user_name, action, target_id, source_site, outcome FROM audit_log
             WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(entry).collect()
    }
}

fn entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        id: r.try_get(0)?,
        at_utc: rfc3339(r.try_get(1)?),
        user: r.try_get(2)?,
        action: r.try_get(3)?,
        tracked_operation_id: r.try_get(4)?,
        source_site: r.try_get(5)?,
        outcome: r.try_get(6)?,
    })
}
