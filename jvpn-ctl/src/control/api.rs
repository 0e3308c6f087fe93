//! The control protocol (DESIGN §6): newline-delimited JSON over a Unix socket.
//!
//! A client writes one [`Request`] per line and reads one [`Response`] per line, in
//! order. The one exception is `{"cmd":"events","follow":true}`: the gateway then
//! writes the recent events and every new one as bare [`EventRecord`] lines (no
//! envelope) until the client goes away; a follower that falls behind gets a final
//! `{"ok":false,"error":"lagged: N events dropped"}` line and is disconnected.
//!
//! ```text
//! → {"cmd":"session","id":"00000000000000a1"}
//! ← {"ok":true,"data":{"id":"00000000000000a1","state":"ATTACHED",...}}
//! → {"cmd":"kill","id":"00000000000000ff"}
//! ← {"ok":false,"error":"no session 00000000000000ff"}
//! ```

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::session::{Detail, Reason, State};

/// A session id: a non-zero `u64`, written as exactly 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a string is not a [`SessionId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseSessionIdError {
    #[error("invalid session id {0:?}: must be exactly 16 hex digits")]
    Format(String),
    #[error("invalid session id {0:?}: 0 is not a session id")]
    Zero(String),
}

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseSessionIdError::Format(s.to_owned()));
        }
        match u64::from_str_radix(s, 16) {
            Ok(0) => Err(ParseSessionIdError::Zero(s.to_owned())),
            Ok(v) => Ok(SessionId(v)),
            // Unreachable: 16 hex digits always fit.
            Err(_) => Err(ParseSessionIdError::Format(s.to_owned())),
        }
    }
}

impl From<u64> for SessionId {
    fn from(v: u64) -> Self {
        SessionId(v)
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// All sessions: `data` is `[SessionInfo]`.
    Sessions,
    /// One session: `data` is a [`SessionInfo`]; unknown id → `no session ID`.
    Session { id: SessionId },
    /// Operator kill (→ TERMINATED, reason `operator`): `data` is the session after the
    /// kill, a [`SessionInfo`] (`jvpn-ctl` ignores it; `null` is fine).
    Kill { id: SessionId },
    /// Counters: `data` is a [`Stats`].
    Stats,
    /// End every session with CLOSE (`operator`): `data` is `{"closed": n}`.
    Drain,
    /// The running policy: `data` is a [`crate::session::Policy`].
    Policy,
    /// A cluster node's view of the cluster: `data` is a [`ClusterStatus`]; a single
    /// gateway answers [`NOT_A_CLUSTER`].
    ClusterStatus,
    /// Recent events (`data` is `[EventRecord]`), or with `follow` a stream of them.
    /// Answered by the control server itself, never forwarded to the gateway core.
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// Gateway only: read the configuration and the peers file again and apply what
    /// can change live (`data` is a [`Reloaded`]); what needs a restart is named.
    Reload,
    /// Client agent only: `data` is a [`crate::client::ClientStatus`].
    Status,
    /// Client agent only: move the session to the named transport now (a planned
    /// reattach); `data` is `null`.
    Move { transport: String },
}

/// One response line: `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "RawResponse", try_from = "RawResponse")]
pub enum Response {
    Ok { data: serde_json::Value },
    Error { error: String },
}

impl Response {
    /// `{"ok":true,"data":<value>}`; a value that cannot be serialized becomes an error
    /// response (it never does for the types of this module).
    pub fn ok<T: Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(data) => Response::Ok { data },
            Err(e) => Response::error(format!("cannot encode response: {e}")),
        }
    }

    pub fn error(msg: impl fmt::Display) -> Self {
        Response::Error {
            error: msg.to_string(),
        }
    }

    /// The answer to a request naming an id the gateway does not know.
    pub fn no_session(id: SessionId) -> Self {
        Response::error(format_args!("no session {id}"))
    }

    /// The response as a JSON line, without the trailing newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"cannot encode response"}"#.to_owned())
    }
}

#[derive(Serialize, Deserialize)]
struct RawResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Response> for RawResponse {
    fn from(r: Response) -> Self {
        match r {
            Response::Ok { data } => RawResponse {
                ok: true,
                // `Some(Null)` still writes `"data":null`.
                data: Some(data),
                error: None,
            },
            Response::Error { error } => RawResponse {
                ok: false,
                data: None,
                error: Some(error),
            },
        }
    }
}

impl TryFrom<RawResponse> for Response {
    type Error = String;

    fn try_from(r: RawResponse) -> Result<Self, String> {
        if r.ok {
            Ok(Response::Ok {
                data: r.data.unwrap_or(serde_json::Value::Null),
            })
        } else {
            match r.error {
                Some(error) => Ok(Response::Error { error }),
                None => Err("response with \"ok\":false has no \"error\"".to_owned()),
            }
        }
    }
}

/// The answer to [`Request::Reload`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Keys in the peers file now.
    pub peers: usize,
    pub peers_added: usize,
    pub peers_removed: usize,
    /// Sessions of removed keys, ended with CLOSE (`peer_removed`).
    pub sessions_closed: usize,
    /// Top-level settings that changed and now apply (`policy`, `limits`, ...).
    pub applied: Vec<String>,
    /// Settings that changed in the file but apply only after a restart.
    pub need_restart: Vec<String>,
}

/// The answer of a single gateway to [`Request::ClusterStatus`].
pub const NOT_A_CLUSTER: &str =
    "this gateway is not part of a cluster ([cluster] is not configured)";

/// One session as `jvpn-ctl sessions` / `session show` see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub state: State,
    pub version: u64,
    /// The client's public key, hex.
    pub peer: String,
    /// The client's name in the allow-list, if it has one.
    pub peer_name: Option<String>,
    /// Current binding, `ip:port` (`None` in BIRTH).
    pub binding: Option<String>,
    pub generation: u32,
    pub tunnel_addr: String,
    /// The IPv6 tunnel address of a dual-stack pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_addr6: Option<String>,
    pub age_s: u64,
    /// Time since the last packet on the bound transport.
    pub idle_ms: u64,
    /// Successful transport switches over the session's life.
    pub switches: u64,
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
    /// DATA packets dropped because they came from a former binding.
    pub stale_drops: u64,
    /// In a cluster, the owner node (this node, for the sessions it lists) and its
    /// epoch, the fencing token the exit checks (0: the owner key is not acquired
    /// yet). Absent on a single gateway and from older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_node: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_epoch: Option<u64>,
}

/// `jvpn-ctl cluster status`: a node's view of its cluster, from what its lease
/// keeper, its watch and its commits already know (answering asks etcd nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    pub node: u16,
    /// The cluster's root key in etcd (`/jvpn/v1/`).
    pub root: String,
    pub lease: LeaseStatus,
    pub etcd: EtcdHealth,
    /// Every node this one knows of: announced under `nodes/`, or owning a session;
    /// by number.
    pub nodes: Vec<NodeStatus>,
    pub sessions: ClusterSessions,
    /// Ownership changes since the start, by kind: `adopting` (a takeover began),
    /// `acquired` (a new epoch written), `lost`, `refused` (a write etcd did not
    /// take), `in_doubt` (no answer).
    pub ownership: BTreeMap<String, u64>,
}

/// The node's lease as the node counts it (`docs/gateway.md`, "The lease deadline").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseStatus {
    /// etcd's lease id (0: none: not granted yet, or the last one expired).
    pub id: i64,
    pub ttl_s: u64,
    /// Until the node's own deadline (0: passed, or no lease).
    pub left_ms: u64,
    /// Before the deadline: the node may change bindings and take sessions over.
    pub live: bool,
    /// Leases since the start (1: the first; more: one ran out and was replaced).
    pub term: u64,
}

/// etcd as the node last heard from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EtcdHealth {
    pub endpoints: Vec<String>,
    /// It answered (with a leader) within the lease's TTL.
    pub reachable: bool,
    /// Since its last answer (keep-alives go out every quarter TTL).
    pub last_answer_ms_ago: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms_ago: Option<u64>,
    /// The highest revision in its answers.
    pub revision: Option<i64>,
    /// The member that sent the last answer, and its raft term.
    pub member_id: Option<u64>,
    pub raft_term: Option<u64>,
}

/// A node of the cluster as this node knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    pub node: u16,
    /// Its announcement (`nodes/<n>`, on its lease) is present: its lease is alive.
    pub announced: bool,
    /// What it announced about itself (pid, port, pool, interfaces).
    pub about: Option<String>,
    /// The sessions it owns, as the watch told this node.
    pub sessions: u64,
}

/// The cluster's sessions at one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSessions {
    /// Owned here (`jvpn-ctl sessions` lists them).
    pub owned: u64,
    /// Other nodes' sessions admitted here: a map entry that does not forward, so a
    /// reattach here can take one over once its owner is gone.
    pub foreign: u64,
    /// Of the foreign ones, those with no owner (its lease ran out; not taken over).
    pub unowned: u64,
}

/// The kinds of [`ClusterStatus::ownership`], each always reported (0 until it
/// happens).
pub const OWNERSHIP_KINDS: [&str; 6] = [
    "adopting", "acquired", "lost", "refused", "in_doubt", "no_lease",
];

/// The kinds of [`Stats::security_by_kind`], each always reported (0 until seen):
/// refused reattaches (`proof_invalid`, `freshness_expired`, `replay`,
/// `source_banned`, `before_start`) and HELLOs (`unknown_peer`, `bad_signature`, and
/// the same freshness, replay and start checks).
pub const SECURITY_KINDS: [&str; 7] = [
    "proof_invalid",
    "freshness_expired",
    "replay",
    "source_banned",
    "before_start",
    "unknown_peer",
    "bad_signature",
];

/// The reasons of [`Stats::events_suppressed`], each always reported.
pub const SUPPRESSED_REASONS: [&str; 2] = ["aggregated", "rate"];

/// The cluster part of [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStats {
    pub node: u16,
    pub lease_live: bool,
    pub sessions: ClusterSessions,
    /// As [`ClusterStatus::ownership`].
    pub ownership: BTreeMap<String, u64>,
}

/// Gateway-wide counters (`jvpn-ctl stats`, the Prometheus endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub uptime_s: u64,
    /// Current sessions by state name (`ATTACHED`, ...).
    pub sessions_by_state: BTreeMap<String, u64>,
    /// Reattach outcomes: `success` and each [`Detail`] name.
    pub reattach: BTreeMap<String, u64>,
    /// Handshake outcomes (`success`, failure kinds).
    pub handshakes: BTreeMap<String, u64>,
    /// Malformed control messages by message type.
    pub malformed: BTreeMap<String, u64>,
    /// KEEPALIVE answers: `from_binding`, `not_bound` (the signal that makes a client
    /// rebind), `not_bound_limited` (over the per-session rate, not answered).
    #[serde(default)]
    pub keepalives: BTreeMap<String, u64>,
    /// Security events, published or not (aggregated): the sum of
    /// `security_by_kind`.
    pub security_events: u64,
    /// Security events by kind (`proof_invalid`, `bad_signature`, ...).
    pub security_by_kind: BTreeMap<String, u64>,
    /// XDP drop counters by reason (with the two reasons whose packets are handed to
    /// the kernel, `neigh_unresolved` and `fragment_passed`).
    pub xdp_drops: BTreeMap<String, u64>,
    /// HELLOs the XDP program answered itself, by reason: `hello_cookie_sent` (a COOKIE
    /// by `XDP_TX`, nothing lost), `cookie_invalid` (of those, the ones whose cookie
    /// failed).
    pub xdp_answered: BTreeMap<String, u64>,
    /// DATA the XDP program relayed by a slower way, by reason: `next_hop_fib` (no
    /// valid next-hop table entry: the kernel's FIB was asked), `session_lookup` (no
    /// valid copy of the entry in the session's slot: `SESSIONS` was looked up).
    #[serde(default)]
    pub xdp_slow_path: BTreeMap<String, u64>,
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
    pub events_emitted: u64,
    pub events_dropped: u64,
    /// Events left out on purpose, by reason: `aggregated` (security events only
    /// counted, each in a `SECURITY_SUMMARY`), `rate` (lines not written to the event
    /// log over its byte rate, each in an `EVENTS_SUPPRESSED`).
    pub events_suppressed: BTreeMap<String, u64>,
    /// Times the event log reached its size limit and was renamed to `<file>.1`.
    pub event_log_rotations: u64,
    /// Cluster nodes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
    /// The XDP next-hop table the controller keeps (docs/datapath.md, "Next hops").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hops: Option<NextHopStats>,
}

/// [`Stats::next_hops`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopStats {
    /// Next hops in use, and how many of them are valid (the rest send their
    /// packets down the slow path).
    pub hops: u32,
    pub valid: u32,
    /// Destinations (binding and exit addresses) they serve.
    pub destinations: u32,
    /// Full resyncs: link, address or route changes, lost notifications.
    pub resyncs: u64,
}

/// One published event (DESIGN §4), one JSON line in the event log and on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventRecord {
    StateChange {
        ts_ms: u64,
        session_id: SessionId,
        from: State,
        to: State,
        reason: Reason,
        detail: Option<Detail>,
        version: u64,
    },
    TransportSwitch {
        ts_ms: u64,
        session_id: SessionId,
        old: Option<String>,
        new: String,
        generation: u32,
    },
    TransportSwitchDenied {
        ts_ms: u64,
        session_id: SessionId,
        candidate: String,
        detail: Detail,
    },
    SecurityEvent {
        ts_ms: u64,
        session_id: Option<SessionId>,
        /// Source address of the offending packet.
        source: String,
        /// `proof_invalid`, `replay`, `freshness_expired`, `unknown_peer`,
        /// `bad_signature`, `blacklisted_source`, ...
        kind: String,
    },
    /// Security events of one kind from one source prefix (IPv4 /24, IPv6 /64; `*`:
    /// the keys beyond the aggregation table's bound) over one aggregation interval,
    /// published when the interval ends if some of them were only counted
    /// (docs/gateway.md, "Events"). `count`: all of them, the one published as a
    /// `SECURITY_EVENT` included; `suppressed`: those only counted (`count` − 1, or
    /// `count` for `*`, whose events are never published one by one); `session_id`:
    /// the session all of them were for, if they were all for one.
    SecuritySummary {
        ts_ms: u64,
        kind: String,
        prefix: String,
        count: u64,
        suppressed: u64,
        interval_ms: u64,
        session_id: Option<SessionId>,
    },
    /// In the event log only: `count` lines (`bytes` bytes) were left out over the
    /// log's byte-rate budget since the last line written.
    EventsSuppressed { ts_ms: u64, count: u64, bytes: u64 },
    /// A session changed owner node in a cluster (`from_node`: none when it had no
    /// owner, its last one's lease having run out); `epoch` is the new owner's
    /// fencing token.
    OwnershipChange {
        ts_ms: u64,
        session_id: SessionId,
        from_node: Option<u16>,
        to_node: u16,
        epoch: u64,
    },
    /// A client transport's health changed (client agents only): `health` is
    /// `unknown`, `healthy`, `volatile` or `dead`; `cause` says why — `link_down`,
    /// `address_lost`, `no_route` (from the kernel, at once), `loss_ttl` (silence),
    /// `stalled`, `loss`, `rtt`, `jitter`, `silence`, `link_up`, `address_added`,
    /// `gateway_moved`, `measured`.
    TransportHealth {
        ts_ms: u64,
        session_id: Option<SessionId>,
        transport: String,
        health: String,
        cause: String,
    },
    /// A gateway controller started and took back its sessions from the store.
    ControllerStarted {
        ts_ms: u64,
        resumed: u64,
        /// Map entries rewritten from their records (missing, or left mid-swap).
        reinstalled: u64,
        /// Map entries no record explained (removed).
        removed: u64,
        /// Sessions whose TTL or recovery window ran out while it was away.
        expired: u64,
    },
}

impl EventRecord {
    pub fn ts_ms(&self) -> u64 {
        match self {
            EventRecord::StateChange { ts_ms, .. }
            | EventRecord::TransportSwitch { ts_ms, .. }
            | EventRecord::TransportSwitchDenied { ts_ms, .. }
            | EventRecord::SecurityEvent { ts_ms, .. }
            | EventRecord::SecuritySummary { ts_ms, .. }
            | EventRecord::EventsSuppressed { ts_ms, .. }
            | EventRecord::OwnershipChange { ts_ms, .. }
            | EventRecord::TransportHealth { ts_ms, .. }
            | EventRecord::ControllerStarted { ts_ms, .. } => *ts_ms,
        }
    }

    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            EventRecord::StateChange { session_id, .. }
            | EventRecord::TransportSwitch { session_id, .. }
            | EventRecord::TransportSwitchDenied { session_id, .. }
            | EventRecord::OwnershipChange { session_id, .. } => Some(*session_id),
            EventRecord::SecurityEvent { session_id, .. }
            | EventRecord::SecuritySummary { session_id, .. }
            | EventRecord::TransportHealth { session_id, .. } => *session_id,
            EventRecord::ControllerStarted { .. } | EventRecord::EventsSuppressed { .. } => None,
        }
    }

    /// The `type` tag: `STATE_CHANGE`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            EventRecord::StateChange { .. } => "STATE_CHANGE",
            EventRecord::TransportSwitch { .. } => "TRANSPORT_SWITCH",
            EventRecord::TransportSwitchDenied { .. } => "TRANSPORT_SWITCH_DENIED",
            EventRecord::SecurityEvent { .. } => "SECURITY_EVENT",
            EventRecord::SecuritySummary { .. } => "SECURITY_SUMMARY",
            EventRecord::EventsSuppressed { .. } => "EVENTS_SUPPRESSED",
            EventRecord::OwnershipChange { .. } => "OWNERSHIP_CHANGE",
            EventRecord::TransportHealth { .. } => "TRANSPORT_HEALTH",
            EventRecord::ControllerStarted { .. } => "CONTROLLER_STARTED",
        }
    }
}

/// Milliseconds since the Unix epoch (the `ts_ms` of events).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip<T>(v: &T) -> String
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        let s = serde_json::to_string(v).unwrap();
        let back: T = serde_json::from_str(&s).unwrap();
        assert_eq!(&back, v, "{s}");
        s
    }

    #[test]
    fn session_id_text() {
        let id = SessionId(0xa1);
        assert_eq!(id.to_string(), "00000000000000a1");
        assert_eq!("00000000000000A1".parse::<SessionId>(), Ok(id));
        assert_eq!(
            "ffffffffffffffff".parse::<SessionId>(),
            Ok(SessionId(u64::MAX))
        );
        assert_eq!(round_trip(&id), "\"00000000000000a1\"");
    }

    #[test]
    fn session_id_rejects() {
        for bad in [
            "",
            "a1",
            "000000000000000a1",
            "0x000000000000a1",
            "00000000000000g1",
            " 00000000000000a1",
            "+0000000000000a1",
            "00000000000000é",
        ] {
            let e = bad.parse::<SessionId>().unwrap_err();
            assert_eq!(e, ParseSessionIdError::Format(bad.to_owned()));
            assert!(e.to_string().contains("exactly 16 hex digits"), "{e}");
        }
        let e = "0000000000000000".parse::<SessionId>().unwrap_err();
        assert!(e.to_string().contains("0 is not a session id"), "{e}");
        let e = serde_json::from_str::<SessionId>("\"12\"").unwrap_err();
        assert!(e.to_string().contains("exactly 16 hex digits"), "{e}");
        assert!(serde_json::from_str::<SessionId>("161").is_err());
    }

    #[test]
    fn requests() {
        let id = SessionId(0x1234_5678_9abc_def0);
        let cases = [
            (Request::Sessions, json!({"cmd":"sessions"})),
            (
                Request::Session { id },
                json!({"cmd":"session","id":"123456789abcdef0"}),
            ),
            (
                Request::Kill { id },
                json!({"cmd":"kill","id":"123456789abcdef0"}),
            ),
            (Request::Stats, json!({"cmd":"stats"})),
            (Request::Policy, json!({"cmd":"policy"})),
            (Request::ClusterStatus, json!({"cmd":"cluster_status"})),
            (
                Request::Events { follow: true },
                json!({"cmd":"events","follow":true}),
            ),
        ];
        for (req, want) in cases {
            assert_eq!(serde_json::to_value(&req).unwrap(), want);
            round_trip(&req);
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"events"}"#).unwrap(),
            Request::Events { follow: false }
        );
        let e = serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `reboot`"), "{e}");
        let e = serde_json::from_str::<Request>(r#"{"cmd":"kill"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `id`"), "{e}");
        let e = serde_json::from_str::<Request>(r#"{"id":"123456789abcdef0"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `cmd`"), "{e}");
    }

    #[test]
    fn responses() {
        let ok = Response::ok(&vec![1, 2]);
        assert_eq!(round_trip(&ok), r#"{"ok":true,"data":[1,2]}"#);
        let null = Response::Ok {
            data: serde_json::Value::Null,
        };
        assert_eq!(round_trip(&null), r#"{"ok":true,"data":null}"#);
        assert_eq!(
            serde_json::from_str::<Response>(r#"{"ok":true}"#).unwrap(),
            null
        );
        let err = Response::no_session(SessionId(0xff));
        assert_eq!(
            round_trip(&err),
            r#"{"ok":false,"error":"no session 00000000000000ff"}"#
        );
        assert_eq!(err.to_line(), serde_json::to_string(&err).unwrap());
        assert!(serde_json::from_str::<Response>(r#"{"ok":false}"#).is_err());
        assert!(serde_json::from_str::<Response>(r#"{"data":1}"#).is_err());
    }

    #[test]
    fn session_info_and_stats() {
        let info = SessionInfo {
            id: SessionId(7),
            state: State::Recovering,
            version: 4,
            peer: "ab".repeat(32),
            peer_name: Some("alice".into()),
            binding: Some("192.0.2.1:4000".into()),
            generation: 2,
            tunnel_addr: "10.77.0.2".into(),
            tunnel_addr6: None,
            age_s: 61,
            idle_ms: 1500,
            switches: 1,
            up_packets: 10,
            up_bytes: 1000,
            down_packets: 20,
            down_bytes: 2000,
            stale_drops: 3,
            owner_node: None,
            owner_epoch: None,
        };
        let s = round_trip(&info);
        assert!(s.contains(r#""state":"RECOVERING""#), "{s}");
        assert!(s.contains(r#""id":"0000000000000007""#), "{s}");
        // A single gateway says nothing of owners; what it writes, an older gateway
        // wrote too, and it parses.
        assert!(!s.contains("owner"), "{s}");
        // A cluster node's session: its owner and epoch.
        let owned = SessionInfo {
            owner_node: Some(2),
            owner_epoch: Some(57),
            ..info.clone()
        };
        let s = round_trip(&owned);
        assert!(s.contains(r#""owner_node":2,"owner_epoch":57"#), "{s}");
        let mut old = serde_json::to_value(&owned).unwrap();
        old.as_object_mut().unwrap().remove("owner_node");
        old.as_object_mut().unwrap().remove("owner_epoch");
        assert_eq!(serde_json::from_value::<SessionInfo>(old).unwrap(), info);
        let stats = Stats {
            uptime_s: 5,
            sessions_by_state: [("ATTACHED".to_owned(), 2)].into(),
            reattach: [("success".to_owned(), 1), ("replay".to_owned(), 2)].into(),
            events_dropped: 9,
            ..Stats::default()
        };
        let s = round_trip(&stats);
        assert!(!s.contains("cluster"), "a single gateway's: {s}");
        let clustered = Stats {
            cluster: Some(ClusterStats {
                node: 3,
                lease_live: true,
                sessions: ClusterSessions {
                    owned: 2,
                    foreign: 5,
                    unowned: 1,
                },
                ownership: [("acquired".to_owned(), 2)].into(),
            }),
            ..stats
        };
        let s = round_trip(&clustered);
        assert!(
            s.contains(r#""cluster":{"node":3,"lease_live":true"#),
            "{s}"
        );
        // Missing fields default (older or newer gateways).
        assert_eq!(
            serde_json::from_str::<Stats>(r#"{"uptime_s":5}"#).unwrap(),
            Stats {
                uptime_s: 5,
                ..Stats::default()
            }
        );
    }

    #[test]
    fn cluster_status() {
        let status = ClusterStatus {
            node: 1,
            root: "/jvpn/v1/".into(),
            lease: LeaseStatus {
                id: 0x694d_7e3f_1a2b_3c4d,
                ttl_s: 3,
                left_ms: 2400,
                live: true,
                term: 2,
            },
            etcd: EtcdHealth {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                reachable: true,
                last_answer_ms_ago: Some(80),
                last_error: Some("watch: the stream ended".into()),
                last_error_ms_ago: Some(9000),
                revision: Some(41),
                member_id: Some(7),
                raft_term: Some(2),
            },
            nodes: vec![NodeStatus {
                node: 2,
                announced: true,
                about: Some("pid=1".into()),
                sessions: 4,
            }],
            sessions: ClusterSessions {
                owned: 1,
                foreign: 4,
                unowned: 0,
            },
            ownership: OWNERSHIP_KINDS.iter().map(|k| (k.to_string(), 1)).collect(),
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["lease"]["id"], 0x694d_7e3f_1a2b_3c4d_i64);
        assert_eq!(v["etcd"]["reachable"], true);
        assert_eq!(v["nodes"][0]["node"], 2);
        assert_eq!(v["ownership"]["in_doubt"], 1);
        round_trip(&status);
        // A field this side does not know yet (a newer gateway) is ignored, a missing
        // one defaults.
        let parsed: ClusterStatus =
            serde_json::from_str(r#"{"node":4,"quorum":"new","etcd":{"reachable":true}}"#).unwrap();
        assert_eq!((parsed.node, parsed.etcd.reachable), (4, true));
        assert_eq!(parsed.lease, LeaseStatus::default());
    }

    #[test]
    fn events() {
        let id = SessionId(0xabc);
        let cases = [
            (
                EventRecord::StateChange {
                    ts_ms: 1,
                    session_id: id,
                    from: State::Recovering,
                    to: State::Degraded,
                    reason: Reason::ReattachValidationFailed,
                    detail: Some(Detail::RateLimited),
                    version: 9,
                },
                json!({"type":"STATE_CHANGE","ts_ms":1,"session_id":"0000000000000abc",
                       "from":"RECOVERING","to":"DEGRADED","reason":"reattach_validation_failed",
                       "detail":"rate_limited","version":9}),
            ),
            (
                EventRecord::TransportSwitch {
                    ts_ms: 2,
                    session_id: id,
                    old: Some("192.0.2.1:1".into()),
                    new: "[2001:db8::1]:2".into(),
                    generation: 3,
                },
                json!({"type":"TRANSPORT_SWITCH","ts_ms":2,"session_id":"0000000000000abc",
                       "old":"192.0.2.1:1","new":"[2001:db8::1]:2","generation":3}),
            ),
            (
                EventRecord::TransportSwitchDenied {
                    ts_ms: 3,
                    session_id: id,
                    candidate: "192.0.2.9:9".into(),
                    detail: Detail::Blacklisted,
                },
                json!({"type":"TRANSPORT_SWITCH_DENIED","ts_ms":3,"session_id":"0000000000000abc",
                       "candidate":"192.0.2.9:9","detail":"blacklisted"}),
            ),
            (
                EventRecord::SecurityEvent {
                    ts_ms: 4,
                    session_id: None,
                    source: "198.51.100.1:5".into(),
                    kind: "unknown_peer".into(),
                },
                json!({"type":"SECURITY_EVENT","ts_ms":4,"session_id":null,
                       "source":"198.51.100.1:5","kind":"unknown_peer"}),
            ),
            (
                EventRecord::SecuritySummary {
                    ts_ms: 5,
                    kind: "bad_signature".into(),
                    prefix: "10.77.2.0/24".into(),
                    count: 110_000,
                    suppressed: 109_999,
                    interval_ms: 1000,
                    session_id: None,
                },
                json!({"type":"SECURITY_SUMMARY","ts_ms":5,"kind":"bad_signature",
                       "prefix":"10.77.2.0/24","count":110_000,"suppressed":109_999,
                       "interval_ms":1000,"session_id":null}),
            ),
            (
                EventRecord::EventsSuppressed {
                    ts_ms: 6,
                    count: 3,
                    bytes: 420,
                },
                json!({"type":"EVENTS_SUPPRESSED","ts_ms":6,"count":3,"bytes":420}),
            ),
        ];
        for (ev, want) in cases {
            assert_eq!(serde_json::to_value(&ev).unwrap(), want);
            round_trip(&ev);
            assert_eq!(want["type"], ev.kind());
            assert_eq!(want["ts_ms"], ev.ts_ms());
        }
    }
}
