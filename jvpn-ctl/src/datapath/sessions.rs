//! `SESSIONS` and the copies of its entries in the sessions' own `SESSION_STATS`
//! slots (jvpn_common::hot; docs/datapath.md, "One cache line per packet"), written
//! together: every write of an entry goes through [`Sessions::write`], every
//! removal through [`Sessions::remove`], so the relay's fast copy never says other
//! than the record.

use aya::maps::{HashMap, MapData, MapError};
use jvpn_common::{hot::Hot, maps::SessionEntry};

use super::{endpoints::Endpoints, retry_enomem, stats_view::StatsView};

pub struct Sessions {
    pub map: HashMap<MapData, u64, SessionEntry>,
    pub view: StatsView,
    endpoints: Endpoints,
    /// `id & mask` is the slot an id names (the relay's `JVPN_SLOT_MASK`).
    mask: u32,
}

/// The loader's `JVPN_SLOT_MASK` for an array of `capacity` slots: ids name slots
/// below the next power of two; those beyond the array have no copy.
pub fn slot_mask(capacity: u32) -> u32 {
    capacity
        .checked_next_power_of_two()
        .map_or(u32::MAX, |n| n - 1)
}

impl Sessions {
    pub fn new(
        map: HashMap<MapData, u64, SessionEntry>,
        view: StatsView,
        endpoints: Endpoints,
        capacity: u32,
    ) -> Self {
        Self {
            map,
            view,
            endpoints,
            mask: slot_mask(capacity),
        }
    }

    /// The slot `id` names.
    pub fn named_slot(&self, id: u64) -> u32 {
        id as u32 & self.mask
    }

    /// Writes `entry` (its `stats_slot` already set) with `flags` (`BPF_NOEXIST` or
    /// `BPF_EXIST`), then its copy if it holds the slot its id names. On failure
    /// nothing changed.
    pub fn write(&mut self, id: u64, entry: &SessionEntry, flags: u64) -> Result<(), MapError> {
        retry_enomem(|| self.map.insert(id, *entry, flags))?;
        self.write_copy(id, entry);
        Ok(())
    }

    /// The copy of `entry` in its slot, if its id names that slot; else nothing (the
    /// slot's copy, if any, belongs to another id and is left alone).
    pub fn write_copy(&mut self, id: u64, entry: &SessionEntry) {
        let slot = entry.stats_slot;
        if self.named_slot(id) != slot {
            return;
        }
        let indices = (
            self.endpoints.index(&entry.gw_client),
            self.endpoints.index(&entry.exit),
            self.endpoints.index(&entry.gw_exit),
        );
        let (Some(gw_client), Some(exit), Some(gw_exit)) = indices else {
            // No room to name an endpoint: no copy, the relay looks the entry up.
            self.view.clear_copy(slot);
            return;
        };
        self.view.write_copy(
            slot,
            &Hot {
                id,
                forwarding: entry.forwarding(),
                client: entry.client,
                gw_client,
                exit,
                gw_exit,
                client_hop: entry.client_hop,
                exit_hop: entry.exit_hop,
            },
        );
    }

    /// Removes `id`'s entry, its copy in `slot` first so that no packet takes the
    /// copy once the entry is gone.
    pub fn remove(&mut self, id: u64, slot: Option<u32>) -> Result<(), MapError> {
        if let Some(slot) = slot.filter(|&s| s == self.named_slot(id)) {
            self.view.clear_copy(slot);
        }
        self.map.remove(&id)
    }

    /// After a load: every slot's copy made to match the entries kept by the pins
    /// (those of an earlier run were written from the same entries; a copy whose
    /// session is gone, or that an older build never wrote, is cleared).
    pub fn rebuild_copies(&mut self, entries: &[(u64, SessionEntry)]) {
        let mut owner = vec![false; self.view.len() as usize];
        for (id, e) in entries {
            if self.named_slot(*id) == e.stats_slot {
                if let Some(o) = owner.get_mut(e.stats_slot as usize) {
                    *o = true;
                }
                self.write_copy(*id, e);
            }
        }
        for (slot, owned) in owner.iter().enumerate() {
            if !owned {
                self.view.clear_copy(slot as u32);
            }
        }
    }
}
