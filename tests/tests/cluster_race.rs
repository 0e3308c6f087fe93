//! Reattaches for one session arriving at two nodes at once. Three nodes: sessions
//! are born on node 3, node 3's host dies, and once etcd has dropped its lease the
//! very same REATTACH_REQUEST of each session goes to node 1 and node 2 together.
//! Both may try to take the session (a compare-and-swap on its owner key); exactly
//! one challenges and acknowledges, the other denies `ownership_ambiguous`, and
//! afterwards etcd, both controllers and both relays' maps agree on the winner.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use jvpn_common::maps::FLAG_FORWARDING;
use jvpn_ctl::{
    datapath::Pinned,
    lab::{cluster::CLIENT, cluster_stack::ClusterOptions},
    proto::{self, Body, Control},
    session::{Detail, State},
};
use jvpn_tests::{
    cluster::{ClusterStack, ECHO_PORT, LEASE_TTL_S},
    require_root,
    tclient::{Reply, TestClient, Via, now_ms},
};

const SESSIONS: usize = 6;

/// What one node answered a request: `Some(true)` a challenge, `Some(false)` a
/// denial `ownership_ambiguous`; and the challenger's ACK if it came while the other
/// node's answer was still awaited (its CONFIRM goes out at once).
fn answers(c: &mut TestClient, nodes: [SocketAddr; 2]) -> ([Option<bool>; 2], Option<Control>) {
    let mut got = [None, None];
    let mut ack = None;
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.iter().any(Option::is_none) && Instant::now() < deadline {
        let Some((Reply::Control(m), from)) = c.recv_from(1, Duration::from_millis(100)) else {
            continue;
        };
        let i = nodes
            .iter()
            .position(|n| *n == from)
            .unwrap_or_else(|| panic!("an answer from {from}"));
        let challenged = match m.body {
            Body::ReattachChallenge { .. } => true,
            Body::ReattachDenied { reason } => {
                assert_eq!(Detail::from_code(reason), Some(Detail::OwnershipAmbiguous));
                false
            }
            Body::KeepaliveAck { .. } => continue,
            Body::ReattachAck { .. } if got[i] == Some(true) && ack.is_none() => {
                ack = Some(m);
                continue;
            }
            other => panic!("node {} answered {other:?}", i + 1),
        };
        assert!(got[i].is_none(), "node {} answered twice", i + 1);
        got[i] = Some(challenged);
        if challenged {
            let Body::ReattachChallenge { challenge } = m.body else {
                unreachable!()
            };
            let confirm = c.control(Body::ReattachConfirm { challenge });
            c.send_raw(Via(1, from), &confirm);
        }
    }
    (got, ack)
}

#[test]
fn two_nodes_race_for_a_session_and_exactly_one_wins() {
    require_root!();
    let Some(mut s) = ClusterStack::start_with(
        "clr",
        ClusterOptions {
            nodes: 3,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let addrs: Vec<SocketAddr> = s.lab.nodes.iter().map(|n| n.addr()).collect();
    let mut clients: Vec<TestClient> = (0..SESSIONS as u16)
        .map(|i| s.test_client(&[43000 + 2 * i, 43001 + 2 * i], 2))
        .collect();
    let ids: Vec<u64> = clients.iter().map(TestClient::id).collect();
    let v = s.etcd_view();
    for id in &ids {
        assert_eq!(v.owners.get(id).map(|o| o.node), Some(3), "{id:016x}");
    }

    s.kill_node(2);
    s.node_links(2, false);
    s.wait(
        "etcd to drop node 3's lease",
        Duration::from_secs(LEASE_TTL_S + 5),
        || {
            let v = s.etcd_view();
            ids.iter().all(|id| !v.owners.contains_key(id))
        },
    );

    let mut winners = Vec::new();
    let mut both_denied = 0;
    for c in &mut clients {
        let deadline = Instant::now() + Duration::from_secs(10);
        let winner = loop {
            // One request, to both nodes at once: the same bytes, the same counter.
            let req = c.reattach_request(now_ms(), proto::TransportKind::Cellular);
            c.send_raw(Via(1, addrs[0]), &req);
            c.send_raw(Via(1, addrs[1]), &req);
            let (got, early_ack) = answers(c, [addrs[0], addrs[1]]);
            assert!(
                got.iter().all(Option::is_some),
                "both nodes answer: {got:?}\n{}",
                s.logs()
            );
            match got {
                [Some(true), Some(true)] => panic!("both nodes challenged {:016x}", c.id()),
                [Some(true), _] => break (0, early_ack),
                [_, Some(true)] => break (1, early_ack),
                // Neither had seen the owner key go yet; the next round will.
                _ => both_denied += 1,
            }
            assert!(Instant::now() < deadline, "nobody took {:016x}", c.id());
        };
        let (winner, early_ack) = winner;
        // The winner's ACK ends the exchange.
        let ack =
            early_ack.or_else(|| c.recv_control(Via(1, addrs[winner]), Duration::from_secs(3)));
        assert!(
            matches!(
                ack.as_ref().map(|m| &m.body),
                Some(Body::ReattachAck { .. })
            ),
            "node {} acknowledged: {ack:?}\n{}",
            winner + 1,
            s.logs()
        );
        winners.push(winner);
    }

    // Everyone agrees on each winner.
    let v = s.etcd_view();
    for (i, (id, &w)) in ids.iter().zip(&winners).enumerate() {
        let owner = v.owners.get(id).copied();
        assert_eq!(owner.map(|o| o.node), Some(w as u16 + 1), "etcd, {id:016x}");
        let info = s.session(w, *id).expect("the winner holds it");
        assert_eq!((info.state, info.generation), (State::Attached, 2));
        assert_eq!(info.binding, Some(format!("{CLIENT}:{}", 43001 + 2 * i)));
        let loser = 1 - w;
        assert!(s.session(loser, *id).is_none(), "the loser holds nothing");
        for n in [w, loser] {
            let map = Pinned::open(&s.lab.nodes[n].pins.0).unwrap();
            let e = map
                .entry(*id)
                .unwrap_or_else(|| panic!("node {} admits {id:016x}", n + 1));
            assert_eq!(
                e.flags & FLAG_FORWARDING != 0,
                n == w,
                "node {}'s relay forwards {id:016x} only if it owns it",
                n + 1
            );
        }
        assert_eq!(
            clients[i].echo(Via(1, addrs[w]), ECHO_PORT, b"after the race"),
            Some(b"after the race".to_vec()),
            "traffic through the winner"
        );
    }
    let adopting = |n: usize| {
        s.stats(n)
            .and_then(|st| st.cluster)
            .and_then(|c| c.ownership.get("adopting").copied())
            .unwrap_or(0)
    };
    eprintln!(
        "winners {winners:?}; rounds where neither node had seen the lease go: {both_denied}; \
         takeovers started: node 1 {}, node 2 {}",
        adopting(0),
        adopting(1)
    );
}
