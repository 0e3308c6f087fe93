//! The decisions of each tick: transport health to session state, gateway-address
//! rotation, recovery candidates, moves back.

use super::*;

impl Core {
    pub(super) fn tick_session(&mut self, now_ms: u64) {
        if !matches!(self.phase, Phase::Up(_)) {
            return;
        }
        self.note_activity(now_ms);
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
        let mut changes = Vec::new();
        for (i, l) in self.links.iter_mut().enumerate() {
            let (st, healthy_for) = l.health.evaluate(now_ms, &th);
            // Silent for the loss TTL at this address: try the next one (not while a
            // reattach over it is under way; its timeout moves it on).
            if st == Status::Dead
                && l.gateways.len() > 1
                && candidate != Some(i)
                && l.down.is_none()
            {
                silent.push(i);
            }
            let (status, cause) = match (l.down, l.stalled_since) {
                (Some(d), _) => (Status::Dead, d.name()),
                // KEEPALIVEs answered while the tunnel's DATA is not forwarded.
                (None, Some(t)) if now_ms.saturating_sub(t) >= th.loss_ttl_ms => {
                    (Status::Dead, "stalled")
                }
                (None, Some(_)) if st == Status::Healthy => (Status::Volatile, "stalled"),
                _ => (st, status_cause(st, &l.health)),
            };
            l.healthy_for_ms = if status == Status::Healthy {
                healthy_for
            } else {
                0
            };
            changes.push((i, status, cause));
        }
        for (i, status, cause) in changes {
            self.set_status(i, status, cause, now_ms);
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
                    self.go(State::Volatile, Reason::TransportVolatile, None, now_ms);
                    self.quality_move(now_ms);
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
                Status::Volatile => self.quality_move(now_ms),
                Status::Unknown => {}
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
        l.start_over(now_ms);
        l.pmtu = new_pmtu(l.v6(), l.route_max, now_ms);
        l.moved = Some(format!("{to} ({why})"));
        self.counters.gateway_moves += 1;
        tracing::warn!("transport {}: gateway {from} → {to} ({why})", l.cfg.name);
        self.set_status(t, Status::Unknown, "gateway_moved", now_ms);
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
            let b = &self.links[s.bound];
            s.trigger = if b.current != s.bound_addr {
                "gateway_moved"
            } else {
                b.cause
            };
            tracing::warn!("transport {} is DEAD ({})", b.cfg.name, s.trigger);
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
            .filter(|&i| {
                let l = &self.links[i];
                (i != bound || moved) && now_ms >= l.backoff_until && l.down.is_none()
            })
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
            s.trigger = "operator";
            return self.start_attempt(c, ReattachCause::Planned, now_ms);
        }
        if now_ms < s.rate_backoff_until {
            return;
        }
        let bound = s.bound;
        let ret = self.health.return_after_ms;
        // A transport with a new address (a new network) is taken at its first
        // answer: the address change is the kernel's word, not a guess from silence.
        let better = (0..bound).find(|&i| {
            let l = &self.links[i];
            l.status == Status::Healthy
                && (l.healthy_for_ms >= ret || now_ms < l.fast_return_until)
                && now_ms >= l.backoff_until
                && now_ms >= l.quality_hold_until
        });
        if let Some(c) = better {
            s.trigger = if now_ms < self.links[c].fast_return_until {
                "address_added"
            } else {
                "return"
            };
            self.start_attempt(c, ReattachCause::Planned, now_ms);
        }
    }

    /// The bound transport is judged over a loss / RTT / jitter threshold (after its
    /// dwell): move to the most preferred healthy transport, if there is one.
    fn quality_move(&mut self, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let b = &self.links[s.bound];
        if s.attempt.is_some()
            || now_ms < s.rate_backoff_until
            || b.health.over().is_none()
            || b.current != s.bound_addr
        {
            return;
        }
        let bound = s.bound;
        let best = (0..self.links.len()).find(|&i| {
            let l = &self.links[i];
            i != bound && l.status == Status::Healthy && now_ms >= l.backoff_until
        });
        if let Some(c) = best {
            tracing::warn!(
                "transport {} is over its {} threshold: moving to {}",
                self.links[bound].cfg.name,
                self.links[bound].health.over().map_or("?", Over::name),
                self.links[c].cfg.name
            );
            s.trigger = "quality";
            let l = &mut self.links[bound];
            let hold = QUALITY_HOLD_FIRST_MS
                .saturating_mul(1 << l.quality_moves.min(10))
                .min(QUALITY_HOLD_MAX_MS);
            l.quality_hold_until = now_ms + hold;
            l.quality_moves += 1;
            self.start_attempt(c, ReattachCause::Planned, now_ms);
        }
    }
}

/// The cause code of a status the measurements gave.
fn status_cause(st: Status, h: &Health) -> &'static str {
    match st {
        Status::Dead => "loss_ttl",
        Status::Volatile => h.over().map_or("silence", Over::name),
        Status::Healthy => "measured",
        Status::Unknown => "unheard",
    }
}
