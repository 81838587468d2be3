//! The Prometheus metrics of one service: every counter, gauge and
//! histogram, registered under the `smtp_shaper_` prefix.
//!
//! Invariants: labels are bounded — a gateway or app name from the config,
//! a reason or result from a fixed set, a reply class — never an address,
//! a queue id or a reply text. Each service owns its registry, so several
//! services in one process (the tests) never mix their counts.
//!
//! Counters and histograms are updated where the event happens; the gauges
//! that describe state (queue depth, shaping rates) are set from the
//! service's views just before each scrape ([`Metrics::observe`]).

use std::marker::PhantomData;

use prometheus::core::{Atomic, Collector, GenericCounterVec, GenericGauge, GenericGaugeVec};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::GatewayStatus;
use crate::shaper::DeferReason;

/// Seconds from acceptance to the end of a message's delivery: a message
/// relayed untouched takes well under a second, a shaped one minutes.
/// What mail would have waited in observe mode: seconds to days (the
/// budgets hold for days).
const OBSERVED_DELAY_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0, 172800.0, 345600.0,
];
const QUEUE_DELAY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
    14400.0, 86400.0,
];

/// Seconds of one upstream transaction (MAIL to the reply after the body).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Seconds of one fsync (about 2.6 ms on this project's reference machine;
/// a slow or failing disk shows here first).
const FSYNC_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Seconds of one send decision in Redis, round trip included.
const CLUSTER_DECISION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Results of the DMARC alignment check (`alignment_checks_total`).
pub const ALIGNMENT_RESULTS: &[&str] = &["aligned", "misaligned"];

/// Results of one delivery attempt of a message (`messages_relayed_total`).
pub const RELAY_RESULTS: &[&str] = &["delivered", "deferred", "failed"];

/// What became of a delivery status notification due to a sender
/// (`dsns_total`): `queued` (stored in the spool, relayed like any mail),
/// `null_sender` (the app asks for them, but the message came from `<>`:
/// none, so bounces never loop), `spool_error` (could not be stored: the
/// failed recipients stay queued and are tried again).
pub const DSN_RESULTS: &[&str] = &["queued", "delayed", "null_sender", "spool_error"];

/// What queued mail can wait for (`queue_waits_for`).
const WAIT_REASONS: [DeferReason; 6] = [
    DeferReason::QueueDelay,
    DeferReason::Cap,
    DeferReason::HourBudget,
    DeferReason::DayBudget,
    DeferReason::ReceiverHourBudget,
    DeferReason::ReceiverDayBudget,
];

/// The values of `names` (label names) of each series `family` has now.
fn series_labels(family: &impl Collector, names: &[&str]) -> Vec<Vec<String>> {
    family
        .collect()
        .iter()
        .flat_map(|collected| collected.get_metric())
        .map(|metric| {
            names
                .iter()
                .map(|name| {
                    metric
                        .get_label()
                        .iter()
                        .find(|pair| pair.name() == *name)
                        .map(|pair| pair.value().to_string())
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect()
}

/// What one metric family shows (name, label names, help, a histogram's
/// buckets); the kind is the type `M`, taken from the field it fills, so a
/// family cannot be registered as one kind and used as another.
struct Family<M> {
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
    buckets: &'static [f64],
    kind: PhantomData<M>,
}

fn family<M>(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Family<M> {
    Family {
        name,
        labels,
        help,
        buckets: &[],
        kind: PhantomData,
    }
}

impl<M: Kind> Family<M> {
    fn buckets(self, buckets: &'static [f64]) -> Family<M> {
        Family { buckets, ..self }
    }

    /// Registers the family in `registry` and returns it (metrics are
    /// handles: the clone kept here and the registered one count together).
    fn register(self, registry: &Registry) -> M {
        let metric = M::build(&self).expect("valid metric");
        registry
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        metric
    }

    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    fn histogram_opts(&self) -> HistogramOpts {
        HistogramOpts::new(self.name, self.help).buckets(self.buckets.to_vec())
    }

    /// The label names of a metric without labels: none, or the table is
    /// wrong (a label given to a single metric would be silently dropped).
    fn no_labels(&self) -> &Self {
        assert!(self.labels.is_empty(), "{} takes no labels", self.name);
        self
    }
}

/// A kind of metric a [`Family`] can be built as.
trait Kind: Collector + Clone + Sized + 'static {
    fn build(family: &Family<Self>) -> prometheus::Result<Self>;
}

impl<P: Atomic + 'static> Kind for GenericCounterVec<P> {
    fn build(family: &Family<Self>) -> prometheus::Result<Self> {
        Self::new(family.opts(), family.labels)
    }
}

impl<P: Atomic + 'static> Kind for GenericGaugeVec<P> {
    fn build(family: &Family<Self>) -> prometheus::Result<Self> {
        Self::new(family.opts(), family.labels)
    }
}

impl<P: Atomic + 'static> Kind for GenericGauge<P> {
    fn build(family: &Family<Self>) -> prometheus::Result<Self> {
        Self::with_opts(family.no_labels().opts())
    }
}

impl Kind for HistogramVec {
    fn build(family: &Family<Self>) -> prometheus::Result<Self> {
        Self::new(family.histogram_opts(), family.labels)
    }
}

impl Kind for Histogram {
    fn build(family: &Family<Self>) -> prometheus::Result<Self> {
        Self::with_opts(family.no_labels().histogram_opts())
    }
}

/// Declares `Metrics` as a table, one entry per family (field, kind,
/// family), so that a metric is added in one place: the field and its
/// registration cannot drift apart.
macro_rules! metric_families {
    (
        $(#[$meta:meta])*
        pub struct Metrics {
            $( $(#[$field_meta:meta])* $vis:vis $field:ident: $kind:ty = $family:expr, )*
        }
    ) => {
        $(#[$meta])*
        pub struct Metrics {
            registry: Registry,
            $( $(#[$field_meta])* $vis $field: $kind, )*
        }

        impl Metrics {
            fn register_families(registry: Registry) -> Metrics {
                $( let $field = Family::<$kind>::register($family, &registry); )*
                Metrics { registry, $( $field, )* }
            }
        }
    };
}

metric_families! {
    /// The registry and every metric in it.
    pub struct Metrics {
        /// What the spool writer observes each group commit's fdatasync in.
        pub spool_fsync_seconds: Histogram = family("spool_fsync_seconds", &[],
            "Time of one group-commit fdatasync of a spool segment (what a 250 waits for).").buckets(FSYNC_BUCKETS),
        pub messages_accepted: IntCounterVec = family("messages_accepted_total", &["gateway", "app"],
            "Messages answered 250 and spooled, by the gateway they go to and the app that sent them."),
        pub deferrals: IntCounterVec = family("deferrals_total", &["gateway", "reason"],
            "New mail deferred with 451 4.7.1 because its gateway's projected wait was too long."),
        pub rejections: IntCounterVec = family("rejections_total", &["reason"],
            "Commands, messages and connections refused (4xx/5xx replies other than shaping deferrals)."),
        pub messages_relayed: IntCounterVec = family("messages_relayed_total", &["gateway", "result"],
            "Delivery attempts of messages to a gateway, by outcome: delivered (every recipient finished), deferred (some retried later), failed (dead-lettered)."),
        pub recipients_relayed: IntCounterVec = family("recipients_relayed_total", &["gateway"],
            "Recipients the gateway accepted (2xx)."),
        pub upstream_replies: IntCounterVec = family("upstream_replies_total", &["gateway", "class"],
            "Per-recipient final replies from the gateway, by class (2xx, 4xx, 5xx)."),
        pub upstream_latency: HistogramVec = family("upstream_latency_seconds", &["gateway"],
            "Time of one transaction with the gateway, MAIL FROM to the reply after the body.").buckets(LATENCY_BUCKETS),
        pub upstream_connections: IntGaugeVec = family("upstream_connections", &["gateway"],
            "Connections open to the gateway now."),
        pub outcome_unknown: IntCounterVec = family("upstream_outcome_unknown_total", &["gateway"],
            "Messages sent whole whose reply to the end of data never came within data_reply_timeout: the gateway may have taken them; they are tried again (a possible duplicate)."),
        pub upstream_connect_failures: IntCounterVec = family("upstream_connect_failures_total", &["gateway"],
            "Failed attempts to connect (or greet, STARTTLS, authenticate) to the gateway."),
        pub dead_letters: IntCounterVec = family("dead_letters_total", &["gateway"],
            "Messages with recipients moved to the dead-letter area (permanent failure or max_age)."),
        pub expired: IntCounterVec = family("messages_expired_total", &["gateway"],
            "Messages dead-lettered unsent because they were queued longer than their app's expire_after (else the gateway's max_age): held by the budgets, or the gateway down for days. Also counted in dead_letters_total."),
        pub dsns: IntCounterVec = family("dsns_total", &["gateway", "result"],
            "Delivery status notifications due to senders of dead-lettered recipients (apps with dsn = true), by result."),
        pub queue_delay: HistogramVec = family("queue_delay_seconds", &["gateway"],
            "Time from acceptance to the attempt that finished the message.").buckets(QUEUE_DELAY_BUCKETS),
        pub observed_holds: IntCounterVec = family("observed_holds_total", &["gateway", "reason"],
            "Observe mode: messages relayed at once that enforcement would have held (not sent on arrival), by what would have held them (queue_delay: the minute ceiling; cap; hour_budget; day_budget), or refused (queue_full, recipients, or a wait past max_queue_delay under its reason)."),
        pub observed_delay: HistogramVec = family("observed_delay_seconds", &["gateway"],
            "Observe mode: how long each message relayed at once would have waited under enforcement.").buckets(OBSERVED_DELAY_BUCKETS),
        shaping_observing: IntGaugeVec = family("shaping_observing", &["gateway"],
            "1 while the gateway's shaping observes (mode = \"observe\": mail relayed at once, would-be holds counted), 0 while it enforces."),
        pub inbound_connections: IntGauge = family("inbound_connections", &[],
            "Client connections open now."),
        pub auth_attempts: IntCounterVec = family("auth_attempts_total", &["result"],
            "AUTH credential checks (argon2 runs), by result (success, failure); AUTH refused unchecked counts in rejections_total (auth_failure_rate)."),
        pub inbound_tls_sessions: IntCounterVec = family("inbound_tls_sessions_total", &["mode", "result"],
            "Client TLS handshakes, by how they started (starttls, implicit) and result (success, failure)."),
        pub config_reloads: IntCounterVec = family("config_reloads_total", &["result"],
            "Configuration reloads on SIGHUP, by result (success, failure)."),
        pub alignment_checks: IntCounterVec = family("alignment_checks_total", &["gateway", "result"],
            "Messages whose From: domain was checked for DMARC alignment (gateways with alignment = warn or enforce), by result (aligned, misaligned; a misaligned one is refused under enforce)."),
        pub dmarc_lookups: IntCounterVec = family("dmarc_lookups_total", &["result"],
            "DMARC record lookups sent to DNS for the alignment check, by result (found, none, failed); timeout counts a message that stopped waiting for one (judged relaxed, as on failure)."),
        pub unsubscribe_missing: IntCounterVec = family("unsubscribe_missing_total", &["app"],
            "Bulk messages without one-click unsubscribe (RFC 8058 List-Unsubscribe with https and List-Unsubscribe-Post), by app; refused ones (unsubscribe = require) count in rejections_total too."),
        queue_messages: IntGaugeVec = family("queue_messages", &["gateway"],
            "Messages queued for the gateway (waiting for the shaper, a retry or a worker)."),
        queue_bytes: IntGaugeVec = family("queue_bytes", &["gateway"],
            "Bytes of the messages queued for the gateway."),
        queue_parked: IntGaugeVec = family("queue_parked_messages", &["gateway"],
            "Queued messages kept only as a reference to their spool record (past spool.active_limit); read back when the shaper releases them."),
        queue_oldest_age: GaugeVec = family("queue_oldest_age_seconds", &["gateway"],
            "Age since arrival of the oldest message queued for the gateway, retries included (0 when empty)."),
        queue_drain: GaugeVec = family("queue_drain_seconds", &["gateway"],
            "Projected seconds until the gateway's queue has drained: the wait one more message behind everything queued would have (what holds it: queue_waits_for)."),
        queue_waits_for: IntGaugeVec = family("queue_waits_for", &["gateway", "reason"],
            "1 for the part of the shaping the queue's drain waits for (queue_delay: the minute ceiling or a pause; cap; hour_budget; day_budget), else 0."),
        queue_newest_age: GaugeVec = family("queue_newest_age_seconds", &["gateway"],
            "Age since arrival of the newest message waiting for the shaper (the last to leave), 0 when none."),
        queue_max_age: GaugeVec = family("queue_max_age_seconds", &["gateway"],
            "How long the gateway's mail may stay queued before it is dead-lettered (max_age; an app's expire_after may be shorter)."),
        queue_app_messages: IntGaugeVec = family("queue_app_messages", &["gateway", "app"],
            "Messages queued for the gateway per app, held by the shaper or waiting for a retry (what they wait for: queue_waits_for)."),
        queue_held: IntGaugeVec = family("queue_held", &["gateway"],
            "1 while an operator holds the gateway's queue (queue hold), else 0."),
        baseline_rate: GaugeVec = family("baseline_rate", &["gateway"],
            "The gateway's learned normal send rate, messages per second."),
        ceiling_rate: GaugeVec = family("ceiling_rate", &["gateway"],
            "The most the shaper sends to the gateway now, messages per second."),
        demand_rate: GaugeVec = family("demand_rate", &["gateway"],
            "Messages per second the apps offer the gateway (last minute; deferred offers included, an envelope offered again counted once)."),
        send_rate: GaugeVec = family("send_rate", &["gateway"],
            "Messages per second sent to the gateway (last minute)."),
        burst_ratio: GaugeVec = family("burst_ratio", &["gateway"],
            "Demand divided by baseline: the burst-anomaly signal."),
        volume_sent: IntGaugeVec = family("volume_sent", &["gateway", "window"],
            "Units (messages, or recipients with count = \"recipients\") sent to the gateway in the rolling window (1h or 24h) of its volume budget."),
        volume_allowance: IntGaugeVec = family("volume_allowance", &["gateway", "window"],
            "What the volume rule allows the gateway in the rolling window: max(floor, warmup x the busiest window of the 7 days before)."),
        receiver_volume_sent: IntGaugeVec = family("receiver_volume_sent", &["gateway", "receiver", "window"],
            "Units (messages, or recipients with count = \"recipients\") the gateway sent to one receiver (google, microsoft, ... as configured) in the rolling window (1h or 24h) of its own volume budget; counted also while the receiver's budget is not enforced yet."),
        receiver_volume_allowance: IntGaugeVec = family("receiver_volume_allowance", &["gateway", "receiver", "window"],
            "What the receiver's own volume rule allows the gateway to send it in the rolling window: max(its floor, warmup x its busiest window of the 7 days before); it holds mail only while receiver_budget_enforced is 1."),
        receiver_queued: IntGaugeVec = family("receiver_queued_messages", &["gateway", "receiver"],
            "Messages in the gateway's queue waiting for the shaper to send them to the receiver (each waits for the receiver's own room as well as the gateway's); retries not included."),
        receiver_enforced: IntGaugeVec = family("receiver_budget_enforced", &["gateway", "receiver"],
            "1 while the receiver's own volume budget holds the gateway's mail to it; 0 until its history is known (on a gateway with an older history, a week after counting per receiver began): meanwhile its sends are counted and only the gateway's total holds."),
        backoff_penalty: GaugeVec = family("backoff_penalty", &["gateway"],
            "Factor the gateway's throttling replies cut the ceiling by (1 = none)."),
        backoff_remaining: GaugeVec = family("backoff_remaining_seconds", &["gateway"],
            "Seconds left of a pause the gateway asked for (throttling or quota), 0 when none."),
        backoff_recovery: GaugeVec = family("backoff_recovery_seconds", &["gateway"],
            "Seconds until the ceiling is back where it was before a throttling cut (the whole backoff_recovery while the gateway has not accepted again), 0 when none."),
        cluster_connected: IntGaugeVec = family("cluster_connected", &["gateway"],
            "Cluster mode: 1 while this node reaches the gateway's shared state in Redis, 0 while it runs on its share of the gateway's limits."),
        cluster_nodes: IntGaugeVec = family("cluster_nodes", &["gateway"],
            "Cluster mode: live nodes sharing the gateway at the latest heartbeat (what a node divides the limits by when Redis is out of reach)."),
        pub cluster_decision_seconds: HistogramVec = family("cluster_decision_seconds", &["gateway"],
            "Cluster mode: time of one send decision in Redis, round trip included.").buckets(CLUSTER_DECISION_BUCKETS),
        sender_checks: IntGaugeVec = family("sender_checks", &["verdict"],
            "Sender addresses verified with their gateway (relay rule 3), by verdict."),
        spool_free_bytes: Gauge = family("spool_free_bytes", &[],
            "Bytes free for unprivileged users on the spool's file system."),
        spool_dead_letter_files: IntGauge = family("spool_dead_letter_files", &[],
            "Dead-letter files waiting for an operator in the spool's dead/ folder."),
    }
}

impl Metrics {
    /// A fresh registry with every metric; `gateways`, `apps` and
    /// `refusal_reasons` (the inbound side's fixed set of reasons) name the
    /// label values that exist from the start, so a dashboard shows zeros
    /// instead of "no data" before the first event. The reasons come in
    /// from the caller: telemetry sits beside the flow and imports nothing
    /// from the inbound side it counts.
    pub fn new(gateways: &[String], apps: &[String], refusal_reasons: &[&str]) -> Metrics {
        let registry =
            Registry::new_custom(Some("smtp_shaper".into()), None).expect("valid prefix");
        // Not a field: set once here and never touched again.
        family::<IntGaugeVec>(
            "build_info",
            &["version"],
            "Always 1; the labels name the running build.",
        )
        .register(&registry)
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        let metrics = Metrics::register_families(registry);
        for gateway in gateways {
            metrics.create_gateway_series(gateway, apps);
        }
        metrics.create_fixed_series(apps, refusal_reasons);
        metrics
    }

    /// Creates (at zero) the series of `gateway`: one per app, result,
    /// reason and reply class it can be counted under.
    fn create_gateway_series(&self, gateway: &str, apps: &[String]) {
        for app in apps {
            self.messages_accepted
                .with_label_values(&[gateway, app.as_str()]);
        }
        for result in ALIGNMENT_RESULTS {
            self.alignment_checks.with_label_values(&[gateway, result]);
        }
        for result in RELAY_RESULTS {
            self.messages_relayed.with_label_values(&[gateway, result]);
        }
        for result in DSN_RESULTS {
            self.dsns.with_label_values(&[gateway, result]);
        }
        for reason in crate::shaper::DeferReason::ALL {
            self.deferrals
                .with_label_values(&[gateway, reason.as_str()]);
        }
        for class in ["2xx", "4xx", "5xx"] {
            self.upstream_replies.with_label_values(&[gateway, class]);
        }
        for reason in crate::shaper::DeferReason::ALL {
            self.observed_holds
                .with_label_values(&[gateway, reason.as_str()]);
        }
        self.observed_delay.with_label_values(&[gateway]);
        self.recipients_relayed.with_label_values(&[gateway]);
        self.dead_letters.with_label_values(&[gateway]);
        self.expired.with_label_values(&[gateway]);
        self.upstream_connections.with_label_values(&[gateway]);
        self.upstream_connect_failures.with_label_values(&[gateway]);
        self.outcome_unknown.with_label_values(&[gateway]);
    }

    /// Creates (at zero) the series whose labels come from fixed sets, and
    /// one per app of the counters counted by app alone.
    fn create_fixed_series(&self, apps: &[String], refusal_reasons: &[&str]) {
        for reason in refusal_reasons {
            self.rejections.with_label_values(&[reason]);
        }
        for result in crate::policy::dmarc::LOOKUP_RESULTS {
            self.dmarc_lookups.with_label_values(&[result]);
        }
        for app in apps {
            self.unsubscribe_missing.with_label_values(&[app]);
        }
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
    }

    /// Sets the state gauges from the service's current views.
    pub fn observe(
        &self,
        gateways: &[GatewayStatus],
        sender_checks: &[(&str, usize)],
        spool_free_bytes: Option<u64>,
        dead_letter_files: usize,
    ) {
        for status in gateways {
            let name = [status.name.as_str()];
            let view = &status.view;
            self.queue_messages
                .with_label_values(&name)
                .set(view.queued as i64);
            self.queue_bytes
                .with_label_values(&name)
                .set(status.queued_bytes as i64);
            self.queue_parked
                .with_label_values(&name)
                .set(status.parked as i64);
            self.queue_oldest_age
                .with_label_values(&name)
                .set(view.oldest_age);
            self.queue_held
                .with_label_values(&name)
                .set(i64::from(status.held));
            self.queue_drain
                .with_label_values(&name)
                .set(view.drain.wait);
            self.queue_newest_age
                .with_label_values(&name)
                .set(view.newest_age);
            self.queue_max_age
                .with_label_values(&name)
                .set(status.max_age.as_secs_f64());
            self.shaping_observing
                .with_label_values(&name)
                .set(i64::from(
                    view.model.mode == crate::shaper::ShapingMode::Observe,
                ));
            for (app, queued) in status.lane_names.iter().zip(&view.lanes) {
                self.queue_app_messages
                    .with_label_values(&[status.name.as_str(), app.as_str()])
                    .set(*queued as i64);
            }
            for reason in WAIT_REASONS {
                self.queue_waits_for
                    .with_label_values(&[status.name.as_str(), reason.as_str()])
                    .set(i64::from(view.queued > 0 && view.drain.reason == reason));
            }
            let model = &view.model;
            self.baseline_rate
                .with_label_values(&name)
                .set(model.baseline);
            self.ceiling_rate
                .with_label_values(&name)
                .set(model.ceiling);
            self.demand_rate
                .with_label_values(&name)
                .set(model.demand_rate);
            self.send_rate.with_label_values(&name).set(model.send_rate);
            self.burst_ratio
                .with_label_values(&name)
                .set(model.burst_ratio);
            for budget in &model.budgets {
                let labels = [status.name.as_str(), budget.horizon.label()];
                self.volume_sent
                    .with_label_values(&labels)
                    .set(budget.sent as i64);
                self.volume_allowance
                    .with_label_values(&labels)
                    .set(budget.allowance as i64);
            }
            self.observe_receivers(status);
            self.backoff_penalty
                .with_label_values(&name)
                .set(model.penalty);
            self.backoff_remaining
                .with_label_values(&name)
                .set(model.paused_for);
            self.backoff_recovery
                .with_label_values(&name)
                .set(model.recovery_left);
            if let Some(cluster) = &status.cluster {
                self.cluster_connected
                    .with_label_values(&name)
                    .set(i64::from(cluster.connected));
                self.cluster_nodes
                    .with_label_values(&name)
                    .set(cluster.nodes as i64);
            }
        }
        self.forget_receivers_except(gateways);
        for (verdict, count) in sender_checks {
            self.sender_checks
                .with_label_values(&[verdict])
                .set(*count as i64);
        }
        if let Some(free) = spool_free_bytes {
            self.spool_free_bytes.set(free as f64);
        }
        self.spool_dead_letter_files.set(dead_letter_files as i64);
    }

    /// Sets the gauges of each budgeted receiver of `status`'s gateway:
    /// every receiver of its rules, held or not, so the label values are
    /// the configured receivers.
    fn observe_receivers(&self, status: &GatewayStatus) {
        let view = &status.view;
        for (index, receiver) in view.model.receivers.iter().enumerate() {
            let labels = [status.name.as_str(), receiver.name.as_str()];
            for budget in &receiver.budgets {
                let labels = [labels[0], labels[1], budget.horizon.label()];
                self.receiver_volume_sent
                    .with_label_values(&labels)
                    .set(budget.sent as i64);
                self.receiver_volume_allowance
                    .with_label_values(&labels)
                    .set(budget.allowance as i64);
            }
            let queued = view.receivers.get(index).copied().unwrap_or_default();
            self.receiver_queued
                .with_label_values(&labels)
                .set(queued as i64);
            self.receiver_enforced
                .with_label_values(&labels)
                .set(i64::from(receiver.held));
        }
    }

    /// Removes the receiver series `gateways` no longer show (a reload
    /// changed `[[receivers]]`, `receiver_min_rate` or the gateways): the
    /// receiver labels stay those configured now.
    fn forget_receivers_except(&self, gateways: &[GatewayStatus]) {
        // Labels [gateway, receiver] or [gateway, receiver, window].
        let shown = |labels: &[String]| {
            let status = gateways.iter().find(|status| status.name == labels[0]);
            let receiver = status.and_then(|status| {
                let receivers = &status.view.model.receivers;
                receivers.iter().find(|view| view.name == labels[1])
            });
            receiver.is_some_and(|receiver| {
                let budgets = &receiver.budgets;
                labels.get(2).is_none_or(|window| {
                    budgets
                        .iter()
                        .any(|budget| budget.horizon.label() == window)
                })
            })
        };
        for family in [&self.receiver_queued, &self.receiver_enforced] {
            for labels in series_labels(family, &["gateway", "receiver"]) {
                if !shown(&labels) {
                    let _ = family.remove_label_values(&[&labels[0], &labels[1]]);
                }
            }
        }
        for family in [&self.receiver_volume_sent, &self.receiver_volume_allowance] {
            for labels in series_labels(family, &["gateway", "receiver", "window"]) {
                if !shown(&labels) {
                    let _ = family.remove_label_values(&[&labels[0], &labels[1], &labels[2]]);
                }
            }
        }
    }

    /// Forgets the state gauges of a gateway no longer configured (reload).
    pub fn forget_gateway(&self, gateway: &str) {
        for family in [
            &self.baseline_rate,
            &self.ceiling_rate,
            &self.demand_rate,
            &self.send_rate,
            &self.burst_ratio,
            &self.backoff_penalty,
            &self.backoff_remaining,
            &self.backoff_recovery,
            &self.queue_oldest_age,
        ] {
            let _ = family.remove_label_values(&[gateway]);
        }
        let _ = self
            .cluster_decision_seconds
            .remove_label_values(&[gateway]);
        for family in [
            &self.queue_messages,
            &self.queue_bytes,
            &self.queue_parked,
            &self.queue_held,
            &self.cluster_connected,
            &self.cluster_nodes,
            &self.shaping_observing,
        ] {
            let _ = family.remove_label_values(&[gateway]);
        }
        for horizon in crate::shaper::Horizon::ALL {
            for family in [&self.volume_sent, &self.volume_allowance] {
                let _ = family.remove_label_values(&[gateway, horizon.label()]);
            }
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::Horizon;
    use crate::telemetry::example_status;

    /// The value of `series` (name and labels as exposed) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    fn scraped(metrics: &Metrics, gateways: &[GatewayStatus]) -> String {
        metrics.observe(gateways, &[], None, 0);
        metrics.render()
    }

    /// Each budgeted receiver's budgets, queue and enforcement are set
    /// from the views, the one not enforced yet included.
    #[test]
    fn every_budgeted_receiver_shows_its_budgets_queue_and_enforcement() {
        let metrics = Metrics::new(&["primary".into()], &[], &[]);
        let text = scraped(&metrics, &[example_status()]);
        let series = |name: &str, labels: &str| {
            let series = format!("smtp_shaper_receiver_{name}{{gateway=\"primary\",{labels}}}");
            sample(&text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        };
        let google = "receiver=\"google\"";
        let microsoft = "receiver=\"microsoft\"";
        for (name, labels, value) in [
            ("volume_sent", format!("{google},window=\"1h\""), 20.0),
            ("volume_allowance", format!("{google},window=\"1h\""), 20.0),
            ("volume_sent", format!("{google},window=\"24h\""), 60.0),
            (
                "volume_allowance",
                format!("{google},window=\"24h\""),
                100.0,
            ),
            ("queued_messages", google.to_string(), 2.0),
            ("budget_enforced", google.to_string(), 1.0),
            ("volume_sent", format!("{microsoft},window=\"24h\""), 130.0),
            (
                "volume_allowance",
                format!("{microsoft},window=\"24h\""),
                100.0,
            ),
            ("queued_messages", microsoft.to_string(), 0.0),
            ("budget_enforced", microsoft.to_string(), 0.0),
        ] {
            assert_eq!(series(name, &labels), value, "{name}{{{labels}}}");
        }
        // microsoft budgets no hour: no series for it.
        assert!(
            !text.contains("receiver=\"microsoft\",window=\"1h\""),
            "{text}"
        );
        for family in [
            "receiver_volume_sent",
            "receiver_volume_allowance",
            "receiver_queued_messages",
            "receiver_budget_enforced",
        ] {
            assert!(
                text.contains(&format!("# HELP smtp_shaper_{family} "))
                    && text.contains(&format!("# TYPE smtp_shaper_{family} gauge")),
                "{family}"
            );
        }
    }

    /// A receiver (or one of its windows) the views no longer show, and
    /// every receiver of a gateway gone, leave the scrape: the receiver
    /// labels are always those configured now.
    #[test]
    fn receivers_no_longer_budgeted_leave_the_scrape() {
        let metrics = Metrics::new(&["primary".into(), "backup".into()], &[], &[]);
        let mut backup = example_status();
        backup.name = "backup".into();
        scraped(&metrics, &[example_status(), backup]);

        let mut reloaded = example_status();
        reloaded.view.model.receivers.truncate(1);
        reloaded.view.model.receivers[0]
            .budgets
            .retain(|budget| budget.horizon == Horizon::Day);
        reloaded.view.receivers.truncate(1);
        let text = scraped(&metrics, &[reloaded]);
        assert!(!text.contains("receiver=\"microsoft\""), "{text}");
        assert!(!text.contains("gateway=\"backup\",receiver"), "{text}");
        assert!(
            !text.contains("receiver=\"google\",window=\"1h\""),
            "{text}"
        );
        let kept = "{gateway=\"primary\",receiver=\"google\",window=\"24h\"}";
        assert_eq!(
            sample(&text, &format!("smtp_shaper_receiver_volume_sent{kept}")),
            Some(60.0)
        );
        let kept = "{gateway=\"primary\",receiver=\"google\"}";
        assert_eq!(
            sample(
                &text,
                &format!("smtp_shaper_receiver_budget_enforced{kept}")
            ),
            Some(1.0)
        );
    }
}
