//! `sitelink bench ui [--quick]`: server time of the web UI's pages on a
//! `site_calls` table of 1,000,000 rows (SQLite, the default backend) —
//! the Site Calls page unfiltered and filtered by site + Parked, and the
//! dashboard — against the REST listing of the same query in the same run.
//!
//! Server time: each request goes through central's HTTP router in-process
//! (`oneshot`, no socket), so it counts routing, the session or token
//! check, the queries and the rendering, and nothing of a network or a
//! browser. The page and its REST twin go through the same listing
//! (`ListQuery`, `list_page`: one row more than shown, to know whether an
//! Older page exists), so the REST twin is asked for the page's number of
//! rows. Requests are interleaved (page, REST, page, …) so that both see
//! the same cache and the same machine.
//!
//! Goals (issue 10): page p99 ≤ 50 ms and ≤ 2× the REST listing; dashboard
//! p99 ≤ 100 ms.

use std::time::{Duration, Instant};

use serde_json::json;
use sitelink_central::configuration_database::{Database, Role};
use sitelink_commons::SiteName;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{
    central_world::{BenchDb, Db},
    quantile_ms, queries,
};

pub async fn run(rows: usize, size: super::Size) -> anyhow::Result<()> {
    let repeats = size.pick(300, 60, 3);
    let bench_db = BenchDb::new(Db::Sqlite).await?;
    let database = Database::connect(&bench_db.url).await?;
    let t = Instant::now();
    queries::fill(&database, rows).await?;
    println!("inserted {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
    for i in 0..queries::SITES {
        database
            .sites()
            .add(&SiteName::parse(&format!("site-{i:02}"))?)
            .await?;
    }
    sitelink_central::authentication::add_user(&database, "bench", "bench password", Role::Admin)
        .await?;
    let (token, _) = database.users().issue_token("bench", Some("bench")).await?;
    let (secret, _) = database.ui_sessions().open("bench").await?;
    database.pool().close().await;

    let central = bench_db.central_with(1000, 300, "").await?;
    let app = central.http_app();
    let host = central.http_addr().to_string();
    let cancel = CancellationToken::new();
    let running = super::central_world::run_active(central, &cancel).await?;

    let session = format!("sitelink_session={secret}");
    let bearer = format!("Bearer {token}");
    let limit = sitelink_central::central_ui::PAGE_ROWS;
    let cases: [(&str, String, String); 2] = [
        (
            "unfiltered",
            "/site-calls".into(),
            format!("/api/v1/site-calls?limit={limit}"),
        ),
        (
            "site+Parked",
            "/site-calls?site=site-07&status=Parked".into(),
            format!("/api/v1/site-calls?site=site-07&status=Parked&limit={limit}"),
        ),
    ];
    let request = |path: &str, cookie: bool| {
        let b = axum::http::Request::get(path).header("host", &host);
        let b = if cookie {
            b.header("cookie", &session)
        } else {
            b.header("authorization", &bearer)
        };
        b.body(axum::body::Body::empty()).expect("a request")
    };
    let time = |req: axum::http::Request<axum::body::Body>| {
        let app = app.clone();
        async move {
            let t = Instant::now();
            let resp = app.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await?;
            let took = t.elapsed();
            anyhow::ensure!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
            Ok::<_, anyhow::Error>((took, body.len()))
        }
    };
    // Warm-up: the first queries read the indexes from disk.
    for _ in 0..5 {
        for (_, page, rest) in &cases {
            time(request(page, true)).await?;
            time(request(rest, false)).await?;
        }
        time(request("/dashboard", true)).await?;
    }
    let mut figures = serde_json::Map::new();
    let mut page_p99 = 0f64;
    let mut ratio = 0f64;
    let mut dashboard = Vec::new();
    let mut lat: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); cases.len()];
    for _ in 0..repeats {
        for (i, (_, page, rest)) in cases.iter().enumerate() {
            lat[i].0.push(time(request(page, true)).await?.0);
            lat[i].1.push(time(request(rest, false)).await?.0);
        }
        dashboard.push(time(request("/dashboard", true)).await?.0);
    }
    for ((name, _, _), (mut page, mut rest)) in cases.iter().zip(lat) {
        page.sort();
        rest.sort();
        let (p50, p99) = (quantile_ms(&page, 0.5), quantile_ms(&page, 0.99));
        let (r50, r99) = (quantile_ms(&rest, 0.5), quantile_ms(&rest, 0.99));
        println!(
            "Site Calls page {name:<12} p50 {p50:>6.2} ms  p99 {p99:>6.2} ms | REST p50 {r50:>6.2} ms  p99 {r99:>6.2} ms | p99 ratio {:.2}",
            p99 / r99
        );
        figures.insert(
            (*name).into(),
            json!({ "page_p50_ms": p50, "page_p99_ms": p99, "rest_p50_ms": r50, "rest_p99_ms": r99, "page_vs_rest_ratio": p99 / r99 }),
        );
        page_p99 = page_p99.max(p99);
        ratio = ratio.max(p99 / r99);
    }
    dashboard.sort();
    let (d50, d99) = (quantile_ms(&dashboard, 0.5), quantile_ms(&dashboard, 0.99));
    println!("dashboard p50 {d50:.2} ms  p99 {d99:.2} ms");
    cancel.cancel();
    running.await??;
    bench_db.drop_database().await;
    let out = json!({
        "bench": "ui",
        "db": "sqlite",
        "rows": rows,
        "quick": size.quick(),
        "repeats": repeats,
        "pages": figures,
        "page_p99_ms": page_p99,
        "page_vs_rest_ratio": ratio,
        "dashboard_p50_ms": d50,
        "dashboard_p99_ms": d99,
        "goal_page_p99_ms_max": 50.0,
        "goal_page_vs_rest_ratio_max": 2.0,
        "goal_dashboard_p99_ms_max": 100.0,
        "goals_met": page_p99 <= 50.0 && ratio <= 2.0 && d99 <= 100.0,
    });
    println!("{out}");
    Ok(())
}
