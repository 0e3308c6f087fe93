//! `jvpn-ctl sink`: attaches the counting sink (`xdp_sink`) to an interface, prints
//! frames per second, and a summary at the end (docs/bench.md).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use jvpn_ctl::{
    bench::sink::{Sink, SinkMode},
    datapath::AttachMode,
};

use super::{parse_secs, thousands};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    /// Count frames and bytes only (the cheapest receiver).
    Count,
    /// Also check each frame with the relay's parser and count valid DATA.
    Parse,
    /// Also count DATA per session id.
    PerSession,
}

#[derive(clap::Args)]
pub struct Args {
    /// Interface to attach to (for a veth: the peer of the generator's).
    #[arg(long)]
    iface: String,
    /// UDP port taken as jvpn traffic by the parse modes.
    #[arg(long, default_value_t = jvpn_common::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    #[arg(long, value_enum, default_value_t = Mode::Parse)]
    mode: Mode,
    /// Sessions the per-session mode can count (more are counted as untracked).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    capacity: u32,
    /// Stop after this many seconds [default: at Ctrl-C].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Generic (SKB) XDP instead of native. Frames redirected into a veth reach only a
    /// native program.
    #[arg(long)]
    skb: bool,
    /// Print the summary as one JSON object (progress lines go to stderr).
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mode = match args.mode {
        Mode::Count => SinkMode::Count,
        Mode::Parse => SinkMode::Parse,
        Mode::PerSession => SinkMode::PerSession {
            capacity: args.capacity,
        },
    };
    let attach = if args.skb {
        AttachMode::Skb
    } else {
        AttachMode::Native
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let sink = Sink::attach(&args.iface, args.port, mode, attach)?;
    if !args.quiet {
        eprintln!(
            "sink attached to {} ({attach} mode); Ctrl-C ends",
            args.iface
        );
    }
    let start = Instant::now();
    let mut last = (start, 0u64);
    let mut tick = 1u64;
    // The best one-second rate: runs shorter than the reporting interval are better
    // measured by the generator.
    let mut peak_pps = 0f64;
    loop {
        let now = Instant::now();
        if STOP.load(Ordering::SeqCst) || args.duration.is_some_and(|d| now - start >= d) {
            break;
        }
        let next = start + Duration::from_secs(tick);
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
            continue;
        }
        tick += 1;
        let s = sink.stats()?;
        let pps = (s.frames - last.1) as f64 / (now - last.0).as_secs_f64();
        peak_pps = peak_pps.max(pps);
        last = (now, s.frames);
        if !args.quiet {
            let line = format!(
                "{:>7.2} s  {:>12} pps  frames {:>14}  data {:>14}  not data {}",
                (now - start).as_secs_f64(),
                thousands(pps as u64),
                thousands(s.frames),
                thousands(s.data),
                thousands(s.not_data)
            );
            if args.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
    let s = sink.stats()?;
    let sessions = sink.sessions()?;
    let (min, max) = (
        sessions.values().min().copied().unwrap_or(0),
        sessions.values().max().copied().unwrap_or(0),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "iface": args.iface,
                "frames": s.frames,
                "bytes": s.bytes,
                "data": s.data,
                "not_data": s.not_data,
                "untracked": s.untracked,
                "sessions": sessions.len(),
                "per_session_min": min,
                "per_session_max": max,
                "seconds": start.elapsed().as_secs_f64(),
                "peak_pps": peak_pps,
            })
        );
    } else {
        println!(
            "received {} frames ({} bytes) in {:.3} s; best one-second rate {} pps",
            s.frames,
            s.bytes,
            start.elapsed().as_secs_f64(),
            peak_pps.round() as u64
        );
        if !matches!(mode, SinkMode::Count) {
            println!("valid DATA {}, not DATA {}", s.data, s.not_data);
        }
        if let SinkMode::PerSession { .. } = mode {
            println!(
                "sessions seen {}, frames per session {min}..={max}, untracked {}",
                sessions.len(),
                s.untracked
            );
        }
    }
    Ok(())
}
