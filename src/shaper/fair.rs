//! The fair queue: one FIFO lane per app, served by weighted round robin.
//!
//! Each turn an app with waiting mail may send `weight` messages (its
//! `priority`) before the next app's turn, so one app's bulk run delays
//! another app's password reset by at most one turn, and no app ever starves.
//! All operations are O(1) except [`FairQueue::oldest`], which looks at the
//! head of each lane.

use std::collections::VecDeque;

/// Lanes of `T`, one per app.
#[derive(Debug)]
pub struct FairQueue<T> {
    lanes: Vec<VecDeque<T>>,
    weights: Vec<u32>,
    /// Lanes with waiting items, the one whose turn it is first.
    turns: VecDeque<usize>,
    /// Items the lane at the front of `turns` has sent in its current turn.
    served: u32,
    len: usize,
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
    /// A queue with one lane per weight (each at least 1).
    pub fn new(weights: Vec<u32>) -> FairQueue<T> {
        FairQueue {
            lanes: weights.iter().map(|_| VecDeque::new()).collect(),
            weights: weights.into_iter().map(|weight| weight.max(1)).collect(),
            turns: VecDeque::new(),
            served: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends to `lane`'s FIFO (an unknown lane counts as the last one).
    pub fn push(&mut self, lane: usize, item: T) {
        let lane = lane.min(self.lanes.len() - 1);
        if self.lanes[lane].is_empty() {
            self.turns.push_back(lane);
        }
        self.lanes[lane].push_back(item);
        self.len += 1;
    }

    /// Puts `item` back at the front of `lane` (it was popped, but could
    /// not go after all): it goes first when the lane's turn comes again.
    pub fn push_front(&mut self, lane: usize, item: T) {
        let lane = lane.min(self.lanes.len() - 1);
        if self.lanes[lane].is_empty() {
            self.turns.push_front(lane);
            self.served = 0;
        } else if self.turns.front() == Some(&lane) {
            self.served = self.served.saturating_sub(1);
        }
        self.lanes[lane].push_front(item);
        self.len += 1;
    }

    /// The item whose turn it is.
    pub fn peek(&self) -> Option<&T> {
        let lane = *self.turns.front()?;
        self.lanes[lane].front()
    }

    /// Takes the item whose turn it is, with its lane.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        let lane = *self.turns.front()?;
        let item = self.lanes[lane].pop_front()?;
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
        let own = self.lanes[lane].len();
        let turns = (own + 1).div_ceil(self.weights[lane] as usize);
        let others: usize = self
            .lanes
            .iter()
            .zip(&self.weights)
            .enumerate()
            .filter(|(index, _)| *index != lane)
            .map(|(_, (items, weight))| items.len().min(turns * *weight as usize))
            .sum();
        own + others
    }

    /// The head of every lane (each lane's oldest item).
    pub fn heads(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().filter_map(VecDeque::front)
    }

    /// The tail of every lane (each lane's newest item).
    pub fn tails(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().filter_map(VecDeque::back)
    }

    /// Items waiting in each lane.
    pub fn lane_lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.lanes.iter().map(VecDeque::len)
    }

    /// Every item, lane by lane, each lane oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().flatten()
    }

    /// Every item of `lane`, oldest first.
    pub fn lane(&self, lane: usize) -> impl Iterator<Item = &T> {
        self.lanes.get(lane).into_iter().flatten()
    }

    /// Takes out the first item `matches` picks (an operator deleting a
    /// message), with its lane; the round robin goes on as if it had never
    /// been queued.
    pub fn remove(&mut self, matches: impl Fn(&T) -> bool) -> Option<(usize, T)> {
        let (lane, index) =
            self.lanes.iter().enumerate().find_map(|(lane, items)| {
                items.iter().position(&matches).map(|index| (lane, index))
            })?;
        let item = self.lanes[lane].remove(index)?;
        self.taken_from(lane);
        Some((lane, item))
    }

    /// Takes items of `lane` out of turn, oldest first, as `due` says of
    /// each, at most `limit` of them.
    pub fn take_from_lane(
        &mut self,
        lane: usize,
        limit: usize,
        mut due: impl FnMut(&T) -> Due,
    ) -> Vec<T> {
        let mut taken = Vec::new();
        let mut index = 0;
        while taken.len() < limit {
            let Some(item) = self.lanes.get(lane).and_then(|items| items.get(index)) else {
                break;
            };
            match due(item) {
                Due::Take => {
                    let item = self.lanes[lane].remove(index).expect("looked at above");
                    self.taken_from(lane);
                    taken.push(item);
                }
                Due::Skip => index += 1,
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
            queue.push(0, "bulk");
        }
        queue.push(1, "reset");
        queue.push(2, "other");
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
            queue.push(0, "bulk");
        }
        assert_eq!(queue.ahead_of_new(0), 100);
        assert_eq!(queue.ahead_of_new(1), 1, "one turn of the bulk app");
        for _ in 0..3 {
            queue.push(1, "reset");
        }
        // A fourth reset goes in the second turn of its lane (weight 2).
        assert_eq!(queue.ahead_of_new(1), 3 + 2);
        assert_eq!(queue.ahead_of_new(2), 1 + 2);
    }

    #[test]
    fn priority_is_a_weight_per_turn() {
        let mut queue = FairQueue::new(vec![1, 3]);
        for _ in 0..4 {
            queue.push(0, "low");
            queue.push(1, "high");
        }
        assert_eq!(
            drain(&mut queue),
            vec!["low", "high", "high", "high", "low", "high", "low", "low"]
        );
    }

    #[test]
    fn removing_an_item_keeps_the_round_robin() {
        let mut queue = FairQueue::new(vec![1, 1]);
        queue.push(0, "a1");
        queue.push(1, "b1");
        queue.push(0, "a2");
        assert_eq!(queue.remove(|item| *item == "b1"), Some((1, "b1")));
        assert_eq!(queue.remove(|item| *item == "zz"), None);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.iter().copied().collect::<Vec<_>>(), ["a1", "a2"]);
        assert_eq!(queue.pop(), Some((0, "a1")));
        assert_eq!(queue.pop(), Some((0, "a2")));
        assert_eq!(queue.pop(), None);
        queue.push(1, "b2");
        assert_eq!(queue.remove(|item| *item == "b2"), Some((1, "b2")));
        assert!(queue.is_empty());
        queue.push(0, "a3");
        assert_eq!(queue.pop(), Some((0, "a3")), "no stale turn left behind");
    }

    #[test]
    fn a_lane_can_pass_its_turn_on() {
        let mut queue = FairQueue::new(vec![1, 2, 1]);
        queue.push(0, "bulk1");
        queue.push(0, "bulk2");
        queue.push(1, "reset1");
        queue.push(1, "reset2");
        queue.push(2, "other");
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
        queue.push(7, "b1");
        queue.push(7, "b2");
        queue.push(0, "a1");
        assert_eq!(queue.heads().copied().collect::<Vec<_>>(), vec!["a1", "b1"]);
        assert_eq!(queue.lane_lengths().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(queue.pop(), Some((1, "b1")));
    }
}
