//! Bulk actions in the web UI (issue 21): the preview of a filter's parked
//! calls with its confirmation form (the count typed above
//! [`TYPED_CONFIRMATION_ABOVE`] calls, an optional pace), the Bulk Actions
//! page, one action's page with its progress (an htmx part refreshed while
//! it runs) and Cancel. Every step is [`OperatorActions`]'s, as for
//! `/api/v1/bulk-actions`; the filter is the listing's, parsed by
//! [`ListQuery`].
//!
//! [`OperatorActions`]: crate::operator_actions::OperatorActions

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use sitelink_commons::utc_to_unix_ms;

use super::{encode, render, CsrfForm, Nav, UiError};
use crate::{
    central_ui::{
        format,
        session::{CheckedPost, CsrfField, Operator},
        UiState,
    },
    configuration_database::{
        bulk_actions::TYPED_CONFIRMATION_ABOVE, listing::unknown_site, BulkState, BulkVerb,
        CreateError, Dialect, ListFilter, ListQuery, Listed, Pace,
    },
    operator_actions::{
        bulk::{BulkError, BulkView, SiteProgress},
        OperatorActions,
    },
};

/// A call of the preview.
pub struct PreviewRow {
    pub id: String,
    pub site: String,
    pub target: String,
    pub created: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "bulk_preview.html")]
struct PreviewPage {
    nav: Nav,
    verb: &'static str,
    action: &'static str,
    filter_text: String,
    filter_query: String,
    count: u64,
    per_site: Vec<(String, u64)>,
    rows: Vec<PreviewRow>,
    typed: bool,
    typed_above: u64,
    may_operate: bool,
    error: Option<String>,
    at_once: String,
    per_minute: String,
}

/// One action on the list or its own page.
pub struct ActionRow {
    pub id: String,
    pub verb: &'static str,
    pub operator: String,
    pub created: String,
    pub filter: String,
    pub count: u64,
    pub pace: String,
    pub state: &'static str,
    pub state_class: &'static str,
    pub applied: u64,
    pub not_parked: u64,
    pub not_found: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub open: u64,
    pub waiting: u64,
    pub done_percent: u64,
    pub finished: String,
    pub cancelled_by: String,
}

#[derive(Template)]
#[template(path = "bulk_actions.html")]
struct ListPage {
    nav: Nav,
    actions: Vec<ActionRow>,
    older: Option<String>,
}

/// The part of an action's page htmx refreshes while it runs.
#[derive(Template)]
#[template(path = "bulk_action_partial.html")]
pub struct ActionPartial {
    a: ActionRow,
    sites: Vec<SiteProgress>,
    running: bool,
    may_operate: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "bulk_action.html")]
struct ActionPage {
    nav: Nav,
    id: String,
    part: ActionPartial,
    message: Option<String>,
}

fn verb_of(s: &str) -> Result<BulkVerb, UiError> {
    BulkVerb::parse(s).map_err(UiError::BadRequest)
}

fn filter_text(f: &ListFilter) -> String {
    let json = f.to_json();
    match json.as_object() {
        Some(m) if m.is_empty() => "every parked call".into(),
        _ => json.to_string(),
    }
}

fn action_row(v: &BulkView) -> ActionRow {
    let a = &v.action;
    let c = a.counts;
    let decided = a.total - c.open;
    ActionRow {
        id: a.id.clone(),
        verb: if a.verb == BulkVerb::Retry {
            "Retry"
        } else {
            "Discard"
        },
        operator: a.operator.clone(),
        created: format::utc(a.created_at_ms),
        filter: a.filter.to_string(),
        count: a.total,
        pace: match a.pace {
            Some(p) => format!("{} at once, then {}/min", p.at_once, p.per_minute),
            None => "unpaced".into(),
        },
        state: a.state.as_str(),
        state_class: match a.state {
            BulkState::Running => "text-bg-primary",
            BulkState::Done => "text-bg-success",
            BulkState::Cancelled => "text-bg-secondary",
        },
        applied: c.applied,
        not_parked: c.not_parked,
        not_found: c.not_found,
        errors: c.errors,
        cancelled: c.cancelled,
        open: c.open,
        waiting: v.waiting_for_site,
        done_percent: (decided * 100).checked_div(a.total).unwrap_or(100),
        finished: a.finished_at_ms.map(format::utc).unwrap_or_default(),
        cancelled_by: a.cancelled_by.clone().unwrap_or_default(),
    }
}

async fn preview_page(
    st: &UiState,
    op: &Operator,
    verb: BulkVerb,
    filter: &ListFilter,
    error: Option<String>,
    pace: (String, String),
) -> Result<PreviewPage, UiError> {
    let p = st
        .actions
        .bulk_preview(filter)
        .await
        .map_err(UiError::from)?;
    Ok(PreviewPage {
        nav: Nav::of(op, "site-calls"),
        verb: if verb == BulkVerb::Retry {
            "Retry"
        } else {
            "Discard"
        },
        action: verb.as_str(),
        filter_text: filter_text(filter),
        filter_query: filter.to_query(),
        count: p.count,
        per_site: p.per_site,
        rows: p
            .first
            .into_iter()
            .map(|r| PreviewRow {
                id: r.tracked_operation_id.to_string(),
                site: r.source_site,
                target: r.target_summary,
                created: format::utc(utc_to_unix_ms(r.created_at_utc)),
                last_error: r.last_error.unwrap_or_default(),
            })
            .collect(),
        typed: OperatorActions::typed_confirmation(p.count),
        typed_above: TYPED_CONFIRMATION_ABOVE,
        may_operate: op.user.role.may_operate(),
        error,
        at_once: pace.0,
        per_minute: pace.1,
    })
}

/// `GET /site-calls/bulk?action=retry|discard&<the listing's filter>`:
/// what the action would take now, and the form that starts it.
pub async fn preview(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let verb = verb_of(
        q.iter()
            .find(|(k, _)| k == "action")
            .map_or("", |(_, v)| v.as_str()),
    )?;
    let filter = ListQuery::parse(&q, Listed::SiteCalls, Dialect::Page)
        .map_err(|e| UiError::BadRequest(e.0))?
        .filter;
    if let Some(m) = unknown_site(&st.db, filter.site.as_deref())
        .await
        .map_err(UiError::internal)?
    {
        return Err(UiError::NotFound(m));
    }
    let page = preview_page(&st, &op, verb, &filter, None, Default::default()).await?;
    Ok(render(&page))
}

#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    /// The filter as the preview wrote it (a listing query string).
    #[serde(default)]
    filter: String,
    /// The count the preview showed.
    #[serde(default)]
    count: String,
    /// The count as the operator typed it (above 100 calls).
    #[serde(default)]
    typed_count: String,
    #[serde(default)]
    at_once: String,
    #[serde(default)]
    per_minute: String,
}

impl CsrfField for StartForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /bulk-actions`: starts the action the preview showed, if the set
/// still has the count shown (and typed); then its page.
pub async fn start(
    State(st): State<UiState>,
    CheckedPost { op, form: f }: CheckedPost<StartForm>,
) -> Result<Response, UiError> {
    let verb = verb_of(&f.action)?;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(f.filter.as_bytes())
        .into_owned()
        .collect();
    let filter = ListQuery::parse(&pairs, Listed::SiteCalls, Dialect::Page)
        .map_err(|e| UiError::BadRequest(e.0))?
        .filter;
    let pace_fields = (f.at_once.trim().to_owned(), f.per_minute.trim().to_owned());
    let again = |error: String, status: StatusCode| {
        let st = st.clone();
        let op = &op;
        let filter = &filter;
        let pace_fields = pace_fields.clone();
        async move {
            let page = preview_page(&st, op, verb, filter, Some(error), pace_fields).await?;
            let mut resp = render(&page);
            *resp.status_mut() = status;
            Ok::<_, UiError>(resp)
        }
    };
    let Ok(count) = f.count.parse::<u64>() else {
        return Err(UiError::BadRequest("count: not a number".into()));
    };
    if OperatorActions::typed_confirmation(count) && f.typed_count.trim() != count.to_string() {
        return again(
            format!("Type the number of calls, {count}, to confirm."),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let pace = match (pace_fields.0.as_str(), pace_fields.1.as_str()) {
        ("", "") => None,
        (a, p) => {
            let number = |name: &str, v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("pace: {name} must be a whole number, got {v:?}"))
            };
            match number("at once", a)
                .and_then(|a| Ok((a, number("per minute", p)?)))
                .and_then(|(a, p)| Pace::new(a, p))
            {
                Ok(p) => Some(p),
                Err(e) => return again(e, StatusCode::BAD_REQUEST).await,
            }
        }
    };
    match st
        .actions
        .bulk_start(&op.user, verb, filter.clone(), pace, Some(count))
        .await
    {
        Ok(a) => Ok(Redirect::to(&format!("/bulk-actions/{}?started=1", a.id)).into_response()),
        Err(e @ BulkError::Forbidden(_)) => Err(UiError::Forbidden(e.to_string())),
        Err(BulkError::Refused(e @ CreateError::CountChanged { .. })) => {
            again(e.to_string(), StatusCode::CONFLICT).await
        }
        Err(BulkError::Refused(e)) => again(e.to_string(), StatusCode::UNPROCESSABLE_ENTITY).await,
        Err(BulkError::Internal(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct ListQueryForm {
    before: Option<String>,
}

/// Actions a page lists.
const ACTIONS_SHOWN: u32 = 50;

/// `GET /bulk-actions`: newest first, each with its progress.
pub async fn list(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<ListQueryForm>,
) -> Result<Response, UiError> {
    let before = q.before.filter(|b| sitelink_commons::is_hyphenated_uuid(b));
    let views = st
        .actions
        .bulk_list(before.as_deref(), ACTIONS_SHOWN)
        .await?;
    let older = (views.len() as u32 == ACTIONS_SHOWN)
        .then(|| views.last().map(|v| encode(&v.action.id)))
        .flatten();
    Ok(render(&ListPage {
        nav: Nav::of(&op, "bulk-actions"),
        actions: views.iter().map(action_row).collect(),
        older,
    }))
}

async fn partial_of(st: &UiState, op: &Operator, id: &str) -> Result<ActionPartial, UiError> {
    let v = st
        .actions
        .bulk_view(id)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("no bulk action {id}")))?;
    Ok(ActionPartial {
        a: action_row(&v),
        sites: v.per_site.clone(),
        running: v.action.state == BulkState::Running,
        may_operate: op.user.role.may_operate(),
        csrf: op.csrf.clone(),
    })
}

fn checked_id(id: &str) -> Result<&str, UiError> {
    if sitelink_commons::is_hyphenated_uuid(id) {
        Ok(id)
    } else {
        Err(UiError::NotFound(format!(
            "{:?} is not a bulk action id",
            id.chars().take(60).collect::<String>()
        )))
    }
}

#[derive(Deserialize)]
pub struct ActionQuery {
    started: Option<String>,
    cancelled: Option<String>,
}

/// `GET /bulk-actions/{id}`.
pub async fn detail(
    State(st): State<UiState>,
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<ActionQuery>,
) -> Result<Response, UiError> {
    let id = checked_id(&id)?;
    let part = partial_of(&st, &op, id).await?;
    let message = if q.started.is_some() {
        Some(format!(
            "Started: {} calls, {}. Progress below follows the sites' answers.",
            part.a.count, part.a.pace
        ))
    } else if q.cancelled.is_some() {
        Some("Cancelled: the calls not yet sent stay as they are.".into())
    } else {
        None
    };
    Ok(render(&ActionPage {
        nav: Nav::of(&op, "bulk-actions"),
        id: id.to_owned(),
        part,
        message,
    }))
}

/// `GET /bulk-actions/{id}/progress`: the part htmx refreshes.
pub async fn progress(
    State(st): State<UiState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = checked_id(&id)?;
    Ok(render(&partial_of(&st, &op, id).await?))
}

/// `POST /bulk-actions/{id}/cancel`.
pub async fn cancel(
    State(st): State<UiState>,
    Path(id): Path<String>,
    CheckedPost { op, .. }: CheckedPost<CsrfForm>,
) -> Result<Response, UiError> {
    let id = checked_id(&id)?.to_owned();
    match st.actions.bulk_cancel(&op.user, &id).await {
        Ok(Some(_)) => Ok(Redirect::to(&format!("/bulk-actions/{id}?cancelled=1")).into_response()),
        Ok(None) => Err(UiError::NotFound(format!("no bulk action {id}"))),
        Err(e @ BulkError::Forbidden(_)) => Err(UiError::Forbidden(e.to_string())),
        Err(BulkError::Refused(e)) => Err(UiError::BadRequest(e.to_string())),
        Err(BulkError::Internal(e)) => Err(e.into()),
    }
}
