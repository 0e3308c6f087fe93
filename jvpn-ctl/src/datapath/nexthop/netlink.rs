//! The kernel's side of the next-hop table, over rtnetlink, synchronously: routes
//! (`ip route get`), links and neighbours asked one at a time on one socket, and a
//! second socket subscribed to the changes of all of them.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::table::HopKey;

/// An egress link as the relay needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Up, with carrier.
    pub usable: bool,
}

/// A neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The link-layer address, when the entry is one the kernel would send to
    /// (`NUD_VALID`: reachable, stale, delay, probe, permanent, noarp).
    pub mac: Option<[u8; 6]>,
}

pub struct Query {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// Cleared after the kernel refused a managed neighbour once.
    managed_supported: bool,
}

fn af(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn mac6(b: &[u8]) -> Option<[u8; 6]> {
    b.try_into().ok()
}

impl Query {
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Answers name the failing attribute in the kernel's own words.
        let _ = sock.set_ext_ack(true);
        // The kernel always answers; should it not, the event loop waits 1 s, not for
        // ever, and the destination takes the slow path.
        nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(1, 0),
        )?;
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
            managed_supported: true,
        })
    }

    /// Sends one request and returns its answers (one message for a get, none but
    /// the acknowledgement for a change); a kernel error comes back as an
    /// `io::Error` of that errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let mut answers = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                off += len.max(16).next_multiple_of(4);
                if m.header.sequence_number != self.seq {
                    continue; // an answer to an earlier request that timed out
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// One object asked for: its answer, or None when the kernel says one of the
    /// `absent` errnos (there is no such object).
    fn get(
        &mut self,
        msg: RouteNetlinkMessage,
        absent: &[i32],
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        match self.request(msg, 0) {
            Ok(a) => Ok(a.into_iter().next()),
            Err(e) if e.raw_os_error().is_some_and(|c| absent.contains(&c)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The route the gateway's own packets from `src` to `dst` would take (`ip
    /// route get DST from SRC`): None when it is not a plain unicast route through
    /// a neighbour (unreachable, local, blackhole, a `via` of the other family).
    pub fn route(&mut self, dst: IpAddr, src: IpAddr) -> io::Result<Option<HopKey>> {
        let mut m = RouteMessage::default();
        m.header.address_family = af(&dst);
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes.push(RouteAttribute::Destination(dst.into()));
        if !src.is_unspecified() {
            m.header.source_prefix_length = m.header.destination_prefix_length;
            m.attributes.push(RouteAttribute::Source(src.into()));
        }
        // No route, or the source is not ours (any more): the slow path decides.
        let absent = [
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::EINVAL,
            libc::EADDRNOTAVAIL,
            libc::EACCES,
            libc::EPERM,
        ];
        let Some(RouteNetlinkMessage::NewRoute(r)) =
            self.get(RouteNetlinkMessage::GetRoute(m), &absent)?
        else {
            return Ok(None);
        };
        if r.header.kind != RouteType::Unicast {
            return Ok(None);
        }
        let (mut oif, mut gateway, mut mtu) = (None, None, 0);
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(g) => gateway = route_ip(g),
                RouteAttribute::Via(_) => return Ok(None),
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        if let RouteMetric::Mtu(v) = m {
                            mtu = *v;
                        }
                    }
                }
                _ => {}
            }
        }
        let neigh = gateway.unwrap_or(dst);
        if neigh.is_ipv4() != dst.is_ipv4() {
            return Ok(None);
        }
        Ok(oif.map(|ifindex| HopKey {
            ifindex,
            neigh,
            route_mtu: mtu,
        }))
    }

    /// The link `ifindex` (None: it does not exist, or has no Ethernet address).
    pub fn link(&mut self, ifindex: u32) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        let Some(RouteNetlinkMessage::NewLink(l)) =
            self.get(RouteNetlinkMessage::GetLink(m), &[libc::ENODEV])?
        else {
            return Ok(None);
        };
        let (mut mac, mut mtu) = (None, 0);
        for a in &l.attributes {
            match a {
                LinkAttribute::Address(b) => mac = mac6(b),
                LinkAttribute::Mtu(v) => mtu = *v,
                _ => {}
            }
        }
        let f = l.header.flags;
        Ok(mac.map(|mac| Link {
            mac,
            mtu,
            usable: f.contains(LinkFlags::Up) && f.contains(LinkFlags::Running),
        }))
    }

    fn neighbour_message(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = af(&ip);
        m.header.ifindex = ifindex;
        let dst = match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        m.attributes.push(NeighbourAttribute::Destination(dst));
        m
    }

    /// The neighbour entry for `ip` on `ifindex` (None: there is none).
    pub fn neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<Neighbour>> {
        let m = Self::neighbour_message(ifindex, ip);
        let Some(RouteNetlinkMessage::NewNeighbour(n)) =
            self.get(RouteNetlinkMessage::GetNeighbour(m), &[libc::ENOENT])?
        else {
            return Ok(None);
        };
        let valid = matches!(
            n.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac6(b),
            _ => None,
        });
        Ok(Some(Neighbour {
            mac: mac.filter(|_| valid),
        }))
    }

    /// Asks the kernel to keep `ip` on `ifindex` resolved by itself (a managed
    /// neighbour, `NTF_EXT_MANAGED`, Linux 5.16): without it, a neighbour that only
    /// XDP sends to is never confirmed and ages out. An existing entry is left as it
    /// is. Returns whether a managed entry was created.
    pub fn manage_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> bool {
        if !self.managed_supported {
            return false;
        }
        let mut m = Self::neighbour_message(ifindex, ip);
        m.header.state = NeighbourState::None;
        m.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        match self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        ) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => {
                tracing::info!(error = %e, "managed neighbours refused by the kernel; not asking again");
                self.managed_supported = false;
                false
            }
        }
    }
}

/// What a batch of change notifications asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// A link, address or route changed, or notifications were lost (`ENOBUFS`):
    /// every destination is resolved again.
    pub resync: bool,
    /// Neighbours that changed: (ifindex, address).
    pub neighbours: Vec<(u32, IpAddr)>,
}

// rtnetlink multicast groups (uapi/linux/rtnetlink.h, RTNLGRP_*): link, neigh,
// ipv4_ifaddr, ipv4_route, ipv6_ifaddr, ipv6_route, ipv4_rule, ipv6_rule; and nexthop
// objects (32, Linux 5.3), which a route may name without a route notification.
const GROUPS: [u32; 8] = [1, 3, 5, 7, 9, 11, 8, 19];
const NEXTHOP_GROUP: u32 = 32;

pub struct Events {
    sock: Socket,
    buf: Vec<u8>,
}

impl Events {
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        for g in GROUPS {
            sock.add_membership(g)?;
        }
        // Older kernels have no nexthop objects, so nothing to follow there.
        let _ = sock.add_membership(NEXTHOP_GROUP);
        sock.set_non_blocking(true)?;
        // Room for a storm; an overflow costs one full resync, nothing else.
        let _ = sock.set_rx_buf_sz(4 << 20);
        Ok(Self {
            sock,
            buf: vec![0; 64 * 1024],
        })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.sock.as_raw_fd()
    }

    /// Reads every notification waiting, without blocking.
    pub fn drain(&mut self) -> io::Result<Changes> {
        let mut c = Changes::default();
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(c),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("rtnetlink notifications lost (ENOBUFS): next hops resync");
                    c.resync = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < n {
                let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                else {
                    // Something this crate cannot parse: be safe, look at everything.
                    c.resync = true;
                    break;
                };
                off += (m.header.length as usize).max(16).next_multiple_of(4);
                classify(m.payload, &mut c);
            }
        }
    }
}

fn classify(p: NetlinkPayload<RouteNetlinkMessage>, c: &mut Changes) {
    let NetlinkPayload::InnerMessage(m) = p else {
        return;
    };
    match m {
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    Some(IpAddr::V6(*v6))
                }
                _ => None,
            });
            if let Some(ip) = ip
                && !c.neighbours.contains(&(n.header.ifindex, ip))
            {
                c.neighbours.push((n.header.ifindex, ip));
            }
        }
        RouteNetlinkMessage::NewLink(_)
        | RouteNetlinkMessage::DelLink(_)
        | RouteNetlinkMessage::NewAddress(_)
        | RouteNetlinkMessage::DelAddress(_)
        | RouteNetlinkMessage::NewRoute(_)
        | RouteNetlinkMessage::DelRoute(_)
        | RouteNetlinkMessage::NewRule(_)
        | RouteNetlinkMessage::DelRule(_) => c.resync = true,
        _ => {}
    }
}
