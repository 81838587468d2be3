//! Demand: what the apps try to send, deferred offers included.
//!
//! The burst ratio (demand / baseline) is the anomaly signal the alerts fire
//! on, so demand must count the mail that is being deferred: counting only
//! accepted mail hides exactly the bursts admission pushes back. An MTA
//! offers a deferred message again, though, so an offer is known by its
//! envelope (sender and recipients, as a fingerprint) and an envelope
//! deferred earlier counts once, when it was first offered, whether it is
//! deferred again or accepted later.
//!
//! Pure: times are inputs; the memory of deferred envelopes is bounded.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::meter::RateMeter;

/// Most deferred envelopes remembered; beyond, new ones are counted every
/// time they are offered (an over-count, never a hidden burst).
const REMEMBERED: usize = 100_000;

/// The fingerprints of an envelope's prefixes: `sender` with its first
/// recipient, with its first two, ... An offer is deferred at one RCPT, with
/// the recipients up to it; the message accepted later carries them all.
pub fn fingerprints<'a>(
    sender: &str,
    recipients: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = u64> {
    let mut hasher = DefaultHasher::new();
    sender.hash(&mut hasher);
    recipients.into_iter().map(move |recipient| {
        recipient.hash(&mut hasher);
        hasher.finish()
    })
}

/// See the module notes.
#[derive(Debug)]
pub struct Demand {
    meter: RateMeter,
    /// Fingerprint of a deferred envelope -> when it is forgotten.
    deferred: HashMap<u64, f64>,
}

impl Demand {
    pub fn new(meter: RateMeter) -> Demand {
        Demand {
            meter,
            deferred: HashMap::new(),
        }
    }

    /// An offer was deferred; its app may offer it again until `forget_at`.
    pub fn deferred(&mut self, now: f64, fingerprint: u64, forget_at: f64) {
        match self.deferred.get_mut(&fingerprint) {
            Some(until) if *until >= now => *until = until.max(forget_at),
            _ => {
                self.meter.add(now, 1.0);
                if self.deferred.len() >= REMEMBERED {
                    self.deferred.retain(|_, until| *until >= now);
                }
                if self.deferred.len() < REMEMBERED {
                    self.deferred.insert(fingerprint, forget_at);
                }
            }
        }
    }

    /// A message was accepted; `fingerprints` are its envelope's (see
    /// [`fingerprints`]), asked for only when some offer was deferred.
    pub fn accepted<I: IntoIterator<Item = u64>>(
        &mut self,
        now: f64,
        fingerprints: impl FnOnce() -> I,
    ) {
        if !self.deferred.is_empty() {
            for fingerprint in fingerprints() {
                if let Some(until) = self.deferred.remove(&fingerprint)
                    && until >= now
                {
                    return;
                }
            }
        }
        self.meter.add(now, 1.0);
    }

    /// Offers per second over the meter's window.
    pub fn rate(&mut self, now: f64) -> f64 {
        self.meter.rate(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sender: &str, recipients: &[&str]) -> u64 {
        fingerprints(sender, recipients.iter().copied())
            .last()
            .unwrap()
    }

    #[test]
    fn a_deferred_envelope_counts_once_however_often_it_comes_back() {
        let mut demand = Demand::new(RateMeter::new(60.0, 12));
        for second in 0..10 {
            demand.deferred(f64::from(second), one("a@x", &["b@y"]), 900.0);
        }
        demand.deferred(5.0, one("a@x", &["c@y"]), 900.0);
        // Accepted on its next offer, with a second recipient: still the same.
        demand.accepted(20.0, || fingerprints("a@x", ["b@y", "d@y"]));
        // A new message is counted.
        demand.accepted(21.0, || fingerprints("a@x", ["e@y"]));
        assert!(
            (demand.rate(30.0) - 3.0 / 60.0).abs() < 1e-9,
            "{}",
            demand.rate(30.0)
        );
    }

    #[test]
    fn an_envelope_is_forgotten_after_its_time() {
        let mut demand = Demand::new(RateMeter::new(60.0, 12));
        demand.deferred(0.0, one("a@x", &["b@y"]), 10.0);
        demand.deferred(20.0, one("a@x", &["b@y"]), 40.0);
        assert!((demand.rate(30.0) - 2.0 / 60.0).abs() < 1e-9);
        assert_ne!(one("a@x", &["b@y"]), one("a@x", &["b@z"]));
        assert_ne!(one("a@x", &["b@y"]), one("a@xb", &["@y"]));
    }
}
