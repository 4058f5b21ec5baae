//! Scripts reload when their file changes: the new version runs from the
//! next run on; a version that does not compile is reported (log, admin
//! API) and the previous one keeps running until the file changes again.

use crate::common;

use common::*;

#[tokio::test]
async fn a_changed_script_runs_and_a_broken_one_is_reported_while_the_old_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tick.rhai");
    std::fs::write(&file, "\"version 1\"").unwrap();
    let mut site = build_site_in(
        dir,
        "[[script]]\nname = \"tick\"\nfile = \"tick.rhai\"\ninstance = \"line1\"\n",
    )
    .await;
    assert_eq!(site.runtime.run("tick").await.unwrap().result, "version 1");

    // A new version: it runs from the next run on.
    std::fs::write(&file, "let v = 2; `version ${v} (edited)`").unwrap();
    assert_eq!(
        site.runtime.run("tick").await.unwrap().result,
        "version 2 (edited)"
    );

    // A broken version: the previous one keeps running, the error is shown.
    std::fs::write(&file, "let v = ; // a typo that no longer compiles").unwrap();
    assert_eq!(
        site.runtime.run("tick").await.unwrap().result,
        "version 2 (edited)"
    );
    let (url, cancel, handle) = site.start();
    let scripts: serde_json::Value = reqwest::get(format!("{url}/api/v1/scripts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tick = &scripts["items"][0];
    assert_eq!(tick["name"], "tick");
    let error = tick["reload_error"]
        .as_str()
        .expect("the compile error is shown");
    assert!(error.contains("line 1"), "{error}");
    // The index a browser sees at `/` lists the scripts too.
    let index: serde_json::Value = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index["service"], "sitelink site admin API");
    assert!(index["scripts"][0]["reload_error"].is_string());

    // Fixed again: it runs, the error is gone.
    std::fs::write(&file, "\"version 3, fixed\"").unwrap();
    let run: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/api/v1/scripts/tick/run"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["result"], "version 3, fixed", "{run}");
    let scripts: serde_json::Value = reqwest::get(format!("{url}/api/v1/scripts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(scripts["items"][0]["reload_error"].is_null());
    cancel.cancel();
    handle.await.unwrap().unwrap();
}
