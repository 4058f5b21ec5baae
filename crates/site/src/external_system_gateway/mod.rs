//! External System Gateway (SPEC §2 component 3, §4.2): how the site reaches
//! the outside world.
//!
//! - [`http`]: external systems from the site config, `Call` and the
//!   attempts of `CachedCall` over HTTP (reqwest, rustls).
//! - [`database`]: named database connections (SQLite, PostgreSQL,
//!   MySQL/MariaDB through sqlx), `Query`, `Write` and the attempts of
//!   `CachedWrite`, always with bound parameters.
//! - [`Gateway`]: ties both to the Store-and-Forward Engine: the cached
//!   variants record the `Pending` row first (write-ahead), attempt once,
//!   record the outcome; the gateway is also the engine's [`Deliverer`] for
//!   retries, and tells [`recovery::RecoveryWatch`] how each attempt
//!   ended (replay on recovery).
//!
//! Invariant: every failure is classified transient or permanent by
//! [`ErrorClass`] from structured data (HTTP status, error kind, database
//! error code), never from message text.

pub mod database;
pub mod http;
pub mod recovery;

use std::sync::Arc;

use serde_json::{Map, Value};
use sitelink_commons::{Kind, TrackedOperationId};

pub use database::DatabaseConfig;
pub use http::{ExternalSystemConfig, HttpResponse};

use crate::store_and_forward::{
    AttemptNote, AttemptOutcome, Attempted, Deliverer, DeliveryRequest, Engine, EngineError,
    PendingCommits, RetryPolicy,
};

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection refused/reset, DNS, timeout, HTTP 408/429/5xx, lock
    /// timeout, serialization failure: buffer and retry.
    Transient,
    /// Other 4xx, syntax error, constraint violation: fail at once.
    Permanent,
}

/// What a script (or the admin API) is told when a call cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unknown external system {0:?}")]
    UnknownSystem(String),
    #[error("external system {system:?} has no method {method:?}")]
    UnknownMethod { system: String, method: String },
    #[error("unknown database connection {0:?}")]
    UnknownConnection(String),
    #[error("bad parameters for {target}: {reason}")]
    BadParams { target: String, reason: String },
    /// The call reached (or tried to reach) the target and failed.
    #[error("{target} failed ({class:?}): {message}")]
    Failed {
        target: String,
        class: ErrorClass,
        message: String,
        /// The HTTP status (`HTTP 503`) or the database's error code
        /// (`SQLSTATE 55P03`, `MySQL 1205`, `SQLite 5`), where there is one.
        code: Option<String>,
    },
    /// A cached operation failed permanently on its immediate attempt: the
    /// row exists as `Failed` and the script hears why.
    #[error("{target} failed permanently (tracked operation {id}, status Failed): {message}")]
    CachedFailed {
        id: TrackedOperationId,
        target: String,
        message: String,
    },
    #[error("store-and-forward: {0}")]
    Engine(#[from] EngineError),
}

/// The gateway: HTTP systems, database connections, and the engine that
/// records cached operations.
pub struct Gateway {
    http: http::HttpSystems,
    databases: database::Databases,
    engine: Engine,
    recovery: recovery::RecoveryWatch,
}

impl Gateway {
    pub fn new(
        http: http::HttpSystems,
        databases: database::Databases,
        engine: Engine,
        recovery: recovery::RecoveryWatch,
    ) -> Arc<Self> {
        Arc::new(Self {
            http,
            databases,
            engine,
            recovery,
        })
    }

    /// Which targets configured for replay recovered or fail again.
    pub fn recovery(&self) -> &recovery::RecoveryWatch {
        &self.recovery
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// `ExternalSystem.Call`: synchronous, the response or an error.
    pub async fn call(
        &self,
        system: &str,
        method: &str,
        params: Map<String, Value>,
    ) -> Result<HttpResponse, GatewayError> {
        self.http.call(system, method, &params, None).await
    }

    /// `ExternalSystem.CachedCall`: returns the id once the immediate
    /// attempt's outcome is committed too; see [`Self::cached`].
    pub async fn cached_call(
        &self,
        system: &str,
        method: &str,
        params: Map<String, Value>,
        provenance: &str,
    ) -> Result<TrackedOperationId, GatewayError> {
        let mut pending = PendingCommits::default();
        let result = self
            .cached_call_in(system, method, params, provenance, &mut pending)
            .await;
        settle_own(result, pending).await
    }

    /// `ExternalSystem.CachedCall` for a caller that settles its own
    /// [`PendingCommits`] (a script run): see [`Self::cached`].
    pub async fn cached_call_in(
        &self,
        system: &str,
        method: &str,
        params: Map<String, Value>,
        provenance: &str,
        pending: &mut PendingCommits,
    ) -> Result<TrackedOperationId, GatewayError> {
        self.http.check(system, method, &params)?;
        let request = DeliveryRequest::Http {
            system: system.into(),
            method: method.into(),
            params,
        };
        self.cached(request, provenance, pending).await
    }

    /// `Database.Query`: rows as JSON objects.
    pub async fn query(
        &self,
        connection: &str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Map<String, Value>>, GatewayError> {
        self.databases.query(connection, sql, &params).await
    }

    /// `Database.Write`: rows affected.
    pub async fn write(
        &self,
        connection: &str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<u64, GatewayError> {
        self.databases.write(connection, sql, &params).await
    }

    /// `Database.CachedWrite`: returns the id once the immediate attempt's
    /// outcome is committed too; see [`Self::cached`].
    pub async fn cached_write(
        &self,
        connection: &str,
        sql: &str,
        params: Vec<Value>,
        provenance: &str,
    ) -> Result<TrackedOperationId, GatewayError> {
        let mut pending = PendingCommits::default();
        let result = self
            .cached_write_in(connection, sql, params, provenance, &mut pending)
            .await;
        settle_own(result, pending).await
    }

    /// `Database.CachedWrite` for a caller that settles its own
    /// [`PendingCommits`] (a script run): see [`Self::cached`].
    pub async fn cached_write_in(
        &self,
        connection: &str,
        sql: &str,
        params: Vec<Value>,
        provenance: &str,
        pending: &mut PendingCommits,
    ) -> Result<TrackedOperationId, GatewayError> {
        self.databases.check(connection, &params)?;
        let request = DeliveryRequest::DatabaseWrite {
            connection: connection.into(),
            sql: sql.into(),
            params,
        };
        self.cached(request, provenance, pending).await
    }

    /// The cached-call protocol of SPEC §4.1: durable `Pending` row first,
    /// then one immediate attempt, then its outcome (Delivered; buffered and
    /// still Pending; or Failed, which is also returned as an error).
    ///
    /// The caller waits for the `Pending` row's commit (write-ahead) but
    /// not for the outcome's: that one rides in the writer's next batch and
    /// `pending` holds its receipt (see [`PendingCommits`] for the rule that
    /// keeps this safe). So a cached call costs its caller one commit wait,
    /// not two. Should the process die before the outcome commits, the row
    /// is in flight at the next start and retried, as after a death during
    /// the attempt (at-least-once, with the same `Idempotency-Key`).
    async fn cached(
        &self,
        request: DeliveryRequest,
        provenance: &str,
        pending: &mut PendingCommits,
    ) -> Result<TrackedOperationId, GatewayError> {
        let id = self.engine.record_pending(&request, provenance).await?;
        // One writer commits in order, so every earlier write of this
        // caller is committed by now: this only collects their answers.
        // Should one have failed, the caller hears it before any attempt
        // (this row stays Pending and is retried after the next start).
        pending.settle().await?;
        let Attempted { outcome, note } = self.deliver(id, &request).await;
        let permanent = match &outcome {
            AttemptOutcome::Permanent(m) => Some(m.clone()),
            _ => None,
        };
        if let Err(e) = self
            .engine
            .record_immediate_outcome_deferred(id, outcome, note, self.policy(&request), pending)
            .await
        {
            // The Pending row is durable; recovery at the next start
            // retries it. The script still gets its id.
            tracing::error!(%id, error = %e, "could not record the immediate attempt's outcome");
        }
        // A permanent failure makes the row Failed (the writer applies the
        // same rule), and the script hears it at once.
        match permanent {
            Some(message) => Err(GatewayError::CachedFailed {
                id,
                target: request.target_summary(),
                message,
            }),
            None => Ok(id),
        }
    }
}

/// Settles a caller's own writes after a cached call: a failure to store
/// the outcome is logged (the Pending row is durable and recovery retries
/// it), the call's answer stands.
async fn settle_own(
    result: Result<TrackedOperationId, GatewayError>,
    mut pending: PendingCommits,
) -> Result<TrackedOperationId, GatewayError> {
    if let Err(e) = pending.settle().await {
        tracing::error!(error = %e, "could not record the immediate attempt's outcome");
    }
    result
}

impl Deliverer for Gateway {
    fn policy(&self, request: &DeliveryRequest) -> RetryPolicy {
        match request {
            DeliveryRequest::Http { system, .. } => self.http.policy(system),
            DeliveryRequest::DatabaseWrite { connection, .. } => self.databases.policy(connection),
            // Never buffered for retry (the retry worker skips them).
            DeliveryRequest::Notification { .. } => RetryPolicy::default(),
        }
    }

    async fn deliver(&self, id: TrackedOperationId, request: &DeliveryRequest) -> Attempted {
        let started = std::time::Instant::now();
        let at_ms = crate::store_and_forward::now_ms();
        let (outcome, code) = self.attempt(id, request).await;
        match request {
            DeliveryRequest::Http { system, .. } => {
                self.recovery.observe(Kind::ExternalCall, system, &outcome)
            }
            DeliveryRequest::DatabaseWrite { connection, .. } => {
                self.recovery
                    .observe(Kind::DatabaseWrite, connection, &outcome)
            }
            DeliveryRequest::Notification { .. } => {}
        }
        Attempted {
            outcome,
            note: AttemptNote {
                at_ms,
                duration_ms: started.elapsed().as_millis() as i64,
                code,
            },
        }
    }
}

impl Gateway {
    /// One attempt, classified, with the HTTP status or SQL error code
    /// where there is one.
    async fn attempt(
        &self,
        id: TrackedOperationId,
        request: &DeliveryRequest,
    ) -> (AttemptOutcome, Option<String>) {
        let result = match request {
            DeliveryRequest::Http {
                system,
                method,
                params,
            } => self.http.attempt(system, method, params, id).await,
            DeliveryRequest::DatabaseWrite {
                connection,
                sql,
                params,
            } => self
                .databases
                .write(connection, sql, params)
                .await
                .map(|_| ()),
            // Central delivers notifications; the site only forwards them.
            DeliveryRequest::Notification { .. } => {
                return (
                    AttemptOutcome::Permanent(
                        "a notification is delivered by central, not by the site".into(),
                    ),
                    None,
                )
            }
        };
        match result {
            Ok(()) => (AttemptOutcome::Delivered, None),
            Err(GatewayError::Failed {
                class: ErrorClass::Transient,
                message,
                code,
                ..
            }) => (AttemptOutcome::Transient(message), code),
            // A system or connection removed from the config since the call
            // was buffered cannot come back by retrying: permanent.
            Err(e) => {
                let code = match &e {
                    GatewayError::Failed { code, .. } => code.clone(),
                    _ => None,
                };
                (AttemptOutcome::Permanent(e.to_string()), code)
            }
        }
    }
}
