//! Bad input that must not hurt the site: runaway scripts, broken scripts,
//! broken config files.

use crate::common;

use std::path::Path;

use common::{build_site, erp, BASE};
use sitelink_site::SiteConfig;
use sitelink_test_support::{FakeHttp, Mode};

#[tokio::test]
async fn endless_loops_are_stopped_and_the_site_goes_on() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let site = build_site(&format!(
        "{}\n[limits]\nmax_wall_time_ms = 300\nmax_operations = 1000000000000\n",
        erp(&fake.url(), 3)
    ))
    .await;
    // Made before the loop: must survive the stop.
    let e = site
        .run(r#"let id = ExternalSystem.CachedCall("erp", "postOrder", #{ order: 1 }); loop { }"#)
        .await
        .unwrap_err();
    let ids = match &e {
        sitelink_site::site_runtime::ScriptError::Runtime { ids, .. } => ids.clone(),
        other => panic!("{other}"),
    };
    assert!(e.to_string().contains("max_wall_time_ms (300 ms)"), "{e}");
    assert_eq!(ids.len(), 1);
    assert_eq!(
        site.record(&ids[0].to_string()).await.status,
        sitelink_commons::TrackedOperationStatus::Delivered
    );

    // The operation budget, and deep recursion, name their limits too.
    let site2 = build_site(&format!(
        "{}\n[limits]\nmax_operations = 10000\n",
        erp(&fake.url(), 3)
    ))
    .await;
    let e = site2
        .run("let x = 0; loop { x += 1; }")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_operations (10000)"), "{e}");
    let e = site2
        .run("fn f(n) { f(n + 1) } f(0)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.to_lowercase().contains("stack") || e.contains("call"),
        "{e}"
    );
    let e = site2
        .run(r#"let s = "x"; for i in 0..40 { s += s; } s"#)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.to_lowercase().contains("length") || e.contains("size"),
        "{e}"
    );

    // And the site still works.
    let id = site
        .run_ok(r#"ExternalSystem.CachedCall("erp", "postOrder", #{ order: 2 })"#)
        .await;
    assert!(id.is_string());
}

#[tokio::test]
async fn a_missing_or_broken_script_stops_the_start_and_a_good_one_runs() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let script = |name: &str, file: &str| {
        format!("[[script]]\nname = \"{name}\"\nfile = \"{file}\"\ninstance = \"line2\"\n")
    };
    // A syntax error, and a file that is not there: the start stops with
    // the script's name and why.
    for (file, source, expected) in [
        ("broken.rhai", Some("let x = ;"), "does not compile"),
        ("missing.rhai", None, "cannot read it"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        if let Some(source) = source {
            std::fs::write(dir.path().join(file), source).unwrap();
        }
        let text = format!("{BASE}\n{}\n{}", erp(&fake.url(), 3), script("bad", file));
        let config = SiteConfig::parse(&text, dir.path()).unwrap();
        let e = match sitelink_site::Site::build(config).await {
            Ok(_) => panic!("{file}: the site started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("\"bad\"") && e.contains(file) && e.contains(expected),
            "{file}: {e}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.rhai"),
        r#"let id = ExternalSystem.CachedCall("erp", "postOrder", #{ order: 7 }); #{ id: id }"#,
    )
    .unwrap();
    let fragment = format!("{}\n{}", erp(&fake.url(), 3), script("good", "good.rhai"));
    let mut site = common::build_site_in(dir, &fragment).await;
    let (url, cancel, handle) = site.start();
    let http = reqwest::Client::new();

    let resp = http
        .post(format!("{url}/api/v1/scripts/good/run"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["result"]["id"].as_str().unwrap();
    assert_eq!(body["tracked_operation_ids"][0], id);
    let rec: serde_json::Value = http
        .get(format!("{url}/api/v1/operations/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rec["provenance"], "line2/good");

    let resp = http
        .post(format!("{url}/api/v1/scripts/nope/run"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .get(format!("{url}/api/v1/operations?status=Exploded"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("Exploded"));
    let resp = http
        .get(format!("{url}/api/v1/operations?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    cancel.cancel();
    handle.await.unwrap().unwrap();
}

#[test]
fn broken_config_files_name_what_is_wrong() {
    let base = Path::new("/tmp");
    let cases = [
        (format!("{BASE}\n[site]\nname = \"x\""), "duplicate key"),
        (format!("{BASE}\n[externl_systems.erp]\nbase_url = \"http://x\""), "externl_systems"),
        ("[site]\nname = \"bad name!\"\ndata_dir = \"d\"".to_owned(), "site name"),
        ("[site]\nname = \"ok\"".to_owned(), "data_dir"),
        (format!("{BASE}\n[external_systems.erp]\nbase_url = \"ftp://x\"\nmethods = {{}}"), "external_systems.erp.base_url"),
        (
            format!("{BASE}\n[external_systems.erp]\nbase_url = \"http://x\"\nmethods.a = {{ http_method = \"FETCH\", path = \"/\" }}"),
            "external_systems.erp.methods.a.http_method",
        ),
        (
            format!("{BASE}\n[external_systems.erp]\nbase_url = \"http://x\"\nretry = {{ backoff = 0.5 }}\nmethods = {{}}"),
            "external_systems.erp.retry",
        ),
        (format!("{BASE}\n[databases.plant]\nurl = \"oracle://x\""), "databases.plant.url"),
        (format!("{BASE}\n[limits]\nmax_operation = 5"), "max_operation"),
    ];
    for (text, expected) in cases {
        let e = SiteConfig::parse(&text, base).unwrap_err().to_string();
        assert!(e.contains(expected), "expected {expected:?} in: {e}");
    }
}

/// Every class of numeric key refuses a value outside its documented
/// range, naming the key and the range (issue 9 item 6).
#[test]
fn numeric_keys_out_of_range_stop_the_start() {
    let base = Path::new("/tmp");
    let sys = "[external_systems.erp]\nbase_url = \"http://x\"\nmethods = {}\n";
    let cases = [
        (
            "[[script]]\nname = \"s\"\nfile = \"s.rhai\"\ninterval_ms = 0".to_owned(),
            "script[0].interval_ms",
        ),
        (
            "[limits]\nmax_wall_time_ms = 0".to_owned(),
            "limits.max_wall_time_ms",
        ),
        (
            "[limits]\nmax_operations = 0".to_owned(),
            "limits.max_operations",
        ),
        (
            "[limits]\nmax_call_levels = 0".to_owned(),
            "limits.max_call_levels",
        ),
        (
            "[store_and_forward]\npurge_after_days = 0".to_owned(),
            "store_and_forward.purge_after_days",
        ),
        (
            "[store_and_forward]\npurge_after_days = 30\npurge_hard_limit_days = 10".to_owned(),
            "store_and_forward.purge_hard_limit_days",
        ),
        (
            format!("{sys}timeout_ms = 0"),
            "external_systems.erp.timeout_ms",
        ),
        (
            format!("{sys}max_response_bytes = 0"),
            "external_systems.erp.max_response_bytes",
        ),
        (
            format!("{sys}retry = {{ interval_ms = 0 }}"),
            "retry.interval_ms",
        ),
        (
            "[databases.d]\nurl = \"sqlite://d.db\"\nmax_connections = 0".to_owned(),
            "databases.d.max_connections",
        ),
        (
            "[central]\naddresses = [\"http://c:7070\"]\ntoken = \"t\"\nkeepalive_ms = 0"
                .to_owned(),
            "central.keepalive_ms",
        ),
    ];
    for (fragment, key) in cases {
        let e = SiteConfig::parse(&format!("{BASE}\n{fragment}"), base)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains("must be from"), "{key}: {e}");
    }
}

#[test]
fn the_example_config_in_the_repo_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/site.toml");
    let cfg = SiteConfig::load(&path).unwrap();
    assert!(!cfg.scripts.is_empty());
    for s in &cfg.scripts {
        assert!(s.file.exists(), "{} is missing", s.file.display());
    }
}
