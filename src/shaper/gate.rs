//! The cluster gate: how one node stands with its gateway's shared state
//! (cluster mode), and every change of that standing. The live delivery
//! queue (`outbound::queue::cluster`) and `simulate --nodes` run this same
//! gate; each owns the messages and the talk with its store
//! ([`super::store::Store`]: Redis, or the in-memory [`super::store::SharedState`]).
//!
//! The gate does no I/O and reads no clock: every transition takes `now`
//! (shaper seconds) and, where it changes what the model may send, the
//! node's [`Scheduler`]. It says what to ask the store ([`Route`],
//! [`Writes`]) and takes in the answer ([`Gate::granted`],
//! [`Gate::refused`], [`Gate::failed`], [`Gate::hear`], [`Gate::reached`],
//! [`Gate::lost`]). This sans-I/O split is chosen over an async gate so
//! the synchronous simulator and the async queue share one decision
//! without either pretending to be the other: the queue awaits Redis
//! between two calls (its lock not held across it), the simulator asks its
//! in-memory store in between, and tests drive the gate on a fake clock
//! with made-up answers.
//!
//! Invariants:
//! - nothing is released before the first heartbeat has answered or failed
//!   ([`Gate::decided`]): a start or a reload never sends on a guessed share;
//! - while not connected every send is counted in the [`Ledger`], and the
//!   model runs on its share of [`Gate::share_of`] nodes, never fewer than
//!   the expected ones or the most seen in the last week;
//! - an operator's hold or release not yet written to the shared state
//!   ([`Gate::hold_pending`]) is not overridden by what readings say;
//! - a refused bulk message holds only the bulk lanes, a message its
//!   receiver's budgets alone refused only that receiver's mail (of its
//!   class; transactional refused: bulk too); any other refusal holds the
//!   whole node until the wait the store named;
//! - one slow answer is not an outage: only [`ACQUIRE_FAILURES`] failed
//!   proposals in a row (or a failed heartbeat) make the node run on its
//!   share.

use super::shared::{Ledger, NodesSeen, Proposal, SharedFeedback, SharedLimits};
use super::store::{Heartbeat, Verdict};
use super::{ClassCounts, Scheduler, WindowCounts};
use crate::shaper::AppClass;

/// Failed proposals in a row after which a node stops asking the shared
/// state and runs on its share (a heartbeat that gets through brings it
/// back).
pub const ACQUIRE_FAILURES: u32 = 3;

/// Seconds a node waits after a failed proposal before the next one.
pub const ACQUIRE_RETRY: f64 = 1.0;

/// This node's standing with one gateway's shared state.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The latest heartbeat got through; otherwise this node runs on its
    /// share (of `share_of` nodes).
    connected: bool,
    /// The first heartbeat has answered or failed.
    decided: bool,
    /// Proposals that failed in a row while heartbeats get through.
    acquire_failures: u32,
    /// An operator's hold or release not yet in the shared state.
    hold_pending: Option<bool>,
    /// The shared state said to propose nothing before this.
    wait_until: Option<f64>,
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
}

/// What to do with a message the local model let go.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Ask the shared state for this send first.
    Propose(Proposal),
    /// Send it: the node runs on its share, and the send is in the ledger.
    Release,
}

/// What a heartbeat writes to the shared state once it has heard it, each
/// part only once the one before got through.
#[derive(Debug, Clone, PartialEq)]
pub struct Writes {
    /// A new epoch's counts, feedback and hold, from this node's view.
    pub rebuild: Option<(WindowCounts, SharedFeedback, bool)>,
    /// What this node sent on its share since the last heartbeat, to add
    /// to the shared counts under `limits`.
    pub ledger: Ledger,
    pub limits: SharedLimits,
    /// An operator's hold or release not yet in the shared state.
    pub hold: Option<bool>,
}

/// What a reload carries from a gateway's old queue to its new one: what
/// was sent on the share and not yet reconciled, the live nodes last seen,
/// a hold not yet written.
#[derive(Debug, Clone)]
pub struct Standing {
    ledger: Ledger,
    live: u64,
    seen: NodesSeen,
    hold_pending: Option<bool>,
}

impl Gate {
    /// A node expecting `expected` nodes, undecided: its `scheduler` runs
    /// on that share until the first heartbeat's verdict.
    pub fn new<T>(scheduler: &mut Scheduler<T>, now: f64, expected: u64) -> Gate {
        scheduler.model_mut().set_share(now, expected);
        Gate {
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
        }
    }

    /// A node on a shared state that never fails (the simulator's):
    /// decided and connected from the start.
    pub fn connected(nodes: u64) -> Gate {
        Gate {
            connected: true,
            decided: true,
            acquire_failures: 0,
            hold_pending: None,
            wait_until: None,
            live: nodes,
            expected: nodes,
            seen: NodesSeen::default(),
            queued_elsewhere: ClassCounts::default(),
            ledger: Ledger::default(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The first heartbeat has answered or failed: until then nothing is
    /// released (neither on the shared state nor on a share not yet known).
    pub fn decided(&self) -> bool {
        self.decided
    }

    /// Live nodes at the latest heartbeat.
    pub fn live(&self) -> u64 {
        self.live
    }

    /// The nodes this one divides the gateway by while the shared state is
    /// out of reach.
    pub fn share_of(&self, now: f64) -> u64 {
        self.live.max(self.expected).max(self.seen.most_at(now))
    }

    pub fn seen(&self) -> NodesSeen {
        self.seen
    }

    /// The most nodes seen lately, as saved before a restart.
    pub fn restore_seen(&mut self, seen: NodesSeen) {
        self.seen = seen;
    }

    /// What the other nodes have queued (their heartbeats), per class.
    pub fn queued_elsewhere(&self) -> ClassCounts {
        self.queued_elsewhere
    }

    /// Until when the shared state said to propose nothing, if that is
    /// still ahead at `now`.
    pub fn waits_until(&self, now: f64) -> Option<f64> {
        self.wait_until.filter(|until| *until > now)
    }

    /// A message of `lane` to `receiver` counting `units` that the model
    /// let go at `now`: proposed to the shared state while connected (with
    /// its receiver's budgets), or sent on the share and counted in the
    /// ledger (with its receiver's name).
    pub fn route<T>(
        &mut self,
        scheduler: &mut Scheduler<T>,
        now: f64,
        (lane, receiver): (usize, Option<usize>),
        units: u64,
    ) -> Route {
        let class = scheduler.class(lane);
        let model = scheduler.model_mut();
        if self.connected {
            Route::Propose(Proposal {
                units,
                class,
                limits: model.shared_limits(now),
                receiver: model.shared_receiver(now, receiver),
            })
        } else {
            self.ledger
                .add(now, units, class, model.receiver_name(receiver));
            Route::Release
        }
    }

    /// The shared state granted a proposal.
    pub fn granted(&mut self) {
        self.acquire_failures = 0;
    }

    /// The shared state refused (`verdict`) a proposal of `class` to
    /// `receiver` at `now` (its message is back first in its lane, the
    /// caller's part): refused for the receiver's budgets alone, that
    /// receiver's mail waits and the rest goes on (`None`); a bulk message
    /// holds the bulk lanes and the transactional ones go on (`None`);
    /// anything else holds the node until the time returned.
    pub fn refused<T>(
        &mut self,
        scheduler: &mut Scheduler<T>,
        now: f64,
        (class, receiver): (AppClass, Option<usize>),
        verdict: &Verdict,
    ) -> Option<f64> {
        self.acquire_failures = 0;
        // Strictly later, even where the wait vanishes in rounding.
        let until = (now + verdict.wait).max(now.next_up());
        if let Some(receiver) = receiver.filter(|_| verdict.holds_the_receiver_only()) {
            scheduler.model_mut().hold_receiver(receiver, class, until);
            None
        } else if class == AppClass::Bulk {
            scheduler.model_mut().hold_bulk(until);
            None
        } else {
            self.wait_until = Some(until);
            Some(until)
        }
    }

    /// A proposal got no answer at `now`: retried after [`ACQUIRE_RETRY`];
    /// true once [`ACQUIRE_FAILURES`] failed in a row (the caller then
    /// calls [`Gate::lost`]). The shared state may have granted it and
    /// answered late: proposed again it is counted twice there, which only
    /// holds back more.
    pub fn failed(&mut self, now: f64) -> bool {
        self.acquire_failures += 1;
        self.wait_until = Some(now + ACQUIRE_RETRY);
        self.acquire_failures >= ACQUIRE_FAILURES
    }

    /// Proposals that failed in a row.
    pub fn failures(&self) -> u32 {
        self.acquire_failures
    }

    /// The shared state is out of reach: the node runs on its share. True
    /// when that is news (connected before, or the first verdict), to be
    /// logged once.
    pub fn lost<T>(&mut self, scheduler: &mut Scheduler<T>, now: f64) -> bool {
        let news = self.connected || !self.decided;
        self.connected = false;
        self.decided = true;
        self.wait_until = None;
        scheduler.model_mut().set_share(now, self.share_of(now));
        news
    }

    /// A heartbeat's answer at `now`: the live nodes, what they queued and
    /// have seen; takes out what the heartbeat is to write back. `rebuild`:
    /// the store found a new epoch, rebuilt from this node's view (with the
    /// operator's `held`).
    pub fn hear<T>(
        &mut self,
        scheduler: &mut Scheduler<T>,
        now: f64,
        beat: &Heartbeat,
        rebuild: bool,
        held: bool,
    ) -> Writes {
        scheduler
            .model_mut()
            .learn_busiest(now, &beat.busiest_elsewhere);
        let rebuild = rebuild.then(|| {
            let view = scheduler.view(now).model;
            let feedback = SharedFeedback {
                penalty: view.penalty,
                pause_left: view.paused_for,
            };
            (scheduler.model_mut().window_counts(now), feedback, held)
        });
        let limits = scheduler.model_mut().shared_limits(now);
        self.live = beat.live;
        self.seen.observe(beat.live, now);
        self.queued_elsewhere = beat.queued_elsewhere;
        self.ledger.forget_before(now);
        Writes {
            rebuild,
            ledger: std::mem::take(&mut self.ledger),
            limits,
            hold: self.hold_pending,
        }
    }

    /// A heartbeat's writes stopped short of `ledger`: counted again for
    /// the next heartbeat.
    pub fn keep_unreconciled(&mut self, ledger: &Ledger) {
        self.ledger.add_ledger(ledger);
    }

    /// A heartbeat got through with all it had to write: the node runs on
    /// the shared state again. True when that is news, to be logged once.
    pub fn reached<T>(&mut self, scheduler: &mut Scheduler<T>, now: f64) -> bool {
        self.acquire_failures = 0;
        if self.connected {
            return false;
        }
        self.connected = true;
        self.decided = true;
        scheduler.model_mut().set_share(now, 1);
        true
    }

    /// An operator's hold or release not yet in the shared state.
    pub fn hold_pending(&self) -> Option<bool> {
        self.hold_pending
    }

    /// An operator held or released the gateway here: every node is to
    /// hold, so the next heartbeat writes it (kept until that gets
    /// through, the shared state out of reach or not).
    pub fn hold_given(&mut self, held: bool) {
        self.hold_pending = Some(held);
    }

    /// The operator's `held` is in the shared state: readings may override
    /// it again, unless the operator changed it since.
    pub fn hold_written(&mut self, held: bool) {
        if self.hold_pending == Some(held) {
            self.hold_pending = None;
        }
    }

    /// Takes out what a reload carries over to the gateway's next gate.
    pub fn take_standing(&mut self) -> Standing {
        Standing {
            ledger: std::mem::take(&mut self.ledger),
            live: self.live,
            seen: self.seen,
            hold_pending: self.hold_pending,
        }
    }

    /// Carries on from the old gate's standing.
    pub fn carry(&mut self, standing: Standing) {
        self.keep_unreconciled(&standing.ledger);
        self.live = standing.live;
        self.seen = standing.seen;
        self.hold_pending = standing.hold_pending;
    }

    /// What this node sent on its share and has not yet added to the
    /// shared counts.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

#[cfg(test)]
mod tests;
