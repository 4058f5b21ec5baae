//! Central's REST API and the web UI's pages and forms, through the real
//! router (in process, no socket) of a real central on SQLite: any
//! method, path, query string, content type and body, as an operator with
//! a password, a bearer token or a browser session (with or without the
//! form's CSRF token). Bad input is a 4xx; a 500 (an internal error) or a
//! panic is a finding.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sitelink_fuzz::world;
use tower::ServiceExt;

/// Every route, `{}` standing for the fuzzed path segment.
const ROUTES: &[&str] = &[
    "/api/v1/sites",
    "/api/v1/cluster",
    "/api/v1/site-calls",
    "/api/v1/site-calls/groups",
    "/api/v1/site-calls/export",
    "/api/v1/site-calls/{}",
    "/api/v1/site-calls/{}/retry",
    "/api/v1/site-calls/{}/discard",
    "/api/v1/site-calls/{}/attempts",
    "/api/v1/kpis/site-calls",
    "/api/v1/bulk-actions",
    "/api/v1/bulk-actions/{}",
    "/api/v1/bulk-actions/{}/cancel",
    "/api/v1/notifications",
    "/api/v1/notifications/export",
    "/api/v1/notifications/groups",
    "/api/v1/notifications/{}",
    "/api/v1/notifications/{}/retry",
    "/api/v1/notifications/{}/discard",
    "/api/v1/kpis/notifications",
    "/api/v1/audit-log",
    "/api/v1/openapi.json",
    "/",
    "/login",
    "/logout",
    "/dashboard",
    "/dashboard/live",
    "/site-calls",
    "/site-calls/groups",
    "/site-calls/bulk",
    "/site-calls/{}",
    "/site-calls/{}/retry",
    "/site-calls/{}/discard",
    "/site-calls/{}/attempts",
    "/site-calls/export",
    "/bulk-actions/{}",
    "/bulk-actions/{}/progress",
    "/bulk-actions/{}/cancel",
    "/notifications",
    "/notifications/{}",
    "/notifications/{}/retry",
    "/notifications/{}/discard",
    "/users",
    "/users/{}",
    "/users/{}/{}",
    "/static/{}",
    "/metrics",
    "/healthz",
    "/{}",
];

#[derive(Arbitrary, Debug)]
struct Input {
    route: u8,
    segment: String,
    post: bool,
    query: String,
    /// 0 none, 1 JSON, 2 form, 3 text.
    content_type: u8,
    body: Vec<u8>,
    /// 0 none, 1 HTTP Basic, 2 bearer token, 3 browser session.
    auth: u8,
    /// A form that carries the session's CSRF token.
    csrf: bool,
}

fuzz_target!(|input: Input| {
    static WORLD: OnceLock<world::CentralWorld> = OnceLock::new();
    let w = WORLD.get_or_init(world::CentralWorld::start);
    let route = ROUTES[input.route as usize % ROUTES.len()];
    let path = route.replace("{}", &input.segment);
    let uri = if input.query.is_empty() {
        path
    } else {
        format!("{path}?{}", input.query)
    };
    let mut req = axum::http::Request::builder()
        .method(if input.post { "POST" } else { "GET" })
        .uri(&uri)
        .header("host", "127.0.0.1");
    req = match input.auth % 4 {
        1 => req.header("authorization", &w.basic),
        2 => req.header("authorization", &w.bearer),
        3 => req.header("cookie", &w.cookie),
        _ => req,
    };
    let mut body = input.body;
    req = match input.content_type % 4 {
        1 => req.header("content-type", "application/json"),
        2 => {
            if input.csrf {
                body.extend_from_slice(format!("&csrf={}", w.csrf).as_bytes());
            }
            req.header("content-type", "application/x-www-form-urlencoded")
        }
        3 => req.header("content-type", "text/plain"),
        _ => req,
    };
    // A URI the HTTP layer itself refuses never reaches the router.
    let Ok(mut req) = req.body(axum::body::Body::from(body)) else {
        return;
    };
    // What the real server puts on every request (the client's address).
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))));
    let status = w.rt.block_on(async {
        let resp = w.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let _ = axum::body::to_bytes(resp.into_body(), 64 << 20).await;
        status
    });
    assert!(
        status != axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "500 for {} {uri}",
        if input.post { "POST" } else { "GET" }
    );
});
