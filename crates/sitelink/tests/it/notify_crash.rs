//! SPEC §6 guarantee 1 for `Notify.Send`, whose commit a script no longer
//! waits for at each call (issue 13: its writes are settled before the run
//! reports anything): `sitelink site` under load (concurrent runs of a
//! script that sends notifications in a loop) is killed with SIGKILL at
//! random moments and restarted. Every id a run handed back has its row,
//! with the notification's content, after every restart.

use crate::common;

use common::{sigterm, BIN};

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(
        dir.join("alarms.rhai"),
        r#"let ids = [];
           for i in 0..25 { ids.push(Notify.Send("shift-leads", `Alarm ${i}`, "Line 1 stopped")); }
           ids"#,
    )
    .unwrap();
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        r#"
[site]
name = "alarming"
data_dir = "data"

[admin]
bind = "127.0.0.1:0"

[[script]]
name = "alarms"
file = "alarms.rhai"
instance = "line1"
"#,
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_scripts_send_notifications_loses_no_id() {
    assert!(std::path::Path::new(BIN).exists());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let log = dir.path().join("site.log");
    let http = reqwest::Client::new();
    let handed_out = common::sigkill_rounds(&config, &log, "alarms", 3, 300..1200).await;
    assert!(
        handed_out.len() > 200,
        "the load sent too few notifications to prove anything: {}",
        handed_out.len()
    );
    let (child, url) = common::start_site(&config, &log).await;
    let rows = common::list_all(&http, &format!("{url}/api/v1/operations?limit=1000"), false).await;
    let stored: std::collections::HashMap<String, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["tracked_operation_id"].as_str().unwrap().to_owned(), r))
        .collect();
    for id in &handed_out {
        let row = stored
            .get(id)
            .unwrap_or_else(|| panic!("id {id} was handed to a script but has no row"));
        assert_eq!(row["kind"], "Notification", "{row}");
        assert_eq!(row["target_summary"], "shift-leads", "{row}");
    }
    eprintln!("{} ids handed out, {} rows", handed_out.len(), rows.len());
    sigterm(child).await;
}
