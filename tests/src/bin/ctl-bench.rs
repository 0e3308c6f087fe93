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
//! Run as root: `cargo run --release -p jvpn-tests --bin ctl-bench -- [--sessions N]
//! [--seconds S]`. Progress goes to stderr; the figures end as one JSON object on
//! stdout.

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
}

const USAGE: &str = "usage: ctl-bench [--sessions N] [--seconds S] [--store DIR|memory|etcd]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sessions: DEFAULT_SESSIONS,
        seconds: 0.0,
        store: None,
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
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?} ({USAGE})")),
        }
    }
    Ok(a)
}

/// Pins this (single-threaded) process to the CPU it is running on; returns that CPU.
fn pin_to_one_cpu() -> anyhow::Result<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu)
        .map_err(|_| anyhow!("sched_getcpu: {}", std::io::Error::last_os_error()))?;
    jvpn_ctl::bench::cpus::pin_current_thread(cpu)?;
    Ok(cpu)
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
    store: Option<(Box<dyn SessionStore>, Sealer)>,
}

/// The daemon's group commit: what a batch changed, durable before its replies.
fn commit(
    core: &mut Core,
    store: &mut Option<(Box<dyn SessionStore>, Sealer)>,
) -> anyhow::Result<()> {
    match store {
        Some((st, sealer)) => match core.persist(st.as_mut(), sealer, 0)? {
            jvpn_ctl::gateway::Commit::Durable => {}
            jvpn_ctl::gateway::Commit::RolledBack { error, .. } => bail!("store: {error}"),
        },
        None => core.discard_pending(),
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
    fn tick(&mut self) -> u64 {
        self.now += 1;
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
            commit(&mut self.core, &mut self.store)?;
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
            commit(&mut self.core, &mut self.store)?;
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
            let now = self.tick();
            let t = Instant::now();
            for ack in &acks {
                self.core.on_link_frame(ack, now);
            }
            commit(&mut self.core, &mut self.store)?;
            steps.third += t.elapsed();
            let established = self.take_udp(&peers, "INSTALL ACK")?;
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
            commit(&mut self.core, &mut self.store)?;
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
            commit(&mut self.core, &mut self.store)?;
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
            node: 0,
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
    let mut core = new_core(identity, Peers::new(), link_key, dp, now);
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
}

impl StoreKind {
    fn new(arg: &Path) -> anyhow::Result<Self> {
        let tmp = std::env::temp_dir().join(format!("ctl-bench-{}", std::process::id()));
        Ok(match arg.to_str() {
            Some("memory") => Self::Memory(tmp),
            Some("etcd") => {
                let etcd = jvpn_ctl::lab::etcd::Etcd::start().context("starting etcd")?;
                eprintln!("ctl-bench: etcd at {}", etcd.endpoint());
                Self::Etcd(Box::new(etcd), tmp)
            }
            _ => {
                std::fs::create_dir_all(arg)?;
                Self::Local(arg.to_path_buf())
            }
        })
    }

    fn open(&self) -> anyhow::Result<(Box<dyn SessionStore>, Sealer)> {
        let key = |dir: &Path| -> anyhow::Result<Sealer> {
            std::fs::create_dir_all(dir)?;
            Ok(Sealer::new(
                &StoreKey::load_or_create(&dir.join("store.key"))?.0,
            ))
        };
        Ok(match self {
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

fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let n = args.sessions;
    let cpu = pin_to_one_cpu()?;
    let model = jvpn_tests::bench::machine::cpu_model().unwrap_or_else(|| "unknown".into());
    eprintln!("ctl-bench: {n} sessions, pinned to CPU {cpu} ({model})");
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
    let core = new_core(gateway, peers, link_key, dp, start);
    let kind = args.store.as_deref().map(StoreKind::new).transpose()?;
    let mut bench = Bench {
        gw_pub: core.gateway_pub(),
        core,
        exit: LinkCrypto::new(&link_key, Dir::ExitToGateway, 0, start * 1000 + 1),
        identities,
        rng,
        now: start,
        created: 0,
        store: match &kind {
            Some(k) => Some(k.open()?),
            None => None,
        },
    };

    // Warm-up (untimed, not counted), then the heap baseline.
    bench.handshakes(WARMUP, None, false)?;
    ensure!(
        bench.core.link_pending() == 0,
        "link messages left unacknowledged"
    );
    let mut clients: Vec<Client> = Vec::with_capacity(n);
    let heap_before = live();

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
    let mut ra = bench.reattach_round(&mut clients, 1)?;
    bench.verify_bindings(&pins.0, &clients, 2)?;

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
    Ok(serde_json::json!({
        "restart_ms": restarted.map(|(t, _)| round1(t.as_secs_f64() * 1e3)),
        "store_bytes_per_session": restarted.and_then(|(_, b)| b).map(|b| b / stored as u64),
        "handshakes_per_s": (1e6 / handshake_us).round(),
        "handshake_us": round1(handshake_us),
        "handshake_step_us": {
            "hello": round1(us_per(hs.first, n)),
            "confirm": round1(us_per(hs.second, n)),
            "exit_ack": round1(us_per(hs.third, n)),
        },
        "reattaches_per_s": (1e6 / reattach_us).round(),
        "reattach_us": round1(reattach_us),
        "reattach_step_us": {
            "request": round1(us_per(ra.first, reattaches)),
            "confirm": round1(us_per(ra.second, reattaches)),
        },
        "reattach_rounds": rounds,
        "bytes_per_session_ctl": bytes_per_session.round(),
        "bytes_per_session_ctl_note": "controller heap only (requested sizes); kernel map bytes are measured elsewhere",
        "nonce_cache_bytes_per_session_est": nonce_est.round(),
        "session_slot_bytes": entry_bytes,
        "sessions": n,
        "warmup_sessions": WARMUP,
        "context_us": {
            "ed25519_sign": round1(ctx.ed25519_sign),
            "ed25519_verify": round1(ctx.ed25519_verify),
            "x25519_keygen_agree": round1(ctx.x25519_keygen_agree),
            "pool_allocate_at_end": round1(ctx.pool_allocate_at_n),
        },
        "cpu": model,
        "cpu_index": cpu,
    }))
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
    match run(&args) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("ctl-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}
