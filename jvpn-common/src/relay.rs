//! The relay's decisions, free of any kernel API: parse a frame, pick the direction
//! from the session entry, build the new outer headers. The XDP program calls these
//! with its context as the [`Frame`]; userspace tests call them with byte slices.

use crate::{
    counters,
    csum::{self, Rewrite},
    frame::Frame,
    headers::*,
    maps::{AF_INET, AF_INET6, Endpoint, SessionEntry},
    wire::{HeaderError, Kind, WireHeader},
};

/// Why the relay does not handle a frame itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not jvpn traffic (other ethertype, protocol or port, non-first fragment, or an
    /// IP header too broken to find the port): `XDP_PASS`, untouched, not counted.
    NotOurs,
    /// jvpn traffic that must not be relayed: count it under the reason. Reasons for
    /// which [`counters::is_pass`] holds go to the kernel, the rest are dropped.
    Reject(u32),
}

/// A parsed jvpn frame: where things are and what the rewrite needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes in front of the UDP payload: Ethernet, VLAN tag, IP header and options, UDP.
    pub outer_len: usize,
    /// UDP payload bytes (from the UDP length, which was checked against the IP length).
    pub payload_len: usize,
    pub family: u8,
    /// IPv4 TOS / IPv6 traffic class, carried over to the relayed packet.
    pub tos: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Source and destination port, as on the wire.
    pub ports: [u8; 4],
    /// UDP checksum as on the wire (0: none, IPv4 only).
    pub udp_check: u16,
    pub kind: Kind,
    pub session_id: u64,
}

impl Parsed {
    pub const fn sport_be(&self) -> u16 {
        u16::from_ne_bytes([self.ports[0], self.ports[1]])
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses Ethernet (+ one 802.1Q/802.1ad tag), IPv4 (with options) or IPv6, UDP to
/// `port` (host order), and the jvpn header.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(f: &F, port: u16) -> Result<Parsed, Verdict> {
    let eth: &EthHdr = f.at(0).ok_or(Verdict::NotOurs)?;
    let mut ethertype = be16(eth.ethertype);
    let mut l3 = ETH_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let vlan: &VlanHdr = f.at(ETH_LEN).ok_or(Verdict::NotOurs)?;
        ethertype = be16(vlan.ethertype);
        l3 += VLAN_LEN;
    }

    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, tos, l4, ip_payload_len) = if ethertype == ETH_P_IPV4 {
        let ip: &Ipv4Hdr = f.at(l3).ok_or(Verdict::NotOurs)?;
        let ihl = (ip.version_ihl & 0x0f) as usize * 4;
        // A broken header hides where UDP starts: the kernel's own checks drop it.
        if ip.version_ihl >> 4 != 4 || ihl < IPV4_LEN || ip.protocol != IPPROTO_UDP {
            return Err(Verdict::NotOurs);
        }
        let frag = be16(ip.frag_off);
        if frag & 0x1fff != 0 {
            // Only the first fragment carries the UDP header.
            return Err(Verdict::NotOurs);
        }
        let total = be16(ip.total_len) as usize;
        src[..4].copy_from_slice(&ip.src);
        dst[..4].copy_from_slice(&ip.dst);
        let l4 = l3 + ihl;
        let udp: &UdpHdr = f.at(l4).ok_or(Verdict::NotOurs)?;
        if be16(udp.dport) != port {
            return Err(Verdict::NotOurs);
        }
        if frag & 0x2000 != 0 {
            // First fragment of a jvpn datagram: the relay never reassembles.
            return Err(Verdict::Reject(counters::FRAGMENT));
        }
        if total < ihl + UDP_LEN || l3 + total > f.len() {
            return Err(Verdict::Reject(counters::MALFORMED));
        }
        (AF_INET, ip.tos, l4, total - ihl)
    } else if ethertype == ETH_P_IPV6 {
        let ip: &Ipv6Hdr = f.at(l3).ok_or(Verdict::NotOurs)?;
        // Extension headers (fragments included) are left to the kernel.
        if ip.vtc_flow[0] >> 4 != 6 || ip.next_header != IPPROTO_UDP {
            return Err(Verdict::NotOurs);
        }
        src = ip.src;
        dst = ip.dst;
        let l4 = l3 + IPV6_LEN;
        let udp: &UdpHdr = f.at(l4).ok_or(Verdict::NotOurs)?;
        if be16(udp.dport) != port {
            return Err(Verdict::NotOurs);
        }
        let payload = be16(ip.payload_len) as usize;
        if l4 + payload > f.len() {
            return Err(Verdict::Reject(counters::MALFORMED));
        }
        let tc = (ip.vtc_flow[0] << 4) | (ip.vtc_flow[1] >> 4);
        (AF_INET6, tc, l4, payload)
    } else {
        return Err(Verdict::NotOurs);
    };

    let udp: &UdpHdr = f.at(l4).ok_or(Verdict::NotOurs)?;
    let udp_len = be16(udp.len) as usize;
    if udp_len != ip_payload_len || udp_len < UDP_LEN {
        return Err(Verdict::Reject(counters::MALFORMED));
    }
    let payload_len = udp_len - UDP_LEN;
    let outer_len = l4 + UDP_LEN;
    let hdr: &WireHeader = f
        .at(outer_len)
        .ok_or(Verdict::Reject(counters::MALFORMED))?;
    let kind = hdr.classify(payload_len).map_err(|e| {
        Verdict::Reject(match e {
            HeaderError::Truncated => counters::MALFORMED,
            HeaderError::BadVersion => counters::BAD_VERSION,
            HeaderError::UnknownType => counters::UNKNOWN_TYPE,
            HeaderError::BadSessionId => counters::BAD_SESSION_ID,
        })
    })?;
    Ok(Parsed {
        outer_len,
        payload_len,
        family,
        tos,
        src,
        dst,
        ports: [udp.sport[0], udp.sport[1], udp.dport[0], udp.dport[1]],
        udp_check: be16(udp.check),
        kind,
        session_id: hdr.session_id(),
    })
}

/// Which way a DATA packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the bound client transport toward the exit.
    Up,
    /// From the exit toward the client's current binding.
    Down,
}

/// Source and destination of the relayed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steer<'a> {
    pub dir: Direction,
    pub src: &'a Endpoint,
    pub dst: &'a Endpoint,
}

#[inline(always)]
fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // Word compares: a `==` on arrays may become a bcmp call, which BPF does not have.
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

/// Whether the packet comes from `e` (family, address and port equal).
#[inline(always)]
pub fn comes_from(p: &Parsed, e: &Endpoint) -> bool {
    p.family == e.family && p.sport_be() == e.port_be && addr_eq(&p.src, &e.addr)
}

/// The fields DATA is steered by, borrowed from a `SESSIONS` entry or assembled
/// from a slot's copy ([`crate::hot`]) and `ENDPOINTS`.
#[derive(Clone, Copy, Debug)]
pub struct Route<'a> {
    pub forwarding: bool,
    pub client: &'a Endpoint,
    pub gw_client: &'a Endpoint,
    pub exit: &'a Endpoint,
    pub gw_exit: &'a Endpoint,
}

impl<'a> Route<'a> {
    #[inline(always)]
    pub fn of(e: &'a SessionEntry) -> Self {
        Self {
            forwarding: e.forwarding(),
            client: &e.client,
            gw_client: &e.gw_client,
            exit: &e.exit,
            gw_exit: &e.gw_exit,
        }
    }
}

/// Decides where a DATA packet of a known session goes: from the current binding to
/// the exit, from the exit to the current binding, nowhere otherwise. Only the source
/// address and port decide (the single-active-binding rule).
#[inline(always)]
pub fn steer<'a>(p: &Parsed, r: &Route<'a>) -> Result<Steer<'a>, u32> {
    if !r.forwarding {
        return Err(counters::NOT_FORWARDING);
    }
    if comes_from(p, r.client) {
        Ok(Steer {
            dir: Direction::Up,
            src: r.gw_exit,
            dst: r.exit,
        })
    } else if comes_from(p, r.exit) {
        Ok(Steer {
            dir: Direction::Down,
            src: r.gw_client,
            dst: r.client,
        })
    } else {
        Err(counters::STALE_BINDING)
    }
}

/// The UDP checksum of the relayed packet, or the reason it cannot be had cheaply.
#[inline(always)]
pub fn relayed_udp_check(p: &Parsed, s: &Steer<'_>) -> Result<u16, u32> {
    if p.udp_check == 0 {
        // IPv4 allows "no checksum"; IPv6 does not, and computing one would mean
        // summing the whole payload in the fast path.
        return if s.dst.family == AF_INET {
            Ok(0)
        } else {
            Err(counters::NO_UDP_CHECKSUM)
        };
    }
    let sp = s.src.port_be.to_ne_bytes();
    let dp = s.dst.port_be.to_ne_bytes();
    let new_ports = [sp[0], sp[1], dp[0], dp[1]];
    if p.family == AF_INET && s.src.family == AF_INET && s.dst.family == AF_INET {
        let v4 = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
        return Ok(csum::udp_update(
            p.udp_check,
            &Rewrite {
                old_src: &v4(&p.src),
                old_dst: &v4(&p.dst),
                old_ports: p.ports,
                new_src: &v4(&s.src.addr),
                new_dst: &v4(&s.dst.addr),
                new_ports,
            },
        ));
    }
    Ok(csum::udp_update(
        p.udp_check,
        &Rewrite {
            old_src: &p.src,
            old_dst: &p.dst,
            old_ports: p.ports,
            new_src: &s.src.addr,
            new_dst: &s.dst.addr,
            new_ports,
        },
    ))
}

/// Outer header length the relayed packet needs in front of its UDP payload.
#[inline(always)]
pub const fn relayed_outer_len(dst_family: u8) -> usize {
    if dst_family == AF_INET6 {
        core::mem::size_of::<OuterV6>()
    } else {
        core::mem::size_of::<OuterV4>()
    }
}

#[inline(always)]
fn udp_hdr(s: &Steer<'_>, payload_len: usize, check: u16) -> UdpHdr {
    UdpHdr {
        sport: s.src.port_be.to_ne_bytes(),
        dport: s.dst.port_be.to_ne_bytes(),
        len: ((payload_len + UDP_LEN) as u16).to_be_bytes(),
        check: check.to_be_bytes(),
    }
}

#[inline(always)]
fn eth_hdr(smac: [u8; 6], dmac: [u8; 6], ethertype: u16) -> EthHdr {
    EthHdr {
        dst: dmac,
        src: smac,
        ethertype: ethertype.to_be_bytes(),
    }
}

/// Outer headers for an IPv4 next hop. DF is set: the relay never fragments.
#[inline(always)]
pub fn outer_v4(
    s: &Steer<'_>,
    p: &Parsed,
    udp_check: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> OuterV4 {
    let total = (IPV4_LEN + UDP_LEN + p.payload_len) as u16;
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: p.tos,
        total_len: total.to_be_bytes(),
        id: [0, 0],
        frag_off: 0x4000u16.to_be_bytes(),
        ttl: RELAY_TTL,
        protocol: IPPROTO_UDP,
        check: [0, 0],
        src: [s.src.addr[0], s.src.addr[1], s.src.addr[2], s.src.addr[3]],
        dst: [s.dst.addr[0], s.dst.addr[1], s.dst.addr[2], s.dst.addr[3]],
    };
    // SAFETY: Ipv4Hdr is a 20-byte Wire type (no padding, alignment 1).
    let bytes: &[u8; IPV4_LEN] = unsafe { &*(&ip as *const Ipv4Hdr).cast() };
    ip.check = csum::ipv4_header(bytes).to_be_bytes();
    OuterV4 {
        eth: eth_hdr(smac, dmac, ETH_P_IPV4),
        ip,
        udp: udp_hdr(s, p.payload_len, udp_check),
    }
}

/// Outer headers for an IPv6 next hop (flow label 0).
#[inline(always)]
pub fn outer_v6(
    s: &Steer<'_>,
    p: &Parsed,
    udp_check: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> OuterV6 {
    OuterV6 {
        eth: eth_hdr(smac, dmac, ETH_P_IPV6),
        ip: Ipv6Hdr {
            vtc_flow: [0x60 | (p.tos >> 4), p.tos << 4, 0, 0],
            payload_len: ((UDP_LEN + p.payload_len) as u16).to_be_bytes(),
            next_header: IPPROTO_UDP,
            hop_limit: RELAY_TTL,
            src: s.src.addr,
            dst: s.dst.addr,
        },
        udp: udp_hdr(s, p.payload_len, udp_check),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::{csum, wire::msg_type};

    const PORT: u16 = 51820;

    /// Ethernet + IPv4 (+ options) + UDP + DATA, lengths consistent, checksums unset.
    fn frame_v4(opt_words: usize, payload: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
        let ihl = 5 + opt_words;
        let total = (ihl * 4 + 8 + payload) as u16;
        f.extend_from_slice(&[0x40 | ihl as u8, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
        f.extend(core::iter::repeat_n(1u8, opt_words * 4));
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&PORT.to_be_bytes());
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        let mut p = WireHeader::new(msg_type::DATA, 77, 1).to_bytes().to_vec();
        p.resize(payload, 0xab);
        f.extend_from_slice(&p);
        f
    }

    #[test]
    fn parses_a_good_frame_and_no_cut_of_it() {
        for opts in [0, 1, 10] {
            let f = frame_v4(opts, 64);
            let p = parse(&f[..], PORT).expect("good frame");
            assert_eq!((p.kind, p.session_id, p.payload_len), (Kind::Data, 77, 64));
            assert_eq!(p.outer_len, 14 + (5 + opts) * 4 + 8);
            for len in 0..f.len() {
                assert!(parse(&f[..len], PORT).is_err(), "opts {opts}, cut at {len}");
            }
        }
    }

    #[test]
    fn incremental_udp_checksum_matches_a_full_recompute() {
        // Full UDP checksum over a pseudo-header of either family.
        fn full(src: &[u8; 16], dst: &[u8; 16], ports: [u8; 4], payload: &[u8]) -> u16 {
            let len = (8 + payload.len()) as u16;
            let mut acc = csum::sum_words(0, src);
            acc = csum::sum_words(acc, dst);
            acc += 17 + u32::from(len) * 2; // protocol, pseudo length, UDP length
            acc = csum::sum_words(acc, &ports);
            let mut pl = payload.to_vec();
            if pl.len() % 2 == 1 {
                pl.push(0);
            }
            for w in pl.chunks(2) {
                acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
            }
            match !csum::fold(acc) {
                0 => 0xffff,
                c => c,
            }
        }
        let payload: Vec<u8> = (0..101u32).map(|i| (i * 37 + 11) as u8).collect();
        let v4 = |a: [u8; 4]| {
            let mut x = [0u8; 16];
            x[..4].copy_from_slice(&a);
            x
        };
        let addrs = [v4([10, 0, 0, 2]), v4([192, 168, 7, 250]), [0xfd; 16], {
            let mut x = [0u8; 16];
            x[0] = 0x20;
            x[15] = 0x01;
            x
        }];
        let mut v4_cases = 0;
        let old_dst = &addrs[1];
        for old_src in &addrs {
            for (new_src, new_dst) in addrs.iter().flat_map(|a| addrs.iter().map(move |b| (a, b))) {
                let old_ports = [0x9c, 0x40, 0xca, 0x6c];
                let new_ports = [0xca, 0x6c, 0xca, 0x6d];
                let old = full(old_src, old_dst, old_ports, &payload);
                let r = Rewrite {
                    old_src,
                    old_dst,
                    old_ports,
                    new_src,
                    new_dst,
                    new_ports,
                };
                let want = full(new_src, new_dst, new_ports, &payload);
                assert_eq!(csum::udp_update(old, &r), want);
                // The IPv4-only form (what the relay uses when every address is IPv4)
                // must agree wherever it applies.
                let four = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
                if [old_src, old_dst, new_src, new_dst]
                    .iter()
                    .all(|a| a[4..].iter().all(|&b| b == 0))
                {
                    let r4 = Rewrite {
                        old_src: &four(old_src),
                        old_dst: &four(old_dst),
                        old_ports,
                        new_src: &four(new_src),
                        new_dst: &four(new_dst),
                        new_ports,
                    };
                    assert_eq!(csum::udp_update(old, &r4), want);
                    v4_cases += 1;
                }
            }
        }
        assert_eq!(
            v4_cases, 8,
            "old_src, new_src, new_dst each one of two IPv4 addresses"
        );
    }
}
