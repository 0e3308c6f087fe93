//! The owner of a session cut off from etcd (nftables in its namespace), with a
//! protocol-level client that holds the session's keys and so can count every
//! packet: the owner's reattaches are denied `ownership_ambiguous` and change
//! nothing; the other node denies too while the owner's lease lives, then takes the
//! session over; DATA the old owner still relays afterwards reaches the exit, which
//! drops every packet of it (`data_stale_owner`) and delivers none; reconnected, the
//! old owner learns it lost the session and lets go of it.

use std::time::{Duration, Instant};

use jvpn_ctl::{
    proto::Body,
    session::{Detail, State},
};
use jvpn_tests::{
    cluster::{ClusterStack, ECHO_PORT, LEASE_TTL_S, denied},
    require_root,
    tclient::{Reply, Via, random},
};

#[test]
fn an_owner_cut_from_etcd_is_fenced_and_taken_over() {
    require_root!();
    let Some(s) = ClusterStack::start("clp") else {
        return;
    };
    let (a, b) = (s.lab.nodes[0].addr(), s.lab.nodes[1].addr());
    let mut c = s.test_client(&[41000, 41001], 0);
    let id = c.id();
    assert_eq!(
        c.echo(Via(0, a), ECHO_PORT, b"through a"),
        Some(b"through a".to_vec())
    );
    let before = s.session(0, id).expect("node 1 owns the session");
    assert_eq!((before.state, before.generation), (State::Attached, 1));

    s.cut_from_etcd(0, true);
    let cut = Instant::now();
    // Node 2 sees node 1's owner key, bound to a lease that etcd still keeps.
    assert_eq!(
        denied(&c.reattach(Via(1, b))),
        Some(Detail::OwnershipAmbiguous),
        "node 2 denies while the owner's lease lives"
    );
    assert!(s.session(1, id).is_none());
    // Node 1 can neither write nor confirm its lease: it denies, and changes nothing.
    assert_eq!(
        denied(&c.reattach(Via(1, a))),
        Some(Detail::OwnershipAmbiguous),
        "the partitioned owner denies its own session's reattach"
    );
    let still = s.session(0, id).expect("node 1 still holds it");
    assert_eq!(
        (still.generation, &still.binding),
        (before.generation, &before.binding),
        "a denied reattach changes nothing"
    );

    // Once etcd has dropped node 1's lease, node 2 takes the session over.
    let mut attempts = 0;
    let took = loop {
        attempts += 1;
        let r = c.reattach(Via(1, b));
        if matches!(r.as_ref().map(|c| &c.body), Some(Body::ReattachAck { .. })) {
            break cut.elapsed();
        }
        assert_eq!(denied(&r), Some(Detail::OwnershipAmbiguous), "{r:?}");
        assert!(
            cut.elapsed() < Duration::from_secs(LEASE_TTL_S + 5),
            "no takeover after {attempts} attempts\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The last keep-alive etcd had from node 1 went out at most a keep-alive
    // interval (a quarter of the TTL) before the cut; its lease ends a TTL after.
    let earliest = Duration::from_secs(LEASE_TTL_S) * 3 / 4;
    assert!(
        took >= earliest,
        "taken over after {took:?}, before the owner's lease ({LEASE_TTL_S} s) could end"
    );
    eprintln!("takeover {took:?} after the cut ({attempts} reattach attempts at node 2)");
    let on_b = s.session(1, id).expect("node 2 owns it");
    assert_eq!((on_b.state, on_b.generation), (State::Attached, 2));
    assert_eq!(
        c.echo(Via(1, b), ECHO_PORT, b"through b"),
        Some(b"through b".to_vec())
    );

    // Node 1 still relays the old binding (it cannot know); the exit fences it.
    let x0 = s.exit_counters();
    const K: u64 = 50;
    let mut probes = Vec::new();
    for _ in 0..K {
        let p: [u8; 12] = random();
        let pkt = c.data(ECHO_PORT, &p);
        c.send_raw(Via(0, a), &pkt);
        probes.push(p);
    }
    s.exit()
        .unwrap()
        .wait_for(
            "the stale owner's DATA at the exit",
            Duration::from_secs(5),
            |x| x.data_stale_owner >= x0.data_stale_owner + K,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", s.logs()));
    let x1 = s.exit_counters();
    assert_eq!(x1.data_stale_owner - x0.data_stale_owner, K);
    assert_eq!(x1.data_in, x0.data_in, "the exit delivered none of them");
    // None of them comes back on either binding (the echo server answers whatever
    // the exit delivers, through the owner, node 2).
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        for sock in [0, 1] {
            let gw = if sock == 0 { a } else { b };
            if let Reply::Data(inner) = c.recv(Via(sock, gw), Duration::from_millis(50)) {
                let payload = jvpn_tests::tclient::udp_payload(&inner);
                assert!(
                    !probes.iter().any(|p| p[..] == payload[..]),
                    "a packet relayed by the old owner was delivered"
                );
            }
        }
    }

    // Back in touch with etcd, node 1 learns it lost the session and lets it go.
    s.cut_from_etcd(0, false);
    s.wait(
        "node 1 to let the session go",
        Duration::from_secs(LEASE_TTL_S + 10),
        || s.session(0, id).is_none(),
    );
    assert!(
        s.events(0)
            .lines()
            .any(|l| l.contains("OWNERSHIP_CHANGE") && l.contains("\"to_node\":2")),
        "node 1 published the loss:\n{}",
        s.events(0)
    );
    assert_eq!(
        c.echo(Via(1, b), ECHO_PORT, b"still b"),
        Some(b"still b".to_vec())
    );
    assert_eq!(s.session(1, id).map(|x| x.generation), Some(2));
}
