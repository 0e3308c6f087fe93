//! A session as the durable store keeps it: everything the controller needs to
//! resume it exactly (state machine, keys, tunnel address, binding and the gateway
//! address it arrived on, the control-counter high-water mark), sealed by
//! `store::Sealer` before it is written.
//!
//! The encoding is one version byte, then the record in postcard (serde's compact
//! binary form: varints, raw key bytes). A record is written on every state change,
//! twice per reattach, so its size is the store's cost: about 300 bytes this way
//! against 1,100 as JSON, which halved redb's time per write (docs/gateway.md).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::core::Entry;
use crate::{
    proto::{CtlWindow, SessionKeys},
    session::Session,
};

/// The first byte of a record; bumped when the layout changes. A record of another
/// version is refused (1 was JSON, which starts with `{`). Version 3 appended
/// `tunnel6`; an IPv4-only session is still written as version 2 (the same bytes
/// without the final zero that encodes `None`), so a gateway rolled back, or an older
/// node of a cluster being upgraded, reads every record of a gateway without
/// `pool.cidr6`; and version 2 is read as `tunnel6: None`.
pub const RECORD_VERSION: u8 = 3;
const RECORD_V2: u8 = 2;

#[derive(Serialize, Deserialize)]
pub struct SessionRecord {
    pub session: Session,
    pub k_reattach: [u8; 32],
    pub k_c2x: [u8; 32],
    pub k_x2c: [u8; 32],
    pub transcript: [u8; 32],
    pub peer: [u8; 32],
    pub tunnel: Ipv4Addr,
    pub local: SocketAddr,
    pub ctl_highest: u64,
    /// The IPv6 tunnel address of a dual-stack pool (version 3).
    pub tunnel6: Option<Ipv6Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of session {id:#018x}: {why}")]
    Bad { id: u64, why: String },
}

impl SessionRecord {
    pub fn of(e: &Entry) -> Self {
        Self {
            session: e.session.clone(),
            k_reattach: e.keys.reattach,
            k_c2x: e.keys.c2x,
            k_x2c: e.keys.x2c,
            transcript: e.transcript,
            peer: e.peer,
            tunnel: e.tunnel.v4,
            local: e.local,
            ctl_highest: e.ctl_window.highest(),
            tunnel6: e.tunnel.v6,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        out.push(RECORD_VERSION);
        postcard::to_io(self, &mut out).expect("a record always serializes");
        if self.tunnel6.is_none() {
            let none = out.pop();
            debug_assert_eq!(none, Some(0), "postcard's None is one zero byte");
            out[0] = RECORD_V2;
        }
        out
    }

    pub fn decode(id: u64, bytes: &[u8]) -> Result<Self, RecordError> {
        let bad = |why: String| RecordError::Bad { id, why };
        let v2;
        let body = match bytes.first() {
            Some(&RECORD_VERSION) => &bytes[1..],
            Some(&RECORD_V2) => {
                v2 = [&bytes[1..], &[0]].concat();
                &v2[..]
            }
            Some(b'{') => {
                return Err(bad(format!(
                    "format version 1 (JSON; this gateway reads {RECORD_VERSION})"
                )));
            }
            Some(v) => {
                return Err(bad(format!(
                    "format version {v} (this gateway reads {RECORD_V2} and {RECORD_VERSION})"
                )));
            }
            None => return Err(bad("empty".into())),
        };
        let (r, rest): (Self, _) =
            postcard::take_from_bytes(body).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the record", rest.len())));
        }
        if r.session.id != id {
            return Err(bad(format!("holds session {:#018x}", r.session.id)));
        }
        Ok(r)
    }

    pub fn into_entry(self, now_ms: u64) -> Entry {
        let keys = SessionKeys {
            reattach: self.k_reattach,
            c2x: self.k_c2x,
            x2c: self.k_x2c,
        };
        Entry {
            session: self.session,
            mac: keys.mac_key(),
            keys,
            transcript: self.transcript,
            peer: self.peer,
            tunnel: super::pool::Tunnel {
                v4: self.tunnel,
                v6: self.tunnel6,
            },
            local: self.local,
            confirming: None,
            ctl_window: CtlWindow::resume(self.ctl_highest),
            seen_up: 0,
            not_bound: super::guard::TokenBucket::full(now_ms),
            rev: 0,
            epoch: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::session::{Candidate, State};

    /// A session with every field set, its lists as long as a busy session's.
    fn record(id: u64) -> SessionRecord {
        let t = 1_780_000_000_000u64;
        let mut session = Session::new(id, t);
        session.state = State::Recovering;
        session.version = 41;
        session.binding = Some("[2001:db8::7]:51820".parse().unwrap());
        session.generation = 17;
        session.left_attached_ms = Some(t + 5_000);
        session.last_reattach_seq = 1_780_000_123_456_789;
        session.nonces = (0..4).map(|i| (t + i, [i as u8; 16])).collect();
        session.switches = VecDeque::from([t + 1, t + 2, t + 3]);
        session.pending = Some(Candidate {
            addr: "198.51.100.9:40000".parse().unwrap(),
            challenge: [9; 16],
            seq: 1_780_000_123_456_790,
            expires_ms: t + 7_000,
        });
        SessionRecord {
            session,
            k_reattach: [1; 32],
            k_c2x: [2; 32],
            k_x2c: [3; 32],
            transcript: [4; 32],
            peer: [5; 32],
            tunnel: Ipv4Addr::new(10, 99, 1, 2),
            local: "[2001:db8::1]:4500".parse().unwrap(),
            ctl_highest: 1_780_000_123_456_791,
            tunnel6: Some("fd00:99::1:2".parse().unwrap()),
        }
    }

    #[test]
    fn a_record_round_trips_exactly() {
        let r = record(0x0123_4567_89ab_cdef);
        let bytes = r.encode();
        eprintln!("a busy IPv6 session's record: {} bytes", bytes.len());
        assert!(bytes.len() < 450, "{} bytes", bytes.len());
        let back = SessionRecord::decode(0x0123_4567_89ab_cdef, &bytes).unwrap();
        assert_eq!(back.session, r.session);
        assert_eq!(
            (
                back.k_reattach,
                back.k_c2x,
                back.k_x2c,
                back.transcript,
                back.peer
            ),
            (r.k_reattach, r.k_c2x, r.k_x2c, r.transcript, r.peer)
        );
        assert_eq!(
            (back.tunnel, back.tunnel6, back.local, back.ctl_highest),
            (r.tunnel, r.tunnel6, r.local, r.ctl_highest)
        );
    }

    /// An IPv4-only session is written in version 2 (what a gateway before `tunnel6`
    /// reads: the same bytes as version 3 without the final zero) and read back; a
    /// dual-stack one in version 3, one byte of `Some` and 16 longer.
    #[test]
    fn ipv4_only_records_stay_in_version_2() {
        let dual = record(9);
        let v3 = dual.encode();
        assert_eq!(v3[0], 3);
        let mut r = record(9);
        r.tunnel6 = None;
        let v2 = r.encode();
        assert_eq!(v2[0], 2);
        assert_eq!(v3.len(), v2.len() + 17);
        let back = SessionRecord::decode(9, &v2).unwrap();
        assert_eq!((back.tunnel, back.tunnel6), (r.tunnel, None));
        assert_eq!(back.session, r.session);
        let back = SessionRecord::decode(9, &v3).unwrap();
        assert_eq!(back.tunnel6, dual.tunnel6);
    }

    #[test]
    fn other_versions_trailing_bytes_and_other_ids_are_refused() {
        let id = 7;
        let bytes = record(id).encode();
        let err = |b: &[u8], id: u64| SessionRecord::decode(id, b).err().unwrap().to_string();
        assert!(err(b"{\"v\":1}", id).contains("format version 1 (JSON"));
        let mut v4 = bytes.clone();
        v4[0] = 4;
        assert!(err(&v4, id).contains("format version 4"));
        assert!(err(&[], id).contains("empty"));
        let mut long = bytes.clone();
        long.push(0);
        assert!(err(&long, id).contains("1 bytes after the record"));
        assert!(err(&bytes[..bytes.len() - 1], id).contains("record of session"));
        assert!(err(&bytes, 8).contains("holds session 0x0000000000000007"));
    }
}
