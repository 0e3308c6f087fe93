//! Where the controller's random values come from (session ids, challenges, PING
//! nonces): the system RNG, or, for the deterministic simulation and the fuzz
//! targets only, a seeded SplitMix64 so that a run replays from its seed. Seeded
//! values are predictable, so only [`super::Core::seeded`] makes one, and the daemon
//! never calls it. X25519 ephemeral keys always come from ring's system RNG (ring
//! takes no other source); nothing the controller decides depends on their value.

use std::cell::Cell;

use ring::rand::{SecureRandom as _, SystemRandom};

pub(super) enum Entropy {
    System(SystemRandom),
    Seeded(Cell<u64>),
}

impl Entropy {
    pub(super) fn fill(&self, out: &mut [u8]) {
        match self {
            Entropy::System(r) => r.fill(out).expect("the system RNG works"),
            Entropy::Seeded(state) => {
                for chunk in out.chunks_mut(8) {
                    let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
                    state.set(z);
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_seeds_differ() {
        let draw = |seed| {
            let e = Entropy::Seeded(Cell::new(seed));
            let mut b = [0u8; 20];
            e.fill(&mut b);
            b
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mut a = [0u8; 20];
        Entropy::System(SystemRandom::new()).fill(&mut a);
        assert_ne!(a, [0u8; 20]);
    }
}
