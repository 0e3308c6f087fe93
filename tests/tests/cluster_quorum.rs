//! etcd loses its quorum (two of three members killed): every reattach, at the owner
//! and at the other node, is denied `ownership_ambiguous` and changes nothing, also
//! once the owner's lease has run out on its own clock; established traffic keeps
//! flowing (the relay and the exit need no etcd). With the members back, the
//! session's next reattach succeeds, and it never left its owner.

use std::time::Duration;

use jvpn_ctl::{
    lab::cluster_stack::ClusterOptions,
    proto::Body,
    session::{Detail, State},
};
use jvpn_tests::{
    cluster::{ClusterStack, ECHO_PORT, LEASE_TTL_S, denied},
    require_root,
    tclient::{TestClient, Via},
};

#[test]
fn without_an_etcd_quorum_every_reattach_is_denied_and_nothing_changes() {
    require_root!();
    let Some(mut s) = ClusterStack::start_with(
        "clq",
        ClusterOptions {
            etcd_members: 3,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let (a, b) = (s.lab.nodes[0].addr(), s.lab.nodes[1].addr());
    let mut c = s.test_client(&[42000, 42001, 42002], 0);
    let id = c.id();
    let before = s.session(0, id).expect("node 1 owns it");
    let owner = s.etcd_view().owners[&id];
    let installs = s.exit_counters().link_installs;

    s.etcd.members[1].kill().unwrap();
    s.etcd.members[2].kill().unwrap();
    let check = |c: &mut TestClient, when: &str| {
        for (sock, gw, who) in [(1, a, "the owner"), (1, b, "the other node")] {
            // Every durable step waits for etcd (up to its timeout) without a quorum,
            // so an answer may take longer than the client's wait: it asks again.
            let (reply, tries) = c.reattach_retrying(Via(sock, gw), 3);
            if tries > 1 {
                eprintln!("{who} ({when}) answered after {tries} requests");
            }
            assert_eq!(
                denied(&reply),
                Some(Detail::OwnershipAmbiguous),
                "{who} denies without a quorum ({when}; {tries} requests)\n{}",
                s.logs()
            );
        }
        let now = s.session(0, id).expect("node 1 still holds it");
        assert_eq!(
            (now.state, now.generation, &now.binding),
            (State::Attached, before.generation, &before.binding),
            "nothing changed ({when})"
        );
        assert!(s.session(1, id).is_none(), "node 2 holds nothing ({when})");
        assert_eq!(
            c.echo(Via(0, a), ECHO_PORT, b"no quorum"),
            Some(b"no quorum".to_vec()),
            "established traffic flows ({when})"
        );
    };
    check(&mut c, "at once");
    // Node 1 cannot renew its lease: past its own deadline it stops acting as owner.
    s.wait(
        "node 1's lease to lapse on its own clock",
        Duration::from_secs(LEASE_TTL_S + 5),
        || {
            s.stats(0)
                .and_then(|st| st.cluster)
                .is_some_and(|cl| !cl.lease_live)
        },
    );
    check(&mut c, "after node 1's lease deadline");
    assert_eq!(
        s.exit_counters().link_installs,
        installs,
        "the exit was told nothing"
    );

    for m in &mut s.etcd.members[1..] {
        m.restart().unwrap();
    }
    // The next reattach succeeds at the owner once it has a live lease again.
    let mut tries = 0;
    s.wait(
        "a reattach at the owner after the quorum is back",
        Duration::from_secs(20),
        || {
            tries += 1;
            matches!(
                c.reattach(Via(2, a)).map(|m| m.body),
                Some(Body::ReattachAck { .. })
            )
        },
    );
    let after = s.session(0, id).expect("node 1 owns it still");
    assert_eq!((after.state, after.generation), (State::Attached, 2));
    assert!(s.session(1, id).is_none());
    let view = s.etcd_view();
    assert_eq!(view.owners[&id].node, 1, "etcd: still node 1's");
    eprintln!(
        "owner epoch {} before, {} after the outage; {tries} reattach attempt(s) after the restore",
        owner.epoch, view.owners[&id].epoch
    );
    assert_eq!(
        c.echo(Via(2, a), ECHO_PORT, b"quorum back"),
        Some(b"quorum back".to_vec())
    );
}
