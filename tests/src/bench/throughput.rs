//! Packets per second through the gateway namespace, flat out, for every mode and
//! payload size, with the same generator (the `--cpus` of the run), the same frames
//! and the same sink. Rounds interleave the modes so that each sees the same machine;
//! the figure is the median over rounds. Rate = DATA frames the sink counted ÷ the
//! generator's run time (for `XDP_DROP`, frames the gateway's veth accepted).

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Result;
use jvpn_ctl::{
    bench::{
        attached::Attached,
        frame::FrameSpec,
        pktgen::{DEFAULT_BATCH, Generator, Limit, Options},
        sink::{Sink, SinkMode},
    },
    datapath::{AttachMode, DROP_PROGRAM, PASS_PROGRAM, detach},
};

use super::{
    Bench, STOP,
    progress::Phase,
    schema::{Mode, PpsRow, Throughput},
    sessions, stopped, topo,
};
use crate::uspace_relay::{RelayConfig, UserspaceRelay};

/// What runs in the gateway namespace while a mode is measured; undone on drop (the
/// program objects detach and the userspace relay stops when dropped).
enum Gate<'a> {
    Program(#[allow(dead_code)] Attached),
    Relay {
        pins: &'a Path,
    },
    /// The relay, its data plane's next-hop table suspended until the drop.
    RelayFib {
        pins: &'a Path,
        dp: &'a mut jvpn_ctl::datapath::Datapath,
    },
    Userspace(
        #[allow(dead_code)] Attached,
        #[allow(dead_code)] UserspaceRelay,
    ),
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        match self {
            Gate::Relay { pins } => {
                let _ = detach(pins, topo::GW_IN);
            }
            Gate::RelayFib { pins, dp } => {
                let _ = detach(pins, topo::GW_IN);
                dp.suspend_next_hops(false);
            }
            _ => {}
        }
    }
}

struct Sample {
    pps: f64,
    frame_bytes: usize,
    sent: u64,
    received: u64,
    seconds: f64,
    /// Relay modes: frames relayed by the slow path (`next_hop_fib`) meanwhile.
    slow_path: Option<u64>,
}

pub fn run(b: &mut Bench) -> Result<()> {
    let p = b.profile;
    if b.big_filled < p.big_sessions {
        let phase = Phase::new("fill", 1);
        b.fill_big(p.big_sessions, &phase)?;
        phase.done(format!("{} sessions", b.big_filled));
    }
    let steps = (p.rounds * p.payloads.len() * Mode::ALL.len()) as u64;
    let phase = Phase::new("throughput", steps);
    let sink = b.topo.sink.run(|| {
        Sink::attach(
            topo::SINK_IF,
            topo::EXIT_PORT,
            SinkMode::Parse,
            AttachMode::Native,
        )
    })?;
    let table: HashMap<u64, _> = (0..p.small_sessions)
        .map(|i| (sessions::id(i), sessions::entry(i)))
        .collect();
    // (mode, payload) → samples over rounds
    let mut samples: Vec<(Mode, usize, Vec<Sample>)> = Vec::new();
    for m in Mode::ALL {
        for &pl in &p.payloads {
            samples.push((m, pl, Vec::new()));
        }
    }
    // A mode that fails is reported and left out of later rounds; the others go on.
    let mut failed: Vec<String> = Vec::new();
    for round in 0..p.rounds {
        for (m, pl, got) in samples.iter_mut() {
            stopped()?;
            if failed.iter().any(|f| f.starts_with(m.key())) {
                phase.step();
                continue;
            }
            phase.say(format!("round {}: {} {pl} B", round + 1, m.key()));
            match measure(b, &sink, &table, *m, *pl, &phase) {
                Ok(s) => {
                    phase.say(format!(
                        "round {}: {} {pl} B: {:.2} Mpps",
                        round + 1,
                        m.key(),
                        s.pps / 1e6
                    ));
                    got.push(s);
                }
                Err(e) => {
                    stopped()?;
                    phase.say(format!("{} {pl} B FAILED: {e:#}", m.key()));
                    failed.push(format!("{} ({pl} B): {e:#}", m.key()));
                }
            }
            phase.step();
        }
    }
    let mut t = Throughput::default();
    for (m, pl, got) in &samples {
        if got.is_empty() {
            continue;
        }
        let mut pps: Vec<f64> = got.iter().map(|s| s.pps).collect();
        pps.sort_by(f64::total_cmp);
        let med = super::percentile(&pps, 0.5);
        let mid = got
            .iter()
            .min_by(|a, c| (a.pps - med).abs().total_cmp(&(c.pps - med).abs()))
            .expect("at least one round");
        t.pps.push(PpsRow {
            mode: *m,
            payload: *pl,
            frame_bytes: mid.frame_bytes,
            pps: med.round(),
            sent: mid.sent,
            received: mid.received,
            seconds: (mid.seconds * 1000.0).round() / 1000.0,
            rounds_pps: pps.iter().map(|v| v.round()).collect(),
            slow_path: mid.slow_path,
        });
        if *pl == p.payloads[0] {
            *t.headline_mut(*m) = Some(med.round());
        }
    }
    let mpps = |m| t.headline(m).unwrap_or(0.0) / 1e6;
    let summary = format!(
        "relay {:.2} Mpps, drop {:.2}, fwd {:.2}, userspace {:.2}, kernel {:.2} (64 B)",
        mpps(Mode::Relay1k),
        mpps(Mode::Drop),
        mpps(Mode::Fwd),
        mpps(Mode::Userspace),
        mpps(Mode::KernelFwd),
    );
    // What the modes that worked measured, also when others failed; the ratios are
    // derived at the end of the run.
    b.out.throughput = Some(t);
    if !failed.is_empty() {
        phase.done(format!("{} mode(s) failed", failed.len()));
        anyhow::bail!("{}", failed.join("; "));
    }
    phase.done(summary);
    Ok(())
}

fn measure(
    b: &mut Bench,
    sink: &Sink,
    table: &HashMap<u64, jvpn_common::maps::SessionEntry>,
    mode: Mode,
    payload: usize,
    phase: &Phase,
) -> Result<Sample> {
    let gw_path = topo::Topology::netns_path(&b.topo.gw);
    let relay_cpus = b.opts.relay_cpus.clone();
    let gen_cpus = if mode == Mode::Relay1k2Cpu {
        two_cpus()?
    } else {
        b.opts.gen_cpus.clone()
    };
    let seconds = b.profile.seconds;
    let pins = [b.pins[0].0.clone(), b.pins[1].0.clone()];
    let big_sessions = b.big_filled;
    let Bench {
        topo: t,
        small,
        big,
        ..
    } = b;
    let native = AttachMode::Native;
    let gate = t.gw.run(|| -> Result<Gate<'_>> {
        Ok(match mode {
            Mode::Drop => Gate::Program(Attached::program(DROP_PROGRAM, topo::GW_IN, native)?),
            Mode::Fwd => Gate::Program(Attached::forwarder(topo::GW_IN, topo::GW_OUT, native)?),
            Mode::Relay1k | Mode::Relay1k2Cpu => {
                small.attach(topo::GW_IN, native)?;
                Gate::Relay { pins: &pins[0] }
            }
            Mode::Relay1m => {
                big.attach(topo::GW_IN, native)?;
                Gate::Relay { pins: &pins[1] }
            }
            Mode::Relay1kFib | Mode::Relay1mFib => {
                let (dp, pins) = if mode == Mode::Relay1kFib {
                    (small, &pins[0])
                } else {
                    (big, &pins[1])
                };
                dp.attach(topo::GW_IN, native)?;
                dp.suspend_next_hops(true);
                Gate::RelayFib { pins, dp }
            }
            Mode::KernelFwd => Gate::Program(Attached::program(PASS_PROGRAM, topo::GW_IN, native)?),
            Mode::Userspace => {
                let pass = Attached::program(PASS_PROGRAM, topo::GW_IN, native)?;
                let relay = UserspaceRelay::start(
                    RelayConfig {
                        netns: Some(gw_path.clone()),
                        cpus: relay_cpus.clone(),
                        batch: 64,
                    },
                    table.clone(),
                )?;
                Gate::Userspace(pass, relay)
            }
        })
    })?;
    let n_sessions = if matches!(mode, Mode::Relay1m | Mode::Relay1mFib) {
        big_sessions
    } else {
        table.len() as u64
    };
    let dst = if mode == Mode::KernelFwd {
        topo::v4(topo::SINK_IP, topo::EXIT_PORT)
    } else {
        topo::v4(topo::GW_IN_IP, topo::GW_PORT)
    };
    let opts = Options {
        iface: topo::GEN_IF.into(),
        frame: FrameSpec {
            src_mac: t.gen_mac,
            dst_mac: t.gw_in_mac,
            src: topo::v4(topo::GEN_IP, topo::CLIENT_PORT),
            dst,
            payload_len: payload,
            session_id: sessions::id(0),
        },
        sessions: n_sessions,
        cpus: gen_cpus,
        rate: None,
        limit: Limit::Duration(Duration::from_secs_f64(seconds)),
        batch: DEFAULT_BATCH,
        stamp_time: false,
        src_ports: Some(sessions::SRC_PORTS),
    };
    let relay_pins = match mode {
        Mode::Relay1k | Mode::Relay1kFib | Mode::Relay1k2Cpu => Some(pins[0].clone()),
        Mode::Relay1m | Mode::Relay1mFib => Some(pins[1].clone()),
        _ => None,
    };
    let slow = |p: &Option<std::path::PathBuf>| -> Result<Option<u64>> {
        Ok(match p {
            Some(p) => Some(
                jvpn_ctl::datapath::Pinned::open(p)?.drops()?
                    [jvpn_common::counters::NEXT_HOP_FIB as usize],
            ),
            None => None,
        })
    };
    let slow_before = slow(&relay_pins)?;
    let before = sink.stats()?;
    let summary = t.gen_ns.run(|| -> Result<_> {
        let g = Generator::new(opts)?;
        Ok(g.run(&STOP, |pr| phase.live(format!("{:.2} Mpps", pr.pps / 1e6)))?)
    })?;
    // Frames still in rings when the generator stopped.
    std::thread::sleep(Duration::from_millis(50));
    let after = sink.stats()?;
    let slow_path = slow(&relay_pins)?.zip(slow_before).map(|(a, b)| a - b);
    drop(gate);
    stopped()?;
    let received = match mode {
        Mode::Drop => summary.veth_xmit.unwrap_or(summary.sent),
        // Unmodified frames: still addressed to the gateway's port, so not DATA to the
        // sink's; every frame counts.
        Mode::Fwd => after.frames - before.frames,
        _ => after.data - before.data,
    };
    Ok(Sample {
        pps: received as f64 / summary.seconds.max(1e-9),
        frame_bytes: summary.frame_bytes,
        sent: summary.sent,
        received,
        seconds: summary.seconds,
        slow_path,
    })
}

/// The first two CPUs this run may use, for the two-CPU figure.
fn two_cpus() -> Result<Vec<usize>> {
    let cpus = jvpn_ctl::bench::cpus::allowed()?;
    anyhow::ensure!(
        cpus.len() >= 2,
        "the two-CPU figure needs two CPUs; this run may use {cpus:?}"
    );
    Ok(cpus[..2].to_vec())
}
