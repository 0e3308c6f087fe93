//! Installs bpf-linker built against the nightly toolchain's own libLLVM.
//!
//! Layout under the tools dir (see docs/toolchain.md):
//! - `llvm-N/`: an `LLVM_PREFIX` shim: an empty executable `bin/llvm-config` (the
//!   build script only checks it exists) and `lib/libLLVM.so*` symlinks into the
//!   nightly sysroot. bpf-linker links that `libLLVM.so` with an rpath to `lib/`.
//! - `bpf-linker-llvmN/`: the `cargo install --root`, plus `stamp` recording the
//!   libLLVM file name and bpf-linker version it was built for.
//! - `bin/bpf-linker`: a symlink to the installed binary; jvpn-ctl's build.rs puts
//!   `bin/` first on PATH.

use std::{
    env, fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bootstrap::{Nightly, Toolchains},
    util,
};

pub const VERSION: &str = "0.13.0";
/// The `llvm-NN` features bpf-linker 0.13.0 offers.
const LLVM_MAJORS: [u32; 3] = [21, 22, 23];

struct Layout {
    shim: PathBuf,
    install: PathBuf,
    binary: PathBuf,
    stamp: PathBuf,
    link: PathBuf,
}

impl Layout {
    fn new(tools: &Path, major: u32) -> Self {
        let install = tools.join(format!("bpf-linker-llvm{major}"));
        Self {
            shim: tools.join(format!("llvm-{major}")),
            binary: install.join("bin/bpf-linker"),
            stamp: install.join("stamp"),
            install,
            link: tools.join("bin/bpf-linker"),
        }
    }
}

pub fn ensure(nightly: &Nightly, toolchains: &Toolchains, tools: &Path) -> Result<()> {
    let major = nightly.llvm_major;
    let what = format!("bpf-linker {VERSION} (LLVM {major})");
    if !LLVM_MAJORS.contains(&major) {
        bail!(
            "the nightly toolchain uses LLVM {major}, but bpf-linker {VERSION} supports only \
             LLVM {LLVM_MAJORS:?}: pin a matching nightly (e.g. `rustup toolchain install \
             nightly-YYYY-MM-DD` and point `nightly` at it) or update VERSION and LLVM_MAJORS \
             in xtask/src/bpf_linker.rs"
        );
    }
    let lib_dir = nightly.sysroot.join("lib");
    let libllvm = find_libllvm(&lib_dir)?;
    let layout = Layout::new(tools, major);
    let want_stamp = format!("{libllvm}\nbpf-linker {VERSION}\n");

    let status = match fs::read_to_string(&layout.stamp) {
        Ok(stamp) if stamp == want_stamp && installed(&layout, &libllvm) => None,
        Ok(stamp) if stamp == want_stamp => Some("incomplete, reinstalling".to_owned()),
        Ok(stamp) => Some(format!(
            "outdated (built for {}), reinstalling",
            stamp.lines().next().unwrap_or("?")
        )),
        Err(_) if adoptable(&layout, major) => {
            write_shim(&layout.shim, &lib_dir, &libllvm)?;
            fs::write(&layout.stamp, &want_stamp)
                .with_context(|| format!("writing {}", layout.stamp.display()))?;
            util::step(&what, "present (adopted an unstamped install)");
            return relink(&layout);
        }
        Err(_) => Some("installing (about a minute)".to_owned()),
    };
    let Some(status) = status else {
        util::step(&what, "present");
        return relink(&layout);
    };
    util::step(&what, &status);
    install(&layout, &lib_dir, &libllvm, major, toolchains)?;
    fs::write(&layout.stamp, &want_stamp)
        .with_context(|| format!("writing {}", layout.stamp.display()))?;
    relink(&layout)
}

/// The nightly's shared LLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_libllvm(lib_dir: &Path) -> Result<String> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
        })
        .collect();
    names.sort();
    names.pop().with_context(|| {
        format!(
            "the nightly toolchain has no libLLVM.so.* in {}; reinstall it with \
             `rustup toolchain uninstall nightly` and rerun `cargo xtask bootstrap`",
            lib_dir.display()
        )
    })
}

/// Everything the stamp vouches for is still on disk (symlinks resolve).
fn installed(layout: &Layout, libllvm: &str) -> bool {
    layout.binary.is_file()
        && layout.shim.join("bin/llvm-config").is_file()
        && layout.shim.join("lib").join(libllvm).is_file()
}

/// An install made by hand with the TOOLCHAIN.md recipe before stamps existed:
/// bpf-linker VERSION with the right feature, and it starts (its libLLVM loads).
fn adoptable(layout: &Layout, major: u32) -> bool {
    let Ok(record) = fs::read_to_string(layout.install.join(".crates2.json")) else {
        return false;
    };
    record.contains(&format!("\"bpf-linker {VERSION} "))
        && record.contains(&format!("\"llvm-{major}\""))
        && Command::new(&layout.binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn install(
    layout: &Layout,
    lib_dir: &Path,
    libllvm: &str,
    major: u32,
    toolchains: &Toolchains,
) -> Result<()> {
    // A failed or interrupted install must not look current next time.
    match fs::remove_file(&layout.stamp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", layout.stamp.display()));
        }
        _ => {}
    }
    write_shim(&layout.shim, lib_dir, libllvm)?;

    // Build with stable (any toolchain works, nightly churns) and with none of the
    // outer cargo's per-build settings, which describe the jvpn workspace, not this.
    let mut cmd = if toolchains.has("stable") {
        let mut c = Command::new("rustup");
        c.args(["run", "stable", "cargo"]);
        c
    } else {
        util::cargo()
    };
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        VERSION,
        "--locked",
        "--force",
    ])
    .args([
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ])
    .arg("--root")
    .arg(&layout.install)
    .env("LLVM_PREFIX", &layout.shim)
    .current_dir(layout.install.parent().expect("install dir has a parent"));
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if leaks_into_install(key) {
            cmd.env_remove(key);
        }
    }
    util::run(&mut cmd).context(
        "building bpf-linker failed (see the output above); check network access to crates.io \
         and that a C toolchain (`cc`) is installed, then rerun `cargo xtask bootstrap`",
    )?;
    let version = util::output(Command::new(&layout.binary).arg("--version")).context(
        "the freshly built bpf-linker does not start; delete the tools dir and rerun \
         `cargo xtask bootstrap`",
    )?;
    println!("    built {}", version.trim());
    Ok(())
}

/// Environment a surrounding `cargo run`/build would pass down that must not
/// reach `cargo install` (network and registry settings are kept).
fn leaks_into_install(key: &str) -> bool {
    const KEEP: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_TERM_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const DROP: [&str; 12] = [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "LLVM_CONFIG_PATH",
        "MAKEFLAGS",
    ];
    if key.starts_with("CARGO") {
        return !KEEP.iter().any(|k| key.starts_with(k));
    }
    DROP.contains(&key) || key.starts_with("LLVM_SYS_")
}

/// The `LLVM_PREFIX` shim: `bin/llvm-config` (empty, executable) and
/// `lib/libLLVM.so` + `lib/<libllvm>` pointing into the nightly sysroot.
fn write_shim(shim: &Path, lib_dir: &Path, libllvm: &str) -> Result<()> {
    let ctx = || format!("setting up the LLVM shim in {}", shim.display());
    let bin = shim.join("bin");
    let lib = shim.join("lib");
    fs::create_dir_all(&bin).with_context(ctx)?;
    fs::create_dir_all(&lib).with_context(ctx)?;
    let config = bin.join("llvm-config");
    if !config.is_file() {
        fs::write(&config, "").with_context(ctx)?;
    }
    fs::set_permissions(&config, fs::Permissions::from_mode(0o755)).with_context(ctx)?;
    // Drop links to older nightlies' libLLVM.
    for entry in fs::read_dir(&lib).with_context(ctx)? {
        let name = entry.with_context(ctx)?.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("libLLVM") && n != libllvm && n != "libLLVM.so")
        {
            fs::remove_file(lib.join(&name)).with_context(ctx)?;
        }
    }
    let target = lib_dir.join(libllvm);
    replace_symlink(&target, &lib.join("libLLVM.so")).with_context(ctx)?;
    replace_symlink(&target, &lib.join(libllvm)).with_context(ctx)
}

/// Points `<tools>/bin/bpf-linker` at the installed binary, if it does not already.
fn relink(layout: &Layout) -> Result<()> {
    if fs::read_link(&layout.link).is_ok_and(|t| t == layout.binary) {
        return Ok(());
    }
    let dir = layout.link.parent().expect("link has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    replace_symlink(&layout.binary, &layout.link)
        .with_context(|| format!("linking {}", layout.link.display()))
}

/// Atomically (re)creates `link` -> `target`.
fn replace_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp)?;
    fs::rename(&tmp, link)
}
