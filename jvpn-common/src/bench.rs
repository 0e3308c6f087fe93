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
    /// `first_id .. first_id + n_sessions` ([`id_mode::RANGE`]).
    pub first_id: u64,
    /// How many sessions (at least 1): the length of the cycle, of the id range or of
    /// the id table.
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
    /// How each frame gets its session id ([`id_mode`]).
    pub id_mode: u8,
    /// How many of [`PktgenConfig::random`] are in use (at most [`MAX_RANDOM_WORDS`]).
    pub n_random: u8,
    /// IPv4 only, nonzero: the bits of the source address (host order) that get fresh
    /// random values in every frame; the others stay the template's. `0x003f_ffff`
    /// sends from every address of the template's /10, one at random per frame.
    pub src_ip_mask: u32,
    /// Bytes in front of the template frame that every run strips first
    /// (`bpf_xdp_adjust_head`): 0, or [`LEAD_BYTES`]. Live-frames mode hands a page's
    /// frame to the next run untouched as long as its start and flags are, so a frame
    /// a receiver shortened with `adjust_tail` and sent back (a gateway's COOKIE) would
    /// go out again at the shortened length. Moving the start makes the kernel set
    /// every frame's bounds afresh.
    pub lead: u8,
    pub _pad: [u8; 3],
    /// Offsets in the UDP payload (from the jvpn header's first byte; even) of 8-byte
    /// words that get fresh random bytes in every frame: a HELLO's ephemeral key and
    /// nonce, a request's nonce and proof. The template holds zeros there, which the
    /// checksum update relies on.
    pub random: [u16; MAX_RANDOM_WORDS],
    /// The template frame's headers (Ethernet, IP, UDP, jvpn: [`header_len`] bytes),
    /// written over every frame before it is stamped. Live-frames mode recycles pages
    /// with whatever the path left in them (a relay rewrites the outer headers in
    /// place), so the generator restores them instead of trusting the page.
    pub header: [u8; TEMPLATE_LEN],
}

/// What [`PktgenConfig::lead`] strips, when it does.
pub const LEAD_BYTES: u8 = 2;

/// Random 8-byte words per frame, at most.
pub const MAX_RANDOM_WORDS: usize = 8;

/// Values of [`PktgenConfig::id_mode`].
pub mod id_mode {
    /// `first_id + i`, `i` cycling over `0..n_sessions` (DATA of many sessions).
    pub const RANGE: u8 = 0;
    /// `PKTGEN_IDS[i]`, `i` cycling over `0..n_sessions`: real sessions' ids, which are
    /// random (a flood of one session's control messages against each of them).
    pub const TABLE: u8 = 1;
    /// The template's own id, untouched (a HELLO's 0).
    pub const TEMPLATE: u8 = 2;
}

/// Entries of `PKTGEN_IDS` userspace may ask for.
pub const MAX_IDS: u32 = 65_536;

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

const _: () = assert!(core::mem::size_of::<PktgenConfig>() == 48 + TEMPLATE_LEN);

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
    /// The CPU's random state (SplitMix64); 0 until the first frame seeds it.
    pub rng: u64,
}

const _: () = assert!(core::mem::size_of::<PktgenState>() == 32);

/// One step of SplitMix64 (Steele, Lea, Flood 2014): advances `state` and returns 64
/// well-mixed bits. Cheap enough for every frame (no helper call), and plenty for
/// addresses and nonces that only have to look random.
#[inline(always)]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

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
    /// (misroute mode only; see [`MisrouteWindow::judge`]).
    pub misrouted: u64,
    /// DATA frames sent inside a window that arrived after it closed: relayed under
    /// the next swap, legitimately (misroute mode only).
    pub crossed: u64,
}

const _: () = assert!(core::mem::size_of::<SinkStats>() == 56);

impl SinkStats {
    pub fn merge(&mut self, o: &Self) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.data += o.data;
        self.not_data += o.not_data;
        self.untracked += o.untracked;
        self.misrouted += o.misrouted;
        self.crossed += o.crossed;
    }
}

/// How many [`MisrouteWindow`]s the sink checks (`SINK_WINDOWS` entries).
pub const MISROUTE_WINDOWS: u32 = 16;

/// `SINK_WINDOWS[i]`: "frames of `session_id` sent in `[from_ns, to_ns)` must not
/// arrive at `dst` before `to_ns`". The binding-swap benchmark opens one when a swap
/// away from `dst` has returned and closes it when the next swap back to `dst` starts.
/// The generator stamps each frame's send time into its counter and the sink notes
/// the arrival time, so a frame counted as misrouted was looked up by the relay after
/// the swap had returned (it was sent after) and before the swap back started (it
/// arrived before): it went to the old binding while the new one was in the map.
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

/// What a DATA frame is to a [`MisrouteWindow`].
pub mod judgement {
    /// Not sent inside the window (or another session or destination).
    pub const OUTSIDE: u8 = 0;
    /// Sent inside, arrived before the window closed: misrouted.
    pub const MISROUTED: u8 = 1;
    /// Sent inside, arrived after the window closed. Frames in flight (stamped, not yet
    /// looked up) when the swap back started may be looked up after it, and then go
    /// to this destination legitimately. Which ones were looked up before cannot be
    /// told apart, so they are counted apart, neither as misrouted nor as fine.
    pub const CROSSED: u8 = 2;
}

impl MisrouteWindow {
    /// Judges a DATA frame of `session_id`, sent at `sent_ns`, arriving at `dst` at
    /// `arrived_ns` (all CLOCK_MONOTONIC ns).
    #[inline(always)]
    pub fn judge(&self, session_id: u64, sent_ns: u64, arrived_ns: u64, dst: &[u8; 16]) -> u8 {
        if self.session_id != session_id
            || sent_ns < self.from_ns
            || sent_ns >= self.to_ns
            || self.dst != *dst
        {
            judgement::OUTSIDE
        } else if arrived_ns < self.to_ns {
            judgement::MISROUTED
        } else {
            judgement::CROSSED
        }
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
    /// Parse, and judge DATA frames against the `SINK_WINDOWS`
    /// ([`super::MisrouteWindow::judge`]; frames from a generator with `stamp_time`).
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

#[cfg(test)]
mod tests {
    use super::{MisrouteWindow, judgement::*};

    #[test]
    fn a_window_judges_by_send_and_arrival_time() {
        let (a, b) = ([10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [9; 16]);
        let w = MisrouteWindow {
            session_id: 7,
            from_ns: 1_000,
            to_ns: 2_000,
            dst: a,
        };
        // (session, sent, arrived, destination) → judgement
        let cases = [
            ((7, 1_000, 1_001, a), MISROUTED),
            ((7, 1_999, 1_999, a), MISROUTED),
            ((7, 1_500, 2_000, a), CROSSED),
            ((7, 999, 1_500, a), OUTSIDE),
            ((7, 2_000, 2_100, a), OUTSIDE),
            ((8, 1_500, 1_600, a), OUTSIDE),
            ((7, 1_500, 1_600, b), OUTSIDE),
        ];
        for ((sid, sent, arrived, dst), want) in cases {
            assert_eq!(
                w.judge(sid, sent, arrived, &dst),
                want,
                "{sid} {sent} {arrived}"
            );
        }
        // An open window (to_ns = MAX) counts every late arrival as misrouted; an
        // unused slot (all zero) judges nothing.
        let open = MisrouteWindow {
            to_ns: u64::MAX,
            ..w
        };
        assert_eq!(open.judge(7, 5_000, u64::MAX - 1, &a), MISROUTED);
        let unused = MisrouteWindow::default();
        assert_eq!(unused.judge(0, 0, 0, &[0; 16]), OUTSIDE);
    }
}
