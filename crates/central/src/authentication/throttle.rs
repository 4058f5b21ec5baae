//! The login throttle: failed password checks counted per user name and per
//! client address; after `free_failures` of them, each further failure
//! blocks that key for twice as long as the one before (1 s, 2 s, 4 s …, at
//! most `max_delay`). A blocked key is refused before any hashing. A
//! success clears the user name's count (not the address's: an attacker
//! must not reset its address by logging in to an account of its own).
//! A key whose last failure is older than [`FORGET_AFTER`] starts afresh.
//!
//! Hand-written: the crates that rate-limit (governor, tower's) count
//! requests per time, not consecutive failures with a growing delay.
//!
//! Invariant: the map holds at most [`MAX_KEYS`] keys; past that, keys that
//! are not blocked are dropped first, so a flood of made-up user names
//! costs bounded memory (and the flood's address stays blocked).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A key whose last failure is this old starts afresh.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
pub struct ThrottleSettings {
    /// Failures in a row that are answered at once.
    pub free_failures: u32,
    /// The longest block after a failure.
    pub max_delay: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            free_failures: 3,
            max_delay: Duration::from_secs(60),
        }
    }
}

struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

pub struct LoginThrottle {
    settings: ThrottleSettings,
    keys: Mutex<HashMap<String, Failures>>,
}

/// The throttle keys of one attempt: its user name, and its client address
/// when known.
pub(super) fn keys(name: &str, client: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!(
        "user:{}",
        name.chars().take(64).collect::<String>()
    )];
    if let Some(ip) = client {
        keys.push(format!("addr:{ip}"));
    }
    keys
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            keys: Mutex::default(),
        }
    }

    /// How long the longest-blocked of `keys` is still blocked, if any is.
    pub fn blocked(&self, keys: &[String]) -> Option<Duration> {
        let now = Instant::now();
        let map = self.keys.lock().expect("throttle lock");
        keys.iter()
            .filter_map(|k| map.get(k))
            .map(|f| f.blocked_until.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
            .max()
    }

    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let s = self.settings;
        let mut map = self.keys.lock().expect("throttle lock");
        if map.len() + keys.len() > MAX_KEYS {
            map.retain(|_, f| f.blocked_until > now);
            if map.len() + keys.len() > MAX_KEYS {
                map.clear();
            }
        }
        for k in keys {
            let f = map.entry(k.clone()).or_insert(Failures {
                count: 0,
                last: now,
                blocked_until: now,
            });
            if now.duration_since(f.last) > FORGET_AFTER {
                f.count = 0;
            }
            f.count += 1;
            f.last = now;
            if f.count >= s.free_failures {
                let doublings = (f.count - s.free_failures).min(20);
                let delay = Duration::from_secs(1 << doublings).min(s.max_delay);
                f.blocked_until = now + delay;
            }
        }
    }

    pub fn succeeded(&self, keys: &[String]) {
        let mut map = self.keys.lock().expect("throttle lock");
        for k in keys.iter().filter(|k| k.starts_with("user:")) {
            map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_doubling_delays_up_to_the_cap() {
        let t = LoginThrottle::new(ThrottleSettings {
            free_failures: 3,
            max_delay: Duration::from_secs(5),
        });
        let k = keys("admin", Some("127.0.0.1".parse().unwrap()));
        t.failed(&k);
        t.failed(&k);
        assert_eq!(t.blocked(&k), None, "two failures are free");
        let mut delays = Vec::new();
        for _ in 0..5 {
            t.failed(&k);
            delays.push(t.blocked(&k).unwrap().as_secs_f64().round() as u64);
        }
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        // Another user from the same address is blocked too; the same user
        // from another address as well.
        assert!(t
            .blocked(&keys("bob", Some("127.0.0.1".parse().unwrap())))
            .is_some());
        assert!(t
            .blocked(&keys("admin", Some("10.0.0.9".parse().unwrap())))
            .is_some());
        // Success clears the user name, not the address.
        t.succeeded(&k);
        assert!(t.blocked(&keys("admin", None)).is_none());
        assert!(t.blocked(&k).is_some());
    }
}
