//! What the generator needs to know about an interface, asked of the kernel in the
//! caller's network namespace (ioctls and netlink, never sysfs: under
//! `nsenter --net` the `/sys` mount still shows the namespace it was mounted in).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use futures::TryStreamExt as _;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};

use super::BenchError;

/// The index of `iface` in this namespace.
pub fn ifindex(iface: &str) -> Result<u32, BenchError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| BenchError::NoSuchInterface(iface.into()))
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(iface: &str) -> Result<libc::ifreq, BenchError> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(BenchError::NoSuchInterface(iface.into()));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn ioctl(
    iface: &str,
    what: &'static str,
    op: libc::c_ulong,
    req: &mut libc::ifreq,
) -> Result<(), BenchError> {
    let sock = socket().map_err(|cause| BenchError::Io {
        what: "opening a socket for interface ioctls".into(),
        cause,
    })?;
    // SAFETY: `req` is a valid ifreq for `op` and lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), op as _, req as *mut libc::ifreq) } < 0 {
        let cause = io::Error::last_os_error();
        return Err(match cause.raw_os_error() {
            Some(libc::ENODEV) => BenchError::NoSuchInterface(iface.into()),
            _ => BenchError::Io {
                what: format!("reading the {what} of `{iface}`"),
                cause,
            },
        });
    }
    Ok(())
}

/// The MAC address of `iface`.
pub fn mac(iface: &str) -> Result<[u8; 6], BenchError> {
    let mut req = ifreq(iface)?;
    ioctl(iface, "MAC address", libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data) {
        *m = b as u8;
    }
    Ok(mac)
}

/// The MTU of `iface` (the largest IP packet it sends).
pub fn mtu(iface: &str) -> Result<u32, BenchError> {
    let mut req = ifreq(iface)?;
    ioctl(iface, "MTU", libc::SIOCGIFMTU, &mut req)?;
    // SAFETY: SIOCGIFMTU filled the mtu member.
    Ok(unsafe { req.ifr_ifru.ifru_mtu }.max(0) as u32)
}

/// Native-XDP transmit counters of a veth (ethtool `tx_queue_N_xdp_xmit` and
/// `tx_queue_N_xdp_xmit_errors`, summed over queues): frames the device accepted into
/// its peer's receive rings, and frames it refused (ring full, frame too long).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpXmit {
    pub xmit: u64,
    pub errors: u64,
}

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;

fn ethtool(iface: &str, buf: &mut [u64]) -> Result<(), BenchError> {
    let mut req = ifreq(iface)?;
    req.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
    ioctl(iface, "ethtool statistics", libc::SIOCETHTOOL, &mut req)
}

/// The veth XDP transmit counters of `iface`; `None` if it has none (not a veth).
pub fn xdp_xmit(iface: &str) -> Result<Option<XdpXmit>, BenchError> {
    // struct ethtool_sset_info { u32 cmd, reserved; u64 sset_mask; u32 data[1]; }
    let mut info = [0u64; 3];
    info[0] = u64::from(ETHTOOL_GSSET_INFO);
    info[1] = 1 << ETH_SS_STATS;
    if ethtool(iface, &mut info).is_err() || info[1] == 0 {
        return Ok(None);
    }
    let n = (info[2] & 0xffff_ffff) as usize;
    if n == 0 || n > 4096 {
        return Ok(None);
    }
    // struct ethtool_gstrings { u32 cmd, string_set, len; u8 data[]; } (u64 storage
    // keeps the buffer aligned for the ioctl).
    let mut strings = vec![0u64; (12 + n * ETH_GSTRING_LEN).div_ceil(8)];
    strings[0] = u64::from(ETHTOOL_GSTRINGS) | (u64::from(ETH_SS_STATS) << 32);
    strings[1] = n as u64;
    ethtool(iface, &mut strings)?;
    // struct ethtool_stats { u32 cmd, n_stats; u64 data[]; }
    let mut stats = vec![0u64; 1 + n];
    stats[0] = u64::from(ETHTOOL_GSTATS) | ((n as u64) << 32);
    ethtool(iface, &mut stats)?;

    // SAFETY: viewing the u64 buffer as bytes (u8 has no alignment or validity needs).
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(strings.as_ptr().cast(), strings.len() * 8) };
    let mut out = XdpXmit::default();
    let mut found = false;
    for i in 0..n {
        let raw = &bytes[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
        let name = raw.split(|&b| b == 0).next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(b"tx_queue_") else {
            continue;
        };
        let value = stats[1 + i];
        if rest.ends_with(b"_xdp_xmit") {
            out.xmit += value;
            found = true;
        } else if rest.ends_with(b"_xdp_xmit_errors") {
            out.errors += value;
        }
    }
    Ok(found.then_some(out))
}

/// The link-layer address the neighbour table holds for `ip` on interface `ifindex`.
pub fn neighbour_mac(ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>, BenchError> {
    let netlink_err = |e: rtnetlink::Error| BenchError::Io {
        what: "reading the neighbour table".into(),
        cause: io::Error::other(e.to_string()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|cause| BenchError::Io {
            what: "starting a netlink runtime".into(),
            cause,
        })?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|cause| BenchError::Io {
            what: "opening a netlink socket".into(),
            cause,
        })?;
        let driver = tokio::spawn(conn);
        let mut dump = handle.neighbours().get().execute();
        let mut found = None;
        while let Some(msg) = dump.try_next().await.map_err(netlink_err)? {
            if msg.header.ifindex != ifindex {
                continue;
            }
            let mut dst = None;
            let mut lladdr = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(*a));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        dst = Some(IpAddr::V6(*a));
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        lladdr = <[u8; 6]>::try_from(&l[..]).ok();
                    }
                    _ => {}
                }
            }
            if dst == Some(ip) && lladdr.is_some() {
                found = lladdr;
            }
        }
        driver.abort();
        Ok(found)
    })
}

/// `aa:bb:cc:dd:ee:ff`
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (also `-` separated).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "`{s}` is not a MAC address (want aa:bb:cc:dd:ee:ff)"
        ));
    }
    for (m, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!(
                "`{s}` is not a MAC address (want aa:bb:cc:dd:ee:ff)"
            ));
        }
        *m = u8::from_str_radix(p, 16)
            .map_err(|_| format!("`{s}` is not a MAC address (want aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let m = parse_mac("02:00:0a:FF:00:01").unwrap();
        assert_eq!(m, [2, 0, 10, 255, 0, 1]);
        assert_eq!(format_mac(&m), "02:00:0a:ff:00:01");
        assert_eq!(parse_mac("02-00-0a-ff-00-01").unwrap(), m);
        for bad in [
            "",
            "02:00:0a:ff:00",
            "02:00:0a:ff:00:01:02",
            "0g:00:00:00:00:00",
            "2:0:0:0:0:1",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_has_a_zero_mac_and_an_mtu() {
        assert_eq!(mac("lo").unwrap(), [0; 6]);
        assert!(mtu("lo").unwrap() >= 1500);
        assert!(matches!(
            mtu("nosuchif0"),
            Err(BenchError::NoSuchInterface(n)) if n == "nosuchif0"
        ));
        assert_eq!(xdp_xmit("lo").unwrap(), None);
    }
}
