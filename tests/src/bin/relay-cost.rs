//! Per-packet cost of the XDP relay next to a trivial `XDP_DROP`, measured in the same
//! run with `BPF_PROG_TEST_RUN` repeat mode (kernel-timed average per run), with 1,000
//! and with 1,000,000 sessions in the map. A benchmark, not a test: it asserts nothing
//! about speed and prints ratios with the absolute figures as context.
//!
//! Run as root: `cargo run --release -p jvpn-tests --bin relay-cost`.

use jvpn_common::{
    maps::{Endpoint, FLAG_FORWARDING, SessionEntry},
    wire::msg_type,
};
use jvpn_ctl::datapath::{DROP_PROGRAM, Datapath, DatapathConfig, RELAY_PROGRAM};
use jvpn_tests::{
    frames::{Udp, jvpn},
    packet_lab::{PORT, lab, v4},
    testrun::{XDP_REDIRECT, ns_per_run, run},
};

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 5;

fn entry(i: u32) -> SessionEntry {
    let [_, b, c, d] = i.to_be_bytes();
    SessionEntry {
        generation: 1,
        flags: FLAG_FORWARDING,
        // Client addresses spread over 10.128.0.0/9 so every session is distinct.
        client: Endpoint::v4([10, 128 | (b & 0x7f), c, d], 40000),
        gw_client: Endpoint::v4([10, 10, 1, 1], PORT),
        exit: Endpoint::v4([10, 10, 9, 2], 51821),
        gw_exit: Endpoint::v4([10, 10, 9, 1], PORT),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        jvpn_tests::is_root(),
        "relay-cost needs root (BPF, namespaces)"
    );
    let lab = lab();
    lab.ns.run(|| -> anyhow::Result<()> {
        let mut dp = Datapath::load(DatapathConfig {
            port: PORT,
            max_sessions: 1_048_576,
            pin_dir: lab.pins.0.clone(),
            debug_log: false,
        })?;
        // The measured session: the real client of the lab (10.10.1.2).
        let probe = 0x00c0_ffee_u64 << 24;
        let mut e = entry(0);
        e.client = Endpoint::v4([10, 10, 1, 2], 40000);
        dp.insert_session(probe, &e)?;
        let frame = Udp::new(v4("10.10.1.2"), 40000, v4("10.10.1.1"), PORT).build(&jvpn(
            msg_type::DATA,
            probe,
            1,
            64,
        ));
        anyhow::ensure!(
            run(dp.program(RELAY_PROGRAM)?, &frame, lab.c0).action == XDP_REDIRECT,
            "the probe frame is not relayed"
        );
        println!(
            "frame: {} bytes (IPv4, 84-byte jvpn payload), {REPEAT} runs x {ROUNDS} rounds, median",
            frame.len()
        );
        println!(
            "{:>10}  {:>10}  {:>10}  {:>12}",
            "sessions", "relay ns", "drop ns", "relay-drop"
        );
        let mut inserted = 1u32;
        for target in [1_000u32, 1_000_000] {
            let t = std::time::Instant::now();
            while inserted < target {
                dp.insert_session(
                    u64::from(inserted).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                    &entry(inserted),
                )
                .map_err(|e| anyhow::anyhow!("after {inserted} sessions: {e}"))?;
                inserted += 1;
            }
            let fill = t.elapsed();
            let (mut relay, mut drop) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                // Interleaved so that both see the same machine state.
                relay.push(ns_per_run(
                    dp.program(RELAY_PROGRAM)?,
                    &frame,
                    lab.c0,
                    REPEAT,
                ));
                drop.push(ns_per_run(
                    dp.program(DROP_PROGRAM)?,
                    &frame,
                    lab.c0,
                    REPEAT,
                ));
            }
            let (r, d) = (median(relay), median(drop));
            println!(
                "{:>10}  {r:>10.1}  {d:>10.1}  {:>12.1}   (filled in {:.2}s)",
                dp.session_count(),
                r - d,
                fill.as_secs_f64()
            );
        }
        Ok(())
    })
}
