//! Command-line verbs, one file each.

mod client;
mod config;
mod datapath;
mod demo;
mod drain;
mod exit;
mod gateway;
mod generate;
mod keygen;
mod lab;
mod peers;
mod pktgen;
mod pubkey;
mod sink;
// Control-socket verbs; each takes --socket PATH (default /run/jvpn/jvpn.sock).
mod cluster;
mod events;
mod policy;
mod reload;
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
    /// Check a configuration file as its daemon reads it: `config check [--role
    /// gateway|exit|client] FILE` (nothing is started, created or written).
    Config {
        #[command(subcommand)]
        command: config::Command,
    },
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
    /// Shell completions and man pages from these definitions (`cargo xtask dist`).
    #[command(hide = true)]
    Generate(generate::Args),
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
    /// End every session of a running gateway (CLOSE to each client); a stop keeps them
    Drain(drain::Args),
    /// A running gateway reads its configuration and peers file again (as on SIGHUP)
    /// and applies the peers, `policy`, `[limits]` and `security_aggregate_ms`; it
    /// names what needs a restart.
    Reload(reload::Args),
    /// Show the gateway's running policy.
    Policy {
        #[command(subcommand)]
        command: policy::Command,
    },
    /// A cluster node's view of its cluster: `cluster status [--json]`.
    Cluster {
        #[command(subcommand)]
        command: cluster::Command,
    },
    /// Send jvpn DATA frames for N sessions out of an interface (XDP live frames), at
    /// a rate or flat out, for a count or a duration; prints pps and a summary.
    Pktgen(pktgen::Args),
    /// Count and drop every frame arriving on an interface (XDP); prints pps and a
    /// summary (the receiving end for `pktgen`).
    Sink(sink::Args),
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
        Command::Config { command } => config::run(command),
        Command::Datapath { command } => datapath::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Exit(args) => exit::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Lab { command } => lab::run(command),
        Command::Pubkey(args) => pubkey::run(args),
        Command::Peers(args) => peers::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Sessions(args) => sessions::run(args),
        Command::Session { command } => session::run(command),
        Command::Events(args) => events::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Drain(args) => drain::run(args),
        Command::Policy { command } => policy::run(command),
        Command::Cluster { command } => cluster::run(command),
        Command::Pktgen(args) => pktgen::run(args),
        Command::Sink(args) => sink::run(args),
    }
}

/// A positive number of seconds, at most a day.
fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(format!("{s} seconds is outside (0, 86400]"));
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

/// 1234567 → "1,234,567"
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A clap error as one line: the message and its details, without the usage block
/// and the `--help` tip (help and version output are left as they are).
pub fn one_line(e: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind::{
        DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
    };
    if matches!(
        e.kind(),
        DisplayHelp | DisplayHelpOnMissingArgumentOrSubcommand | DisplayVersion
    ) {
        return None;
    }
    let text = e.render().to_string();
    let body = text
        .split("\n\nUsage:")
        .next()
        .unwrap_or(&text)
        .split("\n\nFor more information")
        .next()
        .unwrap_or(&text);
    let words: Vec<&str> = body.split_whitespace().collect();
    Some(words.join(" "))
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn errors_render_as_one_line() {
        let bad = |args: &[&str]| {
            let e = Cli::try_parse_from(args.iter().copied())
                .err()
                .expect("an error");
            one_line(&e).expect("not help")
        };
        let e = bad(&[
            "jvpn-ctl", "pktgen", "--iface", "x", "--src", "10.0.0.1", "--dst", "10.0.0.2",
            "--count", "1", "--rate", "fast",
        ]);
        assert!(
            e.starts_with("error: invalid value 'fast' for '--rate <PPS>'"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = bad(&["jvpn-ctl", "datapath", "up"]);
        assert!(e.contains("--iface"), "{e}");
        assert!(!e.contains('\n') && !e.contains("Usage"), "{e}");
        let help = Cli::try_parse_from(["jvpn-ctl", "--help"]).err().unwrap();
        assert!(one_line(&help).is_none());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
