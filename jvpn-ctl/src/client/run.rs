//! The client agent's I/O shell: one UDP socket per transport, the TUN device, the
//! control socket and a tick, all feeding the synchronous [`Core`].

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{net::UdpSocket, sync::mpsc};

use super::{
    config::{ClientConfig, ConfigError, TransportConfig},
    core::{Core, Input, LinkSignal, Out},
    netwatch,
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
    tun::{self, Tun, TunError},
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

/// Kernel buffers of each transport socket: room for a burst of tunnel traffic
/// without dropping the KEEPALIVE answers that arrive among it.
const SOCKET_BUFFER: usize = 4 << 20;

/// One transport's socket and the task that reads it.
struct Socket {
    sock: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
    bound: SocketAddr,
}

struct Sockets {
    socks: Vec<Socket>,
    devices: Vec<Option<String>>,
    tx: mpsc::Sender<Datagram>,
}

impl Sockets {
    /// The route MTU from transport `t` towards its gateway address `to`.
    fn route_mtu(&self, t: usize, to: SocketAddr) -> Option<u16> {
        sockopt::route_mtu(self.socks[t].bound, self.devices[t].as_deref(), to)
    }

    fn send(&self, t: usize, data: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.socks[t].sock.try_send_to(data, to)
    }

    /// Binds transport `i` (`t`) to `addr` and starts reading it.
    fn bind(
        i: usize,
        t: &TransportConfig,
        addr: SocketAddr,
        tx: &mpsc::Sender<Datagram>,
    ) -> Result<Socket, ClientError> {
        let err = |what, cause| ClientError::Transport {
            name: t.name.clone(),
            what,
            cause,
        };
        let std_sock =
            std::net::UdpSocket::bind(addr).map_err(|e| err("binding its source address", e))?;
        std_sock
            .set_nonblocking(true)
            .map_err(|e| err("making its socket nonblocking", e))?;
        let sock = UdpSocket::from_std(std_sock).map_err(|e| err("registering its socket", e))?;
        if let Some(dev) = &t.interface {
            sock.bind_device(Some(dev.as_bytes()))
                .map_err(|e| err("binding to its interface", e))?;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        sockopt::dont_fragment(fd, t.v6()).map_err(|e| err("setting don't-fragment", e))?;
        if let Err(e) = crate::udp_batch::set_buffers(fd, SOCKET_BUFFER, SOCKET_BUFFER) {
            tracing::warn!("transport {}: socket buffers: {e}", t.name);
        }
        let bound = sock
            .local_addr()
            .map_err(|e| err("reading its address", e))?;
        let sock = Arc::new(sock);
        let reader = spawn_reader(i, sock.clone(), t.addresses(), tx.clone());
        Ok(Socket {
            sock,
            reader,
            bound,
        })
    }

    /// Transport `i` follows its interface, whose address is now `ip`: a new socket
    /// there (the old one is closed); returns its address.
    fn rebind(
        &mut self,
        i: usize,
        t: &TransportConfig,
        ip: IpAddr,
    ) -> Result<SocketAddr, ClientError> {
        let port = t.bind.map_or(0, |b| b.port());
        let new = Self::bind(i, t, SocketAddr::new(ip, port), &self.tx)?;
        let old = std::mem::replace(&mut self.socks[i], new);
        old.reader.abort();
        Ok(self.socks[i].bound)
    }
}

/// A datagram for the core: transport, source (one of its gateway addresses), bytes.
type Datagram = (usize, SocketAddr, Vec<u8>);

/// Binds every transport: a following one to its interface's address of its
/// family if it has one now (else the unspecified address until it gets one).
fn bind_transports(
    cfg: &ClientConfig,
    ifaces: &HashMap<String, netwatch::Iface>,
    tx: mpsc::Sender<Datagram>,
) -> Result<Sockets, ClientError> {
    let mut socks = Vec::new();
    for (i, t) in cfg.transports.iter().enumerate() {
        let mut addr = t.bind_addr();
        if t.follows_interface()
            && let Some(ip) = t
                .interface
                .as_ref()
                .and_then(|d| ifaces.get(d))
                .and_then(|f| f.addrs.iter().find(|a| a.is_ipv6() == t.v6()))
        {
            addr.set_ip(*ip);
        }
        socks.push(Sockets::bind(i, t, addr, &tx)?);
    }
    Ok(Sockets {
        socks,
        devices: cfg.transports.iter().map(|t| t.interface.clone()).collect(),
        tx,
    })
}

/// What the kernel said about each transport last time it was asked.
struct Watch {
    ifaces: Vec<Option<String>>,
    last: Vec<Option<netwatch::View>>,
}

impl Watch {
    fn new(cfg: &ClientConfig, ifaces: &HashMap<String, netwatch::Iface>) -> Self {
        Self {
            ifaces: cfg
                .transports
                .iter()
                .map(|t| netwatch::interface_of(t, ifaces))
                .collect(),
            last: vec![None; cfg.transports.len()],
        }
    }

    /// Reads the kernel's state again and tells the core what changed (returning
    /// what the core wants done); a following transport whose interface has a new
    /// address is bound there first.
    fn refresh(
        &mut self,
        cfg: &ClientConfig,
        sockets: &mut Sockets,
        core: &mut Core,
        now: u64,
    ) -> Vec<Out> {
        let mut outs = Vec::new();
        let ifaces = match netwatch::interfaces() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("reading the interfaces: {e}");
                return outs;
            }
        };
        let gateways: Vec<SocketAddr> = (0..self.last.len()).map(|i| core.gateway(i)).collect();
        let mut signal = |transport, signal| {
            outs.extend(core.step(Input::Link { transport, signal }, now));
        };
        for (i, t) in cfg.transports.iter().enumerate() {
            let bound = sockets.socks[i].bound;
            let v = netwatch::view(t, self.ifaces[i].as_deref(), &ifaces, bound, gateways[i]);
            let before = self.last[i].replace(v);
            if let Some(ip) = v.addr
                && ip != bound.ip()
            {
                match sockets.rebind(i, t, ip) {
                    Ok(local) => {
                        signal(i, LinkSignal::Rebound(local));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        self.last[i] = before;
                        continue;
                    }
                }
            }
            match (before.and_then(|b| b.down), v.down) {
                (_, Some(d)) => signal(i, LinkSignal::Down(d)),
                (Some(_), None) => signal(i, LinkSignal::Up),
                (None, None) => {}
            }
        }
        outs
    }
}

/// Forwards what the gateway sends on one transport, from any of its addresses (the
/// nodes of a cluster); anything from another source is not the gateway and is
/// ignored.
fn spawn_reader(
    i: usize,
    sock: Arc<UdpSocket>,
    gateways: Vec<SocketAddr>,
    tx: mpsc::Sender<Datagram>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, from)) if gateways.contains(&from) => {
                    if tx.send((i, from, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                // ICMP errors surface here (e.g. the link went away); keep reading.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
}

/// Runs the agent until `shutdown` resolves (then the session is CLOSEd) or the
/// session ends without `reconnect`.
pub async fn run(cfg: ClientConfig, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
    cfg.validate()?;
    let gateway_pub = cfg.gateway_key()?;
    let identity = proto::identity::load(&cfg.identity).map_err(ClientError::Identity)?;
    let clock = Clock::new();
    let tun = Tun::open(&cfg.tun_name)?;
    let (dg_tx, mut dg_rx) = mpsc::channel(4096);
    let ifaces = netwatch::interfaces().map_err(ClientError::Interfaces)?;
    let mut sockets = bind_transports(&cfg, &ifaces, dg_tx)?;
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
    let _sink = match &cfg.event_log {
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
    let mut buf = vec![0u8; 65_536];
    tokio::pin!(shutdown);
    // Control before data: operator calls, the gateway's datagrams, link events and
    // the timers are served before the next TUN packet, so a saturated tunnel never
    // delays a KEEPALIVE or its answer (docs/client.md, "Control before data").
    let outcome = loop {
        if let Err(e) = flush(outs, &mut core, &sockets, &tun, &cfg, &bus, &clock).await {
            break Err(e);
        }
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
            Some((transport, from, data)) = dg_rx.recv() => {
                core.step(Input::Datagram { transport, from, data: &data }, clock.now_ms())
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
            r = tun.recv(&mut buf) => match r {
                Ok(n) => core.step(Input::Tun(&buf[..n]), clock.now_ms()),
                Err(e) => {
                    tracing::warn!("reading {}: {e}", tun.name());
                    Vec::new()
                }
            },
        };
    };
    if outcome.is_ok() {
        let outs = core.step(Input::Close, clock.now_ms());
        let _ = flush(outs, &mut core, &sockets, &tun, &cfg, &bus, &clock).await;
        tracing::info!("client agent stopped");
    }
    // Let the file sink write the last events.
    tokio::time::sleep(Duration::from_millis(50)).await;
    outcome
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
                    let sent = sockets.send(transport, &data, to);
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
                    if let Err(e) = tun::set_mtu(&cfg.tun_name, u32::from(mtu)).await {
                        tracing::warn!("{e}");
                    }
                }
                Out::Tun(pkt) => {
                    if let Err(e) = tun.send(&pkt).await {
                        tracing::debug!("writing to {}: {e}", tun.name());
                    }
                }
                Out::TunUp(addr) => {
                    let prefix = if addr.is_ipv4() { 32 } else { 128 };
                    tun::configure(&cfg.tun_name, addr, prefix, cfg.mtu).await?;
                    for r in &cfg.routes {
                        tun::add_route(&cfg.tun_name, r.network(), r.prefix_len()).await?;
                    }
                    tracing::info!("{} is up with {addr}", cfg.tun_name);
                }
                Out::Event(ev) => bus.emit(ev),
                Out::Exit(reason) => return Err(ClientError::Terminated(reason)),
            }
        }
        outs = more;
    }
    Ok(())
}
