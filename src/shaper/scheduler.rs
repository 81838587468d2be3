//! The scheduler of one gateway: the fair queue of waiting mail in front of
//! the shaping model. The live delivery queue and the simulator both drive
//! this same type, so what `simulate` shows is what the relay does.
//!
//! Invariant: an item leaves only through [`Scheduler::next`], and only when
//! the model says `Send` for it.

use super::fair::FairQueue;
use super::model::{Decision, Deferral, GatewayModel, ModelView};

struct Entry<T> {
    queued_at: f64,
    units: u64,
    item: T,
}

/// What [`Scheduler::next`] hands out.
#[derive(Debug, PartialEq)]
pub enum Release<T> {
    /// Send this now; it waited `waited` seconds in the queue.
    Send { item: T, lane: usize, waited: f64 },
    /// Nothing may go before this many seconds from now.
    Wait(f64),
    /// Save the model's state, then ask again (see `GatewayModel::snapshot`).
    Save,
    /// The queue is empty.
    Idle,
}

/// The queue and the model's numbers together.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayView {
    pub model: ModelView,
    pub queued: usize,
    /// Seconds the oldest queued message has waited.
    pub oldest_age: f64,
    /// Messages waiting per app lane: the `[[apps]]` in order, then `other`.
    pub lanes: Vec<usize>,
}

/// See the module notes.
pub struct Scheduler<T> {
    queue: FairQueue<Entry<T>>,
    units: u64,
    pub model: GatewayModel,
}

impl<T> Scheduler<T> {
    /// `weights` has one entry per app lane (its priority).
    pub fn new(model: GatewayModel, weights: Vec<u32>) -> Scheduler<T> {
        Scheduler {
            queue: FairQueue::new(weights),
            units: 0,
            model,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `item` counting `units` in `lane`, waiting since `queued_at`.
    pub fn push(&mut self, queued_at: f64, lane: usize, units: u64, item: T) {
        self.units += units;
        self.queue.push(
            lane,
            Entry {
                queued_at,
                units,
                item,
            },
        );
    }

    /// The next item to send, if the model lets it go at `now`.
    pub fn next(&mut self, now: f64) -> Release<T> {
        let Some(head) = self.queue.peek() else {
            self.model.update(now);
            return Release::Idle;
        };
        match self.model.try_send(now, head.units) {
            Decision::Wait(seconds) => Release::Wait(seconds),
            Decision::Save => Release::Save,
            Decision::Send => {
                let (lane, entry) = self.queue.pop().expect("peeked above");
                self.units -= entry.units;
                Release::Send {
                    item: entry.item,
                    lane,
                    waited: (now - entry.queued_at).max(0.0),
                }
            }
        }
    }

    /// Admission for new mail in `lane` counting `units`: it waits for what
    /// goes before it in the round robin, plus `other_messages` counting
    /// `other_units` held elsewhere (retries, lane unknown: counted as ahead).
    /// Every queued item.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter().map(|entry| &entry.item)
    }

    /// Takes out the first queued item `matches` picks.
    pub fn remove(&mut self, matches: impl Fn(&T) -> bool) -> Option<T> {
        let entry = self.queue.remove(|entry| matches(&entry.item))?;
        self.units -= entry.units;
        Some(entry.item)
    }

    pub fn admit(
        &mut self,
        now: f64,
        lane: usize,
        units: u64,
        other_messages: usize,
        other_units: u64,
    ) -> Result<(), Deferral> {
        self.model.admit(
            now,
            self.queue.ahead_of_new(lane) + other_messages,
            self.queue.len() + other_messages,
            self.units + other_units,
            units,
        )
    }

    /// The numbers of the model and the queue at `now`.
    pub fn view(&mut self, now: f64) -> GatewayView {
        let oldest = self
            .queue
            .heads()
            .map(|entry| entry.queued_at)
            .fold(f64::INFINITY, f64::min);
        GatewayView {
            model: self.model.view(now),
            queued: self.queue.len(),
            oldest_age: if oldest.is_finite() {
                (now - oldest).max(0.0)
            } else {
                0.0
            },
            lanes: self.queue.lane_lengths().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn scheduler(shaping: &str) -> Scheduler<&'static str> {
        let config = Config::parse(&format!(
            "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{shaping}\n"
        ))
        .unwrap();
        Scheduler::new(
            GatewayModel::new(&config.gateways[0].shaping, 0.0),
            vec![1, 1],
        )
    }

    #[test]
    fn releases_fairly_at_the_ceiling_and_reports_the_wait() {
        let mut scheduler = scheduler("initial_rate = \"30/min\"\nheadroom = 2.0\nburst = 1");
        for _ in 0..5 {
            scheduler.push(10.0, 0, 1, "bulk");
        }
        scheduler.push(10.0, 1, 1, "reset");
        let mut now = 10.0;
        let mut order = Vec::new();
        while order.len() < 6 {
            match scheduler.next(now) {
                Release::Send { item, waited, .. } => order.push((item, waited)),
                Release::Wait(seconds) => now += seconds,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(order[1].0, "reset", "second, not behind the bulk run");
        assert!((order[5].1 - 5.0).abs() < 1e-6, "one a second: {order:?}");
        assert_eq!(scheduler.next(now), Release::Idle);
        let view = scheduler.view(now);
        assert_eq!((view.queued, view.oldest_age), (0, 0.0));
    }

    #[test]
    fn admission_counts_what_is_queued() {
        let mut scheduler = scheduler("initial_rate = \"30/min\"\nmax_queue_delay = \"10s\"");
        for _ in 0..9 {
            scheduler.push(0.0, 0, 1, "queued");
            assert!(scheduler.admit(0.0, 0, 1, 0, 0).is_ok());
        }
        scheduler.push(0.0, 0, 1, "queued");
        assert!(
            scheduler.admit(0.0, 0, 1, 0, 0).is_err(),
            "the 11th would wait 11 s"
        );
        assert!(
            scheduler.admit(0.0, 1, 1, 0, 0).is_ok(),
            "another app's goes in the next turn"
        );
        let view = scheduler.view(4.0);
        assert_eq!(
            (view.queued, view.oldest_age, view.lanes),
            (10, 4.0, vec![10, 0])
        );
    }
}
