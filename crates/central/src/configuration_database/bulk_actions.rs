//! Bulk actions (issue 21): an operator's Retry or Discard of every parked
//! site call a filter matches, as a record that outlives the node that
//! started it.
//!
//! Main types: [`BulkActions`] (the repository), [`NewBulkAction`],
//! [`BulkAction`] (the record with its progress), [`Preview`] (what a
//! filter would take, recording nothing), [`ItemOutcome`] (how one call
//! ended), [`Pace`].
//!
//! Invariants:
//! - The set is frozen when the action is created: its ids are copied into
//!   `bulk_action_items` in the transaction that creates the action, from
//!   the listing's own filter (`listing::where_sql`) narrowed to `Parked`.
//!   A call that parks later is not in it.
//! - Every item ends with exactly one outcome: the first answer recorded
//!   wins (`WHERE outcome IS NULL`), except that a site's `Applied` replaces
//!   a `Cancelled` written while the ids were on their way (it did happen).
//!   The counters on the action's row change in the same transaction as
//!   its items, so they always equal the items' outcomes.
//! - The outcomes are written by the bulk runner of the active node only:
//!   [`BulkActions::record`] passes the leader fence.

use serde::Serialize;
use sitelink_commons::{TrackedOperationStatus, TrackingRecord};
use sqlx::Row;

use super::{
    listing::{bind_all, where_sql, ListFilter, Page},
    now_ms, Database,
};

/// Most calls one bulk action may take: a bound on its record and on the
/// work one action queues (narrow the filter, or start several).
pub const MAX_BULK_CALLS: u64 = 1_000_000;
/// Above this many calls, the pages ask the operator to type the count.
pub const TYPED_CONFIRMATION_ABOVE: u64 = 100;

/// What a bulk action does to each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkVerb {
    Retry,
    Discard,
}

impl BulkVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkVerb::Retry => "retry",
            BulkVerb::Discard => "discard",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "retry" => Ok(BulkVerb::Retry),
            "discard" => Ok(BulkVerb::Discard),
            other => Err(format!(
                "action must be retry or discard, got {:?}",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// Where a bulk action stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum BulkState {
    /// Ids are still to be sent (or wait for their site).
    Running,
    /// Every id has its outcome.
    Done,
    /// An operator cancelled it: the ids not yet applied stay as they are.
    Cancelled,
}

impl BulkState {
    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        match s {
            "Running" => Ok(BulkState::Running),
            "Done" => Ok(BulkState::Done),
            "Cancelled" => Ok(BulkState::Cancelled),
            other => Err(sqlx::Error::Decode(
                format!("unknown bulk action state {other:?}").into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BulkState::Running => "Running",
            BulkState::Done => "Done",
            BulkState::Cancelled => "Cancelled",
        }
    }
}

/// How fast a bulk action is applied: `at_once` calls at first, then
/// `per_minute` more each minute (a token bucket that holds at most
/// `at_once`), across all its sites together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Pace {
    pub at_once: u32,
    pub per_minute: u32,
}

impl Pace {
    /// Most of either number.
    pub const MAX: u32 = 1_000_000;

    pub fn new(at_once: u32, per_minute: u32) -> Result<Self, String> {
        for (name, v) in [("at_once", at_once), ("per_minute", per_minute)] {
            if !(1..=Self::MAX).contains(&v) {
                return Err(format!("pace.{name} must be 1 to {}, got {v}", Self::MAX));
            }
        }
        Ok(Self {
            at_once,
            per_minute,
        })
    }
}

/// How one call of a bulk action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// The site applied it (at the time it says).
    Applied,
    /// It was not parked any more when its turn came.
    NotParked,
    /// The site does not have it (purged).
    NotFound,
    /// The site could not apply it (its error is kept).
    Error,
    /// The action was cancelled before it was sent.
    Cancelled,
}

impl ItemOutcome {
    /// Every outcome, in the order of the variants.
    pub const ALL: [ItemOutcome; 5] = [
        ItemOutcome::Applied,
        ItemOutcome::NotParked,
        ItemOutcome::NotFound,
        ItemOutcome::Error,
        ItemOutcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Applied => "Applied",
            ItemOutcome::NotParked => "NotParked",
            ItemOutcome::NotFound => "NotFound",
            ItemOutcome::Error => "Error",
            ItemOutcome::Cancelled => "Cancelled",
        }
    }

    /// The counter column on `bulk_actions`.
    fn column(self) -> &'static str {
        match self {
            ItemOutcome::Applied => "applied",
            ItemOutcome::NotParked => "not_parked",
            ItemOutcome::NotFound => "not_found",
            ItemOutcome::Error => "errors",
            ItemOutcome::Cancelled => "cancelled",
        }
    }
}

/// One call's answer, as the bulk runner records it.
#[derive(Clone, Debug)]
pub struct ItemResult {
    pub call_id: String,
    pub outcome: ItemOutcome,
    pub error: Option<String>,
    /// When the site applied it (its clock), if it did.
    pub applied_at_ms: Option<i64>,
}

/// A bulk action to create.
#[derive(Clone, Debug)]
pub struct NewBulkAction {
    pub verb: BulkVerb,
    pub operator: String,
    pub filter: ListFilter,
    pub pace: Option<Pace>,
    /// The count the operator confirmed: the action is created only if
    /// the frozen set has exactly this many calls.
    pub expect_count: Option<u64>,
}

/// Why a bulk action was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("no parked site call matches this filter: nothing to {0}")]
    Empty(&'static str),
    #[error("the filter matches {now} parked calls now, not the {expected} confirmed: look at the preview again")]
    CountChanged { expected: u64, now: u64 },
    #[error("the filter matches {count} parked calls, more than {MAX_BULK_CALLS} one bulk action takes: narrow it")]
    TooMany { count: u64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What a filter would take, recording nothing.
#[derive(Clone, Debug)]
pub struct Preview {
    pub count: u64,
    /// (site, count), by site name.
    pub per_site: Vec<(String, u64)>,
    /// The first calls of the set, newest first (the listing's order).
    pub first: Vec<TrackingRecord>,
}

/// Counts of a bulk action's calls by outcome (`open`: none yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub applied: u64,
    pub not_parked: u64,
    pub not_found: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub open: u64,
}

/// A bulk action as recorded.
#[derive(Clone, Debug)]
pub struct BulkAction {
    pub id: String,
    pub verb: BulkVerb,
    pub operator: String,
    pub created_at_ms: i64,
    pub filter: serde_json::Value,
    pub total: u64,
    pub pace: Option<Pace>,
    pub state: BulkState,
    pub finished_at_ms: Option<i64>,
    pub cancelled_by: Option<String>,
    pub counts: Counts,
}

/// One bulk action that touched a call, for its detail page.
#[derive(Clone, Debug)]
pub struct CallBulkAction {
    pub action: BulkAction,
    /// The call's outcome in it (`None`: not yet).
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub applied_at_ms: Option<i64>,
}

const COLUMNS: &str = "id, verb, operator, created_at_ms, filter, total, pace_at_once, \
     pace_per_minute, state, finished_at_ms, cancelled_by, applied, not_parked, not_found, errors, \
     cancelled";

/// The set a bulk action takes from `f`: its parked calls (`None` when
/// `f` asks only for other statuses: the set is empty).
pub fn parked_only(f: &ListFilter) -> Option<ListFilter> {
    let parked = TrackedOperationStatus::Parked;
    if !f.statuses.is_empty() && !f.statuses.contains(&parked) {
        return None;
    }
    Some(ListFilter {
        statuses: vec![parked],
        ..f.clone()
    })
}

pub struct BulkActions<'a> {
    db: &'a Database,
}

impl<'a> BulkActions<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    /// The parked calls `f` matches: the count per site and the first
    /// `first` of them. The same set [`Self::create`] would freeze now.
    pub async fn preview(&self, f: &ListFilter, first: u32) -> Result<Preview, sqlx::Error> {
        let Some(f) = parked_only(f) else {
            return Ok(Preview {
                count: 0,
                per_site: Vec::new(),
                first: Vec::new(),
            });
        };
        let (clause, binds) = where_sql("target_summary", &f);
        let rows = bind_all(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT source_site, COUNT(*) FROM site_calls{clause} \
                 GROUP BY source_site ORDER BY source_site"
            ))),
            binds,
        )
        .fetch_all(self.db.pool())
        .await?;
        let per_site = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u64)))
            .collect::<Result<Vec<(String, u64)>, sqlx::Error>>()?;
        let first = if first == 0 {
            Vec::new()
        } else {
            self.db
                .site_calls()
                .list_page(&f, &Page::First, first)
                .await?
                .items
        };
        Ok(Preview {
            count: per_site.iter().map(|(_, n)| n).sum(),
            per_site,
            first,
        })
    }

    /// Creates a bulk action, freezing its set: the parked calls its
    /// filter matches now, in the same transaction.
    pub async fn create(&self, new: &NewBulkAction) -> Result<BulkAction, CreateError> {
        let Some(f) = parked_only(&new.filter) else {
            return Err(CreateError::Empty(new.verb.as_str()));
        };
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO bulk_actions (id, verb, operator, created_at_ms, filter, total,
                 pace_at_once, pace_per_minute, state, applied, not_parked, not_found, errors,
                 cancelled)
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7, 'Running', 0, 0, 0, 0, 0)",
        )
        .bind(&id)
        .bind(new.verb.as_str())
        .bind(&new.operator)
        .bind(now)
        .bind(new.filter.to_json().to_string())
        .bind(new.pace.map(|p| p.at_once as i64))
        .bind(new.pace.map(|p| p.per_minute as i64))
        .execute(&mut *tx)
        .await?;
        // The filter's values are bound as $1…; the action's id, a UUID
        // this function just made (hex digits and hyphens), is written
        // into the text.
        let (clause, binds) = where_sql("target_summary", &f);
        let frozen = bind_all(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO bulk_action_items (action_id, call_id, source_site)
                 SELECT '{id}', id, source_site FROM site_calls{clause}"
            ))),
            binds,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if frozen == 0 {
            return Err(CreateError::Empty(new.verb.as_str()));
        }
        if frozen > MAX_BULK_CALLS {
            return Err(CreateError::TooMany { count: frozen });
        }
        if let Some(expected) = new.expect_count.filter(|e| *e != frozen) {
            return Err(CreateError::CountChanged {
                expected,
                now: frozen,
            });
        }
        sqlx::query("UPDATE bulk_actions SET total = $1 WHERE id = $2")
            .bind(frozen as i64)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(self.get(&id).await?.expect("created above"))
    }

    pub async fn get(&self, id: &str) -> Result<Option<BulkAction>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM bulk_actions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(action).transpose()
    }

    /// Newest first; `before`: the id of the last action of the previous
    /// page.
    pub async fn list(
        &self,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BulkAction>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM bulk_actions WHERE ($1 IS NULL OR id < $1)
             ORDER BY id DESC LIMIT $2"
        )))
        .bind(before)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(action).collect()
    }

    /// The actions still running, oldest first.
    pub async fn running(&self) -> Result<Vec<BulkAction>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM bulk_actions WHERE state = 'Running' ORDER BY id"
        )))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(action).collect()
    }

    /// The calls of `id` without an outcome yet, counted per site.
    pub async fn open_per_site(&self, id: &str) -> Result<Vec<(String, u64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT source_site, COUNT(*) FROM bulk_action_items
             WHERE action_id = $1 AND outcome IS NULL GROUP BY source_site ORDER BY source_site",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u64)))
            .collect()
    }

    /// Every call of `id` counted per site and outcome (`None`: open), for
    /// its detail page.
    pub async fn per_site(
        &self,
        id: &str,
    ) -> Result<Vec<(String, Option<String>, u64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT source_site, outcome, COUNT(*) FROM bulk_action_items
             WHERE action_id = $1 GROUP BY source_site, outcome ORDER BY source_site",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)? as u64)))
            .collect()
    }

    /// The next `n` open calls of `id` at `site`, oldest first (ids are
    /// UUID v7).
    pub async fn next_ids(&self, id: &str, site: &str, n: u32) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT call_id FROM bulk_action_items
             WHERE action_id = $1 AND source_site = $2 AND outcome IS NULL
             ORDER BY call_id LIMIT $3",
        )
        .bind(id)
        .bind(site)
        .bind(n as i64)
        .fetch_all(self.db.pool())
        .await
    }

    /// Records the sites' answers for calls of `id` (see the module's
    /// invariants), and marks the action Done once nothing is open.
    /// Passes the leader fence. Returns whether the action is done.
    pub async fn record(&self, id: &str, results: &[ItemResult]) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        self.db.fence(&mut tx).await?;
        let now = now_ms();
        // Calls newly decided, per outcome (in `ItemOutcome::ALL` order).
        // One statement per outcome and chunk of ids, not one per id: on
        // PostgreSQL a statement per id made recording 10,000 answers take
        // about 20 s (bench operator).
        let mut added = [0u64; ItemOutcome::ALL.len()];
        let mut uncancelled = 0;
        for outcome in ItemOutcome::ALL {
            let mine: Vec<&ItemResult> = results.iter().filter(|r| r.outcome == outcome).collect();
            for chunk in mine.chunks(RECORD_CHUNK) {
                let n = set_outcomes(&mut tx, id, outcome, chunk, now, "IS NULL").await?;
                added[outcome as usize] += n;
                if outcome == ItemOutcome::Applied && n < chunk.len() as u64 {
                    // Cancelled while they were on their way, and applied
                    // anyway.
                    let m = set_outcomes(&mut tx, id, outcome, chunk, now, "= 'Cancelled'").await?;
                    added[outcome as usize] += m;
                    uncancelled += m;
                }
            }
        }
        let mut sets: Vec<String> = ItemOutcome::ALL
            .iter()
            .zip(added)
            .filter(|(_, n)| *n > 0)
            .map(|(o, n)| format!("{c} = {c} + {n}", c = o.column()))
            .collect();
        if uncancelled > 0 {
            sets.push(format!("cancelled = cancelled - {uncancelled}"));
        }
        if !sets.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE bulk_actions SET {} WHERE id = $1",
                sets.join(", ")
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "UPDATE bulk_actions SET state = 'Done', finished_at_ms = $2
             WHERE id = $1 AND state = 'Running'
               AND applied + not_parked + not_found + errors + cancelled >= total",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        tx.commit().await?;
        Ok(done)
    }

    /// Cancels a running action: its open calls are marked Cancelled (ids
    /// already on their way may still be applied; their answers say so).
    /// `None` when no action has this id; else the action as it stands now
    /// and whether this call stopped it (false: it was not running).
    pub async fn cancel(
        &self,
        id: &str,
        by: &str,
    ) -> Result<Option<(BulkAction, bool)>, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        let now = now_ms();
        let stopped = sqlx::query(
            "UPDATE bulk_actions SET state = 'Cancelled', cancelled_by = $2, finished_at_ms = $3
             WHERE id = $1 AND state = 'Running'",
        )
        .bind(id)
        .bind(by)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stopped > 0 {
            let n = sqlx::query(
                "UPDATE bulk_action_items SET outcome = 'Cancelled', decided_at_ms = $2
                 WHERE action_id = $1 AND outcome IS NULL",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("UPDATE bulk_actions SET cancelled = cancelled + $2 WHERE id = $1")
                .bind(id)
                .bind(n as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(self.get(id).await?.map(|a| (a, stopped > 0)))
    }

    /// A site's replay on recovery (`replay_parked_on_recovery`) as a bulk
    /// Retry whose operator is `site:<site>`, named `recovery_id` (so a
    /// recovery sent again starts nothing twice), over the ids the site
    /// sent that central knows of that site. `None` when it exists already
    /// or no id is known.
    pub async fn create_replay(
        &self,
        site: &str,
        recovery_id: &str,
        target: &str,
        pace: Pace,
        ids: &[String],
    ) -> Result<Option<BulkAction>, sqlx::Error> {
        if self.get(recovery_id).await?.is_some() {
            return Ok(None);
        }
        let mut tx = self.db.pool().begin().await?;
        let filter = serde_json::json!({
            "site": site,
            "status": ["Parked"],
            "recovered_target": target,
        });
        let inserted = sqlx::query(
            "INSERT INTO bulk_actions (id, verb, operator, created_at_ms, filter, total,
                 pace_at_once, pace_per_minute, state, applied, not_parked, not_found, errors,
                 cancelled)
             VALUES ($1, 'retry', $2, $3, $4, 0, $5, $6, 'Running', 0, 0, 0, 0, 0)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(recovery_id)
        .bind(format!("site:{site}"))
        .bind(now_ms())
        .bind(filter.to_string())
        .bind(pace.at_once as i64)
        .bind(pace.per_minute as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let mut frozen = 0;
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO bulk_action_items (action_id, call_id, source_site)
                 SELECT $1, id, source_site FROM site_calls
                 WHERE source_site = $2 AND id IN ({})",
                marks.join(", ")
            )))
            .bind(recovery_id)
            .bind(site);
            for id in chunk {
                q = q.bind(id);
            }
            frozen += q.execute(&mut *tx).await?.rows_affected();
        }
        if frozen == 0 {
            return Ok(None);
        }
        sqlx::query("UPDATE bulk_actions SET total = $1 WHERE id = $2")
            .bind(frozen as i64)
            .bind(recovery_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get(recovery_id).await
    }

    /// The bulk actions that took `call_id`, newest first.
    pub async fn for_call(&self, call_id: &str) -> Result<Vec<CallBulkAction>, sqlx::Error> {
        let cols: Vec<String> = COLUMNS.split(", ").map(|c| format!("a.{c}")).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {}, i.outcome, i.error, i.applied_at_ms
             FROM bulk_action_items i JOIN bulk_actions a ON a.id = i.action_id
             WHERE i.call_id = $1 ORDER BY a.id DESC LIMIT 50",
            cols.join(", ")
        )))
        .bind(call_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CallBulkAction {
                    action: action(r)?,
                    outcome: r.try_get(16)?,
                    error: r.try_get(17)?,
                    applied_at_ms: r.try_get(18)?,
                })
            })
            .collect()
    }

    /// When the site applied each call of `id` it applied (its clock), in
    /// that order: what the pace is checked against.
    pub async fn applied_times(&self, id: &str) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT applied_at_ms FROM bulk_action_items
             WHERE action_id = $1 AND outcome = 'Applied' AND applied_at_ms IS NOT NULL
             ORDER BY applied_at_ms",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await
    }
}

/// Answers one statement records at most (4 values each).
const RECORD_CHUNK: usize = 200;

/// Sets `outcome` (with each call's error and applied time) on the calls of
/// `chunk` of action `id` whose outcome `IS NULL` (or `= 'Cancelled'`, as
/// `current` says); how many it changed.
async fn set_outcomes(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    outcome: ItemOutcome,
    chunk: &[&ItemResult],
    now: i64,
    current: &str,
) -> Result<u64, sqlx::Error> {
    // `(VALUES …) AS v` names its columns column1… on both backends.
    let rows: Vec<String> = (0..chunk.len())
        .map(|i| format!("(${}, ${}, ${})", 4 + 3 * i, 5 + 3 * i, 6 + 3 * i))
        .collect();
    let sql = format!(
        "UPDATE bulk_action_items SET outcome = $1, error = v.column2,
             applied_at_ms = v.column3, decided_at_ms = $2
         FROM (VALUES {}) AS v
         WHERE bulk_action_items.action_id = $3 AND bulk_action_items.call_id = v.column1
           AND bulk_action_items.outcome {current}",
        rows.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(outcome.as_str())
        .bind(now)
        .bind(id);
    for r in chunk {
        q = q
            .bind(r.call_id.clone())
            .bind(r.error.clone())
            .bind(r.applied_at_ms);
    }
    Ok(q.execute(&mut **tx).await?.rows_affected())
}

fn action(r: &sqlx::any::AnyRow) -> Result<BulkAction, sqlx::Error> {
    let decode = |e: String| sqlx::Error::Decode(e.into());
    let verb: String = r.try_get(1)?;
    let filter: String = r.try_get(4)?;
    let total = r.try_get::<i64, _>(5)? as u64;
    let at_once: Option<i64> = r.try_get(6)?;
    let per_minute: Option<i64> = r.try_get(7)?;
    let state: String = r.try_get(8)?;
    let n = |i: usize| -> Result<u64, sqlx::Error> { Ok(r.try_get::<i64, _>(i)?.max(0) as u64) };
    let mut counts = Counts {
        applied: n(11)?,
        not_parked: n(12)?,
        not_found: n(13)?,
        errors: n(14)?,
        cancelled: n(15)?,
        open: 0,
    };
    counts.open = total.saturating_sub(
        counts.applied + counts.not_parked + counts.not_found + counts.errors + counts.cancelled,
    );
    Ok(BulkAction {
        id: r.try_get(0)?,
        verb: BulkVerb::parse(&verb).map_err(decode)?,
        operator: r.try_get(2)?,
        created_at_ms: r.try_get(3)?,
        filter: serde_json::from_str(&filter).map_err(|e| decode(e.to_string()))?,
        total,
        pace: match (at_once, per_minute) {
            (Some(a), Some(p)) => Some(Pace {
                at_once: a as u32,
                per_minute: p as u32,
            }),
            _ => None,
        },
        state: BulkState::parse(&state)?,
        finished_at_ms: r.try_get(9)?,
        cancelled_by: r.try_get(10)?,
        counts,
    })
}
