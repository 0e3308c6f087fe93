//! Authenticated control messages of established sessions: reattach request and
//! confirm, keepalive, close. Crypto and the gateway-wide checks happen here; what
//! they mean for the session is the state machine's decision.

use std::net::SocketAddr;

use jvpn_common::wire::{WireHeader, msg_type};

use super::{core::Core, counters::bump};
use crate::{
    proto::{Body, Control, ReattachCause, Unverified, control::ACK_FROM_BINDING},
    session::{Event, Request},
};

/// A control message of one kind, well-formed, MAC not yet checked.
fn decode(data: &[u8], want: u8) -> Option<Unverified> {
    Unverified::decode(data)
        .ok()
        .filter(|u| u.msg().body.msg_type() == want)
}

impl Core {
    /// Decodes a control message of type `want` and checks its MAC under its session's
    /// key: `(session id, message, MAC ok)`. `None` (counted) if it is malformed or its
    /// session unknown.
    fn open(
        &mut self,
        data: &[u8],
        h: &WireHeader,
        want: u8,
        what: &str,
    ) -> Option<(u64, Control, bool)> {
        let Some(msg) = decode(data, want) else {
            bump(&mut self.counters.malformed, what);
            return None;
        };
        let id = h.session_id();
        let Some(e) = self.sessions.get(&id) else {
            bump(&mut self.counters.malformed, "unknown_session");
            return None;
        };
        let mac_ok = msg.verify(&e.mac).is_ok();
        Some((id, msg.into_msg(), mac_ok))
    }

    pub(super) fn on_reattach_request(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        if self.blacklist.is_banned(peer.ip(), now_ms) {
            // Dropped before any crypto: that is what the ban is for.
            return bump(&mut self.counters.reattach, "source_banned");
        }
        let id = h.session_id();
        if !self.sessions.contains_key(&id) && self.foreign_entry(id).is_some() {
            let Some(msg) = decode(data, msg_type::REATTACH_REQUEST) else {
                return bump(&mut self.counters.malformed, "reattach_request");
            };
            let ts = match &msg.msg().body {
                Body::ReattachRequest(r) => Some(r.ts_ms),
                _ => None,
            };
            if !self.foreign_request(id, local, peer, &msg, ts, now_ms) {
                return;
            }
        }
        let Some((id, msg, proof_ok)) =
            self.open(data, h, msg_type::REATTACH_REQUEST, "reattach_request")
        else {
            return;
        };
        let Body::ReattachRequest(req) = msg.body else {
            unreachable!("open() checked the type")
        };
        // (Outside the freshness window it is the state machine's freshness_expired.)
        let fresh = now_ms.abs_diff(req.ts_ms) <= self.policy.freshness_window_ms;
        if proof_ok && fresh && req.ts_ms < self.started_ms {
            // Stamped before this controller started: the store has every request
            // the previous one answered, but not one whose batch a crash cut short,
            // so a replay of that one would get through. Changes nothing.
            bump(&mut self.counters.reattach, "before_start");
            return self.security(Some(id), peer, "before_start", now_ms);
        }
        if proof_ok && fresh && !self.lease_live(now_ms) {
            // This node cannot vouch that it still owns the session (its lease may
            // have run out at etcd): no binding changes until it can.
            return self.deny_now(
                id,
                local,
                peer,
                crate::session::Detail::OwnershipAmbiguous,
                now_ms,
            );
        }
        if !proof_ok && self.blacklist.invalid_proof(peer.ip(), now_ms) {
            tracing::warn!("{} banned for repeated invalid reattach proofs", peer.ip());
            self.security(Some(id), peer, "source_banned", now_ms);
        }
        let ev = Event::ReattachRequest(Request {
            from: peer,
            seq: msg.ctr,
            ts_ms: req.ts_ms,
            nonce: req.nonce,
            proof_ok,
            blacklisted: self.blacklist.is_static(peer.ip()),
            challenge: self.random(),
            address_changed: req.cause == ReattachCause::AddressChanged,
        });
        self.drive(id, &ev, Some(local), now_ms);
    }

    /// `REATTACH_DENIED` at once, nothing changed (the request verified).
    fn deny_now(
        &mut self,
        id: u64,
        local: SocketAddr,
        peer: SocketAddr,
        detail: crate::session::Detail,
        now_ms: u64,
    ) {
        self.send_control(id, local, peer, Body::denied(detail));
        self.note_denied(id, peer, detail, now_ms);
    }

    pub(super) fn on_reattach_confirm(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        let Some((id, msg, mac_ok)) =
            self.open(data, h, msg_type::REATTACH_CONFIRM, "reattach_confirm")
        else {
            return;
        };
        let Body::ReattachConfirm { challenge } = msg.body else {
            unreachable!("open() checked the type")
        };
        let ev = Event::ReattachConfirm {
            from: peer,
            challenge,
            mac_ok,
        };
        self.drive(id, &ev, Some(local), now_ms);
    }

    /// KEEPALIVE and CLOSE: a verified MAC and a counter not seen before (reordering
    /// across the client's transports is tolerated, see [`crate::proto::CtlWindow`]),
    /// else `None` — they must neither fake liveness nor be reflected when replayed.
    fn accept_ctl(
        &mut self,
        data: &[u8],
        h: &WireHeader,
        want: u8,
        what: &str,
    ) -> Option<(u64, Control)> {
        let (id, msg, mac_ok) = self.open(data, h, want, what)?;
        let e = self.sessions.get_mut(&id)?;
        if !mac_ok || !e.ctl_window.update(msg.ctr) {
            bump(&mut self.counters.malformed, &format!("{what}_rejected"));
            return None;
        }
        Some((id, msg))
    }

    /// Answered on any of the session's addresses (standby transports measure their
    /// health this way) with the binding's generation and whether this address is the
    /// binding: a client whose *bound* transport hears "not bound" has been rebound
    /// by a NAT (or got a new address) and reattaches at once. The gateway never moves
    /// the binding itself. From the binding, the ACK also carries the relay's uplink
    /// count, so the client sees whether its DATA gets through.
    pub(super) fn on_keepalive(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        let sid = h.session_id();
        if !self.sessions.contains_key(&sid) && self.foreign_entry(sid).is_some() {
            match decode(data, msg_type::KEEPALIVE) {
                Some(m) => self.foreign_keepalive(sid, local, peer, m, now_ms),
                None => bump(&mut self.counters.malformed, "keepalive"),
            }
            return;
        }
        let Some((id, msg)) = self.accept_ctl(data, h, msg_type::KEEPALIVE, "keepalive") else {
            return;
        };
        let Body::Keepalive { ts_ms, .. } = msg.body else {
            unreachable!("open() checked the type")
        };
        if ts_ms < self.started_ms {
            // Its counter may be past the stored high-water mark: a replay of one
            // the previous controller saw. Neither liveness nor an answer.
            return bump(&mut self.counters.keepalives, "before_start");
        }
        let every = (self.policy.keepalive_interval_ms / 4).max(1);
        let e = self.sessions.get_mut(&id).expect("accept_ctl found it");
        let from_binding = e.session.binding == Some(peer);
        let generation = e.session.generation;
        if !from_binding && !e.not_bound.take(now_ms, every) {
            return bump(&mut self.counters.keepalives, "not_bound_limited");
        }
        let (flags, up_forwarded) = if from_binding {
            // Low 32 bits: the client compares differences between two answers.
            (ACK_FROM_BINDING, self.stats_of(id).up_packets as u32)
        } else {
            (0, 0)
        };
        let outcome = if from_binding {
            "from_binding"
        } else {
            "not_bound"
        };
        bump(&mut self.counters.keepalives, outcome);
        // No larger than the smallest KEEPALIVE: no amplification.
        let body = Body::KeepaliveAck {
            echo_ts_ms: ts_ms,
            generation,
            up_forwarded,
            flags,
        };
        self.send_control(id, local, peer, body);
        if from_binding {
            self.drive(id, &Event::BoundTraffic, Some(local), now_ms);
        }
    }

    pub(super) fn on_close(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        match self.accept_ctl(data, h, msg_type::CLOSE, "close") {
            Some((id, _)) => self.drive(id, &Event::Close, Some(local), now_ms),
            // Well-formed, for a live session, but forged or replayed.
            None if self.sessions.contains_key(&h.session_id())
                && decode(data, msg_type::CLOSE).is_some() =>
            {
                self.security(Some(h.session_id()), peer, "proof_invalid", now_ms)
            }
            None => {}
        }
    }
}
