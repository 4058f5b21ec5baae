//! The Site Calls and Notification Outbox lists: the filter form, one
//! page of rows newest first, and the Older/Newer links. The query is
//! parsed by [`ListQuery`] and the page read by the repositories'
//! `list_page`, the same two steps as the REST listing.

use std::collections::BTreeSet;

use askama::Template;
use axum::{
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
};
use sitelink_commons::{unix_ms_to_utc, utc_to_unix_ms, TrackedOperationStatus};

use super::{base, Pages, PAGE_ROWS, SHORT_TEXT};
use crate::{
    central_ui::{
        format,
        session::Operator,
        views::{encode, render, Nav, UiError},
        UiState,
    },
    configuration_database::{now_ms, Dialect, ListFilter, ListQuery, Listed, Listing, PageCursor},
    operator_actions::{export, Subject},
};

/// The filters as the form shows them (and as the URL carries them).
#[derive(Default)]
pub struct Filters {
    pub site: String,
    pub kind: String,
    pub statuses: BTreeSet<&'static str>,
    pub target: String,
    pub from: String,
    pub to: String,
    pub fingerprint: String,
    /// A failure group's exact target (set by the groups' links).
    pub target_is: String,
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
            ("fingerprint", &self.fingerprint),
            ("target_is", &self.target_is),
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

    /// The form's values of a parsed filter (times in UTC, as a browser's
    /// `datetime-local` field writes them when they fall on a minute).
    fn of(f: &ListFilter) -> Self {
        Self {
            site: f.site.clone().unwrap_or_default(),
            kind: f.kind.map(|k| k.as_str().to_owned()).unwrap_or_default(),
            statuses: f.statuses.iter().map(|s| s.as_str()).collect(),
            target: f.target_contains.clone().unwrap_or_default(),
            from: f.from_ms.map(form_time).unwrap_or_default(),
            to: f.to_ms.map(form_time).unwrap_or_default(),
            fingerprint: f.fingerprint.clone().unwrap_or_default(),
            target_is: f.target_is.clone().unwrap_or_default(),
        }
    }
}

/// A time as the filter form shows it: `2026-01-31T08:00` on a whole
/// minute, else RFC 3339 (both read back the same).
fn form_time(ms: i64) -> String {
    use time::{format_description::well_known::Rfc3339, macros::format_description};
    let t = unix_ms_to_utc(ms);
    if ms % 60_000 == 0 {
        t.format(format_description!("[year]-[month]-[day]T[hour]:[minute]"))
    } else {
        t.format(&Rfc3339)
    }
    .unwrap_or_default()
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
    /// The export links' query (the filters, no paging).
    export_query: String,
    /// The filter of the parked calls among these (Site Calls, for a role
    /// that may start bulk actions): the bulk links' query.
    bulk_query: Option<String>,
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

/// `GET /site-calls/export`, `GET /notifications/export`: the list's
/// filters as CSV or JSON lines, by the same function as the REST API's
/// export.
pub async fn export<S: Pages>(
    State(st): State<UiState>,
    _: Operator,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let listed = match S::SUBJECT {
        Subject::SiteCall => Listed::SiteCalls,
        Subject::Notification => Listed::Notifications,
    };
    export::answer(&st.db, &q, listed, Dialect::Page)
        .await
        .map_err(|e| match e {
            export::ExportError::BadQuery(m) => UiError::BadRequest(m),
            export::ExportError::UnknownSite(m) => UiError::NotFound(m),
            export::ExportError::Internal(e) => UiError::internal(e),
        })
}

/// `GET /site-calls`, `GET /notifications`.
pub async fn list<S: Pages>(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let subject = S::SUBJECT;
    let site_names = super::site_names(&st).await?;
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
        export_query: String::new(),
        bulk_query: None,
    };
    let listed = if notifications {
        Listed::Notifications
    } else {
        Listed::SiteCalls
    };
    let req = match ListQuery::parse(&q, listed, Dialect::Page) {
        Ok(r) => r,
        Err(e) => {
            page.error = Some(e.0);
            let mut resp = render(&page);
            *resp.status_mut() = axum::http::StatusCode::BAD_REQUEST;
            return Ok(resp);
        }
    };
    if let Some(m) = req.unknown_site(&st.db).await.map_err(UiError::internal)? {
        page.filters = Filters::of(&req.filter);
        page.error = Some(m);
        let mut resp = render(&page);
        *resp.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return Ok(resp);
    }
    if let Some(id) = req.id {
        return Ok(Redirect::to(&format!("{}/{id}", base(subject))).into_response());
    }
    let now = now_ms();
    let listing: Listing<Row> = match subject {
        Subject::SiteCall => {
            let l = st
                .db
                .site_calls()
                .list_page(&req.filter, &req.page, PAGE_ROWS)
                .await
                .map_err(UiError::internal)?;
            Listing {
                items: l
                    .items
                    .iter()
                    .map(|r| row(subject, r, String::new(), now))
                    .collect(),
                older: l.older,
                newer: l.newer,
            }
        }
        Subject::Notification => {
            let l = st
                .db
                .notifications()
                .list_page(&req.filter, &req.page, PAGE_ROWS)
                .await
                .map_err(UiError::internal)?;
            Listing {
                items: l
                    .items
                    .into_iter()
                    .map(|n| row(subject, &n.tracking, n.subject, now))
                    .collect(),
                older: l.older,
                newer: l.newer,
            }
        }
    };
    let filters = Filters::of(&req.filter);
    let query = filters.query();
    let link = |key: &str, c: &PageCursor| {
        let sep = if query.is_empty() { "" } else { "&" };
        format!(
            "{}?{query}{sep}{key}={}",
            base(subject),
            encode(&c.encode())
        )
    };
    page.older = listing.older.as_ref().map(|c| link("after", c));
    page.newer = match &listing.newer {
        Some(c) => Some(link("before", c)),
        // An empty page after a cursor: back to the newest.
        None if listing.items.is_empty() && req.page != Default::default() => {
            Some(format!("{}?{query}", base(subject)))
        }
        _ => None,
    };
    page.rows = listing.items;
    page.export_query = if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    };
    page.filters = filters;
    if subject == Subject::SiteCall && op.user.role.may_operate() {
        page.bulk_query = crate::configuration_database::bulk_actions::parked_only(&req.filter)
            .map(|f| f.to_query());
    }
    Ok(render(&page))
}
