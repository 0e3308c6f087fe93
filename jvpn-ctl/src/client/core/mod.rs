//! The client agent's logic: handshake, tunnel crypto, transport health, and
//! reattach, as synchronous code with time as an input. The I/O shell
//! ([`super::run`]) feeds it datagrams, TUN packets and ticks, and carries out what
//! it queues in [`Core::out`].
//!
//! Session states mirror the gateway's (DESIGN §4) from the client's side:
//!
//! | from | when | to | reason |
//! |---|---|---|---|
//! | BIRTH | ESTABLISHED verified | ATTACHED | birth_complete |
//! | ATTACHED | bound transport over a threshold or silent | VOLATILE | transport_volatile |
//! | VOLATILE, DEGRADED | bound transport healthy again | ATTACHED | transport_recovered |
//! | VOLATILE, DEGRADED | bound transport DEAD, a candidate to try | RECOVERING | reattach_started |
//! | ATTACHED | a more preferred transport healthy for `return_after_ms`, or `client move` | RECOVERING | reattach_started |
//! | ATTACHED, VOLATILE, DEGRADED | the bound transport's KEEPALIVE answered "not bound" (current generation) | RECOVERING (rebind over the same transport) | address_changed |
//! | ATTACHED, VOLATILE, DEGRADED | the bound transport's interface got a new address (it follows its interface) | RECOVERING (rebind from the new address) | address_changed |
//! | ATTACHED, VOLATILE | bound transport over a loss / RTT / jitter threshold for its dwell, another transport healthy | RECOVERING (a planned move, trigger `quality`) | reattach_started |
//! | ATTACHED | a more preferred transport got a new address and answered | RECOVERING | reattach_started |
//! | RECOVERING | REATTACH_ACK | ATTACHED | reattach_success |
//! | RECOVERING | REATTACH_DENIED, or no answer within `attempt_timeout_ms` | DEGRADED | reattach_validation_failed (+detail) |
//! | any | CLOSE from the gateway; recovery window or session TTL over | TERMINATED | the CLOSE's reason / recovery_window_expired / session_ttl_expired |
//!
//! A transport is DEAD when silent for the loss TTL, when its DATA stalls for as
//! long, or at once when the kernel says its link is down, its address is gone or
//! there is no route to its gateway ([`LinkSignal`]); the bound one being DEAD
//! starts the recovery in the same step. Everything enters through [`Core::step`].
//!
//! Refusals are obeyed: a DENIED candidate backs off (rate limits back off the whole
//! session), and nothing ever falls back silently to a fresh session. Only after
//! TERMINATED does the agent start a new one, if `reconnect` is set, and it says so.
//!
//! A transport may have several gateway addresses (the nodes of one cluster). It
//! sends to its current one and moves to the next ([`Core::rotate`]) when a reattach
//! over it goes unanswered or is refused as `ownership_ambiguous`, when it is silent
//! for the loss TTL, or when a HELLO goes unanswered. The bound transport that moved
//! is DEAD for the session (its binding is at the address it left) until a reattach
//! (cause `recovery`) succeeds over it or over another transport.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
};

use jvpn_common::wire::msg_type;
use ring::{
    hmac,
    rand::{SecureRandom as _, SystemRandom},
    signature::Ed25519KeyPair,
};

pub use links::{Down, LinkSignal};
pub use tunnel::Opened;

use super::{
    config::{ClientConfig, HealthConfig, TransportConfig},
    health::{Health, Over, Status, Thresholds},
    pmtu::PathMtu,
    status::{ClientStatus, Counters, SwitchRecord, TransportStatus},
};
use crate::{
    control::api::{EventRecord, SessionId},
    icmp,
    proto::{
        self, Body, ClientHandshake, ClientSession, Control, CtlWindow, DataKey, Hint,
        ReattachCause, ReattachRequest, ReplayWindow, Unverified,
        control::{ACK_FROM_BINDING, KEEPALIVE_LEN},
        data::{inner_mtu, ip_udp_len},
    },
    session::{Detail, Reason, State},
};

mod silence;

/// HELLO retransmission period, and HELLOs per transport before the next is tried.
const HELLO_EVERY_MS: u64 = 1_000;
/// HELLOs sent at once on a TIME or COOKIE between two of the timer's: a gateway
/// that keeps answering so cannot make the client send at the speed of the network.
const QUICK_HELLOS: u32 = 4;
/// A WELCOME's time further than this from ours (with the offset we use) sets the
/// offset: a quarter of the gateway's default freshness window (30 s), which the
/// client does not know.
const WELCOME_SKEW_MS: u64 = 7_500;
const HELLOS_PER_TRANSPORT: u32 = 3;
/// In-flight handshakes kept (a late WELCOME for an earlier HELLO is still usable).
const MAX_HANDSHAKES: usize = 4;
const CONFIRM_EVERY_MS: u64 = 250;
const CONFIRM_GIVE_UP_MS: u64 = 10_000;
/// Pause before a new session after TERMINATED.
const RECONNECT_AFTER_MS: u64 = 1_000;
/// Grace after the session TTL for the gateway's CLOSE before the client ends it.
const TTL_GRACE_MS: u64 = 5_000;
/// Back-off after refusals.
const BACKOFF_CANDIDATE_MS: u64 = 2_000;
const BACKOFF_BLACKLISTED_MS: u64 = 60_000;
const BACKOFF_RATE_FIRST_MS: u64 = 1_000;
const BACKOFF_RATE_MAX_MS: u64 = 16_000;
/// DATA sent over the binding between two answered KEEPALIVEs, none of it forwarded
/// by the relay: the tunnel is not getting through although KEEPALIVEs are.
const STALL_MIN_SENT: u64 = 4;
/// Recent KEEPALIVEs remembered per transport (timestamp → DATA sent before it).
const SENT_AT: usize = 16;
/// Largest path MTU tried when the shell could not ask the kernel.
const DEFAULT_MAX_MTU: u16 = 1500;
/// How long a new address keeps its transport's fast return.
const FAST_RETURN_MS: u64 = 10_000;
/// The first hold after a quality move, doubling per move up to the last.
const QUALITY_HOLD_FIRST_MS: u64 = 10_000;
const QUALITY_HOLD_MAX_MS: u64 = 300_000;
/// Probes on the bound transport in a row unanswered before its silence makes it
/// VOLATILE (when `volatile_after_ms` is left at 0).
const SILENT_PROBES: u64 = 3;
/// Times each tunnel-MTU change is told to the exit.
const MTU_NOTICES: u8 = 3;
/// Gateway control counters remembered across addresses: one accepted from one
/// address is refused from every other (a replay under another source address).
const RECENT_GW_CTRS: usize = 256;

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// Send on transport `transport` to `to`, its current gateway address (never
    /// fragmented: DF).
    Udp {
        transport: usize,
        to: SocketAddr,
        data: Vec<u8>,
    },
    /// The tunnel MTU changed (a switch, or a path MTU learned): set the TUN's MTU.
    TunMtu(u16),
    /// Write an inner packet to the TUN device.
    Tun(Vec<u8>),
    /// A session is up: give the TUN these addresses (an IPv6 one beside the first
    /// from a dual-stack gateway) and the configured routes.
    TunUp(IpAddr, Option<std::net::Ipv6Addr>),
    Event(EventRecord),
    /// The session is TERMINATED and `reconnect` is off: stop.
    Exit(Reason),
}

/// One event for the core. [`Core::step`] takes it with the time and returns what
/// the shell must do; nothing else reaches the core (the operator's status and
/// move requests are questions answered at once: [`Core::status`],
/// [`Core::request_move`]).
#[derive(Debug)]
pub enum Input<'a> {
    /// A datagram on transport `transport` from `from` (one of its gateway
    /// addresses; the shell drops anything else).
    Datagram {
        transport: usize,
        from: SocketAddr,
        data: &'a [u8],
    },
    /// An inner packet read from the TUN device.
    Tun(&'a [u8]),
    /// What the kernel says about a transport's link.
    Link {
        transport: usize,
        signal: LinkSignal,
    },
    /// The timer (every 10 ms in the shell).
    Tick,
    /// The shell's loop ran `gap_ms` late: its own backlog, not the links' silence.
    Stall { gap_ms: u64 },
    /// The kernel's route MTU towards transport `transport`'s current gateway
    /// address (where path-MTU probing starts).
    PathMax { transport: usize, mtu: u16 },
    /// A send of `len` UDP payload bytes on `transport` failed with EMSGSIZE;
    /// `route_mtu` is what the kernel now reports for the path, if it could be read.
    TooBig {
        transport: usize,
        len: usize,
        route_mtu: Option<u16>,
    },
    /// A send failed otherwise.
    SendError,
    /// Shutting down: CLOSE the session.
    Close,
}

/// One transport and what the agent knows about it.
struct Link {
    cfg: TransportConfig,
    /// The gateway addresses (one, or the nodes of a cluster) and the one in use: all
    /// it sends goes there, and only what comes from there is its health.
    gateways: Vec<SocketAddr>,
    current: usize,
    /// Reattaches over this transport that failed in a row, each moving it on: once
    /// every address has failed, the usual back-off applies again.
    failed_in_row: usize,
    /// The last move to another address, for status.
    moved: Option<String>,
    /// The route MTU the shell last reported (where a new address's search starts).
    route_max: u16,
    /// The socket's actual local address (the binding the gateway sees).
    local: String,
    health: Health,
    status: Status,
    healthy_for_ms: u64,
    last_probe_ms: Option<u64>,
    backoff_until: u64,
    /// Last KEEPALIVE timestamp on this transport: each is unique, so answers match.
    last_ts: u64,
    pmtu: PathMtu,
    /// Outstanding path-MTU probes: (KEEPALIVE ts, probe id).
    mtu_probes: VecDeque<(u64, u64)>,
    /// DATA sent (the session's count) when each recent KEEPALIVE left: (ts, count).
    sent_at: VecDeque<(u64, u64)>,
    /// The last answer from the binding: (DATA sent before its KEEPALIVE, the relay's
    /// uplink count).
    last_fwd: Option<(u64, u32)>,
    /// Since when DATA over this (bound) transport has not reached the relay.
    stalled_since: Option<u64>,
    /// The gateway answered this transport's KEEPALIVE with "not bound".
    not_bound: bool,
    /// The kernel says it cannot carry anything (link down, address gone, no
    /// route): DEAD whatever its last answers said, and not probed.
    down: Option<Down>,
    /// It came back with a new address (a new network): until then the session moves
    /// back to it at its first answered probe rather than after `return_after_ms`.
    fast_return_until: u64,
    /// The session left it for its quality: no move back before then (doubling with
    /// every such move, so a link that loses only the tunnel's DATA — which its
    /// probes alone cannot see once it is not bound — is not returned to in a loop).
    quality_hold_until: u64,
    quality_moves: u32,
    /// The cause of its last reported health change (for its next event).
    cause: &'static str,
    /// The last COOKIE's cookie and the gateway address (index) it came from: the
    /// HELLOs to that address carry it. It is bound to this transport's source
    /// address and port, so it is forgotten when the socket is bound anew.
    cookie: Option<(usize, [u8; 16])>,
}

impl Link {
    fn v6(&self) -> bool {
        self.cfg.v6()
    }

    fn gateway(&self) -> SocketAddr {
        self.gateways[self.current]
    }

    fn addr_index(&self, a: SocketAddr) -> Option<usize> {
        self.gateways.iter().position(|g| *g == a)
    }

    fn next_ts(&mut self, now_ms: u64) -> u64 {
        self.last_ts = now_ms.max(self.last_ts + 1);
        self.last_ts
    }

    /// Forgets what was measured on this transport's path (it moved, came back, or a
    /// new session starts): health from silence again, no probe outstanding.
    fn start_over(&mut self, now_ms: u64) {
        self.health.reset(now_ms);
        self.healthy_for_ms = 0;
        self.last_probe_ms = None;
        self.mtu_probes.clear();
        self.sent_at.clear();
        self.last_fwd = None;
        self.stalled_since = None;
        self.not_bound = false;
    }

    /// The largest inner packet this transport carries whole.
    fn tunnel_mtu(&self) -> u16 {
        inner_mtu(self.pmtu.current(), self.v6())
    }
}

struct Attempt {
    candidate: usize,
    /// The candidate's gateway address (index) the request went to; only its answers
    /// count, and the candidate does not move while the attempt lasts.
    addr: usize,
    awaiting_ack: bool,
    /// Last message of the exchange sent at.
    sent_ms: u64,
    started_ms: u64,
    cause: ReattachCause,
    /// When the bound transport was last heard, taken as the attempt starts: a
    /// rebinding's own exchange runs over that transport and would hide it.
    heard_ms: u64,
}

struct Connecting {
    transport: usize,
    handshakes: Vec<SentHello>,
    hellos_on_transport: u32,
    last_hello_ms: u64,
    /// HELLOs sent at once on a TIME or COOKIE since the timer's last.
    quick_hellos: u32,
    /// What this handshake has sent and heard, for saying why nothing happens
    /// (`silence.rs`).
    silence: silence::Silence,
    /// WELCOME verified; CONFIRM being sent until ESTABLISHED.
    confirming: Option<(ClientSession, u64)>,
}

/// A HELLO waiting for its WELCOME (or a TIME or COOKIE, which consume it).
struct SentHello {
    hs: ClientHandshake,
    /// The transport it went over: only answers on it count.
    transport: usize,
}

struct Session {
    id: u64,
    mac: hmac::Key,
    c2x: DataKey,
    x2c: DataKey,
    tunnel: IpAddr,
    tunnel6: Option<std::net::Ipv6Addr>,
    hint: Hint,
    state: State,
    version: u64,
    bound: usize,
    /// The bound transport's address (index) the binding was made with: once that
    /// transport has moved on, the binding is unreachable until a reattach.
    bound_addr: usize,
    generation: u32,
    ctl_ctr: u64,
    data_ctr: u64,
    rx_window: ReplayWindow,
    gw_ctl: GwWindows,
    attempt: Option<Attempt>,
    /// When the bound transport was declared DEAD (start of a recovery).
    dead_since: Option<u64>,
    /// When the bound transport was last heard at the binding's address, kept when it
    /// moves on (its health starts over there), for the switch record.
    moved_heard_ms: Option<u64>,
    left_attached_ms: Option<u64>,
    created_ms: u64,
    /// Reattach attempts since the session last left ATTACHED (for the record).
    tries: u32,
    rate_backoff_ms: u64,
    rate_backoff_until: u64,
    switches: u64,
    last_switch: Option<SwitchRecord>,
    /// Operator-requested move, served on the next tick.
    move_to: Option<usize>,
    /// The MTU the TUN was last given.
    tun_mtu: u16,
    /// MTU notices to the exit still to send (DATA can be lost), and when the next.
    notices_left: u8,
    notice_at: u64,
    /// What set the reattach under way going (`link_down`, `loss_ttl`, `quality`,
    /// `return`, `operator`, ...), for the switch record.
    trigger: &'static str,
}

impl Session {
    /// The next control message of this session, MACed (`None` only if encoding
    /// fails, which a well-formed body never does).
    fn control(&mut self, body: Body) -> Option<Vec<u8>> {
        self.ctl_ctr += 1;
        Control {
            session_id: self.id,
            ctr: self.ctl_ctr,
            body,
        }
        .encode(&self.mac)
        .ok()
    }
}

/// Replay windows for the gateway's control counters, one per gateway address: the
/// nodes of a cluster count independently (each from its own start time in µs), so a
/// shared window would refuse the node with the lower counter as "64 behind". A
/// counter accepted from one address is still refused from any other (the last
/// [`RECENT_GW_CTRS`]), so a captured reply cannot be replayed under another
/// source address while it is recent.
#[derive(Default)]
struct GwWindows {
    by_addr: Vec<(SocketAddr, CtlWindow)>,
    recent: VecDeque<u64>,
}

impl GwWindows {
    /// Checks and records `ctr` from `from`; false: a replay (or too old).
    fn update(&mut self, from: SocketAddr, ctr: u64) -> bool {
        if self.recent.contains(&ctr) {
            return false;
        }
        let i = match self.by_addr.iter().position(|(a, _)| *a == from) {
            Some(i) => i,
            None => {
                self.by_addr.push((from, CtlWindow::default()));
                self.by_addr.len() - 1
            }
        };
        if !self.by_addr[i].1.update(ctr) {
            return false;
        }
        if self.recent.len() == RECENT_GW_CTRS {
            self.recent.pop_front();
        }
        self.recent.push_back(ctr);
        true
    }
}

enum Phase {
    Connecting(Box<Connecting>),
    Up(Box<Session>),
    /// TERMINATED; a new session starts at `reconnect_at` if reconnecting.
    Ended {
        reconnect_at: Option<u64>,
    },
}

/// The tunnel's data counters at the last look, and when they last moved.
#[derive(Debug)]
struct Activity {
    tx: u64,
    rx: u64,
    last_data_ms: u64,
    /// No data for `idle_after_ms`: the slow keepalive schedule.
    idle: bool,
}

pub struct Core {
    links: Vec<Link>,
    health: HealthConfig,
    identity: Ed25519KeyPair,
    gateway_pub: [u8; 32],
    reconnect: bool,
    phase: Phase,
    rng: SystemRandom,
    counters: Counters,
    established: u64,
    /// Last state reported, for status while connecting or ended.
    last_state: State,
    /// The configured tunnel MTU: the most the tunnel is given, whatever the paths.
    mtu_cap: u16,
    /// The gateway's clock minus ours, learned from a TIME (or a WELCOME far from
    /// it): every timestamp sent to the gateway is local time plus this, and every
    /// one it echoes is taken back by it. One for the gateway's identity (the nodes
    /// of a cluster share it and keep one time); it changes only while connecting,
    /// so no timestamp in flight is ever read with another offset.
    clock_offset_ms: i64,
    /// Where it was learned: `"TIME from 10.77.1.1:51820"`.
    clock_offset_source: Option<String>,
    /// Whether the tunnel carries data: it sets the keepalive schedule.
    activity: Activity,
    /// What the shell must do, returned by [`Core::step`].
    out: Vec<Out>,
}

impl Core {
    /// `cfg` must have passed [`ClientConfig::validate`] (every transport has at least
    /// one gateway address).
    pub fn new(
        cfg: &ClientConfig,
        identity: Ed25519KeyPair,
        gateway_pub: [u8; 32],
        now_ms: u64,
    ) -> Self {
        let links = cfg
            .transports
            .iter()
            .map(|t| Link {
                local: t.bind_addr().to_string(),
                gateways: t.addresses(),
                current: 0,
                failed_in_row: 0,
                moved: None,
                route_max: DEFAULT_MAX_MTU,
                cfg: t.clone(),
                health: Health::new(now_ms),
                status: Status::Unknown,
                healthy_for_ms: 0,
                last_probe_ms: None,
                backoff_until: 0,
                last_ts: 0,
                pmtu: new_pmtu(t.v6(), DEFAULT_MAX_MTU, now_ms),
                mtu_probes: VecDeque::new(),
                sent_at: VecDeque::new(),
                last_fwd: None,
                stalled_since: None,
                not_bound: false,
                down: None,
                fast_return_until: 0,
                quality_hold_until: 0,
                quality_moves: 0,
                cause: "",
                cookie: None,
            })
            .collect();
        let mut core = Self {
            links,
            health: cfg.health.clone(),
            identity,
            gateway_pub,
            reconnect: cfg.reconnect,
            phase: Phase::Ended { reconnect_at: None },
            rng: SystemRandom::new(),
            counters: Counters::default(),
            established: 0,
            last_state: State::Birth,
            mtu_cap: u16::try_from(cfg.mtu).unwrap_or(u16::MAX),
            clock_offset_ms: 0,
            clock_offset_source: None,
            activity: Activity {
                tx: 0,
                rx: 0,
                last_data_ms: now_ms,
                idle: false,
            },
            out: Vec::new(),
        };
        core.connect(0, now_ms);
        core
    }

    /// Feeds one event at `now_ms`; returns what the shell must do, in order.
    pub fn step(&mut self, input: Input<'_>, now_ms: u64) -> Vec<Out> {
        match input {
            Input::Datagram {
                transport,
                from,
                data,
            } => self.on_datagram(transport, from, data, now_ms),
            Input::Tun(pkt) => self.on_tun(pkt),
            Input::Link { transport, signal } => self.on_link(transport, signal, now_ms),
            Input::Tick => self.tick(now_ms),
            Input::Stall { gap_ms } => self.note_stall(gap_ms),
            Input::PathMax { transport, mtu } => self.set_path_max(transport, mtu, now_ms),
            Input::TooBig {
                transport,
                len,
                route_mtu,
            } => self.note_too_big(transport, len, route_mtu, now_ms),
            Input::SendError => self.note_send_error(),
            Input::Close => self.close(now_ms),
        }
        std::mem::take(&mut self.out)
    }

    /// The shell reports the socket's real local address (port 0 resolved).
    pub fn set_local(&mut self, transport: usize, local: SocketAddr) {
        let l = &mut self.links[transport];
        let local = local.to_string();
        if l.local != local {
            // A cookie is bound to the source address and port it was given to.
            l.cookie = None;
        }
        l.local = local;
    }

    /// The gateway's clock minus ours (0 until a TIME or a WELCOME said otherwise).
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms
    }

    /// The gateway address transport `t` sends to now (it changes when the transport
    /// moves to another node of a cluster).
    pub fn gateway(&self, t: usize) -> SocketAddr {
        self.links[t].gateway()
    }

    pub fn session_id(&self) -> Option<u64> {
        match &self.phase {
            Phase::Up(s) => Some(s.id),
            _ => None,
        }
    }

    /// The session's IPv6 tunnel address (a dual-stack gateway's), if a session is up.
    pub fn tunnel6(&self) -> Option<std::net::Ipv6Addr> {
        match &self.phase {
            Phase::Up(s) => s.tunnel6,
            _ => None,
        }
    }

    fn note_send_error(&mut self) {
        self.counters.send_errors += 1;
    }

    /// The largest packet the kernel will send on transport `t` (its route's MTU,
    /// which includes what ICMP "too big" taught it): where path-MTU probing starts.
    fn set_path_max(&mut self, t: usize, mtu: u16, now_ms: u64) {
        let l = &mut self.links[t];
        l.route_max = mtu.max(PathMtu::base_for(l.v6()));
        l.pmtu.set_max(l.route_max, now_ms);
        self.apply_tunnel_mtu();
    }

    /// A send of `len` UDP payload bytes on `t` failed with EMSGSIZE; `route_mtu` is
    /// what the kernel now reports for the path, if it could be read.
    fn note_too_big(&mut self, t: usize, len: usize, route_mtu: Option<u16>, now_ms: u64) {
        self.counters.send_errors += 1;
        self.counters.emsgsize += 1;
        let l = &mut self.links[t];
        let sent = u16::try_from(len)
            .unwrap_or(u16::MAX)
            .saturating_add(ip_udp_len(l.v6()));
        let mtu = route_mtu.map_or(sent - 1, |m| m.min(sent - 1));
        l.pmtu.on_too_big(mtu, now_ms);
        self.apply_tunnel_mtu();
    }
}

impl Core {
    fn go(&mut self, to: State, reason: Reason, detail: Option<Detail>, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let from = s.state;
        if from == to {
            return;
        }
        if to == State::Attached {
            s.left_attached_ms = None;
            s.tries = 0;
        } else if from == State::Attached || from == State::Birth {
            s.left_attached_ms = Some(now_ms);
        }
        if to != State::Recovering {
            s.attempt = None;
        }
        s.state = to;
        s.version += 1;
        self.last_state = to;
        tracing::info!(
            "session {:016x}: {} → {} ({reason:?}{})",
            s.id,
            from.name(),
            to.name(),
            detail.map(|d| format!(", {d:?}")).unwrap_or_default()
        );
        let ev = EventRecord::StateChange {
            ts_ms: now_ms,
            session_id: SessionId(s.id),
            from,
            to,
            reason,
            detail,
            version: s.version,
        };
        self.out.push(Out::Event(ev));
    }

    /// Records transport `t`'s health and, when it changed, says so in a
    /// TRANSPORT_HEALTH event with its cause.
    fn set_status(&mut self, t: usize, st: Status, cause: &'static str, now_ms: u64) {
        let session_id = self.session_id().map(SessionId);
        let l = &mut self.links[t];
        if l.status == st && (st != Status::Dead || l.cause == cause) {
            return;
        }
        l.status = st;
        l.cause = cause;
        let ev = EventRecord::TransportHealth {
            ts_ms: now_ms,
            session_id,
            transport: l.cfg.name.clone(),
            health: st.name().into(),
            cause: cause.into(),
        };
        self.out.push(Out::Event(ev));
    }

    /// The shell's loop could not run for `gap_ms` (its own backlog, a suspended
    /// process): no transport was heard in that time because nothing was read, so
    /// that time does not count as their silence.
    fn note_stall(&mut self, gap_ms: u64) {
        self.counters.stalls += 1;
        for l in &mut self.links {
            l.health.pause(gap_ms);
            if let Some(t) = &mut l.stalled_since {
                *t += gap_ms;
            }
        }
        // An answer may be waiting unread: the exchange's timer did not run either.
        if let Phase::Up(s) = &mut self.phase
            && let Some(a) = &mut s.attempt
        {
            a.sent_ms += gap_ms;
        }
    }

    fn emit_switch(&mut self, old: Option<String>, new: String, generation: u32, now_ms: u64) {
        if let Phase::Up(s) = &self.phase {
            let ev = EventRecord::TransportSwitch {
                ts_ms: now_ms,
                session_id: SessionId(s.id),
                old,
                new,
                generation,
            };
            self.out.push(Out::Event(ev));
        }
    }

    fn terminate(&mut self, reason: Reason, now_ms: u64) {
        if !matches!(self.phase, Phase::Up(_)) {
            return;
        }
        self.go(State::Terminated, reason, None, now_ms);
        if let Phase::Up(s) = &self.phase {
            tracing::warn!("session {:016x} TERMINATED ({reason:?})", s.id);
        }
        let reconnect = self.reconnect;
        self.phase = Phase::Ended {
            reconnect_at: reconnect.then(|| now_ms + RECONNECT_AFTER_MS),
        };
        if reconnect {
            tracing::warn!(
                "a new session will be established in {RECONNECT_AFTER_MS} ms (new keys, \
                 possibly a new tunnel address)"
            );
        } else {
            self.out.push(Out::Exit(reason));
        }
    }
}

/// A local timestamp as the gateway's clock would show it.
fn to_gateway_ms(local_ms: u64, offset_ms: i64) -> u64 {
    local_ms.saturating_add_signed(offset_ms)
}

/// A timestamp the gateway echoes, back in local time (`None`: not one of ours).
fn from_gateway_ms(gateway_ms: u64, offset_ms: i64) -> Option<u64> {
    gateway_ms.checked_add_signed(offset_ms.checked_neg()?)
}

fn new_pmtu(v6: bool, max: u16, now_ms: u64) -> PathMtu {
    PathMtu::new(PathMtu::base_for(v6), max, now_ms)
}

/// Keeps the last [`SENT_AT`] of something per transport.
fn remember<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == SENT_AT {
        q.pop_front();
    }
    q.push_back(v);
}

fn cause_name(c: ReattachCause) -> &'static str {
    match c {
        ReattachCause::Recovery => "recovery",
        ReattachCause::Planned => "planned move",
        ReattachCause::AddressChanged => "address changed",
    }
}

mod decide;
mod handshake;
mod input;
mod links;
mod probes;
mod reattach;
mod tunnel;
mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod transitions;
