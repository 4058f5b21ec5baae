//! `sitelink bench cached-call`: what durability costs a script.
//!
//! In one process: an HTTP receiver (axum, answers 200 `{}`), a closed port
//! as the down target, and a site gateway with a real Store-and-Forward
//! Engine (SQLite WAL, synchronous=FULL) in a temporary folder. For
//! concurrency 1 and 64 it measures calls/s and p50/p99 latency of
//! - `plain`: `ExternalSystem.Call` (the baseline),
//! - `cached_ok`: `CachedCall` that succeeds at once (Pending row committed
//!   before the attempt, Delivered after it),
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
    store_and_forward::{Engine, EngineSettings},
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
    let (commits0, _) = gw.engine().commit_stats();
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let gw = gw.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut params = Map::new();
            params.insert("order".into(), Value::from(42));
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match scenario {
                    Scenario::Plain => gw.call("up", "post", params.clone()).await.is_ok(),
                    Scenario::CachedOk => gw
                        .cached_call("up", "post", params.clone(), "bench/cached_ok")
                        .await
                        .is_ok(),
                    Scenario::CachedDown => gw
                        .cached_call("down", "post", params.clone(), "bench/cached_down")
                        .await
                        .is_ok(),
                };
                anyhow::ensure!(ok, "{} call failed", scenario.name());
                lat.push(t.elapsed());
            }
            Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let (commits1, _) = gw.engine().commit_stats();
    Ok(Round {
        calls: lat.len() as u64,
        calls_per_second: lat.len() as f64 / elapsed,
        p50_ms: quantile_ms(&lat, 0.5),
        p99_ms: quantile_ms(&lat, 0.99),
        commits_per_call: (commits1 - commits0) as f64 / lat.len().max(1) as f64,
    })
}

pub async fn run(quick: bool) -> anyhow::Result<()> {
    let (rounds, dur) = if quick {
        (3, Duration::from_millis(1500))
    } else {
        (5, Duration::from_secs(5))
    };
    let received = Arc::new(AtomicU64::new(0));
    let up = receiver(received.clone()).await?;
    let mut calls_to_up = 0u64;
    let down = {
        // A port that was just free and is now closed: connection refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let dir = tempfile::tempdir()?;
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
    );

    let mut out = serde_json::Map::new();
    out.insert("bench".into(), "cached-call".into());
    out.insert("quick".into(), quick.into());
    out.insert("rounds".into(), rounds.into());
    out.insert("round_seconds".into(), dur.as_secs_f64().into());
    out.insert("synchronous".into(), "FULL".into());
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
            level.insert(
                s.name().into(),
                json!({ "calls_per_second": cps, "p50_ms": p50, "p99_ms": p99, "commits_per_call": cpc }),
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
