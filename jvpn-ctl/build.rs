//! Compiles the XDP object (`jvpn-ebpf`) with the nightly toolchain and bpf-linker,
//! so that plain `cargo build` / `cargo test` embed an up-to-date program.
//! `cargo xtask build` installs both tools first; this script only finds them.

use std::{
    env, fs,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// Where `cargo xtask bootstrap` keeps tools (mirrors xtask's `tools_dir`).
fn tools_dir() -> Option<PathBuf> {
    if let Some(d) = env::var_os("JVPN_TOOLS_DIR") {
        return Some(d.into());
    }
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("jvpn"))
}

fn on_path(tool: &str, path: &std::ffi::OsStr) -> bool {
    env::split_paths(path).any(|d| d.join(tool).is_file())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=JVPN_TOOLS_DIR");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .context("workspace root")?
        .to_path_buf();
    // aya-build watches the eBPF crate; the shared parser lives in jvpn-common.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("jvpn-common/src").display()
    );

    // Builds that never load a program (the fuzz targets: `cargo xtask fuzz` and the
    // test suite's fuzz smoke set it) skip the nightly eBPF build; the embedded
    // objects are then empty, and loading one would fail with aya's parse error.
    println!("cargo:rerun-if-env-changed={NO_EBPF}");
    if env::var_os(NO_EBPF).is_some_and(|v| v == "1") {
        let out = PathBuf::from(env::var("OUT_DIR")?);
        for name in ["jvpn", "jvpn-bench-xdp"] {
            fs::write(out.join(name), [])?;
        }
        return Ok(());
    }

    let mut path = env::var_os("PATH").unwrap_or_default();
    if let Some(bin) = tools_dir().map(|d| d.join("bin")) {
        let mut dirs = vec![bin];
        dirs.extend(env::split_paths(&path));
        path = env::join_paths(dirs)?;
    }
    if !on_path("bpf-linker", &path) {
        bail!(
            "bpf-linker not found (looked in $JVPN_TOOLS_DIR/bin, ~/.cache/jvpn/bin and PATH).\n\
             Run `cargo xtask build` once: it installs bpf-linker and the nightly rust-src."
        );
    }
    // SAFETY: build scripts are single-threaded; the child cargo inherits PATH.
    unsafe { env::set_var("PATH", &path) };

    let ebpf = root.join("jvpn-ebpf");
    let ebpf = ebpf.to_str().context("non-UTF-8 path")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    quietly(&out_dir.join("ebpf-build.log"), || {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "jvpn-ebpf",
                root_dir: ebpf,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )
    })
    .context("building the XDP object failed (its output is above)")
}

/// `1`: no XDP objects (empty files instead), for builds that never load them.
const NO_EBPF: &str = "JVPN_NO_EBPF";

/// Where `-v` (`cargo xtask -v build`) asks for the eBPF build's output.
const VERBOSE: &str = "JVPN_BUILD_VERBOSE";

/// Runs `f` with this script's stdout going to `log`, then passes on every cargo
/// directive it printed except the `cargo:warning=` lines, unless `f` failed or
/// `JVPN_BUILD_VERBOSE=1`: aya-build relays each line of the nested nightly cargo
/// as a warning (about 190 `Compiling …` lines on a fresh machine), which reads as
/// a broken build. Real diagnostics of the eBPF crate are among them: `-v` shows them.
fn quietly(log: &Path, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={VERBOSE}");
    let verbose = env::var_os(VERBOSE).is_some_and(|v| v == "1");
    if verbose {
        return f();
    }
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    std::io::stdout().flush()?;
    // SAFETY: plain fd calls on this process's own stdout; build scripts are
    // single-threaded apart from aya-build's relay thread, which it joins on success.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
        return f();
    }
    let result = f();
    let _ = std::io::stdout().flush();
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    for line in text.lines() {
        if result.is_err() || !line.starts_with("cargo:warning=") {
            println!("{line}");
        }
    }
    result
}
