//! Bad operator input gets a one-line error naming the problem and a non-zero exit,
//! and changes nothing.

use std::process::{Command, Output};

use jvpn_ctl::datapath::{AttachMode, Datapath, DatapathConfig};
use jvpn_tests::{
    netns::{Netns, PinDir, veth},
    require_root, unique,
};

fn jvpn_ctl() -> Command {
    Command::new(jvpn_tests::gwlab::jvpn_ctl_bin())
}

fn fails_with(out: Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(stderr.contains(needle), "stderr lacks `{needle}`: {stderr}");
}

#[test]
fn unknown_interface_is_named_and_nothing_stays_attached() {
    require_root!();
    let pins = PinDir::new("cli");
    let out = jvpn_ctl()
        .args([
            "datapath",
            "up",
            "--iface",
            "nosuchif0",
            "--max-sessions",
            "64",
            "--pin-dir",
        ])
        .arg(&pins.0)
        .output()
        .unwrap();
    fails_with(out, "interface `nosuchif0` does not exist");
    assert!(!pins.0.exists(), "a failed `up` must not leave pins behind");
}

#[test]
fn missing_privilege_is_named() {
    require_root!();
    let pins = PinDir::new("cli");
    // Drop to nobody with no capabilities at all.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]);
    let bin = jvpn_ctl().get_program().to_owned();
    let out = cmd
        .arg(bin)
        .args(["datapath", "up", "--iface", "lo", "--pin-dir"])
        .arg(&pins.0)
        .output()
        .unwrap();
    fails_with(out, "missing privilege");
}

#[test]
fn bad_arguments_are_rejected_before_anything_happens() {
    // No root needed: argument parsing comes first.
    let out = jvpn_ctl()
        .args(["datapath", "up", "--iface", "lo", "--port", "0"])
        .output()
        .unwrap();
    fails_with(out, "--port");
    let out = jvpn_ctl()
        .args(["datapath", "up", "--iface", "lo", "--max-sessions", "lots"])
        .output()
        .unwrap();
    fails_with(out, "--max-sessions");
    let out = jvpn_ctl().args(["datapath", "up"]).output().unwrap();
    fails_with(out, "--iface");
}

#[test]
fn status_without_a_data_plane_says_so() {
    require_root!();
    let pins = PinDir::new("cli");
    let out = jvpn_ctl()
        .args(["datapath", "status", "--pin-dir"])
        .arg(&pins.0)
        .output()
        .unwrap();
    fails_with(out, "no pinned data plane here");
}

#[test]
fn a_closed_stdout_ends_quietly() {
    require_root!();
    // A data plane attached in a scratch namespace, for `status` to print about.
    let ns = Netns::new(unique("jcl")).unwrap();
    veth(&ns, "v0", &ns, "v1").unwrap();
    let pins = PinDir::new("cli");
    let _dp = ns.run(|| {
        let mut dp = Datapath::load(DatapathConfig {
            max_sessions: 64,
            pin_dir: pins.0.clone(),
            ..DatapathConfig::default()
        })
        .unwrap();
        dp.attach("v0", AttachMode::Native).unwrap();
        dp
    });
    // `jvpn-ctl datapath status | head` style: the reader is gone before we print.
    let out = jvpn_ctl()
        .args(["datapath", "status", "--pin-dir"])
        .arg(&pins.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            drop(child.stdout.take());
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn client_configuration_errors_name_the_problem() {
    let dir = std::env::temp_dir().join(jvpn_tests::unique("jvpn-cc-"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("client.toml");
    fails_with(
        jvpn_ctl().args(["client"]).output().unwrap(),
        "--config FILE is required",
    );
    fails_with(
        jvpn_ctl()
            .args(["client", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
        "client.toml",
    );
    let key = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    std::fs::write(
        &cfg,
        format!(
            "identity = \"/nonexistent\"\ngateway_public_key = \"{key}\"\n\
             [[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:0\"\n\
             gateway = \"[fd00::1]:51820\"\n"
        ),
    )
    .unwrap();
    fails_with(
        jvpn_ctl()
            .args(["client", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
        "transport[0].gateway",
    );
    fails_with(
        jvpn_ctl()
            .args(["client", "status", "--socket"])
            .arg(dir.join("nothing.sock"))
            .output()
            .unwrap(),
        "nothing.sock",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
