//! Authenticated control messages of established sessions: reattach request and
//! confirm, keepalive, close. Crypto and the gateway-wide checks happen here; what
//! they mean for the session is the state machine's decision.

use std::net::SocketAddr;

use jvpn_common::wire::WireHeader;

use super::{core::Core, counters::bump};
use crate::{
    proto::{Body, Unverified},
    session::{Event, Request},
};

/// A control message of one kind, well-formed, MAC not yet checked.
fn decode(data: &[u8], want: u8) -> Option<Unverified> {
    Unverified::decode(data)
        .ok()
        .filter(|u| u.msg().body.msg_type() == want)
}

impl Core {
    pub(super) fn on_reattach_request(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        use jvpn_common::wire::msg_type;
        let Some(msg) = decode(data, msg_type::REATTACH_REQUEST) else {
            return bump(&mut self.counters.malformed, "reattach_request");
        };
        let Body::ReattachRequest(req) = &msg.msg().body else {
            unreachable!("decode() checked the type")
        };
        let id = h.session_id();
        if self.blacklist.is_banned(peer.ip(), now_ms) {
            // Dropped before any crypto: that is what the ban is for.
            return bump(&mut self.counters.reattach, "source_banned");
        }
        let Some(e) = self.sessions.get(&id) else {
            return bump(&mut self.counters.malformed, "unknown_session");
        };
        let proof_ok = msg.verify(&e.mac).is_ok();
        if !proof_ok && self.blacklist.invalid_proof(peer.ip(), now_ms) {
            tracing::warn!("{} banned for repeated invalid reattach proofs", peer.ip());
            self.security(Some(id), peer, "source_banned", now_ms);
        }
        let ev = Event::ReattachRequest(Request {
            from: peer,
            seq: h.counter(),
            ts_ms: req.ts_ms,
            nonce: req.nonce,
            proof_ok,
            blacklisted: self.blacklist.is_static(peer.ip()),
            challenge: self.random(),
        });
        self.drive(id, &ev, Some(local), now_ms);
    }

    pub(super) fn on_reattach_confirm(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        use jvpn_common::wire::msg_type;
        let Some(msg) = decode(data, msg_type::REATTACH_CONFIRM) else {
            return bump(&mut self.counters.malformed, "reattach_confirm");
        };
        let Body::ReattachConfirm { challenge } = msg.msg().body else {
            unreachable!("decode() checked the type")
        };
        let id = h.session_id();
        let Some(e) = self.sessions.get(&id) else {
            return bump(&mut self.counters.malformed, "unknown_session");
        };
        let mac_ok = msg.verify(&e.mac).is_ok();
        let ev = Event::ReattachConfirm {
            from: peer,
            challenge,
            mac_ok,
        };
        self.drive(id, &ev, Some(local), now_ms);
    }

    pub(super) fn on_keepalive(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        use jvpn_common::wire::msg_type;
        let Some(msg) = decode(data, msg_type::KEEPALIVE) else {
            return bump(&mut self.counters.malformed, "keepalive");
        };
        let Body::Keepalive { ts_ms } = msg.msg().body else {
            unreachable!("decode() checked the type")
        };
        let id = h.session_id();
        let Some(e) = self.sessions.get_mut(&id) else {
            return bump(&mut self.counters.malformed, "unknown_session");
        };
        // Unverified or replayed keepalives are ignored: they must not fake liveness
        // nor be reflected.
        if msg.verify(&e.mac).is_err() || h.counter() <= e.last_ctl_ctr {
            return bump(&mut self.counters.malformed, "keepalive_rejected");
        }
        e.last_ctl_ctr = h.counter();
        let bound = e.session.binding == Some(peer);
        // Same size as the keepalive: no amplification, and every transport of the
        // client can measure its RTT.
        self.send_control(id, local, peer, Body::KeepaliveAck { echo_ts_ms: ts_ms });
        if bound {
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
        use jvpn_common::wire::msg_type;
        let Some(msg) = decode(data, msg_type::CLOSE) else {
            return bump(&mut self.counters.malformed, "close");
        };
        let id = h.session_id();
        let Some(e) = self.sessions.get_mut(&id) else {
            return bump(&mut self.counters.malformed, "unknown_session");
        };
        if msg.verify(&e.mac).is_err() || h.counter() <= e.last_ctl_ctr {
            bump(&mut self.counters.malformed, "close_rejected");
            return self.security(Some(id), peer, "proof_invalid", now_ms);
        }
        e.last_ctl_ctr = h.counter();
        self.drive(id, &Event::Close, Some(local), now_ms);
    }
}
