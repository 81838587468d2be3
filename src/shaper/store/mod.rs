//! The store behind the cluster gate (`super::gate`): where a gateway's
//! shared state lives, and the one way every node talks to it. Two stores
//! keep the same contract: Redis (`crate::cluster::GatewayLink`, the Lua
//! scripts beside it) for the relay, and [`MemoryStore`] over
//! [`SharedState`] in memory for the simulator and tests. One test suite
//! (`tests/it/store.rs`) runs against both.
//!
//! The contract, whatever the store:
//! - [`Store::acquire`] grants a send and counts it (in the gateway's
//!   windows and totals, and in its receiver's), or names the longest
//!   wait of what holds the whole gateway and what it is (`hold`, `pause`,
//!   `rate`, `cap`, `1h`, `24h`); only when nothing but the receiver's own
//!   budgets holds it, their wait (`receiver-1h`, `receiver-24h`: that
//!   receiver's mail waits, the others' need not). A refusal counts
//!   nothing;
//! - every answer carries a [`Reading`]: the gateway's feedback, the
//!   operator's hold, and what the other nodes sent since this node's
//!   previous reading, in all and per receiver (never negative, never
//!   this node's own sends);
//! - [`Store::heartbeat`] counts this node live for [`HEARTBEAT_LIFETIME`]
//!   and says how many are, what the others queued and the busiest windows
//!   they saw, of the total and of each receiver;
//! - [`Store::throttled`] opens one throttling episode for every node (a
//!   second signal during its pause cuts nothing more), [`Store::pause`]
//!   only rests them, [`Store::end_pause`] ends the rest now;
//! - [`Store::rebuild`] takes the larger count of each slot (the
//!   receivers' windows included), the lower penalty, the longer pause and
//!   a hold; [`Store::reconcile`] adds what a node sent on its share to the
//!   windows and to its totals, each receiver's part to that receiver's
//!   windows (of every horizon the gateway budgets) and totals.
//!
//! The trait is async because Redis is; the in-memory store answers at
//! once, through inherent methods that the synchronous simulator calls
//! directly, and its [`Store`] methods hand those answers back as ready
//! futures. `now` is the caller's clock (shaper seconds); the Redis store
//! decides on the Redis server's clock instead, so the nodes' clocks need
//! not agree.

mod memory;

pub use memory::{Hold, MemoryStore, SharedState};

use std::time::Duration;

use super::ClassCounts;
use super::WindowCounts;
use super::shared::{Busiest, Elsewhere, Ledger, Proposal, SharedFeedback, SharedLimits};

/// How long a node's heartbeat stays valid: a node silent for longer is no
/// longer counted among the live ones.
pub const HEARTBEAT_LIFETIME: Duration = Duration::from_secs(10);

/// What every answer says besides its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub feedback: SharedFeedback,
    /// An operator holds the gateway (on any node).
    pub held: bool,
    /// What the others sent since the previous reading.
    pub elsewhere: Elsewhere,
}

/// The answer to a proposed send.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub granted: bool,
    /// Seconds to wait before proposing again (when not granted).
    pub wait: f64,
    /// What holds it: `rate`, `cap`, `1h`, `24h`, `pause` or `hold`, or
    /// its receiver's budgets alone: `receiver-1h` or `receiver-24h`.
    pub reason: String,
    pub reading: Reading,
}

/// What the reason of a refusal by the receiver's budgets alone starts
/// with.
pub const RECEIVER_REASON: &str = "receiver-";

impl Verdict {
    /// Refused for the receiver's own budgets alone: mail to the other
    /// receivers may go.
    pub fn holds_the_receiver_only(&self) -> bool {
        !self.granted && self.reason.starts_with(RECEIVER_REASON)
    }
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Live nodes, this one included.
    pub live: u64,
    /// What the other nodes have queued, per class.
    pub queued_elsewhere: ClassCounts,
    /// The busiest hour and day the other nodes have seen, of the total
    /// and of each receiver.
    pub busiest_elsewhere: Busiest,
    pub reading: Reading,
}

/// One node's way to its gateway's shared state (see the module notes for
/// the contract). A failed call changes nothing but the error it returns.
pub trait Store {
    type Error: std::fmt::Display;

    /// Proposes one send: granted (and counted), or how long to wait.
    fn acquire(
        &self,
        now: f64,
        proposal: &Proposal,
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send;

    /// This node is alive with `queued` (messages and units per class)
    /// waiting and the `busiest` hour and day it has seen (of the total and
    /// of each receiver).
    fn heartbeat(
        &self,
        now: f64,
        queued: ClassCounts,
        busiest: &Busiest,
    ) -> impl Future<Output = Result<Heartbeat, Self::Error>> + Send;

    /// Adds this node's view of the current windows, its feedback and
    /// hold to a new epoch's state.
    fn rebuild(
        &self,
        now: f64,
        counts: &WindowCounts,
        feedback: &SharedFeedback,
        held: bool,
    ) -> impl Future<Output = Result<Reading, Self::Error>> + Send;

    /// Adds what this node sent on its share (`ledger`) to every window
    /// the `limits` name and to the totals.
    fn reconcile(
        &self,
        now: f64,
        limits: &SharedLimits,
        ledger: &Ledger,
    ) -> impl Future<Output = Result<Reading, Self::Error>> + Send;

    /// An operator holds or releases the gateway on every node.
    fn hold(
        &self,
        now: f64,
        held: bool,
    ) -> impl Future<Output = Result<Reading, Self::Error>> + Send;

    /// This node heard throttling: every node pauses and slows down.
    /// `backoff` is (factor, pause seconds, recovery seconds).
    fn throttled(
        &self,
        now: f64,
        backoff: (f64, f64, f64),
    ) -> impl Future<Output = Result<Reading, Self::Error>> + Send;

    /// The gateway's quota is used up: every node rests for `seconds`.
    fn pause(
        &self,
        now: f64,
        seconds: f64,
    ) -> impl Future<Output = Result<Reading, Self::Error>> + Send;

    /// An operator ends the gateway's pause on every node; the penalty
    /// stays.
    fn end_pause(&self, now: f64) -> impl Future<Output = Result<Reading, Self::Error>> + Send;
}
