//! Which `SESSION_STATS` slots are free. Every session holds one (its entry's
//! `stats_slot`); the `SESSIONS` map is the record of which, so after a restart the
//! free list is rebuilt from it.

use std::collections::VecDeque;

use super::DatapathError;

pub struct Slots {
    /// First in, first out: a freed slot goes to the back, so it is reused as late as
    /// possible. A packet of a removed session that was already past its lookup may
    /// still add to the slot for a moment; by the time the slot is handed out again
    /// (and zeroed) that packet is long gone, unless the table is nearly full.
    free: VecDeque<u32>,
}

impl Slots {
    /// The free slots of a table of `capacity`, given the slots that sessions already
    /// hold. A slot out of range or held twice means the maps cannot be trusted.
    pub fn rebuild(
        capacity: u32,
        held: impl IntoIterator<Item = (u64, u32)>,
    ) -> Result<Self, DatapathError> {
        let mut used = vec![false; capacity as usize];
        for (id, slot) in held {
            let problem = match used.get_mut(slot as usize) {
                None => "beyond the end of SESSION_STATS",
                Some(true) => "which another session holds too",
                Some(u) => {
                    *u = true;
                    continue;
                }
            };
            return Err(DatapathError::BadStatsSlot { id, slot, problem });
        }
        let free = (0..capacity).filter(|&s| !used[s as usize]).collect();
        Ok(Self { free })
    }

    pub fn take(&mut self) -> Option<u32> {
        self.free.pop_front()
    }

    pub fn give_back(&mut self, slot: u32) {
        self.free.push_back(slot);
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
    fn rebuild_skips_held_slots_and_hands_out_in_order() {
        let mut s = Slots::rebuild(5, [(10, 1), (11, 3)]).unwrap();
        assert_eq!(s.free(), 3);
        assert_eq!((s.take(), s.take()), (Some(0), Some(2)));
        s.give_back(0);
        // Freed slots go to the back of the queue.
        assert_eq!((s.take(), s.take(), s.take()), (Some(4), Some(0), None));
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
