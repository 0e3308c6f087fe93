//! The gateway and the exit as real processes in network namespaces, with the real XDP
//! relay and a real TUN: a client built from the protocol library establishes a
//! session, exchanges data through the exit, reattaches, and the attacks of DESIGN §4
//! get exactly the specified outcome and events.

use std::time::Duration;

use jvpn_ctl::{
    control::api::{EventRecord, Request, SessionId},
    lab::gateway::Transport::{Lte, Wifi},
    proto::{Body, TransportKind},
    session::{Detail, Reason, State},
};
use jvpn_tests::{
    gwlab::GwLab,
    require_root,
    tclient::{Reply, TestClient, echo_server, now_ms},
};

const ECHO: u16 = 7777;
const QUIET: Duration = Duration::from_millis(400);

fn switches(events: &[EventRecord], id: u64) -> Vec<(Option<String>, String, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventRecord::TransportSwitch {
                session_id,
                old,
                new,
                generation,
                ..
            } if session_id.0 == id => Some((old.clone(), new.clone(), *generation)),
            _ => None,
        })
        .collect()
}

fn security_kinds(events: &[EventRecord]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            EventRecord::SecurityEvent { kind, .. } => Some(kind.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn session_carries_data_and_keeps_its_id_across_a_reattach() {
    require_root!();
    let lab = GwLab::start("gs", "");
    let _echo = echo_server(&lab, ECHO);
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();

    let s = lab.session(id).expect("session listed");
    assert_eq!(s.state, State::Attached);
    assert_eq!(s.binding.as_deref(), Some("10.77.1.2:40000"));
    assert_eq!(s.generation, 1);
    assert_eq!(s.tunnel_addr, c.tunnel_addr().to_string());
    assert_eq!(lab.map_sessions(), 1);

    assert_eq!(
        c.echo(Wifi, ECHO, b"over wifi").as_deref(),
        Some(&b"over wifi"[..])
    );

    let ack = c.reattach(Lte).expect("an answer to the reattach");
    assert!(
        matches!(ack.body, Body::ReattachAck { generation: 2, .. }),
        "{ack:?}"
    );
    assert_eq!(ack.session_id, id);
    assert_eq!(
        c.echo(Lte, ECHO, b"over lte").as_deref(),
        Some(&b"over lte"[..])
    );

    let s = lab.session(id).unwrap();
    assert_eq!((s.state, s.generation), (State::Attached, 2));
    assert_eq!(s.binding.as_deref(), Some("10.77.2.2:40000"));
    assert_eq!(lab.sessions().len(), 1, "still one session");

    let ev = lab.events();
    assert_eq!(
        switches(&ev, id),
        vec![
            (None, "10.77.1.2:40000".into(), 1),
            (Some("10.77.1.2:40000".into()), "10.77.2.2:40000".into(), 2)
        ]
    );
    let reasons: Vec<Reason> = ev
        .iter()
        .filter_map(|e| match e {
            EventRecord::StateChange { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            Reason::BirthComplete,
            Reason::ClientReportedLoss,
            Reason::ReattachStarted,
            Reason::ReattachSuccess
        ]
    );
    // The event log on disk has the same events.
    let log = std::fs::read_to_string(lab.dir.join("gateway-events.jsonl")).unwrap();
    assert_eq!(log.lines().count(), ev.len(), "{log}");

    // DATA still sent from the old transport is the relay's stale_binding drop.
    let stale = c.data(ECHO, b"stale");
    c.send_raw(Wifi, &stale);
    assert_eq!(c.recv(Wifi, QUIET), Reply::Silence);
    assert_eq!(
        lab.stats()
            .xdp_drops
            .get("stale_binding")
            .copied()
            .unwrap_or(0),
        1
    );
}

#[test]
fn forged_replayed_and_stale_requests_change_nothing() {
    require_root!();
    let lab = GwLab::start("gf", "");
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    let before = lab.session(id).unwrap();

    // Forged proof: a request MACed with another key. Silence, SECURITY_EVENT.
    let mut forged = c.reattach_request(now_ms(), TransportKind::Cellular);
    let n = forged.len();
    forged[n - 1] ^= 1;
    c.send_raw(Lte, &forged);
    assert_eq!(c.recv(Lte, QUIET), Reply::Silence);
    lab.wait_event(
        "proof_invalid",
        Duration::from_secs(2),
        |e| matches!(e, EventRecord::SecurityEvent { kind, .. } if kind == "proof_invalid"),
    );
    assert_eq!(owned(&lab, id), owned_of(&before));

    // Stale timestamp (twice the freshness window old), fresh nonce and sequence.
    let stale = c.reattach_request(now_ms() - 60_000, TransportKind::Cellular);
    c.send_raw(Lte, &stale);
    assert_eq!(c.recv(Lte, QUIET), Reply::Silence);
    assert_eq!(owned(&lab, id), owned_of(&before));

    // A valid request, captured; the reattach completes.
    let req = c.reattach_request(now_ms(), TransportKind::Cellular);
    c.send_raw(Lte, &req);
    let Some(ch) = c.recv_control(Lte, Duration::from_secs(2)) else {
        panic!("no challenge")
    };
    let Body::ReattachChallenge { challenge } = ch.body else {
        panic!("{ch:?}")
    };
    let confirm = c.control(Body::ReattachConfirm { challenge });
    c.send_raw(Lte, &confirm);
    let ack = c.recv_control(Lte, Duration::from_secs(2)).expect("ack");
    assert!(matches!(ack.body, Body::ReattachAck { generation: 2, .. }));
    let after = lab.session(id).unwrap();

    // The exact bytes again, from the same address and from another one: silence,
    // SECURITY_EVENT replay, nothing changes. So does the confirm, replayed.
    c.send_raw(Lte, &req);
    assert_eq!(c.recv(Lte, QUIET), Reply::Silence);
    c.send_raw(Wifi, &req);
    assert_eq!(c.recv(Wifi, QUIET), Reply::Silence);
    c.send_raw(Wifi, &confirm);
    assert_eq!(c.recv(Wifi, QUIET), Reply::Silence);
    let now = lab.session(id).unwrap();
    assert_eq!(
        (now.version, now.generation, now.binding.clone()),
        (after.version, 2, after.binding.clone())
    );
    assert_eq!(now.state, State::Attached);

    let kinds = security_kinds(&lab.events());
    assert_eq!(
        kinds,
        [
            "proof_invalid",
            "freshness_expired",
            "replay",
            "replay",
            "proof_invalid"
        ],
        "forged, stale, replay ×2, replayed confirm"
    );
    assert_eq!(switches(&lab.events(), id).len(), 2, "birth + one reattach");
    assert_eq!(lab.stats().security_events, 5);
}

/// What the state machine owns of a session (idle time and counters move on their own).
fn owned_of(s: &jvpn_ctl::control::api::SessionInfo) -> (State, u64, u32, Option<String>) {
    (s.state, s.version, s.generation, s.binding.clone())
}

fn owned(lab: &GwLab, id: u64) -> (State, u64, u32, Option<String>) {
    owned_of(&lab.session(id).expect("session still there"))
}

#[test]
fn switch_rate_excess_is_denied_and_degrades() {
    require_root!();
    let lab = GwLab::start("gr", "max_switches_per_minute = 2");
    let _echo = echo_server(&lab, ECHO);
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    for t in [Lte, Wifi] {
        let r = c.reattach(t).expect("reply");
        assert!(matches!(r.body, Body::ReattachAck { .. }), "{r:?}");
    }
    let r = c.reattach(Lte).expect("reply");
    assert_eq!(r.body, Body::denied(Detail::RateLimited));
    let s = lab.session(id).unwrap();
    assert_eq!((s.state, s.generation), (State::Degraded, 3));
    assert_eq!(
        s.binding.as_deref(),
        Some("10.77.1.2:40000"),
        "binding unchanged"
    );
    lab.wait_event("denied", Duration::from_secs(1), |e| {
        matches!(e, EventRecord::TransportSwitchDenied { detail: Detail::RateLimited, candidate, .. } if candidate == "10.77.2.2:40000")
    });
    assert_eq!(lab.stats().reattach.get("rate_limited"), Some(&1));
    // Traffic on the binding it kept brings it back.
    assert!(c.echo(Wifi, ECHO, b"still here").is_some());
    lab.wait_event("recovered", Duration::from_secs(2), |e| {
        matches!(
            e,
            EventRecord::StateChange {
                to: State::Attached,
                reason: Reason::TransportRecovered,
                ..
            }
        )
    });
}

#[test]
fn blacklisted_candidate_is_denied() {
    require_root!();
    let lab = GwLab::start("gb", "blacklist = [\"10.77.2.0/24\"]");
    let mut c = TestClient::connect(&lab, Wifi);
    let r = c.reattach(Lte).expect("reply");
    assert_eq!(r.body, Body::denied(Detail::Blacklisted));
    let s = lab.session(c.id()).unwrap();
    assert_eq!((s.state, s.generation), (State::Degraded, 1));
    assert_eq!(s.binding.as_deref(), Some("10.77.1.2:40000"));
}

#[test]
fn expired_recovery_window_terminates_and_tells_the_client() {
    require_root!();
    let lab = GwLab::start(
        "gw",
        "transport_loss_ttl_ms = 400\nidle_loss_ttl_ms = 400\nkeepalive_interval_ms = 100\nmax_recovery_window_ms = 800\ncandidate_ttl_ms = 300",
    );
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    assert_eq!(lab.map_sessions(), 1);
    // The client falls silent: VOLATILE after the loss TTL, TERMINATED when the
    // recovery window runs out; CLOSE tells the client why.
    let close = c.recv_control(Wifi, Duration::from_secs(4)).expect("CLOSE");
    assert_eq!(close.body, Body::close(Reason::RecoveryWindowExpired));
    let ev = lab.events();
    let path: Vec<(State, State, Reason)> = ev
        .iter()
        .filter_map(|e| match e {
            EventRecord::StateChange {
                from, to, reason, ..
            } => Some((*from, *to, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        path,
        [
            (State::Birth, State::Attached, Reason::BirthComplete),
            (State::Attached, State::Volatile, Reason::TransportVolatile),
            (
                State::Volatile,
                State::Terminated,
                Reason::RecoveryWindowExpired
            ),
        ]
    );
    assert!(lab.session(id).is_none());
    assert_eq!(lab.map_sessions(), 0, "map entry removed");
    // The exit forgot the keys: with the map entry gone nothing reaches it anyway, so
    // ask its log.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !lab.log("exit").contains("revoke") {
        assert!(
            std::time::Instant::now() < deadline,
            "the exit logged no revoke within 3 s: {}",
            lab.log("exit")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn operator_kill_terminates_and_tells_the_client() {
    require_root!();
    let lab = GwLab::start("gk", "");
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    lab.request(&Request::Kill { id: SessionId(id) });
    let close = c.recv_control(Wifi, Duration::from_secs(2)).expect("CLOSE");
    assert_eq!(close.body, Body::close(Reason::Operator));
    assert!(lab.session(id).is_none());
    assert_eq!(lab.map_sessions(), 0);
}

#[test]
fn mangled_control_messages_are_counted_and_change_nothing() {
    require_root!();
    // The messages come from the standby address: the per-session budget for those
    // (docs/datapath.md, "The HELLO gate") would drop most of them in XDP, and this
    // test is about what the controller does with them.
    let mut lab = GwLab::start(
        "gz",
        "[limits]\ncontrol_other_pps = 1000000\ncontrol_other_burst = 1000000\n",
    );
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    let before = lab.session(id).unwrap();
    let valid = [
        c.reattach_request(now_ms(), TransportKind::Wifi),
        c.control(Body::ReattachConfirm { challenge: [7; 16] }),
        c.control(Body::Keepalive {
            ts_ms: now_ms(),
            pad: 0,
        }),
        c.control(Body::close(Reason::Closed)),
        c.session.confirm.clone(),
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let stats_before = lab.stats();
    let mut sent = 0u64;
    let mut send = |m: &[u8]| {
        c.send_raw(Lte, m);
        sent += 1;
        // Paced, so that neither socket buffer nor the XDP gate's budgets (raised
        // above) are what this test measures.
        if sent.is_multiple_of(256) {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    for msg in &valid {
        for len in 0..msg.len() {
            send(&msg[..len]);
        }
        for bit in 0..msg.len() * 8 {
            // Flipping the session id would only reach the relay's unknown_session drop.
            if (32..96).contains(&bit) {
                continue;
            }
            let mut m = msg.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            send(&m);
        }
        for _ in 0..200 {
            let mut m = msg.clone();
            for b in m.iter_mut().skip(20) {
                *b = next() as u8;
            }
            send(&m);
        }
    }
    // Every message is accounted for once: dropped by the relay, or refused by the
    // controller (as malformed, or as a failed proof or stale request).
    let accounted =
        |st: &jvpn_ctl::control::api::Stats| Accounted::of(st).minus(&Accounted::of(&stats_before));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = lab.stats();
        if accounted(&st).total() >= sent || std::time::Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let a = accounted(&st);
    eprintln!("sent {sent} mangled messages: {a:#?}");
    assert!(lab.gateway_alive(), "gateway died:\n{}", lab.log("gateway"));
    assert_eq!(owned(&lab, id), owned_of(&before));
    assert_eq!(
        a.total(),
        sent,
        "every mangled message is counted once: {a:#?}"
    );
    // Bad headers die in the relay; the rest reach the controller and are counted.
    assert!(a.xdp.values().sum::<u64>() > 0 && a.malformed.values().sum::<u64>() > 0);
    assert!(a.security > 0);
}

/// The counters a refused datagram lands in, as deltas.
#[derive(Debug, Default)]
struct Accounted {
    xdp: std::collections::BTreeMap<String, u64>,
    malformed: std::collections::BTreeMap<String, u64>,
    handshakes: std::collections::BTreeMap<String, u64>,
    reattach: std::collections::BTreeMap<String, u64>,
    keepalives: std::collections::BTreeMap<String, u64>,
    security: u64,
}

impl Accounted {
    fn of(st: &jvpn_ctl::control::api::Stats) -> Self {
        Self {
            xdp: st.xdp_drops.clone(),
            malformed: st.malformed.clone(),
            handshakes: st.handshakes.clone(),
            reattach: st.reattach.clone(),
            keepalives: st.keepalives.clone(),
            security: st.security_events,
        }
    }

    fn minus(mut self, b: &Self) -> Self {
        let sub = |m: &mut std::collections::BTreeMap<String, u64>,
                   b: &std::collections::BTreeMap<String, u64>| {
            for (k, v) in m.iter_mut() {
                *v -= b.get(k).copied().unwrap_or(0);
            }
            m.retain(|_, v| *v > 0);
        };
        sub(&mut self.xdp, &b.xdp);
        sub(&mut self.malformed, &b.malformed);
        sub(&mut self.handshakes, &b.handshakes);
        sub(&mut self.reattach, &b.reattach);
        sub(&mut self.keepalives, &b.keepalives);
        self.security -= b.security;
        self
    }

    fn total(&self) -> u64 {
        [
            &self.xdp,
            &self.malformed,
            &self.handshakes,
            &self.reattach,
            &self.keepalives,
        ]
        .iter()
        .map(|m| m.values().sum::<u64>())
        .sum()
    }
}
