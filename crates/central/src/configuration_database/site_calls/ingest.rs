//! Ingest into the mirror (SPEC §3): insert if not exists; otherwise
//! update only when the incoming revision is higher and the stored row is
//! not terminal, in one SQL upsert per 50 rows, and the site's reconcile
//! cursor advanced in the same transaction over complete ranges. Each row
//! is stored with the fingerprint of its last error (its failure group).

use std::collections::HashMap;

use sitelink_commons::{
    truncate_chars, utc_to_unix_ms, Kind, SiteName, TrackedOperationId, TrackingRecord,
    LAST_ERROR_MAX_CHARS,
};

use super::SiteCalls;

/// Longest target summary and provenance stored, in characters.
const SHORT_TEXT_MAX_CHARS: usize = 512;
/// Rows per upsert statement. Measured (bench ingest): 50 rows ran 4–9×
/// faster than 400 on both backends through sqlx's `Any` driver; very large
/// statements cost more to prepare than they save in round trips.
pub const ROWS_PER_STATEMENT: usize = 50;

/// One ingest for [`SiteCalls::ingest_many`].
#[derive(Clone, Debug)]
pub struct IngestJob {
    pub site: SiteName,
    pub rows: Vec<TrackingRecord>,
    pub complete_range: Option<(u64, u64)>,
    /// Telemetry up to this change sequence arrived: the site was seen now
    /// (recorded in the same transaction, not in a commit of its own).
    pub seen_seq: Option<u64>,
}

/// What one ingest did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Rows inserted or updated.
    pub applied: u64,
    /// Rows refused, with the reason (logged by the caller).
    pub rejected: Vec<(String, String)>,
    /// The site's reconcile cursor after this ingest.
    pub cursor: u64,
    pub cursor_advanced: bool,
    /// The site was revoked: nothing of this job was stored.
    pub revoked: bool,
}

/// `s` itself when it fits (no copy: ingest moves its strings into the
/// query), else cut to `max` characters.
fn fit(s: String, max: usize) -> String {
    if s.len() <= max {
        s
    } else {
        truncate_chars(&s, max).into_owned()
    }
}

impl SiteCalls<'_> {
    /// Ingests rows reported by `site`. `complete_range = Some((from, to))`
    /// says the rows cover every change in `(from, to]`: if the site's
    /// cursor is within that range it advances to `to`, in the same
    /// transaction. Rows of another site, or of kind `Notification`, are
    /// rejected; the rest lands.
    pub async fn ingest(
        &self,
        site: &SiteName,
        rows: &[TrackingRecord],
        complete_range: Option<(u64, u64)>,
    ) -> Result<IngestOutcome, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        let out = ingest_in(&mut tx, site, rows.to_vec(), complete_range).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Several ingests (of one or many sites) in ONE transaction: one commit
    /// for all of them. Each keeps its own rows, rule and cursor range.
    pub async fn ingest_many(
        &self,
        jobs: Vec<IngestJob>,
    ) -> Result<Vec<IngestOutcome>, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        self.db.fence(&mut tx).await?;
        let mut outs = Vec::with_capacity(jobs.len());
        for j in jobs {
            // The first statement writes: it takes SQLite's write lock at
            // once (a read first, then a write, fails with
            // SQLITE_BUSY_SNAPSHOT whenever another connection wrote in
            // between), notes the contact, and finds a revoked site, whose
            // rows are not stored, even those already on their way.
            if !super::super::sites::seen_unless_revoked_in(&mut tx, j.site.as_str(), j.seen_seq)
                .await?
            {
                outs.push(IngestOutcome {
                    revoked: true,
                    ..IngestOutcome::default()
                });
                continue;
            }
            outs.push(ingest_in(&mut tx, &j.site, j.rows, j.complete_range).await?);
        }
        tx.commit().await?;
        Ok(outs)
    }
}

/// The ingest upsert for `n` rows (1 to [`ROWS_PER_STATEMENT`]), built once
/// per size: ingest runs it for every 50 rows, and building its 600
/// placeholders each time (a dozen small allocations per row) cost a
/// measurable share of the ingest rate (bench ingest).
fn upsert_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (1..=ROWS_PER_STATEMENT)
            .map(|rows| {
                let values: Vec<String> = (0..rows)
                    .map(|i| {
                        let p: Vec<String> = (1..=13).map(|k| format!("${}", i * 13 + k)).collect();
                        format!("({})", p.join(","))
                    })
                    .collect();
                format!(
                    "INSERT INTO site_calls (id, source_site, kind, target_summary, status, retry_count, last_error,
                        provenance, created_at_ms, updated_at_ms, terminal_at_ms, revision, fingerprint) VALUES {}
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, target_summary = excluded.target_summary,
                        status = excluded.status, retry_count = excluded.retry_count, last_error = excluded.last_error,
                        provenance = excluded.provenance, created_at_ms = excluded.created_at_ms,
                        updated_at_ms = excluded.updated_at_ms, terminal_at_ms = excluded.terminal_at_ms,
                        revision = excluded.revision, fingerprint = excluded.fingerprint
                     WHERE excluded.revision > site_calls.revision
                       AND site_calls.terminal_at_ms IS NULL
                       AND site_calls.source_site = excluded.source_site",
                    values.join(",")
                )
            })
            .collect()
    });
    &all[n - 1]
}

/// The ingest rule inside a transaction the caller commits.
async fn ingest_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    site: &SiteName,
    rows: Vec<TrackingRecord>,
    complete_range: Option<(u64, u64)>,
) -> Result<IngestOutcome, sqlx::Error> {
    let mut out = IngestOutcome::default();

    // One row per id (the highest revision): an upsert may not touch a
    // row twice in one statement.
    let mut latest: HashMap<TrackedOperationId, TrackingRecord> =
        HashMap::with_capacity(rows.len());
    for r in rows {
        if r.source_site != site.as_str() {
            out.rejected.push((
                r.tracked_operation_id.to_string(),
                format!("reported by site {site} for site {:?}", r.source_site),
            ));
            continue;
        }
        if r.kind == Kind::Notification {
            out.rejected.push((
                r.tracked_operation_id.to_string(),
                "notifications are not site calls".into(),
            ));
            continue;
        }
        match latest.entry(r.tracked_operation_id) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if r.revision > e.get().revision {
                    e.insert(r);
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(r);
            }
        }
    }
    // In id order (UUID v7: creation order): the primary key and the
    // creation-time indexes then grow at their ends instead of taking
    // rows at random places (the hash map's order), which measured about
    // a fifth slower on SQLite.
    let mut rows: Vec<TrackingRecord> = latest.into_values().collect();
    rows.sort_unstable_by_key(|r| r.tracked_operation_id);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<TrackingRecord> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        let sql = upsert_sql(chunk.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            // The failure group's key, computed once here so that grouping
            // is an indexed GROUP BY (issue 21).
            let fingerprint = r.last_error.as_deref().map(sitelink_commons::fingerprint);
            q = q
                .bind(r.tracked_operation_id.to_string())
                .bind(r.source_site)
                .bind(r.kind.as_str())
                .bind(fit(r.target_summary, SHORT_TEXT_MAX_CHARS))
                .bind(r.status.as_str())
                .bind(r.retry_count as i64)
                .bind(r.last_error.map(|e| fit(e, LAST_ERROR_MAX_CHARS)))
                .bind(fit(r.provenance, SHORT_TEXT_MAX_CHARS))
                .bind(utc_to_unix_ms(r.created_at_utc))
                .bind(utc_to_unix_ms(r.updated_at_utc))
                .bind(r.terminal_at_utc.map(utc_to_unix_ms))
                .bind(r.revision as i64)
                .bind(fingerprint);
        }
        out.applied += q.execute(&mut **tx).await?.rows_affected();
    }
    if let Some((from, to)) = complete_range {
        let done = sqlx::query(
            "UPDATE sites SET reconcile_cursor = $1 WHERE name = $2 AND reconcile_cursor >= $3 AND reconcile_cursor < $1",
        )
        .bind(to as i64)
        .bind(site.as_str())
        .bind(from as i64)
        .execute(&mut **tx)
        .await?;
        out.cursor_advanced = done.rows_affected() > 0;
    }
    let cursor: Option<i64> =
        sqlx::query_scalar("SELECT reconcile_cursor FROM sites WHERE name = $1")
            .bind(site.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    out.cursor = cursor.unwrap_or(0) as u64;
    Ok(out)
}
