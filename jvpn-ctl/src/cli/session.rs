//! `jvpn-ctl session show|kill ID`.

use clap::Subcommand;
use jvpn_ctl::control::{Request, SessionId, SessionInfo};

use super::sessions::{SocketArgs, bytes, millis, peer_label, secs};

#[derive(Subcommand)]
pub enum Command {
    /// Show one session (ID: 16 hex digits, as `jvpn-ctl sessions` prints it).
    Show {
        /// Session id, 16 hex digits.
        id: String,
        /// Print the session as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Terminate one session now (reason `operator`); its client gets a CLOSE.
    Kill {
        /// Session id, 16 hex digits.
        id: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Show { id, json, socket } => {
            let id: SessionId = id.parse()?;
            if let Some(s) = socket.query::<SessionInfo>(&Request::Session { id }, json)? {
                print!("{}", show(&s));
            }
            Ok(())
        }
        Command::Kill { id, socket } => {
            let id: SessionId = id.parse()?;
            socket.connect()?.kill(id)?;
            println!("session {id} terminated");
            Ok(())
        }
    }
}

fn show(s: &SessionInfo) -> String {
    let peer = match &s.peer_name {
        Some(_) => format!("{} ({})", peer_label(s), s.peer),
        None => s.peer.clone(),
    };
    let lines = [
        ("id", s.id.to_string()),
        ("state", s.state.name().to_owned()),
        ("version", s.version.to_string()),
        ("peer", peer),
        ("binding", s.binding.clone().unwrap_or_else(|| "-".into())),
        ("generation", s.generation.to_string()),
        (
            "tunnel",
            match &s.tunnel_addr6 {
                Some(a6) => format!("{} {a6}", s.tunnel_addr),
                None => s.tunnel_addr.clone(),
            },
        ),
        ("age", format!("{} ({} s)", secs(s.age_s), s.age_s)),
        ("idle", millis(s.idle_ms)),
        ("switches", s.switches.to_string()),
        (
            "up",
            format!("{} packets, {}", s.up_packets, bytes(s.up_bytes)),
        ),
        (
            "down",
            format!("{} packets, {}", s.down_packets, bytes(s.down_bytes)),
        ),
        ("stale drops", s.stale_drops.to_string()),
    ];
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{:<12} {v}\n", format!("{k}:")));
    }
    // A cluster node: who owns it, and the fencing token the exit checks.
    if let Some(node) = s.owner_node {
        let epoch = s.owner_epoch.map_or("-".into(), |e| e.to_string());
        out.push_str(&format!("{:<12} node {node}, epoch {epoch}\n", "owner:"));
    }
    out
}
