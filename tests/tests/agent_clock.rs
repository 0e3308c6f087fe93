//! A client agent whose wall clock is off (issue 16): the real agent under libfaketime
//! (only the wall clock: `FAKETIME_DONT_FAKE_MONOTONIC=1`) against the real gateway
//! in the lab's namespaces. The gateway answers its stale HELLO with a signed TIME;
//! the agent must be ATTACHED within 2 s of its start, say the offset it found, probe
//! every transport with KEEPALIVEs the gateway finds fresh, and complete a planned
//! reattach (`client move`), all stamped with the gateway's time.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use jvpn_ctl::{
    client::health::Status,
    control::api::EventRecord,
    lab::{
        gateway::Transport::{Lte, Wifi},
        traffic::EchoServer,
    },
    session::State,
};
use jvpn_tests::{
    agent::{AgentLab, FAST_HEALTH, FAST_POLICY, echo_addr, never_idle},
    gwlab::GwLab,
    tclient::now_ms,
};

/// Where distributions put libfaketime (Debian's package `faketime`).
const FAKETIME_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime",
    "/usr/lib/aarch64-linux-gnu/faketime",
    "/usr/lib64/faketime",
    "/usr/lib/faketime",
];

/// The budget from the agent's start to ATTACHED.
const ATTACH_WITHIN: Duration = Duration::from_secs(2);

/// libfaketime, when the test can run at all (root, the library): otherwise a skip
/// that says why, or with `CI=true` a failure.
fn can_run(test: &str) -> Option<PathBuf> {
    let lib = FAKETIME_DIRS
        .iter()
        .map(|d| PathBuf::from(d).join("libfaketime.so.1"))
        .find(|p| p.is_file());
    let missing = if !jvpn_tests::is_root() {
        "needs root (BPF and network namespaces)"
    } else if lib.is_none() {
        "needs libfaketime (Debian package `faketime`)"
    } else {
        return lib;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {missing}, and CI=true"
    );
    eprintln!("SKIPPED {test}: {missing}");
    println!("SKIPPED: {missing}");
    None
}

/// The agent with its clock `faketime` (libfaketime's offset syntax) off, which puts
/// it `ahead_ms` ahead of the gateway's.
fn skewed_agent(test: &str, tag: &str, faketime: &str, ahead_ms: i64) {
    let Some(lib) = can_run(test) else {
        return;
    };
    let mut gw = GwLab::start(tag, FAST_POLICY);
    let echo = EchoServer::start(&gw.lab.exit, echo_addr()).expect("echo server");
    let cfg = gw.client_config(&[Wifi, Lte], &never_idle(FAST_HEALTH));
    let lib = lib.to_string_lossy().into_owned();
    let env = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", faketime),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let started = Instant::now();
    gw.start_client_with_env(&cfg, &env)
        .expect("starting the client agent");
    let lab = AgentLab { gw, echo };
    let left = (started + ATTACH_WITHIN).saturating_duration_since(Instant::now());
    let s = lab.wait_status("ATTACHED within 2 s of the start", left, |s| {
        s.state == State::Attached
    });
    let attached_in = started.elapsed();

    // libfaketime reached the Rust binary: the agent's own events carry its clock.
    let real = now_ms() as i64;
    let agent_ts = lab
        .client_events()
        .iter()
        .find_map(|e| match e {
            EventRecord::StateChange { to, ts_ms, .. } if *to == State::Attached => {
                Some(*ts_ms as i64)
            }
            _ => None,
        })
        .expect("the agent's ATTACHED event");
    let seen_ahead = agent_ts - real;
    assert!(
        (seen_ahead - ahead_ms).abs() < 3_000,
        "libfaketime did not put the agent's clock {ahead_ms} ms off: its ATTACHED event \
         is {seen_ahead} ms from ours"
    );

    // It found the offset, and says so (status and log).
    let offset = s.clock_offset_ms;
    assert!(
        (offset + ahead_ms).abs() < 1_000,
        "offset {offset} ms for a clock {ahead_ms} ms ahead: {s:#?}"
    );
    assert!(
        s.clock_offset_source
            .as_deref()
            .is_some_and(|w| w.starts_with("TIME from 10.77.1.1:")),
        "{:?}",
        s.clock_offset_source
    );
    assert_eq!(s.counters.time_replies, 1, "{:?}", s.counters);
    let side = if ahead_ms > 0 { "ahead of" } else { "behind" };
    let log = lab.log("client");
    let line = log
        .lines()
        .find(|l| l.contains("our clock is"))
        .unwrap_or_else(|| panic!("no offset in the agent's log:\n{log}"));
    assert!(line.contains(side) && line.contains("WARN"), "{line}");
    let hs = lab.stats().handshakes;
    let count = |k: &str| hs.get(k).copied().unwrap_or(0);
    assert!(
        count("freshness_expired") >= 1 && count("time_sent") >= 1,
        "{hs:?}"
    );
    assert_eq!(count("welcomed"), 1, "{hs:?}");

    // Every transport probed and answered: the gateway finds its KEEPALIVEs fresh
    // (also the one 60 s behind, whose local stamps would be before its start),
    // and round trips are measured as they are.
    let s = lab.wait_status("both transports healthy", Duration::from_secs(3), |s| {
        s.transports.iter().all(|t| t.health == Status::Healthy)
    });
    for t in &s.transports {
        let rtt = t.rtt_ms.expect("an RTT");
        assert!(rtt < 100.0, "{}: RTT {rtt:.1} ms", t.name);
    }

    // A planned reattach: its REATTACH_REQUEST is fresh at the gateway.
    let id = lab.session_id();
    let moved = Instant::now();
    lab.move_to(Lte);
    let s = lab.wait_bound(Lte, Duration::from_secs(3));
    let move_ms = moved.elapsed().as_millis();
    assert_eq!(s.session_id.map(|i| i.0), Some(id), "same session");
    assert_eq!(s.generation, 2);
    let gw = lab.session(id).expect("the session at the gateway");
    assert_eq!((gw.state, gw.generation), (State::Attached, 2));
    assert_eq!(gw.binding.as_deref(), Some("10.77.2.2:40000"));
    eprintln!(
        "{test}: FAKETIME={faketime}: ATTACHED {} ms after the agent's start, \
         clock_offset_ms {offset} (log: {}), move to LTE in {move_ms} ms",
        attached_in.as_millis(),
        line.find("gateway 10.77").map_or(line, |i| &line[i..]),
    );
}

#[test]
fn a_client_clock_60_s_ahead_attaches_and_moves() {
    skewed_agent("agent_clock_60s_ahead", "ka", "+60", 60_000);
}

#[test]
fn a_client_clock_an_hour_ahead_attaches_and_moves() {
    skewed_agent("agent_clock_1h_ahead", "kh", "+1h", 3_600_000);
}

#[test]
fn a_client_clock_a_year_ahead_attaches_and_moves() {
    skewed_agent("agent_clock_1y_ahead", "ky", "+1y", 365 * 86_400_000);
}

#[test]
fn a_client_clock_60_s_behind_attaches_and_moves() {
    skewed_agent("agent_clock_60s_behind", "kb", "-60", -60_000);
}
