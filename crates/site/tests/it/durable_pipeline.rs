//! The engine's pipelined durability (issue 13): the writer commits with
//! `synchronous=NORMAL` and a syncer thread fsyncs the WAL, so these tests
//! prove what `synchronous=FULL` promised still holds: no caller is
//! answered and no read sees a change before its fsync; the change
//! sequence counts every change exactly once under concurrency (no gap, no
//! repeat) and goes on after a restart; a script's deferred writes
//! (`Notify.Send`, the immediate attempt's outcome) share commits, are read
//! back by the same run, and are durable before the run returns.

use crate::common;

use std::{collections::HashSet, time::Duration};

use sitelink_commons::{TrackedOperationId, TrackedOperationStatus::*};
use sitelink_site::store_and_forward::{
    AttemptOutcome, DeliveryRequest, Engine, EngineError, PendingCommits, RetryPolicy,
};
use sitelink_test_support::eventually;

fn request() -> DeliveryRequest {
    DeliveryRequest::Http {
        system: "erp".into(),
        method: "postOrder".into(),
        params: serde_json::Map::new(),
    }
}

async fn open(dir: &tempfile::TempDir) -> Engine {
    common::open_engine(dir).await
}

/// The rows SQLite itself shows (committed, synced or not).
fn committed_ids(dir: &tempfile::TempDir) -> HashSet<String> {
    let conn = rusqlite::Connection::open(dir.path().join("buffer.db")).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM tracking").unwrap();
    let ids = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    ids
}

/// What a window of this length shows is an absence: long enough for a
/// write or read that does not wait for the fsync to have come back many
/// times over (one takes well under a millisecond here).
const ABSENCE_WINDOW: Duration = Duration::from_millis(300);

#[tokio::test]
async fn nothing_is_answered_or_read_before_its_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    let before = engine.high_seq();

    let hold = engine.hold_syncs();
    let writing = {
        let e = engine.clone();
        tokio::spawn(async move { e.record_pending(&request(), "i/s").await })
    };
    // The writer commits it: SQLite shows the row ...
    let id = eventually(Duration::from_secs(5), "the row to be committed", || {
        let ids = committed_ids(&dir);
        async move { ids.into_iter().next() }
    })
    .await;
    let id: TrackedOperationId = id.parse().unwrap();
    // ... but its caller has not been answered, the change is not
    // published, and a read that sees the row waits for the fsync.
    assert!(!writing.is_finished(), "answered before the fsync");
    assert_eq!(engine.high_seq(), before, "published before the fsync");
    let reading = {
        let e = engine.clone();
        tokio::spawn(async move { e.get(id).await })
    };
    let changes = {
        let e = engine.clone();
        tokio::spawn(async move { e.changes_after(before, 10).await })
    };
    tokio::time::sleep(ABSENCE_WINDOW).await;
    assert!(!writing.is_finished(), "answered before the fsync");
    assert!(!reading.is_finished(), "a read answered before the fsync");
    assert!(
        !changes.is_finished(),
        "the change stream ran ahead of the fsync"
    );

    drop(hold);
    assert_eq!(writing.await.unwrap().unwrap(), id);
    assert_eq!(reading.await.unwrap().unwrap().unwrap().status, Pending);
    let changed = changes.await.unwrap().unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(engine.high_seq(), before + 1);
}

#[tokio::test]
async fn the_change_sequence_counts_every_change_once_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let e = engine.clone();
        tasks.spawn(async move {
            // Like a script run: outcomes not waited for, settled at the end.
            let mut pending = PendingCommits::default();
            let mut ids = Vec::new();
            for i in 0..40 {
                let id = e.record_pending(&request(), "i/s").await.unwrap();
                let outcome = if i % 5 == 0 {
                    AttemptOutcome::Transient("down".into())
                } else {
                    AttemptOutcome::Delivered
                };
                e.record_immediate_outcome_deferred(
                    id,
                    outcome,
                    Default::default(),
                    RetryPolicy::default(),
                    &mut pending,
                )
                .await
                .unwrap();
                ids.push(id);
            }
            pending.settle().await.unwrap();
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    let (commits, ops) = engine.commit_stats();
    assert!(
        commits * 4 < ops,
        "{commits} commits for {ops} writes: not grouped"
    );

    let rows = engine.changes_after(0, 100_000).await.unwrap();
    assert_eq!(rows.len(), ids.len(), "one row per id handed out");
    let seqs: Vec<u64> = rows.iter().map(|r| r.change_seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "change sequences repeat"
    );
    // Every change took exactly one value: no gaps, no repeats.
    let revisions: u64 = rows.iter().map(|r| r.revision).sum();
    assert_eq!(revisions, engine.high_seq());
    assert_eq!(*seqs.last().unwrap(), engine.high_seq());
    for r in &rows {
        let expected = if r.last_error.is_some() {
            Pending
        } else {
            Delivered
        };
        assert_eq!((r.status, r.revision), (expected, 2), "{r:?}");
    }

    // After a restart the sequence goes on from where it was.
    let high = engine.high_seq();
    drop(engine);
    let engine = open(&dir).await;
    assert_eq!(engine.high_seq(), high);
    let id = engine.record_pending(&request(), "i/s").await.unwrap();
    assert_eq!(engine.get(id).await.unwrap().unwrap().change_seq, high + 1);
}

#[tokio::test]
async fn a_deferred_write_that_fails_is_reported_when_settling() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    let mut pending = PendingCommits::default();
    let unknown = TrackedOperationId::new();
    engine
        .record_immediate_outcome_deferred(
            unknown,
            AttemptOutcome::Delivered,
            Default::default(),
            RetryPolicy::default(),
            &mut pending,
        )
        .await
        .unwrap();
    let id = engine
        .record_pending_deferred(&request(), "i/s", &mut pending)
        .await
        .unwrap();
    match pending.settle().await {
        Err(EngineError::NotFound(id)) => assert_eq!(id, unknown),
        other => panic!("expected the outcome for an unknown id to fail, got {other:?}"),
    }
    assert!(pending.is_empty());
    // The other write of the same batch stands.
    assert_eq!(engine.get(id).await.unwrap().unwrap().status, Pending);
}

#[tokio::test]
async fn a_scripts_notifications_share_commits_and_are_durable_when_it_returns() {
    let site = common::build_site("").await;
    let (commits0, _) = site.engine.commit_stats();
    let run = site
        .run(
            r#"let ids = [];
               for i in 0..200 { ids.push(Notify.Send("ops", `Alarm ${i}`, "Line 1 stopped")); }
               // Read back in the same run: its own writes are there.
               let s = Tracking.Status(ids[199]);
               #{ ids: ids, status: s.status }"#,
        )
        .await
        .unwrap();
    let (commits1, _) = site.engine.commit_stats();
    assert_eq!(run.result["status"], "Pending");
    assert_eq!(run.tracked_operation_ids.len(), 200);
    assert!(
        commits1 - commits0 < 50,
        "{} commits for 200 notifications: not grouped",
        commits1 - commits0
    );
    // When the run has returned, every id it handed out has its row.
    for id in &run.tracked_operation_ids {
        assert!(site.engine.get(*id).await.unwrap().is_some(), "{id} lost");
    }

    // And a run cannot return before its writes are durable.
    let hold = site.engine.hold_syncs();
    let running = {
        let rt = site.runtime.clone();
        tokio::spawn(async move {
            rt.run_source(
                "test",
                "line1",
                r#"Notify.Send("ops", "Held", "until the fsync")"#,
            )
            .await
        })
    };
    tokio::time::sleep(ABSENCE_WINDOW).await;
    assert!(!running.is_finished(), "the run returned before its fsync");
    drop(hold);
    let run = running.await.unwrap().unwrap();
    let id = run.tracked_operation_ids[0];
    assert_eq!(site.engine.get(id).await.unwrap().unwrap().status, Pending);
}
