//! Bad input that must not hurt the site: runaway scripts, broken scripts,
//! broken config files.

mod common;

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
async fn a_script_with_a_syntax_error_does_not_stop_the_site() {
    let fake = FakeHttp::start(Mode::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.rhai"), "let x = ;").unwrap();
    std::fs::write(
        dir.path().join("good.rhai"),
        r#"let id = ExternalSystem.CachedCall("erp", "postOrder", #{ order: 7 }); #{ id: id }"#,
    )
    .unwrap();
    let fragment = format!(
        "{}\n[[script]]\nname = \"broken\"\nfile = \"broken.rhai\"\n\n[[script]]\nname = \"good\"\nfile = \"good.rhai\"\ninstance = \"line2\"\n",
        erp(&fake.url(), 3)
    );
    let mut site = common::build_site_in(dir, &fragment).await;
    let (url, cancel, handle) = site.start();
    let http = reqwest::Client::new();

    let resp = http
        .post(format!("{url}/api/v1/scripts/broken/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("does not compile"),
        "{body}"
    );

    let resp = http
        .post(format!("{url}/api/v1/scripts/good/run"))
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

#[test]
fn the_example_config_in_the_repo_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/site.toml");
    let cfg = SiteConfig::load(&path).unwrap();
    assert!(!cfg.scripts.is_empty());
    for s in &cfg.scripts {
        assert!(s.file.exists(), "{} is missing", s.file.display());
    }
}
