//! `sitelink bench reconcile [--rows N]`: catch-up of a site that central
//! has never heard from: N changed rows (default 1,000,000) at one site,
//! pulled by central's reconcile pages over the real link into a real
//! central database. Goal (issue 3): 1,000,000 rows in under 60 s.
//!
//! The site's tracking table is bulk-filled with SQL before the site starts
//! (making a million calls one by one would take longer than the thing
//! measured); then the site starts, connects, and the clock runs until
//! central's cursor covers the site's last change.

use std::time::{Duration, Instant};

use serde_json::json;
use sitelink_commons::SiteName;
use tokio_util::sync::CancellationToken;

use super::central_world::{BenchDb, Db};

pub async fn run(db: Db, rows: u64, page: u32) -> anyhow::Result<()> {
    let bench_db = BenchDb::new(db).await?;
    let central = bench_db.central(3600, page).await?;
    let database = central.database().clone();
    let link = central.link_addr();
    let cancel = CancellationToken::new();
    let server = super::central_world::run_active(central, &cancel).await?;
    let token = database.sites().add(&SiteName::parse("catchup")?).await?;

    let dir = tempfile::tempdir()?;
    let buffer = dir.path().join("data").join("buffer.db");
    // Create the schema, then fill it.
    drop(
        sitelink_site::store_and_forward::Engine::open(&buffer, "catchup", Default::default())
            .await?,
    );
    let fill = Instant::now();
    fill_site(&buffer, rows)?;
    println!(
        "filled the site with {rows} rows in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let cfg = sitelink_site::SiteConfig::parse(
        &format!(
            "[site]\nname = \"catchup\"\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\n[central]\naddresses = [\"http://{link}\"]\ntoken = \"{}\"\n",
            token.as_str()
        ),
        dir.path(),
    )?;
    let site = sitelink_site::Site::build(cfg).await?;
    anyhow::ensure!(
        site.engine().high_seq() == rows,
        "the site's change sequence is {}",
        site.engine().high_seq()
    );
    let start = Instant::now();
    tokio::spawn(site.run(cancel.clone()));
    loop {
        let cursor = database
            .sites()
            .get("catchup")
            .await?
            .map_or(0, |s| s.reconcile_cursor);
        if cursor >= rows {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "no catch-up after 15 minutes (cursor {cursor})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let at_central = database.site_calls().all_for_site("catchup").await?.len() as u64;
    anyhow::ensure!(
        at_central == rows,
        "central has {at_central} rows of {rows}"
    );
    cancel.cancel();
    server.await??;
    database.pool().close().await;
    bench_db.drop_database().await;
    let out = json!({
        "bench": "reconcile",
        "db": format!("{db:?}").to_lowercase(),
        "rows": rows,
        "page": page,
        "seconds": seconds,
        "rows_per_second": rows as f64 / seconds,
        "goal_seconds_max_for_1m_rows": 60.0,
        "goals_met": rows < 1_000_000 || seconds <= 60.0,
    });
    println!(
        "caught up {rows} rows in {seconds:.1} s ({:.0} rows/s)",
        rows as f64 / seconds
    );
    println!("{out}");
    Ok(())
}

/// Bulk-fills the site's tracking table with delivered calls, change
/// sequences 1..=rows, as if the site had made them while cut off.
fn fill_site(buffer: &std::path::Path, rows: u64) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(buffer)?;
    let tx = conn.transaction()?;
    let now = sitelink_commons::utc_to_unix_ms(time::OffsetDateTime::now_utc());
    {
        let mut stmt = tx.prepare(
            "INSERT INTO tracking(id, kind, target_summary, status, retry_count, last_error, provenance,
                 created_at_ms, updated_at_ms, terminal_at_ms, revision, change_seq)
             VALUES (?1, 'ExternalCall', 'erp.postOrder', 'Delivered', 0, NULL, 'line1/orders', ?2, ?2, ?2, 2, ?3)",
        )?;
        for seq in 1..=rows {
            let id = sitelink_commons::TrackedOperationId::new();
            stmt.execute(rusqlite::params![
                id.to_string(),
                now - (rows - seq) as i64,
                seq
            ])?;
        }
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'change_seq'",
        [rows],
    )?;
    tx.commit()?;
    Ok(())
}
