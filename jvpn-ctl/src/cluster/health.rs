//! What this node last heard from etcd, for `jvpn-ctl cluster status`: noted by the
//! lease keeper, the watch and the commits as they go. Reading it asks etcd nothing.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use etcd_client::ResponseHeader;

/// etcd as this node last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// When etcd last answered (a lease grant or keep-alive, a commit, a watch
    /// message). The client requires a leader, so an answer means etcd had one.
    pub last_answer: Option<Instant>,
    /// The last failure: when, and what was being done.
    pub last_error: Option<(Instant, String)>,
    /// The highest revision in an answer's header (0: none seen yet).
    pub revision: i64,
    /// The member that sent the last answer, and its raft term (a new term: a new
    /// leader was elected).
    pub member_id: u64,
    pub raft_term: u64,
}

/// The health record the client thread's tasks share.
pub(super) type Shared = Arc<Mutex<Health>>;

pub(super) fn answered(h: &Shared, header: Option<&ResponseHeader>) {
    let mut h = h.lock().expect("etcd health");
    h.last_answer = Some(Instant::now());
    if let Some(hd) = header {
        h.revision = h.revision.max(hd.revision());
        h.member_id = hd.member_id();
        h.raft_term = hd.raft_term();
    }
}

pub(super) fn failed(h: &Shared, what: String) {
    h.lock().expect("etcd health").last_error = Some((Instant::now(), what));
}
