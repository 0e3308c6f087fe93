//! The controller's sockets: one UDP socket per address of the relay's interfaces.
//!
//! One socket per local address (rather than one wildcard socket) gives each received
//! packet its destination address, which becomes the gateway side of the binding in
//! the `SESSIONS` entry, and makes every reply leave from the address the client
//! talked to.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket},
    os::fd::AsRawFd,
    task::Poll,
};

use tokio::{io::Interest, net::UdpSocket};

use crate::udp_batch::{RecvBatch, SendBatch, set_buffers};

/// Addresses of `iface`, except IPv6 link-local ones (they need a scope for every
/// send and a client would never use one as its gateway).
pub fn interface_addrs(iface: &str) -> std::io::Result<Vec<IpAddr>> {
    let all = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(all
        .filter(|ifa| ifa.interface_name == iface)
        .filter_map(|ifa| {
            let a = ifa.address?;
            match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
                (_, Some(v6)) if !v6.ip().is_unicast_link_local() => Some(IpAddr::V6(v6.ip())),
                _ => None,
            }
        })
        .collect())
}

/// Datagrams taken from the sockets per `recvmmsg` call.
const RECV_SLOTS: usize = 64;
/// Replies queued per socket before a `sendmmsg`.
const SEND_SLOTS: usize = 64;
/// Socket buffers asked for (the kernel caps them at `rmem_max`/`wmem_max` unless the
/// process may force them): a burst the controller has not read yet waits here
/// instead of being dropped.
const SOCKET_BUFFER: usize = 8 << 20;

struct Socket {
    local: SocketAddr,
    sock: UdpSocket,
    out: SendBatch,
}

/// The gateway's protocol sockets by local address. They are read and written on
/// the controller's own thread: a reader task per socket handing each datagram over
/// a channel cost two thread switches per datagram, a third of the controller's time
/// at 140,000 keepalives/s (docs/gateway.md, "Keepalives at scale").
pub struct Sockets {
    socks: Vec<Socket>,
    by_local: HashMap<SocketAddr, usize>,
    rx: RecvBatch,
}

impl Sockets {
    /// Binds `port` on every address of `ifaces`.
    pub fn bind(ifaces: &[String], port: u16) -> Result<Self, SocketError> {
        let mut socks = Vec::new();
        let mut by_local = HashMap::new();
        for iface in ifaces {
            let addrs = interface_addrs(iface).map_err(|cause| SocketError::Addrs {
                iface: iface.clone(),
                cause,
            })?;
            for ip in addrs {
                let local = SocketAddr::new(ip, port);
                let std = StdUdpSocket::bind(local)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(|cause| SocketError::Bind { local, cause })?;
                if let Err(e) = set_buffers(std.as_raw_fd(), SOCKET_BUFFER, SOCKET_BUFFER) {
                    tracing::warn!("socket buffers of {local}: {e}");
                }
                let sock =
                    UdpSocket::from_std(std).map_err(|cause| SocketError::Bind { local, cause })?;
                by_local.insert(local, socks.len());
                socks.push(Socket {
                    local,
                    sock,
                    out: SendBatch::new(SEND_SLOTS, 128),
                });
            }
        }
        if socks.is_empty() {
            return Err(SocketError::NoAddresses(ifaces.join(", ")));
        }
        Ok(Self {
            socks,
            by_local,
            // One byte more than the largest KEEPALIVE (a path-MTU probe): a longer
            // datagram arrives truncated and is refused as malformed.
            rx: RecvBatch::new(RECV_SLOTS, crate::proto::control::KEEPALIVE_MAX_LEN + 1),
        })
    }

    /// Resolves when some socket has a datagram to read.
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            for s in &self.socks {
                if s.sock.poll_recv_ready(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Reads what the sockets hold, up to about `budget` datagrams, calling
    /// `f(local, peer, datagram)` for each; returns how many were read.
    pub fn recv(
        &mut self,
        budget: usize,
        mut f: impl FnMut(SocketAddr, SocketAddr, &[u8]),
    ) -> usize {
        let mut n = 0;
        let rx = &mut self.rx;
        for s in &self.socks {
            while n < budget {
                let got = match s
                    .sock
                    .try_io(Interest::READABLE, || rx.recv(s.sock.as_raw_fd()))
                {
                    Ok(got) => got,
                    Err(_) => break, // WouldBlock (readiness cleared) or a socket error
                };
                for i in 0..got {
                    if let (d, Some(peer)) = rx.get(i) {
                        f(s.local, peer, d);
                    }
                }
                n += got;
                if got < rx.capacity() {
                    break;
                }
            }
        }
        n
    }

    /// Queues a datagram on the socket of `local` (sent by [`Sockets::flush`]);
    /// false when there is no such socket.
    pub fn queue(&mut self, local: SocketAddr, peer: SocketAddr, data: &[u8]) -> bool {
        match self.by_local.get(&local) {
            Some(&i) => {
                let s = &mut self.socks[i];
                s.out.push(data, peer);
                if s.out.is_full() {
                    return Self::send_queued(s) == 0;
                }
                true
            }
            None => false,
        }
    }

    /// Sends everything queued without waiting; returns how many datagrams could not
    /// be sent (a full socket buffer drops them).
    pub fn flush(&mut self) -> usize {
        self.socks.iter_mut().map(Self::send_queued).sum()
    }

    fn send_queued(s: &mut Socket) -> usize {
        let mut failed = 0;
        let fd = s.sock.as_raw_fd();
        if s.out
            .send(fd, |_, r| failed += r.is_err() as usize)
            .is_err()
        {
            failed += s.out.len();
            s.out.clear();
        }
        failed
    }

    pub fn locals(&self) -> impl Iterator<Item = &SocketAddr> {
        self.socks.iter().map(|s| &s.local)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("listing the addresses of {iface}: {cause}")]
    Addrs {
        iface: String,
        cause: std::io::Error,
    },
    #[error("binding {local}: {cause}")]
    Bind {
        local: SocketAddr,
        cause: std::io::Error,
    },
    #[error("no usable address on {0}: give the interfaces an IPv4 or global IPv6 address")]
    NoAddresses(String),
}

/// The local address the kernel would use to reach `dst` (no packet is sent).
pub fn source_for(dst: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = StdUdpSocket::bind(any)?;
    s.connect(dst)?;
    Ok(s.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_addresses() {
        let a = interface_addrs("lo").unwrap();
        assert!(a.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{a:?}");
        assert!(interface_addrs("no-such-if0").unwrap().is_empty());
        assert_eq!(
            source_for("127.0.0.1:9".parse().unwrap()).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }
}
