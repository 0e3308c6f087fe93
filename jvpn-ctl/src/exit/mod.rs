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
//!
//! I/O (docs/exit-io.md): DATA is read in batches ([`crate::udp_batch`], one
//! `recvmmsg` for up to `BATCH` (64) datagrams, opened in place); the TUN is drained up
//! to `BATCH` packets per wake-up, sealed into reused send slots and sent with
//! `sendmmsg` (as UDP GSO runs where the kernel takes them). No buffer is allocated
//! per packet. Link frames come first: every DATA or TUN batch starts by answering
//! any link frame waiting, and the link socket has its own kernel buffers, while the
//! DATA socket's are enlarged so bursts wait instead of being dropped.

mod config;
mod counters;
mod engine;
pub mod nat;
mod sessions;

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use std::os::fd::AsRawFd as _;

use tokio::{io::Interest, net::UdpSocket};

pub use config::{Config, ConfigError, ConfigFile, DEFAULT_TUN_NAME};
pub use counters::{Counters, CountersSnapshot};
pub use sessions::Refused;

use crate::{
    proto::data::DATA_OVERHEAD,
    tun::{self, Tun, TunError},
    udp_batch::{self, RecvBatch, SendBatch},
};
use counters::bump;
pub use engine::{Engine, FromTun};

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
    #[error(transparent)]
    Nat(#[from] nat::NatError),
    #[error("reading TUN device {name}: {error}")]
    TunRead { name: String, error: std::io::Error },
}

/// Room for any packet: TUN reads up to the MTU (≤ 65535), UDP datagrams up to 64 KiB.
const BUF: usize = 65536;

/// Datagrams per `recvmmsg`, and TUN packets read per readiness (sent with one
/// `sendmmsg`, or a few).
const BATCH: usize = 64;

/// Return DATA as UDP GSO runs where the kernel takes them (see [`udp_batch`]).
const GSO: bool = true;

/// Kernel buffers of the DATA socket: a burst from the relay waits here instead of
/// being dropped (each lost segment costs the tunnelled TCP a retransmit). The link
/// socket keeps its own, so control is never queued behind data.
const DATA_RCVBUF: usize = 4 << 20;
const DATA_SNDBUF: usize = 4 << 20;

/// A running exit's sockets and TUN device, ready to serve.
pub struct Exit {
    config: Config,
    tun: Tun,
    data: UdpSocket,
    link: UdpSocket,
    counters: Arc<Counters>,
    /// The egress rules, removed when the exit stops (or drops).
    nat: Option<nat::Nat>,
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
        if let Some(a6) = config.tun_addr6 {
            tun::add_address(&config.tun_name, a6.addr(), a6.prefix_len()).await?;
        }
        // Before the sockets: an exit that serves has its egress. A later failure
        // drops it, and the drop removes the rules.
        let nat = match &config.nat {
            Some(n) => Some(nat::Nat::install(n, &config.tun_name, &n.prefixes)?),
            None => None,
        };
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
        match udp_batch::set_buffers(data.as_raw_fd(), DATA_RCVBUF, DATA_SNDBUF) {
            Ok((rcv, snd)) => tracing::debug!(rcv, snd, "DATA socket buffers"),
            Err(e) => tracing::warn!(error = %e, "sizing the DATA socket's buffers failed"),
        }
        let link = bind("link", config.link_listen).await?;
        Ok(Exit {
            config,
            tun,
            data,
            link,
            counters: Arc::default(),
            nat,
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
            nat,
        } = self;
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut engine = Engine::dual(
            &config.link_key,
            now_us,
            config.tun_addr,
            config.tun_addr6,
            counters.clone(),
        );
        tracing::info!(
            tun = %config.tun_name, tun_addr = %config.tun_addr,
            tun_addr6 = ?config.tun_addr6, mtu = config.mtu,
            data = %config.listen, link = %config.link_listen, "exit up"
        );

        let mut link_buf = vec![0u8; BUF];
        let mut tun_buf = vec![0u8; BUF];
        let mut rx = RecvBatch::new(BATCH, BUF);
        let mut tx = SendBatch::new(
            BATCH,
            usize::from(u16::try_from(config.mtu).unwrap_or(u16::MAX)) + 64,
        );
        let data_fd = data.as_raw_fd();
        tx.set_gso(GSO && udp_batch::gso_supported(data_fd));
        // ICMP errors for the TUN, collected during a batch (rare; buffers reused).
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let mut mtu_check = tokio::time::interval(std::time::Duration::from_secs(2));
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                r = link.readable() => match r {
                    Ok(()) => serve_link(&link, &mut link_buf, &mut engine, &counters).await,
                    Err(e) => recv_error(&counters, "link", e),
                },
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
                // Data, a batch at a time, each after any link frame waiting (the
                // branches are polled in random order, so neither side starves).
                r = data.readable() => {
                    if let Err(e) = r {
                        recv_error(&counters, "DATA", e);
                        continue;
                    }
                    serve_link(&link, &mut link_buf, &mut engine, &counters).await;
                    match data.try_io(Interest::READABLE, || rx.recv(data_fd)) {
                        Ok(n) => {
                            for i in 0..n {
                                let (pkt, from) = rx.get_mut(i);
                                let Some(from) = from else { continue };
                                if let Some(pkt) = engine.on_data(pkt, from) {
                                    let res = match tun.try_send(pkt) {
                                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                            tun.send(pkt).await
                                        }
                                        r => r,
                                    };
                                    engine.delivered(res);
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => recv_error(&counters, "DATA", e),
                    }
                }
                r = tun.readable() => {
                    let mut ready = match r {
                        Ok(g) => g,
                        Err(error) => break Err(ExitError::TunRead {
                            name: config.tun_name.clone(),
                            error,
                        }),
                    };
                    serve_link(&link, &mut link_buf, &mut engine, &counters).await;
                    let mut n_replies = 0;
                    let mut failed = None;
                    while !tx.is_full() {
                        let n = match ready.try_recv(&mut tun_buf) {
                            None => break,
                            Some(Ok(n)) => n,
                            Some(Err(e)) => {
                                failed = Some(e);
                                break;
                            }
                        };
                        match engine.on_tun(&tun_buf[..n], tx.slot()) {
                            FromTun::Send(to) => tx.commit(to),
                            FromTun::Fragments(to, k) => {
                                for f in engine.fragments_mut(k) {
                                    tx.push_swap(f, to);
                                }
                            }
                            FromTun::Reply => {
                                if replies.len() == n_replies {
                                    replies.push(Vec::new());
                                }
                                // Not `tx.slot()`: that would clear the answer.
                                tx.swap_slot(&mut replies[n_replies]);
                                n_replies += 1;
                            }
                            FromTun::Dropped => {}
                        }
                    }
                    let sent = udp_batch::send_batch(&data, &mut tx, |d, res| {
                        engine.sent(d.len().saturating_sub(usize::from(DATA_OVERHEAD)), res.map(|()| d.len()))
                    })
                    .await;
                    if let Err(e) = sent {
                        // Only a failure to wait for the socket: what is left is lost.
                        bump(&counters.send_errors);
                        tracing::warn!(error = %e, "DATA socket unusable for sending");
                        tx.clear();
                    }
                    for r in &replies[..n_replies] {
                        if let Err(e) = tun.send(r).await {
                            tracing::debug!(error = %e, "writing an ICMP error to the TUN");
                        }
                    }
                    if let Some(error) = failed {
                        break Err(ExitError::TunRead {
                            name: config.tun_name.clone(),
                            error,
                        });
                    }
                }
            }
        };
        let snap = counters.snapshot();
        if let Some(n) = nat {
            n.remove();
        }
        tracing::info!(sessions = engine.sessions(), "exit stopped: {snap}");
        result.map(|()| snap)
    }
}

/// Serves every link frame waiting (without waiting for more): each is answered at
/// once, ahead of any data.
async fn serve_link(link: &UdpSocket, buf: &mut [u8], engine: &mut Engine, counters: &Counters) {
    loop {
        let (n, from) = match link.try_recv_from(buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => return recv_error(counters, "link", e),
        };
        if let Some(ack) = engine.on_link(&buf[..n], from) {
            match link.send_to(&ack, from).await {
                Ok(_) => bump(&counters.link_acks_sent),
                Err(e) => {
                    bump(&counters.send_errors);
                    tracing::warn!(%from, error = %e, "sending a link ACK failed");
                }
            }
        }
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
