//! `SESSION_STATS` through a shared mapping of the array (`BPF_F_MMAPABLE`): the
//! controller reads counters without one `bpf(BPF_MAP_LOOKUP_ELEM)` per session (it
//! polls 8192 sessions a tick, 20 ticks a second, and those system calls were ~40 % of
//! its CPU under keepalive load; docs/gateway.md, "Keepalives at scale"), and writes
//! the slots' entry copies (jvpn_common::hot) with one store per word.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{MapData, array::Array};
use jvpn_common::{
    hot::{HOT_WORDS, Hot, next_generation, word_generation},
    maps::SessionStats,
};

use super::mapping::Mapping;

pub struct StatsView(Mapping<SessionStats>);

impl StatsView {
    pub fn new(stats: &Array<MapData, SessionStats>) -> std::io::Result<Self> {
        Mapping::new(stats, true).map(Self)
    }

    /// Slots in the array.
    pub fn len(&self) -> u32 {
        self.0.len()
    }

    /// The counters in `slot` (None beyond the array), the copy left out (zero).
    /// Each field is read once; the relay adds to them concurrently, so fields may be
    /// from slightly different instants, as with a lookup.
    pub fn get(&self, slot: u32) -> Option<SessionStats> {
        // SAFETY: inside the mapping; volatile loads because the kernel writes it
        // behind our back; the type is plain integers.
        self.0.get(slot).map(|p| SessionStats {
            hot: [0; 8],
            ..unsafe { p.read_volatile() }
        })
    }

    fn words(&self, slot: u32) -> Option<&[AtomicU64; HOT_WORDS]> {
        let p = self.0.get(slot)?;
        // SAFETY: the copy's words lie inside the mapped value, 8-byte aligned (the
        // value is), and are only ever accessed atomically or by single loads.
        Some(unsafe { &*(&raw mut (*p).hot).cast::<[AtomicU64; HOT_WORDS]>() })
    }

    /// The copy in `slot`, as the relay would read it.
    pub fn copy(&self, slot: u32) -> Option<Hot> {
        let w = self.words(slot)?;
        Hot::decode(&std::array::from_fn(|i| w[i].load(Ordering::Acquire)))
    }

    /// Writes `hot` into `slot` at the generation after the slot's last one, a word
    /// at a time: a reader sees the old copy, the new one, or a mix it refuses.
    /// Generations only grow (a cleared copy keeps its last one in words 1..), so two
    /// writes agree on one only 65,535 writes of this slot apart: far more than one
    /// session's binding changes (rate-limited) or a slot's reuse while a reader is
    /// delayed, even by a preempted vCPU. One writer only (the pin directory's lock,
    /// `gateway::lock`).
    pub fn write_copy(&self, slot: u32, hot: &Hot) {
        let Some(w) = self.words(slot) else { return };
        let last = w
            .iter()
            .map(|a| word_generation(a.load(Ordering::Relaxed)))
            .max();
        let new = hot.encode(next_generation(last.unwrap_or(0)));
        for (a, v) in w.iter().zip(new) {
            a.store(v, Ordering::Release);
        }
    }

    /// Invalidates `slot`'s copy: word 0 loses its generation (and the tag's low
    /// bits), so no reader takes the copy from then on.
    pub fn clear_copy(&self, slot: u32) {
        if let Some(w) = self.words(slot) {
            w[0].store(0, Ordering::Release);
        }
    }

    /// Makes the copy in `slot` torn: its last word one generation ahead (tests).
    pub fn tear_copy(&self, slot: u32) {
        if let Some(w) = self.words(slot) {
            let v = w[HOT_WORDS - 1].load(Ordering::Relaxed);
            w[HOT_WORDS - 1].store(v.wrapping_add(1 << 48), Ordering::Release);
        }
    }

    /// Zeroes `slot`'s counters and control buckets (not its copy, whose generation
    /// must survive): a new session's statistics start from nothing.
    pub fn reset_counters(&self, slot: u32) {
        let Some(p) = self.0.get(slot) else { return };
        // SAFETY: inside the mapping; the counters are the u64 fields after the copy.
        unsafe {
            let first = (&raw mut (*p).up_packets).cast::<AtomicU64>();
            for i in 0..COUNTER_WORDS {
                (*first.add(i)).store(0, Ordering::Relaxed);
            }
        }
    }
}

/// u64 fields of `SessionStats` after `hot`.
const COUNTER_WORDS: usize = (size_of::<SessionStats>() - size_of::<[u64; 8]>()) / 8;
