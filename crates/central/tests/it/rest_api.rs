//! The REST API v1 against a real central with a real site: authentication
//! and roles, sites, site calls with filters and keyset paging, the
//! Retry/Discard relay with its status codes and audit log, KPIs, metrics,
//! and bad input in every filter.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sitelink_central::configuration_database::Role;
use sitelink_test_support::{eventually, FakeHttp, Mode};

const ADMIN: (&str, &str) = ("alice", "alice-password");
const DEPLOY: (&str, &str) = ("dora", "dora-password");
const VIEWER: (&str, &str) = ("victor", "victor-password");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_and_act_on_site_calls() {
    let central = spawn_central().await;
    for (user, role) in [
        (ADMIN, Role::Admin),
        (DEPLOY, Role::Deployment),
        (VIEWER, Role::Viewer),
    ] {
        sitelink_central::authentication::add_user(&central.db, user.0, user.1, role)
            .await
            .unwrap();
    }
    let api = Api::new(&central);
    let fake = FakeHttp::start(Mode::Unavailable).await;
    let token = register(&central, "s1").await;
    let mut site = spawn_site("s1", &token, central.link, &fake.url(), 1).await;
    let ids = site
        .runtime
        .run_source("burst", "line1", BURST)
        .await
        .unwrap()
        .tracked_operation_ids;
    eventually(
        Duration::from_secs(10),
        "five parked calls at central",
        || async {
            let (_, v) = api.get("/api/v1/site-calls?status=Parked", VIEWER).await;
            (v["items"].as_array().map(Vec::len) == Some(5)).then_some(())
        },
    )
    .await;

    // Authentication.
    let r = api
        .http
        .get(format!("{}/api/v1/sites", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(
        api.get("/api/v1/sites", ("victor", "wrong-password"))
            .await
            .0,
        401
    );
    let (bearer, _) = central
        .db
        .users()
        .issue_token("victor", None)
        .await
        .unwrap();
    let r = api
        .http
        .get(format!("{}/api/v1/sites", api.base))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = api
        .http
        .get(format!("{}/api/v1/sites", api.base))
        .bearer_auth("slu1.nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Sites.
    let (status, sites) = api.get("/api/v1/sites", VIEWER).await;
    assert_eq!(status, 200);
    let s1 = &sites["items"][0];
    assert_eq!(
        (s1["name"].as_str(), s1["online"].as_bool()),
        (Some("s1"), Some(true))
    );
    assert!(s1["last_seen_utc"].as_str().unwrap().ends_with('Z'));
    assert!(s1["cursor"].as_u64().is_some() && s1["reconcile_lag"].as_u64().is_some());
    assert!(sites["next"].is_null());

    // Listing: keyset paging, newest first, no row twice.
    let mut seen = Vec::new();
    let mut path = "/api/v1/site-calls?site=s1&kind=ExternalCall&limit=2".to_owned();
    loop {
        let (status, page) = api.get(&path, VIEWER).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["tracked_operation_id"].as_str().unwrap().to_owned());
            assert_eq!(item["kind"], "ExternalCall");
            assert_eq!(item["source_site"], "s1");
        }
        match page["next"].as_str() {
            Some(next) => {
                path = format!("/api/v1/site-calls?site=s1&kind=ExternalCall&limit=2&after={next}")
            }
            None => break,
        }
    }
    let mut expected: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    expected.reverse(); // newest first
    assert_eq!(seen, expected);
    let (_, one) = api
        .get(&format!("/api/v1/site-calls/{}", ids[0]), VIEWER)
        .await;
    assert_eq!(one["status"], "Parked");
    assert_eq!(one["target_summary"], "erp.postOrder");

    // Bad input in every filter: a clear 400, or a safe empty result.
    for (query, expected) in [
        ("status=Exploded", "Exploded"),
        ("kind=Notification", "notifications"),
        ("kind=Bogus", "Bogus"),
        ("from=yesterday", "from must be an RFC 3339 time"),
        ("to=1'%20OR%201=1", "to must be an RFC 3339 time"),
        ("limit=0", "limit must be"),
        (
            "after=1'%3B%20DROP%20TABLE%20site_calls",
            "after: not a page cursor",
        ),
        ("sort=id", "unknown query parameter"),
    ] {
        let (status, body) = api
            .get(&format!("/api/v1/site-calls?{query}"), VIEWER)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{query}: {body}"
        );
    }
    // An injection attempt is not a site name: refused before any query.
    let (status, body) = api
        .get("/api/v1/site-calls?site=s1'%20OR%20'1'%3D'1", VIEWER)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("site: "),
        "{body}"
    );
    assert_eq!(api.get("/api/v1/site-calls/not-an-id", VIEWER).await.0, 400);
    assert_eq!(
        api.get(
            &format!(
                "/api/v1/site-calls/{}",
                sitelink_commons::TrackedOperationId::new()
            ),
            VIEWER
        )
        .await
        .0,
        404
    );

    // KPIs, global with per_site, and for one site.
    let (_, k) = api.get("/api/v1/kpis/site-calls", VIEWER).await;
    assert_eq!(
        (k["parked"].as_i64(), k["buffered"].as_i64()),
        (Some(5), Some(0))
    );
    assert_eq!(k["per_site"]["s1"]["parked"], 5);
    assert_eq!(
        (
            k["interval_seconds"].as_i64(),
            k["stuck_threshold_seconds"].as_i64()
        ),
        (Some(3600), Some(600))
    );
    let (_, k1) = api.get("/api/v1/kpis/site-calls?site=s1", VIEWER).await;
    assert_eq!(k1["parked"], 5);

    // Roles: Viewer may not act.
    let (status, body) = api
        .post(&format!("/api/v1/site-calls/{}/retry", ids[0]), VIEWER)
        .await;
    assert_eq!(status, 403, "{body}");

    // Retry and Discard, relayed; central waits for the site's telemetry.
    fake.set_mode(Mode::Ok).await;
    let (status, body) = api
        .post(&format!("/api/v1/site-calls/{}/retry", ids[0]), DEPLOY)
        .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("Applied")));
    let (status, body) = api
        .post(&format!("/api/v1/site-calls/{}/discard", ids[1]), ADMIN)
        .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("Applied")));
    eventually(
        Duration::from_secs(10),
        "central shows Delivered and Discarded",
        || async {
            let a = api
                .get(&format!("/api/v1/site-calls/{}", ids[0]), VIEWER)
                .await
                .1;
            let b = api
                .get(&format!("/api/v1/site-calls/{}", ids[1]), VIEWER)
                .await
                .1;
            (a["status"] == "Delivered" && b["status"] == "Discarded").then_some(())
        },
    )
    .await;
    let (status, body) = api
        .post(&format!("/api/v1/site-calls/{}/discard", ids[1]), DEPLOY)
        .await;
    assert_eq!((status, body["outcome"].as_str()), (409, Some("NotParked")));
    let unknown = sitelink_commons::TrackedOperationId::new();
    let (status, body) = api
        .post(&format!("/api/v1/site-calls/{unknown}/retry"), DEPLOY)
        .await;
    assert_eq!((status, body["outcome"].as_str()), (404, Some("NotFound")));

    // The site stops: 503 at once, with a message that says so.
    site.stop().await;
    eventually(
        Duration::from_secs(5),
        "central sees the site offline",
        || async { (!central.audit.is_online("s1").await).then_some(()) },
    )
    .await;
    let started = std::time::Instant::now();
    let (status, body) = api
        .post(&format!("/api/v1/site-calls/{}/retry", ids[2]), DEPLOY)
        .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (503, Some("SiteUnreachable"))
    );
    assert!(body["error"].as_str().unwrap().contains("unreachable"));
    // At once: not after waiting out the relay timeout.
    assert!(started.elapsed() < COMMAND_TIMEOUT);
    let (_, sites) = api.get("/api/v1/sites", VIEWER).await;
    assert_eq!(sites["items"][0]["online"], false);

    // Every action is in the audit log: who, which id, outcome.
    let (_, log) = api.get("/api/v1/audit-log", VIEWER).await;
    let entries = log["items"].as_array().unwrap();
    assert_eq!(entries.len(), 6, "{log}");
    assert_eq!(entries[0]["outcome"], "SiteUnreachable");
    assert_eq!(entries[0]["user"], "dora");
    assert_eq!(entries[0]["tracked_operation_id"], ids[2].to_string());
    assert!(entries
        .iter()
        .any(|e| e["user"] == "alice" && e["action"] == "discard" && e["outcome"] == "Applied"));
    // A refused attempt is logged too: who tried what, and that it was
    // refused.
    let refused: Vec<_> = entries.iter().filter(|e| e["user"] == "victor").collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert_eq!(
        (
            refused[0]["action"].as_str(),
            refused[0]["outcome"].as_str()
        ),
        (Some("retry"), Some("Forbidden"))
    );
    assert_eq!(refused[0]["tracked_operation_id"], ids[0].to_string());

    // Metrics and health.
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sitelink_connected_sites 0"), "{metrics}");
    assert!(
        metrics.contains("sitelink_site_calls_parked{site=\"s1\"} 3"),
        "{metrics}"
    );
    assert_eq!(
        api.http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    central.cancel.cancel();
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let central = spawn_central().await;
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", central.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/sites",
        "/api/v1/site-calls",
        "/api/v1/site-calls/{id}",
        "/api/v1/site-calls/{id}/retry",
        "/api/v1/site-calls/{id}/discard",
        "/api/v1/kpis/site-calls",
        "/api/v1/audit-log",
        "/api/v1/notifications",
        "/api/v1/notifications/{id}",
        "/api/v1/notifications/{id}/retry",
        "/api/v1/notifications/{id}/discard",
        "/api/v1/kpis/notifications",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    // The §7 names are in the schemas the handlers serialize.
    let record = &doc["components"]["schemas"]["TrackingRecord"]["properties"];
    for field in [
        "tracked_operation_id",
        "source_site",
        "kind",
        "status",
        "retry_count",
        "last_error",
        "created_at_utc",
    ] {
        assert!(record[field].is_object(), "TrackingRecord.{field}");
    }
    let kpis = &doc["components"]["schemas"]["Kpis"]["properties"];
    for field in [
        "buffered",
        "parked",
        "failed_last_interval",
        "delivered_last_interval",
        "oldest_pending_age_seconds",
        "stuck",
    ] {
        assert!(kpis[field].is_object(), "Kpis.{field}");
    }
    assert!(doc["components"]["securitySchemes"]["basic"].is_object());
    central.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_does_not_answer_gives_504() {
    use sitelink_commons::contracts::v1;
    let central = spawn_central().await;
    sitelink_central::authentication::add_user(&central.db, DEPLOY.0, DEPLOY.1, Role::Deployment)
        .await
        .unwrap();
    let api = Api::new(&central);
    let token = register(&central, "mute").await;
    // A connected site that reports one parked call and then never answers.
    let (tx, mut inbound) = raw_stream(central.link, &token, "mute").await.unwrap();
    let _welcome = inbound.message().await.unwrap();
    let id = sitelink_commons::TrackedOperationId::new();
    let row = v1::CachedCallTelemetry {
        id: id.to_string(),
        source_site: "mute".into(),
        kind: v1::Kind::ExternalCall as i32,
        target_summary: "erp.postOrder".into(),
        status: v1::Status::Parked as i32,
        retry_count: 3,
        last_error: Some("HTTP 503".into()),
        created_at_unix_ms: 1_700_000_000_000,
        updated_at_unix_ms: 1_700_000_000_000,
        terminal_at_unix_ms: None,
        provenance: "i/s".into(),
        revision: 4,
        change_seq: 1,
    };
    let batch = v1::TelemetryBatch {
        from_seq: 0,
        to_seq: 1,
        rows: vec![row],
    };
    tx.send(v1::SiteMessage {
        correlation: 0,
        body: Some(v1::site_message::Body::Telemetry(batch)),
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "the parked call at central",
        || async {
            (api.get(&format!("/api/v1/site-calls/{id}"), DEPLOY).await.0 == 200).then_some(())
        },
    )
    .await;
    // The test central's command timeout is 2 s.
    let (status, body) = api
        .post(&format!("/api/v1/site-calls/{id}/retry"), DEPLOY)
        .await;
    assert_eq!((status, body["outcome"].as_str()), (504, Some("Timeout")));
    central.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_and_act_on_notifications() {
    use sitelink_central::configuration_database::NewNotification;
    use sitelink_test_support::{FakeSmtp, SmtpMode};
    let smtp = FakeSmtp::start(SmtpMode::Down).await;
    let central = spawn_central_with(&format!(
        r#"
[notification_outbox]
smtp_host = "127.0.0.1"
smtp_port = {}
from = "sitelink@plant.example"
smtp_timeout_ms = 1000
retry = {{ max_retries = 0 }}
[notification_lists]
ops = ["ops@plant.example"]
"#,
        smtp.port()
    ))
    .await;
    for (user, role) in [(DEPLOY, Role::Deployment), (VIEWER, Role::Viewer)] {
        sitelink_central::authentication::add_user(&central.db, user.0, user.1, role)
            .await
            .unwrap();
    }
    let api = Api::new(&central);
    let site = sitelink_commons::SiteName::parse("s1").unwrap();
    central.db.sites().add(&site).await.unwrap();
    let id = sitelink_commons::TrackedOperationId::new();
    let to = ["ops@plant.example".to_owned()];
    let n = NewNotification {
        id,
        list: "ops".into(),
        subject: "Line 1 stopped".into(),
        body: "Reason: jam".into(),
        provenance: "line1/alarms".into(),
        created_at_ms: sitelink_commons::now_unix_ms(),
    };
    central
        .db
        .notifications()
        .accept(&site, &n, Ok(&to), sitelink_commons::now_unix_ms())
        .await
        .unwrap();

    // The SMTP server is down and the budget is 0 retries: parked.
    let item = eventually(
        Duration::from_secs(10),
        "the notification parks",
        || async {
            let (_, v) = api
                .get("/api/v1/notifications?status=Parked&site=s1", VIEWER)
                .await;
            v["items"].as_array().and_then(|a| a.first().cloned())
        },
    )
    .await;
    assert_eq!(item["list"], "ops");
    assert_eq!(item["subject"], "Line 1 stopped");
    assert_eq!(item["kind"], "Notification");
    assert!(item.get("body").is_none(), "no body in the list: {item}");
    let (code, detail) = api
        .get(&format!("/api/v1/notifications/{id}"), VIEWER)
        .await;
    assert_eq!(code, 200);
    assert_eq!(detail["body"], "Reason: jam");
    assert_eq!(detail["recipients"][0], "ops@plant.example");
    let (_, k) = api.get("/api/v1/kpis/notifications?site=s1", VIEWER).await;
    assert_eq!(k["parked"], 1, "{k}");

    // Viewer may not act; Deployment may: Retry, then (server back) Delivered.
    let (code, _) = api
        .post(&format!("/api/v1/notifications/{id}/retry"), VIEWER)
        .await;
    assert_eq!(code, 403);
    smtp.set_mode(SmtpMode::Accept).await;
    let (code, answer) = api
        .post(&format!("/api/v1/notifications/{id}/retry"), DEPLOY)
        .await;
    assert_eq!((code, answer["outcome"].as_str()), (200, Some("Applied")));
    eventually(
        Duration::from_secs(10),
        "delivered after the retry",
        || async {
            let (_, v) = api
                .get(&format!("/api/v1/notifications/{id}"), VIEWER)
                .await;
            (v["status"] == "Delivered").then_some(())
        },
    )
    .await;
    let (code, answer) = api
        .post(&format!("/api/v1/notifications/{id}/discard"), DEPLOY)
        .await;
    assert_eq!((code, answer["outcome"].as_str()), (409, Some("NotParked")));
    let unknown = sitelink_commons::TrackedOperationId::new();
    let (code, _) = api
        .post(&format!("/api/v1/notifications/{unknown}/discard"), DEPLOY)
        .await;
    assert_eq!(code, 404);
    let (code, e) = api.get("/api/v1/notifications?status=Lost", VIEWER).await;
    assert_eq!(code, 400, "{e}");

    // Every action is in the audit log; the outbox has its gauges.
    let (_, log) = api.get("/api/v1/audit-log", VIEWER).await;
    let actions: Vec<_> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("notification retry", "Applied"),
        ("notification discard", "NotParked"),
        ("notification discard", "NotFound"),
    ] {
        assert!(
            actions.contains(&(want.0.into(), want.1.into())),
            "{actions:?}"
        );
    }
    let metrics = reqwest::get(format!("{}/metrics", central.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sitelink_notifications_delivered_last_interval{site=\"s1\"} 1"),
        "{metrics}"
    );
    central.cancel.cancel();
}
