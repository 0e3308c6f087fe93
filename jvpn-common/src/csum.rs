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
/// Addresses are 16-byte arrays (IPv4 in the first four, zeros after): zero words add
/// nothing to a ones' complement sum, so one formula covers IPv4, IPv6 and mixed
/// rewrites. The UDP length and protocol sum to the same value in the IPv4 and IPv6
/// pseudo-headers, so they do not appear.
pub struct Rewrite<'a> {
    pub old_src: &'a [u8; 16],
    pub old_dst: &'a [u8; 16],
    pub old_ports: [u8; 4],
    pub new_src: &'a [u8; 16],
    pub new_dst: &'a [u8; 16],
    pub new_ports: [u8; 4],
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`, over every changed word.
/// `old` is the checksum as it was on the wire, and must be nonzero (present).
#[inline(always)]
pub fn udp_update(old: u16, r: &Rewrite<'_>) -> u16 {
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
}
