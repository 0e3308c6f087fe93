//! The unsafe part of the userspace relay: socket setup, socket addresses as the
//! kernel reads and writes them, and `recvmmsg` / `sendmmsg` over preallocated
//! message arrays. Every `unsafe` block is here, each next to the reason it is sound.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use jvpn_common::maps::{AF_INET, AF_INET6, Endpoint};

/// Asked for on both queues; the kernel doubles it. Large enough that a flood is
/// absorbed by the queue for one scheduling delay rather than dropped at once.
const SOCKET_BUFFER: libc::c_int = 16 << 20;

/// A socket address in the layout the kernel expects, IPv4 or IPv6.
#[derive(Clone, Copy)]
#[repr(C)]
pub union SockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl SockAddr {
    pub fn zeroed() -> Self {
        // SAFETY: both variants are plain integers, for which all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    /// `None` for an endpoint of neither family.
    pub fn from_endpoint(e: &Endpoint) -> Option<(Self, libc::socklen_t)> {
        let mut sa = Self::zeroed();
        let len = match e.family {
            AF_INET => {
                sa.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: e.port_be,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes([e.addr[0], e.addr[1], e.addr[2], e.addr[3]]),
                    },
                    sin_zero: [0; 8],
                };
                size_of::<libc::sockaddr_in>()
            }
            AF_INET6 => {
                sa.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: e.port_be,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: e.addr },
                    sin6_scope_id: 0,
                };
                size_of::<libc::sockaddr_in6>()
            }
            _ => return None,
        };
        Some((sa, len as libc::socklen_t))
    }

    /// The datagram source the kernel wrote, as the session table spells addresses.
    /// A family the relay's sockets cannot receive yields an endpoint matching nothing.
    #[inline]
    pub fn endpoint(&self) -> Endpoint {
        // SAFETY: the family field sits at the same offset in both variants, and any
        // bit pattern is a valid value of every field read below.
        unsafe {
            match self.v4.sin_family as libc::c_int {
                libc::AF_INET => {
                    let mut e = Endpoint::v4(self.v4.sin_addr.s_addr.to_ne_bytes(), 0);
                    e.port_be = self.v4.sin_port;
                    e
                }
                libc::AF_INET6 => {
                    let mut e = Endpoint::v6(self.v6.sin6_addr.s6_addr, 0);
                    e.port_be = self.v6.sin6_port;
                    e
                }
                _ => Endpoint::default(),
            }
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed along.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The `*FORCE` variant ignores `net.core.[rw]mem_max` but needs CAP_NET_ADMIN.
fn set_buffer(fd: RawFd, force: libc::c_int, plain: libc::c_int) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER))
}

/// A UDP socket bound to `local` in the calling thread's network namespace, in a
/// `SO_REUSEPORT` group with the other workers' sockets for the same address, so the
/// kernel spreads flows over workers without any userspace dispatch.
pub fn bind_udp(local: &Endpoint) -> io::Result<OwnedFd> {
    let (sa, len) = SockAddr::from_endpoint(local)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown address family"))?;
    let domain = if local.is_v4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = check(unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if domain == libc::AF_INET6 {
        // Matters only for a wildcard `::` in the table: IPv4 datagrams belong to the
        // IPv4 sockets, whose sources compare with the table's IPv4 endpoints.
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)?;
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)?;
    // SAFETY: `sa` is valid for `len` bytes.
    check(unsafe { libc::bind(fd, (&raw const sa).cast(), len) })?;
    Ok(sock)
}

/// Moves the calling thread (only it: setns is per thread) into the namespace at `path`.
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: a valid namespace fd; affects this thread only.
    check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// Waits up to `timeout_ms` for any of `fds` to become readable; EINTR counts as a
/// timeout (the caller loops anyway).
pub fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<()> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of its length.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        r => r.map(drop),
    }
}

/// Header `i` of `hdrs` describes `names[i]` and `iov[i]`. Done right before each
/// syscall, from the exclusive borrows, so the pointers are fresh and the arrays are
/// free to move in between.
fn point(hdrs: &mut [libc::mmsghdr], names: &mut [SockAddr], iov: &mut [libc::iovec]) {
    for ((h, name), iov) in hdrs.iter_mut().zip(names).zip(iov) {
        h.msg_hdr.msg_name = (name as *mut SockAddr).cast();
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
}

fn zeroed_hdrs(n: usize) -> Vec<libc::mmsghdr> {
    // SAFETY: plain integers and pointers, for which all-zero is valid.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

fn empty_iov(n: usize) -> Vec<libc::iovec> {
    (0..n)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect()
}

/// Preallocated `recvmmsg` state for `batch` datagrams of up to `slot` bytes each.
pub struct RecvBatch {
    slot: usize,
    bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    names: Vec<SockAddr>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new(batch: usize, slot: usize) -> Self {
        Self {
            slot,
            bufs: vec![0; batch * slot],
            iov: empty_iov(batch),
            names: vec![SockAddr::zeroed(); batch],
            hdrs: zeroed_hdrs(batch),
        }
    }

    /// Receives up to a batch without blocking; 0 when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for ((iov, buf), h) in self
            .iov
            .iter_mut()
            .zip(self.bufs.chunks_exact_mut(self.slot))
            .zip(&mut self.hdrs)
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            // The kernel shrinks it to the address length it wrote.
            h.msg_hdr.msg_namelen = size_of::<SockAddr>() as libc::socklen_t;
        }
        point(&mut self.hdrs, &mut self.names, &mut self.iov);
        // SAFETY: every header points at live, exclusively borrowed buffers of the
        // sizes it states.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        match check(rc) {
            Ok(n) => Ok(n as usize),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Datagram `i` of the last `recv`: its bytes (`None` if it did not fit a slot)
    /// and its source.
    #[inline]
    pub fn get(&self, i: usize) -> (Option<&[u8]>, &SockAddr) {
        let h = &self.hdrs[i];
        let len = h.msg_len as usize;
        let whole = h.msg_hdr.msg_flags & libc::MSG_TRUNC == 0 && len <= self.slot;
        let bytes = whole.then(|| &self.bufs[i * self.slot..][..len]);
        (bytes, &self.names[i])
    }
}

/// Preallocated `sendmmsg` state for one outgoing socket: up to `batch` datagrams of a
/// [`RecvBatch`], sent from its buffers (no copy), each to its own destination.
pub struct SendBatch {
    len: usize,
    slots: Vec<usize>,
    iov: Vec<libc::iovec>,
    names: Vec<SockAddr>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    pub fn new(batch: usize) -> Self {
        Self {
            len: 0,
            slots: vec![0; batch],
            iov: empty_iov(batch),
            names: vec![SockAddr::zeroed(); batch],
            hdrs: zeroed_hdrs(batch),
        }
    }

    /// Queues datagram `i` of a [`RecvBatch`], unchanged, for `dst`.
    #[inline]
    pub fn push(&mut self, i: usize, dst: &SockAddr, dst_len: libc::socklen_t) {
        self.slots[self.len] = i;
        self.names[self.len] = *dst;
        self.hdrs[self.len].msg_hdr.msg_namelen = dst_len;
        self.len += 1;
    }

    /// Sends everything queued; returns (sent, failed). `sendmmsg` stops at the first
    /// datagram it cannot send, so that one gets one retry; if it fails again, a full
    /// queue (EAGAIN, ENOBUFS) drops the rest of the batch, which would fail the same
    /// way, and any other error (one unreachable destination) drops only that datagram.
    /// The payloads are taken from `rx`, which must be the batch `push` indexed.
    pub fn flush(&mut self, fd: RawFd, rx: &RecvBatch) -> (u64, u64) {
        if self.len == 0 {
            return (0, 0);
        }
        for (iov, &i) in self.iov.iter_mut().zip(&self.slots[..self.len]) {
            let payload = rx.get(i).0.unwrap_or_default();
            iov.iov_base = payload.as_ptr().cast_mut().cast();
            iov.iov_len = payload.len();
        }
        let n = self.len;
        point(
            &mut self.hdrs[..n],
            &mut self.names[..n],
            &mut self.iov[..n],
        );
        let (mut at, mut failed) = (0, 0);
        let mut failed_once = None;
        while at < self.len {
            // SAFETY: headers `at..len` point at addresses in `self` and at payloads
            // in `rx`, both borrowed for this call; the kernel only reads them (and
            // writes `msg_len`, which is ignored).
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[at..].as_mut_ptr(),
                    (self.len - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                at += rc as usize;
                failed_once = Some(at);
            } else if failed_once != Some(at) {
                failed_once = Some(at);
            } else if is_full(&io::Error::last_os_error()) {
                failed += self.len - at;
                at = self.len;
            } else {
                failed += 1;
                at += 1;
            }
        }
        let failed = failed as u64;
        let sent = self.len as u64 - failed;
        self.len = 0;
        (sent, failed)
    }
}

fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}
