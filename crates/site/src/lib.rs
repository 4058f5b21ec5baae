//! The site role of sitelink (SPEC §4): everything that runs at a site.
//!
//! Code map (one module per component of SPEC §2):
//! - [`store_and_forward`]: Store-and-Forward Engine: SQLite tracking table,
//!   buffer, change sequence, retry worker, parking, purge.
//! - [`external_system_gateway`]: External System Gateway: HTTP systems,
//!   database connections, error classification, the cached-call protocol.
//! - [`site_runtime`]: Site Runtime: sandboxed Rhai scripts and their API.
//! - [`notification_service`]: Notification Service: `Notify.Send` (a
//!   durable row and buffer entry, forwarded to central) and
//!   `Notify.Status` (central's answer, or the local record).
//! - [`central_link`]: Central–Site Communication, site half: the stream
//!   to central (telemetry, reconcile pages, relayed commands, forwarded
//!   notifications and their status questions).
//! - [`admin_api`]: the local admin HTTP API (loopback by default).
//! - [`config`]: the site configuration file (`site.toml`).
//! - [`startup`]: [`Site`], which wires the components and owns the loops.
//!
//! Architecture invariant: the site opens no inbound port except its local
//! admin API (it dials central, never the reverse); it works fully without
//! central.

pub mod admin_api;
pub mod central_link;
pub mod config;
pub mod external_system_gateway;
pub mod notification_service;
pub mod site_runtime;
pub mod startup;
pub mod store_and_forward;

pub use config::SiteConfig;
pub use startup::Site;
