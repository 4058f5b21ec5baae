//! `sitelink bench queries --rows N --db sqlite|postgres`: the KPI query and
//! the first page of filtered Site Calls listings on a `site_calls` table of
//! N rows, each against its own limit (KPIs p99 ≤ 50 ms, first page p99 ≤
//! 100 ms).
//!
//! The rows look like a year of a busy fleet compressed into 30 days: 20
//! sites, 97 % Delivered, 1 % Failed, 1 % Parked, 0.5 % Pending, 0.5 %
//! Retrying, creation times spread over 30 days, two thirds ExternalCall.
//! They are bulk-inserted (not through ingest: this measures reading); on
//! PostgreSQL the server generates them and the table is vacuumed after.

use std::time::{Duration, Instant};

use serde_json::json;
use sitelink_central::configuration_database::{Database, ListFilter, Page};
use sitelink_commons::{Kind, TrackedOperationStatus::*};

use super::{
    central_world::{BenchDb, Db},
    median, quantile_ms,
};

pub(super) const SITES: usize = 20;

pub async fn run(db: Db, rows: usize, size: super::Size) -> anyhow::Result<()> {
    let repeats = size.pick(100, 30, 3);
    let bench_db = BenchDb::new(db).await?;
    let database = Database::connect(&bench_db.url).await?;
    let start = Instant::now();
    match db {
        Db::Sqlite => fill(&database, rows).await?,
        Db::Postgres => fill_postgres(&database, rows).await?,
    }
    let fill_seconds = start.elapsed().as_secs_f64();
    println!("inserted {rows} rows in {fill_seconds:.1} s");
    if db == Db::Postgres {
        // What autovacuum does to a table that stopped changing after a bulk
        // load: statistics, and the visibility map that lets the KPI and
        // page queries answer from their covering indexes alone.
        sqlx::query("VACUUM ANALYZE site_calls")
            .execute(database.pool())
            .await?;
    }

    // The Site Call Audit actor folds the open-call deltas every few
    // seconds; after a bulk load that is one large fold.
    let t = Instant::now();
    let folded = database.site_calls().fold_open_counts().await?;
    let fold_seconds = t.elapsed().as_secs_f64();
    println!("folded {folded} open-call deltas in {fold_seconds:.2} s");
    if db == Db::Postgres {
        sqlx::query("VACUUM ANALYZE site_call_open_counts")
            .execute(database.pool())
            .await?;
    }

    let now = sitelink_central::configuration_database::now_ms();
    let mut kpi = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let per_site = database.site_calls().kpis_per_site(now, 3600, 600).await?;
        anyhow::ensure!(
            per_site.len() == SITES,
            "KPIs cover {} sites",
            per_site.len()
        );
        kpi.push(t.elapsed());
    }
    kpi.sort();

    let filters = [
        ("none", ListFilter::default()),
        (
            "site",
            ListFilter {
                site: Some("site-07".into()),
                ..Default::default()
            },
        ),
        (
            "site+status=Parked",
            ListFilter {
                site: Some("site-07".into()),
                statuses: vec![Parked],
                ..Default::default()
            },
        ),
        (
            "status=Failed",
            ListFilter {
                statuses: vec![Failed],
                ..Default::default()
            },
        ),
        (
            // Delivered rows are in no status index (migration 6): this
            // walks the site's creation-time index.
            "site+status=Delivered",
            ListFilter {
                site: Some("site-11".into()),
                statuses: vec![Delivered],
                ..Default::default()
            },
        ),
        (
            "kind=DatabaseWrite",
            ListFilter {
                kind: Some(Kind::DatabaseWrite),
                ..Default::default()
            },
        ),
        (
            "site+last 24h",
            ListFilter {
                site: Some("site-03".into()),
                from_ms: Some(now - 86_400_000),
                ..Default::default()
            },
        ),
    ];
    let mut pages = serde_json::Map::new();
    let mut all: Vec<Duration> = Vec::new();
    for (name, f) in &filters {
        let mut lat = Vec::new();
        let mut second_page = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            let page = database
                .site_calls()
                .list_page(f, &Page::First, 100)
                .await?;
            lat.push(t.elapsed());
            // A small data set may hold fewer matching rows than a page;
            // a page with an older page after it must be full.
            anyhow::ensure!(
                page.items.len() == 100 || page.older.is_none(),
                "{name}: first page has {} rows and more after it",
                page.items.len()
            );
            let Some(cursor) = page.older else {
                continue;
            };
            let t = Instant::now();
            database
                .site_calls()
                .list_page(f, &Page::After(cursor), 100)
                .await?;
            second_page.push(t.elapsed());
        }
        lat.sort();
        second_page.sort();
        println!(
            "page {name:<20} p50 {:>7.2} ms  p99 {:>7.2} ms   (next page p99 {:>7.2} ms)",
            quantile_ms(&lat, 0.5),
            quantile_ms(&lat, 0.99),
            quantile_ms(&second_page, 0.99)
        );
        pages.insert(
            (*name).into(),
            json!({ "p50_ms": quantile_ms(&lat, 0.5), "p99_ms": quantile_ms(&lat, 0.99), "next_page_p99_ms": quantile_ms(&second_page, 0.99) }),
        );
        all.extend(lat);
    }
    all.sort();
    let (kpi_p50, kpi_p99) = (quantile_ms(&kpi, 0.5), quantile_ms(&kpi, 0.99));
    let page_p99 = pages
        .values()
        .map(|v| v["p99_ms"].as_f64().unwrap_or(f64::MAX))
        .fold(0.0, f64::max);
    println!("kpis p50 {kpi_p50:.2} ms  p99 {kpi_p99:.2} ms");
    let out = json!({
        "bench": "queries",
        "db": format!("{db:?}").to_lowercase(),
        "rows": rows,
        "quick": size.quick(),
        "repeats": repeats,
        "fill_seconds": fill_seconds,
        "folded_deltas": folded,
        "fold_seconds": fold_seconds,
        "kpi_p50_ms": kpi_p50,
        "kpi_p99_ms": kpi_p99,
        "page_p50_ms": median(&all.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>()),
        "page_p99_ms": page_p99,
        "pages": pages,
        "goal_kpi_p99_ms_max": 50.0,
        "goal_page_p99_ms_max": 100.0,
        "goals_met": kpi_p99 <= 50.0 && page_p99 <= 100.0,
    });
    println!("{out}");
    database.pool().close().await;
    bench_db.drop_database().await;
    Ok(())
}

/// Bulk insert: multi-row statements in large transactions.
pub(super) async fn fill(db: &Database, rows: usize) -> anyhow::Result<()> {
    let now = sitelink_central::configuration_database::now_ms();
    // 50 rows per statement: far faster than large statements through sqlx `Any`.
    let per_statement = 50;
    let per_tx = 50_000;
    let mut done = 0usize;
    let mut rng = 0x2545F4914F6CDD1Du64;
    while done < rows {
        let mut tx = db.pool().begin().await?;
        let end = (done + per_tx).min(rows);
        while done < end {
            let n = per_statement.min(end - done);
            let mut sql = String::from(
                "INSERT INTO site_calls (id, source_site, kind, target_summary, status, retry_count, last_error,
                 provenance, created_at_ms, updated_at_ms, terminal_at_ms, revision) VALUES ",
            );
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let roll = rng % 1000;
                let status = match roll {
                    0..=969 => Delivered,
                    970..=979 => Failed,
                    980..=989 => Parked,
                    990..=994 => Pending,
                    _ => Retrying,
                };
                let created = now - ((rng >> 20) % (30 * 86_400_000)) as i64;
                let terminal = status.is_terminal().then_some(created + 1500);
                let kind = if (rng >> 10).is_multiple_of(3) {
                    Kind::DatabaseWrite
                } else {
                    Kind::ExternalCall
                };
                let site = format!("site-{:02}", (rng >> 40) as usize % SITES);
                // Ids only need to be unique and in creation order per row.
                let id = uuid_like(created, rng);
                values.push((id, site, kind, status, created, terminal));
                if i > 0 {
                    sql.push(',');
                }
                let b = i * 7;
                sql.push_str(&format!(
                    "(${}, ${}, ${}, 'erp.postOrder', ${}, 0, NULL, 'line1/orders', ${}, ${}, ${}, 2)",
                    b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7
                ));
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, site, kind, status, created, terminal) in values {
                q = q
                    .bind(id)
                    .bind(site)
                    .bind(kind.as_str())
                    .bind(status.as_str())
                    .bind(created)
                    .bind(created)
                    .bind(terminal);
            }
            q.execute(&mut *tx).await?;
            done += n;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The same distribution as [`fill`], generated by the server itself in
/// chunks of one million rows: through the client the 10-million-row fill
/// would take most of an hour.
pub(super) async fn fill_postgres(db: &Database, rows: usize) -> anyhow::Result<()> {
    let now = sitelink_central::configuration_database::now_ms();
    sqlx::query("SELECT setseed(0.42)")
        .execute(db.pool())
        .await?;
    let chunk = 1_000_000usize;
    let mut done = 0usize;
    while done < rows {
        let end = (done + chunk).min(rows);
        // id: 48 bits of creation ms, version 7, then the row number, so
        // it is unique, UUID-shaped and sorts by creation time.
        sqlx::query(
            "INSERT INTO site_calls (id, source_site, kind, target_summary, status, retry_count,
                 last_error, provenance, created_at_ms, updated_at_ms, terminal_at_ms, revision)
             SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || lpad(to_hex(g % 4096), 3, '0')
                        || '-' || to_hex(32768 + (g / 4096) % 16384) || '-' || lpad(to_hex(g), 12, '0'),
                    site, kind, 'erp.postOrder', status, 0, NULL, 'line1/orders', created, created,
                    CASE WHEN status IN ('Delivered', 'Failed') THEN created + 1500 END, 2
             FROM (SELECT g, created, lpad(to_hex(created), 12, '0') AS h,
                          'site-' || lpad((s % 20)::text, 2, '0') AS site,
                          CASE WHEN k < 1.0 / 3 THEN 'DatabaseWrite' ELSE 'ExternalCall' END AS kind,
                          CASE WHEN roll < 970 THEN 'Delivered' WHEN roll < 980 THEN 'Failed'
                               WHEN roll < 990 THEN 'Parked' WHEN roll < 995 THEN 'Pending'
                               ELSE 'Retrying' END AS status
                   FROM (SELECT g, floor(random() * 1000)::int AS roll, random() AS k,
                                floor(random() * 20)::int AS s,
                                $1 - floor(random() * 2592000000)::bigint AS created
                         FROM generate_series($2::bigint, $3::bigint) AS g) AS r) AS x",
        )
        .bind(now)
        .bind(done as i64)
        .bind(end as i64 - 1)
        .execute(db.pool())
        .await?;
        done = end;
        println!("  {done} rows");
    }
    Ok(())
}

/// A UUID-shaped unique id whose text sorts by `created_ms` (like v7).
fn uuid_like(created_ms: i64, rnd: u64) -> String {
    let hi = (created_ms as u64) << 16 | 0x7000 | (rnd & 0x0fff);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        0x8000 | ((rnd >> 12) & 0x3fff),
        (rnd >> 26) & 0xffff_ffff_ffff ^ (created_ms as u64 & 0xfff)
    )
}
