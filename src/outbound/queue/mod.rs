//! One gateway's in-memory delivery queue: the shaping scheduler (a fair
//! queue per app in front of the gateway's shaping model), messages waiting
//! for their retry time, and whether the gateway itself is paused after
//! failed connections.
//!
//! Only envelopes live here; bodies stay in the spool. The one exception is a
//! message that arrives while the queue is shorter than its worker pool: it
//! will be picked up at once, so it may carry its body along (up to
//! [`HOT_BODY_BYTES`] per gateway) and spare the worker a read back from disk.
//! Delivery workers take from the front only when the shaper lets a message
//! go; a message under the ceiling with an empty queue goes at once, with no
//! timer. A paused gateway hands out nothing until the pause ends, and then
//! exactly one message, the probe, until its connection attempt succeeds or
//! fails: an unreachable gateway costs one connection attempt per pause,
//! whatever the number of workers, and only the probe's failure lengthens the
//! pause (attempts that began before the pause are already accounted for).
//!
//! A long queue (an outage, budgets holding mail for days) is not held in
//! memory whole: past the gateway's `spool.active_limit` envelopes, a new
//! message that has never been tried is kept as a reference to its spool
//! record ([`Parked`]: queue id, record position, arrival time, body size;
//! 24 octets) in its place in its app's lane, and read back from the spool
//! when the shaper releases it, like Postfix's bounded active queue. The
//! fair queue, the budgets and admission see every message as before
//! (each entry keeps its lane and units), and counts and the oldest age
//! stay exact; only `queue list` reads parked envelopes, a page at a time.
//!
//! The shaper's time axis is Unix seconds, derived from tokio's clock (so the
//! queue also runs on tokio's paused clock in tests).
//!
//! In cluster mode (`cluster`) a message the local model lets go is then
//! proposed to the gateway's shared state, and goes only when that grants
//! it; a refusal puts it back first in its lane until the wait Redis named.
//! While the message is proposed it is out of the scheduler, so a guard puts
//! it back should the worker's wait be cancelled. When Redis is out of reach
//! the node runs on its share (`shaper::shared`) and keeps a ledger of what
//! it sends, added to the shared counts by the first heartbeat that gets
//! through; a heartbeat that finds a new epoch first rebuilds the shared
//! counts from this node's view. Every one of those decisions is the
//! cluster gate's (`shaper::gate`, which `simulate --nodes` runs too); the
//! queue holds the gate under its lock and talks to Redis without it.
//!
//! The rooms: here the types, the lock and the way a message goes in and
//! out (push, next, release, admission, the view); [`retry`] messages
//! waiting for their retry time; [`parking`] the envelopes a long queue
//! keeps only as references to the spool; [`health`] what the gateway says
//! of itself (failed connections and the probe, throttling, a used-up
//! quota), as events; [`cluster`] the cluster gate's driver on Redis;
//! [`admin`] the operator's hand (hold, list, retry, remove) and what moves
//! messages out whole (drain, expiry).

mod admin;
mod cluster;
mod health;
mod parking;
mod retry;
#[cfg(test)]
mod tests;

use crate::poison::LockRecovered;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Histogram;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::cluster::{ClusterError, ClusterView, GatewayLink};
use crate::config::units::Period;
use crate::shaper::gate::{Gate, Route, Writes};
use crate::shaper::shared::{NodesSeen, Proposal};
use crate::shaper::store::{Heartbeat, Reading};
use crate::shaper::{
    ClassCounts, Deferral, Due, GatewayModel, GatewayView, Lane, Projection, Release, SavedState,
    Scheduler, Taken, fingerprints,
};
use crate::spool::{Spool, StoredMessage};
use cluster::Shared;
pub use health::GatewayEvent;
pub use parking::{Parked, Parking};
use retry::Waiting;

/// Most body bytes one gateway's queue keeps in memory for hand-off.
pub const HOT_BODY_BYTES: usize = 8 << 20;

/// A queued message and how many delivery attempts it has had.
#[derive(Debug)]
pub struct Queued {
    pub message: StoredMessage,
    pub attempts: u32,
    /// The app lane (see `policy::Apps`).
    pub lane: usize,
    /// The receiver its recipients go to (an index into the gateway's
    /// receiver rules; `None`: one not budgeted). Mail is stored one
    /// message per receiver (`inbound::acceptance`), so it has one.
    pub receiver: Option<usize>,
    /// The body, when handed over with the message (see the module notes).
    pub body: Option<Vec<u8>>,
    /// The latest attempts and the gateway's replies (for `queue show`).
    pub history: Vec<Attempt>,
    /// Handed out as the probe of a paused gateway (see the module notes):
    /// its worker must report how the connection went.
    pub probe: bool,
}

/// A queued message as the scheduler holds it: whole, or parked (see the
/// module notes).
#[derive(Debug)]
pub enum Slot {
    Held(Box<Queued>),
    Parked(Parked),
}

/// A queued message as [`DeliveryQueue::visit`] shows it.
#[derive(Clone, Copy)]
pub enum Visited<'a> {
    Held(&'a Queued),
    Parked(&'a Parked),
}

impl<'a> Visited<'a> {
    /// The queue id.
    pub fn id(self) -> std::borrow::Cow<'a, str> {
        match self {
            Visited::Held(item) => std::borrow::Cow::Borrowed(item.message.id.as_str()),
            Visited::Parked(parked) => std::borrow::Cow::Owned(parked.id()),
        }
    }
}

impl Slot {
    fn visited(&self) -> Visited<'_> {
        match self {
            Slot::Held(item) => Visited::Held(item),
            Slot::Parked(parked) => Visited::Parked(parked),
        }
    }

    /// Whether this is message `id`.
    pub fn is(&self, id: &str) -> bool {
        match self {
            Slot::Held(item) => item.message.id == id,
            Slot::Parked(parked) => Parked::id_value(id) == Some(parked.id),
        }
    }

    /// The queue id.
    pub fn id(&self) -> std::borrow::Cow<'_, str> {
        self.visited().id()
    }

    /// Unix seconds the message was accepted.
    pub fn received_at(&self) -> u64 {
        match self {
            Slot::Held(item) => item.message.envelope.received_at,
            Slot::Parked(parked) => u64::from(parked.received_at),
        }
    }

    fn body_len(&self) -> u64 {
        match self {
            Slot::Held(item) => item.message.location.body_len,
            Slot::Parked(parked) => u64::from(parked.body_len),
        }
    }

    fn hot_bytes(&self) -> usize {
        match self {
            Slot::Held(item) => item.body.as_ref().map_or(0, Vec::len),
            Slot::Parked(_) => 0,
        }
    }
}

/// One delivery attempt of a message: when (Unix seconds), and what the
/// gateway said; `queue show` lists them.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: u64,
    pub reply: String,
}

impl Queued {
    /// A message not tried yet, in `lane`, to `receiver`, with its `body`
    /// if at hand.
    pub fn new(
        message: StoredMessage,
        (lane, receiver): (usize, Option<usize>),
        body: Option<Vec<u8>>,
    ) -> Queued {
        Queued {
            message,
            attempts: 0,
            lane,
            receiver,
            body,
            history: Vec::new(),
            probe: false,
        }
    }
}

/// Most attempts a queued message remembers.
pub const HISTORY_LENGTH: usize = 10;

/// A message taken out of a queue for a reload (see [`DeliveryQueue::drain`]).
pub enum Drained {
    /// With its retry time, if it waits for one.
    Held(Box<Queued>, Option<Instant>),
    Parked {
        parked: Parked,
        lane: usize,
        receiver: Option<usize>,
        units: u64,
    },
}

/// Where a queued message is, for the admin API.
pub enum Place {
    /// Waiting for the shaper or a worker.
    Ready,
    /// Not before this time (Unix seconds): its own retry time or the end
    /// of the gateway's pause, whichever is later.
    Retry(f64),
}

/// Maps tokio's clock onto Unix seconds for the shaper.
struct ShaperClock {
    start: Instant,
    start_unix: f64,
}

impl ShaperClock {
    fn new() -> ShaperClock {
        ShaperClock {
            start: Instant::now(),
            start_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
        }
    }

    fn at(&self, instant: Instant) -> f64 {
        self.start_unix + instant.saturating_duration_since(self.start).as_secs_f64()
    }
}

struct State {
    scheduler: Scheduler<Slot>,
    /// Parked entries in the scheduler (the rest are held whole).
    parked: usize,
    waiting: BinaryHeap<Waiting>,
    sequence: u64,
    /// Messages and cap units in `waiting`, per class.
    waiting_counts: ClassCounts,
    paused_until: Option<Instant>,
    /// When the current pause began: a failed attempt that started before
    /// it is the same outage, not news.
    paused_at: Option<Instant>,
    /// The probe after a pause is out, so no other message goes.
    probing: bool,
    connect_failures: u32,
    hot_bytes: usize,
    /// Body bytes of every queued message (ready and waiting).
    queued_bytes: u64,
    /// An operator's hold (`queue hold`): nothing is released until released.
    held: bool,
    /// Cluster mode: the shared state and how this node stands with it.
    shared: Option<Shared>,
}

/// A message out of the scheduler while the shared state decides: dropped
/// without [`InFlight::take`] (the worker's wait was cancelled, or Redis
/// refused), it goes back first in its lane.
struct InFlight<'q> {
    queue: &'q DeliveryQueue,
    item: Option<Slot>,
    lane: usize,
    receiver: Option<usize>,
    waited: f64,
    at: f64,
    units: u64,
    /// What the release counted in the model (the share may change before
    /// it is put back).
    counted: u64,
}

/// A message the shaper let go, as the scheduler held it, for a worker.
struct Released {
    slot: Slot,
    lane: usize,
    receiver: Option<usize>,
    units: u64,
    /// The probe of a paused gateway: its worker reports how the
    /// connection went.
    probe: bool,
}

/// What a worker waiting for a message does next.
enum Turn<'q> {
    /// Takes this one.
    Release(Released),
    /// Asks the shared state for this one first.
    Propose(Proposed<'q>),
    /// Waits for a wake-up, or until then.
    Wait(Option<Instant>),
}

/// A message out of the scheduler, and the send of it proposed to the
/// shared state (with the histogram of the time Redis takes to decide).
struct Proposed<'q> {
    in_flight: InFlight<'q>,
    proposal: Proposal,
    link: Arc<GatewayLink>,
    timer: Histogram,
}

impl InFlight<'_> {
    fn take(mut self) -> Slot {
        self.item.take().expect("taken once")
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            let mut state = self.queue.lock();
            if matches!(item, Slot::Parked(_)) {
                state.parked += 1;
            }
            state.scheduler.put_back(
                self.at,
                (self.lane, self.receiver),
                self.waited,
                (self.units, self.counted),
                item,
            );
        }
    }
}

impl State {
    /// `slot` was taken out of the scheduler for good (an operator's
    /// delete, expiry): its bytes and, parked, its count leave the queue.
    fn left_scheduler(&mut self, slot: &Slot) {
        self.hot_bytes -= slot.hot_bytes();
        self.queued_bytes -= slot.body_len();
        if matches!(slot, Slot::Parked(_)) {
            self.parked -= 1;
        }
    }
}

/// The queue of one gateway, shared by its delivery workers.
pub struct DeliveryQueue {
    gateway: String,
    /// The period the gateway's file writes its rates in: logs say rates
    /// the same way.
    rate_period: Period,
    clock: ShaperClock,
    state: Mutex<State>,
    wake: Notify,
    /// Poked when the scheduler needs the shaping state saved before it may
    /// send more (hard caps; see `GatewayModel::snapshot`).
    save_wanted: Arc<Notify>,
    /// Where parked messages come back from; `None` parks nothing.
    parking: Option<Parking>,
}

impl DeliveryQueue {
    /// A queue for `gateway` shaped by `model`, with the apps' `lanes`.
    #[cfg(test)]
    pub fn new(
        gateway: &str,
        model: impl FnOnce(f64) -> GatewayModel,
        lanes: Vec<Lane>,
        save_wanted: Arc<Notify>,
    ) -> DeliveryQueue {
        Self::shared(
            gateway,
            Period::Minute,
            model,
            lanes,
            save_wanted,
            None,
            None,
        )
    }

    /// A queue as [`DeliveryQueue::new`] whose logs write rates per
    /// `rate_period`, in cluster mode when `shared`
    /// gives the gateway's link, the nodes expected, and the histogram of
    /// Redis time per decision. Until the first heartbeat gets through,
    /// the node runs on its share of the expected nodes. With `parking`, a
    /// long queue parks envelopes (see the module notes).
    pub fn shared(
        gateway: &str,
        rate_period: Period,
        model: impl FnOnce(f64) -> GatewayModel,
        lanes: Vec<Lane>,
        save_wanted: Arc<Notify>,
        shared: Option<(Arc<GatewayLink>, u64, Histogram)>,
        parking: Option<Parking>,
    ) -> DeliveryQueue {
        let clock = ShaperClock::new();
        let start = clock.at(clock.start);
        let mut scheduler = Scheduler::new(model(start), lanes);
        let shared = shared.map(|(link, expected, decision_seconds)| Shared {
            link,
            gate: Gate::new(&mut scheduler, start, expected),
            decision_seconds,
        });
        DeliveryQueue {
            gateway: gateway.to_string(),
            rate_period,
            state: Mutex::new(State {
                scheduler,
                parked: 0,
                waiting: BinaryHeap::new(),
                waiting_counts: ClassCounts::default(),
                sequence: 0,
                paused_until: None,
                paused_at: None,
                probing: false,
                connect_failures: 0,
                hot_bytes: 0,
                queued_bytes: 0,
                held: false,
                shared,
            }),
            clock,
            wake: Notify::new(),
            save_wanted,
            parking,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock_recovered()
    }

    fn now(&self) -> f64 {
        self.clock.at(Instant::now())
    }

    /// Logs the ceiling changes the model made, with their cause, and the
    /// volume budgets that became full (once per episode).
    fn log_changes(&self, state: &mut State, detail: Option<&str>) {
        for reached in state.scheduler.model_mut().take_budget_events() {
            tracing::info!(
                gateway = %self.gateway,
                window = reached.horizon.label(),
                sent = reached.sent,
                allowance = reached.allowance,
                "volume budget reached; mail waits for room in the window"
            );
        }
        let period = self.rate_period;
        for change in state.scheduler.model_mut().take_changes() {
            tracing::info!(
                gateway = %self.gateway,
                from = %period.format(change.from),
                to = %period.format(change.to),
                cause = change.cause.as_str(),
                detail = detail.unwrap_or(""),
                "shaping ceiling changed"
            );
        }
    }

    /// Adds a message that may be delivered now; `arrival` counts it as new
    /// demand (not a recovered message). Its body is kept only while fewer
    /// than `workers` messages are queued and the byte budget allows.
    pub fn push(&self, item: Queued, arrival: bool, workers: usize) {
        self.insert(item, arrival, workers);
        self.wake.notify_one();
    }

    /// Adds a message recovered from the spool at start without waking a
    /// worker: a million of them would wake one a million times. The
    /// caller calls [`DeliveryQueue::wake_workers`] once they are all in.
    pub fn push_replayed(&self, item: Queued) {
        self.insert(item, false, 0);
    }

    /// Wakes the workers (after [`DeliveryQueue::push_replayed`]).
    pub fn wake_workers(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn insert(&self, mut item: Queued, arrival: bool, workers: usize) {
        item.probe = false;
        let mut state = self.lock();
        let now = self.now();
        if let Some(body) = &item.body {
            if state.scheduler.len() >= workers || state.hot_bytes + body.len() > HOT_BODY_BYTES {
                item.body = None;
            } else {
                state.hot_bytes += body.len();
            }
        }
        if arrival {
            let envelope = &item.message.envelope;
            state.scheduler.model_mut().accepted(now, || {
                fingerprints(
                    &envelope.sender,
                    envelope.recipients.iter().map(String::as_str),
                )
            });
        }
        state.queued_bytes += item.message.location.body_len;
        let units = state.scheduler.model().units(item.message.pending.len());
        let (lane, receiver) = (item.lane, item.receiver);
        let slot = self.slot(&mut state, item);
        state.scheduler.push(now, lane, receiver, units, slot);
    }

    /// Waits for the next message the shaper lets go; a parked one is read
    /// back from the spool first.
    pub async fn next(&self) -> Queued {
        loop {
            let Released {
                slot,
                lane,
                receiver,
                units,
                probe,
            } = self.release().await;
            let parked = match slot {
                Slot::Held(mut item) => {
                    item.probe = probe;
                    return *item;
                }
                Slot::Parked(parked) => parked,
            };
            match self.unpark(parked, (lane, receiver), units).await {
                Some(mut item) => {
                    item.probe = probe;
                    return item;
                }
                None if probe => self.probe_inconclusive(),
                None => {}
            }
        }
    }

    /// Waits for the next message the shaper lets go.
    async fn release(&self) -> Released {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = match self.turn() {
                Turn::Release(released) => return released,
                Turn::Propose(proposed) => {
                    if let Some(released) = self.propose(proposed).await {
                        return released;
                    }
                    continue;
                }
                Turn::Wait(until) => until,
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// What the queue's state lets a worker do now.
    fn turn(&self) -> Turn<'_> {
        let mut state = self.lock();
        let now = Instant::now();
        let unix_now = self.clock.at(now);
        state.promote_due(now, unix_now);
        let next_retry = state.waiting.peek().map(|first| first.due);
        let shared_wait = state
            .shared
            .as_ref()
            .and_then(|shared| shared.gate.waits_until(unix_now))
            .map(|until| now + Duration::from_secs_f64(until - unix_now));
        let undecided = state
            .shared
            .as_ref()
            .is_some_and(|shared| !shared.gate.decided());
        let until = match state.paused_until {
            _ if state.held => None,
            // The first heartbeat's verdict wakes the workers.
            _ if undecided => None,
            Some(until) if until > now => Some(until),
            // The probe's verdict wakes the others.
            _ if state.probing => None,
            _ if shared_wait.is_some() => {
                shared_wait.map(|until| next_retry.map_or(until, |retry| retry.min(until)))
            }
            _ => {
                state.paused_until = None;
                let release = state.scheduler.next(unix_now);
                self.log_changes(&mut state, None);
                match release {
                    Release::Send {
                        item,
                        lane,
                        receiver,
                        units,
                        waited,
                    } => {
                        return self.sent(
                            &mut state,
                            unix_now,
                            item,
                            (lane, receiver),
                            units,
                            waited,
                        );
                    }
                    Release::Wait(seconds) => {
                        let until = now + Duration::from_secs_f64(seconds);
                        Some(next_retry.map_or(until, |retry| retry.min(until)))
                    }
                    Release::Save => {
                        self.save_wanted.notify_one();
                        next_retry
                    }
                    Release::Idle => next_retry,
                }
            }
        };
        Turn::Wait(until)
    }

    /// A message the scheduler let go at `unix_now`: handed out, or, on the
    /// shared state, proposed to it first.
    fn sent(
        &self,
        state: &mut State,
        unix_now: f64,
        item: Slot,
        (lane, receiver): (usize, Option<usize>),
        units: u64,
        waited: f64,
    ) -> Turn<'_> {
        if matches!(item, Slot::Parked(_)) {
            state.parked -= 1;
        }
        let State {
            shared, scheduler, ..
        } = &mut *state;
        let Some(shared) = shared.as_mut() else {
            return Turn::Release(self.hand_out(state, item, (lane, receiver), units, waited));
        };
        match shared
            .gate
            .route(scheduler, unix_now, (lane, receiver), units)
        {
            Route::Propose(proposal) => Turn::Propose(Proposed {
                in_flight: InFlight {
                    queue: self,
                    item: Some(item),
                    lane,
                    receiver,
                    waited,
                    at: unix_now,
                    units,
                    counted: scheduler.model().counted(units),
                },
                proposal,
                link: shared.link.clone(),
                timer: shared.decision_seconds.clone(),
            }),
            Route::Release => {
                Turn::Release(self.hand_out(state, item, (lane, receiver), units, waited))
            }
        }
    }

    /// Hands `item` (of `lane`, counting `units`, released after `waited`
    /// seconds) to a worker; says whether it is the probe.
    fn hand_out(
        &self,
        state: &mut State,
        item: Slot,
        (lane, receiver): (usize, Option<usize>),
        units: u64,
        waited: f64,
    ) -> Released {
        state.hot_bytes -= item.hot_bytes();
        state.queued_bytes -= item.body_len();
        let probe = state.connect_failures > 0;
        if probe {
            state.probing = true;
        } else if !state.scheduler.is_empty() {
            // Let another worker take the next one.
            self.wake.notify_one();
        }
        if waited >= 1.0 {
            tracing::debug!(
                queue_id = %item.id(),
                gateway = %self.gateway,
                shaped_for = %format!("{waited:.1}s"),
                "released by the shaper"
            );
        }
        Released {
            slot: item,
            lane,
            receiver,
            units,
            probe,
        }
    }

    /// The shaper's time now (Unix seconds on the queue's clock).
    pub fn shaper_time(&self) -> f64 {
        self.now()
    }

    /// True while the gateway's shaping observes (`mode = "observe"`).
    pub fn observing(&self) -> bool {
        self.lock().scheduler.model().observing()
    }

    /// May a transaction of app `lane` with `recipients` recipients (the
    /// envelope's `fingerprint`) be accepted now? Messages waiting for a
    /// retry count as ahead of it, and in cluster mode the other nodes'
    /// queues: they need sending too (for transactional mail, their
    /// transactional part: see [`Scheduler::admit`]).
    pub fn admit(
        &self,
        lane: usize,
        receivers: &[Option<usize>],
        fingerprint: u64,
    ) -> Result<Projection, Deferral> {
        let mut state = self.lock();
        let now = self.now();
        let model = state.scheduler.model();
        let units = model.units(receivers.len());
        // The message leaves as one transaction per receiver: each part
        // counts its own recipients against its receiver.
        let mut parts: Vec<(usize, u64)> = Vec::new();
        for receiver in receivers.iter().flatten() {
            match parts.iter_mut().find(|(known, _)| known == receiver) {
                Some((_, recipients)) => *recipients += 1,
                None => parts.push((*receiver, 1)),
            }
        }
        for (_, units) in &mut parts {
            *units = model.units(*units as usize);
        }
        let mut outside = state.waiting_counts;
        if let Some(shared) = &state.shared {
            outside = outside.plus(shared.gate.queued_elsewhere());
        }
        state
            .scheduler
            .admit(now, lane, units, (outside, &parts), fingerprint)
    }

    /// The shaping model and the queue at this moment (messages waiting
    /// for a retry count in the depth, per app and in the oldest age), and
    /// the queued body bytes.
    ///
    /// The oldest age is from the message's arrival, not from when it last
    /// entered the scheduler (a retry coming due, a restart): an outage must
    /// show as ever older mail. Finding it looks at every queued envelope,
    /// which only a scrape or `/status` asks for.
    pub fn view(&self) -> (GatewayView, u64) {
        let mut state = self.lock();
        let now = self.now();
        let mut view = state.scheduler.view(now);
        view.queued += state.waiting.len();
        if let Some(last) = view.lanes.len().checked_sub(1) {
            for waiting in &state.waiting {
                view.lanes[waiting.item.lane.min(last)] += 1;
            }
        }
        // One pass over the envelopes: the oldest of all, the newest of
        // those waiting for the shaper.
        let (oldest, newest) = state
            .scheduler
            .iter()
            .map(Slot::received_at)
            .fold((u64::MAX, None), |(oldest, newest), at| {
                (oldest.min(at), newest.max(Some(at)))
            });
        let oldest = state
            .waiting
            .iter()
            .map(|waiting| waiting.item.message.envelope.received_at)
            .fold(oldest, u64::min);
        let age = |at: u64| (now - at as f64).max(0.0);
        view.oldest_age = if oldest == u64::MAX { 0.0 } else { age(oldest) };
        view.newest_age = newest.map_or(0.0, age);
        (view, state.queued_bytes)
    }

    /// The state to save, counting `reserve` cap units ahead, with the
    /// operator's hold.
    pub fn snapshot(&self, reserve: bool) -> (SavedState, u64) {
        let mut state = self.lock();
        let now = self.now();
        let (mut saved, reserve) = state.scheduler.snapshot(now, reserve);
        saved.held = state.held;
        if let Some(shared) = state.shared.as_ref() {
            saved.nodes_seen = shared.gate.seen();
        }
        (saved, reserve)
    }

    /// The snapshot taken with `reserve` is on disk.
    pub fn saved(&self, reserve: u64) {
        self.lock().scheduler.model_mut().saved(reserve);
        self.wake.notify_waiters();
    }

    /// Messages queued (ready and waiting).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.scheduler.len() + state.waiting.len()
    }
}
