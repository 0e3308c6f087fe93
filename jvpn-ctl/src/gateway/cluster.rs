//! The core's side of cluster ownership (`crate::cluster` is the etcd side).
//!
//! Every node holds every session of the cluster: its own in [`Core::sessions`],
//! the others' as [`Foreign`] — unsealed from the record the watch delivered, with a
//! map entry that does not forward. That entry is the XDP admission of the cluster's
//! session ids (control messages pass, DATA and unknown ids are dropped as before),
//! at no cost per packet beyond the lookup every packet already makes.
//!
//! Decisions, all here and all pure (the shell feeds the watch's changes, the lease
//! deadline and the commit outcomes in):
//!
//! * A reattach request for a foreign session whose owner key is gone (its lease ran
//!   out) and while this node's lease is live: the session is adopted (moved into
//!   [`Core::sessions`] with epoch 0) and handled as usual; its first write acquires
//!   the owner key (`crate::cluster::Op::Put` with epoch 0) and only then does the
//!   challenge leave. Anything else — an owner alive, no live lease here — gets
//!   `REATTACH_DENIED ownership_ambiguous` after the proof verified, and no state.
//! * A session whose owner key changes to another node, or whose write etcd refused,
//!   is demoted to foreign at once: its map entry stops forwarding, no REVOKE (the
//!   exit belongs to the new owner's epoch now), its tunnel address stays taken.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use super::{
    core::{Core, Entry},
    counters::bump,
    record::SessionRecord,
};
use crate::{
    cluster::{Change, Owner, Snapshot},
    control::api::{EventRecord, SessionId},
    datapath::DatapathError,
    proto::Body,
    session::Detail,
    store::{Revision, Sealer},
};

/// Another node's session (or no one's, between an owner's death and a takeover).
pub struct Foreign {
    pub entry: Entry,
    pub owner: Option<Owner>,
}

pub struct ClusterView {
    pub node: u16,
    /// Until when this node's lease is certainly alive (core clock, ms; 0: none).
    pub lease_until_ms: u64,
    pub sealer: Sealer,
    pub foreign: HashMap<u64, Foreign>,
    /// Sessions adopted in the current batch (they had no owner): a refused write
    /// puts them back.
    pub adopted: HashSet<u64>,
}

impl Core {
    pub fn enable_cluster(&mut self, node: u16, sealer: Sealer) {
        self.cluster = Some(ClusterView {
            node,
            lease_until_ms: 0,
            sealer,
            foreign: HashMap::new(),
            adopted: HashSet::new(),
        });
    }

    pub fn set_lease_until(&mut self, until_ms: u64) {
        if let Some(c) = self.cluster.as_mut() {
            c.lease_until_ms = until_ms;
        }
    }

    /// Whether this node may change bindings now (always, without a cluster).
    pub(super) fn lease_live(&self, now_ms: u64) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| now_ms < c.lease_until_ms)
    }

    pub fn foreign_count(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.foreign.len())
    }

    pub fn owner_of(&self, id: u64) -> Option<(u16, u64)> {
        let c = self.cluster.as_ref()?;
        if let Some(e) = self.sessions.get(&id) {
            return Some((c.node, e.epoch));
        }
        c.foreign
            .get(&id)
            .and_then(|f| f.owner.map(|o| (o.node, o.epoch)))
    }

    /// The session's entry, own or foreign (for checking a message's MAC).
    pub(super) fn foreign_entry(&mut self, id: u64) -> Option<&mut Foreign> {
        self.cluster.as_mut()?.foreign.get_mut(&id)
    }

    /// Sessions at the start: `(mine, foreign)` by owner; a session with no owner
    /// is this node's if the pinned map still forwards it here (this node held it
    /// and its lease ran out while it was down), else another node's to take.
    pub fn split_snapshot(
        &mut self,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Vec<(Revision, Entry, Option<Owner>)>, String> {
        let me = self.cluster.as_ref().map(|c| c.node).ok_or("no cluster")?;
        let mut mine = Vec::new();
        for (&id, s) in &snap.sessions {
            let Some((rev, sealed)) = &s.record else {
                continue;
            };
            let mut entry = self.unseal(id, *rev, sealed, now_ms)?;
            let forwarded_here = self
                .dp
                .session(id)
                .ok()
                .flatten()
                .is_some_and(|m| m.forwarding());
            let ours = match s.owner {
                Some(o) => o.node == me,
                None => forwarded_here,
            };
            if ours {
                entry.epoch = s.owner.map_or(0, |o| o.epoch);
                mine.push((*rev, entry, s.owner));
            } else {
                self.add_foreign(entry, s.owner);
            }
        }
        Ok(mine)
    }

    fn unseal(&self, id: u64, rev: Revision, sealed: &[u8], now_ms: u64) -> Result<Entry, String> {
        let c = self.cluster.as_ref().ok_or("no cluster")?;
        let plain = c
            .sealer
            .open(id, sealed)
            .map_err(|e| format!("{e}: sealed under another store key, or damaged"))?;
        let rec = SessionRecord::decode(id, &plain).map_err(|e| e.to_string())?;
        let mut e = rec.into_entry(now_ms);
        e.rev = rev;
        Ok(e)
    }

    /// Admits a foreign session: non-forwarding map entry, tunnel address taken.
    fn add_foreign(&mut self, entry: Entry, owner: Option<Owner>) {
        let id = entry.session.id;
        self.write_foreign_entry(&entry);
        self.pool.take(entry.tunnel);
        if let Some(c) = self.cluster.as_mut()
            && let Some(old) = c.foreign.insert(id, Foreign { entry, owner })
            && old.entry.tunnel != c.foreign[&id].entry.tunnel
        {
            self.pool.release(old.entry.tunnel);
        }
    }

    fn write_foreign_entry(&mut self, e: &Entry) {
        let id = e.session.id;
        let client = e.session.binding.unwrap_or(e.local);
        let Ok(want) = self.map_entry(client, e.local, e.session.generation, false) else {
            return;
        };
        let res = match self.dp.session(id) {
            Ok(Some(_)) => self.dp.replace_session(id, &want).map(|_| ()),
            _ => self.dp.insert_session(id, &want),
        };
        if let Err(err) = res {
            tracing::error!(session = %SessionId(id), "admitting a cluster session: {err}");
        }
    }

    fn drop_foreign(&mut self, id: u64) {
        let Some(f) = self.cluster.as_mut().and_then(|c| c.foreign.remove(&id)) else {
            return;
        };
        self.pool.release(f.entry.tunnel);
        match self.dp.remove_session(id) {
            Ok(()) | Err(DatapathError::NoSuchSession(_)) => {}
            Err(err) => tracing::error!(session = %SessionId(id), "removing a map entry: {err}"),
        }
    }

    /// One change the watch saw.
    pub fn on_cluster_change(&mut self, change: Change, now_ms: u64) {
        let Some(me) = self.cluster.as_ref().map(|c| c.node) else {
            return;
        };
        match change {
            Change::Record { id, record } => {
                if let Some(e) = self.sessions.get_mut(&id) {
                    // Only the owner writes a record: a newer revision of one of
                    // ours is our own write whose answer was lost.
                    if let Some((rev, _)) = record {
                        e.rev = e.rev.max(rev);
                    }
                    return;
                }
                if self.torn.contains_key(&id) {
                    return;
                }
                match record {
                    Some((rev, sealed)) => match self.unseal(id, rev, &sealed, now_ms) {
                        Ok(entry) => {
                            let owner = self.foreign_entry(id).and_then(|f| f.owner);
                            self.add_foreign(entry, owner);
                        }
                        Err(e) => tracing::error!(session = %SessionId(id), "cluster record: {e}"),
                    },
                    None => self.drop_foreign(id),
                }
            }
            Change::Owner { id, owner } => {
                if let Some(o) = owner
                    && o.node != me
                    && self.sessions.contains_key(&id)
                {
                    return self.lose(id, Some(o), now_ms);
                }
                if let Some(f) = self.foreign_entry(id) {
                    f.owner = owner;
                }
            }
            Change::Node { .. } | Change::Resync => {}
        }
    }

    /// This node no longer owns `id` (another node took it, or etcd refused our
    /// write): demoted to foreign at once.
    pub(super) fn lose(&mut self, id: u64, owner: Option<Owner>, now_ms: u64) {
        let Some(e) = self.sessions.remove(&id) else {
            return;
        };
        self.dirty.remove(&id);
        self.link.forget(id);
        let me = self.cluster.as_ref().map_or(0, |c| c.node);
        tracing::warn!(
            session = %SessionId(id),
            "session lost to node {:?} (epoch {:?}); its map entry no longer forwards here",
            owner.map(|o| o.node),
            owner.map(|o| o.epoch)
        );
        if let Some(o) = owner {
            self.ownership_change(id, Some(me), o.node, o.epoch, now_ms);
        }
        bump(&mut self.counters.ownership, "lost");
        self.add_foreign(e, owner);
    }

    pub(super) fn ownership_change(
        &mut self,
        id: u64,
        from: Option<u16>,
        to: u16,
        epoch: u64,
        now_ms: u64,
    ) {
        self.events.push(EventRecord::OwnershipChange {
            ts_ms: now_ms,
            session_id: SessionId(id),
            from_node: from,
            to_node: to,
            epoch,
        });
    }

    /// A reattach request for a session this node does not hold. `true`: it was
    /// adopted, handle it as one of ours.
    pub(super) fn foreign_request(
        &mut self,
        id: u64,
        local: SocketAddr,
        peer: SocketAddr,
        msg: &crate::proto::Unverified,
        fresh_ts: Option<u64>,
        now_ms: u64,
    ) -> bool {
        let live = self.lease_live(now_ms);
        let window = self.policy.freshness_window_ms;
        let Some(f) = self.foreign_entry(id) else {
            return false;
        };
        if msg.verify(&f.entry.mac).is_err() {
            // Not the key holder: silence, as for any session.
            bump(&mut self.counters.reattach, "proof_invalid");
            return false;
        }
        if fresh_ts.is_none_or(|ts| now_ms.abs_diff(ts) > window) {
            bump(&mut self.counters.reattach, "freshness_expired");
            return false;
        }
        let owner = f.owner;
        if owner.is_none() && live {
            let f = self
                .cluster
                .as_mut()
                .and_then(|c| c.foreign.remove(&id))
                .expect("looked up");
            let mut e = f.entry;
            e.epoch = 0;
            self.sessions.insert(id, e);
            if let Some(c) = self.cluster.as_mut() {
                c.adopted.insert(id);
            }
            bump(&mut self.counters.ownership, "adopting");
            return true;
        }
        // The owner is alive, or this node cannot vouch for its own lease: never two
        // owners, so no.
        let mac = f.entry.mac.clone();
        let detail = Detail::OwnershipAmbiguous;
        self.send_sealed(id, &mac, local, peer, Body::denied(detail), false);
        self.note_denied(id, peer, detail, now_ms);
        false
    }

    /// After a new lease: every session of this node, to be acquired again (its
    /// owner key went with the old lease).
    pub fn reacquire_ops(&self) -> Vec<crate::cluster::Op> {
        self.sessions
            .iter()
            .filter(|(_, e)| e.rev > 0)
            .map(|(&id, e)| crate::cluster::Op::Acquire { id, expect: e.rev })
            .collect()
    }

    /// The outcomes of claims and acquisitions ([`crate::cluster::Op::Claim`],
    /// [`crate::cluster::Op::Acquire`]): a new epoch goes to the exit, a session
    /// another node holds now (or that this node could not get back) is foreign.
    pub fn claimed(
        &mut self,
        ops: &[crate::cluster::Op],
        outcomes: Vec<crate::cluster::Outcome>,
        now_ms: u64,
    ) {
        use crate::cluster::Outcome;
        for (op, o) in ops.iter().zip(outcomes) {
            let id = op.id();
            match o {
                Outcome::Done { epoch, .. } => self.owned_at(id, epoch, true, now_ms),
                Outcome::Lost { owner, .. } => self.lose(id, owner, now_ms),
                Outcome::Failed(err) => {
                    tracing::warn!(session = %SessionId(id), "claiming a session: {err}");
                    bump(&mut self.counters.ownership, "in_doubt");
                }
            }
        }
    }

    /// This node holds `id` at `epoch` (written to etcd). A new epoch (a takeover,
    /// a new session, a re-acquisition) goes to the exit with this node's return
    /// address; `announce`: an OWNERSHIP_CHANGE from no owner (a new session has
    /// none to change from).
    pub(super) fn owned_at(&mut self, id: u64, epoch: u64, announce: bool, now_ms: u64) {
        let me = self.cluster.as_ref().map_or(0, |c| c.node);
        let Some(e) = self.sessions.get_mut(&id) else {
            return;
        };
        if e.epoch == epoch {
            return;
        }
        e.epoch = epoch;
        bump(&mut self.counters.ownership, "acquired");
        if announce {
            self.ownership_change(id, None, me, epoch, now_ms);
        }
        let install = self.install_msg(id, &self.sessions[&id]);
        self.send_link(id, install, now_ms);
    }

    /// Adopted sessions the batch wrote nothing for (the request was a replay, say):
    /// not this node's, so back to foreign.
    pub(super) fn unadopt_unwritten(&mut self) {
        let ids: Vec<u64> = self
            .cluster
            .as_ref()
            .map(|c| c.adopted.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.return_adopted(id);
        }
    }

    /// A takeover whose write was refused: the session goes back to foreign.
    pub(super) fn return_adopted(&mut self, id: u64) {
        if !self.cluster.as_mut().is_some_and(|c| c.adopted.remove(&id)) {
            return;
        }
        if let Some(e) = self.sessions.remove(&id) {
            self.add_foreign(e, None);
        }
    }

    /// A KEEPALIVE for a foreign session: answered "not bound" (so a client's
    /// standby path to this node is measured healthy and can carry a reattach), with
    /// the session's generation; never liveness, never state.
    pub(super) fn foreign_keepalive(
        &mut self,
        id: u64,
        local: SocketAddr,
        peer: SocketAddr,
        msg: crate::proto::Unverified,
        now_ms: u64,
    ) {
        let every = (self.policy.keepalive_interval_ms / 4).max(1);
        let Some(f) = self.foreign_entry(id) else {
            return bump(&mut self.counters.malformed, "unknown_session");
        };
        let ok = msg.verify(&f.entry.mac).is_ok();
        let msg = msg.into_msg();
        if !ok || !f.entry.ctl_window.update(msg.ctr) {
            return bump(&mut self.counters.malformed, "keepalive_rejected");
        }
        if !f.entry.not_bound.take(now_ms, every) {
            return bump(&mut self.counters.keepalives, "not_bound_limited");
        }
        let Body::Keepalive { ts_ms, .. } = msg.body else {
            return;
        };
        let (generation, mac) = (f.entry.session.generation, f.entry.mac.clone());
        let body = Body::KeepaliveAck {
            echo_ts_ms: ts_ms,
            generation,
            up_forwarded: 0,
            flags: 0,
        };
        self.send_sealed(id, &mac, local, peer, body, false);
        bump(&mut self.counters.keepalives, "foreign");
    }
}
