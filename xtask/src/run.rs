//! `cargo xtask run`: bootstrap, build, then exec jvpn-ctl (default: `jvpn-ctl demo`).

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, build, util};

pub fn run(args: &[OsString]) -> Result<()> {
    if !util::is_root() {
        bail!(
            "`cargo xtask run` must run as root (jvpn-ctl loads XDP programs and creates \
             network namespaces): rerun it with sudo, e.g. `sudo -E cargo xtask run`"
        );
    }
    bootstrap::run()?;
    let built = build::build(false)?;
    let mut cmd = Command::new(&built.binary);
    if args.is_empty() {
        cmd.arg("demo");
    } else {
        cmd.args(args);
    }
    println!("==> {}", util::display(&cmd));
    // Only returns if the exec failed.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not run {}", built.binary.display()))
}
