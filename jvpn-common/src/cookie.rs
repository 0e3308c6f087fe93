//! Stateless source-address cookies for HELLOs under load (docs/protocol.md, "Under
//! load: cookies"), and the COOKIE reply the XDP program builds in place of a HELLO.
//!
//! `cookie = seq u32 BE ‖ 0[4] ‖ mac[8]`, `mac = SipHash-2-4(key[seq & 1], m)` with
//! `m = seq u32 BE ‖ src_port (as on the wire) ‖ family u8 ‖ 0 u8 ‖ src_addr[16]`
//! (24 bytes, read as three little-endian words; IPv4 in the first 4 address bytes),
//! the 64-bit result stored little-endian. A cookie is valid if its seq is the current
//! one or the one before (wrapping), its reserved bytes are zero, the key slot was
//! written (not all zero), and the mac matches.

use crate::{
    csum,
    frame::{Frame, FrameMut},
    headers::{ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, EthHdr, IPPROTO_UDP, Ipv4Hdr, Ipv6Hdr, UdpHdr},
    maps::{AF_INET, CookieKey},
    relay::Parsed,
    siphash,
    wire::{
        COOKIE_LEN, COOKIE_MSG_LEN, HEADER_LEN, HELLO_COOKIE_LEN, HELLO_COOKIE_OFF, HELLO_LEN,
        HELLO_NONCE_OFF, VERSION, msg_type,
    },
};

pub type Cookie = [u8; COOKIE_LEN];

/// TTL / hop limit of a COOKIE: a fresh packet from the gateway.
pub const REPLY_TTL: u8 = 64;

/// Where a HELLO came from: what a cookie binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    /// IPv6, or IPv4 in the first 4 bytes with the rest zero.
    pub addr: &'a [u8; 16],
    /// The UDP source port as on the wire.
    pub port: [u8; 2],
    /// [`crate::maps::AF_INET`] or [`crate::maps::AF_INET6`].
    pub family: u8,
}

impl<'a> Source<'a> {
    /// The source of a parsed frame.
    #[inline(always)]
    pub fn of(p: &'a Parsed) -> Self {
        Self {
            addr: &p.src,
            port: [p.ports[0], p.ports[1]],
            family: p.family,
        }
    }
}

#[inline(always)]
fn le_word(b: &[u8; 16], i: usize) -> u64 {
    u64::from_le_bytes([
        b[i],
        b[i + 1],
        b[i + 2],
        b[i + 3],
        b[i + 4],
        b[i + 5],
        b[i + 6],
        b[i + 7],
    ])
}

/// The cookie's MAC for `seq` and `src` under `key`.
#[inline(always)]
pub fn mac(key: &CookieKey, seq: u32, src: &Source<'_>) -> u64 {
    let s = seq.to_be_bytes();
    let m = [
        u64::from_le_bytes([
            s[0],
            s[1],
            s[2],
            s[3],
            src.port[0],
            src.port[1],
            src.family,
            0,
        ]),
        le_word(src.addr, 0),
        le_word(src.addr, 8),
    ];
    siphash::hash_3_words(key.k0, key.k1, &m)
}

/// The cookie for `src` at sequence number `seq` (key: slot `seq & 1`).
#[inline(always)]
pub fn make(key: &CookieKey, seq: u32, src: &Source<'_>) -> Cookie {
    let s = seq.to_be_bytes();
    let m = mac(key, seq, src).to_le_bytes();
    [
        s[0], s[1], s[2], s[3], 0, 0, 0, 0, m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7],
    ]
}

/// The sequence number a cookie claims, if it may be valid now: the current one or
/// the one before, with the reserved bytes zero.
#[inline(always)]
pub fn claimed_seq(cookie: &Cookie, current: u32) -> Option<u32> {
    let seq = u32::from_be_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]);
    let reserved = u32::from_ne_bytes([cookie[4], cookie[5], cookie[6], cookie[7]]);
    if reserved == 0 && (seq == current || seq == current.wrapping_sub(1)) {
        Some(seq)
    } else {
        None
    }
}

/// Whether `cookie` is valid for `src` at the current sequence number; `key_of(slot)`
/// gives the key in slot 0 or 1. A slot never written (all zero) validates nothing.
#[inline(always)]
pub fn check(
    cookie: &Cookie,
    current: u32,
    key_of: impl FnOnce(u32) -> Option<CookieKey>,
    src: &Source<'_>,
) -> bool {
    let Some(seq) = claimed_seq(cookie, current) else {
        return false;
    };
    let Some(key) = key_of(seq & 1) else {
        return false;
    };
    if key.is_zero() {
        return false;
    }
    let got = u64::from_le_bytes([
        cookie[8], cookie[9], cookie[10], cookie[11], cookie[12], cookie[13], cookie[14],
        cookie[15],
    ]);
    got == mac(&key, seq, src)
}

/// The cookie a parsed HELLO carries, if it is the [`HELLO_COOKIE_LEN`] form.
#[inline(always)]
pub fn hello_cookie<F: Frame + ?Sized>(f: &F, p: &Parsed) -> Option<Cookie> {
    if p.payload_len != HELLO_COOKIE_LEN {
        return None;
    }
    f.at::<Cookie>(p.outer_len + HELLO_COOKIE_OFF).copied()
}

/// An untagged-or-tagged frame's IPv4 HELLO from its IP header on (no options).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloV4 {
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub msg: [u8; HELLO_LEN],
}

/// The same for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloV6 {
    pub ip: Ipv6Hdr,
    pub udp: UdpHdr,
    pub msg: [u8; HELLO_LEN],
}

/// UDP length of a COOKIE.
const REPLY_UDP_LEN: u16 = (crate::headers::UDP_LEN + COOKIE_MSG_LEN) as u16;

/// Stores `v` at `*p` as a volatile write: a run of plain byte stores (a loop or not)
/// may become a call to a byte-at-a-time `memset`/`memcpy` subprogram in BPF, which
/// costs time and, as a call, spills every live register to the stack.
#[inline(always)]
fn put(p: &mut u8, v: u8) {
    // SAFETY: `p` is a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Writes the COOKIE message (`header ‖ nonce_echo ‖ cookie`) over the start of the
/// HELLO's bytes: the nonce moves from [`HELLO_NONCE_OFF`] to just after the header.
#[inline(always)]
fn write_msg(msg: &mut [u8; HELLO_LEN], cookie: &Cookie) {
    let mut i = 0;
    while i < 16 {
        let b = msg[HELLO_NONCE_OFF + i];
        put(&mut msg[HEADER_LEN + i], b);
        put(&mut msg[HEADER_LEN + 16 + i], cookie[i]);
        i += 1;
    }
    // Header: version 1, COOKIE, flags 0, reserved 0, session 0, counter 0.
    put(&mut msg[0], VERSION);
    put(&mut msg[1], msg_type::COOKIE);
    let mut i = 2;
    while i < HEADER_LEN {
        put(&mut msg[i], 0);
        i += 1;
    }
}

/// Adds the 16-bit words of `msg[OFF..OFF + N]` (constant bounds: unrolled in BPF).
#[inline(always)]
fn sum_msg<const OFF: usize, const N: usize>(mut acc: u32, msg: &[u8; HELLO_LEN]) -> u32 {
    let mut i = OFF;
    while i + 1 < OFF + N {
        acc += u32::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
        i += 2;
    }
    acc
}

/// The UDP checksum of a COOKIE already written: pseudo-header addresses (4 or 16
/// bytes), protocol and length, the UDP header with its checksum field 0, the message.
/// Everything is read back from the frame, after the writes: the values need not be
/// kept in registers across them.
#[inline(always)]
fn reply_check<const A: usize>(
    acc: u32,
    src: &[u8; A],
    dst: &[u8; A],
    udp: &UdpHdr,
    msg: &[u8; HELLO_LEN],
) -> u16 {
    let mut acc = csum::sum_words(acc, src);
    acc = csum::sum_words(acc, dst);
    // Protocol and UDP length (pseudo-header), UDP length again (header).
    acc += u32::from(IPPROTO_UDP) + 2 * u32::from(REPLY_UDP_LEN);
    acc = csum::sum_words(acc, &udp.sport);
    acc = csum::sum_words(acc, &udp.dport);
    acc = sum_msg::<0, COOKIE_MSG_LEN>(acc, msg);
    match !csum::fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

#[inline(always)]
fn swap<const N: usize>(a: &mut [u8; N], b: &mut [u8; N]) {
    let mut i = 0;
    while i < N {
        let x = a[i];
        put(&mut a[i], b[i]);
        put(&mut b[i], x);
        i += 1;
    }
}

#[inline(always)]
fn put2(p: &mut [u8; 2], v: u16) {
    let b = v.to_be_bytes();
    put(&mut p[0], b[0]);
    put(&mut p[1], b[1]);
}

/// Rewrites the UDP header of a COOKIE (ports swapped, length) with checksum 0.
#[inline(always)]
fn write_udp(udp: &mut UdpHdr) {
    swap(&mut udp.sport, &mut udp.dport);
    put2(&mut udp.len, REPLY_UDP_LEN);
    put2(&mut udp.check, 0);
}

/// Rewrites a HELLO frame, in place, into the COOKIE reply to its sender, and returns
/// the reply's frame length: the caller shrinks the frame to it (`bpf_xdp_adjust_tail`
/// in XDP, a truncate on a byte vector) and sends it back out (`XDP_TX`).
///
/// Ethernet addresses, IP addresses and UDP ports are swapped; a VLAN tag stays as it
/// was. IPv4: total length, ID 0, DF, TTL 64, fresh header checksum, TOS kept. IPv6:
/// payload length, hop limit 64, traffic class and flow label kept. The UDP checksum
/// is computed in full (fixed size: the reply is 52 bytes whatever the HELLO was).
/// The reply is never longer than the HELLO (52 < 172 bytes).
///
/// Errors are reasons: an IPv4 header with options is not answered
/// ([`crate::counters::HELLO_IP_OPTIONS`]; the frame is untouched), a frame too
/// short for a HELLO is malformed.
#[inline(always)]
pub fn write_reply<F: FrameMut + ?Sized>(
    f: &mut F,
    p: &Parsed,
    cookie: &Cookie,
) -> Result<usize, u32> {
    if p.payload_len < HELLO_LEN {
        return Err(crate::counters::MALFORMED);
    }
    let eth: &mut EthHdr = f.at_mut(0).ok_or(crate::counters::MALFORMED)?;
    let et = u16::from_be_bytes(eth.ethertype);
    let l3 = if et == ETH_P_8021Q || et == ETH_P_8021AD {
        ETH_LEN + crate::headers::VLAN_LEN
    } else {
        ETH_LEN
    };
    let ip_len = if p.family == AF_INET {
        crate::headers::IPV4_LEN
    } else {
        crate::headers::IPV6_LEN
    };
    if p.outer_len != l3 + ip_len + crate::headers::UDP_LEN {
        // Only IPv4 options make the headers longer than that.
        return Err(crate::counters::HELLO_IP_OPTIONS);
    }
    swap(&mut eth.dst, &mut eth.src);

    if p.family == AF_INET {
        let h: &mut HelloV4 = f.at_mut(l3).ok_or(crate::counters::MALFORMED)?;
        write_msg(&mut h.msg, cookie);
        write_udp(&mut h.udp);
        let ip = &mut h.ip;
        swap(&mut ip.src, &mut ip.dst);
        put(&mut ip.version_ihl, 0x45);
        put2(
            &mut ip.total_len,
            crate::headers::IPV4_LEN as u16 + REPLY_UDP_LEN,
        );
        put2(&mut ip.id, 0);
        put2(&mut ip.frag_off, 0x4000);
        put(&mut ip.ttl, REPLY_TTL);
        put2(&mut ip.check, 0);
        // SAFETY: Ipv4Hdr is a 20-byte Wire type (no padding, alignment 1).
        let bytes: &[u8; 20] = unsafe { &*(ip as *const Ipv4Hdr).cast() };
        let check = csum::ipv4_header(bytes);
        put2(&mut ip.check, check);
        let check = reply_check(0, &h.ip.src, &h.ip.dst, &h.udp, &h.msg);
        put2(&mut h.udp.check, check);
    } else {
        let h: &mut HelloV6 = f.at_mut(l3).ok_or(crate::counters::MALFORMED)?;
        write_msg(&mut h.msg, cookie);
        write_udp(&mut h.udp);
        let ip = &mut h.ip;
        swap(&mut ip.src, &mut ip.dst);
        put2(&mut ip.payload_len, REPLY_UDP_LEN);
        put(&mut ip.hop_limit, REPLY_TTL);
        let check = reply_check(0, &h.ip.src, &h.ip.dst, &h.udp, &h.msg);
        put2(&mut h.udp.check, check);
    }
    Ok(p.outer_len + COOKIE_MSG_LEN)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::{
        counters,
        maps::AF_INET6,
        relay::{self, Verdict},
        wire::{Kind, WireHeader},
    };

    const PORT: u16 = 51820;

    fn key(b: u8) -> CookieKey {
        CookieKey::from_bytes(&[b; 16])
    }

    #[test]
    fn cookie_binds_address_port_family_and_sequence() {
        let a: [u8; 16] = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let src = Source {
            addr: &a,
            port: 40000u16.to_be_bytes(),
            family: AF_INET,
        };
        let k = [key(1), key(2)];
        let keys = |slot: u32| Some(k[slot as usize]);
        let c = make(&k[1], 7, &src);
        assert_eq!(&c[..8], &[0, 0, 0, 7, 0, 0, 0, 0]);
        // The mac is SipHash-2-4 of the documented 24 bytes, little-endian.
        let mut m = Vec::from(7u32.to_be_bytes());
        m.extend_from_slice(&40000u16.to_be_bytes());
        m.extend_from_slice(&[AF_INET, 0]);
        m.extend_from_slice(&a);
        assert_eq!(&c[8..], &siphash::hash(&[2; 16], &m).to_le_bytes());

        assert!(check(&c, 7, keys, &src), "current");
        assert!(check(&c, 8, keys, &src), "previous");
        assert!(!check(&c, 9, keys, &src), "two rotations later");
        assert!(!check(&c, 6, keys, &src), "from the future");
        let other_port = Source {
            port: 40001u16.to_be_bytes(),
            ..src
        };
        let b = [10, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let other_addr = Source { addr: &b, ..src };
        let other_family = Source {
            family: AF_INET6,
            ..src
        };
        for s in [other_port, other_addr, other_family] {
            assert!(!check(&c, 7, keys, &s), "{s:?}");
        }
        // Another key in the slot (rotated twice), a reserved byte set, any bit flipped.
        assert!(!check(&c, 7, |_| Some(key(3)), &src));
        assert!(
            !check(&c, 7, |_| Some(CookieKey::default()), &src),
            "unwritten slot"
        );
        assert!(!check(&c, 7, |_| None, &src));
        for bit in 0..128 {
            let mut x = c;
            x[bit / 8] ^= 1 << (bit % 8);
            assert!(!check(&x, 7, keys, &src), "bit {bit}");
        }
        // Wrapping: seq 0's previous is u32::MAX.
        let w = make(&k[1], u32::MAX, &src);
        assert!(check(&w, 0, keys, &src));
    }

    fn hello_frame(v6: bool, vlan: bool, opts: usize, with_cookie: Option<Cookie>) -> Vec<u8> {
        let mut payload = WireHeader::new(msg_type::HELLO, 0, 0).to_bytes().to_vec();
        payload.extend(
            (0..HELLO_LEN - HEADER_LEN).map(|i| (i as u8).wrapping_mul(13).wrapping_add(1)),
        );
        if let Some(c) = with_cookie {
            payload.extend_from_slice(&c);
        }
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        }
        let udp_len = (8 + payload.len()) as u16;
        let mut udp = Vec::new();
        udp.extend_from_slice(&40000u16.to_be_bytes());
        udp.extend_from_slice(&PORT.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&payload);
        if v6 {
            let (src, dst) = ([0xfd; 16], [0xfe; 16]);
            let c = csum::udp_full(&src, &dst, &udp);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x86, 0xdd, 0x6b, 0x80, 0, 0]);
            f.extend_from_slice(&udp_len.to_be_bytes());
            f.extend_from_slice(&[17, 61]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
        } else {
            let (src, dst) = ([10, 0, 0, 2], [10, 0, 0, 1]);
            let c = csum::udp_full(&src, &dst, &udp);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl = 5 + opts;
            let total = (ihl * 4) as u16 + udp_len;
            let mut ip = Vec::from([0x40 | ihl as u8, 0xb8]);
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34, 0, 0, 61, 17, 0, 0]);
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&dst);
            ip.extend(core::iter::repeat_n(1u8, opts * 4));
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(&udp);
        f
    }

    #[test]
    fn reply_reparses_with_valid_checksums_and_swapped_ends() {
        let k = [key(9), key(4)];
        for (v6, vlan, with) in [
            (false, false, false),
            (false, true, false),
            (true, false, false),
            (true, true, true),
            (false, false, true),
        ] {
            let name = std::format!("v6 {v6}, vlan {vlan}, cookie {with}");
            let mut f = hello_frame(v6, vlan, 0, with.then_some([0xaa; 16]));
            let orig = f.clone();
            let p = relay::parse(&f[..], PORT).expect("HELLO parses");
            assert_eq!(p.kind, Kind::Hello);
            let c = make(&k[1], 5, &Source::of(&p));
            let len = write_reply(&mut f[..], &p, &c).expect(&name);
            f.truncate(len);
            let l3 = if vlan { 18 } else { 14 };
            assert_eq!(
                len,
                l3 + if v6 { 40 } else { 20 } + 8 + COOKIE_MSG_LEN,
                "{name}"
            );
            assert!(len < orig.len(), "{name}: never larger than the HELLO");
            // Ethernet swapped, the tag kept.
            assert_eq!((&f[..6], &f[6..12]), (&orig[6..12], &orig[..6]), "{name}");
            assert_eq!(&f[12..l3], &orig[12..l3], "{name}");
            // Re-parse as a packet to the client's port.
            let r = relay::parse(&f[..], 40000).expect("the reply parses");
            assert_eq!(r.kind, Kind::Reply, "{name}");
            assert_eq!((r.src, r.dst), (p.dst, p.src), "{name}");
            assert_eq!(
                r.ports,
                [p.ports[2], p.ports[3], p.ports[0], p.ports[1]],
                "{name}"
            );
            assert_eq!(r.payload_len, COOKIE_MSG_LEN, "{name}");
            let body = &f[r.outer_len..];
            assert_eq!(
                &body[..HEADER_LEN],
                &WireHeader::new(msg_type::COOKIE, 0, 0).to_bytes()
            );
            let hello_payload = &orig[p.outer_len..];
            assert_eq!(
                &body[20..36],
                &hello_payload[HELLO_NONCE_OFF..HELLO_NONCE_OFF + 16]
            );
            assert_eq!(&body[36..52], &c, "{name}");
            assert!(check(
                body[36..52].try_into().unwrap(),
                5,
                |s| Some(k[s as usize]),
                &Source::of(&p)
            ));
            // Checksums.
            let udp = &f[r.outer_len - 8..];
            let (src, dst): (&[u8], &[u8]) = if v6 {
                (&r.src, &r.dst)
            } else {
                (&r.src[..4], &r.dst[..4])
            };
            let mut zeroed = udp.to_vec();
            zeroed[6..8].copy_from_slice(&[0, 0]);
            assert_eq!(
                r.udp_check,
                csum::udp_full(src, dst, &zeroed),
                "{name}: UDP checksum"
            );
            if v6 {
                assert_eq!(f[l3 + 7], REPLY_TTL, "{name}: hop limit");
                assert_eq!(
                    &f[l3..l3 + 4],
                    &orig[l3..l3 + 4],
                    "{name}: class, flow label"
                );
            } else {
                let ip: [u8; 20] = f[l3..l3 + 20].try_into().unwrap();
                assert_eq!(
                    csum::fold(csum::sum_words(0, &ip)),
                    0xffff,
                    "{name}: IP checksum"
                );
                assert_eq!((ip[1], ip[8]), (0xb8, REPLY_TTL), "{name}: tos, ttl");
                assert_eq!(&ip[4..8], &[0, 0, 0x40, 0], "{name}: id 0, DF");
            }
        }
    }

    #[test]
    fn ipv4_options_and_short_frames_are_not_answered() {
        let mut f = hello_frame(false, false, 2, None);
        let orig = f.clone();
        let p = relay::parse(&f[..], PORT).unwrap();
        assert_eq!(
            write_reply(&mut f[..], &p, &[0; 16]),
            Err(counters::HELLO_IP_OPTIONS)
        );
        assert_eq!(f, orig, "untouched");
        // A HELLO-typed message shorter than a HELLO.
        let mut f = hello_frame(false, false, 0, None);
        let p = relay::parse(&f[..], PORT).unwrap();
        let short = Parsed {
            payload_len: HELLO_LEN - 1,
            ..p
        };
        assert_eq!(
            write_reply(&mut f[..], &short, &[0; 16]),
            Err(counters::MALFORMED)
        );
        // Every cut of a frame parses as not ours or malformed, never as a HELLO that
        // the builder could overrun.
        let f = hello_frame(true, true, 0, None);
        for len in 0..f.len() {
            match relay::parse(&f[..len], PORT) {
                Err(Verdict::NotOurs | Verdict::Reject(counters::MALFORMED)) => {}
                other => panic!("cut at {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_cookie_is_read_only_from_the_long_form() {
        let f = hello_frame(false, false, 0, Some([7; 16]));
        let p = relay::parse(&f[..], PORT).unwrap();
        assert_eq!(hello_cookie(&f[..], &p), Some([7; 16]));
        let f = hello_frame(false, false, 0, None);
        let p = relay::parse(&f[..], PORT).unwrap();
        assert_eq!(hello_cookie(&f[..], &p), None);
    }
}
