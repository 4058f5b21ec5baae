//! What every page shares: the navigation bar ([`Nav`]), the page error
//! type ([`UiError`]: a page with the message, escaped, and the fitting
//! status; a 500 with a reference only), [`render`] and [`encode`].

use askama::Template;
use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Redirect, Response},
};

use super::asset_url;

/// What the layout's navigation bar shows.
pub struct Nav {
    pub user: String,
    pub role: &'static str,
    pub admin: bool,
    pub csrf: String,
    /// Which entry is the current page.
    pub active: &'static str,
    pub css: Vec<String>,
    pub js: Vec<String>,
}

impl Nav {
    /// The bar of a page shown before login (no entries).
    pub fn anonymous() -> Self {
        Self {
            user: String::new(),
            role: "",
            admin: false,
            csrf: String::new(),
            active: "",
            css: vec![asset_url("bootstrap.css"), asset_url("sitelink.css")],
            js: vec![asset_url("htmx.js"), asset_url("sitelink.js")],
        }
    }
}

/// Why a page could not be shown; rendered as a page with the message
/// (escaped) and the fitting status.
#[derive(Debug)]
pub enum UiError {
    /// No live session: to the login page, then back here.
    LoginNeeded {
        next: String,
        htmx: bool,
    },
    BadRequest(String),
    Forbidden(String),
    NotFound(String),
    /// A 500: the page shows a reference, the log the error.
    Internal(String),
}

impl UiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        UiError::Internal(sitelink_net::internal_error_reference(&e, "web UI"))
    }
}

impl From<anyhow::Error> for UiError {
    fn from(e: anyhow::Error) -> Self {
        UiError::internal(format!("{e:#}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    title: &'static str,
    message: String,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            UiError::LoginNeeded { next, htmx } => {
                let to = format!("/login?next={}", encode(&next));
                if htmx {
                    return (StatusCode::UNAUTHORIZED, [("hx-redirect", to)]).into_response();
                }
                return Redirect::to(&to).into_response();
            }
            UiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            UiError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            UiError::Internal(reference) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                format!("Something went wrong (reference {reference}; the central log has the details)."),
            ),
        };
        let page = ErrorPage {
            nav: Nav::anonymous(),
            title,
            message,
        };
        (status, render(&page)).into_response()
    }
}

/// A page as HTML (a template that cannot render is a 500).
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => UiError::internal(e).into_response(),
    }
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}
