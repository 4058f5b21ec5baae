//! Authentication of REST requests: HTTP Basic (user and password) or a
//! bearer API token, as an axum extractor.

use axum::{extract::FromRequestParts, http::request::Parts, http::StatusCode};
use base64::Engine as _;

use super::{internal, ApiError, ApiState};
use crate::configuration_database::User;

/// The operator a request is made by.
pub struct Authenticated(pub User);

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &ApiState) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_owned());
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                unauthorized("authentication required (HTTP Basic or a bearer API token)")
            })?;
        let user = if let Some(token) = header.strip_prefix("Bearer ") {
            st.db
                .users()
                .verify_token(token.trim())
                .await
                .map_err(internal)?
        } else if let Some(basic) = header.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
            let (name, password) = decoded
                .split_once(':')
                .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
            st.db
                .users()
                .verify_password(name, password)
                .await
                .map_err(internal)?
        } else {
            return Err(unauthorized(
                "unsupported authorization scheme (Basic or Bearer)",
            ));
        };
        user.map(Authenticated)
            .ok_or_else(|| unauthorized("wrong user name, password or token"))
    }
}
