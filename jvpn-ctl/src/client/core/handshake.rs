//! The handshake: HELLO (rotating over transports and gateway addresses), WELCOME,
//! CONFIRM, ESTABLISHED, and the session it makes.

use super::*;

impl Core {
    pub(super) fn connect(&mut self, first: usize, now_ms: u64) {
        self.phase = Phase::Connecting(Box::new(Connecting {
            transport: first,
            handshakes: Vec::new(),
            hellos_on_transport: 0,
            last_hello_ms: 0,
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
        // A fresh HELLO each time: the gateway refuses a repeated one as a replay.
        match ClientHandshake::start(&self.identity, &self.gateway_pub, now_ms, &self.rng) {
            Ok((hs, hello)) => {
                if c.handshakes.len() == MAX_HANDSHAKES {
                    c.handshakes.remove(0);
                }
                c.handshakes.push(hs);
                c.hellos_on_transport += 1;
                c.last_hello_ms = now_ms;
                let transport = c.transport;
                let to = self.links[transport].gateway();
                tracing::debug!("HELLO over {} to {to}", self.links[transport].cfg.name);
                self.out.push(Out::Udp {
                    transport,
                    to,
                    data: hello,
                });
            }
            Err(e) => tracing::error!("building HELLO: {e}"),
        }
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
                    .find_map(|hs| hs.on_welcome(data).ok())
                else {
                    self.counters.ctl_rejected += 1;
                    return;
                };
                // The node that sent it holds the session: CONFIRM goes there (a late
                // WELCOME may come from an address the transport has since left).
                let l = &mut self.links[t];
                l.current = from;
                tracing::info!(
                    "WELCOME over {} from {}: session {:016x}, tunnel address {}",
                    l.cfg.name,
                    l.gateway(),
                    session.session_id,
                    session.tunnel_addr
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
        self.out.push(Out::TunUp(s.tunnel));
        self.phase = Phase::Up(Box::new(s));
        self.apply_tunnel_mtu();
        self.go(State::Attached, Reason::BirthComplete, None, now_ms);
        let local = self.links[t].local.clone();
        self.emit_switch(None, local, 1, now_ms);
        // Probe every transport right away so standby health is known early.
        self.probe_all(now_ms, true);
    }
}
