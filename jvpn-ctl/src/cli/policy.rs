//! `jvpn-ctl policy show`.

use clap::Subcommand;
use jvpn_ctl::{control::Request, session::Policy};

use super::sessions::SocketArgs;

#[derive(Subcommand)]
pub enum Command {
    /// Print the policy the gateway is running with, as the `[policy]` table of its
    /// configuration (or as JSON).
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let Command::Show { json, socket } = cmd;
    let data = socket.connect()?.request(&Request::Policy)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    // In the configuration's field order; a policy from a newer gateway (fields this
    // CLI does not know) is shown from its JSON, so nothing is hidden.
    #[derive(serde::Serialize)]
    struct Table<T> {
        policy: T,
    }
    let text = match serde_json::from_value::<Policy>(data.clone()) {
        Ok(policy) => toml::to_string(&Table { policy }),
        Err(_) => toml::to_string(&Table { policy: &data }),
    };
    match text {
        Ok(text) => print!("{text}"),
        Err(_) => println!("{}", serde_json::to_string_pretty(&data)?),
    }
    Ok(())
}
