//! Keys and values of the data-plane maps. The controller is the only writer of
//! `SESSIONS`, `HELLO_CONFIG` and `COOKIE_KEYS`; the XDP program writes only counters
//! and the gate's token buckets (`SESSION_STATS`' control buckets, `HELLO_STATE`,
//! `HELLO_SOURCES`).
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
    /// `NEXT_HOPS` indices of the way to `client` and to `exit` (0: none, the relay
    /// asks the kernel's FIB). Assigned by the data-plane module like `stats_slot`.
    pub client_hop: u16,
    pub exit_hop: u16,
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

/// `SESSION_STATS[entry.stats_slot]`: two cache lines per session, in an `ARRAY` whose
/// values start page-aligned (`BPF_F_MMAPABLE`), so sessions never share a line: the
/// relay's copy of the entry ([`crate::hot`]) and the counters. The
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
    /// The entry's copy ([`crate::hot::Hot`], [`crate::hot::HOT_WORDS`] words), written
    /// by the controller only; the rest of the line is zero.
    pub hot: [u64; 8],
    /// DATA relayed client → exit (packets, UDP payload bytes).
    pub up_packets: u64,
    pub up_bytes: u64,
    /// DATA relayed exit → client.
    pub down_packets: u64,
    pub down_bytes: u64,
    /// DATA for this session from an address that is neither binding nor exit.
    pub stale_drops: u64,
    /// The session's control-message budget (docs/datapath.md, "The HELLO gate and
    /// control budgets"): token buckets in the packed form of
    /// [`crate::bucket::take_packed`], written by the relay without locks. One for
    /// control packets from the binding, one for those from any other address.
    pub ctl_binding: u64,
    pub ctl_other: u64,
    pub _pad: u64,
}

const _: () = assert!(core::mem::size_of::<SessionStats>() == 128);

/// `HELLO_CONFIG[0]`: the gate's settings, written by the controller
/// (docs/datapath.md, "The HELLO gate and control budgets"). All zero (a map no
/// controller wrote, e.g. an older one) disables the gate and the control budgets:
/// HELLOs and control messages are passed as before. A rate or burst of 0 leaves that
/// bucket unenforced. Rates are per second, bursts in packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloConfig {
    /// Nonzero: the gate and the control budgets are on.
    pub enabled: u32,
    /// The current cookie sequence number; its key is `COOKIE_KEYS[seq & 1]`, and
    /// cookies of `seq - 1` (the other slot) are still accepted.
    pub cookie_seq: u32,
    /// HELLOs handed to the controller, all sources together.
    pub hello_budget_pps: u32,
    pub hello_budget_burst: u32,
    /// HELLOs with a valid cookie per source prefix (IPv4 /32, IPv6 /64), under load.
    pub hello_per_source_pps: u32,
    pub hello_per_source_burst: u32,
    /// Control messages of one session from its binding.
    pub control_binding_pps: u32,
    pub control_binding_burst: u32,
    /// Control messages of one session from any other address.
    pub control_other_pps: u32,
    pub control_other_burst: u32,
    /// How long the gateway stays under load after the budget was last seen below
    /// half its burst.
    pub load_hold_ms: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<HelloConfig>() == 48);

/// `COOKIE_KEYS[slot]`: a 16-byte SipHash key as its two little-endian words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CookieKey {
    pub k0: u64,
    pub k1: u64,
}

const _: () = assert!(core::mem::size_of::<CookieKey>() == 16);

impl CookieKey {
    pub const fn from_bytes(key: &[u8; 16]) -> Self {
        let (k0, k1) = crate::siphash::key_words(key);
        Self { k0, k1 }
    }

    pub const fn is_zero(&self) -> bool {
        self.k0 == 0 && self.k1 == 0
    }
}

/// `HELLO_STATE[0]`: the global HELLO budget, written by the XDP program only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloState {
    /// Milli-tokens left at `last_ms` ([`crate::bucket`]).
    pub tokens: u64,
    /// `CLOCK_MONOTONIC` milliseconds of the last token taken (0: never: full).
    pub last_ms: u64,
    /// The gateway is under load until this instant (same clock).
    pub loaded_until_ms: u64,
    pub _pad: u64,
}

const _: () = assert!(core::mem::size_of::<HelloState>() == 32);

/// Capacity of `HELLO_SOURCES` (an LRU hash: the least recently seen prefix makes
/// room, and comes back with a full bucket).
pub const HELLO_SOURCES_MAX: u32 = 65_536;

/// `HELLO_SOURCES` key: a source prefix, IPv4 /32 or IPv6 /64, and its family. The
/// prefix is the address's first 16 bytes as two native-endian words, the bits past the
/// prefix zero. The value is a packed bucket (`u64`, [`crate::bucket::take_packed`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub hi: u64,
    pub lo: u64,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SourceKey>() == 24);

impl SourceKey {
    /// The prefix `addr` (as in [`Endpoint::addr`]) belongs to. Word-based: no array
    /// to zero, which BPF would do with a `memset` call.
    #[inline(always)]
    pub const fn of(addr: &[u8; 16], family: u8) -> Self {
        let a = addr;
        let hi = if family == AF_INET6 {
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]])
        } else {
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]) as u64
        };
        Self {
            hi,
            lo: 0,
            family: family as u32,
            _pad: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::SessionEntry {}
    unsafe impl aya::Pod for super::SessionStats {}
    unsafe impl aya::Pod for super::HelloConfig {}
    unsafe impl aya::Pod for super::CookieKey {}
    unsafe impl aya::Pod for super::HelloState {}
    unsafe impl aya::Pod for super::SourceKey {}
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

    #[test]
    fn source_prefixes() {
        let v4 = Endpoint::v4([10, 1, 2, 3], 9);
        let mut other = v4;
        other.addr[3] = 4;
        assert_ne!(
            SourceKey::of(&v4.addr, AF_INET),
            SourceKey::of(&other.addr, AF_INET),
            "IPv4: /32"
        );
        let a: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let mut b = a;
        b[8..].fill(0xee);
        let k = SourceKey::of(&a, AF_INET6);
        assert_eq!(k, SourceKey::of(&b, AF_INET6), "IPv6: /64");
        b[7] ^= 1;
        assert_ne!(k, SourceKey::of(&b, AF_INET6));
        assert_ne!(k, SourceKey::of(&a, AF_INET), "the family counts");
        assert_eq!(k.family, u32::from(AF_INET6));
    }
}
