//! `jvpn-ctl pktgen`: sends jvpn DATA frames for N sessions out of an interface, at a
//! rate or flat out, for a count or a duration (docs/bench.md).

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;

use super::{parse_secs, thousands};
use jvpn_common::wire::MIN_DATA_LEN;
use jvpn_ctl::bench::{
    BenchError, cpus,
    frame::FrameSpec,
    netif,
    pktgen::{self, DEFAULT_BATCH, Generator, Limit, MAX_BATCH, Options, Summary},
};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("limit").required(true).args(["count", "duration"])))]
pub struct Args {
    /// Interface the frames leave through (a veth sends them to its peer).
    #[arg(long)]
    iface: String,
    /// Source IP address (IPv4 or IPv6).
    #[arg(long)]
    src: IpAddr,
    /// Destination IP address: the gateway (same family as --src).
    #[arg(long)]
    dst: IpAddr,
    /// Source UDP port: the client's.
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u16).range(1..))]
    src_port: u16,
    /// Destination UDP port: the gateway's jvpn port.
    #[arg(long, default_value_t = jvpn_common::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    dst_port: u16,
    /// Source MAC [default: the interface's].
    #[arg(long, value_parser = netif::parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// Destination MAC [default: the neighbour entry of --dst on the interface].
    #[arg(long, value_parser = netif::parse_mac)]
    dst_mac: Option<[u8; 6]>,
    /// UDP payload bytes: jvpn header (20), ciphertext and tag (16); at least 36.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64,
        allow_negative_numbers = true
    )]
    payload: usize,
    /// Number of sessions; frames cycle through their ids.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    sessions: u64,
    /// Id of the first session (decimal or 0x-hex); the others follow it.
    #[arg(long, default_value = "1", value_parser = parse_id)]
    first_id: u64,
    /// Frames per second in total; without it, flat out.
    #[arg(long, value_name = "PPS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Stop after this many frames.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_secs)]
    duration: Option<Duration>,
    /// CPUs to send from, one thread each: `0`, `0,1`, `0-3` [default: the first CPU
    /// this process may use].
    #[arg(long)]
    cpus: Option<String>,
    /// Frames per batch inside the kernel (1..=256).
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    batch: u32,
    /// Write each frame's send time (CLOCK_MONOTONIC ns) into its jvpn counter.
    #[arg(long)]
    stamp_time: bool,
    /// Vary the source port over N ports from --src-port (session i uses
    /// src-port + i % N; N a power of two), like N clients.
    #[arg(long, value_name = "N")]
    src_ports: Option<u16>,
    /// Print the summary as one JSON object (progress lines go to stderr).
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn parse_id(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("`{s}` is not a session id (a 64-bit number, decimal or 0x-hex)"))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cpu_list = match &args.cpus {
        Some(list) => cpus::parse(list)?,
        None => vec![*cpus::allowed()?.first().context("no CPU available")?],
    };
    // What can be checked without the system first, then the interface, then the
    // privilege, and only then anything that asks the kernel more.
    if args.src.is_ipv4() != args.dst.is_ipv4() {
        return Err(BenchError::FamilyMismatch {
            src: args.src,
            dst: args.dst,
        }
        .into());
    }
    if args.payload < MIN_DATA_LEN {
        return Err(BenchError::PayloadTooSmall {
            size: args.payload,
            min: MIN_DATA_LEN,
        }
        .into());
    }
    if args.batch == 0 || args.batch > MAX_BATCH {
        return Err(BenchError::BadBatch(args.batch).into());
    }
    pktgen::validate_sessions(args.first_id, args.sessions)?;
    cpus::check_allowed(&cpu_list)?;
    let ifindex = netif::ifindex(&args.iface)?;
    jvpn_ctl::datapath::check_privilege()?;
    let src_mac = match args.src_mac {
        Some(m) => m,
        None => netif::mac(&args.iface)?,
    };
    let dst_mac = match args.dst_mac {
        Some(m) => m,
        None => netif::neighbour_mac(ifindex, args.dst)?.ok_or_else(|| BenchError::NoDstMac {
            dst: args.dst,
            iface: args.iface.clone(),
        })?,
    };
    let limit = match (args.count, args.duration) {
        (Some(c), _) => Limit::Count(c),
        (None, Some(d)) => Limit::Duration(d),
        (None, None) => unreachable!("clap requires one"),
    };
    let gen_opts = Options {
        iface: args.iface.clone(),
        frame: FrameSpec {
            src_mac,
            dst_mac,
            src: SocketAddr::new(args.src, args.src_port),
            dst: SocketAddr::new(args.dst, args.dst_port),
            payload_len: args.payload,
            session_id: args.first_id,
        },
        sessions: args.sessions,
        cpus: cpu_list,
        rate: args.rate,
        limit,
        batch: args.batch,
        stamp_time: args.stamp_time,
        src_ports: args.src_ports,
    };
    let generator = Generator::new(gen_opts)?;

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let quiet = args.quiet;
    let json = args.json;
    let summary = generator.run(&STOP, |p| {
        if quiet {
            return;
        }
        let line = format!(
            "{:>7.2} s  {:>12} pps  sent {:>14}",
            p.elapsed,
            thousands(p.pps as u64),
            thousands(p.sent)
        );
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    if let (Some(accepted), Some(refused)) = (summary.veth_xmit, summary.veth_xmit_errors) {
        if refused > 0 {
            eprintln!(
                "warning: `{}` refused {refused} frames: its peer's receive ring was full (give the peer one rx queue per sending CPU, `ethtool -L PEER rx N`, or send from fewer CPUs)",
                summary.iface
            );
        }
        let lost = summary.sent.saturating_sub(accepted + refused);
        if lost > 0 {
            eprintln!(
                "warning: {lost} frames never reached `{}`'s peer: native XDP transmit into a veth needs an XDP program on the peer (e.g. `jvpn-ctl sink`) and the peer up",
                summary.iface
            );
        }
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let n = s.cpus.len();
    println!(
        "sent {} frames in {:.3} s: {} pps ({} CPU{}, {}-byte frames, {}-byte payload, {} session{}){}",
        s.sent,
        s.seconds,
        s.pps.round() as u64,
        n,
        if n == 1 { "" } else { "s" },
        s.frame_bytes,
        s.payload_bytes,
        s.sessions,
        if s.sessions == 1 { "" } else { "s" },
        if s.interrupted { ", interrupted" } else { "" }
    );
    if let (Some(x), Some(e)) = (s.veth_xmit, s.veth_xmit_errors) {
        println!(
            "{}: {x} frames accepted into the peer's receive rings, {e} refused",
            s.iface
        );
    }
    if s.program_errors > 0 {
        println!("generator program errors: {}", s.program_errors);
    }
}
