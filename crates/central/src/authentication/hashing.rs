//! [`HashingPool`]: the threads that verify passwords with argon2, owned by
//! the [`super::Authenticator`] (dropping it ends them).
//!
//! Why threads of its own rather than tokio's blocking pool: argon2 takes
//! about 19 MiB per verification, and the allocator keeps what a thread
//! freed for that thread to reuse. The blocking pool starts a new thread
//! whenever none is idle, so even one verification at a time spread over
//! ever more threads, each keeping its 19 MiB (measured: 192 MiB under the
//! flood test with one check at a time). And each thread here allocates
//! its argon2 memory once and reuses it (`hash_password_into_with_memory`):
//! a fresh 19 MiB allocation per check left the allocator holding several
//! (measured: +80 MiB with one thread). So the memory is bounded at the
//! number of threads times 19 MiB.
//!
//! Invariant: at most `threads` verifications run at once, at most
//! [`QUEUE_PER_THREAD`] per thread wait; a check whose caller stopped
//! waiting is skipped, not computed.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use argon2::{password_hash::PasswordHash, Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{mpsc, oneshot};

/// Checks that may wait for a thread, per thread.
pub const QUEUE_PER_THREAD: usize = 8;

struct Job {
    password: String,
    stored: String,
    reply: oneshot::Sender<anyhow::Result<bool>>,
}

pub struct HashingPool {
    tx: mpsc::Sender<Job>,
}

impl HashingPool {
    pub fn start(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(threads * QUEUE_PER_THREAD);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("sitelink-argon2-{i}"))
                .spawn(move || {
                    // This thread's argon2 memory, allocated once.
                    let mut blocks: Vec<Block> = Vec::new();
                    loop {
                        // One waiter holds the lock while it waits; the
                        // others wait for the lock. Ends when the pool is
                        // dropped.
                        let next = rx.lock().expect("hashing queue lock").blocking_recv();
                        let Some(job) = next else { return };
                        if job.reply.is_closed() {
                            continue;
                        }
                        let _ = job
                            .reply
                            .send(verify(&job.password, &job.stored, &mut blocks));
                    }
                })
                .expect("starting a password hashing thread");
        }
        Self { tx }
    }

    /// Whether `password` matches the PHC string `stored`; `None` when
    /// every thread and queue place is taken, or no answer came in `wait`.
    pub async fn verify(
        &self,
        password: String,
        stored: String,
        wait: Duration,
    ) -> Option<anyhow::Result<bool>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Job {
                password,
                stored,
                reply,
            })
            .ok()?;
        tokio::time::timeout(wait, answer).await.ok()?.ok()
    }
}

/// What `PasswordVerifier::verify_password` does, with the caller's block
/// memory: the stored hash's algorithm, version, parameters and salt, the
/// password hashed with them, compared without a timing leak.
fn verify(password: &str, stored: &str, blocks: &mut Vec<Block>) -> anyhow::Result<bool> {
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("stored password hash: {e}");
    let hash = PasswordHash::new(stored).map_err(|e| bad(&e))?;
    let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| bad(&e))?;
    let version = hash
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| bad(&e))?
        .unwrap_or_default();
    let params = Params::try_from(&hash).map_err(|e| bad(&e))?;
    let expected = hash.hash.ok_or_else(|| bad(&"it holds no hash"))?;
    let salt = hash.salt.ok_or_else(|| bad(&"it holds no salt"))?;
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| bad(&e))?;
    blocks.resize(params.block_count(), Block::default());
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..])
        .map_err(|e| bad(&e))?;
    Ok(sitelink_commons::secret_eq(&out, expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, SaltString};

    use super::*;

    /// The same answers as the argon2 crate's own verification, for the
    /// hashes `Users::add` stores, with one reused block buffer.
    #[test]
    fn verifies_like_the_argon2_crate() {
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let stored = Argon2::default()
            .hash_password(b"right password", &salt)
            .unwrap()
            .to_string();
        let mut blocks = Vec::new();
        assert!(verify("right password", &stored, &mut blocks).unwrap());
        assert!(!verify("wrong password", &stored, &mut blocks).unwrap());
        assert!(verify("right password", &stored, &mut blocks).unwrap());
        assert!(verify("x", "not a hash", &mut blocks).is_err());
    }
}
