//! `jvpn-ctl exit`: the exit node daemon (TUN, AEAD, key-delivery link).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use ipnet::IpNet;
use jvpn_ctl::exit::{self, ConfigFile};

#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration file; the flags below override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// DATA socket address (`listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Link socket address (`link_listen`).
    #[arg(long)]
    link_listen: Option<SocketAddr>,
    /// Link key file, 64 hex characters (`link_key_file`).
    #[arg(long)]
    link_key_file: Option<PathBuf>,
    /// TUN device name (`tun_name`, default jvpn-exit0).
    #[arg(long)]
    tun_name: Option<String>,
    /// The exit's tunnel address and pool prefix, e.g. 10.99.0.1/24 (`tun_addr`).
    #[arg(long)]
    tun_addr: Option<IpNet>,
    /// Dual stack: the exit's IPv6 tunnel address and IPv6 pool prefix, e.g.
    /// fd00:99::1/64 (`tun_addr6`).
    #[arg(long)]
    tun_addr6: Option<IpNet>,
    /// TUN MTU (`mtu`, default 1400).
    #[arg(long)]
    mtu: Option<u32>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let config = file
        .merge(ConfigFile {
            listen: args.listen,
            link_listen: args.link_listen,
            link_key_file: args.link_key_file,
            tun_name: args.tun_name,
            tun_addr: args.tun_addr,
            tun_addr6: args.tun_addr6,
            mtu: args.mtu,
            nat: None,
        })
        .resolve()
        .context("invalid exit configuration")?;
    // One task serves everything (see jvpn_ctl::exit), so one thread is enough.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let exit = exit::Exit::bind(config).await?;
        exit.run(super::shutdown_signal()).await
    })
    .context("exit")?;
    Ok(())
}
