//! What the REST API promises an attacker and a careless client (issue 9):
//! NUL bytes and other values no database takes are 4xx before any query;
//! a 500 names a reference, never the database's words; failed logins are
//! throttled and cost an unknown user what they cost a known one; a
//! disabled user and a revoked token stop working at once; every error is
//! the JSON error body; and the smaller rules (cursors, ranges, paging,
//! schemes, headers, `/metrics` token).

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sitelink_central::configuration_database::Role;

const ADMIN: (&str, &str) = ("alice", "alice-password");
const VIEWER: (&str, &str) = ("victor", "victor-password");

async fn users(central: &TestCentral) {
    for (user, role) in [(ADMIN, Role::Admin), (VIEWER, Role::Viewer)] {
        sitelink_central::authentication::add_user(&central.db, user.0, user.1, role)
            .await
            .unwrap();
    }
}

/// Both backends: a NUL byte in a filter, in a cursor or in a Basic user
/// name is a clear 4xx, never a 500 with the database's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_are_refused_before_any_query() {
    let pg = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await;
    let mut urls = vec![("sqlite", "sqlite://central.db".to_owned())];
    if let Some(pg) = &pg {
        urls.push(("postgres", pg.url.clone()));
    }
    for (backend, url) in urls {
        let central = spawn_central_on(&url, "").await;
        users(&central).await;
        let api = Api::new(&central);
        for path in [
            "/api/v1/site-calls?site=a%00b",
            "/api/v1/notifications?site=%00",
            "/api/v1/audit-log?after=%00",
            "/api/v1/kpis/site-calls?site=%00",
            "/api/v1/sites?after=x%00",
        ] {
            let (status, body) = api.get(path, VIEWER).await;
            assert_eq!(status, 400, "{backend} {path}: {body}");
            let message = body["error"].as_str().unwrap();
            assert!(
                message.contains("NUL") || message.contains("after must be"),
                "{backend} {path}: {message}"
            );
        }
        let (status, body) = api.get("/api/v1/sites", ("adm\0in", "whatever")).await;
        assert_eq!(status, 401, "{backend}: {body}");
        assert!(body["error"].as_str().unwrap().contains("NUL"), "{body}");
        central.cancel.cancel();
    }
    if let Some(pg) = pg {
        pg.drop_database().await;
    }
}

/// A 500 carries a short reference and nothing of the database's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_names_a_reference_only() {
    let central = spawn_central().await;
    users(&central).await;
    let (bearer, _) = central
        .db
        .users()
        .issue_token("victor", None)
        .await
        .unwrap();
    let api = Api::new(&central);
    // The database goes away under central's feet.
    central.db.pool().close().await;
    let r = api
        .raw("/api/v1/site-calls", Some(&format!("Bearer {bearer}")))
        .await;
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(
        message.starts_with("internal error (reference "),
        "{message}"
    );
    for leak in ["pool", "sqlx", "closed", "database", "sqlite"] {
        assert!(!message.to_lowercase().contains(leak), "{message}");
    }
}

/// Three wrong passwords are answered at once; then 429 with Retry-After,
/// for the user name from this (failing) address and for the address with
/// any user name; after the delay the right password works. An unknown user is
/// throttled the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_and_the_right_password_works_after_the_delay() {
    let central = spawn_central_with("login_max_delay_seconds = 2").await;
    users(&central).await;
    let api = Api::new(&central);
    for _ in 0..3 {
        assert_eq!(api.get("/api/v1/sites", ("victor", "wrong")).await.0, 401);
    }
    let r = api
        .http
        .get(format!("{}/api/v1/sites", api.base))
        .basic_auth(VIEWER.0, Some(VIEWER.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "even the right password waits");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("try again"),
        "{body}"
    );
    // The address is blocked too (for another user name).
    assert_eq!(api.get("/api/v1/sites", ADMIN).await.0, 429);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, _) = api.get("/api/v1/sites", VIEWER).await;
    assert_eq!(status, 200, "the right password after the delay");

    // The next failures of the address double the delay (it was not reset
    // by a success); the cap is 2 s here.
    assert_eq!(api.get("/api/v1/sites", ("nobody", "x")).await.0, 401);
    let r = api.raw("/api/v1/sites", None).await;
    assert_eq!(r.status(), 401, "no credentials: nothing to throttle");
    let (status, _) = api.get("/api/v1/sites", ("nobody", "x")).await;
    assert_eq!(status, 429, "an unknown user is throttled like a known one");
}

/// Issue 20 item 3: failing at a user name from one address (as an
/// attacker trying `alice` once a minute keeps her name blocked) does not
/// refuse her right password from an address with no failures, through
/// HTTP Basic or the login form. A blocked name is refused only to
/// addresses that failed recently themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_at_a_name_from_one_address_do_not_lock_its_owner_out() {
    let central = spawn_central_with("login_max_delay_seconds = 60").await;
    users(&central).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let sites = format!("{}/api/v1/sites", central.http);
    let basic = |client: &reqwest::Client, (name, password): (&str, &str)| {
        client.get(&sites).basic_auth(name, Some(password)).send()
    };
    // Address A fails at alice until both A and the name are blocked.
    let a = from("127.0.0.1");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            basic(&a, (ADMIN.0, "wrong"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    assert_eq!(
        basic(&a, ADMIN).await.unwrap().status(),
        429,
        "A itself is blocked"
    );

    // Address D failed once, at another name: not blocked itself, but
    // recent, so alice's blocked name is refused to it.
    let d = from("127.0.0.4");
    assert_eq!(basic(&d, ("victor", "wrong")).await.unwrap().status(), 401);
    let r = basic(&d, ADMIN).await.unwrap();
    assert_eq!(r.status(), 429, "the name is blocked for a failing address");
    assert!(r.headers().contains_key("retry-after"));

    // Address B has no failures: alice's right password logs in.
    let b = from("127.0.0.2");
    assert_eq!(basic(&b, ADMIN).await.unwrap().status(), 200);
    // And through the login form from C (B's success cleared the name, so
    // D fails at it until it is blocked again).
    for _ in 0..3 {
        basic(&d, (ADMIN.0, "wrong")).await.unwrap();
    }
    assert_eq!(basic(&d, ADMIN).await.unwrap().status(), 429);
    let c = from("127.0.0.3");
    let form = c
        .get(format!("{}/login", central.http))
        .send()
        .await
        .unwrap();
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = field(&form.text().await.unwrap(), "csrf");
    let r = c
        .post(format!("{}/login", central.http))
        .header("cookie", cookie)
        .header("origin", &central.http)
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", ADMIN.0),
            ("password", ADMIN.1),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the login form from a clean address");
}

/// Disabling a user stops their password and tokens at the next request,
/// even when the password was just verified (and remembered); a revoked
/// token stops at once; tokens are listed with their last use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_users_and_revoked_tokens_stop_at_once() {
    let central = spawn_central().await;
    users(&central).await;
    let api = Api::new(&central);
    let users = central.db.users();
    let (ci, _) = users.issue_token("victor", Some("ci")).await.unwrap();
    let (other, _) = users.issue_token("victor", Some("laptop")).await.unwrap();
    assert!(users.issue_token("victor", Some("ci")).await.is_err());
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(api.get("/api/v1/sites", VIEWER).await.0, 200);
    assert_eq!(
        api.raw("/api/v1/sites", Some(&bearer(&ci))).await.status(),
        200
    );
    let listed = users.tokens("victor").await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["ci", "laptop"]
    );
    assert!(listed[0].last_used_at_utc.is_some());
    assert!(listed[1].last_used_at_utc.is_none());

    users.revoke_token("victor", "ci").await.unwrap();
    assert_eq!(
        api.raw("/api/v1/sites", Some(&bearer(&ci))).await.status(),
        401
    );
    assert_eq!(
        api.raw("/api/v1/sites", Some(&bearer(&other)))
            .await
            .status(),
        200
    );
    assert!(users.revoke_token("victor", "ci").await.is_err());

    users.set_disabled("victor", true).await.unwrap();
    assert_eq!(api.get("/api/v1/sites", VIEWER).await.0, 401);
    assert_eq!(
        api.raw("/api/v1/sites", Some(&bearer(&other)))
            .await
            .status(),
        401
    );
    users.set_disabled("victor", false).await.unwrap();
    assert_eq!(
        api.raw("/api/v1/sites", Some(&bearer(&other)))
            .await
            .status(),
        200
    );
    assert!(users.set_disabled("nobody", true).await.is_err());
}

/// The smaller rules of issue 9 item 8, one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_paging_schemes_and_headers_are_consistent() {
    let central = spawn_central_with("metrics_token = \"metrics-token-0123456789\"").await;
    users(&central).await;
    for name in ["s1", "s2", "s3"] {
        register(&central, name).await;
    }
    let api = Api::new(&central);

    // A bad audit-log cursor is a 400, as a bad site-calls cursor is.
    let (status, body) = api.get("/api/v1/audit-log?after=nonsense", VIEWER).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        api.get("/api/v1/site-calls?after=nonsense", VIEWER).await.0,
        400
    );

    // Sites page with limit and after.
    let (status, page) = api.get("/api/v1/sites?limit=2", VIEWER).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, rest) = api
        .get(&format!("/api/v1/sites?limit=2&after={next}"), VIEWER)
        .await;
    assert_eq!(rest["items"][0]["name"], "s3");
    assert!(rest["next"].is_null());
    assert_eq!(api.get("/api/v1/sites?limit=0", VIEWER).await.0, 400);

    // KPIs: an unknown site is 404, a known one without rows is zeros.
    let (status, body) = api
        .get("/api/v1/kpis/site-calls?site=nowhere", VIEWER)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api
        .get("/api/v1/kpis/notifications?site=nowhere", VIEWER)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.get("/api/v1/kpis/site-calls?site=s1", VIEWER).await;
    assert_eq!((status, body["buffered"].as_i64()), (200, Some(0)));

    // from after to is a 400.
    let (status, body) = api
        .get(
            "/api/v1/site-calls?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            VIEWER,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("from"), "{body}");

    // The kind error names only what is accepted.
    let (status, body) = api.get("/api/v1/site-calls?kind=Bogus", VIEWER).await;
    assert_eq!(status, 400);
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("ExternalCall or DatabaseWrite"),
        "{message}"
    );
    assert!(!message.contains("Notification"), "{message}");

    // Schemes are case-insensitive.
    let basic = |u: &str, p: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    };
    let r = api
        .raw(
            "/api/v1/sites",
            Some(&format!("basic {}", basic(VIEWER.0, VIEWER.1))),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (token, _) = central
        .db
        .users()
        .issue_token("victor", None)
        .await
        .unwrap();
    let r = api
        .raw("/api/v1/sites", Some(&format!("bearer {token}")))
        .await;
    assert_eq!(r.status(), 200);
    // Every API answer: no-store and nosniff.
    for h in ["cache-control", "x-content-type-options"] {
        assert!(r.headers().contains_key(h), "{h}");
    }
    assert_eq!(r.headers()["cache-control"], "no-store");

    // Every error is the JSON error body: unknown path, wrong method, a
    // non-UTF-8 id.
    let auth = format!("Bearer {token}");
    for (method, path, code) in [
        ("GET", "/api/v1/nothing-here", 404),
        ("DELETE", "/api/v1/sites", 405),
        ("GET", "/api/v1/site-calls/%FF%FE", 400),
    ] {
        let r = api
            .http
            .request(method.parse().unwrap(), format!("{}{path}", api.base))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), code, "{method} {path}");
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }

    // Too long a target, too large headers: 414 and 431, as the JSON body.
    let long = format!("/api/v1/site-calls?site={}", "a".repeat(9000));
    let r = api.raw(&long, Some(&auth)).await;
    assert_eq!(r.status(), 414);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("at most"));
    let r = api
        .http
        .get(format!("{}/api/v1/sites", api.base))
        .header("authorization", &auth)
        .header("x-padding", "p".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(r.headers()["content-type"], "application/json");

    // /metrics with a token configured: only with it.
    assert_eq!(api.raw("/metrics", None).await.status(), 401);
    assert_eq!(
        api.raw("/metrics", Some("Bearer wrong")).await.status(),
        401
    );
    let r = api
        .raw("/metrics", Some("Bearer metrics-token-0123456789"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("sitelink_connected_sites"));
    // /healthz stays open (load balancers).
    assert_eq!(api.raw("/healthz", None).await.status(), 200);
}

/// Issue 20 item 5: beyond loopback central does not start without
/// `metrics_token`; on loopback without it, `/metrics` answers only a Host
/// that is an IP address or `localhost` (a rebound name is refused), and
/// with it any Host that brings the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_safe_from_dns_rebinding() {
    let refused = sitelink_central::CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://x\"\nhttp_bind = \"0.0.0.0:8080\"",
        std::path::Path::new("/"),
    )
    .unwrap_err();
    assert!(
        refused.contains("central.metrics_token is required"),
        "{refused}"
    );
    assert!(refused.contains("0.0.0.0:8080"), "{refused}");
    sitelink_central::CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://x\"\nhttp_bind = \"0.0.0.0:8080\"\nmetrics_token = \"metrics-token-0123456789\"",
        std::path::Path::new("/"),
    )
    .unwrap();

    let central = spawn_central().await;
    let http = reqwest::Client::new();
    let port = central.http.rsplit(':').next().unwrap().to_owned();
    let metrics = format!("{}/metrics", central.http);
    let with_host = |host: String| http.get(&metrics).header("host", host).send();
    let r = with_host(format!("evil.example:{port}")).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("evil.example"),
        "{body}"
    );
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(
            with_host(host.clone()).await.unwrap().status(),
            200,
            "{host}"
        );
    }

    let central = spawn_central_with("metrics_token = \"metrics-token-0123456789\"").await;
    let r = http
        .get(format!("{}/metrics", central.http))
        .header("host", "metrics.plant.example")
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a name is fine with the token");
}

/// A value out of its documented range stops the start with the key and
/// the range.
#[test]
fn numeric_keys_out_of_range_are_refused() {
    let base = std::path::Path::new("/tmp");
    for (line, key) in [
        ("retention_days = -1", "central.retention_days"),
        ("kpi_interval_seconds = 0", "central.kpi_interval_seconds"),
        (
            "stuck_threshold_seconds = -5",
            "central.stuck_threshold_seconds",
        ),
        ("command_timeout_ms = 0", "central.command_timeout_ms"),
        (
            "reconcile_interval_seconds = 0",
            "central.reconcile_interval_seconds",
        ),
        ("reconcile_page = 0", "central.reconcile_page"),
        (
            "password_checks_at_once = 0",
            "central.password_checks_at_once",
        ),
        (
            "login_max_delay_seconds = 0",
            "central.login_max_delay_seconds",
        ),
    ] {
        let text = format!("[central]\ndatabase_url = \"sqlite://c.db\"\n{line}\n");
        let e = sitelink_central::CentralConfig::parse(&text, base).unwrap_err();
        assert!(
            e.starts_with(key) && e.contains(" must be from "),
            "{line}: {e}"
        );
    }
    let outbox = |line: &str| {
        format!(
            "[central]\ndatabase_url = \"sqlite://c.db\"\n[notification_outbox]\nsmtp_host = \"h\"\nfrom = \"a@b.example\"\n{line}\n"
        )
    };
    for (line, key) in [
        ("retention_days = 0", "notification_outbox.retention_days"),
        ("smtp_timeout_ms = 0", "notification_outbox.smtp_timeout_ms"),
        (
            "retry = { interval_ms = 0 }",
            "notification_outbox.retry.interval_ms",
        ),
    ] {
        let e = sitelink_central::CentralConfig::parse(&outbox(line), base).unwrap_err();
        assert!(e.starts_with(key), "{line}: {e}");
    }
    // The defaults are all within range.
    sitelink_central::CentralConfig::parse("[central]\ndatabase_url = \"sqlite://c.db\"\n", base)
        .unwrap();
}
