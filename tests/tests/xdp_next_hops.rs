//! The next-hop table follows the network while traffic flows (docs/datapath.md,
//! "Next hops"): a neighbour's MAC changed, the route to the exit replaced by one
//! through a router, the egress link taken down and up. Uplink DATA runs through
//! the relay the whole time and is captured where it leaves the gateway. After each
//! change has been processed, no frame leaves with the old next hop; frames are lost
//! only while the link is down (counted) or before the change was processed.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use jvpn_common::{counters, wire::msg_type};
use jvpn_ctl::{
    bench::netif::format_mac,
    datapath::Datapath,
    lab::{
        capture::Capture,
        gateway::{GatewayLab, Transport::Wifi, exit_addr, session_entry},
    },
};
use jvpn_tests::{frames::jvpn, require_root};

const SID: u64 = 0x4e48_0000_0000_0017;

fn exit_hop_mac(dp: &Datapath) -> Option<[u8; 6]> {
    let e = dp.session(SID).unwrap()?;
    dp.next_hop(e.exit_hop).map(|h| h.dmac)
}

#[test]
fn follows_neighbour_route_and_link_changes_under_traffic() {
    require_root!();
    let lab = GatewayLab::build("jh").unwrap();
    let (mut dp, _) = lab.relay(64).unwrap();
    lab.gw.run(|| dp.enable_next_hops()).unwrap();
    dp.insert_session(SID, &session_entry(Wifi, 1)).unwrap();
    let exit_ip = exit_addr().ip().to_string();
    let real_mac = lab.exit.mac("x-gw").unwrap();
    assert_eq!(exit_hop_mac(&dp), Some(real_mac), "the exit's neighbour");
    // What an operator sees: the valid entries, with the exit's MAC.
    let out = std::process::Command::new(jvpn_tests::gwlab::jvpn_ctl_bin())
        .args(["datapath", "status", "--pin-dir"])
        .arg(&lab.pins.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("next hops: 2 valid") && text.contains(&format_mac(&real_mac)),
        "{text}"
    );

    let cap = Capture::start(&lab.exit, "x-gw").unwrap();
    let sock = lab
        .client
        .run(|| std::net::UdpSocket::bind(Wifi.client_addr()))
        .unwrap();
    let gw = Wifi.gw_addr();
    let (stop, seq) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sender = {
        let (stop, seq) = (stop.clone(), seq.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let n = seq.load(Ordering::SeqCst);
                sock.send_to(&jvpn(msg_type::DATA, SID, n, 64), gw).unwrap();
                seq.store(n + 1, Ordering::SeqCst);
                thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let wait_sent = |n: u64| {
        let target = seq.load(Ordering::SeqCst) + n;
        while seq.load(Ordering::SeqCst) < target {
            thread::sleep(Duration::from_millis(1));
        }
    };
    let drops0 = dp.drops().unwrap();
    wait_sent(300);

    // (first counter sent after the change was processed, its next hop's MAC)
    let mut phases: Vec<(&str, u64, u64, Option<[u8; 6]>)> = Vec::new();
    let mut change = |dp: &mut Datapath,
                      name: &'static str,
                      cmds: &[&[&str]],
                      done: &dyn Fn(&Datapath) -> bool,
                      mac: Option<[u8; 6]>| {
        let before = seq.load(Ordering::SeqCst);
        for c in cmds {
            lab.gw.ip(c).unwrap();
        }
        jvpn_tests::settle_next_hops(dp, name, done);
        // The frame numbered `seq` may have been sent (and relayed) just before the
        // change was processed: the sender stores `seq + 1` only after its send
        // returned. Every later one was sent after.
        phases.push((name, before, seq.load(Ordering::SeqCst) + 1, mac));
        wait_sent(300);
    };

    let new_mac = [2, 0, 0, 0x17, 0, 1];
    change(
        &mut dp,
        "neighbour MAC",
        &[&[
            "neigh",
            "replace",
            &exit_ip,
            "lladdr",
            &format_mac(&new_mac),
            "nud",
            "permanent",
            "dev",
            "g-exit",
        ]],
        &|dp| exit_hop_mac(dp) == Some(new_mac),
        Some(new_mac),
    );
    let router_mac = [2, 0, 0, 0x17, 0, 2];
    let router = "10.77.9.254";
    change(
        &mut dp,
        "route via a router",
        &[
            &[
                "neigh",
                "replace",
                router,
                "lladdr",
                &format_mac(&router_mac),
                "nud",
                "permanent",
                "dev",
                "g-exit",
            ],
            &[
                "route",
                "replace",
                &format!("{exit_ip}/32"),
                "via",
                router,
                "dev",
                "g-exit",
            ],
        ],
        &|dp| exit_hop_mac(dp) == Some(router_mac),
        Some(router_mac),
    );
    change(
        &mut dp,
        "link down",
        &[&["link", "set", "g-exit", "down"]],
        &|dp| exit_hop_mac(dp).is_none(),
        None,
    );
    // Up again: the /32 route and the neighbours went with the link; the exit is
    // resolved again (a managed neighbour: the kernel asks by ARP by itself).
    change(
        &mut dp,
        "link up",
        &[&["link", "set", "g-exit", "up"]],
        &|dp| exit_hop_mac(dp) == Some(real_mac),
        Some(real_mac),
    );
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let sent = seq.load(Ordering::SeqCst);
    thread::sleep(Duration::from_millis(100));
    let frames = cap.frames();
    drop(cap);
    let drops = dp.drops().unwrap();
    let grew = |r: u32| drops[r as usize] - drops0[r as usize];

    // Every frame that left, by counter: its destination MAC.
    let mut seen: HashMap<u64, [u8; 6]> = HashMap::new();
    for f in &frames {
        let Some(p) = f.payload() else { continue };
        let Ok((h, _)) = jvpn_common::wire::WireHeader::parse(p) else {
            continue;
        };
        if h.session_id() == SID {
            seen.insert(h.counter(), f.bytes[..6].try_into().unwrap());
        }
    }
    eprintln!(
        "sent {sent}, left the gateway {}; phases {phases:?}; slow path {}, fib_failure {}, neigh_unresolved {}",
        seen.len(),
        grew(counters::NEXT_HOP_FIB),
        grew(counters::FIB_FAILURE),
        grew(counters::NEIGH_UNRESOLVED),
    );
    // After each change was processed, until the next one began: the new next hop only.
    for (i, (name, _, processed, mac)) in phases.iter().enumerate() {
        let until = phases.get(i + 1).map_or(sent, |p| p.1);
        for c in *processed..until {
            match (mac, seen.get(&c)) {
                (Some(m), Some(got)) => {
                    assert_eq!(got, m, "{name}: frame {c} left by an old next hop")
                }
                (Some(_), None) => panic!("{name}: frame {c} lost after the change was processed"),
                (None, Some(got)) => {
                    panic!("{name}: frame {c} left (to {got:02x?}) with the link down")
                }
                (None, None) => {}
            }
        }
    }
    // Loss: only around the link going down (before it was processed, and while it
    // was down: those are counted), never around the neighbour or route changes.
    let (down_from, up_done) = (phases[2].1, phases[3].2);
    let lost: Vec<u64> = (0..sent).filter(|c| !seen.contains_key(c)).collect();
    assert!(
        lost.iter().all(|c| (down_from..up_done).contains(c)),
        "frames lost outside the link's outage: {:?}",
        lost.iter()
            .filter(|c| !(down_from..up_done).contains(*c))
            .take(10)
            .collect::<Vec<_>>()
    );
    let down_window = phases[2].2 - phases[2].1;
    let counted = grew(counters::FIB_FAILURE) + grew(counters::NEIGH_UNRESOLVED);
    assert!(
        lost.len() as u64 <= counted + down_window,
        "{} lost, {counted} counted, {down_window} sent before the link-down was processed",
        lost.len()
    );
    assert!(counted > 0, "the outage's frames were counted");
}
