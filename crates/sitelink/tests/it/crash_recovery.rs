//! Guarantees 1 and 2 of SPEC §6 against the real binary: `sitelink site`
//! under load (concurrent script runs making cached calls against a flaky
//! server) is killed with SIGKILL at random moments, several times, and
//! restarted. Then: every id a script handed back exists; every request the
//! server received carries an id that has a row; once the server recovers,
//! every row ends Delivered or Parked. Also: SIGTERM stops it cleanly, and a
//! broken config file is a clear error.

use crate::common;

use std::{collections::HashSet, path::Path, time::Duration};

use common::{list_all, sigterm, BIN};
use sitelink_test_support::{eventually, FakeHttp, Mode};
use tokio::process::Command;

async fn all_operations(http: &reqwest::Client, url: &str) -> Vec<serde_json::Value> {
    list_all(http, &format!("{url}/api/v1/operations?limit=1000"), false).await
}

fn write_config(dir: &Path, erp_url: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("burst.rhai"),
        r#"let ids = [];
           for i in 0..5 { ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{ order: i })); }
           ids"#,
    )
    .unwrap();
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[site]
name = "crashy"
data_dir = "data"

[admin]
bind = "127.0.0.1:0"

[external_systems.erp]
base_url = "{erp_url}"
timeout_ms = 2000
retry = {{ interval_ms = 20, backoff = 1.0, max_interval_ms = 20, max_retries = 1000000, jitter = 0.0 }}
methods.postOrder = {{ http_method = "POST", path = "/orders" }}

[[script]]
name = "burst"
file = "burst.rhai"
instance = "line1"
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_id() {
    let fake = FakeHttp::start(Mode::SucceedEvery(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake.url());
    let log = dir.path().join("site.log");
    let http = reqwest::Client::new();
    let handed_out = common::sigkill_rounds(&config, &log, "burst", 4, 300..1500).await;
    assert!(
        handed_out.len() > 50,
        "the load made too few calls to prove anything: {}",
        handed_out.len()
    );

    // The external system recovers; the site restarts once more.
    fake.set_mode(Mode::Ok).await;
    let (child, url) = common::start_site(&config, &log).await;

    for id in &handed_out {
        let resp = http
            .get(format!("{url}/api/v1/operations/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "id {id} was handed to a script but has no row"
        );
    }
    let rows = all_operations(&http, &url).await;
    let known: HashSet<String> = rows
        .iter()
        .map(|r| r["tracked_operation_id"].as_str().unwrap().to_owned())
        .collect();
    let keys = fake.idempotency_keys();
    assert!(!keys.is_empty());
    for key in &keys {
        let key = key
            .as_deref()
            .expect("every cached attempt carries an Idempotency-Key");
        assert!(
            known.contains(key),
            "the server received a request for {key}, which has no row"
        );
    }

    let final_rows = eventually(
        Duration::from_secs(60),
        "every row Delivered or Parked",
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let rows = all_operations(&http, &url).await;
                rows.iter()
                    .all(|r| matches!(r["status"].as_str(), Some("Delivered" | "Parked")))
                    .then_some(rows)
            }
        },
    )
    .await;
    assert!(final_rows.len() >= handed_out.len());
    eprintln!(
        "{} rows, {} requests received",
        final_rows.len(),
        keys.len()
    );

    // SIGTERM: a graceful stop with exit status 0.
    sigterm(child).await;
}

#[tokio::test]
async fn a_broken_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(
        &path,
        "[site]\nname = \"x\"\ndata_dir = \"d\"\n[admin]\nbindd = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["site", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bindd") && err.contains("site.toml"), "{err}");

    let out = Command::new(BIN)
        .args(["site", "--config", "/nonexistent/site.toml"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/site.toml"));
}
