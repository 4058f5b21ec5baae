//! Store-and-Forward Engine behaviour that needs no external system:
//! restart recovery of in-flight operations, purge rules, the change stream
//! that telemetry and reconciliation read, and group commit.

use crate::common;

use sitelink_commons::TrackedOperationStatus::*;
use sitelink_site::store_and_forward::{
    now_ms, AttemptKind, AttemptOutcome, DeliveryRequest, Engine, EngineSettings, RetryPolicy,
};

fn request() -> DeliveryRequest {
    DeliveryRequest::DatabaseWrite {
        connection: "plantdb".into(),
        sql: "INSERT INTO t VALUES (?)".into(),
        params: vec![1.into()],
    }
}

const DAY_MS: i64 = 86_400_000;

async fn open(dir: &tempfile::TempDir) -> Engine {
    common::open_engine(dir).await
}

#[tokio::test]
async fn operations_in_flight_at_a_crash_are_due_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    // Recorded, attempt never finished (the process "died" here).
    let id = engine.record_pending(&request(), "i/s").await.unwrap();
    assert_eq!(engine.buffer_len().await.unwrap(), 0);
    drop(engine);

    let engine = open(&dir).await;
    let due = engine.due(now_ms(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, id);
    assert_eq!(
        due[0].request,
        Ok(request()),
        "the retry material survived the restart"
    );
    let r = engine.get(id).await.unwrap().unwrap();
    assert_eq!((r.status, r.revision), (Pending, 1));
    // The change sequence continues where it was.
    let id2 = engine.record_pending(&request(), "i/s").await.unwrap();
    assert!(engine.get(id2).await.unwrap().unwrap().change_seq > r.change_seq);
}

#[tokio::test]
async fn purge_takes_only_acknowledged_terminal_rows_or_those_past_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    let policy = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    let delivered = engine.record_pending(&request(), "i/s").await.unwrap();
    engine
        .record_outcome(
            delivered,
            AttemptKind::Immediate,
            AttemptOutcome::Delivered,
            policy,
        )
        .await
        .unwrap();
    let parked = engine.record_pending(&request(), "i/s").await.unwrap();
    engine
        .record_outcome(
            parked,
            AttemptKind::Immediate,
            AttemptOutcome::Transient("down".into()),
            policy,
        )
        .await
        .unwrap();
    let pending = engine.record_pending(&request(), "i/s").await.unwrap();
    assert_eq!(engine.get(parked).await.unwrap().unwrap().status, Parked);

    // Young rows are never purged.
    assert_eq!(engine.purge(now_ms()).await.unwrap(), 0);
    // Old but not acknowledged by central: kept.
    assert_eq!(engine.purge(now_ms() + 8 * DAY_MS).await.unwrap(), 0);
    // Acknowledged up to the delivered row: purged. Parked and Pending stay.
    let seq = engine.get(delivered).await.unwrap().unwrap().change_seq;
    engine.set_acked_cursor(seq).await.unwrap();
    engine.set_acked_cursor(seq - 1).await.unwrap(); // never moves back
    assert_eq!(engine.acked_cursor().await.unwrap(), seq);
    assert_eq!(engine.purge(now_ms() + 8 * DAY_MS).await.unwrap(), 1);
    assert!(engine.get(delivered).await.unwrap().is_none());

    // The hard limit takes terminal rows central never acknowledged.
    engine.discard_parked(parked).await.unwrap();
    assert_eq!(engine.purge(now_ms() + 8 * DAY_MS).await.unwrap(), 0);
    assert_eq!(engine.purge(now_ms() + 91 * DAY_MS).await.unwrap(), 1);
    assert!(engine.get(parked).await.unwrap().is_none());
    assert!(
        engine.get(pending).await.unwrap().is_some(),
        "non-terminal rows are never purged"
    );
}

#[tokio::test]
async fn the_change_stream_pages_in_sequence_order_with_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    let policy = RetryPolicy::default();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(engine.record_pending(&request(), "i/s").await.unwrap());
    }
    // Change the first row twice: it appears once, last, as Delivered.
    engine
        .record_outcome(
            ids[0],
            AttemptKind::Immediate,
            AttemptOutcome::Transient("x".into()),
            policy,
        )
        .await
        .unwrap();
    engine
        .record_outcome(
            ids[0],
            AttemptKind::Retry,
            AttemptOutcome::Delivered,
            policy,
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = engine.changes_after(after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.windows(2).all(|w| w[0].change_seq < w[1].change_seq));
        after = page.last().unwrap().change_seq;
        seen.extend(page);
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.last().unwrap().tracked_operation_id, ids[0]);
    assert_eq!(seen.last().unwrap().status, Delivered);
    assert_eq!(seen.last().unwrap().revision, 3);
    assert_eq!(after, engine.high_seq());
    assert_eq!(
        seen.iter()
            .map(|r| r.source_site.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );
}

#[tokio::test]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    let (commits0, ops0) = engine.commit_stats();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let e = engine.clone();
        tasks.spawn(async move { e.record_pending(&request(), "i/s").await.unwrap() });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        n += 1;
    }
    let (commits1, ops1) = engine.commit_stats();
    assert_eq!(ops1 - ops0, n);
    // Durable, and grouped: far fewer commits than writes.
    assert!(
        commits1 - commits0 < n / 2,
        "{} commits for {n} writes",
        commits1 - commits0
    );
    assert_eq!(
        engine.list(Some(Pending), None, 1000).await.unwrap().len(),
        n as usize
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir).await);
    let conn = rusqlite::Connection::open(dir.path().join("buffer.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let e = Engine::open(
        &dir.path().join("buffer.db"),
        "s1",
        EngineSettings::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("schema version 99"), "{e}");
}

/// A deliverer that accepts everything and counts attempts.
struct AcceptAll(std::sync::atomic::AtomicUsize);

impl sitelink_site::store_and_forward::Deliverer for AcceptAll {
    fn policy(&self, _: &DeliveryRequest) -> RetryPolicy {
        RetryPolicy::default()
    }
    async fn deliver(
        &self,
        _: sitelink_commons::TrackedOperationId,
        _: &DeliveryRequest,
    ) -> sitelink_site::store_and_forward::Attempted {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        sitelink_site::store_and_forward::Attempted {
            outcome: AttemptOutcome::Delivered,
            note: Default::default(),
        }
    }
}

#[tokio::test]
async fn unreadable_retry_material_fails_that_row_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    let bad = engine.record_pending(&request(), "i/s").await.unwrap();
    let good = engine.record_pending(&request(), "i/s").await.unwrap();
    drop(engine);
    let conn = rusqlite::Connection::open(dir.path().join("buffer.db")).unwrap();
    conn.execute(
        "UPDATE tracking SET request = '{not json' WHERE id = ?1",
        [bad.to_string()],
    )
    .unwrap();
    drop(conn);

    let engine = open(&dir).await; // both were in flight: both due now
    let deliverer = std::sync::Arc::new(AcceptAll(Default::default()));
    let worker =
        sitelink_site::store_and_forward::RetryWorker::new(engine.clone(), deliverer.clone());
    let pass = worker.run_once().await.unwrap();
    assert_eq!((pass.attempted, pass.delivered, pass.failed), (2, 1, 1));
    assert_eq!(deliverer.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    let r = engine.get(bad).await.unwrap().unwrap();
    assert_eq!(r.status, Failed);
    assert!(r.last_error.unwrap().contains("unreadable retry material"));
    assert_eq!(engine.get(good).await.unwrap().unwrap().status, Delivered);
    assert_eq!(engine.buffer_len().await.unwrap(), 0);
}
