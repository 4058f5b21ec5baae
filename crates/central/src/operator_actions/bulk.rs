//! Bulk Retry/Discard (issue 21): everything a filter matches, frozen at
//! confirmation, applied by the owning sites at a chosen pace, recorded in
//! the Configuration Database so that it survives restarts and failovers.
//!
//! - [`OperatorActions::bulk_preview`], [`OperatorActions::bulk_start`],
//!   [`OperatorActions::bulk_cancel`], [`OperatorActions::bulk_view`] and
//!   [`OperatorActions::bulk_list`]: what the REST API and the pages both
//!   call (the role check, the record, one audit-log entry per action).
//! - [`BulkRunner`]: the singleton of the active node that sends each
//!   running action's open ids to their sites, many per message
//!   (`BulkCommand`), within the action's pace, and records each id's
//!   outcome. It keeps no state the database does not have, except the
//!   pace's token buckets: after a restart or a failover an action goes on
//!   where its records stand, starting again with `at_once`.
//!
//! Invariants: an id is recorded once (see `bulk_actions`); the site
//! applies an action to a call at most once, so an id whose answer was
//! lost is simply sent again; ids of a site without a live stream wait
//! (shown as waiting for their site) until it reconnects or the action is
//! cancelled.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use sitelink_commons::contracts::v1;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::OperatorActions;
use crate::{
    configuration_database::{
        bulk_actions::{Counts, TYPED_CONFIRMATION_ABOVE},
        leader_lease::is_fenced,
        BulkAction, BulkState, BulkVerb, CreateError, Database, ItemOutcome, ItemResult,
        ListFilter, NewBulkAction, Pace, Preview, Role, User,
    },
    site_call_audit::SiteCallAudit,
};

/// Ids per `BulkCommand` message.
pub const IDS_PER_MESSAGE: usize = 1000;
/// Most ids one round sends to one site (then the next round goes on).
const IDS_PER_ROUND: u32 = 10_000;
/// How often the runner looks again when nothing wakes it (a site that
/// reconnected, an action started on another node).
const IDLE: Duration = Duration::from_secs(1);
/// Calls a preview shows.
pub const PREVIEW_ROWS: u32 = 10;

/// Why a bulk action was not started or cancelled.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("role {} may not start or cancel bulk actions", .0.as_str())]
    Forbidden(Role),
    /// The request cannot be carried out as asked (a 4xx naming why).
    #[error(transparent)]
    Refused(CreateError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A bulk action, as the pages and the REST API show it: the record and
/// where each site's part stands.
#[derive(Clone, Debug)]
pub struct BulkView {
    pub action: BulkAction,
    pub per_site: Vec<SiteProgress>,
    /// Open calls at sites without a live stream.
    pub waiting_for_site: u64,
}

/// One site's part of a bulk action.
#[derive(Clone, Debug, Default)]
pub struct SiteProgress {
    pub site: String,
    pub counts: Counts,
    pub online: bool,
}

impl OperatorActions {
    /// The parked calls `filter` matches: count per site and the first
    /// [`PREVIEW_ROWS`]. Records nothing (any role may look).
    pub async fn bulk_preview(&self, filter: &ListFilter) -> anyhow::Result<Preview> {
        Ok(self.db.bulk_actions().preview(filter, PREVIEW_ROWS).await?)
    }

    /// Starts a bulk action as `user`: freezes its set, records it, writes
    /// one audit-log entry and wakes the runner.
    pub async fn bulk_start(
        &self,
        user: &User,
        verb: BulkVerb,
        filter: ListFilter,
        pace: Option<Pace>,
        expect_count: Option<u64>,
    ) -> Result<BulkAction, BulkError> {
        let name = audit_name(verb);
        let described = filter.to_json().to_string();
        if !user.role.may_operate() {
            self.audit_entry(
                &user.name,
                name,
                &described,
                filter.site.as_deref(),
                "Forbidden",
            )
            .await?;
            return Err(BulkError::Forbidden(user.role));
        }
        let new = NewBulkAction {
            verb,
            operator: user.name.clone(),
            filter,
            pace,
            expect_count,
        };
        let action = match self.db.bulk_actions().create(&new).await {
            Ok(a) => a,
            Err(CreateError::Db(e)) => return Err(anyhow::Error::from(e).into()),
            Err(refused) => return Err(BulkError::Refused(refused)),
        };
        let pace = match pace {
            Some(p) => format!("{} at once, then {} a minute", p.at_once, p.per_minute),
            None => "unpaced".into(),
        };
        let outcome = format!(
            "started: {} parked calls, filter {described}, {pace}",
            action.total
        );
        self.audit_entry(
            &user.name,
            name,
            &action.id,
            new.filter.site.as_deref(),
            &outcome,
        )
        .await?;
        tracing::info!(user = %user.name, id = %action.id, calls = action.total, %described, "bulk action started");
        self.bulk_wake.notify_one();
        Ok(action)
    }

    /// Cancels a running bulk action as `user` (one audit-log entry).
    /// `None` when there is no such action; else the action as it stands
    /// and whether this cancelled it (false: it was not running).
    pub async fn bulk_cancel(
        &self,
        user: &User,
        id: &str,
    ) -> Result<Option<(BulkView, bool)>, BulkError> {
        if !user.role.may_operate() {
            self.audit_entry(&user.name, "bulk cancel", id, None, "Forbidden")
                .await?;
            return Err(BulkError::Forbidden(user.role));
        }
        let Some((action, stopped)) = self
            .db
            .bulk_actions()
            .cancel(id, &user.name)
            .await
            .map_err(anyhow::Error::from)?
        else {
            return Ok(None);
        };
        let outcome = if stopped {
            format!("cancelled: {} calls not sent", action.counts.cancelled)
        } else {
            format!("not running ({})", action.state.as_str())
        };
        self.audit_entry(&user.name, "bulk cancel", id, None, &outcome)
            .await?;
        Ok(Some((self.view(action).await?, stopped)))
    }

    /// One bulk action with its progress per site.
    pub async fn bulk_view(&self, id: &str) -> anyhow::Result<Option<BulkView>> {
        match self.db.bulk_actions().get(id).await? {
            Some(a) => Ok(Some(self.view(a).await?)),
            None => Ok(None),
        }
    }

    /// Bulk actions newest first (`before`: the last id of the previous
    /// page), each with its progress.
    pub async fn bulk_list(
        &self,
        before: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<BulkView>> {
        let actions = self.db.bulk_actions().list(before, limit).await?;
        let online: HashSet<String> = self.audit.online().await.into_iter().collect();
        let mut out = Vec::with_capacity(actions.len());
        for a in actions {
            // Only a running action has open calls that may wait.
            let waiting_for_site = if a.state == BulkState::Running {
                self.db
                    .bulk_actions()
                    .open_per_site(&a.id)
                    .await?
                    .into_iter()
                    .filter(|(site, _)| !online.contains(site))
                    .map(|(_, n)| n)
                    .sum()
            } else {
                0
            };
            out.push(BulkView {
                action: a,
                per_site: Vec::new(),
                waiting_for_site,
            });
        }
        Ok(out)
    }

    /// Whether the pages ask for the count to be typed before `count`
    /// calls are acted on.
    pub fn typed_confirmation(count: u64) -> bool {
        count > TYPED_CONFIRMATION_ABOVE
    }

    async fn view(&self, action: BulkAction) -> anyhow::Result<BulkView> {
        let online: HashSet<String> = self.audit.online().await.into_iter().collect();
        let mut sites: Vec<SiteProgress> = Vec::new();
        for (site, outcome, n) in self.db.bulk_actions().per_site(&action.id).await? {
            if sites.last().is_none_or(|s| s.site != site) {
                sites.push(SiteProgress {
                    online: online.contains(&site),
                    site: site.clone(),
                    counts: Counts::default(),
                });
            }
            let c = &mut sites.last_mut().expect("pushed above").counts;
            match outcome.as_deref() {
                None => c.open += n,
                Some("Applied") => c.applied += n,
                Some("NotParked") => c.not_parked += n,
                Some("NotFound") => c.not_found += n,
                Some("Cancelled") => c.cancelled += n,
                Some(_) => c.errors += n,
            }
        }
        let waiting_for_site = sites
            .iter()
            .filter(|s| !s.online)
            .map(|s| s.counts.open)
            .sum();
        Ok(BulkView {
            action,
            per_site: sites,
            waiting_for_site,
        })
    }

    async fn audit_entry(
        &self,
        user: &str,
        action: &str,
        target: &str,
        site: Option<&str>,
        outcome: &str,
    ) -> anyhow::Result<()> {
        self.db
            .audit_log()
            .record(user, action, target, site, outcome)
            .await?;
        Ok(())
    }
}

/// The audit log's name of a bulk action.
pub fn audit_name(verb: BulkVerb) -> &'static str {
    match verb {
        BulkVerb::Retry => "bulk retry",
        BulkVerb::Discard => "bulk discard",
    }
}

/// The pace of one running action: a token bucket that starts full with
/// `at_once` and refills `per_minute` a minute, holding at most `at_once`.
struct Bucket {
    pace: Pace,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(pace: Pace, now: Instant) -> Self {
        Self {
            pace,
            tokens: pace.at_once as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_second = self.pace.per_minute as f64 / 60.0;
        let capacity = self.pace.at_once.max(1) as f64;
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * per_second).min(capacity);
        self.at = now;
    }

    /// Whole calls that may go now.
    fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens.max(0.0).floor() as u32
    }

    /// How long until one more call may go.
    fn until_next(&self) -> Duration {
        let per_second = self.pace.per_minute as f64 / 60.0;
        let missing = (1.0 - self.tokens.fract()).max(0.0);
        Duration::from_secs_f64((missing / per_second).max(0.01))
    }
}

/// What one round of the runner did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Ids sent to sites.
    pub sent: u64,
    /// Ids whose outcome was recorded.
    pub recorded: u64,
    /// Actions that finished.
    pub finished: u64,
    /// When the next round has work (a pace's next call, more ids than
    /// one round sends); `None`: nothing until woken or [`IDLE`].
    pub next: Option<Duration>,
}

/// The singleton that carries out running bulk actions (see the module's
/// doc). Runs on the active node, on a database handle fenced to its term.
pub struct BulkRunner {
    db: Database,
    audit: SiteCallAudit,
    wake: Arc<Notify>,
    timeout: Duration,
    buckets: HashMap<String, Bucket>,
}

impl BulkRunner {
    pub fn new(db: Database, audit: SiteCallAudit, wake: Arc<Notify>, timeout: Duration) -> Self {
        Self {
            db,
            audit,
            wake,
            timeout,
            buckets: HashMap::new(),
        }
    }

    /// Runs rounds until `cancel` fires: at once when woken (an action was
    /// started here), when the pace allows the next call, or every
    /// [`IDLE`].
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let next = match self.run_once().await {
                Ok(round) => round.next.unwrap_or(IDLE).min(IDLE),
                Err(e) if e.downcast_ref::<sqlx::Error>().is_some_and(is_fenced) => {
                    tracing::info!("bulk runner: this node's term is over");
                    IDLE
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "bulk runner round failed");
                    IDLE
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
        tracing::info!("bulk runner stopped");
    }

    /// One round: for each running action, oldest first, sends what its
    /// pace allows of the open ids of each site with a live stream (many
    /// per message), waits for the answers and records them.
    pub async fn run_once(&mut self) -> anyhow::Result<RoundOutcome> {
        let actions = self.db.bulk_actions().running().await?;
        self.buckets
            .retain(|id, _| actions.iter().any(|a| &a.id == id));
        let online: HashSet<String> = self.audit.online().await.into_iter().collect();
        let now = Instant::now();
        let mut round = RoundOutcome::default();
        let mut parts = Vec::new();
        for action in &actions {
            let open = self.db.bulk_actions().open_per_site(&action.id).await?;
            if open.is_empty() {
                // Everything answered (a round that ended before marking it).
                round.finished += self.db.bulk_actions().record(&action.id, &[]).await? as u64;
                continue;
            }
            let mut budget = match action.pace {
                Some(pace) => {
                    let bucket = self
                        .buckets
                        .entry(action.id.clone())
                        .or_insert_with(|| Bucket::new(pace, now));
                    bucket.available(now)
                }
                None => u32::MAX,
            };
            for (site, n) in open.iter().filter(|(site, _)| online.contains(site)) {
                if budget == 0 {
                    break;
                }
                let take = budget.min(IDS_PER_ROUND).min(*n as u32);
                let ids = self
                    .db
                    .bulk_actions()
                    .next_ids(&action.id, site, take)
                    .await?;
                budget -= ids.len() as u32;
                if let Some(b) = self.buckets.get_mut(&action.id) {
                    b.tokens -= ids.len() as f64;
                }
                round.sent += ids.len() as u64;
                if *n > ids.len() as u64 && action.pace.is_none() {
                    round.next = Some(Duration::ZERO);
                }
                parts.push(Part {
                    action: action.id.clone(),
                    verb: action.verb,
                    site: site.clone(),
                    ids,
                });
            }
            if let Some(b) = self.buckets.get(&action.id) {
                if open.iter().any(|(site, _)| online.contains(site)) {
                    let next = b.until_next();
                    round.next = Some(round.next.map_or(next, |n| n.min(next)));
                }
            }
        }
        // Each site's part goes on its own (one slow site delays no other);
        // within a part the messages go one after the other.
        let results = futures::future::join_all(parts.into_iter().map(|p| self.send(p))).await;
        for r in results {
            let (recorded, unsent, finished) = r?;
            round.recorded += recorded;
            round.finished += finished as u64;
            if let Some((action, n)) = unsent {
                // Not applied: the pace gives those calls back.
                if let Some(b) = self.buckets.get_mut(&action) {
                    b.tokens += n as f64;
                }
            }
        }
        Ok(round)
    }

    /// Sends one site's part of an action, a message at a time, recording
    /// each answer. Returns the ids recorded, the ids not applied (their
    /// action, how many: the site was unreachable, the answer late or
    /// expired) and whether the action finished.
    async fn send(&self, part: Part) -> anyhow::Result<(u64, Option<(String, usize)>, bool)> {
        let mut recorded = 0;
        let mut unsent = 0;
        let mut finished = false;
        let verb = match part.verb {
            BulkVerb::Retry => v1::BulkVerb::Retry,
            BulkVerb::Discard => v1::BulkVerb::Discard,
        };
        let mut chunks = part.ids.chunks(IDS_PER_MESSAGE);
        for chunk in chunks.by_ref() {
            let message = v1::BulkCommand {
                bulk_action: part.action.clone(),
                verb: verb as i32,
                ids: chunk.to_vec(),
                expires_at_unix_ms: 0,
            };
            let answer = match self
                .audit
                .relay_bulk(&part.site, message, self.timeout)
                .await
            {
                Ok(answer) => answer,
                Err(outcome) => {
                    tracing::info!(site = %part.site, action = %part.action, outcome = outcome.name(), "bulk command not answered; its ids wait");
                    unsent += chunk.len();
                    break;
                }
            };
            let results = item_results(chunk, &answer);
            unsent += chunk.len() - results.len();
            recorded += results.len() as u64;
            finished |= self
                .db
                .bulk_actions()
                .record(&part.action, &results)
                .await?;
        }
        unsent += chunks.map(|c| c.len()).sum::<usize>();
        Ok((
            recorded,
            (unsent > 0).then(|| (part.action.clone(), unsent)),
            finished,
        ))
    }
}

/// One site's share of one action in a round.
struct Part {
    action: String,
    verb: BulkVerb,
    site: String,
    ids: Vec<String>,
}

/// The outcomes to record from a site's answer to `sent`: one per id it
/// answered, except those it did not apply for lack of time (`Expired`),
/// which stay open and go again.
fn item_results(sent: &[String], answer: &v1::BulkCommandResult) -> Vec<ItemResult> {
    let asked: HashSet<&str> = sent.iter().map(String::as_str).collect();
    answer
        .items
        .iter()
        .filter(|i| asked.contains(i.id.as_str()))
        .filter_map(|i| {
            let outcome = match v1::CommandOutcome::try_from(i.outcome) {
                Ok(v1::CommandOutcome::Applied) => ItemOutcome::Applied,
                Ok(v1::CommandOutcome::NotParked) => ItemOutcome::NotParked,
                Ok(v1::CommandOutcome::NotFound) => ItemOutcome::NotFound,
                Ok(v1::CommandOutcome::Expired) => return None,
                _ => ItemOutcome::Error,
            };
            Some(ItemResult {
                call_id: i.id.clone(),
                outcome,
                error: i.error.clone(),
                applied_at_ms: (outcome == ItemOutcome::Applied && i.applied_at_unix_ms > 0)
                    .then_some(i.applied_at_unix_ms),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_starts_with_at_once_and_refills_at_the_pace_up_to_at_once() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Pace::new(5, 60).unwrap(), t0);
        assert_eq!(b.available(t0), 5);
        b.tokens -= 5.0;
        assert_eq!(b.available(t0 + Duration::from_millis(999)), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(2_000)), 2);
        // Idle for an hour: still at most `at_once`.
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 5);
        b.tokens -= 5.0;
        let wait = b.until_next();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn expired_and_unasked_ids_are_not_recorded() {
        let item = |id: &str, outcome: v1::CommandOutcome| v1::BulkCommandItem {
            id: id.into(),
            outcome: outcome as i32,
            error: None,
            applied_at_unix_ms: 7,
        };
        let answer = v1::BulkCommandResult {
            bulk_action: "b".into(),
            items: vec![
                item("a", v1::CommandOutcome::Applied),
                item("b", v1::CommandOutcome::Expired),
                item("c", v1::CommandOutcome::NotParked),
                item("z", v1::CommandOutcome::Applied),
            ],
        };
        let sent = ["a", "b", "c"].map(String::from);
        let got: Vec<(String, ItemOutcome, Option<i64>)> = item_results(&sent, &answer)
            .into_iter()
            .map(|r| (r.call_id, r.outcome, r.applied_at_ms))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), ItemOutcome::Applied, Some(7)),
                ("c".to_owned(), ItemOutcome::NotParked, None),
            ]
        );
    }
}
