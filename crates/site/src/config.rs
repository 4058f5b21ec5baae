//! The site configuration file (`site.toml`): serde types with
//! `deny_unknown_fields`, so a misspelt key is an error that names it, plus
//! [`SiteConfig::load`], which also checks values and resolves relative
//! paths against the file's folder.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sitelink_commons::SiteName;

use crate::{
    central_link::CentralConfig,
    external_system_gateway::{DatabaseConfig, ExternalSystemConfig},
    site_runtime::{ScriptConfig, ScriptLimits},
    store_and_forward::EngineSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub site: SiteSection,
    #[serde(default)]
    pub admin: AdminSection,
    /// The central to report to; without it the site runs alone.
    pub central: Option<CentralConfig>,
    #[serde(default)]
    pub store_and_forward: EngineSettings,
    #[serde(default)]
    pub limits: ScriptLimits,
    #[serde(default, rename = "script")]
    pub scripts: Vec<ScriptConfig>,
    #[serde(default)]
    pub external_systems: BTreeMap<String, ExternalSystemConfig>,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub name: SiteName,
    /// Folder of the buffer database (`buffer.db`); relative to the config file.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Local admin API address. Loopback by default: the site opens no other
    /// inbound port.
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// Bearer token every request but `/healthz` must carry; required with
    /// a non-loopback `bind`.
    pub token: Option<String>,
    /// Host names the API answers to besides IP addresses and `localhost`
    /// (requests naming any other host are refused: DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

fn default_admin_bind() -> SocketAddr {
    "127.0.0.1:8081".parse().expect("valid default address")
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            bind: default_admin_bind(),
            token: None,
            allowed_hosts: Vec::new(),
        }
    }
}

impl SiteConfig {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        // Absolute, so that paths derived from it (SQLite URLs) mean the same
        // whatever the working directory.
        let absolute = std::path::absolute(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let base = absolute.parent().unwrap_or(Path::new("/"));
        Self::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: path.into(),
                key,
                message,
            },
            other => other,
        })
    }

    /// Parses and checks config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: SiteConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            key,
            message,
        };
        if cfg.site.data_dir.is_relative() {
            cfg.site.data_dir = base.join(&cfg.site.data_dir);
        }
        if let Some(c) = &mut cfg.central {
            if let Some(ca) = &mut c.ca_file {
                *ca = base.join(&*ca);
            }
            c.validate()
                .map_err(|(k, m)| invalid(format!("central.{k}"), m))?;
        }
        for (name, sys) in &cfg.external_systems {
            sys.validate()
                .map_err(|(k, m)| invalid(format!("external_systems.{name}.{k}"), m))?;
        }
        for (name, db) in &mut cfg.databases {
            db.resolve_relative(base);
            db.validate()
                .map_err(|(k, m)| invalid(format!("databases.{name}.{k}"), m))?;
        }
        if !cfg.admin.bind.ip().is_loopback() && cfg.admin.token.is_none() {
            return Err(invalid(
                "admin.token".into(),
                format!(
                    "admin.bind {} is not loopback: set [admin] token so that only who holds it can \
                     run scripts and retry or discard calls",
                    cfg.admin.bind
                ),
            ));
        }
        if cfg.admin.token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "admin.token".into(),
                "must have at least 16 characters".into(),
            ));
        }
        cfg.check_ranges().map_err(|(k, m)| invalid(k, m))?;
        let mut seen = std::collections::HashSet::new();
        for (i, s) in cfg.scripts.iter_mut().enumerate() {
            if !seen.insert(s.name.clone()) {
                return Err(invalid(
                    format!("script[{i}].name"),
                    format!("duplicate script name {:?}", s.name),
                ));
            }
            if s.file.is_relative() {
                s.file = base.join(&s.file);
            }
        }
        Ok(cfg)
    }

    /// Every numeric key within its documented range (README), or the
    /// key and an error naming the range and the value.
    fn check_ranges(&self) -> Result<(), (String, String)> {
        const DAY_MS: u64 = 86_400_000;
        let s = &self.store_and_forward;
        let l = &self.limits;
        let mut keys: Vec<(String, u64, u64, u64)> = vec![
            (
                "store_and_forward.purge_after_days".into(),
                s.purge_after_days.into(),
                1,
                3_650,
            ),
            (
                "store_and_forward.purge_hard_limit_days".into(),
                s.purge_hard_limit_days.into(),
                s.purge_after_days.into(),
                36_500,
            ),
            (
                "store_and_forward.purge_interval_seconds".into(),
                s.purge_interval_seconds,
                1,
                86_400,
            ),
            (
                "store_and_forward.cache_mib".into(),
                s.cache_mib.into(),
                1,
                4_096,
            ),
            // 0 would mean "no limit" to the script engine: never that.
            (
                "limits.max_operations".into(),
                l.max_operations,
                1_000,
                1_000_000_000_000,
            ),
            (
                "limits.max_call_levels".into(),
                l.max_call_levels as u64,
                1,
                1_000,
            ),
            (
                "limits.max_string_size".into(),
                l.max_string_size as u64,
                1,
                1 << 30,
            ),
            (
                "limits.max_array_size".into(),
                l.max_array_size as u64,
                1,
                100_000_000,
            ),
            (
                "limits.max_map_size".into(),
                l.max_map_size as u64,
                1,
                100_000_000,
            ),
            (
                "limits.max_wall_time_ms".into(),
                l.max_wall_time_ms,
                10,
                DAY_MS,
            ),
        ];
        for (i, sc) in self.scripts.iter().enumerate() {
            if let Some(ms) = sc.interval_ms {
                keys.push((format!("script[{i}].interval_ms"), ms, 10, 7 * DAY_MS));
            }
        }
        for (name, sys) in &self.external_systems {
            let k = |key: &str| format!("external_systems.{name}.{key}");
            keys.push((k("timeout_ms"), sys.timeout_ms, 1, 600_000));
            keys.push((
                k("max_response_bytes"),
                sys.max_response_bytes as u64,
                1,
                1 << 30,
            ));
            if let Some(p) = sys.replay_parked_on_recovery {
                let k = |f: &str| k(&format!("replay_parked_on_recovery.{f}"));
                keys.push((k("at_once"), p.at_once.into(), 1, 1_000_000));
                keys.push((k("per_minute"), p.per_minute.into(), 1, 1_000_000));
            }
        }
        for (name, db) in &self.databases {
            let k = |key: &str| format!("databases.{name}.{key}");
            keys.push((k("max_connections"), db.max_connections.into(), 1, 1_000));
            keys.push((k("acquire_timeout_ms"), db.acquire_timeout_ms, 1, 600_000));
            if let Some(p) = db.replay_parked_on_recovery {
                let k = |f: &str| k(&format!("replay_parked_on_recovery.{f}"));
                keys.push((k("at_once"), p.at_once.into(), 1, 1_000_000));
                keys.push((k("per_minute"), p.per_minute.into(), 1, 1_000_000));
            }
        }
        for (key, value, lo, hi) in keys {
            sitelink_commons::in_range(&key, value, lo, hi).map_err(|m| (key, m))?;
        }
        Ok(())
    }

    pub fn buffer_db_path(&self) -> PathBuf {
        self.site.data_dir.join("buffer.db")
    }
}
