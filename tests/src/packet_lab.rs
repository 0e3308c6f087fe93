//! A one-namespace lab for `BPF_PROG_TEST_RUN`: the relay's FIB lookups see real
//! interfaces, routes and (permanent) neighbours, so next hops and MACs are exact.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use jvpn_common::maps::Endpoint;

use crate::{
    netns::{Netns, PinDir, veth},
    unique,
};

pub const PORT: u16 = 51820;
pub const EXIT_PORT: u16 = 51821;
pub const C0_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
pub const LAN_EXIT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 9];
pub const X0_MAC: [u8; 6] = [2, 0, 0, 0, 9, 1];
pub const EXIT_MAC: [u8; 6] = [2, 0, 0, 0, 9, 2];

pub fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}
pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}
pub fn ep(a: IpAddr, port: u16) -> Endpoint {
    Endpoint::from_ip(a, port)
}

pub struct Lab {
    pub ns: Netns,
    pub pins: PinDir,
    pub c0: u32,
    pub x0: u32,
}

/// One namespace: `c0` (client side: 10.10.1.1/24, fd00:1::1/64) and `x0` (exit side:
/// 10.10.9.1/24, fd00:9::1/64), each a veth whose peer stays in the namespace, with
/// permanent neighbour entries for the client, the exit, and an exit on the client LAN.
pub fn lab() -> Lab {
    let ns = Netns::new(unique("jpk")).unwrap();
    veth(&ns, "c0", &ns, "c1").unwrap();
    veth(&ns, "x0", &ns, "x1").unwrap();
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    for (dev, m, a4, a6) in [
        ("c0", C0_MAC, "10.10.1.1/24", "fd00:1::1/64"),
        ("x0", X0_MAC, "10.10.9.1/24", "fd00:9::1/64"),
    ] {
        ns.ip(&["link", "set", dev, "address", &mac(m)]).unwrap();
        ns.ip(&["addr", "add", a4, "dev", dev]).unwrap();
        ns.ip(&["addr", "add", a6, "dev", dev, "nodad"]).unwrap();
        ns.sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1")
            .unwrap();
        ns.sysctl(&format!("net.ipv6.conf.{dev}.forwarding"), "1")
            .unwrap();
    }
    for (addr, m, dev) in [
        ("10.10.1.2", CLIENT_MAC, "c0"),
        ("fd00:1::2", CLIENT_MAC, "c0"),
        ("10.10.1.9", LAN_EXIT_MAC, "c0"),
        ("10.10.9.2", EXIT_MAC, "x0"),
        ("fd00:9::2", EXIT_MAC, "x0"),
    ] {
        ns.neigh_permanent(addr, &mac(m), dev).unwrap();
    }
    let c0 = ns.ifindex("c0").unwrap();
    let x0 = ns.ifindex("x0").unwrap();
    Lab {
        ns,
        pins: PinDir::new("pk"),
        c0,
        x0,
    }
}
