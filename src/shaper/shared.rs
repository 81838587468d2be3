//! What one node's model and the gateway's shared state (cluster mode) say
//! to each other: pure values and the arithmetic on them. How a node
//! stands with the shared state is the gate's (`gate`); where the state
//! lives, the store's (`store`: Redis or in memory).
//!
//! Every sidecar in front of a gateway runs its own model, but receivers
//! judge the gateway, so the limits that matter (the token bucket at the
//! ceiling, the hour and day budgets, the hard caps, a throttling pause) are
//! enforced once, in the shared state, on the shared state's clock. A node
//! proposes a send with the limits its model computes ([`SharedLimits`]),
//! and with its receiver's budgets ([`SharedReceiver`]: receivers judge the
//! gateway too, so N nodes must not send a receiver N times its allowance);
//! the shared state grants it or says how long to wait, and tells the node
//! what the others sent, in all and per receiver ([`Elsewhere`]), and the
//! gateway's feedback ([`SharedFeedback`]), which the node's model takes in
//! so its own view, its learned baseline and each receiver's history
//! included, is the gateway's. A receiver goes by its name (from the
//! config, the same on every node and across reloads), never by its index.
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

use crate::shaper::{AppClass, Horizon};

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

/// The receiver of one proposed send as the shared state checks it: its
/// name, and its own volume budgets as this node's model computes them
/// (see `receivers`). Its sends are counted in its windows and totals
/// whether or not its budgets are `enforced` (its rule holds on this node
/// and the node is not observing), so its shared history is whole when
/// its rule begins to hold.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedReceiver {
    pub name: String,
    pub budgets: Vec<SharedBudget>,
    pub enforced: bool,
}

/// One proposed send.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub units: u64,
    pub class: AppClass,
    pub limits: SharedLimits,
    /// Its receiver, when the gateway budgets it.
    pub receiver: Option<SharedReceiver>,
}

impl Proposal {
    /// The GCRA's emission interval and tolerance for this send, in
    /// microseconds (the shared state's clock unit): one message per
    /// `1/rate`, `burst - 1` of them early at most. Bulk mail leaves the
    /// bucket's last token to transactional mail (when it holds more than
    /// one): the nodes' fair queues do not see each other, and a password
    /// reset on one node must not wait behind a newsletter on another.
    pub fn gcra_micros(&self) -> (u64, u64) {
        let emission = (1e6 / self.limits.rate.max(1e-9)).ceil().min(1e15) as u64;
        let mut tolerance = emission * u64::from(self.limits.burst.max(1) - 1);
        if self.class == AppClass::Bulk && tolerance >= emission {
            tolerance -= emission;
        }
        (emission, tolerance)
    }
}

/// Units sent to one receiver: of all mail, and of transactional mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Units {
    pub all: u64,
    pub transactional: u64,
}

impl Units {
    fn plus(self, other: Units) -> Units {
        Units {
            all: self.all + other.all,
            transactional: self.transactional + other.transactional,
        }
    }
}

/// What the other nodes sent, as totals since the shared state began: the
/// difference between two readings is what they sent in between.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Elsewhere {
    pub messages: u64,
    /// Units of all mail, and of transactional mail.
    pub all: u64,
    pub transactional: u64,
    /// The part of them sent to each budgeted receiver, by name (a
    /// receiver nothing was sent to is absent).
    pub receivers: BTreeMap<String, Units>,
}

impl Elsewhere {
    /// What was sent between `earlier` and `self` (never negative: replies
    /// to concurrent calls may arrive out of order).
    pub fn since(&self, earlier: &Elsewhere) -> Elsewhere {
        let receivers = self
            .receivers
            .iter()
            .filter_map(|(name, units)| {
                let before = earlier.receivers.get(name).copied().unwrap_or_default();
                let sent = Units {
                    all: units.all.saturating_sub(before.all),
                    transactional: units.transactional.saturating_sub(before.transactional),
                };
                (sent.all > 0).then(|| (name.clone(), sent))
            })
            .collect();
        Elsewhere {
            messages: self.messages.saturating_sub(earlier.messages),
            all: self.all.saturating_sub(earlier.all),
            transactional: self.transactional.saturating_sub(earlier.transactional),
            receivers,
        }
    }

    /// The larger of both readings, field by field.
    pub fn max(&self, other: &Elsewhere) -> Elsewhere {
        let mut receivers = self.receivers.clone();
        for (name, units) in &other.receivers {
            let kept = receivers.entry(name.clone()).or_default();
            kept.all = kept.all.max(units.all);
            kept.transactional = kept.transactional.max(units.transactional);
        }
        Elsewhere {
            messages: self.messages.max(other.messages),
            all: self.all.max(other.all),
            transactional: self.transactional.max(other.transactional),
            receivers,
        }
    }

    /// Both together (the sends of two nodes, or of two minutes).
    pub fn plus(&self, other: &Elsewhere) -> Elsewhere {
        let mut receivers = self.receivers.clone();
        for (name, units) in &other.receivers {
            let kept = receivers.entry(name.clone()).or_default();
            *kept = kept.plus(*units);
        }
        Elsewhere {
            messages: self.messages + other.messages,
            all: self.all + other.all,
            transactional: self.transactional + other.transactional,
            receivers,
        }
    }

    /// Counts a send of `units` of `class` (to `receiver`, when budgeted).
    pub fn add(&mut self, units: u64, class: AppClass, receiver: Option<&str>) {
        let transactional = if class == AppClass::Transactional {
            units
        } else {
            0
        };
        self.messages += 1;
        self.all += units;
        self.transactional += transactional;
        if let Some(name) = receiver {
            let kept = self.receivers.entry(name.to_string()).or_default();
            *kept = kept.plus(Units {
                all: units,
                transactional,
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0 && self.all == 0 && self.receivers.is_empty()
    }
}

/// The busiest hour and day (`Horizon::ALL` order; 0 where not budgeted) a
/// node has seen, of the gateway's total and of each budgeted receiver (by
/// name): what heartbeats tell the other nodes, so that a node that joined
/// late, or was down, allows what the gateway's history allows, the
/// receivers' included (see `Volume::learn_busiest`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Busiest {
    pub total: [u64; 2],
    pub receivers: BTreeMap<String, [u64; 2]>,
}

impl Busiest {
    /// The larger of both, horizon by horizon and receiver by receiver.
    pub fn max(&self, other: &Busiest) -> Busiest {
        let mut receivers = self.receivers.clone();
        for (name, windows) in &other.receivers {
            let kept = receivers.entry(name.clone()).or_default();
            *kept = [kept[0].max(windows[0]), kept[1].max(windows[1])];
        }
        Busiest {
            total: [
                self.total[0].max(other.total[0]),
                self.total[1].max(other.total[1]),
            ],
            receivers,
        }
    }
}

/// The gateway's feedback as the shared state holds it: the throttling
/// penalty as cut, and the pause left (seconds; 0 when none, negative: it
/// ended that long ago, and the penalty has been recovering since, within
/// `backoff_recovery`, as [`super::penalty::Penalty`] recovers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedFeedback {
    pub penalty: f64,
    pub pause_left: f64,
}

/// The most nodes this one has seen share the gateway lately: a node that
/// starts while the shared state is out of reach must not assume fewer
/// (each would send on too large a share). Kept under the spool with the
/// shaping state. What was seen counts for a week after it was last seen,
/// so a deployment scaled down is taken at its new size after a week.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodesSeen {
    pub most: u64,
    /// When `most` nodes were last seen (Unix seconds).
    pub at: f64,
}

/// How long the most nodes seen count without being seen again.
const NODES_REMEMBERED: f64 = 7.0 * 86_400.0;

impl NodesSeen {
    /// A heartbeat saw `live` nodes at `now`.
    pub fn observe(&mut self, live: u64, now: f64) {
        if live >= self.most || now - self.at > NODES_REMEMBERED {
            self.most = live;
            self.at = now;
        }
    }

    /// The most nodes seen within the last week at `now` (0: none).
    pub fn most_at(&self, now: f64) -> u64 {
        if now - self.at <= NODES_REMEMBERED {
            self.most
        } else {
            0
        }
    }
}

/// Units and messages this node sent per minute while the shared state was
/// out of reach, in all and per receiver, to be added to the shared counts
/// when it is back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    /// Minute (Unix seconds / 60) -> (messages, all units, transactional units).
    minutes: BTreeMap<i64, [u64; 3]>,
    /// (minute, receiver) -> the part of that minute's units sent to it.
    receivers: BTreeMap<(i64, String), Units>,
}

impl Ledger {
    /// Counts a send at `now` (Unix seconds) to `receiver` (its name, when
    /// the gateway budgets it).
    pub fn add(&mut self, now: f64, units: u64, class: AppClass, receiver: Option<&str>) {
        let minute = (now / 60.0).floor() as i64;
        let transactional = if class == AppClass::Transactional {
            units
        } else {
            0
        };
        self.add_minute(minute, [1, units, transactional]);
        if let Some(name) = receiver {
            self.add_receiver_minute(
                minute,
                name,
                Units {
                    all: units,
                    transactional,
                },
            );
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

    /// Counts a minute's part sent to receiver `name` again (see
    /// [`Ledger::add_minute`]).
    pub fn add_receiver_minute(&mut self, minute: i64, name: &str, units: Units) {
        let entry = self
            .receivers
            .entry((minute, name.to_string()))
            .or_default();
        *entry = entry.plus(units);
    }

    /// Everything `other` counts, counted here too.
    pub fn add_ledger(&mut self, other: &Ledger) {
        for (minute, counts) in other.minutes() {
            self.add_minute(minute, counts);
        }
        for (minute, name, units) in other.receiver_minutes() {
            self.add_receiver_minute(minute, name, units);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.receivers.is_empty()
    }

    /// The minutes counted, oldest first: (minute, [messages, all, transactional]).
    pub fn minutes(&self) -> impl Iterator<Item = (i64, [u64; 3])> + '_ {
        self.minutes
            .iter()
            .map(|(minute, counts)| (*minute, *counts))
    }

    /// The minutes' parts per receiver, oldest first: (minute, receiver,
    /// units).
    pub fn receiver_minutes(&self) -> impl Iterator<Item = (i64, &str, Units)> + '_ {
        self.receivers
            .iter()
            .map(|((minute, name), units)| (*minute, name.as_str(), *units))
    }

    /// The totals, as [`Elsewhere`] counts them.
    pub fn total(&self) -> Elsewhere {
        let mut total = self
            .minutes
            .values()
            .fold(Elsewhere::default(), |total, counts| Elsewhere {
                messages: total.messages + counts[0],
                all: total.all + counts[1],
                transactional: total.transactional + counts[2],
                receivers: BTreeMap::new(),
            });
        for ((_, name), units) in &self.receivers {
            let kept = total.receivers.entry(name.clone()).or_default();
            *kept = kept.plus(*units);
        }
        total
    }

    /// Forgets minutes older than the longest window anything counts
    /// (a day and a minute): adding them later would change no window.
    pub fn forget_before(&mut self, now: f64) {
        let oldest = (now / 60.0).floor() as i64 - 1_441;
        self.minutes = self.minutes.split_off(&oldest);
        self.receivers = self.receivers.split_off(&(oldest, String::new()));
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
        let proposal = |class, limits: &SharedLimits| Proposal {
            units: 1,
            class,
            limits: limits.clone(),
            receiver: None,
        };
        assert_eq!(
            proposal(AppClass::Transactional, &limits).gcra_micros(),
            (500_000, 2_000_000)
        );
        assert_eq!(
            proposal(AppClass::Bulk, &limits).gcra_micros(),
            (500_000, 1_500_000),
            "bulk leaves the last token"
        );
        let single = SharedLimits { burst: 1, ..limits };
        assert_eq!(
            proposal(AppClass::Bulk, &single).gcra_micros(),
            (500_000, 0)
        );
    }

    #[test]
    fn readings_out_of_order_never_count_backwards() {
        let units = |all, transactional| Units { all, transactional };
        let earlier = Elsewhere {
            messages: 10,
            all: 30,
            transactional: 5,
            receivers: [("google".to_string(), units(4, 1))].into(),
        };
        let later = Elsewhere {
            messages: 12,
            all: 31,
            transactional: 5,
            receivers: [
                ("google".to_string(), units(5, 1)),
                ("yahoo".to_string(), units(2, 0)),
            ]
            .into(),
        };
        assert_eq!(
            later.since(&earlier),
            Elsewhere {
                messages: 2,
                all: 1,
                transactional: 0,
                receivers: [
                    ("google".to_string(), units(1, 0)),
                    ("yahoo".to_string(), units(2, 0)),
                ]
                .into(),
            }
        );
        assert!(earlier.since(&later).is_empty());
        assert_eq!(earlier.max(&later), later);
        assert_eq!(
            earlier.plus(&later).receivers["google"],
            units(9, 2),
            "per receiver too"
        );
    }

    #[test]
    fn the_most_nodes_seen_last_a_week_after_they_were_last_seen() {
        let day = 86_400.0;
        let mut seen = NodesSeen::default();
        seen.observe(2, 0.0);
        seen.observe(5, day);
        seen.observe(3, 2.0 * day);
        assert_eq!(seen.most_at(2.0 * day), 5, "fewer now: the most stays");
        assert_eq!(seen.most_at(8.0 * day), 5);
        assert_eq!(seen.most_at(8.5 * day), 0, "a week since five were seen");
        seen.observe(3, 8.5 * day);
        assert_eq!(seen.most_at(9.0 * day), 3);
    }

    #[test]
    fn the_ledger_counts_per_minute_and_forgets_past_a_day() {
        let mut ledger = Ledger::default();
        ledger.add(120.0, 3, AppClass::Transactional, Some("google"));
        ledger.add(150.0, 2, AppClass::Bulk, Some("google"));
        ledger.add(200.0, 1, AppClass::Bulk, None);
        assert_eq!(
            ledger.minutes().collect::<Vec<_>>(),
            vec![(2, [2, 5, 3]), (3, [1, 1, 0])]
        );
        let google = Units {
            all: 5,
            transactional: 3,
        };
        assert_eq!(
            ledger.receiver_minutes().collect::<Vec<_>>(),
            vec![(2, "google", google)]
        );
        assert_eq!(
            ledger.total(),
            Elsewhere {
                messages: 3,
                all: 6,
                transactional: 3,
                receivers: [("google".to_string(), google)].into(),
            }
        );
        let mut again = Ledger::default();
        again.add_ledger(&ledger);
        assert_eq!(again, ledger, "a ledger kept for later loses nothing");
        ledger.forget_before(1_443.0 * 60.0 + 10.0);
        assert_eq!(ledger.minutes().count(), 2);
        ledger.forget_before(1_444.0 * 60.0 + 10.0);
        assert_eq!(ledger.minutes().count(), 1);
        assert_eq!(ledger.receiver_minutes().count(), 0, "minute 2 is gone");
        ledger.forget_before(1_445.0 * 60.0);
        assert!(ledger.is_empty());
    }
}
