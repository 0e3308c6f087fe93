//! `cargo xtask run`: bootstrap, build, then exec jvpn-ctl.
//!
//! * no arguments: `jvpn-ctl lab run` (the lab scenario);
//! * `--keep`: `jvpn-ctl lab run --keep` (the lab stays up);
//! * `--cluster`: `jvpn-ctl lab run --cluster` (the gateway-cluster scenario);
//! * `--iface IFACE [--config FILE]`: `jvpn-ctl gateway` on a real interface;
//! * anything else starting with a verb: `jvpn-ctl ARGS`.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, build, util};

/// The jvpn-ctl arguments for `cargo xtask run -- ARGS`.
fn translate(args: &[OsString]) -> Result<Vec<OsString>> {
    let strs: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    if strs.len() != args.len() {
        bail!("arguments must be UTF-8");
    }
    let out: Vec<&str> = match strs.as_slice() {
        [] => vec!["lab", "run"],
        ["--keep"] => vec!["lab", "run", "--keep"],
        ["--cluster"] => vec!["lab", "run", "--cluster"],
        [first, ..] if first.starts_with("--") => {
            if !strs.contains(&"--iface") {
                bail!(
                    "unknown option {first}: use `cargo xtask run` (lab scenario), \
                     `-- --keep`, `-- --cluster`, `-- --iface IFACE [--config FILE]`, or `-- VERB ARGS` for jvpn-ctl"
                );
            }
            let mut v = vec!["gateway"];
            v.extend(strs.iter().copied());
            v
        }
        _ => strs.clone(),
    };
    Ok(out.into_iter().map(OsString::from).collect())
}

pub fn run(args: &[OsString]) -> Result<()> {
    exec_jvpn_ctl(translate(args)?)
}

/// `cargo xtask lab down`.
pub fn lab_down() -> Result<()> {
    exec_jvpn_ctl(vec!["lab".into(), "down".into()])
}

fn exec_jvpn_ctl(args: Vec<OsString>) -> Result<()> {
    if !util::is_root() {
        bail!(
            "`cargo xtask run` must run as root (jvpn-ctl loads XDP programs and creates \
             network namespaces): rerun it with sudo, e.g. `sudo -E cargo xtask run`"
        );
    }
    bootstrap::run()?;
    // Release binaries: the lab's figures are the product's, not a debug build's.
    let built = build::build(true)?;
    let mut cmd = Command::new(&built.binary);
    cmd.args(&args);
    println!("==> {}", util::display(&cmd));
    // Only returns if the exec failed.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not run {}", built.binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Vec<String>> {
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        translate(&a).map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn arguments_map_to_jvpn_ctl() {
        assert_eq!(t(&[]).unwrap(), ["lab", "run"]);
        assert_eq!(t(&["--keep"]).unwrap(), ["lab", "run", "--keep"]);
        assert_eq!(t(&["--cluster"]).unwrap(), ["lab", "run", "--cluster"]);
        assert_eq!(
            t(&["--iface", "eth0", "--config", "g.toml"]).unwrap(),
            ["gateway", "--iface", "eth0", "--config", "g.toml"]
        );
        assert_eq!(t(&["sessions"]).unwrap(), ["sessions"]);
        assert!(
            t(&["--colour"])
                .unwrap_err()
                .to_string()
                .contains("--colour")
        );
    }
}
