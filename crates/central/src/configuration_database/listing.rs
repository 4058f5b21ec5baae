//! The one listing path of tracking rows (site calls and notifications),
//! shared by the web pages and the REST API: a query string is parsed once
//! into a [`ListQuery`] (filter, page, limit), the repositories answer it
//! with one SQL builder ([`page_rows`]), and [`Listing`] cuts the page and
//! says whether older and newer rows exist.
//!
//! Main types: [`ListFilter`] (site, kind, statuses, target contains,
//! time range), [`Page`] and [`PageCursor`] (keyset paging, newest first,
//! never OFFSET), [`ListQuery`] (the parser, with the parameter table the
//! OpenAPI document is made from: [`SiteCallListParams`],
//! [`NotificationListParams`]), [`Listing`].
//!
//! Invariants:
//! - A listing reads one row more than it shows: that row, never a guess
//!   from a full page, tells whether another page exists that way.
//! - Only the filters given become SQL conditions, so each query can use
//!   the index that fits it; values are always bound.
//! - The pages and the REST API differ only where a [`Dialect`] says so
//!   (the REST API refuses unknown or repeated parameters and takes RFC
//!   3339 times only; a page ignores empty and unknown fields and also
//!   takes a browser's `datetime-local` value); every value means the same
//!   in both.

use std::collections::BTreeSet;

use sitelink_commons::{
    utc_to_unix_ms, Kind, SiteName, TrackedOperationId, TrackedOperationStatus, TrackingRecord,
};
use utoipa::openapi::{
    path::{Parameter, ParameterBuilder, ParameterIn},
    schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type},
    Required,
};

use super::Database;

/// Most rows one REST page may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Rows of a REST page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// Longest `target` filter, in characters.
pub const MAX_TARGET_CHARS: usize = 200;

/// Filters of the Site Calls and Notification Outbox listings (all
/// optional). For notifications, `kind` is not used and `target_contains`
/// matches the list name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub site: Option<String>,
    pub kind: Option<Kind>,
    /// Any of these statuses (empty: every status).
    pub statuses: Vec<TrackedOperationStatus>,
    /// The target summary (a notification's list) contains this text.
    pub target_contains: Option<String>,
    /// The target summary (a notification's list) is exactly this (a
    /// failure group's target).
    pub target_is: Option<String>,
    /// Created at or after (ms since epoch).
    pub from_ms: Option<i64>,
    /// Created before (ms since epoch).
    pub to_ms: Option<i64>,
    /// The last error has this fingerprint (a failure group).
    pub fingerprint: Option<String>,
}

/// Where a page of the newest-first listing continues: the last row's
/// creation time and id. Text form: `<ms>.<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at_ms: i64,
    pub id: String,
}

impl PageCursor {
    pub fn of(r: &TrackingRecord) -> Self {
        Self {
            created_at_ms: utc_to_unix_ms(r.created_at_utc),
            id: r.tracked_operation_id.to_string(),
        }
    }

    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.id)
    }

    /// Exactly the form [`PageCursor::encode`] writes (and the OpenAPI
    /// pattern says): 1 to 15 digits, a dot, a hyphenated id. `key` names
    /// the parameter in the error.
    pub fn decode_param(key: &str, s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{key}: not a page cursor from this API: {:?}",
                s.chars().take(80).collect::<String>()
            )
        };
        let (ms, id) = s.split_once('.').ok_or_else(bad)?;
        if ms.is_empty() || ms.len() > 15 || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let created_at_ms = ms.parse().map_err(|_| bad())?;
        if !sitelink_commons::is_hyphenated_uuid(id) {
            return Err(bad());
        }
        let id: TrackedOperationId = id.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at_ms,
            id: id.to_string(),
        })
    }
}

/// Which page of a newest-first listing (keyset paging, never OFFSET).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Page {
    /// The newest rows.
    #[default]
    First,
    /// The rows just older than a cursor ("Older", REST `after`).
    After(PageCursor),
    /// The rows just newer than a cursor ("Newer", REST `before`), still
    /// shown newest first.
    Before(PageCursor),
}

/// One page of a listing, newest first, with the cursors of the pages on
/// either side (`None`: no rows that way).
#[derive(Clone, Debug, PartialEq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    /// `after` this for older rows.
    pub older: Option<PageCursor>,
    /// `before` this for newer rows.
    pub newer: Option<PageCursor>,
}

impl<T> Listing<T> {
    /// The page from `rows` read with [`page_rows`] for `limit + 1` rows
    /// (newest first): the extra row, if any, is the one furthest from the
    /// cursor, and only says that more rows exist that way.
    pub fn cut(
        mut rows: Vec<T>,
        page: &Page,
        limit: u32,
        cursor_of: impl Fn(&T) -> PageCursor,
    ) -> Self {
        let extra = rows.len() > limit as usize;
        if extra {
            // The oldest of a forward page, the newest (first) of a
            // backward one.
            let at = if matches!(page, Page::Before(_)) {
                0
            } else {
                rows.len() - 1
            };
            rows.remove(at);
        }
        let (more_older, more_newer) = match page {
            Page::First => (extra, false),
            Page::After(_) => (extra, true),
            Page::Before(_) => (true, extra),
        };
        Self {
            older: rows.last().filter(|_| more_older).map(&cursor_of),
            newer: rows.first().filter(|_| more_newer).map(&cursor_of),
            items: rows,
        }
    }
}

/// Which listing a query is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    SiteCalls,
    Notifications,
}

/// Where a query came from: the REST API or a web page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Unknown or repeated parameters and empty values are refused; times
    /// are RFC 3339.
    Api,
    /// Empty and unknown fields are ignored (a page is reached by
    /// hand-edited links too); times may also be a browser's
    /// `datetime-local` value, read as UTC; `id` jumps to a record.
    Page,
}

/// A listing's query string, parsed once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub page: Page,
    /// `limit` as given (a page shows a fixed number of rows).
    pub limit: Option<u32>,
    /// A pasted id (pages only): go straight to its record.
    pub id: Option<TrackedOperationId>,
}

/// A query parameter that was wrong, and how (a 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ListQueryError(pub String);

/// What a listing's parameter takes, for the parser and the OpenAPI
/// document alike.
enum Value {
    SiteName,
    Kind,
    Statuses,
    Text,
    ExactText,
    Fingerprint,
    Time,
    Limit,
    Cursor,
}

/// The parameters of the listings: name, what it takes, its description.
/// `kind` is for site calls only.
const PARAMS: &[(&str, Value, &str)] = &[
    ("site", Value::SiteName, "Only this site."),
    ("kind", Value::Kind, "Only this kind of site call."),
    (
        "status",
        Value::Statuses,
        "Only these statuses (repeat the parameter for several: any of them).",
    ),
    (
        "target",
        Value::Text,
        "The target summary (a notification's list) contains this text (at most 200 characters).",
    ),
    (
        "target_is",
        Value::ExactText,
        "The target summary (a notification's list) is exactly this (a failure group's target; at \
         most 200 characters).",
    ),
    (
        "fingerprint",
        Value::Fingerprint,
        "Only rows whose last error has this fingerprint: a failure group's key, as \
         `/api/v1/site-calls/groups` (or `/api/v1/notifications/groups`) gives it (at most 200 \
         characters).",
    ),
    (
        "from",
        Value::Time,
        "Created at or after (RFC 3339); must not be later than `to` (400 otherwise).",
    ),
    (
        "to",
        Value::Time,
        "Created before (RFC 3339); must not be earlier than `from` (400 otherwise).",
    ),
    ("limit", Value::Limit, "Page size, default 100."),
    (
        "after",
        Value::Cursor,
        "The `next` of the previous page: the rows just older.",
    ),
    (
        "before",
        Value::Cursor,
        "The `prev` of a page: the rows just newer (still newest first). Not with `after`.",
    ),
];

/// A site name, as the OpenAPI document states it (`SiteName::parse`).
pub const SITE_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$";
const CURSOR_PATTERN: &str =
    r"^[0-9]{1,15}\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

fn applies(listed: Listed, name: &str) -> bool {
    listed == Listed::SiteCalls || name != "kind"
}

impl ListQuery {
    /// Parses a listing's query string (as key/value pairs, in order).
    pub fn parse(
        pairs: &[(String, String)],
        listed: Listed,
        dialect: Dialect,
    ) -> Result<Self, ListQueryError> {
        let bad = |m: String| ListQueryError(m);
        let mut q = ListQuery::default();
        let mut seen = BTreeSet::new();
        let mut statuses = BTreeSet::new();
        for (k, v) in pairs {
            let v = match dialect {
                Dialect::Page => v.trim(),
                Dialect::Api => v.as_str(),
            };
            if v.contains('\0') {
                return Err(bad(format!("{k} contains a NUL byte")));
            }
            let known = PARAMS
                .iter()
                .find(|(name, ..)| name == k && applies(listed, name));
            let Some((name, value, _)) = known else {
                if dialect == Dialect::Page {
                    if k == "id" && !v.is_empty() {
                        q.id = Some(v.parse().map_err(|_| {
                            bad(format!(
                                "{:?} is not a TrackedOperationId (a UUID like 01a21dc7-e371-702d-9d9a-b8a61109dc05)",
                                v.chars().take(60).collect::<String>()
                            ))
                        })?);
                    }
                    continue;
                }
                let allowed: Vec<&str> = PARAMS
                    .iter()
                    .map(|(name, ..)| *name)
                    .filter(|name| applies(listed, name))
                    .collect();
                return Err(bad(format!(
                    "unknown query parameter {k:?} (allowed: {})",
                    allowed.join(", ")
                )));
            };
            if v.is_empty() && dialect == Dialect::Page {
                continue;
            }
            if !matches!(value, Value::Statuses) && !seen.insert(*name) && dialect == Dialect::Api {
                return Err(bad(format!("{name} is given more than once")));
            }
            match (name, value) {
                (_, Value::SiteName) => {
                    let s = SiteName::parse(v).map_err(|e| bad(format!("site: {e}")))?;
                    q.filter.site = Some(s.as_str().to_owned());
                }
                (_, Value::Kind) => {
                    q.filter.kind = Some(match v.parse::<Kind>() {
                        Ok(kind @ (Kind::ExternalCall | Kind::DatabaseWrite)) => kind,
                        Ok(Kind::Notification) if dialect == Dialect::Api => {
                            return Err(bad("kind: site calls are ExternalCall or DatabaseWrite; \
                                 notifications have their own API (/api/v1/notifications)"
                                .into()))
                        }
                        _ => {
                            return Err(bad(format!(
                                "kind must be ExternalCall or DatabaseWrite, got {v:?}"
                            )))
                        }
                    });
                }
                (_, Value::Statuses) => {
                    let s = v
                        .parse::<TrackedOperationStatus>()
                        .map_err(|e| bad(e.to_string()))?;
                    if statuses.insert(s.as_str()) {
                        q.filter.statuses.push(s);
                    }
                }
                (name, Value::Text) => {
                    q.filter.target_contains =
                        Some(bounded_text(name, v, MAX_TARGET_CHARS).map_err(bad)?);
                }
                (name, Value::ExactText) => {
                    q.filter.target_is =
                        Some(bounded_text(name, v, MAX_TARGET_CHARS).map_err(bad)?);
                }
                (name, Value::Fingerprint) => {
                    q.filter.fingerprint = Some(
                        bounded_text(name, v, sitelink_commons::FINGERPRINT_MAX_CHARS)
                            .map_err(bad)?,
                    );
                }
                (name, Value::Time) => {
                    let ms = parse_time(name, v, dialect).map_err(bad)?;
                    if *name == "from" {
                        q.filter.from_ms = Some(ms);
                    } else {
                        q.filter.to_ms = Some(ms);
                    }
                }
                (_, Value::Limit) => q.limit = Some(parse_limit(v).map_err(bad)?),
                (name, Value::Cursor) => {
                    let c = PageCursor::decode_param(name, v).map_err(bad)?;
                    if !matches!(q.page, Page::First) && dialect == Dialect::Api {
                        return Err(bad("give after or before, not both".into()));
                    }
                    q.page = if *name == "after" {
                        Page::After(c)
                    } else {
                        Page::Before(c)
                    };
                }
            }
        }
        if let (Some(from), Some(to)) = (q.filter.from_ms, q.filter.to_ms) {
            if from > to {
                return Err(bad("from must not be later than to".into()));
            }
        }
        Ok(q)
    }

    /// A filter alone, as a JSON object (a bulk action's `filter`): each
    /// member a listing parameter, its value a string or (for `status`)
    /// an array of strings, read by [`ListQuery::parse`] in the API's
    /// dialect, so it means exactly what the listing's query string means.
    /// The page parameters (`limit`, `after`, `before`) are refused: a
    /// filter names a set, not a page of it.
    pub fn parse_filter_json(
        value: &serde_json::Value,
        listed: Listed,
    ) -> Result<ListFilter, ListQueryError> {
        let bad = |m: String| ListQueryError(m);
        let serde_json::Value::Object(members) = value else {
            return Err(bad(
                "filter must be a JSON object of listing parameters".into()
            ));
        };
        let mut pairs = Vec::new();
        for (k, v) in members {
            if matches!(k.as_str(), "limit" | "after" | "before") {
                return Err(bad(format!(
                    "filter: {k} is a page parameter of the listing, not a filter"
                )));
            }
            match v {
                serde_json::Value::String(s) => pairs.push((k.clone(), s.clone())),
                serde_json::Value::Array(items) if k == "status" => {
                    for item in items {
                        let serde_json::Value::String(s) = item else {
                            return Err(bad(
                                "filter: status must be an array of status names".into()
                            ));
                        };
                        pairs.push((k.clone(), s.clone()));
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "filter: {k} must be a string{}",
                        if k == "status" {
                            " or an array of strings"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
        Ok(Self::parse(&pairs, listed, Dialect::Api)
            .map_err(|e| bad(format!("filter: {e}")))?
            .filter)
    }

    /// The page size: `limit`, or `default`.
    pub fn limit_or(&self, default: u32) -> u32 {
        self.limit.unwrap_or(default)
    }

    /// [`no_site`] when the `site` filter names a site central does not
    /// know (a 404 on a page and in the REST API alike): the KPIs' rule for
    /// `?site=`, so a mistyped name is said rather than shown as "no calls".
    /// (Sites are never deleted, only revoked: every row's site is known.)
    pub async fn unknown_site(
        &self,
        db: &Database,
    ) -> Result<Option<String>, super::sites::SitesError> {
        unknown_site(db, self.filter.site.as_deref()).await
    }
}

/// [`no_site`] when `site` names a site central does not know: the one
/// rule of every `site` parameter (listings, groups, KPIs).
pub async fn unknown_site(
    db: &Database,
    site: Option<&str>,
) -> Result<Option<String>, super::sites::SitesError> {
    match site {
        Some(s) if db.sites().get(s).await?.is_none() => Ok(Some(no_site(s))),
        _ => Ok(None),
    }
}

/// The answer to a `site` parameter that names no registered site.
pub fn no_site(name: &str) -> String {
    format!("no site {name:?}")
}

/// A page size: digits only (no sign, no space: what the OpenAPI document
/// calls an integer), 1 to [`MAX_LIMIT`]; else the message for the 400.
/// Every route with a `limit` reads it here.
pub fn parse_limit(v: &str) -> Result<u32, String> {
    sitelink_commons::parse_limit(v, MAX_LIMIT)
}

/// A text filter's value: not empty, at most `max` characters.
fn bounded_text(name: &str, v: &str, max: usize) -> Result<String, String> {
    if v.chars().count() > max {
        return Err(format!("{name}: at most {max} characters"));
    }
    if v.is_empty() {
        return Err(format!("{name} must not be empty"));
    }
    Ok(v.to_owned())
}

/// A time filter: RFC 3339; on a page also the browser's `datetime-local`
/// value (`2026-11-29T08:00` or with seconds), read as UTC.
fn parse_time(key: &str, v: &str, dialect: Dialect) -> Result<i64, String> {
    use time::{
        format_description::well_known::Rfc3339, macros::format_description, PrimitiveDateTime,
    };
    if let Ok(t) = time::OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(utc_to_unix_ms(t));
    }
    let shown = v.chars().take(40).collect::<String>();
    if dialect == Dialect::Api {
        return Err(format!(
            "{key} must be an RFC 3339 time (2026-01-31T08:00:00Z), got {shown:?}"
        ));
    }
    let with_seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let minutes = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    PrimitiveDateTime::parse(v, with_seconds)
        .or_else(|_| PrimitiveDateTime::parse(v, minutes))
        .map(|t| utc_to_unix_ms(t.assume_utc()))
        .map_err(|_| format!("{key} must be a UTC time like 2026-01-31T08:00, got {shown:?}"))
}

/// Rows an export reads ahead of the client (its memory bound).
const EXPORT_BUFFER: usize = 256;

/// Every row of `select` that `f` matches, newest first, decoded by
/// `decode`, as a stream that holds one pooled connection and at most
/// [`EXPORT_BUFFER`] rows: a task reads the rows into a bounded channel,
/// so memory stays flat at any count, and it stops as soon as the stream
/// is dropped (the client went away) or a row fails.
pub(super) fn export_rows<T: Send + 'static>(
    db: &Database,
    (select, target): (&str, &str),
    f: &ListFilter,
    decode: fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
) -> tokio_stream::wrappers::ReceiverStream<Result<T, sqlx::Error>> {
    use futures::StreamExt as _;
    let (sql, binds) = export_sql(select, target, f);
    let pool = db.pool().clone();
    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_BUFFER);
    tokio::spawn(async move {
        let q = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), binds);
        let mut rows = q.fetch(&pool);
        while let Some(row) = rows.next().await {
            let item = row.and_then(|r| decode(&r));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The OpenAPI parameters of a listing, from the table the parser reads.
fn openapi_params(listed: Listed) -> Vec<Parameter> {
    openapi_params_where(listed, |_| true)
}

/// The OpenAPI parameters of an export: the listing's filters (no page),
/// and `format`.
fn openapi_export_params(listed: Listed) -> Vec<Parameter> {
    let mut params =
        openapi_params_where(listed, |name| !matches!(name, "limit" | "after" | "before"));
    params.insert(
        0,
        ParameterBuilder::new()
            .name("format")
            .parameter_in(ParameterIn::Query)
            .required(Required::True)
            .description(Some(
                "`csv` (RFC 4180, a header line; a field that a spreadsheet would read as a \
                 formula starts with `'`) or `jsonl` (one JSON record a line).",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["csv", "jsonl"])),
            ))
            .build(),
    );
    params
}

/// What OpenAPI says a parameter of kind `value` takes.
fn value_schema(value: &Value) -> utoipa::openapi::Schema {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    match value {
        Value::SiteName => string().pattern(Some(SITE_PATTERN)).into(),
        Value::Kind => string()
            .enum_values(Some(["ExternalCall", "DatabaseWrite"]))
            .into(),
        Value::Statuses => ArrayBuilder::new()
            .items(
                string().enum_values(Some(
                    TrackedOperationStatus::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>(),
                )),
            )
            .into(),
        Value::Text | Value::ExactText => string()
            .min_length(Some(1))
            .max_length(Some(MAX_TARGET_CHARS))
            .pattern(Some("^[^\\x00]*$"))
            .into(),
        Value::Fingerprint => string()
            .min_length(Some(1))
            .max_length(Some(sitelink_commons::FINGERPRINT_MAX_CHARS))
            .pattern(Some("^[^\\x00]*$"))
            .into(),
        Value::Time => string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into(),
        Value::Limit => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(MAX_LIMIT))
            .into(),
        Value::Cursor => string().pattern(Some(CURSOR_PATTERN)).into(),
    }
}

/// The OpenAPI schema of a filter as a JSON object
/// ([`ListQuery::parse_filter_json`]): the listing's filter parameters
/// (not its page parameters), each as the query string takes it, and no
/// other member.
pub fn filter_json_schema(listed: Listed) -> utoipa::openapi::Schema {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ));
    for (name, value, description) in PARAMS.iter().filter(|(name, value, _)| {
        applies(listed, name) && !matches!(value, Value::Limit | Value::Cursor)
    }) {
        let schema = match value_schema(value) {
            utoipa::openapi::Schema::Object(o) => {
                let mut o = o;
                o.description = Some((*description).to_owned());
                utoipa::openapi::Schema::Object(o)
            }
            other => other,
        };
        object = object.property(*name, schema);
    }
    object.into()
}

fn openapi_params_where(listed: Listed, keep: impl Fn(&str) -> bool) -> Vec<Parameter> {
    PARAMS
        .iter()
        .filter(|(name, ..)| applies(listed, name) && keep(name))
        .map(|(name, value, description)| {
            let schema = value_schema(value);
            let mut p = ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(*description))
                .schema(Some(schema));
            if matches!(value, Value::Statuses) {
                p = p
                    .style(Some(utoipa::openapi::path::ParameterStyle::Form))
                    .explode(Some(true));
            }
            p.build()
        })
        .collect()
}

/// The query parameters of `GET /api/v1/site-calls`, as the OpenAPI
/// document states them (made from the parser's own table).
pub struct SiteCallListParams;

impl utoipa::IntoParams for SiteCallListParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        openapi_params(Listed::SiteCalls)
    }
}

/// The query parameters of `GET /api/v1/site-calls/export`.
pub struct SiteCallExportParams;

impl utoipa::IntoParams for SiteCallExportParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        openapi_export_params(Listed::SiteCalls)
    }
}

/// The query parameters of `GET /api/v1/notifications/export`.
pub struct NotificationExportParams;

impl utoipa::IntoParams for NotificationExportParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        openapi_export_params(Listed::Notifications)
    }
}

/// The query parameters of `GET /api/v1/notifications`.
pub struct NotificationListParams;

impl utoipa::IntoParams for NotificationListParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        openapi_params(Listed::Notifications)
    }
}

impl ListFilter {
    /// The filter as the listing's parameters (the form
    /// [`ListQuery::parse_filter_json`] reads back): only what is set,
    /// times in RFC 3339.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            m.insert(k.to_owned(), v);
        };
        if let Some(s) = &self.site {
            put("site", s.as_str().into());
        }
        if let Some(k) = self.kind {
            put("kind", k.as_str().into());
        }
        if !self.statuses.is_empty() {
            put(
                "status",
                self.statuses
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        if let Some(t) = &self.target_contains {
            put("target", t.as_str().into());
        }
        if let Some(t) = &self.target_is {
            put("target_is", t.as_str().into());
        }
        if let Some(f) = &self.fingerprint {
            put("fingerprint", f.as_str().into());
        }
        for (k, ms) in [("from", self.from_ms), ("to", self.to_ms)] {
            if let Some(ms) = ms {
                put(k, super::rfc3339(ms).into());
            }
        }
        serde_json::Value::Object(m)
    }

    /// The filter as a listing's query string (`site=a&status=Parked`),
    /// for links to the list, an export or a preview of exactly this set.
    pub fn to_query(&self) -> String {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        if let serde_json::Value::Object(m) = self.to_json() {
            for (k, v) in m {
                match v {
                    serde_json::Value::Array(items) => {
                        for i in items {
                            ser.append_pair(&k, i.as_str().unwrap_or_default());
                        }
                    }
                    v => {
                        ser.append_pair(&k, v.as_str().unwrap_or_default());
                    }
                }
            }
        }
        ser.finish()
    }
}

/// A value to bind in a query built from optional filters.
pub(super) enum Bind {
    Text(String),
    Int(i64),
}

/// The predicate of the status-led listing indexes (migration 6).
pub(super) const NOT_DELIVERED_PREDICATE: &str = "status <> 'Delivered'";

/// `select` (a `SELECT … FROM table` whose table has `source_site`, `kind`,
/// `status`, `created_at_ms`, `id` and the column `target`) filtered by
/// `f`, newest first (creation time, then id), the page `page`, at most
/// `limit` rows. A `Before` page is read oldest first from its cursor and
/// must be reversed by the caller.
pub(super) fn page_query(
    select: &str,
    target: &str,
    f: &ListFilter,
    page: &Page,
    limit: u32,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let (sql, binds) = page_sql(select, target, f, page, limit);
    bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), binds)
}

pub(super) fn bind_all(
    mut q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Int(i) => q.bind(i),
        };
    }
    q
}

/// One page of a listing of `(select, target column)`: [`page_query`] for
/// one row more than `limit`,
/// decoded by `decode`, newest first whichever way it was read, and cut by
/// [`Listing::cut`].
pub(super) async fn page_rows<T>(
    db: &Database,
    (select, target): (&str, &str),
    f: &ListFilter,
    page: &Page,
    limit: u32,
    decode: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
    cursor_of: impl Fn(&T) -> PageCursor,
) -> Result<Listing<T>, sqlx::Error> {
    let rows = page_query(select, target, f, page, limit + 1)
        .fetch_all(db.pool())
        .await?;
    let mut out = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    if matches!(page, Page::Before(_)) {
        out.reverse();
    }
    Ok(Listing::cut(out, page, limit, cursor_of))
}

/// `text` as a LIKE pattern that matches it anywhere, its wildcards
/// escaped (with `ESCAPE '!'`, the same on every backend).
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The conditions of `f` (values appended to `binds`), the same for a page
/// and an export.
fn filter_conditions(target: &str, f: &ListFilter, binds: &mut Vec<Bind>) -> Vec<String> {
    let mut conds: Vec<String> = Vec::new();
    let next = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        format!("${}", binds.len())
    };
    if let Some(s) = &f.site {
        let p = next(Bind::Text(s.clone()), binds);
        conds.push(format!("source_site = {p}"));
    }
    if let Some(k) = f.kind {
        let p = next(Bind::Text(k.as_str().into()), binds);
        conds.push(format!("kind = {p}"));
    }
    if !f.statuses.is_empty() {
        let mut statuses = f.statuses.clone();
        statuses.sort_by_key(|s| s.as_str());
        statuses.dedup();
        let ps: Vec<String> = statuses
            .iter()
            .map(|s| next(Bind::Text(s.as_str().into()), binds))
            .collect();
        conds.push(match ps.as_slice() {
            [one] => format!("status = {one}"),
            many => format!("status IN ({})", many.join(", ")),
        });
        if !statuses.contains(&TrackedOperationStatus::Delivered) {
            // Lets the planner use the status indexes, which leave
            // Delivered rows out (migration 6); Delivered listings walk the
            // creation-time indexes instead.
            conds.push(NOT_DELIVERED_PREDICATE.into());
        }
    }
    if let Some(t) = &f.target_contains {
        let p = next(Bind::Text(contains_pattern(t)), binds);
        conds.push(format!("{target} LIKE {p} ESCAPE '!'"));
    }
    if let Some(t) = &f.target_is {
        let p = next(Bind::Text(t.clone()), binds);
        conds.push(format!("{target} = {p}"));
    }
    if let Some(fp) = &f.fingerprint {
        let p = next(Bind::Text(fp.clone()), binds);
        conds.push(format!("fingerprint = {p}"));
    }
    if let Some(ms) = f.from_ms {
        let p = next(Bind::Int(ms), binds);
        conds.push(format!("created_at_ms >= {p}"));
    }
    if let Some(ms) = f.to_ms {
        let p = next(Bind::Int(ms), binds);
        conds.push(format!("created_at_ms < {p}"));
    }
    conds
}

/// Every row of `select` (see [`page_query`]) that `f` matches, newest
/// first, for an export: the listing's filter and order, without a page.
pub(super) fn export_sql(select: &str, target: &str, f: &ListFilter) -> (String, Vec<Bind>) {
    let (filter, binds) = where_sql(target, f);
    (
        format!("{select}{filter} ORDER BY created_at_ms DESC, id DESC"),
        binds,
    )
}

/// `f`'s conditions as a WHERE clause (empty without any), with its values.
pub(super) fn where_sql(target: &str, f: &ListFilter) -> (String, Vec<Bind>) {
    let mut binds = Vec::new();
    let conds = filter_conditions(target, f, &mut binds);
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (clause, binds)
}

/// The text and values of [`page_query`].
pub(super) fn page_sql(
    select: &str,
    target: &str,
    f: &ListFilter,
    page: &Page,
    limit: u32,
) -> (String, Vec<Bind>) {
    let mut binds: Vec<Bind> = Vec::new();
    let mut conds = filter_conditions(target, f, &mut binds);
    let next = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        format!("${}", binds.len())
    };
    let order = match page {
        Page::First => "DESC",
        Page::After(c) | Page::Before(c) => {
            let cmp = if matches!(page, Page::After(_)) {
                "<"
            } else {
                ">"
            };
            let ms = next(Bind::Int(c.created_at_ms), &mut binds);
            let id = next(Bind::Text(c.id.clone()), &mut binds);
            conds.push(format!(
                "(created_at_ms {cmp} {ms} OR (created_at_ms = {ms} AND id {cmp} {id}))"
            ));
            if cmp == "<" {
                "DESC"
            } else {
                "ASC"
            }
        }
    };
    let limit_p = next(Bind::Int(limit as i64), &mut binds);
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (
        format!("{select}{filter} ORDER BY created_at_ms {order}, id {order} LIMIT {limit_p}"),
        binds,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn both_dialects_read_the_same_filter() {
        let q = pairs(&[
            ("site", "north"),
            ("status", "Parked"),
            ("status", "Failed"),
            ("target", "erp"),
            ("from", "2026-01-01T00:00:00Z"),
        ]);
        let api = ListQuery::parse(&q, Listed::SiteCalls, Dialect::Api).unwrap();
        let page = ListQuery::parse(&q, Listed::SiteCalls, Dialect::Page).unwrap();
        assert_eq!(api, page);
        assert_eq!(
            api.filter.statuses,
            [
                TrackedOperationStatus::Parked,
                TrackedOperationStatus::Failed
            ]
        );
    }

    #[test]
    fn the_api_refuses_what_a_page_ignores() {
        for q in [
            pairs(&[("nope", "1")]),
            pairs(&[("site", "")]),
            pairs(&[("site", "a"), ("site", "b")]),
            pairs(&[("from", "2026-01-01T08:00")]),
            pairs(&[("kind", "ExternalCall")]),
        ] {
            assert!(
                ListQuery::parse(&q, Listed::Notifications, Dialect::Api).is_err(),
                "{q:?}"
            );
            assert!(
                ListQuery::parse(&q, Listed::Notifications, Dialect::Page).is_ok(),
                "{q:?}"
            );
        }
    }

    #[test]
    fn a_limit_is_digits_only() {
        assert_eq!(parse_limit("5"), Ok(5));
        assert_eq!(parse_limit("1000"), Ok(1000));
        for bad in [
            "+5",
            " 5",
            "5 ",
            "-5",
            "0",
            "1001",
            "",
            "5.0",
            "99999999999",
        ] {
            assert!(parse_limit(bad).unwrap_err().contains("limit"), "{bad:?}");
        }
    }

    #[test]
    fn a_cut_page_says_which_way_more_rows_are() {
        let cursor = |i: &i64| PageCursor {
            created_at_ms: *i,
            id: String::new(),
        };
        // Newest first: 9, 8, 7 read for a limit of 2.
        let l = Listing::cut(vec![9, 8, 7], &Page::First, 2, cursor);
        assert_eq!(l.items, [9, 8]);
        assert_eq!(l.older.map(|c| c.created_at_ms), Some(8));
        assert_eq!(l.newer, None);
        // Exactly the limit: no older page.
        let l = Listing::cut(vec![9, 8], &Page::First, 2, cursor);
        assert_eq!(l.older, None);
        // Before a cursor: the newest read row is the extra one.
        let l = Listing::cut(vec![9, 8, 7], &Page::Before(cursor(&6)), 2, cursor);
        assert_eq!(l.items, [8, 7]);
        assert_eq!(l.newer.map(|c| c.created_at_ms), Some(8));
        assert_eq!(l.older.map(|c| c.created_at_ms), Some(7));
    }
}
