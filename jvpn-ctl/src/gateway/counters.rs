//! The controller's own counters (the data plane's live in its maps).

use std::collections::BTreeMap;

#[derive(Default, Debug, Clone)]
pub struct Counters {
    /// Handshake outcomes: `established`, and each rejection kind.
    pub handshakes: BTreeMap<String, u64>,
    /// Reattach outcomes: `success`, and each detail code.
    pub reattach: BTreeMap<String, u64>,
    /// Control messages that did not parse, by message type.
    pub malformed: BTreeMap<String, u64>,
    /// KEEPALIVE answers by outcome (see `control::api::Stats::keepalives`).
    pub keepalives: BTreeMap<String, u64>,
    /// Cluster ownership (`control::api::OWNERSHIP_KINDS`): `adopting` (a takeover
    /// started), `acquired`, `lost`, `refused` (a write etcd did not take),
    /// `in_doubt` (no answer).
    pub ownership: BTreeMap<String, u64>,
    pub security_events: u64,
    /// Security events by kind (their sum is `security_events`).
    pub security: BTreeMap<String, u64>,
    /// Replies the socket buffer refused.
    pub send_failures: u64,
}

pub fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_string()).or_default() += 1;
}

/// Takes back a [`bump`] (a batch whose commit failed did not happen).
pub fn unbump(map: &mut BTreeMap<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
    }
}
