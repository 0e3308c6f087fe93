//! `jvpn-ctl datapath up|down|status`.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use jvpn_common::counters;
use jvpn_ctl::datapath::{self, AttachMode, Datapath, DatapathConfig, Pinned};

use super::PinArgs;

#[derive(Subcommand)]
pub enum Command {
    /// Load the relay and attach it to interfaces. The data plane keeps running after
    /// this command exits (maps and links are pinned).
    Up {
        /// Interface to attach to (repeat for several).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// UDP port of the protocol.
        #[arg(long, default_value_t = jvpn_common::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Capacity of the session map; fixed while the pins exist.
        #[arg(long, default_value_t = jvpn_common::DEFAULT_MAX_SESSIONS, value_parser = clap::value_parser!(u32).range(1..))]
        max_sessions: u32,
        /// Use generic (SKB) XDP instead of native.
        #[arg(long)]
        skb: bool,
        /// Log every rejected packet (slow).
        #[arg(long)]
        debug_log: bool,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Detach the relay from interfaces; `--all` also removes the maps.
    Down {
        #[arg(long = "iface", required_unless_present = "all")]
        ifaces: Vec<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Interfaces, session count and drop counters of the running data plane.
    Status {
        #[command(flatten)]
        pin: PinArgs,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Up {
            ifaces,
            port,
            max_sessions,
            skb,
            debug_log,
            pin,
        } => {
            // Check everything that can be checked before anything is created.
            for iface in &ifaces {
                datapath::interface_index(iface)?;
            }
            let fresh = !pin.pin_dir.exists();
            // The controller's lock: loading writes the maps (the slot copies), which
            // only one process may do; a gateway running on these pins refuses this.
            // (On a bpffs, mounted first if the host has none: the lock is on the
            // directory.)
            datapath::prepare_pin_dir(&pin.pin_dir)?;
            let _lock = jvpn_ctl::gateway::lock::ControllerLock::acquire(&pin.pin_dir)?;
            let mut dp = Datapath::load(DatapathConfig {
                port,
                max_sessions,
                pin_dir: pin.pin_dir.clone(),
                debug_log,
            })?;
            let mode = if skb {
                AttachMode::Skb
            } else {
                AttachMode::Native
            };
            match dp.attach_all(&ifaces, mode) {
                Ok(modes) => {
                    for (iface, used) in ifaces.iter().zip(modes) {
                        println!("{iface}: jvpn relay attached ({used} mode), UDP port {port}");
                    }
                }
                Err(e) => {
                    // The maps this command pinned go too, if it created the directory.
                    drop(dp);
                    if fresh {
                        let _ = std::fs::remove_dir_all(&pin.pin_dir);
                    }
                    return Err(e.into());
                }
            }
            println!("maps and links pinned in {}", pin.pin_dir.display());
            Ok(())
        }
        Command::Down { ifaces, all, pin } => {
            let targets = if all {
                Pinned::open(&pin.pin_dir)?.attached()
            } else {
                ifaces
            };
            for iface in &targets {
                datapath::detach(&pin.pin_dir, iface)?;
                println!("{iface}: detached");
            }
            if all {
                std::fs::remove_dir_all(&pin.pin_dir)
                    .with_context(|| format!("removing {}", pin.pin_dir.display()))?;
                println!("removed {}", pin.pin_dir.display());
            }
            Ok(())
        }
        Command::Status { pin } => {
            let p = Pinned::open(&pin.pin_dir)?;
            let ifaces = p.attached();
            if ifaces.is_empty() {
                bail!(
                    "no interface has the relay attached (pin dir {})",
                    pin.pin_dir.display()
                );
            }
            println!("attached:  {}", ifaces.join(", "));
            println!("sessions:  {}", p.session_count());
            let hops = p.next_hops()?;
            if hops.is_empty() {
                println!("next hops: none valid (every DATA packet asks the kernel's FIB)");
            } else {
                println!("next hops: {} valid", hops.len());
                for (slot, h) in &hops {
                    println!(
                        "  {slot:<6} ifindex {:<4} {} -> {}  mtu {}",
                        h.ifindex,
                        jvpn_ctl::bench::netif::format_mac(&h.smac),
                        jvpn_ctl::bench::netif::format_mac(&h.dmac),
                        h.mtu
                    );
                }
            }
            println!("not relayed, by reason:");
            for (i, n) in p.drops()?.iter().enumerate() {
                let reason = i as u32;
                let note = match (reason, counters::fate(reason)) {
                    (_, counters::Fate::Passed) => " (handed to the kernel)",
                    (counters::COOKIE_INVALID, _) => " (answered with a new COOKIE)",
                    (_, counters::Fate::Answered) => " (answered with a COOKIE, not lost)",
                    (_, counters::Fate::Relayed) => " (relayed, next hop from the kernel's FIB)",
                    (_, counters::Fate::Dropped) => "",
                };
                println!("  {:<20} {n}{note}", counters::name(reason));
            }
            Ok(())
        }
    }
}
