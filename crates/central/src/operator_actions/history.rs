//! A site call's attempt history and stored request (issue 21), asked of
//! the owning site at the moment an operator looks (a remote query over
//! the link, like `Notify.Status` the other way): central keeps neither.
//! One function for the REST API and the detail page.

use serde::Serialize;
use sitelink_commons::TrackedOperationId;

use super::OperatorActions;
use crate::{configuration_database::rfc3339, site_call_audit::CommandOutcome};

/// One attempt, as the site recorded it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1 for the call's first attempt, and so on (the site keeps the last
    /// 20).
    pub number: u32,
    pub at_utc: String,
    pub duration_ms: i64,
    /// `Delivered`, `Transient` or `Permanent`.
    pub outcome: String,
    pub error: Option<String>,
    /// `HTTP 503`, `SQLSTATE 55P03`, `MySQL 1205`, `SQLite 5`.
    pub code: Option<String>,
}

/// What the owning site answered.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptHistory {
    pub site: String,
    /// Oldest first; empty for a call that succeeded at once.
    pub attempts: Vec<AttemptView>,
    /// The request as the site stored it for retries (target, method and
    /// parameters, or connection, statement and parameters), secret-looking
    /// values masked; null once the call ended.
    #[schema(value_type = Option<Object>)]
    pub request: Option<serde_json::Value>,
}

/// Why there is no history to show.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no site call {0}")]
    NoCall(TrackedOperationId),
    #[error("site {0} no longer has this call (purged)")]
    SiteHasNone(String),
    #[error("site {0} is unreachable: it has no live stream to this central node")]
    Unreachable(String),
    #[error("site {0} did not answer in time")]
    Timeout(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl OperatorActions {
    /// Asks the owning site of `id` for its attempt history.
    pub async fn attempt_history(
        &self,
        id: TrackedOperationId,
    ) -> Result<AttemptHistory, HistoryError> {
        let row = self
            .db
            .site_calls()
            .get(id)
            .await
            .map_err(anyhow::Error::from)?
            .ok_or(HistoryError::NoCall(id))?;
        let site = row.source_site;
        let answer = match self
            .audit
            .attempt_history(&site, &id.to_string(), self.command_timeout)
            .await
        {
            Ok(a) => a,
            Err(CommandOutcome::Timeout) => return Err(HistoryError::Timeout(site)),
            Err(CommandOutcome::SiteUnreachable) => return Err(HistoryError::Unreachable(site)),
            Err(other) => {
                return Err(anyhow::anyhow!("asking {site} for a history: {}", other.name()).into())
            }
        };
        if let Some(e) = answer.error {
            return Err(anyhow::anyhow!("site {site} could not read the history: {e}").into());
        }
        if !answer.found {
            return Err(HistoryError::SiteHasNone(site));
        }
        Ok(AttemptHistory {
            attempts: answer
                .attempts
                .into_iter()
                .map(|a| AttemptView {
                    number: a.number,
                    at_utc: rfc3339(a.at_unix_ms),
                    duration_ms: a.duration_ms,
                    outcome: a.outcome,
                    error: a.error,
                    code: a.code,
                })
                .collect(),
            request: answer
                .request_json
                .and_then(|j| serde_json::from_str(&j).ok()),
            site,
        })
    }
}
