//! What the gateway says of itself, as the delivery queue takes it: one
//! [`GatewayEvent`] per thing a delivery worker heard, handled in one
//! place ([`DeliveryQueue::heard`]) with its log line: failed connections
//! and their pause (one probe at a time), throttling and a used-up quota
//! (the model's pause and cut, told to the other nodes), an accepted
//! transaction ending a throttling episode; and an operator ending such a
//! pause.

use std::fmt::Display;

use super::*;

/// What a delivery worker heard from the gateway about the gateway itself
/// (not about one recipient), for [`DeliveryQueue::heard`].
pub enum GatewayEvent<'a> {
    /// A connection succeeded, or a probe went through a connection
    /// already open: the gateway is up.
    Connected,
    /// A connection attempt to `address` begun at `started` failed with
    /// `error`; after `n` failures in a row the gateway pauses for
    /// `pause(n)`.
    ConnectFailed {
        started: Instant,
        address: &'a str,
        error: &'a dyn Display,
        pause: &'a dyn Fn(u32) -> Duration,
    },
    /// A probe ended without saying whether the gateway is reachable (its
    /// body could not be read, or its transaction failed on a connection
    /// already open): the next message probes instead.
    ProbeInconclusive,
    /// The gateway accepted a transaction (for at least one recipient).
    Accepted,
    /// A throttling reply to a transaction it accepted for no recipient.
    Throttled { reply: &'a dyn Display },
    /// A reply saying the gateway's sending quota is used up.
    QuotaExhausted { reply: &'a dyn Display },
}

/// What [`DeliveryQueue::heard`] did about an event: the log says it, and
/// tests read the pause a failed connection began (see `Heeded::pause`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Heeded {
    /// Nothing beyond the queue's own state (or nothing at all).
    Noted,
    /// A failed connection paused the gateway for this long.
    Paused(Duration),
    /// A failed connection begun before the gateway's current pause: the
    /// pause stays as it is.
    AlreadyPaused,
    /// Throttling cut the ceiling: a new episode.
    Cut,
    /// Throttling within an episode already cut for.
    SameEpisode,
    /// A used-up quota holds the queue for this long.
    Held(Duration),
}

#[cfg(test)]
impl Heeded {
    /// The pause a failed connection began, if it began one.
    pub fn pause(self) -> Option<Duration> {
        match self {
            Heeded::Paused(pause) => Some(pause),
            _ => None,
        }
    }
}

impl DeliveryQueue {
    /// Takes what a worker heard from the gateway: the queue's pause and
    /// probe, the model's cut or hold (told to the other nodes in cluster
    /// mode), and the log line that says so.
    pub fn heard(&self, event: GatewayEvent<'_>) -> Heeded {
        let gateway = self.gateway.as_str();
        match event {
            GatewayEvent::Connected => {
                self.connected();
                Heeded::Noted
            }
            GatewayEvent::ConnectFailed {
                started,
                address,
                error,
                pause,
            } => match self.connect_failed(started, pause) {
                Some(pause) => {
                    tracing::warn!(
                        %gateway,
                        %address,
                        %error,
                        pause = %format!("{:.1}s", pause.as_secs_f64()),
                        "gateway unreachable; pausing deliveries to it"
                    );
                    Heeded::Paused(pause)
                }
                None => {
                    tracing::debug!(
                        %gateway,
                        %error,
                        "connection attempt begun before the gateway's pause failed too"
                    );
                    Heeded::AlreadyPaused
                }
            },
            GatewayEvent::ProbeInconclusive => {
                self.probe_inconclusive();
                Heeded::Noted
            }
            GatewayEvent::Accepted => {
                let mut state = self.lock();
                let now = self.now();
                state.scheduler.model_mut().gateway_accepted(now);
                Heeded::Noted
            }
            GatewayEvent::Throttled { reply } => {
                if self.throttled(&reply.to_string()) {
                    tracing::warn!(%gateway, %reply, "gateway signals throttling; slowing down");
                    Heeded::Cut
                } else {
                    tracing::info!(%gateway, %reply, "gateway still throttling; same episode, no further cut");
                    Heeded::SameEpisode
                }
            }
            GatewayEvent::QuotaExhausted { reply } => {
                let hold = self.quota_exhausted();
                tracing::warn!(
                    %gateway,
                    %reply,
                    hold = %format!("{:.0}s", hold.as_secs_f64()),
                    "gateway says our sending quota is used up; holding its queue until the window resets"
                );
                Heeded::Held(hold)
            }
        }
    }

    /// Unless a pause began since `started` (this attempt was under way
    /// when another one failed), the gateway pauses for `pause(failures so
    /// far)`, which is returned.
    fn connect_failed(
        &self,
        started: Instant,
        pause: &dyn Fn(u32) -> Duration,
    ) -> Option<Duration> {
        let mut state = self.lock();
        if state.paused_at.is_some_and(|at| at >= started) {
            return None;
        }
        let now = Instant::now();
        state.connect_failures = state.connect_failures.saturating_add(1);
        let pause = pause(state.connect_failures);
        state.paused_at = Some(now);
        state.paused_until = Some(now + pause);
        state.probing = false;
        Some(pause)
    }

    /// The gateway is up: a pause after failed connections ends.
    fn connected(&self) {
        let mut state = self.lock();
        state.probing = false;
        if state.connect_failures > 0 {
            state.connect_failures = 0;
            state.paused_until = None;
            state.paused_at = None;
            drop(state);
            self.wake.notify_waiters();
        }
    }

    /// The probe said nothing (see [`GatewayEvent::ProbeInconclusive`];
    /// also a parked probe whose record cannot be read back): the next
    /// message probes instead.
    pub(super) fn probe_inconclusive(&self) {
        self.lock().probing = false;
        self.wake.notify_one();
    }

    /// True when the model cut the ceiling (a new episode); `reply` goes
    /// to the log of the ceiling's change.
    fn throttled(&self, reply: &str) -> bool {
        let mut state = self.lock();
        let now = self.now();
        let cut = state.scheduler.model_mut().throttled(now);
        self.log_changes(&mut state, Some(reply));
        // Every node pauses: the others hear it at their next decision.
        if cut {
            let backoff = state.scheduler.model().backoff();
            self.tell_other_nodes(&state, "about the throttling", move |link| async move {
                link.throttled(backoff).await
            });
        }
        cut
    }

    /// Holds sending (see the model) and returns the hold.
    fn quota_exhausted(&self) -> Duration {
        let mut state = self.lock();
        let now = self.now();
        let hold = state.scheduler.model_mut().quota_exhausted(now);
        // The quota is the gateway's: every node rests.
        self.tell_other_nodes(
            &state,
            "to rest for the used-up quota",
            move |link| async move { link.pause(hold).await },
        );
        Duration::from_secs_f64(hold)
    }

    /// Seconds left of a pause the gateway asked for (throttling, quota);
    /// `retry` does not end it, [`DeliveryQueue::end_pause`] does.
    pub fn pause_left(&self) -> f64 {
        let state = self.lock();
        state.scheduler.model().pause_left(self.now())
    }

    /// An operator ends the gateway's throttling or quota pause on purpose
    /// (on every node, in cluster mode); returns the seconds it had left.
    pub fn end_pause(&self) -> f64 {
        let mut state = self.lock();
        let now = self.now();
        let left = state.scheduler.model_mut().end_pause(now);
        self.tell_other_nodes(&state, "to end the pause", |link| async move {
            link.end_pause().await
        });
        drop(state);
        self.wake.notify_waiters();
        left
    }
}
