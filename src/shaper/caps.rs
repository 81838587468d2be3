//! Hard caps: at most `limit` units (messages or recipients) in any window of
//! `window` seconds, e.g. 30/min and 10,000/day for an Exchange Online mailbox.
//!
//! The window is kept as 60 slots. A unit is counted until its slot is a full
//! window old, so the count covers a little more than the window: the cap can
//! only be undershot, never exceeded.

use std::collections::VecDeque;

/// Slots per window.
const SLOTS: i64 = 60;

/// One `N/period` limit with the units counted in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cap {
    pub limit: u64,
    pub window: f64,
    /// (slot number, units), oldest first.
    slots: VecDeque<(i64, u64)>,
}

impl Cap {
    pub fn new(limit: u64, window: f64) -> Cap {
        Cap {
            limit,
            window,
            slots: VecDeque::new(),
        }
    }

    fn slot_seconds(&self) -> f64 {
        self.window / SLOTS as f64
    }

    fn slot(&self, now: f64) -> i64 {
        (now / self.slot_seconds()).floor() as i64
    }

    fn expire(&mut self, now: f64) {
        let oldest_kept = self.slot(now) - SLOTS;
        while self
            .slots
            .front()
            .is_some_and(|(slot, _)| *slot < oldest_kept)
        {
            self.slots.pop_front();
        }
    }

    /// Units counted in the window at `now`.
    pub fn used(&mut self, now: f64) -> u64 {
        self.expire(now);
        self.slots.iter().map(|(_, units)| units).sum()
    }

    /// Seconds until `units` more fit (0 when they fit now). A message bigger
    /// than the whole cap fits once the window is empty, so it is not stuck
    /// forever.
    pub fn wait(&mut self, now: f64, units: u64) -> f64 {
        let used = self.used(now);
        let needed = units.min(self.limit);
        if used + needed <= self.limit {
            return 0.0;
        }
        let mut remaining = used;
        for (slot, count) in &self.slots {
            remaining -= count;
            if remaining + needed <= self.limit {
                return ((slot + SLOTS + 1) as f64 * self.slot_seconds() - now).max(0.0);
            }
        }
        self.window
    }

    /// Seconds until the last of `units` waiting units could be sent, when
    /// all of them wait for room in this cap: past the current window, each
    /// further window lets `limit` more through.
    pub fn wait_behind(&mut self, now: f64, units: u64) -> f64 {
        let used = self.used(now);
        if used + units <= self.limit {
            return 0.0;
        }
        let excess = used + units - self.limit;
        if excess <= used {
            let mut freed = 0;
            for (slot, count) in &self.slots {
                freed += count;
                if freed >= excess {
                    return ((slot + SLOTS + 1) as f64 * self.slot_seconds() - now).max(0.0);
                }
            }
        }
        self.window * (excess as f64 / self.limit as f64).ceil()
    }

    /// Counts `units` sent at `now`.
    pub fn add(&mut self, now: f64, units: u64) {
        let slot = self.slot(now);
        match self.slots.back_mut() {
            Some((last, count)) if *last == slot => *count += units,
            _ => self.slots.push_back((slot, units)),
        }
    }

    /// Takes back `units` counted at `at` (the shared state refused the
    /// send); a slot no longer counted is left alone.
    pub fn remove(&mut self, at: f64, units: u64) {
        let slot = self.slot(at);
        if let Some((_, count)) = self.slots.iter_mut().rev().find(|(s, _)| *s == slot) {
            *count = count.saturating_sub(units);
        }
    }

    /// The counted slots, for the state file.
    pub fn slots(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.slots.iter().copied()
    }

    /// Restores counted slots read from the state file.
    pub fn restore(&mut self, slots: impl IntoIterator<Item = (i64, u64)>) {
        for (slot, units) in slots {
            match self.slots.back_mut() {
                Some((last, count)) if *last == slot => *count += units,
                Some((last, _)) if *last > slot => {}
                _ => self.slots.push_back((slot, units)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let mut cap = Cap::new(30, 60.0);
        let mut sent = Vec::new();
        let mut now = 1_000.0;
        while now < 1_600.0 {
            let wait = cap.wait(now, 1);
            if wait == 0.0 {
                cap.add(now, 1);
                sent.push(now);
                now += 0.1;
            } else {
                now += wait;
            }
        }
        for (index, start) in sent.iter().enumerate() {
            let in_window = sent[index..]
                .iter()
                .take_while(|t| **t < start + 60.0)
                .count();
            assert!(in_window <= 30, "{in_window} in the minute from {start}");
        }
        // The slot rounding costs at most one slot per window.
        assert!(sent.len() >= 290, "{}", sent.len());
    }

    #[test]
    fn waits_for_the_oldest_units_to_leave() {
        let mut cap = Cap::new(10, 60.0);
        cap.add(0.5, 4);
        cap.add(30.5, 6);
        assert_eq!(cap.wait(31.0, 1), 30.0, "until 0.5's slot leaves at 61");
        assert_eq!(cap.wait(31.0, 5), 60.0, "until 30.5's slot leaves too");
        assert_eq!(
            cap.wait(31.0, 100),
            60.0,
            "too big: waits for an empty window"
        );
        assert_eq!(cap.used(90.9), 6);
        assert_eq!(cap.used(91.0), 0);
    }

    #[test]
    fn projects_the_wait_of_units_queued_behind_the_cap() {
        let mut cap = Cap::new(10, 60.0);
        cap.add(0.5, 4);
        cap.add(30.5, 6);
        assert_eq!(cap.wait_behind(31.0, 0), 0.0);
        assert_eq!(cap.wait_behind(31.0, 4), 30.0, "the first four leave at 61");
        assert_eq!(cap.wait_behind(31.0, 10), 60.0);
        assert_eq!(cap.wait_behind(31.0, 25), 180.0, "three windows' worth");
    }
}
