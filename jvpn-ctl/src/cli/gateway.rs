//! `jvpn-ctl gateway`: the gateway daemon (XDP relay + controller).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use ipnet::IpNet;
use jvpn_ctl::gateway::{self, GatewayConfig};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Configuration file (TOML); flags below override its values.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Interface to attach the relay to (repeat for several; replaces the file's list).
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    #[arg(long)]
    port: Option<u16>,
    /// Gateway identity (PKCS#8 Ed25519, from `jvpn-ctl keygen`).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Allowed client keys (`jvpn-ctl peers`).
    #[arg(long)]
    peers: Option<PathBuf>,
    /// The exit's DATA address.
    #[arg(long)]
    exit: Option<SocketAddr>,
    /// The exit's key-delivery link address.
    #[arg(long)]
    exit_link: Option<SocketAddr>,
    /// Gateway-exit link key file (64 hex characters).
    #[arg(long)]
    link_key: Option<PathBuf>,
    /// Tunnel address pool, e.g. 10.99.0.0/24.
    #[arg(long)]
    pool: Option<IpNet>,
    /// JSON-lines event log.
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Control socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9851).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// bpffs directory for the pinned maps and links.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Capacity of the session map.
    #[arg(long)]
    max_sessions: Option<u32>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

/// File values first, then flags; a missing required value is named.
fn effective(a: Args) -> anyhow::Result<(GatewayConfig, bool)> {
    let mut c = match &a.config {
        Some(p) => GatewayConfig::load(p)?,
        None => {
            let need = |what: &str, flag: &str| {
                anyhow::anyhow!("no --config given and no {flag}: the gateway needs {what}")
            };
            GatewayConfig::parse(&format!(
                "interfaces = []\nidentity = {:?}\npeers = {:?}\n[exit]\ndata = \"{}\"\nlink = \"{}\"\nlink_key = {:?}\n[pool]\ncidr = \"{}\"\n",
                a.identity
                    .as_ref()
                    .ok_or_else(|| need("an identity key", "--identity"))?,
                a.peers
                    .as_ref()
                    .ok_or_else(|| need("a peers file", "--peers"))?,
                a.exit.ok_or_else(|| need("the exit's address", "--exit"))?,
                a.exit_link
                    .ok_or_else(|| need("the exit's link address", "--exit-link"))?,
                a.link_key
                    .as_ref()
                    .ok_or_else(|| need("the link key", "--link-key"))?,
                a.pool
                    .ok_or_else(|| need("a tunnel address pool", "--pool"))?,
            ))?
        }
    };
    if !a.ifaces.is_empty() {
        c.interfaces = a.ifaces;
    }
    macro_rules! set {
        ($($f:ident => $field:expr),* $(,)?) => { $( if let Some(v) = a.$f { $field = v; } )* };
    }
    set!(port => c.port, identity => c.identity, peers => c.peers, exit => c.exit.data,
         exit_link => c.exit.link, link_key => c.exit.link_key, pool => c.pool.cidr,
         socket => c.control_socket, pin_dir => c.pin_dir, max_sessions => c.max_sessions);
    if a.event_log.is_some() {
        c.event_log = a.event_log;
    }
    if a.metrics.is_some() {
        c.metrics = a.metrics;
    }
    c.validate()?;
    Ok((c, a.print_config))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (cfg, print) = effective(a.clone())?;
    if print {
        print!(
            "{}",
            toml::to_string(&cfg).context("printing the configuration")?
        );
        return Ok(());
    }
    // One thread: the controller's loop polls its own sockets. On a multi-threaded
    // runtime a worker ran the I/O driver and woke the loop's thread for every
    // readiness event — two thread switches per datagram, a third of the controller's
    // CPU under keepalive load (docs/gateway.md, "Keepalives at scale"). The store's
    // etcd client, the cluster and the event-log writer keep their own threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A reload reads the file again and applies the same flags over it.
    let reload: gateway::Reloader = Box::new(move || {
        effective(a.clone())
            .map(|(c, _)| c)
            .map_err(|e| format!("{e:#}"))
    });
    rt.block_on(gateway::run(cfg, reload, super::shutdown_signal()))?;
    Ok(())
}
