//! Two gateway nodes of one cluster on a real etcd, the exit and the real client
//! agent, in namespaces (`jvpn_tests::cluster`): the owner node is killed (`kill -9`)
//! and the client's session continues through the other node, with the same
//! SessionID, the next generation and a new owner epoch; the killed node, back,
//! leaves the session where it is.

use std::time::{Duration, Instant};

use jvpn_ctl::session::State;
use jvpn_tests::{
    cluster::{ClusterStack, LEASE_TTL_S},
    require_root,
};

#[test]
fn the_owner_killed_the_session_continues_on_the_other_node() {
    require_root!();
    let Some(mut s) = ClusterStack::start("clf") else {
        return;
    };
    let id = s.start_attached_client();
    let on_a = s.session(0, id).expect("node 1 owns the new session");
    assert_eq!(on_a.generation, 1);
    assert!(
        s.session(1, id).is_none(),
        "node 2 admits it, it does not hold it"
    );

    // Node 1's host dies (controller killed, links down). Its lease keeps the session its own until it runs out at etcd;
    // then node 2 takes the client's reattach.
    s.kill_node(0);
    s.node_links(0, false);
    let killed = Instant::now();
    s.wait("traffic through node 2", Duration::from_secs(20), || {
        s.ping(Duration::from_millis(300))
    });
    let interruption = killed.elapsed();
    let on_b = s.session(1, id).expect("node 2 owns it now");
    assert_eq!(on_b.state, State::Attached);
    assert_eq!(on_b.generation, 2, "one reattach: generation + 1");
    let st = s.client_status().unwrap();
    assert_eq!(st.session_id.map(|i| i.0), Some(id), "same SessionID");
    // Bounded by the lease TTL plus the client noticing (loss TTL 0.5 s) and its
    // reattach attempts (0.4 s each); the margin covers etcd's lease timing.
    let bound = Duration::from_secs(LEASE_TTL_S) + Duration::from_secs(4);
    assert!(
        interruption < bound,
        "interruption {interruption:?} over {bound:?}"
    );
    eprintln!("failover interruption: {interruption:?} (bound {bound:?})");
    let events = std::fs::read_to_string(s.dir.join("node2-events.jsonl")).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("OWNERSHIP_CHANGE") && l.contains("\"to_node\":2")),
        "an OWNERSHIP_CHANGE to node 2 was published:\n{events}"
    );

    // Node 1 back: the session stays with node 2 and keeps working.
    s.node_links(0, true);
    s.start_node(0);
    // Started, node 1 admits node 2's session in its relay (so that a reattach can
    // reach it), without forwarding it.
    let entry = jvpn_ctl::datapath::Pinned::open(&s.lab.nodes[0].pins.0)
        .unwrap()
        .entry(id)
        .expect("node 1's relay admits node 2's session after a restart");
    assert_eq!(entry.flags & jvpn_common::maps::FLAG_FORWARDING, 0);
    assert!(s.session(0, id).is_none(), "node 1 does not take it back");
    assert!(
        s.ping(Duration::from_secs(1)),
        "traffic still flows through node 2"
    );
    assert_eq!(s.session(1, id).map(|x| x.generation), Some(2));
}

/// Every node down longer than its lease: etcd keeps the session's record but no
/// owner. Both nodes back, the session is nobody's until the client's next
/// reattach, which the node it reaches takes (same SessionID, next generation).
#[test]
fn all_nodes_restarted_after_their_leases_the_next_reattach_resumes_the_session() {
    use jvpn_ctl::lab::{cluster::CLIENT, etcd_view};
    use jvpn_tests::{
        cluster::EXIT_TUN,
        tclient::{TestClient, Via},
    };
    require_root!();
    let Some(mut s) = ClusterStack::start("clz") else {
        return;
    };
    let key = jvpn_ctl::proto::identity::load(&s.dir.join("client.key")).unwrap();
    let gw_pub = jvpn_ctl::proto::identity::public_key(
        &jvpn_ctl::proto::identity::load(&s.dir.join("gateway.key")).unwrap(),
    );
    let a = s.lab.nodes[0].addr();
    let binds = [45000, 45001].map(|p| std::net::SocketAddr::from((CLIENT, p)));
    let mut c = TestClient::connect_in(&s.lab.client, &binds, Via(0, a), &key, &gw_pub, EXIT_TUN);
    let id = c.id();
    let owners = |s: &ClusterStack| {
        etcd_view::read(
            &s.lab.exit.name,
            &s.etcd.endpoints(),
            "/jvpn/v1/",
            Duration::from_secs(2),
        )
        .unwrap()
    };
    assert_eq!(owners(&s).owners.get(&id).map(|o| o.node), Some(1));
    s.kill_node(0);
    s.kill_node(1);
    s.wait("etcd to drop both leases", Duration::from_secs(10), || {
        !owners(&s).owners.contains_key(&id)
    });
    assert!(owners(&s).records.contains_key(&id), "the record stays");
    s.start_node(0);
    s.start_node(1);
    let reply = c.reattach(Via(1, a));
    assert!(
        matches!(
            reply.as_ref().map(|m| &m.body),
            Some(jvpn_ctl::proto::Body::ReattachAck { .. })
        ),
        "the reattach resumes the session: {reply:?}\n{}",
        s.logs()
    );
    let info = s.session(0, id).expect("node 1 holds it again");
    assert_eq!((info.state, info.generation), (State::Attached, 2));
    assert_eq!(owners(&s).owners.get(&id).map(|o| o.node), Some(1));
    assert_eq!(
        c.echo(Via(1, a), jvpn_tests::cluster::ECHO_PORT, b"resumed"),
        Some(b"resumed".to_vec())
    );
}
