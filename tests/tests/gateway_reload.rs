//! Live reconfiguration of a running gateway: `jvpn-ctl peers add|remove` reach it
//! through the control socket, `jvpn-ctl reload` and SIGHUP apply the policy and
//! name what needs a restart; a broken file changes nothing; no other session notices.

use std::time::{Duration, Instant};

use jvpn_ctl::{
    control::api::Request,
    lab::gateway::Transport::Wifi,
    proto::{self, Body},
    session::{Reason, State},
};
use jvpn_tests::{
    gwlab::{EXIT_TUN, GwLab},
    require_root,
    tclient::{Reply, TestClient, Via, now_ms, try_handshake},
};
use ring::signature::Ed25519KeyPair;

fn new_key() -> Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "jvpn-ctl failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The kept session is as it was: ATTACHED, same generation, and its KEEPALIVE is
/// answered from the binding.
fn untouched(lab: &GwLab, kept: &mut TestClient, generation: u32) {
    let s = lab
        .session(kept.id())
        .expect("the other session is still listed");
    assert_eq!((s.state, s.generation), (State::Attached, generation));
    let ka = kept.control(Body::Keepalive {
        ts_ms: now_ms(),
        pad: 0,
    });
    kept.send_raw(Wifi, &ka);
    match kept.recv(Wifi, Duration::from_secs(2)) {
        Reply::Control(m) => assert!(
            matches!(m.body, Body::KeepaliveAck { .. }),
            "not a KEEPALIVE_ACK: {m:?}"
        ),
        r => panic!("the other session's KEEPALIVE went unanswered: {r:?}"),
    }
}

#[test]
fn peers_added_and_removed_apply_to_the_running_gateway() {
    require_root!();
    let lab = GwLab::start("reload", "");
    let mut kept = TestClient::connect(&lab, Wifi);
    let generation = lab.session(kept.id()).unwrap().generation;
    let peers = lab.dir.join("peers");
    let peers = peers.to_str().unwrap();

    // A key the gateway does not list: its HELLOs go unanswered.
    let newcomer = new_key();
    let key = proto::identity::public_hex(&newcomer);
    let mut addr = Wifi.client_addr();
    addr.set_port(0);
    let sock = lab.client_udp(&addr.to_string(), Duration::from_millis(100));
    assert_eq!(
        try_handshake(&sock, Wifi.gw_addr(), &newcomer, &lab.gateway_pub, 3).err(),
        Some("no WELCOME")
    );
    drop(sock);

    // Added while the gateway runs: the next handshake is taken.
    let out = ok(&lab.cli(&["peers", "--peers", peers, "add", &key, "--name", "newcomer"]));
    assert!(out.contains("added"), "{out}");
    assert!(
        out.contains("reloaded: 2 peers (+1 -0), 0 sessions of removed peers closed"),
        "{out}"
    );
    addr.set_port(41_999);
    let binds = [addr];
    let gw = Via(0, Wifi.gw_addr());
    let mut c = TestClient::connect_in(
        &lab.lab.client,
        &binds,
        gw,
        &newcomer,
        &lab.gateway_pub,
        EXIT_TUN.parse().unwrap(),
    );
    assert_eq!(lab.sessions().len(), 2);
    untouched(&lab, &mut kept, generation);

    // Removed: its session ends with CLOSE (peer_removed); the other goes on.
    let out = ok(&lab.cli(&["peers", "--peers", peers, "remove", "newcomer"]));
    assert!(
        out.contains("reloaded: 1 peers (+0 -1), 1 sessions of removed peers closed"),
        "{out}"
    );
    let close = c
        .recv_control(gw, Duration::from_secs(3))
        .expect("a CLOSE for the removed peer's session");
    assert_eq!(
        close.body,
        Body::Close {
            reason: Reason::PeerRemoved.code()
        }
    );
    lab.wait_event("the session's TERMINATED", Duration::from_secs(3), |e| {
        matches!(e, jvpn_ctl::control::api::EventRecord::StateChange {
            session_id, to: State::Terminated, reason: Reason::PeerRemoved, ..
        } if session_id.0 == c.id())
    });
    let ids: Vec<u64> = lab.sessions().iter().map(|s| s.id.0).collect();
    assert_eq!(ids, [kept.id()]);
    untouched(&lab, &mut kept, generation);
}

#[test]
fn a_reload_applies_the_policy_names_what_needs_a_restart_and_refuses_a_broken_file() {
    require_root!();
    let mut lab = GwLab::start("reloadp", "");
    let mut kept = TestClient::connect(&lab, Wifi);
    let generation = lab.session(kept.id()).unwrap().generation;
    let policy = |lab: &GwLab| lab.request(&Request::Policy)["max_switches_per_minute"].clone();
    let before = policy(&lab);
    let cfg = lab.dir.join("gateway.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();

    // A policy change and a port change: one applies, the other waits for a restart.
    let changed = format!("port = 51999\n{text}")
        .replace("[policy]\n", "[policy]\nmax_switches_per_minute = 3\n");
    std::fs::write(&cfg, &changed).unwrap();
    let out = ok(&lab.cli(&["reload"]));
    assert!(out.contains("applied: policy"), "{out}");
    assert!(
        out.contains("changed but applied only by a restart: port"),
        "{out}"
    );
    assert_eq!(policy(&lab), 3, "was {before}");
    untouched(&lab, &mut kept, generation);

    // A file that does not validate: refused, the running policy kept.
    std::fs::write(
        &cfg,
        changed.replace("max_switches_per_minute = 3", "max_switches_per_minute = 0"),
    )
    .unwrap();
    let out = lab.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nothing changed") && err.contains("max_switches_per_minute"),
        "{err}"
    );
    assert_eq!(policy(&lab), 3);

    // SIGHUP does the same as `jvpn-ctl reload`.
    std::fs::write(
        &cfg,
        changed.replace("max_switches_per_minute = 3", "max_switches_per_minute = 7"),
    )
    .unwrap();
    let pid = lab.pid("gateway").expect("the gateway runs");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let start = Instant::now();
    while policy(&lab) != 7 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload the policy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.gateway_alive());
    untouched(&lab, &mut kept, generation);
}
