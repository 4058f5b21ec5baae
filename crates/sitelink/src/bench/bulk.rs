//! The bulk-retry phase of `sitelink bench operator` (issue 21): a central
//! with two real sites, each with N parked calls (5,000 in the full run),
//! their ERP back up; then
//!
//! - **bulk**: one unpaced bulk Retry of all of them through
//!   `POST /api/v1/bulk-actions`, timed from the request until central shows
//!   none of them Parked;
//! - **baseline**: as many calls parked again, then retried one by one
//!   through `POST /api/v1/site-calls/{id}/retry` by 8 clients at once (a
//!   script an operator would write today), timed the same way.
//!
//! The goal is the bulk Retry of 10,000 calls in ≤ 10 s.

use std::time::{Duration, Instant};

use serde_json::json;
use sitelink_central::configuration_database::{Database, Role};
use sitelink_test_support::{FakeHttp, Mode};
use tokio_util::sync::CancellationToken;

use super::central_world::{build_site_with, run_active, BenchDb, Db};

pub const GOAL_SECONDS: f64 = 10.0;
const SITES: usize = 2;
/// Calls one script run makes.
const PER_RUN: usize = 500;
/// Clients retrying one by one at once (the baseline).
const CLIENTS: usize = 8;

/// What the phase measured.
pub struct BulkFigures {
    pub calls: usize,
    pub bulk_seconds: f64,
    /// Until every site had answered (the action Done).
    pub applied_seconds: f64,
    pub single_seconds: f64,
}

async fn count(db: &Database, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(db.pool())
        .await?)
}

/// Waits (at most `limit`) until `sql` counts `want`.
async fn until(db: &Database, sql: &str, want: i64, limit: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let n = count(db, sql).await?;
        if n == want {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < limit, "{sql}: {n}, waited for {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PARKED: &str = "SELECT COUNT(*) FROM site_calls WHERE status = 'Parked'";
const IN_FLIGHT: &str = "SELECT COUNT(*) FROM site_calls WHERE status IN ('Pending', 'Retrying')";

pub async fn run(db: Db, per_site: usize) -> anyhow::Result<BulkFigures> {
    let calls = per_site * SITES;
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let bench_db = BenchDb::new(db).await?;
    let central = bench_db.central(300, 1000).await?;
    let database = central.database().clone();
    let audit = central.audit().clone();
    let http_addr = central.http_addr();
    let link = central.link_addr();
    let cancel = CancellationToken::new();
    let server = run_active(central, &cancel).await?;
    sitelink_central::authentication::add_user(&database, "bench", "bench-password", Role::Admin)
        .await?;
    let (token, _) = database.users().issue_token("bench", None).await?;
    let erp_config = format!(
        "[external_systems.erp]\nbase_url = \"{}\"\ntimeout_ms = 2000\n\
         retry = {{ interval_ms = 10, backoff = 1.0, max_interval_ms = 10, max_retries = 0, jitter = 0.0 }}\n\
         methods.postOrder = {{ http_method = \"POST\", path = \"/orders\" }}\n",
        erp.url()
    );
    let dirs: Vec<tempfile::TempDir> = (0..SITES)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut runtimes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let site = build_site_with(
            &database,
            &format!("plant{i}"),
            link,
            dir.path(),
            &erp_config,
        )
        .await?;
        runtimes.push(site.runtime().clone());
        tokio::spawn(site.run(cancel.clone()));
    }
    while audit.online().await.len() < SITES {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let script = format!(
        r#"let ids = []; for i in 0..{PER_RUN} {{ ids.push(ExternalSystem.CachedCall("erp", "postOrder", #{{ order: i }})); }} ids"#
    );
    // Parks `per_site` calls at each site (the ERP answers 503), then
    // brings the ERP back; the ids.
    let park = || async {
        erp.set_mode(Mode::Unavailable).await;
        let mut ids = Vec::new();
        for rt in &runtimes {
            for _ in 0..per_site.div_ceil(PER_RUN) {
                let run = rt.run_source("park", "bench", &script).await?;
                ids.extend(run.tracked_operation_ids.iter().map(|i| i.to_string()));
            }
        }
        let parked = ids.len() as i64;
        until(&database, PARKED, parked, Duration::from_secs(300)).await?;
        erp.set_mode(Mode::Ok).await;
        anyhow::Ok(ids)
    };
    let http = reqwest::Client::new();
    let base = format!("http://{http_addr}");

    // Bulk.
    let ids = park().await?;
    let t = Instant::now();
    let r = http
        .post(format!("{base}/api/v1/bulk-actions"))
        .bearer_auth(&token)
        .json(&json!({ "action": "retry", "filter": { "status": ["Parked"] }, "expect_count": ids.len() }))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "bulk action: {}", r.text().await?);
    // Also when every site had answered (the action Done): the rest of
    // the time is the sites' telemetry reaching central.
    let mut applied_seconds = None;
    loop {
        if applied_seconds.is_none()
            && count(
                &database,
                "SELECT COUNT(*) FROM bulk_actions WHERE state = 'Done'",
            )
            .await?
                > 0
        {
            applied_seconds = Some(t.elapsed().as_secs_f64());
        }
        if count(&database, PARKED).await? == 0 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "bulk retry took over 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bulk_seconds = t.elapsed().as_secs_f64();
    let applied_seconds = applied_seconds.unwrap_or(bulk_seconds);
    println!(
        "bulk retry of {} parked calls on {SITES} sites: every site answered after {applied_seconds:.2} s, \
         none Parked at central after {bulk_seconds:.2} s",
        ids.len()
    );
    // The retried calls are delivered before the next calls park.
    until(&database, IN_FLIGHT, 0, Duration::from_secs(600)).await?;

    // Baseline: one by one.
    let ids = park().await?;
    let t = Instant::now();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(ids.clone()));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (queue, http, base, token) = (queue.clone(), http.clone(), base.clone(), token.clone());
        clients.spawn(async move {
            loop {
                let Some(id) = queue.lock().unwrap().pop() else {
                    return anyhow::Ok(());
                };
                let r = http
                    .post(format!("{base}/api/v1/site-calls/{id}/retry"))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "retry {id}: {}", r.text().await?);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done??;
    }
    until(&database, PARKED, 0, Duration::from_secs(600)).await?;
    let single_seconds = t.elapsed().as_secs_f64();
    println!(
        "{} single retries by {CLIENTS} clients: none Parked at central after {single_seconds:.2} s",
        ids.len()
    );

    cancel.cancel();
    let _ = server.await;
    database.pool().close().await;
    bench_db.drop_database().await;
    Ok(BulkFigures {
        calls,
        bulk_seconds,
        applied_seconds,
        single_seconds,
    })
}
