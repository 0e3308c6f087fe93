//! DATA packets: the tunnel's payload, sealed end to end between client and exit.
//!
//! The gateway's XDP relay forwards these without keys, so everything a receiver must
//! trust (session id, counter) sits in the header, which is the AEAD's associated data.
//! The counter doubles as the nonce, which is why each direction has its own key and
//! receivers keep a [`ReplayWindow`]: a repeated counter must never be accepted twice.

use std::fmt;

use jvpn_common::wire::{HEADER_LEN, TAG_LEN, WireHeader, msg_type};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::ProtoError;

/// A ChaCha20-Poly1305 key for one direction of one session (`k_c2x` or `k_x2c`).
pub struct DataKey(LessSafeKey);

impl DataKey {
    pub fn new(key: &[u8; 32]) -> Self {
        // Only a wrong key length can fail, and the type rules that out.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key");
        DataKey(LessSafeKey::new(unbound))
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Appends header(DATA, session_id, counter) ‖ ciphertext ‖ tag to `out` (clears `out` first).
///
/// The caller must never reuse a counter under the same key.
pub fn seal(key: &DataKey, session_id: u64, counter: u64, plaintext: &[u8], out: &mut Vec<u8>) {
    let header = WireHeader::new(msg_type::DATA, session_id, counter).to_bytes();
    out.clear();
    out.reserve(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(plaintext);
    // ChaCha20-Poly1305 only refuses inputs of ~256 GiB; a packet never comes close.
    let tag = key
        .0
        .seal_in_place_separate_tag(nonce(counter), Aad::from(header), &mut out[HEADER_LEN..])
        .expect("DATA plaintext within the AEAD length limit");
    out.extend_from_slice(tag.as_ref());
}

/// Authenticates and decrypts in place; returns (session_id, counter, plaintext slice).
///
/// Only authenticity is checked: call [`ReplayWindow::update`] with the counter after
/// this succeeds.
pub fn open<'a>(key: &DataKey, packet: &'a mut [u8]) -> Result<(u64, u64, &'a [u8]), ProtoError> {
    let (h, _) = WireHeader::parse(packet)?;
    if h.msg_type != msg_type::DATA {
        return Err(ProtoError::WrongType {
            expected: "DATA",
            got: h.msg_type,
        });
    }
    let (header, body) = packet.split_at_mut(HEADER_LEN);
    let plaintext = key
        .0
        .open_in_place(nonce(h.counter()), Aad::from(&*header), body)
        .map_err(|_| ProtoError::Decrypt)?;
    Ok((h.session_id(), h.counter(), plaintext))
}

/// Header-only peek for dispatch (session id) before choosing the key.
pub fn peek_session(packet: &[u8]) -> Result<u64, ProtoError> {
    let (h, _) = WireHeader::parse(packet)?;
    if h.msg_type != msg_type::DATA {
        return Err(ProtoError::WrongType {
            expected: "DATA",
            got: h.msg_type,
        });
    }
    Ok(h.session_id())
}

/// Packets accepted behind the highest counter seen.
pub const REPLAY_WINDOW: u64 = 8192;
const WORD_BITS: u64 = 64;
/// One word more than the window needs, so that advancing never clears a word that
/// still holds in-window bits (RFC 6479 §2).
const WORDS: usize = (REPLAY_WINDOW / WORD_BITS) as usize + 1;

/// Sliding anti-replay bitmap over the last [`REPLAY_WINDOW`] counters (RFC 6479):
/// reordering within the window is tolerated, duplicates and older counters are not.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter recorded (0 before the first one; bit 0 tells them apart).
    highest: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        ReplayWindow {
            highest: 0,
            bitmap: [0; WORDS],
        }
    }

    fn slot(counter: u64) -> (usize, u64) {
        // The remainder is < WORDS (129), so the cast cannot truncate.
        let word = ((counter / WORD_BITS) % WORDS as u64) as usize;
        (word, 1u64 << (counter % WORD_BITS))
    }

    /// Would `counter` be accepted? (Does not record it.)
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        if self.highest - counter >= REPLAY_WINDOW {
            return false;
        }
        let (w, bit) = Self::slot(counter);
        self.bitmap[w] & bit == 0
    }

    /// Checks and records `counter`; false = replay or too old.
    pub fn update(&mut self, counter: u64) -> bool {
        if counter > self.highest {
            let cur = self.highest / WORD_BITS;
            let new = counter / WORD_BITS;
            let advance = (new - cur).min(WORDS as u64);
            for i in 1..=advance {
                self.bitmap[((cur + i) % WORDS as u64) as usize] = 0;
            }
            self.highest = counter;
        } else if self.highest - counter >= REPLAY_WINDOW {
            return false;
        }
        let (w, bit) = Self::slot(counter);
        if self.bitmap[w] & bit != 0 {
            return false;
        }
        self.bitmap[w] |= bit;
        true
    }
}

/// DATA framing around an inner packet: jvpn header and AEAD tag.
pub const DATA_OVERHEAD: u16 = (HEADER_LEN + TAG_LEN) as u16;

/// Outer IP + UDP header bytes of a datagram over IPv6 (`v6`) or IPv4.
pub const fn ip_udp_len(v6: bool) -> u16 {
    if v6 { 48 } else { 28 }
}

/// The largest inner packet a path of `path_mtu` (outer IP packet size) carries whole.
pub const fn inner_mtu(path_mtu: u16, v6: bool) -> u16 {
    path_mtu.saturating_sub(ip_udp_len(v6) + DATA_OVERHEAD)
}

/// Messages inside the tunnel that are not IP packets: the first plaintext byte is 0
/// (an IP packet starts with version 4 or 6). They ride in DATA, so they are
/// encrypted, authenticated and replay-checked like tunnel traffic, and reach the
/// exit without the gateway seeing them.
pub mod tunnel_ctl {
    /// `0 ‖ MTU_NOTICE ‖ mtu u16`: the client's tunnel MTU (its bound path), so the
    /// exit sends nothing larger towards it.
    pub const MTU_NOTICE: u8 = 1;
    pub const LEN: usize = 4;

    pub fn mtu_notice(mtu: u16) -> [u8; LEN] {
        let m = mtu.to_be_bytes();
        [0, MTU_NOTICE, m[0], m[1]]
    }

    /// `Some(mtu)` for a well-formed MTU notice.
    pub fn parse_mtu_notice(plain: &[u8]) -> Option<u16> {
        match plain {
            [0, MTU_NOTICE, a, b] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::fuzz;

    fn key(b: u8) -> DataKey {
        DataKey::new(&[b; 32])
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let mut out = vec![9u8; 3];
        for pt in [&b""[..], b"x", &[0xaa; 1400][..]] {
            seal(&k, 42, 7, pt, &mut out);
            assert_eq!(out.len(), HEADER_LEN + pt.len() + TAG_LEN);
            assert_eq!(peek_session(&out).unwrap(), 42);
            let (sid, ctr, got) = open(&k, &mut out).unwrap();
            assert_eq!((sid, ctr, got), (42, 7, pt));
        }
    }

    #[test]
    fn wrong_key_and_wrong_type_fail() {
        let mut out = Vec::new();
        seal(&key(1), 42, 7, b"hello", &mut out);
        assert!(matches!(
            open(&key(2), &mut out.clone()),
            Err(ProtoError::Decrypt)
        ));
        let mut ka = out.clone();
        ka[1] = msg_type::KEEPALIVE;
        assert!(matches!(
            open(&key(1), &mut ka),
            Err(ProtoError::WrongType { .. })
        ));
        assert!(matches!(
            peek_session(&ka),
            Err(ProtoError::WrongType { .. })
        ));
    }

    #[test]
    fn fuzz_open() {
        let k = key(3);
        let mut valid = Vec::new();
        seal(
            &k,
            0x1122_3344_5566_7788,
            99,
            b"some tunnel payload",
            &mut valid,
        );
        fuzz::authenticated(&valid, |b| open(&k, &mut b.to_vec()).is_ok());
        // peek only looks at the header: it must merely never panic.
        fuzz::never_panics(&valid, |b| {
            let _ = peek_session(b);
        });
    }

    #[test]
    fn replay_in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        assert!(w.check(0));
        assert!(w.update(0));
        assert!(!w.check(0));
        assert!(!w.update(0));
        for c in 1..20_000 {
            assert!(w.update(c), "{c}");
            assert!(!w.update(c), "{c}");
        }
    }

    #[test]
    fn replay_out_of_order_within_window() {
        let mut w = ReplayWindow::new();
        assert!(w.update(10_000));
        // Everything in (10000 - 8192, 10000) is still acceptable, once, in any order.
        for c in (10_000 - REPLAY_WINDOW + 1..10_000).rev().step_by(3) {
            assert!(w.check(c), "{c}");
            assert!(w.update(c), "{c}");
            assert!(!w.update(c), "{c}");
        }
        assert!(!w.update(10_000 - REPLAY_WINDOW), "exactly one window old");
        assert!(!w.update(5));
        // Interleaved: skipped counters stay acceptable.
        let mut w = ReplayWindow::new();
        for c in (0..1000).step_by(2) {
            assert!(w.update(c));
        }
        for c in (1..1000).step_by(2) {
            assert!(w.update(c));
        }
        for c in 0..1000 {
            assert!(!w.check(c));
        }
    }

    #[test]
    fn replay_too_old_and_big_jumps() {
        let mut w = ReplayWindow::new();
        assert!(w.update(1));
        assert!(w.update(1_000_000));
        assert!(!w.update(1), "fell out of the window");
        assert!(!w.check(1_000_000 - REPLAY_WINDOW));
        assert!(w.check(1_000_000 - REPLAY_WINDOW + 1));
        // A jump of exactly one window and of a bit more than the bitmap clears stale bits.
        for jump in [
            1,
            63,
            64,
            65,
            REPLAY_WINDOW - 1,
            REPLAY_WINDOW,
            REPLAY_WINDOW + 64,
            3 * REPLAY_WINDOW,
        ] {
            let mut w = ReplayWindow::new();
            let base = 50_000u64;
            for c in base - 200..=base {
                assert!(w.update(c));
            }
            assert!(w.update(base + jump));
            for c in base - 200..=base {
                // Seen and still in the window, or fallen out: refused either way.
                assert!(!w.check(c), "seen {c} jump {jump}");
            }
            // Counters between base and base+jump were never seen.
            for c in (base + 1..base + jump).filter(|c| base + jump - c < REPLAY_WINDOW) {
                assert!(w.check(c), "unseen {c} jump {jump}");
            }
        }
    }

    #[test]
    fn replay_counter_zero_after_others() {
        let mut w = ReplayWindow::new();
        assert!(w.update(5));
        assert!(w.update(0), "0 is within the window and unseen");
        assert!(!w.update(0));
    }

    #[test]
    fn replay_u64_max_edge() {
        let mut w = ReplayWindow::new();
        assert!(w.update(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(w.update(u64::MAX - 1));
        assert!(w.update(u64::MAX - (REPLAY_WINDOW - 1)));
        assert!(!w.update(u64::MAX - REPLAY_WINDOW));
        assert!(!w.update(0));
        assert!(!w.check(u64::MAX));
    }

    #[test]
    fn replay_matches_a_reference_model() {
        use std::collections::BTreeSet;
        let mut w = ReplayWindow::new();
        let mut seen = BTreeSet::new();
        let mut highest = 0u64;
        let mut rng = fuzz::Rng(0x5eed);
        let mut base = 0u64;
        for _ in 0..200_000 {
            let r = rng.next();
            if r.is_multiple_of(97) {
                base += r % 20_000;
            }
            let c = (base + r % 10_000).saturating_sub(5_000);
            let expect = !seen.contains(&c) && (c > highest || highest - c < REPLAY_WINDOW);
            assert_eq!(w.check(c), expect, "check {c}");
            assert_eq!(w.update(c), expect, "update {c}");
            if expect {
                seen.insert(c);
                highest = highest.max(c);
            }
        }
    }
}
