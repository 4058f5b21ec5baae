//! `/api/v1/notifications…` and `/api/v1/kpis/notifications`: the
//! Notification Outbox's rows. Same listing, paging, KPI shape and audit log
//! as the site calls; Retry/Discard act on central's own rows (central is
//! the deliverer), so they never need a site to be online.

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    Json,
};

use super::{
    answers::{self, Busy, Errors, NotFound},
    commands::act,
    errors::{bad, found, internal, ApiError},
    kpis::kpis_answer,
    params::{only, parse_id, site_param, KpisParams, KPIS},
    ApiState, Authenticated,
};
use crate::{
    configuration_database::{
        listing::{NotificationExportParams, NotificationListParams, DEFAULT_LIMIT},
        Dialect, Grouped, ListQuery, Listed, NotificationGroupParams,
    },
    health_monitoring::KpiSource,
    operator_actions::Subject,
};

/// The listing's filters (not its paging) and `format`: every notification that
/// the listing shows for them, newest first, streamed. `csv` has a header
/// line; `jsonl` one record a line, in the shape of the listing's items.
/// The listing's rule that OpenAPI cannot state holds here too: `from` must
/// not be later than `to` (400 with the error body). A `site` that names no
/// registered site is 404.
#[utoipa::path(get, path = "/api/v1/notifications/export", tag = "notifications", params(NotificationExportParams),
    responses((status = 200, description = "the notifications (with body and recipients), streamed", content((String = "text/csv"), (String = "application/x-ndjson"))), Errors, Busy, answers::UnknownSite))]
pub(super) async fn export(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    Ok(
        crate::operator_actions::export::answer(&st.db, &q, Listed::Notifications, Dialect::Api)
            .await?,
    )
}

/// Failure groups of the Notification Outbox: the Parked and Failed
/// notifications by list and error fingerprint, largest first, each with
/// its count per site, first and last seen, and one sample error.
///
/// A group's notifications are the listing's `status=Parked&status=Failed&target=<list>&fingerprint=<fingerprint>`.
/// A `site` that names no registered site is 404.
#[utoipa::path(get, path = "/api/v1/notifications/groups", tag = "notifications", params(NotificationGroupParams),
    responses((status = 200, body = answers::GroupsAnswer), Errors, Busy, answers::UnknownSite))]
pub(super) async fn groups(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    super::site_calls::groups_answer(&st, &q, Grouped::Notifications).await
}

/// Notifications, newest first, one page at a time.
///
/// Two rules that OpenAPI cannot state, each answered 400 with the error
/// body naming it: `from` must not be later than `to`, and `after` and
/// `before` are not given together. A `site` that names no registered site
/// is 404.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", params(NotificationListParams),
    responses((status = 200, body = answers::NotificationsPage), Errors, Busy, answers::UnknownSite))]
pub(super) async fn list(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let q = ListQuery::parse(&q, Listed::Notifications, Dialect::Api).map_err(|e| bad(e.0))?;
    if let Some(m) = q.unknown_site(&st.db).await.map_err(internal)? {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, m));
    }
    let listing = st
        .db
        .notifications()
        .list_page(&q.filter, &q.page, q.limit_or(DEFAULT_LIMIT))
        .await
        .map_err(internal)?;
    Ok(Json(answers::NotificationsPage::from(listing)).into_response())
}

#[utoipa::path(get, path = "/api/v1/notifications/{id}", tag = "notifications", params(("id" = uuid::Uuid, Path, description = "NotificationId")),
    responses((status = 200, body = crate::configuration_database::NotificationRecord), Errors, Busy, NotFound))]
pub(super) async fn get_one(
    State(st): State<ApiState>,
    _: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let row = st.db.notifications().get(id).await.map_err(internal)?;
    found(row, || format!("no notification {id}"))
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/retry", tag = "notifications", params(("id" = uuid::Uuid, Path, description = "NotificationId")),
    responses((status = 200, description = "Applied", body = answers::CommandAnswer), Errors, Busy,
        (status = 403, description = "the role may not retry or discard", body = answers::ErrorBody),
        (status = 404, description = "NotFound", body = answers::CommandAnswer), (status = 409, description = "NotParked", body = answers::CommandAnswer)))]
pub(super) async fn retry(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    operate(st, user, id, true).await
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/discard", tag = "notifications", params(("id" = uuid::Uuid, Path, description = "NotificationId")),
    responses((status = 200, description = "Applied", body = answers::CommandAnswer), Errors, Busy,
        (status = 403, description = "the role may not retry or discard", body = answers::ErrorBody),
        (status = 404, description = "NotFound", body = answers::CommandAnswer), (status = 409, description = "NotParked", body = answers::CommandAnswer)))]
pub(super) async fn discard(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    operate(st, user, id, false).await
}

async fn operate(
    State(st): State<ApiState>,
    Authenticated(user): Authenticated,
    Path(id): Path<String>,
    retry: bool,
) -> Result<Response, ApiError> {
    act(&st, &user, Subject::Notification, retry, &id).await
}

#[utoipa::path(get, path = "/api/v1/kpis/notifications", tag = "KPIs", params(KpisParams),
    responses((status = 200, description = "global KPIs with per_site, or one site's without it", body = answers::GlobalKpis), Errors, Busy, answers::UnknownSite))]
pub(super) async fn kpis(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, KPIS)?;
    kpis_answer(
        &st,
        KpiSource::Notifications,
        site_param(&q, "site")?.as_ref(),
    )
    .await
}
