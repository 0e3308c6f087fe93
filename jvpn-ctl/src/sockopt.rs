//! The two socket facts path-MTU handling needs from the kernel: "never fragment
//! what I send" and "how large may a packet to the gateway be now"; and the mark
//! that keeps the agent's own sockets out of the tunnel in all-traffic mode.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::atomic::{AtomicU32, Ordering},
};

/// The firewall mark every socket of the agent towards its gateways carries (0: none):
/// in all-traffic mode the policy rules send unmarked packets into the tunnel and
/// marked ones by the main table (`client/fullroute.rs`). One per process: an agent
/// is one process.
static MARK: AtomicU32 = AtomicU32::new(0);

/// Sets the mark for the sockets made from now on.
pub fn set_agent_mark(mark: u32) {
    MARK.store(mark, Ordering::Relaxed);
}

/// Gives `fd` the agent's mark, if it has one (SO_MARK needs CAP_NET_ADMIN, which the
/// agent has for its TUN).
pub fn apply_agent_mark(fd: RawFd) -> io::Result<()> {
    match MARK.load(Ordering::Relaxed) {
        0 => Ok(()),
        m => setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, m as i32),
    }
}

fn setsockopt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a plain int option on a socket we own; the pointer and length match.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: as above, for reading.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// DF on IPv4 and no fragmentation on IPv6: a datagram larger than the path fails
/// with EMSGSIZE instead of leaving as fragments (which the relay drops, and which
/// NATs and firewalls lose).
pub fn dont_fragment(fd: RawFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )?;
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    }
}

/// The kernel's current MTU towards `gateway` from `bind`'s address (through
/// `device` if set): the interface or route MTU, lowered by any ICMP "too big" the
/// kernel has taken in. Asked through a throwaway connected socket, since only a
/// connected socket answers (the transport's own socket stays unconnected so a
/// link that is down at start does not stop the agent). `None` if there is no route.
pub fn route_mtu(bind: SocketAddr, device: Option<&str>, gateway: SocketAddr) -> Option<u16> {
    let sock = probe_socket(bind.ip(), device).ok()?;
    let fd = sock.as_raw_fd();
    let v6 = gateway.is_ipv6();
    dont_fragment(fd, v6).ok()?;
    sock.connect(gateway).ok()?;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mtu = getsockopt(fd, level, name).ok()?;
    u16::try_from(mtu).ok().filter(|&m| m >= 576)
}

/// A throwaway UDP socket on `ip` (any port), tied to `device` if set: for asking
/// the kernel about a path with `connect`, never for sending.
pub fn probe_socket(ip: std::net::IpAddr, device: Option<&str>) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    // Asked as the transport's own packets would be routed.
    apply_agent_mark(sock.as_raw_fd())?;
    if let Some(dev) = device {
        // SAFETY: SO_BINDTODEVICE takes the name's bytes and their length.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(sock)
}

pub fn is_emsgsize(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMSGSIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback has a large MTU and always a route; the option calls must succeed.
    #[test]
    fn loopback_route_mtu_and_df() {
        let mtu = route_mtu(
            "127.0.0.1:0".parse().unwrap(),
            None,
            "127.0.0.1:9".parse().unwrap(),
        );
        assert!(mtu.is_some_and(|m| m >= 1500), "{mtu:?}");
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        dont_fragment(s.as_raw_fd(), false).unwrap();
        assert_eq!(
            getsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap(),
            libc::IP_PMTUDISC_DO
        );
    }
}
