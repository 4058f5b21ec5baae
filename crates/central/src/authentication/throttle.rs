//! The login throttle: failed password checks counted per user name and per
//! client address; after `free_failures` of them, each further failure
//! blocks that key for twice as long as the one before (1 s, 2 s, 4 s …, at
//! most `max_delay`). A success clears the user name's count (not the
//! address's: an attacker must not reset its address by logging in to an
//! account of its own). A key whose last failure is older than
//! [`FORGET_AFTER`] starts afresh.
//!
//! Who is refused (429, before any hashing):
//! - a blocked address, whatever the name;
//! - a blocked user name, but only from an address with a failure of its
//!   own in the last [`FORGET_AFTER`] (or an unknown address). An address
//!   with no recent failures may still try it.
//!
//! The trade-off (SPEC §6, README security model): refusing a blocked name
//! from everywhere would let anyone keep `admin` locked out for good with
//! one wrong try a minute. So a blocked name slows guessing down instead:
//! while it is blocked, each address gets one guess at it (its failure then
//! makes it "recent"), then waits until the name's block ends, so a
//! guesser's rate is bounded by the addresses it owns, and every guess
//! still waits for a place in the bounded argon2 pool. The owner, from an
//! address that has not failed, logs in.
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
pub struct Keys {
    user: String,
    addr: Option<String>,
}

impl Keys {
    pub fn new(name: &str, client: Option<IpAddr>) -> Self {
        Self {
            // Case-folded: user names are unique regardless of case.
            user: format!(
                "user:{}",
                name.chars().take(64).collect::<String>().to_lowercase()
            ),
            addr: client.map(|ip| format!("addr:{ip}")),
        }
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.user).chain(self.addr.as_ref())
    }
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            keys: Mutex::default(),
        }
    }

    /// How long this attempt must wait, if it is refused (see the module
    /// doc for who is).
    pub fn blocked(&self, keys: &Keys) -> Option<Duration> {
        let now = Instant::now();
        let map = self.keys.lock().expect("throttle lock");
        let wait = |k: &String| {
            map.get(k)
                .map(|f| f.blocked_until.saturating_duration_since(now))
                .filter(|d| !d.is_zero())
        };
        let address = keys.addr.as_ref().and_then(wait);
        let address_failed_recently = keys.addr.as_ref().is_none_or(|k| {
            map.get(k)
                .is_some_and(|f| now.duration_since(f.last) <= FORGET_AFTER)
        });
        let name = wait(&keys.user).filter(|_| address_failed_recently);
        address.max(name)
    }

    pub fn failed(&self, keys: &Keys) {
        let now = Instant::now();
        let s = self.settings;
        let mut map = self.keys.lock().expect("throttle lock");
        if map.len() + 2 > MAX_KEYS {
            map.retain(|_, f| f.blocked_until > now);
            if map.len() + 2 > MAX_KEYS {
                map.clear();
            }
        }
        for k in keys.all() {
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

    pub fn succeeded(&self, keys: &Keys) {
        self.keys.lock().expect("throttle lock").remove(&keys.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, ip: &str) -> Keys {
        Keys::new(name, Some(ip.parse().unwrap()))
    }

    #[test]
    fn free_failures_then_doubling_delays_up_to_the_cap() {
        let t = LoginThrottle::new(ThrottleSettings {
            free_failures: 3,
            max_delay: Duration::from_secs(5),
        });
        let k = at("admin", "127.0.0.1");
        t.failed(&k);
        t.failed(&k);
        assert_eq!(t.blocked(&k), None, "two failures are free");
        let mut delays = Vec::new();
        for _ in 0..5 {
            t.failed(&k);
            delays.push(t.blocked(&k).unwrap().as_secs_f64().round() as u64);
        }
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        // Another user from the same address is blocked too.
        assert!(t.blocked(&at("bob", "127.0.0.1")).is_some());
        // Success clears the user name, not the address.
        t.succeeded(&k);
        assert!(t.blocked(&Keys::new("admin", None)).is_none());
        assert!(t.blocked(&k).is_some());
    }

    #[test]
    fn a_blocked_name_is_refused_only_to_addresses_that_failed_recently() {
        let t = LoginThrottle::new(ThrottleSettings {
            free_failures: 3,
            max_delay: Duration::from_secs(60),
        });
        // Four failures from four addresses: the name is blocked, no
        // address is (one failure each).
        for i in 1..=4 {
            t.failed(&at("admin", &format!("10.0.0.{i}")));
        }
        assert_eq!(
            t.blocked(&at("bob", "10.0.0.1")),
            None,
            "the address itself is not blocked"
        );
        assert!(
            t.blocked(&at("Admin", "10.0.0.4")).is_some(),
            "the name, case-folded, from a failing address"
        );
        assert!(t.blocked(&at("admin", "10.0.0.1")).is_some());
        assert_eq!(
            t.blocked(&at("admin", "10.9.9.9")),
            None,
            "a clean address may try"
        );
        assert!(
            t.blocked(&Keys::new("admin", None)).is_some(),
            "an unknown address may not"
        );
        // A clean address that fails is refused from then on.
        t.failed(&at("admin", "10.9.9.9"));
        assert!(t.blocked(&at("admin", "10.9.9.9")).is_some());
        // Another name from a clean address is untouched.
        assert_eq!(t.blocked(&at("bob", "10.8.8.8")), None);
    }
}
