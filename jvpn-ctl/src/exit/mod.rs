//! The exit node (`jvpn-ctl exit`, DESIGN §1): the network-side end of the tunnel.
//!
//! * **Link** (UDP, `link_listen`): authenticated INSTALL / REVOKE from the gateway
//!   (docs/protocol.md, "Gateway ⇄ exit link"), each answered with an ACK to the
//!   frame's source. INSTALL stores the session's keys, tunnel address and return
//!   endpoint; REVOKE forgets the session at once. With a cluster of gateways, each
//!   session has one owner node, and INSTALL/REVOKE carry its fencing token (epoch):
//!   the exit obeys none below the session's highest ("Fencing at the exit").
//! * **DATA in** (UDP, `listen`): relayed client packets, taken only from the
//!   session's return endpoint (its current owner), opened with `k_c2x`, checked
//!   against the replay window and for an inner source equal to the session's tunnel
//!   address (anti-spoofing), then written to the TUN device.
//! * **DATA out**: packets the kernel routes into the TUN device (the tunnel pool is
//!   `tun_addr`'s prefix) are matched to a session by destination address, sealed with
//!   `k_x2c` and sent to the session's return endpoint, which the gateway's XDP relay
//!   steers to wherever the client is now.
//!
//! One task owns all state and serves the three sockets in turn, so no locks are
//! needed; everything dropped is counted by reason in [`Counters`].

mod config;
mod counters;
mod engine;
mod inner;
mod sessions;

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::net::UdpSocket;

pub use config::{Config, ConfigError, ConfigFile, DEFAULT_TUN_NAME};
pub use counters::{Counters, CountersSnapshot};
pub use sessions::Refused;

use crate::tun::{self, Tun, TunError};
use counters::bump;
use engine::{Engine, FromTun};

/// Messages include their cause (no `source`, so `{:#}` does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("binding the {what} socket to {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("reading TUN device {name}: {error}")]
    TunRead { name: String, error: std::io::Error },
}

/// Room for any packet: TUN reads up to the MTU (≤ 65535), UDP datagrams up to 64 KiB.
const BUF: usize = 65536;

/// A running exit's sockets and TUN device, ready to serve.
pub struct Exit {
    config: Config,
    tun: Tun,
    data: UdpSocket,
    link: UdpSocket,
    counters: Arc<Counters>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<UdpSocket, ExitError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|error| ExitError::Bind { what, addr, error })
}

impl Exit {
    /// Validates `config`, creates and configures the TUN device and binds both
    /// sockets, in the network namespace of the calling thread.
    pub async fn bind(config: Config) -> Result<Self, ExitError> {
        config.validate()?;
        let tun = Tun::open(&config.tun_name)?;
        tun::configure(
            &config.tun_name,
            config.tun_addr.addr(),
            config.tun_addr.prefix_len(),
            config.mtu,
        )
        .await?;
        let data = bind("DATA", config.listen).await?;
        // DF: return DATA larger than the path towards the gateway fails here instead
        // of leaving as fragments, which the relay drops.
        crate::sockopt::dont_fragment(
            std::os::fd::AsRawFd::as_raw_fd(&data),
            config.listen.is_ipv6(),
        )
        .map_err(|error| ExitError::Bind {
            what: "DATA (don't-fragment)",
            addr: config.listen,
            error,
        })?;
        let link = bind("link", config.link_listen).await?;
        Ok(Exit {
            config,
            tun,
            data,
            link,
            counters: Arc::default(),
        })
    }

    /// Live counters (shared; keep reading them while the exit runs).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The bound DATA and link addresses (useful with port 0).
    pub fn local_addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.data.local_addr()?, self.link.local_addr()?))
    }

    /// Serves until `shutdown` completes (then returns the final counters) or the TUN
    /// device fails. The TUN device goes away with `self`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<CountersSnapshot, ExitError> {
        let Exit {
            config,
            tun,
            data,
            link,
            counters,
        } = self;
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut engine = Engine::new(&config.link_key, now_us, config.tun_addr, counters.clone());
        tracing::info!(
            tun = %config.tun_name, tun_addr = %config.tun_addr, mtu = config.mtu,
            data = %config.listen, link = %config.link_listen, "exit up"
        );

        let (mut link_buf, mut data_buf, mut tun_buf) =
            (vec![0u8; BUF], vec![0u8; BUF], vec![0u8; BUF]);
        let mut out = Vec::with_capacity(BUF);
        let mut mtu_check = tokio::time::interval(std::time::Duration::from_secs(2));
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                _ = mtu_check.tick() => {
                    // The smallest route MTU towards any gateway bounds every session.
                    let listen = config.listen;
                    let mtu = engine
                        .return_addrs()
                        .into_iter()
                        .filter_map(|gw| crate::sockopt::route_mtu(listen, None, gw))
                        .min();
                    if let Some(m) = mtu {
                        engine.set_link_mtu(m);
                    }
                }
                r = link.recv_from(&mut link_buf) => match r {
                    Ok((n, from)) => {
                        if let Some(ack) = engine.on_link(&link_buf[..n], from) {
                            match link.send_to(&ack, from).await {
                                Ok(_) => bump(&counters.link_acks_sent),
                                Err(e) => {
                                    bump(&counters.send_errors);
                                    tracing::warn!(%from, error = %e, "sending a link ACK failed");
                                }
                            }
                        }
                    }
                    Err(e) => recv_error(&counters, "link", e),
                },
                r = data.recv_from(&mut data_buf) => match r {
                    Ok((n, from)) => {
                        if let Some(pkt) = engine.on_data(&mut data_buf[..n], from) {
                            let res = tun.send(pkt).await;
                            engine.delivered(res);
                        }
                    }
                    Err(e) => recv_error(&counters, "DATA", e),
                },
                r = tun.recv(&mut tun_buf) => match r {
                    Ok(n) => {
                        match engine.on_tun(&tun_buf[..n], &mut out) {
                            FromTun::Send(to) => {
                                let res = data.send_to(&out, to).await;
                                engine.sent(n, res);
                            }
                            FromTun::Fragments(to, frags) => {
                                for f in frags {
                                    let res = data.send_to(&f, to).await;
                                    engine.sent(f.len(), res);
                                }
                            }
                            FromTun::Reply => {
                                if let Err(e) = tun.send(&out).await {
                                    tracing::debug!(error = %e, "writing an ICMP error to the TUN");
                                }
                            }
                            FromTun::Dropped => {}
                        }
                    }
                    Err(error) => break Err(ExitError::TunRead {
                        name: config.tun_name.clone(),
                        error,
                    }),
                },
            }
        };
        let snap = counters.snapshot();
        tracing::info!(sessions = engine.sessions(), "exit stopped: {snap}");
        result.map(|()| snap)
    }
}

fn recv_error(counters: &Counters, what: &str, e: std::io::Error) {
    bump(&counters.recv_errors);
    tracing::warn!(error = %e, "{what} socket receive failed");
}

/// [`Exit::bind`] then [`Exit::run`].
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<CountersSnapshot, ExitError> {
    Exit::bind(config).await?.run(shutdown).await
}
