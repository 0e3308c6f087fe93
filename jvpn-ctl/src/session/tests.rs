//! One test per row of the transition table in `machine.rs`, the refusals that mutate
//! nothing, and the policy file.

use std::net::SocketAddr;

use super::machine::{NONCE_CACHE, next_generation};
use super::*;

const T0: u64 = 1_000_000;
const ID: u64 = 0xfeed;

fn a(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 4000 + u16::from(n)))
}

fn pol() -> Policy {
    Policy::default()
}

fn run(s: &Session, e: Event, now: u64) -> Step {
    step(s, &e, &pol(), now)
}

fn run_p(s: &Session, e: Event, p: &Policy, now: u64) -> Step {
    step(s, &e, p, now)
}

fn sc(from: State, to: State, reason: Reason, detail: Option<Detail>, version: u64) -> Action {
    Action::Emit(Notice::StateChange {
        from,
        to,
        reason,
        detail,
        version,
    })
}

fn sec(from: SocketAddr, detail: Detail) -> Vec<Action> {
    vec![Action::Emit(Notice::Security { from, detail })]
}

fn denied_notice(candidate: SocketAddr, detail: Detail) -> Action {
    Action::Emit(Notice::TransportSwitchDenied { candidate, detail })
}

/// A proper request: authenticated, `ts == now`, nonce and challenge made of `tag`.
fn req(from: SocketAddr, seq: u64, now: u64, tag: u8) -> Event {
    Event::ReattachRequest(request(from, seq, now, tag))
}

fn request(from: SocketAddr, seq: u64, now: u64, tag: u8) -> Request {
    Request {
        from,
        seq,
        ts_ms: now,
        nonce: [tag; 16],
        proof_ok: true,
        blacklisted: false,
        challenge: [tag; 16],
        address_changed: false,
    }
}

fn confirm(from: SocketAddr, tag: u8) -> Event {
    Event::ReattachConfirm {
        from,
        challenge: [tag; 16],
        mac_ok: true,
    }
}

fn birth() -> Session {
    Session::new(ID, T0)
}

/// ATTACHED on `a(1)`, generation 1, version 1, `last_rx_ms == T0`.
fn attached() -> Session {
    run(&birth(), Event::Confirmed { binding: a(1) }, T0).session
}

/// `s` after its binding has been silent past every loss TTL, ticked at `at`.
fn silent_until(s: &Session, at: u64) -> Session {
    let mut s = s.clone();
    s.last_rx_ms = at - pol().idle_loss_ttl_ms.max(pol().transport_loss_ttl_ms) - 1;
    run(&s, Event::Tick, at).session
}

/// VOLATILE since `at` (version 2).
fn volatile(at: u64) -> Session {
    let s = silent_until(&attached(), at);
    assert_eq!(s.state, State::Volatile);
    assert_eq!(s.left_attached_ms, Some(at));
    s
}

/// RECOVERING since `at` with `a(2)` pending (challenge tag 1, version 3).
fn recovering(at: u64) -> Session {
    let s = run(&attached(), req(a(2), 1, at, 1), at).session;
    assert_eq!(s.state, State::Recovering);
    s
}

/// DEGRADED since `at` (version 4): a swap to `a(2)` failed.
fn degraded(at: u64) -> Session {
    let s = run(&recovering(at), Event::SwapFailed { candidate: a(2) }, at).session;
    assert_eq!(s.state, State::Degraded);
    s
}

fn all_events() -> Vec<Event> {
    vec![
        Event::Tick,
        Event::Confirmed { binding: a(1) },
        Event::BoundTraffic,
        req(a(2), 99, T0, 9),
        confirm(a(2), 1),
        Event::SwapFailed { candidate: a(2) },
        Event::Close,
        Event::OperatorKill,
        Event::PeerRemoved,
    ]
}

// ---------------------------------------------------------------------------------------
// Timer rows

#[test]
fn timer_birth_timeout() {
    let p = pol();
    let s = birth();
    let before = run(&s, Event::Tick, T0 + p.handshake_timeout_ms - 1);
    assert_eq!(before.session, s);
    assert!(before.actions.is_empty());
    assert_eq!(before.reason, None);

    let st = run(&s, Event::Tick, T0 + p.handshake_timeout_ms);
    assert_eq!(st.session.state, State::Terminated);
    assert_eq!(st.session.version, 1);
    assert_eq!(st.reason, Some(Reason::BirthTimeout));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Birth,
                State::Terminated,
                Reason::BirthTimeout,
                None,
                1
            ),
            Action::Teardown,
        ]
    );
    assert_eq!(st.session.binding, None);
}

#[test]
fn timer_birth_timeout_beats_late_confirm() {
    let st = run(&birth(), Event::Confirmed { binding: a(1) }, T0 + 5_000);
    assert_eq!(st.session.state, State::Terminated);
    assert_eq!(st.reason, Some(Reason::BirthTimeout));
    assert_eq!(st.session.binding, None);
    assert!(
        !st.actions
            .iter()
            .any(|x| matches!(x, Action::Emit(Notice::TransportSwitch { .. })))
    );
}

#[test]
fn timer_session_ttl_expired() {
    let p = Policy {
        session_ttl_s: 10,
        transport_loss_ttl_ms: 20_000,
        ..pol()
    };
    let s = attached();
    // The transport stays healthy, so only the TTL can fire.
    let s = run_p(&s, Event::BoundTraffic, &p, T0 + 9_999).session;
    assert_eq!(run_p(&s, Event::Tick, &p, T0 + 9_999).session, s);
    let st = run_p(&s, Event::Tick, &p, T0 + 10_000);
    assert_eq!(st.session.state, State::Terminated);
    assert_eq!(st.session.version, 2);
    assert_eq!(st.reason, Some(Reason::SessionTtlExpired));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Attached,
                State::Terminated,
                Reason::SessionTtlExpired,
                None,
                2
            ),
            Action::SendClose {
                reason: Reason::SessionTtlExpired
            },
            Action::Teardown,
        ]
    );
}

#[test]
fn timer_session_ttl_expired_in_birth_sends_no_close() {
    // A handshake timeout longer than the TTL: the TTL fires first.
    let p = Policy {
        session_ttl_s: 1,
        handshake_timeout_ms: 5_000,
        ..pol()
    };
    let st = run_p(&birth(), Event::Tick, &p, T0 + 1_000);
    assert_eq!(st.reason, Some(Reason::SessionTtlExpired));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Birth,
                State::Terminated,
                Reason::SessionTtlExpired,
                None,
                1
            ),
            Action::Teardown,
        ]
    );
}

#[test]
fn timer_recovery_window_expired() {
    let w = pol().max_recovery_window_ms;
    let left = T0 + 1_000;
    for (s, v) in [
        (volatile(left), 2),
        (recovering(left), 3),
        (degraded(left), 4),
    ] {
        let from = s.state;
        assert_eq!(s.left_attached_ms, Some(left));
        let early = run(&s, Event::Tick, left + w - 1);
        // RECOVERING's candidate TTL is shorter than the window; only check the window.
        assert_ne!(early.session.state, State::Terminated, "{from:?}");

        let st = run(&s, Event::Tick, left + w);
        assert_eq!(st.session.state, State::Terminated, "{from:?}");
        assert_eq!(st.session.version, v + 1);
        assert_eq!(st.session.pending, None);
        assert_eq!(st.reason, Some(Reason::RecoveryWindowExpired));
        assert_eq!(
            st.actions,
            vec![
                sc(
                    from,
                    State::Terminated,
                    Reason::RecoveryWindowExpired,
                    None,
                    v + 1
                ),
                Action::SendClose {
                    reason: Reason::RecoveryWindowExpired
                },
                Action::Teardown,
            ]
        );
    }
}

#[test]
fn timer_candidate_ttl_expired() {
    let p = pol();
    let s = recovering(T0 + 1_000);
    let exp = s.pending.as_ref().unwrap().expires_ms;
    assert_eq!(exp, T0 + 1_000 + p.candidate_ttl_ms);
    assert_eq!(run(&s, Event::Tick, exp - 1).session, s);

    let st = run(&s, Event::Tick, exp);
    assert_eq!(st.session.state, State::Degraded);
    assert_eq!(st.session.version, 4);
    assert_eq!(st.session.pending, None);
    assert_eq!(st.session.binding, Some(a(1)));
    assert_eq!(st.session.generation, 1);
    assert_eq!(st.session.left_attached_ms, Some(T0 + 1_000));
    assert_eq!(st.reason, Some(Reason::ReattachValidationFailed));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Recovering,
                State::Degraded,
                Reason::ReattachValidationFailed,
                Some(Detail::TransportTtl),
                4
            ),
            denied_notice(a(2), Detail::TransportTtl),
        ]
    );
}

/// [`attached`], with tunnel data at `T0`: its silence is judged by the short TTL.
fn active() -> Session {
    let s = run(&attached(), Event::BoundData, T0).session;
    assert_eq!((s.last_data_ms, s.last_rx_ms), (T0, T0));
    s
}

#[test]
fn timer_attached_silence_transport_volatile() {
    let ttl = pol().transport_loss_ttl_ms;
    let s = active();
    assert_eq!(run(&s, Event::Tick, T0 + ttl).session, s);
    let st = run(&s, Event::Tick, T0 + ttl + 1);
    assert_eq!(st.session.state, State::Volatile);
    assert_eq!(st.session.version, 2);
    assert_eq!(st.session.left_attached_ms, Some(T0 + ttl + 1));
    assert_eq!(st.reason, Some(Reason::TransportVolatile));
    assert_eq!(
        st.actions,
        vec![sc(
            State::Attached,
            State::Volatile,
            Reason::TransportVolatile,
            None,
            2
        )]
    );
}

// ---------------------------------------------------------------------------------------
// Confirmed

#[test]
fn confirmed_birth_complete() {
    let st = run(&birth(), Event::Confirmed { binding: a(1) }, T0 + 100);
    let s = &st.session;
    assert_eq!(s.state, State::Attached);
    assert_eq!(s.version, 1);
    assert_eq!(s.binding, Some(a(1)));
    assert_eq!(s.generation, 1);
    assert_eq!(s.last_rx_ms, T0 + 100);
    assert_eq!(s.left_attached_ms, None);
    assert_eq!(st.reason, Some(Reason::BirthComplete));
    // The forwarding entry first: the step is committed only if it was written.
    assert_eq!(
        st.actions,
        vec![
            Action::SwapBinding {
                new: a(1),
                generation: 1
            },
            sc(
                State::Birth,
                State::Attached,
                Reason::BirthComplete,
                None,
                1
            ),
            Action::Emit(Notice::TransportSwitch {
                old: None,
                new: a(1),
                generation: 1
            }),
        ]
    );
}

/// The data plane refused BIRTH's entry: the session waits in BIRTH, unchanged,
/// for a repeated CONFIRM or its handshake timeout.
#[test]
fn swap_failed_in_birth_changes_nothing() {
    let b = birth();
    let st = run(&b, Event::SwapFailed { candidate: a(1) }, T0 + 100);
    assert_eq!(st.session, b);
    assert!(st.actions.is_empty());
    let again = run(&st.session, Event::Confirmed { binding: a(1) }, T0 + 200);
    assert_eq!(again.session.state, State::Attached);
}

#[test]
fn confirmed_outside_birth_is_ignored() {
    for s in [
        attached(),
        volatile(T0 + 1),
        recovering(T0 + 1),
        degraded(T0 + 1),
    ] {
        let st = run(&s, Event::Confirmed { binding: a(3) }, T0 + 2);
        assert_eq!(st.session, s);
        assert!(st.actions.is_empty());
        assert_eq!(st.reason, None);
    }
}

// ---------------------------------------------------------------------------------------
// BoundTraffic

#[test]
fn bound_traffic_attached_refreshes_last_rx_without_transition() {
    let s = attached();
    let st = run(&s, Event::BoundTraffic, T0 + 2_000);
    assert_eq!(st.session.last_rx_ms, T0 + 2_000);
    assert_eq!(st.session.version, s.version);
    assert_eq!(st.session.state, State::Attached);
    assert!(st.actions.is_empty());
    assert_eq!(st.reason, None);
}

#[test]
fn bound_traffic_volatile_transport_recovered() {
    let st = run(&volatile(T0 + 1_000), Event::BoundTraffic, T0 + 1_500);
    assert_eq!(st.session.state, State::Attached);
    assert_eq!(st.session.version, 3);
    assert_eq!(st.session.left_attached_ms, None);
    assert_eq!(st.session.last_rx_ms, T0 + 1_500);
    assert_eq!(st.reason, Some(Reason::TransportRecovered));
    assert_eq!(
        st.actions,
        vec![sc(
            State::Volatile,
            State::Attached,
            Reason::TransportRecovered,
            None,
            3
        )]
    );
}

#[test]
fn bound_traffic_degraded_transport_recovered() {
    let st = run(&degraded(T0 + 1_000), Event::BoundTraffic, T0 + 1_500);
    assert_eq!(st.session.state, State::Attached);
    assert_eq!(st.session.version, 5);
    assert_eq!(st.session.left_attached_ms, None);
    assert_eq!(st.session.binding, Some(a(1)));
    assert_eq!(st.session.generation, 1);
    assert_eq!(
        st.actions,
        vec![sc(
            State::Degraded,
            State::Attached,
            Reason::TransportRecovered,
            None,
            5
        )]
    );
}

#[test]
fn bound_traffic_recovering_only_refreshes_last_rx() {
    let s = recovering(T0 + 1_000);
    let st = run(&s, Event::BoundTraffic, T0 + 1_500);
    assert_eq!(st.session.state, State::Recovering);
    assert_eq!(st.session.version, s.version);
    assert_eq!(st.session.pending, s.pending);
    assert_eq!(st.session.last_rx_ms, T0 + 1_500);
    assert!(st.actions.is_empty());
    assert_eq!(
        Session {
            last_rx_ms: s.last_rx_ms,
            ..st.session
        },
        s
    );
}

#[test]
fn idle_silence_is_judged_by_the_idle_ttl() {
    let p = pol();
    // Never any data: the idle TTL from the start.
    let s = attached();
    let idle = p.idle_loss_ttl_ms;
    assert_eq!(next_deadline(&s, &p), Some(T0 + idle + 1));
    assert_eq!(run(&s, Event::Tick, T0 + idle).session, s);
    assert_eq!(
        run(&s, Event::Tick, T0 + idle + 1).session.state,
        State::Volatile
    );

    // Data at T0, a keepalive at +1 s: the short TTL still applies 3 s later, since
    // data is still recent then.
    let s = run(&active(), Event::BoundTraffic, T0 + 1_000).session;
    let short = T0 + 1_000 + p.transport_loss_ttl_ms + 1;
    assert!(short - T0 <= p.idle_after_ms);
    assert_eq!(next_deadline(&s, &p), Some(short));
    assert_eq!(run(&s, Event::Tick, short - 1).session, s);
    assert_eq!(run(&s, Event::Tick, short).session.state, State::Volatile);

    // A keepalive at +3 s: by the time the short TTL runs out the data is old, so the
    // session is idle and its keepalives may be rare.
    let s = run(&active(), Event::BoundTraffic, T0 + 3_000).session;
    let at = T0 + 3_000 + idle + 1;
    assert_eq!(next_deadline(&s, &p), Some(at));
    for t in [T0 + 6_001, T0 + 20_000, at - 1] {
        assert_eq!(run(&s, Event::Tick, t).session, s, "at +{}", t - T0);
    }
    assert_eq!(run(&s, Event::Tick, at).session.state, State::Volatile);

    // Keepalives alone never make a session active again; data does.
    let s = run(&s, Event::BoundData, T0 + 30_000).session;
    assert_eq!(s.last_data_ms, T0 + 30_000);
    assert_eq!(
        next_deadline(&s, &p),
        Some(T0 + 30_000 + p.transport_loss_ttl_ms + 1)
    );
}

#[test]
fn bound_traffic_after_silence_goes_volatile_then_recovers() {
    // Timers first: the silence is noticed, then the traffic heals it.
    let st = run(&active(), Event::BoundTraffic, T0 + 4_000);
    assert_eq!(st.session.state, State::Attached);
    assert_eq!(st.session.version, 3);
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Attached,
                State::Volatile,
                Reason::TransportVolatile,
                None,
                2
            ),
            sc(
                State::Volatile,
                State::Attached,
                Reason::TransportRecovered,
                None,
                3
            ),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// ReattachRequest

#[test]
fn reattach_request_attached_client_reported_loss_then_reattach_started() {
    let now = T0 + 500;
    let st = run(&attached(), req(a(2), 1, now, 1), now);
    let s = &st.session;
    assert_eq!(s.state, State::Recovering);
    assert_eq!(s.version, 3);
    assert_eq!(s.left_attached_ms, Some(now));
    assert_eq!(s.binding, Some(a(1)));
    assert_eq!(s.generation, 1);
    assert_eq!(s.last_reattach_seq, 1);
    assert_eq!(
        s.nonces.iter().copied().collect::<Vec<_>>(),
        vec![(now + 30_000, [1; 16])]
    );
    assert_eq!(
        s.pending,
        Some(Candidate {
            addr: a(2),
            challenge: [1; 16],
            seq: 1,
            expires_ms: now + 2_000
        })
    );
    assert_eq!(st.reason, Some(Reason::ReattachStarted));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Attached,
                State::Volatile,
                Reason::ClientReportedLoss,
                None,
                2
            ),
            sc(
                State::Volatile,
                State::Recovering,
                Reason::ReattachStarted,
                None,
                3
            ),
            Action::SendChallenge {
                to: a(2),
                challenge: [1; 16]
            },
        ]
    );
}

/// A rebinding (the client's transport reaches the gateway from a new address) is
/// the same exchange, reason-coded `address_changed` where it enters RECOVERING.
#[test]
fn reattach_request_address_changed() {
    let now = T0 + 500;
    let mut r = request(a(2), 1, now, 1);
    r.address_changed = true;
    let st = run(&attached(), Event::ReattachRequest(r.clone()), now);
    assert_eq!(st.session.state, State::Recovering);
    assert_eq!(st.reason, Some(Reason::AddressChanged));
    assert_eq!(
        st.actions[..2],
        [
            sc(
                State::Attached,
                State::Volatile,
                Reason::ClientReportedLoss,
                None,
                2
            ),
            sc(
                State::Volatile,
                State::Recovering,
                Reason::AddressChanged,
                None,
                3
            ),
        ]
    );
    let st = run(&volatile(T0 + 100), Event::ReattachRequest(r), now);
    assert_eq!(st.reason, Some(Reason::AddressChanged));
    assert_eq!(st.session.pending.as_ref().unwrap().addr, a(2));
}

#[test]
fn reattach_request_volatile_reattach_started() {
    let st = run(&volatile(T0 + 100), req(a(3), 5, T0 + 200, 4), T0 + 200);
    assert_eq!(st.session.state, State::Recovering);
    assert_eq!(st.session.version, 3);
    assert_eq!(st.session.left_attached_ms, Some(T0 + 100));
    assert_eq!(st.session.pending.as_ref().unwrap().addr, a(3));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Volatile,
                State::Recovering,
                Reason::ReattachStarted,
                None,
                3
            ),
            Action::SendChallenge {
                to: a(3),
                challenge: [4; 16]
            },
        ]
    );
}

#[test]
fn reattach_request_degraded_reattach_started() {
    let st = run(&degraded(T0 + 100), req(a(3), 2, T0 + 200, 4), T0 + 200);
    assert_eq!(st.session.state, State::Recovering);
    assert_eq!(st.session.version, 5);
    assert_eq!(st.session.left_attached_ms, Some(T0 + 100));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Degraded,
                State::Recovering,
                Reason::ReattachStarted,
                None,
                5
            ),
            Action::SendChallenge {
                to: a(3),
                challenge: [4; 16]
            },
        ]
    );
}

#[test]
fn reattach_request_recovering_replaces_pending() {
    let s = recovering(T0 + 100);
    let st = run(&s, req(a(3), 2, T0 + 300, 7), T0 + 300);
    assert_eq!(st.session.state, State::Recovering);
    assert_eq!(st.session.version, 4);
    assert_eq!(
        st.session.pending,
        Some(Candidate {
            addr: a(3),
            challenge: [7; 16],
            seq: 2,
            expires_ms: T0 + 300 + 2_000
        })
    );
    assert_eq!(st.session.nonces.len(), 2);
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Recovering,
                State::Recovering,
                Reason::ReattachStarted,
                None,
                4
            ),
            Action::SendChallenge {
                to: a(3),
                challenge: [7; 16]
            },
        ]
    );
    // The old candidate's confirm is no longer valid.
    let old = run(&st.session, confirm(a(2), 1), T0 + 400);
    assert_eq!(old.session, st.session);
    assert_eq!(old.actions, sec(a(2), Detail::ProofInvalid));
}

#[test]
fn reattach_request_in_birth_is_ignored() {
    let s = birth();
    let st = run(&s, req(a(2), 1, T0, 1), T0);
    assert_eq!(st.session, s);
    assert!(st.actions.is_empty());
}

#[test]
fn reattach_request_rate_limited() {
    let p = Policy {
        max_switches_per_minute: 1,
        ..pol()
    };
    let t1 = T0 + 100;
    let s = run_p(&attached(), req(a(2), 1, t1, 1), &p, t1).session;
    let s = run_p(&s, confirm(a(2), 1), &p, t1).session;
    assert_eq!(s.switches.iter().copied().collect::<Vec<_>>(), vec![t1]);
    let t2 = t1 + 1_000;
    let s = run_p(&s, Event::BoundTraffic, &p, t2).session;
    let st = run_p(&s, req(a(3), 2, t2, 2), &p, t2);
    assert_eq!(st.session.state, State::Degraded);
    assert_eq!(st.session.version, s.version + 3);
    assert_eq!(st.session.pending, None);
    assert_eq!(st.session.binding, Some(a(2)));
    assert_eq!(st.session.left_attached_ms, Some(t2));
    assert_eq!(st.reason, Some(Reason::ReattachValidationFailed));
    let v = s.version;
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Attached,
                State::Volatile,
                Reason::ClientReportedLoss,
                None,
                v + 1
            ),
            sc(
                State::Volatile,
                State::Recovering,
                Reason::ReattachStarted,
                None,
                v + 2
            ),
            sc(
                State::Recovering,
                State::Degraded,
                Reason::ReattachValidationFailed,
                Some(Detail::RateLimited),
                v + 3
            ),
            Action::SendDenied {
                to: a(3),
                detail: Detail::RateLimited
            },
            denied_notice(a(3), Detail::RateLimited),
        ]
    );

    // The switch leaves the sliding window 60 s later.
    let s = run_p(&s, Event::BoundTraffic, &p, t1 + 59_999).session;
    let still = run_p(&s, req(a(3), 3, t1 + 59_999, 3), &p, t1 + 59_999);
    assert_eq!(still.session.state, State::Degraded);
    let s = run_p(&s, Event::BoundTraffic, &p, t1 + 60_000).session;
    let ok = run_p(&s, req(a(3), 3, t1 + 60_000, 3), &p, t1 + 60_000);
    assert_eq!(ok.session.state, State::Recovering);
    assert!(ok.session.switches.is_empty());
    assert!(matches!(
        ok.actions.last(),
        Some(Action::SendChallenge { .. })
    ));
}

#[test]
fn reattach_request_blacklisted() {
    let now = T0 + 100;
    let mut r = request(a(9), 1, now, 1);
    r.blacklisted = true;
    let st = run(&volatile(T0 + 50), Event::ReattachRequest(r), now);
    assert_eq!(st.session.state, State::Degraded);
    assert_eq!(st.session.pending, None);
    assert_eq!(st.session.last_reattach_seq, 1);
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Volatile,
                State::Recovering,
                Reason::ReattachStarted,
                None,
                3
            ),
            sc(
                State::Recovering,
                State::Degraded,
                Reason::ReattachValidationFailed,
                Some(Detail::Blacklisted),
                4
            ),
            Action::SendDenied {
                to: a(9),
                detail: Detail::Blacklisted
            },
            denied_notice(a(9), Detail::Blacklisted),
        ]
    );
}

#[test]
fn reattach_request_rate_limit_checked_before_blacklist() {
    let p = Policy {
        max_switches_per_minute: 1,
        ..pol()
    };
    let mut s = volatile(T0 + 50);
    s.switches.push_back(T0);
    let mut r = request(a(9), 1, T0 + 100, 1);
    r.blacklisted = true;
    let st = run_p(&s, Event::ReattachRequest(r), &p, T0 + 100);
    assert!(
        st.actions
            .contains(&denied_notice(a(9), Detail::RateLimited))
    );
}

#[test]
fn reattach_request_applies_timers_first() {
    // The pending candidate expired: transport_ttl first, then the new request.
    let s = recovering(T0 + 100);
    let now = T0 + 100 + 2_000;
    let st = run(&s, req(a(3), 2, now, 3), now);
    assert_eq!(st.session.state, State::Recovering);
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Recovering,
                State::Degraded,
                Reason::ReattachValidationFailed,
                Some(Detail::TransportTtl),
                4
            ),
            denied_notice(a(2), Detail::TransportTtl),
            sc(
                State::Degraded,
                State::Recovering,
                Reason::ReattachStarted,
                None,
                5
            ),
            Action::SendChallenge {
                to: a(3),
                challenge: [3; 16]
            },
        ]
    );
}

#[test]
fn reattach_request_after_window_terminates_without_reply() {
    let s = volatile(T0 + 100);
    let now = T0 + 100 + pol().max_recovery_window_ms;
    let st = run(&s, req(a(3), 2, now, 3), now);
    assert_eq!(st.session.state, State::Terminated);
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Volatile,
                State::Terminated,
                Reason::RecoveryWindowExpired,
                None,
                3
            ),
            Action::SendClose {
                reason: Reason::RecoveryWindowExpired
            },
            Action::Teardown,
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Refusals that mutate nothing

fn assert_refused(s: &Session, e: Event, now: u64, from: SocketAddr, detail: Detail) {
    let st = run(s, e, now);
    assert_eq!(&st.session, s);
    assert_eq!(st.actions, sec(from, detail));
    assert_eq!(st.reason, None);
}

/// Sessions in every live state past BIRTH, each with a used nonce (tag 1) and
/// `last_reattach_seq == 1`.
fn live_sessions() -> Vec<Session> {
    let r = recovering(T0 + 100);
    let d = degraded(T0 + 100);
    let att = run(&r, confirm(a(2), 1), T0 + 100).session;
    let v = silent_until(&att, T0 + 100);
    assert_eq!(
        [r.state, d.state, att.state, v.state],
        [
            State::Recovering,
            State::Degraded,
            State::Attached,
            State::Volatile
        ]
    );
    vec![r, d, att, v]
}

#[test]
fn refused_bad_proof() {
    for s in live_sessions() {
        let mut r = request(a(5), 10, T0 + 200, 9);
        r.proof_ok = false;
        assert_refused(
            &s,
            Event::ReattachRequest(r),
            T0 + 200,
            a(5),
            Detail::ProofInvalid,
        );
    }
}

#[test]
fn refused_stale_timestamp_both_directions() {
    let w = pol().freshness_window_ms;
    let now = T0 + 200;
    for s in live_sessions() {
        for ts in [now - w - 1, now + w + 1] {
            let mut r = request(a(5), 10, now, 9);
            r.ts_ms = ts;
            assert_refused(
                &s,
                Event::ReattachRequest(r),
                now,
                a(5),
                Detail::FreshnessExpired,
            );
        }
        // Exactly at the edge of the window is still fresh.
        for ts in [now - w, now + w] {
            let mut r = request(a(5), 10, now, 9);
            r.ts_ms = ts;
            let st = run(&s, Event::ReattachRequest(r), now);
            assert_ne!(st.session, s);
        }
    }
}

#[test]
fn refused_replayed_nonce() {
    for s in live_sessions() {
        assert!(s.nonces.iter().any(|(_, n)| *n == [1; 16]));
        // Higher sequence, same nonce.
        assert_refused(
            &s,
            req(a(5), 10, T0 + 200, 1),
            T0 + 200,
            a(5),
            Detail::Replay,
        );
    }
}

#[test]
fn refused_sequence_not_above_last() {
    for s in live_sessions() {
        assert_eq!(s.last_reattach_seq, 1);
        for seq in [0, 1] {
            assert_refused(
                &s,
                req(a(5), seq, T0 + 200, 9),
                T0 + 200,
                a(5),
                Detail::Replay,
            );
        }
    }
}

#[test]
fn refusals_do_not_run_timers() {
    // Even with every timer overdue, a refused request changes nothing.
    let s = recovering(T0 + 100);
    let now = T0 + 100 + pol().max_recovery_window_ms + 5;
    let mut r = request(a(5), 10, now, 9);
    r.proof_ok = false;
    assert_refused(
        &s,
        Event::ReattachRequest(r),
        now,
        a(5),
        Detail::ProofInvalid,
    );
    assert_refused(&s, confirm(a(5), 1), now, a(5), Detail::ProofInvalid);
}

#[test]
fn expired_nonce_is_forgotten_but_sequence_still_guards() {
    let s = recovering(T0 + 100);
    let w = pol().freshness_window_ms;
    let later = T0 + 100 + w;
    // The nonce entry expired at T0+100+w; a new seq with the same nonce is accepted
    // (but the recovery window has run out by then, so refresh the scenario).
    let mut s2 = s.clone();
    s2.state = State::Degraded;
    s2.pending = None;
    s2.left_attached_ms = Some(later - 1);
    let st = run(&s2, req(a(5), 2, later, 1), later);
    assert_eq!(st.session.state, State::Recovering);
    assert_eq!(
        st.session.nonces.iter().copied().collect::<Vec<_>>(),
        vec![(later + w, [1; 16])]
    );
    assert_refused(
        &st.session,
        req(a(5), 2, later, 8),
        later,
        a(5),
        Detail::Replay,
    );
}

#[test]
fn nonce_cache_is_bounded() {
    let mut s = recovering(T0 + 100);
    let now = T0 + 100;
    let n = NONCE_CACHE as u64 + 6;
    for seq in 2..=n {
        let mut r = request(a(3), seq, now, 0);
        r.nonce = [0; 16];
        r.nonce[..8].copy_from_slice(&seq.to_be_bytes());
        s = run(&s, Event::ReattachRequest(r), now).session;
        assert!(s.nonces.len() <= NONCE_CACHE);
    }
    assert_eq!(s.nonces.len(), NONCE_CACHE);
    assert_eq!(s.last_reattach_seq, n);
    let first_kept = n - NONCE_CACHE as u64 + 1;
    assert_eq!(s.nonces.front().unwrap().1[..8], first_kept.to_be_bytes());
    // An evicted request replayed: its sequence gives it away.
    assert_refused(&s, req(a(2), 1, now, 1), now, a(2), Detail::Replay);
}

#[test]
fn refused_bad_confirm() {
    let s = recovering(T0 + 100);
    let now = T0 + 200;
    assert_refused(&s, confirm(a(3), 1), now, a(3), Detail::ProofInvalid);
    assert_refused(&s, confirm(a(2), 2), now, a(2), Detail::ProofInvalid);
    let bad_mac = Event::ReattachConfirm {
        from: a(2),
        challenge: [1; 16],
        mac_ok: false,
    };
    assert_refused(&s, bad_mac, now, a(2), Detail::ProofInvalid);
    // No pending candidate / not RECOVERING.
    for s in [birth(), attached(), volatile(T0 + 100), degraded(T0 + 100)] {
        assert_refused(&s, confirm(a(2), 1), now, a(2), Detail::ProofInvalid);
    }
}

// ---------------------------------------------------------------------------------------
// ReattachConfirm / SwapFailed

#[test]
fn reattach_confirm_reattach_success() {
    let s = recovering(T0 + 100);
    let now = T0 + 1_500;
    let st = run(&s, confirm(a(2), 1), now);
    let n = &st.session;
    assert_eq!(n.state, State::Attached);
    assert_eq!(n.version, 4);
    assert_eq!(n.binding, Some(a(2)));
    assert_eq!(n.generation, 2);
    assert_eq!(n.pending, None);
    assert_eq!(n.left_attached_ms, None);
    assert_eq!(n.last_rx_ms, now);
    assert_eq!(n.switches.iter().copied().collect::<Vec<_>>(), vec![now]);
    assert_eq!(st.reason, Some(Reason::ReattachSuccess));
    assert_eq!(
        st.actions,
        vec![
            Action::SwapBinding {
                new: a(2),
                generation: 2
            },
            sc(
                State::Recovering,
                State::Attached,
                Reason::ReattachSuccess,
                None,
                4
            ),
            Action::Emit(Notice::TransportSwitch {
                old: Some(a(1)),
                new: a(2),
                generation: 2
            }),
            Action::SendAck {
                to: a(2),
                generation: 2
            },
        ]
    );
}

#[test]
fn reattach_confirm_generation_wraps_but_never_zero() {
    assert_eq!(next_generation(1), 2);
    assert_eq!(next_generation(u32::MAX), 1);
    let mut s = recovering(T0 + 100);
    s.generation = u32::MAX;
    let st = run(&s, confirm(a(2), 1), T0 + 200);
    assert_eq!(st.session.generation, 1);
    assert_eq!(
        st.actions[0],
        Action::SwapBinding {
            new: a(2),
            generation: 1
        }
    );
}

#[test]
fn reattach_confirm_after_candidate_ttl_is_transport_ttl_only() {
    let s = recovering(T0 + 100);
    let exp = s.pending.as_ref().unwrap().expires_ms;
    let st = run(&s, confirm(a(2), 1), exp);
    assert_eq!(st.session.state, State::Degraded);
    assert_eq!(st.session.binding, Some(a(1)));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Recovering,
                State::Degraded,
                Reason::ReattachValidationFailed,
                Some(Detail::TransportTtl),
                4
            ),
            denied_notice(a(2), Detail::TransportTtl),
        ]
    );
}

#[test]
fn swap_failed_datapath_error() {
    let s = recovering(T0 + 100);
    let now = T0 + 200;
    let uncommitted = run(&s, confirm(a(2), 1), now);
    assert!(matches!(uncommitted.actions[0], Action::SwapBinding { .. }));
    // The controller feeds the failure to the ORIGINAL session.
    let st = run(&s, Event::SwapFailed { candidate: a(2) }, now);
    let n = &st.session;
    assert_eq!(n.state, State::Degraded);
    assert_eq!(n.version, 4);
    assert_eq!(n.binding, Some(a(1)));
    assert_eq!(n.generation, 1);
    assert_eq!(n.pending, None);
    assert!(n.switches.is_empty());
    assert_eq!(n.left_attached_ms, Some(T0 + 100));
    assert_eq!(st.reason, Some(Reason::ReattachValidationFailed));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Recovering,
                State::Degraded,
                Reason::ReattachValidationFailed,
                Some(Detail::DatapathError),
                4
            ),
            Action::SendDenied {
                to: a(2),
                detail: Detail::DatapathError
            },
            denied_notice(a(2), Detail::DatapathError),
        ]
    );
}

#[test]
fn swap_failed_outside_recovering_does_nothing() {
    for s in [birth(), attached(), volatile(T0 + 1), degraded(T0 + 1)] {
        let st = run(&s, Event::SwapFailed { candidate: a(2) }, T0 + 2);
        assert_eq!(st.session, s);
        assert!(st.actions.is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Close / OperatorKill / TERMINATED

#[test]
fn close_closed() {
    for s in [
        birth(),
        attached(),
        volatile(T0 + 1),
        recovering(T0 + 1),
        degraded(T0 + 1),
    ] {
        let st = run(&s, Event::Close, T0 + 10);
        assert_eq!(st.session.state, State::Terminated);
        assert_eq!(st.session.version, s.version + 1);
        assert_eq!(st.session.pending, None);
        assert_eq!(st.reason, Some(Reason::Closed));
        assert_eq!(
            st.actions,
            vec![
                sc(
                    s.state,
                    State::Terminated,
                    Reason::Closed,
                    None,
                    s.version + 1
                ),
                Action::Teardown
            ]
        );
    }
}

#[test]
fn peer_removed_closes_with_its_reason() {
    for s in [
        attached(),
        volatile(T0 + 1),
        recovering(T0 + 1),
        degraded(T0 + 1),
    ] {
        let st = run(&s, Event::PeerRemoved, T0 + 10);
        assert_eq!(st.session.state, State::Terminated);
        assert_eq!(st.reason, Some(Reason::PeerRemoved));
        assert_eq!(
            st.actions,
            vec![
                sc(
                    s.state,
                    State::Terminated,
                    Reason::PeerRemoved,
                    None,
                    s.version + 1
                ),
                Action::SendClose {
                    reason: Reason::PeerRemoved
                },
                Action::Teardown,
            ]
        );
    }
    let st = run(&birth(), Event::PeerRemoved, T0 + 10);
    assert_eq!(st.reason, Some(Reason::PeerRemoved));
    assert!(
        !st.actions
            .iter()
            .any(|a| matches!(a, Action::SendClose { .. }))
    );
}

#[test]
fn operator_kill_operator() {
    let st = run(&attached(), Event::OperatorKill, T0 + 10);
    assert_eq!(st.session.state, State::Terminated);
    assert_eq!(st.reason, Some(Reason::Operator));
    assert_eq!(
        st.actions,
        vec![
            sc(
                State::Attached,
                State::Terminated,
                Reason::Operator,
                None,
                2
            ),
            Action::SendClose {
                reason: Reason::Operator
            },
            Action::Teardown,
        ]
    );
    let st = run(&birth(), Event::OperatorKill, T0 + 10);
    assert_eq!(
        st.actions,
        vec![
            sc(State::Birth, State::Terminated, Reason::Operator, None, 1),
            Action::Teardown
        ]
    );
}

#[test]
fn close_after_expiry_is_reported_as_the_expiry() {
    let p = Policy {
        session_ttl_s: 1,
        ..pol()
    };
    let s = run_p(&attached(), Event::BoundTraffic, &p, T0 + 900).session;
    let st = run_p(&s, Event::Close, &p, T0 + 1_000);
    assert_eq!(st.reason, Some(Reason::SessionTtlExpired));
    assert_eq!(st.session.version, s.version + 1);
    assert_eq!(
        st.actions
            .iter()
            .filter(|x| **x == Action::Teardown)
            .count(),
        1
    );
}

#[test]
fn terminated_is_absorbing() {
    let dead = run(&recovering(T0 + 1), Event::Close, T0 + 2).session;
    for e in all_events() {
        for now in [T0, T0 + 2, T0 + 10_000_000_000] {
            let st = step(&dead, &e, &pol(), now);
            assert_eq!(st.session, dead, "{e:?}");
            assert!(st.actions.is_empty(), "{e:?}");
            assert_eq!(st.reason, None);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Policy

#[test]
fn policy_default_is_valid() {
    assert_eq!(pol().validate(), Ok(()));
}

#[test]
fn policy_validate_names_the_key() {
    type Edit = fn(&mut Policy);
    let cases: [(&str, Edit); 19] = [
        ("max_recovery_window_ms", |p| p.max_recovery_window_ms = 0),
        ("max_switches_per_minute", |p| p.max_switches_per_minute = 0),
        ("switch_window_ms", |p| p.switch_window_ms = 0),
        ("switch_window_ms", |p| p.switch_window_ms = 86_400_001),
        ("transport_loss_ttl_ms", |p| p.transport_loss_ttl_ms = 0),
        ("candidate_ttl_ms", |p| p.candidate_ttl_ms = 0),
        ("session_ttl_s", |p| p.session_ttl_s = 0),
        ("freshness_window_ms", |p| p.freshness_window_ms = 0),
        ("keepalive_interval_ms", |p| p.keepalive_interval_ms = 0),
        ("handshake_timeout_ms", |p| p.handshake_timeout_ms = 0),
        ("keepalive_interval_ms", |p| {
            p.keepalive_interval_ms = p.transport_loss_ttl_ms
        }),
        ("transport_loss_ttl_ms", |p| {
            p.transport_loss_ttl_ms = p.max_recovery_window_ms + 1
        }),
        ("candidate_ttl_ms", |p| {
            p.candidate_ttl_ms = p.max_recovery_window_ms + 1
        }),
        ("idle_after_ms", |p| p.idle_after_ms = 0),
        ("idle_loss_ttl_ms", |p| {
            p.idle_loss_ttl_ms = p.transport_loss_ttl_ms - 1
        }),
        ("idle_loss_ttl_ms", |p| p.idle_loss_ttl_ms = 3_600_001),
        ("idle_after_ms", |p| p.idle_after_ms = 3_600_001),
        ("session_ttl_s", |p| p.session_ttl_s = u64::MAX / 1000 + 1),
        ("session_ttl_s", |p| p.session_ttl_s = u64::MAX),
    ];
    for (key, edit) in cases {
        let mut p = pol();
        edit(&mut p);
        let e = p.validate().expect_err(key);
        assert_eq!(e.key, key);
        assert!(e.to_string().starts_with(&format!("policy.{key}: ")), "{e}");
    }
    // The boundaries that are allowed.
    let mut p = pol();
    p.candidate_ttl_ms = p.max_recovery_window_ms;
    p.transport_loss_ttl_ms = p.max_recovery_window_ms;
    p.keepalive_interval_ms = p.transport_loss_ttl_ms - 1;
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn policy_toml_empty_is_default() {
    let p: Policy = toml::from_str("").unwrap();
    assert_eq!(p, pol());
}

#[test]
fn policy_toml_full_round_trip() {
    let text = r#"
        max_recovery_window_ms = 20000
        max_switches_per_minute = 3
        transport_loss_ttl_ms = 2500
        candidate_ttl_ms = 1500
        session_ttl_s = 3600
        freshness_window_ms = 10000
        keepalive_interval_ms = 500
        handshake_timeout_ms = 4000
        switch_window_ms = 30000
        blacklist = ["10.0.0.0/8", "2001:db8::/32"]
        auto_blacklist_after = 3
        auto_blacklist_s = 30
    "#;
    let p: Policy = toml::from_str(text).unwrap();
    assert_eq!(p.max_switches_per_minute, 3);
    assert_eq!(p.blacklist.len(), 2);
    assert_eq!(p.blacklist[0], "10.0.0.0/8".parse().unwrap());
    assert_eq!(p.validate(), Ok(()));
    let again: Policy = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
    assert_eq!(again, p);
    // A partial table keeps the defaults for the rest.
    let p: Policy = toml::from_str("candidate_ttl_ms = 5").unwrap();
    assert_eq!(
        p,
        Policy {
            candidate_ttl_ms: 5,
            ..pol()
        }
    );
}

/// The quality thresholds the gateway never measured against are refused with why,
/// not taken as a safeguard (docs/gateway.md, "Quality is the client's to judge").
#[test]
fn policy_toml_retired_quality_keys_are_refused_with_why() {
    for key in ["max_loss_pct", "max_rtt_ms", "max_jitter_ms"] {
        let e = toml::from_str::<Policy>(&format!("{key} = 20\n")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains(key), "{m}");
        assert!(m.contains("no longer a gateway setting"), "{m}");
        assert!(m.contains("[health]"), "{m}");
    }
    // Nor does the gateway write them (`jvpn-ctl config show`, the stored policy).
    let text = toml::to_string(&pol()).unwrap();
    for key in ["max_loss_pct", "max_rtt_ms", "max_jitter_ms"] {
        assert!(!text.contains(key), "{text}");
    }
}

#[test]
fn policy_toml_unknown_key_is_named() {
    let e = toml::from_str::<Policy>("max_recovery_window = 1000\n").unwrap_err();
    assert!(e.to_string().contains("max_recovery_window"), "{e}");
}

#[test]
fn policy_toml_wrong_type_errors() {
    for text in [
        "candidate_ttl_ms = \"fast\"",
        "session_ttl_s = -1",
        "blacklist = \"10.0.0.0/8\"",
        "blacklist = [\"not a cidr\"]",
        "max_switches_per_minute = 1.5",
    ] {
        let e = toml::from_str::<Policy>(text);
        assert!(e.is_err(), "{text} parsed");
    }
    let e = toml::from_str::<Policy>("candidate_ttl_ms = \"fast\"").unwrap_err();
    assert!(e.to_string().contains("candidate_ttl_ms"), "{e}");
}

/// The client asks again from the same address before its first challenge came
/// back (the controller was slow): it gets the same challenge, so whichever copy
/// it answers proves it, and no honest answer looks forged.
#[test]
fn a_repeated_request_from_the_candidate_gets_the_same_challenge() {
    let first = run(&attached(), req(a(2), 1, T0 + 10, 7), T0 + 10);
    assert_eq!(
        first.session.pending.as_ref().map(|k| k.challenge),
        Some([7; 16])
    );
    let again = run(&first.session, req(a(2), 2, T0 + 20, 8), T0 + 20);
    assert!(again.actions.contains(&Action::SendChallenge {
        to: a(2),
        challenge: [7; 16]
    }));
    assert_eq!(again.session.pending, first.session.pending);
    let done = run(&again.session, confirm(a(2), 7), T0 + 30);
    assert_eq!(done.session.state, State::Attached);
    assert_eq!(done.session.binding, Some(a(2)));
    // From another address, a request still gets its own challenge.
    let other = run(&first.session, req(a(3), 2, T0 + 20, 9), T0 + 20);
    assert_eq!(
        other
            .session
            .pending
            .as_ref()
            .map(|k| (k.addr, k.challenge)),
        Some((a(3), [9; 16]))
    );
}
