//! Cluster Infrastructure: with SQLite one node per database file; with
//! PostgreSQL a leader lease (on the database's clock, renewed only by its
//! holder, fenced) decides which of several nodes is active.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sitelink_central::{
    configuration_database::{
        leader_lease::{self as lease, Term},
        Database,
    },
    Central, CentralConfig,
};
use sitelink_test_support::{eventually, FakeHttp, Mode};

fn config(dir: &std::path::Path) -> CentralConfig {
    CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\n",
        dir,
    )
    .unwrap()
}

#[tokio::test]
async fn a_second_node_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Central::build(config(dir.path())).await.unwrap();
    let second = Central::build(config(dir.path()))
        .await
        .err()
        .expect("refused");
    let message = format!("{second:#}");
    assert!(
        message.contains("another central node is running on the SQLite database")
            && message.contains("PostgreSQL"),
        "{message}"
    );
    // The lock goes with the first node; then a node may start.
    drop(first);
    Central::build(config(dir.path())).await.unwrap();
}

/// A refused singleton write: a purge through a handle fenced to `term`.
async fn fenced_write(db: &Database, term: &Term) -> Result<u64, sqlx::Error> {
    db.fenced(term.clone()).site_calls().purge(0).await
}

#[tokio::test]
async fn the_lease_has_one_holder_renewed_by_it_alone_and_stale_writes_are_fenced() {
    let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        // fresh_database said why
        return;
    };
    let db = Database::connect(&pg.url).await.unwrap();
    // Lease writes run on a connection of their own (the elector's).
    let mut conn = db.pool().acquire().await.unwrap();
    let pool = &mut *conn;
    let a = lease::try_acquire(pool, "a", 60_000)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert!(
        lease::try_acquire(pool, "b", 60_000)
            .await
            .unwrap()
            .is_none(),
        "held: not taken"
    );
    assert!(lease::renew(pool, &a, 60_000).await.unwrap());
    let impostor = Term {
        holder: "b".into(),
        epoch: a.epoch,
    };
    assert!(
        !lease::renew(pool, &impostor, 60_000).await.unwrap(),
        "only the holder renews"
    );
    fenced_write(&db, &a).await.expect("the holder writes");
    let e = fenced_write(&db, &impostor).await.unwrap_err();
    assert!(lease::is_fenced(&e), "{e}");

    // A release hands over at once.
    lease::release(pool, &a).await.unwrap();
    let b = lease::try_acquire(pool, "b", 300)
        .await
        .unwrap()
        .expect("released: taken");
    assert_eq!(b.epoch, a.epoch + 1);
    assert!(
        !lease::renew(pool, &a, 60_000).await.unwrap(),
        "an old term never renews"
    );
    let e = fenced_write(&db, &a).await.unwrap_err();
    assert!(
        lease::is_fenced(&e),
        "the old holder's writes are refused: {e}"
    );

    // An expired lease (300 ms on the database's clock) is taken over.
    let a2 = eventually(Duration::from_secs(5), "b's lease expires", || async {
        let mut c = db.pool().acquire().await.unwrap();
        lease::try_acquire(&mut c, "a", 60_000).await.unwrap()
    })
    .await;
    assert_eq!(a2.epoch, b.epoch + 1);
    let e = fenced_write(&db, &b).await.unwrap_err();
    assert!(lease::is_fenced(&e), "{e}");
    drop(conn);
    db.pool().close().await;
    pg.drop_database().await;
}

/// Waits (15 s at most) until `site` streams to the node `c`.
async fn streams_to(c: &TestCentral, site: &str, what: &str) {
    eventually(Duration::from_secs(15), what, || async {
        c.audit
            .online()
            .await
            .iter()
            .any(|s| s == site)
            .then_some(())
    })
    .await;
}

fn node(name: &str) -> String {
    format!(
        "reconcile_interval_seconds = 1\n[cluster]\nnode_name = \"{name}\"\nlease_ttl_ms = 3000\nrenew_every_ms = 300\nstep_down_after_ms = 1500\nstandby_poll_ms = 200"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_active_a_graceful_stop_hands_over_and_nothing_is_lost() {
    let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        // fresh_database said why
        return;
    };
    let a = spawn_central_on(&pg.url, &node("a")).await;
    let b = spawn_central_on(&pg.url, &node("b")).await;
    let pool = a.db.pool().clone();
    let holder = || async {
        let s = lease::state(&pool).await.unwrap();
        (s.expires_at_ms > s.now_ms)
            .then_some(s)
            .and_then(|s| s.holder.map(|h| (h, s.epoch)))
    };
    let (first, epoch) = eventually(Duration::from_secs(10), "one node active", holder).await;
    let (active, standby) = if first == "a" { (&a, &b) } else { (&b, &a) };
    sitelink_central::authentication::add_user(
        &a.db,
        "ops",
        "correct horse battery",
        sitelink_central::configuration_database::Role::Viewer,
    )
    .await
    .unwrap();
    let api = Api::new(standby);
    let ops = ("ops", "correct horse battery");
    // Either node shows the cluster: both nodes, who is active, the lease.
    let view = eventually(Duration::from_secs(10), "both nodes reported", || async {
        let (status, v) = api.get("/api/v1/cluster", ops).await;
        assert_eq!(status, 200, "{v}");
        (v["nodes"].as_array()?.len() == 2).then_some(v)
    })
    .await;
    assert_eq!(view["mode"], "active-standby");
    assert_eq!(view["this_node_active"], false);
    assert_eq!(view["lease"]["holder"], first.as_str());
    let roles: Vec<(String, String)> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(first.clone(), "active".to_owned())),
        "{roles:?}"
    );
    let metrics = api.raw("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("sitelink_cluster_active{node=") && metrics.contains("} 0"),
        "{metrics}"
    );

    // A site that knows both nodes ends up streaming to the active one only.
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let token = register(&a, "plant-1").await;
    let site = spawn_site_at(
        "plant-1",
        &token,
        &[standby.link, active.link],
        &erp.url(),
        1,
        "",
    )
    .await;
    site.runtime
        .run_source("burst", "line1", BURST)
        .await
        .unwrap();
    streams_to(active, "plant-1", "the site streams to the active node").await;
    assert!(
        standby.audit.online().await.is_empty(),
        "the standby runs no actor"
    );
    converged(active, &site, "plant-1").await;

    // A Retry asked of the standby is carried out by the active node, with
    // the same outcome, and written to the audit log once per request.
    sitelink_central::authentication::add_user(
        &standby.db,
        "dev",
        "correct horse battery",
        sitelink_central::configuration_database::Role::Deployment,
    )
    .await
    .unwrap();
    let parked = eventually(Duration::from_secs(15), "a parked call", || async {
        let rows = site.rows().await;
        rows.into_iter()
            .find(|r| r.status == sitelink_commons::TrackedOperationStatus::Parked)
    })
    .await;
    let id = parked.tracked_operation_id;
    let dev = ("dev", "correct horse battery");
    let (status, answer) = api
        .post(&format!("/api/v1/site-calls/{id}/retry"), dev)
        .await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("Applied")),
        "{answer}"
    );
    let log = standby
        .db
        .audit_log()
        .for_target(&id.to_string(), 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 1, "one entry per request: {log:?}");
    assert_eq!(
        (log[0].user.as_str(), log[0].outcome.as_str()),
        ("dev", "Applied")
    );

    // A graceful stop: the standby is active within 2 s, the site follows.
    let stopped = Instant::now();
    active.cancel.cancel();
    let (second, epoch2) = eventually(Duration::from_secs(5), "the standby takes over", || async {
        holder().await.filter(|(h, _)| *h != first)
    })
    .await;
    let handover = stopped.elapsed();
    assert!(
        handover < Duration::from_secs(2),
        "handover took {handover:?}"
    );
    assert!(epoch2 > epoch);
    streams_to(
        standby,
        "plant-1",
        "the site streams to the new active node",
    )
    .await;
    site.runtime
        .run_source("burst", "line1", BURST)
        .await
        .unwrap();
    converged(standby, &site, "plant-1").await;
    let (_, view) = api.get("/api/v1/cluster", ops).await;
    assert_eq!(view["this_node_active"], true);
    let gap = view["lease"]["last_failover_ms"]
        .as_i64()
        .expect("a handover was recorded");
    assert!((0..2000).contains(&gap), "{view}");
    // The old term's writes are refused.
    let old = Term {
        holder: first.clone(),
        epoch,
    };
    let e = fenced_write(&standby.db, &old).await.unwrap_err();
    assert!(lease::is_fenced(&e), "{e}");
    eprintln!("graceful handover {first} -> {second} in {handover:?}");
    standby.cancel.cancel();
    pg.drop_database().await;
}

/// The active node loses its database (a fault-injecting proxy between it
/// and PostgreSQL cuts every connection and refuses new ones): it steps
/// down within its step-down time, and the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_node_that_loses_its_database_steps_down_and_the_standby_takes_over() {
    let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        // fresh_database said why
        return;
    };
    // Node "a" reaches PostgreSQL through the proxy; "b" directly.
    let url: url::Url = pg.url.parse().unwrap();
    let upstream: std::net::SocketAddr = format!(
        "{}:{}",
        url.host_str().unwrap().replace("localhost", "127.0.0.1"),
        url.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let proxy = sitelink_test_support::TcpProxy::start(upstream).await;
    let mut via_proxy = url.clone();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();
    via_proxy.set_port(Some(proxy.addr().port())).unwrap();
    let a = spawn_central_on(via_proxy.as_str(), &node("a")).await;
    let pool = Database::connect(&pg.url).await.unwrap().pool().clone();
    let holder = || async {
        let s = lease::state(&pool).await.unwrap();
        (s.expires_at_ms > s.now_ms).then_some(s.holder).flatten()
    };
    eventually(Duration::from_secs(10), "a is active", || async {
        (holder().await.as_deref() == Some("a")).then_some(())
    })
    .await;
    let b = spawn_central_on(&pg.url, &node("b")).await;
    let cut = Instant::now();
    proxy.cut();
    // a cannot renew: after step_down_after (1.5 s) it stops its
    // singletons — before its lease (3 s) expires and b can acquire.
    eventually(Duration::from_secs(5), "a steps down", || async {
        (!a.cluster.is_active()).then_some(())
    })
    .await;
    let stepped_down = cut.elapsed();
    assert!(
        holder().await.as_deref() != Some("b"),
        "a stopped before b could start"
    );
    eventually(Duration::from_secs(10), "b takes over", || async {
        (holder().await.as_deref() == Some("b")).then_some(())
    })
    .await;
    let took_over = cut.elapsed();
    assert!(
        stepped_down < Duration::from_millis(3000),
        "{stepped_down:?}"
    );
    assert!(took_over < Duration::from_secs(6), "{took_over:?}");
    eprintln!("database cut: a stepped down after {stepped_down:?}, b active after {took_over:?}");
    proxy.heal();
    b.cancel.cancel();
    a.cancel.cancel();
    pg.drop_database().await;
}
