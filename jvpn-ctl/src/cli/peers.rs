//! `jvpn-ctl peers add|list|remove`: edit the gateway's allow-list of client keys.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use jvpn_ctl::{
    control::{self, Client, ControlError},
    proto::{Peer, Peers, identity},
};

#[derive(clap::Args)]
pub struct Args {
    /// The peers file (one key per line, optional name, `#` comments).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/jvpn/peers",
        global = true
    )]
    peers: PathBuf,
    /// The running gateway's control socket: `add` and `remove` ask it to reload
    /// (nothing is asked if no gateway runs there).
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Only edit the file; a running gateway keeps its list until it reloads.
    #[arg(long, global = true)]
    no_reload: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Allow a client key (64 hex characters, as printed by `jvpn-ctl pubkey`).
    Add {
        key: String,
        /// A one-word name, usable with `remove`.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the allowed keys and their names.
    List,
    /// Stop allowing a key, given by key or name.
    Remove { key_or_name: String },
}

fn describe(p: &Peer) -> String {
    match &p.name {
        Some(n) => format!("{} {n}", p.key_hex()),
        None => p.key_hex(),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = &args.peers;
    let load = || Peers::load(path).context("cannot read the peers file");
    let save = |peers: &Peers| peers.save(path).context("cannot write the peers file");
    match args.command {
        Command::Add { key, name } => {
            let key = identity::parse_public(&key)?;
            let mut peers = load()?;
            peers
                .add(key, name.as_deref())
                .with_context(|| format!("not adding to {}", path.display()))?;
            save(&peers)?;
            let added = peers.iter().last().map(describe).unwrap_or_default();
            println!("added {added}");
            tell_gateway(&args.socket, args.no_reload)?;
        }
        Command::List => {
            for p in load()?.iter() {
                println!("{}", describe(p));
            }
        }
        Command::Remove { key_or_name } => {
            let mut peers = load()?;
            let removed = peers
                .remove(&key_or_name)
                .with_context(|| format!("not removing from {}", path.display()))?;
            save(&peers)?;
            println!("removed {}", describe(&removed));
            tell_gateway(&args.socket, args.no_reload)?;
        }
    }
    Ok(())
}

/// Asks the gateway on `socket` to reload, if one runs there. The file is already
/// saved: a gateway that is not running reads it when it starts.
fn tell_gateway(socket: &Path, no_reload: bool) -> anyhow::Result<()> {
    if no_reload {
        println!("not reloading: a running gateway applies it on `jvpn-ctl reload` or SIGHUP");
        return Ok(());
    }
    let mut c = match Client::connect(socket) {
        Ok(c) => c,
        Err(ControlError::NotRunning(_) | ControlError::Refused(_)) => {
            println!(
                "no gateway running at {}: it applies the list when it starts",
                socket.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).context("the file is saved, but the gateway was not told"),
    };
    let r = c
        .reload()
        .context("the file is saved, but the gateway's reload failed")?;
    print!("{}", super::reload::describe(&r));
    Ok(())
}
