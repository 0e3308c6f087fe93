//! `cargo xtask run`'s scenario (`jvpn-ctl lab run`) end to end, and `--keep` /
//! `lab down`.

use std::process::Command;

use jvpn_tests::{gwlab::jvpn_ctl_bin, require_root};

fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("jvl"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lab_scenario_runs_and_cleans_up() {
    require_root!();
    let before = lab_namespaces();
    let out = Command::new(jvpn_ctl_bin())
        .args(["lab", "run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("unchanged through every switch"), "{text}");
    assert!(text.contains("switches      5\n"), "{text}");
    assert!(text.contains("wifi → wifi    rebinding"), "{text}");
    assert!(text.contains(": 0 delivered (must be 0)"), "{text}");
    assert!(text.contains("wifi → lte6"), "{text}");
    assert!(text.contains("Lab removed."), "{text}");
    let left: Vec<String> = lab_namespaces()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn keep_leaves_the_lab_up_and_lab_down_removes_it() {
    require_root!();
    let out = Command::new(jvpn_ctl_bin())
        .args(["lab", "run", "--keep"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let state = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("(lab state: ")
                .and_then(|l| l.strip_suffix(')'))
        })
        .expect("the state file is named")
        .to_owned();
    let name = std::path::Path::new(&state)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let socket = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix("client.sock")
                .map(|p| format!("{}client.sock", p.rsplit(' ').next().unwrap()))
        })
        .expect("the client socket is named");
    let status = Command::new(jvpn_ctl_bin())
        .args(["client", "status", "--socket", &socket])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("ATTACHED"),
        "the kept lab works after `lab run` exited: {status:?}"
    );
    let down = Command::new(jvpn_ctl_bin())
        .args(["lab", "down", &name])
        .output()
        .unwrap();
    assert!(down.status.success());
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&name),
        "namespaces removed"
    );
    assert!(!std::path::Path::new(&state).exists());
    assert!(!std::path::Path::new(&socket).exists());
}
