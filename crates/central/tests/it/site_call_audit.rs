//! The Site Call Audit actor driven directly, without gRPC: the reconcile
//! schedule, the relay and its bookkeeping, stream replacement, ingest.

use crate::common;

use std::time::Duration;

use sitelink_central::{
    configuration_database::Database,
    site_call_audit::{AuditSettings, SiteCallAudit, SiteCallAuditActor, StreamOrder},
    site_call_audit::{Command, CommandOutcome},
};
use sitelink_commons::{contracts::v1, SiteName, TrackedOperationId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

async fn start(reconcile_interval: Duration) -> (SiteCallAudit, Database, tempfile::TempDir) {
    let (db, dir) = common::sqlite().await;
    let (actor, audit) = SiteCallAuditActor::new(
        db.clone(),
        AuditSettings {
            reconcile_interval,
            ..AuditSettings::default()
        },
    );
    tokio::spawn(actor.run(CancellationToken::new()));
    (audit, db, dir)
}

async fn next_order(orders: &mut mpsc::UnboundedReceiver<StreamOrder>) -> StreamOrder {
    tokio::time::timeout(WAIT, orders.recv())
        .await
        .expect("an order within 5 s")
        .expect("the actor keeps the stream")
}

#[tokio::test]
async fn reconcile_on_connect_then_only_when_the_cursor_stood_still() {
    // The schedule is driven by hand: the period never ends by itself.
    let (audit, db, _dir) = start(Duration::from_secs(3600)).await;
    let site = SiteName::parse("s1").unwrap();
    db.sites().add(&site).await.unwrap();
    let (tx, mut orders) = mpsc::unbounded_channel();
    let stream = audit.connected(&site, 0, tx).await.unwrap();
    assert!(matches!(
        next_order(&mut orders).await,
        StreamOrder::Reconcile { after_seq: 0 }
    ));
    // While that reconcile runs, no second one is ordered.
    for _ in 0..3 {
        audit.run_schedule_once().await;
    }
    assert!(
        orders.try_recv().is_err(),
        "a second reconcile while one runs"
    );
    audit.reconcile_finished(&site, stream).await;

    // Telemetry that advances the cursor every period keeps reconciles away.
    let rows = |n: usize, first: u64| {
        (0..n)
            .map(|i| {
                let mut r = rows::delivered("s1");
                r.change_seq = first + i as u64;
                r
            })
            .collect::<Vec<_>>()
    };
    for k in 0..6u64 {
        let out = audit
            .ingest(
                &site,
                rows(5, k * 5 + 1),
                Some((k * 5, k * 5 + 5)),
                Some(k * 5 + 5),
            )
            .await
            .unwrap();
        assert!(out.cursor_advanced);
        assert_eq!(out.cursor, k * 5 + 5);
        audit.run_schedule_once().await;
        assert!(
            orders.try_recv().is_err(),
            "reconcile while telemetry flows"
        );
    }
    // Then the cursor stands still for a whole period: a reconcile from it.
    audit.run_schedule_once().await;
    assert!(matches!(
        orders.try_recv(),
        Ok(StreamOrder::Reconcile { after_seq: 30 })
    ));
    assert_eq!(db.site_calls().all_for_site("s1").await.unwrap().len(), 30);
    // Telemetry recorded the site as seen in the same commits.
    let s1 = db.sites().get("s1").await.unwrap().unwrap();
    assert_eq!(s1.high_seq, 30);
    assert!(s1.last_seen_ms.is_some());
}

#[tokio::test]
async fn relays_go_to_the_newest_stream_and_end_when_it_does() {
    let (audit, db, _dir) = start(Duration::from_secs(300)).await;
    let site = SiteName::parse("s1").unwrap();
    db.sites().add(&site).await.unwrap();
    let id = TrackedOperationId::new();
    let timeout = Duration::from_secs(5);

    // No stream: unreachable at once.
    assert_eq!(
        audit.relay("ops", "s1", Command::Retry(id), timeout).await,
        CommandOutcome::SiteUnreachable
    );
    assert_eq!(
        audit
            .relay("ops", "no such site!", Command::Retry(id), timeout)
            .await,
        CommandOutcome::SiteUnreachable
    );

    let (tx1, mut old) = mpsc::unbounded_channel();
    audit.connected(&site, 0, tx1).await.unwrap();
    next_order(&mut old).await; // the connect's reconcile
    assert!(audit.is_online("s1").await);

    // A relay waits on the old stream; a newer stream replaces it: the
    // waiting relay is unreachable and the old stream's orders end.
    let waiting = tokio::spawn({
        let audit = audit.clone();
        async move {
            audit
                .relay("ops", "s1", Command::Discard(id), timeout)
                .await
        }
    });
    assert!(matches!(
        next_order(&mut old).await,
        StreamOrder::Command {
            command: Command::Discard(_),
            ..
        }
    ));
    let (tx2, mut new) = mpsc::unbounded_channel();
    let stream2 = audit.connected(&site, 0, tx2).await.unwrap();
    assert_eq!(waiting.await.unwrap(), CommandOutcome::SiteUnreachable);
    assert!(tokio::time::timeout(WAIT, old.recv())
        .await
        .unwrap()
        .is_none());
    next_order(&mut new).await; // its reconcile

    // The newest stream gets the command and its answer comes back.
    let relay = tokio::spawn({
        let audit = audit.clone();
        async move { audit.relay("ops", "s1", Command::Retry(id), timeout).await }
    });
    let StreamOrder::Command {
        relay: relay_id,
        command,
        expires_at_ms,
    } = next_order(&mut new).await
    else {
        panic!("expected a command")
    };
    assert_eq!(command, Command::Retry(id));
    // It expires before the waiter's timeout, by the margin its answer
    // has to come back in.
    let now = sitelink_commons::now_unix_ms();
    let margin = sitelink_central::site_call_audit::expiry_margin(timeout);
    assert!(expires_at_ms > now, "{expires_at_ms} vs {now}");
    assert!(expires_at_ms <= now + (timeout - margin).as_millis() as i64);
    audit
        .command_result(
            relay_id,
            v1::CommandResult {
                id: id.to_string(),
                outcome: v1::CommandOutcome::NotParked as i32,
                error: None,
            },
        )
        .await;
    assert_eq!(relay.await.unwrap(), CommandOutcome::NotParked);

    // A site that never answers: Timeout, then the stream ends and the
    // site is offline.
    assert_eq!(
        audit
            .relay("ops", "s1", Command::Retry(id), Duration::from_millis(200))
            .await,
        CommandOutcome::Timeout
    );
    audit.disconnected(&site, stream2).await;
    assert!(!audit.is_online("s1").await);
}

/// Rows for these tests.
mod rows {
    use sitelink_commons::{
        now_unix_ms, unix_ms_to_utc, Kind, TrackedOperationId, TrackedOperationStatus,
        TrackingRecord,
    };

    pub fn delivered(site: &str) -> TrackingRecord {
        let now = unix_ms_to_utc(now_unix_ms());
        TrackingRecord {
            tracked_operation_id: TrackedOperationId::new(),
            source_site: site.into(),
            kind: Kind::ExternalCall,
            target_summary: "erp.postOrder".into(),
            status: TrackedOperationStatus::Delivered,
            retry_count: 0,
            last_error: None,
            provenance: "line1/orders".into(),
            created_at_utc: now,
            updated_at_utc: now,
            terminal_at_utc: Some(now),
            revision: 2,
            change_seq: 0,
        }
    }
}
