//! `cargo xtask bench`: bootstrap, release build, the benchmark runner (`jvpn-bench`,
//! root) writing its JSON, then REPORT.md and the SVG plots rendered from it, and the
//! goals on the terminal.
//!
//! Where things go: a full run writes `bench/results/<UTC time>.json` and
//! `bench/REPORT.md` + `bench/plots/`; a `--quick` run (a smoke check) writes
//! `bench/results/quick/<UTC time>.json` and its report there too,
//! so it never replaces the full report. `--json FILE` and `--report DIR` override.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, build, report, util};

pub struct Args {
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub report: Option<PathBuf>,
    /// Passed to jvpn-bench as they are (--cpus, --relay-cpus, --skip).
    pub extra: Vec<OsString>,
}

fn stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, mo, d, h, mi, s) = report::civil(now);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

pub fn run(args: Args) -> Result<()> {
    if !util::is_root() {
        bail!(
            "cargo xtask bench needs root (BPF programs, network namespaces): \
             run `sudo -E cargo xtask bench`"
        );
    }
    let start = Instant::now();
    let root = util::workspace_root();
    let results = root.join("bench/results");
    // Quick runs keep everything under results/quick/ (ignored by git); full runs'
    // JSON sits next to the others and is kept with the report that links it.
    let json = args.json.clone().unwrap_or_else(|| {
        let dir = if args.quick {
            results.join("quick")
        } else {
            results.clone()
        };
        dir.join(format!("{}.json", stamp()))
    });
    let out_dir = args.report.clone().unwrap_or_else(|| {
        if args.quick {
            results.join("quick")
        } else {
            root.join("bench")
        }
    });
    bootstrap::run()?;
    let built = build::build(true)?;
    let dir = built
        .binary
        .parent()
        .context("jvpn-ctl binary without a directory")?
        .to_path_buf();
    let runner = dir.join("jvpn-bench");
    if !runner.exists() {
        bail!("{} was not built", runner.display());
    }
    let mut cmd = Command::new(&runner);
    cmd.arg("--json").arg(&json).args(&args.extra);
    if args.quick {
        cmd.arg("--quick");
    }
    println!("==> {}", util::display(&cmd));
    // Ctrl-C reaches jvpn-bench too (same process group): it stops, removes its
    // namespaces and writes what it has. Wait for that instead of dying first.
    // SAFETY: SIG_IGN for SIGINT in this process only; restored below.
    let old = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = cmd.status();
    // SAFETY: restores the previous disposition.
    unsafe { libc::signal(libc::SIGINT, old) };
    let status = status.with_context(|| format!("starting {}", runner.display()))?;

    if json.exists() {
        render_and_show(&json, &out_dir, args.quick)?;
    }
    println!("bench: took {}", util::elapsed(start.elapsed()));
    if !status.success() {
        bail!("jvpn-bench failed ({status}); see its output above");
    }
    Ok(())
}

/// `cargo xtask bench --render FILE [--report DIR]`: the report and the goals again
/// from a results file, running nothing.
pub fn render_only(json: &Path, report: Option<PathBuf>) -> Result<()> {
    if !json.is_file() {
        bail!(
            "{}: no such results file (see bench/results/)",
            json.display()
        );
    }
    let out_dir = report.unwrap_or_else(|| util::workspace_root().join("bench"));
    render_and_show(json, &out_dir, false)
}

fn render_and_show(json: &Path, out_dir: &Path, quick: bool) -> Result<()> {
    let results = report::load(json)?;
    let name = relative(json, out_dir);
    let files = report::render_results(&results, &name, out_dir)?;
    println!("bench: results {}", json.display());
    for f in &files {
        println!("bench: wrote {}", f.display());
    }
    println!(
        "goals{}:",
        if quick {
            " (quick run: figures not comparable, no thresholds applied)"
        } else {
            ""
        }
    );
    for g in report::goals(&results) {
        println!("  {g}");
    }
    Ok(())
}

/// `path` as REPORT.md in `dir` should link it: relative when it is under `dir` or
/// under its parent, absolute otherwise.
fn relative(path: &Path, dir: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, dir) = (abs(path), abs(dir));
    if let Ok(rel) = path.strip_prefix(&dir) {
        return rel.display().to_string();
    }
    if let Some(parent) = dir.parent()
        && let Ok(rel) = path.strip_prefix(parent)
    {
        return format!("../{}", rel.display());
    }
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_links_the_json_relative_to_the_report() {
        let r = |p: &str, d: &str| relative(Path::new(p), Path::new(d));
        assert_eq!(r("/w/bench/results/a.json", "/w/bench"), "results/a.json");
        assert_eq!(
            r("/w/bench/results/q.json", "/w/bench/results/quick"),
            "../q.json"
        );
        assert_eq!(r("/tmp/x.json", "/w/bench"), "/tmp/x.json");
    }
}
