//! One controller per data plane: a second `jvpn-ctl gateway` on the same pins is
//! refused at once, names the holder, and changes nothing of the live one.

use std::process::Command;

use jvpn_ctl::{lab::gateway::Transport::Wifi, session::State};
use jvpn_tests::{
    gwlab::{GwLab, jvpn_ctl_bin},
    require_root,
    tclient::{TestClient, echo_server},
};

const ECHO: u16 = 7300;

#[test]
fn a_second_controller_is_refused_and_changes_nothing() {
    require_root!();
    let mut lab = GwLab::start("glk", "");
    let _echo = echo_server(&lab, ECHO);
    let mut c = TestClient::connect(&lab, Wifi);
    let id = c.id();
    let before = lab.session(id).expect("the session");
    assert_eq!(lab.map_sessions(), 1);

    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.lab.gw.name))
        .arg(jvpn_ctl_bin())
        .args(["gateway", "--config", "gateway.toml"])
        .current_dir(&lab.dir)
        .output()
        .expect("running a second gateway");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second controller must fail");
    assert!(
        err.contains("another controller (pid ") && err.contains("holds the data plane"),
        "{err}"
    );

    assert!(lab.gateway_alive(), "the first controller still runs");
    assert_eq!(lab.map_sessions(), 1, "its map entry is still there");
    let after = lab.session(id).expect("its session");
    assert_eq!(
        (after.state, after.version, after.generation, after.binding),
        (
            State::Attached,
            before.version,
            before.generation,
            before.binding
        )
    );
    assert_eq!(
        c.echo(Wifi, ECHO, b"still here").as_deref(),
        Some(&b"still here"[..]),
        "and it still carries traffic"
    );
}
