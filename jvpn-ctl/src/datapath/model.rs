//! The data plane in memory: the entries, statistics slots and drop counters the
//! BPF maps hold, kept by the same rules [`super::Datapath`] applies (validation, a
//! session's slot is the one its id names when free, a replace keeps the slot and
//! reads the generation back), and a relay step at the level of addresses for the
//! deterministic simulation: DATA from the binding goes to the exit, DATA from the
//! exit to the binding, anything else for the session is a stale drop. A clone is a
//! handle on the same state: the controller holds one, the simulated relay another.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use jvpn_common::{
    counters,
    maps::{SessionEntry, SessionStats},
};

use super::{DataPlane, DatapathError, Drops, validate};

/// Where [`MemPlane::relay_data`] sends a DATA datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Onward, from the gateway's address `from` to `to`.
    Forward { from: SocketAddr, to: SocketAddr },
    /// Dropped: no entry for the session.
    Unknown,
    /// Dropped: neither the binding nor the exit sent it.
    Stale,
    /// Dropped: the entry is not forwarding (BIRTH).
    NotForwarding,
}

#[derive(Clone)]
pub struct MemPlane(Arc<Mutex<Inner>>);

struct Inner {
    capacity: u32,
    sessions: BTreeMap<u64, SessionEntry>,
    /// Slot → the session holding it.
    slots: BTreeMap<u32, u64>,
    stats: BTreeMap<u64, SessionStats>,
    drops: Drops,
    /// The gate's limits as last set (the model has no gate; a reload's are kept).
    gate: Option<super::GateLimits>,
}

impl Inner {
    fn named_slot(&self, id: u64) -> u32 {
        id as u32 & (self.capacity - 1)
    }
}

impl MemPlane {
    /// `capacity` is rounded up to a power of two, as the real table is.
    pub fn new(capacity: u32) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            capacity: capacity.max(1).next_power_of_two(),
            sessions: BTreeMap::new(),
            slots: BTreeMap::new(),
            stats: BTreeMap::new(),
            gate: None,
            drops: [0; counters::COUNT as usize],
        })))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while held is a failed test or fuzz run already.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.inner().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The relay's drops for `reason` (a `jvpn_common::counters` index).
    pub fn dropped(&self, reason: u32) -> u64 {
        self.inner().drops[reason as usize]
    }

    /// Every entry, by session id.
    pub fn entries(&self) -> BTreeMap<u64, SessionEntry> {
        self.inner().sessions.clone()
    }

    /// What the relay does with a DATA datagram of session `id` from `from`, and
    /// counts it as the relay would.
    pub fn relay_data(&self, id: u64, from: SocketAddr, bytes: usize) -> Relayed {
        let mut g = self.inner();
        let me = &mut *g;
        let Some(e) = me.sessions.get(&id) else {
            me.drops[counters::UNKNOWN_SESSION as usize] += 1;
            return Relayed::Unknown;
        };
        if !e.forwarding() {
            me.drops[counters::NOT_FORWARDING as usize] += 1;
            return Relayed::NotForwarding;
        }
        let ep = |x: &jvpn_common::maps::Endpoint| x.socket_addr();
        let st = me.stats.entry(id).or_default();
        let bytes = bytes as u64;
        if ep(&e.client) == Some(from) {
            st.up_packets += 1;
            st.up_bytes += bytes;
            if let (Some(f), Some(t)) = (ep(&e.gw_exit), ep(&e.exit)) {
                return Relayed::Forward { from: f, to: t };
            }
        } else if ep(&e.exit) == Some(from) {
            st.down_packets += 1;
            st.down_bytes += bytes;
            if let (Some(f), Some(t)) = (ep(&e.gw_client), ep(&e.client)) {
                return Relayed::Forward { from: f, to: t };
            }
        }
        st.stale_drops += 1;
        me.drops[counters::STALE_BINDING as usize] += 1;
        Relayed::Stale
    }
}

impl DataPlane for MemPlane {
    fn insert_session(&mut self, id: u64, entry: &SessionEntry) -> Result<(), DatapathError> {
        let mut g = self.inner();
        let me = &mut *g;
        validate(id, entry)?;
        if me.sessions.contains_key(&id) {
            return Err(DatapathError::SessionExists(id));
        }
        let named = me.named_slot(id);
        let slot = if !me.slots.contains_key(&named) {
            named
        } else {
            (0..me.capacity)
                .find(|s| !me.slots.contains_key(s))
                .ok_or(DatapathError::Full(me.capacity))?
        };
        me.slots.insert(slot, id);
        me.sessions.insert(
            id,
            SessionEntry {
                stats_slot: slot,
                client_hop: 0,
                exit_hop: 0,
                ..*entry
            },
        );
        me.stats.insert(id, SessionStats::default());
        Ok(())
    }

    fn replace_session(&mut self, id: u64, entry: &SessionEntry) -> Result<u32, DatapathError> {
        let mut g = self.inner();
        let me = &mut *g;
        validate(id, entry)?;
        let Some(old) = me.sessions.get_mut(&id) else {
            return Err(DatapathError::NoSuchSession(id));
        };
        *old = SessionEntry {
            stats_slot: old.stats_slot,
            client_hop: 0,
            exit_hop: 0,
            ..*entry
        };
        Ok(old.generation)
    }

    fn remove_session(&mut self, id: u64) -> Result<(), DatapathError> {
        let mut g = self.inner();
        let me = &mut *g;
        let e = me
            .sessions
            .remove(&id)
            .ok_or(DatapathError::NoSuchSession(id))?;
        me.slots.remove(&e.stats_slot);
        me.stats.remove(&id);
        Ok(())
    }

    fn session(&self, id: u64) -> Result<Option<SessionEntry>, DatapathError> {
        let me = self.inner();
        Ok(me.sessions.get(&id).copied())
    }

    fn session_ids(&self) -> Vec<u64> {
        let me = self.inner();
        me.sessions.keys().copied().collect()
    }

    fn session_stats(&self, id: u64) -> Result<Option<SessionStats>, DatapathError> {
        let me = self.inner();
        Ok(me.stats.get(&id).copied())
    }

    fn named_slot_free(&self, id: u64) -> bool {
        let me = self.inner();
        !me.slots.contains_key(&me.named_slot(id))
    }

    fn drops(&self) -> Result<Drops, DatapathError> {
        let me = self.inner();
        Ok(me.drops)
    }

    fn process_next_hop_events(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }

    fn rotate_cookie_if_due(&mut self) {}

    fn set_gate(&mut self, limits: &super::GateLimits) -> Result<(), DatapathError> {
        self.inner().gate = Some(*limits);
        Ok(())
    }

    fn next_hop_stats(&self) -> Option<super::HopStats> {
        None
    }
}

#[cfg(test)]
mod tests {
    use jvpn_common::maps::{Endpoint, FLAG_FORWARDING};

    use super::*;

    fn entry(client_port: u16, generation: u32) -> SessionEntry {
        SessionEntry {
            generation,
            flags: FLAG_FORWARDING,
            client: Endpoint::v4([10, 0, 0, 2], client_port),
            gw_client: Endpoint::v4([10, 0, 0, 1], 51820),
            exit: Endpoint::v4([10, 9, 0, 2], 51820),
            gw_exit: Endpoint::v4([10, 9, 0, 1], 51820),
            stats_slot: 77,
            client_hop: 5,
            exit_hop: 6,
        }
    }

    #[test]
    fn follows_the_datapath_rules() {
        let mut m = MemPlane::new(4);
        assert!(matches!(
            m.insert_session(0, &entry(1, 1)),
            Err(DatapathError::InvalidEntry(..))
        ));
        m.insert_session(5, &entry(1000, 1)).unwrap();
        assert_eq!(
            m.session(5).unwrap().unwrap().stats_slot,
            1,
            "the named slot"
        );
        assert!(!m.named_slot_free(9), "9 names slot 1 too");
        m.insert_session(9, &entry(1001, 1)).unwrap();
        assert_ne!(m.session(9).unwrap().unwrap().stats_slot, 1);
        assert!(matches!(
            m.insert_session(5, &entry(1, 1)),
            Err(DatapathError::SessionExists(5))
        ));
        assert_eq!(m.replace_session(5, &entry(2000, 2)).unwrap(), 2);
        assert_eq!(
            m.session(5).unwrap().unwrap().stats_slot,
            1,
            "kept its slot"
        );
        assert!(matches!(
            m.replace_session(6, &entry(1, 1)),
            Err(DatapathError::NoSuchSession(6))
        ));
        m.remove_session(5).unwrap();
        assert!(m.named_slot_free(5));
        assert!(matches!(
            m.remove_session(5),
            Err(DatapathError::NoSuchSession(5))
        ));
        for id in [2, 3, 4] {
            m.insert_session(id, &entry(1, 1)).unwrap();
        }
        assert!(matches!(
            m.insert_session(8, &entry(1, 1)),
            Err(DatapathError::Full(4))
        ));
    }

    #[test]
    fn relays_by_binding() {
        let mut m = MemPlane::new(8);
        let e = entry(1000, 1);
        m.insert_session(3, &e).unwrap();
        let client = e.client.socket_addr().unwrap();
        let exit = e.exit.socket_addr().unwrap();
        assert_eq!(
            m.relay_data(3, client, 100),
            Relayed::Forward {
                from: e.gw_exit.socket_addr().unwrap(),
                to: exit
            }
        );
        assert_eq!(
            m.relay_data(3, exit, 50),
            Relayed::Forward {
                from: e.gw_client.socket_addr().unwrap(),
                to: client
            }
        );
        assert_eq!(
            m.relay_data(3, "10.0.0.2:999".parse().unwrap(), 1),
            Relayed::Stale
        );
        assert_eq!(m.relay_data(4, client, 1), Relayed::Unknown);
        let st = m.session_stats(3).unwrap().unwrap();
        assert_eq!(
            (st.up_packets, st.up_bytes, st.down_packets, st.stale_drops),
            (1, 100, 1, 1)
        );
        let d = m.drops().unwrap();
        assert_eq!(d[counters::STALE_BINDING as usize], 1);
        assert_eq!(d[counters::UNKNOWN_SESSION as usize], 1);
    }
}
