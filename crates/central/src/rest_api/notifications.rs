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

use super::openapi::{Busy, Errors, NotFound};
use super::{
    act, found, internal, kpis_answer, list_params, only, openapi, parse_id, ApiError, ApiState,
    Authenticated,
};
use crate::{
    configuration_database::PageCursor, health_monitoring::KpiSource, operator_actions::Subject,
};

#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", params(openapi::ListQuery),
    responses((status = 200, body = openapi::NotificationsPage), Errors, Busy))]
pub(super) async fn list(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &["site", "status", "from", "to", "limit", "after"])?;
    let (filter, after, limit) = list_params(&q)?;
    let items = st
        .db
        .notifications()
        .list(&filter, after.as_ref(), limit)
        .await
        .map_err(internal)?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|r| PageCursor::of(&r.tracking).encode()))
        .flatten();
    Ok(Json(openapi::NotificationsPage { items, next }).into_response())
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
    responses((status = 200, description = "Applied", body = openapi::CommandAnswer), Errors, Busy,
        (status = 403, description = "the role may not retry or discard", body = openapi::ErrorBody),
        (status = 404, description = "NotFound", body = openapi::CommandAnswer), (status = 409, description = "NotParked", body = openapi::CommandAnswer)))]
pub(super) async fn retry(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    operate(st, user, id, true).await
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/discard", tag = "notifications", params(("id" = uuid::Uuid, Path, description = "NotificationId")),
    responses((status = 200, description = "Applied", body = openapi::CommandAnswer), Errors, Busy,
        (status = 403, description = "the role may not retry or discard", body = openapi::ErrorBody),
        (status = 404, description = "NotFound", body = openapi::CommandAnswer), (status = 409, description = "NotParked", body = openapi::CommandAnswer)))]
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

#[utoipa::path(get, path = "/api/v1/kpis/notifications", tag = "KPIs", params(openapi::KpisQuery),
    responses((status = 200, description = "global KPIs with per_site, or one site's without it", body = openapi::GlobalKpis), Errors, Busy, NotFound))]
pub(super) async fn kpis(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &["site"])?;
    kpis_answer(
        &st,
        KpiSource::Notifications,
        super::site_param(&q, "site")?.as_ref(),
    )
    .await
}
