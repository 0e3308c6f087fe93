//! Command-line verbs, one file each.

mod datapath;
mod demo;

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
    /// Load, attach, inspect or remove the XDP data plane.
    Datapath {
        #[command(subcommand)]
        command: datapath::Command,
    },
    /// Build a three-namespace lab, relay traffic through XDP and move the client's
    /// binding between transports; prints a timeline and a summary, then tears down.
    Demo(demo::Args),
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
        Command::Datapath { command } => datapath::run(command),
        Command::Demo(args) => demo::run(args),
    }
}
