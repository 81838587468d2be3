//! The scheduler of one gateway: the fair queue of waiting mail in front of
//! the shaping model. The live delivery queue and the simulator both drive
//! this same type, so what `simulate` shows is what the relay does.
//!
//! Invariants: an item leaves only through [`Scheduler::next`], and only when
//! the model says `Send` for it; the model is reached only through the
//! scheduler's methods, so queue and model never disagree. When a bulk app's
//! turn comes but it must wait (the volume budgets keep the rest of their
//! room for the transactional apps), it passes its turn on: bulk never
//! holds the transactional lanes, which keep their round robin. Within a
//! lane, mail waits per receiver: when a receiver's own budget is full, the
//! lane's mail to other receivers goes on (no head-of-line blocking), and a
//! lane whose every receiver is full passes its turn on like bulk does.

use super::fair::{Due, FairQueue};
use super::model::{Decision, Deferral, GatewayModel, ModelView, Offer, Projection, ReceiverPart};
use super::state::SavedState;
use crate::shaper::rules::{AppClass, HELD_SHARE_OF_LIFETIME};
use std::time::Duration;

struct Entry<T> {
    queued_at: f64,
    units: u64,
    item: T,
}

/// One app's lane: its share of the round robin, its class and the
/// longest wait its app takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    /// Messages per turn (the app's `priority`).
    pub weight: u32,
    pub class: AppClass,
    /// The app's `max_queue_delay`; `None` takes the gateway's.
    pub max_queue_delay: Option<Duration>,
    /// The app's `expire_after`: mail must leave well before it, so the
    /// wait taken is at most four fifths of it.
    pub expire_after: Option<Duration>,
}

/// What [`Scheduler::next`] hands out.
#[derive(Debug, PartialEq)]
pub enum Release<T> {
    /// Send this now (it counts `units` to `receiver`); it waited
    /// `waited` seconds in the queue.
    Send {
        item: T,
        lane: usize,
        receiver: Option<usize>,
        units: u64,
        waited: f64,
    },
    /// Nothing may go before this many seconds from now.
    Wait(f64),
    /// Save the model's state, then ask again (see [`Scheduler::snapshot`]).
    Save,
    /// The queue is empty.
    Idle,
}

/// An item taken out of the scheduler for good (expired, deleted, moved),
/// with the lane and units it counted there.
#[derive(Debug)]
pub struct Taken<T> {
    pub item: T,
    pub lane: usize,
    pub receiver: Option<usize>,
    pub units: u64,
}

/// The queue and the model's numbers together.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayView {
    pub model: ModelView,
    pub queued: usize,
    /// Seconds the oldest queued message has waited.
    pub oldest_age: f64,
    /// Messages waiting per app lane: the `[[apps]]` in order, then `other`.
    pub lanes: Vec<usize>,
    /// Messages waiting per budgeted receiver (`ShapingConfig::receivers`
    /// order; mail to other receivers is not counted here).
    pub receivers: Vec<usize>,
    /// What mail queued behind everything waiting now would wait, and
    /// what for: the time the held mail takes to drain.
    pub drain: Projection,
    /// Seconds the newest message waiting for the shaper has waited (the
    /// last to leave: with `drain`, whether held mail outlives its
    /// lifetime).
    pub newest_age: f64,
}

/// See the module notes.
pub struct Scheduler<T> {
    queue: FairQueue<Entry<T>>,
    lanes: Vec<Lane>,
    /// What the fair queue holds, per class.
    counts: ClassCounts,
    /// What it holds per receiver key (see [`Scheduler::key`]), per class.
    receiver_counts: Vec<ClassCounts>,
    /// Receiver keys found without room in the current [`Scheduler::next`]
    /// (per class: bulk may be held where transactional mail is not).
    closed: Vec<[bool; 2]>,
    model: GatewayModel,
}

/// Messages and units per class (`AppClass as usize`): what a fair queue
/// holds, what waits outside it for a retry, what the other nodes of a
/// cluster hold. Admission weighs transactional mail against the
/// transactional part only, as the queue and the budgets serve it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounts {
    pub messages: [usize; 2],
    pub units: [u64; 2],
}

impl ClassCounts {
    /// One message of `class` counting `units` more.
    pub fn add(&mut self, class: AppClass, units: u64) {
        self.messages[class as usize] += 1;
        self.units[class as usize] += units;
    }

    /// One message of `class` counting `units` fewer.
    pub fn remove(&mut self, class: AppClass, units: u64) {
        self.messages[class as usize] -= 1;
        self.units[class as usize] -= units;
    }

    /// Both counts together.
    pub fn plus(self, other: ClassCounts) -> ClassCounts {
        ClassCounts {
            messages: [
                self.messages[0] + other.messages[0],
                self.messages[1] + other.messages[1],
            ],
            units: [
                self.units[0] + other.units[0],
                self.units[1] + other.units[1],
            ],
        }
    }

    pub fn total_messages(&self) -> usize {
        self.messages.iter().sum()
    }

    pub fn total_units(&self) -> u64 {
        self.units.iter().sum()
    }
}

impl<T> Scheduler<T> {
    pub fn new(model: GatewayModel, lanes: Vec<Lane>) -> Scheduler<T> {
        // One key per budgeted receiver, and one for mail to any other.
        let keys = model.config().receivers.len() + 1;
        Scheduler {
            queue: FairQueue::with_keys(lanes.iter().map(|lane| lane.weight).collect(), keys),
            lanes,
            counts: ClassCounts::default(),
            receiver_counts: vec![ClassCounts::default(); keys],
            closed: vec![[false; 2]; keys],
            model,
        }
    }

    /// The fair queue's key of mail to `receiver`: its index, the last key
    /// for a receiver not budgeted.
    fn key(&self, receiver: Option<usize>) -> usize {
        let other = self.receiver_counts.len() - 1;
        receiver.map_or(other, |index| index.min(other))
    }

    /// The receiver of a fair queue key.
    fn receiver(&self, key: usize) -> Option<usize> {
        (key + 1 < self.receiver_counts.len()).then_some(key)
    }

    /// The gateway's shaping model, which the queue in front of it feeds
    /// and asks (the scheduler only adds the lanes and their order).
    pub fn model(&self) -> &GatewayModel {
        &self.model
    }

    /// See [`Scheduler::model`].
    pub fn model_mut(&mut self) -> &mut GatewayModel {
        &mut self.model
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The class of `lane` (an unknown lane is the last one's, as in the
    /// fair queue).
    pub fn class(&self, lane: usize) -> AppClass {
        self.lane(lane).class
    }

    /// The longest wait new mail of `lane` takes, in seconds: its app's
    /// `max_queue_delay`, else the gateway's, and at most four fifths of
    /// the app's `expire_after` (held mail leaves before it expires).
    pub fn max_delay(&self, lane: usize) -> f64 {
        let lane = self.lane(lane);
        let delay = lane
            .max_queue_delay
            .unwrap_or(self.model.max_queue_delay())
            .as_secs_f64();
        lane.expire_after.map_or(delay, |after| {
            delay.min(after.as_secs_f64() * HELD_SHARE_OF_LIFETIME)
        })
    }

    fn lane(&self, lane: usize) -> &Lane {
        &self.lanes[lane.min(self.lanes.len() - 1)]
    }

    /// Messages and units queued, per class.
    pub fn queued(&self) -> ClassCounts {
        self.counts
    }

    /// Queues `item` counting `units` to `receiver` (`None`: one not
    /// budgeted) in `lane`, waiting since `queued_at`.
    pub fn push(
        &mut self,
        queued_at: f64,
        lane: usize,
        receiver: Option<usize>,
        units: u64,
        item: T,
    ) {
        let (class, key) = (self.class(lane), self.key(receiver));
        self.counts.add(class, units);
        self.receiver_counts[key].add(class, units);
        self.queue.push(
            lane,
            key,
            Entry {
                queued_at,
                units,
                item,
            },
        );
    }

    /// The next item to send, if the model lets it go at `now`. A bulk lane
    /// whose turn it is but that must wait gives its turn to the next lane
    /// (at most one round), so transactional lanes keep their round robin
    /// among themselves while bulk waits for its room. Within a lane, mail
    /// to a receiver without room is passed over for the lane's mail to
    /// other receivers; a lane with nothing that may go passes its turn on.
    pub fn next(&mut self, now: f64) -> Release<T> {
        let mut held_wait = f64::INFINITY;
        for closed in &mut self.closed {
            *closed = [false; 2];
        }
        for _ in 0..self.queue.turns().count() {
            let Some(lane) = self.queue.turns().next() else {
                break;
            };
            let class = self.class(lane);
            loop {
                let closed = &self.closed;
                let Some((key, head)) = self.queue.peek_where(|key| !closed[key][class as usize])
                else {
                    // Every receiver this lane has mail for is full.
                    self.queue.skip_turn();
                    break;
                };
                let units = head.units;
                let receiver = self.receiver(key);
                match self.model.try_send(now, units, class, receiver) {
                    Decision::WaitReceiver(seconds) => {
                        held_wait = held_wait.min(seconds);
                        self.closed[key][class as usize] = true;
                    }
                    Decision::Wait(seconds) if class == AppClass::Bulk => {
                        held_wait = held_wait.min(seconds);
                        self.queue.skip_turn();
                        break;
                    }
                    Decision::Wait(seconds) => return Release::Wait(seconds.min(held_wait)),
                    Decision::Save => return Release::Save,
                    Decision::Send => {
                        let (lane, entry) = self.queue.pop_key(key).expect("peeked above");
                        return self.sent(lane, key, entry, now);
                    }
                }
            }
        }
        if held_wait.is_finite() {
            Release::Wait(held_wait)
        } else {
            self.model.update(now);
            Release::Idle
        }
    }

    fn sent(&mut self, lane: usize, key: usize, entry: Entry<T>, now: f64) -> Release<T> {
        let class = self.class(lane);
        self.counts.remove(class, entry.units);
        self.receiver_counts[key].remove(class, entry.units);
        Release::Send {
            item: entry.item,
            lane,
            receiver: self.receiver(key),
            units: entry.units,
            waited: (now - entry.queued_at).max(0.0),
        }
    }

    /// Puts back an item [`Scheduler::next`] released at `at` (after
    /// `waited` seconds in the queue) that could not go after all (the
    /// shared state refused it): first in its lane again, and taken back
    /// from the model's counts by what it `counted` when released.
    pub fn put_back(
        &mut self,
        at: f64,
        (lane, receiver): (usize, Option<usize>),
        waited: f64,
        (units, counted): (u64, u64),
        item: T,
    ) {
        let (class, key) = (self.class(lane), self.key(receiver));
        self.model.refund(at, counted, class, receiver);
        self.counts.add(class, units);
        self.receiver_counts[key].add(class, units);
        self.queue.push_front(
            lane,
            key,
            Entry {
                queued_at: at - waited,
                units,
                item,
            },
        );
    }

    /// Every queued item.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter().map(|entry| &entry.item)
    }

    /// The number of lanes (the apps, then `other`).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Every item queued in `lane`, oldest first.
    pub fn lane_items(&self, lane: usize) -> impl Iterator<Item = &T> {
        self.queue.lane(lane).map(|entry| &entry.item)
    }

    /// Takes out items that are due, at most `limit`: `due` says of each
    /// (given its lane), oldest first, whether to take it, skip it, or stop
    /// looking in that lane (lanes are in arrival order, so the oldest mail,
    /// the first to expire, is at their fronts).
    pub fn take_due(&mut self, limit: usize, due: impl Fn(usize, &T) -> Due) -> Vec<Taken<T>> {
        let mut taken = Vec::new();
        for lane in 0..self.queue.lane_count() {
            let left = limit - taken.len();
            for (key, entry) in self
                .queue
                .take_from_lane(lane, left, |entry| due(lane, &entry.item))
            {
                let class = self.class(lane);
                self.counts.remove(class, entry.units);
                self.receiver_counts[key].remove(class, entry.units);
                taken.push(Taken {
                    item: entry.item,
                    lane,
                    receiver: self.receiver(key),
                    units: entry.units,
                });
            }
        }
        taken
    }

    /// Takes out the first queued item `matches` picks.
    pub fn remove(&mut self, matches: impl Fn(&T) -> bool) -> Option<T> {
        self.take(matches).map(|taken| taken.item)
    }

    /// As [`Scheduler::remove`], with the item's lane and units.
    pub fn take(&mut self, matches: impl Fn(&T) -> bool) -> Option<Taken<T>> {
        let (lane, key, entry) = self.queue.remove(|entry| matches(&entry.item))?;
        let class = self.class(lane);
        self.counts.remove(class, entry.units);
        self.receiver_counts[key].remove(class, entry.units);
        Some(Taken {
            item: entry.item,
            lane,
            receiver: self.receiver(key),
            units: entry.units,
        })
    }

    /// Admission for new mail in `lane` counting `units`, with envelope
    /// `fingerprint`: it waits for what goes before it in the round robin,
    /// plus what is held `outside` the queue (retries, the other nodes'
    /// queues), counted as ahead: for transactional mail only the
    /// transactional part of it, as the queue and the budgets serve it.
    /// Its parts to budgeted receivers (`receivers`: receiver, units) each
    /// wait for their receiver's room behind what is queued to it.
    pub fn admit(
        &mut self,
        now: f64,
        lane: usize,
        units: u64,
        (outside, receivers): (ClassCounts, &[(usize, u64)]),
        fingerprint: u64,
    ) -> Result<Projection, Deferral> {
        let class = self.class(lane);
        let transactional = AppClass::Transactional as usize;
        let all = self.counts.plus(outside);
        let (ahead_outside, ahead_units) = match class {
            AppClass::Transactional => (outside.messages[transactional], all.units[transactional]),
            AppClass::Bulk => (outside.total_messages(), all.total_units()),
        };
        let offer = Offer {
            ahead: self.queue.ahead_of_new(lane) + ahead_outside,
            ahead_units,
            queued_messages: all.total_messages(),
            queued_units: all.total_units(),
            units,
            class,
            fingerprint,
            max_delay: self.max_delay(lane),
            receivers: receivers
                .iter()
                .map(|&(receiver, units)| {
                    let queued = self.receiver_counts[self.key(Some(receiver))];
                    ReceiverPart {
                        receiver,
                        units,
                        ahead_units: match class {
                            AppClass::Transactional => queued.units[transactional],
                            AppClass::Bulk => queued.total_units(),
                        },
                    }
                })
                .collect(),
        };
        self.model.admit(now, &offer)
    }

    /// The state to save at `now` and the reserve it counts ahead (none
    /// without `reserve`: at shutdown the counts are exact); call
    /// [`Scheduler::saved`] with that reserve once it is on disk.
    pub fn snapshot(&mut self, now: f64, reserve: bool) -> (SavedState, u64) {
        let reserve = if reserve { self.model.reserve() } else { 0 };
        (self.model.snapshot(now, reserve), reserve)
    }

    /// The numbers of the model and the queue at `now`.
    pub fn view(&mut self, now: f64) -> GatewayView {
        let oldest = self
            .queue
            .heads()
            .map(|entry| entry.queued_at)
            .fold(f64::INFINITY, f64::min);
        GatewayView {
            model: self.model.view(now),
            queued: self.queue.len(),
            oldest_age: if oldest.is_finite() {
                (now - oldest).max(0.0)
            } else {
                0.0
            },
            lanes: self.queue.lane_lengths().collect(),
            receivers: self.queue.key_lengths()[..self.receiver_counts.len() - 1].to_vec(),
            drain: self.drain(now),
            newest_age: self
                .queue
                .tails()
                .map(|entry| entry.queued_at)
                .reduce(f64::max)
                .map_or(0.0, |newest| (now - newest).max(0.0)),
        }
    }

    /// See [`GatewayView::drain`]: the wait of one more message behind
    /// everything queued (as bulk mail waits), with nothing queued none:
    /// the longest of the total's and of each receiver's, behind what is
    /// queued to it.
    fn drain(&mut self, now: f64) -> Projection {
        if self.queue.is_empty() {
            return Projection::AT_ONCE;
        }
        let all = self.counts;
        let mut longest =
            self.model
                .projection(now, all.total_messages(), all.total_units(), AppClass::Bulk);
        for key in 0..self.receiver_counts.len() {
            let Some(receiver) = self.receiver(key) else {
                continue;
            };
            let queued = self.receiver_counts[key];
            if queued.total_messages() == 0 {
                continue;
            }
            if let Some(projection) =
                self.model
                    .receiver_projection(now, receiver, queued.total_units())
                && projection.wait > longest.wait
            {
                longest = projection;
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::{DeferReason, ShapingConfig};

    fn scheduler(shaping: &str) -> Scheduler<&'static str> {
        Scheduler::new(
            GatewayModel::new(&shaping.parse().unwrap(), 0.0),
            vec![lane(AppClass::Transactional), lane(AppClass::Transactional)],
        )
    }

    fn lane(class: AppClass) -> Lane {
        Lane {
            weight: 1,
            class,
            max_queue_delay: None,
            expire_after: None,
        }
    }

    #[test]
    fn an_apps_wait_is_its_own_or_the_gateways_and_stays_under_its_expire_after() {
        let shaping: ShapingConfig = "".parse().unwrap();
        let lanes = vec![
            Lane {
                expire_after: Some(Duration::from_secs(86_400)),
                ..lane(AppClass::Transactional)
            },
            Lane {
                max_queue_delay: Some(Duration::from_secs(7_200)),
                ..lane(AppClass::Bulk)
            },
            lane(AppClass::Transactional),
        ];
        let scheduler: Scheduler<()> = Scheduler::new(GatewayModel::new(&shaping, 0.0), lanes);
        assert_eq!(scheduler.max_delay(0), 0.8 * 86_400.0);
        assert_eq!(scheduler.max_delay(1), 7_200.0);
        assert_eq!(
            scheduler.max_delay(2),
            4.0 * 86_400.0,
            "the gateway's default"
        );
    }

    #[test]
    fn the_oldest_of_each_lane_are_taken_out_when_due_and_the_rest_goes_on() {
        let mut scheduler = scheduler("initial_rate = \"60/min\"\nburst = 1");
        // Lane 0 holds mail of ages 0..4 (its name is its arrival); lane 1
        // one message of age 2.
        for name in ["a0", "a1", "a2", "a3"] {
            scheduler.push(0.0, 0, None, 1, name);
        }
        scheduler.push(0.0, 1, None, 1, "b2");
        let arrival = |item: &&str| item[1..].parse::<u32>().unwrap();
        // Lane 0 keeps its mail two units, lane 1 three; "a1" was tried
        // before and is left for its next attempt, not in the way.
        let due = |lane: usize, item: &&str| match (*item, arrival(item) < [2, 3][lane]) {
            ("a1", _) => Due::Skip,
            (_, true) => Due::Take,
            (_, false) => Due::Stop,
        };
        // At most `limit` at a time: the rest next time.
        let first = scheduler.take_due(1, due);
        let taken: Vec<_> = first
            .into_iter()
            .chain(scheduler.take_due(100, due))
            .collect();
        let names: Vec<(usize, &str)> =
            taken.iter().map(|taken| (taken.lane, taken.item)).collect();
        assert_eq!(names, [(0, "a0"), (1, "b2")]);
        assert_eq!(scheduler.len(), 3);
        assert_eq!(scheduler.queued().total_units(), 3);
        // Nothing due twice; an emptied lane left the round robin.
        assert!(scheduler.take_due(100, due).is_empty());
        let mut sent = Vec::new();
        let mut now = 0.0;
        while sent.len() < 3 {
            match scheduler.next(now) {
                Release::Send { item, lane, .. } => sent.push((lane, item)),
                Release::Wait(wait) => now += wait,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sent, [(0, "a1"), (0, "a2"), (0, "a3")]);
        assert!(matches!(scheduler.next(now + 60.0), Release::Idle));
    }

    #[test]
    fn releases_fairly_at_the_ceiling_and_reports_the_wait() {
        let mut scheduler = scheduler("initial_rate = \"30/min\"\nheadroom = 2.0\nburst = 1");
        for _ in 0..5 {
            scheduler.push(10.0, 0, None, 1, "bulk");
        }
        scheduler.push(10.0, 1, None, 1, "reset");
        let mut now = 10.0;
        let mut order = Vec::new();
        while order.len() < 6 {
            match scheduler.next(now) {
                Release::Send { item, waited, .. } => order.push((item, waited)),
                Release::Wait(seconds) => now += seconds,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(order[1].0, "reset", "second, not behind the bulk run");
        assert!((order[5].1 - 5.0).abs() < 1e-6, "one a second: {order:?}");
        assert_eq!(scheduler.next(now), Release::Idle);
        let view = scheduler.view(now);
        assert_eq!((view.queued, view.oldest_age), (0, 0.0));
    }

    #[test]
    fn admission_counts_what_is_queued() {
        let mut scheduler = scheduler("initial_rate = \"30/min\"\nmax_queue_delay = \"10s\"");
        for _ in 0..9 {
            scheduler.push(0.0, 0, None, 1, "queued");
            assert!(
                scheduler
                    .admit(0.0, 0, 1, (ClassCounts::default(), &[]), 0)
                    .is_ok()
            );
        }
        scheduler.push(0.0, 0, None, 1, "queued");
        assert!(
            scheduler
                .admit(0.0, 0, 1, (ClassCounts::default(), &[]), 0)
                .is_err(),
            "the 11th would wait 11 s"
        );
        assert!(
            scheduler
                .admit(0.0, 1, 1, (ClassCounts::default(), &[]), 0)
                .is_ok(),
            "another app's goes in the next turn"
        );
        let view = scheduler.view(4.0);
        assert_eq!(
            (view.queued, view.oldest_age, view.lanes),
            (10, 4.0, vec![10, 0])
        );
    }

    /// Bulk mail held outside the queue (retries, another node's queue)
    /// does not make transactional mail wait: it would take its turn in
    /// the round robin, not go after all of it. Transactional mail held
    /// outside does, and so does everything for bulk mail.
    #[test]
    fn only_transactional_mail_held_outside_is_ahead_of_transactional_mail() {
        let shaping: ShapingConfig =
            "initial_rate = \"60/min\"\nheadroom = 1.0\nmax_queue_delay = \"1m\"\n"
                .parse()
                .unwrap();
        let mut scheduler: Scheduler<&str> = Scheduler::new(
            GatewayModel::new(&shaping, 0.0),
            vec![lane(AppClass::Transactional), lane(AppClass::Bulk)],
        );
        // Two minutes of bulk mail, then of transactional mail, at 1/s.
        let bulk = ClassCounts {
            messages: [0, 120],
            units: [0, 120],
        };
        let transactional = ClassCounts {
            messages: [120, 0],
            units: [120, 0],
        };
        assert!(scheduler.admit(0.0, 0, 1, (bulk, &[]), 1).is_ok());
        let deferral = scheduler.admit(0.0, 1, 1, (bulk, &[]), 2).unwrap_err();
        assert_eq!(deferral.reason, DeferReason::QueueDelay);
        let deferral = scheduler
            .admit(0.0, 0, 1, (transactional, &[]), 3)
            .unwrap_err();
        assert_eq!(deferral.reason, DeferReason::QueueDelay);
    }

    #[test]
    fn a_bulk_run_at_its_budget_lets_transactional_mail_out_of_turn() {
        let shaping: ShapingConfig =
            "initial_rate = \"100/s\"\nmax_rate = \"100/s\"\nburst = 100\n\
             min_rate = [\"10/min\", \"20/h\"]\nmax_queue_delay = \"5m\"\n"
                .parse()
                .unwrap();
        let mut scheduler: Scheduler<&str> = Scheduler::new(
            GatewayModel::new(&shaping, 0.0),
            vec![lane(AppClass::Bulk), lane(AppClass::Transactional)],
        );
        for _ in 0..100 {
            scheduler.push(1.0, 0, None, 1, "news");
        }
        let mut sent = Vec::new();
        let mut now = 1.0;
        while now < 600.0 {
            if now == 300.0 || now == 300.5 {
                scheduler.push(now, 1, None, 1, "reset");
            }
            if now == 200.0 {
                // The bulk run has used its share: transactional mail is
                // still admitted, whatever bulk mail waits for a retry, and
                // bulk mail is deferred for the hour.
                let bulk_retries = ClassCounts {
                    messages: [0, 500],
                    units: [0, 500],
                };
                assert!(scheduler.admit(now, 1, 1, (bulk_retries, &[]), 7).is_ok());
                let deferral = scheduler
                    .admit(now, 0, 1, (ClassCounts::default(), &[]), 8)
                    .unwrap_err();
                assert_eq!(deferral.reason, DeferReason::HourBudget);
            }
            loop {
                match scheduler.next(now) {
                    Release::Send { item, waited, .. } => sent.push((item, waited)),
                    Release::Save => {
                        let (_, reserve) = scheduler.snapshot(now, true);
                        scheduler.model_mut().saved(reserve);
                    }
                    Release::Wait(_) | Release::Idle => break,
                }
            }
            now += 0.5;
        }
        let news = sent.iter().filter(|(item, _)| *item == "news").count();
        // The hour floor is 20; bulk leaves a tenth (2) to the others.
        assert_eq!(news, 18, "{sent:?}");
        let resets: Vec<f64> = sent
            .iter()
            .filter(|(item, _)| *item == "reset")
            .map(|(_, waited)| *waited)
            .collect();
        assert_eq!(resets.len(), 2);
        assert!(resets.iter().all(|waited| *waited < 1.0), "{resets:?}");
        let view = scheduler.view(now);
        assert_eq!(view.model.budgets[0].sent, 20);
    }

    #[test]
    fn transactional_lanes_keep_their_round_robin_while_bulk_waits() {
        let shaping: ShapingConfig =
            "initial_rate = \"100/s\"\nmax_rate = \"100/s\"\nburst = 100\n\
             min_rate = [\"10/min\", \"100/h\"]\n"
                .parse()
                .unwrap();
        let lanes = vec![
            lane(AppClass::Bulk),
            lane(AppClass::Transactional),
            lane(AppClass::Transactional),
        ];
        let mut scheduler: Scheduler<&str> =
            Scheduler::new(GatewayModel::new(&shaping, 0.0), lanes);
        let release = |scheduler: &mut Scheduler<&'static str>, now: f64| loop {
            match scheduler.next(now) {
                Release::Save => {
                    let (_, reserve) = scheduler.snapshot(now, true);
                    scheduler.model_mut().saved(reserve);
                }
                other => return other,
            }
        };
        for _ in 0..200 {
            scheduler.push(1.0, 0, None, 1, "news");
        }
        let mut news = 0;
        while let Release::Send { .. } = release(&mut scheduler, 2.0) {
            news += 1;
        }
        assert_eq!(news, 90, "a tenth of the hour left to the others");
        for _ in 0..5 {
            scheduler.push(3.0, 1, None, 1, "report");
        }
        scheduler.push(3.0, 2, None, 1, "reset");
        let mut order = Vec::new();
        while let Release::Send { item, .. } = release(&mut scheduler, 4.0) {
            order.push(item);
        }
        assert_eq!(order.len(), 6, "{order:?}");
        assert!(
            order[..2].contains(&"reset"),
            "the second transactional app waits one turn at most: {order:?}"
        );
    }

    #[test]
    fn a_bulk_hold_from_the_shared_state_lets_transactional_mail_go_and_a_put_back_goes_first() {
        let shaping: ShapingConfig = "initial_rate = \"6000/min\"\nburst = 100\n"
            .parse()
            .unwrap();
        let mut scheduler: Scheduler<&str> = Scheduler::new(
            GatewayModel::new(&shaping, 0.0),
            vec![lane(AppClass::Bulk), lane(AppClass::Transactional)],
        );
        scheduler.push(10.0, 0, None, 1, "news-1");
        scheduler.push(10.0, 0, None, 1, "news-2");
        scheduler.push(10.0, 1, None, 1, "reset");
        // The shared state refused news-1: back first in its lane, bulk held.
        let Release::Send {
            item, lane, waited, ..
        } = scheduler.next(10.0)
        else {
            panic!("a release");
        };
        assert_eq!(item, "news-1");
        let counted = scheduler.model().counted(1);
        scheduler.put_back(10.0, (lane, None), waited, (1, counted), item);
        scheduler.model_mut().hold_bulk(40.0);
        let Release::Send { item, .. } = scheduler.next(10.0) else {
            panic!("the reset goes");
        };
        assert_eq!(item, "reset");
        assert!(matches!(scheduler.next(10.0), Release::Wait(wait) if (wait - 30.0).abs() < 1e-6));
        let Release::Send { item, .. } = scheduler.next(40.0) else {
            panic!("bulk after the hold");
        };
        assert_eq!(item, "news-1", "first again");
    }
}
