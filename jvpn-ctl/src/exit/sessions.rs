//! The exit's session table: keys, counters, return endpoint and owner per session id,
//! and the tunnel-address index that routes return traffic to its session.
//!
//! Fencing (docs/protocol.md, "Fencing at the exit"): every session records the epoch
//! (fencing token) and node of its current owner. An INSTALL or REVOKE with an epoch
//! below the session's comes from an owner that has been superseded and is not obeyed.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use ipnet::IpNet;
use ring::digest;

use crate::proto::data::{DataKey, ReplayWindow};

/// A session's tunnel addresses: one, or an IPv4 and an IPv6 one (dual stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    pub addr: IpAddr,
    pub v6: Option<Ipv6Addr>,
}

impl From<IpAddr> for Addrs {
    fn from(addr: IpAddr) -> Self {
        Self { addr, v6: None }
    }
}

impl Addrs {
    pub fn iter(self) -> impl Iterator<Item = IpAddr> {
        std::iter::once(self.addr).chain(self.v6.map(IpAddr::V6))
    }

    /// `src` is one of them: the inner-source check.
    pub fn holds(self, src: IpAddr) -> bool {
        src == self.addr || Some(src) == self.v6.map(IpAddr::V6)
    }
}

impl std::fmt::Display for Addrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.v6 {
            Some(v6) => write!(f, "{} {v6}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// One session as the exit knows it.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub tunnel: Addrs,
    /// Opens client→exit DATA.
    pub c2x: DataKey,
    /// Seals exit→client DATA.
    pub x2c: DataKey,
    /// Counter of the next exit→client packet (starts at 1, never reused under `x2c`).
    pub next_counter: u64,
    pub replay: ReplayWindow,
    /// Where this session's return DATA goes (the gateway's exit-side socket); the
    /// current owner's, so DATA from anywhere else is a stale owner's and dropped.
    pub ret: SocketAddr,
    /// The current owner's fencing token: the highest epoch accepted for the session.
    pub epoch: u64,
    /// The current owner's node number (0: a single gateway).
    pub node: u16,
    /// The client's tunnel MTU (its MTU notice): nothing larger is sent to it.
    pub tunnel_mtu: Option<u16>,
    /// SHA-256 of the keys, to recognise a repeated INSTALL without keeping copies.
    keys_id: digest::Digest,
}

impl Session {
    /// The counter for the next packet, or `None` once exhausted: a nonce must never
    /// repeat under one key, so the session goes silent instead of wrapping.
    pub fn take_counter(&mut self) -> Option<u64> {
        let c = self.next_counter;
        self.next_counter = c.checked_add(1)?;
        Some(c)
    }
}

/// Who sends an INSTALL or REVOKE: the node (from the link frame) and the epoch of its
/// ownership of the session (from the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: u16,
    pub epoch: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// A new session.
    New,
    /// Same id and keys as an installed session: a retransmission, or a new owner
    /// taking the session over. Counters and replay state are kept (resetting the
    /// send counter would reuse nonces); the tunnel address, return endpoint and owner
    /// are updated.
    Repeat,
    /// Same id, new keys: the session starts over with fresh counters.
    Rekeyed,
    /// A new session whose tunnel address another session held: the gateway allocates
    /// the pool, so it no longer knows that one (it restarted, or lost a REVOKE) and
    /// its keys are forgotten here.
    Replaced { stale: u64 },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("tunnel address {addr} is outside the exit's pool {pool}")]
    OutsidePool { addr: IpAddr, pool: IpNet },
    #[error(
        "tunnel address {addr}: the exit has no pool of its family (an IPv6 one needs \
         tun_addr6, the gateway's pool.cidr6 prefix)"
    )]
    NoPool { addr: IpAddr },
    #[error("tunnel address {addr} is the exit's own")]
    OwnAddress { addr: IpAddr },
    /// The sender's ownership was superseded: it must not move the session back.
    #[error("epoch {epoch} is below the session's current epoch {current}")]
    StaleEpoch { epoch: u64, current: u64 },
}

/// What a REVOKE did.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The session is forgotten.
    Removed,
    /// There was no such session (already revoked, or never installed).
    Absent,
    /// Kept: the REVOKE's epoch is below the session's (a superseded owner's).
    Stale { current: u64 },
}

#[derive(Debug)]
pub struct Sessions {
    /// The exit's own addresses with the pools' prefixes (`tun_addr`, `tun_addr6`).
    pools: Vec<IpNet>,
    by_id: HashMap<u64, Session>,
    by_addr: HashMap<IpAddr, u64>,
    /// How many sessions each node owns (for its PONG).
    owned: HashMap<u16, usize>,
    /// First DATA counter of every session installed by this process: its start
    /// time in µs × 16, so a restarted exit re-installed with the same keys never
    /// reuses a nonce (that would take 16 packets per µs, sustained, before it).
    counter_base: u64,
}

/// One session fewer for `node` (its entry goes at zero: the map stays as small as
/// the set of nodes owning something).
fn disown(owned: &mut HashMap<u16, usize>, node: u16) {
    if let Some(n) = owned.get_mut(&node) {
        *n -= 1;
        if *n == 0 {
            owned.remove(&node);
        }
    }
}

fn keys_id(c2x: &[u8; 32], x2c: &[u8; 32]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(c2x);
    ctx.update(x2c);
    ctx.finish()
}

impl Sessions {
    /// A table of the tunnel `pool` and, on a dual-stack exit, `pool6` beside it.
    pub fn new(pool: IpNet, pool6: Option<IpNet>, counter_base: u64) -> Self {
        Sessions {
            pools: std::iter::once(pool).chain(pool6).collect(),
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            owned: HashMap::new(),
            counter_base: counter_base.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// How many sessions `node` owns now.
    pub fn owned_by(&self, node: u16) -> usize {
        self.owned.get(&node).copied().unwrap_or(0)
    }

    /// Why `addr` cannot be a client's tunnel address, if it cannot: it must lie in
    /// the pool of its family, and be neither the exit's own address nor the
    /// prefix's network (or IPv4 broadcast) address.
    fn check_addr(&self, addr: IpAddr) -> Result<(), Refused> {
        let Some(pool) = self
            .pools
            .iter()
            .find(|p| p.addr().is_ipv4() == addr.is_ipv4())
        else {
            return Err(Refused::NoPool { addr });
        };
        if addr == pool.addr() {
            return Err(Refused::OwnAddress { addr });
        }
        if !pool.contains(&addr)
            || addr == pool.network()
            || (addr.is_ipv4() && addr == pool.broadcast())
        {
            return Err(Refused::OutsidePool {
                addr,
                pool: pool.trunc(),
            });
        }
        Ok(())
    }

    /// Installs (or re-installs) session `id` for `owner`; refused below the
    /// session's epoch, before anything changes.
    pub fn install(
        &mut self,
        id: u64,
        tunnel: impl Into<Addrs>,
        c2x: &[u8; 32],
        x2c: &[u8; 32],
        ret: SocketAddr,
        owner: Owner,
    ) -> Result<Installed, Refused> {
        let tunnel = tunnel.into();
        if let Some(s) = self.by_id.get(&id)
            && owner.epoch < s.epoch
        {
            return Err(Refused::StaleEpoch {
                epoch: owner.epoch,
                current: s.epoch,
            });
        }
        for a in tunnel.iter() {
            self.check_addr(a)?;
        }
        let mut stale = None;
        for a in tunnel.iter() {
            if let Some(by) = self.by_addr.get(&a).copied().filter(|&by| by != id) {
                self.revoke(by);
                stale.get_or_insert(by);
            }
        }
        let kid = keys_id(c2x, x2c);
        let outcome = match self.by_id.get_mut(&id) {
            Some(s) if s.keys_id.as_ref() == kid.as_ref() => {
                if s.tunnel != tunnel {
                    for a in s.tunnel.iter() {
                        self.by_addr.remove(&a);
                    }
                    s.tunnel = tunnel;
                }
                s.ret = ret;
                s.epoch = owner.epoch;
                if s.node != owner.node {
                    disown(&mut self.owned, s.node);
                    *self.owned.entry(owner.node).or_default() += 1;
                    s.node = owner.node;
                }
                Installed::Repeat
            }
            old => {
                let outcome = match old {
                    Some(s) => {
                        for a in s.tunnel.iter() {
                            self.by_addr.remove(&a);
                        }
                        disown(&mut self.owned, s.node);
                        Installed::Rekeyed
                    }
                    None => stale.map_or(Installed::New, |stale| Installed::Replaced { stale }),
                };
                self.by_id.insert(
                    id,
                    Session {
                        id,
                        tunnel,
                        c2x: DataKey::new(c2x),
                        x2c: DataKey::new(x2c),
                        next_counter: self.counter_base,
                        replay: ReplayWindow::new(),
                        ret,
                        epoch: owner.epoch,
                        node: owner.node,
                        tunnel_mtu: None,
                        keys_id: kid,
                    },
                );
                *self.owned.entry(owner.node).or_default() += 1;
                outcome
            }
        };
        for a in tunnel.iter() {
            self.by_addr.insert(a, id);
        }
        Ok(outcome)
    }

    /// A REVOKE of `epoch`: forgets the session at once unless its epoch is higher.
    pub fn revoke_at(&mut self, id: u64, epoch: u64) -> Revoked {
        match self.by_id.get(&id) {
            None => Revoked::Absent,
            Some(s) if epoch < s.epoch => Revoked::Stale { current: s.epoch },
            Some(_) => {
                self.revoke(id);
                Revoked::Removed
            }
        }
    }

    /// Forgets a session at once, whatever its epoch; false if it was not there.
    pub fn revoke(&mut self, id: u64) -> bool {
        match self.by_id.remove(&id) {
            Some(s) => {
                for a in s.tunnel.iter() {
                    self.by_addr.remove(&a);
                }
                disown(&mut self.owned, s.node);
                true
            }
            None => false,
        }
    }

    /// Where return DATA goes, one per distinct gateway address.
    pub fn return_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.by_id.values().map(|s| s.ret).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Session> {
        self.by_id.get_mut(&id)
    }

    /// The session whose tunnel address is `addr`.
    pub fn by_addr_mut(&mut self, addr: IpAddr) -> Option<&mut Session> {
        let id = self.by_addr.get(&addr)?;
        self.by_id.get_mut(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table() -> Sessions {
        Sessions::new("10.99.0.1/24".parse().unwrap(), None, 1)
    }

    const RET: &str = "10.77.9.1:51820";
    /// A single gateway: node 0, epoch 0.
    const O: Owner = Owner { node: 0, epoch: 0 };

    fn owner(node: u16, epoch: u64) -> Owner {
        Owner { node, epoch }
    }

    #[test]
    fn install_repeat_rekey_revoke() {
        let mut t = table();
        let ret: SocketAddr = RET.parse().unwrap();
        assert_eq!(
            t.install(7, ip("10.99.0.2"), &[1; 32], &[2; 32], ret, O),
            Ok(Installed::New)
        );
        let s = t.by_addr_mut(ip("10.99.0.2")).unwrap();
        assert_eq!(s.take_counter(), Some(1));
        assert_eq!(s.take_counter(), Some(2));
        assert!(s.replay.update(5));

        // A retransmitted INSTALL keeps the counters.
        assert_eq!(
            t.install(7, ip("10.99.0.2"), &[1; 32], &[2; 32], ret, O),
            Ok(Installed::Repeat)
        );
        let s = t.get_mut(7).unwrap();
        assert_eq!(s.take_counter(), Some(3));
        assert!(!s.replay.update(5));

        // Moving the same session to another address updates the index.
        assert_eq!(
            t.install(7, ip("10.99.0.3"), &[1; 32], &[2; 32], ret, O),
            Ok(Installed::Repeat)
        );
        assert!(t.by_addr_mut(ip("10.99.0.2")).is_none());
        assert_eq!(t.by_addr_mut(ip("10.99.0.3")).unwrap().id, 7);

        // New keys: fresh counters.
        assert_eq!(
            t.install(7, ip("10.99.0.3"), &[3; 32], &[2; 32], ret, O),
            Ok(Installed::Rekeyed)
        );
        let s = t.get_mut(7).unwrap();
        assert_eq!(s.take_counter(), Some(1));
        assert!(s.replay.update(5));

        assert!(t.revoke(7));
        assert!(!t.revoke(7));
        assert_eq!(t.len(), 0);
        assert!(t.by_addr_mut(ip("10.99.0.3")).is_none());
    }

    #[test]
    fn refusals() {
        let mut t = table();
        let ret: SocketAddr = RET.parse().unwrap();
        t.install(7, ip("10.99.0.2"), &[1; 32], &[2; 32], ret, O)
            .unwrap();
        // The gateway owns the pool: a new session on a held address replaces the
        // holder, whose keys go.
        assert_eq!(
            t.install(8, ip("10.99.0.2"), &[3; 32], &[4; 32], ret, O),
            Ok(Installed::Replaced { stale: 7 })
        );
        assert!(t.get_mut(7).is_none());
        assert_eq!(t.by_addr_mut(ip("10.99.0.2")).map(|s| s.id), Some(8));
        assert!(t.revoke(8));
        for bad in ["10.98.0.2", "10.99.0.0", "10.99.0.255"] {
            assert!(
                matches!(
                    t.install(8, ip(bad), &[3; 32], &[4; 32], ret, O),
                    Err(Refused::OutsidePool { .. })
                ),
                "{bad}"
            );
        }
        // An IPv6 address on an exit without tun_addr6: said so.
        let e = t
            .install(8, ip("fd00::2"), &[3; 32], &[4; 32], ret, O)
            .unwrap_err();
        assert_eq!(
            e,
            Refused::NoPool {
                addr: ip("fd00::2")
            }
        );
        assert!(e.to_string().contains("needs tun_addr6"), "{e}");
        assert_eq!(
            t.install(8, ip("10.99.0.1"), &[3; 32], &[4; 32], ret, O),
            Err(Refused::OwnAddress {
                addr: ip("10.99.0.1")
            })
        );
        assert_eq!(t.len(), 0);
    }

    /// A dual-stack session answers to both its addresses, each checked against its
    /// family's pool; re-installed IPv4-only, its IPv6 address is unindexed; a new
    /// session on a held IPv6 address replaces the holder.
    #[test]
    fn dual_stack_addresses() {
        let mut t = Sessions::new(
            "10.99.0.1/24".parse().unwrap(),
            Some("fd00:99::1/64".parse().unwrap()),
            1,
        );
        let ret: SocketAddr = RET.parse().unwrap();
        let both = |a: &str, b: &str| Addrs {
            addr: ip(a),
            v6: Some(b.parse().unwrap()),
        };
        assert_eq!(
            t.install(
                7,
                both("10.99.0.2", "fd00:99::2"),
                &[1; 32],
                &[2; 32],
                ret,
                O
            ),
            Ok(Installed::New)
        );
        assert_eq!(t.by_addr_mut(ip("fd00:99::2")).map(|s| s.id), Some(7));
        assert_eq!(t.by_addr_mut(ip("10.99.0.2")).map(|s| s.id), Some(7));
        assert!(t.get_mut(7).unwrap().tunnel.holds(ip("fd00:99::2")));
        assert!(!t.get_mut(7).unwrap().tunnel.holds(ip("fd00:99::3")));
        for (bad, refusal) in [
            (both("10.99.0.3", "fd00:98::3"), "outside"),
            (both("10.99.0.3", "fd00:99::1"), "own"),
            (both("10.99.0.3", "fd00:99::"), "outside"),
        ] {
            let e = t.install(8, bad, &[3; 32], &[4; 32], ret, O).unwrap_err();
            assert!(e.to_string().contains(refusal), "{bad}: {e}");
        }
        assert_eq!(t.len(), 1, "a refused INSTALL installs nothing");
        assert_eq!(
            t.install(7, ip("10.99.0.2"), &[1; 32], &[2; 32], ret, O),
            Ok(Installed::Repeat)
        );
        assert!(t.by_addr_mut(ip("fd00:99::2")).is_none());
        t.install(
            7,
            both("10.99.0.2", "fd00:99::2"),
            &[1; 32],
            &[2; 32],
            ret,
            O,
        )
        .unwrap();
        assert_eq!(
            t.install(
                9,
                both("10.99.0.9", "fd00:99::2"),
                &[5; 32],
                &[6; 32],
                ret,
                O
            ),
            Ok(Installed::Replaced { stale: 7 })
        );
        assert!(t.get_mut(7).is_none() && t.by_addr_mut(ip("10.99.0.2")).is_none());
        assert!(t.revoke(9));
        assert!(t.by_addr.is_empty());
    }

    #[test]
    fn counter_never_wraps() {
        let mut t = table();
        t.install(
            7,
            ip("10.99.0.2"),
            &[1; 32],
            &[2; 32],
            RET.parse().unwrap(),
            O,
        )
        .unwrap();
        let s = t.get_mut(7).unwrap();
        s.next_counter = u64::MAX - 1;
        assert_eq!(s.take_counter(), Some(u64::MAX - 1));
        assert_eq!(s.take_counter(), None);
        assert_eq!(s.take_counter(), None);
    }

    /// An owner below the session's epoch changes nothing, not even by taking its
    /// tunnel address for another session; a takeover (same keys, higher epoch) keeps
    /// the counters and moves `ret` and the owner; counts per node follow.
    #[test]
    fn fencing_by_epoch() {
        let mut t = table();
        let (r1, r2): (SocketAddr, SocketAddr) = (
            "10.77.9.1:51820".parse().unwrap(),
            "10.77.9.2:51820".parse().unwrap(),
        );
        assert_eq!(
            t.install(7, ip("10.99.0.2"), &[1; 32], &[2; 32], r1, owner(1, 10)),
            Ok(Installed::New)
        );
        assert_eq!((t.owned_by(1), t.owned_by(2)), (1, 0));
        assert_eq!(t.get_mut(7).unwrap().take_counter(), Some(1));
        // A stale owner: refused, keys and all (even new keys, another address).
        for (addr, keys) in [("10.99.0.2", [1; 32]), ("10.99.0.3", [9; 32])] {
            assert_eq!(
                t.install(7, ip(addr), &keys, &[2; 32], r2, owner(2, 9)),
                Err(Refused::StaleEpoch {
                    epoch: 9,
                    current: 10
                })
            );
        }
        let s = t.get_mut(7).unwrap();
        assert_eq!(
            (s.ret, s.epoch, s.node, s.tunnel),
            (r1, 10, 1, ip("10.99.0.2").into())
        );
        // Takeover: node 2 at a higher epoch, same keys.
        assert_eq!(
            t.install(7, ip("10.99.0.2"), &[1; 32], &[2; 32], r2, owner(2, 11)),
            Ok(Installed::Repeat)
        );
        let s = t.get_mut(7).unwrap();
        assert_eq!((s.ret, s.epoch, s.node), (r2, 11, 2));
        assert_eq!(s.take_counter(), Some(2), "counters kept");
        assert_eq!((t.owned_by(1), t.owned_by(2)), (0, 1));
        // The same epoch again (a retransmission) is accepted.
        assert_eq!(
            t.install(7, ip("10.99.0.2"), &[1; 32], &[2; 32], r2, owner(2, 11)),
            Ok(Installed::Repeat)
        );
        // A second session of node 1; then a stale REVOKE is kept, a current one obeyed.
        t.install(8, ip("10.99.0.4"), &[3; 32], &[4; 32], r1, owner(1, 12))
            .unwrap();
        assert_eq!((t.owned_by(1), t.owned_by(2)), (1, 1));
        assert_eq!(t.revoke_at(7, 10), Revoked::Stale { current: 11 });
        assert_eq!(t.len(), 2);
        assert_eq!(t.revoke_at(7, 11), Revoked::Removed);
        assert_eq!(t.revoke_at(7, 11), Revoked::Absent);
        assert_eq!((t.owned_by(1), t.owned_by(2)), (1, 0));
        // A re-key moves the count too; the address holder replaced loses its count.
        t.install(8, ip("10.99.0.4"), &[5; 32], &[4; 32], r2, owner(2, 13))
            .unwrap();
        assert_eq!((t.owned_by(1), t.owned_by(2)), (0, 1));
        assert_eq!(
            t.install(9, ip("10.99.0.4"), &[6; 32], &[4; 32], r1, owner(1, 14)),
            Ok(Installed::Replaced { stale: 8 })
        );
        assert_eq!((t.owned_by(1), t.owned_by(2)), (1, 0));
        assert!(t.owned.values().all(|&n| n > 0));
    }
}
