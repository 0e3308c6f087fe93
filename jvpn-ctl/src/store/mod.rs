//! Durable session records: what the gateway controller needs to get its sessions
//! back after a restart (kill -9 included).
//!
//! A record is opaque bytes to this module; the controller serializes a session and
//! seals it ([`seal::Sealer`]) before it is written, because records hold session
//! keys. [`SessionStore`] is the backend-neutral interface: [`local::LocalStore`]
//! keeps the records in one redb file under `state_dir`, [`memory::MemoryStore`] in
//! a `HashMap` for tests and the simulation, and [`etcd::EtcdStore`] in an etcd
//! cluster, where the revisions are etcd's own (not used by the gateway yet).

use std::{collections::HashSet, io, path::PathBuf, time::Duration};

pub mod etcd;
pub mod local;
pub mod memory;
pub mod seal;

#[cfg(test)]
mod contract;

pub use etcd::EtcdStore;
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use seal::{Sealer, StoreKey};

/// The revision of a stored record. Revisions come from a store-wide counter that
/// only grows (like etcd's mod revision), so a record that is deleted and created
/// again never gets back a revision it had. 0 never appears as a record's revision:
/// in a [`Write`] it means "absent".
pub type Revision = u64;

/// One write of a batch; `expect` is the revision the record must have now for the
/// batch to go through (0: the record must not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put {
        id: u64,
        expect: Revision,
        value: Vec<u8>,
    },
    /// Deleting an absent record with `expect: 0` succeeds and does nothing, as an
    /// etcd transaction comparing mod revision 0 and deleting would.
    Delete { id: u64, expect: Revision },
}

impl Write {
    pub fn id(&self) -> u64 {
        match *self {
            Write::Put { id, .. } | Write::Delete { id, .. } => id,
        }
    }

    pub fn expect(&self) -> Revision {
        match *self {
            Write::Put { expect, .. } | Write::Delete { expect, .. } => expect,
        }
    }
}

pub trait SessionStore {
    /// Every record: (id, revision, sealed bytes), any order.
    fn list(&self) -> Result<Vec<(u64, Revision, Vec<u8>)>, StoreError>;

    fn get(&self, id: u64) -> Result<Option<(Revision, Vec<u8>)>, StoreError>;

    /// One atomic, durable batch (a group commit): every write's `expect` must match
    /// the current revision (0 = absent), else nothing is written and
    /// [`StoreError::Conflict`] names the first write that did not match. On success
    /// returns the new revision of each Put, in order (Delete: 0), and the batch is
    /// durable (fsync'd) when this returns.
    ///
    /// The whole batch is one revision, as an etcd transaction is: every Put of it
    /// gets the same, new, revision. An id may therefore appear only once in a batch
    /// ([`StoreError::DuplicateId`]): the caller coalesces a session's changes into
    /// its last one. An empty batch writes nothing and returns no revisions.
    fn apply(&mut self, batch: &[Write]) -> Result<Vec<Revision>, StoreError>;

    /// After [`SessionStore::apply`] failed with an I/O error: makes the store usable
    /// again (a file backend opens its file anew), so that [`SessionStore::get`] can
    /// tell whether the failed batch was written after all (a failed fsync leaves
    /// that open) and later batches can be tried.
    fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes one [`SessionStore::apply`] may carry (etcd servers refuse larger
    /// transactions); a caller splits a larger group commit.
    fn max_batch(&self) -> usize {
        usize::MAX
    }

    /// What to call this store in messages: its file, or its servers and prefix.
    fn describe(&self) -> String;
}

/// Everything that can go wrong in the session store. Each variant names the file,
/// directory or record and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state directory {0} does not exist: create it (owned by the user jvpn-ctl runs as, \
         mode 0700) or point state_dir at an existing directory"
    )]
    NoStateDir(PathBuf),

    #[error("state directory {0} is not a directory: point state_dir at a directory")]
    NotADirectory(PathBuf),

    #[error(
        "state directory {dir} is not writable ({cause}): jvpn-ctl keeps its sessions there; \
         make it writable by the user jvpn-ctl runs as, or point state_dir elsewhere"
    )]
    NotWritable { dir: PathBuf, cause: io::Error },

    #[error(
        "{path} is open in another process (redb allows one writer per file): another \
         jvpn-ctl is running on this state_dir; stop it first"
    )]
    Locked { path: PathBuf },

    #[error("{path} is not a jvpn session store ({detail}); move it aside if it is not needed")]
    NotAStore { path: PathBuf, detail: String },

    #[error(
        "{path} is corrupt ({detail}): restore it from a backup, or move it aside to start \
         with no sessions (clients then handshake again)"
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "{path} has format_version {found}, this jvpn-ctl reads only format_version \
         {supported}: run the jvpn-ctl that wrote it, or move the file aside"
    )]
    FormatVersion {
        path: PathBuf,
        found: u64,
        supported: u64,
    },

    /// Boxed: redb's error is large, and every `Result` of this module carries it.
    #[error("{path}: {what}: {cause}")]
    Db {
        path: PathBuf,
        what: &'static str,
        cause: Box<redb::Error>,
    },

    #[error("session {id:#018x}: expected revision {expected}, found {found} (0: absent)")]
    Conflict {
        id: u64,
        expected: Revision,
        found: Revision,
    },

    #[error("session {0:#018x} appears more than once in one batch")]
    DuplicateId(u64),

    #[error(
        "session record {id:#018x} does not authenticate: sealed with another key, altered, \
         truncated or moved from another id"
    )]
    Unsealed { id: u64 },

    #[error(
        "key file {path} is readable or writable by group or others (mode {mode:03o}): \
         run `chmod 600 {path}`"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },

    #[error(
        "key file {path} is malformed ({detail}): it must hold 64 lowercase hex characters \
         and a newline"
    )]
    BadKey { path: PathBuf, detail: String },

    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },

    #[error("etcd at {endpoints}: {what}: {cause}")]
    Etcd {
        endpoints: String,
        what: &'static str,
        cause: String,
    },

    /// Unreachable, stopped, or without a leader that answers. A batch that timed out
    /// may have been applied all the same (etcd had it, the answer was lost), or may
    /// still be: queued at a stopped etcd, it can land after a read that missed it.
    #[error(
        "etcd at {endpoints}: {what}: no answer within {after:?}: check that etcd runs there \
         and has a leader (a batch that timed out may still be applied, even after it is \
         read back: retry only with the revisions read, which etcd then refuses)"
    )]
    EtcdTimeout {
        endpoints: String,
        what: &'static str,
        after: Duration,
    },

    /// etcd refused the transaction for its size; nothing was written.
    #[error(
        "etcd at {endpoints}: a batch of {writes} writes is over the server's limits ({cause}): \
         start every member with --max-txn-ops of at least {writes} (default 128) and a \
         --max-request-bytes above the batch's size (default 1.5 MiB)"
    )]
    EtcdBatchTooLarge {
        endpoints: String,
        writes: usize,
        cause: String,
    },
}

/// The checks every backend makes before writing a batch, so that they agree on
/// which error a bad batch gets: a repeated id first, then the first write whose
/// `expect` differs from `current(id)` (0 for an absent record).
pub(crate) fn check_batch(
    batch: &[Write],
    mut current: impl FnMut(u64) -> Result<Revision, StoreError>,
) -> Result<(), StoreError> {
    let mut seen = HashSet::with_capacity(batch.len());
    for w in batch {
        if !seen.insert(w.id()) {
            return Err(StoreError::DuplicateId(w.id()));
        }
    }
    for w in batch {
        let found = current(w.id())?;
        if found != w.expect() {
            return Err(StoreError::Conflict {
                id: w.id(),
                expected: w.expect(),
                found,
            });
        }
    }
    Ok(())
}
