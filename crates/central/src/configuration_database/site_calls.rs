//! The `SiteCalls` mirror (SPEC §5.2): one row per TrackedOperationId of
//! every site's cached calls, fed by telemetry and reconciliation.
//!
//! Ingest rule (SPEC §3): insert if not exists; otherwise update only when
//! the incoming revision is higher and the stored row is not terminal. So
//! duplicates and reordering are harmless by construction, and status never
//! goes backwards. The rule lives in one SQL upsert, applied in batches.

use std::collections::HashMap;

use sitelink_commons::{
    truncate_chars, unix_ms_to_utc, utc_to_unix_ms, Kind, SiteName, TrackedOperationId,
    TrackingRecord, LAST_ERROR_MAX_CHARS,
};
use sqlx::Row;

use super::{Backend, Database};

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

pub struct SiteCalls<'a> {
    db: &'a Database,
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

impl<'a> SiteCalls<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

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
            if !super::sites::seen_unless_revoked_in(&mut tx, j.site.as_str(), j.seen_seq).await? {
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

    pub async fn get(&self, id: TrackedOperationId) -> Result<Option<TrackingRecord>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(record).transpose()
    }

    /// Deletes terminal rows that became terminal before `before_ms`;
    /// never Pending, Retrying or Parked ones.
    pub async fn purge(&self, before_ms: i64) -> Result<u64, sqlx::Error> {
        purge_terminal(self.db, "site_calls", before_ms).await
    }

    /// Every row of one site in id order (convergence checks, exports).
    pub async fn all_for_site(&self, site: &str) -> Result<Vec<TrackingRecord>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE source_site = $1 ORDER BY id"
        )))
        .bind(site)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(record).collect()
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
                        let p: Vec<String> = (1..=12).map(|k| format!("${}", i * 12 + k)).collect();
                        format!("({})", p.join(","))
                    })
                    .collect();
                format!(
                    "INSERT INTO site_calls (id, source_site, kind, target_summary, status, retry_count, last_error,
                        provenance, created_at_ms, updated_at_ms, terminal_at_ms, revision) VALUES {}
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, target_summary = excluded.target_summary,
                        status = excluded.status, retry_count = excluded.retry_count, last_error = excluded.last_error,
                        provenance = excluded.provenance, created_at_ms = excluded.created_at_ms,
                        updated_at_ms = excluded.updated_at_ms, terminal_at_ms = excluded.terminal_at_ms,
                        revision = excluded.revision
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
                .bind(r.revision as i64);
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

const SELECT: &str =
    "SELECT id, source_site, kind, target_summary, status, retry_count, last_error, provenance,
    created_at_ms, updated_at_ms, terminal_at_ms, revision FROM site_calls";

pub(super) fn decode<T: std::str::FromStr>(s: String, what: &str) -> Result<T, sqlx::Error>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| sqlx::Error::Decode(format!("{what}: {e}").into()))
}

/// The predicate of `site_calls_open` (migration 6), word for word: a
/// query that names it may use that partial index.
#[cfg(test)]
pub(super) const OPEN_PREDICATE: &str = "status IN ('Pending', 'Retrying', 'Parked')";

/// The predicate of the status-led listing indexes (migration 6).
pub(super) const NOT_DELIVERED_PREDICATE: &str = "status <> 'Delivered'";

/// A tracking row from the first twelve columns of [`SELECT`]'s shape.
pub(super) fn record(r: &sqlx::any::AnyRow) -> Result<TrackingRecord, sqlx::Error> {
    Ok(TrackingRecord {
        tracked_operation_id: decode(r.try_get(0)?, "id")?,
        source_site: r.try_get(1)?,
        kind: decode(r.try_get(2)?, "kind")?,
        target_summary: r.try_get(3)?,
        status: decode(r.try_get(4)?, "status")?,
        retry_count: r.try_get::<i64, _>(5)? as u32,
        last_error: r.try_get(6)?,
        provenance: r.try_get(7)?,
        created_at_utc: unix_ms_to_utc(r.try_get(8)?),
        updated_at_utc: unix_ms_to_utc(r.try_get(9)?),
        terminal_at_utc: r.try_get::<Option<i64>, _>(10)?.map(unix_ms_to_utc),
        revision: r.try_get::<i64, _>(11)? as u64,
        // Central keeps no change sequence of its own per row.
        change_seq: 0,
    })
}

/// Filters of the Site Calls page and API (all optional).
#[derive(Clone, Debug, Default)]
pub struct SiteCallFilter {
    pub site: Option<String>,
    pub kind: Option<Kind>,
    /// Any of these statuses (empty: every status).
    pub statuses: Vec<sitelink_commons::TrackedOperationStatus>,
    /// The target summary (a notification's list) contains this text.
    pub target_contains: Option<String>,
    /// Created at or after (ms since epoch).
    pub from_ms: Option<i64>,
    /// Created before (ms since epoch).
    pub to_ms: Option<i64>,
}

/// Where a page of the newest-first listing continues: the last row's
/// creation time and id. Text form: `<ms>.<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at_ms: i64,
    pub id: String,
}

impl PageCursor {
    pub fn of(r: &TrackingRecord) -> Self {
        Self {
            created_at_ms: utc_to_unix_ms(r.created_at_utc),
            id: r.tracked_operation_id.to_string(),
        }
    }

    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.id)
    }

    pub fn decode(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "after: not a page cursor from this API: {:?}",
                s.chars().take(80).collect::<String>()
            )
        };
        // Exactly the form `encode` writes (and the OpenAPI pattern says):
        // 1 to 15 digits, a dot, a hyphenated id.
        let (ms, id) = s.split_once('.').ok_or_else(bad)?;
        if ms.is_empty() || ms.len() > 15 || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let created_at_ms = ms.parse().map_err(|_| bad())?;
        if !sitelink_commons::is_hyphenated_uuid(id) {
            return Err(bad());
        }
        let id: TrackedOperationId = id.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at_ms,
            id: id.to_string(),
        })
    }
}

/// A value to bind in a query built from optional filters.
enum Bind {
    Text(String),
    Int(i64),
}

/// Which page of a newest-first listing (keyset paging, never OFFSET).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Page {
    /// The newest rows.
    #[default]
    First,
    /// The rows just older than a cursor ("Older").
    After(PageCursor),
    /// The rows just newer than a cursor ("Newer"), still shown newest
    /// first.
    Before(PageCursor),
}

/// `select` (a `SELECT … FROM table` whose table has `source_site`, `kind`,
/// `status`, `created_at_ms`, `id` and the column `target`) filtered by
/// `f`, newest first (creation time, then id), the page `page`, at most
/// `limit` rows. Only the filters given become SQL conditions, so each
/// query can use the index that fits it; values are always bound. A
/// `Before` page is read oldest first from its cursor and must be reversed
/// by the caller ([`Page::Before`] rows come back in ascending order).
pub(super) fn page_query(
    select: &str,
    target: &str,
    f: &SiteCallFilter,
    page: &Page,
    limit: u32,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let (sql, binds) = page_sql(select, target, f, page, limit);
    bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), binds)
}

/// [`page_query`] run and its rows decoded by `decode`, newest first
/// whichever way the page was read.
pub(super) async fn page_rows<T>(
    db: &Database,
    select: &str,
    target: &str,
    f: &SiteCallFilter,
    page: &Page,
    limit: u32,
    decode: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    let rows = page_query(select, target, f, page, limit)
        .fetch_all(db.pool())
        .await?;
    let mut out = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    if matches!(page, Page::Before(_)) {
        out.reverse();
    }
    Ok(out)
}

/// `text` as a LIKE pattern that matches it anywhere, its wildcards
/// escaped (with `ESCAPE '!'`, the same on every backend).
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

fn bind_all(
    mut q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Int(i) => q.bind(i),
        };
    }
    q
}

/// The text and values of [`page_query`].
fn page_sql(
    select: &str,
    target: &str,
    f: &SiteCallFilter,
    page: &Page,
    limit: u32,
) -> (String, Vec<Bind>) {
    let mut conds: Vec<String> = Vec::new();
    let mut binds: Vec<Bind> = Vec::new();
    let next = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        format!("${}", binds.len())
    };
    if let Some(s) = &f.site {
        let p = next(Bind::Text(s.clone()), &mut binds);
        conds.push(format!("source_site = {p}"));
    }
    if let Some(k) = f.kind {
        let p = next(Bind::Text(k.as_str().into()), &mut binds);
        conds.push(format!("kind = {p}"));
    }
    if !f.statuses.is_empty() {
        let mut statuses = f.statuses.clone();
        statuses.sort_by_key(|s| s.as_str());
        statuses.dedup();
        let ps: Vec<String> = statuses
            .iter()
            .map(|s| next(Bind::Text(s.as_str().into()), &mut binds))
            .collect();
        conds.push(match ps.as_slice() {
            [one] => format!("status = {one}"),
            many => format!("status IN ({})", many.join(", ")),
        });
        if !statuses.contains(&sitelink_commons::TrackedOperationStatus::Delivered) {
            // Lets the planner use the status indexes, which leave
            // Delivered rows out (migration 6); Delivered listings walk the
            // creation-time indexes instead.
            conds.push(NOT_DELIVERED_PREDICATE.into());
        }
    }
    if let Some(t) = &f.target_contains {
        let p = next(Bind::Text(contains_pattern(t)), &mut binds);
        conds.push(format!("{target} LIKE {p} ESCAPE '!'"));
    }
    if let Some(ms) = f.from_ms {
        let p = next(Bind::Int(ms), &mut binds);
        conds.push(format!("created_at_ms >= {p}"));
    }
    if let Some(ms) = f.to_ms {
        let p = next(Bind::Int(ms), &mut binds);
        conds.push(format!("created_at_ms < {p}"));
    }
    let order = match page {
        Page::First => "DESC",
        Page::After(c) | Page::Before(c) => {
            let cmp = if matches!(page, Page::After(_)) {
                "<"
            } else {
                ">"
            };
            let ms = next(Bind::Int(c.created_at_ms), &mut binds);
            let id = next(Bind::Text(c.id.clone()), &mut binds);
            conds.push(format!(
                "(created_at_ms {cmp} {ms} OR (created_at_ms = {ms} AND id {cmp} {id}))"
            ));
            if cmp == "<" {
                "DESC"
            } else {
                "ASC"
            }
        }
    };
    let limit_p = next(Bind::Int(limit as i64), &mut binds);
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (
        format!("{select}{filter} ORDER BY created_at_ms {order}, id {order} LIMIT {limit_p}"),
        binds,
    )
}

/// KPI figures of SPEC §5.2 (§7 names).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Kpis {
    pub buffered: i64,
    pub parked: i64,
    pub failed_last_interval: i64,
    pub delivered_last_interval: i64,
    pub oldest_pending_age_seconds: Option<i64>,
    pub stuck: i64,
    pub interval_seconds: i64,
    pub stuck_threshold_seconds: i64,
}

impl SiteCalls<'_> {
    /// Newest first (creation time, then id), filtered, after `after`.
    /// Only the filters given become SQL conditions, so each query can use
    /// the index that fits it; values are always bound.
    pub async fn list(
        &self,
        f: &SiteCallFilter,
        after: Option<&PageCursor>,
        limit: u32,
    ) -> Result<Vec<TrackingRecord>, sqlx::Error> {
        let page = after.cloned().map_or(Page::First, Page::After);
        self.list_page(f, &page, limit).await
    }

    /// One page of the newest-first listing (Older and Newer both by
    /// keyset), newest first.
    pub async fn list_page(
        &self,
        f: &SiteCallFilter,
        page: &Page,
        limit: u32,
    ) -> Result<Vec<TrackingRecord>, sqlx::Error> {
        page_rows(self.db, SELECT, "target_summary", f, page, limit, record).await
    }

    /// Folds the open-call deltas the triggers appended into the counters
    /// (PostgreSQL; SQLite keeps no counters, see migration 4); returns how
    /// many delta rows it folded. Run by one task only (the Site Call Audit
    /// actor). The DELETE takes exactly the rows its snapshot sees, so
    /// deltas committed meanwhile stay for the next fold.
    pub async fn fold_open_counts(&self) -> Result<u64, sqlx::Error> {
        if self.db.backend() == Backend::Sqlite {
            return Ok(0);
        }
        let mut tx = self.db.pool().begin().await?;
        let folded = sqlx::query_scalar::<_, i64>(
            "WITH d AS (DELETE FROM site_call_open_deltas RETURNING source_site, status, delta),
                  s AS (INSERT INTO site_call_open_counts (source_site, status, n)
                        SELECT source_site, status, SUM(delta) FROM d GROUP BY source_site, status
                        ON CONFLICT (source_site, status) DO UPDATE SET n = site_call_open_counts.n + excluded.n)
             SELECT COUNT(*) FROM d",
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM site_call_open_counts WHERE n = 0")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(folded as u64)
    }

    /// KPIs per site, computed point-in-time: non-terminal rows through the
    /// status index, recent terminal rows through the terminal-time index.
    pub async fn kpis_per_site(
        &self,
        now_ms: i64,
        interval_seconds: i64,
        stuck_threshold_seconds: i64,
    ) -> Result<std::collections::BTreeMap<String, Kpis>, sqlx::Error> {
        // Both queries answer, per open (site, status): count, oldest
        // creation time (buffered statuses only), and how many were
        // created within the stuck threshold.
        let open_sql = match self.db.backend() {
            Backend::Postgres => OPEN_KPIS_POSTGRES,
            Backend::Sqlite => OPEN_KPIS_SQLITE,
        };
        kpis_with(
            self.db,
            "site_calls",
            open_sql,
            now_ms,
            interval_seconds,
            stuck_threshold_seconds,
        )
        .await
    }
}

/// The open KPIs from `$groups`, a query of the open (site, status) groups
/// with their count `n`: for buffered groups the oldest creation time is
/// one seek into `site_calls_open`, and the count created at or after `$1`
/// a range over recent rows only (both subqueries name that partial
/// index's predicate, so the planners may use it).
macro_rules! open_kpis {
    ($groups:literal) => {
        concat!(
            "SELECT g.source_site, g.status, g.n,
    CASE WHEN g.status = 'Parked' THEN NULL ELSE
        (SELECT MIN(c.created_at_ms) FROM site_calls c
         WHERE c.status = g.status AND c.source_site = g.source_site
           AND c.status IN ('Pending', 'Retrying', 'Parked')) END,
    CASE WHEN g.status = 'Parked' THEN 0 ELSE
        (SELECT COUNT(*) FROM site_calls c
         WHERE c.status = g.status AND c.source_site = g.source_site
           AND c.status IN ('Pending', 'Retrying', 'Parked')
           AND c.created_at_ms >= $1) END
 FROM (",
            $groups,
            ") AS g
 WHERE g.n > 0"
        )
    };
}

/// Open KPIs on PostgreSQL: the groups come from the maintained counters
/// (migration 4), one row per (site, status).
const OPEN_KPIS_POSTGRES: &str = open_kpis!(
    "SELECT source_site, status, CAST(SUM(n) AS BIGINT) AS n
       FROM (SELECT source_site, status, n FROM site_call_open_counts
             UNION ALL
             SELECT source_site, status, delta FROM site_call_open_deltas) AS u
       GROUP BY source_site, status"
);

/// Open KPIs on SQLite (no counters there, see migration 4): the groups
/// are counted in one pass over the covering partial index
/// `site_calls_open`. Counting only, with the oldest time and the recent
/// count left to the per-group seeks, took a third off the pass (2 million
/// rows, 40,000 open: 6.1 ms → 3.8 ms) against one pass that also
/// computed MIN and a CASE sum per row.
const OPEN_KPIS_SQLITE: &str = open_kpis!(
    "SELECT source_site, status, COUNT(*) AS n FROM site_calls
       WHERE status IN ('Pending', 'Retrying', 'Parked')
       GROUP BY source_site, status"
);

/// The retention rule of `table` (`site_calls` or `notifications`):
/// terminal rows older than `before_ms` go, open ones never.
pub(super) async fn purge_terminal(
    db: &Database,
    table: &str,
    before_ms: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    db.fence(&mut tx).await?;
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {table}
         WHERE terminal_at_ms IS NOT NULL AND terminal_at_ms < $1
           AND status IN ('Delivered', 'Failed', 'Discarded')"
    )))
    .bind(before_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// KPIs per site of `table` (`site_calls` or `notifications`): `open_sql`
/// answers, per open (site, status), the count, the oldest creation time
/// (NULL for Parked) and how many were created at or after `$1` (the stuck
/// threshold); the recent terminal rows come from the terminal-time index.
pub(super) async fn kpis_with(
    db: &Database,
    table: &str,
    open_sql: &'static str,
    now_ms: i64,
    interval_seconds: i64,
    stuck_threshold_seconds: i64,
) -> Result<std::collections::BTreeMap<String, Kpis>, sqlx::Error> {
    let mut out: std::collections::BTreeMap<String, Kpis> = Default::default();
    let blank = Kpis {
        interval_seconds,
        stuck_threshold_seconds,
        ..Default::default()
    };
    let open = sqlx::query(open_sql)
        .bind(now_ms - stuck_threshold_seconds * 1000)
        .fetch_all(db.pool())
        .await?;
    for r in &open {
        let site: String = r.try_get(0)?;
        let status: String = r.try_get(1)?;
        let n: i64 = r.try_get(2)?;
        let k = out.entry(site).or_insert_with(|| blank.clone());
        if status == "Parked" {
            k.parked += n;
        } else {
            k.buffered += n;
            if let Some(oldest) = r.try_get::<Option<i64>, _>(3)? {
                let age = ((now_ms - oldest) / 1000).max(0);
                k.oldest_pending_age_seconds =
                    Some(k.oldest_pending_age_seconds.map_or(age, |a| a.max(age)));
            }
            k.stuck += (n - r.try_get::<i64, _>(4)?).max(0);
        }
    }
    add_recent_terminal(db, table, now_ms, interval_seconds, &blank, &mut out).await?;
    Ok(out)
}

/// Adds each site's Delivered and Failed rows that became terminal within
/// the interval to `out` (`table`: `site_calls` or `notifications`).
async fn add_recent_terminal(
    db: &Database,
    table: &str,
    now_ms: i64,
    interval_seconds: i64,
    blank: &Kpis,
    out: &mut std::collections::BTreeMap<String, Kpis>,
) -> Result<(), sqlx::Error> {
    // The plan must walk the terminal-time index (covering) over the
    // interval only. So: no status condition in WHERE (the status index
    // would walk every Delivered row), and a two-sided range (with a
    // one-sided one SQLite's planner prefers scanning in GROUP BY order).
    let recent = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT source_site,
                SUM(CASE WHEN status = 'Delivered' THEN 1 ELSE 0 END),
                SUM(CASE WHEN status = 'Failed' THEN 1 ELSE 0 END)
         FROM {table} WHERE terminal_at_ms >= $1 AND terminal_at_ms <= $2
         GROUP BY source_site"
    )))
    .bind(now_ms - interval_seconds * 1000)
    .bind(i64::MAX)
    .fetch_all(db.pool())
    .await?;
    for r in &recent {
        let site: String = r.try_get(0)?;
        let k = out.entry(site).or_insert_with(|| blank.clone());
        k.delivered_last_interval += r.try_get::<i64, _>(1)?;
        k.failed_last_interval += r.try_get::<i64, _>(2)?;
    }
    Ok(())
}

impl Kpis {
    /// The global figures from the per-site ones.
    pub fn total(
        per_site: &std::collections::BTreeMap<String, Kpis>,
        interval_seconds: i64,
        stuck_threshold_seconds: i64,
    ) -> Kpis {
        let mut t = Kpis {
            interval_seconds,
            stuck_threshold_seconds,
            ..Default::default()
        };
        for k in per_site.values() {
            t.buffered += k.buffered;
            t.parked += k.parked;
            t.failed_last_interval += k.failed_last_interval;
            t.delivered_last_interval += k.delivered_last_interval;
            t.stuck += k.stuck;
            t.oldest_pending_age_seconds =
                match (t.oldest_pending_age_seconds, k.oldest_pending_age_seconds) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
        }
        t
    }
}

#[cfg(test)]
mod tests {
    //! The listings and the KPI query reach the index meant for them, on
    //! both backends (EXPLAIN). With the partial indexes of migration 6 a
    //! query that does not name an index's predicate silently falls back
    //! to a walk of the whole table: this is what catches that.

    use super::*;
    use sitelink_commons::TrackedOperationStatus as S;

    /// The plan of `sql` with `binds`, as text. PostgreSQL is told not to
    /// scan tables, so it shows the index it would use on a large one.
    async fn plan(db: &Database, sql: &str, binds: Vec<Bind>) -> String {
        let mut conn = db.pool().acquire().await.unwrap();
        let explain = match db.backend() {
            Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
            Backend::Postgres => {
                sqlx::Executor::execute(&mut *conn, "SET enable_seqscan = off")
                    .await
                    .unwrap();
                format!("EXPLAIN {sql}")
            }
        };
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(explain)), binds)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let column = match db.backend() {
            Backend::Sqlite => 3,
            Backend::Postgres => 0,
        };
        rows.iter()
            .map(|r| r.try_get::<String, _>(column).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// 5 sites × 2,000 rows shaped like a busy fleet (96 % Delivered), so
    /// PostgreSQL plans from statistics, not from an empty table.
    async fn fill(db: &Database) {
        let now = sitelink_commons::now_unix_ms();
        for s in 0..5 {
            let site = SiteName::parse(&format!("s{s}")).unwrap();
            let rows: Vec<TrackingRecord> = (0..2_000i64)
                .map(|i| {
                    let status = match i % 100 {
                        0 => S::Parked,
                        1 => S::Failed,
                        2 => S::Pending,
                        3 => S::Retrying,
                        _ => S::Delivered,
                    };
                    let at = unix_ms_to_utc(now - 1_000_000 + i * 100);
                    TrackingRecord {
                        tracked_operation_id: TrackedOperationId::new(),
                        source_site: site.as_str().into(),
                        kind: Kind::ExternalCall,
                        target_summary: "erp.post".into(),
                        status,
                        retry_count: 0,
                        last_error: None,
                        provenance: "p".into(),
                        created_at_utc: at,
                        updated_at_utc: at,
                        terminal_at_utc: status.is_terminal().then_some(at),
                        revision: 1,
                        change_seq: 0,
                    }
                })
                .collect();
            db.site_calls().ingest(&site, &rows, None).await.unwrap();
        }
        if db.backend() == Backend::Postgres {
            sqlx::Executor::execute(db.pool(), "ANALYZE site_calls")
                .await
                .unwrap();
        }
    }

    async fn check(db: &Database, backend: &str) {
        fill(db).await;
        // (site, status, the index SQLite uses, the ones PostgreSQL may
        // use: its choice between the two partial status indexes follows
        // its statistics, and either is a short walk).
        let (created, site_created) = ("site_calls_by_created", "site_calls_by_site_created");
        let (status_created, site_status_created) = (
            "site_calls_by_status_created",
            "site_calls_by_site_status_created",
        );
        let either = "site_calls_by_status_created|site_calls_by_site_status_created";
        let cases = [
            (None, None, created, created),
            (Some("s1"), None, site_created, site_created),
            (None, Some(S::Parked), status_created, either),
            (None, Some(S::Failed), status_created, either),
            (Some("s1"), Some(S::Retrying), site_status_created, either),
            (None, Some(S::Delivered), created, created),
            (Some("s1"), Some(S::Delivered), site_created, site_created),
        ];
        for (site, status, sqlite, postgres) in cases {
            let filter = SiteCallFilter {
                site: site.map(str::to_owned),
                statuses: status.into_iter().collect(),
                ..Default::default()
            };
            let index = match db.backend() {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            let (sql, binds) = page_sql(SELECT, "target_summary", &filter, &Page::First, 100);
            let plan = plan(db, &sql, binds).await;
            assert!(
                index.split('|').any(|i| uses(&plan, i)),
                "{backend}: {filter:?} should use {index}:\n{plan}"
            );
        }
        let kpis = match db.backend() {
            Backend::Sqlite => OPEN_KPIS_SQLITE,
            Backend::Postgres => OPEN_KPIS_POSTGRES,
        };
        let plan = plan(db, kpis, vec![Bind::Int(0)]).await;
        assert!(
            uses(&plan, "site_calls_open"),
            "{backend}: open KPIs:\n{plan}"
        );
    }

    /// Whether `plan` names `index` (as a whole word).
    fn uses(plan: &str, index: &str) -> bool {
        plan.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == index)
    }

    #[tokio::test]
    async fn listings_and_kpis_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("central.db").display());
        check(&Database::connect(&url).await.unwrap(), "sqlite").await;
        match sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await {
            Some(pg) => {
                let db = Database::connect(&pg.url).await.unwrap();
                check(&db, "postgres").await;
                db.pool().close().await;
                pg.drop_database().await;
            }
            None => eprintln!("SITELINK_TEST_POSTGRES_URL not set: PostgreSQL plans skipped"),
        }
    }
}
