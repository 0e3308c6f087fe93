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
    /// The IPv6 tunnel address, from a dual-stack gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_addr6: Option<String>,
    /// Name of the bound transport.
    pub bound: Option<String>,
    /// The gateway address the binding was made with (the bound transport's current
    /// address, unless that transport has just moved and not yet reattached).
    #[serde(default)]
    pub bound_gateway: Option<String>,
    pub generation: u32,
    pub age_s: u64,
    pub switches: u64,
    /// Sessions this agent has established (more than 1: it reconnected after a
    /// TERMINATED session).
    pub sessions_established: u64,
    /// The reattach under way, if any: `"lte (awaiting challenge)"`.
    pub reattach: Option<String>,
    pub last_switch: Option<SwitchRecord>,
    /// The TUN's MTU: the bound transport's path MTU less the framing, capped by
    /// the configured `mtu` (0 while no session is up).
    #[serde(default)]
    pub tunnel_mtu: u16,
    /// The gateway's clock minus ours, in ms: what every timestamp sent to the
    /// gateway is stamped with on top of local time (docs/protocol.md, "Freshness
    /// without synchronized clocks"). 0 until a TIME or a WELCOME says otherwise.
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// Where the offset was learned: `"TIME from 10.77.1.1:51820"`, `"WELCOME from …"`.
    #[serde(default)]
    pub clock_offset_source: Option<String>,
    /// No tunnel data for `idle_after_ms`: the slow keepalive schedule
    /// (docs/client.md, "Keepalive schedule").
    #[serde(default)]
    pub idle: bool,
    pub transports: Vec<TransportStatus>,
    pub counters: Counters,
    /// The handshake under way while there is no session (`None` once one is up).
    #[serde(default)]
    pub handshake: Option<HandshakeStatus>,
}

/// A handshake the gateway has not answered (yet): what was tried, and once it has
/// gone unanswered for a few seconds, the likely causes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeStatus {
    pub for_ms: u64,
    pub hellos: u32,
    /// `"wifi (to 10.0.0.1:51820)"`, per transport a HELLO went over.
    pub transports: Vec<String>,
    /// TIME and COOKIE answers (the gateway heard us, but sent no WELCOME).
    pub answers: u32,
    pub likely_causes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransportStatus {
    pub name: String,
    pub kind: String,
    pub local: String,
    /// The gateway address this transport sends to now.
    pub gateway: String,
    /// Every configured gateway address of this transport (one, or the nodes of a
    /// gateway cluster), in order; `gateway` is one of them.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// The last move to another gateway address: `"10.0.0.9:51820 (silent for the
    /// loss TTL)"`.
    #[serde(default)]
    pub gateway_moved: Option<String>,
    pub bound: bool,
    pub health: Health,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: f64,
    pub loss_pct: u32,
    pub silence_ms: u64,
    /// Milliseconds until this transport may be tried again after a refusal.
    pub backoff_ms: u64,
    /// Largest outer IP packet confirmed to cross this path (probes, EMSGSIZE).
    #[serde(default)]
    pub path_mtu: u16,
    /// The path-MTU search has settled.
    #[serde(default)]
    pub path_mtu_settled: bool,
    /// The gateway answered "not bound" (a rebinding is needed or under way).
    #[serde(default)]
    pub not_bound: bool,
    /// DATA over this bound transport is not being forwarded by the relay.
    #[serde(default)]
    pub stalled: bool,
    /// Why it has its health: `link_down`, `address_lost`, `no_route` (the kernel),
    /// `loss_ttl`, `stalled`, `loss`, `rtt`, `jitter`, `silence`, `measured`, ...
    #[serde(default)]
    pub cause: String,
    /// Loss of the tunnel's DATA over the last second, from the relay's count, while
    /// enough flows to say (the bound transport only); `loss_pct` is the probes'.
    #[serde(default)]
    pub data_loss_pct: Option<u32>,
    /// It holds a gateway's cookie (from a COOKIE) that its HELLOs carry.
    #[serde(default)]
    pub cookie: bool,
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
    /// `recovery`, `planned move` or `address changed` (a rebinding).
    #[serde(default)]
    pub cause: String,
    /// What set it going: `link_down`, `address_lost`, `no_route` (the kernel said
    /// so), `loss_ttl` (silence), `stalled`, `quality` (over a threshold while
    /// another transport was healthy), `not_bound` (a NAT rebinding),
    /// `address_added` (a new address on the transport), `return` (back to a more
    /// preferred transport), `operator` (`client move`), `gateway_moved`.
    #[serde(default)]
    pub trigger: String,
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
    /// TUN packets not from one of the session's tunnel addresses (e.g. the kernel's
    /// own IPv6 link-local chatter, or IPv6 into an IPv4-only tunnel), dropped here
    /// rather than by the exit's inner-source check.
    #[serde(default)]
    pub tx_foreign_source: u64,
    /// DATA that failed authentication or was for another session.
    pub rx_bad: u64,
    pub rx_replayed: u64,
    /// Control messages that failed their MAC or counter check.
    pub ctl_rejected: u64,
    pub send_errors: u64,
    pub keepalives_sent: u64,
    pub reattach_attempts: u64,
    /// KEEPALIVE answers on the bound transport saying "not bound".
    #[serde(default)]
    pub not_bound_signals: u64,
    /// Reattaches over the same transport after a "not bound" (rebindings).
    #[serde(default)]
    pub rebinds: u64,
    #[serde(default)]
    pub mtu_probes_sent: u64,
    /// Sends refused with EMSGSIZE (the path is smaller than the packet).
    #[serde(default)]
    pub emsgsize: u64,
    /// TUN packets over the tunnel MTU answered with ICMP "too big" (or dropped).
    #[serde(default)]
    pub tx_too_big: u64,
    /// TUN packets over the tunnel MTU without DF, sent as IPv4 fragments.
    #[serde(default)]
    pub tx_fragmented: u64,
    pub reattach_denied: u64,
    pub reattach_timeouts: u64,
    /// Transports moved to their next gateway address (clusters).
    #[serde(default)]
    pub gateway_moves: u64,
    /// Times the agent's own loop ran late (its backlog): not counted as silence.
    #[serde(default)]
    pub stalls: u64,
    /// TIMEs that verified for a HELLO waiting and set the clock offset.
    #[serde(default)]
    pub time_replies: u64,
    /// TIMEs that changed nothing: malformed, bad signature, or no HELLO waiting
    /// with their nonce (a replay, or not for us).
    #[serde(default)]
    pub time_refused: u64,
    /// COOKIEs taken (the gateway under load): each sent one HELLO again with it.
    #[serde(default)]
    pub cookies: u64,
    /// COOKIEs that changed nothing (malformed, or no HELLO waiting with their nonce).
    #[serde(default)]
    pub cookie_refused: u64,
}
