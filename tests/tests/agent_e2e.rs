//! End to end with the real client agent (issue 4): real processes in their own
//! namespaces, native XDP on the gateway, real TUN devices on client and exit.

use std::time::Duration;

use jvpn_common::wire::msg_type;
use jvpn_ctl::{
    control::api::EventRecord,
    lab::{
        capture::{self, Capture},
        gateway::Transport::{Lte, Lte6, Wifi},
    },
    proto::{Body, Control, ReattachRequest, TransportKind},
    session::{Detail, Reason, State},
};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH},
    require_root,
    tclient::now_ms,
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
    lab.wait_traffic(&stream, 250);
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

/// 2. Silent transport death (a black hole, the link still up: nothing tells the
///    kernel) → reattach after the loss TTL → traffic continues, SessionID
///    unchanged, the interruption bounded by the loss TTL plus a stated margin.
///    (A link that goes down is seen at once: agent_links.rs.)
#[test]
fn transport_death_reattaches_and_traffic_continues() {
    require_root!();
    let lab = AgentLab::start("ad", "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    // Every transport probed, so LTE is known healthy.
    lab.wait_all_healthy();
    let stream = lab.stream(TICK);
    lab.wait_traffic(&stream, 100);
    lab.lossy(Wifi, 100);
    let s = lab.wait_status("the move to LTE", Duration::from_secs(5), |s| {
        s.bound.as_deref() == Some("lte") && s.state == State::Attached
    });
    lab.wait_traffic(&stream, 100);
    let r = stream.finish(Duration::from_millis(300));
    assert_eq!(s.session_id.map(|i| i.0), Some(id), "same session");
    assert_eq!(s.generation, 2);
    let sw = s.last_switch.expect("switch recorded");
    assert!(!sw.planned);
    assert_eq!(sw.trigger, "loss_ttl", "{sw:?}");
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
    lab.wait_all_healthy();
    let stream = lab.stream(TICK);
    lab.link(Wifi, false);
    let s = lab.wait_status("the move to IPv6", Duration::from_secs(5), |s| {
        s.bound.as_deref() == Some("lte6") && s.state == State::Attached
    });
    lab.wait_traffic(&stream, 101);
    let r = stream.finish(Duration::from_millis(300));
    assert_eq!(s.session_id.map(|i| i.0), Some(id));
    let gw = lab.session(id).unwrap();
    assert_eq!(gw.binding.as_deref(), Some("[fd77:2::2]:40000"));
    assert!(r.echoed + 200 >= r.sent && r.echoed > 100, "{r:?}");
    let (_, dup) = lab.echo.counts();
    assert_eq!(dup, 0);
    let _ = Lte;
}

fn gw_switches(events: &[EventRecord], id: u64) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            EventRecord::TransportSwitch {
                session_id,
                generation,
                ..
            } if session_id.0 == id => Some(*generation),
            _ => None,
        })
        .collect()
}

fn security(events: &[EventRecord]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventRecord::SecurityEvent { kind, source, .. } => Some((kind.clone(), source.clone())),
            _ => None,
        })
        .collect()
}

/// 4. A captured REATTACH_REQUEST replayed by an attacker from another address:
///    rejected, no state change, SECURITY_EVENT.
#[test]
fn replayed_reattach_request_is_rejected() {
    require_root!();
    let lab = AgentLab::start("ar", "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    let cap = Capture::start(&lab.lab.client, "c-lte").unwrap();
    lab.move_to(Lte);
    lab.wait_bound(Lte, Duration::from_secs(3));
    let req = cap
        .frames()
        .into_iter()
        .find(|f| f.outgoing && f.msg_type() == Some(msg_type::REATTACH_REQUEST))
        .expect("the agent's REATTACH_REQUEST was captured");
    let before = lab.gw_view(id);
    let attacker = lab.attacker();
    attacker
        .send_to(req.payload().unwrap(), Lte.gw_addr())
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        attacker.recv_from(&mut buf).is_err(),
        "the attacker gets no answer"
    );
    assert_eq!(lab.gw_view(id), before, "nothing changed");
    let sec = security(&lab.events());
    assert!(
        sec.iter()
            .any(|(k, src)| k == "replay" && src.starts_with("10.77.2.3:")),
        "{sec:?}"
    );
    assert_eq!(lab.status().bound.as_deref(), Some("lte"));
}

/// 5. A forged proof: silence, no state change.
#[test]
fn forged_proof_gets_silence() {
    require_root!();
    let lab = AgentLab::start("ap", "", &[Wifi, Lte], FAST_HEALTH);
    let id = lab.session_id();
    let before = lab.gw_view(id);
    let attacker = lab.attacker();
    let wrong_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let cause = jvpn_ctl::proto::ReattachCause::Recovery;
    let req =
        ReattachRequest::new(now_ms(), [9u8; 16], TransportKind::Cellular, cause, b"evil").unwrap();
    let forged = Control {
        session_id: id,
        ctr: 1 << 40,
        body: Body::ReattachRequest(req),
    }
    .encode(&wrong_key)
    .unwrap();
    attacker.send_to(&forged, Lte.gw_addr()).unwrap();
    let mut buf = [0u8; 256];
    assert!(attacker.recv_from(&mut buf).is_err(), "silence");
    assert_eq!(lab.gw_view(id), before);
    let sec = security(&lab.events());
    assert!(
        sec.iter()
            .any(|(k, src)| k == "proof_invalid" && src.starts_with("10.77.2.3:")),
        "{sec:?}"
    );
    assert_eq!(lab.status().bound.as_deref(), Some("wifi"));
}

/// 6. Switch rate exceeded: DENIED rate_limited, DEGRADED; a later reattach inside the
///    recovery window succeeds once the rate limit's window (5 s here) has passed.
#[test]
fn rate_limited_then_later_reattach_succeeds() {
    require_root!();
    let lab = AgentLab::start(
        "aq",
        "max_switches_per_minute = 1\nswitch_window_ms = 5000\nmax_recovery_window_ms = 30000\n",
        &[Wifi, Lte],
        FAST_HEALTH,
    );
    let id = lab.session_id();
    lab.move_to(Lte);
    lab.wait_bound(Lte, Duration::from_secs(3));
    // LTE dies: the only way out is a second switch within the window.
    lab.link(Lte, false);
    let denied = lab
        .gw
        .wait_event("rate_limited denial", Duration::from_secs(5), |e| {
            matches!(
                e,
                EventRecord::TransportSwitchDenied {
                    detail: Detail::RateLimited,
                    ..
                }
            )
        });
    let _ = denied;
    // The agent saw LTE's link go down at once; the gateway sees the binding's
    // silence only after its loss TTL, and then is DEGRADED too.
    let degraded = std::time::Instant::now() + Duration::from_secs(3);
    let gw = loop {
        let gw = lab.session(id).unwrap();
        if gw.state == State::Degraded || std::time::Instant::now() > degraded {
            break gw;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(gw.state, State::Degraded);
    assert_eq!(
        gw.binding.as_deref(),
        Some("10.77.2.2:40000"),
        "binding kept"
    );
    let client_states = state_path(&lab.client_events());
    assert!(
        client_states.contains(&(State::Degraded, Reason::ReattachValidationFailed)),
        "{client_states:?}"
    );
    // The agent backs off and retries; once the window has passed, it succeeds.
    let s = lab.wait_bound(Wifi, Duration::from_secs(25));
    assert_eq!(s.session_id.map(|i| i.0), Some(id));
    assert_eq!(lab.session(id).unwrap().state, State::Attached);
    assert_eq!(gw_switches(&lab.events(), id), [1, 2, 3]);
}

/// 7. Recovery window expires: TERMINATED, map entry gone, exit keys revoked, client
///    told.
#[test]
fn recovery_window_expiry_terminates_and_tells_the_client() {
    require_root!();
    let lab = AgentLab::start(
        "aw",
        "max_recovery_window_ms = 1500\n",
        &[Wifi],
        &format!("reconnect = false\n{FAST_HEALTH}"),
    );
    let id = lab.session_id();
    assert_eq!(lab.map_sessions(), 1);
    // The uplink breaks (the client's frames go to a MAC nobody has) while the
    // downlink still works, so the gateway's CLOSE can reach the client.
    lab.lab
        .client
        .neigh_permanent("10.77.1.1", "02:00:00:00:00:01", "c-wifi")
        .unwrap();
    lab.gw
        .wait_event("TERMINATED", Duration::from_secs(5), |e| {
            matches!(
                e,
                EventRecord::StateChange {
                    to: State::Terminated,
                    ..
                }
            )
        });
    let path: Vec<_> = state_path(&lab.events());
    assert_eq!(
        path,
        [
            (State::Attached, Reason::BirthComplete),
            (State::Volatile, Reason::TransportVolatile),
            (State::Terminated, Reason::RecoveryWindowExpired)
        ]
    );
    assert!(lab.session(id).is_none());
    assert_eq!(lab.map_sessions(), 0, "map entry removed");
    wait_exit(&lab, "client");
    let client_log = lab.log("client");
    assert!(
        client_log.contains("the gateway closed the session: RecoveryWindowExpired"),
        "{client_log}"
    );
    assert!(lab.log("exit").contains("revoke"), "{}", lab.log("exit"));
}

/// Waits for the agent to stop on its own (the log's last word when `reconnect` is off).
fn wait_exit(lab: &AgentLab, name: &str) {
    for _ in 0..300 {
        if lab.log(name).contains("reconnect is off") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the {name} did not stop; log:\n{}", lab.log(name));
}

/// 8. Session TTL expiry: the gateway ends the session, the agent says so and, with
///    `reconnect` on (the default), establishes a new one.
#[test]
fn session_ttl_expiry_then_a_new_session() {
    require_root!();
    let lab = AgentLab::start("at", "session_ttl_s = 2\n", &[Wifi, Lte], FAST_HEALTH);
    let first = lab.session_id();
    let s = lab.wait_status("a second session", Duration::from_secs(8), |s| {
        s.sessions_established == 2 && s.state == State::Attached
    });
    let second = s.session_id.unwrap().0;
    assert_ne!(first, second, "a NEW session, not a silent resumption");
    let ev = lab.client_events();
    assert!(
        ev.iter().any(|e| matches!(e,
            EventRecord::StateChange { session_id, to: State::Terminated, reason: Reason::SessionTtlExpired, .. }
            if session_id.0 == first)),
        "{ev:#?}"
    );
    assert!(lab.log("client").contains("establishing a NEW session"));
    assert!(lab.session(first).is_none());
}

/// 9. After a switch, frames still sent from the old transport are dropped by XDP
///    (counter rises) and none reaches the exit.
#[test]
fn old_transport_frames_are_dropped_after_a_switch() {
    require_root!();
    let lab = AgentLab::start("as", "", &[Wifi, Lte], FAST_HEALTH);
    let wifi = Capture::start(&lab.lab.client, "c-wifi").unwrap();
    let exit = Capture::start(&lab.lab.exit, "x-gw").unwrap();
    let stream = lab.stream(TICK);
    lab.wait_traffic(&stream, 60);
    lab.move_to(Lte);
    lab.wait_bound(Lte, Duration::from_secs(3));
    let old: Vec<Vec<u8>> = wifi
        .frames()
        .into_iter()
        .filter(|f| f.outgoing && f.is_data())
        .take(50)
        .map(|f| f.bytes)
        .collect();
    assert_eq!(old.len(), 50, "captured the agent's DATA on Wi-Fi");
    let drops = lab.stale_drops();
    let since = std::time::Instant::now();
    capture::inject(&lab.lab.client, "c-wifi", &old, Duration::from_millis(1)).unwrap();
    // Every injected frame is dropped and counted: then none of them is on its way.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while lab.stale_drops() < drops + 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "stale_binding drops {} → {}: not every injected frame was counted",
            drops,
            lab.stale_drops()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stream);
    assert_eq!(capture::delivered(&old, &exit.frames(), since), 0);
}

/// 10. Atomicity under load: 50 switches back and forth under continuous traffic.
#[test]
fn fifty_switches_under_load() {
    require_root!();
    let lab = AgentLab::start(
        "al",
        "max_switches_per_minute = 1000\n",
        &[Wifi, Lte],
        "[health]\nreturn_after_ms = 3600000\n",
    );
    let id = lab.session_id();
    let caps = [
        Capture::start(&lab.lab.client, "c-wifi").unwrap(),
        Capture::start(&lab.lab.client, "c-lte").unwrap(),
    ];
    let exit = Capture::start(&lab.lab.exit, "x-gw").unwrap();
    let stream = lab.stream(Duration::from_millis(2));
    // (frame, when it was re-sent): its original went through before that.
    let mut injected: Vec<(Vec<u8>, std::time::Instant)> = Vec::new();
    for i in 0..50 {
        let (from, to) = if i % 2 == 0 { (0, Lte) } else { (1, Wifi) };
        // Traffic in flight on the current binding at every switch.
        lab.wait_traffic(&stream, 10);
        lab.move_to(to);
        lab.wait_bound(to, Duration::from_secs(3));
        // One frame the old transport carried, re-sent on it now that it is unbound.
        if let Some(f) = caps[from]
            .frames()
            .into_iter()
            .rev()
            .find(|f| f.outgoing && f.is_data())
        {
            let at = std::time::Instant::now();
            let dev = if from == 0 { "c-wifi" } else { "c-lte" };
            capture::inject(
                &lab.lab.client,
                dev,
                std::slice::from_ref(&f.bytes),
                Duration::ZERO,
            )
            .unwrap();
            injected.push((f.bytes, at));
        }
    }
    let r = stream.finish(Duration::from_millis(500));
    assert!(injected.len() >= 45, "{}", injected.len());
    let seen = exit.frames();
    let delivered: usize = injected
        .iter()
        .map(|(f, at)| capture::delivered(std::slice::from_ref(f), &seen, *at))
        .sum();
    assert_eq!(
        delivered, 0,
        "a frame from a non-bound transport was delivered"
    );
    let (_, dup) = lab.echo.counts();
    assert_eq!((dup, r.duplicate_echoes), (0, 0), "no duplicate delivered");
    assert!(r.echoed > r.sent * 9 / 10, "{r:?}");
    let s = lab.status();
    assert_eq!(s.session_id.map(|i| i.0), Some(id));
    assert_eq!(s.switches, 50);
    let want: Vec<u32> = (1..=51).collect();
    assert_eq!(
        gw_switches(&lab.events(), id),
        want,
        "one TRANSPORT_SWITCH per switch"
    );
    assert_eq!(gw_switches(&lab.client_events(), id), want);
    eprintln!("50 switches under load: {r:?}");
}

/// 11. Blacklisted candidate transport: denied.
#[test]
fn blacklisted_candidate_is_denied() {
    require_root!();
    let lab = AgentLab::start(
        "ak",
        "blacklist = [\"10.77.2.0/24\"]\n",
        &[Wifi, Lte],
        FAST_HEALTH,
    );
    let id = lab.session_id();
    lab.link(Wifi, false);
    lab.wait_status("the denial", Duration::from_secs(5), |s| {
        s.transports[1].backoff_ms > 10_000
    });
    let ev = lab.client_events();
    assert!(
        ev.iter().any(|e| matches!(e, EventRecord::TransportSwitchDenied { detail: Detail::Blacklisted, candidate, .. } if candidate == "10.77.2.2:40000")),
        "{ev:#?}"
    );
    let gw = lab.session(id).unwrap();
    assert_eq!(
        gw.binding.as_deref(),
        Some("10.77.1.2:40000"),
        "binding kept"
    );
    assert_eq!(gw.generation, 1);
}

/// 12. Operator `jvpn-ctl session kill`: TERMINATED, client told, map entry gone.
#[test]
fn operator_kill_tells_the_client() {
    require_root!();
    let lab = AgentLab::start(
        "ao",
        "",
        &[Wifi, Lte],
        &format!("reconnect = false\n{FAST_HEALTH}"),
    );
    let id = lab.session_id();
    let out = lab.cli(&["session", "kill", &format!("{id:016x}")]);
    assert!(out.status.success(), "{out:?}");
    wait_exit(&lab, "client");
    assert!(
        lab.log("client")
            .contains("the gateway closed the session: Operator")
    );
    assert!(lab.session(id).is_none());
    assert_eq!(lab.map_sessions(), 0);
    let ev = lab.client_events_from_log();
    assert!(
        ev.iter().any(|e| matches!(
            e,
            EventRecord::StateChange {
                to: State::Terminated,
                reason: Reason::Operator,
                ..
            }
        )),
        "{ev:#?}"
    );
}
