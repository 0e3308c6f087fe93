//! The kernel's view of each transport, for the core's link signals
//! ([`super::core::LinkSignal`]). An rtnetlink subscription (links, IPv4/IPv6
//! addresses and routes) wakes the agent; it then reads the interfaces afresh
//! (`getifaddrs`) and asks for a route to each gateway, and compares with what it saw
//! last. Reading the whole state rather than decoding each message keeps one code
//! path for events, a lost event (`ENOBUFS`) and the periodic resync.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
};

use futures::StreamExt as _;
use nix::{ifaddrs::getifaddrs, net::if_::InterfaceFlags};
use rtnetlink::{MulticastGroup, new_multicast_connection};
use tokio::sync::mpsc;

use super::{config::TransportConfig, core::Down};

/// One interface: usable (up with carrier) and its addresses (IPv6 link-local ones
/// too, for a transport bound to one; a transport that follows its interface never
/// takes one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub up: bool,
    pub addrs: Vec<IpAddr>,
}

/// Every interface by name.
pub fn interfaces() -> io::Result<HashMap<String, Iface>> {
    let mut out: HashMap<String, Iface> = HashMap::new();
    for ifa in getifaddrs().map_err(io::Error::from)? {
        let e = out.entry(ifa.interface_name.clone()).or_default();
        let f = ifa.flags;
        e.up = f.contains(InterfaceFlags::IFF_UP) && f.contains(InterfaceFlags::IFF_RUNNING);
        let ip = ifa.address.as_ref().and_then(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        });
        if let Some(ip) = ip {
            e.addrs.push(ip);
        }
    }
    Ok(out)
}

/// Wakes the receiver on every link, address or route change (several changes may
/// come as one wake-up). The subscription lives as long as the receiver.
pub fn subscribe() -> io::Result<mpsc::Receiver<()>> {
    let (conn, _handle, mut messages) = new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(conn);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            match tx.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => break,
            }
        }
    });
    Ok(rx)
}

/// One transport as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub down: Option<Down>,
    /// For a transport that follows its interface: the address to use now.
    pub addr: Option<IpAddr>,
}

/// The interface a transport's state is read from: its `interface`, or the one that
/// holds its fixed source address now (none for an unspecified address).
pub fn interface_of(t: &TransportConfig, ifaces: &HashMap<String, Iface>) -> Option<String> {
    if let Some(dev) = &t.interface {
        return Some(dev.clone());
    }
    let ip = t.bind?.ip();
    ifaces
        .iter()
        .find(|(_, i)| i.addrs.contains(&ip))
        .map(|(n, _)| n.clone())
}

/// Transport `t` now: `iface` from [`interface_of`], `bound` the socket's address,
/// `gateway` its current gateway address.
pub fn view(
    t: &TransportConfig,
    iface: Option<&str>,
    ifaces: &HashMap<String, Iface>,
    bound: SocketAddr,
    gateway: SocketAddr,
) -> View {
    let dev = iface.map(|n| (n, ifaces.get(n)));
    let addr = match dev {
        Some((_, Some(i))) if t.follows_interface() => follow(i, bound.ip(), gateway.is_ipv6()),
        _ => None,
    };
    let down = match dev {
        Some((_, None)) => Some(Down::LinkDown),
        Some((_, Some(i))) if !i.up => Some(Down::LinkDown),
        Some(_) if t.follows_interface() && addr.is_none() => Some(Down::AddressLost),
        Some((_, Some(i))) if !t.follows_interface() && !i.addrs.contains(&bound.ip()) => {
            Some(Down::AddressLost)
        }
        _ => {
            let src = addr.unwrap_or(bound.ip());
            (!has_route(src, iface, gateway)).then_some(Down::NoRoute)
        }
    };
    View { down, addr }
}

/// The address a following transport uses on `i`: the one it is bound to while the
/// interface still has it (a second address, or a new IPv6 temporary address, is
/// no reason to move), else the first of the family (never IPv6 link-local).
fn follow(i: &Iface, bound: IpAddr, v6: bool) -> Option<IpAddr> {
    let usable =
        |a: &&IpAddr| a.is_ipv6() == v6 && !matches!(a, IpAddr::V6(x) if x.is_unicast_link_local());
    let mut candidates = i.addrs.iter().filter(usable);
    if i.addrs.contains(&bound) && usable(&&bound) {
        return Some(bound);
    }
    candidates.next().copied()
}

/// A route from `src` (through `device`, if any) to `gateway`: what `connect` on a
/// UDP socket asks the kernel, without sending anything.
fn has_route(src: IpAddr, device: Option<&str>, gateway: SocketAddr) -> bool {
    let Ok(sock) = crate::sockopt::probe_socket(src, device) else {
        // The address cannot be bound (going away): the address check decides.
        return true;
    };
    match sock.connect(gateway) {
        Ok(()) => true,
        Err(e) => !matches!(
            e.raw_os_error(),
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(text: &str) -> TransportConfig {
        toml::from_str(&format!("name = \"wifi\"\nkind = \"wifi\"\n{text}")).unwrap()
    }

    fn ifaces(up: bool, addrs: &[&str]) -> HashMap<String, Iface> {
        let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
        HashMap::from([("wlan0".to_string(), Iface { up, addrs })])
    }

    const GW: &str = "127.0.0.1:51820";

    #[test]
    fn fixed_address_down_lost_and_fine() {
        let t = transport(&format!(
            "bind = \"127.0.0.1:0\"\ninterface = \"wlan0\"\ngateway = \"{GW}\""
        ));
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let gw = GW.parse().unwrap();
        let v = |i: &HashMap<String, Iface>| view(&t, Some("wlan0"), i, bound, gw).down;
        assert_eq!(v(&ifaces(false, &["127.0.0.1"])), Some(Down::LinkDown));
        assert_eq!(v(&HashMap::new()), Some(Down::LinkDown), "interface gone");
        assert_eq!(v(&ifaces(true, &["127.0.0.2"])), Some(Down::AddressLost));
        assert_eq!(
            v(&ifaces(true, &["127.0.0.1"])),
            None,
            "loopback has a route"
        );
    }

    #[test]
    fn following_transport_takes_the_interface_address_of_its_family() {
        let t = transport(&format!("interface = \"wlan0\"\ngateway = \"{GW}\""));
        assert!(t.follows_interface());
        let bound: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let gw = GW.parse().unwrap();
        let v = view(
            &t,
            Some("wlan0"),
            &ifaces(true, &["::1", "127.0.0.1"]),
            bound,
            gw,
        );
        assert_eq!(v.addr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(v.down, None);
        let v = view(&t, Some("wlan0"), &ifaces(true, &["::1"]), bound, gw);
        assert_eq!((v.addr, v.down), (None, Some(Down::AddressLost)));
    }

    /// A second address (or a new IPv6 temporary one listed first) is no reason to
    /// leave the one the socket is bound to; its removal is.
    #[test]
    fn a_following_transport_keeps_its_address_while_it_is_there() {
        let t = transport(&format!("interface = \"wlan0\"\ngateway = \"{GW}\""));
        let bound: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        let gw = GW.parse().unwrap();
        let both = ifaces(true, &["127.0.0.1", "127.0.0.2"]);
        assert_eq!(
            view(&t, Some("wlan0"), &both, bound, gw).addr,
            Some(bound.ip())
        );
        let moved = ifaces(true, &["127.0.0.1"]);
        assert_eq!(
            view(&t, Some("wlan0"), &moved, bound, gw).addr,
            Some("127.0.0.1".parse().unwrap())
        );
        // IPv6: link-local is never taken.
        let t6 = transport("interface = \"wlan0\"\ngateway = \"[::1]:51820\"");
        let any6: SocketAddr = "[::]:0".parse().unwrap();
        let ll = ifaces(true, &["fe80::1", "::1"]);
        let v = view(
            &t6,
            Some("wlan0"),
            &ll,
            any6,
            "[::1]:51820".parse().unwrap(),
        );
        assert_eq!(v.addr, Some("::1".parse().unwrap()));
    }

    #[test]
    fn the_real_interfaces_include_loopback() {
        let all = interfaces().unwrap();
        let lo = all.get("lo").expect("lo");
        assert!(lo.up && lo.addrs.contains(&"127.0.0.1".parse().unwrap()));
    }
}
