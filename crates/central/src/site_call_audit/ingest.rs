//! Ingest batching: every site stream hands its telemetry batches and
//! reconcile pages to one task, which applies everything queued in ONE
//! transaction (one commit) and then answers each stream. With many sites
//! this turns many small commits, and on SQLite many writers contending for
//! one lock, into a few large ones.

use sitelink_commons::{SiteName, TrackingRecord};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::configuration_database::{Backend, Database, IngestJob, IngestOutcome};

/// Most rows one transaction takes; bounds commit latency.
const MAX_ROWS_PER_COMMIT: usize = 5_000;

struct Job {
    job: IngestJob,
    reply: oneshot::Sender<Result<IngestOutcome, String>>,
}

async fn worker(db: Database, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut batch: Vec<Job> = Vec::new();
    loop {
        {
            // Take the first job and everything queued behind it.
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut rows = first.job.rows.len();
            batch.push(first);
            while rows < MAX_ROWS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(job) => {
                        rows += job.job.rows.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let jobs: Vec<IngestJob> = batch.iter().map(|j| j.job.clone()).collect();
        match db.site_calls().ingest_many(&jobs).await {
            Ok(outs) => {
                for (job, out) in batch.drain(..).zip(outs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) => {
                // Rolled back: nothing of this batch is stored.
                tracing::error!(error = %e, jobs = batch.len(), "ingest transaction failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(format!("ingest: {e}")));
                }
            }
        }
    }
}

/// Handle to the ingest task. Cheap to clone; the task ends when every
/// handle is gone.
#[derive(Clone)]
pub struct IngestBatcher {
    tx: mpsc::Sender<Job>,
}

impl IngestBatcher {
    /// Starts the tasks that own ingest: one on SQLite (one writer at a
    /// time is all it has), two on PostgreSQL (two transactions in flight
    /// keep both cores busy; each still takes everything queued).
    pub fn spawn(db: Database) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(1024);
        let rx = Arc::new(Mutex::new(rx));
        let workers = if db.backend() == Backend::Sqlite {
            1
        } else {
            2
        };
        for _ in 0..workers {
            tokio::spawn(worker(db.clone(), rx.clone()));
        }
        Self { tx }
    }

    /// Ingests rows of `site` covering `complete_range` (if given); resolves
    /// once they are committed.
    pub async fn ingest(
        &self,
        site: &SiteName,
        rows: Vec<TrackingRecord>,
        complete_range: Option<(u64, u64)>,
    ) -> Result<IngestOutcome, String> {
        let (reply, rx) = oneshot::channel();
        let job = IngestJob {
            site: site.clone(),
            rows,
            complete_range,
        };
        self.tx
            .send(Job { job, reply })
            .await
            .map_err(|_| "the ingest task has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the ingest task has stopped".to_owned())?
    }
}
