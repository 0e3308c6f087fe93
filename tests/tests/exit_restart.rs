//! The exit stays consistent with the gateway: an exit killed and restarted while
//! the gateway runs lost every key; the gateway notices (PONG with a new boot) and
//! installs its sessions again, and the tunnel resumes without a new session.

use std::time::{Duration, Instant};

use jvpn_ctl::lab::gateway::Transport::{Lte, Wifi};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH},
    gwlab::GwLab,
    require_root,
    tclient::{TestClient, echo_server},
};

const ECHO: u16 = 7400;

#[test]
fn exit_restart_resumes_the_tunnel_without_a_new_session() {
    require_root!();
    let mut lab = AgentLab::start("xrs", "", &[Wifi, Lte], FAST_HEALTH);
    let before = lab.status();
    let stream = lab.stream(Duration::from_millis(5));
    let echoed = |lab: &AgentLab| lab.echo.counts().0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while echoed(&lab) < 20 {
        assert!(Instant::now() < deadline, "no echoes before the restart");
        std::thread::sleep(Duration::from_millis(10));
    }
    lab.gw
        .stack
        .restart("exit", true)
        .expect("restarting the exit");
    let restarted = Instant::now();
    let at_restart = echoed(&lab);
    // The echo server counts what reaches it through the new exit.
    while echoed(&lab) < at_restart + 20 {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "the tunnel did not resume after the exit restarted; gateway log:\n{}",
            lab.gw.log("gateway")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let resumed = restarted.elapsed();
    let report = stream.finish(Duration::from_millis(200));
    let after = lab.status();
    assert_eq!(after.session_id, before.session_id, "same session");
    assert_eq!(after.sessions_established, 1, "no new handshake");
    assert!(
        lab.gw
            .log("gateway")
            .contains("installing every session again")
    );
    eprintln!(
        "exit kill -9 + restart: tunnel back after {resumed:?}; longest gap {:.0} ms",
        report.gaps.first().map_or(0.0, |g| g.1)
    );
}

/// Both killed (-9) and restarted, the exit first: the new gateway resumes from its
/// store and installs every session at the new exit; the tunnel carries traffic
/// again with the same session and no handshake.
#[test]
fn both_restarted_resume_the_tunnel_without_a_new_session() {
    require_root!();
    let mut lab = GwLab::start("xbr", "");
    let _echo = echo_server(&lab, ECHO + 1);
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    assert_eq!(
        c.echo(Wifi, ECHO + 1, b"before").as_deref(),
        Some(&b"before"[..])
    );
    let before = lab.gw_view(id);
    lab.stack.stop("gateway");
    lab.stack
        .restart("exit", true)
        .expect("restarting the exit");
    lab.stack
        .restart("gateway", true)
        .expect("restarting the gateway");
    assert_eq!(lab.gw_view(id), before, "resumed as it was");
    // The INSTALL goes out at start; the exit may take a moment to acknowledge it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if c.echo(Wifi, ECHO + 1, b"after").as_deref() == Some(&b"after"[..]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no tunnel after both restarted; gateway log:\n{}",
            lab.log("gateway")
        );
    }
    assert_eq!(lab.sessions().len(), 1, "no new session");
}

/// A gateway killed (-9) and restarted resumes its sessions from the store: same id,
/// state, binding and generation, and the tunnel carries traffic again with no new
/// handshake.
#[test]
fn gateway_kill9_resumes_its_sessions() {
    require_root!();
    let mut lab = GwLab::start("xgk", "");
    let _echo = echo_server(&lab, ECHO);
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    assert_eq!(
        c.echo(Wifi, ECHO, b"before").as_deref(),
        Some(&b"before"[..])
    );
    // Ages are whole seconds: let this one reach 1 so "continues" can fail.
    let deadline = Instant::now() + Duration::from_secs(3);
    while lab.session(id).is_some_and(|s| s.age_s < 1) {
        assert!(Instant::now() < deadline, "the session's age does not grow");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = lab.session(id).expect("the session");
    lab.stack
        .restart("gateway", true)
        .expect("restarting the gateway");
    let after = lab.session(id).expect("resumed");
    assert_eq!(
        (
            after.state,
            after.generation,
            after.binding.clone(),
            after.tunnel_addr.clone()
        ),
        (
            before.state,
            before.generation,
            before.binding.clone(),
            before.tunnel_addr.clone()
        )
    );
    assert_eq!(after.version, before.version, "no transition on resume");
    assert!(
        after.age_s >= before.age_s,
        "the age continues across the restart ({} s, then {} s)",
        before.age_s,
        after.age_s
    );
    assert_eq!(c.echo(Wifi, ECHO, b"after").as_deref(), Some(&b"after"[..]));
    let started = lab.events().into_iter().find_map(|e| match e {
        jvpn_ctl::control::api::EventRecord::ControllerStarted { resumed, .. } => Some(resumed),
        _ => None,
    });
    assert_eq!(started, Some(1), "CONTROLLER_STARTED says what was resumed");
    // A reattach after the restart works: keys and sequence came back.
    let ack = c
        .reattach(jvpn_ctl::lab::gateway::Transport::Lte)
        .expect("an answer");
    assert!(
        matches!(
            ack.body,
            jvpn_ctl::proto::Body::ReattachAck { generation: 2, .. }
        ),
        "{ack:?}"
    );
}

/// A host reboot loses the pinned data plane but not the store: the next start
/// loads fresh maps and writes every session's entry from its record; the tunnel
/// works again with the same session.
#[test]
fn after_a_reboot_the_records_reinstall_the_map() {
    require_root!();
    let mut lab = GwLab::start("xrb", "");
    let _echo = echo_server(&lab, ECHO + 2);
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    assert_eq!(
        c.echo(Wifi, ECHO + 2, b"before").as_deref(),
        Some(&b"before"[..])
    );
    let before = lab.gw_view(id);
    lab.stack.stop("gateway");
    // What a reboot does to bpffs: every pin gone.
    for f in std::fs::read_dir(&lab.lab.pins.0).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    lab.stack
        .restart("gateway", false)
        .expect("start after the reboot");
    assert_eq!(lab.gw_view(id), before, "resumed as it was");
    assert_eq!(lab.map_sessions(), 1, "its entry is back");
    let started = lab.events().into_iter().find_map(|e| match e {
        jvpn_ctl::control::api::EventRecord::ControllerStarted {
            resumed,
            reinstalled,
            ..
        } => Some((resumed, reinstalled)),
        _ => None,
    });
    assert_eq!(
        started,
        Some((1, 1)),
        "resumed 1, its map entry reinstalled"
    );
    assert_eq!(
        c.echo(Wifi, ECHO + 2, b"after").as_deref(),
        Some(&b"after"[..])
    );
}

/// A gateway that lost its store (state directory removed) starts over and hands the
/// same tunnel address to the next session. The exit still holds the lost session's
/// keys on it; the gateway owns the pool, so the INSTALL replaces them and the new
/// session completes (it used to be refused until the exit was restarted by hand).
#[test]
fn after_losing_its_store_a_gateway_reuses_the_address() {
    require_root!();
    let mut lab = GwLab::start("xgw", "");
    let _echo = echo_server(&lab, ECHO);
    let first = TestClient::connect(&lab, Wifi);
    let (addr, first_id) = (first.tunnel_addr(), first.id());
    drop(first); // its sockets: the second client binds the same addresses
    let state = lab.dir.join("state");
    lab.stack.stop("gateway");
    std::fs::remove_dir_all(&state).expect("removing the store");
    lab.stack
        .restart("gateway", false)
        .expect("restarting the gateway");
    let mut second = TestClient::connect(&lab, Wifi);
    assert_ne!(second.id(), first_id);
    assert_eq!(second.tunnel_addr(), addr, "the pool starts over");
    assert_eq!(
        second.echo(Wifi, ECHO, b"after the loss").as_deref(),
        Some(&b"after the loss"[..])
    );
}
