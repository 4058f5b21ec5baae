//! The dashboard (Health Monitoring): the sites table and the KPI tiles of
//! Site Call Audit and the Notification Outbox, global or of one site. The
//! page holds a live part that htmx refreshes every 5 s while the tab is
//! visible (`/dashboard/live`, `dashboard_partial.html`).

use askama::Template;
use axum::{
    extract::{Query, State},
    response::Response,
};
use serde::Deserialize;

use super::{encode, render, Nav, UiError};
use crate::{
    central_ui::{format, session::Operator, UiState},
    configuration_database::{now_ms, rfc3339, Kpis},
    health_monitoring::{Dashboard, SiteHealth},
};

/// One KPI tile: a number that links to the list it counts.
pub struct Tile {
    pub label: &'static str,
    pub value: String,
    pub href: String,
    pub hint: String,
    /// A non-zero figure that wants attention.
    pub alert: bool,
}

/// One row of the sites table.
pub struct SiteRow {
    pub name: String,
    pub online: bool,
    pub revoked: bool,
    pub last_seen: String,
    pub last_seen_ago: String,
    pub reconcile_lag: u64,
    pub buffered: i64,
    pub parked: i64,
    pub parked_href: String,
}

#[derive(Template)]
#[template(path = "dashboard_partial.html")]
pub struct Live {
    pub site: Option<String>,
    pub sites: Vec<SiteRow>,
    pub more_sites: bool,
    pub call_tiles: Vec<Tile>,
    pub notification_tiles: Vec<Tile>,
    pub updated: String,
    pub live_url: String,
    /// The central nodes (shown with two or more).
    pub nodes: Vec<NodeRow>,
    pub lease: String,
}

/// One central node of an active/standby pair.
pub struct NodeRow {
    pub name: String,
    pub role: String,
    pub since: String,
    pub this: bool,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Page {
    nav: Nav,
    live: Live,
    site_names: Vec<String>,
}

#[derive(Deserialize)]
pub struct DashboardQuery {
    site: Option<String>,
}

fn site_filter(q: &DashboardQuery) -> Result<Option<String>, UiError> {
    match q.site.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => sitelink_commons::SiteName::parse(s)
            .map(|n| Some(n.as_str().to_owned()))
            .map_err(|e| UiError::BadRequest(format!("site: {e}"))),
    }
}

/// The list URL a tile counts: `base` with the site and the filters.
fn list_href(base: &str, site: Option<&str>, filters: &[(&str, String)]) -> String {
    let mut q: Vec<String> = Vec::new();
    if let Some(s) = site {
        q.push(format!("site={}", encode(s)));
    }
    q.extend(filters.iter().map(|(k, v)| format!("{k}={}", encode(v))));
    format!("{base}?{}", q.join("&"))
}

fn tiles(base: &str, k: &Kpis, site: Option<&str>, now: i64) -> Vec<Tile> {
    let interval_start = rfc3339(now - k.interval_seconds * 1000);
    let stuck_before = rfc3339(now - k.stuck_threshold_seconds * 1000);
    let open = [
        ("status", "Pending".to_owned()),
        ("status", "Retrying".to_owned()),
    ];
    let interval = format::age(k.interval_seconds);
    vec![
        Tile {
            label: "Buffered",
            value: k.buffered.to_string(),
            href: list_href(base, site, &open),
            hint: "Pending or Retrying".into(),
            alert: false,
        },
        Tile {
            label: "Parked",
            value: k.parked.to_string(),
            href: list_href(base, site, &[("status", "Parked".into())]),
            hint: "retries ran out: Retry or Discard".into(),
            alert: k.parked > 0,
        },
        Tile {
            label: "Failed",
            value: k.failed_last_interval.to_string(),
            href: list_href(
                base,
                site,
                &[
                    ("status", "Failed".into()),
                    ("from", interval_start.clone()),
                ],
            ),
            hint: format!("in the last {interval}"),
            alert: k.failed_last_interval > 0,
        },
        Tile {
            label: "Delivered",
            value: k.delivered_last_interval.to_string(),
            href: list_href(
                base,
                site,
                &[("status", "Delivered".into()), ("from", interval_start)],
            ),
            hint: format!("in the last {interval}"),
            alert: false,
        },
        Tile {
            label: "Oldest pending",
            value: k
                .oldest_pending_age_seconds
                .map(format::age)
                .unwrap_or_else(|| "—".into()),
            href: list_href(base, site, &open),
            hint: "age of the oldest Pending or Retrying".into(),
            alert: false,
        },
        Tile {
            label: "Stuck",
            value: k.stuck.to_string(),
            href: list_href(
                base,
                site,
                &[
                    ("status", "Pending".into()),
                    ("status", "Retrying".into()),
                    ("to", stuck_before),
                ],
            ),
            hint: format!(
                "Pending or Retrying for over {}",
                format::age(k.stuck_threshold_seconds)
            ),
            alert: k.stuck > 0,
        },
    ]
}

fn site_row(s: SiteHealth, now: i64) -> SiteRow {
    SiteRow {
        parked_href: list_href("/site-calls", Some(&s.name), &[("status", "Parked".into())]),
        last_seen: s
            .last_seen_ms
            .map(format::utc)
            .unwrap_or_else(|| "never".into()),
        last_seen_ago: s
            .last_seen_ms
            .map(|ms| format::ago(ms, now))
            .unwrap_or_default(),
        name: s.name,
        online: s.online,
        revoked: s.revoked,
        reconcile_lag: s.reconcile_lag,
        buffered: s.buffered,
        parked: s.parked,
    }
}

async fn live_view(st: &UiState, site: Option<String>) -> Result<(Live, Vec<String>), UiError> {
    let Some(Dashboard {
        sites,
        more_sites,
        site_calls,
        notifications,
        cluster,
        ..
    }) = st.health.dashboard(site.as_deref()).await?
    else {
        return Err(UiError::NotFound(format!(
            "no site {:?}",
            site.unwrap_or_default()
        )));
    };
    let now = now_ms();
    let names = sites.iter().map(|s| s.name.clone()).collect();
    let live = Live {
        call_tiles: tiles("/site-calls", &site_calls, site.as_deref(), now),
        notification_tiles: tiles("/notifications", &notifications, site.as_deref(), now),
        sites: sites.into_iter().map(|s| site_row(s, now)).collect(),
        more_sites,
        updated: format::utc(now),
        nodes: if cluster.mode == "single" {
            Vec::new()
        } else {
            cluster
                .nodes
                .iter()
                .map(|n| NodeRow {
                    this: n.name == cluster.this_node,
                    name: n.name.clone(),
                    role: n.role.clone(),
                    since: n.since_utc.replace('T', " ").replace('Z', " UTC"),
                })
                .collect()
        },
        lease: cluster
            .lease
            .as_ref()
            .map(|l| {
                format!(
                    "lease epoch {}{}",
                    l.epoch,
                    l.last_failover_ms
                        .map(|g| format!(", last handover took {:.1} s", g as f64 / 1000.0))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default(),
        live_url: match &site {
            Some(s) => format!("/dashboard/live?site={}", encode(s)),
            None => "/dashboard/live".into(),
        },
        site,
    };
    Ok((live, names))
}

pub async fn page(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<DashboardQuery>,
) -> Result<Response, UiError> {
    let (live, site_names) = live_view(&st, site_filter(&q)?).await?;
    Ok(render(&Page {
        nav: Nav::of(&op, "dashboard"),
        live,
        site_names,
    }))
}

/// The part of the dashboard htmx swaps in every 5 s.
pub async fn live(
    State(st): State<UiState>,
    _: Operator,
    Query(q): Query<DashboardQuery>,
) -> Result<Response, UiError> {
    let (live, _) = live_view(&st, site_filter(&q)?).await?;
    Ok(render(&live))
}
