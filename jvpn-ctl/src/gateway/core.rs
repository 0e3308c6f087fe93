//! The controller core: every session's state, driven one input at a time.
//!
//! Synchronous and single-threaded on purpose: inputs (datagrams, link frames,
//! operator calls, ticks) arrive in one order, each is handled to completion, and its
//! replies are queued in [`Core::out`] for the I/O shell to send. Time comes in as an
//! argument, so the same core runs under the daemon and under the benchmarks.

use std::{collections::HashMap, net::SocketAddr};

use jvpn_common::maps::{FLAG_FORWARDING, SessionEntry, SessionStats};
use ring::signature::Ed25519KeyPair;

use super::{
    counters::{Counters, bump},
    guard::{Blacklist, NonceCache},
    link::ExitLink,
    pool::Pool,
};
use crate::{
    control::{
        api::{EventRecord, SessionId},
        events::EventBus,
    },
    datapath::DataPlane,
    proto::{Body, Control, CtlWindow, Peers, SessionKeys},
    session::{self, Action, Detail, Event, Notice, Policy, Session, State, Step},
};

/// A datagram the core wants sent. `session` is the session it belongs to (0: none),
/// so that a batch whose commit fails can take back what it would have said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// From the gateway's `local` address to `peer`. `after_commit`: it tells the
    /// client of a change it will rely on (ESTABLISHED, REATTACH_ACK, CLOSE), so it
    /// waits for the batch's group commit; the rest may leave before it.
    Udp {
        session: u64,
        local: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
        after_commit: bool,
    },
    /// To the exit's link address.
    Link { session: u64, data: Vec<u8> },
}

impl Outgoing {
    pub fn session(&self) -> u64 {
        match *self {
            Outgoing::Udp { session, .. } | Outgoing::Link { session, .. } => session,
        }
    }
}

/// Fixed facts the core needs from the configuration.
pub struct CoreParams {
    pub policy: Policy,
    pub identity: Ed25519KeyPair,
    pub peers: Peers,
    pub pool: Pool,
    /// The exit's DATA endpoint.
    pub exit_data: SocketAddr,
    /// The gateway's own DATA endpoint toward the exit (address and jvpn port).
    pub gw_exit: SocketAddr,
    pub link_key: [u8; 32],
    /// Link counter start (µs since the epoch at start).
    pub start_us: u64,
    /// This node's number in a cluster (0: a single gateway). It is part of the
    /// link's nonces, so nodes sharing the link key never share a nonce.
    pub node: u16,
}

/// One session as the controller holds it.
pub struct Entry {
    pub session: Session,
    pub keys: SessionKeys,
    pub mac: ring::hmac::Key,
    pub transcript: [u8; 32],
    pub peer: [u8; 32],
    pub tunnel: super::pool::Tunnel,
    /// The gateway address of the current binding (or of the CONFIRM in BIRTH).
    pub local: SocketAddr,
    /// CONFIRM verified from (peer, local); waiting for the exit's acknowledgement.
    pub confirming: Option<(SocketAddr, SocketAddr)>,
    /// Control counters accepted on KEEPALIVE / CLOSE.
    pub ctl_window: CtlWindow,
    /// Uplink packets seen in `SESSION_STATS` at the last poll.
    pub seen_up: u64,
    /// Budget of answers to KEEPALIVEs from addresses that are not the binding.
    pub not_bound: super::guard::TokenBucket,
    /// The store revision of this session's record (0: not stored yet).
    pub rev: crate::store::Revision,
    /// The fencing token of this node's ownership (the owner key's create revision
    /// in etcd); 0 without a cluster. The exit honours only the highest it has seen.
    pub epoch: u64,
}

pub struct Core {
    pub(super) policy: Policy,
    pub(super) identity: Ed25519KeyPair,
    pub(super) gateway_pub: [u8; 32],
    pub(super) peers: Peers,
    pub(super) pool: Pool,
    pub(super) exit_data: SocketAddr,
    pub(super) gw_exit: SocketAddr,
    pub(super) dp: Box<dyn DataPlane>,
    pub(super) sessions: HashMap<u64, Entry>,
    pub(super) hello_nonces: NonceCache,
    /// TIME replies to stale HELLOs (each costs a signature).
    pub(super) time_budget: super::guard::TimeBudget,
    pub(super) blacklist: Blacklist,
    pub(super) link: ExitLink,
    pub(super) rng: ring::rand::SystemRandom,
    pub(super) entropy: super::entropy::Entropy,
    pub(super) bus: EventBus,
    pub(super) counters: Counters,
    /// The gateway's control counter (header counter of its replies).
    pub(super) ctr: u64,
    pub out: Vec<Outgoing>,
    pub(super) started_ms: u64,
    /// Where the traffic poll resumes (sessions are polled in slices).
    poll_cursor: Vec<u64>,
    /// Sessions by their earliest timer.
    pub(super) timers: super::timers::Timers,
    /// Sessions not yet swept into `timers` this round (see [`SWEEP_PER_TICK`]).
    sweep_cursor: Vec<u64>,
    /// The exit's boot as its last PONG said (a change: it restarted).
    pub(super) exit_boot: Option<u64>,
    /// Records to write at the next group commit (`persist.rs`); the ones to delete
    /// are those of [`Core::torn`].
    pub(super) dirty: std::collections::BTreeSet<u64>,
    /// A binding was swapped since the last [`Core::take_swapped`] (for the test-only
    /// fault points of `run.rs`).
    swapped: bool,
    /// Events of the current batch: published by [`Core::release_events`] once the
    /// batch's records are durable, so the log never tells of a transition that a
    /// crash then takes back.
    pub(super) events: Vec<EventRecord>,
    /// How to take back the current batch if its commit fails (`rollback.rs`).
    pub(super) undo: HashMap<u64, super::rollback::Undo>,
    /// Sessions ended whose records are still stored: deleted (guarded by the
    /// entry's revision) at the next group commit, and their tunnel addresses
    /// released once that is durable.
    pub(super) torn: HashMap<u64, Entry>,
    /// Cluster ownership (`cluster.rs`); `None` for a single gateway.
    pub(super) cluster: Option<super::cluster::ClusterView>,
    /// Security events aggregated per (kind, source prefix) per interval
    /// (`aggregate.rs`), so that a flood of refusals is not a flood of events.
    pub(super) security_log: super::aggregate::SecurityAggregator,
}

/// Sessions whose `SESSION_STATS` are read per tick; bounds the tick's cost with a
/// million sessions (each is then polled every few seconds instead of every tick).
const POLL_PER_TICK: usize = 8192;
/// Sessions whose timer is re-derived per tick, whatever happened to them: with a
/// million sessions every one is looked at every ~5 s (a change some path made
/// without scheduling is then noticed that late, never lost).
const SWEEP_PER_TICK: usize = 10_000;
/// Bound of the HELLO nonce cache.
const HELLO_NONCES: usize = 1 << 20;

impl Core {
    pub fn new(p: CoreParams, dp: impl DataPlane + 'static, bus: EventBus, now_ms: u64) -> Self {
        let gateway_pub = crate::proto::identity::public_key(&p.identity);
        let blacklist = Blacklist::new(
            p.policy.blacklist.clone(),
            p.policy.auto_blacklist_after,
            p.policy.auto_blacklist_s,
        );
        Self {
            link: ExitLink::new(&p.link_key, p.node, p.start_us),
            policy: p.policy,
            identity: p.identity,
            gateway_pub,
            peers: p.peers,
            pool: p.pool,
            exit_data: p.exit_data,
            gw_exit: p.gw_exit,
            dp: Box::new(dp),
            sessions: HashMap::new(),
            hello_nonces: NonceCache::new(HELLO_NONCES),
            time_budget: super::guard::TimeBudget::full(now_ms),
            blacklist,
            rng: ring::rand::SystemRandom::new(),
            entropy: super::entropy::Entropy::System(ring::rand::SystemRandom::new()),
            bus,
            counters: Counters::default(),
            // Like the link counters: a restarted gateway's replies rank above
            // everything it sent before, so resumed clients accept them.
            ctr: p.start_us,
            out: Vec::new(),
            started_ms: now_ms,
            poll_cursor: Vec::new(),
            timers: Default::default(),
            sweep_cursor: Vec::new(),
            exit_boot: None,
            dirty: Default::default(),
            swapped: false,
            events: Vec::new(),
            undo: HashMap::new(),
            torn: HashMap::new(),
            cluster: None,
            security_log: Default::default(),
        }
    }

    /// The interval security events are aggregated over (`security_aggregate_ms`;
    /// default [`super::aggregate::DEFAULT_INTERVAL_MS`]).
    pub fn set_security_aggregate_ms(&mut self, interval_ms: u64) {
        self.security_log.set_interval_ms(interval_ms);
    }

    /// Publishes the batch's events (call after its records are committed).
    pub fn release_events(&mut self) {
        for e in self.events.drain(..) {
            self.bus.emit(e);
        }
    }

    pub fn take_swapped(&mut self) -> bool {
        std::mem::take(&mut self.swapped)
    }

    pub fn gateway_pub(&self) -> [u8; 32] {
        self.gateway_pub
    }

    /// Every session's machine state, by id (the simulation's invariants read it
    /// after every step: cheaper than the control API's JSON).
    pub fn sessions(&self) -> impl Iterator<Item = (u64, &Session)> {
        self.sessions.iter().map(|(id, e)| (*id, &e.session))
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub(super) fn next_ctr(&mut self) -> u64 {
        self.ctr += 1;
        self.ctr
    }

    pub(super) fn random<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        self.entropy.fill(&mut b);
        b
    }

    /// Session ids, challenges and nonces from a generator seeded with `seed`, so
    /// that a run replays: for the deterministic simulation and the fuzz targets.
    /// Predictable, so never for a gateway that serves clients.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.entropy = super::entropy::Entropy::Seeded(std::cell::Cell::new(seed));
        self
    }

    pub(super) fn send(
        &mut self,
        session: u64,
        local: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
        after_commit: bool,
    ) {
        self.out.push(Outgoing::Udp {
            session,
            local,
            peer,
            data,
            after_commit,
        });
    }

    /// Everything queued (after [`Core::take_early`] and the group commit: the rest
    /// of the batch), for a shell outside this module (the simulation).
    pub fn take_out(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    /// The replies of the current batch that need not wait for its commit
    /// (WELCOME, REATTACH_CHALLENGE of a single gateway, KEEPALIVE_ACK, refusals):
    /// what they announce is
    /// either not stored (BIRTH, liveness) or harmless if a crash takes it back (a
    /// challenge the restarted gateway no longer knows is refused when answered,
    /// and the client asks again). Sending them now spares them the fsync.
    pub fn take_early(&mut self) -> Vec<Outgoing> {
        let (early, held) = std::mem::take(&mut self.out).into_iter().partition(|o| {
            matches!(
                o,
                Outgoing::Udp {
                    after_commit: false,
                    ..
                }
            )
        });
        self.out = held;
        early
    }

    /// Queues a link message of `session`; its frame is in [`Core::out`] unless the
    /// link's window is full (then it goes out in its turn, as session 0's).
    pub(super) fn send_link(&mut self, session: u64, msg: crate::proto::LinkMsg, now_ms: u64) {
        if let Some(data) = self.link.send(msg, now_ms) {
            self.out.push(Outgoing::Link { session, data });
        }
    }

    /// A datagram from a client, received on `local`.
    pub fn on_datagram(&mut self, local: SocketAddr, peer: SocketAddr, data: &[u8], now_ms: u64) {
        use jvpn_common::wire::{WireHeader, msg_type as t};
        let header = match WireHeader::parse(data) {
            Ok((h, _)) => h,
            Err(_) => return bump(&mut self.counters.malformed, "header"),
        };
        match header.msg_type {
            t::HELLO => self.on_hello(local, peer, data, now_ms),
            t::CONFIRM => self.on_confirm(local, peer, &header, data, now_ms),
            t::REATTACH_REQUEST => self.on_reattach_request(local, peer, &header, data, now_ms),
            t::REATTACH_CONFIRM => self.on_reattach_confirm(local, peer, &header, data, now_ms),
            t::KEEPALIVE => self.on_keepalive(local, peer, &header, data, now_ms),
            t::CLOSE => self.on_close(local, peer, &header, data, now_ms),
            // DATA is the relay's; the rest are gateway-to-client messages.
            _ => bump(&mut self.counters.malformed, "unexpected_type"),
        }
    }

    /// Runs timers, polls the data plane for traffic, retransmits link messages.
    pub fn tick(&mut self, now_ms: u64) {
        self.poll_traffic(now_ms);
        // A cluster node without a confirmed lease can make no change durable: its
        // timers would fire, be refused and be rolled back on every tick. They wait
        // for the lease (the deadlines stay due).
        if self.cluster.is_none() || self.lease_live(now_ms) {
            // Only sessions with a timer due (timers.rs), and a slice of the rest.
            self.sweep_timers();
            for id in self.timers.due(now_ms) {
                let Some(e) = self.sessions.get(&id) else {
                    continue;
                };
                match session::next_deadline(&e.session, &self.policy) {
                    Some(d) if d <= now_ms => self.drive(id, &Event::Tick, None, now_ms),
                    d => self.timers.schedule(id, d),
                }
            }
        }
        let (frames, gave_up) = self.link.due(now_ms);
        self.out.extend(
            frames
                .into_iter()
                .map(|data| Outgoing::Link { session: 0, data }),
        );
        if let Some(data) = self.link.ping(now_ms) {
            self.out.push(Outgoing::Link { session: 0, data });
        }
        for id in gave_up {
            if let Some(e) = self.sessions.get_mut(&id) {
                tracing::warn!(session = %SessionId(id), "exit did not acknowledge the session keys");
                e.confirming = None;
            }
        }
        self.blacklist.purge(now_ms);
        // An aggregation interval that has ended publishes its summaries.
        self.security_log.tick(now_ms, &mut self.events);
    }

    fn sweep_timers(&mut self) {
        if self.sweep_cursor.is_empty() {
            self.sweep_cursor = self.sessions.keys().copied().collect();
        }
        let keep = self.sweep_cursor.len().saturating_sub(SWEEP_PER_TICK);
        for id in self.sweep_cursor.drain(keep..) {
            if let Some(e) = self.sessions.get(&id) {
                self.timers
                    .schedule(id, session::next_deadline(&e.session, &self.policy));
            }
        }
    }

    /// Feeds BoundData for sessions whose uplink counter moved since the last poll.
    fn poll_traffic(&mut self, now_ms: u64) {
        if self.poll_cursor.is_empty() {
            self.poll_cursor = self
                .sessions
                .iter()
                .filter(|(_, e)| e.session.state != State::Birth)
                .map(|(id, _)| *id)
                .collect();
        }
        // From the end: draining the front would move the whole rest every tick.
        let keep = self.poll_cursor.len().saturating_sub(POLL_PER_TICK);
        let batch: Vec<u64> = self.poll_cursor.drain(keep..).collect();
        for id in batch {
            let Ok(Some(stats)) = self.dp.session_stats(id) else {
                continue;
            };
            let Some(e) = self.sessions.get_mut(&id) else {
                continue;
            };
            if stats.up_packets != e.seen_up {
                e.seen_up = stats.up_packets;
                self.drive(id, &Event::BoundData, None, now_ms);
            }
        }
    }

    /// Runs the state machine for one session and carries out the step.
    /// `local`: the gateway address the triggering datagram arrived on.
    pub(super) fn drive(&mut self, id: u64, ev: &Event, local: Option<SocketAddr>, now_ms: u64) {
        let Some(e) = self.sessions.get(&id) else {
            return;
        };
        let step = session::step(&e.session, ev, &self.policy, now_ms);
        if step.session == e.session && step.actions.is_empty() {
            return;
        }
        if super::persist::durable_change(&e.session, &step.session) {
            self.remember(id, ev, local);
        }
        let step = match swap_of(&step) {
            Some((new, generation)) => match self.swap(id, new, generation, local) {
                Ok(()) => step,
                Err(err) => {
                    tracing::warn!(session = %SessionId(id), "binding swap failed: {err}");
                    let orig = &self.sessions[&id].session;
                    session::step(
                        orig,
                        &Event::SwapFailed { candidate: new },
                        &self.policy,
                        now_ms,
                    )
                }
            },
            None => step,
        };
        self.commit(id, step, local, now_ms);
        match self.sessions.get(&id) {
            Some(e) => self
                .timers
                .schedule(id, session::next_deadline(&e.session, &self.policy)),
            None => self.timers.forget(id),
        }
    }

    /// The atomic binding swap: the complete new entry in one `BPF_EXIST` update, read
    /// back; the caller commits the new state only if this returns Ok.
    fn swap(
        &mut self,
        id: u64,
        new: SocketAddr,
        generation: u32,
        local: Option<SocketAddr>,
    ) -> Result<(), String> {
        let local = local.ok_or("no gateway address for the new binding")?;
        let entry = self.map_entry(new, local, generation, true)?;
        let got = self
            .dp
            .replace_session(id, &entry)
            .map_err(|e| e.to_string())?;
        if got != generation {
            return Err(format!("read back generation {got}, wrote {generation}"));
        }
        if let Some(e) = self.sessions.get_mut(&id) {
            e.local = local;
            // The fault points are about moving a binding, not making the first.
            self.swapped |= e.session.state != State::Birth;
        }
        Ok(())
    }

    pub(super) fn map_entry(
        &self,
        client: SocketAddr,
        local: SocketAddr,
        generation: u32,
        forwarding: bool,
    ) -> Result<SessionEntry, String> {
        if client.is_ipv4() != local.is_ipv4() {
            return Err(format!("{client} reached the gateway at {local}"));
        }
        Ok(SessionEntry {
            generation,
            flags: if forwarding { FLAG_FORWARDING } else { 0 },
            client: client.into(),
            gw_client: local.into(),
            exit: self.exit_data.into(),
            gw_exit: self.gw_exit.into(),
            ..Default::default()
        })
    }

    fn commit(&mut self, id: u64, step: Step, local: Option<SocketAddr>, now_ms: u64) {
        let Step {
            session, actions, ..
        } = step;
        let Some(e) = self.sessions.get_mut(&id) else {
            return;
        };
        if super::persist::durable_change(&e.session, &session) {
            self.dirty.insert(id);
        }
        e.session = session;
        let bound_local = e.local;
        let binding = e.session.binding;
        let mut teardown = false;
        for a in actions {
            match a {
                Action::SwapBinding { .. } => {}
                Action::SendChallenge { to, challenge } => {
                    let body = Body::ReattachChallenge { challenge };
                    self.send_control(id, local.unwrap_or(bound_local), to, body);
                }
                Action::SendAck { to, generation } => {
                    let hint = crate::proto::Hint::from_policy(&self.policy);
                    let body = Body::ReattachAck { generation, hint };
                    self.send_control(id, local.unwrap_or(bound_local), to, body);
                }
                Action::SendDenied { to, detail } => {
                    let body = Body::denied(detail);
                    self.send_control(id, local.unwrap_or(bound_local), to, body);
                }
                Action::SendClose { reason } => {
                    if let Some(to) = binding {
                        self.send_control(id, bound_local, to, Body::close(reason));
                    }
                }
                Action::Teardown => teardown = true,
                Action::Emit(n) => self.publish(id, n, now_ms),
            }
        }
        if teardown {
            self.teardown(id, now_ms);
        }
    }

    /// MACs and queues a control message of session `id`.
    pub(super) fn send_control(&mut self, id: u64, local: SocketAddr, to: SocketAddr, body: Body) {
        let Some(e) = self.sessions.get(&id) else {
            return;
        };
        // In a cluster a challenge waits for the batch that moved the session into
        // RECOVERING: etcd may refuse it (the owner cannot confirm its lease, another
        // node took the session), and a challenge whose state was rolled back would
        // make the client's honest answer look forged (proof_invalid). A session
        // being taken over is not this node's until its owner key is written either.
        let challenge_waits =
            self.cluster.is_some() && matches!(body, Body::ReattachChallenge { .. });
        let after_commit =
            challenge_waits || matches!(body, Body::ReattachAck { .. } | Body::Close { .. });
        let mac = e.mac.clone();
        self.send_sealed(id, &mac, local, to, body, after_commit);
    }

    /// MACs `body` under `mac` (a session's key, also another node's session's)
    /// and queues it.
    pub(super) fn send_sealed(
        &mut self,
        id: u64,
        mac: &ring::hmac::Key,
        local: SocketAddr,
        to: SocketAddr,
        body: Body,
        after_commit: bool,
    ) {
        let msg = Control {
            session_id: id,
            ctr: self.next_ctr(),
            body,
        };
        match msg.encode(mac) {
            Ok(bytes) => self.send(id, local, to, bytes, after_commit),
            Err(err) => tracing::error!(session = %SessionId(id), "encoding a reply: {err}"),
        }
    }

    /// Counts and publishes a reattach refused with `detail` (its DENIED is the
    /// caller's).
    pub(super) fn note_denied(
        &mut self,
        id: u64,
        candidate: SocketAddr,
        detail: Detail,
        now_ms: u64,
    ) {
        bump(&mut self.counters.reattach, detail.name());
        self.events.push(EventRecord::TransportSwitchDenied {
            ts_ms: now_ms,
            session_id: SessionId(id),
            candidate: candidate.to_string(),
            detail,
        });
    }

    pub(super) fn publish(&mut self, id: u64, n: Notice, ts_ms: u64) {
        let session_id = SessionId(id);
        let rec = match n {
            Notice::StateChange {
                from,
                to,
                reason,
                detail,
                version,
            } => EventRecord::StateChange {
                ts_ms,
                session_id,
                from,
                to,
                reason,
                detail,
                version,
            },
            Notice::TransportSwitch {
                old,
                new,
                generation,
            } => {
                if old.is_some() {
                    bump(&mut self.counters.reattach, "success");
                }
                EventRecord::TransportSwitch {
                    ts_ms,
                    session_id,
                    old: old.map(|a| a.to_string()),
                    new: new.to_string(),
                    generation,
                }
            }
            Notice::TransportSwitchDenied { candidate, detail } => {
                bump(&mut self.counters.reattach, detail.name());
                EventRecord::TransportSwitchDenied {
                    ts_ms,
                    session_id,
                    candidate: candidate.to_string(),
                    detail,
                }
            }
            Notice::Security { from, detail } => {
                bump(&mut self.counters.reattach, detail.name());
                return self.security(Some(id), from, detail.name(), ts_ms);
            }
        };
        self.events.push(rec);
    }

    /// A security event: counted, always; published as a SECURITY_EVENT if it is the
    /// first of its kind and source prefix in the aggregation interval, else only
    /// counted for the interval's SECURITY_SUMMARY (`aggregate.rs`).
    pub(super) fn security(&mut self, id: Option<u64>, from: SocketAddr, kind: &str, now_ms: u64) {
        self.counters.security_events += 1;
        bump(&mut self.counters.security, kind);
        self.security_log
            .note(kind, from, id, now_ms, &mut self.events);
    }

    /// TERMINATED: map entry removed, exit keys revoked, tunnel address released.
    pub(super) fn teardown(&mut self, id: u64, now_ms: u64) {
        let Some(e) = self.sessions.remove(&id) else {
            return;
        };
        self.dirty.remove(&id);
        match self.dp.remove_session(id) {
            Ok(()) | Err(crate::datapath::DatapathError::NoSuchSession(_)) => {}
            Err(err) => tracing::error!(session = %SessionId(id), "removing the map entry: {err}"),
        }
        let revoke = crate::proto::LinkMsg::Revoke {
            session_id: id,
            epoch: e.epoch,
        };
        self.send_link(id, revoke, now_ms);
        if e.rev == 0 {
            self.pool.release(e.tunnel);
        } else {
            // Its record goes with the next commit; until that is durable, a crash
            // resumes it, so no new session may get its address yet.
            self.torn.insert(id, e);
        }
    }

    /// Closes every session (the gateway is stopping).
    pub fn shutdown(&mut self, now_ms: u64) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            self.drive(id, &Event::OperatorKill, None, now_ms);
        }
    }

    pub fn link_pending(&self) -> usize {
        self.link.pending_len()
    }

    pub fn note_send_failure(&mut self) {
        self.counters.send_failures += 1;
    }

    /// HELLOs the controller's queue had no room for (handshake outcome `shed`).
    pub fn note_hellos_shed(&mut self, n: u64) {
        if n > 0 {
            *self.counters.handshakes.entry("shed".into()).or_default() += n;
        }
    }

    /// A session's data-plane counters, if it has a map entry.
    pub(super) fn stats_of(&self, id: u64) -> SessionStats {
        self.dp.session_stats(id).ok().flatten().unwrap_or_default()
    }
}

fn swap_of(step: &Step) -> Option<(SocketAddr, u32)> {
    step.actions.iter().find_map(|a| match *a {
        Action::SwapBinding { new, generation } => Some((new, generation)),
        _ => None,
    })
}
