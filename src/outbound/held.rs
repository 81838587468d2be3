//! Mail held long: a sweep per gateway, every few seconds, over the mail
//! the shaper holds (accepted, never tried, waiting for room).
//!
//! - **Expiry**: mail queued for its app's `expire_after` (else the
//!   gateway's `max_age`) is taken out, dead-lettered and reported to its
//!   sender with `dsn` (see `worker::expired`), without waiting for its
//!   turn, which the budgets may give only days later.
//! - **Delay notices**: for an app with `notify_delay`, mail held that long
//!   gets one delivery status notification with `Action: delayed`, stored
//!   and shaped like any notification. Once per message, at most: each app
//!   keeps, per gateway, the arrival time up to which its mail has been told
//!   (lanes are in arrival order), in [`Told`], which a reload keeps. A
//!   process starts it at its start less `notify_delay`: mail that was held
//!   that long before a restart was told by the run before it, and mail
//!   that reached `notify_delay` while the service was down is not told
//!   late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Gateway;
use super::queue::Slot;
use super::worker::{WorkerContext, expired, notify_sender};
use crate::config::units::format_duration;
use crate::poison::LockRecovered;
use crate::shaper::Taken;
use crate::shutdown::Shutdown;
use crate::smtp::Reply;
use crate::smtp::dsn::{self, Failure};
use crate::spool::{StoredMessage, unix_seconds};

/// How often a gateway's held mail is swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Most messages one sweep expires (each is written to the spool in turn):
/// a stop or reload waits for one batch at most; the rest go next sweep.
const EXPIRE_BATCH: usize = 500;

/// Per gateway and app, the arrival time (Unix seconds) up to which held
/// mail has been told of its delay: kept by the service across reloads.
#[derive(Debug, Default)]
pub struct Told(Mutex<HashMap<(String, String), u64>>);

impl Told {
    fn get(&self, gateway: &str, app: &str) -> Option<u64> {
        self.0
            .lock_recovered()
            .get(&(gateway.to_string(), app.to_string()))
            .copied()
    }

    fn set(&self, gateway: &str, app: &str, until: u64) {
        self.0
            .lock_recovered()
            .insert((gateway.to_string(), app.to_string()), until);
    }
}

/// The sweep of `gateway`'s held mail, until `shutdown`; `told` is kept
/// across reloads.
pub(super) async fn sweep(
    gateway: Arc<Gateway>,
    context: WorkerContext,
    told_before: Arc<Told>,
    mut shutdown: Shutdown,
) {
    let start = unix_seconds();
    let name = gateway.config.name.as_str();
    // Per lane: mail that arrived up to here has been told (or is not to be).
    let mut told: Vec<u64> = context
        .holding
        .iter()
        .map(|holding| match holding.notify_delay {
            Some(delay) => told_before
                .get(name, &holding.app)
                .unwrap_or(start.saturating_sub(delay.as_secs())),
            None => u64::MAX,
        })
        .collect();
    loop {
        // Sweep after a pause, the first time too: a reload moves the
        // queued mail into this generation's queues just after starting
        // it, and a sweep before that would pass over its arrivals.
        tokio::select! {
            _ = shutdown.stopped() => break,
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        expire(&gateway, &context).await;
        notify_delayed(&gateway, &context, &mut told).await;
        for (holding, until) in context.holding.iter().zip(&told) {
            if holding.notify_delay.is_some() {
                told_before.set(name, &holding.app, *until);
            }
        }
    }
}

/// Dead-letters the never-tried mail held past its lifetime.
async fn expire(gateway: &Gateway, context: &WorkerContext) {
    let lifetime = |lane: usize| context.lifetime(gateway, lane).as_secs();
    for Taken {
        item: slot,
        lane,
        receiver,
        units,
    } in gateway.queue.take_expired(EXPIRE_BATCH, lifetime)
    {
        let item = match slot {
            Slot::Held(item) => *item,
            Slot::Parked(parked) => {
                match gateway.queue.unpark(parked, (lane, receiver), units).await {
                    Some(item) => item,
                    None => continue,
                }
            }
        };
        expired(gateway, context, item, context.lifetime(gateway, lane)).await;
    }
}

/// Tells the senders of mail held past their app's `notify_delay`, once:
/// `told` is each lane's arrival time up to which that is done.
async fn notify_delayed(gateway: &Gateway, context: &WorkerContext, told: &mut [u64]) {
    let now = unix_seconds();
    // Per lane, the arrivals now due: after `told`, up to now - delay.
    let due: Vec<Option<(u64, u64)>> = (0..told.len())
        .map(|lane| {
            let until = now.saturating_sub(context.notify_delay(lane)?.as_secs());
            (until > told[lane]).then(|| (told[lane] + 1, until))
        })
        .collect();
    if due.iter().all(Option::is_none) {
        return;
    }
    let found = gateway
        .queue
        .arrived_between(|lane| due.get(lane).copied().flatten());
    for (lane, until) in due.iter().enumerate() {
        if let Some((_, until)) = until {
            told[lane] = *until;
        }
    }
    if found.is_empty() {
        return;
    }
    let waits_for = gateway.queue.view().0.drain.reason.describe();
    for (lane, message) in found {
        let message = match message {
            Ok(message) => message,
            Err(parked) => match context
                .spool
                .read_message(parked.segment(), parked.offset())
                .await
            {
                Ok((message, _body)) => message,
                Err(error) => {
                    tracing::error!(queue_id = %parked.id(), gateway = %gateway.config.name, %error, "cannot read a held message back from the spool to tell its sender of the delay");
                    continue;
                }
            },
        };
        tell(gateway, context, &message, lane, waits_for, now).await;
    }
}

/// One delay notice: every pending recipient of `message`, held for
/// `waits_for`.
async fn tell(
    gateway: &Gateway,
    context: &WorkerContext,
    message: &StoredMessage,
    lane: usize,
    waits_for: &str,
    now: u64,
) {
    let held = now.saturating_sub(message.envelope.received_at);
    let reply = Reply::new(
        451,
        format!(
            "4.7.1 held in smtp-shaper's queue for {} by {waits_for}; not sent yet",
            format_duration(held as f64)
        ),
    );
    let failures: Vec<Failure<'_>> = message
        .pending
        .iter()
        .filter_map(|&recipient| message.envelope.recipients.get(recipient as usize))
        .map(|recipient| Failure {
            recipient,
            reply: &reply,
            expired: None,
        })
        .collect();
    let until = message.envelope.received_at + context.lifetime(gateway, lane).as_secs();
    let action = dsn::Action::Delayed { until };
    // No recipient is settled by a delay notice.
    if let Err(error) = notify_sender(gateway, context, message, action, &failures, &[]).await {
        context
            .metrics
            .dsns
            .with_label_values(&[gateway.config.name.as_str(), "spool_error"])
            .inc();
        tracing::error!(queue_id = %message.id, %error, "cannot queue the delay notice to the sender");
    }
}
