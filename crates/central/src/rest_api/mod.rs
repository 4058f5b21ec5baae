//! The central REST API v1 (SPEC §5.5, §7), on the central HTTP port:
//! sites, site calls (keyset paging, newest first), Retry/Discard relayed to
//! the owning site, KPIs, the operator audit log, Prometheus metrics, a
//! health check, and its OpenAPI document (`/api/v1/openapi.json`, utoipa).
//!
//! Authentication: HTTP Basic (user and password, argon2) or a bearer API
//! token; every `/api/v1` route needs one. Viewer may read; only Deployment
//! and Admin may retry or discard (403 otherwise). Errors are
//! `{ "error": "..." }` naming what was wrong.

mod auth;
mod notifications;
mod openapi;

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use sitelink_commons::{Kind, TrackedOperationId, TrackedOperationStatus};

use crate::{
    communication::{Command, LinkStats, RelayOutcome},
    configuration_database::{now_ms, rfc3339, Database, Kpis, PageCursor, SiteCallFilter},
    notification_outbox::Outbox,
    site_call_audit::SiteCallAudit,
};
pub use auth::Authenticated;
pub use openapi::ApiDoc;
use openapi::{AuditPage, CommandAnswer, GlobalKpis, SiteCallsPage, SiteView, SitesPage};

/// KPI settings (SPEC §5.2 defaults: 1 hour, 10 minutes).
#[derive(Clone, Copy, Debug)]
pub struct KpiSettings {
    pub interval_seconds: i64,
    pub stuck_threshold_seconds: i64,
}

#[derive(Clone)]
pub struct ApiState {
    pub db: Database,
    pub audit: SiteCallAudit,
    pub outbox: Outbox,
    pub stats: Arc<LinkStats>,
    pub command_timeout: Duration,
    pub kpis: KpiSettings,
}

const MAX_LIMIT: u32 = 1000;
const DEFAULT_LIMIT: u32 = 100;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/sites", get(sites))
        .route("/api/v1/site-calls", get(list_site_calls))
        .route("/api/v1/site-calls/{id}", get(get_site_call))
        .route("/api/v1/site-calls/{id}/retry", post(retry))
        .route("/api/v1/site-calls/{id}/discard", post(discard))
        .route("/api/v1/kpis/site-calls", get(kpis))
        .route("/api/v1/notifications", get(notifications::list))
        .route("/api/v1/notifications/{id}", get(notifications::get_one))
        .route(
            "/api/v1/notifications/{id}/retry",
            post(notifications::retry),
        )
        .route(
            "/api/v1/notifications/{id}/discard",
            post(notifications::discard),
        )
        .route("/api/v1/kpis/notifications", get(notifications::kpis))
        .route("/api/v1/audit-log", get(audit_log))
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(<ApiDoc as utoipa::OpenApi>::openapi()) }),
        )
        .with_state(state)
}

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(openapi::ErrorBody { error: self.1 })).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"sitelink\"".parse().unwrap(),
            );
        }
        resp
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "REST API");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {e}"),
    )
}

fn bad(m: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m)
}

fn limit_of(q: &HashMap<String, String>) -> Result<u32, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                bad(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {l:?}"
                ))
            }),
    }
}

fn only(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(format!(
            "unknown query parameter {k:?} (allowed: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn time_param(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    q.get(key)
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(sitelink_commons::utc_to_unix_ms)
                .map_err(|_| {
                    bad(format!(
                        "{key} must be an RFC 3339 time (2026-01-31T08:00:00Z), got {v:?}"
                    ))
                })
        })
        .transpose()
}

#[utoipa::path(get, path = "/api/v1/sites", responses((status = 200, body = SitesPage), (status = 401, body = openapi::ErrorBody)))]
async fn sites(State(st): State<ApiState>, _: Authenticated) -> Result<Response, ApiError> {
    let online = st.audit.online().await;
    let items: Vec<SiteView> = st
        .db
        .sites()
        .list()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|s| SiteView {
            online: online.contains(&s.name),
            last_seen_utc: s.last_seen_ms.map(rfc3339),
            cursor: s.reconcile_cursor,
            reconcile_lag: s.high_seq.saturating_sub(s.reconcile_cursor),
            revoked: s.revoked,
            name: s.name,
        })
        .collect();
    Ok(Json(SitesPage { items, next: None }).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/site-calls",
    params(
        ("site" = Option<String>, Query, description = "only this site"),
        ("kind" = Option<String>, Query, description = "ExternalCall or DatabaseWrite"),
        ("status" = Option<String>, Query, description = "Pending, Retrying, Delivered, Parked, Failed or Discarded"),
        ("from" = Option<String>, Query, description = "created at or after (RFC 3339)"),
        ("to" = Option<String>, Query, description = "created before (RFC 3339)"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("after" = Option<String>, Query, description = "the `next` of the previous page"),
    ),
    responses((status = 200, body = SiteCallsPage), (status = 400, body = openapi::ErrorBody), (status = 401, body = openapi::ErrorBody))
)]
async fn list_site_calls(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(
        &q,
        &["site", "kind", "status", "from", "to", "limit", "after"],
    )?;
    let (mut filter, after, limit) = list_params(&q)?;
    let kind = q
        .get("kind")
        .map(|k| k.parse::<Kind>())
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    if kind == Some(Kind::Notification) {
        return Err(bad(
            "kind: site calls are ExternalCall or DatabaseWrite; notifications have their own API"
                .into(),
        ));
    }
    filter.kind = kind;
    let items = st
        .db
        .site_calls()
        .list(&filter, after.as_ref(), limit)
        .await
        .map_err(internal)?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|r| PageCursor::of(r).encode()))
        .flatten();
    Ok(Json(SiteCallsPage { items, next }).into_response())
}

/// The filters, cursor and limit every tracking-row listing takes.
fn list_params(
    q: &HashMap<String, String>,
) -> Result<(SiteCallFilter, Option<PageCursor>, u32), ApiError> {
    let filter = SiteCallFilter {
        site: q.get("site").cloned(),
        kind: None,
        status: q
            .get("status")
            .map(|s| s.parse::<TrackedOperationStatus>())
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        from_ms: time_param(q, "from")?,
        to_ms: time_param(q, "to")?,
    };
    let after = q
        .get("after")
        .map(|a| PageCursor::decode(a))
        .transpose()
        .map_err(bad)?;
    Ok((filter, after, limit_of(q)?))
}

fn parse_id(id: &str) -> Result<TrackedOperationId, ApiError> {
    id.parse()
        .map_err(|e: sitelink_commons::ParseIdError| bad(e.to_string()))
}

#[utoipa::path(get, path = "/api/v1/site-calls/{id}", params(("id" = String, Path, description = "TrackedOperationId")),
    responses((status = 200, body = sitelink_commons::TrackingRecord), (status = 400, body = openapi::ErrorBody), (status = 404, body = openapi::ErrorBody)))]
async fn get_site_call(
    State(st): State<ApiState>,
    _: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let row = st.db.site_calls().get(id).await.map_err(internal)?;
    found(row, || format!("no site call {id}"))
}

/// 200 with the JSON of `row`, or 404 saying what was not there.
fn found<T: serde::Serialize>(
    row: Option<T>,
    missing: impl FnOnce() -> String,
) -> Result<Response, ApiError> {
    match row {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, missing())),
    }
}

#[utoipa::path(post, path = "/api/v1/site-calls/{id}/retry", params(("id" = String, Path, description = "TrackedOperationId")),
    responses((status = 200, body = CommandAnswer), (status = 403, body = openapi::ErrorBody), (status = 404, body = CommandAnswer),
        (status = 409, body = CommandAnswer), (status = 503, body = CommandAnswer), (status = 504, body = CommandAnswer)))]
async fn retry(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    relay(st, user, id, true).await
}

#[utoipa::path(post, path = "/api/v1/site-calls/{id}/discard", params(("id" = String, Path, description = "TrackedOperationId")),
    responses((status = 200, body = CommandAnswer), (status = 403, body = openapi::ErrorBody), (status = 404, body = CommandAnswer),
        (status = 409, body = CommandAnswer), (status = 503, body = CommandAnswer), (status = 504, body = CommandAnswer)))]
async fn discard(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    relay(st, user, id, false).await
}

/// Relays Retry/Discard to the owning site (central never edits the row)
/// and writes the action to the audit log.
async fn relay(
    State(st): State<ApiState>,
    Authenticated(user): Authenticated,
    Path(id): Path<String>,
    retry: bool,
) -> Result<Response, ApiError> {
    may_operate(&user)?;
    let id = parse_id(&id)?;
    let row = st.db.site_calls().get(id).await.map_err(internal)?;
    let (outcome, site) = match &row {
        None => (RelayOutcome::NotFound, None),
        Some(r) => {
            let command = if retry {
                Command::Retry(id)
            } else {
                Command::Discard(id)
            };
            (
                st.audit
                    .relay(&r.source_site, command, st.command_timeout)
                    .await,
                Some(r.source_site.clone()),
            )
        }
    };
    let action = if retry { "retry" } else { "discard" };
    audited_answer(&st, &user, action, id, site.as_deref(), outcome).await
}

/// 403 unless the user's role may retry or discard.
fn may_operate(user: &crate::configuration_database::User) -> Result<(), ApiError> {
    if user.role.may_operate() {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("role {} may not retry or discard", user.role.as_str()),
        ))
    }
}

/// Writes an operator action to the audit log and answers it (SPEC §7:
/// 200 Applied, 404 NotFound, 409 NotParked, 503 SiteUnreachable, 504
/// Timeout).
async fn audited_answer(
    st: &ApiState,
    user: &crate::configuration_database::User,
    action: &str,
    id: TrackedOperationId,
    site: Option<&str>,
    outcome: RelayOutcome,
) -> Result<Response, ApiError> {
    let (status, name) = match &outcome {
        RelayOutcome::Applied => (StatusCode::OK, "Applied"),
        RelayOutcome::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        RelayOutcome::NotParked => (StatusCode::CONFLICT, "NotParked"),
        RelayOutcome::SiteUnreachable => (StatusCode::SERVICE_UNAVAILABLE, "SiteUnreachable"),
        RelayOutcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        RelayOutcome::Error(_) => (StatusCode::BAD_GATEWAY, "Error"),
    };
    st.db
        .audit_log()
        .record(&user.name, action, &id.to_string(), site, name)
        .await
        .map_err(internal)?;
    tracing::info!(user = %user.name, action, %id, outcome = name, "operator action");
    let error = match &outcome {
        RelayOutcome::Error(e) => Some(e.clone()),
        RelayOutcome::SiteUnreachable => Some(format!(
            "site {} is unreachable: it has no live stream to central",
            site.unwrap_or_default()
        )),
        _ => None,
    };
    Ok((
        status,
        Json(CommandAnswer {
            outcome: name.to_owned(),
            error,
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/kpis/site-calls", params(("site" = Option<String>, Query, description = "one site's KPIs only")),
    responses((status = 200, description = "GlobalKpis, or Kpis with ?site=", body = GlobalKpis)))]
async fn kpis(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &["site"])?;
    let k = st.kpis;
    let per_site = st
        .db
        .site_calls()
        .kpis_per_site(now_ms(), k.interval_seconds, k.stuck_threshold_seconds)
        .await
        .map_err(internal)?;
    Ok(kpis_answer(per_site, k, q.get("site")))
}

/// Global KPIs with `per_site`, or one site's with `?site=`.
fn kpis_answer(
    per_site: std::collections::BTreeMap<String, Kpis>,
    k: KpiSettings,
    site: Option<&String>,
) -> Response {
    if let Some(site) = site {
        let one = per_site.get(site).cloned().unwrap_or(Kpis {
            interval_seconds: k.interval_seconds,
            stuck_threshold_seconds: k.stuck_threshold_seconds,
            ..Default::default()
        });
        return Json(one).into_response();
    }
    let total = Kpis::total(&per_site, k.interval_seconds, k.stuck_threshold_seconds);
    Json(GlobalKpis { total, per_site }).into_response()
}

#[utoipa::path(get, path = "/api/v1/audit-log",
    params(("limit" = Option<u32>, Query, description = "1 to 1000"), ("after" = Option<String>, Query, description = "the `next` of the previous page")),
    responses((status = 200, body = AuditPage)))]
async fn audit_log(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &["limit", "after"])?;
    let limit = limit_of(&q)?;
    let items = st
        .db
        .audit_log()
        .list(q.get("after").map(String::as_str), limit)
        .await
        .map_err(internal)?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(AuditPage { items, next }).into_response())
}

/// One gauge per KPI and site, `sitelink_<prefix>_<kpi>{site="…"}`.
fn kpi_gauges(
    out: &mut String,
    prefix: &str,
    what: &str,
    per_site: &std::collections::BTreeMap<String, Kpis>,
) {
    use std::fmt::Write;
    for (name, help) in [
        ("buffered", "Pending or Retrying."),
        ("parked", "Parked."),
        ("failed_last_interval", "Failed in the KPI interval."),
        ("delivered_last_interval", "Delivered in the KPI interval."),
        (
            "stuck",
            "Pending or Retrying longer than the stuck threshold.",
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP sitelink_{prefix}_{name} {what} {help}\n# TYPE sitelink_{prefix}_{name} gauge"
        );
        for (site, kp) in per_site {
            let v = match name {
                "buffered" => kp.buffered,
                "parked" => kp.parked,
                "failed_last_interval" => kp.failed_last_interval,
                "delivered_last_interval" => kp.delivered_last_interval,
                _ => kp.stuck,
            };
            let _ = writeln!(out, "sitelink_{prefix}_{name}{{site=\"{site}\"}} {v}");
        }
    }
}

/// Prometheus text exposition, written by hand: a handful of gauges does
/// not need a metrics registry.
async fn metrics(State(st): State<ApiState>) -> Result<Response, ApiError> {
    use std::fmt::Write;
    let k = st.kpis;
    let per_site = st
        .db
        .site_calls()
        .kpis_per_site(now_ms(), k.interval_seconds, k.stuck_threshold_seconds)
        .await
        .map_err(internal)?;
    let mut out = String::new();
    let online = st.audit.online().await;
    let _ = writeln!(out, "# HELP sitelink_connected_sites Sites with a live stream.\n# TYPE sitelink_connected_sites gauge");
    let _ = writeln!(out, "sitelink_connected_sites {}", online.len());
    let stats = &st.stats;
    for (name, help, v) in [
        (
            "telemetry_rows_total",
            "Rows received in telemetry batches.",
            &stats.telemetry_rows,
        ),
        (
            "reconcile_rows_total",
            "Rows received in reconcile pages.",
            &stats.reconcile_rows,
        ),
        (
            "notifications_forwarded_total",
            "Forwarded notifications stored and acknowledged.",
            &stats.notifications_forwarded,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP sitelink_link_{name} {help}\n# TYPE sitelink_link_{name} counter"
        );
        let _ = writeln!(
            out,
            "sitelink_link_{name} {}",
            v.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    let notifications = st
        .db
        .notifications()
        .kpis_per_site(now_ms(), k.interval_seconds, k.stuck_threshold_seconds)
        .await
        .map_err(internal)?;
    kpi_gauges(&mut out, "site_calls", "Site calls", &per_site);
    kpi_gauges(&mut out, "notifications", "Notifications", &notifications);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
