//! What arrives: datagrams from the gateway (DATA, control), TUN packets, operator
//! requests.

use super::*;

impl Core {
    /// A datagram received on transport `t` from `from`, one of its gateway addresses
    /// (anything else is not the gateway and is ignored). Only what comes from the
    /// transport's current address counts as its health.
    pub(super) fn on_datagram(&mut self, t: usize, from: SocketAddr, data: &[u8], now_ms: u64) {
        let Some(a) = self.links.get(t).and_then(|l| l.addr_index(from)) else {
            return;
        };
        match data.get(1) {
            Some(&msg_type::DATA) => self.on_data(t, a, data, now_ms),
            Some(&msg_type::WELCOME | &msg_type::ESTABLISHED) => {
                self.on_handshake_msg(t, a, data, now_ms)
            }
            Some(&msg_type::TIME | &msg_type::COOKIE) => self.on_reply(t, a, data, now_ms),
            _ => self.on_control(t, a, data, now_ms),
        }
    }

    /// Something authenticated arrived on `t` from its address `a`.
    pub(super) fn heard(&mut self, t: usize, a: usize, now_ms: u64) {
        let l = &mut self.links[t];
        if l.current == a {
            l.health.on_rx(now_ms);
        }
    }

    /// DATA through [`Core::step`] (the shell's fast path is
    /// [`Core::open_in_place`]).
    pub(super) fn on_data(&mut self, t: usize, a: usize, data: &[u8], now_ms: u64) {
        let mut buf = data.to_vec();
        if let Some(r) = self.open_data(t, a, &mut buf, now_ms) {
            buf.truncate(r.end);
            buf.drain(..r.start);
            self.out.push(Out::Tun(buf));
        }
    }

    pub(super) fn on_control(&mut self, t: usize, a: usize, data: &[u8], now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let Ok(u) = Unverified::decode(data) else {
            self.counters.ctl_rejected += 1;
            return;
        };
        if u.session_id() != s.id {
            self.counters.ctl_rejected += 1;
            return;
        }
        let from = self.links[t].gateways[a];
        let kind = match u.verify(&s.mac) {
            Err(_) => Some("proof_invalid"),
            Ok(_) if !s.gw_ctl.update(from, u.ctr()) => Some("replay"),
            Ok(_) => None,
        };
        if let Some(kind) = kind {
            self.counters.ctl_rejected += 1;
            let ev = EventRecord::SecurityEvent {
                ts_ms: now_ms,
                session_id: Some(SessionId(s.id)),
                source: from.to_string(),
                kind: kind.into(),
            };
            self.out.push(Out::Event(ev));
            return;
        }
        let msg = u.into_msg();
        if let Body::KeepaliveAck {
            echo_ts_ms,
            generation,
            up_forwarded,
            flags,
        } = msg.body
        {
            // An answer from an address the transport has left says nothing about
            // the one it uses now.
            if a != self.links[t].current {
                return;
            }
            // It echoes our timestamp in the gateway's time (as we sent it).
            let Some(echo) = from_gateway_ms(echo_ts_ms, self.clock_offset_ms) else {
                return;
            };
            return self.on_keepalive_ack(t, echo, generation, up_forwarded, flags, now_ms);
        }
        self.heard(t, a, now_ms);
        match msg.body {
            Body::KeepaliveAck { .. } => {}
            Body::ReattachChallenge { challenge } => self.on_challenge(t, a, challenge, now_ms),
            Body::ReattachAck { generation, hint } => self.on_ack(t, a, generation, hint, now_ms),
            Body::ReattachDenied { reason } => {
                let detail = Detail::from_code(reason).unwrap_or(Detail::OwnershipAmbiguous);
                self.on_denied(t, a, detail, now_ms);
            }
            Body::Close { reason } => {
                let reason = Reason::from_code(reason).unwrap_or(Reason::Closed);
                tracing::warn!("the gateway closed the session: {reason:?}");
                self.terminate(reason, now_ms);
            }
            // Client-to-gateway messages reflected back at us: ignore.
            Body::ReattachRequest(_) | Body::ReattachConfirm { .. } | Body::Keepalive { .. } => {}
        }
    }

    /// An inner packet from the TUN device. One larger than the tunnel MTU (sent
    /// before the TUN learned a smaller one) is answered like a router would: ICMP
    /// "too big" back into the TUN, or fragments for IPv4 without DF. Outer packets
    /// are never fragmented.
    pub(super) fn on_tun(&mut self, pkt: &[u8]) {
        let Phase::Up(s) = &self.phase else {
            self.counters.tx_no_session += 1;
            return;
        };
        let ours = match crate::inner::addrs(pkt) {
            Some((src, _)) => src == s.tunnel || s.tunnel6.is_some_and(|a| src == a),
            None => false,
        };
        if !ours {
            self.counters.tx_foreign_source += 1;
            return;
        }
        let mtu = s.tun_mtu;
        let mut reply = Vec::new();
        match icmp::fit(pkt, mtu, &mut reply, |p| self.seal(p)) {
            icmp::Fitted::Whole => {}
            icmp::Fitted::Fragmented => self.counters.tx_fragmented += 1,
            icmp::Fitted::Replied => {
                self.counters.tx_too_big += 1;
                self.out.push(Out::Tun(reply));
            }
            icmp::Fitted::Refused | icmp::Fitted::Dropped => self.counters.tx_too_big += 1,
        }
    }

    /// Seals `pkt` (a fragment, an MTU notice: whatever fits) into a new datagram
    /// queued for the binding.
    pub(super) fn seal(&mut self, pkt: &[u8]) {
        let mut data = Vec::with_capacity(pkt.len() + 64);
        if let Some((transport, to)) = self.seal_for_binding(pkt, &mut data) {
            self.out.push(Out::Udp {
                transport,
                to,
                data,
            });
        }
    }

    /// Operator request: move to the transport named `name` now (a planned reattach).
    pub fn request_move(&mut self, name: &str) -> Result<(), String> {
        let Some(i) = self.links.iter().position(|l| l.cfg.name == name) else {
            let names: Vec<_> = self.links.iter().map(|l| l.cfg.name.as_str()).collect();
            return Err(format!(
                "no transport {name:?} (configured: {})",
                names.join(", ")
            ));
        };
        let Phase::Up(s) = &mut self.phase else {
            return Err("no session is up".into());
        };
        if s.bound == i && self.links[i].current == s.bound_addr {
            return Err(format!("already bound to {name}"));
        }
        if s.attempt.is_some() {
            return Err("a reattach is already under way".into());
        }
        s.move_to = Some(i);
        Ok(())
    }

    /// Ends the session on the agent's own initiative (shutdown): CLOSE to the gateway.
    pub(super) fn close(&mut self, now_ms: u64) {
        if let Phase::Up(s) = &mut self.phase {
            let msg = s.control(Body::close(Reason::Closed));
            let bound = s.bound;
            if let Some(data) = msg {
                self.out.push(Out::Udp {
                    transport: bound,
                    to: self.links[bound].gateway(),
                    data,
                });
            }
            self.reconnect = false;
            self.terminate(Reason::Closed, now_ms);
        }
    }
}
