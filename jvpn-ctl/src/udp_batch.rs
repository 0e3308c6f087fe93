//! Batched UDP socket I/O with caller-owned buffers: many datagrams per system call
//! (`recvmmsg` / `sendmmsg`), optionally coalesced into UDP GSO sends
//! (`UDP_SEGMENT`), and no allocation per packet.
//!
//! * [`RecvBatch`]: `slots` receive buffers of `slot_size` bytes, allocated once.
//!   [`RecvBatch::recv`] fills as many as the socket has queued with one `recvmmsg`
//!   (nonblocking); [`RecvBatch::get_mut`] gives each datagram (mutable, so it can be
//!   decrypted in place) and its source.
//! * [`SendBatch`]: outgoing datagrams, each a `Vec<u8>` slot that keeps its capacity
//!   from one batch to the next. Fill one with [`SendBatch::slot`] (write into the
//!   cleared `Vec`, then [`SendBatch::commit`] it with its destination), or hand a
//!   filled `Vec` over with [`SendBatch::push_swap`] (zero copy: the slot's old `Vec`
//!   comes back in exchange). [`SendBatch::send`] sends everything queued with as few
//!   `sendmmsg` calls as the socket allows, reporting every datagram's outcome.
//!
//! From tokio: both take a raw descriptor and never block; pair them with the
//! socket's readiness, e.g. `sock.async_io(Interest::READABLE, || batch.recv(fd))`,
//! or [`recv_batch`] / [`send_batch`], which do exactly that for a
//! [`tokio::net::UdpSocket`]. The same works with `AsyncFd` around any UDP socket.
//!
//! GSO ([`SendBatch::set_gso`]): runs of consecutive datagrams to the same
//! destination with the same length (the run's last may be shorter) leave as one
//! `sendmmsg` entry with a `UDP_SEGMENT` control message; the kernel splits them into
//! ordinary datagrams (before any veth or XDP on the way, where the device does not
//! take GSO), so receivers see exactly what individual sends would have produced. If
//! the kernel refuses GSO, the batch turns it off and sends one datagram per entry.
//!
//! [`set_buffers`] sizes a socket's kernel buffers (`SO_RCVBUFFORCE` /
//! `SO_SNDBUFFORCE` where permitted, else up to the `rmem_max` / `wmem_max` limits).

use std::{
    io,
    mem::{self, MaybeUninit},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, RawFd},
    ptr,
};

/// `SOL_UDP` / `UDP_SEGMENT` (linux/udp.h; not in the libc crate).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// The kernel's limit on segments in one GSO send (UDP_MAX_SEGMENTS).
const MAX_SEGMENTS: usize = 64;
/// The largest UDP payload one send may carry (65535 − IPv6/UDP headers, rounded down).
const MAX_GSO_BYTES: usize = 65000;
/// `sendmmsg`/`recvmmsg` take at most UIO_MAXIOV entries per call.
const MAX_VLEN: usize = 1024;

fn sockaddr_from(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn sockaddr_to(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET if len as usize >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (family and length say so).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structs (msghdr, mmsghdr, iovec, sockaddr_storage)
    // for which all-zero bytes are a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// Receive buffers for up to `slots` datagrams per call, allocated once.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    froms: Vec<Option<SocketAddr>>,
    truncated: Vec<bool>,
    count: usize,
    // Scratch for the system call; the pointers in `hdrs` are refilled on each call.
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
}

impl RecvBatch {
    /// `slots` datagrams of up to `slot_size` bytes each (a longer one is truncated,
    /// see [`RecvBatch::truncated`]).
    pub fn new(slots: usize, slot_size: usize) -> Self {
        let slots = slots.clamp(1, MAX_VLEN);
        RecvBatch {
            bufs: (0..slots)
                .map(|_| vec![0u8; slot_size].into_boxed_slice())
                .collect(),
            lens: vec![0; slots],
            froms: vec![None; slots],
            truncated: vec![false; slots],
            count: 0,
            hdrs: (0..slots).map(|_| zeroed()).collect(),
            iovs: (0..slots).map(|_| zeroed()).collect(),
            names: (0..slots).map(|_| zeroed()).collect(),
        }
    }

    /// How many datagrams one call may return.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// One nonblocking `recvmmsg` on `fd`: replaces the batch's contents with the
    /// datagrams queued (at least one), returning how many. `WouldBlock` when none is.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        for i in 0..self.bufs.len() {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.hdrs[i];
            *h = zeroed();
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at this batch's own iovec, buffer and name,
        // which outlive the call and are not otherwise borrowed during it.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            self.lens[i] = (h.msg_len as usize).min(self.bufs[i].len());
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.froms[i] = sockaddr_to(&self.names[i], h.msg_hdr.msg_namelen);
        }
        self.count = n;
        Ok(n)
    }

    /// Datagrams held (from the last [`RecvBatch::recv`]).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` (< [`RecvBatch::len`]) and its source (`None` only for an address
    /// family other than IPv4/IPv6, which a UDP socket never reports).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        assert!(i < self.count, "datagram {i} of {}", self.count);
        (&self.bufs[i][..self.lens[i]], self.froms[i])
    }

    /// Datagram `i`, mutable (to decrypt in place), and its source.
    pub fn get_mut(&mut self, i: usize) -> (&mut [u8], Option<SocketAddr>) {
        assert!(i < self.count, "datagram {i} of {}", self.count);
        (&mut self.bufs[i][..self.lens[i]], self.froms[i])
    }

    /// Datagram `i` was longer than its slot (only its first `slot_size` bytes are here).
    pub fn truncated(&self, i: usize) -> bool {
        i < self.count && self.truncated[i]
    }
}

/// Outgoing datagrams: slots whose `Vec`s keep their capacity between batches.
pub struct SendBatch {
    slots: Vec<Vec<u8>>,
    to: Vec<SocketAddr>,
    /// Committed datagrams (`slots[..len]`); `slots[sent..len]` still to send.
    len: usize,
    sent: usize,
    nominal: usize,
    slot_capacity: usize,
    gso: bool,
    // Scratch for the system call (refilled on each).
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
    /// Datagrams in each entry of the last call.
    runs: Vec<usize>,
}

/// Room for one `cmsghdr` with a u16 (`UDP_SEGMENT`), aligned like a `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 32]);

impl SendBatch {
    /// `slots` datagrams per batch (the nominal size: [`SendBatch::is_full`]), each
    /// slot preallocated to `slot_capacity` bytes. More may be committed: the batch
    /// grows (allocating once) and keeps the extra slots.
    pub fn new(slots: usize, slot_capacity: usize) -> Self {
        let slots = slots.clamp(1, MAX_VLEN);
        let mut b = SendBatch {
            slots: Vec::new(),
            to: Vec::new(),
            len: 0,
            sent: 0,
            nominal: slots,
            slot_capacity,
            gso: false,
            hdrs: Vec::new(),
            iovs: Vec::new(),
            names: Vec::new(),
            cmsgs: Vec::new(),
            runs: Vec::new(),
        };
        b.grow(slots);
        b
    }

    fn grow(&mut self, n: usize) {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        while self.slots.len() < n {
            self.slots.push(Vec::with_capacity(self.slot_capacity));
            self.to.push(unspecified);
            self.hdrs.push(zeroed());
            self.iovs.push(zeroed());
            self.names.push(zeroed());
            self.cmsgs.push(Cmsg([0; 32]));
            self.runs.push(0);
        }
    }

    /// Coalesce runs of equal-sized datagrams to one destination into UDP GSO sends.
    pub fn set_gso(&mut self, on: bool) {
        self.gso = on;
    }

    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Datagrams committed and not yet sent.
    pub fn len(&self) -> usize {
        self.len - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len == self.sent
    }

    /// The nominal batch size is reached: time to [`SendBatch::send`].
    pub fn is_full(&self) -> bool {
        self.len >= self.nominal
    }

    /// The next free slot, cleared: write a datagram into it, then
    /// [`SendBatch::commit`] it (or leave it, and the next call hands it out again).
    pub fn slot(&mut self) -> &mut Vec<u8> {
        self.reset_if_done();
        self.grow(self.len + 1);
        let s = &mut self.slots[self.len];
        s.clear();
        s
    }

    /// Exchanges the free slot's contents, as written (not cleared, unlike
    /// [`SendBatch::slot`]), with `other`: for something written into the slot that
    /// turned out not to be a datagram (an ICMP answer for the TUN).
    pub fn swap_slot(&mut self, other: &mut Vec<u8>) {
        self.grow(self.len + 1);
        mem::swap(&mut self.slots[self.len], other);
    }

    /// Queues the datagram written into [`SendBatch::slot`], for `to`.
    pub fn commit(&mut self, to: SocketAddr) {
        self.grow(self.len + 1);
        self.to[self.len] = to;
        self.len += 1;
    }

    /// Queues `pkt` (copied) for `to`.
    pub fn push(&mut self, pkt: &[u8], to: SocketAddr) {
        self.slot().extend_from_slice(pkt);
        self.commit(to);
    }

    /// Queues the datagram in `pkt` for `to` without copying: `pkt` is swapped with
    /// the free slot's (cleared) `Vec`, so the caller keeps a buffer to reuse.
    pub fn push_swap(&mut self, pkt: &mut Vec<u8>, to: SocketAddr) {
        mem::swap(self.slot(), pkt);
        pkt.clear();
        self.commit(to);
    }

    /// Drops everything queued (not sent).
    pub fn clear(&mut self) {
        self.len = 0;
        self.sent = 0;
    }

    fn reset_if_done(&mut self) {
        if self.sent == self.len {
            self.len = 0;
            self.sent = 0;
        }
    }

    /// Fills the call's entries from `slots[sent..len]`; returns how many entries.
    fn prepare(&mut self) -> usize {
        let mut entries = 0;
        let mut i = self.sent;
        while i < self.len && entries < MAX_VLEN {
            // A GSO run: same destination, same length; the last may be shorter.
            let size = self.slots[i].len();
            let mut run = 1;
            if self.gso && size > 0 {
                let mut total = size;
                while i + run < self.len
                    && run < MAX_SEGMENTS
                    && self.to[i + run] == self.to[i]
                    && total + self.slots[i + run].len() <= MAX_GSO_BYTES
                {
                    let next = self.slots[i + run].len();
                    if next > size || next == 0 {
                        break;
                    }
                    total += next;
                    run += 1;
                    if next < size {
                        break;
                    }
                }
            }
            for k in 0..run {
                self.iovs[i + k] = libc::iovec {
                    iov_base: self.slots[i + k].as_mut_ptr().cast(),
                    iov_len: self.slots[i + k].len(),
                };
            }
            let namelen = sockaddr_from(&self.to[i], &mut self.names[entries]);
            let h = &mut self.hdrs[entries];
            *h = zeroed();
            h.msg_hdr.msg_name = (&mut self.names[entries] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = run as _;
            if run > 1 {
                let c = &mut self.cmsgs[entries];
                // SAFETY: the buffer is aligned for and larger than CMSG_SPACE(2)
                // (24 bytes); CMSG_FIRSTHDR of a msghdr over it points at its start.
                unsafe {
                    let space = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize;
                    h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
                    h.msg_hdr.msg_controllen = space as _;
                    let cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*cm).cmsg_level = SOL_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                    ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), size as u16);
                }
            }
            self.runs[entries] = run;
            entries += 1;
            i += run;
        }
        entries
    }

    /// Sends what is queued on `fd` (nonblocking), calling `done(datagram, result)`
    /// for each datagram whose fate is known: sent, or failed with its error (a failed
    /// datagram is not retried). Returns `Ok(())` when the batch is empty, or
    /// `WouldBlock` with the rest still queued (call again when writable).
    pub fn send(
        &mut self,
        fd: RawFd,
        mut done: impl FnMut(&[u8], io::Result<()>),
    ) -> io::Result<()> {
        while self.sent < self.len {
            let entries = self.prepare();
            // SAFETY: every entry points at this batch's own names, iovecs (which
            // point at the slots' initialized bytes) and control buffers, all alive
            // and unaliased for the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    entries as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    return Err(e);
                }
                let run = self.runs[0];
                if run > 1
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                    )
                {
                    // This kernel or path takes no GSO: send datagram by datagram.
                    tracing::debug!(error = %e, "UDP GSO refused; sending without it");
                    self.gso = false;
                    continue;
                }
                // The first entry failed: each of its datagrams failed likewise.
                for k in 0..run {
                    let err = io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO));
                    done(&self.slots[self.sent + k], Err(err));
                }
                self.sent += run;
                continue;
            }
            for e in 0..n as usize {
                for _ in 0..self.runs[e] {
                    done(&self.slots[self.sent], Ok(()));
                    self.sent += 1;
                }
            }
        }
        self.reset_if_done();
        Ok(())
    }
}

/// Waits until `sock` is readable and fills `batch` with one `recvmmsg`.
pub async fn recv_batch(sock: &tokio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    sock.async_io(tokio::io::Interest::READABLE, || batch.recv(fd))
        .await
}

/// Sends all of `batch` on `sock`, waiting for writability as needed; `done` as in
/// [`SendBatch::send`].
pub async fn send_batch(
    sock: &tokio::net::UdpSocket,
    batch: &mut SendBatch,
    mut done: impl FnMut(&[u8], io::Result<()>),
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    sock.async_io(tokio::io::Interest::WRITABLE, || batch.send(fd, &mut done))
        .await
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option; pointer and length match.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above, for reading.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for `rcv` / `snd` bytes of kernel buffer on `fd` (the forcing options first,
/// which CAP_NET_ADMIN allows beyond `rmem_max`/`wmem_max`, then the plain ones,
/// which the kernel caps there). Returns what the kernel granted (it reports twice
/// the request, its bookkeeping overhead included).
pub fn set_buffers(fd: RawFd, rcv: usize, snd: usize) -> io::Result<(usize, usize)> {
    let (rcv, snd) = (
        rcv.min(i32::MAX as usize) as i32,
        snd.min(i32::MAX as usize) as i32,
    );
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcv)?;
    }
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, snd).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, snd)?;
    }
    Ok((
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)? as usize,
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)? as usize,
    ))
}

/// Whether `fd` is a UDP socket the kernel lets send GSO (`UDP_SEGMENT` settable).
/// The option set here is 0 (off by default; each send carries its own size).
pub fn gso_supported(fd: RawFd) -> bool {
    setsockopt_int(fd, SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    fn pair(v6: bool) -> (UdpSocket, UdpSocket) {
        let lo = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
        let a = UdpSocket::bind(lo).unwrap();
        let b = UdpSocket::bind(lo).unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn recv_all(b: &UdpSocket, batch: &mut RecvBatch, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < want {
            match batch.recv(b.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (d, from) = batch.get(i);
                        got.push((d.to_vec(), from.unwrap()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "only {} of {want}",
                        got.len()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    fn sends(gso: bool, v6: bool) {
        let (a, b) = pair(v6);
        let (to, from) = (b.local_addr().unwrap(), a.local_addr().unwrap());
        let mut out = SendBatch::new(8, 2048);
        out.set_gso(gso && gso_supported(a.as_raw_fd()));
        // Equal sizes (one GSO run, its last shorter), then different ones.
        let pkts: Vec<Vec<u8>> = (0..20u8)
            .map(|i| {
                let len = match i {
                    0..=9 => 1200,
                    10 => 700,
                    _ => 100 + usize::from(i) * 13,
                };
                vec![i; len]
            })
            .collect();
        for p in &pkts {
            if p[0] % 2 == 0 {
                out.push(p, to);
            } else {
                let mut v = p.clone();
                out.push_swap(&mut v, to);
                assert!(v.is_empty());
            }
        }
        assert!(out.is_full());
        assert_eq!(out.len(), 20);
        let mut ok = 0;
        out.send(a.as_raw_fd(), |d, r| {
            assert!(r.is_ok());
            assert_eq!(d, &pkts[ok][..]);
            ok += 1;
        })
        .unwrap();
        assert_eq!(ok, 20);
        assert!(out.is_empty());

        let mut batch = RecvBatch::new(4, 65536);
        let got = recv_all(&b, &mut batch, 20);
        assert_eq!(got.len(), 20);
        for (i, (d, src)) in got.into_iter().enumerate() {
            assert_eq!(d, pkts[i], "datagram {i}");
            assert_eq!(src, from);
        }
        // Nothing more queued.
        assert_eq!(
            batch.recv(b.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn send_and_receive_batches_v4() {
        sends(false, false);
    }

    #[test]
    fn send_and_receive_batches_v6() {
        sends(false, true);
    }

    #[test]
    fn gso_runs_arrive_as_separate_datagrams() {
        sends(true, false);
        sends(true, true);
    }

    /// A datagram longer than its slot is truncated and says so.
    #[test]
    fn truncation_is_reported() {
        let (a, b) = pair(false);
        a.send_to(&[1u8; 100], b.local_addr().unwrap()).unwrap();
        a.send_to(&[2u8; 10], b.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(4, 50);
        let got = recv_all(&b, &mut batch, 2);
        assert_eq!(got[0].0, vec![1u8; 50]);
        assert_eq!(got[1].0, vec![2u8; 10]);
        // The last batch held the second one (or both); check the flags of what it holds.
        let last = batch.len() - 1;
        assert!(!batch.truncated(last));
        if batch.len() == 2 {
            assert!(batch.truncated(0));
        }
    }

    /// A failed datagram (no route: EMSGSIZE here, from DF and a too-large payload) is
    /// reported as failed and the rest are still sent.
    #[test]
    fn a_failed_datagram_does_not_stop_the_batch() {
        let (a, b) = pair(false);
        crate::sockopt::dont_fragment(a.as_raw_fd(), false).unwrap();
        let to = b.local_addr().unwrap();
        let mut out = SendBatch::new(4, 100);
        out.push(b"one", to);
        out.push(&vec![0u8; 70000], to); // larger than any UDP datagram
        out.push(b"three", to);
        let mut results = Vec::new();
        out.send(a.as_raw_fd(), |d, r| results.push((d.len(), r.is_ok())))
            .unwrap();
        assert_eq!(results, vec![(3, true), (70000, false), (5, true)]);
        let mut batch = RecvBatch::new(4, 2048);
        let got = recv_all(&b, &mut batch, 2);
        assert_eq!((&got[0].0[..], &got[1].0[..]), (&b"one"[..], &b"three"[..]));
    }

    #[test]
    fn buffers_are_enlarged() {
        let (a, _) = pair(false);
        let (r, s) = set_buffers(a.as_raw_fd(), 1 << 20, 1 << 20).unwrap();
        // Root gets what it asks for (doubled); others at least the default.
        assert!(r >= 200_000 && s >= 200_000, "{r} {s}");
    }

    #[tokio::test]
    async fn tokio_readiness() {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = b.local_addr().unwrap();
        let mut out = SendBatch::new(4, 64);
        for i in 0..3u8 {
            out.push(&[i; 5], to);
        }
        let mut n = 0;
        send_batch(&a, &mut out, |_, r| {
            r.unwrap();
            n += 1;
        })
        .await
        .unwrap();
        assert_eq!(n, 3);
        let mut batch = RecvBatch::new(8, 64);
        let mut got = 0;
        while got < 3 {
            got += recv_batch(&b, &mut batch).await.unwrap();
        }
        assert_eq!(batch.get(batch.len() - 1).0, &[2u8; 5]);
    }

    /// What was written into the free slot comes out whole (the exit's ICMP answers
    /// were lost when a second `slot()` cleared them).
    #[test]
    fn swap_slot_keeps_what_was_written() {
        let mut tx = SendBatch::new(4, 64);
        tx.slot().extend_from_slice(b"icmp");
        let mut other = vec![1, 2, 3];
        tx.swap_slot(&mut other);
        assert_eq!(other, b"icmp");
        assert!(tx.is_empty(), "nothing queued");
        assert!(tx.slot().is_empty(), "the slot is handed out cleared again");
    }
}
