//! Map layouts of the benchmark programs: the traffic generator `jvpn_pktgen` (run
//! with `BPF_PROG_TEST_RUN` in live-frames mode) and the counting sink `xdp_sink`
//! (docs/bench.md). Same layout rules as [`crate::maps`]: `#[repr(C)]`, integers only,
//! explicit padding, a size assertion per type.

use crate::{
    headers::{ETH_LEN, IPV4_LEN, IPV6_LEN, UDP_LEN},
    maps::AF_INET6,
};

/// `PKTGEN_CONFIG[0]`: what the generator stamps into every frame. Written once by
/// userspace before the first run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktgenConfig {
    /// Session id of the first session; frames cycle through
    /// `first_id .. first_id + n_sessions`.
    pub first_id: u64,
    /// How many sessions (at least 1).
    pub n_sessions: u64,
    /// [`crate::maps::AF_INET`] or [`AF_INET6`]: where the UDP header is.
    pub family: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<PktgenConfig>() == 24);

/// `PKTGEN_STATE[0]`, one per CPU: the generator's progress on that CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktgenState {
    /// Frames the program stamped and handed back with `XDP_TX`.
    pub sent: u64,
    /// Index (from `first_id`) of the session the next frame gets.
    pub next: u64,
    /// Runs that found no usable frame or configuration (`XDP_ABORTED`); 0 unless the
    /// frame or the configuration is broken.
    pub errors: u64,
}

const _: () = assert!(core::mem::size_of::<PktgenState>() == 24);

impl PktgenConfig {
    /// Offset of the UDP header in the generator's frames (untagged Ethernet, IPv4
    /// without options or IPv6 without extension headers).
    pub const fn udp_offset(&self) -> usize {
        udp_offset(self.family)
    }
}

pub const fn udp_offset(family: u8) -> usize {
    if family == AF_INET6 {
        ETH_LEN + IPV6_LEN
    } else {
        ETH_LEN + IPV4_LEN
    }
}

/// Offset of the jvpn header (the UDP payload) in the generator's frames.
pub const fn payload_offset(family: u8) -> usize {
    udp_offset(family) + UDP_LEN
}

/// `SINK_STATS[0]`, one per CPU: what the sink saw. It drops everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Every frame, and its bytes (from the start of the Ethernet header).
    pub frames: u64,
    pub bytes: u64,
    /// Frames that parse as valid jvpn DATA to the sink's port (parse modes only).
    pub data: u64,
    /// Frames that do not (parse modes only).
    pub not_data: u64,
    /// DATA frames whose session could not get a counter (the per-session map was
    /// full); per-session mode only.
    pub untracked: u64,
}

const _: () = assert!(core::mem::size_of::<SinkStats>() == 40);

impl SinkStats {
    pub fn merge(&mut self, o: &Self) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.data += o.data;
        self.not_data += o.not_data;
        self.untracked += o.untracked;
    }
}

/// Values of the sink's load-time global `SINK_MODE`.
pub mod sink_mode {
    /// Count frames and bytes only (the cheapest sink: a path ceiling).
    pub const COUNT: u8 = 0;
    /// Also parse every frame with [`crate::relay::parse`] and count valid DATA.
    pub const PARSE: u8 = 1;
    /// Also count DATA frames per session id in `SINK_SESSIONS`.
    pub const PER_SESSION: u8 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::PktgenConfig {}
    unsafe impl aya::Pod for super::PktgenState {}
    unsafe impl aya::Pod for super::SinkStats {}
}
