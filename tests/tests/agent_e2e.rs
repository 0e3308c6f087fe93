//! End to end with the real client agent (issue 4): real processes in their own
//! namespaces, native XDP on the gateway, real TUN devices on client and exit.

use std::time::Duration;

use jvpn_ctl::{
    control::api::EventRecord,
    lab::gateway::Transport::{Lte, Lte6, Wifi},
    session::{Reason, State},
};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH},
    require_root,
};

const TICK: Duration = Duration::from_millis(5);

fn state_path(events: &[EventRecord]) -> Vec<(State, Reason)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventRecord::StateChange { to, reason, .. } => Some((*to, *reason)),
            _ => None,
        })
        .collect()
}

/// 1. Birth, then traffic both ways through the tunnel.
#[test]
fn birth_then_traffic_both_ways() {
    require_root!();
    let lab = AgentLab::start("ab", "", &[Wifi, Lte], FAST_HEALTH);
    let s = lab.status();
    assert_eq!(s.bound.as_deref(), Some("wifi"));
    assert_eq!(s.generation, 1);
    let gw = lab
        .session(lab.session_id())
        .expect("the gateway lists the session");
    assert_eq!(gw.state, State::Attached);
    assert_eq!(gw.binding.as_deref(), Some("10.77.1.2:40000"));
    assert_eq!(Some(gw.tunnel_addr.clone()), s.tunnel_addr);

    let stream = lab.stream(TICK);
    std::thread::sleep(Duration::from_millis(1500));
    let r = stream.finish(Duration::from_millis(300));
    let (at_exit, dup_at_exit) = lab.echo.counts();
    assert!(r.sent >= 200, "{r:?}");
    assert_eq!(r.echoed, r.sent, "every packet made the round trip: {r:?}");
    assert_eq!(at_exit, r.sent);
    assert_eq!((dup_at_exit, r.duplicate_echoes), (0, 0));
    let c = lab.status().counters;
    assert!(c.tx_packets >= r.sent && c.rx_packets >= r.sent, "{c:?}");
    assert_eq!(
        state_path(&lab.client_events()),
        [(State::Attached, Reason::BirthComplete)]
    );
}

/// 2. Transport death → reattach → traffic continues, SessionID unchanged, the
///    interruption bounded by the loss TTL plus a stated margin.
#[test]
fn transport_death_reattaches_and_traffic_continues() {
    require_root!();
    let lab = AgentLab::start("ad", "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    // Let every transport be probed, so LTE is known healthy.
    std::thread::sleep(Duration::from_millis(500));
    let stream = lab.stream(TICK);
    std::thread::sleep(Duration::from_millis(500));
    lab.link(Wifi, false);
    let s = lab.wait_status("the move to LTE", Duration::from_secs(5), |s| {
        s.bound.as_deref() == Some("lte") && s.state == State::Attached
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = stream.finish(Duration::from_millis(300));
    assert_eq!(s.session_id.map(|i| i.0), Some(id), "same session");
    assert_eq!(s.generation, 2);
    let sw = s.last_switch.expect("switch recorded");
    assert!(!sw.planned);
    // Loss TTL 500 ms; margin: one keepalive interval (100 ms) for the last packet
    // heard before the cut, the 10 ms tick, and 100 ms for the exchange and CPU noise.
    const BOUND_MS: f64 = 500.0 + 210.0;
    let worst = r.gaps.first().map_or(0.0, |g| g.1);
    eprintln!("interruption {worst:.1} ms; client view: {sw:?}");
    assert!(worst > 400.0, "the outage was seen at all: {r:?}");
    assert!(
        worst <= BOUND_MS,
        "interruption {worst:.0} ms > {BOUND_MS} ms: {r:?}"
    );
    assert!(
        r.echoed + 200 >= r.sent,
        "traffic continued after the switch: {r:?}"
    );
    let gw = lab.session(id).expect("same session at the gateway");
    assert_eq!(gw.state, State::Attached);
    assert_eq!(gw.binding.as_deref(), Some("10.77.2.2:40000"));
    assert_eq!(gw.generation, 2);
    assert!(
        lab.echo.counts().1 == 0 && r.duplicate_echoes == 0,
        "no duplicates"
    );
}

/// 3. Cross-family reattach: IPv4 transport → IPv6 transport.
#[test]
fn cross_family_reattach() {
    require_root!();
    let lab = AgentLab::start("af", "", &[Wifi, Lte6], FAST_HEALTH);
    let id = lab.session_id();
    std::thread::sleep(Duration::from_millis(500));
    let stream = lab.stream(TICK);
    lab.link(Wifi, false);
    let s = lab.wait_status("the move to IPv6", Duration::from_secs(5), |s| {
        s.bound.as_deref() == Some("lte6") && s.state == State::Attached
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = stream.finish(Duration::from_millis(300));
    assert_eq!(s.session_id.map(|i| i.0), Some(id));
    let gw = lab.session(id).unwrap();
    assert_eq!(gw.binding.as_deref(), Some("[fd77:2::2]:40000"));
    assert!(r.echoed + 200 >= r.sent && r.echoed > 100, "{r:?}");
    let (_, dup) = lab.echo.counts();
    assert_eq!(dup, 0);
    let _ = Lte;
}
