//! The receiver's view: a stream of sends judged by the volume rule, the way
//! a receiving anti-spam system judges a sending IP by its own history.
//!
//! An independent, exact implementation of the rule in continuous time (no
//! minute slots): at each send, what was sent in the window `(t - W, t]`
//! against `max(floor, warmup x the busiest window of length W that ended
//! between t - W - 7 days and t - W)`. The shaper enforces the rule with
//! conservative minute counts; this judge checks it, for the shaped output
//! and for the unshaped input side by side, and in the tests.

const WEEK: f64 = 7.0 * 86_400.0;

/// The rule for one window length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Seconds.
    pub window: f64,
    /// The allowance with no history (0 where the horizon is not budgeted).
    pub floor: u64,
    pub warmup: f64,
    /// An operator's seed for the busiest window, and until when it counts.
    pub seed: Option<(u64, f64)>,
}

/// The worst moment of a stream under a rule.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Verdict {
    /// When (the send that ended the worst window).
    pub at: f64,
    /// Units sent in the window ending there.
    pub sent: u64,
    /// What the rule allowed there.
    pub allowed: u64,
    /// The largest `sent - allowed` over all windows (0: obeyed); windows
    /// with nothing allowed (no floor, no history yet) are not judged.
    pub excess: i64,
    /// The largest `sent / allowed`.
    pub ratio: f64,
    /// The busiest window (the most sent in any window of this length) and
    /// what the rule allowed there: rarely the window above, since the
    /// allowance grows with what was sent before.
    pub busiest_sent: u64,
    pub busiest_allowed: u64,
}

/// Range maximum over a fixed array in O(1) per query.
struct SparseMax {
    levels: Vec<Vec<u64>>,
}

impl SparseMax {
    fn new(values: Vec<u64>) -> SparseMax {
        let length = values.len();
        let mut levels = vec![values];
        // Level k holds the maximum of each run of 2^k values.
        let mut width = 1;
        while width * 2 <= length {
            let previous = levels.last().expect("one level at least");
            let next = (0..=length - width * 2)
                .map(|start| previous[start].max(previous[start + width]))
                .collect();
            levels.push(next);
            width *= 2;
        }
        SparseMax { levels }
    }

    /// The largest value in `range` (0 when empty).
    fn max(&self, range: std::ops::Range<usize>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let level = (usize::BITS - 1 - range.len().leading_zeros()) as usize;
        let row = &self.levels[level];
        row[range.start].max(row[range.end - (1 << level)])
    }
}

/// A stream of sends (time, units) ready to be judged in windows of one
/// length.
pub struct Judge {
    window: f64,
    times: Vec<f64>,
    /// `prefix[i]`: units of the first `i` sends.
    prefix: Vec<u64>,
    /// Units in the window ending at each send.
    ending: SparseMax,
    /// Sends before this time are history: they count, they are not judged.
    judged_from: f64,
}

impl Judge {
    pub fn new(mut sends: Vec<(f64, u64)>, window: f64) -> Judge {
        sends.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut prefix = Vec::with_capacity(sends.len() + 1);
        prefix.push(0);
        for (_, units) in &sends {
            prefix.push(prefix.last().expect("starts with 0") + units);
        }
        let mut judge = Judge {
            window,
            times: sends.into_iter().map(|(at, _)| at).collect(),
            prefix,
            ending: SparseMax::new(Vec::new()),
            judged_from: f64::NEG_INFINITY,
        };
        let ending = judge.times.iter().map(|at| judge.count(*at)).collect();
        judge.ending = SparseMax::new(ending);
        judge
    }

    /// Judges only the sends from `from` on: those before are the history
    /// the rule weighs them against (`simulate --history`).
    pub fn judging_from(mut self, from: f64) -> Judge {
        self.judged_from = from;
        self
    }

    /// Sends at or before `at`.
    fn upto(&self, at: f64) -> usize {
        self.times.partition_point(|time| *time <= at)
    }

    /// Units sent in `(at - window, at]`.
    pub fn count(&self, at: f64) -> u64 {
        self.prefix[self.upto(at)] - self.prefix[self.upto(at - self.window)]
    }

    /// What `rule` allows in the window ending at `at`: the busiest window
    /// that ended between `at - window - 7 days` and `at - window` (one ends
    /// at a send, or at either end of that range), times `warmup`.
    pub fn allowance(&self, rule: &Rule, at: f64) -> u64 {
        let (from, to) = (at - self.window - WEEK, at - self.window);
        let inside = self.times.partition_point(|time| *time < from)..self.upto(to);
        let seed = rule
            .seed
            .filter(|(_, until)| at <= *until)
            .map_or(0, |(units, _)| units);
        let busiest = self
            .ending
            .max(inside)
            .max(self.count(from))
            .max(self.count(to))
            .max(seed);
        rule.floor
            .max((rule.warmup * busiest as f64).floor() as u64)
    }

    /// Judges every send under `rule` (whose window is this judge's).
    pub fn judge(&self, rule: &Rule) -> Verdict {
        let mut verdict = Verdict::default();
        let first = self.times.partition_point(|time| *time < self.judged_from);
        for at in &self.times[first..] {
            let allowed = self.allowance(rule, *at);
            if allowed == 0 {
                // No floor and no history yet: nothing to compare with.
                continue;
            }
            let sent = self.count(*at);
            if sent > verdict.busiest_sent {
                verdict.busiest_sent = sent;
                verdict.busiest_allowed = allowed;
            }
            let ratio = sent as f64 / allowed.max(1) as f64;
            if ratio > verdict.ratio {
                verdict = Verdict {
                    at: *at,
                    sent,
                    allowed,
                    ratio,
                    ..verdict
                };
            }
            verdict.excess = verdict.excess.max(sent as i64 - allowed as i64);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: f64 = 86_400.0;

    fn rule(floor: u64) -> Rule {
        Rule {
            window: DAY,
            floor,
            warmup: 2.0,
            seed: None,
        }
    }

    #[test]
    fn judges_a_day_against_the_busiest_earlier_day() {
        // 100 on day 1, 200 on day 3, 500 on day 5.
        let mut sends: Vec<(f64, u64)> = (0..100).map(|i| (f64::from(i), 1)).collect();
        sends.extend((0..200).map(|i| (2.0 * DAY + f64::from(i), 1)));
        sends.extend((0..500).map(|i| (4.0 * DAY + f64::from(i), 1)));
        let judge = Judge::new(sends, DAY);
        assert_eq!(judge.count(4.0 * DAY + 1_000.0), 500);
        let verdict = judge.judge(&rule(150));
        // Day 5 had 200 (day 3) x 2 = 400 allowed.
        assert_eq!(
            (verdict.sent, verdict.allowed, verdict.excess),
            (500, 400, 100)
        );
        assert!((verdict.ratio - 1.25).abs() < 1e-9);
        // Day 5 is also the busiest; with 300 on day 2 instead, the tightest
        // day is day 2 (300 of 200 allowed) and the busiest day 5 (500 of 600).
        assert_eq!((verdict.busiest_sent, verdict.busiest_allowed), (500, 400));
        let mut sends: Vec<(f64, u64)> = (0..100).map(|i| (f64::from(i), 1)).collect();
        sends.extend((0..300).map(|i| (DAY + f64::from(i), 1)));
        sends.extend((0..500).map(|i| (4.0 * DAY + f64::from(i), 1)));
        let verdict = Judge::new(sends, DAY).judge(&rule(150));
        assert_eq!((verdict.sent, verdict.allowed), (300, 200));
        assert_eq!((verdict.busiest_sent, verdict.busiest_allowed), (500, 600));
        assert_eq!(judge.judge(&rule(500)).excess, 0);
    }

    #[test]
    fn a_window_never_raises_its_own_allowance_and_a_week_is_forgotten() {
        // 300 at once after a quiet history of 10 a day for a week, then 300
        // again nine days later.
        let mut sends: Vec<(f64, u64)> = (0..7).map(|day| (f64::from(day) * DAY, 10)).collect();
        sends.push((7.5 * DAY, 300));
        sends.push((17.0 * DAY, 300));
        let verdict = Judge::new(sends, DAY).judge(&rule(0));
        // At 7.5 days the busiest earlier day held 10: 20 allowed, not 600.
        // Nine days later that run is history no more: nothing to judge by.
        assert_eq!((verdict.sent, verdict.allowed), (300, 20), "{verdict:?}");
        assert_eq!(verdict.excess, 280);
        let seeded = Rule {
            seed: Some((150, 8.0 * DAY)),
            ..rule(0)
        };
        let verdict = Judge::new(vec![(7.5 * DAY, 300)], DAY).judge(&seeded);
        assert_eq!((verdict.excess, verdict.allowed), (0, 300));
    }

    #[test]
    fn range_maximum() {
        let table = SparseMax::new(vec![3, 1, 4, 1, 5, 9, 2, 6]);
        assert_eq!(table.max(0..8), 9);
        assert_eq!(table.max(0..4), 4);
        assert_eq!(table.max(6..8), 6);
        assert_eq!(table.max(3..4), 1);
        assert_eq!(table.max(2..2), 0);
    }
}
