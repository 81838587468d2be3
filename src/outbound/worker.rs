//! A delivery worker: takes messages from its gateway's queue, sends each
//! over its one kept-alive connection, and settles every recipient (done,
//! retry later, or dead letter) in the spool.
//!
//! Dead letters of a message whose app asked for them (`[[apps]] dsn`,
//! kept in the envelope) are reported to its sender: the recipients that
//! fail in one settle go in one delivery status notification
//! (`smtp::dsn`), from the null sender, queued in the spool and on the same
//! gateway like any mail, in the transactional `other` lane (shaped and
//! capped, never bulk). Order, so a crash at any instant is safe: the
//! dead-letter file first (the record of the failure, fsynced), then the
//! notification, stored together with the fact that it finishes those
//! recipients (`Spool::store_report`), then the completion entries. A crash
//! before the notification is stored leaves the recipients queued: they are
//! tried again and, failing again, get a second dead-letter file and the
//! one notification; a crash after it cannot report them twice. Mail from
//! the null sender is never reported (no bounce loops), so neither is a
//! notification that fails itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::time::Instant;

use super::Gateway;
use super::client::Connection;
use super::dkim::Signer;
use super::queue::{Attempt, GatewayEvent, HISTORY_LENGTH, Queued};
use crate::poison::LockRecovered;
use crate::policy::Holding;
use crate::policy::alignment::signing_domain;
use crate::shaper::feedback::{Signal, classify};
use crate::shutdown::Shutdown;
use crate::smtp::dsn::{self, Failure};
use crate::smtp::{Body, MailParams, Reply};
use crate::spool::{Envelope, Spool, SpoolError, StoredMessage, new_queue_id, unix_seconds};
use crate::telemetry::Metrics;

/// What every worker shares.
#[derive(Clone)]
pub(super) struct WorkerContext {
    pub spool: Spool,
    pub helo_name: String,
    /// DKIM keys per sender domain.
    pub signers: Arc<Vec<Signer>>,
    pub metrics: Arc<Metrics>,
    /// The lane notifications to senders travel in (`other`'s).
    pub report_lane: usize,
    /// Per lane, what becomes of mail held long (`[[apps]] expire_after`
    /// and `notify_delay`).
    pub holding: Arc<Vec<Holding>>,
}

impl WorkerContext {
    /// How long mail of `lane` may stay queued before it is dead-lettered.
    pub(super) fn lifetime(&self, gateway: &Gateway, lane: usize) -> std::time::Duration {
        self.holding
            .get(lane)
            .and_then(|holding| holding.expire_after)
            .unwrap_or(gateway.config.max_age)
    }

    /// How long mail of `lane` is held before its sender is told
    /// (`notify_delay`), if at all.
    pub(super) fn notify_delay(&self, lane: usize) -> Option<std::time::Duration> {
        self.holding
            .get(lane)
            .and_then(|holding| holding.notify_delay)
    }
}

/// Counts one open upstream connection in `upstream_connections` for as
/// long as it lives.
struct Counted(IntGauge);

impl Counted {
    fn new(gauge: IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A worker's kept-alive connection to its gateway.
struct Open {
    connection: Connection,
    _counted: Counted,
}

pub(super) async fn worker(gateway: Arc<Gateway>, context: WorkerContext, mut shutdown: Shutdown) {
    let mut connection: Option<Open> = None;
    loop {
        let idle = gateway.config.idle_connection_timeout;
        let item = tokio::select! {
            // Stopping wins over a waiting message: it stays queued.
            biased;
            _ = shutdown.stopped() => break,
            item = gateway.queue.next() => item,
            _ = tokio::time::sleep(idle), if connection.is_some() => {
                if let Some(open) = connection.take() {
                    open.connection.quit().await;
                }
                continue;
            }
        };
        deliver(&gateway, &context, &mut connection, item).await;
    }
    if let Some(open) = connection.take() {
        open.connection.quit().await;
    }
}

/// One delivery attempt of one message, and what follows from its replies.
async fn deliver(
    gateway: &Gateway,
    context: &WorkerContext,
    connection: &mut Option<Open>,
    mut item: Queued,
) {
    let age = unix_seconds().saturating_sub(item.message.envelope.received_at);
    let lifetime = context.lifetime(gateway, item.lane);
    if item.attempts == 0 && age >= lifetime.as_secs() {
        return expired(gateway, context, item, lifetime).await;
    }
    let message = &item.message;
    let body = match item.body.take() {
        Some(body) => Ok(body),
        None => context.spool.read_body(message.location).await,
    };
    let body = match body {
        Ok(body) => sign(context, &message.envelope.sender, &message.id, body),
        Err(error) => return unreadable(gateway, context, item, error).await,
    };
    let replies = attempt(gateway, context, connection, &item, &body).await;
    item.attempts += 1;
    settle(gateway, context, item, replies, false).await;
}

/// A message never tried whose turn came after it had been queued for its
/// whole lifetime (held by the budgets, a gateway down for days): it is
/// not sent that late, but dead-lettered and reported like a recipient that kept
/// failing (`4.4.7`, RFC 3463's "delivery time expired"). Its turn was
/// counted in the budgets, which only holds the gateway back a little.
pub(super) async fn expired(
    gateway: &Gateway,
    context: &WorkerContext,
    item: Queued,
    lifetime: std::time::Duration,
) {
    if item.probe {
        gateway.queue.heard(GatewayEvent::ProbeInconclusive);
    }
    let reply = Reply::new(
        451,
        format!(
            "4.4.7 held in smtp-shaper's queue longer than its expire_after ({})",
            crate::config::units::format_duration(lifetime.as_secs_f64())
        ),
    );
    context
        .metrics
        .expired
        .with_label_values(&[gateway.config.name.as_str()])
        .inc();
    let replies = vec![reply; item.message.pending.len()];
    // Expired as the sweep or the turn saw it: settle does not judge again
    // (on its own clock, it could disagree and retry it).
    settle(gateway, context, item, replies, true).await;
}

/// A message whose body the spool could not give back: every recipient is
/// settled with a temporary failure, and the attempt is not counted.
async fn unreadable(
    gateway: &Gateway,
    context: &WorkerContext,
    item: Queued,
    error: std::io::Error,
) {
    let message = &item.message;
    tracing::error!(queue_id = %message.id, %error, "cannot read a queued message from the spool; will retry");
    if item.probe {
        gateway.queue.heard(GatewayEvent::ProbeInconclusive);
    }
    let replies =
        vec![Reply::new(451, format!("4.3.0 spool read failed: {error}")); message.pending.len()];
    settle(gateway, context, item, replies, false).await;
}

/// Sends `item` over the worker's connection, opened first when there is
/// none; returns a reply per pending recipient, synthetic ones when the
/// gateway could not be reached or the transaction broke off.
async fn attempt(
    gateway: &Gateway,
    context: &WorkerContext,
    connection: &mut Option<Open>,
    item: &Queued,
    body: &[u8],
) -> Vec<Reply> {
    let name = gateway.config.name.as_str();
    let recipients = item.message.pending.len();
    let mut reused = connection.is_some();
    // A probe must report on the gateway, whichever way the attempt goes.
    let mut verdict = false;
    let replies = loop {
        if connection.is_none() {
            let opened = connect(gateway, context).await;
            verdict = true;
            match opened {
                Ok(open) => *connection = Some(open),
                Err(refused) => break vec![refused; recipients],
            }
        }
        let open = connection.as_mut().expect("connected above");
        let started = Instant::now();
        match open
            .connection
            .send(&item.message.envelope, &item.message.pending, body)
            .await
        {
            Ok(transaction) => {
                context
                    .metrics
                    .upstream_latency
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                if !transaction.reusable {
                    *connection = None;
                }
                if item.probe && !verdict {
                    // Through a connection kept open: the gateway answers.
                    gateway.queue.heard(GatewayEvent::Connected);
                    verdict = true;
                }
                break heard(gateway, context, transaction.replies);
            }
            Err(error) => {
                *connection = None;
                if reused && error.before_mail_reply {
                    // A kept-alive connection the gateway had closed: reconnect once.
                    reused = false;
                    continue;
                }
                gateway.remember(format!("transaction failed: {error}"));
                if error.outcome_unknown {
                    context
                        .metrics
                        .outcome_unknown
                        .with_label_values(&[name])
                        .inc();
                    tracing::warn!(
                        queue_id = %item.message.id,
                        gateway = %name,
                        %error,
                        "outcome unknown: the message was sent but its reply never came; it is tried again, so the gateway may deliver it twice"
                    );
                }
                break vec![Reply::new(451, format!("4.4.2 {error}")); recipients];
            }
        }
    };
    if item.probe && !verdict {
        gateway.queue.heard(GatewayEvent::ProbeInconclusive);
    }
    replies
}

/// A new connection to the gateway, or the reply that retries the
/// recipients when there is none: a failure pauses deliveries to the
/// gateway as its backoff says.
/// At start (and reload): connects to the gateway once and reads its
/// greeting (see [`Connection::greeting`]), and says whether that worked,
/// in the log and in `/readyz`, before any mail needs it. It never pauses
/// deliveries nor counts: the workers find out for themselves.
pub async fn first_contact(gateway: Arc<Gateway>) {
    let config = &gateway.config;
    let greeted = Connection::greeting(
        &config.address,
        &gateway.tls,
        config.connect_timeout,
        config.command_timeout,
    )
    .await;
    let unreachable = match greeted {
        Ok(()) => {
            tracing::info!(gateway = %config.name, address = %config.address, "gateway reachable");
            None
        }
        Err(error) => {
            tracing::warn!(gateway = %config.name, address = %config.address, %error, "gateway not reachable at start: mail is accepted and queued, and deliveries retry");
            Some(error.to_string())
        }
    };
    *gateway.first_contact.lock_recovered() = unreachable;
}

async fn connect(gateway: &Gateway, context: &WorkerContext) -> Result<Open, Reply> {
    let config = &gateway.config;
    let name = config.name.as_str();
    let metrics = &context.metrics;
    let started = Instant::now();
    match Connection::open(
        &config.address,
        &context.helo_name,
        &gateway.tls,
        gateway.credentials.as_ref(),
        config.connect_timeout,
        config.command_timeout,
    )
    .await
    {
        Ok(mut open) => {
            open.set_data_reply_timeout(config.data_reply_timeout);
            tracing::debug!(gateway = %config.name, tls = open.is_tls(), "connected to the gateway");
            gateway.queue.heard(GatewayEvent::Connected);
            Ok(Open {
                connection: open,
                _counted: Counted::new(metrics.upstream_connections.with_label_values(&[name])),
            })
        }
        Err(error) => {
            metrics
                .upstream_connect_failures
                .with_label_values(&[name])
                .inc();
            gateway.remember(format!("connection failed: {error}"));
            // What the gateway said before closing is counted and heeded
            // like any reply.
            if let Some(refusal) = error.refusal.clone() {
                heard(gateway, context, vec![refusal]);
            }
            gateway.queue.heard(GatewayEvent::ConnectFailed {
                started,
                address: &config.address,
                error: &error,
                pause: &|failures| gateway.backoff.delay(failures, fastrand::f64()),
            });
            Err(Reply::new(421, format!("4.4.1 {error}")))
        }
    }
}

/// Counts the gateway's replies to a transaction, keeps its refusals for
/// the operators' view, and heeds what they signal; returns the replies to
/// settle the recipients with.
fn heard(gateway: &Gateway, context: &WorkerContext, replies: Vec<Reply>) -> Vec<Reply> {
    let name = gateway.config.name.as_str();
    for reply in &replies {
        context
            .metrics
            .upstream_replies
            .with_label_values(&[name, reply.class_label()])
            .inc();
        if !reply.is_positive() {
            gateway.remember(reply.to_string());
        }
    }
    heed_signals(gateway, replies)
}

/// The message with a DKIM-Signature on top when its domain has a key.
fn sign(context: &WorkerContext, sender: &str, queue_id: &str, body: Vec<u8>) -> Vec<u8> {
    // Without [[dkim]] keys, no header is parsed on the delivery path.
    if context.signers.is_empty() {
        return body;
    }
    let Some(domain) = signing_domain(&body, sender) else {
        return body;
    };
    let Some(signer) = context
        .signers
        .iter()
        .find(|signer| signer.domain == domain)
    else {
        return body;
    };
    match signer.sign(&body, unix_seconds()) {
        Ok(mut signed) => {
            signed.extend_from_slice(&body);
            signed
        }
        Err(error) => {
            tracing::error!(queue_id, %domain, %error, "DKIM signing failed; sending unsigned");
            body
        }
    }
}

/// Acts on what the gateway's own replies say about our sending (our
/// synthetic replies for connection failures never say anything):
/// throttling slows the shaper down, a used-up quota holds the queue and
/// turns those replies into retries, reputation trouble is logged for
/// operators. Returns the replies to settle the recipients with.
///
/// A throttling reply to some recipients of a transaction the gateway
/// accepted for others is about those recipients, not our rate: they are
/// tried again, and the ceiling stays. An accepted transaction ends a
/// throttling episode (see `shaper::penalty`).
fn heed_signals(gateway: &Gateway, mut replies: Vec<Reply>) -> Vec<Reply> {
    let name = &gateway.config.name;
    let accepted = replies.iter().any(Reply::is_positive);
    if accepted {
        gateway.queue.heard(GatewayEvent::Accepted);
    }
    let mut throttled = false;
    let mut held = false;
    for reply in &mut replies {
        match classify(reply) {
            Some(Signal::Throttling) if accepted => {
                tracing::debug!(gateway = %name, reply = %reply, "a recipient throttled in a transaction the gateway accepted; only that recipient waits");
            }
            Some(Signal::Throttling) if !throttled => {
                throttled = true;
                gateway.queue.heard(GatewayEvent::Throttled { reply });
            }
            Some(Signal::QuotaExhausted) => {
                if !held {
                    held = true;
                    gateway.queue.heard(GatewayEvent::QuotaExhausted { reply });
                }
                *reply = Reply::new(
                    451,
                    format!("4.2.0 held while the gateway's quota resets: {reply}"),
                );
            }
            Some(Signal::Reputation) => {
                tracing::error!(
                    gateway = %name,
                    reply = %reply,
                    "gateway reports reputation trouble for our sender or IP; operators must act (Exchange: check the tenant's restricted senders and IP reputation)"
                );
            }
            _ => {}
        }
    }
    replies
}

/// Applies per-recipient replies: done, retry later, or dead-letter.
/// `expired_already`: the message is past its lifetime whatever its age
/// says now.
async fn settle(
    gateway: &Gateway,
    context: &WorkerContext,
    item: Queued,
    replies: Vec<Reply>,
    expired_already: bool,
) {
    let message = &item.message;
    let age = unix_seconds().saturating_sub(message.envelope.received_at);
    let expired = expired_already || age >= context.lifetime(gateway, item.lane).as_secs();
    let (mut outcome, failures) = sort_recipients(message, &replies, item.attempts, age, expired);
    if !outcome.dead.is_empty() {
        match bury(gateway, context, message, &outcome.dead, &failures).await {
            Some(path) => log_dead(gateway, context, message, &outcome.dead, &path),
            None => outcome.keep_dead_queued(),
        }
    }
    let summary = summary(&replies);
    count(gateway, context, &outcome);
    if outcome.retry.is_empty() {
        finished(gateway, context, &item, &outcome, &summary);
    } else {
        deferred(gateway, context, item, outcome, summary);
    }
}

/// Where one attempt leaves a message's pending recipients (indices into
/// its envelope's recipients).
struct Outcome {
    delivered: Vec<u32>,
    retry: Vec<u32>,
    /// With the reason the dead-letter file gives.
    dead: Vec<(u32, String)>,
}

impl Outcome {
    /// The dead recipients go back to retry: their failure is not on
    /// record, or their sender could not be told.
    fn keep_dead_queued(&mut self) {
        self.retry
            .extend(self.dead.iter().map(|(recipient, _)| *recipient));
        self.dead.clear();
    }

    /// The `result` label of `messages_relayed`.
    fn label(&self) -> &'static str {
        if !self.retry.is_empty() {
            "deferred"
        } else if !self.dead.is_empty() {
            "failed"
        } else {
            "delivered"
        }
    }
}

/// Sorts the pending recipients of `message` by their `replies`: a
/// temporary failure is final too once the message is `expired` (`age`
/// seconds old after `attempts`). Also returns the dead ones as the
/// notification reports them.
fn sort_recipients<'a>(
    message: &'a StoredMessage,
    replies: &'a [Reply],
    attempts: u32,
    age: u64,
    expired: bool,
) -> (Outcome, Vec<Failure<'a>>) {
    let mut outcome = Outcome {
        delivered: Vec::new(),
        retry: Vec::new(),
        dead: Vec::new(),
    };
    let mut failures = Vec::new();
    for (&recipient, reply) in message.pending.iter().zip(replies) {
        let address = message
            .envelope
            .recipients
            .get(recipient as usize)
            .map_or("", String::as_str);
        if reply.is_positive() {
            outcome.delivered.push(recipient);
        } else if reply.is_permanent() {
            outcome.dead.push((recipient, reply.to_string()));
            failures.push(Failure {
                recipient: address,
                reply,
                expired: None,
            });
        } else if expired {
            outcome.dead.push((
                recipient,
                format!("expired after {attempts} attempts in {age}s; last reply: {reply}"),
            ));
            failures.push(Failure {
                recipient: address,
                reply,
                expired: Some((attempts, age)),
            });
        } else {
            outcome.retry.push(recipient);
        }
    }
    (outcome, failures)
}

/// Writes the `dead` recipients' dead-letter file, then the notification
/// of their `failures` when the app asked for one; returns the file once
/// all of it is durable, `None` when the recipients are to stay queued.
async fn bury(
    gateway: &Gateway,
    context: &WorkerContext,
    message: &StoredMessage,
    dead: &[(u32, String)],
    failures: &[Failure<'_>],
) -> Option<PathBuf> {
    let name = gateway.config.name.as_str();
    // The dead-letter file first: the sender is told only of failures on
    // record (see the module notes).
    match context
        .spool
        .dead_letter(message, dead, &gateway.config.name)
        .await
    {
        Ok(path) if message.envelope.dsn => {
            let indices: Vec<u32> = dead.iter().map(|(recipient, _)| *recipient).collect();
            match notify_sender(
                gateway,
                context,
                message,
                dsn::Action::Failed,
                failures,
                &indices,
            )
            .await
            {
                Ok(()) => Some(path),
                Err(error) => {
                    context
                        .metrics
                        .dsns
                        .with_label_values(&[name, "spool_error"])
                        .inc();
                    tracing::error!(
                        queue_id = %message.id,
                        %error,
                        dead_letter = %path.display(),
                        "cannot queue the delivery status notification to the sender; keeping the failed recipients queued (a later failure writes another dead-letter file)"
                    );
                    None
                }
            }
        }
        Ok(path) => Some(path),
        Err(error) => {
            tracing::error!(queue_id = %message.id, %error, "cannot write a dead-letter file; keeping the message queued");
            None
        }
    }
}

/// Counts and logs the `dead` recipients, on record in the file at `path`.
fn log_dead(
    gateway: &Gateway,
    context: &WorkerContext,
    message: &StoredMessage,
    dead: &[(u32, String)],
    path: &Path,
) {
    let name = gateway.config.name.as_str();
    context
        .metrics
        .dead_letters
        .with_label_values(&[name])
        .inc();
    for (recipient, reason) in dead {
        tracing::error!(
            queue_id = %message.id,
            gateway = %gateway.config.name,
            recipient = %message.envelope.recipients[*recipient as usize],
            reason = %reason,
            dead_letter = %path.display(),
            "delivery failed permanently; moved to the dead-letter area"
        );
    }
}

/// The reply an attempt is logged and remembered by: its first refusal,
/// or its first reply when none refused.
fn summary(replies: &[Reply]) -> String {
    replies
        .iter()
        .find(|reply| !reply.is_positive())
        .or(replies.first())
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// Counts an attempt's outcome in `recipients_relayed` and `messages_relayed`.
fn count(gateway: &Gateway, context: &WorkerContext, outcome: &Outcome) {
    let name = gateway.config.name.as_str();
    let metrics = &context.metrics;
    metrics
        .recipients_relayed
        .with_label_values(&[name])
        .inc_by(outcome.delivered.len() as u64);
    metrics
        .messages_relayed
        .with_label_values(&[name, outcome.label()])
        .inc();
}

/// An attempt that left no recipient to retry: the message is done.
fn finished(
    gateway: &Gateway,
    context: &WorkerContext,
    item: &Queued,
    outcome: &Outcome,
    summary: &str,
) {
    let message = &item.message;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    context
        .metrics
        .queue_delay
        .with_label_values(&[gateway.config.name.as_str()])
        .observe((now - message.envelope.received_at as f64).max(0.0));
    context.spool.message_done(message);
    tracing::info!(
        queue_id = %message.id,
        gateway = %gateway.config.name,
        attempt = item.attempts,
        delivered = outcome.delivered.len(),
        failed = outcome.dead.len(),
        reply = %summary,
        "delivery attempt finished the message"
    );
}

/// An attempt that left recipients to retry: the settled ones are done in
/// the spool, and the message waits in the queue for its next attempt.
fn deferred(
    gateway: &Gateway,
    context: &WorkerContext,
    mut item: Queued,
    outcome: Outcome,
    summary: String,
) {
    let message = &item.message;
    for recipient in outcome
        .delivered
        .iter()
        .chain(outcome.dead.iter().map(|(recipient, _)| recipient))
    {
        context.spool.recipient_done(message, *recipient);
    }
    let delay = gateway.backoff.delay(item.attempts.max(1), fastrand::f64());
    tracing::warn!(
        queue_id = %message.id,
        gateway = %gateway.config.name,
        attempt = item.attempts,
        delivered = outcome.delivered.len(),
        failed = outcome.dead.len(),
        deferred = outcome.retry.len(),
        reply = %summary,
        next_retry_in = %format!("{:.1}s", delay.as_secs_f64()),
        "delivery attempt deferred"
    );
    item.message.pending = outcome.retry;
    if item.history.len() == HISTORY_LENGTH {
        item.history.remove(0);
    }
    item.history.push(Attempt {
        at: unix_seconds(),
        reply: summary,
    });
    gateway.queue.retry_at(item, Instant::now() + delay);
}

/// Queues a delivery status notification of `failures` (the recipients
/// `indices` of `message`) to the message's sender, and hands it to this
/// gateway's queue. Returns once it is durable (see the module notes); a
/// message from the null sender gets none, which is no error.
pub(super) async fn notify_sender(
    gateway: &Gateway,
    context: &WorkerContext,
    message: &StoredMessage,
    action: dsn::Action,
    failures: &[Failure<'_>],
    indices: &[u32],
) -> Result<(), SpoolError> {
    let name = gateway.config.name.as_str();
    let metrics = &context.metrics;
    if message.envelope.sender.is_empty() {
        metrics.dsns.with_label_values(&[name, "null_sender"]).inc();
        tracing::info!(
            queue_id = %message.id,
            gateway = %name,
            "no delivery status notification: the message came from the null sender"
        );
        return Ok(());
    }
    let original = context
        .spool
        .read_body(message.location)
        .await
        .map_err(SpoolError)?;
    let id = new_queue_id();
    let now = unix_seconds();
    let report = dsn::build(&dsn::Report {
        action,
        hostname: &context.helo_name,
        queue_id: &message.id,
        report_id: &id,
        sender: &message.envelope.sender,
        arrival: message.envelope.received_at,
        now,
        original: &original,
        failures,
    });
    drop(original);
    let envelope = Envelope {
        sender: String::new(),
        recipients: vec![message.envelope.sender.clone()],
        params: MailParams {
            size: None,
            // The original headers go back as they came.
            body: if report.is_ascii() {
                Body::SevenBit
            } else {
                Body::EightBitMime
            },
            // A UTF-8 sender address needs SMTPUTF8 to be written to.
            smtputf8: message.envelope.params.smtputf8,
        },
        // Written here, not received from a client.
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        received_at: now,
        dsn: false,
    };
    let stored = context
        .spool
        .store_report(id, name, envelope, &report, message, indices)
        .await?;
    let (result, what) = match action {
        dsn::Action::Failed => ("queued", "failed"),
        dsn::Action::Delayed { .. } => ("delayed", "delayed"),
    };
    metrics.dsns.with_label_values(&[name, result]).inc();
    tracing::info!(
        queue_id = %message.id,
        dsn_queue_id = %stored.id,
        gateway = %name,
        sender = %message.envelope.sender,
        recipients = failures.len(),
        action = what,
        "queued a delivery status notification to the sender"
    );
    gateway.queue.push(
        // A notification counts in the gateway's total only.
        Queued::new(stored, (context.report_lane, None), Some(report)),
        // Not an app's demand: the shaper meters what apps try to send.
        false,
        gateway.config.max_connections,
    );
    Ok(())
}
