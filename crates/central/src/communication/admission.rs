//! Admission of new site streams at a configured rate (issue 22): the
//! reconnect storm after a central restart, tamed on central's side.
//!
//! Main type: [`Admission`]. A stream that has authenticated asks
//! [`Admission::admit`]; the answer is "go on" or "busy, retry after D",
//! which the stream turns into [`sitelink_commons::reconnect::busy`].
//!
//! The rule is GCRA (the generic cell rate algorithm, a token bucket in
//! one timestamp): `burst` streams at once, then one per `1/rate`. A site
//! refused is not just told to come back later: it is given the next free
//! cell, reserved under its name, and told exactly when that cell is due.
//! So a thousand sites refused in the same second come back one cell
//! apart, each refused about once, instead of retrying in a herd
//! (`governor` and other rate-limit crates answer "not before T" without
//! reserving T for the caller, which sends every refused site back at the
//! same T; this is why it is written here).
//!
//! Reserved turns alone would not hold the rate: sites that come back
//! late (a site host or its network stalled a second, then every turn
//! due in that second arrives at once) would all be admitted together. So
//! every admission also passes a second bucket of the same rate kept in
//! real time; a site whose turn has come but finds that bucket empty is
//! given a new turn, late sites one cell apart (a shared "when it
//! refills" would send them all back together, each to be refused again).
//!
//! Invariants: admissions over any window stay within `rate × window +
//! burst` (the real-time bucket), whenever the sites come; a reservation
//! not used within [`RESERVATION_LAPSES`] after its time is dropped (its
//! cell stays spent: a site that died costs the fleet one turn, never an
//! extra admission).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sitelink_commons::SiteName;

/// A reservation this long past its time is forgotten.
pub const RESERVATION_LAPSES: Duration = Duration::from_secs(60);

/// The configured rate: `burst` at once, then `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionRate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for AdmissionRate {
    fn default() -> Self {
        Self {
            per_second: 100,
            burst: 50,
        }
    }
}

/// What [`Admission::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    Now,
    /// Come back after this; the cell is reserved for this site.
    RetryAfter(Duration),
}

pub struct Admission {
    rate: AdmissionRate,
    state: Mutex<State>,
}

struct State {
    /// GCRA's theoretical arrival time of the next cell to hand out (now
    /// or as a reserved turn).
    tat: Instant,
    /// The same for admissions as they happen.
    admitted_tat: Instant,
    /// The next turn for a site that came back late to an empty bucket:
    /// late sites get turns one cell apart too, not one shared instant.
    late_tat: Instant,
    /// The cell reserved for each refused site: when it is due.
    reserved: HashMap<SiteName, Instant>,
}

impl Admission {
    pub fn new(rate: AdmissionRate) -> Self {
        Self {
            rate,
            state: Mutex::new(State {
                tat: Instant::now(),
                admitted_tat: Instant::now(),
                late_tat: Instant::now(),
                reserved: HashMap::new(),
            }),
        }
    }

    pub fn rate(&self) -> AdmissionRate {
        self.rate
    }

    /// Admits `site` now, or reserves its cell and says when it is due.
    pub fn admit(&self, site: &SiteName) -> Admitted {
        self.admit_at(site, Instant::now())
    }

    /// [`Self::admit`] at a given instant (tests).
    pub fn admit_at(&self, site: &SiteName, now: Instant) -> Admitted {
        let interval = Duration::from_secs(1) / self.rate.per_second.max(1);
        // The bucket holds `burst` cells: a cell is free while the next
        // one's time is at most this far ahead of now.
        let tolerance = interval * self.rate.burst.saturating_sub(1);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The real-time bucket: when the next admission may happen.
        let admissible_at = s
            .admitted_tat
            .max(now)
            .checked_sub(tolerance)
            .unwrap_or(now)
            .max(now);
        if let Some(&due) = s.reserved.get(site) {
            if now >= due {
                if admissible_at > now {
                    let later = admissible_at.max(s.late_tat);
                    s.late_tat = later + interval;
                    s.reserved.insert(site.clone(), later);
                    return Admitted::RetryAfter(later - now);
                }
                s.reserved.remove(site);
                s.admitted_tat = s.admitted_tat.max(now) + interval;
                return Admitted::Now;
            }
            if due.duration_since(now) <= RESERVATION_LAPSES {
                return Admitted::RetryAfter(due - now);
            }
        }
        let tat = s.tat.max(now);
        // The earliest moment the next cell may be spent.
        let free_at = tat.checked_sub(tolerance).unwrap_or(now).max(now);
        s.tat = tat + interval;
        if free_at <= now && admissible_at <= now {
            s.admitted_tat = s.admitted_tat.max(now) + interval;
            return Admitted::Now;
        }
        let due = free_at.max(admissible_at);
        if s.reserved.len() > 1024 {
            s.reserved
                .retain(|_, due| now.saturating_duration_since(*due) < RESERVATION_LAPSES);
        }
        s.reserved.insert(site.clone(), due);
        Admitted::RetryAfter(due - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(i: usize) -> SiteName {
        SiteName::parse(&format!("site-{i}")).unwrap()
    }

    /// Each `(when, site)` dials at `when`, and again exactly when told,
    /// until admitted: the sorted admission instants, and how often each
    /// site was refused on the way.
    fn come_back_when_told(
        a: &Admission,
        mut queue: Vec<(Instant, usize)>,
    ) -> (Vec<Instant>, std::collections::HashMap<usize, u32>) {
        let mut admitted = Vec::new();
        let mut refused = std::collections::HashMap::new();
        while let Some(pos) = (0..queue.len()).min_by_key(|&k| queue[k].0) {
            let (at, i) = queue.swap_remove(pos);
            match a.admit_at(&site(i), at) {
                Admitted::Now => admitted.push(at),
                Admitted::RetryAfter(d) => {
                    assert!(d > Duration::ZERO, "told to come back at once");
                    *refused.entry(i).or_insert(0u32) += 1;
                    queue.push((at + d, i));
                }
            }
        }
        admitted.sort();
        (admitted, refused)
    }

    /// The most of `sorted` within `window` of one of them.
    fn most_within(sorted: &[Instant], window: Duration) -> usize {
        (0..sorted.len())
            .map(|k| {
                sorted[k..]
                    .iter()
                    .take_while(|t| t.duration_since(sorted[k]) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_burst_is_admitted_then_each_refused_site_gets_its_own_cell() {
        let a = Admission::new(AdmissionRate {
            per_second: 10,
            burst: 5,
        });
        let t0 = Instant::now();
        let mut told = Vec::new();
        for i in 0..25 {
            match a.admit_at(&site(i), t0) {
                Admitted::Now => assert!(i < 5, "site {i} admitted beyond the burst"),
                Admitted::RetryAfter(d) => {
                    assert!(i >= 5, "site {i} refused within the burst");
                    told.push((i, d));
                }
            }
        }
        // One cell apart (100 ms), in arrival order.
        for (k, (_, d)) in told.iter().enumerate() {
            assert_eq!(*d, Duration::from_millis(100) * (k as u32 + 1), "{told:?}");
        }
        // Early is refused again with what is left; on time is admitted,
        // spending no new cell.
        let (i, d) = told[3];
        assert_eq!(
            a.admit_at(&site(i), t0 + d / 2),
            Admitted::RetryAfter(d - d / 2)
        );
        assert_eq!(a.admit_at(&site(i), t0 + d), Admitted::Now);
        // The next newcomer queues after every reservation.
        assert_eq!(
            a.admit_at(&site(99), t0 + d),
            Admitted::RetryAfter(Duration::from_millis(2100) - d)
        );
    }

    #[test]
    fn sites_that_come_back_late_together_are_still_admitted_at_the_rate() {
        let rate = AdmissionRate {
            per_second: 10,
            burst: 2,
        };
        let a = Admission::new(rate);
        let t0 = Instant::now();
        let mut turns = Vec::new();
        for i in 0..30 {
            if let Admitted::RetryAfter(d) = a.admit_at(&site(i), t0) {
                turns.push((i, t0 + d));
            }
        }
        // Every site stalls and comes back 5 s late, all in one instant,
        // then again whenever it is told.
        let late = t0 + Duration::from_secs(5);
        let queue: Vec<(Instant, usize)> = turns.iter().map(|(i, _)| (late, *i)).collect();
        let (admitted, refused) = come_back_when_told(&a, queue);
        assert_eq!(admitted.len(), turns.len());
        // Each late site gets a turn of its own: refused once or twice
        // more, not once per site admitted before it.
        assert!(refused.values().all(|n| *n <= 2), "{refused:?}");
        let within = most_within(&admitted, Duration::from_secs(1));
        assert!(
            within <= 12,
            "{within} admitted within a second after a stall"
        );
    }

    #[test]
    fn admissions_over_any_second_stay_within_rate_and_burst() {
        let rate = AdmissionRate {
            per_second: 20,
            burst: 4,
        };
        let a = Admission::new(rate);
        let t0 = Instant::now();
        // 200 sites arrive within 100 ms and come back exactly when told.
        let queue: Vec<(Instant, usize)> = (0..200)
            .map(|i| (t0 + Duration::from_micros(i as u64 * 500), i))
            .collect();
        let (admitted, _) = come_back_when_told(&a, queue);
        assert_eq!(admitted.len(), 200);
        let within = most_within(&admitted, Duration::from_secs(1));
        assert!(within <= 24, "{within} admitted within a second");
        let span = admitted.last().unwrap().duration_since(admitted[0]);
        assert!(span >= Duration::from_millis(9_700), "{span:?}");
    }
}
