//! Who is logged in, and whether a request may change anything.
//!
//! - [`Operator`]: the axum extractor of a logged-in user: the session
//!   cookie's secret looked up in the Configuration Database
//!   ([`crate::configuration_database::UiSessions`]) on every request, so
//!   logout, a disabled user, a reset password and idleness end a session
//!   at once. Without a live session a page redirects to the login page
//!   (an htmx request gets `HX-Redirect`, so the whole page goes there).
//! - [`Operator::check_post`]: a state-changing request must come from this
//!   origin (Origin, else Referer; neither is refused) and carry the
//!   session's CSRF token (form field `csrf`, or header `X-CSRF-Token`),
//!   compared in constant time.
//! - Cookies: HttpOnly, SameSite=Strict, Path=/; with TLS also Secure and
//!   the `__Host-` prefix (a cookie no subdomain or plain-HTTP page can
//!   set).
//!
//! The cookie is a random 256-bit secret, not a signed value: forging one
//! means guessing 256 bits, and the server keeps only its hash, so a
//! signature would add a key to manage and nothing to defend.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, HeaderMap, HeaderValue},
    Form,
};

use super::{
    page::{Nav, UiError},
    UiState,
};
use crate::configuration_database::User;

/// The session cookie's name.
pub fn session_cookie(tls: bool) -> &'static str {
    if tls {
        "__Host-sitelink_session"
    } else {
        "sitelink_session"
    }
}

/// The login form's CSRF cookie (double submit: no session exists yet).
pub fn login_cookie(tls: bool) -> &'static str {
    if tls {
        "__Host-sitelink_login"
    } else {
        "sitelink_login"
    }
}

/// A `Set-Cookie` value; `max_age` None makes it last as long as the
/// browser session, `Some(0)` deletes it.
pub fn set_cookie(name: &str, value: &str, tls: bool, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if tls {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A cookie's value from the request's `Cookie` headers. (Cookie headers
/// are `name=value` pairs split by `;`: no crate needed for reading one.)
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether two secrets are equal, in time independent of where they
/// differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether a request comes from a page of this origin: its `Origin`, or
/// without one its `Referer`, names this scheme and `Host`.
pub fn same_origin(headers: &HeaderMap, tls: bool) -> Result<(), UiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| UiError::Forbidden("the request has no Host header".into()))?;
    let origin = format!("{}://{host}", if tls { "https" } else { "http" });
    let from = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let ok = match (from(header::ORIGIN), from(header::REFERER)) {
        (Some(o), _) => o == origin,
        (None, Some(r)) => r == origin || r.starts_with(&format!("{origin}/")),
        (None, None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(UiError::Forbidden(
            "refused: the request did not come from a page of this site (Origin/Referer check)"
                .into(),
        ))
    }
}

/// A logged-in user and their session.
pub struct Operator {
    pub user: User,
    /// The session's CSRF token (every form carries it).
    pub csrf: String,
    /// The cookie secret (to end this session at logout).
    pub secret: String,
}

impl Operator {
    /// Refuses a state-changing request from another origin or without the
    /// session's CSRF token.
    pub fn check_post(
        &self,
        headers: &HeaderMap,
        tls: bool,
        form_token: Option<&str>,
    ) -> Result<(), UiError> {
        same_origin(headers, tls)?;
        let sent = form_token.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
        match sent {
            Some(t) if same_secret(t, &self.csrf) => Ok(()),
            _ => Err(UiError::Forbidden(
                "refused: the form's CSRF token is missing or stale; reload the page and try again"
                    .into(),
            )),
        }
    }

    /// 403 unless the user is an Admin.
    pub fn require_admin(&self) -> Result<(), UiError> {
        if self.user.role.may_administer() {
            Ok(())
        } else {
            Err(UiError::Forbidden(format!(
                "role {} may not manage sites and users",
                self.user.role.as_str()
            )))
        }
    }
}

impl FromRequestParts<UiState> for Operator {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, st: &UiState) -> Result<Self, UiError> {
        let login = || UiError::LoginNeeded {
            next: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            htmx: parts.headers.contains_key("hx-request"),
        };
        let Some(secret) = cookie(&parts.headers, session_cookie(st.tls)) else {
            return Err(login());
        };
        // A secret is 64 hex digits; anything else cannot be one.
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(login());
        }
        let idle_ms = st.idle_timeout.as_millis() as i64;
        match st.db.ui_sessions().find(secret, idle_ms).await {
            Ok(Some(s)) => Ok(Operator {
                user: s.user,
                csrf: s.csrf_token,
                secret: secret.to_owned(),
            }),
            Ok(None) => Err(login()),
            Err(e) => Err(UiError::internal(e)),
        }
    }
}

/// What a form posted to a state-changing route carries besides its
/// fields: the session's CSRF token (empty when the form has none).
pub trait CsrfField {
    fn csrf(&self) -> &str;
}

/// A state-changing form POST from a logged-in operator, checked before
/// the handler sees it: the request comes from this origin, and carries
/// the session's CSRF token in the form's `csrf` field or, when the form
/// has none, in the `X-CSRF-Token` header ([`Operator::check_post`]).
/// Every POST handler of a logged-in page takes its form through this.
pub struct CheckedPost<T> {
    pub op: Operator,
    pub form: T,
}

impl<T> FromRequest<UiState> for CheckedPost<T>
where
    T: serde::de::DeserializeOwned + CsrfField + Send,
{
    type Rejection = UiError;

    async fn from_request(req: Request, st: &UiState) -> Result<Self, UiError> {
        let (mut parts, body) = req.into_parts();
        let op = Operator::from_request_parts(&mut parts, st).await?;
        let headers = parts.headers.clone();
        let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), st)
            .await
            .map_err(|e| UiError::BadRequest(e.body_text()))?;
        let token = form.csrf();
        op.check_post(&headers, st.tls, (!token.is_empty()).then_some(token))?;
        Ok(Self { op, form })
    }
}

impl Nav {
    /// The bar of a logged-in operator's page (here rather than in `page`,
    /// which knows nothing of sessions).
    pub fn of(op: &Operator, active: &'static str) -> Self {
        Self {
            user: op.user.name.clone(),
            role: op.user.role.as_str(),
            admin: op.user.role.may_administer(),
            csrf: op.csrf.clone(),
            active,
            ..Self::anonymous()
        }
    }
}
