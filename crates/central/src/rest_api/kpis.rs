//! The KPI answer of both sources: global with `per_site`, or one site's.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

use super::{
    answers::GlobalKpis,
    errors::{internal, ApiError},
    ApiState,
};
use crate::{configuration_database::listing::no_site, health_monitoring::KpiSource};

/// Global KPIs with `per_site`, or one site's with `?site=` (404 for a site
/// central does not know; zeros for a known site with no rows).
pub(super) async fn kpis_answer(
    st: &ApiState,
    source: KpiSource,
    site: Option<&String>,
) -> Result<Response, ApiError> {
    if let Some(site) = site {
        return match st.health.site_kpis(source, site).await.map_err(internal)? {
            Some(one) => Ok(Json(one).into_response()),
            None => Err(ApiError::new(StatusCode::NOT_FOUND, no_site(site))),
        };
    }
    let view = st.health.kpis(source).await.map_err(internal)?;
    Ok(Json(GlobalKpis {
        total: view.total,
        per_site: Some(view.per_site),
    })
    .into_response())
}
