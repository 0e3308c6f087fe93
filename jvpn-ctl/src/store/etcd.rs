//! A [`SessionStore`] in etcd, which gateways of a cluster can share (the groundwork
//! for cluster ownership; nothing uses it yet).
//!
//! Layout: session `id`'s record is the key `<prefix><id as 16 lowercase hex>/record`
//! (the default prefix [`DEFAULT_PREFIX`]), its value the sealed bytes. Other keys
//! under the prefix, such as a later `<id>/owner`, are not records and are skipped.
//! A record's [`Revision`] is the key's `mod_revision`: etcd's store-wide revision,
//! which only grows, and an absent key compares as mod revision 0, which is what
//! `expect: 0` means. A batch is one etcd transaction: `ModRevision(key) == expect`
//! for every write, then its puts and deletes, else (nothing written) a read of
//! every key so the error can name the first write that did not match.
//!
//! etcd-client is async; [`SessionStore`] is not, and its callers may run inside a
//! tokio runtime (the gateway's loop), where blocking on a future is not allowed.
//! So the client lives on a thread of its own, with its own current-thread runtime,
//! and each call hands it a request and waits for the answer until a deadline.

use std::{
    collections::HashMap,
    fmt,
    sync::mpsc as std_mpsc,
    thread,
    time::{Duration, Instant},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use tokio::sync::mpsc;

use super::{Revision, SessionStore, StoreError, Write, check_batch};

pub const DEFAULT_PREFIX: &str = "/jvpn/v1/sessions/";

/// How long one request may take. A reattach waits for its write: an unreachable
/// cluster must turn into an error it can act on, well within a client's patience.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Records per page when listing: each page is one bounded answer, all pages are read
/// at the revision of the first, so the list is one consistent snapshot.
const PAGE: i64 = 500;

/// gRPC refuses answers above 4 MiB by default; a page of [`PAGE`] records of up to
/// 128 KiB each (records are ~300 bytes) must fit.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How much longer than the client thread's own deadline a caller waits for its
/// answer: the thread answers a late request with a timeout itself, and the caller's
/// deadline only catches a thread that is stuck or gone.
pub(crate) const GRACE: Duration = Duration::from_millis(500);

const RECORD: &str = "/record";

pub struct EtcdStore {
    requests: mpsc::UnboundedSender<Request>,
    config: Config,
    max_batch: usize,
}

/// etcd's default `--max-txn-ops`: operations one transaction may hold.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// What a client thread needs to (re)connect and to name the cluster in errors.
#[derive(Clone)]
struct Config {
    endpoints: Vec<String>,
    /// The endpoints as errors name them.
    shown: String,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.shown)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// A request to the client thread; its answer goes back on the enclosed sender.
enum Op {
    Ping(Answer<()>),
    List(Answer<Vec<(u64, Revision, Vec<u8>)>>),
    Get(u64, Answer<Option<(Revision, Vec<u8>)>>),
    Apply(Vec<Write>, Answer<Vec<Revision>>),
}

impl Op {
    /// A listing reads as many pages as there are records: its timeout is per page
    /// (see [`read_prefix`]), not for the whole, which a store of 100,000 sessions on
    /// a slow machine outlasted (2 s), so that the gateway could not start.
    fn paced(&self) -> bool {
        matches!(self, Op::List(_))
    }

    fn what(&self) -> &'static str {
        match self {
            Op::Ping(_) => "connecting",
            Op::List(_) => "listing sessions",
            Op::Get(..) => "reading a session",
            Op::Apply(..) => "applying a batch",
        }
    }
}

pub(crate) type Answer<T> = std_mpsc::SyncSender<Result<T, StoreError>>;

struct Request {
    op: Op,
    /// After it, the request is not sent any more: its caller has been told it
    /// timed out, and a batch must not be applied behind its back.
    deadline: Instant,
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`http://host:port`; no TLS yet),
    /// keeping records under `prefix`, and checks that it answers: a read that needs
    /// a leader, within `timeout` (also the limit of every later request).
    pub fn connect(
        endpoints: &[impl AsRef<str>],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        let config = Config {
            shown: endpoints.join(","),
            endpoints,
            prefix: prefix.to_owned(),
            timeout,
        };
        if config.endpoints.is_empty() {
            return Err(config.error("connecting", "no endpoints given".into()));
        }
        let store = Self {
            requests: spawn_client(config.clone())?,
            config,
            max_batch: DEFAULT_MAX_TXN_OPS,
        };
        store.call(Op::Ping)?;
        Ok(store)
    }

    /// The servers' `--max-txn-ops`, if not etcd's default: group commits are split
    /// into transactions of at most this many writes.
    pub fn with_max_batch(mut self, ops: usize) -> Self {
        self.max_batch = ops.max(1);
        self
    }

    pub fn endpoints(&self) -> &str {
        &self.config.shown
    }

    /// Sends one request to the client thread and waits for its answer.
    fn call<T>(&self, op: impl FnOnce(Answer<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        let deadline = Instant::now() + self.config.timeout;
        let op = op(tx);
        let (what, paced) = (op.what(), op.paced());
        let request = Request { op, deadline };
        if self.requests.send(request).is_err() {
            return Err(self.config.error(what, gone()));
        }
        match wait(&rx, deadline, paced) {
            Waited::Answer(answer) => answer,
            Waited::TimedOut => Err(self.config.timeout_error(what)),
            Waited::Gone => Err(self.config.error(what, gone())),
        }
    }
}

/// What became of a request to a client thread.
pub(crate) enum Waited<T> {
    Answer(Result<T, StoreError>),
    /// No answer by the request's deadline and [`GRACE`].
    TimedOut,
    /// The thread dropped the request: it has stopped.
    Gone,
}

/// Waits for the answer to a request sent with `deadline`; a paced request (one that
/// bounds its own steps) is waited for until the thread answers or stops.
pub(crate) fn wait<T>(
    rx: &std_mpsc::Receiver<Result<T, StoreError>>,
    deadline: Instant,
    paced: bool,
) -> Waited<T> {
    if paced {
        return rx.recv().map_or(Waited::Gone, Waited::Answer);
    }
    let left = (deadline + GRACE).saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(answer) => Waited::Answer(answer),
        Err(std_mpsc::RecvTimeoutError::Timeout) => Waited::TimedOut,
        Err(std_mpsc::RecvTimeoutError::Disconnected) => Waited::Gone,
    }
}

fn gone() -> String {
    "the etcd client thread has stopped (recover() starts a new one)".into()
}

impl SessionStore for EtcdStore {
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn describe(&self) -> String {
        format!("etcd {} {}", self.config.shown, self.config.prefix)
    }

    fn list(&self) -> Result<Vec<(u64, Revision, Vec<u8>)>, StoreError> {
        self.call(Op::List)
    }

    fn get(&self, id: u64) -> Result<Option<(Revision, Vec<u8>)>, StoreError> {
        self.call(|a| Op::Get(id, a))
    }

    fn apply(&mut self, batch: &[Write]) -> Result<Vec<Revision>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Every write is taken to match here, so only the duplicate check can fail:
        // the revisions are compared by etcd, inside the transaction.
        let expected: HashMap<u64, Revision> = batch.iter().map(|w| (w.id(), w.expect())).collect();
        check_batch(batch, |id| {
            Ok(expected.get(&id).copied().unwrap_or_default())
        })?;
        self.call(|a| Op::Apply(batch.to_vec(), a))
    }

    /// The client reconnects by itself once the cluster is back; only a client
    /// thread that has stopped needs replacing.
    fn recover(&mut self) -> Result<(), StoreError> {
        if self.requests.is_closed() {
            self.requests = spawn_client(self.config.clone())?;
        }
        Ok(())
    }
}

impl Config {
    fn error(&self, what: &'static str, cause: String) -> StoreError {
        StoreError::Etcd {
            endpoints: self.shown.clone(),
            what,
            cause,
        }
    }

    fn timeout_error(&self, what: &'static str) -> StoreError {
        StoreError::EtcdTimeout {
            endpoints: self.shown.clone(),
            what,
            after: self.timeout,
        }
    }

    fn etcd_error(&self, what: &'static str, e: etcd_client::Error) -> StoreError {
        self.error(what, describe(&e))
    }

    fn key(&self, id: u64) -> String {
        format!("{}{id:016x}{RECORD}", self.prefix)
    }

    /// The id of a record's key; `None` for other keys under the prefix.
    fn id_of(&self, key: &[u8]) -> Option<u64> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        let hex = rest.strip_suffix(RECORD.as_bytes())?;
        let lower_hex = hex.len() == 16
            && hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if !lower_hex {
            return None;
        }
        u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }
}

/// etcd-client's error, without the gRPC metadata its `Display` adds, and with the
/// root cause a transport error keeps at the end of its source chain (each link
/// repeats the one before it): "Unavailable: tcp connect error: Connection refused".
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    let (head, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) => (
            format!("{:?}: {}", s.code(), s.message()),
            std::error::Error::source(s),
        ),
        e => (e.to_string(), std::error::Error::source(e)),
    };
    let mut root = None;
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    match root {
        Some(root) if !head.ends_with(&root) => format!("{head}: {root}"),
        _ => head,
    }
}

/// Starts the thread that owns the runtime and the client; its requests end when
/// the returned sender (the store) is dropped.
fn spawn_client(config: Config) -> Result<mpsc::UnboundedSender<Request>, StoreError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
    let shown = config.shown.clone();
    let thread_config = config.clone();
    thread::Builder::new()
        .name("etcd-client".into())
        .spawn(move || {
            let connected = ClientThread::start(thread_config);
            match connected {
                Ok((rt, client)) => {
                    let _ = ready_tx.send(Ok(()));
                    rt.block_on(client.serve(rx));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| config.error("starting the etcd client thread", e.to_string()))?;
    // Connecting only builds the channel (connections are made on first use), so
    // this answer comes at once; the deadline is for a thread that fails to start.
    match ready_rx.recv_timeout(config.timeout + GRACE) {
        Ok(Ok(())) => Ok(tx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StoreError::EtcdTimeout {
            endpoints: shown,
            what: "starting the etcd client thread",
            after: config.timeout,
        }),
    }
}

struct ClientThread {
    /// Kept so the channel's set of endpoints stays open; requests go through `kv`.
    _client: Client,
    kv: KvClient,
    config: Config,
}

impl ClientThread {
    fn start(config: Config) -> Result<(tokio::runtime::Runtime, Self), StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| config.error("starting the etcd client's runtime", e.to_string()))?;
        let options = ConnectOptions::new()
            // A member that lost its leader fails the request at once instead of
            // waiting for an election: the caller decides what to do, quickly.
            .with_require_leader(true)
            // No gRPC timeout: the request's own deadline (`answer`) is the one
            // limit, so a late answer is always `EtcdTimeout`.
            .with_connect_timeout(config.timeout);
        let client = rt
            .block_on(Client::connect(&config.endpoints, Some(options)))
            .map_err(|e| config.etcd_error("connecting", e))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_ANSWER_BYTES);
        Ok((
            rt,
            Self {
                _client: client,
                kv,
                config,
            },
        ))
    }

    /// Answers requests one at a time, in order, until the store is dropped.
    async fn serve(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        while let Some(Request { op, deadline }) = requests.recv().await {
            let late = self.config.timeout_error(op.what());
            match op {
                Op::Ping(to) => answer(to, deadline, late, self.ping()).await,
                Op::List(to) => answer_paced(to, deadline, late, self.list()).await,
                Op::Get(id, to) => answer(to, deadline, late, self.get(id)).await,
                Op::Apply(batch, to) => answer(to, deadline, late, self.apply(batch)).await,
            }
        }
    }

    async fn ping(&mut self) -> Result<(), StoreError> {
        // Linearizable (the default): answered only through a leader.
        let options = GetOptions::new()
            .with_prefix()
            .with_count_only()
            .with_limit(1);
        let (kv, prefix) = (self.kv.clone(), self.config.prefix.clone());
        until_sent(|| {
            let (mut kv, prefix, options) = (kv.clone(), prefix.clone(), options.clone());
            async move { kv.get(prefix, Some(options)).await }
        })
        .await
        .map_err(|e| self.config.etcd_error("connecting", e))?;
        Ok(())
    }

    async fn list(&mut self) -> Result<Vec<(u64, Revision, Vec<u8>)>, StoreError> {
        const W: &str = "listing sessions";
        let (_, kvs) = read_prefix(&self.kv, &self.config.prefix, 0, self.config.timeout)
            .await
            .map_err(|e| match e {
                ReadError::Etcd(e) => self.config.etcd_error(W, e),
                ReadError::PageTimeout => self.config.timeout_error(W),
            })?;
        let mut out = Vec::new();
        for kv in kvs {
            if let Some(id) = self.config.id_of(kv.key()) {
                out.push(self.record(id, kv, W)?);
            }
        }
        Ok(out)
    }

    async fn get(&mut self, id: u64) -> Result<Option<(Revision, Vec<u8>)>, StoreError> {
        const W: &str = "reading a session";
        let (kv, key) = (self.kv.clone(), self.config.key(id));
        let mut got = until_sent(|| {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })
        .await
        .map_err(|e| self.config.etcd_error(W, e))?;
        match got.take_kvs().pop() {
            Some(kv) => self.record(id, kv, W).map(|(_, rev, v)| Some((rev, v))),
            None => Ok(None),
        }
    }

    fn record(
        &self,
        id: u64,
        kv: KeyValue,
        what: &'static str,
    ) -> Result<(u64, Revision, Vec<u8>), StoreError> {
        let rev = revision(kv.mod_revision()).ok_or_else(|| {
            self.config.error(
                what,
                format!(
                    "{} has mod revision {}",
                    self.config.key(id),
                    kv.mod_revision()
                ),
            )
        })?;
        let (_, value) = kv.into_key_value();
        Ok((id, rev, value))
    }

    async fn apply(&mut self, batch: Vec<Write>) -> Result<Vec<Revision>, StoreError> {
        const W: &str = "applying a batch";
        let keys: Vec<String> = batch.iter().map(|w| self.config.key(w.id())).collect();
        let kv = self.kv.clone();
        let sent = until_sent(|| {
            let (mut kv, txn) = (kv.clone(), transaction(&batch, &keys));
            async move { kv.txn(txn).await }
        })
        .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Err(self.batch_error(batch.len(), e)),
        };
        if !resp.succeeded() {
            return Err(self.conflict(&batch, &resp));
        }
        let rev = resp
            .header()
            .and_then(|h| revision(h.revision()))
            .ok_or_else(|| {
                self.config
                    .error(W, "etcd's answer carries no revision".into())
            })?;
        Ok(batch
            .iter()
            .map(|w| match w {
                Write::Put { .. } => rev,
                Write::Delete { .. } => 0,
            })
            .collect())
    }

    /// The error of a transaction that did not go through: the first write whose
    /// revision differed, from the reads of the failure branch (made at the same
    /// revision as the comparisons).
    fn conflict(&self, batch: &[Write], resp: &TxnResponse) -> StoreError {
        let mut found = HashMap::with_capacity(batch.len());
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(got) = op {
                for kv in got.kvs() {
                    if let Some(id) = self.config.id_of(kv.key()) {
                        found.insert(id, revision(kv.mod_revision()).unwrap_or(0));
                    }
                }
            }
        }
        match check_batch(batch, |id| Ok(found.get(&id).copied().unwrap_or(0))) {
            Err(e) => e,
            Ok(()) => self.config.error(
                "applying a batch",
                "etcd refused the transaction, yet every record has the expected revision".into(),
            ),
        }
    }

    /// etcd's limits on a transaction (operations, bytes) get their own error: the
    /// fix is in the cluster's configuration, not in the batch.
    fn batch_error(&self, writes: usize, e: etcd_client::Error) -> StoreError {
        let too_large = matches!(&e, etcd_client::Error::GRpcStatus(s)
            if s.message().contains("too many operations") || s.message().contains("too large"));
        if too_large {
            return StoreError::EtcdBatchTooLarge {
                endpoints: self.config.shown.clone(),
                writes,
                cause: describe(&e),
            };
        }
        self.config.etcd_error("applying a batch", e)
    }
}

/// Why a [`read_prefix`] failed.
pub(crate) enum ReadError {
    Etcd(etcd_client::Error),
    /// One page took longer than its timeout.
    PageTimeout,
}

/// Every key under `prefix` at one revision (`at`; 0: the current one, returned),
/// in pages of [`PAGE`] keys, each a bounded answer within `page_timeout`: the whole
/// takes as long as there are pages, and stops when one does not come.
pub(crate) async fn read_prefix(
    kv: &KvClient,
    prefix: &str,
    mut at: i64,
    page_timeout: Duration,
) -> Result<(i64, Vec<KeyValue>), ReadError> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut out = Vec::new();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(at);
        let page = until_sent(|| {
            let (mut kv, from, options) = (kv.clone(), from.clone(), options.clone());
            async move { kv.get(from, Some(options)).await }
        });
        let mut page = tokio::time::timeout(page_timeout, page)
            .await
            .map_err(|_| ReadError::PageTimeout)?
            .map_err(ReadError::Etcd)?;
        if at == 0 {
            at = page.header().map_or(0, |h| h.revision());
        }
        let more = page.more();
        let kvs = page.take_kvs();
        if let Some(last) = kvs.last() {
            // The smallest key after the last one.
            from = [last.key(), b"\0"].concat();
        }
        out.extend(kvs);
        if !more {
            return Ok((at, out));
        }
    }
}

/// Pause before sending again a request no server received.
const RESEND_PAUSE: Duration = Duration::from_millis(5);

/// Sends a request again while it fails before reaching any server (a member that is
/// down refuses the connection), so the client's balanced channel tries another
/// endpoint; a request that may have reached one is never repeated. The caller's
/// deadline ([`answer`]) ends the loop.
pub(crate) async fn until_sent<T, F: Future<Output = Result<T, etcd_client::Error>>>(
    mut send: impl FnMut() -> F,
) -> Result<T, etcd_client::Error> {
    loop {
        match send().await {
            Err(e) if never_sent(&e) => tokio::time::sleep(RESEND_PAUSE).await,
            r => return r,
        }
    }
}

/// The connection was refused or could not be made: the request never left.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = describe(e);
    text.contains("tcp connect error") || text.contains("Connection refused")
}

/// Runs one request within its deadline and sends its answer. A request whose
/// deadline has passed is not started at all: its caller was told it timed out. One
/// that runs out is dropped, which cancels it; a batch already on its way to etcd
/// may still be applied, as the timeout error says.
pub(crate) async fn answer<T>(
    to: Answer<T>,
    deadline: Instant,
    late: StoreError,
    run: impl Future<Output = Result<T, StoreError>>,
) {
    answer_within(to, deadline, late, Some(deadline), run).await
}

/// As [`answer`] for a request that bounds its own steps (a paced listing): not
/// started once its deadline has passed, then given the time its steps take.
pub(crate) async fn answer_paced<T>(
    to: Answer<T>,
    deadline: Instant,
    late: StoreError,
    run: impl Future<Output = Result<T, StoreError>>,
) {
    answer_within(to, deadline, late, None, run).await
}

async fn answer_within<T>(
    to: Answer<T>,
    deadline: Instant,
    late: StoreError,
    limit: Option<Instant>,
    run: impl Future<Output = Result<T, StoreError>>,
) {
    let answer = match limit {
        _ if Instant::now() >= deadline => Err(late),
        Some(l) => tokio::time::timeout_at(l.into(), run)
            .await
            .unwrap_or(Err(late)),
        None => run.await,
    };
    // The caller may have stopped waiting; nothing to do about that here.
    let _ = to.try_send(answer);
}

/// `ModRevision(key) == expect` for every write, then the writes; else reads of
/// every key (keys and revisions only), to name the write that did not match.
fn transaction(batch: &[Write], keys: &[String]) -> Txn {
    let mut compares = Vec::with_capacity(batch.len());
    let mut writes = Vec::with_capacity(batch.len());
    let mut reads = Vec::with_capacity(batch.len());
    for (w, key) in batch.iter().zip(keys) {
        // No etcd revision is above i64::MAX, so such an `expect` can only conflict,
        // and does.
        let expect = i64::try_from(w.expect()).unwrap_or(i64::MAX);
        compares.push(Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            expect,
        ));
        writes.push(match w {
            Write::Put { value, .. } => TxnOp::put(key.as_str(), value.clone(), None),
            Write::Delete { .. } => TxnOp::delete(key.as_str(), None),
        });
        reads.push(TxnOp::get(
            key.as_str(),
            Some(GetOptions::new().with_keys_only()),
        ));
    }
    Txn::new().when(compares).and_then(writes).or_else(reads)
}

/// etcd's revisions of existing keys start at 1; anything else is not a revision.
pub(crate) fn revision(r: i64) -> Option<Revision> {
    u64::try_from(r).ok().filter(|&r| r > 0)
}

/// The end of the range of keys that start with `prefix`: its last byte below 0xff
/// incremented, the rest dropped (etcd's own rule; `\0` means "to the end").
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, time::Instant};

    use super::super::contract::{commit_latency, contract, put, sorted};
    use super::*;
    use crate::lab::etcd::{Etcd, MAX_TXN_OPS, cluster_or_skip, start_or_skip};

    fn store(etcd: &Etcd, prefix: &str, timeout: Duration) -> EtcdStore {
        EtcdStore::connect(&[etcd.endpoint()], prefix, timeout).unwrap()
    }

    /// Writes a key of the test's own choosing, outside the store's layout.
    fn raw_put(etcd: &Etcd, key: &str, value: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = Client::connect([etcd.endpoint()], None).await.unwrap();
            c.put(key, value, None).await.unwrap();
        });
    }

    #[test]
    fn key_layout() {
        let c = Config {
            endpoints: vec![],
            shown: String::new(),
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
        };
        let key = c.key(0xdead_beef);
        assert_eq!(key, "/jvpn/v1/sessions/00000000deadbeef/record");
        assert_eq!(c.id_of(key.as_bytes()), Some(0xdead_beef));
        assert_eq!(c.id_of(c.key(u64::MAX).as_bytes()), Some(u64::MAX));
        for other in [
            "/jvpn/v1/sessions/00000000deadbeef/owner",
            "/jvpn/v1/sessions/00000000DEADBEEF/record",
            "/jvpn/v1/sessions/deadbeef/record",
            "/jvpn/v1/sessions/+0000000deadbeef/record",
            "/jvpn/v1/nodes/00000000deadbeef/record",
        ] {
            assert_eq!(c.id_of(other.as_bytes()), None, "{other}");
        }
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn store_types_can_cross_threads() {
        // The controller hands its store to blocking tasks.
        fn f<T: Send + Sync + 'static>() {}
        f::<EtcdStore>();
    }

    #[test]
    fn etcd_store_passes_the_contract() {
        let Some(etcd) = start_or_skip("store::etcd::tests::etcd_store_passes_the_contract") else {
            return;
        };
        contract(&mut store(&etcd, DEFAULT_PREFIX, DEFAULT_TIMEOUT));
    }

    #[test]
    fn a_conflicting_batch_changes_nothing() {
        let Some(etcd) = start_or_skip("store::etcd::tests::a_conflicting_batch_changes_nothing")
        else {
            return;
        };
        let mut s = store(&etcd, DEFAULT_PREFIX, DEFAULT_TIMEOUT);
        let r1 = s.apply(&[put(1, 0, b"a"), put(2, 0, b"b")]).unwrap()[0];
        let r2 = s.apply(&[put(3, 0, b"c")]).unwrap()[0];
        let before = sorted(&s);
        // Valid writes around two stale ones: the first stale one in batch order is
        // named, nothing is written.
        let e = s
            .apply(&[
                put(1, r1, b"a2"),
                put(4, 0, b"d"),
                put(3, r1, b"c2"),
                Write::Delete { id: 2, expect: r2 },
            ])
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Conflict {
                    id: 3,
                    expected,
                    found,
                } if expected == r1 && found == r2
            ),
            "{e:?}"
        );
        assert_eq!(sorted(&s), before);
        // Nor did etcd's revision move: the next batch is the very next revision.
        assert_eq!(s.apply(&[put(5, 0, b"e")]).unwrap(), vec![r2 + 1]);
    }

    #[test]
    fn revisions_survive_a_new_connection() {
        let Some(etcd) = start_or_skip("store::etcd::tests::revisions_survive_a_new_connection")
        else {
            return;
        };
        let (before, r) = {
            let mut s = store(&etcd, DEFAULT_PREFIX, DEFAULT_TIMEOUT);
            s.apply(&[put(1, 0, b"one"), put(2, 0, b"two")]).unwrap();
            let r = s.apply(&[put(3, 0, b"three")]).unwrap()[0];
            (sorted(&s), r)
        };
        let mut s = store(&etcd, DEFAULT_PREFIX, DEFAULT_TIMEOUT);
        assert_eq!(sorted(&s), before);
        assert_eq!(s.get(3).unwrap(), Some((r, b"three".to_vec())));
        let r2 = s.apply(&[put(3, r, b"three again")]).unwrap()[0];
        assert!(r2 > r);
    }

    #[test]
    fn prefixes_keep_stores_apart_and_other_keys_are_not_records() {
        let Some(etcd) = start_or_skip(
            "store::etcd::tests::prefixes_keep_stores_apart_and_other_keys_are_not_records",
        ) else {
            return;
        };
        let mut a = store(&etcd, "/jvpn/v1/sessions/", DEFAULT_TIMEOUT);
        let mut b = store(&etcd, "/jvpn/v1/sessions-b/", DEFAULT_TIMEOUT);
        let ra = a.apply(&[put(1, 0, b"a")]).unwrap()[0];
        b.apply(&[put(1, 0, b"b"), put(2, 0, b"b")]).unwrap();
        raw_put(&etcd, "/jvpn/v1/sessions/0000000000000001/owner", "node-1");
        raw_put(&etcd, "/jvpn/v1/sessions/not-a-session", "x");
        assert_eq!(sorted(&a), vec![(1, ra, b"a".to_vec())]);
        assert_eq!(b.list().unwrap().len(), 2);
    }

    /// A 3-member cluster that loses two members has no quorum: a write is an error
    /// within the timeout (not a hang), and after it the store holds either none or
    /// all of that batch. One member back restores the quorum and the store serves.
    #[test]
    fn a_cluster_without_quorum_refuses_writes_and_serves_again_with_it() {
        let name =
            "store::etcd::tests::a_cluster_without_quorum_refuses_writes_and_serves_again_with_it";
        let Some(mut c) = cluster_or_skip(name, 3) else {
            return;
        };
        let timeout = Duration::from_millis(500);
        let mut s = EtcdStore::connect(&c.endpoints(), DEFAULT_PREFIX, timeout).unwrap();
        let r1 = s.apply(&[put(1, 0, b"one")]).unwrap()[0];
        c.members[1].kill().unwrap();
        c.members[2].kill().unwrap();
        let t = Instant::now();
        let err = s
            .apply(&[put(2, 0, b"two")])
            .expect_err("no quorum, no write");
        let took = t.elapsed();
        eprintln!("without quorum: {err} after {took:?}");
        assert!(
            took < timeout + GRACE + Duration::from_millis(200),
            "{took:?}"
        );
        c.members[1].restart().unwrap();
        // Member 2 stays down: a request the client first sends there is sent again
        // (it never left), so every step below is answered at once.
        let back = s.get(1).expect("reading with the quorum back");
        assert_eq!(
            back,
            Some((r1, b"one".to_vec())),
            "what was committed stays"
        );
        let two = s.get(2).expect("reading the refused batch");
        assert!(
            two.is_none() || two.as_ref().is_some_and(|(_, v)| v == b"two"),
            "the refused batch is there whole or not at all: {two:?}"
        );
        let expect = two.map_or(0, |(rev, _)| rev);
        s.apply(&[put(2, expect, b"two again")])
            .expect("writes with the quorum back");
    }

    /// One member of three down: once the other two have a leader (the one killed
    /// may have been it: an election takes a second or more), every request is
    /// answered (one the client sent to the dead member goes to another), none fails.
    #[test]
    fn one_member_down_of_three_fails_no_request() {
        let name = "store::etcd::tests::one_member_down_of_three_fails_no_request";
        let Some(mut c) = cluster_or_skip(name, 3) else {
            return;
        };
        let mut s = EtcdStore::connect(&c.endpoints(), DEFAULT_PREFIX, DEFAULT_TIMEOUT).unwrap();
        c.members[2].kill().unwrap();
        assert!(
            c.members[0].serving(Duration::from_secs(20)),
            "no leader among the two left"
        );
        let t = Instant::now();
        for id in 0..60u64 {
            s.apply(&[put(id, 0, b"v")])
                .unwrap_or_else(|e| panic!("write {id}: {e}"));
            assert!(s.get(id).unwrap().is_some(), "read {id}");
        }
        assert_eq!(s.list().unwrap().len(), 60);
        eprintln!("60 writes and reads with a member down: {:?}", t.elapsed());
    }

    /// A listing longer than the timeout as a whole, each page well within it: the
    /// store lists everything (a gateway with 100,000 stored sessions could not start
    /// when the whole listing had to fit in one timeout).
    #[test]
    fn a_listing_longer_than_the_timeout_is_paced_by_page() {
        let Some(etcd) =
            start_or_skip("store::etcd::tests::a_listing_longer_than_the_timeout_is_paced_by_page")
        else {
            return;
        };
        let timeout = Duration::from_millis(150);
        let mut w = store(&etcd, DEFAULT_PREFIX, Duration::from_secs(10));
        let value = vec![7u8; 300];
        let n: u64 = 60_000;
        for chunk in (1..=n).collect::<Vec<_>>().chunks(w.max_batch()) {
            let batch: Vec<Write> = chunk.iter().map(|&id| put(id, 0, &value)).collect();
            w.apply(&batch).unwrap();
        }
        let s = store(&etcd, DEFAULT_PREFIX, timeout);
        let t = Instant::now();
        let listed = s.list().unwrap();
        let took = t.elapsed();
        eprintln!("{n} records listed in {took:?} with a {timeout:?} timeout per page");
        assert_eq!(listed.len() as u64, n);
        assert!(
            took > timeout,
            "the listing took {took:?}, within one timeout: it proves nothing"
        );
    }

    #[test]
    fn a_stopped_etcd_is_an_error_within_the_timeout() {
        let Some(mut etcd) =
            start_or_skip("store::etcd::tests::a_stopped_etcd_is_an_error_within_the_timeout")
        else {
            return;
        };
        let timeout = Duration::from_millis(500);
        let mut s = store(&etcd, DEFAULT_PREFIX, timeout);
        let r = s.apply(&[put(1, 0, b"before")]).unwrap()[0];
        etcd.kill().unwrap();

        let t = Instant::now();
        let e = s.get(1).unwrap_err();
        let took = t.elapsed();
        eprintln!("get with etcd stopped, after {took:?}: {e}");
        assert!(took < timeout + GRACE, "{took:?}");
        assert!(
            e.to_string().contains(&etcd.endpoint()),
            "{e} does not name {}",
            etcd.endpoint()
        );
        let t = Instant::now();
        let e = s.apply(&[put(1, r, b"during")]).unwrap_err();
        eprintln!("apply with etcd stopped, after {:?}: {e}", t.elapsed());
        assert!(t.elapsed() < timeout + GRACE);
        assert!(matches!(
            e,
            StoreError::Etcd { .. } | StoreError::EtcdTimeout { .. }
        ));
        assert!(s.list().is_err());
        s.recover().unwrap();

        // Same store object, restarted server: the record, its revision, and writes.
        etcd.restart().unwrap();
        let t = Instant::now();
        let got = s.get(1);
        eprintln!("first get after the restart, after {:?}", t.elapsed());
        assert_eq!(got.unwrap(), Some((r, b"before".to_vec())));
        let r2 = s.apply(&[put(1, r, b"after")]).unwrap()[0];
        assert!(r2 > r);
    }

    #[test]
    fn a_hung_etcd_is_a_timeout_and_a_timed_out_batch_can_be_read_back() {
        let Some(etcd) = start_or_skip(
            "store::etcd::tests::a_hung_etcd_is_a_timeout_and_a_timed_out_batch_can_be_read_back",
        ) else {
            return;
        };
        let timeout = Duration::from_millis(500);
        let mut s = store(&etcd, DEFAULT_PREFIX, timeout);
        let r = s.apply(&[put(1, 0, b"before")]).unwrap()[0];
        etcd.pause().unwrap();

        let t = Instant::now();
        let e = s.apply(&[put(1, r, b"during")]).unwrap_err();
        let took = t.elapsed();
        eprintln!("apply with etcd paused, after {took:?}: {e}");
        assert!(took >= timeout && took < timeout + GRACE, "{took:?}");
        assert!(
            matches!(&e, StoreError::EtcdTimeout { what: "applying a batch", endpoints, .. }
                if *endpoints == etcd.endpoint()),
            "{e:?}"
        );
        let t = Instant::now();
        assert!(matches!(s.get(1), Err(StoreError::EtcdTimeout { .. })));
        assert!(t.elapsed() < timeout + GRACE);

        // The batch that timed out may or may not have been applied: reading it back
        // tells, and the store goes on either way.
        etcd.resume().unwrap();
        let (rev, value) = s.get(1).unwrap().unwrap();
        eprintln!(
            "after resuming, the timed-out batch was {}",
            if rev == r { "not applied" } else { "applied" }
        );
        assert!(
            (rev == r && value == b"before") || (rev > r && value == b"during"),
            "{rev} {value:?}"
        );
        // The read back can overtake the timed-out batch, still queued at etcd: the
        // retry, guarded by the revision read, is then refused, and a second read
        // shows the batch applied. It never lands over a newer write.
        match s.apply(&[put(1, rev, b"after")]) {
            Ok(r2) => assert!(r2[0] > rev),
            Err(StoreError::Conflict {
                id: 1,
                expected,
                found,
            }) if expected == rev && found > rev => {
                eprintln!("the timed-out batch landed after the read back: retry refused");
                let (rev2, value) = s.get(1).unwrap().unwrap();
                assert_eq!((rev2, value.as_slice()), (found, &b"during"[..]));
                let r3 = s.apply(&[put(1, rev2, b"after")]).unwrap()[0];
                assert!(r3 > rev2);
            }
            Err(e) => panic!("retry after the read back: {e:?}"),
        }
    }

    #[test]
    fn nothing_listening_is_named_at_connect() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let timeout = Duration::from_millis(500);
        let t = Instant::now();
        let e = EtcdStore::connect(&[&endpoint], DEFAULT_PREFIX, timeout).unwrap_err();
        eprintln!("connect to nothing, after {:?}: {e}", t.elapsed());
        assert!(t.elapsed() < timeout + GRACE);
        assert!(e.to_string().contains(&endpoint), "{e}");

        let e = EtcdStore::connect(&["http://bad host"], DEFAULT_PREFIX, timeout).unwrap_err();
        eprintln!("connect to a bad URL: {e}");
        assert!(e.to_string().contains("http://bad host"), "{e}");
        let e = EtcdStore::connect(&[] as &[&str], DEFAULT_PREFIX, timeout).unwrap_err();
        assert!(e.to_string().contains("no endpoints"), "{e}");
    }

    #[test]
    fn a_batch_over_the_servers_limit_is_named() {
        let Some(etcd) =
            start_or_skip("store::etcd::tests::a_batch_over_the_servers_limit_is_named")
        else {
            return;
        };
        let mut s = store(&etcd, DEFAULT_PREFIX, DEFAULT_TIMEOUT);
        let n = MAX_TXN_OPS as u64 + 1;
        let batch: Vec<Write> = (0..n).map(|id| put(id, 0, b"x")).collect();
        let e = s.apply(&batch).unwrap_err();
        eprintln!("a batch of {n} writes: {e}");
        assert!(
            matches!(e, StoreError::EtcdBatchTooLarge { writes, .. } if writes == n as usize),
            "{e:?}"
        );
        assert!(s.list().unwrap().is_empty());
        // At the limit it goes through.
        let r = s.apply(&batch[..MAX_TXN_OPS]).unwrap();
        assert_eq!(r.len(), MAX_TXN_OPS);
    }

    #[test]
    fn commit_latency_of_etcd() {
        let Some(etcd) = start_or_skip("store::etcd::tests::commit_latency_of_etcd") else {
            return;
        };
        let mut s = store(&etcd, DEFAULT_PREFIX, DEFAULT_TIMEOUT);
        commit_latency(&mut s, "etcd", 256, 10);
    }
}
