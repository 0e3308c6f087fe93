//! Answers to the control API (`jvpn-ctl sessions`, `session show|kill`, `stats`,
//! `policy show`, `cluster status`). Event streams are served by the control server
//! from the bus.

use std::collections::BTreeMap;

use jvpn_common::counters;

use super::core::{Core, Entry};
use crate::{
    control::api::{NOT_A_CLUSTER, Request, Response, SessionId, SessionInfo, Stats},
    session::{Event, State},
};

impl Core {
    pub fn on_request(&mut self, req: &Request, now_ms: u64) -> Response {
        match req {
            Request::Sessions => {
                let mut list: Vec<SessionInfo> = self
                    .sessions
                    .iter()
                    .map(|(id, e)| self.info(*id, e, now_ms))
                    .collect();
                list.sort_by_key(|s| s.id);
                Response::ok(&list)
            }
            Request::Session { id } => match self.sessions.get(&id.0) {
                Some(e) => Response::ok(&self.info(id.0, e, now_ms)),
                None => Response::no_session(*id),
            },
            Request::Kill { id } => {
                if !self.sessions.contains_key(&id.0) {
                    return Response::no_session(*id);
                }
                self.drive(id.0, &Event::OperatorKill, None, now_ms);
                tracing::info!(session = %id, "terminated by the operator");
                Response::ok(&serde_json::json!({ "killed": id }))
            }
            Request::Stats => Response::ok(&self.stats(now_ms)),
            Request::Policy => Response::ok(&self.policy),
            // Without the etcd facts (the shell adds them: `cluster::etcd_facts`).
            Request::ClusterStatus => match self.cluster_status(now_ms) {
                Some(s) => Response::ok(&s),
                None => Response::error(NOT_A_CLUSTER),
            },
            Request::Drain => {
                let n = self.session_count();
                self.shutdown(now_ms);
                tracing::warn!("drained: closed {n} sessions on the operator's request");
                Response::ok(&serde_json::json!({ "closed": n }))
            }
            Request::Events { .. } => Response::error("events are served by the control server"),
            // The files are read by the shell (`run.rs`), which then calls
            // `apply_reload`.
            Request::Reload => Response::error("reload is answered by the gateway's loop"),
            Request::Status | Request::Move { .. } => Response::error(
                "this is a gateway's control socket; `client status` and `client move` talk to a client agent's",
            ),
        }
    }

    fn info(&self, id: u64, e: &Entry, now_ms: u64) -> SessionInfo {
        let st = self.stats_of(id);
        let s = &e.session;
        let owner = self.owner_of(id);
        SessionInfo {
            id: SessionId(id),
            state: s.state,
            version: s.version,
            peer: hex::encode(e.peer),
            peer_name: self
                .peers
                .iter()
                .find(|p| p.key == e.peer)
                .and_then(|p| p.name.clone()),
            binding: s.binding.map(|b| b.to_string()),
            generation: s.generation,
            tunnel_addr: e.tunnel.v4.to_string(),
            tunnel_addr6: e.tunnel.v6.map(|a| a.to_string()),
            age_s: now_ms.saturating_sub(s.created_ms) / 1000,
            idle_ms: now_ms.saturating_sub(s.last_rx_ms),
            switches: u64::from(s.generation.saturating_sub(1)),
            up_packets: st.up_packets,
            up_bytes: st.up_bytes,
            down_packets: st.down_packets,
            down_bytes: st.down_bytes,
            stale_drops: st.stale_drops,
            owner_node: owner.map(|(node, _)| node),
            owner_epoch: owner.map(|(_, epoch)| epoch),
        }
    }

    pub fn stats(&self, now_ms: u64) -> Stats {
        let mut by_state: BTreeMap<String, u64> = State::ALL
            .iter()
            .map(|s| (s.name().to_string(), 0))
            .collect();
        let (mut up_p, mut up_b, mut down_p, mut down_b) = (0, 0, 0, 0);
        for (id, e) in &self.sessions {
            *by_state
                .entry(e.session.state.name().to_string())
                .or_default() += 1;
            let st = self.stats_of(*id);
            up_p += st.up_packets;
            up_b += st.up_bytes;
            down_p += st.down_packets;
            down_b += st.down_bytes;
        }
        // Answered packets (COOKIEs sent from XDP) and those relayed by the slow path
        // are not drops: maps of their own.
        let (mut xdp_drops, mut xdp_answered, mut xdp_slow_path) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        if let Ok(d) = self.dp.drops() {
            for (i, v) in d.iter().enumerate() {
                let reason = i as u32;
                let to = match counters::fate(reason) {
                    counters::Fate::Answered => &mut xdp_answered,
                    counters::Fate::Relayed => &mut xdp_slow_path,
                    counters::Fate::Dropped | counters::Fate::Passed => &mut xdp_drops,
                };
                to.insert(counters::name(reason).to_string(), *v);
            }
        }
        Stats {
            uptime_s: now_ms.saturating_sub(self.started_ms) / 1000,
            sessions_by_state: by_state,
            reattach: self.counters.reattach.clone(),
            handshakes: self.counters.handshakes.clone(),
            malformed: self.counters.malformed.clone(),
            keepalives: self.counters.keepalives.clone(),
            security_events: self.counters.security_events,
            security_by_kind: self.counters.security.clone(),
            xdp_drops,
            xdp_answered,
            xdp_slow_path,
            up_packets: up_p,
            up_bytes: up_b,
            down_packets: down_p,
            down_bytes: down_b,
            events_emitted: self.bus.emitted(),
            events_dropped: self.bus.dropped(),
            events_suppressed: BTreeMap::from([
                ("aggregated".to_owned(), self.security_log.suppressed()),
                ("rate".to_owned(), self.bus.rate_suppressed()),
            ]),
            event_log_rotations: self.bus.log_rotations(),
            cluster: self.cluster_stats(now_ms),
            next_hops: self
                .dp
                .next_hop_stats()
                .map(|h| crate::control::api::NextHopStats {
                    hops: h.hops,
                    valid: h.valid,
                    destinations: h.destinations,
                    resyncs: h.resyncs,
                }),
        }
    }
}
