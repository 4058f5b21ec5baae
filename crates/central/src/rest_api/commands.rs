//! Retry/Discard through [`OperatorActions`] (the role check, the relay to
//! the owning site or the outbox's own row, the audit log), answered as
//! SPEC §7 says: one function for site calls and notifications.
//!
//! [`OperatorActions`]: crate::operator_actions::OperatorActions

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

use super::{
    answers::CommandAnswer,
    errors::{internal, ApiError},
    params::parse_id,
    ApiState,
};
use crate::{
    configuration_database::User,
    operator_actions::{Action, ActionError, Subject},
    site_call_audit::CommandOutcome,
};

/// One operator action, answered: 200 Applied, 404 NotFound, 409
/// NotParked, 503 SiteUnreachable, 504 Timeout, 502 Error, 403 for a role
/// that may not.
pub(super) async fn act(
    st: &ApiState,
    user: &User,
    subject: Subject,
    retry: bool,
    id: &str,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let action = if retry {
        Action::Retry
    } else {
        Action::Discard
    };
    let done = match st.actions.act(user, subject, action, id).await {
        Ok(done) => done,
        Err(e @ ActionError::Forbidden(_)) => {
            return Err(ApiError::new(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(ActionError::Internal(e)) => return Err(internal(e)),
    };
    let status = match &done.outcome {
        CommandOutcome::Applied => StatusCode::OK,
        CommandOutcome::NotFound => StatusCode::NOT_FOUND,
        CommandOutcome::NotParked => StatusCode::CONFLICT,
        CommandOutcome::SiteUnreachable => StatusCode::SERVICE_UNAVAILABLE,
        CommandOutcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
        CommandOutcome::Error(_) => StatusCode::BAD_GATEWAY,
    };
    let error = match &done.outcome {
        CommandOutcome::Error(e) => Some(e.clone()),
        CommandOutcome::SiteUnreachable => Some(format!(
            "site {} is unreachable: it has no live stream to central",
            done.site.as_deref().unwrap_or_default()
        )),
        _ => None,
    };
    Ok((
        status,
        Json(CommandAnswer {
            outcome: done.outcome.name().to_owned(),
            error,
        }),
    )
        .into_response())
}
