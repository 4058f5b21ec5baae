//! The script API of SPEC §4.3 as Rhai sees it, and the sandbox.
//!
//! Each run gets its own `rhai::Engine` whose functions close over that
//! run's [`RunContext`] (provenance, ids made, deadline); ASTs are compiled
//! once and shared. The API objects are constants in the run's scope:
//!
//! ```text
//! ExternalSystem.Call(system, method, params)        -> #{ status, body }
//! ExternalSystem.CachedCall(system, method, params)  -> id
//! Database.Query(conn, sql, params)                  -> [ #{ col: value } ]
//! Database.Write(conn, sql, params)                  -> rows affected
//! Database.CachedWrite(conn, sql, params)            -> id
//! Tracking.Status(id)                                -> #{ status, ... } or ()
//! Notify.Status(id)                                  -> alias of Tracking.Status
//! Notify.Send(list, subject, body)                   -> id (forwarded to central)
//! ```

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, Scope, AST};
use serde_json::Value;
use sitelink_commons::TrackedOperationId;

use super::ScriptLimits;
use crate::{
    external_system_gateway::{Gateway, GatewayError},
    notification_service::NotificationService,
    store_and_forward::{EngineError, PendingCommits},
};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Everything one script run shares with the API functions it calls.
pub(super) struct RunContext {
    provenance: String,
    gateway: Arc<Gateway>,
    notifications: Arc<NotificationService>,
    handle: tokio::runtime::Handle,
    ids: Mutex<Vec<TrackedOperationId>>,
    /// This run's writes whose commit it has not waited for yet. Settled
    /// before anything the run does can be seen outside the process (an
    /// attempt, a database statement, a status read, a log line) and when
    /// it ends, so every id that leaves the run has a durable row.
    pending: tokio::sync::Mutex<PendingCommits>,
}

impl RunContext {
    pub fn new(
        provenance: String,
        gateway: Arc<Gateway>,
        notifications: Arc<NotificationService>,
        handle: tokio::runtime::Handle,
    ) -> Self {
        Self {
            provenance,
            gateway,
            notifications,
            handle,
            ids: Mutex::new(Vec::new()),
            pending: Default::default(),
        }
    }

    /// Waits until every write this run handed to the engine is committed
    /// (the end of a run calls this too, from async code).
    pub async fn settle(&self) -> Result<(), EngineError> {
        self.pending.lock().await.settle().await
    }

    /// [`Self::settle`] from the script's thread, before something leaves
    /// the process.
    fn settle_before(&self, what: &str) -> RhaiResult<()> {
        self.block_on(self.settle()).map_err(|e| {
            err(format!(
                "{what}: an earlier write of this run could not be stored: {e}"
            ))
        })
    }

    pub fn take_ids(&self) -> Vec<TrackedOperationId> {
        std::mem::take(&mut self.ids.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn handed_out(&self, id: TrackedOperationId) -> String {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        id.to_string()
    }

    /// What a cached call gives the script: its id, or an error. A call
    /// that failed permanently still handed out an id (its row is
    /// `Failed`); the error names it and the run reports it.
    fn cached_result(&self, r: Result<TrackedOperationId, GatewayError>) -> RhaiResult<String> {
        match r {
            Ok(id) => Ok(self.handed_out(id)),
            Err(e) => {
                if let GatewayError::CachedFailed { id, .. } = &e {
                    self.handed_out(*id);
                }
                Err(err(e))
            }
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }
}

/// The API object types; values carry no state, the functions do.
#[derive(Clone, Copy)]
struct ExternalSystemApi;
#[derive(Clone, Copy)]
struct DatabaseApi;
#[derive(Clone, Copy)]
struct TrackingApi;
#[derive(Clone, Copy)]
struct NotifyApi;

/// An engine with the sandbox limits and no access to files or modules.
pub(super) fn sandboxed_engine(limits: &ScriptLimits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_expr_depths(128, 64)
        .set_max_modules(0);
    engine
}

fn to_json(what: &str, d: &Dynamic) -> RhaiResult<Value> {
    rhai::serde::from_dynamic::<Value>(d)
        .map_err(|e| format!("{what} cannot be turned into JSON: {e}").into())
}

fn params_map(what: &str, m: Map) -> RhaiResult<serde_json::Map<String, Value>> {
    match to_json(what, &Dynamic::from_map(m))? {
        Value::Object(o) => Ok(o),
        _ => unreachable!("a map serializes to an object"),
    }
}

fn params_array(what: &str, a: Array) -> RhaiResult<Vec<Value>> {
    match to_json(what, &Dynamic::from_array(a))? {
        Value::Array(v) => Ok(v),
        _ => unreachable!("an array serializes to an array"),
    }
}

fn to_dynamic(v: &impl serde::Serialize) -> RhaiResult<Dynamic> {
    rhai::serde::to_dynamic(v)
}

fn err<E: std::fmt::Display>(e: E) -> Box<EvalAltResult> {
    e.to_string().into()
}

/// `Tracking.Status(id)` / `Notify.Status(id)`: the local row for a cached
/// call; for a notification (or an id the site no longer has) central's
/// answer when it can be asked (Notification Service).
fn status(ctx: &RunContext, id: &str) -> RhaiResult<Dynamic> {
    let id: TrackedOperationId = id.parse().map_err(err)?;
    // What this run wrote is what it must read back.
    ctx.settle_before("Status")?;
    match ctx.block_on(ctx.notifications.status(id)).map_err(err)? {
        Some(record) => to_dynamic(&record),
        None => Ok(Dynamic::UNIT),
    }
}

fn register_api(engine: &mut Engine, ctx: &Arc<RunContext>) {
    engine
        .register_type_with_name::<ExternalSystemApi>("ExternalSystem")
        .register_type_with_name::<DatabaseApi>("Database")
        .register_type_with_name::<TrackingApi>("Tracking")
        .register_type_with_name::<NotifyApi>("Notify");

    let c = ctx.clone();
    let call = move |system: &str, method: &str, params: Map| -> RhaiResult<Dynamic> {
        let params = params_map(&format!("parameters of {system}.{method}"), params)?;
        c.settle_before(&format!("{system}.{method}"))?;
        let resp = c
            .block_on(c.gateway.call(system, method, params))
            .map_err(err)?;
        to_dynamic(&resp)
    };
    let call2 = call.clone();
    engine.register_fn(
        "Call",
        move |_: &mut ExternalSystemApi, s: &str, m: &str, p: Map| call(s, m, p),
    );
    engine.register_fn(
        "Call",
        move |_: &mut ExternalSystemApi, s: &str, m: &str| call2(s, m, Map::new()),
    );

    let c = ctx.clone();
    let cached_call = move |system: &str, method: &str, params: Map| -> RhaiResult<String> {
        let params = params_map(&format!("parameters of {system}.{method}"), params)?;
        // The gateway settles this run's earlier writes before its attempt.
        c.cached_result(c.block_on(async {
            let mut pending = c.pending.lock().await;
            c.gateway
                .cached_call_in(system, method, params, &c.provenance, &mut pending)
                .await
        }))
    };
    let cached_call2 = cached_call.clone();
    engine.register_fn(
        "CachedCall",
        move |_: &mut ExternalSystemApi, s: &str, m: &str, p: Map| cached_call(s, m, p),
    );
    engine.register_fn(
        "CachedCall",
        move |_: &mut ExternalSystemApi, s: &str, m: &str| cached_call2(s, m, Map::new()),
    );

    let c = ctx.clone();
    engine.register_fn(
        "Query",
        move |_: &mut DatabaseApi, conn: &str, sql: &str, params: Array| -> RhaiResult<Dynamic> {
            let params = params_array(&format!("parameters of {conn}"), params)?;
            c.settle_before(conn)?;
            let rows = c
                .block_on(c.gateway.query(conn, sql, params))
                .map_err(err)?;
            to_dynamic(&rows)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "Write",
        move |_: &mut DatabaseApi, conn: &str, sql: &str, params: Array| -> RhaiResult<i64> {
            let params = params_array(&format!("parameters of {conn}"), params)?;
            c.settle_before(conn)?;
            let n = c
                .block_on(c.gateway.write(conn, sql, params))
                .map_err(err)?;
            Ok(n as i64)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "CachedWrite",
        move |_: &mut DatabaseApi, conn: &str, sql: &str, params: Array| -> RhaiResult<String> {
            let params = params_array(&format!("parameters of {conn}"), params)?;
            c.cached_result(c.block_on(async {
                let mut pending = c.pending.lock().await;
                c.gateway
                    .cached_write_in(conn, sql, params, &c.provenance, &mut pending)
                    .await
            }))
        },
    );

    let c = ctx.clone();
    engine.register_fn("Status", move |_: &mut TrackingApi, id: &str| {
        status(&c, id)
    });
    let c = ctx.clone();
    engine.register_fn("Status", move |_: &mut NotifyApi, id: &str| status(&c, id));
    let c = ctx.clone();
    engine.register_fn(
        "Send",
        move |_: &mut NotifyApi, list: &str, subject: &str, body: &str| -> RhaiResult<String> {
            // Not waiting for the commit: the id stays in this run until
            // the run settles (see `pending`).
            let id = c
                .block_on(async {
                    let mut pending = c.pending.lock().await;
                    c.notifications
                        .send_in(list, subject, body, &c.provenance, &mut pending)
                        .await
                })
                .map_err(err)?;
            Ok(c.handed_out(id))
        },
    );
}

/// Runs `ast` under the sandbox limits; the error text names the limit hit.
pub(super) fn run(
    ctx: &Arc<RunContext>,
    limits: &ScriptLimits,
    ast: &AST,
) -> Result<Value, String> {
    let mut engine = sandboxed_engine(limits);
    register_api(&mut engine, ctx);
    // A log line leaves the process: what it may name is settled first.
    let c = ctx.clone();
    engine.on_print(move |s| match c.settle_before("print") {
        Ok(()) => tracing::info!(script = %c.provenance, "{s}"),
        Err(e) => tracing::error!(script = %c.provenance, error = %e, "print not logged"),
    });
    let c = ctx.clone();
    engine.on_debug(move |s, _, pos| match c.settle_before("debug") {
        Ok(()) => tracing::info!(script = %c.provenance, %pos, "{s}"),
        Err(e) => tracing::error!(script = %c.provenance, error = %e, "debug not logged"),
    });
    let wall = Duration::from_millis(limits.max_wall_time_ms);
    let deadline = Instant::now() + wall;
    engine.on_progress(move |_| (Instant::now() > deadline).then(|| Dynamic::from("wall time")));

    let mut scope = Scope::new();
    scope
        .push_constant("ExternalSystem", ExternalSystemApi)
        .push_constant("Database", DatabaseApi)
        .push_constant("Tracking", TrackingApi)
        .push_constant("Notify", NotifyApi);
    match engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast) {
        Ok(d) => {
            rhai::serde::from_dynamic::<Value>(&d).or_else(|_| Ok(Value::String(d.to_string())))
        }
        Err(e) => Err(match *e {
            EvalAltResult::ErrorTerminated(..) => {
                format!(
                    "stopped after running longer than max_wall_time_ms ({} ms)",
                    limits.max_wall_time_ms
                )
            }
            EvalAltResult::ErrorTooManyOperations(..) => {
                format!(
                    "stopped after more than max_operations ({}) operations",
                    limits.max_operations
                )
            }
            other => other.to_string(),
        }),
    }
}
