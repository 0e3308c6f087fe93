//! The tunnel address pool: lowest free address first, released on termination. A
//! dual-stack pool hands every session one IPv4 and one IPv6 address, both or none.
//!
//! O(log n) per call: addresses above a high-water mark have never been handed out,
//! and released ones wait in a set, so a burst of handshakes never scans the pool.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// A session's tunnel addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub v4: Ipv4Addr,
    /// From the IPv6 pool (`pool.cidr6`), when the gateway has one.
    pub v6: Option<Ipv6Addr>,
}

impl From<Ipv4Addr> for Tunnel {
    fn from(v4: Ipv4Addr) -> Self {
        Self { v4, v6: None }
    }
}

impl std::fmt::Display for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.v6 {
            Some(v6) => write!(f, "{} {v6}", self.v4),
            None => write!(f, "{}", self.v4),
        }
    }
}

pub struct Pool {
    v4: Range,
    net4: Ipv4Net,
    /// The IPv6 prefix: a session's IPv6 address is its IPv4 address's offset in
    /// `net4` placed in `net6` (10.99.0.5 ↔ fd00:99::5), so the pair needs no
    /// allocator of its own and reads the same in every log.
    net6: Option<Ipv6Net>,
    reserved6: BTreeSet<Ipv6Addr>,
}

impl Pool {
    /// An IPv4-only pool; `reserved` addresses (and the network and broadcast
    /// addresses) are never handed out.
    pub fn new(net: Ipv4Net, reserved: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        let reserved: Vec<IpAddr> = reserved.into_iter().map(IpAddr::V4).collect();
        Self::dual(net, None, &reserved)
    }

    /// A pool of `net` and, if given, `net6`, which must have room for every offset
    /// of `net` (the configuration checks it). An address pair with either half
    /// reserved is never handed out.
    pub fn dual(net: Ipv4Net, net6: Option<Ipv6Net>, reserved: &[IpAddr]) -> Self {
        debug_assert!(net6.is_none_or(|n6| 128 - n6.prefix_len() >= 32 - net.prefix_len()));
        Self {
            v4: Range {
                first: u32::from(net.network()) + 1,
                next: u32::from(net.network()) + 1,
                last: u32::from(net.broadcast()) - 1,
                reserved: reserved
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V4(a) => Some(u32::from(*a)),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
                released: BTreeSet::new(),
            },
            net4: net,
            net6,
            reserved6: reserved
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V6(a) => Some(*a),
                    IpAddr::V4(_) => None,
                })
                .collect(),
        }
    }

    /// `v4` (from this pool's range) with its IPv6 pair.
    fn pair(&self, v4: u32) -> Tunnel {
        let offset = v4.saturating_sub(u32::from(self.net4.network()));
        Tunnel {
            v4: Ipv4Addr::from(v4),
            v6: self
                .net6
                .map(|n| Ipv6Addr::from(u128::from(n.network()) + u128::from(offset))),
        }
    }

    /// The next free address, with its IPv6 pair when the pool has an IPv6 prefix.
    pub fn allocate(&mut self) -> Option<Tunnel> {
        loop {
            let a = self.v4.allocate()?;
            let t = self.pair(a);
            // A pair whose IPv6 half is reserved stays taken: never handed out.
            if t.v6.is_none_or(|a| !self.reserved6.contains(&a)) {
                return Some(t);
            }
        }
    }

    /// Marks `t` as in use (a session resumed from the store holds it); addresses
    /// skipped on the way up to it stay free. An address outside the pool (a session
    /// adopted from another node) is left alone.
    pub fn take(&mut self, t: Tunnel) {
        self.v4.take(u32::from(t.v4));
    }

    pub fn release(&mut self, t: Tunnel) {
        self.v4.release(u32::from(t.v4));
    }
}

struct Range {
    first: u32,
    /// Next never-used address.
    next: u32,
    last: u32,
    reserved: BTreeSet<u32>,
    released: BTreeSet<u32>,
}

impl Range {
    fn allocate(&mut self) -> Option<u32> {
        if let Some(a) = self.released.pop_first() {
            return Some(a);
        }
        while self.next <= self.last {
            let a = self.next;
            self.next += 1;
            if !self.reserved.contains(&a) {
                return Some(a);
            }
        }
        None
    }

    /// Addresses outside the range (a session another node allocated, adopted or
    /// ended here) are left alone by `take` and `release`: released here, one would be
    /// handed out twice, once by each node.
    fn take(&mut self, a: u32) {
        if !(self.first..=self.last).contains(&a) {
            return;
        }
        if !self.released.remove(&a) && a >= self.next {
            self.released
                .extend((self.next..a).filter(|x| !self.reserved.contains(x)));
            self.next = a + 1;
        }
    }

    fn release(&mut self, a: u32) {
        if (self.first..self.next).contains(&a) && !self.reserved.contains(&a) {
            self.released.insert(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4s(p: &mut Pool) -> Vec<Ipv4Addr> {
        std::iter::from_fn(|| p.allocate()).map(|t| t.v4).collect()
    }

    #[test]
    fn take_marks_resumed_addresses_used() {
        let mut p = Pool::new("10.99.0.0/29".parse().unwrap(), []);
        p.take("10.99.0.3".parse::<Ipv4Addr>().unwrap().into());
        let want: Vec<Ipv4Addr> = [
            "10.99.0.1",
            "10.99.0.2",
            "10.99.0.4",
            "10.99.0.5",
            "10.99.0.6",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(v4s(&mut p), want);
    }

    /// Another node's address (a foreign session that ended here) is neither handed
    /// out nor counted: before, a release below the range put it in the free list.
    #[test]
    fn addresses_of_another_pool_are_left_alone() {
        let mut p = Pool::dual(
            "10.99.1.0/29".parse().unwrap(),
            Some("fd00:99::100/125".parse().unwrap()),
            &[],
        );
        let foreign = Tunnel {
            v4: "10.99.0.5".parse().unwrap(),
            v6: Some("fd00:99::5".parse().unwrap()),
        };
        p.take(foreign);
        p.release(foreign);
        p.release("10.99.1.200".parse::<Ipv4Addr>().unwrap().into());
        let got: Vec<Tunnel> = std::iter::from_fn(|| p.allocate()).collect();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0].v4, "10.99.1.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(got[0].v6, Some("fd00:99::101".parse().unwrap()));
        assert!(got.iter().all(|t| t.v4.octets()[2] == 1));
    }

    #[test]
    fn allocates_lowest_free_and_skips_reserved() {
        let mut p = Pool::new(
            "10.99.0.0/29".parse().unwrap(),
            ["10.99.0.1".parse().unwrap()],
        );
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 99, 0, i)).collect();
        assert_eq!(v4s(&mut p), want);
        p.release(Ipv4Addr::new(10, 99, 0, 4).into());
        assert_eq!(
            p.allocate().map(|t| t.v4),
            Some(Ipv4Addr::new(10, 99, 0, 4))
        );
        assert_eq!(p.allocate(), None);
    }

    /// The IPv6 half is the IPv4 offset in the IPv6 prefix; a pair with a reserved
    /// IPv6 half is skipped (and stays skipped when released addresses come back).
    #[test]
    fn dual_stack_pairs_by_offset_and_skips_reserved_halves() {
        let mut p = Pool::dual(
            "10.99.0.0/29".parse().unwrap(),
            Some("fd00:99::/120".parse().unwrap()),
            &["10.99.0.1".parse().unwrap(), "fd00:99::3".parse().unwrap()],
        );
        let t = |a: &str, b: &str| Tunnel {
            v4: a.parse().unwrap(),
            v6: Some(b.parse().unwrap()),
        };
        assert_eq!(p.allocate(), Some(t("10.99.0.2", "fd00:99::2")));
        assert_eq!(p.allocate(), Some(t("10.99.0.4", "fd00:99::4")));
        p.release(t("10.99.0.2", "fd00:99::2"));
        assert_eq!(p.allocate(), Some(t("10.99.0.2", "fd00:99::2")));
        p.take(t("10.99.0.6", "fd00:99::6"));
        assert_eq!(p.allocate(), Some(t("10.99.0.5", "fd00:99::5")));
        assert_eq!(p.allocate(), None);
        assert_eq!(
            t("10.99.0.3", "fd00:99::3").to_string(),
            "10.99.0.3 fd00:99::3"
        );
    }
}
