//! The system commands the tests and the lab call, installed from Debian packages.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util;

/// (command, Debian package providing it)
const TOOLS: [(&str, &str); 8] = [
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    // Turns off veth TX checksum offload in labs (XDP never completes partial sums).
    ("ethtool", "ethtool"),
    // The NAT router of the lab's Wi-Fi path: its SNAT rule, and flushing its
    // mappings (a NAT reboot).
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    // Throughput through the tunnel.
    ("iperf3", "iperf3"),
];

pub fn ensure() -> Result<()> {
    let names: Vec<&str> = TOOLS.iter().map(|(cmd, _)| *cmd).collect();
    let what = format!("system tools ({})", names.join(", "));
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|cmd| util::find_program(cmd).is_none())
        .collect();
    if missing.is_empty() {
        util::step(&what, "present");
        return Ok(());
    }
    let mut pkgs: Vec<&str> = TOOLS
        .iter()
        .filter(|(cmd, _)| missing.contains(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    let pkg_list = pkgs.join(" ");
    let by_hand =
        format!("apt-get update && apt-get install -y --no-install-recommends {pkg_list}");

    if util::find_program("apt-get").is_none() {
        bail!(
            "missing commands {}: install the packages that provide them \
             (on Debian/Ubuntu: {pkg_list}), then rerun `cargo xtask bootstrap`",
            missing.join(", ")
        );
    }
    if !util::is_root() {
        bail!(
            "missing commands {} (Debian packages: {pkg_list}); installing them needs root: \
             run `sudo sh -c '{by_hand}'`, then rerun `cargo xtask bootstrap`",
            missing.join(", ")
        );
    }
    util::step(&what, &format!("installing {pkg_list}"));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        util::run(&mut cmd)
    };
    let hint = || format!("installing {pkg_list} failed (see above); run `{by_hand}` by hand");
    apt(&["update"]).with_context(hint)?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&pkgs);
    apt(&install).with_context(hint)?;

    let still: Vec<&str> = missing
        .into_iter()
        .filter(|cmd| util::find_program(cmd).is_none())
        .collect();
    if !still.is_empty() {
        bail!(
            "installed {pkg_list} but {} still cannot be found on PATH or in /usr/sbin, /sbin",
            still.join(", ")
        );
    }
    Ok(())
}
