//! Every status path of `ExternalSystem.CachedCall` (and the errors of
//! `ExternalSystem.Call`) against a real HTTP server that the test controls.

use crate::common;

use common::{build_site, erp};
use sitelink_commons::TrackedOperationStatus::*;
use sitelink_test_support::{FakeHttp, Mode};

const CACHED: &str = r#"ExternalSystem.CachedCall("erp", "postOrder", #{ order: 42 })"#;

#[tokio::test]
async fn immediate_success_is_delivered_and_never_buffered() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let site = build_site(&erp(&fake.url(), 3)).await;
    let id = site.run_ok(CACHED).await;
    let id = id.as_str().unwrap();
    let r = site.record(id).await;
    assert_eq!(r.status, Delivered);
    assert_eq!(r.retry_count, 0);
    // Pending (1) -> Delivered (2): no buffered state in between.
    assert_eq!(r.revision, 2);
    assert!(r.terminal_at_utc.is_some());
    assert_eq!(r.target_summary, "erp.postOrder");
    assert_eq!(r.provenance, "line1/test");
    assert_eq!(site.engine.buffer_len().await.unwrap(), 0);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].idempotency_key.as_deref(), Some(id));
    assert_eq!(reqs[0].body["order"], 42);
    assert_eq!(reqs[0].path, "/orders");
}

#[tokio::test]
async fn permanent_failure_is_returned_to_the_script_and_recorded_failed() {
    let fake = FakeHttp::start(Mode::BadRequest).await;
    let site = build_site(&erp(&fake.url(), 3)).await;
    let run = site.run(CACHED).await;
    let err = run.unwrap_err().to_string();
    assert!(
        err.contains("failed permanently") && err.contains("HTTP 400"),
        "{err}"
    );
    // The id was handed out (in the error) and its row says Failed.
    let ids = match site
        .run(&format!("try {{ {CACHED} }} catch (e) {{ e }}"))
        .await
    {
        Ok(run) => run.tracked_operation_ids,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(ids.len(), 1);
    let r = site.record(&ids[0].to_string()).await;
    assert_eq!(r.status, Failed);
    assert_eq!(r.retry_count, 0);
    assert!(r.last_error.unwrap().contains("400"));
    assert_eq!(site.engine.buffer_len().await.unwrap(), 0);
}

#[tokio::test]
async fn transient_failure_buffers_then_retrying_then_delivered() {
    let fake = FakeHttp::start(Mode::Unavailable).await;
    let site = build_site(&erp(&fake.url(), 5)).await;
    let id = site.run_ok(CACHED).await.as_str().unwrap().to_owned();
    let r = site.record(&id).await;
    assert_eq!(r.status, Pending);
    assert!(r.last_error.as_deref().unwrap().contains("503"));
    assert_eq!(site.engine.buffer_len().await.unwrap(), 1);

    let pass = site.retry_once().await;
    assert_eq!(pass.retrying, 1);
    let r = site.record(&id).await;
    assert_eq!((r.status, r.retry_count), (Retrying, 1));

    fake.set_mode(Mode::Ok).await;
    let pass = site.retry_once().await;
    assert_eq!(pass.delivered, 1);
    let r = site.record(&id).await;
    assert_eq!(
        (r.status, r.retry_count, r.last_error.as_deref()),
        (Delivered, 1, None)
    );
    assert_eq!(site.engine.buffer_len().await.unwrap(), 0);

    let keys = fake.idempotency_keys();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(id.as_str())),
        "{keys:?}"
    );
}

#[tokio::test]
async fn exhausted_retries_park_then_local_retry_delivers_and_discard_discards() {
    let fake = FakeHttp::start(Mode::TooManyRequests).await;
    let mut site = build_site(&erp(&fake.url(), 2)).await;
    let a = site.run_ok(CACHED).await.as_str().unwrap().to_owned();
    let b = site.run_ok(CACHED).await.as_str().unwrap().to_owned();
    // Step the worker until both are parked (their due times differ by the
    // time between the two calls, so a pass may hold one or both).
    sitelink_test_support::eventually(
        std::time::Duration::from_secs(5),
        "both calls parked",
        || async {
            site.retry_pass().await;
            let (ra, rb) = (site.record(&a).await, site.record(&b).await);
            (ra.status == Parked && rb.status == Parked).then_some(())
        },
    )
    .await;
    for id in [&a, &b] {
        let r = site.record(id).await;
        assert_eq!((r.status, r.retry_count), (Parked, 2));
    }
    assert_eq!(site.engine.buffer_len().await.unwrap(), 0);

    // The admin API: retry `a`, discard `b`.
    let (url, cancel, handle) = site.start();
    let http = reqwest::Client::new();
    let parked: serde_json::Value = http
        .get(format!("{url}/api/v1/operations?status=Parked&limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(parked["items"].as_array().unwrap().len(), 2);
    assert!(parked["next"].is_null());

    fake.set_mode(Mode::Ok).await;
    let resp = http
        .post(format!("{url}/api/v1/operations/{a}/retry"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["outcome"],
        "Applied"
    );
    // The running retry worker is woken and delivers it.
    let delivered = sitelink_test_support::eventually(
        std::time::Duration::from_secs(5),
        "retried call delivered",
        || async {
            let r = site.record(&a).await;
            (r.status == Delivered).then_some(r)
        },
    )
    .await;
    assert_eq!(
        delivered.retry_count, 0,
        "an operator retry gives a fresh budget"
    );

    let resp = http
        .post(format!("{url}/api/v1/operations/{b}/discard"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = site.record(&b).await;
    assert_eq!(r.status, Discarded);
    assert!(r.terminal_at_utc.is_some());

    // Not parked any more: 409; unknown: 404; not an id: 400 naming it.
    let resp = http
        .post(format!("{url}/api/v1/operations/{b}/discard"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["outcome"],
        "NotParked"
    );
    let unknown = sitelink_commons::TrackedOperationId::new();
    let resp = http
        .post(format!("{url}/api/v1/operations/{unknown}/retry"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .get(format!("{url}/api/v1/operations/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("nope"));

    // The record as JSON, in the shape of SPEC §7.
    let rec: serde_json::Value = http
        .get(format!("{url}/api/v1/operations/{a}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rec["tracked_operation_id"], a.as_str());
    assert_eq!(rec["status"], "Delivered");
    assert_eq!(rec["kind"], "ExternalCall");
    assert_eq!(rec["source_site"], "test-site");

    let keys = fake.idempotency_keys();
    let for_a = keys
        .iter()
        .filter(|k| k.as_deref() == Some(a.as_str()))
        .count();
    assert_eq!(
        for_a, 4,
        "immediate + 2 retries + 1 after the operator retry, all with the same key"
    );

    cancel.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn timeouts_and_closed_ports_are_transient() {
    let hang = FakeHttp::start(Mode::Hang).await;
    let site = build_site(&erp(&hang.url(), 3)).await;
    let id = site.run_ok(CACHED).await.as_str().unwrap().to_owned();
    let r = site.record(&id).await;
    assert_eq!(r.status, Pending);
    assert!(
        r.last_error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        r.last_error
    );

    let down = FakeHttp::start(Mode::Down).await;
    let site = build_site(&erp(&down.url(), 3)).await;
    let id = site.run_ok(CACHED).await.as_str().unwrap().to_owned();
    let r = site.record(&id).await;
    assert_eq!(r.status, Pending);
    assert!(
        r.last_error.as_deref().unwrap().contains("cannot connect"),
        "{:?}",
        r.last_error
    );
    // The port opens again: delivered on the next retry.
    down.set_mode(Mode::Ok).await;
    assert_eq!(site.retry_once().await.delivered, 1);
    assert_eq!(down.requests().len(), 1);
}

#[tokio::test]
async fn max_retries_zero_parks_at_once() {
    let fake = FakeHttp::start(Mode::Unavailable).await;
    let site = build_site(&erp(&fake.url(), 0)).await;
    let id = site.run_ok(CACHED).await.as_str().unwrap().to_owned();
    assert_eq!(site.record(&id).await.status, Parked);
}

#[tokio::test]
async fn plain_call_returns_the_response_or_a_clear_error() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let site = build_site(&erp(&fake.url(), 3)).await;
    let r = site
        .run_ok(r#"ExternalSystem.Call("erp", "getOrder", #{ id: "a/1", verbose: true })"#)
        .await;
    assert_eq!(r["status"], 200);
    assert_eq!(r["body"]["ok"], true);
    let req = &fake.requests()[0];
    assert_eq!(req.path, "/orders/a%2F1");
    assert_eq!(req.query.as_deref(), Some("verbose=true"));
    assert_eq!(
        req.idempotency_key, None,
        "plain calls carry no idempotency key"
    );

    fake.set_mode(Mode::NotJson).await;
    let e = site
        .run(r#"ExternalSystem.Call("erp", "getOrder", #{ id: 1 })"#)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not JSON") && e.contains("<html>"), "{e}");

    fake.set_mode(Mode::Huge(10 * 1024 * 1024)).await;
    let e = site
        .run(r#"ExternalSystem.Call("erp", "getOrder", #{ id: 1 })"#)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than the limit of 1048576 bytes"), "{e}");

    fake.set_mode(Mode::Unavailable).await;
    let e = site
        .run(r#"ExternalSystem.Call("erp", "getOrder", #{ id: 1 })"#)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 503"), "{e}");
    // A plain call never makes a tracking row.
    assert!(site.engine.list(None, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_calls_are_clear_errors_and_make_no_row() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let site = build_site(&erp(&fake.url(), 3)).await;
    let delivered = site.run_ok(CACHED).await;
    for (script, expected) in [
        (
            r#"ExternalSystem.CachedCall("nope", "postOrder", #{})"#,
            "unknown external system \"nope\"",
        ),
        (
            r#"ExternalSystem.CachedCall("erp", "nope", #{})"#,
            "external system \"erp\" has no method \"nope\"",
        ),
        (
            r#"ExternalSystem.CachedCall("erp", "getOrder", #{})"#,
            "path parameter \"id\" is missing",
        ),
        (
            r#"ExternalSystem.CachedCall("erp", "postOrder", #{ f: || 1 })"#,
            "cannot be turned into JSON",
        ),
        (
            r#"Tracking.Status("garbage")"#,
            "not a tracked operation id",
        ),
        (
            r#"let x = ExternalSystem.CachedCall("erp", "postOrder", #{ order: 1 }"#,
            "does not compile",
        ),
    ] {
        let e = site.run(script).await.unwrap_err().to_string();
        assert!(e.contains(expected), "{script}: {e}");
    }
    // Only the one good call made a row, and it is untouched.
    let rows = site.engine.list(None, None, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].tracked_operation_id.to_string(),
        delivered.as_str().unwrap()
    );
    assert_eq!(rows[0].status, Delivered);
}

#[tokio::test]
async fn tracking_status_answers_from_the_site() {
    let fake = FakeHttp::start(Mode::Unavailable).await;
    let site = build_site(&erp(&fake.url(), 3)).await;
    let r = site
        .run_ok(&format!(
            r#"let id = {CACHED};
               let s = Tracking.Status(id);
               let unknown = Tracking.Status("{}");
               #{{ id: id, status: s.status, retry_count: s.retry_count, err: s.last_error,
                   created: s.created_at_utc, alias: Notify.Status(id).status, unknown: unknown }}"#,
            sitelink_commons::TrackedOperationId::new()
        ))
        .await;
    assert_eq!(r["status"], "Pending");
    assert_eq!(r["alias"], "Pending");
    assert_eq!(r["retry_count"], 0);
    assert!(r["err"].as_str().unwrap().contains("503"));
    assert!(r["created"].as_str().unwrap().ends_with('Z'));
    assert!(r["unknown"].is_null());
}

#[tokio::test]
async fn every_auth_kind_is_sent() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let url = fake.url();
    let mut fragment = String::new();
    for (name, auth) in [
        ("plain", r#"{ type = "none" }"#),
        (
            "basic",
            r#"{ type = "basic", username = "ops", password = "s3cret" }"#,
        ),
        ("bearer", r#"{ type = "bearer", token = "tok-1" }"#),
        (
            "keyed",
            r#"{ type = "api_key", header = "X-Api-Key", value = "k-2" }"#,
        ),
    ] {
        fragment.push_str(&format!(
            "[external_systems.{name}]\nbase_url = \"{url}\"\nauth = {auth}\nmethods.post = {{ http_method = \"POST\", path = \"/x\" }}\n"
        ));
    }
    let site = build_site(&fragment).await;
    for name in ["plain", "basic", "bearer", "keyed"] {
        site.run_ok(&format!(
            r#"ExternalSystem.CachedCall("{name}", "post", #{{}})"#
        ))
        .await;
    }
    let reqs = fake.requests();
    assert_eq!(reqs[0].authorization, None);
    // base64("ops:s3cret")
    assert_eq!(
        reqs[1].authorization.as_deref(),
        Some("Basic b3BzOnMzY3JldA==")
    );
    assert_eq!(reqs[2].authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!(
        reqs[3].headers.get("x-api-key").map(String::as_str),
        Some("k-2")
    );
}

#[tokio::test]
async fn interval_scripts_run_by_themselves_until_stopped() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tick.rhai"), CACHED).unwrap();
    let fragment = format!(
        "{}\n[[script]]\nname = \"tick\"\nfile = \"tick.rhai\"\ninterval_ms = 20\n",
        erp(&fake.url(), 3)
    );
    let mut site = common::build_site_in(dir, &fragment).await;
    let (_url, cancel, handle) = site.start();
    sitelink_test_support::eventually(
        std::time::Duration::from_secs(5),
        "three scheduled runs",
        || async {
            (site
                .engine
                .list(Some(Delivered), None, 100)
                .await
                .unwrap()
                .len()
                >= 3)
                .then_some(())
        },
    )
    .await;
    cancel.cancel();
    handle.await.unwrap().unwrap();
    // The site stopped cleanly; every scheduled call has its row and its
    // one request, with the script's provenance.
    let after_stop = fake.requests().len();
    let rows = site.engine.list(None, None, 1000).await.unwrap();
    assert_eq!(rows.len(), after_stop);
    assert!(rows.iter().all(|r| r.provenance == "site/tick"));
}
