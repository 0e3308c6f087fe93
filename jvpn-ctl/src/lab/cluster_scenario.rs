//! The scenario behind `cargo xtask run -- --cluster` (`jvpn-ctl lab run --cluster`):
//! one VPN session on a gateway cluster of two nodes, A (node 1) and B (node 2), that
//! share their sessions through a 3-member etcd, with every real part
//! ([`super::cluster_stack`]: XDP relays, controllers, the exit with its fencing, the
//! client agent listing both nodes) and a UDP echo stream through the tunnel that
//! measures each interruption.
//!
//! The client attaches through A → A's host dies (`kill -9`, links down): the client
//! reattaches through B, same SessionID → A comes back and leaves the session with B
//! → B is cut off from etcd and the client's NAT mapping moves: B denies the reattach
//! `ownership_ambiguous`, so does A while B's lease lives, then A takes the session
//! over; DATA frames the client sent B earlier are replayed through B, which still
//! relays its old binding, and the exit must deliver none of them; back in touch, B
//! lets the session go → etcd loses its quorum and the mapping moves again: every
//! reattach is denied and nothing changes anywhere; quorum back, the reattach goes
//! through, same SessionID. Every step waits on conditions, none on a fixed sleep.

use std::{
    io::{Error, Result},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    capture::{self, Capture, Frame},
    cluster::CLIENT_PORT,
    cluster_stack::{ClusterOptions, ClusterStack, ECHO_PORT, EXIT_TUN},
    scenario::{follow, line, session_line, tunnel_line},
    traffic::{Stream, StreamReport},
};
use crate::{
    client::ClientStatus,
    control::{
        Client,
        api::{EventRecord, SessionId, SessionInfo, unix_ms},
    },
    datapath::Pinned,
    session::{Detail, State},
};

/// The nodes' lease in the lab: a dead node's sessions wait this long.
pub const LEASE_TTL_S: u64 = 2;
/// One stream packet every 2 ms: the interruption is measured to ±2 ms.
const STREAM_EVERY: Duration = Duration::from_millis(2);
/// DATA frames replayed through the old owner after the takeover.
const REPLAYED: usize = 20;
const NAMES: [&str; 2] = ["A", "B"];

/// Everything the summary shows.
#[derive(Debug)]
pub struct Summary {
    pub session_id: Option<String>,
    /// The same SessionID at every step, and the client never established another.
    pub session_unchanged: bool,
    pub steps: Vec<Step>,
    /// `ownership_ambiguous` denials of the session's reattaches, by phase.
    pub denials: Vec<Denials>,
    /// The session's OWNERSHIP_CHANGE events (both nodes' event logs, deduplicated):
    /// (from node, to node, epoch, the nodes that published it).
    pub ownership_changes: Vec<(Option<u16>, u16, u64, Vec<&'static str>)>,
    pub replayed: usize,
    /// The exit's `data_stale_owner` growth while they were replayed.
    pub replayed_fenced: u64,
    /// Replayed stream packets the exit delivered (the echo server saw them again).
    pub replayed_delivered: u64,
    /// The exit's `data_in` and the echo server's new stream packets over the
    /// replay: the live stream through A, and nothing else.
    pub replay_window: (u64, u64),
    /// Without quorum: the session's state on both nodes and the client's
    /// generation unchanged, no reattach succeeded anywhere.
    pub quorum_unchanged: bool,
    pub stream: StreamReport,
    /// The guarantees that did not hold (empty: all held).
    pub failures: Vec<String>,
    pub wall: Duration,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub what: &'static str,
    /// The node the client is bound through afterwards.
    pub through: &'static str,
    pub generation: u32,
    /// From the fault to the client bound again (none: the step has no outage).
    pub recovered_ms: Option<f64>,
    /// The longest gap in the echo stream during the step (ms; 0: none).
    pub interruption_ms: f64,
    /// The step's span, ms since the stream started.
    window: (f64, f64),
}

#[derive(Debug, Clone)]
pub struct Denials {
    pub phase: &'static str,
    /// At A, at B.
    pub at: [u64; 2],
}

struct Run<'a> {
    s: ClusterStack,
    t0: u64,
    stop: &'a AtomicBool,
    /// The session (0 until it exists).
    id: u64,
    stream_start: Instant,
    steps: Vec<Step>,
    denials: Vec<Denials>,
    failures: Vec<String>,
}

impl Run<'_> {
    /// The client's NAT mapping moves to source `port` (the client reattaches);
    /// when it did.
    fn move_nat(&self, port: u16, again: &str) -> Result<Instant> {
        self.s.lab.rebind_client(Some(port))?;
        let moved = Instant::now();
        self.say(&format!(
            "↻ the client's NAT mapping moves{again} (source port {port}): the client reattaches"
        ));
        Ok(moved)
    }

    fn say(&self, what: &str) {
        line(self.t0, unix_ms(), "lab", what);
    }

    /// Records a guarantee; one that did not hold is shown at once and fails the run.
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            self.say(&format!("✗ NOT HELD: {what}"));
            self.failures.push(what);
        }
    }

    /// Polls `ok` until it holds (`Ok(true)`) or `within` passes (`Ok(false)`).
    fn wait_until(&self, within: Duration, mut ok: impl FnMut() -> bool) -> Result<bool> {
        let end = Instant::now() + within;
        loop {
            if ok() {
                return Ok(true);
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::other("stopped by a signal"));
            }
            if Instant::now() > end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// As [`Run::wait_until`], a timeout being an error with every process's last
    /// lines; `Ok` says how long it took.
    fn wait(&self, what: &str, within: Duration, ok: impl FnMut() -> bool) -> Result<Duration> {
        let start = Instant::now();
        if self.wait_until(within, ok)? {
            return Ok(start.elapsed());
        }
        Err(Error::other(format!(
            "timed out after {within:?} waiting for {what}\n{}",
            self.s.logs()
        )))
    }

    /// Ms since the stream started.
    fn ms(&self) -> f64 {
        self.stream_start.elapsed().as_secs_f64() * 1e3
    }

    fn status(&self) -> Result<ClientStatus> {
        self.s
            .client_status()
            .ok_or_else(|| Error::other("the client agent does not answer"))
    }

    fn addr(&self, n: usize) -> String {
        self.s.lab.nodes[n].addr().to_string()
    }

    /// The node (index) the client's session is bound through, if it is ATTACHED
    /// with no reattach under way.
    fn through(&self, s: &ClientStatus) -> Option<usize> {
        if s.state != State::Attached || s.reattach.is_some() {
            return None;
        }
        (0..2).find(|&n| s.bound_gateway.as_deref() == Some(self.addr(n).as_str()))
    }

    /// The client's status if it is bound through node `n` at `generation` or later.
    fn bound_via(&self, n: usize, generation: u32) -> Option<ClientStatus> {
        self.s
            .client_status()
            .filter(|s| self.through(s) == Some(n) && s.generation >= generation)
    }

    fn holds(&self, n: usize) -> Option<SessionInfo> {
        self.s.session(n, self.id)
    }

    /// Node `n`'s events so far (its event log: it outlives restarts).
    fn node_events(&self, n: usize) -> Vec<EventRecord> {
        self.s
            .events(n)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Node `n`'s `ownership_ambiguous` denials of the session's reattaches since
    /// `since_ms` (Unix ms).
    fn denied(&self, n: usize, since_ms: u64) -> u64 {
        let id = SessionId(self.id);
        self.node_events(n)
            .iter()
            .filter(|e| {
                matches!(e, EventRecord::TransportSwitchDenied {
                    ts_ms, session_id, detail: Detail::OwnershipAmbiguous, ..
                } if *session_id == id && *ts_ms >= since_ms)
            })
            .count() as u64
    }

    fn note_denials(&mut self, phase: &'static str, since_ms: u64) {
        let at = [self.denied(0, since_ms), self.denied(1, since_ms)];
        self.denials.push(Denials { phase, at });
    }

    /// Whether node `n` published an OWNERSHIP_CHANGE of the session to node `to`
    /// since `since_ms`.
    fn ownership_change(&self, n: usize, to: u16, since_ms: u64) -> bool {
        let id = SessionId(self.id);
        self.node_events(n).iter().any(|e| {
            matches!(e, EventRecord::OwnershipChange { ts_ms, session_id, to_node, .. }
                if *session_id == id && *to_node == to && *ts_ms >= since_ms)
        })
    }

    /// Waits (3 s at most) for [`Run::ownership_change`]: a node's event reaches its
    /// log just after the change it reports, so a look at once missed it now and then
    /// on a loaded machine while the summary, read later, showed it.
    fn published(&self, n: usize, to: u16, since_ms: u64) -> Result<bool> {
        self.wait_until(Duration::from_secs(3), || {
            self.ownership_change(n, to, since_ms)
        })
    }

    /// Successful reattaches counted by both nodes (a restarted node counts anew).
    fn successes(&self) -> u64 {
        (0..2)
            .filter_map(|n| {
                Client::connect(self.s.socket(n))
                    .and_then(|mut c| c.stats())
                    .ok()
            })
            .map(|s| s.reattach.get("success").copied().unwrap_or(0))
            .sum()
    }

    /// Waits until `n` more echoes came back: traffic flows.
    fn flowing(&self, stream: &Stream, n: u64, what: &str) -> Result<()> {
        let from = stream.echoed();
        self.wait(what, Duration::from_secs(5), || stream.echoed() >= from + n)
            .map(drop)
    }

    fn step(
        &mut self,
        what: &'static str,
        from_ms: f64,
        recovered: Option<Duration>,
    ) -> Result<ClientStatus> {
        let s = self.status()?;
        self.check(
            s.session_id == Some(SessionId(self.id)),
            format!("{what}: the client's SessionID is {:?}", s.session_id),
        );
        self.steps.push(Step {
            what,
            through: self.through(&s).map_or("-", |n| NAMES[n]),
            generation: s.generation,
            recovered_ms: recovered.map(|d| d.as_secs_f64() * 1e3),
            interruption_ms: 0.0,
            window: (from_ms, self.ms()),
        });
        Ok(s)
    }
}

/// Prints the client transport's moves between the nodes as they happen (the agent
/// publishes no event for them: docs/client.md), until dropped.
struct MoveWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MoveWatch {
    fn start(socket: PathBuf, nodes: [String; 2], t0: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let name = move |a: &str| {
            nodes
                .iter()
                .position(|n| n == a)
                .map_or(a.to_string(), |i| NAMES[i].to_string())
        };
        let thread = std::thread::spawn(move || {
            let mut last: Option<String> = None;
            while !s.load(Ordering::Relaxed) {
                let st = Client::connect(&socket).and_then(|mut c| c.client_status());
                if let Some(t) = st.ok().and_then(|st| st.transports.into_iter().next()) {
                    if last.is_some() && last.as_deref() != Some(t.gateway.as_str()) {
                        let why = t
                            .gateway_moved
                            .as_deref()
                            .and_then(|m| m.split_once(" ("))
                            .map(|(_, r)| format!(" ({}", r))
                            .unwrap_or_default();
                        line(
                            t0,
                            unix_ms(),
                            "client",
                            &format!("transport {} → node {}{why}", t.name, name(&t.gateway)),
                        );
                    }
                    last = Some(t.gateway);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MoveWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Outgoing DATA frames to `to` (IPv4) among `frames`.
fn data_to(frames: &[Frame], to: std::net::Ipv4Addr) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter(|f| f.outgoing && f.is_data() && f.bytes.get(30..34) == Some(&to.octets()))
        .map(|f| f.bytes.clone())
        .collect()
}

fn etcd_err(e: super::etcd::EtcdError) -> Error {
    Error::other(e.to_string())
}

/// Builds the cluster lab, plays the scenario, prints the timeline; everything is
/// torn down when this returns (also on error or interruption).
pub fn run(bin: &Path, stop: &AtomicBool) -> Result<Summary> {
    let started = Instant::now();
    let t0 = unix_ms();
    println!("{:>9}  {:<8} what", "time", "who");
    line(
        t0,
        t0,
        "lab",
        "building namespaces (client, node A, node B, exit; two LANs), starting a \
         3-member etcd and the exit, then both gateway nodes (XDP)",
    );
    let opts = ClusterOptions {
        nodes: 2,
        etcd_members: 3,
        lease_ttl_s: LEASE_TTL_S,
        ..ClusterOptions::default()
    };
    let s = ClusterStack::start("jvc", Path::new("/run/jvpn-lab"), bin, opts)
        .map_err(|e| Error::other(e.to_string()))?;
    for (n, who) in NAMES.iter().enumerate() {
        follow(&s.socket(n), who, t0);
    }
    let mut run = Run {
        s,
        t0,
        stop,
        id: 0,
        stream_start: Instant::now(),
        steps: Vec::new(),
        denials: Vec::new(),
        failures: Vec::new(),
    };
    run.say(&format!(
        "up: A = node 1 at {}, B = node 2 at {}, etcd at {}, lease TTL {LEASE_TTL_S} s",
        run.addr(0),
        run.addr(1),
        run.s.etcd.endpoints().join(" "),
    ));

    // 1. The client attaches; it lists both nodes, A first.
    run.say("[1] starting the client agent: one transport listing both nodes, A first");
    run.s.start_client("")?;
    follow(&run.s.client_socket(), "client", t0);
    let _moves = MoveWatch::start(run.s.client_socket(), [run.addr(0), run.addr(1)], t0);
    run.wait("the session through A", Duration::from_secs(15), || {
        run.bound_via(0, 1).is_some() && run.s.ping(Duration::from_millis(500))
    })?;
    let first = run.status()?;
    run.id = first.session_id.map_or(0, |i| i.0);
    let on_a = run.holds(0);
    run.check(
        on_a.as_ref().is_some_and(|i| i.generation == 1),
        format!("A holds the new session at generation 1 ({on_a:?})"),
    );
    run.check(
        run.holds(1).is_none(),
        "B admits the session, it does not hold it",
    );
    run.stream_start = Instant::now();
    let stream = Stream::start(
        &run.s.lab.client,
        SocketAddr::from((EXIT_TUN, ECHO_PORT)),
        STREAM_EVERY,
    )?;
    run.flowing(&stream, 250, "the echo stream")?;
    run.say(&format!(
        "session {} through A; tunnel traffic: a UDP packet every {} ms to \
         {EXIT_TUN}:{ECHO_PORT}, echoed back",
        SessionId(run.id),
        STREAM_EVERY.as_millis()
    ));
    run.step("client attaches through A", 0.0, None)?;

    // 2. A's host dies.
    let from = run.ms();
    let kill_ms = unix_ms();
    run.say("[2] ✂ A's host dies: its controller killed (kill -9), its links down");
    run.s.kill_node(0);
    run.s.node_links(0, false)?;
    let killed = Instant::now();
    run.wait(
        "the session through B",
        Duration::from_secs(LEASE_TTL_S + 15),
        || run.bound_via(1, 2).is_some(),
    )?;
    run.flowing(&stream, 25, "traffic through B")?;
    let back = killed.elapsed();
    let on_b = run.holds(1);
    run.check(
        on_b.as_ref()
            .is_some_and(|i| i.state == State::Attached && i.generation == 2),
        format!("B holds the session, ATTACHED at generation 2 ({on_b:?})"),
    );
    run.check(
        run.published(1, 2, kill_ms)?,
        "B published an OWNERSHIP_CHANGE to node 2",
    );
    run.say(&format!(
        "traffic through B again, {:.0} ms after the kill (lease TTL {LEASE_TTL_S} s + the \
         client's loss TTL and reattach)",
        back.as_secs_f64() * 1e3
    ));
    run.note_denials("while A's lease lived", kill_ms);
    run.step("A's host dies → reattach through B", from, Some(back))?;

    // 3. A back: the session stays with B.
    let from = run.ms();
    run.say("[3] A's host is back: links up, controller restarted");
    run.s.node_links(0, true)?;
    run.s.start_node(0)?;
    follow(&run.s.socket(0), "A", t0);
    let sock = run.s.socket(0);
    let id = SessionId(run.id);
    // Its view of the cluster: its lease, the session admitted as B's (a map entry
    // that does not forward: the relay's admission check), none of it held.
    let view = || {
        let mut c = Client::connect(&sock).ok()?;
        let st = c.cluster_status().ok()?;
        let held = c.sessions().ok()?.iter().any(|i| i.id == id);
        (st.lease.live && st.sessions.foreign >= 1 && !held).then_some(st)
    };
    run.wait(
        "A to answer with its view of the cluster",
        Duration::from_secs(15),
        || view().is_some(),
    )?;
    let pins = run.s.lab.nodes[0].pins.0.clone();
    let in_map = || {
        Pinned::open(&pins)
            .ok()
            .and_then(|p| p.entry(id.0))
            .is_some_and(|e| !e.forwarding())
    };
    if !run.wait_until(Duration::from_secs(2), in_map)? {
        return Err(Error::other(
            "A admits the session (its cluster status counts it as foreign), but its \
             relay's map has no entry for it: XDP drops the session's packets as \
             unknown_session, so A could never take it over",
        ));
    }
    let st = view().unwrap_or_default();
    run.say(&format!(
        "A is up: lease live (term {}), {} session of another node admitted (a map entry \
         that does not forward), none held",
        st.lease.term, st.sessions.foreign
    ));
    run.flowing(&stream, 250, "traffic through B")?;
    run.check(run.holds(0).is_none(), "A does not take the session back");
    let still = run.holds(1);
    run.check(
        still.as_ref().is_some_and(|i| i.generation == 2),
        format!("B still holds it at generation 2 ({still:?})"),
    );
    run.check(
        run.bound_via(1, 2).is_some(),
        "the client is still bound through B",
    );
    run.say("the session stays with B, traffic flows through B");
    run.step("A back → the session stays with B", from, None)?;

    // 4. B cut off from etcd: B denies, A takes over after B's lease.
    let cap = Capture::start(&run.s.lab.client, "c-lan")?;
    let b_ip = run.s.lab.nodes[1].client_side;
    run.wait(
        "DATA frames to B in the capture",
        Duration::from_secs(5),
        || data_to(&cap.frames(), b_ip).len() >= REPLAYED,
    )?;
    let mut old = data_to(&cap.frames(), b_ip);
    drop(cap);
    let old: Vec<Vec<u8>> = old.split_off(old.len() - REPLAYED);
    let from = run.ms();
    let gen_b = run.status()?.generation;
    run.say(&format!(
        "[4] captured {} DATA frames the client sent B; ✂ B cut off from etcd (nftables \
         in B's namespace drops its TCP to every member)",
        old.len()
    ));
    let cut_ms = unix_ms();
    let cut = Instant::now();
    run.s.cut_from_etcd(1, true)?;
    let moved = run.move_nat(CLIENT_PORT + 1, "")?;
    run.wait(
        "B to deny the reattach ownership_ambiguous",
        Duration::from_secs(10),
        || run.denied(1, cut_ms) >= 1,
    )?;
    run.say("B denies (ownership_ambiguous): it cannot confirm its ownership at etcd");
    run.wait(
        "A to take the session over",
        Duration::from_secs(LEASE_TTL_S + 15),
        || run.bound_via(0, gen_b + 1).is_some(),
    )?;
    let took = cut.elapsed();
    run.flowing(&stream, 25, "traffic through A")?;
    let back = moved.elapsed();
    let a_denied = run.denied(0, cut_ms);
    run.say(&format!(
        "A took the session over {:.0} ms after the cut, once B's lease was gone at etcd \
         (A denied {a_denied} reattaches before)",
        took.as_secs_f64() * 1e3
    ));
    // The last keep-alive etcd had from B went out at most a keep-alive interval (a
    // quarter of the TTL) before the cut; its lease ends a TTL after.
    let earliest = Duration::from_secs(LEASE_TTL_S) * 3 / 4;
    run.check(
        took >= earliest,
        format!("A took over {took:?} after the cut, before B's lease could end"),
    );
    let on_a = run.holds(0);
    run.check(
        on_a.as_ref()
            .is_some_and(|i| i.state == State::Attached && i.generation == gen_b + 1),
        format!(
            "A holds the session, ATTACHED at generation {} ({on_a:?})",
            gen_b + 1
        ),
    );
    run.check(
        run.published(0, 1, cut_ms)?,
        "A published an OWNERSHIP_CHANGE to node 1",
    );
    run.note_denials("B cut off from etcd", cut_ms);
    // B cannot know it lost the session: it still relays its old binding.
    let x0 = run.s.exit_counters();
    let (seen0, dup0) = run.s.echo_counts();
    run.say(&format!(
        "replaying the {} captured frames through B (from the client's old address, B's \
         binding still)",
        old.len()
    ));
    capture::inject(&run.s.lab.client, "c-lan", &old, Duration::from_millis(1))?;
    let replayed = old.len() as u64;
    let exit = run.s.exit().map_err(Error::other)?;
    let fenced_all = run.wait_until(Duration::from_secs(5), || {
        exit.counters().data_stale_owner >= x0.data_stale_owner + replayed
    })?;
    // Anything the exit delivered would come back through A by now.
    run.flowing(&stream, 100, "traffic through A")?;
    let x1 = run.s.exit_counters();
    let (seen1, dup1) = run.s.echo_counts();
    let fenced = x1.data_stale_owner - x0.data_stale_owner;
    let delivered = dup1 - dup0;
    run.say(&format!(
        "the exit dropped {fenced} as data_stale_owner (replays +{}), delivered {delivered}; \
         data_in +{} over the replay, the live stream through A: +{}",
        x1.data_replay - x0.data_replay,
        x1.data_in - x0.data_in,
        seen1 - seen0
    ));
    run.check(
        fenced_all && fenced >= replayed,
        format!("the exit fenced every replayed frame ({fenced} of {replayed})"),
    );
    run.check(
        delivered == 0,
        format!("the exit delivered none of the replayed frames ({delivered})"),
    );
    run.say("B back in touch with etcd (nftables rule removed)");
    run.s.cut_from_etcd(1, false)?;
    run.wait(
        "B to let the session go",
        Duration::from_secs(LEASE_TTL_S + 10),
        || run.holds(1).is_none(),
    )?;
    run.check(
        run.published(1, 1, cut_ms)?,
        "B published its loss (OWNERSHIP_CHANGE to node 1)",
    );
    run.say("B let the session go; A owns it");
    let step4 = run.step("B cut from etcd → A takes over", from, Some(back))?;
    let replay_window = (x1.data_in - x0.data_in, seen1 - seen0);

    // 5. etcd loses its quorum: every reattach denied, nothing changes.
    let from = run.ms();
    let before_a = run.holds(0);
    let before_b = run.holds(1);
    let successes = run.successes();
    let q_ms = unix_ms();
    run.say("[5] ✂ etcd loses its quorum: 2 of its 3 members killed");
    for m in 1..3 {
        run.s.etcd.members[m].kill().map_err(etcd_err)?;
    }
    run.flowing(&stream, 250, "traffic through A without etcd")?;
    run.say("traffic through A goes on (an established binding needs no write)");
    let moved = run.move_nat(CLIENT_PORT + 2, " again")?;
    run.wait(
        "both nodes to deny reattaches",
        Duration::from_secs(15),
        || run.denied(0, q_ms) >= 2 && run.denied(1, q_ms) >= 2,
    )?;
    let now_a = run.holds(0);
    let now_b = run.holds(1);
    let during = run.status()?;
    let same = |a: &Option<SessionInfo>, b: &Option<SessionInfo>| match (a, b) {
        (Some(a), Some(b)) => {
            (a.state, a.generation, &a.binding) == (b.state, b.generation, &b.binding)
        }
        (None, None) => true,
        _ => false,
    };
    let unchanged = same(&before_a, &now_a)
        && same(&before_b, &now_b)
        && during.generation == step4.generation
        && run.successes() == successes;
    run.check(
        unchanged,
        format!(
            "without quorum nothing changes: A {before_a:?} → {now_a:?}, B {before_b:?} → \
             {now_b:?}, client generation {} → {}",
            step4.generation, during.generation
        ),
    );
    run.note_denials("quorum lost", q_ms);
    run.say(&format!(
        "every reattach denied (A {}, B {}); the session unchanged on both nodes; \
         restarting the 2 members",
        run.denied(0, q_ms),
        run.denied(1, q_ms)
    ));
    for m in 1..3 {
        run.s.etcd.members[m].restart().map_err(etcd_err)?;
    }
    run.say("etcd has its quorum again");
    run.wait(
        "the client's reattach after the quorum is back",
        Duration::from_secs(30),
        || {
            run.s
                .client_status()
                .is_some_and(|s| run.through(&s).is_some() && s.generation > step4.generation)
        },
    )?;
    run.flowing(&stream, 25, "traffic after the reattach")?;
    let back = moved.elapsed();
    let last = run.step("etcd quorum lost → denied, then restored", from, Some(back))?;
    run.check(
        last.generation == step4.generation + 1,
        format!(
            "one reattach once the quorum is back: generation {} → {}",
            step4.generation, last.generation
        ),
    );
    run.say(&format!(
        "reattached through {} at generation {}, same SessionID",
        run.through(&last).map_or("-", |n| NAMES[n]),
        last.generation
    ));

    // 6. The summary; the lab goes with `run`.
    let report = stream.finish(Duration::from_millis(300));
    run.say("stopping traffic; tearing down");
    let session_unchanged = last.session_id == first.session_id && last.sessions_established == 1;
    run.check(
        session_unchanged,
        format!(
            "one session throughout (the client established {})",
            last.sessions_established
        ),
    );
    let mut ownership_changes: Vec<(Option<u16>, u16, u64, Vec<&'static str>)> = Vec::new();
    for (n, who) in NAMES.iter().enumerate() {
        for e in run.node_events(n) {
            if let EventRecord::OwnershipChange {
                session_id,
                from_node,
                to_node,
                epoch,
                ..
            } = e
            {
                if session_id != id {
                    continue;
                }
                match ownership_changes
                    .iter_mut()
                    .find(|c| (c.0, c.1, c.2) == (from_node, to_node, epoch))
                {
                    Some(c) if !c.3.contains(who) => c.3.push(who),
                    Some(_) => {}
                    None => ownership_changes.push((from_node, to_node, epoch, vec![who])),
                }
            }
        }
    }
    ownership_changes.sort_by_key(|c| c.2);
    let mut steps = std::mem::take(&mut run.steps);
    for st in &mut steps {
        let (from, to) = st.window;
        st.interruption_ms = report
            .gaps
            .iter()
            .filter(|(start, len)| *start <= to && start + len >= from)
            .map(|(_, len)| *len)
            .fold(0.0, f64::max);
    }
    let summary = Summary {
        session_id: first.session_id.map(|i| i.to_string()),
        session_unchanged,
        steps,
        denials: std::mem::take(&mut run.denials),
        ownership_changes,
        replayed: old.len(),
        replayed_fenced: fenced,
        replayed_delivered: delivered,
        replay_window,
        quorum_unchanged: unchanged,
        stream: report,
        failures: std::mem::take(&mut run.failures),
        wall: started.elapsed(),
    };
    drop(run);
    Ok(summary)
}

/// The summary as printed at the end.
pub fn render(s: &Summary) -> String {
    let mut out = String::from("\nSummary\n");
    out.push_str(&session_line(
        s.session_id.as_deref(),
        s.session_unchanged,
        "unchanged through every step",
        "CHANGED (the client established another session)",
    ));
    out.push_str(&format!(
        "      {:<44} {:<8} {:>10}   {:>9}   {:>12}\n",
        "step", "through", "generation", "recovered", "interruption"
    ));
    for (i, st) in s.steps.iter().enumerate() {
        let ms = |v: f64| format!("{v:.0} ms");
        out.push_str(&format!(
            "   {}  {:<44} {:<8} {:>10}   {:>9}   {:>12}\n",
            i + 1,
            st.what,
            st.through,
            st.generation,
            st.recovered_ms.map_or("-".to_string(), ms),
            if st.interruption_ms > 0.0 {
                ms(st.interruption_ms)
            } else {
                "none".to_string()
            }
        ));
    }
    out.push_str(&format!(
        "  denials       ownership_ambiguous: {}\n",
        s.denials
            .iter()
            .map(|d| format!("{}: A {}, B {}", d.phase, d.at[0], d.at[1]))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    out.push_str(&format!(
        "  ownership     {} OWNERSHIP_CHANGE: {}\n",
        s.ownership_changes.len(),
        s.ownership_changes
            .iter()
            .map(|(from, to, epoch, by)| format!(
                "{} → node {to} (epoch {epoch}; published by {})",
                from.map_or("no owner".to_string(), |f| format!("node {f}")),
                by.join(", ")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    out.push_str(&format!(
        "  stale DATA    {} frames replayed through B after the takeover: {} fenced at the \
         exit (data_stale_owner), {} delivered (must be 0); meanwhile data_in +{}, the live \
         stream through A +{}\n",
        s.replayed, s.replayed_fenced, s.replayed_delivered, s.replay_window.0, s.replay_window.1
    ));
    out.push_str(&format!(
        "  quorum loss   every reattach denied; {}\n",
        if s.quorum_unchanged {
            "session state unchanged on both nodes, no reattach succeeded"
        } else {
            "STATE CHANGED without quorum"
        }
    ));
    out.push_str(&tunnel_line(
        &s.stream,
        s.stream.duplicate_echoes,
        ": the outages above",
    ));
    if s.failures.is_empty() {
        out.push_str("  guarantees    all held\n");
    } else {
        for f in &s.failures {
            out.push_str(&format!("  NOT HELD      {f}\n"));
        }
    }
    out.push_str(&format!("  wall time     {:.1} s\n", s.wall.as_secs_f64()));
    out
}
