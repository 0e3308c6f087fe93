//! Benchmark programs (docs/bench.md): the traffic generator `jvpn_pktgen`, which
//! `jvpn-ctl pktgen` runs with `BPF_PROG_TEST_RUN` in live-frames mode, and the
//! counting sink `xdp_sink`, attached on the receiving end of a path under test; the
//! path ceilings `bench_drop` and `bench_fwd`; `xdp_pass` for redirect targets.

use aya_ebpf::{
    Global,
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::XdpContext,
};
use jvpn_common::{
    DEFAULT_PORT,
    bench::{
        MAX_RANDOM_WORDS, MISROUTE_WINDOWS, MisrouteWindow, PktgenConfig, PktgenState, SinkStats,
        TEMPLATE_LEN, header_len, id_mode, judgement, payload_offset, sink_mode, splitmix64,
        udp_offset,
    },
    csum,
    frame::Frame,
    headers::{ETH_LEN, Ipv4Hdr, UdpHdr},
    maps::{AF_INET, AF_INET6},
    relay,
    wire::{Kind, WireHeader},
};

use crate::ctx::Ctx;

/// Written by userspace before the first run; read-only for the program.
#[map]
static PKTGEN_CONFIG: Array<PktgenConfig> = Array::with_max_entries(1, 0);

/// Per-CPU progress: frames sent, the next session index, errors, the random state.
#[map]
static PKTGEN_STATE: PerCpuArray<PktgenState> = PerCpuArray::with_max_entries(1, 0);

/// Session ids for [`id_mode::TABLE`] (userspace sizes it at load; one entry here, so
/// that loading the object for anything else does not allocate it).
#[map]
static PKTGEN_IDS: Array<u64> = Array::with_max_entries(1, 0);

/// The traffic generator. Run on a template frame built by userspace, it writes the
/// template's headers over the frame (live-frames mode recycles pages with whatever
/// the path left in them, e.g. a relay's rewritten headers or a gateway's COOKIE
/// reply), gives it the next session id of this CPU's cycle (a range, a table of real
/// ids, or the template's own), optionally a random IPv4 source inside the template's
/// prefix and random bytes at chosen words of the payload, keeps the IPv4 header
/// checksum and the UDP checksum valid with RFC 1624 updates from the template's
/// values, and sends it out of the run's ingress interface (`XDP_TX`).
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
    let sid = match cfg.id_mode {
        id_mode::RANGE => Some(cfg.first_id.wrapping_add(state.next)),
        id_mode::TABLE => match PKTGEN_IDS.get(state.next as u32) {
            Some(id) => Some(*id),
            None => {
                state.errors += 1;
                return XDP_ABORTED;
            }
        },
        _ => None,
    };
    if state.rng == 0 && (cfg.n_random != 0 || cfg.src_ip_mask != 0) {
        // SAFETY: plain helper calls.
        let (hi, lo) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        state.rng = (u64::from(hi) << 32 | u64::from(lo)) | 1;
    }
    if cfg.lead != 0 {
        // SAFETY: helper call on our own context; the frame starts later afterwards
        // (every pointer below is taken after it).
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, i32::from(cfg.lead)) } != 0 {
            state.errors += 1;
            return XDP_ABORTED;
        }
    }
    let st = Stamp {
        sid,
        time: cfg.stamp_time != 0,
        sport: cfg.src_port(state.next),
    };
    let stamped = match cfg.family {
        AF_INET => {
            restore::<{ header_len(AF_INET) }>(&ctx, &cfg.header)
                && stamp::<{ udp_offset(AF_INET) }, { payload_offset(AF_INET) }>(
                    &ctx,
                    cfg,
                    &st,
                    &mut state.rng,
                )
        }
        AF_INET6 => {
            restore::<{ header_len(AF_INET6) }>(&ctx, &cfg.header)
                && stamp::<{ udp_offset(AF_INET6) }, { payload_offset(AF_INET6) }>(
                    &ctx,
                    cfg,
                    &st,
                    &mut state.rng,
                )
        }
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

/// Writes the template's first `N` bytes (the headers) over the frame.
#[inline(always)]
fn restore<const N: usize>(ctx: &XdpContext, header: &[u8; TEMPLATE_LEN]) -> bool {
    let Some(dst) = Ctx(ctx).ptr_mut::<[u8; N]>(0) else {
        return false;
    };
    // SAFETY: `dst` was bounds-checked for N bytes; N <= TEMPLATE_LEN (const-checked by
    // the callers' offsets); the map value and the frame do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(header.as_ptr(), dst.cast::<u8>(), N) };
    true
}

/// What one frame gets: its session id (`None`: the template's), optionally its send
/// time (into the jvpn counter) and a source port.
struct Stamp {
    sid: Option<u64>,
    time: bool,
    sport: Option<u16>,
}

/// Writes a [`Stamp`] into the UDP header at `UDP` and the jvpn header at `PAYLOAD`,
/// then the configuration's random source address (IPv4) and random payload words,
/// updating the checksums: the UDP one is left alone when it is 0 (an IPv4 datagram
/// without one). Every change is summed into one RFC 1624 accumulator, folded once.
#[inline(always)]
fn stamp<const UDP: usize, const PAYLOAD: usize>(
    ctx: &XdpContext,
    cfg: &PktgenConfig,
    st: &Stamp,
    rng: &mut u64,
) -> bool {
    let f = Ctx(ctx);
    let (Some(udp), Some(hdr)) = (f.ptr_mut::<UdpHdr>(UDP), f.ptr_mut::<WireHeader>(PAYLOAD))
    else {
        return false;
    };
    // SAFETY: both pointers were bounds-checked by `ptr_mut`; the frame is ours.
    unsafe {
        let check = u16::from_be_bytes((*udp).check);
        // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over every changed word.
        let mut acc = u32::from(!check);
        if let Some(sid) = st.sid {
            let old = (*hdr).session_id;
            let new = sid.to_be_bytes();
            (*hdr).session_id = new;
            acc = csum::sum_words(csum::sub_words(acc, &old), &new);
        }
        if let Some(port) = st.sport {
            let old = (*udp).sport;
            let new = port.to_be_bytes();
            (*udp).sport = new;
            acc = csum::sum_words(csum::sub_words(acc, &old), &new);
        }
        if st.time {
            let old = (*hdr).counter;
            let new = bpf_ktime_get_ns().to_be_bytes();
            (*hdr).counter = new;
            acc = csum::sum_words(csum::sub_words(acc, &old), &new);
        }
        // A random IPv4 source inside the template's prefix: the IP header checksum
        // and the UDP pseudo-header change with it.
        if UDP == ETH_LEN + jvpn_common::headers::IPV4_LEN && cfg.src_ip_mask != 0 {
            let Some(ip) = f.ptr_mut::<Ipv4Hdr>(ETH_LEN) else {
                return false;
            };
            let old = (*ip).src;
            let mask = cfg.src_ip_mask;
            let bits = splitmix64(rng) as u32;
            let new = ((u32::from_be_bytes(old) & !mask) | (bits & mask)).to_be_bytes();
            (*ip).src = new;
            let ip_acc = csum::sum_words(
                csum::sub_words(u32::from(!u16::from_be_bytes((*ip).check)), &old),
                &new,
            );
            (*ip).check = (!csum::fold(ip_acc)).to_be_bytes();
            acc = csum::sum_words(csum::sub_words(acc, &old), &new);
        }
        // Random payload words; the template holds zeros there, so there is nothing
        // to subtract.
        let n = cfg.n_random as usize;
        let mut i = 0;
        while i < MAX_RANDOM_WORDS {
            if i >= n {
                break;
            }
            // Even and bounded, for the checksum's word alignment and the verifier.
            let off = usize::from(cfg.random[i] & 0x3fe);
            let Some(w) = f.ptr_mut::<[u8; 8]>(PAYLOAD + off) else {
                return false;
            };
            let new = splitmix64(rng).to_be_bytes();
            *w = new;
            acc = csum::sum_words(acc, &new);
            i += 1;
        }
        if check != 0 {
            let c = match !csum::fold(acc) {
                // RFC 768: a computed zero is sent as all ones; zero means "none".
                0 => 0xffff,
                c => c,
            };
            (*udp).check = c.to_be_bytes();
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
            if mode == sink_mode::MISROUTE {
                match judge(&f, p.family, p.session_id, &p.dst) {
                    judgement::MISROUTED => stats.misrouted += 1,
                    judgement::CROSSED => stats.crossed += 1,
                    _ => {}
                }
            }
        }
        _ => stats.not_data += 1,
    }
    XDP_DROP
}

/// Open and closed misroute windows (see [`MisrouteWindow`]); written by userspace.
#[map]
static SINK_WINDOWS: Array<MisrouteWindow> = Array::with_max_entries(MISROUTE_WINDOWS, 0);

/// This DATA frame against the misroute windows, by its send time (the generator's
/// stamp in the counter) and its arrival (now). Relayed frames have fresh outer
/// headers without options or tags, so the jvpn header is at a fixed offset.
#[inline(always)]
fn judge(f: &Ctx<'_>, family: u8, sid: u64, dst: &[u8; 16]) -> u8 {
    let hdr = match family {
        AF_INET => f.at::<WireHeader>(payload_offset(AF_INET)),
        _ => f.at::<WireHeader>(payload_offset(AF_INET6)),
    };
    let Some(hdr) = hdr else {
        return judgement::OUTSIDE;
    };
    let sent = u64::from_be_bytes(hdr.counter);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    for i in 0..MISROUTE_WINDOWS {
        if let Some(w) = SINK_WINDOWS.get(i) {
            let j = w.judge(sid, sent, now, dst);
            if j != judgement::OUTSIDE {
                return j;
            }
        }
    }
    judgement::OUTSIDE
}

/// Egress interface of `bench_fwd`; set at load.
#[unsafe(no_mangle)]
static FWD_IFINDEX: Global<u32> = Global::new(0);

/// The trivial forwarder, a path ceiling for the benchmark: redirects every frame,
/// unmodified, out of `FWD_IFINDEX`. The most any forwarding program can do on the
/// path, with none of the relay's parsing, lookup or rewrite.
#[xdp]
pub fn bench_fwd(_ctx: XdpContext) -> u32 {
    // SAFETY: a plain helper call; an invalid ifindex makes the redirect fail.
    unsafe { bpf_redirect(FWD_IFINDEX.load(), 0) as u32 }
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

/// Path-ceiling baseline for benchmarks: drops everything.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

/// Receiving side of native redirects into a veth (a veth peer needs an XDP program
/// for `bpf_redirect` to deliver frames): hands every frame to the kernel.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
