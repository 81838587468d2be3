//! The retry schedule: exponential backoff with jitter, capped, and the
//! maximum age after which a message is given up.
//!
//! Pure: the caller passes the attempt number and a random draw, so the
//! schedule is tested exactly.

use std::time::Duration;

/// `retry_initial` doubled per attempt up to `retry_max`, +-20% jitter so
/// messages deferred together do not all come back together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `attempt`-th failure (1-based); `jitter` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        };
        let plain: Vec<u64> = (1..=8).map(|n| backoff.delay(n, 0.5).as_secs()).collect();
        assert_eq!(plain, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff.delay(1, 0.0), Duration::from_secs(48));
        assert_eq!(backoff.delay(1, 1.0), Duration::from_secs(72));
        assert_eq!(backoff.delay(10, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff.delay(u32::MAX, 0.5), Duration::from_secs(3600));
    }
}
