//! All-traffic mode (`routes = ["0.0.0.0/0", "::/0"]`): everything from the client
//! goes into the tunnel while the agent's own packets still reach its gateways (its
//! sockets carry a mark the policy rules let by), a move to another transport still
//! works, and the mode is undone on exit; after a crash the rules left behind route
//! nothing, and the next start replaces them instead of doubling them.

use std::time::Duration;

use jvpn_ctl::{
    client::fullroute::{FWMARK, TABLE},
    lab::{
        gateway::{LabOptions, Transport::Lte, Transport::Wifi},
        netns::Netns,
    },
};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH},
    require_root,
};

const ANYWHERE: &str = "192.0.2.55";

fn route_get(ns: &Netns, extra: &[&str]) -> String {
    let mut args = vec!["route", "get", ANYWHERE];
    args.extend_from_slice(extra);
    ns.ip(&args).unwrap_or_else(|e| format!("error: {e}"))
}

/// Our policy rules (both families) in the client namespace.
fn rules(ns: &Netns) -> Vec<String> {
    let mut v = Vec::new();
    for fam in ["-4", "-6"] {
        let out = ns.ip(&[fam, "rule", "show"]).unwrap();
        v.extend(
            out.lines()
                .filter(|l| {
                    l.starts_with(&format!("{}:", TABLE - 1)) || l.starts_with(&format!("{TABLE}:"))
                })
                .map(|l| format!("{fam} {l}")),
        );
    }
    v
}

#[test]
fn all_traffic_goes_through_the_tunnel_and_the_agent_still_reaches_its_gateways() {
    require_root!();
    let mut lab = AgentLab::start_edited(
        "fullrt",
        "",
        &[Wifi, Lte],
        FAST_HEALTH,
        LabOptions::default(),
        |c| {
            c.replace(
                "routes = [\"10.99.0.0/24\", \"fd00:99::/64\"]",
                "routes = [\"0.0.0.0/0\", \"::/0\"]",
            )
        },
    );
    let ns = &lab.gw.lab.client;
    let r = rules(ns);
    eprintln!("policy rules: {r:#?}");
    assert_eq!(r.len(), 4, "two rules per family: {r:?}");
    // Any destination: the tunnel; with the agent's mark: not the tunnel.
    let via = route_get(ns, &[]);
    assert!(
        via.contains("dev jvpn0") && via.contains(&format!("table {TABLE}")),
        "{via}"
    );
    let marked = route_get(ns, &["mark", &format!("{FWMARK:#x}")]);
    eprintln!("route get {ANYWHERE}: {via}; with the agent's mark: {marked}");
    assert!(!marked.contains("jvpn0"), "{marked}");

    // Traffic flows both ways through the tunnel, and the agent moves as usual.
    let stream = lab.stream(Duration::from_millis(20));
    lab.wait_traffic(&stream, 20);
    lab.wait_all_healthy();
    lab.move_to(Lte);
    lab.wait_bound(Lte, Duration::from_secs(5));
    lab.wait_traffic(&stream, 20);
    drop(stream);

    // A crash: the rules stay but route nothing (the TUN and its routes are gone).
    let pid = lab.pid("client").expect("the agent runs");
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    lab.stop("client");
    let ns = &lab.gw.lab.client;
    assert_eq!(rules(ns).len(), 4, "a crash runs no cleanup");
    assert!(!route_get(ns, &[]).contains("jvpn0"));

    // The next start replaces them (not 8), and a stop removes them.
    let cfg = std::fs::read_to_string(lab.dir.join("client.toml")).unwrap();
    lab.start_client(&cfg).unwrap();
    lab.wait_bound(Wifi, Duration::from_secs(10));
    assert_eq!(rules(&lab.gw.lab.client).len(), 4);
    assert!(
        lab.log("client")
            .contains("policy rules a previous agent left")
    );
    lab.stop("client");
    let ns = &lab.gw.lab.client;
    assert_eq!(rules(ns), Vec::<String>::new(), "undone on exit");
    assert!(!route_get(ns, &[]).contains("jvpn0"));
}
