//! The learned baseline: the send rate that is normal for a gateway.
//!
//! A plain mean is wrong for application mail: an app that sends in business
//! hours and sleeps at night would see its daytime peak shaped every morning.
//! So the baseline holds the typical *peak* of the observed send rate and lets
//! it fade slowly (a half-life of days) when traffic drops or stops. It never
//! rises faster than the warm-up factor (e.g. 2x per day), whatever the
//! observation, which is what turns a sudden burst into a ramp. It never fades
//! below `floor` (the rate `min_rate` already allows), so a long-idle gateway
//! warms up from there rather than from zero.

const DAY: f64 = 86_400.0;

/// Peak-hold with bounded growth and slow decay. Rates are per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub rate: f64,
    /// Growth factor allowed per day (`warmup`).
    pub growth_per_day: f64,
    /// Seconds for the baseline to fade to half when nothing is sent.
    pub half_life: f64,
    pub floor: f64,
}

impl Baseline {
    /// Moves the baseline towards `observed` after `elapsed` seconds.
    pub fn update(&mut self, observed: f64, elapsed: f64) {
        if elapsed <= 0.0 {
            return;
        }
        if observed > self.rate {
            let limit = self.rate * self.growth_per_day.powf(elapsed / DAY);
            self.rate = observed.min(limit);
        } else {
            let faded = self.rate * 0.5f64.powf(elapsed / self.half_life);
            self.rate = faded.max(observed);
        }
        self.rate = self.rate.max(self.floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(rate: f64) -> Baseline {
        Baseline {
            rate,
            growth_per_day: 2.0,
            half_life: 7.0 * DAY,
            floor: 0.01,
        }
    }

    #[test]
    fn grows_no_faster_than_the_warmup_whatever_it_sees() {
        let mut learned = baseline(1.0);
        // A huge demand, observed once a second for three days.
        for _ in 0..3 * 86_400 {
            learned.update(1_000.0, 1.0);
        }
        assert!((learned.rate - 8.0).abs() < 0.01, "{}", learned.rate);
    }

    #[test]
    fn follows_a_lower_peak_at_once_and_holds_it() {
        let mut learned = baseline(1.0);
        learned.update(1.5, 60.0);
        assert!(learned.rate < 1.01 && learned.rate > 1.0, "bounded growth");
        let mut learned = baseline(1.0);
        for _ in 0..600 {
            learned.update(0.9, 1.0);
        }
        assert!(learned.rate > 0.99, "a peak fades by days, not minutes");
    }

    #[test]
    fn fades_by_half_life_when_traffic_stops_down_to_the_floor() {
        let mut learned = baseline(1.0);
        learned.update(0.0, 7.0 * DAY);
        assert!((learned.rate - 0.5).abs() < 1e-9);
        learned.update(0.0, 365.0 * DAY);
        assert_eq!(learned.rate, 0.01);
    }

    #[test]
    fn the_step_size_does_not_change_the_curve() {
        let mut fine = baseline(1.0);
        for _ in 0..86_400 {
            fine.update(100.0, 1.0);
        }
        let mut coarse = baseline(1.0);
        coarse.update(100.0, 86_400.0);
        assert!((fine.rate - coarse.rate).abs() < 1e-6);
    }
}
