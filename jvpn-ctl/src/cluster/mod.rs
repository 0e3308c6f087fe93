//! Cluster ownership on etcd: several gateway nodes share the sessions, each session
//! has exactly one owner node at a time, and every write says which owner it is
//! from (a fencing token), so a node that lost a session can never write it again.
//!
//! Layout under the cluster's root (default `/jvpn/v1/`), after etcd's
//! `concurrency` package:
//!
//! * `nodes/<node>`: the node's announcement, on its lease (kept alive by
//!   [`lease`]): present while the node is alive.
//! * `sessions/<id>/owner`: the owner's node number, on the owner's lease. Its create
//!   revision is the session's **epoch**: it only grows (a new owner creates the key
//!   anew after the old one's lease deleted it), and it is the token the exit
//!   checks (`docs/protocol.md`, "Fencing at the exit").
//! * `sessions/<id>/record`: the sealed session record (as [`crate::store`]), on no
//!   lease, written only in a transaction that also compares the owner key's create
//!   revision with the writer's epoch.
//!
//! [`Cluster`] is synchronous, like [`crate::store::EtcdStore`]: its client runs on
//! a thread of its own, and the gateway's loop hands it requests with a deadline.

use std::{
    fmt,
    sync::{Arc, Mutex, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::store::{Revision, StoreError};

mod health;
mod keys;
pub mod lease;
mod thread;

pub use health::Health;
pub use keys::{Key, Keys, parse_owner_value};
pub use lease::LeaseView;

pub const DEFAULT_ROOT: &str = "/jvpn/v1/";
/// The lease's time to live: how long a dead node's sessions stay its own. A
/// takeover waits for it (and etcd extends leases on a leader change, so it may
/// take longer, never less).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// A session's owner as etcd holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: u16,
    /// The owner key's create revision: the fencing token.
    pub epoch: u64,
    pub lease: i64,
}

/// One session as the cluster stores it; either half may be absent (a record whose
/// owner's lease ran out has no owner; an owner key with no record is a takeover
/// that has not written yet, which a transaction never leaves behind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub record: Option<(Revision, Vec<u8>)>,
    pub owner: Option<Owner>,
}

/// A node's announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: u16,
    pub lease: i64,
    /// What the node wrote about itself (its addresses and pool, as text).
    pub about: String,
}

/// Everything under the root at one revision: the start of a watch.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub sessions: std::collections::BTreeMap<u64, Stored>,
    pub nodes: Vec<NodeInfo>,
}

/// A change the watch saw, in etcd's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Record {
        id: u64,
        /// `None`: deleted.
        record: Option<(Revision, Vec<u8>)>,
    },
    Owner {
        id: u64,
        /// `None`: deleted (released, ended, or its lease ran out).
        owner: Option<Owner>,
    },
    Node {
        node: u16,
        up: bool,
    },
    /// The watch broke off and changes may have been missed (etcd compacted past
    /// them, or the stream was cut): take a new [`Cluster::snapshot`].
    Resync,
}

/// One session's write; each is its own transaction, so one lost session does not
/// refuse the others of a group commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes the record. `epoch` > 0: the writer owns the session with that epoch
    /// (the owner key must still have that create revision). `epoch` = 0: the
    /// session must have no owner, and the writer becomes it (a takeover, or a new
    /// session): the new owner key's create revision is the new epoch.
    Put {
        id: u64,
        expect: Revision,
        value: Vec<u8>,
        epoch: u64,
    },
    /// Deletes the record and the owner key (the session ended), owner as `Put`.
    Delete {
        id: u64,
        expect: Revision,
        epoch: u64,
    },
    /// Moves this node's owner key of `epoch` onto its current lease (a restart of
    /// the same node, whose old lease has not run out yet): the epoch stays.
    Claim { id: u64, epoch: u64 },
    /// Becomes the owner of a session that has none, its record unchanged at
    /// `expect` (this node's lease ran out and it got a new one): a new epoch.
    Acquire { id: u64, expect: Revision },
}

impl Op {
    pub fn id(&self) -> u64 {
        match *self {
            Op::Put { id, .. } | Op::Delete { id, .. } | Op::Claim { id, .. } => id,
            Op::Acquire { id, .. } => id,
        }
    }
}

/// How one [`Op`] ended.
#[derive(Debug)]
pub enum Outcome {
    /// Written: the record's revision now (0 if deleted; unchanged for `Claim` and
    /// `Acquire`: `None`) and the writer's epoch.
    Done { rev: Option<Revision>, epoch: u64 },
    /// Not written: the session is not this writer's (another owner, or none when
    /// one was expected), or its record is not at the expected revision. What etcd
    /// holds, read in the same transaction.
    Lost { owner: Option<Owner>, rev: Revision },
    /// No answer, or an error: the write may or may not have been applied.
    Failed(StoreError),
}

/// A node's handle on the cluster.
pub struct Cluster {
    requests: mpsc::UnboundedSender<thread::Request>,
    config: thread::Config,
    lease: Arc<Mutex<LeaseView>>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.config.shown)
            .field("root", &self.config.keys.root())
            .field("node", &self.config.node)
            .finish_non_exhaustive()
    }
}

/// What a node needs to join.
#[derive(Clone, Debug)]
pub struct JoinParams {
    pub endpoints: Vec<String>,
    pub root: String,
    pub node: u16,
    pub ttl: Duration,
    /// The limit of every request.
    pub timeout: Duration,
    /// The node's announcement (`nodes/<node>`).
    pub about: String,
}

impl Cluster {
    /// Connects, checks that the cluster answers, and starts keeping a lease (the
    /// first is granted before this returns, and the node announced on it).
    pub fn join(p: JoinParams) -> Result<Self, StoreError> {
        if p.endpoints.is_empty() {
            return Err(StoreError::Etcd {
                endpoints: String::new(),
                what: "joining the cluster",
                cause: "no endpoints given".into(),
            });
        }
        let config = thread::Config {
            shown: p.endpoints.join(","),
            endpoints: p.endpoints,
            keys: Keys::new(&p.root),
            node: p.node,
            ttl: p.ttl,
            timeout: p.timeout,
            about: p.about,
            health: Default::default(),
        };
        let lease = Arc::new(Mutex::new(LeaseView::default()));
        let requests = thread::spawn(config.clone(), lease.clone())?;
        let c = Self {
            requests,
            config,
            lease,
        };
        // The keeper retries a grant that timed out; a start waits for one for up to
        // the lease's TTL (at least one request timeout), so that one slow answer from
        // a busy etcd does not stop the node: the cluster lab's 500 ms limit was
        // missed now and then on a loaded machine and the node exited at start.
        let wait = c.config.ttl.max(c.config.timeout);
        let deadline = Instant::now() + wait;
        while c.lease().valid_at(Instant::now()).is_none() {
            if Instant::now() > deadline {
                return Err(StoreError::EtcdTimeout {
                    endpoints: c.config.shown.clone(),
                    what: "granting this node's lease",
                    after: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(c)
    }

    pub fn node(&self) -> u16 {
        self.config.node
    }

    pub fn endpoints(&self) -> &str {
        &self.config.shown
    }

    /// The endpoints one by one, as configured.
    pub fn endpoint_list(&self) -> &[String] {
        &self.config.endpoints
    }

    pub fn root(&self) -> &str {
        self.config.keys.root()
    }

    /// The lease's time to live, as granted.
    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    /// What this node last heard from etcd (asks etcd nothing).
    pub fn health(&self) -> Health {
        self.config.health.lock().expect("etcd health").clone()
    }

    pub fn describe(&self) -> String {
        format!("etcd {} {}", self.config.shown, self.config.keys.root())
    }

    /// The lease as of now (kept alive on the client thread).
    pub fn lease(&self) -> LeaseView {
        *self.lease.lock().expect("lease state")
    }

    /// Every session and node at one revision.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.call(thread::Op::Snapshot)
    }

    /// Streams the changes after `revision` (a snapshot's) into `to`, until the
    /// cluster handle is dropped. A broken watch is started again by itself, from
    /// where it was; [`Change::Resync`] says it could not be.
    pub fn watch(
        &self,
        revision: i64,
        to: mpsc::UnboundedSender<Change>,
    ) -> Result<(), StoreError> {
        self.call(|a| thread::Op::Watch(revision, to, a))
    }

    /// Writes each op in its own transaction, all at once; the outcomes in order.
    pub fn commit(&self, ops: Vec<Op>) -> Vec<Outcome> {
        let n = ops.len();
        if n == 0 {
            return Vec::new();
        }
        match self.call(|a| thread::Op::Commit(ops, a)) {
            Ok(v) => v,
            Err(e) => {
                // The thread did not answer at all: every op is in doubt.
                let text = e.to_string();
                (0..n)
                    .map(|_| {
                        Outcome::Failed(StoreError::Etcd {
                            endpoints: self.config.shown.clone(),
                            what: "committing",
                            cause: text.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    /// Reads one session (owner and record), linearizably.
    pub fn get(&self, id: u64) -> Result<Stored, StoreError> {
        self.call(|a| thread::Op::Get(id, a))
    }

    /// Ends this node's lease at once (a clean stop): its sessions are free for
    /// other nodes without waiting for the TTL.
    pub fn resign(&self) -> Result<(), StoreError> {
        self.call(thread::Op::Resign)
    }

    fn call<T>(
        &self,
        op: impl FnOnce(crate::store::etcd::Answer<T>) -> thread::Op,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        let deadline = Instant::now() + self.config.timeout;
        let op = op(tx);
        let (what, paced) = (op.what(), op.paced());
        let gone = || {
            self.config
                .error(what, "the etcd client thread has stopped".into())
        };
        if self
            .requests
            .send(thread::Request { op, deadline })
            .is_err()
        {
            return Err(gone());
        }
        use crate::store::etcd::{Waited, wait};
        match wait(&rx, deadline, paced) {
            Waited::Answer(answer) => answer,
            Waited::TimedOut => Err(self.config.timeout_error(what)),
            Waited::Gone => Err(gone()),
        }
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
