//! `cargo xtask fuzz [TARGET] [--runs N] [--seconds S]`: the cargo-fuzz targets of
//! `tests/fuzz/` (libFuzzer, nightly), each from its committed corpus. Installs
//! cargo-fuzz into the tools directory first if it is missing.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, util};

/// cargo-fuzz 0.13.2 builds with the stable toolchain (1.95) and drives nightly.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub struct Args {
    pub target: Option<String>,
    pub runs: Option<u64>,
    pub seconds: Option<u64>,
}

/// The `fuzz` verb.
pub fn run(a: Args) -> Result<()> {
    bootstrap::run()?;
    let fuzz = cargo_fuzz()?;
    let dir = util::workspace_root().join("tests/fuzz");
    let all = targets(&fuzz, &dir)?;
    let chosen = match &a.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are: {}", all.join(", ")),
        None => all,
    };
    for t in &chosen {
        run_target(&fuzz, &dir, t, a.runs, a.seconds)?;
    }
    Ok(())
}

/// Seconds each target runs in `cargo xtask test`'s smoke check.
const SMOKE_SECONDS: u64 = 5;

/// `cargo xtask test`'s smoke check: every target built, then run for a few seconds
/// from its committed corpus (read only: what it finds goes to a scratch
/// directory), so a decoder or invariant that breaks fails the suite.
pub fn smoke() -> Result<()> {
    let started = Instant::now();
    let fuzz = cargo_fuzz()?;
    let dir = util::workspace_root().join("tests/fuzz");
    util::step("fuzz smoke", "building every target (nightly)");
    util::run(
        nightly(&fuzz)
            .arg("build")
            .args(FLAGS)
            .arg(SMOKE_PROFILE)
            .arg("--fuzz-dir")
            .arg(&dir),
    )
    .context("building the fuzz targets failed")?;
    let scratch = std::env::temp_dir().join(format!("jvpn-fuzz-smoke-{}", std::process::id()));
    let mut result = Ok(());
    for t in targets(&fuzz, &dir)? {
        let found = scratch.join(&t);
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        let mut cmd = run_cmd(
            &fuzz,
            &dir,
            &t,
            &[SMOKE_PROFILE],
            &[found, dir.join("corpus").join(&t)],
        );
        cmd.arg(format!("-max_total_time={SMOKE_SECONDS}"));
        println!("==> fuzz smoke {t}: {SMOKE_SECONDS} s");
        if let Err(e) = util::run(&mut cmd) {
            result = Err(e.context(format!(
                "fuzz target {t} failed its smoke run: the crashing input is in {}",
                dir.join("artifacts").join(&t).display()
            )));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    println!("fuzz smoke: ok in {}", util::elapsed(started.elapsed()));
    Ok(())
}

/// The build flags of every target, for `build`, `run` and `cmin` alike (a
/// different set would rebuild). No sanitizer: the code under test is safe Rust
/// (and ring's own assembly), so ASan would halve the executions without finding
/// more; debug assertions and overflow checks stay on.
const FLAGS: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];

/// The smoke check builds the targets unoptimised: 2 min 41 s from scratch here
/// (without the XDP objects), where the optimised build with them took 5 min 52 s
/// in a clean-clone run of the suite; and a few seconds of fuzzing
/// need no speed (the protocol target replays its corpus at ~27 exec/s, ~30 s).
/// Long runs (`cargo xtask fuzz`) stay optimised; the two builds live side by side.
const SMOKE_PROFILE: &str = "--dev";

/// `cargo fuzz run TARGET CORPUS...` with the flags; libFuzzer's options follow
/// `--`, which ends the command (append them).
fn run_cmd(
    fuzz: &PathBuf,
    dir: &PathBuf,
    target: &str,
    profile: &[&str],
    corpora: &[PathBuf],
) -> Command {
    let mut cmd = nightly(fuzz);
    cmd.arg("run")
        .args(FLAGS)
        .args(profile)
        .arg("--fuzz-dir")
        .arg(dir)
        .arg(target)
        .args(corpora)
        .args(["--", "-print_final_stats=1"]);
    cmd
}

fn nightly(program: &PathBuf) -> Command {
    let mut cmd = Command::new(program);
    // The targets never load an XDP program: jvpn-ctl is built without its objects
    // (no nested nightly eBPF build, ~45 s of every fuzz build).
    cmd.arg("fuzz")
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .env("JVPN_NO_EBPF", "1");
    cmd
}

fn targets(fuzz: &PathBuf, dir: &PathBuf) -> Result<Vec<String>> {
    let out = util::output(nightly(fuzz).arg("list").arg("--fuzz-dir").arg(dir))?;
    Ok(out
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

fn run_target(
    fuzz: &PathBuf,
    dir: &PathBuf,
    target: &str,
    runs: Option<u64>,
    seconds: Option<u64>,
) -> Result<()> {
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("creating the corpus directory {}", corpus.display()))?;
    util::step(&format!("fuzz {target}"), "building and running");
    let started = Instant::now();
    let mut cmd = run_cmd(fuzz, dir, target, &[], std::slice::from_ref(&corpus));
    cmd.arg(format!("-runs={}", runs.map_or(-1, |r| r as i64)));
    if let Some(s) = seconds {
        cmd.arg(format!("-max_total_time={s}"));
    }
    util::run(&mut cmd).with_context(|| {
        format!(
            "fuzz target {target} failed: the crashing input is in {}; replay it with \
             `cargo xtask fuzz {target} --runs 1` after fixing, and add it as a regression test",
            dir.join("artifacts").join(target).display()
        )
    })?;
    util::step(
        &format!("fuzz {target}"),
        &format!("ok in {}", util::elapsed(started.elapsed())),
    );
    Ok(())
}

/// `<tools>/cargo-fuzz/bin/cargo-fuzz`, installed with `cargo install` if missing.
fn cargo_fuzz() -> Result<PathBuf> {
    let root = util::tools_dir()?.join("cargo-fuzz");
    let bin = root.join("bin/cargo-fuzz");
    let stamp = root.join("version");
    if bin.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|v| v == CARGO_FUZZ_VERSION) {
        util::step("cargo-fuzz", "present");
        return Ok(bin);
    }
    util::step(
        "cargo-fuzz",
        &format!("installing {CARGO_FUZZ_VERSION} (about 2 minutes)"),
    );
    util::run(
        util::cargo()
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--force",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .arg("--root")
            .arg(&root),
    )
    .context("installing cargo-fuzz from crates.io failed: check that crates.io is reachable")?;
    std::fs::write(&stamp, CARGO_FUZZ_VERSION)
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(bin)
}
