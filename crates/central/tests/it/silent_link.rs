//! A link that goes silent (a paused peer, a dead cable: the connection
//! stays open and nothing moves) — issue 9 item 9:
//! - both sides notice within their keepalive time: central shows the site
//!   offline and relays answer `SiteUnreachable`; the site reconnects when
//!   the link is back;
//! - a relayed command that reaches the site after its expiry is not
//!   applied, and its late answer is written to the audit log as what it
//!   was.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sitelink_central::site_call_audit::{Command, CommandOutcome};
use sitelink_commons::TrackedOperationStatus;
use sitelink_test_support::{eventually, FakeHttp, Mode, TcpProxy};

/// A site behind a proxy with one parked call, mirrored at central.
async fn parked_site(
    central: &TestCentral,
    keepalive_ms: u64,
) -> (
    TestSite,
    TcpProxy,
    sitelink_commons::TrackedOperationId,
    FakeHttp,
) {
    let erp = FakeHttp::start(Mode::Unavailable).await;
    let token = register(central, "s1").await;
    let proxy = TcpProxy::start(central.link).await;
    let site = spawn_site_with(
        "s1",
        &token,
        proxy.addr(),
        &erp.url(),
        0,
        &format!("keepalive_ms = {keepalive_ms}"),
    )
    .await;
    let ids = site
        .runtime
        .run_source(
            "one",
            "line1",
            r#"[ExternalSystem.CachedCall("erp", "postOrder", #{})]"#,
        )
        .await
        .unwrap()
        .tracked_operation_ids;
    let id = ids[0];
    eventually(
        Duration::from_secs(10),
        "the call parked at central",
        || async {
            let row = central.db.site_calls().get(id).await.unwrap()?;
            (row.status == TrackedOperationStatus::Parked).then_some(())
        },
    )
    .await;
    (site, proxy, id, erp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_shows_offline_within_the_keepalive_time_and_heals() {
    // Keepalive 500 ms on both sides: a silent link is noticed within 1 s.
    let central = spawn_central_with("link_keepalive_ms = 500").await;
    let (site, proxy, id, _erp) = parked_site(&central, 500).await;
    assert!(central.audit.is_online("s1").await);

    proxy.pause();
    let paused = Instant::now();
    eventually(
        Duration::from_secs(5),
        "central shows s1 offline",
        || async { (!central.audit.is_online("s1").await).then_some(()) },
    )
    .await;
    let noticed = paused.elapsed();
    assert!(noticed < Duration::from_millis(2500), "{noticed:?}");
    let outcome = central
        .audit
        .relay("ops", "s1", Command::Retry(id), Duration::from_secs(2))
        .await;
    assert_eq!(outcome, CommandOutcome::SiteUnreachable);

    // The site noticed too, and dials again once the link carries bytes.
    proxy.heal();
    eventually(Duration::from_secs(10), "s1 back online", || async {
        central.audit.is_online("s1").await.then_some(())
    })
    .await;
    let outcome = central
        .audit
        .relay("ops", "s1", Command::Discard(id), Duration::from_secs(5))
        .await;
    assert_eq!(outcome, CommandOutcome::Applied);
    assert_eq!(
        site.engine.get(id).await.unwrap().unwrap().status,
        TrackedOperationStatus::Discarded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_arrives_after_its_expiry_is_not_applied_and_its_late_answer_is_logged() {
    // Keepalive far longer than the pause: the stream survives the silence,
    // so the held command does reach the site, late.
    let central = spawn_central_with("link_keepalive_ms = 60000").await;
    let (site, proxy, id, _erp) = parked_site(&central, 60_000).await;

    proxy.pause();
    let outcome = central
        .audit
        .relay("ops", "s1", Command::Retry(id), Duration::from_millis(1500))
        .await;
    assert_eq!(outcome, CommandOutcome::Timeout);
    proxy.heal();

    // The site gets the command now, after its expiry: not applied, and
    // central logs the late answer as what it was.
    let entry = eventually(
        Duration::from_secs(10),
        "the late answer in the audit log",
        || async {
            let log = central.db.audit_log().list(None, 10).await.unwrap();
            log.into_iter()
                .find(|e| e.outcome.starts_with("late answer"))
        },
    )
    .await;
    assert_eq!(entry.outcome, "late answer: Expired (not applied)");
    assert_eq!(
        (entry.user.as_str(), entry.action.as_str()),
        ("ops", "retry")
    );
    assert_eq!(entry.tracked_operation_id, id.to_string());
    assert_eq!(
        site.engine.get(id).await.unwrap().unwrap().status,
        TrackedOperationStatus::Parked,
        "an expired command is never applied"
    );
    // The link itself is fine: a fresh command is applied.
    let outcome = central
        .audit
        .relay("ops", "s1", Command::Discard(id), Duration::from_secs(5))
        .await;
    assert_eq!(outcome, CommandOutcome::Applied);
}
