//! The attempt history (issue 21 item 3) end to end: a call that failed
//! three times and then succeeded shows four attempts with their errors
//! and codes, at the site and through central (REST and the detail page,
//! asked of the site over the link); a call that succeeded at once has
//! none; the stored request is shown with secret-looking values masked;
//! an unreachable site is said to be unreachable.

use crate::common;

use std::time::Duration;

use common::*;
use sitelink_central::configuration_database::Role;
use sitelink_test_support::{eventually, FakeHttp, Mode, TcpProxy};

const VIEWER: (&str, &str) = ("victor", "victor-password");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_attempts_of_a_call_that_failed_three_times_are_shown_with_their_errors() {
    let central = spawn_central().await;
    sitelink_central::authentication::add_user(&central.db, VIEWER.0, VIEWER.1, Role::Viewer)
        .await
        .unwrap();
    let api = Api::new(&central);
    // 503, 503, 503, then 200.
    let erp = FakeHttp::start(Mode::SucceedEvery(4)).await;
    let token = register(&central, "north").await;
    let link = TcpProxy::start(central.link).await;
    let north = spawn_site("north", &token, link.addr(), &erp.url(), 5).await;
    let run = north
        .runtime
        .run_source(
            "one",
            "line1",
            r#"ExternalSystem.CachedCall("erp", "postOrder", #{ order: 7, api_token: "s3cr3t", customer: #{ password: "hunter2", name: "ACME" } })"#,
        )
        .await
        .unwrap();
    let id = run.tracked_operation_ids[0];
    eventually(Duration::from_secs(15), "delivered at central", || async {
        let (_, v) = api.get(&format!("/api/v1/site-calls/{id}"), VIEWER).await;
        (v["status"] == "Delivered").then_some(())
    })
    .await;

    // At the site, in the engine.
    let h = north.engine.history(id).await.unwrap().unwrap();
    let outcomes: Vec<(&str, Option<&str>)> = h
        .attempts
        .iter()
        .map(|a| (a.outcome.as_str(), a.code.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("Transient", Some("HTTP 503")),
            ("Transient", Some("HTTP 503")),
            ("Transient", Some("HTTP 503")),
            ("Delivered", None),
        ]
    );
    assert_eq!(
        h.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(h.attempts[..3]
        .iter()
        .all(|a| a.error.as_deref().is_some_and(|e| e.contains("503"))));
    assert!(h.attempts.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert!(h.request.is_none(), "a delivered call's request is gone");

    // Through central: REST and the page.
    let (status, v) = api
        .get(&format!("/api/v1/site-calls/{id}/attempts"), VIEWER)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["site"], "north");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts[0]["code"], "HTTP 503");
    assert_eq!(attempts[3]["outcome"], "Delivered");
    assert!(attempts[0]["at_utc"].as_str().unwrap().ends_with('Z'));
    let mut p = Pages::new(&central);
    p.login(VIEWER.0, VIEWER.1).await;
    let page = p.get(&format!("/site-calls/{id}")).await;
    assert_eq!(
        attrs(&page.body, "#history", "hx-get"),
        [format!("/site-calls/{id}/attempts")],
        "the page loads the history after itself"
    );
    let part = p.get_htmx(&format!("/site-calls/{id}/attempts")).await;
    assert_eq!(part.status, 200);
    assert_eq!(
        attrs(&part.body, "#attempts li.attempt", "data-outcome"),
        ["Transient", "Transient", "Transient", "Delivered"]
    );
    assert_eq!(texts(&part.body, ".attempt-code"), ["HTTP 503"; 3]);

    // A call that succeeded at once: no attempts. A parked one: its
    // request, secrets masked.
    erp.set_mode(Mode::Ok).await;
    let at_once = north
        .runtime
        .run_source(
            "one",
            "line1",
            r#"ExternalSystem.CachedCall("erp", "postOrder", #{ order: 8 })"#,
        )
        .await
        .unwrap()
        .tracked_operation_ids[0];
    assert!(north
        .engine
        .history(at_once)
        .await
        .unwrap()
        .unwrap()
        .attempts
        .is_empty());
    erp.set_mode(Mode::Unavailable).await;
    let parked = north
        .runtime
        .run_source(
            "one",
            "line1",
            r#"ExternalSystem.CachedCall("erp", "postOrder", #{ order: 9, api_token: "s3cr3t", customer: #{ password: "hunter2", name: "ACME" } })"#,
        )
        .await
        .unwrap()
        .tracked_operation_ids[0];
    eventually(Duration::from_secs(15), "parked at central", || async {
        let (_, v) = api
            .get(&format!("/api/v1/site-calls/{parked}"), VIEWER)
            .await;
        (v["status"] == "Parked").then_some(())
    })
    .await;
    let (_, v) = api
        .get(&format!("/api/v1/site-calls/{parked}/attempts"), VIEWER)
        .await;
    assert_eq!(
        v["attempts"].as_array().unwrap().len(),
        6,
        "the immediate attempt and 5 retries"
    );
    let request = &v["request"];
    assert_eq!(request["system"], "erp");
    assert_eq!(request["method"], "postOrder");
    assert_eq!(request["params"]["order"], 9);
    assert_eq!(request["params"]["api_token"], "***");
    assert_eq!(request["params"]["customer"]["password"], "***");
    assert_eq!(request["params"]["customer"]["name"], "ACME");
    let part = p.get_htmx(&format!("/site-calls/{parked}/attempts")).await;
    let shown = texts(&part.body, "#request")[0].clone();
    assert!(
        shown.contains("\"***\"") && !shown.contains("hunter2") && !shown.contains("s3cr3t"),
        "{shown}"
    );

    // The site unreachable: said so.
    link.cut();
    eventually(Duration::from_secs(10), "north offline", || async {
        (!central.audit.is_online("north").await).then_some(())
    })
    .await;
    let (status, v) = api
        .get(&format!("/api/v1/site-calls/{id}/attempts"), VIEWER)
        .await;
    assert_eq!(status, 503, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("site north is unreachable"));
    let part = p.get_htmx(&format!("/site-calls/{id}/attempts")).await;
    assert_eq!(part.status, 200);
    assert!(texts(&part.body, "#history-unavailable")[0].contains("unreachable"));
    // An id central does not know: 404.
    let (status, _) = api
        .get(
            "/api/v1/site-calls/0190a0b0-0000-7000-8000-000000000001/attempts",
            VIEWER,
        )
        .await;
    assert_eq!(status, 404);
}
