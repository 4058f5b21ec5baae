//! `GET /api/v1/sites` and `GET /api/v1/cluster`.

use std::collections::HashMap;

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Response},
    Json,
};

use super::{
    answers::{Busy, Errors, SiteView, SitesPage},
    errors::{internal, ApiError},
    params::{limit_of, only, site_param, SitesParams, SITES},
    ApiState, Authenticated,
};
use crate::configuration_database::rfc3339;

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, description = "the central nodes and the leader lease", body = crate::cluster::ClusterView), Errors, Busy))]
pub(super) async fn cluster(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, &[])?;
    Ok(Json(st.health.cluster().await.map_err(internal)?).into_response())
}

#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", params(SitesParams),
    responses((status = 200, body = SitesPage), Errors, Busy))]
pub(super) async fn sites(
    State(st): State<ApiState>,
    _: Authenticated,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&q, SITES)?;
    let limit = limit_of(&q)?;
    let items: Vec<SiteView> = st
        .health
        .sites(site_param(&q, "after")?.as_deref(), limit)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|s| SiteView {
            online: s.online,
            last_seen_utc: s.last_seen_ms.map(rfc3339),
            cursor: s.cursor,
            reconcile_lag: s.reconcile_lag,
            revoked: s.revoked,
            name: s.name,
        })
        .collect();
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|s| s.name.clone()))
        .flatten();
    Ok(Json(SitesPage { items, next }).into_response())
}
