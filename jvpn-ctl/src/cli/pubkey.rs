//! `jvpn-ctl pubkey FILE`: print the public key of an identity.

use std::path::PathBuf;

use anyhow::Context as _;
use jvpn_ctl::proto::identity;

#[derive(clap::Args)]
pub struct Args {
    /// Identity file written by `jvpn-ctl keygen`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// Prints the key in the form the peers file expects.
pub fn run(args: Args) -> anyhow::Result<()> {
    let kp = identity::load(&args.file).context("cannot read the identity")?;
    println!("{}", identity::public_hex(&kp));
    Ok(())
}
