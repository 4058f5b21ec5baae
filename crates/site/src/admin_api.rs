//! The site's local admin HTTP API (bound to 127.0.0.1 by default): the
//! tracking records, operator Retry/Discard, the scripts (with a changed
//! file's compile error) and running them on demand. `GET /` answers an
//! index of the site and these routes, for a person who opens the address
//! in a browser.
//!
//! Who may call it (the [`AdminGuard`] layer, on every request):
//! - the `Host` header must be an IP address, `localhost`, or a name in
//!   `[admin] allowed_hosts`, so that a web page whose own name was rebound
//!   to this machine (DNS rebinding) cannot reach it;
//! - a state-changing request (POST) must say `Content-Type:
//!   application/json` and carry no foreign `Origin`, so that a page open in
//!   a browser on the site's machine (an HMI station) cannot post a form or
//!   a no-CORS fetch to it;
//! - with `[admin] token` set, every request but `/healthz` needs
//!   `Authorization: Bearer <token>` (required to start at all on a
//!   non-loopback bind).
//!
//! Shapes follow SPEC §7: records as [`TrackingRecord`], lists as
//! `{ "items": [...], "next": <cursor or null> }` with `limit` and `after`,
//! Retry/Discard as `{ "outcome": ... }` with 200 / 404 / 409. Errors are
//! `{ "error": "..." }` naming what was wrong.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::{header, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use sitelink_commons::{TrackedOperationId, TrackedOperationStatus};

use crate::{
    site_runtime::{ScriptError, ScriptRuntime},
    store_and_forward::{CommandOutcome, Engine, EngineError},
};

#[derive(Clone)]
struct AppState {
    engine: Engine,
    runtime: Arc<ScriptRuntime>,
}

const MAX_LIMIT: u32 = 1000;
const DEFAULT_LIMIT: u32 = 100;

/// Who may call the admin API (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct AdminGuard {
    /// Host names (besides IP addresses and `localhost`) the API answers to.
    pub allowed_hosts: Vec<String>,
    /// When set, the bearer token every request but `/healthz` needs.
    pub token: Option<String>,
}

impl AdminGuard {
    /// Why a request is refused (403 or 401), or `None` to let it through.
    fn refusal(&self, req: &axum::extract::Request) -> Option<ApiError> {
        let headers = req.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.host_allowed(host) {
            return Some(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {host:?} is not this site's admin API (an IP address, localhost, or [admin] allowed_hosts)"
                ),
            ));
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let same = origin
                    .to_str()
                    .ok()
                    .and_then(|o| o.split_once("://"))
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
                if !same {
                    return Some(ApiError(
                        StatusCode::FORBIDDEN,
                        format!("cross-origin request refused (Origin {origin:?})"),
                    ));
                }
            }
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .and_then(|c| c.split(';').next())
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
            // Only a POST has a body to read (every other method but GET is
            // answered 405 by the routes).
            if req.method() == Method::POST && !json {
                return Some(ApiError(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "a POST needs Content-Type: application/json".into(),
                ));
            }
        }
        match &self.token {
            Some(token)
                if req.uri().path() != "/healthz" && !sitelink_net::has_bearer(headers, token) =>
            {
                Some(ApiError(
                    StatusCode::UNAUTHORIZED,
                    "this admin API wants Authorization: Bearer <[admin] token>".into(),
                ))
            }
            _ => None,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = sitelink_net::host_name(host);
        !name.is_empty()
            && (sitelink_net::host_is_address(host)
                || self
                    .allowed_hosts
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(name)))
    }
}

pub fn router(engine: Engine, runtime: Arc<ScriptRuntime>, guard: AdminGuard) -> Router {
    let guard = Arc::new(guard);
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/status", get(site_status))
        .route("/api/v1/scripts", get(list_scripts))
        .route("/api/v1/operations", get(list_operations))
        .route("/api/v1/operations/{id}", get(get_operation))
        .route("/api/v1/operations/{id}/history", get(operation_history))
        .route("/api/v1/operations/{id}/retry", post(retry_operation))
        .route("/api/v1/operations/{id}/discard", post(discard_operation))
        .route("/api/v1/scripts/{name}/run", post(run_script))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such resource".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this resource".into(),
            )
        })
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let refusal = guard.refusal(&req);
                async move {
                    match refusal {
                        Some(e) => {
                            tracing::warn!(error = %e.1, "admin API request refused");
                            e.into_response()
                        }
                        None => next.run(req).await,
                    }
                }
            },
        ))
        .with_state(AppState { engine, runtime })
}

/// An error answer: status code and a message that names what was wrong.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.0 == StatusCode::UNAUTHORIZED;
        let mut resp = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"sitelink-site\""),
            );
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        // A 500 carries a reference only; the storage's words go to the log.
        let reference = sitelink_net::internal_error_reference(&e, "site admin API");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error (reference {reference}; the site log has the details)"),
        )
    }
}

fn parse_id(s: &str) -> Result<TrackedOperationId, ApiError> {
    s.parse().map_err(|e: sitelink_commons::ParseIdError| {
        ApiError(StatusCode::BAD_REQUEST, e.to_string())
    })
}

async fn get_operation(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match st.engine.get_local(id).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no tracked operation {id}"),
        )),
    }
}

/// The attempt history and the stored request (secrets masked).
async fn operation_history(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match st.engine.history(id).await? {
        Some(h) => Ok(Json(h).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no tracked operation {id}"),
        )),
    }
}

async fn list_operations(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "status" | "limit" | "after"))
    {
        return Err(bad(format!(
            "unknown query parameter {k:?} (allowed: status, limit, after)"
        )));
    }
    let status = q
        .get("status")
        .map(|s| s.parse::<TrackedOperationStatus>())
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => sitelink_commons::parse_limit(l, MAX_LIMIT).map_err(bad)?,
    };
    let after = q.get("after").map(|a| parse_id(a)).transpose()?;
    let items = st.engine.list_local(status, after, limit).await?;
    let next = (items.len() as u32 == limit)
        .then(|| {
            items
                .last()
                .map(|r| r.record.tracked_operation_id.to_string())
        })
        .flatten();
    Ok(Json(json!({ "items": items, "next": next })).into_response())
}

fn command_response(outcome: CommandOutcome) -> Response {
    match outcome {
        CommandOutcome::Applied => {
            (StatusCode::OK, Json(json!({ "outcome": "Applied" }))).into_response()
        }
        CommandOutcome::NotFound => (
            StatusCode::NOT_FOUND,
            Json(json!({ "outcome": "NotFound" })),
        )
            .into_response(),
        CommandOutcome::NotParked(status) => (
            StatusCode::CONFLICT,
            Json(json!({ "outcome": "NotParked", "status": status })),
        )
            .into_response(),
    }
}

async fn retry_operation(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let outcome = st.engine.retry_parked(id).await?;
    tracing::info!(%id, ?outcome, "local operator retry");
    Ok(command_response(outcome))
}

async fn discard_operation(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let outcome = st.engine.discard_parked(id).await?;
    tracing::info!(%id, ?outcome, "local operator discard");
    Ok(command_response(outcome))
}

async fn run_script(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    match st.runtime.run(&name).await {
        Ok(run) => Json(run).into_response(),
        Err(e @ ScriptError::UnknownScript(_)) => {
            ApiError(StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Err(e @ ScriptError::Compile { .. }) => {
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response()
        }
        Err(ScriptError::Runtime {
            script,
            message,
            ids,
        }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": format!("script {script:?} failed: {message}"),
                "script": script,
                "tracked_operation_ids": ids,
            })),
        )
            .into_response(),
    }
}

/// `GET /`: what this is and where to look (JSON, readable in a browser).
async fn index(State(st): State<AppState>) -> Response {
    Json(json!({
        "service": "sitelink site admin API",
        "site": st.engine.site(),
        "version": env!("CARGO_PKG_VERSION"),
        "routes": {
            "GET /api/v1/status": "counts by status, buffer, change sequence, scripts",
            "GET /api/v1/scripts": "the scripts, their files, and why a changed file is not running",
            "GET /api/v1/operations?status=&limit=&after=": "this site's tracked operations, newest first",
            "GET /api/v1/operations/{id}": "one tracked operation",
            "POST /api/v1/operations/{id}/retry": "retry a parked operation (Content-Type: application/json)",
            "POST /api/v1/operations/{id}/discard": "discard a parked operation (Content-Type: application/json)",
            "POST /api/v1/scripts/{name}/run": "run a script now (Content-Type: application/json)",
            "GET /healthz": "ok"
        },
        "scripts": st.runtime.scripts(),
    }))
    .into_response()
}

/// `GET /api/v1/scripts`: each script, its file, when the running version
/// was compiled, and the compile error of a newer file that is not running.
async fn list_scripts(State(st): State<AppState>) -> Response {
    Json(json!({ "items": st.runtime.scripts() })).into_response()
}

async fn site_status(State(st): State<AppState>) -> Result<Response, ApiError> {
    let all = st.engine.status_counts().await?;
    let counts: serde_json::Map<String, serde_json::Value> = all
        .by_status
        .into_iter()
        .map(|(s, n)| (s.to_string(), n.into()))
        .collect();
    let (commits, ops) = st.engine.commit_stats();
    Ok(Json(json!({
        "site": st.engine.site(),
        "counts": counts,
        "forwarded_notifications": all.forwarded_notifications,
        "buffered": st.engine.buffer_len().await?,
        "high_change_seq": st.engine.high_seq(),
        "acked_cursor": st.engine.acked_cursor().await?,
        "commits": commits,
        "write_operations": ops,
        "scripts": st.runtime.script_names().collect::<Vec<_>>(),
    }))
    .into_response())
}
