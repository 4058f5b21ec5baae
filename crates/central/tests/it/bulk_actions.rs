//! Bulk actions (issue 21 item 2) against a real central and real sites:
//! the preview is what is applied, the set is frozen at confirmation, the
//! pace holds on the site's own timestamps, an offline site's part waits
//! and completes after it reconnects, every call is accounted for once,
//! cancel stops it, Viewers may not start or cancel, and the audit log has
//! one entry per action.

use crate::common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use serde_json::{json, Value};
use sitelink_central::configuration_database::Role;
use sitelink_test_support::{eventually, FakeHttp, Mode, TcpProxy};

const DEPLOY: (&str, &str) = ("dora", "dora-password");
const VIEWER: (&str, &str) = ("victor", "victor-password");

async fn users(c: &TestCentral) {
    for (user, role) in [(DEPLOY, Role::Deployment), (VIEWER, Role::Viewer)] {
        sitelink_central::authentication::add_user(&c.db, user.0, user.1, role)
            .await
            .unwrap();
    }
}

/// Runs `n` cached calls on `site` (each parks: the ERP answers 503).
async fn calls(site: &TestSite, n: usize) -> Vec<String> {
    let script = format!(
        r#"let ids = []; for i in 0..{n} {{ ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{{ order: i }})); }} ids"#
    );
    site.runtime
        .run_source("burst", "line1", &script)
        .await
        .unwrap()
        .tracked_operation_ids
        .iter()
        .map(|i| i.to_string())
        .collect()
}

async fn parked_at_central(api: &Api, site: &str, n: usize) {
    eventually(
        Duration::from_secs(15),
        &format!("{n} parked calls of {site} at central"),
        || async {
            let (_, v) = api
                .get(
                    &format!("/api/v1/site-calls?status=Parked&site={site}&limit=1000"),
                    VIEWER,
                )
                .await;
            (v["items"].as_array().map(Vec::len) == Some(n)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_bulk_retry_takes_its_frozen_set_waits_for_an_offline_site_and_applies_each_call_once(
) {
    let central = spawn_central().await;
    users(&central).await;
    let api = Api::new(&central);
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let north_token = register(&central, "north").await;
    let south_token = register(&central, "south").await;
    let south_link = TcpProxy::start(central.link).await;
    let north = spawn_site("north", &north_token, central.link, &erp.url(), 1).await;
    let south = spawn_site("south", &south_token, south_link.addr(), &erp.url(), 1).await;
    let north_ids = calls(&north, 6).await;
    let south_ids = calls(&south, 3).await;
    parked_at_central(&api, "north", 6).await;
    parked_at_central(&api, "south", 3).await;

    // The preview: the exact count per site and the first rows. A Viewer
    // may look.
    let filter = json!({ "status": ["Parked"] });
    let (status, preview) = api
        .post_json(
            "/api/v1/bulk-actions",
            VIEWER,
            &json!({ "action": "retry", "filter": filter, "dry_run": true }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["count"], 9);
    assert_eq!(preview["per_site"], json!({ "north": 6, "south": 3 }));
    assert_eq!(preview["first"].as_array().unwrap().len(), 9);
    // ... but not start one.
    let start = json!({ "action": "retry", "filter": filter,
        "pace": { "at_once": 2, "per_minute": 60 }, "expect_count": 9 });
    let (status, refused) = api.post_json("/api/v1/bulk-actions", VIEWER, &start).await;
    assert_eq!(status, 403, "{refused}");

    // South's link is down: its part waits.
    south_link.cut();
    eventually(Duration::from_secs(10), "south offline", || async {
        (!central.audit.is_online("south").await).then_some(())
    })
    .await;
    let (status, action) = api.post_json("/api/v1/bulk-actions", DEPLOY, &start).await;
    assert_eq!(status, 201, "{action}");
    let id = action["id"].as_str().unwrap().to_owned();
    assert_eq!(action["count"], 9, "the preview's count is the set's");
    assert_eq!(action["operator"], "dora");
    assert_eq!(action["pace"], json!({ "at_once": 2, "per_minute": 60 }));

    // Calls that park after the confirmation are not in the set.
    let late = calls(&north, 2).await;
    for id_ in &late {
        eventually(
            Duration::from_secs(15),
            "a late call parked at central",
            || async {
                let (_, row) = api.get(&format!("/api/v1/site-calls/{id_}"), VIEWER).await;
                (row["status"] == "Parked").then_some(())
            },
        )
        .await;
    }

    let path = format!("/api/v1/bulk-actions/{id}");
    let north_done = eventually(
        Duration::from_secs(30),
        "north's part applied, south's waiting",
        || async {
            let (_, v) = api.get(&path, VIEWER).await;
            (v["progress"]["applied"] == 6).then_some(v)
        },
    )
    .await;
    assert_eq!(north_done["state"], "Running");
    assert_eq!(
        north_done["progress"]["waiting_for_site"], 3,
        "{north_done}"
    );
    let south_part = north_done["per_site"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["site"] == "south")
        .unwrap()
        .clone();
    assert_eq!(
        (south_part["online"].as_bool(), south_part["open"].as_u64()),
        (Some(false), Some(3))
    );

    // South comes back: its part completes.
    south_link.heal();
    let done = eventually(Duration::from_secs(30), "the action is done", || async {
        let (_, v) = api.get(&path, VIEWER).await;
        (v["state"] == "Done").then_some(v)
    })
    .await;
    let p = &done["progress"];
    assert_eq!(
        (
            p["applied"].as_u64(),
            p["open"].as_u64(),
            p["waiting_for_site"].as_u64()
        ),
        (Some(9), Some(0), Some(0)),
        "{done}"
    );
    assert!(done["finished_at_utc"].as_str().is_some());

    // Every call of the set exactly once, none of the late ones.
    let mut frozen: Vec<String> = north_ids.iter().chain(&south_ids).cloned().collect();
    frozen.sort();
    for id_ in &frozen {
        let took = central.db.bulk_actions().for_call(id_).await.unwrap();
        assert_eq!(took.len(), 1, "{id_}");
        assert_eq!(took[0].outcome.as_deref(), Some("Applied"));
    }
    for id_ in &late {
        assert!(central
            .db
            .bulk_actions()
            .for_call(id_)
            .await
            .unwrap()
            .is_empty());
        let (_, row) = api.get(&format!("/api/v1/site-calls/{id_}"), VIEWER).await;
        assert_eq!(
            row["status"], "Parked",
            "a call parked after the click stays Parked"
        );
    }

    // The pace, on the sites' own clocks: in any stretch of time, at most
    // `at_once` plus one a second (with a tolerance for the link).
    let times = central.db.bulk_actions().applied_times(&id).await.unwrap();
    assert_eq!(times.len(), 9);
    for j in 0..times.len() {
        for k in j + 1..times.len() {
            let allowed = (k - j + 1).saturating_sub(2) as i64 * 1000 - 250;
            assert!(
                times[k] - times[j] >= allowed,
                "calls {j}..={k} applied within {} ms (pace 2, then 60/min): {times:?}",
                times[k] - times[j]
            );
        }
    }

    // One audit-log entry for the whole action.
    let (_, log) = api.get("/api/v1/audit-log?limit=1000", VIEWER).await;
    let entries: Vec<&Value> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "bulk retry")
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "the refused try and the action: {entries:?}"
    );
    let started: Vec<&&Value> = entries
        .iter()
        .filter(|e| e["outcome"] != "Forbidden")
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["tracked_operation_id"], id.as_str());
    assert!(started[0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("started: 9 parked calls"));

    // The list shows it.
    let (_, list) = api.get("/api/v1/bulk-actions", VIEWER).await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert_eq!(list["items"][0]["state"], "Done");
}

async fn applied(api: &Api, id: &str) -> u64 {
    let (_, v) = api.get(&format!("/api/v1/bulk-actions/{id}"), VIEWER).await;
    v["progress"]["applied"].as_u64().unwrap_or(0)
}

/// On every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_an_action_and_bad_requests_name_what_is_wrong() {
    cancel_and_refusals(spawn_central().await).await;
    if let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await {
        let central = spawn_central_on(&pg.url, "reconcile_interval_seconds = 1").await;
        cancel_and_refusals(central).await;
        pg.drop_database().await;
    }
}

async fn cancel_and_refusals(central: TestCentral) {
    users(&central).await;
    let api = Api::new(&central);
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let token = register(&central, "north").await;
    let north = spawn_site("north", &token, central.link, &erp.url(), 1).await;
    let ids = calls(&north, 5).await;
    parked_at_central(&api, "north", 5).await;

    // One at once, then one a minute: one is applied, four wait.
    let (status, action) = api
        .post_json(
            "/api/v1/bulk-actions",
            DEPLOY,
            &json!({ "action": "discard", "filter": { "site": "north" },
                     "pace": { "at_once": 1, "per_minute": 1 } }),
        )
        .await;
    assert_eq!(status, 201, "{action}");
    let id = action["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(15), "one call discarded", || async {
        (applied(&api, &id).await == 1).then_some(())
    })
    .await;
    let cancel = format!("/api/v1/bulk-actions/{id}/cancel");
    let (status, v) = api.post(&cancel, VIEWER).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = api.post(&cancel, DEPLOY).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "Cancelled");
    assert_eq!(v["cancelled_by"], "dora");
    let p = &v["progress"];
    assert_eq!(
        (
            p["applied"].as_u64(),
            p["cancelled"].as_u64(),
            p["open"].as_u64()
        ),
        (Some(1), Some(4), Some(0)),
        "{v}"
    );
    let (status, v) = api.post(&cancel, DEPLOY).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Cancelled"), "{v}");
    // Nothing is open, so nothing more is sent: the four stay parked at
    // the site.
    let mut statuses = BTreeMap::new();
    for row in north.rows().await {
        assert!(ids.contains(&row.tracked_operation_id.to_string()));
        *statuses.entry(row.status.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([("Discarded".into(), 1), ("Parked".into(), 4)])
    );

    // Bad requests.
    for (body, status, says) in [
        (
            json!({ "action": "replay" }),
            400,
            "action must be retry or discard",
        ),
        (
            json!({ "action": "retry", "filter": { "colour": "red" } }),
            400,
            "unknown query parameter \"colour\"",
        ),
        (
            json!({ "action": "retry", "filter": { "limit": "5" } }),
            400,
            "limit is a page parameter",
        ),
        (
            json!({ "action": "retry", "filter": { "status": "Sideways" } }),
            400,
            "Sideways",
        ),
        (
            json!({ "action": "retry", "pace": { "at_once": 0, "per_minute": 5 } }),
            400,
            "pace.at_once must be 1 to",
        ),
        (
            json!({ "action": "retry", "surprise": true }),
            400,
            "unknown field `surprise`",
        ),
        (
            json!({ "action": "retry", "filter": { "site": "nowhere" } }),
            404,
            "no site \"nowhere\"",
        ),
        (
            json!({ "action": "retry", "filter": { "status": ["Failed"] } }),
            422,
            "no parked site call matches",
        ),
        (
            json!({ "action": "retry", "expect_count": 3 }),
            409,
            "matches 4 parked calls now, not the 3 confirmed",
        ),
    ] {
        let (got, v) = api.post_json("/api/v1/bulk-actions", DEPLOY, &body).await;
        assert_eq!(got, status, "{body} -> {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{body} -> {v}");
    }
    let (status, _) = api.get("/api/v1/bulk-actions/not-an-id", VIEWER).await;
    assert_eq!(status, 400);
    let (status, _) = api
        .get(
            "/api/v1/bulk-actions/0190a0b0-0000-7000-8000-000000000001",
            VIEWER,
        )
        .await;
    assert_eq!(status, 404);
}

/// A form's fields as `Pages::post` takes them.
fn pairs(f: &[(String, String)]) -> Vec<(&str, &str)> {
    f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// 101 parked calls of one group at a site that is not connected, and 3
/// of another target (ingested as its telemetry would be).
async fn seed_parked(c: &TestCentral) -> Vec<String> {
    use sitelink_commons::{
        unix_ms_to_utc, Kind, SiteName, TrackedOperationId, TrackedOperationStatus, TrackingRecord,
    };
    let name = SiteName::parse("north").unwrap();
    c.db.sites().add(&name).await.unwrap();
    let rows: Vec<TrackingRecord> = (0..104)
        .map(|i| {
            let at = unix_ms_to_utc(1_790_000_000_000 + i * 1000);
            TrackingRecord {
                tracked_operation_id: TrackedOperationId::new(),
                source_site: "north".into(),
                kind: Kind::ExternalCall,
                target_summary: if i < 101 {
                    "erp.postOrder"
                } else {
                    "erp.postOrderLine"
                }
                .into(),
                status: TrackedOperationStatus::Parked,
                retry_count: 3,
                last_error: Some(format!("HTTP 503 Service Unavailable: request id r{i}")),
                provenance: "line1/orders".into(),
                created_at_utc: at,
                updated_at_utc: at,
                terminal_at_utc: None,
                revision: 4,
                change_seq: 0,
            }
        })
        .collect();
    c.db.site_calls().ingest(&name, &rows, None).await.unwrap();
    rows.iter()
        .map(|r| r.tracked_operation_id.to_string())
        .collect()
}

/// The pages: from the Groups view to the preview of exactly the group's
/// parked calls, the typed count above 100, the action's page with the
/// offline site's part waiting, the call's detail page listing the action,
/// Cancel; a Viewer sees the preview without the form and is refused the
/// POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_preview_confirm_by_typed_count_show_progress_and_cancel() {
    let central = spawn_central().await;
    users(&central).await;
    let ids = seed_parked(&central).await;
    let mut p = Pages::new(&central);
    assert_eq!(p.login(DEPLOY.0, DEPLOY.1).await.status, 303);

    let groups = p.get("/site-calls/groups").await;
    assert_eq!(groups.status, 200);
    let retry_links = attrs(&groups.body, "a.group-retry", "href");
    let counts = texts(&groups.body, "td.group-count");
    let big = counts
        .iter()
        .position(|c| c == "101")
        .expect("the 101 group");
    let preview = p.get(&retry_links[big]).await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_eq!(
        texts(&preview.body, "#bulk-count"),
        ["101"],
        "exactly the group: postOrderLine is not in it"
    );
    assert_eq!(texts(&preview.body, ".bulk-site"), ["north: 101"]);
    assert_eq!(
        texts(&preview.body, "#bulk-first tbody tr").len(),
        10,
        "the first rows"
    );
    assert!(
        has(&preview.body, "input#typed-count"),
        "above 100 the count is typed"
    );
    let csrf = p.csrf.clone();
    let form = |typed: &str| {
        vec![
            ("csrf".to_owned(), csrf.clone()),
            ("action".to_owned(), field(&preview.body, "action")),
            ("filter".to_owned(), field(&preview.body, "filter")),
            ("count".to_owned(), field(&preview.body, "count")),
            ("typed_count".to_owned(), typed.to_owned()),
            ("at_once".to_owned(), "10".to_owned()),
            ("per_minute".to_owned(), "100".to_owned()),
        ]
    };
    let wrong = form("100");
    let refused = p.post("/bulk-actions", &pairs(&wrong)).await;
    assert_eq!(refused.status, 400);
    assert!(texts(&refused.body, "#bulk-error")[0].contains("Type the number of calls, 101"));
    let right = form("101");
    let started = p.post("/bulk-actions", &pairs(&right)).await;
    assert_eq!(started.status, 303, "{}", started.body);
    let page_path = started.location().to_owned();
    assert!(page_path.starts_with("/bulk-actions/") && page_path.ends_with("?started=1"));
    let page = p.get(&page_path).await;
    assert_eq!(page.status, 200);
    assert_eq!(attrs(&page.body, "#bulk-state", "data-state"), ["Running"]);
    assert_eq!(
        texts(&page.body, "#p-waiting"),
        ["101"],
        "north is not connected: its part waits"
    );
    assert!(texts(&page.body, "#bulk-sites tr[data-site=north]")[0].contains("offline"));
    let id = page_path
        .trim_start_matches("/bulk-actions/")
        .trim_end_matches("?started=1")
        .to_owned();
    let part = p.get_htmx(&format!("/bulk-actions/{id}/progress")).await;
    assert_eq!(part.status, 200);
    assert!(
        has(&part.body, "div#bulk[data-refresh-ms]"),
        "refreshed while running"
    );

    // The call's page lists the action; the other target's call none.
    let call = p.get(&format!("/site-calls/{}", ids[0])).await;
    assert_eq!(
        attrs(&call.body, "#call-bulk-actions a", "href"),
        [format!("/bulk-actions/{id}")]
    );
    let other = p.get(&format!("/site-calls/{}", ids[103])).await;
    assert!(!has(&other.body, "#call-bulk-actions"));

    // The Bulk Actions page lists it.
    let list = p.get("/bulk-actions").await;
    assert_eq!(
        attrs(&list.body, "#bulk-actions tr[data-id]", "data-id"),
        [id.as_str()]
    );

    // A Viewer: the preview without the form; the POSTs refused.
    let mut v = Pages::new(&central);
    v.login(VIEWER.0, VIEWER.1).await;
    let seen = v.get(&retry_links[big]).await;
    assert!(has(&seen.body, "#bulk-viewer") && !has(&seen.body, "form#bulk-confirm"));
    let mut as_viewer = right.clone();
    as_viewer[0].1 = v.csrf.clone();
    assert_eq!(
        v.post("/bulk-actions", &pairs(&as_viewer)).await.status,
        403
    );
    let viewer_page = v.get(&format!("/bulk-actions/{id}")).await;
    assert!(!has(&viewer_page.body, "form#bulk-cancel"));
    let csrf = v.csrf.clone();
    assert_eq!(
        v.post(&format!("/bulk-actions/{id}/cancel"), &[("csrf", &csrf)])
            .await
            .status,
        403
    );
    // Without the session's CSRF token, nothing happens.
    assert_eq!(
        p.post(&format!("/bulk-actions/{id}/cancel"), &[("csrf", "forged")])
            .await
            .status,
        403
    );

    // Cancel.
    let csrf = p.csrf.clone();
    let cancelled = p
        .post(&format!("/bulk-actions/{id}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(cancelled.status, 303);
    let page = p.get(cancelled.location()).await;
    assert_eq!(
        attrs(&page.body, "#bulk-state", "data-state"),
        ["Cancelled"]
    );
    assert_eq!(texts(&page.body, "#p-cancelled"), ["101"]);
    assert!(!has(&page.body, "form#bulk-cancel") && !has(&page.body, "div#bulk[data-refresh-ms]"));
}
