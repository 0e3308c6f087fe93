//! The vocabulary of the session state machine: states, reasons, events, actions.

use std::{collections::VecDeque, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// Session states (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Birth,
    Attached,
    Volatile,
    Degraded,
    Recovering,
    Terminated,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Birth,
        State::Attached,
        State::Volatile,
        State::Degraded,
        State::Recovering,
        State::Terminated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Birth => "BIRTH",
            State::Attached => "ATTACHED",
            State::Volatile => "VOLATILE",
            State::Degraded => "DEGRADED",
            State::Recovering => "RECOVERING",
            State::Terminated => "TERMINATED",
        }
    }
}

/// Why a transition happened (the `reason` of `STATE_CHANGE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    BirthComplete,
    BirthTimeout,
    TransportVolatile,
    ClientReportedLoss,
    TransportRecovered,
    ReattachStarted,
    ReattachSuccess,
    ReattachValidationFailed,
    RecoveryWindowExpired,
    SessionTtlExpired,
    Closed,
    Operator,
    /// A rebinding: the client's transport now reaches the gateway from another
    /// address (NAT rebinding, a new address on the same link).
    AddressChanged,
    /// The client's key was taken off the gateway's allow-list while the session ran
    /// (`jvpn-ctl peers remove`, then a reload).
    PeerRemoved,
}

impl Reason {
    /// Every reason, in wire-code order.
    pub const ALL: [Reason; 14] = [
        Reason::BirthComplete,
        Reason::BirthTimeout,
        Reason::TransportVolatile,
        Reason::ClientReportedLoss,
        Reason::TransportRecovered,
        Reason::ReattachStarted,
        Reason::ReattachSuccess,
        Reason::ReattachValidationFailed,
        Reason::RecoveryWindowExpired,
        Reason::SessionTtlExpired,
        Reason::Closed,
        Reason::Operator,
        Reason::AddressChanged,
        Reason::PeerRemoved,
    ];

    /// Wire code carried by CLOSE.
    pub fn code(self) -> u16 {
        self as u16 + 1
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// Why a reattach (or a request) was refused: the detail of
/// `reattach_validation_failed`, of `TRANSPORT_SWITCH_DENIED`, of `SECURITY_EVENT`,
/// and the reason code of REATTACH_DENIED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    ProofInvalid,
    FreshnessExpired,
    Replay,
    RateLimited,
    SessionTtl,
    TransportTtl,
    RecoveryWindowExpired,
    Blacklisted,
    OwnershipAmbiguous,
    DatapathError,
    /// The controller could not make the change durable (the session store failed);
    /// nothing changed, the client may try again. Never decided by the state machine.
    StoreError,
}

impl Detail {
    pub const ALL: [Detail; 11] = [
        Detail::ProofInvalid,
        Detail::FreshnessExpired,
        Detail::Replay,
        Detail::RateLimited,
        Detail::SessionTtl,
        Detail::TransportTtl,
        Detail::RecoveryWindowExpired,
        Detail::Blacklisted,
        Detail::OwnershipAmbiguous,
        Detail::DatapathError,
        Detail::StoreError,
    ];

    /// Wire code carried by REATTACH_DENIED.
    pub fn code(self) -> u16 {
        self as u16 + 1
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Detail::ProofInvalid => "proof_invalid",
            Detail::FreshnessExpired => "freshness_expired",
            Detail::Replay => "replay",
            Detail::RateLimited => "rate_limited",
            Detail::SessionTtl => "session_ttl",
            Detail::TransportTtl => "transport_ttl",
            Detail::RecoveryWindowExpired => "recovery_window_expired",
            Detail::Blacklisted => "blacklisted",
            Detail::OwnershipAmbiguous => "ownership_ambiguous",
            Detail::DatapathError => "datapath_error",
            Detail::StoreError => "store_error",
        }
    }
}

/// A reattach candidate waiting for its REATTACH_CONFIRM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub challenge: [u8; 16],
    pub seq: u64,
    /// Candidate TTL: the confirm must arrive before this instant.
    pub expires_ms: u64,
}

/// Everything the state machine knows about one session. The controller keeps one per
/// session and replaces it with the `session` of each committed [`Step`]; the durable
/// store keeps it whole (`gateway::record`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    pub id: u64,
    pub state: State,
    /// Bumped by every transition.
    pub version: u64,
    pub created_ms: u64,
    /// The single active binding (client's outer address); `None` only in BIRTH.
    pub binding: Option<SocketAddr>,
    /// Generation of the binding in the `SESSIONS` map entry.
    pub generation: u32,
    /// When the session last left ATTACHED (the recovery window runs from here).
    pub left_attached_ms: Option<u64>,
    /// Last healthy traffic seen on the bound transport.
    pub last_rx_ms: u64,
    /// Last tunnel DATA the relay counted for the session (0: none since this
    /// controller started). Decides which silence counts as a loss: the short
    /// `transport_loss_ttl_ms` while data flows, `idle_loss_ttl_ms` once it has not for
    /// `idle_after_ms`. Not stored: a resumed session starts idle, the longer grace.
    #[serde(skip)]
    pub last_data_ms: u64,
    /// Highest reattach sequence accepted (authenticated and fresh).
    pub last_reattach_seq: u64,
    /// Reattach nonces seen within the freshness window: `(expires_ms, nonce)`, oldest first.
    pub nonces: VecDeque<(u64, [u8; 16])>,
    /// Instants of successful switches within the last minute, oldest first.
    pub switches: VecDeque<u64>,
    pub pending: Option<Candidate>,
}

impl Session {
    /// A session whose WELCOME was just sent.
    pub fn new(id: u64, now_ms: u64) -> Self {
        Self {
            id,
            state: State::Birth,
            version: 0,
            created_ms: now_ms,
            binding: None,
            generation: 0,
            left_attached_ms: None,
            last_rx_ms: now_ms,
            last_data_ms: 0,
            last_reattach_seq: 0,
            nonces: VecDeque::new(),
            switches: VecDeque::new(),
            pending: None,
        }
    }
}

/// A REATTACH_REQUEST as the controller saw it. The controller does the crypto and
/// the global checks; the machine decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Observed source: the candidate binding.
    pub from: SocketAddr,
    /// Header counter: the reattach sequence.
    pub seq: u64,
    pub ts_ms: u64,
    pub nonce: [u8; 16],
    /// The HMAC proof verified under the session's `k_reattach`.
    pub proof_ok: bool,
    /// The candidate address is in the static CIDR blacklist.
    pub blacklisted: bool,
    /// A fresh random challenge, used if the request is accepted.
    pub challenge: [u8; 16],
    /// The client says its transport's address changed (a rebinding): the move into
    /// RECOVERING is reason-coded `address_changed` instead of `reattach_started`.
    pub address_changed: bool,
}

/// Inputs of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed; the controller sends one periodically and before other events.
    Tick,
    /// CONFIRM verified and the exit's keys acknowledged (the step's `SwapBinding`
    /// turns the map entry on).
    Confirmed {
        binding: SocketAddr,
    },
    /// Healthy traffic (a keepalive) seen on the bound transport.
    BoundTraffic,
    /// Tunnel DATA relayed from the bound transport (the relay's counter moved).
    BoundData,
    ReattachRequest(Request),
    ReattachConfirm {
        from: SocketAddr,
        challenge: [u8; 16],
        /// The MAC verified under `k_reattach`.
        mac_ok: bool,
    },
    /// The data plane refused the `SwapBinding` of the previous (uncommitted) step.
    SwapFailed {
        candidate: SocketAddr,
    },
    /// The client sent an authenticated CLOSE.
    Close,
    /// `jvpn-ctl session kill`.
    OperatorKill,
    /// The session's key is no longer allowed (a reload of the peers file).
    PeerRemoved,
}

/// Something the controller must do or publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SendChallenge {
        to: SocketAddr,
        challenge: [u8; 16],
    },
    /// Replace the map entry with a forwarding one, `new` as binding and
    /// `generation` (BIRTH's completion: generation 1; a reattach: the next); the
    /// step may be committed only if this succeeds (otherwise discard the step and
    /// feed [`Event::SwapFailed`] to the original session, the step's input).
    SwapBinding {
        new: SocketAddr,
        generation: u32,
    },
    SendAck {
        to: SocketAddr,
        generation: u32,
    },
    SendDenied {
        to: SocketAddr,
        detail: Detail,
    },
    /// CLOSE to the current binding.
    SendClose {
        reason: Reason,
    },
    /// Remove the map entry, revoke the exit's keys, release the tunnel address.
    Teardown,
    Emit(Notice),
}

/// Published facts; the controller adds session id and timestamp to make events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    StateChange {
        from: State,
        to: State,
        reason: Reason,
        detail: Option<Detail>,
        version: u64,
    },
    TransportSwitch {
        old: Option<SocketAddr>,
        new: SocketAddr,
        generation: u32,
    },
    TransportSwitchDenied {
        candidate: SocketAddr,
        detail: Detail,
    },
    Security {
        from: SocketAddr,
        detail: Detail,
    },
}

/// Result of [`super::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub session: Session,
    pub actions: Vec<Action>,
    /// Reason of the last transition, if any happened.
    pub reason: Option<Reason>,
}
