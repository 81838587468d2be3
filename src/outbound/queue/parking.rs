//! A long queue not held in memory whole (see the parent's notes): past a
//! gateway's `spool.active_limit` envelopes, a message never tried waits as
//! a [`Parked`] reference to its spool record, in its place in its app's
//! lane, and is read back when the shaper releases it. Parking changes
//! nothing the scheduler sees: each entry keeps its lane and units.

use super::*;

/// A message kept only as a reference to its spool record: one never tried,
/// every recipient pending, so the record alone says all the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    /// The queue id's 16 hex digits (`spool::new_queue_id`).
    pub(super) id: u64,
    segment: u32,
    offset: u32,
    pub(super) received_at: u32,
    pub(super) body_len: u32,
}

impl Parked {
    /// The parked form of `item`, when it has one: never tried, every
    /// recipient pending, an id and a record position that fit.
    pub(super) fn of(item: &Queued) -> Option<Parked> {
        let message = &item.message;
        if item.attempts > 0
            || !item.history.is_empty()
            || message.pending.len() != message.envelope.recipients.len()
        {
            return None;
        }
        let id = Parked::id_value(&message.id)?;
        Some(Parked {
            id,
            segment: message.location.segment.try_into().ok()?,
            offset: message.location.offset.try_into().ok()?,
            received_at: message.envelope.received_at.try_into().ok()?,
            body_len: message.location.body_len.try_into().ok()?,
        })
    }

    pub(super) fn id_text(id: u64) -> String {
        format!("{id:016X}")
    }

    /// The value of a queue id that [`Parked::id_text`] gives back as it
    /// is: 16 upper-case hex digits (what `spool::new_queue_id` makes).
    pub(super) fn id_value(id: &str) -> Option<u64> {
        let canonical = id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        canonical
            .then(|| u64::from_str_radix(id, 16).ok())
            .flatten()
    }

    /// The queue id.
    pub fn id(&self) -> String {
        Parked::id_text(self.id)
    }

    pub fn segment(&self) -> u64 {
        u64::from(self.segment)
    }

    pub fn offset(&self) -> u64 {
        u64::from(self.offset)
    }
}

/// Where parked messages are read back from, and how many envelopes a
/// gateway's queue keeps in memory before it parks new ones.
pub struct Parking {
    pub spool: Spool,
    pub active_limit: usize,
}

impl DeliveryQueue {
    /// `item` held whole, or parked when the queue holds its
    /// `active_limit` already (see the module notes).
    pub(super) fn slot(&self, state: &mut State, item: Queued) -> Slot {
        let held = state.scheduler.len() - state.parked;
        let parked = self
            .parking
            .as_ref()
            .filter(|parking| held >= parking.active_limit)
            .and_then(|_| Parked::of(&item));
        match parked {
            Some(parked) => {
                state.hot_bytes -= item.body.as_ref().map_or(0, Vec::len);
                state.parked += 1;
                Slot::Parked(parked)
            }
            None => Slot::Held(Box::new(item)),
        }
    }

    /// Puts a parked message the scheduler released back at the end of its
    /// `lane` (its record could not be read just now).
    fn park_again(&self, parked: Parked, (lane, receiver): (usize, Option<usize>), units: u64) {
        let mut state = self.lock();
        let now = self.now();
        state.queued_bytes += u64::from(parked.body_len);
        state.parked += 1;
        state
            .scheduler
            .push(now, lane, receiver, units, Slot::Parked(parked));
    }

    /// Pushes parked messages moved from another queue (a reload), each in
    /// its lane with its units.
    pub fn push_parked(
        &self,
        parked: Parked,
        (lane, receiver): (usize, Option<usize>),
        units: u64,
    ) {
        self.park_again(parked, (lane, receiver), units);
        self.wake.notify_one();
    }

    /// A parked message taken out of the scheduler (its turn came, or it
    /// expired), read back from the spool with its body. A damaged record
    /// cannot be delivered (recovery skips it too); one that cannot be
    /// read now goes back to the end of its lane. Either way, logged.
    pub async fn unpark(
        &self,
        parked: Parked,
        (lane, receiver): (usize, Option<usize>),
        units: u64,
    ) -> Option<Queued> {
        let Some(parking) = &self.parking else {
            unreachable!("parked only with a spool to read back from");
        };
        match parking
            .spool
            .read_message(parked.segment(), parked.offset())
            .await
        {
            Ok((message, body)) => Some(Queued::new(message, (lane, receiver), Some(body))),
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                tracing::error!(queue_id = %parked.id(), gateway = %self.gateway, %error, "a queued message's spool record is damaged; it cannot be delivered");
                None
            }
            Err(error) => {
                tracing::error!(queue_id = %parked.id(), gateway = %self.gateway, %error, "cannot read a queued message back from the spool; it goes to the end of its lane");
                self.park_again(parked, (lane, receiver), units);
                None
            }
        }
    }
}
