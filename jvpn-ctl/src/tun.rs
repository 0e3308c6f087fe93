//! A Linux TUN device, without a TUN crate: `/dev/net/tun`, `TUNSETIFF` with
//! `IFF_TUN | IFF_NO_PI` (raw IPv4/IPv6 packets, no packet-info prefix), a nonblocking
//! fd driven by tokio's [`AsyncFd`]. [`configure`] assigns the address, sets the MTU and
//! brings the link up over rtnetlink; [`add_route`] adds a route through the device.
//!
//! Role-neutral: the exit and the client agent both use it.
//!
//! Per packet, [`Tun::recv`] / [`Tun::send`] wait for readiness and do one `read` /
//! `write`. For batches (fewer wake-ups: many packets per readiness), wait once with
//! [`Tun::readable`] and drain with [`TunReadable::try_recv`] until it says `None`
//! (the device is empty and its readiness cleared), into a caller-owned buffer:
//!
//! ```ignore
//! let mut ready = tun.readable().await?;
//! for _ in 0..64 {
//!     match ready.try_recv(&mut buf) {
//!         Some(Ok(n)) => handle(&buf[..n]),
//!         Some(Err(e)) => return Err(e),
//!         None => break, // nothing more queued
//!     }
//! }
//! ```
//!
//! and write a batch with [`Tun::try_send`] (no wait; `WouldBlock` only if the
//! kernel's queue is full, then fall back to [`Tun::send`]). A TUN device takes one
//! packet per `read`/`write`; fewer system calls than that need `IFF_VNET_HDR`
//! offloads, which this module does not use yet. The device is not
//! persistent, so the kernel removes it (with its addresses and routes) when the
//! [`Tun`] is dropped or the process exits.

use std::{
    ffi::c_char,
    fs::OpenOptions,
    io,
    net::IpAddr,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
};

use futures::TryStreamExt as _;
use netlink_packet_route::{address::AddressScope, route::RouteScope};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// Default tunnel MTU. A tunnelled packet grows by the outer IPv6 header (40), UDP (8),
/// the jvpn header (20) and the AEAD tag (16): 84 bytes, so 1416 would just fit a
/// 1500-byte path; 1400 leaves a little more for a VLAN tag, PPPoE or an IPv4 options
/// header on the way, so inner packets are never fragmented outside.
pub const DEFAULT_MTU: u32 = 1400;

const TUN_PATH: &str = "/dev/net/tun";

/// Each message carries its cause, so none is also a `source` (that would print it
/// twice in `{:#}` chains).
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("{TUN_PATH} is missing: is the `tun` kernel module loaded? (`modprobe tun`)")]
    DevMissing,
    #[error("opening {TUN_PATH}: {0}")]
    Open(io::Error),
    #[error("invalid TUN device name {0:?}: 1 to 15 bytes, no '/', ':', whitespace or NUL")]
    BadName(String),
    #[error("{what} {name} needs CAP_NET_ADMIN (run as root or grant the capability)")]
    NeedsCapNetAdmin { what: &'static str, name: String },
    #[error("TUN device {0} is busy: another process has it open")]
    Busy(String),
    #[error("a network device named {0} already exists and is not a TUN device")]
    NotTun(String),
    #[error("creating TUN device {name}: {error}")]
    Create { name: String, error: io::Error },
    #[error("no network device named {0}")]
    NoSuchDevice(String),
    #[error("{what} {name}: {error}")]
    Netlink {
        what: &'static str,
        name: String,
        error: rtnetlink::Error,
    },
    #[error("Tun::open must be called inside a tokio runtime")]
    NoRuntime,
    #[error("opening a netlink socket: {0}")]
    NetlinkSocket(io::Error),
    #[error("route {dest}/{prefix_len} via {name}: invalid prefix")]
    BadPrefix {
        name: String,
        dest: IpAddr,
        prefix_len: u8,
    },
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a short) at the
/// start of the 24-byte union.
#[repr(C)]
struct IfReqFlags {
    name: [c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// What the kernel takes as an interface name: 1 to 15 bytes, no '/', ':', NUL or
/// whitespace.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

fn check_name(name: &str) -> Result<(), TunError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(TunError::BadName(name.to_owned()))
    }
}

/// An open TUN device carrying raw IP packets.
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

impl Tun {
    /// Creates (or attaches to an unused) TUN device `name`. Must run inside a tokio
    /// runtime; the device lives in the network namespace of the calling thread.
    pub fn open(name: &str) -> Result<Self, TunError> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TunError::DevMissing,
                io::ErrorKind::PermissionDenied => TunError::NeedsCapNetAdmin {
                    what: "opening /dev/net/tun for",
                    name: name.to_owned(),
                },
                _ => TunError::Open(e),
            })?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its layout and
        // size (40 bytes) and lives for the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => TunError::NeedsCapNetAdmin {
                    what: "creating TUN device",
                    name: name.to_owned(),
                },
                Some(libc::EBUSY) => TunError::Busy(name.to_owned()),
                // The kernel's answer when the name belongs to a device of another kind.
                Some(libc::EINVAL) if ifindex(name).is_ok() => TunError::NotTun(name.to_owned()),
                _ => TunError::Create {
                    name: name.to_owned(),
                    error: e,
                },
            });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TunError::NoRuntime);
        }
        // SAFETY: the OwnedFd is a valid, open descriptor that the AsyncFd owns (and so
        // keeps open and unchanged) for its whole life.
        let fd =
            unsafe { AsyncFd::register(OwnedFd::from(file)) }.map_err(|e| TunError::Create {
                name: name.to_owned(),
                error: e.into_parts().1,
            })?;
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet into `buf`; returns its length (a packet longer than `buf` is
    /// truncated by the kernel, so size `buf` to the MTU or more).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .async_io(tokio::io::Interest::READABLE, |fd| {
                // SAFETY: reads at most buf.len() bytes into buf.
                cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
            })
            .await
    }

    /// Waits until at least one packet can be read; read them with
    /// [`TunReadable::try_recv`].
    pub async fn readable(&self) -> io::Result<TunReadable<'_>> {
        Ok(TunReadable(self.fd.readable().await?))
    }

    /// Writes one IP packet to the kernel without waiting (`WouldBlock` if its queue
    /// is full: then use [`Tun::send`]).
    pub fn try_send(&self, pkt: &[u8]) -> io::Result<usize> {
        // SAFETY: reads pkt.len() bytes from pkt.
        cvt(unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) })
    }

    /// Writes one IP packet to the kernel.
    pub async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        self.fd
            .async_io(tokio::io::Interest::WRITABLE, |fd| {
                // SAFETY: reads pkt.len() bytes from pkt.
                cvt(unsafe { libc::write(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) })
            })
            .await
    }
}

/// A readable TUN device (from [`Tun::readable`]): read packets until none is left.
pub struct TunReadable<'a>(AsyncFdReadyGuard<'a, OwnedFd>);

impl TunReadable<'_> {
    /// Reads one packet into `buf` (truncated to `buf`'s length, as with
    /// [`Tun::recv`]); `None` when no packet is queued (readiness is then cleared, so
    /// the next [`Tun::readable`] waits for a new one).
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        self.0
            .try_io(|fd| {
                // SAFETY: reads at most buf.len() bytes into buf.
                cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
            })
            .ok()
    }
}

fn ifindex(name: &str) -> Result<u32, TunError> {
    check_name(name)?;
    nix::net::if_::if_nametoindex(name).map_err(|_| TunError::NoSuchDevice(name.to_owned()))
}

fn netlink_err(what: &'static str, name: &str, error: rtnetlink::Error) -> TunError {
    if let rtnetlink::Error::NetlinkError(m) = &error
        && m.raw_code().abs() == libc::EPERM
    {
        return TunError::NeedsCapNetAdmin {
            what,
            name: name.to_owned(),
        };
    }
    TunError::Netlink {
        what,
        name: name.to_owned(),
        error,
    }
}

/// A netlink connection in the calling thread's namespace; the driver task ends when
/// the handle is dropped (aborted then too, for certainty).
pub(crate) async fn with_netlink<T, F>(
    f: impl FnOnce(rtnetlink::Handle) -> F,
) -> Result<T, TunError>
where
    F: Future<Output = Result<T, TunError>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().map_err(TunError::NetlinkSocket)?;
    let driver = tokio::spawn(conn);
    let out = f(handle).await;
    driver.abort();
    out
}

/// Gives device `name` the address `addr/prefix_len` (which also installs the
/// connected route for the prefix), sets its MTU and brings it up. Re-running it is
/// harmless (the address is replaced, not duplicated).
pub async fn configure(name: &str, addr: IpAddr, prefix_len: u8, mtu: u32) -> Result<(), TunError> {
    set_mtu(name, mtu).await?;
    add_address(name, addr, prefix_len).await?;
    let index = ifindex(name)?;
    with_netlink(|h| async move {
        h.link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| netlink_err("bringing up", name, e))
    })
    .await
}

/// Removes the global addresses a previous session left on device `name` (its
/// link-local ones stay) and says how many: a new session may be given other ones,
/// and the kernel would go on choosing the old as the source.
pub async fn flush_addresses(name: &str) -> Result<usize, TunError> {
    let index = ifindex(name)?;
    with_netlink(|h| async move {
        let mut dump = h.address().get().set_link_index_filter(index).execute();
        let mut old = Vec::new();
        while let Some(m) = dump
            .try_next()
            .await
            .map_err(|e| netlink_err("listing the addresses of", name, e))?
        {
            if m.header.index == index && m.header.scope == AddressScope::Universe {
                old.push(m);
            }
        }
        let n = old.len();
        for m in old {
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(|e| netlink_err("removing an old address from", name, e))?;
        }
        Ok(n)
    })
    .await
}

/// Gives device `name` the address `addr/prefix_len` (replacing it if present): the
/// second family of a dual-stack tunnel is added this way after [`configure`].
pub async fn add_address(name: &str, addr: IpAddr, prefix_len: u8) -> Result<(), TunError> {
    let index = ifindex(name)?;
    with_netlink(|h| async move {
        h.address()
            .add(index, addr, prefix_len)
            .replace()
            .execute()
            .await
            .map_err(|e| netlink_err("adding an address to", name, e))
    })
    .await
}

/// Sets the MTU of device `name` (the tunnel MTU follows the bound transport's path).
pub async fn set_mtu(name: &str, mtu: u32) -> Result<(), TunError> {
    let index = ifindex(name)?;
    with_netlink(|h| async move {
        h.link()
            .change(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| netlink_err("setting the MTU of", name, e))
    })
    .await
}

/// Routes `dest/prefix_len` through device `name` (like `ip route replace DEST dev
/// NAME`): replaces an existing route for that prefix in the main table.
pub async fn add_route(name: &str, dest: IpAddr, prefix_len: u8) -> Result<(), TunError> {
    let index = ifindex(name)?;
    let route = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest, prefix_len)
        .map_err(|_| TunError::BadPrefix {
            name: name.to_owned(),
            dest,
            prefix_len,
        })?
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    with_netlink(|h| async move {
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| netlink_err("adding a route via", name, e))
    })
    .await
}

/// All-traffic mode's default routes and policy rules through device `name`
/// (`client::fullroute`).
pub async fn route_all(name: &str, v4: bool, v6: bool) -> Result<(), TunError> {
    let index = ifindex(name)?;
    with_netlink(|h| async move { crate::client::fullroute::install(&h, index, v4, v6).await })
        .await
}

/// A `read`/`write` return value as a result (negative: errno).
fn cvt(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("jvpn-exit0").is_ok());
        assert!(check_name("123456789012345").is_ok());
        for bad in ["", "1234567890123456", "a/b", "a b", "a:b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ifreq_layout() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::offset_of!(IfReqFlags, flags), 16);
    }
}
