//! The gateway with its records in etcd (`[store] backend = "etcd"`), in the namespace
//! lab, against a real etcd the test starts in the gateway's namespace: a `kill -9`
//! resumes every session from etcd; with etcd gone, a change that cannot be made
//! durable (nor be told apart from one that was) stops the controller while the
//! pinned relay keeps forwarding; a start with etcd unreachable is refused naming it.

use std::time::{Duration, Instant};

use jvpn_ctl::{
    lab::{
        etcd::{Etcd, EtcdError},
        gateway::Transport::{Lte, Wifi},
    },
    proto::Body,
};
use jvpn_tests::{
    gwlab::GwLab,
    require_root,
    tclient::{TestClient, echo_server},
};

const ECHO: u16 = 7520;

/// etcd in the lab gateway's namespace, or `None` after saying why the test is
/// skipped (not installed, outside CI; under `CI=true` that is a failure).
fn etcd_in(lab: &GwLab, test: &str) -> Option<Etcd> {
    match Etcd::start_in(&lab.lab.gw.name) {
        Ok(e) => Some(e),
        Err(EtcdError::NotInstalled) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "SKIPPED {test}: etcd not installed (run cargo xtask test, which installs etcd-server)"
            );
            None
        }
        Err(e) => panic!("starting etcd: {e}"),
    }
}

#[test]
fn a_gateway_on_etcd_resumes_from_it_and_stops_when_it_cannot_tell() {
    require_root!();
    let mut lab = GwLab::start("get", "");
    let Some(mut etcd) = etcd_in(&lab, module_path!()) else {
        return;
    };
    let _echo = echo_server(&lab, ECHO);
    lab.stack.stop("gateway");
    let cfg = lab.dir.join("gateway.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_timeout_ms = 500\n",
        etcd.endpoint()
    ));
    std::fs::write(&cfg, text).unwrap();
    lab.stack
        .restart("gateway", false)
        .expect("the gateway on etcd");
    assert!(
        lab.log("gateway").contains(&etcd.endpoint()),
        "it says where its records are"
    );

    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    assert_eq!(c.echo(Wifi, ECHO, b"one").as_deref(), Some(&b"one"[..]));
    let before = lab.gw_view(id);
    lab.stack
        .restart("gateway", true)
        .expect("kill -9 and start");
    assert_eq!(lab.gw_view(id), before, "resumed from etcd as it was");
    let ack = c.reattach(Lte).expect("an answer");
    assert!(
        matches!(ack.body, Body::ReattachAck { generation: 2, .. }),
        "{ack:?}"
    );
    assert_eq!(c.echo(Lte, ECHO, b"two").as_deref(), Some(&b"two"[..]));
    let moved = lab.gw_view(id);

    // etcd gone: the next change cannot be written, and the store cannot say whether
    // it was, so the controller stops rather than guess. No ACK leaves.
    etcd.kill().unwrap();
    let reply = c.reattach(Wifi);
    assert!(
        !matches!(
            reply.as_ref().map(|m| &m.body),
            Some(Body::ReattachAck { .. })
        ),
        "{reply:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.stack.exited("gateway").is_none() {
        assert!(Instant::now() < deadline, "the controller did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = lab.log("gateway");
    assert!(log.contains("cannot say whether"), "{log}");
    // The pinned relay still carries the session at its last committed binding.
    assert_eq!(
        c.echo(Lte, ECHO, b"no controller").as_deref(),
        Some(&b"no controller"[..])
    );

    // A start while etcd is down is refused, naming it.
    let err = lab
        .stack
        .restart("gateway", false)
        .expect_err("no start without the store");
    let text = format!("{err}\n{}", lab.log("gateway"));
    assert!(text.contains(&etcd.endpoint()), "{text}");

    // etcd back: the session resumes as the store has it, and moves again.
    etcd.restart().unwrap();
    lab.stack
        .restart("gateway", false)
        .expect("start with etcd back");
    assert_eq!(lab.gw_view(id), moved, "as last committed");
    let ack = c.reattach(Wifi).expect("an answer");
    assert!(
        matches!(ack.body, Body::ReattachAck { generation: 3, .. }),
        "{ack:?}"
    );
    assert_eq!(c.echo(Wifi, ECHO, b"three").as_deref(), Some(&b"three"[..]));
}
