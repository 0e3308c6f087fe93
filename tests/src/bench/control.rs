//! The controller's figures. Handshakes/s, validated reattaches/s and controller heap
//! bytes per session come from `ctl-bench` (its own process: it counts heap bytes with
//! a counting global allocator), on one core. The reattach round trip is measured in
//! the lab with the real processes: the client agent moves between its Wi-Fi and LTE
//! transports on command, and a packet capture on the client's interfaces times each
//! REATTACH_REQUEST leaving to its REATTACH_ACK arriving.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use jvpn_common::wire::msg_type;
use jvpn_ctl::lab::{capture::Capture, gateway::Transport};
use serde_json::Value;

use super::{Bench, percentile, progress::Phase, stopped};
use crate::agent::AgentLab;

pub fn controller(b: &mut Bench) -> Result<()> {
    let n = b.profile.ctl_sessions;
    let phase = Phase::new("controller", 1);
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("ctl-bench"))
        .filter(|p| p.exists())
        .context("ctl-bench is not next to jvpn-bench: build with `cargo xtask bench`")?;
    phase.say(format!("ctl-bench --sessions {n}"));
    let mut child = Command::new(&bin)
        .args(["--sessions", &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let mut last_err = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        phase.live(line.clone());
        last_err = line;
    }
    let out = child.wait_with_output()?;
    stopped()?;
    if !out.status.success() {
        bail!("ctl-bench failed ({}): {last_err}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .context("ctl-bench printed no JSON")?;
    for key in [
        "handshakes_per_s",
        "reattaches_per_s",
        "bytes_per_session_ctl",
    ] {
        b.set(key, v.get(key).cloned().unwrap_or(Value::Null));
    }
    b.set("ctl_bench", v.clone());
    phase.step();
    phase.done(format!(
        "{} handshakes/s, {} reattaches/s, {} controller bytes/session at {n}",
        v["handshakes_per_s"], v["reattaches_per_s"], v["bytes_per_session_ctl"]
    ));
    Ok(())
}

pub fn reattach_rtt(b: &mut Bench) -> Result<()> {
    let moves = b.profile.moves;
    let phase = Phase::new("reattach", moves as u64);
    phase.say("starting gateway, exit and client agent");
    let lab = std::panic::catch_unwind(|| {
        AgentLab::start(
            "brt",
            "max_switches_per_minute = 100000\n",
            &[Transport::Wifi, Transport::Lte],
            "[health]\nreturn_after_ms = 3600000\n",
        )
    })
    .map_err(|_| anyhow::anyhow!("the lab did not start (see the panic above)"))?;
    let caps = [
        Capture::start(&lab.lab.client, Transport::Wifi.client_dev())?,
        Capture::start(&lab.lab.client, Transport::Lte.client_dev())?,
    ];
    for i in 0..moves {
        stopped()?;
        let to = if i % 2 == 0 {
            Transport::Lte
        } else {
            Transport::Wifi
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lab.move_to(to);
            lab.wait_bound(to, Duration::from_secs(3));
        }))
        .map_err(|_| anyhow::anyhow!("move {i} to {} failed", to.name()))?;
        phase.step();
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut rtts = Vec::new();
    for cap in &caps {
        let frames = cap.frames();
        let mut pending = None;
        for f in frames {
            match (f.msg_type(), f.outgoing) {
                (Some(msg_type::REATTACH_REQUEST), true) => pending = Some(f.at),
                (Some(msg_type::REATTACH_ACK), false) => {
                    if let Some(at) = pending.take() {
                        rtts.push(f.at.duration_since(at).as_secs_f64() * 1e6);
                    }
                }
                _ => {}
            }
        }
    }
    ensure!(
        rtts.len() >= moves * 9 / 10,
        "only {} of {moves} reattach exchanges were captured",
        rtts.len()
    );
    rtts.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&rtts, 0.5), percentile(&rtts, 0.99));
    b.set("reattach_rtt_us_p50", p50.round());
    b.set("reattach_rtt_us_p99", p99.round());
    b.set(
        "reattach_rtt_us",
        rtts.iter().map(|v| v.round()).collect::<Vec<_>>(),
    );
    phase.done(format!(
        "{} exchanges: p50 {p50:.0} µs, p99 {p99:.0} µs (request out → ACK in, captured at the client)",
        rtts.len()
    ));
    Ok(())
}
