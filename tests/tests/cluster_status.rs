//! The operator's view of a cluster, through the real `jvpn-ctl` binary: on two
//! gateway nodes of one cluster (real etcd, the real client agent, namespaces)
//! `cluster status` shows each node's lease, etcd, the nodes and who owns how many
//! sessions, and `sessions` the owner node and epoch; both follow a takeover. A
//! single gateway answers `cluster status` with a one-line error.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use jvpn_ctl::control::api::{ClusterSessions, ClusterStatus, SessionId, SessionInfo};
use jvpn_tests::{cluster::ClusterStack, gwlab::jvpn_ctl_bin, require_root};

/// `jvpn-ctl ARGS --socket SOCK`: (success, stdout, stderr).
fn ctl(sock: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(jvpn_ctl_bin())
        .args(args)
        .arg("--socket")
        .arg(sock)
        .output()
        .expect("running jvpn-ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json<T: serde::de::DeserializeOwned>(sock: &Path, args: &[&str]) -> T {
    let (ok, out, err) = ctl(sock, args);
    assert!(ok, "jvpn-ctl {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("jvpn-ctl {args:?}: {e}: {out}"))
}

fn text(sock: &Path, args: &[&str]) -> String {
    let (ok, out, err) = ctl(sock, args);
    assert!(ok, "jvpn-ctl {args:?}: {err}");
    println!("$ jvpn-ctl {}\n{out}", args.join(" "));
    out
}

/// (node, announced, sessions) of every node `st` lists.
fn nodes(st: &ClusterStatus) -> Vec<(u16, bool, u64)> {
    st.nodes
        .iter()
        .map(|n| (n.node, n.announced, n.sessions))
        .collect()
}

fn counts(owned: u64, foreign: u64, unowned: u64) -> ClusterSessions {
    ClusterSessions {
        owned,
        foreign,
        unowned,
    }
}

#[test]
fn cluster_status_and_owners_follow_a_takeover() {
    require_root!();
    let Some(mut s) = ClusterStack::start("cls") else {
        return;
    };
    let id = SessionId(s.start_attached_client());
    let (n1, n2) = (s.socket(0), s.socket(1));

    // Node 1 owns the session: its epoch is the owner key's create revision.
    let listed: Vec<SessionInfo> = json(&n1, &["sessions", "--json"]);
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].owner_node), (id, Some(1)));
    let e1 = listed[0].owner_epoch.expect("an epoch");
    assert!(e1 > 0);
    let table = text(&n1, &["sessions"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!((col("ID"), col("OWNER")), (id.to_string().as_str(), "1"));
    assert_eq!(col("EPOCH"), e1.to_string());
    let shown = text(&n1, &["session", "show", &id.to_string()]);
    assert!(
        shown.contains(&format!("owner:       node 1, epoch {e1}\n")),
        "{shown}"
    );

    // Both nodes know both nodes; node 2 admits node 1's session.
    let st1: ClusterStatus = json(&n1, &["cluster", "status", "--json"]);
    assert_eq!((st1.node, st1.root.as_str()), (1, "/jvpn/v1/"));
    assert!(st1.lease.live && st1.lease.id != 0 && st1.lease.term == 1);
    assert!(st1.etcd.reachable, "{:?}", st1.etcd);
    assert_eq!(st1.etcd.endpoints, s.etcd.endpoints());
    assert!(st1.etcd.revision.is_some_and(|r| r >= e1 as i64));
    assert_eq!(nodes(&st1), vec![(1, true, 1), (2, true, 0)]);
    assert_eq!(st1.sessions, counts(1, 0, 0));
    let st2: ClusterStatus = json(&n2, &["cluster", "status", "--json"]);
    assert_eq!(nodes(&st2), vec![(1, true, 1), (2, true, 0)]);
    assert_eq!(st2.sessions, counts(0, 1, 0));
    let shown = text(&n1, &["cluster", "status"]);
    assert!(
        shown.starts_with("node 1 of the cluster at /jvpn/v1/\n"),
        "{shown}"
    );
    assert!(shown.contains("\netcd:       reachable ("), "{shown}");
    assert!(
        shown.contains("\nsessions:   1 owned here, 0 of other nodes admitted\n"),
        "{shown}"
    );
    text(&n2, &["cluster", "status"]);

    // Node 1's host dies; node 2 takes the client's reattach once its lease ran out.
    s.kill_node(0);
    s.node_links(0, false);
    let killed = Instant::now();
    s.wait("traffic through node 2", Duration::from_secs(20), || {
        s.ping(Duration::from_millis(300))
    });
    println!("through node 2 after {:?}", killed.elapsed());
    let listed: Vec<SessionInfo> = json(&n2, &["sessions", "--json"]);
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].owner_node), (id, Some(2)));
    let e2 = listed[0].owner_epoch.unwrap();
    assert!(e2 > e1, "the epoch grows: {e1} then {e2}");
    text(&n2, &["sessions"]);
    let st2: ClusterStatus = json(&n2, &["cluster", "status", "--json"]);
    assert_eq!(nodes(&st2), vec![(1, false, 0), (2, true, 1)]);
    assert_eq!(st2.sessions, counts(1, 0, 0));
    assert_eq!(
        st2.ownership.get("adopting"),
        Some(&1),
        "{:?}",
        st2.ownership
    );
    assert_eq!(
        st2.ownership.get("acquired"),
        Some(&1),
        "{:?}",
        st2.ownership
    );
    text(&n2, &["cluster", "status"]);
    let stats = jvpn_ctl::control::Client::connect(&n2)
        .and_then(|mut c| c.stats())
        .expect("node 2's stats");
    let cs = stats.cluster.expect("a cluster node's stats");
    assert!(cs.lease_live);
    assert_eq!(cs.sessions, st2.sessions);
}

#[test]
fn a_single_gateway_is_not_part_of_a_cluster() {
    require_root!();
    let lab = jvpn_tests::gwlab::GwLab::start("clsone", "");
    let (ok, out, err) = ctl(&lab.socket, &["cluster", "status"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(
        err,
        "error: this gateway is not part of a cluster ([cluster] is not configured)\n"
    );
    // Its sessions table has no owner columns; its JSON no owner fields.
    let (ok, out, _) = ctl(&lab.socket, &["sessions", "--json"]);
    assert!(ok && !out.contains("owner"), "{out}");
}

/// A node configured with a pool that overlaps another live node's refuses to start,
/// naming both pools, and leaves the cluster as it was; fixed, it starts.
#[test]
fn a_node_with_another_nodes_pool_refuses_to_start() {
    require_root!();
    let Some(mut s) = ClusterStack::start("clo") else {
        return;
    };
    s.kill_node(1);
    let cfg = s.dir.join("node2.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("10.99.1.0/24", "10.99.0.128/25")).unwrap();
    let err = s
        .try_start_node(1)
        .expect_err("a node whose pool overlaps node 1's must not start");
    let err = err.to_string();
    assert!(
        err.contains("10.99.0.128/25")
            && err.contains("overlaps node 1's pool 10.99.0.0/24")
            && err.contains("a pool of its own"),
        "{err}"
    );
    assert!(
        !s.etcd_view().owners.values().any(|o| o.node == 2),
        "nothing of node 2 in etcd"
    );
    // The same for the IPv6 pools (each node announces `pool6=` beside `pool=`).
    std::fs::write(&cfg, good.replace("fd00:99::100/120", "fd00:99::80/120")).unwrap();
    let err = s
        .try_start_node(1)
        .expect_err("a node whose IPv6 pool overlaps node 1's must not start")
        .to_string();
    assert!(
        err.contains("[pool] cidr6 fd00:99::80/120 overlaps node 1's pool fd00:99::/120"),
        "{err}"
    );
    std::fs::write(&cfg, good).unwrap();
    s.start_node(1);
}
