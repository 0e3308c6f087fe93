//! `cargo xtask build`: bootstrap, then build the workspace. jvpn-ctl's build.rs
//! compiles the XDP object (nightly + bpf-linker) and embeds it in the binary.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, util};

/// What the build produced.
pub struct Built {
    /// `target/<profile>/jvpn-ctl`.
    pub binary: PathBuf,
    /// jvpn-ctl's build-script `OUT_DIR`, which holds the XDP object `jvpn`.
    pub out_dir: Option<PathBuf>,
}

/// The `build` verb.
pub fn run(release: bool) -> Result<()> {
    bootstrap::run()?;
    let built = build(release)?;
    println!("  jvpn-ctl:   {}", built.binary.display());
    match built.out_dir {
        Some(dir) => println!(
            "  XDP object: embedded in jvpn-ctl (built as {})",
            dir.join("jvpn").display()
        ),
        None => println!("  XDP object: embedded in jvpn-ctl"),
    }
    Ok(())
}

/// Builds the default members (the workspace minus jvpn-ebpf, which only builds for
/// the BPF target) and returns where jvpn-ctl landed. Assumes bootstrap ran.
pub fn build(release: bool) -> Result<Built> {
    let start = Instant::now();
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    let root = util::workspace_root();

    let mut all = util::cargo();
    all.arg("build").args(profile).current_dir(&root);
    println!("==> {}", util::display(&all));
    if std::env::var_os(util::BUILD_VERBOSE).is_none_or(|v| v != "1") {
        println!(
            "    (the XDP program is built by jvpn-ctl's build script with nightly and \
             bpf-linker; its output shows only if it fails, or with -v)"
        );
    }
    util::run(&mut all)?;

    let mut ctl = util::cargo();
    ctl.args(["build", "-p", "jvpn-ctl", "--bins"])
        .args(profile)
        .current_dir(&root);
    println!("==> {}", util::display(&ctl));
    let built = build_reporting(ctl)?;
    println!("build: ok in {}", util::elapsed(start.elapsed()));
    Ok(built)
}

/// Runs a `cargo build` with JSON messages on stdout (diagnostics still rendered on
/// stderr) to learn the exact binary path and build-script output directory.
pub(crate) fn build_reporting(mut cmd: Command) -> Result<Built> {
    cmd.arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let shown = util::display(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut binary = None;
    let mut out_dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading the output of `{shown}`"))?;
        let is_ctl = json_str(&line, "package_id").is_some_and(|id| id.contains("/jvpn-ctl#"));
        if !is_ctl {
            continue;
        }
        match json_str(&line, "reason").as_deref() {
            Some("compiler-artifact") => {
                if let Some(exe) =
                    json_str(&line, "executable").filter(|e| e.ends_with("/jvpn-ctl"))
                {
                    binary = Some(PathBuf::from(exe));
                }
            }
            Some("build-script-executed") => {
                out_dir = json_str(&line, "out_dir").map(PathBuf::from);
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        return Err(util::CommandFailed {
            command: shown,
            code: status.code(),
        }
        .into());
    }
    let Some(binary) = binary else {
        bail!("`{shown}` succeeded but reported no jvpn-ctl executable");
    };
    Ok(Built { binary, out_dir })
}

/// The string value of `"key":"..."` in one line of cargo's JSON output. Enough
/// for cargo's flat, compact messages; not a general JSON parser.
fn json_str(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::json_str;

    #[test]
    fn reads_cargo_message_fields() {
        let line = r#"{"reason":"build-script-executed","package_id":"path+file:///w/jvpn-ctl#0.1.0","out_dir":"/w/target/debug/build/jvpn-ctl-1a\"b\\c/out"}"#;
        assert_eq!(json_str(line, "reason").unwrap(), "build-script-executed");
        assert_eq!(
            json_str(line, "out_dir").unwrap(),
            r#"/w/target/debug/build/jvpn-ctl-1a"b\c/out"#
        );
        assert_eq!(json_str(line, "executable"), None);
    }
}
