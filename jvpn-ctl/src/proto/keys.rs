//! Session keys: one HKDF expansion per handshake, bound to the whole transcript, so
//! both ends derive the same keys only if they saw the same HELLO and WELCOME.

use std::fmt;

use ring::{hkdf, hmac};

const INFO: &[u8] = b"jvpn-v1 keys";

/// The three keys of a session: `reattach` authenticates control messages (gateway
/// only), `c2x`/`x2c` seal DATA client→exit / exit→client (handed to the exit).
#[derive(Clone)]
pub struct SessionKeys {
    pub reattach: [u8; 32],
    pub c2x: [u8; 32],
    pub x2c: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl SessionKeys {
    /// HKDF-SHA256(salt = transcript, ikm = shared, info = "jvpn-v1 keys") → 96 bytes.
    pub fn derive(shared: &[u8], transcript: &[u8; 32]) -> SessionKeys {
        let mut okm = [0u8; 96];
        // Only output lengths above 255 hash blocks can fail.
        hkdf::Salt::new(hkdf::HKDF_SHA256, transcript)
            .extract(shared)
            .expand(&[INFO], Len(okm.len()))
            .and_then(|o| o.fill(&mut okm))
            .expect("96 bytes is a valid HKDF-SHA256 output length");
        let mut k = SessionKeys {
            reattach: [0; 32],
            c2x: [0; 32],
            x2c: [0; 32],
        };
        k.reattach.copy_from_slice(&okm[..32]);
        k.c2x.copy_from_slice(&okm[32..64]);
        k.x2c.copy_from_slice(&okm[64..]);
        okm.fill(0);
        k
    }

    /// The HMAC-SHA256 key of every control-message MAC.
    pub fn mac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.reattach)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_deterministic_and_separates_inputs() {
        let a = SessionKeys::derive(&[1; 32], &[2; 32]);
        let b = SessionKeys::derive(&[1; 32], &[2; 32]);
        assert_eq!(
            (a.reattach, a.c2x, a.x2c),
            (b.reattach, b.c2x, b.x2c),
            "deterministic"
        );
        assert!(a.reattach != a.c2x && a.c2x != a.x2c && a.reattach != a.x2c);
        let c = SessionKeys::derive(&[1; 32], &[3; 32]);
        let d = SessionKeys::derive(&[4; 32], &[2; 32]);
        assert_ne!(a.reattach, c.reattach);
        assert_ne!(a.reattach, d.reattach);
        assert_eq!(format!("{a:?}"), "SessionKeys(<redacted>)");
    }

    #[test]
    fn matches_rfc5869_construction() {
        // HKDF-Extract = HMAC(salt, ikm); T(1) = HMAC(prk, info ‖ 0x01), ...
        let (shared, transcript) = ([9u8; 32], [5u8; 32]);
        let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &transcript), &shared);
        let prk = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
        let t1 = hmac::sign(&prk, &[INFO, &[1]].concat());
        let t2 = hmac::sign(&prk, &[t1.as_ref(), INFO, &[2]].concat());
        let k = SessionKeys::derive(&shared, &transcript);
        assert_eq!(&k.reattach[..], t1.as_ref());
        assert_eq!(&k.c2x[..], t2.as_ref());
    }
}
