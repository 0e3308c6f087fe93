//! What the kernel says about a link, and what the measurements say about its
//! quality (issue 15), with the real agent, gateway and exit: a link that goes down
//! or loses its address is left at once (not after the loss TTL), a new address on
//! an interface the transport follows is taken up, a link that comes back is probed
//! and returned to per policy, a lossy link gives one move and no flapping, light
//! loss and the agent's own saturating upload change nothing.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jvpn_ctl::{
    client::ClientStatus,
    control::api::EventRecord,
    lab::gateway::{
        LabOptions,
        Transport::{Lte, Wifi},
    },
    session::State,
};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH},
    gwlab::EXIT_TUN,
    require_root,
};

const TICK: Duration = Duration::from_millis(5);
/// The lab's loss TTL (agent::FAST_POLICY).
const LOSS_TTL_MS: f64 = 500.0;

/// The client's events from `from` on, as (kind, detail) lines: health changes
/// (`TRANSPORT_HEALTH wifi dead link_down`), state changes (`STATE_CHANGE
/// RECOVERING`) and switches.
fn timeline(events: &[EventRecord], from_ms: u64) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.ts_ms() >= from_ms)
        .filter_map(|e| match e {
            EventRecord::TransportHealth {
                transport,
                health,
                cause,
                ..
            } => Some(format!("TRANSPORT_HEALTH {transport} {health} {cause}")),
            EventRecord::StateChange { to, .. } => Some(format!("STATE_CHANGE {}", to.name())),
            EventRecord::TransportSwitch { new, .. } => Some(format!("TRANSPORT_SWITCH {new}")),
            _ => None,
        })
        .collect()
}

fn position(lines: &[String], what: &str) -> usize {
    lines
        .iter()
        .position(|l| l == what)
        .unwrap_or_else(|| panic!("no {what:?} in {lines:#?}"))
}

fn state_changes(lab: &AgentLab, from_ms: u64) -> usize {
    timeline(&lab.client_events(), from_ms)
        .iter()
        .filter(|l| l.starts_with("STATE_CHANGE"))
        .count()
}

/// No state change and no switch in `lines`.
fn assert_quiet(lines: &[String]) {
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("STATE_CHANGE") || l.starts_with("TRANSPORT_SWITCH")),
        "{lines:#?}"
    );
}

fn now_ms() -> u64 {
    jvpn_ctl::control::api::unix_ms()
}

fn transport<'a>(s: &'a ClientStatus, name: &str) -> &'a jvpn_ctl::client::TransportStatus {
    s.transports.iter().find(|t| t.name == name).expect(name)
}

/// A kernel signal on the bound Wi-Fi (`cut`) → the session is on LTE with that
/// trigger, the health event comes before the recovery, and the tunnel's
/// interruption is well under the loss TTL. Returns the interruption in ms.
fn cut_moves_at_once(tag: &str, cut: impl FnOnce(&AgentLab), trigger: &str) -> f64 {
    let lab = AgentLab::start(tag, "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    lab.wait_status("LTE probed", Duration::from_secs(3), |s| {
        transport(s, "lte").health == jvpn_ctl::client::health::Status::Healthy
    });
    let stream = lab.stream(TICK);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = now_ms();
    cut(&lab);
    let s = lab.wait_bound(Lte, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let r = stream.finish(Duration::from_millis(300));
    assert_eq!(s.session_id.map(|i| i.0), Some(id), "same session");
    let sw = s.last_switch.expect("a switch");
    assert_eq!(sw.trigger, trigger, "{sw:?}");
    let lines = timeline(&lab.client_events(), t0);
    let dead = position(&lines, &format!("TRANSPORT_HEALTH wifi dead {trigger}"));
    let recovering = position(&lines, "STATE_CHANGE RECOVERING");
    assert!(dead < recovering, "{lines:#?}");
    // Gaps shorter than 5 stream intervals are not reported: 0 means under 25 ms.
    let worst = r.gaps.first().map_or(0.0, |g| g.1);
    eprintln!("{trigger}: interruption {worst:.1} ms (stream), client view {sw:?}");
    assert!(worst < LOSS_TTL_MS, "interruption {worst:.0} ms: {r:?}");
    assert!(r.echoed + 100 >= r.sent, "traffic continued: {r:?}");
    worst
}

#[test]
fn link_down_moves_at_once() {
    require_root!();
    cut_moves_at_once("kd", |lab| lab.link(Wifi, false), "link_down");
}

#[test]
fn address_lost_moves_at_once() {
    require_root!();
    cut_moves_at_once(
        "ka",
        |lab| {
            lab.lab
                .client
                .ip(&["addr", "del", "10.77.1.2/24", "dev", "c-wifi"])
                .expect("ip addr del");
        },
        "address_lost",
    );
}

/// The Wi-Fi transport follows its interface (no fixed source address): the
/// address is replaced by another (a new DHCP lease) → the session leaves it while
/// it has none and is back on Wi-Fi from the new address soon after it appears, same
/// SessionID, the gateway's binding at the new address.
#[test]
fn a_new_address_on_the_interface_is_followed() {
    require_root!();
    let lab = AgentLab::start_edited(
        "kn",
        "",
        &[Wifi, Lte],
        FAST_HEALTH,
        LabOptions::default(),
        |c| c.replace("bind = \"10.77.1.2:40000\"", "bind = \"0.0.0.0:40000\""),
    );
    let id = lab.session_id();
    let s = lab.status();
    assert_eq!(transport(&s, "wifi").local, "10.77.1.2:40000", "{s:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let stream = lab.stream(TICK);
    let ns = &lab.lab.client;
    ns.ip(&["addr", "del", "10.77.1.2/24", "dev", "c-wifi"])
        .unwrap();
    lab.wait_bound(Lte, Duration::from_secs(3));
    let added = Instant::now();
    ns.ip(&["addr", "add", "10.77.1.7/24", "dev", "c-wifi"])
        .unwrap();
    let s = lab.wait_status("back on Wi-Fi at 10.77.1.7", Duration::from_secs(5), |s| {
        s.bound.as_deref() == Some("wifi")
            && s.state == State::Attached
            && transport(s, "wifi").local == "10.77.1.7:40000"
    });
    let took = added.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let r = stream.finish(Duration::from_millis(300));
    eprintln!("new address in use after {took:?}; {:?}", s.last_switch);
    assert_eq!(s.session_id.map(|i| i.0), Some(id), "same session");
    assert_eq!(s.last_switch.unwrap().trigger, "address_added");
    let gw = lab.session(id).expect("the gateway's session");
    assert_eq!(gw.binding.as_deref(), Some("10.77.1.7:40000"));
    assert!(took < Duration::from_secs(1), "in use after {took:?}");
    assert!(r.echoed + 100 >= r.sent, "traffic continued: {r:?}");
}

/// A black hole is the loss TTL's case (agent_e2e's transport death); a link that
/// comes back is probed at once and the session returns after `return_after_ms`
/// (1 s in FAST_HEALTH), as policy says.
#[test]
fn a_link_back_is_probed_and_returned_to() {
    require_root!();
    let lab = AgentLab::start("kb", "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    std::thread::sleep(Duration::from_millis(300));
    lab.link(Wifi, false);
    lab.wait_bound(Lte, Duration::from_secs(3));
    let t0 = now_ms();
    let up = Instant::now();
    lab.link(Wifi, true);
    let s = lab.wait_bound(Wifi, Duration::from_secs(5));
    let took = up.elapsed();
    eprintln!("back on Wi-Fi {took:?} after its link came up");
    assert_eq!(s.session_id.map(|i| i.0), Some(id));
    assert_eq!(s.last_switch.as_ref().unwrap().trigger, "return");
    assert!(
        took >= Duration::from_millis(1000),
        "return_after_ms kept: {took:?}"
    );
    let lines = timeline(&lab.client_events(), t0);
    let back = position(&lines, "TRANSPORT_HEALTH wifi unknown link_up");
    let healthy = position(&lines, "TRANSPORT_HEALTH wifi healthy measured");
    let switch = position(&lines, "TRANSPORT_SWITCH 10.77.1.2:40000");
    assert!(back < healthy && healthy < switch, "{lines:#?}");
}

/// 40 % of the bound Wi-Fi's uplink dropped, LTE clean: one move to LTE (trigger
/// `quality`) within 2 s, and no flapping: at most 4 state changes in 10 s; the
/// status shows Wi-Fi's loss near 40 %.
#[test]
fn a_lossy_link_is_left_once() {
    require_root!();
    let lab = AgentLab::start("kl", "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    std::thread::sleep(Duration::from_millis(500));
    let stream = lab.stream(Duration::from_millis(10));
    let t0 = now_ms();
    let start = Instant::now();
    lab.lossy(Wifi, 40);
    let s = lab.wait_bound(Lte, Duration::from_secs(5));
    let took = start.elapsed();
    let sw = s.last_switch.clone().expect("a switch");
    eprintln!("40 % loss: on LTE after {took:?}: {sw:?}");
    assert_eq!(sw.trigger, "quality", "{sw:?}");
    assert_eq!(s.session_id.map(|i| i.0), Some(id));
    let shown = lab.wait_status(
        "Wi-Fi's loss shown near 40 %",
        Duration::from_secs(10),
        |s| (30..=50).contains(&transport(s, "wifi").loss_pct),
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(start.elapsed()));
    let changes = state_changes(&lab, t0);
    let end = lab.status();
    drop(stream);
    eprintln!(
        "{changes} state changes in 10 s; Wi-Fi loss shown {} %",
        transport(&shown, "wifi").loss_pct
    );
    assert_eq!(end.bound.as_deref(), Some("lte"), "stayed on LTE");
    assert!(changes <= 4, "{:#?}", timeline(&lab.client_events(), t0));
    assert!(took <= Duration::from_secs(2), "moved after {took:?}");
}

/// 5 % loss on the bound Wi-Fi: no VOLATILE, no switch in 10 s.
#[test]
fn light_loss_changes_nothing() {
    require_root!();
    let lab = AgentLab::start("ks", "", &[Wifi, Lte], FAST_HEALTH);
    std::thread::sleep(Duration::from_millis(500));
    let stream = lab.stream(Duration::from_millis(10));
    let t0 = now_ms();
    lab.lossy(Wifi, 5);
    std::thread::sleep(Duration::from_secs(10));
    let s = lab.status();
    drop(stream);
    let lines = timeline(&lab.client_events(), t0);
    eprintln!(
        "5 % loss: Wi-Fi loss shown {} %",
        transport(&s, "wifi").loss_pct
    );
    assert_quiet(&lines);
    assert_eq!(s.bound.as_deref(), Some("wifi"));
    assert!(transport(&s, "wifi").loss_pct <= 15, "{s:#?}");
}

/// Kills the iperf3 server with the test.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// 30 s of saturating UDP upload through the tunnel on healthy links: the agent's
/// own load is not a dead transport: no TRANSPORT_SWITCH, no VOLATILE.
#[test]
fn a_saturating_upload_does_not_flap() {
    require_root!();
    let lab = AgentLab::start("ku", "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    std::thread::sleep(Duration::from_millis(500));
    let _server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.lab.exit.name,
                "iperf3",
                "-s",
                "-1",
                "-B",
                EXIT_TUN,
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let t0 = now_ms();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.lab.client.name,
            "iperf3",
            "-c",
            EXIT_TUN,
        ])
        .args([
            "-u",
            "-b",
            "0",
            "-l",
            "1300",
            "-t",
            "30",
            "--connect-timeout",
            "3000",
        ])
        .output()
        .expect("iperf3 client");
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = lab.status();
    let lines = timeline(&lab.client_events(), t0);
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{}\nagent counters: {:?}",
        summary.lines().rev().take(4).collect::<Vec<_>>().join("\n"),
        s.counters
    );
    assert_eq!(s.session_id.map(|i| i.0), Some(id));
    assert_quiet(&lines);
    assert_eq!(s.bound.as_deref(), Some("wifi"));
}
