//! The relay rules on a received message, applied after DATA and before it
//! is spooled (the rules themselves: `policy::message` and
//! `policy::alignment`):
//!
//! 1. From: and Sender: readable and counted as RFC 5322 3.6 says, else
//!    `554 5.6.0` (always);
//! 2. relay rule 2 on From: and Sender:, else `550 5.7.1 ... (relay rule
//!    2)` (always: apps without `senders`, and `other`, may use any);
//! 3. one-click unsubscribe on the mail of a bulk app (its `unsubscribe`);
//! 4. DMARC alignment of the From: domain (the gateway's `alignment`).
//!
//! Every refusal and warning is logged with its fields and counted; a
//! refusal's reply goes back to the acceptance pipeline, which answers it
//! through the session so that it counts towards `max_errors`. The DMARC
//! record is asked for only when it can change the verdict, and a DNS that
//! fails or is slow makes the check relaxed, never a refusal
//! (`policy::dmarc`).

use std::net::IpAddr;

use super::session::Transaction;
use super::{Context, Refusal, RefusalReason};
use crate::config::{AlignmentMode, UnsubscribeMode};
use crate::policy::alignment::{Identifiers, Modes, Verdict, signing_domain};
use crate::policy::message::{Authors, unsubscribe_problem};

/// `Err` with the refusal when the message is refused.
pub(super) async fn check(
    context: &Context,
    client: IpAddr,
    transaction: &Transaction,
    message: &[u8],
) -> Result<(), Refusal> {
    let policy = &context.policy;
    let app = policy.apps.name(transaction.lane);
    let gateway = policy.gateways[transaction.gateway].as_str();
    let sender = transaction.sender.as_str();
    let authors = Authors::of(message).map_err(|problem| {
        tracing::info!(%client, %app, %gateway, %sender, %problem, rule = "rfc5322", "message refused: its From:/Sender: header fields are malformed");
        Refusal::new(
            RefusalReason::BadContent,
            554,
            format!("5.6.0 Message refused: {problem}"),
        )
    })?;
    if let Some((field, mailbox)) = authors.not_allowed(&policy.apps, transaction.lane) {
        let address = &mailbox.address;
        tracing::info!(%client, %app, %gateway, %sender, header = field, author = %address, rule = "header_sender", "message refused: the header names a sender outside the app's senders (relay rule 2)");
        return Err(Refusal::new(
            RefusalReason::HeaderSender,
            550,
            format!(
                "5.7.1 {field} <{address}> is not allowed for app {app}: each app sends only from its own addresses or domain, in the header as in MAIL FROM (relay rule 2)"
            ),
        ));
    }
    let origin = Origin {
        client,
        app,
        gateway,
        sender,
    };
    unsubscribe_rule(context, &origin, transaction.lane, message)?;
    alignment_rule(context, &origin, transaction.gateway, &authors, message).await
}

/// Who sent a message, as every log line of these checks names it.
struct Origin<'a> {
    client: IpAddr,
    app: &'a str,
    gateway: &'a str,
    sender: &'a str,
}

/// Rule 3: one-click unsubscribe on the mail of a bulk app, as its
/// `unsubscribe` says (refuse, warn, or nothing).
fn unsubscribe_rule(
    context: &Context,
    origin: &Origin<'_>,
    lane: usize,
    message: &[u8],
) -> Result<(), Refusal> {
    let Origin {
        client,
        app,
        gateway,
        sender,
    } = origin;
    let unsubscribe = context.policy.apps.unsubscribe(lane);
    if unsubscribe != UnsubscribeMode::Off
        && let Some(problem) = unsubscribe_problem(message)
    {
        context
            .metrics
            .unsubscribe_missing
            .with_label_values(&[app])
            .inc();
        if unsubscribe == UnsubscribeMode::Require {
            tracing::info!(%client, %app, %gateway, %sender, %problem, rule = "unsubscribe", "message refused: bulk mail without one-click unsubscribe");
            return Err(Refusal::new(
                RefusalReason::Unsubscribe,
                550,
                format!(
                    "5.7.1 Bulk mail from app {app} needs one-click unsubscribe (RFC 8058): {problem}; add List-Unsubscribe: <https://...> and List-Unsubscribe-Post: List-Unsubscribe=One-Click"
                ),
            ));
        }
        tracing::warn!(%client, %app, %gateway, %sender, %problem, "bulk message without one-click unsubscribe, accepted (unsubscribe = \"warn\"); Gmail, Yahoo and Outlook.com require it of bulk senders");
    }
    Ok(())
}

/// Rule 4: the From: domains DMARC-aligned, as the gateway's `alignment`
/// says (refuse, warn, or nothing).
async fn alignment_rule(
    context: &Context,
    origin: &Origin<'_>,
    gateway_index: usize,
    authors: &Authors,
    message: &[u8],
) -> Result<(), Refusal> {
    let Origin {
        client,
        app,
        gateway,
        sender,
    } = origin;
    let policy = &context.policy;
    let mode = policy.alignment[gateway_index];
    if mode == AlignmentMode::Off || authors.from.is_empty() {
        return Ok(());
    }
    let spf = sender.rsplit_once('@').map(|(_, domain)| domain);
    // The domain the delivery will sign with (policy makes the same choice
    // for both), when a [[dkim]] key exists for it.
    let dkim =
        signing_domain(message, sender).filter(|domain| policy.dkim_domains.contains(domain));
    let mut misaligned = None;
    for mailbox in &authors.from {
        let ids = Identifiers {
            from: &mailbox.domain,
            spf,
            dkim: dkim.as_deref(),
        };
        let modes = if ids.needs_record() {
            dmarc_modes(context, &mailbox.domain).await
        } else {
            Modes::default()
        };
        if let Verdict::Misaligned(why) = ids.judge(modes) {
            misaligned = Some((mailbox, why));
            break;
        }
    }
    let result = if misaligned.is_some() {
        "misaligned"
    } else {
        "aligned"
    };
    context
        .metrics
        .alignment_checks
        .with_label_values(&[gateway, result])
        .inc();
    let Some((mailbox, why)) = misaligned else {
        return Ok(());
    };
    let from_domain = &mailbox.domain;
    let author = &mailbox.address;
    if mode == AlignmentMode::Enforce {
        tracing::info!(%client, %app, %gateway, %sender, %author, %from_domain, %why, rule = "alignment", "message refused: From: domain not DMARC-aligned");
        return Err(Refusal::new(
            RefusalReason::Alignment,
            550,
            format!(
                "5.7.1 From: domain {from_domain} is not DMARC-aligned: {why}; receivers would fail its DMARC check (RFC 7489 3.1)"
            ),
        ));
    }
    tracing::warn!(%client, %app, %gateway, %sender, %author, %from_domain, %why, "From: domain not DMARC-aligned, accepted (alignment = \"warn\"); receivers will fail its DMARC check");
    Ok(())
}

/// The alignment modes of `domain`'s DMARC record; relaxed when DNS
/// failed or did not answer in time.
async fn dmarc_modes(context: &Context, domain: &str) -> Modes {
    let metrics = context.metrics.clone();
    let record = context
        .policy
        .dmarc
        .record(domain, move |record| {
            metrics
                .dmarc_lookups
                .with_label_values(&[record.label()])
                .inc();
        })
        .await;
    match record {
        Some(record) => record.modes(),
        None => {
            context
                .metrics
                .dmarc_lookups
                .with_label_values(&["timeout"])
                .inc();
            tracing::warn!(%domain, timeout = ?crate::policy::dmarc::LOOKUP_TIMEOUT, "DMARC lookup not answered in time; alignment judged relaxed");
            Modes::default()
        }
    }
}
