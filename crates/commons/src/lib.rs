//! Commons (SPEC §2 component 1, §3): the vocabulary that site and central
//! share.
//!
//! - [`TrackedOperationId`]: the UUID v7 every cached call, cached write and
//!   notification gets at call time; also the idempotency key of telemetry.
//! - [`TrackedOperationStatus`] and [`Kind`]: closed enums, written exactly as
//!   SPEC §3 names them (`Parked`, `ExternalCall`).
//! - [`lifecycle`]: the one transition table. Every status change at the site
//!   (and, later, at central) goes through [`lifecycle::check_transition`].
//! - [`TrackingRecord`]: the §7 JSON shape of a tracking row.
//! - [`contracts`]: the protobuf messages (prost, compiled by `protox`).
//! - [`check_notification`], [`safe_subject`], [`safe_body`]: the limits of
//!   a notification, checked at the site and enforced again at central.
//! - [`secret_eq`]: comparing a presented token without a timing leak.
//! - [`in_range`]: the range check of every numeric configuration key.
//! - [`fingerprint`]: an error text without its variable parts, the key of
//!   a failure group.
//! - [`RetryPolicy`]: interval, backoff, cap, jitter and retry budget, the
//!   same for a site's targets and central's SMTP server.
//! - [`reconnect`]: when a site dials central again (the jittered
//!   schedule) and central's "busy, retry after" answer.
//!
//! Invariants: terminal statuses never change; revisions start at 1 and only
//! grow; the protobuf schema is additive-only (guarded by a snapshot test).

mod config_range;
pub mod contracts;
mod fingerprint;
mod id;
pub mod lifecycle;
mod names;
mod notification;
pub mod reconnect;
mod record;
mod retry_policy;
mod secret;
mod status;

pub use config_range::{in_range, parse_limit};
pub use fingerprint::{fingerprint, FINGERPRINT_MAX_CHARS};
pub use id::{is_hyphenated_uuid, NotificationId, ParseIdError, TrackedOperationId};
pub use names::{InvalidName, SiteName};
pub use notification::{
    check_notification, safe_body, safe_subject, NotificationError, NOTIFICATION_BODY_MAX_BYTES,
    NOTIFICATION_LIST_MAX_CHARS, NOTIFICATION_SUBJECT_MAX_CHARS,
};
pub use record::{
    now_unix_ms, truncate_chars, unix_ms_to_utc, utc_to_unix_ms, TrackingRecord,
    LAST_ERROR_MAX_CHARS,
};
pub use retry_policy::RetryPolicy;
pub use secret::secret_eq;
pub use status::{Kind, TrackedOperationStatus, UnknownValue};
