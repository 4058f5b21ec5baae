//! Bad peers on the link: wrong and revoked tokens, a Hello, rows or
//! forwarded notifications for another site, unknown enum values from a
//! newer site, huge fields,
//! oversized messages and garbage bytes. Each is refused or made safe and
//! logged; nothing already stored is lost; other sites are unaffected.

use crate::common;

use std::time::Duration;

use common::*;
use sitelink_central::{
    configuration_database::IngestJob,
    site_call_audit::{Command, CommandOutcome},
};
use sitelink_commons::{
    contracts::v1::{self, central_message, site_message, SiteMessage},
    SiteName, TrackedOperationId,
};
use sitelink_test_support::{eventually, FakeHttp, Mode};
use tokio::io::AsyncWriteExt;

fn row(site: &str, status: i32, last_error: Option<String>) -> v1::CachedCallTelemetry {
    v1::CachedCallTelemetry {
        id: TrackedOperationId::new().to_string(),
        source_site: site.into(),
        kind: v1::Kind::ExternalCall as i32,
        target_summary: "erp.postOrder".into(),
        status,
        retry_count: 0,
        last_error,
        created_at_unix_ms: 1_700_000_000_000,
        updated_at_unix_ms: 1_700_000_000_000,
        terminal_at_unix_ms: None,
        provenance: "i/s".into(),
        revision: 1,
        change_seq: 1,
    }
}

fn telemetry(rows: Vec<v1::CachedCallTelemetry>, from: u64, to: u64) -> SiteMessage {
    SiteMessage {
        correlation: 0,
        body: Some(site_message::Body::Telemetry(v1::TelemetryBatch {
            from_seq: from,
            to_seq: to,
            rows,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_wrong_and_revoked_tokens_are_refused() {
    let central = spawn_central().await;
    let token = register(&central, "s1").await;
    let other = register(&central, "s2").await;
    let e = raw_stream(central.link, "slk1.s1.not-the-token", "s1")
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = raw_stream(central.link, "", "s1").await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // A valid token, but the Hello speaks for another site.
    let e = raw_stream(central.link, &other, "s1").await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().contains("belongs to site s2"),
        "{}",
        e.message()
    );

    // A real site whose token is revoked (from outside central's process,
    // as `central site revoke` does): its live stream ends within the
    // revocation check, relays find it unreachable, it cannot come back,
    // and rows already on their way are not stored.
    let fake = FakeHttp::start(Mode::Ok).await;
    let mut site = spawn_site("s1", &token, central.link, &fake.url(), 3).await;
    eventually(Duration::from_secs(5), "s1 online", || async {
        central.audit.is_online("s1").await.then_some(())
    })
    .await;
    central.db.sites().revoke("s1").await.unwrap();
    eventually(
        Duration::from_secs(3),
        "s1 offline after the revocation, with no reconnect",
        || async { (!central.audit.is_online("s1").await).then_some(()) },
    )
    .await;
    let id = sitelink_commons::TrackedOperationId::new();
    assert_eq!(
        central
            .audit
            .relay("ops", "s1", Command::Retry(id), Duration::from_secs(2))
            .await,
        CommandOutcome::SiteUnreachable
    );
    site.runtime
        .run_source("burst", "line1", BURST)
        .await
        .unwrap();
    let e = raw_stream(central.link, &token, "s1").await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(!central.audit.is_online("s1").await);
    let on_their_way = central
        .db
        .site_calls()
        .ingest_many(vec![IngestJob {
            site: SiteName::parse("s1").unwrap(),
            rows: site.rows().await,
            complete_range: None,
            seen_seq: Some(1),
        }])
        .await
        .unwrap();
    assert!(on_their_way[0].revoked);
    assert!(central
        .db
        .site_calls()
        .all_for_site("s1")
        .await
        .unwrap()
        .is_empty());
    site.stop().await;
    central.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_rejected_and_the_rest_of_the_batch_lands() {
    let central = spawn_central().await;
    let token = register(&central, "s1").await;
    register(&central, "s2").await;
    let (tx, mut inbound) = raw_stream(central.link, &token, "s1").await.unwrap();
    // Welcome, then the reconcile request of the connect.
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.body,
        Some(central_message::Body::Welcome(_))
    ));

    let good = row("s1", v1::Status::Pending as i32, None);
    let for_other_site = row("s2", v1::Status::Pending as i32, None);
    let from_newer_site = row("s1", 42, None);
    let huge_error = row(
        "s1",
        v1::Status::Retrying as i32,
        Some("x".repeat(1024 * 1024)),
    );
    tx.send(telemetry(
        vec![
            good.clone(),
            for_other_site.clone(),
            from_newer_site.clone(),
            huge_error.clone(),
        ],
        0,
        4,
    ))
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "the good rows land", || async {
        (central
            .db
            .site_calls()
            .all_for_site("s1")
            .await
            .unwrap()
            .len()
            == 2)
            .then_some(())
    })
    .await;
    let calls = central.db.site_calls();
    assert!(calls.get(good.id.parse().unwrap()).await.unwrap().is_some());
    assert!(
        calls
            .get(for_other_site.id.parse().unwrap())
            .await
            .unwrap()
            .is_none(),
        "s1 may not speak for s2"
    );
    assert!(calls
        .get(from_newer_site.id.parse().unwrap())
        .await
        .unwrap()
        .is_none());
    let stored = calls
        .get(huge_error.id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.last_error.unwrap().chars().count() < 5000,
        "stored truncated"
    );
    // A range with an unreadable row is not complete: the cursor stays.
    assert_eq!(
        central
            .db
            .sites()
            .get("s1")
            .await
            .unwrap()
            .unwrap()
            .reconcile_cursor,
        0
    );
    assert!(
        central.audit.is_online("s1").await,
        "bad rows do not close the stream"
    );
    central.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_garbage_bytes_close_only_their_own_connection() {
    let central = spawn_central().await;
    let fake = FakeHttp::start(Mode::Ok).await;
    let good_token = register(&central, "good").await;
    let bad_token = register(&central, "bad").await;
    let mut good = spawn_site("good", &good_token, central.link, &fake.url(), 3).await;

    // Garbage on the gRPC port.
    let mut raw = tokio::net::TcpStream::connect(central.link).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage\xff\xfe")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await;

    // A message above the 4 MiB limit ends that stream only.
    let (tx, mut inbound) = raw_stream(central.link, &bad_token, "bad").await.unwrap();
    let _welcome = inbound.message().await.unwrap();
    let big = row(
        "bad",
        v1::Status::Pending as i32,
        Some("y".repeat(5 * 1024 * 1024)),
    );
    let _ = tx.send(telemetry(vec![big], 0, 1)).await;
    eventually(
        Duration::from_secs(5),
        "the oversized stream is closed",
        || async { (!central.audit.is_online("bad").await).then_some(()) },
    )
    .await;
    assert!(central
        .db
        .site_calls()
        .all_for_site("bad")
        .await
        .unwrap()
        .is_empty());

    // The good site is unaffected.
    good.runtime
        .run_source("burst", "line1", BURST)
        .await
        .unwrap();
    converged(&central, &good, "good").await;
    assert!(central.audit.is_online("good").await);
    good.stop().await;
    central.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_never_answers_a_command_times_out() {
    let central = spawn_central().await;
    let token = register(&central, "mute").await;
    // Connected, but it never answers anything.
    let (_tx, mut inbound) = raw_stream(central.link, &token, "mute").await.unwrap();
    let _welcome = inbound.message().await.unwrap();
    let timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let outcome = central
        .audit
        .relay(
            "ops",
            "mute",
            sitelink_central::site_call_audit::Command::Retry(TrackedOperationId::new()),
            timeout,
        )
        .await;
    assert_eq!(
        outcome,
        sitelink_central::site_call_audit::CommandOutcome::Timeout
    );
    // After the timeout, and not long after it (a generous multiple, for
    // a loaded machine).
    assert!(
        started.elapsed() >= timeout && started.elapsed() < timeout * 6,
        "{:?}",
        started.elapsed()
    );
    assert!(
        central.audit.is_online("mute").await,
        "a slow site is not disconnected"
    );
    central.cancel.cancel();
}

/// A burst of forwarded notifications with bad ones inside: one for
/// another site and one with an unreadable id are refused (not stored, not
/// acknowledged); the others of the burst land and are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_forwarded_notifications_are_refused_and_the_rest_of_the_burst_lands() {
    let central = spawn_central().await;
    let token = register(&central, "s1").await;
    register(&central, "s2").await;
    let (tx, mut inbound) = raw_stream(central.link, &token, "s1").await.unwrap();
    let forward = |site: &str, id: String| SiteMessage {
        correlation: 0,
        body: Some(site_message::Body::ForwardNotification(
            v1::ForwardNotification {
                id,
                source_site: site.into(),
                list: "ops".into(),
                subject: "Line 1 stopped".into(),
                body: "jam".into(),
                provenance: "i/s".into(),
                created_at_unix_ms: 1_700_000_000_000,
            },
        )),
    };
    let (a, other, b) = (
        TrackedOperationId::new(),
        TrackedOperationId::new(),
        TrackedOperationId::new(),
    );
    for m in [
        forward("s1", a.to_string()),
        forward("s2", other.to_string()),
        forward("s1", "not-an-id".into()),
        forward("s1", b.to_string()),
    ] {
        tx.send(m).await.unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("acknowledgements")
            .unwrap()
            .unwrap();
        if let Some(central_message::Body::NotificationAck(ack)) = m.body {
            acked.push(ack.id);
        }
    }
    acked.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(acked, want);
    let stored = central.db.notifications();
    assert!(stored.get(a).await.unwrap().is_some());
    assert!(stored.get(b).await.unwrap().is_some());
    assert!(stored.get(other).await.unwrap().is_none());
    // The stream still works: a later forward is acknowledged too.
    let c = TrackedOperationId::new();
    tx.send(forward("s1", c.to_string())).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the later forward lands",
        || async { stored.get(c).await.unwrap().map(|_| ()) },
    )
    .await;
}
