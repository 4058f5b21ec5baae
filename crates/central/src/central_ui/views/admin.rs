//! The Sites and Users pages (role Admin): add a site (its token shown
//! once, with the `[central]` block for its site.toml), revoke one; add a
//! user, change a role, disable or enable, reset a password, issue and
//! revoke API tokens. Every action is written to the audit log (the site's
//! or user's name in place of an id).

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use sitelink_commons::SiteName;

use super::{encode, records::ConfirmPage, render, CsrfForm, Nav, UiError};
use crate::{
    authentication::{self, AccountError, PasswordError},
    central_ui::{
        format,
        session::{CheckedPost, CsrfField, Operator},
        UiState,
    },
    configuration_database::{now_ms, Role, SitesError, TokenInfo, UserInfo, Users, UsersError},
};

/// Sites shown per page of the Sites page.
const SITES_PER_PAGE: u32 = 200;

pub struct SiteRow {
    pub name: String,
    pub online: bool,
    pub revoked: bool,
    pub last_seen: String,
    pub reconcile_lag: u64,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesPage {
    nav: Nav,
    sites: Vec<SiteRow>,
    next: Option<String>,
    message: Option<(bool, String)>,
}

#[derive(Template)]
#[template(path = "site_added.html")]
struct SiteAdded {
    nav: Nav,
    name: String,
    token: String,
    block: String,
}

#[derive(Deserialize)]
pub struct AfterQuery {
    after: Option<String>,
    done: Option<String>,
}

/// Writes an administration action to the audit log.
async fn audit(
    st: &UiState,
    op: &Operator,
    action: &str,
    subject: &str,
    outcome: &str,
) -> Result<(), UiError> {
    // A refused name may hold what no column can (a NUL): the entry shows
    // it with U+FFFD instead, so the refusal is still recorded.
    let subject = subject.replace('\0', "\u{fffd}");
    st.db
        .audit_log()
        .record(&op.user.name, action, &subject, None, outcome)
        .await
        .map_err(UiError::internal)
}

fn done_message(done: Option<&str>) -> Option<(bool, String)> {
    // Only known names are read from the URL: no text of it reaches the page.
    Some(match done? {
        "revoked" => (
            true,
            "The site is revoked: its streams are closed and its token refused.".into(),
        ),
        "added" => (true, "User added.".into()),
        "role" => (
            true,
            "Role changed; it applies from the user's next request.".into(),
        ),
        "disabled" => (
            true,
            "User disabled: their sessions and API tokens stopped working.".into(),
        ),
        "enabled" => (true, "User enabled.".into()),
        "password" => (true, "Password reset; the user's sessions ended.".into()),
        "token-revoked" => (true, "API token revoked.".into()),
        _ => return None,
    })
}

pub async fn sites(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<AfterQuery>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => {
            Some(SiteName::parse(a).map_err(|e| UiError::BadRequest(format!("after: {e}")))?)
        }
    };
    let now = now_ms();
    let sites = st
        .health
        .sites(after.as_ref().map(|a| a.as_str()), SITES_PER_PAGE)
        .await?;
    let next = (sites.len() as u32 == SITES_PER_PAGE)
        .then(|| {
            sites
                .last()
                .map(|s| format!("/sites?after={}", encode(&s.name)))
        })
        .flatten();
    Ok(render(&SitesPage {
        nav: Nav::of(&op, "sites"),
        sites: sites
            .into_iter()
            .map(|s| SiteRow {
                last_seen: s
                    .last_seen_ms
                    .map(|ms| format!("{} ({})", format::utc(ms), format::ago(ms, now)))
                    .unwrap_or_else(|| "never".into()),
                name: s.name,
                online: s.online,
                revoked: s.revoked,
                reconcile_lag: s.reconcile_lag,
            })
            .collect(),
        next,
        message: done_message(q.done.as_deref()),
    }))
}

#[derive(Deserialize)]
pub struct AddSiteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

impl CsrfField for AddSiteForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn add_site(
    State(st): State<UiState>,
    headers: HeaderMap,
    CheckedPost { op, form: f }: CheckedPost<AddSiteForm>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    let name = SiteName::parse(f.name.trim())
        .map_err(|e| UiError::BadRequest(format!("site name: {e}")))?;
    let token = match st.db.sites().add(&name).await {
        Ok(t) => t,
        Err(e @ SitesError::AlreadyExists(_)) => {
            audit(&st, &op, "site add", name.as_str(), "AlreadyExists").await?;
            return Err(UiError::BadRequest(e.to_string()));
        }
        Err(e) => return Err(UiError::internal(e)),
    };
    audit(&st, &op, "site add", name.as_str(), "Applied").await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':').map(|(host, _)| host).or(Some(h)))
        .unwrap_or("central");
    let scheme = if st.link_tls { "https" } else { "http" };
    let block = format!(
        "[central]\naddresses = [\"{scheme}://{host}:{}\"]\ntoken = \"{}\"\n",
        st.link_port,
        token.as_str()
    );
    Ok(render(&SiteAdded {
        nav: Nav::of(&op, "sites"),
        name: name.as_str().to_owned(),
        token: token.as_str().to_owned(),
        block,
    }))
}

pub async fn confirm_revoke(
    State(st): State<UiState>,
    op: Operator,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    let name = SiteName::parse(&name).map_err(|e| UiError::BadRequest(format!("site: {e}")))?;
    if st
        .db
        .sites()
        .get(name.as_str())
        .await
        .map_err(UiError::internal)?
        .is_none()
    {
        return Err(UiError::NotFound(format!("no site {}", name.as_str())));
    }
    Ok(render(&ConfirmPage {
        nav: Nav::of(&op, "sites"),
        question: format!("Revoke site {}?", name.as_str()),
        detail: "Its token stops working and its open stream closes. Its calls stay in Site Calls. This cannot be undone: a revoked site needs a new name to come back.".into(),
        button: "Revoke",
        danger: true,
        post_to: format!("/sites/{}/revoke", name.as_str()),
        cancel: "/sites".into(),
    }))
}

pub async fn revoke_site(
    State(st): State<UiState>,
    Path(name): Path<String>,
    CheckedPost { op, .. }: CheckedPost<CsrfForm>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    let name = SiteName::parse(&name).map_err(|e| UiError::BadRequest(format!("site: {e}")))?;
    match st.db.sites().revoke(name.as_str()).await {
        Ok(()) => {}
        Err(e @ SitesError::NotFound(_)) => return Err(UiError::NotFound(e.to_string())),
        Err(e) => return Err(UiError::internal(e)),
    }
    audit(&st, &op, "site revoke", name.as_str(), "Applied").await?;
    Ok(Redirect::to("/sites?done=revoked").into_response())
}

pub struct UserRow {
    pub name: String,
    pub role: &'static str,
    pub disabled: bool,
    pub created: String,
    pub href: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    users: Vec<UserRow>,
    roles: Vec<&'static str>,
    message: Option<(bool, String)>,
}

fn user_row(u: UserInfo) -> UserRow {
    UserRow {
        href: format!("/users/{}", u.name),
        role: u.role.as_str(),
        disabled: u.disabled,
        created: format::utc(u.created_at_ms),
        name: u.name,
    }
}

fn roles() -> Vec<&'static str> {
    Role::ALL.iter().map(|r| r.as_str()).collect()
}

pub async fn users(
    State(st): State<UiState>,
    op: Operator,
    Query(q): Query<AfterQuery>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    let users = st.db.users().list().await.map_err(UiError::internal)?;
    Ok(render(&UsersPage {
        nav: Nav::of(&op, "users"),
        users: users.into_iter().map(user_row).collect(),
        roles: roles(),
        message: done_message(q.done.as_deref()),
    }))
}

/// A users-repository error as a page: the caller's mistakes are 4xx
/// naming what was wrong; the rest a 500.
fn users_error(e: impl Into<AccountError>) -> UiError {
    match e.into() {
        e @ (AccountError::Users(UsersError::AlreadyExists(_) | UsersError::InvalidName(_))
        | AccountError::Password(PasswordError::Weak | PasswordError::Nul)) => {
            UiError::BadRequest(e.to_string())
        }
        e @ AccountError::Users(UsersError::NotFound(_)) => UiError::NotFound(e.to_string()),
        e => UiError::internal(e),
    }
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    label: String,
}

impl CsrfField for UserForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

fn parse_role(r: &str) -> Result<Role, UiError> {
    r.parse().map_err(UiError::BadRequest)
}

pub async fn add_user(
    State(st): State<UiState>,
    CheckedPost { op, form: f }: CheckedPost<UserForm>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    let role = parse_role(&f.role)?;
    let name = f.name.trim();
    let res = authentication::add_user(&st.db, name, &f.password, role).await;
    audit(
        &st,
        &op,
        "user add",
        name,
        if res.is_ok() { "Applied" } else { "Refused" },
    )
    .await?;
    res.map_err(users_error)?;
    Ok(Redirect::to("/users?done=added").into_response())
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    nav: Nav,
    user: UserRow,
    roles: Vec<&'static str>,
    tokens: Vec<TokenInfo>,
    /// A token just issued: shown once.
    issued: Option<(String, String)>,
    message: Option<(bool, String)>,
}

async fn user_page(
    st: &UiState,
    op: &Operator,
    name: &str,
    issued: Option<(String, String)>,
    done: Option<&str>,
) -> Result<Response, UiError> {
    let users = st.db.users().list().await.map_err(UiError::internal)?;
    let Some(user) = users.into_iter().find(|u| u.name == name) else {
        return Err(UiError::NotFound(format!("no user {name:?}")));
    };
    let tokens = st.db.users().tokens(name).await.map_err(users_error)?;
    Ok(render(&UserPage {
        nav: Nav::of(op, "users"),
        user: user_row(user),
        roles: roles(),
        tokens,
        issued,
        message: done_message(done),
    }))
}

pub async fn user(
    State(st): State<UiState>,
    op: Operator,
    Path(name): Path<String>,
    Query(q): Query<AfterQuery>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    Users::check_name(&name).map_err(users_error)?;
    user_page(&st, &op, &name, None, q.done.as_deref()).await
}

/// `POST /users/{name}/{action}`: role, disable, enable, password, token,
/// revoke-token.
pub async fn user_action(
    State(st): State<UiState>,
    Path((name, action)): Path<(String, String)>,
    CheckedPost { op, form: f }: CheckedPost<UserForm>,
) -> Result<Response, UiError> {
    op.require_admin()?;
    // A name no user can have (a NUL, say) is the caller's mistake, named
    // before any query (PostgreSQL refuses a NUL in a parameter).
    Users::check_name(&name).map_err(users_error)?;
    let users = st.db.users();
    let (audit_action, res, done) = match action.as_str() {
        "role" => {
            let role = parse_role(&f.role)?;
            if name == op.user.name && role != Role::Admin {
                return Err(UiError::BadRequest(
                    "you cannot take the Admin role from yourself (another admin can)".into(),
                ));
            }
            (
                "user role",
                users.set_role(&name, role).await.map_err(Into::into),
                "role",
            )
        }
        "disable" => {
            if name == op.user.name {
                return Err(UiError::BadRequest("you cannot disable yourself".into()));
            }
            (
                "user disable",
                users.set_disabled(&name, true).await.map_err(Into::into),
                "disabled",
            )
        }
        "enable" => (
            "user enable",
            users.set_disabled(&name, false).await.map_err(Into::into),
            "enabled",
        ),
        "password" => (
            "user password reset",
            authentication::set_password(&st.db, &name, &f.password).await,
            "password",
        ),
        "token" => {
            let label = f.label.trim();
            let res = users
                .issue_token(&name, (!label.is_empty()).then_some(label))
                .await;
            let outcome = if res.is_ok() { "Applied" } else { "Refused" };
            audit(&st, &op, "user token issue", &name, outcome).await?;
            let issued = res.map_err(users_error)?;
            let mut resp = user_page(&st, &op, &name, Some(issued), None).await?;
            *resp.status_mut() = StatusCode::OK;
            return Ok(resp);
        }
        "revoke-token" => (
            "user token revoke",
            users
                .revoke_token(&name, f.label.trim())
                .await
                .map_err(Into::into),
            "token-revoked",
        ),
        _ => return Err(UiError::NotFound(format!("no user action {action:?}"))),
    };
    audit(
        &st,
        &op,
        audit_action,
        &name,
        if res.is_ok() { "Applied" } else { "Refused" },
    )
    .await?;
    res.map_err(users_error)?;
    Ok(Redirect::to(&format!("/users/{}?done={done}", encode(&name))).into_response())
}
