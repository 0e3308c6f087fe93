//! The daemon's I/O shell around [`Core`]: loads and attaches the data plane, binds
//! the sockets, serves the control API and metrics, and feeds the core one input at
//! a time.

use std::{
    future::Future,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::{net::UdpSocket, sync::mpsc};

use super::{
    config::GatewayConfig,
    core::{Core, CoreParams, Outgoing},
    net::{Datagram, SocketError, Sockets, source_for},
    pool::Pool,
};
use crate::{
    clock::Clock,
    control::{self, events::EventBus},
    datapath::{AttachMode, Datapath, DatapathConfig, DatapathError},
    proto::{self, Peers, ProtoError},
};

const TICK: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Lock(#[from] super::lock::LockError),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
}

/// Runs the gateway until `shutdown` resolves. On the way out every session is
/// closed (CLOSE to the client, keys revoked at the exit, map entry removed); the XDP
/// links stay pinned (`jvpn-ctl datapath down` removes them).
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    cfg.validate()?;
    // Before anything touches the maps, the sockets or the control socket.
    let _lock = super::lock::ControllerLock::acquire(&cfg.pin_dir)?;
    let clock = Clock::new();
    let identity = proto::identity::load(&cfg.identity)?;
    let peers = Peers::load(&cfg.peers)?;
    if peers.is_empty() {
        tracing::warn!(
            "{} lists no client keys: every HELLO will be refused (add some with `jvpn-ctl peers add`)",
            cfg.peers.display()
        );
    }
    let link_key = proto::load_link_key(&cfg.exit.link_key)?;
    let IpNet::V4(net) = cfg.pool.cidr else {
        unreachable!("validate() accepts IPv4 pools only")
    };
    let reserved = cfg.pool.reserved.iter().filter_map(|a| match a {
        std::net::IpAddr::V4(v4) => Some(*v4),
        _ => None,
    });
    let pool = Pool::new(net, reserved);
    let gw_exit_ip = source_for(cfg.exit.data).map_err(|cause| GatewayError::Io {
        what: format!(
            "finding the local address toward the exit {}",
            cfg.exit.data
        ),
        cause,
    })?;

    let mut dp = Datapath::load(DatapathConfig {
        port: cfg.port,
        max_sessions: cfg.max_sessions,
        pin_dir: cfg.pin_dir.clone(),
        debug_log: false,
    })?;
    let mode = if cfg.attach == "skb" {
        AttachMode::Skb
    } else {
        AttachMode::Native
    };
    let modes = dp.attach_all(&cfg.interfaces, mode)?;
    for (i, m) in cfg.interfaces.iter().zip(&modes) {
        tracing::info!("relay attached to {i} ({m})");
    }
    let orphans = purge_orphans(&mut dp);
    if orphans > 0 {
        tracing::warn!(
            "removed {orphans} map entries left by an earlier controller (no keys for them)"
        );
    }

    let (dg_tx, mut dg_rx) = mpsc::channel::<Datagram>(4096);
    let sockets = Sockets::bind(&cfg.interfaces, cfg.port, dg_tx)?;
    let link_sock = bind_link(cfg.exit.link).await?;
    let (link_tx, mut link_rx) = mpsc::channel::<Vec<u8>>(1024);
    spawn_link_reader(link_sock.clone(), cfg.exit.link, link_tx);

    let bus = EventBus::new(4096);
    let _sink = match &cfg.event_log {
        Some(p) => Some(control::events::spawn_file_sink(p.clone(), &bus)?),
        None => None,
    };
    let (call_tx, mut call_rx) = mpsc::channel::<control::server::Call>(256);
    let _server = control::server::serve(&cfg.control_socket, call_tx.clone(), bus.clone()).await?;
    let _metrics = match cfg.metrics {
        Some(addr) => Some(control::metrics::serve(addr, call_tx.clone()).await?),
        None => None,
    };

    let now = clock.now_ms();
    let mut core = Core::new(
        CoreParams {
            policy: cfg.policy.clone(),
            identity,
            peers,
            pool,
            exit_data: cfg.exit.data,
            gw_exit: SocketAddr::new(gw_exit_ip, cfg.port),
            link_key,
            start_us: now * 1000,
        },
        dp,
        bus,
        now,
    );
    tracing::info!(
        "gateway up: {} listening on {}; control socket {}",
        hex::encode(core.gateway_pub()),
        sockets
            .locals()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.control_socket.display()
    );

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(c) = call_rx.recv() => {
                let resp = core.on_request(&c.request, clock.now_ms());
                let _ = c.reply.send(resp);
            }
            Some(d) = dg_rx.recv() => core.on_datagram(d.local, d.peer, &d.data, clock.now_ms()),
            Some(f) = link_rx.recv() => core.on_link_frame(&f, clock.now_ms()),
            _ = tick.tick() => core.tick(clock.now_ms()),
        }
        flush(&mut core, &sockets, &link_sock, cfg.exit.link);
    }

    let n = core.session_count();
    core.shutdown(clock.now_ms());
    flush(&mut core, &sockets, &link_sock, cfg.exit.link);
    // Give the exit a moment to acknowledge the revocations; unacknowledged ones are
    // logged (the exit forgets nothing it was not told about, so say so).
    let deadline = Instant::now() + Duration::from_millis(500);
    while core.link_pending() > 0 && Instant::now() < deadline {
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(50), link_rx.recv()).await {
            core.on_link_frame(&f, clock.now_ms());
        }
        core.tick(clock.now_ms());
        flush(&mut core, &sockets, &link_sock, cfg.exit.link);
    }
    if core.link_pending() > 0 {
        tracing::warn!(
            "{} key revocations not acknowledged by the exit",
            core.link_pending()
        );
    }
    tracing::info!("gateway stopped; closed {n} sessions");
    Ok(())
}

fn flush(core: &mut Core, sockets: &Sockets, link: &UdpSocket, exit_link: SocketAddr) {
    for o in std::mem::take(&mut core.out) {
        let sent = match o {
            Outgoing::Udp { local, peer, data } => sockets.send(local, peer, &data),
            Outgoing::Link(data) => link.try_send_to(&data, exit_link).is_ok(),
        };
        if !sent {
            core.note_send_failure();
        }
    }
}

async fn bind_link(exit_link: SocketAddr) -> Result<Arc<UdpSocket>, GatewayError> {
    let any: SocketAddr = if exit_link.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(any)
        .await
        .map(Arc::new)
        .map_err(|cause| GatewayError::Io {
            what: "binding the exit link socket".into(),
            cause,
        })
}

fn spawn_link_reader(sock: Arc<UdpSocket>, exit_link: SocketAddr, tx: mpsc::Sender<Vec<u8>>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            // Only the exit speaks on this socket; anything else is noise.
            if from != exit_link {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(buf[..n].to_vec()) {
                break;
            }
        }
    });
}

/// Removes `SESSIONS` entries this controller holds no keys for.
fn purge_orphans(dp: &mut Datapath) -> usize {
    let ids = dp.session_ids();
    let n = ids.len();
    for id in ids {
        let _ = dp.remove_session(id);
    }
    n
}
