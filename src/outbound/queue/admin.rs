//! The operator's hand on the delivery queue: hold and release, the list
//! (`visit`), retry now, remove; and what moves whole messages out: a
//! reload's drain, held mail past its expiry.

use super::*;

impl DeliveryQueue {
    /// Queued messages kept as a reference to their spool record only.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Holds (`true`) or releases the queue: while held, workers take
    /// nothing; mail is still accepted and queued.
    pub fn hold(&self, held: bool) {
        let mut state = self.lock();
        state.held = held;
        // Every node holds: the next heartbeat writes it to the shared
        // state (kept until it gets through, Redis down or not).
        if let Some(shared) = state.shared.as_mut() {
            shared.gate.hold_given(held);
        }
        drop(state);
        // On disk soon, with the shaping state: a hold outlasts a restart.
        self.save_wanted.notify_one();
        self.wake.notify_waiters();
    }

    /// Whether an operator holds the queue.
    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    /// Calls `visit` with every queued message and when it may next be
    /// attempted, ready ones first (no order within), then retries by due
    /// time.
    pub fn visit(&self, mut visit: impl FnMut(Visited<'_>, Place)) {
        let state = self.lock();
        let now = Instant::now();
        let paused_until = state.paused_until.filter(|until| *until > now);
        for item in state.scheduler.iter() {
            let place =
                paused_until.map_or(Place::Ready, |until| Place::Retry(self.clock.at(until)));
            visit(item.visited(), place);
        }
        let mut waiting: Vec<&Waiting> = state.waiting.iter().collect();
        waiting.sort_by_key(|waiting| waiting.due);
        for waiting in waiting {
            let due = paused_until.map_or(waiting.due, |until| until.max(waiting.due));
            visit(
                Visited::Held(&waiting.item),
                Place::Retry(self.clock.at(due)),
            );
        }
    }

    /// Makes the next attempt of message `id` (or of every message) now:
    /// its retry falls due, and a pause of the gateway ends so that one
    /// probe goes at once. Returns how many were to go later.
    pub fn retry_now(&self, id: Option<&str>) -> usize {
        let mut state = self.lock();
        let now = Instant::now();
        let paused = state.paused_until.is_some_and(|until| until > now);
        let matches = |item: &Queued| id.is_none_or(|id| item.message.id == id);
        let mut moved = if paused {
            state
                .scheduler
                .iter()
                .filter(|slot| id.is_none_or(|id| slot.is(id)))
                .count()
        } else {
            0
        };
        let waiting = std::mem::take(&mut state.waiting);
        state.waiting = waiting
            .into_iter()
            .map(|mut waiting| {
                if matches(&waiting.item) && (paused || waiting.due > now) {
                    waiting.due = waiting.due.min(now);
                    moved += 1;
                }
                waiting
            })
            .collect();
        if paused && moved > 0 {
            state.paused_until = None;
            tracing::info!(
                gateway = %self.gateway,
                failures = state.connect_failures,
                "operator retry ends the gateway's pause; probing it now"
            );
        }
        drop(state);
        self.wake.notify_one();
        moved
    }

    /// Takes every message out (a reload moves them to the new queue), with
    /// the retry time of those waiting for one; parked ones stay parked.
    pub fn drain(&self) -> Vec<Drained> {
        let mut state = self.lock();
        let mut items = Vec::with_capacity(state.scheduler.len() + state.waiting.len());
        while let Some(Taken {
            item,
            lane,
            receiver,
            units,
        }) = state.scheduler.take(|_| true)
        {
            items.push(match item {
                Slot::Held(item) => Drained::Held(item, None),
                Slot::Parked(parked) => Drained::Parked {
                    parked,
                    lane,
                    receiver,
                    units,
                },
            });
        }
        for waiting in std::mem::take(&mut state.waiting) {
            items.push(Drained::Held(Box::new(waiting.item), Some(waiting.due)));
        }
        state.parked = 0;
        state.waiting_counts = ClassCounts::default();
        state.queued_bytes = 0;
        state.hot_bytes = 0;
        items
    }

    /// Takes out the messages never tried that have waited for the shaper
    /// since their arrival for `lifetime(lane)` seconds or more, at most
    /// `limit` (see `held`), with their lanes and units. Messages tried
    /// before are not among them: their next attempt settles them with the
    /// gateway's last word.
    pub fn take_expired(&self, limit: usize, lifetime: impl Fn(usize) -> u64) -> Vec<Taken<Slot>> {
        let mut state = self.lock();
        let now = self.now().max(0.0) as u64;
        let taken = state.scheduler.take_due(limit, |lane, slot: &Slot| {
            if slot.received_at().saturating_add(lifetime(lane)) > now {
                return Due::Stop;
            }
            match slot {
                Slot::Held(item) if item.attempts > 0 => Due::Skip,
                _ => Due::Take,
            }
        });
        for taken in &taken {
            state.left_scheduler(&taken.item);
        }
        taken
    }

    /// The messages never tried, still waiting for the shaper, that arrived
    /// in `arrived(lane)` (Unix seconds, both ends included) for the lanes
    /// that have such a window: the delay notices due (see the worker's
    /// held-mail sweep). Each is the message when held whole, else its
    /// parked reference (to be read back).
    pub fn arrived_between(
        &self,
        arrived: impl Fn(usize) -> Option<(u64, u64)>,
    ) -> Vec<(usize, Result<StoredMessage, Parked>)> {
        let state = self.lock();
        let mut found = Vec::new();
        for lane in 0..state.scheduler.lanes() {
            let Some((from, until)) = arrived(lane) else {
                continue;
            };
            for slot in state.scheduler.lane_items(lane) {
                let at = slot.received_at();
                if at < from || at > until {
                    continue;
                }
                match slot {
                    Slot::Held(item) if item.attempts == 0 => {
                        found.push((lane, Ok(item.message.clone())));
                    }
                    Slot::Held(_) => {}
                    Slot::Parked(parked) => found.push((lane, Err(*parked))),
                }
            }
        }
        found
    }

    /// Takes message `id` out of the queue (an operator deleting it), with
    /// its lane and units.
    pub fn remove(&self, id: &str) -> Option<Taken<Slot>> {
        let mut state = self.lock();
        let item = match state.scheduler.take(|slot| slot.is(id)) {
            Some(taken) => {
                state.left_scheduler(&taken.item);
                taken
            }
            None => {
                let waiting = std::mem::take(&mut state.waiting);
                let (found, kept): (Vec<Waiting>, Vec<Waiting>) = waiting
                    .into_iter()
                    .partition(|waiting| waiting.item.message.id == id);
                state.waiting = kept.into_iter().collect();
                let item = found.into_iter().next()?.item;
                let class = state.scheduler.class(item.lane);
                let units = state.scheduler.model().units(item.message.pending.len());
                state.waiting_counts.remove(class, units);
                let (lane, receiver) = (item.lane, item.receiver);
                state.queued_bytes -= item.message.location.body_len;
                Taken {
                    item: Slot::Held(Box::new(item)),
                    lane,
                    receiver,
                    units,
                }
            }
        };
        Some(item)
    }
}
