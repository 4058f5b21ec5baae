//! Registered sites: their tokens (stored hashed), revocation, and the
//! per-site reconcile cursor.

use base64::Engine as _;
use rand::RngCore;
use sitelink_commons::SiteName;
use sqlx::Row;

use super::{is_unique_violation, now_ms, sha256_hex as hash, Database};

/// A site's token, shown once by `site add`. Its form is
/// `slk1.<site>.<43 characters of randomness>`: the site name lets central
/// find the row without scanning; the 256 random bits make it unguessable,
/// so a SHA-256 of it is a safe thing to store (passwords, which are
/// guessable, get argon2 instead).
#[derive(Clone, PartialEq, Eq)]
pub struct SiteToken(String);

impl SiteToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SiteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteToken(…)")
    }
}

/// A site as central knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRecord {
    pub name: String,
    pub created_at_ms: i64,
    pub revoked: bool,
    /// Every change up to this sequence is in `site_calls`.
    pub reconcile_cursor: u64,
    /// The highest change sequence the site has announced.
    pub high_seq: u64,
    pub last_seen_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SitesError {
    #[error("site {0} already exists")]
    AlreadyExists(String),
    #[error("no site {0}")]
    NotFound(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub struct Sites<'a> {
    db: &'a Database,
}

impl<'a> Sites<'a> {
    pub(super) fn new(db: &'a Database) -> Self {
        Self { db }
    }

    /// Registers a site and returns its token (the only time it is shown).
    pub async fn add(&self, name: &SiteName) -> Result<SiteToken, SitesError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!(
            "slk1.{name}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let res =
            sqlx::query("INSERT INTO sites (name, token_hash, created_at_ms) VALUES ($1, $2, $3)")
                .bind(name.as_str())
                .bind(hash(&token))
                .bind(now_ms())
                .execute(self.db.pool())
                .await;
        match res {
            Ok(_) => Ok(SiteToken(token)),
            Err(e) if is_unique_violation(&e) => Err(SitesError::AlreadyExists(name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self) -> Result<Vec<SiteRecord>, SitesError> {
        let rows = sqlx::query(
            "SELECT name, created_at_ms, revoked_at_ms, reconcile_cursor, high_seq, last_seen_ms FROM sites ORDER BY name",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok(site_record(r)?)).collect()
    }

    /// Sites by name after `after`, at most `limit` (keyset paging).
    pub async fn page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SiteRecord>, SitesError> {
        let rows = sqlx::query(
            "SELECT name, created_at_ms, revoked_at_ms, reconcile_cursor, high_seq, last_seen_ms FROM sites
             WHERE ($1 IS NULL OR name > $1) ORDER BY name LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok(site_record(r)?)).collect()
    }

    pub async fn get(&self, name: &str) -> Result<Option<SiteRecord>, SitesError> {
        let row = sqlx::query(
            "SELECT name, created_at_ms, revoked_at_ms, reconcile_cursor, high_seq, last_seen_ms FROM sites WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(site_record).transpose()?)
    }

    /// Revokes a site's token; its streams are refused from now on.
    pub async fn revoke(&self, name: &str) -> Result<(), SitesError> {
        let done = sqlx::query(
            "UPDATE sites SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms())
        .bind(name)
        .execute(self.db.pool())
        .await?;
        if done.rows_affected() == 0 && self.get(name).await?.is_none() {
            return Err(SitesError::NotFound(name.into()));
        }
        Ok(())
    }

    /// The names of every revoked site.
    pub async fn revoked_names(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM sites WHERE revoked_at_ms IS NOT NULL")
            .fetch_all(self.db.pool())
            .await
    }

    /// The site a token belongs to, if it is known and not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<SiteName>, SitesError> {
        let mut parts = token.splitn(3, '.');
        let (Some("slk1"), Some(name), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        let Ok(name) = SiteName::parse(name) else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT token_hash, revoked_at_ms FROM sites WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.and_then(|r| {
            let stored: String = r.get(0);
            let revoked: Option<i64> = r.get(1);
            (revoked.is_none() && stored == hash(token)).then_some(name)
        }))
    }

    /// Records contact with a site and the high change sequence it announced.
    pub async fn seen(&self, name: &str, high_seq: u64) -> Result<(), SitesError> {
        let mut conn = self.db.pool().acquire().await?;
        seen_in(&mut conn, name, high_seq).await?;
        Ok(())
    }
}

/// The site was seen now, announcing changes up to `high_seq` (the high
/// mark only moves forward).
pub(super) async fn seen_in(
    conn: &mut sqlx::AnyConnection,
    name: &str,
    high_seq: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sites SET last_seen_ms = $1, high_seq = CASE WHEN high_seq > $2 THEN high_seq ELSE $2 END WHERE name = $3")
        .bind(now_ms())
        .bind(high_seq as i64)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

fn site_record(r: &sqlx::any::AnyRow) -> Result<SiteRecord, sqlx::Error> {
    Ok(SiteRecord {
        name: r.try_get(0)?,
        created_at_ms: r.try_get(1)?,
        revoked: r.try_get::<Option<i64>, _>(2)?.is_some(),
        reconcile_cursor: r.try_get::<i64, _>(3)? as u64,
        high_seq: r.try_get::<i64, _>(4)? as u64,
        last_seen_ms: r.try_get(5)?,
    })
}
