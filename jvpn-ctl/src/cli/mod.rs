//! Command-line verbs, one file each.

mod client;
mod datapath;
mod demo;
mod exit;
mod gateway;
mod keygen;
mod lab;
mod peers;
mod pubkey;
// Control-socket verbs; each takes --socket PATH (default /run/jvpn/jvpn.sock).
mod events;
mod policy;
mod session;
mod sessions;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jvpn-ctl",
    version,
    about = "Jumping VPN: a VPN session that outlives its transport"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the client agent (TUN, transports, reattach); `client status` and
    /// `client move TRANSPORT` talk to a running one.
    Client(client::Args),
    /// Load, attach, inspect or remove the XDP data plane.
    Datapath {
        #[command(subcommand)]
        command: datapath::Command,
    },
    /// Build a three-namespace lab, relay traffic through XDP and move the client's
    /// binding between transports; prints a timeline and a summary, then tears down.
    Demo(demo::Args),
    /// Run the exit node: decrypt client traffic into a TUN device, seal the return
    /// traffic, take session keys from the gateway over the link.
    Exit(exit::Args),
    /// Run the gateway: attach the XDP relay and run the controller (handshakes,
    /// sessions, validated reattach, control socket, events, metrics).
    Gateway(gateway::Args),
    /// The lab behind `cargo xtask run`: `lab run [--keep]`, `lab down`.
    Lab {
        #[command(subcommand)]
        command: lab::Command,
    },
    /// Create an Ed25519 identity file and print its public key.
    Keygen(keygen::Args),
    /// Print the public key of an identity file.
    Pubkey(pubkey::Args),
    /// Edit the gateway's allow-list of client keys.
    Peers(peers::Args),
    /// List the gateway's sessions (table, or --json).
    Sessions(sessions::Args),
    /// Show or kill one session of the gateway.
    Session {
        #[command(subcommand)]
        command: session::Command,
    },
    /// Print the gateway's recent events; --follow keeps streaming new ones.
    Events(events::Args),
    /// Gateway counters: sessions per state, traffic, reattach outcomes, handshakes,
    /// malformed messages, XDP drop reasons, events.
    Stats(stats::Args),
    /// Show the gateway's running policy.
    Policy {
        #[command(subcommand)]
        command: policy::Command,
    },
}

/// Where maps and links are pinned.
#[derive(clap::Args, Clone)]
struct PinArgs {
    /// Pin directory on bpffs.
    #[arg(long, default_value = "/sys/fs/bpf/jvpn")]
    pin_dir: PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Client(args) => client::run(args),
        Command::Datapath { command } => datapath::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Exit(args) => exit::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Lab { command } => lab::run(command),
        Command::Pubkey(args) => pubkey::run(args),
        Command::Peers(args) => peers::run(args),
        Command::Sessions(args) => sessions::run(args),
        Command::Session { command } => session::run(command),
        Command::Events(args) => events::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Policy { command } => policy::run(command),
    }
}

/// Resolves on SIGINT or SIGTERM (the daemons' shutdown).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install SIGINT/SIGTERM handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
