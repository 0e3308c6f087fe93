//! Keys and values of the data-plane maps. The controller is their only writer.
//!
//! Layout rules: `#[repr(C)]`, integers only (no `bool`, no enums), every padding
//! byte an explicit field that writers zero, and a size assertion per type, so the
//! kernel and userspace can never disagree on a layout.

/// Address family codes in [`Endpoint::family`].
pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// Bit in [`SessionEntry::flags`]: relay DATA for this session. Without it every DATA
/// packet of the session is dropped as `not_forwarding` (e.g. while it is being torn
/// down), control packets still reach the controller.
pub const FLAG_FORWARDING: u32 = 1;

/// One side of a UDP flow: an IPv4 or IPv6 address and a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IPv6 address, or the IPv4 address in the first 4 bytes with the rest zero.
    pub addr: [u8; 16],
    /// UDP port in network byte order (compared with packet bytes without a swap).
    pub port_be: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 24);

impl From<core::net::SocketAddr> for Endpoint {
    fn from(a: core::net::SocketAddr) -> Self {
        Self::from_ip(a.ip(), a.port())
    }
}

impl Endpoint {
    pub const fn v4(addr: [u8; 4], port: u16) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
            port_be: port.to_be(),
            family: AF_INET,
            _pad: [0; 5],
        }
    }

    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port_be: port.to_be(),
            family: AF_INET6,
            _pad: [0; 5],
        }
    }

    pub const fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }

    pub const fn from_ip(ip: core::net::IpAddr, port: u16) -> Self {
        match ip {
            core::net::IpAddr::V4(a) => Self::v4(a.octets(), port),
            core::net::IpAddr::V6(a) => Self::v6(a.octets(), port),
        }
    }

    pub const fn is_v4(&self) -> bool {
        self.family == AF_INET
    }

    /// The reverse of `Endpoint::from(SocketAddr)`; `None` for a family that is
    /// neither [`AF_INET`] nor [`AF_INET6`] (a map value nobody should have written).
    pub const fn socket_addr(&self) -> Option<core::net::SocketAddr> {
        let a = &self.addr;
        let ip = match self.family {
            AF_INET => core::net::IpAddr::V4(core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            AF_INET6 => core::net::IpAddr::V6(core::net::Ipv6Addr::from_octets(*a)),
            _ => return None,
        };
        Some(core::net::SocketAddr::new(ip, self.port()))
    }

    pub const fn is_valid(&self) -> bool {
        let v4_tail_zero = {
            let mut i = 4;
            let mut zero = true;
            while i < 16 {
                zero &= self.addr[i] == 0;
                i += 1;
            }
            zero
        };
        self.port_be != 0 && ((self.family == AF_INET && v4_tail_zero) || self.family == AF_INET6)
    }
}

/// `SESSIONS` value: everything the relay needs to steer one session.
///
/// Replacing a whole entry with one `BPF_EXIST` update is the atomic binding swap:
/// HASH map updates are a pointer swap for concurrent readers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionEntry {
    /// Bumped by the controller on every binding change; read back after a swap.
    pub generation: u32,
    /// [`FLAG_FORWARDING`].
    pub flags: u32,
    /// The client's current binding (its outer address as seen by the gateway).
    pub client: Endpoint,
    /// The gateway's own address the client sends to: source of packets to the client.
    pub gw_client: Endpoint,
    /// The exit node.
    pub exit: Endpoint,
    /// The gateway's own address toward the exit: source of packets to the exit.
    pub gw_exit: Endpoint,
    /// The session's index in `SESSION_STATS`. The controller's data-plane module
    /// assigns it; whatever a caller puts here is overwritten.
    pub stats_slot: u32,
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<SessionEntry>() == 112);

impl SessionEntry {
    pub const fn forwarding(&self) -> bool {
        self.flags & FLAG_FORWARDING != 0
    }

    /// A binding and the gateway address it talks to must share a family, as must the
    /// exit and the gateway's exit-side address; ports must be set.
    pub const fn is_valid(&self) -> bool {
        self.client.is_valid()
            && self.gw_client.is_valid()
            && self.exit.is_valid()
            && self.gw_exit.is_valid()
            && self.client.family == self.gw_client.family
            && self.exit.family == self.gw_exit.family
    }
}

/// `SESSION_STATS[entry.stats_slot]`: one cache line per session, in an `ARRAY` whose
/// values start page-aligned (`BPF_F_MMAPABLE`), so sessions never share a line. The
/// relay adds with atomic instructions. Each direction of a session is one flow and
/// normally one CPU; when the two directions are handled on two CPUs at once, the
/// line moves between them, the price of not keeping a copy per CPU (docs/datapath.md).
/// Kept apart from `SESSIONS` so that a
/// binding swap never resets counters. No last-seen time: the controller sees
/// liveness as packet counts moving between its polls, and a clock read per packet
/// cost the relay about 8 % of its time (docs/datapath.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// DATA relayed client → exit (packets, UDP payload bytes).
    pub up_packets: u64,
    pub up_bytes: u64,
    /// DATA relayed exit → client.
    pub down_packets: u64,
    pub down_bytes: u64,
    /// DATA for this session from an address that is neither binding nor exit.
    pub stale_drops: u64,
    pub _pad: [u64; 3],
}

const _: () = assert!(core::mem::size_of::<SessionStats>() == 64);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::SessionEntry {}
    unsafe impl aya::Pod for super::SessionStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_validity() {
        assert!(Endpoint::v4([10, 0, 0, 1], 5).is_valid());
        assert!(!Endpoint::v4([10, 0, 0, 1], 0).is_valid());
        let mut e = Endpoint::v4([10, 0, 0, 1], 5);
        e.addr[7] = 1;
        assert!(!e.is_valid());
        assert!(Endpoint::v6([0xfd; 16], 5).is_valid());
        assert!(!Endpoint::default().is_valid());
        assert_eq!(
            Endpoint::v4([1, 2, 3, 4], 0x1234).port_be.to_ne_bytes(),
            [0x12, 0x34]
        );
    }

    #[test]
    fn socket_addr_round_trips() {
        for s in ["10.1.2.3:51820", "[fd00::1]:40000", "[::ffff:10.0.0.1]:7"] {
            let a: core::net::SocketAddr = s.parse().unwrap();
            assert_eq!(Endpoint::from(a).socket_addr(), Some(a), "{s}");
        }
        let mut e = Endpoint::v4([10, 0, 0, 1], 5);
        e.family = 0;
        assert_eq!(e.socket_addr(), None);
    }

    #[test]
    fn entry_families_must_pair() {
        let mut e = SessionEntry {
            generation: 1,
            flags: FLAG_FORWARDING,
            client: Endpoint::v6([0xfd; 16], 1000),
            gw_client: Endpoint::v6([0xfe; 16], 51820),
            exit: Endpoint::v4([10, 0, 0, 2], 51821),
            gw_exit: Endpoint::v4([10, 0, 0, 1], 51820),
            ..Default::default()
        };
        assert!(e.is_valid());
        assert!(e.forwarding());
        e.gw_client = Endpoint::v4([10, 0, 0, 1], 51820);
        assert!(!e.is_valid());
    }
}
