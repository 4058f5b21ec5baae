//! Who may call the site's local admin API (issue 9 item 5): a foreign
//! Host (DNS rebinding) is refused; a POST needs a JSON content type and no
//! foreign Origin (cross-site forms and no-CORS fetches from a browser on
//! the site's machine); with `[admin] token` every request but `/healthz`
//! needs it, and a non-loopback bind without one does not start.

use std::path::Path;

use sitelink_site::{Site, SiteConfig};
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = r#"Database.Write("plantdb", "INSERT INTO runs(n) VALUES (1)", [])"#;

/// A site with one script (`mark`) that writes a row to a local database,
/// so a test can tell whether a refused request ran it.
async fn site(admin: &str) -> (String, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mark.rhai"), SCRIPT).unwrap();
    let text = format!(
        "[site]\nname = \"s\"\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\n{admin}\n\
         [databases.plantdb]\nurl = \"sqlite://plant.db\"\n\
         init = [\"CREATE TABLE IF NOT EXISTS runs (n INTEGER)\"]\n\
         [[script]]\nname = \"mark\"\nfile = \"mark.rhai\"\n"
    );
    let config = SiteConfig::parse(&text, dir.path()).unwrap();
    let site = Site::build(config).await.unwrap();
    let url = format!("http://{}", site.admin_addr());
    let cancel = CancellationToken::new();
    tokio::spawn(site.run(cancel.clone()));
    (url, cancel, dir)
}

fn runs(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("plant.db")).unwrap();
    c.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test]
async fn host_origin_and_content_type_are_checked() {
    let (url, cancel, dir) = site("").await;
    let http = reqwest::Client::new();
    let port = url.rsplit(':').next().unwrap().to_owned();
    let run = format!("{url}/api/v1/scripts/mark/run");

    // DNS rebinding: the browser sends the attacker's name as Host.
    let r = http
        .get(format!("{url}/api/v1/operations"))
        .header("host", format!("evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("evil.example"));
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = http
            .get(format!("{url}/api/v1/status"))
            .header("host", host.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }

    // A cross-site form (text/plain) and a POST without a content type run
    // nothing.
    let r = http
        .post(&run)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(http.post(&run).send().await.unwrap().status(), 415);
    // A foreign Origin, even with JSON.
    let r = http
        .post(&run)
        .header("content-type", "application/json")
        .header("origin", "http://hmi-portal.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(runs(dir.path()), 0, "no refused request ran the script");

    // The same origin and a JSON content type: it runs.
    let r = http
        .post(&run)
        .header("content-type", "application/json; charset=utf-8")
        .header("origin", format!("http://127.0.0.1:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(runs(dir.path()), 1);
    cancel.cancel();
}

#[tokio::test]
async fn a_configured_token_is_required_on_every_request_but_healthz() {
    let token = "admin-token-0123456789";
    let (url, cancel, dir) = site(&format!("token = \"{token}\"")).await;
    let http = reqwest::Client::new();
    let run = format!("{url}/api/v1/scripts/mark/run");
    let post = |auth: Option<&str>| {
        let mut r = http.post(&run).header("content-type", "application/json");
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some("wrong")).await.unwrap().status(), 401);
    let r = http
        .get(format!("{url}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(runs(dir.path()), 0);
    assert_eq!(post(Some(token)).await.unwrap().status(), 200);
    assert_eq!(runs(dir.path()), 1);
    let r = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "health checks need no token");
    cancel.cancel();
}

#[test]
fn a_non_loopback_bind_needs_a_token() {
    let text = "[site]\nname = \"s\"\ndata_dir = \"d\"\n[admin]\nbind = \"0.0.0.0:8081\"\n";
    let e = SiteConfig::parse(text, Path::new("/tmp"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("admin.token") && e.contains("0.0.0.0:8081"),
        "{e}"
    );
    let with_token =
        format!("{text}token = \"admin-token-0123456789\"\nallowed_hosts = [\"hmi-01.plant\"]\n");
    SiteConfig::parse(&with_token, Path::new("/tmp")).unwrap();
}

/// The admin API's port is bounded like central's: a connection that never
/// completes its request headers is closed after 5 s.
#[tokio::test]
async fn an_unfinished_request_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (url, cancel, _dir) = site("").await;
    let addr = url.trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match partial.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after 10 s");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(4),
        "closed after {took:?}"
    );
    cancel.cancel();
}

/// Every error the admin API answers is the JSON error body with the
/// status that says what was wrong: a method a route does not take is 405
/// (not 415: only a POST has a body), an unknown path 404, and a 401 says
/// how to authenticate.
#[tokio::test]
async fn errors_are_json_with_the_status_that_fits() {
    let token = "admin-token-0123456789";
    let (url, cancel, _dir) = site(&format!("token = \"{token}\"")).await;
    let http = reqwest::Client::new();
    for (method, path, status) in [
        (reqwest::Method::DELETE, "/api/v1/operations", 405),
        (reqwest::Method::PUT, "/api/v1/operations", 405),
        (reqwest::Method::GET, "/api/v1/scripts/mark/run", 405),
        (reqwest::Method::GET, "/api/v1/nothing-here", 404),
    ] {
        let r = http
            .request(method.clone(), format!("{url}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    let r = http
        .get(format!("{url}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"sitelink-site\""
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    cancel.cancel();
}

/// Issue 20 item 1: 300 slow requests from one address leave the admin
/// port to another address, and each is closed within the deadline (5 s).
/// No admin route reads a body, so a slow body is answered at once and its
/// connection closed (hyper cannot read on after an unfinished body); slow
/// headers are held until the deadline, at most 16 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_from_one_address_leave_the_port_to_others() {
    use sitelink_test_support::flood::{slow_bodies, SlowBody};
    use std::time::{Duration, Instant};
    let (url, cancel, dir) = site("").await;
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let limit = Duration::from_secs(8);
    let from = std::net::Ipv4Addr::LOCALHOST;
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let status = format!("{url}/api/v1/status");

    // Slow bodies: each answered (or refused) and closed at once.
    let body = format!(
        "POST /api/v1/scripts/mark/run HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    let readers = slow_bodies(addr, from, 300, &body, limit).await;
    assert_eq!(readers.len(), 300, "every slow connection was made");
    assert_eq!(other.get(&status).send().await.unwrap().status(), 200);
    let mut ran = 0;
    for r in readers {
        let SlowBody { answer, .. } = r.await.unwrap();
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            ran += 1;
        }
    }
    assert!(ran >= 1);
    assert_eq!(runs(dir.path()), ran, "a script runs only when answered");

    // Slow headers: held to the deadline, 16 from one address at most, so
    // another address is answered meanwhile.
    let headers = format!("GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    let readers = slow_bodies(addr, from, 300, &headers, limit).await;
    assert_eq!(readers.len(), 300, "every slow connection was made");
    assert_eq!(other.get(&status).send().await.unwrap().status(), 200);
    let answered = Instant::now();
    let mut held = 0;
    for r in readers {
        let SlowBody {
            opened,
            closed,
            answer,
        } = r.await.unwrap();
        assert_eq!(answer, "", "slow headers are never answered");
        // Held to the 5 s deadline (a refused one closes at once).
        if closed.duration_since(opened) >= Duration::from_millis(2500) {
            assert!(
                closed > answered,
                "held, and closed before the other address's answer"
            );
            held += 1;
        }
    }
    assert!((1..=16).contains(&held), "{held} held");
    cancel.cancel();
}
