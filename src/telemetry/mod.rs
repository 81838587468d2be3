//! Telemetry: what operators see of the running service, beside the data
//! flow rather than in it.
//!
//! - [`metrics`]: the Prometheus registry, updated where events happen;
//! - [`client`]: the blocking client the `queue` command talks to it with;
//! - [`http`]: the endpoint on `[http] listen`: `/metrics`, `/healthz`,
//!   `/readyz`, `/status` and the queue admin API under `/admin/`;
//! - [`json`]: the JSON documents `/status` and the admin API answer with;
//! - [`logging`]: text or JSON log lines.
//!
//! The endpoint reads the delivery side through the [`Queues`] trait, which
//! `outbound` implements, so telemetry never reaches into the queues'
//! internals and `outbound` (which updates metrics) is not imported here.

pub mod client;
pub mod http;
pub mod json;
pub mod logging;
pub mod metrics;

pub use metrics::Metrics;

use crate::shaper::GatewayView;

/// One gateway as the endpoint shows it.
#[derive(Debug, Clone)]
pub struct GatewayStatus {
    pub name: String,
    pub address: String,
    pub view: GatewayView,
    /// The app lane names, in the order of `view.lanes`.
    pub lane_names: Vec<String>,
    pub queued_bytes: u64,
    /// Queued messages kept only as a reference to their spool record
    /// (past `spool.active_limit`).
    pub parked: usize,
    /// An operator holds the queue (`queue hold`).
    pub held: bool,
    /// How long its mail may stay queued (`max_age`; an app's
    /// `expire_after` may be shorter).
    pub max_age: std::time::Duration,
    pub connections: i64,
    /// The gateway's latest replies that were not 2xx (and failed
    /// connections), oldest first: Unix seconds and the reply.
    pub recent_replies: Vec<(u64, String)>,
    /// Cluster mode: how this node stands with the gateway's shared state.
    pub cluster: Option<crate::cluster::ClusterView>,
    /// Observe mode: messages enforcement would still be holding now.
    pub observed_backlog: Option<usize>,
    /// Where its volume history comes from.
    pub history: HistoryView,
}

/// Where a gateway's volume history comes from (`/status`'s `history`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryView {
    /// `postfix log`, `exchange trace`, `csv` (learned), `own sends`,
    /// `initial_rate` (seeded) or `none`.
    pub source: String,
    /// Unix seconds of its first minute.
    pub since: u64,
    /// Minutes of it the volume rule holds (at most the kept 9 days).
    pub minutes: u64,
}

/// One queued message as the admin API lists it.
#[derive(Debug, Clone)]
pub struct QueuedSummary {
    pub id: String,
    pub gateway: String,
    pub sender: String,
    /// Recipients still to deliver.
    pub recipients: Vec<String>,
    pub size: u64,
    pub received_at: u64,
    pub attempts: u32,
    /// "ready" (waiting for the shaper or a worker) or "retry" (not before
    /// `retry_at`: its own retry time or the end of its gateway's pause).
    pub state: &'static str,
    pub retry_at: Option<u64>,
}

/// A queued message in full, for `queue show`.
#[derive(Debug, Clone)]
pub struct QueuedDetail {
    pub summary: QueuedSummary,
    pub client_ip: String,
    /// The header section of the message as spooled (our Received: first).
    pub headers: String,
    /// Its latest delivery attempts, oldest first: Unix seconds and what
    /// the gateway said (as `GatewayStatus::recent_replies`).
    pub history: Vec<(u64, String)>,
}

/// Why an admin request could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// No such message, gateway or dead letter (404).
    NotFound(String),
    /// A parameter out of its range (400), e.g. a page `limit`.
    BadRequest(String),
    /// The request cannot be done as asked (409), e.g. a message in delivery.
    Conflict(String),
    /// The spool failed (500).
    Failed(String),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::NotFound(why)
            | AdminError::BadRequest(why)
            | AdminError::Conflict(why)
            | AdminError::Failed(why) => f.write_str(why),
        }
    }
}

/// Which page of a listing to show: the entries after `after` (an entry
/// of the previous page: its last), at most `limit` of them. A page
/// shorter than `limit` is the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub after: Option<String>,
    pub limit: usize,
}

impl Page {
    /// Entries a page shows unless asked for another number.
    pub const DEFAULT_LIMIT: usize = 1000;
    /// Most entries one page shows.
    pub const MAX_LIMIT: usize = 10_000;
}

impl Default for Page {
    fn default() -> Page {
        Page {
            after: None,
            limit: Page::DEFAULT_LIMIT,
        }
    }
}

/// One page of a listing, and how many entries the whole listing has.
#[derive(Debug, Clone)]
pub struct Listing<T> {
    pub entries: Vec<T>,
    pub total: usize,
    /// Entries come after this page.
    pub more: bool,
}

/// Keeps the `limit` smallest keys offered (after a cursor), in memory of
/// `limit` entries whatever the number offered: how a page of a listing
/// of a million entries is picked.
pub struct PagePicker<K: Ord, V> {
    heap: std::collections::BinaryHeap<PageEntry<K, V>>,
    limit: usize,
    /// Entries offered after the cursor (the listing's total is counted by
    /// the caller, cursor or not).
    pub offered: usize,
}

struct PageEntry<K: Ord, V>(K, V);

impl<K: Ord, V> PartialEq for PageEntry<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<K: Ord, V> Eq for PageEntry<K, V> {}
impl<K: Ord, V> PartialOrd for PageEntry<K, V> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord, V> Ord for PageEntry<K, V> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<K: Ord, V> PagePicker<K, V> {
    pub fn new(limit: usize) -> Self {
        PagePicker {
            heap: std::collections::BinaryHeap::with_capacity(limit.min(Page::MAX_LIMIT) + 1),
            limit,
            offered: 0,
        }
    }

    /// Whether an entry with `key` would be on the page (checked before
    /// the value is made).
    pub fn wants(&self, key: &K) -> bool {
        self.heap.len() < self.limit || self.heap.peek().is_some_and(|largest| *key < largest.0)
    }

    /// Offers an entry; the page keeps it if it is among the smallest.
    pub fn offer(&mut self, key: K, value: impl FnOnce() -> V) {
        self.offered += 1;
        if self.wants(&key) {
            self.heap.push(PageEntry(key, value()));
            if self.heap.len() > self.limit {
                self.heap.pop();
            }
        }
    }

    /// Whether entries offered did not fit on the page.
    pub fn more(&self) -> bool {
        self.offered > self.heap.len()
    }

    /// The page, smallest key first.
    pub fn into_sorted(self) -> Vec<(K, V)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|PageEntry(key, value)| (key, value))
            .collect()
    }
}

/// What an operator's retry did (see [`Queues::retry`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryReport {
    pub retried: usize,
    /// (gateway, seconds left) of pauses the gateways asked for.
    pub still_paused: Vec<(String, f64)>,
}

/// What the endpoint reads from, and asks of, the delivery side.
pub trait Queues: Send + Sync + 'static {
    /// Every gateway's shaping and queue state.
    fn statuses(&self) -> Vec<GatewayStatus>;
    /// A page of the queued messages, of one gateway or all, oldest first
    /// (by queue id, which sorts by arrival; `page.after` is a queue id).
    fn list(
        &self,
        gateway: Option<&str>,
        page: &Page,
    ) -> Result<Listing<QueuedSummary>, AdminError>;
    /// One queued message with its headers and attempts.
    fn show(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<QueuedDetail, AdminError>> + Send;
    /// Makes a message waiting for its retry (or all of them) due now;
    /// says how many, and which gateways a pause they asked for still
    /// holds (a retry does not end those; `unpause` does).
    fn retry(&self, id: Option<&str>) -> Result<RetryReport, AdminError>;
    /// Gateways whose first connection at start failed, and why (mail is
    /// still accepted for them: `/readyz` says it, it does not refuse).
    fn unreachable_at_start(&self) -> Vec<(String, String)>;
    /// Ends a gateway's throttling or quota pause on purpose; returns the
    /// seconds it had left.
    fn unpause(&self, gateway: &str) -> Result<f64, AdminError>;
    /// Holds or releases a gateway's queue.
    fn hold(&self, gateway: &str, held: bool) -> Result<(), AdminError>;
    /// Removes a queued message for good (logged); returns its summary.
    fn delete(&self, id: &str) -> Result<QueuedSummary, AdminError>;
    /// A page of the dead-letter files, newest last (`page.after` is a
    /// file name).
    fn dead_letters(&self, page: &Page) -> Result<Listing<String>, AdminError>;
    /// Queues a dead-lettered message again for its failed recipients;
    /// returns the new queue id.
    fn requeue(
        &self,
        dead_letter: &str,
    ) -> impl std::future::Future<Output = Result<String, AdminError>> + Send;
}

/// One gateway's status as the tests of `/status` and the metrics show it:
/// an hour budget of its own, two budgeted receivers, one enforced (with
/// mail queued to it) and one not yet (over its allowance: counted only).
#[cfg(test)]
pub(crate) fn example_status() -> GatewayStatus {
    use crate::shaper::penalty::PenaltyPhase;
    use crate::shaper::{BudgetView, GatewayView, Horizon, ModelView, ReceiverView};

    let budget = |horizon, sent, allowance, transactional_room, next_room| BudgetView {
        horizon,
        sent,
        allowance,
        transactional_room,
        next_room,
    };
    GatewayStatus {
        max_age: std::time::Duration::from_secs(432_000),
        name: "primary".into(),
        address: "127.0.0.1:25".into(),
        view: GatewayView {
            model: ModelView {
                baseline: 0.5,
                ceiling: 1.0,
                demand_rate: 2.25,
                send_rate: 1.0,
                burst_ratio: 4.5,
                penalty: 1.0,
                penalty_phase: PenaltyPhase::Calm,
                mode: crate::shaper::ShapingMode::Enforce,
                recovery_left: 0.0,
                paused_for: 0.0,
                deferrals: [1, 0, 0, 2, 0, 0, 0, 0],
                budgets: vec![budget(Horizon::Hour, 40, 60, 12, 0.0)],
                receivers: vec![
                    ReceiverView {
                        name: "google".into(),
                        held: true,
                        held_from: 1_763_575_200.0,
                        budgets: vec![
                            budget(Horizon::Hour, 20, 20, 5, 600.0),
                            budget(Horizon::Day, 60, 100, 25, 0.0),
                        ],
                    },
                    ReceiverView {
                        name: "microsoft".into(),
                        held: false,
                        held_from: 1_764_180_000.0,
                        budgets: vec![budget(Horizon::Day, 130, 100, 25, 120.0)],
                    },
                ],
            },
            queued: 3,
            oldest_age: 7.5,
            lanes: vec![2, 1],
            receivers: vec![2, 0],
            drain: crate::shaper::Projection {
                wait: 7_200.0,
                reason: crate::shaper::DeferReason::DayBudget,
            },
            newest_age: 0.0,
        },
        lane_names: vec!["billing".into(), "other".into()],
        queued_bytes: 4096,
        parked: 0,
        held: false,
        connections: 1,
        recent_replies: vec![(1_764_180_000, "451 4.7.500 busy".into())],
        observed_backlog: None,
        cluster: Some(crate::cluster::ClusterView {
            connected: true,
            nodes: 3,
            share_of: 3,
        }),
        history: HistoryView {
            source: "postfix log".into(),
            since: 1_763_575_200,
            minutes: 10_080,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page picked from keys offered in any order is the sorted run
    /// after the cursor, and the picker never holds more than the page.
    #[test]
    fn a_page_is_the_smallest_keys_after_the_cursor() {
        for seed in 0..50u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let count = rng.usize(0..300);
            let mut keys: Vec<u32> = (0..count as u32).map(|k| k * 3).collect();
            rng.shuffle(&mut keys);
            let limit = rng.usize(1..50);
            let after = rng.bool().then(|| rng.u32(0..1000));
            let mut picker = PagePicker::new(limit);
            for &key in &keys {
                if after.is_none_or(|after| key > after) {
                    picker.offer(key, || key * 2);
                }
                assert!(picker.heap.len() <= limit);
            }
            let page = picker.into_sorted();
            let mut expected: Vec<u32> = keys
                .iter()
                .copied()
                .filter(|key| after.is_none_or(|after| *key > after))
                .collect();
            expected.sort_unstable();
            expected.truncate(limit);
            assert_eq!(
                page.iter().map(|(key, _)| *key).collect::<Vec<_>>(),
                expected,
                "seed {seed}"
            );
            assert!(page.iter().all(|(key, value)| *value == key * 2));
        }
    }
}
