//! Cost of the gateway controller on one core: full handshakes per second, validated
//! reattaches per second, and controller heap bytes per session. In-process, with the
//! real crypto (ring) and the real BPF maps (a `Datapath` loaded into a temporary pin
//! directory, nothing attached); the core's methods are called directly, and the
//! exit's side of the link (INSTALL → ACK) is played by this program.
//!
//! Only the gateway's work is timed: the clients' HELLO building and WELCOME checks,
//! the exit's link crypto and all verification of the replies run between the timed
//! batches. The core gets a virtual clock (a wall-clock start, advanced 1 ms per
//! batch step) so BIRTH and freshness timers behave as for back-to-back clients.
//!
//! `--store etcd` commits to a single gateway's etcd store; `--cluster` commits as a
//! cluster node does (`Cluster::join`, one CAS transaction per changed session,
//! `Core::persist_cluster`), both against a real single-member etcd on loopback
//! started by the bench. etcd and the etcd client's threads run on the other CPUs,
//! the controller alone on its own (a node's etcd is another machine). With etcd the
//! round trips are counted from etcd's own `/metrics` (`grpc_server_handled_total`
//! of the KV service, by method, and `etcd_server_proposals_committed_total`), read
//! before and after each phase.
//!
//! Run as root: `cargo run --release -p jvpn-tests --bin ctl-bench -- [--sessions N]
//! [--seconds S] [--store DIR|memory|etcd | --cluster]`. Progress goes to stderr;
//! the figures end as one JSON object on stdout.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use jvpn_common::maps::SessionEntry;
use jvpn_ctl::store::{LocalStore, Sealer, SessionStore, StoreKey};
use jvpn_ctl::{
    control::{EventBus, Request, Response, SessionId},
    datapath::{Datapath, DatapathConfig},
    gateway::{
        Pool,
        core::{Core, CoreParams, Entry, Outgoing},
    },
    lab::netns::PinDir,
    proto::{
        Body, ClientHandshake, Control, Dir, LinkCrypto, LinkMsg, Peers, ReattachRequest,
        TransportKind, Unverified, link::link_type,
    },
    session::Policy,
};
use jvpn_tests::bench::schema;
use ring::{
    agreement, hmac,
    rand::{SecureRandom as _, SystemRandom},
    signature::{self, Ed25519KeyPair, KeyPair as _},
};

// ---------------------------------------------------------------------------------
// Live heap bytes (requested sizes; malloc's own per-chunk overhead is not included).

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn isize_of(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: every call is forwarded to `System` unchanged; the wrapper only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(isize_of(layout.size()), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(isize_of(layout.size()), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(isize_of(layout.size()), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(isize_of(new_size) - isize_of(layout.size()), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Relaxed)
}

// ---------------------------------------------------------------------------------
// Setup

const DEFAULT_SESSIONS: usize = 20_000;
/// Handshakes (and reattaches) handed to the core per timed batch.
const BATCH: usize = 256;
/// Untimed handshakes before the heap baseline: they fill the event bus's ring of
/// recent events (1,024) and grow the link's pending table to a batch, so the
/// baseline already holds those fixed costs.
const WARMUP: usize = 1_100;
/// Client identities; each HELLO still has its own ephemeral key and nonce.
const IDENTITIES: usize = 64;

const GW_LOCAL: SocketAddr = v4([10, 77, 1, 1], jvpn_common::DEFAULT_PORT);
const EXIT_DATA: SocketAddr = v4([10, 77, 9, 2], 51821);
const GW_EXIT: SocketAddr = v4([10, 77, 9, 1], 51820);

const fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(a[0], a[1], a[2], a[3]),
        port,
    ))
}

/// Client `i`'s address on its first transport (10.64.0.0/10), and after reattach
/// round `r` (10.128.0.0/9, a new port each round).
fn client_addr(i: usize, round: u16) -> SocketAddr {
    let [_, b, c, d] = u32::try_from(i)
        .expect("fewer than 2^22 clients")
        .to_be_bytes();
    if round == 0 {
        v4([10, 64 | (b & 0x3f), c, d], 40_000)
    } else {
        v4([10, 128 | (b & 0x7f), c, d], 40_000 + round)
    }
}

struct Args {
    sessions: usize,
    seconds: f64,
    /// A directory for the durable session store: every batch is committed (one
    /// fsync) before its replies count, as the daemon does.
    store: Option<std::path::PathBuf>,
    /// Commit as a cluster node (node 1 of a one-node cluster on a real etcd).
    cluster: bool,
}

const USAGE: &str =
    "usage: ctl-bench [--sessions N] [--seconds S] [--store DIR|memory|etcd | --cluster]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sessions: DEFAULT_SESSIONS,
        seconds: 0.0,
        store: None,
        cluster: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value ({USAGE})"))
        };
        match flag.as_str() {
            "--sessions" => {
                let v = value("--sessions")?;
                a.sessions = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=2_000_000).contains(n))
                    .ok_or(format!(
                        "--sessions {v:?}: expected a whole number from 1 to 2000000"
                    ))?;
            }
            "--seconds" => {
                let v = value("--seconds")?;
                a.seconds = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && (0.0..=3600.0).contains(s))
                    .ok_or(format!(
                        "--seconds {v:?}: expected a number of seconds from 0 to 3600"
                    ))?;
            }
            "--store" => a.store = Some(value("--store")?.into()),
            "--cluster" => a.cluster = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?} ({USAGE})")),
        }
    }
    if a.cluster && a.store.is_some() {
        return Err(format!(
            "--cluster and --store exclude each other ({USAGE})"
        ));
    }
    Ok(a)
}

/// The CPU this thread is running on: the controller's.
fn current_cpu() -> anyhow::Result<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).map_err(|_| anyhow!("sched_getcpu: {}", std::io::Error::last_os_error()))
}

/// Confines this thread to `cpus`; what it starts from now on (etcd, the etcd
/// client's threads) inherits that.
fn confine_to(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: c < CPU_SETSIZE (an allowed CPU).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is initialised.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!(
            "confining a thread to CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn wall_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn keypair(rng: &SystemRandom) -> anyhow::Result<Ed25519KeyPair> {
    let doc = Ed25519KeyPair::generate_pkcs8(rng).map_err(|_| anyhow!("generating a key"))?;
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow!("parsing a generated key"))
}

fn random<const N: usize>(rng: &SystemRandom) -> [u8; N] {
    let mut b = [0u8; N];
    rng.fill(&mut b).expect("the system RNG works");
    b
}

// ---------------------------------------------------------------------------------
// The bench

/// What the bench keeps per established session. Heap-free: the vector holding these
/// is allocated before the heap baseline, so the clients add nothing to the figure.
struct Client {
    index: usize,
    session_id: u64,
    mac: hmac::Key,
    next_ctr: u64,
    peer: SocketAddr,
}

struct Bench {
    core: Core,
    exit: LinkCrypto,
    identities: Vec<Ed25519KeyPair>,
    gw_pub: [u8; 32],
    rng: SystemRandom,
    /// The core's virtual clock.
    now: u64,
    /// Clients created so far (warm-up included): the next client's index.
    created: usize,
    store: Db,
}

/// Where the group commits go.
enum Db {
    None,
    Store(Box<dyn SessionStore>, Box<Sealer>),
    /// A cluster node: every changed session is one CAS transaction at etcd.
    Cluster(Box<jvpn_ctl::cluster::Cluster>),
}

/// The daemon's group commit: what a batch changed, durable before its replies.
fn commit(core: &mut Core, store: &mut Db, now: u64) -> anyhow::Result<()> {
    match store {
        Db::Store(st, sealer) => match core.persist(st.as_mut(), sealer, 0)? {
            jvpn_ctl::gateway::Commit::Durable => {}
            jvpn_ctl::gateway::Commit::RolledBack { error, .. } => bail!("store: {error}"),
        },
        Db::Cluster(c) => {
            let r = core
                .persist_cluster(c, now)
                .map_err(|e| anyhow!("cluster commit: {e}"))?;
            ensure!(
                r.lost == 0 && r.in_doubt == 0,
                "cluster commit: {} writes refused, {} without an answer ({} written)",
                r.lost,
                r.in_doubt,
                r.written
            );
        }
        Db::None => core.discard_pending(),
    }
    Ok(())
}

/// Gateway time spent in each step of a handshake or reattach, summed.
#[derive(Default)]
struct Steps {
    first: Duration,
    second: Duration,
    third: Duration,
}

impl Steps {
    fn total(&self) -> Duration {
        self.first + self.second + self.third
    }
}

fn us_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

impl Bench {
    /// The next instant of the virtual clock. A cluster node's lease deadline is
    /// carried into the core before every step, as the run loop keeps it (the
    /// deadline as the etcd client thread has it now, on the core's clock).
    /// The exit's ACKs into the core and the batch committed: the gateway's time.
    fn feed_link_acks(&mut self, acks: &[Vec<u8>]) -> anyhow::Result<Duration> {
        let now = self.tick();
        let t = Instant::now();
        for ack in acks {
            self.core.on_link_frame(ack, now);
        }
        commit(&mut self.core, &mut self.store, now)?;
        Ok(t.elapsed())
    }

    fn tick(&mut self) -> u64 {
        self.now += 1;
        if let Db::Cluster(c) = &self.store {
            let left = c.lease().until.map_or(0, |u| {
                u.saturating_duration_since(Instant::now()).as_millis()
            });
            let until = if left == 0 {
                0
            } else {
                self.now + u64::try_from(left).unwrap_or(u64::MAX / 2)
            };
            self.core.set_lease_until(until);
        }
        self.now
    }

    /// The core's queued replies, all of them UDP to the given peers in order.
    fn take_udp(&mut self, peers: &[SocketAddr], what: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        let out = std::mem::take(&mut self.core.out);
        ensure!(
            out.len() == peers.len(),
            "{what}: {} replies for {} requests",
            out.len(),
            peers.len()
        );
        out.into_iter()
            .zip(peers)
            .map(|(o, want)| match o {
                Outgoing::Udp {
                    local, peer, data, ..
                } if local == GW_LOCAL && peer == *want => Ok(data),
                other => Err(anyhow!(
                    "{what}: unexpected reply {other:?} (wanted UDP to {want})"
                )),
            })
            .collect()
    }

    /// Runs `n` complete handshakes in batches; returns the gateway's time per step
    /// and appends the established sessions to `clients` (if given).
    fn handshakes(
        &mut self,
        n: usize,
        mut clients: Option<&mut Vec<Client>>,
        progress: bool,
    ) -> anyhow::Result<Steps> {
        let mut steps = Steps::default();
        let mut done = 0;
        let mut next_report = 1;
        while done < n {
            jvpn_tests::bench::stopped()?;
            let b = BATCH.min(n - done);
            let first = self.created;
            let peers: Vec<SocketAddr> = (first..first + b).map(|i| client_addr(i, 0)).collect();

            // Clients: HELLOs (untimed).
            let ts = self.tick();
            let mut hs = Vec::with_capacity(b);
            let mut hellos = Vec::with_capacity(b);
            for i in first..first + b {
                let id = &self.identities[i % IDENTITIES];
                let (h, hello) = ClientHandshake::start(id, &self.gw_pub, ts, &self.rng)?;
                hs.push(h);
                hellos.push(hello);
            }

            // Gateway: HELLO → WELCOME.
            let now = self.tick();
            let t = Instant::now();
            for (hello, peer) in hellos.iter().zip(&peers) {
                self.core.on_datagram(GW_LOCAL, *peer, hello, now);
            }
            commit(&mut self.core, &mut self.store, now)?;
            steps.first += t.elapsed();
            let welcomes = self.take_udp(&peers, "HELLO")?;

            // Clients: verify WELCOME, build CONFIRM (untimed).
            let mut sessions = Vec::with_capacity(b);
            for (h, w) in hs.iter_mut().zip(&welcomes) {
                sessions.push(h.on_welcome(w).context("client: WELCOME")?);
            }

            // Gateway: CONFIRM → INSTALL to the exit.
            let now = self.tick();
            let t = Instant::now();
            for (s, peer) in sessions.iter().zip(&peers) {
                self.core.on_datagram(GW_LOCAL, *peer, &s.confirm, now);
            }
            commit(&mut self.core, &mut self.store, now)?;
            steps.second += t.elapsed();

            // Exit: open INSTALLs, seal ACKs (untimed).
            let installs = std::mem::take(&mut self.core.out);
            ensure!(
                installs.len() == b,
                "CONFIRM: {} link frames for {b} confirms",
                installs.len()
            );
            let mut acks = Vec::with_capacity(b);
            for (o, s) in installs.into_iter().zip(&sessions) {
                let Outgoing::Link { data: frame, .. } = o else {
                    bail!("CONFIRM: unexpected reply {o:?} (wanted an INSTALL to the exit)");
                };
                match self.exit.open(&frame).context("exit: INSTALL")? {
                    LinkMsg::Install {
                        session_id, ret, ..
                    } if session_id == s.session_id && ret == GW_EXIT => {}
                    other => bail!("exit: unexpected {other:?}"),
                }
                acks.push(self.exit.seal(&LinkMsg::Ack {
                    session_id: s.session_id,
                    acked_type: link_type::INSTALL,
                }));
            }

            // Gateway: exit ACK → map insert, ATTACHED, ESTABLISHED.
            steps.third += self.feed_link_acks(&acks)?;
            // A cluster node learns the session's epoch from that commit (the owner
            // key it created) and INSTALLs the keys again with it: the exit's fencing
            // token. Those go out next to the ESTABLISHEDs.
            let (udp, link): (Vec<Outgoing>, Vec<Outgoing>) = std::mem::take(&mut self.core.out)
                .into_iter()
                .partition(|o| matches!(o, Outgoing::Udp { .. }));
            self.core.out = udp;
            let established = self.take_udp(&peers, "INSTALL ACK")?;
            if !link.is_empty() {
                ensure!(
                    link.len() == b,
                    "INSTALL ACK: {} link frames for {b} sessions",
                    link.len()
                );
                // In the order the commit's answers came back, not the batch's.
                let mut want: std::collections::HashSet<u64> =
                    sessions.iter().map(|s| s.session_id).collect();
                let mut acks = Vec::with_capacity(b);
                for o in link {
                    let Outgoing::Link { data: frame, .. } = o else {
                        bail!("INSTALL ACK: unexpected reply {o:?}");
                    };
                    let id = match self.exit.open(&frame).context("exit: epoch INSTALL")? {
                        LinkMsg::Install {
                            session_id, epoch, ..
                        } if want.remove(&session_id) && epoch > 0 => session_id,
                        other => bail!("exit: wanted an INSTALL with an epoch, got {other:?}"),
                    };
                    acks.push(self.exit.seal(&LinkMsg::Ack {
                        session_id: id,
                        acked_type: link_type::INSTALL,
                    }));
                }
                steps.third += self.feed_link_acks(&acks)?;
                ensure!(
                    self.core.out.is_empty(),
                    "epoch INSTALL ACK: {} unexpected replies",
                    self.core.out.len()
                );
            }
            for (s, e) in sessions.iter().zip(&established) {
                s.verify_established(e)
                    .context("client: ESTABLISHED does not verify")?;
            }
            if let Some(c) = clients.as_deref_mut() {
                for (k, s) in sessions.iter().enumerate() {
                    c.push(Client {
                        index: first + k,
                        session_id: s.session_id,
                        mac: s.keys.mac_key(),
                        next_ctr: s.next_ctr,
                        peer: peers[k],
                    });
                }
            }
            self.created += b;
            done += b;
            if progress && done * 10 >= next_report * n {
                next_report = done * 10 / n + 1;
                eprintln!(
                    "  handshakes {done}/{n} ({}%): gateway {:.1} µs each so far",
                    done * 100 / n,
                    us_per(steps.total(), done)
                );
            }
        }
        Ok(steps)
    }

    /// One validated reattach of every client to its address of `round`: REQUEST →
    /// CHALLENGE → CONFIRM → (map swap) → ACK. Checks every reply.
    fn reattach_round(&mut self, clients: &mut [Client], round: u16) -> anyhow::Result<Steps> {
        let mut steps = Steps::default();
        let want_gen = u32::from(round) + 1;
        for batch in clients.chunks_mut(BATCH) {
            jvpn_tests::bench::stopped()?;
            let peers: Vec<SocketAddr> =
                batch.iter().map(|c| client_addr(c.index, round)).collect();

            // Clients: requests from the new address (untimed).
            let ts = self.tick();
            let mut reqs = Vec::with_capacity(batch.len());
            for c in batch.iter_mut() {
                let body = ReattachRequest::new(
                    ts,
                    random(&self.rng),
                    TransportKind::Cellular,
                    jvpn_ctl::proto::ReattachCause::Recovery,
                    b"bench",
                )?;
                let msg = Control {
                    session_id: c.session_id,
                    ctr: c.next_ctr,
                    body: Body::ReattachRequest(body),
                };
                c.next_ctr += 1;
                reqs.push(msg.encode(&c.mac)?);
            }

            // Gateway: REATTACH_REQUEST → REATTACH_CHALLENGE.
            let now = self.tick();
            let t = Instant::now();
            for (r, peer) in reqs.iter().zip(&peers) {
                self.core.on_datagram(GW_LOCAL, *peer, r, now);
            }
            commit(&mut self.core, &mut self.store, now)?;
            steps.first += t.elapsed();
            let challenges = self.take_udp(&peers, "REATTACH_REQUEST")?;

            // Clients: check the challenge's MAC, answer it (untimed).
            let mut confirms = Vec::with_capacity(batch.len());
            for (c, ch) in batch.iter_mut().zip(&challenges) {
                let u = Unverified::decode(ch).context("client: challenge")?;
                let msg = u.verify(&c.mac).context("client: challenge MAC")?;
                let Body::ReattachChallenge { challenge } = msg.body else {
                    bail!("client: wanted a REATTACH_CHALLENGE, got {:?}", msg.body);
                };
                ensure!(
                    msg.session_id == c.session_id,
                    "challenge for another session"
                );
                let reply = Control {
                    session_id: c.session_id,
                    ctr: c.next_ctr,
                    body: Body::ReattachConfirm { challenge },
                };
                c.next_ctr += 1;
                confirms.push(reply.encode(&c.mac)?);
            }

            // Gateway: REATTACH_CONFIRM → map swap → REATTACH_ACK.
            let now = self.tick();
            let t = Instant::now();
            for (r, peer) in confirms.iter().zip(&peers) {
                self.core.on_datagram(GW_LOCAL, *peer, r, now);
            }
            commit(&mut self.core, &mut self.store, now)?;
            steps.second += t.elapsed();
            let acks = self.take_udp(&peers, "REATTACH_CONFIRM")?;
            for ((c, a), peer) in batch.iter_mut().zip(&acks).zip(&peers) {
                let u = Unverified::decode(a).context("client: ack")?;
                let msg = u.verify(&c.mac).context("client: ack MAC")?;
                match msg.body {
                    Body::ReattachAck { generation, .. } if generation == want_gen => {}
                    ref other => {
                        bail!("client: wanted REATTACH_ACK generation {want_gen}, got {other:?}")
                    }
                }
                c.peer = *peer;
            }
        }
        Ok(steps)
    }

    /// Every client's map entry (read back through a second handle on the pin) and
    /// the core's own view (control API) show the new binding at `generation`.
    fn verify_bindings(
        &mut self,
        pins: &Path,
        clients: &[Client],
        generation: u32,
    ) -> anyhow::Result<()> {
        use aya::maps::{HashMap as BpfHashMap, Map, MapData};
        let data = MapData::from_pin(pins.join("SESSIONS")).context("opening SESSIONS")?;
        let map: BpfHashMap<MapData, u64, SessionEntry> =
            BpfHashMap::try_from(Map::HashMap(data)).context("SESSIONS")?;
        for c in clients {
            let e = map
                .get(&c.session_id, 0)
                .with_context(|| format!("map entry of {}", SessionId(c.session_id)))?;
            ensure!(
                e.generation == generation && e.client == c.peer.into(),
                "map entry of {}: generation {} (want {generation}), binding {:?} (want {})",
                SessionId(c.session_id),
                e.generation,
                e.client,
                c.peer
            );
            let id = SessionId(c.session_id);
            match self.core.on_request(&Request::Session { id }, self.now) {
                Response::Ok { data } => {
                    let g = data.get("generation").and_then(|g| g.as_u64());
                    let state = data.get("state").and_then(|s| s.as_str());
                    ensure!(
                        g == Some(u64::from(generation)) && state == Some("ATTACHED"),
                        "session {id}: controller says generation {g:?}, state {state:?}"
                    );
                }
                Response::Error { error } => bail!("session {id}: {error}"),
            }
        }
        Ok(())
    }
}

/// Heap bytes of a table shaped like the core's HELLO nonce cache (`HashMap<[u8; 16],
/// u64>` plus `VecDeque<(u64, [u8; 16])>`) holding `n` nonces: an estimate of the part
/// of the per-session figure that expires 2 × freshness window after the HELLO.
fn nonce_cache_bytes(n: usize) -> isize {
    let before = live();
    let mut seen: HashMap<[u8; 16], u64> = HashMap::new();
    let mut order: VecDeque<(u64, [u8; 16])> = VecDeque::new();
    for i in 0..n as u128 {
        let k = i.to_be_bytes();
        seen.insert(k, 0);
        order.push_back((0, k));
    }
    let bytes = live() - before;
    drop((seen, order));
    bytes
}

/// Isolated costs of the primitives a handshake uses, for context (µs each).
struct Context {
    ed25519_sign: f64,
    ed25519_verify: f64,
    x25519_keygen_agree: f64,
    pool_allocate_at_n: f64,
}

fn measure_context(rng: &SystemRandom, n: usize) -> anyhow::Result<Context> {
    const K: u32 = 2_000;
    let key = keypair(rng)?;
    let msg = [7u8; 200];
    let t = Instant::now();
    for _ in 0..K {
        std::hint::black_box(key.sign(std::hint::black_box(&msg)));
    }
    let sign = t.elapsed();
    let sig = key.sign(&msg);
    let public = signature::UnparsedPublicKey::new(&signature::ED25519, key.public_key().as_ref());
    let t = Instant::now();
    for _ in 0..K {
        public
            .verify(std::hint::black_box(&msg), sig.as_ref())
            .map_err(|_| anyhow!("verify"))?;
    }
    let verify = t.elapsed();
    let peer = agreement::EphemeralPrivateKey::generate(&agreement::X25519, rng)
        .and_then(|k| k.compute_public_key())
        .map_err(|_| anyhow!("x25519"))?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer.as_ref().to_vec());
    let t = Instant::now();
    for _ in 0..K {
        let eph = agreement::EphemeralPrivateKey::generate(&agreement::X25519, rng)
            .map_err(|_| anyhow!("x25519"))?;
        std::hint::black_box(eph.compute_public_key().map_err(|_| anyhow!("x25519"))?);
        agreement::agree_ephemeral(eph, &peer, |s| std::hint::black_box(s[0]))
            .map_err(|_| anyhow!("x25519"))?;
    }
    let x = t.elapsed();
    // The tunnel-address pool with n addresses taken (lowest free first): what the
    // n-th HELLO's allocation costs.
    let mut pool = Pool::new(
        "10.0.0.0/8".parse().expect("a CIDR"),
        [Ipv4Addr::new(10, 0, 0, 1)],
    );
    let mut taken = Vec::with_capacity(n);
    for _ in 0..n {
        taken.push(pool.allocate().context("pool")?);
    }
    const P: u32 = 50;
    let t = Instant::now();
    for _ in 0..P {
        let a = pool.allocate().context("pool")?;
        pool.release(std::hint::black_box(a));
    }
    let alloc = t.elapsed();
    let per = |d: Duration, k: u32| d.as_secs_f64() * 1e6 / f64::from(k);
    Ok(Context {
        ed25519_sign: per(sign, K),
        ed25519_verify: per(verify, K),
        x25519_keygen_agree: per(x, K),
        pool_allocate_at_n: per(alloc, P),
    })
}

/// The core as the daemon builds it (the policy lets every session switch as often
/// as the bench asks).
fn new_core(
    identity: Ed25519KeyPair,
    peers: Peers,
    link_key: [u8; 32],
    dp: Datapath,
    start: u64,
    node: u16,
) -> Core {
    let policy = Policy {
        max_switches_per_minute: 1_000_000,
        ..Policy::default()
    };
    Core::new(
        CoreParams {
            policy,
            identity,
            peers,
            pool: Pool::new(
                "10.0.0.0/8".parse().expect("a CIDR"),
                [Ipv4Addr::new(10, 0, 0, 1)],
            ),
            exit_data: EXIT_DATA,
            gw_exit: GW_EXIT,
            link_key,
            start_us: start * 1000,
            node,
        },
        dp,
        EventBus::new(jvpn_ctl::control::events::DEFAULT_CAPACITY),
        start,
    )
}

/// The controller's part of a restart with every session of the run stored, as
/// `gateway::run` does it: open the store, unseal and decode every record, load the
/// data plane onto its pinned maps, resume (each map entry compared with its
/// record, every session's keys queued to the exit), one group commit.
fn restart(
    bench: Bench,
    reopen: &StoreKind,
    pins: &Path,
    max_sessions: u32,
    link_key: [u8; 32],
) -> anyhow::Result<(Duration, jvpn_ctl::gateway::Resumed)> {
    let expect = bench.core.session_count();
    let now = bench.now + 1;
    drop(bench);
    let rng = SystemRandom::new();
    let identity = keypair(&rng)?;
    let t = Instant::now();
    let (mut store, sealer) = reopen.open()?;
    let records = jvpn_ctl::gateway::load_records(store.as_ref(), &sealer, now)?;
    let dp = Datapath::load(DatapathConfig {
        max_sessions,
        pin_dir: pins.to_path_buf(),
        ..DatapathConfig::default()
    })
    .context("loading the data plane again")?;
    let mut core = new_core(identity, Peers::new(), link_key, dp, now, 0);
    let r = core.resume(records, now);
    match core.persist(store.as_mut(), &sealer, now)? {
        jvpn_ctl::gateway::Commit::Durable => {}
        jvpn_ctl::gateway::Commit::RolledBack { error, .. } => bail!("store: {error}"),
    }
    let took = t.elapsed();
    ensure!(
        r.resumed as usize == expect && r.reinstalled == 0 && r.removed == 0 && r.expired == 0,
        "resumed {r:?}, expected {expect} sessions resumed as they were"
    );
    Ok((took, r))
}

/// Where `--store` puts the records.
enum StoreKind {
    /// Encoded and sealed, kept in memory (no redb, no fsync): the two costs apart.
    Memory(PathBuf),
    /// The redb store in this directory.
    Local(PathBuf),
    /// A real single-member etcd on loopback, started by the bench, with etcd's
    /// default transaction limit (group commits of 256 are split in two).
    Etcd(Box<jvpn_ctl::lab::etcd::Etcd>, PathBuf),
    /// The same etcd, written as a cluster node writes it (`--cluster`).
    Cluster(Box<jvpn_ctl::lab::etcd::Etcd>, PathBuf),
}

/// The cluster node the bench plays.
const NODE: u16 = 1;

fn start_etcd() -> anyhow::Result<Box<jvpn_ctl::lab::etcd::Etcd>> {
    let etcd = jvpn_ctl::lab::etcd::Etcd::start().context("starting etcd")?;
    eprintln!(
        "ctl-bench: etcd at {} (pid {:?})",
        etcd.endpoint(),
        etcd.pid()
    );
    Ok(Box::new(etcd))
}

impl StoreKind {
    fn new(arg: &Path) -> anyhow::Result<Self> {
        let tmp = std::env::temp_dir().join(format!("ctl-bench-{}", std::process::id()));
        Ok(match arg.to_str() {
            Some("memory") => Self::Memory(tmp),
            Some("etcd") => Self::Etcd(start_etcd()?, tmp),
            Some("cluster") => Self::Cluster(start_etcd()?, tmp),
            _ => {
                std::fs::create_dir_all(arg)?;
                Self::Local(arg.to_path_buf())
            }
        })
    }

    /// The etcd it runs, if any.
    fn etcd(&self) -> Option<&jvpn_ctl::lab::etcd::Etcd> {
        match self {
            Self::Etcd(e, _) | Self::Cluster(e, _) => Some(e),
            _ => None,
        }
    }

    fn open(&self) -> anyhow::Result<(Box<dyn SessionStore>, Sealer)> {
        let key = |dir: &Path| -> anyhow::Result<Sealer> {
            std::fs::create_dir_all(dir)?;
            Ok(Sealer::new(
                &StoreKey::load_or_create(&dir.join("store.key"))?.0,
            ))
        };
        Ok(match self {
            Self::Cluster(..) => bail!("a cluster node has no session store"),
            Self::Memory(dir) => (Box::new(jvpn_ctl::store::MemoryStore::new()), key(dir)?),
            Self::Local(dir) => (Box::new(LocalStore::open(dir)?), key(dir)?),
            Self::Etcd(etcd, dir) => (
                Box::new(
                    jvpn_ctl::store::EtcdStore::connect(
                        &[etcd.endpoint()],
                        jvpn_ctl::store::etcd::DEFAULT_PREFIX,
                        jvpn_ctl::store::etcd::DEFAULT_TIMEOUT,
                    )?
                    .with_max_batch(jvpn_ctl::store::etcd::DEFAULT_MAX_TXN_OPS),
                ),
                key(dir)?,
            ),
        })
    }

    /// Joins the cluster as node [`NODE`], as `gateway::run` does: the client thread,
    /// a lease (kept alive), the node announced on it; the core's sealer.
    fn join(&self) -> anyhow::Result<(jvpn_ctl::cluster::Cluster, Sealer)> {
        let Self::Cluster(etcd, dir) = self else {
            bail!("not a cluster");
        };
        std::fs::create_dir_all(dir)?;
        let sealer = Sealer::new(&StoreKey::load_or_create(&dir.join("store.key"))?.0);
        let c = jvpn_ctl::cluster::Cluster::join(jvpn_ctl::cluster::JoinParams {
            endpoints: vec![etcd.endpoint()],
            root: jvpn_ctl::cluster::DEFAULT_ROOT.into(),
            node: NODE,
            ttl: jvpn_ctl::cluster::DEFAULT_TTL,
            timeout: Duration::from_millis(1000),
            about: format!("ctl-bench pid={}", std::process::id()),
        })
        .context("joining the cluster")?;
        Ok((c, sealer))
    }

    /// Bytes the store's file holds (the local store only).
    fn bytes(&self) -> Option<u64> {
        match self {
            Self::Local(dir) => std::fs::metadata(dir.join(jvpn_ctl::store::local::FILE_NAME))
                .ok()
                .map(|m| m.len()),
            _ => None,
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// etcd's own counters, from its `/metrics` (Prometheus text): the unary KV
/// round trips it answered by method, and the raft proposals it committed (every
/// write, one per transaction that writes).
#[derive(Clone, Debug, Default)]
struct EtcdCounts {
    txn: f64,
    range: f64,
    put: f64,
    delete: f64,
    proposals: f64,
    /// etcd's WAL fsyncs and the seconds they took (`etcd_disk_wal_fsync_duration_seconds`).
    fsyncs: f64,
    fsync_s: f64,
}

impl EtcdCounts {
    fn read(endpoint: &str) -> anyhow::Result<Self> {
        use std::io::{Read as _, Write as _};
        let addr: SocketAddr = endpoint
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("etcd endpoint {endpoint}"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        ensure!(
            text.starts_with("HTTP/1.") && text.contains(" 200 "),
            "etcd's /metrics: {}",
            text.lines().next().unwrap_or_default()
        );
        let mut c = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if name == "etcd_server_proposals_committed_total" {
                c.proposals = v;
            } else if name == "etcd_disk_wal_fsync_duration_seconds_count" {
                c.fsyncs = v;
            } else if name == "etcd_disk_wal_fsync_duration_seconds_sum" {
                c.fsync_s = v;
            } else if name.starts_with("grpc_server_handled_total{")
                && name.contains(r#"grpc_service="etcdserverpb.KV""#)
            {
                let slot = if name.contains(r#"grpc_method="Txn""#) {
                    &mut c.txn
                } else if name.contains(r#"grpc_method="Range""#) {
                    &mut c.range
                } else if name.contains(r#"grpc_method="Put""#) {
                    &mut c.put
                } else if name.contains(r#"grpc_method="DeleteRange""#) {
                    &mut c.delete
                } else {
                    continue;
                };
                *slot += v;
            }
        }
        Ok(c)
    }

    fn minus(&self, o: &Self) -> Self {
        Self {
            txn: self.txn - o.txn,
            range: self.range - o.range,
            put: self.put - o.put,
            delete: self.delete - o.delete,
            proposals: self.proposals - o.proposals,
            fsyncs: self.fsyncs - o.fsyncs,
            fsync_s: self.fsync_s - o.fsync_s,
        }
    }

    fn per(&self, n: usize) -> Self {
        let d = n.max(1) as f64;
        Self {
            txn: self.txn / d,
            range: self.range / d,
            put: self.put / d,
            delete: self.delete / d,
            proposals: self.proposals / d,
            fsyncs: self.fsyncs / d,
            fsync_s: self.fsync_s / d,
        }
    }

    /// Every KV round trip (the lease keep-alives are one stream, not counted).
    fn rpcs(&self) -> f64 {
        self.txn + self.range + self.put + self.delete
    }

    fn figures(&self) -> schema::EtcdCounts {
        schema::EtcdCounts {
            txn: round3(self.txn),
            range: round3(self.range),
            put: round3(self.put),
            delete_range: round3(self.delete),
            proposals_committed: round3(self.proposals),
            wal_fsyncs: round3(self.fsyncs),
            wal_fsync_us_each: (self.fsyncs > 0.0)
                .then(|| (self.fsync_s / self.fsyncs * 1e7).round() / 10.0),
        }
    }
}

impl std::fmt::Display for EtcdCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} Txn, {:.3} Range, {:.3} Put, {:.3} DeleteRange round trips; {:.3} raft \
             proposals; {:.3} WAL fsyncs",
            self.txn, self.range, self.put, self.delete, self.proposals, self.fsyncs
        )?;
        if self.fsyncs > 0.0 {
            write!(f, " of {:.0} µs each", self.fsync_s / self.fsyncs * 1e6)?;
        }
        Ok(())
    }
}

/// The results line: what `jvpn-bench` keeps under `ctl_bench*` (its schema).
fn run(args: &Args) -> anyhow::Result<schema::CtlBench> {
    let n = args.sessions;
    // The controller gets this CPU alone; etcd and the etcd clients' threads,
    // started next, inherit the others.
    let cpu = current_cpu()?;
    let others: Vec<usize> = jvpn_ctl::bench::cpus::allowed()?
        .into_iter()
        .filter(|&c| c != cpu)
        .collect();
    if !others.is_empty() {
        confine_to(&others)?;
    }
    let kind = if args.cluster {
        Some(StoreKind::new(Path::new("cluster"))?)
    } else {
        args.store.as_deref().map(StoreKind::new).transpose()?
    };
    let mut db = match &kind {
        Some(k @ StoreKind::Cluster(..)) => {
            let (c, sealer) = k.join()?;
            (Db::Cluster(Box::new(c)), Some(sealer))
        }
        Some(k) => {
            let (st, sealer) = k.open()?;
            (Db::Store(st, Box::new(sealer)), None)
        }
        None => (Db::None, None),
    };
    jvpn_ctl::bench::cpus::pin_current_thread(cpu)?;
    let model = jvpn_tests::bench::machine::cpu_model().unwrap_or_else(|| "unknown".into());
    eprintln!(
        "ctl-bench: {n} sessions, pinned to CPU {cpu} ({model}); etcd and its clients on {others:?}"
    );
    let rng = SystemRandom::new();

    let pins = PinDir::new("ctlb");
    let max_sessions = u32::try_from(n + WARMUP + 1024).expect("bounded by --sessions");
    let dp = Datapath::load(DatapathConfig {
        max_sessions,
        pin_dir: pins.0.clone(),
        ..DatapathConfig::default()
    })
    .context("loading the data plane")?;

    let identities = (0..IDENTITIES)
        .map(|_| keypair(&rng))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut peers = Peers::new();
    for id in &identities {
        let key = id.public_key().as_ref().try_into().expect("32-byte key");
        peers.add(key, None)?;
    }
    let gateway = keypair(&rng)?;
    let link_key: [u8; 32] = random(&rng);
    let start = wall_ms();
    let node = if args.cluster { NODE } else { 0 };
    let mut core = new_core(gateway, peers, link_key, dp, start, node);
    if let (Db::Cluster(c), Some(sealer)) = (&db.0, db.1.take()) {
        // As `gateway::run` starts a cluster node (the cluster is empty: nothing
        // to resume, no other node's sessions to admit).
        core.enable_cluster(c.node(), sealer);
        let snap = c.snapshot()?;
        ensure!(
            snap.sessions.is_empty(),
            "a fresh etcd holds {} sessions",
            snap.sessions.len()
        );
        core.note_nodes(&snap.nodes);
    }
    let mut bench = Bench {
        gw_pub: core.gateway_pub(),
        core,
        exit: LinkCrypto::new(&link_key, Dir::ExitToGateway, node, start * 1000 + 1),
        identities,
        rng,
        now: start,
        created: 0,
        store: db.0,
    };
    let etcd_at = |what: &str| -> anyhow::Result<Option<EtcdCounts>> {
        kind.as_ref()
            .and_then(StoreKind::etcd)
            .map(|e| {
                EtcdCounts::read(&e.endpoint()).with_context(|| format!("etcd metrics {what}"))
            })
            .transpose()
    };

    // Warm-up (untimed, not counted), then the heap baseline.
    bench.handshakes(WARMUP, None, false)?;
    ensure!(
        bench.core.link_pending() == 0,
        "link messages left unacknowledged"
    );
    let mut clients: Vec<Client> = Vec::with_capacity(n);
    let heap_before = live();
    let etcd_before_hs = etcd_at("before the handshakes")?;

    // 1. Handshakes.
    eprintln!("phase 1: {n} handshakes (HELLO → WELCOME → CONFIRM → INSTALL/ACK → ESTABLISHED)");
    let hs = bench.handshakes(n, Some(&mut clients), true)?;
    ensure!(
        clients.len() == n,
        "{} of {n} handshakes established",
        clients.len()
    );
    ensure!(
        bench.core.session_count() == WARMUP + n,
        "the core holds {} sessions, expected {}",
        bench.core.session_count(),
        WARMUP + n
    );
    ensure!(
        bench.core.link_pending() == 0,
        "link messages left unacknowledged"
    );
    let etcd_after_hs = etcd_at("after the handshakes")?;
    let handshake_us = us_per(hs.total(), n);
    eprintln!(
        "handshakes: {n} established, gateway {handshake_us:.1} µs each = {:.0}/s \
         (HELLO {:.1} + CONFIRM {:.1} + exit ACK incl. map insert {:.1} µs)",
        1e6 / handshake_us,
        us_per(hs.first, n),
        us_per(hs.second, n),
        us_per(hs.third, n)
    );

    // 2. Reattaches: one round for every session, then more rounds while --seconds lasts.
    eprintln!("phase 2: {n} validated reattaches (REQUEST → CHALLENGE → CONFIRM → swap → ACK)");
    let etcd_before_ra = etcd_at("before the reattaches")?;
    let ra_start = Instant::now();
    let mut ra = bench.reattach_round(&mut clients, 1)?;
    let ra_wall = ra_start.elapsed();
    let etcd_after_ra = etcd_at("after the reattaches")?;
    bench.verify_bindings(&pins.0, &clients, 2)?;
    let per_op = |a: &Option<EtcdCounts>, b: &Option<EtcdCounts>, ops: usize| {
        a.as_ref().zip(b.as_ref()).map(|(a, b)| b.minus(a).per(ops))
    };
    let etcd_hs = per_op(&etcd_before_hs, &etcd_after_hs, n);
    let etcd_ra = per_op(&etcd_before_ra, &etcd_after_ra, n);
    if let (Some(h), Some(r)) = (&etcd_hs, &etcd_ra) {
        eprintln!("etcd, per handshake: {h}");
        eprintln!(
            "etcd, per reattach: {r} (the first round: {n} reattaches in {:.2} s of wall time)",
            ra_wall.as_secs_f64()
        );
    }

    // 3. Heap bytes, right after every session exists and moved once.
    let heap_after = live();
    let bytes_per_session = (heap_after - heap_before) as f64 / n as f64;

    let t = Instant::now();
    let mut rounds: u16 = 1;
    while t.elapsed().as_secs_f64() < args.seconds && rounds < 1000 {
        rounds += 1;
        let s = bench.reattach_round(&mut clients, rounds)?;
        ra.first += s.first;
        ra.second += s.second;
    }
    if rounds > 1 {
        bench.verify_bindings(&pins.0, &clients, u32::from(rounds) + 1)?;
    }
    let reattaches = n * usize::from(rounds);
    let reattach_us = us_per(ra.total(), reattaches);
    eprintln!(
        "reattaches: {reattaches} acknowledged ({rounds} round(s)), map generation {} everywhere, \
         gateway {reattach_us:.1} µs each = {:.0}/s (REQUEST {:.1} + CONFIRM incl. map swap {:.1} µs)",
        u32::from(rounds) + 1,
        1e6 / reattach_us,
        us_per(ra.first, reattaches),
        us_per(ra.second, reattaches)
    );

    let entry_bytes = size_of::<(u64, Entry)>();
    let nonce_est = nonce_cache_bytes(WARMUP + n) as f64 / (WARMUP + n) as f64;
    eprintln!(
        "memory: {bytes_per_session:.0} controller heap bytes per session (requested sizes, \
         hash-table slack at this N included; of which ~{nonce_est:.0} B HELLO nonce cache, \
         expiring after 2 × freshness window; a session-table slot is {entry_bytes} B inline); \
         kernel map bytes are measured separately"
    );

    let ctx = measure_context(&bench.rng, WARMUP + n)?;
    eprintln!(
        "context (µs, same CPU): Ed25519 sign {:.1}, Ed25519 verify {:.1}, X25519 keygen+agree {:.1}, \
         pool allocate with {} taken {:.1}",
        ctx.ed25519_sign,
        ctx.ed25519_verify,
        ctx.x25519_keygen_agree,
        WARMUP + n,
        ctx.pool_allocate_at_n
    );

    // 4. A restart with every session stored (a store on disk only).
    let stored = WARMUP + n;
    let restarted = match &kind {
        Some(k @ (StoreKind::Local(_) | StoreKind::Etcd(..))) => {
            eprintln!("phase 4: restart with {stored} stored sessions");
            let bytes = k.bytes();
            let (took, _) = restart(bench, k, &pins.0, max_sessions, link_key)?;
            eprintln!(
                "restart: {stored} sessions resumed in {:.1} ms (open + unseal + decode + \
                 map check + resume + commit); store {} bytes per session",
                took.as_secs_f64() * 1e3,
                bytes.map_or("?".into(), |b| (b / stored as u64).to_string())
            );
            Some((took, bytes))
        }
        _ => None,
    };

    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    Ok(schema::CtlBench {
        restart_ms: restarted.map(|(t, _)| round1(t.as_secs_f64() * 1e3)),
        store_bytes_per_session: restarted.and_then(|(_, b)| b).map(|b| b / stored as u64),
        handshakes_per_s: (1e6 / handshake_us).round(),
        handshake_us: round1(handshake_us),
        handshake_step_us: schema::HandshakeSteps {
            hello: round1(us_per(hs.first, n)),
            confirm: round1(us_per(hs.second, n)),
            exit_ack: round1(us_per(hs.third, n)),
        },
        reattaches_per_s: (1e6 / reattach_us).round(),
        reattach_us: round1(reattach_us),
        reattach_step_us: schema::ReattachSteps {
            request: round1(us_per(ra.first, reattaches)),
            confirm: round1(us_per(ra.second, reattaches)),
        },
        reattach_rounds: rounds,
        bytes_per_session_ctl: bytes_per_session.round(),
        bytes_per_session_ctl_note: "controller heap only (requested sizes); kernel map bytes \
                                     are measured elsewhere"
            .into(),
        nonce_cache_bytes_per_session_est: nonce_est.round(),
        session_slot_bytes: entry_bytes,
        sessions: n,
        warmup_sessions: WARMUP,
        db: Some(
            match &kind {
                None => "none",
                Some(StoreKind::Memory(_)) => "memory",
                Some(StoreKind::Local(_)) => "local",
                Some(StoreKind::Etcd(..)) => "etcd",
                Some(StoreKind::Cluster(..)) => "cluster",
            }
            .into(),
        ),
        etcd_per_handshake: etcd_hs.as_ref().map(EtcdCounts::figures),
        etcd_per_reattach: etcd_ra.as_ref().map(EtcdCounts::figures),
        etcd_txns_per_reattach: etcd_ra.as_ref().map(|c| round3(c.txn)),
        etcd_txns_per_handshake: etcd_hs.as_ref().map(|c| round3(c.txn)),
        etcd_rpcs_per_reattach: etcd_ra.as_ref().map(|c| round3(c.rpcs())),
        context_us: schema::ContextUs {
            ed25519_sign: round1(ctx.ed25519_sign),
            ed25519_verify: round1(ctx.ed25519_verify),
            x25519_keygen_agree: round1(ctx.x25519_keygen_agree),
            pool_allocate_at_end: round1(ctx.pool_allocate_at_n),
        },
        cpu: model,
        cpu_index: cpu,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ctl-bench: {e}");
            std::process::exit(2);
        }
    };
    if !jvpn_tests::is_root() {
        eprintln!("ctl-bench: needs root (loads BPF maps under /sys/fs/bpf)");
        std::process::exit(1);
    }
    jvpn_tests::bench::catch_stop_signals();
    match run(&args).and_then(|v| Ok(serde_json::to_string(&v)?)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("ctl-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}
