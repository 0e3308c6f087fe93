//! The decisions of each tick: transport health to session state, gateway-address
//! rotation, recovery candidates, moves back.

use super::*;

impl Core {
    pub(super) fn tick_session(&mut self, now_ms: u64) {
        let Phase::Up(s) = &self.phase else {
            return;
        };
        let (th, keepalive) = self.thresholds(&s.hint);
        let created = s.created_ms;
        let ttl_ms = u64::from(s.hint.session_ttl_s).saturating_mul(1000);
        let window = u64::from(s.hint.recovery_window_ms);
        let left = s.left_attached_ms;
        let candidate = s.attempt.as_ref().map(|a| a.candidate);
        self.probe_all(now_ms, false);
        let mut silent = Vec::new();
        for (i, l) in self.links.iter_mut().enumerate() {
            let (st, healthy_for) = l.health.evaluate(now_ms, &th);
            // Silent for the loss TTL at this address: try the next one (not while a
            // reattach over it is under way; its timeout moves it on).
            if st == Status::Dead && l.gateways.len() > 1 && candidate != Some(i) {
                silent.push(i);
            }
            // KEEPALIVEs answered while the tunnel's DATA is not forwarded: not healthy.
            l.status = match l.stalled_since {
                Some(t) if now_ms.saturating_sub(t) >= th.loss_ttl_ms => Status::Dead,
                Some(_) if st == Status::Healthy => Status::Volatile,
                _ => st,
            };
            l.healthy_for_ms = if l.status == Status::Healthy {
                healthy_for
            } else {
                0
            };
        }
        if !silent.is_empty() {
            for i in silent {
                self.rotate(i, "silent for the loss TTL", now_ms);
            }
            // Probe the new addresses now rather than at the next tick.
            self.probe_all(now_ms, false);
        }
        self.probe_mtu(now_ms, th.probe_timeout_ms);
        self.send_mtu_notice(now_ms, keepalive);
        // The gateway ends the session with CLOSE; these catch a CLOSE that was lost.
        if now_ms >= created.saturating_add(ttl_ms).saturating_add(TTL_GRACE_MS) {
            return self.terminate(Reason::SessionTtlExpired, now_ms);
        }
        if left.is_some_and(|t| now_ms.saturating_sub(t) >= window.saturating_add(TTL_GRACE_MS)) {
            return self.terminate(Reason::RecoveryWindowExpired, now_ms);
        }
        self.attempt_timeout(now_ms);
        let Phase::Up(s) = &self.phase else {
            return;
        };
        let bound_status = self.bound_status(s);
        match s.state {
            State::Attached => match bound_status {
                Status::Volatile => {
                    self.go(State::Volatile, Reason::TransportVolatile, None, now_ms)
                }
                Status::Dead => {
                    self.go(State::Volatile, Reason::TransportVolatile, None, now_ms);
                    self.recover(now_ms);
                }
                Status::Healthy | Status::Unknown => self.maybe_move(now_ms),
            },
            State::Volatile | State::Degraded => match bound_status {
                Status::Healthy => {
                    self.set_dead_since(None);
                    self.go(State::Attached, Reason::TransportRecovered, None, now_ms)
                }
                Status::Dead => self.recover(now_ms),
                Status::Volatile | Status::Unknown => {}
            },
            State::Recovering | State::Birth | State::Terminated => {}
        }
    }

    /// The bound transport's status for the session: DEAD while it has moved away
    /// from the address its binding was made with (that node is not answering it).
    pub(super) fn bound_status(&self, s: &Session) -> Status {
        let l = &self.links[s.bound];
        if l.current != s.bound_addr {
            Status::Dead
        } else {
            l.status
        }
    }

    /// Transport `t` moves to its next gateway address (wrapping); with one address,
    /// nothing happens (false). Its health and path MTU start over: they described
    /// the address it left. If it is the bound transport, the binding stays where it
    /// was, so the session must reattach over it (or another transport).
    pub(super) fn rotate(&mut self, t: usize, why: &str, now_ms: u64) -> bool {
        let l = &mut self.links[t];
        if l.gateways.len() < 2 {
            return false;
        }
        let (left, heard) = (
            l.current,
            now_ms.saturating_sub(l.health.silence_ms(now_ms)),
        );
        let from = l.gateway();
        l.current = (l.current + 1) % l.gateways.len();
        let to = l.gateway();
        l.health.reset(now_ms);
        l.status = Status::Unknown;
        l.healthy_for_ms = 0;
        l.last_probe_ms = None;
        l.pmtu = new_pmtu(l.v6(), l.route_max, now_ms);
        l.mtu_probes.clear();
        l.sent_at.clear();
        l.last_fwd = None;
        l.stalled_since = None;
        l.not_bound = false;
        l.moved = Some(format!("{to} ({why})"));
        self.counters.gateway_moves += 1;
        tracing::warn!("transport {}: gateway {from} → {to} ({why})", l.cfg.name);
        if let Phase::Up(s) = &mut self.phase
            && s.bound == t
        {
            if left == s.bound_addr {
                s.moved_heard_ms = Some(heard);
                tracing::warn!(
                    "the binding is at {from}: the session reattaches over {} to {to}",
                    self.links[t].cfg.name
                );
            }
            self.apply_tunnel_mtu();
        }
        true
    }

    /// A reattach over `c` failed in a way the next address may not (no answer, or
    /// `ownership_ambiguous`): move `c` on. True if it should be tried again at once,
    /// i.e. not every address of it has failed in a row yet.
    pub(super) fn rotate_after_failure(&mut self, c: usize, why: &str, now_ms: u64) -> bool {
        let l = &mut self.links[c];
        if l.gateways.len() < 2 {
            return false;
        }
        l.failed_in_row += 1;
        let all_failed = l.failed_in_row >= l.gateways.len();
        if all_failed {
            l.failed_in_row = 0;
        }
        self.rotate(c, why, now_ms);
        !all_failed
    }

    pub(super) fn set_dead_since(&mut self, v: Option<u64>) {
        if let Phase::Up(s) = &mut self.phase {
            s.dead_since = v;
        }
    }

    /// The bound transport is DEAD: try the best candidate that is not backing off.
    pub(super) fn recover(&mut self, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if s.dead_since.is_none() {
            s.dead_since = Some(now_ms);
            tracing::warn!(
                "transport {} is DEAD (silent for the loss TTL)",
                self.links[s.bound].cfg.name
            );
        }
        if now_ms < s.rate_backoff_until {
            return;
        }
        let bound = s.bound;
        // The bound transport itself once it has moved to another gateway address.
        let moved = self.links[bound].current != s.bound_addr;
        let rank = |st: Status| match st {
            Status::Healthy => 0,
            Status::Volatile => 1,
            Status::Unknown => 2,
            Status::Dead => 3,
        };
        let best = (0..self.links.len())
            .filter(|&i| (i != bound || moved) && now_ms >= self.links[i].backoff_until)
            .min_by_key(|&i| (rank(self.links[i].status), i));
        if let Some(c) = best {
            self.start_attempt(c, ReattachCause::Recovery, now_ms);
        }
    }

    /// In ATTACHED: an operator move, or back to a more preferred transport that has
    /// been healthy for `return_after_ms`.
    pub(super) fn maybe_move(&mut self, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if let Some(c) = s.move_to.take() {
            return self.start_attempt(c, ReattachCause::Planned, now_ms);
        }
        if now_ms < s.rate_backoff_until {
            return;
        }
        let bound = s.bound;
        let ret = self.health.return_after_ms;
        let better = (0..bound).find(|&i| {
            let l = &self.links[i];
            l.status == Status::Healthy && l.healthy_for_ms >= ret && now_ms >= l.backoff_until
        });
        if let Some(c) = better {
            self.start_attempt(c, ReattachCause::Planned, now_ms);
        }
    }
}
