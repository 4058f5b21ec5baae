//! `sitelink chaos [--quick] [--cluster] [--seed N]`: a fault campaign
//! against this build, run by anyone with one command (SPEC §6 under
//! fire). It builds a [`world::World`] of real processes, puts steady
//! script load on every site through its admin API, and injects faults on
//! a seeded random schedule:
//!
//! - SIGKILL of sites (restarted at once) and of central (with
//!   `--cluster`: of the active node of two on PostgreSQL);
//! - SIGSTOP of central (with `--cluster`: of the active node, past its
//!   lease, until the other node is active; then SIGCONT);
//! - links cut, or stalled without closing, by the proxies;
//! - the external system down, answering 503, hanging, or answering 400;
//! - the SMTP server answering 451, or down;
//! - a site's target database locked (an exclusive transaction held);
//! - a site's disk full (its data directory is a size-limited tmpfs).
//!
//! Then it heals everything, waits for the calls to settle and central to
//! converge, and hands what the processes expose to [`checker::check`].
//! It prints a verdict and, last, one JSON line; the seed is printed
//! first, so that `--seed` replays the schedule (the timing of the
//! processes themselves is not replayed).
//!
//! `--soak MINUTES` runs the same world with steady load and no faults,
//! and samples each process's resident memory and open descriptors.

mod checker;
mod world;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rand::{
    rngs::StdRng,
    seq::{IndexedRandom, SliceRandom},
    Rng, SeedableRng,
};
use serde_json::{json, Value};
use sitelink_central::notification_outbox::{COMMIT_EVERY, CONCURRENT_SENDS};
use sitelink_test_support::{Mode, SmtpMode};
use tokio_util::sync::CancellationToken;

use crate::bench::central_world::{BenchDb, Db};
use world::World;

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// A CI-sized run: three sites, 70 faults in about a minute.
    #[arg(long)]
    quick: bool,
    /// Two central nodes on PostgreSQL (a new database on the server
    /// SITELINK_BENCH_POSTGRES_URL names, default the local one); the
    /// active node is the one killed and paused.
    #[arg(long)]
    cluster: bool,
    /// The seed of the fault schedule (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// No faults: steady load for MINUTES, sampling each process's
    /// resident memory and open descriptors.
    #[arg(long, value_name = "MINUTES", conflicts_with = "quick")]
    soak: Option<u64>,
    /// The sites' `[store_and_forward] cache_mib` (default: theirs, 64).
    #[arg(long, value_name = "MIB")]
    site_cache_mib: Option<u32>,
}

/// How many of each fault a run injects.
struct Plan {
    sites: usize,
    site_kills: usize,
    central_kills: usize,
    central_pauses: usize,
    link_faults: usize,
    erp_faults: usize,
    smtp_faults: usize,
    db_locks: usize,
    disk_fills: usize,
    /// Pause between two faults, in ms.
    gap_ms: std::ops::Range<u64>,
}

impl Plan {
    fn quick() -> Self {
        Self {
            sites: 3,
            site_kills: 30,
            central_kills: 3,
            central_pauses: 2,
            link_faults: 16,
            erp_faults: 8,
            smtp_faults: 4,
            db_locks: 4,
            disk_fills: 3,
            gap_ms: 150..600,
        }
    }

    fn full() -> Self {
        Self {
            sites: 4,
            site_kills: 120,
            central_kills: 12,
            central_pauses: 4,
            link_faults: 60,
            erp_faults: 25,
            smtp_faults: 12,
            db_locks: 12,
            disk_fills: 8,
            gap_ms: 200..900,
        }
    }

    /// The faults in a seeded random order.
    fn schedule(&self, rng: &mut StdRng) -> Vec<Fault> {
        let n = self.sites;
        let mut v = Vec::new();
        v.extend((0..self.site_kills).map(|_| Fault::KillSite(rng.random_range(0..n))));
        v.extend((0..self.central_kills).map(|_| Fault::KillCentral));
        v.extend((0..self.central_pauses).map(|_| Fault::PauseCentral));
        v.extend((0..self.link_faults).map(|_| {
            let i = rng.random_range(0..n);
            if rng.random_bool(0.5) {
                Fault::CutLink(i)
            } else {
                Fault::StallLink(i)
            }
        }));
        v.extend((0..self.erp_faults).map(|_| {
            Fault::Erp(
                *[Mode::Down, Mode::Unavailable, Mode::Hang, Mode::BadRequest]
                    .choose(rng)
                    .expect("not empty"),
            )
        }));
        v.extend((0..self.smtp_faults).map(|_| {
            Fault::Smtp(if rng.random_bool(0.5) {
                SmtpMode::RejectRecipients(451, "4.3.0 try again later".into())
            } else {
                SmtpMode::Down
            })
        }));
        v.extend((0..self.db_locks).map(|_| Fault::LockDb(rng.random_range(0..n))));
        v.extend((0..self.disk_fills).map(|_| Fault::FillDisk(rng.random_range(0..n))));
        v.shuffle(rng);
        v
    }
}

#[derive(Clone, Debug)]
enum Fault {
    KillSite(usize),
    KillCentral,
    PauseCentral,
    CutLink(usize),
    StallLink(usize),
    Erp(Mode),
    Smtp(SmtpMode),
    LockDb(usize),
    FillDisk(usize),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::KillSite(_) => "site_kill",
            Fault::KillCentral => "central_kill",
            Fault::PauseCentral => "central_pause",
            Fault::CutLink(_) => "link_cut",
            Fault::StallLink(_) => "link_stall",
            Fault::Erp(_) => "external_system",
            Fault::Smtp(_) => "smtp",
            Fault::LockDb(_) => "database_locked",
            Fault::FillDisk(_) => "disk_full",
        }
    }
}

/// What the load saw: every id handed back, and how runs failed.
#[derive(Default)]
struct Load {
    handed: BTreeSet<String>,
    runs_ok: u64,
    runs_failed: u64,
    /// Failed runs by the first words of their error.
    errors: BTreeMap<String, u64>,
}

/// One client per site: runs the load script through the admin API, one
/// run after another with a short random pause, until cancelled.
fn spawn_load(
    world: &World,
    load: &Arc<Mutex<Load>>,
    pause_ms: std::ops::Range<u64>,
    cancel: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for s in &world.sites {
        let url = format!("{}/api/v1/scripts/load/run", s.admin);
        let (http, load, cancel, pause_ms) = (
            world.http.clone(),
            load.clone(),
            cancel.clone(),
            pause_ms.clone(),
        );
        set.spawn(async move {
            while !cancel.is_cancelled() {
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .send()
                    .await;
                match sent {
                    // The site is down (killed): try again shortly.
                    Err(_) => {}
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        let mut l = load.lock().unwrap();
                        for id in body["tracked_operation_ids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            if let Some(id) = id.as_str() {
                                l.handed.insert(id.to_owned());
                            }
                        }
                        if ok {
                            l.runs_ok += 1;
                        } else {
                            l.runs_failed += 1;
                            let e = body["error"].as_str().unwrap_or("(no error text)");
                            let key: String = e.chars().take(90).collect();
                            if l.errors.len() < 40 || l.errors.contains_key(&key) {
                                *l.errors.entry(key).or_default() += 1;
                            }
                        }
                    }
                }
                let ms = rand::rng().random_range(pause_ms.clone());
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                }
            }
        });
    }
    set
}

/// Central's rows as read during the run: each read of an id whose
/// (revision, status) differs from the last read of it.
type Samples = Arc<Mutex<Vec<(String, u64, String)>>>;

/// Reads the newest 1,000 rows of each site at central, every `every`,
/// from whichever node answers, until cancelled.
fn spawn_sampler(
    world: &World,
    every: Duration,
    cancel: &CancellationToken,
) -> (Samples, tokio::task::JoinHandle<()>) {
    let samples: Samples = Default::default();
    let nodes: Vec<String> = world.centrals.iter().map(|c| c.http.clone()).collect();
    let sites: Vec<String> = world.sites.iter().map(|s| s.name.clone()).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a client");
    let (out, cancel) = (samples.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        let mut last: HashMap<String, (u64, String)> = HashMap::new();
        while !cancel.is_cancelled() {
            for site in &sites {
                for node in &nodes {
                    let Ok(r) = http
                        .get(format!("{node}/api/v1/site-calls?site={site}&limit=1000"))
                        .basic_auth("admin", Some(world::PASSWORD))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let Ok(page) = r.json::<Value>().await else {
                        continue;
                    };
                    let mut out = out.lock().unwrap();
                    for row in page["items"].as_array().into_iter().flatten() {
                        let id = row["tracked_operation_id"].as_str().unwrap_or_default();
                        let rev = row["revision"].as_u64().unwrap_or_default();
                        let status = row["status"].as_str().unwrap_or_default();
                        if last.get(id).is_none_or(|(r, s)| *r != rev || s != status) {
                            last.insert(id.to_owned(), (rev, status.to_owned()));
                            out.push((id.to_owned(), rev, status.to_owned()));
                        }
                    }
                    break;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    });
    (samples, task)
}

/// Generations of the faults on shared resources: a timed heal heals only
/// if no later fault (or a central fault, for the links) took the resource
/// since.
#[derive(Clone, Default)]
struct Generations(Arc<Mutex<HashMap<String, u64>>>);

impl Generations {
    fn bump(&self, key: &str) -> u64 {
        let mut m = self.0.lock().unwrap();
        let g = m.entry(key.to_owned()).or_default();
        *g += 1;
        *g
    }

    fn current(&self, key: &str, gen: u64) -> bool {
        self.0.lock().unwrap().get(key) == Some(&gen)
    }

    /// After `hold`, runs `heal` unless a later fault took `key` since: the
    /// timed end of a fault on a shared resource.
    fn heal_after(
        &self,
        heals: &mut tokio::task::JoinSet<()>,
        key: String,
        hold: Duration,
        heal: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let gen = self.bump(&key);
        let gens = self.clone();
        heals.spawn(async move {
            tokio::time::sleep(hold).await;
            if gens.current(&key, gen) {
                heal.await;
            }
        });
    }
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if let Some(minutes) = args.soak {
        return soak(minutes, args.cluster, args.site_cache_mib).await;
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("chaos: seed {seed} (replay the schedule with --seed {seed})");
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let schedule = plan.schedule(&mut rng);

    let started = Instant::now();
    let db = BenchDb::new(if args.cluster {
        Db::Postgres
    } else {
        Db::Sqlite
    })
    .await
    .context("creating central's database")?;
    let extra = site_extra(args.site_cache_mib);
    let mut world = World::build(
        &db.url,
        if args.cluster { 2 } else { 1 },
        plan.sites,
        &extra,
    )
    .await?;
    println!("chaos: processes' logs in {}", world.logs().display());
    if let Some(why) = &world.no_disk {
        println!(
            "chaos: no size-limited disk for the sites ({why}); the disk-full faults are skipped"
        );
    }
    world.start().await?;
    world.until_streaming(Duration::from_secs(60)).await?;

    let cancel = CancellationToken::new();
    let load: Arc<Mutex<Load>> = Default::default();
    let mut loaders = spawn_load(&world, &load, 50..250, &cancel);
    let sample_cancel = CancellationToken::new();
    let (samples, sampler) = spawn_sampler(&world, Duration::from_millis(500), &sample_cancel);

    let outcome = campaign(&mut world, &schedule, &plan, &mut rng).await;

    // Heal everything; let the calls settle and central converge.
    cancel.cancel();
    while loaders.join_next().await.is_some() {}
    let campaign = match outcome {
        Ok(c) => c,
        Err(e) => {
            for line in world.diagnose().await {
                println!("chaos: {line}");
            }
            if args.cluster {
                for line in sessions(&db.url).await {
                    println!("chaos: {line}");
                }
            }
            let dir = std::mem::replace(&mut world.dir, tempfile::tempdir()?);
            world.shutdown().await;
            let kept = dir.keep();
            anyhow::bail!(
                "{e:#} (seed {seed}; the processes' logs are in {})",
                kept.display()
            );
        }
    };
    world.heal_all().await;
    println!(
        "chaos: {} faults in {:.0} s; healing",
        schedule.len(),
        started.elapsed().as_secs_f64()
    );
    let observed = settle_and_observe(&world, &load, &campaign).await;
    sample_cancel.cancel();
    let _ = sampler.await;
    let mut observed = observed?;
    observed.samples = std::mem::take(&mut *samples.lock().unwrap());
    let findings = checker::check(&observed);

    let load = std::mem::take(&mut *load.lock().unwrap());
    for (error, n) in &load.errors {
        println!("chaos: {n} runs failed with: {error}");
    }
    let failures = findings.failures();
    let passed = findings.passed();
    if passed {
        println!("chaos: PASSED — every SPEC §6 guarantee held (seed {seed})");
    } else {
        println!(
            "chaos: FAILED (seed {seed}; logs kept in {})",
            world.logs().display()
        );
        for f in &failures {
            println!("chaos:   {f}");
        }
    }
    let out = json!({
        "chaos": if args.cluster { "cluster" } else { "single" },
        "quick": args.quick,
        "seed": seed,
        "passed": passed,
        "kills": campaign.counts.get("site_kill").copied().unwrap_or(0)
            + campaign.counts.get("central_kill").copied().unwrap_or(0),
        "faults": campaign.counts,
        "ids": observed.handed.len(),
        "runs_ok": load.runs_ok,
        "runs_failed": load.runs_failed,
        "lost_ids": findings.lost_ids.len(),
        "effects_without_row": findings.effects_without_row.len(),
        "divergent_rows": findings.divergent_rows.len(),
        "regressions": findings.regressions.len(),
        "kpi_mismatches": findings.kpi_mismatches.len(),
        "unmailed": findings.unmailed.len(),
        "unsettled": findings.unsettled.len(),
        "duplicate_mails": findings.duplicate_mails,
        "duplicate_bound": findings.duplicate_bound,
        "failover_max_s": campaign.failovers.iter().cloned().fold(0.0, f64::max),
        "site_restart_refusals": campaign.restart_refusals,
        "disk_full": world.no_disk.as_ref().map_or("tmpfs".to_owned(), |w| format!("skipped: {w}")),
        "seconds": started.elapsed().as_secs_f64().round(),
    });
    if passed {
        world.shutdown().await;
        db.drop_database().await;
    } else {
        // Kept for reading: the processes stop, their logs stay.
        let dir = std::mem::replace(&mut world.dir, tempfile::tempdir()?);
        world.shutdown().await;
        let _ = dir.keep();
    }
    println!("{out}");
    anyhow::ensure!(passed, "the chaos run found {}", failures.join("; "));
    Ok(())
}

/// What the fault campaign did.
#[derive(Default)]
struct Campaign {
    counts: BTreeMap<&'static str, usize>,
    /// Fault → every site streaming to an active node, per central fault.
    failovers: Vec<f64>,
    /// Central kills and pauses: each may leave a mail in flight.
    mail_faults: usize,
    /// Site starts refused (for instance on a full disk) and tried again.
    restart_refusals: usize,
}

async fn campaign(
    world: &mut World,
    schedule: &[Fault],
    plan: &Plan,
    rng: &mut StdRng,
) -> anyhow::Result<Campaign> {
    let mut c = Campaign::default();
    let gens = Generations::default();
    let mut heals = tokio::task::JoinSet::new();
    let every = (schedule.len() / 10).max(1);
    // Every fault with its time, beside the processes' logs.
    let mut journal = std::fs::File::create(world.logs().join("faults.log"))?;
    let begun = Instant::now();
    for (n, fault) in schedule.iter().enumerate() {
        let gap = rng.random_range(plan.gap_ms.clone());
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let hold = Duration::from_millis(rng.random_range(200..2500));
        {
            use std::io::Write as _;
            let _ = writeln!(
                journal,
                "{:>8.3} s  {fault:?} (held {hold:?}) at {}",
                begun.elapsed().as_secs_f64(),
                time::OffsetDateTime::now_utc()
            );
        }
        match fault.clone() {
            Fault::FillDisk(_) if world.no_disk.is_some() => continue,
            Fault::KillSite(i) => {
                let s = &mut world.sites[i];
                s.proc.kill().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
                let deadline = Instant::now() + Duration::from_secs(60);
                while let Err(e) = s.proc.start().await {
                    c.restart_refusals += 1;
                    anyhow::ensure!(Instant::now() < deadline, "{e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Fault::KillCentral | Fault::PauseCentral => {
                // A clean measure: links whole, every site streaming (the
                // links' pending heals are void; a full disk's stays due).
                for (i, s) in world.sites.iter().enumerate() {
                    gens.bump(&format!("link-{i}"));
                    s.proxies.iter().for_each(|p| p.heal());
                }
                let k = world.until_streaming(Duration::from_secs(60)).await?;
                let at = Instant::now();
                c.mail_faults += 1;
                if matches!(fault, Fault::KillCentral) {
                    world.centrals[k].proc.kill().await;
                    if !world.cluster {
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
                        world.centrals[k].proc.start().await?;
                    }
                    let now = world.until_streaming(Duration::from_secs(60)).await?;
                    c.failovers.push(at.elapsed().as_secs_f64());
                    println!(
                        "chaos: SIGKILL of {}: every site streams to {} after {:.2} s",
                        world.centrals[k].proc.name,
                        world.centrals[now].proc.name,
                        at.elapsed().as_secs_f64()
                    );
                    if world.cluster {
                        world.centrals[k].proc.start().await?; // back as standby
                    }
                } else if world.cluster {
                    // Past its lease: until the other node is active.
                    world.centrals[k].proc.signal("-STOP");
                    let other = world.until_streaming(Duration::from_secs(60)).await?;
                    anyhow::ensure!(other != k, "the paused node stayed active");
                    c.failovers.push(at.elapsed().as_secs_f64());
                    println!(
                        "chaos: SIGSTOP of {}: every site streams to {} after {:.2} s",
                        world.centrals[k].proc.name,
                        world.centrals[other].proc.name,
                        at.elapsed().as_secs_f64()
                    );
                    world.centrals[k].proc.signal("-CONT");
                } else {
                    // A lone node stalls briefly (no one to take over).
                    world.centrals[k].proc.signal("-STOP");
                    tokio::time::sleep(hold).await;
                    world.centrals[k].proc.signal("-CONT");
                    world.until_streaming(Duration::from_secs(60)).await?;
                    c.failovers.push(at.elapsed().as_secs_f64());
                }
            }
            Fault::CutLink(i) | Fault::StallLink(i) => {
                let proxies = world.sites[i].proxies.clone();
                for p in &proxies {
                    if matches!(fault, Fault::CutLink(_)) {
                        p.cut()
                    } else {
                        p.pause()
                    }
                }
                // A stall outlasts the link's keepalive now and then.
                let hold = if matches!(fault, Fault::StallLink(_)) {
                    hold * 3
                } else {
                    hold
                };
                gens.heal_after(&mut heals, format!("link-{i}"), hold, async move {
                    proxies.iter().for_each(|p| p.heal());
                });
            }
            Fault::Erp(mode) => {
                world.erp.set_mode(mode).await;
                let erp = world.erp.clone();
                gens.heal_after(&mut heals, "erp".into(), hold, async move {
                    erp.set_mode(Mode::Ok).await;
                });
            }
            Fault::Smtp(mode) => {
                world.smtp.set_mode(mode).await;
                let smtp = world.smtp.clone();
                gens.heal_after(&mut heals, "smtp".into(), hold, async move {
                    smtp.set_mode(SmtpMode::Accept).await;
                });
            }
            Fault::LockDb(i) => {
                let path = world.sites[i].target_db.clone();
                heals.spawn(async move {
                    let _ = tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
                        let conn = rusqlite::Connection::open(path)?;
                        conn.execute_batch("BEGIN EXCLUSIVE")?;
                        // The fault itself: the lock is held this long.
                        std::thread::sleep(hold);
                        conn.execute_batch("ROLLBACK")
                    })
                    .await;
                });
            }
            Fault::FillDisk(i) => {
                let disk = world.sites[i].disk.clone().expect("mounted");
                let d = disk.clone();
                tokio::task::spawn_blocking(move || d.fill()).await??;
                gens.heal_after(&mut heals, format!("disk-{i}"), hold, async move {
                    disk.free();
                });
            }
        }
        *c.counts.entry(fault.kind()).or_default() += 1;
        if (n + 1) % every == 0 {
            println!("chaos: {}/{} faults", n + 1, schedule.len());
        }
    }
    heals.abort_all();
    while heals.join_next().await.is_some() {}
    Ok(c)
}

/// After healing: waits until no site call is open, then until central
/// equals every site and has mailed every notification (each at most
/// `deadline`); reads what the checker needs.
async fn settle_and_observe(
    world: &World,
    load: &Arc<Mutex<Load>>,
    campaign: &Campaign,
) -> anyhow::Result<checker::Observed> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut o = checker::Observed {
        handed: load.lock().unwrap().handed.clone(),
        mail_faults: campaign.mail_faults,
        duplicates_per_fault: duplicates_per_fault(),
        ..Default::default()
    };
    loop {
        o.site_rows.clear();
        o.central_rows.clear();
        let active = world.until_streaming(Duration::from_secs(60)).await?;
        let central = &world.centrals[active].http;
        for s in &world.sites {
            o.site_rows.insert(
                s.name.clone(),
                world
                    .list_all(&format!("{}/api/v1/operations", s.admin))
                    .await?,
            );
            o.central_rows.insert(
                s.name.clone(),
                world
                    .list_all(&format!("{central}/api/v1/site-calls?site={}", s.name))
                    .await?,
            );
        }
        o.notifications = world
            .list_all(&format!("{central}/api/v1/notifications"))
            .await?;
        o.kpis = world
            .get(&format!("{central}/api/v1/kpis/site-calls"))
            .await
            .unwrap_or(Value::Null);
        o.idempotency_keys = world
            .erp
            .requests()
            .into_iter()
            .filter_map(|r| r.idempotency_key)
            .collect();
        o.mails.clear();
        for m in world.smtp.mails() {
            if let Some(id) = m
                .header("Message-ID")
                .and_then(|h| h.trim().strip_prefix('<').map(str::to_owned))
                .and_then(|h| h.strip_suffix("@sitelink>").map(str::to_owned))
            {
                *o.mails.entry(id).or_default() += 1;
            }
        }
        let f = checker::check(&o);
        if (f.passed() && f.regressions.is_empty()) || Instant::now() > deadline {
            return Ok(o);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The database sessions of central's database and the locks they hold or
/// wait for (PostgreSQL), for the report of a failed run.
async fn sessions(url: &str) -> Vec<String> {
    use sqlx::{Connection, Row};
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return vec!["cannot connect to central's database".into()];
    };
    let rows = sqlx::query(
        "SELECT a.pid, a.application_name, a.client_port, a.state, coalesce(a.wait_event_type, ''),
                coalesce(a.wait_event, ''), coalesce(extract(epoch FROM now() - a.xact_start)::float8, -1),
                left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120),
                coalesce((SELECT string_agg(l.locktype || ':' || l.mode || ':' || l.granted || ':' || coalesce(l.objid::text, ''), ' ')
                          FROM pg_locks l WHERE l.pid = a.pid AND l.locktype <> 'virtualxid'), ''),
                pg_blocking_pids(a.pid)::text
         FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|r| {
            format!(
                "pg session {} port {} {} wait {}:{} xact {:.1}s blocked by {} locks [{}] {}",
                r.get::<i32, _>(0),
                r.get::<Option<i32>, _>(2).unwrap_or(0),
                r.get::<Option<String>, _>(3).unwrap_or_default(),
                r.get::<String, _>(4),
                r.get::<String, _>(5),
                r.get::<f64, _>(6),
                r.get::<Option<String>, _>(9).unwrap_or_default(),
                r.get::<String, _>(8),
                r.get::<Option<String>, _>(7).unwrap_or_default(),
            )
        })
        .collect()
}

/// The documented bound of duplicate mails per central fault (SPEC §6.8,
/// as `outbox_crash.rs` derives it): the sends in flight, plus those that
/// ended within one commit interval and one commit (allowed 10 ms here),
/// `CONCURRENT_SENDS` at a time, each taking the sink's relay time.
fn duplicates_per_fault() -> usize {
    let window =
        (COMMIT_EVERY + Duration::from_millis(10)).as_millis() / world::SMTP_RELAY.as_millis();
    CONCURRENT_SENDS * (1 + window as usize)
}

/// What the sites' site.toml gets beyond the world's own sections.
fn site_extra(cache_mib: Option<u32>) -> String {
    cache_mib.map_or(String::new(), |m| {
        format!("[store_and_forward]\ncache_mib = {m}\n")
    })
}

/// One sample of one process in the soak run.
#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    /// The anonymous part of it (heap, stacks, SQLite's caches): what a
    /// leak grows. The rest is file pages (the binary's code as it is
    /// touched, mapped files), which the kernel may drop.
    anon_kib: u64,
    fds: u64,
}

/// `RssAnon` of `pid`, in KiB.
fn anon_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The size of the files under `dir` (a site's data, central's database).
fn du(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// `--soak MINUTES`: the world with steady load and no faults. Every 10 s
/// it samples each process's resident memory and open descriptors; after the warm-up (a sixth of the run, 2–5 minutes) it
/// compares the first and the last minute. Goal (issue 23): resident
/// memory grows at most 10 % over 30 minutes, descriptors not at all.
async fn soak(minutes: u64, cluster: bool, cache_mib: Option<u32>) -> anyhow::Result<()> {
    anyhow::ensure!(
        minutes >= 3,
        "--soak needs at least 3 minutes (2 of them warm-up)"
    );
    let started = Instant::now();
    let db = BenchDb::new(if cluster { Db::Postgres } else { Db::Sqlite }).await?;
    let mut world = World::build(
        &db.url,
        if cluster { 2 } else { 1 },
        2,
        &site_extra(cache_mib),
    )
    .await?;
    world.start().await?;
    world.until_streaming(Duration::from_secs(60)).await?;
    let cancel = CancellationToken::new();
    let load: Arc<Mutex<Load>> = Default::default();
    let mut loaders = spawn_load(&world, &load, 100..300, &cancel);
    let warm_up = Duration::from_secs((minutes * 60 / 6).clamp(120, 300));
    let total = Duration::from_secs(minutes * 60);
    let mut series: BTreeMap<String, Vec<(f64, Sample)>> = BTreeMap::new();
    let central_db = db
        .url
        .strip_prefix("sqlite://")
        .map(std::path::PathBuf::from);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = started.elapsed().as_secs_f64();
        for c in &world.centrals {
            let Some(pid) = c.proc.pid() else { continue };
            let s = Sample {
                rss_kib: sitelink_test_support::flood::rss_kib(pid).unwrap_or(0),
                anon_kib: anon_kib(pid).unwrap_or(0),
                fds: fds(pid).unwrap_or(0),
            };
            series.entry(c.proc.name.clone()).or_default().push((t, s));
        }
        for site in &world.sites {
            let Some(pid) = site.proc.pid() else { continue };
            let s = Sample {
                rss_kib: sitelink_test_support::flood::rss_kib(pid).unwrap_or(0),
                anon_kib: anon_kib(pid).unwrap_or(0),
                fds: fds(pid).unwrap_or(0),
            };
            series.entry(site.name.clone()).or_default().push((t, s));
        }
        if (t as u64) % 60 < 10 {
            let line: Vec<String> = series
                .iter()
                .map(|(n, v)| {
                    let s = v.last().expect("just pushed").1;
                    format!(
                        "{n} {:.1} MB ({:.1} MB anonymous) {} fds",
                        s.rss_kib as f64 / 1024.0,
                        s.anon_kib as f64 / 1024.0,
                        s.fds
                    )
                })
                .collect();
            println!("soak {:>4.0} s: {}", t, line.join("; "));
        }
    }
    cancel.cancel();
    while loaders.join_next().await.is_some() {}

    // First and last minute after the warm-up, by medians; the growth is
    // scaled to 30 minutes.
    let measured_min = (total - warm_up).as_secs_f64() / 60.0;
    let end = total.as_secs_f64();
    let w = warm_up.as_secs_f64();
    let mut processes = serde_json::Map::new();
    let mut passed = true;
    for (name, v) in &series {
        let first: Vec<Sample> = v
            .iter()
            .filter(|(t, _)| *t >= w && *t < w + 60.0)
            .map(|x| x.1)
            .collect();
        let last: Vec<Sample> = v
            .iter()
            .filter(|(t, _)| *t >= end - 60.0)
            .map(|x| x.1)
            .collect();
        let rss0 = median_u64(first.iter().map(|s| s.rss_kib).collect());
        let rss1 = median_u64(last.iter().map(|s| s.rss_kib).collect());
        let anon0 = median_u64(first.iter().map(|s| s.anon_kib).collect());
        let anon1 = median_u64(last.iter().map(|s| s.anon_kib).collect());
        let anon_growth =
            (anon1 as f64 - anon0 as f64) / anon0.max(1) as f64 * 100.0 * 30.0 / measured_min;
        // By medians, like memory: one HTTP connection open at the moment
        // of a sample is not a leak; a descriptor that stays is.
        let fd0 = median_u64(first.iter().map(|s| s.fds).collect());
        let fd1 = median_u64(last.iter().map(|s| s.fds).collect());
        let growth = (rss1 as f64 - rss0 as f64) / rss0.max(1) as f64 * 100.0 * 30.0 / measured_min;
        let ok = growth <= 10.0 && fd1 <= fd0;
        passed &= ok;
        processes.insert(
            name.clone(),
            json!({
                "rss_mb": [rss0 as f64 / 1024.0, rss1 as f64 / 1024.0],
                "rss_growth_pct_per_30min": (growth * 10.0).round() / 10.0,
                "anon_mb": [anon0 as f64 / 1024.0, anon1 as f64 / 1024.0],
                "anon_growth_pct_per_30min": (anon_growth * 10.0).round() / 10.0,
                "fds": [fd0, fd1],
                "goals_met": ok,
            }),
        );
    }
    let data: serde_json::Map<String, Value> = world
        .sites
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                json!(du(&world.dir.path().join(&s.name).join("data")) / 1024),
            )
        })
        .chain(central_db.map(|p| {
            (
                "central".to_owned(),
                json!(du(p.parent().unwrap_or(&p)) / 1024),
            )
        }))
        .collect();
    let l = std::mem::take(&mut *load.lock().unwrap());
    let out = json!({
        "soak": if cluster { "cluster" } else { "single" },
        "minutes": minutes,
        "site_cache_mib": cache_mib.unwrap_or(64),
        "warm_up_s": warm_up.as_secs(),
        "runs_ok": l.runs_ok,
        "runs_failed": l.runs_failed,
        "ids": l.handed.len(),
        "data_kib": data,
        "processes": processes,
        "goal": "resident memory grows at most 10 % per 30 minutes after warm-up; descriptors not at all",
        "goals_met": passed,
    });
    world.shutdown().await;
    db.drop_database().await;
    println!("{out}");
    Ok(())
}
