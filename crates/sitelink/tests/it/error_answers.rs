//! Issue 20 item 7, walked in one place: every error central's HTTP port
//! and the site's admin API answer carries the JSON error body with the
//! right status, and both word the same mistake the same way. The answers
//! that cannot (cut by the HTTP layer before any handler runs) are the
//! README's list, and this test pins that list too.

use std::time::Duration;

use serde_json::Value;
use sitelink_central::{configuration_database::Role, Central, CentralConfig};
use sitelink_site::{Site, SiteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ADMIN: (&str, &str) = ("admin", "admin-password");
const SITE_TOKEN: &str = "site-admin-token-0123456789";

/// The status and JSON body of a request; panics when the body is not the
/// JSON error body `{"error": "..."}` with a non-empty message.
async fn error_of(r: reqwest::RequestBuilder) -> (u16, String, reqwest::header::HeaderMap) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error field: {body}"))
        .to_owned();
    assert!(!message.is_empty());
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    (status, message, headers)
}

/// A raw HTTP/1.1 exchange: what the server answered, up to its close.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_json_and_worded_alike_at_central_and_the_site() {
    let dir = tempfile::tempdir().unwrap();
    let central_cfg = CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\n",
        dir.path(),
    )
    .unwrap();
    let central = Central::build(central_cfg).await.unwrap();
    sitelink_central::authentication::add_user(central.database(), ADMIN.0, ADMIN.1, Role::Admin)
        .await
        .unwrap();
    let central_addr = central.http_addr();
    let c = format!("http://{central_addr}");
    let cancel = CancellationToken::new();
    tokio::spawn(central.run(cancel.clone()));

    let site_dir = tempfile::tempdir().unwrap();
    let site_cfg = SiteConfig::parse(
        &format!(
            "[site]\nname = \"s\"\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{SITE_TOKEN}\"\n"
        ),
        site_dir.path(),
    )
    .unwrap();
    let site = Site::build(site_cfg).await.unwrap();
    let site_addr = site.admin_addr();
    let s = format!("http://{site_addr}");
    tokio::spawn(site.run(cancel.clone()));

    let http = reqwest::Client::new();
    let central_get = |path: &str| {
        http.get(format!("{c}{path}"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
    };
    let site_req = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{s}{path}"))
            .bearer_auth(SITE_TOKEN)
    };
    let site_get = |path: &str| site_req(reqwest::Method::GET, path);

    // Site admin API: a method a route does not take is 405 with the body.
    let (status, _, _) = error_of(site_req(reqwest::Method::DELETE, "/api/v1/operations")).await;
    assert_eq!(status, 405);
    let (status, _, _) = error_of(site_get("/api/v1/scripts/x/run")).await;
    assert_eq!(status, 405);
    // Its 401 names the scheme to use.
    let (status, _, headers) = error_of(http.get(format!("{s}/api/v1/status"))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let (status, _, headers) = error_of(http.get(format!("{c}/api/v1/sites"))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));

    // Parameters: limit is digits only, at both, in the same words.
    for limit in ["+5", "%205", "5%20", "-1"] {
        let (cs, cm, _) = error_of(central_get(&format!("/api/v1/site-calls?limit={limit}"))).await;
        let (ss, sm, _) = error_of(site_get(&format!("/api/v1/operations?limit={limit}"))).await;
        assert_eq!((cs, ss), (400, 400), "limit={limit}");
        assert!(
            cm.starts_with("limit must be a whole number from 1 to 1000, got"),
            "{cm}"
        );
        assert_eq!(cm, sm, "limit={limit}: central and the site word it alike");
    }
    // An unknown parameter: the same sentence, the allowed list after it.
    let (_, cm, _) = error_of(central_get("/api/v1/site-calls?bogus=1")).await;
    let (_, sm, _) = error_of(site_get("/api/v1/operations?bogus=1")).await;
    assert!(
        cm.starts_with("unknown query parameter \"bogus\" (allowed: "),
        "{cm}"
    );
    assert_eq!(
        sm,
        "unknown query parameter \"bogus\" (allowed: status, limit, after)"
    );
    // An unknown status: one message, no stray space in its list.
    let (_, cm, _) = error_of(central_get("/api/v1/site-calls?status=Bogus")).await;
    let (_, sm, _) = error_of(site_get("/api/v1/operations?status=Bogus")).await;
    let expected = "unknown status \"Bogus\" (expected one of: Pending, Retrying, Delivered, Parked, Failed, Discarded)";
    assert_eq!(cm, expected);
    assert_eq!(sm, expected);
    // An unknown site: 404 for the lists and the KPIs alike.
    for path in [
        "/api/v1/site-calls?site=no-such",
        "/api/v1/notifications?site=no-such",
        "/api/v1/kpis/site-calls?site=no-such",
        "/api/v1/kpis/notifications?site=no-such",
    ] {
        let (status, m, _) = error_of(central_get(path)).await;
        assert_eq!((status, m.as_str()), (404, "no site \"no-such\""), "{path}");
    }

    // Answers below the handlers, as the JSON error body too.
    let (status, _, _) = error_of(http.get(format!("{c}/static/nope.css"))).await;
    assert_eq!(status, 404);
    let (status, _, _) = error_of(http.get(format!("{c}/static/%FF.css"))).await;
    assert_eq!(status, 400);
    let long = "a".repeat(9 * 1024);
    let (status, _, _) = error_of(central_get(&format!("/api/v1/site-calls?target={long}"))).await;
    assert_eq!(status, 414);
    let (status, _, _) = error_of(central_get("/api/v1/nothing-here")).await;
    assert_eq!(status, 404);

    // The README's list of bare answers: the HTTP layer refuses these
    // before any handler (or any place to put a body) exists.
    let huge = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let got = raw(central_addr, huge.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 414"), "{got:?}");
    assert!(got.contains("content-length: 0\r\n"), "{got:?}");
    // Headers over 32 KiB: the JSON 431; over the HTTP layer's buffer
    // (64 KiB), or more than 100 of them: its bare 431.
    let (status, _, _) =
        error_of(central_get("/healthz").header("x-big", "a".repeat(40 * 1024))).await;
    assert_eq!(status, 431);
    let fat = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let got = raw(central_addr, fat.as_bytes()).await;
    assert!(
        got.starts_with("HTTP/1.1 431") && got.contains("content-length: 0\r\n"),
        "{got:?}"
    );
    let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
    let got = raw(
        central_addr,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 431") && got.contains("content-length: 0\r\n"),
        "{got:?}"
    );
    let got = raw(
        central_addr,
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");
    let got = raw(
        central_addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");

    cancel.cancel();
}
