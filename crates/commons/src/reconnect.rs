//! When a site dials central again (issue 22): the schedule that keeps a
//! fleet from arriving in one instant after central restarts, and the
//! "busy, retry after" answer central gives a site above its admission
//! rate.
//!
//! Main types: [`ReconnectSchedule`] (pure: the caller sleeps),
//! [`pushback`] / [`PUSHBACK_METADATA`] (the answer's wire form).
//!
//! The schedule:
//! - after a stream that was up ends, the first attempt waits a random
//!   delay, uniform within `spread` (Elastic Fleet's answer to the same
//!   storm), so a thousand sites that lost central at the same moment
//!   come back spread over the window;
//! - each failed attempt after that waits the backoff with "equal jitter"
//!   (half the backoff, plus a random part up to the other half), the
//!   backoff doubling from 100 ms up to `max`;
//! - a "busy, retry after" answer waits what central asked, plus up to a
//!   twentieth more (at most 100 ms), and does not grow the backoff:
//!   central is up and has given this site its turn.
//!
//! Invariant: every wait is at most `max(spread, max)`, or a pushback plus
//! 100 ms; none is computed from the wall clock, so two sites differ only
//! by their random draws.

use std::time::Duration;

use rand::Rng;

/// The gRPC metadata key that carries a server's pushback (gRPC retry
/// design A6: `grpc-retry-pushback-ms`, milliseconds as decimal text).
pub const PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";

/// A stream up this long was stable: its loss starts the backoff anew.
pub const STABLE: Duration = Duration::from_secs(10);

/// The first backoff after a failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How long a site waits before its next attempt to reach central.
#[derive(Clone, Debug)]
pub struct ReconnectSchedule {
    spread: Duration,
    max: Duration,
    backoff: Duration,
}

/// How the last attempt ended, as the schedule needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// A stream that central had accepted ended (or broke) after this
    /// long. One shorter than [`STABLE`] also grows the backoff, so a
    /// stream central closes as soon as it opens is not redialled in a
    /// tight loop.
    Lost(Duration),
    /// The attempt failed before central accepted a stream (refused,
    /// unreachable, a standby node).
    Failed,
    /// Central answered "busy, retry after" this long.
    Busy(Duration),
}

impl ReconnectSchedule {
    /// `spread`: the window of the random first delay after a lost stream
    /// (zero: at once); `max`: the longest backoff.
    pub fn new(spread: Duration, max: Duration) -> Self {
        Self {
            spread,
            max: max.max(FIRST_BACKOFF),
            backoff: FIRST_BACKOFF,
        }
    }

    /// The wait before the next attempt, after one that ended so.
    pub fn next_delay(&mut self, ended: Ended) -> Duration {
        self.next_delay_with(ended, &mut rand::rng())
    }

    /// [`Self::next_delay`] with the caller's random source (tests).
    pub fn next_delay_with(&mut self, ended: Ended, rng: &mut impl Rng) -> Duration {
        match ended {
            Ended::Lost(lived) if lived >= STABLE => {
                self.backoff = FIRST_BACKOFF;
                uniform(rng, self.spread)
            }
            Ended::Lost(_) => uniform(rng, self.spread).max(self.back_off(rng)),
            Ended::Failed => self.back_off(rng),
            Ended::Busy(after) => after + uniform(rng, (after / 20).min(MAX_BUSY_JITTER)),
        }
    }

    /// The current backoff with equal jitter; doubles it for next time.
    fn back_off(&mut self, rng: &mut impl Rng) -> Duration {
        let b = self.backoff;
        self.backoff = (self.backoff * 2).min(self.max);
        b / 2 + uniform(rng, b / 2)
    }
}

/// The most a site adds to central's pushback. Central already gave each
/// refused site its own turn; this only keeps sites from acting in the
/// same microsecond, and stays small so the admission rate holds.
const MAX_BUSY_JITTER: Duration = Duration::from_millis(100);

fn uniform(rng: &mut impl Rng, upto: Duration) -> Duration {
    if upto.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_micros(rng.random_range(0..=upto.as_micros().min(u64::MAX as u128) as u64))
}

/// The pushback a refusal carries, if it is a "busy, retry after" answer.
pub fn pushback(status: &tonic::Status) -> Option<Duration> {
    let ms: u64 = status
        .metadata()
        .get(PUSHBACK_METADATA)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

/// A "busy, retry after" refusal: `RESOURCE_EXHAUSTED` with the pushback
/// in [`PUSHBACK_METADATA`] and in words.
pub fn busy(after: Duration) -> tonic::Status {
    let ms = after.as_millis().max(1);
    let mut status = tonic::Status::resource_exhausted(format!(
        "central is busy admitting other sites' streams: retry after {ms} ms"
    ));
    if let Ok(v) = ms.to_string().parse() {
        status.metadata_mut().insert(PUSHBACK_METADATA, v);
    }
    status
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    #[test]
    fn a_lost_stream_waits_within_the_spread_and_many_sites_cover_it() {
        let spread = Duration::from_secs(2);
        let mut rng = StdRng::seed_from_u64(7);
        let mut quarters = [0u32; 4];
        for _ in 0..1000 {
            let mut s = ReconnectSchedule::new(spread, Duration::from_secs(10));
            let d = s.next_delay_with(Ended::Lost(STABLE), &mut rng);
            assert!(d <= spread, "{d:?}");
            quarters[(d.as_millis() * 4 / 2001) as usize] += 1;
        }
        // Uniform: each quarter of the window gets about 250 of 1,000.
        for q in quarters {
            assert!((180..=320).contains(&q), "{quarters:?}");
        }
        let mut s = ReconnectSchedule::new(Duration::ZERO, Duration::from_secs(10));
        assert_eq!(
            s.next_delay_with(Ended::Lost(STABLE), &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn failures_back_off_with_jitter_up_to_the_max_and_a_lost_stream_resets_it() {
        let mut rng = StdRng::seed_from_u64(1);
        let max = Duration::from_millis(1_600);
        let mut s = ReconnectSchedule::new(Duration::from_millis(500), max);
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..10 {
            let d = s.next_delay_with(Ended::Failed, &mut rng);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(max);
        }
        assert!(s.next_delay_with(Ended::Lost(STABLE), &mut rng) <= Duration::from_millis(500));
        let d = s.next_delay_with(Ended::Failed, &mut rng);
        assert!(
            d <= Duration::from_millis(100),
            "the backoff starts again: {d:?}"
        );
    }

    #[test]
    fn a_stream_that_ends_as_soon_as_it_opens_backs_off() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut s = ReconnectSchedule::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut last = Duration::ZERO;
        for _ in 0..8 {
            last = s.next_delay_with(Ended::Lost(Duration::from_millis(50)), &mut rng);
        }
        assert!(last >= Duration::from_millis(2_500), "{last:?}");
    }

    #[test]
    fn busy_waits_what_central_asked_plus_a_little_and_keeps_the_backoff() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut s = ReconnectSchedule::new(Duration::ZERO, Duration::from_secs(10));
        s.next_delay_with(Ended::Failed, &mut rng);
        for _ in 0..100 {
            let d = s.next_delay_with(Ended::Busy(Duration::from_millis(800)), &mut rng);
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(840),
                "{d:?}"
            );
            let d = s.next_delay_with(Ended::Busy(Duration::from_secs(30)), &mut rng);
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_millis(30_100),
                "{d:?}"
            );
        }
        let d = s.next_delay_with(Ended::Failed, &mut rng);
        assert!(
            d >= Duration::from_millis(100) && d <= Duration::from_millis(200),
            "{d:?}"
        );
    }

    #[test]
    fn the_busy_answer_carries_its_pushback_and_others_do_not() {
        let status = busy(Duration::from_millis(1_250));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(pushback(&status), Some(Duration::from_millis(1_250)));
        assert!(
            status.message().contains("retry after 1250 ms"),
            "{}",
            status.message()
        );
        assert_eq!(pushback(&tonic::Status::unavailable("standby")), None);
    }
}
