//! Session control messages (reattach, keepalive, close), all authenticated with
//! HMAC-SHA256 under the session's `k_reattach`.
//!
//! Decoding and verification are separate steps because the receiver only learns
//! which key to use from the session id in the message, and because the state machine
//! wants to see an unauthenticated REATTACH_REQUEST too (to count bad proofs per
//! source). A decoded [`Unverified`] keeps the bytes as received: the MAC is checked
//! over those, never over a re-encoding.
//!
//! Messages are built either from a [`Control`] value or with the one-line builders
//! (`control::keepalive_ack(..)`, ...), which produce the same bytes.

use jvpn_common::wire::{HEADER_LEN, WireHeader, msg_type};
use ring::hmac;

use super::{
    Hint, ProtoError, TransportKind,
    fields::{HINT_LEN, arr, control_header, u64_at},
};
use crate::session::{Detail, Reason};

pub const MAC_LEN: usize = 32;
/// Longest transport label in a REATTACH_REQUEST.
pub const MAX_LABEL: usize = 32;
/// The reattach protocol version this implementation speaks.
pub const PROTO_VER: u8 = 1;

/// Fixed part of a REATTACH_REQUEST before the label: ts, nonce, proto_ver, kind,
/// cause, label_len.
const REQ_FIXED: usize = 8 + 16 + 1 + 1 + 1 + 1;
pub const REATTACH_REQUEST_MIN_LEN: usize = HEADER_LEN + REQ_FIXED + MAC_LEN;
pub const REATTACH_REQUEST_MAX_LEN: usize = REATTACH_REQUEST_MIN_LEN + MAX_LABEL;
pub const REATTACH_CHALLENGE_LEN: usize = HEADER_LEN + 16 + MAC_LEN;
pub const REATTACH_CONFIRM_LEN: usize = HEADER_LEN + 16 + MAC_LEN;
pub const REATTACH_ACK_LEN: usize = HEADER_LEN + 4 + HINT_LEN + MAC_LEN;
pub const REATTACH_DENIED_LEN: usize = HEADER_LEN + 2 + MAC_LEN;
/// The smallest KEEPALIVE: ts and 12 bytes of zero padding, so that its ACK (which
/// carries more) is never larger than it.
pub const KEEPALIVE_LEN: usize = HEADER_LEN + 8 + KEEPALIVE_MIN_PAD + MAC_LEN;
pub const KEEPALIVE_MIN_PAD: usize = 12;
/// The largest KEEPALIVE (a path-MTU probe): a jumbo frame's UDP payload.
pub const KEEPALIVE_MAX_LEN: usize = 9_000;
pub const KEEPALIVE_ACK_LEN: usize = HEADER_LEN + 8 + 4 + 4 + 1 + 3 + MAC_LEN;
/// KEEPALIVE_ACK flag: the KEEPALIVE came from the session's current binding.
pub const ACK_FROM_BINDING: u8 = 0x01;
pub const CLOSE_LEN: usize = HEADER_LEN + 2 + MAC_LEN;

// Anti-amplification: replies sent before the peer's address is validated are no
// larger than the requests that trigger them.
const _: () = assert!(REATTACH_CHALLENGE_LEN <= REATTACH_REQUEST_MIN_LEN);
const _: () = assert!(REATTACH_DENIED_LEN <= REATTACH_REQUEST_MIN_LEN);
const _: () = assert!(KEEPALIVE_ACK_LEN <= KEEPALIVE_LEN);

// ---------------------------------------------------------------------------------
// Bodies

/// The body of a REATTACH_REQUEST (sent from the candidate transport; the header
/// counter is the reattach sequence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReattachRequest {
    pub ts_ms: u64,
    pub nonce: [u8; 16],
    pub proto_ver: u8,
    pub kind: TransportKind,
    /// Why the client asks: the gateway names the transition after it.
    pub cause: ReattachCause,
    /// Free-form transport label (e.g. an interface name), at most [`MAX_LABEL`] bytes.
    pub label: Vec<u8>,
}

/// Why a client reattaches (byte after `kind` in REATTACH_REQUEST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReattachCause {
    /// The bound transport died (or went bad) and this candidate replaces it.
    Recovery = 1,
    /// A move the client chose: back to a preferred transport, or an operator's.
    Planned = 2,
    /// The gateway said the bound transport's packets arrive from an address that is
    /// not the binding (NAT rebinding, a new address): rebind over the same transport.
    AddressChanged = 3,
}

impl ReattachCause {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Recovery,
            2 => Self::Planned,
            3 => Self::AddressChanged,
            _ => return None,
        })
    }
}

impl ReattachRequest {
    /// A request in this implementation's protocol version; the label must fit.
    pub fn new(
        ts_ms: u64,
        nonce: [u8; 16],
        kind: TransportKind,
        cause: ReattachCause,
        label: &[u8],
    ) -> Result<Self, ProtoError> {
        if label.len() > MAX_LABEL {
            return Err(ProtoError::BadLabel("longer than 32 bytes"));
        }
        Ok(ReattachRequest {
            ts_ms,
            nonce,
            proto_ver: PROTO_VER,
            kind,
            cause,
            label: label.to_vec(),
        })
    }
}

/// What a control message says, after the header and before the MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    ReattachRequest(ReattachRequest),
    ReattachChallenge {
        challenge: [u8; 16],
    },
    ReattachConfirm {
        challenge: [u8; 16],
    },
    ReattachAck {
        generation: u32,
        hint: Hint,
    },
    /// `reason` is a [`Detail`] code, kept raw: an unknown code is still well-formed.
    ReattachDenied {
        reason: u16,
    },
    /// `pad`: zero bytes beyond [`KEEPALIVE_MIN_PAD`] (a path-MTU probe is padded).
    Keepalive {
        ts_ms: u64,
        pad: u16,
    },
    /// `generation`: the session's binding generation; `up_forwarded`: the uplink DATA
    /// packets the relay has forwarded for the session (low 32 bits, wrapping), read
    /// only for a KEEPALIVE from the binding (else 0); `flags`: [`ACK_FROM_BINDING`].
    KeepaliveAck {
        echo_ts_ms: u64,
        generation: u32,
        up_forwarded: u32,
        flags: u8,
    },
    /// `reason` is a [`Reason`] code, kept raw.
    Close {
        reason: u16,
    },
}

impl Body {
    pub fn denied(detail: Detail) -> Body {
        Body::ReattachDenied {
            reason: detail.code(),
        }
    }

    pub fn close(reason: Reason) -> Body {
        Body::Close {
            reason: reason.code(),
        }
    }

    pub fn msg_type(&self) -> u8 {
        match self {
            Body::ReattachRequest(_) => msg_type::REATTACH_REQUEST,
            Body::ReattachChallenge { .. } => msg_type::REATTACH_CHALLENGE,
            Body::ReattachConfirm { .. } => msg_type::REATTACH_CONFIRM,
            Body::ReattachAck { .. } => msg_type::REATTACH_ACK,
            Body::ReattachDenied { .. } => msg_type::REATTACH_DENIED,
            Body::Keepalive { .. } => msg_type::KEEPALIVE,
            Body::KeepaliveAck { .. } => msg_type::KEEPALIVE_ACK,
            Body::Close { .. } => msg_type::CLOSE,
        }
    }

    fn encode_fields(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        match self {
            Body::ReattachRequest(r) => {
                let len = u8::try_from(r.label.len())
                    .ok()
                    .filter(|&l| usize::from(l) <= MAX_LABEL)
                    .ok_or(ProtoError::BadLabel("longer than 32 bytes"))?;
                out.extend_from_slice(&r.ts_ms.to_be_bytes());
                out.extend_from_slice(&r.nonce);
                out.extend_from_slice(&[r.proto_ver, r.kind.code(), r.cause.code(), len]);
                out.extend_from_slice(&r.label);
            }
            Body::ReattachChallenge { challenge } | Body::ReattachConfirm { challenge } => {
                out.extend_from_slice(challenge)
            }
            Body::ReattachAck { generation, hint } => {
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&hint.to_bytes());
            }
            Body::ReattachDenied { reason } | Body::Close { reason } => {
                out.extend_from_slice(&reason.to_be_bytes())
            }
            Body::Keepalive { ts_ms, pad } => {
                let pad = KEEPALIVE_MIN_PAD + usize::from(*pad);
                if HEADER_LEN + 8 + pad + MAC_LEN > KEEPALIVE_MAX_LEN {
                    return Err(ProtoError::Malformed("KEEPALIVE padding too long"));
                }
                out.extend_from_slice(&ts_ms.to_be_bytes());
                out.resize(out.len() + pad, 0);
            }
            Body::KeepaliveAck {
                echo_ts_ms,
                generation,
                up_forwarded,
                flags,
            } => {
                out.extend_from_slice(&echo_ts_ms.to_be_bytes());
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&up_forwarded.to_be_bytes());
                out.extend_from_slice(&[*flags, 0, 0, 0]);
            }
        }
        Ok(())
    }
}

/// MAC label, name, and exact length (`None`: REATTACH_REQUEST and KEEPALIVE,
/// variable) per type.
fn spec(ty: u8) -> Option<(&'static [u8], &'static str, Option<usize>)> {
    Some(match ty {
        msg_type::REATTACH_REQUEST => (&b"jvpn-reattach-v1"[..], "REATTACH_REQUEST", None),
        msg_type::REATTACH_CHALLENGE => (
            &b"jvpn-reattach-challenge-v1"[..],
            "REATTACH_CHALLENGE",
            Some(REATTACH_CHALLENGE_LEN),
        ),
        msg_type::REATTACH_CONFIRM => (
            &b"jvpn-reattach-confirm-v1"[..],
            "REATTACH_CONFIRM",
            Some(REATTACH_CONFIRM_LEN),
        ),
        msg_type::REATTACH_ACK => (
            &b"jvpn-reattach-ack-v1"[..],
            "REATTACH_ACK",
            Some(REATTACH_ACK_LEN),
        ),
        msg_type::REATTACH_DENIED => (
            &b"jvpn-reattach-denied-v1"[..],
            "REATTACH_DENIED",
            Some(REATTACH_DENIED_LEN),
        ),
        msg_type::KEEPALIVE => (&b"jvpn-keepalive-v1"[..], "KEEPALIVE", None),
        msg_type::KEEPALIVE_ACK => (
            &b"jvpn-keepalive-ack-v1"[..],
            "KEEPALIVE_ACK",
            Some(KEEPALIVE_ACK_LEN),
        ),
        msg_type::CLOSE => (&b"jvpn-close-v1"[..], "CLOSE", Some(CLOSE_LEN)),
        _ => return None,
    })
}

fn label_of(ty: u8) -> &'static [u8] {
    spec(ty).map(|s| s.0).unwrap_or_default()
}

fn compute_mac(key: &hmac::Key, label: &[u8], covered: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(label);
    ctx.update(covered);
    ctx.sign()
}

/// header ‖ fields ‖ MAC(label ‖ header ‖ fields).
fn seal(key: &hmac::Key, ty: u8, session_id: u64, ctr: u64, fields: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + fields.len() + MAC_LEN);
    out.extend_from_slice(&WireHeader::new(ty, session_id, ctr).to_bytes());
    out.extend_from_slice(fields);
    let tag = compute_mac(key, label_of(ty), &out);
    out.extend_from_slice(tag.as_ref());
    out
}

// ---------------------------------------------------------------------------------
// Building

/// A control message: header fields plus body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub session_id: u64,
    /// The sender's control counter (for REATTACH_REQUEST: the reattach sequence).
    pub ctr: u64,
    pub body: Body,
}

impl Control {
    /// Encodes and MACs the message with `mac_key` ([`super::SessionKeys::mac_key`]).
    /// Fails only for a label longer than [`MAX_LABEL`].
    pub fn encode(&self, mac_key: &hmac::Key) -> Result<Vec<u8>, ProtoError> {
        // Enough for every body but a padded KEEPALIVE, which grows as it needs.
        let mut fields = Vec::with_capacity(REATTACH_REQUEST_MAX_LEN);
        self.body.encode_fields(&mut fields)?;
        Ok(seal(
            mac_key,
            self.body.msg_type(),
            self.session_id,
            self.ctr,
            &fields,
        ))
    }
}

/// REATTACH_REQUEST (client, from the candidate transport; `ctr` = reattach sequence).
pub fn reattach_request(
    mac_key: &hmac::Key,
    session_id: u64,
    ctr: u64,
    req: &ReattachRequest,
) -> Result<Vec<u8>, ProtoError> {
    let body = Body::ReattachRequest(req.clone());
    Control {
        session_id,
        ctr,
        body,
    }
    .encode(mac_key)
}

/// REATTACH_CHALLENGE (gateway → candidate).
pub fn challenge(mac_key: &hmac::Key, session_id: u64, ctr: u64, challenge: &[u8; 16]) -> Vec<u8> {
    seal(
        mac_key,
        msg_type::REATTACH_CHALLENGE,
        session_id,
        ctr,
        challenge,
    )
}

/// REATTACH_CONFIRM (client, from the candidate): echoes the challenge.
pub fn reattach_confirm(
    mac_key: &hmac::Key,
    session_id: u64,
    ctr: u64,
    challenge: &[u8; 16],
) -> Vec<u8> {
    seal(
        mac_key,
        msg_type::REATTACH_CONFIRM,
        session_id,
        ctr,
        challenge,
    )
}

/// REATTACH_ACK (gateway → new binding).
pub fn ack(
    mac_key: &hmac::Key,
    session_id: u64,
    ctr: u64,
    generation: u32,
    hint: &Hint,
) -> Vec<u8> {
    let fields = [&generation.to_be_bytes()[..], &hint.to_bytes()].concat();
    seal(mac_key, msg_type::REATTACH_ACK, session_id, ctr, &fields)
}

/// REATTACH_DENIED (gateway → candidate); `reason` is a [`Detail::code`].
pub fn denied(mac_key: &hmac::Key, session_id: u64, ctr: u64, reason: u16) -> Vec<u8> {
    seal(
        mac_key,
        msg_type::REATTACH_DENIED,
        session_id,
        ctr,
        &reason.to_be_bytes(),
    )
}

/// The smallest KEEPALIVE (no padding beyond [`KEEPALIVE_MIN_PAD`]).
pub fn keepalive(mac_key: &hmac::Key, session_id: u64, ctr: u64, ts_ms: u64) -> Vec<u8> {
    let mut fields = [0u8; 8 + KEEPALIVE_MIN_PAD];
    fields[..8].copy_from_slice(&ts_ms.to_be_bytes());
    seal(mac_key, msg_type::KEEPALIVE, session_id, ctr, &fields)
}

pub fn keepalive_ack(
    mac_key: &hmac::Key,
    session_id: u64,
    ctr: u64,
    echo_ts_ms: u64,
    generation: u32,
    up_forwarded: u32,
    flags: u8,
) -> Vec<u8> {
    let fields = [
        &echo_ts_ms.to_be_bytes()[..],
        &generation.to_be_bytes(),
        &up_forwarded.to_be_bytes(),
        &[flags, 0, 0, 0],
    ]
    .concat();
    seal(mac_key, msg_type::KEEPALIVE_ACK, session_id, ctr, &fields)
}

/// CLOSE (either side); `reason` is a [`Reason::code`].
pub fn close(mac_key: &hmac::Key, session_id: u64, ctr: u64, reason: u16) -> Vec<u8> {
    seal(
        mac_key,
        msg_type::CLOSE,
        session_id,
        ctr,
        &reason.to_be_bytes(),
    )
}

// ---------------------------------------------------------------------------------
// Decoding

/// A well-formed control message whose MAC has not been checked yet. It keeps the
/// bytes as received, which is what [`Unverified::verify`] authenticates.
#[derive(Clone, Debug)]
pub struct Unverified {
    msg: Control,
    raw: Vec<u8>,
}

impl Unverified {
    /// Parses any session control message strictly (exact lengths, known kind and
    /// version, zero flags).
    pub fn decode(bytes: &[u8]) -> Result<Unverified, ProtoError> {
        if bytes.len() < HEADER_LEN {
            return Err(ProtoError::Truncated {
                need: HEADER_LEN,
                got: bytes.len(),
            });
        }
        let ty = bytes[1];
        let Some((_, name, fixed_len)) = spec(ty) else {
            return Err(ProtoError::WrongType {
                expected: "a session control message",
                got: ty,
            });
        };
        let h = control_header(bytes, ty, name)?;
        let f = &bytes[HEADER_LEN..];
        let body = match fixed_len {
            Some(len) if bytes.len() != len => {
                return Err(ProtoError::BadLength {
                    expected: len,
                    got: bytes.len(),
                });
            }
            Some(_) => match ty {
                msg_type::REATTACH_CHALLENGE => Body::ReattachChallenge {
                    challenge: arr(f, 0),
                },
                msg_type::REATTACH_CONFIRM => Body::ReattachConfirm {
                    challenge: arr(f, 0),
                },
                msg_type::REATTACH_ACK => Body::ReattachAck {
                    generation: u32::from_be_bytes(arr(f, 0)),
                    hint: Hint::from_bytes(&arr(f, 4)),
                },
                msg_type::REATTACH_DENIED => Body::ReattachDenied {
                    reason: u16::from_be_bytes(arr(f, 0)),
                },
                msg_type::KEEPALIVE_ACK => {
                    if f[17..20] != [0; 3] {
                        return Err(ProtoError::Malformed("KEEPALIVE_ACK reserved bytes"));
                    }
                    Body::KeepaliveAck {
                        echo_ts_ms: u64_at(f, 0),
                        generation: u32::from_be_bytes(arr(f, 8)),
                        up_forwarded: u32::from_be_bytes(arr(f, 12)),
                        flags: f[16],
                    }
                }
                _ => Body::Close {
                    reason: u16::from_be_bytes(arr(f, 0)),
                },
            },
            None if ty == msg_type::KEEPALIVE => decode_keepalive(bytes)?,
            None => Body::ReattachRequest(decode_request(bytes)?),
        };
        Ok(Unverified {
            msg: Control {
                session_id: h.session_id(),
                ctr: h.counter(),
                body,
            },
            raw: bytes.to_vec(),
        })
    }

    pub fn session_id(&self) -> u64 {
        self.msg.session_id
    }

    /// The header counter (for REATTACH_REQUEST: the reattach sequence).
    pub fn ctr(&self) -> u64 {
        self.msg.ctr
    }

    /// The message's claims, not yet authenticated.
    pub fn msg(&self) -> &Control {
        &self.msg
    }

    pub fn into_msg(self) -> Control {
        self.msg
    }

    /// The message exactly as received.
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Checks the MAC (constant time) over the bytes as received.
    pub fn verify(&self, mac_key: &hmac::Key) -> Result<&Control, ProtoError> {
        // Decoding guarantees len ≥ header + MAC and a known type.
        let (covered, mac) = self.bytes().split_at(self.raw.len() - MAC_LEN);
        let msg = [label_of(self.msg.body.msg_type()), covered].concat();
        hmac::verify(mac_key, &msg, mac).map_err(|_| ProtoError::BadMac)?;
        Ok(&self.msg)
    }
}

/// Padding must be zero: a probe's size is its only meaning, and a strict format
/// leaves nothing to smuggle.
fn decode_keepalive(bytes: &[u8]) -> Result<Body, ProtoError> {
    if bytes.len() < KEEPALIVE_LEN {
        return Err(ProtoError::Truncated {
            need: KEEPALIVE_LEN,
            got: bytes.len(),
        });
    }
    if bytes.len() > KEEPALIVE_MAX_LEN {
        return Err(ProtoError::BadLength {
            expected: KEEPALIVE_MAX_LEN,
            got: bytes.len(),
        });
    }
    let pad = &bytes[HEADER_LEN + 8..bytes.len() - MAC_LEN];
    if pad.iter().any(|&b| b != 0) {
        return Err(ProtoError::Malformed("KEEPALIVE padding is not zero"));
    }
    Ok(Body::Keepalive {
        ts_ms: u64_at(&bytes[HEADER_LEN..], 0),
        pad: u16::try_from(pad.len() - KEEPALIVE_MIN_PAD).unwrap_or(u16::MAX),
    })
}

fn decode_request(bytes: &[u8]) -> Result<ReattachRequest, ProtoError> {
    if bytes.len() < REATTACH_REQUEST_MIN_LEN {
        return Err(ProtoError::Truncated {
            need: REATTACH_REQUEST_MIN_LEN,
            got: bytes.len(),
        });
    }
    let f = &bytes[HEADER_LEN..];
    let label_len = usize::from(f[27]);
    if label_len > MAX_LABEL {
        return Err(ProtoError::BadLabel("label_len above 32"));
    }
    if bytes.len() != REATTACH_REQUEST_MIN_LEN + label_len {
        return Err(ProtoError::BadLabel(
            "label_len disagrees with the message length",
        ));
    }
    let proto_ver = f[24];
    if proto_ver != PROTO_VER {
        return Err(ProtoError::Malformed(
            "unsupported reattach protocol version",
        ));
    }
    let kind =
        TransportKind::from_code(f[25]).ok_or(ProtoError::Malformed("unknown transport kind"))?;
    let cause =
        ReattachCause::from_code(f[26]).ok_or(ProtoError::Malformed("unknown reattach cause"))?;
    Ok(ReattachRequest {
        ts_ms: u64_at(f, 0),
        nonce: arr(f, 8),
        proto_ver,
        kind,
        cause,
        label: f[REQ_FIXED..REQ_FIXED + label_len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        SessionKeys, fuzz,
        handshake::{ClientHandshake, Hello, welcome},
    };

    const SID: u64 = 0x1234_5678_9abc_def0;

    fn key() -> hmac::Key {
        SessionKeys::derive(&[1; 32], &[2; 32]).mac_key()
    }

    const HINT: Hint = Hint {
        recovery_window_ms: 1,
        keepalive_interval_ms: 2,
        transport_loss_ttl_ms: 3,
        session_ttl_s: 4,
    };

    fn samples() -> Vec<Control> {
        let bodies = vec![
            Body::ReattachRequest(
                ReattachRequest::new(
                    1_700_000_000_123,
                    [9; 16],
                    TransportKind::Cellular,
                    ReattachCause::Recovery,
                    b"",
                )
                .unwrap(),
            ),
            Body::ReattachRequest(
                ReattachRequest::new(
                    5,
                    [8; 16],
                    TransportKind::Wifi,
                    ReattachCause::AddressChanged,
                    b"wlan0",
                )
                .unwrap(),
            ),
            Body::ReattachRequest(
                ReattachRequest::new(
                    u64::MAX,
                    [7; 16],
                    TransportKind::Ethernet,
                    ReattachCause::Planned,
                    &[b'x'; 32],
                )
                .unwrap(),
            ),
            Body::ReattachChallenge { challenge: [3; 16] },
            Body::ReattachConfirm { challenge: [3; 16] },
            Body::ReattachAck {
                generation: 7,
                hint: HINT,
            },
            Body::denied(Detail::RateLimited),
            Body::Keepalive { ts_ms: 42, pad: 0 },
            Body::Keepalive {
                ts_ms: 43,
                pad: 1400,
            },
            Body::KeepaliveAck {
                echo_ts_ms: 42,
                generation: 3,
                up_forwarded: 0xdead_beef,
                flags: ACK_FROM_BINDING,
            },
            Body::close(Reason::Operator),
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Control {
                session_id: SID,
                ctr: 100 + i as u64,
                body,
            })
            .collect()
    }

    #[test]
    fn round_trips_and_sizes() {
        let k = key();
        for m in samples() {
            let b = m.encode(&k).unwrap();
            let expected = match &m.body {
                Body::ReattachRequest(r) => 80 + r.label.len(),
                Body::ReattachChallenge { .. } | Body::ReattachConfirm { .. } => 68,
                Body::ReattachAck { .. } => 72,
                Body::ReattachDenied { .. } | Body::Close { .. } => 54,
                Body::Keepalive { pad, .. } => 72 + usize::from(*pad),
                Body::KeepaliveAck { .. } => 72,
            };
            assert_eq!(b.len(), expected, "{m:?}");
            let u = Unverified::decode(&b).unwrap();
            assert_eq!(u.session_id(), SID);
            assert_eq!(u.ctr(), m.ctr);
            assert_eq!(u.bytes(), &b[..]);
            assert_eq!(u.msg(), &m);
            assert_eq!(u.verify(&k).unwrap(), &m);
            assert_eq!(u.into_msg(), m);
        }
        assert_eq!(REATTACH_REQUEST_MIN_LEN, 80);
        assert_eq!(REATTACH_REQUEST_MAX_LEN, 112);
    }

    /// The one-line builders produce exactly what the generic encoder does.
    #[test]
    fn builders_match_encode() {
        let k = key();
        let (sid, ctr) = (SID, 9);
        let req = ReattachRequest::new(
            5,
            [8; 16],
            TransportKind::Wifi,
            ReattachCause::Recovery,
            b"wlan0",
        )
        .unwrap();
        let enc = |body| {
            Control {
                session_id: sid,
                ctr,
                body,
            }
            .encode(&k)
            .unwrap()
        };
        let c = [3u8; 16];
        assert_eq!(
            reattach_request(&k, sid, ctr, &req).unwrap(),
            enc(Body::ReattachRequest(req.clone()))
        );
        assert_eq!(
            challenge(&k, sid, ctr, &c),
            enc(Body::ReattachChallenge { challenge: c })
        );
        assert_eq!(
            reattach_confirm(&k, sid, ctr, &c),
            enc(Body::ReattachConfirm { challenge: c })
        );
        assert_eq!(
            ack(&k, sid, ctr, 7, &HINT),
            enc(Body::ReattachAck {
                generation: 7,
                hint: HINT
            })
        );
        assert_eq!(
            denied(&k, sid, ctr, 4),
            enc(Body::ReattachDenied { reason: 4 })
        );
        assert_eq!(
            keepalive(&k, sid, ctr, 1),
            enc(Body::Keepalive { ts_ms: 1, pad: 0 })
        );
        assert_eq!(
            keepalive_ack(&k, sid, ctr, 1, 2, 3, ACK_FROM_BINDING),
            enc(Body::KeepaliveAck {
                echo_ts_ms: 1,
                generation: 2,
                up_forwarded: 3,
                flags: ACK_FROM_BINDING
            })
        );
        assert_eq!(close(&k, sid, ctr, 2), enc(Body::Close { reason: 2 }));
    }

    #[test]
    fn reason_codes_round_trip() {
        let k = key();
        for d in Detail::ALL {
            let u = Unverified::decode(&denied(&k, SID, 1, d.code())).unwrap();
            let Body::ReattachDenied { reason } = u.verify(&k).unwrap().body else {
                panic!("not a REATTACH_DENIED")
            };
            assert_eq!(Detail::from_code(reason), Some(d));
        }
        let Body::Close { reason } = Body::close(Reason::SessionTtlExpired) else {
            panic!("not a CLOSE")
        };
        assert_eq!(Reason::from_code(reason), Some(Reason::SessionTtlExpired));
    }

    #[test]
    fn wrong_key_fails_and_encode_refuses_long_labels() {
        let other = SessionKeys::derive(&[1; 32], &[3; 32]).mac_key();
        for m in samples() {
            let b = m.encode(&key()).unwrap();
            let u = Unverified::decode(&b).unwrap();
            assert!(matches!(u.verify(&other), Err(ProtoError::BadMac)));
        }
        let cause = ReattachCause::Recovery;
        assert!(ReattachRequest::new(1, [0; 16], TransportKind::Other, cause, &[0; 33]).is_err());
        let mut long = ReattachRequest::new(1, [0; 16], TransportKind::Other, cause, b"").unwrap();
        long.label = vec![b'y'; 33];
        assert!(matches!(
            reattach_request(&key(), SID, 1, &long),
            Err(ProtoError::BadLabel(_))
        ));
        long.label = vec![b'y'; 300];
        assert!(reattach_request(&key(), SID, 1, &long).is_err());
    }

    #[test]
    fn malformed_requests() {
        let k = key();
        let b = samples()[1].encode(&k).unwrap(); // label "wlan0"
        let at_len = HEADER_LEN + 27;
        let mut x = b.clone();
        x[at_len] = 33;
        assert!(matches!(
            Unverified::decode(&x),
            Err(ProtoError::BadLabel(_))
        ));
        x[at_len] = 4;
        assert!(matches!(
            Unverified::decode(&x),
            Err(ProtoError::BadLabel(_))
        ));
        let mut x = b.clone();
        x[HEADER_LEN + 24] = 2;
        assert!(matches!(
            Unverified::decode(&x),
            Err(ProtoError::Malformed(_))
        ));
        let mut x = b.clone();
        x[HEADER_LEN + 25] = 4;
        assert!(matches!(
            Unverified::decode(&x),
            Err(ProtoError::Malformed(_))
        ));
        let mut x = b.clone();
        x[HEADER_LEN + 26] = 0;
        assert!(matches!(
            Unverified::decode(&x),
            Err(ProtoError::Malformed(_))
        ));
        let mut x = b.clone();
        x[2] = 1;
        assert!(matches!(
            Unverified::decode(&x),
            Err(ProtoError::Malformed(_))
        ));
        // Handshake and data types are not session control messages.
        for t in [msg_type::DATA, msg_type::HELLO, msg_type::CONFIRM] {
            let mut x = b.clone();
            x[1] = t;
            assert!(Unverified::decode(&x).is_err());
        }
        let mut x = b.clone();
        x.push(0);
        assert!(Unverified::decode(&x).is_err());
    }

    #[test]
    fn malformed_keepalives() {
        let k = key();
        let ka = keepalive(&k, SID, 1, 5);
        assert_eq!(ka.len(), KEEPALIVE_LEN);
        let mut x = ka.clone();
        x[HEADER_LEN + 9] = 1; // padding must be zero
        assert!(matches!(
            Unverified::decode(&x),
            Err(ProtoError::Malformed(_))
        ));
        assert!(Unverified::decode(&ka[..ka.len() - 1]).is_err());
        let big = Control {
            session_id: SID,
            ctr: 1,
            body: Body::Keepalive {
                ts_ms: 1,
                pad: u16::MAX,
            },
        };
        assert!(big.encode(&k).is_err());
        let ack = keepalive_ack(&k, SID, 1, 1, 2, 3, 0);
        let mut x = ack.clone();
        x[HEADER_LEN + 18] = 1; // reserved
        assert!(Unverified::decode(&x).is_err());
        let mut x = ack;
        x.push(0);
        assert!(Unverified::decode(&x).is_err());
    }

    #[test]
    fn fuzz_every_control_message() {
        let k = key();
        for m in samples() {
            let b = m.encode(&k).unwrap();
            fuzz::authenticated(&b, |x| {
                Unverified::decode(x)
                    .and_then(|u| u.verify(&k).map(|_| ()))
                    .is_ok()
            });
        }
    }

    /// Anti-amplification (DESIGN §3): until the peer's address is validated, no reply
    /// is larger than the request that caused it. REATTACH_ACK (72) follows the
    /// REATTACH_CONFIRM (68) that validated the candidate address, so it is exempt.
    #[test]
    fn pre_validation_replies_not_larger_than_requests() {
        use ring::{rand::SystemRandom, signature::KeyPair as _};
        let rng = SystemRandom::new();
        let (gw, cl) = (
            crate::proto::handshake::tests::keypair(),
            crate::proto::handshake::tests::keypair(),
        );
        let gw_pub: [u8; 32] = gw.public_key().as_ref().try_into().unwrap();
        let (_, hello) = ClientHandshake::start(&cl, &gw_pub, 1, &rng).unwrap();
        let v = Hello::decode(&hello)
            .unwrap()
            .verify_signature(&gw_pub)
            .unwrap();
        let w = welcome(
            &gw,
            &v,
            9,
            1,
            "fd00::1".parse().unwrap(),
            None,
            Hint::default(),
            1,
            &rng,
        )
        .unwrap();
        assert!(w.welcome.len() < hello.len());
        let mk = w.keys.mac_key();
        let confirm = crate::proto::Confirm::build(&mk, 9, 2, &w.transcript);
        let established = crate::proto::Established::build(&mk, 9, 2, &w.transcript);
        assert!(established.len() <= confirm.len());

        let k = key();
        let req = ReattachRequest::new(
            1,
            [0; 16],
            TransportKind::Other,
            ReattachCause::Recovery,
            b"",
        )
        .unwrap();
        let smallest_request = reattach_request(&k, SID, 1, &req).unwrap().len();
        assert_eq!(smallest_request, REATTACH_REQUEST_MIN_LEN);
        assert!(challenge(&k, SID, 1, &[0; 16]).len() <= smallest_request);
        assert!(denied(&k, SID, 1, 1).len() <= smallest_request);
        assert!(
            keepalive_ack(&k, SID, 1, 1, u32::MAX, u32::MAX, 1).len()
                <= keepalive(&k, SID, 1, 1).len()
        );
    }
}
