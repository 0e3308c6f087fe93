//! `cargo xtask`: the one entry point to bootstrap, build, test and run Jumping VPN.
//! See docs/toolchain.md for what bootstrap installs and why.

mod bench;
mod bootstrap;
mod bpf_linker;
mod build;
mod dist;
mod fuzz;
mod packages;
mod report;
mod run;
mod test;
mod util;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Bootstrap, build, test and run Jumping VPN",
    after_help = "Tools live in $JVPN_TOOLS_DIR (default ${XDG_CACHE_HOME:-~/.cache}/jvpn); \
                  see docs/toolchain.md."
)]
struct Cli {
    /// Show the XDP program's build output (nightly cargo inside jvpn-ctl's build
    /// script), which is otherwise shown only when that build fails
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what the build needs if missing: nightly + rust-src, bpf-linker, iproute2/procps/util-linux
    Bootstrap,
    /// Bootstrap, then build the workspace (the XDP object is embedded in jvpn-ctl)
    Build {
        /// Build with the release profile
        #[arg(long)]
        release: bool,
    },
    /// Bootstrap, build, then run all tests (`cargo xtask test -- ARGS` passes ARGS to cargo test)
    Test {
        /// Extra arguments for `cargo test`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Bootstrap, build, then run the lab scenario as root (`-- --keep` leaves the lab
    /// up; `-- --iface IFACE [--config FILE]` runs the gateway on a real interface;
    /// `-- VERB ARGS` runs `jvpn-ctl VERB ARGS`)
    Run {
        /// --keep | --iface IFACE [--config FILE] | VERB ARGS
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Bootstrap, release build, then the benchmark suite as root: bench/results/*.json,
    /// bench/REPORT.md and bench/plots/ (docs/bench.md)
    Bench {
        /// Every phase briefly (< 3 min): a smoke check; its report goes to
        /// bench/results/quick/
        #[arg(long)]
        quick: bool,
        /// Results file [default: bench/results/<UTC time>.json]
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Directory for REPORT.md and plots/ [default: bench/]
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// Generator CPUs, e.g. 0 or 0,1 [default: the first allowed CPU]
        #[arg(long, value_name = "LIST")]
        cpus: Option<String>,
        /// Phases to leave out: cost, throughput, swap, controller, reattach, cluster,
        /// tunnel, flood
        #[arg(long, value_name = "LIST")]
        skip: Option<String>,
        /// Only these phases (e.g. `flood`); the others are skipped
        #[arg(long, value_name = "LIST")]
        only: Option<String>,
        /// Run nothing: render REPORT.md and plots/ again from this results file
        /// (after a change to the report; needs no root)
        #[arg(long, value_name = "FILE", conflicts_with_all = ["quick", "json", "cpus", "skip", "only"])]
        render: Option<PathBuf>,
    },
    /// Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the targets in tests/fuzz,
    /// from their committed corpora; without TARGET, every one in turn
    Fuzz {
        /// One target (relay, control, config, ...)
        target: Option<String>,
        /// Stop each target after this many executions [default: run until stopped
        /// or --seconds]
        #[arg(long)]
        runs: Option<u64>,
        /// Stop each target after this many seconds
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Bootstrap, release build, then target/dist/: bin/jvpn-ctl, the systemd units, the
    /// example configurations, shell completions and man pages (README.md, "Installing
    /// on a server")
    Dist,
    /// Labs left by `cargo xtask run -- --keep`
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Remove every lab left running (processes, namespaces, pins, state)
    Down,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose {
        // SAFETY: nothing else runs yet; every cargo started below inherits it.
        unsafe { std::env::set_var(util::BUILD_VERBOSE, "1") };
    }
    let result = match cli.verb {
        Verb::Bootstrap => bootstrap::run(),
        Verb::Build { release } => build::run(release),
        Verb::Test { args } => test::run(&args),
        Verb::Run { args } => run::run(&args),
        Verb::Bench {
            quick,
            json,
            report,
            cpus,
            skip,
            only,
            render,
        } => match render {
            Some(file) => bench::render_only(&file, report),
            None => {
                let mut extra: Vec<OsString> = Vec::new();
                if let Some(c) = cpus {
                    extra.extend(["--cpus".into(), c.into()]);
                }
                if let Some(s) = skip {
                    extra.extend(["--skip".into(), s.into()]);
                }
                if let Some(o) = only {
                    extra.extend(["--only".into(), o.into()]);
                }
                bench::run(bench::Args {
                    quick,
                    json,
                    report,
                    extra,
                })
            }
        },
        Verb::Fuzz {
            target,
            runs,
            seconds,
        } => fuzz::run(fuzz::Args {
            target,
            runs,
            seconds,
        }),
        Verb::Dist => dist::run(),
        Verb::Lab {
            command: LabCommand::Down,
        } => run::lab_down(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // A failing cargo passes its exit code through (e.g. 101 for test failures).
            let code = err
                .downcast_ref::<util::CommandFailed>()
                .and_then(|f| f.code)
                .and_then(|c| u8::try_from(c).ok())
                .filter(|&c| c != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}
