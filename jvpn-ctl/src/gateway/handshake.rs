//! HELLO → WELCOME → CONFIRM → (exit keys acknowledged, map entry inserted) → ESTABLISHED.

use std::net::{IpAddr, SocketAddr};

use jvpn_common::wire::WireHeader;

use super::{
    core::{Core, Entry},
    counters::bump,
    guard::NonceVerdict,
};
use crate::{
    proto::{self, Hint, LinkMsg},
    session::{Event, Session, State},
};

impl Core {
    /// HELLO (172 bytes, or 188 with a cookie the XDP program checked if it was
    /// under load; the controller does not): checked in the order of
    /// docs/protocol.md; every rejection leaves no state behind and is silent, but a
    /// stale one from an allowed peer with a valid signature gets a TIME.
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
        // A stale HELLO may be a replay, or come from a client whose clock is off:
        // refused all the same, but answered with our time, signed over the HELLO,
        // so an honest client can stamp its next one with it (docs/protocol.md,
        // "Freshness without synchronized clocks"). The nonce is not recorded.
        if now_ms.abs_diff(hello.ts_ms) > self.policy.freshness_window_ms {
            reject(self, "freshness_expired");
            return self.send_time(local, peer, &hello, now_ms);
        }
        // The nonce cache died with the previous controller: a HELLO stamped before
        // this one started may be a replay of one it accepted. (A client whose clock
        // is behind ours learns our time from the TIME reply and gets in at once.)
        if hello.ts_ms < self.started_ms {
            reject(self, "before_start");
            return self.send_time(local, peer, &hello, now_ms);
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
            IpAddr::V4(tunnel.v4),
            tunnel.v6,
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
        let deadline = crate::session::next_deadline(&self.sessions[&id].session, &self.policy);
        self.timers.schedule(id, deadline);
        bump(&mut self.counters.handshakes, "welcomed");
        self.send(id, local, peer, welcome, false);
    }

    /// TIME for a verified but stale HELLO, within the gateway-wide budget (each
    /// costs a signature); over it, silence (`time_limited`). No state is kept.
    fn send_time(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        hello: &proto::VerifiedHello,
        now_ms: u64,
    ) {
        if !self.time_budget.take(now_ms, super::guard::TIME_EVERY_MS) {
            return bump(&mut self.counters.handshakes, "time_limited");
        }
        let ctr = self.next_ctr();
        let time = proto::Time::build(&self.identity, hello, ctr, now_ms);
        bump(&mut self.counters.handshakes, "time_sent");
        self.send(0, local, peer, time, false);
    }

    /// A fresh id, preferably one that names a free `SESSION_STATS` slot: the relay
    /// then steers the session from its slot alone (docs/datapath.md, "One cache
    /// line per packet"). With the table nearly full such ids get rare; after 64
    /// draws any unused id does (the session is then looked up in `SESSIONS`).
    fn new_session_id(&self) -> u64 {
        let mut draws = 0;
        loop {
            let id = u64::from_ne_bytes(self.random());
            if id == 0 || self.sessions.contains_key(&id) {
                continue;
            }
            draws += 1;
            if draws >= 64 || self.dp.named_slot_free(id) {
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

    /// The exit holds the keys: the machine goes ATTACHED, its `SwapBinding` turns
    /// the map entry on (or, refused, leaves the session in BIRTH), and ESTABLISHED
    /// is sent.
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
        self.drive(id, &Event::Confirmed { binding: peer }, Some(local), now_ms);
        match self.sessions.get(&id).map(|e| e.session.state) {
            Some(State::Attached) => {
                bump(&mut self.counters.handshakes, "established");
                self.send_established(id, local, peer);
            }
            // The data plane refused the entry: a repeated CONFIRM retries, else the
            // handshake times out.
            Some(State::Birth) => bump(&mut self.counters.handshakes, "datapath_error"),
            _ => {}
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
            tunnel_addr: IpAddr::V4(e.tunnel.v4),
            tunnel6: e.tunnel.v6,
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

#[cfg(test)]
mod tests {
    //! The controller's HELLO checks on a real core (real BPF maps: root): TIME for a
    //! stale HELLO within its budget, and no replay ever making a session.

    use std::net::Ipv4Addr;

    use jvpn_common::wire::{HELLO_LEN, TIME_MSG_LEN};
    use ring::rand::SystemRandom;

    use super::super::{
        core::{CoreParams, Outgoing},
        pool::Pool,
    };
    use super::*;
    use crate::{
        control::events::EventBus,
        datapath::MemPlane,
        proto::{ClientHandshake, Peers, Time, handshake::tests::keypair, identity::public_key},
        session::Policy,
    };

    const T: u64 = 1_700_000_000_000;
    const GW: &str = "192.0.2.1:51820";
    const CLIENT: &str = "198.51.100.7:40000";

    /// A core started at `T` that allows `client`, over the in-memory data plane.
    fn core(client: &ring::signature::Ed25519KeyPair) -> Core {
        let dp = MemPlane::new(64);
        let mut peers = Peers::new();
        peers.add(public_key(client), Some("client")).unwrap();
        Core::new(
            CoreParams {
                policy: Policy::default(),
                identity: keypair(),
                peers,
                pool: Pool::new(
                    "10.77.0.0/24".parse().unwrap(),
                    [Ipv4Addr::new(10, 77, 0, 1)],
                ),
                exit_data: "127.0.0.1:9".parse().unwrap(),
                gw_exit: "127.0.0.1:9".parse().unwrap(),
                link_key: [9; 32],
                start_us: T * 1000,
                node: 0,
            },
            dp,
            EventBus::new(64),
            T,
        )
    }

    /// The datagrams the core queued: (to, bytes).
    fn sent(core: &mut Core) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut core.out)
            .into_iter()
            .filter_map(|o| match o {
                Outgoing::Udp { peer, data, .. } => Some((peer, data)),
                Outgoing::Link { .. } => None,
            })
            .collect()
    }

    fn count(core: &Core, kind: &str) -> u64 {
        core.counters.handshakes.get(kind).copied().unwrap_or(0)
    }

    #[test]
    fn stale_hellos_get_time_within_the_budget_and_no_replay_makes_a_session() {
        let client = keypair();
        let mut core = core(&client);
        let (local, peer) = (GW.parse().unwrap(), CLIENT.parse().unwrap());
        let gw_pub = core.gateway_pub();
        let rng = SystemRandom::new();
        let hello = |ts, cookie| {
            ClientHandshake::start_with_cookie(&client, &gw_pub, ts, cookie, &rng).unwrap()
        };

        // A client 60 s ahead: refused as before, and told the time.
        let (hs, stale) = hello(T + 60_010, None);
        core.on_datagram(local, peer, &stale, T + 10);
        assert_eq!(count(&core, "freshness_expired"), 1);
        let out = sent(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, peer);
        assert_eq!(out[0].1.len(), TIME_MSG_LEN);
        assert!(out[0].1.len() < HELLO_LEN);
        let time = Time::decode(&out[0].1).unwrap();
        assert_eq!(hs.verify_time(&time).unwrap(), T + 10);
        assert_eq!(core.session_count(), 0);

        // Replayed, stale: a TIME each within the budget (20 at once), then silence.
        for _ in 0..25 {
            core.on_datagram(local, peer, &stale, T + 10);
        }
        assert_eq!(sent(&mut core).len(), 19);
        assert_eq!(
            (count(&core, "time_sent"), count(&core, "time_limited")),
            (20, 6)
        );
        assert_eq!(count(&core, "freshness_expired"), 26);
        assert_eq!(core.session_count(), 0, "no session, no state");

        // Stamped before the controller started (within the window): a TIME too,
        // once the budget has a token again.
        let (hs, early) = hello(T - 5_000, None);
        core.on_datagram(local, peer, &early, T + 10);
        assert!(sent(&mut core).is_empty(), "over the budget");
        core.on_datagram(local, peer, &early, T + 1_000);
        assert_eq!(count(&core, "before_start"), 2);
        let out = sent(&mut core);
        let time = Time::decode(&out[0].1).unwrap();
        assert_eq!(hs.verify_time(&time).unwrap(), T + 1_000);

        // Unknown keys and bad signatures get nothing, stale or not.
        let (_, stranger) = ClientHandshake::start(&keypair(), &gw_pub, T, &rng).unwrap();
        let mut forged = stale.clone();
        forged[100] ^= 1;
        core.on_datagram(local, peer, &stranger, T + 1_000);
        core.on_datagram(local, peer, &forged, T + 1_000);
        assert!(sent(&mut core).is_empty());
        assert_eq!(
            (count(&core, "unknown_peer"), count(&core, "bad_signature")),
            (1, 1)
        );

        // A fresh HELLO with a cookie (the controller does not check it): WELCOME,
        // over the whole 188 bytes.
        let (mut hs, fresh) = hello(T + 1_000, Some([0xc0; 16]));
        core.on_datagram(local, peer, &fresh, T + 1_000);
        let out = sent(&mut core);
        assert_eq!(out.len(), 1);
        hs.on_welcome(&out[0].1)
            .expect("the WELCOME covers the HELLO as sent");
        assert_eq!(core.session_count(), 1);

        // Replayed while fresh (with or without its cookie): the nonce cache.
        core.on_datagram(local, peer, &fresh, T + 2_000);
        core.on_datagram(local, peer, &fresh[..HELLO_LEN], T + 2_000);
        assert!(sent(&mut core).is_empty());
        assert_eq!(count(&core, "replay"), 2);
        // Replayed once stale: a TIME, still no session.
        core.on_datagram(local, peer, &fresh, T + 40_000);
        let out = sent(&mut core);
        assert_eq!(out.len(), 1);
        assert!(Time::decode(&out[0].1).is_ok());
        assert_eq!(core.session_count(), 1, "only the one session");
        assert_eq!(count(&core, "welcomed"), 1);
    }
}
