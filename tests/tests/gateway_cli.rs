//! The operator's side of a running gateway: `jvpn-ctl` verbs against the control
//! socket, the Prometheus endpoint, and one-line errors for bad input.

use std::process::{Command, Output};

use jvpn_ctl::lab::gateway::Transport::Wifi;
use jvpn_tests::{
    gwlab::{GwLab, jvpn_ctl_bin},
    require_root,
    tclient::TestClient,
};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn fails_with(o: Output, needle: &str) {
    let (out, err) = text(&o);
    assert!(!o.status.success(), "expected failure; stdout: {out}");
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one-line error expected: {err}"
    );
}

#[test]
fn verbs_show_and_kill_sessions_and_metrics_follow() {
    require_root!();
    let lab = GwLab::start("gc", "max_switches_per_minute = 7");
    let c = TestClient::connect(&lab, Wifi);
    let id = format!("{:016x}", c.id());

    let o = lab.cli(&["sessions"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("ATTACHED") && row.contains("10.77.1.2:40000"),
        "{row}"
    );

    let o = lab.cli(&["sessions", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["state"], "ATTACHED");

    let o = lab.cli(&["session", "show", &id]);
    assert!(
        o.status.success() && text(&o).0.contains("10.99.0.2"),
        "{:?}",
        text(&o)
    );
    let o = lab.cli(&["policy", "show"]);
    assert!(
        text(&o).0.contains("max_switches_per_minute = 7"),
        "{:?}",
        text(&o)
    );
    let o = lab.cli(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sessions_by_state"]["ATTACHED"], 1);
    assert_eq!(v["handshakes"]["established"], 1);

    let m = lab.metrics();
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("jvpn_sessions{state=\"ATTACHED\"} 1"), "{m}");
    assert!(
        m.contains("jvpn_xdp_drops_total{reason=\"stale_binding\"} 0"),
        "{m}"
    );

    fails_with(
        lab.cli(&["session", "show", "00000000000000ff"]),
        "no session 00000000000000ff",
    );
    fails_with(
        lab.cli(&["session", "kill", "xyz"]),
        "must be exactly 16 hex digits",
    );

    let o = lab.cli(&["session", "kill", &id]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = lab.cli(&["sessions"]);
    assert!(text(&o).0.contains("no sessions"), "{:?}", text(&o));
    let o = lab.cli(&["events", "--json"]);
    let kinds: Vec<String> = text(&o)
        .0
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // The controller's start comes first (what it resumed from the store).
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("CONTROLLER_STARTED")
    );
    assert!(kinds.iter().any(|k| k == "STATE_CHANGE"));
    assert!(kinds.iter().any(|k| k == "TRANSPORT_SWITCH"));
}

#[test]
fn no_daemon_is_a_one_line_error_naming_the_socket() {
    let o = Command::new(jvpn_ctl_bin())
        .args(["sessions", "--socket", "/nonexistent/jvpn.sock"])
        .output()
        .unwrap();
    fails_with(o, "/nonexistent/jvpn.sock");
}

#[test]
fn bad_gateway_config_is_refused_naming_the_key() {
    let dir = std::env::temp_dir().join(jvpn_tests::unique("jvpn-badcfg-"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gw.toml");
    let base = "interfaces = [\"lo\"]\nidentity = \"/x\"\npeers = \"/y\"\n[exit]\ndata = \"10.0.0.2:1\"\nlink = \"10.0.0.2:2\"\nlink_key = \"/z\"\n[pool]\ncidr = \"10.99.0.0/24\"\n";
    for (extra, needle) in [
        ("[policy]\nmax_switches = 3\n", "max_switches"),
        ("[policy]\ncandidate_ttl_ms = 0\n", "candidate_ttl_ms"),
        ("[policy]\nblacklist = [\"10.0.0.0/33\"]\n", "blacklist"),
    ] {
        std::fs::write(&cfg, format!("{base}{extra}")).unwrap();
        let o = Command::new(jvpn_ctl_bin())
            .args(["gateway", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        fails_with(o, needle);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
