//! Crashes at the two moments that matter for a binding swap (the gateway's test-only
//! fault points): between the map swap and the store commit, and between the commit
//! and the REATTACH_ACK. After a restart the session is consistent — old binding and
//! old generation, or new and new, never a mix — and the client's retry completes.

use std::time::{Duration, Instant};

use jvpn_ctl::{
    lab::gateway::Transport::{Lte, Wifi},
    proto::Body,
};
use jvpn_tests::{
    gwlab::GwLab,
    require_root,
    tclient::{TestClient, echo_server},
};

const ECHO: u16 = 7500;

fn wait_dead(lab: &mut GwLab) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.gateway_alive() {
        assert!(Instant::now() < deadline, "the fault point did not fire");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn acked(reply: Option<jvpn_ctl::proto::Control>) -> Option<u32> {
    match reply?.body {
        Body::ReattachAck { generation, .. } => Some(generation),
        _ => None,
    }
}

/// A session over Wi-Fi, a gateway started with crash point `fault`, a reattach to
/// LTE that it crashes in, and the gateway started again: the lab, the client, and
/// the session as the restarted gateway resumed it.
fn crash_in_a_reattach(
    tag: &str,
    fault: &str,
) -> (
    GwLab,
    TestClient,
    jvpn_ctl::control::api::SessionInfo,
    std::thread::JoinHandle<()>,
) {
    let mut lab = GwLab::start(tag, "");
    let echo = echo_server(&lab, ECHO);
    let mut c = TestClient::connect(&lab, Wifi);
    lab.stack
        .restart_with_env("gateway", false, &[("JVPN_TEST_FAULT", fault)])
        .expect("gateway with the fault point");
    assert_eq!(acked(c.reattach(Lte)), None, "no ACK: it crashed first");
    wait_dead(&mut lab);
    lab.stack.restart("gateway", false).expect("restart");
    let s = lab.session(c.id()).expect("resumed");
    (lab, c, s, echo)
}

#[test]
fn crash_between_swap_and_commit_keeps_the_old_binding() {
    require_root!();
    let (_lab, mut c, s, _echo) = crash_in_a_reattach("gfb", "swap-before-commit");
    assert_eq!(
        (s.generation, s.binding.as_deref()),
        (1, Some(Wifi.client_addr().to_string().as_str())),
        "old binding, old generation (the record wins over the map)"
    );
    assert_eq!(
        c.echo(Wifi, ECHO, b"old").as_deref(),
        Some(&b"old"[..]),
        "and the map forwards the old binding again"
    );
    assert_eq!(acked(c.reattach(Lte)), Some(2), "the retry completes");
    assert_eq!(c.echo(Lte, ECHO, b"new").as_deref(), Some(&b"new"[..]));
}

#[test]
fn crash_between_commit_and_ack_keeps_the_new_binding() {
    require_root!();
    let (_lab, mut c, s, _echo) = crash_in_a_reattach("gfa", "swap-after-commit");
    assert_eq!(
        (s.generation, s.binding.as_deref()),
        (2, Some(Lte.client_addr().to_string().as_str())),
        "new binding, new generation"
    );
    assert_eq!(c.echo(Lte, ECHO, b"new").as_deref(), Some(&b"new"[..]));
    assert_eq!(acked(c.reattach(Lte)), Some(3), "the retry completes");
    assert_eq!(c.echo(Lte, ECHO, b"again").as_deref(), Some(&b"again"[..]));
}
