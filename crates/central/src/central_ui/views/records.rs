//! The Site Calls page and the Notification Outbox page (SPEC §5.5), one
//! code path for both: the filtered, keyset-paged list (newest first,
//! Older/Newer, never OFFSET; every filter in the URL), the detail page of
//! one id with its audit-log entries, and Retry/Discard behind a
//! confirmation page, through [`OperatorActions`] like the REST API.

use std::collections::BTreeSet;

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
    Form,
};
use serde::Deserialize;
use sitelink_commons::{utc_to_unix_ms, Kind, TrackedOperationId, TrackedOperationStatus};

use super::{encode, render, CsrfForm, Nav, UiError};
use crate::{
    central_ui::{format, session::Operator, UiState},
    communication::RelayOutcome,
    configuration_database::{now_ms, AuditEntry, Page, PageCursor, SiteCallFilter},
    operator_actions::{Action, ActionError, Subject},
};

/// Rows per page.
pub const PAGE_ROWS: u32 = 50;
/// Characters of `last_error` (or a subject) shown in a list row.
const SHORT_TEXT: usize = 120;

/// Which rows a handler serves: the Site Calls pages or the Notification
/// Outbox pages (one code path, two route sets).
pub trait Pages: Send + Sync + 'static {
    const SUBJECT: Subject;
}

pub struct SiteCallPages;
pub struct NotificationPages;

impl Pages for SiteCallPages {
    const SUBJECT: Subject = Subject::SiteCall;
}

impl Pages for NotificationPages {
    const SUBJECT: Subject = Subject::Notification;
}

fn base(subject: Subject) -> &'static str {
    match subject {
        Subject::SiteCall => "/site-calls",
        Subject::Notification => "/notifications",
    }
}

fn noun(subject: Subject) -> &'static str {
    match subject {
        Subject::SiteCall => "site call",
        Subject::Notification => "notification",
    }
}

/// The filters as the form shows them (and as the URL carries them).
#[derive(Default)]
pub struct Filters {
    pub site: String,
    pub kind: String,
    pub statuses: BTreeSet<&'static str>,
    pub target: String,
    pub from: String,
    pub to: String,
}

impl Filters {
    /// The query string of these filters (no paging), `&`-joined.
    fn query(&self) -> String {
        let mut q: Vec<String> = Vec::new();
        for (k, v) in [
            ("site", &self.site),
            ("kind", &self.kind),
            ("target", &self.target),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        q.extend(self.statuses.iter().map(|s| format!("status={s}")));
        q.join("&")
    }

    pub fn has(&self, status: &&str) -> bool {
        self.statuses.contains(status)
    }
}

/// One list row, ready to show.
pub struct Row {
    pub id: String,
    pub href: String,
    pub created: String,
    pub created_ago: String,
    pub site: String,
    pub kind: &'static str,
    pub target: String,
    pub subject: String,
    pub status: &'static str,
    pub status_class: &'static str,
    pub retry_count: u32,
    pub last_error: String,
    pub last_error_full: String,
}

#[derive(Template)]
#[template(path = "records.html")]
struct ListPage {
    nav: Nav,
    notifications: bool,
    title: &'static str,
    base: &'static str,
    filters: Filters,
    all_statuses: Vec<&'static str>,
    site_names: Vec<String>,
    rows: Vec<Row>,
    error: Option<String>,
    older: Option<String>,
    newer: Option<String>,
}

/// A time filter: RFC 3339, or the browser's `datetime-local` value
/// (`2026-11-29T08:00` or with seconds), read as UTC.
fn parse_time(key: &str, v: &str) -> Result<i64, UiError> {
    use time::{
        format_description::well_known::Rfc3339, macros::format_description, PrimitiveDateTime,
    };
    if let Ok(t) = time::OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(utc_to_unix_ms(t));
    }
    let with_seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let minutes = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    PrimitiveDateTime::parse(v, with_seconds)
        .or_else(|_| PrimitiveDateTime::parse(v, minutes))
        .map(|t| utc_to_unix_ms(t.assume_utc()))
        .map_err(|_| {
            UiError::BadRequest(format!(
                "{key} must be a UTC time like 2026-01-31T08:00, got {:?}",
                v.chars().take(40).collect::<String>()
            ))
        })
}

/// What a list request asked for.
struct ListRequest {
    filters: Filters,
    filter: SiteCallFilter,
    page: Page,
    /// A pasted TrackedOperationId: go straight to its page.
    id: Option<TrackedOperationId>,
}

/// Reads the list's query. Empty values (an empty form field) mean "no
/// filter"; unknown keys are ignored (a page, unlike the REST API, is
/// reached by hand-edited links too); a bad value is a 400 naming it.
fn list_request(subject: Subject, q: &[(String, String)]) -> Result<ListRequest, UiError> {
    let mut r = ListRequest {
        filters: Filters::default(),
        filter: SiteCallFilter::default(),
        page: Page::First,
        id: None,
    };
    let bad = |m: String| UiError::BadRequest(m);
    for (k, v) in q {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if v.contains('\0') {
            return Err(bad(format!("{k} contains a NUL byte")));
        }
        match k.as_str() {
            "site" => {
                let s =
                    sitelink_commons::SiteName::parse(v).map_err(|e| bad(format!("site: {e}")))?;
                r.filters.site = s.as_str().to_owned();
                r.filter.site = Some(s.as_str().to_owned());
            }
            "kind" if subject == Subject::SiteCall => {
                let kind = match v.parse::<Kind>() {
                    Ok(k @ (Kind::ExternalCall | Kind::DatabaseWrite)) => k,
                    _ => {
                        return Err(bad(format!(
                            "kind must be ExternalCall or DatabaseWrite, got {v:?}"
                        )))
                    }
                };
                r.filters.kind = kind.as_str().to_owned();
                r.filter.kind = Some(kind);
            }
            "status" => {
                let s = v
                    .parse::<TrackedOperationStatus>()
                    .map_err(|e| bad(e.to_string()))?;
                if r.filters.statuses.insert(s.as_str()) {
                    r.filter.statuses.push(s);
                }
            }
            "target" => {
                if v.chars().count() > 200 {
                    return Err(bad("target: at most 200 characters".into()));
                }
                r.filters.target = v.to_owned();
                r.filter.target_contains = Some(v.to_owned());
            }
            "from" => {
                r.filter.from_ms = Some(parse_time("from", v)?);
                r.filters.from = v.to_owned();
            }
            "to" => {
                r.filter.to_ms = Some(parse_time("to", v)?);
                r.filters.to = v.to_owned();
            }
            "id" => {
                r.id = Some(v.parse().map_err(|_| {
                    bad(format!(
                        "{:?} is not a TrackedOperationId (a UUID like 01a21dc7-e371-702d-9d9a-b8a61109dc05)",
                        v.chars().take(60).collect::<String>()
                    ))
                })?);
            }
            "after" => r.page = Page::After(PageCursor::decode(v).map_err(bad)?),
            "before" => r.page = Page::Before(PageCursor::decode(v).map_err(bad)?),
            _ => {}
        }
    }
    if let (Some(from), Some(to)) = (r.filter.from_ms, r.filter.to_ms) {
        if from > to {
            return Err(bad("from must not be later than to".into()));
        }
    }
    Ok(r)
}

fn row(
    subject: Subject,
    r: &sitelink_commons::TrackingRecord,
    subject_line: String,
    now: i64,
) -> Row {
    let created = utc_to_unix_ms(r.created_at_utc);
    let last_error = r.last_error.clone().unwrap_or_default();
    Row {
        id: r.tracked_operation_id.to_string(),
        href: format!("{}/{}", base(subject), r.tracked_operation_id),
        created: format::utc(created),
        created_ago: format::ago(created, now),
        site: r.source_site.clone(),
        kind: r.kind.as_str(),
        target: format::one_line(&r.target_summary, SHORT_TEXT),
        subject: format::one_line(&subject_line, SHORT_TEXT),
        status: r.status.as_str(),
        status_class: format::status_class(r.status),
        retry_count: r.retry_count,
        last_error: format::one_line(&last_error, SHORT_TEXT),
        last_error_full: last_error,
    }
}

/// One page of rows (newest first) and whether more are older / newer.
async fn fetch(
    st: &UiState,
    subject: Subject,
    filter: &SiteCallFilter,
    page: &Page,
) -> Result<(Vec<Row>, Vec<PageCursor>), UiError> {
    let now = now_ms();
    // One row more than shown tells whether another page exists that way.
    let n = PAGE_ROWS + 1;
    let rows: Vec<(Row, PageCursor)> = match subject {
        Subject::SiteCall => st
            .db
            .site_calls()
            .list_page(filter, page, n)
            .await
            .map_err(UiError::internal)?
            .iter()
            .map(|r| (row(subject, r, String::new(), now), PageCursor::of(r)))
            .collect(),
        Subject::Notification => st
            .db
            .notifications()
            .list_page(filter, page, n)
            .await
            .map_err(UiError::internal)?
            .into_iter()
            .map(|n| {
                let c = PageCursor::of(&n.tracking);
                (row(subject, &n.tracking, n.subject, now), c)
            })
            .collect(),
    };
    Ok(rows.into_iter().unzip())
}

/// `GET /site-calls`, `GET /notifications`.
pub async fn list<S: Pages>(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let subject = S::SUBJECT;
    let site_names: Vec<String> = st
        .db
        .sites()
        .list()
        .await
        .map_err(UiError::internal)?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let notifications = subject == Subject::Notification;
    let mut page = ListPage {
        nav: Nav::of(
            &op,
            if notifications {
                "notifications"
            } else {
                "site-calls"
            },
        ),
        notifications,
        title: if notifications {
            "Notification Outbox"
        } else {
            "Site Calls"
        },
        base: base(subject),
        filters: Filters::default(),
        all_statuses: TrackedOperationStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect(),
        site_names,
        rows: Vec::new(),
        error: None,
        older: None,
        newer: None,
    };
    let req = match list_request(subject, &q) {
        Ok(r) => r,
        Err(UiError::BadRequest(m)) => {
            page.error = Some(m);
            let mut resp = render(&page);
            *resp.status_mut() = axum::http::StatusCode::BAD_REQUEST;
            return Ok(resp);
        }
        Err(e) => return Err(e),
    };
    if let Some(id) = req.id {
        return Ok(Redirect::to(&format!("{}/{id}", base(subject))).into_response());
    }
    let (mut rows, mut cursors) = fetch(&st, subject, &req.filter, &req.page).await?;
    let extra = rows.len() > PAGE_ROWS as usize;
    if extra {
        // The extra row is the one furthest from the cursor: the oldest of
        // a forward page, the newest (first) of a backward one.
        let at = if matches!(req.page, Page::Before(_)) {
            0
        } else {
            rows.len() - 1
        };
        rows.remove(at);
        cursors.remove(at);
    }
    let filters = req.filters.query();
    let link = |key: &str, c: &PageCursor| {
        let sep = if filters.is_empty() { "" } else { "&" };
        format!(
            "{}?{filters}{sep}{key}={}",
            base(subject),
            encode(&c.encode())
        )
    };
    let (more_older, more_newer) = match req.page {
        Page::First => (extra, false),
        Page::After(_) => (extra, true),
        Page::Before(_) => (true, extra),
    };
    page.older = cursors
        .last()
        .filter(|_| more_older)
        .map(|c| link("after", c));
    page.newer = match cursors.first() {
        Some(c) if more_newer => Some(link("before", c)),
        // An empty page after a cursor: back to the newest.
        None if !matches!(req.page, Page::First) => Some(format!("{}?{filters}", base(subject))),
        _ => None,
    };
    page.rows = rows;
    page.filters = req.filters;
    Ok(render(&page))
}

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
    /// Refresh every few seconds (the status can still change).
    pub live: bool,
    pub parked: bool,
    /// The viewer's role may retry or discard (the buttons show).
    pub may_operate: bool,
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
    }))
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
    op: Operator,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    let subject = S::SUBJECT;
    op.check_post(&headers, st.tls, Some(&form.csrf))?;
    let act = action_of(&action)?;
    let id = parse_id(subject, &id)?;
    let done = match st.actions.act(&op.user, subject, act, id).await {
        Ok(d) => d,
        Err(e @ ActionError::Forbidden(_)) => return Err(UiError::Forbidden(e.to_string())),
        Err(ActionError::Internal(e)) => return Err(e.into()),
    };
    if done.outcome == RelayOutcome::NotFound && done.site.is_none() {
        return Err(UiError::NotFound(format!("no {} {id}", noun(subject))));
    }
    Ok(Redirect::to(&format!(
        "{}/{id}?action={action}&outcome={}",
        base(subject),
        done.outcome.name()
    ))
    .into_response())
}
