//! Shaping: how fast each gateway may send, learned from its history.
//!
//! Pure logic with no I/O and no clock of its own (every call takes `now` in
//! seconds), so the live delivery queue and the `simulate` subcommand run the
//! same code, and tests run it on a fake clock:
//!
//! - [`rules`]: the vocabulary (an app's class, the horizons, what caps
//!   count) and one gateway's settings, which `config` reads into;
//! - [`baseline`]: the learned normal rate (peak-hold, bounded warm-up, slow fade);
//! - [`bucket`]: governor's token bucket at the ceiling;
//! - [`caps`]: the hard `limits` (N per window, never exceeded);
//! - [`volume`]: the hour and day budgets (what receivers judge beyond the
//!   minute: never more than `warmup` x the busiest recent window);
//! - [`demand`]: what the apps try to send, deferred offers counted once;
//! - [`feedback`]: which gateway replies mean "slow down";
//! - [`penalty`]: what "slow down" does to the ceiling, and the way back;
//! - [`limits`]: the caps and budgets together, counted durably (the
//!   reserve a save covers ahead);
//! - [`model`]: the above together, plus admission;
//! - [`observe`]: what enforcement would have held, while observing;
//! - [`fair`] and [`scheduler`]: the per-app round robin in front of the model;
//! - [`state`]: what is saved so a restart remembers;
//! - [`shared`]: what a node and the gateway's shared state (cluster mode)
//!   say to each other;
//! - [`gate`]: how a node stands with the shared state, and every change of
//!   that standing (the relay and the simulator run the same gate);
//! - [`store`]: where the shared state lives, behind one trait (Redis in
//!   `crate::cluster`, in memory here).
//!
//! The README's "Shaping model" section explains the model with plots.

pub mod baseline;
pub mod bucket;
pub mod caps;
pub mod demand;
pub mod fair;
pub mod feedback;
pub mod gate;
pub mod limits;
pub mod meter;
pub mod model;
pub mod observe;
pub mod penalty;
pub mod receivers;
pub mod rules;
pub mod scheduler;
pub mod shared;
pub mod state;
pub mod store;
pub mod volume;

pub use demand::fingerprints;
pub use fair::Due;
pub use feedback::is_throttling;
pub use limits::WindowCounts;
pub use model::{CeilingChange, DeferReason, Deferral, GatewayModel, ModelView, Projection};
pub use receivers::ReceiverView;
pub use rules::{AppClass, CountUnit, Horizon, Limit, ReceiverRule, ShapingConfig, ShapingMode};
pub use scheduler::{ClassCounts, GatewayView, Lane, Release, Scheduler, Taken};
pub use state::{HistorySource, SavedState};
pub use volume::{BudgetReached, BudgetView};

/// Asks whether new mail for a gateway may be accepted now; implemented by
/// the delivery side, asked by the inbound session at each RCPT. Gateways
/// and apps go by name, so a session that began before a configuration
/// reload still asks about the right ones.
pub trait Admission: Send + Sync {
    /// Mail of `app` to `receivers`, the receiver of each recipient
    /// counting this RCPT's (its index in the gateway's receiver rules;
    /// `None`: one not budgeted); `fingerprint` is the envelope's so far
    /// (see [`fingerprints`]), so a deferred offer made again counts once
    /// in the demand.
    fn admit(
        &self,
        gateway: &str,
        app: &str,
        receivers: &[Option<usize>],
        fingerprint: u64,
    ) -> Result<Projection, Deferral>;
}
