//! The tunnel address pool: lowest free address first, released on termination.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

pub struct Pool {
    net: Ipv4Net,
    used: BTreeSet<u32>,
}

impl Pool {
    /// `reserved` addresses (and the network and broadcast addresses) are never handed out.
    pub fn new(net: Ipv4Net, reserved: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        let used = reserved.into_iter().map(u32::from).collect();
        Self { net, used }
    }

    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let first = u32::from(self.net.network()) + 1;
        let last = u32::from(self.net.broadcast()) - 1;
        let a = (first..=last).find(|a| !self.used.contains(a))?;
        self.used.insert(a);
        Some(Ipv4Addr::from(a))
    }

    pub fn release(&mut self, a: Ipv4Addr) {
        self.used.remove(&u32::from(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
