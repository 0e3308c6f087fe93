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
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::Instant,
};

use super::{
    core::{Core, Entry},
    counters::bump,
    record::SessionRecord,
};
use crate::{
    cluster::{Change, Cluster, NodeInfo, Owner, Snapshot},
    control::api::{
        ClusterSessions, ClusterStats, ClusterStatus, EtcdHealth, EventRecord, NodeStatus,
        OWNERSHIP_KINDS, SessionId,
    },
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
    /// The nodes seen under `nodes/` (for `jvpn-ctl cluster status` only).
    pub nodes: BTreeMap<u16, Announced>,
    /// Claims and acquisitions of this node's sessions that got no answer (etcd
    /// unreachable, no lease yet): the session stays here, its owner key perhaps
    /// missing, until the same op, sent again, settles it either way.
    pub unclaimed: HashMap<u64, crate::cluster::Op>,
    /// When those may be sent again (core clock, ms).
    pub retry_claims_at_ms: u64,
}

/// How often unanswered claims go out again: seldom enough that a slow etcd is
/// not flooded, often enough that the store agrees again soon after it answers.
const CLAIM_RETRY_MS: u64 = 1000;

/// A node's announcement as the snapshot and the watch showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announced {
    /// Present now (its lease is alive).
    pub up: bool,
    /// What it said about itself, as of the last snapshot.
    pub about: Option<String>,
}

/// The first other node whose announced pool (`<word>=<cidr>` in what it wrote about
/// itself: `pool=` IPv4, `pool6=` IPv6) overlaps `mine`.
pub fn overlapping_pool(
    me: u16,
    word: &str,
    mine: ipnet::IpNet,
    nodes: &[NodeInfo],
) -> Option<(u16, ipnet::IpNet)> {
    nodes.iter().filter(|n| n.node != me).find_map(|n| {
        let theirs: ipnet::IpNet = n
            .about
            .split_whitespace()
            .find_map(|w| w.strip_prefix(word)?.strip_prefix('='))?
            .parse()
            .ok()?;
        (theirs.contains(&mine.network()) || mine.contains(&theirs.network()))
            .then_some((n.node, theirs))
    })
}

impl Core {
    pub fn enable_cluster(&mut self, node: u16, sealer: Sealer) {
        self.cluster = Some(ClusterView {
            node,
            lease_until_ms: 0,
            sealer,
            foreign: HashMap::new(),
            adopted: HashSet::new(),
            nodes: BTreeMap::new(),
            unclaimed: HashMap::new(),
            retry_claims_at_ms: 0,
        });
    }

    /// The announcements of a snapshot: these nodes are up, the others known
    /// before are down.
    pub fn note_nodes(&mut self, nodes: &[NodeInfo]) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        for a in c.nodes.values_mut() {
            a.up = false;
        }
        for n in nodes {
            c.nodes.insert(
                n.node,
                Announced {
                    up: true,
                    about: Some(n.about.clone()),
                },
            );
        }
    }

    /// The core's half of `jvpn-ctl cluster status` (`None`: a single gateway);
    /// [`etcd_facts`] adds the lease's id and what etcd last said.
    pub fn cluster_status(&self, now_ms: u64) -> Option<ClusterStatus> {
        let c = self.cluster.as_ref()?;
        let mut owned: BTreeMap<u16, u64> = BTreeMap::new();
        owned.insert(c.node, self.sessions.len() as u64);
        for f in c.foreign.values() {
            if let Some(o) = f.owner {
                *owned.entry(o.node).or_default() += 1;
            }
        }
        let nodes: Vec<NodeStatus> = c
            .nodes
            .keys()
            .chain(owned.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|&node| {
                let a = c.nodes.get(&node);
                NodeStatus {
                    node,
                    announced: a.is_some_and(|a| a.up),
                    about: a.and_then(|a| a.about.clone()),
                    sessions: owned.get(&node).copied().unwrap_or(0),
                }
            })
            .collect();
        let mut s = ClusterStatus {
            node: c.node,
            nodes,
            ..ClusterStatus::default()
        };
        let stats = self.cluster_stats(now_ms)?;
        s.sessions = stats.sessions;
        s.ownership = stats.ownership;
        s.lease.live = stats.lease_live;
        s.lease.left_ms = c.lease_until_ms.saturating_sub(now_ms);
        Some(s)
    }

    /// The cluster figures of `jvpn-ctl stats` and `/metrics`.
    pub(super) fn cluster_stats(&self, now_ms: u64) -> Option<ClusterStats> {
        let c = self.cluster.as_ref()?;
        let mut ownership: BTreeMap<String, u64> =
            OWNERSHIP_KINDS.iter().map(|k| (k.to_string(), 0)).collect();
        ownership.extend(self.counters.ownership.iter().map(|(k, n)| (k.clone(), *n)));
        Some(ClusterStats {
            node: c.node,
            lease_live: self.lease_live(now_ms),
            sessions: ClusterSessions {
                owned: self.sessions.len() as u64,
                foreign: c.foreign.len() as u64,
                unowned: c.foreign.values().filter(|f| f.owner.is_none()).count() as u64,
            },
            ownership,
        })
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
        self.note_nodes(&snap.nodes);
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
            Change::Node { node, up } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.nodes.entry(node).or_default().up = up;
                }
            }
            Change::Resync => {}
        }
    }

    /// This node no longer owns `id` (another node took it, or etcd refused our
    /// write): demoted to foreign at once.
    pub(super) fn lose(&mut self, id: u64, owner: Option<Owner>, now_ms: u64) {
        self.claim_settled(id);
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
    pub fn reacquire_ops(&mut self) -> Vec<crate::cluster::Op> {
        // These replace whatever was still unanswered.
        if let Some(c) = self.cluster.as_mut() {
            c.unclaimed.clear();
        }
        self.sessions
            .iter()
            .filter(|(_, e)| e.rev > 0)
            .map(|(&id, e)| crate::cluster::Op::Acquire { id, expect: e.rev })
            .collect()
    }

    /// The unanswered claims and acquisitions to send again now (at most once a
    /// second, and only with a live lease): those of sessions still here.
    pub fn claims_to_retry(&mut self, now_ms: u64) -> Vec<crate::cluster::Op> {
        let live = self.lease_live(now_ms);
        let Some(c) = self.cluster.as_mut() else {
            return Vec::new();
        };
        if c.unclaimed.is_empty() || !live || now_ms < c.retry_claims_at_ms {
            return Vec::new();
        }
        c.retry_claims_at_ms = now_ms + CLAIM_RETRY_MS;
        c.unclaimed.retain(|id, _| self.sessions.contains_key(id));
        c.unclaimed.values().cloned().collect()
    }

    /// The outcomes of claims and acquisitions ([`crate::cluster::Op::Claim`],
    /// [`crate::cluster::Op::Acquire`]) made under this node's lease `lease`: a new
    /// epoch goes to the exit, a session another node holds now (or that this node
    /// could not get back) is foreign. An op is not safe to repeat blindly: one
    /// whose answer was lost may have been applied, and then its repetition finds
    /// this node's own key — the session is this node's, not lost.
    pub fn claimed(
        &mut self,
        ops: &[crate::cluster::Op],
        outcomes: Vec<crate::cluster::Outcome>,
        lease: i64,
        now_ms: u64,
    ) {
        use crate::cluster::{Op, Outcome};
        let me = self.cluster.as_ref().map_or(0, |c| c.node);
        let (mut unanswered, mut first) = (0u64, None);
        for (op, o) in ops.iter().zip(outcomes) {
            let id = op.id();
            let again = match o {
                Outcome::Done { epoch, .. } => {
                    self.owned_at(id, epoch, true, now_ms);
                    None
                }
                Outcome::Lost { owner: Some(o), .. } if o.node == me => {
                    if o.lease == lease {
                        self.owned_at(id, o.epoch, true, now_ms);
                        None
                    } else {
                        // On an earlier lease of this node: moved onto this one.
                        Some(Op::Claim { id, epoch: o.epoch })
                    }
                }
                Outcome::Lost { owner, .. } => {
                    self.lose(id, owner, now_ms);
                    None
                }
                Outcome::Failed(err) => {
                    unanswered += 1;
                    first.get_or_insert(err);
                    bump(&mut self.counters.ownership, "in_doubt");
                    Some(op.clone())
                }
            };
            if let Some(c) = self.cluster.as_mut() {
                match again {
                    Some(op) if self.sessions.contains_key(&id) => {
                        c.unclaimed.insert(id, op);
                    }
                    _ => {
                        c.unclaimed.remove(&id);
                    }
                }
            }
        }
        if let Some(err) = first {
            // One line per round, not one per session.
            tracing::warn!(
                "{unanswered} claims of this node's sessions without an answer (sent again \
                 in {CLAIM_RETRY_MS} ms): {err}"
            );
            if let Some(c) = self.cluster.as_mut() {
                c.retry_claims_at_ms = now_ms + CLAIM_RETRY_MS;
            }
        }
    }

    /// Session `id` needs no claim sent again (written, or no longer here).
    pub(super) fn claim_settled(&mut self, id: u64) {
        if let Some(c) = self.cluster.as_mut() {
            c.unclaimed.remove(&id);
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

/// The etcd half of `jvpn-ctl cluster status`: the lease's id, TTL and term and
/// what the client thread last heard from etcd. Reads shared state; never waits
/// for etcd.
pub fn etcd_facts(c: &Cluster, s: &mut ClusterStatus) {
    let now = Instant::now();
    let lease = c.lease();
    let ttl = c.ttl().as_secs().max(1);
    s.root = c.root().to_owned();
    s.lease.id = lease.id;
    s.lease.ttl_s = ttl;
    s.lease.term = lease.term;
    let h = c.health();
    let ago = |t: Instant| {
        u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
    };
    let answered = h.last_answer.map(ago);
    s.etcd = EtcdHealth {
        endpoints: c.endpoint_list().to_vec(),
        reachable: answered.is_some_and(|ms| ms < ttl * 1000),
        last_answer_ms_ago: answered,
        last_error: h.last_error.as_ref().map(|(_, e)| e.clone()),
        last_error_ms_ago: h.last_error.as_ref().map(|(t, _)| ago(*t)),
        revision: (h.revision > 0).then_some(h.revision),
        member_id: (h.member_id != 0).then_some(h.member_id),
        raft_term: (h.raft_term != 0).then_some(h.raft_term),
    };
}

#[cfg(test)]
mod tests {
    //! The operator's view of a cluster node against a real etcd (`lab::etcd`), real
    //! BPF maps (root) and the real control socket: `cluster status` and the owner
    //! columns of `sessions`, answered as the run loop answers them.

    use std::{
        net::Ipv4Addr,
        path::{Path, PathBuf},
        time::Duration,
    };

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        clock::Clock,
        cluster::{JoinParams, Op, Outcome},
        control::{
            Client, EventBus,
            api::{NOT_A_CLUSTER, Request, Response, SessionInfo, Stats},
            server::{Call, serve, tests::temp_dir},
        },
        datapath::{Datapath, DatapathConfig},
        gateway::{
            core::CoreParams,
            pool::Pool,
            record::SessionRecord,
            run::{cluster_status, lease_until_ms},
        },
        lab::etcd::start_or_skip,
        proto::Peers,
        session::{Policy, Session, State},
        store::{StoreError, StoreKey},
    };

    struct Pins(PathBuf);

    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn join(endpoint: String, root: &str, node: u16) -> Cluster {
        Cluster::join(JoinParams {
            endpoints: vec![endpoint],
            root: root.into(),
            node,
            ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            about: format!("test node {node}"),
        })
        .unwrap()
    }

    fn record(id: u64, tunnel: Ipv4Addr, now_ms: u64) -> Vec<u8> {
        let mut session = Session::new(id, now_ms);
        session.state = State::Attached;
        session.version = 2;
        session.binding = Some("192.0.2.7:40000".parse().unwrap());
        session.generation = 1;
        session.last_rx_ms = now_ms;
        SessionRecord {
            session,
            k_reattach: [1; 32],
            k_c2x: [2; 32],
            k_x2c: [3; 32],
            transcript: [4; 32],
            peer: [5; 32],
            tunnel,
            local: "192.0.2.1:51820".parse().unwrap(),
            ctl_highest: 0,
            tunnel6: None,
        }
        .encode()
    }

    /// Creates session `id` at node `c`: its epoch.
    fn create(c: &Cluster, sealer: &Sealer, id: u64, tunnel: [u8; 4], now_ms: u64) -> u64 {
        let value = sealer.seal(id, &record(id, tunnel.into(), now_ms));
        match c
            .commit(vec![Op::Put {
                id,
                expect: 0,
                value,
                epoch: 0,
            }])
            .pop()
        {
            Some(Outcome::Done { epoch, .. }) => epoch,
            o => panic!("creating {id:x}: {o:?}"),
        }
    }

    /// Feeds the watch's changes to the core until `done` holds.
    fn until(
        core: &mut Core,
        rx: &mut mpsc::UnboundedReceiver<Change>,
        clock: &Clock,
        what: &str,
        done: impl Fn(&Core) -> bool,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done(core) {
            assert!(std::time::Instant::now() < deadline, "{what}: not seen");
            match rx.try_recv() {
                Ok(ch) => core.on_cluster_change(ch, clock.now_ms()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// `cluster status` and `sessions` through the control socket, the core
    /// answering on this thread as the run loop does.
    fn ask(
        core: &mut Core,
        c: &Cluster,
        sock: &Path,
        clock: &Clock,
    ) -> (Response, Vec<SessionInfo>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        let server = rt.block_on(serve(sock, tx, EventBus::new(4))).unwrap();
        let path = sock.to_owned();
        let client = std::thread::spawn(move || {
            let mut cl = Client::connect(&path).unwrap();
            let status = cl.request(&Request::ClusterStatus);
            let sessions = cl.sessions().unwrap();
            (status, sessions)
        });
        for _ in 0..2 {
            let call = rx.blocking_recv().unwrap();
            let now = clock.now_ms();
            let resp = match call.request {
                Request::ClusterStatus => cluster_status(core, c, now),
                r => core.on_request(&r, now),
            };
            let _ = call.reply.send(resp);
        }
        let (status, sessions) = client.join().unwrap();
        drop(server);
        let status = match status {
            Ok(data) => Response::Ok { data },
            Err(e) => Response::error(e),
        };
        (status, sessions)
    }

    fn status_of(r: Response) -> ClusterStatus {
        match r {
            Response::Ok { data } => serde_json::from_value(data).unwrap(),
            Response::Error { error } => panic!("cluster status: {error}"),
        }
    }

    #[test]
    fn overlapping_pools_are_found_in_the_announcements() {
        let node = |node: u16, pool: &str| NodeInfo {
            node,
            lease: 1,
            about: format!("pid=1 port=51820 pool={pool} interfaces=eth0"),
        };
        let mine: ipnet::IpNet = "10.99.0.0/24".parse().unwrap();
        let others = [node(2, "10.99.1.0/24"), node(3, "10.98.0.0/16")];
        assert_eq!(overlapping_pool(1, "pool", mine, &others), None);
        let wide = [node(2, "10.99.1.0/24"), node(3, "10.99.0.0/16")];
        assert_eq!(
            overlapping_pool(1, "pool", mine, &wide),
            Some((3, "10.99.0.0/16".parse().unwrap()))
        );
        let narrow = [node(2, "10.99.0.128/25")];
        assert_eq!(
            overlapping_pool(1, "pool", mine, &narrow),
            Some((2, "10.99.0.128/25".parse().unwrap()))
        );
        // Its own announcement (a restart within the TTL) and unparsable ones count for nothing.
        let own = [
            node(1, "10.99.0.0/24"),
            NodeInfo {
                node: 4,
                lease: 1,
                about: "pool=x".into(),
            },
        ];
        assert_eq!(overlapping_pool(1, "pool", mine, &own), None);
        // IPv6 pools are announced as pool6= and checked on their own.
        let dual = [NodeInfo {
            node: 2,
            lease: 1,
            about: "pid=1 port=51820 pool=10.98.0.0/24 pool6=fd00:99::/112 interfaces=eth0".into(),
        }];
        let mine6: ipnet::IpNet = "fd00:99::100/120".parse().unwrap();
        assert_eq!(overlapping_pool(1, "pool", mine, &dual), None);
        assert_eq!(
            overlapping_pool(1, "pool6", mine6, &dual),
            Some((2, "fd00:99::/112".parse().unwrap()))
        );
        assert_eq!(overlapping_pool(1, "pool6", mine6, &others), None);
    }

    struct Setup {
        etcd: crate::lab::etcd::Etcd,
        dir: PathBuf,
        key: StoreKey,
        sealer: Sealer,
        clock: Clock,
    }

    /// A real etcd, a temporary directory with a store key; `None` (said why) when
    /// not root (BPF maps) or etcd is missing outside CI.
    fn setup(test: &str, tag: &str) -> Option<Setup> {
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: needs root (BPF maps), and CI=true"
            );
            eprintln!("SKIPPED {test}: needs root (BPF maps)");
            return None;
        }
        let etcd = start_or_skip(test)?;
        let dir = temp_dir(tag);
        let (key, _) = StoreKey::load_or_create(&dir.join("store.key")).unwrap();
        Some(Setup {
            etcd,
            dir,
            sealer: Sealer::new(&key),
            key,
            clock: Clock::new(),
        })
    }

    /// A core on real BPF maps (pinned under `pins`), as `gateway::run` makes one.
    fn node_core(dir: &Path, pins: &Pins, now: u64) -> Core {
        let dp = Datapath::load(DatapathConfig {
            max_sessions: 64,
            pin_dir: pins.0.clone(),
            ..DatapathConfig::default()
        })
        .unwrap();
        Core::new(
            CoreParams {
                policy: Policy::default(),
                identity: crate::proto::identity::generate(&dir.join("gw.key"), false).unwrap(),
                peers: Peers::new(),
                pool: Pool::new(
                    "10.77.0.0/24".parse().unwrap(),
                    [Ipv4Addr::new(10, 77, 0, 1)],
                ),
                exit_data: "127.0.0.1:9".parse().unwrap(),
                gw_exit: "127.0.0.1:9".parse().unwrap(),
                link_key: [9; 32],
                start_us: now * 1000,
                node: 1,
            },
            dp,
            EventBus::new(64),
            now,
        )
    }

    /// An acquisition etcd did not answer (a new lease, etcd slow): the session
    /// stays, and the same op goes out again, once a second with a live lease,
    /// until an answer settles it; then the store names this node again.
    #[test]
    fn an_unanswered_acquisition_is_sent_again_until_it_settles() {
        let Some(Setup {
            etcd,
            dir,
            key,
            sealer,
            clock,
        }) = setup("an_unanswered_acquisition_is_sent_again", "cl-retry")
        else {
            return;
        };
        let root = "/t/retry/";
        let a = join(etcd.endpoint(), root, 1);
        let now = clock.now_ms();
        let epoch = create(&a, &sealer, 0xa1, [10, 77, 0, 2], now);
        let pins = Pins(PathBuf::from(format!(
            "/sys/fs/bpf/jvpn-cl-retry-{}",
            std::process::id()
        )));
        let mut core = node_core(&dir, &pins, now);
        core.enable_cluster(1, Sealer::new(&key));
        core.set_lease_until(lease_until_ms(&a, &clock));
        let snap = a.snapshot().unwrap();
        let mine = core.split_snapshot(&snap, now).unwrap();
        core.resume(mine.into_iter().map(|(rev, e, _)| (rev, e)).collect(), now);
        assert_eq!(core.owner_of(0xa1), Some((1, epoch)));

        // The node's lease ends at etcd (its owner key goes with it); the next
        // lease's acquisition gets no answer.
        a.resign().unwrap();
        let a = join(etcd.endpoint(), root, 1);
        core.set_lease_until(lease_until_ms(&a, &clock));
        let ops = core.reacquire_ops();
        assert_eq!(ops.len(), 1);
        let now = clock.now_ms();
        let unanswered = StoreError::Etcd {
            endpoints: etcd.endpoint(),
            what: "committing",
            cause: "no answer within 500ms".into(),
        };
        core.claimed(&ops, vec![Outcome::Failed(unanswered)], a.lease().id, now);
        assert!(core.sessions.contains_key(&0xa1), "the session stays");
        // The core's time is an input: its lease stays live over these seconds.
        core.set_lease_until(now + 10_000);
        assert!(
            core.claims_to_retry(now + 10).is_empty(),
            "not before a second has passed"
        );
        let again = core.claims_to_retry(now + 1000);
        assert_eq!(again.len(), 1, "sent again");
        // Applied at etcd all the same, its answer lost: sent again, it finds this
        // node's own key — the session stays this node's, at that key's epoch.
        let landed = a.commit(again.clone());
        let landed_at = match landed.first() {
            Some(Outcome::Done { epoch, .. }) => *epoch,
            o => panic!("acquiring: {o:?}"),
        };
        let lost_answer = StoreError::Etcd {
            endpoints: etcd.endpoint(),
            what: "committing",
            cause: "no answer within 500ms".into(),
        };
        core.claimed(
            &again,
            vec![Outcome::Failed(lost_answer)],
            a.lease().id,
            now + 1000,
        );
        let again = core.claims_to_retry(now + 2000);
        assert_eq!(again.len(), 1, "sent again");
        let outcomes = a.commit(again.clone());
        assert!(
            matches!(&outcomes[..], [Outcome::Lost { owner: Some(o), .. }] if o.node == 1),
            "{outcomes:?}"
        );
        core.claimed(&again, outcomes, a.lease().id, now + 2000);
        assert!(core.sessions.contains_key(&0xa1), "still this node's own");
        let (node, new_epoch) = core.owner_of(0xa1).expect("owned");
        assert_eq!(node, 1);
        assert!(new_epoch > epoch, "a new epoch: {new_epoch} after {epoch}");
        assert_eq!(new_epoch, landed_at, "the epoch of the key that landed");
        assert_eq!(
            a.get(0xa1).unwrap().owner.map(|o| (o.node, o.epoch)),
            Some((1, new_epoch)),
            "etcd names this node again"
        );
        assert!(
            core.claims_to_retry(now + 5000).is_empty(),
            "nothing left to send"
        );
    }

    #[test]
    fn cluster_status_and_owner_columns() {
        let Some(Setup {
            etcd,
            dir,
            key,
            sealer,
            clock,
        }) = setup("cluster_status_and_owner_columns", "cl-status")
        else {
            return;
        };
        let root = "/t/status/";
        let a = join(etcd.endpoint(), root, 1);
        let b = join(etcd.endpoint(), root, 2);
        let now = clock.now_ms();
        let e1 = create(&a, &sealer, 0xa1, [10, 77, 0, 2], now);
        let e2 = create(&b, &sealer, 0xb2, [10, 77, 0, 3], now);

        let pins = Pins(PathBuf::from(format!(
            "/sys/fs/bpf/jvpn-cl-status-{}",
            std::process::id()
        )));
        let mut core = node_core(&dir, &pins, now);
        // As `gateway::run` starts a cluster node.
        core.enable_cluster(1, Sealer::new(&key));
        core.set_lease_until(lease_until_ms(&a, &clock));
        let snap = a.snapshot().unwrap();
        let mine = core.split_snapshot(&snap, now).unwrap();
        assert_eq!(mine.len(), 1, "node 1's own session");
        core.resume(mine.into_iter().map(|(rev, e, _)| (rev, e)).collect(), now);
        let (tx, mut rx) = mpsc::unbounded_channel();
        a.watch(snap.revision, tx).unwrap();
        // Node 2 starts another session after the snapshot: the watch tells node 1.
        let e3 = create(&b, &sealer, 0xb3, [10, 77, 0, 4], now);
        until(&mut core, &mut rx, &clock, "node 2's new session", |c| {
            c.owner_of(0xb3) == Some((2, e3))
        });

        let sock = dir.join("jvpn.sock");
        let (status, sessions) = ask(&mut core, &a, &sock, &clock);
        let s = status_of(status);
        println!("{}", serde_json::to_string_pretty(&s).unwrap());
        assert_eq!((s.node, s.root.as_str()), (1, root));
        let lease = a.lease();
        assert_eq!((s.lease.id, s.lease.ttl_s, s.lease.term), (lease.id, 2, 1));
        assert!(
            s.lease.live && s.lease.left_ms > 0 && s.lease.left_ms <= 2000,
            "{:?}",
            s.lease
        );
        assert!(s.etcd.reachable, "{:?}", s.etcd);
        assert_eq!(s.etcd.endpoints, vec![etcd.endpoint()]);
        assert!(
            s.etcd.revision.is_some_and(|r| r >= e3 as i64),
            "{:?}",
            s.etcd
        );
        assert!(s.etcd.member_id.is_some() && s.etcd.raft_term.is_some());
        let node = |n: u16, announced, sessions| NodeStatus {
            node: n,
            announced,
            about: Some(format!("test node {n}")),
            sessions,
        };
        assert_eq!(s.nodes, vec![node(1, true, 1), node(2, true, 2)]);
        let counts = ClusterSessions {
            owned: 1,
            foreign: 2,
            unowned: 0,
        };
        assert_eq!(s.sessions, counts);
        assert_eq!(
            s.ownership.keys().collect::<Vec<_>>().len(),
            OWNERSHIP_KINDS.len()
        );
        // `sessions` lists node 1's own, with its owner and the epoch of its creation.
        let owners: Vec<_> = sessions
            .iter()
            .map(|i| (i.id, i.owner_node, i.owner_epoch))
            .collect();
        assert_eq!(owners, vec![(SessionId(0xa1), Some(1), Some(e1))]);
        assert_ne!(e1, e2);

        // Node 2 ends its lease: its announcement and its owner keys go with it; its
        // sessions stay admitted here, with no owner, for a takeover.
        b.resign().unwrap();
        until(&mut core, &mut rx, &clock, "node 2 gone", |c| {
            c.cluster_status(0).is_some_and(|s| s.sessions.unowned == 2)
                && c.cluster.as_ref().is_some_and(|v| !v.nodes[&2].up)
        });
        let (status, _) = ask(&mut core, &a, &sock, &clock);
        let s = status_of(status);
        assert_eq!(s.nodes, vec![node(1, true, 1), node(2, false, 0)]);
        assert_eq!(
            s.sessions,
            ClusterSessions {
                unowned: 2,
                ..counts
            }
        );
        let stats: Stats = match core.on_request(&Request::Stats, clock.now_ms()) {
            Response::Ok { data } => serde_json::from_value(data).unwrap(),
            r => panic!("{r:?}"),
        };
        let cs = stats.cluster.clone().expect("a cluster node's stats");
        assert!(cs.lease_live);
        assert_eq!((cs.node, cs.sessions.clone()), (1, s.sessions.clone()));
        let text = crate::control::metrics::render(&stats);
        for want in [
            "jvpn_cluster_sessions{owner=\"this_node\"} 1\n",
            "jvpn_cluster_sessions{owner=\"other_node\"} 0\n",
            "jvpn_cluster_sessions{owner=\"none\"} 2\n",
            "jvpn_cluster_lease_live 1\n",
            "jvpn_ownership_changes_total{kind=\"lost\"} 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }

        // Without a cluster the same request is the one-line error.
        let view = core.cluster.take();
        match core.on_request(&Request::ClusterStatus, clock.now_ms()) {
            Response::Error { error } => assert_eq!(error, NOT_A_CLUSTER),
            r => panic!("{r:?}"),
        }
        core.cluster = view;
        drop(core);
        drop(pins);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
