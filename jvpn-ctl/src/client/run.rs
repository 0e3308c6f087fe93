//! The client agent's I/O shell: one UDP socket per transport, the TUN device, the
//! control socket and a tick, all feeding the synchronous [`Core`].

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::UdpSocket, sync::mpsc};

use super::{
    config::{ClientConfig, ConfigError},
    core::{Core, Out},
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
/// How often each transport's route MTU is asked again (a link or route changed).
const ROUTE_MTU_EVERY: Duration = Duration::from_secs(2);

/// Messages include their cause (no `source`, so `{:#}` does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("identity: {0}")]
    Identity(ProtoError),
    #[error(transparent)]
    Tun(#[from] TunError),
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

struct Sockets {
    socks: Vec<Arc<UdpSocket>>,
    binds: Vec<SocketAddr>,
    devices: Vec<Option<String>>,
}

impl Sockets {
    /// The route MTU from transport `t` towards its gateway address `to`.
    fn route_mtu(&self, t: usize, to: SocketAddr) -> Option<u16> {
        sockopt::route_mtu(self.binds[t], self.devices[t].as_deref(), to)
    }
}

/// A datagram for the core: transport, source (one of its gateway addresses), bytes.
type Datagram = (usize, SocketAddr, Vec<u8>);

async fn bind_transports(
    cfg: &ClientConfig,
    tx: mpsc::Sender<Datagram>,
) -> Result<Sockets, ClientError> {
    let mut socks = Vec::new();
    for (i, t) in cfg.transports.iter().enumerate() {
        let err = |what, cause| ClientError::Transport {
            name: t.name.clone(),
            what,
            cause,
        };
        let sock = UdpSocket::bind(t.bind)
            .await
            .map_err(|e| err("binding its source address", e))?;
        if let Some(dev) = &t.interface {
            sock.bind_device(Some(dev.as_bytes()))
                .map_err(|e| err("binding to its interface", e))?;
        }
        sockopt::dont_fragment(std::os::fd::AsRawFd::as_raw_fd(&sock), t.bind.is_ipv6())
            .map_err(|e| err("setting don't-fragment", e))?;
        let sock = Arc::new(sock);
        spawn_reader(i, sock.clone(), t.addresses(), tx.clone());
        socks.push(sock);
    }
    Ok(Sockets {
        socks,
        binds: cfg.transports.iter().map(|t| t.bind).collect(),
        devices: cfg.transports.iter().map(|t| t.interface.clone()).collect(),
    })
}

/// Forwards what the gateway sends on one transport, from any of its addresses (the
/// nodes of a cluster); anything from another source is not the gateway and is
/// ignored.
fn spawn_reader(
    i: usize,
    sock: Arc<UdpSocket>,
    gateways: Vec<SocketAddr>,
    tx: mpsc::Sender<Datagram>,
) {
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
    });
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
    let sockets = bind_transports(&cfg, dg_tx).await?;

    let bus = EventBus::new(4096);
    let _sink = match &cfg.event_log {
        Some(p) => Some(control::events::spawn_file_sink(p.clone(), &bus)?),
        None => None,
    };
    let (call_tx, mut call_rx) = mpsc::channel::<control::server::Call>(64);
    let _server = control::server::serve(&cfg.control_socket, call_tx, bus.clone()).await?;

    let mut core = Core::new(&cfg, identity, gateway_pub, clock.now_ms());
    for (i, s) in sockets.socks.iter().enumerate() {
        if let Ok(local) = s.local_addr() {
            core.set_local(i, local);
        }
    }
    let mut route_mtus: Vec<(SocketAddr, Option<u16>)> = (0..sockets.socks.len())
        .map(|t| (core.gateway(t), None))
        .collect();
    let mut route_mtu_at = tokio::time::Instant::now();
    refresh_route_mtus(&mut core, &sockets, &mut route_mtus, clock.now_ms());
    tracing::info!(
        "client agent up: TUN {}, transports {}; control socket {}",
        tun.name(),
        cfg.transports
            .iter()
            .map(|t| {
                let gw: Vec<String> = t.addresses().iter().map(ToString::to_string).collect();
                format!("{} {}→{}", t.name, t.bind, gw.join("|"))
            })
            .collect::<Vec<_>>()
            .join(", "),
        cfg.control_socket.display()
    );

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 65_536];
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
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
            }
            Some((i, from, d)) = dg_rx.recv() => core.on_datagram(i, from, &d, clock.now_ms()),
            r = tun.recv(&mut buf) => match r {
                Ok(n) => core.on_tun(&buf[..n]),
                Err(e) => tracing::warn!("reading {}: {e}", tun.name()),
            },
            _ = tick.tick() => {
                if route_mtu_at.elapsed() >= ROUTE_MTU_EVERY {
                    route_mtu_at = tokio::time::Instant::now();
                    refresh_route_mtus(&mut core, &sockets, &mut route_mtus, clock.now_ms());
                }
                core.tick(clock.now_ms())
            }
        }
        if let Err(e) = flush(&mut core, &sockets, &tun, &cfg, &bus, &clock).await {
            break Err(e);
        }
    };
    if outcome.is_ok() {
        core.close(clock.now_ms());
        let _ = flush(&mut core, &sockets, &tun, &cfg, &bus, &clock).await;
        tracing::info!("client agent stopped");
    }
    // Let the file sink write the last events.
    tokio::time::sleep(Duration::from_millis(50)).await;
    outcome
}

/// Tells the core each transport's route MTU towards its current gateway address
/// when it changed (the search's ceiling).
fn refresh_route_mtus(
    core: &mut Core,
    sockets: &Sockets,
    last: &mut [(SocketAddr, Option<u16>)],
    now_ms: u64,
) {
    for (t, prev) in last.iter_mut().enumerate() {
        let to = core.gateway(t);
        let mtu = sockets.route_mtu(t, to);
        if (to, mtu) != *prev {
            *prev = (to, mtu);
            if let Some(m) = mtu {
                core.set_path_max(t, m, now_ms);
            }
        }
    }
}

async fn flush(
    core: &mut Core,
    sockets: &Sockets,
    tun: &Tun,
    cfg: &ClientConfig,
    bus: &EventBus,
    clock: &Clock,
) -> Result<(), ClientError> {
    // Outputs may queue more (an EMSGSIZE lowers the tunnel MTU): drain until empty.
    while !core.out.is_empty() {
        for o in std::mem::take(&mut core.out) {
            match o {
                Out::Udp {
                    transport,
                    to,
                    data,
                } => {
                    let sent = sockets.socks[transport].try_send_to(&data, to);
                    match sent {
                        Ok(_) => {}
                        Err(e) if sockopt::is_emsgsize(&e) => {
                            let mtu = sockets.route_mtu(transport, to);
                            core.note_too_big(transport, data.len(), mtu, clock.now_ms());
                        }
                        Err(_) => core.note_send_error(),
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
    }
    Ok(())
}
