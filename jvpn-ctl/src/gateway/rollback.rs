//! Taking back a batch whose group commit failed (a full or failing disk): nothing
//! it changed may stay — in memory, in the map, at the exit, in the event log or
//! the counters — and the requests that needed the write are refused instead of
//! answered: a reattach gets `REATTACH_DENIED store_error`, a handshake gets no
//! ESTABLISHED (its BIRTH session is removed; the client starts over).
//!
//! What the store holds is what memory held before the batch (every earlier batch
//! was committed or rolled back), so a session is put back to its state before the
//! batch's first durable change, which [`Core::remember`] keeps.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
};

use super::{
    core::Core,
    counters::{bump, unbump},
};
use crate::{
    control::api::{EventRecord, SessionId},
    proto::Body,
    session::{Detail, Event, Session, State},
};

/// One session as it was before the batch changed what the store keeps of it.
pub struct Undo {
    session: Session,
    local: SocketAddr,
    /// The batch's last reattach request or confirm: (gateway address, candidate).
    request: Option<(SocketAddr, SocketAddr)>,
}

/// What a rollback refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    /// Sessions put back as they were.
    pub sessions: u64,
    /// Reattach requests answered with `store_error`.
    pub reattaches: u64,
    /// Handshakes refused at their last step.
    pub handshakes: u64,
}

impl Core {
    /// Before `ev` changes what the store keeps of session `id`: keeps its state as
    /// of the batch's start (the first call of the batch wins) and the candidate a
    /// refusal would go to.
    pub(super) fn remember(&mut self, id: u64, ev: &Event, local: Option<SocketAddr>) {
        let Some(e) = self.sessions.get(&id) else {
            return;
        };
        let u = self.undo.entry(id).or_insert_with(|| Undo {
            session: e.session.clone(),
            local: e.local,
            request: None,
        });
        let from = match ev {
            Event::ReattachRequest(r) => Some(r.from),
            Event::ReattachConfirm { from, .. } => Some(*from),
            _ => None,
        };
        if let (Some(from), Some(local)) = (from, local) {
            u.request = Some((local, from));
        }
    }

    /// The batch is durable: its undo records go, and the tunnel addresses of the
    /// sessions it ended are free now.
    pub(super) fn batch_durable(&mut self) {
        self.undo.clear();
        if let Some(c) = self.cluster.as_mut() {
            c.adopted.clear();
        }
        for (_, e) in self.torn.drain() {
            self.pool.release(e.tunnel);
        }
    }

    /// The batch's commit failed and none of it was written: every session it
    /// changed in the store is put back (Err if one has no undo record, which would
    /// be a bug: the caller stops rather than guess).
    pub(super) fn rollback(&mut self, now_ms: u64) -> Result<RolledBack, String> {
        let ids: BTreeSet<u64> = self
            .dirty
            .iter()
            .copied()
            .chain(self.torn.keys().copied())
            .collect();
        self.rollback_sessions(&ids, Detail::StoreError, now_ms)
    }

    /// Puts back the sessions `ids` of the batch (a cluster commits each session on
    /// its own, so some may be refused while the others went through); their
    /// pending reattaches are refused with `detail`.
    pub(super) fn rollback_sessions(
        &mut self,
        ids: &BTreeSet<u64>,
        detail: Detail,
        now_ms: u64,
    ) -> Result<RolledBack, String> {
        let ids = ids.clone();
        if let Some(id) = ids.iter().find(|id| !self.undo.contains_key(id)) {
            return Err(format!(
                "session {} changed in the store without an undo record",
                SessionId(*id)
            ));
        }
        let mut undo: HashMap<u64, Undo> = ids
            .iter()
            .filter_map(|id| self.undo.remove(id).map(|u| (*id, u)))
            .collect();
        self.dirty.retain(|id| !ids.contains(id));
        self.out.retain(|o| !ids.contains(&o.session()));
        let counters = &mut self.counters;
        self.events.retain(|ev| {
            let drop = match ev {
                EventRecord::StateChange { session_id, .. } => ids.contains(&session_id.0),
                EventRecord::TransportSwitch {
                    session_id, old, ..
                } => {
                    let d = ids.contains(&session_id.0);
                    if d && old.is_some() {
                        unbump(&mut counters.reattach, "success");
                    }
                    d
                }
                EventRecord::TransportSwitchDenied {
                    session_id, detail, ..
                } => {
                    let d = ids.contains(&session_id.0);
                    if d {
                        unbump(&mut counters.reattach, detail.name());
                    }
                    d
                }
                EventRecord::OwnershipChange { session_id, .. } => ids.contains(&session_id.0),
                EventRecord::SecurityEvent { .. }
                | EventRecord::SecuritySummary { .. }
                | EventRecord::EventsSuppressed { .. }
                | EventRecord::TransportHealth { .. }
                | EventRecord::ControllerStarted { .. } => false,
            };
            !drop
        });
        let mut r = RolledBack::default();
        for id in ids {
            let u = undo.remove(&id).expect("checked above");
            if u.session.state == State::Birth {
                // Its last handshake step (ESTABLISHED) could not be made durable.
                unbump(&mut self.counters.handshakes, "established");
                bump(&mut self.counters.handshakes, detail.name());
                if let Some(e) = self.sessions.get_mut(&id) {
                    e.rev = 0;
                }
                self.teardown(id, now_ms);
                r.handshakes += 1;
                continue;
            }
            if let Some(e) = self.torn.remove(&id) {
                // Ended by this batch: its address was never released; its REVOKE
                // never left (dropped above), and the exit gets its keys again in
                // case an INSTALL of it was still pending.
                self.link.forget(id);
                let install = self.install_msg(id, &e);
                self.sessions.insert(id, e);
                self.send_link(id, install, now_ms);
            }
            let Some(mut e) = self.sessions.remove(&id) else {
                continue;
            };
            e.session = u.session;
            e.local = u.local;
            self.restore_map_entry(&e);
            self.sessions.insert(id, e);
            r.sessions += 1;
            if let Some((local, candidate)) = u.request {
                self.send_control(id, local, candidate, Body::denied(detail));
                self.note_denied(id, candidate, detail, now_ms);
                r.reattaches += 1;
            }
            if self
                .cluster
                .as_ref()
                .is_some_and(|c| c.adopted.contains(&id))
            {
                // A takeover that did not happen: the session is another node's
                // (or no one's) as before.
                self.return_adopted(id);
            }
        }
        Ok(r)
    }
}
