//! `jvpn-ctl`: the Jumping VPN operator CLI.

mod cli;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    // Like any Unix filter: `jvpn-ctl datapath status | head` ends quietly when the
    // reader goes away, instead of panicking on a failed print.
    // SAFETY: restoring a default disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        // Bad arguments: one line naming the problem (clap's usage block and tip are
        // left out; `--help` shows the usage).
        Err(e) => match cli::one_line(&e) {
            Some(line) => {
                eprintln!("{line}");
                return std::process::ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JVPN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour for a terminal only: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line per cause, outermost first: what failed, then why.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
