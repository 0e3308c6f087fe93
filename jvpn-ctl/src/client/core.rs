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
//! | RECOVERING | REATTACH_ACK | ATTACHED | reattach_success |
//! | RECOVERING | REATTACH_DENIED, or no answer within `attempt_timeout_ms` | DEGRADED | reattach_validation_failed (+detail) |
//! | any | CLOSE from the gateway; recovery window or session TTL over | TERMINATED | the CLOSE's reason / recovery_window_expired / session_ttl_expired |
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

use super::{
    config::{ClientConfig, HealthConfig, TransportConfig},
    health::{Health, Status, Thresholds},
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

/// HELLO retransmission period, and HELLOs per transport before the next is tried.
const HELLO_EVERY_MS: u64 = 1_000;
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
    /// A session is up: give the TUN this address (and the configured routes).
    TunUp(IpAddr),
    Event(EventRecord),
    /// The session is TERMINATED and `reconnect` is off: stop.
    Exit(Reason),
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
}

impl Link {
    fn v6(&self) -> bool {
        self.cfg.bind.is_ipv6()
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
    handshakes: Vec<ClientHandshake>,
    hellos_on_transport: u32,
    last_hello_ms: u64,
    /// WELCOME verified; CONFIRM being sent until ESTABLISHED.
    confirming: Option<(ClientSession, u64)>,
}

struct Session {
    id: u64,
    mac: hmac::Key,
    c2x: DataKey,
    x2c: DataKey,
    tunnel: IpAddr,
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
    pub out: Vec<Out>,
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
                local: t.bind.to_string(),
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
                pmtu: new_pmtu(t.bind.is_ipv6(), DEFAULT_MAX_MTU, now_ms),
                mtu_probes: VecDeque::new(),
                sent_at: VecDeque::new(),
                last_fwd: None,
                stalled_since: None,
                not_bound: false,
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
            out: Vec::new(),
        };
        core.connect(0, now_ms);
        core
    }

    /// The shell reports the socket's real local address (port 0 resolved).
    pub fn set_local(&mut self, transport: usize, local: SocketAddr) {
        self.links[transport].local = local.to_string();
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

    pub fn note_send_error(&mut self) {
        self.counters.send_errors += 1;
    }

    /// The largest packet the kernel will send on transport `t` (its route's MTU,
    /// which includes what ICMP "too big" taught it): where path-MTU probing starts.
    pub fn set_path_max(&mut self, t: usize, mtu: u16, now_ms: u64) {
        let l = &mut self.links[t];
        l.route_max = mtu.max(PathMtu::base_for(l.v6()));
        l.pmtu.set_max(l.route_max, now_ms);
        self.apply_tunnel_mtu();
    }

    /// A send of `len` UDP payload bytes on `t` failed with EMSGSIZE; `route_mtu` is
    /// what the kernel now reports for the path, if it could be read.
    pub fn note_too_big(&mut self, t: usize, len: usize, route_mtu: Option<u16>, now_ms: u64) {
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

    // -----------------------------------------------------------------------------
    // Handshake

    fn connect(&mut self, first: usize, now_ms: u64) {
        self.phase = Phase::Connecting(Box::new(Connecting {
            transport: first,
            handshakes: Vec::new(),
            hellos_on_transport: 0,
            last_hello_ms: 0,
            confirming: None,
        }));
        self.last_state = State::Birth;
        self.send_hello(now_ms);
    }

    fn send_hello(&mut self, now_ms: u64) {
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        // Each address of a transport gets at least one HELLO before the next transport.
        let per_transport = HELLOS_PER_TRANSPORT.max(self.links[c.transport].gateways.len() as u32);
        if c.hellos_on_transport >= per_transport {
            c.transport = (c.transport + 1) % self.links.len();
            c.hellos_on_transport = 0;
        } else if c.hellos_on_transport > 0 {
            // The last HELLO went unanswered: the next goes to the next address.
            let t = c.transport;
            self.rotate(t, "HELLO unanswered", now_ms);
        }
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        // A fresh HELLO each time: the gateway refuses a repeated one as a replay.
        match ClientHandshake::start(&self.identity, &self.gateway_pub, now_ms, &self.rng) {
            Ok((hs, hello)) => {
                if c.handshakes.len() == MAX_HANDSHAKES {
                    c.handshakes.remove(0);
                }
                c.handshakes.push(hs);
                c.hellos_on_transport += 1;
                c.last_hello_ms = now_ms;
                let transport = c.transport;
                let to = self.links[transport].gateway();
                tracing::debug!("HELLO over {} to {to}", self.links[transport].cfg.name);
                self.out.push(Out::Udp {
                    transport,
                    to,
                    data: hello,
                });
            }
            Err(e) => tracing::error!("building HELLO: {e}"),
        }
    }

    fn on_handshake_msg(&mut self, t: usize, from: usize, data: &[u8], now_ms: u64) {
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        match data.get(1) {
            Some(&msg_type::WELCOME) if c.confirming.is_none() => {
                let Some(session) = c
                    .handshakes
                    .iter_mut()
                    .find_map(|hs| hs.on_welcome(data).ok())
                else {
                    self.counters.ctl_rejected += 1;
                    return;
                };
                // The node that sent it holds the session: CONFIRM goes there (a late
                // WELCOME may come from an address the transport has since left).
                let l = &mut self.links[t];
                l.current = from;
                tracing::info!(
                    "WELCOME over {} from {}: session {:016x}, tunnel address {}",
                    l.cfg.name,
                    l.gateway(),
                    session.session_id,
                    session.tunnel_addr
                );
                c.transport = t;
                self.out.push(Out::Udp {
                    transport: t,
                    to: l.gateway(),
                    data: session.confirm.clone(),
                });
                c.confirming = Some((session, now_ms));
            }
            Some(&msg_type::ESTABLISHED) => {
                let ok = c
                    .confirming
                    .as_ref()
                    .is_some_and(|(s, _)| s.verify_established(data).is_ok());
                if !ok {
                    self.counters.ctl_rejected += 1;
                    return;
                }
                let t = c.transport;
                let Some((session, _)) = c.confirming.take() else {
                    return;
                };
                self.established(session, t, now_ms);
            }
            _ => {}
        }
    }

    fn established(&mut self, cs: ClientSession, t: usize, now_ms: u64) {
        self.established += 1;
        let s = Session {
            id: cs.session_id,
            mac: cs.keys.mac_key(),
            c2x: DataKey::new(&cs.keys.c2x),
            x2c: DataKey::new(&cs.keys.x2c),
            tunnel: cs.tunnel_addr,
            hint: cs.hint,
            state: State::Birth,
            version: 0,
            bound: t,
            bound_addr: self.links[t].current,
            generation: 1,
            ctl_ctr: cs.next_ctr,
            data_ctr: 0,
            rx_window: ReplayWindow::new(),
            gw_ctl: GwWindows::default(),
            attempt: None,
            dead_since: None,
            moved_heard_ms: None,
            left_attached_ms: None,
            created_ms: now_ms,
            tries: 0,
            rate_backoff_ms: 0,
            rate_backoff_until: 0,
            switches: 0,
            last_switch: None,
            move_to: None,
            tun_mtu: 0,
            notices_left: 0,
            notice_at: 0,
        };
        for l in &mut self.links {
            l.health.reset(now_ms);
            l.last_probe_ms = None;
            l.backoff_until = 0;
            l.sent_at.clear();
            l.last_fwd = None;
            l.stalled_since = None;
            l.not_bound = false;
            l.failed_in_row = 0;
        }
        self.links[t].health.on_rx(now_ms);
        self.out.push(Out::TunUp(s.tunnel));
        self.phase = Phase::Up(Box::new(s));
        self.apply_tunnel_mtu();
        self.go(State::Attached, Reason::BirthComplete, None, now_ms);
        let local = self.links[t].local.clone();
        self.emit_switch(None, local, 1, now_ms);
        // Probe every transport right away so standby health is known early.
        self.probe_all(now_ms, true);
    }

    // -----------------------------------------------------------------------------
    // Input

    /// A datagram received on transport `t` from `from`, one of its gateway addresses
    /// (anything else is not the gateway and is ignored). Only what comes from the
    /// transport's current address counts as its health.
    pub fn on_datagram(&mut self, t: usize, from: SocketAddr, data: &[u8], now_ms: u64) {
        let Some(a) = self.links.get(t).and_then(|l| l.addr_index(from)) else {
            return;
        };
        match data.get(1) {
            Some(&msg_type::DATA) => self.on_data(t, a, data, now_ms),
            Some(&msg_type::WELCOME | &msg_type::ESTABLISHED) => {
                self.on_handshake_msg(t, a, data, now_ms)
            }
            _ => self.on_control(t, a, data, now_ms),
        }
    }

    /// Something authenticated arrived on `t` from its address `a`.
    fn heard(&mut self, t: usize, a: usize, now_ms: u64) {
        let l = &mut self.links[t];
        if l.current == a {
            l.health.on_rx(now_ms);
        }
    }

    fn on_data(&mut self, t: usize, a: usize, data: &[u8], now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let mut buf = data.to_vec();
        let Ok((sid, ctr, inner)) = proto::data::open(&s.x2c, &mut buf) else {
            self.counters.rx_bad += 1;
            return;
        };
        if sid != s.id {
            self.counters.rx_bad += 1;
            return;
        }
        if !s.rx_window.update(ctr) {
            self.counters.rx_replayed += 1;
            return;
        }
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += inner.len() as u64;
        self.out.push(Out::Tun(inner.to_vec()));
        self.heard(t, a, now_ms);
    }

    fn on_control(&mut self, t: usize, a: usize, data: &[u8], now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let Ok(u) = Unverified::decode(data) else {
            self.counters.ctl_rejected += 1;
            return;
        };
        if u.session_id() != s.id {
            self.counters.ctl_rejected += 1;
            return;
        }
        let from = self.links[t].gateways[a];
        let kind = match u.verify(&s.mac) {
            Err(_) => Some("proof_invalid"),
            Ok(_) if !s.gw_ctl.update(from, u.ctr()) => Some("replay"),
            Ok(_) => None,
        };
        if let Some(kind) = kind {
            self.counters.ctl_rejected += 1;
            let ev = EventRecord::SecurityEvent {
                ts_ms: now_ms,
                session_id: Some(SessionId(s.id)),
                source: from.to_string(),
                kind: kind.into(),
            };
            self.out.push(Out::Event(ev));
            return;
        }
        let msg = u.into_msg();
        if let Body::KeepaliveAck {
            echo_ts_ms,
            generation,
            up_forwarded,
            flags,
        } = msg.body
        {
            // An answer from an address the transport has left says nothing about
            // the one it uses now.
            if a != self.links[t].current {
                return;
            }
            return self.on_keepalive_ack(t, echo_ts_ms, generation, up_forwarded, flags, now_ms);
        }
        self.heard(t, a, now_ms);
        match msg.body {
            Body::KeepaliveAck { .. } => {}
            Body::ReattachChallenge { challenge } => self.on_challenge(t, a, challenge, now_ms),
            Body::ReattachAck { generation, hint } => self.on_ack(t, a, generation, hint, now_ms),
            Body::ReattachDenied { reason } => {
                let detail = Detail::from_code(reason).unwrap_or(Detail::OwnershipAmbiguous);
                self.on_denied(t, a, detail, now_ms);
            }
            Body::Close { reason } => {
                let reason = Reason::from_code(reason).unwrap_or(Reason::Closed);
                tracing::warn!("the gateway closed the session: {reason:?}");
                self.terminate(reason, now_ms);
            }
            // Client-to-gateway messages reflected back at us: ignore.
            Body::ReattachRequest(_) | Body::ReattachConfirm { .. } | Body::Keepalive { .. } => {}
        }
    }

    /// An inner packet from the TUN device. One larger than the tunnel MTU (sent
    /// before the TUN learned a smaller one) is answered like a router would: ICMP
    /// "too big" back into the TUN, or fragments for IPv4 without DF. Outer packets
    /// are never fragmented.
    pub fn on_tun(&mut self, pkt: &[u8]) {
        let Phase::Up(s) = &self.phase else {
            self.counters.tx_no_session += 1;
            return;
        };
        let mtu = s.tun_mtu;
        let mut reply = Vec::new();
        match icmp::fit(pkt, mtu, &mut reply, |p| self.seal(p)) {
            icmp::Fitted::Whole => {}
            icmp::Fitted::Fragmented => self.counters.tx_fragmented += 1,
            icmp::Fitted::Replied => {
                self.counters.tx_too_big += 1;
                self.out.push(Out::Tun(reply));
            }
            icmp::Fitted::Refused | icmp::Fitted::Dropped => self.counters.tx_too_big += 1,
        }
    }

    fn seal(&mut self, pkt: &[u8]) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        s.data_ctr += 1;
        let mut data = Vec::with_capacity(pkt.len() + 64);
        proto::data::seal(&s.c2x, s.id, s.data_ctr, pkt, &mut data);
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += pkt.len() as u64;
        // Always over the binding: a packet from any other transport would be
        // dropped by the relay, and nothing else is allowed to carry tunnel traffic.
        self.out.push(Out::Udp {
            transport: s.bound,
            to: self.links[s.bound].gateway(),
            data,
        });
    }

    /// Operator request: move to the transport named `name` now (a planned reattach).
    pub fn request_move(&mut self, name: &str) -> Result<(), String> {
        let Some(i) = self.links.iter().position(|l| l.cfg.name == name) else {
            let names: Vec<_> = self.links.iter().map(|l| l.cfg.name.as_str()).collect();
            return Err(format!(
                "no transport {name:?} (configured: {})",
                names.join(", ")
            ));
        };
        let Phase::Up(s) = &mut self.phase else {
            return Err("no session is up".into());
        };
        if s.bound == i && self.links[i].current == s.bound_addr {
            return Err(format!("already bound to {name}"));
        }
        if s.attempt.is_some() {
            return Err("a reattach is already under way".into());
        }
        s.move_to = Some(i);
        Ok(())
    }

    /// Ends the session on the agent's own initiative (shutdown): CLOSE to the gateway.
    pub fn close(&mut self, now_ms: u64) {
        if let Phase::Up(s) = &mut self.phase {
            let msg = s.control(Body::close(Reason::Closed));
            let bound = s.bound;
            if let Some(data) = msg {
                self.out.push(Out::Udp {
                    transport: bound,
                    to: self.links[bound].gateway(),
                    data,
                });
            }
            self.reconnect = false;
            self.terminate(Reason::Closed, now_ms);
        }
    }

    // -----------------------------------------------------------------------------
    // Time

    pub fn tick(&mut self, now_ms: u64) {
        match &mut self.phase {
            Phase::Connecting(c) => {
                if let Some((session, since)) = &c.confirming {
                    if now_ms.saturating_sub(*since) > CONFIRM_GIVE_UP_MS {
                        tracing::warn!("no ESTABLISHED after CONFIRM; starting over");
                        let first = c.transport;
                        self.connect(first, now_ms);
                    } else {
                        let data = session.confirm.clone();
                        let transport = c.transport;
                        let to = self.links[transport].gateway();
                        if now_ms.saturating_sub(c.last_hello_ms) >= CONFIRM_EVERY_MS {
                            c.last_hello_ms = now_ms;
                            self.out.push(Out::Udp {
                                transport,
                                to,
                                data,
                            });
                        }
                    }
                } else if now_ms.saturating_sub(c.last_hello_ms) >= HELLO_EVERY_MS {
                    self.send_hello(now_ms);
                }
            }
            Phase::Ended { reconnect_at } => {
                if let Some(at) = *reconnect_at
                    && now_ms >= at
                {
                    tracing::warn!("establishing a NEW session (the old one is TERMINATED)");
                    self.connect(0, now_ms);
                }
            }
            Phase::Up(_) => self.tick_session(now_ms),
        }
    }

    fn thresholds(&self, hint: &Hint) -> (Thresholds, u64) {
        let h = &self.health;
        let pick = |own: u64, hint: u32| if own > 0 { own } else { u64::from(hint).max(1) };
        let keepalive = pick(h.keepalive_interval_ms, hint.keepalive_interval_ms);
        let loss_ttl = pick(h.transport_loss_ttl_ms, hint.transport_loss_ttl_ms);
        let volatile_after = if h.volatile_after_ms > 0 {
            h.volatile_after_ms
        } else {
            (2 * keepalive).min(loss_ttl)
        };
        let t = Thresholds {
            max_loss_pct: h.max_loss_pct,
            max_rtt_ms: h.max_rtt_ms,
            max_jitter_ms: h.max_jitter_ms,
            volatile_after_ms: volatile_after,
            loss_ttl_ms: loss_ttl,
            probe_timeout_ms: keepalive.max(2 * u64::from(h.max_rtt_ms)),
        };
        (t, keepalive)
    }

    fn probe_all(&mut self, now_ms: u64, force: bool) {
        let Phase::Up(s) = &self.phase else {
            return;
        };
        let keepalive = self.thresholds(&s.hint).1;
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let sent = self.counters.tx_packets;
        for (i, l) in self.links.iter_mut().enumerate() {
            let due = force
                || l.last_probe_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= keepalive);
            if !due {
                continue;
            }
            let ts = l.next_ts(now_ms);
            if let Some(data) = s.control(Body::Keepalive { ts_ms: ts, pad: 0 }) {
                l.last_probe_ms = Some(now_ms);
                l.health.on_probe_sent(ts);
                remember(&mut l.sent_at, (ts, sent));
                self.counters.keepalives_sent += 1;
                self.out.push(Out::Udp {
                    transport: i,
                    to: l.gateway(),
                    data,
                });
            }
        }
    }

    /// Path-MTU probes (padded KEEPALIVEs) on every healthy transport, standby ones
    /// too, so a switch finds the new path's size already known. Only healthy ones:
    /// a probe lost to a dying link must not read as "too big".
    fn probe_mtu(&mut self, now_ms: u64, probe_timeout_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let sent = self.counters.tx_packets;
        for (i, l) in self.links.iter_mut().enumerate() {
            if l.status != Status::Healthy {
                continue;
            }
            let timeout = l.health.rtt_ms().map_or(probe_timeout_ms, |r| {
                ((r * 3.0) as u64).clamp(100, probe_timeout_ms.max(100))
            });
            let Some(p) = l.pmtu.poll_probe(now_ms, timeout) else {
                continue;
            };
            let payload = usize::from(p.size.saturating_sub(ip_udp_len(l.v6())));
            let pad = u16::try_from(payload.saturating_sub(KEEPALIVE_LEN)).unwrap_or(0);
            let ts = l.next_ts(now_ms);
            if let Some(data) = s.control(Body::Keepalive { ts_ms: ts, pad }) {
                remember(&mut l.mtu_probes, (ts, p.id));
                remember(&mut l.sent_at, (ts, sent));
                self.counters.mtu_probes_sent += 1;
                self.out.push(Out::Udp {
                    transport: i,
                    to: l.gateway(),
                    data,
                });
            }
        }
    }

    /// Gives the TUN the bound transport's tunnel MTU (capped by the configuration)
    /// when it changed.
    fn apply_tunnel_mtu(&mut self) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let mtu = self.links[s.bound].tunnel_mtu().min(self.mtu_cap);
        if mtu != s.tun_mtu {
            tracing::info!(
                "tunnel MTU {mtu} (path MTU {} over {})",
                self.links[s.bound].pmtu.current(),
                self.links[s.bound].cfg.name
            );
            s.tun_mtu = mtu;
            s.notices_left = MTU_NOTICES;
            s.notice_at = 0;
            self.out.push(Out::TunMtu(mtu));
        }
    }

    /// Tells the exit the tunnel MTU, in the tunnel (docs/protocol.md, DATA): it then
    /// sends nothing larger towards this client, and answers its own senders with
    /// ICMP "too big". Repeated a few times, one keepalive interval apart.
    fn send_mtu_notice(&mut self, now_ms: u64, every_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if s.notices_left == 0 || now_ms < s.notice_at {
            return;
        }
        s.notices_left -= 1;
        s.notice_at = now_ms + every_ms;
        let notice = proto::data::tunnel_ctl::mtu_notice(s.tun_mtu);
        self.seal(&notice);
    }

    /// A verified KEEPALIVE_ACK on transport `t`.
    fn on_keepalive_ack(
        &mut self,
        t: usize,
        echo_ts_ms: u64,
        generation: u32,
        up_forwarded: u32,
        flags: u8,
        now_ms: u64,
    ) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let (bound, current) = (s.bound, s.generation);
        // The bound transport at the binding's address (once it has moved on, the
        // answers are a standby's: the node there does not hold the binding).
        let at_binding = t == bound && self.links[t].current == s.bound_addr;
        let l = &mut self.links[t];
        let probe = l.mtu_probes.iter().position(|p| p.0 == echo_ts_ms);
        if let Some(i) = probe
            && let Some((_, id)) = l.mtu_probes.remove(i)
        {
            l.pmtu.on_ack(id, now_ms);
            self.apply_tunnel_mtu();
        }
        let l = &mut self.links[t];
        if at_binding {
            // An answer to a KEEPALIVE sent before the last switch says nothing
            // about the binding as it is now.
            if generation < current {
                return;
            }
            if flags & ACK_FROM_BINDING == 0 {
                // Never health: the gateway drops this transport's DATA as stale.
                self.counters.not_bound_signals += 1;
                if !l.not_bound {
                    tracing::warn!(
                        "the gateway sees {}'s packets from an address that is not the \
                         binding (NAT rebinding or a new address): rebinding",
                        l.cfg.name
                    );
                }
                l.not_bound = true;
                return self.rebind(t, now_ms);
            }
            l.not_bound = false;
            self.check_forwarding(t, echo_ts_ms, up_forwarded, now_ms);
        }
        let l = &mut self.links[t];
        l.health.on_rx(now_ms);
        if probe.is_none() {
            l.health.on_probe_ack(echo_ts_ms, now_ms);
        }
    }

    /// End-to-end liveness of the binding: DATA the client sent before one answered
    /// KEEPALIVE should have been counted by the relay by the time the gateway read
    /// its counter for the answer (the relay handles a frame before its socket sees
    /// the next one). Several sent and none forwarded: the tunnel is not getting
    /// through, whatever the KEEPALIVEs say.
    fn check_forwarding(&mut self, t: usize, echo_ts_ms: u64, fwd: u32, now_ms: u64) {
        let l = &mut self.links[t];
        let Some(&(_, sent)) = l.sent_at.iter().find(|(ts, _)| *ts == echo_ts_ms) else {
            return;
        };
        match l.last_fwd {
            Some((sent0, _)) if sent < sent0 => return,
            Some((sent0, fwd0)) => {
                let got = fwd.wrapping_sub(fwd0);
                if got > 0 {
                    l.stalled_since = None;
                } else if sent - sent0 >= STALL_MIN_SENT && l.stalled_since.is_none() {
                    tracing::warn!(
                        "{}: {} DATA sent, none forwarded by the gateway",
                        l.cfg.name,
                        sent - sent0
                    );
                    l.stalled_since = Some(now_ms);
                }
            }
            None => {}
        }
        l.last_fwd = Some((sent, fwd));
    }

    /// The bound transport reaches the gateway from a new address: reattach over it
    /// at once, from that address (the NAT's new mapping).
    fn rebind(&mut self, t: usize, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let idle = matches!(s.state, State::Attached | State::Volatile | State::Degraded);
        if !idle
            || s.attempt.is_some()
            || now_ms < s.rate_backoff_until
            || now_ms < self.links[t].backoff_until
        {
            return;
        }
        s.dead_since.get_or_insert(now_ms);
        self.counters.rebinds += 1;
        self.start_attempt(t, ReattachCause::AddressChanged, now_ms);
    }

    fn tick_session(&mut self, now_ms: u64) {
        let Phase::Up(s) = &self.phase else {
            return;
        };
        let (th, keepalive) = self.thresholds(&s.hint);
        let created = s.created_ms;
        let ttl_ms = u64::from(s.hint.session_ttl_s).saturating_mul(1000);
        let window = u64::from(s.hint.recovery_window_ms);
        let left = s.left_attached_ms;
        let candidate = s.attempt.as_ref().map(|a| a.candidate);
        self.probe_all(now_ms, false);
        let mut silent = Vec::new();
        for (i, l) in self.links.iter_mut().enumerate() {
            let (st, healthy_for) = l.health.evaluate(now_ms, &th);
            // Silent for the loss TTL at this address: try the next one (not while a
            // reattach over it is under way; its timeout moves it on).
            if st == Status::Dead && l.gateways.len() > 1 && candidate != Some(i) {
                silent.push(i);
            }
            // KEEPALIVEs answered while the tunnel's DATA is not forwarded: not healthy.
            l.status = match l.stalled_since {
                Some(t) if now_ms.saturating_sub(t) >= th.loss_ttl_ms => Status::Dead,
                Some(_) if st == Status::Healthy => Status::Volatile,
                _ => st,
            };
            l.healthy_for_ms = if l.status == Status::Healthy {
                healthy_for
            } else {
                0
            };
        }
        if !silent.is_empty() {
            for i in silent {
                self.rotate(i, "silent for the loss TTL", now_ms);
            }
            // Probe the new addresses now rather than at the next tick.
            self.probe_all(now_ms, false);
        }
        self.probe_mtu(now_ms, th.probe_timeout_ms);
        self.send_mtu_notice(now_ms, keepalive);
        // The gateway ends the session with CLOSE; these catch a CLOSE that was lost.
        if now_ms >= created.saturating_add(ttl_ms).saturating_add(TTL_GRACE_MS) {
            return self.terminate(Reason::SessionTtlExpired, now_ms);
        }
        if left.is_some_and(|t| now_ms.saturating_sub(t) >= window.saturating_add(TTL_GRACE_MS)) {
            return self.terminate(Reason::RecoveryWindowExpired, now_ms);
        }
        self.attempt_timeout(now_ms);
        let Phase::Up(s) = &self.phase else {
            return;
        };
        let bound_status = self.bound_status(s);
        match s.state {
            State::Attached => match bound_status {
                Status::Volatile => {
                    self.go(State::Volatile, Reason::TransportVolatile, None, now_ms)
                }
                Status::Dead => {
                    self.go(State::Volatile, Reason::TransportVolatile, None, now_ms);
                    self.recover(now_ms);
                }
                Status::Healthy | Status::Unknown => self.maybe_move(now_ms),
            },
            State::Volatile | State::Degraded => match bound_status {
                Status::Healthy => {
                    self.set_dead_since(None);
                    self.go(State::Attached, Reason::TransportRecovered, None, now_ms)
                }
                Status::Dead => self.recover(now_ms),
                Status::Volatile | Status::Unknown => {}
            },
            State::Recovering | State::Birth | State::Terminated => {}
        }
    }

    /// The bound transport's status for the session: DEAD while it has moved away
    /// from the address its binding was made with (that node is not answering it).
    fn bound_status(&self, s: &Session) -> Status {
        let l = &self.links[s.bound];
        if l.current != s.bound_addr {
            Status::Dead
        } else {
            l.status
        }
    }

    /// Transport `t` moves to its next gateway address (wrapping); with one address,
    /// nothing happens (false). Its health and path MTU start over: they described
    /// the address it left. If it is the bound transport, the binding stays where it
    /// was, so the session must reattach over it (or another transport).
    fn rotate(&mut self, t: usize, why: &str, now_ms: u64) -> bool {
        let l = &mut self.links[t];
        if l.gateways.len() < 2 {
            return false;
        }
        let (left, heard) = (
            l.current,
            now_ms.saturating_sub(l.health.silence_ms(now_ms)),
        );
        let from = l.gateway();
        l.current = (l.current + 1) % l.gateways.len();
        let to = l.gateway();
        l.health.reset(now_ms);
        l.status = Status::Unknown;
        l.healthy_for_ms = 0;
        l.last_probe_ms = None;
        l.pmtu = new_pmtu(l.v6(), l.route_max, now_ms);
        l.mtu_probes.clear();
        l.sent_at.clear();
        l.last_fwd = None;
        l.stalled_since = None;
        l.not_bound = false;
        l.moved = Some(format!("{to} ({why})"));
        self.counters.gateway_moves += 1;
        tracing::warn!("transport {}: gateway {from} → {to} ({why})", l.cfg.name);
        if let Phase::Up(s) = &mut self.phase
            && s.bound == t
        {
            if left == s.bound_addr {
                s.moved_heard_ms = Some(heard);
                tracing::warn!(
                    "the binding is at {from}: the session reattaches over {} to {to}",
                    self.links[t].cfg.name
                );
            }
            self.apply_tunnel_mtu();
        }
        true
    }

    /// A reattach over `c` failed in a way the next address may not (no answer, or
    /// `ownership_ambiguous`): move `c` on. True if it should be tried again at once,
    /// i.e. not every address of it has failed in a row yet.
    fn rotate_after_failure(&mut self, c: usize, why: &str, now_ms: u64) -> bool {
        let l = &mut self.links[c];
        if l.gateways.len() < 2 {
            return false;
        }
        l.failed_in_row += 1;
        let all_failed = l.failed_in_row >= l.gateways.len();
        if all_failed {
            l.failed_in_row = 0;
        }
        self.rotate(c, why, now_ms);
        !all_failed
    }

    fn set_dead_since(&mut self, v: Option<u64>) {
        if let Phase::Up(s) = &mut self.phase {
            s.dead_since = v;
        }
    }

    /// The bound transport is DEAD: try the best candidate that is not backing off.
    fn recover(&mut self, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if s.dead_since.is_none() {
            s.dead_since = Some(now_ms);
            tracing::warn!(
                "transport {} is DEAD (silent for the loss TTL)",
                self.links[s.bound].cfg.name
            );
        }
        if now_ms < s.rate_backoff_until {
            return;
        }
        let bound = s.bound;
        // The bound transport itself once it has moved to another gateway address.
        let moved = self.links[bound].current != s.bound_addr;
        let rank = |st: Status| match st {
            Status::Healthy => 0,
            Status::Volatile => 1,
            Status::Unknown => 2,
            Status::Dead => 3,
        };
        let best = (0..self.links.len())
            .filter(|&i| (i != bound || moved) && now_ms >= self.links[i].backoff_until)
            .min_by_key(|&i| (rank(self.links[i].status), i));
        if let Some(c) = best {
            self.start_attempt(c, ReattachCause::Recovery, now_ms);
        }
    }

    /// In ATTACHED: an operator move, or back to a more preferred transport that has
    /// been healthy for `return_after_ms`.
    fn maybe_move(&mut self, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if let Some(c) = s.move_to.take() {
            return self.start_attempt(c, ReattachCause::Planned, now_ms);
        }
        if now_ms < s.rate_backoff_until {
            return;
        }
        let bound = s.bound;
        let ret = self.health.return_after_ms;
        let better = (0..bound).find(|&i| {
            let l = &self.links[i];
            l.status == Status::Healthy && l.healthy_for_ms >= ret && now_ms >= l.backoff_until
        });
        if let Some(c) = better {
            self.start_attempt(c, ReattachCause::Planned, now_ms);
        }
    }

    fn start_attempt(&mut self, c: usize, cause: ReattachCause, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let mut nonce = [0u8; 16];
        if self.rng.fill(&mut nonce).is_err() {
            tracing::error!("no randomness for a reattach nonce");
            return;
        }
        let l = &self.links[c];
        let kind = l.cfg.kind.wire();
        let req = match ReattachRequest::new(now_ms, nonce, kind, cause, l.cfg.name.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("building REATTACH_REQUEST: {e}");
                return;
            }
        };
        let Some(data) = s.control(Body::ReattachRequest(req)) else {
            return;
        };
        s.tries += 1;
        let bl = &self.links[s.bound];
        let heard_ms = match s.moved_heard_ms {
            Some(h) if bl.current != s.bound_addr => h,
            _ => now_ms.saturating_sub(bl.health.silence_ms(now_ms)),
        };
        s.attempt = Some(Attempt {
            candidate: c,
            addr: l.current,
            awaiting_ack: false,
            sent_ms: now_ms,
            started_ms: now_ms,
            cause,
            heard_ms,
        });
        self.counters.reattach_attempts += 1;
        let to = l.gateway();
        tracing::info!(
            "reattach over {} to {to} ({})",
            l.cfg.name,
            cause_name(cause)
        );
        self.out.push(Out::Udp {
            transport: c,
            to,
            data,
        });
        let reason = match cause {
            ReattachCause::AddressChanged => Reason::AddressChanged,
            _ => Reason::ReattachStarted,
        };
        self.go(State::Recovering, reason, None, now_ms);
    }

    fn attempt_timeout(&mut self, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let Some(a) = &s.attempt else {
            return;
        };
        if now_ms.saturating_sub(a.sent_ms) < self.health.attempt_timeout_ms {
            return;
        }
        let c = a.candidate;
        self.counters.reattach_timeouts += 1;
        tracing::warn!(
            "reattach over {} to {} unanswered after {} ms",
            self.links[c].cfg.name,
            self.links[c].gateway(),
            self.health.attempt_timeout_ms
        );
        self.attempt_failed(c, Detail::TransportTtl, now_ms);
        self.links[c].backoff_until = now_ms + self.health.attempt_timeout_ms;
        if self.rotate_after_failure(c, "reattach unanswered", now_ms) {
            self.links[c].backoff_until = 0;
        }
    }

    fn attempt_failed(&mut self, c: usize, detail: Detail, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let candidate = self.links[c].local.clone();
        let ev = EventRecord::TransportSwitchDenied {
            ts_ms: now_ms,
            session_id: SessionId(s.id),
            candidate,
            detail,
        };
        self.out.push(Out::Event(ev));
        self.go(
            State::Degraded,
            Reason::ReattachValidationFailed,
            Some(detail),
            now_ms,
        );
    }

    /// The attempt under way over transport `t` to its address `addr`.
    fn attempt_for(&mut self, t: usize, addr: usize) -> Option<&mut Attempt> {
        match &mut self.phase {
            Phase::Up(s) => s
                .attempt
                .as_mut()
                .filter(|a| a.candidate == t && a.addr == addr),
            _ => None,
        }
    }

    fn on_challenge(&mut self, t: usize, addr: usize, challenge: [u8; 16], now_ms: u64) {
        let Some(a) = self.attempt_for(t, addr) else {
            return;
        };
        if a.awaiting_ack {
            return;
        }
        a.awaiting_ack = true;
        a.sent_ms = now_ms;
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if let Some(data) = s.control(Body::ReattachConfirm { challenge }) {
            self.out.push(Out::Udp {
                transport: t,
                to: self.links[t].gateways[addr],
                data,
            });
        }
    }

    fn on_ack(&mut self, t: usize, addr: usize, generation: u32, hint: Hint, now_ms: u64) {
        match self.attempt_for(t, addr) {
            Some(a) if a.awaiting_ack => {}
            _ => return,
        }
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let Some(a) = s.attempt.take() else {
            return;
        };
        let old = s.bound;
        let last_heard = a.heard_ms;
        let planned = a.cause == ReattachCause::Planned;
        let (silent_ms, detection_ms) = if planned {
            (0, 0)
        } else {
            (
                now_ms.saturating_sub(last_heard),
                s.dead_since.map_or(0, |d| d.saturating_sub(last_heard)),
            )
        };
        s.bound = t;
        s.bound_addr = a.addr;
        s.moved_heard_ms = None;
        s.generation = generation;
        s.hint = hint;
        s.switches += 1;
        s.rate_backoff_ms = 0;
        s.dead_since = None;
        s.last_switch = Some(SwitchRecord {
            from: self.links[old].cfg.name.clone(),
            to: self.links[t].cfg.name.clone(),
            generation,
            planned,
            cause: cause_name(a.cause).into(),
            silent_ms,
            detection_ms,
            exchange_ms: now_ms.saturating_sub(a.started_ms),
            attempts: s.tries,
        });
        tracing::info!(
            "bound to {} at {} (generation {generation}); transport {} retired",
            self.links[t].cfg.name,
            self.links[t].gateways[a.addr],
            self.links[old].cfg.name
        );
        let l = &mut self.links[t];
        l.backoff_until = 0;
        l.failed_in_row = 0;
        l.not_bound = false;
        l.last_fwd = None;
        l.stalled_since = None;
        self.go(State::Attached, Reason::ReattachSuccess, None, now_ms);
        self.apply_tunnel_mtu();
        let (old_local, new_local) = (self.links[old].local.clone(), self.links[t].local.clone());
        self.emit_switch(Some(old_local), new_local, generation, now_ms);
    }

    fn on_denied(&mut self, t: usize, addr: usize, detail: Detail, now_ms: u64) {
        if self.attempt_for(t, addr).is_none() {
            return;
        }
        self.counters.reattach_denied += 1;
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        match detail {
            Detail::RateLimited => {
                s.rate_backoff_ms =
                    (s.rate_backoff_ms * 2).clamp(BACKOFF_RATE_FIRST_MS, BACKOFF_RATE_MAX_MS);
                s.rate_backoff_until = now_ms + s.rate_backoff_ms;
            }
            Detail::Blacklisted => self.links[t].backoff_until = now_ms + BACKOFF_BLACKLISTED_MS,
            _ => self.links[t].backoff_until = now_ms + BACKOFF_CANDIDATE_MS,
        }
        tracing::warn!(
            "reattach over {} to {} DENIED: {detail:?}",
            self.links[t].cfg.name,
            self.links[t].gateway()
        );
        self.attempt_failed(t, detail, now_ms);
        // Another node of the cluster owns the session and is alive: the next address
        // may be it (or reach it).
        if detail == Detail::OwnershipAmbiguous
            && self.rotate_after_failure(t, "ownership_ambiguous", now_ms)
        {
            self.links[t].backoff_until = 0;
        }
    }

    // -----------------------------------------------------------------------------
    // Transitions and events

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

    // -----------------------------------------------------------------------------
    // Status

    pub fn status(&self, now_ms: u64) -> ClientStatus {
        let s = match &self.phase {
            Phase::Up(s) => Some(&**s),
            _ => None,
        };
        let backoff_all = s.map_or(0, |s| s.rate_backoff_until);
        let th = s.map(|s| self.thresholds(&s.hint).0);
        ClientStatus {
            session_id: s.map(|s| SessionId(s.id)),
            state: s.map_or(self.last_state, |s| s.state),
            version: s.map_or(0, |s| s.version),
            tunnel_addr: s.map(|s| s.tunnel.to_string()),
            bound: s.map(|s| self.links[s.bound].cfg.name.clone()),
            bound_gateway: s.map(|s| self.links[s.bound].gateways[s.bound_addr].to_string()),
            generation: s.map_or(0, |s| s.generation),
            age_s: s.map_or(0, |s| now_ms.saturating_sub(s.created_ms) / 1000),
            switches: s.map_or(0, |s| s.switches),
            sessions_established: self.established,
            reattach: s.and_then(|s| s.attempt.as_ref()).and_then(|a| {
                self.links.get(a.candidate).map(|l| {
                    format!(
                        "{} (awaiting {})",
                        l.cfg.name,
                        if a.awaiting_ack { "ack" } else { "challenge" }
                    )
                })
            }),
            last_switch: s.and_then(|s| s.last_switch.clone()),
            tunnel_mtu: s.map_or(0, |s| s.tun_mtu),
            transports: self
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| TransportStatus {
                    name: l.cfg.name.clone(),
                    kind: format!("{:?}", l.cfg.kind).to_lowercase(),
                    local: l.local.clone(),
                    gateway: l.gateway().to_string(),
                    gateways: l.gateways.iter().map(ToString::to_string).collect(),
                    gateway_moved: l.moved.clone(),
                    bound: s.is_some_and(|s| s.bound == i),
                    health: l.status,
                    rtt_ms: l.health.rtt_ms(),
                    jitter_ms: l.health.jitter_ms(),
                    loss_pct: th.map_or(0, |th| l.health.loss_pct(now_ms, &th)),
                    silence_ms: l.health.silence_ms(now_ms),
                    backoff_ms: l.backoff_until.max(backoff_all).saturating_sub(now_ms),
                    path_mtu: l.pmtu.current(),
                    path_mtu_settled: l.pmtu.settled(),
                    not_bound: l.not_bound,
                    stalled: l.stalled_since.is_some(),
                })
                .collect(),
            counters: self.counters.clone(),
        }
    }
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

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
