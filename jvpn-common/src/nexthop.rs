//! A `NEXT_HOPS` entry: where a relayed packet leaves (egress interface, source and
//! destination MAC, MTU), kept by the controller from rtnetlink (docs/datapath.md,
//! "Next hops").
//!
//! The controller writes entries through a shared mapping of the array while the
//! relay reads them, with no lock. Every 8-byte word carries the entry's 16-bit
//! generation, and a reader accepts an entry only when all three words carry the
//! same nonzero one: aligned 8-byte loads and stores are single-copy atomic on every
//! 64-bit CPU, so an entry seen with one generation in every word was written whole
//! by that update, whatever the memory ordering. A torn read (an update in progress)
//! or an invalidated entry (generation 0) sends the packet down the slow path.

/// Capacity of `NEXT_HOPS`. Index 0 is never used: a `SessionEntry` hop of 0 means
/// "none", so indices fit the entry's `u16` fields.
pub const NEXT_HOPS_MAX: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `dmac[6] ‖ gen`, `smac[6] ‖ gen`, `ifindex[4] ‖ mtu[2] ‖ gen`, all
    /// little-endian byte strings in a native `u64` read as bytes; the fourth word
    /// is zero (two entries per cache line, none straddling one).
    pub words: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<NextHop>() == 32);

/// A valid entry's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Largest IP packet (header included) the hop takes.
    pub mtu: u16,
}

#[inline(always)]
const fn word(b: [u8; 6], gen_: u16) -> u64 {
    let g = gen_.to_ne_bytes();
    u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], g[0], g[1]])
}

#[inline(always)]
const fn generation(w: u64) -> u16 {
    let b = w.to_ne_bytes();
    u16::from_ne_bytes([b[6], b[7]])
}

#[inline(always)]
const fn six(w: u64) -> [u8; 6] {
    let b = w.to_ne_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

impl NextHop {
    /// The three words of `hop` at generation `gen_` (nonzero).
    pub const fn encode(hop: &Hop, gen_: u16) -> [u64; 3] {
        let i = hop.ifindex.to_ne_bytes();
        let m = hop.mtu.to_ne_bytes();
        [
            word(hop.dmac, gen_),
            word(hop.smac, gen_),
            word([i[0], i[1], i[2], i[3], m[0], m[1]], gen_),
        ]
    }

    /// The entry the three words (read one load each) describe, if they agree on a
    /// nonzero generation.
    #[inline(always)]
    pub const fn decode(w: [u64; 3]) -> Option<Hop> {
        let g = generation(w[0]);
        if g == 0 || generation(w[1]) != g || generation(w[2]) != g {
            return None;
        }
        let t = six(w[2]);
        Some(Hop {
            ifindex: u32::from_ne_bytes([t[0], t[1], t[2], t[3]]),
            smac: six(w[1]),
            dmac: six(w[0]),
            mtu: u16::from_ne_bytes([t[4], t[5]]),
        })
    }

    /// The generation one word carries (an invalidated third word carries 0).
    pub const fn word_generation(w: u64) -> u16 {
        generation(w)
    }

    /// `w` with its generation 0: written as the third word, it invalidates the entry.
    pub const fn invalidated(w: u64) -> u64 {
        let b = w.to_ne_bytes();
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], 0, 0])
    }

    /// The generation of an entry's words, if they agree (0: invalid).
    pub const fn generation_of(w: [u64; 3]) -> u16 {
        match Self::decode(w) {
            Some(_) => generation(w[0]),
            None => 0,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: four integers, any bit pattern is valid.
unsafe impl aya::Pod for NextHop {}

#[cfg(test)]
mod tests {
    use super::*;

    const HOP: Hop = Hop {
        ifindex: 0x0102_0304,
        smac: [2, 0, 0, 0, 0, 1],
        dmac: [2, 0, 0, 0, 0, 2],
        mtu: 1500,
    };

    #[test]
    fn round_trips_and_refuses_mixed_or_zero_generations() {
        let w = NextHop::encode(&HOP, 7);
        assert_eq!(NextHop::decode(w), Some(HOP));
        assert_eq!(NextHop::generation_of(w), 7);
        let newer = NextHop::encode(
            &Hop {
                dmac: [2, 0, 0, 0, 0, 9],
                ..HOP
            },
            8,
        );
        // Every mix of an old and a new update is refused (a torn read).
        for mask in 1..7u8 {
            let mix: [u64; 3] =
                core::array::from_fn(|i| if mask & (1 << i) != 0 { newer[i] } else { w[i] });
            assert_eq!(NextHop::decode(mix), None, "mask {mask:03b}");
        }
        assert_eq!(NextHop::decode(NextHop::encode(&HOP, 0)), None);
        let mut inval = w;
        inval[2] = NextHop::invalidated(w[2]);
        assert_eq!(NextHop::decode(inval), None, "invalidated by one word");
        assert_eq!(NextHop::decode([0; 3]), None, "an empty slot");
    }
}
