//! Retry policy of a target (a site's external system or database
//! connection, central's SMTP server): interval with exponential backoff
//! and jitter, capped, and a retry budget.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

/// How a target's buffered operations are retried. Configured per external
/// system and per database connection (`[...retry]` in site.toml).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay before the first retry, in milliseconds.
    pub interval_ms: u64,
    /// Each further retry waits `backoff` times longer than the one before.
    pub backoff: f64,
    /// Upper bound of any one delay, in milliseconds.
    pub max_interval_ms: u64,
    /// Retries allowed before the operation is parked (0: park at once).
    pub max_retries: u32,
    /// Random spread of each delay, as a fraction (0.2 = ±20 %), so that many
    /// operations buffered in the same outage do not retry in lockstep.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            backoff: 2.0,
            max_interval_ms: 300_000,
            max_retries: 10,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Checks the values an operator can get wrong; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.backoff.is_finite() && self.backoff >= 1.0) {
            return Err(format!(
                "retry.backoff must be a number >= 1.0, got {}",
                self.backoff
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "retry.jitter must be between 0.0 and 1.0, got {}",
                self.jitter
            ));
        }
        // Zero would retry in a busy loop; a week is longer than any outage
        // worth retrying through.
        crate::in_range("retry.interval_ms", self.interval_ms, 1, 7 * 86_400_000)?;
        crate::in_range(
            "retry.max_interval_ms",
            self.max_interval_ms,
            1,
            7 * 86_400_000,
        )?;
        crate::in_range("retry.max_retries", self.max_retries, 0, 100_000_000)?;
        if self.max_interval_ms < self.interval_ms {
            return Err("retry.max_interval_ms must be >= retry.interval_ms".into());
        }
        Ok(())
    }

    /// Delay before retry number `retries_done + 1`.
    pub fn delay(&self, retries_done: u32) -> Duration {
        let base = self.interval_ms as f64 * self.backoff.powi(retries_done.min(64) as i32);
        let capped = base.min(self.max_interval_ms as f64);
        let spread = if self.jitter > 0.0 {
            rand::rng().random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        Duration::from_millis((capped * (1.0 + spread)).max(0.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            interval_ms: 100,
            backoff: 2.0,
            max_interval_ms: 1_000,
            max_retries: 5,
            jitter: 0.0,
        };
        assert_eq!(p.delay(0), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(400));
        assert_eq!(p.delay(10), Duration::from_millis(1_000));
        let j = RetryPolicy { jitter: 0.5, ..p };
        for _ in 0..100 {
            let d = j.delay(0).as_millis();
            assert!((50..=150).contains(&d), "{d}");
        }
    }
}
