//! `/api/v1/bulk-actions…` (issue 21): Retry/Discard of every parked site
//! call a filter matches, previewed (`dry_run`), then started as a
//! recorded action the active node carries out at its pace; its progress;
//! cancel. The filter is the listing's, read by the listing's parser
//! ([`ListQuery::parse_filter_json`]); the work is
//! [`crate::operator_actions::OperatorActions`]'s, as for the pages.

use std::collections::{BTreeMap, HashMap};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use sitelink_commons::TrackingRecord;
use utoipa::ToSchema;

use super::{
    answers::{Busy, ErrorBody, Errors},
    errors::{bad, internal, ApiError},
    params::{limit_of, only, AuditLogParams, AUDIT_LOG},
    ApiState, Authenticated,
};
use crate::{
    configuration_database::{
        listing::unknown_site, rfc3339, BulkVerb, CreateError, ListQuery, Listed, Pace,
    },
    operator_actions::bulk::{BulkError, BulkView},
};

/// `POST /api/v1/bulk-actions`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// What to do to each parked call.
    #[schema(value_type = String, pattern = "^(retry|discard)$")]
    pub action: String,
    /// The listing's filter, as an object of its parameters (`site`,
    /// `kind`, `status` (an array), `target`, `target_is`, `fingerprint`,
    /// `from`, `to`): the parked calls among what the listing shows for
    /// it. Omitted: every parked call.
    #[serde(default)]
    #[schema(schema_with = filter_schema)]
    pub filter: Option<serde_json::Value>,
    /// Null or omitted: as fast as the sites take them.
    #[serde(default)]
    pub pace: Option<PaceBody>,
    /// True: answer the preview only, recording nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// The count the operator confirmed (from a preview): when given, the
    /// action is created only if the frozen set has exactly this many
    /// calls (409 otherwise).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000000)]
    pub expect_count: Option<u64>,
}

/// A bulk action's filter: the site-call listing's filter parameters as
/// an object (the listing's own table).
fn filter_schema() -> utoipa::openapi::Schema {
    crate::configuration_database::listing::filter_json_schema(Listed::SiteCalls)
}

/// The largest `expect_count` (the OpenAPI document states it too).
const MAX_EXPECT_COUNT: u64 = 1_000_000_000;

/// `at_once` calls at first, then `per_minute` a minute, across all sites.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaceBody {
    #[schema(minimum = 1, maximum = 1000000)]
    pub at_once: u32,
    #[schema(minimum = 1, maximum = 1000000)]
    pub per_minute: u32,
}

/// A dry run's answer: what the action would take now.
#[derive(Serialize, ToSchema)]
pub struct PreviewAnswer {
    pub count: u64,
    pub per_site: BTreeMap<String, u64>,
    /// The first calls of the set, newest first.
    pub first: Vec<TrackingRecord>,
}

/// How far an action is (calls per outcome).
#[derive(Serialize, ToSchema)]
pub struct ProgressView {
    pub applied: u64,
    /// Not parked any more when their turn came.
    pub not_parked: u64,
    pub not_found: u64,
    pub errors: u64,
    pub cancelled: u64,
    /// Without an outcome yet.
    pub open: u64,
    /// Open at sites without a live stream.
    pub waiting_for_site: u64,
}

/// One site's part of an action.
#[derive(Serialize, ToSchema)]
pub struct SitePart {
    pub site: String,
    pub online: bool,
    pub applied: u64,
    pub not_parked: u64,
    pub not_found: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub open: u64,
}

/// A bulk action as recorded, with its progress.
#[derive(Serialize, ToSchema)]
pub struct BulkActionView {
    pub id: String,
    #[schema(value_type = String, pattern = "^(retry|discard)$")]
    pub action: &'static str,
    pub operator: String,
    pub created_at_utc: String,
    #[schema(schema_with = filter_schema)]
    pub filter: serde_json::Value,
    /// Calls in the set frozen at creation.
    pub count: u64,
    pub pace: Option<PaceBody>,
    #[schema(value_type = String, pattern = "^(Running|Done|Cancelled)$")]
    pub state: &'static str,
    pub finished_at_utc: Option<String>,
    pub cancelled_by: Option<String>,
    pub progress: ProgressView,
    /// Per site (only on `GET /api/v1/bulk-actions/{id}` and cancel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_site: Option<Vec<SitePart>>,
}

#[derive(Serialize, ToSchema)]
pub struct BulkActionsPage {
    pub items: Vec<BulkActionView>,
    pub next: Option<String>,
}

impl BulkActionView {
    fn of(v: BulkView, with_sites: bool) -> Self {
        let a = v.action;
        let c = a.counts;
        Self {
            created_at_utc: rfc3339(a.created_at_ms),
            id: a.id,
            action: a.verb.as_str(),
            operator: a.operator,
            filter: a.filter,
            count: a.total,
            pace: a.pace.map(|p| PaceBody {
                at_once: p.at_once,
                per_minute: p.per_minute,
            }),
            state: a.state.as_str(),
            finished_at_utc: a.finished_at_ms.map(rfc3339),
            cancelled_by: a.cancelled_by,
            progress: ProgressView {
                applied: c.applied,
                not_parked: c.not_parked,
                not_found: c.not_found,
                errors: c.errors,
                cancelled: c.cancelled,
                open: c.open,
                waiting_for_site: v.waiting_for_site,
            },
            per_site: with_sites.then(|| {
                v.per_site
                    .into_iter()
                    .map(|s| SitePart {
                        site: s.site,
                        online: s.online,
                        applied: s.counts.applied,
                        not_parked: s.counts.not_parked,
                        not_found: s.counts.not_found,
                        errors: s.counts.errors,
                        cancelled: s.counts.cancelled,
                        open: s.counts.open,
                    })
                    .collect()
            }),
        }
    }
}

/// Retry or discard every parked site call a filter matches.
///
/// With `dry_run: true` the answer is the preview (200) and nothing is
/// recorded. Otherwise the set is frozen now (a call parked later is not in
/// it) and the action is recorded and answered (201); its sites apply it
/// at the pace given, and `GET /api/v1/bulk-actions/{id}` shows how far it
/// is. A filter `site` that names no registered site is 404. The
/// listing's rule that OpenAPI cannot state holds for the filter: `from`
/// must not be later than `to` (400). A filter that matches no parked
/// call, or more than one action takes (1,000,000), is 422; with
/// `expect_count`, a set of another size is 409 and nothing is recorded.
#[utoipa::path(post, path = "/api/v1/bulk-actions", tag = "bulk actions", request_body = BulkRequest,
    responses((status = 200, description = "the preview (dry_run)", body = PreviewAnswer),
        (status = 201, description = "started", body = BulkActionView), Errors, Busy,
        (status = 403, description = "the role may not start bulk actions", body = ErrorBody),
        (status = 404, description = "the filter's site is not registered", body = ErrorBody),
        (status = 409, description = "the set no longer has expect_count calls", body = ErrorBody),
        (status = 422, description = "no parked call matches, or more than one action takes", body = ErrorBody)))]
pub(super) async fn start(
    State(st): State<ApiState>,
    Authenticated(user): Authenticated,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: BulkRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("the body is not a bulk action request: {e}")))?;
    let verb = BulkVerb::parse(&req.action).map_err(bad)?;
    let filter = match &req.filter {
        None => Default::default(),
        Some(f) => ListQuery::parse_filter_json(f, Listed::SiteCalls).map_err(|e| bad(e.0))?,
    };
    let pace = req
        .pace
        .map(|p| Pace::new(p.at_once, p.per_minute))
        .transpose()
        .map_err(bad)?;
    // The schema's range, applied (a u64 would take values no count of
    // calls can reach; schemathesis sent 2^63).
    if req
        .expect_count
        .is_some_and(|n| !(1..=MAX_EXPECT_COUNT).contains(&n))
    {
        return Err(bad(format!("expect_count must be 1–{MAX_EXPECT_COUNT}")));
    }
    if let Some(m) = unknown_site(&st.db, filter.site.as_deref())
        .await
        .map_err(internal)?
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, m));
    }
    if req.dry_run {
        let p = st.actions.bulk_preview(&filter).await.map_err(internal)?;
        return Ok(Json(PreviewAnswer {
            count: p.count,
            per_site: p.per_site.into_iter().collect(),
            first: p.first,
        })
        .into_response());
    }
    let action = st
        .actions
        .bulk_start(&user, verb, filter, pace, req.expect_count)
        .await
        .map_err(bulk_error)?;
    let view = st
        .actions
        .bulk_view(&action.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("a bulk action vanished after it was created"))?;
    Ok((StatusCode::CREATED, Json(BulkActionView::of(view, true))).into_response())
}

/// Bulk actions, newest first.
#[utoipa::path(get, path = "/api/v1/bulk-actions", tag = "bulk actions", params(AuditLogParams),
    responses((status = 200, body = BulkActionsPage), Errors, Busy))]
pub(super) async fn list(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, AUDIT_LOG)?;
    let limit = limit_of(&q)?;
    let after = q.get("after").map(|a| action_id(a)).transpose()?;
    let items = st
        .actions
        .bulk_list(after.as_deref(), limit)
        .await
        .map_err(internal)?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|v| v.action.id.clone()))
        .flatten();
    Ok(Json(BulkActionsPage {
        items: items
            .into_iter()
            .map(|v| BulkActionView::of(v, false))
            .collect(),
        next,
    })
    .into_response())
}

/// One bulk action with its progress per site.
#[utoipa::path(get, path = "/api/v1/bulk-actions/{id}", tag = "bulk actions", params(("id" = uuid::Uuid, Path, description = "the bulk action's id")),
    responses((status = 200, body = BulkActionView), Errors, Busy,
        (status = 404, description = "no such bulk action", body = ErrorBody)))]
pub(super) async fn get_one(
    State(st): State<ApiState>,
    _: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = action_id(&id)?;
    match st.actions.bulk_view(&id).await.map_err(internal)? {
        Some(v) => Ok(Json(BulkActionView::of(v, true)).into_response()),
        None => Err(no_action(&id)),
    }
}

/// Cancels a running bulk action: calls not yet sent stay parked (those
/// already on their way may still be applied; the action's progress says
/// so). 409 when it is not running any more.
#[utoipa::path(post, path = "/api/v1/bulk-actions/{id}/cancel", tag = "bulk actions", params(("id" = uuid::Uuid, Path, description = "the bulk action's id")),
    responses((status = 200, description = "cancelled", body = BulkActionView), Errors, Busy,
        (status = 403, description = "the role may not cancel bulk actions", body = ErrorBody),
        (status = 404, description = "no such bulk action", body = ErrorBody),
        (status = 409, description = "it is not running (done or cancelled before)", body = ErrorBody)))]
pub(super) async fn cancel(
    State(st): State<ApiState>,
    Authenticated(user): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = action_id(&id)?;
    let Some((view, stopped)) = st
        .actions
        .bulk_cancel(&user, &id)
        .await
        .map_err(bulk_error)?
    else {
        return Err(no_action(&id));
    };
    if !stopped {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "bulk action {id} is not running: it is {}",
                view.action.state.as_str()
            ),
        ));
    }
    Ok(Json(BulkActionView::of(view, true)).into_response())
}

/// A bulk action's id (a UUID) from a path or `after`, or a 400.
fn action_id(s: &str) -> Result<String, ApiError> {
    sitelink_commons::is_hyphenated_uuid(s)
        .then(|| s.parse::<uuid::Uuid>().ok())
        .flatten()
        .map(|u| u.to_string())
        .ok_or_else(|| {
            bad(format!(
                "not a bulk action id (a UUID): {:?}",
                s.chars().take(60).collect::<String>()
            ))
        })
}

fn no_action(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no bulk action {id}"))
}

fn bulk_error(e: BulkError) -> ApiError {
    match e {
        BulkError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        BulkError::Refused(r @ CreateError::CountChanged { .. }) => {
            ApiError::new(StatusCode::CONFLICT, r.to_string())
        }
        BulkError::Refused(r) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.to_string()),
        BulkError::Internal(e) => internal(format!("{e:#}")),
    }
}
