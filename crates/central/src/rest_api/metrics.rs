//! `GET /metrics`: Prometheus text. With `metrics_token` set, only for its
//! bearer; without it (allowed only when `http_bind` is loopback), only
//! for a `Host` that is an IP address or `localhost`, so a web page whose
//! own name was rebound to 127.0.0.1 (DNS rebinding) cannot read the site
//! names and counts from a browser on central's machine.

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
    match &st.metrics_token {
        Some(expected) if !sitelink_net::has_bearer(&headers, expected) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "/metrics wants Authorization: Bearer <metrics_token>",
            ));
        }
        Some(_) => {}
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            if !sitelink_net::host_is_address(host) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Host {host:?} is not this central: without metrics_token, /metrics \
                         answers only a Host that is an IP address or localhost"
                    ),
                ));
            }
        }
    }
    let out = st.health.metrics().await.map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
