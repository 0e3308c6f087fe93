//! The handshake: HELLO → WELCOME → CONFIRM → ESTABLISHED.
//!
//! Both sides live here so they cannot drift apart. The gateway side is split into
//! decode and verify steps because the controller must do cheap checks first (is this
//! client key allowed at all?) before spending a signature verification on a packet
//! from an unauthenticated source, and does its own freshness and nonce-cache checks
//! with the decoded `ts_ms`/`nonce`. The client side is a small state object that holds
//! the ephemeral key until the WELCOME arrives.
//!
//! A HELLO may carry a cookie (16 bytes after the signature, not signed: the gateway's
//! XDP program checks it when under load, the controller does not). Everything that
//! covers "the HELLO" — the WELCOME's signature, the transcript, a TIME's signature —
//! covers the whole payload as sent and received, cookie included.

use std::{
    net::{IpAddr, Ipv6Addr},
    ops::Deref,
};

use jvpn_common::wire::{COOKIE_LEN, HEADER_LEN, HELLO_NONCE_OFF, WireHeader, msg_type};
use ring::{
    agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519},
    digest, hmac,
    rand::SecureRandom,
    signature::{self, Ed25519KeyPair, KeyPair as _},
};

use super::{
    Hint, ProtoError, SessionKeys,
    fields::{
        ADDR_LEN, DUAL_ADDR_LEN, HINT_LEN, arr, control_header, decode_addr, decode_dual,
        encode_addr, encode_dual, fixed_control, u64_at,
    },
};

pub use jvpn_common::wire::{HELLO_COOKIE_LEN, HELLO_LEN};
pub const WELCOME_LEN: usize = HEADER_LEN + 32 + 8 + ADDR_LEN + HINT_LEN + 64;
/// A WELCOME from a dual-stack pool: an IPv4 and an IPv6 tunnel address.
pub const WELCOME_DUAL_LEN: usize = WELCOME_LEN - ADDR_LEN + DUAL_ADDR_LEN;
pub const CONFIRM_LEN: usize = HEADER_LEN + 32;
pub const ESTABLISHED_LEN: usize = HEADER_LEN + 32;

// Anti-amplification: a WELCOME (sent to an unvalidated address) is smaller than the
// HELLO, and ESTABLISHED no larger than CONFIRM.
const _: () = assert!(WELCOME_LEN < HELLO_LEN && WELCOME_DUAL_LEN < HELLO_LEN);
const _: () = assert!(ESTABLISHED_LEN <= CONFIRM_LEN);

const HELLO_LABEL: &[u8] = b"jvpn-hello-v1";
const WELCOME_LABEL: &[u8] = b"jvpn-welcome-v1";
const CONFIRM_LABEL: &[u8] = b"jvpn-confirm-v1";
const ESTABLISHED_LABEL: &[u8] = b"jvpn-established-v1";

/// Where the signature starts in a HELLO (in a WELCOME: 64 bytes before its end).
const HELLO_SIGNED: usize = HELLO_LEN - 64;
/// Where a WELCOME's tunnel field starts.
const WELCOME_TUNNEL_OFF: usize = HEADER_LEN + 32 + 8;

/// The control counters the client handshake uses; the client's later control
/// messages continue from [`ClientSession::next_ctr`].
const HELLO_CTR: u64 = 0;
const CONFIRM_CTR: u64 = 1;

fn transcript(hello: &[u8], welcome: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(hello);
    ctx.update(welcome);
    arr(ctx.finish().as_ref(), 0)
}

fn hello_signed_message(hello_unsigned: &[u8], gateway_pub: &[u8; 32]) -> Vec<u8> {
    [HELLO_LABEL, hello_unsigned, gateway_pub].concat()
}

fn welcome_signed_message(hello: &[u8], welcome_unsigned: &[u8]) -> Vec<u8> {
    let hello_hash = digest::digest(&digest::SHA256, hello);
    [WELCOME_LABEL, hello_hash.as_ref(), welcome_unsigned].concat()
}

fn x25519_keypair(rng: &dyn SecureRandom) -> Result<(EphemeralPrivateKey, [u8; 32]), ProtoError> {
    let eph = EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| ProtoError::Rng)?;
    let public = eph.compute_public_key().map_err(|_| ProtoError::Rng)?;
    Ok((eph, arr(public.as_ref(), 0)))
}

fn agree(
    eph: EphemeralPrivateKey,
    peer_pub: &[u8; 32],
    transcript: &[u8; 32],
) -> Result<SessionKeys, ProtoError> {
    agreement::agree_ephemeral(eph, &UnparsedPublicKey::new(&X25519, peer_pub), |shared| {
        SessionKeys::derive(shared, transcript)
    })
    .map_err(|_| ProtoError::KeyAgreement)
}

fn public_of(identity: &Ed25519KeyPair) -> [u8; 32] {
    arr(identity.public_key().as_ref(), 0)
}

// ---------------------------------------------------------------------------------
// HELLO

/// A well-formed HELLO whose signature has not been checked yet.
#[derive(Clone, Debug)]
pub struct Hello {
    /// The whole payload as received: [`HELLO_LEN`] or [`HELLO_COOKIE_LEN`] bytes.
    raw: Vec<u8>,
    pub ctr: u64,
    pub eph_pub: [u8; 32],
    /// The client's identity: check it against the peers list before verifying.
    pub id_pub: [u8; 32],
    pub ts_ms: u64,
    pub nonce: [u8; 16],
    /// The cookie a HELLO sent after a COOKIE carries (not signed; the controller
    /// does not check it: the XDP program did, if it was under load).
    pub cookie: Option<[u8; COOKIE_LEN]>,
}

impl Hello {
    /// Exactly [`HELLO_LEN`] or [`HELLO_COOKIE_LEN`] bytes; anything else is malformed.
    pub fn decode(bytes: &[u8]) -> Result<Hello, ProtoError> {
        let len = if bytes.len() == HELLO_COOKIE_LEN {
            HELLO_COOKIE_LEN
        } else {
            HELLO_LEN
        };
        let h = fixed_control(bytes, msg_type::HELLO, "HELLO", len)?;
        Ok(Hello {
            raw: bytes.to_vec(),
            ctr: h.counter(),
            eph_pub: arr(bytes, 20),
            id_pub: arr(bytes, 52),
            ts_ms: u64_at(bytes, 84),
            nonce: arr(bytes, HELLO_NONCE_OFF),
            cookie: (len == HELLO_COOKIE_LEN).then(|| arr(bytes, HELLO_LEN)),
        })
    }

    /// Checks the client's signature, which also binds the HELLO to this gateway.
    /// It covers the first [`HELLO_LEN`] − 64 bytes (never the cookie).
    pub fn verify_signature(&self, gateway_pub: &[u8; 32]) -> Result<VerifiedHello, ProtoError> {
        let msg = hello_signed_message(&self.raw[..HELLO_SIGNED], gateway_pub);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.id_pub)
            .verify(&msg, &self.raw[HELLO_SIGNED..HELLO_LEN])
            .map_err(|_| ProtoError::BadSignature)?;
        Ok(VerifiedHello(self.clone()))
    }

    /// The HELLO exactly as received, cookie included (part of the transcript).
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }
}

/// A HELLO whose signature verified: the only input [`welcome`] accepts.
#[derive(Clone, Debug)]
pub struct VerifiedHello(Hello);

impl Deref for VerifiedHello {
    type Target = Hello;
    fn deref(&self) -> &Hello {
        &self.0
    }
}

// ---------------------------------------------------------------------------------
// WELCOME

/// A well-formed WELCOME (fields only; [`ClientHandshake::verify_welcome`] checks it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub session_id: u64,
    pub ctr: u64,
    pub eph_pub: [u8; 32],
    pub ts_ms: u64,
    pub tunnel_addr: IpAddr,
    /// The IPv6 address beside an IPv4 `tunnel_addr` (a dual-stack pool).
    pub tunnel6: Option<Ipv6Addr>,
    pub hint: Hint,
}

impl Welcome {
    /// Two lengths, one per form of the tunnel field (one address, or both families):
    /// a client of this version reads a WELCOME from an older gateway.
    pub fn decode(bytes: &[u8]) -> Result<Welcome, ProtoError> {
        let h = control_header(bytes, msg_type::WELCOME, "WELCOME")?;
        let at = WELCOME_TUNNEL_OFF;
        let (tunnel_addr, tunnel6, hint_at) = match bytes.len() {
            WELCOME_LEN => (decode_addr(&arr(bytes, at))?, None, at + ADDR_LEN),
            WELCOME_DUAL_LEN => {
                let (v4, v6) = decode_dual(&arr(bytes, at))?;
                (IpAddr::V4(v4), Some(v6), at + DUAL_ADDR_LEN)
            }
            got => {
                return Err(ProtoError::BadLength {
                    expected: WELCOME_LEN,
                    got,
                });
            }
        };
        Ok(Welcome {
            session_id: h.session_id(),
            ctr: h.counter(),
            eph_pub: arr(bytes, HEADER_LEN),
            ts_ms: u64_at(bytes, HEADER_LEN + 32),
            tunnel_addr,
            tunnel6,
            hint: Hint::from_bytes(&arr(bytes, hint_at)),
        })
    }
}

/// What the gateway gets from answering a HELLO.
#[derive(Debug)]
pub struct Welcomed {
    /// The WELCOME to send (smaller than the HELLO: no amplification).
    pub welcome: Vec<u8>,
    pub keys: SessionKeys,
    /// `H(HELLO ‖ WELCOME)`: keep it to check CONFIRM and build ESTABLISHED.
    pub transcript: [u8; 32],
}

/// Gateway: answers a verified HELLO, creating the session's keys.
///
/// `session_id` must be nonzero (the caller picks a random unused one); `ctr` is the
/// gateway's control counter for this session. `tunnel6` is given beside an IPv4
/// `tunnel_addr` only (a dual-stack pool).
#[allow(clippy::too_many_arguments)]
pub fn welcome(
    identity: &Ed25519KeyPair,
    hello: &VerifiedHello,
    session_id: u64,
    ctr: u64,
    tunnel_addr: IpAddr,
    tunnel6: Option<Ipv6Addr>,
    hint: Hint,
    now_ms: u64,
    rng: &dyn SecureRandom,
) -> Result<Welcomed, ProtoError> {
    if session_id == 0 {
        return Err(ProtoError::Malformed("WELCOME needs a nonzero session id"));
    }
    let (eph, eph_pub) = x25519_keypair(rng)?;
    let mut w = Vec::with_capacity(WELCOME_DUAL_LEN);
    w.extend_from_slice(&WireHeader::new(msg_type::WELCOME, session_id, ctr).to_bytes());
    w.extend_from_slice(&eph_pub);
    w.extend_from_slice(&now_ms.to_be_bytes());
    match (tunnel_addr, tunnel6) {
        (a, None) => w.extend_from_slice(&encode_addr(a)),
        (IpAddr::V4(v4), Some(v6)) => w.extend_from_slice(&encode_dual(v4, v6)),
        (IpAddr::V6(_), Some(_)) => {
            return Err(ProtoError::Malformed(
                "a second tunnel address goes beside an IPv4 one",
            ));
        }
    }
    w.extend_from_slice(&hint.to_bytes());
    let sig = identity.sign(&welcome_signed_message(hello.bytes(), &w));
    w.extend_from_slice(sig.as_ref());
    debug_assert!(w.len() == WELCOME_LEN || w.len() == WELCOME_DUAL_LEN);
    let transcript = transcript(hello.bytes(), &w);
    let keys = agree(eph, &hello.eph_pub, &transcript)?;
    Ok(Welcomed {
        welcome: w,
        keys,
        transcript,
    })
}

// ---------------------------------------------------------------------------------
// CONFIRM / ESTABLISHED

fn finish_mac(key: &hmac::Key, label: &[u8], header: &[u8], transcript: &[u8; 32]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(label);
    ctx.update(header);
    ctx.update(transcript);
    ctx.sign()
}

macro_rules! finish_message {
    ($(#[$doc:meta])* $name:ident, $ty:expr, $label:expr, $len:expr, $text:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            pub session_id: u64,
            pub ctr: u64,
            header: [u8; HEADER_LEN],
            mac: [u8; 32],
        }

        impl $name {
            /// `mac_key` is [`SessionKeys::mac_key`].
            pub fn build(
                mac_key: &hmac::Key,
                session_id: u64,
                ctr: u64,
                transcript: &[u8; 32],
            ) -> Vec<u8> {
                let header = WireHeader::new($ty, session_id, ctr).to_bytes();
                let tag = finish_mac(mac_key, $label, &header, transcript);
                [&header[..], tag.as_ref()].concat()
            }

            pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
                let h = fixed_control(bytes, $ty, $text, $len)?;
                Ok($name {
                    session_id: h.session_id(),
                    ctr: h.counter(),
                    header: arr(bytes, 0),
                    mac: arr(bytes, HEADER_LEN),
                })
            }

            /// Constant-time MAC check against the session's key and transcript.
            pub fn verify(&self, mac_key: &hmac::Key, transcript: &[u8; 32]) -> Result<(), ProtoError> {
                let msg = [$label, &self.header[..], transcript].concat();
                hmac::verify(mac_key, &msg, &self.mac).map_err(|_| ProtoError::BadMac)
            }
        }
    };
}

finish_message!(
    /// CONFIRM (client → gateway): proves the client derived the same keys.
    Confirm,
    msg_type::CONFIRM,
    CONFIRM_LABEL,
    CONFIRM_LEN,
    "CONFIRM"
);
finish_message!(
    /// ESTABLISHED (gateway → client): the session is ATTACHED.
    Established,
    msg_type::ESTABLISHED,
    ESTABLISHED_LABEL,
    ESTABLISHED_LEN,
    "ESTABLISHED"
);

/// Gateway: decodes a CONFIRM and checks that it belongs to `session_id` and carries
/// the right MAC over `transcript`.
pub fn verify_confirm(
    mac_key: &hmac::Key,
    session_id: u64,
    transcript: &[u8; 32],
    bytes: &[u8],
) -> Result<Confirm, ProtoError> {
    let c = Confirm::decode(bytes)?;
    if c.session_id != session_id {
        return Err(ProtoError::Malformed("CONFIRM for another session"));
    }
    c.verify(mac_key, transcript)?;
    Ok(c)
}

/// Gateway: the ESTABLISHED reply (`ctr`: the gateway's next control counter).
pub fn established(
    mac_key: &hmac::Key,
    session_id: u64,
    ctr: u64,
    transcript: &[u8; 32],
) -> Vec<u8> {
    Established::build(mac_key, session_id, ctr, transcript)
}

// ---------------------------------------------------------------------------------
// Client side

/// A client's handshake in progress: HELLO sent, waiting for the WELCOME.
pub struct ClientHandshake {
    /// Taken when a WELCOME verifies; `None` afterwards.
    eph: Option<EphemeralPrivateKey>,
    /// The HELLO as sent (with its cookie, if it carries one).
    hello: Vec<u8>,
    gateway_pub: [u8; 32],
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("done", &self.eph.is_none())
            .finish_non_exhaustive()
    }
}

/// The client's view of a new session.
#[derive(Debug)]
pub struct ClientSession {
    pub session_id: u64,
    pub keys: SessionKeys,
    pub transcript: [u8; 32],
    pub tunnel_addr: IpAddr,
    /// The IPv6 tunnel address beside the IPv4 one, from a dual-stack gateway.
    pub tunnel6: Option<Ipv6Addr>,
    pub hint: Hint,
    /// The gateway's clock at WELCOME time (for a rough offset estimate).
    pub gateway_ts_ms: u64,
    /// The CONFIRM to send (again, until ESTABLISHED arrives).
    pub confirm: Vec<u8>,
    /// Control counter for the client's next control message in this session.
    pub next_ctr: u64,
}

impl ClientHandshake {
    /// Builds a signed HELLO for the gateway with identity `gateway_pub`, stamped
    /// `ts_ms` (the client's idea of the gateway's time).
    pub fn start(
        identity: &Ed25519KeyPair,
        gateway_pub: &[u8; 32],
        ts_ms: u64,
        rng: &dyn SecureRandom,
    ) -> Result<(ClientHandshake, Vec<u8>), ProtoError> {
        Self::start_with_cookie(identity, gateway_pub, ts_ms, None, rng)
    }

    /// As [`ClientHandshake::start`], with `cookie` (from a COOKIE) appended after
    /// the signature: a [`HELLO_COOKIE_LEN`]-byte HELLO.
    pub fn start_with_cookie(
        identity: &Ed25519KeyPair,
        gateway_pub: &[u8; 32],
        ts_ms: u64,
        cookie: Option<[u8; COOKIE_LEN]>,
        rng: &dyn SecureRandom,
    ) -> Result<(ClientHandshake, Vec<u8>), ProtoError> {
        let (eph, eph_pub) = x25519_keypair(rng)?;
        let mut nonce = [0u8; 16];
        rng.fill(&mut nonce).map_err(|_| ProtoError::Rng)?;
        let mut h = Vec::with_capacity(HELLO_COOKIE_LEN);
        h.extend_from_slice(&WireHeader::new(msg_type::HELLO, 0, HELLO_CTR).to_bytes());
        h.extend_from_slice(&eph_pub);
        h.extend_from_slice(&public_of(identity));
        h.extend_from_slice(&ts_ms.to_be_bytes());
        h.extend_from_slice(&nonce);
        let sig = identity.sign(&hello_signed_message(&h, gateway_pub));
        h.extend_from_slice(sig.as_ref());
        if let Some(c) = cookie {
            h.extend_from_slice(&c);
        }
        let hs = ClientHandshake {
            eph: Some(eph),
            hello: h.clone(),
            gateway_pub: *gateway_pub,
        };
        Ok((hs, h))
    }

    /// The HELLO, for retransmission.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// The HELLO's nonce (what a COOKIE or TIME answering it echoes).
    pub fn nonce(&self) -> [u8; 16] {
        arr(&self.hello, HELLO_NONCE_OFF)
    }

    /// The HELLO carries a cookie.
    pub fn has_cookie(&self) -> bool {
        self.hello.len() == HELLO_COOKIE_LEN
    }

    /// Checks a TIME against this HELLO (its echoed nonce, and the gateway's
    /// signature over it and the HELLO as sent); returns the gateway's time.
    pub fn verify_time(&self, time: &super::reply::Time) -> Result<u64, ProtoError> {
        if time.nonce_echo != self.nonce() {
            return Err(ProtoError::Malformed("TIME for another HELLO"));
        }
        time.verify(&self.gateway_pub, &self.hello)?;
        Ok(time.gateway_ms)
    }

    /// Decodes a WELCOME and checks the gateway's signature over it and our HELLO.
    pub fn verify_welcome(&self, bytes: &[u8]) -> Result<Welcome, ProtoError> {
        let w = Welcome::decode(bytes)?;
        let signed = bytes.len() - 64;
        let msg = welcome_signed_message(&self.hello, &bytes[..signed]);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.gateway_pub)
            .verify(&msg, &bytes[signed..])
            .map_err(|_| ProtoError::BadSignature)?;
        Ok(w)
    }

    /// Verifies the WELCOME and completes the key exchange. A WELCOME that does not
    /// verify leaves the handshake untouched (a forged one cannot kill it); after a
    /// success further calls fail with [`ProtoError::HandshakeDone`].
    pub fn on_welcome(&mut self, bytes: &[u8]) -> Result<ClientSession, ProtoError> {
        if self.eph.is_none() {
            return Err(ProtoError::HandshakeDone);
        }
        let w = self.verify_welcome(bytes)?;
        let eph = self.eph.take().ok_or(ProtoError::HandshakeDone)?;
        let transcript = transcript(&self.hello, bytes);
        let keys = agree(eph, &w.eph_pub, &transcript)?;
        let confirm = Confirm::build(&keys.mac_key(), w.session_id, CONFIRM_CTR, &transcript);
        Ok(ClientSession {
            session_id: w.session_id,
            keys,
            transcript,
            tunnel_addr: w.tunnel_addr,
            tunnel6: w.tunnel6,
            hint: w.hint,
            gateway_ts_ms: w.ts_ms,
            confirm,
            next_ctr: CONFIRM_CTR + 1,
        })
    }
}

impl ClientSession {
    /// Checks an ESTABLISHED for this session.
    pub fn verify_established(&self, bytes: &[u8]) -> Result<(), ProtoError> {
        let e = Established::decode(bytes)?;
        if e.session_id != self.session_id {
            return Err(ProtoError::Malformed("ESTABLISHED for another session"));
        }
        e.verify(&self.keys.mac_key(), &self.transcript)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::fuzz;
    use ring::rand::SystemRandom;

    pub(crate) fn keypair() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    const HINT: Hint = Hint {
        recovery_window_ms: 30_000,
        keepalive_interval_ms: 1_000,
        transport_loss_ttl_ms: 3_000,
        session_ttl_s: 86_400,
    };
    const SID: u64 = 0x0bad_cafe_f00d_0001;

    struct Run {
        gw: Ed25519KeyPair,
        client: ClientHandshake,
        hello: Vec<u8>,
        welcomed: Welcomed,
    }

    /// A client's handshake towards `gw`, and its HELLO as `gw` verified it.
    fn hello_to(gw: &Ed25519KeyPair) -> (ClientHandshake, VerifiedHello) {
        let (c, hello) =
            ClientHandshake::start(&keypair(), &public_of(gw), 1, &SystemRandom::new()).unwrap();
        let v = Hello::decode(&hello)
            .unwrap()
            .verify_signature(&public_of(gw))
            .unwrap();
        (c, v)
    }

    /// A WELCOME of session SID with tunnel address 10.0.0.1, signed by `gw`.
    fn welcome_v4(gw: &Ed25519KeyPair, hello: &VerifiedHello) -> Welcomed {
        let addr = "10.0.0.1".parse().unwrap();
        welcome(gw, hello, SID, 1, addr, None, HINT, 1, &SystemRandom::new()).unwrap()
    }

    fn run_until_welcome() -> Run {
        let rng = SystemRandom::new();
        let (gw, cl) = (keypair(), keypair());
        let gw_pub = public_of(&gw);
        let (client, hello) = ClientHandshake::start(&cl, &gw_pub, 1_000, &rng).unwrap();
        let h = Hello::decode(&hello).unwrap();
        assert_eq!(h.id_pub, public_of(&cl));
        assert_eq!(h.ts_ms, 1_000);
        let v = h.verify_signature(&gw_pub).unwrap();
        let addr = "10.77.0.2".parse().unwrap();
        let welcomed = welcome(&gw, &v, SID, 1, addr, None, HINT, 1_005, &rng).unwrap();
        Run {
            gw,
            client,
            hello,
            welcomed,
        }
    }

    #[test]
    fn full_handshake_agrees_on_keys() {
        let Run {
            mut client,
            hello,
            welcomed,
            ..
        } = run_until_welcome();
        assert_eq!(hello.len(), HELLO_LEN);
        assert_eq!(hello.len(), 172);
        assert_eq!(welcomed.welcome.len(), WELCOME_LEN);
        assert_eq!(welcomed.welcome.len(), 157);
        let s = client.on_welcome(&welcomed.welcome).unwrap();
        assert_eq!(s.session_id, SID);
        assert_eq!(s.tunnel_addr, "10.77.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s.hint, HINT);
        assert_eq!(s.gateway_ts_ms, 1_005);
        assert_eq!(s.transcript, welcomed.transcript);
        let (k, g) = (&s.keys, &welcomed.keys);
        assert_eq!((k.reattach, k.c2x, k.x2c), (g.reattach, g.c2x, g.x2c));
        assert!(matches!(
            client.on_welcome(&welcomed.welcome),
            Err(ProtoError::HandshakeDone)
        ));

        // CONFIRM → gateway, ESTABLISHED → client.
        assert_eq!(s.confirm.len(), CONFIRM_LEN);
        let c = verify_confirm(&g.mac_key(), SID, &welcomed.transcript, &s.confirm).unwrap();
        assert_eq!((c.session_id, c.ctr), (SID, CONFIRM_CTR));
        assert!(verify_confirm(&g.mac_key(), SID + 1, &welcomed.transcript, &s.confirm).is_err());
        let e = established(&g.mac_key(), SID, 2, &welcomed.transcript);
        assert_eq!(e.len(), ESTABLISHED_LEN);
        s.verify_established(&e).unwrap();
        // The CONFIRM is not an ESTABLISHED (labels and type differ).
        assert!(s.verify_established(&s.confirm).is_err());
        let mut forged = s.confirm.clone();
        forged[1] = msg_type::ESTABLISHED;
        assert!(s.verify_established(&forged).is_err());
        // ... and an ESTABLISHED for another session is refused.
        let other = Established::build(&g.mac_key(), SID + 1, 2, &welcomed.transcript);
        assert!(s.verify_established(&other).is_err());
    }

    #[test]
    fn wrong_keys_fail() {
        let rng = SystemRandom::new();
        let Run {
            gw,
            mut client,
            hello,
            welcomed,
        } = run_until_welcome();
        // HELLO addressed to another gateway.
        let h = Hello::decode(&hello).unwrap();
        assert!(matches!(
            h.verify_signature(&public_of(&keypair())),
            Err(ProtoError::BadSignature)
        ));
        // WELCOME signed by someone else (for the same HELLO).
        let v = h.verify_signature(&public_of(&gw)).unwrap();
        let impostor = welcome_v4(&keypair(), &v);
        assert!(matches!(
            client.on_welcome(&impostor.welcome),
            Err(ProtoError::BadSignature)
        ));
        // A WELCOME for another HELLO does not verify either.
        let (_, other_hello) =
            ClientHandshake::start(&keypair(), &public_of(&gw), 1, &rng).unwrap();
        let ov = Hello::decode(&other_hello)
            .unwrap()
            .verify_signature(&public_of(&gw))
            .unwrap();
        let ow = welcome_v4(&gw, &ov);
        assert!(client.on_welcome(&ow.welcome).is_err());
        // Failed attempts leave the handshake usable.
        let s = client.on_welcome(&welcomed.welcome).unwrap();
        // CONFIRM / ESTABLISHED under a wrong key or transcript.
        let wrong = SessionKeys::derive(&[0; 32], &[0; 32]).mac_key();
        let c = Confirm::decode(&s.confirm).unwrap();
        assert!(matches!(
            c.verify(&wrong, &s.transcript),
            Err(ProtoError::BadMac)
        ));
        assert!(matches!(
            c.verify(&s.keys.mac_key(), &[0; 32]),
            Err(ProtoError::BadMac)
        ));
        let e = Established::build(&wrong, SID, 2, &s.transcript);
        assert!(matches!(s.verify_established(&e), Err(ProtoError::BadMac)));
    }

    #[test]
    fn welcome_refuses_session_zero() {
        let rng = SystemRandom::new();
        let gw = keypair();
        let (_, hello) = ClientHandshake::start(&keypair(), &public_of(&gw), 1, &rng).unwrap();
        let v = Hello::decode(&hello)
            .unwrap()
            .verify_signature(&public_of(&gw))
            .unwrap();
        assert!(
            welcome(
                &gw,
                &v,
                0,
                1,
                "10.0.0.1".parse().unwrap(),
                None,
                HINT,
                1,
                &rng
            )
            .is_err()
        );
    }

    #[test]
    fn ipv6_tunnel_address() {
        let rng = SystemRandom::new();
        let gw = keypair();
        let (mut c, v) = hello_to(&gw);
        let a: IpAddr = "fd00:77::2".parse().unwrap();
        let w = welcome(&gw, &v, SID, 1, a, None, HINT, 1, &rng).unwrap();
        assert_eq!(c.on_welcome(&w.welcome).unwrap().tunnel_addr, a);
    }

    /// Both families in one WELCOME: 161 bytes, still smaller than the HELLO, signed
    /// whole (a changed IPv6 byte fails the signature); an IPv6 address beside an
    /// IPv6 one is refused.
    #[test]
    fn dual_stack_tunnel_addresses() {
        let rng = SystemRandom::new();
        let gw = keypair();
        let (mut c, v) = hello_to(&gw);
        let (a4, a6): (IpAddr, Ipv6Addr) =
            ("10.77.0.2".parse().unwrap(), "fd00:77::2".parse().unwrap());
        let w = welcome(&gw, &v, SID, 1, a4, Some(a6), HINT, 1, &rng).unwrap();
        assert_eq!(w.welcome.len(), WELCOME_DUAL_LEN);
        assert_eq!(WELCOME_DUAL_LEN, 161);
        let mut bad = w.welcome.clone();
        bad[WELCOME_TUNNEL_OFF + 20] ^= 1;
        assert!(matches!(c.on_welcome(&bad), Err(ProtoError::BadSignature)));
        let s = c.on_welcome(&w.welcome).unwrap();
        assert_eq!((s.tunnel_addr, s.tunnel6), (a4, Some(a6)));
        assert_eq!(s.hint, HINT);
        assert!(welcome(&gw, &v, SID, 1, IpAddr::V6(a6), Some(a6), HINT, 1, &rng).is_err());
        let mut family = w.welcome.clone();
        family[WELCOME_TUNNEL_OFF] = 4;
        assert!(matches!(
            Welcome::decode(&family),
            Err(ProtoError::UnknownFamily(4))
        ));
        assert!(matches!(
            Welcome::decode(&w.welcome[..WELCOME_DUAL_LEN - 1]),
            Err(ProtoError::BadLength { .. })
        ));
    }

    /// A HELLO with a cookie: 188 bytes, the signature over the same first bytes as
    /// without, and the WELCOME and the transcript over all 188 on both sides.
    #[test]
    fn hello_with_a_cookie_is_covered_whole_by_welcome_and_transcript() {
        let rng = SystemRandom::new();
        let (gw, cl) = (keypair(), keypair());
        let gw_pub = public_of(&gw);
        let cookie = [0xc0; 16];
        let (mut client, hello) =
            ClientHandshake::start_with_cookie(&cl, &gw_pub, 5, Some(cookie), &rng).unwrap();
        assert_eq!(hello.len(), HELLO_COOKIE_LEN);
        assert_eq!(hello.len(), 188);
        assert!(client.has_cookie());
        let h = Hello::decode(&hello).unwrap();
        assert_eq!(h.cookie, Some(cookie));
        assert_eq!(h.nonce, client.nonce());
        assert_eq!(h.bytes(), &hello[..]);
        let v = h.verify_signature(&gw_pub).unwrap();
        // The cookie is not signed: another one verifies as well ...
        let mut other = hello.clone();
        other[HELLO_LEN] ^= 0xff;
        let ov = Hello::decode(&other)
            .unwrap()
            .verify_signature(&gw_pub)
            .unwrap();
        // ... and without it the first 172 bytes are a HELLO of their own.
        let plain = Hello::decode(&hello[..HELLO_LEN]).unwrap();
        assert_eq!(plain.cookie, None);
        plain.verify_signature(&gw_pub).unwrap();
        // But a WELCOME answers the HELLO as received: one for other bytes fails.
        let addr = "10.77.0.2".parse().unwrap();
        let wrong = welcome(&gw, &ov, SID, 1, addr, None, HINT, 6, &rng).unwrap();
        assert!(client.on_welcome(&wrong.welcome).is_err());
        let w = welcome(&gw, &v, SID, 1, addr, None, HINT, 6, &rng).unwrap();
        let s = client.on_welcome(&w.welcome).unwrap();
        assert_eq!(s.transcript, w.transcript);
        assert_eq!(s.transcript, transcript(&hello, &w.welcome));
        let (k, g) = (&s.keys, &w.keys);
        assert_eq!((k.reattach, k.c2x, k.x2c), (g.reattach, g.c2x, g.x2c));
    }

    #[test]
    fn hello_lengths_other_than_172_and_188_are_malformed() {
        let rng = SystemRandom::new();
        let gw_pub = public_of(&keypair());
        let (_, hello) =
            ClientHandshake::start_with_cookie(&keypair(), &gw_pub, 5, Some([1; 16]), &rng)
                .unwrap();
        for len in 0..=hello.len() + 20 {
            let mut b = hello.clone();
            b.resize(len, 0);
            let ok = Hello::decode(&b).is_ok();
            assert_eq!(ok, len == HELLO_LEN || len == HELLO_COOKIE_LEN, "len {len}");
        }
    }

    #[test]
    fn fuzz_hello() {
        let Run { gw, hello, .. } = run_until_welcome();
        let gw_pub = public_of(&gw);
        fuzz::authenticated(&hello, |b| {
            Hello::decode(b)
                .and_then(|h| h.verify_signature(&gw_pub))
                .is_ok()
        });
    }

    #[test]
    fn fuzz_welcome() {
        let Run {
            client, welcomed, ..
        } = run_until_welcome();
        fuzz::authenticated(&welcomed.welcome, |b| client.verify_welcome(b).is_ok());
        fuzz::never_panics(&welcomed.welcome, |b| {
            let _ = Welcome::decode(b);
        });
    }

    #[test]
    fn fuzz_confirm_and_established() {
        let Run {
            mut client,
            welcomed,
            ..
        } = run_until_welcome();
        let s = client.on_welcome(&welcomed.welcome).unwrap();
        let key = welcomed.keys.mac_key();
        let t = welcomed.transcript;
        fuzz::authenticated(&s.confirm, |b| {
            Confirm::decode(b).and_then(|c| c.verify(&key, &t)).is_ok()
        });
        let e = Established::build(&key, SID, 2, &t);
        fuzz::authenticated(&e, |b| s.verify_established(b).is_ok());
        fuzz::authenticated(&e, |b| {
            Established::decode(b)
                .and_then(|c| c.verify(&key, &t))
                .is_ok()
        });
    }
}
