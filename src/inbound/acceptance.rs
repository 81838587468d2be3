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
use crate::smtp::trace::{TraceInfo, received_header};
use crate::smtp::{DataError, Reply};
use crate::spool::{Envelope, new_queue_id, unix_seconds};

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
/// `452` (not stored).
async fn store(
    context: &Context,
    session: &Session<'_>,
    transaction: Transaction,
    body: Vec<u8>,
) -> Outcome {
    let server = &context.config.server;
    let id = new_queue_id();
    let received_at = unix_seconds();
    let trace = received_header(&TraceInfo {
        helo: session.helo(),
        client_ip: session.client_ip,
        hostname: &server.hostname,
        protocol: session.protocol(&transaction),
        queue_id: &id,
        single_recipient: match transaction.recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        },
        unix_seconds: received_at,
    });
    let gateway = &context.config.gateways[transaction.gateway].name;
    let lane = transaction.lane;
    let recipients = transaction.recipients.len();
    let projection = transaction.projection;
    let envelope = Envelope {
        sender: transaction.sender,
        recipients: transaction.recipients,
        params: transaction.params,
        client_ip: session.client_ip,
        received_at,
        dsn: context.policy.apps.dsn(lane),
    };
    let sender = envelope.sender.clone();
    // The message as stored and relayed: our trace header, then the body.
    // Built once, it is both spooled and handed to the delivery queue.
    let mut message = trace.into_bytes();
    message.extend_from_slice(&body);
    drop(body);
    // As stored and relayed, our Received: header included: the size
    // `queue list` shows.
    let size = message.len();
    match context
        .spool
        .store(id, gateway, envelope, &[&message])
        .await
    {
        Ok(stored) => {
            let message_id = crate::smtp::header::value(&message, "Message-ID").unwrap_or_default();
            tracing::info!(
                queue_id = %stored.id,
                %message_id,
                sender = %sender,
                recipients,
                size,
                client = %session.client_ip,
                gateway = %gateway,
                expected_wait = %format_duration(projection.wait),
                waits_for = projection.reason.as_str(),
                "message accepted"
            );
            let reply = accepted_reply(&stored.id, &projection);
            context
                .outbound
                .accepted(stored, context.policy.apps.name(lane), message);
            Outcome::Accepted(reply)
        }
        Err(error) => {
            tracing::error!(%error, sender = %sender, client = %session.client_ip, "message not stored; answering 452");
            Outcome::Refused(Refused::Continue(
                Refusal::new(
                    RefusalReason::SpoolError,
                    452,
                    "4.3.1 Insufficient system storage, try again later",
                )
                .quiet(),
            ))
        }
    }
}
