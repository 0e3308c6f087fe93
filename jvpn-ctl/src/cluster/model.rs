//! Model checking (stateright) of session ownership in a cluster (docs/gateway.md
//! "Cluster", ../shared/CLUSTER.md): two gateway nodes, the etcd store (one owner
//! key per session on its owner's lease, a new epoch per acquisition, linearizable
//! compare-and-swap), and the exit (the highest epoch it has seen, INSTALLs and DATA
//! below it refused). A node's lease deadline on its own clock passes before etcd
//! expires the lease (its keep-alive TTL is shorter: `cluster/lease.rs`), which is
//! the one timing assumption, written into the actions' preconditions. INSTALLs are
//! delayed and reordered. This is a model of the design, not of the code: the code's
//! paths are the namespace tests' (`cluster_*`) and the simulation's.
//!
//! Properties: never two acting owners; never two forwarding entries at the
//! exit's epoch; the exit delivers DATA only from the current owner's current
//! binding; sometimes a takeover, sometimes a re-acquisition after a new lease.

use std::collections::BTreeSet;

use stateright::{Checker, Model, Property};

const NODES: usize = 2;
const MAX_EPOCH: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Install {
    node: u8,
    epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Node {
    /// Live by this node's own deadline.
    lease_local: bool,
    /// The epoch this node believes it owns the session at.
    owns: Option<u64>,
    /// Its relay's forwarding entry: (client binding, epoch it was written under).
    plane: Option<(u8, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct S {
    /// etcd: the owner key (node, epoch), each node's lease alive at etcd, the last
    /// epoch handed out.
    owner: Option<(u8, u64)>,
    lease_at_etcd: [bool; NODES],
    last_epoch: u64,
    nodes: [Node; NODES],
    /// The exit: highest epoch seen and who installed it.
    exit: Install,
    installs: BTreeSet<Install>,
    /// The client's address (0 or 1).
    client_at: u8,
    /// DATA the exit delivered that was not from the current owner's binding.
    stale_delivery: bool,
    took_over: bool,
    reacquired: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum A {
    /// Node n's own deadline passes (its keep-alives went unanswered).
    Lapse(u8),
    /// etcd expires node n's lease (after n's own deadline), and the keys on it.
    Expire(u8),
    /// Node n gets a new lease: a new term, its sessions to acquire again.
    NewLease(u8),
    /// The client moves to its other address and reattaches through node n.
    Reattach(u8),
    /// Node n's watch tells it of a newer owner.
    Watch(u8),
    DeliverInstall(Install),
    /// DATA from the client through node n's relay to the exit.
    Data(u8),
}

struct M;

fn acting(s: &S, n: usize) -> bool {
    s.nodes[n].lease_local && s.nodes[n].owns.is_some()
}

impl Model for M {
    type State = S;
    type Action = A;

    fn init_states(&self) -> Vec<S> {
        let node = |owner: bool| Node {
            lease_local: true,
            owns: owner.then_some(1),
            plane: owner.then_some((0, 1)),
        };
        vec![S {
            owner: Some((0, 1)),
            lease_at_etcd: [true; NODES],
            last_epoch: 1,
            nodes: [node(true), node(false)],
            exit: Install { node: 0, epoch: 1 },
            installs: BTreeSet::new(),
            client_at: 0,
            stale_delivery: false,
            took_over: false,
            reacquired: false,
        }]
    }

    fn actions(&self, s: &S, out: &mut Vec<A>) {
        for n in 0..NODES as u8 {
            let i = usize::from(n);
            if s.nodes[i].lease_local {
                out.push(A::Lapse(n));
            } else if s.lease_at_etcd[i] {
                out.push(A::Expire(n));
            } else {
                out.push(A::NewLease(n));
            }
            if s.last_epoch < MAX_EPOCH || s.nodes[i].owns.is_some() {
                out.push(A::Reattach(n));
            }
            out.push(A::Watch(n));
            if s.nodes[i].plane.is_some() {
                out.push(A::Data(n));
            }
        }
        out.extend(s.installs.iter().copied().map(A::DeliverInstall));
    }

    fn next_state(&self, last: &S, a: A) -> Option<S> {
        let mut s = last.clone();
        match a {
            A::Lapse(n) => s.nodes[usize::from(n)].lease_local = false,
            A::Expire(n) => {
                s.lease_at_etcd[usize::from(n)] = false;
                if s.owner.is_some_and(|(o, _)| o == n) {
                    s.owner = None;
                }
            }
            A::NewLease(n) => {
                let node = &mut s.nodes[usize::from(n)];
                s.lease_at_etcd[usize::from(n)] = true;
                node.lease_local = true;
                node.owns = None;
            }
            A::Reattach(n) => {
                let i = usize::from(n);
                // Without a lease it can vouch for, a node changes nothing.
                if !s.nodes[i].lease_local {
                    return Some(s);
                }
                let epoch = match s.owner {
                    // Its own key, at the epoch it holds: the update is guarded by it.
                    Some((o, e)) if o == n && s.nodes[i].owns == Some(e) => e,
                    // No owner: acquire, a new epoch (the key's create revision).
                    None if s.lease_at_etcd[i] => {
                        s.last_epoch += 1;
                        s.owner = Some((n, s.last_epoch));
                        if s.exit.node != n {
                            s.took_over = true;
                        }
                        if last.nodes[i].owns.is_none() && s.exit.node == n {
                            s.reacquired = true;
                        }
                        s.last_epoch
                    }
                    // Another live owner, or a lost CAS: denied, nothing changes.
                    _ => return Some(s),
                };
                s.client_at = 1 - s.client_at;
                s.nodes[i].owns = Some(epoch);
                s.nodes[i].plane = Some((s.client_at, epoch));
                s.installs.insert(Install { node: n, epoch });
            }
            A::Watch(n) => {
                let node = &mut s.nodes[usize::from(n)];
                if let Some((o, e)) = s.owner
                    && o != n
                    && node.plane.is_some_and(|(_, pe)| pe < e)
                {
                    node.owns = None;
                    node.plane = None;
                }
            }
            A::DeliverInstall(x) => {
                s.installs.remove(&x);
                if x.epoch >= s.exit.epoch {
                    s.exit = x;
                }
            }
            A::Data(n) => {
                let (binding, epoch) = s.nodes[usize::from(n)].plane?;
                // The exit takes DATA at its epoch only; the relay forwards only from
                // its entry's binding.
                if epoch == s.exit.epoch {
                    let owner = s.nodes[usize::from(s.exit.node)].plane;
                    if n != s.exit.node || owner.map(|p| p.0) != Some(binding) {
                        s.stale_delivery = true;
                    }
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::<Self>::always("never two acting owners", |_, s| {
                !(acting(s, 0) && acting(s, 1))
            }),
            Property::<Self>::always(
                "never two forwarding entries at the exit's epoch",
                |_, s| {
                    s.nodes
                        .iter()
                        .filter(|n| n.plane.is_some_and(|(_, e)| e == s.exit.epoch))
                        .count()
                        <= 1
                },
            ),
            Property::<Self>::always(
                "the exit delivers only the current owner's current binding",
                |_, s| !s.stale_delivery,
            ),
            Property::<Self>::always("the exit's epoch never goes back", |_, s| {
                s.exit.epoch <= s.last_epoch
            }),
            Property::<Self>::sometimes("a takeover", |_, s| s.took_over && s.exit.node == 1),
            Property::<Self>::sometimes("a re-acquisition after a new lease", |_, s| s.reacquired),
        ]
    }
}

#[test]
fn one_owner_and_one_active_binding_through_lapses_expiries_and_takeovers() {
    let c = M.checker().spawn_bfs().join();
    c.assert_properties();
    eprintln!(
        "cluster ownership model: {} states ({} unique), depth {}",
        c.state_count(),
        c.unique_state_count(),
        c.max_depth()
    );
    assert!(c.unique_state_count() > 100, "{}", c.unique_state_count());
}

/// The properties are not vacuous: without the timing assumption (etcd expiring a
/// lease its node still believes live), two nodes act as owners.
#[test]
fn without_the_deadline_before_the_ttl_two_nodes_would_own() {
    let s = &M.init_states()[0];
    let mut bad = s.clone();
    bad.lease_at_etcd[0] = false;
    bad.owner = None;
    let bad = M.next_state(&bad, A::Reattach(1)).unwrap();
    assert!(acting(&bad, 0) && acting(&bad, 1));
    assert!(!(M.properties()[0].condition)(&M, &bad));
}
