//! Operator actions on parked operations — Retry and Discard — as one
//! function that the REST API and the web UI both call (SPEC §5.2, §5.3):
//! the role check, the action itself, and the audit-log entry.
//!
//! - A site call's command is relayed to its owning site; central never
//!   edits the row, it waits for the site's telemetry. On a standby node
//!   (Cluster Infrastructure) the active node relays it
//!   ([`relay`]), with the same outcomes.
//! - A notification's command acts on central's own row (central is the
//!   deliverer); a Retry wakes the dispatcher.
//!
//! [`bulk`]: Retry/Discard of every parked call a filter matches, as a
//! recorded bulk action that the active node's [`bulk::BulkRunner`]
//! carries out at its pace.
//!
//! [`history`]: a site call's attempt history and stored request, asked of
//! its site.
//!
//! [`export`] streams a filtered set as CSV or JSON lines (the REST API and
//! the pages' Export links).
//!
//! Invariant: every attempt is written to the audit log (who, when, which
//! id, outcome), a refused one too (outcome `Forbidden`).

pub mod bulk;
pub mod export;
pub mod history;
pub mod relay;

use std::{sync::Arc, time::Duration};

use sitelink_commons::TrackedOperationId;

use crate::{
    cluster::ClusterHandle,
    configuration_database::{now_ms, Database, NotificationCommand, Role, User},
    notification_outbox::Outbox,
    site_call_audit::{Command, CommandOutcome, SiteCallAudit},
};

/// What an action acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    SiteCall,
    Notification,
}

/// Retry or Discard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Retry,
    Discard,
}

impl Action {
    /// The audit log's action name.
    pub fn audit_name(self, subject: Subject) -> &'static str {
        match (subject, self) {
            (Subject::SiteCall, Action::Retry) => "retry",
            (Subject::SiteCall, Action::Discard) => "discard",
            (Subject::Notification, Action::Retry) => "notification retry",
            (Subject::Notification, Action::Discard) => "notification discard",
        }
    }
}

/// How an action ended, and on which site's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionOutcome {
    pub outcome: CommandOutcome,
    /// The owning site (none when the id is unknown).
    pub site: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("role {} may not retry or discard", .0.as_str())]
    Forbidden(Role),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[derive(Clone)]
pub struct OperatorActions {
    db: Database,
    audit: SiteCallAudit,
    outbox: Outbox,
    command_timeout: Duration,
    /// On a standby, site-call commands go to the active node.
    cluster: ClusterHandle,
    /// Wakes this node's bulk runner when an action starts here.
    bulk_wake: Arc<tokio::sync::Notify>,
}

impl OperatorActions {
    pub fn new(
        db: Database,
        audit: SiteCallAudit,
        outbox: Outbox,
        command_timeout: Duration,
        cluster: ClusterHandle,
        bulk_wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            db,
            audit,
            outbox,
            command_timeout,
            cluster,
            bulk_wake,
        }
    }

    /// Retries or discards one parked operation as `user`, and writes the
    /// attempt to the audit log.
    pub async fn act(
        &self,
        user: &User,
        subject: Subject,
        action: Action,
        id: TrackedOperationId,
    ) -> Result<ActionOutcome, ActionError> {
        let name = action.audit_name(subject);
        if !user.role.may_operate() {
            self.db
                .audit_log()
                .record(&user.name, name, &id.to_string(), None, "Forbidden")
                .await
                .map_err(anyhow::Error::from)?;
            tracing::warn!(user = %user.name, action = name, %id, "operator action refused: role");
            return Err(ActionError::Forbidden(user.role));
        }
        let done = match subject {
            Subject::SiteCall => self.relay(user, action, id).await?,
            Subject::Notification => self.on_notification(action, id).await?,
        };
        self.db
            .audit_log()
            .record(
                &user.name,
                name,
                &id.to_string(),
                done.site.as_deref(),
                done.outcome.name(),
            )
            .await
            .map_err(anyhow::Error::from)?;
        tracing::info!(user = %user.name, action = name, %id, outcome = done.outcome.name(), "operator action");
        Ok(done)
    }

    async fn relay(
        &self,
        user: &User,
        action: Action,
        id: TrackedOperationId,
    ) -> anyhow::Result<ActionOutcome> {
        let Some(row) = self.db.site_calls().get(id).await? else {
            return Ok(ActionOutcome {
                outcome: CommandOutcome::NotFound,
                site: None,
            });
        };
        let command = match action {
            Action::Retry => Command::Retry(id),
            Action::Discard => Command::Discard(id),
        };
        let outcome = if self.cluster.clustered() && !self.cluster.is_active() {
            // A standby holds no site stream: the active node relays it.
            crate::operator_actions::relay::forward(
                &self.db,
                &user.name,
                &row.source_site,
                command,
                self.command_timeout,
            )
            .await?
        } else {
            self.audit
                .relay(&user.name, &row.source_site, command, self.command_timeout)
                .await
        };
        Ok(ActionOutcome {
            outcome,
            site: Some(row.source_site),
        })
    }

    async fn on_notification(
        &self,
        action: Action,
        id: TrackedOperationId,
    ) -> anyhow::Result<ActionOutcome> {
        let retry = action == Action::Retry;
        let (command, site) = self
            .db
            .notifications()
            .operator(id, retry, now_ms())
            .await?;
        let outcome = match command {
            NotificationCommand::Applied => CommandOutcome::Applied,
            NotificationCommand::NotFound => CommandOutcome::NotFound,
            NotificationCommand::NotParked => CommandOutcome::NotParked,
        };
        if outcome == CommandOutcome::Applied && retry {
            self.outbox.wake();
        }
        Ok(ActionOutcome { outcome, site })
    }
}
