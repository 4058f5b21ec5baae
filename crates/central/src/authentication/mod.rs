//! Operator authentication, shared by every way in (the REST API's HTTP
//! Basic and bearer tokens today; the web UI's login form next): password
//! checks that cannot be turned into a denial of service, and a throttle on
//! guessing.
//!
//! Main type: [`Authenticator`]. It answers "who is this?" for a user name
//! and password ([`Authenticator::password`]) or an API token
//! ([`Authenticator::token`]), or says why not ([`AuthError`]).
//!
//! Invariants:
//! - argon2 (about 19 MiB and tens of milliseconds each) never runs on the
//!   async runtime: it runs on `password_checks_at_once` threads of its own
//!   ([`hashing::HashingPool`]) behind a short queue; a check that finds the
//!   queue full, or is not done within [`HASH_SLOT_WAIT`], is answered 503
//!   with `Retry-After`. So a flood costs bounded memory (a fixed set of
//!   threads, each reusing its own 19 MiB) and the runtime stays free for
//!   `/healthz` and real work.
//! - Failed password checks are throttled per user name and per client
//!   address ([`throttle::LoginThrottle`]: a few free failures, then an
//!   exponential delay answered 429 with `Retry-After`); a throttled
//!   attempt is refused before any hashing. A blocked user name is refused
//!   only to addresses that failed recently themselves, so nobody can keep
//!   an account locked out by failing at it.
//! - An unknown (or disabled) user costs the same argon2 verification as a
//!   wrong password (against a dummy hash), so user names cannot be found
//!   by timing.
//! - A verified password is remembered for [`CACHE_TTL`] (keyed by a keyed
//!   hash of name and password, never the password itself) together with
//!   the stored hash it matched: a changed password or a disabled user
//!   (both re-read from the database on every request) drops it at once.
//!   So an API client that sends Basic on every request pays argon2 once.

mod hashing;
mod throttle;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHasher, SaltString},
    Argon2,
};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::configuration_database::{Database, PasswordHash, Role, User, Users, UsersError};
pub use throttle::{LoginThrottle, ThrottleSettings};

/// How long a request waits for a password-hashing slot before it is
/// answered 503.
pub const HASH_SLOT_WAIT: Duration = Duration::from_secs(2);
/// How long a verified password is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Most remembered credentials at once (an entry is about 200 bytes).
const CACHE_MAX: usize = 4096;

/// Why a credential was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong user name, password or token (never says which).
    #[error("wrong user name, password or token")]
    Rejected,
    /// Too many failures for this user name or address: try again later.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// Every password-hashing slot is busy: try again shortly.
    #[error("too many logins at once; try again in {} s", .0.as_secs().max(1))]
    Busy(Duration),
    /// The credential itself is malformed (named in the message).
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<UsersError> for AuthError {
    fn from(e: UsersError) -> Self {
        AuthError::Internal(e.into())
    }
}

/// Password and token checks for one central (cheap to clone).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    hashing: hashing::HashingPool,
    throttle: LoginThrottle,
    /// Verified credentials: keyed hash → (stored hash it matched, expiry).
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// Random per process, so a memory dump of the cache keys cannot be
    /// checked against guesses offline.
    cache_key: [u8; 32],
    /// What an unknown user's password is checked against.
    dummy_hash: String,
}

impl Authenticator {
    /// `checks_at_once`: argon2 verifications allowed to run at once.
    pub async fn new(
        db: Database,
        checks_at_once: usize,
        throttle: ThrottleSettings,
    ) -> anyhow::Result<Self> {
        let dummy_hash = tokio::task::spawn_blocking(|| {
            let mut random = [0u8; 32];
            rand::rng().fill_bytes(&mut random);
            hash_password(&random)
        })
        .await??;
        let mut cache_key = [0u8; 32];
        rand::rng().fill_bytes(&mut cache_key);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                hashing: hashing::HashingPool::start(checks_at_once.max(1)),
                throttle: LoginThrottle::new(throttle),
                cache: Mutex::default(),
                cache_key,
                dummy_hash,
            }),
        })
    }

    /// The user with this name and password, from `client`.
    pub async fn password(
        &self,
        name: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<User, AuthError> {
        if name.contains('\0') || password.contains('\0') {
            return Err(AuthError::Malformed(
                "malformed credentials: the user name or password contains a NUL byte".into(),
            ));
        }
        let me = &self.inner;
        let keys = throttle::Keys::new(name, client);
        if let Some(wait) = me.throttle.blocked(&keys) {
            return Err(AuthError::Throttled(wait));
        }
        let stored = me.db.users().credentials(name).await?;
        let key = self.cache_key(name, password);
        if let Some(s) = &stored {
            if s.enabled && self.remembered(&key, &s.password_hash) {
                return Ok(s.user.clone());
            }
        }
        let against = stored
            .as_ref()
            .map_or(me.dummy_hash.clone(), |s| s.password_hash.clone());
        let matches = self.verify(password, against).await?;
        match stored {
            Some(s) if matches && s.enabled => {
                me.throttle.succeeded(&keys);
                self.remember(key, s.password_hash);
                Ok(s.user)
            }
            _ => {
                me.throttle.failed(&keys);
                Err(AuthError::Rejected)
            }
        }
    }

    /// The user an API token belongs to (tokens are 256 random bits, stored
    /// as SHA-256: nothing to throttle, nothing slow).
    pub async fn token(&self, token: &str) -> Result<User, AuthError> {
        self.inner
            .db
            .users()
            .verify_token(token)
            .await?
            .ok_or(AuthError::Rejected)
    }

    /// argon2 on the hashing threads; 503 (Busy) when they are saturated.
    async fn verify(&self, password: &str, stored: String) -> Result<bool, AuthError> {
        self.inner
            .hashing
            .verify(password.to_owned(), stored, HASH_SLOT_WAIT)
            .await
            .ok_or(AuthError::Busy(Duration::from_secs(1)))?
            .map_err(AuthError::Internal)
    }

    fn cache_key(&self, name: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.inner.cache_key);
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn remembered(&self, key: &[u8; 32], stored_hash: &str) -> bool {
        let cache = self.inner.cache.lock().expect("cache lock");
        matches!(cache.get(key), Some((h, until)) if h == stored_hash && *until > Instant::now())
    }

    fn remember(&self, key: [u8; 32], stored_hash: String) {
        let mut cache = self.inner.cache.lock().expect("cache lock");
        let now = Instant::now();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (stored_hash, now + CACHE_TTL));
    }
}

/// Why a new password was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must have at least 8 characters")]
    Weak,
    /// A NUL cannot be typed into a login form or an HTTP Basic header:
    /// an account with one could never log in.
    #[error("the password must not contain a NUL character")]
    Nul,
    #[error("password hashing: {0}")]
    Hashing(String),
}

/// Why a user could not be added or given a new password: the password,
/// or what the users repository said.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Users(#[from] UsersError),
}

/// Checks a new password and hashes it with argon2 on the blocking pool
/// (administrative actions only: a handful at a time, never a flood, so
/// the bounded [`hashing::HashingPool`] of logins is not needed here).
pub async fn hash_new_password(password: &str) -> Result<PasswordHash, PasswordError> {
    if password.contains('\0') {
        return Err(PasswordError::Nul);
    }
    if password.chars().count() < 8 {
        return Err(PasswordError::Weak);
    }
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password(password.as_bytes()))
        .await
        .map_err(|e| PasswordError::Hashing(e.to_string()))?
        .map(PasswordHash::from_phc)
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Adds a user: the name is checked before the cost of hashing.
pub async fn add_user(
    db: &Database,
    name: &str,
    password: &str,
    role: Role,
) -> Result<(), AccountError> {
    Users::check_name(name)?;
    let hash = hash_new_password(password).await?;
    Ok(db.users().add(name, &hash, role).await?)
}

/// Gives a user a new password (their web sessions end).
pub async fn set_password(db: &Database, name: &str, password: &str) -> Result<(), AccountError> {
    Users::check_name(name)?;
    let hash = hash_new_password(password).await?;
    Ok(db.users().set_password(name, &hash).await?)
}

/// The argon2 (default parameters) PHC string of a password. Slow on
/// purpose: call it from a blocking context.
pub fn hash_password(password: &[u8]) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password, &salt)
        .map_err(|e| anyhow::anyhow!("password hashing: {e}"))?
        .to_string())
}
