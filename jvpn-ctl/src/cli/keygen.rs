//! `jvpn-ctl keygen --out FILE [--force]`: create an Ed25519 identity.

use std::path::PathBuf;

use anyhow::Context as _;
use jvpn_ctl::proto::{ProtoError, identity};

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the identity (PKCS#8 v2, mode 0600).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace an existing file (its old identity is lost).
    #[arg(long)]
    force: bool,
}

/// Writes the identity and prints its public key (64 hex characters) on stdout, so
/// `jvpn-ctl keygen --out k > k.pub` keeps both.
pub fn run(args: Args) -> anyhow::Result<()> {
    let kp = match identity::generate(&args.out, args.force) {
        Ok(kp) => kp,
        Err(e @ ProtoError::KeyFile { .. }) if !args.force => {
            anyhow::bail!("{e} (use --force to replace it)")
        }
        Err(e) => return Err(e).context("cannot create the identity"),
    };
    println!("{}", identity::public_hex(&kp));
    Ok(())
}
