//! Helpers for tests that run the real `sitelink` binary.
#![allow(dead_code)]

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_sitelink");
pub const ADMIN_PASSWORD: &str = "convergence-test-password";

/// Starts the binary and returns it with the addresses it printed.
pub async fn start(args: &[&str], log: &Path, lines: usize) -> (Child, Vec<String>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .env("SITELINK_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addrs = Vec::new();
    for _ in 0..lines {
        let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        addrs.push(line.rsplit(' ').next().unwrap().to_owned());
    }
    (child, addrs)
}

/// Sends SIGTERM and waits for the exit: a graceful stop exits with 0.
pub async fn sigterm(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

pub async fn list_all(http: &reqwest::Client, url: &str, auth: bool) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut u = url.to_owned();
        if let Some(a) = &after {
            u.push_str(&format!("&after={a}"));
        }
        let mut req = http.get(u);
        if auth {
            req = req.basic_auth("admin", Some(ADMIN_PASSWORD));
        }
        let page: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        out.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .map(|mut r| {
                    r.as_object_mut().unwrap().remove("change_seq");
                    r
                }),
        );
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    out.sort_by(|a, b| {
        a["tracked_operation_id"]
            .as_str()
            .cmp(&b["tracked_operation_id"].as_str())
    });
    out
}

/// Starts `sitelink site` with `config` and returns it with its admin URL.
pub async fn start_site(config: &Path, log: &Path) -> (Child, String) {
    let (child, addrs) = start(&["site", "--config", config.to_str().unwrap()], log, 1).await;
    (child, format!("http://{}", addrs[0]))
}

/// `rounds` times: starts the site, has 6 clients run `script` through its
/// admin API one run after another, and SIGKILLs it at a random moment in
/// `kill_after_ms` (wherever the load is). Returns every id a run handed
/// back before a kill.
pub async fn sigkill_rounds(
    config: &Path,
    log: &Path,
    script: &str,
    rounds: usize,
    kill_after_ms: std::ops::Range<u64>,
) -> std::collections::HashSet<String> {
    use rand::Rng;
    let http = reqwest::Client::new();
    let handed_out: HandedOut = Default::default();
    for round in 0..rounds {
        let (mut child, url) = start_site(config, log).await;
        let mut clients = run_until_killed(&http, &url, script, 6, &handed_out);
        let ms = rand::rng().random_range(kill_after_ms.clone());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        while clients.join_next().await.is_some() {}
        eprintln!(
            "round {round}: killed after {ms} ms, {} ids handed out so far",
            handed_out.lock().unwrap().len()
        );
    }
    let ids = handed_out.lock().unwrap().clone();
    ids
}

/// Ids a site's runs handed back, collected by [`run_until_killed`].
pub type HandedOut = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// `clients` concurrent clients run `script` through the site's admin API
/// at `url`, one run after another, until the process dies under them;
/// every id a run handed back goes into `handed_out`.
pub fn run_until_killed(
    http: &reqwest::Client,
    url: &str,
    script: &str,
    clients: usize,
    handed_out: &HandedOut,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, handed_out) = (http.clone(), handed_out.clone());
        let run = format!("{url}/api/v1/scripts/{script}/run");
        set.spawn(async move {
            while let Ok(resp) = http
                .post(&run)
                .header("content-type", "application/json")
                .send()
                .await
            {
                let Ok(body) = resp.json::<serde_json::Value>().await else {
                    break;
                };
                let ids = body["tracked_operation_ids"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                handed_out
                    .lock()
                    .unwrap()
                    .extend(ids.iter().map(|i| i.as_str().unwrap().to_owned()));
            }
        });
    }
    set
}

/// Waits (30 s at most) until central's Site Calls for `site` equal
/// `site_calls`, field by field (as `list_all` returns them).
pub async fn central_converges_to(
    http: &reqwest::Client,
    central_http: &str,
    site: &str,
    site_calls: &[serde_json::Value],
) {
    sitelink_test_support::eventually(
        Duration::from_secs(30),
        &format!("central converges to {site}"),
        || async {
            let central_rows = list_all(
                http,
                &format!("{central_http}/api/v1/site-calls?site={site}&limit=500"),
                true,
            )
            .await;
            (central_rows == site_calls).then_some(())
        },
    )
    .await;
}

/// A free TCP port on 127.0.0.1 (for a process that must bind a known one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One central node run as its own process (restartable with the same
/// arguments).
pub struct Node {
    pub name: &'static str,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub http: String,
}

impl Node {
    pub async fn start(&mut self, log: &std::path::Path) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, addrs) = start(&args, log, 2).await;
        self.child = Some(child);
        self.http = format!("http://{}", addrs[1]);
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    pub async fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
}

/// A node's `GET /api/v1/cluster`, or `None` while it does not answer.
pub async fn cluster_view(http: &reqwest::Client, base: &str) -> Option<serde_json::Value> {
    http.get(format!("{base}/api/v1/cluster"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}
