//! Operators: users with roles, passwords hashed with argon2, API tokens
//! (random, stored as SHA-256, named, with a last-used time), disabling a
//! user, and the operator audit log. Hashing and checking passwords live in
//! the authentication layer above (bounded, throttled, off the runtime):
//! this one stores a [`PasswordHash`] it is handed and never makes one.

use base64::Engine as _;
use rand::RngCore;
use serde::Serialize;
use sqlx::Row;

use super::{is_unique_violation, now_ms, sha256_hex, Database};

/// What a user may do (SPEC §5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read, and retry/discard parked calls.
    Deployment,
    /// Read only.
    Viewer,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Admin" => Ok(Role::Admin),
            "Deployment" => Ok(Role::Deployment),
            "Viewer" => Ok(Role::Viewer),
            _ => Err(format!("unknown role {s:?} (Admin, Deployment or Viewer)")),
        }
    }
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Deployment, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "Admin",
            Role::Deployment => "Deployment",
            Role::Viewer => "Viewer",
        }
    }

    /// Whether the role may retry or discard parked operations.
    pub fn may_operate(self) -> bool {
        matches!(self, Role::Admin | Role::Deployment)
    }

    /// Whether the role may manage sites and users.
    pub fn may_administer(self) -> bool {
        self == Role::Admin
    }
}

/// An authenticated operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("user {0} already exists (user names are unique regardless of case)")]
    AlreadyExists(String),
    #[error("no user {0}")]
    NotFound(String),
    #[error("invalid user name {0:?} (1 to 64 letters, digits, '_', '.', '-' or '@')")]
    InvalidName(String),
    #[error("stored role: {0}")]
    CorruptRole(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub struct Users<'a> {
    db: &'a Database,
}

/// What a password is checked against: the user, its stored argon2 hash,
/// and whether it may log in.
#[derive(Clone, Debug)]
pub struct StoredCredentials {
    pub user: User,
    pub password_hash: String,
    pub enabled: bool,
}

/// An API token as listed (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub created_at_utc: String,
    pub last_used_at_utc: Option<String>,
}

/// A user as listed (never the hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at_ms: i64,
}

/// A token's last-used time is written at most this often (a write per
/// request would cost every API call a database write).
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// User names and token names: 1 to 64 letters, digits, '_', '.', '-', '@'.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'))
}

/// A password's argon2 PHC string, as stored. Only the authentication
/// layer makes one from a password; storage just keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps an argon2 PHC string (`$argon2id$…`) made by the caller.
    pub fn from_phc(phc: String) -> Self {
        Self(phc)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'a> Users<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    /// Refuses a user name that cannot be stored, naming the rule (so a
    /// caller can check it before the cost of hashing a password).
    pub fn check_name(name: &str) -> Result<(), UsersError> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(UsersError::InvalidName(name.chars().take(80).collect()))
        }
    }

    /// Adds a user with an already made password hash.
    pub async fn add(&self, name: &str, hash: &PasswordHash, role: Role) -> Result<(), UsersError> {
        Self::check_name(name)?;
        let res = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(hash.as_str())
        .bind(role.as_str())
        .bind(now_ms())
        .execute(self.db.pool())
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(UsersError::AlreadyExists(name.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored credentials of a user (None for a name that cannot exist
    /// or does not).
    pub async fn credentials(&self, name: &str) -> Result<Option<StoredCredentials>, UsersError> {
        if !valid_name(name) {
            return Ok(None);
        }
        let row =
            sqlx::query("SELECT password_hash, role, disabled_at_ms FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(self.db.pool())
                .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get(1)?;
        Ok(Some(StoredCredentials {
            user: User {
                name: name.into(),
                role: role.parse().map_err(UsersError::CorruptRole)?,
            },
            password_hash: row.try_get(0)?,
            enabled: row.try_get::<Option<i64>, _>(2)?.is_none(),
        }))
    }

    /// Disables (or enables again) a user: a disabled user's passwords and
    /// API tokens are refused from the next request on.
    /// Their web sessions end too.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), UsersError> {
        let done = sqlx::query("UPDATE users SET disabled_at_ms = $1 WHERE name = $2")
            .bind(disabled.then(now_ms))
            .bind(name)
            .execute(self.db.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(UsersError::NotFound(name.into()));
        }
        if disabled {
            self.db.ui_sessions().close_all_of(name).await?;
        }
        Ok(())
    }

    /// Changes a user's role; it applies from the user's next request (web
    /// sessions read the role on every request).
    pub async fn set_role(&self, name: &str, role: Role) -> Result<(), UsersError> {
        let done = sqlx::query("UPDATE users SET role = $1 WHERE name = $2")
            .bind(role.as_str())
            .bind(name)
            .execute(self.db.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(UsersError::NotFound(name.into()));
        }
        Ok(())
    }

    /// Sets a new password (reset by an admin); the user's web sessions
    /// end, so whoever knew the old password is logged out.
    pub async fn set_password(&self, name: &str, hash: &PasswordHash) -> Result<(), UsersError> {
        let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(hash.as_str())
            .bind(name)
            .execute(self.db.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(UsersError::NotFound(name.into()));
        }
        self.db.ui_sessions().close_all_of(name).await?;
        Ok(())
    }

    /// Every user, by name.
    pub async fn list(&self) -> Result<Vec<UserInfo>, UsersError> {
        let rows = sqlx::query(
            "SELECT name, role, disabled_at_ms, created_at_ms FROM users ORDER BY name",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get(1)?;
                Ok(UserInfo {
                    name: r.try_get(0)?,
                    role: role.parse().map_err(UsersError::CorruptRole)?,
                    disabled: r.try_get::<Option<i64>, _>(2)?.is_some(),
                    created_at_ms: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Issues an API token for a user (shown once), named `label` (or a
    /// random name) so that it can be listed and revoked.
    pub async fn issue_token(
        &self,
        name: &str,
        label: Option<&str>,
    ) -> Result<(String, String), UsersError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let label = match label {
            Some(l) if valid_name(l) => l.to_owned(),
            Some(l) => return Err(UsersError::InvalidName(l.chars().take(80).collect())),
            None => format!("token-{:08x}", rand::rng().next_u32()),
        };
        let token = format!(
            "slu1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let res = sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_name, created_at_ms, name) VALUES ($1, $2, $3, $4)",
        )
        .bind(sha256_hex(&token))
        .bind(name)
        .bind(now_ms())
        .bind(&label)
        .execute(self.db.pool())
        .await;
        match res {
            Ok(_) => Ok((token, label)),
            Err(sqlx::Error::Database(e))
                if matches!(e.kind(), sqlx::error::ErrorKind::ForeignKeyViolation) =>
            {
                Err(UsersError::NotFound(name.into()))
            }
            Err(e) if is_unique_violation(&e) => Err(UsersError::AlreadyExists(format!(
                "token {label} of user {name}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A user's API tokens, oldest first.
    pub async fn tokens(&self, name: &str) -> Result<Vec<TokenInfo>, UsersError> {
        if self.credentials(name).await?.is_none() {
            return Err(UsersError::NotFound(name.into()));
        }
        let rows = sqlx::query(
            "SELECT name, created_at_ms, last_used_at_ms FROM api_tokens WHERE user_name = $1 ORDER BY created_at_ms, name",
        )
        .bind(name)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    name: r.try_get(0)?,
                    created_at_utc: rfc3339(r.try_get(1)?),
                    last_used_at_utc: r.try_get::<Option<i64>, _>(2)?.map(rfc3339),
                })
            })
            .collect()
    }

    /// Revokes one API token of a user: refused from the next request on.
    pub async fn revoke_token(&self, name: &str, label: &str) -> Result<(), UsersError> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE user_name = $1 AND name = $2")
            .bind(name)
            .bind(label)
            .execute(self.db.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(UsersError::NotFound(format!(
                "token {label} of user {name}"
            )));
        }
        Ok(())
    }

    /// The enabled user an API token belongs to. Notes when the token was
    /// last used (at most once a minute).
    pub async fn verify_token(&self, token: &str) -> Result<Option<User>, UsersError> {
        let hash = sha256_hex(token);
        let row = sqlx::query(
            "SELECT u.name, u.role, t.last_used_at_ms FROM api_tokens t JOIN users u ON u.name = t.user_name
             WHERE t.token_hash = $1 AND u.disabled_at_ms IS NULL",
        )
        .bind(&hash)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let role: String = r.try_get(1)?;
        let user = User {
            name: r.try_get(0)?,
            role: role.parse().map_err(UsersError::CorruptRole)?,
        };
        let now = now_ms();
        let last: Option<i64> = r.try_get(2)?;
        if last.is_none_or(|l| now - l >= LAST_USED_GRANULARITY_MS) {
            sqlx::query("UPDATE api_tokens SET last_used_at_ms = $1 WHERE token_hash = $2")
                .bind(now)
                .bind(&hash)
                .execute(self.db.pool())
                .await?;
        }
        Ok(Some(user))
    }

    pub async fn count(&self) -> Result<i64, UsersError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.db.pool())
            .await?)
    }
}

/// RFC 3339 UTC text of a Unix-milliseconds time.
pub fn rfc3339(ms: i64) -> String {
    sitelink_commons::unix_ms_to_utc(ms)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
