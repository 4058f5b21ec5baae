//! The central configuration file (`central.toml`).

use std::{net::SocketAddr, path::Path};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    pub central: CentralSection,
    /// The SMTP server and retry policy of the Notification Outbox; without
    /// it forwarded notifications are stored and wait.
    pub notification_outbox: Option<OutboxSection>,
    /// Notification lists: name → email addresses.
    #[serde(default)]
    pub notification_lists: std::collections::BTreeMap<String, Vec<String>>,
    /// The leader lease of an active/standby pair (PostgreSQL only).
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// `[cluster]`: with PostgreSQL, several nodes share the database and one
/// is active (Cluster Infrastructure). Ignored with SQLite.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This node's name in the lease and on the cluster page (default: the
    /// host name and the link port).
    pub node_name: Option<String>,
    /// How long a lease lasts without renewal.
    pub lease_ttl_ms: u64,
    /// How often the active node renews it.
    pub renew_every_ms: u64,
    /// The active node stops its singletons when no renewal has succeeded
    /// for this long (its own clock); shorter than the TTL.
    pub step_down_after_ms: u64,
    /// How often a standby tries to acquire (besides at once on a release).
    pub standby_poll_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node_name: None,
            lease_ttl_ms: 10_000,
            renew_every_ms: 2_000,
            step_down_after_ms: 6_000,
            standby_poll_ms: 1_000,
        }
    }
}

/// `[notification_outbox]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSection {
    pub smtp_host: String,
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// `none` (plain SMTP) or `starttls` (upgrade required).
    #[serde(default)]
    pub smtp_tls: SmtpTls,
    /// PEM file of extra root certificates to trust for STARTTLS (a relay
    /// with a private CA), relative to this file; the public web roots are
    /// always trusted.
    pub smtp_ca_file: Option<std::path::PathBuf>,
    /// AUTH PLAIN credentials; only with `smtp_tls = "starttls"`, so a
    /// password never crosses the network in clear.
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
    /// The sender address of every notification.
    pub from: String,
    /// One SMTP conversation may take this long before it is a (transient)
    /// failure.
    #[serde(default = "default_smtp_timeout_ms")]
    pub smtp_timeout_ms: u64,
    /// Terminal notifications older than this are purged (daily).
    #[serde(default = "default_retention_days")]
    pub retention_days: i64,
    /// How transient SMTP failures are retried before parking.
    #[serde(default)]
    pub retry: sitelink_commons::RetryPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    None,
    Starttls,
}

fn default_smtp_port() -> u16 {
    25
}
fn default_smtp_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CentralSection {
    /// `sqlite://PATH` (relative to this file) or `postgres://…`.
    pub database_url: String,
    /// Where sites open their streams.
    #[serde(default = "default_link_bind")]
    pub link_bind: SocketAddr,
    /// TLS on the site link (rustls); without it the link is plain HTTP/2.
    pub tls: Option<TlsFiles>,
    /// The web UI and the REST API.
    #[serde(default = "default_http_bind")]
    pub http_bind: SocketAddr,
    /// TLS on the HTTP port (rustls); without it HTTP is plain.
    pub http_tls: Option<TlsFiles>,
    /// Connections open at once on the HTTP port; more are closed at once.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// Connections one client address may hold open on the HTTP port (so
    /// one address cannot take every slot; raise it behind a reverse proxy,
    /// where every client has the proxy's address).
    #[serde(default = "default_http_max_connections_per_address")]
    pub http_max_connections_per_address: usize,
    /// Connections open at once on the link port.
    #[serde(default = "default_link_max_connections")]
    pub link_max_connections: usize,
    /// Link connections one client address may hold before a stream on
    /// them has authenticated (authenticated ones do not count: many sites
    /// may share one NAT address).
    #[serde(default = "default_link_unauthenticated_per_address")]
    pub link_unauthenticated_per_address: usize,
    /// A new connection must complete its TLS handshake and (HTTP) its
    /// request headers, or (link) authenticate a stream, within this; an
    /// HTTP keep-alive connection idle this long is closed too.
    #[serde(default = "default_setup_timeout_ms")]
    pub setup_timeout_ms: u64,
    /// New site streams admitted a second, after a burst of
    /// `link_admit_burst`: a site above the rate is answered "busy, retry
    /// after" with its own turn (the reconnect storm after a restart).
    #[serde(default = "default_link_admit_per_second")]
    pub link_admit_per_second: u32,
    /// New site streams admitted at once before the rate applies.
    #[serde(default = "default_link_admit_burst")]
    pub link_admit_burst: u32,
    /// HTTP/2 keepalive pings on the link this often; a link whose ping is
    /// not answered within the same time again is closed (the site then
    /// shows offline). Detection takes at most twice this.
    #[serde(default = "default_link_keepalive_ms")]
    pub link_keepalive_ms: u64,
    /// KPI window for "delivered/failed in the last interval", in seconds.
    #[serde(default = "default_kpi_interval_seconds")]
    pub kpi_interval_seconds: i64,
    /// Pending/Retrying calls older than this count as stuck, in seconds.
    #[serde(default = "default_stuck_threshold_seconds")]
    pub stuck_threshold_seconds: i64,
    /// Terminal site calls older than this are purged (daily).
    #[serde(default = "default_retention_days")]
    pub retention_days: i64,
    /// Reconcile every connected site this often (and on every connect).
    #[serde(default = "default_reconcile_interval_seconds")]
    pub reconcile_interval_seconds: u64,
    /// Rows per reconcile page.
    #[serde(default = "default_reconcile_page")]
    pub reconcile_page: u32,
    /// A relayed Retry/Discard with no answer after this is a timeout.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Password checks (argon2, about 19 MiB each) allowed at once; more
    /// wait briefly, then get 503. Default: half the cores, at least 1.
    #[serde(default = "default_password_checks_at_once")]
    pub password_checks_at_once: usize,
    /// Failed logins in a row (per user name, per client address) answered
    /// at once; after that each failure blocks for 1 s, 2 s, 4 s, …
    #[serde(default = "default_login_free_failures")]
    pub login_free_failures: u32,
    /// The longest block after a failed login.
    #[serde(default = "default_login_max_delay_seconds")]
    pub login_max_delay_seconds: u64,
    /// When set, `/metrics` wants `Authorization: Bearer <metrics_token>`;
    /// required when `http_bind` is not loopback. Without it `/metrics`
    /// answers only a `Host` that is an IP address or `localhost`.
    pub metrics_token: Option<String>,
    /// A web UI session unused this long ends (default 8 hours).
    #[serde(default = "default_ui_idle_timeout_minutes")]
    pub ui_idle_timeout_minutes: u64,
}

fn default_link_bind() -> SocketAddr {
    "0.0.0.0:7070".parse().expect("valid default")
}
/// `[central.tls]` and `[central.http_tls]`: PEM files, relative to the
/// config file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

fn default_retention_days() -> i64 {
    365
}
fn default_http_bind() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid default")
}
fn default_kpi_interval_seconds() -> i64 {
    3600
}
fn default_stuck_threshold_seconds() -> i64 {
    600
}
fn default_reconcile_interval_seconds() -> u64 {
    300
}
fn default_reconcile_page() -> u32 {
    1000
}
fn default_command_timeout_ms() -> u64 {
    5000
}
fn default_password_checks_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
fn default_http_max_connections() -> usize {
    256
}
fn default_link_max_connections() -> usize {
    1024
}
fn default_http_max_connections_per_address() -> usize {
    64
}
fn default_link_unauthenticated_per_address() -> usize {
    128
}
fn default_link_admit_per_second() -> u32 {
    100
}
fn default_link_admit_burst() -> u32 {
    50
}
fn default_setup_timeout_ms() -> u64 {
    5000
}
fn default_link_keepalive_ms() -> u64 {
    5000
}
fn default_login_free_failures() -> u32 {
    3
}
fn default_login_max_delay_seconds() -> u64 {
    60
}
fn default_ui_idle_timeout_minutes() -> u64 {
    480
}

impl CentralConfig {
    /// Every numeric key within its documented range (README), or an
    /// error naming the key, the range and the value.
    fn check_ranges(&self) -> Result<(), String> {
        let c = &self.central;
        let o = self.notification_outbox.as_ref();
        let keys: [(&str, Option<i128>, i128, i128); 25] = [
            (
                "central.link_admit_per_second",
                Some(c.link_admit_per_second.into()),
                1,
                100_000,
            ),
            (
                "central.link_admit_burst",
                Some(c.link_admit_burst.into()),
                1,
                100_000,
            ),
            (
                "central.http_max_connections",
                Some(c.http_max_connections as i128),
                1,
                100_000,
            ),
            (
                "central.link_max_connections",
                Some(c.link_max_connections as i128),
                1,
                100_000,
            ),
            (
                "central.http_max_connections_per_address",
                Some(c.http_max_connections_per_address as i128),
                1,
                100_000,
            ),
            (
                "central.link_unauthenticated_per_address",
                Some(c.link_unauthenticated_per_address as i128),
                1,
                100_000,
            ),
            (
                "central.setup_timeout_ms",
                Some(c.setup_timeout_ms.into()),
                100,
                600_000,
            ),
            (
                "central.link_keepalive_ms",
                Some(c.link_keepalive_ms.into()),
                100,
                600_000,
            ),
            (
                "central.kpi_interval_seconds",
                Some(c.kpi_interval_seconds.into()),
                1,
                2_592_000,
            ),
            (
                "central.stuck_threshold_seconds",
                Some(c.stuck_threshold_seconds.into()),
                1,
                2_592_000,
            ),
            (
                "central.retention_days",
                Some(c.retention_days.into()),
                1,
                36_500,
            ),
            (
                "central.reconcile_interval_seconds",
                Some(c.reconcile_interval_seconds.into()),
                1,
                86_400,
            ),
            (
                "central.reconcile_page",
                Some(c.reconcile_page.into()),
                1,
                10_000,
            ),
            (
                "central.command_timeout_ms",
                Some(c.command_timeout_ms.into()),
                100,
                600_000,
            ),
            (
                "central.password_checks_at_once",
                Some(c.password_checks_at_once as i128),
                1,
                64,
            ),
            (
                "central.login_free_failures",
                Some(c.login_free_failures.into()),
                1,
                1_000,
            ),
            (
                "central.login_max_delay_seconds",
                Some(c.login_max_delay_seconds.into()),
                1,
                3_600,
            ),
            (
                "cluster.lease_ttl_ms",
                Some(self.cluster.lease_ttl_ms.into()),
                1_000,
                600_000,
            ),
            (
                "cluster.renew_every_ms",
                Some(self.cluster.renew_every_ms.into()),
                100,
                60_000,
            ),
            (
                "cluster.step_down_after_ms",
                Some(self.cluster.step_down_after_ms.into()),
                200,
                600_000,
            ),
            (
                "cluster.standby_poll_ms",
                Some(self.cluster.standby_poll_ms.into()),
                100,
                60_000,
            ),
            (
                "central.ui_idle_timeout_minutes",
                Some(c.ui_idle_timeout_minutes.into()),
                1,
                10_080,
            ),
            (
                "notification_outbox.smtp_port",
                o.map(|o| o.smtp_port.into()),
                1,
                65_535,
            ),
            (
                "notification_outbox.smtp_timeout_ms",
                o.map(|o| o.smtp_timeout_ms.into()),
                100,
                600_000,
            ),
            (
                "notification_outbox.retention_days",
                o.map(|o| o.retention_days.into()),
                1,
                36_500,
            ),
        ];
        for (key, value, lo, hi) in keys {
            if let Some(v) = value {
                sitelink_commons::in_range(key, v, lo, hi)?;
            }
        }
        let k = &self.cluster;
        if !(k.renew_every_ms < k.step_down_after_ms && k.step_down_after_ms < k.lease_ttl_ms) {
            return Err(format!(
                "cluster: renew_every_ms ({}) < step_down_after_ms ({}) < lease_ttl_ms ({}) must hold, \
                 so that an active node that cannot renew stops before its lease expires",
                k.renew_every_ms, k.step_down_after_ms, k.lease_ttl_ms
            ));
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let absolute = std::path::absolute(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, absolute.parent().unwrap_or(Path::new("/")))
            .map_err(|message| ConfigError::Parse { path: p, message })
    }

    /// Parses config text; a relative SQLite path resolves against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut cfg: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(rest) = cfg.central.database_url.strip_prefix("sqlite://") {
            if !rest.starts_with('/') {
                cfg.central.database_url = format!("sqlite://{}", base.join(rest).display());
            }
        }
        for tls in [&mut cfg.central.tls, &mut cfg.central.http_tls]
            .into_iter()
            .flatten()
        {
            tls.cert_file = base.join(&tls.cert_file);
            tls.key_file = base.join(&tls.key_file);
        }
        cfg.check_ranges()?;
        if cfg
            .central
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.len() < 16)
        {
            return Err("central.metrics_token must have at least 16 characters".into());
        }
        // A token rather than a Host allow-list: beyond loopback anyone who
        // reaches the port could read /metrics (site names, counts, the node
        // name) with a Host of their choosing, and Prometheus sends a bearer
        // token natively (`authorization.credentials_file`).
        if !cfg.central.http_bind.ip().is_loopback() && cfg.central.metrics_token.is_none() {
            return Err(format!(
                "central.metrics_token is required when http_bind ({}) is not loopback: \
                 /metrics names every site and its counts; set a token of 16 or more characters \
                 (Prometheus sends it with authorization.credentials_file)",
                cfg.central.http_bind
            ));
        }
        if let Some(o) = &mut cfg.notification_outbox {
            if let Some(ca) = &mut o.smtp_ca_file {
                *ca = base.join(&*ca);
            }
            o.retry
                .validate()
                .map_err(|e| format!("notification_outbox.{e}"))?;
            o.from.parse::<lettre::Address>().map_err(|e| {
                format!(
                    "notification_outbox.from: {:?} is not an email address ({e})",
                    o.from
                )
            })?;
            if o.smtp_username.is_some() != o.smtp_password.is_some() {
                return Err(
                    "notification_outbox: smtp_username and smtp_password go together".into(),
                );
            }
            if o.smtp_username.is_some() && o.smtp_tls != SmtpTls::Starttls {
                return Err(
                    "notification_outbox: smtp_username and smtp_password need smtp_tls = \"starttls\" \
                     (a password is never sent in clear)"
                        .into(),
                );
            }
            if o.smtp_ca_file.is_some() && o.smtp_tls != SmtpTls::Starttls {
                return Err(
                    "notification_outbox: smtp_ca_file is for smtp_tls = \"starttls\"".into(),
                );
            }
        }
        for (name, addresses) in &cfg.notification_lists {
            if addresses.is_empty() {
                return Err(format!(
                    "notification_lists.{name}: the list has no email address"
                ));
            }
            for a in addresses {
                a.parse::<lettre::Address>().map_err(|e| {
                    format!("notification_lists.{name}: {a:?} is not an email address ({e})")
                })?;
            }
        }
        Ok(cfg)
    }
}
