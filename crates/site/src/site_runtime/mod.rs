//! Site Runtime (SPEC §2 component 4, §4.3): runs the site's Rhai scripts,
//! sandboxed, with the script API objects `ExternalSystem`, `Database`,
//! `Notify` and `Tracking` ([`api`]).
//!
//! Main types: [`ScriptRuntime`] (the compiled scripts of the site config;
//! [`ScriptRuntime::run`] runs one now, [`ScriptRuntime::run_schedules`]
//! owns the interval triggers), [`ScriptRun`] (what a run returns: its
//! result and every TrackedOperationId it made), [`ScriptError`].
//!
//! Invariants: a script never takes the site down: syntax errors are
//! reported when the script is run (the site starts anyway), runaway
//! scripts are stopped by the limits of [`ScriptLimits`] with an error that
//! names the limit; every row a script makes carries the provenance
//! `instance/script`.

mod api;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;
use sitelink_commons::TrackedOperationId;
use tokio_util::sync::CancellationToken;

use crate::{external_system_gateway::Gateway, notification_service::NotificationService};

/// `[[script]]` in site.toml.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, Deserialize)]
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
    ast: Arc<rhai::AST>,
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
                let source = std::fs::read_to_string(&c.file)
                    .map_err(|e| compile_error(format!("cannot read it: {e}")))?;
                let ast = compiler
                    .compile(source)
                    .map_err(|e| compile_error(e.to_string()))?;
                Ok((
                    c.name.clone(),
                    Script {
                        config: c.clone(),
                        ast: Arc::new(ast),
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
        self.execute(name, &script.config.instance, script.ast.clone())
            .await
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
        let ids = ctx.take_ids();
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
