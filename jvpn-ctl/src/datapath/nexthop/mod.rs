//! The next-hop table (`NEXT_HOPS`, docs/datapath.md "Next hops"): the relay takes a
//! packet's egress interface, MACs and MTU from here instead of asking the kernel's
//! FIB per packet. Entries are per hop (interface, neighbour, MTU), not per session;
//! sessions name theirs in `SessionEntry::{client_hop, exit_hop}`.
//!
//! Coherence: every change the kernel announces about links, addresses, routes,
//! rules, nexthop objects and neighbours is followed. A neighbour change
//! rewrites the hops through that neighbour; a link, address or route change (or lost
//! notifications) invalidates every hop at once, resolves every destination again,
//! re-points the sessions whose hop changed, and only then makes hops valid again, so
//! no packet leaves by an old next hop once the change has been processed. Until
//! then, and whenever an entry is invalid, the relay takes the slow path: the FIB.

mod netlink;
mod table;
mod view;

use std::{collections::HashMap, os::fd::RawFd};

use aya::maps::{MapData, array::Array};
use jvpn_common::{
    maps::{Endpoint, SessionEntry},
    nexthop::{Hop, NextHop},
};
pub use table::{Dest, HopKey};

use super::DatapathError;

/// The destinations of a session entry: toward the client (from `gw_client`), toward
/// the exit (from `gw_exit`).
fn dests_of(e: &SessionEntry) -> Option<[Dest; 2]> {
    let ip = |ep: &Endpoint| ep.socket_addr().map(|a| a.ip());
    Some([
        Dest {
            dst: ip(&e.client)?,
            src: ip(&e.gw_client)?,
        },
        Dest {
            dst: ip(&e.exit)?,
            src: ip(&e.gw_exit)?,
        },
    ])
}

#[derive(Clone, Copy, Debug)]
struct Binding {
    dests: [Dest; 2],
    /// The hops the session's entry names.
    hops: [u16; 2],
}

/// Counts for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopStats {
    /// Hops in use, and how many of them are valid (have a next hop).
    pub hops: u32,
    pub valid: u32,
    pub destinations: u32,
    /// Full resyncs (link, address or route changes; lost notifications).
    pub resyncs: u64,
    /// Batches of change notifications processed (a test waits on this).
    pub processed: u64,
    /// Entries written (valid) and invalidated.
    pub writes: u64,
    pub invalidations: u64,
}

/// What a batch of notifications asks of the session entries: re-point these
/// sessions, then [`NextHops::complete`].
#[derive(Debug, Default)]
pub struct Plan {
    pub repoint: Vec<(u64, [u16; 2])>,
    fill: Vec<u16>,
}

pub struct NextHops {
    view: view::HopView,
    table: table::Table,
    nl: netlink::Query,
    events: netlink::Events,
    sessions: HashMap<u64, Binding>,
    /// Generation last written per slot.
    gens: Vec<u16>,
    valid: Vec<bool>,
    /// A re-point failed: the next batch resyncs again.
    retry: bool,
    /// [`NextHops::suspend`]: entries are kept invalid.
    suspended: bool,
    stats: HopStats,
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> DatapathError + '_ {
    move |cause| DatapathError::Io {
        what: what.to_string(),
        cause,
    }
}

impl NextHops {
    /// Opens the netlink sockets (in the caller's network namespace) and maps the
    /// table. Every entry starts invalid: what a previous controller left is not
    /// trusted, since nobody followed the network while it was gone.
    pub fn open(map: &Array<MapData, NextHop>) -> Result<Self, DatapathError> {
        let view = view::HopView::new(map).map_err(io_err("mapping NEXT_HOPS"))?;
        view.invalidate_all();
        let events =
            netlink::Events::open().map_err(io_err("subscribing to rtnetlink notifications"))?;
        let nl = netlink::Query::open().map_err(io_err("opening an rtnetlink socket"))?;
        let n = usize::from(u16::MAX) + 1;
        let mut gens = vec![0u16; n];
        // Generations go on from what the slots hold, so that no new entry can be
        // mistaken for an old one.
        for (slot, g) in gens.iter_mut().enumerate() {
            *g = NextHop::word_generation(view.read(slot as u16)[0]);
        }
        Ok(Self {
            view,
            table: table::Table::default(),
            nl,
            events,
            sessions: HashMap::new(),
            gens,
            valid: vec![false; n],
            retry: false,
            suspended: false,
            stats: HopStats::default(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.events.fd()
    }

    pub fn stats(&self) -> HopStats {
        HopStats {
            hops: self.table.live_hops().len() as u32,
            valid: self.valid.iter().filter(|v| **v).count() as u32,
            destinations: self.table.destinations() as u32,
            ..self.stats
        }
    }

    /// The hop a slot holds now, as the relay would read it.
    pub fn read(&self, slot: u16) -> Option<Hop> {
        NextHop::decode(self.view.read(slot))
    }

    /// The hops for `entry` (0 where there is none), taking new hops' slots from
    /// `hint` if free, and writing new hops' entries. Pair with [`NextHops::commit`]
    /// once the entry is in the map, or [`NextHops::abandon`] if it is not.
    pub fn acquire(&mut self, entry: &SessionEntry, hint: [u16; 2]) -> [u16; 2] {
        let Some(dests) = dests_of(entry) else {
            return [0, 0];
        };
        let mut out = [0; 2];
        for (i, d) in dests.iter().enumerate() {
            let nl = &mut self.nl;
            let a = self.table.acquire(d, hint[i], |d| resolve(nl, d));
            if a.new_hop {
                self.fill(a.hop);
            }
            out[i] = a.hop;
        }
        out
    }

    /// Releases what [`NextHops::acquire`] took for an entry that was not written.
    pub fn abandon(&mut self, entry: &SessionEntry) {
        if let Some(dests) = dests_of(entry) {
            for d in &dests {
                self.release(d);
            }
        }
    }

    /// Session `id`'s entry is now `entry` (and names its hops): its previous
    /// destinations, if any, are released.
    pub fn commit(&mut self, id: u64, entry: &SessionEntry) {
        let hops = [entry.client_hop, entry.exit_hop];
        let old = match dests_of(entry) {
            Some(dests) => self.sessions.insert(id, Binding { dests, hops }),
            None => self.sessions.remove(&id),
        };
        if let Some(old) = old {
            for d in &old.dests {
                self.release(d);
            }
        }
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(old) = self.sessions.remove(&id) {
            for d in &old.dests {
                self.release(d);
            }
        }
    }

    fn release(&mut self, d: &Dest) {
        for hop in self.table.release(d) {
            self.invalidate(hop);
        }
    }

    /// Reads the notifications waiting and applies those that need no session entry
    /// changed; returns the sessions to re-point (then call [`NextHops::complete`]).
    pub fn plan(&mut self) -> Result<Plan, DatapathError> {
        let changes = match self.events.drain() {
            Ok(c) => c,
            Err(e) => {
                // What was read before the error is lost: resync with the next batch.
                self.retry = true;
                return Err(io_err("reading rtnetlink notifications")(e));
            }
        };
        self.stats.processed += 1;
        if changes.resync || self.retry {
            return Ok(self.resync());
        }
        for (ifindex, ip) in changes.neighbours {
            for hop in self.table.hops_via(ifindex, ip) {
                self.fill(hop);
            }
        }
        Ok(Plan::default())
    }

    /// Everything again: what a start, a route change or lost notifications need.
    pub fn resync(&mut self) -> Plan {
        self.stats.resyncs += 1;
        for hop in self.table.live_hops() {
            self.invalidate(hop);
        }
        let nl = &mut self.nl;
        let (moved, fill) = self.table.reresolve(|d| resolve(nl, d));
        let mut repoint = Vec::new();
        if !moved.is_empty() || self.retry {
            for (id, b) in &self.sessions {
                let now = [
                    self.table.hop_of(&b.dests[0]),
                    self.table.hop_of(&b.dests[1]),
                ];
                if now != b.hops {
                    repoint.push((*id, now));
                }
            }
        }
        Plan { repoint, fill }
    }

    /// After the re-points of `plan` were written (`failed`: those that were not):
    /// makes the hops valid again and frees the retired ones. A hop a failed
    /// session still names stays invalid, and the next batch tries again.
    pub fn complete(&mut self, plan: Plan, failed: &[u64]) {
        let mut keep_invalid = Vec::new();
        for (id, hops) in &plan.repoint {
            if failed.contains(id) {
                if let Some(b) = self.sessions.get(id) {
                    keep_invalid.extend(b.hops);
                }
            } else if let Some(b) = self.sessions.get_mut(id) {
                b.hops = *hops;
            }
        }
        for hop in plan.fill {
            if !keep_invalid.contains(&hop) {
                self.fill(hop);
            }
        }
        self.retry = !failed.is_empty();
        if !self.retry {
            self.table.finish();
        }
    }

    /// Every entry invalid (`true`: the relay asks the FIB for every packet, e.g. to
    /// measure the difference), or every entry written again from the kernel.
    pub fn suspend(&mut self, suspended: bool) {
        self.suspended = suspended;
        for hop in self.table.live_hops() {
            if suspended {
                self.invalidate(hop);
            } else {
                self.fill(hop);
            }
        }
    }

    /// Writes `hop`'s entry from the kernel's link and neighbour, or invalidates it
    /// (link down, neighbour unresolved: the slow path, which lets the kernel
    /// resolve it).
    fn fill(&mut self, hop: u16) {
        if self.suspended {
            return;
        }
        let Some(key) = self.table.key_of(hop) else {
            self.invalidate(hop);
            return;
        };
        let link = self.nl.link(key.ifindex).unwrap_or_else(|e| {
            tracing::warn!(error = %e, ifindex = key.ifindex, "next hop: reading the link failed");
            None
        });
        let neigh = self
            .nl
            .neighbour(key.ifindex, key.neigh)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, neigh = %key.neigh, "next hop: reading the neighbour failed");
                None
            });
        let dmac = neigh.and_then(|n| n.mac);
        match (link, dmac) {
            (Some(l), Some(dmac)) if l.usable && l.mtu > 0 => {
                let mtu = match key.route_mtu {
                    0 => l.mtu,
                    r => r.min(l.mtu),
                };
                let h = Hop {
                    ifindex: key.ifindex,
                    smac: l.mac,
                    dmac,
                    mtu: mtu.min(u32::from(u16::MAX)) as u16,
                };
                let slot = usize::from(hop);
                let g = match self.gens[slot].wrapping_add(1) {
                    0 => 1,
                    g => g,
                };
                self.gens[slot] = g;
                self.view.write(hop, &h, g);
                self.valid[slot] = true;
                self.stats.writes += 1;
            }
            (link, _) => {
                self.invalidate(hop);
                if neigh.is_none() && link.is_some_and(|l| l.usable) {
                    // No entry at all: ask the kernel to resolve it and keep it so; its
                    // notification fills the hop.
                    self.nl.manage_neighbour(key.ifindex, key.neigh);
                }
            }
        }
    }

    fn invalidate(&mut self, hop: u16) {
        self.view.invalidate(hop);
        let slot = usize::from(hop);
        if self.valid[slot] {
            self.stats.invalidations += 1;
        }
        self.valid[slot] = false;
    }
}

impl Drop for NextHops {
    /// Nobody follows the network once the controller is gone: the relay falls back
    /// to the FIB rather than to entries that may go stale.
    fn drop(&mut self) {
        self.view.invalidate_all();
    }
}

fn unspecified(like: std::net::IpAddr) -> std::net::IpAddr {
    match like {
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn resolve(nl: &mut netlink::Query, d: &Dest) -> Option<HopKey> {
    // A source the kernel refuses for an output lookup (not an address of this host:
    // a lab's or a benchmark's entry) is left out, as the FIB helper ignores it.
    let r = match nl.route(d.dst, d.src) {
        Ok(None) if !d.src.is_unspecified() => nl.route(d.dst, unspecified(d.dst)),
        r => r,
    };
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, dst = %d.dst, "next hop: route lookup failed; slow path");
        None
    })
}
