//! [`UiSessions`]: the web UI's server-side sessions (SPEC §5.5). The
//! browser holds only a random 256-bit secret in an HttpOnly cookie; the
//! table holds its SHA-256, the user, the session's CSRF token and when it
//! was last used.
//!
//! Invariants:
//! - A session is valid only while its row exists, its user exists and is
//!   not disabled, and it was used within the idle timeout: so logout
//!   (the row goes), disabling a user (the join fails, and the rows go) and
//!   idleness end it at once, on every central node alike.
//! - The role is read from `users` on every request, never cached in the
//!   session: a changed role applies to the next request.

use rand::RngCore;
use sqlx::Row;

use super::{now_ms, sha256_hex, Database, User};

/// How often (at most) a session's last-seen time is written: each request
/// does not need a write to keep the idle timeout correct to a minute.
const TOUCH_GRANULARITY_MS: i64 = 60_000;

/// A live session: who, and the token every form of it must carry.
#[derive(Clone, Debug)]
pub struct UiSession {
    pub user: User,
    pub csrf_token: String,
}

pub struct UiSessions<'a> {
    db: &'a Database,
}

/// 32 random bytes as lower-case hex.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'a> UiSessions<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    /// Opens a session for `user`; returns the cookie secret (shown to the
    /// browser once, stored only as a hash) and the session's CSRF token.
    pub async fn open(&self, user: &str) -> Result<(String, String), sqlx::Error> {
        let secret = random_secret();
        let csrf = random_secret();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO ui_sessions (secret_hash, user_name, csrf_token, created_at_ms, last_seen_at_ms)
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(sha256_hex(&secret))
        .bind(user)
        .bind(&csrf)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok((secret, csrf))
    }

    /// The live session of a cookie secret, if any (see the module's
    /// invariants); notes its use.
    pub async fn find(&self, secret: &str, idle_ms: i64) -> Result<Option<UiSession>, sqlx::Error> {
        let hash = sha256_hex(secret);
        let now = now_ms();
        let row = sqlx::query(
            "SELECT u.name, u.role, s.csrf_token, s.last_seen_at_ms FROM ui_sessions s
             JOIN users u ON u.name = s.user_name
             WHERE s.secret_hash = $1 AND u.disabled_at_ms IS NULL AND s.last_seen_at_ms >= $2",
        )
        .bind(&hash)
        .bind(now - idle_ms)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let role: String = r.try_get(1)?;
        let last: i64 = r.try_get(3)?;
        if now - last >= TOUCH_GRANULARITY_MS {
            sqlx::query("UPDATE ui_sessions SET last_seen_at_ms = $1 WHERE secret_hash = $2")
                .bind(now)
                .bind(&hash)
                .execute(self.db.pool())
                .await?;
        }
        Ok(Some(UiSession {
            user: User {
                name: r.try_get(0)?,
                role: role
                    .parse()
                    .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            },
            csrf_token: r.try_get(2)?,
        }))
    }

    /// Ends one session (logout).
    pub async fn close(&self, secret: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM ui_sessions WHERE secret_hash = $1")
            .bind(sha256_hex(secret))
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Ends every session of a user (disabled, password reset).
    pub async fn close_all_of(&self, user: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM ui_sessions WHERE user_name = $1")
            .bind(user)
            .execute(self.db.pool())
            .await?
            .rows_affected())
    }

    /// Deletes sessions idle longer than `idle_ms` (they are refused
    /// anyway; this keeps the table small).
    pub async fn purge_idle(&self, idle_ms: i64) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM ui_sessions WHERE last_seen_at_ms < $1")
                .bind(now_ms() - idle_ms)
                .execute(self.db.pool())
                .await?
                .rows_affected(),
        )
    }
}
