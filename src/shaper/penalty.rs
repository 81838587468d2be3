//! The throttling penalty: how a gateway's "slow down" moves the ceiling,
//! and how the ceiling comes back.
//!
//! - One cut per episode. An episode begins with the first throttling
//!   reply and lasts until the gateway accepts mail again after its pause;
//!   however many messages hear "slow down" meanwhile (every one in flight
//!   does), the ceiling is cut once. A gateway that still throttles at the
//!   reduced rate opens a new episode, and only then is cut again.
//! - A floor. A cut never takes the ceiling under `min_rate`: the penalty
//!   is bounded by what keeps the ceiling there, so a long row of episodes
//!   cannot dig a hole that takes days to climb out of.
//! - Bounded recovery. Once the gateway accepts again, the penalty climbs
//!   back to 1 within `backoff_recovery`, on a log-linear ramp (each equal
//!   step of time multiplies the ceiling by the same factor): the rate comes
//!   back gradually, never snapping from the cut to the full ceiling.
//!
//! Pure: times are given, never read.

/// Where the gateway stands with us (see the module notes); saved with
/// the shaping state, so a restart neither ends an episode before the
/// gateway accepts again nor starts a recovery ramp over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// No penalty.
    Calm,
    /// Cut to this penalty; waiting for the gateway to accept again.
    Episode(f64),
    /// Climbing back from `from`, starting at `since` (Unix seconds).
    Recovering { since: f64, from: f64 },
}

/// What `/status` says of the penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PenaltyPhase {
    Calm,
    Throttled,
    Recovering,
}

impl PenaltyPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PenaltyPhase::Calm => "calm",
            PenaltyPhase::Throttled => "throttled",
            PenaltyPhase::Recovering => "recovering",
        }
    }
}

/// The throttling multiplier of one gateway's ceiling (see the module
/// notes).
#[derive(Debug, Clone)]
pub struct Penalty {
    factor: f64,
    /// Seconds from the end of an episode to a penalty of 1.
    recovery: f64,
    phase: Phase,
}

impl Penalty {
    /// No penalty; a cut multiplies by `factor`, recovery takes `recovery`
    /// seconds.
    pub fn new(factor: f64, recovery: f64) -> Penalty {
        Penalty {
            factor,
            recovery: recovery.max(f64::MIN_POSITIVE),
            phase: Phase::Calm,
        }
    }

    /// The penalty in `phase`, as [`Penalty::phase_now`] gave it.
    pub fn in_phase(factor: f64, recovery: f64, phase: Phase) -> Penalty {
        // An episode may hold a penalty of 1 (a cut the floor took back
        // whole): still open until the gateway accepts. A ramp from 1 is no
        // ramp.
        let phase = match phase {
            Phase::Episode(value) if value.is_finite() && value > 0.0 && value <= 1.0 => phase,
            Phase::Recovering { since, from }
                if from.is_finite() && from > 0.0 && from < 1.0 && since.is_finite() =>
            {
                phase
            }
            _ => Phase::Calm,
        };
        Penalty {
            phase,
            ..Penalty::new(factor, recovery)
        }
    }

    /// Where the penalty stands, to save (see [`Penalty::in_phase`]).
    pub fn phase_now(&self) -> Phase {
        self.phase
    }

    /// A penalty saved at `saved_at` by a version that kept only its value:
    /// it has been recovering since then (no one was sending to be
    /// throttled).
    pub fn restored(factor: f64, recovery: f64, value: f64, saved_at: f64) -> Penalty {
        let mut penalty = Penalty::new(factor, recovery);
        let value = value.clamp(0.0, 1.0);
        if value < 1.0 && value > 0.0 {
            penalty.phase = Phase::Recovering {
                since: saved_at,
                from: value,
            };
        }
        penalty
    }

    /// The multiplier at `now`.
    pub fn at(&self, now: f64) -> f64 {
        match self.phase {
            Phase::Calm => 1.0,
            Phase::Episode(value) => value,
            Phase::Recovering { since, from } => {
                let done = ((now - since) / self.recovery).clamp(0.0, 1.0);
                from.powf(1.0 - done).min(1.0)
            }
        }
    }

    /// Seconds from `now` until the penalty is 1 again, if the gateway
    /// accepts at once when an episode is open.
    pub fn left(&self, now: f64) -> f64 {
        match self.phase {
            Phase::Calm => 0.0,
            Phase::Episode(_) => self.recovery,
            Phase::Recovering { since, .. } => (since + self.recovery - now).max(0.0),
        }
    }

    /// The phase at `now`, for `/status`.
    pub fn phase(&self, now: f64) -> PenaltyPhase {
        match self.phase {
            Phase::Calm => PenaltyPhase::Calm,
            Phase::Episode(_) => PenaltyPhase::Throttled,
            Phase::Recovering { .. } if self.left(now) > 0.0 => PenaltyPhase::Recovering,
            Phase::Recovering { .. } => PenaltyPhase::Calm,
        }
    }

    /// The gateway throttled at `now`. Opens an episode with one cut, never
    /// under `floor` (the penalty that keeps the ceiling at `min_rate`), and
    /// returns true; within an episode, returns false and cuts nothing.
    pub fn throttled(&mut self, now: f64, floor: f64) -> bool {
        if matches!(self.phase, Phase::Episode(_)) {
            return false;
        }
        let current = self.at(now);
        let cut = (current * self.factor).max(floor.min(current));
        self.phase = Phase::Episode(cut);
        true
    }

    /// The gateway accepted mail at `now` (after its pause): an episode
    /// ends and recovery begins.
    pub fn accepted(&mut self, now: f64) {
        if let Phase::Episode(value) = self.phase {
            self.phase = if value < 1.0 {
                Phase::Recovering {
                    since: now,
                    from: value,
                }
            } else {
                Phase::Calm
            };
        }
    }

    /// True while an episode waits for the gateway to accept again.
    pub fn in_episode(&self) -> bool {
        matches!(self.phase, Phase::Episode(_))
    }

    /// Another node heard throttling (cluster mode): the shared penalty
    /// `value`, recovering from `since` (the end of the shared pause), is
    /// taken when it is below this one's at `now`, never under `floor`.
    /// While the shared pause lasts (or this node's own episode is open)
    /// it is taken as an open episode: this node's next acceptance ends it,
    /// and a throttling reply meanwhile cuts nothing more, here or in the
    /// shared state. Returns true when it was taken.
    pub fn adopt(&mut self, now: f64, value: f64, since: f64, floor: f64) -> bool {
        let value = value.max(floor.min(1.0)).clamp(0.0, 1.0);
        if value >= 1.0 {
            return false;
        }
        let shared = if since > now || self.in_episode() {
            Phase::Episode(value)
        } else {
            Phase::Recovering { since, from: value }
        };
        let theirs = Penalty {
            phase: shared,
            ..self.clone()
        }
        .at(now);
        if theirs >= self.at(now) - 1e-9 {
            return false;
        }
        self.phase = shared;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: f64 = 3_600.0;

    #[test]
    fn a_saved_phase_comes_back_as_it_was() {
        // An episode whose cut the floor took back whole is still open.
        let floored = Penalty::in_phase(0.5, 3_600.0, Phase::Episode(1.0));
        assert!(floored.in_episode());
        let ramp = Phase::Recovering {
            since: 100.0,
            from: 0.5,
        };
        assert_eq!(Penalty::in_phase(0.5, 3_600.0, ramp).phase_now(), ramp);
        for nonsense in [
            Phase::Episode(f64::NAN),
            Phase::Episode(0.0),
            Phase::Recovering {
                since: 100.0,
                from: 1.0,
            },
        ] {
            assert_eq!(
                Penalty::in_phase(0.5, 3_600.0, nonsense).phase_now(),
                Phase::Calm
            );
        }
    }

    #[test]
    fn one_cut_per_episode_and_a_new_one_after_the_gateway_accepts() {
        let mut penalty = Penalty::new(0.5, HOUR);
        assert!(penalty.throttled(0.0, 0.0));
        for at in [1.0, 30.0, 61.0, 120.0] {
            assert!(!penalty.throttled(at, 0.0), "same episode at {at}");
        }
        assert_eq!(penalty.at(120.0), 0.5);
        assert_eq!(penalty.phase(120.0), PenaltyPhase::Throttled);
        penalty.accepted(130.0);
        assert_eq!(penalty.phase(130.0), PenaltyPhase::Recovering);
        assert!(penalty.throttled(140.0, 0.0), "a new episode");
        let cut = penalty.at(140.0);
        assert!(cut < 0.26 && cut > 0.25, "{cut}");
    }

    #[test]
    fn a_cut_never_goes_under_the_floor() {
        let mut penalty = Penalty::new(0.5, HOUR);
        let mut now = 0.0;
        for _ in 0..10 {
            penalty.throttled(now, 0.2);
            penalty.accepted(now + 60.0);
            now += 61.0;
        }
        assert!(penalty.at(now) >= 0.2 - 1e-9, "{}", penalty.at(now));
        // Already under the floor (the baseline grew since): no deeper.
        let mut low = Penalty::restored(0.5, HOUR, 0.1, 0.0);
        low.throttled(0.0, 0.2);
        assert!((low.at(0.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn recovery_is_log_linear_and_complete_within_the_bound() {
        let mut penalty = Penalty::new(0.25, HOUR);
        penalty.throttled(0.0, 0.0);
        assert_eq!(
            penalty.at(5.0 * HOUR),
            0.25,
            "no recovery before the gateway accepts"
        );
        penalty.accepted(10.0 * HOUR);
        assert!((penalty.at(10.5 * HOUR) - 0.5).abs() < 1e-9);
        assert!((penalty.left(10.5 * HOUR) - HOUR / 2.0).abs() < 1e-9);
        assert_eq!(penalty.at(11.0 * HOUR), 1.0);
        assert_eq!(penalty.phase(11.0 * HOUR), PenaltyPhase::Calm);
        assert_eq!(penalty.left(12.0 * HOUR), 0.0);
    }

    #[test]
    fn a_saved_penalty_recovers_over_the_down_time() {
        let penalty = Penalty::restored(0.5, HOUR, 0.5, 100.0);
        assert!((penalty.at(100.0 + HOUR / 2.0) - 0.5f64.sqrt()).abs() < 1e-9);
        assert_eq!(Penalty::restored(0.5, HOUR, 1.0, 0.0).at(0.0), 1.0);
    }

    #[test]
    fn a_shared_penalty_is_taken_when_lower_and_floored() {
        let mut penalty = Penalty::new(0.5, HOUR);
        assert!(penalty.adopt(0.0, 0.25, 60.0, 0.5));
        assert_eq!(penalty.at(30.0), 0.5, "floored, and paused until 60");
        assert!(!penalty.adopt(30.0, 0.75, 60.0, 0.0), "higher: kept");
        // Taken during the shared pause: an open episode, which a throttling
        // reply after the pause does not cut again (nor tell the others),
        // and which this node's own acceptance ends.
        assert_eq!(penalty.phase(70.0), PenaltyPhase::Throttled);
        assert!(!penalty.throttled(70.0, 0.0));
        assert_eq!(penalty.at(70.0), 0.5);
        penalty.accepted(80.0);
        assert_eq!(penalty.phase(80.0), PenaltyPhase::Recovering);
        // Recovering from the end of the shared pause, as the Lua does.
        let mut shared = Penalty::new(0.5, HOUR);
        assert!(shared.adopt(0.0, 0.25, -HOUR / 2.0, 0.0));
        assert!((shared.at(0.0) - 0.5).abs() < 1e-9);
    }
}
