//! `jvpn-ctl drain`: end every session of a running gateway with CLOSE. A stop
//! (SIGTERM) keeps sessions for the next start; this is how to end them.

use jvpn_ctl::control::Request;

use super::sessions::SocketArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(v) = args
        .socket
        .query::<serde_json::Value>(&Request::Drain, args.json)?
    else {
        return Ok(());
    };
    println!(
        "closed {} sessions (CLOSE to each client, keys revoked at the exit)",
        v["closed"].as_u64().unwrap_or(0)
    );
    Ok(())
}
