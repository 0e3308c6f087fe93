//! Compiles the XDP object (`jvpn-ebpf`) with the nightly toolchain and bpf-linker,
//! so that plain `cargo build` / `cargo test` embed an up-to-date program.
//! `cargo xtask build` installs both tools first; this script only finds them.

use std::{env, path::PathBuf};

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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "jvpn-ebpf",
            root_dir: ebpf,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP object failed; `cargo xtask build` shows the full output")
}
