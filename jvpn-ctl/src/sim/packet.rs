//! Inner IPv4/UDP and IPv6/UDP packets for the simulated tunnel, and the far side's
//! echo.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4/UDP packet (UDP checksum 0: none, which IPv4 allows).
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let header: &[u8; 20] = p[..20].try_into().expect("20 bytes");
    let c = jvpn_common::csum::ipv4_header(header);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let ulen = 8 + payload.len();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(ulen as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The parts of an IPv4/UDP packet: (src, dst, sport, dport, payload).
pub fn parse_udp4(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16, &[u8])> {
    if p.len() < 28 || p[0] != 0x45 || p[9] != 17 {
        return None;
    }
    let a = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    Some((a(12), a(16), port(20), port(22), &p[28..]))
}

/// An IPv6/UDP packet, with its checksum (IPv6 has no checksum-less UDP).
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut p = Vec::with_capacity(40 + ulen);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(ulen as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(ulen as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let c = jvpn_common::csum::udp_full(&src.octets(), &dst.octets(), &p[40..]);
    p[46..48].copy_from_slice(&c.to_be_bytes());
    p
}

/// The parts of an IPv6/UDP packet without extension headers.
pub fn parse_udp6(p: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u16, u16, &[u8])> {
    if p.len() < 48 || p[0] >> 4 != 6 || p[6] != 17 {
        return None;
    }
    let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&p[o..o + 16]).expect("16 bytes"));
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    Some((a(8), a(24), port(40), port(42), &p[48..]))
}

/// The source of a UDP packet of either family.
pub fn udp_source(p: &[u8]) -> Option<IpAddr> {
    parse_udp4(p)
        .map(|(s, ..)| IpAddr::V4(s))
        .or_else(|| parse_udp6(p).map(|(s, ..)| IpAddr::V6(s)))
}

/// The echo server behind the exit: the same payload, addresses and ports swapped.
pub fn echo(p: &[u8]) -> Option<Vec<u8>> {
    if let Some((src, dst, sport, dport, payload)) = parse_udp6(p) {
        return Some(udp6(dst, src, dport, sport, payload));
    }
    let (src, dst, sport, dport, payload) = parse_udp4(p)?;
    Some(udp4(dst, src, dport, sport, payload))
}
