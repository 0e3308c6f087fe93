//! The relay's parse / steer / rewrite (`jvpn_common::relay`, the code the XDP
//! program runs) over arbitrary frames. Invariant: whatever it relays re-parses as
//! the same jvpn datagram between the endpoints it was steered to, its IPv4 header
//! checksum is right, and its UDP checksum is right whenever the input's was.

#![no_main]

use jvpn_common::{
    headers::{ETH_LEN, IPPROTO_UDP, UDP_LEN, Wire as _},
    maps::{AF_INET, AF_INET6, Endpoint},
    relay::{self, Direction},
    wire::Kind,
};
use libfuzzer_sys::fuzz_target;

const PORT: u16 = 51820;

fn endpoint(v6: bool, n: u8, port: u16) -> Endpoint {
    let mut addr = [0u8; 16];
    if v6 {
        addr[0] = 0xfd;
        addr[15] = n;
    } else {
        addr[..4].copy_from_slice(&[10, 9, 0, n]);
    }
    Endpoint {
        addr,
        port_be: port.to_be(),
        family: if v6 { AF_INET6 } else { AF_INET },
        _pad: [0; 5],
    }
}

/// Ones'-complement sum, independent of `jvpn_common::csum`.
fn sum(mut acc: u64, b: &[u8]) -> u64 {
    for w in b.chunks(2) {
        acc += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether the UDP datagram `udp` (header and payload) between `src` and `dst` has a
/// correct checksum (pseudo-header of the addresses' family).
fn udp_ok(family: u8, src: &[u8; 16], dst: &[u8; 16], udp: &[u8]) -> bool {
    let n = if family == AF_INET6 { 16 } else { 4 };
    let mut acc = sum(0, &src[..n]);
    acc = sum(acc, &dst[..n]);
    acc += u64::from(IPPROTO_UDP) + udp.len() as u64;
    fold(sum(acc, udp)) == 0xffff
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the route: which side the frame comes from, the far
    // side's family, forwarding on or off.
    let Some((&ctl, frame)) = data.split_first() else {
        return;
    };
    let Ok(p) = relay::parse(frame, PORT) else {
        return;
    };
    assert!(p.outer_len + p.payload_len <= frame.len());
    if p.kind != Kind::Data {
        return;
    }
    let from = Endpoint {
        addr: p.src,
        port_be: p.sport_be(),
        family: p.family,
        _pad: [0; 5],
    };
    let far_v6 = ctl & 2 != 0;
    let far = endpoint(far_v6, 1, 40_001);
    let (client, exit) = if ctl & 1 == 0 {
        (from, far)
    } else {
        (far, from)
    };
    let gw_client = endpoint(client.family == AF_INET6, 2, PORT);
    let gw_exit = endpoint(exit.family == AF_INET6, 3, 40_002);
    let route = relay::Route {
        forwarding: ctl & 4 == 0,
        client: &client,
        gw_client: &gw_client,
        exit: &exit,
        gw_exit: &gw_exit,
    };
    let Ok(s) = relay::steer(&p, &route) else {
        // Refused only with forwarding off: the frame comes from one of the two.
        assert!(!route.forwarding, "a frame from the binding or the exit refused");
        return;
    };
    assert_eq!(s.dir == Direction::Up, ctl & 1 == 0 || client == exit);
    let Ok(check) = relay::relayed_udp_check(&p, &s) else {
        return;
    };
    let payload = &frame[p.outer_len..p.outer_len + p.payload_len];
    let (smac, dmac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut out = Vec::new();
    if s.dst.family == AF_INET6 {
        out.extend_from_slice(relay::outer_v6(&s, &p, check, smac, dmac).as_bytes());
    } else {
        out.extend_from_slice(relay::outer_v4(&s, &p, check, smac, dmac).as_bytes());
    }
    out.extend_from_slice(payload);

    let q = relay::parse(&out[..], u16::from_be(s.dst.port_be)).expect("the relayed frame parses");
    assert_eq!(
        (q.kind, q.session_id, q.payload_len, q.family),
        (p.kind, p.session_id, p.payload_len, s.dst.family)
    );
    assert_eq!((q.src, q.dst), (s.src.addr, s.dst.addr));
    assert_eq!(q.sport_be(), s.src.port_be);
    assert_eq!(&out[q.outer_len..], payload);
    if q.family == AF_INET {
        assert_eq!(fold(sum(0, &out[ETH_LEN..ETH_LEN + 20])), 0xffff, "IPv4 header checksum");
    }
    let udp_in = &frame[p.outer_len - UDP_LEN..p.outer_len + p.payload_len];
    let udp_out = &out[q.outer_len - UDP_LEN..];
    if p.udp_check == 0 {
        assert_eq!(q.udp_check, 0, "no checksum stays no checksum (IPv4 only)");
        assert_eq!(q.family, AF_INET);
    } else if udp_ok(p.family, &p.src, &p.dst, udp_in) {
        assert!(udp_ok(q.family, &q.src, &q.dst, udp_out), "a right UDP checksum stays right");
    }
});
