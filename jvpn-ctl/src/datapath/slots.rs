//! Which `SESSION_STATS` slot each session holds, and which are free. The entry in
//! `SESSIONS` (`stats_slot`) is the record; this is the controller's copy of it, so
//! that a swap, a removal or a counter read needs no extra map lookup. It is rebuilt
//! from `SESSIONS` at load (the maps outlive a controller restart), and only the
//! data-plane module, the one writer of the maps, changes either.

use std::collections::{HashMap, VecDeque};

use super::DatapathError;

pub struct Slots {
    /// First in, first out: a freed slot goes to the back, so it is reused as late as
    /// possible. A packet of a removed session that was already past its lookup may
    /// still add to the slot for a moment; by the time the slot is handed out again
    /// (and zeroed) that packet is long gone, unless the table is nearly full.
    /// A slot taken by [`Slots::take_exact`] stays queued and is skipped when reached;
    /// such a slot (named by its session's id) can be handed out right after it is
    /// freed, which can only mix counters, never steering (the copy's tag).
    free: VecDeque<u32>,
    used: Vec<bool>,
    queued: Vec<bool>,
    by_id: HashMap<u64, u32>,
}

impl Slots {
    /// The slots of a table of `capacity`, given the slots that sessions already hold.
    /// A slot out of range or held twice means the maps cannot be trusted.
    pub fn rebuild(
        capacity: u32,
        held: impl IntoIterator<Item = (u64, u32)>,
    ) -> Result<Self, DatapathError> {
        let mut used = vec![false; capacity as usize];
        let mut by_id = HashMap::new();
        for (id, slot) in held {
            let problem = match used.get_mut(slot as usize) {
                None => "beyond the end of SESSION_STATS",
                Some(true) => "which another session holds too",
                Some(u) => {
                    *u = true;
                    by_id.insert(id, slot);
                    continue;
                }
            };
            return Err(DatapathError::BadStatsSlot { id, slot, problem });
        }
        let free: VecDeque<u32> = (0..capacity).filter(|&s| !used[s as usize]).collect();
        let queued = used.iter().map(|u| !u).collect();
        Ok(Self {
            free,
            used,
            queued,
            by_id,
        })
    }

    /// Hands the longest-free slot to `id` (None: all are taken, or `id` has one).
    pub fn take(&mut self, id: u64) -> Option<u32> {
        if self.by_id.contains_key(&id) || self.available() == 0 {
            return None;
        }
        loop {
            let slot = self.free.pop_front()?;
            self.queued[slot as usize] = false;
            if !self.used[slot as usize] {
                self.hold(id, slot);
                return Some(slot);
            }
        }
    }

    /// Hands `slot` to `id` if it is free (the slot its id names, jvpn_common::hot).
    pub fn take_exact(&mut self, id: u64, slot: u32) -> bool {
        if self.by_id.contains_key(&id) || !self.is_free(slot) {
            return false;
        }
        self.hold(id, slot);
        true
    }

    pub fn is_free(&self, slot: u32) -> bool {
        self.used.get(slot as usize) == Some(&false)
    }

    fn hold(&mut self, id: u64, slot: u32) {
        self.used[slot as usize] = true;
        self.by_id.insert(id, slot);
    }

    pub fn of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// Frees the slot `id` holds, if any.
    pub fn release(&mut self, id: u64) {
        if let Some(slot) = self.by_id.remove(&id) {
            self.used[slot as usize] = false;
            if !self.queued[slot as usize] {
                self.queued[slot as usize] = true;
                self.free.push_back(slot);
            }
        }
    }

    /// Slots not in use.
    fn available(&self) -> usize {
        self.used.len() - self.by_id.len()
    }

    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_keeps_held_slots_and_hands_out_the_rest_in_order() {
        let mut s = Slots::rebuild(5, [(10, 1), (11, 3)]).unwrap();
        assert_eq!(
            (s.free(), s.of(10), s.of(11), s.of(12)),
            (3, Some(1), Some(3), None)
        );
        assert_eq!((s.take(20), s.take(21)), (Some(0), Some(2)));
        assert_eq!(s.take(20), None, "one slot per session");
        s.release(20);
        s.release(99); // not held: nothing happens
        assert_eq!(s.of(20), None);
        // Freed slots go to the back of the queue.
        assert_eq!(
            (s.take(30), s.take(31), s.take(32)),
            (Some(4), Some(0), None)
        );
        assert_eq!(s.free(), 0);
    }

    #[test]
    fn an_exact_slot_is_skipped_by_the_queue_and_queued_once_when_freed() {
        let mut s = Slots::rebuild(4, []).unwrap();
        assert!(s.take_exact(7, 2));
        assert!(!s.take_exact(8, 2), "held");
        assert!(!s.take_exact(8, 9), "beyond the end");
        assert_eq!(
            (s.take(1), s.take(2), s.take(3)),
            (Some(0), Some(1), Some(3))
        );
        assert_eq!((s.free(), s.take(4)), (0, None));
        for _ in 0..3 {
            s.release(7);
            assert!(s.take_exact(7, 2));
        }
        s.release(7);
        assert_eq!(s.free(), 1);
        assert_eq!(s.free.len(), 1, "queued once however often it was freed");
        assert_eq!((s.take(9), s.take(10)), (Some(2), None));
    }

    #[test]
    fn rebuild_refuses_inconsistent_maps() {
        for (held, want) in [
            (vec![(7, 5)], "beyond the end"),
            (vec![(7, 2), (8, 2)], "another session holds"),
        ] {
            match Slots::rebuild(5, held) {
                Err(e @ DatapathError::BadStatsSlot { .. }) => {
                    assert!(e.to_string().contains(want), "{e}")
                }
                Err(e) => panic!("wrong error: {e}"),
                Ok(_) => panic!("accepted"),
            }
        }
    }
}
