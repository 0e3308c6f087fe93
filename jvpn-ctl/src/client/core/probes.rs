//! Time and probes: the tick, KEEPALIVEs on every transport, path-MTU probes, and
//! what their answers say (health, "not bound", end-to-end forwarding).

use super::*;

impl Core {
    pub(super) fn tick(&mut self, now_ms: u64) {
        match &mut self.phase {
            Phase::Connecting(c) => {
                if let Some((session, since)) = &c.confirming {
                    if now_ms.saturating_sub(*since) > CONFIRM_GIVE_UP_MS {
                        tracing::warn!("no ESTABLISHED after CONFIRM; starting over");
                        let first = c.transport;
                        self.connect(first, now_ms);
                    } else {
                        let data = session.confirm.clone();
                        let transport = c.transport;
                        let to = self.links[transport].gateway();
                        if now_ms.saturating_sub(c.last_hello_ms) >= CONFIRM_EVERY_MS {
                            c.last_hello_ms = now_ms;
                            self.out.push(Out::Udp {
                                transport,
                                to,
                                data,
                            });
                        }
                    }
                } else {
                    if now_ms.saturating_sub(c.last_hello_ms) >= HELLO_EVERY_MS {
                        self.send_hello(now_ms);
                    }
                    self.report_silence(now_ms);
                }
            }
            Phase::Ended { reconnect_at } => {
                if let Some(at) = *reconnect_at
                    && now_ms >= at
                {
                    tracing::warn!("establishing a NEW session (the old one is TERMINATED)");
                    self.connect(0, now_ms);
                }
            }
            Phase::Up(_) => self.tick_session(now_ms),
        }
    }

    /// Tunnel data since the last look keeps the session active; none, sent or
    /// received, for `idle_after_ms` makes it idle (the slow keepalive schedule,
    /// docs/client.md). Waking re-bases every transport's silence and probes them all
    /// at once, so a path that died while idle is found within the fast thresholds.
    pub(super) fn note_activity(&mut self, now_ms: u64) {
        let (tx, rx) = (self.counters.tx_packets, self.counters.rx_packets);
        let idle_after = self.health.idle_after_ms;
        let a = &mut self.activity;
        if (tx, rx) != (a.tx, a.rx) {
            (a.tx, a.rx, a.last_data_ms) = (tx, rx, now_ms);
            if std::mem::take(&mut a.idle) {
                tracing::debug!("tunnel data again: keepalives at the fast rate");
                for l in &mut self.links {
                    l.health.rebase(now_ms);
                }
                self.probe_all(now_ms, true);
            }
        } else if !a.idle && idle_after > 0 && now_ms.saturating_sub(a.last_data_ms) >= idle_after {
            a.idle = true;
            tracing::debug!(
                "no tunnel data for {idle_after} ms: idle, keepalives every {} ms (bound) / {} ms",
                self.health.idle_keepalive_ms,
                self.health.idle_standby_ms
            );
        }
    }

    pub(super) fn thresholds(&self, hint: &Hint) -> (Thresholds, u64) {
        let h = &self.health;
        let pick = |own: u64, hint: u32| if own > 0 { own } else { u64::from(hint).max(1) };
        let keepalive = pick(h.keepalive_interval_ms, hint.keepalive_interval_ms);
        let loss_ttl = pick(h.transport_loss_ttl_ms, hint.transport_loss_ttl_ms);
        // Silence long enough to be more than a lost probe or two on the bound
        // transport (probed every `probe_interval_ms`): loss is the quality
        // verdict's business, with its dwell; this is "nothing comes back at all".
        let mut volatile_after = if h.volatile_after_ms > 0 {
            h.volatile_after_ms
        } else {
            (2 * keepalive)
                .max(SILENT_PROBES * h.probe_interval_ms)
                .min(loss_ttl)
        };
        let mut loss_ttl = loss_ttl;
        if self.activity.idle {
            // Idle, a transport is heard from once per slow period: two missed are a
            // worry, three a loss (the gateway waits for three of the bound one's).
            let slowest = h.idle_keepalive_ms.max(h.idle_standby_ms);
            volatile_after = volatile_after.max(2 * slowest);
            loss_ttl = loss_ttl.max(3 * slowest);
        }
        let t = Thresholds {
            max_loss_pct: h.max_loss_pct,
            max_rtt_ms: h.max_rtt_ms,
            max_jitter_ms: h.max_jitter_ms,
            volatile_after_ms: volatile_after,
            loss_ttl_ms: loss_ttl,
            probe_timeout_ms: keepalive.max(2 * u64::from(h.max_rtt_ms)),
            quality_dwell_ms: h.quality_dwell_ms,
        };
        (t, keepalive)
    }

    pub(super) fn probe_all(&mut self, now_ms: u64, force: bool) {
        let Phase::Up(s) = &self.phase else {
            return;
        };
        let keepalive = self.thresholds(&s.hint).1;
        // The bound transport is measured more often: its quality decides moves.
        let bound_every = match self.health.probe_interval_ms {
            0 => keepalive,
            p => p.min(keepalive),
        };
        let (bound_every, keepalive) = if self.activity.idle {
            (self.health.idle_keepalive_ms, self.health.idle_standby_ms)
        } else {
            (bound_every, keepalive)
        };
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let sent = self.counters.tx_packets;
        let offset = self.clock_offset_ms;
        for (i, l) in self.links.iter_mut().enumerate() {
            let every = if i == s.bound { bound_every } else { keepalive };
            let due = force
                || l.last_probe_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= every);
            // A link the kernel says is down cannot carry a probe.
            if !due || l.down.is_some() {
                continue;
            }
            let ts = l.next_ts(now_ms);
            let ts_ms = to_gateway_ms(ts, offset);
            if let Some(data) = s.control(Body::Keepalive { ts_ms, pad: 0 }) {
                l.last_probe_ms = Some(now_ms);
                l.health.on_probe_sent(ts);
                remember(&mut l.sent_at, (ts, sent));
                self.counters.keepalives_sent += 1;
                self.out.push(Out::Udp {
                    transport: i,
                    to: l.gateway(),
                    data,
                });
            }
        }
    }

    /// Path-MTU probes (padded KEEPALIVEs) on every healthy transport, standby ones
    /// too, so a switch finds the new path's size already known. Only healthy ones:
    /// a probe lost to a dying link must not read as "too big".
    pub(super) fn probe_mtu(&mut self, now_ms: u64, probe_timeout_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let sent = self.counters.tx_packets;
        let offset = self.clock_offset_ms;
        for (i, l) in self.links.iter_mut().enumerate() {
            if l.status != Status::Healthy {
                continue;
            }
            let timeout = l.health.rtt_ms().map_or(probe_timeout_ms, |r| {
                ((r * 3.0) as u64).clamp(100, probe_timeout_ms.max(100))
            });
            let Some(p) = l.pmtu.poll_probe(now_ms, timeout) else {
                continue;
            };
            let payload = usize::from(p.size.saturating_sub(ip_udp_len(l.v6())));
            let pad = u16::try_from(payload.saturating_sub(KEEPALIVE_LEN)).unwrap_or(0);
            let ts = l.next_ts(now_ms);
            let ts_ms = to_gateway_ms(ts, offset);
            if let Some(data) = s.control(Body::Keepalive { ts_ms, pad }) {
                remember(&mut l.mtu_probes, (ts, p.id));
                remember(&mut l.sent_at, (ts, sent));
                self.counters.mtu_probes_sent += 1;
                self.out.push(Out::Udp {
                    transport: i,
                    to: l.gateway(),
                    data,
                });
            }
        }
    }

    /// Gives the TUN the bound transport's tunnel MTU (capped by the configuration)
    /// when it changed.
    pub(super) fn apply_tunnel_mtu(&mut self) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let mtu = self.links[s.bound].tunnel_mtu().min(self.mtu_cap);
        if mtu != s.tun_mtu {
            tracing::info!(
                "tunnel MTU {mtu} (path MTU {} over {})",
                self.links[s.bound].pmtu.current(),
                self.links[s.bound].cfg.name
            );
            s.tun_mtu = mtu;
            s.notices_left = MTU_NOTICES;
            s.notice_at = 0;
            self.out.push(Out::TunMtu(mtu));
        }
    }

    /// Tells the exit the tunnel MTU, in the tunnel (docs/protocol.md, DATA): it then
    /// sends nothing larger towards this client, and answers its own senders with
    /// ICMP "too big". Repeated a few times, one keepalive interval apart.
    pub(super) fn send_mtu_notice(&mut self, now_ms: u64, every_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        if s.notices_left == 0 || now_ms < s.notice_at {
            return;
        }
        s.notices_left -= 1;
        s.notice_at = now_ms + every_ms;
        let notice = proto::data::tunnel_ctl::mtu_notice(s.tun_mtu);
        self.seal(&notice);
    }

    /// A verified KEEPALIVE_ACK on transport `t` (`echo_ts_ms` back in local time).
    pub(super) fn on_keepalive_ack(
        &mut self,
        t: usize,
        echo_ts_ms: u64,
        generation: u32,
        up_forwarded: u32,
        flags: u8,
        now_ms: u64,
    ) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let (bound, current) = (s.bound, s.generation);
        // The bound transport at the binding's address (once it has moved on, the
        // answers are a standby's: the node there does not hold the binding).
        let at_binding = t == bound && self.links[t].current == s.bound_addr;
        let l = &mut self.links[t];
        let probe = l.mtu_probes.iter().position(|p| p.0 == echo_ts_ms);
        if let Some(i) = probe
            && let Some((_, id)) = l.mtu_probes.remove(i)
        {
            l.pmtu.on_ack(id, now_ms);
            self.apply_tunnel_mtu();
        }
        let l = &mut self.links[t];
        if at_binding {
            // An answer to a KEEPALIVE sent before the last switch says nothing
            // about the binding as it is now.
            if generation < current {
                return;
            }
            if flags & ACK_FROM_BINDING == 0 {
                // Never health: the gateway drops this transport's DATA as stale.
                self.counters.not_bound_signals += 1;
                if !l.not_bound {
                    tracing::warn!(
                        "the gateway sees {}'s packets from an address that is not the \
                         binding (NAT rebinding or a new address): rebinding",
                        l.cfg.name
                    );
                }
                l.not_bound = true;
                return self.rebind(t, now_ms);
            }
            l.not_bound = false;
            self.check_forwarding(t, echo_ts_ms, up_forwarded, now_ms);
        }
        let l = &mut self.links[t];
        l.health.on_rx(now_ms);
        if probe.is_none() {
            l.health.on_probe_ack(echo_ts_ms, now_ms);
        }
    }

    /// End-to-end liveness of the binding: DATA the client sent before one answered
    /// KEEPALIVE should have been counted by the relay by the time the gateway read
    /// its counter for the answer (the relay handles a frame before its socket sees
    /// the next one). Several sent and none forwarded: the tunnel is not getting
    /// through, whatever the KEEPALIVEs say.
    pub(super) fn check_forwarding(&mut self, t: usize, echo_ts_ms: u64, fwd: u32, now_ms: u64) {
        let l = &mut self.links[t];
        let Some(&(_, sent)) = l.sent_at.iter().find(|(ts, _)| *ts == echo_ts_ms) else {
            return;
        };
        match l.last_fwd {
            Some((sent0, _)) if sent < sent0 => return,
            Some((sent0, fwd0)) => {
                let got = fwd.wrapping_sub(fwd0);
                l.health
                    .on_data_sample(now_ms, sent - sent0, u64::from(got));
                if got > 0 {
                    l.stalled_since = None;
                } else if sent - sent0 >= STALL_MIN_SENT && l.stalled_since.is_none() {
                    tracing::warn!(
                        "{}: {} DATA sent, none forwarded by the gateway",
                        l.cfg.name,
                        sent - sent0
                    );
                    l.stalled_since = Some(now_ms);
                }
            }
            None => {}
        }
        l.last_fwd = Some((sent, fwd));
    }

    /// The bound transport reaches the gateway from a new address: reattach over it
    /// at once, from that address (the NAT's new mapping).
    pub(super) fn rebind(&mut self, t: usize, now_ms: u64) {
        let Phase::Up(s) = &mut self.phase else {
            return;
        };
        let idle = matches!(s.state, State::Attached | State::Volatile | State::Degraded);
        if !idle
            || s.attempt.is_some()
            || now_ms < s.rate_backoff_until
            || now_ms < self.links[t].backoff_until
        {
            return;
        }
        s.dead_since.get_or_insert(now_ms);
        s.trigger = "not_bound";
        self.counters.rebinds += 1;
        self.start_attempt(t, ReattachCause::AddressChanged, now_ms);
    }
}
