//! The central REST API v1 (SPEC §5.5, §7), on the central HTTP port:
//! sites, site calls (keyset paging, newest first), Retry/Discard relayed to
//! the owning site, KPIs, the operator audit log, Prometheus metrics, a
//! health check, and its OpenAPI document (`/api/v1/openapi.json`, utoipa).
//!
//! Authentication: HTTP Basic (user and password, argon2) or a bearer API
//! token; every `/api/v1` route needs one. Viewer may read; only Deployment
//! and Admin may retry or discard (403 otherwise). Errors are
//! `{ "error": "..." }` naming what was wrong.
//!
//! One file per resource (`sites`, `site_calls`, `notifications`,
//! `bulk_actions`, `audit_log`, `metrics`), over what they share: `state` (what a handler
//! is given), `auth` (the extractor), `params`, `errors`, `commands`
//! (Retry/Discard answered), `kpis`, and `answers` (the types answered,
//! which the OpenAPI document in `openapi` names). Listings parse a
//! [`crate::configuration_database::ListQuery`], as the pages do.

mod answers;
mod audit_log;
mod auth;
mod bulk_actions;
mod commands;
mod errors;
mod kpis;
mod metrics;
mod notifications;
mod openapi;
mod params;
mod site_calls;
mod sites;
mod state;

use axum::{
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};

pub use auth::Authenticated;
pub use errors::ApiError;
pub use openapi::ApiDoc;
pub use state::ApiState;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/sites", get(sites::sites))
        .route("/api/v1/cluster", get(sites::cluster))
        .route("/api/v1/site-calls", get(site_calls::list_site_calls))
        .route("/api/v1/site-calls/groups", get(site_calls::groups))
        .route("/api/v1/site-calls/export", get(site_calls::export))
        .route("/api/v1/site-calls/{id}", get(site_calls::get_site_call))
        .route(
            "/api/v1/site-calls/{id}/attempts",
            get(site_calls::attempts),
        )
        .route("/api/v1/site-calls/{id}/retry", post(site_calls::retry))
        .route("/api/v1/site-calls/{id}/discard", post(site_calls::discard))
        .route("/api/v1/kpis/site-calls", get(site_calls::kpis))
        .route(
            "/api/v1/bulk-actions",
            get(bulk_actions::list).post(bulk_actions::start),
        )
        .route("/api/v1/bulk-actions/{id}", get(bulk_actions::get_one))
        .route(
            "/api/v1/bulk-actions/{id}/cancel",
            post(bulk_actions::cancel),
        )
        .route("/api/v1/notifications", get(notifications::list))
        .route("/api/v1/notifications/export", get(notifications::export))
        .route("/api/v1/notifications/groups", get(notifications::groups))
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
        .route("/api/v1/audit-log", get(audit_log::audit_log))
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
        .layer(axum::middleware::from_fn(errors::answer_headers))
        .with_state(state)
}
