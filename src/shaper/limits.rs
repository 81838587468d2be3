//! What a gateway may send in a window, counted durably: the hard caps
//! (`limits`, N per window), the hour and day volume budgets of the total
//! and of each receiver ([`super::receivers`]), with the reserve that makes
//! their counts survive a crash (a receiver's saved counts carry the whole
//! reserve too: whatever went since the save, none went beyond it).
//!
//! Both count the same units (see `count`) and are kept together because
//! they share one durability rule: a send they count must already be
//! covered by a saved state, so a restart can only count more, never
//! forget. The saved counts include a reserve of units beyond what was
//! sent; sends use the reserve up, and when it runs out the model asks for
//! a save ([`Limits::needs_save`]) before it lets more go.
//!
//! Pure, like the rest of the shaper: every call takes `now`.

use super::caps::Cap;
use super::receivers::{ReceiverBudgets, ReceiverState, ReceiverView, ReceiverWindows};
use super::shared::{Busiest, Elsewhere, SharedBudget, SharedCap, SharedReceiver};
use super::state::SavedState;
use super::volume::{BudgetReached, BudgetView, Held, MinuteCount, Volume, VolumeState};
use crate::shaper::{AppClass, Horizon, ShapingConfig};

/// The caps and budgets of one gateway, and the reserve ahead of them.
#[derive(Debug)]
pub struct Limits {
    caps: Vec<Cap>,
    volume: Volume,
    receivers: ReceiverBudgets,
    /// Units the saved state covers beyond what has been sent.
    reserved: u64,
    /// Units sent since the last snapshot (they used the older reserve).
    since_snapshot: u64,
    /// Units of the send that asked for a save: the reserve covers at least
    /// that much, or a message with many recipients would never go.
    wanted: u64,
}

/// Why a send must wait (see [`Limits::wait`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitWait {
    /// A cap or the total's budgets: nothing may go for this many seconds.
    Gateway(f64),
    /// The receiver's own budgets: mail to other receivers may go.
    Receiver(f64),
}

/// One cap's saved counts: its window in seconds and its slots (see
/// `SavedState::caps`).
pub type SavedCap = (f64, Vec<(i64, u64)>);

/// What [`Limits::snapshot`] saves: the caps', the total's and each
/// receiver's counts, each with the reserve.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedCounts {
    pub caps: Vec<SavedCap>,
    pub volume: Option<VolumeState>,
    pub receivers: Vec<ReceiverState>,
}

/// The counts of the current windows (see [`Limits::window_counts`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowCounts {
    /// Per budgeted horizon, its window's minutes that are not empty.
    pub budgets: Vec<(Horizon, Vec<MinuteCount>)>,
    /// Per cap window (seconds): (slot, units), slots of a sixtieth of it.
    pub caps: Vec<(u64, Vec<(i64, u64)>)>,
    /// Per budgeted receiver, its budgets' minutes as `budgets`.
    pub receivers: Vec<ReceiverWindows>,
}

impl Limits {
    /// The caps and budgets of `config` with nothing counted.
    pub fn new(config: &ShapingConfig, now: f64) -> Limits {
        Limits {
            caps: config
                .limits
                .iter()
                .map(|limit| Cap::new(limit.count, limit.window.as_secs_f64()))
                .collect(),
            volume: Volume::new(config, now),
            receivers: ReceiverBudgets::new(config, now),
            reserved: 0,
            since_snapshot: 0,
            wanted: 0,
        }
    }

    /// The counts of `state` (saved with their reserve), for the caps and
    /// budgets `config` still has.
    pub fn restore(config: &ShapingConfig, state: &SavedState, now: f64) -> Limits {
        let mut limits = Limits::new(config, now);
        for cap in &mut limits.caps {
            if let Some((_, slots)) = state
                .caps
                .iter()
                .find(|(window, _)| (window - cap.window).abs() < 1e-6)
            {
                cap.restore(slots.iter().copied());
            }
        }
        if let Some(volume) = &state.volume {
            limits.volume = Volume::restore(config, volume, now);
        }
        limits.receivers =
            ReceiverBudgets::restore(config, &state.receivers, state.volume.is_some(), now);
        limits
    }

    /// True when sends must be covered by a saved state first.
    fn counts_durably(&self) -> bool {
        !self.caps.is_empty() || self.volume.is_budgeted()
    }

    /// How long a send of `units` of `class` to `receiver` must wait for
    /// the caps, then (unless `caps_only`: observing) for the total's
    /// budgets, then for the receiver's; `None` when it may go now.
    pub fn wait(
        &mut self,
        now: f64,
        units: u64,
        class: AppClass,
        receiver: Option<usize>,
        caps_only: bool,
    ) -> Option<LimitWait> {
        let cap_wait = self
            .caps
            .iter_mut()
            .map(|cap| cap.wait(now, units))
            .fold(0.0, f64::max);
        if cap_wait > 0.0 {
            return Some(LimitWait::Gateway(cap_wait));
        }
        if caps_only {
            return None;
        }
        if let Some(held) = self.volume.wait(now, units, class) {
            return Some(LimitWait::Gateway(held.wait));
        }
        self.receivers
            .wait(now, receiver, units, class)
            .map(|held| LimitWait::Receiver(held.wait))
    }

    /// True when a send of `units` is not covered by the saved reserve: a
    /// save must come first (and reserve at least `units`).
    pub fn needs_save(&mut self, units: u64) -> bool {
        if self.counts_durably() && units > self.reserved {
            self.wanted = units;
            return true;
        }
        false
    }

    /// A send of `units` of `class` to `receiver` went at `now` (covered:
    /// see [`Limits::needs_save`]).
    pub fn add(&mut self, now: f64, units: u64, class: AppClass, receiver: Option<usize>) {
        if self.counts_durably() {
            for cap in &mut self.caps {
                cap.add(now, units);
            }
            self.volume.add(now, units, class);
            self.receivers.add(now, receiver, units, class);
            self.reserved -= units;
            self.since_snapshot += units;
            self.wanted = 0;
        }
    }

    /// A send counted at `at` did not happen after all: its `units` leave
    /// the counts and return to the reserve.
    pub fn remove(&mut self, at: f64, units: u64, class: AppClass, receiver: Option<usize>) {
        if self.counts_durably() {
            for cap in &mut self.caps {
                cap.remove(at, units);
            }
            self.volume.remove(at, units, class);
            self.receivers.remove(at, receiver, units, class);
            self.reserved += units;
            self.since_snapshot = self.since_snapshot.saturating_sub(units);
        }
    }

    /// Other nodes sent this (cluster mode): counted as if sent now, in
    /// the caps, the total's budgets and each receiver's.
    pub fn add_elsewhere(&mut self, now: f64, sent: &Elsewhere) {
        for cap in &mut self.caps {
            cap.add(now, sent.all);
        }
        let transactional = sent.transactional.min(sent.all);
        self.volume.add(now, transactional, AppClass::Transactional);
        self.volume
            .add(now, sent.all - transactional, AppClass::Bulk);
        self.receivers.add_elsewhere(now, &sent.receivers);
    }

    /// The longest cap window in seconds (0 without caps).
    pub fn longest_window(&self) -> f64 {
        self.caps.iter().map(|cap| cap.window).fold(0.0, f64::max)
    }

    /// How long new mail counting `units` waits for the caps behind
    /// `queued` units already waiting.
    pub fn cap_wait_behind(&mut self, now: f64, queued: u64, units: u64) -> f64 {
        self.caps
            .iter_mut()
            .map(|cap| cap.wait_behind(now, queued + units))
            .fold(0.0, f64::max)
    }

    /// How long new mail of `class` counting `units` waits for the budgets
    /// behind `ahead` units (see `Volume::projected_wait`).
    pub fn budget_wait_behind(
        &mut self,
        now: f64,
        ahead: u64,
        units: u64,
        class: AppClass,
    ) -> Option<Held> {
        self.volume.projected_wait(now, ahead, units, class)
    }

    /// How long new mail of `class` to `receiver` counting `units` waits
    /// for that receiver's budgets behind `ahead` units to it.
    pub fn receiver_wait_behind(
        &mut self,
        now: f64,
        receiver: Option<usize>,
        ahead: u64,
        units: u64,
        class: AppClass,
    ) -> Option<Held> {
        self.receivers
            .projected_wait(now, receiver, ahead, units, class)
    }

    /// The number of budgeted receivers.
    pub fn receiver_count(&self) -> usize {
        self.receivers.len()
    }

    /// The most one message may count and still pass the budgets of
    /// `class` (see `Volume::biggest`).
    pub fn biggest(&mut self, now: f64, class: AppClass) -> Option<u64> {
        self.volume.biggest(now, class)
    }

    /// Budgets that became full since the last call, for the log.
    pub fn take_budget_events(&mut self) -> Vec<BudgetReached> {
        let mut events = self.volume.take_events();
        events.extend(self.receivers.take_events());
        events
    }

    /// See `Volume::history_minutes`.
    pub fn history_minutes(&mut self, now: f64) -> i64 {
        self.volume.history_minutes(now)
    }

    /// The busiest windows this node has seen, of the total and of each
    /// receiver (see `Volume::busiest`; cluster mode heartbeats).
    pub fn busiest(&mut self, now: f64) -> Busiest {
        Busiest {
            total: self.volume.busiest(now).map(|units| units.unwrap_or(0)),
            receivers: self.receivers.busiest(now),
        }
    }

    /// See `Volume::learn_busiest`, for the total and each receiver.
    pub fn learn_busiest(&mut self, now: f64, elsewhere: &Busiest) {
        self.volume.learn_busiest(now, elsewhere.total);
        self.receivers.learn_busiest(now, &elsewhere.receivers);
    }

    /// The caps as the shared state enforces them.
    pub fn shared_caps(&self) -> Vec<SharedCap> {
        self.caps
            .iter()
            .map(|cap| SharedCap {
                window: cap.window.round() as u64,
                limit: cap.limit,
            })
            .collect()
    }

    /// See `Volume::shared_budgets`.
    pub fn shared_budgets(&mut self, now: f64) -> Vec<SharedBudget> {
        self.volume.shared_budgets(now)
    }

    /// `receiver` as the shared state checks it (see
    /// `ReceiverBudgets::shared`).
    pub fn shared_receiver(
        &mut self,
        now: f64,
        receiver: Option<usize>,
        enforce: bool,
    ) -> Option<SharedReceiver> {
        self.receivers.shared(now, receiver?, enforce)
    }

    /// The name of `receiver`, when budgeted.
    pub fn receiver_name(&self, receiver: Option<usize>) -> Option<&str> {
        self.receivers.name(receiver?)
    }

    /// The counts of the current windows (budgets per minute, caps per
    /// slot, each receiver's budgets per minute), from which a shared
    /// state that restarted empty is rebuilt.
    pub fn window_counts(&mut self, now: f64) -> WindowCounts {
        WindowCounts {
            receivers: self.receivers.window_counts(now),
            budgets: self.volume.window_counts(now),
            caps: self
                .caps
                .iter_mut()
                .map(|cap| {
                    cap.used(now);
                    (cap.window.round() as u64, cap.slots().collect())
                })
                .collect(),
        }
    }

    /// The budgets at `now`.
    pub fn view(&mut self, now: f64) -> Vec<BudgetView> {
        self.volume.view(now)
    }

    /// Each receiver's budgets at `now`.
    pub fn receiver_view(&mut self, now: f64) -> Vec<ReceiverView> {
        self.receivers.view(now)
    }

    /// The counts to save, each with `reserve` units more than sent, so a
    /// crash after the save can never forget a send; call
    /// [`Limits::saved`] once they are on disk.
    pub fn snapshot(&mut self, now: f64, reserve: u64) -> SavedCounts {
        self.since_snapshot = 0;
        // Until this state is on disk, sends may use only what both the old
        // file and this one cover.
        self.reserved = self.reserved.min(reserve);
        let caps = self
            .caps
            .iter_mut()
            .map(|cap| {
                cap.used(now);
                let mut slots: Vec<(i64, u64)> = cap.slots().collect();
                let current = (now / (cap.window / 60.0)).floor() as i64;
                match slots.last_mut() {
                    Some((slot, units)) if *slot == current => *units += reserve,
                    _ => slots.push((current, reserve)),
                }
                slots.retain(|(_, units)| *units > 0);
                (cap.window, slots)
            })
            .collect();
        let volume = self
            .volume
            .is_budgeted()
            .then(|| self.volume.snapshot(now, reserve));
        SavedCounts {
            caps,
            volume,
            receivers: self.receivers.snapshot(now, reserve),
        }
    }

    /// A save that writes nothing (the simulator's): the reserve as if a
    /// snapshot with it were on disk now, without building one (with many
    /// receivers, a snapshot costs more than the rest of a send).
    pub fn assume_saved(&mut self, reserve: u64) {
        self.since_snapshot = 0;
        self.reserved = reserve;
    }

    /// The snapshot taken with `reserve` is on disk: sends may use what of
    /// the reserve the sends since the snapshot left.
    pub fn saved(&mut self, reserve: u64) {
        self.reserved = reserve.saturating_sub(self.since_snapshot);
    }

    /// The reserve worth saving ahead: a fiftieth of the smallest cap or
    /// volume allowance (at least 1, and at least the units of the send
    /// waiting for it), so a gateway with a 30/min cap saves before each
    /// send and one with 10,000/day every 200 units.
    pub fn reserve(&self) -> u64 {
        self.caps
            .iter()
            .map(|cap| cap.limit)
            .chain(self.volume.smallest_allowance())
            .map(|limit| (limit / 50).max(1))
            .min()
            .map_or(0, |reserve| reserve.max(self.wanted))
    }
}
