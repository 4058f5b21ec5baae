//! Replay on recovery (issue 21 item 5): a site whose ERP is configured
//! with `replay_parked_on_recovery` replays that target's parked calls at
//! the configured pace once an attempt succeeds again, recorded as a bulk
//! action whose operator is `site:<name>`; they end Delivered. The replay
//! stops when the target fails again. With the option off, nothing is
//! replayed.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sitelink_central::configuration_database::Role;
use sitelink_commons::TrackedOperationStatus;
use sitelink_test_support::{eventually, FakeHttp, Mode};

const VIEWER: (&str, &str) = ("victor", "victor-password");
const CALL: &str = r#"ExternalSystem.CachedCall("erp", "postOrder", #{ order: 1 })"#;

async fn calls(site: &TestSite, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let run = site.runtime.run_source("one", "line1", CALL).await.unwrap();
        ids.push(run.tracked_operation_ids[0].to_string());
    }
    ids
}

async fn statuses_at_central(api: &Api, ids: &[String], want: &str) -> bool {
    for id in ids {
        let (_, v) = api.get(&format!("/api/v1/site-calls/{id}"), VIEWER).await;
        if v["status"] != want {
            return false;
        }
    }
    true
}

async fn site_action(api: &Api, operator: &str) -> Option<Value> {
    let (_, list) = api.get("/api/v1/bulk-actions", VIEWER).await;
    let item = list["items"]
        .as_array()?
        .iter()
        .find(|a| a["operator"] == operator)?
        .clone();
    let (_, one) = api
        .get(
            &format!("/api/v1/bulk-actions/{}", item["id"].as_str()?),
            VIEWER,
        )
        .await;
    Some(one)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_target_replays_its_parked_calls_at_its_pace_and_stops_when_it_fails_again() {
    let central = spawn_central().await;
    sitelink_central::authentication::add_user(&central.db, VIEWER.0, VIEWER.1, Role::Viewer)
        .await
        .unwrap();
    let api = Api::new(&central);
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let mut sites = Vec::new();
    for (name, replay) in [
        (
            "north",
            "replay_parked_on_recovery = { at_once = 2, per_minute = 120 }",
        ),
        (
            "east",
            "replay_parked_on_recovery = { at_once = 1, per_minute = 1 }",
        ),
        ("south", ""),
    ] {
        let token = register(&central, name).await;
        let site = spawn_site_full(name, &token, &[central.link], &erp.url(), 1, "", replay).await;
        sites.push(site);
    }
    let (north, east, south) = (&sites[0], &sites[1], &sites[2]);
    let parked_north = calls(north, 6).await;
    let parked_east = calls(east, 3).await;
    let parked_south = calls(south, 4).await;
    for ids in [&parked_north, &parked_east, &parked_south] {
        eventually(Duration::from_secs(15), "parked at central", || async {
            statuses_at_central(&api, ids, "Parked").await.then_some(())
        })
        .await;
    }

    // The ERP is back; each site's next call succeeds.
    erp.set_mode(Mode::Ok).await;
    calls(south, 1).await;
    calls(east, 1).await;
    calls(north, 1).await;
    let done = eventually(
        Duration::from_secs(30),
        "north's replay is done",
        || async {
            let a = site_action(&api, "site:north").await?;
            (a["state"] == "Done").then_some(a)
        },
    )
    .await;
    assert_eq!(done["action"], "retry");
    assert_eq!(done["count"], 6, "{done}");
    assert_eq!(done["progress"]["applied"], 6, "{done}");
    assert_eq!(
        done["pace"],
        serde_json::json!({ "at_once": 2, "per_minute": 120 })
    );
    eventually(
        Duration::from_secs(15),
        "north's calls delivered",
        || async {
            statuses_at_central(&api, &parked_north, "Delivered")
                .await
                .then_some(())
        },
    )
    .await;
    // At the configured pace, on the site's clock: at most 2 at once, then
    // 2 a second.
    let times = central
        .db
        .bulk_actions()
        .applied_times(done["id"].as_str().unwrap())
        .await
        .unwrap();
    for j in 0..times.len() {
        for k in j + 1..times.len() {
            let allowed = (k - j + 1).saturating_sub(2) as i64 * 500 - 250;
            assert!(times[k] - times[j] >= allowed, "{times:?}");
        }
    }
    let (_, log) = api.get("/api/v1/audit-log?limit=1000", VIEWER).await;
    assert!(log["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["user"] == "site:north"
            && e["action"] == "bulk retry"
            && e["tracked_operation_id"] == done["id"]));

    // Without the option: nothing replayed (south recovered before north
    // and north's replay is done).
    assert!(site_action(&api, "site:south").await.is_none());
    for row in south.rows().await {
        if parked_south.contains(&row.tracked_operation_id.to_string()) {
            assert_eq!(row.status, TrackedOperationStatus::Parked);
        }
    }

    // East replays one at once, then one a minute; its ERP fails again
    // before the next: the replay stops, the rest stay parked.
    let running = eventually(
        Duration::from_secs(15),
        "east's first call replayed",
        || async {
            let a = site_action(&api, "site:east").await?;
            (a["progress"]["applied"] == 1).then_some(a)
        },
    )
    .await;
    assert_eq!(running["state"], "Running");
    erp.set_mode(Mode::Unavailable).await;
    calls(east, 1).await;
    let stopped = eventually(Duration::from_secs(15), "east's replay stops", || async {
        let a = site_action(&api, "site:east").await?;
        (a["state"] == "Cancelled").then_some(a)
    })
    .await;
    assert_eq!(stopped["cancelled_by"], "site:east");
    assert_eq!(
        (
            stopped["progress"]["applied"].as_u64(),
            stopped["progress"]["cancelled"].as_u64()
        ),
        (Some(1), Some(2)),
        "{stopped}"
    );
}
