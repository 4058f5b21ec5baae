//! The `SiteCalls` mirror (SPEC §5.2): one row per TrackedOperationId of
//! every site's cached calls, fed by telemetry and reconciliation.
//!
//! Ingest rule (SPEC §3): insert if not exists; otherwise update only when
//! the incoming revision is higher and the stored row is not terminal. So
//! duplicates and reordering are harmless by construction, and status never
//! goes backwards. The rule lives in one SQL upsert, applied in batches.

use sitelink_commons::{unix_ms_to_utc, TrackedOperationId, TrackingRecord};
use sqlx::Row;

use super::{
    groups::{self, FailureGroup, GroupFilter, Grouped},
    listing::{export_rows, page_rows, ListFilter, Listing, Page, PageCursor},
    Database,
};

mod ingest;
mod kpis;
mod retention;

pub use ingest::{IngestJob, IngestOutcome, ROWS_PER_STATEMENT};
pub(super) use kpis::kpis_with;
pub use kpis::Kpis;
pub(super) use retention::purge_terminal;

pub struct SiteCalls<'a> {
    db: &'a Database,
}

impl<'a> SiteCalls<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    pub async fn get(&self, id: TrackedOperationId) -> Result<Option<TrackingRecord>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(record).transpose()
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

    /// One page of the newest-first listing (Older and Newer both by
    /// keyset), newest first, with the cursors either side.
    pub async fn list_page(
        &self,
        f: &ListFilter,
        page: &Page,
        limit: u32,
    ) -> Result<Listing<TrackingRecord>, sqlx::Error> {
        page_rows(
            self.db,
            (SELECT, "target_summary"),
            f,
            page,
            limit,
            record,
            PageCursor::of,
        )
        .await
    }

    /// The failure groups of `f` (see [`groups`]).
    pub async fn groups(
        &self,
        f: &GroupFilter,
        limit: usize,
    ) -> Result<(Vec<FailureGroup>, usize), sqlx::Error> {
        groups::groups(self.db, Grouped::SiteCalls, f, limit).await
    }

    /// Every row `f` matches, newest first, streamed in constant memory
    /// (see [`export_rows`]).
    pub fn export(
        &self,
        f: &ListFilter,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<TrackingRecord, sqlx::Error>> {
        export_rows(self.db, (SELECT, "target_summary"), f, record)
    }
}

const SELECT: &str =
    "SELECT id, source_site, kind, target_summary, status, retry_count, last_error, provenance,
    created_at_ms, updated_at_ms, terminal_at_ms, revision FROM site_calls";

pub(in crate::configuration_database) fn decode<T: std::str::FromStr>(
    s: String,
    what: &str,
) -> Result<T, sqlx::Error>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| sqlx::Error::Decode(format!("{what}: {e}").into()))
}

/// The predicate of `site_calls_open` (migration 6), word for word: a
/// query that names it may use that partial index.
#[cfg(test)]
pub(in crate::configuration_database) const OPEN_PREDICATE: &str =
    "status IN ('Pending', 'Retrying', 'Parked')";

/// A tracking row from the first twelve columns of [`SELECT`]'s shape.
pub(in crate::configuration_database) fn record(
    r: &sqlx::any::AnyRow,
) -> Result<TrackingRecord, sqlx::Error> {
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

#[cfg(test)]
mod tests {
    //! The listings and the KPI query reach the index meant for them, on
    //! both backends (EXPLAIN). With the partial indexes of migration 6 a
    //! query that does not name an index's predicate silently falls back
    //! to a walk of the whole table: this is what catches that.

    use super::kpis::{OPEN_KPIS_POSTGRES, OPEN_KPIS_SQLITE};
    use super::*;
    use crate::configuration_database::{
        listing::{bind_all, page_sql, Bind},
        Backend,
    };
    use sitelink_commons::{Kind, SiteName, TrackedOperationStatus as S};

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
            // VACUUM too: it sets the visibility map that an index-only
            // scan needs (autovacuum's work on a live database).
            sqlx::Executor::execute(db.pool(), "VACUUM ANALYZE site_calls")
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
        // On this small table PostgreSQL may also read the Parked/Failed
        // rows from the groups index (migration 11) and sort them: with
        // 100 parked rows that is the cheaper plan. (Whether it still
        // prefers a walk in creation order at 100,000 parked rows is for
        // `sitelink bench operator` to show, not a plan on toy data.)
        let either =
            "site_calls_by_status_created|site_calls_by_site_status_created|site_calls_groups";
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
            let filter = ListFilter {
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
        // The failure groups read their index alone (SQLite says
        // "COVERING"; PostgreSQL an index-only scan). With a site,
        // PostgreSQL may instead walk that site's Parked rows in
        // (site, status) order: as short, bounded by that site's own.
        let all = GroupFilter::default();
        let one_site = GroupFilter {
            status: Some(S::Parked),
            site: Some("s1".into()),
            kind: Some(Kind::ExternalCall),
        };
        let parked = GroupFilter {
            status: Some(S::Parked),
            ..Default::default()
        };
        for (filter, postgres) in [
            (all, "site_calls_groups"),
            (parked, "site_calls_groups"),
            (
                one_site,
                "site_calls_groups|site_calls_by_site_status_created",
            ),
        ] {
            let (sql, binds) = groups::groups_sql(Grouped::SiteCalls, &filter, db.backend());
            let shown = self::plan(db, &sql, binds).await;
            let index = match db.backend() {
                Backend::Sqlite => "site_calls_groups",
                Backend::Postgres => postgres,
            };
            assert!(
                index.split('|').any(|i| uses(&shown, i)),
                "{backend}: groups {filter:?}:\n{shown}"
            );
            if filter.site.is_none() {
                let covering = match db.backend() {
                    Backend::Sqlite => shown.contains("COVERING INDEX"),
                    Backend::Postgres => shown.contains("Index Only Scan"),
                };
                assert!(
                    covering,
                    "{backend}: groups {filter:?} read the table:\n{shown}"
                );
            }
        }
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
