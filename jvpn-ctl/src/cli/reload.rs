//! `jvpn-ctl reload`: a running gateway reads its configuration and peers file again
//! (as on SIGHUP) and applies what can change live; what needs a restart is named.

use jvpn_ctl::control::{Request, api::Reloaded};

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
    if let Some(r) = args.socket.query::<Reloaded>(&Request::Reload, args.json)? {
        print!("{}", describe(&r));
    }
    Ok(())
}

/// What a reload did, for a person: one line, and one more if a restart is needed.
pub fn describe(r: &Reloaded) -> String {
    let applied = if r.applied.is_empty() {
        String::new()
    } else {
        format!("; applied: {}", r.applied.join(", "))
    };
    let mut s = format!(
        "reloaded: {} peers (+{} -{}), {} sessions of removed peers closed{applied}\n",
        r.peers, r.peers_added, r.peers_removed, r.sessions_closed
    );
    if !r.need_restart.is_empty() {
        s += &format!(
            "changed but applied only by a restart: {}\n",
            r.need_restart.join(", ")
        );
    }
    s
}
