//! The dual-stack tunnel: the lab's gateway has an IPv6 pool beside the IPv4 one
//! (`pool.cidr6`) and its exit an IPv6 tunnel address (`tun_addr6`), so a client gets
//! one address of each family and IPv6 travels the tunnel end to end — the real
//! agent's TUN, the relay, the exit's TUN — also after a move to another transport;
//! the exit's inner-source check holds for IPv6 as for IPv4.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use jvpn_ctl::lab::{
    gateway::Transport::{Lte, Wifi},
    stack::EXIT_TUN6,
    traffic::{EchoServer, Stream, TcpFlow},
};
use jvpn_tests::{
    agent::AgentLab,
    gwlab::GwLab,
    require_root,
    tclient::{TestClient, udp6_packet},
};

const ECHO6_PORT: u16 = 7006;

fn exit6() -> Ipv6Addr {
    EXIT_TUN6.parse().unwrap()
}

#[test]
fn the_agent_gets_both_families_and_ipv6_crosses_the_tunnel_and_a_move() {
    require_root!();
    let lab = AgentLab::start("dual", "", &[Wifi, Lte], "");
    let st = lab.status();
    eprintln!(
        "client tunnel addresses: {:?} {:?}",
        st.tunnel_addr, st.tunnel_addr6
    );
    assert_eq!(st.tunnel_addr.as_deref(), Some("10.99.0.2"));
    assert_eq!(
        st.tunnel_addr6.as_deref(),
        Some("fd00:99::2"),
        "the IPv6 address at the IPv4 one's offset"
    );
    let sessions = lab.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        (
            sessions[0].tunnel_addr.as_str(),
            sessions[0].tunnel_addr6.as_deref()
        ),
        ("10.99.0.2", Some("fd00:99::2"))
    );
    let addrs = lab
        .gw
        .lab
        .client
        .ip(&["-6", "addr", "show", "dev", "jvpn0"])
        .unwrap();
    assert!(addrs.contains("fd00:99::2/128"), "{addrs}");

    // TCP over IPv6: a bulk flow to the exit's IPv6 tunnel address for a second.
    let flow = TcpFlow::start(
        &lab.gw.lab.client,
        &lab.gw.lab.exit,
        SocketAddr::new(IpAddr::V6(exit6()), 7106),
        None,
    )
    .unwrap();
    // The flow's length, not a wait for something.
    std::thread::sleep(Duration::from_secs(1));
    let tcp = flow.finish();
    eprintln!(
        "TCP over IPv6 through the tunnel: {} bytes in {:?} ({:.1} Mbit/s)",
        tcp.bytes, tcp.duration, tcp.mbit_s
    );
    assert!(tcp.bytes >= 1 << 20 && tcp.error.is_none(), "{tcp:?}");

    // A numbered UDP stream over IPv6, across a move to LTE and back.
    let echo = EchoServer::start(
        &lab.gw.lab.exit,
        SocketAddr::new(IpAddr::V6(exit6()), ECHO6_PORT),
    )
    .unwrap();
    let stream = Stream::start(
        &lab.gw.lab.client,
        SocketAddr::new(IpAddr::V6(exit6()), ECHO6_PORT),
        Duration::from_millis(10),
    )
    .unwrap();
    lab.wait_traffic(&stream, 20);
    lab.wait_all_healthy();
    lab.move_to(Lte);
    lab.wait_bound(Lte, Duration::from_secs(5));
    let before = stream.echoed();
    lab.wait_traffic(&stream, before + 20);
    lab.move_to(Wifi);
    lab.wait_bound(Wifi, Duration::from_secs(5));
    let before = stream.echoed();
    lab.wait_traffic(&stream, before + 20);
    let report = stream.finish(Duration::from_millis(500));
    eprintln!("IPv6 stream over two moves: {report:?}");
    let (received, _) = echo.counts();
    assert!(report.echoed >= 60, "{report:?}");
    assert!(
        received >= report.echoed,
        "the exit's IPv6 echo server saw {received}, the client got {} back",
        report.echoed
    );
    // Still the same session, with its addresses.
    let after = lab.status();
    assert_eq!(after.session_id, st.session_id);
    assert_eq!(after.tunnel_addr6, st.tunnel_addr6);
    // IPv4 still works beside it.
    let v4 = lab.stream(Duration::from_millis(10));
    lab.wait_traffic(&v4, 10);
    drop(v4);

    // A new session replaces the old one's addresses on the TUN: an address left
    // there (as a session given other addresses would leave one) would be the
    // kernel's source, and the agent seals only its session's.
    let ns = &lab.gw.lab.client;
    ns.ip(&["addr", "add", "10.99.0.77/32", "dev", "jvpn0"])
        .unwrap();
    let id = lab.session_id();
    let out = lab.cli(&["session", "kill", &format!("{id:016x}")]);
    assert!(out.status.success(), "{out:?}");
    let again = lab.wait_status("a new session", Duration::from_secs(10), |s| {
        s.sessions_established == 2 && s.state == jvpn_ctl::session::State::Attached
    });
    let addrs = ns.ip(&["addr", "show", "dev", "jvpn0"]).unwrap();
    eprintln!("after the new session: {addrs}");
    assert!(!addrs.contains("10.99.0.77"), "{addrs}");
    let (a4, a6) = (again.tunnel_addr.unwrap(), again.tunnel_addr6.unwrap());
    assert!(
        addrs.contains(&format!("{a4}/32")) && addrs.contains(&format!("{a6}/128")),
        "{addrs}"
    );
    assert!(
        lab.log("client")
            .contains("removed 3 address(es) of the previous session")
    );
    let v6 = Stream::start(
        ns,
        SocketAddr::new(IpAddr::V6(exit6()), ECHO6_PORT),
        Duration::from_millis(10),
    )
    .unwrap();
    lab.wait_traffic(&v6, 10);
}

/// A DATA packet whose IPv6 source is not the session's IPv6 address is dropped by
/// the exit; one from its own address is delivered and answered.
#[test]
fn the_exit_checks_the_ipv6_inner_source() {
    require_root!();
    let lab = GwLab::start("dual6src", "");
    let echo = EchoServer::start(
        &lab.lab.exit,
        SocketAddr::new(IpAddr::V6(exit6()), ECHO6_PORT),
    )
    .unwrap();
    let mut c = TestClient::connect(&lab, Wifi);
    let mine = c.tunnel6().expect("a dual-stack WELCOME");
    assert_eq!(mine, "fd00:99::2".parse::<Ipv6Addr>().unwrap());

    let spoofed: Ipv6Addr = "fd00:99::77".parse().unwrap();
    let payload = jvpn_ctl::lab::traffic::numbered(1);
    let bad = c.seal(&udp6_packet(spoofed, exit6(), 5555, ECHO6_PORT, &payload));
    c.send_raw(Wifi, &bad);
    let payload = jvpn_ctl::lab::traffic::numbered(2);
    let good = c.seal(&udp6_packet(mine, exit6(), 5555, ECHO6_PORT, &payload));
    // Sent after the spoofed one on the same path: once it has arrived, the spoofed
    // one has had its chance.
    let deadline = Instant::now() + Duration::from_secs(5);
    while echo.counts().0 < 1 && Instant::now() < deadline {
        c.send_raw(Wifi, &good);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        echo.seen(),
        vec![2],
        "only the packet from the session's own IPv6 address arrives"
    );
}
