//! `client status`: what the core knows, as the control socket shows it.

use super::*;

impl Core {
    pub fn status(&self, now_ms: u64) -> ClientStatus {
        let s = match &self.phase {
            Phase::Up(s) => Some(&**s),
            _ => None,
        };
        let backoff_all = s.map_or(0, |s| s.rate_backoff_until);
        let th = s.map(|s| self.thresholds(&s.hint).0);
        ClientStatus {
            session_id: s.map(|s| SessionId(s.id)),
            state: s.map_or(self.last_state, |s| s.state),
            version: s.map_or(0, |s| s.version),
            tunnel_addr: s.map(|s| s.tunnel.to_string()),
            tunnel_addr6: s.and_then(|s| s.tunnel6).map(|a| a.to_string()),
            bound: s.map(|s| self.links[s.bound].cfg.name.clone()),
            bound_gateway: s.map(|s| self.links[s.bound].gateways[s.bound_addr].to_string()),
            generation: s.map_or(0, |s| s.generation),
            age_s: s.map_or(0, |s| now_ms.saturating_sub(s.created_ms) / 1000),
            switches: s.map_or(0, |s| s.switches),
            sessions_established: self.established,
            reattach: s.and_then(|s| s.attempt.as_ref()).and_then(|a| {
                self.links.get(a.candidate).map(|l| {
                    format!(
                        "{} (awaiting {})",
                        l.cfg.name,
                        if a.awaiting_ack { "ack" } else { "challenge" }
                    )
                })
            }),
            last_switch: s.and_then(|s| s.last_switch.clone()),
            tunnel_mtu: s.map_or(0, |s| s.tun_mtu),
            clock_offset_ms: self.clock_offset_ms,
            idle: self.activity.idle,
            clock_offset_source: self.clock_offset_source.clone(),
            transports: self
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| TransportStatus {
                    name: l.cfg.name.clone(),
                    kind: format!("{:?}", l.cfg.kind).to_lowercase(),
                    local: l.local.clone(),
                    gateway: l.gateway().to_string(),
                    gateways: l.gateways.iter().map(ToString::to_string).collect(),
                    gateway_moved: l.moved.clone(),
                    bound: s.is_some_and(|s| s.bound == i),
                    health: l.status,
                    rtt_ms: l.health.rtt_ms(),
                    jitter_ms: l.health.jitter_ms(),
                    loss_pct: th.map_or(0, |th| l.health.loss_pct(now_ms, &th)),
                    silence_ms: l.health.silence_ms(now_ms),
                    backoff_ms: l.backoff_until.max(backoff_all).saturating_sub(now_ms),
                    path_mtu: l.pmtu.current(),
                    path_mtu_settled: l.pmtu.settled(),
                    not_bound: l.not_bound,
                    stalled: l.stalled_since.is_some(),
                    cause: l.cause.into(),
                    data_loss_pct: l.health.data_loss_pct(now_ms),
                    cookie: l.cookie.is_some(),
                })
                .collect(),
            counters: self.counters.clone(),
            handshake: self.handshake_status(now_ms),
        }
    }
}
