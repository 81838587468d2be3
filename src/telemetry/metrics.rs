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

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::GatewayStatus;

/// Seconds from acceptance to the end of a message's delivery: a message
/// relayed untouched takes well under a second, a shaped one minutes.
const QUEUE_DELAY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
    14400.0, 86400.0,
];

/// Seconds of one upstream transaction (MAIL to the reply after the body).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
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
pub const DSN_RESULTS: &[&str] = &["queued", "null_sender", "spool_error"];

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    /// What the spool writer observes each group commit's fdatasync in.
    pub spool_fsync_seconds: Histogram,
    pub messages_accepted: IntCounterVec,
    pub deferrals: IntCounterVec,
    pub rejections: IntCounterVec,
    pub messages_relayed: IntCounterVec,
    pub recipients_relayed: IntCounterVec,
    pub upstream_replies: IntCounterVec,
    pub upstream_latency: HistogramVec,
    pub upstream_connections: IntGaugeVec,
    pub upstream_connect_failures: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub dsns: IntCounterVec,
    pub queue_delay: HistogramVec,
    pub inbound_connections: IntGauge,
    pub auth_attempts: IntCounterVec,
    pub inbound_tls_sessions: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub alignment_checks: IntCounterVec,
    pub dmarc_lookups: IntCounterVec,
    pub unsubscribe_missing: IntCounterVec,
    queue_messages: IntGaugeVec,
    queue_bytes: IntGaugeVec,
    queue_parked: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    queue_held: IntGaugeVec,
    baseline_rate: GaugeVec,
    ceiling_rate: GaugeVec,
    demand_rate: GaugeVec,
    send_rate: GaugeVec,
    burst_ratio: GaugeVec,
    volume_sent: IntGaugeVec,
    volume_allowance: IntGaugeVec,
    backoff_penalty: GaugeVec,
    backoff_remaining: GaugeVec,
    cluster_connected: IntGaugeVec,
    cluster_nodes: IntGaugeVec,
    pub cluster_decision_seconds: HistogramVec,
    sender_checks: IntGaugeVec,
    spool_free_bytes: Gauge,
    spool_dead_letter_files: IntGauge,
}

/// Registers `metric` in `registry` and returns it (metrics are handles:
/// the clone kept here and the registered one count together).
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid metric"),
    )
}

/// Seconds of one fsync (about 2.6 ms on this project's reference machine;
/// a slow or failing disk shows here first).
const FSYNC_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Metrics {
    /// A fresh registry with every metric; `gateways` and `apps` name the
    /// label values that exist from the start, so a dashboard shows zeros
    /// instead of "no data" before the first event.
    pub fn new(gateways: &[String], apps: &[String]) -> Metrics {
        let registry =
            Registry::new_custom(Some("smtp_shaper".into()), None).expect("valid prefix");
        let r = &registry;
        let build_info = int_gauge(
            r,
            "build_info",
            "Always 1; the labels name the running build.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let spool_fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "spool_fsync_seconds",
                "Time of one group-commit fdatasync of a spool segment (what a 250 waits for).",
            )
            .buckets(FSYNC_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(spool_fsync_seconds.clone()))
            .expect("unique metric");
        let inbound_connections =
            IntGauge::new("inbound_connections", "Client connections open now.")
                .expect("valid metric");
        registry
            .register(Box::new(inbound_connections.clone()))
            .expect("unique metric");
        let spool_free_bytes = Gauge::new(
            "spool_free_bytes",
            "Bytes free for unprivileged users on the spool's file system.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(spool_free_bytes.clone()))
            .expect("unique metric");
        let spool_dead_letter_files = IntGauge::new(
            "spool_dead_letter_files",
            "Dead-letter files waiting for an operator in the spool's dead/ folder.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(spool_dead_letter_files.clone()))
            .expect("unique metric");
        let metrics = Metrics {
            spool_fsync_seconds,
            messages_accepted: counter(
                r,
                "messages_accepted_total",
                "Messages answered 250 and spooled, by the gateway they go to and the app that sent them.",
                &["gateway", "app"],
            ),
            deferrals: counter(
                r,
                "deferrals_total",
                "New mail deferred with 451 4.7.1 because its gateway's projected wait was too long.",
                &["gateway", "reason"],
            ),
            rejections: counter(
                r,
                "rejections_total",
                "Commands, messages and connections refused (4xx/5xx replies other than shaping deferrals).",
                &["reason"],
            ),
            messages_relayed: counter(
                r,
                "messages_relayed_total",
                "Delivery attempts of messages to a gateway, by outcome: delivered (every recipient finished), deferred (some retried later), failed (dead-lettered).",
                &["gateway", "result"],
            ),
            recipients_relayed: counter(
                r,
                "recipients_relayed_total",
                "Recipients the gateway accepted (2xx).",
                &["gateway"],
            ),
            upstream_replies: counter(
                r,
                "upstream_replies_total",
                "Per-recipient final replies from the gateway, by class (2xx, 4xx, 5xx).",
                &["gateway", "class"],
            ),
            upstream_latency: histogram(
                r,
                "upstream_latency_seconds",
                "Time of one transaction with the gateway, MAIL FROM to the reply after the body.",
                &["gateway"],
                LATENCY_BUCKETS,
            ),
            upstream_connections: int_gauge(
                r,
                "upstream_connections",
                "Connections open to the gateway now.",
                &["gateway"],
            ),
            upstream_connect_failures: counter(
                r,
                "upstream_connect_failures_total",
                "Failed attempts to connect (or greet, STARTTLS, authenticate) to the gateway.",
                &["gateway"],
            ),
            dead_letters: counter(
                r,
                "dead_letters_total",
                "Messages with recipients moved to the dead-letter area (permanent failure or max_age).",
                &["gateway"],
            ),
            dsns: counter(
                r,
                "dsns_total",
                "Delivery status notifications due to senders of dead-lettered recipients (apps with dsn = true), by result.",
                &["gateway", "result"],
            ),
            queue_delay: histogram(
                r,
                "queue_delay_seconds",
                "Time from acceptance to the attempt that finished the message.",
                &["gateway"],
                QUEUE_DELAY_BUCKETS,
            ),
            auth_attempts: counter(
                r,
                "auth_attempts_total",
                "AUTH credential checks (argon2 runs), by result (success, failure); AUTH refused unchecked counts in rejections_total (auth_failure_rate).",
                &["result"],
            ),
            inbound_tls_sessions: counter(
                r,
                "inbound_tls_sessions_total",
                "Client TLS handshakes, by how they started (starttls, implicit) and result (success, failure).",
                &["mode", "result"],
            ),
            config_reloads: counter(
                r,
                "config_reloads_total",
                "Configuration reloads on SIGHUP, by result (success, failure).",
                &["result"],
            ),
            alignment_checks: counter(
                r,
                "alignment_checks_total",
                "Messages whose From: domain was checked for DMARC alignment (gateways with alignment = warn or enforce), by result (aligned, misaligned; a misaligned one is refused under enforce).",
                &["gateway", "result"],
            ),
            dmarc_lookups: counter(
                r,
                "dmarc_lookups_total",
                "DMARC record lookups sent to DNS for the alignment check, by result (found, none, failed); timeout counts a message that stopped waiting for one (judged relaxed, as on failure).",
                &["result"],
            ),
            unsubscribe_missing: counter(
                r,
                "unsubscribe_missing_total",
                "Bulk messages without one-click unsubscribe (RFC 8058 List-Unsubscribe with https and List-Unsubscribe-Post), by app; refused ones (unsubscribe = require) count in rejections_total too.",
                &["app"],
            ),
            queue_messages: int_gauge(
                r,
                "queue_messages",
                "Messages queued for the gateway (waiting for the shaper, a retry or a worker).",
                &["gateway"],
            ),
            queue_bytes: int_gauge(
                r,
                "queue_bytes",
                "Bytes of the messages queued for the gateway.",
                &["gateway"],
            ),
            queue_parked: int_gauge(
                r,
                "queue_parked_messages",
                "Queued messages kept only as a reference to their spool record (past spool.active_limit); read back when the shaper releases them.",
                &["gateway"],
            ),
            queue_oldest_age: gauge(
                r,
                "queue_oldest_age_seconds",
                "Age since arrival of the oldest message queued for the gateway, retries included (0 when empty).",
                &["gateway"],
            ),
            queue_held: int_gauge(
                r,
                "queue_held",
                "1 while an operator holds the gateway's queue (queue hold), else 0.",
                &["gateway"],
            ),
            baseline_rate: gauge(
                r,
                "baseline_rate",
                "The gateway's learned normal send rate, messages per second.",
                &["gateway"],
            ),
            ceiling_rate: gauge(
                r,
                "ceiling_rate",
                "The most the shaper sends to the gateway now, messages per second.",
                &["gateway"],
            ),
            demand_rate: gauge(
                r,
                "demand_rate",
                "Messages per second the apps offer the gateway (last minute; deferred offers included, an envelope offered again counted once).",
                &["gateway"],
            ),
            send_rate: gauge(
                r,
                "send_rate",
                "Messages per second sent to the gateway (last minute).",
                &["gateway"],
            ),
            burst_ratio: gauge(
                r,
                "burst_ratio",
                "Demand divided by baseline: the burst-anomaly signal.",
                &["gateway"],
            ),
            volume_sent: int_gauge(
                r,
                "volume_sent",
                "Units (messages, or recipients with count = \"recipients\") sent to the gateway in the rolling window (1h or 24h) of its volume budget.",
                &["gateway", "window"],
            ),
            volume_allowance: int_gauge(
                r,
                "volume_allowance",
                "What the volume rule allows the gateway in the rolling window: max(floor, warmup x the busiest window of the 7 days before).",
                &["gateway", "window"],
            ),
            backoff_penalty: gauge(
                r,
                "backoff_penalty",
                "Factor the gateway's throttling replies cut the ceiling by (1 = none).",
                &["gateway"],
            ),
            backoff_remaining: gauge(
                r,
                "backoff_remaining_seconds",
                "Seconds left of a pause the gateway asked for (throttling or quota), 0 when none.",
                &["gateway"],
            ),
            cluster_connected: int_gauge(
                r,
                "cluster_connected",
                "Cluster mode: 1 while this node reaches the gateway's shared state in Redis, 0 while it runs on its share of the gateway's limits.",
                &["gateway"],
            ),
            cluster_nodes: int_gauge(
                r,
                "cluster_nodes",
                "Cluster mode: live nodes sharing the gateway at the latest heartbeat (what a node divides the limits by when Redis is out of reach).",
                &["gateway"],
            ),
            cluster_decision_seconds: histogram(
                r,
                "cluster_decision_seconds",
                "Cluster mode: time of one send decision in Redis, round trip included.",
                &["gateway"],
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ],
            ),
            sender_checks: int_gauge(
                r,
                "sender_checks",
                "Sender addresses verified with their gateway (relay rule 3), by verdict.",
                &["verdict"],
            ),
            spool_free_bytes,
            spool_dead_letter_files,
            inbound_connections,
            registry,
        };
        for gateway in gateways {
            for app in apps {
                metrics
                    .messages_accepted
                    .with_label_values(&[gateway.as_str(), app.as_str()]);
            }
            for result in ALIGNMENT_RESULTS {
                metrics
                    .alignment_checks
                    .with_label_values(&[gateway.as_str(), result]);
            }
            for result in RELAY_RESULTS {
                metrics
                    .messages_relayed
                    .with_label_values(&[gateway.as_str(), result]);
            }
            for result in DSN_RESULTS {
                metrics.dsns.with_label_values(&[gateway.as_str(), result]);
            }
            for reason in crate::shaper::DeferReason::ALL {
                metrics
                    .deferrals
                    .with_label_values(&[gateway.as_str(), reason.as_str()]);
            }
            for class in ["2xx", "4xx", "5xx"] {
                metrics
                    .upstream_replies
                    .with_label_values(&[gateway.as_str(), class]);
            }
            metrics.recipients_relayed.with_label_values(&[gateway]);
            metrics.dead_letters.with_label_values(&[gateway]);
            metrics.upstream_connections.with_label_values(&[gateway]);
            metrics
                .upstream_connect_failures
                .with_label_values(&[gateway]);
        }
        for reason in crate::inbound::RefusalReason::ALL {
            metrics.rejections.with_label_values(&[reason.as_str()]);
        }
        for result in crate::policy::dmarc::LOOKUP_RESULTS {
            metrics.dmarc_lookups.with_label_values(&[result]);
        }
        for app in apps {
            metrics.unsubscribe_missing.with_label_values(&[app]);
        }
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        metrics
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
            self.backoff_penalty
                .with_label_values(&name)
                .set(model.penalty);
            self.backoff_remaining
                .with_label_values(&name)
                .set(model.paused_for);
            if let Some(cluster) = &status.cluster {
                self.cluster_connected
                    .with_label_values(&name)
                    .set(i64::from(cluster.connected));
                self.cluster_nodes
                    .with_label_values(&name)
                    .set(cluster.nodes as i64);
            }
        }
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
        ] {
            let _ = family.remove_label_values(&[gateway]);
        }
        for horizon in crate::config::Horizon::ALL {
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
