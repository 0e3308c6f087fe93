//! A transport that changes under a live session (issue 12), with the real gateway,
//! exit and client agent: NAT rebinding on the bound transport (an nftables SNAT in a
//! router namespace whose mapping moves, conntrack flushed), KEEPALIVEs replayed by
//! an attacker, the per-session budget of "not bound" answers, and switches between
//! paths of different MTUs under TCP traffic.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jvpn_ctl::{
    control::api::EventRecord,
    lab::gateway::{
        LabOptions,
        Transport::{Lte, Lte6, Wifi},
    },
    proto::{Body, control::ACK_FROM_BINDING},
    session::{Reason, State},
};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH},
    gwlab::{EXIT_TUN, GwLab},
    require_root,
    tclient::{Reply, TestClient, now_ms},
};

const NAT: LabOptions = LabOptions { nat: true };
/// The lab's keepalive interval (agent::FAST_POLICY).
const KEEPALIVE_MS: f64 = 100.0;

fn reasons(events: &[EventRecord]) -> Vec<Reason> {
    events
        .iter()
        .filter_map(|e| match e {
            EventRecord::StateChange { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// The gateway's TRANSPORT_SWITCH generations, in order.
fn switch_generations(lab: &AgentLab) -> Vec<u32> {
    lab.control()
        .events()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            EventRecord::TransportSwitch { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect()
}

fn rebind_and_wait(lab: &AgentLab, generation: u32) -> std::net::SocketAddr {
    let mapped = lab.lab.rebind().expect("moving the NAT mapping");
    lab.wait_status("the rebinding", Duration::from_secs(3), |s| {
        s.generation > generation && s.bound.as_deref() == Some("wifi") && s.reattach.is_none()
    });
    mapped
}

#[test]
fn nat_rebinding_under_traffic_keeps_the_session() {
    require_root!();
    let lab = AgentLab::start_with("nrb", "", &[Wifi, Lte], FAST_HEALTH, NAT);
    let before = lab.status();
    let id = before.session_id.unwrap().0;
    let stream = lab.stream(Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(500));
    let mapped = rebind_and_wait(&lab, before.generation);
    std::thread::sleep(Duration::from_millis(500));
    let report = stream.finish(Duration::from_millis(200));

    let after = lab.status();
    assert_eq!(after.session_id.unwrap().0, id, "same SessionID");
    assert_eq!(after.sessions_established, 1);
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(after.bound.as_deref(), Some("wifi"), "rebound over Wi-Fi");
    let (state, _, generation, binding) = lab.gw_view(id);
    assert_eq!(state, State::Attached);
    assert_eq!(generation, before.generation + 1);
    assert_eq!(
        binding,
        Some(mapped.to_string()),
        "binding = the new mapping"
    );
    let sw = after.last_switch.expect("a switch record");
    assert_eq!(sw.cause, "address changed");
    assert_eq!((sw.from.as_str(), sw.to.as_str()), ("wifi", "wifi"));
    assert!(reasons(&lab.client_events()).contains(&Reason::AddressChanged));
    let gw_events = lab.control().events().unwrap();
    assert!(reasons(&gw_events).contains(&Reason::AddressChanged));
    assert!(after.counters.rebinds >= 1 && after.counters.not_bound_signals >= 1);

    // One keepalive interval for the signal, then one round trip of exchange; a
    // margin for a loaded CI machine.
    let gap = report.gaps.first().map_or(0.0, |g| g.1);
    eprintln!(
        "rebinding: interruption {gap:.0} ms; {} sent, {} echoed",
        report.sent, report.echoed
    );
    assert!(
        gap <= KEEPALIVE_MS + 150.0,
        "interruption {gap} ms (gaps {:?})",
        report.gaps
    );
    assert_eq!(report.duplicate_echoes + lab.echo.counts().1, 0);
}

#[test]
fn nat_rebinding_every_2s_for_30s() {
    require_root!();
    // Fifteen rebindings in half a minute: above the default switch budget, which
    // counts rebindings too (docs/protocol.md).
    let lab = AgentLab::start_with(
        "nrr",
        "max_switches_per_minute = 40\n",
        &[Wifi, Lte],
        FAST_HEALTH,
        NAT,
    );
    let first = lab.status();
    let id = first.session_id.unwrap().0;
    let stream = lab.stream(Duration::from_millis(5));
    let mut generation = first.generation;
    let mut recoveries = Vec::new();
    let start = Instant::now();
    for k in 1..=15u32 {
        let due = start + Duration::from_secs(2 * u64::from(k));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let mapped = rebind_and_wait(&lab, generation);
        recoveries.push(t.elapsed().as_secs_f64() * 1000.0);
        let s = lab.status();
        assert_eq!(s.session_id.unwrap().0, id, "rebinding {k}: same SessionID");
        assert_eq!(s.generation, generation + 1, "rebinding {k}");
        generation = s.generation;
        assert_eq!(lab.gw_view(id).3, Some(mapped.to_string()), "rebinding {k}");
    }
    let report = stream.finish(Duration::from_millis(200));
    assert_eq!(
        report.duplicate_echoes + lab.echo.counts().1,
        0,
        "no duplicates"
    );
    let gens = switch_generations(&lab);
    assert_eq!(
        gens,
        (1..=16).collect::<Vec<_>>(),
        "consecutive generations"
    );
    recoveries.sort_by(f64::total_cmp);
    eprintln!(
        "15 rebindings: recovery min {:.0} / median {:.0} / max {:.0} ms; {} of {} echoed",
        recoveries[0], recoveries[7], recoveries[14], report.echoed, report.sent
    );
    assert_eq!(lab.status().sessions_established, 1);
}

/// A rebinding while LTE is healthy too: the client stays on Wi-Fi (not dead, and
/// preferred) rather than falling over to LTE.
#[test]
fn rebinding_with_another_transport_available_stays() {
    require_root!();
    let lab = AgentLab::start_with("nra", "", &[Wifi, Lte], FAST_HEALTH, NAT);
    lab.wait_status("LTE healthy", Duration::from_secs(3), |s| {
        s.transports
            .iter()
            .all(|t| t.health == jvpn_ctl::client::health::Status::Healthy)
    });
    let before = lab.status();
    rebind_and_wait(&lab, before.generation);
    let s = lab.status();
    assert_eq!(s.bound.as_deref(), Some("wifi"));
    assert_eq!(s.switches, before.switches + 1, "one switch: the rebinding");
}

/// A captured KEEPALIVE replayed from another address gets no answer and moves
/// nothing; fresh KEEPALIVEs from an address that is not the binding are answered
/// "not bound" only within the per-session budget.
#[test]
fn replayed_keepalives_and_the_not_bound_budget() {
    require_root!();
    let lab = GwLab::start("nrk", "keepalive_interval_ms = 1000\n");
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    let ka = c.control(Body::Keepalive {
        ts_ms: now_ms(),
        pad: 0,
    });
    c.send_raw(Wifi, &ka);
    match c.recv(Wifi, Duration::from_secs(2)) {
        Reply::Control(m) => match m.body {
            Body::KeepaliveAck {
                generation, flags, ..
            } => {
                assert_eq!(flags & ACK_FROM_BINDING, ACK_FROM_BINDING);
                assert_eq!(generation, 1);
            }
            b => panic!("not a KEEPALIVE_ACK: {b:?}"),
        },
        r => panic!("no answer from the binding: {r:?}"),
    }
    let before = lab.session(id).unwrap();
    // The replay, from LTE (another address): already seen, so silence.
    c.send_raw(Lte, &ka);
    assert_eq!(c.recv(Lte, Duration::from_millis(300)), Reply::Silence);
    let after = lab.session(id).unwrap();
    assert_eq!(
        (after.version, after.generation, after.binding.clone()),
        (before.version, before.generation, before.binding.clone()),
        "a replay moves nothing"
    );
    assert!(
        lab.stats()
            .malformed
            .get("keepalive_rejected")
            .copied()
            .unwrap_or(0)
            >= 1
    );

    // 64 fresh KEEPALIVEs from LTE at once: answered "not bound" up to the budget.
    for _ in 0..64 {
        let m = c.control(Body::Keepalive {
            ts_ms: now_ms(),
            pad: 0,
        });
        c.send_raw(Lte, &m);
    }
    let mut answered = 0;
    while let Reply::Control(m) = c.recv(Lte, Duration::from_millis(300)) {
        if let Body::KeepaliveAck { flags, .. } = m.body {
            assert_eq!(flags & ACK_FROM_BINDING, 0, "LTE is not the binding");
            answered += 1;
        }
    }
    let stats = lab.stats();
    let limited = stats
        .keepalives
        .get("not_bound_limited")
        .copied()
        .unwrap_or(0);
    eprintln!("64 KEEPALIVEs from a non-bound address: {answered} answered, {limited} not");
    assert!((16..=20).contains(&answered), "{answered} answered");
    assert_eq!(answered + limited, 64);
    assert_eq!(lab.session(id).unwrap().binding, before.binding);
}

/// Kills the iperf3 server with the test.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf3(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "iperf3"]).args(args);
    c
}

/// Per 0.5 s interval of an iperf3 JSON report: bits per second.
fn intervals(json: &str) -> Vec<f64> {
    let v: serde_json::Value = serde_json::from_str(json).expect("iperf3 JSON");
    v["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
        .collect()
}

/// TCP through the tunnel while the session moves Wi-Fi (1500) → LTE (1400) →
/// LTE over IPv6 (1280) → Wi-Fi: the tunnel MTU follows each path, TCP never stops
/// for a whole interval, and no outer fragment is sent (the relay counts none).
#[test]
fn switches_across_mtus_under_tcp_upload() {
    require_root!();
    tcp_across_mtus("nmu", false);
}

/// The same, downloading: the connection is opened on Wi-Fi, so the exit-side
/// sender's segments are sized for it; after the switch to LTE only the exit's
/// per-session tunnel MTU (the client's notice) and its ICMP "too big" keep them
/// flowing.
#[test]
fn switches_across_mtus_under_tcp_download() {
    require_root!();
    tcp_across_mtus("nmd", true);
}

fn tcp_across_mtus(tag: &str, download: bool) {
    // No automatic return to Wi-Fi: the test moves the session itself. The bulk flow
    // loads both CPUs of a CI machine: give each exchange time rather than let a late
    // ACK turn a move into a retry.
    let health = "[health]\nreturn_after_ms = 600000\nattempt_timeout_ms = 2000\n";
    let lab = AgentLab::start(tag, "", &[Wifi, Lte, Lte6], health);
    let settled = |name: &'static str| {
        move |s: &jvpn_ctl::client::ClientStatus| {
            s.transports
                .iter()
                .all(|t| t.name != name || t.path_mtu_settled)
        }
    };
    for t in ["wifi", "lte", "lte6"] {
        lab.wait_status("path MTUs settled", Duration::from_secs(5), settled(t));
    }
    let s = lab.status();
    let pmtu = |n: &str| s.transports.iter().find(|t| t.name == n).unwrap().path_mtu;
    assert_eq!(
        (pmtu("wifi"), pmtu("lte"), pmtu("lte6")),
        (1500, 1400, 1280)
    );
    assert_eq!(s.tunnel_mtu, 1400, "Wi-Fi: the configured 1400 caps 1436");

    let _server = Server(
        iperf3(&lab.lab.exit.name, &["-s", "-1", "-B", EXIT_TUN])
            .stdout(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    // Paced: the point is TCP across MTU changes, not saturating a debug build.
    let mut args = vec!["-c", EXIT_TUN, "-t", "8", "-i", "0.5", "-J", "-b", "300M"];
    if download {
        args.push("-R");
    }
    let client = iperf3(&lab.lab.client.name, &args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("iperf3 client");
    let drops_before = lab.stats().xdp_drops.get("fragment").copied().unwrap_or(0);
    let mut mtus = Vec::new();
    for (t, want) in [(Lte, 1336), (Lte6, 1196), (Wifi, 1400)] {
        std::thread::sleep(Duration::from_secs(2));
        lab.move_to(t);
        let s = lab.wait_bound(t, Duration::from_secs(3));
        assert_eq!(s.tunnel_mtu, want, "tunnel MTU on {}", t.name());
        mtus.push(s.tunnel_mtu);
    }
    let out = client.wait_with_output().expect("iperf3 client");
    assert!(out.status.success(), "iperf3 failed");
    let bps = intervals(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "{}: tunnel MTUs {mtus:?}; TCP Mbit/s per 0.5 s: {:?}",
        if download { "download" } else { "upload" },
        bps.iter().map(|b| (b / 1e6).round()).collect::<Vec<_>>()
    );
    assert!(bps.len() >= 15, "{} intervals", bps.len());
    assert!(
        bps.iter().all(|&b| b > 0.0),
        "TCP stalled in an interval: {bps:?}"
    );
    let drops = lab.stats().xdp_drops.get("fragment").copied().unwrap_or(0);
    assert_eq!(drops, drops_before, "outer fragments reached the relay");
    assert_eq!(
        lab.status().counters.emsgsize,
        0,
        "nothing sent over a path MTU"
    );
}

/// The path shrinks in the middle: the NAT router's uplink towards the gateway drops
/// to MTU 1300 while TCP runs over Wi-Fi. The router's ICMP "fragmentation needed"
/// reaches the client's kernel, the next large send fails with EMSGSIZE, and the
/// agent lowers the path and tunnel MTU (1300 − 64) and tells the exit; TCP keeps
/// flowing.
#[test]
fn a_smaller_mtu_in_the_middle_is_learned_from_icmp() {
    require_root!();
    let lab = AgentLab::start_with("nmi", "", &[Wifi, Lte], FAST_HEALTH, NAT);
    lab.wait_status("Wi-Fi path MTU settled", Duration::from_secs(5), |s| {
        s.transports[0].path_mtu == 1500 && s.tunnel_mtu == 1400
    });
    let _server = Server(
        iperf3(&lab.lab.exit.name, &["-s", "-1", "-B", EXIT_TUN])
            .stdout(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = iperf3(
        &lab.lab.client.name,
        &["-c", EXIT_TUN, "-t", "6", "-i", "0.5", "-J"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("iperf3 client");
    std::thread::sleep(Duration::from_secs(2));
    let router = &lab.lab.nat.as_ref().expect("the NAT lab").router;
    router
        .ip(&["link", "set", "r-g", "mtu", "1300"])
        .expect("router MTU");
    lab.lab
        .gw
        .ip(&["link", "set", "g-wifi", "mtu", "1300"])
        .expect("gateway MTU");
    let changed = Instant::now();
    let s = lab.wait_status("the tunnel MTU to follow", Duration::from_secs(3), |s| {
        s.tunnel_mtu == 1300 - 64
    });
    let learned = changed.elapsed();
    assert_eq!(s.transports[0].path_mtu, 1300);
    assert_eq!(s.bound.as_deref(), Some("wifi"), "no switch needed");
    let out = client.wait_with_output().expect("iperf3 client");
    assert!(out.status.success(), "iperf3 failed");
    let bps = intervals(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "path MTU 1500 → 1300 learned in {learned:?} (EMSGSIZE {}); TCP Mbit/s per 0.5 s: {:?}",
        s.counters.emsgsize,
        bps.iter().map(|b| (b / 1e6).round()).collect::<Vec<_>>()
    );
    assert!(
        s.counters.emsgsize >= 1,
        "learned from the kernel, not by probing"
    );
    // Within a second of the change TCP moves again, and it keeps moving.
    assert!(bps.len() >= 11, "{} intervals", bps.len());
    assert!(
        bps[6..].iter().all(|&b| b > 0.0),
        "TCP did not recover: {bps:?}"
    );
}
