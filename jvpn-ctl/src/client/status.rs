//! What `jvpn-ctl client status` shows (the `status` request on the client's socket).

use serde::{Deserialize, Serialize};

use super::health::Status as Health;
use crate::{control::api::SessionId, session::State};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// `None` while the first handshake is under way.
    pub session_id: Option<SessionId>,
    /// `BIRTH` while connecting.
    pub state: State,
    pub version: u64,
    pub tunnel_addr: Option<String>,
    /// Name of the bound transport.
    pub bound: Option<String>,
    pub generation: u32,
    pub age_s: u64,
    pub switches: u64,
    /// Sessions this agent has established (more than 1: it reconnected after a
    /// TERMINATED session).
    pub sessions_established: u64,
    /// The reattach under way, if any: `"lte (awaiting challenge)"`.
    pub reattach: Option<String>,
    pub last_switch: Option<SwitchRecord>,
    pub transports: Vec<TransportStatus>,
    pub counters: Counters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransportStatus {
    pub name: String,
    pub kind: String,
    pub local: String,
    pub gateway: String,
    pub bound: bool,
    pub health: Health,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: f64,
    pub loss_pct: u32,
    pub silence_ms: u64,
    /// Milliseconds until this transport may be tried again after a refusal.
    pub backoff_ms: u64,
}

/// One completed switch. For a recovery, `silent_ms` (last packet heard on the old
/// transport → ACK) is the client's view of the outage; it splits into
/// `detection_ms` (last packet heard → transport declared DEAD) and the reattach
/// exchanges that followed, the last of which took `exchange_ms` (request → ACK).
/// A planned move has no outage: both are 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    pub from: String,
    pub to: String,
    pub generation: u32,
    pub planned: bool,
    pub silent_ms: u64,
    pub detection_ms: u64,
    pub exchange_ms: u64,
    pub attempts: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// TUN packets dropped because no session was up.
    pub tx_no_session: u64,
    /// DATA that failed authentication or was for another session.
    pub rx_bad: u64,
    pub rx_replayed: u64,
    /// Control messages that failed their MAC or counter check.
    pub ctl_rejected: u64,
    pub send_errors: u64,
    pub keepalives_sent: u64,
    pub reattach_attempts: u64,
    pub reattach_denied: u64,
    pub reattach_timeouts: u64,
}
