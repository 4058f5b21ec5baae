//! Failure groups (issue 21 item 1), on every backend: realistic errors
//! fall into the groups an operator expects (connection refused on
//! different ports, 503s with different request ids, SQL lock timeouts,
//! 400s naming different articles); a group's filter lists exactly its
//! calls; the filters narrow the groups; bad parameters are 400 and an
//! unknown site is 404.

use crate::common;

use common::*;
use serde_json::Value;
use sitelink_central::configuration_database::Role;
use sitelink_commons::{
    unix_ms_to_utc, Kind, SiteName, TrackedOperationId, TrackedOperationStatus,
    TrackedOperationStatus::*, TrackingRecord,
};

const USER: (&str, &str) = ("vic", "correct horse battery");

fn row(
    site: &str,
    kind: Kind,
    target: &str,
    status: TrackedOperationStatus,
    error: Option<String>,
    at: i64,
) -> TrackingRecord {
    let created = 1_790_000_000_000 + at * 1000;
    TrackingRecord {
        tracked_operation_id: TrackedOperationId::new(),
        source_site: site.into(),
        kind,
        target_summary: target.into(),
        status,
        retry_count: 3,
        last_error: error,
        provenance: "line1/orders".into(),
        created_at_utc: unix_ms_to_utc(created),
        updated_at_utc: unix_ms_to_utc(created + 500),
        terminal_at_utc: status.is_terminal().then(|| unix_ms_to_utc(created + 500)),
        revision: 4,
        change_seq: 0,
    }
}

/// North and south's calls after an afternoon of trouble.
fn afternoon() -> Vec<TrackingRecord> {
    use Kind::{DatabaseWrite as Db, ExternalCall as Call};
    let mut rows = Vec::new();
    let refused = |host: &str, port: u16| {
        Some(format!(
            "error sending request for url (http://{host}:{port}/api/orders): connection refused (os error 111)"
        ))
    };
    for (i, port) in [8081, 8082, 9090].into_iter().enumerate() {
        rows.push(row(
            "north",
            Call,
            "erp.postOrder",
            Parked,
            refused("10.0.0.7", port),
            i as i64,
        ));
    }
    for (i, host) in ["10.1.0.7", "10.1.0.8"].into_iter().enumerate() {
        rows.push(row(
            "south",
            Call,
            "erp.postOrder",
            Parked,
            refused(host, 8081),
            10 + i as i64,
        ));
    }
    for (i, id) in [
        "7f3a9c2d81e4",
        "0c44be1f29aa",
        "9d81aa03b7c1",
        "44e0c9d2aa17",
    ]
    .into_iter()
    .enumerate()
    {
        rows.push(row(
            "north",
            Call,
            "erp.postOrder",
            Parked,
            Some(format!("HTTP 503 Service Unavailable: request id {id}")),
            20 + i as i64,
        ));
    }
    for (i, article) in ["X-999", "AB-12", "Q-7"].into_iter().enumerate() {
        rows.push(row(
            "south",
            Call,
            "erp.postOrder",
            Failed,
            Some(format!("HTTP 400 Bad Request: unknown article '{article}'")),
            30 + i as i64,
        ));
    }
    for (i, relation) in [16384, 16421].into_iter().enumerate() {
        rows.push(row(
            "north",
            Db,
            "plantdb",
            Parked,
            Some(format!(
                "SQLSTATE 55P03: canceling statement due to lock timeout on relation {relation}"
            )),
            40 + i as i64,
        ));
    }
    // Not in any group: delivered, still retrying, discarded.
    rows.push(row("north", Call, "erp.postOrder", Delivered, None, 50));
    rows.push(row(
        "north",
        Call,
        "erp.postOrder",
        Retrying,
        refused("10.0.0.7", 1),
        51,
    ));
    rows.push(row(
        "south",
        Call,
        "erp.postOrder",
        Discarded,
        refused("10.1.0.7", 1),
        52,
    ));
    rows
}

/// Registers north and south and ingests [`afternoon`] for each.
async fn seed_afternoon(c: &TestCentral) {
    let rows = afternoon();
    for site in ["north", "south"] {
        let name = SiteName::parse(site).unwrap();
        c.db.sites().add(&name).await.unwrap();
        let mine: Vec<TrackingRecord> = rows
            .iter()
            .filter(|r| r.source_site == site)
            .cloned()
            .collect();
        c.db.site_calls().ingest(&name, &mine, None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_errors_fall_into_the_expected_groups_on_every_backend() {
    let mut backends = vec![("sqlite", spawn_central().await, None)];
    if let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await {
        let c = spawn_central_on(&pg.url, "").await;
        backends.push(("postgres", c, Some(pg)));
    }
    for (label, c, pg) in backends {
        sitelink_central::authentication::add_user(&c.db, USER.0, USER.1, Role::Viewer)
            .await
            .unwrap();
        seed_afternoon(&c).await;
        let api = Api::new(&c);
        let (status, all) = api.get("/api/v1/site-calls/groups", USER).await;
        assert_eq!(status, 200, "{label}: {all}");
        let groups = all["groups"].as_array().unwrap();
        let summary: Vec<(String, u64, Value)> = groups
            .iter()
            .map(|g| {
                (
                    g["fingerprint"].as_str().unwrap().to_owned(),
                    g["count"].as_u64().unwrap(),
                    g["per_site"].clone(),
                )
            })
            .collect();
        let expected = [
            (
                "error sending request for url (http://<addr>/api/orders): connection refused (os error <n>)",
                5,
                serde_json::json!({"north": 3, "south": 2}),
            ),
            (
                "HTTP 503 Service Unavailable: request id <id>",
                4,
                serde_json::json!({"north": 4}),
            ),
            (
                "HTTP 400 Bad Request: unknown article <value>",
                3,
                serde_json::json!({"south": 3}),
            ),
            (
                "SQLSTATE 55P03: canceling statement due to lock timeout on relation <n>",
                2,
                serde_json::json!({"north": 2}),
            ),
        ];
        let expected: Vec<(String, u64, Value)> = expected
            .into_iter()
            .map(|(f, n, s)| (f.to_owned(), n, s))
            .collect();
        assert_eq!(summary, expected, "{label}");
        assert_eq!(all["total_groups"], 4, "{label}");
        let refused = &groups[0];
        assert_eq!(refused["target"], "erp.postOrder");
        assert_eq!(refused["first_seen"], "2026-09-21T14:13:20Z", "{label}");
        assert_eq!(refused["last_seen"], "2026-09-21T14:13:31.5Z", "{label}");
        assert!(
            refused["sample_error"]
                .as_str()
                .unwrap()
                .contains("connection refused"),
            "{label}: {refused}"
        );

        // A group's filter lists exactly its calls.
        for g in groups {
            let query = format!(
                "status=Parked&status=Failed&target={}&fingerprint={}&limit=100",
                url_encode(g["target"].as_str().unwrap()),
                url_encode(g["fingerprint"].as_str().unwrap())
            );
            let (status, listed) = api.get(&format!("/api/v1/site-calls?{query}"), USER).await;
            assert_eq!(status, 200, "{label}: {listed}");
            assert_eq!(
                listed["items"].as_array().unwrap().len() as u64,
                g["count"].as_u64().unwrap(),
                "{label}: {query}"
            );
        }

        // The filters narrow the groups.
        let fingerprints = |v: &Value| -> Vec<String> {
            v["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| format!("{} {}", g["fingerprint"].as_str().unwrap(), g["count"]))
                .collect()
        };
        let (_, failed) = api
            .get("/api/v1/site-calls/groups?status=Failed", USER)
            .await;
        assert_eq!(
            fingerprints(&failed),
            ["HTTP 400 Bad Request: unknown article <value> 3"],
            "{label}"
        );
        let (_, south) = api
            .get("/api/v1/site-calls/groups?site=south&status=Parked", USER)
            .await;
        assert_eq!(
            fingerprints(&south),
            ["error sending request for url (http://<addr>/api/orders): connection refused (os error <n>) 2"],
            "{label}"
        );
        let (_, writes) = api
            .get("/api/v1/site-calls/groups?kind=DatabaseWrite", USER)
            .await;
        assert_eq!(writes["groups"][0]["target"], "plantdb", "{label}");
        assert_eq!(writes["total_groups"], 1, "{label}");
        let (_, top) = api.get("/api/v1/site-calls/groups?limit=1", USER).await;
        assert_eq!(top["groups"].as_array().unwrap().len(), 1);
        assert_eq!(top["total_groups"], 4);

        // Bad parameters, and an unknown site.
        for (query, status, says) in [
            ("status=Delivered", 400, "status must be Parked or Failed"),
            (
                "kind=Notification",
                400,
                "kind must be ExternalCall or DatabaseWrite",
            ),
            (
                "bogus=1",
                400,
                "unknown query parameter \"bogus\" (allowed: status, site, kind, limit)",
            ),
            ("site=nowhere", 404, "no site \"nowhere\""),
            ("limit=0", 400, "limit must be a whole number"),
        ] {
            let (s, body) = api
                .get(&format!("/api/v1/site-calls/groups?{query}"), USER)
                .await;
            assert_eq!(s, status, "{label}: {query}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains(says),
                "{label}: {body}"
            );
        }
        if let Some(pg) = pg {
            c.db.pool().close().await;
            pg.drop_database().await;
        }
    }
}

/// The Groups view shows the same groups as the REST API, and each group's
/// "Show calls" lists exactly its calls on the Site Calls page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_view_shows_the_groups_and_links_to_exactly_their_calls() {
    let c = spawn_central().await;
    sitelink_central::authentication::add_user(&c.db, USER.0, USER.1, Role::Viewer)
        .await
        .unwrap();
    seed_afternoon(&c).await;
    let mut p = Pages::new(&c);
    assert_eq!(p.login(USER.0, USER.1).await.status, 303);
    let list = p.get("/site-calls").await;
    assert_eq!(
        attrs(&list.body, "a#to-groups", "href"),
        ["/site-calls/groups"]
    );

    let page = p.get("/site-calls/groups").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        texts(&page.body, "#groups td.group-count"),
        ["5", "4", "3", "2"]
    );
    assert!(texts(&page.body, "#groups tbody tr")
        .concat()
        .contains("north: 3, south: 2"));
    let links = attrs(&page.body, "#groups a.group-calls", "href");
    for (link, count) in links.iter().zip([5, 4, 3, 2]) {
        let calls = p.get(link).await;
        assert_eq!(calls.status, 200, "{link}");
        assert_eq!(
            attrs(&calls.body, "#rows tbody tr", "data-id").len(),
            count,
            "{link}"
        );
        // The group stays in the form, so filtering on keeps it.
        assert!(
            has(&calls.body, "#f-group input[name=fingerprint]"),
            "{link}"
        );
    }

    // Filters, and what is refused.
    let failed = p.get("/site-calls/groups?status=Failed").await;
    assert_eq!(texts(&failed.body, "#groups td.group-count"), ["3"]);
    let bad = p.get("/site-calls/groups?status=Delivered").await;
    assert_eq!(bad.status, 400);
    assert!(texts(&bad.body, "#filter-error")
        .concat()
        .contains("Parked or Failed"));
    let nowhere = p.get("/site-calls/groups?site=nowhere").await;
    assert_eq!(nowhere.status, 404);
}

/// The Notification Outbox has its groups too: by list and cause, through
/// REST and its page, each linking to exactly its notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_grouped_by_list_and_cause() {
    use sitelink_central::configuration_database::NewNotification;
    let c = spawn_central().await;
    sitelink_central::authentication::add_user(&c.db, USER.0, USER.1, Role::Viewer)
        .await
        .unwrap();
    for site in ["north", "south"] {
        let name = SiteName::parse(site).unwrap();
        c.db.sites().add(&name).await.unwrap();
        for i in 0..3i64 {
            let n = NewNotification {
                id: TrackedOperationId::new(),
                list: "night-shift".into(),
                subject: format!("alarm {i}"),
                body: "b".into(),
                provenance: "line1/alarms".into(),
                created_at_ms: 1_790_000_000_000 + i,
            };
            // Refused at acceptance: Failed, with its reason as last error.
            c.db.notifications()
                .accept(
                    &name,
                    &n,
                    Err(format!(
                        "550 5.1.1 <lead{i}@plant.example>: mailbox unavailable"
                    )),
                    1_790_000_000_000,
                )
                .await
                .unwrap();
        }
    }
    let api = Api::new(&c);
    let (status, v) = api.get("/api/v1/notifications/groups", USER).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total_groups"], 1, "{v}");
    let g = &v["groups"][0];
    assert_eq!(g["target"], "night-shift");
    assert_eq!(g["count"], 6);
    assert_eq!(g["per_site"], serde_json::json!({"north": 3, "south": 3}));
    assert_eq!(
        g["fingerprint"],
        "<n> <n>.<n>.<n> <lead<n>@plant.example>: mailbox unavailable"
    );
    let (status, bad) = api
        .get("/api/v1/notifications/groups?kind=ExternalCall", USER)
        .await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"]
        .as_str()
        .unwrap()
        .contains("(allowed: status, site, limit)"));

    let mut p = Pages::new(&c);
    assert_eq!(p.login(USER.0, USER.1).await.status, 303);
    let page = p.get("/notifications/groups").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(texts(&page.body, "#groups td.group-count"), ["6"]);
    let link = attrs(&page.body, "#groups a.group-calls", "href").remove(0);
    let listed = p.get(&link).await;
    assert_eq!(
        attrs(&listed.body, "#rows tbody tr", "data-id").len(),
        6,
        "{link}"
    );
    let list = p.get("/notifications").await;
    assert_eq!(
        attrs(&list.body, "a#to-groups", "href"),
        ["/notifications/groups"]
    );
}
