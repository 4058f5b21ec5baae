//! Retry/Discard received by a standby node, carried out by the active one
//! (which holds the site's stream), through the shared database: the
//! standby inserts a `relay_requests` row and `NOTIFY sitelink_relay`; the
//! active node claims it (a fenced write: a node whose term is over claims
//! nothing), relays it as if an operator had asked it there, and writes the
//! outcome; the standby, polling the row, answers the operator with it.
//! The outcomes are the same as on the active node; the audit log entry is
//! written once, by the node the operator asked.

use std::time::Duration;

use sitelink_commons::TrackedOperationId;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::{
    configuration_database::{leader_lease::is_fenced, now_ms, Database},
    site_call_audit::{Command, CommandOutcome, SiteCallAudit},
};

const CHANNEL: &str = "sitelink_relay";
/// How often the standby looks for the outcome, and the active node for
/// requests it was not notified of.
const POLL: Duration = Duration::from_millis(100);

fn outcome_of(name: &str, error: Option<String>) -> CommandOutcome {
    match name {
        "Applied" => CommandOutcome::Applied,
        "NotFound" => CommandOutcome::NotFound,
        "NotParked" => CommandOutcome::NotParked,
        "SiteUnreachable" => CommandOutcome::SiteUnreachable,
        "Timeout" => CommandOutcome::Timeout,
        _ => CommandOutcome::Error(error.unwrap_or_else(|| name.to_owned())),
    }
}

/// On a standby: has the active node carry out `command` for `by` on
/// `site`, and waits for the outcome (`Timeout` after `timeout` plus a
/// second for the hand-over through the database).
pub async fn forward(
    db: &Database,
    by: &str,
    site: &str,
    command: Command,
    timeout: Duration,
) -> anyhow::Result<CommandOutcome> {
    let id = uuid::Uuid::now_v7().to_string();
    let (name, tracked) = match command {
        Command::Retry(t) => ("retry", t),
        Command::Discard(t) => ("discard", t),
    };
    sqlx::query(
        "INSERT INTO relay_requests (id, by_user, site, tracked_id, command, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(by)
    .bind(site)
    .bind(tracked.to_string())
    .bind(name)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(&id)
        .execute(db.pool())
        .await?;
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(1);
    loop {
        let row =
            sqlx::query("SELECT outcome, error, claimed_by FROM relay_requests WHERE id = $1")
                .bind(&id)
                .fetch_one(db.pool())
                .await?;
        if let Some(outcome) = row.try_get::<Option<String>, _>(0)? {
            sqlx::query("DELETE FROM relay_requests WHERE id = $1")
                .bind(&id)
                .execute(db.pool())
                .await?;
            return Ok(outcome_of(&outcome, row.try_get(1)?));
        }
        if tokio::time::Instant::now() >= deadline {
            // Unclaimed: withdrawn, so it can never be applied late.
            let withdrawn =
                sqlx::query("DELETE FROM relay_requests WHERE id = $1 AND claimed_by IS NULL")
                    .bind(&id)
                    .execute(db.pool())
                    .await?;
            if withdrawn.rows_affected() == 1 {
                return Ok(CommandOutcome::SiteUnreachable);
            }
            return Ok(CommandOutcome::Timeout);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// On the active node, for one term: claims forwarded requests (through
/// `db`, fenced to the term) and relays them through `audit`, until
/// `cancel` fires.
pub async fn serve(
    db: Database,
    url: String,
    node: String,
    audit: SiteCallAudit,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
        Ok(mut l) => l.listen(CHANNEL).await.ok().map(|()| l),
        Err(_) => None,
    };
    loop {
        match claim(&db, &node).await {
            Ok(Some((id, by, site, tracked, command))) => {
                let audit = audit.clone();
                let db = db.clone();
                tokio::spawn(async move {
                    let command = if command == "retry" {
                        Command::Retry(tracked)
                    } else {
                        Command::Discard(tracked)
                    };
                    let outcome = audit.relay(&by, &site, command, timeout).await;
                    let error = match &outcome {
                        CommandOutcome::Error(e) => Some(e.clone()),
                        _ => None,
                    };
                    if let Err(e) = sqlx::query(
                        "UPDATE relay_requests SET outcome = $2, error = $3 WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(outcome.name())
                    .bind(error)
                    .execute(db.pool())
                    .await
                    {
                        tracing::warn!(error = %e, "recording a forwarded relay's outcome");
                    }
                });
                continue;
            }
            Ok(None) => {}
            Err(e) if is_fenced(&e) => return,
            Err(e) => tracing::warn!(error = %e, "claiming forwarded relays"),
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => {
                    let _ = l.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL * 5) => {}
            _ = notified => {}
        }
    }
}

type Claimed = (String, String, String, TrackedOperationId, String);

/// Claims the oldest unclaimed request, in a fenced transaction.
async fn claim(db: &Database, node: &str) -> Result<Option<Claimed>, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    db.fence(&mut tx).await?;
    let row = sqlx::query(
        "UPDATE relay_requests SET claimed_by = $1
         WHERE id = (SELECT id FROM relay_requests WHERE claimed_by IS NULL
                     ORDER BY created_at_ms LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, by_user, site, tracked_id, command",
    )
    .bind(node)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(r) = row else { return Ok(None) };
    let tracked: String = r.try_get(3)?;
    let tracked = tracked
        .parse()
        .map_err(|e: sitelink_commons::ParseIdError| sqlx::Error::Decode(e.to_string().into()))?;
    Ok(Some((
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        tracked,
        r.try_get(4)?,
    )))
}
