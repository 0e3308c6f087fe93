//! The simulated network: datagrams between addresses, delivered in virtual time.
//! It loses, delays, reorders, duplicates and partitions by the knobs of
//! [`Faults`], every choice drawn from the one seeded RNG of the world, so a run
//! replays from its seed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

/// The simulation's one source of randomness ([`crate::splitmix`]).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        crate::splitmix::next(&mut self.0)
    }

    /// `true` with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next_u64() % 1000 < u64::from(per_mille)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi.saturating_sub(lo) + 1)
    }
}

/// What the network does to every datagram (per mille and milliseconds).
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub loss: u32,
    pub duplicate: u32,
    pub delay_ms: (u64, u64),
    /// Some datagrams take `reorder_ms` longer, so later ones overtake them.
    pub reorder: u32,
    pub reorder_ms: u64,
}

impl Default for Faults {
    /// A clean link with a little jitter (so that seeds differ).
    fn default() -> Self {
        Self {
            loss: 0,
            duplicate: 0,
            delay_ms: (1, 4),
            reorder: 0,
            reorder_ms: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Datagrams in flight, by delivery time (and send order within a millisecond).
#[derive(Default)]
pub struct Net {
    queue: BTreeMap<(u64, u64), Datagram>,
    seq: u64,
    /// Faults of the links from an address (default for the rest).
    pub faults: BTreeMap<SocketAddr, Faults>,
    pub default_faults: Faults,
    /// Addresses that neither send nor receive (a dead link).
    pub down: BTreeSet<SocketAddr>,
    pub sent: u64,
    pub lost: u64,
    /// Datagrams sent to each address (what an attacker's address was answered).
    pub sent_to: BTreeMap<SocketAddr, u64>,
}

impl Net {
    pub fn send(&mut self, rng: &mut Rng, now: u64, d: Datagram) {
        self.sent += 1;
        *self.sent_to.entry(d.to).or_default() += 1;
        if self.down.contains(&d.from) || self.down.contains(&d.to) {
            self.lost += 1;
            return;
        }
        let f = *self.faults.get(&d.from).unwrap_or(&self.default_faults);
        if rng.chance(f.loss) {
            self.lost += 1;
            return;
        }
        let copies = if rng.chance(f.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = now + rng.between(f.delay_ms.0, f.delay_ms.1);
            if rng.chance(f.reorder) {
                at += f.reorder_ms;
            }
            self.seq += 1;
            self.queue.insert((at, self.seq), d.clone());
        }
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Datagram> {
        let (&key, _) = self.queue.first_key_value()?;
        if key.0 > now {
            return None;
        }
        let d = self.queue.remove(&key)?;
        // A link that went down meanwhile loses what was in flight on it.
        if self.down.contains(&d.to) {
            self.lost += 1;
            return self.pop_due(now);
        }
        Some(d)
    }

    pub fn next_due(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(k, _)| k.0)
    }
}
