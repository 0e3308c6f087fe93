//! The controller's side of the durable store: which records a batch of inputs
//! changed (written together, one group commit, before any reply of that batch
//! leaves: `run.rs`), and resuming from the store after a restart.
//!
//! What is durable: every session past BIRTH, rewritten whenever its state machine
//! changes (state, version, binding, generation, reattach sequence and nonces, switch
//! history, timer anchors) and deleted when it ends. Traffic alone (the last-traffic
//! anchor) writes nothing: a resumed session gets one loss TTL of grace instead.

use std::collections::HashSet;

use super::{
    core::{Core, Entry},
    counters::bump,
    record::SessionRecord,
    rollback::RolledBack,
};
use crate::{
    control::api::EventRecord,
    datapath::DatapathError,
    session::{Event, Session, State},
    store::{Revision, Sealer, SessionStore, StoreError, Write},
};

/// Whether `new` differs from `old` in what the store must keep: anything but the
/// last-traffic anchor, for a session past BIRTH. Every field is named, so a new one
/// must be decided on here.
pub fn durable_change(old: &Session, new: &Session) -> bool {
    let Session {
        id,
        state,
        version,
        created_ms,
        binding,
        generation,
        left_attached_ms,
        last_rx_ms: _,
        last_data_ms: _,
        last_reattach_seq,
        nonces,
        switches,
        pending,
    } = old;
    new.state != State::Birth
        && (*id != new.id
            || *state != new.state
            || *version != new.version
            || *created_ms != new.created_ms
            || *binding != new.binding
            || *generation != new.generation
            || *left_attached_ms != new.left_attached_ms
            || *last_reattach_seq != new.last_reattach_seq
            || *nonces != new.nonces
            || *switches != new.switches
            || *pending != new.pending)
}

/// How a group commit ended (an `Err` of [`Core::persist`] aside).
#[derive(Debug)]
pub enum Commit {
    Durable,
    /// What of the batch was not written is taken back: all of it, unless the store
    /// takes a group commit in several transactions (etcd) and the first ones went
    /// through (their replies still leave).
    RolledBack {
        error: StoreError,
        refused: RolledBack,
    },
}

/// After a failed [`SessionStore::apply`]: `Some(revisions)` if `batch` was written
/// after all, `None` if none of it was (a batch is atomic: part of it is an error).
fn landed(
    store: &mut dyn SessionStore,
    batch: &[Write],
) -> Result<Option<Vec<Revision>>, StoreError> {
    store.recover()?;
    let mut revs = Vec::with_capacity(batch.len());
    let mut written = 0;
    for w in batch {
        let now = store.get(w.id())?.map_or(0, |(rev, _)| rev);
        let done = match *w {
            Write::Put { expect, .. } => now != expect,
            Write::Delete { .. } => now == 0,
        };
        written += usize::from(done);
        revs.push(now);
    }
    match written {
        0 => Ok(None),
        n if n == batch.len() => Ok(Some(revs)),
        n => Err(StoreError::Io {
            what: format!("{n} of the batch's {} writes are in the store", batch.len()),
            cause: std::io::Error::other("a batch was written in part"),
        }),
    }
}

/// What a restart found (the `CONTROLLER_STARTED` event).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    pub resumed: u64,
    /// Records whose map entry was missing or different (rewritten from the record).
    pub reinstalled: u64,
    /// Map entries no record explains (removed).
    pub removed: u64,
    /// Sessions whose TTL or recovery window ran out while the controller was away.
    pub expired: u64,
}

impl Core {
    /// The group commit: writes every record the inputs since the last call changed,
    /// in one batch of `store`, then publishes their events. Called before any of
    /// their replies leaves (durable before visible).
    ///
    /// A store that fails to write (a full disk, an I/O error) fails the batch as a
    /// whole: it is rolled back ([`Commit::RolledBack`]: memory, map and exit as
    /// before it, its requests refused) and the controller carries on. `Err` is what
    /// it must not carry on from: a conflict (another writer, or a bug), or a failure
    /// after which the store cannot say whether the batch was written.
    pub fn persist(
        &mut self,
        store: &mut dyn SessionStore,
        sealer: &Sealer,
        now_ms: u64,
    ) -> Result<Commit, StoreError> {
        if self.dirty.is_empty() && self.torn.is_empty() {
            self.batch_durable();
            self.release_events();
            return Ok(Commit::Durable);
        }
        let batch = self.pending_writes(sealer);
        // Each transaction is atomic; a group commit larger than the store takes is
        // several, and a failure rolls back only the sessions not yet committed.
        for chunk in batch.chunks(store.max_batch().max(1)) {
            let failed = match store.apply(chunk) {
                Ok(revs) => {
                    self.record_revisions(chunk, &revs);
                    continue;
                }
                Err(e @ (StoreError::Conflict { .. } | StoreError::DuplicateId(_))) => {
                    return Err(e);
                }
                Err(e) => e,
            };
            // A failed fsync (or a timed-out etcd request) may still have written
            // the chunk: ask the store again.
            match landed(store, chunk) {
                Ok(Some(revs)) => {
                    tracing::warn!(
                        "the session store reported {failed}, but the batch was written"
                    );
                    self.record_revisions(chunk, &revs);
                }
                Ok(None) => {
                    let r = self.rollback(now_ms).map_err(|bug| StoreError::Io {
                        what: format!("rolling back after {failed}"),
                        cause: std::io::Error::other(bug),
                    })?;
                    self.release_events();
                    return Ok(Commit::RolledBack {
                        error: failed,
                        refused: r,
                    });
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        what: format!(
                            "after {failed}, the store cannot say whether the batch was written"
                        ),
                        cause: std::io::Error::other(e.to_string()),
                    });
                }
            }
        }
        self.batch_durable();
        self.release_events();
        Ok(Commit::Durable)
    }

    /// Without a store (benchmarks measuring the controller alone): forgets what a
    /// group commit would have written, as if it had.
    pub fn discard_pending(&mut self) {
        self.dirty.clear();
        self.batch_durable();
        self.release_events();
    }

    /// The writes of the next group commit; the entries keep their revisions until
    /// [`Core::committed`] says the batch is durable.
    fn pending_writes(&self, sealer: &Sealer) -> Vec<Write> {
        let mut batch = Vec::with_capacity(self.dirty.len() + self.torn.len());
        for (&id, e) in &self.torn {
            batch.push(Write::Delete { id, expect: e.rev });
        }
        for &id in &self.dirty {
            if let Some(e) = self.sessions.get(&id) {
                let plain = SessionRecord::of(e).encode();
                batch.push(Write::Put {
                    id,
                    expect: e.rev,
                    value: sealer.seal(id, &plain),
                });
            }
        }
        batch
    }

    /// `batch` (part of [`Core::pending_writes`]) is durable with these revisions.
    fn record_revisions(&mut self, batch: &[Write], revs: &[Revision]) {
        for (w, &rev) in batch.iter().zip(revs) {
            match *w {
                Write::Put { id, .. } => {
                    self.dirty.remove(&id);
                    if let Some(e) = self.sessions.get_mut(&id) {
                        e.rev = rev;
                    }
                }
                Write::Delete { id, .. } => {
                    if let Some(e) = self.torn.remove(&id) {
                        self.pool.release(e.tunnel);
                    }
                }
            }
        }
    }

    /// Takes back the sessions of a store after a restart: each gets its map entry as
    /// the record says (the record wins over a map entry a crash left half-way: the
    /// reply that depended on the newer one was never sent), its tunnel address
    /// back from the pool, and its keys at the exit again; map entries no record
    /// explains are removed (another node's session in a cluster is explained: its
    /// admission entry, written from the snapshot before this, is what lets its
    /// reattach reach this node); then one tick ends what expired while the
    /// controller was away (CLOSE, REVOKE, the record deleted).
    pub fn resume(&mut self, records: Vec<(Revision, Entry)>, now_ms: u64) -> Resumed {
        let mut r = Resumed::default();
        let mut known: HashSet<u64> = records.iter().map(|(_, e)| e.session.id).collect();
        if let Some(c) = &self.cluster {
            known.extend(c.foreign.keys().copied());
        }
        for id in self.dp.session_ids() {
            if !known.contains(&id) {
                match self.dp.remove_session(id) {
                    Ok(()) | Err(DatapathError::NoSuchSession(_)) => r.removed += 1,
                    Err(err) => tracing::error!("removing an unexplained map entry: {err}"),
                }
            }
        }
        for (rev, mut e) in records {
            let id = e.session.id;
            e.rev = rev;
            // The relay kept forwarding while no controller watched: silence it could
            // not observe is not silence. One loss TTL from now tells.
            e.session.last_rx_ms = e.session.last_rx_ms.max(now_ms);
            if self.restore_map_entry(&e) {
                r.reinstalled += 1;
            }
            e.seen_up = self.stats_of(id).up_packets;
            self.pool.take(e.tunnel);
            let install = self.install_msg(id, &e);
            self.send_link(id, install, now_ms);
            self.sessions.insert(id, e);
            r.resumed += 1;
        }
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            self.drive(id, &Event::Tick, None, now_ms);
            if !self.sessions.contains_key(&id) {
                r.expired += 1;
            }
        }
        r.resumed -= r.expired;
        self.events.push(EventRecord::ControllerStarted {
            ts_ms: now_ms,
            resumed: r.resumed,
            reinstalled: r.reinstalled,
            removed: r.removed,
            expired: r.expired,
        });
        r
    }

    /// Makes the session's map entry what its record says; true if it had to be
    /// written (missing, or left at another binding by a crash mid-swap).
    pub(super) fn restore_map_entry(&mut self, e: &Entry) -> bool {
        let id = e.session.id;
        let Some(binding) = e.session.binding else {
            return false;
        };
        let want = match self.map_entry(binding, e.local, e.session.generation, true) {
            Ok(w) => w,
            Err(err) => {
                tracing::error!("record {id:#018x}: {err}");
                return false;
            }
        };
        let have = self.dp.session(id).ok().flatten();
        if have.as_ref().is_some_and(|h| {
            (h.generation, h.client, h.gw_client, h.flags)
                == (want.generation, want.client, want.gw_client, want.flags)
        }) {
            return false;
        }
        let res = match have {
            Some(_) => self.dp.replace_session(id, &want).map(|_| ()),
            None => self.dp.insert_session(id, &want),
        };
        if let Err(err) = res {
            tracing::error!(session = %crate::control::api::SessionId(id), "restoring the map entry: {err}");
        }
        true
    }
}

/// What a cluster group commit refused (each session is its own transaction).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCommit {
    pub written: u64,
    /// Refused by etcd: the session is another node's (or its record moved on).
    pub lost: u64,
    /// No answer: perhaps written, perhaps not; taken back here all the same.
    pub in_doubt: u64,
    /// Not sent: this node's lease is not confirmed (no change without it).
    pub no_lease: u64,
    pub refused: RolledBack,
}

impl Core {
    /// The group commit in a cluster: each changed session is one etcd transaction,
    /// guarded by this node's epoch for it (0: acquire it — a new session, or a
    /// takeover). A session whose write does not go through is rolled back alone
    /// (its reattach denied `ownership_ambiguous`); one that etcd says is another
    /// node's is demoted to foreign. Nothing here stops the controller: an etcd
    /// outage refuses changes and leaves established traffic alone.
    pub fn persist_cluster(
        &mut self,
        cluster: &crate::cluster::Cluster,
        now_ms: u64,
    ) -> Result<ClusterCommit, String> {
        use crate::cluster::{Op, Outcome};
        let mut r = ClusterCommit::default();
        if self.dirty.is_empty() && self.torn.is_empty() {
            self.unadopt_unwritten();
            self.batch_durable();
            self.release_events();
            return Ok(r);
        }
        let view = self.cluster.as_ref().ok_or("no cluster")?;
        let writes = self.pending_writes(&view.sealer);
        let ops: Vec<Op> = writes
            .iter()
            .map(|w| {
                let epoch = self
                    .sessions
                    .get(&w.id())
                    .or_else(|| self.torn.get(&w.id()))
                    .map_or(0, |e| e.epoch);
                match w {
                    Write::Put { id, expect, value } => Op::Put {
                        id: *id,
                        expect: *expect,
                        value: value.clone(),
                        epoch,
                    },
                    Write::Delete { id, expect } => Op::Delete {
                        id: *id,
                        expect: *expect,
                        epoch,
                    },
                }
            })
            .collect();
        // Without a lease it can vouch for, this node changes nothing (its lease may
        // be gone at etcd): refused at once rather than after a timeout that would
        // hold up every other answer of this loop while etcd is away.
        let vouched = self.lease_live(now_ms);
        // Writes that create the owner key on this node's current lease (epoch 0): only
        // these settle a claim still to be sent; a record written under an existing
        // key leaves that key on whatever lease holds it.
        let acquiring: HashSet<u64> = ops
            .iter()
            .filter(|op| matches!(op, Op::Put { epoch: 0, .. }))
            .map(Op::id)
            .collect();
        let outcomes = if vouched {
            cluster.commit(ops)
        } else {
            ops.iter()
                .map(|_| {
                    Outcome::Failed(crate::store::StoreError::Etcd {
                        endpoints: cluster.endpoints().to_owned(),
                        what: "committing",
                        cause: "this node's lease is not confirmed (etcd has not answered \
                                its keep-alives): no change until it is"
                            .into(),
                    })
                })
                .collect()
        };
        let mut refused = std::collections::BTreeSet::new();
        let mut lost = Vec::new();
        let mut mine_at = Vec::new();
        let me = cluster.node();
        let lease = cluster.lease().id;
        for (w, o) in writes.iter().zip(outcomes) {
            let id = w.id();
            match o {
                Outcome::Done { rev, epoch } => {
                    r.written += 1;
                    if acquiring.contains(&id) {
                        self.claim_settled(id);
                    }
                    self.record_revisions(std::slice::from_ref(w), &[rev.unwrap_or(0)]);
                    if let Some(c) = self.cluster.as_mut() {
                        c.adopted.remove(&id);
                    }
                    // A record created is a new session: no owner to change from.
                    self.owned_at(id, epoch, w.expect() != 0, now_ms);
                }
                Outcome::Lost { owner, rev } => {
                    // This node's own key: at the epoch it holds (an earlier write's
                    // answer was lost), or under its current lease at another epoch
                    // (an acquisition whose answer was lost): the session is still
                    // this node's; the write goes again at the right revision.
                    let still_mine = owner.filter(|o| {
                        o.node == me
                            && (o.lease == lease
                                || self.sessions.get(&id).is_some_and(|e| e.epoch == o.epoch))
                    });
                    if let Some(o) = still_mine {
                        if let Some(e) = self.sessions.get_mut(&id) {
                            e.rev = rev;
                        }
                        mine_at.push((id, o.epoch));
                        r.in_doubt += 1;
                        bump(&mut self.counters.ownership, "in_doubt");
                    } else {
                        r.lost += 1;
                        bump(&mut self.counters.ownership, "refused");
                        lost.push((id, owner, rev));
                    }
                    refused.insert(id);
                }
                Outcome::Failed(e) => {
                    if vouched {
                        tracing::warn!(session = %crate::control::api::SessionId(id), "cluster write: {e}");
                        r.in_doubt += 1;
                        bump(&mut self.counters.ownership, "in_doubt");
                    } else {
                        // Never sent; the lease's own warnings say that etcd is away.
                        tracing::debug!(session = %crate::control::api::SessionId(id), "cluster write: {e}");
                        r.no_lease += 1;
                        bump(&mut self.counters.ownership, "no_lease");
                    }
                    refused.insert(id);
                }
            }
        }
        if !refused.is_empty() {
            r.refused = self.rollback_sessions(
                &refused,
                crate::session::Detail::OwnershipAmbiguous,
                now_ms,
            )?;
            // After the rollback, which takes back what the batch queued.
            for (id, epoch) in mine_at {
                self.owned_at(id, epoch, false, now_ms);
            }
            for (id, owner, _) in lost {
                // Another node's now, or no one's (our lease ran out): not ours.
                if owner.is_none_or(|o| o.node != me) {
                    self.lose(id, owner, now_ms);
                }
                if let Some(f) = self.foreign_entry(id) {
                    f.owner = owner;
                }
            }
        }
        self.unadopt_unwritten();
        self.batch_durable();
        self.release_events();
        Ok(r)
    }
}
