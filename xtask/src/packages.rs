//! The system commands the build, the tests and the lab call, and the files the
//! build reads, installed from Debian packages. `cargo xtask` runs this before it
//! builds the workspace (`bootstrap`), so jvpn-ctl's build dependencies find them.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// (command, Debian package providing it)
const TOOLS: [(&str, &str); 15] = [
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
    // The bench's tunnel phase measures userspace WireGuard as its baseline.
    ("wireguard-go", "wireguard-go"),
    ("wg", "wireguard-tools"),
    // The real server the etcd session store is tested against (lab::etcd).
    ("etcd", "etcd-server"),
    // etcd-client's build script compiles etcd's .proto files with it.
    ("protoc", "protobuf-compiler"),
    // Agents with a wrong wall clock (freshness without synchronized clocks).
    ("faketime", "faketime"),
    // Checks the /metrics families (control::metrics's test).
    ("promtool", "prometheus"),
    // Checks the systemd units (scripts/systemd).
    ("systemd-analyze", "systemd"),
];

/// (file, Debian package providing it): what the build reads that is not a command.
const FILES: [(&str, &str); 1] = [
    // The well-known types etcd's .proto files import; protobuf-compiler only
    // recommends this package, and packages are installed without recommends.
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
];

/// What is not there yet: (command or file, package).
fn not_installed() -> Vec<(&'static str, &'static str)> {
    let tools = TOOLS
        .iter()
        .filter(|(cmd, _)| util::find_program(cmd).is_none());
    let files = FILES.iter().filter(|(path, _)| !Path::new(path).is_file());
    tools.chain(files).copied().collect()
}

pub fn ensure() -> Result<()> {
    let names: Vec<&str> = TOOLS.iter().map(|(cmd, _)| *cmd).collect();
    let files: Vec<&str> = FILES.iter().map(|(_, pkg)| *pkg).collect();
    let what = format!("system tools ({}; {})", names.join(", "), files.join(", "));
    let missing = not_installed();
    if missing.is_empty() {
        util::step(&what, "present");
        return Ok(());
    }
    let absent: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    let absent = absent.join(", ");
    let mut pkgs: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    let pkg_list = pkgs.join(" ");
    let by_hand =
        format!("apt-get update && apt-get install -y --no-install-recommends {pkg_list}");

    if util::find_program("apt-get").is_none() {
        bail!(
            "missing {absent}: install the packages that provide them \
             (on Debian/Ubuntu: {pkg_list}), then rerun `cargo xtask bootstrap`"
        );
    }
    if !util::is_root() {
        bail!(
            "missing {absent} (Debian packages: {pkg_list}); installing them needs root: \
             run `sudo sh -c '{by_hand}'`, then rerun `cargo xtask bootstrap`"
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

    let still: Vec<&str> = not_installed().iter().map(|(name, _)| *name).collect();
    if !still.is_empty() {
        bail!(
            "installed {pkg_list} but {} still cannot be found (commands on PATH or in \
             /usr/sbin, /sbin; files where Debian puts them)",
            still.join(", ")
        );
    }
    Ok(())
}
