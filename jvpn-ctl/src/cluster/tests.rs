//! Against a real etcd started by the test (`lab::etcd`), never a mock.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::lab::etcd::{Etcd, start_or_skip};

/// Waits (8 s at most) for `a` to hold a live lease of a later term than `first`.
fn a_new_term_follows(a: &Cluster, first: &LeaseView) {
    let t0 = Instant::now();
    loop {
        let v = a.lease();
        if v.valid_at(Instant::now()).is_some() && v.term > first.term {
            assert_ne!(v.id, first.id);
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "no new lease after etcd came back: {v:?}, {:?}",
            a.health().last_error
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn join(etcd: &Etcd, root: &str, node: u16, ttl_s: u64) -> Cluster {
    Cluster::join(JoinParams {
        endpoints: vec![etcd.endpoint()],
        root: root.into(),
        node,
        ttl: Duration::from_secs(ttl_s),
        timeout: Duration::from_secs(2),
        about: format!("test node {node}"),
    })
    .unwrap()
}

fn put(id: u64, expect: u64, epoch: u64, v: &[u8]) -> Op {
    Op::Put {
        id,
        expect,
        value: v.to_vec(),
        epoch,
    }
}

fn one(c: &Cluster, op: Op) -> Outcome {
    c.commit(vec![op]).pop().unwrap()
}

fn done(o: Outcome) -> (Option<u64>, u64) {
    match o {
        Outcome::Done { rev, epoch } => (rev, epoch),
        o => panic!("not done: {o:?}"),
    }
}

#[test]
fn one_owner_per_session_and_the_epoch_only_grows() {
    let Some(etcd) = start_or_skip("cluster ownership") else {
        return;
    };
    let root = "/t/own/";
    let a = join(&etcd, root, 1, 1);
    let b = join(&etcd, root, 2, 1);
    assert!(a.lease().valid_at(Instant::now()).is_some());

    // A new session: A creates it and becomes its owner; its epoch is the
    // transaction's revision, as is the record's.
    let (rev, epoch_a) = done(one(&a, put(7, 0, 0, b"v1")));
    assert_eq!(rev, Some(epoch_a));
    // B cannot create it again (session ids are unique cluster-wide), nor take it
    // while A is alive, nor write it with A's epoch.
    for op in [put(7, 0, 0, b"x"), put(7, rev.unwrap(), 0, b"x")] {
        match one(&b, op) {
            Outcome::Lost {
                owner: Some(o),
                rev: r,
            } => {
                assert_eq!((o.node, o.epoch, r), (1, epoch_a, rev.unwrap()))
            }
            o => panic!("B must lose: {o:?}"),
        }
    }
    // A's guarded update goes through; a stale expectation does not.
    let (rev2, e) = done(one(&a, put(7, rev.unwrap(), epoch_a, b"v2")));
    assert_eq!(e, epoch_a);
    assert!(matches!(
        one(&a, put(7, rev.unwrap(), epoch_a, b"v3")),
        Outcome::Lost { .. }
    ));

    // Several sessions at once, each its own transaction: one lost write does not
    // refuse the other.
    let outs = a.commit(vec![put(8, 0, 0, b"n"), put(7, 1, epoch_a, b"stale")]);
    assert!(matches!(outs[0], Outcome::Done { .. }), "{outs:?}");
    assert!(matches!(outs[1], Outcome::Lost { .. }), "{outs:?}");

    // The snapshot and a watch from it agree with what was written.
    let snap = b.snapshot().unwrap();
    let s7 = &snap.sessions[&7];
    assert_eq!(s7.record.as_ref().unwrap().1, b"v2");
    assert_eq!(s7.owner.unwrap().node, 1);
    assert!(snap.nodes.iter().any(|n| n.node == 1) && snap.nodes.iter().any(|n| n.node == 2));
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.watch(snap.revision, tx).unwrap();

    // A dies (its keep-alives stop): B still cannot take the session until A's
    // lease has run out at etcd, then it can, with a larger epoch.
    drop(a);
    let t0 = Instant::now();
    let epoch_b = loop {
        match one(&b, put(7, rev2.unwrap(), 0, b"b")) {
            Outcome::Done { epoch, .. } => break epoch,
            Outcome::Lost { owner: Some(o), .. } => assert_eq!(o.node, 1),
            o => panic!("{o:?}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "A's lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(epoch_b > epoch_a);
    // The watch saw A's owner key go with its lease, and B's arrive.
    let want_owner = Change::Owner {
        id: 7,
        owner: Some(Owner {
            node: 2,
            epoch: epoch_b,
            lease: b.lease().id,
        }),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while !seen.contains(&want_owner) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "watch never showed the takeover: {seen:?}");
        if let Ok(c) = rx.try_recv() {
            seen.push(c);
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(
        seen.contains(&Change::Owner { id: 7, owner: None }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Change::Node { node: 1, up: false }),
        "{seen:?}"
    );

    // A comes back (same node number, a new lease): its old epoch is worth nothing.
    let a2 = join(&etcd, root, 1, 1);
    assert!(matches!(
        one(
            &a2,
            Op::Claim {
                id: 7,
                epoch: epoch_a
            }
        ),
        Outcome::Lost {
            owner: Some(Owner { node: 2, .. }),
            ..
        }
    ));
    assert!(matches!(
        one(&a2, put(7, rev2.unwrap(), epoch_a, b"stale")),
        Outcome::Lost { .. }
    ));
    // B ends the session: record and owner key go together.
    let now = b.get(7).unwrap();
    let (gone, _) = done(one(
        &b,
        Op::Delete {
            id: 7,
            expect: now.record.unwrap().0,
            epoch: epoch_b,
        },
    ));
    assert_eq!(gone, Some(0));
    assert_eq!(b.get(7).unwrap(), Stored::default());
}

#[test]
fn a_restarted_node_claims_its_sessions_and_a_lost_lease_is_acquired_again() {
    let Some(etcd) = start_or_skip("cluster claims") else {
        return;
    };
    let root = "/t/claim/";
    let a = join(&etcd, root, 1, 2);
    let (rev, epoch) = done(one(&a, put(9, 0, 0, b"r")));
    let old_lease = a.lease().id;
    drop(a);
    // Restarted within its TTL: the owner key is still on the old lease; a claim
    // moves it onto the new one and keeps the epoch.
    let a = join(&etcd, root, 1, 2);
    assert_ne!(a.lease().id, old_lease);
    assert_eq!(done(one(&a, Op::Claim { id: 9, epoch })), (None, epoch));
    assert_eq!(a.get(9).unwrap().owner.unwrap().lease, a.lease().id);
    // Once the old lease is gone the session is still A's (the key is on A's new one).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(a.get(9).unwrap().owner.unwrap().epoch, epoch);

    // Resigning frees the sessions at once; acquiring again gives a new epoch.
    a.resign().unwrap();
    assert_eq!(a.get(9).unwrap().owner, None);
    let t0 = Instant::now();
    while a.lease().valid_at(Instant::now()).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no new lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (r, e2) = done(one(
        &a,
        Op::Acquire {
            id: 9,
            expect: rev.unwrap(),
        },
    ));
    assert_eq!(r, None);
    assert!(e2 > epoch);
}

#[test]
fn without_etcd_nothing_is_written_and_the_lease_runs_out_here_first() {
    let Some(etcd) = start_or_skip("cluster outage") else {
        return;
    };
    let a = join(&etcd, "/t/outage/", 1, 2);
    let (rev, epoch) = done(one(&a, put(5, 0, 0, b"r")));
    etcd.pause().unwrap();
    let paused = Instant::now();
    // The node's own deadline: TTL - margin after the last answered keep-alive was
    // sent, so before etcd (which counts from its receipt) can expire the lease.
    let until = a.lease().until.unwrap();
    assert!(
        until < paused + Duration::from_secs(2),
        "{:?}",
        until - paused
    );
    // Ambiguous, never a success.
    assert!(matches!(
        one(&a, put(5, rev.unwrap(), epoch, b"x")),
        Outcome::Failed(_)
    ));
    let t0 = Instant::now();
    while a.lease().valid_at(Instant::now()).is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the deadline never passed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A takeover is refused without a live lease, before anything is sent.
    match one(&a, put(6, 0, 0, b"y")) {
        Outcome::Failed(e) => assert!(e.to_string().contains("no live lease"), "{e}"),
        o => panic!("{o:?}"),
    }
    etcd.resume().unwrap();
}

#[test]
fn a_lease_that_expired_while_etcd_was_away_is_replaced_by_a_new_term() {
    let Some(etcd) = start_or_skip("cluster lease lost") else {
        return;
    };
    let a = join(&etcd, "/t/lost/", 1, 2);
    let first = a.lease();
    assert_eq!(first.term, 1);
    // Paused past the TTL: etcd revokes the lease once it runs again, and the
    // keep-alive stream the node had is gone by then (it timed out meanwhile).
    etcd.pause().unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    assert!(a.lease().valid_at(Instant::now()).is_none());
    etcd.resume().unwrap();
    a_new_term_follows(&a, &first);
}

#[test]
fn a_lease_unconfirmed_past_its_ttl_is_given_up_for_a_new_term() {
    let Some(mut etcd) = start_or_skip("cluster lease unconfirmed") else {
        return;
    };
    let a = join(&etcd, "/t/unconfirmed/", 1, 2);
    let first = a.lease();
    // Down past the TTL, then back: etcd may still have the lease (a new leader
    // extends leases), but this node could not confirm it, so it takes a new one.
    etcd.kill().unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    assert!(a.lease().valid_at(Instant::now()).is_none());
    etcd.restart().unwrap();
    a_new_term_follows(&a, &first);
}
