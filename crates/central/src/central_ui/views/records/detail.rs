//! A record's detail page (every field, its audit-log entries, the
//! outcome of an action just taken), the part htmx refreshes, and
//! Retry/Discard behind a confirmation page.

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use sitelink_commons::{utc_to_unix_ms, TrackedOperationId, TrackedOperationStatus};

use super::{base, noun, Pages};
use crate::{
    central_ui::{
        format,
        session::{CheckedPost, Operator},
        views::{render, CsrfForm, Nav, UiError},
        UiState,
    },
    configuration_database::{now_ms, AuditEntry},
    operator_actions::{Action, ActionError, Subject},
    site_call_audit::CommandOutcome,
};

/// A field of a detail page.
pub struct Field {
    pub name: &'static str,
    pub value: String,
}

/// The part of a detail page htmx refreshes while the row can change.
#[derive(Template)]
#[template(path = "record_partial.html")]
pub struct RecordPartial {
    pub base: &'static str,
    pub id: String,
    /// The owning site and the target (a notification's list and subject),
    /// for messages and the confirmation page.
    pub site: String,
    pub target: String,
    pub status: &'static str,
    pub status_class: &'static str,
    pub fields: Vec<Field>,
    pub recipients: Option<String>,
    pub body: Option<String>,
    pub last_error: Option<String>,
    pub audit: Vec<AuditRow>,
    /// The bulk actions that took this call (site calls only).
    pub bulk: Vec<BulkRow>,
    /// Refresh every few seconds (the status can still change).
    pub live: bool,
    pub parked: bool,
    /// The viewer's role may retry or discard (the buttons show).
    pub may_operate: bool,
}

/// A bulk action that took a call, and how it ended for that call.
pub struct BulkRow {
    pub id: String,
    pub at: String,
    pub user: String,
    pub verb: &'static str,
    pub outcome: String,
}

pub struct AuditRow {
    pub at: String,
    pub user: String,
    pub action: String,
    pub outcome: String,
}

#[derive(Template)]
#[template(path = "record.html")]
struct DetailPage {
    nav: Nav,
    title: &'static str,
    record: RecordPartial,
    message: Option<(bool, String)>,
    /// A site call: its attempt history is asked of its site (loaded
    /// after the page, so a slow site never delays it).
    history: bool,
}

/// The attempt history of a site call, as its site answered (or why not).
#[derive(Template)]
#[template(path = "attempts_partial.html")]
struct AttemptsPartial {
    site: String,
    attempts: Vec<crate::operator_actions::history::AttemptView>,
    request: Option<String>,
    /// Why there is nothing to show.
    unavailable: Option<String>,
}

#[derive(Deserialize)]
pub struct DetailQuery {
    outcome: Option<String>,
    action: Option<String>,
}

fn parse_id(subject: Subject, id: &str) -> Result<TrackedOperationId, UiError> {
    id.parse().map_err(|_| {
        UiError::NotFound(format!(
            "{:?} is not a {} id",
            id.chars().take(60).collect::<String>(),
            noun(subject)
        ))
    })
}

async fn record(
    st: &UiState,
    op: &Operator,
    subject: Subject,
    id: TrackedOperationId,
) -> Result<RecordPartial, UiError> {
    let missing = || UiError::NotFound(format!("no {} {id}", noun(subject)));
    let (r, recipients, body) = match subject {
        Subject::SiteCall => (
            st.db
                .site_calls()
                .get(id)
                .await
                .map_err(UiError::internal)?
                .ok_or_else(missing)?,
            None,
            None,
        ),
        Subject::Notification => {
            let n = st
                .db
                .notifications()
                .get(id)
                .await
                .map_err(UiError::internal)?
                .ok_or_else(missing)?;
            let mut t = n.tracking;
            t.target_summary = format!("list {} — {}", n.list, n.subject);
            (t, Some(n.recipients.unwrap_or_default().join(", ")), n.body)
        }
    };
    let audit: Vec<AuditEntry> = st
        .db
        .audit_log()
        .for_target(&id.to_string(), 50)
        .await
        .map_err(UiError::internal)?;
    let bulk = match subject {
        Subject::SiteCall => st
            .db
            .bulk_actions()
            .for_call(&id.to_string())
            .await
            .map_err(UiError::internal)?,
        Subject::Notification => Vec::new(),
    };
    let at = |t: time::OffsetDateTime| {
        let ms = utc_to_unix_ms(t);
        format!("{} ({})", format::utc(ms), format::ago(ms, now_ms()))
    };
    let mut fields = vec![
        Field {
            name: "TrackedOperationId",
            value: id.to_string(),
        },
        Field {
            name: "Site",
            value: r.source_site.clone(),
        },
        Field {
            name: "Kind",
            value: r.kind.as_str().into(),
        },
        Field {
            name: if subject == Subject::Notification {
                "List and subject"
            } else {
                "Target"
            },
            value: r.target_summary.clone(),
        },
        Field {
            name: "Retry count",
            value: r.retry_count.to_string(),
        },
        Field {
            name: "Provenance",
            value: r.provenance.clone(),
        },
        Field {
            name: "Created",
            value: at(r.created_at_utc),
        },
        Field {
            name: "Updated",
            value: at(r.updated_at_utc),
        },
        Field {
            name: "Terminal",
            value: r.terminal_at_utc.map(at).unwrap_or_else(|| "—".into()),
        },
        Field {
            name: "Revision",
            value: r.revision.to_string(),
        },
    ];
    if subject == Subject::Notification {
        fields.retain(|f| f.name != "Kind");
    }
    Ok(RecordPartial {
        base: base(subject),
        id: id.to_string(),
        site: r.source_site.clone(),
        target: r.target_summary.clone(),
        status: r.status.as_str(),
        status_class: format::status_class(r.status),
        fields,
        recipients,
        body,
        last_error: r.last_error,
        audit: audit
            .into_iter()
            .map(|e| AuditRow {
                at: e.at_utc.replace('T', " ").replace('Z', " UTC"),
                user: e.user,
                action: e.action,
                outcome: e.outcome,
            })
            .collect(),
        bulk: bulk
            .into_iter()
            .map(|b| BulkRow {
                at: format::utc(b.action.created_at_ms),
                user: b.action.operator,
                verb: b.action.verb.as_str(),
                outcome: match (b.outcome, b.error) {
                    (Some(o), Some(e)) => format!("{o}: {e}"),
                    (Some(o), None) => o,
                    (None, _) => format!("not sent yet ({})", b.action.state.as_str()),
                },
                id: b.action.id,
            })
            .collect(),
        live: !r.status.is_terminal(),
        parked: r.status == TrackedOperationStatus::Parked,
        may_operate: op.user.role.may_operate(),
    })
}

/// The message of an action's outcome (from the redirect's query: only
/// these names are read, so no text of the URL reaches the page).
fn outcome_message(
    outcome: &str,
    action: &str,
    site: &str,
    subject: Subject,
) -> Option<(bool, String)> {
    let retry = action == "retry";
    Some(match outcome {
        "Applied" if retry => (
            true,
            match subject {
                Subject::SiteCall => "Applied: the site retries the call now; the status here follows the site's report.".into(),
                Subject::Notification => "Applied: the notification is queued for delivery again.".into(),
            },
        ),
        "Applied" => (true, format!("Applied: the {} is discarded.", noun(subject))),
        "NotParked" => (false, format!("This {} is no longer parked; nothing was done.", noun(subject))),
        "NotFound" => (false, format!("The site does not know this {}; nothing was done.", noun(subject))),
        "SiteUnreachable" => (false, format!("Site {site} is not connected; try again when it is.")),
        "Timeout" => (
            false,
            format!("Site {site} did not answer in time; the command was not applied (the audit log below has the outcome)."),
        ),
        "Error" => (false, "The site could not apply it; the central log has the details.".into()),
        _ => return None,
    })
}

/// `GET /site-calls/{id}`, `GET /notifications/{id}`.
pub async fn detail<S: Pages>(
    State(st): State<UiState>,
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Response, UiError> {
    let subject = S::SUBJECT;
    let id = parse_id(subject, &id)?;
    let record = record(&st, &op, subject, id).await?;
    let message = q
        .outcome
        .as_deref()
        .and_then(|o| outcome_message(o, q.action.as_deref().unwrap_or(""), &record.site, subject));
    Ok(render(&DetailPage {
        nav: Nav::of(
            &op,
            if subject == Subject::Notification {
                "notifications"
            } else {
                "site-calls"
            },
        ),
        title: if subject == Subject::Notification {
            "Notification"
        } else {
            "Site call"
        },
        record,
        message,
        history: subject == Subject::SiteCall,
    }))
}

/// `GET /site-calls/{id}/attempts`: the attempt history and stored request,
/// asked of the site now (the detail page loads it), by the same function
/// as `GET /api/v1/site-calls/{id}/attempts`.
pub async fn attempts(
    State(st): State<UiState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    use crate::operator_actions::history::HistoryError;
    let id = parse_id(Subject::SiteCall, &id)?;
    let page = match st.actions.attempt_history(id).await {
        Ok(h) => AttemptsPartial {
            site: h.site,
            attempts: h
                .attempts
                .into_iter()
                .map(|mut a| {
                    a.at_utc = a.at_utc.replace('T', " ").replace('Z', " UTC");
                    a
                })
                .collect(),
            request: h
                .request
                .map(|r| serde_json::to_string_pretty(&r).unwrap_or_default()),
            unavailable: None,
        },
        Err(HistoryError::NoCall(id)) => {
            return Err(UiError::NotFound(format!("no site call {id}")))
        }
        Err(HistoryError::Internal(e)) => return Err(e.into()),
        Err(e) => AttemptsPartial {
            site: String::new(),
            attempts: Vec::new(),
            request: None,
            unavailable: Some(e.to_string()),
        },
    };
    Ok(render(&page))
}

/// `GET …/{id}/record`: the part of a detail page htmx refreshes.
pub async fn partial<S: Pages>(
    State(st): State<UiState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let subject = S::SUBJECT;
    let id = parse_id(subject, &id)?;
    Ok(render(&record(&st, &op, subject, id).await?))
}

fn action_of(a: &str) -> Result<Action, UiError> {
    match a {
        "retry" => Ok(Action::Retry),
        "discard" => Ok(Action::Discard),
        _ => Err(UiError::NotFound(format!(
            "no page {a:?} here (retry or discard)"
        ))),
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub struct ConfirmPage {
    pub nav: Nav,
    pub question: String,
    pub detail: String,
    pub button: &'static str,
    pub danger: bool,
    pub post_to: String,
    pub cancel: String,
}

/// `GET …/{id}/retry|discard`: the confirmation page.
pub async fn confirm<S: Pages>(
    State(st): State<UiState>,
    op: Operator,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let subject = S::SUBJECT;
    let act = action_of(&action)?;
    let id = parse_id(subject, &id)?;
    if !op.user.role.may_operate() {
        return Err(UiError::Forbidden(format!(
            "role {} may not retry or discard",
            op.user.role.as_str()
        )));
    }
    let r = record(&st, &op, subject, id).await?;
    let (target, site) = (r.target, r.site);
    let verb = if act == Action::Retry {
        "Retry"
    } else {
        "Discard"
    };
    Ok(render(&ConfirmPage {
        nav: Nav::of(
            &op,
            if subject == Subject::Notification {
                "notifications"
            } else {
                "site-calls"
            },
        ),
        question: format!("{verb} this parked {}?", noun(subject)),
        detail: match (subject, act) {
            (Subject::SiteCall, Action::Retry) => {
                format!("Site {site} will attempt “{target}” again.")
            }
            (Subject::SiteCall, Action::Discard) => {
                format!("Site {site} will give up “{target}” for good.")
            }
            (Subject::Notification, Action::Retry) => {
                format!("Central will send “{target}” again.")
            }
            (Subject::Notification, Action::Discard) => {
                format!("Central will give up sending “{target}” for good.")
            }
        },
        button: verb,
        danger: act == Action::Discard,
        post_to: format!("{}/{id}/{action}", base(subject)),
        cancel: format!("{}/{id}", base(subject)),
    }))
}

/// `POST …/{id}/retry|discard`: the action, then its outcome on the
/// detail page.
pub async fn act<S: Pages>(
    State(st): State<UiState>,
    Path((id, action)): Path<(String, String)>,
    CheckedPost { op, .. }: CheckedPost<CsrfForm>,
) -> Result<Response, UiError> {
    let subject = S::SUBJECT;
    let act = action_of(&action)?;
    let id = parse_id(subject, &id)?;
    let done = match st.actions.act(&op.user, subject, act, id).await {
        Ok(d) => d,
        Err(e @ ActionError::Forbidden(_)) => return Err(UiError::Forbidden(e.to_string())),
        Err(ActionError::Internal(e)) => return Err(e.into()),
    };
    if done.outcome == CommandOutcome::NotFound && done.site.is_none() {
        return Err(UiError::NotFound(format!("no {} {id}", noun(subject))));
    }
    Ok(Redirect::to(&format!(
        "{}/{id}?action={action}&outcome={}",
        base(subject),
        done.outcome.name()
    ))
    .into_response())
}
