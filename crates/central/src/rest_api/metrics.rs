//! `GET /metrics`: Prometheus text, optionally behind a bearer token.

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};

use super::{
    errors::{internal, ApiError},
    ApiState,
};

/// Prometheus metrics ([`HealthMonitor::metrics`]).
pub(super) async fn metrics(
    State(st): State<ApiState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &st.metrics_token {
        if !sitelink_net::has_bearer(&headers, expected) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "/metrics wants Authorization: Bearer <metrics_token>",
            ));
        }
    }
    let out = st.health.metrics().await.map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
