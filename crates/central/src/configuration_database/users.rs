//! Operators: users with roles, passwords hashed with argon2, API tokens
//! (random, stored as SHA-256), and the operator audit log.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
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
}

/// An authenticated operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("user {0} already exists")]
    AlreadyExists(String),
    #[error("no user {0}")]
    NotFound(String),
    #[error("invalid user name {0:?} (1 to 64 letters, digits, '_', '.', '-' or '@')")]
    InvalidName(String),
    #[error("the password must have at least 8 characters")]
    WeakPassword,
    #[error("password hashing: {0}")]
    Hashing(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub struct Users<'a> {
    db: &'a Database,
}

impl<'a> Users<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    pub async fn add(&self, name: &str, password: &str, role: Role) -> Result<(), UsersError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'));
        if !valid {
            return Err(UsersError::InvalidName(name.chars().take(80).collect()));
        }
        if password.chars().count() < 8 {
            return Err(UsersError::WeakPassword);
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UsersError::Hashing(e.to_string()))?
            .to_string();
        let res = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(hash)
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

    /// The user, if the password is right.
    pub async fn verify_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<User>, UsersError> {
        let row = sqlx::query("SELECT password_hash, role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(self.db.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get(0)?;
        let role: String = row.try_get(1)?;
        let parsed = PasswordHash::new(&stored).map_err(|e| UsersError::Hashing(e.to_string()))?;
        if Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(User {
            name: name.into(),
            role: role.parse().map_err(UsersError::Hashing)?,
        }))
    }

    /// Issues an API token for a user (shown once).
    pub async fn issue_token(&self, name: &str) -> Result<String, UsersError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!(
            "slu1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let res = sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_name, created_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(sha256_hex(&token))
        .bind(name)
        .bind(now_ms())
        .execute(self.db.pool())
        .await;
        match res {
            Ok(_) => Ok(token),
            Err(sqlx::Error::Database(e))
                if matches!(e.kind(), sqlx::error::ErrorKind::ForeignKeyViolation) =>
            {
                Err(UsersError::NotFound(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The user an API token belongs to.
    pub async fn verify_token(&self, token: &str) -> Result<Option<User>, UsersError> {
        let row = sqlx::query(
            "SELECT u.name, u.role FROM api_tokens t JOIN users u ON u.name = t.user_name WHERE t.token_hash = $1",
        )
        .bind(sha256_hex(token))
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            let role: String = r.try_get(1)?;
            Ok(User {
                name: r.try_get(0)?,
                role: role.parse().map_err(UsersError::Hashing)?,
            })
        })
        .transpose()
    }

    pub async fn count(&self) -> Result<i64, UsersError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.db.pool())
            .await?)
    }
}

/// One operator action (SPEC §5.2: who, when, which id, outcome).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at_utc: String,
    pub user: String,
    pub action: String,
    pub tracked_operation_id: String,
    pub source_site: Option<String>,
    pub outcome: String,
}

pub struct AuditLog<'a> {
    db: &'a Database,
}

impl<'a> AuditLog<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    pub async fn record(
        &self,
        user: &str,
        action: &str,
        target_id: &str,
        source_site: Option<&str>,
        outcome: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, user_name, action, target_id, source_site, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(now_ms())
        .bind(user)
        .bind(action)
        .bind(target_id)
        .bind(source_site)
        .bind(outcome)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Newest first, after the entry id `after` (keyset paging).
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, at_ms, user_name, action, target_id, source_site, outcome FROM audit_log
             WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at_utc: rfc3339(r.try_get(1)?),
                    user: r.try_get(2)?,
                    action: r.try_get(3)?,
                    tracked_operation_id: r.try_get(4)?,
                    source_site: r.try_get(5)?,
                    outcome: r.try_get(6)?,
                })
            })
            .collect()
    }
}

/// RFC 3339 UTC text of a Unix-milliseconds time.
pub fn rfc3339(ms: i64) -> String {
    sitelink_commons::unix_ms_to_utc(ms)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
