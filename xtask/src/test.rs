//! `cargo xtask test`: bootstrap, build, then the whole test suite.

use std::{ffi::OsString, time::Instant};

use anyhow::Result;

use crate::{bootstrap, build, util};

pub fn run(extra: &[OsString]) -> Result<()> {
    let start = Instant::now();
    if !util::is_root() {
        println!(
            "warning: not running as root: tests that need root or network namespaces \
             will be reported as SKIPPED (run as root, e.g. `sudo -E cargo xtask test`, \
             to run them)"
        );
    }
    let result = suite(extra);
    let took = util::elapsed(start.elapsed());
    match &result {
        Ok(()) => println!("test: ok in {took}"),
        Err(_) => println!("test: FAILED after {took}"),
    }
    result
}

fn suite(extra: &[OsString]) -> Result<()> {
    bootstrap::run()?;
    build::build(false)?;
    let mut cmd = util::cargo();
    cmd.args(["test", "--no-fail-fast"])
        .args(extra)
        .current_dir(util::workspace_root());
    println!("==> {}", util::display(&cmd));
    util::run(&mut cmd)
}
