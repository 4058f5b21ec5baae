//! Site Runtime (SPEC §2 component 4, §4.3): runs the site's Rhai scripts,
//! sandboxed, with the script API objects `ExternalSystem`, `Database`,
//! `Notify` and `Tracking` ([`api`]).
//!
//! Main types: [`ScriptRuntime`] (the compiled scripts of the site config;
//! [`ScriptRuntime::run`] runs one now, [`ScriptRuntime::run_schedules`]
//! owns the interval triggers), [`ScriptRun`] (what a run returns: its
//! result and every TrackedOperationId it made), [`ScriptError`].
//!
//! Invariants: a script never takes the site down: a script that does not
//! compile at start stops the start (naming it), runaway scripts are
//! stopped by the limits of [`ScriptLimits`] with an error that names the
//! limit; every row a script makes carries the provenance
//! `instance/script`.
//!
//! Reload: before each run (and when the admin API lists the scripts) the
//! script's file is checked (modification time and size); a changed file
//! is compiled and, if it compiles, runs from then on. One that does not
//! compile leaves the previous version running, and its error is logged
//! once and shown by [`ScriptRuntime::scripts`] until the file changes
//! again.

mod api;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;
use sitelink_commons::TrackedOperationId;
use tokio_util::sync::CancellationToken;

use crate::{external_system_gateway::Gateway, notification_service::NotificationService};

/// `[[script]]` in site.toml.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    pub name: String,
    /// The `.rhai` file; relative to the config file.
    pub file: PathBuf,
    /// The instance the script runs for (first half of the provenance).
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Run every this many milliseconds; without it the script runs only
    /// on demand (admin API or CLI).
    pub interval_ms: Option<u64>,
}

fn default_instance() -> String {
    "site".into()
}

/// `[limits]` in site.toml: the sandbox of every script run.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_wall_time_ms: u64,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 10_000_000,
            max_call_levels: 64,
            max_string_size: 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 100_000,
            max_wall_time_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("unknown script {0:?}")]
    UnknownScript(String),
    #[error("script {script:?} does not compile: {message}")]
    Compile { script: String, message: String },
    /// The script raised an error or hit a limit. `ids` are the tracked
    /// operations it made before that: they exist and go on.
    #[error("script {script:?} failed: {message}")]
    Runtime {
        script: String,
        message: String,
        ids: Vec<TrackedOperationId>,
    },
}

/// What one run of a script produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScriptRun {
    pub script: String,
    /// The script's last value, as JSON.
    pub result: serde_json::Value,
    /// Every TrackedOperationId handed to the script during the run.
    pub tracked_operation_ids: Vec<TrackedOperationId>,
}

struct Script {
    config: ScriptConfig,
    loaded: std::sync::Mutex<Loaded>,
}

/// The version of a script that runs, and what the last look at its file
/// found.
struct Loaded {
    ast: Arc<rhai::AST>,
    /// The file's (modification time, size) that `ast` was compiled from.
    stamp: Option<(std::time::SystemTime, u64)>,
    /// The stamp of a newer file that did not compile, and why.
    failed: Option<((std::time::SystemTime, u64), String)>,
    /// When `ast` was compiled (ms since the epoch).
    loaded_at_ms: i64,
}

/// A script as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScriptInfo {
    pub name: String,
    pub file: PathBuf,
    pub instance: String,
    pub interval_ms: Option<u64>,
    /// When the running version was compiled (UTC, RFC 3339).
    pub loaded_at_utc: String,
    /// Why the file's newer content is not running (it does not compile).
    pub reload_error: Option<String>,
}

fn stamp_of(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

pub struct ScriptRuntime {
    scripts: HashMap<String, Script>,
    gateway: Arc<Gateway>,
    notifications: Arc<NotificationService>,
    limits: ScriptLimits,
}

impl ScriptRuntime {
    /// Reads and compiles every configured script; one that cannot be read
    /// or does not compile stops the start, naming it and why.
    pub fn new(
        configs: &[ScriptConfig],
        limits: ScriptLimits,
        gateway: Arc<Gateway>,
        notifications: Arc<NotificationService>,
    ) -> Result<Arc<Self>, ScriptError> {
        let compiler = api::sandboxed_engine(&limits);
        let scripts = configs
            .iter()
            .map(|c| {
                let compile_error = |message: String| ScriptError::Compile {
                    script: c.name.clone(),
                    message: format!("{}: {message}", c.file.display()),
                };
                let stamp = stamp_of(&c.file);
                let source = std::fs::read_to_string(&c.file)
                    .map_err(|e| compile_error(format!("cannot read it: {e}")))?;
                let ast = compiler
                    .compile(source)
                    .map_err(|e| compile_error(e.to_string()))?;
                Ok((
                    c.name.clone(),
                    Script {
                        config: c.clone(),
                        loaded: std::sync::Mutex::new(Loaded {
                            ast: Arc::new(ast),
                            stamp,
                            failed: None,
                            loaded_at_ms: sitelink_commons::now_unix_ms(),
                        }),
                    },
                ))
            })
            .collect::<Result<_, ScriptError>>()?;
        Ok(Arc::new(Self {
            scripts,
            gateway,
            notifications,
            limits,
        }))
    }

    pub fn script_names(&self) -> impl Iterator<Item = &str> {
        self.scripts.keys().map(String::as_str)
    }

    /// The running version of a script, recompiled first if its file
    /// changed (see the module's doc: a version that does not compile is
    /// reported and the previous one kept).
    fn current(&self, name: &str, script: &Script) -> Arc<rhai::AST> {
        let now = stamp_of(&script.config.file);
        let mut loaded = script.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let changed = now.is_some()
            && now != loaded.stamp
            && loaded.failed.as_ref().map(|(s, _)| Some(*s)) != Some(now);
        if changed {
            let compiled = std::fs::read_to_string(&script.config.file)
                .map_err(|e| format!("cannot read it: {e}"))
                .and_then(|source| {
                    api::sandboxed_engine(&self.limits)
                        .compile(source)
                        .map_err(|e| e.to_string())
                });
            match compiled {
                Ok(ast) => {
                    loaded.ast = Arc::new(ast);
                    loaded.stamp = now;
                    loaded.failed = None;
                    loaded.loaded_at_ms = sitelink_commons::now_unix_ms();
                    tracing::info!(script = %name, file = %script.config.file.display(), "script reloaded");
                }
                Err(message) => {
                    tracing::warn!(
                        script = %name,
                        file = %script.config.file.display(),
                        error = %message,
                        "the changed script does not compile; the previous version keeps running"
                    );
                    loaded.failed = now.map(|s| (s, message));
                }
            }
        }
        loaded.ast.clone()
    }

    /// Every configured script with the state of its file (reloading the
    /// changed ones), by name.
    pub fn scripts(&self) -> Vec<ScriptInfo> {
        let mut out: Vec<ScriptInfo> = self
            .scripts
            .iter()
            .map(|(name, script)| {
                self.current(name, script);
                let loaded = script.loaded.lock().unwrap_or_else(|p| p.into_inner());
                ScriptInfo {
                    name: name.clone(),
                    file: script.config.file.clone(),
                    instance: script.config.instance.clone(),
                    interval_ms: script.config.interval_ms,
                    loaded_at_utc: sitelink_commons::unix_ms_to_utc(loaded.loaded_at_ms)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    reload_error: loaded.failed.as_ref().map(|(_, e)| e.clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Compiles and runs source text that is not in the config (tests,
    /// one-off runs from the CLI).
    pub async fn run_source(
        &self,
        name: &str,
        instance: &str,
        source: &str,
    ) -> Result<ScriptRun, ScriptError> {
        let ast = api::sandboxed_engine(&self.limits)
            .compile(source)
            .map_err(|e| ScriptError::Compile {
                script: name.into(),
                message: e.to_string(),
            })?;
        self.execute(name, instance, Arc::new(ast)).await
    }

    /// Runs the named script now and waits for it.
    pub async fn run(&self, name: &str) -> Result<ScriptRun, ScriptError> {
        let script = self
            .scripts
            .get(name)
            .ok_or_else(|| ScriptError::UnknownScript(name.into()))?;
        let ast = self.current(name, script);
        self.execute(name, &script.config.instance, ast).await
    }

    async fn execute(
        &self,
        name: &str,
        instance: &str,
        ast: Arc<rhai::AST>,
    ) -> Result<ScriptRun, ScriptError> {
        let ctx = Arc::new(api::RunContext::new(
            format!("{instance}/{name}"),
            self.gateway.clone(),
            self.notifications.clone(),
            tokio::runtime::Handle::current(),
        ));
        let limits = self.limits;
        let run_ctx = ctx.clone();
        // Scripts are synchronous; they run on the blocking pool and reach
        // async code through the runtime handle.
        let result = tokio::task::spawn_blocking(move || api::run(&run_ctx, &limits, &ast)).await;
        let mut ids = ctx.take_ids();
        // Nothing of the run leaves before its writes are durable (see
        // `PendingCommits`): the result and the ids wait for them.
        if let Err(e) = ctx.settle().await {
            // Only ids with a row are reported; the others never existed.
            let mut stored = Vec::with_capacity(ids.len());
            for id in ids {
                if matches!(self.gateway.engine().get(id).await, Ok(Some(_))) {
                    stored.push(id);
                }
            }
            ids = stored;
            let message = match &result {
                Ok(Err(message)) => {
                    format!("{message}; and its writes could not all be stored: {e}")
                }
                _ => format!("the run's writes could not all be stored: {e}"),
            };
            return Err(ScriptError::Runtime {
                script: name.into(),
                message,
                ids,
            });
        }
        match result {
            Ok(Ok(result)) => Ok(ScriptRun {
                script: name.into(),
                result,
                tracked_operation_ids: ids,
            }),
            Ok(Err(message)) => Err(ScriptError::Runtime {
                script: name.into(),
                message,
                ids,
            }),
            Err(join) => Err(ScriptError::Runtime {
                script: name.into(),
                message: format!("script panicked: {join}"),
                ids,
            }),
        }
    }

    /// Owns the interval triggers: runs each script that has an interval,
    /// one run at a time per script, until `cancel` fires.
    pub async fn run_schedules(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for (name, script) in &self.scripts {
            let Some(ms) = script.config.interval_ms else {
                continue;
            };
            let (this, name, cancel) = (self.clone(), name.clone(), cancel.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(ms.max(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    match this.run(&name).await {
                        Ok(run) => tracing::debug!(script = %name, ids = run.tracked_operation_ids.len(), "scheduled run done"),
                        Err(e) => tracing::warn!(script = %name, error = %e, "scheduled run failed"),
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}
