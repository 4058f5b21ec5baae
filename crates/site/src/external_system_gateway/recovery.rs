//! Replay on recovery (issue 21): for the external systems and database
//! connections configured with `replay_parked_on_recovery`, which of them
//! came back after failing (so their parked calls should be replayed at
//! their pace) and which are failing again (so a replay should stop).
//!
//! [`RecoveryWatch`] sees every attempt's outcome (the gateway tells it)
//! and publishes [`ReplayWanted`], the state as a whole, on a watch
//! channel: the central link sends it to central whenever it changes and
//! after every connect, and central makes it so (a bulk action per
//! recovery, named by its `recovery_id`, so a state sent twice starts
//! nothing twice). Level, not edge: nothing is lost with a message.

use std::{collections::BTreeMap, sync::Mutex};

use serde::{Deserialize, Serialize};
use sitelink_commons::Kind;
use tokio::sync::watch;

use crate::store_and_forward::AttemptOutcome;

/// `replay_parked_on_recovery = { at_once = N, per_minute = R }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayPace {
    pub at_once: u32,
    pub per_minute: u32,
}

/// A target whose parked calls are to be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub kind: Kind,
    /// The external system's or the database connection's name.
    pub target: String,
    /// Names this recovery (and the bulk action central makes of it).
    pub recovery_id: String,
    pub pace: ReplayPace,
}

/// What the site wants of central now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayWanted {
    /// Targets that came back and have not failed since.
    pub recovered: Vec<Recovered>,
    /// Recoveries whose target failed again: their replay stops.
    pub stopped: Vec<String>,
}

#[derive(Default)]
struct TargetState {
    failing: bool,
    /// The latest recovery of this target.
    recovery: Option<String>,
}

/// Follows the targets configured for replay (see the module's doc).
pub struct RecoveryWatch {
    paces: BTreeMap<(Kind, String), ReplayPace>,
    state: Mutex<BTreeMap<(Kind, String), TargetState>>,
    tx: watch::Sender<ReplayWanted>,
}

impl RecoveryWatch {
    pub fn new(paces: BTreeMap<(Kind, String), ReplayPace>) -> Self {
        Self {
            paces,
            state: Mutex::default(),
            tx: watch::channel(ReplayWanted::default()).0,
        }
    }

    /// The state, as it changes.
    pub fn subscribe(&self) -> watch::Receiver<ReplayWanted> {
        self.tx.subscribe()
    }

    /// One attempt to `target` ended with `outcome`: a transient failure
    /// marks it failing (stopping its replay); a success after that is a
    /// recovery. A permanent failure (a 400, a constraint) says nothing of
    /// the target's health.
    pub fn observe(&self, kind: Kind, target: &str, outcome: &AttemptOutcome) {
        // Most sites configure no replay: their attempts cost nothing here.
        if self.paces.is_empty() {
            return;
        }
        let key = (kind, target.to_owned());
        if !self.paces.contains_key(&key) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = state.entry(key).or_default();
        let changed = match outcome {
            AttemptOutcome::Transient(_) if !s.failing => {
                s.failing = true;
                true
            }
            AttemptOutcome::Delivered if s.failing => {
                s.failing = false;
                s.recovery = Some(sitelink_commons::TrackedOperationId::new().to_string());
                tracing::info!(%target, "target recovered: its parked calls are to be replayed");
                true
            }
            _ => false,
        };
        if changed {
            let wanted = self.wanted(&state);
            self.tx.send_replace(wanted);
        }
    }

    fn wanted(&self, state: &BTreeMap<(Kind, String), TargetState>) -> ReplayWanted {
        let mut w = ReplayWanted::default();
        for ((kind, target), s) in state {
            let Some(id) = &s.recovery else { continue };
            if s.failing {
                w.stopped.push(id.clone());
            } else {
                w.recovered.push(Recovered {
                    kind: *kind,
                    target: target.clone(),
                    recovery_id: id.clone(),
                    pace: self.paces[&(*kind, target.clone())],
                });
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_after_a_transient_failure_is_a_recovery_until_the_next_failure() {
        let pace = ReplayPace {
            at_once: 5,
            per_minute: 60,
        };
        let w = RecoveryWatch::new(BTreeMap::from([((Kind::ExternalCall, "erp".into()), pace)]));
        let rx = w.subscribe();
        let fail = AttemptOutcome::Transient("HTTP 503".into());
        // Not configured, permanent failures, and successes while healthy
        // change nothing.
        w.observe(Kind::ExternalCall, "mes", &fail);
        w.observe(Kind::DatabaseWrite, "erp", &fail);
        w.observe(Kind::ExternalCall, "erp", &AttemptOutcome::Delivered);
        w.observe(
            Kind::ExternalCall,
            "erp",
            &AttemptOutcome::Permanent("400".into()),
        );
        assert_eq!(*rx.borrow(), ReplayWanted::default());
        w.observe(Kind::ExternalCall, "erp", &fail);
        w.observe(Kind::ExternalCall, "erp", &AttemptOutcome::Delivered);
        let first = rx.borrow().clone();
        assert_eq!(first.recovered.len(), 1);
        assert_eq!(first.recovered[0].pace, pace);
        let id = first.recovered[0].recovery_id.clone();
        w.observe(Kind::ExternalCall, "erp", &fail);
        assert_eq!(
            *rx.borrow(),
            ReplayWanted {
                recovered: vec![],
                stopped: vec![id.clone()]
            }
        );
        w.observe(Kind::ExternalCall, "erp", &AttemptOutcome::Delivered);
        let again = rx.borrow().clone();
        assert_ne!(again.recovered[0].recovery_id, id, "a new recovery");
    }
}
