//! Gateway-wide defences that sit outside the per-session state machine: the HELLO
//! nonce cache, the source blacklists, and the per-session reply budget.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use ipnet::IpNet;

/// Nonces seen within the freshness window. Bounded: when full of unexpired entries a
/// new nonce is refused (`insert` returns false) rather than evicting one that could
/// then be replayed.
pub struct NonceCache {
    cap: usize,
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<(u64, [u8; 16])>,
}

/// A per-session budget of KEEPALIVE answers to addresses that are not the binding.
/// The answers are no larger than the KEEPALIVEs and each KEEPALIVE is accepted once,
/// so this only bounds what a session's own traffic — or someone racing it with
/// captured copies — can draw; sized for a client probing a few standby transports
/// and its path MTU.
///
/// `CAP` is the burst; the gateway-wide budget of TIME replies is another one
/// ([`TimeBudget`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket<const CAP: u32 = 16> {
    tokens: u32,
    at_ms: u64,
}

/// The gateway's budget of TIME replies (each costs a signature): a burst of 20, one
/// token back every [`TIME_EVERY_MS`] (100 a second).
pub type TimeBudget = TokenBucket<20>;
pub const TIME_EVERY_MS: u64 = 10;

impl<const CAP: u32> TokenBucket<CAP> {
    pub const CAPACITY: u32 = CAP;

    pub fn full(now_ms: u64) -> Self {
        Self {
            tokens: Self::CAPACITY,
            at_ms: now_ms,
        }
    }

    /// Takes one token if there is one; a token comes back every `every_ms`.
    pub fn take(&mut self, now_ms: u64, every_ms: u64) -> bool {
        let every = every_ms.max(1);
        let n = now_ms.saturating_sub(self.at_ms) / every;
        if n > 0 {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(n).min(Self::CAPACITY);
            self.at_ms = if self.tokens == Self::CAPACITY {
                now_ms
            } else {
                self.at_ms + u64::from(n) * every
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceVerdict {
    Fresh,
    Replay,
    Full,
}

impl NonceCache {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn insert(&mut self, nonce: [u8; 16], now_ms: u64, ttl_ms: u64) -> NonceVerdict {
        self.expire(now_ms);
        if self.seen.contains_key(&nonce) {
            return NonceVerdict::Replay;
        }
        if self.seen.len() >= self.cap {
            return NonceVerdict::Full;
        }
        let exp = now_ms.saturating_add(ttl_ms);
        self.seen.insert(nonce, exp);
        self.order.push_back((exp, nonce));
        NonceVerdict::Fresh
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(exp, n)) = self.order.front() {
            if exp > now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
    }
}

/// Static CIDR blacklist of candidate transports, plus a temporary ban of sources
/// that keep sending reattach requests with invalid proofs.
pub struct Blacklist {
    static_nets: Vec<IpNet>,
    after: u32,
    ban_ms: u64,
    cap: usize,
    /// source → (invalid proofs in the current window, window start, banned until)
    offenders: HashMap<IpAddr, (u32, u64, u64)>,
}

impl Blacklist {
    pub fn new(static_nets: Vec<IpNet>, after: u32, ban_s: u64) -> Self {
        Self {
            static_nets,
            after,
            ban_ms: ban_s.saturating_mul(1000),
            cap: 65_536,
            offenders: HashMap::new(),
        }
    }

    /// New settings from a reload; the sources banned so far stay banned until their
    /// ban ends.
    pub fn reconfigure(&mut self, static_nets: Vec<IpNet>, after: u32, ban_s: u64) {
        self.static_nets = static_nets;
        self.after = after;
        self.ban_ms = ban_s.saturating_mul(1000);
    }

    /// The candidate address may never become a binding.
    pub fn is_static(&self, a: IpAddr) -> bool {
        self.static_nets.iter().any(|n| n.contains(&a))
    }

    /// The source is temporarily banned: its requests are dropped before any crypto.
    pub fn is_banned(&self, a: IpAddr, now_ms: u64) -> bool {
        self.offenders
            .get(&a)
            .is_some_and(|&(_, _, until)| until > now_ms)
    }

    /// Records an invalid proof; returns true if this one got the source banned.
    pub fn invalid_proof(&mut self, a: IpAddr, now_ms: u64) -> bool {
        if self.after == 0 {
            return false;
        }
        if !self.offenders.contains_key(&a) && self.offenders.len() >= self.cap {
            return false;
        }
        let window = self.ban_ms.max(1);
        let e = self.offenders.entry(a).or_insert((0, now_ms, 0));
        if now_ms.saturating_sub(e.1) >= window {
            *e = (0, now_ms, e.2);
        }
        e.0 += 1;
        if e.0 >= self.after && e.2 <= now_ms {
            e.2 = now_ms.saturating_add(self.ban_ms);
            e.0 = 0;
            return true;
        }
        false
    }

    /// Forgets offenders whose window and ban are both over.
    pub fn purge(&mut self, now_ms: u64) {
        let window = self.ban_ms.max(1);
        self.offenders
            .retain(|_, &mut (_, start, until)| until > now_ms || now_ms - start < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_cache_detects_replay_and_expires() {
        let mut c = NonceCache::new(2);
        assert_eq!(c.insert([1; 16], 0, 100), NonceVerdict::Fresh);
        assert_eq!(c.insert([1; 16], 50, 100), NonceVerdict::Replay);
        assert_eq!(c.insert([2; 16], 50, 100), NonceVerdict::Fresh);
        assert_eq!(c.insert([3; 16], 60, 100), NonceVerdict::Full);
        assert_eq!(c.insert([3; 16], 100, 100), NonceVerdict::Fresh);
        assert_eq!(c.insert([1; 16], 101, 100), NonceVerdict::Full);
        assert_eq!(c.insert([1; 16], 150, 100), NonceVerdict::Fresh);
    }

    #[test]
    fn the_time_budget_bursts_then_refills_at_its_rate() {
        let mut b = TimeBudget::full(0);
        assert_eq!((0..25).filter(|_| b.take(0, TIME_EVERY_MS)).count(), 20);
        assert!(!b.take(9, TIME_EVERY_MS));
        assert!(b.take(10, TIME_EVERY_MS));
        assert!(!b.take(10, TIME_EVERY_MS));
        // A second later: 100 tokens came back, capped at the burst.
        assert_eq!(
            (0..150).filter(|_| b.take(1_010, TIME_EVERY_MS)).count(),
            20
        );
    }

    #[test]
    fn repeated_invalid_proofs_ban_a_source_for_a_while() {
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let mut b = Blacklist::new(vec!["192.0.2.0/24".parse().unwrap()], 3, 10);
        assert!(b.is_static("192.0.2.7".parse().unwrap()));
        assert!(!b.is_static(a));
        assert!(!b.invalid_proof(a, 0));
        assert!(!b.invalid_proof(a, 1));
        assert!(b.invalid_proof(a, 2));
        assert!(b.is_banned(a, 9_999));
        assert!(!b.is_banned(a, 10_002));
        b.purge(30_000);
        assert_eq!(b.offenders.len(), 0);
    }
}
