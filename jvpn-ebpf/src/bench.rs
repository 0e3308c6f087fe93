//! Benchmark programs (docs/bench.md): the traffic generator `jvpn_pktgen`, which
//! `jvpn-ctl pktgen` runs with `BPF_PROG_TEST_RUN` in live-frames mode, and the
//! counting sink `xdp_sink`, attached on the receiving end of a path under test.

use aya_ebpf::{
    Global,
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_TX},
    },
    macros::{map, xdp},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::XdpContext,
};
use jvpn_common::{
    DEFAULT_PORT,
    bench::{PktgenConfig, PktgenState, SinkStats, payload_offset, sink_mode, udp_offset},
    csum,
    frame::Frame,
    headers::UdpHdr,
    maps::{AF_INET, AF_INET6},
    relay,
    wire::{Kind, WireHeader},
};

use crate::ctx::Ctx;

/// Written by userspace before the first run; read-only for the program.
#[map]
static PKTGEN_CONFIG: Array<PktgenConfig> = Array::with_max_entries(1, 0);

/// Per-CPU progress: frames sent, the next session index, errors.
#[map]
static PKTGEN_STATE: PerCpuArray<PktgenState> = PerCpuArray::with_max_entries(1, 0);

/// The traffic generator. Run on a template DATA frame built by userspace, it gives
/// each frame the next session id of this CPU's cycle (`first_id + next`), keeps the
/// UDP checksum valid with an RFC 1624 update, and sends the frame out of the run's
/// ingress interface (`XDP_TX`).
///
/// Live-frames mode recycles pages without restoring their contents, so a frame may
/// carry the id a previous run wrote: the update starts from what the frame holds,
/// not from the template, and stays exact either way.
#[xdp]
pub fn jvpn_pktgen(ctx: XdpContext) -> u32 {
    let Some(state) = PKTGEN_STATE.get_ptr_mut(0) else {
        return XDP_ABORTED;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we do.
    let state = unsafe { &mut *state };
    let Some(cfg) = PKTGEN_CONFIG.get(0) else {
        state.errors += 1;
        return XDP_ABORTED;
    };
    if cfg.n_sessions == 0 || state.next >= cfg.n_sessions {
        // Also covers a configuration shrunk under a running generator.
        state.next = 0;
        if cfg.n_sessions == 0 {
            state.errors += 1;
            return XDP_ABORTED;
        }
    }
    let sid = cfg.first_id.wrapping_add(state.next);
    let stamped = match cfg.family {
        AF_INET => stamp::<{ udp_offset(AF_INET) }, { payload_offset(AF_INET) }>(&ctx, sid),
        AF_INET6 => stamp::<{ udp_offset(AF_INET6) }, { payload_offset(AF_INET6) }>(&ctx, sid),
        _ => false,
    };
    if !stamped {
        state.errors += 1;
        return XDP_ABORTED;
    }
    state.next += 1;
    if state.next == cfg.n_sessions {
        state.next = 0;
    }
    state.sent += 1;
    XDP_TX
}

/// Writes `sid` into the jvpn header at `PAYLOAD` and updates the UDP checksum at
/// `UDP` (left alone when it is 0: an IPv4 datagram without a checksum).
#[inline(always)]
fn stamp<const UDP: usize, const PAYLOAD: usize>(ctx: &XdpContext, sid: u64) -> bool {
    let f = Ctx(ctx);
    let (Some(udp), Some(hdr)) = (f.at_mut::<UdpHdr>(UDP), f.at_mut::<WireHeader>(PAYLOAD)) else {
        return false;
    };
    let new = sid.to_be_bytes();
    // SAFETY: both pointers were bounds-checked by `at_mut`; the frame is ours.
    unsafe {
        let old = (*hdr).session_id;
        (*hdr).session_id = new;
        let check = u16::from_be_bytes((*udp).check);
        if check != 0 {
            (*udp).check = csum::udp_replace(check, &old, &new).to_be_bytes();
        }
    }
    true
}

/// UDP port the sink's parser takes as jvpn traffic (host order); set at load.
#[unsafe(no_mangle)]
static SINK_PORT: Global<u16> = Global::new(DEFAULT_PORT);

/// A [`sink_mode`] value; set at load, so the verifier prunes the other modes.
#[unsafe(no_mangle)]
static SINK_MODE: Global<u8> = Global::new(sink_mode::COUNT);

#[map]
static SINK_STATS: PerCpuArray<SinkStats> = PerCpuArray::with_max_entries(1, 0);

/// DATA frames per session id (per CPU). Preallocated (no allocation per frame); the
/// sink sets the capacity at load. One entry here, so that loading the object for the
/// relay does not allocate it.
#[map]
static SINK_SESSIONS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(1, 0);

/// Counts and drops every frame. In the parse modes it also checks each frame with
/// the relay's own parser (`relay::parse`) and counts valid DATA, per session too in
/// per-session mode.
#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    let Some(stats) = SINK_STATS.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    // SAFETY: this CPU's slot.
    let stats = unsafe { &mut *stats };
    let f = Ctx(&ctx);
    stats.frames += 1;
    stats.bytes += f.len() as u64;
    let mode = SINK_MODE.load();
    if mode == sink_mode::COUNT {
        return XDP_DROP;
    }
    match relay::parse(&f, SINK_PORT.load()) {
        Ok(p) if p.kind == Kind::Data => {
            stats.data += 1;
            if mode == sink_mode::PER_SESSION && !count_session(p.session_id) {
                stats.untracked += 1;
            }
        }
        _ => stats.not_data += 1,
    }
    XDP_DROP
}

/// Adds one to the session's counter on this CPU; false if the map is full.
#[inline(always)]
fn count_session(sid: u64) -> bool {
    if let Some(c) = SINK_SESSIONS.get_ptr_mut(sid) {
        // SAFETY: this CPU's copy of the value.
        unsafe { *c += 1 };
        return true;
    }
    // A new element starts at 1 on this CPU and 0 on the others. If another CPU
    // created it in between, our insert fails and the lookup finds it.
    if SINK_SESSIONS.insert(sid, 1, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    match SINK_SESSIONS.get_ptr_mut(sid) {
        Some(c) => {
            // SAFETY: as above.
            unsafe { *c += 1 };
            true
        }
        None => false,
    }
}
