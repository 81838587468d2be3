//! The volume rule: what receivers judge beyond the minute.
//!
//! For every rolling window W of an hour and of a day, a gateway is sent at
//! most `max(floor_W, warmup x the busiest W-window of the previous 7 days)`,
//! the previous windows being those that ended before the current one began,
//! so a window never raises its own allowance. An idle gateway that suddenly
//! sends a thousand mails is a burst to the receiver whether they leave in a
//! minute or over seven hours; this rule turns such a run into a ramp of at
//! most `warmup` per window.
//!
//! Kept as per-minute counts (slots) for the span the rule looks at. The
//! counts are conservative both ways, so the rule holds in every continuous
//! window, not only in whole minutes:
//! - the current window counts `W + 1` slots (its oldest slot may be only
//!   partly inside it), so what is counted is never less than what was sent;
//! - the history is the busiest window of whole slots ending at least one
//!   slot before the current window's first slot, and at most 7 days less a
//!   minute before it, so it is never more than the busiest continuous window
//!   the rule allows.
//!
//! Bulk mail ([`AppClass::Bulk`]) may use only what the transactional apps
//! normally need leaves of each allowance: the most of their own busiest
//! window of the previous 7 days, their average over the kept history (with
//! a quarter to spare, for a history still too short to hold a busy window),
//! and a tenth of the allowance; so a bulk run that fills the hour or the
//! day never holds a password reset.
//!
//! Pure: every method takes `now` in seconds; nothing here reads a clock.

use std::collections::VecDeque;

use super::shared::SharedBudget;
use crate::shaper::{AppClass, Horizon, ShapingConfig};

const SLOT_SECONDS: f64 = 60.0;
const WEEK_SLOTS: i64 = 7 * 1_440;
/// How far before the current window's first slot an eligible history
/// window may end (see the module notes: 7 days less a minute).
const LOOKBACK: i64 = WEEK_SLOTS - 1;
/// Slots kept: two day windows and the week before them (a restored state
/// rebuilds the history from these), and a little slack.
pub const KEPT_SLOTS: i64 = 2 * 1_440 + WEEK_SLOTS + 2;
/// The share of an allowance bulk mail always leaves to the transactional
/// apps, whatever their history.
const TRANSACTIONAL_SHARE: f64 = 0.1;
/// The transactional apps' average rate, scaled to a window, counts with
/// this margin (Poisson-like traffic strays a little above its mean).
const AVERAGE_MARGIN: f64 = 1.25;
/// The average counts for at most this share of an allowance: a history of
/// minutes says little about a day.
const AVERAGE_SHARE: f64 = 0.5;
/// Future windows a projected wait looks at before calling it endless.
const PROJECTED_WINDOWS: u32 = 60;

/// One horizon's sums over a [`Series`].
#[derive(Debug, Clone)]
struct Track {
    window: i64,
    /// Units in the current window: slots `now - window ..= now`.
    used: u64,
    /// Units in the whole-slot window ending at slot `end` (the newest
    /// eligible one).
    running: u64,
    /// Eligible windows that may still be the busiest: (end slot, units),
    /// units strictly decreasing (a sliding maximum).
    maxima: VecDeque<(i64, u64)>,
}

impl Track {
    fn busiest(&self) -> u64 {
        self.maxima.front().map_or(0, |(_, units)| *units)
    }
}

/// Per-slot counts of one kind of mail (all of it, or the transactional
/// apps' only), in a ring of [`KEPT_SLOTS`].
#[derive(Debug, Clone)]
struct Series {
    counts: Vec<u32>,
    /// Units in all kept slots.
    total: u64,
    tracks: Vec<Track>,
}

fn index(slot: i64) -> usize {
    slot.rem_euclid(KEPT_SLOTS) as usize
}

impl Series {
    fn new(horizons: &[Horizon]) -> Series {
        Series {
            counts: vec![0; KEPT_SLOTS as usize],
            total: 0,
            tracks: horizons
                .iter()
                .map(|horizon| Track {
                    window: horizon.minutes(),
                    used: 0,
                    running: 0,
                    maxima: VecDeque::new(),
                })
                .collect(),
        }
    }

    fn count(&self, slot: i64) -> u64 {
        u64::from(self.counts[index(slot)])
    }

    /// The current slot becomes `slot` (the one after the current).
    fn step(&mut self, slot: i64) {
        // The cell held slot - KEPT_SLOTS, which no sum needs any more.
        self.total -= self.count(slot);
        self.counts[index(slot)] = 0;
        for track_index in 0..self.tracks.len() {
            let window = self.tracks[track_index].window;
            let leaving = self.count(slot - 1 - window);
            let end = slot - window - 1;
            let entering = self.count(end);
            let dropped = self.count(end - window);
            let track = &mut self.tracks[track_index];
            track.used = track.used.saturating_sub(leaving);
            track.running = (track.running + entering).saturating_sub(dropped);
            while track
                .maxima
                .back()
                .is_some_and(|(_, units)| *units <= track.running)
            {
                track.maxima.pop_back();
            }
            track.maxima.push_back((end, track.running));
            while track
                .maxima
                .front()
                .is_some_and(|(first, _)| *first < slot - window - LOOKBACK)
            {
                track.maxima.pop_front();
            }
        }
    }

    fn add(&mut self, slot: i64, units: u64) {
        let cell = &mut self.counts[index(slot)];
        let before = *cell;
        *cell = cell.saturating_add(u32::try_from(units).unwrap_or(u32::MAX));
        self.total += u64::from(*cell - before);
        for track in &mut self.tracks {
            track.used += units;
        }
    }

    /// Takes back `units` counted in `slot` (the current one, or a window's
    /// newest slots: none that a history sum holds yet).
    fn remove(&mut self, slot: i64, units: u64) {
        let cell = &mut self.counts[index(slot)];
        let taken = u64::from(*cell).min(units);
        *cell -= taken as u32;
        self.total -= taken;
        for track in &mut self.tracks {
            track.used = track.used.saturating_sub(taken);
        }
    }

    /// Forgets everything (the clock jumped past the kept span).
    fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
        for track in &mut self.tracks {
            track.used = 0;
            track.running = 0;
            track.maxima.clear();
        }
    }

    /// The counts of the kept span ending at `slot`, oldest first.
    fn kept(&self, slot: i64) -> Vec<u64> {
        (slot - KEPT_SLOTS + 1..=slot)
            .map(|slot| self.count(slot))
            .collect()
    }
}

/// An operator's word for history the gateway had before smtp-shaper
/// (`initial_rate = [..., "200/h"]`): counts as a busiest window until
/// `until` (the slot 7 days after it was given, less two).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seed {
    pub units: u64,
    pub until: i64,
}

/// One horizon's numbers at one moment, for `/status` and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    pub horizon: Horizon,
    /// Units counted in the current window.
    pub sent: u64,
    pub allowance: u64,
    /// Of the allowance, what bulk mail leaves to the transactional apps.
    pub transactional_room: u64,
    /// Seconds until one more transactional unit fits (0: it fits now).
    pub next_room: f64,
}

/// Why a send or an offer must wait: the horizon whose budget is used up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Held {
    pub horizon: Horizon,
    /// Seconds until it may be asked again (a send) or until the offer
    /// would leave (admission).
    pub wait: f64,
    pub sent: u64,
    pub allowance: u64,
}

/// What one minute of a window counts (see [`Volume::window_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCount {
    /// Unix seconds / 60.
    pub minute: i64,
    pub all: u64,
    pub transactional: u64,
}

/// A budget that became full, logged once per episode.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetReached {
    pub horizon: Horizon,
    pub sent: u64,
    pub allowance: u64,
    /// The receiver whose own budget it is (`None`: the gateway's total).
    pub receiver: Option<String>,
}

/// What a restart must not forget of the volume history: the kept counts
/// ending at `slot` (oldest first) and the operator's seeds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeState {
    pub slot: i64,
    pub all: Vec<u64>,
    pub transactional: Vec<u64>,
    /// Per horizon (`Horizon::ALL` order).
    pub seeds: [Option<Seed>; 2],
    /// The first minute of the history (its length weighs the transactional
    /// apps' average; the counts alone do not say when it began).
    pub since: i64,
}

/// What a [`Volume`] budgets: the floor per horizon (`None`: that
/// horizon is not budgeted), the busiest windows vouched for before any
/// count, and the growth per window.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRule {
    pub floors: [Option<u64>; 2],
    pub seeds: [Option<u64>; 2],
    pub warmup: f64,
}

impl VolumeRule {
    /// A gateway's total: `min_rate`'s floors, `initial_rate`'s seeds.
    pub fn of_gateway(config: &ShapingConfig) -> VolumeRule {
        VolumeRule {
            floors: config.min_volume,
            seeds: config.initial_volume,
            warmup: config.warmup,
        }
    }
}

#[derive(Debug, Clone)]
struct Budget {
    horizon: Horizon,
    floor: u64,
    seed: Option<Seed>,
    /// Cluster mode: the busiest window the other nodes have seen (a node
    /// that just joined has not), valid while their heartbeats renew it.
    elsewhere: Option<Seed>,
    reached: bool,
}

/// How long what the other nodes say of the busiest window counts without
/// being said again (minutes; heartbeats renew it every second).
const ELSEWHERE_SLOTS: i64 = 10;

/// See the module notes.
#[derive(Debug, Clone)]
pub struct Volume {
    slot: i64,
    /// The first slot of the history (for the transactional average).
    since: i64,
    warmup: f64,
    budgets: Vec<Budget>,
    all: Series,
    transactional: Series,
    events: Vec<BudgetReached>,
}

fn slot_of(now: f64) -> i64 {
    (now / SLOT_SECONDS).floor() as i64
}

impl Volume {
    /// A gateway with no history beyond `initial_volume`'s seeds. The
    /// horizons budgeted are those `min_volume` names.
    pub fn new(config: &ShapingConfig, now: f64) -> Volume {
        Volume::with_rule(&VolumeRule::of_gateway(config), now)
    }

    /// Counts with no history beyond `rule`'s seeds.
    pub fn with_rule(rule: &VolumeRule, now: f64) -> Volume {
        let slot = slot_of(now);
        let budgets: Vec<Budget> = Horizon::ALL
            .into_iter()
            .filter_map(|horizon| {
                let floor = rule.floors[horizon as usize]?;
                Some(Budget {
                    horizon,
                    floor,
                    seed: rule.seeds[horizon as usize].map(|units| Seed {
                        units,
                        until: slot + LOOKBACK - 1,
                    }),
                    elsewhere: None,
                    reached: false,
                })
            })
            .collect();
        let horizons: Vec<Horizon> = budgets.iter().map(|budget| budget.horizon).collect();
        Volume {
            slot,
            since: slot,
            warmup: rule.warmup,
            all: Series::new(&horizons),
            transactional: Series::new(&horizons),
            budgets,
            events: Vec::new(),
        }
    }

    /// The history in `state` (saved earlier), brought forward to `now`. A
    /// state saved "in the future" (the clock was set back since) is moved
    /// to end at the current minute: its counts only become more recent.
    pub fn restore(config: &ShapingConfig, state: &VolumeState, now: f64) -> Volume {
        Volume::restore_rule(&VolumeRule::of_gateway(config), state, now)
    }

    /// As [`Volume::restore`], under `rule`.
    pub fn restore_rule(rule: &VolumeRule, state: &VolumeState, now: f64) -> Volume {
        let mut state = state.clone();
        state.slot = state.slot.min(slot_of(now));
        let state = &state;
        let first = state.slot - state.all.len().max(state.transactional.len()) as i64 + 1;
        let mut volume = Volume::with_rule(rule, (first - 1) as f64 * SLOT_SECONDS);
        // The saved seeds, not the configured ones: a gateway with history
        // is past its initial volume.
        for budget in &mut volume.budgets {
            budget.seed = state.seeds[budget.horizon as usize];
        }
        volume.since = state.since.clamp(state.slot - KEPT_SLOTS, state.slot);
        let offset = |series: &[u64]| state.slot - series.len() as i64 + 1;
        let (all_first, transactional_first) = (offset(&state.all), offset(&state.transactional));
        for slot in first..=state.slot {
            volume.advance(slot as f64 * SLOT_SECONDS);
            if slot >= all_first {
                volume.all.add(slot, state.all[(slot - all_first) as usize]);
            }
            if slot >= transactional_first {
                volume.transactional.add(
                    slot,
                    state.transactional[(slot - transactional_first) as usize],
                );
            }
        }
        volume.advance(now);
        volume
    }

    /// Minutes of history the counts cover at `now` (from their first
    /// minute).
    pub fn history_minutes(&self, now: f64) -> i64 {
        (slot_of(now) - self.since).max(0)
    }

    /// True when some horizon is budgeted.
    pub fn is_budgeted(&self) -> bool {
        !self.budgets.is_empty()
    }

    /// Moves the current slot to `now`'s (never backwards: a clock set back
    /// counts in the current slot).
    fn advance(&mut self, now: f64) {
        let target = slot_of(now);
        if target <= self.slot {
            return;
        }
        if target - self.slot >= KEPT_SLOTS {
            self.all.clear();
            self.transactional.clear();
            self.slot = target - KEPT_SLOTS;
        }
        while self.slot < target {
            self.slot += 1;
            self.all.step(self.slot);
            self.transactional.step(self.slot);
        }
    }

    /// The busiest window this node knows of itself: what it has seen sent
    /// (the others' sends included) and the operator's seed.
    fn busiest_seen(&self, index: usize) -> u64 {
        let seed = self.budgets[index]
            .seed
            .filter(|seed| self.slot <= seed.until)
            .map_or(0, |seed| seed.units);
        self.all.tracks[index].busiest().max(seed)
    }

    fn allowance(&self, index: usize) -> u64 {
        let budget = &self.budgets[index];
        let elsewhere = budget
            .elsewhere
            .filter(|seen| self.slot <= seen.until)
            .map_or(0, |seen| seen.units);
        let busiest = self.busiest_seen(index).max(elsewhere);
        budget
            .floor
            .max((self.warmup * busiest as f64).floor() as u64)
    }

    /// What bulk mail leaves to the transactional apps of `allowance`.
    fn transactional_need(&self, index: usize, allowance: u64) -> u64 {
        let share = (TRANSACTIONAL_SHARE * allowance as f64).ceil() as u64;
        let track = &self.transactional.tracks[index];
        let history = (self.slot - self.since).clamp(1, KEPT_SLOTS) as f64;
        let average = (AVERAGE_MARGIN * self.transactional.total as f64 * track.window as f64
            / history)
            .min(AVERAGE_SHARE * allowance as f64)
            .ceil() as u64;
        track
            .busiest()
            .max(average)
            .max(share)
            .min(allowance.saturating_sub(1))
    }

    /// (allowance, room for `class` now, the most one message of `class`
    /// counts: a bigger one waits for that much room). Bulk mail may use
    /// only what the transactional apps' need leaves, whatever they have
    /// sent so far in the window, so freed room never goes to bulk first.
    fn room(&self, index: usize, class: AppClass) -> (u64, u64, u64) {
        let allowance = self.allowance(index);
        let used = self.all.tracks[index].used;
        let room = allowance.saturating_sub(used);
        match class {
            AppClass::Transactional => (allowance, room, allowance),
            AppClass::Bulk => {
                let share = allowance - self.transactional_need(index, allowance);
                let bulk = used.saturating_sub(self.transactional.tracks[index].used);
                (
                    allowance,
                    room.min(share.saturating_sub(bulk)),
                    share.max(1),
                )
            }
        }
    }

    /// The most units one message of `class` may count to fit every budget
    /// (a message with more recipients than that could never be sent
    /// within the rule), if any horizon is budgeted.
    pub fn biggest(&mut self, now: f64, class: AppClass) -> Option<u64> {
        self.advance(now);
        (0..self.budgets.len())
            .map(|index| self.room(index, class).2)
            .min()
    }

    /// Seconds from `now` until `units` more of what the current window
    /// holds have left it; `None` when the window holds fewer.
    fn leaves(&self, index: usize, units: u64, now: f64) -> Option<f64> {
        let track = &self.all.tracks[index];
        if units > track.used {
            return None;
        }
        let mut freed = 0;
        for slot in self.slot - track.window..=self.slot {
            freed += self.all.count(slot);
            if freed >= units {
                return Some(((slot + track.window + 1) as f64 * SLOT_SECONDS - now).max(0.0));
            }
        }
        None
    }

    /// Does a message of `class` counting `units` fit every budget now?
    /// `None` if so; else the first horizon that holds it, and when to ask
    /// again (the next slot, where the window moves on).
    pub fn wait(&mut self, now: f64, units: u64, class: AppClass) -> Option<Held> {
        self.advance(now);
        for index in 0..self.budgets.len() {
            let (allowance, room, biggest) = self.room(index, class);
            let budget = &mut self.budgets[index];
            let sent = self.all.tracks[index].used;
            // Within the class's room, and never past the allowance itself
            // (a bulk message admitted under a larger share than today's
            // still waits for room for all of it). Only a message bigger
            // than the whole allowance, which admission refuses, goes once
            // the window is empty.
            let whole = units.min(allowance) <= allowance.saturating_sub(sent);
            if units.min(biggest) <= room && whole {
                if class == AppClass::Transactional {
                    budget.reached = false;
                }
                continue;
            }
            // Logged when the budget itself is full, not when bulk mail has
            // only used up its share of it.
            if !budget.reached && sent >= allowance {
                budget.reached = true;
                self.events.push(BudgetReached {
                    horizon: budget.horizon,
                    sent,
                    allowance,
                    receiver: None,
                });
            }
            return Some(Held {
                horizon: budget.horizon,
                wait: ((self.slot + 1) as f64 * SLOT_SECONDS - now).max(f64::MIN_POSITIVE),
                sent,
                allowance,
            });
        }
        None
    }

    /// Counts `units` of `class` sent at `now`.
    pub fn add(&mut self, now: f64, units: u64, class: AppClass) {
        if self.budgets.is_empty() {
            return;
        }
        self.advance(now);
        self.all.add(self.slot, units);
        if class == AppClass::Transactional {
            self.transactional.add(self.slot, units);
        }
    }

    /// Takes back a send of `units` of `class` counted at `at` (the shared
    /// state refused it, see `shared`). Only a send of the current minute
    /// is taken back; an older one stays counted, which only ever holds
    /// back more.
    pub fn remove(&mut self, at: f64, units: u64, class: AppClass) {
        if self.budgets.is_empty() || slot_of(at) != self.slot {
            return;
        }
        self.all.remove(self.slot, units);
        if class == AppClass::Transactional {
            self.transactional.remove(self.slot, units);
        }
    }

    /// Per horizon (`Horizon::ALL` order), the busiest window this node
    /// knows of itself, for the other nodes (cluster mode); `None` where
    /// the horizon is not budgeted.
    pub fn busiest(&mut self, now: f64) -> [Option<u64>; 2] {
        self.advance(now);
        let mut busiest = [None; 2];
        for index in 0..self.budgets.len() {
            busiest[self.budgets[index].horizon as usize] = Some(self.busiest_seen(index));
        }
        busiest
    }

    /// What the other nodes know of the busiest windows (cluster mode): a
    /// node that joined late, or was down, allows what the gateway's
    /// history allows, not only what it saw itself.
    pub fn learn_busiest(&mut self, now: f64, elsewhere: [u64; 2]) {
        self.advance(now);
        let until = self.slot + ELSEWHERE_SLOTS;
        for budget in &mut self.budgets {
            let units = elsewhere[budget.horizon as usize];
            budget.elsewhere = (units > 0).then_some(Seed { units, until });
        }
    }

    /// The budgets as the shared state checks them (cluster mode).
    pub fn shared_budgets(&mut self, now: f64) -> Vec<SharedBudget> {
        self.advance(now);
        (0..self.budgets.len())
            .map(|index| {
                let allowance = self.allowance(index);
                SharedBudget {
                    horizon: self.budgets[index].horizon,
                    allowance,
                    bulk_share: allowance - self.transactional_need(index, allowance),
                }
            })
            .collect()
    }

    /// Per budgeted horizon, the counts of its current window's minutes
    /// that are not empty: (minute, all units, transactional units). What
    /// a shared state that restarted empty is rebuilt from.
    pub fn window_counts(&mut self, now: f64) -> Vec<(Horizon, Vec<MinuteCount>)> {
        self.advance(now);
        self.budgets
            .iter()
            .zip(&self.all.tracks)
            .map(|(budget, track)| {
                let minutes = (self.slot - track.window..=self.slot)
                    .map(|minute| MinuteCount {
                        minute,
                        all: self.all.count(minute),
                        transactional: self.transactional.count(minute),
                    })
                    .filter(|count| count.all > 0)
                    .collect();
                (budget.horizon, minutes)
            })
            .collect()
    }

    /// How long new mail of `class` counting `units` would wait for the
    /// budgets with `ahead` units of mail that goes before it: the longest
    /// horizon's wait, if any. A projection: room opens as the current
    /// window's sends leave it, then each further window is assumed to
    /// grow by `warmup` (what a backlog that fills every window gets).
    pub fn projected_wait(
        &mut self,
        now: f64,
        ahead: u64,
        units: u64,
        class: AppClass,
    ) -> Option<Held> {
        self.advance(now);
        let mut worst: Option<Held> = None;
        for index in 0..self.budgets.len() {
            let (allowance, room, biggest) = self.room(index, class);
            let needed = ahead + units.min(biggest);
            if needed <= room {
                continue;
            }
            let excess = needed - room;
            let track = &self.all.tracks[index];
            let window = track.window as f64 * SLOT_SECONDS;
            let wait = match self.leaves(index, excess, now) {
                Some(wait) => wait,
                None => {
                    let mut remaining = excess;
                    let mut wait = window;
                    let mut capacity = biggest as f64;
                    let mut windows = 0;
                    loop {
                        capacity *= self.warmup;
                        windows += 1;
                        if remaining as f64 <= capacity || windows >= PROJECTED_WINDOWS {
                            break;
                        }
                        remaining -= capacity as u64;
                        wait += window;
                    }
                    if windows >= PROJECTED_WINDOWS {
                        f64::INFINITY
                    } else {
                        wait
                    }
                }
            };
            if worst.as_ref().is_none_or(|held| wait > held.wait) {
                worst = Some(Held {
                    horizon: self.budgets[index].horizon,
                    wait,
                    sent: track.used,
                    allowance,
                });
            }
        }
        worst
    }

    /// Budgets that became full since the last call.
    pub fn take_events(&mut self) -> Vec<BudgetReached> {
        std::mem::take(&mut self.events)
    }

    /// The smallest allowance (for the crash reserve), if any is budgeted.
    pub fn smallest_allowance(&self) -> Option<u64> {
        (0..self.budgets.len())
            .map(|index| self.allowance(index))
            .min()
    }

    /// Every budgeted horizon's numbers at `now`.
    pub fn view(&mut self, now: f64) -> Vec<BudgetView> {
        self.advance(now);
        (0..self.budgets.len())
            .map(|index| {
                let (allowance, room, _) = self.room(index, AppClass::Transactional);
                let sent = self.all.tracks[index].used;
                let next_room = if room > 0 {
                    0.0
                } else {
                    self.leaves(index, sent + 1 - allowance, now)
                        .unwrap_or(self.all.tracks[index].window as f64 * SLOT_SECONDS)
                };
                BudgetView {
                    horizon: self.budgets[index].horizon,
                    sent,
                    allowance,
                    transactional_room: self.transactional_need(index, allowance),
                    next_room,
                }
            })
            .collect()
    }

    /// The state to save at `now`, counting `reserve` units more than sent
    /// in the current slot (a crash after the save can only count more).
    pub fn snapshot(&mut self, now: f64, reserve: u64) -> VolumeState {
        self.advance(now);
        let trim = |mut counts: Vec<u64>| {
            let zeros = counts.iter().take_while(|units| **units == 0).count();
            counts.drain(..zeros);
            counts
        };
        let mut all = self.all.kept(self.slot);
        if let Some(last) = all.last_mut() {
            *last += reserve;
        }
        let mut seeds = [None; 2];
        for budget in &self.budgets {
            seeds[budget.horizon as usize] = budget.seed;
        }
        VolumeState {
            slot: self.slot,
            all: trim(all),
            transactional: trim(self.transactional.kept(self.slot)),
            seeds,
            since: self.since.max(self.slot - KEPT_SLOTS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: f64 = 3_600.0;
    const DAY: f64 = 86_400.0;

    fn shaping(extra: &str) -> ShapingConfig {
        extra.parse().unwrap()
    }

    /// Sends one unit every `every` seconds from `start` for `seconds`
    /// whenever the budgets allow; returns the send times.
    fn offer(
        volume: &mut Volume,
        start: f64,
        seconds: f64,
        every: f64,
        class: AppClass,
    ) -> Vec<f64> {
        let mut sent = Vec::new();
        let mut now = start;
        while now < start + seconds {
            if volume.wait(now, 1, class).is_none() {
                volume.add(now, 1, class);
                sent.push(now);
            }
            now += every;
        }
        sent
    }

    #[test]
    fn a_gateway_with_no_history_gets_its_floors() {
        let mut volume = Volume::new(
            &shaping("min_rate = [\"10/min\", \"40/h\", \"100/day\"]"),
            0.0,
        );
        let sent = offer(&mut volume, 0.0, HOUR, 1.0, AppClass::Transactional);
        assert_eq!(sent.len(), 40, "the hour floor");
        let held = volume.wait(HOUR - 1.0, 1, AppClass::Transactional).unwrap();
        assert_eq!(
            (held.horizon, held.sent, held.allowance),
            (Horizon::Hour, 40, 40)
        );
        assert!(held.wait <= 60.0);
        // The next hour: the busiest previous hour (40) has not ended before
        // the current window began until an hour after it, so 2 x 40 only
        // from then; the day floor holds the total at 100.
        let more = offer(&mut volume, HOUR, DAY - HOUR, 1.0, AppClass::Transactional);
        assert_eq!(sent.len() + more.len(), 100, "the day floor");
        assert_eq!(
            volume.take_events().len(),
            2,
            "hour, then day, reached once each"
        );
    }

    #[test]
    fn the_allowance_grows_by_warmup_per_window_and_only_from_earlier_windows() {
        let config = shaping("min_rate = [\"10/min\", \"300/day\"]\nwarmup = \"2x/day\"");
        let mut volume = Volume::new(&config, 0.0);
        let mut per_day = Vec::new();
        for day in 0..5 {
            let start = day as f64 * DAY;
            per_day.push(offer(&mut volume, start, DAY, 10.0, AppClass::Transactional).len());
        }
        // Each day's first sends go out at its start, so the window that
        // held them ended before the next day's window began: 2x a day.
        assert_eq!(per_day, vec![300, 600, 1_200, 2_400, 4_800]);
    }

    #[test]
    fn history_older_than_seven_days_no_longer_counts() {
        let config = shaping("min_rate = [\"10/min\", \"100/day\"]\nwarmup = \"2x/day\"");
        let mut volume = Volume::new(&config, 0.0);
        assert_eq!(
            offer(&mut volume, 0.0, DAY, 10.0, AppClass::Transactional).len(),
            100
        );
        assert_eq!(volume.view(3.0 * DAY)[0].allowance, 200);
        assert_eq!(
            volume.view(7.0 * DAY)[0].allowance,
            200,
            "still within the week"
        );
        // At 9 days a window ending 1 day 16 minutes in still held some.
        assert_eq!(
            volume.view(9.5 * DAY)[0].allowance,
            100,
            "forgotten: the floor"
        );
    }

    #[test]
    fn seeds_stand_for_history_for_a_week() {
        let config = shaping(
            "initial_rate = [\"60/min\", \"200/h\"]\nmin_rate = [\"10/min\", \"40/h\"]\nwarmup = \"2x/day\"",
        );
        let mut volume = Volume::new(&config, 0.0);
        assert_eq!(volume.view(0.0)[0].allowance, 400);
        assert_eq!(volume.view(6.0 * DAY)[0].allowance, 400);
        assert_eq!(volume.view(7.0 * DAY)[0].allowance, 40);
    }

    #[test]
    fn bulk_leaves_the_transactional_apps_their_usual_room() {
        let config = shaping("min_rate = [\"10/min\", \"100/h\"]\nwarmup = \"2x/day\"");
        let mut volume = Volume::new(&config, 0.0);
        // The transactional apps' busiest hour: 30.
        assert_eq!(
            offer(&mut volume, 0.0, 1_800.0, 60.0, AppClass::Transactional).len(),
            30
        );
        let start = 3.0 * HOUR;
        // 2 x 30 is below the floor.
        assert_eq!(volume.view(start)[0].allowance, 100);
        let bulk = offer(&mut volume, start, 600.0, 1.0, AppClass::Bulk);
        assert_eq!(bulk.len(), 70, "30 left for the transactional apps");
        let transactional = offer(
            &mut volume,
            start + 600.0,
            600.0,
            1.0,
            AppClass::Transactional,
        );
        assert_eq!(transactional.len(), 30);
        assert!(
            volume
                .wait(start + 1_300.0, 1, AppClass::Transactional)
                .is_some()
        );
    }

    #[test]
    fn a_bulk_message_larger_than_todays_share_never_passes_the_allowance() {
        let config = shaping("min_rate = [\"10/min\", \"100/h\"]\ncount = \"recipients\"");
        let mut volume = Volume::new(&config, 0.0);
        // The transactional apps send 40 in the first 20 minutes: their
        // average over so short a history keeps half the hour for them.
        offer(&mut volume, 0.0, 1_200.0, 30.0, AppClass::Transactional);
        assert_eq!(volume.view(1_200.0)[0].transactional_room, 50);
        // A bulk message of 80 (admitted earlier, under a larger share)
        // waits: 80 would take the hour past 100.
        assert!(volume.wait(1_200.0, 80, AppClass::Bulk).is_some());
        // Once the window is empty it may go as the share's worth.
        assert!(volume.wait(5_000.0, 80, AppClass::Bulk).is_none());
    }

    #[test]
    fn admission_projects_the_wait_for_room() {
        let config = shaping("min_rate = [\"10/min\", \"100/day\"]\nwarmup = \"2x/day\"");
        let mut volume = Volume::new(&config, 0.0);
        assert!(
            volume
                .projected_wait(0.0, 99, 1, AppClass::Transactional)
                .is_none()
        );
        offer(&mut volume, 0.0, 100.0, 1.0, AppClass::Transactional);
        // Full: the next unit waits for the first slot to leave the day.
        let held = volume
            .projected_wait(100.0, 0, 1, AppClass::Transactional)
            .unwrap();
        assert_eq!(held.horizon, Horizon::Day);
        assert!((held.wait - (DAY + 60.0 - 100.0)).abs() < 1e-6, "{held:?}");
        // 100 + 200 + 400 beyond the full day: three more days.
        let held = volume
            .projected_wait(100.0, 699, 1, AppClass::Transactional)
            .unwrap();
        assert!((held.wait - 3.0 * DAY).abs() < 1e-6, "{held:?}");
    }

    #[test]
    fn a_restored_state_keeps_the_counts_and_the_reserve() {
        let config = shaping("min_rate = [\"10/min\", \"40/h\", \"1000/day\"]");
        let mut volume = Volume::new(&config, 1_000.0);
        offer(&mut volume, 1_000.0, 600.0, 30.0, AppClass::Transactional);
        let state = volume.snapshot(1_600.0, 5);
        let mut restored = Volume::restore(&config, &state, 1_700.0);
        let view = restored.view(1_700.0);
        assert_eq!(view[0].sent, 20 + 5, "the reserve counts as sent");
        assert_eq!(view[1].sent, 25);
        assert_eq!(
            restored.since,
            state.since.max(slot_of(1_000.0)),
            "the history began before its first send"
        );
        // Saved by a clock that was ahead: the counts end at the current
        // minute instead of freezing it.
        let mut early = Volume::restore(&config, &state, 1_000.0);
        assert_eq!(early.view(1_000.0)[0].sent, 25);
        assert_eq!(
            early.view(1_000.0 + 3_700.0)[0].sent,
            0,
            "the window moves on"
        );
        // Restored a day later: the busiest hour (25) still raises the hour.
        let mut later = Volume::restore(&config, &state, 1_000.0 + DAY);
        assert_eq!(later.view(1_000.0 + DAY)[0].allowance, 50);
    }

    #[test]
    fn what_other_nodes_saw_raises_a_late_node_s_allowance_while_renewed() {
        let config = shaping("min_rate = [\"10/min\", \"100/h\"]\nwarmup = \"2x/day\"");
        let mut volume = Volume::new(&config, 0.0);
        assert_eq!(volume.busiest(0.0), [Some(0), None]);
        assert_eq!(volume.shared_budgets(0.0)[0].allowance, 100);
        volume.learn_busiest(0.0, [400, 0]);
        assert_eq!(volume.shared_budgets(0.0)[0].allowance, 800);
        // Not said again: it fades after ten minutes.
        assert_eq!(volume.shared_budgets(9.0 * 60.0)[0].allowance, 800);
        assert_eq!(volume.shared_budgets(11.0 * 60.0)[0].allowance, 100);
        // What it says of itself leaves the others' word out (no echo).
        volume.learn_busiest(11.0 * 60.0, [400, 0]);
        assert_eq!(volume.busiest(11.0 * 60.0), [Some(0), None]);
    }
}
