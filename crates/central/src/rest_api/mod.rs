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

use std::{collections::HashMap, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use sitelink_commons::{Kind, TrackedOperationId, TrackedOperationStatus};

use crate::{
    authentication::{AuthError, Authenticator},
    communication::RelayOutcome,
    configuration_database::{rfc3339, Database, PageCursor, SiteCallFilter},
    health_monitoring::{HealthMonitor, KpiSource},
    operator_actions::{Action, ActionError, OperatorActions, Subject},
};
pub use auth::Authenticated;
pub use openapi::ApiDoc;
use openapi::{
    AuditPage, Busy, CommandAnswer, Errors, GlobalKpis, NotFound, SiteCallsPage, SiteView,
    SitesPage,
};

#[derive(Clone)]
pub struct ApiState {
    pub db: Database,
    /// Sites' health, KPIs and metrics (the dashboard reads the same).
    pub health: HealthMonitor,
    /// Retry/Discard (the web UI calls the same).
    pub actions: OperatorActions,
    /// Password and token checks (bounded, throttled).
    pub auth: Authenticator,
    /// When set, `/metrics` wants `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
}

const MAX_LIMIT: u32 = 1000;
const DEFAULT_LIMIT: u32 = 100;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/sites", get(sites))
        .route("/api/v1/cluster", get(cluster))
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
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such resource") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this resource",
            )
        })
        .layer(axum::middleware::from_fn(answer_headers))
        .with_state(state)
}

/// Every answer: `Cache-Control: no-store` (operator data must not sit in
/// caches) and `X-Content-Type-Options: nosniff`; an error answer that some
/// layer below gave as plain text (an extractor's rejection, say) becomes
/// the JSON error body, keeping its message.
async fn answer_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = match oversized(&req) {
        Some(refusal) => refusal.into_response(),
        None => next.run(req).await,
    };
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (parts, body) = resp.into_parts();
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let message = match text.trim() {
            "" => status.canonical_reason().unwrap_or("error").to_owned(),
            t => t.to_owned(),
        };
        resp = ApiError::new(status, message).into_response();
        for (name, value) in &parts.headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                resp.headers_mut().insert(name, value.clone());
            }
        }
    }
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// An error answer: `{ "error": "..." }` naming what was wrong, with
/// `Retry-After` when waiting helps (429, 503).
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(openapi::ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        let headers = resp.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sitelink\""),
            );
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long is
            // no longer throttled.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, retry_after) = match &e {
            AuthError::Rejected | AuthError::Malformed(_) => (StatusCode::UNAUTHORIZED, None),
            AuthError::Throttled(d) => (StatusCode::TOO_MANY_REQUESTS, Some(*d)),
            AuthError::Busy(d) => (StatusCode::SERVICE_UNAVAILABLE, Some(*d)),
            AuthError::Internal(e) => return internal(e),
        };
        ApiError {
            status,
            message: e.to_string(),
            retry_after,
        }
    }
}

/// A 500 that carries a short reference, never the error itself: the
/// database's or a library's message goes to the log only, under the same
/// reference, so an operator can find it there.
fn internal(e: impl std::fmt::Display) -> ApiError {
    let reference = format!("{:08x}", rand::random::<u32>());
    tracing::error!(error = %e, reference, "REST API internal error");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error (reference {reference}; the central log has the details)"),
    )
}

fn bad(m: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, m)
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

/// Longest request target (path and query) answered.
const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of request headers answered. (The HTTP server refuses heads
/// over 64 KiB before any handler, with a bare 431.)
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// 414 or 431, as the JSON error body, for a request too large to read on.
fn oversized(req: &axum::extract::Request) -> Option<ApiError> {
    let uri = req.uri().to_string().len();
    if uri > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target has {uri} bytes; at most {MAX_URI_BYTES}"),
        ));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (headers > MAX_HEADER_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request headers have {headers} bytes; at most {MAX_HEADER_BYTES}"),
        )
    })
}

/// Only the `allowed` query parameters, and none with a NUL byte (no
/// database column holds one; PostgreSQL refuses it in a query).
fn only(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown query parameter {k:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    if let Some(k) = q.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(bad(format!("{k} contains a NUL byte")));
    }
    Ok(())
}

/// A query parameter that names a site: a valid site name or a 400.
fn site_param(q: &HashMap<String, String>, key: &str) -> Result<Option<String>, ApiError> {
    q.get(key)
        .map(|s| {
            sitelink_commons::SiteName::parse(s)
                .map(|n| n.as_str().to_owned())
                .map_err(|e| bad(format!("{key}: {e}")))
        })
        .transpose()
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

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, description = "the central nodes and the leader lease", body = crate::cluster::ClusterView), Errors, Busy))]
async fn cluster(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &[])?;
    Ok(Json(st.health.cluster().await.map_err(internal)?).into_response())
}

#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", params(openapi::SitesQuery),
    responses((status = 200, body = SitesPage), Errors, Busy))]
async fn sites(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &["limit", "after"])?;
    let limit = limit_of(&q)?;
    let items: Vec<SiteView> = st
        .health
        .sites(site_param(&q, "after")?.as_deref(), limit)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|s| SiteView {
            online: s.online,
            last_seen_utc: s.last_seen_ms.map(rfc3339),
            cursor: s.cursor,
            reconcile_lag: s.reconcile_lag,
            revoked: s.revoked,
            name: s.name,
        })
        .collect();
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|s| s.name.clone()))
        .flatten();
    Ok(Json(SitesPage { items, next }).into_response())
}

#[utoipa::path(get, path = "/api/v1/site-calls", tag = "site calls", params(openapi::KindQuery, openapi::ListQuery),
    responses((status = 200, body = SiteCallsPage), Errors, Busy))]
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
    filter.kind = q
        .get("kind")
        .map(|k| match k.parse::<Kind>() {
            Ok(kind @ (Kind::ExternalCall | Kind::DatabaseWrite)) => Ok(kind),
            Ok(Kind::Notification) => Err(bad(
                "kind: site calls are ExternalCall or DatabaseWrite; notifications have their own API (/api/v1/notifications)"
                    .into(),
            )),
            Err(_) => Err(bad(format!(
                "kind must be ExternalCall or DatabaseWrite, got {k:?}"
            ))),
        })
        .transpose()?;
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
        site: site_param(q, "site")?,
        kind: None,
        statuses: q
            .get("status")
            .map(|s| s.parse::<TrackedOperationStatus>())
            .transpose()
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect(),
        target_contains: None,
        from_ms: time_param(q, "from")?,
        to_ms: time_param(q, "to")?,
    };
    if let (Some(from), Some(to)) = (filter.from_ms, filter.to_ms) {
        if from > to {
            return Err(bad("from must not be later than to".into()));
        }
    }
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

#[utoipa::path(get, path = "/api/v1/site-calls/{id}", tag = "site calls", params(("id" = uuid::Uuid, Path, description = "TrackedOperationId")),
    responses((status = 200, body = sitelink_commons::TrackingRecord), Errors, Busy, NotFound))]
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
        None => Err(ApiError::new(StatusCode::NOT_FOUND, missing())),
    }
}

#[utoipa::path(post, path = "/api/v1/site-calls/{id}/retry", tag = "site calls", params(("id" = uuid::Uuid, Path, description = "TrackedOperationId")),
    responses((status = 200, description = "Applied", body = CommandAnswer), Errors, (status = 403, description = "the role may not retry or discard", body = openapi::ErrorBody),
        (status = 404, description = "NotFound", body = CommandAnswer), (status = 409, description = "NotParked", body = CommandAnswer),
        (status = 502, description = "Error: the site could not apply it", body = CommandAnswer),
        (status = 503, description = "SiteUnreachable (a CommandAnswer), or every password check slot busy (an error body)", body = openapi::UnavailableAnswer),
        (status = 504, description = "Timeout: not applied, or applied too late to be known (see the audit log)", body = CommandAnswer)))]
async fn retry(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    relay(st, user, id, true).await
}

#[utoipa::path(post, path = "/api/v1/site-calls/{id}/discard", tag = "site calls", params(("id" = uuid::Uuid, Path, description = "TrackedOperationId")),
    responses((status = 200, description = "Applied", body = CommandAnswer), Errors, (status = 403, description = "the role may not retry or discard", body = openapi::ErrorBody),
        (status = 404, description = "NotFound", body = CommandAnswer), (status = 409, description = "NotParked", body = CommandAnswer),
        (status = 502, description = "Error: the site could not apply it", body = CommandAnswer),
        (status = 503, description = "SiteUnreachable (a CommandAnswer), or every password check slot busy (an error body)", body = openapi::UnavailableAnswer),
        (status = 504, description = "Timeout: not applied, or applied too late to be known (see the audit log)", body = CommandAnswer)))]
async fn discard(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    relay(st, user, id, false).await
}

/// Retry/Discard through [`OperatorActions`] (the role check, the relay to
/// the owning site, the audit log), answered as SPEC §7 says.
async fn relay(
    State(st): State<ApiState>,
    Authenticated(user): Authenticated,
    Path(id): Path<String>,
    retry: bool,
) -> Result<Response, ApiError> {
    act(&st, &user, Subject::SiteCall, retry, &id).await
}

/// One operator action, answered: 200 Applied, 404 NotFound, 409
/// NotParked, 503 SiteUnreachable, 504 Timeout, 502 Error, 403 for a role
/// that may not.
async fn act(
    st: &ApiState,
    user: &crate::configuration_database::User,
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
        RelayOutcome::Applied => StatusCode::OK,
        RelayOutcome::NotFound => StatusCode::NOT_FOUND,
        RelayOutcome::NotParked => StatusCode::CONFLICT,
        RelayOutcome::SiteUnreachable => StatusCode::SERVICE_UNAVAILABLE,
        RelayOutcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
        RelayOutcome::Error(_) => StatusCode::BAD_GATEWAY,
    };
    let error = match &done.outcome {
        RelayOutcome::Error(e) => Some(e.clone()),
        RelayOutcome::SiteUnreachable => Some(format!(
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

#[utoipa::path(get, path = "/api/v1/kpis/site-calls", tag = "KPIs", params(openapi::KpisQuery),
    responses((status = 200, description = "global KPIs with per_site, or one site's without it", body = GlobalKpis), Errors, Busy, NotFound))]
async fn kpis(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &["site"])?;
    kpis_answer(&st, KpiSource::SiteCalls, site_param(&q, "site")?.as_ref()).await
}

/// Global KPIs with `per_site`, or one site's with `?site=` (404 for a site
/// central does not know; zeros for a known site with no rows).
async fn kpis_answer(
    st: &ApiState,
    source: KpiSource,
    site: Option<&String>,
) -> Result<Response, ApiError> {
    if let Some(site) = site {
        return match st.health.site_kpis(source, site).await.map_err(internal)? {
            Some(one) => Ok(Json(one).into_response()),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no site {site:?}"),
            )),
        };
    }
    let view = st.health.kpis(source).await.map_err(internal)?;
    Ok(Json(GlobalKpis {
        total: view.total,
        per_site: Some(view.per_site),
    })
    .into_response())
}

#[utoipa::path(get, path = "/api/v1/audit-log", tag = "audit log", params(openapi::AuditQuery),
    responses((status = 200, body = AuditPage), Errors, Busy))]
async fn audit_log(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &["limit", "after"])?;
    let limit = limit_of(&q)?;
    let after = q
        .get("after")
        .map(|a| {
            sitelink_commons::is_hyphenated_uuid(a)
                .then(|| a.parse::<uuid::Uuid>().ok())
                .flatten()
                .ok_or_else(|| {
                    bad(format!(
                        "after must be the next of an earlier page, got {a:?}"
                    ))
                })
        })
        .transpose()?;
    let items = st
        .db
        .audit_log()
        .list(after.map(|a| a.to_string()).as_deref(), limit)
        .await
        .map_err(internal)?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(AuditPage { items, next }).into_response())
}

/// Prometheus metrics ([`HealthMonitor::metrics`]).
async fn metrics(
    State(st): State<ApiState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &st.metrics_token {
        if !sitelink_net::has_bearer(&headers, expected) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "/metrics wants Authorization: Bearer <metrics_token>",
            ));
        }
    }
    let out = st.health.metrics().await.map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
