//! `jvpn-ctl lab run|down`: the scenarios of `cargo xtask run` (a single gateway, or
//! `--cluster`), and removing labs left by `--keep`.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use jvpn_ctl::lab::{cluster_scenario, scenario, stack};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build the lab, run gateway, exit and client agent with tunnel traffic, and
    /// watch the session survive the loss of its transport; prints a timeline and a
    /// summary, then removes everything (also on Ctrl-C).
    Run {
        /// Leave the lab running (with instructions) instead of running the scenario.
        #[arg(long)]
        keep: bool,
        /// The gateway-cluster scenario instead: two nodes on a 3-member etcd, the
        /// owner killed, partitioned from etcd, etcd's quorum lost (docs/gateway.md).
        #[arg(long, conflicts_with = "keep")]
        cluster: bool,
    },
    /// Remove the labs left running by `lab run --keep` (all, or the one named).
    Down {
        /// The lab's name (its state file's name under /run/jvpn-lab).
        name: Option<String>,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Down { name } => {
            let done = stack::down(name.as_deref()).context("removing the labs")?;
            if done.is_empty() {
                println!("no lab is running");
            }
            for d in done {
                println!("{d}");
            }
            Ok(())
        }
        Command::Run { keep, cluster } => {
            // SAFETY: the handler only stores to an atomic.
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
            let bin = std::env::current_exe().context("locating jvpn-ctl")?;
            if cluster {
                return run_cluster(&bin);
            }
            match scenario::run(&bin, keep, &INTERRUPTED) {
                Ok(Some(summary)) => {
                    print!("{}", scenario::render(&summary));
                    anyhow::ensure!(
                        summary.session_unchanged && summary.replayed_delivered == 0,
                        "the scenario's guarantees did not hold (see the summary)"
                    );
                    println!("\nLab removed.");
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
                    anyhow::bail!("interrupted ({e}); the lab has been removed")
                }
                Err(e) => Err(e).context("lab scenario failed; the lab has been removed"),
            }
        }
    }
}

fn run_cluster(bin: &std::path::Path) -> anyhow::Result<()> {
    match cluster_scenario::run(bin, &INTERRUPTED) {
        Ok(summary) => {
            print!("{}", cluster_scenario::render(&summary));
            println!("\nLab removed.");
            anyhow::ensure!(
                summary.failures.is_empty(),
                "the cluster's guarantees did not all hold (see the summary)"
            );
            Ok(())
        }
        Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
            anyhow::bail!("interrupted ({e}); the lab has been removed")
        }
        Err(e) => Err(e).context("cluster lab scenario failed; the lab has been removed"),
    }
}
