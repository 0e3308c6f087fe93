//! `jvpn-ctl peers add|list|remove`: edit the gateway's allow-list of client keys.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use jvpn_ctl::proto::{Peer, Peers, identity};

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
        }
    }
    Ok(())
}
