//! A sliding-window event counter: how many events per second happened over
//! the last `window`. Time is an input (seconds on any axis), so the same
//! meter runs on the live clock and in the simulator.

/// Counts events in equal slots covering one window.
#[derive(Debug, Clone)]
pub struct RateMeter {
    slot_seconds: f64,
    slots: Vec<f64>,
    /// Number of the slot that `slots[current % len]` holds.
    current: i64,
}

impl RateMeter {
    /// A meter over `window` seconds kept in `slots` slots.
    pub fn new(window: f64, slots: usize) -> RateMeter {
        RateMeter {
            slot_seconds: window / slots as f64,
            slots: vec![0.0; slots],
            current: 0,
        }
    }

    /// Records `count` events at `now`.
    pub fn add(&mut self, now: f64, count: f64) {
        let index = self.advance(now);
        self.slots[index] += count;
    }

    /// Events per second over the window ending at `now`.
    pub fn rate(&mut self, now: f64) -> f64 {
        self.advance(now);
        self.slots.iter().sum::<f64>() / (self.slot_seconds * self.slots.len() as f64)
    }

    /// Clears the slots that fell out of the window; returns the index of
    /// the slot for `now`.
    fn advance(&mut self, now: f64) -> usize {
        let len = self.slots.len() as i64;
        let slot = (now / self.slot_seconds).floor() as i64;
        if slot > self.current {
            let stale = (slot - self.current).min(len);
            for step in 1..=stale {
                let index = (self.current + step).rem_euclid(len) as usize;
                self.slots[index] = 0.0;
            }
            self.current = slot;
        }
        self.current.rem_euclid(len) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_over_the_window_and_forgets_after_it() {
        let mut meter = RateMeter::new(60.0, 12);
        for second in 0..60 {
            meter.add(1_000.0 + f64::from(second), 2.0);
        }
        assert!((meter.rate(1_059.9) - 2.0).abs() < 0.2);
        assert!(meter.rate(1_090.0) < 1.1, "half the window has passed");
        assert_eq!(meter.rate(1_200.0), 0.0);
        meter.add(5_000.0, 60.0);
        assert_eq!(
            meter.rate(5_000.0),
            1.0,
            "a jump far ahead clears every slot"
        );
    }
}
