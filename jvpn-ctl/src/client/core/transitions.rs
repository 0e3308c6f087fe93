//! Every client transition of the table in `core/mod.rs`, every DENIED reason, and
//! the link signals, driven through virtual time against a gateway played in
//! memory ([`Peer`]): it answers KEEPALIVEs and reattaches on every transport that
//! is not cut, as the real gateway does. Given the gateway's handshake side
//! ([`GwHandshake`]), it also plays the handshake with a clock of its own (TIME for
//! a stale HELLO) and under load (COOKIE).

use std::{collections::HashSet, net::SocketAddr};

use jvpn_common::wire::msg_type;
use ring::{rand::SystemRandom, signature::Ed25519KeyPair};

use super::tests::{
    Gw, HINT, LTE, LTE_GW, SID, TRANSPORTS, WIFI, WIFI_GW, config, established, inner, v4,
};
use super::{Core, Down, LinkSignal, Out};
use crate::{
    control::api::EventRecord,
    proto::{
        self, Body, Cookie, Established, Hello, ReattachCause, SessionKeys, Time, Unverified,
        control::ACK_FROM_BINDING,
        handshake::{tests::keypair, welcome},
    },
    session::{Detail, Reason, State},
};

const T0: u64 = super::tests::T0;
const TICK: u64 = 10;

struct Peer {
    gw: Gw,
    generation: u32,
    bound: usize,
    /// Nothing gets through on this transport, either way.
    cut: [bool; 2],
    /// Of every 10 KEEPALIVEs on a transport, these (by count mod 10) go unanswered.
    lose: [Vec<u64>; 2],
    probes: [u64; 2],
    /// Of every 10 DATA on the binding, these (by count mod 10) the relay never
    /// forwards (its count in the KEEPALIVE answers says so).
    lose_data: Vec<u64>,
    data_seen: u64,
    forwarded: u32,
    /// The answer to the next REATTACH_REQUEST: a refusal, or none at all.
    deny: Option<Detail>,
    ignore_requests: bool,
    /// What the core sent: (transport, message); and its events.
    sent: Vec<(usize, Body)>,
    events: Vec<EventRecord>,
    /// The gateway's handshake side, for a peer that plays the session's start.
    hs: Option<GwHandshake>,
}

/// The gateway's handshake, as the real one checks a HELLO (signature, freshness
/// against its own clock, its start, the nonce cache), with TIME for a stale HELLO
/// and, under load, COOKIE for one without its cookie (the XDP program's part). Its
/// clock also judges every KEEPALIVE and REATTACH_REQUEST timestamp: a stale one
/// goes unanswered.
struct GwHandshake {
    id: Ed25519KeyPair,
    /// The gateway's clock minus the client's.
    skew_ms: i64,
    /// When it started, in its time (HELLOs and KEEPALIVEs stamped before: refused).
    started_ms: u64,
    under_load: bool,
    cookie: [u8; 16],
    nonces: HashSet<[u8; 16]>,
    /// WELCOME sent: keys and transcript until the CONFIRM.
    pending: Option<(SessionKeys, [u8; 32])>,
    /// What it made of each HELLO (`time`, `cookie`, `welcome`, `replay`) and its length.
    hellos: Vec<(&'static str, usize)>,
    /// Timestamps of KEEPALIVEs and REATTACH_REQUESTs it refused as stale.
    stale: u64,
}

const FRESHNESS_MS: u64 = 30_000;

impl GwHandshake {
    fn new(id: Ed25519KeyPair, skew_ms: i64) -> Self {
        Self {
            id,
            skew_ms,
            started_ms: 0,
            under_load: false,
            cookie: [0xc5; 16],
            nonces: HashSet::new(),
            pending: None,
            hellos: Vec::new(),
            stale: 0,
        }
    }

    fn now(&self, client_now: u64) -> u64 {
        client_now.saturating_add_signed(self.skew_ms)
    }

    fn fresh(&self, ts: u64, client_now: u64) -> bool {
        let now = self.now(client_now);
        now.abs_diff(ts) <= FRESHNESS_MS && ts >= self.started_ms
    }

    /// A HELLO: COOKIE, TIME, WELCOME, or silence (a replay).
    fn hello(&mut self, data: &[u8], client_now: u64) -> Option<Vec<u8>> {
        let h = Hello::decode(data).expect("a well-formed HELLO");
        let gw_pub = proto::identity::public_key(&self.id);
        if self.under_load && h.cookie != Some(self.cookie) {
            self.hellos.push(("cookie", data.len()));
            return Some(Cookie::build(&h.nonce, &self.cookie));
        }
        let v = h
            .verify_signature(&gw_pub)
            .expect("signed for this gateway");
        let now = self.now(client_now);
        if !self.fresh(v.ts_ms, client_now) {
            self.hellos.push(("time", data.len()));
            return Some(Time::build(&self.id, &v, 7, now));
        }
        if !self.nonces.insert(v.nonce) {
            self.hellos.push(("replay", data.len()));
            return None;
        }
        self.hellos.push(("welcome", data.len()));
        let tunnel = "10.99.0.2".parse().unwrap();
        let w = welcome(
            &self.id,
            &v,
            SID,
            1,
            tunnel,
            None,
            HINT,
            now,
            &SystemRandom::new(),
        )
        .unwrap();
        self.pending = Some((w.keys, w.transcript));
        Some(w.welcome)
    }
}

impl Peer {
    fn new(gw: Gw) -> Self {
        Self {
            gw,
            generation: 1,
            bound: WIFI,
            cut: [false; 2],
            lose: [Vec::new(), Vec::new()],
            probes: [0; 2],
            lose_data: Vec::new(),
            data_seen: 0,
            forwarded: 0,
            deny: None,
            ignore_requests: false,
            sent: Vec::new(),
            events: Vec::new(),
            hs: None,
        }
    }

    /// A gateway that has not met the client yet: the core's first HELLO is
    /// waiting in its queue (serve it).
    fn before_session(skew_ms: i64) -> (Core, Self) {
        let (gw_id, cl_id) = (keypair(), keypair());
        let gw_pub = proto::identity::public_key(&gw_id);
        let core = Core::new(&config(&gw_pub, TRANSPORTS), cl_id, gw_pub, T0);
        let mut peer = Self::new(Gw::new(SessionKeys::derive(&[0; 32], &[0; 32]), 0));
        let mut hs = GwHandshake::new(gw_id, skew_ms);
        // It started an hour ago (its time).
        hs.started_ms = hs.now(T0) - 3_600_000;
        peer.hs = Some(hs);
        (core, peer)
    }

    fn hs(&self) -> &GwHandshake {
        self.hs.as_ref().expect("a peer playing the handshake")
    }

    /// The handshake's messages (HELLO, CONFIRM), when the peer plays it.
    fn handshake(&mut self, data: &[u8], now: u64) -> Option<Option<Vec<u8>>> {
        let hs = self.hs.as_mut()?;
        match data.get(1) {
            Some(&msg_type::HELLO) => Some(hs.hello(data, now)),
            Some(&msg_type::CONFIRM) => {
                let (keys, transcript) = hs.pending.take()?;
                let mac = keys.mac_key();
                proto::Confirm::decode(data)
                    .and_then(|c| c.verify(&mac, &transcript))
                    .expect("the CONFIRM verifies");
                self.gw = Gw::new(keys, 2);
                Some(Some(Established::build(&mac, SID, 2, &transcript)))
            }
            _ => None,
        }
    }

    fn addr(t: usize) -> SocketAddr {
        if t == WIFI { WIFI_GW } else { LTE_GW }
    }

    /// Takes what the core queued and answers it (answers are fed back at once).
    fn serve(&mut self, core: &mut Core, now: u64) {
        loop {
            let out = std::mem::take(&mut core.out);
            if out.is_empty() {
                return;
            }
            for o in out {
                match o {
                    Out::Udp {
                        transport, data, ..
                    } => self.answer(core, transport, &data, now),
                    Out::Event(e) => self.events.push(e),
                    _ => {}
                }
            }
        }
    }

    fn answer(&mut self, core: &mut Core, t: usize, data: &[u8], now: u64) {
        if self.cut[t] {
            return;
        }
        if data.get(1) == Some(&jvpn_common::wire::msg_type::DATA) {
            if t == self.bound {
                self.data_seen += 1;
                if !self.lose_data.contains(&(self.data_seen % 10)) {
                    self.forwarded += 1;
                }
            }
            return;
        }
        if let Some(reply) = self.handshake(data, now) {
            if let Some(reply) = reply {
                core.on_datagram(t, Self::addr(t), &reply, now);
            }
            return;
        }
        let Ok(u) = Unverified::decode(data) else {
            return;
        };
        let body = u.into_msg().body;
        self.sent.push((t, body.clone()));
        // Its clock judges the timestamps, as the real gateway's does.
        let ts = match &body {
            Body::Keepalive { ts_ms, .. } => Some(*ts_ms),
            Body::ReattachRequest(r) => Some(r.ts_ms),
            _ => None,
        };
        if let (Some(hs), Some(ts)) = (&mut self.hs, ts)
            && !hs.fresh(ts, now)
        {
            hs.stale += 1;
            return;
        }
        let reply = match body {
            Body::Keepalive { ts_ms, .. } => {
                self.probes[t] += 1;
                if self.lose[t].contains(&(self.probes[t] % 10)) {
                    return;
                }
                let (flags, fwd) = if t == self.bound {
                    (ACK_FROM_BINDING, self.forwarded)
                } else {
                    (0, 0)
                };
                self.gw.ack(ts_ms, self.generation, fwd, flags)
            }
            Body::ReattachRequest(_) if self.ignore_requests => return,
            Body::ReattachRequest(_) => match self.deny {
                Some(d) => self.gw.send(Body::ReattachDenied { reason: d.code() }),
                None => self.gw.send(Body::ReattachChallenge { challenge: [3; 16] }),
            },
            Body::ReattachConfirm { .. } => {
                self.generation += 1;
                self.bound = t;
                self.gw.send(Body::ReattachAck {
                    generation: self.generation,
                    hint: super::tests::HINT,
                })
            }
            _ => return,
        };
        core.on_datagram(t, Self::addr(t), &reply, now);
    }

    /// Ticks every 10 ms from `*now` for `ms`, serving everything.
    fn run(&mut self, core: &mut Core, now: &mut u64, ms: u64) {
        let end = *now + ms;
        while *now < end {
            *now += TICK;
            core.tick(*now);
            self.serve(core, *now);
        }
    }

    /// Ticks until `pred` holds (at most `ms`); panics otherwise.
    fn until(
        &mut self,
        core: &mut Core,
        now: &mut u64,
        ms: u64,
        pred: impl Fn(&Core, u64) -> bool,
    ) {
        let end = *now + ms;
        while !pred(core, *now) {
            assert!(*now < end, "not within {ms} ms: {:#?}", core.status(*now));
            *now += TICK;
            core.tick(*now);
            self.serve(core, *now);
        }
    }

    /// (to, reason, detail) of every state change so far.
    fn path(&self) -> Vec<(State, Reason, Option<Detail>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventRecord::StateChange {
                    to, reason, detail, ..
                } => Some((*to, *reason, *detail)),
                _ => None,
            })
            .collect()
    }

    fn health_events(&self) -> Vec<(String, String, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventRecord::TransportHealth {
                    transport,
                    health,
                    cause,
                    ..
                } => Some((transport.clone(), health.clone(), cause.clone())),
                _ => None,
            })
            .collect()
    }

    fn requests(&self) -> Vec<(usize, ReattachCause)> {
        self.sent
            .iter()
            .filter_map(|(t, b)| match b {
                Body::ReattachRequest(r) => Some((*t, r.cause)),
                _ => None,
            })
            .collect()
    }
}

/// An established session over Wi-Fi, LTE known healthy, the peer's log cleared.
fn attached() -> (Core, Peer, u64) {
    let (mut core, gw) = established();
    let mut peer = Peer::new(gw);
    let mut now = T0 + 2;
    peer.serve(&mut core, now);
    peer.run(&mut core, &mut now, 300);
    let s = core.status(now);
    assert_eq!(s.state, State::Attached);
    assert!(
        s.transports.iter().all(|t| t.health.name() == "healthy"),
        "{s:#?}"
    );
    peer.events.clear();
    peer.sent.clear();
    (core, peer, now)
}

/// Wi-Fi's link down, and the reattach over LTE it starts left unanswered.
fn recovering_unanswered() -> (Core, Peer, u64) {
    let (mut core, mut peer, now) = attached();
    peer.ignore_requests = true;
    core.on_link(WIFI, LinkSignal::Down(Down::LinkDown), now);
    peer.serve(&mut core, now);
    assert_eq!(state(&core, now), State::Recovering);
    (core, peer, now)
}

/// The shell's loop ran `gap_ms` late: then one tick, served.
fn stall(core: &mut Core, peer: &mut Peer, now: &mut u64, gap_ms: u64) {
    *now += gap_ms;
    core.note_stall(gap_ms);
    core.tick(*now);
    peer.serve(core, *now);
}

fn state(core: &Core, now: u64) -> State {
    core.status(now).state
}

fn bound(core: &Core, now: u64) -> String {
    core.status(now).bound.unwrap_or_default()
}

#[test]
fn silence_makes_the_binding_volatile_and_an_answer_attached_again() {
    let (mut core, mut peer, mut now) = attached();
    peer.cut[WIFI] = true;
    peer.until(&mut core, &mut now, 400, |c, n| {
        state(c, n) == State::Volatile
    });
    peer.cut[WIFI] = false;
    peer.until(&mut core, &mut now, 300, |c, n| {
        state(c, n) == State::Attached
    });
    assert_eq!(
        peer.path(),
        [
            (State::Volatile, Reason::TransportVolatile, None),
            (State::Attached, Reason::TransportRecovered, None)
        ]
    );
    assert!(
        peer.requests().is_empty(),
        "no reattach for a short silence"
    );
}

#[test]
fn a_dead_binding_recovers_over_the_best_candidate() {
    let (mut core, mut peer, mut now) = attached();
    peer.cut[WIFI] = true;
    let cut_at = now;
    peer.until(&mut core, &mut now, 1_000, |c, n| bound(c, n) == "lte");
    let s = core.status(now);
    assert_eq!(s.state, State::Attached);
    assert_eq!(s.generation, 2);
    let sw = s.last_switch.unwrap();
    assert_eq!(
        (sw.cause.as_str(), sw.trigger.as_str()),
        ("recovery", "loss_ttl")
    );
    assert!(now - cut_at >= 500, "not before the loss TTL");
    assert_eq!(peer.requests(), [(LTE, ReattachCause::Recovery)]);
    let path: Vec<_> = peer.path().into_iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(
        path,
        [
            (State::Volatile, Reason::TransportVolatile),
            (State::Recovering, Reason::ReattachStarted),
            (State::Attached, Reason::ReattachSuccess)
        ]
    );
    assert!(
        peer.health_events()
            .contains(&("wifi".into(), "dead".into(), "loss_ttl".into()))
    );
}

#[test]
fn a_link_down_is_dead_at_once_and_never_probed() {
    let (mut core, mut peer, now) = attached();
    core.on_link(WIFI, LinkSignal::Down(Down::LinkDown), now);
    peer.serve(&mut core, now);
    // In the same step: DEAD with its cause, the recovery started, and over LTE.
    assert_eq!(
        peer.health_events()[0],
        ("wifi".into(), "dead".into(), "link_down".into())
    );
    assert_eq!(peer.requests(), [(LTE, ReattachCause::Recovery)]);
    let s = core.status(now);
    assert_eq!(
        (s.state, s.bound.as_deref()),
        (State::Attached, Some("lte"))
    );
    assert_eq!(s.last_switch.unwrap().trigger, "link_down");
    // A repeated signal is nothing new; no KEEPALIVE goes out on the dead link.
    core.on_link(WIFI, LinkSignal::Down(Down::LinkDown), now);
    assert!(core.out.is_empty());
    let (mut now, before) = (now, peer.sent.len());
    peer.run(&mut core, &mut now, 3_000);
    assert!(
        !peer.sent[before..].iter().any(|(t, _)| *t == WIFI),
        "nothing sent on a link that is down"
    );
    assert_eq!(
        bound(&core, now),
        "lte",
        "never back to a link that is down"
    );
}

#[test]
fn every_kernel_cause_is_named() {
    for (d, name) in [
        (Down::LinkDown, "link_down"),
        (Down::AddressLost, "address_lost"),
        (Down::NoRoute, "no_route"),
    ] {
        let (mut core, mut peer, now) = attached();
        core.on_link(WIFI, LinkSignal::Down(d), now);
        peer.serve(&mut core, now);
        assert_eq!(core.status(now).last_switch.unwrap().trigger, name);
    }
}

#[test]
fn a_link_back_is_probed_at_once_and_returned_to_per_policy() {
    let (mut core, mut peer, mut now) = attached();
    core.on_link(WIFI, LinkSignal::Down(Down::LinkDown), now);
    peer.serve(&mut core, now);
    peer.run(&mut core, &mut now, 500);
    let before = peer.sent.len();
    core.on_link(WIFI, LinkSignal::Up, now);
    peer.serve(&mut core, now);
    assert!(
        peer.sent[before..]
            .iter()
            .any(|(t, b)| *t == WIFI && matches!(b, Body::Keepalive { .. })),
        "probed at once"
    );
    assert!(
        peer.health_events()
            .contains(&("wifi".into(), "unknown".into(), "link_up".into()))
    );
    let up_at = now;
    peer.until(&mut core, &mut now, 3_000, |c, n| bound(c, n) == "wifi");
    // return_after_ms (2 s by default) of health first.
    assert!(now - up_at >= 2_000, "{}", now - up_at);
    assert_eq!(core.status(now).last_switch.unwrap().trigger, "return");
}

#[test]
fn a_new_address_on_the_bound_transport_rebinds_from_it() {
    let (mut core, mut peer, now) = attached();
    let new = v4([10, 0, 0, 7], 40000);
    core.on_link(WIFI, LinkSignal::Rebound(new), now);
    peer.serve(&mut core, now);
    assert_eq!(peer.requests(), [(WIFI, ReattachCause::AddressChanged)]);
    let s = core.status(now);
    assert_eq!((s.state, s.generation), (State::Attached, 2));
    assert_eq!(s.transports[WIFI].local, new.to_string());
    assert_eq!(s.last_switch.unwrap().trigger, "address_added");
}

#[test]
fn a_new_address_on_a_preferred_transport_is_taken_at_its_first_answer() {
    let (mut core, mut peer, mut now) = attached();
    core.on_link(WIFI, LinkSignal::Down(Down::AddressLost), now);
    peer.serve(&mut core, now);
    assert_eq!(bound(&core, now), "lte");
    peer.run(&mut core, &mut now, 200);
    let at = now;
    core.on_link(WIFI, LinkSignal::Rebound(v4([10, 0, 0, 7], 40000)), now);
    peer.serve(&mut core, now);
    peer.until(&mut core, &mut now, 500, |c, n| bound(c, n) == "wifi");
    assert!(now - at <= 50, "not return_after_ms: {} ms", now - at);
    assert_eq!(
        core.status(now).last_switch.unwrap().trigger,
        "address_added"
    );
}

#[test]
fn a_lossy_binding_is_left_once_for_a_healthy_transport() {
    let (mut core, mut peer, mut now) = attached();
    // 40 % of Wi-Fi's probes unanswered.
    peer.lose[WIFI] = vec![1, 3, 5, 7];
    peer.until(&mut core, &mut now, 3_000, |c, n| bound(c, n) == "lte");
    let sw = core.status(now).last_switch.unwrap();
    assert_eq!((sw.trigger.as_str(), sw.planned), ("quality", true));
    peer.run(&mut core, &mut now, 10_000);
    assert_eq!(
        bound(&core, now),
        "lte",
        "never back while Wi-Fi stays lossy"
    );
    let path: Vec<_> = peer.path().into_iter().map(|p| p.0).collect();
    assert_eq!(
        path,
        [State::Volatile, State::Recovering, State::Attached],
        "one VOLATILE, one move"
    );
    assert!(
        peer.health_events()
            .contains(&("wifi".into(), "volatile".into(), "loss".into()))
    );
}

#[test]
fn light_loss_changes_nothing() {
    let (mut core, mut peer, mut now) = attached();
    // 10 % of Wi-Fi's probes unanswered (half the threshold).
    peer.lose[WIFI] = vec![4];
    peer.run(&mut core, &mut now, 30_000);
    assert!(peer.path().is_empty(), "{:?}", peer.path());
    // 2 of the last 20 lost; the newest loss may not be due yet.
    assert!((5..=10).contains(&core.status(now).transports[WIFI].loss_pct));
}

#[test]
fn a_stall_of_the_agent_is_not_the_links_silence() {
    let (mut core, mut peer, mut now) = attached();
    // The agent could not run for 800 ms (past the loss TTL): nothing was read.
    stall(&mut core, &mut peer, &mut now, 800);
    assert!(peer.path().is_empty(), "{:?}", peer.path());
    assert_eq!(core.status(now).counters.stalls, 1);
}

#[test]
fn every_denied_reason_is_obeyed_with_its_backoff() {
    for d in Detail::ALL {
        let (mut core, mut peer, mut now) = attached();
        peer.deny = Some(d);
        core.on_link(WIFI, LinkSignal::Down(Down::LinkDown), now);
        peer.serve(&mut core, now);
        let path = peer.path();
        assert_eq!(
            path.last(),
            Some(&(State::Degraded, Reason::ReattachValidationFailed, Some(d))),
            "{d:?}: {path:?}"
        );
        let s = core.status(now);
        let lte = &s.transports[LTE];
        let want = match d {
            Detail::RateLimited => 1_000,
            Detail::Blacklisted => 60_000,
            _ => 2_000,
        };
        assert_eq!(lte.backoff_ms, want, "{d:?}");
        assert!(peer.events.iter().any(|e| matches!(
            e,
            EventRecord::TransportSwitchDenied { detail, .. } if *detail == d
        )));
        // Nothing is tried again before the back-off ends, and nothing falls back to
        // a new session.
        let n = peer.requests().len();
        peer.run(&mut core, &mut now, want.min(5_000) - 20);
        assert_eq!(
            peer.requests().len(),
            n,
            "{d:?}: retried during the back-off"
        );
        assert_eq!(core.status(now).sessions_established, 1);
    }
}

#[test]
fn an_unanswered_reattach_fails_as_transport_ttl_and_the_next_is_tried() {
    let (mut core, mut peer, mut now) = recovering_unanswered();
    peer.until(&mut core, &mut now, 600, |c, n| {
        state(c, n) == State::Degraded
    });
    assert_eq!(
        peer.path().last(),
        Some(&(
            State::Degraded,
            Reason::ReattachValidationFailed,
            Some(Detail::TransportTtl)
        ))
    );
    peer.ignore_requests = false;
    peer.until(&mut core, &mut now, 1_000, |c, n| bound(c, n) == "lte");
}

#[test]
fn close_terminates_with_its_reason_and_a_new_session_follows() {
    let (mut core, mut peer, mut now) = attached();
    let close = peer.gw.send(Body::close(Reason::Operator));
    core.on_datagram(WIFI, WIFI_GW, &close, now);
    peer.serve(&mut core, now);
    assert_eq!(
        peer.path().last().map(|p| (p.0, p.1)),
        Some((State::Terminated, Reason::Operator))
    );
    assert_eq!(core.session_id(), None);
    // reconnect = true: a fresh HELLO after a pause, never a silent fallback.
    let before = core.out.len();
    now += 999;
    core.tick(now);
    assert_eq!(core.out.len(), before, "not before RECONNECT_AFTER_MS");
    now += 1;
    core.tick(now);
    assert!(
        core.out.iter().any(|o| matches!(o, Out::Udp { data, .. } if data.get(1) == Some(&jvpn_common::wire::msg_type::HELLO))),
        "{:?}",
        core.out
    );
}

#[test]
fn the_recovery_window_ends_the_session_when_nothing_answers() {
    let (mut core, mut peer, mut now) = attached();
    peer.cut = [true, true];
    let window = u64::from(super::tests::HINT.recovery_window_ms);
    peer.until(&mut core, &mut now, window + 6_000, |c, _| {
        c.session_id().is_none()
    });
    assert_eq!(
        peer.path().last().map(|p| (p.0, p.1)),
        Some((State::Terminated, Reason::RecoveryWindowExpired))
    );
}

#[test]
fn the_session_ttl_ends_the_session_if_its_close_is_lost() {
    let (mut core, mut peer, _) = attached();
    let ttl_ms = u64::from(super::tests::HINT.session_ttl_s) * 1000;
    let now = T0 + 2 + ttl_ms + 5_000;
    core.tick(now);
    peer.serve(&mut core, now);
    assert_eq!(
        peer.path().last().map(|p| (p.0, p.1)),
        Some((State::Terminated, Reason::SessionTtlExpired))
    );
}

#[test]
fn an_operator_move_is_planned_and_refused_when_it_cannot_be() {
    let (mut core, mut peer, mut now) = attached();
    assert!(
        core.request_move("carrier-pigeon")
            .unwrap_err()
            .contains("no transport")
    );
    assert!(
        core.request_move("wifi")
            .unwrap_err()
            .contains("already bound")
    );
    core.request_move("lte").unwrap();
    peer.until(&mut core, &mut now, 100, |c, n| bound(c, n) == "lte");
    let sw = core.status(now).last_switch.unwrap();
    assert_eq!((sw.planned, sw.trigger.as_str()), (true, "operator"));
    assert_eq!(peer.requests(), [(LTE, ReattachCause::Planned)]);
}

/// The tunnel's DATA loses 40 % on Wi-Fi while every probe is answered (a policer
/// that spares small packets): the relay's count shows it, the session leaves for
/// LTE, and is not taken back in a loop though Wi-Fi's probes look clean: the hold
/// after a quality move (10 s, doubling).
#[test]
fn data_loss_the_probes_do_not_see_is_left_and_not_returned_to_in_a_loop() {
    let (mut core, mut peer, mut now) = attached();
    peer.lose_data = vec![1, 3, 5, 7];
    let pkt = inner(200);
    let feed = |core: &mut Core, peer: &mut Peer, now: &mut u64, ms: u64| {
        let end = *now + ms;
        while *now < end {
            *now += TICK;
            for _ in 0..3 {
                let outs = core.step(super::Input::Tun(&pkt), *now);
                core.out.extend(outs);
            }
            core.tick(*now);
            peer.serve(core, *now);
        }
    };
    let start = now;
    while bound(&core, now) != "lte" {
        assert!(now - start < 3_000, "not left: {:#?}", core.status(now));
        feed(&mut core, &mut peer, &mut now, 100);
    }
    assert_eq!(core.status(now).last_switch.unwrap().trigger, "quality");
    assert!(
        peer.health_events()
            .contains(&("wifi".into(), "volatile".into(), "loss".into()))
    );
    // Wi-Fi's probes are clean and its DATA samples age out: without the hold the
    // session would be back after return_after_ms (2 s) and leave again.
    let left = now;
    feed(&mut core, &mut peer, &mut now, 9_000);
    assert_eq!(
        bound(&core, now),
        "lte",
        "held back for 10 s after the quality move"
    );
    feed(&mut core, &mut peer, &mut now, 3_000);
    assert_eq!(bound(&core, now), "wifi", "tried again after the hold");
    assert!(now - left >= 10_000);
}

#[test]
fn a_new_address_on_the_transport_of_an_exchange_abandons_it() {
    let (mut core, mut peer, now) = attached();
    peer.ignore_requests = true;
    core.on_link(WIFI, LinkSignal::Down(Down::LinkDown), now);
    peer.serve(&mut core, now);
    assert_eq!(
        core.status(now).reattach.as_deref(),
        Some("lte (awaiting challenge)")
    );
    core.on_link(LTE, LinkSignal::Rebound(v4([10, 0, 1, 9], 40000)), now);
    peer.serve(&mut core, now);
    assert_eq!(
        peer.path().last(),
        Some(&(
            State::Degraded,
            Reason::ReattachValidationFailed,
            Some(Detail::TransportTtl)
        ))
    );
}

#[test]
fn a_stall_does_not_time_out_an_exchange_whose_answer_waits_unread() {
    let (mut core, mut peer, mut now) = recovering_unanswered();
    // The loop was stalled past the attempt timeout (500 ms).
    stall(&mut core, &mut peer, &mut now, 800);
    assert_eq!(state(&core, now), State::Recovering, "{:?}", peer.path());
}

// ---------------------------------------------------------------------------------
// Freshness without synchronized clocks, and cookies (docs/protocol.md)

/// ATTACHED, then every transport healthy (its KEEPALIVEs found fresh by the
/// gateway's clock), round trips measured as they are, and a planned move to LTE
/// whose REATTACH_REQUEST is stamped with the gateway's time.
fn attaches_probes_and_moves(core: &mut Core, peer: &mut Peer, now: &mut u64) {
    peer.serve(core, *now);
    assert_eq!(
        state(core, *now),
        State::Attached,
        "{:#?}",
        core.status(*now)
    );
    peer.until(core, now, 1_000, |c, n| {
        c.status(n)
            .transports
            .iter()
            .all(|t| t.health.name() == "healthy")
    });
    for t in core.status(*now).transports {
        let rtt = t.rtt_ms.expect("measured");
        // The peer answers at once: any offset mixed into the echo would show here.
        assert!(rtt < 1.0, "{}: RTT {rtt} ms", t.name);
    }
    core.request_move("lte").unwrap();
    peer.until(core, now, 1_000, |c, n| {
        bound(c, n) == "lte" && state(c, n) == State::Attached
    });
    assert_eq!(
        peer.hs().stale,
        0,
        "every timestamp was fresh at the gateway"
    );
    let gw_now = peer.hs().now(*now);
    let req_ts = peer
        .sent
        .iter()
        .rev()
        .find_map(|(_, b)| match b {
            Body::ReattachRequest(r) => Some(r.ts_ms),
            _ => None,
        })
        .expect("a REATTACH_REQUEST");
    assert!(gw_now.abs_diff(req_ts) < 1_000, "{req_ts} vs {gw_now}");
}

#[test]
fn a_skewed_clock_learns_the_gateway_time_from_time_and_attaches() {
    const HOUR: i64 = 3_600_000;
    // The client's clock ahead by 60 s, 1 h, a year; behind by 60 s; and right.
    for ahead in [60_000, HOUR, 365 * 24 * HOUR, -60_000, 0] {
        let (mut core, mut peer) = Peer::before_session(-ahead);
        let mut now = T0;
        attaches_probes_and_moves(&mut core, &mut peer, &mut now);
        let s = core.status(now);
        assert_eq!(s.clock_offset_ms, -ahead, "client ahead by {ahead} ms");
        if ahead == 0 {
            assert_eq!(peer.hs().hellos, [("welcome", 172)]);
            assert_eq!(s.counters.time_replies, 0);
            assert_eq!(s.clock_offset_source, None);
        } else {
            // One stale HELLO, its TIME, and at once the next HELLO, welcomed.
            assert_eq!(peer.hs().hellos, [("time", 172), ("welcome", 172)]);
            assert_eq!(s.counters.time_replies, 1);
            assert_eq!(
                s.clock_offset_source.as_deref(),
                Some("TIME from 10.0.0.1:51820")
            );
        }
        assert_eq!(s.counters.time_refused, 0);
    }
}

#[test]
fn a_hello_from_before_the_gateway_started_gets_time_too() {
    // The gateway started 2 s ago; the client is 10 s behind (within the window).
    let (mut core, mut peer) = Peer::before_session(10_000);
    let hs = peer.hs.as_mut().unwrap();
    hs.started_ms = hs.now(T0) - 2_000;
    let mut now = T0;
    attaches_probes_and_moves(&mut core, &mut peer, &mut now);
    assert_eq!(peer.hs().hellos, [("time", 172), ("welcome", 172)]);
    assert_eq!(core.status(now).clock_offset_ms, 10_000);
}

#[test]
fn a_welcome_far_from_our_time_sets_the_offset_and_a_near_one_does_not() {
    // 20 s ahead: within the freshness window (no TIME), beyond a quarter of it.
    let (mut core, mut peer) = Peer::before_session(-20_000);
    let mut now = T0;
    attaches_probes_and_moves(&mut core, &mut peer, &mut now);
    assert_eq!(peer.hs().hellos, [("welcome", 172)]);
    let s = core.status(now);
    assert_eq!(s.clock_offset_ms, -20_000);
    assert_eq!(
        s.clock_offset_source.as_deref(),
        Some("WELCOME from 10.0.0.1:51820")
    );
    let (mut core, mut peer) = Peer::before_session(5_000);
    peer.serve(&mut core, T0);
    assert_eq!(state(&core, T0), State::Attached);
    assert_eq!(core.status(T0).clock_offset_ms, 0);
}

#[test]
fn under_load_the_hello_is_sent_again_with_the_cookie_and_the_transcript_covers_it() {
    let (mut core, mut peer) = Peer::before_session(0);
    peer.hs.as_mut().unwrap().under_load = true;
    let mut now = T0;
    attaches_probes_and_moves(&mut core, &mut peer, &mut now);
    // The WELCOME signs, and both sides' keys come from, the 188-byte HELLO.
    assert_eq!(peer.hs().hellos, [("cookie", 172), ("welcome", 188)]);
    let s = core.status(now);
    assert_eq!((s.counters.cookies, s.counters.cookie_refused), (1, 0));
    assert!(s.transports[WIFI].cookie && !s.transports[LTE].cookie);
}

#[test]
fn a_skewed_client_under_load_needs_one_cookie_and_one_time() {
    let (mut core, mut peer) = Peer::before_session(-3_600_000);
    peer.hs.as_mut().unwrap().under_load = true;
    let mut now = T0;
    attaches_probes_and_moves(&mut core, &mut peer, &mut now);
    // The TIME is signed over the HELLO as received, cookie included.
    assert_eq!(
        peer.hs().hellos,
        [("cookie", 172), ("time", 188), ("welcome", 188)]
    );
    assert_eq!(core.status(now).clock_offset_ms, -3_600_000);
}

/// Keepalives (not path-MTU probes) sent on transport `t` since the log was cleared.
fn keepalives(peer: &Peer, t: usize) -> usize {
    peer.sent
        .iter()
        .filter(|(x, b)| *x == t && matches!(b, Body::Keepalive { pad: 0, .. }))
        .count()
}

/// One inner packet into the tunnel, then a served tick.
fn send_data(core: &mut Core, peer: &mut Peer, now: u64) {
    let outs = core.step(super::Input::Tun(&inner(200)), now);
    core.out.extend(outs);
    core.tick(now);
    peer.serve(core, now);
}

#[test]
fn an_idle_tunnel_keepalives_slowly_and_its_first_data_probes_at_once() {
    let (mut core, mut peer, mut now) = attached();
    // No data for idle_after_ms (10 s): idle from then on.
    peer.run(&mut core, &mut now, 10_000);
    peer.sent.clear();
    peer.run(&mut core, &mut now, 60_000);
    // Every 15 s on the binding, every 25 s on the standby transport.
    assert!(
        (3..=5).contains(&keepalives(&peer, WIFI)),
        "{:?}",
        peer.sent
    );
    assert!((2..=3).contains(&keepalives(&peer, LTE)), "{:?}", peer.sent);
    assert!(
        peer.path().is_empty(),
        "no state change while idle: {:?}",
        peer.path()
    );
    assert!(
        peer.health_events().is_empty(),
        "slow keepalives are no silence: {:?}",
        peer.health_events()
    );

    // Data again: every transport probed at once, then the fast schedule, healthy.
    peer.sent.clear();
    send_data(&mut core, &mut peer, now);
    assert_eq!((keepalives(&peer, WIFI), keepalives(&peer, LTE)), (1, 1));
    for _ in 0..100 {
        now += TICK;
        send_data(&mut core, &mut peer, now);
    }
    assert!(keepalives(&peer, WIFI) >= 9, "{}", keepalives(&peer, WIFI));
    assert!(peer.path().is_empty(), "{:?}", peer.path());
    assert_eq!(state(&core, now), State::Attached);
}

#[test]
fn a_binding_that_died_while_idle_is_left_soon_after_data_starts() {
    let (mut core, mut peer, mut now) = attached();
    peer.run(&mut core, &mut now, 11_000);
    // Wi-Fi turns into a black hole while nothing is sent: unnoticed until data.
    peer.cut[WIFI] = true;
    peer.run(&mut core, &mut now, 10_000);
    assert_eq!(state(&core, now), State::Attached);
    let start = now;
    while bound(&core, now) != "lte" {
        assert!(now - start < 5_000, "not left: {:#?}", core.status(now));
        now += TICK;
        send_data(&mut core, &mut peer, now);
    }
    // The fast thresholds from the first packet: well within the loss TTL.
    assert!(now - start <= 3_500, "left after {} ms", now - start);
}
