//! `smtp-shaper simulate`: replays a traffic trace through the shaping code
//! the relay runs (`shaper::Scheduler` and `GatewayModel`) in virtual time,
//! so days of traffic take seconds, and reports what the apps would see.
//!
//! The replay is pure: arrivals go through admission (a deferred message is
//! offered again by its app after `retry_after`, as an MTA would), accepted
//! ones queue in their app's lane, and the scheduler releases them when the
//! model allows. Nothing is sent anywhere and no gateway answers, so
//! feedback from the gateway is not part of a replay.

mod by_receiver;
mod plot;
mod receiver;
mod trace;

pub use by_receiver::ReceiverReport;
pub use plot::render_svg;
pub use receiver::{Judge, Rule, Verdict};
pub use trace::{Arrival, parse_mx_map, parse_trace};

use std::collections::BinaryHeap;

use crate::config::{Config, GatewayConfig};
use crate::history::History;
use crate::policy::Apps;
use crate::policy::receivers::Receivers;
use crate::shaper::gate::{Gate, Route};
use crate::shaper::shared::Elsewhere;
use crate::shaper::store::MemoryStore;
use crate::shaper::{ClassCounts, DeferReason, GatewayModel, Release, Scheduler};
use crate::shaper::{Horizon, ShapingConfig};

const DAY: f64 = 86_400.0;
/// How long an app keeps offering a deferred message before giving up.
const GIVE_UP_AFTER: f64 = 5.0 * DAY;
/// Points on the plot's time axis, at most.
const PLOT_POINTS: f64 = 800.0;

/// How to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds after a 451 until the app offers the message again.
    pub retry_after: f64,
    /// Sidecars the trace is spread over (round robin), sharing the
    /// gateway's budget as in cluster mode, through the cluster gate the
    /// relay runs (`shaper::gate`) on the in-memory store
    /// (`shaper::store::MemoryStore` stands in for Redis). 1: one
    /// smtp-shaper, no shared state.
    pub nodes: usize,
    /// The gateway's history before the trace (`--history`): moved in time
    /// so that its last entry falls where the gateway's model is made, an
    /// hour before the trace's first arrival, and learned as `learn` would.
    pub history: Option<History>,
    /// MX hosts per recipient domain (`--mx-map`), for a trace that names
    /// domains: a domain no receiver names by itself is the receiver of
    /// its MX hosts.
    pub mx: std::collections::HashMap<String, Vec<String>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            retry_after: 600.0,
            nodes: 1,
            history: None,
            mx: Default::default(),
        }
    }
}

/// One point of the plot: counts over `[start, start + span)`, levels at its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub start: f64,
    pub span: f64,
    pub arrived: u64,
    pub sent: u64,
    pub deferred: u64,
    /// Messages per second at the end of the span.
    pub ceiling: f64,
    pub baseline: f64,
    pub queued: usize,
    /// Per [`Horizon`]: units sent in the rolling window ending here, and
    /// what the volume rule allowed there (judged on the shaped output).
    pub window_sent: [u64; 2],
    pub window_allowed: [u64; 2],
    /// Per budgeted receiver (`Report::receiver_names` order): units it
    /// was sent in the rolling day ending here, and its allowance there.
    pub receivers: Vec<[u64; 2]>,
}

/// One day of the trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Day {
    pub arrived: u64,
    pub sent: u64,
    pub deferred: u64,
    /// Queue delays (seconds) of the messages sent that day, sorted.
    pub delays: Vec<f64>,
}

/// The most sent in any window of `window` seconds against what the
/// ceiling allowed there (ceiling x window + burst).
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    pub window: f64,
    pub most_sent: usize,
    pub allowed: f64,
    /// The largest count above what was allowed in any window (0 is right).
    pub excess: f64,
}

/// One message sent, for `--sent-log`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentRecord {
    /// The message's row in the trace (0 is the first).
    pub id: u64,
    /// Trace seconds.
    pub at: f64,
    pub lane: usize,
    pub recipients: u32,
    /// Seconds from its first offer (deferrals included) to its sending.
    pub delay: f64,
    /// Seconds from its acceptance to its sending: held in the queue.
    pub held: f64,
}

/// One window length of the receiver's view: the worst moment of what the
/// gateway sent, and of what the apps offered (unshaped), under the rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverView {
    pub horizon: Horizon,
    /// Whether the gateway's shaping budgets this horizon (`min_rate`).
    pub budgeted: bool,
    pub rule: Rule,
    pub shaped: Verdict,
    pub offered: Verdict,
}

/// One app's share of a replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppStats {
    pub name: String,
    pub offered: usize,
    pub sent: usize,
    /// Messages deferred at least once.
    pub deferred_messages: usize,
    /// Queue delays (seconds) of its sent messages, sorted: held, from
    /// acceptance to sending.
    pub delays: Vec<f64>,
    /// Seconds from each sent message's first offer to its sending, sorted:
    /// the queue delay plus the time its app spent retrying after 451s, what
    /// the app's user waits (`--sent-log`'s `delay`).
    pub from_offer: Vec<f64>,
}

/// What a replay produced.
#[derive(Debug, Clone)]
pub struct Report {
    pub gateway: String,
    /// `--history`: where it came from and the span it covered.
    pub history: Option<String>,
    /// Sidecars the trace was spread over (`Options::nodes`).
    pub nodes: usize,
    pub messages: usize,
    pub sent: usize,
    /// Messages whose app gave up after `GIVE_UP_AFTER` of deferrals.
    pub given_up: usize,
    /// Deferrals (451 replies) by reason, in `DeferReason::ALL` order.
    pub deferrals: [u64; DeferReason::ALL.len()],
    /// Per app lane, `other` last.
    pub apps: Vec<AppStats>,
    /// Queue delay (seconds) of every sent message, sorted.
    pub delays: Vec<f64>,
    /// Seconds from first offer to sending of every sent message, sorted
    /// (as [`AppStats::from_offer`]).
    pub from_offer: Vec<f64>,
    /// Per day from `day_origin`, the midnight (of the trace's clock) before
    /// its first message.
    pub days: Vec<Day>,
    pub day_origin: f64,
    pub peaks: Vec<Peak>,
    pub samples: Vec<Sample>,
    pub burst: u32,
    /// The hour and the day as a receiver judges them.
    pub receiver: Vec<ReceiverView>,
    /// Every message sent, in order.
    pub sent_log: Vec<SentRecord>,
    /// Per trace row, its receiver (all `None` when the trace names no
    /// domain).
    pub row_receivers: Vec<Option<String>>,
    /// What each receiver the trace reaches sees (empty when the trace
    /// names no domain).
    pub receivers: Vec<ReceiverReport>,
    /// The gateway's budgeted receivers, in the order of its rules (the
    /// samples' `receivers`).
    pub receiver_names: Vec<String>,
}

/// A message in the replay.
struct Offer {
    /// Its number in the trace: its envelope's fingerprint in the demand.
    id: u64,
    /// The node (sidecar) its app replica sends to.
    node: usize,
    /// When the app first offered it.
    first: f64,
    lane: usize,
    /// Its receiver's index in the gateway's receiver rules (`None`: one
    /// not budgeted, or a trace without domains).
    receiver: Option<usize>,
    recipients: u32,
    deferred: bool,
}

/// One sidecar of the replay.
struct Node {
    scheduler: Scheduler<Offer>,
    /// When it may release next (infinite: when mail arrives).
    release_at: f64,
    /// The others' totals at its latest reading.
    seen: Elsewhere,
    /// With several nodes: its standing with the shared state, and the
    /// stand-in for Redis.
    shared: Option<(Gate, MemoryStore)>,
}

impl Node {
    /// Takes in what the others sent since the last reading, as a reply
    /// of the shared state tells a node.
    fn absorb(&mut self, now: f64, others: Elsewhere) {
        let sent = others.since(&self.seen);
        self.seen = others;
        self.scheduler.model_mut().sent_elsewhere(now, &sent);
    }

    /// The next message this node sends at `now` (with its lane and how
    /// long it waited), granted by the shared state when there is one;
    /// `None` once nothing more may go now (`release_at` says when).
    fn next_send(&mut self, now: f64) -> Option<(Offer, usize, f64)> {
        loop {
            if let Some((_, store)) = &self.shared {
                let others = store.others();
                self.absorb(now, others);
            }
            match self.scheduler.next(now) {
                Release::Send {
                    waited,
                    lane,
                    receiver,
                    item,
                    ..
                } => {
                    if let Some((gate, store)) = &mut self.shared {
                        let units = self.scheduler.model().units(item.recipients as usize);
                        let scheduler = &mut self.scheduler;
                        if let Route::Propose(proposal) =
                            gate.route(scheduler, now, (lane, receiver), units)
                        {
                            let verdict = store.acquire(now, &proposal);
                            if !verdict.granted {
                                let counted = scheduler.model().counted(units);
                                scheduler.put_back(
                                    now,
                                    (lane, receiver),
                                    waited,
                                    (units, counted),
                                    item,
                                );
                                let refused = (proposal.class, receiver);
                                match gate.refused(scheduler, now, refused, &verdict) {
                                    // Bulk, or the receiver's mail, waits;
                                    // the rest goes on.
                                    None => continue,
                                    Some(until) => {
                                        self.release_at = until;
                                        return None;
                                    }
                                }
                            }
                            gate.granted();
                        }
                    }
                    return Some((item, lane, waited));
                }
                Release::Wait(seconds) => {
                    // Strictly later, even where seconds vanish in rounding.
                    self.release_at = (now + seconds).max(now.next_up());
                    return None;
                }
                // Nothing is written in a replay: the reserve as if saved.
                Release::Save => self.scheduler.model_mut().assume_saved(),
                Release::Idle => return None,
            }
        }
    }
}

/// A deferred message its app offers again at `due`.
struct Retry {
    due: f64,
    offer: Offer,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        self.due.total_cmp(&other.due).is_eq()
    }
}

impl Eq for Retry {}

impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Retry {
    /// Reversed, so the max-heap yields the earliest first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.total_cmp(&self.due)
    }
}

/// The day `at` falls in, growing `days` when the replay runs past the trace.
fn day(days: &mut Vec<Day>, origin: f64, at: f64) -> &mut Day {
    let index = ((at - origin) / DAY).floor().max(0.0) as usize;
    if index >= days.len() {
        days.resize(index + 1, Day::default());
    }
    &mut days[index]
}

/// Replays `trace` (sorted, as `parse_trace` returns it) through the shaping
/// of `gateway` (an index into `config.gateways`).
pub fn replay(config: &Config, gateway: usize, trace: &[Arrival], options: &Options) -> Report {
    let gateway_config: &GatewayConfig = &config.gateways[gateway];
    let mut replay = Replay::new(config, gateway_config, trace, options);
    loop {
        replay.offer_due();
        replay.release_due();
        replay.spread_news();
        replay.sample_due();
        if !replay.advance() {
            break;
        }
    }
    replay.finish(&gateway_config.shaping, trace)
}

/// `history` moved in time to end in the minute of `created` (whole
/// minutes, so each minute keeps its count).
fn moved(history: &History, created: f64) -> History {
    let last = history.counts.last.unwrap_or(created);
    let shift = (created / 60.0).floor() as i64 - (last / 60.0).floor() as i64;
    let mut moved = history.clone();
    let shifted = |minutes: &std::collections::BTreeMap<i64, crate::history::Minute>| {
        minutes
            .iter()
            .map(|(minute, count)| (minute + shift, *count))
            .collect()
    };
    moved.counts.minutes = shifted(&history.counts.minutes);
    moved.counts.receivers = history
        .counts
        .receivers
        .iter()
        .map(|(receiver, minutes)| (receiver.clone(), shifted(minutes)))
        .collect();
    let seconds = shift as f64 * 60.0;
    moved.counts.first = history.counts.first.map(|first| first + seconds);
    moved.counts.last = history.counts.last.map(|last| last + seconds);
    moved
}

/// A gateway's model made at `created`: with no history, or learned from
/// `history` (already [`moved`] to end then) as `learn` would.
fn model(shaping: &ShapingConfig, history: Option<&History>, created: f64) -> GatewayModel {
    let learned = history.and_then(|history| {
        crate::history::learn::learned_state(shaping, history, None, false, created).ok()
    });
    match learned {
        Some(state) => GatewayModel::restore(shaping, &state, created),
        None => GatewayModel::new(shaping, created),
    }
}

/// The history's sends as the receiver saw them: each minute's units in the
/// middle of it.
fn history_sends(history: Option<&History>, shaping: &ShapingConfig) -> Vec<(f64, u64)> {
    history.map_or_else(Vec::new, |history| {
        sends_of(&history.counts.minutes, shaping)
    })
}

/// One series of history minutes as sends (mid-minute, in the gateway's
/// `count` unit).
fn sends_of(
    minutes: &std::collections::BTreeMap<i64, crate::history::Minute>,
    shaping: &ShapingConfig,
) -> Vec<(f64, u64)> {
    minutes
        .iter()
        .map(|(minute, count)| {
            let units = match shaping.count {
                crate::shaper::CountUnit::Messages => count.messages,
                crate::shaper::CountUnit::Recipients => count.recipients,
            };
            (*minute as f64 * 60.0 + 30.0, units)
        })
        .collect()
}

/// A replay under way: the sidecars, the offers still to come, and the
/// report so far.
struct Replay<'t> {
    options: &'t Options,
    /// The apps' lanes, `other` last.
    names: Vec<String>,
    /// The receivers the trace's domains roll up to.
    receivers: Receivers,
    /// Per trace row, its receiver's index in the gateway's receiver rules.
    row_budgets: Vec<Option<usize>>,
    /// The trace's last arrival.
    end: f64,
    /// When the gateway's model was made.
    created: f64,
    /// The history before it (`--history`), moved to end then.
    history: Option<History>,
    nodes: Vec<Node>,
    report: Report,
    /// Every send with the bucket's rate in force then, for the window check.
    sends: Vec<(f64, f64)>,
    retries: BinaryHeap<Retry>,
    arrivals: std::iter::Peekable<std::slice::Iter<'t, Arrival>>,
    /// The plot's point being counted.
    sample: Sample,
    now: f64,
    next_id: u64,
}

impl<'t> Replay<'t> {
    fn new(
        config: &Config,
        gateway_config: &GatewayConfig,
        trace: &'t [Arrival],
        options: &'t Options,
    ) -> Replay<'t> {
        let apps = Apps::new(&config.apps);
        let names = apps.names();
        let start = trace.first().map_or(0.0, |arrival| arrival.at);
        let end = trace.last().map_or(0.0, |arrival| arrival.at);
        // The gateway exists, idle, an hour before the trace: its bucket is full.
        let created = start - 3_600.0;
        let history = options
            .history
            .as_ref()
            .map(|history| moved(history, created));
        let receivers = Receivers::new(&config.receivers);
        let row_receivers = by_receiver::receivers_of_rows(trace, &receivers, &options.mx);
        let rules = &gateway_config.shaping.receivers;
        let row_budgets = row_receivers
            .iter()
            .map(|name| {
                let name = name.as_deref()?;
                rules.iter().position(|rule| rule.name == name)
            })
            .collect();
        let count = options.nodes.max(1);
        let mut nodes: Vec<Node> = (0..count)
            .map(|_| Node {
                scheduler: Scheduler::new(
                    model(&gateway_config.shaping, history.as_ref(), created),
                    apps.lanes(),
                ),
                release_at: f64::INFINITY,
                seen: Elsewhere::default(),
                shared: None,
            })
            .collect();
        if count > 1 {
            for (node, store) in nodes.iter_mut().zip(MemoryStore::cluster(count)) {
                node.shared = Some((Gate::connected(count as u64), store));
            }
        }
        let report = Report {
            gateway: gateway_config.name.clone(),
            history: options.history.as_ref().map(|history| {
                format!(
                    "{}, {:.1} days, moved to end an hour before the trace",
                    history.source,
                    history.counts.span() / DAY
                )
            }),
            nodes: count,
            messages: trace.len(),
            sent: 0,
            given_up: 0,
            deferrals: [0; DeferReason::ALL.len()],
            apps: names
                .iter()
                .map(|name| AppStats {
                    name: name.clone(),
                    ..AppStats::default()
                })
                .collect(),
            delays: Vec::with_capacity(trace.len()),
            from_offer: Vec::with_capacity(trace.len()),
            days: Vec::new(),
            day_origin: (start / DAY).floor() * DAY,
            peaks: Vec::new(),
            samples: Vec::new(),
            burst: gateway_config.shaping.burst,
            receiver: Vec::new(),
            sent_log: Vec::with_capacity(trace.len()),
            row_receivers,
            receivers: Vec::new(),
            receiver_names: gateway_config
                .shaping
                .receivers
                .iter()
                .map(|rule| rule.name.clone())
                .collect(),
        };
        Replay {
            options,
            names,
            receivers,
            row_budgets,
            end,
            created,
            history,
            nodes,
            report,
            sends: Vec::with_capacity(trace.len()),
            retries: BinaryHeap::new(),
            arrivals: trace.iter().peekable(),
            sample: Sample {
                start,
                span: ((end - start) / PLOT_POINTS).max(60.0),
                arrived: 0,
                sent: 0,
                deferred: 0,
                ceiling: 0.0,
                baseline: 0.0,
                queued: 0,
                window_sent: [0; 2],
                window_allowed: [0; 2],
                receivers: Vec::new(),
            },
            now: start,
            next_id: 0,
        }
    }

    /// The lane of `app`; an app not configured sends in `other`.
    fn lane_of(&self, app: &str) -> usize {
        self.names
            .iter()
            .position(|name| name == app)
            .unwrap_or(self.names.len() - 1)
    }

    /// Offers due now: new arrivals, and apps retrying after a 451.
    fn offer_due(&mut self) {
        while let Some(offer) = self.next_offer() {
            self.offer(offer);
        }
    }

    /// The next arrival due now, counted as it arrives, or else the next
    /// retry due.
    fn next_offer(&mut self) -> Option<Offer> {
        let now = self.now;
        if let Some(arrival) = self.arrivals.next_if(|arrival| arrival.at <= now) {
            day(&mut self.report.days, self.report.day_origin, arrival.at).arrived += 1;
            self.sample.arrived += 1;
            let lane = self.lane_of(&arrival.app);
            self.report.apps[lane].offered += 1;
            self.next_id += 1;
            Some(Offer {
                id: self.next_id - 1,
                node: (self.next_id - 1) as usize % self.nodes.len(),
                first: arrival.at,
                lane,
                receiver: self.row_budgets[(self.next_id - 1) as usize],
                recipients: arrival.recipients,
                deferred: false,
            })
        } else if self.retries.peek().is_some_and(|retry| retry.due <= now) {
            Some(self.retries.pop().expect("peeked").offer)
        } else {
            None
        }
    }

    /// Admission of `offer` by its node: queued, or deferred and offered
    /// again after `retry_after` unless its app gives up.
    fn offer(&mut self, mut offer: Offer) {
        let now = self.now;
        // The other nodes' queues count as ahead (their heartbeats).
        let elsewhere = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != offer.node)
            .fold(ClassCounts::default(), |sum, (_, node)| {
                sum.plus(node.scheduler.queued())
            });
        let node = &mut self.nodes[offer.node];
        let units = node.scheduler.model().units(offer.recipients as usize);
        let parts: Vec<(usize, u64)> = offer
            .receiver
            .map(|receiver| (receiver, units))
            .into_iter()
            .collect();
        match node
            .scheduler
            .admit(now, offer.lane, units, (elsewhere, &parts), offer.id)
        {
            Ok(_) => {
                node.scheduler.model_mut().accepted(now, || [offer.id]);
                node.scheduler
                    .push(now, offer.lane, offer.receiver, units, offer);
                node.release_at = now;
            }
            Err(deferral) => {
                let report = &mut self.report;
                if !offer.deferred {
                    offer.deferred = true;
                    report.apps[offer.lane].deferred_messages += 1;
                }
                report.deferrals[deferral.reason as usize] += 1;
                day(&mut report.days, report.day_origin, now).deferred += 1;
                self.sample.deferred += 1;
                let due = now + self.options.retry_after;
                if due - offer.first > GIVE_UP_AFTER {
                    report.given_up += 1;
                } else {
                    self.retries.push(Retry { due, offer });
                }
            }
        }
    }

    /// Releases the models (and, with nodes, the shared state) allow now.
    fn release_due(&mut self) {
        let now = self.now;
        for node in &mut self.nodes {
            if node.release_at > now {
                continue;
            }
            node.release_at = f64::INFINITY;
            while let Some((item, lane, waited)) = node.next_send(now) {
                let report = &mut self.report;
                report.sent_log.push(SentRecord {
                    id: item.id,
                    at: now,
                    lane,
                    recipients: item.recipients,
                    delay: now - item.first,
                    held: waited,
                });
                report.sent += 1;
                report.apps[lane].sent += 1;
                report.apps[lane].delays.push(waited);
                report.apps[lane].from_offer.push(now - item.first);
                report.delays.push(waited);
                report.from_offer.push(now - item.first);
                let today = day(&mut report.days, report.day_origin, now);
                today.sent += 1;
                today.delays.push(waited);
                self.sample.sent += 1;
                self.sends
                    .push((now, node.scheduler.model().enforced_rate()));
            }
        }
    }

    /// Every node hears what the others sent at once, as the live nodes do
    /// from their heartbeats within a second: news that came late would
    /// count as sent late and hold the window longer.
    fn spread_news(&mut self) {
        for node in &mut self.nodes {
            if let Some((_, store)) = &node.shared {
                let others = store.others();
                node.absorb(self.now, others);
            }
        }
    }

    /// The plot's next point, once its span is over.
    fn sample_due(&mut self) {
        let sample = &mut self.sample;
        let sample_end = sample.start + sample.span;
        if self.now >= sample_end {
            // Every node learns the same gateway: the first one speaks for it.
            let view = self.nodes[0].scheduler.view(sample_end);
            sample.ceiling = view.model.ceiling;
            sample.baseline = view.model.baseline;
            sample.queued = self.nodes.iter().map(|node| node.scheduler.len()).sum();
            sample.receivers = view
                .model
                .receivers
                .iter()
                .map(|receiver| {
                    receiver
                        .budgets
                        .iter()
                        .find(|budget| budget.horizon == Horizon::Day)
                        .map_or([0, 0], |day| [day.sent, day.allowance])
                })
                .collect();
            let next = Sample {
                start: sample_end,
                arrived: 0,
                sent: 0,
                deferred: 0,
                ..sample.clone()
            };
            self.report.samples.push(std::mem::replace(sample, next));
        }
    }

    /// Moves the clock on to the next offer, release or plot point; false
    /// when nothing is left to offer or send (the last point taken).
    fn advance(&mut self) -> bool {
        let next_offer = self
            .arrivals
            .peek()
            .map(|arrival| arrival.at)
            .into_iter()
            .chain(self.retries.peek().map(|retry| retry.due))
            .fold(f64::INFINITY, f64::min);
        let release_at = self
            .nodes
            .iter()
            .map(|node| node.release_at)
            .fold(f64::INFINITY, f64::min);
        let sample = &self.sample;
        if next_offer.is_infinite()
            && self.nodes.iter().all(|node| node.scheduler.is_empty())
            && self.now >= self.end
        {
            if sample.arrived + sample.sent + sample.deferred > 0 {
                self.report.samples.push(sample.clone());
            }
            return false;
        }
        self.now = next_offer
            .min(release_at)
            .min(sample.start + sample.span)
            .max(self.now);
        true
    }

    /// The report: delays sorted, the peaks, and the receiver's view of
    /// what was sent and what `trace` offered.
    fn finish(mut self, shaping: &ShapingConfig, trace: &[Arrival]) -> Report {
        // When each receiver's rule holds from (its history known).
        let held_from: Vec<(String, f64)> = self.nodes[0]
            .scheduler
            .model_mut()
            .view(self.now)
            .receivers
            .into_iter()
            .map(|view| (view.name, view.held_from))
            .collect();
        let report = &mut self.report;
        for delays in report
            .days
            .iter_mut()
            .map(|day| &mut day.delays)
            .chain(
                report
                    .apps
                    .iter_mut()
                    .flat_map(|app| [&mut app.delays, &mut app.from_offer]),
            )
            .chain([&mut report.delays, &mut report.from_offer])
        {
            delays.sort_by(f64::total_cmp);
        }
        report.peaks = [1.0, 10.0, 60.0, 3_600.0]
            .into_iter()
            .map(|window| peak(&self.sends, window, report.burst))
            .collect();
        let nodes = &self.nodes;
        let units = |recipients: u32| nodes[0].scheduler.model().units(recipients as usize);
        let history = history_sends(self.history.as_ref(), shaping);
        judge_as_receiver(report, shaping, trace, (self.created, &history), units);
        // As the gateway's view: judged from the minute after the model was made.
        let judged_from = ((self.created / 60.0).floor() + 1.0) * 60.0;
        // With `--history`, each receiver's own history from the log.
        let receiver_history: by_receiver::Sends = self
            .history
            .iter()
            .flat_map(|history| &history.counts.receivers)
            .map(|(receiver, minutes)| (receiver.clone(), sends_of(minutes, shaping)))
            .collect();
        let judged_from = |name: &str| {
            held_from
                .iter()
                .find(|(held, _)| held == name)
                .map_or(judged_from, |(_, from)| judged_from.max(*from))
        };
        report.receivers = by_receiver::judge_receivers(
            &self.receivers,
            (&report.row_receivers, &receiver_history),
            trace,
            &report.sent_log,
            shaping,
            judged_from,
            units,
        );
        self.report
    }
}

/// The rule of `horizon` for `shaping` in a replay whose model began at
/// `created` (the seed counts as long as the shaper lets it).
pub fn rule(shaping: &ShapingConfig, horizon: Horizon, created: f64) -> Rule {
    let slot = (created / 60.0).floor();
    Rule {
        window: horizon.minutes() as f64 * 60.0,
        floor: shaping.min_volume[horizon as usize].unwrap_or(0),
        warmup: shaping.warmup,
        seed: shaping.initial_volume[horizon as usize]
            .map(|units| (units, (slot + 7.0 * 1_440.0 - 1.0) * 60.0)),
    }
}

/// Fills the report's receiver's view and the samples' window columns, for
/// a model made at `created` that counts `units` for a message.
fn judge_as_receiver(
    report: &mut Report,
    shaping: &ShapingConfig,
    trace: &[Arrival],
    (created, history): (f64, &[(f64, u64)]),
    units: impl Fn(u32) -> u64,
) {
    let shaped: Vec<(f64, u64)> = report
        .sent_log
        .iter()
        .map(|sent| (sent.at, units(sent.recipients)))
        .chain(history.iter().copied())
        .collect();
    let offered: Vec<(f64, u64)> = trace
        .iter()
        .map(|arrival| (arrival.at, units(arrival.recipients)))
        .chain(history.iter().copied())
        .collect();
    for horizon in Horizon::ALL {
        let rule = rule(shaping, horizon, created);
        // The history ends in the minute the model was made: judged from the next.
        let judged_from = ((created / 60.0).floor() + 1.0) * 60.0;
        let judge = Judge::new(shaped.clone(), rule.window).judging_from(judged_from);
        for sample in &mut report.samples {
            let end = sample.start + sample.span;
            sample.window_sent[horizon as usize] = judge.count(end);
            sample.window_allowed[horizon as usize] = judge.allowance(&rule, end);
        }
        report.receiver.push(ReceiverView {
            horizon,
            budgeted: shaping.min_volume[horizon as usize].is_some(),
            rule,
            shaped: judge.judge(&rule),
            offered: Judge::new(offered.clone(), rule.window)
                .judging_from(judged_from)
                .judge(&rule),
        });
    }
}

/// The busiest window of `window` seconds among `sends` (time, ceiling).
fn peak(sends: &[(f64, f64)], window: f64, burst: u32) -> Peak {
    let mut worst = Peak {
        window,
        most_sent: 0,
        allowed: 0.0,
        excess: 0.0,
    };
    let mut end = 0;
    let mut ceiling_max: BinaryHeap<(u64, usize)> = BinaryHeap::new();
    for (first, (at, _)) in sends.iter().enumerate() {
        while end < sends.len() && sends[end].0 < at + window {
            ceiling_max.push((sends[end].1.to_bits(), end));
            end += 1;
        }
        while ceiling_max.peek().is_some_and(|(_, index)| *index < first) {
            ceiling_max.pop();
        }
        let ceiling = ceiling_max
            .peek()
            .map_or(0.0, |(bits, _)| f64::from_bits(*bits));
        let count = end - first;
        let allowed = ceiling * window + f64::from(burst);
        if count > worst.most_sent {
            worst.most_sent = count;
            worst.allowed = allowed;
        }
        worst.excess = worst.excess.max(count as f64 - allowed);
    }
    worst
}

/// The `q` quantile of sorted `values` (0 when empty).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}

impl Report {
    /// The report as text for the terminal.
    pub fn to_text(&self) -> String {
        use crate::config::units::{format_duration, format_rate};
        let mut out = String::new();
        let deferred: u64 = self.deferrals.iter().sum();
        let deferred_messages: usize = self.apps.iter().map(|app| app.deferred_messages).sum();
        if self.nodes > 1 {
            out.push_str(&format!(
                "{} nodes, the trace spread over them round robin, sharing one budget (cluster mode)\n",
                self.nodes
            ));
        }
        if let Some(history) = &self.history {
            out.push_str(&format!("history: {history}\n"));
        }
        out.push_str(&format!(
            "gateway {}: {} messages offered, {} sent, {} given up after 5 days of deferrals\n\
             {deferred_messages} messages deferred at least once; {deferred} deferrals (451 4.7.1) in all\n",
            self.gateway, self.messages, self.sent, self.given_up
        ));
        for reason in DeferReason::ALL {
            let count = self.deferrals[reason as usize];
            if count > 0 {
                out.push_str(&format!("  deferred for {}: {count}\n", reason.as_str()));
            }
        }
        let shaped = self.delays.iter().filter(|delay| **delay >= 1.0).count();
        out.push_str(&format!(
            "held in the queue (accepted, waiting to be sent): p50 {}, p99 {}, max {}; {} of {} messages held 1s or more\n",
            format_duration(quantile(&self.delays, 0.5)),
            format_duration(quantile(&self.delays, 0.99)),
            format_duration(self.delays.last().copied().unwrap_or(0.0)),
            shaped,
            self.sent
        ));
        // Deferred mail waits at its app before it is held: both are shown,
        // each named, so neither is read as the other.
        out.push_str(&format!(
            "from first offer to sending (held + retrying after 451s; --sent-log's delay): p50 {}, p99 {}, max {}\n",
            format_duration(quantile(&self.from_offer, 0.5)),
            format_duration(quantile(&self.from_offer, 0.99)),
            format_duration(self.from_offer.last().copied().unwrap_or(0.0)),
        ));
        out.push_str(
            "\nthe pace (the ceiling, per minute): the busiest window of each length, against\n\
             what the ceiling allowed in it; the hour and the day are judged below\n",
        );
        for peak in &self.peaks {
            out.push_str(&format!(
                "most sent in any {}: {} (ceiling x window + burst allowed {:.0}; excess {:.0})\n",
                format_duration(peak.window),
                peak.most_sent,
                peak.allowed,
                peak.excess.max(0.0)
            ));
        }
        out.push_str(
            "\nreceiver's view: in every rolling window W, at most max(floor, warmup x the busiest\n\
             W-window that ended in the 7 days before this one began). A row is the window\n\
             nearest its allowance (the highest sent / allowed); the busiest windows come\n\
             later, when what was sent before has raised the allowance (below the rows)\n\
             window  floor   shaped output: tightest sent / allowed (excess)   offered by the apps: tightest / allowed (x)\n",
        );
        for view in &self.receiver {
            let floor = if view.budgeted {
                view.rule.floor.to_string()
            } else {
                "none".to_string()
            };
            out.push_str(&format!(
                "{:<6}  {:>5}   {:>10} / {:<10} ({:>5})                {:>8} / {:<8} ({:.1}x){}\n",
                view.horizon.label(),
                floor,
                view.shaped.sent,
                view.shaped.allowed,
                view.shaped.excess.max(0),
                view.offered.sent,
                view.offered.allowed,
                view.offered.ratio,
                if view.budgeted {
                    ""
                } else {
                    "  (not budgeted: min_rate names no floor)"
                }
            ));
        }
        for view in self
            .receiver
            .iter()
            .filter(|view| view.shaped.busiest_sent > 0)
        {
            out.push_str(&format!(
                "the busiest {} of the shaped output: {} sent, {} allowed there\n",
                view.horizon.label(),
                view.shaped.busiest_sent,
                view.shaped.busiest_allowed
            ));
        }
        out.push_str(&by_receiver::to_text(&self.receivers, self.day_origin));
        out.push_str(
            "\n(held: from acceptance to sending, in the queue; delay: from the first offer to\n\
             sending, held + retrying after 451s, as --sent-log's delay)\n\
             app              offered     sent  deferred   p50 held   p99 held   max held  p50 delay  p99 delay  max delay\n",
        );
        for app in self.apps.iter().filter(|app| app.offered > 0) {
            out.push_str(&format!(
                "{:<15}  {:>7}  {:>7}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}\n",
                app.name,
                app.offered,
                app.sent,
                app.deferred_messages,
                format_duration(quantile(&app.delays, 0.5)),
                format_duration(quantile(&app.delays, 0.99)),
                format_duration(app.delays.last().copied().unwrap_or(0.0)),
                format_duration(quantile(&app.from_offer, 0.5)),
                format_duration(quantile(&app.from_offer, 0.99)),
                format_duration(app.from_offer.last().copied().unwrap_or(0.0)),
            ));
        }
        out.push_str(
            "\n(\"deferred\" per app: messages deferred at least once; per day: 451 replies)\n\
             day  arrived     sent  deferred    held>=1s   p99 held   max held  ceiling at end\n",
        );
        for (index, day) in self.days.iter().enumerate() {
            let end = self
                .samples
                .iter()
                .take_while(|sample| sample.start < self.day_origin + (index + 1) as f64 * DAY)
                .last()
                .map_or(0.0, |sample| sample.ceiling);
            out.push_str(&format!(
                "{:>3}  {:>7}  {:>7}  {:>8}  {:>10}  {:>9}  {:>9}  {:>14}\n",
                index + 1,
                day.arrived,
                day.sent,
                day.deferred,
                day.delays.iter().filter(|delay| **delay >= 1.0).count(),
                format_duration(quantile(&day.delays, 0.99)),
                format_duration(day.delays.last().copied().unwrap_or(0.0)),
                format_rate(end)
            ));
        }
        out
    }
}

impl Report {
    /// `--sent-log`: one CSV row per message sent,
    /// `time,app,recipients,delay,held` (trace seconds; delay from its
    /// first offer to its sending, deferrals included; held from its
    /// acceptance to its sending, in the queue), and `receiver` when the
    /// trace names domains.
    pub fn sent_log_csv(&self) -> String {
        let by_receiver = self.row_receivers.iter().any(Option::is_some);
        let mut out = String::from(if by_receiver {
            "time,app,recipients,delay,held,receiver\n"
        } else {
            "time,app,recipients,delay,held\n"
        });
        for sent in &self.sent_log {
            out.push_str(&format!(
                "{:.3},{},{},{:.3},{:.3}",
                sent.at, self.apps[sent.lane].name, sent.recipients, sent.delay, sent.held
            ));
            match self.row_receivers.get(sent.id as usize) {
                Some(Some(receiver)) => out.push_str(&format!(",{receiver}\n")),
                _ => out.push('\n'),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(shaping: &str) -> Config {
        Config::parse(&format!(
            "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{shaping}\n[[apps]]\nname = \"bulk\"\nsenders = [\"bulk.test\"]\n"
        ))
        .unwrap()
    }

    fn arrivals(count: usize, start: f64, every: f64, app: &str) -> Vec<Arrival> {
        (0..count)
            .map(|index| Arrival {
                at: start + index as f64 * every,
                app: app.into(),
                recipients: 1,
                domain: None,
            })
            .collect()
    }

    #[test]
    fn a_burst_is_spread_at_the_ceiling_with_no_excess() {
        let config = config(
            "initial_rate = \"60/min\"\nheadroom = 2.0\nburst = 5\nmax_queue_delay = \"1h\"",
        );
        let trace = arrivals(3_000, 0.0, 0.01, "bulk");
        let report = replay(&config, 0, &trace, &Options::default());
        assert_eq!(report.sent, 3_000);
        assert_eq!(report.deferrals, [0; DeferReason::ALL.len()]);
        for peak in &report.peaks {
            assert!(peak.excess <= 0.0, "{peak:?}");
        }
        // 3,000 at about 2/s: the last waits about 25 minutes.
        let max = *report.delays.last().unwrap();
        assert!((1_400.0..1_600.0).contains(&max), "{max}");
    }

    #[test]
    fn traffic_under_the_ceiling_is_not_delayed() {
        let config = config("initial_rate = \"60/min\"");
        let trace = arrivals(1_000, 0.0, 2.0, "other");
        let report = replay(&config, 0, &trace, &Options::default());
        assert_eq!(report.sent, 1_000);
        assert_eq!(*report.delays.last().unwrap(), 0.0);
    }

    #[test]
    fn deferred_mail_comes_back_and_is_sent() {
        let config = config("initial_rate = \"60/min\"\nheadroom = 1.0\nmax_queue_delay = \"1m\"");
        let trace = arrivals(200, 0.0, 0.01, "bulk");
        let report = replay(
            &config,
            0,
            &trace,
            &Options {
                retry_after: 60.0,
                ..Options::default()
            },
        );
        assert!(report.deferrals[DeferReason::QueueDelay as usize] > 0);
        assert_eq!(report.sent, 200, "every deferred message is offered again");
        assert!(report.delays.last().unwrap() <= &61.0);
        assert!(report.to_text().contains("deferred for queue_delay"));
    }
}
