//! `sitelink bench cached-call`: what durability costs a script.
//!
//! In one process: an HTTP receiver (axum, answers 200 `{}`), a closed port
//! as the down target, and a site gateway with a real Store-and-Forward
//! Engine (SQLite WAL, every commit fdatasynced before it is answered, as
//! with synchronous=FULL) in a temporary folder. For
//! concurrency 1 and 64 it measures calls/s and p50/p99 latency of
//! - `plain`: `ExternalSystem.Call` (the baseline),
//! - `cached_ok`: `CachedCall` that succeeds at once (Pending row committed
//!   before the attempt, Delivered after it; each task holds a
//!   `PendingCommits` like a script run and settles it in the round's time),
//! - `cached_down`: `CachedCall` to a down target (Pending row, buffered),
//!
//! in rounds that alternate the scenarios, and reports medians over rounds.
//! Goals (issue 2): `cached_vs_plain_ratio` ≥ 0.5 at concurrency 64 and
//! `commits_per_call` ≤ 0.15 at concurrency 64.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Map, Value};
use sitelink_site::{
    external_system_gateway::{database::Databases, http::HttpSystems, Gateway},
    store_and_forward::{Engine, EngineSettings, PendingCommits},
};

use super::{median, quantile_ms};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Scenario {
    Plain,
    CachedOk,
    CachedDown,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::CachedOk => "cached_ok",
            Scenario::CachedDown => "cached_down",
        }
    }
}

struct Round {
    calls: u64,
    calls_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// SQLite commits per call in this round (0 for plain).
    commits_per_call: f64,
    /// What bound it (see [`Binding`]).
    binding: Binding,
}

/// Where a round's time went: the engine's write work as a fraction of the
/// wall time (`writer_busy_fraction`), split into applying statements (the
/// writer thread: SQLite CPU) and COMMIT (writing the WAL frames, done by
/// the syncer thread before its fsync), the fraction in fsync (the syncer;
/// it overlaps the writer's statements), writes per commit, fsyncs per
/// call, and the process's CPU per call (callers, runtime, both threads).
#[derive(Clone, Copy, Debug, Default)]
struct Binding {
    writer_busy_fraction: f64,
    writer_statements_fraction: f64,
    writer_commit_fraction: f64,
    sync_busy_fraction: f64,
    writes_per_commit: f64,
    syncs_per_call: f64,
    process_cpu_us_per_call: f64,
}

/// CPU time of this process so far (user + system), from /proc.
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces).
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: u64 = rest.get(11)?.parse().ok()?;
            let stime: u64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// The CPU model and core count.
fn machine() -> (String, usize) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    (
        model,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
}

/// Median latency of writing 4 KiB and fsyncing it, in `dir`, over 200
/// writes (what each group commit pays at least once).
fn fsync_latency_us(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    std::fs::remove_file(&path)?;
    Ok(median(&times))
}

/// The receiver answers 200 `{}` and counts requests, so the run can check
/// that every call it timed really reached it.
async fn receiver(count: Arc<AtomicU64>) -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().fallback(move || {
        count.fetch_add(1, Ordering::Relaxed);
        async { axum::Json(json!({})) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn system(
    url: &str,
) -> anyhow::Result<sitelink_site::external_system_gateway::ExternalSystemConfig> {
    Ok(toml::from_str(&format!(
        r#"base_url = "{url}"
           timeout_ms = 5000
           retry = {{ interval_ms = 3600000, max_interval_ms = 3600000, max_retries = 5 }}
           methods.post = {{ http_method = "POST", path = "/orders" }}"#
    ))?)
}

async fn round(
    gw: &Arc<Gateway>,
    scenario: Scenario,
    concurrency: usize,
    dur: Duration,
) -> anyhow::Result<Round> {
    let (commits0, ops0) = gw.engine().commit_stats();
    let (time0, syncs0) = (gw.engine().writer_time(), gw.engine().syncs());
    let cpu0 = process_cpu();
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let gw = gw.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut params = Map::new();
            params.insert("order".into(), Value::from(42));
            // Each task is like one script run calling in a loop: its
            // writes not waited for are settled when it ends (in the
            // round's time).
            let mut pending = PendingCommits::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match scenario {
                    Scenario::Plain => gw.call("up", "post", params.clone()).await.is_ok(),
                    Scenario::CachedOk => gw
                        .cached_call_in(
                            "up",
                            "post",
                            params.clone(),
                            "bench/cached_ok",
                            &mut pending,
                        )
                        .await
                        .is_ok(),
                    Scenario::CachedDown => gw
                        .cached_call_in(
                            "down",
                            "post",
                            params.clone(),
                            "bench/cached_down",
                            &mut pending,
                        )
                        .await
                        .is_ok(),
                };
                anyhow::ensure!(ok, "{} call failed", scenario.name());
                lat.push(t.elapsed());
            }
            pending.settle().await?;
            Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let (commits1, ops1) = gw.engine().commit_stats();
    let (time1, syncs1) = (gw.engine().writer_time(), gw.engine().syncs());
    let cpu = (process_cpu() - cpu0).as_secs_f64();
    let wall_ns = elapsed * 1e9;
    let statements = (time1.statements_ns - time0.statements_ns) as f64 / wall_ns;
    let committing = (time1.commit_ns - time0.commit_ns) as f64 / wall_ns;
    let binding = Binding {
        writer_busy_fraction: statements + committing,
        writer_statements_fraction: statements,
        writer_commit_fraction: committing,
        sync_busy_fraction: (time1.sync_ns - time0.sync_ns) as f64 / wall_ns,
        writes_per_commit: (ops1 - ops0) as f64 / (commits1 - commits0).max(1) as f64,
        syncs_per_call: (syncs1 - syncs0) as f64 / lat.len().max(1) as f64,
        process_cpu_us_per_call: cpu * 1e6 / lat.len().max(1) as f64,
    };
    Ok(Round {
        binding,
        calls: lat.len() as u64,
        calls_per_second: lat.len() as f64 / elapsed,
        p50_ms: quantile_ms(&lat, 0.5),
        p99_ms: quantile_ms(&lat, 0.99),
        commits_per_call: (commits1 - commits0) as f64 / lat.len().max(1) as f64,
    })
}

pub async fn run(size: super::Size) -> anyhow::Result<()> {
    let (rounds, dur) = size.pick(
        (5, Duration::from_secs(5)),
        (3, Duration::from_millis(1500)),
        (1, Duration::from_millis(200)),
    );
    let received = Arc::new(AtomicU64::new(0));
    let up = receiver(received.clone()).await?;
    let mut calls_to_up = 0u64;
    // A port bound but never listened on: connections are refused, and
    // no other process can take it (and answer) while the bench runs.
    let down_socket = tokio::net::TcpSocket::new_v4()?;
    down_socket.bind("127.0.0.1:0".parse()?)?;
    let down = down_socket.local_addr()?;
    let dir = tempfile::tempdir()?;
    // The data directory's fsync latency, measured before anything runs.
    let fsync_us = fsync_latency_us(dir.path())?;
    println!("fsync of a 4 KiB write in the data directory: median {fsync_us:.0} µs");
    let engine = Engine::open(
        &dir.path().join("buffer.db"),
        "bench",
        EngineSettings::default(),
    )
    .await?;
    let mut systems = BTreeMap::new();
    systems.insert("up".to_owned(), system(&format!("http://{up}"))?);
    systems.insert("down".to_owned(), system(&format!("http://{down}"))?);
    let gw = Gateway::new(
        HttpSystems::new(&systems)?,
        Databases::new(&BTreeMap::new())?,
        engine,
        sitelink_site::external_system_gateway::recovery::RecoveryWatch::new(BTreeMap::new()),
    );

    let mut out = serde_json::Map::new();
    out.insert("bench".into(), "cached-call".into());
    out.insert("quick".into(), size.quick().into());
    out.insert("rounds".into(), rounds.into());
    out.insert("round_seconds".into(), dur.as_secs_f64().into());
    // The engine's writer runs synchronous=NORMAL and its syncer thread
    // fdatasyncs the WAL after every commit before answering: FULL's
    // durability (see store_and_forward/writer.rs).
    out.insert("synchronous".into(), "NORMAL+fdatasync per commit".into());
    for concurrency in [1usize, 64] {
        let mut per: BTreeMap<Scenario, Vec<Round>> = BTreeMap::new();
        // Warm-up (connections, page cache), not counted.
        for s in [Scenario::Plain, Scenario::CachedOk, Scenario::CachedDown] {
            let r = round(&gw, s, concurrency, Duration::from_millis(200)).await?;
            calls_to_up += if s == Scenario::CachedDown {
                0
            } else {
                r.calls
            };
        }
        for _ in 0..rounds {
            for s in [Scenario::Plain, Scenario::CachedOk, Scenario::CachedDown] {
                let r = round(&gw, s, concurrency, dur).await?;
                calls_to_up += if s == Scenario::CachedDown {
                    0
                } else {
                    r.calls
                };
                per.entry(s).or_default().push(r);
            }
        }
        let mut level = serde_json::Map::new();
        for (s, rs) in &per {
            let cps = median(&rs.iter().map(|r| r.calls_per_second).collect::<Vec<_>>());
            let p50 = median(&rs.iter().map(|r| r.p50_ms).collect::<Vec<_>>());
            let p99 = median(&rs.iter().map(|r| r.p99_ms).collect::<Vec<_>>());
            let cpc = median(&rs.iter().map(|r| r.commits_per_call).collect::<Vec<_>>());
            println!(
                "concurrency {concurrency:>2} {:<12} {cps:>9.0} calls/s  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  commits/call {cpc:.3}",
                s.name()
            );
            let b = |f: fn(&Binding) -> f64| {
                median(&rs.iter().map(|r| f(&r.binding)).collect::<Vec<_>>())
            };
            level.insert(
                s.name().into(),
                json!({ "calls_per_second": cps, "p50_ms": p50, "p99_ms": p99, "commits_per_call": cpc,
                        "writer_busy_fraction": b(|b| b.writer_busy_fraction),
                        "writer_statements_fraction": b(|b| b.writer_statements_fraction),
                        "writer_commit_fraction": b(|b| b.writer_commit_fraction),
                        "sync_busy_fraction": b(|b| b.sync_busy_fraction),
                        "writes_per_commit": b(|b| b.writes_per_commit),
                        "syncs_per_call": b(|b| b.syncs_per_call),
                        "process_cpu_us_per_call": b(|b| b.process_cpu_us_per_call) }),
            );
        }
        let plain = level["plain"]["calls_per_second"].as_f64().unwrap_or(0.0);
        let cached = level["cached_ok"]["calls_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let down = level["cached_down"]["calls_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        level.insert("cached_vs_plain_ratio".into(), (cached / plain).into());
        level.insert("cached_down_vs_plain_ratio".into(), (down / plain).into());
        out.insert(format!("concurrency_{concurrency}"), Value::Object(level));
    }
    let got = received.load(Ordering::Relaxed);
    anyhow::ensure!(
        got == calls_to_up,
        "the receiver saw {got} requests for {calls_to_up} successful calls"
    );
    out.insert("requests_received".into(), got.into());
    let (model, cores) = machine();
    out.insert(
        "machine".into(),
        json!({ "cpu": model, "cores": cores, "fsync_4k_us_median": fsync_us }),
    );
    let c64 = &out["concurrency_64"];
    let ratio = c64["cached_vs_plain_ratio"].as_f64().unwrap_or(0.0);
    let commits = c64["cached_ok"]["commits_per_call"]
        .as_f64()
        .unwrap_or(f64::MAX);
    out.insert("cached_vs_plain_ratio".into(), ratio.into());
    out.insert("commits_per_call".into(), commits.into());
    out.insert("goal_cached_vs_plain_ratio_min".into(), 0.5.into());
    out.insert("goal_commits_per_call_max".into(), 0.15.into());
    out.insert("goals_met".into(), (ratio >= 0.5 && commits <= 0.15).into());
    println!("{}", Value::Object(out));
    Ok(())
}
