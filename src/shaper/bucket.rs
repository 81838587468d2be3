//! The token bucket that spreads sends at the ceiling: governor's GCRA, on a
//! clock the caller sets, so the same limiter runs live and in virtual time.
//!
//! governor quotas cannot change in place, and a fresh limiter is full, so
//! swapping limiters naively lets a clump of `burst` messages out at every
//! ceiling change. [`Bucket::new`] starts empty; [`Bucket::rebuilt`] starts
//! with the tokens the old bucket has for certain (what it refilled since
//! its last send, as if that send had emptied it), so a swap never releases
//! more than the old bucket would have, and an idle gateway's next message
//! still goes at once.

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
    /// The time the bucket was made; its clock counts from there, so any
    /// time axis works (governor's clock cannot go below zero).
    origin: f64,
    /// When a token was last taken (or the bucket made).
    last_take: f64,
    burst: u32,
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
        Bucket::with_tokens(rate, burst, now, 0)
    }

    /// A bucket for a new rate at `now`, holding the tokens this one
    /// certainly has (see the module notes).
    pub fn rebuilt(&self, rate: f64, burst: u32, now: f64) -> Bucket {
        let refilled = ((now - self.last_take).max(0.0) * self.rate).floor();
        let tokens = refilled.min(f64::from(self.burst.min(burst))) as u32;
        Bucket::with_tokens(rate, burst, now, tokens)
    }

    fn with_tokens(rate: f64, burst: u32, now: f64, tokens: u32) -> Bucket {
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-6)).max(MIN_PERIOD);
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = Quota::with_period(period)
            .expect("the period is positive")
            .allow_burst(burst);
        let limiter = RateLimiter::direct_with_clock(quota, SetClock::default());
        if let Some(used) = NonZeroU32::new(burst.get() - tokens.min(burst.get())) {
            let _ = limiter.check_n(used);
        }
        Bucket {
            limiter,
            origin: now,
            last_take: now,
            burst: burst.get(),
            rate,
        }
    }

    /// Takes a token at `now`, or says how many seconds until one is there.
    pub fn take(&mut self, now: f64) -> Result<(), f64> {
        let at = Duration::from_secs_f64((now - self.origin).max(0.0));
        // The clock only moves forward, like the clock governor expects.
        if at > self.limiter.clock().0.get() {
            self.limiter.clock().0.set(at);
        }
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(at).as_secs_f64())?;
        self.last_take = self.last_take.max(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_empty_then_releases_at_the_rate_with_a_burst_after_idling() {
        let mut bucket = Bucket::new(2.0, 3, 100.0);
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
    fn a_rebuilt_bucket_keeps_only_the_tokens_the_old_one_surely_had() {
        let mut old = Bucket::new(1.0, 5, 0.0);
        // Idle for a minute: full again, and a rebuild keeps it so.
        let mut idle = old.rebuilt(2.0, 5, 60.0);
        for _ in 0..5 {
            assert!(idle.take(60.0).is_ok());
        }
        assert!(idle.take(60.0).is_err());
        // Right after a send, a rebuild holds nothing: no free clump.
        assert!(old.take(60.0).is_ok());
        let mut busy = old.rebuilt(2.0, 5, 60.0);
        assert!(busy.take(60.0).is_err());
        // Never more than the new burst.
        let mut smaller = Bucket::new(1.0, 5, 0.0).rebuilt(1.0, 2, 100.0);
        assert!(smaller.take(100.0).is_ok() && smaller.take(100.0).is_ok());
        assert!(smaller.take(100.0).is_err());
    }

    #[test]
    fn any_time_axis_works() {
        let mut bucket = Bucket::new(1.0, 2, -3_600.0);
        assert!(bucket.take(0.0).is_ok());
        assert!(bucket.take(0.0).is_ok());
        assert!(bucket.take(0.0).is_err());
    }

    #[test]
    fn never_releases_more_than_rate_times_window_plus_burst() {
        let mut bucket = Bucket::new(10.0, 5, 0.0);
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
