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
    let built = build::build(false)?;
    let mut cmd = util::cargo();
    cmd.args(["test", "--no-fail-fast"])
        .args(extra)
        .current_dir(util::workspace_root());
    println!("==> {}", util::display(&cmd));
    let tests = util::run(&mut cmd);
    // The benchmark smoke check runs even when a test failed: its own failure is
    // reported separately, and the tests' result decides first.
    let smoke = bench_smoke(&built.binary);
    let fuzz = crate::fuzz::smoke();
    tests.and(smoke).and(fuzz)
}

/// `jvpn-bench --quick` (the debug build) as a smoke check: every phase must run and
/// the report must render. No thresholds: figures of a quick debug run mean nothing.
fn bench_smoke(ctl: &std::path::Path) -> Result<()> {
    if !util::is_root() {
        println!("SKIPPED benchmark smoke check (`jvpn-bench --quick`): needs root");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("jvpn-bench-smoke-{}", std::process::id()));
    let json = dir.join("quick.json");
    let runner = ctl.with_file_name("jvpn-bench");
    let mut cmd = std::process::Command::new(&runner);
    cmd.arg("--quick").arg("--json").arg(&json);
    println!("==> benchmark smoke check: {}", util::display(&cmd));
    let start = Instant::now();
    let ran = util::run(&mut cmd);
    let rendered = std::fs::read_to_string(&json)
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(serde_json::from_str::<serde_json::Value>(&t)?))
        .and_then(|v| crate::report::render(&v, "quick.json", &dir));
    let _ = std::fs::remove_dir_all(&dir);
    ran?;
    let files = rendered?;
    println!(
        "benchmark smoke check: ok in {} (every phase ran; report rendered: {} files)",
        util::elapsed(start.elapsed()),
        files.len()
    );
    Ok(())
}
