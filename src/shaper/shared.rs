//! What one node's model and the gateway's shared state (cluster mode, see
//! `cluster`) say to each other: pure values and the arithmetic on them.
//!
//! Every sidecar in front of a gateway runs its own model, but receivers
//! judge the gateway, so the limits that matter (the token bucket at the
//! ceiling, the hour and day budgets, the hard caps, a throttling pause) are
//! enforced once, in the shared state, on the shared state's clock. A node
//! proposes a send with the limits its model computes ([`SharedLimits`]);
//! the shared state grants it or says how long to wait, and tells the node
//! what the others sent ([`Elsewhere`]) and the gateway's feedback
//! ([`SharedFeedback`]), which the node's model takes in so its own view,
//! its learned baseline included, is the gateway's.
//!
//! When the shared state cannot be reached the node runs on its share:
//! every send it makes counts `nodes` times in its own caps and budgets and
//! its bucket runs at the ceiling divided by `nodes` (see
//! `GatewayModel::set_share`). `nodes` nodes doing so together stay within
//! what one node alone would send, starting from everything the cluster had
//! sent when the state was last seen. [`Ledger`] keeps what the node sent
//! meanwhile, to be added to the shared counts when the state is back.
//!
//! Invariants: nothing here does I/O or reads a clock; counts only grow
//! (a shared state that restarted empty is recognised by its epoch, not by
//! smaller numbers).

use std::collections::BTreeMap;

use crate::config::{AppClass, Horizon};

/// A volume budget as the shared state checks it (see `volume`): in the
/// rolling `horizon`, all mail at most `allowance` units, bulk mail at most
/// `bulk_share`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedBudget {
    pub horizon: Horizon,
    pub allowance: u64,
    pub bulk_share: u64,
}

/// A hard cap as the shared state checks it: `limit` units per `window`
/// seconds, counted in 60 slots like `caps::Cap`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedCap {
    pub window: u64,
    pub limit: u64,
}

/// Everything one send must fit in the shared state, as this node's model
/// sees the gateway now.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedLimits {
    /// The token bucket: messages per second at the ceiling, and its depth.
    pub rate: f64,
    pub burst: u32,
    pub budgets: Vec<SharedBudget>,
    pub caps: Vec<SharedCap>,
}

impl SharedLimits {
    /// The GCRA's emission interval and tolerance in microseconds (the
    /// shared state's clock unit): one message per `1/rate`, `burst - 1`
    /// of them early at most.
    pub fn gcra_micros(&self) -> (u64, u64) {
        let emission = (1e6 / self.rate.max(1e-9)).ceil().min(1e15) as u64;
        (emission, emission * u64::from(self.burst.max(1) - 1))
    }
}

/// One proposed send.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub units: u64,
    pub class: AppClass,
    pub limits: SharedLimits,
}

/// What the other nodes sent, as totals since the shared state began: the
/// difference between two readings is what they sent in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Elsewhere {
    pub messages: u64,
    /// Units of all mail, and of transactional mail.
    pub all: u64,
    pub transactional: u64,
}

impl Elsewhere {
    /// What was sent between `earlier` and `self` (never negative: replies
    /// to concurrent calls may arrive out of order).
    pub fn since(&self, earlier: &Elsewhere) -> Elsewhere {
        Elsewhere {
            messages: self.messages.saturating_sub(earlier.messages),
            all: self.all.saturating_sub(earlier.all),
            transactional: self.transactional.saturating_sub(earlier.transactional),
        }
    }

    /// The larger of both readings, field by field.
    pub fn max(&self, other: &Elsewhere) -> Elsewhere {
        Elsewhere {
            messages: self.messages.max(other.messages),
            all: self.all.max(other.all),
            transactional: self.transactional.max(other.transactional),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0 && self.all == 0
    }
}

/// The gateway's feedback as the shared state holds it: the throttling
/// penalty as cut, and the pause left (seconds; 0 when none, negative: it
/// ended that long ago, and the penalty has been recovering since).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedFeedback {
    pub penalty: f64,
    pub pause_left: f64,
}

impl SharedFeedback {
    /// The penalty at the moment of the reading: it recovers by `warmup`
    /// per day from the end of its pause, as the model's own does.
    pub fn penalty_now(&self, warmup: f64) -> f64 {
        let recovering = (-self.pause_left).max(0.0);
        (self.penalty * warmup.powf(recovering / 86_400.0)).clamp(0.0, 1.0)
    }
}

/// Units and messages this node sent per minute while the shared state was
/// out of reach, to be added to the shared counts when it is back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    /// Minute (Unix seconds / 60) -> (messages, all units, transactional units).
    minutes: BTreeMap<i64, [u64; 3]>,
}

impl Ledger {
    /// Counts a send at `now` (Unix seconds).
    pub fn add(&mut self, now: f64, units: u64, class: AppClass) {
        let entry = self.minutes.entry((now / 60.0).floor() as i64).or_default();
        entry[0] += 1;
        entry[1] += units;
        if class == AppClass::Transactional {
            entry[2] += units;
        }
    }

    /// Counts a whole minute again (one that could not be added to the
    /// shared counts yet).
    pub fn add_minute(&mut self, minute: i64, counts: [u64; 3]) {
        let entry = self.minutes.entry(minute).or_default();
        for (total, count) in entry.iter_mut().zip(counts) {
            *total += count;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    /// The minutes counted, oldest first: (minute, [messages, all, transactional]).
    pub fn minutes(&self) -> impl Iterator<Item = (i64, [u64; 3])> + '_ {
        self.minutes
            .iter()
            .map(|(minute, counts)| (*minute, *counts))
    }

    /// The totals, as [`Elsewhere`] counts them.
    pub fn total(&self) -> Elsewhere {
        self.minutes
            .values()
            .fold(Elsewhere::default(), |total, counts| Elsewhere {
                messages: total.messages + counts[0],
                all: total.all + counts[1],
                transactional: total.transactional + counts[2],
            })
    }

    /// Forgets minutes older than the longest window anything counts
    /// (a day and a minute): adding them later would change no window.
    pub fn forget_before(&mut self, now: f64) {
        let oldest = (now / 60.0).floor() as i64 - 1_441;
        self.minutes = self.minutes.split_off(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_interval_follows_the_rate_and_burst() {
        let limits = SharedLimits {
            rate: 2.0,
            burst: 5,
            budgets: Vec::new(),
            caps: Vec::new(),
        };
        assert_eq!(limits.gcra_micros(), (500_000, 2_000_000));
        let single = SharedLimits { burst: 1, ..limits };
        assert_eq!(single.gcra_micros(), (500_000, 0));
    }

    #[test]
    fn readings_out_of_order_never_count_backwards() {
        let earlier = Elsewhere {
            messages: 10,
            all: 30,
            transactional: 5,
        };
        let later = Elsewhere {
            messages: 12,
            all: 31,
            transactional: 5,
        };
        assert_eq!(
            later.since(&earlier),
            Elsewhere {
                messages: 2,
                all: 1,
                transactional: 0
            }
        );
        assert!(earlier.since(&later).is_empty());
        assert_eq!(earlier.max(&later), later);
    }

    #[test]
    fn a_penalty_recovers_from_the_end_of_its_pause() {
        let paused = SharedFeedback {
            penalty: 0.5,
            pause_left: 30.0,
        };
        assert_eq!(paused.penalty_now(2.0), 0.5);
        let a_day_later = SharedFeedback {
            penalty: 0.5,
            pause_left: -86_400.0,
        };
        assert!((a_day_later.penalty_now(2.0) - 1.0).abs() < 1e-9);
        let half_a_day = SharedFeedback {
            penalty: 0.25,
            pause_left: -43_200.0,
        };
        assert!((half_a_day.penalty_now(4.0) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_ledger_counts_per_minute_and_forgets_past_a_day() {
        let mut ledger = Ledger::default();
        ledger.add(120.0, 3, AppClass::Transactional);
        ledger.add(150.0, 2, AppClass::Bulk);
        ledger.add(200.0, 1, AppClass::Bulk);
        assert_eq!(
            ledger.minutes().collect::<Vec<_>>(),
            vec![(2, [2, 5, 3]), (3, [1, 1, 0])]
        );
        assert_eq!(
            ledger.total(),
            Elsewhere {
                messages: 3,
                all: 6,
                transactional: 3
            }
        );
        ledger.forget_before(1_444.0 * 60.0 + 10.0);
        assert_eq!(ledger.minutes().count(), 1);
        ledger.forget_before(1_445.0 * 60.0);
        assert!(ledger.is_empty());
    }
}
