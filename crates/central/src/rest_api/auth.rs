//! Authentication of REST requests as an axum extractor: HTTP Basic (user
//! and password) or a bearer API token (schemes case-insensitive, RFC 9110
//! §11.1), checked by the shared [`crate::authentication::Authenticator`]
//! (bounded hashing, throttled failures, the client address from the
//! connection).

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{request::Parts, StatusCode},
};
use base64::Engine as _;

use super::{ApiError, ApiState};
use crate::configuration_database::User;

/// The operator a request is made by.
pub struct Authenticated(pub User);

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &ApiState) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                unauthorized("authentication required (HTTP Basic or a bearer API token)")
            })?
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not ASCII text"))?;
        let (scheme, credentials) = header.trim().split_once(' ').unwrap_or((header, ""));
        let credentials = credentials.trim();
        let user = if scheme.eq_ignore_ascii_case("Bearer") {
            st.auth.token(credentials).await?
        } else if scheme.eq_ignore_ascii_case("Basic") {
            let malformed =
                || unauthorized("malformed Basic credentials (base64 of user:password, UTF-8)");
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(malformed)?;
            let (name, password) = decoded.split_once(':').ok_or_else(malformed)?;
            let client = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            st.auth.password(name, password, client).await?
        } else {
            return Err(unauthorized(
                "unsupported authorization scheme (Basic or Bearer)",
            ));
        };
        Ok(Authenticated(user))
    }
}
