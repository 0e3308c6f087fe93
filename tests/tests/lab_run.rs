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

/// The summary's row for the switch `from` → `to`, split on whitespace: `[n, from,
/// "→", to, kind, interruption, "ms", detection, "ms", exchange, "ms", tunnel MTU,
/// tcp stall, "ms"]`.
fn switch_row<'a>(text: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() == 15 && w[1] == from && w[2] == "→" && w[3] == to)
        .unwrap_or_else(|| panic!("no {from} → {to} row: {text}"))
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
    // The tunnel MTU follows the bound transport's path MTU.
    assert_eq!(switch_row(&text, "wifi", "lte")[11], "1336", "{text}");
    assert_eq!(switch_row(&text, "wifi", "lte6")[11], "1196", "{text}");
    assert_eq!(switch_row(&text, "lte", "wifi")[11], "1400", "{text}");
    // A link that goes down is seen at once; a black hole only by its silence.
    let down = switch_row(&text, "wifi", "lte");
    let hole = switch_row(&text, "wifi", "lte6");
    assert_eq!(down.last().copied(), Some("link_down"), "{text}");
    assert_eq!(hole.last().copied(), Some("loss_ttl"), "{text}");
    let detection = |row: &[&str]| row[7].parse::<u64>().unwrap();
    assert!(detection(&down) < 100, "{text}");
    assert!(detection(&hole) >= 400, "{text}");
    // The TCP flow crossed every switch: it never stalled for long (a recovery costs
    // ~500 ms by design, plus TCP's retransmission timeout), and it got through on
    // every transport.
    let tcp = text
        .lines()
        .find_map(|l| l.strip_prefix("  tcp           "))
        .unwrap_or_else(|| panic!("no tcp line: {text}"));
    assert!(!tcp.contains("ended early"), "{text}");
    let stall: f64 = tcp
        .split("longest stall ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stall in `{tcp}`"));
    assert!(stall < 2000.0, "TCP stalled {stall} ms: {text}");
    let by_link = text
        .lines()
        .find_map(|l| l.strip_prefix("  tcp by link   "))
        .unwrap_or_else(|| panic!("no tcp by link line: {text}"));
    for link in ["wifi", "lte", "lte6"] {
        let mbit: f64 = by_link
            .split(", ")
            .find_map(|p| p.strip_prefix(&format!("{link} ")))
            .and_then(|r| r.strip_suffix(" Mbit/s"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {link} goodput in `{by_link}`"));
        assert!(mbit > 0.0, "no TCP goodput over {link}: {text}");
    }
    // IPv6 inside the (dual-stack) tunnel crossed every switch too, also the one to
    // lte6, whose tunnel MTU (1196) is below IPv6's 1280.
    let v6 = text
        .lines()
        .find_map(|l| l.strip_prefix("  tunnel IPv6   "))
        .unwrap_or_else(|| panic!("no IPv6 tunnel line: {text}"));
    let figure = |word: &str| -> u64 {
        v6.split(", ")
            .find_map(|p| p.strip_suffix(word))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{word}` in `{v6}`"))
    };
    let (sent, echoed) = (figure(" packets sent"), figure(" echoed back"));
    assert!(sent > 1000 && echoed * 10 >= sent * 9, "IPv6: {v6}\n{text}");
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
