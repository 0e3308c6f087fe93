//! The controller's sockets: one UDP socket per address of the relay's interfaces.
//!
//! One socket per local address (rather than one wildcard socket) gives each received
//! packet its destination address, which becomes the gateway side of the binding in
//! the `SESSIONS` entry, and makes every reply leave from the address the client
//! talked to.

use std::{
    collections::HashMap,
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket},
    sync::Arc,
};

use tokio::{net::UdpSocket, sync::mpsc};

/// Addresses of `iface`, except IPv6 link-local ones (they need a scope for every
/// send and a client would never use one as its gateway).
pub fn interface_addrs(iface: &str) -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list that we walk read-only and free once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says how long it is.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if !a.is_unicast_link_local() {
                    out.push(IpAddr::V6(a));
                }
            }
            _ => {}
        }
    }
    // SAFETY: head came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// A datagram for the controller.
pub struct Datagram {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub data: Vec<u8>,
}

/// The gateway's protocol sockets by local address.
pub struct Sockets {
    by_local: HashMap<SocketAddr, Arc<UdpSocket>>,
}

impl Sockets {
    /// Binds `port` on every address of `ifaces` and starts a reader task per socket
    /// that forwards datagrams to `tx`.
    pub fn bind(
        ifaces: &[String],
        port: u16,
        tx: mpsc::Sender<Datagram>,
    ) -> Result<Self, SocketError> {
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
                let sock = Arc::new(
                    UdpSocket::from_std(std).map_err(|cause| SocketError::Bind { local, cause })?,
                );
                by_local.insert(local, sock.clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    // One byte more than the largest KEEPALIVE (a path-MTU probe): a
                    // longer datagram arrives truncated and is refused as malformed.
                    let mut buf = vec![0u8; crate::proto::control::KEEPALIVE_MAX_LEN + 1];
                    loop {
                        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                            continue;
                        };
                        let d = Datagram {
                            local,
                            peer,
                            data: buf[..n].to_vec(),
                        };
                        // A full queue sheds load here rather than blocking the reader.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(d) {
                            break;
                        }
                    }
                });
            }
        }
        if by_local.is_empty() {
            return Err(SocketError::NoAddresses(ifaces.join(", ")));
        }
        Ok(Self { by_local })
    }

    /// Sends without waiting; a full socket buffer drops the datagram (returns false).
    pub fn send(&self, local: SocketAddr, peer: SocketAddr, data: &[u8]) -> bool {
        match self.by_local.get(&local) {
            Some(s) => s.try_send_to(data, peer).is_ok(),
            None => false,
        }
    }

    pub fn locals(&self) -> impl Iterator<Item = &SocketAddr> {
        self.by_local.keys()
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
