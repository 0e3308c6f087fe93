//! The lab's NAT router on the Wi-Fi path and its LTE MTUs, with plain UDP sockets
//! (no jvpn processes): the gateway sees the client's Wi-Fi as the NAT's mapping,
//! replies come back through it, a rebind moves the mapping and strands the old one;
//! the LTE link carries IPv4 packets up to 1400 bytes and IPv6 ones up to 1280 with
//! fragmentation forbidden, and refuses one byte more. Then the XDP relay through the
//! NAT: the session's binding is the mapping, and both directions arrive intact.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use jvpn_common::{counters, maps::Endpoint, wire::msg_type};
use jvpn_ctl::{
    datapath::AttachMode,
    lab::gateway::{
        CLIENT_PORT, GW_DEVS, GatewayLab, LTE_MTU, LTE6_MTU, LabOptions, NAT_CLIENT,
        NAT_FIRST_PORT, NAT_PUBLIC,
        Transport::{self, Lte, Lte6, Wifi},
        exit_addr, gw_exit_addr,
    },
};
use jvpn_tests::{frames::jvpn, netns::Netns, require_root};

/// A plain UDP port on the gateway's side (not the relay's).
const GW_TEST_PORT: u16 = 7311;
const WAIT: Duration = Duration::from_secs(2);

fn nat_lab(tag: &str) -> GatewayLab {
    GatewayLab::build_with(tag, LabOptions { nat: true }).expect("building the NAT lab")
}

fn bind(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    })
}

fn recv(s: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: nothing within {WAIT:?} ({e})"));
    buf.truncate(n);
    (buf, from)
}

/// A field of the `Udp:` lines of the namespace's /proc/net/snmp.
fn udp_stat(ns: &Netns, name: &str) -> u64 {
    let out = ns.exec("cat", &["/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names.split_whitespace().position(|x| x == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn gw_test_addr(t: Transport) -> SocketAddr {
    SocketAddr::new(t.gw_addr().ip(), GW_TEST_PORT)
}

#[test]
fn nat_maps_the_wifi_path_and_a_rebind_moves_the_mapping() {
    require_root!();
    let lab = nat_lab("jt");
    let nat = lab.nat.as_ref().expect("a NAT lab has a router");
    assert_eq!(lab.namespaces().len(), 4);
    assert_eq!(
        lab.client_addr(Wifi),
        SocketAddr::new(NAT_CLIENT.into(), CLIENT_PORT)
    );
    assert_eq!(lab.client_addr(Lte), Lte.client_addr(), "LTE is not NATed");
    assert_eq!(lab.binding(Lte6), Lte6.client_addr());
    assert_eq!(
        lab.redirect_targets()[0].0.name,
        nat.router.name,
        "the gateway's Wi-Fi redirects land in the router"
    );
    let first = SocketAddr::new(NAT_PUBLIC.into(), NAT_FIRST_PORT);
    assert_eq!(lab.nat_binding(), Some(first));
    assert_eq!(lab.binding(Wifi), first);

    let gw_addr = gw_test_addr(Wifi);
    let gw = bind(&lab.gw, gw_addr);
    let client = bind(&lab.client, lab.client_addr(Wifi));

    // 1. Up through the NAT: the gateway sees the mapping, not 10.77.11.2:40000.
    client.send_to(b"one", gw_addr).unwrap();
    let (got, from) = recv(&gw, "the first datagram at the gateway");
    assert_eq!((&got[..], from), (&b"one"[..], first));
    // 2. A reply to the mapping reaches the client, from the gateway's address.
    gw.send_to(b"reply one", first).unwrap();
    let (got, from) = recv(&client, "the reply at the client");
    assert_eq!((&got[..], from), (&b"reply one"[..], gw_addr));

    // 3. A rebind: the next datagram leaves from the next port.
    let second = lab.rebind().expect("rebind");
    assert_eq!(
        second,
        SocketAddr::new(NAT_PUBLIC.into(), NAT_FIRST_PORT + 1)
    );
    assert_eq!(lab.nat_binding(), Some(second));
    client.send_to(b"two", gw_addr).unwrap();
    let (got, from) = recv(&gw, "the datagram after the rebind");
    assert_eq!((&got[..], from), (&b"two"[..], second));

    // 4. A reply to the old mapping ends in the router (no socket there: NoPorts), not
    // at the client; one to the new mapping, sent after it on the same path, arrives
    // first.
    let no_ports = udp_stat(&nat.router, "NoPorts");
    gw.send_to(b"stale", first).unwrap();
    gw.send_to(b"reply two", second).unwrap();
    let (got, from) = recv(&client, "the reply to the new mapping");
    assert_eq!(
        (&got[..], from),
        (&b"reply two"[..], gw_addr),
        "the reply to the old mapping must not reach the client"
    );
    assert_eq!(
        udp_stat(&nat.router, "NoPorts"),
        no_ports + 1,
        "the reply to the old mapping is refused by the router itself"
    );

    // 5. Another rebind: 50002, both directions.
    let third = lab.rebind().expect("second rebind");
    assert_eq!(third.port(), NAT_FIRST_PORT + 2);
    client.send_to(b"three", gw_addr).unwrap();
    let (got, from) = recv(&gw, "the datagram after the second rebind");
    assert_eq!((&got[..], from), (&b"three"[..], third));
    gw.send_to(b"reply three", third).unwrap();
    let (got, _) = recv(&client, "the reply after the second rebind");
    assert_eq!(&got[..], b"reply three");
}

#[test]
fn rebind_without_nat_is_an_error() {
    require_root!();
    let lab = GatewayLab::build("jt").unwrap();
    assert!(lab.nat.is_none());
    assert_eq!(lab.namespaces().len(), 3);
    assert_eq!(lab.nat_binding(), None);
    assert_eq!(lab.client_addr(Wifi), Wifi.client_addr());
    assert_eq!(lab.binding(Wifi), Wifi.client_addr());
    assert!(lab.rebind().is_err());
}

/// Forbids fragmentation on `s` (IP_PMTUDISC_DO / IPV6_PMTUDISC_DO): a datagram that
/// does not fit the route's MTU fails with EMSGSIZE.
fn dont_fragment(s: &UdpSocket, v6: bool) {
    let (level, opt, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Both ends of `t`'s link carry an IP packet of `mtu` bytes unfragmented and refuse
/// one of `mtu + 1`.
fn check_mtu(lab: &GatewayLab, t: Transport, mtu: u32) {
    let v6 = t == Lte6;
    let headers = if v6 { 40 + 8 } else { 20 + 8 };
    let fits = mtu as usize - headers;
    let client_addr = lab.client_addr(t);
    let gw_addr = gw_test_addr(t);
    let client = bind(&lab.client, client_addr);
    let gw = bind(&lab.gw, gw_addr);
    for (s, from, to, rx) in [
        (&client, client_addr, gw_addr, &gw),
        (&gw, gw_addr, client_addr, &client),
    ] {
        dont_fragment(s, v6);
        let what = format!("{} {from} → {to}", t.name());
        let payload = vec![0x5a; fits];
        s.send_to(&payload, to)
            .unwrap_or_else(|e| panic!("{what}: a {mtu}-byte packet must fit: {e}"));
        let (got, src) = recv(rx, &format!("{what}: the {mtu}-byte packet"));
        assert_eq!((got.len(), src), (fits, from), "{what}");
        let err = s
            .send_to(&vec![0x5a; fits + 1], to)
            .expect_err(&format!("{what}: a {}-byte packet must not fit", mtu + 1));
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EMSGSIZE),
            "{what}: {} bytes: {err}",
            mtu + 1
        );
    }
}

#[test]
fn lte_carries_1400_byte_ipv4_and_1280_byte_ipv6_packets_and_no_more() {
    require_root!();
    assert_eq!((LTE_MTU, LTE6_MTU), (1400, 1280));
    // The plain lab and the NAT lab: LTE is the same in both.
    for lab in [GatewayLab::build("jm").unwrap(), nat_lab("jm")] {
        check_mtu(&lab, Lte, LTE_MTU);
        check_mtu(&lab, Lte6, LTE6_MTU);
    }
}

#[test]
fn the_relay_forwards_through_the_nat() {
    require_root!();
    const SID: u64 = 0x0a70_a700_1011_2233;
    let lab = nat_lab("jr");
    let (mut dp, modes) = lab.relay(16).unwrap();
    assert_eq!(modes, [AttachMode::Native; 3], "{GW_DEVS:?}");
    dp.insert_session(SID, &lab.session_entry(Wifi, 1)).unwrap();
    let router = &lab.nat.as_ref().unwrap().router;
    let csum_errors = |ns: &Netns| udp_stat(ns, "InCsumErrors");
    let before = [
        csum_errors(&lab.client),
        csum_errors(router),
        csum_errors(&lab.exit),
    ];

    let client = bind(&lab.client, lab.client_addr(Wifi));
    let exit = bind(&lab.exit, exit_addr());
    let (gw_wifi, gw_exit) = (Wifi.gw_addr(), gw_exit_addr());
    let round_trip = |counter: u64| {
        let up = jvpn(msg_type::DATA, SID, counter, 200);
        client.send_to(&up, gw_wifi).unwrap();
        let (got, from) = recv(&exit, "the uplink packet at the exit");
        assert_eq!((&got[..], from), (&up[..], gw_exit));
        let down = jvpn(msg_type::DATA, SID, counter + 1, 300);
        exit.send_to(&down, gw_exit).unwrap();
        let (got, from) = recv(
            &client,
            "the downlink packet at the client, through the NAT",
        );
        assert_eq!((&got[..], from), (&down[..], gw_wifi));
    };
    round_trip(1);

    // The mapping moves: the relay still holds the old binding, so the client's
    // packet from the new port is dropped as a stale binding (the controller would
    // see a reattach); had it been relayed, the next round trip would find it at the
    // exit first. Once the binding is swapped both directions work again.
    let stale = || dp.drops().unwrap()[counters::STALE_BINDING as usize];
    let stale_before = stale();
    let new = lab.rebind().unwrap();
    assert_eq!(lab.session_entry(Wifi, 2).client, Endpoint::from(new));
    client
        .send_to(&jvpn(msg_type::DATA, SID, 10, 200), gw_wifi)
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while stale() == stale_before {
        assert!(
            Instant::now() < deadline,
            "the packet from the unbound mapping {new} was not counted as a stale binding"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        dp.replace_session(SID, &lab.session_entry(Wifi, 2))
            .unwrap(),
        2
    );
    round_trip(20);

    let after = [
        csum_errors(&lab.client),
        csum_errors(router),
        csum_errors(&lab.exit),
    ];
    assert_eq!(after, before, "UDP checksum errors (client, router, exit)");
}
