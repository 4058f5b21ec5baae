//! The chaos run's checker: SPEC §6's guarantees judged from what the
//! processes expose, and nothing else — the ids the site admin API handed
//! back from script runs, the requests the external system saw, the rows
//! of each site's admin API and of central's REST API (sampled during the
//! run and read after healing), central's KPIs, and the mails the SMTP
//! sink received. [`check`] is a pure function of an [`Observed`] so that
//! a test can feed it a deliberately broken world and see each fault
//! named.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

/// Statuses a call still moves out of (not settled).
const OPEN: [&str; 2] = ["Pending", "Retrying"];

/// Everything the checker reads.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Every id a script run handed back (admin API run answers).
    pub handed: BTreeSet<String>,
    /// The `Idempotency-Key` of every request the external system saw.
    pub idempotency_keys: Vec<String>,
    /// Each site's tracking rows (admin API, every kind), by site name.
    pub site_rows: BTreeMap<String, Vec<Value>>,
    /// Central's Site Calls rows, by site name.
    pub central_rows: BTreeMap<String, Vec<Value>>,
    /// Central's rows as sampled during the run: (id, revision, status),
    /// in the order they were read.
    pub samples: Vec<(String, u64, String)>,
    /// Central's `GET /api/v1/kpis/site-calls` after healing.
    pub kpis: Value,
    /// Central's notifications (`GET /api/v1/notifications`).
    pub notifications: Vec<Value>,
    /// Mails the SMTP sink accepted, per notification id (read from the
    /// Message-ID central gives each notification).
    pub mails: HashMap<String, usize>,
    /// Faults that may leave a mail in flight: central kills and pauses.
    pub mail_faults: usize,
    /// The documented duplicate bound per such fault.
    pub duplicates_per_fault: usize,
}

/// What the checker found; every list names the ids (or rows) concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Handed to a script, yet no site holds the row.
    pub lost_ids: Vec<String>,
    /// An Idempotency-Key the external system saw with no row anywhere.
    pub effects_without_row: Vec<String>,
    /// `site/id: what differs` between a site and central.
    pub divergent_rows: Vec<String>,
    /// `id: revision/status then revision/status` going backwards.
    pub regressions: Vec<String>,
    /// `scope field: kpi ≠ rows`.
    pub kpi_mismatches: Vec<String>,
    /// Forwarded notifications not Delivered or never mailed.
    pub unmailed: Vec<String>,
    /// Mails beyond the first, over every notification.
    pub duplicate_mails: usize,
    /// The bound those may reach: `mail_faults × duplicates_per_fault`.
    pub duplicate_bound: usize,
    /// Site calls still Pending or Retrying after healing.
    pub unsettled: Vec<String>,
}

impl Findings {
    pub fn passed(&self) -> bool {
        self.lost_ids.is_empty()
            && self.effects_without_row.is_empty()
            && self.divergent_rows.is_empty()
            && self.regressions.is_empty()
            && self.kpi_mismatches.is_empty()
            && self.unmailed.is_empty()
            && self.unsettled.is_empty()
            && self.duplicate_mails <= self.duplicate_bound
    }

    /// One line per kind of failure, at most a few examples each.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut list = |what: &str, v: &[String]| {
            if !v.is_empty() {
                let shown: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
                out.push(format!("{} {what}: {}", v.len(), shown.join("; ")));
            }
        };
        list("lost ids", &self.lost_ids);
        list("effects without a row", &self.effects_without_row);
        list("divergent rows", &self.divergent_rows);
        list("status regressions at central", &self.regressions);
        list("KPI mismatches", &self.kpi_mismatches);
        list("notifications not mailed", &self.unmailed);
        list("calls not settled", &self.unsettled);
        if self.duplicate_mails > self.duplicate_bound {
            out.push(format!(
                "{} duplicate mails, above the bound of {}",
                self.duplicate_mails, self.duplicate_bound
            ));
        }
        out
    }
}

fn id_of(row: &Value) -> &str {
    row["tracked_operation_id"].as_str().unwrap_or_default()
}

fn is_notification(row: &Value) -> bool {
    row["kind"] == "Notification"
}

/// Judges `o` against SPEC §6 (guarantees 1–4 and 8; KPIs against rows).
pub fn check(o: &Observed) -> Findings {
    let mut f = Findings::default();
    let at_sites: BTreeSet<&str> = o.site_rows.values().flatten().map(id_of).collect();

    // 1. No id handed to a script is lost.
    f.lost_ids = o
        .handed
        .iter()
        .filter(|id| !at_sites.contains(id.as_str()))
        .cloned()
        .collect();

    // 2. No external effect without a tracking row.
    let mut keys: Vec<&String> = o.idempotency_keys.iter().collect();
    keys.sort();
    keys.dedup();
    f.effects_without_row = keys
        .into_iter()
        .filter(|k| !at_sites.contains(k.as_str()))
        .cloned()
        .collect();

    // 3. Central equals every site, field by field (site calls; the
    // notifications are central's own and checked below).
    let sites: BTreeSet<&String> = o.site_rows.keys().chain(o.central_rows.keys()).collect();
    for site in sites {
        let empty = Vec::new();
        let here: BTreeMap<&str, &Value> = o
            .site_rows
            .get(site)
            .unwrap_or(&empty)
            .iter()
            .filter(|r| !is_notification(r))
            .map(|r| (id_of(r), r))
            .collect();
        let there: BTreeMap<&str, &Value> = o
            .central_rows
            .get(site)
            .unwrap_or(&empty)
            .iter()
            .map(|r| (id_of(r), r))
            .collect();
        for (id, row) in &here {
            if OPEN.contains(&row["status"].as_str().unwrap_or_default()) {
                f.unsettled.push(format!("{site}/{id}: {}", row["status"]));
            }
            match there.get(id) {
                None => f
                    .divergent_rows
                    .push(format!("{site}/{id}: missing at central")),
                Some(c) => {
                    let diff = differing_fields(row, c);
                    if !diff.is_empty() {
                        f.divergent_rows
                            .push(format!("{site}/{id}: {}", diff.join(", ")));
                    }
                }
            }
        }
        for id in there.keys().filter(|id| !here.contains_key(*id)) {
            f.divergent_rows
                .push(format!("{site}/{id}: at central, not at the site"));
        }
    }

    // 4. Status at central never went backwards: a later read of an id
    // never shows a lower revision, nor the same revision with another
    // status.
    let mut seen: HashMap<&str, (u64, &str)> = HashMap::new();
    for (id, rev, status) in &o.samples {
        match seen.get(id.as_str()) {
            Some(&(r, s)) if *rev < r || (*rev == r && status != s) => {
                f.regressions.push(format!(
                    "{id}: revision {r} {s}, then revision {rev} {status}"
                ));
            }
            Some(&(r, _)) if *rev == r => {}
            _ => {
                seen.insert(id, (*rev, status));
            }
        }
    }

    // KPIs equal the counts derived from central's rows.
    let count = |rows: &mut dyn Iterator<Item = &Value>| {
        let (mut buffered, mut parked) = (0i64, 0i64);
        for r in rows {
            match r["status"].as_str().unwrap_or_default() {
                s if OPEN.contains(&s) => buffered += 1,
                "Parked" => parked += 1,
                _ => {}
            }
        }
        (buffered, parked)
    };
    let mut compare = |scope: &str, kpi: &Value, (buffered, parked): (i64, i64)| {
        for (field, want) in [("buffered", buffered), ("parked", parked)] {
            let got = kpi[field].as_i64();
            if got != Some(want) {
                f.kpi_mismatches.push(format!(
                    "{scope} {field}: KPI {} ≠ {want} in the rows",
                    kpi[field]
                ));
            }
        }
    };
    compare(
        "all sites",
        &o.kpis,
        count(&mut o.central_rows.values().flatten()),
    );
    for (site, rows) in &o.central_rows {
        let kpi = &o.kpis["per_site"][site];
        let counts = count(&mut rows.iter());
        // A site with no open or parked call may be left out of per_site.
        if kpi.is_null() && counts == (0, 0) {
            continue;
        }
        compare(&format!("site {site}"), kpi, counts);
    }

    // 8. Every notification a site forwarded is Delivered and was mailed;
    // copies beyond the first stay within the bound.
    let delivered: HashMap<&str, &Value> = o.notifications.iter().map(|n| (id_of(n), n)).collect();
    for n in o
        .site_rows
        .values()
        .flatten()
        .filter(|r| is_notification(r))
    {
        let id = id_of(n);
        match delivered.get(id) {
            None => f.unmailed.push(format!("{id}: not at central")),
            Some(c) if c["status"] != "Delivered" => {
                f.unmailed.push(format!("{id}: {} at central", c["status"]))
            }
            Some(_) if o.mails.get(id).copied().unwrap_or(0) == 0 => {
                f.unmailed.push(format!("{id}: Delivered but never mailed"))
            }
            Some(_) => {}
        }
    }
    f.duplicate_mails = o.mails.values().map(|n| n.saturating_sub(1)).sum();
    f.duplicate_bound = o.mail_faults * o.duplicates_per_fault;
    f
}

/// The names (and both values) of the fields that differ, `change_seq`
/// aside (a site-local sequence central keeps no copy of).
fn differing_fields(site: &Value, central: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (site.as_object(), central.as_object()) else {
        return vec!["not an object".into()];
    };
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|k| k.as_str() != "change_seq")
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k} {} ≠ {}",
                a.get(k).unwrap_or(&Value::Null),
                b.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(id: &str, site: &str, kind: &str, status: &str, revision: u64) -> Value {
        json!({
            "tracked_operation_id": id, "source_site": site, "kind": kind,
            "target_summary": "erp.postOrder", "status": status, "retry_count": 0,
            "last_error": null, "provenance": "chaos/load",
            "created_at_utc": "2026-12-08T01:00:00Z", "updated_at_utc": "2026-12-08T01:00:01Z",
            "terminal_at_utc": null, "revision": revision,
        })
    }

    /// A healthy world: two calls and a notification at one site, all at
    /// central, one mail each.
    fn healthy() -> Observed {
        let calls = vec![
            row("a", "s1", "ExternalCall", "Delivered", 2),
            row("b", "s1", "DatabaseWrite", "Parked", 5),
        ];
        let mut at_site = calls.clone();
        at_site.push(row("n", "s1", "Notification", "Delivered", 2));
        for r in &mut at_site {
            r["change_seq"] = json!(7);
        }
        Observed {
            handed: ["a", "b", "n"].map(String::from).into(),
            idempotency_keys: vec!["a".into(), "a".into()],
            site_rows: [("s1".to_owned(), at_site)].into(),
            central_rows: [("s1".to_owned(), calls)].into(),
            samples: vec![
                ("a".into(), 1, "Pending".into()),
                ("a".into(), 2, "Delivered".into()),
                ("a".into(), 2, "Delivered".into()),
            ],
            kpis: json!({ "buffered": 0, "parked": 1, "per_site": { "s1": { "buffered": 0, "parked": 1 } } }),
            notifications: vec![row("n", "s1", "Notification", "Delivered", 2)],
            mails: [("n".to_owned(), 2)].into(),
            mail_faults: 1,
            duplicates_per_fault: 1,
        }
    }

    #[test]
    fn a_healthy_world_passes() {
        let f = check(&healthy());
        assert!(f.passed(), "{:?}", f.failures());
        assert_eq!((f.duplicate_mails, f.duplicate_bound), (1, 1));
    }

    #[test]
    fn a_missing_row_is_a_lost_id() {
        let mut o = healthy();
        o.handed.insert("gone".into());
        let f = check(&o);
        assert_eq!(f.lost_ids, ["gone"]);
        assert!(!f.passed());
    }

    #[test]
    fn an_effect_without_a_row_is_named() {
        let mut o = healthy();
        o.idempotency_keys.push("phantom".into());
        assert_eq!(check(&o).effects_without_row, ["phantom"]);
    }

    #[test]
    fn a_divergent_field_a_missing_and_an_extra_row_are_named() {
        let mut o = healthy();
        o.central_rows.get_mut("s1").unwrap()[0]["retry_count"] = json!(3);
        let f = check(&o);
        assert_eq!(f.divergent_rows, ["s1/a: retry_count 0 ≠ 3"]);

        let mut o = healthy();
        o.central_rows.get_mut("s1").unwrap().remove(1);
        o.central_rows
            .get_mut("s1")
            .unwrap()
            .push(row("z", "s1", "ExternalCall", "Delivered", 1));
        o.kpis = json!({ "buffered": 0, "parked": 0 });
        let f = check(&o);
        assert_eq!(
            f.divergent_rows,
            [
                "s1/b: missing at central",
                "s1/z: at central, not at the site"
            ]
        );
        assert!(!f.passed());
    }

    #[test]
    fn a_regressed_status_is_named() {
        let mut o = healthy();
        o.samples.push(("a".into(), 1, "Retrying".into()));
        o.samples.push(("b".into(), 3, "Parked".into()));
        o.samples.push(("b".into(), 3, "Retrying".into()));
        let f = check(&o);
        assert_eq!(
            f.regressions,
            [
                "a: revision 2 Delivered, then revision 1 Retrying",
                "b: revision 3 Parked, then revision 3 Retrying"
            ]
        );
        assert!(!f.passed());
    }

    #[test]
    fn duplicate_mails_beyond_the_bound_fail_and_an_unmailed_one_is_named() {
        let mut o = healthy();
        o.mails.insert("n".into(), 3);
        let f = check(&o);
        assert_eq!((f.duplicate_mails, f.duplicate_bound), (2, 1));
        assert!(!f.passed());
        assert!(f.failures().iter().any(|l| l.contains("above the bound")));

        let mut o = healthy();
        o.mails.clear();
        assert_eq!(check(&o).unmailed, ["n: Delivered but never mailed"]);
    }

    #[test]
    fn kpis_that_disagree_with_the_rows_and_unsettled_calls_are_named() {
        let mut o = healthy();
        o.kpis["per_site"]["s1"]["parked"] = json!(0);
        assert_eq!(
            check(&o).kpi_mismatches,
            ["site s1 parked: KPI 0 ≠ 1 in the rows"]
        );

        let mut o = healthy();
        o.site_rows.get_mut("s1").unwrap()[0]["status"] = json!("Retrying");
        o.central_rows.get_mut("s1").unwrap()[0]["status"] = json!("Retrying");
        o.kpis = json!({ "buffered": 1, "parked": 1, "per_site": { "s1": { "buffered": 1, "parked": 1 } } });
        let f = check(&o);
        assert_eq!(f.unsettled, ["s1/a: \"Retrying\""]);
        assert!(f.divergent_rows.is_empty() && f.kpi_mismatches.is_empty());
        assert!(!f.passed());
    }
}
