//! A seeded random soak of the cluster: two gateway nodes, a three-member etcd, the
//! exit, and four sessions of protocol-level clients that send tunnel traffic all
//! the time — each on its current route (its socket to its gateway node) and, now
//! and then, a packet deliberately on a route that is no longer current. Faults
//! come one after another: a node's host dies (`kill -9`, links down) and comes
//! back, a controller restarts (`kill -9`, pinned relay left running), a node is cut
//! off from etcd and healed, an etcd member dies and returns (two dead: no quorum),
//! a client moves to another socket (a new binding). Each client reattaches on its
//! own when its traffic stops coming back, trying the nodes in turn.
//!
//! Checked throughout: the exit delivers no packet sent from a binding that was no
//! longer current; etcd never holds a session key other than one owner key and
//! one record, and a session's owner epoch never goes down. At the end, with
//! everything healed: every session ATTACHED on exactly one node, the one etcd
//! names, with traffic flowing — or TERMINATED with a reason.
//!
//! `JVPN_SOAK_SEED` picks the seed (printed either way), `JVPN_SOAK_FAULTS` the
//! number of faults (at least 200).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use jvpn_ctl::{
    lab::{cluster_stack::ClusterOptions, etcd_view},
    proto::{self, Body},
    session::{Detail, State},
};
use jvpn_tests::{
    cluster::{ClusterStack, ECHO_PORT},
    require_root,
    tclient::{Reply, TestClient, Via, now_ms, udp_payload},
};

const CLIENTS: usize = 4;
const SOCKETS: usize = 3;
const NODES: usize = 2;
const MAGIC: &[u8; 4] = b"SOAK";
/// Silence on the current route for this long makes a client reattach.
const SILENCE: Duration = Duration::from_millis(600);

/// A client's socket and the node (0-based) it sends to.
type Route = (usize, usize);

/// splitmix64: small, seeded, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a client thread reports.
#[derive(Default)]
struct Tally {
    stop: AtomicBool,
    /// Move requests made; the thread moves while it has seen fewer.
    moves: AtomicU64,
    delivered: AtomicU64,
    stale_sent: AtomicU64,
    stale_delivered: AtomicU64,
    switches: AtomicU64,
    denials: AtomicU64,
    /// Milliseconds (unix) of the last echo on the current route.
    last_echo_ms: AtomicU64,
    current: Mutex<(usize, usize)>,
    /// Each stale probe's route and when it went out, by sequence number; the ones
    /// delivered, for the failure message.
    stale_log: Mutex<BTreeMap<u32, (Route, u64)>>,
    stale_seen: Mutex<Vec<String>>,
    /// The last reattach attempt: (socket, node), what came back, when.
    last_attempt: Mutex<String>,
}

/// The payload of a tagged probe: magic, client, stale flag, sequence.
fn tag(client: u8, stale: bool, seq: u32) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend([client, stale as u8]);
    v.extend(seq.to_be_bytes());
    v
}

struct Driver {
    c: TestClient,
    me: u8,
    nodes: [SocketAddr; NODES],
    t: Arc<Tally>,
    cur: (usize, usize),
    seq: u32,
    /// Sockets (bindings) that were current and were replaced by an acknowledged
    /// switch, and not tried since (a reattach whose answer got lost may have moved
    /// the binding there): a packet from one of these must never be delivered.
    retired: Vec<usize>,
}

impl Driver {
    fn note(&self, reply: &Reply) {
        if let Reply::Data(inner) = reply {
            let p = udp_payload(inner);
            if p.len() == 10 && &p[..4] == MAGIC && p[4] == self.me {
                if p[5] == 1 {
                    self.t.stale_delivered.fetch_add(1, Relaxed);
                    let seq = u32::from_be_bytes(p[6..10].try_into().unwrap());
                    let sent = self.t.stale_log.lock().unwrap().get(&seq).copied();
                    self.t.stale_seen.lock().unwrap().push(format!(
                        "client {} probe {seq} sent {sent:?} (route (socket, node), unix ms), \
                         echoed at {}; current {:?}",
                        self.me,
                        now_ms(),
                        self.cur
                    ));
                } else {
                    self.t.delivered.fetch_add(1, Relaxed);
                    self.t.last_echo_ms.store(now_ms(), Relaxed);
                }
            }
        }
    }

    /// Everything waiting on every socket, for up to `within`.
    fn drain(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            for s in 0..SOCKETS {
                if let Some((r, _)) = self.c.recv_from(s, Duration::from_millis(1)) {
                    self.note(&r);
                }
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    /// One reattach over `(sock, node)`: true on ACK. DATA arriving meanwhile is
    /// tallied like any other.
    fn reattach(&mut self, sock: usize, node: usize) -> bool {
        self.retired.retain(|r| *r != sock);
        let to = Via(sock, self.nodes[node]);
        let req = self
            .c
            .reattach_request(now_ms(), proto::TransportKind::Cellular);
        self.c.send_raw(to, &req);
        let deadline = Instant::now() + Duration::from_millis(1500);
        let ok = self.await_reattach(to, sock, node, deadline);
        *self.t.last_attempt.lock().unwrap() = format!("({sock}, {node}) at {}: {ok:?}", now_ms());
        ok == Ok(())
    }

    fn await_reattach(
        &mut self,
        to: Via,
        sock: usize,
        node: usize,
        deadline: Instant,
    ) -> Result<(), String> {
        while Instant::now() < deadline {
            let Some((r, from)) = self.c.recv_from(sock, Duration::from_millis(20)) else {
                continue;
            };
            if from != self.nodes[node] {
                self.note(&r);
                continue;
            }
            match r {
                Reply::Control(m) => match m.body {
                    Body::ReattachChallenge { challenge } => {
                        let confirm = self.c.control(Body::ReattachConfirm { challenge });
                        self.c.send_raw(to, &confirm);
                    }
                    Body::ReattachAck { .. } => return Ok(()),
                    Body::ReattachDenied { reason } => {
                        self.t.denials.fetch_add(1, Relaxed);
                        return Err(format!("denied {:?}", Detail::from_code(reason)));
                    }
                    other => return Err(format!("answered {other:?}")),
                },
                other => self.note(&other),
            }
        }
        Err("no answer".into())
    }

    fn send(&mut self, route: (usize, usize), stale: bool) {
        self.seq += 1;
        if stale {
            self.t
                .stale_log
                .lock()
                .unwrap()
                .insert(self.seq, (route, now_ms()));
        }
        let pkt = self.c.data(ECHO_PORT, &tag(self.me, stale, self.seq));
        self.c.send_raw(Via(route.0, self.nodes[route.1]), &pkt);
    }

    fn run(mut self) {
        let mut moves_seen = 0;
        let mut i = 0u64;
        self.t.last_echo_ms.store(now_ms(), Relaxed);
        while !self.t.stop.load(Relaxed) {
            let wanted = self.t.moves.load(Relaxed);
            let silent = now_ms().saturating_sub(self.t.last_echo_ms.load(Relaxed))
                > SILENCE.as_millis() as u64;
            if wanted > moves_seen || silent {
                let sock = if wanted > moves_seen {
                    (self.cur.0 + 1) % SOCKETS
                } else {
                    self.cur.0
                };
                let order = [self.cur.1, 1 - self.cur.1];
                if let Some(&node) = order.iter().find(|&&n| self.reattach(sock, n)) {
                    if sock != self.cur.0 {
                        self.retired.push(self.cur.0);
                    }
                    self.cur = (sock, node);
                    *self.t.current.lock().unwrap() = self.cur;
                    self.t.switches.fetch_add(1, Relaxed);
                    self.t.last_echo_ms.store(now_ms(), Relaxed);
                    moves_seen = wanted;
                } else {
                    // Every node refused or said nothing: a moment before the next
                    // round, as a client agent waits between attempts.
                    self.drain(Duration::from_millis(100));
                }
                continue;
            }
            self.send(self.cur, false);
            i += 1;
            if i.is_multiple_of(4) && !self.retired.is_empty() {
                // From a replaced binding, to either node.
                let sock = self.retired[(i / 4) as usize % self.retired.len()];
                self.send((sock, (i / 4) as usize % NODES), true);
                self.t.stale_sent.fetch_add(1, Relaxed);
            } else if i % 4 == 2 {
                // The current binding to the node that does not own the session: a
                // former owner still relays it, and the exit must drop it
                // (`data_stale_owner`). It may also be delivered the right way: the
                // lab's bridge floods frames for a node whose links are down to the
                // owner too, whose relay forwards them (it does not check that the
                // frame was addressed to it).
                self.send((self.cur.0, 1 - self.cur.1), false);
            }
            self.drain(Duration::from_millis(5));
        }
    }
}

/// The reason session `id` was TERMINATED with, as a node's events tell.
fn terminated(s: &ClusterStack, id: u64) -> Option<String> {
    let id = format!("{id:016x}");
    (0..NODES).find_map(|n| {
        s.events(n)
            .lines()
            .filter(|l| l.contains("STATE_CHANGE") && l.contains(&id))
            .filter(|l| l.contains("\"to\":\"TERMINATED\""))
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                Some(v["reason"].as_str()?.to_owned())
            })
    })
}

/// Starts node `n` as its supervisor would: again while it exits because it could
/// not join the cluster yet (etcd just regained its leader).
fn start(s: &mut ClusterStack, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s.try_start_node(n) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => eprintln!("soak: {e}; starting it again"),
            Err(e) => panic!("node {} does not start: {e}\n{}", n + 1, s.logs()),
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// One session at the end, while it settles.
#[derive(Debug)]
#[allow(dead_code)] // `id` and `last` are for the failure message
struct Settling {
    id: u64,
    /// The nodes (0-based) that hold it ATTACHED.
    holders: Vec<usize>,
    /// etcd's owner (a node number, 1-based).
    owner: Option<u16>,
    /// etcd holds its record.
    recorded: bool,
    /// The node (0-based) the client is attached through.
    at: usize,
    /// Its traffic comes back.
    fresh: bool,
    /// The client's last reattach attempt.
    last: String,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(usize),
    Revive(usize),
    Restart(usize),
    Cut(usize),
    Heal(usize),
    EtcdKill(usize),
    EtcdRestart(usize),
    Move(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Up,
    Dead,
}

#[test]
fn a_seeded_soak_of_faults_under_traffic() {
    require_root!();
    let seed: u64 = std::env::var("JVPN_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    let faults: usize = std::env::var("JVPN_SOAK_FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
        .max(200);
    eprintln!("soak: seed {seed} (JVPN_SOAK_SEED), {faults} faults");
    let mut rng = Rng(seed);
    let Some(mut s) = ClusterStack::start_with(
        "cls",
        ClusterOptions {
            etcd_members: 3,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let nodes = [s.lab.nodes[0].addr(), s.lab.nodes[1].addr()];
    let mut tallies = Vec::new();
    let mut threads = Vec::new();
    let mut ids = Vec::new();
    for k in 0..CLIENTS {
        let ports: Vec<u16> = (0..SOCKETS)
            .map(|j| 44000 + (k * SOCKETS + j) as u16)
            .collect();
        let birth = k % NODES;
        let c = s.test_client(&ports, birth);
        // Polled in turn with the others: a short wait each.
        for sock in &c.socks {
            sock.set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
        }
        ids.push(c.id());
        let t = Arc::new(Tally::default());
        *t.current.lock().unwrap() = (0, birth);
        tallies.push(t.clone());
        let d = Driver {
            c,
            me: k as u8,
            nodes,
            t,
            cur: (0, birth),
            seq: 0,
            retired: Vec::new(),
        };
        threads.push(thread::spawn(move || d.run()));
    }

    let mut node = [Node::Up; NODES];
    let mut cut = [false; NODES];
    let mut etcd_up = [true; 3];
    let mut epochs: BTreeMap<u64, i64> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    let check_etcd = |s: &ClusterStack, epochs: &mut BTreeMap<u64, i64>, quorum: bool| {
        if !quorum {
            return;
        }
        let v = s.etcd_view();
        assert!(v.strays.is_empty(), "unexpected keys: {:?}", v.strays);
        for (id, o) in &v.owners {
            assert!((1..=NODES as u16).contains(&o.node), "{id:016x}: {o:?}");
            let last = epochs.entry(*id).or_insert(o.epoch);
            assert!(
                o.epoch >= *last,
                "{id:016x}'s epoch went down: {last} → {o:?}"
            );
            *last = o.epoch;
        }
    };
    for _ in 0..faults {
        let quorum = etcd_up.iter().filter(|u| **u).count() >= 2;
        // Every fault that can happen now, weighted; one of them happens.
        let mut can: Vec<Fault> = Vec::new();
        let mut add = |f: Fault, w: usize| can.extend(std::iter::repeat_n(f, w));
        for n in 0..NODES {
            // A node starts only where it reaches an etcd with a quorum.
            let can_start = !cut[n] && quorum;
            match node[n] {
                Node::Up if node[1 - n] == Node::Up => add(Fault::Kill(n), 2),
                Node::Dead if can_start => add(Fault::Revive(n), 4),
                _ => {}
            }
            if node[n] == Node::Up && can_start {
                add(Fault::Restart(n), 1);
            }
            if cut[n] {
                add(Fault::Heal(n), 3);
            } else if node[n] == Node::Up {
                add(Fault::Cut(n), 2);
            }
        }
        let alive = etcd_up.iter().filter(|u| **u).count();
        for (m, up) in etcd_up.iter().enumerate() {
            match up {
                true if alive > 1 => add(Fault::EtcdKill(m), 1),
                false => add(Fault::EtcdRestart(m), 3),
                _ => {}
            }
        }
        for k in 0..CLIENTS {
            add(Fault::Move(k), 1);
        }
        let fault = can[rng.below(can.len() as u64) as usize];
        let kind = match fault {
            Fault::Kill(n) => {
                s.kill_node(n);
                s.node_links(n, false);
                node[n] = Node::Dead;
                "kill"
            }
            Fault::Revive(n) => {
                s.node_links(n, true);
                start(&mut s, n);
                node[n] = Node::Up;
                "revive"
            }
            Fault::Restart(n) => {
                s.kill_node(n);
                start(&mut s, n);
                "restart"
            }
            Fault::Cut(n) | Fault::Heal(n) => {
                let c = matches!(fault, Fault::Cut(_));
                s.cut_from_etcd(n, c);
                cut[n] = c;
                if c { "cut" } else { "heal" }
            }
            Fault::EtcdKill(m) => {
                s.etcd.members[m].kill().unwrap();
                etcd_up[m] = false;
                "etcd_kill"
            }
            Fault::EtcdRestart(m) => {
                s.etcd.members[m].restart().unwrap();
                etcd_up[m] = true;
                "etcd_restart"
            }
            Fault::Move(k) => {
                tallies[k].moves.fetch_add(1, Relaxed);
                "move"
            }
        };
        *counts.entry(kind).or_default() += 1;
        thread::sleep(Duration::from_millis(50 + rng.below(300)));
        check_etcd(&s, &mut epochs, etcd_up.iter().filter(|u| **u).count() >= 2);
        let stale: Vec<String> = tallies
            .iter()
            .flat_map(|t| t.stale_seen.lock().unwrap().clone())
            .collect();
        assert!(
            stale.is_empty(),
            "packets from a replaced binding were delivered:\n{}\n(after {counts:?})\n{}\n\
             node 1 events:\n{}\nnode 2 events:\n{}",
            stale.join("\n"),
            s.logs(),
            s.events(0),
            s.events(1)
        );
    }

    // Heal everything; every session settles.
    for (m, up) in etcd_up.iter_mut().enumerate() {
        if !*up {
            s.etcd.members[m].restart().unwrap();
            *up = true;
        }
    }
    for n in 0..NODES {
        if cut[n] {
            s.cut_from_etcd(n, false);
        }
        if node[n] == Node::Dead {
            s.node_links(n, true);
            start(&mut s, n);
        }
    }
    // Per session: the nodes holding it ATTACHED, etcd's owner, the client's
    // current node, and whether its traffic comes back.
    let state = |s: &ClusterStack| -> Result<Vec<Settling>, String> {
        let v = etcd_view::read(
            &s.lab.exit.name,
            &s.etcd.endpoints(),
            "/jvpn/v1/",
            Duration::from_secs(3),
        )?;
        Ok(ids
            .iter()
            .zip(&tallies)
            .map(|(id, t)| {
                let holders: Vec<usize> = (0..NODES)
                    .filter(|&n| {
                        s.session(n, *id)
                            .is_some_and(|i| i.state == State::Attached)
                    })
                    .collect();
                let fresh = now_ms().saturating_sub(t.last_echo_ms.load(Relaxed)) < 300;
                let (_, at) = *t.current.lock().unwrap();
                let last = t.last_attempt.lock().unwrap().clone();
                Settling {
                    id: *id,
                    holders,
                    owner: v.owners.get(id).map(|o| o.node),
                    recorded: v.records.contains_key(id),
                    at,
                    fresh,
                    last,
                }
            })
            .collect())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = state(&s);
        let ok = st.as_ref().is_ok_and(|st| {
            st.iter().all(|x| {
                let attached = x.holders == [x.at] && x.owner == Some(x.at as u16 + 1) && x.fresh;
                attached || (x.holders.is_empty() && !x.recorded && terminated(&s, x.id).is_some())
            })
        });
        if ok {
            break;
        }
        let events: String = (0..NODES)
            .map(|n| format!("node {} events:\n{}", n + 1, s.events(n)))
            .collect();
        assert!(
            Instant::now() < deadline,
            "sessions did not settle within 30 s:\n{st:#?}\n{}\n{events}",
            s.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
    for t in &tallies {
        t.stop.store(true, Relaxed);
    }
    for th in threads {
        th.join().expect("client thread");
    }
    check_etcd(&s, &mut epochs, true);
    let sum = |f: fn(&Tally) -> &AtomicU64| tallies.iter().map(|t| f(t).load(Relaxed)).sum::<u64>();
    let stale_delivered = sum(|t| &t.stale_delivered);
    let ended: Vec<String> = ids
        .iter()
        .filter_map(|id| terminated(&s, *id).map(|r| format!("{id:016x} {r}")))
        .collect();
    let x = s.exit_counters();
    eprintln!(
        "soak: {faults} faults in {:?} {counts:?}; delivered {} echoes, {} reattaches acknowledged, \
         {} denied; {} packets sent from replaced bindings, {stale_delivered} delivered; \
         exit: data_in {} data_stale_owner {} link_stale_epoch {}; terminated: {ended:?}",
        started.elapsed(),
        sum(|t| &t.delivered),
        sum(|t| &t.switches),
        sum(|t| &t.denials),
        sum(|t| &t.stale_sent),
        x.data_in,
        x.data_stale_owner,
        x.link_stale_epoch,
    );
    assert_eq!(stale_delivered, 0);
    assert!(counts.values().sum::<usize>() >= 200);
    for kind in [
        "kill",
        "revive",
        "restart",
        "cut",
        "heal",
        "move",
        "etcd_kill",
    ] {
        assert!(counts.contains_key(kind), "the seed never injected {kind}");
    }
}
