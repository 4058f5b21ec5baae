//! Property test of the Store-and-Forward Engine: random sequences of
//! attempt outcomes and operator actions on random operations never produce
//! a transition outside SPEC §3; every change bumps the row's revision by
//! exactly one and takes a change sequence above every earlier one; terminal
//! rows never change; refused actions change nothing.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::Map;
use sitelink_commons::{
    lifecycle::check_transition, TrackedOperationId, TrackedOperationStatus::*, TrackingRecord,
};
use sitelink_site::store_and_forward::{
    AttemptKind, AttemptOutcome, CommandOutcome, DeliveryRequest, Engine, EngineSettings,
    RetryPolicy,
};

#[derive(Clone, Debug)]
enum Action {
    New,
    Outcome {
        op: usize,
        retry: bool,
        outcome: u8,
        max_retries: u32,
    },
    OperatorRetry(usize),
    OperatorDiscard(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        1 => Just(Action::New),
        5 => (any::<usize>(), any::<bool>(), 0u8..3, 0u32..4)
            .prop_map(|(op, retry, outcome, max_retries)| Action::Outcome { op, retry, outcome, max_retries }),
        2 => any::<usize>().prop_map(Action::OperatorRetry),
        1 => any::<usize>().prop_map(Action::OperatorDiscard),
    ]
}

fn request() -> DeliveryRequest {
    DeliveryRequest::Http {
        system: "erp".into(),
        method: "postOrder".into(),
        params: Map::new(),
    }
}

async fn run(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("b.db"), "p", EngineSettings::default())
        .await
        .unwrap();
    let mut ids: Vec<TrackedOperationId> = Vec::new();
    let mut rows: HashMap<TrackedOperationId, TrackingRecord> = HashMap::new();
    let mut max_seq = 0u64;
    for a in actions {
        let target = match &a {
            Action::New => None,
            Action::Outcome { op, .. }
            | Action::OperatorRetry(op)
            | Action::OperatorDiscard(op) => {
                if ids.is_empty() {
                    continue;
                }
                Some(ids[op % ids.len()])
            }
        };
        let id = match (&a, target) {
            (Action::New, _) => {
                let id = engine.record_pending(&request(), "i/s").await.unwrap();
                let r = engine.get(id).await.unwrap().unwrap();
                prop_assert_eq!(r.status, Pending);
                prop_assert_eq!(r.revision, 1);
                prop_assert!(r.change_seq > max_seq);
                max_seq = r.change_seq;
                ids.push(id);
                rows.insert(id, r);
                continue;
            }
            (
                Action::Outcome {
                    retry,
                    outcome,
                    max_retries,
                    ..
                },
                Some(id),
            ) => {
                let outcome = match outcome {
                    0 => AttemptOutcome::Delivered,
                    1 => AttemptOutcome::Transient("503".into()),
                    _ => AttemptOutcome::Permanent("400".into()),
                };
                let kind = if *retry {
                    AttemptKind::Retry
                } else {
                    AttemptKind::Immediate
                };
                let policy = RetryPolicy {
                    max_retries: *max_retries,
                    jitter: 0.0,
                    ..RetryPolicy::default()
                };
                let before = rows[&id].status;
                let res = engine.record_outcome(id, kind, outcome, policy).await;
                // Outcomes apply only while an operation is being delivered; the
                // immediate attempt only to a new (Pending) row.
                let in_flight = if *retry {
                    matches!(before, Pending | Retrying)
                } else {
                    before == Pending
                };
                prop_assert_eq!(res.is_ok(), in_flight, "{:?} on {:?}: {:?}", a, before, res);
                id
            }
            (Action::OperatorRetry(_), Some(id)) | (Action::OperatorDiscard(_), Some(id)) => {
                let before = rows[&id].status;
                let res = if matches!(a, Action::OperatorRetry(_)) {
                    engine.retry_parked(id).await.unwrap()
                } else {
                    engine.discard_parked(id).await.unwrap()
                };
                if before == Parked {
                    prop_assert_eq!(res, CommandOutcome::Applied);
                } else {
                    prop_assert_eq!(res, CommandOutcome::NotParked(before));
                }
                id
            }
            _ => unreachable!(),
        };
        let prev = rows[&id].clone();
        let now = engine.get(id).await.unwrap().unwrap();
        if now != prev {
            prop_assert!(
                !prev.status.is_terminal(),
                "terminal row changed: {:?} -> {:?}",
                prev,
                now
            );
            prop_assert_eq!(now.revision, prev.revision + 1);
            prop_assert!(now.change_seq > max_seq, "change sequence went backwards");
            max_seq = now.change_seq;
            if now.status != prev.status {
                prop_assert!(
                    check_transition(Some(prev.status), now.status).is_ok(),
                    "{:?} -> {:?}",
                    prev.status,
                    now.status
                );
            } else {
                prop_assert!(
                    matches!(now.status, Pending | Retrying),
                    "same-status update of {:?}",
                    now.status
                );
            }
            prop_assert_eq!(now.terminal_at_utc.is_some(), now.status.is_terminal());
            rows.insert(id, now);
        }
        prop_assert_eq!(engine.high_seq(), max_seq);
    }
    // The change stream holds every row exactly once, in its latest state.
    let changes = engine.changes_after(0, 10_000).await.unwrap();
    prop_assert_eq!(changes.len(), rows.len());
    for c in changes {
        prop_assert_eq!(&rows[&c.tracked_operation_id], &c);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn lifecycle_invariants_hold(actions in proptest::collection::vec(action(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(actions))?;
    }
}
