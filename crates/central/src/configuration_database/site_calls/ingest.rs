//! Ingest into the mirror (SPEC §3): insert if not exists; otherwise
//! update only when the incoming revision is higher and the stored row is
//! not terminal, in one SQL upsert per 50 rows, and the site's reconcile
//! cursor advanced in the same transaction over complete ranges. Each row
//! is stored with the fingerprint of its last error (its failure group).

use std::collections::{hash_map::Entry, BTreeMap, HashMap, HashSet};

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
    ///
    /// The jobs share their statements: one contact update for every site
    /// (which also finds the revoked), one upsert per 50 rows whatever job
    /// they came in, one cursor update for every site, one cursor read.
    /// A thousand sites each sending one row a second made one-row jobs,
    /// and four statements each bound the fleet (issue 22: `sitelink bench
    /// fleet`, BENCHMARKS.md).
    pub async fn ingest_many(
        &self,
        jobs: Vec<IngestJob>,
    ) -> Result<Vec<IngestOutcome>, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        self.db.fence(&mut tx).await?;
        let outs = ingest_jobs(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(outs)
    }
}

/// Sites per contact, cursor or read statement.
const SITES_PER_STATEMENT: usize = 400;

/// [`SiteCalls::ingest_many`] inside a transaction the caller commits.
async fn ingest_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    mut jobs: Vec<IngestJob>,
) -> Result<Vec<IngestOutcome>, sqlx::Error> {
    // The rows move into the upsert; the jobs keep their site and range.
    let rows_of: Vec<Vec<TrackingRecord>> = jobs
        .iter_mut()
        .map(|j| std::mem::take(&mut j.rows))
        .collect();
    // 1. Contact: each site seen (its highest telemetry sequence), in the
    // first statement, which also takes SQLite's write lock at once (a
    // read first, then a write, fails with SQLITE_BUSY_SNAPSHOT whenever
    // another connection wrote in between). A revoked site is not
    // returned: its rows are not stored, even those already on their way.
    let mut seen: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    for j in &jobs {
        let e = seen.entry(j.site.as_str()).or_default();
        *e = (*e).max(j.seen_seq);
    }
    let seen: Vec<(&str, Option<u64>)> = seen.into_iter().collect();
    let mut live: HashSet<String> = HashSet::with_capacity(seen.len());
    let now = crate::configuration_database::now_ms();
    for chunk in seen.chunks(SITES_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, CAST(${} AS BIGINT))", 2 + 2 * i, 3 + 2 * i))
            .collect();
        // `(VALUES …) AS v` names its columns column1… on both backends.
        let sql = format!(
            "UPDATE sites SET
                 last_seen_ms = CASE WHEN v.column2 IS NULL THEN sites.last_seen_ms ELSE $1 END,
                 high_seq = CASE WHEN v.column2 > sites.high_seq THEN v.column2 ELSE sites.high_seq END
             FROM (VALUES {}) AS v
             WHERE sites.name = v.column1 AND sites.revoked_at_ms IS NULL
             RETURNING sites.name",
            values.join(", ")
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(now);
        for (name, seq) in chunk {
            q = q.bind(*name).bind(seq.map(|s| s as i64));
        }
        live.extend(q.fetch_all(&mut **tx).await?);
    }

    // 2. Rows: each job's checked, then one per id over all jobs (the
    // highest revision; an upsert may not touch a row twice).
    let mut outs = vec![IngestOutcome::default(); jobs.len()];
    let mut latest: HashMap<TrackedOperationId, (usize, TrackingRecord)> = HashMap::new();
    let mut ranges: Vec<(usize, &str, u64, u64)> = Vec::new();
    for (k, (j, rows)) in jobs.iter().zip(rows_of).enumerate() {
        if !live.contains(j.site.as_str()) {
            outs[k].revoked = true;
            continue;
        }
        if let Some((from, to)) = j.complete_range {
            ranges.push((k, j.site.as_str(), from, to));
        }
        for r in checked(&j.site, rows, &mut outs[k]) {
            match latest.entry(r.tracked_operation_id) {
                Entry::Occupied(mut e) => {
                    if r.revision > e.get().1.revision {
                        e.insert((k, r));
                    }
                }
                Entry::Vacant(e) => {
                    e.insert((k, r));
                }
            }
        }
    }
    let job_of: HashMap<String, usize> = latest
        .iter()
        .map(|(id, (k, _))| (id.to_string(), *k))
        .collect();
    let rows: Vec<TrackingRecord> = latest.into_values().map(|(_, r)| r).collect();
    for id in upsert(tx, rows).await? {
        if let Some(k) = job_of.get(&id) {
            outs[*k].applied += 1;
        }
    }

    // 3. Cursors: a site's ranges in job order, runs that follow each
    // other exactly ((a, b] then (b, c]) merged into one, which advances
    // the cursor exactly as applying them in turn would. The first run of
    // every site goes in one statement; a further run (ranges with a gap
    // or overlap between them: rare) goes after it on its own.
    let mut runs: Vec<(&str, u64, u64)> = Vec::new();
    let mut later: Vec<(&str, u64, u64)> = Vec::new();
    let mut last_of: HashMap<&str, usize> = HashMap::new();
    let mut has_later: HashSet<&str> = HashSet::new();
    for &(_, site, from, to) in &ranges {
        if has_later.contains(site) {
            match later.last_mut().filter(|l| l.0 == site && l.2 == from) {
                Some(l) => l.2 = to,
                None => later.push((site, from, to)),
            }
            continue;
        }
        match last_of.get(site) {
            Some(&i) if runs[i].2 == from => runs[i].2 = to,
            Some(_) => {
                has_later.insert(site);
                later.push((site, from, to));
            }
            None => {
                last_of.insert(site, runs.len());
                runs.push((site, from, to));
            }
        }
    }
    let mut advanced: HashSet<String> = HashSet::new();
    for chunk in runs.chunks(SITES_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "(${}, CAST(${} AS BIGINT), CAST(${} AS BIGINT))",
                    1 + 3 * i,
                    2 + 3 * i,
                    3 + 3 * i
                )
            })
            .collect();
        let sql = format!(
            "UPDATE sites SET reconcile_cursor = v.column3
             FROM (VALUES {}) AS v
             WHERE sites.name = v.column1 AND sites.reconcile_cursor >= v.column2
               AND sites.reconcile_cursor < v.column3
             RETURNING sites.name",
            values.join(", ")
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for (site, from, to) in chunk {
            q = q.bind(*site).bind(*from as i64).bind(*to as i64);
        }
        advanced.extend(q.fetch_all(&mut **tx).await?);
    }
    for (site, from, to) in later {
        let done = sqlx::query(
            "UPDATE sites SET reconcile_cursor = $1 WHERE name = $2 AND reconcile_cursor >= $3 AND reconcile_cursor < $1",
        )
        .bind(to as i64)
        .bind(site)
        .bind(from as i64)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() > 0 {
            advanced.insert(site.to_owned());
        }
    }

    // 4. Every live site's cursor now.
    let names: Vec<&String> = live.iter().collect();
    let mut cursor: HashMap<String, u64> = HashMap::with_capacity(names.len());
    for chunk in names.chunks(SITES_PER_STATEMENT) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT name, reconcile_cursor FROM sites WHERE name IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
        for n in chunk {
            q = q.bind(n.as_str());
        }
        for (name, c) in q.fetch_all(&mut **tx).await? {
            cursor.insert(name, c as u64);
        }
    }
    for (k, j) in jobs.iter().enumerate() {
        if outs[k].revoked {
            continue;
        }
        outs[k].cursor = cursor.get(j.site.as_str()).copied().unwrap_or(0);
        outs[k].cursor_advanced = j.complete_range.is_some() && advanced.contains(j.site.as_str());
    }
    Ok(outs)
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
                       AND site_calls.source_site = excluded.source_site
                     RETURNING id",
                    values.join(",")
                )
            })
            .collect()
    });
    &all[n - 1]
}

/// `rows` without those the site may not report (another site's, a
/// notification), each of those named in `out.rejected`.
fn checked(
    site: &SiteName,
    rows: Vec<TrackingRecord>,
    out: &mut IngestOutcome,
) -> Vec<TrackingRecord> {
    rows.into_iter()
        .filter(|r| {
            let why = if r.source_site != site.as_str() {
                format!("reported by site {site} for site {:?}", r.source_site)
            } else if r.kind == Kind::Notification {
                "notifications are not site calls".into()
            } else {
                return true;
            };
            out.rejected.push((r.tracked_operation_id.to_string(), why));
            false
        })
        .collect()
}

/// Upserts `rows` (one per id) under the ingest rule, 50 to a statement;
/// the ids it inserted or updated.
async fn upsert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    mut rows: Vec<TrackingRecord>,
) -> Result<Vec<String>, sqlx::Error> {
    // In id order (UUID v7: creation order): the primary key and the
    // creation-time indexes then grow at their ends instead of taking
    // rows at random places (the hash map's order), which measured about
    // a fifth slower on SQLite.
    rows.sort_unstable_by_key(|r| r.tracked_operation_id);
    let mut applied = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<TrackingRecord> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        let sql = upsert_sql(chunk.len());
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
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
        applied.extend(q.fetch_all(&mut **tx).await?);
    }
    Ok(applied)
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
    for r in checked(site, rows, &mut out) {
        match latest.entry(r.tracked_operation_id) {
            Entry::Occupied(mut e) => {
                if r.revision > e.get().revision {
                    e.insert(r);
                }
            }
            Entry::Vacant(e) => {
                e.insert(r);
            }
        }
    }
    out.applied = upsert(tx, latest.into_values().collect()).await?.len() as u64;
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
