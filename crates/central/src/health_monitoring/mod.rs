//! Health Monitoring (SPEC §2 component 10, §5.5): what the dashboard, the
//! REST KPI and sites endpoints and `/metrics` show — which sites are
//! online, when each was last seen and how far its reconciliation lags, and
//! the KPI tiles of Site Call Audit and the Notification Outbox, global and
//! per site.
//!
//! Main type: [`HealthMonitor`], a cheap handle. Every figure is computed
//! point-in-time from the Configuration Database (one grouped query per
//! KPI source) and the link's live view of who is connected; nothing is
//! cached, so a page and its REST twin show the same numbers.
//!
//! Architecture invariant: the web UI and the REST API read health data only
//! through this module, so each figure has one query behind it.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use crate::{
    cluster::{ClusterHandle, ClusterView},
    communication::LinkStats,
    configuration_database::{now_ms, Database, Kpis},
    site_call_audit::SiteCallAudit,
};

/// KPI settings (SPEC §5.2 defaults: 1 hour, 10 minutes).
#[derive(Clone, Copy, Debug)]
pub struct KpiSettings {
    pub interval_seconds: i64,
    pub stuck_threshold_seconds: i64,
}

/// Which table a KPI tile counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KpiSource {
    /// `SiteCalls` (ExternalCall and DatabaseWrite).
    SiteCalls,
    /// The Notification Outbox.
    Notifications,
}

/// KPIs over every site, and each site's.
#[derive(Clone, Debug, Default)]
pub struct KpiView {
    pub total: Kpis,
    pub per_site: BTreeMap<String, Kpis>,
}

/// One row of the sites table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteHealth {
    pub name: String,
    /// Has a live stream to central now.
    pub online: bool,
    pub revoked: bool,
    /// Never, for a site that has not connected yet.
    pub last_seen_ms: Option<i64>,
    /// Central's reconcile cursor for the site.
    pub cursor: u64,
    /// Changes the site reported that central has not reconciled yet.
    pub reconcile_lag: u64,
    /// Site calls Pending or Retrying.
    pub buffered: i64,
    pub parked: i64,
}

/// Everything the dashboard shows.
#[derive(Clone, Debug)]
pub struct Dashboard {
    pub sites: Vec<SiteHealth>,
    /// More sites exist than [`DASHBOARD_SITES`].
    pub more_sites: bool,
    pub site_calls: Kpis,
    pub notifications: Kpis,
    pub cluster: ClusterView,
}

/// Most sites the dashboard's table shows (the Sites page lists them all).
pub const DASHBOARD_SITES: u32 = 500;

#[derive(Clone)]
pub struct HealthMonitor {
    db: Database,
    audit: SiteCallAudit,
    stats: Arc<LinkStats>,
    settings: KpiSettings,
    cluster: ClusterHandle,
}

impl HealthMonitor {
    pub fn new(
        db: Database,
        audit: SiteCallAudit,
        stats: Arc<LinkStats>,
        settings: KpiSettings,
        cluster: ClusterHandle,
    ) -> Self {
        Self {
            db,
            audit,
            stats,
            settings,
            cluster,
        }
    }

    /// The cluster: this node, the others, the lease.
    pub async fn cluster(&self) -> anyhow::Result<ClusterView> {
        self.cluster.view().await
    }

    fn empty(&self) -> Kpis {
        Kpis {
            interval_seconds: self.settings.interval_seconds,
            stuck_threshold_seconds: self.settings.stuck_threshold_seconds,
            ..Kpis::default()
        }
    }

    /// The KPIs of one source, global and per site (one query).
    pub async fn kpis(&self, source: KpiSource) -> anyhow::Result<KpiView> {
        let k = self.settings;
        let now = now_ms();
        let per_site = match source {
            KpiSource::SiteCalls => {
                self.db
                    .site_calls()
                    .kpis_per_site(now, k.interval_seconds, k.stuck_threshold_seconds)
                    .await?
            }
            KpiSource::Notifications => {
                self.db
                    .notifications()
                    .kpis_per_site(now, k.interval_seconds, k.stuck_threshold_seconds)
                    .await?
            }
        };
        Ok(KpiView {
            total: Kpis::total(&per_site, k.interval_seconds, k.stuck_threshold_seconds),
            per_site,
        })
    }

    /// One site's KPIs: zeros for a known site with no rows, `None` for a
    /// site central does not know.
    pub async fn site_kpis(&self, source: KpiSource, site: &str) -> anyhow::Result<Option<Kpis>> {
        let view = self.kpis(source).await?;
        if let Some(k) = view.per_site.get(site) {
            return Ok(Some(k.clone()));
        }
        Ok(self.db.sites().get(site).await?.map(|_| self.empty()))
    }

    /// Sites by name after `after`, at most `limit`, with their health.
    pub async fn sites(&self, after: Option<&str>, limit: u32) -> anyhow::Result<Vec<SiteHealth>> {
        let kpis = self.kpis(KpiSource::SiteCalls).await?;
        self.sites_with(&kpis, after, limit).await
    }

    /// [`HealthMonitor::sites`] with the site-call KPIs already at hand.
    async fn sites_with(
        &self,
        kpis: &KpiView,
        after: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<SiteHealth>> {
        let online = self.audit.online().await;
        let sites = self.db.sites().page(after, limit).await?;
        Ok(sites
            .into_iter()
            .map(|s| {
                let k = kpis.per_site.get(&s.name);
                SiteHealth {
                    online: online.contains(&s.name),
                    revoked: s.revoked,
                    last_seen_ms: s.last_seen_ms,
                    cursor: s.reconcile_cursor,
                    reconcile_lag: s.high_seq.saturating_sub(s.reconcile_cursor),
                    buffered: k.map_or(0, |k| k.buffered),
                    parked: k.map_or(0, |k| k.parked),
                    name: s.name,
                }
            })
            .collect())
    }

    /// The dashboard: the sites table and both sets of tiles, global or of
    /// one site (`None` for a site central does not know). One KPI query
    /// per source.
    pub async fn dashboard(&self, site: Option<&str>) -> anyhow::Result<Option<Dashboard>> {
        let calls = self.kpis(KpiSource::SiteCalls).await?;
        let notifications = self.kpis(KpiSource::Notifications).await?;
        let mut sites = self.sites_with(&calls, None, DASHBOARD_SITES + 1).await?;
        let more_sites = sites.len() > DASHBOARD_SITES as usize;
        sites.truncate(DASHBOARD_SITES as usize);
        let (site_calls, notifications) = match site {
            None => (calls.total, notifications.total),
            Some(s) => {
                let known =
                    sites.iter().any(|x| x.name == s) || self.db.sites().get(s).await?.is_some();
                if !known {
                    return Ok(None);
                }
                let one = |v: &KpiView| v.per_site.get(s).cloned().unwrap_or_else(|| self.empty());
                (one(&calls), one(&notifications))
            }
        };
        Ok(Some(Dashboard {
            sites,
            more_sites,
            site_calls,
            notifications,
            cluster: self.cluster.view().await?,
        }))
    }

    /// The Prometheus text exposition of `/metrics`, written by hand: a
    /// handful of gauges does not need a metrics registry.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        let online = self.audit.online().await;
        let _ = writeln!(out, "# HELP sitelink_connected_sites Sites with a live stream.\n# TYPE sitelink_connected_sites gauge");
        let _ = writeln!(out, "sitelink_connected_sites {}", online.len());
        let stats = &self.stats;
        for (name, help, v) in [
            (
                "telemetry_rows_total",
                "Rows received in telemetry batches.",
                &stats.telemetry_rows,
            ),
            (
                "reconcile_rows_total",
                "Rows received in reconcile pages.",
                &stats.reconcile_rows,
            ),
            (
                "streams_opened_total",
                "Site streams accepted (a site that keeps reconnecting shows here).",
                &stats.streams_opened,
            ),
            (
                "streams_busy_total",
                "Site streams answered \"busy, retry after\" (above the admission rate).",
                &stats.streams_busy,
            ),
            (
                "notifications_forwarded_total",
                "Forwarded notifications stored and acknowledged.",
                &stats.notifications_forwarded,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP sitelink_link_{name} {help}\n# TYPE sitelink_link_{name} counter"
            );
            let _ = writeln!(
                out,
                "sitelink_link_{name} {}",
                v.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "admit_per_second",
                "New site streams admitted a second after the burst (central.link_admit_per_second).",
                stats.admit.per_second,
            ),
            (
                "admit_burst",
                "New site streams admitted at once (central.link_admit_burst).",
                stats.admit.burst,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP sitelink_link_{name} {help}\n# TYPE sitelink_link_{name} gauge\nsitelink_link_{name} {v}"
            );
        }
        let cluster = self.cluster.view().await?;
        let node = &cluster.this_node;
        let _ = writeln!(
            out,
            "# HELP sitelink_cluster_active 1 on the active central node.\n# TYPE sitelink_cluster_active gauge"
        );
        let _ = writeln!(
            out,
            "sitelink_cluster_active{{node=\"{node}\"}} {}",
            u8::from(cluster.this_node_active)
        );
        if let Some(lease) = &cluster.lease {
            let _ = writeln!(
                out,
                "# HELP sitelink_cluster_leader_changes_total Times the leader lease changed hands (its epoch).\n# TYPE sitelink_cluster_leader_changes_total counter"
            );
            let _ = writeln!(out, "sitelink_cluster_leader_changes_total {}", lease.epoch);
        }
        let calls = self.kpis(KpiSource::SiteCalls).await?.per_site;
        let notifications = self.kpis(KpiSource::Notifications).await?.per_site;
        kpi_gauges(&mut out, "site_calls", "Site calls", &calls);
        kpi_gauges(&mut out, "notifications", "Notifications", &notifications);
        Ok(out)
    }
}

/// One gauge per KPI and site, `sitelink_<prefix>_<kpi>{site="…"}`.
fn kpi_gauges(out: &mut String, prefix: &str, what: &str, per_site: &BTreeMap<String, Kpis>) {
    for (name, help) in [
        ("buffered", "Pending or Retrying."),
        ("parked", "Parked."),
        ("failed_last_interval", "Failed in the KPI interval."),
        ("delivered_last_interval", "Delivered in the KPI interval."),
        (
            "stuck",
            "Pending or Retrying longer than the stuck threshold.",
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP sitelink_{prefix}_{name} {what} {help}\n# TYPE sitelink_{prefix}_{name} gauge"
        );
        for (site, kp) in per_site {
            let v = match name {
                "buffered" => kp.buffered,
                "parked" => kp.parked,
                "failed_last_interval" => kp.failed_last_interval,
                "delivered_last_interval" => kp.delivered_last_interval,
                _ => kp.stuck,
            };
            let _ = writeln!(out, "sitelink_{prefix}_{name}{{site=\"{site}\"}} {v}");
        }
    }
}
