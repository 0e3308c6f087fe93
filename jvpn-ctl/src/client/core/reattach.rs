//! One reattach exchange: REQUEST, CHALLENGE, CONFIRM, ACK or DENIED, and its
//! timeout.

use super::*;

impl Core {
    pub(super) fn start_attempt(&mut self, c: usize, cause: ReattachCause, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let mut nonce = [0u8; 16];
        if self.rng.fill(&mut nonce).is_err() {
            tracing::error!("no randomness for a reattach nonce");
            return;
        }
        let l = &self.links[c];
        let kind = l.cfg.kind.wire();
        let ts = to_gateway_ms(now_ms, self.clock_offset_ms);
        let req = match ReattachRequest::new(ts, nonce, kind, cause, l.cfg.name.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("building REATTACH_REQUEST: {e}");
                return;
            }
        };
        let Some(data) = s.control(Body::ReattachRequest(req)) else {
            return;
        };
        s.tries += 1;
        let bl = &self.links[s.bound];
        let heard_ms = match s.moved_heard_ms {
            Some(h) if bl.current != s.bound_addr => h,
            _ => now_ms.saturating_sub(bl.health.silence_ms(now_ms)),
        };
        s.attempt = Some(Attempt {
            candidate: c,
            addr: l.current,
            awaiting_ack: false,
            sent_ms: now_ms,
            started_ms: now_ms,
            cause,
            heard_ms,
        });
        self.counters.reattach_attempts += 1;
        let to = l.gateway();
        tracing::info!(
            "reattach over {} to {to} ({})",
            l.cfg.name,
            cause_name(cause)
        );
        self.out.push(Out::Udp {
            transport: c,
            to,
            data,
        });
        let reason = match cause {
            ReattachCause::AddressChanged => Reason::AddressChanged,
            _ => Reason::ReattachStarted,
        };
        self.go(State::Recovering, reason, None, now_ms);
    }

    pub(super) fn attempt_timeout(&mut self, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let Some(a) = &s.attempt else {
            return;
        };
        if now_ms.saturating_sub(a.sent_ms) < self.health.attempt_timeout_ms {
            return;
        }
        let c = a.candidate;
        self.counters.reattach_timeouts += 1;
        tracing::warn!(
            "reattach over {} to {} unanswered after {} ms",
            self.links[c].cfg.name,
            self.links[c].gateway(),
            self.health.attempt_timeout_ms
        );
        self.attempt_failed(c, Detail::TransportTtl, now_ms);
        self.links[c].backoff_until = now_ms + self.health.attempt_timeout_ms;
        if self.rotate_after_failure(c, "reattach unanswered", now_ms) {
            self.links[c].backoff_until = 0;
        }
    }

    pub(super) fn attempt_failed(&mut self, c: usize, detail: Detail, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let candidate = self.links[c].local.clone();
        let ev = EventRecord::TransportSwitchDenied {
            ts_ms: now_ms,
            session_id: SessionId(s.id),
            candidate,
            detail,
        };
        self.out.push(Out::Event(ev));
        self.go(
            State::Degraded,
            Reason::ReattachValidationFailed,
            Some(detail),
            now_ms,
        );
    }

    /// The attempt under way over transport `t` to its address `addr`.
    pub(super) fn attempt_for(&mut self, t: usize, addr: usize) -> Option<&mut Attempt> {
        match &mut self.phase {
            Phase::Up(s) => s
                .attempt
                .as_mut()
                .filter(|a| a.candidate == t && a.addr == addr),
            _ => None,
        }
    }

    pub(super) fn on_challenge(&mut self, t: usize, addr: usize, challenge: [u8; 16], now_ms: u64) {
        let Some(a) = self.attempt_for(t, addr) else {
            return;
        };
        if a.awaiting_ack {
            return;
        }
        a.awaiting_ack = true;
        a.sent_ms = now_ms;
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if let Some(data) = s.control(Body::ReattachConfirm { challenge }) {
            self.out.push(Out::Udp {
                transport: t,
                to: self.links[t].gateways[addr],
                data,
            });
        }
    }

    pub(super) fn on_ack(
        &mut self,
        t: usize,
        addr: usize,
        generation: u32,
        hint: Hint,
        now_ms: u64,
    ) {
        match self.attempt_for(t, addr) {
            Some(a) if a.awaiting_ack => {}
            _ => return,
        }
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let Some(a) = s.attempt.take() else {
            return;
        };
        let old = s.bound;
        let last_heard = a.heard_ms;
        let planned = a.cause == ReattachCause::Planned;
        let (silent_ms, detection_ms) = if planned {
            (0, 0)
        } else {
            (
                now_ms.saturating_sub(last_heard),
                s.dead_since.map_or(0, |d| d.saturating_sub(last_heard)),
            )
        };
        s.bound = t;
        s.bound_addr = a.addr;
        s.moved_heard_ms = None;
        s.generation = generation;
        s.hint = hint;
        s.switches += 1;
        s.rate_backoff_ms = 0;
        s.dead_since = None;
        s.last_switch = Some(SwitchRecord {
            from: self.links[old].cfg.name.clone(),
            to: self.links[t].cfg.name.clone(),
            generation,
            planned,
            cause: cause_name(a.cause).into(),
            silent_ms,
            detection_ms,
            exchange_ms: now_ms.saturating_sub(a.started_ms),
            attempts: s.tries,
            trigger: s.trigger.into(),
        });
        tracing::info!(
            "bound to {} at {} (generation {generation}); transport {} retired",
            self.links[t].cfg.name,
            self.links[t].gateways[a.addr],
            self.links[old].cfg.name
        );
        self.links[old].fast_return_until = 0;
        let l = &mut self.links[t];
        l.fast_return_until = 0;
        l.backoff_until = 0;
        l.failed_in_row = 0;
        l.not_bound = false;
        l.last_fwd = None;
        // DATA sent before the switch went over the old binding (what was in flight
        // the relay drops as stale): only probes sent from now on measure this one.
        l.sent_at.clear();
        l.health.clear_data();
        l.stalled_since = None;
        self.go(State::Attached, Reason::ReattachSuccess, None, now_ms);
        self.apply_tunnel_mtu();
        let (old_local, new_local) = (self.links[old].local.clone(), self.links[t].local.clone());
        self.emit_switch(Some(old_local), new_local, generation, now_ms);
    }

    pub(super) fn on_denied(&mut self, t: usize, addr: usize, detail: Detail, now_ms: u64) {
        if self.attempt_for(t, addr).is_none() {
            return;
        }
        self.counters.reattach_denied += 1;
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        match detail {
            Detail::RateLimited => {
                s.rate_backoff_ms =
                    (s.rate_backoff_ms * 2).clamp(BACKOFF_RATE_FIRST_MS, BACKOFF_RATE_MAX_MS);
                s.rate_backoff_until = now_ms + s.rate_backoff_ms;
            }
            Detail::Blacklisted => self.links[t].backoff_until = now_ms + BACKOFF_BLACKLISTED_MS,
            _ => self.links[t].backoff_until = now_ms + BACKOFF_CANDIDATE_MS,
        }
        tracing::warn!(
            "reattach over {} to {} DENIED: {detail:?}",
            self.links[t].cfg.name,
            self.links[t].gateway()
        );
        self.attempt_failed(t, detail, now_ms);
        // Another node of the cluster owns the session and is alive: the next address
        // may be it (or reach it).
        if detail == Detail::OwnershipAmbiguous
            && self.rotate_after_failure(t, "ownership_ambiguous", now_ms)
        {
            self.links[t].backoff_until = 0;
        }
    }
}
