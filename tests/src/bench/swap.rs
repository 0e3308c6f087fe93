//! The binding swap under load. One session's client binding alternates between two
//! addresses in the sink namespace (A and B) while the generator, playing the exit,
//! sends that session's DATA through the relay toward the client at a steady rate.
//! Timed: each `Datapath::replace_session` (the controller's swap: one `BPF_EXIST`
//! update and the read-back), p50/p99/max.
//!
//! Misrouting: the generator stamps each frame's send time into its jvpn counter
//! (`--stamp-time`); after swap `i` returns at `T_i`, the sink gets a window "frames
//! sent from `T_i` until the swap back starts at `S_i+1` must not arrive at the old
//! address before `S_i+1`". A frame counted there was looked up by the relay after
//! the swap had returned and before the swap back began, and still went to the old
//! binding. Frames sent in the window that arrive there after `S_i+1` are counted
//! apart (`swap_crossed`): in flight across the swap back, they may have been looked
//! up after it, legitimately. (The window is written a syscall after `T_i`; a
//! misrouted frame that reached the sink within that microsecond would be missed.)
//! The swapping thread runs on a CPU other than the generator's (the relay runs in
//! the generator's softirq), as a controller would; `JVPN_SWAP_CPU=N` overrides.
//! Loss: frames the generator sent − frames the sink received, over the whole phase.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use jvpn_common::{
    bench::{MISROUTE_WINDOWS, MisrouteWindow},
    maps::{Endpoint, FLAG_FORWARDING, SessionEntry},
};
use jvpn_ctl::{
    bench::{
        frame::FrameSpec,
        pktgen::{DEFAULT_BATCH, Generator, Limit, Options},
        sink::{Sink, SinkMode},
    },
    datapath::{AttachMode, detach},
};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Bench, cost::round1, progress::Phase, stopped, topo};

/// The swapped session's id: the first of these that names a free slot, so that the
/// relay steers it from its slot copy (docs/datapath.md, "One cache line per
/// packet"), the path every gateway session takes.
const SESSION_BASE: u64 = 0x5a5a_0000_0000_0000;
/// Frames per second of the swapped session's traffic: steady, well below what the
/// path carries, so that any loss is the swap's.
const RATE: u64 = 1_000_000;
/// Time between swaps, so the traffic reaches each binding in between.
const DWELL: Duration = Duration::from_micros(100);

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn binding(ip: std::net::Ipv4Addr) -> Endpoint {
    Endpoint::v4(ip.octets(), topo::CLIENT_PORT)
}

fn entry(client: Endpoint, generation: u32) -> SessionEntry {
    SessionEntry {
        generation,
        flags: FLAG_FORWARDING,
        client,
        gw_client: Endpoint::v4(topo::GW_OUT_IP.octets(), topo::GW_PORT),
        exit: Endpoint::v4(topo::GEN_IP.octets(), topo::EXIT_PORT),
        gw_exit: Endpoint::v4(topo::GW_IN_IP.octets(), topo::GW_PORT),
        ..Default::default()
    }
}

/// Writes window `w` into `slot`, which may hold an older window, in two steps.
///
/// An array update copies the value over the old one while the sink may be reading
/// it, so the sink can see some fields old and some new. Written in one go, an old
/// `from_ns` (1.6 ms earlier) next to the new open `to_ns` made a window that counted
/// frames sent before the swap as misrouted: about one per 10,000 swaps, traced to
/// exactly this. So the window is first written closed (`to_ns` 0: empty whatever
/// else is read), then opened by changing `to_ns` alone, and every mix a reader can
/// see is empty or part of the real window. (Closing changes `to_ns` alone too, and
/// widens the window only while the swap back has not begun, when a frame arriving at
/// the old address is truly misrouted.)
fn open_window(sink: &mut Sink, slot: u32, w: &MisrouteWindow) -> Result<()> {
    sink.set_window(slot, &MisrouteWindow { to_ns: 0, ..*w })?;
    sink.set_window(slot, w)?;
    Ok(())
}

/// Microseconds at quantile `q` of sorted nanosecond samples.
fn pct(sorted: &[u64], q: f64) -> f64 {
    super::percentile(sorted, q) as f64 / 1000.0
}

pub fn run(b: &mut Bench) -> Result<()> {
    let n = b.profile.swaps;
    let phase = Phase::new("swap", u64::from(n));
    let mut sink = b.topo.sink.run(|| {
        Sink::attach(
            topo::SINK_IF,
            topo::CLIENT_PORT,
            SinkMode::Misroute,
            AttachMode::Native,
        )
    })?;
    let (a, bb) = (binding(topo::SINK_IP), binding(topo::SINK_IP_B));
    let sid = (SESSION_BASE..SESSION_BASE + (1 << 24))
        .find(|&id| b.small.named_slot_free(id))
        .context("no free slot for the swapped session")?;
    b.small.insert_session(sid, &entry(a, 1))?;
    ensure!(
        b.small.session_copy(sid).is_some(),
        "the swapped session has no slot copy"
    );
    let pins = b.pins[0].0.clone();
    let result = swap_under_load(b, &mut sink, &phase, sid, a, bb);
    let _ = b.topo.gw.run(|| detach(&pins, topo::GW_IN));
    let _ = b.small.remove_session(sid);
    let r = result?;
    phase.done(format!(
        "{n} swaps: p50 {:.1} µs, p99 {:.1} µs; {} misrouted, {} lost of {} frames \
         ({} in flight across a swap back; swapper on CPU {})",
        r.p50,
        r.p99,
        r.misrouted,
        r.lost,
        r.sent,
        r.crossed,
        r.swap_cpu.map_or("any".to_string(), |c| c.to_string())
    ));
    Ok(())
}

struct Outcome {
    p50: f64,
    p99: f64,
    misrouted: u64,
    crossed: u64,
    lost: u64,
    sent: u64,
    swap_cpu: Option<usize>,
}

fn swap_under_load(
    b: &mut Bench,
    sink: &mut Sink,
    phase: &Phase,
    sid: u64,
    a: Endpoint,
    bb: Endpoint,
) -> Result<Outcome> {
    let n = b.profile.swaps;
    let Bench {
        topo: t,
        small,
        opts,
        ..
    } = b;
    t.gw.run(|| small.attach(topo::GW_IN, AttachMode::Native))?;
    let gen_opts = Options {
        iface: topo::GEN_IF.into(),
        frame: FrameSpec {
            src_mac: t.gen_mac,
            dst_mac: t.gw_in_mac,
            src: topo::v4(topo::GEN_IP, topo::EXIT_PORT),
            dst: topo::v4(topo::GW_IN_IP, topo::GW_PORT),
            payload_len: 64,
            session_id: sid,
        },
        sessions: 1,
        cpus: opts.gen_cpus.clone(),
        rate: Some(RATE),
        limit: Limit::Duration(Duration::from_secs(3600)),
        batch: DEFAULT_BATCH,
        stamp_time: true,
        src_ports: None,
    };
    // Off the generator's CPUs when there is one: the controller's swap and the
    // relay's lookups then race for real. (The CPUs' clocks agree to within ±75 ns
    // here, measured by ping-pong; docs/bench.md.)
    let swap_cpu = match std::env::var("JVPN_SWAP_CPU") {
        Ok(c) => Some(c.parse().context("JVPN_SWAP_CPU")?),
        Err(_) => jvpn_ctl::bench::cpus::allowed()?
            .into_iter()
            .find(|c| !opts.gen_cpus.contains(c))
            .or_else(|| opts.gen_cpus.first().copied()),
    };
    let before = sink.stats()?;
    let drops_before = small.drops()?;
    let gen_stop = AtomicBool::new(false);
    let (mut lat, summary) = std::thread::scope(|s| -> Result<_> {
        let generator = s.spawn(|| {
            t.gen_ns.run(|| -> Result<_> {
                let g = Generator::new(gen_opts)?;
                Ok(g.run(&gen_stop, |_| {})?)
            })
        });
        let swapped = (|| -> Result<Vec<u64>> {
            if let Some(c) = swap_cpu {
                jvpn_ctl::bench::cpus::pin_current_thread(c)?;
            }
            // Traffic flowing to A before the first swap.
            let t0 = Instant::now();
            while sink.stats()?.data - before.data < 1000 {
                stopped()?;
                ensure!(
                    t0.elapsed() < Duration::from_secs(5),
                    "no traffic reached the sink through the relay"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut lat = Vec::with_capacity(n as usize);
            let (mut cur, mut other) = (a, bb);
            let mut prev_window: Option<(u32, MisrouteWindow)> = None;
            for i in 1..=n {
                if i.is_multiple_of(256) {
                    stopped()?;
                    phase.live(format!("{i} swaps"));
                }
                let started = mono_ns();
                // Close the window of the address we swap back to.
                if let Some((slot, mut w)) = prev_window.take() {
                    w.to_ns = started;
                    sink.set_window(slot, &w)?;
                }
                let t = Instant::now();
                small
                    .replace_session(sid, &entry(other, i + 1))
                    .with_context(|| format!("swap {i}"))?;
                lat.push(t.elapsed().as_nanos() as u64);
                let returned = mono_ns();
                let slot = i % MISROUTE_WINDOWS;
                let w = MisrouteWindow {
                    session_id: sid,
                    from_ns: returned,
                    to_ns: u64::MAX,
                    dst: cur.addr,
                };
                open_window(sink, slot, &w)?;
                prev_window = Some((slot, w));
                std::mem::swap(&mut cur, &mut other);
                while mono_ns() - returned < DWELL.as_nanos() as u64 {
                    std::hint::spin_loop();
                }
                phase.step();
            }
            // Let the last binding carry traffic a little, then stop.
            std::thread::sleep(Duration::from_millis(20));
            Ok(lat)
        })();
        gen_stop.store(true, Ordering::Relaxed);
        let summary = generator
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))?;
        Ok((swapped?, summary))
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let after = sink.stats()?;
    let drops = super::drops_delta(&drops_before, &b.small.drops()?);
    lat.sort_unstable();
    let sorted = lat;
    let received = after.data - before.data;
    let misrouted = after.misrouted - before.misrouted;
    let crossed = after.crossed - before.crossed;
    let lost = summary.sent.saturating_sub(received);
    let out = Outcome {
        p50: pct(&sorted, 0.50),
        p99: pct(&sorted, 0.99),
        misrouted,
        crossed,
        lost,
        sent: summary.sent,
        swap_cpu,
    };
    b.out.swap = Some(super::schema::Swap {
        swaps: n,
        swap_us_p50: round1(out.p50),
        swap_us_p99: round1(out.p99),
        swap_us_max: pct(&sorted, 1.0),
        swap_misrouted: misrouted,
        swap_crossed: crossed,
        swap_cpu,
        swap_lost: lost,
        swap_sent: summary.sent,
        swap_received: received,
        swap_rate_pps: RATE,
        swap_veth_refused: summary.veth_xmit_errors,
        swap_relay_drops: drops,
    });
    Ok(out)
}
