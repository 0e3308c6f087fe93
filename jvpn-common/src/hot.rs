//! The relay's fast copy of a session's entry: the first cache line of its
//! `SESSION_STATS` slot, found from the session id alone (docs/datapath.md, "One
//! cache line per packet").
//!
//! A session whose id names its own slot (`id & slot_mask == stats_slot`; the
//! controller picks ids so that new sessions do) has its steering fields copied
//! here, next to its counters. The relay reads this line instead of walking
//! `SESSIONS`, so a packet touches one 128-byte slot (two adjacent lines, fetched
//! together) instead of a hash bucket, a hash element across two or three lines, and
//! the counters. `SESSIONS` stays the record: a packet whose id finds no valid copy
//! here (another session's slot, a torn read, a session without a copy) looks it up
//! there, as before.
//!
//! The copy is six words written through a shared mapping, each carrying the same
//! 16-bit generation, exactly as `NEXT_HOPS` entries ([`crate::nexthop`]): a reader
//! takes the copy only when every word carries one nonzero generation, so it never
//! acts on half of an update. The session id is part of the copy (the tag): a copy
//! left by a removed session, or written for another id, never matches.
//!
//! The gateway's own addresses and the exit's are few, so the copy names them by an
//! index into `ENDPOINTS` (written once per index, never rewritten while the pins
//! live) instead of holding three more 18-byte endpoints.

use crate::maps::{AF_INET, AF_INET6, Endpoint};

/// Words of a copy; the slot's first line holds them (the last two are zero).
pub const HOT_WORDS: usize = 6;
/// Capacity of `ENDPOINTS` (an index is one byte).
pub const ENDPOINTS_MAX: u32 = 256;

const FORWARDING: u8 = 1;
const CLIENT_V6: u8 = 2;

/// What a valid copy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hot {
    pub id: u64,
    pub forwarding: bool,
    /// The binding.
    pub client: Endpoint,
    /// `ENDPOINTS` indices of the gateway's address toward the client, the exit, and
    /// the gateway's address toward the exit.
    pub gw_client: u8,
    pub exit: u8,
    pub gw_exit: u8,
    pub client_hop: u16,
    pub exit_hop: u16,
}

const M48: u64 = (1 << 48) - 1;

/// The generation one word of a copy carries.
#[inline(always)]
pub const fn word_generation(w: u64) -> u16 {
    (w >> 48) as u16
}

#[inline(always)]
const fn addr_word(a: &[u8; 16], i: usize) -> u64 {
    u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]) as u64
}

// The layout, in the low 48 bits of each word (the generation in the top 16), chosen
// so that the relay decodes with shifts and masks, never byte by byte:
//   0: id[0..48]
//   1: id[48..64] ‖ addr[0..4] << 16
//   2: addr[4..8] ‖ port_be << 32
//   3: addr[8..12] ‖ flags << 32 ‖ gw_client << 40
//   4: addr[12..16] ‖ exit << 32 ‖ gw_exit << 40
//   5: client_hop ‖ exit_hop << 16
// (addr words are the address bytes read as a native u32, as `addr_eq` compares them).
impl Hot {
    /// The words of `self` at generation `gen_` (nonzero).
    pub const fn encode(&self, gen_: u16) -> [u64; HOT_WORDS] {
        let g = (gen_ as u64) << 48;
        let a = &self.client.addr;
        let flags = (if self.forwarding { FORWARDING } else { 0 })
            | (if self.client.family == AF_INET6 {
                CLIENT_V6
            } else {
                0
            });
        [
            (self.id & M48) | g,
            (self.id >> 48) | (addr_word(a, 0) << 16) | g,
            addr_word(a, 4) | ((self.client.port_be as u64) << 32) | g,
            addr_word(a, 8) | ((flags as u64) << 32) | ((self.gw_client as u64) << 40) | g,
            addr_word(a, 12) | ((self.exit as u64) << 32) | ((self.gw_exit as u64) << 40) | g,
            (self.client_hop as u64) | ((self.exit_hop as u64) << 16) | g,
        ]
    }

    /// The copy the words (one load each) describe, if they agree on a nonzero
    /// generation.
    #[inline(always)]
    pub fn decode(w: &[u64; HOT_WORDS]) -> Option<Hot> {
        let g = word_generation(w[0]);
        if g == 0
            || word_generation(w[1]) != g
            || word_generation(w[2]) != g
            || word_generation(w[3]) != g
            || word_generation(w[4]) != g
            || word_generation(w[5]) != g
        {
            return None;
        }
        let words: [u32; 4] = [(w[1] >> 16) as u32, w[2] as u32, w[3] as u32, w[4] as u32];
        // SAFETY: [u32; 4] and [u8; 16] have the same size, any bits are valid.
        let addr: [u8; 16] = unsafe { core::mem::transmute(words) };
        let flags = (w[3] >> 32) as u8;
        Some(Hot {
            id: (w[0] & M48) | ((w[1] & 0xffff) << 48),
            forwarding: flags & FORWARDING != 0,
            client: Endpoint {
                addr,
                port_be: (w[2] >> 32) as u16,
                family: if flags & CLIENT_V6 != 0 {
                    AF_INET6
                } else {
                    AF_INET
                },
                _pad: [0; 5],
            },
            gw_client: (w[3] >> 40) as u8,
            exit: (w[4] >> 32) as u8,
            gw_exit: (w[4] >> 40) as u8,
            client_hop: w[5] as u16,
            exit_hop: (w[5] >> 16) as u16,
        })
    }

    /// The generation of a copy's words if they agree (0: none, or torn).
    pub fn generation_of(w: &[u64; HOT_WORDS]) -> u16 {
        match Self::decode(w) {
            Some(_) => word_generation(w[0]),
            None => 0,
        }
    }
}

/// The generation after `g` (never 0, which means "no copy").
pub const fn next_generation(g: u16) -> u16 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot() -> Hot {
        Hot {
            id: 0x1122_3344_5566_7788,
            forwarding: true,
            client: Endpoint::v6(
                [0xfd, 0x77, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                40_000,
            ),
            gw_client: 3,
            exit: 7,
            gw_exit: 255,
            client_hop: 0x1234,
            exit_hop: 0xfffe,
        }
    }

    #[test]
    fn round_trips_both_families_and_refuses_mixed_or_zero_generations() {
        let h = hot();
        let w = h.encode(9);
        assert_eq!(Hot::decode(&w), Some(h));
        assert_eq!(Hot::generation_of(&w), 9);
        let v4 = Hot {
            client: Endpoint::v4([10, 77, 1, 2], 40_000),
            forwarding: false,
            ..h
        };
        assert_eq!(Hot::decode(&v4.encode(1)), Some(v4));
        let newer = Hot {
            client: Endpoint::v4([10, 77, 2, 2], 40_001),
            ..h
        }
        .encode(10);
        for mask in 1..(1u8 << HOT_WORDS) - 1 {
            let mix: [u64; HOT_WORDS] =
                core::array::from_fn(|i| if mask & (1 << i) != 0 { newer[i] } else { w[i] });
            assert_eq!(Hot::decode(&mix), None, "mask {mask:06b}");
        }
        assert_eq!(Hot::decode(&h.encode(0)), None);
        assert_eq!(Hot::decode(&[0; HOT_WORDS]), None, "an empty slot");
        assert_eq!(next_generation(u16::MAX), 1);
        assert_eq!(next_generation(0), 1);
    }
}
