//! `sitelink demo` as a newcomer runs it: the real binary in a temporary
//! directory (at `--speed 20`), checked through central's REST API: every
//! status on both sites, delivered mail, a parked call retried through
//! central; SIGINT stops it with status 0 within 10 s; a second run on the
//! same directory resumes with the earlier rows.

use std::{
    net::{Ipv4Addr, TcpListener},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use sitelink_test_support::eventually;

const PASSWORD: &str = "demo password 1";

/// A base port with five free ports from it, and a free HTTP port.
fn free_ports() -> (u16, u16) {
    loop {
        let base = 20_000 + rand::random::<u16>() % 40_000;
        let all: Vec<_> = (0..6)
            .map(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)))
            .collect();
        if all.iter().all(Result::is_ok) {
            return (base, base + 5);
        }
    }
}

struct Demo {
    child: tokio::process::Child,
}

impl Demo {
    fn start(dir: &std::path::Path, base: u16, http: u16) -> Demo {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitelink"))
            .args(["demo", "--speed", "20", "--admin-password", PASSWORD])
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--ports",
                &base.to_string(),
                "--http",
                &format!("127.0.0.1:{http}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the demo starts");
        Demo { child }
    }

    /// SIGINT (Ctrl-C); the exit status and how long it took.
    async fn interrupt(mut self) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("running");
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the demo stops within 10 s of SIGINT")
            .unwrap();
        (status, started.elapsed())
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    }

    async fn first(&self, path: &str) -> Option<Value> {
        self.get(path).await?["items"].as_array()?.first().cloned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_every_status_retries_stops_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (base, http) = free_ports();
    let api = Api {
        base: format!("http://127.0.0.1:{http}"),
        http: reqwest::Client::new(),
    };
    let demo = Demo::start(dir.path(), base, http);
    // Pending and Retrying come and go: seen once is enough.
    let seen_open = std::cell::Cell::new([false, false]);
    eventually(
        Duration::from_secs(120),
        "every status on both sites, and delivered mail",
        || async {
            let mut all = true;
            for (i, site) in ["plant-north", "plant-south"].iter().enumerate() {
                for status in ["Pending", "Retrying"] {
                    if api
                        .first(&format!(
                            "/api/v1/site-calls?site={site}&status={status}&limit=1"
                        ))
                        .await
                        .is_some()
                    {
                        let mut seen = seen_open.get();
                        seen[i] = true;
                        seen_open.set(seen);
                    }
                }
                all &= seen_open.get()[i];
                for status in ["Delivered", "Parked", "Failed"] {
                    all &= api
                        .first(&format!(
                            "/api/v1/site-calls?site={site}&status={status}&limit=1"
                        ))
                        .await
                        .is_some();
                }
            }
            all &= api
                .first("/api/v1/notifications?status=Delivered&limit=1")
                .await
                .is_some();
            all.then_some(())
        },
    )
    .await;
    // The mail is in the data directory.
    let mail = std::fs::read_dir(dir.path().join("mail")).unwrap().count();
    assert!(mail > 0);

    // Retry a parked call through central: it leaves Parked.
    let parked = api
        .first("/api/v1/site-calls?site=plant-north&status=Parked&limit=1")
        .await
        .unwrap();
    let id = parked["tracked_operation_id"].as_str().unwrap().to_owned();
    let answer = api
        .http
        .post(format!("{}/api/v1/site-calls/{id}/retry", api.base))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    eventually(
        Duration::from_secs(30),
        "the retried call leaves Parked",
        || async {
            let row = api.get(&format!("/api/v1/site-calls/{id}")).await?;
            (row["status"] != "Parked").then_some(())
        },
    )
    .await;
    let rows_before = api.get("/api/v1/site-calls?limit=1000").await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len();

    let (status, took) = demo.interrupt().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A second run on the same directory resumes with the earlier rows.
    let demo = Demo::start(dir.path(), base, http);
    let row = eventually(
        Duration::from_secs(30),
        "the second run answers",
        || async { api.get(&format!("/api/v1/site-calls/{id}")).await },
    )
    .await;
    assert_eq!(row["tracked_operation_id"], id.as_str());
    let rows_after = api.get("/api/v1/site-calls?limit=1000").await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len();
    assert!(rows_after >= rows_before, "{rows_after} < {rows_before}");
    // The files were kept, not rewritten: an edit survives.
    let script = dir.path().join("plant-north/scripts/orders.rhai");
    assert!(std::fs::read_to_string(&script)
        .unwrap()
        .contains("plant-north, line 1"));
    let (status, _) = demo.interrupt().await;
    assert!(status.success());
}

/// A taken port stops the demo at once with a message naming the port, the
/// part, and the flag that moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_named_with_the_flag_that_moves_it() {
    let (base, http) = free_ports();
    for (taken, part, flag) in [
        (base + 3, "the simulated ERP", "--ports"),
        (http, "the web UI", "--http"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let _holder = TcpListener::bind((Ipv4Addr::LOCALHOST, taken)).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitelink"))
            .args(["demo", "--admin-password", PASSWORD])
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--ports",
                &base.to_string(),
                "--http",
                &format!("127.0.0.1:{http}"),
            ])
            .env("RUST_LOG", "off")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&taken.to_string()) && stderr.contains(part) && stderr.contains(flag),
            "{stderr}"
        );
    }
}
