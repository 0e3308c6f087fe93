//! Egress (`[nat]` on the exit): a client's traffic reaches an "internet" namespace
//! beyond the exit with the exit's address as its source, and the answers come back
//! through the tunnel; the rules are one nftables table that a restart replaces (a
//! crash leaves no second copy) and a stop removes; a `[nat]` naming a missing
//! interface stops the exit before anything is installed.

use std::{
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
    time::Duration,
};

use jvpn_ctl::lab::{
    gateway::Transport::Wifi,
    netns::{Netns, veth},
};
use jvpn_tests::{
    gwlab::GwLab,
    require_root,
    tclient::{Reply, TestClient, udp_payload, udp6_packet},
};

const EXIT_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const EXIT_WAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 2);
const TABLE: &str = "jvpn_jvpn_exit0";

/// A host beyond the exit, on a link of its own, with an IPv4 and an IPv6 address;
/// it has no route to either tunnel pool, so only masquerading lets it answer.
fn internet(lab: &GwLab, tag: &str) -> (Netns, UdpSocket, UdpSocket) {
    let inet = Netns::new(format!("jvpn-inet-{tag}-{}", std::process::id())).unwrap();
    veth(&lab.lab.exit, "x-wan", &inet, "i-wan").unwrap();
    lab.lab
        .exit
        .ip(&["addr", "add", &format!("{EXIT_WAN}/24"), "dev", "x-wan"])
        .unwrap();
    inet.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "i-wan"])
        .unwrap();
    // No duplicate address detection: the addresses are usable at once.
    lab.lab
        .exit
        .ip(&[
            "addr",
            "add",
            &format!("{EXIT_WAN6}/64"),
            "dev",
            "x-wan",
            "nodad",
        ])
        .unwrap();
    inet.ip(&[
        "addr",
        "add",
        &format!("{SERVER6}/64"),
        "dev",
        "i-wan",
        "nodad",
    ])
    .unwrap();
    let server = inet.run(|| UdpSocket::bind((SERVER, 7777))).unwrap();
    let server6 = inet.run(|| UdpSocket::bind((SERVER6, 7777))).unwrap();
    for s in [&server, &server6] {
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
    }
    (inet, server, server6)
}

fn ip6_forward(lab: &GwLab) -> String {
    lab.lab
        .exit
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding"))
        .unwrap()
        .trim()
        .to_owned()
}

fn tables(lab: &GwLab) -> String {
    let out = lab.lab.exit.exec("nft", &["list", "ruleset"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_forward(lab: &GwLab) -> String {
    lab.lab
        .exit
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
        .unwrap()
        .trim()
        .to_owned()
}

fn with_nat(lab: &GwLab, out: &str) {
    let cfg = lab.dir.join("exit.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.split("[nat]").next().unwrap().to_owned();
    std::fs::write(&cfg, format!("{text}[nat]\nout_interface = \"{out}\"\n")).unwrap();
}

#[test]
fn client_traffic_leaves_masqueraded_and_the_rules_live_as_long_as_the_exit() {
    require_root!();
    let mut lab = GwLab::start("nat", "");
    let (_inet, server, server6) = internet(&lab, "a");
    let forward_before = (ip_forward(&lab), ip6_forward(&lab));
    let mut buf = [0u8; 2048];

    // Without [nat]: nothing from the exit's address reaches the server.
    let mut c = TestClient::connect(&lab, Wifi);
    let pkt = c.data_to(SERVER, 7777, b"no nat");
    c.send_raw(Wifi, &pkt);
    if let Ok((_, from)) = server.recv_from(&mut buf) {
        assert_ne!(from.ip(), EXIT_WAN, "masqueraded without [nat]");
    }
    drop(c);

    with_nat(&lab, "x-wan");
    lab.stack.restart("exit", false).unwrap();
    let rules = tables(&lab);
    assert!(rules.contains(&format!("table inet {TABLE}")), "{rules}");
    assert_eq!(
        rules.matches("masquerade").count(),
        2,
        "one per family: {rules}"
    );
    assert_eq!(
        (ip_forward(&lab), ip6_forward(&lab)),
        ("1".into(), "1".into())
    );

    let mut c = TestClient::connect(&lab, Wifi);
    let pkt = c.data_to(SERVER, 7777, b"hello, internet");
    c.send_raw(Wifi, &pkt);
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the datagram crossed the exit");
    assert_eq!(&buf[..n], b"hello, internet");
    assert_eq!(from.ip(), EXIT_WAN, "the exit's address is the source");
    server.send_to(b"hello, client", from).unwrap();
    let inner = loop {
        match c.recv(Wifi, Duration::from_secs(3)) {
            Reply::Data(inner) => break inner,
            Reply::Control(_) => continue,
            Reply::Silence => panic!("the answer did not come back through the tunnel"),
        }
    };
    assert_eq!(udp_payload(&inner), b"hello, client");
    assert_eq!(&inner[12..16], &SERVER.octets(), "from the server");
    assert_eq!(&inner[16..20], &c.tunnel_addr().octets(), "to the client");

    // The same over IPv6 (the lab's tunnel is dual-stack): masqueraded to the exit's
    // IPv6 address, answered back to the client's IPv6 tunnel address.
    let mine6 = c.tunnel6().expect("a dual-stack session");
    let pkt = c.seal(&udp6_packet(
        mine6,
        SERVER6,
        5556,
        7777,
        b"hello, v6 internet",
    ));
    c.send_raw(Wifi, &pkt);
    let (n, from) = server6
        .recv_from(&mut buf)
        .expect("the IPv6 datagram crossed the exit");
    assert_eq!(&buf[..n], b"hello, v6 internet");
    assert_eq!(
        from.ip(),
        EXIT_WAN6,
        "the exit's IPv6 address is the source"
    );
    server6.send_to(b"hello, v6 client", from).unwrap();
    let inner = loop {
        match c.recv(Wifi, Duration::from_secs(3)) {
            Reply::Data(inner) => break inner,
            Reply::Control(_) => continue,
            Reply::Silence => panic!("the IPv6 answer did not come back through the tunnel"),
        }
    };
    assert_eq!(udp_payload(&inner), b"hello, v6 client");
    assert_eq!(&inner[8..24], &SERVER6.octets(), "from the server");
    assert_eq!(&inner[24..40], &mine6.octets(), "to the client");

    // A crash leaves the table; the next start replaces it (one copy of the rules).
    lab.stack.restart("exit", true).unwrap();
    assert_eq!(tables(&lab).matches("masquerade").count(), 2);

    // A stop removes it, and forwarding is as it was before the exit set it.
    lab.stack.stop("exit");
    let rules = tables(&lab);
    assert!(!rules.contains(TABLE), "{rules}");
    assert_eq!((ip_forward(&lab), ip6_forward(&lab)), forward_before);
}

#[test]
fn a_nat_section_naming_a_missing_interface_stops_the_exit_before_anything_is_installed() {
    require_root!();
    let mut lab = GwLab::start("natbad", "");
    let forward_before = ip_forward(&lab);
    with_nat(&lab, "nope0");
    assert!(lab.stack.restart("exit", false).is_err());
    let log = lab.log("exit");
    assert!(
        log.contains("nat.out_interface: no interface \"nope0\" here"),
        "{log}"
    );
    assert!(lab.exited("exit").is_some_and(|s| !s.success()));
    assert!(!tables(&lab).contains(TABLE));
    assert_eq!(ip_forward(&lab), forward_before);
}
