//! `sitelink bench ingest --db sqlite|postgres`: how fast central takes in
//! telemetry, against a plain batched upsert of the same rows into the same
//! database; and, with real sites, how many rows reconciliation transfers
//! per row changed when nothing is lost (steady state).
//!
//! - `plain_upsert_rows_per_second`: 500-row transactions of multi-row
//!   `INSERT … ON CONFLICT (id) DO UPDATE` (as many rows per statement as
//!   the repository uses) into a table shaped like `site_calls`, with only
//!   its primary key, no revision rule and no cursor (the baseline).
//! - `plain_same_table_rows_per_second`: the same plain upsert into
//!   `site_calls` itself (its secondary indexes; on PostgreSQL its
//!   triggers), so the storage costs the same and the difference is what
//!   the pipeline adds. Reported beside the baseline, not instead of it.
//! - `repository_rows_per_second`: `SiteCalls::ingest` with the same batches
//!   (revision rule, per-batch dedupe, cursor advance in the transaction).
//! - `end_to_end_rows_per_second`: 4 sites stream `TelemetryBatch`es over
//!   gRPC; the clock stops when every site's cursor covers its last row
//!   (so the rows are committed).
//! - `reconcile_rows_per_changed_row`: 2 real sites (Store-and-Forward
//!   Engine and central link) make changes while connected, reconciling every
//!   second; rows received in reconcile pages / rows changed. Goal ≤ 0.05.
//!
//! Each of the four rate figures is measured on its own fresh database
//! (empty tables, a central of its own), so none writes into rows an
//! earlier measurement left behind.

use std::{sync::atomic::Ordering, time::Instant};

use serde_json::{json, Value};
use sitelink_commons::{
    contracts::v1::{self, site_link_client::SiteLinkClient, site_message, SiteMessage},
    SiteName,
};
use sqlx::Executor;
use tokio_util::sync::CancellationToken;

use super::{
    central_world::{rows, BenchDb, Db},
    median,
};

const BATCH: usize = 500;
const SITES: usize = 4;

pub async fn run(db: Db, size: super::Size) -> anyhow::Result<()> {
    let (per_round, rounds) = size.pick((100_000, 3), (20_000, 3), (500, 1));
    let mut plain = Vec::new();
    let mut plain_same = Vec::new();
    let mut repo = Vec::new();
    let mut e2e = Vec::new();
    for round in 0..rounds {
        // Every figure starts from the same state: a fresh, empty database
        // and a central of its own. (They used to share one database per
        // round, so end-to-end wrote into a `site_calls` that already held
        // the rows of the two measurements before it, while the baseline
        // wrote into an empty table.)
        plain.push(on_fresh(db, |d, _| plain_upsert(d, per_round, "bench_plain")).await?);
        plain_same.push(on_fresh(db, |d, _| plain_upsert(d, per_round, "site_calls")).await?);
        repo.push(on_fresh(db, |d, _| repository(d, per_round)).await?);
        e2e.push(on_fresh(db, |d, link| end_to_end(d, link, per_round)).await?);
        println!(
            "round {round}: plain {:.0} rows/s (into site_calls {:.0}), repository {:.0} rows/s, end-to-end {:.0} rows/s",
            plain[round], plain_same[round], repo[round], e2e[round]
        );
    }
    let steady = steady_state(db, size.pick(20_000, 3_000, 200)).await?;
    let (plain, plain_same, repo, e2e) = (
        median(&plain),
        median(&plain_same),
        median(&repo),
        median(&e2e),
    );
    let out = json!({
        "bench": "ingest",
        "db": format!("{db:?}").to_lowercase(),
        "quick": size.quick(),
        "rows_per_round": per_round,
        "rounds": rounds,
        "plain_upsert_rows_per_second": plain,
        "repository_rows_per_second": repo,
        "end_to_end_rows_per_second": e2e,
        "repository_vs_plain_ratio": repo / plain,
        "end_to_end_vs_plain_ratio": e2e / plain,
        "plain_same_table_rows_per_second": plain_same,
        "end_to_end_vs_plain_same_table_ratio": e2e / plain_same,
        "goal_end_to_end_vs_plain_ratio_min": 0.5,
        "changed_rows": steady["changed_rows"],
        "reconcile_rows": steady["reconcile_rows"],
        "telemetry_rows": steady["telemetry_rows"],
        "reconcile_rows_per_changed_row": steady["ratio"],
        "goal_reconcile_rows_per_changed_row_max": 0.05,
        "goals_met": e2e / plain >= 0.5 && steady["ratio"].as_f64().unwrap_or(1.0) <= 0.05,
    });
    println!("{out}");
    Ok(())
}

/// Runs one measurement against a running central on a fresh database,
/// then stops the central and drops the database.
async fn on_fresh<F, Fut>(db: Db, measure: F) -> anyhow::Result<f64>
where
    F: FnOnce(sitelink_central::configuration_database::Database, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let bench_db = BenchDb::new(db).await?;
    let central = bench_db.central(3600, 1000).await?;
    let database = central.database().clone();
    let link = central.link_addr();
    let cancel = CancellationToken::new();
    let server = super::central_world::run_active(central, &cancel).await?;
    let figure = measure(database.clone(), link).await;
    cancel.cancel();
    server.await??;
    database.pool().close().await;
    bench_db.drop_database().await;
    figure
}

/// `n` rows upserted plainly into `table`: `bench_plain` (created bare and
/// dropped after) or `site_calls`.
async fn plain_upsert(
    db: sitelink_central::configuration_database::Database,
    n: usize,
    table: &str,
) -> anyhow::Result<f64> {
    let bare = table == "bench_plain";
    if bare {
        db.pool()
        .execute(
            "CREATE TABLE bench_plain (id TEXT PRIMARY KEY, source_site TEXT NOT NULL, kind TEXT NOT NULL,
             target_summary TEXT NOT NULL, status TEXT NOT NULL, retry_count BIGINT NOT NULL, last_error TEXT,
             provenance TEXT NOT NULL, created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL,
             terminal_at_ms BIGINT, revision BIGINT NOT NULL)",
        )
        .await?;
    }
    let data = rows(table, n, 1);
    // The statement text for each chunk size, built before the clock
    // starts (as the repository builds its own once).
    let per_statement = sitelink_central::configuration_database::ROWS_PER_STATEMENT;
    let statements: Vec<String> = (1..=per_statement)
        .map(|rows| {
            let values: Vec<String> = (0..rows)
                .map(|i| {
                    let p: Vec<String> = (1..=12).map(|k| format!("${}", i * 12 + k)).collect();
                    format!("({})", p.join(","))
                })
                .collect();
            format!(
                "INSERT INTO {table} (id, source_site, kind, target_summary, status, retry_count, last_error,
                 provenance, created_at_ms, updated_at_ms, terminal_at_ms, revision) VALUES {} ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                 retry_count = excluded.retry_count, last_error = excluded.last_error,
                 updated_at_ms = excluded.updated_at_ms, terminal_at_ms = excluded.terminal_at_ms,
                 revision = excluded.revision",
                values.join(",")
            )
        })
        .collect();
    let start = Instant::now();
    for batch in data.chunks(BATCH) {
        let mut tx = db.pool().begin().await?;
        // The same statement size as the repository: a fair baseline.
        for chunk in batch.chunks(per_statement) {
            let sql = statements[chunk.len() - 1].as_str();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.tracked_operation_id.to_string())
                    .bind(r.source_site.clone())
                    .bind(r.kind.as_str())
                    .bind(r.target_summary.clone())
                    .bind(r.status.as_str())
                    .bind(r.retry_count as i64)
                    .bind(r.last_error.clone())
                    .bind(r.provenance.clone())
                    .bind(sitelink_commons::utc_to_unix_ms(r.created_at_utc))
                    .bind(sitelink_commons::utc_to_unix_ms(r.updated_at_utc))
                    .bind(r.terminal_at_utc.map(sitelink_commons::utc_to_unix_ms))
                    .bind(r.revision as i64);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    if bare {
        db.pool().execute("DROP TABLE bench_plain").await?;
    }
    Ok(n as f64 / secs)
}

async fn repository(
    db: sitelink_central::configuration_database::Database,
    n: usize,
) -> anyhow::Result<f64> {
    let site = SiteName::parse("repo")?;
    db.sites().add(&site).await?;
    let data = rows("repo", n, 1);
    let start = Instant::now();
    let mut from = 0u64;
    for batch in data.chunks(BATCH) {
        let to = batch.last().map_or(from, |r| r.change_seq);
        db.site_calls()
            .ingest(&site, batch, Some((from, to)))
            .await?;
        from = to;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn end_to_end(
    db: sitelink_central::configuration_database::Database,
    link: std::net::SocketAddr,
    n: usize,
) -> anyhow::Result<f64> {
    let per_site = n / SITES;
    let mut streams = Vec::new();
    for s in 0..SITES {
        let name = format!("e2e{s}");
        let token = db.sites().add(&SiteName::parse(&name)?).await?;
        let mut client = SiteLinkClient::connect(format!("http://{link}")).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let hello = v1::Hello {
            site: name.clone(),
            protocol_version: 1,
            high_seq: 0,
        };
        tx.send(SiteMessage {
            correlation: 0,
            body: Some(site_message::Body::Hello(hello)),
        })
        .await?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.as_str()).parse()?,
        );
        let inbound = client.open(req).await?.into_inner();
        let batches: Vec<SiteMessage> = rows(&name, per_site, 1)
            .chunks(BATCH)
            .map(|b| {
                let from = b[0].change_seq - 1;
                let to = b.last().map_or(from, |r| r.change_seq);
                SiteMessage {
                    correlation: 0,
                    body: Some(site_message::Body::Telemetry(v1::TelemetryBatch {
                        from_seq: from,
                        to_seq: to,
                        rows: b.iter().map(v1::CachedCallTelemetry::from).collect(),
                    })),
                }
            })
            .collect();
        streams.push((name, tx, inbound, batches));
    }
    let start = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    let mut names = Vec::new();
    for (name, tx, inbound, batches) in streams {
        names.push(name);
        senders.spawn(async move {
            // Keep the inbound side open (reconcile requests, acks) while sending.
            let _inbound = inbound;
            for b in batches {
                tx.send(b).await?;
            }
            // Hold the stream until the rows are in.
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            anyhow::Ok(())
        });
    }
    let target = per_site as u64;
    loop {
        let mut done = 0;
        for name in &names {
            if db
                .sites()
                .get(name)
                .await?
                .is_some_and(|s| s.reconcile_cursor >= target)
            {
                done += 1;
            }
        }
        if done == names.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    senders.abort_all();
    Ok((per_site * SITES) as f64 / secs)
}

/// Two real sites change rows while connected; how much does
/// reconciliation transfer on top of telemetry?
async fn steady_state(db: Db, ops_per_site: usize) -> anyhow::Result<Value> {
    use sitelink_site::store_and_forward::{
        AttemptKind, AttemptOutcome, DeliveryRequest, RetryPolicy,
    };
    let bench_db = BenchDb::new(db).await?;
    let central = bench_db.central(1, 1000).await?;
    let database = central.database().clone();
    let (audit, stats) = (central.audit().clone(), central.link_stats().clone());
    let link = central.link_addr();
    let cancel = CancellationToken::new();
    let server = super::central_world::run_active(central, &cancel).await?;
    let mut sites = Vec::new();
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    for (i, dir) in dirs.iter().enumerate() {
        let name = format!("steady{i}");
        let site = super::central_world::build_site(&database, &name, link, dir.path()).await?;
        let engine = site.engine().clone();
        tokio::spawn(site.run(cancel.clone()));
        sites.push((name, engine));
    }
    while audit.online().await.len() < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let start_reconcile = stats.reconcile_rows.load(Ordering::Relaxed);
    let mut work = tokio::task::JoinSet::new();
    for (_, engine) in &sites {
        for w in 0..16 {
            let engine = engine.clone();
            let n = ops_per_site / 16;
            work.spawn(async move {
                for i in 0..n {
                    let request = DeliveryRequest::Http {
                        system: "erp".into(),
                        method: "post".into(),
                        params: Default::default(),
                    };
                    let id = engine.record_pending(&request, "bench/steady").await?;
                    let outcome = if (i + w) % 10 == 0 {
                        AttemptOutcome::Transient("503".into())
                    } else {
                        AttemptOutcome::Delivered
                    };
                    engine
                        .record_outcome(id, AttemptKind::Immediate, outcome, RetryPolicy::default())
                        .await?;
                }
                anyhow::Ok(())
            });
        }
    }
    while let Some(r) = work.join_next().await {
        r??;
    }
    // Converged: central's cursor covers each site's high change sequence.
    loop {
        let mut done = true;
        for (name, engine) in &sites {
            let cursor = database
                .sites()
                .get(name)
                .await?
                .map_or(0, |s| s.reconcile_cursor);
            done &= cursor >= engine.high_seq();
        }
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Let at least two periodic reconciles run over the converged state.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    for (name, engine) in &sites {
        let at_central = database.site_calls().all_for_site(name).await?.len();
        let at_site = engine
            .status_counts()
            .await?
            .by_status
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>();
        anyhow::ensure!(
            at_site as usize == at_central,
            "{name}: {at_site} rows at the site, {at_central} at central"
        );
    }
    let changed: u64 = sites.iter().map(|(_, e)| e.high_seq()).sum();
    let reconcile = stats.reconcile_rows.load(Ordering::Relaxed) - start_reconcile;
    let telemetry = stats.telemetry_rows.load(Ordering::Relaxed);
    cancel.cancel();
    server.await??;
    database.pool().close().await;
    bench_db.drop_database().await;
    println!("steady state: {changed} changed rows, {telemetry} rows by telemetry, {reconcile} by reconciliation");
    Ok(
        json!({ "changed_rows": changed, "reconcile_rows": reconcile, "telemetry_rows": telemetry, "ratio": reconcile as f64 / changed as f64 }),
    )
}
