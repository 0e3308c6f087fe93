//! `jvpn-ctl generate --out DIR` (hidden; `cargo xtask dist` runs it): shell completions
//! and man pages from the clap definitions, so they always match the binary.
//!
//! Writes `DIR/completions/` (`jvpn-ctl.bash`, `_jvpn-ctl` for zsh, `jvpn-ctl.fish`)
//! and `DIR/man/man1/` (one page per command and subcommand: `jvpn-ctl.1`,
//! `jvpn-ctl-gateway.1`, `jvpn-ctl-datapath-up.1`, ...). Hidden commands are left out.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write completions/ and man/man1/ into (created if missing; files
    /// of the same names are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    for (what, files) in generate(&args.out)? {
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        let dir = files
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(&args.out)
            .display();
        println!("{what}: {} in {dir}: {}", files.len(), names.join(" "));
    }
    Ok(())
}

/// Writes everything; returns the files written, by kind.
pub fn generate(out: &Path) -> anyhow::Result<[(&'static str, Vec<PathBuf>); 2]> {
    let cmd = super::Cli::command();
    let name = env!("CARGO_BIN_NAME");

    // clap_complete completes hidden subcommands too (this one): leave them out.
    let mut visible = clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cmd.get_about() {
        visible = visible.about(about.clone());
    }
    let completions = out.join("completions");
    create(&completions)?;
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut visible.clone(), name, &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
        written.push(path);
    }

    let man = out.join("man").join("man1");
    create(&man)?;
    clap_mangen::generate_to(cmd, &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)
        .with_context(|| format!("listing {}", man.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    Ok([("completions", written), ("man pages", pages)])
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
