//! The central role of sitelink (SPEC §5).
//!
//! Code map (one module per component of SPEC §2):
//! - [`configuration_database`]: Configuration Database: the central
//!   database (SQLite by default, PostgreSQL for production) through one
//!   sqlx `Any` pool, versioned migrations, and the repositories (`sites`,
//!   `site_calls`).
//!
//! - [`communication`]: Central–Site Communication, central half: the
//!   gRPC service sites stream to (authentication, telemetry, reconcile,
//!   command relay).
//!
//! - [`rest_api`]: the REST API v1 (sites, site calls, Retry/Discard relay,
//!   KPIs, audit log, metrics, OpenAPI document), HTTP Basic or bearer
//!   tokens.
//! - [`site_call_audit`]: Site Call Audit: ingest batching (one committing
//!   task for all streams), the retention purge, and where its other parts
//!   live.
//! - [`config`], [`startup`]: `central.toml` and [`Central`], which binds
//!   the link and HTTP listeners and serves both.
//!
//! Still to come (issue 3): one SiteCallAuditActor owning ingest, the
//! reconcile schedule, the relay and the purge; KPIs at 10 million rows.

pub mod communication;
pub mod config;
pub mod configuration_database;
pub mod rest_api;
pub mod site_call_audit;
pub mod startup;

pub use config::CentralConfig;
pub use startup::Central;
