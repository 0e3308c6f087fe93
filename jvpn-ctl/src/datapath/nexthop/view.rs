//! `NEXT_HOPS` through a shared, writable mapping of the array: each word is
//! written with one atomic 8-byte store, which is what lets the relay read entries
//! without a lock (`jvpn_common::nexthop`). A map update (`bpf_map_update_elem`)
//! copies a value with `memcpy`, which promises no such thing.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{MapData, array::Array};
use jvpn_common::nexthop::{Hop, NextHop};

use crate::datapath::mapping::Mapping;

pub struct HopView(Mapping<NextHop>);

impl HopView {
    pub fn new(map: &Array<MapData, NextHop>) -> std::io::Result<Self> {
        Mapping::new(map, true).map(Self)
    }

    fn word(&self, slot: u16, i: usize) -> Option<&AtomicU64> {
        // SAFETY: inside the mapping; 8-aligned (page-aligned base, 32-byte values);
        // the memory is shared with the kernel, hence atomics.
        self.0
            .get(u32::from(slot))
            .map(|p| unsafe { AtomicU64::from_ptr(p.cast::<u64>().add(i)) })
    }

    pub fn read(&self, slot: u16) -> [u64; 3] {
        core::array::from_fn(|i| self.word(slot, i).map_or(0, |w| w.load(Ordering::Relaxed)))
    }

    /// Writes `hop` at generation `gen_` (nonzero, different from the current one).
    pub fn write(&self, slot: u16, hop: &Hop, gen_: u16) {
        for (i, v) in NextHop::encode(hop, gen_).into_iter().enumerate() {
            if let Some(w) = self.word(slot, i) {
                w.store(v, Ordering::Release);
            }
        }
    }

    /// Makes `slot` invalid: its third word's generation is set to 0, so the three
    /// no longer agree. A packet that read it before takes its old value.
    pub fn invalidate(&self, slot: u16) {
        if let Some(w) = self.word(slot, 2) {
            w.store(
                NextHop::invalidated(w.load(Ordering::Relaxed)),
                Ordering::Release,
            );
        }
    }

    pub fn invalidate_all(&self) {
        for slot in 0..self.0.len().min(u32::from(u16::MAX) + 1) {
            self.invalidate(slot as u16);
        }
    }
}
