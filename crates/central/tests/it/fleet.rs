//! The reconnect storm, tamed (issue 22): a hundred simulated sites
//! (`sitelink_test_support::fleet`, the real protocol and the real
//! reconnect schedule) dial one central at once and are admitted at its
//! rate, each refused site answered "busy, retry after" and coming back on
//! its turn; after every stream is cut in the same instant, the sites
//! redial spread over their window. And a real site over the rate hears
//! "busy" and comes back.

use std::time::{Duration, Instant};

use sitelink_test_support::{
    eventually,
    fleet::{loopback, most_within, SimSite, SimSpec},
    TcpProxy,
};
use tokio_util::sync::CancellationToken;

use crate::common::{register, spawn_central_with, spawn_site_with};

const SITES: usize = 100;
const RATE: usize = 40;
const BURST: usize = 10;
const SPREAD: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sites_dialling_at_once_are_admitted_at_the_rate_and_redial_spread_after_a_cut() {
    let c = spawn_central_with(&format!(
        "link_admit_per_second = {RATE}\nlink_admit_burst = {BURST}"
    ))
    .await;
    // Every stream goes through the proxy, so all can be cut at once.
    let proxy = TcpProxy::start(c.link).await;
    let mut fleet = Vec::new();
    for i in 0..SITES {
        let name = format!("sim-{i:03}");
        let token = register(&c, &name).await;
        let site = SimSite::new(SimSpec {
            name,
            token,
            central: proxy.addr(),
            from: loopback(i),
            spread: SPREAD,
            reconnect_max: Duration::from_secs(2),
        });
        // Something for the reconcile on connect to carry.
        for _ in 0..3 {
            site.change();
        }
        fleet.push(site);
    }
    let cancel = CancellationToken::new();
    for s in &fleet {
        tokio::spawn(s.clone().run(cancel.clone()));
    }
    let all_in = |since: Instant| {
        let fleet = fleet.clone();
        async move {
            fleet
                .iter()
                .all(|s| {
                    let r = s.report();
                    r.streaming && r.reconciled_at.is_some_and(|t| t >= since)
                })
                .then_some(())
        }
    };
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(60),
        "every site streams and is reconciled",
        || all_in(t0),
    )
    .await;

    // The admission answer: the burst at once, every other site told
    // "busy" with its own turn, and admitted when it came back on it.
    let reports: Vec<_> = fleet.iter().map(SimSite::report).collect();
    let busy: usize = reports.iter().map(|r| r.busy.len()).sum();
    assert!(
        busy >= SITES / 2,
        "only {busy} busy answers to {SITES} sites dialling at once"
    );
    assert_eq!(
        c.stats
            .streams_busy
            .load(std::sync::atomic::Ordering::Relaxed),
        busy as u64,
        "central counted the busy answers the sites heard"
    );
    for r in &reports {
        assert_eq!(r.early, 0, "a site came back before its pushback");
        assert!(
            r.busy.len() <= 2,
            "a site was refused {} times: {r:?}",
            r.busy.len()
        );
        assert_eq!(r.failed, 0, "a dial failed (not busy) in the storm: {r:?}");
        assert_eq!(r.admitted.len(), 1);
    }
    // Pushbacks are turns one cell (25 ms) apart, not one shared instant.
    let mut told: Vec<Duration> = reports
        .iter()
        .filter_map(|r| {
            r.busy
                .first()
                .map(|(at, after)| (*at + *after).duration_since(t0))
        })
        .collect();
    told.sort();
    let span = told.last().unwrap().saturating_sub(told[0]);
    assert!(
        span >= Duration::from_millis(25) * (told.len() as u32 - 1) * 9 / 10,
        "the turns span only {span:?}"
    );
    // The rate held: at most rate × (1 s + the sites' lateness) + burst
    // admitted within any second.
    let mut admitted: Vec<Instant> = reports.iter().map(|r| r.admitted[0]).collect();
    admitted.sort();
    let within = most_within(&admitted, Duration::from_secs(1));
    assert!(
        within <= RATE * 12 / 10 + BURST,
        "{within} streams admitted within one second (rate {RATE}, burst {BURST})"
    );
    let storm = admitted.last().unwrap().duration_since(admitted[0]);
    assert!(
        storm >= Duration::from_secs_f64((SITES - BURST) as f64 / RATE as f64 * 0.8),
        "{SITES} sites admitted within {storm:?}: faster than the rate allows"
    );
    assert_eq!(c.audit.online().await.len(), SITES);

    // Every stream cut in one instant: the sites redial spread over their
    // window instead of together.
    proxy.cut();
    eventually(
        Duration::from_secs(30),
        "every site notices the cut",
        || {
            let fleet = fleet.clone();
            async move { fleet.iter().all(|s| !s.report().streaming).then_some(()) }
        },
    )
    .await;
    let healed = Instant::now();
    proxy.heal();
    eventually(
        Duration::from_secs(60),
        "every site streams again, reconciled",
        || all_in(healed),
    )
    .await;
    let mut redial: Vec<Duration> = fleet
        .iter()
        .map(|s| {
            let r = s.report();
            r.redialled_at.unwrap().duration_since(r.lost_at.unwrap())
        })
        .collect();
    redial.sort();
    assert!(
        *redial.last().unwrap() >= SPREAD / 2,
        "every site redialled within {:?} of its loss: not spread over {SPREAD:?}",
        redial.last().unwrap()
    );
    assert!(*redial.last().unwrap() <= SPREAD + Duration::from_millis(200));
    // Uniform over 2 s puts about 10 in each 200 ms; together would put
    // all 100 in one.
    let within = most_within(&redial, Duration::from_millis(200));
    assert!(
        within <= 30,
        "{within} sites redialled within 200 ms of each other"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_site_above_the_rate_is_told_busy_and_comes_back_on_its_turn() {
    // One stream a second: two simulated sites take this second's cell and
    // reserve the next; the real site after them is told to come back in
    // about two seconds.
    let c = spawn_central_with("link_admit_per_second = 1\nlink_admit_burst = 1").await;
    let cancel = CancellationToken::new();
    let mut sims = Vec::new();
    for i in 0..2 {
        let name = format!("sim-{i}");
        let token = register(&c, &name).await;
        let s = SimSite::new(SimSpec {
            name,
            token,
            central: c.link,
            from: loopback(i),
            spread: Duration::ZERO,
            reconnect_max: Duration::from_secs(1),
        });
        tokio::spawn(s.clone().run(cancel.clone()));
        sims.push(s);
    }
    eventually(
        Duration::from_secs(10),
        "the first simulated site streams",
        || {
            let s = sims[0].clone();
            async move { s.report().streaming.then_some(()) }
        },
    )
    .await;
    let token = register(&c, "plant-real").await;
    let started = Instant::now();
    let mut site = spawn_site_with("plant-real", &token, c.link, "http://127.0.0.1:9", 3, "").await;
    eventually(Duration::from_secs(15), "the real site streams", || {
        let audit = c.audit.clone();
        async move {
            audit
                .online()
                .await
                .iter()
                .any(|s| s == "plant-real")
                .then_some(())
        }
    })
    .await;
    let took = started.elapsed();
    let sims_busy: usize = sims.iter().map(|s| s.report().busy.len()).sum();
    let all_busy = c
        .stats
        .streams_busy
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    assert!(
        all_busy > sims_busy,
        "the real site was never told busy (central: {all_busy}, the simulated sites heard {sims_busy})"
    );
    // It waited for its turn (about a second after the cell reserved
    // before it), not a backoff's 100 ms, and was then admitted.
    assert!(
        took >= Duration::from_millis(700),
        "online after {took:?}: before its turn"
    );
    assert_eq!(c.audit.online().await.len(), 3);
    site.stop().await;
    cancel.cancel();
}
