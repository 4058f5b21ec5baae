//! The Configuration Database on SQLite and (when
//! `SITELINK_TEST_POSTGRES_URL` is set) PostgreSQL, with the same tests:
//! sites and tokens, the ingest rule under duplication and reordering (a
//! property test), cursor advance over complete ranges only, bad input.

use crate::common;

use common::{cleanup, databases};
use proptest::prelude::*;
use sitelink_central::configuration_database::{Kpis, LAST_ERROR_MAX_CHARS};
use sitelink_commons::{
    lifecycle::check_transition, unix_ms_to_utc, utc_to_unix_ms, Kind, SiteName,
    TrackedOperationId, TrackedOperationStatus, TrackedOperationStatus::*, TrackingRecord,
};

fn record(
    site: &str,
    id: TrackedOperationId,
    status: TrackedOperationStatus,
    revision: u64,
) -> TrackingRecord {
    TrackingRecord {
        tracked_operation_id: id,
        source_site: site.into(),
        kind: Kind::ExternalCall,
        target_summary: "erp.postOrder".into(),
        status,
        retry_count: revision as u32 - 1,
        last_error: (status != Delivered).then(|| format!("error at revision {revision}")),
        provenance: "line1/orders".into(),
        created_at_utc: unix_ms_to_utc(1_700_000_000_000),
        updated_at_utc: unix_ms_to_utc(1_700_000_000_000 + revision as i64),
        terminal_at_utc: status
            .is_terminal()
            .then(|| unix_ms_to_utc(1_700_000_000_000 + revision as i64)),
        revision,
        change_seq: 0,
    }
}

#[tokio::test]
async fn sites_tokens_and_revocation() {
    for (label, db, pg, _dir) in databases().await {
        let sites = db.sites();
        let name = SiteName::parse("plant-1").unwrap();
        let token = sites.add(&name).await.unwrap();
        assert!(token.as_str().starts_with("slk1.plant-1."), "{label}");
        let again = sites.add(&name).await.unwrap_err();
        assert!(
            again.to_string().contains("already exists"),
            "{label}: {again}"
        );
        assert_eq!(
            sites.authenticate(token.as_str()).await.unwrap(),
            Some(name.clone()),
            "{label}"
        );
        for wrong in [
            "",
            "garbage",
            "slk1.plant-1.wrong",
            &token.as_str().replace("plant-1", "plant-2"),
        ] {
            assert_eq!(
                sites.authenticate(wrong).await.unwrap(),
                None,
                "{label}: {wrong}"
            );
        }
        // The token is stored hashed, never in clear.
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM sites")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert!(
            !stored.contains(token.as_str()) && stored.len() == 64,
            "{label}"
        );
        sites.revoke("plant-1").await.unwrap();
        assert_eq!(
            sites.authenticate(token.as_str()).await.unwrap(),
            None,
            "{label}: revoked"
        );
        assert!(sites
            .revoke("nope")
            .await
            .unwrap_err()
            .to_string()
            .contains("no site nope"));
        let list = sites.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].revoked);
        cleanup(pg, db).await;
    }
}

#[tokio::test]
async fn cursor_advances_only_over_complete_ranges() {
    for (label, db, pg, _dir) in databases().await {
        let site = SiteName::parse("s1").unwrap();
        db.sites().add(&site).await.unwrap();
        let calls = db.site_calls();
        let r = |rev| record("s1", TrackedOperationId::new(), Pending, rev);
        let o = calls.ingest(&site, &[r(1)], Some((0, 5))).await.unwrap();
        assert_eq!((o.cursor, o.cursor_advanced), (5, true), "{label}");
        // After a gap: applied, cursor stays.
        let o = calls.ingest(&site, &[r(1)], Some((7, 9))).await.unwrap();
        assert_eq!(
            (o.applied, o.cursor, o.cursor_advanced),
            (1, 5, false),
            "{label}"
        );
        // The gap filled (a reconcile page): advances.
        let o = calls.ingest(&site, &[r(1)], Some((5, 7))).await.unwrap();
        assert_eq!(o.cursor, 7, "{label}");
        let o = calls.ingest(&site, &[], Some((7, 9))).await.unwrap();
        assert_eq!(o.cursor, 9, "{label}");
        // An old range never moves it back.
        let o = calls.ingest(&site, &[], Some((0, 3))).await.unwrap();
        assert_eq!((o.cursor, o.cursor_advanced), (9, false), "{label}");
        cleanup(pg, db).await;
    }
}

#[tokio::test]
async fn bad_rows_are_rejected_or_made_safe_and_the_rest_lands() {
    for (label, db, pg, _dir) in databases().await {
        let site = SiteName::parse("s1").unwrap();
        db.sites().add(&site).await.unwrap();
        let good = record("s1", TrackedOperationId::new(), Parked, 3);
        let other_site = record("s2", TrackedOperationId::new(), Pending, 1);
        let mut notification = record("s1", TrackedOperationId::new(), Pending, 1);
        notification.kind = Kind::Notification;
        let mut huge = record("s1", TrackedOperationId::new(), Retrying, 2);
        huge.last_error = Some(format!(
            "'; DROP TABLE site_calls; -- {}",
            "é".repeat(1_000_000)
        ));
        let o = db
            .site_calls()
            .ingest(
                &site,
                &[good.clone(), other_site, notification, huge.clone()],
                None,
            )
            .await
            .unwrap();
        assert_eq!(o.applied, 2, "{label}");
        assert_eq!(o.rejected.len(), 2, "{label}");
        assert!(
            o.rejected
                .iter()
                .any(|(_, why)| why.contains("for site \"s2\"")),
            "{label}: {:?}",
            o.rejected
        );
        assert_eq!(
            db.site_calls()
                .get(good.tracked_operation_id)
                .await
                .unwrap()
                .unwrap(),
            good,
            "{label}"
        );
        let stored = db
            .site_calls()
            .get(huge.tracked_operation_id)
            .await
            .unwrap()
            .unwrap();
        let err = stored.last_error.unwrap();
        assert!(
            err.starts_with("'; DROP TABLE site_calls; -- éé"),
            "{label}"
        );
        assert!(err.ends_with("…[truncated]"), "{label}");
        assert_eq!(
            err.chars().count(),
            LAST_ERROR_MAX_CHARS + "…[truncated]".chars().count(),
            "{label}"
        );
        cleanup(pg, db).await;
    }
}

/// A random valid lifecycle: statuses of revisions 1..=n.
fn lifecycle() -> impl Strategy<Value = Vec<TrackedOperationStatus>> {
    proptest::collection::vec(0u8..6, 0..6).prop_map(|choices| {
        let mut out = vec![Pending];
        for c in choices {
            let last = *out.last().unwrap();
            let next = [Retrying, Delivered, Parked, Failed, Discarded, Retrying][c as usize];
            if check_transition(Some(last), next).is_ok() {
                out.push(next);
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Any interleaving, with duplicates and reordering, of the telemetry of
    /// many lifecycles gives exactly the state of in-order delivery.
    #[test]
    fn ingest_converges_under_duplicates_and_reordering(
        lifecycles in proptest::collection::vec(lifecycle(), 1..25),
        order in any::<proptest::sample::Index>(),
        dup_seed in any::<u64>(),
        batch_size in 1usize..20,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            for (label, db, pg, _dir) in databases().await {
                let site = SiteName::parse("p").unwrap();
                db.sites().add(&site).await.unwrap();
                let mut messages = Vec::new();
                let mut expected = Vec::new();
                for statuses in &lifecycles {
                    let id = TrackedOperationId::new();
                    for (i, s) in statuses.iter().enumerate() {
                        messages.push(record("p", id, *s, i as u64 + 1));
                    }
                    expected.push(messages.last().unwrap().clone());
                }
                // Duplicate some messages, then shuffle deterministically.
                let mut rng = dup_seed;
                let n = messages.len();
                for i in 0..n {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if rng >> 62 == 0 { messages.push(messages[i].clone()); }
                }
                let len = messages.len();
                let start = order.index(len);
                messages.rotate_left(start);
                for i in (1..messages.len()).rev() {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    messages.swap(i, (rng >> 33) as usize % (i + 1));
                }
                for batch in messages.chunks(batch_size) {
                    db.site_calls().ingest(&site, batch, None).await.unwrap();
                }
                let mut got = db.site_calls().all_for_site("p").await.unwrap();
                expected.sort_by_key(|r| r.tracked_operation_id);
                got.sort_by_key(|r| r.tracked_operation_id);
                prop_assert_eq!(got, expected, "{}", label);
                cleanup(pg, db).await;
            }
            Ok(())
        })?;
    }
}

/// The KPIs of SPEC §5.2 computed the slow, obvious way from every row.
fn kpis_by_scan(
    rows: &[TrackingRecord],
    now_ms: i64,
    interval_s: i64,
    stuck_s: i64,
) -> std::collections::BTreeMap<String, Kpis> {
    let mut out = std::collections::BTreeMap::<String, Kpis>::new();
    for r in rows {
        let created = utc_to_unix_ms(r.created_at_utc);
        let terminal = r.terminal_at_utc.map(utc_to_unix_ms);
        let recent = terminal.is_some_and(|t| t >= now_ms - interval_s * 1000);
        if r.status.is_terminal() && !recent {
            continue;
        }
        let k = out.entry(r.source_site.clone()).or_insert_with(|| Kpis {
            interval_seconds: interval_s,
            stuck_threshold_seconds: stuck_s,
            ..Default::default()
        });
        match r.status {
            Pending | Retrying => {
                k.buffered += 1;
                let age = ((now_ms - created) / 1000).max(0);
                k.oldest_pending_age_seconds =
                    Some(k.oldest_pending_age_seconds.unwrap_or(0).max(age));
                if created < now_ms - stuck_s * 1000 {
                    k.stuck += 1;
                }
            }
            Parked => k.parked += 1,
            Delivered => k.delivered_last_interval += 1,
            Failed => k.failed_last_interval += 1,
            Discarded => {}
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    /// The KPIs (maintained open-call counters, folded at random moments,
    /// plus index seeks) equal a scan of every row, through inserts,
    /// transitions, out-of-order telemetry and a retention purge.
    #[test]
    fn kpis_equal_a_scan_of_every_row(
        calls in proptest::collection::vec((lifecycle(), 0usize..3, 0i64..1200, any::<bool>()), 1..40),
        seed in any::<u64>(),
        batch_size in 1usize..15,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            for (label, db, pg, _dir) in databases().await {
                let now = 1_700_000_000_000i64;
                let mut messages = Vec::new();
                for (statuses, site, age_s, old) in &calls {
                    let site = format!("k{site}");
                    let id = TrackedOperationId::new();
                    // Created `age_s` ago; terminal a year ago or just now.
                    let created = now - age_s * 1000 - if *old { 400 * 86_400_000 } else { 0 };
                    for (i, s) in statuses.iter().enumerate() {
                        let mut r = record(&site, id, *s, i as u64 + 1);
                        r.created_at_utc = unix_ms_to_utc(created);
                        r.terminal_at_utc = s.is_terminal().then(|| unix_ms_to_utc(created + 1000));
                        messages.push(r);
                    }
                }
                let mut rng = seed | 1;
                let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
                for i in (1..messages.len()).rev() {
                    let j = next() as usize % (i + 1);
                    messages.swap(i, j);
                }
                for s in ["k0", "k1", "k2"] {
                    db.sites().add(&SiteName::parse(s).unwrap()).await.unwrap();
                }
                let mut by_site: std::collections::BTreeMap<String, Vec<TrackingRecord>> = Default::default();
                for m in messages { by_site.entry(m.source_site.clone()).or_default().push(m); }
                for (site, msgs) in &by_site {
                    let site = SiteName::parse(site).unwrap();
                    for batch in msgs.chunks(batch_size) {
                        db.site_calls().ingest(&site, batch, None).await.unwrap();
                        if next() % 3 == 0 {
                            db.site_calls().fold_open_counts().await.unwrap();
                        }
                    }
                }
                // A purge of old terminal rows leaves the open counts alone.
                sitelink_central::site_call_audit::RetentionPurge::new(db.clone(), 365)
                    .run_once(now).await.unwrap();
                if next() % 2 == 0 {
                    db.site_calls().fold_open_counts().await.unwrap();
                }
                let mut all = Vec::new();
                for s in ["k0", "k1", "k2"] {
                    all.extend(db.site_calls().all_for_site(s).await.unwrap());
                }
                for (interval, stuck) in [(3600, 600), (60, 0), (86_400, 86_400)] {
                    let got = db.site_calls().kpis_per_site(now, interval, stuck).await.unwrap();
                    prop_assert_eq!(&got, &kpis_by_scan(&all, now, interval, stuck), "{} {} {}", label, interval, stuck);
                }
                cleanup(pg, db).await;
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn retention_purge_takes_only_old_terminal_rows() {
    use sitelink_central::site_call_audit::RetentionPurge;
    for (label, db, pg, _dir) in databases().await {
        let site = SiteName::parse("s1").unwrap();
        db.sites().add(&site).await.unwrap();
        // All rows are from 2023; "now" below is far later.
        let old_delivered = record("s1", TrackedOperationId::new(), Delivered, 2);
        let old_parked = record("s1", TrackedOperationId::new(), Parked, 2);
        let old_pending = record("s1", TrackedOperationId::new(), Pending, 1);
        let old_discarded = record("s1", TrackedOperationId::new(), Discarded, 3);
        let rows = [
            old_delivered.clone(),
            old_parked.clone(),
            old_pending.clone(),
            old_discarded.clone(),
        ];
        db.site_calls().ingest(&site, &rows, None).await.unwrap();
        let purge = RetentionPurge::new(db.clone(), 365);
        let terminal_ms = 1_700_000_000_000i64;
        assert_eq!(
            purge
                .run_once(terminal_ms + 364 * 86_400_000)
                .await
                .unwrap()
                .site_calls,
            0,
            "{label}: inside the window"
        );
        assert_eq!(
            purge
                .run_once(terminal_ms + 366 * 86_400_000)
                .await
                .unwrap()
                .site_calls,
            2,
            "{label}"
        );
        let left: Vec<_> = db
            .site_calls()
            .all_for_site("s1")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(left.len(), 2, "{label}");
        assert!(
            left.contains(&Parked) && left.contains(&Pending),
            "{label}: {left:?}"
        );
        cleanup(pg, db).await;
    }
}

/// Issue 23: relay requests whose waiter died and web sessions idle past
/// their timeout were never deleted without a login; the retention purge
/// takes both, and only those.
#[tokio::test]
async fn the_retention_purge_takes_relay_leftovers_and_idle_sessions() {
    use sitelink_central::configuration_database::{PasswordHash, Role, RELAY_REQUEST_KEPT};
    use sitelink_central::site_call_audit::RetentionPurge;
    let now = sitelink_commons::now_unix_ms();
    for (label, db, pg, _dir) in databases().await {
        // Forwarded relays exist only in a cluster (PostgreSQL).
        let cluster = label.contains("postgres");
        let kept = RELAY_REQUEST_KEPT.as_millis() as i64;
        let relays = if cluster {
            vec![("old", kept + 60_000), ("fresh", 5_000)]
        } else {
            vec![]
        };
        for (id, age) in relays {
            sqlx::query(
                "INSERT INTO relay_requests (id, by_user, site, tracked_id, command, created_at_ms, claimed_by)
                 VALUES ($1, 'ops', 's1', 'x', 'retry', $2, 'node-a')",
            )
            .bind(id)
            .bind(now - age)
            .execute(db.pool())
            .await
            .unwrap();
        }
        let hash =
            PasswordHash::from_phc("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into());
        db.users()
            .add("ops", &hash, Role::Deployment)
            .await
            .unwrap();
        let (idle, _) = db.ui_sessions().open("ops").await.unwrap();
        let (active, _) = db.ui_sessions().open("ops").await.unwrap();
        let hour = std::time::Duration::from_secs(3600);
        // The first session was last used two hours ago.
        sqlx::query("UPDATE ui_sessions SET last_seen_at_ms = $1 WHERE secret_hash = (SELECT secret_hash FROM ui_sessions ORDER BY last_seen_at_ms LIMIT 1)")
            .bind(now - 2 * 3_600_000)
            .execute(db.pool())
            .await
            .unwrap();
        let purged = RetentionPurge::new(db.clone(), 365)
            .with_ui_idle(hour)
            .run_once(now)
            .await
            .unwrap();
        assert_eq!(purged.relay_requests, u64::from(cluster), "{label}");
        assert_eq!(purged.ui_sessions, 1, "{label}");
        if cluster {
            let left: Vec<String> = sqlx::query_scalar("SELECT id FROM relay_requests")
                .fetch_all(db.pool())
                .await
                .unwrap();
            assert_eq!(left, ["fresh"], "{label}");
        }
        let ms = hour.as_millis() as i64;
        let alive = [
            db.ui_sessions().find(&idle, ms).await.unwrap().is_some(),
            db.ui_sessions().find(&active, ms).await.unwrap().is_some(),
        ];
        assert_eq!(
            alive.iter().filter(|a| **a).count(),
            1,
            "{label}: {alive:?}"
        );
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ui_sessions")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(rows, 1, "{label}: the idle session's row is gone");
        cleanup(pg, db).await;
    }
}

#[test]
fn the_example_central_config_in_the_repo_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/central.toml");
    let cfg = sitelink_central::CentralConfig::load(&path).unwrap();
    assert!(
        cfg.central.database_url.starts_with("sqlite:///"),
        "made absolute: {}",
        cfg.central.database_url
    );
    let bad = sitelink_central::CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://x\"\nlink_bnd = \"1\"",
        std::path::Path::new("/"),
    );
    assert!(bad.unwrap_err().contains("link_bnd"));
}

/// A PostgreSQL database URL that names a database not there yet: central
/// creates it (and says so) instead of failing with the server's message.
#[tokio::test]
async fn a_missing_postgres_database_is_created() {
    let Some(pg) = sitelink_test_support::fresh_database("SITELINK_TEST_POSTGRES_URL").await else {
        return;
    };
    pg.drop_database().await;
    let db = sitelink_central::configuration_database::Database::connect(&pg.url)
        .await
        .unwrap();
    db.sites()
        .add(&SiteName::parse("s1").unwrap())
        .await
        .unwrap();
    cleanup(Some(pg), db).await;
}

/// One job of [`batched_ingest_equals_one_job_at_a_time`]: a site (0, 1,
/// or 2: revoked), how its range follows the site's last one (0–5:
/// exactly, 6: a gap, 7: overlapping, 8: none), its length, and rows
/// (an id of the site's pool of four, a revision).
type JobSpec = (usize, u8, u64, Vec<(usize, u64)>);

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    /// `ingest_many` shares statements between its jobs (issue 22); the
    /// rows, the cursors and the revoked answers must be exactly those of
    /// the same jobs ingested one at a time, in order: ranges that follow
    /// each other, gaps, overlaps, duplicate ids across jobs, a revoked
    /// site.
    #[test]
    fn batched_ingest_equals_one_job_at_a_time(
        specs in proptest::collection::vec(
            (0usize..3, 0u8..9, 1u64..5, proptest::collection::vec((0usize..4, 1u64..6), 0..4)),
            1..30,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use sitelink_central::configuration_database::IngestJob;
            let names = ["a", "b", "c"];
            let ids: Vec<Vec<TrackedOperationId>> =
                (0..3).map(|_| (0..4).map(|_| TrackedOperationId::new()).collect()).collect();
            let mut last = [0u64; 3];
            let jobs: Vec<IngestJob> = specs
                .iter()
                .map(|(s, follow, len, rows): &JobSpec| {
                    let from = match follow {
                        0..=5 => Some(last[*s]),
                        6 => Some(last[*s] + 2),
                        7 => Some(last[*s].saturating_sub(1)),
                        _ => None,
                    };
                    let range = from.map(|f| (f, f + len));
                    if let Some((_, to)) = range {
                        last[*s] = last[*s].max(to);
                    }
                    IngestJob {
                        site: SiteName::parse(names[*s]).unwrap(),
                        rows: rows
                            .iter()
                            .map(|(i, rev)| {
                                let status = match rev { 1 => Pending, 5 => Delivered, _ => Retrying };
                                record(names[*s], ids[*s][*i], status, *rev)
                            })
                            .collect(),
                        complete_range: range,
                        seen_seq: range.map(|(_, to)| to),
                    }
                })
                .collect();
            let mut states = Vec::new();
            for batched in [true, false] {
                for (label, db, pg, _dir) in databases().await {
                    for n in names {
                        db.sites().add(&SiteName::parse(n).unwrap()).await.unwrap();
                    }
                    db.sites().revoke("c").await.unwrap();
                    let outs = if batched {
                        db.site_calls().ingest_many(jobs.clone()).await.unwrap()
                    } else {
                        let mut outs = Vec::new();
                        for j in &jobs {
                            outs.extend(db.site_calls().ingest_many(vec![j.clone()]).await.unwrap());
                        }
                        outs
                    };
                    let mut rows = Vec::new();
                    let mut cursors = Vec::new();
                    for n in names {
                        let mut r = db.site_calls().all_for_site(n).await.unwrap();
                        r.sort_by_key(|r| r.tracked_operation_id);
                        rows.push(r);
                        cursors.push(db.sites().get(n).await.unwrap().unwrap().reconcile_cursor);
                    }
                    let revoked: Vec<bool> = outs.iter().map(|o| o.revoked).collect();
                    // Each site's last answer carries its final cursor.
                    let mut answered = [None; 3];
                    for (j, o) in jobs.iter().zip(&outs) {
                        let s = names.iter().position(|n| *n == j.site.as_str()).unwrap();
                        if !o.revoked {
                            answered[s] = Some(o.cursor);
                        }
                    }
                    prop_assert!(rows[2].is_empty(), "{}: a revoked site's rows were stored", label);
                    states.push((label, rows, cursors, revoked, answered));
                    cleanup(pg, db).await;
                }
            }
            let (batched, one_at_a_time) = states.split_at(states.len() / 2);
            for (b, o) in batched.iter().zip(one_at_a_time) {
                prop_assert_eq!(&b.1, &o.1, "{}: rows", b.0);
                prop_assert_eq!(&b.2, &o.2, "{}: cursors", b.0);
                prop_assert_eq!(&b.3, &o.3, "{}: revoked", b.0);
                prop_assert_eq!(&b.4, &o.4, "{}: the cursor answered", b.0);
            }
            Ok(())
        })?;
    }
}
