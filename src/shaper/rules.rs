//! The shaping's vocabulary and one gateway's rules: an app's class, the
//! horizons of the volume rule, what the caps count, enforce or observe,
//! and the settings of `[gateways.shaping]` as the shaper reads them.
//!
//! The shaper owns these types so its pure core imports no file schema:
//! `config` reads the file into them (`config/shaping.rs`, `[[apps]]`'s
//! `class`), and checks there what a table alone cannot say (a delay
//! shorter than the gateway's `max_age`). Rates are events per second,
//! spans are [`Duration`]s.

use std::time::Duration;

/// What kind of mail an app sends, for the volume budgets: bulk mail never
/// takes the room the transactional apps normally need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppClass {
    #[default]
    Transactional,
    Bulk,
}

impl AppClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AppClass::Transactional => "transactional",
            AppClass::Bulk => "bulk",
        }
    }
}

/// A time scale of the volume rule, on which receivers judge a gateway
/// beyond the minute (see `shaper::volume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Horizon {
    Hour,
    Day,
}

impl Horizon {
    pub const ALL: [Horizon; 2] = [Horizon::Hour, Horizon::Day];

    /// The window's length in minutes.
    pub fn minutes(self) -> i64 {
        match self {
            Horizon::Hour => 60,
            Horizon::Day => 1_440,
        }
    }

    pub fn seconds(self) -> i64 {
        self.minutes() * 60
    }

    /// The `window` label of the volume metrics.
    pub fn label(self) -> &'static str {
        match self {
            Horizon::Hour => "1h",
            Horizon::Day => "24h",
        }
    }
}

/// `[gateways.shaping]`: how fast the gateway may send (see `shaper`).
/// Rates are messages per second.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapingConfig {
    /// The minute baseline assumed for a gateway with no history.
    pub initial_rate: f64,
    /// The history an operator vouches for, per [`Horizon`] (in
    /// `Horizon::ALL` order): units sent in the gateway's busiest window of
    /// that length recently (`initial_rate = ["60/min", "200/h", "2000/day"]`).
    pub initial_volume: [Option<u64>; 2],
    /// The minute floor of the ceiling.
    pub min_rate: f64,
    /// The allowance of each [`Horizon`] with no history; `None` leaves that
    /// horizon unbudgeted (a `min_rate` that names only the minute).
    pub min_volume: [Option<u64>; 2],
    pub max_rate: f64,
    pub headroom: f64,
    /// Growth factor per day.
    pub warmup: f64,
    pub burst: u32,
    pub max_queue_delay: Duration,
    pub max_queued: usize,
    pub limits: Vec<Limit>,
    pub count: CountUnit,
    pub backoff_factor: f64,
    pub backoff_pause: Duration,
    /// How long the ceiling takes to climb back to where it was before a
    /// throttling cut, once the gateway accepts again.
    pub backoff_recovery: Duration,
    /// Enforce the shaping, or observe it (see [`ShapingMode`]).
    pub mode: ShapingMode,
    /// Observe until the gateway's own history covers this span, then
    /// enforce by itself.
    pub observe_until: Option<Duration>,
    pub baseline_half_life: Duration,
    /// Each budgeted receiver's floors per [`Horizon`] when it has no floors
    /// of its own (`receiver_min_rate`); `None` leaves that horizon to the
    /// gateway's total.
    pub receiver_min_volume: [Option<u64>; 2],
    /// The receivers held to their own volume rule on this gateway, in the
    /// order receivers claim domains: a receiver's index here is how the
    /// shaper names it. Receivers not here (`other`, unless given floors)
    /// count in the total only.
    pub receivers: Vec<ReceiverRule>,
}

/// A receiver (mailbox provider) held to its own volume rule: in every
/// rolling hour and day, what the gateway sends it is at most
/// `max(floor, warmup x the busiest window it saw in the previous 7 days)`
/// (see `shaper::receivers`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverRule {
    pub name: String,
    /// Its floors per [`Horizon`]; only horizons the gateway budgets.
    pub floors: [Option<u64>; 2],
}

/// One hard cap, `count` units per `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub count: u64,
    pub window: Duration,
}

/// Whether the shaping holds mail, or only says what it would hold
/// (`mode = "observe"`: relayed at once, the would-be holds counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShapingMode {
    #[default]
    Enforce,
    Observe,
}

impl ShapingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShapingMode::Enforce => "enforce",
            ShapingMode::Observe => "observe",
        }
    }
}

/// What the hard caps count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountUnit {
    Messages,
    Recipients,
}

/// The longest an app's mail may be held, as a share of how long it may
/// stay queued (`max_age`, an app's `expire_after`): it leaves before it
/// would expire, with room for the projection to be off.
pub const HELD_SHARE_OF_LIFETIME: f64 = 0.8;
