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
//! Still to come (issue 3): the Site Call Audit actor (ingest batching,
//! purge), KPIs, the REST API, `sitelink central`.

pub mod communication;
pub mod config;
pub mod configuration_database;
pub mod startup;

pub use config::CentralConfig;
pub use startup::Central;
