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

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub name: SiteName,
    /// Folder of the buffer database (`buffer.db`); relative to the config file.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Local admin API address. Loopback by default: the site opens no other
    /// inbound port.
    pub bind: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8081".parse().expect("valid default address"),
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

    pub fn buffer_db_path(&self) -> PathBuf {
        self.site.data_dir.join("buffer.db")
    }
}
