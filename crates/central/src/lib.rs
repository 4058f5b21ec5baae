//! The central role of sitelink (SPEC §5).
//!
//! Code map (one module per component of SPEC §2):
//! - [`configuration_database`]: Configuration Database: the central
//!   database (SQLite by default, PostgreSQL for production) through one
//!   sqlx `Any` pool, versioned migrations, and the repositories (`sites`,
//!   `site_calls`).
//!
//! - [`authentication`]: operator password and token checks shared by the
//!   REST API and the web UI's login: argon2 off the runtime and bounded, a
//!   throttle on failures, a short cache of verified credentials.
//!
//! - [`communication`]: Central–Site Communication, central half: the
//!   gRPC service sites stream to (authentication, telemetry, reconcile,
//!   command relay).
//!
//! - [`health_monitoring`]: Health Monitoring: sites' connectivity, the KPI
//!   tiles global and per site, the dashboard's data, `/metrics`.
//! - [`central_ui`]: Central UI: the web pages (askama, htmx), sessions,
//!   CSRF and the security headers of every HTTP answer.
//! - [`operator_actions`]: Retry/Discard with the role check and the audit
//!   log, one function for the REST API and the pages.
//!
//! - [`notification_outbox`]: Notification Outbox: accepts forwarded
//!   notifications and delivers them over SMTP (lettre), with retries,
//!   parking, KPIs and a purge.
//! - [`rest_api`]: the REST API v1 (sites, site calls, Retry/Discard relay,
//!   KPIs, audit log, metrics, OpenAPI document), HTTP Basic or bearer
//!   tokens.
//! - [`site_call_audit`]: Site Call Audit: the `SiteCallAuditActor`, one
//!   task owning ingest batching, the reconcile schedule, the relay, the
//!   KPI counter fold and the retention purge.
//! - [`config`], [`startup`]: `central.toml` and [`Central`], which binds
//!   the link and HTTP listeners and serves both.
//!
pub mod authentication;
pub mod central_ui;
pub mod cluster;
pub mod communication;
pub mod config;
pub mod configuration_database;
pub mod health_monitoring;
pub mod notification_outbox;
pub mod operator_actions;
pub mod rest_api;
pub mod site_call_audit;
pub mod startup;

pub use config::CentralConfig;
pub use startup::Central;
