//! One gateway's in-memory delivery queue: messages ready now, messages
//! waiting for their retry time, and whether the gateway itself is paused
//! after failed connections.
//!
//! Only envelopes live here; bodies stay in the spool. The one exception is a
//! message that arrives while the queue is shorter than its worker pool: it
//! will be picked up at once, so it may carry its body along (up to
//! [`HOT_BODY_BYTES`] per gateway) and spare the worker a read back from disk.
//! Delivery workers take from the front; a paused gateway hands out nothing
//! until the pause ends, so an unreachable gateway costs one connection
//! attempt per pause, not one per queued message.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::MailParams;
    use crate::spool::{Envelope, Location};

    fn item(id: &str, body: Option<usize>) -> Queued {
        Queued {
            message: StoredMessage {
                id: id.into(),
                gateway: "primary".into(),
                envelope: Envelope {
                    sender: String::new(),
                    recipients: vec!["a@example.org".into()],
                    params: MailParams::default(),
                    client_ip: "127.0.0.1".parse().unwrap(),
                    received_at: 0,
                },
                location: Location {
                    segment: 1,
                    offset: 0,
                    body_offset: 0,
                    body_len: 0,
                },
                pending: vec![0],
            },
            attempts: 0,
            body: body.map(|len| vec![b'x'; len]),
        }
    }

    /// `next()`, or None if nothing comes within `limit` of virtual time.
    async fn next_within(queue: &DeliveryQueue, limit: Duration) -> Option<Queued> {
        tokio::time::timeout(limit, queue.next()).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn ready_messages_come_out_in_order() {
        let queue = DeliveryQueue::default();
        queue.push(item("a", None), 4);
        queue.push(item("b", None), 4);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await.message.id, "a");
        assert_eq!(queue.next().await.message.id, "b");
        assert!(
            next_within(&queue, Duration::from_secs(3600))
                .await
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_ride_along_only_while_the_queue_is_short() {
        let queue = DeliveryQueue::default();
        queue.push(item("a", Some(100)), 2);
        queue.push(item("b", Some(100)), 2);
        queue.push(item("c", Some(100)), 2);
        queue.push(item("d", Some(HOT_BODY_BYTES)), 10);
        let kept: Vec<bool> = [
            queue.next().await,
            queue.next().await,
            queue.next().await,
            queue.next().await,
        ]
        .iter()
        .map(|item| item.body.is_some())
        .collect();
        assert_eq!(kept, vec![true, true, false, false]);
        queue.push(item("e", Some(HOT_BODY_BYTES)), 10);
        assert!(
            queue.next().await.body.is_some(),
            "the budget is free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_until_due_and_drop_their_body() {
        let queue = DeliveryQueue::default();
        let start = Instant::now();
        queue.retry_at(item("late", Some(10)), start + Duration::from_secs(60));
        queue.retry_at(item("early", None), start + Duration::from_secs(30));
        assert!(next_within(&queue, Duration::from_secs(29)).await.is_none());
        let early = queue.next().await;
        assert_eq!(early.message.id, "early");
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        let late = queue.next().await;
        assert_eq!(
            (late.message.id.as_str(), late.body.is_none()),
            ("late", true)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_gateway_pauses_the_queue() {
        let queue = DeliveryQueue::default();
        queue.push(item("a", None), 4);
        let pause = queue.connect_failed(|failures| Duration::from_secs(10 * u64::from(failures)));
        assert_eq!(pause, Duration::from_secs(10));
        assert!(next_within(&queue, Duration::from_secs(9)).await.is_none());
        assert_eq!(queue.next().await.message.id, "a");

        queue.push(item("b", None), 4);
        let pause = queue.connect_failed(|failures| Duration::from_secs(10 * u64::from(failures)));
        assert_eq!(pause, Duration::from_secs(20), "backs off further");
        queue.connected();
        assert!(
            next_within(&queue, Duration::from_millis(1))
                .await
                .is_some(),
            "resumes at once"
        );
    }
}
