//! The Site Call Audit actor's vocabulary for operator commands: what an
//! operator asks of a parked call ([`Command`]) and how it ended
//! ([`CommandOutcome`]). The link carries them; the Notification Outbox's
//! Retry/Discard ends in the same outcomes, so the pages and the REST API
//! show one set of names.

use sitelink_commons::TrackedOperationId;

/// An operator command for a parked call, relayed to its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Retry(TrackedOperationId),
    Discard(TrackedOperationId),
}

/// How an operator's Retry/Discard ended (SPEC §7 names): relayed to a
/// site for a site call, or applied by central itself for a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    Applied,
    NotFound,
    NotParked,
    SiteUnreachable,
    /// No answer in time. The command expired at the site before this was
    /// reported, so it was not applied, unless the site's answer took
    /// longer than the expiry margin to come back (then the late answer is
    /// in the audit log).
    Timeout,
    Error(String),
}

impl CommandOutcome {
    /// Every outcome's name, in the order of the variants.
    pub const NAMES: [&'static str; 6] = [
        "Applied",
        "NotFound",
        "NotParked",
        "SiteUnreachable",
        "Timeout",
        "Error",
    ];

    /// The SPEC §7 name (`Error` for a site-side failure).
    pub fn name(&self) -> &'static str {
        match self {
            CommandOutcome::Applied => "Applied",
            CommandOutcome::NotFound => "NotFound",
            CommandOutcome::NotParked => "NotParked",
            CommandOutcome::SiteUnreachable => "SiteUnreachable",
            CommandOutcome::Timeout => "Timeout",
            CommandOutcome::Error(_) => "Error",
        }
    }
}
