//! `/api/v1/site-calls…` and `/api/v1/kpis/site-calls`: the mirror of
//! every site's cached calls, Retry/Discard relayed to the owning site.

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    Json,
};

use super::{
    answers::{self, Busy, CommandAnswer, Errors, NotFound, SiteCallsPage},
    commands::act,
    errors::{bad, found, internal, ApiError},
    kpis::kpis_answer,
    params::{only, parse_id, site_param, KpisParams, KPIS},
    ApiState, Authenticated,
};
use crate::{
    configuration_database::{
        listing::{unknown_site, SiteCallExportParams, SiteCallListParams, DEFAULT_LIMIT},
        Dialect, GroupFilter, GroupParams, Grouped, ListQuery, Listed,
    },
    health_monitoring::KpiSource,
    operator_actions::{export, Subject},
};

/// Site calls, newest first, one page at a time.
///
/// Two rules that OpenAPI cannot state, each answered 400 with the error
/// body naming it: `from` must not be later than `to`, and `after` and
/// `before` are not given together. A `site` that names no registered site
/// is 404.
#[utoipa::path(get, path = "/api/v1/site-calls", tag = "site calls", params(SiteCallListParams),
    responses((status = 200, body = SiteCallsPage), Errors, Busy, answers::UnknownSite))]
pub(super) async fn list_site_calls(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let q = ListQuery::parse(&q, Listed::SiteCalls, Dialect::Api).map_err(|e| bad(e.0))?;
    if let Some(m) = q.unknown_site(&st.db).await.map_err(internal)? {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, m));
    }
    let listing = st
        .db
        .site_calls()
        .list_page(&q.filter, &q.page, q.limit_or(DEFAULT_LIMIT))
        .await
        .map_err(internal)?;
    Ok(Json(SiteCallsPage::from(listing)).into_response())
}

#[utoipa::path(get, path = "/api/v1/site-calls/{id}", tag = "site calls", params(("id" = uuid::Uuid, Path, description = "TrackedOperationId")),
    responses((status = 200, body = sitelink_commons::TrackingRecord), Errors, Busy, NotFound))]
pub(super) async fn get_site_call(
    State(st): State<ApiState>,
    _: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let row = st.db.site_calls().get(id).await.map_err(internal)?;
    found(row, || format!("no site call {id}"))
}

#[utoipa::path(post, path = "/api/v1/site-calls/{id}/retry", tag = "site calls", params(("id" = uuid::Uuid, Path, description = "TrackedOperationId")),
    responses((status = 200, description = "Applied", body = CommandAnswer), Errors, (status = 403, description = "the role may not retry or discard", body = answers::ErrorBody),
        (status = 404, description = "NotFound", body = CommandAnswer), (status = 409, description = "NotParked", body = CommandAnswer),
        (status = 502, description = "Error: the site could not apply it", body = CommandAnswer),
        (status = 503, description = "SiteUnreachable (a CommandAnswer), or every password check slot busy (an error body)", body = answers::UnavailableAnswer),
        (status = 504, description = "Timeout: not applied, or applied too late to be known (see the audit log)", body = CommandAnswer)))]
pub(super) async fn retry(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    relay(st, user, id, true).await
}

#[utoipa::path(post, path = "/api/v1/site-calls/{id}/discard", tag = "site calls", params(("id" = uuid::Uuid, Path, description = "TrackedOperationId")),
    responses((status = 200, description = "Applied", body = CommandAnswer), Errors, (status = 403, description = "the role may not retry or discard", body = answers::ErrorBody),
        (status = 404, description = "NotFound", body = CommandAnswer), (status = 409, description = "NotParked", body = CommandAnswer),
        (status = 502, description = "Error: the site could not apply it", body = CommandAnswer),
        (status = 503, description = "SiteUnreachable (a CommandAnswer), or every password check slot busy (an error body)", body = answers::UnavailableAnswer),
        (status = 504, description = "Timeout: not applied, or applied too late to be known (see the audit log)", body = CommandAnswer)))]
pub(super) async fn discard(
    st: State<ApiState>,
    user: Authenticated,
    id: Path<String>,
) -> Result<Response, ApiError> {
    relay(st, user, id, false).await
}

/// The call's attempt history and stored request, asked of its site now:
/// the last 20 attempts (time, duration, outcome, error, HTTP status or SQL
/// error code) and the request as stored for retries, secret-looking
/// values masked. 503 when the site has no live stream to this node, 504
/// when it does not answer in time, 404 when central or the site does not
/// know the call.
#[utoipa::path(get, path = "/api/v1/site-calls/{id}/attempts", tag = "site calls", params(("id" = uuid::Uuid, Path, description = "TrackedOperationId")),
    responses((status = 200, body = crate::operator_actions::history::AttemptHistory), Errors, NotFound,
        (status = 503, description = "the site is unreachable, or every password check slot is busy", headers(("Retry-After" = u64, description = "seconds to wait, when busy")), body = answers::ErrorBody),
        (status = 504, description = "the site did not answer in time", body = answers::ErrorBody)))]
pub(super) async fn attempts(
    State(st): State<ApiState>,
    _: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use crate::operator_actions::history::HistoryError;
    use axum::http::StatusCode;
    let id = parse_id(&id)?;
    match st.actions.attempt_history(id).await {
        Ok(h) => Ok(Json(h).into_response()),
        Err(e @ (HistoryError::NoCall(_) | HistoryError::SiteHasNone(_))) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ HistoryError::Unreachable(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
        Err(e @ HistoryError::Timeout(_)) => {
            Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()))
        }
        Err(HistoryError::Internal(e)) => Err(internal(format!("{e:#}"))),
    }
}

/// Retry/Discard through [`OperatorActions`] (the role check, the relay to
/// the owning site, the audit log), answered as SPEC §7 says.
pub(super) async fn relay(
    State(st): State<ApiState>,
    Authenticated(user): Authenticated,
    Path(id): Path<String>,
    retry: bool,
) -> Result<Response, ApiError> {
    act(&st, &user, Subject::SiteCall, retry, &id).await
}

/// The listing's filters (not its paging) and `format`: every site call that
/// the listing shows for them, newest first, streamed. `csv` has a header
/// line; `jsonl` one record a line, in the shape of the listing's items.
/// The listing's rule that OpenAPI cannot state holds here too: `from` must
/// not be later than `to` (400 with the error body). A `site` that names no
/// registered site is 404.
#[utoipa::path(get, path = "/api/v1/site-calls/export", tag = "site calls", params(SiteCallExportParams),
    responses((status = 200, description = "the calls, streamed", content((String = "text/csv"), (String = "application/x-ndjson"))), Errors, Busy, answers::UnknownSite))]
pub(super) async fn export(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    Ok(export::answer(&st.db, &q, Listed::SiteCalls, Dialect::Api).await?)
}

/// Failure groups: the Parked and Failed calls by target and error
/// fingerprint, largest first, each with its count per site, first and
/// last seen, and one sample error.
///
/// A group's calls are the listing's `status=Parked&status=Failed&target=<target>&fingerprint=<fingerprint>`.
/// A `site` that names no registered site is 404.
#[utoipa::path(get, path = "/api/v1/site-calls/groups", tag = "site calls", params(GroupParams),
    responses((status = 200, body = answers::GroupsAnswer), Errors, Busy, answers::UnknownSite))]
pub(super) async fn groups(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    groups_answer(&st, &q, Grouped::SiteCalls).await
}

/// The groups answer of a parsed query (both sources).
pub(super) async fn groups_answer(
    st: &ApiState,
    q: &[(String, String)],
    grouped: Grouped,
) -> Result<Response, ApiError> {
    let (filter, limit) = GroupFilter::parse(q, grouped, Dialect::Api).map_err(bad)?;
    if let Some(m) = unknown_site(&st.db, filter.site.as_deref())
        .await
        .map_err(internal)?
    {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, m));
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT) as usize;
    let (groups, total) = match grouped {
        Grouped::SiteCalls => st.db.site_calls().groups(&filter, limit).await,
        Grouped::Notifications => st.db.notifications().groups(&filter, limit).await,
    }
    .map_err(internal)?;
    Ok(Json(answers::GroupsAnswer {
        groups,
        total_groups: total as u64,
    })
    .into_response())
}

#[utoipa::path(get, path = "/api/v1/kpis/site-calls", tag = "KPIs", params(KpisParams),
    responses((status = 200, description = "global KPIs with per_site, or one site's without it", body = answers::GlobalKpis), Errors, Busy, answers::UnknownSite))]
pub(super) async fn kpis(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, KPIS)?;
    kpis_answer(&st, KpiSource::SiteCalls, site_param(&q, "site")?.as_ref()).await
}
