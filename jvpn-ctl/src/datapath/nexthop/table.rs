//! Which next hop each destination uses, and which sessions use which destinations:
//! the bookkeeping of `NEXT_HOPS`, free of netlink and maps (the caller resolves routes
//! and writes entries), so that it can be tested on its own.
//!
//! A **destination** is where relayed packets go (a client binding's address, an
//! exit's) together with the gateway address they leave from. A **hop** is what the
//! route to it ends in: egress interface, neighbour (the route's gateway, or the
//! destination itself on a connected network) and MTU. Many destinations share a
//! hop; a hop's slot in `NEXT_HOPS` is what sessions point at.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use jvpn_common::nexthop::NEXT_HOPS_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dest {
    pub dst: IpAddr,
    /// The gateway's address the packets leave from.
    pub src: IpAddr,
}

/// What a route lookup says about a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HopKey {
    pub ifindex: u32,
    /// The route's gateway, or the destination on a connected network.
    pub neigh: IpAddr,
    /// The route's MTU metric, 0 when it has none (the link's MTU then applies).
    pub route_mtu: u32,
}

#[derive(Debug)]
struct DestState {
    /// 0: no usable route (the slow path).
    hop: u16,
    /// 0: idle, kept for a session that comes back (a binding swapped back and forth
    /// must not cost a route lookup each time) until evicted or the next resync.
    sessions: u32,
    /// When it last became idle (a count of such events): its place in `idle`.
    idle_at: u64,
}

/// Idle destinations kept at most; beyond, the longest idle go.
const IDLE_MAX: usize = 4096;

#[derive(Debug)]
struct HopState {
    key: HopKey,
    dests: u32,
}

/// Slot numbers: index 0 means "none" in a session entry.
const SLOTS: u16 = (NEXT_HOPS_MAX - 1) as u16;

#[derive(Debug)]
pub struct Table {
    dests: HashMap<Dest, DestState>,
    hops: HashMap<u16, HopState>,
    by_key: HashMap<HopKey, u16>,
    /// Never-used slots first, then released ones, oldest first: a packet that read a
    /// slot number just before its release is long gone when the slot is reused.
    free: VecDeque<u16>,
    /// Hops no destination uses any more, freed by [`Table::finish`] once no entry
    /// names them.
    retired: Vec<u16>,
    /// Destinations as they became idle, oldest first, with the `idle_at` of that
    /// time; an entry whose destination was used again since is stale, skipped.
    idle: VecDeque<(Dest, u64)>,
    /// Destinations idle now, and the count of times one became idle.
    idle_now: usize,
    idle_events: u64,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            dests: HashMap::new(),
            hops: HashMap::new(),
            by_key: HashMap::new(),
            free: (1..=SLOTS).collect(),
            retired: Vec::new(),
            idle: VecDeque::new(),
            idle_now: 0,
            idle_events: 0,
        }
    }
}

/// What [`Table::acquire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// The destination's hop (0: none).
    pub hop: u16,
    /// The hop is new: its entry must be written.
    pub new_hop: bool,
}

impl Table {
    /// One more session uses `d`; a destination seen for the first time is resolved
    /// with `resolve` (None: no usable route). A new hop takes `hint` if that slot is
    /// free (the slot a pinned entry already names), else the oldest free one; with
    /// no free slot the destination goes without (the slow path).
    pub fn acquire(
        &mut self,
        d: &Dest,
        hint: u16,
        resolve: impl FnOnce(&Dest) -> Option<HopKey>,
    ) -> Acquired {
        if let Some(s) = self.dests.get_mut(d) {
            if s.sessions == 0 {
                self.idle_now -= 1;
            }
            s.sessions += 1;
            return Acquired {
                hop: s.hop,
                new_hop: false,
            };
        }
        let (hop, new_hop) = match resolve(d) {
            Some(key) => self.hop_for(key, hint),
            None => (0, false),
        };
        self.dests.insert(
            *d,
            DestState {
                hop,
                sessions: 1,
                idle_at: 0,
            },
        );
        Acquired { hop, new_hop }
    }

    /// One session fewer uses `d`. A destination no session uses stays, idle, until
    /// [`IDLE_MAX`] others became idle after it or the next resync. Returns the hops
    /// no destination uses any more: the caller invalidates their entries (they are
    /// reused only after [`Table::finish`]).
    pub fn release(&mut self, d: &Dest) -> Vec<u16> {
        let Some(s) = self.dests.get_mut(d) else {
            return Vec::new();
        };
        if s.sessions == 0 {
            return Vec::new();
        }
        s.sessions -= 1;
        if s.sessions > 0 {
            return Vec::new();
        }
        self.idle_events += 1;
        s.idle_at = self.idle_events;
        self.idle.push_back((*d, self.idle_events));
        self.idle_now += 1;
        let mut retired = Vec::new();
        while self.idle_now > IDLE_MAX {
            let Some((old, at)) = self.idle.pop_front() else {
                break;
            };
            retired.extend(self.evict(&old, Some(at)));
        }
        // Stale entries (used again since) would pile up under a binding that swaps
        // back and forth: drop them once they outnumber the idle ones.
        if self.idle.len() > 2 * IDLE_MAX.max(self.idle_now) {
            let dests = &self.dests;
            self.idle.retain(|(d, at)| {
                dests
                    .get(d)
                    .is_some_and(|s| s.sessions == 0 && s.idle_at == *at)
            });
        }
        retired
    }

    /// Removes `d` if it is idle (and has been since `at`, if given); the hop it leaves
    /// unused, if any.
    fn evict(&mut self, d: &Dest, at: Option<u64>) -> Option<u16> {
        match self.dests.get(d) {
            Some(s) if s.sessions == 0 && at.is_none_or(|a| a == s.idle_at) => {}
            _ => return None,
        }
        let hop = self.dests.remove(d).expect("checked").hop;
        self.idle_now -= 1;
        self.drop_dest_from(hop)
    }

    /// Resolves every destination again (after a route, address or link change).
    /// Returns the destinations whose hop changed, and the hops that must be written
    /// (every hop in use: the caller invalidated them all first).
    pub fn reresolve(
        &mut self,
        mut resolve: impl FnMut(&Dest) -> Option<HopKey>,
    ) -> (HashMap<Dest, u16>, Vec<u16>) {
        let mut moved = HashMap::new();
        // Idle destinations are not worth a route lookup each: they go.
        for (d, _) in std::mem::take(&mut self.idle) {
            self.evict(&d, None);
        }
        let dests: Vec<Dest> = self.dests.keys().copied().collect();
        for d in dests {
            let old = self.dests[&d].hop;
            let key = resolve(&d);
            if key.is_some() && self.hops.get(&old).map(|h| h.key) == key {
                continue;
            }
            let new = match key {
                Some(k) => self.hop_for(k, 0).0,
                None => 0,
            };
            if new == old {
                continue;
            }
            self.dests.get_mut(&d).expect("listed above").hop = new;
            self.drop_dest_from(old);
            moved.insert(d, new);
        }
        (moved, self.hops.keys().copied().collect())
    }

    /// Frees the retired hops (their entries invalid, no session entry naming them).
    pub fn finish(&mut self) {
        self.free.extend(self.retired.drain(..));
    }

    pub fn hop_of(&self, d: &Dest) -> u16 {
        self.dests.get(d).map_or(0, |s| s.hop)
    }

    pub fn key_of(&self, hop: u16) -> Option<HopKey> {
        self.hops.get(&hop).map(|h| h.key)
    }

    /// Hops whose neighbour is `neigh` on `ifindex`.
    pub fn hops_via(&self, ifindex: u32, neigh: IpAddr) -> Vec<u16> {
        self.hops
            .iter()
            .filter(|(_, h)| h.key.ifindex == ifindex && h.key.neigh == neigh)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn live_hops(&self) -> Vec<u16> {
        self.hops.keys().copied().collect()
    }

    pub fn destinations(&self) -> usize {
        self.dests.len()
    }

    fn hop_for(&mut self, key: HopKey, hint: u16) -> (u16, bool) {
        if let Some(&id) = self.by_key.get(&key) {
            self.hops.get_mut(&id).expect("indexed").dests += 1;
            return (id, false);
        }
        let id = match self.free.iter().position(|&s| s == hint && hint != 0) {
            Some(i) => self.free.remove(i),
            None => self.free.pop_front(),
        };
        let Some(id) = id else {
            return (0, false);
        };
        self.hops.insert(id, HopState { key, dests: 1 });
        self.by_key.insert(key, id);
        (id, true)
    }

    fn drop_dest_from(&mut self, hop: u16) -> Option<u16> {
        let h = self.hops.get_mut(&hop)?;
        h.dests -= 1;
        if h.dests > 0 {
            return None;
        }
        let key = h.key;
        self.hops.remove(&hop);
        self.by_key.remove(&key);
        self.retired.push(hop);
        Some(hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn dest(d: &str) -> Dest {
        Dest {
            dst: ip(d),
            src: ip("10.0.0.1"),
        }
    }

    fn via(gw: &str) -> Option<HopKey> {
        Some(HopKey {
            ifindex: 2,
            neigh: ip(gw),
            route_mtu: 0,
        })
    }

    #[test]
    fn destinations_share_hops_and_hops_are_freed_oldest_first() {
        let mut t = Table::default();
        let a = t.acquire(&dest("192.0.2.1"), 0, |_| via("10.0.0.254"));
        assert_eq!(
            a,
            Acquired {
                hop: 1,
                new_hop: true
            }
        );
        let b = t.acquire(&dest("192.0.2.2"), 0, |_| via("10.0.0.254"));
        assert_eq!((b.hop, b.new_hop), (1, false), "same gateway, same hop");
        let again = t.acquire(&dest("192.0.2.1"), 0, |_| panic!("known: not resolved"));
        assert_eq!(again.hop, 1);
        assert!(t.release(&dest("192.0.2.1")).is_empty());
        assert!(t.release(&dest("192.0.2.1")).is_empty(), "idle, kept");
        assert!(t.release(&dest("192.0.2.2")).is_empty(), "idle, kept");
        assert!(
            t.release(&dest("192.0.2.2")).is_empty(),
            "not used: no change"
        );
        let back = t.acquire(&dest("192.0.2.2"), 0, |_| {
            panic!("idle: not resolved again")
        });
        assert_eq!(
            back,
            Acquired {
                hop: 1,
                new_hop: false
            }
        );
        t.release(&dest("192.0.2.2"));
        // The next resync drops the idle ones, and their hop with them.
        let (moved, live) = t.reresolve(|_| panic!("nothing in use to resolve"));
        assert!(moved.is_empty() && live.is_empty(), "{moved:?} {live:?}");
        let c = t.acquire(&dest("192.0.2.3"), 0, |_| via("10.0.0.253"));
        assert_eq!(c.hop, 2, "1 is retired, not free");
        t.finish();
        let d = t.acquire(&dest("192.0.2.4"), 0, |_| via("10.0.0.252"));
        assert_eq!(d.hop, 3, "freed slots go to the back of the queue");
        let none = t.acquire(&dest("198.51.100.1"), 0, |_| None);
        assert_eq!((none.hop, none.new_hop), (0, false), "no route: slow path");
    }

    #[test]
    fn idle_destinations_are_bounded() {
        let mut t = Table::default();
        let d = |i: u32| Dest {
            dst: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
            src: ip("10.0.0.1"),
        };
        let mut retired = Vec::new();
        for i in 0..=IDLE_MAX as u32 {
            let a = t.acquire(&d(i), 0, |x| {
                Some(HopKey {
                    ifindex: 2,
                    neigh: x.dst,
                    route_mtu: 0,
                })
            });
            assert!(a.new_hop);
            retired.extend(t.release(&d(i)));
        }
        assert_eq!(retired, [1], "the longest idle goes, with its hop");
        assert_eq!(t.destinations(), IDLE_MAX);
    }

    #[test]
    fn a_binding_swapped_back_and_forth_keeps_the_idle_queue_small() {
        let mut t = Table::default();
        let (a, b) = (dest("192.0.2.1"), dest("192.0.2.2"));
        t.acquire(&a, 0, |_| via("10.0.0.254"));
        for _ in 0..10 * IDLE_MAX {
            t.acquire(&b, 0, |_| via("10.0.0.254"));
            assert!(t.release(&a).is_empty());
            t.acquire(&a, 0, |_| panic!("cached"));
            assert!(t.release(&b).is_empty());
        }
        assert!(t.idle.len() <= 2 * IDLE_MAX + 1, "{}", t.idle.len());
        assert_eq!((t.idle_now, t.destinations()), (1, 2));
    }

    #[test]
    fn a_hint_is_taken_when_free() {
        let mut t = Table::default();
        assert_eq!(
            t.acquire(&dest("192.0.2.1"), 77, |_| via("10.0.0.9")).hop,
            77
        );
        assert_eq!(
            t.acquire(&dest("192.0.2.2"), 77, |_| via("10.0.0.8")).hop,
            1
        );
    }

    #[test]
    fn reresolve_moves_destinations_and_retires_unused_hops() {
        let mut t = Table::default();
        for d in ["192.0.2.1", "192.0.2.2"] {
            t.acquire(&dest(d), 0, |_| via("10.0.0.254"));
        }
        t.acquire(&dest("10.0.0.7"), 0, |_| via("10.0.0.7"));
        let (moved, live) = t.reresolve(|d| {
            if d.dst == ip("10.0.0.7") {
                via("10.0.0.7")
            } else {
                via("10.0.0.253")
            }
        });
        assert_eq!(moved.len(), 2);
        assert!(moved.values().all(|&h| h == 3), "{moved:?}");
        let mut live = live;
        live.sort();
        assert_eq!(live, [2, 3]);
        assert_eq!(t.hops_via(2, ip("10.0.0.7")), [2]);
        t.finish();
        assert_eq!(t.acquire(&dest("192.0.2.9"), 0, |_| via("10.0.0.1")).hop, 4);
        let (moved, _) = t.reresolve(|_| None);
        assert_eq!(moved.len(), 4, "no routes at all: every destination to 0");
        assert!(t.live_hops().is_empty());
    }
}
