//! The client agent's I/O shell: one UDP socket per transport
//! ([`super::transports`]), the TUN device, link events, the control socket and a
//! tick, all feeding the synchronous [`Core`]; the tunnel's packets go through the
//! core's allocation-free fast path in batches (`recvmmsg`, `sendmmsg` with UDP GSO).

use std::{future::Future, net::SocketAddr, os::fd::AsRawFd, time::Duration};

use jvpn_common::wire::msg_type;
use tokio::{io::Interest, sync::mpsc};

use super::{
    config::{ClientConfig, ConfigError},
    core::{Core, Input, Opened, Out},
    netwatch,
    transports::{self, Sockets, Watch},
};
use crate::{
    clock::Clock,
    control::{
        self,
        api::{Request, Response},
        events::EventBus,
    },
    proto::{self, ProtoError},
    session::Reason,
    sockopt,
    tun::{self, Tun, TunError, TunReadable},
    udp_batch::{self, RecvBatch, SendBatch},
};

/// Timer resolution of health checks, keepalives and reattach timeouts.
const TICK: Duration = Duration::from_millis(10);
/// How often each transport's route MTU and link state are read again (a missed
/// link event, a route change without one).
const ROUTE_MTU_EVERY: Duration = Duration::from_secs(2);
/// A tick this much later than the last: the agent itself was stalled.
const STALL_GAP_MS: u64 = 100;

/// Messages include their cause (no `source`, so `{:#}` does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("identity: {0}")]
    Identity(ProtoError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("reading the network interfaces: {0}")]
    Interfaces(std::io::Error),
    #[error("reading the TUN device: {0}")]
    TunRead(std::io::Error),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("transport {name}: {what}: {cause}")]
    Transport {
        name: String,
        what: &'static str,
        cause: std::io::Error,
    },
    #[error("the session was TERMINATED ({0:?}) and reconnect is off")]
    Terminated(Reason),
}

/// Datagrams read or sent per system call.
const BATCH: usize = 64;

/// Runs the agent until `shutdown` resolves (then the session is CLOSEd) or the
/// session ends without `reconnect`.
pub async fn run(cfg: ClientConfig, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
    cfg.validate()?;
    let gateway_pub = cfg.gateway_key()?;
    let identity = proto::identity::load(&cfg.identity).map_err(ClientError::Identity)?;
    let clock = Clock::new();
    let tun = Tun::open(&cfg.tun_name)?;
    let (all4, all6) = cfg.all_traffic();
    // Before any socket: every one towards the gateways carries the mark.
    let _all_traffic = (all4 || all6).then(|| {
        crate::sockopt::set_agent_mark(super::fullroute::FWMARK);
        super::fullroute::Guard
    });
    let ifaces = netwatch::interfaces().map_err(ClientError::Interfaces)?;
    let mut sockets = Sockets::bind_all(&cfg, &ifaces)?;
    let mut watch = Watch::new(&cfg, &ifaces);
    // Without the subscription the periodic resync still sees every change, later.
    let mut link_events = match netwatch::subscribe() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!("no link events (rtnetlink: {e}); link state is read every 2 s");
            None
        }
    };

    let bus = EventBus::new(4096);
    let sink = match &cfg.event_log {
        Some(p) => Some(control::events::spawn_file_sink(p.clone(), &bus)?),
        None => None,
    };
    let (call_tx, mut call_rx) = mpsc::channel::<control::server::Call>(64);
    let _server = control::server::serve(&cfg.control_socket, call_tx, bus.clone()).await?;

    let mut core = Core::new(&cfg, identity, gateway_pub, clock.now_ms());
    for (i, s) in sockets.socks.iter().enumerate() {
        core.set_local(i, s.bound);
    }
    let mut outs = watch.refresh(&cfg, &mut sockets, &mut core, clock.now_ms());
    let mut route_mtus: Vec<(SocketAddr, Option<u16>)> = (0..sockets.socks.len())
        .map(|t| (core.gateway(t), None))
        .collect();
    let mut route_mtu_at = tokio::time::Instant::now();
    outs.extend(refresh_route_mtus(
        &mut core,
        &sockets,
        &mut route_mtus,
        clock.now_ms(),
    ));
    tracing::info!(
        "client agent up: TUN {}, transports {}; control socket {}",
        tun.name(),
        cfg.transports
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let gw: Vec<String> = t.addresses().iter().map(ToString::to_string).collect();
                format!("{} {}→{}", t.name, sockets.socks[i].bound, gw.join("|"))
            })
            .collect::<Vec<_>>()
            .join(", "),
        cfg.control_socket.display()
    );

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = clock.now_ms();
    // Buffers for the tunnel, allocated once: a batch of datagrams in, a batch out.
    let slot = usize::try_from(cfg.mtu).unwrap_or(9000).max(1500) + 256;
    let mut rx = RecvBatch::new(BATCH, slot);
    let mut tx = SendBatch::new(BATCH, slot);
    tx.set_gso(
        sockets
            .socks
            .first()
            .is_some_and(|s| udp_batch::gso_supported(s.sock.as_raw_fd())),
    );
    let mut tun_buf = vec![0u8; 65_536];
    let mut turn = 0usize;
    tokio::pin!(shutdown);
    // Control before data: operator calls, link events and the timers are served
    // before any tunnel batch, and a batch of datagrams is handled control first,
    // so a saturated tunnel never delays a KEEPALIVE or its answer; the two data
    // directions take turns at random (docs/client.md, "Control before data").
    let outcome = loop {
        if let Err(e) = flush(outs, &mut core, &sockets, &tun, &cfg, &bus, &clock).await {
            break Err(e);
        }
        turn = turn.wrapping_add(1);
        let handles = sockets.handles();
        outs = tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            Some(c) = call_rx.recv() => {
                let resp = match &c.request {
                    Request::Status => Response::ok(&core.status(clock.now_ms())),
                    Request::Move { transport } => match core.request_move(transport) {
                        Ok(()) => Response::ok(&serde_json::Value::Null),
                        Err(e) => Response::error(e),
                    },
                    _ => Response::error(
                        "this is a client agent's control socket: it answers `client status`, \
                         `client move` and `events`",
                    ),
                };
                let _ = c.reply.send(resp);
                Vec::new()
            }
            Some(()) = recv_opt(&mut link_events) => {
                watch.refresh(&cfg, &mut sockets, &mut core, clock.now_ms())
            }
            _ = tick.tick() => {
                let now = clock.now_ms();
                let gap = now.saturating_sub(last_tick);
                last_tick = now;
                let mut outs = Vec::new();
                if gap > STALL_GAP_MS {
                    let gap_ms = gap - TICK.as_millis() as u64;
                    outs.extend(core.step(Input::Stall { gap_ms }, now));
                }
                if route_mtu_at.elapsed() >= ROUTE_MTU_EVERY {
                    route_mtu_at = tokio::time::Instant::now();
                    outs.extend(watch.refresh(&cfg, &mut sockets, &mut core, now));
                    outs.extend(refresh_route_mtus(&mut core, &sockets, &mut route_mtus, now));
                }
                outs.extend(core.step(Input::Tick, now));
                outs
            }
            ready = async {
                tokio::select! {
                    i = transports::readable(handles, turn) => Ready::Socket(i),
                    r = tun.readable() => Ready::Tun(r),
                }
            } => match ready {
                Ready::Socket(i) => from_gateway(i, &sockets, &mut rx, &mut core, &tun, &clock).await,
                Ready::Tun(Ok(r)) => {
                    from_tun(r, &mut tun_buf, &sockets, &mut tx, &mut core, &clock).await
                }
                Ready::Tun(Err(e)) => break Err(ClientError::TunRead(e)),
            },
        };
    };
    if outcome.is_ok() {
        let outs = core.step(Input::Close, clock.now_ms());
        let _ = flush(outs, &mut core, &sockets, &tun, &cfg, &bus, &clock).await;
        tracing::info!("client agent stopped");
    }
    // The last events (the close among them) are on disk before the agent exits.
    if let Some(sink) = sink {
        let _ = tokio::task::spawn_blocking(move || sink.close()).await;
    }
    outcome
}

enum Ready<'a> {
    Socket(usize),
    Tun(std::io::Result<TunReadable<'a>>),
}

/// One batch from transport `t`'s socket: control messages through the core first,
/// then the tunnel's DATA opened in place and written to the TUN.
async fn from_gateway(
    t: usize,
    sockets: &Sockets,
    rx: &mut RecvBatch,
    core: &mut Core,
    tun: &Tun,
    clock: &Clock,
) -> Vec<Out> {
    let mut outs = Vec::new();
    let s = &sockets.socks[t];
    let fd = s.sock.as_raw_fd();
    let n = match s.sock.try_io(Interest::READABLE, || rx.recv(fd)) {
        Ok(n) => n,
        // ICMP errors surface here (e.g. the link went away): the next read goes on.
        Err(_) => return outs,
    };
    let now = clock.now_ms();
    let from_gateway = |from: Option<SocketAddr>| from.filter(|a| s.gateways.contains(a));
    for i in 0..n {
        let (data, from) = rx.get(i);
        if let Some(from) = from_gateway(from)
            && data.get(1) != Some(&msg_type::DATA)
        {
            outs.extend(core.step(
                Input::Datagram {
                    transport: t,
                    from,
                    data,
                },
                now,
            ));
        }
    }
    for i in 0..n {
        let (data, from) = rx.get_mut(i);
        let Some(from) = from_gateway(from) else {
            continue;
        };
        if let Opened::Tun(r) = core.open_in_place(t, from, data, now) {
            let pkt = &data[r];
            let res = match tun.try_send(pkt) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tun.send(pkt).await,
                r => r,
            };
            if let Err(e) = res {
                tracing::debug!("writing to {}: {e}", tun.name());
            }
        }
    }
    outs
}

/// Up to a batch of packets from the TUN, sealed into the send batch (the fast
/// path) and sent over the binding with as few system calls as the socket allows;
/// anything else through the core.
async fn from_tun(
    mut ready: TunReadable<'_>,
    buf: &mut [u8],
    sockets: &Sockets,
    tx: &mut SendBatch,
    core: &mut Core,
    clock: &Clock,
) -> Vec<Out> {
    let mut outs = Vec::new();
    let now = clock.now_ms();
    let mut over = None;
    // At most a batch of reads, whatever becomes of them, before the loop looks at
    // its timers and the sockets again.
    for _ in 0..BATCH {
        let n = match ready.try_recv(buf) {
            None => break,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                tracing::warn!("reading the TUN device: {e}");
                break;
            }
        };
        let pkt = &buf[..n];
        match core.seal_into(pkt, tx.slot()) {
            Some((t, to)) => {
                over = Some(t);
                tx.commit(to);
            }
            None => outs.extend(core.step(Input::Tun(pkt), now)),
        }
    }
    let Some(t) = over else {
        return outs;
    };
    let mut failed: Vec<(usize, std::io::Error)> = Vec::new();
    let sent = udp_batch::send_batch(&sockets.socks[t].sock, tx, |d, res| {
        if let Err(e) = res {
            failed.push((d.len(), e));
        }
    })
    .await;
    if sent.is_err() {
        tx.clear();
        outs.extend(core.step(Input::SendError, now));
    }
    let to = core.gateway(t);
    for (len, e) in failed {
        let input = if sockopt::is_emsgsize(&e) {
            Input::TooBig {
                transport: t,
                len,
                route_mtu: sockets.route_mtu(t, to),
            }
        } else {
            Input::SendError
        };
        outs.extend(core.step(input, now));
    }
    outs
}

/// The next wake-up of an optional receiver (never, without one).
async fn recv_opt(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Tells the core each transport's route MTU towards its current gateway address
/// when it changed (the search's ceiling).
fn refresh_route_mtus(
    core: &mut Core,
    sockets: &Sockets,
    last: &mut [(SocketAddr, Option<u16>)],
    now_ms: u64,
) -> Vec<Out> {
    let mut outs = Vec::new();
    for (transport, prev) in last.iter_mut().enumerate() {
        let to = core.gateway(transport);
        let mtu = sockets.route_mtu(transport, to);
        if (to, mtu) != *prev {
            *prev = (to, mtu);
            if let Some(mtu) = mtu {
                outs.extend(core.step(Input::PathMax { transport, mtu }, now_ms));
            }
        }
    }
    outs
}

const IPV6_MIN_MTU: u16 = 1280;

/// The TUN device's MTU for a tunnel MTU of `mtu`. With an IPv6 address it stays at
/// 1280 or more: below that the kernel takes IPv6 (addresses and routes) off the
/// device for good. The core still fits every packet to the real tunnel MTU (IPv4
/// fragmented or refused with ICMP, IPv6 refused with Packet Too Big), so only IPv6
/// packets between the two sizes are lost while the path is that small.
fn device_mtu(core: &Core, mtu: u16) -> u32 {
    if core.tunnel6().is_some() && mtu < IPV6_MIN_MTU {
        tracing::warn!(
            "tunnel MTU {mtu} is below IPv6's {IPV6_MIN_MTU}: the TUN keeps {IPV6_MIN_MTU} \
             and IPv6 packets larger than {mtu} bytes are refused until the path allows more"
        );
        return u32::from(IPV6_MIN_MTU);
    }
    u32::from(mtu)
}

/// Carries out what the core asked for.
async fn flush(
    mut outs: Vec<Out>,
    core: &mut Core,
    sockets: &Sockets,
    tun: &Tun,
    cfg: &ClientConfig,
    bus: &EventBus,
    clock: &Clock,
) -> Result<(), ClientError> {
    // A failed send is news for the core (an EMSGSIZE lowers the tunnel MTU), which
    // may ask for more: carry on until it asks nothing.
    while !outs.is_empty() {
        let mut more = Vec::new();
        for o in std::mem::take(&mut outs) {
            match o {
                Out::Udp {
                    transport,
                    to,
                    data,
                } => {
                    let sent = sockets.send(transport, &data, to).await;
                    match sent {
                        Ok(_) => {}
                        Err(e) if sockopt::is_emsgsize(&e) => {
                            let route_mtu = sockets.route_mtu(transport, to);
                            let input = Input::TooBig {
                                transport,
                                len: data.len(),
                                route_mtu,
                            };
                            more.extend(core.step(input, clock.now_ms()));
                        }
                        Err(_) => more.extend(core.step(Input::SendError, clock.now_ms())),
                    }
                }
                Out::TunMtu(mtu) => {
                    if let Err(e) = tun::set_mtu(&cfg.tun_name, device_mtu(core, mtu)).await {
                        tracing::warn!("{e}");
                    }
                }
                Out::Tun(pkt) => {
                    if let Err(e) = tun.send(&pkt).await {
                        tracing::debug!("writing to {}: {e}", tun.name());
                    }
                }
                Out::TunUp(addr, addr6) => {
                    let prefix = if addr.is_ipv4() { 32 } else { 128 };
                    let mtu = match addr6 {
                        Some(_) => cfg.mtu.max(u32::from(IPV6_MIN_MTU)),
                        None => cfg.mtu,
                    };
                    match tun::flush_addresses(&cfg.tun_name).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            "removed {n} address(es) of the previous session from {}",
                            cfg.tun_name
                        ),
                        Err(e) => tracing::warn!("{e}"),
                    }
                    tun::configure(&cfg.tun_name, addr, prefix, mtu).await?;
                    // Without IPv6 on this host (disable_ipv6) the session still
                    // carries IPv4: a warning, not the end of the agent.
                    let addr6 = match addr6 {
                        Some(a6) => match tun::add_address(&cfg.tun_name, a6.into(), 128).await {
                            Ok(()) => Some(a6),
                            Err(e) => {
                                tracing::warn!("{e}: the tunnel carries IPv4 only on this host");
                                None
                            }
                        },
                        None => None,
                    };
                    for r in cfg.routes.iter().filter(|r| r.prefix_len() > 0) {
                        tun::add_route(&cfg.tun_name, r.network(), r.prefix_len()).await?;
                    }
                    let (v4, v6) = cfg.all_traffic();
                    if v4 || v6 {
                        tun::route_all(&cfg.tun_name, v4, v6).await?;
                        tracing::info!(
                            "all traffic{} through {} (the agent's own packets by fwmark {:#x})",
                            match (v4, v6) {
                                (true, true) => "",
                                (true, false) => " (IPv4)",
                                _ => " (IPv6)",
                            },
                            cfg.tun_name,
                            super::fullroute::FWMARK
                        );
                    }
                    match addr6 {
                        Some(a6) => tracing::info!("{} is up with {addr} and {a6}", cfg.tun_name),
                        None => tracing::info!("{} is up with {addr}", cfg.tun_name),
                    }
                }
                Out::Event(ev) => bus.emit(ev),
                Out::Exit(reason) => return Err(ClientError::Terminated(reason)),
            }
        }
        outs = more;
    }
    Ok(())
}
