//! The handshake: HELLO (rotating over transports and gateway addresses), WELCOME,
//! CONFIRM, ESTABLISHED, and the session it makes; and the gateway's sessionless
//! answers to a HELLO it did not take: TIME (our clock is off: the offset is learned
//! and the HELLO sent again at once, stamped with the gateway's time) and COOKIE (it
//! is under load: the HELLO is sent again at once with the cookie).

use super::*;

impl Core {
    pub(super) fn connect(&mut self, first: usize, now_ms: u64) {
        self.phase = Phase::Connecting(Box::new(Connecting {
            transport: first,
            handshakes: Vec::new(),
            hellos_on_transport: 0,
            last_hello_ms: 0,
            quick_hellos: 0,
            silence: silence::Silence::new(now_ms),
            confirming: None,
        }));
        self.last_state = State::Birth;
        self.send_hello(now_ms);
    }

    pub(super) fn send_hello(&mut self, now_ms: u64) {
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        // A transport the kernel says is down gets no HELLO while another is up.
        let n = self.links.len();
        if self.links[c.transport].down.is_some()
            && let Some(next) = (1..n)
                .map(|k| (c.transport + k) % n)
                .find(|&i| self.links[i].down.is_none())
        {
            c.transport = next;
            c.hellos_on_transport = 0;
        }
        // Each address of a transport gets at least one HELLO before the next transport.
        let per_transport = HELLOS_PER_TRANSPORT.max(self.links[c.transport].gateways.len() as u32);
        if c.hellos_on_transport >= per_transport {
            c.transport = (c.transport + 1) % self.links.len();
            c.hellos_on_transport = 0;
        } else if c.hellos_on_transport > 0 {
            // The last HELLO went unanswered: the next goes to the next address.
            let t = c.transport;
            self.rotate(t, "HELLO unanswered", now_ms);
        }
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        c.quick_hellos = 0;
        let t = c.transport;
        if self.push_hello(t, now_ms) {
            let Phase::Connecting(c) = &mut self.phase else {
                return;
            };
            c.hellos_on_transport += 1;
        }
    }

    /// Queues a fresh HELLO over transport `t` to its current address (the gateway
    /// refuses a repeated one as a replay), stamped with the gateway's time as far
    /// as we know it, with the transport's cookie for that address if it has one.
    fn push_hello(&mut self, t: usize, now_ms: u64) -> bool {
        let Phase::Connecting(c) = &mut self.phase else {
            return false;
        };
        let l = &self.links[t];
        let cookie = l.cookie.filter(|(a, _)| *a == l.current).map(|(_, c)| c);
        let ts = to_gateway_ms(now_ms, self.clock_offset_ms);
        let built = ClientHandshake::start_with_cookie(
            &self.identity,
            &self.gateway_pub,
            ts,
            cookie,
            &self.rng,
        );
        match built {
            Ok((hs, hello)) => {
                if c.handshakes.len() == MAX_HANDSHAKES {
                    c.handshakes.remove(0);
                }
                c.handshakes.push(SentHello { hs, transport: t });
                c.last_hello_ms = now_ms;
                c.silence.sent(t);
                let to = l.gateway();
                tracing::debug!(
                    "HELLO over {} to {to}{}",
                    l.cfg.name,
                    if cookie.is_some() {
                        " with a cookie"
                    } else {
                        ""
                    }
                );
                self.out.push(Out::Udp {
                    transport: t,
                    to,
                    data: hello,
                });
                true
            }
            Err(e) => {
                tracing::error!("building HELLO: {e}");
                false
            }
        }
    }

    /// A TIME or COOKIE on transport `t` from its address `a`. Only one answering a
    /// HELLO still waiting on `t` counts, and it consumes that HELLO: one answer
    /// makes at most one new HELLO, so replayed answers cannot make the client loop.
    /// Anything else changes nothing (counted, logged at debug).
    pub(super) fn on_reply(&mut self, t: usize, a: usize, data: &[u8], now_ms: u64) {
        let from = self.links[t].gateways[a];
        let is_time = data.get(1) == Some(&msg_type::TIME);
        let what = if is_time { "TIME" } else { "COOKIE" };
        let refused = |core: &mut Core, why: &str| {
            if is_time {
                core.counters.time_refused += 1;
            } else {
                core.counters.cookie_refused += 1;
            }
            tracing::debug!(
                "{what} over {} from {from} ignored: {why}",
                core.links[t].cfg.name
            );
        };
        let waiting = match &mut self.phase {
            Phase::Connecting(c) if c.confirming.is_none() => c,
            _ => return refused(self, "no HELLO is waiting"),
        };
        let pending = |c: &Connecting, nonce: &[u8; 16]| {
            c.handshakes
                .iter()
                .position(|h| h.transport == t && h.hs.nonce() == *nonce)
        };
        if is_time {
            let time = match proto::Time::decode(data) {
                Ok(x) => x,
                Err(e) => return refused(self, &e.to_string()),
            };
            let Some(i) = pending(waiting, &time.nonce_echo) else {
                return refused(self, "not the nonce of a HELLO waiting on this transport");
            };
            let gateway_ms = match waiting.handshakes[i].hs.verify_time(&time) {
                Ok(g) => g,
                Err(e) => return refused(self, &e.to_string()),
            };
            // That HELLO was refused as stale: nothing more will come for it.
            waiting.handshakes.remove(i);
            waiting.silence.answered();
            self.counters.time_replies += 1;
            self.learn_offset(gateway_ms, now_ms, from, "TIME");
        } else {
            let cookie = match proto::Cookie::decode(data) {
                Ok(x) => x,
                Err(e) => return refused(self, &e.to_string()),
            };
            let Some(i) = pending(waiting, &cookie.nonce_echo) else {
                return refused(self, "not the nonce of a HELLO waiting on this transport");
            };
            // The gateway's XDP program answered it: the controller never saw it.
            waiting.handshakes.remove(i);
            waiting.silence.answered();
            self.counters.cookies += 1;
            let l = &mut self.links[t];
            tracing::info!(
                "gateway {from} is under load: HELLO over {} again with its cookie",
                l.cfg.name
            );
            l.cookie = Some((a, cookie.cookie));
        }
        self.hello_again(t, a, now_ms);
    }

    /// The gateway answered a HELLO over `t` from its address `a` with TIME or
    /// COOKIE: a new HELLO there at once (within [`QUICK_HELLOS`] per timer period;
    /// beyond that the next waits for the timer, with what was learned).
    fn hello_again(&mut self, t: usize, a: usize, now_ms: u64) {
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        if c.quick_hellos >= QUICK_HELLOS {
            tracing::debug!("{QUICK_HELLOS} HELLOs answered at once already: the next waits");
            return;
        }
        c.quick_hellos += 1;
        if c.transport != t {
            // A late answer on a transport the HELLOs had left: it reaches the gateway.
            c.transport = t;
            c.hellos_on_transport = 1;
        }
        // That node answered: the next HELLO goes there (as a WELCOME's CONFIRM does).
        self.links[t].current = a;
        self.push_hello(t, now_ms);
    }

    /// The gateway's time `gateway_ms` (signed, for our HELLO) at our `now_ms`:
    /// every timestamp we send it from now on is local time plus the difference.
    fn learn_offset(&mut self, gateway_ms: u64, now_ms: u64, from: SocketAddr, via: &str) {
        let offset = i64::try_from(i128::from(gateway_ms) - i128::from(now_ms))
            .unwrap_or(i64::MAX)
            .max(-i64::MAX);
        if offset != self.clock_offset_ms {
            let n = offset.unsigned_abs();
            let side = if offset >= 0 { "behind" } else { "ahead of" };
            tracing::warn!(
                "gateway {from}: our clock is {n} ms {side} the gateway's ({via}); using \
                 gateway time for this gateway's timestamps"
            );
        }
        self.clock_offset_ms = offset;
        self.clock_offset_source = Some(format!("{via} from {from}"));
    }

    pub(super) fn on_handshake_msg(&mut self, t: usize, from: usize, data: &[u8], now_ms: u64) {
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        match data.get(1) {
            Some(&msg_type::WELCOME) if c.confirming.is_none() => {
                let Some(session) = c
                    .handshakes
                    .iter_mut()
                    .find_map(|h| h.hs.on_welcome(data).ok())
                else {
                    self.counters.ctl_rejected += 1;
                    return;
                };
                // Its time is signed over our HELLO: as good as a TIME. Far from what
                // we stamp with (a clock off by less than the freshness window, or
                // one that drifted), it becomes the offset.
                let ours = to_gateway_ms(now_ms, self.clock_offset_ms);
                if session.gateway_ts_ms.abs_diff(ours) > WELCOME_SKEW_MS {
                    let from = self.links[t].gateways[from];
                    self.learn_offset(session.gateway_ts_ms, now_ms, from, "WELCOME");
                }
                let Phase::Connecting(c) = &mut self.phase else {
                    return;
                };
                // The node that sent it holds the session: CONFIRM goes there (a late
                // WELCOME may come from an address the transport has since left).
                let l = &mut self.links[t];
                l.current = from;
                tracing::info!(
                    "WELCOME over {} from {}: session {:016x}, tunnel address {}{}",
                    l.cfg.name,
                    l.gateway(),
                    session.session_id,
                    session.tunnel_addr,
                    session
                        .tunnel6
                        .map(|a| format!(" and {a}"))
                        .unwrap_or_default()
                );
                c.transport = t;
                self.out.push(Out::Udp {
                    transport: t,
                    to: l.gateway(),
                    data: session.confirm.clone(),
                });
                c.confirming = Some((session, now_ms));
            }
            Some(&msg_type::ESTABLISHED) => {
                let ok = c
                    .confirming
                    .as_ref()
                    .is_some_and(|(s, _)| s.verify_established(data).is_ok());
                if !ok {
                    self.counters.ctl_rejected += 1;
                    return;
                }
                let t = c.transport;
                let Some((session, _)) = c.confirming.take() else {
                    return;
                };
                self.established(session, t, now_ms);
            }
            _ => {}
        }
    }

    pub(super) fn established(&mut self, cs: ClientSession, t: usize, now_ms: u64) {
        self.established += 1;
        let s = Session {
            id: cs.session_id,
            mac: cs.keys.mac_key(),
            c2x: DataKey::new(&cs.keys.c2x),
            x2c: DataKey::new(&cs.keys.x2c),
            tunnel: cs.tunnel_addr,
            tunnel6: cs.tunnel6,
            hint: cs.hint,
            state: State::Birth,
            version: 0,
            bound: t,
            bound_addr: self.links[t].current,
            generation: 1,
            ctl_ctr: cs.next_ctr,
            data_ctr: 0,
            rx_window: ReplayWindow::new(),
            gw_ctl: GwWindows::default(),
            attempt: None,
            dead_since: None,
            moved_heard_ms: None,
            left_attached_ms: None,
            created_ms: now_ms,
            tries: 0,
            rate_backoff_ms: 0,
            rate_backoff_until: 0,
            switches: 0,
            last_switch: None,
            move_to: None,
            tun_mtu: 0,
            notices_left: 0,
            notice_at: 0,
            trigger: "",
        };
        for l in &mut self.links {
            l.start_over(now_ms);
            l.backoff_until = 0;
            l.failed_in_row = 0;
            l.quality_hold_until = 0;
            l.quality_moves = 0;
        }
        self.links[t].health.on_rx(now_ms);
        self.out.push(Out::TunUp(s.tunnel, s.tunnel6));
        self.phase = Phase::Up(Box::new(s));
        self.apply_tunnel_mtu();
        self.go(State::Attached, Reason::BirthComplete, None, now_ms);
        let local = self.links[t].local.clone();
        self.emit_switch(None, local, 1, now_ms);
        // Probe every transport right away so standby health is known early.
        self.probe_all(now_ms, true);
    }
}
