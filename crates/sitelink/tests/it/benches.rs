//! Every `sitelink bench` subcommand runs in CI at `--smoke` size, on each
//! backend it supports, to its last line: the JSON object with its
//! figures. Nothing is read from the figures (a debug build on a shared
//! machine); what this catches is a bench that no longer runs.

use std::process::Command;

/// `sitelink bench ARGS --smoke`: its last line, parsed.
fn smoke(args: &[&str], postgres: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitelink"));
    cmd.arg("bench").args(args).arg("--smoke");
    cmd.env("RUST_LOG", "warn");
    if let Some(url) = postgres {
        cmd.env("SITELINK_BENCH_POSTGRES_URL", url);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("bench {args:?}: last line is not JSON ({e}): {last}"));
    assert!(v.is_object(), "bench {args:?}: {v}");
    v
}

#[test]
fn every_bench_runs_at_smoke_size_on_each_backend() {
    // The PostgreSQL variants need the server the other tests use;
    // fresh_database's rule applies (required in CI).
    let postgres = sitelink_test_support::server_url("SITELINK_TEST_POSTGRES_URL");
    let mut runs: Vec<(Vec<&str>, bool)> = vec![
        (vec!["cached-call"], false),
        (vec!["notifications"], false),
        (vec!["auth"], false),
        (vec!["ui", "--rows", "3000"], false),
    ];
    for db in ["sqlite", "postgres"] {
        let pg = db == "postgres";
        runs.push((vec!["ingest", "--db", db], pg));
        // Enough rows that every one of the 20 sites has open calls (the
        // bench checks that its KPIs cover them all).
        runs.push((vec!["queries", "--db", db, "--rows", "20000"], pg));
        runs.push((vec!["reconcile", "--db", db, "--page", "500"], pg));
        runs.push((vec!["operator", "--db", db], pg));
        runs.push((vec!["fleet", "--db", db, "--sites", "20"], pg));
    }
    runs.push((vec!["failover"], true));
    for (args, needs_postgres) in runs {
        if needs_postgres && postgres.is_none() {
            continue;
        }
        let v = smoke(&args, postgres.as_deref().filter(|_| needs_postgres));
        assert!(
            v.as_object().is_some_and(|o| o.len() > 1),
            "bench {args:?}: {v}"
        );
        if let Some(quick) = v.get("quick") {
            assert_eq!(quick, true, "bench {args:?} says it was a full run: {v}");
        }
    }
}
