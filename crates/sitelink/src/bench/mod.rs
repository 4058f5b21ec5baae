//! `sitelink bench NAME [--quick|--smoke]`: benchmarks run by hand. Each
//! measures a figure against its baseline in the same run, repeats,
//! reports medians, and prints as its last line one JSON object with every
//! figure, its baseline and their ratio (SPEC §7). `--smoke` runs each at
//! a size of seconds, with nothing to read in its figures: CI runs every
//! bench so (`crates/sitelink/tests/it/benches.rs`), on each backend it
//! supports, so that none rots unseen.

mod auth;
mod bulk;
mod cached_call;
pub(crate) mod central_world;
mod failover;
mod fleet;
mod ingest;
mod notifications;
mod operator;
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
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
    /// Plain `Call` vs durable `CachedCall` (immediate success, and to a
    /// down target) at concurrency 1 and 64.
    CachedCall {
        /// A run under 60 s (fewer, shorter rounds).
        #[arg(long)]
        quick: bool,
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
    /// Telemetry ingest at central (gRPC end-to-end and repository) vs a
    /// plain batched upsert; reconcile rows per changed row in steady state.
    /// PostgreSQL: SITELINK_BENCH_POSTGRES_URL (default the local server).
    Ingest {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: central_world::Db,
        #[arg(long)]
        quick: bool,
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
    /// `Notify.Send` at two sites to acceptance by an SMTP sink, vs the
    /// same messages sent straight to the sink.
    Notifications {
        #[arg(long)]
        quick: bool,
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
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
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
    /// Two central processes on PostgreSQL (SITELINK_BENCH_POSTGRES_URL),
    /// four sites: time from a SIGKILL of the active node to the standby
    /// active and every site streaming to it, five kills; and a planned
    /// switch (SIGTERM).
    Failover {
        /// Two kills (under 60 s).
        #[arg(long)]
        quick: bool,
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
    /// A fleet of `--sites` simulated sites (the real protocol and
    /// reconnect schedule, rows in memory) on one central process:
    /// change → committed latency at 1,000 rows/s (against 10 sites making
    /// the same rows), a burst, then central SIGKILLed and restarted: the
    /// reconnect storm, the admission rate (from /metrics), time until
    /// every site is reconciled; central's CPU and memory.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        sites: usize,
        /// Changes a second over the whole fleet (steady; the burst is
        /// five times this).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, value_enum, default_value = "sqlite")]
        db: central_world::Db,
        /// Shorter phases (20 s steady).
        #[arg(long)]
        quick: bool,
        /// A few seconds and at most 30 sites: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
    /// Server time of the web UI's Site Calls page (unfiltered, site +
    /// Parked) and dashboard on `--rows` site calls (SQLite), against the
    /// REST listing of the same query.
    Ui {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        #[arg(long)]
        quick: bool,
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
    /// The operator tools at fleet size: failure groups (p99 against
    /// 200 ms) on a table of `--rows` rows with 1 % Parked and 1 % Failed,
    /// and the export of a tenth of it (rows/s, resident memory).
    Operator {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: central_world::Db,
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        #[arg(long)]
        quick: bool,
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
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
        /// A few seconds: only that the bench runs (CI).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
    },
}

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// The figures BENCHMARKS.md records.
    Full,
    /// Under a minute: a first look.
    Quick,
    /// Seconds: only that the bench runs to its JSON line (CI).
    Smoke,
}

impl Size {
    fn of(quick: bool, smoke: bool) -> Self {
        match (quick, smoke) {
            (_, true) => Size::Smoke,
            (true, false) => Size::Quick,
            (false, false) => Size::Full,
        }
    }

    /// The value of this size.
    pub fn pick<T>(self, full: T, quick: T, smoke: T) -> T {
        match self {
            Size::Full => full,
            Size::Quick => quick,
            Size::Smoke => smoke,
        }
    }

    /// The JSON's `quick` field: anything but a full run.
    pub fn quick(self) -> bool {
        self != Size::Full
    }
}

pub async fn run(name: BenchName) -> anyhow::Result<()> {
    match name {
        BenchName::Auth { quick, smoke } => auth::run(Size::of(quick, smoke)).await,
        BenchName::CachedCall { quick, smoke } => cached_call::run(Size::of(quick, smoke)).await,
        BenchName::Ingest { db, quick, smoke } => ingest::run(db, Size::of(quick, smoke)).await,
        BenchName::Queries {
            db,
            rows,
            quick,
            smoke,
        } => queries::run(db, rows, Size::of(quick, smoke)).await,
        BenchName::Operator {
            db,
            rows,
            quick,
            smoke,
        } => operator::run(db, rows, Size::of(quick, smoke)).await,
        BenchName::Notifications { quick, smoke } => {
            notifications::run(Size::of(quick, smoke)).await
        }
        BenchName::Ui { rows, quick, smoke } => ui::run(rows, Size::of(quick, smoke)).await,
        BenchName::Fleet {
            sites,
            rate,
            db,
            quick,
            smoke,
        } => fleet::run(db, sites, rate, Size::of(quick, smoke)).await,
        BenchName::Failover { quick, smoke } => failover::run(Size::of(quick, smoke)).await,
        BenchName::Reconcile {
            db,
            rows,
            page,
            quick,
            smoke,
        } => {
            let rows = Size::of(quick, smoke).pick(rows, rows.min(100_000), rows.min(2_000));
            reconcile::run(db, rows, page).await
        }
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
