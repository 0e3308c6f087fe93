//! A HELLO flood from spoofed sources against the lab gateway — real processes, real
//! XDP relay — with the gate's budget set small so the flood puts it under load at
//! once (docs/protocol.md, "Under load: cookies"): the spoofed HELLOs are answered with
//! COOKIEs from XDP and never reach signature verification, a legitimate client that
//! retries with its cookie completes its handshake, a bound session's keepalives are
//! answered throughout and its state does not move, and the real agent attaches
//! through the cookie round trip.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use jvpn_common::wire::{COOKIE_LEN, COOKIE_MSG_LEN, msg_type};
use jvpn_ctl::{
    lab::{
        gateway::Transport::{Lte, Wifi},
        traffic::EchoServer,
    },
    proto::{Body, ClientHandshake, reply::Cookie},
    session::State,
};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH, FAST_POLICY, echo_addr, never_idle},
    gwlab::GwLab,
    require_root,
    tclient::{Reply, TestClient, now_ms, udp_packet},
};

/// A budget the flood exhausts at once: under load from its first few HELLOs.
const LIMITS: &str = "[limits]\nhello_budget_pps = 50\nhello_budget_burst = 50\n";

/// A raw IPv4 socket in the calling thread's namespace (IP_HDRINCL): frames from any
/// source address.
fn raw_socket() -> OwnedFd {
    // SAFETY: plain socket creation; the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn send_raw(fd: &OwnedFd, pkt: &[u8], dst: Ipv4Addr) {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the call; a failed send (a
    // full buffer) only loses a flood frame.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
}

struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    /// HELLOs of the allowed client with broken signatures, from random sources in
    /// 10.200.0.0/16 (nobody's address), as fast as one thread sends them.
    fn start(lab: &GwLab) -> Self {
        let fd = lab.lab.client.run(raw_socket);
        let rng = ring::rand::SystemRandom::new();
        let templates: Vec<Vec<u8>> = (0..64)
            .map(|_| {
                let (_, mut h) =
                    ClientHandshake::start(&lab.client_id, &lab.gateway_pub, now_ms(), &rng)
                        .unwrap();
                let last = h.len() - 1;
                h[last] ^= 0x40;
                h
            })
            .collect();
        let gw = match Wifi.gw_addr() {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => unreachable!("the Wi-Fi gateway address is IPv4"),
        };
        let port = Wifi.gw_addr().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut x = 0x2545_f491_4f6c_dd1du64;
            while !st.load(Ordering::Relaxed) {
                for t in &templates {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let src = Ipv4Addr::new(10, 200, (x >> 8) as u8, x as u8 | 1);
                    let pkt = udp_packet(src, gw, 1024 + (x >> 20) as u16 % 60000, port, t);
                    send_raw(&fd, &pkt, gw);
                }
                se.fetch_add(templates.len() as u64, Ordering::Relaxed);
            }
        });
        Self {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A handshake that answers a COOKIE with the HELLO again, cookie attached: the time
/// from the first HELLO to ESTABLISHED, and whether a cookie was needed.
fn handshake_with_cookie(lab: &GwLab, sock: &UdpSocket) -> (Duration, bool) {
    let rng = ring::rand::SystemRandom::new();
    let gw = Wifi.gw_addr();
    let t = Instant::now();
    let mut cookie = None;
    let mut buf = [0u8; 2048];
    while t.elapsed() < Duration::from_secs(5) {
        let (mut hs, hello) = ClientHandshake::start_with_cookie(
            &lab.client_id,
            &lab.gateway_pub,
            now_ms(),
            cookie,
            &rng,
        )
        .unwrap();
        sock.send_to(&hello, gw).unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let reply = &buf[..n];
        if n == COOKIE_MSG_LEN && reply[1] == msg_type::COOKIE {
            let c = Cookie::decode(reply).expect("a COOKIE decodes");
            assert_eq!(c.nonce_echo, hs.nonce(), "the COOKIE echoes our nonce");
            let bytes: [u8; COOKIE_LEN] = c.cookie;
            cookie = Some(bytes);
            continue;
        }
        let session = hs.on_welcome(reply).expect("WELCOME verifies");
        for _ in 0..20 {
            sock.send_to(&session.confirm, gw).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                session.verify_established(&buf[..n]).expect("ESTABLISHED");
                return (t.elapsed(), cookie.is_some());
            }
        }
        panic!("no ESTABLISHED");
    }
    panic!("no handshake within 5 s under the flood");
}

#[test]
fn spoofed_hellos_get_cookies_from_xdp_and_never_reach_the_signature_check() {
    require_root!();
    let mut lab = GwLab::start("hfl", LIMITS);
    let mut bound = TestClient::connect(&lab, Lte);
    let before = lab.session(bound.id()).expect("the bound session");
    let verified_before = lab.stats().handshakes.get("bad_signature").copied();

    let flood = Flood::start(&lab);
    let t = Instant::now();
    while flood.sent() < 200_000 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the flood does not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Under the flood: a legitimate handshake (with its cookie), and keepalives of
    // the bound session, every one answered.
    let sock = lab.client_udp("10.77.1.2:0", Duration::from_millis(300));
    let (took, needed) = handshake_with_cookie(&lab, &sock);
    let mut answered = 0;
    for _ in 0..20 {
        let ka = bound.control(Body::Keepalive {
            ts_ms: now_ms(),
            pad: 0,
        });
        bound.send_raw(Lte, &ka);
        if matches!(
            bound.recv(Lte, Duration::from_millis(500)),
            Reply::Control(c) if matches!(c.body, Body::KeepaliveAck { .. })
        ) {
            answered += 1;
        }
    }
    let sent = flood.sent();
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));

    let st = lab.stats();
    let answered_xdp = st
        .xdp_answered
        .get("hello_cookie_sent")
        .copied()
        .unwrap_or(0);
    let verified =
        st.handshakes.get("bad_signature").copied().unwrap_or(0) - verified_before.unwrap_or(0);
    eprintln!(
        "flood: {sent} spoofed HELLOs sent; COOKIEs from XDP {answered_xdp}, signature \
         checks that failed {verified}; legitimate handshake {took:?} (cookie: {needed}); \
         bound session: {answered}/20 keepalives answered; XDP drops {:?}",
        st.xdp_drops
    );
    assert!(needed, "under load the legitimate HELLO needs a cookie");
    assert!(took < Duration::from_secs(2), "handshake took {took:?}");
    assert_eq!(
        answered, 20,
        "every keepalive of the bound session answered"
    );
    // Only the budget's burst, before the gate saw load, can have been verified.
    assert!(
        verified <= 50,
        "{verified} spoofed HELLOs reached signature checks"
    );
    assert!(
        answered_xdp >= sent / 2,
        "{answered_xdp} COOKIEs for {sent} spoofed HELLOs"
    );
    let after = lab.session(bound.id()).expect("the bound session");
    assert_eq!(after.state, State::Attached);
    assert_eq!(
        after.version, before.version,
        "the bound session did not move"
    );
    assert!(lab.gateway_alive(), "gateway died:\n{}", lab.log("gateway"));
}

#[test]
fn the_agent_attaches_through_the_cookie_round_trip() {
    require_root!();
    // One HELLO a second, a burst of two, load held for a minute: two HELLOs put the
    // gate under load for the rest of the test.
    let mut gw = GwLab::start(
        "hfa",
        &format!(
            "{FAST_POLICY}[limits]\nhello_budget_pps = 1\nhello_budget_burst = 2\nload_hold_ms = 60000\n"
        ),
    );
    let sock = gw.client_udp("10.77.1.2:0", Duration::from_millis(300));
    let rng = ring::rand::SystemRandom::new();
    let mut buf = [0u8; 256];
    let mut cookie_seen = false;
    for _ in 0..4 {
        let (_, mut h) =
            ClientHandshake::start(&gw.client_id, &gw.gateway_pub, now_ms(), &rng).unwrap();
        let last = h.len() - 1;
        h[last] ^= 0x40; // refused by the controller: no session
        sock.send_to(&h, Wifi.gw_addr()).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            cookie_seen |= n == COOKIE_MSG_LEN && buf[1] == msg_type::COOKIE;
        }
    }
    assert!(cookie_seen, "the gate is under load: a COOKIE came back");
    let echo = EchoServer::start(&gw.lab.exit, echo_addr()).expect("echo server");
    let cfg = gw.client_config(&[Wifi], &never_idle(FAST_HEALTH));
    let started = Instant::now();
    gw.start_client(&cfg).expect("starting the client agent");
    let lab = AgentLab { gw, echo };
    let s = lab.wait_status("ATTACHED through the cookie", Duration::from_secs(5), |s| {
        s.state == State::Attached
    });
    let took = started.elapsed();
    eprintln!(
        "the agent attached in {took:?} under load; its counters: {:?}; the gateway's \
         answers from XDP: {:?}",
        s.counters,
        lab.stats().xdp_answered
    );
    assert!(s.counters.cookies >= 1, "{:?}", s.counters);
    assert!(
        lab.stats()
            .xdp_answered
            .get("hello_cookie_sent")
            .copied()
            .unwrap_or(0)
            >= 2,
        "{:?}",
        lab.stats().xdp_answered
    );
    // The tunnel works.
    let stream = lab.stream(Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    let r = stream.finish(Duration::from_millis(300));
    assert!(r.sent >= 20 && r.echoed == r.sent, "{r:?}");
}

#[test]
fn five_hundred_clients_behind_one_nat_address_all_connect_without_a_flood() {
    require_root!();
    // The default [limits]: per-source buckets bite only under load.
    let lab = GwLab::start("hfn", "");
    let rng = ring::rand::SystemRandom::new();
    let gw = Wifi.gw_addr();
    let socks: Vec<UdpSocket> = (0..500)
        .map(|_| {
            let s = lab.client_udp("10.77.1.2:0", Duration::from_millis(1));
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    let mut pending: Vec<Option<ClientHandshake>> = socks
        .iter()
        .map(|s| {
            let (hs, hello) =
                ClientHandshake::start(&lab.client_id, &lab.gateway_pub, now_ms(), &rng).unwrap();
            s.send_to(&hello, gw).unwrap();
            Some(hs)
        })
        .collect();
    let mut confirmed: Vec<Option<jvpn_ctl::proto::ClientSession>> =
        (0..socks.len()).map(|_| None).collect();
    let mut established = 0;
    let mut buf = [0u8; 2048];
    while established < socks.len() && t.elapsed() < Duration::from_secs(5) {
        for (i, s) in socks.iter().enumerate() {
            let Ok((n, _)) = s.recv_from(&mut buf) else {
                continue;
            };
            let reply = &buf[..n];
            match reply[1] {
                msg_type::WELCOME => {
                    let hs = pending[i].as_mut().expect("one WELCOME per client");
                    let session = hs.on_welcome(reply).expect("WELCOME verifies");
                    s.send_to(&session.confirm, gw).unwrap();
                    confirmed[i] = Some(session);
                }
                msg_type::ESTABLISHED => {
                    let session = confirmed[i].as_ref().expect("ESTABLISHED after CONFIRM");
                    session
                        .verify_established(reply)
                        .expect("ESTABLISHED verifies");
                    established += 1;
                }
                other => panic!("client {i}: unexpected message type {other:#x}"),
            }
        }
    }
    let took = t.elapsed();
    let st = lab.stats();
    eprintln!(
        "{established} of 500 clients behind one address established in {took:?}; XDP \
         answers {:?}",
        st.xdp_answered
    );
    assert_eq!(established, 500, "all connect within 5 s ({took:?})");
    assert_eq!(
        st.xdp_answered
            .get("hello_cookie_sent")
            .copied()
            .unwrap_or(0),
        0
    );
    assert_eq!(
        st.xdp_drops
            .get("hello_source_limited")
            .copied()
            .unwrap_or(0),
        0
    );
    assert_eq!(lab.sessions().len(), 500);
}
