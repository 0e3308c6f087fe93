//! The relay on real veth pairs across three namespaces (client, gateway, exit), native
//! XDP, real UDP sockets: the receiving kernels accept what the relay sends, and a
//! binding swap under load is clean (no packet to the old binding after the swap
//! returned, old-binding packets dropped and counted, nothing delivered twice).

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use jvpn_common::{
    counters,
    wire::{WireHeader, msg_type},
};
use jvpn_ctl::{
    datapath::{AttachMode, Datapath, DatapathConfig, PASS_PROGRAM},
    lab::gateway::{
        GW_DEVS, GatewayLab, PORT,
        Transport::{Lte, Wifi},
        exit_addr, gw_exit_addr, session_entry,
    },
};
use jvpn_tests::{
    frames::jvpn,
    netns::{Netns, PinDir},
    require_root,
};

const SID: u64 = 0x5e55_1011_2233_4455;

fn lab() -> GatewayLab {
    GatewayLab::build("jn").unwrap()
}

/// `Udp: InCsumErrors` of the namespace: datagrams its kernel refused for their checksum.
fn udp_csum_errors(ns: &Netns) -> u64 {
    let out = ns.exec("cat", &["/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let field = |n: &str| {
        let i = names.split_whitespace().position(|x| x == n).unwrap();
        values
            .split_whitespace()
            .nth(i)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    field("InCsumErrors")
}

fn bind(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    })
}

/// Receives until `stop` and a quiet read; returns (counter, source) of DATA packets.
fn drain(
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(u64, SocketAddr, Vec<u8>)>> {
    thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let (h, _) = WireHeader::parse(&buf[..n]).expect("a jvpn packet");
                    assert_eq!(h.session_id(), SID);
                    got.push((h.counter(), from, buf[..n].to_vec()));
                }
                Err(_) if stop.load(Ordering::SeqCst) => return got,
                Err(_) => {}
            }
        }
    })
}

#[test]
fn relays_between_namespaces_and_swaps_binding_under_load() {
    require_root!();
    let lab = lab();
    // A native redirect into a veth is delivered only if the peer runs XDP too:
    // `relay` puts xdp_pass on them.
    let (mut dp, modes) = lab.relay(1024).unwrap();
    assert_eq!(modes, [AttachMode::Native; 3], "{GW_DEVS:?}");
    dp.insert_session(SID, &session_entry(Wifi, 1)).unwrap();

    let wifi = bind(&lab.client, Wifi.client_addr());
    let lte = bind(&lab.client, Lte.client_addr());
    let exit = bind(&lab.exit, exit_addr());
    let gw_wifi = Wifi.gw_addr();
    let gw_lte = Lte.gw_addr();
    let gw_exit = gw_exit_addr();

    // 1. One packet each way, checked byte for byte at the receiving socket.
    let up = jvpn(msg_type::DATA, SID, 1, 200);
    wifi.send_to(&up, gw_wifi).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = exit
        .recv_from(&mut buf)
        .expect("uplink packet reaches the exit");
    assert_eq!((&buf[..n], from), (&up[..], gw_exit));
    let down = jvpn(msg_type::DATA, SID, 2, 300);
    exit.send_to(&down, gw_exit).unwrap();
    let (n, from) = wifi
        .recv_from(&mut buf)
        .expect("downlink packet reaches the client");
    assert_eq!((&buf[..n], from), (&down[..], gw_wifi));

    // 2. Continuous traffic both ways from both client transports, then the swap.
    // (The counter baseline is taken before any sender starts.)
    let stale_before = dp.drops().unwrap()[counters::STALE_BINDING as usize];
    let stop = Arc::new(AtomicBool::new(false));
    let swapped = Arc::new(AtomicBool::new(false));
    let rx_exit = drain(exit.try_clone().unwrap(), stop.clone());
    let rx_wifi = drain(wifi.try_clone().unwrap(), stop.clone());
    let rx_lte = drain(lte.try_clone().unwrap(), stop.clone());
    // Each sender records the first counter it sent after seeing `swapped`.
    let sender = |sock: UdpSocket, to: SocketAddr, base: u64| {
        let (stop, swapped) = (stop.clone(), swapped.clone());
        let first_after = Arc::new(AtomicU64::new(u64::MAX));
        let fa = first_after.clone();
        let h = thread::spawn(move || {
            let mut seq = base;
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..8 {
                    if swapped.load(Ordering::SeqCst) && fa.load(Ordering::SeqCst) == u64::MAX {
                        fa.store(seq, Ordering::SeqCst);
                    }
                    sock.send_to(&jvpn(msg_type::DATA, SID, seq, 64), to)
                        .unwrap();
                    seq += 1;
                }
                thread::sleep(Duration::from_millis(1));
            }
            seq - base
        });
        (h, first_after)
    };
    const WIFI: u64 = 1 << 40;
    const LTE: u64 = 2 << 40;
    const EXIT: u64 = 3 << 40;
    let (tx_wifi, wifi_after) = sender(wifi.try_clone().unwrap(), gw_wifi, WIFI);
    let (tx_lte, lte_after) = sender(lte.try_clone().unwrap(), gw_lte, LTE);
    let (tx_exit, exit_after) = sender(exit.try_clone().unwrap(), gw_exit, EXIT);

    thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let generation = dp.replace_session(SID, &session_entry(Lte, 2)).unwrap();
    let swap_us = t.elapsed().as_micros();
    swapped.store(true, Ordering::SeqCst);
    assert_eq!(generation, 2);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let sent = [
        tx_wifi.join().unwrap(),
        tx_lte.join().unwrap(),
        tx_exit.join().unwrap(),
    ];
    let (got_exit, got_wifi, got_lte) = (
        rx_exit.join().unwrap(),
        rx_wifi.join().unwrap(),
        rx_lte.join().unwrap(),
    );
    let stale = dp.drops().unwrap()[counters::STALE_BINDING as usize] - stale_before;
    let (wifi_after, lte_after, exit_after) = (
        wifi_after.load(Ordering::SeqCst),
        lte_after.load(Ordering::SeqCst),
        exit_after.load(Ordering::SeqCst),
    );
    eprintln!(
        "sent wifi/lte/exit {sent:?}; exit got {}, client got wifi {} lte {}; stale drops {stale}; swap took {swap_us} µs",
        got_exit.len(),
        got_wifi.len(),
        got_lte.len()
    );
    assert!(
        sent.iter().all(|&n| n > 100),
        "traffic flowed before and after the swap"
    );

    // Downlink: after the swap returned, nothing reaches the old binding; everything
    // the exit sent arrives exactly once, at one binding or the other.
    assert!(
        got_wifi
            .iter()
            .all(|(c, from, _)| *c < exit_after && *from == gw_wifi),
        "a packet reached the old binding after the swap"
    );
    assert!(got_lte.iter().all(|(_, from, _)| *from == gw_lte));
    let down: Vec<u64> = got_wifi.iter().chain(&got_lte).map(|x| x.0).collect();
    let unique_down: HashSet<u64> = down.iter().copied().collect();
    assert_eq!(
        unique_down.len(),
        down.len(),
        "a downlink packet was delivered twice"
    );
    assert_eq!(
        down.len() as u64,
        sent[2],
        "every downlink packet delivered once"
    );
    assert!(
        got_lte.iter().any(|(c, ..)| *c >= exit_after),
        "downlink moved to the new binding"
    );

    // Uplink: old-binding packets sent after the swap never reach the exit; everything
    // not delivered was dropped as stale_binding; nothing twice.
    assert!(got_exit.iter().all(|(_, from, _)| *from == gw_exit));
    let up: Vec<u64> = got_exit.iter().map(|x| x.0).collect();
    let unique_up: HashSet<u64> = up.iter().copied().collect();
    assert_eq!(
        unique_up.len(),
        up.len(),
        "an uplink packet was delivered twice"
    );
    assert!(
        !up.iter()
            .any(|&c| (WIFI..LTE).contains(&c) && c >= wifi_after),
        "old binding reached the exit after the swap"
    );
    assert!(
        up.iter()
            .any(|&c| (LTE..EXIT).contains(&c) && c >= lte_after),
        "new binding reaches the exit"
    );
    assert_eq!(
        up.len() as u64 + stale,
        sent[0] + sent[1],
        "every uplink packet was delivered or counted stale"
    );

    // The receiving kernels validated every checksum.
    for ns in [&lab.client, &lab.exit] {
        let csum_errors = udp_csum_errors(ns);
        assert_eq!(csum_errors, 0, "UDP checksum errors in {}", ns.name);
    }
    let s = dp.session_stats(SID).unwrap().unwrap();
    assert_eq!(s.up_packets, up.len() as u64 + 1);
    assert_eq!(s.down_packets, down.len() as u64 + 1);
    assert_eq!(s.stale_drops, stale);

    // Removing the session stops the relay: the next packet is dropped as unknown.
    dp.remove_session(SID).unwrap();
    let before = dp.drops().unwrap()[counters::UNKNOWN_SESSION as usize];
    lte.send_to(&jvpn(msg_type::DATA, SID, 9, 64), gw_lte)
        .unwrap();
    assert!(exit.recv_from(&mut buf).is_err(), "no relay after removal");
    assert_eq!(
        dp.drops().unwrap()[counters::UNKNOWN_SESSION as usize],
        before + 1
    );
}

#[test]
fn keeps_forwarding_while_the_controller_restarts() {
    require_root!();
    let lab = lab();
    let cfg = DatapathConfig {
        port: PORT,
        max_sessions: 1024,
        pin_dir: lab.pins.0.clone(),
        debug_log: false,
    };
    let mut first = lab.gw.run(|| {
        let mut dp = Datapath::load(cfg.clone()).unwrap();
        for dev in ["g-wifi", "g-exit"] {
            dp.attach(dev, AttachMode::Native).unwrap();
        }
        dp
    });
    for (ns, dev) in [(&lab.client, "c-wifi"), (&lab.exit, "x-gw")] {
        ns.run(|| {
            first
                .attach_unpinned(PASS_PROGRAM, dev, AttachMode::Native)
                .unwrap()
        });
    }
    first.insert_session(SID, &session_entry(Wifi, 1)).unwrap();
    let wifi = bind(&lab.client, Wifi.client_addr());
    let exit = bind(&lab.exit, exit_addr());
    let gw_wifi = Wifi.gw_addr();
    let mut buf = [0u8; 2048];

    // The controller exits: its program handle and map fds close, the pins remain.
    // The peers' pass programs belonged to it, so re-attach them from a holder that
    // stays (a native redirect into a veth needs one on the receiving side).
    drop(first);
    let holder_pins = PinDir::new("ns2");
    let mut holder = lab.gw.run(|| {
        Datapath::load(DatapathConfig {
            pin_dir: holder_pins.0.clone(),
            ..cfg.clone()
        })
        .unwrap()
    });
    for (ns, dev) in [(&lab.client, "c-wifi"), (&lab.exit, "x-gw")] {
        ns.run(|| {
            holder
                .attach_unpinned(PASS_PROGRAM, dev, AttachMode::Native)
                .unwrap()
        });
    }
    let p = jvpn(msg_type::DATA, SID, 7, 80);
    wifi.send_to(&p, gw_wifi).unwrap();
    let (n, _) = exit
        .recv_from(&mut buf)
        .expect("relayed with no controller running");
    assert_eq!(&buf[..n], &p[..]);

    // A new controller finds the session and its counters, and takes over the link.
    let mut second = lab.gw.run(|| {
        let mut dp = Datapath::load(cfg.clone()).unwrap();
        dp.attach("g-wifi", AttachMode::Native).unwrap();
        dp
    });
    assert_eq!(second.session(SID).unwrap().map(|e| e.generation), Some(1));
    assert_eq!(second.session_stats(SID).unwrap().unwrap().up_packets, 1);
    let p = jvpn(msg_type::DATA, SID, 8, 80);
    wifi.send_to(&p, gw_wifi).unwrap();
    let (n, _) = exit.recv_from(&mut buf).expect("relayed after the restart");
    assert_eq!(&buf[..n], &p[..]);
    assert_eq!(second.session_stats(SID).unwrap().unwrap().up_packets, 2);
    // It also knows which statistics slot the kept session holds: a new session gets
    // another one, from zero.
    let other = SID + 1;
    second
        .insert_session(other, &session_entry(Wifi, 1))
        .unwrap();
    let slot = |dp: &Datapath, id| dp.session(id).unwrap().unwrap().stats_slot;
    assert_ne!(slot(&second, other), slot(&second, SID));
    assert_eq!(
        second.session_stats(other).unwrap().unwrap(),
        Default::default()
    );
    assert_eq!(second.session_stats(SID).unwrap().unwrap().up_packets, 2);
    second.remove_session(other).unwrap();
    second.remove_session(SID).unwrap();
    drop(second);

    // A build with another layout refuses the pins instead of corrupting them.
    let err = lab
        .gw
        .run(|| {
            Datapath::load(DatapathConfig {
                max_sessions: 2048,
                ..cfg.clone()
            })
            .map(drop)
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("max entries 1024, expected 2048"), "{err}");
    drop(holder);
}
