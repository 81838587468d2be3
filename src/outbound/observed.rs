//! Observe mode at the edge: each message accepted for a gateway that
//! observes goes to its observer ([`crate::shaper::observe`]) too, and
//! what the observer says becomes metrics (`observed_holds_total`,
//! `observed_delay_seconds`) and one log line per episode. When the
//! gateway starts enforcing by itself (`observe_until`), the observer is
//! dropped, logged once.

use std::sync::Mutex;

use prometheus::{Histogram, IntCounterVec};

use super::queue::DeliveryQueue;
use crate::poison::LockRecovered;
use crate::shaper::observe::{Observed, Observer};
use crate::telemetry::Metrics;

/// One gateway's observer and its metrics (see the module notes).
pub struct Observing {
    gateway: String,
    /// `None` once the gateway enforces.
    observer: Mutex<Option<Observer>>,
    holds: IntCounterVec,
    delay: Histogram,
}

impl Observing {
    pub fn new(gateway: &str, observer: Observer, metrics: &Metrics) -> Observing {
        Observing {
            gateway: gateway.to_string(),
            observer: Mutex::new(Some(observer)),
            holds: metrics.observed_holds.clone(),
            delay: metrics.observed_delay.with_label_values(&[gateway]),
        }
    }

    /// A message of `lane` with `recipients` recipients was accepted and
    /// queued in `queue` (which relays it at once).
    pub fn arrived(&self, queue: &DeliveryQueue, lane: usize, recipients: usize) {
        let now = queue.shaper_time();
        let seen = match self.still_observing(queue).as_mut() {
            Some(observer) => observer.arrived(now, lane, recipients),
            None => return,
        };
        self.heed(seen);
    }

    /// Lets the observer release what enforcement would have sent by now
    /// (called when the gateway's status is read).
    pub fn catch_up(&self, queue: &DeliveryQueue) {
        let now = queue.shaper_time();
        let seen = match self.still_observing(queue).as_mut() {
            Some(observer) => observer.advance(now),
            None => return,
        };
        self.heed(seen);
    }

    /// Messages enforcement would still be holding (`None` once the
    /// gateway enforces).
    pub fn backlog(&self) -> Option<usize> {
        self.observer.lock_recovered().as_ref().map(Observer::held)
    }

    /// The observer while the gateway observes; dropped (and logged) when
    /// it enforces.
    fn still_observing(
        &self,
        queue: &DeliveryQueue,
    ) -> std::sync::MutexGuard<'_, Option<Observer>> {
        let mut observer = self.observer.lock_recovered();
        if observer.is_some() && !queue.observing() {
            *observer = None;
            tracing::warn!(gateway = %self.gateway, "observe_until reached: the gateway's own history now covers it, so its shaping enforces from now on (mail beyond the ceiling and the budgets is held)");
        }
        observer
    }

    fn heed(&self, seen: Vec<Observed>) {
        let gateway = self.gateway.as_str();
        for observed in seen {
            match observed {
                Observed::Held { reason, .. } => {
                    self.holds
                        .with_label_values(&[gateway, reason.as_str()])
                        .inc();
                }
                Observed::Released { waited } => self.delay.observe(waited),
                Observed::Refused { reason, projected } => {
                    self.holds
                        .with_label_values(&[gateway, reason.as_str()])
                        .inc();
                    tracing::debug!(%gateway, reason = reason.as_str(), projected = %format!("{projected:.0}s"), "observe mode: enforcement would have refused this message");
                }
                Observed::EpisodeBegan { reason, projected } => {
                    tracing::info!(%gateway, waits_for = reason.as_str(), expected_wait = %format!("{projected:.0}s"), "observe mode: enforcement would hold mail now; relaying it at once (smtp_shaper_observed_holds_total counts it)");
                }
                Observed::EpisodeEnded { held, longest } => {
                    tracing::info!(%gateway, held, longest_wait = %format!("{longest:.0}s"), "observe mode: the mail enforcement would have held would all have left by now");
                }
            }
        }
    }
}
