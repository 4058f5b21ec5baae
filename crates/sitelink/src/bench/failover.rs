//! `sitelink bench failover [--quick]`: two central nodes (this binary, as
//! processes) on one PostgreSQL database (`SITELINK_BENCH_POSTGRES_URL`,
//! default the local server) with the default lease timing (TTL 10 s,
//! renew 2 s, step down 6 s, standby poll 1 s), and four sites (in this
//! process) that know both. The active node is killed with SIGKILL five
//! times (`--quick`: twice), each time after the killed node of the round
//! before came back as standby; measured from the kill: the time until the
//! other node holds the lease (to active) and until every site streams to
//! it (to sites, as its `/api/v1/sites` says). Then a planned switch
//! (SIGTERM of the active node) until the other holds the lease.
//!
//! Goal (issue 12): every site streaming to the new active node within 15 s
//! of a kill. JSON: `failover_p50_s`, `failover_max_s` (to sites),
//! `to_active_p50_s`, `to_active_max_s`, `planned_switch_s`.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::json;
use sitelink_central::configuration_database::{leader_lease as lease, Database};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;

use super::{
    central_world::{BenchDb, Db},
    median,
};

const PASSWORD: &str = "bench failover password";
const SITES: usize = 4;

struct Node {
    name: String,
    config: std::path::PathBuf,
    child: Option<Child>,
    http: String,
}

impl Node {
    async fn start(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["central", "--config"])
            .arg(&self.config)
            .env("SITELINK_ADMIN_PASSWORD", PASSWORD)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut http = String::new();
        for _ in 0..2 {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await??
                .ok_or_else(|| anyhow::anyhow!("central {} exited at start", self.name))?;
            http = line.rsplit(' ').next().unwrap_or_default().to_owned();
        }
        self.http = format!("http://{http}");
        self.child = Some(child);
        Ok(())
    }
}

/// Polls `check` every 20 ms until it holds (at most `within`).
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{what}: not within {within:?}")
}

pub async fn run(size: super::Size) -> anyhow::Result<()> {
    let kills = size.pick(5, 2, 1);
    let bench_db = BenchDb::new(Db::Postgres).await?;
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    for name in ["a", "b"] {
        let link = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        links.push(link);
        let config = dir.path().join(format!("central-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[central]\ndatabase_url = \"{}\"\nlink_bind = \"{link}\"\nhttp_bind = \"127.0.0.1:0\"\n[cluster]\nnode_name = \"{name}\"\n",
                bench_db.url
            ),
        )?;
        nodes.push(Node {
            name: name.into(),
            config,
            child: None,
            http: String::new(),
        });
    }
    nodes[0].start().await?;
    nodes[1].start().await?;
    let db = Database::connect(&bench_db.url).await?;

    // Four sites that know both nodes.
    let cancel = CancellationToken::new();
    let mut site_tasks = Vec::new();
    for i in 0..SITES {
        let name = format!("bench-{i}");
        let token = db
            .sites()
            .add(&sitelink_commons::SiteName::parse(&name)?)
            .await?;
        let site_dir = dir.path().join(&name);
        std::fs::create_dir_all(&site_dir)?;
        let cfg = sitelink_site::SiteConfig::parse(
            &format!(
                "[site]\nname = \"{name}\"\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\n[central]\naddresses = [\"http://{}\", \"http://{}\"]\ntoken = \"{}\"\nreconnect_max_ms = 1000\n",
                links[0],
                links[1],
                token.as_str()
            ),
            &site_dir,
        )?;
        let site = sitelink_site::Site::build(cfg).await?;
        site_tasks.push(tokio::spawn(site.run(cancel.clone())));
    }

    let http = reqwest::Client::new();
    let holder = || async {
        lease::state(db.pool())
            .await
            .ok()
            .filter(|s| s.expires_at_ms > s.now_ms)
            .and_then(|s| s.holder)
    };
    let all_streaming = |url: String| {
        let http = http.clone();
        async move {
            let Ok(r) = http
                .get(format!("{url}/api/v1/sites"))
                .basic_auth("admin", Some(PASSWORD))
                .send()
                .await
            else {
                return false;
            };
            let Ok(v) = r.json::<serde_json::Value>().await else {
                return false;
            };
            v["items"]
                .as_array()
                .is_some_and(|a| a.iter().filter(|s| s["online"] == true).count() == SITES)
        }
    };
    let first = loop {
        if let Some(h) = holder().await {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let i = nodes.iter().position(|n| n.name == first).expect("a node");
    until(Duration::from_secs(30), "sites connect", || {
        all_streaming(nodes[i].http.clone())
    })
    .await?;

    let (mut to_active, mut to_sites) = (Vec::new(), Vec::new());
    for round in 0..kills {
        let active = holder()
            .await
            .ok_or_else(|| anyhow::anyhow!("no active node"))?;
        let k = nodes.iter().position(|n| n.name == active).expect("a node");
        let other = 1 - k;
        let killed = Instant::now();
        if let Some(mut child) = nodes[k].child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        let other_name = nodes[other].name.clone();
        until(Duration::from_secs(60), "the standby takes over", || {
            let other_name = other_name.clone();
            async move { holder().await.as_deref() == Some(other_name.as_str()) }
        })
        .await?;
        let a = killed.elapsed();
        until(Duration::from_secs(60), "every site streams to it", || {
            all_streaming(nodes[other].http.clone())
        })
        .await?;
        let s = killed.elapsed();
        println!(
            "kill {round}: {} → {}: active after {:.2} s, every site after {:.2} s",
            nodes[k].name,
            other_name,
            a.as_secs_f64(),
            s.as_secs_f64()
        );
        to_active.push(a.as_secs_f64());
        to_sites.push(s.as_secs_f64());
        nodes[k].start().await?; // back as standby
    }

    // A planned switch: SIGTERM releases the lease.
    let active = holder()
        .await
        .ok_or_else(|| anyhow::anyhow!("no active node"))?;
    let k = nodes.iter().position(|n| n.name == active).expect("a node");
    let other_name = nodes[1 - k].name.clone();
    let pid = nodes[k]
        .child
        .as_ref()
        .and_then(Child::id)
        .expect("running");
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    until(Duration::from_secs(30), "the planned switch", || {
        let other_name = other_name.clone();
        async move { holder().await.as_deref() == Some(other_name.as_str()) }
    })
    .await?;
    let planned = started.elapsed().as_secs_f64();
    println!("planned switch (SIGTERM): {planned:.3} s");

    cancel.cancel();
    for t in site_tasks {
        let _ = t.await;
    }
    for n in &mut nodes {
        if let Some(mut c) = n.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
    db.pool().close().await;
    bench_db.drop_database().await;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let out = json!({
        "bench": "failover",
        "quick": size.quick(),
        "kills": kills,
        "lease": { "ttl_s": 10, "renew_s": 2, "step_down_s": 6, "standby_poll_s": 1 },
        "to_active_s": to_active,
        "to_sites_s": to_sites,
        "to_active_p50_s": median(&to_active),
        "to_active_max_s": max(&to_active),
        "failover_p50_s": median(&to_sites),
        "failover_max_s": max(&to_sites),
        "planned_switch_s": planned,
        "goal_failover_max_s": 15.0,
        "goals_met": max(&to_sites) <= 15.0,
    });
    println!("{out}");
    Ok(())
}
