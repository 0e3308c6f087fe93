//! What the gateway's controller asks of its data plane. [`super::Datapath`] (the BPF
//! maps) is the real one; [`super::MemPlane`] keeps the same entries in memory for
//! the deterministic simulation and the fuzz targets, which run without a kernel.
//! The controller (`gateway::Core`) holds a `Box<dyn DataPlane>`: its calls are per
//! session change and per tick, never per packet, so the indirection costs nothing
//! that shows.

use jvpn_common::maps::{SessionEntry, SessionStats};

use super::{Datapath, DatapathError, Drops, GateLimits, HopStats};

pub trait DataPlane: Send {
    /// A new session's entry; `SessionExists` if it has one already.
    fn insert_session(&mut self, id: u64, entry: &SessionEntry) -> Result<(), DatapathError>;
    /// Atomically replaces a session's entry (the binding swap); the generation the
    /// entry now has, read back.
    fn replace_session(&mut self, id: u64, entry: &SessionEntry) -> Result<u32, DatapathError>;
    /// `NoSuchSession` if it has none.
    fn remove_session(&mut self, id: u64) -> Result<(), DatapathError>;
    fn session(&self, id: u64) -> Result<Option<SessionEntry>, DatapathError>;
    fn session_ids(&self) -> Vec<u64>;
    /// What the relay counted for the session (`None` without an entry).
    fn session_stats(&self, id: u64) -> Result<Option<SessionStats>, DatapathError>;
    /// Whether session id `id` would get the slot its value names (no probing).
    fn named_slot_free(&self, id: u64) -> bool;
    /// The relay's drop counters, by reason.
    fn drops(&self) -> Result<Drops, DatapathError>;
    /// Applies the kernel's neighbour and route changes to the next-hop table.
    fn process_next_hop_events(&mut self) -> Result<(), DatapathError>;
    /// Moves the HELLO cookie key on when its period is over.
    fn rotate_cookie_if_due(&mut self);
    /// The XDP gate's budgets (at start, and on a reload of `[limits]`).
    fn set_gate(&mut self, limits: &GateLimits) -> Result<(), DatapathError>;
    /// The next-hop table's figures (`None`: the relay asks the FIB itself).
    fn next_hop_stats(&self) -> Option<HopStats>;
}

impl DataPlane for Datapath {
    fn insert_session(&mut self, id: u64, entry: &SessionEntry) -> Result<(), DatapathError> {
        Datapath::insert_session(self, id, entry)
    }
    fn replace_session(&mut self, id: u64, entry: &SessionEntry) -> Result<u32, DatapathError> {
        Datapath::replace_session(self, id, entry)
    }
    fn remove_session(&mut self, id: u64) -> Result<(), DatapathError> {
        Datapath::remove_session(self, id)
    }
    fn session(&self, id: u64) -> Result<Option<SessionEntry>, DatapathError> {
        Datapath::session(self, id)
    }
    fn session_ids(&self) -> Vec<u64> {
        Datapath::session_ids(self)
    }
    fn session_stats(&self, id: u64) -> Result<Option<SessionStats>, DatapathError> {
        Datapath::session_stats(self, id)
    }
    fn named_slot_free(&self, id: u64) -> bool {
        Datapath::named_slot_free(self, id)
    }
    fn drops(&self) -> Result<Drops, DatapathError> {
        Datapath::drops(self)
    }
    fn process_next_hop_events(&mut self) -> Result<(), DatapathError> {
        Datapath::process_next_hop_events(self)
    }
    fn rotate_cookie_if_due(&mut self) {
        Datapath::rotate_cookie_if_due(self)
    }
    fn set_gate(&mut self, limits: &GateLimits) -> Result<(), DatapathError> {
        Datapath::set_gate(self, limits)
    }
    fn next_hop_stats(&self) -> Option<HopStats> {
        Datapath::next_hop_stats(self)
    }
}
