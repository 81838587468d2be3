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
//! counts from this node's view.

use crate::poison::LockRecovered;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Histogram;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::cluster::{ClusterError, ClusterView, GatewayLink, Heartbeat, Reading};
use crate::config::AppClass;
use crate::shaper::shared::{Ledger, NodesSeen, Proposal, SharedFeedback, SharedLimits};
use crate::shaper::{
    ClassCounts, Deferral, Due, GatewayModel, GatewayView, Lane, Projection, Release, SavedState,
    Scheduler, WindowCounts, fingerprints,
};
use crate::spool::{Spool, StoredMessage};

/// Most body bytes one gateway's queue keeps in memory for hand-off.
pub const HOT_BODY_BYTES: usize = 8 << 20;

/// A queued message and how many delivery attempts it has had.
#[derive(Debug)]
pub struct Queued {
    pub message: StoredMessage,
    pub attempts: u32,
    /// The app lane (see `policy::Apps`).
    pub lane: usize,
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

/// A message kept only as a reference to its spool record: one never tried,
/// every recipient pending, so the record alone says all the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    /// The queue id's 16 hex digits (`spool::new_queue_id`).
    id: u64,
    segment: u32,
    offset: u32,
    received_at: u32,
    body_len: u32,
}

impl Parked {
    /// The parked form of `item`, when it has one: never tried, every
    /// recipient pending, an id and a record position that fit.
    fn of(item: &Queued) -> Option<Parked> {
        let message = &item.message;
        if item.attempts > 0
            || !item.history.is_empty()
            || message.pending.len() != message.envelope.recipients.len()
        {
            return None;
        }
        let id = Parked::id_value(&message.id)?;
        Some(Parked {
            id,
            segment: message.location.segment.try_into().ok()?,
            offset: message.location.offset.try_into().ok()?,
            received_at: message.envelope.received_at.try_into().ok()?,
            body_len: message.location.body_len.try_into().ok()?,
        })
    }

    fn id_text(id: u64) -> String {
        format!("{id:016X}")
    }

    /// The value of a queue id that [`Parked::id_text`] gives back as it
    /// is: 16 upper-case hex digits (what `spool::new_queue_id` makes).
    fn id_value(id: &str) -> Option<u64> {
        let canonical = id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        canonical
            .then(|| u64::from_str_radix(id, 16).ok())
            .flatten()
    }

    /// The queue id.
    pub fn id(&self) -> String {
        Parked::id_text(self.id)
    }

    pub fn segment(&self) -> u64 {
        u64::from(self.segment)
    }

    pub fn offset(&self) -> u64 {
        u64::from(self.offset)
    }
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

/// Where parked messages are read back from, and how many envelopes a
/// gateway's queue keeps in memory before it parks new ones.
pub struct Parking {
    pub spool: Spool,
    pub active_limit: usize,
}

/// One delivery attempt of a message: when (Unix seconds), and what the
/// gateway said; `queue show` lists them.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: u64,
    pub reply: String,
}

impl Queued {
    /// A message not tried yet, in `lane`, with its `body` if at hand.
    pub fn new(message: StoredMessage, lane: usize, body: Option<Vec<u8>>) -> Queued {
        Queued {
            message,
            attempts: 0,
            lane,
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

struct Waiting {
    due: Instant,
    sequence: u64,
    item: Queued,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    /// Reversed, so the max-heap yields the earliest due time first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.sequence).cmp(&(self.due, self.sequence))
    }
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

/// This gateway's shared state (cluster mode), as this node stands with it.
struct Shared {
    link: Arc<GatewayLink>,
    /// The latest heartbeat got through; otherwise this node runs on its
    /// share (of `share_of` nodes).
    connected: bool,
    /// The first heartbeat has answered or failed: until then nothing is
    /// released (neither on the shared state nor on a share not yet known).
    decided: bool,
    /// Proposals that failed in a row while heartbeats get through: past
    /// [`ACQUIRE_FAILURES`] the node runs on its share (never stuck).
    acquire_failures: u32,
    /// An operator's hold or release not yet in the shared state: readings
    /// do not override it until the heartbeat has written it.
    hold_pending: Option<bool>,
    /// Redis said to propose nothing before this.
    wait_until: Option<Instant>,
    /// Live nodes at the latest heartbeat (the configured expectation until
    /// one gets through).
    live: u64,
    expected: u64,
    /// The most live nodes seen lately (saved): never fewer are assumed.
    seen: NodesSeen,
    /// What the other nodes have queued, per class.
    queued_elsewhere: ClassCounts,
    /// What this node sent on its share, for the shared counts.
    ledger: Ledger,
    decision_seconds: Histogram,
}

/// Failed proposals in a row after which a node stops asking Redis and runs
/// on its share (a heartbeat that gets through brings it back).
const ACQUIRE_FAILURES: u32 = 3;

/// How long a node waits after a failed proposal before the next one.
const ACQUIRE_RETRY: Duration = Duration::from_secs(1);

/// What a reload carries from a gateway's old queue to its new one in
/// cluster mode: what was sent on the share and not yet reconciled, the
/// live nodes last seen, a hold not yet written.
pub struct SharedStanding {
    ledger: Ledger,
    live: u64,
    seen: NodesSeen,
    hold_pending: Option<bool>,
}

impl Shared {
    fn share_of(&self, now: f64) -> u64 {
        self.live.max(self.expected).max(self.seen.most_at(now))
    }
}

/// What a heartbeat publishes of this node.
struct Depth {
    /// Messages and units queued per class (retries waiting included).
    queued: ClassCounts,
    /// The busiest hour and day this node has seen.
    busiest: [u64; 2],
}

/// What a heartbeat writes to the shared state once it has heard it.
struct Writes {
    /// A new epoch's counts, feedback and hold, from this node's view.
    rebuild: Option<(WindowCounts, SharedFeedback, bool)>,
    /// What this node sent on its share since the last heartbeat, to add
    /// to the shared counts under `limits`.
    ledger: Ledger,
    limits: SharedLimits,
    /// An operator's hold or release not yet in the shared state.
    hold: Option<bool>,
}

/// A message out of the scheduler while the shared state decides: dropped
/// without [`InFlight::take`] (the worker's wait was cancelled, or Redis
/// refused), it goes back first in its lane.
struct InFlight<'q> {
    queue: &'q DeliveryQueue,
    item: Option<Slot>,
    lane: usize,
    waited: f64,
    at: f64,
    units: u64,
    /// What the release counted in the model (the share may change before
    /// it is put back).
    counted: u64,
}

/// What a worker waiting for a message does next.
enum Turn<'q> {
    /// Takes this one.
    Release((Slot, usize, u64, bool)),
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
                self.lane,
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

    fn promote_due(&mut self, now: Instant, unix_now: f64) {
        while self.waiting.peek().is_some_and(|first| first.due <= now) {
            if let Some(waiting) = self.waiting.pop() {
                let units = self.scheduler.units(waiting.item.message.pending.len());
                let class = self.scheduler.class(waiting.item.lane);
                self.waiting_counts.remove(class, units);
                let lane = waiting.item.lane;
                self.scheduler
                    .push(unix_now, lane, units, Slot::Held(Box::new(waiting.item)));
            }
        }
    }
}

/// The queue of one gateway, shared by its delivery workers.
pub struct DeliveryQueue {
    gateway: String,
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
        Self::shared(gateway, model, lanes, save_wanted, None, None)
    }

    /// A queue as [`DeliveryQueue::new`], in cluster mode when `shared`
    /// gives the gateway's link, the nodes expected, and the histogram of
    /// Redis time per decision. Until the first heartbeat gets through,
    /// the node runs on its share of the expected nodes. With `parking`, a
    /// long queue parks envelopes (see the module notes).
    pub fn shared(
        gateway: &str,
        model: impl FnOnce(f64) -> GatewayModel,
        lanes: Vec<Lane>,
        save_wanted: Arc<Notify>,
        shared: Option<(Arc<GatewayLink>, u64, Histogram)>,
        parking: Option<Parking>,
    ) -> DeliveryQueue {
        let clock = ShaperClock::new();
        let start = clock.at(clock.start);
        let mut scheduler = Scheduler::new(model(start), lanes);
        let shared = shared.map(|(link, expected, decision_seconds)| {
            scheduler.set_share(start, expected);
            Shared {
                link,
                connected: false,
                decided: false,
                acquire_failures: 0,
                hold_pending: None,
                wait_until: None,
                live: expected,
                expected,
                seen: NodesSeen::default(),
                queued_elsewhere: ClassCounts::default(),
                ledger: Ledger::default(),
                decision_seconds,
            }
        });
        DeliveryQueue {
            gateway: gateway.to_string(),
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
        for reached in state.scheduler.take_budget_events() {
            tracing::info!(
                gateway = %self.gateway,
                window = reached.horizon.label(),
                sent = reached.sent,
                allowance = reached.allowance,
                "volume budget reached; mail waits for room in the window"
            );
        }
        let period = state.scheduler.rate_period();
        for change in state.scheduler.take_changes() {
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
            state.scheduler.accepted(now, || {
                fingerprints(
                    &envelope.sender,
                    envelope.recipients.iter().map(String::as_str),
                )
            });
        }
        state.queued_bytes += item.message.location.body_len;
        let units = state.scheduler.units(item.message.pending.len());
        let lane = item.lane;
        let slot = self.slot(&mut state, item);
        state.scheduler.push(now, lane, units, slot);
    }

    /// `item` held whole, or parked when the queue holds its
    /// `active_limit` already (see the module notes).
    fn slot(&self, state: &mut State, item: Queued) -> Slot {
        let held = state.scheduler.len() - state.parked;
        let parked = self
            .parking
            .as_ref()
            .filter(|parking| held >= parking.active_limit)
            .and_then(|_| Parked::of(&item));
        match parked {
            Some(parked) => {
                state.hot_bytes -= item.body.as_ref().map_or(0, Vec::len);
                state.parked += 1;
                Slot::Parked(parked)
            }
            None => Slot::Held(Box::new(item)),
        }
    }

    /// Puts a parked message the scheduler released back at the end of its
    /// `lane` (its record could not be read just now).
    fn park_again(&self, parked: Parked, lane: usize, units: u64) {
        let mut state = self.lock();
        let now = self.now();
        state.queued_bytes += u64::from(parked.body_len);
        state.parked += 1;
        state.scheduler.push(now, lane, units, Slot::Parked(parked));
    }

    /// Pushes parked messages moved from another queue (a reload), each in
    /// its lane with its units.
    pub fn push_parked(&self, parked: Parked, lane: usize, units: u64) {
        self.park_again(parked, lane, units);
        self.wake.notify_one();
    }

    /// Holds a message back until `due` (without its body).
    pub fn retry_at(&self, mut item: Queued, due: Instant) {
        item.body = None;
        item.probe = false;
        let mut state = self.lock();
        state.queued_bytes += item.message.location.body_len;
        state.sequence += 1;
        let class = state.scheduler.class(item.lane);
        let units = state.scheduler.units(item.message.pending.len());
        state.waiting_counts.add(class, units);
        let sequence = state.sequence;
        state.waiting.push(Waiting {
            due,
            sequence,
            item,
        });
        drop(state);
        self.wake.notify_one();
    }

    /// Waits for the next message the shaper lets go; a parked one is read
    /// back from the spool first.
    pub async fn next(&self) -> Queued {
        loop {
            let (slot, lane, units, probe) = self.release().await;
            let parked = match slot {
                Slot::Held(mut item) => {
                    item.probe = probe;
                    return *item;
                }
                Slot::Parked(parked) => parked,
            };
            match self.unpark(parked, lane, units).await {
                Some(mut item) => {
                    item.probe = probe;
                    return item;
                }
                None if probe => self.probe_inconclusive(),
                None => {}
            }
        }
    }

    /// A parked message taken out of the scheduler (its turn came, or it
    /// expired), read back from the spool with its body. A damaged record
    /// cannot be delivered (recovery skips it too); one that cannot be
    /// read now goes back to the end of its lane. Either way, logged.
    pub async fn unpark(&self, parked: Parked, lane: usize, units: u64) -> Option<Queued> {
        let Some(parking) = &self.parking else {
            unreachable!("parked only with a spool to read back from");
        };
        match parking
            .spool
            .read_message(parked.segment(), parked.offset())
            .await
        {
            Ok((message, body)) => Some(Queued::new(message, lane, Some(body))),
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                tracing::error!(queue_id = %parked.id(), gateway = %self.gateway, %error, "a queued message's spool record is damaged; it cannot be delivered");
                None
            }
            Err(error) => {
                tracing::error!(queue_id = %parked.id(), gateway = %self.gateway, %error, "cannot read a queued message back from the spool; it goes to the end of its lane");
                self.park_again(parked, lane, units);
                None
            }
        }
    }

    /// Waits for the next message the shaper lets go, as the scheduler
    /// holds it, with its lane and units and whether it is the probe of a
    /// paused gateway.
    async fn release(&self) -> (Slot, usize, u64, bool) {
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
            .and_then(|shared| shared.wait_until)
            .filter(|until| *until > now);
        let undecided = state.shared.as_ref().is_some_and(|shared| !shared.decided);
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
                        units,
                        waited,
                    } => return self.sent(&mut state, unix_now, item, lane, units, waited),
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
        lane: usize,
        units: u64,
        waited: f64,
    ) -> Turn<'_> {
        if matches!(item, Slot::Parked(_)) {
            state.parked -= 1;
        }
        let class = state.scheduler.class(lane);
        match state.shared.as_mut() {
            Some(shared) if shared.connected => {
                let link = shared.link.clone();
                let timer = shared.decision_seconds.clone();
                let limits = state.scheduler.shared_limits(unix_now);
                Turn::Propose(Proposed {
                    in_flight: InFlight {
                        queue: self,
                        item: Some(item),
                        lane,
                        waited,
                        at: unix_now,
                        units,
                        counted: state.scheduler.counted(units),
                    },
                    proposal: Proposal {
                        units,
                        class,
                        limits,
                    },
                    link,
                    timer,
                })
            }
            shared => {
                if let Some(shared) = shared {
                    shared.ledger.add(unix_now, units, class);
                }
                Turn::Release(self.hand_out(state, item, lane, units, waited))
            }
        }
    }

    /// Asks the shared state for a send of `proposed`: the message when
    /// granted, `None` when it went back to its lane.
    async fn propose(&self, proposed: Proposed<'_>) -> Option<(Slot, usize, u64, bool)> {
        let Proposed {
            in_flight,
            proposal,
            link,
            timer,
        } = proposed;
        let started = std::time::Instant::now();
        let verdict = link.acquire(&proposal).await;
        timer.observe(started.elapsed().as_secs_f64());
        match verdict {
            Ok(verdict) if verdict.granted => {
                let mut state = self.lock();
                if let Some(shared) = state.shared.as_mut() {
                    shared.acquire_failures = 0;
                }
                self.absorb(&mut state, &verdict.reading);
                let (waited, lane, units) = (in_flight.waited, in_flight.lane, in_flight.units);
                let item = in_flight.take();
                Some(self.hand_out(&mut state, item, lane, units, waited))
            }
            Ok(verdict) => {
                drop(in_flight);
                let mut state = self.lock();
                self.absorb(&mut state, &verdict.reading);
                if proposal.class == AppClass::Bulk {
                    // Bulk waits; the transactional lanes go on.
                    let until = self.now() + verdict.wait;
                    state.scheduler.hold_bulk(until);
                    self.wake.notify_one();
                } else if let Some(shared) = state.shared.as_mut() {
                    shared.wait_until =
                        Some(Instant::now() + Duration::from_secs_f64(verdict.wait));
                }
                if let Some(shared) = state.shared.as_mut() {
                    shared.acquire_failures = 0;
                }
                tracing::trace!(gateway = %self.gateway, reason = %verdict.reason, wait = verdict.wait, "the shared state holds the next send");
                None
            }
            Err(error) => {
                // Redis may have granted it and answered late:
                // proposed again, it is counted twice there, which
                // only holds back more. One slow answer is not an
                // outage; the heartbeats decide that.
                drop(in_flight);
                let failures = {
                    let mut state = self.lock();
                    state.shared.as_mut().map_or(0, |shared| {
                        shared.acquire_failures += 1;
                        shared.wait_until = Some(Instant::now() + ACQUIRE_RETRY);
                        shared.acquire_failures
                    })
                };
                tracing::debug!(gateway = %self.gateway, %error, failures, "a proposal to the shared state failed");
                if failures >= ACQUIRE_FAILURES {
                    self.lost(&error);
                }
                None
            }
        }
    }

    /// Hands `item` (of `lane`, counting `units`, released after `waited`
    /// seconds) to a worker; says whether it is the probe.
    fn hand_out(
        &self,
        state: &mut State,
        item: Slot,
        lane: usize,
        units: u64,
        waited: f64,
    ) -> (Slot, usize, u64, bool) {
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
        (item, lane, units, probe)
    }

    /// Takes in what a reply of the shared state says: the feedback, what
    /// the others sent, an operator's hold on any node.
    fn absorb(&self, state: &mut State, reading: &Reading) {
        let now = self.now();
        state.scheduler.shared_feedback(now, &reading.feedback);
        state.scheduler.sent_elsewhere(now, &reading.elsewhere);
        let pending = state.shared.as_ref().and_then(|shared| shared.hold_pending);
        if pending.is_none() && state.held != reading.held {
            state.held = reading.held;
            self.wake.notify_waiters();
        }
        self.log_changes(state, Some("shared state"));
    }

    /// Redis could not be reached: run on this node's share (logged once
    /// per change).
    fn lost(&self, error: &ClusterError) {
        let mut state = self.lock();
        let now = self.now();
        let State {
            shared, scheduler, ..
        } = &mut *state;
        let Some(shared) = shared.as_mut() else {
            return;
        };
        // Logged once per change: from the shared state, or the first verdict.
        let change = shared.connected || !shared.decided;
        shared.connected = false;
        shared.decided = true;
        shared.wait_until = None;
        scheduler.set_share(now, shared.share_of(now));
        if change {
            tracing::warn!(
                gateway = %self.gateway,
                %error,
                share_of = shared.share_of(now),
                "cluster state out of reach; this node sends its share of the gateway's limits until it is back"
            );
        }
        self.log_changes(&mut state, None);
        drop(state);
        self.wake.notify_waiters();
    }

    /// One heartbeat (cluster mode; nothing otherwise): publishes this
    /// node's queue depth, hears the live nodes and what they queued; on
    /// a new epoch rebuilds the shared counts from this node's view; adds
    /// what this node sent on its share; and if all that got through,
    /// runs on the shared state again.
    pub async fn heartbeat(&self) {
        let Some((link, depth)) = self.depth() else {
            return;
        };
        let beat = match link.heartbeat(depth.queued, depth.busiest).await {
            Ok(beat) => beat,
            Err(error) => return self.lost(&error),
        };
        let Some(writes) = self.hear(&link, &beat) else {
            return;
        };
        if let Err(error) = self.write(&link, &writes).await {
            return self.lost(&error);
        }
        self.reached(&link, &writes);
    }

    /// What a heartbeat publishes, and the link to publish it on (cluster
    /// mode).
    fn depth(&self) -> Option<(Arc<GatewayLink>, Depth)> {
        let mut state = self.lock();
        let now = self.now();
        let busiest = state.scheduler.busiest(now).map(|units| units.unwrap_or(0));
        let shared = state.shared.as_ref()?;
        let depth = Depth {
            queued: state.scheduler.queued().plus(state.waiting_counts),
            busiest,
        };
        Some((shared.link.clone(), depth))
    }

    /// Takes in a heartbeat's answer, and takes out what the heartbeat is
    /// to write back.
    fn hear(&self, link: &GatewayLink, beat: &Heartbeat) -> Option<Writes> {
        let mut state = self.lock();
        self.absorb(&mut state, &beat.reading);
        let now = self.now();
        state.scheduler.learn_busiest(now, beat.busiest_elsewhere);
        let held = state.held;
        // A new epoch seen by any reply (a proposal's too) is rebuilt
        // here, until a rebuild gets through.
        let rebuild = link.rebuild_pending().then(|| {
            let view = state.scheduler.view(now).model;
            let feedback = SharedFeedback {
                penalty: view.penalty,
                pause_left: view.paused_for,
            };
            (state.scheduler.window_counts(now), feedback, held)
        });
        let limits = state.scheduler.shared_limits(now);
        let shared = state.shared.as_mut()?;
        shared.live = beat.live;
        shared.seen.observe(beat.live, now);
        shared.queued_elsewhere = beat.queued_elsewhere;
        shared.ledger.forget_before(now);
        Some(Writes {
            rebuild,
            ledger: std::mem::take(&mut shared.ledger),
            limits,
            hold: shared.hold_pending,
        })
    }

    /// Writes what a heartbeat heard was due, each part only once the one
    /// before got through.
    async fn write(&self, link: &GatewayLink, writes: &Writes) -> Result<(), ClusterError> {
        let mut result = Ok(());
        if let Some((counts, feedback, held)) = &writes.rebuild {
            result = link.rebuild(counts, feedback, *held).await.map(drop);
            if result.is_ok() {
                link.rebuilt();
            }
        }
        let mut reconciled = false;
        if result.is_ok() && !writes.ledger.is_empty() {
            result = link
                .reconcile(&writes.limits, &writes.ledger)
                .await
                .map(drop);
            reconciled = result.is_ok();
        }
        if let (Ok(()), Some(held)) = (&result, writes.hold) {
            result = link.hold(held).await.map(drop);
            if result.is_ok() {
                self.hold_written(held);
            }
        }
        if result.is_err() && !reconciled {
            self.keep_unreconciled(&writes.ledger);
        }
        result
    }

    /// An operator's `held` is in the shared state: readings may override
    /// it again, unless the operator changed it since.
    fn hold_written(&self, held: bool) {
        let mut state = self.lock();
        if let Some(shared) = state.shared.as_mut()
            && shared.hold_pending == Some(held)
        {
            shared.hold_pending = None;
        }
    }

    /// Puts back what a heartbeat could not add to the shared counts, for
    /// the next heartbeat.
    fn keep_unreconciled(&self, ledger: &Ledger) {
        let mut state = self.lock();
        if let Some(shared) = state.shared.as_mut() {
            for (minute, counts) in ledger.minutes() {
                shared.ledger.add_minute(minute, counts);
            }
        }
    }

    /// A heartbeat got through with all it had to write: runs on the shared
    /// state again (logged once per change).
    fn reached(&self, link: &GatewayLink, writes: &Writes) {
        let mut state = self.lock();
        let now = self.now();
        let State {
            shared, scheduler, ..
        } = &mut *state;
        let Some(shared) = shared.as_mut() else {
            return;
        };
        shared.acquire_failures = 0;
        if !shared.connected {
            shared.connected = true;
            shared.decided = true;
            scheduler.set_share(now, 1);
            tracing::info!(
                gateway = %self.gateway,
                node = %link.node(),
                nodes = shared.live,
                rebuilt = writes.rebuild.is_some(),
                reconciled_messages = writes.ledger.total().messages,
                "cluster state reached; this node shares the gateway's limits with the others"
            );
            self.log_changes(&mut state, None);
            drop(state);
            self.wake.notify_waiters();
        }
    }

    /// Takes out what a reload carries over to the gateway's next queue
    /// (cluster mode), with the local hold.
    pub fn take_standing(&self) -> (bool, Option<SharedStanding>) {
        let mut state = self.lock();
        let held = state.held;
        let standing = state.shared.as_mut().map(|shared| SharedStanding {
            ledger: std::mem::take(&mut shared.ledger),
            live: shared.live,
            seen: shared.seen,
            hold_pending: shared.hold_pending,
        });
        (held, standing)
    }

    /// Carries on from the old queue's standing (see
    /// [`DeliveryQueue::take_standing`]): its hold, as it was (not a new
    /// operator's word for the other nodes), its ledger and live count.
    pub fn carry_standing(&self, (held, standing): (bool, Option<SharedStanding>)) {
        let mut state = self.lock();
        state.held = held;
        if let (Some(shared), Some(standing)) = (state.shared.as_mut(), standing) {
            for (minute, counts) in standing.ledger.minutes() {
                shared.ledger.add_minute(minute, counts);
            }
            shared.live = standing.live;
            shared.seen = standing.seen;
            shared.hold_pending = standing.hold_pending;
        }
        drop(state);
        self.wake.notify_waiters();
    }

    /// Cluster mode: the most nodes seen lately, as saved before a
    /// restart; never fewer are assumed while the shared state is out of
    /// reach.
    pub fn restore_nodes_seen(&self, seen: NodesSeen) {
        if let Some(shared) = self.lock().shared.as_mut() {
            shared.seen = seen;
        }
    }

    /// How this node stands with the shared state (cluster mode).
    pub fn cluster_view(&self) -> Option<ClusterView> {
        let state = self.lock();
        state.shared.as_ref().map(|shared| ClusterView {
            connected: shared.connected,
            nodes: shared.live,
            share_of: shared.share_of(self.now()),
        })
    }

    /// A connection attempt begun at `started` failed. Unless a pause began
    /// since (this attempt was under way when another one failed), the
    /// gateway pauses for `pause(failures so far)`, which is returned.
    pub fn connect_failed(
        &self,
        started: Instant,
        pause: impl Fn(u32) -> Duration,
    ) -> Option<Duration> {
        let mut state = self.lock();
        if state.paused_at.is_some_and(|at| at >= started) {
            return None;
        }
        let now = Instant::now();
        state.connect_failures = state.connect_failures.saturating_add(1);
        let pause = pause(state.connect_failures);
        state.paused_at = Some(now);
        state.paused_until = Some(now + pause);
        state.probing = false;
        Some(pause)
    }

    /// A connection succeeded (or a probe went through a connection already
    /// open): the gateway is up again.
    pub fn connected(&self) {
        let mut state = self.lock();
        state.probing = false;
        if state.connect_failures > 0 {
            state.connect_failures = 0;
            state.paused_until = None;
            state.paused_at = None;
            drop(state);
            self.wake.notify_waiters();
        }
    }

    /// The probe ended without saying whether the gateway is reachable (its
    /// body could not be read, or its transaction failed on a connection
    /// already open): the next message probes instead.
    pub fn probe_inconclusive(&self) {
        self.lock().probing = false;
        self.wake.notify_one();
    }

    /// The gateway answered with a throttling reply (`reply`, for the log).
    /// Returns true when it cut the ceiling (a new episode).
    pub fn throttled(&self, reply: &str) -> bool {
        let mut state = self.lock();
        let now = self.now();
        let cut = state.scheduler.throttled(now);
        self.log_changes(&mut state, Some(reply));
        // Every node pauses: the others hear it at their next decision.
        if cut {
            let backoff = state.scheduler.backoff();
            self.tell_other_nodes(&state, "about the throttling", move |link| async move {
                link.throttled(backoff).await
            });
        }
        cut
    }

    /// Cluster mode, while the shared state is reached: `call` tells the
    /// other nodes, in the background (the lock is not held across Redis);
    /// a failure is logged, saying what was not told.
    fn tell_other_nodes<F, Fut>(&self, state: &State, what: &'static str, call: F)
    where
        F: FnOnce(Arc<GatewayLink>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Reading, ClusterError>> + Send + 'static,
    {
        let Some(shared) = state.shared.as_ref().filter(|shared| shared.connected) else {
            return;
        };
        let link = shared.link.clone();
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            if let Err(error) = call(link).await {
                tracing::warn!(%gateway, %error, "could not tell the other nodes {what}");
            }
        });
    }

    /// The gateway accepted mail: a throttling episode whose pause is over
    /// ends, and the ceiling starts climbing back.
    pub fn gateway_accepted(&self) {
        let mut state = self.lock();
        let now = self.now();
        state.scheduler.gateway_accepted(now);
    }

    /// The gateway's quota is used up: hold sending (see the model).
    /// Returns the hold.
    pub fn quota_exhausted(&self) -> Duration {
        let mut state = self.lock();
        let now = self.now();
        let hold = state.scheduler.quota_exhausted(now);
        // The quota is the gateway's: every node rests.
        self.tell_other_nodes(
            &state,
            "to rest for the used-up quota",
            move |link| async move { link.pause(hold).await },
        );
        Duration::from_secs_f64(hold)
    }

    /// Seconds left of a pause the gateway asked for (throttling, quota);
    /// `retry` does not end it, [`DeliveryQueue::end_pause`] does.
    pub fn pause_left(&self) -> f64 {
        let state = self.lock();
        state.scheduler.pause_left(self.now())
    }

    /// An operator ends the gateway's throttling or quota pause on purpose
    /// (on every node, in cluster mode); returns the seconds it had left.
    pub fn end_pause(&self) -> f64 {
        let mut state = self.lock();
        let now = self.now();
        let left = state.scheduler.end_pause(now);
        self.tell_other_nodes(&state, "to end the pause", |link| async move {
            link.end_pause().await
        });
        drop(state);
        self.wake.notify_waiters();
        left
    }

    /// May a transaction of app `lane` with `recipients` recipients (the
    /// envelope's `fingerprint`) be accepted now? Messages waiting for a
    /// retry count as ahead of it, and in cluster mode the other nodes'
    /// queues: they need sending too (for transactional mail, their
    /// transactional part: see [`Scheduler::admit`]).
    pub fn admit(
        &self,
        lane: usize,
        recipients: usize,
        fingerprint: u64,
    ) -> Result<Projection, Deferral> {
        let mut state = self.lock();
        let now = self.now();
        let units = state.scheduler.units(recipients);
        let mut outside = state.waiting_counts;
        if let Some(shared) = &state.shared {
            outside = outside.plus(shared.queued_elsewhere);
        }
        state
            .scheduler
            .admit(now, lane, units, outside, fingerprint)
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

    /// Queued messages kept as a reference to their spool record only.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Holds (`true`) or releases the queue: while held, workers take
    /// nothing; mail is still accepted and queued.
    pub fn hold(&self, held: bool) {
        let mut state = self.lock();
        state.held = held;
        // Every node holds: the next heartbeat writes it to the shared
        // state (kept until it gets through, Redis down or not).
        if let Some(shared) = state.shared.as_mut() {
            shared.hold_pending = Some(held);
        }
        drop(state);
        // On disk soon, with the shaping state: a hold outlasts a restart.
        self.save_wanted.notify_one();
        self.wake.notify_waiters();
    }

    /// Whether an operator holds the queue.
    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    /// Calls `visit` with every queued message and when it may next be
    /// attempted, ready ones first (no order within), then retries by due
    /// time.
    pub fn visit(&self, mut visit: impl FnMut(Visited<'_>, Place)) {
        let state = self.lock();
        let now = Instant::now();
        let paused_until = state.paused_until.filter(|until| *until > now);
        for item in state.scheduler.iter() {
            let place =
                paused_until.map_or(Place::Ready, |until| Place::Retry(self.clock.at(until)));
            visit(item.visited(), place);
        }
        let mut waiting: Vec<&Waiting> = state.waiting.iter().collect();
        waiting.sort_by_key(|waiting| waiting.due);
        for waiting in waiting {
            let due = paused_until.map_or(waiting.due, |until| until.max(waiting.due));
            visit(
                Visited::Held(&waiting.item),
                Place::Retry(self.clock.at(due)),
            );
        }
    }

    /// Makes the next attempt of message `id` (or of every message) now:
    /// its retry falls due, and a pause of the gateway ends so that one
    /// probe goes at once. Returns how many were to go later.
    pub fn retry_now(&self, id: Option<&str>) -> usize {
        let mut state = self.lock();
        let now = Instant::now();
        let paused = state.paused_until.is_some_and(|until| until > now);
        let matches = |item: &Queued| id.is_none_or(|id| item.message.id == id);
        let mut moved = if paused {
            state
                .scheduler
                .iter()
                .filter(|slot| id.is_none_or(|id| slot.is(id)))
                .count()
        } else {
            0
        };
        let waiting = std::mem::take(&mut state.waiting);
        state.waiting = waiting
            .into_iter()
            .map(|mut waiting| {
                if matches(&waiting.item) && (paused || waiting.due > now) {
                    waiting.due = waiting.due.min(now);
                    moved += 1;
                }
                waiting
            })
            .collect();
        if paused && moved > 0 {
            state.paused_until = None;
            tracing::info!(
                gateway = %self.gateway,
                failures = state.connect_failures,
                "operator retry ends the gateway's pause; probing it now"
            );
        }
        drop(state);
        self.wake.notify_one();
        moved
    }

    /// Takes every message out (a reload moves them to the new queue), with
    /// the retry time of those waiting for one; parked ones stay parked.
    pub fn drain(&self) -> Vec<Drained> {
        let mut state = self.lock();
        let mut items = Vec::with_capacity(state.scheduler.len() + state.waiting.len());
        while let Some((lane, units, slot)) = state.scheduler.take(|_| true) {
            items.push(match slot {
                Slot::Held(item) => Drained::Held(item, None),
                Slot::Parked(parked) => Drained::Parked {
                    parked,
                    lane,
                    units,
                },
            });
        }
        for waiting in std::mem::take(&mut state.waiting) {
            items.push(Drained::Held(Box::new(waiting.item), Some(waiting.due)));
        }
        state.parked = 0;
        state.waiting_counts = ClassCounts::default();
        state.queued_bytes = 0;
        state.hot_bytes = 0;
        items
    }

    /// Takes out the messages never tried that have waited for the shaper
    /// since their arrival for `lifetime(lane)` seconds or more, at most
    /// `limit` (see `held`), with their lanes and units. Messages tried
    /// before are not among them: their next attempt settles them with the
    /// gateway's last word.
    pub fn take_expired(
        &self,
        limit: usize,
        lifetime: impl Fn(usize) -> u64,
    ) -> Vec<(Slot, usize, u64)> {
        let mut state = self.lock();
        let now = self.now().max(0.0) as u64;
        let taken = state.scheduler.take_due(limit, |lane, slot: &Slot| {
            if slot.received_at().saturating_add(lifetime(lane)) > now {
                return Due::Stop;
            }
            match slot {
                Slot::Held(item) if item.attempts > 0 => Due::Skip,
                _ => Due::Take,
            }
        });
        for (_, _, slot) in &taken {
            state.left_scheduler(slot);
        }
        taken
            .into_iter()
            .map(|(lane, units, slot)| (slot, lane, units))
            .collect()
    }

    /// The messages never tried, still waiting for the shaper, that arrived
    /// in `arrived(lane)` (Unix seconds, both ends included) for the lanes
    /// that have such a window: the delay notices due (see the worker's
    /// held-mail sweep). Each is the message when held whole, else its
    /// parked reference (to be read back).
    pub fn arrived_between(
        &self,
        arrived: impl Fn(usize) -> Option<(u64, u64)>,
    ) -> Vec<(usize, Result<StoredMessage, Parked>)> {
        let state = self.lock();
        let mut found = Vec::new();
        for lane in 0..state.scheduler.lanes() {
            let Some((from, until)) = arrived(lane) else {
                continue;
            };
            for slot in state.scheduler.lane_items(lane) {
                let at = slot.received_at();
                if at < from || at > until {
                    continue;
                }
                match slot {
                    Slot::Held(item) if item.attempts == 0 => {
                        found.push((lane, Ok(item.message.clone())));
                    }
                    Slot::Held(_) => {}
                    Slot::Parked(parked) => found.push((lane, Err(*parked))),
                }
            }
        }
        found
    }

    /// Takes message `id` out of the queue (an operator deleting it), with
    /// its lane and units.
    pub fn remove(&self, id: &str) -> Option<(Slot, usize, u64)> {
        let mut state = self.lock();
        let item = match state.scheduler.take(|slot| slot.is(id)) {
            Some((lane, units, slot)) => {
                state.left_scheduler(&slot);
                (slot, lane, units)
            }
            None => {
                let waiting = std::mem::take(&mut state.waiting);
                let (found, kept): (Vec<Waiting>, Vec<Waiting>) = waiting
                    .into_iter()
                    .partition(|waiting| waiting.item.message.id == id);
                state.waiting = kept.into_iter().collect();
                let item = found.into_iter().next()?.item;
                let class = state.scheduler.class(item.lane);
                let units = state.scheduler.units(item.message.pending.len());
                state.waiting_counts.remove(class, units);
                let lane = item.lane;
                state.queued_bytes -= item.message.location.body_len;
                (Slot::Held(Box::new(item)), lane, units)
            }
        };
        Some(item)
    }

    /// The state to save, counting `reserve` cap units ahead, with the
    /// operator's hold.
    pub fn snapshot(&self, reserve: bool) -> (SavedState, u64) {
        let mut state = self.lock();
        let now = self.now();
        let (mut saved, reserve) = state.scheduler.snapshot(now, reserve);
        saved.held = state.held;
        if let Some(shared) = state.shared.as_ref() {
            saved.nodes_seen = shared.seen;
        }
        (saved, reserve)
    }

    /// The snapshot taken with `reserve` is on disk.
    pub fn saved(&self, reserve: u64) {
        self.lock().scheduler.saved(reserve);
        self.wake.notify_waiters();
    }

    /// Messages queued (ready and waiting).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.scheduler.len() + state.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::shaper::GatewayModel;
    use crate::smtp::MailParams;
    use crate::spool::{Envelope, Location};

    /// A queue with two app lanes, shaped by `shaping` (TOML lines).
    fn shaped_queue(shaping: &str) -> DeliveryQueue {
        let config = Config::parse(&format!(
            "[[gateways]]\nname = \"primary\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{shaping}\n"
        ))
        .unwrap();
        let shaping = config.gateways[0].shaping.clone();
        DeliveryQueue::new(
            "primary",
            |now| GatewayModel::new(&shaping, now),
            vec![
                Lane {
                    weight: 1,
                    class: crate::config::AppClass::Transactional,
                    max_queue_delay: None,
                    expire_after: None,
                };
                2
            ],
            Arc::new(Notify::new()),
        )
    }

    /// A queue fast enough that shaping never holds anything back.
    fn queue() -> DeliveryQueue {
        shaped_queue("initial_rate = \"1000/s\"\nmax_rate = \"1000/s\"\nburst = 1000")
    }

    fn item(id: &str, body: Option<usize>) -> Queued {
        Queued {
            message: StoredMessage {
                id: id.into(),
                gateway: "primary".into(),
                envelope: Envelope {
                    sender: String::new(),
                    recipients: vec!["a@example.org".into()],
                    params: MailParams::default(),
                    client_ip: "127.0.0.1".parse().unwrap(),
                    received_at: 0,
                    dsn: false,
                },
                location: Location {
                    segment: 1,
                    offset: 0,
                    body_offset: 0,
                    body_len: 0,
                },
                pending: vec![0],
                notification: false,
            },
            attempts: 0,
            lane: 0,
            body: body.map(|len| vec![b'x'; len]),
            history: Vec::new(),
            probe: false,
        }
    }

    /// A fast queue with two lanes that parks past `active_limit`
    /// envelopes, reading them back from `spool`.
    fn parking_queue(spool: Option<&Spool>, active_limit: usize) -> DeliveryQueue {
        let transactional = Lane {
            weight: 1,
            class: crate::config::AppClass::Transactional,
            max_queue_delay: None,
            expire_after: None,
        };
        parking_queue_with(spool, active_limit, vec![transactional; 2])
    }

    fn parking_queue_with(
        spool: Option<&Spool>,
        active_limit: usize,
        lanes: Vec<Lane>,
    ) -> DeliveryQueue {
        let config = Config::parse(
            "[[gateways]]\nname = \"primary\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\ninitial_rate = \"1000/s\"\nmax_rate = \"1000/s\"\nburst = 1000\n",
        )
        .unwrap();
        let shaping = config.gateways[0].shaping.clone();
        DeliveryQueue::shared(
            "primary",
            |now| GatewayModel::new(&shaping, now),
            lanes,
            Arc::new(Notify::new()),
            None,
            spool.map(|spool| Parking {
                spool: spool.clone(),
                active_limit,
            }),
        )
    }

    /// Stores `count` messages in `spool`, the `n`th with `n % 3 + 1`
    /// recipients, in lane 0 but every third in lane 1.
    async fn stored(spool: &Spool, count: usize) -> Vec<Queued> {
        let mut items = Vec::new();
        for n in 0..count {
            let envelope = Envelope {
                sender: format!("app{n}@example.com"),
                recipients: (0..n % 3 + 1)
                    .map(|r| format!("r{r}@example.org"))
                    .collect(),
                params: MailParams::default(),
                client_ip: "127.0.0.1".parse().unwrap(),
                received_at: 1_000 + n as u64,
                dsn: false,
            };
            let body = format!("Subject: {n}\r\n\r\nbody {n}\r\n");
            let message = spool
                .store(
                    crate::spool::new_queue_id(),
                    "primary",
                    envelope,
                    &[body.as_bytes()],
                )
                .await
                .unwrap();
            items.push(Queued {
                message,
                attempts: 0,
                lane: usize::from(n % 3 == 2),
                body: None,
                history: Vec::new(),
                probe: false,
            });
        }
        items
    }

    fn copy(item: &Queued) -> Queued {
        Queued {
            message: item.message.clone(),
            attempts: item.attempts,
            lane: item.lane,
            body: None,
            history: item.history.clone(),
            probe: false,
        }
    }

    fn spool_in(dir: &std::path::Path) -> Spool {
        let config = crate::config::SpoolConfig {
            dir: dir.to_path_buf(),
            segment_size: 64 * 1024 * 1024,
            active_limit: 1,
        };
        let fsync =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("fsync", "fsync"))
                .unwrap();
        Spool::open(&config, fsync).unwrap().0
    }

    #[tokio::test]
    async fn a_long_queue_parks_envelopes_and_gives_them_back_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        let items = stored(&spool, 30).await;
        let parking = parking_queue(Some(&spool), 5);
        let whole = parking_queue(None, 5);
        for item in &items {
            parking.push(copy(item), true, 4);
            whole.push(copy(item), true, 4);
        }
        assert_eq!((parking.parked(), whole.parked()), (25, 0));
        // Counts, lanes, units, bytes and the oldest age are those of the
        // queue that holds everything.
        let (parked_view, parked_bytes) = parking.view();
        let (whole_view, whole_bytes) = whole.view();
        assert_eq!(parked_view.queued, 30);
        assert_eq!(parked_view.lanes, whole_view.lanes);
        assert_eq!(parked_bytes, whole_bytes);
        assert!((parked_view.oldest_age - whole_view.oldest_age).abs() < 1.0);
        assert_eq!(
            parking.lock().scheduler.queued(),
            whole.lock().scheduler.queued()
        );
        // Released in the same fair order, each read back whole.
        for _ in 0..30 {
            let from_disk = parking.next().await;
            let in_memory = whole.next().await;
            assert_eq!(from_disk.message, in_memory.message);
            assert_eq!(from_disk.lane, in_memory.lane);
            let body = spool.read_body(in_memory.message.location).await.unwrap();
            if let Some(carried) = &from_disk.body {
                assert_eq!(carried, &body);
            }
        }
        assert_eq!((parking.len(), parking.parked()), (0, 0));
        assert_eq!(parking.view().1, 0, "no bytes left counted");
    }

    /// Generated traces: lanes of random weights, pushes and releases
    /// interleaved at random, any active limit. The parking queue releases
    /// exactly what the queue holding everything does, in the same order,
    /// and shows the same counts at every step.
    #[tokio::test]
    async fn parking_never_changes_what_is_released_or_counted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        for seed in 0..12u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let lanes: Vec<Lane> = (0..rng.usize(2..5))
                .map(|_| Lane {
                    weight: rng.u32(1..4),
                    class: crate::config::AppClass::Transactional,
                    max_queue_delay: None,
                    expire_after: None,
                })
                .collect();
            let mut items = stored(&spool, rng.usize(10..40)).await;
            for item in &mut items {
                item.lane = rng.usize(0..lanes.len());
            }
            let limit = rng.usize(1..8);
            let parking = parking_queue_with(Some(&spool), limit, lanes.clone());
            let whole = parking_queue_with(None, limit, lanes);
            let mut pending = items.iter();
            loop {
                let push = rng.u8(0..3) > 0;
                if push {
                    let Some(item) = pending.next() else { break };
                    let arrival = rng.bool();
                    parking.push(copy(item), arrival, 4);
                    whole.push(copy(item), arrival, 4);
                } else if whole.len() > 0 {
                    let (a, b) = (parking.next().await, whole.next().await);
                    assert_eq!((&a.message, a.lane), (&b.message, b.lane), "seed {seed}");
                }
                let (a, b) = (parking.view().0, whole.view().0);
                assert_eq!((a.queued, &a.lanes), (b.queued, &b.lanes), "seed {seed}");
                assert_eq!(
                    parking.lock().scheduler.queued(),
                    whole.lock().scheduler.queued()
                );
            }
            while whole.len() > 0 {
                let (a, b) = (parking.next().await, whole.next().await);
                assert_eq!((&a.message, a.lane), (&b.message, b.lane), "seed {seed}");
            }
            assert_eq!((parking.len(), parking.parked()), (0, 0));
        }
    }

    #[test]
    fn only_ids_in_the_form_the_spool_makes_are_parked() {
        let id = crate::spool::new_queue_id();
        assert_eq!(Parked::id_value(&id).map(Parked::id_text), Some(id.clone()));
        for other in [
            "+000000000000001",
            "00000000000000ab",
            "Q1",
            "0000000000000000A",
            "",
        ] {
            assert_eq!(Parked::id_value(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn only_untried_whole_messages_are_parked() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        let items = stored(&spool, 4).await;
        let queue = parking_queue(Some(&spool), 1);
        let mut tried = copy(&items[1]);
        tried.attempts = 1;
        let mut half = copy(&items[2]);
        half.message.pending = vec![1];
        for item in [copy(&items[0]), tried, half, copy(&items[3])] {
            queue.push(item, false, 4);
        }
        assert_eq!(queue.parked(), 1, "only the last, never tried, whole");
        // A retry coming due is never parked either.
        queue.retry_at(copy(&items[0]), Instant::now());
        assert_eq!(queue.parked(), 1);
    }

    #[tokio::test]
    async fn parked_messages_are_visited_removed_and_moved_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        let items = stored(&spool, 6).await;
        let queue = parking_queue(Some(&spool), 2);
        for item in &items {
            queue.push(copy(item), false, 4);
        }
        let mut seen = Vec::new();
        queue.visit(|visited, _| {
            seen.push((
                visited.id().into_owned(),
                matches!(visited, Visited::Parked(_)),
            ))
        });
        let ids: Vec<String> = items.iter().map(|item| item.message.id.clone()).collect();
        let mut expected: Vec<(String, bool)> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (id.clone(), n >= 2))
            .collect();
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected);
        let (removed, lane, _) = queue.remove(&ids[3]).unwrap();
        assert!(matches!(removed, Slot::Parked(parked) if parked.id() == ids[3]));
        assert_eq!(lane, items[3].lane);
        assert_eq!(queue.parked(), 3);
        // A reload moves parked messages without reading them.
        let moved = parking_queue(Some(&spool), 2);
        for drained in queue.drain() {
            match drained {
                Drained::Held(item, _) => moved.push(*item, false, 4),
                Drained::Parked {
                    parked,
                    lane,
                    units,
                } => moved.push_parked(parked, lane, units),
            }
        }
        assert_eq!((queue.len(), queue.parked()), (0, 0));
        assert_eq!((moved.len(), moved.parked()), (5, 3));
        let mut released = Vec::new();
        for _ in 0..5 {
            released.push(moved.next().await.message.id);
        }
        released.sort();
        let mut left: Vec<String> = ids.clone();
        left.remove(3);
        assert_eq!(released, left);
    }

    /// `next()`, or None if nothing comes within `limit` of virtual time.
    async fn next_within(queue: &DeliveryQueue, limit: Duration) -> Option<Queued> {
        tokio::time::timeout(limit, queue.next()).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn ready_messages_come_out_in_order() {
        let queue = queue();
        queue.push(item("a", None), true, 4);
        queue.push(item("b", None), true, 4);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await.message.id, "a");
        assert_eq!(queue.next().await.message.id, "b");
        assert!(
            next_within(&queue, Duration::from_secs(3600))
                .await
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_ride_along_only_while_the_queue_is_short() {
        let queue = queue();
        queue.push(item("a", Some(100)), true, 2);
        queue.push(item("b", Some(100)), true, 2);
        queue.push(item("c", Some(100)), true, 2);
        queue.push(item("d", Some(HOT_BODY_BYTES)), true, 10);
        let kept: Vec<bool> = [
            queue.next().await,
            queue.next().await,
            queue.next().await,
            queue.next().await,
        ]
        .iter()
        .map(|item| item.body.is_some())
        .collect();
        assert_eq!(kept, vec![true, true, false, false]);
        queue.push(item("e", Some(HOT_BODY_BYTES)), true, 10);
        assert!(
            queue.next().await.body.is_some(),
            "the budget is free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_until_due_and_drop_their_body() {
        let queue = queue();
        let start = Instant::now();
        queue.retry_at(item("late", Some(10)), start + Duration::from_secs(60));
        queue.retry_at(item("early", None), start + Duration::from_secs(30));
        assert!(next_within(&queue, Duration::from_secs(29)).await.is_none());
        let early = queue.next().await;
        assert_eq!(early.message.id, "early");
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        let late = queue.next().await;
        assert_eq!(
            (late.message.id.as_str(), late.body.is_none()),
            ("late", true)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn releases_at_the_ceiling_fairly_across_apps() {
        let queue = shaped_queue("initial_rate = \"30/min\"\nheadroom = 2.0\nburst = 1");
        let start = Instant::now();
        for id in ["bulk1", "bulk2", "bulk3"] {
            queue.push(item(id, None), true, 1);
        }
        let mut reset = item("reset", None);
        reset.lane = 1;
        queue.push(reset, true, 1);
        let mut released = Vec::new();
        for _ in 0..4 {
            let item = queue.next().await;
            released.push((item.message.id, (Instant::now() - start).as_secs_f64()));
        }
        let ids: Vec<&str> = released.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["bulk1", "reset", "bulk2", "bulk3"]);
        for pair in released.windows(2) {
            assert!(pair[1].1 - pair[0].1 >= 0.999, "one a second: {released:?}");
        }
        let (view, _) = queue.view();
        assert_eq!(view.queued, 0);
        assert!((view.model.ceiling - 1.0).abs() < 1e-3, "{view:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn capped_sends_wait_for_the_state_to_be_saved() {
        let queue = shaped_queue("initial_rate = \"100/s\"\nlimits = [\"10/min\"]");
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.push(item("a", None), true, 1);
        assert!(next_within(&queue, Duration::from_secs(5)).await.is_none());
        let (state, reserve) = queue.snapshot(true);
        assert_eq!((reserve, state.caps[0].1.len()), (1, 1));
        queue.saved(reserve);
        assert!(
            next_within(&queue, Duration::from_millis(1))
                .await
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttling_reply_halves_the_ceiling() {
        let queue = shaped_queue("initial_rate = \"60/min\"\nbackoff_factor = 0.5");
        let before = queue.view().0.model.ceiling;
        queue.throttled("451 4.7.500 Server busy, try again later");
        let (after, _) = queue.view();
        assert!((after.model.ceiling - before / 2.0).abs() < 1e-9);
        assert!(after.model.paused_for > 59.0);
    }

    /// Whether `at` is `due`, give or take the timer's millisecond ticks.
    fn within_a_tick(at: Instant, due: Instant) -> bool {
        at >= due && at - due < Duration::from_millis(5)
    }

    fn ten_per_failure(failures: u32) -> Duration {
        Duration::from_secs(10 * u64::from(failures))
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_gateway_pauses_the_queue() {
        let queue = queue();
        queue.push(item("a", None), true, 4);
        let pause = queue.connect_failed(Instant::now(), ten_per_failure);
        assert_eq!(pause, Some(Duration::from_secs(10)));
        assert!(next_within(&queue, Duration::from_secs(9)).await.is_none());
        let probe = queue.next().await;
        assert_eq!((probe.message.id.as_str(), probe.probe), ("a", true));

        queue.push(item("b", None), true, 4);
        let pause = queue.connect_failed(Instant::now(), ten_per_failure);
        assert_eq!(pause, Some(Duration::from_secs(20)), "backs off further");
        queue.connected();
        assert!(
            next_within(&queue, Duration::from_millis(1))
                .await
                .is_some(),
            "resumes at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_one_probe_goes_and_only_its_failure_lengthens_the_pause() {
        let queue = queue();
        for id in ["a", "b", "c", "d"] {
            queue.push(item(id, None), true, 4);
        }
        // Four workers' attempts, all under way when the first one fails.
        let started = Instant::now();
        let taken = [queue.next().await, queue.next().await, queue.next().await];
        assert!(taken.iter().all(|item| !item.probe));
        let pauses: Vec<Option<Duration>> = (0..3)
            .map(|_| queue.connect_failed(started, ten_per_failure))
            .collect();
        assert_eq!(pauses, vec![Some(Duration::from_secs(10)), None, None]);
        for item in taken {
            queue.retry_at(item, started + Duration::from_secs(1));
        }

        // The pause ends: one probe, however many workers ask.
        let probe = queue.next().await;
        assert!(within_a_tick(
            Instant::now(),
            started + Duration::from_secs(10)
        ));
        assert!(probe.probe);
        assert!(
            next_within(&queue, Duration::from_secs(3600))
                .await
                .is_none()
        );
        let probe_started = Instant::now();
        assert_eq!(
            queue.connect_failed(probe_started, ten_per_failure),
            Some(Duration::from_secs(20))
        );
        queue.retry_at(probe, probe_started);

        // A probe that says nothing (its body unreadable) hands over to the next.
        let probe = queue.next().await;
        assert!(within_a_tick(
            Instant::now(),
            probe_started + Duration::from_secs(20)
        ));
        queue.probe_inconclusive();
        let next = queue.next().await;
        assert!(next.probe && next.message.id != probe.message.id);
        queue.connected();
        let rest = [queue.next().await, queue.next().await];
        assert!(rest.iter().all(|item| !item.probe), "the gateway is up");
    }

    #[tokio::test(start_paused = true)]
    async fn an_operator_retry_ends_the_pause_with_one_probe() {
        let queue = queue();
        let start = Instant::now();
        queue.retry_at(item("tried", None), start + Duration::from_secs(5));
        queue.retry_at(item("later", None), start + Duration::from_secs(3600));
        queue.push(item("new", None), true, 4);
        queue.connect_failed(start, ten_per_failure);
        let mut places = Vec::new();
        queue.visit(|item, place| {
            if let Place::Retry(at) = place {
                let after = (at - queue.clock.at(start)).round() as u64;
                places.push((item.id().into_owned(), after));
            }
        });
        assert_eq!(
            places,
            vec![
                ("new".to_string(), 10),
                ("tried".to_string(), 10),
                ("later".to_string(), 3600)
            ],
            "none goes before the pause ends"
        );

        assert_eq!(
            queue.retry_now(Some("new")),
            1,
            "ready, held only by the pause"
        );
        let probe = next_within(&queue, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(probe.probe);
        assert!(next_within(&queue, Duration::from_secs(60)).await.is_none());
        assert_eq!(
            queue.retry_now(None),
            1,
            "the later one, while the probe is out"
        );
        queue.connected();
        let rest = [queue.next().await, queue.next().await];
        assert!(rest.iter().all(|item| !item.probe));
    }

    /// The outage: 16 messages, 10 workers, `retry_initial` 5 s, the
    /// gateway down for 40 s. Workers here do what `worker::deliver` does
    /// with a connection that cannot be opened, or with one that can.
    #[tokio::test(start_paused = true)]
    async fn a_gateway_back_after_40_s_gets_everything_at_the_next_probe() {
        use crate::outbound::retry::Backoff;

        let backoff = Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(3600),
        };
        let queue = Arc::new(queue());
        let start = Instant::now();
        let up_at = start + Duration::from_secs(40);
        for n in 0..16 {
            queue.push(item(&format!("m{n}"), None), true, 10);
        }
        #[derive(Default)]
        struct Log {
            attempts: Vec<Instant>,
            /// (began, length) of every pause a failure started.
            pauses: Vec<(Instant, Duration)>,
            delivered: Vec<Instant>,
        }
        let log = Arc::new(Mutex::new(Log::default()));
        let all_delivered = Arc::new(Notify::new());
        for worker in 0..10u64 {
            let (queue, log, all_delivered) = (queue.clone(), log.clone(), all_delivered.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(worker);
                loop {
                    let mut item = queue.next().await;
                    let started = Instant::now();
                    log.lock().unwrap().attempts.push(started);
                    // Opening a connection takes a moment, so the workers'
                    // first attempts overlap.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if started < up_at {
                        let jitter = rng.f64();
                        if let Some(pause) = queue
                            .connect_failed(started, |failures| backoff.delay(failures, jitter))
                        {
                            log.lock().unwrap().pauses.push((Instant::now(), pause));
                        }
                        item.attempts += 1;
                        let delay = backoff.delay(item.attempts, rng.f64());
                        queue.retry_at(item, Instant::now() + delay);
                    } else {
                        queue.connected();
                        let mut log = log.lock().unwrap();
                        log.delivered.push(started);
                        if log.delivered.len() == 16 {
                            all_delivered.notify_one();
                        }
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(24 * 3600), all_delivered.notified())
            .await
            .expect("all 16 delivered within a day");

        let log = log.lock().unwrap();
        let first_success = log.delivered[0];
        assert!(
            log.delivered
                .iter()
                .all(|at| *at - first_success < Duration::from_secs(1)),
            "everything goes once the probe gets through"
        );
        let failed_attempts = log.attempts.iter().filter(|at| **at < up_at).count();
        assert_eq!(
            failed_attempts,
            10 + log.pauses.len() - 1,
            "the first wave, then one probe per pause: {:?}",
            log.pauses
        );
        for (n, (_, pause)) in log.pauses.iter().enumerate() {
            assert!(
                *pause <= backoff.delay(n as u32 + 1, 1.0),
                "pause {n} follows the schedule: {:?}",
                log.pauses
            );
        }
        let (began, pause) = *log.pauses.last().unwrap();
        assert!(began < up_at);
        assert!(
            within_a_tick(first_success, began + pause),
            "the first probe after the return"
        );
        assert!(first_success - up_at <= backoff.delay(log.pauses.len() as u32, 1.0));
    }
}
