//! Which sessions have a timer due, without looking at every session on every tick.
//!
//! The tick used to compute `next_deadline` for every session, 20 times a second: at
//! 20,000 idle sessions that was 5 % of a core, and it grows with the sessions (a
//! million would need more than two cores). Instead each session's earliest deadline
//! sits in a min-heap. Entries are not removed when a deadline moves: a session keeps
//! only its earliest entry (`at`), a later deadline leaves the early entry in place and
//! is found when that one comes due and is checked (the caller re-schedules it), an
//! earlier one supersedes it (the old entry is stale and skipped when popped).
//! A slow sweep over all sessions (`Core::tick`) schedules any session that some
//! path changed without scheduling it, so a forgotten call delays a timer by at most
//! one sweep instead of losing it.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
};

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    /// Each scheduled session's live entry in `heap`.
    at: HashMap<u64, u64>,
}

impl Timers {
    /// Session `id`'s earliest timer is at `deadline` (None: it has none).
    pub fn schedule(&mut self, id: u64, deadline: Option<u64>) {
        let Some(d) = deadline else {
            self.at.remove(&id);
            return;
        };
        if self.at.get(&id).is_some_and(|&cur| cur <= d) {
            return;
        }
        self.at.insert(id, d);
        self.heap.push(Reverse((d, id)));
    }

    pub fn forget(&mut self, id: u64) {
        self.at.remove(&id);
    }

    /// The sessions whose scheduled instant is `now` or earlier, each once. Their
    /// real deadline may have moved later since: the caller checks, and schedules
    /// them again either way.
    pub fn due(&mut self, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(&Reverse((d, id))) = self.heap.peek() {
            if d > now {
                break;
            }
            self.heap.pop();
            if self.at.get(&id) == Some(&d) {
                self.at.remove(&id);
                out.push(id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_wins_later_moves_are_found_when_checked() {
        let mut t = Timers::default();
        t.schedule(1, Some(100));
        t.schedule(2, Some(50));
        t.schedule(1, Some(300)); // later: the entry at 100 stays
        t.schedule(3, Some(80));
        t.schedule(3, Some(20)); // earlier: supersedes 80
        t.schedule(4, Some(10));
        t.schedule(4, None); // no timer any more
        assert_eq!(t.due(19), Vec::<u64>::new());
        assert_eq!(t.due(60), vec![3, 2]);
        assert_eq!(
            t.due(99),
            Vec::<u64>::new(),
            "3's stale entry at 80 is skipped"
        );
        assert_eq!(t.due(100), vec![1]);
        assert_eq!(t.due(1_000), Vec::<u64>::new(), "nothing is due twice");
        t.schedule(1, Some(300));
        t.forget(1);
        assert_eq!(t.due(1_000), Vec::<u64>::new());
    }
}
