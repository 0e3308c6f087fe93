//! The exit node for real: a TUN device, UDP sockets and the protocol's crypto in a
//! fresh namespace pair (gateway side ⇄ veth ⇄ exit). The test plays the gateway with
//! the proto library: INSTALL over the link and its ACK, DATA carrying an inner UDP
//! packet to a socket on the exit's tunnel address, the reply sealed back to the
//! return endpoint; then replayed, forged, spoofed and post-REVOKE DATA and a
//! wrong-key link frame, each dropped and counted. Last, two gateway nodes of a
//! cluster: a takeover at a higher epoch moves the session, and the former owner's
//! DATA and link messages are fenced off.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use jvpn_ctl::{
    exit::{Config, CountersSnapshot, Exit},
    lab::exit_thread::ExitThread,
    proto::{
        data::{self, DataKey},
        link::{Dir, LinkCrypto, LinkMsg},
    },
};
use jvpn_tests::{
    netns::{Netns, veth},
    require_root, unique,
};

const LINK_KEY: [u8; 32] = [0x4b; 32];
const SID: u64 = 0x0e11_7a11_2233_4455;
const C2X: [u8; 32] = [0xc2; 32];
const X2C: [u8; 32] = [0x2c; 32];

const GW: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);
/// A second gateway node's exit-side address (same namespace, same veth).
const GW2: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 3);
const EXIT: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 2);
const EXIT_TUN: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLIENT_TUN: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const DATA_PORT: u16 = 51821;
const LINK_PORT: u16 = 51822;
const RET_PORT: u16 = 51820;
const ECHO_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 40000;
const QUIET: Duration = Duration::from_millis(300);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Gateway-side namespace, exit namespace and the veth between them.
fn lab() -> (Netns, Arc<Netns>) {
    let gw = Netns::new(unique("jxg")).unwrap();
    let exit = Arc::new(Netns::new(unique("jxx")).unwrap());
    let (a, b) = (unique("xg"), unique("xx"));
    veth(&gw, &a, &exit, &b).unwrap();
    gw.ip(&["addr", "add", &format!("{GW}/24"), "dev", &a])
        .unwrap();
    gw.ip(&["addr", "add", &format!("{GW2}/24"), "dev", &a])
        .unwrap();
    exit.ip(&["addr", "add", &format!("{EXIT}/24"), "dev", &b])
        .unwrap();
    (gw, exit)
}

/// The exit on the lab's addresses with the test link key.
fn exit_config() -> Config {
    Config::new(
        SocketAddr::from((EXIT, DATA_PORT)),
        SocketAddr::from((EXIT, LINK_PORT)),
        LINK_KEY,
        format!("{EXIT_TUN}/24").parse().unwrap(),
    )
}

/// The exit in-process, inside the exit namespace, its counters readable.
struct RunningExit(ExitThread);

impl RunningExit {
    fn start(ns: Arc<Netns>, config: Config) -> Self {
        Self(ExitThread::start(&ns.name, config).expect("starting the exit"))
    }

    fn stop(&mut self) -> Result<CountersSnapshot, std::io::Error> {
        self.0.stop()
    }

    fn counters(&self) -> CountersSnapshot {
        self.0.counters()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&CountersSnapshot) -> bool) {
        self.0
            .wait_for(what, Duration::from_secs(5), pred)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn bind(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(QUIET)).unwrap();
        s
    })
}

/// An inner IPv4/UDP packet, built (checksums included) by etherparse.
fn udp_packet(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// (source, destination, payload) of an inner IPv4/UDP packet.
fn parse_udp(pkt: &[u8]) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
    let sliced = SlicedPacket::from_ip(pkt).ok()?;
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (sliced.net, sliced.transport)
    else {
        return None;
    };
    let h = ip.header();
    Some((
        SocketAddr::new(IpAddr::V4(h.source_addr()), udp.source_port()),
        SocketAddr::new(IpAddr::V4(h.destination_addr()), udp.destination_port()),
        udp.payload().to_vec(),
    ))
}

fn seal_data(counter: u64, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    data::seal(&DataKey::new(&C2X), SID, counter, inner, &mut out);
    out
}

/// Sends a link message and returns the exit's answer, if any arrives.
fn link_call(sock: &UdpSocket, link: &mut LinkCrypto, msg: &LinkMsg) -> Option<LinkMsg> {
    sock.send_to(&link.seal(msg), SocketAddr::from((EXIT, LINK_PORT)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).ok()?;
    Some(link.open(&buf[..n]).expect("an authentic ACK"))
}

fn recv_payload(sock: &UdpSocket) -> Option<(SocketAddr, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (from, buf[..n].to_vec()))
}

/// Waits for return DATA at the gateway's return socket and opens it with k_x2c;
/// returns (counter, inner source, inner destination, payload) of the first UDP one.
fn recv_return(sock: &UdpSocket) -> Option<(u64, SocketAddr, SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let key = DataKey::new(&X2C);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(
            from,
            SocketAddr::from((EXIT, DATA_PORT)),
            "return DATA source"
        );
        let (sid, ctr, plain) = data::open(&key, &mut buf[..n]).expect("sealed with k_x2c");
        assert_eq!(sid, SID);
        if let Some((src, dst, payload)) = parse_udp(plain) {
            return Some((ctr, src, dst, payload));
        }
    }
    None
}

#[test]
fn exit_installs_decrypts_returns_and_drops() {
    require_root!();
    let (gw, exit_ns) = lab();
    let config = exit_config();
    let tun_name = config.tun_name.clone();
    let mut exit = RunningExit::start(exit_ns.clone(), config);

    // The TUN device is up with the exit's tunnel address.
    let shown = exit_ns
        .ip(&["-o", "addr", "show", "dev", &tun_name])
        .unwrap();
    assert!(shown.contains(&format!("{EXIT_TUN}/24")), "{shown}");
    let shown = exit_ns
        .ip(&["-o", "link", "show", "dev", &tun_name])
        .unwrap();
    assert!(
        shown.contains("mtu 1400") && shown.contains(",UP"),
        "{shown}"
    );

    let link_sock = bind(&gw, SocketAddr::from((GW, 0)));
    let ret_sock = bind(&gw, SocketAddr::from((GW, RET_PORT)));
    let echo = bind(&exit_ns, SocketAddr::from((EXIT_TUN, ECHO_PORT)));
    let mut link = LinkCrypto::new(&LINK_KEY, Dir::GatewayToExit, 0, now_us());

    // INSTALL → ACK.
    let install = LinkMsg::Install {
        session_id: SID,
        tunnel_addr: IpAddr::V4(CLIENT_TUN),
        tunnel6: None,
        c2x: C2X,
        x2c: X2C,
        ret: SocketAddr::from((GW, RET_PORT)),
        epoch: 0,
    };
    assert_eq!(
        link_call(&link_sock, &mut link, &install),
        Some(LinkMsg::Ack {
            session_id: SID,
            acked_type: 1
        })
    );

    // A link frame under another key is ignored: no ACK, counted, session intact.
    let mut wrong = LinkCrypto::new(&[0x99; 32], Dir::GatewayToExit, 0, now_us());
    assert_eq!(
        link_call(
            &link_sock,
            &mut wrong,
            &LinkMsg::Revoke {
                session_id: SID,
                epoch: 0
            }
        ),
        None
    );
    exit.wait_for("link_bad_frames", |c| c.link_bad_frames == 1);

    // DATA in: the inner UDP packet reaches the socket on the exit's tunnel address.
    let client = (CLIENT_TUN, CLIENT_PORT);
    let hello = udp_packet(client, (EXIT_TUN, ECHO_PORT), b"hello exit");
    let first = seal_data(1, &hello);
    ret_sock
        .send_to(&first, SocketAddr::from((EXIT, DATA_PORT)))
        .unwrap();
    let (from, payload) = recv_payload(&echo).expect("inner packet delivered");
    assert_eq!(payload, b"hello exit");
    assert_eq!(from, SocketAddr::from(client));

    // The reply is routed into the TUN device, sealed with k_x2c and sent to `ret`.
    echo.send_to(b"pong", from).unwrap();
    let (ctr, src, dst, payload) = recv_return(&ret_sock).expect("return DATA");
    // The exit's boot (µs) × 16: a restarted exit never reuses a counter.
    let boot_floor = 16 * 1_700_000_000_000_000u64;
    assert!(ctr > boot_floor, "first exit→client counter {ctr}");
    assert_eq!(src, SocketAddr::from((EXIT_TUN, ECHO_PORT)));
    assert_eq!(dst, SocketAddr::from(client));
    assert_eq!(payload, b"pong");

    // An exact replay is dropped: counted, not delivered twice.
    ret_sock
        .send_to(&first, SocketAddr::from((EXIT, DATA_PORT)))
        .unwrap();
    exit.wait_for("data_replay", |c| c.data_replay == 1);
    assert!(recv_payload(&echo).is_none(), "replay delivered");

    // A forged tag is dropped and does not move the replay window.
    let mut forged = seal_data(2, &udp_packet(client, (EXIT_TUN, ECHO_PORT), b"forged"));
    *forged.last_mut().unwrap() ^= 0x01;
    ret_sock
        .send_to(&forged, SocketAddr::from((EXIT, DATA_PORT)))
        .unwrap();
    exit.wait_for("data_bad_tag", |c| c.data_bad_tag == 1);
    assert!(recv_payload(&echo).is_none(), "forged packet delivered");

    // A spoofed inner source is dropped.
    let spoofed = udp_packet(
        (Ipv4Addr::new(10, 99, 0, 7), CLIENT_PORT),
        (EXIT_TUN, ECHO_PORT),
        b"spoofed",
    );
    ret_sock
        .send_to(&seal_data(3, &spoofed), SocketAddr::from((EXIT, DATA_PORT)))
        .unwrap();
    exit.wait_for("data_spoofed", |c| c.data_spoofed == 1);
    assert!(recv_payload(&echo).is_none(), "spoofed packet delivered");

    // Counter 2 (the forged one's) is still acceptable.
    let second = udp_packet(client, (EXIT_TUN, ECHO_PORT), b"second");
    ret_sock
        .send_to(&seal_data(2, &second), SocketAddr::from((EXIT, DATA_PORT)))
        .unwrap();
    assert_eq!(recv_payload(&echo).expect("counter 2").1, b"second");

    // REVOKE → ACK; the session is gone both ways.
    assert_eq!(
        link_call(
            &link_sock,
            &mut link,
            &LinkMsg::Revoke {
                session_id: SID,
                epoch: 0
            }
        ),
        Some(LinkMsg::Ack {
            session_id: SID,
            acked_type: 2
        })
    );
    let late = udp_packet(client, (EXIT_TUN, ECHO_PORT), b"late");
    ret_sock
        .send_to(&seal_data(4, &late), SocketAddr::from((EXIT, DATA_PORT)))
        .unwrap();
    exit.wait_for("data_unknown_session", |c| c.data_unknown_session == 1);
    assert!(recv_payload(&echo).is_none(), "DATA after REVOKE delivered");
    let before = exit.counters().tun_no_session;
    echo.send_to(b"after revoke", from).unwrap();
    exit.wait_for("tun_no_session", |c| c.tun_no_session > before);
    assert!(recv_return(&ret_sock).is_none(), "return DATA after REVOKE");

    let c = exit.stop().expect("exit ran cleanly");
    assert_eq!(
        (
            c.link_installs,
            c.link_revokes,
            c.link_acks_sent,
            c.link_bad_frames
        ),
        (1, 1, 2, 1),
        "{c}"
    );
    assert_eq!((c.data_in, c.data_out), (2, 1), "{c}");
    assert_eq!(
        (
            c.data_replay,
            c.data_bad_tag,
            c.data_spoofed,
            c.data_unknown_session
        ),
        (1, 1, 1, 1),
        "{c}"
    );
    assert_eq!(
        (c.data_malformed, c.data_bad_inner, c.tun_write_errors),
        (0, 0, 0),
        "{c}"
    );

    // The TUN device went away with the exit.
    assert!(
        exit_ns.ip(&["link", "show", "dev", &tun_name]).is_err(),
        "TUN device left behind"
    );
}

#[test]
fn exit_replaces_a_stale_address_holder_and_refuses_bad_config() {
    require_root!();
    let (gw, exit_ns) = lab();
    let mut config = exit_config();
    config.tun_name = unique("jvx");
    config.mtu = 1300;
    let exit = RunningExit::start(exit_ns.clone(), config.clone());
    let shown = exit_ns
        .ip(&["-o", "link", "show", "dev", &config.tun_name])
        .unwrap();
    assert!(shown.contains("mtu 1300"), "{shown}");

    let link_sock = bind(&gw, SocketAddr::from((GW, 0)));
    let mut link = LinkCrypto::new(&LINK_KEY, Dir::GatewayToExit, 0, now_us());
    let install = |sid, addr: Ipv4Addr, c2x| LinkMsg::Install {
        session_id: sid,
        tunnel_addr: IpAddr::V4(addr),
        tunnel6: None,
        c2x,
        x2c: X2C,
        ret: SocketAddr::from((GW, RET_PORT)),
        epoch: 0,
    };
    let ack = |sid| {
        Some(LinkMsg::Ack {
            session_id: sid,
            acked_type: 1,
        })
    };
    assert_eq!(
        link_call(&link_sock, &mut link, &install(SID, CLIENT_TUN, C2X)),
        ack(SID)
    );
    // A retransmitted INSTALL is acknowledged again.
    assert_eq!(
        link_call(&link_sock, &mut link, &install(SID, CLIENT_TUN, C2X)),
        ack(SID)
    );
    // Another session on the same tunnel address replaces it: the gateway owns the
    // pool, so the holder is one it no longer knows (docs/protocol.md).
    assert_eq!(
        link_call(
            &link_sock,
            &mut link,
            &install(SID + 1, CLIENT_TUN, [1; 32])
        ),
        ack(SID + 1)
    );
    exit.wait_for("link_replaced", |c| c.link_replaced == 1);
    // Nor does one outside the pool or on the exit's own address.
    for addr in [Ipv4Addr::new(10, 98, 0, 2), EXIT_TUN] {
        assert_eq!(
            link_call(&link_sock, &mut link, &install(SID + 2, addr, [2; 32])),
            None
        );
    }
    exit.wait_for("link_refused", |c| c.link_refused == 2);
    assert_eq!(exit.counters().link_installs, 3);

    // A second exit cannot take the same sockets or device name: a clear error.
    let err = exit_ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(Exit::bind(config.clone()))
            .err()
            .expect("second exit must fail")
            .to_string()
    });
    assert!(
        err.contains(&config.tun_name) || err.contains("51821"),
        "{err}"
    );
    drop(exit);
}

/// Cluster ownership at a real exit: node 1 owns the session (epoch 5, return address
/// GW), node 2 takes it over with the same keys (epoch 6, return address GW2). DATA
/// from node 1's address is dropped as a stale owner's, return DATA goes to node 2,
/// node 1's INSTALL is refused unacknowledged and its REVOKE acknowledged but
/// ignored, and each node's PONG counts its own sessions.
#[test]
fn exit_fences_a_superseded_owner() {
    require_root!();
    let (gw, exit_ns) = lab();
    let mut config = exit_config();
    config.tun_name = unique("jvf");
    let mut exit = RunningExit::start(exit_ns.clone(), config);
    let (link1, link2) = (
        bind(&gw, SocketAddr::from((GW, 0))),
        bind(&gw, SocketAddr::from((GW2, 0))),
    );
    let (ret1, ret2) = (
        bind(&gw, SocketAddr::from((GW, RET_PORT))),
        bind(&gw, SocketAddr::from((GW2, RET_PORT))),
    );
    let echo = bind(&exit_ns, SocketAddr::from((EXIT_TUN, ECHO_PORT)));
    // The nodes share the key and even their start counter: the node number keeps
    // their nonces apart.
    let start = now_us();
    let mut n1 = LinkCrypto::new(&LINK_KEY, Dir::GatewayToExit, 1, start);
    let mut n2 = LinkCrypto::new(&LINK_KEY, Dir::GatewayToExit, 2, start);
    let install = |ret: Ipv4Addr, epoch| LinkMsg::Install {
        session_id: SID,
        tunnel_addr: IpAddr::V4(CLIENT_TUN),
        tunnel6: None,
        c2x: C2X,
        x2c: X2C,
        ret: SocketAddr::from((ret, RET_PORT)),
        epoch,
    };
    let ack = |acked_type| {
        Some(LinkMsg::Ack {
            session_id: SID,
            acked_type,
        })
    };
    let to_exit = SocketAddr::from((EXIT, DATA_PORT));
    let client = (CLIENT_TUN, CLIENT_PORT);
    let hello = |payload: &[u8]| udp_packet(client, (EXIT_TUN, ECHO_PORT), payload);

    assert_eq!(link_call(&link1, &mut n1, &install(GW, 5)), ack(1));
    ret1.send_to(&seal_data(1, &hello(b"one")), to_exit)
        .unwrap();
    let (from, payload) = recv_payload(&echo).expect("node 1's DATA delivered");
    assert_eq!(payload, b"one");

    // Takeover by node 2.
    assert_eq!(link_call(&link2, &mut n2, &install(GW2, 6)), ack(1));
    ret1.send_to(&seal_data(2, &hello(b"stale")), to_exit)
        .unwrap();
    exit.wait_for("data_stale_owner", |c| c.data_stale_owner == 1);
    assert!(
        recv_payload(&echo).is_none(),
        "stale owner's DATA delivered"
    );
    // Counter 2 was not spent by the dropped packet.
    ret2.send_to(&seal_data(2, &hello(b"two")), to_exit)
        .unwrap();
    assert_eq!(recv_payload(&echo).expect("node 2's DATA").1, b"two");
    echo.send_to(b"pong", from).unwrap();
    let (_, _, dst, payload) = recv_return(&ret2).expect("return DATA at node 2");
    assert_eq!(
        (dst, &payload[..]),
        (SocketAddr::from(client), &b"pong"[..])
    );
    assert!(
        recv_payload(&ret1).is_none(),
        "return DATA at the old owner"
    );

    // Node 1, superseded: its INSTALL is refused without an ACK, its REVOKE is
    // acknowledged (so it stops retransmitting) and ignored.
    assert_eq!(link_call(&link1, &mut n1, &install(GW, 5)), None);
    assert_eq!(
        link_call(
            &link1,
            &mut n1,
            &LinkMsg::Revoke {
                session_id: SID,
                epoch: 5
            }
        ),
        ack(2)
    );
    ret2.send_to(&seal_data(3, &hello(b"three")), to_exit)
        .unwrap();
    assert_eq!(recv_payload(&echo).expect("session kept").1, b"three");

    let sessions = |sock: &UdpSocket, link: &mut LinkCrypto| match link_call(
        sock,
        link,
        &LinkMsg::Ping { nonce: 1 },
    ) {
        Some(LinkMsg::Pong { sessions, .. }) => sessions,
        other => panic!("PONG expected: {other:?}"),
    };
    assert_eq!(sessions(&link1, &mut n1), 0);
    assert_eq!(sessions(&link2, &mut n2), 1);

    let c = exit.stop().expect("exit ran cleanly");
    assert_eq!(
        (
            c.link_installs,
            c.link_stale_epoch,
            c.link_revokes,
            c.link_bad_frames
        ),
        (2, 2, 0, 0),
        "{c}"
    );
    assert_eq!(
        (c.data_in, c.data_out, c.data_stale_owner, c.data_bad_tag),
        (3, 1, 1, 0),
        "{c}"
    );
}
