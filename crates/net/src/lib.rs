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
    ConnectionInfo, ConnectionLimits, Established, GuardedListener, GuardedStream, PerAddress,
};

/// Whether `headers` carry `Authorization: Bearer <expected>` (the scheme
/// case-insensitive, RFC 9110 §11.1; the token compared without a timing
/// leak): the one check of the fixed tokens that guard `/metrics` and the
/// site's admin API.
pub fn has_bearer(headers: &axum::http::HeaderMap, expected: &str) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .is_some_and(|(_, t)| sitelink_commons::secret_eq(t.trim().as_bytes(), expected.as_bytes()))
}

/// The name part of a `Host` header ("name", "name:port", "[v6]:port",
/// "v4:port").
pub fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    }
}

/// Whether a `Host` header names an IP address or `localhost`: what a
/// browser sends when it was pointed at the address itself, never when a
/// page's own name was rebound to it (DNS rebinding), the one check shared
/// by the site admin API and central's tokenless `/metrics`.
pub fn host_is_address(host: &str) -> bool {
    let name = host_name(host);
    name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

/// Logs an internal error under a fresh short reference and returns the
/// reference: a 500 carries only this, never the database's or a
/// library's message, and an operator finds the error in the log by it.
/// The one place the web pages and the REST API make that reference.
pub fn internal_error_reference(e: &dyn std::fmt::Display, surface: &str) -> String {
    let reference = format!("{:08x}", rand::random::<u32>());
    tracing::error!(error = %e, reference, surface, "internal error");
    reference
}
