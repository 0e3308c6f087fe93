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
    free: VecDeque<u32>,
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
        let free = (0..capacity).filter(|&s| !used[s as usize]).collect();
        Ok(Self { free, by_id })
    }

    /// Hands the longest-free slot to `id` (None: all are taken, or `id` has one).
    pub fn take(&mut self, id: u64) -> Option<u32> {
        if self.by_id.contains_key(&id) {
            return None;
        }
        let slot = self.free.pop_front()?;
        self.by_id.insert(id, slot);
        Some(slot)
    }

    pub fn of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// Frees the slot `id` holds, if any.
    pub fn release(&mut self, id: u64) {
        if let Some(slot) = self.by_id.remove(&id) {
            self.free.push_back(slot);
        }
    }

    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.free.len()
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
