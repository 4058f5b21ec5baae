//! Password checking cannot be turned against central (issue 9 item 1): 64
//! clients, each from its own address, flood the REST API with wrong HTTP
//! Basic passwords while the login throttle is out of the way (so that
//! every request wants an argon2 verification: the worst case). The real
//! `sitelink` binary's resident memory stays bounded, `/healthz` keeps
//! answering, and a legitimate API client's requests keep working.

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use sitelink_test_support::flood::{basic_auth_flood, rss_kib, Probe, RssPeak};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_costs_bounded_memory_and_health_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("central.toml");
    std::fs::write(
        &config,
        "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"0.0.0.0:0\"\n\
         http_bind = \"127.0.0.1:0\"\npassword_checks_at_once = 1\nlogin_free_failures = 1000\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["central", "--config", cfg])
            .args(args)
            .env("SITELINK_PASSWORD", "viewer-password")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["user", "add", "victor", "--role", "Viewer"]);
    let token = cli(&["user", "token", "issue", "victor"]).trim().to_owned();
    let log = dir.path().join("central.log");
    let (central, addrs) = start(&["central", "--config", cfg], &log, 2).await;
    let pid = central.id().unwrap();
    let http: std::net::SocketAddr = addrs[1].parse().unwrap();

    // One verification first, so the baseline includes argon2's first
    // allocation: the growth measured is the flood's.
    let right = sitelink_test_support::flood::basic("victor", "viewer-password");
    let first = sitelink_test_support::flood::get(
        http,
        std::net::Ipv4Addr::LOCALHOST,
        "/api/v1/sites",
        Some(&right),
    )
    .await;
    assert_eq!(first, Some(200));
    let baseline = rss_kib(pid).unwrap();

    let peak = RssPeak::start(pid);
    let health = Probe::start(http, "/healthz", None, Duration::from_millis(50));
    let legit = Probe::start(
        http,
        "/api/v1/sites",
        Some(format!("Bearer {token}")),
        Duration::from_millis(100),
    );
    let flood = basic_auth_flood(http, "/api/v1/sites", 64, 6, |i, n| {
        (format!("user{i}-{n}"), "wrong-password".to_owned())
    })
    .await;
    let health = health.finish().await;
    let legit = legit.finish().await;
    let peak = peak.finish().await;
    println!(
        "flood {:?} in {:?}; RSS {baseline} KiB -> peak {peak} KiB",
        flood.by_status, flood.elapsed
    );

    // Every flood request was refused as it should be: 401, or 503 when no
    // hashing slot came free in time. Never a 500, never a dropped answer.
    assert_eq!(flood.total(), 64 * 6);
    assert!(
        flood.by_status.keys().all(|s| *s == 401 || *s == 503),
        "{:?}",
        flood.by_status
    );
    assert!(flood.by_status.get(&401).is_some_and(|n| *n > 0));
    // One argon2 thread, its 19 MiB allocated once (in the baseline): the
    // flood adds little. (Unbounded checks reached 1 GB with such a flood;
    // checks on tokio's blocking pool 192 MiB; a fresh allocation per
    // check 80 MiB.)
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    assert!(growth_mib < 32, "RSS grew {growth_mib} MiB under the flood");
    // /healthz answered every probe, promptly.
    assert!(health.len() > 5, "{} probes", health.len());
    let slowest = health.iter().map(|(_, t)| *t).max().unwrap();
    assert!(health.iter().all(|(s, _)| *s == Some(200)), "{health:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest /healthz {slowest:?}"
    );
    // The API client with a token was never turned away.
    assert!(!legit.is_empty());
    assert!(legit.iter().all(|(s, _)| *s == Some(200)), "{legit:?}");
    sigterm(central).await;
    // The link listens beyond loopback without TLS: the log says so, loudly.
    assert!(
        log_has(
            &log,
            "the site link port listens beyond loopback WITHOUT TLS"
        ),
        "no warning about the cleartext link"
    );
    // The users existed before the start, so the SITELINK_ADMIN_PASSWORD
    // that common::start sets created nothing, and the log says why.
    assert!(
        log_has(&log, "SITELINK_ADMIN_PASSWORD ignored: users exist already"),
        "no word about the ignored SITELINK_ADMIN_PASSWORD"
    );
}

fn log_has(log: &std::path::Path, text: &str) -> bool {
    std::fs::read_to_string(log).unwrap().contains(text)
}
