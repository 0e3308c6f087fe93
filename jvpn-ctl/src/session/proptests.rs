//! Property tests: random policies and random event sequences, driven the way the
//! controller drives the machine (a step with `SwapBinding` is committed only if the
//! swap succeeds; otherwise `SwapFailed` goes to the original session).

use std::net::SocketAddr;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::machine::next_generation;
use super::*;

const ADDRS: u8 = 4;
const TAGS: u8 = 5;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 1 + i % ADDRS], 5000))
}

fn tag(i: u8) -> [u8; 16] {
    [i % TAGS; 16]
}

/// A policy within sane bounds that passes `validate`.
fn policy() -> impl Strategy<Value = Policy> {
    (
        (200u64..20_000, any::<u64>(), any::<u64>(), any::<u64>()),
        (1u64..300, 1u64..20_000, 1u64..10_000, 1u32..5),
    )
        .prop_map(
            |((window, r1, r2, r3), (ttl_s, fresh, handshake, switches))| {
                let loss_ttl = 2 + r1 % (window - 1); // 2..=window
                let keepalive = 1 + r2 % (loss_ttl - 1); // 1..loss_ttl
                let candidate = 1 + r3 % window; // 1..=window
                Policy {
                    max_recovery_window_ms: window,
                    max_switches_per_minute: switches,
                    // 1 ms ..= 120 s: the window is a policy value like the rest.
                    switch_window_ms: 1 + (r1 ^ r2 ^ r3) % 120_000,
                    transport_loss_ttl_ms: loss_ttl,
                    candidate_ttl_ms: candidate,
                    session_ttl_s: ttl_s,
                    freshness_window_ms: fresh,
                    keepalive_interval_ms: keepalive,
                    handshake_timeout_ms: handshake,
                    ..Policy::default()
                }
            },
        )
}

/// How a request's sequence number relates to the session's last accepted one.
#[derive(Clone, Debug)]
enum Seq {
    Next(u8),
    Back(u8),
}

/// An event before it meets the session (some fields are relative to it).
#[derive(Clone, Debug)]
enum Ev {
    Tick,
    Confirmed(u8),
    Traffic,
    Request {
        from: u8,
        seq: Seq,
        /// Timestamp offset in 1/64ths of the freshness window.
        ts: i8,
        nonce: u8,
        proof_ok: bool,
        blacklisted: bool,
        challenge: u8,
    },
    Confirm {
        /// Use the pending candidate's address and challenge.
        aim: bool,
        from: u8,
        challenge: u8,
        mac_ok: bool,
    },
    Close,
    Kill,
}

fn ev() -> impl Strategy<Value = Ev> {
    let seq = prop_oneof![
        6 => (1u8..3).prop_map(Seq::Next),
        1 => (0u8..3).prop_map(Seq::Back),
    ];
    prop_oneof![
        15 => Just(Ev::Tick),
        5 => (0..ADDRS).prop_map(Ev::Confirmed),
        15 => Just(Ev::Traffic),
        30 => (
            0..ADDRS,
            seq,
            -80i8..80,
            0..TAGS * 2,
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.1),
            0..TAGS,
        )
            .prop_map(|(from, seq, ts, nonce, proof_ok, blacklisted, challenge)| Ev::Request {
                from,
                seq,
                ts,
                nonce,
                proof_ok,
                blacklisted,
                challenge,
            }),
        25 => (prop::bool::weighted(0.7), 0..ADDRS, 0..TAGS, prop::bool::weighted(0.9))
            .prop_map(|(aim, from, challenge, mac_ok)| Ev::Confirm { aim, from, challenge, mac_ok }),
        1 => Just(Ev::Close),
        1 => Just(Ev::Kill),
    ]
}

/// A time step: absolute, or one of the policy's durations ± 1 ms (to hit the edges).
#[derive(Clone, Copy, Debug)]
enum Dt {
    Ms(u64),
    Policy(u8, i8),
}

impl Dt {
    fn ms(self, p: &Policy) -> u64 {
        match self {
            Dt::Ms(ms) => ms,
            Dt::Policy(k, d) => {
                let base = match k {
                    0 => p.max_recovery_window_ms,
                    1 => p.candidate_ttl_ms,
                    2 => p.transport_loss_ttl_ms,
                    3 => p.handshake_timeout_ms,
                    _ => 60_000,
                };
                base.saturating_add_signed(i64::from(d))
            }
        }
    }
}

fn dt() -> impl Strategy<Value = Dt> {
    prop_oneof![
        3 => Just(Dt::Ms(0)),
        6 => (0u64..500).prop_map(Dt::Ms),
        4 => (0u64..5_000).prop_map(Dt::Ms),
        1 => (0u64..70_000).prop_map(Dt::Ms),
        2 => (0u8..5, -1i8..=1).prop_map(|(k, d)| Dt::Policy(k, d)),
    ]
}

fn resolve(ev: &Ev, s: &Session, p: &Policy, now: u64) -> Event {
    match ev {
        Ev::Tick => Event::Tick,
        Ev::Confirmed(i) => Event::Confirmed { binding: addr(*i) },
        Ev::Traffic => Event::BoundTraffic,
        Ev::Request {
            from,
            seq,
            ts,
            nonce,
            proof_ok,
            blacklisted,
            challenge,
        } => {
            let seq = match seq {
                Seq::Next(k) => s.last_reattach_seq + u64::from(*k),
                Seq::Back(k) => s.last_reattach_seq.saturating_sub(u64::from(*k)),
            };
            let off = i128::from(*ts) * i128::from(p.freshness_window_ms) / 64;
            let ts_ms = (i128::from(now) + off).max(0) as u64;
            Event::ReattachRequest(Request {
                from: addr(*from),
                seq,
                ts_ms,
                nonce: [*nonce; 16],
                proof_ok: *proof_ok,
                blacklisted: *blacklisted,
                challenge: tag(*challenge),
                address_changed: *challenge % 2 == 1,
            })
        }
        Ev::Confirm {
            aim,
            from,
            challenge,
            mac_ok,
        } => match (&s.pending, aim) {
            (Some(k), true) => Event::ReattachConfirm {
                from: k.addr,
                challenge: k.challenge,
                mac_ok: *mac_ok,
            },
            _ => Event::ReattachConfirm {
                from: addr(*from),
                challenge: tag(*challenge),
                mac_ok: *mac_ok,
            },
        },
        Ev::Close => Event::Close,
        Ev::Kill => Event::OperatorKill,
    }
}

fn state_changes(actions: &[Action]) -> Vec<(State, State, Reason, Option<Detail>, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(Notice::StateChange {
                from,
                to,
                reason,
                detail,
                version,
            }) => Some((*from, *to, *reason, *detail, *version)),
            _ => None,
        })
        .collect()
}

fn switches(actions: &[Action]) -> Vec<(Option<SocketAddr>, SocketAddr, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(Notice::TransportSwitch {
                old,
                new,
                generation,
            }) => Some((*old, *new, *generation)),
            _ => None,
        })
        .collect()
}

fn swaps(actions: &[Action]) -> Vec<(SocketAddr, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SwapBinding { new, generation } => Some((*new, *generation)),
            _ => None,
        })
        .collect()
}

/// The refusal the machine must produce for `e` on `s` without changing anything, if any.
fn expected_refusal(s: &Session, e: &Event, p: &Policy, now: u64) -> Option<(SocketAddr, Detail)> {
    if matches!(s.state, State::Terminated) {
        return None;
    }
    match e {
        Event::ReattachRequest(r) if s.state != State::Birth => {
            let detail = if !r.proof_ok {
                Detail::ProofInvalid
            } else if now.abs_diff(r.ts_ms) > p.freshness_window_ms {
                Detail::FreshnessExpired
            } else if s.nonces.iter().any(|(exp, n)| *exp > now && *n == r.nonce)
                || r.seq <= s.last_reattach_seq
            {
                Detail::Replay
            } else {
                return None;
            };
            Some((r.from, detail))
        }
        Event::ReattachConfirm {
            from,
            challenge,
            mac_ok,
        } => {
            let ok = s.state == State::Recovering
                && *mac_ok
                && s.pending
                    .as_ref()
                    .is_some_and(|k| k.addr == *from && k.challenge == *challenge);
            (!ok).then_some((*from, Detail::ProofInvalid))
        }
        _ => None,
    }
}

/// Everything that must hold of one step, whether or not it gets committed.
fn check_step(
    s: &Session,
    e: &Event,
    p: &Policy,
    now: u64,
    st: &Step,
) -> Result<(), TestCaseError> {
    let n = &st.session;
    if s.state == State::Terminated {
        prop_assert_eq!(n, s);
        prop_assert!(st.actions.is_empty());
        prop_assert_eq!(st.reason, None);
        return Ok(());
    }
    prop_assert_eq!(n.id, s.id);
    prop_assert_eq!(n.created_ms, s.created_ms);
    prop_assert!(n.version >= s.version);

    // Transitions: consecutive versions, a chain of states, the last reason.
    let scs = state_changes(&st.actions);
    prop_assert_eq!(n.version - s.version, scs.len() as u64);
    let mut at = s.state;
    for (i, (from, to, reason, detail, version)) in scs.iter().enumerate() {
        prop_assert_eq!(*from, at);
        prop_assert_ne!(*from, State::Terminated);
        prop_assert_eq!(*version, s.version + i as u64 + 1);
        prop_assert_eq!(
            detail.is_some(),
            *reason == Reason::ReattachValidationFailed,
            "detail only on reattach_validation_failed"
        );
        at = *to;
    }
    prop_assert_eq!(at, n.state);
    prop_assert_eq!(st.reason, scs.last().map(|x| x.2));

    // Refusals mutate nothing and only emit SECURITY_EVENT; nothing else does.
    let security: Vec<_> = st
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Emit(Notice::Security { .. })))
        .collect();
    match expected_refusal(s, e, p, now) {
        Some((from, detail)) => {
            prop_assert_eq!(n, s);
            prop_assert_eq!(
                &st.actions,
                &vec![Action::Emit(Notice::Security { from, detail })]
            );
            return Ok(());
        }
        None => prop_assert!(security.is_empty()),
    }

    // Bindings.
    match n.state {
        State::Birth => {
            prop_assert_eq!(n.binding, None);
            prop_assert_eq!(n.generation, 0);
        }
        State::Attached | State::Volatile | State::Degraded | State::Recovering => {
            prop_assert!(n.binding.is_some());
            prop_assert_ne!(n.generation, 0);
        }
        State::Terminated => {}
    }
    prop_assert_eq!(n.pending.is_some(), n.state == State::Recovering);

    // The recovery window, and left_attached_ms bookkeeping.
    match n.state {
        State::Volatile | State::Degraded | State::Recovering => {
            let left = n.left_attached_ms;
            prop_assert!(left.is_some());
            prop_assert!(now - left.unwrap() < p.max_recovery_window_ms);
        }
        State::Attached | State::Birth => prop_assert_eq!(n.left_attached_ms, None),
        State::Terminated => {}
    }

    // Swaps only for BIRTH's completion (generation 1) or the pending candidate
    // (the next generation), and first.
    let sw = swaps(&st.actions);
    let ts = switches(&st.actions);
    let birth_complete = scs.iter().any(|x| x.2 == Reason::BirthComplete);
    prop_assert!(sw.len() <= 1);
    if birth_complete {
        let Event::Confirmed { binding } = e else {
            return Err(TestCaseError::fail("birth_complete without Confirmed"));
        };
        prop_assert_eq!(&sw, &vec![(*binding, 1)]);
        prop_assert!(
            matches!(st.actions[0], Action::SwapBinding { .. }),
            "swap not first"
        );
        prop_assert_eq!(n.binding, Some(*binding));
        prop_assert_eq!(n.generation, 1);
        prop_assert_eq!(&ts, &vec![(None, *binding, 1)]);
    } else if let Some(&(new, generation)) = sw.first() {
        prop_assert!(
            matches!(e, Event::ReattachConfirm { .. }),
            "swap on {:?}",
            e
        );
        prop_assert!(
            matches!(st.actions[0], Action::SwapBinding { .. }),
            "swap not first"
        );
        prop_assert_eq!(s.state, State::Recovering);
        prop_assert_eq!(s.pending.as_ref().map(|k| k.addr), Some(new));
        prop_assert_eq!(generation, next_generation(s.generation));
        prop_assert_eq!(n.binding, Some(new));
        prop_assert_eq!(n.generation, generation);
        prop_assert_eq!(n.state, State::Attached);
        prop_assert_eq!(&ts, &vec![(s.binding, new, generation)]);
        prop_assert!(
            st.actions.contains(&Action::SendAck {
                to: new,
                generation
            }),
            "no ack"
        );
    } else {
        prop_assert_eq!(n.binding, s.binding);
        prop_assert_eq!(n.generation, s.generation);
        prop_assert!(ts.is_empty());
    }
    Ok(())
}

/// The controller: runs the sequence and checks the run-wide properties.
fn drive(p: &Policy, start: u64, events: &[(Dt, Ev, bool)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(p.validate(), Ok(()));
    let mut s = Session::new(42, start);
    let mut now = start;
    let mut published_version = 0u64;
    let mut committed_swaps = 0u32;
    let mut published_switches = 0u32;
    let mut ever_terminated = false;
    let mut swap_times: Vec<u64> = Vec::new();
    for (dt, ev, swap_ok) in events {
        now += dt.ms(p);
        let e = resolve(ev, &s, p, now);
        let st = step(&s, &e, p, now);
        check_step(&s, &e, p, now, &st)?;
        let committed = match swaps(&st.actions).first() {
            Some(&(candidate, _)) if !swap_ok && s.state == State::Birth => {
                // No forwarding entry: the session waits in BIRTH, unchanged.
                let failed = Event::SwapFailed { candidate };
                let st2 = step(&s, &failed, p, now);
                check_step(&s, &failed, p, now, &st2)?;
                prop_assert_eq!(&st2.session.state, &State::Birth);
                prop_assert_eq!(st2.session.binding, None);
                st2
            }
            Some(&(_, 1)) if s.state == State::Birth => st,
            Some(&(candidate, _)) if !swap_ok => {
                let failed = Event::SwapFailed { candidate };
                let st2 = step(&s, &failed, p, now);
                check_step(&s, &failed, p, now, &st2)?;
                prop_assert_eq!(st2.session.state, State::Degraded);
                prop_assert_eq!(st2.session.binding, s.binding);
                prop_assert!(
                    st2.actions.contains(&Action::SendDenied {
                        to: candidate,
                        detail: Detail::DatapathError
                    }),
                    "no denied"
                );
                st2
            }
            Some(_) => {
                committed_swaps += 1;
                swap_times.push(now);
                let recent = swap_times
                    .iter()
                    .filter(|t| now - **t < p.switch_window_ms)
                    .count();
                prop_assert!(
                    recent <= p.max_switches_per_minute as usize,
                    "{} swaps within {} ms",
                    recent,
                    p.switch_window_ms
                );
                st
            }
            None => st,
        };
        for (.., version) in state_changes(&committed.actions) {
            prop_assert!(version > published_version);
            published_version = version;
        }
        published_switches += switches(&committed.actions)
            .iter()
            .filter(|x| x.0.is_some())
            .count() as u32;
        prop_assert!(committed.session.version >= s.version);
        s = committed.session;
        // Before its deadline a Tick changes nothing (the controller relies on it).
        match crate::session::next_deadline(&s, p) {
            Some(d) if d > now => {
                let t = step(&s, &Event::Tick, p, d - 1);
                prop_assert!(
                    t.session == s && t.actions.is_empty(),
                    "tick before deadline {} acted",
                    d
                );
                let t = step(&s, &Event::Tick, p, d);
                prop_assert!(
                    t.session != s || !t.actions.is_empty(),
                    "tick at deadline {} did nothing",
                    d
                );
            }
            Some(_) => {}
            None => prop_assert_eq!(s.state, State::Terminated),
        }
        prop_assert_eq!(s.version, published_version);
        prop_assert!(!(ever_terminated && s.state != State::Terminated));
        ever_terminated |= s.state == State::Terminated;
        prop_assert_eq!(published_switches, committed_swaps);
        if s.binding.is_some() {
            prop_assert_eq!(s.generation, 1 + committed_swaps);
        } else {
            prop_assert_eq!(committed_swaps, 0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_runs_keep_the_invariants(
        p in policy(),
        start in 0u64..1_000_000_000,
        events in prop::collection::vec((dt(), ev(), prop::bool::weighted(0.75)), 0..60),
    ) {
        drive(&p, start, &events)?;
    }

    /// Runs that start ATTACHED and mostly reattach, so swaps, rate limits and the
    /// candidate TTL are exercised often.
    #[test]
    fn random_reattach_runs_keep_the_invariants(
        p in policy(),
        start in 0u64..1_000_000_000,
        events in prop::collection::vec(
            (prop_oneof![3 => Just(Dt::Ms(0)), 3 => (0u64..300).prop_map(Dt::Ms), 1 => (0u64..3_000).prop_map(Dt::Ms), 1 => dt()], ev(), prop::bool::weighted(0.75)),
            0..60,
        ),
    ) {
        let mut events = events;
        events.insert(0, (Dt::Ms(0), Ev::Confirmed(0), true));
        drive(&p, start, &events)?;
    }
}

/// The generators are not so random that nothing interesting happens.
#[test]
fn generators_reach_every_state_and_swap() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::HashSet::new();
    let mut swapped = 0;
    for _ in 0..300 {
        let p = policy().new_tree(&mut runner).unwrap().current();
        let evs = prop::collection::vec((dt(), ev()), 60)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let b = Session::new(1, 1_000_000);
        seen.insert(format!("{:?}", b.state));
        let mut s = step(&b, &Event::Confirmed { binding: addr(0) }, &p, b.created_ms).session;
        let mut now = s.created_ms;
        for (dt, ev) in evs {
            now += dt.ms(&p);
            let e = resolve(&ev, &s, &p, now);
            let st = step(&s, &e, &p, now);
            swapped += swaps(&st.actions).len();
            for (.., reason, _, _) in state_changes(&st.actions) {
                seen.insert(format!("{reason:?}"));
            }
            s = st.session;
            seen.insert(format!("{:?}", s.state));
        }
    }
    assert!(swapped > 20, "only {swapped} swaps");
    for st in State::ALL {
        assert!(seen.contains(&format!("{st:?}")), "{st:?} never reached");
    }
    for r in [
        "TransportVolatile",
        "ReattachSuccess",
        "ReattachValidationFailed",
        "RecoveryWindowExpired",
        "TransportRecovered",
    ] {
        assert!(seen.contains(r), "{r} never happened");
    }
}
