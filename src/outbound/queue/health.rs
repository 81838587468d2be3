//! What the gateway says of itself, as the delivery queue takes it: failed
//! connections and their pause (one probe at a time), throttling and a
//! used-up quota (the model's pause and cut, told to the other nodes), and
//! an operator ending such a pause.

use super::*;

impl DeliveryQueue {
    /// A connection attempt begun at `started` failed. Unless a pause began
    /// since (this attempt was under way when another one failed), the
    /// gateway pauses for `pause(failures so far)`, which is returned.
    pub fn connect_failed(
        &self,
        started: Instant,
        pause: impl Fn(u32) -> Duration,
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

    /// A connection succeeded (or a probe went through a connection already
    /// open): the gateway is up again.
    pub fn connected(&self) {
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

    /// The probe ended without saying whether the gateway is reachable (its
    /// body could not be read, or its transaction failed on a connection
    /// already open): the next message probes instead.
    pub fn probe_inconclusive(&self) {
        self.lock().probing = false;
        self.wake.notify_one();
    }

    /// The gateway answered with a throttling reply (`reply`, for the log).
    /// Returns true when it cut the ceiling (a new episode).
    pub fn throttled(&self, reply: &str) -> bool {
        let mut state = self.lock();
        let now = self.now();
        let cut = state.scheduler.throttled(now);
        self.log_changes(&mut state, Some(reply));
        // Every node pauses: the others hear it at their next decision.
        if cut {
            let backoff = state.scheduler.backoff();
            self.tell_other_nodes(&state, "about the throttling", move |link| async move {
                link.throttled(backoff).await
            });
        }
        cut
    }

    /// The gateway accepted mail: a throttling episode whose pause is over
    /// ends, and the ceiling starts climbing back.
    pub fn gateway_accepted(&self) {
        let mut state = self.lock();
        let now = self.now();
        state.scheduler.gateway_accepted(now);
    }

    /// The gateway's quota is used up: hold sending (see the model).
    /// Returns the hold.
    pub fn quota_exhausted(&self) -> Duration {
        let mut state = self.lock();
        let now = self.now();
        let hold = state.scheduler.quota_exhausted(now);
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
        state.scheduler.pause_left(self.now())
    }

    /// An operator ends the gateway's throttling or quota pause on purpose
    /// (on every node, in cluster mode); returns the seconds it had left.
    pub fn end_pause(&self) -> f64 {
        let mut state = self.lock();
        let now = self.now();
        let left = state.scheduler.end_pause(now);
        self.tell_other_nodes(&state, "to end the pause", |link| async move {
            link.end_pause().await
        });
        drop(state);
        self.wake.notify_waiters();
        left
    }
}
