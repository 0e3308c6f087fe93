//! Where the controller's random values come from (session ids, challenges, PING
//! nonces): the system RNG, or, for the deterministic simulation and the fuzz
//! targets only, a seeded SplitMix64 ([`crate::splitmix`]) so that a run replays from its seed. Seeded
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
                    let mut s = state.get();
                    let z = crate::splitmix::next(&mut s);
                    state.set(s);
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
