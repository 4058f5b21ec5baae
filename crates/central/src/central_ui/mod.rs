//! Central UI (SPEC §2 component 11, §5.5): server-rendered pages — login,
//! the dashboard, Site Calls, the Notification Outbox, sites and users —
//! on central's HTTP port beside the REST API.
//!
//! Layout: [`session`] (server-side sessions, the login cookie, CSRF and
//! Origin checks, role guards), [`views`] (every handler, one file per
//! area), [`format`] (what templates show: badges, times, ages),
//! `templates/` (askama, auto-escaping; `layout.html`, one template a page,
//! `*_partial.html` for what htmx refreshes) and `static/` (Bootstrap and
//! htmx vendored from npm, and our one script), served with long cache
//! lifetimes under content-hashed names.
//!
//! Invariants:
//! - A page reads and acts only through the functions its REST twin calls
//!   ([`crate::health_monitoring::HealthMonitor`],
//!   [`crate::operator_actions::OperatorActions`], the repositories): no
//!   query twice.
//! - Every answer carries the security headers of [`security_headers`]: a
//!   Content-Security-Policy without inline script or style, no framing,
//!   no referrer beyond the origin, no sniffing. No page loads anything
//!   from another origin.
//! - Every state-changing request is a POST that carries the session's
//!   CSRF token and comes from this origin (Origin, else Referer); every
//!   value shown is escaped by the template engine.

mod format;
mod page;
pub mod session;
mod views;

pub use views::records::PAGE_ROWS;
use views::records::{self, NotificationPages, SiteCallPages};

use std::{sync::LazyLock, time::Duration};

use axum::{
    extract::Path,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};

use crate::{
    authentication::Authenticator, configuration_database::Database,
    health_monitoring::HealthMonitor, operator_actions::OperatorActions,
};

/// What the pages need.
#[derive(Clone)]
pub struct UiState {
    pub db: Database,
    pub health: HealthMonitor,
    pub actions: OperatorActions,
    pub auth: Authenticator,
    /// Central's HTTP port serves TLS: cookies get `Secure` and the
    /// `__Host-` prefix, and this origin is `https://`.
    pub tls: bool,
    /// A session unused this long ends (default 8 hours).
    pub idle_timeout: Duration,
    /// The site link's port and whether it serves TLS (for the `[central]`
    /// block shown when a site is added).
    pub link_port: u16,
    pub link_tls: bool,
}

/// The page routes (the REST API's router adds its own).
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/", get(views::home))
        .route("/login", get(views::login_form).post(views::login))
        .route("/logout", post(views::logout))
        .route("/dashboard", get(views::dashboard::page))
        .route("/dashboard/live", get(views::dashboard::live))
        .route("/site-calls", get(records::list::<SiteCallPages>))
        .route("/site-calls/groups", get(records::groups::<SiteCallPages>))
        .route("/site-calls/bulk", get(views::bulk::preview))
        .route("/site-calls/{id}/attempts", get(records::attempts))
        .route(
            "/bulk-actions",
            get(views::bulk::list).post(views::bulk::start),
        )
        .route("/bulk-actions/{id}", get(views::bulk::detail))
        .route("/bulk-actions/{id}/progress", get(views::bulk::progress))
        .route("/bulk-actions/{id}/cancel", post(views::bulk::cancel))
        .route(
            "/notifications/groups",
            get(records::groups::<NotificationPages>),
        )
        .route("/site-calls/export", get(records::export::<SiteCallPages>))
        .route(
            "/notifications/export",
            get(records::export::<NotificationPages>),
        )
        .route("/site-calls/{id}", get(records::detail::<SiteCallPages>))
        .route(
            "/site-calls/{id}/record",
            get(records::partial::<SiteCallPages>),
        )
        .route(
            "/site-calls/{id}/{action}",
            get(records::confirm::<SiteCallPages>).post(records::act::<SiteCallPages>),
        )
        .route("/notifications", get(records::list::<NotificationPages>))
        .route(
            "/notifications/{id}",
            get(records::detail::<NotificationPages>),
        )
        .route(
            "/notifications/{id}/record",
            get(records::partial::<NotificationPages>),
        )
        .route(
            "/notifications/{id}/{action}",
            get(records::confirm::<NotificationPages>).post(records::act::<NotificationPages>),
        )
        .route(
            "/sites",
            get(views::admin::sites).post(views::admin::add_site),
        )
        .route(
            "/sites/{name}/revoke",
            get(views::admin::confirm_revoke).post(views::admin::revoke_site),
        )
        .route(
            "/users",
            get(views::admin::users).post(views::admin::add_user),
        )
        .route("/users/{name}", get(views::admin::user))
        .route("/users/{name}/{action}", post(views::admin::user_action))
        .route("/static/{file}", get(asset))
        .with_state(state)
}

/// The Content-Security-Policy of every answer: scripts, styles and
/// fetches from this origin only, no inline script or style, images from
/// here or `data:` (Bootstrap's form controls), no plugins, no framing,
/// forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Middleware for every central HTTP answer (pages, REST, metrics):
/// CSP, `X-Frame-Options: DENY` (for browsers without frame-ancestors),
/// `Referrer-Policy: same-origin`, `X-Content-Type-Options: nosniff`, and
/// `Cache-Control: no-store` unless the handler chose a lifetime (static
/// assets).
pub async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// One vendored or own static file, compiled into the binary.
struct Asset {
    /// The name pages use: stem, a hash of the content, extension.
    path: String,
    content_type: &'static str,
    body: &'static [u8],
}

fn asset_named(stem: &str, ext: &str, content_type: &'static str, body: &'static [u8]) -> Asset {
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(body)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Asset {
        path: format!("{stem}.{hash}.{ext}"),
        content_type,
        body,
    }
}

/// The static files: names carry a content hash, so a browser may keep
/// each for a year and still never use a stale one after an upgrade.
static ASSETS: LazyLock<[Asset; 4]> = LazyLock::new(|| {
    [
        asset_named(
            "bootstrap",
            "css",
            "text/css; charset=utf-8",
            include_bytes!("../../static/bootstrap.min.css"),
        ),
        asset_named(
            "htmx",
            "js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../static/htmx.min.js"),
        ),
        asset_named(
            "sitelink",
            "js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../static/sitelink.js"),
        ),
        asset_named(
            "sitelink",
            "css",
            "text/css; charset=utf-8",
            include_bytes!("../../static/sitelink.css"),
        ),
    ]
});

/// `/static/<name>` of an asset by its plain name (`htmx.js`).
pub(crate) fn asset_url(plain: &str) -> String {
    let (stem, ext) = plain.split_once('.').unwrap_or((plain, ""));
    ASSETS
        .iter()
        .find(|a| a.path.starts_with(&format!("{stem}.")) && a.path.ends_with(&format!(".{ext}")))
        .map(|a| format!("/static/{}", a.path))
        .unwrap_or_default()
}

/// A static file, or the JSON error body (as every non-page error of this
/// port) naming what was not there.
async fn asset(file: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Response {
    let Ok(Path(file)) = file else {
        return static_error(StatusCode::BAD_REQUEST, "the file name is not UTF-8".into());
    };
    match ASSETS.iter().find(|a| a.path == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.body,
        )
            .into_response(),
        None => static_error(
            StatusCode::NOT_FOUND,
            format!(
                "no static file {:?}",
                file.chars().take(80).collect::<String>()
            ),
        ),
    }
}

fn static_error(status: StatusCode, error: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}
