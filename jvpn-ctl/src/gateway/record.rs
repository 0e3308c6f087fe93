//! A session as the durable store keeps it: everything the controller needs to
//! resume it exactly (state machine, keys, tunnel address, binding and the gateway
//! address it arrived on, the control-counter high-water mark). Serialized as JSON
//! (readable when debugging a store, and new fields can default) and sealed by
//! `store::Sealer` before it is written.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::core::Entry;
use crate::{
    proto::{CtlWindow, SessionKeys},
    session::Session,
};

/// Bumped when a field changes meaning; a record of another version is refused.
pub const RECORD_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub struct SessionRecord {
    pub v: u32,
    pub session: Session,
    #[serde(with = "hex32")]
    pub k_reattach: [u8; 32],
    #[serde(with = "hex32")]
    pub k_c2x: [u8; 32],
    #[serde(with = "hex32")]
    pub k_x2c: [u8; 32],
    #[serde(with = "hex32")]
    pub transcript: [u8; 32],
    #[serde(with = "hex32")]
    pub peer: [u8; 32],
    pub tunnel: Ipv4Addr,
    pub local: SocketAddr,
    pub ctl_highest: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of session {id:#018x}: {why}")]
    Bad { id: u64, why: String },
}

impl SessionRecord {
    pub fn of(e: &Entry) -> Self {
        Self {
            v: RECORD_VERSION,
            session: e.session.clone(),
            k_reattach: e.keys.reattach,
            k_c2x: e.keys.c2x,
            k_x2c: e.keys.x2c,
            transcript: e.transcript,
            peer: e.peer,
            tunnel: e.tunnel,
            local: e.local,
            ctl_highest: e.ctl_window.highest(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serializes")
    }

    pub fn decode(id: u64, bytes: &[u8]) -> Result<Self, RecordError> {
        let bad = |why: String| RecordError::Bad { id, why };
        let r: Self = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if r.v != RECORD_VERSION {
            return Err(bad(format!(
                "format version {} (this gateway reads {RECORD_VERSION})",
                r.v
            )));
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
            tunnel: self.tunnel,
            local: self.local,
            confirming: None,
            ctl_window: CtlWindow::resume(self.ctl_highest),
            seen_up: 0,
            not_bound: super::guard::TokenBucket::full(now_ms),
            rev: 0,
        }
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let v = hex::decode(&text).map_err(D::Error::custom)?;
        v.try_into()
            .map_err(|_| D::Error::custom("expected 32 bytes"))
    }
}
