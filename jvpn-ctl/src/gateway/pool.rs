//! The tunnel address pool: lowest free address first, released on termination.
//!
//! O(log n) per call: addresses above a high-water mark have never been handed out,
//! and released ones wait in a set, so a burst of handshakes never scans the pool.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

pub struct Pool {
    /// Next never-used address.
    next: u32,
    last: u32,
    reserved: BTreeSet<u32>,
    released: BTreeSet<u32>,
}

impl Pool {
    /// `reserved` addresses (and the network and broadcast addresses) are never handed out.
    pub fn new(net: Ipv4Net, reserved: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Self {
            next: u32::from(net.network()) + 1,
            last: u32::from(net.broadcast()) - 1,
            reserved: reserved.into_iter().map(u32::from).collect(),
            released: BTreeSet::new(),
        }
    }

    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        if let Some(a) = self.released.pop_first() {
            return Some(Ipv4Addr::from(a));
        }
        while self.next <= self.last {
            let a = self.next;
            self.next += 1;
            if !self.reserved.contains(&a) {
                return Some(Ipv4Addr::from(a));
            }
        }
        None
    }

    /// Marks `a` as in use (a session resumed from the store holds it); addresses
    /// skipped on the way up to it stay free.
    pub fn take(&mut self, a: Ipv4Addr) {
        let a = u32::from(a);
        if !self.released.remove(&a) && a >= self.next && a <= self.last {
            self.released
                .extend((self.next..a).filter(|x| !self.reserved.contains(x)));
            self.next = a + 1;
        }
    }

    pub fn release(&mut self, a: Ipv4Addr) {
        let a = u32::from(a);
        if a < self.next && !self.reserved.contains(&a) {
            self.released.insert(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_marks_resumed_addresses_used() {
        let mut p = Pool::new("10.99.0.0/29".parse().unwrap(), []);
        p.take("10.99.0.3".parse().unwrap());
        let got: Vec<Ipv4Addr> = std::iter::from_fn(|| p.allocate()).collect();
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
        assert_eq!(got, want);
    }

    #[test]
    fn allocates_lowest_free_and_skips_reserved() {
        let mut p = Pool::new(
            "10.99.0.0/29".parse().unwrap(),
            ["10.99.0.1".parse().unwrap()],
        );
        let got: Vec<_> = std::iter::from_fn(|| p.allocate()).collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 99, 0, i)).collect();
        assert_eq!(got, want);
        p.release(Ipv4Addr::new(10, 99, 0, 4));
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(10, 99, 0, 4)));
        assert_eq!(p.allocate(), None);
    }
}
