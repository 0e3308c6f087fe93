//! Field encodings shared by several messages (addresses, the policy hint, the
//! transport kind) and the strict header check every control decoder starts with.
//!
//! Decoding is deliberately strict (exact lengths, zero padding, zero flags): a message
//! has exactly one encoding, so what was authenticated is what gets acted on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use jvpn_common::wire::{HEADER_LEN, WireHeader};

use super::ProtoError;
use crate::session::Policy;

/// Encoded size of an address: `family u8 ‖ addr[16]`.
pub const ADDR_LEN: usize = 17;
/// Encoded size of a dual-stack tunnel field: `46 u8 ‖ v4[4] ‖ v6[16]` — four bytes
/// more than one address, so that a WELCOME carrying both stays smaller than the
/// HELLO it answers (two [`ADDR_LEN`] fields would not).
pub const DUAL_ADDR_LEN: usize = 21;
const FAMILY_DUAL: u8 = 46;
/// Encoded size of a [`Hint`].
pub const HINT_LEN: usize = 16;

pub(crate) fn encode_addr(addr: IpAddr) -> [u8; ADDR_LEN] {
    let mut b = [0u8; ADDR_LEN];
    match addr {
        IpAddr::V4(a) => {
            b[0] = 4;
            b[1..5].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            b[0] = 6;
            b[1..].copy_from_slice(&a.octets());
        }
    }
    b
}

pub(crate) fn encode_dual(v4: Ipv4Addr, v6: Ipv6Addr) -> [u8; DUAL_ADDR_LEN] {
    let mut b = [0u8; DUAL_ADDR_LEN];
    b[0] = FAMILY_DUAL;
    b[1..5].copy_from_slice(&v4.octets());
    b[5..].copy_from_slice(&v6.octets());
    b
}

pub(crate) fn decode_dual(b: &[u8; DUAL_ADDR_LEN]) -> Result<(Ipv4Addr, Ipv6Addr), ProtoError> {
    if b[0] != FAMILY_DUAL {
        return Err(ProtoError::UnknownFamily(b[0]));
    }
    let v6: [u8; 16] = arr(b, 5);
    Ok((Ipv4Addr::new(b[1], b[2], b[3], b[4]), Ipv6Addr::from(v6)))
}

pub(crate) fn decode_addr(b: &[u8; ADDR_LEN]) -> Result<IpAddr, ProtoError> {
    match b[0] {
        4 => {
            if b[5..].iter().any(|&x| x != 0) {
                return Err(ProtoError::Malformed(
                    "nonzero padding after an IPv4 address",
                ));
            }
            Ok(IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4])))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..]);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        f => Err(ProtoError::UnknownFamily(f)),
    }
}

/// Policy hint carried by WELCOME and REATTACH_ACK, so the client paces keepalives and
/// reattaches the way the gateway will judge them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hint {
    pub recovery_window_ms: u32,
    pub keepalive_interval_ms: u32,
    pub transport_loss_ttl_ms: u32,
    pub session_ttl_s: u32,
}

impl Hint {
    /// Values above `u32::MAX` saturate (a 49-day window is "forever" to a client).
    pub fn from_policy(p: &Policy) -> Self {
        let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Hint {
            recovery_window_ms: sat(p.max_recovery_window_ms),
            keepalive_interval_ms: sat(p.keepalive_interval_ms),
            transport_loss_ttl_ms: sat(p.transport_loss_ttl_ms),
            session_ttl_s: sat(p.session_ttl_s),
        }
    }

    pub fn to_bytes(&self) -> [u8; HINT_LEN] {
        let mut b = [0u8; HINT_LEN];
        b[0..4].copy_from_slice(&self.recovery_window_ms.to_be_bytes());
        b[4..8].copy_from_slice(&self.keepalive_interval_ms.to_be_bytes());
        b[8..12].copy_from_slice(&self.transport_loss_ttl_ms.to_be_bytes());
        b[12..16].copy_from_slice(&self.session_ttl_s.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HINT_LEN]) -> Self {
        let u = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Hint {
            recovery_window_ms: u(0),
            keepalive_interval_ms: u(4),
            transport_loss_ttl_ms: u(8),
            session_ttl_s: u(12),
        }
    }
}

/// The kind of transport a REATTACH_REQUEST comes from (informational for the gateway).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Other = 0,
    Wifi = 1,
    Cellular = 2,
    Ethernet = 3,
}

impl TransportKind {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => TransportKind::Other,
            1 => TransportKind::Wifi,
            2 => TransportKind::Cellular,
            3 => TransportKind::Ethernet,
            _ => return None,
        })
    }
}

/// Validates the header of a control message of fixed type: returns it if `bytes` is at
/// least a header long, parses, has type `ty` and zero flags/reserved. Lengths are
/// checked by the caller (some messages have a variable length).
pub(crate) fn control_header(
    bytes: &[u8],
    ty: u8,
    name: &'static str,
) -> Result<WireHeader, ProtoError> {
    if bytes.len() < HEADER_LEN {
        return Err(ProtoError::Truncated {
            need: HEADER_LEN,
            got: bytes.len(),
        });
    }
    let (h, _) = WireHeader::parse(bytes)?;
    if h.msg_type != ty {
        return Err(ProtoError::WrongType {
            expected: name,
            got: h.msg_type,
        });
    }
    if h.flags != 0 || h.reserved != 0 {
        return Err(ProtoError::Malformed("nonzero flags or reserved byte"));
    }
    Ok(h)
}

/// [`control_header`] plus an exact length.
pub(crate) fn fixed_control(
    bytes: &[u8],
    ty: u8,
    name: &'static str,
    len: usize,
) -> Result<WireHeader, ProtoError> {
    let h = control_header(bytes, ty, name)?;
    if bytes.len() != len {
        return Err(ProtoError::BadLength {
            expected: len,
            got: bytes.len(),
        });
    }
    Ok(h)
}

pub(crate) fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(arr(b, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_round_trip_and_rejects() {
        for a in ["10.7.0.2", "0.0.0.0", "fd00::1", "::ffff:1.2.3.4"] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(decode_addr(&encode_addr(a)).unwrap(), a);
        }
        let mut b = encode_addr("10.0.0.1".parse().unwrap());
        b[16] = 1;
        assert!(matches!(decode_addr(&b), Err(ProtoError::Malformed(_))));
        for f in [0u8, 5, 7, 255] {
            b[0] = f;
            assert!(matches!(decode_addr(&b), Err(ProtoError::UnknownFamily(x)) if x == f));
        }
    }

    #[test]
    fn hint_round_trip_and_saturates() {
        let h = Hint {
            recovery_window_ms: 1,
            keepalive_interval_ms: 2,
            transport_loss_ttl_ms: 3,
            session_ttl_s: u32::MAX,
        };
        assert_eq!(Hint::from_bytes(&h.to_bytes()), h);
        let p = Policy {
            max_recovery_window_ms: u64::MAX,
            session_ttl_s: 86_400,
            ..Policy::default()
        };
        let h = Hint::from_policy(&p);
        assert_eq!(h.recovery_window_ms, u32::MAX);
        assert_eq!(h.session_ttl_s, 86_400);
        assert_eq!(h.keepalive_interval_ms, 1_000);
    }

    #[test]
    fn transport_kind_codes() {
        for c in 0..=255u8 {
            match TransportKind::from_code(c) {
                Some(k) => assert_eq!(k.code(), c),
                None => assert!(c > 3),
            }
        }
    }
}
