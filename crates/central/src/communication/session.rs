//! One site's stream, as central runs it: reconcile on connect and every
//! `reconcile_interval`, ingest telemetry and reconcile pages, acknowledge
//! the cursor, and route command results to their waiting relays.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use sitelink_commons::{
    contracts::v1::{self, central_message, site_message, CentralMessage, SiteMessage},
    SiteName, TrackingRecord,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::LinkSettings;
use crate::{configuration_database::Database, site_call_audit::IngestBatcher};

pub(super) struct Session {
    pub site: SiteName,
    pub db: Database,
    pub tx: mpsc::Sender<Result<CentralMessage, Status>>,
    pub pending: Arc<Mutex<HashMap<u64, oneshot::Sender<v1::CommandResult>>>>,
    pub correlation: Arc<AtomicU64>,
    pub settings: LinkSettings,
    pub stats: Arc<super::LinkStats>,
    pub ingest: IngestBatcher,
}

/// A reconcile in progress: the correlation of the page asked for and the
/// sequence it starts after.
struct Reconcile {
    correlation: u64,
    after_seq: u64,
}

impl Session {
    async fn send(&self, correlation: u64, body: central_message::Body) -> Result<(), String> {
        self.tx
            .send(Ok(CentralMessage {
                correlation,
                body: Some(body),
            }))
            .await
            .map_err(|_| "the site's stream is gone".to_owned())
    }

    async fn request_page(&self, after_seq: u64) -> Result<Reconcile, String> {
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed) + 1;
        let body = central_message::Body::Reconcile(v1::CachedCallReconcileRequest {
            after_seq,
            limit: self.settings.reconcile_page,
        });
        self.send(correlation, body).await?;
        Ok(Reconcile {
            correlation,
            after_seq,
        })
    }

    async fn cursor(&self) -> Result<u64, String> {
        Ok(self
            .db
            .sites()
            .get(self.site.as_str())
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |s| s.reconcile_cursor))
    }

    /// Ingests rows that cover `(from, to]` and acknowledges the cursor when
    /// it moved.
    async fn ingest(
        &self,
        rows: &[v1::CachedCallTelemetry],
        from: u64,
        to: u64,
    ) -> Result<(), String> {
        let mut records = Vec::with_capacity(rows.len());
        let mut malformed = 0usize;
        for row in rows {
            match TrackingRecord::try_from(row) {
                Ok(r) => records.push(r),
                Err(e) => {
                    malformed += 1;
                    tracing::warn!(site = %self.site, id = %row.id, error = %e, "telemetry row rejected");
                }
            }
        }
        // A range with a row this build cannot read is not complete here:
        // apply the rest, leave the cursor, let a newer central reconcile it.
        let range = (malformed == 0).then_some((from, to));
        let outcome = self.ingest.ingest(&self.site, records, range).await?;
        for (id, why) in &outcome.rejected {
            tracing::warn!(site = %self.site, %id, reason = %why, "telemetry row rejected");
        }
        if outcome.cursor_advanced {
            self.send(
                0,
                central_message::Body::CursorAck(v1::CursorAck {
                    cursor: outcome.cursor,
                }),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn run(
        &self,
        mut inbound: Streaming<SiteMessage>,
        high_seq: u64,
    ) -> Result<(), String> {
        self.db
            .sites()
            .seen(self.site.as_str(), high_seq)
            .await
            .map_err(|e| e.to_string())?;
        let cursor = self.cursor().await?;
        self.send(
            0,
            central_message::Body::Welcome(v1::Welcome {
                protocol_version: super::PROTOCOL_VERSION,
                cursor,
            }),
        )
        .await?;
        // Reconcile on every connect.
        let mut reconcile = Some(self.request_page(cursor).await?);
        let mut every = tokio::time::interval(self.settings.reconcile_interval);
        every.tick().await; // the first tick is now; connect already asked
        let mut last_tick_cursor: Option<u64> = None;
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = every.tick() => {
                    // Pull only when the cursor stood still for a whole
                    // period: while telemetry keeps advancing it, there is
                    // no gap to heal and a pull would send rows twice.
                    let cursor = self.cursor().await?;
                    if reconcile.is_none() && last_tick_cursor == Some(cursor) {
                        reconcile = Some(self.request_page(cursor).await?);
                    }
                    last_tick_cursor = Some(cursor);
                    continue;
                }
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(status) => return Err(format!("malformed or broken stream: {status}")),
            };
            match msg.body {
                Some(site_message::Body::Telemetry(batch)) => {
                    if batch.to_seq < batch.from_seq {
                        return Err(format!(
                            "telemetry range ({}, {}] is reversed",
                            batch.from_seq, batch.to_seq
                        ));
                    }
                    self.stats
                        .telemetry_rows
                        .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
                    self.ingest(&batch.rows, batch.from_seq, batch.to_seq)
                        .await?;
                    self.db
                        .sites()
                        .seen(self.site.as_str(), batch.to_seq)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Some(site_message::Body::Reconcile(page)) => {
                    let Some(r) = reconcile
                        .as_ref()
                        .filter(|r| r.correlation == msg.correlation)
                    else {
                        tracing::debug!(site = %self.site, "reconcile page nobody asked for; ignored");
                        continue;
                    };
                    if page.next_seq < r.after_seq {
                        return Err(format!(
                            "reconcile page ends at {} before it starts ({})",
                            page.next_seq, r.after_seq
                        ));
                    }
                    self.stats
                        .reconcile_rows
                        .fetch_add(page.rows.len() as u64, Ordering::Relaxed);
                    self.ingest(&page.rows, r.after_seq, page.next_seq).await?;
                    reconcile = if page.has_more {
                        Some(self.request_page(page.next_seq).await?)
                    } else {
                        None
                    };
                }
                Some(site_message::Body::CommandResult(result)) => {
                    let waiter = self
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&msg.correlation);
                    if let Some(w) = waiter {
                        let _ = w.send(result);
                    }
                }
                Some(site_message::Body::Hello(_)) => {
                    return Err("a second Hello on one stream".into())
                }
                None => return Err("a message with no body (from a newer site?)".into()),
            }
        }
    }
}
