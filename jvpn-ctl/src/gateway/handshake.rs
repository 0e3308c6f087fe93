//! HELLO → WELCOME → CONFIRM → (exit keys acknowledged, map entry inserted) → ESTABLISHED.

use std::net::{IpAddr, SocketAddr};

use jvpn_common::wire::WireHeader;

use super::{
    core::{Core, Entry},
    counters::bump,
    guard::NonceVerdict,
};
use crate::{
    control::api::SessionId,
    proto::{self, Hint, LinkMsg},
    session::{Event, Session, State},
};

impl Core {
    /// HELLO: checked in the order of docs/protocol.md; every rejection is silent and
    /// leaves no state behind.
    pub(super) fn on_hello(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now_ms: u64,
    ) {
        let hello = match proto::handshake::Hello::decode(data) {
            Ok(h) => h,
            Err(_) => return bump(&mut self.counters.malformed, "hello"),
        };
        let reject = |core: &mut Core, kind: &str| {
            bump(&mut core.counters.handshakes, kind);
            core.security(None, peer, kind, now_ms);
        };
        if !self.peers.contains(&hello.id_pub) {
            return reject(self, "unknown_peer");
        }
        let Ok(hello) = hello.verify_signature(&self.gateway_pub) else {
            return reject(self, "bad_signature");
        };
        if now_ms.abs_diff(hello.ts_ms) > self.policy.freshness_window_ms {
            return reject(self, "freshness_expired");
        }
        // The nonce cache died with the previous controller: a HELLO stamped before
        // this one started may be a replay of one it accepted. (A client whose clock
        // is behind ours is refused for that long after a restart, then gets in.)
        if hello.ts_ms < self.started_ms {
            return reject(self, "before_start");
        }
        match self
            .hello_nonces
            .insert(hello.nonce, now_ms, 2 * self.policy.freshness_window_ms)
        {
            NonceVerdict::Fresh => {}
            NonceVerdict::Replay => return reject(self, "replay"),
            NonceVerdict::Full => return bump(&mut self.counters.handshakes, "busy"),
        }
        let Some(tunnel) = self.pool.allocate() else {
            tracing::warn!("tunnel address pool exhausted; HELLO from {peer} refused");
            return bump(&mut self.counters.handshakes, "pool_exhausted");
        };
        let id = self.new_session_id();
        let hint = Hint::from_policy(&self.policy);
        let ctr = self.next_ctr();
        let welcome = proto::handshake::welcome(
            &self.identity,
            &hello,
            id,
            ctr,
            IpAddr::V4(tunnel),
            hint,
            now_ms,
            &self.rng,
        );
        let proto::Welcomed {
            welcome,
            keys,
            transcript,
        } = match welcome {
            Ok(w) => w,
            Err(e) => {
                self.pool.release(tunnel);
                tracing::error!("building WELCOME: {e}");
                return bump(&mut self.counters.handshakes, "internal_error");
            }
        };
        // The relay passes control messages only for sessions in its map, so the BIRTH
        // session gets an entry now: not forwarding, with the HELLO's source as a
        // provisional binding, until CONFIRM and the exit's ack turn it on.
        let provisional = self.map_entry(peer, local, 0, false).and_then(|entry| {
            self.dp
                .insert_session(id, &entry)
                .map_err(|e| e.to_string())
        });
        if let Err(err) = provisional {
            self.pool.release(tunnel);
            tracing::error!("inserting a BIRTH session into the map: {err}");
            return bump(&mut self.counters.handshakes, "datapath_error");
        }
        let mac = keys.mac_key();
        self.sessions.insert(
            id,
            Entry {
                session: Session::new(id, now_ms),
                keys,
                mac,
                transcript,
                peer: hello.id_pub,
                tunnel,
                local,
                confirming: None,
                ctl_window: crate::proto::CtlWindow::default(),
                seen_up: 0,
                not_bound: super::guard::TokenBucket::full(now_ms),
                rev: 0,
                epoch: 0,
            },
        );
        bump(&mut self.counters.handshakes, "welcomed");
        self.send(id, local, peer, welcome, false);
    }

    fn new_session_id(&self) -> u64 {
        loop {
            let id = u64::from_ne_bytes(self.random());
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// CONFIRM: verified, then the exit gets the keys; ESTABLISHED waits for its ack.
    pub(super) fn on_confirm(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        h: &WireHeader,
        data: &[u8],
        now_ms: u64,
    ) {
        let id = h.session_id();
        let Some(e) = self.sessions.get(&id) else {
            return bump(&mut self.counters.malformed, "unknown_session");
        };
        let ok = proto::Confirm::decode(data).and_then(|c| c.verify(&e.mac, &e.transcript));
        if ok.is_err() {
            bump(&mut self.counters.handshakes, "confirm_invalid");
            return self.security(Some(id), peer, "proof_invalid", now_ms);
        }
        match e.session.state {
            State::Birth if e.confirming.is_none() => {}
            State::Birth => return, // already waiting for the exit
            // ESTABLISHED may have been lost: say it again, to the binding only.
            _ if e.session.binding == Some(peer) => {
                let local = e.local;
                return self.send_established(id, local, peer);
            }
            _ => return,
        }
        let install = self.install_msg(id, e);
        if let Some(e) = self.sessions.get_mut(&id) {
            e.confirming = Some((peer, local));
        }
        self.send_link(id, install, now_ms);
    }

    /// The exit holds the keys: insert the map entry, go ATTACHED, send ESTABLISHED.
    pub(super) fn on_install_acked(&mut self, id: u64, now_ms: u64) {
        let Some(e) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some((peer, local)) = e.confirming.take() else {
            return;
        };
        if e.session.state != State::Birth {
            return;
        }
        let entry = match self.map_entry(peer, local, 1, true) {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!(session = %SessionId(id), "cannot bind: {err}");
                return;
            }
        };
        if let Err(err) = self.dp.replace_session(id, &entry) {
            // The session stays in BIRTH: a repeated CONFIRM retries, else it times out.
            tracing::error!(session = %SessionId(id), "enabling the map entry: {err}");
            return bump(&mut self.counters.handshakes, "datapath_error");
        }
        if let Some(e) = self.sessions.get_mut(&id) {
            e.local = local;
        }
        self.drive(id, &Event::Confirmed { binding: peer }, Some(local), now_ms);
        let Some(e) = self.sessions.get(&id) else {
            return;
        };
        if e.session.state == State::Attached {
            bump(&mut self.counters.handshakes, "established");
            self.send_established(id, local, peer);
        }
    }

    /// The exit restarted (a new boot) or holds fewer sessions than it should: it
    /// lost keys, so every session past BIRTH is installed again (idempotent for the
    /// ones it still has; its DATA counters restart above anything it sent before).
    fn on_exit_pong(&mut self, boot: u64, sessions: u64, now_ms: u64) {
        let installed = self
            .sessions
            .values()
            .filter(|e| e.session.state != State::Birth)
            .count() as u64;
        let restarted = self.exit_boot.is_some_and(|b| b != boot);
        self.exit_boot = Some(boot);
        if !restarted && sessions >= installed {
            return;
        }
        tracing::warn!(
            "the exit {} ({sessions} of {installed} sessions): installing every session again",
            if restarted { "restarted" } else { "lost keys" }
        );
        bump(&mut self.counters.handshakes, "exit_reinstalled");
        let ids: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.session.state != State::Birth)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let install = self.install_msg(id, &self.sessions[&id]);
            self.send_link(id, install, now_ms);
        }
    }

    /// The INSTALL that gives the exit session `id`'s keys (idempotent there).
    pub(super) fn install_msg(&self, id: u64, e: &super::core::Entry) -> LinkMsg {
        LinkMsg::Install {
            session_id: id,
            tunnel_addr: IpAddr::V4(e.tunnel),
            c2x: e.keys.c2x,
            x2c: e.keys.x2c,
            ret: self.gw_exit,
            epoch: e.epoch,
        }
    }

    fn send_established(&mut self, id: u64, local: SocketAddr, peer: SocketAddr) {
        let ctr = self.next_ctr();
        let e = &self.sessions[&id];
        let msg = proto::Established::build(&e.mac, id, ctr, &e.transcript);
        self.send(id, local, peer, msg, true);
    }

    pub fn on_link_frame(&mut self, data: &[u8], now_ms: u64) {
        match self.link.receive(data) {
            Ok(Some(super::link::LinkEvent::InstallAcked(id))) => self.on_install_acked(id, now_ms),
            Ok(Some(super::link::LinkEvent::Pong { boot, sessions })) => {
                self.on_exit_pong(boot, sessions, now_ms)
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("link frame refused: {e}");
                bump(&mut self.counters.malformed, "link");
            }
        }
        // An acknowledgement made room in the link's window.
        for data in self.link.refill(now_ms) {
            self.out
                .push(super::core::Outgoing::Link { session: 0, data });
        }
    }
}
