//! Every page handler (one file per area: [`dashboard`], [`records`] for
//! Site Calls and the Notification Outbox, [`bulk`] for bulk actions,
//! [`admin`] for sites and users;
//! login and logout here), the page error type and the navigation bar.

pub mod admin;
pub mod bulk;
pub mod dashboard;
pub mod records;

use std::net::SocketAddr;

use askama::Template;
use axum::{
    extract::{ConnectInfo, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use serde::Deserialize;

pub use super::page::{encode, render, Nav, UiError};
use super::{
    session::{self, CheckedPost, CsrfField},
    UiState,
};
use crate::authentication::AuthError;

/// `/` → the dashboard (or the login page first).
pub async fn home() -> Redirect {
    Redirect::to("/dashboard")
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Nav,
    csrf: String,
    next: String,
    name: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Where to go after login: a path on this origin, else `/`. A path
/// starts with one `/` that is followed by neither `/` nor `\`, and holds
/// no backslash, whitespace or control character anywhere: browsers drop
/// tabs and newlines from a URL and read `\` as `/`, so `/\t/evil.example`
/// or `/\\evil.example` would leave this origin, and a control character
/// cannot go into a `Location` header at all.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n[1..].starts_with(['/', '\\'])
                && !n
                    .chars()
                    .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
                && n.len() <= 2048
                && !n.starts_with("/login") =>
        {
            n.to_owned()
        }
        _ => "/".into(),
    }
}

/// The login form, with a fresh login CSRF token in a cookie and a field.
pub async fn login_form(State(st): State<UiState>, Query(q): Query<NextQuery>) -> Response {
    login_page(
        &st,
        safe_next(q.next.as_deref()),
        String::new(),
        None,
        StatusCode::OK,
    )
}

fn login_page(
    st: &UiState,
    next: String,
    name: String,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let csrf = crate::configuration_database::random_secret();
    let page = LoginPage {
        nav: Nav::anonymous(),
        csrf: csrf.clone(),
        next,
        name,
        error,
    };
    let mut resp = (status, render(&page)).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(session::login_cookie(st.tls), &csrf, st.tls, Some(600)),
    );
    resp
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// Checks the password with the REST API's authenticator (the same
/// bounded hashing and the same throttle per user name and per address),
/// opens a session and sets its cookie.
pub async fn login(
    State(st): State<UiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    if let Err(e) = session::same_origin(&headers, st.tls) {
        return e.into_response();
    }
    let expected = session::cookie(&headers, session::login_cookie(st.tls)).unwrap_or_default();
    if expected.is_empty() || !session::same_secret(expected, &f.csrf) {
        return login_page(
            &st,
            next,
            f.name,
            Some("The login form had expired; please log in again.".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let user = match st
        .auth
        .password(&f.name, &f.password, Some(client.ip()))
        .await
    {
        Ok(u) => u,
        Err(e) => {
            let (status, message) = match &e {
                AuthError::Rejected | AuthError::Malformed(_) => (
                    StatusCode::UNAUTHORIZED,
                    "Wrong user name or password.".to_owned(),
                ),
                AuthError::Throttled(wait) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Too many failed logins for this user or from this address; try again in {} s.",
                        wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
                    ),
                ),
                AuthError::Busy(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Central is busy checking passwords; try again in a few seconds.".to_owned(),
                ),
                AuthError::Internal(e) => return UiError::internal(e).into_response(),
            };
            return login_page(&st, next, f.name, Some(message), status);
        }
    };
    let idle = st.idle_timeout.as_millis() as i64;
    if let Err(e) = st.db.ui_sessions().purge_idle(idle).await {
        tracing::warn!(error = %e, "purging idle web sessions");
    }
    let (secret, _csrf) = match st.db.ui_sessions().open(&user.name).await {
        Ok(s) => s,
        Err(e) => return UiError::internal(e).into_response(),
    };
    tracing::info!(user = %user.name, "web login");
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        session::set_cookie(session::session_cookie(st.tls), &secret, st.tls, None),
    );
    h.append(
        header::SET_COOKIE,
        session::set_cookie(session::login_cookie(st.tls), "", st.tls, Some(0)),
    );
    resp
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

impl CsrfField for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Ends the session (its row goes: the cookie is useless from now on).
pub async fn logout(
    State(st): State<UiState>,
    CheckedPost { op, .. }: CheckedPost<CsrfForm>,
) -> Result<Response, UiError> {
    st.db
        .ui_sessions()
        .close(&op.secret)
        .await
        .map_err(UiError::internal)?;
    tracing::info!(user = %op.user.name, "web logout");
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(session::session_cookie(st.tls), "", st.tls, Some(0)),
    );
    Ok(resp)
}
