//! The acceptance pipeline: what a message comes to once its DATA ended.
//!
//! End of DATA (the session's own rules: size, bare CR or LF, NUL, long
//! lines, a mail loop) -> the message rules that may wait for DNS
//! (`checks`) -> the spool -> the hand-off to the gateway's delivery queue,
//! ending in one [`Outcome`] that the connection writes as it is.
//!
//! Invariants: the `250` comes only after the spool has the message on
//! stable storage, and the hand-off only after the store, so nothing queued
//! is missing from the spool. A refusal by a rule counts towards the
//! session's `max_errors` (through [`Session::refuse`]); a spool failure
//! does not, the client having done nothing wrong. Each refusal is counted
//! once, by the connection; the ones this pipeline (or `checks`) logged
//! with their own fields come back quiet, so no refusal is logged twice.

use super::checks;
use super::session::{Refused, Session, Transaction, accepted_reply};
use super::{Context, Refusal, RefusalReason};
use crate::config::units::format_duration;
use crate::policy::receiver_lookup::LOOKUP_WAIT;
use crate::smtp::trace::{TraceInfo, received_header};
use crate::smtp::{DataError, Reply};
use crate::spool::{Envelope, new_queue_id, unix_seconds};
use std::time::Duration;

/// What the end of a message comes to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Stored and handed to delivery: the `250` with its queue id.
    Accepted(Reply),
    /// Refused, with the reason it counts under; the connection goes on
    /// or closes as it says.
    Refused(Refused),
}

/// Runs a received body through the pipeline; `body` is what the DATA
/// framing made of the input (an error when it broke a framing rule).
pub(super) async fn accept(
    context: &Context,
    session: &mut Session<'_>,
    body: Result<Vec<u8>, DataError>,
) -> Outcome {
    let (transaction, body) = match session.data_end(body) {
        Ok(accepted) => accepted,
        Err(Refused::Continue(refusal)) => {
            tracing::info!(client = %session.client_ip, reply = %refusal.reply, "message refused");
            return Outcome::Refused(Refused::Continue(refusal.quiet()));
        }
        // Past `max_errors`: the 421 is logged like any refusal.
        Err(close) => return Outcome::Refused(close),
    };
    if let Err(refusal) = checks::check(context, session.client_ip, &transaction, &body).await {
        // The check logged why; the session counts the error.
        return Outcome::Refused(session.refuse(refusal.quiet()));
    }
    store(context, session, transaction, body).await
}

/// Spools an accepted body and hands it to delivery: `250` (durable), or
/// `452` (not stored). A message whose recipients belong to several
/// budgeted receivers is stored as one message per receiver (each its own
/// queue id, record, retries, DSNs and dead letters), so each leaves as
/// its own upstream transaction when its receiver has room; the `250`
/// names every id. Nothing is handed to delivery before every part is
/// stored, and a part that cannot be stored takes the others back: the
/// `452` then means nothing of it was accepted.
async fn store(
    context: &Context,
    session: &Session<'_>,
    transaction: Transaction,
    body: Vec<u8>,
) -> Outcome {
    let server = &context.config.server;
    let gateway = &context.config.gateways[transaction.gateway].name;
    let lane = transaction.lane;
    let projection = transaction.projection;
    let received_at = unix_seconds();
    let parts = by_receiver(context, &transaction).await;
    let sender = transaction.sender.clone();
    let message_id = crate::smtp::header::value(&body, "Message-ID").unwrap_or_default();
    let mut stored = Vec::with_capacity(parts.len());
    for (receiver, indices) in &parts {
        let id = new_queue_id();
        let recipients: Vec<String> = indices
            .iter()
            .map(|index| transaction.recipients[*index].clone())
            .collect();
        let trace = received_header(&TraceInfo {
            helo: session.helo(),
            client_ip: session.client_ip,
            hostname: &server.hostname,
            protocol: session.protocol(&transaction),
            queue_id: &id,
            single_recipient: match recipients.as_slice() {
                [only] => Some(only.as_str()),
                _ => None,
            },
            unix_seconds: received_at,
        });
        let envelope = Envelope {
            sender: transaction.sender.clone(),
            recipients,
            params: transaction.params.clone(),
            client_ip: session.client_ip,
            received_at,
            dsn: context.policy.apps.dsn(lane),
        };
        // The message as stored and relayed: our trace header, then the
        // body. Built once per part, it is both spooled and handed to the
        // delivery queue.
        let mut message = trace.into_bytes();
        message.extend_from_slice(&body);
        match context
            .spool
            .store(id, gateway, envelope, &[&message])
            .await
        {
            Ok(part) => stored.push((part, *receiver, message)),
            Err(error) => {
                for (part, ..) in &stored {
                    context.spool.message_done(part);
                }
                tracing::error!(%error, sender = %sender, client = %session.client_ip, "message not stored; answering 452");
                return Outcome::Refused(Refused::Continue(
                    Refusal::new(
                        RefusalReason::SpoolError,
                        452,
                        "4.3.1 Insufficient system storage, try again later",
                    )
                    .quiet(),
                ));
            }
        }
    }
    drop(body);
    let ids: Vec<&str> = stored.iter().map(|(part, ..)| part.id.as_str()).collect();
    let reply = accepted_reply(&ids.join(" "), &projection);
    let count = stored.len();
    for (number, (part, receiver, message)) in stored.into_iter().enumerate() {
        tracing::info!(
            queue_id = %part.id,
            %message_id,
            sender = %sender,
            recipients = part.envelope.recipients.len(),
            // As stored and relayed, our Received: header included: the
            // size `queue list` shows.
            size = message.len(),
            client = %session.client_ip,
            gateway = %gateway,
            receiver = context.policy.receivers.name(transaction.gateway, receiver),
            part = %format!("{}/{count}", number + 1),
            expected_wait = %format_duration(projection.wait),
            waits_for = projection.reason.as_str(),
            "message accepted"
        );
        context
            .outbound
            .accepted(part, context.policy.apps.name(lane), message);
    }
    Outcome::Accepted(reply)
}

/// The message's recipients by receiver, in the order each receiver first
/// appears: (the receiver, the indices of its recipients). Domains the
/// names do not place are looked up all at once, and waited for at most
/// `receiver_lookup::LOOKUP_WAIT` together (what does not answer by then
/// counts as `other`).
async fn by_receiver(
    context: &Context,
    transaction: &Transaction,
) -> Vec<(Option<usize>, Vec<usize>)> {
    let lookup = &context.policy.receivers;
    let gateway = transaction.gateway;
    let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
    // Asked without waiting first, so the lookups run side by side.
    for recipient in &transaction.recipients {
        lookup.resolve(gateway, recipient, Duration::ZERO).await;
    }
    let mut parts: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
    for (index, recipient) in transaction.recipients.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let receiver = lookup.resolve(gateway, recipient, left).await;
        match parts.iter_mut().find(|(known, _)| *known == receiver) {
            Some((_, indices)) => indices.push(index),
            None => parts.push((receiver, vec![index])),
        }
    }
    parts
}
