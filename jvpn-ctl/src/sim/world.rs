//! One client, one gateway, one exit and the network between them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use jvpn_common::wire::msg_type;
use tokio::sync::broadcast;

use super::{
    net::{Datagram, Faults, Net, Rng},
    packet,
};
use crate::{
    client::{
        config::ClientConfig,
        core::{Core as ClientCore, Input, Out},
    },
    control::{
        api::{EventRecord, Request, Response, SessionInfo},
        events::EventBus,
    },
    datapath::{MemPlane, Relayed},
    exit::{Counters as ExitCounters, Engine, FromTun},
    gateway::{
        Pool,
        core::{Core as GwCore, CoreParams, Outgoing},
    },
    proto::{self, Peers, identity},
    session::{Policy, State},
    store::{MemoryStore, Sealer, StoreKey},
};

/// The client's transports (Wi-Fi, LTE, and an IPv6-only one): their local addresses.
pub const CLIENT_BINDS: [&str; 3] = ["10.0.0.2:40000", "10.0.1.2:40000", "[fd00:6::2]:40000"];
/// The gateway's address on each of the client's networks.
pub const GW_ADDRS: [&str; 3] = ["10.0.0.1:51820", "10.0.1.1:51820", "[fd00:6::1]:51820"];
/// The transports' names, in the order above.
pub const TRANSPORTS: [&str; 3] = ["wifi", "lte", "v6"];
const GW_EXIT: &str = "10.9.0.1:51820";
const GW_LINK: &str = "10.9.0.1:51821";
const EXIT_DATA: &str = "10.9.0.2:51820";
const EXIT_LINK: &str = "10.9.0.2:51821";
/// The echo server the client's traffic goes to, behind the exit.
pub const ECHO: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The same over IPv6: the simulated tunnel is dual-stack.
pub const ECHO6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7);
const T0: u64 = 1_700_000_000_000;
const CLIENT_TICK_MS: u64 = 10;
const GW_TICK_MS: u64 = 50;

/// An identity derived from the world's seed: a run replays with the same keys, and
/// a world costs no key generation (a fuzz target builds one per input).
fn keypair(seed: u64, who: u64) -> ring::signature::Ed25519KeyPair {
    let mut state = seed ^ who;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&crate::splitmix::next(&mut state).to_le_bytes());
    }
    ring::signature::Ed25519KeyPair::from_seed_unchecked(&bytes).expect("any 32 bytes are a seed")
}

fn a(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

pub struct WorldConfig {
    pub seed: u64,
    pub policy: Policy,
    /// The client's configuration after `identity` and `gateway_public_key`
    /// (transports, `[health]`, ...); [`WorldConfig::new`] has the two transports.
    pub client_toml: String,
}

impl WorldConfig {
    pub fn new(seed: u64) -> Self {
        let policy = Policy {
            keepalive_interval_ms: 100,
            transport_loss_ttl_ms: 600,
            max_recovery_window_ms: 5_000,
            ..Policy::default()
        };
        let mut t = String::new();
        for (i, (name, kind)) in [("wifi", "wifi"), ("lte", "cellular"), ("v6", "ethernet")]
            .iter()
            .enumerate()
        {
            t += &format!(
                "[[transport]]\nname = \"{name}\"\nkind = \"{kind}\"\nbind = \"{}\"\ngateway = \"{}\"\n",
                CLIENT_BINDS[i], GW_ADDRS[i]
            );
        }
        t += "[health]\nreturn_after_ms = 1000\nattempt_timeout_ms = 400\nidle_after_ms = 0\n";
        Self {
            seed,
            policy,
            client_toml: t,
        }
    }
}

/// A violated invariant, with the seed that replays it.
#[derive(Debug)]
pub struct Violation(pub String);

pub struct World {
    pub seed: u64,
    pub now: u64,
    pub rng: Rng,
    pub net: Net,
    pub gw: GwCore,
    pub plane: MemPlane,
    store: MemoryStore,
    sealer: Sealer,
    pub exit: Engine,
    pub exit_counters: Arc<ExitCounters>,
    pub client: ClientCore,
    gw_events: broadcast::Receiver<EventRecord>,
    /// Every event of the gateway and of the client, in order.
    pub events: Vec<EventRecord>,
    pub client_events: Vec<EventRecord>,
    /// The address each transport's datagrams arrive from at the gateway (its NAT
    /// mapping): [`World::rebind`] changes it.
    pub nat: Vec<SocketAddr>,
    /// Every address the client ever sent from: the only ones a binding may name.
    proven: BTreeSet<SocketAddr>,
    next_client_tick: u64,
    next_gw_tick: u64,
    /// Echo payloads sent into the tunnel and received back.
    pub app_sent: u64,
    pub app_echoed: u64,
    /// The same for [`World::send_app6`].
    pub app_sent6: u64,
    pub app_echoed6: u64,
    pub client_exited: bool,
    /// Everything delivered, for an attacker to replay ([`World::capture`]).
    pub captured: Vec<Datagram>,
    pub capture: bool,
    /// The session id the client first got, and whether it ever changed without a
    /// TERMINATED in between.
    first_id: Option<u64>,
}

impl World {
    pub fn new(cfg: WorldConfig) -> Self {
        let gw_id = keypair(cfg.seed, 0x6777);
        let cl_id = keypair(cfg.seed, 0x636c);
        let gw_pub = identity::public_key(&gw_id);
        let mut peers = Peers::new();
        peers
            .add(identity::public_key(&cl_id), Some("client"))
            .expect("one peer");
        let plane = MemPlane::new(64);
        let bus = EventBus::new(4096);
        let gw_events = bus.subscribe();
        let link_key = [0x4c; 32];
        let gw = GwCore::new(
            CoreParams {
                policy: cfg.policy.clone(),
                identity: gw_id,
                peers,
                pool: Pool::dual(
                    "10.77.0.0/24".parse().expect("cidr"),
                    Some("fd00:77::/120".parse().expect("cidr6")),
                    &[
                        "10.77.0.1".parse().expect("addr"),
                        "fd00:77::1".parse().expect("addr"),
                    ],
                ),
                exit_data: a(EXIT_DATA),
                gw_exit: a(GW_EXIT),
                link_key,
                start_us: T0 * 1000,
                node: 0,
            },
            plane.clone(),
            bus,
            T0,
        )
        .seeded(cfg.seed);
        let exit_counters = Arc::new(ExitCounters::default());
        let exit = Engine::dual(
            &link_key,
            T0 * 1000 + 7,
            "10.77.0.0/24".parse().expect("cidr"),
            Some("fd00:77::1/120".parse().expect("cidr6")),
            exit_counters.clone(),
        );
        let ccfg = ClientConfig::parse(&format!(
            "identity = \"/nonexistent\"\ngateway_public_key = \"{}\"\n{}",
            hex::encode(gw_pub),
            cfg.client_toml
        ))
        .expect("the simulation's client configuration parses");
        ccfg.validate().expect("and is valid");
        let client = ClientCore::new(&ccfg, cl_id, gw_pub, T0);
        let nat: Vec<SocketAddr> = ccfg.transports.iter().map(|t| t.bind_addr()).collect();
        let mut w = Self {
            seed: cfg.seed,
            now: T0,
            rng: Rng::new(cfg.seed ^ 0x5157),
            net: Net::default(),
            gw,
            plane,
            store: MemoryStore::new(),
            sealer: Sealer::new(&StoreKey::from_bytes([0x53; 32])),
            exit,
            exit_counters,
            client,
            gw_events,
            events: Vec::new(),
            client_events: Vec::new(),
            proven: nat.iter().copied().collect(),
            nat,
            next_client_tick: T0,
            next_gw_tick: T0,
            app_sent: 0,
            app_echoed: 0,
            app_sent6: 0,
            app_echoed6: 0,
            client_exited: false,
            captured: Vec::new(),
            capture: false,
            first_id: None,
        };
        w.client_step(Input::Tick);
        w
    }

    /// Runs until `until` (virtual ms since the start), checking the invariants after
    /// every step.
    pub fn run_for(&mut self, ms: u64) -> Result<(), Violation> {
        let until = self.now + ms;
        loop {
            let next = [
                self.net.next_due().unwrap_or(u64::MAX),
                self.next_client_tick,
                self.next_gw_tick,
            ]
            .into_iter()
            .min()
            .expect("three");
            if next > until {
                self.now = until;
                return Ok(());
            }
            self.now = self.now.max(next);
            while let Some(d) = self.net.pop_due(self.now) {
                self.deliver(d);
                self.check()?;
            }
            if self.next_client_tick <= self.now {
                self.next_client_tick = self.now + CLIENT_TICK_MS;
                self.client_step(Input::Tick);
            }
            if self.next_gw_tick <= self.now {
                self.next_gw_tick = self.now + GW_TICK_MS;
                self.gw.tick(self.now);
                self.gw_batch();
            }
            self.check()?;
        }
    }

    /// Runs until `cond` holds, at most `ms`; a violation or the timeout is an error.
    pub fn run_until(
        &mut self,
        ms: u64,
        what: &str,
        mut cond: impl FnMut(&mut World) -> bool,
    ) -> Result<u64, Violation> {
        let start = self.now;
        while !cond(self) {
            if self.now - start >= ms {
                return Err(self.violation(format!("{what}: not within {ms} ms")));
            }
            self.run_for(5)?;
        }
        Ok(self.now - start)
    }

    pub fn violation(&self, what: String) -> Violation {
        Violation(format!(
            "{what} (seed {}, at +{} ms; replay with JVPN_SIM_SEED={})",
            self.seed,
            self.now - T0,
            self.seed
        ))
    }

    fn client_step(&mut self, input: Input<'_>) {
        let out = self.client.step(input, self.now);
        for o in out {
            match o {
                Out::Udp {
                    transport,
                    to,
                    data,
                } => {
                    let from = self.nat[transport];
                    self.proven.insert(from);
                    self.send(from, to, data);
                }
                Out::Tun(pkt) => match packet::udp_source(&pkt) {
                    Some(IpAddr::V4(src)) if src == ECHO => self.app_echoed += 1,
                    Some(IpAddr::V6(src)) if src == ECHO6 => self.app_echoed6 += 1,
                    _ => {}
                },
                Out::Event(e) => self.client_events.push(e),
                Out::Exit(_) => self.client_exited = true,
                Out::TunMtu(_) | Out::TunUp(..) => {}
            }
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let now = self.now;
        self.net
            .send(&mut self.rng, now, Datagram { from, to, data });
    }

    /// Injects a datagram as an attacker would (any source address).
    pub fn inject(&mut self, d: Datagram) {
        self.send(d.from, d.to, d.data);
    }

    fn deliver(&mut self, d: Datagram) {
        if self.capture {
            self.captured.push(d.clone());
        }
        let Datagram { from, to, mut data } = d;
        let gw_addrs = GW_ADDRS.map(a);
        if let Some(t) = self.nat.iter().position(|n| *n == to) {
            // The client's shell takes only what its transport's gateway sent.
            if from == gw_addrs[t] {
                self.client_step(Input::Datagram {
                    transport: t,
                    from,
                    data: &data,
                });
            }
        } else if gw_addrs.contains(&to) || to == a(GW_EXIT) {
            if data.get(1) == Some(&msg_type::DATA) {
                self.relay(from, &data);
            } else if to != a(GW_EXIT) {
                self.gw.on_datagram(to, from, &data, self.now);
                self.gw_batch();
            }
        } else if to == a(GW_LINK) {
            self.gw.on_link_frame(&data, self.now);
            self.gw_batch();
        } else if to == a(EXIT_LINK) {
            if let Some(reply) = self.exit.on_link(&data, from) {
                self.send(a(EXIT_LINK), from, reply);
            }
        } else if to == a(EXIT_DATA) {
            let Some(inner) = self.exit.on_data(&mut data, from) else {
                return;
            };
            let Some(reply) = packet::echo(inner) else {
                return;
            };
            let mut out = Vec::new();
            if let FromTun::Send(dst) = self.exit.on_tun(&reply, &mut out) {
                self.send(a(EXIT_DATA), dst, out);
            }
        }
    }

    /// The XDP relay: DATA steered by session id to the binding or the exit.
    fn relay(&mut self, from: SocketAddr, data: &[u8]) {
        let Ok(sid) = proto::data::peek_session(data) else {
            return;
        };
        if let Relayed::Forward { from, to } = self.plane.relay_data(sid, from, data.len()) {
            self.send(from, to, data.to_vec());
        }
    }

    /// What the gateway's loop does after every batch: the replies that need no
    /// commit, the group commit, then the rest (`gateway/run.rs`).
    fn gw_batch(&mut self) {
        let early = self.gw.take_early();
        self.send_gw(early);
        self.gw
            .persist(&mut self.store, &self.sealer, self.now)
            .expect("the in-memory store takes every batch");
        let rest = self.gw.take_out();
        self.send_gw(rest);
        while let Ok(e) = self.gw_events.try_recv() {
            self.events.push(e);
        }
    }

    fn send_gw(&mut self, out: Vec<Outgoing>) {
        for o in out {
            match o {
                Outgoing::Udp {
                    local, peer, data, ..
                } => self.send(local, peer, data),
                Outgoing::Link { data, .. } => self.send(a(GW_LINK), a(EXIT_LINK), data),
            }
        }
    }

    /// One echo datagram into the tunnel (dropped by the client if it has no session).
    pub fn send_app(&mut self, payload: &[u8]) {
        let Some(src) = self
            .client
            .status(self.now)
            .tunnel_addr
            .and_then(|t| t.parse::<Ipv4Addr>().ok())
        else {
            return;
        };
        self.app_sent += 1;
        let pkt = packet::udp4(src, ECHO, 5555, 7, payload);
        self.client_step(Input::Tun(&pkt));
    }

    /// One IPv6 echo datagram into the tunnel, from the session's IPv6 address.
    pub fn send_app6(&mut self, payload: &[u8]) {
        let Some(src) = self.client.tunnel6() else {
            return;
        };
        self.app_sent6 += 1;
        let pkt = packet::udp6(src, ECHO6, 5555, 7, payload);
        self.client_step(Input::Tun(&pkt));
    }

    /// The transport's NAT mapping changes (a new source port): what was in flight
    /// to the old one is lost.
    pub fn rebind(&mut self, transport: usize, port: u16) {
        let mut n = self.nat[transport];
        n.set_port(port);
        self.nat[transport] = n;
    }

    /// The transport's link goes down (`false`) or comes back, and the client's
    /// shell is told as the kernel would tell it.
    pub fn link(&mut self, transport: usize, up: bool) {
        let addr = self.nat[transport];
        if up {
            self.net.down.remove(&addr);
        } else {
            self.net.down.insert(addr);
        }
        let signal = if up {
            crate::client::core::LinkSignal::Up
        } else {
            crate::client::core::LinkSignal::Down(crate::client::core::Down::LinkDown)
        };
        self.client_step(Input::Link { transport, signal });
    }

    /// Faults on the datagrams sent from transport `t`'s address and to it.
    pub fn faults(&mut self, t: usize, f: Faults) {
        self.net.faults.insert(self.nat[t], f);
        self.net.faults.insert(GW_ADDRS.map(a)[t], f);
    }

    pub fn gw_request(&mut self, req: &Request) -> Response {
        let r = self.gw.on_request(req, self.now);
        self.gw_batch();
        r
    }

    pub fn gw_sessions(&mut self) -> Vec<SessionInfo> {
        match self.gw.on_request(&Request::Sessions, self.now) {
            Response::Ok { data } => serde_json::from_value(data).expect("sessions"),
            Response::Error { error } => panic!("sessions: {error}"),
        }
    }

    pub fn client_state(&self) -> State {
        self.client.status(self.now).state
    }

    pub fn attached(&self) -> bool {
        self.client_state() == State::Attached
            && self
                .gw
                .sessions()
                .next()
                .is_some_and(|(_, s)| s.state == State::Attached)
    }

    /// The transport the client is bound on, by index.
    pub fn bound(&self) -> Option<usize> {
        let b = self.client.status(self.now).bound?;
        TRANSPORTS.iter().position(|n| *n == b)
    }

    /// The invariants, after every step:
    /// - every forwarding entry of the data plane names an address the client sent
    ///   from (never an attacker's), and the gateway's binding for the session;
    /// - at most one entry per session, and never more entries than sessions;
    /// - the client's session id changes only through TERMINATED.
    fn check(&mut self) -> Result<(), Violation> {
        let entries = self.plane.entries();
        let sessions = self.gw.session_count();
        if entries.len() > sessions {
            return Err(self.violation(format!(
                "{} data-plane entries for {sessions} sessions",
                entries.len()
            )));
        }
        for (id, e) in &entries {
            if !e.forwarding() {
                continue;
            }
            let Some(client) = e.client.socket_addr() else {
                return Err(self.violation(format!("session {id:x}: a malformed entry")));
            };
            if !self.proven.contains(&client) {
                return Err(self.violation(format!(
                    "session {id:x} bound to {client}, where the client never was"
                )));
            }
            let binding = self
                .gw
                .sessions()
                .find(|(i, _)| i == id)
                .and_then(|(_, s)| s.binding);
            if binding != Some(client) {
                return Err(self.violation(format!(
                    "session {id:x}: the relay forwards to {client}, the controller's binding is {binding:?}"
                )));
            }
        }
        if let Some(id) = self.client.session_id() {
            match self.first_id {
                None => self.first_id = Some(id),
                Some(f) if f != id => {
                    let terminated = self.client_events.iter().any(|e| {
                        matches!(
                            e,
                            EventRecord::StateChange {
                                to: State::Terminated,
                                ..
                            }
                        )
                    });
                    if !terminated {
                        return Err(self.violation(format!(
                            "the client's session id changed from {f:x} to {id:x} without TERMINATED"
                        )));
                    }
                    self.first_id = Some(id);
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
