//! The chaos run's world: real `sitelink central` and `sitelink site`
//! processes (this binary), a flaky external system and an SMTP sink (the
//! test-support fakes, in this process), a fault-injecting TCP proxy on
//! every site→central link, a SQLite target database per site, and — where
//! the run may mount one — a size-limited tmpfs under each site's data
//! directory, so that its disk can really fill up.
//!
//! Every port is fixed at the start (free ports on 127.0.0.1), so that a
//! process restarted after a kill answers where the load and the checker
//! already look.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;
use sitelink_test_support::{FakeHttp, FakeSmtp, Mode, SmtpMode, TcpProxy};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The password of central's `admin` user in the chaos world.
pub const PASSWORD: &str = "chaos-run-admin-password";
/// How long the SMTP sink takes to accept a message: the relay time in the
/// duplicate bound.
pub const SMTP_RELAY: Duration = Duration::from_millis(10);
/// Size of each site's data filesystem (tmpfs).
const DISK_MB: u64 = 256;

/// A free TCP port on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One process of this binary, restartable with the same arguments.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    /// Address lines it prints on stdout at start.
    lines: usize,
    child: Option<Child>,
    pub paused: bool,
}

impl Proc {
    fn new(name: &str, args: Vec<String>, log: PathBuf, lines: usize) -> Self {
        Self {
            name: name.into(),
            args,
            log,
            lines,
            child: None,
            paused: false,
        }
    }

    /// Starts it and waits until it printed its addresses (it listens).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(&self.args)
            .env("SITELINK_ADMIN_PASSWORD", PASSWORD)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        for _ in 0..self.lines {
            match tokio::time::timeout(Duration::from_secs(30), out.next_line()).await {
                Ok(Ok(Some(_))) => {}
                _ => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    anyhow::bail!("{} did not start (see {})", self.name, self.log.display());
                }
            }
        }
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        self.paused = false;
    }

    /// Sends `sig` (`-STOP`, `-CONT`, `-TERM`).
    pub fn signal(&mut self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
            match sig {
                "-STOP" => self.paused = true,
                "-CONT" => self.paused = false,
                _ => {}
            }
        }
    }
}

/// A tmpfs mounted at a site's data directory; unmounted when dropped.
pub struct Disk {
    mount: PathBuf,
}

impl Disk {
    /// Mounts a `DISK_MB` tmpfs at `dir`, or says why it could not.
    fn mount(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_MB}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self { mount: dir.into() })
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Fills the filesystem to the last byte.
    pub fn fill(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler())?;
        let chunk = vec![0u8; 1 << 20];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // What is left below a MiB, byte-sized.
        while f.write_all(&chunk[..512]).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
        Ok(())
    }

    /// Gives the space back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

pub struct SiteProc {
    pub name: String,
    pub proc: Proc,
    pub admin: String,
    /// One proxy per central node, in the order of the site's addresses.
    pub proxies: Vec<Arc<TcpProxy>>,
    pub target_db: PathBuf,
    pub disk: Option<Arc<Disk>>,
}

pub struct CentralNode {
    pub proc: Proc,
    pub http: String,
}

pub struct World {
    pub centrals: Vec<CentralNode>,
    pub sites: Vec<SiteProc>,
    pub erp: FakeHttp,
    pub smtp: Arc<FakeSmtp>,
    pub http: reqwest::Client,
    /// Why the sites have no size-limited disk, when they have none.
    pub no_disk: Option<String>,
    pub cluster: bool,
    /// Last: dropped after the sites' disks are unmounted.
    pub dir: tempfile::TempDir,
}

/// What every site runs, through its admin API: two cached calls to the
/// external system, a cached write to its database, and a notification.
const LOAD_SCRIPT: &str = r#"let ids = [];
ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{ line: 1 }));
ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{ line: 2 }));
ids.push(Database.CachedWrite("plant", "INSERT INTO batches(kg) VALUES (?)", [100]));
ids.push(Notify.Send("ops", "Chaos run", "A line report."));
ids
"#;

impl World {
    /// Builds the world (nothing running yet but the fakes): central's
    /// database (`db_url`), `nodes` central nodes, `sites` sites (with
    /// `site_extra` appended to each site.toml).
    pub async fn build(
        db_url: &str,
        nodes: usize,
        sites: usize,
        site_extra: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let erp = FakeHttp::start(Mode::Ok).await;
        let smtp = FakeSmtp::start(SmtpMode::Accept).await;
        smtp.set_accept_delay(SMTP_RELAY);
        let cluster = nodes > 1;
        let mut centrals = Vec::new();
        let mut links: Vec<SocketAddr> = Vec::new();
        for i in 0..nodes {
            let name = ["a", "b"][i];
            let link: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let http = format!("127.0.0.1:{}", free_port()?);
            links.push(link);
            let cluster_section = if cluster {
                format!("[cluster]\nnode_name = \"{name}\"\n")
            } else {
                String::new()
            };
            let toml = dir.path().join(format!("central-{name}.toml"));
            std::fs::write(
                &toml,
                format!(
                    "[central]\ndatabase_url = \"{db_url}\"\nlink_bind = \"{link}\"\nhttp_bind = \"{http}\"\n\
                     reconcile_interval_seconds = 1\n{cluster_section}\
                     [notification_outbox]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nfrom = \"sitelink@plant.example\"\n\
                     retry = {{ interval_ms = 100, backoff = 2.0, max_interval_ms = 1000, max_retries = 100000 }}\n\
                     [notification_lists]\nops = [\"ops@plant.example\"]\n",
                    smtp.port()
                ),
            )?;
            centrals.push(CentralNode {
                proc: Proc::new(
                    &format!("central {name}"),
                    vec![
                        "central".into(),
                        "--config".into(),
                        toml.display().to_string(),
                    ],
                    dir.path().join(format!("central-{name}.log")),
                    2,
                ),
                http: format!("http://{http}"),
            });
        }
        std::fs::write(dir.path().join("load.rhai"), LOAD_SCRIPT)?;
        let mut site_procs = Vec::new();
        let mut no_disk = None;
        for i in 0..sites {
            let name = format!("chaos-{i}");
            let out = Command::new(std::env::current_exe()?)
                .args(&centrals[0].proc.args)
                .args(["site", "add", &name])
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "central site add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let token = String::from_utf8(out.stdout)?.trim().to_owned();
            let site_dir = dir.path().join(&name);
            std::fs::create_dir_all(&site_dir)?;
            let disk = match Disk::mount(&site_dir.join("data")) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    no_disk.get_or_insert(e);
                    None
                }
            };
            let target_db = site_dir.join("plant.db");
            let conn = rusqlite::Connection::open(&target_db)?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS batches(kg REAL)",
            )?;
            drop(conn);
            let mut proxies = Vec::new();
            for link in &links {
                proxies.push(Arc::new(TcpProxy::start(*link).await));
            }
            let addresses: Vec<String> = proxies
                .iter()
                .map(|p| format!("\"http://{}\"", p.addr()))
                .collect();
            let admin = format!("127.0.0.1:{}", free_port()?);
            let toml = site_dir.join("site.toml");
            std::fs::write(
                &toml,
                format!(
                    "[site]\nname = \"{name}\"\ndata_dir = \"data\"\n[admin]\nbind = \"{admin}\"\n\
                     [central]\naddresses = [{}]\ntoken = \"{token}\"\nreconnect_max_ms = 1000\n\
                     [external_systems.erp]\nbase_url = \"{}\"\ntimeout_ms = 1000\n\
                     retry = {{ interval_ms = 100, backoff = 1.5, max_interval_ms = 1000, max_retries = 10, jitter = 0.2 }}\n\
                     methods.postOrder = {{ http_method = \"POST\", path = \"/orders\" }}\n\
                     [databases.plant]\nurl = \"sqlite://{}\"\ninit = [\"PRAGMA busy_timeout = 100\"]\n\
                     retry = {{ interval_ms = 100, backoff = 1.5, max_interval_ms = 1000, max_retries = 10, jitter = 0.2 }}\n\
                     [[script]]\nname = \"load\"\nfile = \"../load.rhai\"\n{site_extra}",
                    addresses.join(", "),
                    erp.url(),
                    target_db.display(),
                ),
            )?;
            site_procs.push(SiteProc {
                proc: Proc::new(
                    &name,
                    vec!["site".into(), "--config".into(), toml.display().to_string()],
                    dir.path().join(format!("{name}.log")),
                    1,
                ),
                name,
                admin: format!("http://{admin}"),
                proxies,
                target_db,
                disk,
            });
        }
        Ok(Self {
            centrals,
            sites: site_procs,
            erp,
            smtp: Arc::new(smtp),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            no_disk,
            cluster,
            dir,
        })
    }

    /// Starts every central node, then every site.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        for c in &mut self.centrals {
            c.proc.start().await?;
        }
        for s in &mut self.sites {
            s.proc.start().await?;
        }
        Ok(())
    }

    /// The index of the node that says it is active, if one does.
    pub async fn active(&self) -> Option<usize> {
        if !self.cluster {
            return Some(0);
        }
        for (i, c) in self.centrals.iter().enumerate() {
            if c.proc.paused || c.proc.pid().is_none() {
                continue;
            }
            if let Some(v) = self.get(&format!("{}/api/v1/cluster", c.http)).await {
                if v["this_node_active"] == true {
                    return Some(i);
                }
            }
        }
        None
    }

    /// GET with the admin's credentials, as JSON; `None` on any failure.
    pub async fn get(&self, url: &str) -> Option<Value> {
        let r = self
            .http
            .get(url)
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Whether node `i` says every site streams to it.
    pub async fn all_streaming_to(&self, i: usize) -> bool {
        let Some(v) = self
            .get(&format!("{}/api/v1/sites", self.centrals[i].http))
            .await
        else {
            return false;
        };
        v["items"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|s| s["online"] == true).count() == self.sites.len())
    }

    /// Waits (at most `within`) until an active node has every site
    /// streaming to it; returns its index.
    pub async fn until_streaming(&self, within: Duration) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            if let Some(i) = self.active().await {
                if self.all_streaming_to(i).await {
                    return Ok(i);
                }
            }
            anyhow::ensure!(
                started.elapsed() < within,
                "no active node with every site streaming to it within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every row of a paged list at `url`, without
    /// `change_seq`, sorted by id.
    pub async fn list_all(&self, url: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let sep = if url.contains('?') { '&' } else { '?' };
            let mut u = format!("{url}{sep}limit=1000");
            if let Some(a) = &after {
                u.push_str(&format!("&after={a}"));
            }
            let page = self
                .get(&u)
                .await
                .ok_or_else(|| anyhow::anyhow!("GET {u} failed"))?;
            for r in page["items"].as_array().into_iter().flatten() {
                let mut r = r.clone();
                if let Some(o) = r.as_object_mut() {
                    o.remove("change_seq");
                }
                out.push(r);
            }
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
        Ok(out)
    }

    /// Heals every link, the external system and the SMTP server, gives
    /// every disk its space back, resumes paused processes.
    pub async fn heal_all(&mut self) {
        for s in &mut self.sites {
            s.proxies.iter().for_each(|p| p.heal());
            if let Some(d) = &s.disk {
                d.free();
            }
            if s.proc.paused {
                s.proc.signal("-CONT");
            }
        }
        for c in &mut self.centrals {
            if c.proc.paused {
                c.proc.signal("-CONT");
            }
        }
        self.erp.set_mode(Mode::Ok).await;
        self.smtp.set_mode(SmtpMode::Accept).await;
    }

    /// Stops everything (SIGKILL: the chaos run's data is thrown away).
    pub async fn shutdown(&mut self) {
        for s in &mut self.sites {
            s.proc.kill().await;
        }
        for c in &mut self.centrals {
            c.proc.kill().await;
        }
        for s in &mut self.sites {
            s.disk = None; // unmounts
        }
    }

    /// What each central node says of itself and the sites, and each
    /// process's state, for the report of a failed run.
    pub async fn diagnose(&self) -> Vec<String> {
        let mut out = Vec::new();
        let state = |pid: Option<u32>| {
            pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|r| r.trim().chars().take(1).collect::<String>())
                })
                .unwrap_or_else(|| "gone".into())
        };
        for c in &self.centrals {
            let cluster = self.get(&format!("{}/api/v1/cluster", c.http)).await;
            let sites = self.get(&format!("{}/api/v1/sites", c.http)).await;
            let online: Vec<String> = sites
                .iter()
                .flat_map(|v| v["items"].as_array().cloned().unwrap_or_default())
                .map(|s| format!("{}={}", s["name"], s["online"]))
                .collect();
            out.push(format!(
                "{} (process state {}): active {}, lease {}, sites {}",
                c.proc.name,
                state(c.proc.pid()),
                cluster
                    .as_ref()
                    .map_or(Value::Null, |v| v["this_node_active"].clone()),
                cluster.as_ref().map_or(Value::Null, |v| v["lease"].clone()),
                online.join(" ")
            ));
        }
        for s in &self.sites {
            if let Some(d) = &s.disk {
                let files: Vec<String> = std::fs::read_dir(&d.mount)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| {
                        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                        format!("{} {} KiB", e.file_name().to_string_lossy(), len / 1024)
                    })
                    .collect();
                let df = std::process::Command::new("df")
                    .args(["-k", "--output=used,avail"])
                    .arg(&d.mount)
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .skip(2)
                            .collect::<Vec<_>>()
                            .join(" KiB used, ")
                    })
                    .unwrap_or_default();
                out.push(format!(
                    "{} disk: {df} KiB free; {}",
                    s.name,
                    files.join(", ")
                ));
            }
            let status = self.get(&format!("{}/api/v1/status", s.admin)).await;
            out.push(format!(
                "{} (process state {}): {}",
                s.name,
                state(s.proc.pid()),
                status.map_or("no answer".into(), |v| v.to_string())
            ));
        }
        out
    }

    pub fn logs(&self) -> &Path {
        self.dir.path()
    }
}
