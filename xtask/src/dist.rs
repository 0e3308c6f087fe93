//! `cargo xtask dist`: what an operator installs, in `target/dist/`: a release
//! `jvpn-ctl` (the XDP object embedded), the systemd units, the example
//! configurations, shell completions and man pages (written by the binary itself,
//! `jvpn-ctl generate`, from its clap definitions).
//!
//! ```text
//! target/dist/
//!   bin/jvpn-ctl
//!   systemd/jvpn-gateway.service jvpn-exit.service jvpn-client.service
//!   examples/gateway.toml exit.toml client.toml
//!   completions/jvpn-ctl.bash _jvpn-ctl jvpn-ctl.fish
//!   man/man1/jvpn-ctl.1 jvpn-ctl-gateway.1 ...
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, util};

pub fn run() -> Result<()> {
    let start = Instant::now();
    // The XDP object is built by jvpn-ctl's build script: nightly and bpf-linker.
    bootstrap::run()?;
    let root = util::workspace_root();
    let binary = build_release(&root)?;
    // <target>/release/jvpn-ctl → <target>/dist
    let target = binary
        .parent()
        .and_then(Path::parent)
        .context("the release binary is not in <target>/release")?;
    let dist = target.join("dist");
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }

    let bin = dist.join("bin/jvpn-ctl");
    copy(&binary, &bin)?;
    for (from, to, ext) in [
        ("scripts/systemd", "systemd", "service"),
        ("scripts/examples", "examples", "toml"),
    ] {
        let files = listed(&root.join(from), ext)?;
        if files.is_empty() {
            bail!("no *.{ext} in {from}");
        }
        for f in files {
            copy(&f, &dist.join(to).join(f.file_name().expect("a file")))?;
        }
    }
    let mut generate = Command::new(&bin);
    generate.arg("generate").arg("--out").arg(&dist);
    println!("==> {}", util::display(&generate));
    util::output(&mut generate)?;

    println!("dist: ok in {}", util::elapsed(start.elapsed()));
    let shown = dist.strip_prefix(&root).unwrap_or(&dist).to_path_buf();
    for sub in ["bin", "systemd", "examples", "completions", "man/man1"] {
        let files = listed(&dist.join(sub), "")?;
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        let size: u64 = files
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        let list = if names.len() > 6 {
            format!("{} files: {} ...", names.len(), names[..4].join(" "))
        } else {
            names.join(" ")
        };
        println!(
            "  {:<28} {list} ({})",
            format!("{}/{sub}/", shown.display()),
            bytes(size)
        );
    }
    let d = shown.display();
    println!(
        "\nInstall on a server (as root; README.md, \"Installing on a server\"):\n\
         \x20 install -m 0755 {d}/bin/jvpn-ctl /usr/local/bin/\n\
         \x20 install -d -m 0700 /etc/jvpn\n\
         \x20 install -m 0600 {d}/examples/gateway.toml /etc/jvpn/    # or exit.toml, client.toml; then edit it\n\
         \x20 jvpn-ctl config check /etc/jvpn/gateway.toml\n\
         \x20 install -m 0644 {d}/systemd/jvpn-gateway.service /etc/systemd/system/\n\
         \x20 systemctl daemon-reload && systemctl enable --now jvpn-gateway\n\
         \x20 install -D -m 0644 -t /usr/local/share/man/man1 {d}/man/man1/*.1\n\
         \x20 install -D -m 0644 {d}/completions/jvpn-ctl.bash /usr/share/bash-completion/completions/jvpn-ctl\n\
         \x20 (zsh: {d}/completions/_jvpn-ctl into a $fpath directory; fish: jvpn-ctl.fish into\n\
         \x20 /usr/share/fish/vendor_completions.d/)"
    );
    Ok(())
}

/// `cargo build --release -p jvpn-ctl --bin jvpn-ctl`; returns the binary's path, as
/// cargo reports it.
fn build_release(root: &Path) -> Result<PathBuf> {
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "-p", "jvpn-ctl", "--bin", "jvpn-ctl"])
        .current_dir(root);
    println!("==> {}", util::display(&cmd));
    Ok(crate::build::build_reporting(cmd)?.binary)
}

fn listed(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| ext.is_empty() || p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// Copies `from` to `to` (creating its directory), keeping the mode.
fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// `512 B`, `8.4 KiB`, `23.1 MiB`.
fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(8602), "8.4 KiB");
        assert_eq!(bytes(24_222_105), "23.1 MiB");
    }
}
