//! The Groups views of the Site Calls and Notification Outbox pages
//! (issue 21): the Parked and Failed rows by target (a notification's
//! list) and error fingerprint, largest first, each with its count per
//! site, first and last seen, a sample error, and a link to the list of
//! exactly its rows (the listing's own filter). The query is parsed by
//! [`GroupFilter::parse`] and read by the repository's `groups`, the same
//! two steps as `GET /api/v1/{site-calls,notifications}/groups`.

use askama::Template;
use axum::{
    extract::{Query, State},
    response::Response,
};
use sitelink_commons::TrackedOperationStatus;

use super::{base, Pages};
use crate::{
    central_ui::{
        format,
        session::Operator,
        views::{render, Nav, UiError},
        UiState,
    },
    configuration_database::{
        listing::unknown_site, Dialect, FailureGroup, GroupFilter, Grouped, ListFilter,
    },
    operator_actions::Subject,
};

/// Groups a page shows at most.
const GROUPS_SHOWN: usize = 200;

/// One group, ready to show.
pub struct GroupRow {
    pub target: String,
    pub fingerprint: String,
    pub count: u64,
    pub per_site: String,
    pub first_seen: String,
    pub last_seen: String,
    pub sample_error: String,
    /// The Site Calls list of exactly this group's calls.
    pub calls_href: String,
    /// The filter of the group's parked calls (a bulk action's preview).
    pub bulk_query: String,
}

#[derive(Template)]
#[template(path = "groups.html")]
struct GroupsPage {
    nav: Nav,
    notifications: bool,
    base: &'static str,
    site_names: Vec<String>,
    site: String,
    kind: String,
    status: String,
    groups: Vec<GroupRow>,
    total: usize,
    error: Option<String>,
    /// The viewer's role may start bulk actions (their buttons show).
    may_operate: bool,
}

fn row(g: FailureGroup, f: &GroupFilter, base: &str) -> GroupRow {
    let fingerprint = g.fingerprint.unwrap_or_default();
    // The group's own calls, by the listing's filter: its exact target and
    // fingerprint, and the groups' other filters.
    let exact = ListFilter {
        site: f.site.clone(),
        kind: f.kind,
        target_is: Some(g.target.clone()),
        fingerprint: (!fingerprint.is_empty()).then(|| fingerprint.clone()),
        ..Default::default()
    };
    let statuses = match f.status {
        Some(s) => vec![s],
        None => vec![
            TrackedOperationStatus::Parked,
            TrackedOperationStatus::Failed,
        ],
    };
    let listed = ListFilter {
        statuses,
        ..exact.clone()
    };
    let parked = ListFilter {
        statuses: vec![TrackedOperationStatus::Parked],
        ..exact
    };
    let ms = |t: time::OffsetDateTime| sitelink_commons::utc_to_unix_ms(t);
    GroupRow {
        calls_href: format!("{base}?{}", listed.to_query()),
        bulk_query: parked.to_query(),
        target: g.target,
        fingerprint,
        count: g.count,
        per_site: g
            .per_site
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        first_seen: format::utc(ms(g.first_seen)),
        last_seen: format::utc(ms(g.last_seen)),
        sample_error: g.sample_error.unwrap_or_default(),
    }
}

/// `GET /site-calls/groups`, `GET /notifications/groups`.
pub async fn groups<S: Pages>(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let site_names = super::site_names(&st).await?;
    let notifications = S::SUBJECT == Subject::Notification;
    let grouped = if notifications {
        Grouped::Notifications
    } else {
        Grouped::SiteCalls
    };
    let mut page = GroupsPage {
        nav: Nav::of(
            &op,
            if notifications {
                "notifications"
            } else {
                "site-calls"
            },
        ),
        notifications,
        base: base(S::SUBJECT),
        site_names,
        site: String::new(),
        kind: String::new(),
        status: String::new(),
        groups: Vec::new(),
        total: 0,
        error: None,
        may_operate: op.user.role.may_operate(),
    };
    let refuse = |mut page: GroupsPage, status, message| {
        page.error = Some(message);
        let mut resp = render(&page);
        *resp.status_mut() = status;
        Ok(resp)
    };
    let (filter, _) = match GroupFilter::parse(&q, grouped, Dialect::Page) {
        Ok(f) => f,
        Err(e) => return refuse(page, axum::http::StatusCode::BAD_REQUEST, e),
    };
    page.site = filter.site.clone().unwrap_or_default();
    page.kind = filter.kind.map(|k| k.to_string()).unwrap_or_default();
    page.status = filter.status.map(|s| s.to_string()).unwrap_or_default();
    if let Some(m) = unknown_site(&st.db, filter.site.as_deref())
        .await
        .map_err(UiError::internal)?
    {
        return refuse(page, axum::http::StatusCode::NOT_FOUND, m);
    }
    let (groups, total) = match grouped {
        Grouped::SiteCalls => st.db.site_calls().groups(&filter, GROUPS_SHOWN).await,
        Grouped::Notifications => st.db.notifications().groups(&filter, GROUPS_SHOWN).await,
    }
    .map_err(UiError::internal)?;
    let base = page.base;
    page.groups = groups.into_iter().map(|g| row(g, &filter, base)).collect();
    page.total = total;
    Ok(render(&page))
}
