//! One gateway's in-memory delivery queue: messages ready now, messages
//! waiting for their retry time, and whether the gateway itself is paused
//! after failed connections.
//!
//! Only envelopes live here; bodies stay in the spool. The one exception is a
//! message that arrives while the queue is shorter than its worker pool: it
//! will be picked up at once, so it may carry its body along (up to
//! [`HOT_BODY_BYTES`] per gateway) and spare the worker a read back from disk.
//! Delivery workers take from the front; a paused gateway hands out nothing until the pause ends, so
//! an unreachable gateway costs one connection attempt per pause, not one per
//! queued message.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::spool::StoredMessage;

/// Most body bytes one gateway's queue keeps in memory for hand-off.
pub const HOT_BODY_BYTES: usize = 8 << 20;

/// A queued message and how many delivery attempts it has had.
#[derive(Debug)]
pub struct Queued {
    pub message: StoredMessage,
    pub attempts: u32,
    /// The body, when handed over with the message (see the module notes).
    pub body: Option<Vec<u8>>,
}

struct Waiting {
    due: Instant,
    sequence: u64,
    item: Queued,
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

#[derive(Default)]
struct State {
    ready: VecDeque<Queued>,
    waiting: BinaryHeap<Waiting>,
    sequence: u64,
    paused_until: Option<Instant>,
    connect_failures: u32,
    hot_bytes: usize,
}

impl State {
    fn promote_due(&mut self, now: Instant) {
        while self.waiting.peek().is_some_and(|first| first.due <= now) {
            if let Some(waiting) = self.waiting.pop() {
                self.ready.push_back(waiting.item);
            }
        }
    }
}

/// The queue of one gateway, shared by its delivery workers.
#[derive(Default)]
pub struct DeliveryQueue {
    state: Mutex<State>,
    wake: Notify,
}

impl DeliveryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a message that may be delivered now. Its body is kept only while
    /// fewer than `workers` messages are ready and the byte budget allows.
    pub fn push(&self, mut item: Queued, workers: usize) {
        let mut state = self.lock();
        if let Some(body) = &item.body {
            if state.ready.len() >= workers || state.hot_bytes + body.len() > HOT_BODY_BYTES {
                item.body = None;
            } else {
                state.hot_bytes += body.len();
            }
        }
        state.ready.push_back(item);
        drop(state);
        self.wake.notify_one();
    }

    /// Holds a message back until `due` (without its body).
    pub fn retry_at(&self, mut item: Queued, due: Instant) {
        item.body = None;
        let mut state = self.lock();
        state.sequence += 1;
        let sequence = state.sequence;
        state.waiting.push(Waiting {
            due,
            sequence,
            item,
        });
        drop(state);
        self.wake.notify_one();
    }

    /// Waits for the next message to deliver.
    pub async fn next(&self) -> Queued {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut state = self.lock();
                let now = Instant::now();
                state.promote_due(now);
                match state.paused_until {
                    Some(until) if until > now => Some(until),
                    _ => {
                        state.paused_until = None;
                        if let Some(item) = state.ready.pop_front() {
                            state.hot_bytes -= item.body.as_ref().map_or(0, Vec::len);
                            if !state.ready.is_empty() {
                                // Let another worker take the next one.
                                self.wake.notify_one();
                            }
                            return item;
                        }
                        state.waiting.peek().map(|first| first.due)
                    }
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A connection to the gateway failed: pause for `pause(failures so far)`.
    /// Returns the pause.
    pub fn connect_failed(&self, pause: impl Fn(u32) -> Duration) -> Duration {
        let mut state = self.lock();
        state.connect_failures = state.connect_failures.saturating_add(1);
        let pause = pause(state.connect_failures);
        state.paused_until = Some(Instant::now() + pause);
        pause
    }

    /// A connection succeeded: the gateway is up again.
    pub fn connected(&self) {
        let mut state = self.lock();
        if state.connect_failures > 0 {
            state.connect_failures = 0;
            state.paused_until = None;
            drop(state);
            self.wake.notify_waiters();
        }
    }

    /// Messages queued (ready and waiting).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.waiting.len()
    }
}
