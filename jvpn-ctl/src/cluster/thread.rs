//! The etcd client thread of a [`super::Cluster`]: its own current-thread runtime,
//! the lease keeper, the watch, and the requests of the gateway's loop.

use std::{
    sync::{Arc, Mutex, mpsc as std_mpsc},
    thread,
    time::{Duration, Instant},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, KvClient,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    Change, LeaseView, NodeInfo, Op as Write, Outcome, Owner, Snapshot, Stored, health,
    keys::{Key, Keys, owner_value, parse_owner_value},
};
use crate::store::{
    StoreError,
    etcd::{
        Answer, MAX_ANSWER_BYTES, ReadError, answer, answer_paced, describe, prefix_end,
        read_prefix, revision, until_sent,
    },
};

#[derive(Clone, Debug)]
pub(super) struct Config {
    pub endpoints: Vec<String>,
    pub shown: String,
    pub keys: Keys,
    pub node: u16,
    pub ttl: Duration,
    pub timeout: Duration,
    pub about: String,
    /// What this node last heard from etcd (`jvpn-ctl cluster status`).
    pub health: health::Shared,
}

impl Config {
    pub fn error(&self, what: &'static str, cause: String) -> StoreError {
        StoreError::Etcd {
            endpoints: self.shown.clone(),
            what,
            cause,
        }
    }

    pub fn timeout_error(&self, what: &'static str) -> StoreError {
        StoreError::EtcdTimeout {
            endpoints: self.shown.clone(),
            what,
            after: self.timeout,
        }
    }
}

pub(super) enum Op {
    Snapshot(Answer<Snapshot>),
    Get(u64, Answer<Stored>),
    Commit(Vec<Write>, Answer<Vec<Outcome>>),
    Watch(i64, mpsc::UnboundedSender<Change>, Answer<()>),
    Resign(Answer<()>),
}

impl Op {
    /// The snapshot reads as many pages as there are records, each within the
    /// timeout (`store::etcd::read_prefix`), not all of them within one.
    pub fn paced(&self) -> bool {
        matches!(self, Op::Snapshot(_))
    }

    pub fn what(&self) -> &'static str {
        match self {
            Op::Snapshot(_) => "reading the cluster's sessions",
            Op::Get(..) => "reading a session",
            Op::Commit(..) => "committing",
            Op::Watch(..) => "watching the cluster",
            Op::Resign(_) => "ending the node's lease",
        }
    }
}

pub(super) struct Request {
    pub op: Op,
    pub deadline: Instant,
}

pub(super) fn spawn(
    config: Config,
    lease: Arc<Mutex<LeaseView>>,
) -> Result<mpsc::UnboundedSender<Request>, StoreError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
    let c = config.clone();
    thread::Builder::new()
        .name("etcd-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(c.error("starting the runtime", e.to_string())));
                    return;
                }
            };
            let options = ConnectOptions::new()
                .with_require_leader(true)
                .with_connect_timeout(c.timeout);
            let client = match rt.block_on(Client::connect(&c.endpoints, Some(options))) {
                Ok(cl) => cl,
                Err(e) => {
                    let _ = ready_tx.send(Err(c.error("connecting", describe(&e))));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.spawn(super::lease::keep(client.clone(), c.clone(), lease.clone()));
            rt.block_on(
                Server {
                    client,
                    config: c,
                    lease,
                }
                .serve(rx),
            );
        })
        .map_err(|e| config.error("starting the etcd client thread", e.to_string()))?;
    match ready_rx.recv_timeout(config.timeout + crate::store::etcd::GRACE) {
        Ok(Ok(())) => Ok(tx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(config.timeout_error("starting the etcd client thread")),
    }
}

struct Server {
    client: Client,
    config: Config,
    lease: Arc<Mutex<LeaseView>>,
}

impl Server {
    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    async fn serve(self, mut requests: mpsc::UnboundedReceiver<Request>) {
        while let Some(Request { op, deadline }) = requests.recv().await {
            let late = self.config.timeout_error(op.what());
            match op {
                Op::Snapshot(to) => answer_paced(to, deadline, late, self.snapshot()).await,
                Op::Get(id, to) => answer(to, deadline, late, self.get(id)).await,
                Op::Commit(ops, to) => {
                    let outcomes = self.commit(ops, deadline).await;
                    let _ = to.try_send(Ok(outcomes));
                }
                Op::Watch(rev, tx, to) => {
                    tokio::spawn(watch(self.client.clone(), self.config.clone(), rev, tx));
                    let _ = to.try_send(Ok(()));
                }
                Op::Resign(to) => answer(to, deadline, late, self.resign()).await,
            }
        }
    }

    async fn range(&self, prefix: &str, at: i64) -> Result<(i64, Vec<KeyValue>), StoreError> {
        const W: &str = "reading the cluster's sessions";
        read_prefix(&self.kv(), prefix, at, self.config.timeout)
            .await
            .map_err(|e| match e {
                ReadError::Etcd(e) => self.config.error(W, describe(&e)),
                ReadError::PageTimeout => self.config.timeout_error(W),
            })
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let (rev, kvs) = self.range(&self.config.keys.sessions(), 0).await?;
        let (_, node_kvs) = self.range(&self.config.keys.nodes(), rev).await?;
        let mut s = Snapshot {
            revision: rev,
            ..Default::default()
        };
        for kv in kvs.iter().chain(&node_kvs) {
            match self.config.keys.parse(kv.key()) {
                Some(Key::Record(id)) => {
                    let r = revision(kv.mod_revision()).unwrap_or(0);
                    s.sessions.entry(id).or_default().record = Some((r, kv.value().to_vec()));
                }
                Some(Key::Owner(id)) => {
                    s.sessions.entry(id).or_default().owner = owner_of(kv);
                }
                Some(Key::Node(node)) => s.nodes.push(NodeInfo {
                    node,
                    lease: kv.lease(),
                    about: String::from_utf8_lossy(kv.value()).into_owned(),
                }),
                None => {}
            }
        }
        Ok(s)
    }

    async fn get(&self, id: u64) -> Result<Stored, StoreError> {
        let keys = &self.config.keys;
        let txn = Txn::new().and_then([
            TxnOp::get(keys.owner(id), None),
            TxnOp::get(keys.record(id), None),
        ]);
        let kv = self.kv();
        let resp = until_sent(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.config.error("reading a session", describe(&e)))?;
        Ok(self.stored(resp.op_responses()))
    }

    fn stored(&self, ops: Vec<TxnOpResponse>) -> Stored {
        let mut s = Stored::default();
        for op in ops {
            if let TxnOpResponse::Get(g) = op {
                for kv in g.kvs() {
                    match self.config.keys.parse(kv.key()) {
                        Some(Key::Owner(_)) => s.owner = owner_of(kv),
                        Some(Key::Record(_)) => {
                            s.record = Some((
                                revision(kv.mod_revision()).unwrap_or(0),
                                kv.value().to_vec(),
                            ))
                        }
                        _ => {}
                    }
                }
            }
        }
        s
    }

    async fn commit(&self, ops: Vec<Write>, deadline: Instant) -> Vec<Outcome> {
        let lease = self
            .lease
            .lock()
            .expect("lease state")
            .valid_at(Instant::now());
        let mut set = tokio::task::JoinSet::new();
        for (i, op) in ops.into_iter().enumerate() {
            let kv = self.kv();
            let config = self.config.clone();
            set.spawn(async move {
                let late = config.timeout_error("committing");
                let run = one(kv, &config, op, lease);
                let out = match tokio::time::timeout_at(deadline.into(), run).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Failed(late),
                };
                (i, out)
            });
        }
        let mut out: Vec<Option<Outcome>> = (0..set.len()).map(|_| None).collect();
        while let Some(r) = set.join_next().await {
            if let Ok((i, o)) = r {
                out[i] = Some(o);
            }
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Failed(
                        self.config
                            .error("committing", "the write's task failed".into()),
                    )
                })
            })
            .collect()
    }

    async fn resign(&self) -> Result<(), StoreError> {
        let id = self.lease.lock().expect("lease state").id;
        if id == 0 {
            return Ok(());
        }
        let mut c = self.client.clone();
        c.lease_revoke(id)
            .await
            .map_err(|e| self.config.error("ending the node's lease", describe(&e)))?;
        let mut v = self.lease.lock().expect("lease state");
        v.id = 0;
        v.until = None;
        Ok(())
    }
}

fn owner_of(kv: &KeyValue) -> Option<Owner> {
    Some(Owner {
        node: parse_owner_value(kv.value())?,
        epoch: revision(kv.create_revision())?,
        lease: kv.lease(),
    })
}

fn i64_of(r: u64) -> i64 {
    // No etcd revision is above i64::MAX: such a value can only fail to compare.
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// One op as one transaction.
async fn one(kv: KvClient, config: &Config, op: Write, lease: Option<i64>) -> Outcome {
    let keys = &config.keys;
    let id = op.id();
    let (owner_k, record_k) = (keys.owner(id), keys.record(id));
    let mine = |lease: i64| {
        TxnOp::put(
            owner_k.as_str(),
            owner_value(config.node),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    let needs_lease = matches!(
        op,
        Write::Put { epoch: 0, .. } | Write::Claim { .. } | Write::Acquire { .. }
    );
    let lease = match (needs_lease, lease) {
        (true, None) => {
            return Outcome::Failed(config.error(
                "committing",
                "this node holds no live lease (etcd unreachable, or the lease is being renewed)"
                    .into(),
            ));
        }
        (_, l) => l.unwrap_or(0),
    };
    let owner_is =
        |epoch: u64| Compare::create_revision(owner_k.as_str(), CompareOp::Equal, i64_of(epoch));
    let record_at =
        |rev: u64| Compare::mod_revision(record_k.as_str(), CompareOp::Equal, i64_of(rev));
    // `held`: the epoch the writer owns the session with (None: it acquires it).
    let (when, then, held, writes_record) = match &op {
        Write::Put {
            expect,
            value,
            epoch,
            ..
        } => {
            let mut then = vec![TxnOp::put(record_k.as_str(), value.clone(), None)];
            if *epoch == 0 {
                then.push(mine(lease));
            }
            (
                vec![owner_is(*epoch), record_at(*expect)],
                then,
                (*epoch != 0).then_some(*epoch),
                true,
            )
        }
        Write::Delete { expect, epoch, .. } => (
            vec![owner_is(*epoch), record_at(*expect)],
            vec![
                TxnOp::delete(record_k.as_str(), None),
                TxnOp::delete(owner_k.as_str(), None),
            ],
            Some(*epoch),
            true,
        ),
        Write::Claim { epoch, .. } => (
            vec![owner_is(*epoch)],
            vec![mine(lease)],
            Some(*epoch),
            false,
        ),
        Write::Acquire { expect, .. } => (
            vec![owner_is(0), record_at(*expect)],
            vec![mine(lease)],
            None,
            false,
        ),
    };
    let txn = Txn::new().when(when).and_then(then).or_else([
        TxnOp::get(owner_k.as_str(), None),
        TxnOp::get(record_k.as_str(), Some(GetOptions::new().with_keys_only())),
    ]);
    let sent = until_sent(|| {
        let (mut kv, txn) = (kv.clone(), txn.clone());
        async move { kv.txn(txn).await }
    })
    .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            health::failed(&config.health, format!("committing: {}", describe(&e)));
            return Outcome::Failed(config.error("committing", describe(&e)));
        }
    };
    health::answered(&config.health, resp.header());
    let rev = resp
        .header()
        .and_then(|h| revision(h.revision()))
        .unwrap_or(0);
    if resp.succeeded() {
        // Acquired: the new owner key's create revision is this transaction's.
        let epoch = held.unwrap_or(rev);
        let rev = match op {
            Write::Delete { .. } => Some(0),
            _ if writes_record => Some(rev),
            _ => None,
        };
        return Outcome::Done { rev, epoch };
    }
    let mut owner = None;
    let mut rec = 0;
    for r in resp.op_responses() {
        if let TxnOpResponse::Get(g) = r {
            for kv in g.kvs() {
                match keys.parse(kv.key()) {
                    Some(Key::Owner(_)) => owner = owner_of(kv),
                    Some(Key::Record(_)) => rec = revision(kv.mod_revision()).unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    Outcome::Lost { owner, rev: rec }
}

/// Streams changes after `rev` until `to` closes; starts again from the last
/// revision seen when the stream breaks, and sends [`Change::Resync`] when etcd
/// no longer has the changes in between.
async fn watch(client: Client, config: Config, rev: i64, to: mpsc::UnboundedSender<Change>) {
    let mut next = rev + 1;
    let root = config.keys.root().to_owned();
    while !to.is_closed() {
        let mut w = client.watch_client();
        let options = WatchOptions::new()
            .with_range(prefix_end(root.as_bytes()))
            .with_start_revision(next);
        let mut stream = match w.watch(root.as_str(), Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                health::failed(
                    &config.health,
                    format!("opening the watch: {}", describe(&e)),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                () = to.closed() => return,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                cut => {
                    let why = match cut {
                        Err(e) => describe(&e),
                        _ => "the stream ended".into(),
                    };
                    health::failed(&config.health, format!("watch: {why}"));
                    break;
                }
            };
            health::answered(&config.health, resp.header());
            if resp.canceled() || resp.compact_revision() > 0 {
                if resp.compact_revision() > 0 {
                    // The changes since `next` are gone: start over from a snapshot,
                    // whose revision the gateway hands to a new watch.
                    let _ = to.send(Change::Resync);
                    return;
                }
                break;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                next = next.max(kv.mod_revision() + 1);
                let put = ev.event_type() == EventType::Put;
                let change = match config.keys.parse(kv.key()) {
                    Some(Key::Record(id)) => Change::Record {
                        id,
                        record: put.then(|| {
                            (
                                revision(kv.mod_revision()).unwrap_or(0),
                                kv.value().to_vec(),
                            )
                        }),
                    },
                    Some(Key::Owner(id)) => Change::Owner {
                        id,
                        owner: if put { owner_of(kv) } else { None },
                    },
                    Some(Key::Node(node)) => Change::Node { node, up: put },
                    None => continue,
                };
                if to.send(change).is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
