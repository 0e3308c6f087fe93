//! Path MTU signalling at the tunnel entrance: what a router with a smaller next-hop
//! MTU would do with an inner packet that is too big for the tunnel.
//!
//! The TUN device hands us packets sized for its own MTU, which can exceed what the
//! tunnel carries now (the outer path shrank, or the encapsulation grew). Sending them
//! anyway gets them lost on the outer path with nobody told. So the endpoint acts as a
//! router: IPv4 packets that allow it are fragmented (RFC 791); for the rest the local
//! stack is told the MTU by an ICMP "fragmentation needed" (RFC 1191) or ICMPv6 "Packet
//! Too Big" (RFC 4443, RFC 8201) written back into the TUN, so TCP lowers its MSS.
//!
//! Pure byte code: nothing here allocates except into the caller's buffers.

use std::net::Ipv6Addr;

use jvpn_common::csum::{fold, sum_bytes};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const DF: u16 = 0x4000;
const MF: u16 = 0x2000;
const OFFSET: u16 = 0x1fff;
/// RFC 1812 §4.3.2.3: an ICMP error quotes as much as fits in 576 bytes.
const V4_ERROR_MAX: usize = 576;
/// RFC 4443 §2.4(c): an ICMPv6 error must not exceed the IPv6 minimum MTU.
const V6_ERROR_MAX: usize = 1280;
const HOP_LIMIT: u8 = 64;

/// What to do with an inner packet for a tunnel of MTU `mtu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fits,
    /// IPv4 without DF: the sender lets routers fragment it, so [`fragment_v4`] does,
    /// instead of bothering the sender with an error (if it cannot, drop the packet).
    Fragment,
    /// The sender forbade fragmenting (DF, or IPv6, where only the source fragments):
    /// drop it and answer with [`too_big`] so the sender sends smaller packets.
    TooBig,
    /// Its header contradicts the buffer (or it is not IP): neither fragmenting nor
    /// quoting it would be sound. Checked before the size, so a small malformed packet
    /// is dropped too rather than sent into the tunnel.
    Drop,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Fills the checksum at `b[at..at + 2]` over all of `b`, starting from `acc`.
fn seal(b: &mut [u8], at: usize, acc: u32) {
    put16(b, at, 0);
    put16(b, at, !fold(sum_bytes(acc, b)));
}

/// The header length of an IPv4 packet we may touch. A TUN read is exactly one packet,
/// so a total length that differs from the buffer means a corrupt packet.
fn v4_ihl(pkt: &[u8]) -> Option<usize> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let ok = pkt.len() >= 20 && pkt[0] >> 4 == 4 && ihl >= 20 && ihl <= pkt.len();
    (ok && usize::from(be16(pkt, 2)) == pkt.len()).then_some(ihl)
}

fn v6_ok(pkt: &[u8]) -> bool {
    pkt.len() >= 40 && pkt[0] >> 4 == 6 && 40 + usize::from(be16(pkt, 4)) == pkt.len()
}

/// RFC 1122 §3.2.2: no error to (or, as our source, from) an address that is not one
/// host's: this network (0/8), loopback, multicast, class E and broadcast.
fn unicast_v4(a: &[u8]) -> bool {
    !matches!(a[0], 0 | 127 | 224..)
}

/// RFC 4443 §2.4(e) allows a Packet Too Big for a multicast destination, but then the
/// error's source must be one of our own unicast addresses, which we do not have here.
fn unicast_v6(a: &[u8]) -> bool {
    let a = Ipv6Addr::from(<[u8; 16]>::try_from(a).expect("16 bytes"));
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast())
}

/// Decided before encapsulating, because past that point an oversize packet is lost
/// without the sender being told.
pub fn classify(pkt: &[u8], mtu: u16) -> Verdict {
    let df = match pkt.first().map(|b| b >> 4) {
        Some(4) if v4_ihl(pkt).is_some() => be16(pkt, 6) & DF != 0,
        Some(6) if v6_ok(pkt) => true,
        _ => return Verdict::Drop,
    };
    match (pkt.len() <= usize::from(mtu), df) {
        (true, _) => Verdict::Fits,
        (false, false) => Verdict::Fragment,
        (false, true) => Verdict::TooBig,
    }
}

/// What [`fit`] did with an inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fitted {
    /// It fits: passed to `emit` as it is.
    Whole,
    /// IPv4 without DF: its fragments were passed to `emit`.
    Fragmented,
    /// Too big and not to be fragmented: the sender's ICMP error is in `reply`.
    Replied,
    /// Too big, and no ICMP error is allowed for it (see [`too_big`]): dropped.
    Refused,
    /// Malformed, or fragments could not be made of it: dropped.
    Dropped,
}

/// Sends `pkt` into a tunnel of MTU `mtu` the way a router would: whole if it fits,
/// as fragments if the sender allows it, else with an ICMP error for the sender in
/// `reply` ([`classify`], [`fragment_v4`], [`too_big`] in one place for both tunnel
/// ends). `emit` gets the packet, or each fragment in order.
pub fn fit(pkt: &[u8], mtu: u16, reply: &mut Vec<u8>, mut emit: impl FnMut(&[u8])) -> Fitted {
    match classify(pkt, mtu) {
        Verdict::Fits => {
            emit(pkt);
            Fitted::Whole
        }
        Verdict::Fragment => {
            let mut buf = Vec::new();
            if fragment_v4(pkt, mtu, &mut buf, emit) > 0 {
                Fitted::Fragmented
            } else {
                Fitted::Dropped
            }
        }
        Verdict::TooBig if too_big(pkt, mtu, reply) => Fitted::Replied,
        Verdict::TooBig => Fitted::Refused,
        Verdict::Drop => Fitted::Dropped,
    }
}

/// Builds the ICMP error that tells the sender of `pkt` the tunnel's MTU, into `out`
/// (cleared first). Its source is the original's destination, which the sender routed
/// through the tunnel, so the error passes its reverse-path filter on the TUN. It
/// quotes as much of the original as RFC 1812 (576 bytes) or RFC 4443 (1280) allow.
///
/// For IPv6 the real `mtu` is reported even below 1280: lying would make the sender
/// keep sending packets the tunnel drops. RFC 8201 §4 receivers discard such a
/// message, so a tunnel carrying IPv6 must keep its MTU at 1280 or more.
///
/// Returns false, with `out` empty, where RFC 1122 §3.2.2 and RFC 4443 §2.4(e) forbid
/// an error: the original is an ICMP error, a non-first fragment, from or to an
/// address that is not a single host's, or has a header we cannot parse.
pub fn too_big(pkt: &[u8], mtu: u16, out: &mut Vec<u8>) -> bool {
    out.clear();
    match pkt.first().map(|b| b >> 4) {
        Some(4) => too_big_v4(pkt, mtu, out),
        Some(6) => too_big_v6(pkt, mtu, out),
        _ => false,
    }
}

fn too_big_v4(pkt: &[u8], mtu: u16, out: &mut Vec<u8>) -> bool {
    let Some(ihl) = v4_ihl(pkt) else { return false };
    let (src, dst) = (&pkt[12..16], &pkt[16..20]);
    if be16(pkt, 6) & OFFSET != 0 || !unicast_v4(src) || !unicast_v4(dst) {
        return false;
    }
    // Errors are types 3, 4, 5, 11, 12; with no type to read, assume the worst.
    let error = |t: &u8| matches!(t, 3 | 4 | 5 | 11 | 12);
    if pkt[9] == PROTO_ICMP && pkt.get(ihl).is_none_or(error) {
        return false;
    }
    let quote = &pkt[..pkt.len().min(V4_ERROR_MAX - 28)];
    let ([l0, l1], [m0, m1]) = ((28 + quote.len() as u16).to_be_bytes(), mtu.to_be_bytes());
    // TOS 0xc0: RFC 1812 §4.3.2.5 sends ICMP errors with precedence 6.
    out.extend_from_slice(&[0x45, 0xc0, l0, l1, 0, 0, 0, 0, HOP_LIMIT, PROTO_ICMP, 0, 0]);
    out.extend_from_slice(dst);
    out.extend_from_slice(src);
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0, m0, m1]);
    out.extend_from_slice(quote);
    seal(&mut out[..20], 10, 0);
    seal(&mut out[20..], 2, 0);
    true
}

/// Walks the extension headers: a non-first fragment or an ICMPv6 error (type below
/// 128) is not answered, and neither is a chain that runs off the packet.
fn v6_answerable(pkt: &[u8]) -> Option<()> {
    let (mut next, mut at) = (pkt[6], 40);
    while matches!(next, 0 | 43 | 44 | 51 | 60) {
        let h = pkt.get(at..at + 8)?;
        let len = match next {
            44 if be16(h, 2) & 0xfff8 != 0 => return None,
            44 => 8,
            51 => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        (next, at) = (h[0], at + len);
    }
    (next != PROTO_ICMPV6 || *pkt.get(at)? >= 128).then_some(())
}

fn too_big_v6(pkt: &[u8], mtu: u16, out: &mut Vec<u8>) -> bool {
    let hosts = v6_ok(pkt) && unicast_v6(&pkt[8..24]) && unicast_v6(&pkt[24..40]);
    if !hosts || v6_answerable(pkt).is_none() {
        return false;
    }
    let quote = &pkt[..pkt.len().min(V6_ERROR_MAX - 48)];
    let (plen, [m0, m1]) = (8 + quote.len() as u16, mtu.to_be_bytes());
    let [l0, l1] = plen.to_be_bytes();
    out.extend_from_slice(&[0x60, 0, 0, 0, l0, l1, PROTO_ICMPV6, HOP_LIMIT]);
    out.extend_from_slice(&pkt[24..40]);
    out.extend_from_slice(&pkt[8..24]);
    out.extend_from_slice(&[2, 0, 0, 0, 0, 0, m0, m1]);
    out.extend_from_slice(quote);
    // Pseudo-header (RFC 8200 §8.1): addresses, upper-layer length, next header.
    let pseudo = sum_bytes(0, &out[8..40]) + u32::from(plen) + u32::from(PROTO_ICMPV6);
    seal(&mut out[40..], 2, pseudo);
    true
}

/// Splits an IPv4 packet without DF into fragments of at most `mtu` bytes, each built
/// in `buf` and passed to `emit` in order, as a router would (RFC 791 §3.2): the data
/// of all but the last is a multiple of 8 bytes, MF is set on all but the last (which
/// keeps the original's, so fragments can be fragmented again), and the header
/// checksum is recomputed. Options are kept whole in the first fragment; the later
/// ones carry only those with the copied bit, padded to 32 bits, because receivers
/// expect that of a router and refusing such packets would black-hole them.
///
/// Returns the number of fragments, 0 (nothing emitted) if DF is set, the header or
/// its options are malformed, the fragments would reach past offset 65535, or `mtu`
/// has no room for the header and 8 bytes.
pub fn fragment_v4(pkt: &[u8], mtu: u16, buf: &mut Vec<u8>, mut emit: impl FnMut(&[u8])) -> usize {
    let Some(ihl) = v4_ihl(pkt) else { return 0 };
    let (frag, mtu, data) = (be16(pkt, 6), usize::from(mtu), &pkt[ihl..]);
    let base = usize::from(frag & OFFSET) * 8;
    if frag & DF != 0 || ihl + 8 > mtu || base + data.len() > 0xffff {
        return 0;
    }
    let mut later = [0u8; 60];
    later[..20].copy_from_slice(&pkt[..20]);
    let (mut len, mut i) = (20, 20);
    while i < ihl {
        let opt = match pkt[i] {
            0 => break,
            1 => 1,
            _ => match pkt.get(i + 1).map(|&l| usize::from(l)) {
                Some(l) if l >= 2 && i + l <= ihl => l,
                _ => return 0,
            },
        };
        if pkt[i] & 0x80 != 0 {
            later[len..len + opt].copy_from_slice(&pkt[i..i + opt]);
            len += opt;
        }
        i += opt;
    }
    let len = len.next_multiple_of(4);
    later[0] = 0x40 | (len / 4) as u8;
    let (mut off, mut n) = (0, 0);
    while off < data.len() || n == 0 {
        let hdr = if n == 0 { &pkt[..ihl] } else { &later[..len] };
        let room = mtu - hdr.len();
        let end = (off + room).min(data.len());
        let end = end - if end < data.len() { room % 8 } else { 0 };
        let mf = if end == data.len() { frag & MF } else { MF };
        buf.clear();
        buf.extend_from_slice(hdr);
        buf.extend_from_slice(&data[off..end]);
        let total = buf.len() as u16;
        put16(buf, 2, total);
        put16(buf, 6, (frag & 0x8000) | mf | ((base + off) / 8) as u16);
        seal(&mut buf[..hdr.len()], 10, 0);
        emit(&buf[..]);
        (off, n) = (end, n + 1);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 1071 sum, written out independently of `jvpn_common::csum`.
    fn sum(b: &[u8]) -> u16 {
        let mut s: u64 = b
            .chunks(2)
            .map(|w| (u64::from(w[0]) << 8) | u64::from(*w.get(1).unwrap_or(&0)))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn v4(proto: u8, len: usize, flags: u16, src: [u8; 4], opts: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 9, proto, 0, 0];
        p[0] += opts.len() as u8 / 4;
        p.extend_from_slice(&src);
        p.extend_from_slice(&[10, 8, 0, 2]);
        p.extend_from_slice(opts);
        p.extend((p.len()..len).map(|i| (i * 7) as u8));
        put16(&mut p, 2, len as u16);
        put16(&mut p, 6, flags);
        let c = !sum(&p[..20 + opts.len()]);
        put16(&mut p, 10, c);
        p
    }

    fn v6(next: u8, len: usize, src: Ipv6Addr) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 9];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
        p.extend((40..len).map(|i| (i * 5) as u8));
        put16(&mut p, 4, len as u16 - 40);
        p
    }

    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

    #[test]
    fn classify_each_case() {
        let big_df = v4(17, 3000, DF, [10, 0, 0, 1], &[]);
        assert_eq!(classify(&big_df, 3000), Verdict::Fits);
        assert_eq!(classify(&big_df, 1400), Verdict::TooBig);
        let big = v4(17, 3000, 0, [10, 0, 0, 1], &[]);
        assert_eq!(classify(&big, 1400), Verdict::Fragment);
        assert_eq!(classify(&v6(17, 3000, CLIENT6), 1400), Verdict::TooBig);
        assert_eq!(classify(&v6(17, 1000, CLIENT6), 1400), Verdict::Fits);
        let mut bad = v4(17, 100, 0, [10, 0, 0, 1], &[]);
        assert_eq!(classify(&bad[..99], 1400), Verdict::Drop, "truncated");
        assert_eq!(
            classify(&[&bad[..], &[0]].concat(), 1400),
            Verdict::Drop,
            "trailer"
        );
        bad[0] = 0x44; // IHL 4
        assert_eq!(classify(&bad, 1400), Verdict::Drop);
        bad[0] = 0x55; // version 5
        assert_eq!(classify(&bad, 1400), Verdict::Drop);
        assert_eq!(classify(&v6(17, 100, CLIENT6)[..99], 1400), Verdict::Drop);
        assert_eq!(classify(&[], 1400), Verdict::Drop);
    }

    #[test]
    fn v4_fragmentation_needed() {
        for (len, quoted) in [(3000, 548), (100, 100)] {
            let pkt = v4(17, len, DF, [10, 0, 0, 1], &[]);
            let mut out = vec![0xaa; 7];
            assert!(too_big(&pkt, 1400, &mut out));
            assert_eq!(out.len(), 28 + quoted);
            assert_eq!((out[0], be16(&out, 2) as usize), (0x45, out.len()));
            assert_eq!((out[8], out[9], be16(&out, 6)), (64, PROTO_ICMP, 0));
            assert_eq!((&out[12..16], &out[16..20]), (&pkt[16..20], &pkt[12..16]));
            assert_eq!(sum(&out[..20]), 0xffff, "IP header checksum");
            assert_eq!(out[20..28], [3, 4, out[22], out[23], 0, 0, 0x05, 0x78]); // MTU 1400
            assert_eq!(sum(&out[20..]), 0xffff, "ICMP checksum");
            assert_eq!(&out[28..], &pkt[..quoted]);
        }
    }

    #[test]
    fn v6_packet_too_big() {
        for (len, quoted) in [(3000, 1232), (200, 200)] {
            let pkt = v6(17, len, CLIENT6);
            let mut out = Vec::new();
            assert!(too_big(&pkt, 1400, &mut out));
            assert_eq!(out.len(), 48 + quoted);
            assert!(out.len() <= 1280);
            assert_eq!((out[0], be16(&out, 4) as usize + 40), (0x60, out.len()));
            assert_eq!((out[6], out[7]), (PROTO_ICMPV6, 64));
            assert_eq!((&out[8..24], &out[24..40]), (&pkt[24..40], &pkt[8..24]));
            assert_eq!(out[40..48], [2, 0, out[42], out[43], 0, 0, 0x05, 0x78]); // MTU 1400
            let mut pseudo = out[8..40].to_vec();
            pseudo.extend_from_slice(&(out.len() as u32 - 40).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
            pseudo.extend_from_slice(&out[40..]);
            assert_eq!(sum(&pseudo), 0xffff, "ICMPv6 checksum");
            assert_eq!(&out[48..], &pkt[..quoted]);
        }
    }

    #[test]
    fn no_error_where_the_rfcs_forbid_one() {
        let mut out = Vec::new();
        let mut echo = v4(PROTO_ICMP, 1500, DF, [10, 0, 0, 1], &[]);
        echo[20] = 8;
        assert!(too_big(&echo, 1400, &mut out), "echo requests are answered");
        let mut rejected = Vec::new();
        for t in [3, 4, 5, 11, 12] {
            let mut p = echo.clone();
            p[20] = t;
            rejected.push(p);
        }
        for src in [[0; 4], [224, 0, 0, 5], [255; 4], [127, 0, 0, 1]] {
            rejected.push(v4(17, 1500, DF, src, &[]));
        }
        rejected.push(v4(17, 1500, 185, [10, 0, 0, 1], &[])); // non-first fragment
        rejected.push(echo[..1499].to_vec()); // malformed
        let mut hbh = v6(0, 1500, CLIENT6); // ICMPv6 error behind hop-by-hop options
        hbh[40..50].copy_from_slice(&[PROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0, 1, 0]);
        rejected.push(hbh);
        let mut frag = v6(44, 1500, CLIENT6); // non-first fragment
        frag[40..44].copy_from_slice(&[17, 0, 0x05, 0x01]);
        rejected.push(frag);
        for src in ["::", "::1", "ff02::1"] {
            rejected.push(v6(17, 1500, src.parse().unwrap()));
        }
        let mut icmp6 = v6(PROTO_ICMPV6, 1500, CLIENT6);
        icmp6[40] = 128; // echo request
        assert!(too_big(&icmp6, 1400, &mut out), "echo requests too");
        icmp6[40] = 1; // destination unreachable
        rejected.push(icmp6);
        rejected.push(vec![0x50; 60]);
        for (i, p) in rejected.iter().enumerate() {
            out = vec![1, 2, 3];
            assert!(!too_big(p, 1400, &mut out), "case {i}");
            assert!(out.is_empty(), "case {i}");
        }
    }

    fn fragments(pkt: &[u8], mtu: u16) -> Vec<Vec<u8>> {
        let (mut frags, mut buf) = (Vec::new(), Vec::new());
        let n = fragment_v4(pkt, mtu, &mut buf, |f| frags.push(f.to_vec()));
        assert_eq!(n, frags.len());
        frags
    }

    #[test]
    fn fragments_reassemble_to_the_original_or_are_refused() {
        // Record route (not copied), a NOP, then router alert (copied).
        let opts = [7, 7, 4, 0, 0, 0, 0, 1, 0x94, 4, 0, 0];
        for (opts, later_ihl) in [(&[][..], 20), (&opts[..], 24)] {
            let pkt = v4(17, 3000, 0, [10, 0, 0, 1], opts);
            let ihl = 20 + opts.len();
            let frags = fragments(&pkt, 1400);
            assert_eq!(frags.len(), 3);
            let mut data = Vec::new();
            for (i, f) in frags.iter().enumerate() {
                let fl = usize::from(f[0] & 0xf) * 4;
                assert!(f.len() <= 1400);
                assert_eq!(fl, if i == 0 { ihl } else { later_ihl });
                assert_eq!(be16(f, 2) as usize, f.len());
                assert_eq!(sum(&f[..fl]), 0xffff, "header checksum of fragment {i}");
                assert_eq!(&f[4..6], &pkt[4..6], "identification");
                assert_eq!(usize::from(be16(f, 6) & OFFSET) * 8, data.len());
                assert_eq!(be16(f, 6) & MF != 0, i < 2);
                assert!(i == 2 || (f.len() - fl) % 8 == 0);
                assert_eq!(&f[12..20], &pkt[12..20]);
                data.extend_from_slice(&f[fl..]);
            }
            assert_eq!(
                &frags[0][20..ihl],
                &pkt[20..ihl],
                "all options in the first"
            );
            if !opts.is_empty() {
                assert_eq!(&frags[1][20..24], &[0x94, 4, 0, 0]);
            }
            assert_eq!(data, &pkt[ihl..]);
            // Fragments fragmented again reassemble by offset, with MF clear only on
            // the piece at the very end.
            let mut whole = vec![0; data.len()];
            let pieces: Vec<_> = frags.iter().flat_map(|f| fragments(f, 600)).collect();
            assert_eq!(pieces.len(), 7);
            for (i, f) in pieces.iter().enumerate() {
                let fl = usize::from(f[0] & 0xf) * 4;
                let off = usize::from(be16(f, 6) & OFFSET) * 8;
                whole[off..off + f.len() - fl].copy_from_slice(&f[fl..]);
                assert_eq!(be16(f, 6) & MF == 0, i == 6);
            }
            assert_eq!(whole, data);
        }
        assert!(fragments(&v4(17, 3000, DF, [10, 0, 0, 1], &[]), 1400).is_empty());
        assert!(fragments(&v4(17, 3000, 0, [10, 0, 0, 1], &[]), 27).is_empty());
        let bad_opt = v4(17, 3000, 0, [10, 0, 0, 1], &[0x94, 9, 0, 0]);
        assert!(fragments(&bad_opt, 1400).is_empty());
        assert!(fragments(&v6(17, 3000, CLIENT6), 1400).is_empty());
        assert_eq!(fragments(&v4(17, 28, 0, [10, 0, 0, 1], &[]), 28).len(), 1);
    }
}
