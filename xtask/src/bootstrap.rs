//! `cargo xtask bootstrap`: makes sure everything the build and the tests need is
//! installed. Idempotent; when all is present it only asks rustup and rustc.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{bpf_linker, packages, util};

const RUSTUP_HINT: &str = "install rustup from your distribution or https://rustup.rs, then rerun `cargo xtask bootstrap`";

/// What bootstrap learned about the nightly toolchain.
pub struct Nightly {
    pub sysroot: PathBuf,
    /// `22` for `LLVM version: 22.1.4`.
    pub llvm_major: u32,
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    let result = steps();
    let took = util::elapsed(start.elapsed());
    match &result {
        Ok(()) => println!("bootstrap: ok in {took}"),
        Err(_) => println!("bootstrap: FAILED after {took}"),
    }
    result
}

fn steps() -> Result<()> {
    let toolchains = nightly_toolchain()?;
    let nightly = query_nightly()?;
    rust_src(&nightly)?;
    bpf_linker::ensure(&nightly, &toolchains, &util::tools_dir()?)?;
    packages::ensure()
}

/// Installed toolchains, as `rustup toolchain list` names them.
pub struct Toolchains(Vec<String>);

impl Toolchains {
    fn list() -> Result<Self> {
        if util::find_program("rustup").is_none() {
            bail!("rustup not found: {RUSTUP_HINT}");
        }
        let out = util::output(Command::new("rustup").args(["toolchain", "list"]))
            .with_context(|| format!("listing rust toolchains failed; {RUSTUP_HINT}"))?;
        let names = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        Ok(Self(names))
    }

    /// True for `nightly` or `nightly-<host>`, not for dated `nightly-2026-05-19-<host>`.
    pub fn has(&self, channel: &str) -> bool {
        self.0.iter().any(|name| {
            name.strip_prefix(channel).is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('-')
                        .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
            })
        })
    }
}

fn nightly_toolchain() -> Result<Toolchains> {
    let toolchains = Toolchains::list()?;
    if toolchains.has("nightly") {
        util::step("nightly toolchain", "present");
        return Ok(toolchains);
    }
    util::step("nightly toolchain", "installing");
    util::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context(
        "installing the nightly toolchain failed; check network access to static.rust-lang.org \
         and run `rustup toolchain install nightly --profile minimal` by hand",
    )?;
    Toolchains::list()
}

/// `rustup run nightly rustc ...` works whether `rustc` on PATH is rustup's proxy or not.
fn nightly_rustc() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "rustc"])
        .env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn query_nightly() -> Result<Nightly> {
    let hint = "the nightly toolchain looks broken: run `rustup toolchain uninstall nightly` \
                and rerun `cargo xtask bootstrap`";
    let version = util::output(nightly_rustc().arg("-vV")).context(hint)?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .with_context(|| format!("`rustc +nightly -vV` reports no LLVM version:\n{version}"))?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse the nightly's LLVM version {llvm:?}"))?;
    let sysroot = util::output(nightly_rustc().args(["--print", "sysroot"])).context(hint)?;
    Ok(Nightly {
        sysroot: PathBuf::from(sysroot.trim()),
        llvm_major,
    })
}

fn rust_src(nightly: &Nightly) -> Result<()> {
    let marker = nightly
        .sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if marker.is_file() {
        util::step("nightly rust-src", "present");
        return Ok(());
    }
    util::step("nightly rust-src", "installing");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context(
        "installing rust-src failed; run `rustup component add rust-src --toolchain nightly` by hand",
    )?;
    if !marker.is_file() {
        bail!(
            "rust-src was installed but {} is still missing; reinstall it with \
             `rustup component remove rust-src --toolchain nightly && \
             rustup component add rust-src --toolchain nightly`",
            marker.display()
        );
    }
    Ok(())
}
