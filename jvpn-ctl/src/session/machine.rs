//! The transition function (DESIGN §4).
//!
//! `step(session, event, policy, now)` is pure. TERMINATED is absorbing (every event:
//! unchanged session, no actions). Every transition bumps `version` by one and emits
//! `StateChange` carrying the new version; actions come in the order things happen.
//!
//! **Timers** (run by `Tick`, and first thing for every other event once it has passed
//! its authentication/freshness checks), at most one fires per run, checked in order:
//!
//! | from | condition | to | reason (detail) | actions after `StateChange` |
//! |---|---|---|---|---|
//! | BIRTH | `now - created >= handshake_timeout_ms` | TERMINATED | birth_timeout | Teardown |
//! | any live | `now - created >= session_ttl_s*1000` | TERMINATED | session_ttl_expired | SendClose (if bound), Teardown |
//! | VOL, DEG, REC | `now - left_attached >= max_recovery_window_ms` | TERMINATED | recovery_window_expired | SendClose, Teardown |
//! | REC | `pending.expires_ms <= now` | DEGRADED | reattach_validation_failed (transport_ttl) | TransportSwitchDenied |
//! | ATTACHED | `now - last_rx > loss_ttl` (`transport_loss_ttl_ms` while data flows, else `idle_loss_ttl_ms`) | VOLATILE | transport_volatile | — |
//!
//! **Events** (after the timers):
//!
//! | from | event | to | reason (detail) | actions after `StateChange` |
//! |---|---|---|---|---|
//! | BIRTH | `Confirmed` | ATTACHED | birth_complete | *SwapBinding (gen 1) before StateChange*, TransportSwitch{old: None, gen 1} |
//! | VOL, DEG | `BoundTraffic` | ATTACHED | transport_recovered | — |
//! | ATTACHED | `ReattachRequest` (auth, fresh) | VOLATILE → RECOVERING | client_reported_loss, reattach_started | (see below) |
//! | VOL, DEG, REC | `ReattachRequest` (auth, fresh) | RECOVERING | reattach_started | SendChallenge (a new candidate; the pending one's challenge again if the request comes from its unexpired address) |
//! | (either row) | the request's cause is `address_changed` | as above | address_changed replaces reattach_started | as above |
//! | REC | … request failing policy | DEGRADED | reattach_validation_failed (rate_limited / blacklisted) | SendDenied, TransportSwitchDenied |
//! | REC | `ReattachConfirm` matching pending | ATTACHED | reattach_success | *SwapBinding before StateChange*, TransportSwitch, SendAck |
//! | REC | `SwapFailed` | DEGRADED | reattach_validation_failed (datapath_error) | SendDenied, TransportSwitchDenied |
//! | live | `Close` | TERMINATED | closed | Teardown |
//! | live | `OperatorKill` | TERMINATED | operator | SendClose (if bound), Teardown |
//! | live | `PeerRemoved` | TERMINATED | peer_removed | SendClose (if bound), Teardown |
//!
//! Without a transition: `BoundTraffic` sets `last_rx_ms` (in RECOVERING that is all it
//! does); `Confirmed` outside BIRTH, `SwapFailed` outside RECOVERING (in BIRTH the
//! session waits for a repeated CONFIRM or its handshake timeout) and a
//! `ReattachRequest` in BIRTH do nothing. Rejections that **mutate nothing** (input
//! session returned unchanged, only `Security` emitted, no timers): a request with a
//! bad proof (`proof_invalid`), a timestamp off by more than the freshness window
//! (`freshness_expired`), a cached nonce or a sequence `<= last_reattach_seq`
//! (`replay`); a confirm that is not for the pending candidate of a RECOVERING session
//! (`proof_invalid`).
//!
//! Leaving ATTACHED sets `left_attached_ms = now`, entering it clears it; since the
//! window timer runs before any transition into VOLATILE/DEGRADED/RECOVERING and those
//! transitions either start the window at `now` or keep an unexpired one, no session is
//! ever returned out of ATTACHED for `max_recovery_window_ms` or more.
//!
//! Choices where the brief left room:
//! * A StateChange comes before the actions it causes (SendClose/Teardown,
//!   SendDenied/TransportSwitchDenied); only SwapBinding precedes its StateChange.
//! * Timer order: the terminal ones first (birth, TTL, window), so an expired window
//!   with an expired candidate reports only `recovery_window_expired`.
//! * `SwapFailed` runs the timers first like the other events (they cannot fire if it
//!   arrives at the instant of the failed step, since that step swapped).
//! * `ReattachConfirm` is validated against the input session; the timers then run and
//!   an expired candidate yields only the transport_ttl row.
//! * A switch exactly 60 000 ms old no longer counts towards the rate limit.
//! * A reattach request from the current binding is treated like any other.
//! * Entering TERMINATED clears `pending`; leaving ATTACHED for TERMINATED also sets
//!   `left_attached_ms`.

use std::net::SocketAddr;

use super::{
    Action, Candidate, Detail, Event, Notice, Policy, Reason, Request, Session, State, Step,
};

/// Most reattach nonces remembered; older ones are evicted (the sequence check still
/// refuses their replays).
pub(crate) const NONCE_CACHE: usize = 64;

/// The next binding generation: wraps, but never to 0.
pub(crate) fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// One transition: `(session, event, policy, now) → (session', actions, reason)`.
pub fn step(s: &Session, e: &Event, p: &Policy, now_ms: u64) -> Step {
    if s.state == State::Terminated {
        return unchanged(s, Vec::new());
    }
    let mut c = Ctx::new(s, now_ms);
    match e {
        Event::Tick => c.timers(p),
        Event::Confirmed { binding } => {
            c.timers(p);
            if c.s.state == State::Birth {
                // The forwarding entry is the machine's to ask for, as a reattach's
                // is: written before the step is committed, or the step is not.
                c.actions.push(Action::SwapBinding {
                    new: *binding,
                    generation: 1,
                });
                c.s.binding = Some(*binding);
                c.s.generation = 1;
                c.s.last_rx_ms = now_ms;
                c.go(State::Attached, Reason::BirthComplete, None);
                c.emit(Notice::TransportSwitch {
                    old: None,
                    new: *binding,
                    generation: 1,
                });
            }
        }
        Event::BoundTraffic | Event::BoundData => {
            c.timers(p);
            if c.s.state != State::Terminated {
                c.s.last_rx_ms = now_ms;
                if *e == Event::BoundData {
                    c.s.last_data_ms = now_ms;
                }
                if matches!(c.s.state, State::Volatile | State::Degraded) {
                    c.go(State::Attached, Reason::TransportRecovered, None);
                }
            }
        }
        Event::ReattachRequest(r) => return reattach_request(s, c, r, p),
        Event::ReattachConfirm {
            from,
            challenge,
            mac_ok,
        } => {
            let valid = s.state == State::Recovering
                && *mac_ok
                && s.pending
                    .as_ref()
                    .is_some_and(|k| k.addr == *from && k.challenge == *challenge);
            if !valid {
                return security(s, *from, Detail::ProofInvalid);
            }
            c.timers(p);
            if c.s.state == State::Recovering && c.s.pending.is_some() {
                let generation = next_generation(c.s.generation);
                let old = c.s.binding;
                c.actions.push(Action::SwapBinding {
                    new: *from,
                    generation,
                });
                c.s.binding = Some(*from);
                c.s.generation = generation;
                c.s.pending = None;
                c.s.last_rx_ms = now_ms;
                c.s.switches.push_back(now_ms);
                c.go(State::Attached, Reason::ReattachSuccess, None);
                c.emit(Notice::TransportSwitch {
                    old,
                    new: *from,
                    generation,
                });
                c.actions.push(Action::SendAck {
                    to: *from,
                    generation,
                });
            }
        }
        Event::SwapFailed { candidate } => {
            c.timers(p);
            if c.s.state == State::Recovering {
                c.deny(*candidate, Detail::DatapathError, true);
            }
        }
        Event::Close => {
            c.timers(p);
            if c.s.state != State::Terminated {
                c.terminate(Reason::Closed, false);
            }
        }
        Event::OperatorKill | Event::PeerRemoved => {
            c.timers(p);
            if c.s.state != State::Terminated {
                let reason = if matches!(e, Event::PeerRemoved) {
                    Reason::PeerRemoved
                } else {
                    Reason::Operator
                };
                c.terminate(reason, true);
            }
        }
    }
    c.finish()
}

fn reattach_request(s: &Session, mut c: Ctx, r: &Request, p: &Policy) -> Step {
    let now = c.now;
    // (1) BIRTH has no reattach key yet: the request cannot concern it.
    if s.state == State::Birth {
        return unchanged(s, Vec::new());
    }
    // (2) proof, (3) freshness: refusals mutate nothing.
    if !r.proof_ok {
        return security(s, r.from, Detail::ProofInvalid);
    }
    if now.abs_diff(r.ts_ms) > p.freshness_window_ms {
        return security(s, r.from, Detail::FreshnessExpired);
    }
    if s.nonces.iter().any(|(exp, n)| *exp > now && *n == r.nonce) {
        return security(s, r.from, Detail::Replay);
    }
    if r.seq <= s.last_reattach_seq {
        return security(s, r.from, Detail::Replay);
    }
    // (4) Authenticated and fresh: remember it, then let time catch up.
    let nonces = &mut c.s.nonces;
    nonces.retain(|(exp, _)| *exp > now);
    while nonces.len() >= NONCE_CACHE {
        nonces.pop_front();
    }
    nonces.push_back((now.saturating_add(p.freshness_window_ms), r.nonce));
    c.s.last_reattach_seq = r.seq;
    c.timers(p);
    // (5) Into RECOVERING.
    let started = if r.address_changed {
        Reason::AddressChanged
    } else {
        Reason::ReattachStarted
    };
    match c.s.state {
        State::Terminated => return c.finish(),
        State::Attached => {
            c.go(State::Volatile, Reason::ClientReportedLoss, None);
            c.go(State::Recovering, started, None);
        }
        State::Volatile | State::Degraded | State::Recovering => {
            c.go(State::Recovering, started, None);
        }
        State::Birth => unreachable!("BIRTH returned above and timers never enter it"),
    }
    // (6) Policy. The recovery window and session TTL were enforced by the timers.
    c.s.switches
        .retain(|t| now.saturating_sub(*t) < p.switch_window_ms);
    let refusal = if c.s.switches.len() >= p.max_switches_per_minute as usize {
        Some(Detail::RateLimited)
    } else if r.blacklisted {
        Some(Detail::Blacklisted)
    } else {
        None
    };
    match refusal {
        Some(detail) => c.deny(r.from, detail, true),
        // (7) Challenge the candidate. A request again from the address already
        // being challenged (the client's attempt timed out while this controller
        // was busy) gets the same challenge again: the client answers whichever
        // arrives first, and a fresh one would make its answer look forged.
        None if c
            .s
            .pending
            .as_ref()
            .is_some_and(|k| k.addr == r.from && k.expires_ms > now) =>
        {
            let challenge =
                c.s.pending
                    .as_ref()
                    .map(|k| k.challenge)
                    .unwrap_or_default();
            c.actions.push(Action::SendChallenge {
                to: r.from,
                challenge,
            });
        }
        None => {
            c.s.pending = Some(Candidate {
                addr: r.from,
                challenge: r.challenge,
                seq: r.seq,
                expires_ms: now.saturating_add(p.candidate_ttl_ms),
            });
            c.actions.push(Action::SendChallenge {
                to: r.from,
                challenge: r.challenge,
            });
        }
    }
    c.finish()
}

fn unchanged(s: &Session, actions: Vec<Action>) -> Step {
    Step {
        session: s.clone(),
        actions,
        reason: None,
    }
}

/// A refusal that mutates nothing.
fn security(s: &Session, from: SocketAddr, detail: Detail) -> Step {
    unchanged(s, vec![Action::Emit(Notice::Security { from, detail })])
}

/// The session being worked on and what happened to it so far.
struct Ctx {
    s: Session,
    now: u64,
    actions: Vec<Action>,
    reason: Option<Reason>,
}

impl Ctx {
    fn new(s: &Session, now: u64) -> Self {
        Self {
            s: s.clone(),
            now,
            actions: Vec::new(),
            reason: None,
        }
    }

    fn finish(self) -> Step {
        Step {
            session: self.s,
            actions: self.actions,
            reason: self.reason,
        }
    }

    fn emit(&mut self, n: Notice) {
        self.actions.push(Action::Emit(n));
    }

    /// One transition.
    fn go(&mut self, to: State, reason: Reason, detail: Option<Detail>) {
        let from = self.s.state;
        if to == State::Attached {
            self.s.left_attached_ms = None;
        } else if from == State::Attached {
            self.s.left_attached_ms = Some(self.now);
        }
        self.s.state = to;
        self.s.version += 1;
        self.reason = Some(reason);
        let version = self.s.version;
        self.emit(Notice::StateChange {
            from,
            to,
            reason,
            detail,
            version,
        });
    }

    fn terminate(&mut self, reason: Reason, send_close: bool) {
        self.s.pending = None;
        self.go(State::Terminated, reason, None);
        if send_close && self.s.binding.is_some() {
            self.actions.push(Action::SendClose { reason });
        }
        self.actions.push(Action::Teardown);
    }

    /// RECOVERING → DEGRADED: the candidate will not become the binding.
    fn deny(&mut self, candidate: SocketAddr, detail: Detail, reply: bool) {
        self.s.pending = None;
        self.go(
            State::Degraded,
            Reason::ReattachValidationFailed,
            Some(detail),
        );
        if reply {
            self.actions.push(Action::SendDenied {
                to: candidate,
                detail,
            });
        }
        self.emit(Notice::TransportSwitchDenied { candidate, detail });
    }

    /// Applies whichever timer is due (at most one can fire at a given instant).
    fn timers(&mut self, p: &Policy) {
        let now = self.now;
        let s = &self.s;
        let age = now.saturating_sub(s.created_ms);
        let out_of_attached = matches!(
            s.state,
            State::Volatile | State::Degraded | State::Recovering
        );
        if s.state == State::Terminated {
        } else if s.state == State::Birth && age >= p.handshake_timeout_ms {
            self.terminate(Reason::BirthTimeout, false);
        } else if age >= p.session_ttl_s.saturating_mul(1000) {
            self.terminate(Reason::SessionTtlExpired, true);
        } else if out_of_attached
            && s.left_attached_ms
                .is_some_and(|t| now.saturating_sub(t) >= p.max_recovery_window_ms)
        {
            self.terminate(Reason::RecoveryWindowExpired, true);
        } else if s.state == State::Recovering
            && let Some(k) = s.pending.as_ref().filter(|k| k.expires_ms <= now)
        {
            let candidate = k.addr;
            self.deny(candidate, Detail::TransportTtl, false);
        } else if s.state == State::Attached
            && now.saturating_sub(s.last_rx_ms) > loss_ttl(s, p, now)
        {
            self.go(State::Volatile, Reason::TransportVolatile, None);
        }
    }
}

/// The silence on the binding that makes an ATTACHED session VOLATILE at `now`: the
/// loss TTL while tunnel data flows (data within `idle_after_ms`), the idle loss TTL
/// once it has not. Idle clients keepalive rarely (docs/client.md, "Keepalive
/// schedule"); they send data no later than they speed their keepalives up again.
pub fn loss_ttl(s: &Session, p: &Policy, now: u64) -> u64 {
    if s.last_data_ms != 0 && now.saturating_sub(s.last_data_ms) <= p.idle_after_ms {
        p.transport_loss_ttl_ms
    } else {
        p.idle_loss_ttl_ms.max(p.transport_loss_ttl_ms)
    }
}

/// The earliest instant at which [`Event::Tick`] can change `s` (`None`: never, the
/// session is TERMINATED). Before it, a Tick is a no-op, so the controller ticks only
/// the sessions that are due instead of all of them every period.
pub fn next_deadline(s: &Session, p: &Policy) -> Option<u64> {
    let mut d = s
        .created_ms
        .saturating_add(p.session_ttl_s.saturating_mul(1000));
    match s.state {
        State::Terminated => return None,
        State::Birth => d = d.min(s.created_ms.saturating_add(p.handshake_timeout_ms)),
        State::Attached => {
            // The short TTL applies if data is still recent when it runs out; else the
            // idle one (never shorter) does.
            let short = s
                .last_rx_ms
                .saturating_add(p.transport_loss_ttl_ms)
                .saturating_add(1);
            let at = if loss_ttl(s, p, short) == p.transport_loss_ttl_ms {
                short
            } else {
                s.last_rx_ms
                    .saturating_add(loss_ttl(s, p, short))
                    .saturating_add(1)
            };
            d = d.min(at)
        }
        State::Volatile | State::Degraded | State::Recovering => {
            if let Some(t) = s.left_attached_ms {
                d = d.min(t.saturating_add(p.max_recovery_window_ms));
            }
            if let Some(k) = s.pending.as_ref().filter(|_| s.state == State::Recovering) {
                d = d.min(k.expires_ms);
            }
        }
    }
    Some(d)
}
