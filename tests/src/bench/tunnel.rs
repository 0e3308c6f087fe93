//! The `tunnel` phase: TCP throughput a user gets through the whole product, measured
//! with `iperf3` from the client namespace to an iperf3 server on the exit's tunnel
//! address. Up is client → exit (client TUN → client agent → gateway XDP relay →
//! exit → exit TUN), down the reverse (`iperf3 -R`). The baseline is wireguard-go
//! over the same namespaces and veths ([`super::wireguard`]), in the same run; the
//! rounds interleave the two, each figure is the median of the rounds.

use std::{
    io::Read as _,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
pub use jvpn_ctl::lab::stack::EXIT_TUN;
use jvpn_ctl::{
    lab::{gateway::Transport, stack::Stack},
    session::State,
};
use serde_json::Value;

use super::{
    Bench, percentile,
    progress::Phase,
    schema::{Direction, Tunnel, TunnelImpl, TunnelRun, TunnelSetup},
    stopped,
    wireguard::WgLab,
};

/// The iperf3 server's port (each lab has namespaces of its own).
const IPERF_PORT: &str = "5201";

/// An `iperf3 -s` in a namespace, killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &str, addr: &str) -> Result<Self> {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "iperf3", "-s", "-B", addr, "-p", IPERF_PORT,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the iperf3 server")?;
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// What the receiver got (`end.sum_received`), Mbit/s.
    mbps: f64,
    /// The sender's TCP retransmits (`end.sum_sent.retransmits`; with `-R` the
    /// server's, which iperf3 reports to the client).
    retransmits: Option<u64>,
    /// CPU use of the client's and the server's iperf3 (% of one CPU).
    cpu_client: Option<f64>,
    cpu_server: Option<f64>,
}

/// `iperf3 -c addr -t secs -J [-R]` in namespace `ns`; a run that has not ended
/// `secs + 15` s later is killed.
fn iperf3(ns: &str, addr: &str, secs: u32, reverse: bool) -> Result<Sample> {
    let t = secs.to_string();
    let mut args = vec![
        "netns",
        "exec",
        ns,
        "iperf3",
        "-c",
        addr,
        "-p",
        IPERF_PORT,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if reverse {
        args.push("-R");
    }
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting iperf3 (Debian package iperf3)")?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) + 15);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if super::STOP.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            stopped()?;
            bail!("iperf3 did not finish within {} s", secs + 15);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).context("iperf3 printed no JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    if !status.success() {
        bail!("iperf3 failed ({status})");
    }
    let end = &v["end"];
    let mbps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's JSON has no end.sum_received.bits_per_second")?
        / 1e6;
    Ok(Sample {
        mbps,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        cpu_client: end["cpu_utilization_percent"]["host_total"].as_f64(),
        cpu_server: end["cpu_utilization_percent"]["remote_total"].as_f64(),
    })
}

/// The jvpn lab: gateway, exit and client agent (release binaries, the defaults of
/// their configurations) with one transport, Wi-Fi; waits for ATTACHED.
fn start_jvpn(phase: &Phase) -> Result<Stack> {
    let bin = std::panic::catch_unwind(crate::gwlab::jvpn_ctl_bin)
        .map_err(|_| anyhow::anyhow!("jvpn-ctl is not next to jvpn-bench"))?;
    let mut stack = Stack::start("btn", &std::env::temp_dir(), &bin, "")
        .context("starting the gateway and the exit")?;
    let cfg = stack.client_config(&[Transport::Wifi], "");
    stack
        .start_client(&cfg)
        .context("starting the client agent")?;
    phase.say("waiting for the session to be ATTACHED");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        stopped()?;
        let status = stack
            .client()
            .and_then(|mut c| c.client_status().map_err(std::io::Error::other));
        if let Ok(s) = &status
            && s.state == State::Attached
            && s.tunnel_mtu > 0
        {
            return Ok(stack);
        }
        if Instant::now() > deadline {
            bail!(
                "the session was not ATTACHED within 15 s ({status:?}); the agent's log:\n{}",
                stack.log("client")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `e` with the agent's and the exit's logs, unless the run was interrupted.
fn with_logs(e: anyhow::Error, stack: &Stack) -> anyhow::Error {
    if super::STOP.load(std::sync::atomic::Ordering::Relaxed) {
        return e;
    }
    e.context(format!(
        "the agent's log:\n{}\nthe exit's log:\n{}",
        stack.log("client"),
        stack.log("exit")
    ))
}

fn tunnel_mtu(stack: &Stack) -> Option<u16> {
    let s = stack.client().ok()?.client_status().ok()?;
    Some(s.tunnel_mtu)
}

fn switches(stack: &Stack) -> Option<u64> {
    let s = stack.client().ok()?.client_status().ok()?;
    Some(s.switches)
}

/// A first short run through each tunnel until one succeeds: the server is up, the
/// neighbours are resolved, WireGuard has done its handshake.
fn warm_up(ns: &str, addr: &str, what: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..10 {
        stopped()?;
        match iperf3(ns, addr, 1, false) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(last.expect("ten tries")).with_context(|| format!("no TCP through {what}"))
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (!s.is_empty()).then(|| percentile(&s, 0.5))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1000.0).round() / 1000.0),
        _ => None,
    }
}

pub fn run(b: &mut Bench) -> Result<()> {
    let rounds = b.profile.rounds;
    let secs: u32 = if b.opts.quick { 1 } else { 5 };
    let phase = Phase::new("tunnel", (rounds * 4) as u64);
    phase.say("starting gateway, exit and client agent");
    let stack = start_jvpn(&phase)?;
    let jvpn_ns = stack.lab.client.name.clone();
    // Each server is declared after its lab, so it stops first.
    let _jvpn_server = Server::start(&stack.lab.exit.name, EXIT_TUN)?;
    warm_up(&jvpn_ns, EXIT_TUN, "the jvpn tunnel").map_err(|e| with_logs(e, &stack))?;
    // The same inner MTU for WireGuard (its framing allows up to 1440 here), so both
    // carry segments of one size; read after traffic, once the agent's path MTU
    // probes have settled.
    let jvpn_mtu = tunnel_mtu(&stack);
    let wg_mtu = jvpn_mtu
        .filter(|&m| m > 0)
        .unwrap_or(1420)
        .min(super::wireguard::MAX_MTU);
    phase.say(format!(
        "starting wireguard-go at the client and the exit (MTU {wg_mtu})"
    ));
    let mut wg = WgLab::start("bwg", wg_mtu).context("the wireguard-go lab")?;
    let wg_ns = wg.lab.client.name.clone();
    let _wg_server = Server::start(&wg.lab.exit.name, EXIT_TUN)?;
    warm_up(&wg_ns, EXIT_TUN, "wireguard-go").map_err(|e| {
        if super::STOP.load(std::sync::atomic::Ordering::Relaxed) {
            return e;
        }
        e.context(format!(
            "wireguard-go's logs: {} / {}",
            wg.log(0),
            wg.log(1)
        ))
    })?;
    let switches_before = switches(&stack);

    // (impl, direction) → samples.
    let kinds = [
        (TunnelImpl::Tunnel, Direction::Up),
        (TunnelImpl::Tunnel, Direction::Down),
        (TunnelImpl::WireguardGo, Direction::Up),
        (TunnelImpl::WireguardGo, Direction::Down),
    ];
    let name = |which| match which {
        TunnelImpl::Tunnel => "tunnel",
        TunnelImpl::WireguardGo => "wireguard_go",
    };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); kinds.len()];
    let mut runs = Vec::new();
    for round in 0..rounds {
        for (k, &(which, direction)) in kinds.iter().enumerate() {
            stopped()?;
            let dir = match direction {
                Direction::Up => "up",
                Direction::Down => "down",
            };
            let which_name = name(which);
            phase.live(format!("round {}/{rounds}: {which_name} {dir}", round + 1));
            let ns = if which == TunnelImpl::Tunnel {
                &jvpn_ns
            } else {
                &wg_ns
            };
            let s = iperf3(ns, EXIT_TUN, secs, direction == Direction::Down)
                .with_context(|| format!("iperf3 {which_name} {dir}, round {}", round + 1));
            let s = match s {
                Ok(s) => s,
                Err(e) if which == TunnelImpl::Tunnel => return Err(with_logs(e, &stack)),
                Err(e) => {
                    wg.check()?;
                    return Err(e);
                }
            };
            phase.say(format!(
                "round {}: {which_name} {dir}: {:.0} Mbit/s, {} retransmits",
                round + 1,
                s.mbps,
                s.retransmits.map_or("?".into(), |r| r.to_string())
            ));
            runs.push(TunnelRun {
                which,
                direction,
                round: round + 1,
                mbps: (s.mbps * 10.0).round() / 10.0,
                retransmits: s.retransmits,
                cpu_client_pct: s.cpu_client.map(|c| (c * 10.0).round() / 10.0),
                cpu_server_pct: s.cpu_server.map(|c| (c * 10.0).round() / 10.0),
            });
            samples[k].push(s);
            phase.step();
        }
    }
    let switches_after = switches(&stack);

    // Medians per kind, in the order of `kinds`: every kind has `rounds` samples (a
    // failed run ended the phase above).
    let mut mbps = [0.0; 4];
    let mut retransmits = [None; 4];
    for k in 0..kinds.len() {
        let m: Vec<f64> = samples[k].iter().map(|s| s.mbps).collect();
        let r: Vec<f64> = samples[k]
            .iter()
            .filter_map(|s| s.retransmits)
            .map(|r| r as f64)
            .collect();
        let (which, _) = kinds[k];
        mbps[k] = median(&m)
            .map(|v| (v * 10.0).round() / 10.0)
            .with_context(|| format!("no {} run", name(which)))?;
        retransmits[k] = median(&r).map(|v| v.round() as u64);
    }
    let up = ratio(Some(mbps[0]), Some(mbps[2]));
    let down = ratio(Some(mbps[1]), Some(mbps[3]));
    b.out.tunnel = Some(Tunnel {
        tunnel_up_mbps: mbps[0],
        tunnel_down_mbps: mbps[1],
        wireguard_go_up_mbps: mbps[2],
        wireguard_go_down_mbps: mbps[3],
        tunnel_up_retransmits: retransmits[0],
        tunnel_down_retransmits: retransmits[1],
        wireguard_go_up_retransmits: retransmits[2],
        wireguard_go_down_retransmits: retransmits[3],
        tunnel_over_wireguard_go_up: up,
        tunnel_over_wireguard_go_down: down,
        tunnel_over_wireguard_go: up.zip(down).map(|(u, d)| u.min(d)),
        tunnel: TunnelSetup {
            seconds_per_run: secs,
            rounds,
            tunnel_mtu: jvpn_mtu,
            tunnel_mtu_after: tunnel_mtu(&stack),
            wireguard_go_mtu: wg_mtu,
            wireguard_go_version: super::wireguard::version(),
            client_switches: switches_after.zip(switches_before).map(|(a, b)| a - b),
            runs,
        },
    });
    let mbps = mbps.map(Some);
    let f = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
    let x = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2}"));
    phase.done(format!(
        "jvpn up {} / down {} Mbit/s, wireguard-go up {} / down {} Mbit/s: {}× up, {}× down \
         (median of {rounds} × {secs} s)",
        f(mbps[0]),
        f(mbps[1]),
        f(mbps[2]),
        f(mbps[3]),
        x(up),
        x(down)
    ));
    Ok(())
}
