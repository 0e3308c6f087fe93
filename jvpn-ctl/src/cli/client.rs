//! `jvpn-ctl client`: run the client agent; `client status` and `client move` talk to
//! a running one.

use std::path::PathBuf;

use anyhow::Context as _;
use jvpn_ctl::{
    client::{self, ClientConfig, ClientStatus},
    control::{Client, Request},
};

use super::sessions::secs;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Show the running agent's session, transports and counters.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: ClientSocket,
    },
    /// Move the session to another transport now (an authenticated reattach).
    Move {
        /// Transport name, as in the configuration.
        transport: String,
        #[command(flatten)]
        socket: ClientSocket,
    },
}

#[derive(clap::Args)]
struct ClientSocket {
    /// Control socket of the running client agent.
    #[arg(long, value_name = "PATH", default_value = client::config::DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration (identity, gateway key, transports); the flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Identity file (`identity`).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// TUN device name (`tun_name`).
    #[arg(long)]
    tun_name: Option<String>,
    /// Control socket to serve (`control_socket`).
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// JSON-lines event log (`event_log`).
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Exit when the session is TERMINATED instead of establishing a new one.
    #[arg(long)]
    no_reconnect: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Status { json, socket }) => status(&socket.socket, json),
        Some(Command::Move { transport, socket }) => {
            Client::connect(&socket.socket)?.move_to(&transport)?;
            println!("moving to {transport}: watch `jvpn-ctl client status`");
            Ok(())
        }
        None => agent(args.run),
    }
}

fn agent(a: RunArgs) -> anyhow::Result<()> {
    let path = a
        .config
        .context("--config FILE is required (the transports are only configurable there)")?;
    let mut cfg = ClientConfig::load(&path)?;
    if let Some(v) = a.identity {
        cfg.identity = v;
    }
    if let Some(v) = a.tun_name {
        cfg.tun_name = v;
    }
    if let Some(v) = a.control_socket {
        cfg.control_socket = v;
    }
    if let Some(v) = a.event_log {
        cfg.event_log = Some(v);
    }
    if a.no_reconnect {
        cfg.reconnect = false;
    }
    cfg.validate()
        .with_context(|| format!("invalid client configuration {}", path.display()))?;
    if a.print_config {
        print!(
            "{}",
            toml::to_string(&cfg).context("printing the configuration")?
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(client::run(cfg, super::shutdown_signal()))?;
    Ok(())
}

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let data = Client::connect(socket)?.request(&Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let s: ClientStatus = serde_json::from_value(data)
        .map_err(|e| anyhow::anyhow!("unexpected answer from the client agent: {e}"))?;
    print!("{}", render(&s));
    Ok(())
}

fn render(s: &ClientStatus) -> String {
    let mut out = String::new();
    let dash = || "-".to_owned();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line(
        "session",
        s.session_id
            .map_or("(connecting)".into(), |i| i.to_string()),
    );
    line(
        "state",
        format!("{} (version {})", s.state.name(), s.version),
    );
    line(
        "tunnel",
        match (&s.tunnel_addr, &s.tunnel_addr6) {
            (Some(a), Some(a6)) => format!("{a} {a6}"),
            (a, _) => a.clone().unwrap_or_else(dash),
        },
    );
    line(
        "bound",
        s.bound
            .as_ref()
            .map_or_else(dash, |b| format!("{b} (generation {})", s.generation)),
    );
    line("age", secs(s.age_s));
    line(
        "switches",
        format!(
            "{} ({} sessions established)",
            s.switches, s.sessions_established
        ),
    );
    if let Some(r) = &s.reattach {
        line("reattach", r.clone());
    }
    if let Some(h) = &s.handshake {
        line(
            "handshake",
            format!(
                "{} HELLOs in {} over {}; {}",
                h.hellos,
                secs(h.for_ms / 1000),
                h.transports.join(", "),
                if h.answers == 0 {
                    "no answer".to_owned()
                } else {
                    format!("{} TIME/COOKIE answers, no WELCOME", h.answers)
                }
            ),
        );
        for c in &h.likely_causes {
            line("  maybe", c.clone());
        }
    }
    if let Some(w) = &s.last_switch {
        line(
            "last switch",
            if w.planned {
                format!(
                    "{} → {} planned ({}), exchange {} ms",
                    w.from, w.to, w.trigger, w.exchange_ms
                )
            } else if w.cause == "address changed" {
                format!(
                    "{} rebound (address changed): silent {} ms, exchange {} ms",
                    w.to, w.silent_ms, w.exchange_ms
                )
            } else {
                format!(
                    "{} → {} ({}): silent {} ms (detection {} ms, {} attempt(s), last \
                     exchange {} ms)",
                    w.from, w.to, w.trigger, w.silent_ms, w.detection_ms, w.attempts, w.exchange_ms
                )
            },
        );
    }
    if s.tunnel_mtu > 0 {
        line("tunnel MTU", s.tunnel_mtu.to_string());
    }
    if s.idle {
        line(
            "keepalives",
            "idle schedule (no tunnel data lately)".to_string(),
        );
    }
    if s.clock_offset_ms != 0 {
        let (n, side) = (s.clock_offset_ms.unsigned_abs(), s.clock_offset_ms > 0);
        line(
            "clock offset",
            format!(
                "{}{} ms: our clock is {n} ms {} the gateway's{}",
                if side { "+" } else { "-" },
                n,
                if side { "behind" } else { "ahead of" },
                s.clock_offset_source
                    .as_ref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            ),
        );
    }
    let c = &s.counters;
    line(
        "traffic",
        format!(
            "up {} packets, down {} packets, {} replayed, {} bad",
            c.tx_packets, c.rx_packets, c.rx_replayed, c.rx_bad
        ),
    );
    out.push_str(&format!(
        "\n{:<10} {:<9} {:<6} {:<9} {:>8} {:>8} {:>5} {:>9} {:>6}  {}\n",
        "TRANSPORT",
        "KIND",
        "BOUND",
        "HEALTH",
        "RTT",
        "JITTER",
        "LOSS",
        "SILENCE",
        "PMTU",
        "LOCAL → GATEWAY"
    ));
    for t in &s.transports {
        let mut notes = Vec::new();
        if t.backoff_ms > 0 {
            notes.push(format!("backing off {} ms", t.backoff_ms));
        }
        if t.not_bound {
            notes.push("gateway: not bound, rebinding".to_owned());
        }
        if t.stalled {
            notes.push("DATA not forwarded".to_owned());
        }
        if let Some(d) = t.data_loss_pct {
            notes.push(format!("DATA loss {d}%"));
        }
        if matches!(
            t.health,
            jvpn_ctl::client::health::Status::Dead | jvpn_ctl::client::health::Status::Volatile
        ) && !t.cause.is_empty()
        {
            notes.push(t.cause.clone());
        }
        if !t.path_mtu_settled {
            notes.push("path MTU search under way".to_owned());
        }
        out.push_str(&format!(
            "{:<10} {:<9} {:<6} {:<9} {:>8} {:>8} {:>4}% {:>7}ms {:>6}  {} → {}{}\n",
            t.name,
            t.kind,
            if t.bound { "yes" } else { "" },
            format!("{:?}", t.health).to_lowercase(),
            t.rtt_ms.map_or_else(dash, |r| format!("{r:.1}ms")),
            format!("{:.1}ms", t.jitter_ms),
            t.loss_pct,
            t.silence_ms,
            t.path_mtu,
            t.local,
            t.gateway,
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            }
        ));
    }
    out
}
