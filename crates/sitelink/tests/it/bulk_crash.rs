//! A bulk action outlives the central node that runs it (issue 21), with
//! real processes: a paced bulk Retry of a site's parked calls is
//! interrupted by a SIGKILL of central (SQLite, restarted on the same
//! file) or of the active node of a two-node PostgreSQL cluster (the
//! standby takes over). It resumes and finishes, and every call of its set
//! is accounted for exactly once: each is `Applied` (the site applies an
//! action to a call at most once and says so when asked again, so an answer
//! lost with the node is not a second retry), and each ends Delivered.

use crate::common;

use std::time::Duration;

use common::{free_port, list_all, start_site, Node, ADMIN_PASSWORD, BIN};
use sitelink_central::configuration_database::Database;
use sitelink_test_support::{eventually, FakeHttp, Mode};

const CALLS: usize = 40;

/// Starts the nodes, registers site `s1` through the first, starts it
/// (its ERP answers 503, so its calls park at once), runs [`CALLS`] calls;
/// returns the site process, its admin URL and the ids.
async fn parked_site(
    dir: &std::path::Path,
    log: &std::path::Path,
    node: &Node,
    links: &[String],
    erp: &FakeHttp,
) -> (tokio::process::Child, String, Vec<String>) {
    let out = std::process::Command::new(BIN)
        .args(&node.args)
        .args(["site", "add", "s1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::fs::write(
        dir.join("park.rhai"),
        format!(
            r#"let ids = []; for i in 0..{CALLS} {{ ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{{ order: i }})); }} ids"#
        ),
    )
    .unwrap();
    let toml = dir.join("s1.toml");
    std::fs::write(
        &toml,
        format!(
            "[site]\nname = \"s1\"\ndata_dir = \"s1-data\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
             [central]\naddresses = [{}]\ntoken = \"{token}\"\nreconnect_max_ms = 300\n\
             [external_systems.erp]\nbase_url = \"{}\"\ntimeout_ms = 1000\n\
             retry = {{ interval_ms = 20, backoff = 1.0, max_interval_ms = 20, max_retries = 0, jitter = 0.0 }}\n\
             methods.postOrder = {{ http_method = \"POST\", path = \"/orders\" }}\n\
             [[script]]\nname = \"park\"\nfile = \"park.rhai\"\n",
            links.join(", "),
            erp.url()
        ),
    )
    .unwrap();
    let (site, url) = start_site(&toml, log).await;
    let run: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/api/v1/scripts/park/run"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = run["tracked_operation_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{run}"))
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), CALLS);
    (site, url, ids)
}

async fn parked_at(http: &reqwest::Client, base: &str) -> Option<usize> {
    let v: serde_json::Value = http
        .get(format!("{base}/api/v1/site-calls?status=Parked&limit=1000"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(v["items"].as_array()?.len())
}

/// Starts a bulk retry of every parked call at 5 at once, then 600 a
/// minute (about 4 s for 40), through `base`'s REST API; its id.
async fn start_bulk(http: &reqwest::Client, base: &str) -> String {
    let r = http
        .post(format!("{base}/api/v1/bulk-actions"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({
            "action": "retry",
            "filter": { "status": ["Parked"] },
            "pace": { "at_once": 5, "per_minute": 600 },
            "expect_count": CALLS,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn progress(http: &reqwest::Client, base: &str, id: &str) -> Option<serde_json::Value> {
    http.get(format!("{base}/api/v1/bulk-actions/{id}"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Every call of the set has exactly one outcome, `Applied`, and ends
/// Delivered at the site.
async fn accounted_once(db: &Database, id: &str, ids: &[String], site_url: &str) {
    let items: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT call_id, outcome FROM bulk_action_items WHERE action_id = $1")
            .bind(id)
            .fetch_all(db.pool())
            .await
            .unwrap();
    let mut got: Vec<&str> = items.iter().map(|(c, _)| c.as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want, "the frozen set is the calls parked at the click");
    for (call, outcome) in &items {
        assert_eq!(outcome.as_deref(), Some("Applied"), "{call}");
    }
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "every call delivered at the site",
        || async {
            let rows = list_all(
                &http,
                &format!("{site_url}/api/v1/operations?limit=500"),
                false,
            )
            .await;
            (rows.len() == CALLS && rows.iter().all(|r| r["status"] == "Delivered")).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_action_resumes_after_central_is_killed_and_applies_each_call_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("processes.log");
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let link = free_port();
    let db_path = dir.path().join("central.db");
    let toml = dir.path().join("central.toml");
    std::fs::write(
        &toml,
        format!(
            "[central]\ndatabase_url = \"sqlite://{}\"\nlink_bind = \"127.0.0.1:{link}\"\nhttp_bind = \"127.0.0.1:0\"\n\
             reconcile_interval_seconds = 1\n",
            db_path.display()
        ),
    )
    .unwrap();
    let mut central = Node {
        name: "central",
        args: vec![
            "central".into(),
            "--config".into(),
            toml.display().to_string(),
        ],
        child: None,
        http: String::new(),
    };
    central.start(&log).await;
    let (_site, site_url, ids) = parked_site(
        dir.path(),
        &log,
        &central,
        &[format!("\"http://127.0.0.1:{link}\"")],
        &erp,
    )
    .await;
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(15),
        "every call parked at central",
        || async { (parked_at(&http, &central.http).await == Some(CALLS)).then_some(()) },
    )
    .await;
    erp.set_mode(Mode::Ok).await;
    let id = start_bulk(&http, &central.http).await;

    // Killed in the middle of it.
    let before = eventually(Duration::from_secs(15), "a part applied", || async {
        let v = progress(&http, &central.http, &id).await?;
        let applied = v["progress"]["applied"].as_u64()?;
        (applied >= 10).then_some(applied)
    })
    .await;
    central.kill().await;
    assert!(
        before < CALLS as u64,
        "killed before the action ended ({before} applied)"
    );
    central.start(&log).await;
    let done = eventually(Duration::from_secs(30), "the action finishes", || async {
        let v = progress(&http, &central.http, &id).await?;
        (v["state"] == "Done").then_some(v)
    })
    .await;
    assert_eq!(done["progress"]["applied"], CALLS, "{done}");
    let db = Database::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    accounted_once(&db, &id, &ids, &site_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_action_resumes_on_the_standby_when_the_active_node_is_killed() {
    let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        return; // fresh_database said why
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("processes.log");
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    for name in ["a", "b"] {
        let link = free_port();
        links.push(format!("\"http://127.0.0.1:{link}\""));
        let toml = dir.path().join(format!("central-{name}.toml"));
        std::fs::write(
            &toml,
            format!(
                "[central]\ndatabase_url = \"{}\"\nlink_bind = \"127.0.0.1:{link}\"\nhttp_bind = \"127.0.0.1:0\"\n\
                 reconcile_interval_seconds = 1\n\
                 [cluster]\nnode_name = \"{name}\"\nlease_ttl_ms = 3000\nrenew_every_ms = 300\nstep_down_after_ms = 1500\nstandby_poll_ms = 200\n",
                pg.url
            ),
        )
        .unwrap();
        nodes.push(Node {
            name,
            args: vec![
                "central".into(),
                "--config".into(),
                toml.display().to_string(),
            ],
            child: None,
            http: String::new(),
        });
    }
    nodes[0].start(&log).await;
    nodes[1].start(&log).await;
    let db = Database::connect(&pg.url).await.unwrap();
    let active = || async {
        let s = sitelink_central::configuration_database::leader_lease::state(db.pool())
            .await
            .unwrap();
        (s.expires_at_ms > s.now_ms).then_some(s.holder).flatten()
    };
    let first = eventually(Duration::from_secs(10), "a node is active", active).await;
    let k = nodes.iter().position(|n| n.name == first).unwrap();
    let (_site, site_url, ids) = parked_site(dir.path(), &log, &nodes[0], &links, &erp).await;
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(20),
        "every call parked at central",
        || async { (parked_at(&http, &nodes[k].http).await == Some(CALLS)).then_some(()) },
    )
    .await;
    erp.set_mode(Mode::Ok).await;
    // Started through the standby: the record is in the shared database.
    let id = start_bulk(&http, &nodes[1 - k].http).await;
    let before = eventually(Duration::from_secs(15), "a part applied", || async {
        let v = progress(&http, &nodes[k].http, &id).await?;
        let applied = v["progress"]["applied"].as_u64()?;
        (applied >= 10).then_some(applied)
    })
    .await;
    nodes[k].kill().await;
    assert!(
        before < CALLS as u64,
        "killed before the action ended ({before} applied)"
    );
    let done = eventually(
        Duration::from_secs(45),
        "the action finishes on the other node",
        || async {
            let v = progress(&http, &nodes[1 - k].http, &id).await?;
            (v["state"] == "Done").then_some(v)
        },
    )
    .await;
    assert_eq!(done["progress"]["applied"], CALLS, "{done}");
    assert_eq!(active().await.as_deref(), Some(nodes[1 - k].name));
    accounted_once(&db, &id, &ids, &site_url).await;
    db.pool().close().await;
    drop(nodes);
    pg.drop_database().await;
}
