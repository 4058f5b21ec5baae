//! Test fakes shared by every test suite (never used by production code):
//!
//! - [`FakeHttp`]: an external system (axum) that can be told to answer
//!   200, 400, 429, 503, a non-JSON or a huge body, to hang past any
//!   timeout, to fail every n-th request, or to be down (port closed); it
//!   records every request with its `Idempotency-Key`.
//! - [`FakeSmtp`]: an SMTP server that accepts, answers 421/451/550, or is
//!   down, optionally requiring STARTTLS and AUTH PLAIN ([`SmtpSecurity`]);
//!   it records every message and counts them per Message-ID.
//! - [`TcpProxy`]: a fault-injecting TCP proxy that can cut all connections
//!   and refuse new ones, then heal.
//! - [`flood`]: many clients from their own loopback addresses sending
//!   HTTP Basic credentials, a latency probe, a process's resident memory
//!   (the authentication flood test and `sitelink bench auth`).
//! - [`fleet`]: simulated sites that speak the real link protocol, a
//!   thousand to a process (the fleet test and `sitelink bench fleet`).
//! - [`eventually`]: poll a condition with a timeout instead of sleeping.
//! - [`fresh_database`]: a new, randomly named database on the server an
//!   environment variable names, or a printed "skipped" without it.

mod database;
pub mod fleet;
pub mod flood;
mod http;
mod proxy;
mod smtp;

use std::{future::Future, time::Duration};

pub use database::{fresh_database, server_url, FreshDatabase};
pub use http::{FakeHttp, Mode, Recorded};
pub use proxy::TcpProxy;
pub use smtp::{FakeSmtp, ReceivedMail, SmtpMode, SmtpSecurity};

/// Polls `f` every 20 ms until it returns `Some`, and returns that value;
/// panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
