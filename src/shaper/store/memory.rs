//! The in-memory store: the gateway's shared state as the cluster scripts
//! keep it (`src/cluster/*.lua`), for `simulate --nodes` and tests. It
//! follows the scripts' arithmetic (the GCRA, the windows of slots with a
//! running sum, the bulk share, the penalty's recovery) on the caller's
//! clock in seconds; where the two could differ, the shared suite in
//! `tests/it/store.rs` and the random proposals of `tests/it/cluster.rs`
//! hold them together.
//!
//! Each receiver's budgets are windows of their own (`r:<name>:all:<s>`,
//! `r:<name>:tx:<s>`, as the scripts' keys), checked as the total's are and
//! after them: a receiver's wait is named only when nothing else holds the
//! send, so that the node holds that receiver's mail alone.
//!
//! Invariants: counts only grow, except as slots leave their window; a
//! refusal counts nothing; a node's own sends never appear in its
//! readings of what the others sent.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::ready;
use std::sync::{Arc, Mutex};

use super::{HEARTBEAT_LIFETIME, Heartbeat, Reading, Store, Verdict};
use crate::poison::LockRecovered;
use crate::shaper::shared::{
    Busiest, Elsewhere, Ledger, Proposal, SharedBudget, SharedFeedback, SharedLimits, Units,
};
use crate::shaper::{AppClass, ClassCounts, Horizon, WindowCounts};

/// A rolling window of the shared state: slots of `width` seconds, the
/// last `span` of them counted (as the scripts' `window()`).
#[derive(Debug, Clone)]
struct Window {
    width: f64,
    span: i64,
    slots: BTreeMap<i64, u64>,
    sum: u64,
}

impl Window {
    fn cap(seconds: u64) -> Window {
        Window::new(seconds as f64 / 60.0, 61)
    }

    fn volume(seconds: u64) -> Window {
        Window::new(60.0, seconds as i64 / 60 + 1)
    }

    fn new(width: f64, span: i64) -> Window {
        Window {
            width,
            span,
            slots: BTreeMap::new(),
            sum: 0,
        }
    }

    /// Moves to `now`'s slot, taking off the slots that left; returns it.
    fn advance(&mut self, now: f64) -> i64 {
        let current = (now / self.width).floor() as i64;
        let kept = self.slots.split_off(&(current - self.span + 1));
        self.sum -= self.slots.values().sum::<u64>();
        self.slots = kept;
        current
    }

    /// Seconds until the current slot ends (when room may open).
    fn slot_left(&self, now: f64) -> f64 {
        ((now / self.width).floor() + 1.0) * self.width - now
    }

    fn add(&mut self, slot: i64, units: u64) {
        *self.slots.entry(slot).or_default() += units;
        self.sum += units;
    }

    /// Counts `units` in `slot` at `now`, unless the slot has left the
    /// window (it would change nothing), as the scripts' `count()`.
    fn count(&mut self, now: f64, slot: i64, units: u64) {
        let current = self.advance(now);
        if slot > current - self.span && units > 0 {
            self.add(slot, units);
        }
    }

    fn at(&self, slot: i64) -> u64 {
        self.slots.get(&slot).copied().unwrap_or(0)
    }
}

/// What a node's heartbeat left: valid until `expiry`.
#[derive(Debug, Clone)]
struct Depth {
    expiry: f64,
    queued: ClassCounts,
    busiest: Busiest,
}

/// The gateway's shared state, in memory: the same grant or wait as
/// `acquire.lua` for the operator's hold, the pause, the token bucket, the
/// caps and the budgets (with the bulk share), and what the other scripts
/// keep (the feedback, the heartbeats, the totals each node's readings come
/// from). Nodes go by their index.
#[derive(Debug, Clone, Default)]
pub struct SharedState {
    /// The GCRA's theoretical arrival time (seconds).
    tat: f64,
    /// "cap:<s>", "all:<s>", "tx:<s>", "r:<receiver>:all:<s>",
    /// "r:<receiver>:tx:<s>", as the scripts name their keys.
    windows: HashMap<String, Window>,
    /// What each node has sent.
    sent: Vec<Elsewhere>,
    /// The throttling penalty as last cut (none: 1).
    penalty: Option<f64>,
    /// The end of the latest pause (none: never paused).
    pause_until: Option<f64>,
    held: bool,
    /// The latest heartbeat of each node.
    depths: BTreeMap<usize, Depth>,
}

/// Why the shared state holds a send, and for how long (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hold {
    pub wait: f64,
    /// `hold`, `pause`, `rate`, `cap`, `1h` or `24h`, or `receiver-1h` or
    /// `receiver-24h`, as the scripts say.
    pub reason: &'static str,
}

impl SharedState {
    pub fn new(nodes: usize) -> SharedState {
        SharedState {
            sent: vec![Elsewhere::default(); nodes],
            ..SharedState::default()
        }
    }

    fn window(&mut self, key: String, make: impl FnOnce() -> Window) -> &mut Window {
        self.windows.entry(key).or_insert_with(make)
    }

    fn cap_window(&mut self, seconds: u64) -> &mut Window {
        self.window(format!("cap:{seconds}"), || Window::cap(seconds))
    }

    /// The all-mail and transactional windows of a budget of `seconds`:
    /// the gateway's (`receiver` `None`) or a receiver's.
    fn volume_keys(&mut self, receiver: Option<&str>, seconds: u64) -> (String, String) {
        let prefix = receiver.map_or(String::new(), |name| format!("r:{name}:"));
        let keys = (
            format!("{prefix}all:{seconds}"),
            format!("{prefix}tx:{seconds}"),
        );
        self.window(keys.0.clone(), || Window::volume(seconds));
        self.window(keys.1.clone(), || Window::volume(seconds));
        keys
    }

    /// Checks a send of `units` (`bulk` or not) against `budget` on the
    /// windows `keys` at `now` (as the scripts' `fits()`): the wait when it
    /// does not fit, and the current slot to count it in.
    fn check_volume(
        &mut self,
        now: f64,
        (all_key, tx_key): &(String, String),
        budget: &SharedBudget,
        (units, bulk): (u64, bool),
    ) -> (Option<f64>, i64) {
        let tx = {
            let window = self.windows.get_mut(tx_key).expect("made by volume_keys");
            window.advance(now);
            window.sum
        };
        let window = self.windows.get_mut(all_key).expect("made by volume_keys");
        let slot = window.advance(now);
        let all = window.sum;
        let allowance = budget.allowance;
        let mut fits = units.min(allowance) <= allowance.saturating_sub(all);
        if bulk {
            let room = allowance
                .saturating_sub(all)
                .min(budget.bulk_share.saturating_sub(all.saturating_sub(tx)));
            fits &= units.min(budget.bulk_share.max(1)) <= room;
        }
        ((!fits).then(|| window.slot_left(now)), slot)
    }

    /// Grants `proposal` from `node` at `now` (and counts it), or says how
    /// long to wait: the longest of what holds the gateway, else the
    /// longest of what holds its receiver.
    pub fn acquire(&mut self, now: f64, node: usize, proposal: &Proposal) -> Result<(), Hold> {
        let units = proposal.units;
        let bulk = proposal.class == AppClass::Bulk;
        let mut hold: Option<Hold> = None;
        let mut holds = |wait: f64, reason: &'static str| {
            if hold.is_none_or(|held| wait > held.wait) {
                hold = Some(Hold { wait, reason });
            }
        };
        if self.held {
            holds(1.0, "hold");
        }
        if let Some(until) = self.pause_until.filter(|until| *until > now) {
            holds(until - now, "pause");
        }
        let limits = &proposal.limits;
        let (emission, tolerance) = proposal.gcra_micros();
        let (emission, tolerance) = (emission as f64 / 1e6, tolerance as f64 / 1e6);
        let tat = self.tat.max(now);
        if tat - now > tolerance {
            holds(tat - now - tolerance, "rate");
        }
        let mut counted: Vec<(String, i64)> = Vec::new();
        for cap in &limits.caps {
            let key = format!("cap:{}", cap.window);
            let window = self.window(key.clone(), || Window::cap(cap.window));
            let slot = window.advance(now);
            if units.min(cap.limit) > cap.limit.saturating_sub(window.sum) {
                holds(window.slot_left(now), "cap");
            }
            counted.push((key, slot));
        }
        for budget in &limits.budgets {
            let seconds = budget.horizon.seconds() as u64;
            let keys = self.volume_keys(None, seconds);
            let (wait, slot) = self.check_volume(now, &keys, budget, (units, bulk));
            if let Some(wait) = wait {
                holds(wait, budget.horizon.label());
            }
            counted.push((keys.0, slot));
            if !bulk {
                counted.push((keys.1, slot));
            }
        }
        // The receiver's budgets: named only when nothing else holds it.
        let mut receiver_hold: Option<Hold> = None;
        if let Some(receiver) = &proposal.receiver {
            for budget in &receiver.budgets {
                let seconds = budget.horizon.seconds() as u64;
                let keys = self.volume_keys(Some(&receiver.name), seconds);
                let (wait, slot) = self.check_volume(now, &keys, budget, (units, bulk));
                if let Some(wait) = wait.filter(|_| receiver.enforced)
                    && receiver_hold.is_none_or(|held| wait > held.wait)
                {
                    receiver_hold = Some(Hold {
                        wait,
                        reason: match budget.horizon {
                            Horizon::Hour => "receiver-1h",
                            Horizon::Day => "receiver-24h",
                        },
                    });
                }
                counted.push((keys.0, slot));
                if !bulk {
                    counted.push((keys.1, slot));
                }
            }
        }
        if let Some(hold) = hold.or(receiver_hold) {
            return Err(hold);
        }
        self.tat = tat + emission;
        for (key, slot) in counted {
            if let Some(window) = self.windows.get_mut(&key) {
                window.add(slot, units);
            }
        }
        let mut sent = Elsewhere::default();
        let receiver = proposal.receiver.as_ref().map(|r| r.name.as_str());
        sent.add(units, proposal.class, receiver);
        self.add_totals(node, &sent);
        Ok(())
    }

    fn add_totals(&mut self, node: usize, sent: &Elsewhere) {
        if self.sent.len() <= node {
            self.sent.resize(node + 1, Elsewhere::default());
        }
        self.sent[node] = self.sent[node].plus(sent);
    }

    /// What the nodes other than `node` have sent (a reading's totals).
    pub fn others(&self, node: usize) -> Elsewhere {
        self.sent
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != node)
            .fold(Elsewhere::default(), |total, (_, sent)| total.plus(sent))
    }

    /// The feedback at `now`, as the scripts' `status()` reads it.
    fn feedback(&self, now: f64) -> SharedFeedback {
        SharedFeedback {
            penalty: self.penalty.unwrap_or(1.0),
            pause_left: self.pause_until.unwrap_or(0.0) - now,
        }
    }

    /// `node` is alive at `now` with `queued` and has seen `busiest`:
    /// the live nodes, what the others queued and the busiest windows
    /// they saw (of the total and of each receiver).
    pub fn heartbeat(
        &mut self,
        now: f64,
        node: usize,
        queued: ClassCounts,
        busiest: &Busiest,
    ) -> (u64, ClassCounts, Busiest) {
        self.depths.insert(
            node,
            Depth {
                expiry: now + HEARTBEAT_LIFETIME.as_secs_f64(),
                queued,
                busiest: busiest.clone(),
            },
        );
        self.depths.retain(|_, depth| depth.expiry >= now);
        let mut elsewhere = ClassCounts::default();
        let mut most = Busiest::default();
        for (_, depth) in self.depths.iter().filter(|(other, _)| **other != node) {
            elsewhere = elsewhere.plus(depth.queued);
            most = most.max(&depth.busiest);
        }
        (self.depths.len() as u64, elsewhere, most)
    }

    /// A node heard throttling at `now`: one episode for every node, as
    /// `throttle.lua` (the penalty recovers log-linearly after a pause,
    /// as `shaper::penalty` does).
    pub fn throttled(&mut self, now: f64, (factor, pause, recovery): (f64, f64, f64)) {
        let pause_until = self.pause_until.unwrap_or(0.0);
        if pause_until <= now {
            let done = ((now - pause_until) / recovery.max(1e-6)).min(1.0);
            let penalty = self.penalty.unwrap_or(1.0).powf(1.0 - done).min(1.0);
            self.penalty = Some(penalty * factor);
            self.pause_until = Some(now + pause);
        }
    }

    /// Every node rests until `now + seconds` at least (`pause.lua`).
    pub fn pause(&mut self, now: f64, seconds: f64) {
        self.pause_until = Some(self.pause_until.unwrap_or(0.0).max(now + seconds));
    }

    /// The pause ends at `now`, if it had not.
    pub fn end_pause(&mut self, now: f64) {
        self.pause_until = Some(self.pause_until.unwrap_or(0.0).min(now));
    }

    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// A node's view of a new epoch (`rebuild.lua`): the larger count of
    /// each slot, the lower penalty, the longer pause, a hold.
    pub fn rebuild(
        &mut self,
        now: f64,
        counts: &WindowCounts,
        feedback: &SharedFeedback,
        held: bool,
    ) {
        self.penalty = Some(self.penalty.unwrap_or(1.0).min(feedback.penalty));
        self.pause_until = Some(
            self.pause_until
                .unwrap_or(0.0)
                .max(now + feedback.pause_left.max(0.0)),
        );
        self.held |= held;
        let mut entries: Vec<(String, i64, u64)> = Vec::new();
        let gateway = counts.budgets.iter().map(|budgets| (None, budgets));
        let receivers = counts.receivers.iter().flat_map(|(name, budgets)| {
            budgets
                .iter()
                .map(move |budgets| (Some(name.as_str()), budgets))
        });
        for (receiver, (horizon, minutes)) in gateway.chain(receivers) {
            let (all, tx) = self.volume_keys(receiver, horizon.seconds() as u64);
            for minute in minutes {
                entries.push((all.clone(), minute.minute, minute.all));
                entries.push((tx.clone(), minute.minute, minute.transactional));
            }
        }
        for (window, slots) in &counts.caps {
            self.cap_window(*window);
            for (slot, units) in slots {
                entries.push((format!("cap:{window}"), *slot, *units));
            }
        }
        for (key, slot, units) in entries {
            if let Some(window) = self.windows.get_mut(&key) {
                let existing = window.at(slot);
                if units > existing {
                    window.count(now, slot, units - existing);
                }
            }
        }
    }

    /// What `node` sent on its share (`reconcile.lua`): each minute into
    /// every window `limits` name (a cap slot gets a minute's sends at the
    /// minute's end, or now), each receiver's part of it into that
    /// receiver's windows of every horizon `limits` budget, and all into
    /// its totals.
    pub fn reconcile(&mut self, now: f64, node: usize, limits: &SharedLimits, ledger: &Ledger) {
        let horizons: Vec<u64> = limits
            .budgets
            .iter()
            .map(|budget| budget.horizon.seconds() as u64)
            .collect();
        let volumes: Vec<(String, String)> = horizons
            .iter()
            .map(|seconds| self.volume_keys(None, *seconds))
            .collect();
        for (minute, name, Units { all, transactional }) in ledger.receiver_minutes() {
            for seconds in &horizons {
                let (all_key, tx_key) = self.volume_keys(Some(name), *seconds);
                for (key, units) in [(all_key, all), (tx_key, transactional)] {
                    if let Some(window) = self.windows.get_mut(&key) {
                        window.count(now, minute, units);
                    }
                }
            }
        }
        for cap in &limits.caps {
            self.cap_window(cap.window);
        }
        for (minute, [_, all, transactional]) in ledger.minutes() {
            for (all_key, tx_key) in &volumes {
                for (key, units) in [(all_key, all), (tx_key, transactional)] {
                    if let Some(window) = self.windows.get_mut(key) {
                        window.count(now, minute, units);
                    }
                }
            }
            let at = ((minute + 1) as f64 * 60.0 - 1e-6).min(now);
            for cap in &limits.caps {
                if let Some(window) = self.windows.get_mut(&format!("cap:{}", cap.window)) {
                    window.count(now, (at / window.width).floor() as i64, all);
                }
            }
        }
        self.add_totals(node, &ledger.total());
    }
}

/// One node's way to a [`SharedState`] shared with other nodes in the same
/// process (the simulator's, or a test's).
#[derive(Debug)]
pub struct MemoryStore {
    state: Arc<Mutex<SharedState>>,
    node: usize,
    /// Whether this node has made contact (an acquire or a heartbeat: the
    /// calls that carry Redis's epoch), and the others' totals at its latest
    /// reading.
    seen: Mutex<(bool, Elsewhere)>,
}

impl MemoryStore {
    /// The stores of `nodes` nodes on one new shared state.
    pub fn cluster(nodes: usize) -> Vec<MemoryStore> {
        let state = Arc::new(Mutex::new(SharedState::new(nodes)));
        (0..nodes)
            .map(|node| MemoryStore {
                state: state.clone(),
                node,
                seen: Mutex::default(),
            })
            .collect()
    }

    /// What the other nodes have sent in all (a reading's totals).
    pub fn others(&self) -> Elsewhere {
        self.state.lock_recovered().others(self.node)
    }

    /// What every answer carries, as `status()` and a link's reading: what
    /// the others sent since this node's previous reading. At first contact
    /// (`contact`: the call is an acquire or a heartbeat) the reading starts
    /// from the totals, as a link does on an epoch it did not know: what was
    /// sent before is in the windows already, not news.
    fn reading(&self, state: &SharedState, now: f64, contact: bool) -> Reading {
        let totals = state.others(self.node);
        let mut seen = self.seen.lock_recovered();
        let (known, seen) = &mut *seen;
        if contact && !*known {
            *known = true;
            *seen = totals.clone();
        }
        let elsewhere = totals.since(seen);
        *seen = seen.max(&totals);
        Reading {
            feedback: state.feedback(now),
            held: state.held,
            elsewhere,
        }
    }

    /// Runs `change` on the shared state and reads it afterwards.
    fn after(&self, now: f64, change: impl FnOnce(&mut SharedState, usize)) -> Reading {
        let mut state = self.state.lock_recovered();
        change(&mut state, self.node);
        self.reading(&state, now, false)
    }

    /// See [`Store::acquire`].
    pub fn acquire(&self, now: f64, proposal: &Proposal) -> Verdict {
        let mut state = self.state.lock_recovered();
        let decision = state.acquire(now, self.node, proposal);
        let reading = self.reading(&state, now, true);
        match decision {
            Ok(()) => Verdict {
                granted: true,
                wait: 0.0,
                reason: String::new(),
                reading,
            },
            Err(hold) => Verdict {
                granted: false,
                wait: hold.wait,
                reason: hold.reason.to_string(),
                reading,
            },
        }
    }

    /// See [`Store::heartbeat`].
    pub fn heartbeat(&self, now: f64, queued: ClassCounts, busiest: &Busiest) -> Heartbeat {
        let mut state = self.state.lock_recovered();
        let (live, queued_elsewhere, busiest_elsewhere) =
            state.heartbeat(now, self.node, queued, busiest);
        Heartbeat {
            live,
            queued_elsewhere,
            busiest_elsewhere,
            reading: self.reading(&state, now, true),
        }
    }
}

impl Store for MemoryStore {
    type Error = Infallible;

    fn acquire(
        &self,
        now: f64,
        proposal: &Proposal,
    ) -> impl Future<Output = Result<Verdict, Infallible>> + Send {
        ready(Ok(MemoryStore::acquire(self, now, proposal)))
    }

    fn heartbeat(
        &self,
        now: f64,
        queued: ClassCounts,
        busiest: &Busiest,
    ) -> impl Future<Output = Result<Heartbeat, Infallible>> + Send {
        ready(Ok(MemoryStore::heartbeat(self, now, queued, busiest)))
    }

    fn rebuild(
        &self,
        now: f64,
        counts: &WindowCounts,
        feedback: &SharedFeedback,
        held: bool,
    ) -> impl Future<Output = Result<Reading, Infallible>> + Send {
        ready(Ok(self.after(now, |state, _| {
            state.rebuild(now, counts, feedback, held)
        })))
    }

    fn reconcile(
        &self,
        now: f64,
        limits: &SharedLimits,
        ledger: &Ledger,
    ) -> impl Future<Output = Result<Reading, Infallible>> + Send {
        ready(Ok(self.after(now, |state, node| {
            state.reconcile(now, node, limits, ledger)
        })))
    }

    fn hold(
        &self,
        now: f64,
        held: bool,
    ) -> impl Future<Output = Result<Reading, Infallible>> + Send {
        ready(Ok(self.after(now, |state, _| state.hold(held))))
    }

    fn throttled(
        &self,
        now: f64,
        backoff: (f64, f64, f64),
    ) -> impl Future<Output = Result<Reading, Infallible>> + Send {
        ready(Ok(self.after(now, |state, _| state.throttled(now, backoff))))
    }

    fn pause(
        &self,
        now: f64,
        seconds: f64,
    ) -> impl Future<Output = Result<Reading, Infallible>> + Send {
        ready(Ok(self.after(now, |state, _| state.pause(now, seconds))))
    }

    fn end_pause(&self, now: f64) -> impl Future<Output = Result<Reading, Infallible>> + Send {
        ready(Ok(self.after(now, |state, _| state.end_pause(now))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::shared::{SharedCap, SharedReceiver};

    fn proposal(units: u64, class: AppClass, budgets: Vec<SharedBudget>) -> Proposal {
        Proposal {
            units,
            class,
            limits: SharedLimits {
                rate: 10.0,
                burst: 2,
                budgets,
                caps: vec![SharedCap {
                    window: 60,
                    limit: 50,
                }],
            },
            receiver: None,
        }
    }

    #[test]
    fn the_shared_bucket_spaces_every_node_together() {
        let mut state = SharedState::new(2);
        let p = proposal(1, AppClass::Transactional, Vec::new());
        assert_eq!(state.acquire(0.0, 0, &p), Ok(()));
        assert_eq!(state.acquire(0.0, 1, &p), Ok(()));
        let held = state.acquire(0.0, 0, &p).unwrap_err();
        assert_eq!(held.reason, "rate");
        assert!((held.wait - 0.1).abs() < 1e-9, "{held:?}");
        assert_eq!(state.acquire(0.1, 1, &p), Ok(()));
        assert_eq!(state.others(0).messages, 2);
        assert_eq!(state.others(1).messages, 1);
    }

    #[test]
    fn bulk_leaves_the_last_token_to_transactional_mail() {
        let mut state = SharedState::new(2);
        let bulk = proposal(1, AppClass::Bulk, Vec::new());
        let tx = proposal(1, AppClass::Transactional, Vec::new());
        // A burst of 2: bulk takes one token, not the second.
        assert_eq!(state.acquire(0.0, 0, &bulk), Ok(()));
        assert_eq!(state.acquire(0.0, 0, &bulk).unwrap_err().reason, "rate");
        assert_eq!(state.acquire(0.0, 1, &tx), Ok(()));
        assert_eq!(state.acquire(0.0, 1, &tx).unwrap_err().reason, "rate");
    }

    #[test]
    fn caps_and_budgets_hold_all_nodes_and_bulk_keeps_to_its_share() {
        let mut state = SharedState::new(3);
        let budget = SharedBudget {
            horizon: Horizon::Hour,
            allowance: 20,
            bulk_share: 12,
        };
        let bulk = proposal(4, AppClass::Bulk, vec![budget]);
        let tx = proposal(4, AppClass::Transactional, vec![budget]);
        let mut now = 0.0;
        for node in 0..3 {
            assert_eq!(state.acquire(now, node, &bulk), Ok(()));
            now += 1.0;
        }
        let held = state.acquire(now, 0, &bulk).unwrap_err();
        assert_eq!(held.reason, "1h", "12 of bulk used: its share");
        assert_eq!(state.acquire(now, 1, &tx), Ok(()));
        now += 1.0;
        assert_eq!(state.acquire(now, 2, &tx), Ok(()));
        now += 1.0;
        let held = state.acquire(now, 2, &tx).unwrap_err();
        assert_eq!(held.reason, "1h", "20 of 20");
        // An hour and a slot later the first sends have left the window.
        assert_eq!(state.acquire(3_600.0 + 61.0, 0, &tx), Ok(()));
        // The cap (50 a minute) holds whatever the budget says.
        let mut capped = proposal(30, AppClass::Transactional, Vec::new());
        capped.limits.rate = 1e6;
        assert_eq!(state.acquire(7_300.0, 0, &capped), Ok(()));
        assert_eq!(
            state.acquire(7_300.0, 1, &capped).unwrap_err().reason,
            "cap"
        );
    }

    #[test]
    fn a_receivers_budget_holds_every_node_and_is_named_only_when_nothing_else_holds() {
        let mut state = SharedState::new(3);
        let to = |name: &str, allowance: u64, enforced: bool| SharedReceiver {
            name: name.to_string(),
            budgets: vec![SharedBudget {
                horizon: Horizon::Hour,
                allowance,
                bulk_share: allowance,
            }],
            enforced,
        };
        let send = |units, receiver| Proposal {
            receiver: Some(receiver),
            ..proposal(units, AppClass::Transactional, Vec::new())
        };
        let mut now = 0.0;
        for node in 0..3 {
            assert_eq!(
                state.acquire(now, node, &send(3, to("google", 9, true))),
                Ok(())
            );
            now += 0.5;
        }
        let held = state
            .acquire(now, 0, &send(1, to("google", 9, true)))
            .unwrap_err();
        assert_eq!(held.reason, "receiver-1h", "9 of 9 across the nodes");
        assert!(held.wait > 0.0 && held.wait <= 60.0, "{held:?}");
        assert_eq!(
            state.acquire(now, 0, &send(1, to("microsoft", 9, true))),
            Ok(()),
            "another receiver flows"
        );
        now += 0.5;
        assert_eq!(
            state.acquire(now, 1, &send(1, to("google", 9, false))),
            Ok(()),
            "not enforced: counted only"
        );
        // The cap (50 a minute) holds too: the gateway's reason wins.
        now += 0.5;
        let held = state
            .acquire(now, 2, &send(45, to("google", 9, true)))
            .unwrap_err();
        assert_eq!(held.reason, "cap");
        let others = state.others(0);
        assert_eq!(others.receivers["google"].all, 7, "nodes 1 and 2");
        assert_eq!(others.all, 7);
        assert!(!state.others(1).receivers.contains_key("yahoo"));
        assert_eq!(state.others(1).receivers["microsoft"].all, 1);
    }

    #[test]
    fn the_penalty_recovers_log_linearly_after_the_pause_as_the_script_does() {
        let mut state = SharedState::new(2);
        state.throttled(0.0, (0.5, 10.0, 100.0));
        assert_eq!(state.feedback(5.0).penalty, 0.5);
        assert_eq!(state.feedback(5.0).pause_left, 5.0);
        state.throttled(5.0, (0.5, 10.0, 100.0));
        assert_eq!(state.feedback(5.0).penalty, 0.5, "the same episode");
        // Half the recovery after the pause: half way back, in logs.
        state.throttled(60.0, (0.5, 10.0, 100.0));
        let penalty = state.feedback(60.0).penalty;
        assert!((penalty - 0.5f64.sqrt() * 0.5).abs() < 1e-12, "{penalty}");
        state.throttled(500.0, (0.5, 10.0, 100.0));
        assert_eq!(state.feedback(500.0).penalty, 0.5, "recovered, cut again");
    }

    #[test]
    fn a_node_silent_for_a_heartbeats_lifetime_is_no_longer_live() {
        let mut state = SharedState::new(2);
        let lifetime = HEARTBEAT_LIFETIME.as_secs_f64();
        let queued = ClassCounts {
            messages: [1, 0],
            units: [1, 0],
        };
        let nothing = Busiest::default();
        state.heartbeat(0.0, 0, queued, &nothing);
        let (live, elsewhere, _) = state.heartbeat(lifetime, 1, ClassCounts::default(), &nothing);
        assert_eq!((live, elsewhere), (2, queued));
        let (live, elsewhere, _) =
            state.heartbeat(lifetime + 0.5, 1, ClassCounts::default(), &nothing);
        assert_eq!((live, elsewhere), (1, ClassCounts::default()));
    }

    #[test]
    fn a_ledger_older_than_a_window_changes_nothing_and_a_rebuild_only_raises() {
        let mut state = SharedState::new(2);
        let limits = SharedLimits {
            rate: 1e6,
            burst: 10,
            budgets: vec![SharedBudget {
                horizon: Horizon::Hour,
                allowance: 10,
                bulk_share: 10,
            }],
            caps: Vec::new(),
        };
        let now = 10.0 * 3_600.0;
        let mut ledger = Ledger::default();
        ledger.add(now - 2.0 * 3_600.0, 9, AppClass::Transactional, None);
        state.reconcile(now, 0, &limits, &ledger);
        assert_eq!(state.others(1).messages, 1, "in the totals");
        let tx = Proposal {
            units: 10,
            class: AppClass::Transactional,
            limits: limits.clone(),
            receiver: None,
        };
        assert_eq!(
            state.clone().acquire(now, 1, &tx),
            Ok(()),
            "not in the hour"
        );
        let minute = (now / 60.0) as i64;
        let counts = |units| WindowCounts {
            budgets: vec![(
                Horizon::Hour,
                vec![crate::shaper::volume::MinuteCount {
                    minute,
                    all: units,
                    transactional: units,
                }],
            )],
            caps: Vec::new(),
            receivers: Vec::new(),
        };
        let feedback = SharedFeedback {
            penalty: 1.0,
            pause_left: 0.0,
        };
        state.rebuild(now, &counts(4), &feedback, false);
        state.rebuild(now, &counts(2), &feedback, false);
        let six = Proposal { units: 6, ..tx };
        assert_eq!(state.clone().acquire(now, 1, &six), Ok(()), "4 counted");
        let seven = Proposal { units: 7, ..six };
        assert_eq!(state.acquire(now, 1, &seven).unwrap_err().reason, "1h");
    }
}
