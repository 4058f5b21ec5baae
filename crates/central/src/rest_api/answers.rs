//! What the REST API answers: the JSON bodies and the error responses
//! every operation may give, as types the handlers serialize and the
//! OpenAPI document names.

use std::collections::BTreeMap;

use serde::Serialize;
use sitelink_commons::TrackingRecord;
use utoipa::{IntoResponses, ToSchema};

use crate::{
    configuration_database::{AuditEntry, Kpis, Listing, NotificationRecord},
    site_call_audit::CommandOutcome,
};

/// A site as operators see it (SPEC §7).
#[derive(Serialize, ToSchema)]
pub struct SiteView {
    pub name: String,
    pub online: bool,
    /// RFC 3339 UTC, or null if never seen.
    pub last_seen_utc: Option<String>,
    /// Central has every change of the site up to this sequence.
    pub cursor: u64,
    /// Changes the site announced that central does not have yet.
    pub reconcile_lag: u64,
    pub revoked: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SitesPage {
    pub items: Vec<SiteView>,
    pub next: Option<String>,
}

/// A page of site calls, newest first.
#[derive(Serialize, ToSchema)]
pub struct SiteCallsPage {
    pub items: Vec<TrackingRecord>,
    /// Pass as `after` for the older rows; null when there are none.
    pub next: Option<String>,
    /// Pass as `before` for the newer rows; null when there are none.
    pub prev: Option<String>,
}

/// A page of notifications, newest first.
#[derive(Serialize, ToSchema)]
pub struct NotificationsPage {
    pub items: Vec<NotificationRecord>,
    /// Pass as `after` for the older rows; null when there are none.
    pub next: Option<String>,
    /// Pass as `before` for the newer rows; null when there are none.
    pub prev: Option<String>,
}

impl From<Listing<TrackingRecord>> for SiteCallsPage {
    fn from(l: Listing<TrackingRecord>) -> Self {
        Self {
            next: l.older.map(|c| c.encode()),
            prev: l.newer.map(|c| c.encode()),
            items: l.items,
        }
    }
}

impl From<Listing<NotificationRecord>> for NotificationsPage {
    fn from(l: Listing<NotificationRecord>) -> Self {
        Self {
            next: l.older.map(|c| c.encode()),
            prev: l.newer.map(|c| c.encode()),
            items: l.items,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next: Option<String>,
}

/// The answer to Retry/Discard: `Applied` (200), `NotFound` (404),
/// `NotParked` (409), `SiteUnreachable` (503), `Timeout` (504), `Error` (502).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandAnswer {
    /// The outcome's SPEC §7 name ([`CommandOutcome::NAMES`]).
    #[schema(schema_with = outcome_schema)]
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// KPIs: global with the same figures `per_site`, or (with `?site=`) one
/// site's, without `per_site`.
#[derive(Serialize, ToSchema)]
pub struct GlobalKpis {
    #[serde(flatten)]
    pub total: Kpis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_site: Option<BTreeMap<String, Kpis>>,
}

/// The error answers every authenticated operation may give.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// A parameter is malformed or out of its range (the message names it).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No credentials, or wrong ones (HTTP Basic or a bearer API token).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The request target is longer than 8 KiB.
    #[response(status = 414)]
    UriTooLong(ErrorBody),
    /// The request headers are larger than 32 KiB.
    #[response(status = 431)]
    HeadersTooLarge(ErrorBody),
    /// Too many failed logins for this user name or address.
    #[response(status = 429, headers(("Retry-After" = u64, description = "seconds to wait")))]
    Throttled(ErrorBody),
    /// An internal error; the body carries a reference the log also has.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// Every password check slot is busy (a read or a notification action).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Busy {
    #[response(status = 503, headers(("Retry-After" = u64, description = "seconds to wait")))]
    Busy(ErrorBody),
}

/// 503 on a relayed command: the site is unreachable (a command answer),
/// or every password check slot is busy (an error body).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum UnavailableAnswer {
    SiteUnreachable(CommandAnswer),
    Busy(ErrorBody),
}

/// What a single-record read may also answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum NotFound {
    /// No record with this id.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// `GET /api/v1/site-calls/groups`: the failure groups, largest first.
#[derive(Serialize, ToSchema)]
pub struct GroupsAnswer {
    pub groups: Vec<crate::configuration_database::FailureGroup>,
    /// Groups in all (more than `groups` holds when `limit` cut them).
    pub total_groups: u64,
}

/// What a listing with a `site` filter may also answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum UnknownSite {
    /// `site` names no registered site.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// Every error: what was wrong. (No other field: so that a command
/// answer, which has an `outcome`, is never mistaken for one.)
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}

/// The outcome names, from the outcome type itself.
fn outcome_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(CommandOutcome::NAMES))
        .build()
}
