//! The web UI in-process (docs.rs style: the router driven with `oneshot`,
//! assertions on the HTML): login and sessions, CSRF and Origin checks,
//! role guards, escaping, the states that are hard to reach in a browser
//! (empty lists, a site never seen, very long errors), keyset paging both
//! ways with the filters kept, and the admin pages.

use crate::common;

use std::time::Duration;

use common::*;
use sitelink_central::configuration_database::Role;
use sitelink_commons::{
    unix_ms_to_utc, Kind, SiteName, TrackedOperationId, TrackedOperationStatus,
    TrackedOperationStatus::*, TrackingRecord,
};

const PASSWORD: &str = "correct horse battery";

async fn central_with_users() -> TestCentral {
    let c = spawn_central().await;
    for (name, role) in [
        ("ada", Role::Admin),
        ("dev", Role::Deployment),
        ("vic", Role::Viewer),
    ] {
        sitelink_central::authentication::add_user(&c.db, name, PASSWORD, role)
            .await
            .unwrap();
    }
    c
}

/// A site call row of `site`, created `i` ms after a fixed time.
fn call(
    site: &str,
    i: i64,
    status: TrackedOperationStatus,
    last_error: Option<&str>,
) -> TrackingRecord {
    let created = 1_790_000_000_000 + i;
    TrackingRecord {
        tracked_operation_id: TrackedOperationId::new(),
        source_site: site.into(),
        kind: if i % 2 == 0 {
            Kind::ExternalCall
        } else {
            Kind::DatabaseWrite
        },
        target_summary: format!("erp.postOrder #{i}"),
        status,
        retry_count: 3,
        last_error: last_error.map(str::to_owned),
        provenance: "line1/orders".into(),
        created_at_utc: unix_ms_to_utc(created),
        updated_at_utc: unix_ms_to_utc(created + 1),
        terminal_at_utc: status.is_terminal().then(|| unix_ms_to_utc(created + 1)),
        revision: 2,
        change_seq: 0,
    }
}

async fn ingest(c: &TestCentral, site: &str, rows: &[TrackingRecord]) {
    let site = SiteName::parse(site).unwrap();
    let out = c.db.site_calls().ingest(&site, rows, None).await.unwrap();
    assert_eq!(out.applied, rows.len() as u64);
}

fn assert_security_headers(a: &Answer) {
    let csp = a.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(a.headers["x-content-type-options"], "nosniff");
    assert_eq!(a.headers["referrer-policy"], "same-origin");
}

/// Every script of a page is a file of this origin: none inline, no
/// event-handler attribute, no inline style.
fn assert_no_inline_code(html: &str) {
    for tag in html.split("<script").skip(1) {
        let open = tag.split_once('>').unwrap().0;
        assert!(
            open.contains("src=\"/static/"),
            "inline or foreign script: <script{open}>"
        );
        assert!(
            tag.split_once('>').unwrap().1.starts_with("</script>"),
            "script with a body"
        );
    }
    assert!(
        !html.contains(" onclick=") && !html.contains(" onload=") && !html.contains(" style="),
        "{html}"
    );
}

#[tokio::test]
async fn login_session_and_logout() {
    let c = central_with_users().await;
    let mut p = Pages::new(&c);
    // No session: to the login page, and back to the page after login.
    let a = p.get("/site-calls?status=Parked").await;
    assert_eq!(a.status, 303);
    assert_eq!(a.location(), "/login?next=%2Fsite-calls%3Fstatus%3DParked");
    let form = p.get(a.location()).await;
    assert_eq!(form.status, 200);
    assert_security_headers(&form);
    assert_no_inline_code(&form.body);
    assert_eq!(field(&form.body, "next"), "/site-calls?status=Parked");
    let csrf = field(&form.body, "csrf");
    assert_eq!(csrf.len(), 64);
    // A wrong password: the form again, with a message.
    let wrong = p
        .post(
            "/login",
            &[("name", "dev"), ("password", "nope"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("Wrong user name or password."),
        "{}",
        wrong.body
    );
    let csrf = field(&wrong.body, "csrf");
    let ok = p
        .post(
            "/login",
            &[
                ("name", "dev"),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("next", "/site-calls?status=Parked"),
            ],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location(), "/site-calls?status=Parked");
    let cookie = ok.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("sitelink_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let dash = p.get("/dashboard").await;
    assert_eq!(dash.status, 200);
    assert_security_headers(&dash);
    assert_no_inline_code(&dash.body);
    assert!(dash
        .body
        .contains("dev <span class=\"badge text-bg-secondary\">Deployment</span>"));
    // Logout ends the session: the old cookie is useless.
    let old = p.cookies.clone();
    let out = p.post("/logout", &[("csrf", &p.csrf.clone())]).await;
    assert_eq!(out.status, 303);
    assert!(!p.cookies.contains_key("sitelink_session"));
    p.cookies = old;
    assert_eq!(p.get("/dashboard").await.status, 303);
    // Without a session a page request goes to the login page; an htmx
    // request is told to send the whole page there (HX-Redirect).
    let mut req = Pages::new(&c);
    let a = req.get("/dashboard/live").await;
    assert_eq!(a.status, 303);
    let a = req.get_htmx("/dashboard/live").await;
    assert_eq!(a.status, 401);
    assert_eq!(a.headers["hx-redirect"], "/login?next=%2Fdashboard%2Flive");
}

#[tokio::test]
async fn login_needs_its_form_token_and_this_origin() {
    let c = central_with_users().await;
    let mut p = Pages::new(&c);
    let form = p.get("/login").await;
    let csrf = field(&form.body, "csrf");
    // Another origin: refused before the password is looked at.
    let a = p
        .post_from(
            "/login",
            &[("name", "dev"), ("password", PASSWORD), ("csrf", &csrf)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(a.status, 403);
    // A token other than the cookie's: refused.
    let a = p
        .post(
            "/login",
            &[
                ("name", "dev"),
                ("password", PASSWORD),
                ("csrf", &"0".repeat(64)),
            ],
        )
        .await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("The login form had expired"), "{}", a.body);
    assert!(!p.cookies.contains_key("sitelink_session"));
}

#[tokio::test]
async fn state_changes_need_the_csrf_token_and_this_origin() {
    let c = central_with_users().await;
    register(&c, "plant-north").await;
    let parked = call("plant-north", 1, Parked, Some("503"));
    ingest(&c, "plant-north", std::slice::from_ref(&parked)).await;
    let id = parked.tracked_operation_id;
    let mut p = Pages::new(&c);
    assert_eq!(p.login("dev", PASSWORD).await.status, 303);
    p.get("/dashboard").await;
    let csrf = p.csrf.clone();
    assert_eq!(csrf.len(), 64);
    let path = format!("/site-calls/{id}/retry");
    // No token.
    let a = p.post(&path, &[]).await;
    assert_eq!(a.status, 403);
    assert!(
        a.body.contains("CSRF token is missing or stale"),
        "{}",
        a.body
    );
    // A wrong token.
    assert_eq!(
        p.post(&path, &[("csrf", &"1".repeat(64))]).await.status,
        403
    );
    // The right token from another origin, and with no Origin or Referer.
    let a = p
        .post_from(&path, &[("csrf", &csrf)], Some("http://evil.example"))
        .await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("Origin/Referer check"), "{}", a.body);
    assert_eq!(
        p.post_from(&path, &[("csrf", &csrf)], None).await.status,
        403
    );
    // Nothing of that reached the audit log: no action was attempted.
    assert!(c
        .db
        .audit_log()
        .for_target(&id.to_string(), 10)
        .await
        .unwrap()
        .is_empty());
    // The token as a header (how htmx sends it) is accepted; the site is
    // not connected, which the page says in words.
    let a = p.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(a.status, 303, "{}", a.body);
    let detail = p.get(a.location()).await;
    assert!(
        detail
            .body
            .contains("Site plant-north is not connected; try again when it is."),
        "{}",
        detail.body
    );
    let audit =
        c.db.audit_log()
            .for_target(&id.to_string(), 10)
            .await
            .unwrap();
    assert_eq!(
        (audit[0].user.as_str(), audit[0].outcome.as_str()),
        ("dev", "SiteUnreachable")
    );
}

#[tokio::test]
async fn a_viewer_sees_no_buttons_and_a_direct_post_is_refused() {
    let c = central_with_users().await;
    register(&c, "plant-north").await;
    let parked = call("plant-north", 1, Parked, Some("503"));
    ingest(&c, "plant-north", std::slice::from_ref(&parked)).await;
    let id = parked.tracked_operation_id;
    let mut p = Pages::new(&c);
    p.login("vic", PASSWORD).await;
    let page = p.get(&format!("/site-calls/{id}")).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        attrs(&page.body, "[data-status]", "data-status"),
        ["Parked"]
    );
    assert!(!has(&page.body, "#retry") && !has(&page.body, "#discard"));
    assert_eq!(p.get(&format!("/site-calls/{id}/retry")).await.status, 403);
    let csrf = p.csrf.clone();
    let a = p
        .post(&format!("/site-calls/{id}/discard"), &[("csrf", &csrf)])
        .await;
    assert_eq!(a.status, 403);
    assert!(
        a.body.contains("role Viewer may not retry or discard"),
        "{}",
        a.body
    );
    let audit =
        c.db.audit_log()
            .for_target(&id.to_string(), 10)
            .await
            .unwrap();
    assert_eq!(
        (audit[0].user.as_str(), audit[0].outcome.as_str()),
        ("vic", "Forbidden")
    );
    // Admin pages are the Admin's.
    assert_eq!(p.get("/sites").await.status, 403);
    assert_eq!(p.get("/users").await.status, 403);
    // A Deployment user sees the buttons.
    let mut d = Pages::new(&c);
    d.login("dev", PASSWORD).await;
    let page = d.get(&format!("/site-calls/{id}")).await;
    assert!(has(&page.body, "#retry") && has(&page.body, "#discard"));
}

const PAYLOADS: [&str; 3] = [
    "<script>window.pwned=1</script>",
    "\"><img src=x onerror=\"window.pwned=1\">",
    "<a href=\"javascript:window.pwned=1\">click</a>",
];

#[tokio::test]
async fn what_sites_wrote_is_shown_as_text() {
    let c = central_with_users().await;
    register(&c, "plant-north").await;
    let mut row = call("plant-north", 1, Parked, Some(&PAYLOADS.concat()));
    row.target_summary = PAYLOADS[1].into();
    ingest(&c, "plant-north", std::slice::from_ref(&row)).await;
    let mut p = Pages::new(&c);
    p.login("dev", PASSWORD).await;
    for path in [
        "/site-calls".to_owned(),
        format!("/site-calls/{}", row.tracked_operation_id),
    ] {
        let page = p.get(&path).await;
        assert_eq!(page.status, 200);
        for payload in PAYLOADS {
            assert!(
                !page.body.contains(payload),
                "{path} shows {payload} unescaped"
            );
        }
        assert!(
            page.body
                .contains("&#60;script&#62;window.pwned=1&#60;/script&#62;"),
            "{path}"
        );
        assert!(
            !page.body.contains("<img") && !page.body.contains("<a href=\"javascript"),
            "{path}"
        );
        assert_no_inline_code(&page.body);
    }
    // A filter value is escaped too.
    let page = p
        .get(&format!("/site-calls?target={}", url_encode(PAYLOADS[1])))
        .await;
    assert!(!page.body.contains(PAYLOADS[1]));
}

#[tokio::test]
async fn empty_lists_and_a_site_never_seen() {
    let c = central_with_users().await;
    let mut p = Pages::new(&c);
    p.login("ada", PASSWORD).await;
    let dash = p.get("/dashboard").await;
    assert!(has(&dash.body, "#no-sites"), "{}", dash.body);
    assert!(p
        .get("/site-calls")
        .await
        .body
        .contains("No site call matches these filters."));
    assert!(p
        .get("/notifications")
        .await
        .body
        .contains("No notification matches these filters."));
    register(&c, "plant-quiet").await;
    let dash = p.get("/dashboard").await;
    let row = dash.body.split("data-site=\"plant-quiet\"").nth(1).unwrap();
    assert!(row.contains("Offline") && row.contains("never"), "{row}");
    // The per-site view of a known site with no rows: zeros; of an
    // unknown one: 404.
    let one = p.get("/dashboard?site=plant-quiet").await;
    assert_eq!(one.status, 200);
    assert_eq!(p.get("/dashboard?site=nowhere").await.status, 404);
    assert_eq!(p.get("/dashboard?site=bad%20name").await.status, 400);
    // Unknown ids and bad filters: a page naming the problem.
    let a = p
        .get(&format!("/site-calls/{}", TrackedOperationId::new()))
        .await;
    assert_eq!(a.status, 404);
    let a = p.get("/site-calls?status=Lost").await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("Lost"), "{}", a.body);
    let a = p.get("/site-calls?from=yesterday").await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("from must be a UTC time"), "{}", a.body);
    let a = p.get("/site-calls?id=not-an-id").await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("is not a TrackedOperationId"), "{}", a.body);
}

#[tokio::test]
async fn long_errors_fold_and_paging_goes_both_ways_keeping_the_filters() {
    let c = central_with_users().await;
    register(&c, "plant-north").await;
    register(&c, "plant-south").await;
    let long = format!("connection refused\n{}", "x".repeat(3000));
    let rows: Vec<TrackingRecord> = (0..120)
        .map(|i| {
            call(
                "plant-north",
                i,
                if i % 3 == 0 { Failed } else { Parked },
                Some(&long),
            )
        })
        .collect();
    ingest(&c, "plant-north", &rows).await;
    ingest(&c, "plant-south", &[call("plant-south", 500, Parked, None)]).await;
    let mut p = Pages::new(&c);
    p.login("dev", PASSWORD).await;
    // Filtered to one site and Parked: 80 rows, 50 a page, newest first.
    let first = p.get("/site-calls?site=plant-north&status=Parked").await;
    assert_eq!(first.status, 200);
    let ids = |html: &str| attrs(html, "#rows tbody tr", "data-id");
    let page1 = ids(&first.body);
    assert_eq!(page1.len(), 50);
    let mut expected: Vec<&TrackingRecord> = rows.iter().filter(|r| r.status == Parked).collect();
    expected.reverse();
    assert_eq!(page1[0], expected[0].tracked_operation_id.to_string());
    assert!(!has(&first.body, "a#newer"));
    // The long error is one line of 120 characters and an ellipsis.
    assert!(first
        .body
        .contains(&format!("connection refused {}…", "x".repeat(101))));
    // The cell shows the folded text; the whole error only in its tooltip.
    let cell = format!("connection refused {}…", "x".repeat(101));
    let cells = texts(&first.body, "#rows tbody td.fold.small");
    assert_eq!(cells.len(), 50);
    assert!(
        cells.iter().all(|c| *c == cell),
        "every row's error cell is folded"
    );
    let tooltips = attrs(&first.body, "#rows tbody td.fold.small", "title");
    assert!(
        tooltips.iter().all(|t| t.len() > cell.len()),
        "the whole error in the tooltip"
    );
    let older = attrs(&first.body, "a#older", "href").remove(0);
    assert!(
        older.contains("site=plant-north") && older.contains("status=Parked"),
        "{older}"
    );
    let second = p.get(&older).await;
    let page2 = ids(&second.body);
    assert_eq!(page2.len(), 30);
    assert_eq!(page2[0], expected[50].tracked_operation_id.to_string());
    assert!(!has(&second.body, "a#older"));
    let newer = attrs(&second.body, "a#newer", "href").remove(0);
    let back = p.get(&newer).await;
    assert_eq!(ids(&back.body), page1, "Newer returns to the first page");
    assert!(!has(&back.body, "a#newer"));
    // The filter form shows what is applied.
    assert_eq!(
        attrs(&back.body, "select[name=site] option[selected]", "value"),
        ["plant-north"]
    );
    assert_eq!(
        attrs(&back.body, "input[name=status][checked]", "value"),
        ["Parked"]
    );
    // Several statuses at once.
    let both = p
        .get("/site-calls?site=plant-north&status=Parked&status=Failed")
        .await;
    assert!(has(&both.body, "a#older"));
    // The detail page has the whole error.
    let detail = p
        .get(&format!("/site-calls/{}", rows[1].tracked_operation_id))
        .await;
    assert!(detail.body.contains(&"x".repeat(3000)));
    // A pasted id opens its page.
    let a = p
        .get(&format!("/site-calls?id={}", rows[1].tracked_operation_id))
        .await;
    assert_eq!(a.status, 303);
    assert_eq!(
        a.location(),
        format!("/site-calls/{}", rows[1].tracked_operation_id)
    );
}

#[tokio::test]
async fn the_tiles_show_what_the_rest_kpis_say() {
    let c = central_with_users().await;
    register(&c, "plant-north").await;
    let rows: Vec<TrackingRecord> = [Parked, Parked, Failed, Pending, Retrying, Delivered]
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut r = call("plant-north", i as i64, s, None);
            // Recent, so the interval counts them.
            let now = sitelink_commons::now_unix_ms();
            r.created_at_utc = unix_ms_to_utc(now - 1000 * i as i64);
            r.updated_at_utc = r.created_at_utc;
            r.terminal_at_utc = s.is_terminal().then_some(r.created_at_utc);
            r
        })
        .collect();
    ingest(&c, "plant-north", &rows).await;
    let api = Api::new(&c);
    let (status, kpis) = api.get("/api/v1/kpis/site-calls", ("vic", PASSWORD)).await;
    assert_eq!(status, 200);
    let mut p = Pages::new(&c);
    p.login("vic", PASSWORD).await;
    let dash = p.get("/dashboard").await;
    let tile = |label: &str| -> String {
        let t = dash
            .body
            .split(&format!("data-tile=\"{label}\""))
            .nth(1)
            .unwrap();
        t.split("class=\"value\">")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_owned()
    };
    for (label, key) in [
        ("Buffered", "buffered"),
        ("Parked", "parked"),
        ("Failed", "failed_last_interval"),
        ("Delivered", "delivered_last_interval"),
        ("Stuck", "stuck"),
    ] {
        assert_eq!(tile(label), kpis[key].to_string(), "{label}");
    }
    assert_eq!(tile("Parked"), "2");
    // The Parked tile links to Site Calls filtered to Parked.
    let href = dash
        .body
        .split("data-tile=\"Parked\"")
        .next()
        .unwrap()
        .rsplit("href=\"")
        .next()
        .unwrap();
    assert!(href.starts_with("/site-calls?status=Parked"), "{href}");
    // The live part alone (what htmx swaps in) has the same tiles.
    let live = p.get("/dashboard/live").await;
    assert!(live.body.contains("data-tile=\"Parked\"") && !live.body.contains("<html"));
}

#[tokio::test]
async fn disabling_a_user_or_resetting_a_password_ends_their_sessions() {
    let c = central_with_users().await;
    let mut p = Pages::new(&c);
    p.login("dev", PASSWORD).await;
    assert_eq!(p.get("/dashboard").await.status, 200);
    c.db.users().set_disabled("dev", true).await.unwrap();
    assert_eq!(p.get("/dashboard").await.status, 303);
    c.db.users().set_disabled("dev", false).await.unwrap();
    p.login("dev", PASSWORD).await;
    assert_eq!(p.get("/dashboard").await.status, 200);
    sitelink_central::authentication::set_password(&c.db, "dev", "another long password")
        .await
        .unwrap();
    assert_eq!(p.get("/dashboard").await.status, 303);
}

#[tokio::test]
async fn failed_logins_are_throttled_then_the_right_password_works() {
    let c = spawn_central_with("reconcile_interval_seconds = 1\nlogin_max_delay_seconds = 2").await;
    sitelink_central::authentication::add_user(&c.db, "dev", PASSWORD, Role::Deployment)
        .await
        .unwrap();
    let mut p = Pages::new(&c);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(p.login("dev", "wrong password").await.status);
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    let throttled = p.login("dev", PASSWORD).await;
    assert_eq!(throttled.status, 429);
    assert!(
        throttled.body.contains("Too many failed logins"),
        "{}",
        throttled.body
    );
    // After the delay (at most 2 s here) the right password works.
    sitelink_test_support::eventually(Duration::from_secs(10), "login after the delay", || async {
        let mut p = Pages::new(&c);
        let a = p.login("dev", PASSWORD).await;
        (a.status == 303).then_some(())
    })
    .await;
}

#[tokio::test]
async fn admins_add_sites_and_manage_users_and_each_action_is_audited() {
    let c = central_with_users().await;
    let mut p = Pages::new(&c);
    p.login("ada", PASSWORD).await;
    p.get("/sites").await;
    let csrf = p.csrf.clone();
    let added = p
        .post("/sites", &[("csrf", &csrf), ("name", "plant-east")])
        .await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(
        added.body.contains("[central]") && added.body.contains("token = &#34;slk1.plant-east."),
        "{}",
        added.body
    );
    let again = p
        .post("/sites", &[("csrf", &csrf), ("name", "plant-east")])
        .await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("already exists"));
    let bad = p
        .post("/sites", &[("csrf", &csrf), ("name", "no spaces")])
        .await;
    assert_eq!(bad.status, 400);
    let revoked = p.post("/sites/plant-east/revoke", &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status, 303);
    assert!(
        c.db.sites()
            .get("plant-east")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    // Users.
    let a = p
        .post(
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "eve"),
                ("password", "short"),
                ("role", "Viewer"),
            ],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("at least 8 characters"));
    let a = p
        .post(
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "eve"),
                ("password", PASSWORD),
                ("role", "Viewer"),
            ],
        )
        .await;
    assert_eq!(a.status, 303);
    let a = p
        .post(
            "/users/eve/role",
            &[("csrf", &csrf), ("role", "Deployment")],
        )
        .await;
    assert_eq!(a.status, 303);
    assert_eq!(
        c.db.users()
            .credentials("eve")
            .await
            .unwrap()
            .unwrap()
            .user
            .role,
        Role::Deployment
    );
    let issued = p
        .post("/users/eve/token", &[("csrf", &csrf), ("label", "ci")])
        .await;
    assert_eq!(issued.status, 200);
    let token = texts(&issued.body, "#issued-token")
        .into_iter()
        .next()
        .unwrap()
        .to_owned();
    assert!(c.db.users().verify_token(&token).await.unwrap().is_some());
    let a = p
        .post(
            "/users/eve/revoke-token",
            &[("csrf", &csrf), ("label", "ci")],
        )
        .await;
    assert_eq!(a.status, 303);
    assert!(c.db.users().verify_token(&token).await.unwrap().is_none());
    let a = p.post("/users/eve/disable", &[("csrf", &csrf)]).await;
    assert_eq!(a.status, 303);
    assert!(
        !c.db
            .users()
            .credentials("eve")
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    let a = p.post("/users/ada/disable", &[("csrf", &csrf)]).await;
    assert_eq!(a.status, 400, "an admin cannot lock themselves out");
    let log = c.db.audit_log().list(None, 100).await.unwrap();
    let actions: Vec<(&str, &str, &str)> = log
        .iter()
        .rev()
        .map(|e| {
            (
                e.action.as_str(),
                e.tracked_operation_id.as_str(),
                e.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("site add", "plant-east", "Applied"),
            ("site add", "plant-east", "AlreadyExists"),
            ("site revoke", "plant-east", "Applied"),
            ("user add", "eve", "Refused"),
            ("user add", "eve", "Applied"),
            ("user role", "eve", "Applied"),
            ("user token issue", "eve", "Applied"),
            ("user token revoke", "eve", "Applied"),
            ("user disable", "eve", "Applied"),
        ]
    );
}

#[tokio::test]
async fn static_files_are_served_long_lived_and_pages_are_not_cached() {
    let c = central_with_users().await;
    let mut p = Pages::new(&c);
    let login = p.get("/login").await;
    assert_eq!(login.headers["cache-control"], "no-store");
    let css = login
        .body
        .split("href=\"/static/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let a = p.get(&format!("/static/{css}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(a.body.contains("Bootstrap  v5.3.9"));
    assert_eq!(p.get("/static/bootstrap.css").await.status, 404);
    // The REST API's answers carry the same security headers.
    let api = p.get("/api/v1/sites").await;
    assert_eq!(api.status, 401);
    assert_security_headers(&api);
}

/// Sessions on every backend: open, find (role read from `users`), idle
/// expiry, logout, a disabled user's and a reset password's sessions end.
#[tokio::test]
async fn sessions_on_every_backend() {
    for (label, db, pg, _dir) in databases().await {
        sitelink_central::authentication::add_user(&db, "ops", PASSWORD, Role::Viewer)
            .await
            .unwrap();
        let idle = 8 * 3_600_000;
        // Whether `secret` still finds a session.
        let live = |db: &sitelink_central::configuration_database::Database, secret: &str| {
            let (db, secret) = (db.clone(), secret.to_owned());
            async move {
                db.ui_sessions()
                    .find(&secret, idle)
                    .await
                    .unwrap()
                    .is_some()
            }
        };
        let (secret, csrf) = db.ui_sessions().open("ops").await.unwrap();
        let s = db
            .ui_sessions()
            .find(&secret, idle)
            .await
            .unwrap()
            .expect(label);
        assert_eq!(
            (s.user.name.as_str(), s.user.role, s.csrf_token.as_str()),
            ("ops", Role::Viewer, csrf.as_str()),
            "{label}"
        );
        db.users().set_role("ops", Role::Deployment).await.unwrap();
        let s = db.ui_sessions().find(&secret, idle).await.unwrap().unwrap();
        assert_eq!(
            s.user.role,
            Role::Deployment,
            "{label}: the role is read on every request"
        );
        assert!(!live(&db, &"f".repeat(64)).await, "{label}");
        // Unused for longer than the idle timeout: refused, then purged.
        sqlx::query("UPDATE ui_sessions SET last_seen_at_ms = last_seen_at_ms - $1")
            .bind(idle + 1000)
            .execute(db.pool())
            .await
            .unwrap();
        assert!(!live(&db, &secret).await, "{label}");
        assert_eq!(
            db.ui_sessions().purge_idle(idle).await.unwrap(),
            1,
            "{label}"
        );
        // Logout.
        let (secret, _) = db.ui_sessions().open("ops").await.unwrap();
        db.ui_sessions().close(&secret).await.unwrap();
        assert!(!live(&db, &secret).await, "{label}");
        // Disabled, and a reset password.
        let (secret, _) = db.ui_sessions().open("ops").await.unwrap();
        db.users().set_disabled("ops", true).await.unwrap();
        assert!(!live(&db, &secret).await, "{label}");
        db.users().set_disabled("ops", false).await.unwrap();
        assert!(!live(&db, &secret).await, "{label}: disabling deleted it");
        let (secret, _) = db.ui_sessions().open("ops").await.unwrap();
        sitelink_central::authentication::set_password(&db, "ops", "another long password")
            .await
            .unwrap();
        assert!(!live(&db, &secret).await, "{label}");
        cleanup(pg, db).await;
    }
}

/// The pages on a PostgreSQL central: login, several statuses at once, the
/// target filter (LIKE with escaped wildcards), both paging directions.
#[tokio::test]
async fn the_pages_on_postgresql() {
    let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        // fresh_database said why
        return;
    };
    let c = spawn_central_on(&pg.url, "").await;
    sitelink_central::authentication::add_user(&c.db, "dev", PASSWORD, Role::Deployment)
        .await
        .unwrap();
    register(&c, "plant-north").await;
    let mut rows: Vec<TrackingRecord> = (0..60)
        .map(|i| {
            call(
                "plant-north",
                i,
                [Parked, Failed, Delivered][i as usize % 3],
                Some("boom"),
            )
        })
        .collect();
    rows[7].target_summary = "historian 100%_done".into();
    ingest(&c, "plant-north", &rows).await;
    let mut p = Pages::new(&c);
    assert_eq!(p.login("dev", PASSWORD).await.status, 303);
    let both = p
        .get("/site-calls?site=plant-north&status=Parked&status=Failed")
        .await;
    assert_eq!(both.status, 200, "{}", both.body);
    assert_eq!(attrs(&both.body, "#rows tbody tr", "data-id").len(), 40);
    let like = p
        .get(&format!("/site-calls?target={}", url_encode("100%_")))
        .await;
    assert_eq!(
        attrs(&like.body, "#rows tbody tr", "data-id").len(),
        1,
        "% and _ are literal"
    );
    let first = p.get("/site-calls").await;
    assert_eq!(attrs(&first.body, "#rows tbody tr", "data-id").len(), 50);
    let older = attrs(&first.body, "a#older", "href").remove(0);
    let second = p.get(&older).await;
    assert_eq!(attrs(&second.body, "#rows tbody tr", "data-id").len(), 10);
    assert!(p
        .get("/dashboard")
        .await
        .body
        .contains("data-site=\"plant-north\""));
    c.cancel.cancel();
    pg.drop_database().await;
}

/// After login the browser goes only to a path on this origin: a `next`
/// that a browser would read as another host (tab, CR/LF, backslash, `//`,
/// `/\`, an absolute URL), or that cannot go into a header (control
/// characters), lands on `/`, whether it came in the login page's query
/// (encoded) or straight in the form; none is a 500.
#[tokio::test]
async fn a_next_that_leaves_this_origin_lands_on_the_root() {
    let c = central_with_users().await;
    let hostile = [
        "/\t/evil.example",
        "/\t\\evil.example",
        "//evil.example",
        "/\\evil.example",
        "/\\/evil.example",
        "/ /evil.example",
        "/\r\n/evil.example",
        "/site-calls\r\nSet-Cookie: x=1",
        "/site-calls\u{0}",
        "/site-calls\u{7f}",
        "/site-calls\u{1b}[31m",
        "https://evil.example/",
        "http:/evil.example",
        "\\\\evil.example",
        "evil.example",
        "",
    ];
    for next in hostile {
        // Through the login page's query, encoded as a link would carry it.
        let mut p = Pages::new(&c);
        let form = p.get(&format!("/login?next={}", url_encode(next))).await;
        assert_eq!(form.status, 200, "{next:?}");
        let carried = field(&form.body, "next");
        assert_eq!(carried, "/", "{next:?}: the form carries {carried:?}");
        // Straight in the form.
        let csrf = field(&form.body, "csrf");
        let a = p
            .post(
                "/login",
                &[
                    ("name", "dev"),
                    ("password", PASSWORD),
                    ("csrf", &csrf),
                    ("next", next),
                ],
            )
            .await;
        assert_eq!(a.status, 303, "{next:?}: {}", a.body);
        assert_eq!(a.location(), "/", "{next:?}");
    }
    // A path of this origin is kept.
    let mut p = Pages::new(&c);
    let form = p.get("/login?next=%2Fsite-calls%3Fstatus%3DParked").await;
    let csrf = field(&form.body, "csrf");
    let a = p
        .post(
            "/login",
            &[
                ("name", "dev"),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("next", &field(&form.body, "next")),
            ],
        )
        .await;
    assert_eq!(a.location(), "/site-calls?status=Parked");
}

/// A form POST that carries the CSRF token only in the `X-CSRF-Token`
/// header (as a script would send it) is accepted like one with the field;
/// one with neither, or a wrong one, is refused.
#[tokio::test]
async fn the_csrf_token_may_come_in_the_header() {
    let c = central_with_users().await;
    let mut p = Pages::new(&c);
    p.login("ada", PASSWORD).await;
    p.get("/users").await;
    let csrf = p.csrf.clone();
    assert_eq!(csrf.len(), 64);
    let origin = format!("http://{}", p.host);
    for (token, status) in [(None, 403), (Some("0".repeat(64)), 403), (Some(csrf), 303)] {
        let mut req = axum::http::Request::post("/users/dev/disable")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &origin);
        if let Some(t) = &token {
            req = req.header("x-csrf-token", t);
        }
        let a = p.send_raw(req, String::new()).await;
        assert_eq!(a.status, status, "{token:?}: {}", a.body);
    }
}

/// A name or password no account can use is refused before the database,
/// with a 400 that names the rule, on every backend: a NUL in a new user's
/// name or password or in a reset password, a user name in a path with a
/// NUL, and a name that differs from an existing one only by case.
#[tokio::test]
async fn names_and_passwords_no_account_can_use_are_refused_with_the_rule() {
    let mut backends = vec![("sqlite", spawn_central().await, None)];
    if let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await {
        let c = spawn_central_on(&pg.url, "").await;
        backends.push(("postgres", c, Some(pg)));
    }
    for (label, c, pg) in backends {
        sitelink_central::authentication::add_user(&c.db, "ada", PASSWORD, Role::Admin)
            .await
            .unwrap();
        let mut p = Pages::new(&c);
        p.login("ada", PASSWORD).await;
        p.get("/users").await;
        let csrf = p.csrf.clone();
        let add = |name: &'static str, password: &'static str| {
            [
                ("csrf", csrf.clone()),
                ("name", name.into()),
                ("password", password.into()),
                ("role", "Viewer".into()),
            ]
        };
        for (name, password, rule) in [
            ("eve\u{0}", PASSWORD, "invalid user name"),
            ("eve", "correct horse\u{0}battery", "NUL"),
            ("ADA", PASSWORD, "regardless of case"),
            ("Ada", PASSWORD, "regardless of case"),
        ] {
            let form = add(name, password);
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let a = p.post("/users", &form).await;
            assert_eq!(a.status, 400, "{label}: {name:?}/{password:?}: {}", a.body);
            assert!(
                texts(&a.body, "main").concat().contains(rule),
                "{label}: {name:?}: {}",
                a.body
            );
        }
        // A reset to a password with a NUL.
        let a = p
            .post(
                "/users/ada/password",
                &[("csrf", &csrf), ("password", "another long\u{0}password")],
            )
            .await;
        assert_eq!(a.status, 400, "{label}: {}", a.body);
        // A NUL in the user name of a path.
        let a = p.post("/users/ada%00/disable", &[("csrf", &csrf)]).await;
        assert_eq!(a.status, 400, "{label}: {}", a.body);
        assert_eq!(p.get("/users/ada%00").await.status, 400, "{label}");
        // The same for a site name.
        let a = p.post("/sites/a%00/revoke", &[("csrf", &csrf)]).await;
        assert_eq!(a.status, 400, "{label}: {}", a.body);
        assert_eq!(p.get("/sites/a%00/revoke").await.status, 400, "{label}");
        // Nothing was added, and ada still logs in with her password.
        let names: Vec<String> =
            c.db.users()
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.name)
                .collect();
        assert_eq!(names, ["ada"], "{label}");
        let mut again = Pages::new(&c);
        assert_eq!(again.login("ada", PASSWORD).await.status, 303, "{label}");
        if let Some(pg) = pg {
            c.db.pool().close().await;
            pg.drop_database().await;
        }
    }
}
