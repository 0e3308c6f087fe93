//! Outer protocol headers as they lie in a frame. All have alignment 1 so they can be
//! overlaid on packet memory at any offset after one bounds check ([`crate::frame`]).

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_UDP: u8 = 17;

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const UDP_LEN: usize = 8;

/// TTL / hop limit of relayed packets: the gateway terminates the outer flow like a
/// UDP proxy would, so it starts a fresh one rather than decrementing the client's.
pub const RELAY_TTL: u8 = 64;

/// Marks a type as a byte-exact, alignment-1 view of wire bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1, no padding, and accept any
/// bit pattern.
pub unsafe trait Wire: Copy {
    /// The bytes as they go on the wire.
    #[inline(always)]
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Wire` types are plain bytes without padding (trait contract).
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast(), core::mem::size_of::<Self>())
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// What the relay writes in front of the UDP payload when the next hop is IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterV4 {
    pub eth: EthHdr,
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
}

/// What the relay writes in front of the UDP payload when the next hop is IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterV6 {
    pub eth: EthHdr,
    pub ip: Ipv6Hdr,
    pub udp: UdpHdr,
}

// SAFETY: byte arrays: alignment 1, no padding, any bit pattern.
unsafe impl<const N: usize> Wire for [u8; N] {}

macro_rules! wire {
    ($($t:ty = $n:expr),* $(,)?) => {$(
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
        const _: () = assert!(core::mem::align_of::<$t>() == 1);
        // SAFETY: repr(C), byte arrays and u8 only (checked size and alignment above).
        unsafe impl Wire for $t {}
    )*};
}

wire!(
    EthHdr = ETH_LEN,
    VlanHdr = VLAN_LEN,
    Ipv4Hdr = IPV4_LEN,
    Ipv6Hdr = IPV6_LEN,
    UdpHdr = UDP_LEN,
    OuterV4 = ETH_LEN + IPV4_LEN + UDP_LEN,
    OuterV6 = ETH_LEN + IPV6_LEN + UDP_LEN,
    crate::wire::WireHeader = crate::wire::HEADER_LEN,
    crate::cookie::HelloV4 = IPV4_LEN + UDP_LEN + crate::wire::HELLO_LEN,
    crate::cookie::HelloV6 = IPV6_LEN + UDP_LEN + crate::wire::HELLO_LEN,
);
