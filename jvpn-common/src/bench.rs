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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PktgenConfig {
    /// Session id of the first session; frames cycle through
    /// `first_id .. first_id + n_sessions`.
    pub first_id: u64,
    /// How many sessions (at least 1).
    pub n_sessions: u64,
    /// [`crate::maps::AF_INET`] or [`AF_INET6`]: where the UDP header is.
    pub family: u8,
    /// Nonzero: also write the send time (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) into
    /// the jvpn header's counter, so a receiver can tell when each frame left (the
    /// binding-swap benchmark's misrouting check, [`MisrouteWindow`]).
    pub stamp_time: u8,
    /// Nonzero: session index `i` (from `first_id`) sends from UDP source port
    /// `src_port_base + (i & src_port_mask)`, so the frames look like many clients
    /// (a receiving socket layer spreads them over `SO_REUSEPORT` sockets). Host order.
    pub src_port_mask: u16,
    pub src_port_base: u16,
    pub _pad: [u8; 2],
    /// The template frame's headers (Ethernet, IP, UDP, jvpn: [`header_len`] bytes),
    /// written over every frame before it is stamped. Live-frames mode recycles pages
    /// with whatever the path left in them (a relay rewrites the outer headers in
    /// place), so the generator restores them instead of trusting the page.
    pub header: [u8; TEMPLATE_LEN],
}

/// Room for the longest generated header: Ethernet + IPv6 + UDP + jvpn (82 bytes).
pub const TEMPLATE_LEN: usize = 96;

/// Bytes of the generated frames' headers up to and including the jvpn header.
pub const fn header_len(family: u8) -> usize {
    payload_offset(family) + crate::wire::HEADER_LEN
}

impl PktgenConfig {
    /// The source port of session index `i`, or `None` when ports are not varied.
    pub const fn src_port(&self, i: u64) -> Option<u16> {
        if self.src_port_mask == 0 {
            None
        } else {
            Some(
                self.src_port_base
                    .wrapping_add((i as u16) & self.src_port_mask),
            )
        }
    }
}

const _: () = assert!(core::mem::size_of::<PktgenConfig>() == 24 + TEMPLATE_LEN);

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
    /// DATA frames that arrived at a destination inside one of its misroute windows
    /// (misroute mode only).
    pub misrouted: u64,
}

const _: () = assert!(core::mem::size_of::<SinkStats>() == 48);

impl SinkStats {
    pub fn merge(&mut self, o: &Self) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.data += o.data;
        self.not_data += o.not_data;
        self.untracked += o.untracked;
        self.misrouted += o.misrouted;
    }
}

/// How many [`MisrouteWindow`]s the sink checks (`SINK_WINDOWS` entries).
pub const MISROUTE_WINDOWS: u32 = 16;

/// `SINK_WINDOWS[i]`: "frames of `session_id` sent in `[from_ns, to_ns)` must not
/// arrive at `dst`". The binding-swap benchmark opens one when a swap away from `dst`
/// has returned and closes it when the next swap back to `dst` starts; the generator
/// stamps each frame's send time into its counter, so a frame counted here was looked
/// up by the relay after the swap had returned, and still went to the old binding.
/// `to_ns <= from_ns` (e.g. all zero) is an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MisrouteWindow {
    pub session_id: u64,
    /// CLOCK_MONOTONIC nanoseconds (the clock of `bpf_ktime_get_ns`).
    pub from_ns: u64,
    pub to_ns: u64,
    /// The old binding's address: 16 bytes, IPv4 in the first four (as in
    /// [`crate::maps::Endpoint`]).
    pub dst: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<MisrouteWindow>() == 40);

impl MisrouteWindow {
    /// Whether a DATA frame of `session_id` sent at `sent_ns` to `dst` falls in it.
    #[inline(always)]
    pub fn contains(&self, session_id: u64, sent_ns: u64, dst: &[u8; 16]) -> bool {
        self.session_id == session_id
            && self.from_ns <= sent_ns
            && sent_ns < self.to_ns
            && self.dst == *dst
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
    /// Parse, and count DATA frames inside a `SINK_WINDOWS` [`super::MisrouteWindow`]
    /// as misrouted (frames from a generator with `stamp_time`).
    pub const MISROUTE: u8 = 3;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::PktgenConfig {}
    unsafe impl aya::Pod for super::PktgenState {}
    unsafe impl aya::Pod for super::SinkStats {}
    unsafe impl aya::Pod for super::MisrouteWindow {}
}
