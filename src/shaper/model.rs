//! One gateway's shaping model, a composition: the baseline it has learned
//! and the ceiling that follows from it (with the throttling penalty), the
//! token bucket that enforces the ceiling, the caps and volume budgets with
//! their durable reserve ([`super::limits`]), this node's share in cluster
//! mode, the gateway's feedback, demand, and the admission decision for
//! new mail.
//!
//! Pure: every method takes `now` in seconds (the live service passes Unix
//! time, the simulator virtual time) and nothing here sleeps or reads a clock.
//! Invariants: sends never pass the token bucket at the ceiling, any cap nor
//! any volume budget; the ceiling stays within `min_rate..=max_rate`; a
//! restored state fades by the time the process was down, and counts caps
//! and volumes conservatively (a crash can only make them count more). In
//! cluster mode the model also takes in what other nodes sent (in all and per
//! receiver) and the shared feedback, holds a receiver's mail while the
//! shared state says that receiver is full, and runs on its share while the
//! shared state is lost (`shared`).

use super::baseline::Baseline;
use super::bucket::Bucket;
use super::demand::Demand;
use super::limits::{LimitWait, Limits, WindowCounts};
use super::meter::RateMeter;
use super::penalty::{Penalty, PenaltyPhase};
use super::receivers::ReceiverView;
use super::shared::{Busiest, Elsewhere, SharedFeedback, SharedLimits, SharedReceiver};
use super::state::SavedState;
use super::volume::{BudgetReached, BudgetView};
use crate::shaper::{AppClass, CountUnit, Horizon, ShapingConfig, ShapingMode};

const DAY: f64 = 86_400.0;
/// The model re-learns at most this often (seconds).
const UPDATE_INTERVAL: f64 = 1.0;
/// A ceiling that moves by less than this fraction keeps its bucket.
const REBUILD_THRESHOLD: f64 = 0.05;
/// Window of the demand and send rates.
const RATE_WINDOW: f64 = 60.0;

/// What the scheduler may do with the message whose turn it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Send,
    /// Ask again after this many seconds.
    Wait(f64),
    /// The receiver's own budgets hold it for this many seconds: mail to
    /// other receivers may go (no head-of-line blocking).
    WaitReceiver(f64),
    /// The caps' sends are not yet covered by a saved state: save first.
    Save,
}

/// Why new mail waits, and beyond its app's `max_queue_delay` is deferred;
/// a fixed set, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeferReason {
    /// queued / ceiling would exceed `max_queue_delay`.
    QueueDelay,
    /// The queue holds `max_queued` messages.
    QueueFull,
    /// A hard cap (`limits`) has no room before `max_queue_delay`.
    Cap,
    /// The hour's volume budget has no room before `max_queue_delay`.
    HourBudget,
    /// The day's volume budget has no room before `max_queue_delay`.
    DayBudget,
    /// A receiver's own hour budget has no room before `max_queue_delay`.
    ReceiverHourBudget,
    /// A receiver's own day budget has no room before `max_queue_delay`.
    ReceiverDayBudget,
    /// A message counting more recipients than the volume budgets let
    /// through in one message (`count = "recipients"`): `452 4.5.3`, the
    /// client sends the rest in another transaction.
    Recipients,
}

impl DeferReason {
    pub const ALL: [DeferReason; 8] = [
        DeferReason::QueueDelay,
        DeferReason::QueueFull,
        DeferReason::Cap,
        DeferReason::HourBudget,
        DeferReason::DayBudget,
        DeferReason::Recipients,
        DeferReason::ReceiverHourBudget,
        DeferReason::ReceiverDayBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::QueueDelay => "queue_delay",
            DeferReason::QueueFull => "queue_full",
            DeferReason::Cap => "cap",
            DeferReason::HourBudget => "hour_budget",
            DeferReason::DayBudget => "day_budget",
            DeferReason::Recipients => "recipients",
            DeferReason::ReceiverHourBudget => "receiver_hour_budget",
            DeferReason::ReceiverDayBudget => "receiver_day_budget",
        }
    }

    /// The part of the shaping a wait is for, as the `250` and `451`
    /// replies and the logs say it.
    pub fn describe(self) -> &'static str {
        match self {
            DeferReason::QueueDelay => "the gateway's send rate",
            DeferReason::QueueFull => "the queue for this gateway is full",
            DeferReason::Cap => "the gateway's sending cap",
            DeferReason::HourBudget => "hourly volume budget",
            DeferReason::DayBudget => "daily volume budget",
            DeferReason::Recipients => "recipients per message",
            DeferReason::ReceiverHourBudget => "a receiver's hourly volume budget",
            DeferReason::ReceiverDayBudget => "a receiver's daily volume budget",
        }
    }

    fn budget(horizon: Horizon) -> DeferReason {
        match horizon {
            Horizon::Hour => DeferReason::HourBudget,
            Horizon::Day => DeferReason::DayBudget,
        }
    }

    fn receiver_budget(horizon: Horizon) -> DeferReason {
        match horizon {
            Horizon::Hour => DeferReason::ReceiverHourBudget,
            Horizon::Day => DeferReason::ReceiverDayBudget,
        }
    }
}

/// The part of new mail that goes to one budgeted receiver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiverPart {
    /// The receiver's index (see `ShapingConfig::receivers`).
    pub receiver: usize,
    pub units: u64,
    /// Units to that receiver its budgets release before it (as
    /// `Offer::ahead_units`, counting that receiver's only).
    pub ahead_units: u64,
}

/// New mail asking to be accepted, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Messages sent before it in the fair queue (at the minute ceiling).
    pub ahead: usize,
    /// Units the volume budgets release before it: for transactional
    /// mail, the transactional mail queued; for bulk, everything queued.
    pub ahead_units: u64,
    pub queued_messages: usize,
    /// Units of everything queued (for the caps).
    pub queued_units: u64,
    pub units: u64,
    pub class: AppClass,
    /// The envelope's fingerprint (`demand::fingerprints`).
    pub fingerprint: u64,
    /// The longest wait the sending app takes, in seconds (its
    /// `max_queue_delay`, else the gateway's): beyond it, 451.
    pub max_delay: f64,
    /// Its parts to budgeted receivers: each waits for its own receiver's
    /// room too, and the longest wait is the message's.
    pub receivers: Vec<ReceiverPart>,
}

/// Where accepted mail stands: the wait it is projected to have in the
/// queue, and what sets it (the `250` reply says both when the wait is
/// long; held mail is counted by it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Seconds.
    pub wait: f64,
    /// The part of the shaping it waits for: `QueueDelay` (the minute
    /// ceiling, or a throttling pause), `Cap`, `HourBudget` or `DayBudget`.
    pub reason: DeferReason,
}

impl Projection {
    /// Sent at once: nothing ahead, nothing held.
    pub const AT_ONCE: Projection = Projection {
        wait: 0.0,
        reason: DeferReason::QueueDelay,
    };
}

/// An admission refusal: why, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Deferral {
    pub reason: DeferReason,
    /// The wait the new message would have had, in seconds.
    pub projected_wait: f64,
    /// When a retry has a fair chance, in seconds from now.
    pub retry_after: f64,
}

/// Why the ceiling moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The baseline grew with the traffic (bounded by `warmup`).
    WarmUp,
    /// The baseline faded with less traffic.
    Fade,
    /// The gateway signalled throttling.
    Throttled,
    /// Recovering from a throttling cut (within `backoff_recovery`).
    Recovery,
    /// This node's share of the gateway changed: the shared state was
    /// lost (it runs on its share) or is back (see `shared`).
    Share,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::WarmUp => "warm-up",
            Cause::Fade => "fade",
            Cause::Throttled => "gateway throttling",
            Cause::Recovery => "recovery after throttling",
            Cause::Share => "this node's share of the cluster",
        }
    }
}

/// A ceiling change, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct CeilingChange {
    pub from: f64,
    pub to: f64,
    pub cause: Cause,
}

/// The model's numbers at one moment (rates per second).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    pub baseline: f64,
    pub ceiling: f64,
    pub demand_rate: f64,
    pub send_rate: f64,
    /// demand / baseline: the anomaly signal.
    pub burst_ratio: f64,
    /// The throttling multiplier (1 when the gateway is content).
    pub penalty: f64,
    /// Where the penalty stands: calm, throttled, recovering.
    pub penalty_phase: PenaltyPhase,
    /// Enforcing, or observing (`mode = "observe"`, until `observe_until`).
    pub mode: ShapingMode,
    /// Seconds until the penalty is 1 again (counting the whole
    /// `backoff_recovery` while the gateway has not accepted again).
    pub recovery_left: f64,
    /// Seconds left of a throttling pause.
    pub paused_for: f64,
    /// Deferrals so far, in [`DeferReason::ALL`] order.
    pub deferrals: [u64; DeferReason::ALL.len()],
    /// The hour and day budgets (those configured).
    pub budgets: Vec<BudgetView>,
    /// Each budgeted receiver's hour and day budgets.
    pub receivers: Vec<ReceiverView>,
}

/// See the module notes.
#[derive(Debug)]
pub struct GatewayModel {
    config: ShapingConfig,
    baseline: Baseline,
    /// The throttling multiplier of the ceiling, as of `updated_at`.
    penalty: f64,
    throttling: Penalty,
    paused_until: f64,
    bucket: Bucket,
    /// The caps and budgets, counted durably.
    limits: Limits,
    demand: Demand,
    sent: RateMeter,
    updated_at: f64,
    /// Nodes this one shares the gateway with while the shared state is out
    /// of reach (1 otherwise): each send counts that many times and the
    /// bucket runs at the ceiling divided by it (see `shared`).
    share: u64,
    /// Cluster mode: the shared state refused a bulk send until then (bulk
    /// keeps to its share across nodes); transactional mail goes on.
    bulk_held_until: f64,
    /// Cluster mode: per receiver and class (`AppClass as usize`), the
    /// shared state said that receiver's budgets are full until then; mail
    /// to the other receivers goes on.
    receiver_held_until: Vec<[f64; 2]>,
    /// `mode = "observe"`: the ceiling and the budgets are computed but
    /// hold nothing (the caps and the gateway's pauses still do), until
    /// `observe_until` of history, when this turns false by itself.
    observing: bool,

    deferrals: [u64; DeferReason::ALL.len()],
    changes: Vec<CeilingChange>,
}

impl GatewayModel {
    /// The shaping parameters this model runs on.
    pub fn config(&self) -> &ShapingConfig {
        &self.config
    }

    /// The backoff settings the shared state applies when this node hears
    /// throttling: (backoff_factor, backoff_pause and backoff_recovery in
    /// seconds).
    pub fn backoff(&self) -> (f64, f64, f64) {
        (
            self.config.backoff_factor,
            self.config.backoff_pause.as_secs_f64(),
            self.config.backoff_recovery.as_secs_f64(),
        )
    }

    /// A gateway with no history: the baseline is `initial_rate`.
    pub fn new(config: &ShapingConfig, now: f64) -> GatewayModel {
        let baseline = Baseline {
            rate: config.initial_rate,
            growth_per_day: config.warmup,
            half_life: config.baseline_half_life.as_secs_f64(),
            floor: config.min_rate / config.headroom,
        };
        let mut model = GatewayModel {
            baseline,
            penalty: 1.0,
            throttling: Penalty::new(config.backoff_factor, config.backoff_recovery.as_secs_f64()),
            paused_until: 0.0,
            bucket: Bucket::new(1.0, 1, now),
            limits: Limits::new(config, now),
            demand: Demand::new(RateMeter::new(RATE_WINDOW, 12)),
            sent: RateMeter::new(RATE_WINDOW, 12),
            updated_at: now,
            share: 1,
            bulk_held_until: 0.0,
            receiver_held_until: Vec::new(),
            observing: config.mode == ShapingMode::Observe,
            deferrals: [0; DeferReason::ALL.len()],
            changes: Vec::new(),
            config: config.clone(),
        };
        model.bucket = Bucket::new(model.bucket_rate(), config.burst, now);
        model
    }

    /// A gateway with the history in `state`, saved `now - saved_at`
    /// seconds ago: the baseline fades for that time; the throttling
    /// penalty goes on where it stood (an open episode stays open until the
    /// gateway accepts, a recovery keeps its ramp; a file from before the
    /// phase was saved recovers from the save, see `penalty`); cap counts
    /// are kept as saved (they include the reserve).
    pub fn restore(config: &ShapingConfig, state: &SavedState, now: f64) -> GatewayModel {
        let mut model = GatewayModel::new(config, now);
        model.baseline.rate = state.baseline.max(model.baseline.floor);
        let (factor, recovery) = (config.backoff_factor, config.backoff_recovery.as_secs_f64());
        model.throttling = match state.penalty_phase {
            Some(phase) => Penalty::in_phase(factor, recovery, phase),
            None => Penalty::restored(factor, recovery, state.penalty, state.saved_at.min(now)),
        };
        model.penalty = model.throttling.at(now);
        model.paused_until = state.paused_until;
        model.baseline.update(0.0, now - state.saved_at);
        model.limits = Limits::restore(config, state, now);
        model.bucket = Bucket::new(model.bucket_rate(), config.burst, now);
        model
    }

    /// The rate sends may reach now.
    pub fn ceiling(&self) -> f64 {
        (self.baseline.rate * self.config.headroom * self.penalty)
            .clamp(self.config.min_rate, self.config.max_rate)
    }

    /// The rate this node's bucket aims at: the ceiling, or this node's
    /// share of it.
    fn bucket_rate(&self) -> f64 {
        self.ceiling() / self.share as f64
    }

    /// The rate the token bucket enforces: the ceiling, within the 5% a
    /// ceiling may move before the bucket is rebuilt.
    pub fn enforced_rate(&self) -> f64 {
        self.bucket.rate
    }

    /// Units a message with `recipients` recipients counts against the caps.
    pub fn units(&self, recipients: usize) -> u64 {
        match self.config.count {
            CountUnit::Messages => 1,
            CountUnit::Recipients => recipients as u64,
        }
    }

    /// A message was accepted (the demand rate); `fingerprints` are its
    /// envelope's, so an offer deferred before is not counted twice.
    pub fn accepted<I: IntoIterator<Item = u64>>(
        &mut self,
        now: f64,
        fingerprints: impl FnOnce() -> I,
    ) {
        self.demand.accepted(now, fingerprints);
    }

    /// True while `mode = "observe"` holds (see `observing`).
    pub fn observing(&self) -> bool {
        self.observing
    }

    /// Ceiling changes since the last call, for the log.
    pub fn take_changes(&mut self) -> Vec<CeilingChange> {
        std::mem::take(&mut self.changes)
    }

    /// Volume budgets that became full since the last call, for the log.
    pub fn take_budget_events(&mut self) -> Vec<BudgetReached> {
        self.limits.take_budget_events()
    }

    /// Re-learns the baseline from the send rate and moves the ceiling.
    pub fn update(&mut self, now: f64) {
        let elapsed = now - self.updated_at;
        if elapsed < UPDATE_INTERVAL {
            return;
        }
        self.updated_at = now;
        if self.observing
            && self.config.observe_until.is_some_and(|until| {
                self.limits.history_minutes(now) as f64 * 60.0 >= until.as_secs_f64()
            })
        {
            self.observing = false;
        }
        let before = (self.baseline.rate, self.penalty);
        let observed = self.sent.rate(now);
        self.baseline.update(observed, elapsed);
        self.penalty = self.throttling.at(now);
        let cause = if self.penalty > before.1 {
            Cause::Recovery
        } else if self.baseline.rate >= before.0 {
            Cause::WarmUp
        } else {
            Cause::Fade
        };
        self.rebuild_if_moved(now, cause);
    }

    fn rebuild_if_moved(&mut self, now: f64, cause: Cause) {
        let ceiling = self.bucket_rate();
        let current = self.bucket.rate;
        if (ceiling - current).abs() > REBUILD_THRESHOLD * current {
            self.bucket = self.bucket.rebuilt(ceiling, self.config.burst, now);
            self.changes.push(CeilingChange {
                from: current,
                to: ceiling,
                cause,
            });
        }
    }

    /// May a message of `class` counting `units` to `receiver` (its index
    /// in `ShapingConfig::receivers`; `None`: a receiver not budgeted) be
    /// sent now? On `Send` it is counted as sent.
    pub fn try_send(
        &mut self,
        now: f64,
        units: u64,
        class: AppClass,
        receiver: Option<usize>,
    ) -> Decision {
        self.update(now);
        let units = self.counted(units);
        if now < self.paused_until {
            return Decision::Wait(self.paused_until - now);
        }
        if class == AppClass::Bulk && now < self.bulk_held_until {
            return Decision::Wait(self.bulk_held_until - now);
        }
        if let Some(until) = receiver
            .and_then(|receiver| self.receiver_held_until.get(receiver))
            .map(|until| until[class as usize])
            .filter(|until| now < *until)
        {
            return Decision::WaitReceiver(until - now);
        }
        // Observing: the ceiling and the budgets are computed, not held to.
        match self
            .limits
            .wait(now, units, class, receiver, self.observing)
        {
            Some(LimitWait::Gateway(wait)) => return Decision::Wait(wait),
            Some(LimitWait::Receiver(wait)) => return Decision::WaitReceiver(wait),
            None => {}
        }
        if self.limits.needs_save(units) {
            return Decision::Save;
        }
        if !self.observing
            && let Err(wait) = self.bucket.take(now)
        {
            return Decision::Wait(wait);
        }
        self.limits.add(now, units, class, receiver);
        self.sent.add(now, 1.0);
        Decision::Send
    }

    /// A gateway reply that signals throttling: pause `backoff_pause`, and
    /// when it opens an episode, cut the ceiling by `backoff_factor`, never
    /// under `min_rate` (see `penalty`). Signals during a pause change
    /// nothing; after it, before the gateway accepted again, they pause
    /// again without a cut. Returns true for a cut (the other nodes hear
    /// of it).
    pub fn throttled(&mut self, now: f64) -> bool {
        if now < self.paused_until {
            return false;
        }
        self.update(now);
        let floor = self.config.min_rate / (self.baseline.rate * self.config.headroom);
        let cut = self.throttling.throttled(now, floor);
        self.penalty = self.throttling.at(now);
        self.paused_until = now + self.config.backoff_pause.as_secs_f64();
        self.rebuild_if_moved(now, Cause::Throttled);
        cut
    }

    /// The gateway accepted mail: after a throttling pause, the episode
    /// ends and the ceiling climbs back within `backoff_recovery`.
    pub fn gateway_accepted(&mut self, now: f64) {
        if now >= self.paused_until && self.throttling.in_episode() {
            self.throttling.accepted(now);
        }
    }

    /// The gateway says its sending quota is used up: hold everything until
    /// the longest cap window has passed (one hour without caps). Returns
    /// the hold in seconds.
    pub fn quota_exhausted(&mut self, now: f64) -> f64 {
        let hold = self.limits.longest_window().max(3_600.0);
        self.paused_until = self.paused_until.max(now + hold);
        hold
    }

    /// Seconds left of a pause the gateway asked for (throttling, quota).
    pub fn pause_left(&self, now: f64) -> f64 {
        (self.paused_until - now).max(0.0)
    }

    /// An operator ends the gateway's pause on purpose (`queue unpause`);
    /// a throttling cut stays and recovers as it would. Returns the
    /// seconds the pause had left.
    pub fn end_pause(&mut self, now: f64) -> f64 {
        let left = self.pause_left(now);
        self.paused_until = self.paused_until.min(now);
        left
    }

    /// How long new mail would wait here, and what for: held mail is
    /// accepted and released along the rule, so a wait is a refusal only
    /// beyond the lane's bound (`Offer::max_delay`), with `max_queued`
    /// messages queued, or for a message no budget can ever pass. Counts a
    /// deferral, and a deferred offer's demand (once per envelope).
    pub fn admit(&mut self, now: f64, offer: &Offer) -> Result<Projection, Deferral> {
        self.update(now);
        let Offer {
            ahead,
            ahead_units,
            queued_messages,
            queued_units,
            units,
            class,
            fingerprint,
            max_delay: bound,
            ref receivers,
        } = *offer;
        if let Some(biggest) = self.limits.biggest(now, class)
            && units > biggest
        {
            // More than the budgets could ever let through in one message:
            // the client sends the rest in another transaction.
            self.deferrals[DeferReason::Recipients as usize] += 1;
            return Err(Deferral {
                reason: DeferReason::Recipients,
                projected_wait: f64::INFINITY,
                retry_after: 0.0,
            });
        }
        let mut projection = self.project(now, ahead, ahead_units, queued_units, units, class);
        if !self.observing {
            let pause = (self.paused_until - now).max(0.0);
            for part in receivers {
                if let Some(held) = self.limits.receiver_wait_behind(
                    now,
                    Some(part.receiver),
                    part.ahead_units * self.share,
                    part.units * self.share,
                    class,
                ) && pause + held.wait > projection.wait
                {
                    projection = Projection {
                        wait: pause + held.wait,
                        reason: DeferReason::receiver_budget(held.horizon),
                    };
                }
            }
        }
        let deferral = if queued_messages >= self.config.max_queued {
            Some(Deferral {
                reason: DeferReason::QueueFull,
                projected_wait: projection.wait,
                // Room comes as the queue's first messages leave, whatever
                // the app would wait.
                retry_after: 1.0 / self.bucket_rate(),
            })
        } else if projection.wait > bound {
            Some(Deferral {
                reason: projection.reason,
                projected_wait: projection.wait,
                retry_after: if projection.wait.is_finite() {
                    projection.wait - bound
                } else {
                    // No room in sight (a message bigger than the allowance
                    // could ever grow to): come back in a day.
                    86_400.0
                },
            })
        } else {
            None
        };
        match deferral {
            Some(mut deferral) => {
                deferral.retry_after = deferral.retry_after.max(60.0);
                self.deferrals[deferral.reason as usize] += 1;
                // Remembered long enough to count a retry once, and no
                // longer than a day past it (the bound may be days).
                self.demand.deferred(
                    now,
                    fingerprint,
                    now + deferral.retry_after + bound.min(DAY),
                );
                Err(deferral)
            }
            None => Ok(projection),
        }
    }

    /// The wait of one message of `class` behind `ahead` messages counting
    /// `ahead_units` (see `Scheduler::view`'s drain).
    pub fn projection(
        &mut self,
        now: f64,
        ahead: usize,
        ahead_units: u64,
        class: AppClass,
    ) -> Projection {
        self.update(now);
        let units = self.units(1);
        self.project(now, ahead, ahead_units, ahead_units, units, class)
    }

    /// The wait of one message to `receiver` behind `ahead_units` units
    /// queued to it (as bulk mail waits), for that receiver's budgets;
    /// `None` when they do not hold it (observing, or not enforced yet).
    pub fn receiver_projection(
        &mut self,
        now: f64,
        receiver: usize,
        ahead_units: u64,
    ) -> Option<Projection> {
        self.update(now);
        if self.observing {
            return None;
        }
        let pause = (self.paused_until - now).max(0.0);
        let (share, units) = (self.share, self.units(1));
        self.limits
            .receiver_wait_behind(
                now,
                Some(receiver),
                ahead_units * share,
                units * share,
                AppClass::Bulk,
            )
            .map(|held| Projection {
                wait: pause + held.wait,
                reason: DeferReason::receiver_budget(held.horizon),
            })
    }

    /// The wait of new mail behind `ahead` messages (`ahead_units` of them
    /// for the budgets, `queued_units` for the caps), and the part of the
    /// shaping that sets it: the longest of the minute ceiling (with a
    /// throttling pause), the caps and the hour and day budgets.
    fn project(
        &mut self,
        now: f64,
        ahead: usize,
        ahead_units: u64,
        queued_units: u64,
        units: u64,
        class: AppClass,
    ) -> Projection {
        let pause = (self.paused_until - now).max(0.0);
        // Observing, only the pause and the caps hold mail.
        let ceiling = if self.observing {
            0.0
        } else {
            (ahead + 1) as f64 / self.bucket_rate()
        };
        let mut longest = Projection {
            wait: pause + ceiling,
            reason: DeferReason::QueueDelay,
        };
        let share = self.share;
        let cap_wait = self
            .limits
            .cap_wait_behind(now, queued_units * share, units * share);
        if cap_wait > longest.wait {
            longest = Projection {
                wait: cap_wait,
                reason: DeferReason::Cap,
            };
        }
        if !self.observing
            && let Some(held) =
                self.limits
                    .budget_wait_behind(now, ahead_units * share, units * share, class)
            && pause + held.wait > longest.wait
        {
            longest = Projection {
                wait: pause + held.wait,
                reason: DeferReason::budget(held.horizon),
            };
        }
        longest
    }

    /// The gateway's `max_queue_delay` (an app may set its own).
    pub fn max_queue_delay(&self) -> std::time::Duration {
        self.config.max_queue_delay
    }

    /// What a send of `units` counts in the caps and budgets now (its
    /// units, times this node's share while the shared state is lost).
    pub fn counted(&self, units: u64) -> u64 {
        units * self.share
    }

    /// Runs on this node's share of the gateway (`nodes` nodes sharing
    /// it while the shared state is out of reach), or on all of it again
    /// (`nodes = 1`).
    pub fn set_share(&mut self, now: f64, nodes: u64) {
        let nodes = nodes.max(1);
        if nodes != self.share {
            self.share = nodes;
            self.rebuild_if_moved(now, Cause::Share);
        }
    }

    /// The shared state refused a bulk send until `until`: bulk lanes wait
    /// (passing their turns on), transactional ones do not.
    pub fn hold_bulk(&mut self, until: f64) {
        self.bulk_held_until = self.bulk_held_until.max(until);
    }

    /// The shared state refused a send of `class` to `receiver` for that
    /// receiver's budgets alone, until `until`: that receiver's mail of the
    /// class waits (transactional mail refused: its bulk mail too, which
    /// has less room), the other receivers' goes on.
    pub fn hold_receiver(&mut self, receiver: usize, class: AppClass, until: f64) {
        if self.receiver_held_until.len() <= receiver {
            self.receiver_held_until.resize(receiver + 1, [0.0; 2]);
        }
        let held = &mut self.receiver_held_until[receiver];
        held[class as usize] = held[class as usize].max(until);
        if class == AppClass::Transactional {
            let bulk = AppClass::Bulk as usize;
            held[bulk] = held[bulk].max(until);
        }
    }

    /// Other nodes sent this to the gateway (cluster mode), learned at
    /// `now`: it counts in the caps, the total's budgets and each
    /// receiver's as if sent now (a little later than it was, so it stays
    /// counted a little longer) and in the send rate the baseline learns
    /// from.
    pub fn sent_elsewhere(&mut self, now: f64, sent: &Elsewhere) {
        if sent.is_empty() {
            return;
        }
        self.update(now);
        self.sent.add(now, sent.messages as f64);
        self.limits.add_elsewhere(now, sent);
    }

    /// A send counted at `at` did not happen after all (the shared state
    /// refused it): the units it counted (`counted`: its units times the
    /// share in force when it was counted, see [`GatewayModel::counted`])
    /// are taken back from the caps and budgets and return to the reserve.
    /// The bucket keeps the token it gave, which only slows this node.
    pub fn refund(&mut self, at: f64, counted: u64, class: AppClass, receiver: Option<usize>) {
        self.sent.add(at, -1.0);
        self.limits.remove(at, counted, class, receiver);
    }

    /// The gateway's feedback as the shared state holds it: a pause or a
    /// penalty another node heard counts here too.
    pub fn shared_feedback(&mut self, now: f64, feedback: &SharedFeedback) {
        if feedback.pause_left > 0.0 {
            self.paused_until = self.paused_until.max(now + feedback.pause_left);
        }
        let floor = self.config.min_rate / (self.baseline.rate * self.config.headroom);
        // The shared penalty recovers from the end of the shared pause.
        let since = now + feedback.pause_left;
        self.update(now);
        if self.throttling.adopt(now, feedback.penalty, since, floor) {
            self.penalty = self.throttling.at(now);
            self.rebuild_if_moved(now, Cause::Throttled);
        }
    }

    /// The busiest windows this node has seen, of the total and of each
    /// receiver (cluster mode heartbeats; see `Volume::busiest`).
    pub fn busiest(&mut self, now: f64) -> Busiest {
        self.limits.busiest(now)
    }

    /// What the other nodes have seen of the busiest windows, the total's
    /// and each receiver's (see `Volume::learn_busiest`).
    pub fn learn_busiest(&mut self, now: f64, elsewhere: &Busiest) {
        self.limits.learn_busiest(now, elsewhere);
    }

    /// What one send must fit in the shared state, as this model sees the
    /// gateway at `now`.
    pub fn shared_limits(&mut self, now: f64) -> SharedLimits {
        self.update(now);
        SharedLimits {
            rate: self.bucket.rate,
            burst: self.config.burst,
            budgets: self.limits.shared_budgets(now),
            caps: self.limits.shared_caps(),
        }
    }

    /// What a send to `receiver` must fit in the shared state besides
    /// [`GatewayModel::shared_limits`]: the receiver's name and budgets
    /// (`None`: a receiver not budgeted).
    pub fn shared_receiver(&mut self, now: f64, receiver: Option<usize>) -> Option<SharedReceiver> {
        self.update(now);
        let enforce = !self.observing;
        self.limits.shared_receiver(now, receiver, enforce)
    }

    /// The name of `receiver`, when the gateway budgets it.
    pub fn receiver_name(&self, receiver: Option<usize>) -> Option<&str> {
        self.limits.receiver_name(receiver)
    }

    /// This model's counts of the current windows (see
    /// [`Limits::window_counts`]).
    pub fn window_counts(&mut self, now: f64) -> WindowCounts {
        self.limits.window_counts(now)
    }

    /// The numbers of the model at `now`.
    pub fn view(&mut self, now: f64) -> ModelView {
        self.update(now);
        let demand_rate = self.demand.rate(now);
        ModelView {
            baseline: self.baseline.rate,
            ceiling: self.ceiling(),
            demand_rate,
            send_rate: self.sent.rate(now),
            burst_ratio: demand_rate / self.baseline.rate,
            penalty: self.penalty,
            penalty_phase: self.throttling.phase(now),
            mode: if self.observing {
                ShapingMode::Observe
            } else {
                ShapingMode::Enforce
            },
            recovery_left: (self.paused_until - now).max(0.0) + self.throttling.left(now),
            paused_for: (self.paused_until - now).max(0.0),
            deferrals: self.deferrals,
            budgets: self.limits.view(now),
            receivers: self.limits.receiver_view(now),
        }
    }

    /// The state to save. Its cap counts include `reserve` units more than
    /// sent, so a crash after the save can never forget a send; call
    /// [`GatewayModel::saved`] once the state is on disk.
    pub fn snapshot(&mut self, now: f64, reserve: u64) -> SavedState {
        let counts = self.limits.snapshot(now, reserve);
        SavedState {
            saved_at: now,
            baseline: self.baseline.rate,
            penalty: self.penalty,
            penalty_phase: Some(self.throttling.phase_now()),
            paused_until: self.paused_until,
            caps: counts.caps,
            volume: counts.volume,
            receivers: counts.receivers,
            history: None,
            held: false,
            nodes_seen: Default::default(),
        }
    }

    /// The snapshot taken with `reserve` is on disk: sends may use what of
    /// the reserve the sends since the snapshot left.
    pub fn saved(&mut self, reserve: u64) {
        self.limits.saved(reserve);
    }

    /// A save that writes nothing (see [`Limits::assume_saved`]): the
    /// simulator's, where a snapshot would only be thrown away.
    pub fn assume_saved(&mut self) {
        let reserve = self.reserve();
        self.limits.assume_saved(reserve);
    }

    /// The reserve worth saving ahead (see [`Limits::reserve`]).
    pub fn reserve(&self) -> u64 {
        self.limits.reserve()
    }
}

#[cfg(test)]
mod tests;
