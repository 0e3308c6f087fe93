//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Words are taken big-endian. Loops have fixed trip counts so the BPF verifier and
//! LLVM can unroll them.

/// Adds the 16-bit big-endian words of `b` to a 32-bit accumulator.
#[inline(always)]
pub fn sum_words<const N: usize>(mut acc: u32, b: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    acc
}

/// Adds the ones' complement of every word of `b` (the "subtract" of RFC 1624).
#[inline(always)]
pub fn sub_words<const N: usize>(mut acc: u32, b: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u32::from(!u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    acc
}

/// Adds the 16-bit big-endian words of a slice of any length (an odd last byte is
/// padded with zero, as RFC 768 says). Userspace only: the loop bound is not constant.
pub fn sum_bytes(acc: u32, b: &[u8]) -> u32 {
    let mut acc = u64::from(acc);
    let mut words = b.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    // Ones' complement folding keeps the value (mod 0xffff) and makes it fit.
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Folds a 32-bit accumulator into 16 bits. Three rounds suffice for any u32.
#[inline(always)]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The IPv4 header checksum of a header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(hdr: &[u8; 20]) -> u16 {
    !fold(sum_words(0, hdr))
}

/// What changes between the incoming and outgoing UDP pseudo-header and header.
///
/// Addresses are `N`-byte arrays. With `N` = 16, IPv4 sits in the first four bytes
/// with zeros after: zero words add nothing to a ones' complement sum, so one formula
/// covers IPv4, IPv6 and mixed rewrites. `N` = 4 is the same sum without the zero
/// words, for an IPv4-only rewrite (a quarter of the work in the fast path). The UDP
/// length and protocol sum to the same value in the IPv4 and IPv6 pseudo-headers, so
/// they do not appear.
pub struct Rewrite<'a, const N: usize> {
    pub old_src: &'a [u8; N],
    pub old_dst: &'a [u8; N],
    pub old_ports: [u8; 4],
    pub new_src: &'a [u8; N],
    pub new_dst: &'a [u8; N],
    pub new_ports: [u8; 4],
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`, over every changed word.
/// `old` is the checksum as it was on the wire, and must be nonzero (present).
#[inline(always)]
pub fn udp_update<const N: usize>(old: u16, r: &Rewrite<'_, N>) -> u16 {
    let mut acc = u32::from(!old);
    acc = sub_words(acc, r.old_src);
    acc = sub_words(acc, r.old_dst);
    acc = sub_words(acc, &r.old_ports);
    acc = sum_words(acc, r.new_src);
    acc = sum_words(acc, r.new_dst);
    acc = sum_words(acc, &r.new_ports);
    match !fold(acc) {
        // RFC 768: a computed zero is sent as all ones; zero means "no checksum".
        0 => 0xffff,
        c => c,
    }
}

/// The UDP checksum after an `N`-byte field of the datagram changed from `old` to
/// `new` (RFC 1624 eqn. 3). `check` is the checksum on the wire and must be nonzero;
/// the field must start at an even offset of the UDP header.
#[inline(always)]
pub fn udp_replace<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let acc = sum_words(sub_words(u32::from(!check), old), new);
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// The full UDP checksum of `udp` (header, checksum field zero, and payload) between
/// `src` and `dst`, both 4 or both 16 bytes. Zero comes out as `0xffff` (RFC 768).
pub fn udp_full(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut acc = sum_bytes(0, src);
    acc = sum_bytes(acc, dst);
    // Protocol and length: the same words in the IPv4 and the IPv6 pseudo-header.
    acc += u32::from(crate::headers::IPPROTO_UDP) + udp.len() as u32;
    acc = sum_bytes(acc, udp);
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The example of RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(0, &b)), 0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // A header from Wikipedia's "IPv4 header checksum" article: checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00,
            0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(sum_words(0, &h)), 0xffff);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(sum_bytes(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        let long = [0xffu8; 70_001];
        // Folding twice must give the same as a byte-by-byte RFC 1071 sum.
        let mut reference: u64 = 0;
        for w in long.chunks(2) {
            reference += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while reference > 0xffff {
            reference = (reference & 0xffff) + (reference >> 16);
        }
        assert_eq!(u64::from(fold(sum_bytes(0, &long))), reference);
    }

    #[test]
    fn replacing_a_field_matches_a_full_recompute() {
        let src = [10, 0, 0, 1];
        let dst = [10, 0, 0, 2];
        let mut udp = [0u8; 44];
        udp[..8].copy_from_slice(&[0x9c, 0x40, 0xca, 0x6c, 0, 44, 0, 0]);
        for (i, b) in udp[8..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(73).wrapping_add(5);
        }
        let mut check = udp_full(&src, &dst, &udp);
        // Walk through many values, including the ones that make the sum all ones.
        for v in (0u64..5_000).chain([u64::MAX, 0xffff, 0x1_0000, 0]) {
            let old: [u8; 8] = udp[12..20].try_into().unwrap();
            let new = v.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
            udp[12..20].copy_from_slice(&new);
            check = udp_replace(check, &old, &new);
            assert_eq!(check, udp_full(&src, &dst, &udp), "value {v}");
        }
    }
}
