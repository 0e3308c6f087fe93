//! The gateway's sessionless answers to a HELLO it does not take (docs/protocol.md):
//!
//! * **TIME** (controller): the gateway's clock, signed, for a HELLO from an allowed
//!   peer whose signature verified but whose timestamp is outside the freshness
//!   window (or before the controller started). The client learns the offset between
//!   its clock and the gateway's and sends a new HELLO at once.
//! * **COOKIE** (XDP, under load): a source-address cookie the client appends to its
//!   next HELLO. Not authenticated: only the echoed nonce binds it to our HELLO.
//!
//! Both are smaller than the HELLO they answer (no amplification) and carry session
//! id 0.

use jvpn_common::wire::{
    COOKIE_LEN, COOKIE_MSG_LEN, HEADER_LEN, TIME_MSG_LEN, WireHeader, msg_type,
};
use ring::{
    digest,
    signature::{self, Ed25519KeyPair},
};

use super::{
    ProtoError, VerifiedHello,
    fields::{arr, fixed_control, u64_at},
};

const TIME_LABEL: &[u8] = b"jvpn-time-v1";
/// Where the TIME's signature starts.
const TIME_SIGNED: usize = TIME_MSG_LEN - 64;

// The reply-size rule (also asserted in `jvpn_common::wire`).
const _: () = assert!(TIME_MSG_LEN < super::handshake::HELLO_LEN);
const _: () = assert!(COOKIE_MSG_LEN < super::handshake::HELLO_LEN);

/// `"jvpn-time-v1" ‖ header ‖ gateway_ms ‖ nonce_echo ‖ H(HELLO)`.
fn time_signed_message(unsigned: &[u8], hello: &[u8]) -> Vec<u8> {
    let hello_hash = digest::digest(&digest::SHA256, hello);
    [TIME_LABEL, unsigned, hello_hash.as_ref()].concat()
}

/// A well-formed TIME whose signature has not been checked yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Time {
    pub ctr: u64,
    pub gateway_ms: u64,
    pub nonce_echo: [u8; 16],
    raw: [u8; TIME_MSG_LEN],
}

impl Time {
    /// Gateway: the TIME answering `hello` (a HELLO whose signature verified), with
    /// the gateway's time `gateway_ms` and its next control counter `ctr`.
    pub fn build(
        identity: &Ed25519KeyPair,
        hello: &VerifiedHello,
        ctr: u64,
        gateway_ms: u64,
    ) -> Vec<u8> {
        let mut t = Vec::with_capacity(TIME_MSG_LEN);
        t.extend_from_slice(&WireHeader::new(msg_type::TIME, 0, ctr).to_bytes());
        t.extend_from_slice(&gateway_ms.to_be_bytes());
        t.extend_from_slice(&hello.nonce);
        let sig = identity.sign(&time_signed_message(&t, hello.bytes()));
        t.extend_from_slice(sig.as_ref());
        debug_assert_eq!(t.len(), TIME_MSG_LEN);
        t
    }

    /// Exactly [`TIME_MSG_LEN`] bytes, type TIME, session 0.
    pub fn decode(bytes: &[u8]) -> Result<Time, ProtoError> {
        let h = fixed_control(bytes, msg_type::TIME, "TIME", TIME_MSG_LEN)?;
        Ok(Time {
            ctr: h.counter(),
            gateway_ms: u64_at(bytes, HEADER_LEN),
            nonce_echo: arr(bytes, HEADER_LEN + 8),
            raw: arr(bytes, 0),
        })
    }

    /// Checks the gateway's signature over this TIME and `hello`, the HELLO it
    /// answers as the client sent it (cookie included).
    pub fn verify(&self, gateway_pub: &[u8; 32], hello: &[u8]) -> Result<(), ProtoError> {
        let msg = time_signed_message(&self.raw[..TIME_SIGNED], hello);
        signature::UnparsedPublicKey::new(&signature::ED25519, gateway_pub)
            .verify(&msg, &self.raw[TIME_SIGNED..])
            .map_err(|_| ProtoError::BadSignature)
    }
}

/// A well-formed COOKIE (there is nothing to verify: it is not authenticated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// The nonce of the HELLO it answers.
    pub nonce_echo: [u8; 16],
    pub cookie: [u8; COOKIE_LEN],
}

impl Cookie {
    /// The COOKIE message (the XDP program builds the same bytes in place).
    pub fn build(nonce_echo: &[u8; 16], cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
        let mut m = Vec::with_capacity(COOKIE_MSG_LEN);
        m.extend_from_slice(&WireHeader::new(msg_type::COOKIE, 0, 0).to_bytes());
        m.extend_from_slice(nonce_echo);
        m.extend_from_slice(cookie);
        m
    }

    /// Exactly [`COOKIE_MSG_LEN`] bytes, type COOKIE, session 0, counter 0.
    pub fn decode(bytes: &[u8]) -> Result<Cookie, ProtoError> {
        let h = fixed_control(bytes, msg_type::COOKIE, "COOKIE", COOKIE_MSG_LEN)?;
        if h.counter() != 0 {
            return Err(ProtoError::Malformed("COOKIE with a nonzero counter"));
        }
        Ok(Cookie {
            nonce_echo: arr(bytes, HEADER_LEN),
            cookie: arr(bytes, HEADER_LEN + 16),
        })
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;
    use crate::proto::{
        ClientHandshake, Hello, fuzz, handshake::tests::keypair, identity::public_key,
    };

    struct Setup {
        gw: Ed25519KeyPair,
        client: ClientHandshake,
        hello: VerifiedHello,
        time: Vec<u8>,
    }

    fn setup(cookie: Option<[u8; 16]>) -> Setup {
        let rng = SystemRandom::new();
        let gw = keypair();
        let gw_pub = public_key(&gw);
        let (client, bytes) =
            ClientHandshake::start_with_cookie(&keypair(), &gw_pub, 1_000, cookie, &rng).unwrap();
        let hello = Hello::decode(&bytes)
            .unwrap()
            .verify_signature(&gw_pub)
            .unwrap();
        let time = Time::build(&gw, &hello, 77, 61_234);
        Setup {
            gw,
            client,
            hello,
            time,
        }
    }

    #[test]
    fn time_round_trip() {
        for cookie in [None, Some([9; 16])] {
            let s = setup(cookie);
            assert_eq!(s.time.len(), TIME_MSG_LEN);
            assert_eq!(s.time.len(), 108);
            let t = Time::decode(&s.time).unwrap();
            assert_eq!((t.ctr, t.gateway_ms), (77, 61_234));
            assert_eq!(t.nonce_echo, s.hello.nonce);
            assert_eq!(t.nonce_echo, s.client.nonce());
            t.verify(&public_key(&s.gw), s.hello.bytes()).unwrap();
            assert_eq!(s.client.verify_time(&t).unwrap(), 61_234);
            assert_eq!(
                WireHeader::parse(&s.time).unwrap().1,
                jvpn_common::wire::Kind::Reply
            );
        }
    }

    #[test]
    fn time_under_a_wrong_key_or_for_another_hello_is_refused() {
        let s = setup(None);
        let t = Time::decode(&s.time).unwrap();
        // Signed by someone else.
        let impostor = Time::decode(&Time::build(&keypair(), &s.hello, 77, 61_234)).unwrap();
        assert!(matches!(
            s.client.verify_time(&impostor),
            Err(ProtoError::BadSignature)
        ));
        assert!(matches!(
            t.verify(&public_key(&keypair()), s.hello.bytes()),
            Err(ProtoError::BadSignature)
        ));
        // For another HELLO: its nonce, or the same nonce over other bytes.
        let other = setup(None);
        assert!(other.client.verify_time(&t).is_err());
        let mut hello = s.hello.bytes().to_vec();
        hello[30] ^= 1;
        assert!(matches!(
            t.verify(&public_key(&s.gw), &hello),
            Err(ProtoError::BadSignature)
        ));
        // The HELLO with a cookie is another HELLO than the one without.
        let mut with_cookie = s.hello.bytes().to_vec();
        with_cookie.extend_from_slice(&[0; 16]);
        assert!(t.verify(&public_key(&s.gw), &with_cookie).is_err());
    }

    #[test]
    fn time_of_the_wrong_length_is_malformed() {
        let s = setup(None);
        for len in [0, HEADER_LEN, TIME_MSG_LEN - 1] {
            assert!(Time::decode(&s.time[..len]).is_err(), "len {len}");
        }
        let mut long = s.time.clone();
        long.push(0);
        assert!(matches!(
            Time::decode(&long),
            Err(ProtoError::BadLength { .. })
        ));
        let mut sid = s.time.clone();
        sid[11] = 1;
        assert!(Time::decode(&sid).is_err(), "a TIME with a session id");
    }

    #[test]
    fn fuzz_time() {
        let s = setup(Some([3; 16]));
        let gw_pub = public_key(&s.gw);
        fuzz::authenticated(&s.time, |b| {
            Time::decode(b)
                .and_then(|t| s.client.verify_time(&t))
                .is_ok()
        });
        fuzz::authenticated(&s.time, |b| {
            Time::decode(b)
                .and_then(|t| t.verify(&gw_pub, s.hello.bytes()))
                .is_ok()
        });
    }

    #[test]
    fn cookie_round_trip_and_strict_decoding() {
        let m = Cookie::build(&[1; 16], &[2; 16]);
        assert_eq!(m.len(), COOKIE_MSG_LEN);
        assert_eq!(m.len(), 52);
        assert_eq!(
            Cookie::decode(&m).unwrap(),
            Cookie {
                nonce_echo: [1; 16],
                cookie: [2; 16]
            }
        );
        for len in 0..m.len() {
            assert!(Cookie::decode(&m[..len]).is_err(), "len {len}");
        }
        let mut long = m.clone();
        long.push(0);
        assert!(Cookie::decode(&long).is_err());
        let mut ctr = m.clone();
        ctr[19] = 1;
        assert!(Cookie::decode(&ctr).is_err(), "a nonzero counter");
        let mut ty = m.clone();
        ty[1] = msg_type::TIME;
        assert!(Cookie::decode(&ty).is_err());
        fuzz::never_panics(&m, |b| {
            let _ = Cookie::decode(b);
        });
    }
}
