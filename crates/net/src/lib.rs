//! What every sitelink port applies to the connections it accepts (SPEC §6
//! guarantee 7), shared by central's link and HTTP ports and the site's
//! admin API:
//!
//! - [`listeners`]: [`GuardedListener`] (a cap on connections open at once;
//!   a deadline by which a connection must be established) and
//!   [`GuardedStream`];
//! - [`http_server`]: the HTTP accept loop on hyper (header-read and idle
//!   timeout, optional rustls TLS, the client address as axum's
//!   `ConnectInfo`), because `axum::serve` offers none of these.
//!
//! Invariant: no sitelink port accepts a connection that these do not
//! bound.

pub mod http_server;
pub mod listeners;

pub use listeners::{
    ConnectionInfo, ConnectionLimits, Established, GuardedListener, GuardedStream,
};
