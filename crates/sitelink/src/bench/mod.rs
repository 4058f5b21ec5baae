//! `sitelink bench NAME [--quick]`: benchmarks run by hand (not in CI).
//! Each measures a figure against its baseline in the same run, repeats,
//! reports medians, and prints as its last line one JSON object with every
//! figure, its baseline and their ratio (SPEC §7).

mod auth;
mod cached_call;
mod central_world;
mod failover;
mod ingest;
mod notifications;
mod queries;
mod reconcile;
mod ui;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchName {
    /// Central (a separate process) under 64 clients sending wrong HTTP
    /// Basic passwords: resident memory and /healthz latency against idle.
    Auth {
        #[arg(long)]
        quick: bool,
    },
    /// Plain `Call` vs durable `CachedCall` (immediate success, and to a
    /// down target) at concurrency 1 and 64.
    CachedCall {
        /// A run under 60 s (fewer, shorter rounds).
        #[arg(long)]
        quick: bool,
    },
    /// Telemetry ingest at central (gRPC end-to-end and repository) vs a
    /// plain batched upsert; reconcile rows per changed row in steady state.
    /// PostgreSQL: SITELINK_BENCH_POSTGRES_URL (default the local server).
    Ingest {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: central_world::Db,
        #[arg(long)]
        quick: bool,
    },
    /// `Notify.Send` at two sites to acceptance by an SMTP sink, vs the
    /// same messages sent straight to the sink.
    Notifications {
        #[arg(long)]
        quick: bool,
    },
    /// Catch-up of one site's changed rows by reconcile pages over the link.
    Reconcile {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: central_world::Db,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Rows per reconcile page.
        #[arg(long, default_value_t = 1000)]
        page: u32,
        /// 100,000 rows at most (under 60 s).
        #[arg(long)]
        quick: bool,
    },
    /// Two central processes on PostgreSQL (SITELINK_BENCH_POSTGRES_URL),
    /// four sites: time from a SIGKILL of the active node to the standby
    /// active and every site streaming to it, five kills; and a planned
    /// switch (SIGTERM).
    Failover {
        /// Two kills (under 60 s).
        #[arg(long)]
        quick: bool,
    },
    /// Server time of the web UI's Site Calls page (unfiltered, site +
    /// Parked) and dashboard on `--rows` site calls (SQLite), against the
    /// REST listing of the same query.
    Ui {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        #[arg(long)]
        quick: bool,
    },
    /// KPI query and first pages of filtered Site Calls listings on a table
    /// of `--rows` rows (p50/p99 against 50 ms and 100 ms).
    Queries {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: central_world::Db,
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        #[arg(long)]
        quick: bool,
    },
}

pub async fn run(name: BenchName) -> anyhow::Result<()> {
    match name {
        BenchName::Auth { quick } => auth::run(quick).await,
        BenchName::CachedCall { quick } => cached_call::run(quick).await,
        BenchName::Ingest { db, quick } => ingest::run(db, quick).await,
        BenchName::Queries { db, rows, quick } => queries::run(db, rows, quick).await,
        BenchName::Notifications { quick } => notifications::run(quick).await,
        BenchName::Ui { rows, quick } => ui::run(rows, quick).await,
        BenchName::Failover { quick } => failover::run(quick).await,
        BenchName::Reconcile {
            db,
            rows,
            page,
            quick,
        } => reconcile::run(db, if quick { rows.min(100_000) } else { rows }, page).await,
    }
}

/// Median of a non-empty slice (sorted copy).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `q` quantile of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[std::time::Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}
