//! Each receiver's own volume rule. Receivers judge a sending IP by what
//! they themselves have seen from it, so besides the gateway's total, what
//! the gateway sends to one receiver R (`google`, `microsoft`, ...: see
//! `policy::receivers`) in every rolling hour and day is at most
//! `max(floor_R, warmup x the busiest window of R in the previous 7 days)`
//! ([`super::volume`]'s rule on R's own counts; bulk and transactional
//! within R as in the total).
//!
//! A receiver is held to its rule only where its history is known: from
//! the first minute on a gateway that starts with no history (nothing was
//! sent to anyone before), but a week after counting per receiver began
//! where the gateway had a history not split by receiver (an operator's
//! `initial_rate` volumes, a state saved before receivers were counted, a
//! receiver added by a reload). Until then its sends are counted and only
//! the total holds: holding a receiver to floors it outgrew long ago would
//! hold the gateway's ordinary mail.
//!
//! A receiver is named by its index in the gateway's
//! `ShapingConfig::receivers`; mail to receivers not there counts in the
//! total only. In cluster mode the shared state (`shared`, `store`) checks
//! and counts each receiver's budgets as it does the total's, by the
//! receiver's name (indexes are this node's config order, names are the
//! same on every node): a node proposes a send with its receiver's budgets
//! ([`ReceiverBudgets::shared`]), takes in what the other nodes sent to
//! each receiver ([`ReceiverBudgets::add_elsewhere`]) so that every node's
//! receiver histories and allowances are the gateway's, tells and learns
//! each receiver's busiest windows through heartbeats
//! ([`ReceiverBudgets::busiest`], [`ReceiverBudgets::learn_busiest`]: a node
//! that joins late allows what each receiver's history allows), and gives
//! its view of the current windows when a shared state that restarted
//! empty is rebuilt ([`ReceiverBudgets::window_counts`]). Pure, like the rest
//! of the shaper: every call takes `now`.

use std::collections::BTreeMap;

use super::shared::{SharedReceiver, Units};
use super::volume::{
    BudgetReached, BudgetView, Held, MinuteCount, Volume, VolumeRule, VolumeState,
};
use crate::shaper::{AppClass, Horizon, ShapingConfig};

const SLOT_SECONDS: f64 = 60.0;
/// How long after counting per receiver began a receiver's history is
/// known, where the gateway had one before (minutes): the week the rule
/// looks back over. (A day window then compares with days partly before
/// the counting, which can only undercount them: stricter, never looser.)
pub const UNKNOWN_HISTORY_SLOTS: i64 = 7 * 1_440;

/// What a restart must not forget of one receiver: its counts and from
/// when it is held to its own rule (Unix minutes).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverState {
    pub name: String,
    pub volume: VolumeState,
    pub held_from: i64,
}

/// One receiver's numbers at one moment, for `/status` and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverView {
    pub name: String,
    /// Held to its own rule (else its history is not known yet).
    pub held: bool,
    /// When its rule holds from (Unix seconds).
    pub held_from: f64,
    pub budgets: Vec<BudgetView>,
}

/// One receiver's current windows: its name, and per budgeted horizon the
/// minutes that are not empty.
pub type ReceiverWindows = (String, Vec<(Horizon, Vec<MinuteCount>)>);

#[derive(Debug, Clone)]
struct Budgeted {
    name: String,
    volume: Volume,
    /// The first minute its rule holds (see the module notes).
    held_from: i64,
}

/// See the module notes.
#[derive(Debug, Clone, Default)]
pub struct ReceiverBudgets {
    list: Vec<Budgeted>,
}

fn slot_of(now: f64) -> i64 {
    (now / SLOT_SECONDS).floor() as i64
}

fn rule(config: &ShapingConfig, index: usize) -> VolumeRule {
    VolumeRule {
        floors: config.receivers[index].floors,
        seeds: [None; 2],
        warmup: config.warmup,
    }
}

impl ReceiverBudgets {
    /// `config`'s receivers with nothing counted: held at once, unless the
    /// operator vouches for a history of the gateway (`initial_rate`
    /// volumes), whose split by receiver nobody knows.
    pub fn new(config: &ShapingConfig, now: f64) -> ReceiverBudgets {
        let vouched = config.initial_volume.iter().any(Option::is_some);
        ReceiverBudgets::fresh(config, now, vouched)
    }

    fn fresh(config: &ShapingConfig, now: f64, history_before: bool) -> ReceiverBudgets {
        let held_from = slot_of(now)
            + if history_before {
                UNKNOWN_HISTORY_SLOTS
            } else {
                0
            };
        ReceiverBudgets {
            list: (0..config.receivers.len())
                .map(|index| Budgeted {
                    name: config.receivers[index].name.clone(),
                    volume: Volume::with_rule(&rule(config, index), now),
                    held_from,
                })
                .collect(),
        }
    }

    /// `config`'s receivers with the counts `saved` has of them (by name).
    /// A receiver the state does not know starts counting now, and is held
    /// a week later when the gateway had a history (`history_before`).
    pub fn restore(
        config: &ShapingConfig,
        saved: &[ReceiverState],
        history_before: bool,
        now: f64,
    ) -> ReceiverBudgets {
        let mut budgets = ReceiverBudgets::fresh(config, now, history_before);
        for (index, budgeted) in budgets.list.iter_mut().enumerate() {
            if let Some(state) = saved.iter().find(|state| state.name == budgeted.name) {
                budgeted.volume = Volume::restore_rule(&rule(config, index), &state.volume, now);
                budgeted.held_from = state.held_from;
            }
        }
        budgets
    }

    /// The number of budgeted receivers.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The budget of `receiver` when its rule holds at `now`.
    fn holding(&mut self, receiver: Option<usize>, now: f64) -> Option<&mut Volume> {
        let budgeted = self.list.get_mut(receiver?)?;
        (slot_of(now) >= budgeted.held_from).then_some(&mut budgeted.volume)
    }

    /// Does a message of `class` counting `units` to `receiver` fit its
    /// budgets now? As `Volume::wait`.
    pub fn wait(
        &mut self,
        now: f64,
        receiver: Option<usize>,
        units: u64,
        class: AppClass,
    ) -> Option<Held> {
        self.holding(receiver, now)?.wait(now, units, class)
    }

    /// Counts a send to `receiver` (held or not: its history).
    pub fn add(&mut self, now: f64, receiver: Option<usize>, units: u64, class: AppClass) {
        if let Some(budgeted) = receiver.and_then(|index| self.list.get_mut(index)) {
            budgeted.volume.add(now, units, class);
        }
    }

    /// Other nodes sent this to each receiver, by name (cluster mode):
    /// counted as if sent now, as `Limits::add_elsewhere` counts the
    /// total. A name not budgeted here (another node's config) is left out.
    pub fn add_elsewhere(&mut self, now: f64, sent: &BTreeMap<String, Units>) {
        for budgeted in &mut self.list {
            if let Some(units) = sent.get(&budgeted.name) {
                let transactional = units.transactional.min(units.all);
                let volume = &mut budgeted.volume;
                volume.add(now, transactional, AppClass::Transactional);
                volume.add(now, units.all - transactional, AppClass::Bulk);
            }
        }
    }

    /// `receiver` as the shared state checks it (cluster mode): its name
    /// and budgets, `enforced` there when its rule holds here at `now`
    /// and `enforce` (the model is not observing).
    pub fn shared(&mut self, now: f64, receiver: usize, enforce: bool) -> Option<SharedReceiver> {
        let budgeted = self.list.get_mut(receiver)?;
        Some(SharedReceiver {
            name: budgeted.name.clone(),
            budgets: budgeted.volume.shared_budgets(now),
            enforced: enforce && slot_of(now) >= budgeted.held_from,
        })
    }

    /// Per receiver (by name), the busiest hour and day it saw from this
    /// node (see `Volume::busiest`; 0 where not budgeted).
    pub fn busiest(&mut self, now: f64) -> BTreeMap<String, [u64; 2]> {
        self.list
            .iter_mut()
            .map(|budgeted| {
                let busiest = budgeted.volume.busiest(now).map(|units| units.unwrap_or(0));
                (budgeted.name.clone(), busiest)
            })
            .collect()
    }

    /// What the other nodes know of each receiver's busiest windows (by
    /// name; see `Volume::learn_busiest`): a node that joined late allows
    /// each receiver what its history with the gateway allows.
    pub fn learn_busiest(&mut self, now: f64, elsewhere: &BTreeMap<String, [u64; 2]>) {
        for budgeted in &mut self.list {
            let windows = elsewhere.get(&budgeted.name).copied().unwrap_or_default();
            budgeted.volume.learn_busiest(now, windows);
        }
    }

    /// The name of `receiver`.
    pub fn name(&self, receiver: usize) -> Option<&str> {
        self.list
            .get(receiver)
            .map(|budgeted| budgeted.name.as_str())
    }

    /// Per receiver (by name), the counts of its current windows (see
    /// `Volume::window_counts`): what a shared state that restarted empty
    /// is rebuilt from.
    pub fn window_counts(&mut self, now: f64) -> Vec<ReceiverWindows> {
        self.list
            .iter_mut()
            .map(|budgeted| (budgeted.name.clone(), budgeted.volume.window_counts(now)))
            .collect()
    }

    /// Takes back a send counted at `at` (see `Volume::remove`).
    pub fn remove(&mut self, at: f64, receiver: Option<usize>, units: u64, class: AppClass) {
        if let Some(budgeted) = receiver.and_then(|index| self.list.get_mut(index)) {
            budgeted.volume.remove(at, units, class);
        }
    }

    /// How long new mail to `receiver` waits for its budgets behind `ahead`
    /// units to it (see `Volume::projected_wait`).
    pub fn projected_wait(
        &mut self,
        now: f64,
        receiver: Option<usize>,
        ahead: u64,
        units: u64,
        class: AppClass,
    ) -> Option<Held> {
        self.holding(receiver, now)?
            .projected_wait(now, ahead, units, class)
    }

    /// Budgets that became full since the last call, each with its
    /// receiver's name.
    pub fn take_events(&mut self) -> Vec<BudgetReached> {
        let mut events = Vec::new();
        for budgeted in &mut self.list {
            for mut event in budgeted.volume.take_events() {
                event.receiver = Some(budgeted.name.clone());
                events.push(event);
            }
        }
        events
    }

    /// Every receiver's numbers at `now`.
    pub fn view(&mut self, now: f64) -> Vec<ReceiverView> {
        let slot = slot_of(now);
        self.list
            .iter_mut()
            .map(|budgeted| ReceiverView {
                name: budgeted.name.clone(),
                held: slot >= budgeted.held_from,
                held_from: budgeted.held_from as f64 * SLOT_SECONDS,
                budgets: budgeted.volume.view(now),
            })
            .collect()
    }

    /// The states to save, each counting `reserve` units more than sent
    /// (see `Volume::snapshot`).
    pub fn snapshot(&mut self, now: f64, reserve: u64) -> Vec<ReceiverState> {
        self.list
            .iter_mut()
            .map(|budgeted| ReceiverState {
                name: budgeted.name.clone(),
                volume: budgeted.volume.snapshot(now, reserve),
                held_from: budgeted.held_from,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
