//! Messages waiting for their retry time, out of the scheduler: a heap by
//! due time (ties in arrival order). A message comes due into the
//! scheduler at the back of its lane; until then it counts as ahead of new
//! mail in admission (`waiting_counts`) and in the queue's depth.

use super::*;

/// A message held back until `due`; `sequence` keeps ties in the order
/// they were held.
pub(super) struct Waiting {
    pub(super) due: Instant,
    pub(super) sequence: u64,
    pub(super) item: Queued,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    /// Reversed, so the max-heap yields the earliest due time first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.sequence).cmp(&(self.due, self.sequence))
    }
}

impl State {
    /// Moves the messages due by `now` into the scheduler, stamped
    /// `unix_now`.
    pub(super) fn promote_due(&mut self, now: Instant, unix_now: f64) {
        while self.waiting.peek().is_some_and(|first| first.due <= now) {
            if let Some(waiting) = self.waiting.pop() {
                let units = self
                    .scheduler
                    .model()
                    .units(waiting.item.message.pending.len());
                let class = self.scheduler.class(waiting.item.lane);
                self.waiting_counts.remove(class, units);
                let (lane, receiver) = (waiting.item.lane, waiting.item.receiver);
                self.scheduler.push(
                    unix_now,
                    lane,
                    receiver,
                    units,
                    Slot::Held(Box::new(waiting.item)),
                );
            }
        }
    }
}

impl DeliveryQueue {
    /// Holds a message back until `due` (without its body).
    pub fn retry_at(&self, mut item: Queued, due: Instant) {
        item.body = None;
        item.probe = false;
        let mut state = self.lock();
        state.queued_bytes += item.message.location.body_len;
        state.sequence += 1;
        let class = state.scheduler.class(item.lane);
        let units = state.scheduler.model().units(item.message.pending.len());
        state.waiting_counts.add(class, units);
        let sequence = state.sequence;
        state.waiting.push(Waiting {
            due,
            sequence,
            item,
        });
        drop(state);
        self.wake.notify_one();
    }
}
