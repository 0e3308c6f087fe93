//! The client agent's transports as the shell holds them: one UDP socket each
//! (bound anew when a transport that follows its interface gets a new address),
//! read and written in batches, and the kernel's view of each link
//! ([`super::netwatch`]) turned into the core's link signals.

use std::{
    collections::HashMap,
    future::poll_fn,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    task::Poll,
};

use tokio::net::UdpSocket;

use super::{
    config::{ClientConfig, TransportConfig},
    core::{Core, Input, LinkSignal, Out},
    netwatch,
    run::ClientError,
};
use crate::{sockopt, udp_batch};

/// Kernel buffers of each transport socket: room for a burst of tunnel traffic
/// without dropping the KEEPALIVE answers that arrive among it.
const SOCKET_BUFFER: usize = 4 << 20;

/// The longest a single send waits for room in its socket.
const SEND_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// One transport's socket.
pub struct Socket {
    pub sock: Arc<UdpSocket>,
    pub bound: SocketAddr,
    /// Its gateway addresses: anything from another source is not the gateway.
    pub gateways: Vec<SocketAddr>,
}

pub struct Sockets {
    pub socks: Vec<Socket>,
    devices: Vec<Option<String>>,
    /// The sockets again, for a readiness wait that does not borrow `self`
    /// (rebuilt on a rebind, not per wait).
    handles: Arc<[Arc<UdpSocket>]>,
}

impl Sockets {
    /// Binds every transport: a following one to its interface's address of its
    /// family if it has one now (else the unspecified address until it gets one).
    pub fn bind_all(
        cfg: &ClientConfig,
        ifaces: &HashMap<String, netwatch::Iface>,
    ) -> Result<Self, ClientError> {
        let mut socks = Vec::new();
        for t in &cfg.transports {
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
            socks.push(Self::bind(t, addr)?);
        }
        let mut s = Sockets {
            socks,
            devices: cfg.transports.iter().map(|t| t.interface.clone()).collect(),
            handles: Arc::new([]),
        };
        s.rebuild_handles();
        Ok(s)
    }

    /// The route MTU from transport `t` towards its gateway address `to`.
    pub fn route_mtu(&self, t: usize, to: SocketAddr) -> Option<u16> {
        sockopt::route_mtu(self.socks[t].bound, self.devices[t].as_deref(), to)
    }

    /// Sends one datagram; waits for room rather than dropping it (a control
    /// message must not be lost to a full buffer, and a socket just registered is
    /// not known writable until the reactor has looked).
    pub async fn send(&self, t: usize, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        let sock = &self.socks[t].sock;
        match sock.try_send_to(data, to) {
            // Bounded: a socket that stays full must not stop the loop (its timers,
            // the other transports).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(SEND_WAIT, sock.send_to(data, to))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::WouldBlock.into()))
            }
            r => r,
        }
    }

    /// The sockets, for a readiness wait that does not borrow `self`.
    pub fn handles(&self) -> Arc<[Arc<UdpSocket>]> {
        self.handles.clone()
    }

    fn rebuild_handles(&mut self) {
        self.handles = self.socks.iter().map(|s| s.sock.clone()).collect();
    }

    fn bind(t: &TransportConfig, addr: SocketAddr) -> Result<Socket, ClientError> {
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
        let fd = sock.as_raw_fd();
        sockopt::dont_fragment(fd, t.v6()).map_err(|e| err("setting don't-fragment", e))?;
        sockopt::apply_agent_mark(fd)
            .map_err(|e| err("marking its socket (all-traffic mode)", e))?;
        if let Err(e) = udp_batch::set_buffers(fd, SOCKET_BUFFER, SOCKET_BUFFER) {
            tracing::warn!("transport {}: socket buffers: {e}", t.name);
        }
        let bound = sock
            .local_addr()
            .map_err(|e| err("reading its address", e))?;
        Ok(Socket {
            sock: Arc::new(sock),
            bound,
            gateways: t.addresses(),
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
        self.socks[i] = Self::bind(t, SocketAddr::new(ip, port))?;
        self.rebuild_handles();
        Ok(self.socks[i].bound)
    }
}

/// Resolves with the index of a transport socket that has datagrams queued,
/// looking from `start` on (so one busy transport does not hide the others).
pub async fn readable(socks: Arc<[Arc<UdpSocket>]>, start: usize) -> usize {
    let n = socks.len();
    poll_fn(|cx| {
        for k in 0..n {
            let i = (start + k) % n;
            // An error (a queued ICMP report) is readiness too: the read returns it.
            if socks[i].poll_recv_ready(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
    .await
}

/// What the kernel said about each transport last time it was asked.
pub struct Watch {
    ifaces: Vec<Option<String>>,
    last: Vec<Option<netwatch::View>>,
}

impl Watch {
    pub fn new(cfg: &ClientConfig, ifaces: &HashMap<String, netwatch::Iface>) -> Self {
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
    pub fn refresh(
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
            if self.ifaces[i].is_none() {
                // A fixed address that was on no interface at start may be now.
                self.ifaces[i] = netwatch::interface_of(t, &ifaces);
            }
            let bound = sockets.socks[i].bound;
            let v = netwatch::view(t, self.ifaces[i].as_deref(), &ifaces, bound, gateways[i]);
            let mut before = self.last[i].replace(v);
            if let Some(ip) = v.addr
                && ip != bound.ip()
            {
                match sockets.rebind(i, t, ip) {
                    Ok(local) => {
                        // Usable again as far as the core knows: a Down that came
                        // with the address (no route yet) is said again below.
                        signal(i, LinkSignal::Rebound(local));
                        before = None;
                    }
                    Err(e) => {
                        // Tried again at the next refresh (a tentative address).
                        tracing::warn!("{e}");
                        self.last[i] = before;
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
