//! The retry worker: takes due buffer entries, attempts them through a
//! [`Deliverer`] (the External System Gateway in production, a fake in
//! tests) and records each outcome with the target's retry policy.
//!
//! One owner, one loop ([`RetryWorker::run`]) that stops on its cancellation
//! token; [`RetryWorker::run_once`] drives exactly one pass so tests can step
//! it. Only this worker reads the buffer, so an entry is never attempted
//! twice at once.

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use sitelink_commons::{TrackedOperationId, TrackedOperationStatus};
use tokio_util::sync::CancellationToken;

use super::{
    now_ms, AttemptKind, AttemptNote, AttemptOutcome, Attempted, DeliveryRequest, Engine,
    RetryPolicy,
};

/// Performs delivery attempts; implemented by the External System Gateway.
pub trait Deliverer: Send + Sync + 'static {
    /// The retry policy of the request's target.
    fn policy(&self, request: &DeliveryRequest) -> RetryPolicy;
    /// One attempt, with when it started, how long it took and its HTTP
    /// status or SQL error code (the attempt history). Must carry `id` as
    /// the idempotency key where the target supports one.
    fn deliver(
        &self,
        id: TrackedOperationId,
        request: &DeliveryRequest,
    ) -> impl Future<Output = Attempted> + Send;
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOnce {
    pub attempted: usize,
    pub delivered: usize,
    pub retrying: usize,
    pub parked: usize,
    pub failed: usize,
    /// Outcomes that could not be recorded (logged).
    pub errors: usize,
}

pub struct RetryWorker<D> {
    engine: Engine,
    deliverer: Arc<D>,
    /// Entries taken per pass.
    batch: u32,
    /// Attempts in flight at once within a pass.
    concurrency: usize,
    /// Longest sleep between passes when nothing is due.
    idle_poll: Duration,
}

impl<D: Deliverer> RetryWorker<D> {
    pub fn new(engine: Engine, deliverer: Arc<D>) -> Self {
        Self {
            engine,
            deliverer,
            batch: 256,
            concurrency: 32,
            idle_poll: Duration::from_secs(1),
        }
    }

    /// One pass over the entries due now.
    pub async fn run_once(&self) -> anyhow::Result<RunOnce> {
        let due = self.engine.due(now_ms(), self.batch).await?;
        let mut out = RunOnce {
            attempted: due.len(),
            ..Default::default()
        };
        let mut results = futures::stream::iter(due)
            .map(|entry| async move {
                let (attempted, policy) = match &entry.request {
                    Ok(request) => (
                        self.deliverer.deliver(entry.id, request).await,
                        self.deliverer.policy(request),
                    ),
                    // Retrying cannot make unreadable material readable.
                    Err(reason) => (
                        Attempted {
                            outcome: AttemptOutcome::Permanent(reason.clone()),
                            note: AttemptNote {
                                at_ms: now_ms(),
                                ..Default::default()
                            },
                        },
                        RetryPolicy::default(),
                    ),
                };
                (
                    entry.id,
                    self.engine
                        .record_attempt(entry.id, AttemptKind::Retry, attempted, policy)
                        .await,
                )
            })
            .buffer_unordered(self.concurrency);
        while let Some((id, res)) = results.next().await {
            match res {
                Ok(TrackedOperationStatus::Delivered) => out.delivered += 1,
                Ok(TrackedOperationStatus::Retrying) => out.retrying += 1,
                Ok(TrackedOperationStatus::Parked) => {
                    tracing::warn!(%id, "retries exhausted; operation parked");
                    out.parked += 1
                }
                Ok(TrackedOperationStatus::Failed) => out.failed += 1,
                Ok(other) => tracing::debug!(%id, status = %other, "retry recorded"),
                Err(e) => {
                    tracing::error!(%id, error = %e, "could not record retry outcome");
                    out.errors += 1;
                }
            }
        }
        Ok(out)
    }

    /// Runs passes until `cancel` fires: at once while entries are due,
    /// otherwise sleeping until the next entry is due (or an operator retry
    /// wakes it).
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let pass = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.run_once() => r,
            };
            match pass {
                Ok(r) if r.attempted as u32 >= self.batch => continue,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %format!("{e:#}"), "retry pass failed"),
            }
            let wait = match self.engine.next_due_ms().await {
                Ok(Some(due)) => Duration::from_millis(
                    (due - now_ms()).clamp(0, self.idle_poll.as_millis() as i64) as u64,
                ),
                _ => self.idle_poll,
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.engine.wait_for_due(wait) => {}
            }
        }
        tracing::debug!("retry worker stopped");
    }
}
