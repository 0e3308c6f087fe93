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
use jvpn_ctl::lab::{capture::Capture, gateway::Transport};

use super::{
    Bench, percentile,
    progress::Phase,
    schema::{Controller, ControllerCluster, ControllerEtcd, ControllerStore, CtlBench, Reattach},
    stopped,
};
use crate::agent::AgentLab;

/// Five ctl-bench runs: the headline figures at `ctl_sessions` without a store, then
/// at `store_sessions` without a store, with the durable store (a directory on the
/// disk the lab uses), with a real single-member etcd on loopback as a single
/// gateway's store, and as a cluster node commits (`--cluster`: one CAS transaction
/// per changed session), side by side.
pub fn controller(b: &mut Bench) -> Result<()> {
    let n = b.profile.ctl_sessions;
    let m = b.profile.store_sessions;
    let phase = Phase::new("controller", 5);
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("ctl-bench"))
        .filter(|p| p.exists())
        .context("ctl-bench is not next to jvpn-bench: build with `cargo xtask bench`")?;
    let v = ctl_bench(&bin, &phase, &["--sessions", &n.to_string()])?;
    b.out.controller = Some(Controller {
        handshakes_per_s: v.handshakes_per_s,
        reattaches_per_s: v.reattaches_per_s,
        bytes_per_session_ctl: v.bytes_per_session_ctl,
        ctl_bench: v.clone(),
    });
    phase.step();

    let none = ctl_bench(&bin, &phase, &["--sessions", &m.to_string()])?;
    phase.step();
    let dir = std::env::temp_dir().join(crate::unique("jvpn-ctlb-store"));
    let store = ctl_bench(
        &bin,
        &phase,
        &[
            "--sessions",
            &m.to_string(),
            "--store",
            &dir.to_string_lossy(),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let store = store?;
    phase.step();
    // Store / none, to two decimals.
    let ratio = |a: f64, d: f64| (d > 0.0).then(|| (a / d * 100.0).round() / 100.0);
    // Recorded now, so that a failure of the etcd runs below keeps it.
    b.out.controller_store = Some(ControllerStore {
        store_sessions: m,
        handshakes_per_s_nostore: none.handshakes_per_s,
        handshakes_per_s_store: store.handshakes_per_s,
        reattaches_per_s_nostore: none.reattaches_per_s,
        reattaches_per_s_store: store.reattaches_per_s,
        handshakes_store_ratio: ratio(store.handshakes_per_s, none.handshakes_per_s),
        reattaches_store_ratio: ratio(store.reattaches_per_s, none.reattaches_per_s),
        restart_ms: store.restart_ms,
        store_bytes_per_session: store.store_bytes_per_session,
        ctl_bench_store: store.clone(),
    });
    let etcd = ctl_bench(
        &bin,
        &phase,
        &["--sessions", &m.to_string(), "--store", "etcd"],
    )?;
    phase.step();
    b.out.controller_etcd = Some(ControllerEtcd {
        handshakes_per_s_etcd: etcd.handshakes_per_s,
        reattaches_per_s_etcd: etcd.reattaches_per_s,
        restart_ms_etcd: etcd.restart_ms,
        etcd_store_txns_per_reattach: etcd.etcd_txns_per_reattach,
        ctl_bench_etcd: etcd.clone(),
    });
    let cluster = ctl_bench(&bin, &phase, &["--sessions", &m.to_string(), "--cluster"])?;
    phase.step();
    // The cluster node / another run, to three decimals.
    let over = |a: f64, d: f64| (d > 0.0).then(|| (a / d * 1000.0).round() / 1000.0);
    let (hs, ra) = (cluster.handshakes_per_s, cluster.reattaches_per_s);
    b.out.controller_cluster = Some(ControllerCluster {
        handshakes_per_s_cluster: hs,
        reattaches_per_s_cluster: ra,
        etcd_txns_per_reattach: cluster.etcd_txns_per_reattach,
        etcd_txns_per_handshake: cluster.etcd_txns_per_handshake,
        etcd_rpcs_per_reattach: cluster.etcd_rpcs_per_reattach,
        ctl_bench_cluster: cluster.clone(),
        handshakes_cluster_over_nostore: over(hs, none.handshakes_per_s),
        reattaches_cluster_over_nostore: over(ra, none.reattaches_per_s),
        handshakes_cluster_over_store: over(hs, store.handshakes_per_s),
        reattaches_cluster_over_store: over(ra, store.reattaches_per_s),
        handshakes_cluster_over_etcd: over(hs, etcd.handshakes_per_s),
        reattaches_cluster_over_etcd: over(ra, etcd.reattaches_per_s),
    });
    let shown = |v: Option<f64>| v.map_or("—".to_string(), |v| v.to_string());
    phase.done(format!(
        "{} handshakes/s, {} reattaches/s, {} controller bytes/session at {n}; with the store \
         at {m}: handshakes {}x, reattaches {}x, restart {} ms; a cluster node at {m}: \
         {} handshakes/s, {} reattaches/s, {} etcd transactions per reattach",
        v.handshakes_per_s,
        v.reattaches_per_s,
        v.bytes_per_session_ctl,
        ratio(store.handshakes_per_s, none.handshakes_per_s).unwrap_or(f64::NAN),
        ratio(store.reattaches_per_s, none.reattaches_per_s).unwrap_or(f64::NAN),
        shown(store.restart_ms),
        cluster.handshakes_per_s,
        cluster.reattaches_per_s,
        shown(cluster.etcd_txns_per_reattach),
    ));
    Ok(())
}

/// Runs ctl-bench with `args`; its stderr goes to the progress line, its last stdout
/// line is the result.
fn ctl_bench(bin: &std::path::Path, phase: &Phase, args: &[&str]) -> Result<CtlBench> {
    phase.say(format!("ctl-bench {}", args.join(" ")));
    let mut child = Command::new(bin)
        .args(args)
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
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .context("ctl-bench printed no results line (or not one of the schema)")
}

/// The reattach round trip with the gateway's store on the lab's disk (as deployed),
/// then, in the same lab, with it on a tmpfs, where an fsync costs nothing: the
/// difference is what waiting for the disk adds.
/// The reattach phase's gateway: no switch-rate limit, and a per-session control
/// budget above the phase's pace. It measures round trips, back to back: 200 moves
/// in a few seconds are 2 control messages each from the address not yet bound, past
/// a session's default budget of 50/s (burst 100) by the 85th move, where the gateway's
/// XDP gate rightly drops the REATTACH_REQUEST (`control_limited`).
const REATTACH_POLICY: &str = "max_switches_per_minute = 100000\n\
    [limits]\ncontrol_other_pps = 100000\ncontrol_other_burst = 100000\n\
    control_binding_pps = 100000\ncontrol_binding_burst = 100000\n";

pub fn reattach_rtt(b: &mut Bench) -> Result<()> {
    let moves = b.profile.moves;
    let phase = Phase::new("reattach", 2 * moves as u64);
    phase.say("starting gateway, exit and client agent");
    let mut lab = std::panic::catch_unwind(|| {
        AgentLab::start(
            "brt",
            REATTACH_POLICY,
            &[Transport::Wifi, Transport::Lte],
            "[health]\nreturn_after_ms = 3600000\n",
        )
    })
    .map_err(|_| anyhow::anyhow!("the lab did not start (see the panic above)"))?;
    let disk = rtts(&lab, moves, &phase)?;
    phase.say("moving the gateway's state directory onto a tmpfs");
    let _fs = crate::tmpfs::state_on_tmpfs(&mut lab.gw.stack, "256m")
        .context("moving the state directory onto a tmpfs")?;
    lab.wait_status(
        "ATTACHED after the gateway restart",
        Duration::from_secs(10),
        |s| s.state == jvpn_ctl::session::State::Attached,
    );
    let tmpfs = rtts(&lab, moves, &phase)?;
    let (p50, p99) = (percentile(&disk, 0.5), percentile(&disk, 0.99));
    let (t50, t99) = (percentile(&tmpfs, 0.5), percentile(&tmpfs, 0.99));
    // The summary the cluster phase reports too, for the side-by-side table.
    let s = super::cluster::summary(&disk);
    b.out.reattach = Some(Reattach {
        reattach_rtt_us_p50: p50.round(),
        reattach_rtt_us_p99: p99.round(),
        reattach_rtt_us_min: Some(s.min),
        reattach_rtt_us_p90: Some(s.p90),
        reattach_rtt_us_max: Some(s.max),
        reattach_rtt_us: super::cluster::rounded(&disk),
        reattach_rtt_tmpfs_us_p50: Some(t50.round()),
        reattach_rtt_tmpfs_us_p99: Some(t99.round()),
        // What waiting for the disk adds (a goal: ≤ 2 ms).
        reattach_rtt_store_extra_us_p99: Some((p99 - t99).round()),
    });
    phase.done(format!(
        "{} exchanges: p50 {p50:.0} µs, p99 {p99:.0} µs (request out → ACK in, captured at the \
         client); store on a tmpfs: p50 {t50:.0} µs, p99 {t99:.0} µs",
        disk.len()
    ));
    Ok(())
}

/// Moves the agent back and forth `moves` times; the round trips (µs, ascending)
/// captured on the client's interfaces.
fn rtts(lab: &AgentLab, moves: usize, phase: &Phase) -> Result<Vec<f64>> {
    let caps = [
        Capture::start(&lab.lab.client, Transport::Wifi.client_dev())?,
        Capture::start(&lab.lab.client, Transport::Lte.client_dev())?,
    ];
    let from = lab.status().bound.unwrap_or_default();
    for i in 0..moves {
        stopped()?;
        let to = if (i % 2 == 0) == (from == Transport::Wifi.name()) {
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
    let mut rtts: Vec<f64> = caps
        .iter()
        .flat_map(|cap| super::reattach_rtts_us(&cap.frames()))
        .collect();
    ensure!(
        rtts.len() >= moves * 9 / 10,
        "only {} of {moves} reattach exchanges were captured",
        rtts.len()
    );
    rtts.sort_by(f64::total_cmp);
    Ok(rtts)
}
