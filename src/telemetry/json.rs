//! The JSON documents of `/status` and the admin API: one struct per shape,
//! written by serde_json, so each field's name and place is stated once.
//!
//! Invariants: fields come out in the order declared here (operators read
//! these answers by eye, and `curl | jq` keeps the order); objects keyed by
//! a name (apps, deferral reasons, budgets) keep the order of their source;
//! a number that is not finite is written as `null` (serde_json's rule).

use serde::Serialize;
use serde::ser::Serializer;

use super::{GatewayStatus, QueuedDetail, QueuedSummary};
use crate::policy::senders::Verdict;
use crate::shaper::{BudgetView, DeferReason};

/// `GET /status`.
#[derive(Serialize)]
pub struct Status<'a> {
    pub version: &'static str,
    pub ready: bool,
    pub gateways: Vec<Gateway<'a>>,
    pub sender_checks: Vec<SenderCheck<'a>>,
}

/// One gateway of [`Status`].
#[derive(Serialize)]
pub struct Gateway<'a> {
    name: &'a str,
    address: &'a str,
    /// `enforce`, or `observe` (mail relayed at once, would-be holds
    /// counted).
    mode: &'static str,
    /// Observe mode: what enforcement would be doing now.
    #[serde(skip_serializing_if = "Option::is_none")]
    observed: Option<ObservedNow>,
    baseline_rate: f64,
    ceiling_rate: f64,
    demand_rate: f64,
    send_rate: f64,
    burst_ratio: f64,
    queue: Queue<'a>,
    backoff: Backoff,
    volume_budgets: Keyed<&'static str, Budget>,
    history: History<'a>,
    /// Each budgeted receiver's own view, by name.
    receivers: Keyed<&'a str, Receiver>,
    deferrals: Keyed<&'static str, u64>,
    connections: i64,
    cluster: Option<Cluster>,
    recent_replies: Vec<Reply<'a>>,
}

#[derive(Serialize)]
struct ObservedNow {
    /// Messages relayed already that enforcement would still hold.
    would_hold: usize,
}

#[derive(Serialize)]
struct Queue<'a> {
    messages: usize,
    bytes: u64,
    parked: usize,
    oldest_age_seconds: f64,
    /// How long the queue takes to drain at the pace the shaping allows.
    drain_seconds: f64,
    /// What the drain waits for (a `deferrals` reason; `null` when empty).
    waits_for: Option<&'static str>,
    held: bool,
    by_app: Keyed<&'a str, usize>,
}

#[derive(Serialize)]
struct Backoff {
    penalty: f64,
    /// Seconds left of the pause.
    remaining_seconds: f64,
    /// `calm`, `throttled` (an episode: waiting for the gateway to accept
    /// again) or `recovering`.
    state: &'static str,
    /// Seconds until the ceiling is back where it was before the cut.
    recovery_left_seconds: f64,
}

#[derive(Serialize)]
struct Budget {
    sent: u64,
    allowance: u64,
    left: u64,
    transactional_room: u64,
    next_room_seconds: f64,
}

/// One budgeted receiver of a [`Gateway`].
#[derive(Serialize)]
struct Receiver {
    /// Its own budgets hold its mail (else its history is not known yet:
    /// counted, only the gateway's total holds).
    enforced: bool,
    /// Unix seconds from which they hold.
    held_from: u64,
    /// Messages waiting for the shaper to send them to it.
    queued: usize,
    volume_budgets: Keyed<&'static str, Budget>,
}

/// The volume budgets of a gateway or a receiver, by window (`1h`, `24h`).
fn budgets(views: &[BudgetView]) -> Keyed<&'static str, Budget> {
    Keyed(
        views
            .iter()
            .map(|budget| {
                let shown = Budget {
                    sent: budget.sent,
                    allowance: budget.allowance,
                    left: budget.allowance.saturating_sub(budget.sent),
                    transactional_room: budget.transactional_room,
                    next_room_seconds: budget.next_room,
                };
                (budget.horizon.label(), shown)
            })
            .collect(),
    )
}

/// Where the volume budgets' history comes from.
#[derive(Serialize)]
struct History<'a> {
    source: &'a str,
    /// Unix seconds of its first minute.
    since: u64,
    minutes: u64,
}

#[derive(Serialize)]
struct Cluster {
    connected: bool,
    nodes: u64,
    share_of: u64,
}

/// A gateway's reply at a time (Unix seconds): `/status`'s recent replies
/// and a queued message's attempts.
#[derive(Serialize)]
struct Reply<'a> {
    at: u64,
    reply: &'a str,
}

/// One sender check of [`Status`].
#[derive(Serialize)]
pub struct SenderCheck<'a> {
    address: &'a str,
    verdict: &'static str,
    reply: Option<&'a str>,
    checked_at: u64,
}

/// An object whose keys are names known only at run time, written in the
/// order given (a map type would sort them or cost a dependency).
pub struct Keyed<K, V>(pub Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Keyed<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

impl<'a> Gateway<'a> {
    pub fn new(status: &'a GatewayStatus) -> Gateway<'a> {
        let model = &status.view.model;
        Gateway {
            name: &status.name,
            address: &status.address,
            mode: model.mode.as_str(),
            observed: status
                .observed_backlog
                .map(|would_hold| ObservedNow { would_hold }),
            baseline_rate: model.baseline,
            ceiling_rate: model.ceiling,
            demand_rate: model.demand_rate,
            send_rate: model.send_rate,
            burst_ratio: model.burst_ratio,
            queue: Queue {
                messages: status.view.queued,
                bytes: status.queued_bytes,
                parked: status.parked,
                oldest_age_seconds: status.view.oldest_age,
                drain_seconds: status.view.drain.wait,
                waits_for: (status.view.queued > 0).then(|| status.view.drain.reason.as_str()),
                held: status.held,
                by_app: Keyed(
                    status
                        .lane_names
                        .iter()
                        .map(String::as_str)
                        .zip(status.view.lanes.iter().copied())
                        .collect(),
                ),
            },
            backoff: Backoff {
                penalty: model.penalty,
                remaining_seconds: model.paused_for,
                state: model.penalty_phase.as_str(),
                recovery_left_seconds: model.recovery_left,
            },
            volume_budgets: budgets(&model.budgets),
            history: History {
                source: &status.history.source,
                since: status.history.since,
                minutes: status.history.minutes,
            },
            receivers: Keyed(
                model
                    .receivers
                    .iter()
                    .enumerate()
                    .map(|(index, receiver)| {
                        let shown = Receiver {
                            enforced: receiver.held,
                            held_from: receiver.held_from.max(0.0) as u64,
                            queued: status
                                .view
                                .receivers
                                .get(index)
                                .copied()
                                .unwrap_or_default(),
                            volume_budgets: budgets(&receiver.budgets),
                        };
                        (receiver.name.as_str(), shown)
                    })
                    .collect(),
            ),
            deferrals: Keyed(
                DeferReason::ALL
                    .iter()
                    .map(|reason| reason.as_str())
                    .zip(model.deferrals)
                    .collect(),
            ),
            connections: status.connections,
            cluster: status.cluster.map(|cluster| Cluster {
                connected: cluster.connected,
                nodes: cluster.nodes,
                share_of: cluster.share_of,
            }),
            recent_replies: replies(&status.recent_replies),
        }
    }
}

impl<'a> SenderCheck<'a> {
    pub fn new(address: &'a str, verdict: &'a Verdict, checked_at: u64) -> SenderCheck<'a> {
        let (verdict, reply) = match verdict {
            Verdict::Exists => ("exists", None),
            Verdict::Missing(reply) => ("missing", Some(reply.as_str())),
        };
        SenderCheck {
            address,
            verdict,
            reply,
            checked_at,
        }
    }
}

fn replies(replies: &[(u64, String)]) -> Vec<Reply<'_>> {
    replies
        .iter()
        .map(|(at, reply)| Reply { at: *at, reply })
        .collect()
}

/// A queued message in a listing (`GET /admin/queue`) or as deleted.
#[derive(Serialize)]
pub struct Summary<'a> {
    id: &'a str,
    gateway: &'a str,
    sender: &'a str,
    recipients: &'a [String],
    size: u64,
    received_at: u64,
    attempts: u32,
    state: &'static str,
    retry_at: Option<u64>,
}

impl<'a> Summary<'a> {
    pub fn new(message: &'a QueuedSummary) -> Summary<'a> {
        Summary {
            id: &message.id,
            gateway: &message.gateway,
            sender: &message.sender,
            recipients: &message.recipients,
            size: message.size,
            received_at: message.received_at,
            attempts: message.attempts,
            state: message.state,
            retry_at: message.retry_at,
        }
    }
}

/// One queued message in full (`GET /admin/queue/ID`): the summary's
/// fields, then the rest.
#[derive(Serialize)]
pub struct Detail<'a> {
    #[serde(flatten)]
    summary: Summary<'a>,
    client_ip: &'a str,
    headers: &'a str,
    history: Vec<Reply<'a>>,
}

impl<'a> Detail<'a> {
    pub fn new(detail: &'a QueuedDetail) -> Detail<'a> {
        Detail {
            summary: Summary::new(&detail.summary),
            client_ip: &detail.client_ip,
            headers: &detail.headers,
            history: replies(&detail.history),
        }
    }
}

/// `POST /admin/gateways/G/hold` or `.../release`: the state it is in now.
#[derive(Serialize)]
pub struct Unpaused<'a> {
    pub gateway: &'a str,
    pub pause_left_seconds: f64,
}

/// A retry's answer: per gateway still paused, the seconds left.
#[derive(Serialize)]
pub struct Retried<'a> {
    pub retried: usize,
    pub still_paused: Keyed<&'a str, f64>,
}

#[derive(Serialize)]
pub struct HoldState<'a> {
    pub gateway: &'a str,
    pub state: &'static str,
}

/// The text of `document`. Serialising these types cannot fail (string
/// keys, no fallible `Serialize`), so a failure is a bug here, not input.
pub fn to_text(document: &impl Serialize) -> String {
    serde_json::to_string(document).expect("the admin documents always serialise")
}

/// A one-field object: `{"name": value}` (counts, errors, the id a dead
/// letter was queued again as).
pub fn single(name: &str, value: impl Serialize) -> String {
    to_text(&Keyed(vec![(name, value)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn keyed_objects_keep_their_order_and_strings_are_escaped() {
        let keyed = Keyed(vec![("zeta", 1u64), ("alpha", 2)]);
        assert_eq!(to_text(&keyed), r#"{"zeta":1,"alpha":2}"#);
        let text = single("error", "a \"quoted\"\\ line\n\u{1}");
        assert_eq!(text, r#"{"error":"a \"quoted\"\\ line\n\u0001"}"#);
        assert_eq!(single("rate", f64::NAN), r#"{"rate":null}"#);
    }

    /// The whole `/status` gateway document, field by field and in order:
    /// a public contract (dashboards' JSON panels, scripts, `jq`).
    #[test]
    fn a_gateway_is_written_field_by_field_in_order() {
        let status = crate::telemetry::example_status();
        assert_eq!(
            to_text(&Gateway::new(&status)),
            concat!(
                r#"{"name":"primary","address":"127.0.0.1:25","mode":"enforce","baseline_rate":0.5,"#,
                r#""ceiling_rate":1.0,"demand_rate":2.25,"send_rate":1.0,"burst_ratio":4.5,"#,
                r#""queue":{"messages":3,"bytes":4096,"parked":0,"oldest_age_seconds":7.5,"#,
                r#""drain_seconds":7200.0,"waits_for":"day_budget","#,
                r#""held":false,"by_app":{"billing":2,"other":1}},"#,
                r#""backoff":{"penalty":1.0,"remaining_seconds":0.0,"state":"calm","#,
                r#""recovery_left_seconds":0.0},"#,
                r#""volume_budgets":{"1h":{"sent":40,"allowance":60,"left":20,"#,
                r#""transactional_room":12,"next_room_seconds":0.0}},"#,
                r#""history":{"source":"postfix log","since":1763575200,"minutes":10080},"#,
                r#""receivers":{"google":{"enforced":true,"held_from":1763575200,"queued":2,"#,
                r#""volume_budgets":{"1h":{"sent":20,"allowance":20,"left":0,"#,
                r#""transactional_room":5,"next_room_seconds":600.0},"#,
                r#""24h":{"sent":60,"allowance":100,"left":40,"#,
                r#""transactional_room":25,"next_room_seconds":0.0}}},"#,
                r#""microsoft":{"enforced":false,"held_from":1764180000,"queued":0,"#,
                r#""volume_budgets":{"24h":{"sent":130,"allowance":100,"left":0,"#,
                r#""transactional_room":25,"next_room_seconds":120.0}}}},"#,
                r#""deferrals":{"queue_delay":1,"queue_full":0,"cap":0,"hour_budget":2,"#,
                r#""day_budget":0,"recipients":0,"receiver_hour_budget":0,"#,
                r#""receiver_day_budget":0},"connections":1,"#,
                r#""cluster":{"connected":true,"nodes":3,"share_of":3},"#,
                r#""recent_replies":[{"at":1764180000,"reply":"451 4.7.500 busy"}]}"#,
            )
        );
    }

    #[test]
    fn the_status_document_wraps_gateways_and_sender_checks() {
        let missing = Verdict::Missing("550 5.1.1 no such user".into());
        let status = Status {
            version: "0.1.0",
            ready: true,
            gateways: Vec::new(),
            sender_checks: vec![
                SenderCheck::new("app@example.com", &Verdict::Exists, 10),
                SenderCheck::new("gone@example.com", &missing, 11),
            ],
        };
        assert_eq!(
            to_text(&status),
            concat!(
                r#"{"version":"0.1.0","ready":true,"gateways":[],"sender_checks":["#,
                r#"{"address":"app@example.com","verdict":"exists","reply":null,"checked_at":10},"#,
                r#"{"address":"gone@example.com","verdict":"missing","#,
                r#""reply":"550 5.1.1 no such user","checked_at":11}]}"#,
            )
        );
    }

    #[test]
    fn a_detail_is_its_summary_and_the_rest() {
        let detail = QueuedDetail {
            summary: QueuedSummary {
                id: "0000000000000001".into(),
                gateway: "primary".into(),
                sender: "app@example.com".into(),
                recipients: vec!["a@example.org".into()],
                size: 120,
                received_at: 1_764_180_000,
                attempts: 1,
                state: "retry",
                retry_at: Some(1_764_180_060),
            },
            client_ip: "127.0.0.1".into(),
            headers: "Subject: hi\r\n".into(),
            history: vec![(1_764_180_001, "451 4.3.0 later".into())],
        };
        let text = to_text(&Detail::new(&detail));
        assert!(
            text.starts_with(r#"{"id":"0000000000000001","gateway":"primary""#),
            "{text}"
        );
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "0000000000000001", "gateway": "primary",
                "sender": "app@example.com", "recipients": ["a@example.org"],
                "size": 120, "received_at": 1_764_180_000u64, "attempts": 1,
                "state": "retry", "retry_at": 1_764_180_060u64,
                "client_ip": "127.0.0.1", "headers": "Subject: hi\r\n",
                "history": [{"at": 1_764_180_001u64, "reply": "451 4.3.0 later"}],
            })
        );
    }
}
