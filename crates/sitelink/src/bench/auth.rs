//! `sitelink bench auth [--quick]`: central under a flood of wrong HTTP
//! Basic passwords (issue 9 item 1), as a separate process so that its
//! resident memory is its own. Two scenarios, each in rounds:
//!
//! - `admin`: 64 clients, each from its own loopback address, sending
//!   `admin:wrong` (the reported attack; the login throttle answers most
//!   with 429);
//! - `worst`: the same clients sending made-up user names with the throttle
//!   out of the way (`login_free_failures = 1000`), so every request wants
//!   an argon2 verification and only the hashing threads bound the cost.
//!
//! Measured per round: `/healthz` latency p50/p99 idle (the baseline) and
//! under the flood, the resident memory before and at its peak, and
//! whether a legitimate API client (another user sending HTTP Basic on
//! every request, every 50 ms, from 127.0.0.1) was always answered 200.
//! Goals: peak RSS under 100 MB and `/healthz` p99 under 20 ms under the
//! flood.
//!
//! `SITELINK_BENCH_CENTRAL=PATH` runs another build's binary as central
//! (an older one, side by side on the same machine); then only the `admin`
//! scenario runs, since `worst` needs a key older builds do not have.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use serde_json::json;
use sitelink_test_support::flood::{basic_auth_flood, get, rss_kib, Probe, RssPeak};
use tokio::io::AsyncBufReadExt;

use super::{median, quantile_ms, Size};

pub async fn run(size: Size) -> anyhow::Result<()> {
    let rounds = size.pick(3, 1, 1);
    let mut out = serde_json::Map::new();
    // Requests per client: the throttled flood is answered fast (429), so
    // it gets more requests to last a few seconds too.
    let other = std::env::var_os("SITELINK_BENCH_CENTRAL").is_some();
    for (scenario, throttle_off, per_client) in [("admin", false, 400), ("worst", true, 40)] {
        if other && throttle_off {
            continue;
        }
        let per_client = size.pick(per_client, per_client / 4, per_client / 40);
        let mut rows = Vec::new();
        for round in 0..rounds {
            let r = round_of(throttle_off, per_client).await?;
            eprintln!("{scenario} round {round}: {r}");
            rows.push(r);
        }
        let med = |k: &str| {
            median(
                &rows
                    .iter()
                    .map(|r| r[k].as_f64().unwrap_or(0.0))
                    .collect::<Vec<_>>(),
            )
        };
        let p99_idle = med("healthz_p99_idle_ms");
        let p99_flood = med("healthz_p99_flood_ms");
        out.insert(
            scenario.into(),
            json!({
                "rounds": rows,
                "healthz_p99_idle_ms": p99_idle,
                "healthz_p99_flood_ms": p99_flood,
                "healthz_p99_flood_vs_idle": p99_flood / p99_idle.max(0.001),
                "rss_baseline_mb": med("rss_baseline_mb"),
                "rss_peak_mb": med("rss_peak_mb"),
                "goal_rss_peak_under_100_mb": med("rss_peak_mb") < 100.0,
                "goal_healthz_p99_under_20_ms": p99_flood < 20.0,
                "legit_all_ok": rows.iter().all(|r| r["legit_all_ok"] == true),
            }),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// One central, one idle baseline, one flood.
async fn round_of(throttle_off: bool, per_client: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("central.toml");
    let extra = if throttle_off {
        "login_free_failures = 1000\n"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"127.0.0.1:0\"\n\
             http_bind = \"127.0.0.1:0\"\n{extra}"
        ),
    )?;
    cli(&config, &["user", "add", "admin", "--role", "Admin"])?;
    cli(&config, &["user", "add", "victor", "--role", "Viewer"])?;
    let (mut child, http) = start_central(&config).await?;
    let pid = child.id().context("central's pid")?;

    // Warm up (first verification, connections), then the idle baseline.
    let right = sitelink_test_support::flood::basic("victor", "a long password");
    get(http, Ipv4Addr::LOCALHOST, "/api/v1/sites", Some(&right)).await;
    let mut idle = Vec::new();
    for _ in 0..400 {
        let started = std::time::Instant::now();
        get(http, Ipv4Addr::LOCALHOST, "/healthz", None).await;
        idle.push(started.elapsed());
    }
    idle.sort();
    let rss_baseline = rss_kib(pid).unwrap_or(0);

    let peak = RssPeak::start(pid);
    let health = Probe::start(http, "/healthz", None, Duration::from_millis(10));
    let legit = Probe::start(
        http,
        "/api/v1/sites",
        Some(right),
        Duration::from_millis(50),
    );
    let flood = basic_auth_flood(http, "/api/v1/sites", 64, per_client, move |i, n| {
        if throttle_off {
            (format!("user{i}-{n}"), "wrong-password".into())
        } else {
            ("admin".into(), "wrong-password".into())
        }
    })
    .await;
    let mut health: Vec<Duration> = health.finish().await.into_iter().map(|(_, t)| t).collect();
    health.sort();
    let legit = legit.finish().await;
    let peak = peak.finish().await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok(json!({
        "flood_requests": flood.total(),
        "flood_by_status": flood.by_status,
        "flood_seconds": flood.elapsed.as_secs_f64(),
        "healthz_p50_idle_ms": quantile_ms(&idle, 0.5),
        "healthz_p99_idle_ms": quantile_ms(&idle, 0.99),
        "healthz_p50_flood_ms": quantile_ms(&health, 0.5),
        "healthz_p99_flood_ms": quantile_ms(&health, 0.99),
        "healthz_probes_flood": health.len(),
        "rss_baseline_mb": rss_baseline as f64 / 1024.0,
        "rss_peak_mb": peak as f64 / 1024.0,
        "legit_requests": legit.len(),
        "legit_all_ok": legit.iter().all(|(s, _)| *s == Some(200)),
    }))
}

/// The central binary: this one, or `SITELINK_BENCH_CENTRAL`.
fn central_bin() -> anyhow::Result<std::path::PathBuf> {
    Ok(match std::env::var_os("SITELINK_BENCH_CENTRAL") {
        Some(p) => p.into(),
        None => std::env::current_exe()?,
    })
}

/// `sitelink central --config … ARGS`, its stdout.
fn cli(config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(central_bin()?)
        .arg("central")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SITELINK_PASSWORD", "a long password")
        .output()?;
    anyhow::ensure!(out.status.success(), "{args:?}: {out:?}");
    Ok(String::from_utf8(out.stdout)?)
}

/// Starts central (this binary) and reads the HTTP address it prints.
async fn start_central(config: &Path) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let mut child = tokio::process::Command::new(central_bin()?)
        .arg("central")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("central did not start")??
            .context("central exited")?;
        if let Some(addr) = line.strip_prefix("http listening on ") {
            return Ok((child, addr.parse()?));
        }
    }
}
