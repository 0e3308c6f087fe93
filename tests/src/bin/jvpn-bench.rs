//! The benchmark suite's runner (root): builds the namespaces, runs every phase,
//! writes the results as JSON. Use it through `cargo xtask bench [--quick]`, which
//! builds it, runs it and renders bench/REPORT.md from the JSON.

use std::{path::PathBuf, process::ExitCode, sync::atomic::Ordering};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use jvpn_ctl::bench::cpus;
use jvpn_tests::bench::{self, Options, PHASES, STOP};

#[derive(Parser)]
#[command(
    name = "jvpn-bench",
    about = "Jumping VPN benchmark suite (needs root)"
)]
struct Args {
    /// Every phase, briefly: a smoke check (figures not comparable).
    #[arg(long)]
    quick: bool,
    /// Where to write the results.
    #[arg(long, value_name = "FILE")]
    json: PathBuf,
    /// CPUs the traffic generator sends from [default: the first allowed CPU].
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// CPUs of the userspace relay's workers [default: every allowed CPU].
    #[arg(long, value_name = "LIST")]
    relay_cpus: Option<String>,
    /// Phases to leave out, comma-separated (cost, throughput, swap, controller, reattach,
    /// cluster, tunnel, flood).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Only these phases, comma-separated (the others are skipped).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn cpu_list(arg: Option<&str>, default: Vec<usize>) -> Result<Vec<usize>> {
    let list = match arg {
        Some(s) => cpus::parse(s)?,
        None => default,
    };
    cpus::check_allowed(&list)?;
    Ok(list)
}

fn main_inner(args: Args) -> Result<bool> {
    for (flag, list) in [("--skip", &args.skip), ("--only", &args.only)] {
        for s in list {
            if !PHASES.contains(&s.as_str()) {
                bail!("{flag} {s}: no such phase (phases: {})", PHASES.join(", "));
            }
        }
    }
    let allowed = cpus::allowed()?;
    let opts = Options {
        quick: args.quick,
        json: args.json.clone(),
        gen_cpus: cpu_list(args.cpus.as_deref(), vec![allowed[0]])?,
        relay_cpus: cpu_list(args.relay_cpus.as_deref(), allowed)?,
        skip: args.skip,
        only: args.only,
    };
    jvpn_ctl::datapath::check_privilege()?;
    if let Some(dir) = opts.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    bench::catch_stop_signals();
    let (results, ok) = bench::run(opts.clone())?;
    // Through a `Value`: its keys sorted, as the files have always been written.
    let text = serde_json::to_string_pretty(&serde_json::to_value(&results)?)?;
    std::fs::write(&opts.json, text + "\n")
        .with_context(|| format!("writing {}", opts.json.display()))?;
    eprintln!("results: {}", opts.json.display());
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted; namespaces removed, partial results written");
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            // One line: the message without clap's usage block.
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    match main_inner(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some phases failed (see `errors` in the results)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
