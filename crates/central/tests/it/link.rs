//! The central–site link with real sites and a real central in one
//! process: telemetry plus reconciliation converge through cut connections;
//! Retry/Discard are relayed to the owning site; bad peers are refused.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use sitelink_central::site_call_audit::{Command, CommandOutcome};
use sitelink_commons::TrackedOperationStatus::*;
use sitelink_test_support::{eventually, FakeHttp, Mode, TcpProxy};

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_reconcile_converge_through_cut_connections() {
    let central = spawn_central().await;
    let fake = FakeHttp::start(Mode::SucceedEvery(3)).await;
    let mut sites = Vec::new();
    let mut proxies = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let token = register(&central, name).await;
        let proxy = TcpProxy::start(central.link).await;
        sites.push(spawn_site(name, &token, proxy.addr(), &fake.url(), 4).await);
        proxies.push(proxy);
    }
    // Load while the link is cut and healed several times.
    for round in 0..6 {
        if round % 2 == 0 {
            proxies.iter().for_each(TcpProxy::cut);
        }
        for s in &sites {
            s.runtime.run_source("burst", "line1", BURST).await.unwrap();
        }
        if round % 2 == 0 {
            proxies.iter().for_each(TcpProxy::heal);
        }
    }
    // One site stays offline for several reconcile periods while it works.
    proxies[2].cut();
    eventually(
        Duration::from_secs(5),
        "central sees s3 offline",
        || async { (!central.audit.is_online("s3").await).then_some(()) },
    )
    .await;
    // Offline past several reconcile periods (1 s each), working all along.
    for _ in 0..3 {
        sites[2]
            .runtime
            .run_source("burst", "line1", BURST)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    fake.set_mode(Mode::Ok).await;
    for s in &sites {
        eventually(Duration::from_secs(20), "site calls settle", || async {
            s.rows()
                .await
                .iter()
                .all(|r| matches!(r.status, Delivered | Parked))
                .then_some(())
        })
        .await;
    }
    converged(&central, &sites[0], "s1").await;
    converged(&central, &sites[1], "s2").await;
    assert!(
        central
            .db
            .site_calls()
            .all_for_site("s3")
            .await
            .unwrap()
            .len()
            < sites[2].rows().await.len()
    );
    proxies[2].heal();
    converged(&central, &sites[2], "s3").await;

    // The site learned central's cursor (its purge rule uses it).
    for (s, name) in sites.iter().zip(["s1", "s2", "s3"]) {
        let cursor = central
            .db
            .sites()
            .get(name)
            .await
            .unwrap()
            .unwrap()
            .reconcile_cursor;
        eventually(
            Duration::from_secs(10),
            "the site learns the acknowledged cursor",
            || async {
                (s.engine.acked_cursor().await.unwrap() == cursor && cursor == s.engine.high_seq())
                    .then_some(())
            },
        )
        .await;
    }
    for s in &mut sites {
        s.stop().await;
    }
    central.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_discard_are_relayed_to_the_owning_site() {
    let central = spawn_central().await;
    let fake = FakeHttp::start(Mode::Unavailable).await;
    let token = register(&central, "s1").await;
    let mut site = spawn_site("s1", &token, central.link, &fake.url(), 1).await;
    let run = site
        .runtime
        .run_source("burst", "line1", BURST)
        .await
        .unwrap();
    let ids = run.tracked_operation_ids;
    eventually(Duration::from_secs(10), "all parked at central", || async {
        let rows = central.db.site_calls().all_for_site("s1").await.unwrap();
        (rows.len() == 5 && rows.iter().all(|r| r.status == Parked)).then_some(())
    })
    .await;
    fake.set_mode(Mode::Ok).await;
    let timeout = Duration::from_secs(2);
    assert_eq!(
        central
            .audit
            .relay("ops", "s1", Command::Retry(ids[0]), timeout)
            .await,
        CommandOutcome::Applied
    );
    assert_eq!(
        central
            .audit
            .relay("ops", "s1", Command::Discard(ids[1]), timeout)
            .await,
        CommandOutcome::Applied
    );
    assert_eq!(
        central
            .audit
            .relay("ops", "s1", Command::Discard(ids[1]), timeout)
            .await,
        CommandOutcome::NotParked
    );
    let unknown = sitelink_commons::TrackedOperationId::new();
    assert_eq!(
        central
            .audit
            .relay("ops", "s1", Command::Retry(unknown), timeout)
            .await,
        CommandOutcome::NotFound
    );
    // Central never edits the row; the site's telemetry brings the change.
    eventually(
        Duration::from_secs(10),
        "retried call Delivered at central",
        || async {
            let a = central.db.site_calls().get(ids[0]).await.unwrap().unwrap();
            let b = central.db.site_calls().get(ids[1]).await.unwrap().unwrap();
            (a.status == Delivered && b.status == Discarded).then_some(())
        },
    )
    .await;
    // A stopped site: unreachable at once.
    site.stop().await;
    eventually(
        Duration::from_secs(5),
        "central notices the site is gone",
        || async { (!central.audit.is_online("s1").await).then_some(()) },
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        central
            .audit
            .relay("ops", "s1", Command::Retry(ids[2]), timeout)
            .await,
        CommandOutcome::SiteUnreachable
    );
    // At once: not after waiting out the relay timeout.
    assert!(started.elapsed() < timeout);
    central.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_alone_keeps_central_current() {
    // Reconcile only on connect (the period is an hour here): every later
    // change must arrive by telemetry, and advance the cursor.
    let central = spawn_central_with("reconcile_interval_seconds = 3600").await;
    let fake = FakeHttp::start(Mode::Ok).await;
    let token = register(&central, "s1").await;
    let mut site = spawn_site("s1", &token, central.link, &fake.url(), 3).await;
    eventually(Duration::from_secs(5), "s1 online", || async {
        central.audit.is_online("s1").await.then_some(())
    })
    .await;
    // Once the reconcile of the connect is done (the cursor covers
    // everything), later changes travel by telemetry alone.
    site.runtime
        .run_source("burst", "line1", BURST)
        .await
        .unwrap();
    converged(&central, &site, "s1").await;
    let cursor_covers_site = || async {
        let cursor = central
            .db
            .sites()
            .get("s1")
            .await
            .unwrap()
            .unwrap()
            .reconcile_cursor;
        (cursor == site.engine.high_seq()).then_some(())
    };
    eventually(
        Duration::from_secs(5),
        "the cursor covers the site",
        cursor_covers_site,
    )
    .await;
    let stats = &central.stats;
    let (telemetry0, reconcile0) = (
        stats.telemetry_rows.load(Relaxed),
        stats.reconcile_rows.load(Relaxed),
    );
    for _ in 0..2 {
        site.runtime
            .run_source("burst", "line1", BURST)
            .await
            .unwrap();
    }
    converged(&central, &site, "s1").await;
    eventually(
        Duration::from_secs(5),
        "telemetry batches advance the cursor",
        cursor_covers_site,
    )
    .await;
    assert_eq!(
        stats.reconcile_rows.load(Relaxed),
        reconcile0,
        "nothing needed reconciling"
    );
    assert!(
        stats.telemetry_rows.load(Relaxed) >= telemetry0 + 10,
        "every call arrived by telemetry"
    );
    site.stop().await;
    central.cancel.cancel();
}
