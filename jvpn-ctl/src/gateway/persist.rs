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
    record::SessionRecord,
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
    /// their replies leaves (durable before visible); an error leaves the records
    /// pending and the events unpublished.
    pub fn persist(
        &mut self,
        store: &mut dyn SessionStore,
        sealer: &Sealer,
    ) -> Result<(), StoreError> {
        if !self.dirty.is_empty() || !self.deleted.is_empty() {
            let batch = self.pending_writes(sealer);
            let revs = store.apply(&batch)?;
            self.committed(&batch, &revs);
        }
        self.release_events();
        Ok(())
    }

    /// The writes of the next group commit; the entries keep their revisions until
    /// [`Core::committed`] says the batch is durable.
    fn pending_writes(&self, sealer: &Sealer) -> Vec<Write> {
        let mut batch = Vec::with_capacity(self.dirty.len() + self.deleted.len());
        for (&id, &expect) in &self.deleted {
            batch.push(Write::Delete { id, expect });
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

    /// `batch` (from [`Core::pending_writes`]) is durable with these revisions.
    fn committed(&mut self, batch: &[Write], revs: &[Revision]) {
        for (w, &rev) in batch.iter().zip(revs) {
            match *w {
                Write::Put { id, .. } => {
                    self.dirty.remove(&id);
                    if let Some(e) = self.sessions.get_mut(&id) {
                        e.rev = rev;
                    }
                }
                Write::Delete { id, .. } => {
                    self.deleted.remove(&id);
                }
            }
        }
    }

    /// Takes back the sessions of a store after a restart: each gets its map entry as
    /// the record says (the record wins over a map entry a crash left half-way: the
    /// reply that depended on the newer one was never sent), its tunnel address
    /// back from the pool, and its keys at the exit again; map entries no record
    /// explains are removed; then one tick ends what expired while the controller
    /// was away (CLOSE, REVOKE, the record deleted).
    pub fn resume(&mut self, records: Vec<(Revision, Entry)>, now_ms: u64) -> Resumed {
        let mut r = Resumed::default();
        let known: HashSet<u64> = records.iter().map(|(_, e)| e.session.id).collect();
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
            let frame = self.link.send(install, now_ms);
            self.out.push(super::core::Outgoing::Link(frame));
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
    fn restore_map_entry(&mut self, e: &Entry) -> bool {
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
