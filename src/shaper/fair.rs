//! The fair queue: one lane per app, served by weighted round robin, and
//! in each lane one FIFO per key (the receiver the mail goes to).
//!
//! Each turn an app with waiting mail may send `weight` messages (its
//! `priority`) before the next app's turn, so one app's bulk run delays
//! another app's password reset by at most one turn, and no app ever starves.
//! Within a lane mail leaves oldest first, but the caller may pass over the
//! keys that cannot go now ([`FairQueue::peek_where`]): mail to a receiver
//! whose budget is full waits in its own FIFO while the app's mail to
//! other receivers goes on (no head-of-line blocking). All operations are
//! O(1) in the queue's length, O(keys) per lane, except [`FairQueue::remove`]
//! and [`FairQueue::take_from_lane`], which look for their items.

use std::collections::VecDeque;

/// One app's waiting items: a FIFO per key, each item with its arrival
/// number (oldest lowest).
#[derive(Debug)]
struct Lane<T> {
    keys: Vec<VecDeque<(u64, T)>>,
    len: usize,
}

impl<T> Lane<T> {
    fn new(keys: usize) -> Lane<T> {
        Lane {
            keys: (0..keys.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key whose head is the oldest of those `open` lets through.
    fn oldest(&self, open: impl Fn(usize) -> bool) -> Option<usize> {
        self.keys
            .iter()
            .enumerate()
            .filter(|(key, _)| open(*key))
            .filter_map(|(key, items)| items.front().map(|(arrival, _)| (*arrival, key)))
            .min()
            .map(|(_, key)| key)
    }

    /// The key whose tail is the newest.
    fn newest(&self) -> Option<usize> {
        self.keys
            .iter()
            .enumerate()
            .filter_map(|(key, items)| items.back().map(|(arrival, _)| (*arrival, key)))
            .max()
            .map(|(_, key)| key)
    }

    /// (key, position) of every item, oldest first.
    fn positions(&self) -> Arrivals<'_, T> {
        Arrivals {
            lane: self,
            next: vec![0; self.keys.len()],
        }
    }
}

/// A lane's items in arrival order (a merge of its keys' FIFOs).
struct Arrivals<'a, T> {
    lane: &'a Lane<T>,
    next: Vec<usize>,
}

impl<'a, T> Iterator for Arrivals<'a, T> {
    type Item = (usize, usize, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        let key = (0..self.next.len())
            .filter_map(|key| {
                self.lane.keys[key]
                    .get(self.next[key])
                    .map(|(arrival, _)| (*arrival, key))
            })
            .min()?
            .1;
        let position = self.next[key];
        self.next[key] += 1;
        Some((key, position, &self.lane.keys[key][position].1))
    }
}

/// Lanes of `T`, one per app, each with a FIFO per key.
#[derive(Debug)]
pub struct FairQueue<T> {
    lanes: Vec<Lane<T>>,
    weights: Vec<u32>,
    /// Lanes with waiting items, the one whose turn it is first.
    turns: VecDeque<usize>,
    /// Items the lane at the front of `turns` has sent in its current turn.
    served: u32,
    len: usize,
    /// The next arrival number at the back (counting up from the middle)
    /// and at the front (counting down from it: an item put back).
    back: u64,
    front: u64,
}

/// What [`FairQueue::take_from_lane`] does with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Take it out.
    Take,
    /// Leave it, look at the next.
    Skip,
    /// Leave it and everything after it (lanes are in arrival order).
    Stop,
}

impl<T> FairQueue<T> {
    /// A queue with one lane per weight (each at least 1) and one key.
    pub fn new(weights: Vec<u32>) -> FairQueue<T> {
        FairQueue::with_keys(weights, 1)
    }

    /// A queue with one lane per weight, each with `keys` FIFOs (at least
    /// one; an unknown key counts as the last one).
    pub fn with_keys(weights: Vec<u32>, keys: usize) -> FairQueue<T> {
        FairQueue {
            lanes: weights.iter().map(|_| Lane::new(keys)).collect(),
            weights: weights.into_iter().map(|weight| weight.max(1)).collect(),
            turns: VecDeque::new(),
            served: 0,
            len: 0,
            back: u64::MAX / 2,
            front: u64::MAX / 2,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of keys of each lane.
    pub fn key_count(&self) -> usize {
        self.lanes.first().map_or(1, |lane| lane.keys.len())
    }

    fn place(&self, lane: usize, key: usize) -> (usize, usize) {
        (
            lane.min(self.lanes.len() - 1),
            key.min(self.key_count() - 1),
        )
    }

    /// Appends to `lane`'s FIFO of `key` (an unknown lane counts as the
    /// last one).
    pub fn push(&mut self, lane: usize, key: usize, item: T) {
        let (lane, key) = self.place(lane, key);
        if self.lanes[lane].is_empty() {
            self.turns.push_back(lane);
        }
        self.back += 1;
        self.lanes[lane].keys[key].push_back((self.back, item));
        self.lanes[lane].len += 1;
        self.len += 1;
    }

    /// Puts `item` back at the front of `lane` (it was popped, but could
    /// not go after all): it goes first when the lane's turn comes again.
    pub fn push_front(&mut self, lane: usize, key: usize, item: T) {
        let (lane, key) = self.place(lane, key);
        if self.lanes[lane].is_empty() {
            self.turns.push_front(lane);
            self.served = 0;
        } else if self.turns.front() == Some(&lane) {
            self.served = self.served.saturating_sub(1);
        }
        self.front -= 1;
        self.lanes[lane].keys[key].push_front((self.front, item));
        self.lanes[lane].len += 1;
        self.len += 1;
    }

    /// The item whose turn it is: the oldest of the lane whose turn it is.
    pub fn peek(&self) -> Option<&T> {
        self.peek_where(|_| true).map(|(_, item)| item)
    }

    /// The oldest item, among the keys `open` lets through, of the lane
    /// whose turn it is, with its key.
    pub fn peek_where(&self, open: impl Fn(usize) -> bool) -> Option<(usize, &T)> {
        let lane = &self.lanes[*self.turns.front()?];
        let key = lane.oldest(open)?;
        lane.keys[key].front().map(|(_, item)| (key, item))
    }

    /// Takes the item whose turn it is, with its lane.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        let lane = *self.turns.front()?;
        let key = self.lanes[lane].oldest(|_| true)?;
        self.pop_key(key)
    }

    /// Takes the oldest item of `key` in the lane whose turn it is (one
    /// [`FairQueue::peek_where`] found), with its lane.
    pub fn pop_key(&mut self, key: usize) -> Option<(usize, T)> {
        let lane = *self.turns.front()?;
        let (_, item) = self.lanes[lane].keys.get_mut(key)?.pop_front()?;
        self.lanes[lane].len -= 1;
        self.len -= 1;
        self.served += 1;
        if self.lanes[lane].is_empty() {
            self.turns.pop_front();
            self.served = 0;
        } else if self.served >= self.weights[lane] {
            self.turns.rotate_left(1);
            self.served = 0;
        }
        Some((lane, item))
    }

    /// Lanes with waiting items, the one whose turn it is first.
    pub fn turns(&self) -> impl Iterator<Item = usize> + '_ {
        self.turns.iter().copied()
    }

    /// The lane whose turn it is gives it up to the next one (it cannot
    /// send now) and waits for its next turn at the back.
    pub fn skip_turn(&mut self) {
        if let Some(lane) = self.turns.pop_front() {
            self.turns.push_back(lane);
            self.served = 0;
        }
    }

    /// How many queued items would go before a new item pushed to `lane` now:
    /// its own lane's items, and from each other lane what it sends in the
    /// round-robin turns until then.
    pub fn ahead_of_new(&self, lane: usize) -> usize {
        let lane = lane.min(self.lanes.len() - 1);
        let own = self.lanes[lane].len;
        let turns = (own + 1).div_ceil(self.weights[lane] as usize);
        let others: usize = self
            .lanes
            .iter()
            .zip(&self.weights)
            .enumerate()
            .filter(|(index, _)| *index != lane)
            .map(|(_, (items, weight))| items.len.min(turns * *weight as usize))
            .sum();
        own + others
    }

    /// The head of every lane (each lane's oldest item).
    pub fn heads(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().filter_map(|lane| {
            let key = lane.oldest(|_| true)?;
            lane.keys[key].front().map(|(_, item)| item)
        })
    }

    /// The tail of every lane (each lane's newest item).
    pub fn tails(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().filter_map(|lane| {
            let key = lane.newest()?;
            lane.keys[key].back().map(|(_, item)| item)
        })
    }

    /// Items waiting in each lane.
    pub fn lane_lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.lanes.iter().map(|lane| lane.len)
    }

    /// Items waiting under each key, all lanes together.
    pub fn key_lengths(&self) -> Vec<usize> {
        (0..self.key_count())
            .map(|key| self.lanes.iter().map(|lane| lane.keys[key].len()).sum())
            .collect()
    }

    /// Every item, lane by lane, each lane oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        (0..self.lanes.len()).flat_map(|lane| self.lane(lane))
    }

    /// Every item of `lane`, oldest first.
    pub fn lane(&self, lane: usize) -> impl Iterator<Item = &T> {
        self.lanes
            .get(lane)
            .into_iter()
            .flat_map(|lane| lane.positions().map(|(_, _, item)| item))
    }

    /// Takes out the first item `matches` picks (an operator deleting a
    /// message), with its lane and key; the round robin goes on as if it
    /// had never been queued.
    pub fn remove(&mut self, matches: impl Fn(&T) -> bool) -> Option<(usize, usize, T)> {
        let (lane, key, position) = self.lanes.iter().enumerate().find_map(|(index, lane)| {
            lane.positions()
                .find(|(_, _, item)| matches(item))
                .map(|(key, position, _)| (index, key, position))
        })?;
        let (_, item) = self.lanes[lane].keys[key].remove(position)?;
        self.taken_from(lane);
        Some((lane, key, item))
    }

    /// Takes items of `lane` out of turn, oldest first, as `due` says of
    /// each, at most `limit` of them, each with its key.
    pub fn take_from_lane(
        &mut self,
        lane: usize,
        limit: usize,
        mut due: impl FnMut(&T) -> Due,
    ) -> Vec<(usize, T)> {
        let mut taken = Vec::new();
        let Some(keys) = self.lanes.get(lane).map(|lane| lane.keys.len()) else {
            return taken;
        };
        // Per key, the position of the next item to look at.
        let mut next = vec![0; keys];
        while taken.len() < limit {
            let Some((_, key)) = (0..keys)
                .filter_map(|key| {
                    self.lanes[lane].keys[key]
                        .get(next[key])
                        .map(|(arrival, _)| (*arrival, key))
                })
                .min()
            else {
                break;
            };
            match due(&self.lanes[lane].keys[key][next[key]].1) {
                Due::Take => {
                    let (_, item) = self.lanes[lane].keys[key]
                        .remove(next[key])
                        .expect("looked at above");
                    self.taken_from(lane);
                    taken.push((key, item));
                }
                Due::Skip => next[key] += 1,
                Due::Stop => break,
            }
        }
        taken
    }

    /// The number of lanes.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// An item left `lane` out of turn: an emptied lane leaves the round.
    fn taken_from(&mut self, lane: usize) {
        self.len -= 1;
        self.lanes[lane].len -= 1;
        if self.lanes[lane].is_empty() {
            if self.turns.front() == Some(&lane) {
                self.served = 0;
            }
            self.turns.retain(|turn| *turn != lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut FairQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop().map(|(_, item)| item)).collect()
    }

    #[test]
    fn a_bulk_run_does_not_hold_back_another_app() {
        let mut queue = FairQueue::new(vec![1, 1, 1]);
        for _ in 0..1000 {
            queue.push(0, 0, "bulk");
        }
        queue.push(1, 0, "reset");
        queue.push(2, 0, "other");
        assert_eq!(queue.len(), 1002);
        assert_eq!(queue.peek(), Some(&"bulk"));
        let order = drain(&mut queue);
        assert_eq!(&order[..4], &["bulk", "reset", "other", "bulk"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn counts_what_goes_before_a_new_item() {
        let mut queue = FairQueue::new(vec![1, 2, 1]);
        for _ in 0..100 {
            queue.push(0, 0, "bulk");
        }
        assert_eq!(queue.ahead_of_new(0), 100);
        assert_eq!(queue.ahead_of_new(1), 1, "one turn of the bulk app");
        for _ in 0..3 {
            queue.push(1, 0, "reset");
        }
        // A fourth reset goes in the second turn of its lane (weight 2).
        assert_eq!(queue.ahead_of_new(1), 3 + 2);
        assert_eq!(queue.ahead_of_new(2), 1 + 2);
    }

    #[test]
    fn priority_is_a_weight_per_turn() {
        let mut queue = FairQueue::new(vec![1, 3]);
        for _ in 0..4 {
            queue.push(0, 0, "low");
            queue.push(1, 0, "high");
        }
        assert_eq!(
            drain(&mut queue),
            vec!["low", "high", "high", "high", "low", "high", "low", "low"]
        );
    }

    #[test]
    fn removing_an_item_keeps_the_round_robin() {
        let mut queue = FairQueue::new(vec![1, 1]);
        queue.push(0, 0, "a1");
        queue.push(1, 0, "b1");
        queue.push(0, 0, "a2");
        assert_eq!(queue.remove(|item| *item == "b1"), Some((1, 0, "b1")));
        assert_eq!(queue.remove(|item| *item == "zz"), None);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.iter().copied().collect::<Vec<_>>(), ["a1", "a2"]);
        assert_eq!(queue.pop(), Some((0, "a1")));
        assert_eq!(queue.pop(), Some((0, "a2")));
        assert_eq!(queue.pop(), None);
        queue.push(1, 0, "b2");
        assert_eq!(queue.remove(|item| *item == "b2"), Some((1, 0, "b2")));
        assert!(queue.is_empty());
        queue.push(0, 0, "a3");
        assert_eq!(queue.pop(), Some((0, "a3")), "no stale turn left behind");
    }

    #[test]
    fn a_lane_can_pass_its_turn_on() {
        let mut queue = FairQueue::new(vec![1, 2, 1]);
        queue.push(0, 0, "bulk1");
        queue.push(0, 0, "bulk2");
        queue.push(1, 0, "reset1");
        queue.push(1, 0, "reset2");
        queue.push(2, 0, "other");
        assert_eq!(queue.turns().collect::<Vec<_>>(), vec![0, 1, 2]);
        queue.skip_turn();
        assert_eq!(queue.turns().collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(
            drain(&mut queue),
            vec!["reset1", "reset2", "other", "bulk1", "bulk2"]
        );
    }

    #[test]
    fn unknown_lanes_go_to_the_last_one_and_heads_are_the_oldest() {
        let mut queue = FairQueue::new(vec![1, 1]);
        queue.push(7, 0, "b1");
        queue.push(7, 0, "b2");
        queue.push(0, 0, "a1");
        assert_eq!(queue.heads().copied().collect::<Vec<_>>(), vec!["a1", "b1"]);
        assert_eq!(queue.lane_lengths().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(queue.pop(), Some((1, "b1")));
    }

    #[test]
    fn a_key_that_cannot_go_does_not_hold_the_lane_and_keeps_its_order() {
        let mut queue = FairQueue::with_keys(vec![1, 1], 3);
        // Lane 0: a run to key 0 (a receiver without room), then key 1.
        for name in ["g1", "g2", "g3"] {
            queue.push(0, 0, name);
        }
        queue.push(0, 1, "m1");
        queue.push(0, 2, "o1");
        queue.push(1, 0, "g4");
        assert_eq!(queue.peek(), Some(&"g1"), "oldest first");
        let closed = |key: usize| key != 0;
        assert_eq!(queue.peek_where(closed), Some((1, &"m1")));
        assert_eq!(queue.pop_key(1), Some((0, "m1")));
        // Lane 1's turn: it holds only key 0.
        assert_eq!(queue.peek_where(closed), None);
        queue.skip_turn();
        assert_eq!(queue.peek_where(closed), Some((2, &"o1")));
        assert_eq!(queue.pop_key(2), Some((0, "o1")));
        assert_eq!(queue.key_lengths(), [4, 0, 0]);
        // Key 0 opens: its mail in arrival order, round robin as before.
        assert_eq!(drain(&mut queue), ["g4", "g1", "g2", "g3"]);
    }

    #[test]
    fn a_lane_is_listed_and_taken_from_in_arrival_order_across_its_keys() {
        let mut queue = FairQueue::with_keys(vec![1], 2);
        queue.push(0, 1, "a");
        queue.push(0, 0, "b");
        queue.push(0, 1, "c");
        queue.push_front(0, 0, "first");
        queue.push(0, 0, "d");
        assert_eq!(
            queue.iter().copied().collect::<Vec<_>>(),
            ["first", "a", "b", "c", "d"]
        );
        assert_eq!(queue.heads().copied().collect::<Vec<_>>(), ["first"]);
        assert_eq!(queue.tails().copied().collect::<Vec<_>>(), ["d"]);
        let taken = queue.take_from_lane(0, 10, |item| match *item {
            "a" => Due::Skip,
            "c" => Due::Stop,
            _ => Due::Take,
        });
        assert_eq!(taken, [(0, "first"), (0, "b")]);
        assert_eq!(queue.remove(|item| *item == "c"), Some((0, 1, "c")));
        assert_eq!(drain(&mut queue), ["a", "d"]);
    }
}
