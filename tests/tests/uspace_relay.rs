//! The userspace relay baseline (`jvpn_tests::uspace_relay`) in the three-namespace
//! lab (client ⇄ gateway ⇄ exit, real veths and UDP sockets): DATA is relayed
//! byte-identical by source, from the right gateway address, also across families;
//! every drop reason is counted and nothing dropped is delivered; a 10,000-datagram
//! burst is relayed completely. And `start` refuses bad configurations by name.

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use jvpn_common::{
    maps::{Endpoint, FLAG_FORWARDING, SessionEntry},
    wire::{WireHeader, msg_type},
};
use jvpn_ctl::lab::gateway::{
    CLIENT_PORT, GatewayLab,
    Transport::{Lte, Lte6, Wifi},
    exit_addr, gw_exit_addr, session_entry,
};
use jvpn_tests::{
    netns::Netns,
    pktgen_lab::test_cpus,
    require_root,
    uspace_relay::{DEFAULT_BATCH, RelayConfig, RelayStats, UserspaceRelay},
};

/// Bound on Wi-Fi (IPv4), on LTE over IPv6 (toward an IPv4 exit), a session on LTE
/// (IPv4) that is not forwarding, and one on Wi-Fi (another port) whose exit the
/// gateway has no route to, so that sending to it fails.
const S_WIFI: u64 = 0x5e55_0000_0000_0001;
const S_LTE6: u64 = 0x5e55_0000_0000_0002;
const S_IDLE: u64 = 0x5e55_0000_0000_0003;
const S_NOROUTE: u64 = 0x5e55_0000_0000_0004;
const S_UNKNOWN: u64 = 0x5e55_0000_0000_0099;

const WAIT: Duration = Duration::from_secs(5);

fn sessions() -> HashMap<u64, SessionEntry> {
    let mut idle = session_entry(Lte, 1);
    idle.flags = 0;
    let mut noroute = session_entry(Wifi, 1);
    noroute.client = Endpoint::from(noroute_client());
    noroute.exit = Endpoint::from(SocketAddr::from(([10, 99, 99, 99], 51821)));
    HashMap::from([
        (S_WIFI, session_entry(Wifi, 1)),
        (S_LTE6, session_entry(Lte6, 1)),
        (S_IDLE, idle),
        (S_NOROUTE, noroute),
    ])
}

fn noroute_client() -> SocketAddr {
    SocketAddr::new(Wifi.client_addr().ip(), CLIENT_PORT + 2)
}

fn start(lab: &GatewayLab) -> UserspaceRelay {
    let cfg = RelayConfig {
        netns: Some(PathBuf::from(format!("/run/netns/{}", lab.gw.name))),
        cpus: test_cpus(),
        batch: DEFAULT_BATCH,
    };
    UserspaceRelay::start(cfg, sessions()).unwrap()
}

/// A DATA datagram of `len` bytes whose body is derived from `counter`, so that a
/// datagram altered or swapped on the way shows.
fn data(sid: u64, counter: u64, len: usize) -> Vec<u8> {
    let mut p = WireHeader::new(msg_type::DATA, sid, counter)
        .to_bytes()
        .to_vec();
    p.extend((p.len()..len).map(|i| (counter as usize).wrapping_mul(31).wrapping_add(i) as u8));
    p
}

fn bind(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 65536];
    let (n, from) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("nothing arrived at {}: {e}", s.local_addr().unwrap()));
    buf.truncate(n);
    (buf, from)
}

/// Receives one datagram at `at` and checks it is `want`, from `from`.
fn expect_datagram(at: &UdpSocket, want: &[u8], from: SocketAddr, what: &str) {
    let (got, src) = recv(at);
    assert_same(&got, want, what);
    assert_eq!(src, from, "{what}: source");
}

/// Byte equality, reported by length and first difference rather than as two dumps.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got == want,
        "{what}: {} bytes, expected {}; first difference at {first_diff:?}",
        got.len(),
        want.len()
    );
}

/// Fails if any of `socks` has a datagram queued (after a moment for one in flight).
fn assert_quiet(socks: &[&UdpSocket], after: &str) {
    thread::sleep(Duration::from_millis(50));
    for s in socks {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0; 2048];
        let r = s.recv_from(&mut buf);
        s.set_nonblocking(false).unwrap();
        match r {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!(
                "after {after}: {} received {other:?}",
                s.local_addr().unwrap()
            ),
        }
    }
}

/// Waits until the relay's counters are exactly `want` (they are published per
/// batch, so they settle shortly after the last datagram).
fn expect(relay: &UserspaceRelay, want: RelayStats, after: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = relay.stats();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {after}: counters {got:?}, expected {want:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn relays_data_by_source_and_counts_every_drop() {
    require_root!();
    let lab = GatewayLab::build("ju").unwrap();
    let relay = start(&lab);
    let wifi = bind(&lab.client, Wifi.client_addr());
    let lte6 = bind(&lab.client, Lte6.client_addr());
    let lte = bind(&lab.client, Lte.client_addr());
    let other_port = bind(
        &lab.client,
        SocketAddr::new(Wifi.client_addr().ip(), CLIENT_PORT + 1),
    );
    let exit = bind(&lab.exit, exit_addr());
    let everyone = [&wifi, &lte6, &lte, &other_port, &exit];
    let mut want = RelayStats::default();

    // Up and down on Wi-Fi: unchanged bytes, each leaving from the gateway address
    // on the far side.
    let up = data(S_WIFI, 1, 100);
    wifi.send_to(&up, Wifi.gw_addr()).unwrap();
    expect_datagram(&exit, &up, gw_exit_addr(), "Wi-Fi → exit");
    let down = data(S_WIFI, 2, 1400);
    exit.send_to(&down, gw_exit_addr()).unwrap();
    expect_datagram(&wifi, &down, Wifi.gw_addr(), "exit → Wi-Fi");
    want.received += 2;
    want.forwarded += 2;
    expect(&relay, want, "Wi-Fi up and down");

    // The same across families: an IPv6 binding, an IPv4 exit.
    let up = data(S_LTE6, 3, 36);
    lte6.send_to(&up, Lte6.gw_addr()).unwrap();
    expect_datagram(&exit, &up, gw_exit_addr(), "LTE/IPv6 → exit");
    let down = data(S_LTE6, 4, 200);
    exit.send_to(&down, gw_exit_addr()).unwrap();
    expect_datagram(&lte6, &down, Lte6.gw_addr(), "exit → LTE/IPv6");
    want.received += 2;
    want.forwarded += 2;
    expect(&relay, want, "LTE/IPv6 up and down");
    assert_quiet(&everyone, "the relayed datagrams");

    // Not the binding: another port of the bound address, another session's binding,
    // and the exit's address with another port. Only the source decides, so also a
    // datagram sent to the gateway's exit-side address is refused.
    other_port
        .send_to(&data(S_WIFI, 5, 100), Wifi.gw_addr())
        .unwrap();
    lte.send_to(&data(S_WIFI, 6, 100), Lte.gw_addr()).unwrap();
    lte6.send_to(&data(S_WIFI, 7, 100), Lte6.gw_addr()).unwrap();
    let exit_other = bind(&lab.exit, SocketAddr::new(exit_addr().ip(), 7777));
    exit_other
        .send_to(&data(S_WIFI, 8, 100), gw_exit_addr())
        .unwrap();
    want.received += 4;
    want.stale_binding += 4;
    expect(&relay, want, "datagrams from stale bindings");
    assert_quiet(&everyone, "datagrams from stale bindings");

    wifi.send_to(&data(S_UNKNOWN, 9, 100), Wifi.gw_addr())
        .unwrap();
    exit.send_to(&data(S_UNKNOWN, 10, 100), gw_exit_addr())
        .unwrap();
    want.received += 2;
    want.unknown_session += 2;
    expect(&relay, want, "an unknown session id");
    assert_quiet(&everyone, "an unknown session id");

    // Too short for any header; a DATA header without room for the tag; a bad
    // version; an unknown type; a session id of 0.
    let mut bad_version = data(S_WIFI, 11, 100);
    bad_version[0] = 2;
    let mut bad_type = data(S_WIFI, 12, 100);
    bad_type[1] = 0x7f;
    for bad in [
        &[1u8, 1, 0, 0, 0][..],
        &data(S_WIFI, 11, 20),
        &data(S_WIFI, 11, 35),
        &bad_version,
        &bad_type,
        &data(0, 13, 100),
    ] {
        wifi.send_to(bad, Wifi.gw_addr()).unwrap();
    }
    want.received += 6;
    want.malformed += 6;
    expect(&relay, want, "malformed datagrams");
    assert_quiet(&everyone, "malformed datagrams");

    // Control messages have no controller here, whoever sends them.
    let keepalive = WireHeader::new(msg_type::KEEPALIVE, S_WIFI, 14).to_bytes();
    let hello = WireHeader::new(msg_type::HELLO, 0, 0).to_bytes();
    wifi.send_to(&keepalive, Wifi.gw_addr()).unwrap();
    other_port.send_to(&hello, Wifi.gw_addr()).unwrap();
    want.received += 2;
    want.control += 2;
    expect(&relay, want, "control messages");
    assert_quiet(&everyone, "control messages");

    // A session that is not forwarding, from its own binding and from its exit.
    lte.send_to(&data(S_IDLE, 15, 100), Lte.gw_addr()).unwrap();
    exit.send_to(&data(S_IDLE, 16, 100), gw_exit_addr())
        .unwrap();
    want.received += 2;
    want.not_forwarding += 2;
    expect(&relay, want, "a session that is not forwarding");
    assert_quiet(&everyone, "a session that is not forwarding");

    // The kernel refuses to send toward an exit it has no route to.
    let noroute = bind(&lab.client, noroute_client());
    noroute
        .send_to(&data(S_NOROUTE, 17, 100), Wifi.gw_addr())
        .unwrap();
    want.received += 1;
    want.send_errors += 1;
    expect(&relay, want, "a datagram toward an unroutable exit");
    assert_quiet(&everyone, "a datagram toward an unroutable exit");

    // Still relaying after all that.
    let up = data(S_WIFI, 18, 64);
    wifi.send_to(&up, Wifi.gw_addr()).unwrap();
    expect_datagram(&exit, &up, gw_exit_addr(), "Wi-Fi → exit at the end");
    want.received += 1;
    want.forwarded += 1;
    expect(&relay, want, "the last datagram");
    assert_eq!(relay.stop(), want, "final counters");
    assert_eq!(want.received, want.forwarded + want.dropped());
}

/// `Udp: RcvbufErrors` + `Udp6RcvbufErrors` of a namespace: datagrams its sockets
/// dropped for a full receive queue, the one loss a paced sender cannot rule out.
fn rcvbuf_errors(ns: &Netns) -> u64 {
    let read = |file: &str| {
        ns.run(|| std::fs::read_to_string(format!("/proc/thread-self/net/{file}")))
            .unwrap()
    };
    let snmp = read("snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .unwrap();
    let v4: u64 = values.split_whitespace().nth(i).unwrap().parse().unwrap();
    let v6: u64 = read("snmp6")
        .lines()
        .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    v4 + v6
}

fn big_rcvbuf(s: &UdpSocket) {
    let size: libc::c_int = 64 << 20;
    // SAFETY: a valid fd and an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// 10,000 datagrams from two bindings (one IPv6), with every tenth for an unknown
/// session and every tenth toward an unroutable exit (failing in the middle of send
/// batches), paced by the relay's own count so that no queue overflows: every one is
/// counted, and the exit receives exactly the forwarded ones, unchanged.
#[test]
fn a_burst_is_relayed_completely() {
    require_root!();
    const N: u64 = 10_000;
    const CHUNK: u64 = 200;
    let lab = GatewayLab::build("jb").unwrap();
    let relay = start(&lab);
    let wifi = bind(&lab.client, Wifi.client_addr());
    let lte6 = bind(&lab.client, Lte6.client_addr());
    let noroute = bind(&lab.client, noroute_client());
    let exit = bind(&lab.exit, exit_addr());
    big_rcvbuf(&exit);
    // The client's first datagrams wait for neighbour resolution in a short queue.
    for (sock, gw, sid) in [
        (&wifi, Wifi.gw_addr(), S_WIFI),
        (&lte6, Lte6.gw_addr(), S_LTE6),
    ] {
        let warm_up = data(sid, u64::MAX, 100);
        sock.send_to(&warm_up, gw).unwrap();
        assert_eq!(
            recv(&exit).0,
            warm_up,
            "warm-up from {}",
            sock.local_addr().unwrap()
        );
    }
    let drops_before = rcvbuf_errors(&lab.gw) + rcvbuf_errors(&lab.exit);

    let datagram = |i: u64| -> (&UdpSocket, SocketAddr, Vec<u8>) {
        let len = 36 + (i as usize * 97) % 1300;
        match i % 10 {
            9 => (&wifi, Wifi.gw_addr(), data(S_UNKNOWN, i, len)),
            7 => (&noroute, Wifi.gw_addr(), data(S_NOROUTE, i, len)),
            n if n % 2 == 0 => (&wifi, Wifi.gw_addr(), data(S_WIFI, i, len)),
            _ => (&lte6, Lte6.gw_addr(), data(S_LTE6, i, len)),
        }
    };
    let received = thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut got = HashMap::new();
            let mut buf = vec![0; 2048];
            exit.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            while let Ok((n, from)) = exit.recv_from(&mut buf) {
                assert_eq!(from, gw_exit_addr());
                let counter = WireHeader::parse(&buf[..n]).unwrap().0.counter();
                assert!(
                    got.insert(counter, buf[..n].to_vec()).is_none(),
                    "{counter} twice"
                );
            }
            got
        });
        for first in (0..N).step_by(CHUNK as usize) {
            for i in first..first + CHUNK {
                let (sock, to, bytes) = datagram(i);
                sock.send_to(&bytes, to).unwrap();
            }
            let deadline = Instant::now() + WAIT;
            while relay.stats().received < 2 + first + CHUNK {
                let s = relay.stats();
                assert!(
                    Instant::now() < deadline,
                    "relay stuck at {s:?} after {}",
                    first + CHUNK
                );
                thread::sleep(Duration::from_micros(200));
            }
        }
        reader.join().unwrap()
    });
    let stats = relay.stop();
    let drops = rcvbuf_errors(&lab.gw) + rcvbuf_errors(&lab.exit) - drops_before;
    assert_eq!(
        drops, 0,
        "receive queue overflows in the gateway or the exit"
    );
    let want = RelayStats {
        received: 2 + N,
        forwarded: 2 + N / 10 * 8,
        unknown_session: N / 10,
        send_errors: N / 10,
        ..Default::default()
    };
    assert_eq!(stats, want);
    assert_eq!(
        received.len() as u64 + 2,
        stats.forwarded,
        "datagrams at the exit"
    );
    for (counter, bytes) in &received {
        let (_, _, sent) = datagram(*counter);
        assert_same(bytes, &sent, &format!("datagram {counter}"));
    }
}

/// Configuration errors name the problem; they need no privileges (the socket that
/// cannot be bound fails before any namespace or capability matters).
#[test]
fn start_refuses_bad_configurations_by_name() {
    let cpus = test_cpus();
    let ok = || RelayConfig {
        netns: None,
        cpus: cpus.clone(),
        batch: DEFAULT_BATCH,
    };
    // A free loopback port for the gateway address that can be bound.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lo: SocketAddr = ([127, 0, 0, 1], port).into();
    let entry = |gw_exit: SocketAddr| SessionEntry {
        generation: 1,
        flags: FLAG_FORWARDING,
        client: Endpoint::from(SocketAddr::from(([127, 0, 0, 2], 40000))),
        gw_client: Endpoint::from(lo),
        exit: Endpoint::from(SocketAddr::from(([10, 9, 9, 9], 51821))),
        gw_exit: Endpoint::from(gw_exit),
        ..Default::default()
    };
    let good = entry(lo);
    let one = |e: SessionEntry| HashMap::from([(S_WIFI, e)]);
    let err = |cfg: RelayConfig, table| match UserspaceRelay::start(cfg, table) {
        Ok(_) => panic!("start succeeded"),
        Err(e) => format!("{e:#}"),
    };

    let e = err(
        RelayConfig {
            cpus: vec![],
            ..ok()
        },
        one(good),
    );
    assert!(e.contains("no CPUs"), "{e}");
    let e = err(
        RelayConfig {
            cpus: vec![cpus[0], cpus[0]],
            ..ok()
        },
        one(good),
    );
    assert!(
        e.contains(&format!("CPU {} is listed twice", cpus[0])),
        "{e}"
    );
    let e = err(
        RelayConfig {
            cpus: vec![libc::CPU_SETSIZE as usize - 1],
            ..ok()
        },
        one(good),
    );
    assert!(
        e.contains(&format!("CPU {} is not available", libc::CPU_SETSIZE - 1)),
        "{e}"
    );
    for batch in [0, 1025] {
        let e = err(RelayConfig { batch, ..ok() }, one(good));
        assert!(
            e.contains(&format!("batch size {batch} is outside 1..=1024")),
            "{e}"
        );
    }
    let e = err(ok(), HashMap::new());
    assert!(e.contains("session table is empty"), "{e}");
    let mut zero_port = good;
    zero_port.exit.port_be = 0;
    let e = err(ok(), one(zero_port));
    assert!(e.contains("session 0x5e55000000000001 is invalid"), "{e}");
    let e = err(ok(), HashMap::from([(0, good)]));
    assert!(e.contains("session 0x0000000000000000 is invalid"), "{e}");

    // 203.0.113.0/24 is TEST-NET-3: on no interface of this host.
    let e = err(ok(), one(entry(([203, 0, 113, 77], 51820).into())));
    assert!(
        e.contains("binding a UDP socket to 203.0.113.77:51820"),
        "{e}"
    );
    assert!(e.contains("Cannot assign requested address"), "{e}");
    assert!(
        e.contains(&format!("relay worker on CPU {}", cpus[0])),
        "{e}"
    );
    let e = err(
        RelayConfig {
            netns: Some("/run/netns/jvpn-no-such-namespace".into()),
            ..ok()
        },
        one(good),
    );
    assert!(
        e.contains("entering the network namespace /run/netns/jvpn-no-such-namespace"),
        "{e}"
    );

    // And the same table with a bindable address starts, relays nothing, and stops.
    let relay = UserspaceRelay::start(ok(), one(good)).unwrap();
    assert_eq!(relay.stop(), RelayStats::default());
}
