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
//!   KPIs, audit log, metrics), HTTP Basic or bearer tokens.
//! - [`config`], [`startup`]: `central.toml` and [`Central`], which binds
//!   the link and HTTP listeners and serves both.
//!
//! Still to come (issue 3): the Site Call Audit actor (ingest batching,
//! retention purge), OpenAPI, TLS on the link, benchmarks.

pub mod communication;
pub mod config;
pub mod configuration_database;
pub mod rest_api;
pub mod startup;

pub use config::CentralConfig;
pub use startup::Central;
