//! A test client built from the protocol library: one UDP socket per transport in the
//! client namespace, the handshake, DATA through the tunnel, and reattach, with every
//! reply verified. It also hands out raw messages so tests can replay, forge and
//! mangle them.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use jvpn_common::wire::msg_type;
use jvpn_ctl::{
    lab::gateway::Transport,
    proto::{
        self, Body, ClientHandshake, ClientSession, Control, DataKey, ReattachCause,
        ReattachRequest, TransportKind, Unverified,
    },
};
use ring::{rand::SecureRandom as _, signature::Ed25519KeyPair};

use crate::gwlab::{EXIT_TUN, GwLab};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

/// What the gateway answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Control(Control),
    Data(Vec<u8>),
    Silence,
}

pub struct TestClient {
    pub socks: Vec<UdpSocket>,
    pub session: ClientSession,
    pub mac: ring::hmac::Key,
    c2x: DataKey,
    x2c: DataKey,
    data_ctr: u64,
    pub ctr: u64,
    /// Where the tunnel's far end is (the exit's tunnel address).
    exit_tun: Ipv4Addr,
}

pub const TRANSPORTS: [Transport; 3] = Transport::ALL;

/// A way to the gateway: which of the client's sockets, to which gateway address.
pub trait Route: Copy {
    fn sock(self) -> usize;
    fn gw(self) -> SocketAddr;
}

impl Route for Transport {
    fn sock(self) -> usize {
        match self {
            Transport::Wifi => 0,
            Transport::Lte => 1,
            Transport::Lte6 => 2,
        }
    }
    fn gw(self) -> SocketAddr {
        self.gw_addr()
    }
}

/// Socket `.0` of the client to gateway (node) address `.1`.
#[derive(Clone, Copy, Debug)]
pub struct Via(pub usize, pub SocketAddr);

impl Route for Via {
    fn sock(self) -> usize {
        self.0
    }
    fn gw(self) -> SocketAddr {
        self.1
    }
}

impl TestClient {
    /// Binds both transports and establishes a session over `t`.
    pub fn connect(lab: &GwLab, t: Transport) -> Self {
        let binds = TRANSPORTS.map(|t| t.client_addr());
        Self::connect_in(
            &lab.lab.client,
            &binds,
            t,
            &lab.client_id,
            &lab.gateway_pub,
            EXIT_TUN.parse().unwrap(),
        )
    }

    /// Binds a socket on each of `binds` inside `ns` and establishes a session over
    /// `route`; `exit_tun` is the exit's tunnel address (the echo server's).
    pub fn connect_in(
        ns: &jvpn_ctl::lab::netns::Netns,
        binds: &[SocketAddr],
        route: impl Route,
        client_id: &Ed25519KeyPair,
        gateway_pub: &[u8; 32],
        exit_tun: Ipv4Addr,
    ) -> Self {
        let socks: Vec<UdpSocket> = binds
            .iter()
            .map(|a| {
                let s = ns.run(|| UdpSocket::bind(a)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                s
            })
            .collect();
        let session = handshake(&socks[route.sock()], route.gw(), client_id, gateway_pub);
        let mac = session.keys.mac_key();
        Self {
            c2x: DataKey::new(&session.keys.c2x),
            x2c: DataKey::new(&session.keys.x2c),
            ctr: session.next_ctr,
            mac,
            session,
            socks,
            data_ctr: 0,
            exit_tun,
        }
    }

    pub fn id(&self) -> u64 {
        self.session.session_id
    }

    pub fn tunnel_addr(&self) -> Ipv4Addr {
        match self.session.tunnel_addr {
            std::net::IpAddr::V4(a) => a,
            other => panic!("IPv4 tunnel address expected, got {other}"),
        }
    }

    /// The IPv6 tunnel address, from a dual-stack gateway.
    pub fn tunnel6(&self) -> Option<std::net::Ipv6Addr> {
        self.session.tunnel6
    }

    /// `inner` (any IP packet) sealed as the session's next DATA.
    pub fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        self.data_ctr += 1;
        let mut out = Vec::new();
        proto::data::seal(&self.c2x, self.id(), self.data_ctr, inner, &mut out);
        out
    }

    pub fn send_raw(&self, t: impl Route, bytes: &[u8]) {
        self.socks[t.sock()].send_to(bytes, t.gw()).unwrap();
    }

    /// A control message of this session, MACed with its key.
    pub fn control(&mut self, body: Body) -> Vec<u8> {
        self.ctr += 1;
        Control {
            session_id: self.id(),
            ctr: self.ctr,
            body,
        }
        .encode(&self.mac)
        .unwrap()
    }

    pub fn reattach_request(&mut self, ts_ms: u64, kind: TransportKind) -> Vec<u8> {
        let r =
            ReattachRequest::new(ts_ms, random(), kind, ReattachCause::Recovery, b"test").unwrap();
        self.control(Body::ReattachRequest(r))
    }

    /// Waits up to `timeout` for a datagram on `t`: a verified control message, a
    /// decrypted DATA payload (the inner packet), or silence.
    pub fn recv(&mut self, t: impl Route, timeout: Duration) -> Reply {
        self.recv_from(t.sock(), timeout)
            .map_or(Reply::Silence, |(r, _)| r)
    }

    /// As [`TestClient::recv`] on socket `sock`, with the sender (which node).
    pub fn recv_from(&mut self, sock: usize, timeout: Duration) -> Option<(Reply, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok((n, from)) = self.socks[sock].recv_from(&mut buf) else {
                continue;
            };
            let pkt = &mut buf[..n];
            if pkt.get(1) == Some(&msg_type::DATA) {
                let (sid, _, inner) =
                    proto::data::open(&self.x2c, pkt).expect("DATA from the exit authenticates");
                assert_eq!(sid, self.id());
                return Some((Reply::Data(inner.to_vec()), from));
            }
            let u = Unverified::decode(pkt).expect("well-formed control message");
            let m = u
                .verify(&self.mac)
                .expect("control message MAC verifies")
                .clone();
            return Some((Reply::Control(m), from));
        }
        None
    }

    /// Receives, skipping DATA and keepalive acks, until a control message or silence.
    pub fn recv_control(&mut self, t: impl Route, timeout: Duration) -> Option<Control> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(t, left) {
                Reply::Control(c) if !matches!(c.body, Body::KeepaliveAck { .. }) => {
                    return Some(c);
                }
                Reply::Silence => return None,
                _ => {}
            }
        }
    }

    /// REATTACH_REQUEST → CHALLENGE → CONFIRM → ACK over `t`. Returns the reply that
    /// ended the exchange (ACK, DENIED) or `None` on silence.
    pub fn reattach(&mut self, t: impl Route) -> Option<Control> {
        let req = self.reattach_request(now_ms(), TransportKind::Cellular);
        self.send_raw(t, &req);
        let reply = self.recv_control(t, Duration::from_secs(2))?;
        let Body::ReattachChallenge { challenge } = reply.body else {
            return Some(reply);
        };
        let confirm = self.control(Body::ReattachConfirm { challenge });
        self.send_raw(t, &confirm);
        self.recv_control(t, Duration::from_secs(2))
    }

    /// As [`TestClient::reattach`], sent again (a fresh request) after a silence, as
    /// the agent does, up to `tries` exchanges: for tests whose point is the answer,
    /// not its latency. Returns the answer and how many exchanges it took.
    pub fn reattach_retrying(&mut self, t: impl Route, tries: u32) -> (Option<Control>, u32) {
        for n in 1..=tries {
            if let Some(reply) = self.reattach(t) {
                return (Some(reply), n);
            }
        }
        (None, tries)
    }

    /// An inner IPv4/UDP packet from the tunnel address to `EXIT_TUN:port`, sealed.
    pub fn data(&mut self, port: u16, payload: &[u8]) -> Vec<u8> {
        self.data_to(self.exit_tun, port, payload)
    }

    /// An inner IPv4/UDP packet from the tunnel address (port 5555) to `dst:port`,
    /// sealed.
    pub fn data_to(&mut self, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
        let inner = udp_packet(self.tunnel_addr(), dst, 5555, port, payload);
        self.seal(&inner)
    }

    /// Sends `payload` through the tunnel over `t` and waits for the echo.
    pub fn echo(&mut self, t: impl Route, port: u16, payload: &[u8]) -> Option<Vec<u8>> {
        let pkt = self.data(port, payload);
        self.send_raw(t, &pkt);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Reply::Data(inner) = self.recv(t, Duration::from_millis(200)) {
                return Some(udp_payload(&inner));
            }
        }
        None
    }
}

pub fn handshake(
    sock: &UdpSocket,
    gw: SocketAddr,
    id: &Ed25519KeyPair,
    gw_pub: &[u8; 32],
) -> ClientSession {
    try_handshake(sock, gw, id, gw_pub, 40).unwrap_or_else(|e| panic!("{e} from {gw}"))
}

/// HELLO (up to 20 tries) → WELCOME → CONFIRM (up to `confirms` tries) →
/// ESTABLISHED; Err says which answer never came.
pub fn try_handshake(
    sock: &UdpSocket,
    gw: SocketAddr,
    id: &Ed25519KeyPair,
    gw_pub: &[u8; 32],
    confirms: usize,
) -> Result<ClientSession, &'static str> {
    let rng = ring::rand::SystemRandom::new();
    let (mut hs, hello) = ClientHandshake::start(id, gw_pub, now_ms(), &rng).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        sock.send_to(&hello, gw).unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let session = hs.on_welcome(&buf[..n]).expect("WELCOME verifies");
        for _ in 0..confirms {
            sock.send_to(&session.confirm, gw).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                session
                    .verify_established(&buf[..n])
                    .expect("ESTABLISHED verifies");
                return Ok(session);
            }
        }
        return Err("no ESTABLISHED");
    }
    Err("no WELCOME")
}

pub fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// An IPv6/UDP packet (with its checksum, which IPv6 requires).
pub fn udp6_packet(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp_payload(inner: &[u8]) -> Vec<u8> {
    let p = SlicedPacket::from_ip(inner).expect("inner IP packet");
    match p.transport {
        Some(TransportSlice::Udp(u)) => u.payload().to_vec(),
        other => panic!("inner UDP expected, got {other:?}"),
    }
}

/// A UDP echo server on the exit's tunnel address, inside the exit namespace.
pub fn echo_server(lab: &GwLab, port: u16) -> std::thread::JoinHandle<()> {
    let sock = lab
        .lab
        .exit
        .run(|| UdpSocket::bind((EXIT_TUN, port)))
        .expect("binding the echo server on the exit's TUN address");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let idle_until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < idle_until {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    })
}
