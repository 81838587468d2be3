//! The token bucket that spreads sends at the ceiling: governor's GCRA, on a
//! clock the caller sets, so the same limiter runs live and in virtual time.
//!
//! governor quotas cannot change in place; [`Bucket::new`] builds a limiter
//! for a new rate and consumes its burst at once, because a fresh limiter is
//! full and every swap would otherwise let a clump of `burst` messages out.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A clock that shows whatever time it was last set to.
#[derive(Debug, Default)]
struct SetClock(Cell<Duration>);

impl Clock for SetClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.get()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, SetClock, NoOpMiddleware<Duration>>;

/// A token bucket releasing `rate` messages per second, at most `burst` back
/// to back.
pub struct Bucket {
    limiter: Limiter,
    pub rate: f64,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("rate", &self.rate).finish()
    }
}

/// Shortest interval between tokens governor is given (a rate of 10^9/s).
const MIN_PERIOD: Duration = Duration::from_nanos(1);

impl Bucket {
    /// A bucket at `rate` per second that starts empty at `now` (seconds).
    pub fn new(rate: f64, burst: u32, now: f64) -> Bucket {
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-6)).max(MIN_PERIOD);
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = Quota::with_period(period)
            .expect("the period is positive")
            .allow_burst(burst);
        let clock = SetClock::default();
        clock.0.set(Duration::from_secs_f64(now.max(0.0)));
        let limiter = RateLimiter::direct_with_clock(quota, clock);
        // Start empty: take the whole burst now.
        let _ = limiter.check_n(burst);
        Bucket { limiter, rate }
    }

    /// Takes a token at `now`, or says how many seconds until one is there.
    pub fn take(&self, now: f64) -> Result<(), f64> {
        let now = Duration::from_secs_f64(now.max(0.0));
        // The clock only moves forward, like the clock governor expects.
        if now > self.limiter.clock().0.get() {
            self.limiter.clock().0.set(now);
        }
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(now).as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_empty_then_releases_at_the_rate_with_a_burst_after_idling() {
        let bucket = Bucket::new(2.0, 3, 100.0);
        let wait = bucket.take(100.0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-6, "{wait}");
        assert!(bucket.take(100.5).is_ok());
        assert!(bucket.take(100.5).is_err());
        // After a long idle time: the burst, then the rate again.
        for _ in 0..3 {
            assert!(bucket.take(200.0).is_ok());
        }
        assert!(bucket.take(200.0).is_err());
    }

    #[test]
    fn never_releases_more_than_rate_times_window_plus_burst() {
        let bucket = Bucket::new(10.0, 5, 0.0);
        let mut sent = Vec::new();
        let mut now = 0.0;
        while now < 60.0 {
            match bucket.take(now) {
                Ok(()) => sent.push(now),
                Err(wait) => now += wait,
            }
        }
        for (index, start) in sent.iter().enumerate() {
            let in_window = sent[index..]
                .iter()
                .take_while(|t| **t < start + 1.0)
                .count();
            assert!(
                in_window <= 10 + 5,
                "{in_window} in the second from {start}"
            );
        }
        assert!(sent.len() >= 595, "keeps up with the rate: {}", sent.len());
    }
}
