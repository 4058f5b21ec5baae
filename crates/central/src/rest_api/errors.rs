//! Error answers: `{ "error": "..." }` naming what was wrong, the JSON
//! body for every error some layer below gave as text, a 500 that carries
//! only a reference, and 414/431 for requests too large to read on.

use std::time::Duration;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::answers::ErrorBody;
use crate::authentication::AuthError;

/// Every answer: `Cache-Control: no-store` (operator data must not sit in
/// caches) and `X-Content-Type-Options: nosniff`; an error answer that some
/// layer below gave as plain text (an extractor's rejection, say) becomes
/// the JSON error body, keeping its message.
pub(super) async fn answer_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = match oversized(&req) {
        Some(refusal) => refusal.into_response(),
        None => next.run(req).await,
    };
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (parts, body) = resp.into_parts();
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let message = match text.trim() {
            "" => status.canonical_reason().unwrap_or("error").to_owned(),
            t => t.to_owned(),
        };
        resp = ApiError::new(status, message).into_response();
        for (name, value) in &parts.headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                resp.headers_mut().insert(name, value.clone());
            }
        }
    }
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// An error answer: `{ "error": "..." }` naming what was wrong, with
/// `Retry-After` when waiting helps (429, 503).
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        let headers = resp.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sitelink\""),
            );
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long is
            // no longer throttled.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, retry_after) = match &e {
            AuthError::Rejected | AuthError::Malformed(_) => (StatusCode::UNAUTHORIZED, None),
            AuthError::Throttled(d) => (StatusCode::TOO_MANY_REQUESTS, Some(*d)),
            AuthError::Busy(d) => (StatusCode::SERVICE_UNAVAILABLE, Some(*d)),
            AuthError::Internal(e) => return internal(e),
        };
        ApiError {
            status,
            message: e.to_string(),
            retry_after,
        }
    }
}

impl From<crate::operator_actions::export::ExportError> for ApiError {
    fn from(e: crate::operator_actions::export::ExportError) -> Self {
        use crate::operator_actions::export::ExportError;
        match e {
            ExportError::BadQuery(m) => bad(m),
            ExportError::UnknownSite(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            ExportError::Internal(e) => internal(e),
        }
    }
}

/// A 500 that carries a short reference, never the error itself: the
/// database's or a library's message goes to the log only, under the same
/// reference, so an operator can find it there.
pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    let reference = sitelink_net::internal_error_reference(&e, "REST API");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error (reference {reference}; the central log has the details)"),
    )
}

pub(super) fn bad(m: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, m)
}

/// Longest request target (path and query) answered.
pub(super) const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of request headers answered. (The HTTP server refuses heads
/// over 64 KiB before any handler, with a bare 431.)
pub(super) const MAX_HEADER_BYTES: usize = 32 * 1024;

/// 414 or 431, as the JSON error body, for a request too large to read on.
pub(super) fn oversized(req: &axum::extract::Request) -> Option<ApiError> {
    let uri = req.uri().to_string().len();
    if uri > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target has {uri} bytes; at most {MAX_URI_BYTES}"),
        ));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (headers > MAX_HEADER_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request headers have {headers} bytes; at most {MAX_HEADER_BYTES}"),
        )
    })
}

/// 200 with the JSON of `row`, or 404 saying what was not there.
pub(super) fn found<T: serde::Serialize>(
    row: Option<T>,
    missing: impl FnOnce() -> String,
) -> Result<Response, ApiError> {
    match row {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, missing())),
    }
}
