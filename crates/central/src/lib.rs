//! The central role of sitelink (SPEC §5).
//!
//! Code map (one module per component of SPEC §2):
//! - [`configuration_database`]: Configuration Database: the central
//!   database (SQLite by default, PostgreSQL for production) through one
//!   sqlx `Any` pool, versioned migrations, and the repositories (`sites`,
//!   `site_calls`).
//!
//! Still to come (issue 3): the central–site link, the Site Call Audit actor
//! (reconcile schedule, relay, purge), KPIs, the REST API.

pub mod configuration_database;
