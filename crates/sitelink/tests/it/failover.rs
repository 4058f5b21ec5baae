//! Cluster Infrastructure with real processes: two central nodes on one
//! PostgreSQL database, two sites and a flaky ERP, under steady cached-call
//! and notification load. The active node is killed (SIGKILL) three times
//! in a row — each time the standby is active and every site streams to it
//! within 15 s, and the killed node comes back as standby — then paused
//! past its lease (SIGSTOP) and resumed (SIGCONT): it steps down and stays
//! standby. Afterwards `SiteCalls` equals every site's tracking table field
//! by field, every notification was mailed, and the duplicates (by
//! Message-ID) are reported and stay within the sends in flight per fault.

use crate::common;

use std::time::{Duration, Instant};

use common::{cluster_view, free_port, list_all, start, Node, ADMIN_PASSWORD, BIN};
use sitelink_central::{
    configuration_database::{leader_lease as lease, Database},
    notification_outbox::{message_id, COMMIT_EVERY},
};
use sitelink_test_support::{eventually, FakeHttp, FakeSmtp, Mode, SmtpMode};

/// Sends in flight at once in the dispatcher.
const IN_FLIGHT: usize = 8;
/// How long the relay takes per message, and what one commit of a group of
/// outcomes may take here (as in `outbox_crash.rs`).
const RELAY: Duration = Duration::from_millis(10);
const COMMIT: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_loses_nothing() {
    let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        // fresh_database said why
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("processes.log");
    let smtp = FakeSmtp::start(SmtpMode::Accept).await;
    smtp.set_accept_delay(RELAY);
    let erp = FakeHttp::start(Mode::SucceedEvery(3)).await;
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
                 [cluster]\nnode_name = \"{name}\"\nlease_ttl_ms = 3000\nrenew_every_ms = 300\nstep_down_after_ms = 1500\nstandby_poll_ms = 200\n\
                 [notification_outbox]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nfrom = \"sitelink@plant.example\"\n\
                 retry = {{ interval_ms = 100, max_retries = 1000 }}\n\
                 [notification_lists]\nops = [\"ops@plant.example\"]\n",
                pg.url,
                smtp.port()
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

    std::fs::write(
        dir.path().join("load.rhai"),
        r#"let ids = []; for i in 0..3 { ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{ order: i })); } ids.push(Notify.Send("ops", "Line report", "body")); ids"#,
    )
    .unwrap();
    let mut sites = Vec::new();
    for name in ["s1", "s2"] {
        let out = std::process::Command::new(BIN)
            .args(&nodes[0].args)
            .args(["site", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let toml = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &toml,
            format!(
                "[site]\nname = \"{name}\"\ndata_dir = \"{name}-data\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
                 [central]\naddresses = [{}]\ntoken = \"{token}\"\nreconnect_max_ms = 300\n\
                 [external_systems.erp]\nbase_url = \"{}\"\ntimeout_ms = 1000\n\
                 retry = {{ interval_ms = 30, backoff = 1.0, max_interval_ms = 30, max_retries = 5, jitter = 0.0 }}\n\
                 methods.postOrder = {{ http_method = \"POST\", path = \"/orders\" }}\n\
                 [[script]]\nname = \"load\"\nfile = \"load.rhai\"\ninterval_ms = 200\n",
                links.join(", "),
                erp.url()
            ),
        )
        .unwrap();
        let (child, addrs) = start(&["site", "--config", toml.to_str().unwrap()], &log, 1).await;
        sites.push((name, child, format!("http://{}", addrs[0])));
    }
    let http = reqwest::Client::new();

    let active = || async {
        let s = lease::state(db.pool()).await.unwrap();
        (s.expires_at_ms > s.now_ms).then_some(s.holder).flatten()
    };
    let streaming = |url: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("{url}/api/v1/sites"))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            let online = v["items"]
                .as_array()?
                .iter()
                .filter(|s| s["online"] == true)
                .count();
            (online == 2).then_some(())
        }
    };
    let first = eventually(Duration::from_secs(10), "a node is active", active).await;
    let i = nodes.iter().position(|n| n.name == first).unwrap();
    eventually(
        Duration::from_secs(15),
        "both sites stream to the active node",
        || streaming(nodes[i].http.clone()),
    )
    .await;

    // Three SIGKILLs in a row, each of the node that is active then.
    let mut faults = 0;
    let mut report = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await; // load runs meanwhile
        let holder = active().await.expect("an active node");
        let k = nodes.iter().position(|n| n.name == holder).unwrap();
        let other = 1 - k;
        let killed = Instant::now();
        nodes[k].kill().await;
        faults += 1;
        eventually(Duration::from_secs(15), "the standby is active", || async {
            (active().await.as_deref() == Some(nodes[other].name)).then_some(())
        })
        .await;
        let to_active = killed.elapsed();
        eventually(
            Duration::from_secs(15),
            "every site streams to the new active node",
            || streaming(nodes[other].http.clone()),
        )
        .await;
        let to_streams = killed.elapsed();
        assert!(
            to_streams <= Duration::from_secs(15),
            "round {round}: {to_streams:?}"
        );
        report.push(format!(
            "kill {round}: active after {to_active:.1?}, sites after {to_streams:.1?}"
        ));
        // The killed node comes back, as standby.
        nodes[k].start(&log).await;
        eventually(
            Duration::from_secs(10),
            "the restarted node reports standby",
            || async {
                let v = cluster_view(&http, &nodes[k].http).await?;
                (v["this_node_active"] == false && v["lease"]["holder"] == nodes[other].name)
                    .then_some(())
            },
        )
        .await;
    }

    // SIGSTOP the active node past its lease, then SIGCONT: it steps down.
    let holder = active().await.expect("an active node");
    let k = nodes.iter().position(|n| n.name == holder).unwrap();
    let other = 1 - k;
    nodes[k].signal("-STOP");
    faults += 1;
    eventually(
        Duration::from_secs(15),
        "the standby takes over from the paused node",
        || async { (active().await.as_deref() == Some(nodes[other].name)).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(15), "the sites follow", || {
        streaming(nodes[other].http.clone())
    })
    .await;
    nodes[k].signal("-CONT");
    eventually(
        Duration::from_secs(10),
        "the resumed node is standby",
        || async {
            let v = cluster_view(&http, &nodes[k].http).await?;
            (v["this_node_active"] == false).then_some(())
        },
    )
    .await;
    assert_eq!(
        active().await.as_deref(),
        Some(nodes[other].name),
        "the resumed node took nothing back"
    );

    // A graceful stop (SIGTERM) of the active node: the standby is active
    // within 2 s (the lease is released and the standby hears of it).
    let holder = active().await.expect("an active node");
    let k = nodes.iter().position(|n| n.name == holder).unwrap();
    let other = 1 - k;
    let stopping = Instant::now();
    nodes[k].signal("-TERM");
    eventually(
        Duration::from_secs(5),
        "the standby after a graceful stop",
        || async { (active().await.as_deref() == Some(nodes[other].name)).then_some(()) },
    )
    .await;
    let planned = stopping.elapsed();
    assert!(
        planned < Duration::from_secs(2),
        "graceful switch took {planned:?}"
    );
    report.push(format!("graceful stop: active after {planned:.2?}"));
    let status = nodes[k].child.take().unwrap().wait().await.unwrap();
    assert!(status.success(), "{status}");
    faults += 1;

    // Stop the load; let everything settle; compare.
    for (_, child, _) in &mut sites {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    let active_http = nodes[other].http.clone();
    for (name, _, _) in &sites {
        let toml = dir.path().join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&toml)
            .unwrap()
            .replace("interval_ms = 200\n", "");
        std::fs::write(&toml, text).unwrap();
    }
    erp.set_mode(Mode::Ok).await;
    let mut restarted = Vec::new();
    for (name, _, _) in &sites {
        let toml = dir.path().join(format!("{name}.toml"));
        let (child, addrs) = start(&["site", "--config", toml.to_str().unwrap()], &log, 1).await;
        restarted.push((*name, child, format!("http://{}", addrs[0])));
    }
    for (name, _, url) in &restarted {
        let site_rows = eventually(
            Duration::from_secs(30),
            &format!("{name}: settled"),
            || async {
                // Notifications are central's to deliver: only the site
                // calls settle here.
                let rows: Vec<_> =
                    list_all(&http, &format!("{url}/api/v1/operations?limit=500"), false)
                        .await
                        .into_iter()
                        .filter(|r| r["kind"] != "Notification")
                        .collect();
                rows.iter()
                    .all(|r| {
                        matches!(
                            r["status"].as_str(),
                            Some("Delivered" | "Parked" | "Failed")
                        )
                    })
                    .then_some(rows)
            },
        )
        .await;
        let site_calls: Vec<_> = site_rows
            .into_iter()
            .filter(|r| r["kind"] != "Notification")
            .collect();
        assert!(site_calls.len() >= 20, "{name}: {}", site_calls.len());
        common::central_converges_to(&http, &active_http, name, &site_calls).await;
    }
    // Every notification central accepted was mailed; duplicates bounded.
    let notifications = eventually(
        Duration::from_secs(30),
        "every notification delivered",
        || async {
            let all = list_all(
                &http,
                &format!("{active_http}/api/v1/notifications?limit=500"),
                true,
            )
            .await;
            all.iter()
                .all(|n| n["status"] == "Delivered")
                .then_some(all)
        },
    )
    .await;
    assert!(notifications.len() >= 10, "{}", notifications.len());
    let mut duplicates = 0;
    for n in &notifications {
        let id = n["tracked_operation_id"].as_str().unwrap().parse().unwrap();
        let got = smtp.count_message_id(&message_id(&id));
        assert!(got >= 1, "notification {id} was never mailed");
        duplicates += got - 1;
    }
    eprintln!(
        "{}\nnotifications: {}, duplicates: {duplicates} over {faults} faults",
        report.join("\n"),
        notifications.len()
    );
    // The documented bound per fault (SPEC §6.8, `outbox_crash.rs`): the
    // sends in flight, and those that ended within the commit interval
    // plus one commit, IN_FLIGHT at a time.
    let window = (COMMIT_EVERY + COMMIT).as_millis() / RELAY.as_millis();
    let per_fault = IN_FLIGHT * (1 + window as usize);
    assert!(
        duplicates <= per_fault * faults,
        "{duplicates} duplicates over {faults} faults (bound {per_fault} per fault)"
    );
    for (_, mut child, _) in restarted {
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }
    for n in &mut nodes {
        if n.child.is_some() {
            n.kill().await;
        }
    }
    db.pool().close().await;
    pg.drop_database().await;
}
