use crate::{ctx::Ctx, hello};
use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use core::mem::MaybeUninit;
use jvpn_common::{
    DEFAULT_MAX_SESSIONS, DEFAULT_PORT, counters,
    headers::{OuterV4, OuterV6},
    hot::{ENDPOINTS_MAX, HOT_WORDS, Hot},
    maps::{AF_INET, Endpoint, SessionEntry, SessionStats},
    nexthop::{NEXT_HOPS_MAX, NextHop},
    relay::{self, Direction, Parsed, Route, Steer, Verdict},
    wire::Kind,
};

/// UDP port of the protocol, host order; set by the loader.
#[unsafe(no_mangle)]
static JVPN_PORT: Global<u16> = Global::new(DEFAULT_PORT);

/// A session id's `SESSION_STATS` slot is `id & JVPN_SLOT_MASK` (jvpn_common::hot);
/// set by the loader from the array's size.
#[unsafe(no_mangle)]
static JVPN_SLOT_MASK: Global<u32> = Global::new(DEFAULT_MAX_SESSIONS - 1);

/// Nonzero: emit a debug log line per rejected packet. Set by the loader; when zero
/// the verifier prunes the logging code, so the fast path carries none of it.
#[unsafe(no_mangle)]
static JVPN_DEBUG: Global<u8> = Global::new(0);

// NO_PREALLOC: elements are freed after an RCU grace period, so a replaced entry
// stays intact for a program still reading it (preallocated elements are recycled
// at once and could be seen half-rewritten).
#[map]
static SESSIONS: HashMap<u64, SessionEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_SESSIONS, BPF_F_NO_PREALLOC);

// An array indexed by the entry's `stats_slot`: the verifier inlines array lookups, so
// this costs no helper call (a per-CPU hash keyed by session id cost one more hash
// walk per packet: 188 vs 209 ns per packet, and 1.12 vs 0.79 Mpps at 1M sessions).
// MMAPABLE for its page-aligned values (each 128-byte slot is two whole cache lines,
// the entry's copy and the counters) and because the controller writes the copies
// through a shared mapping.
#[map]
static SESSION_STATS: Array<SessionStats> =
    Array::with_max_entries(DEFAULT_MAX_SESSIONS, BPF_F_MMAPABLE);

// The gateway's and the exit's endpoints that slot copies name by index; each index
// written once before any copy names it.
#[map]
static ENDPOINTS: Array<Endpoint> = Array::with_max_entries(ENDPOINTS_MAX, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::SLOTS, 0);

// Written by the controller through a shared mapping (MMAPABLE), word by word; read
// here with one load per word (jvpn_common::nexthop says why that is enough).
#[map]
static NEXT_HOPS: Array<NextHop> = Array::with_max_entries(NEXT_HOPS_MAX, BPF_F_MMAPABLE);

// BPF_FIB_LKUP_RET_* (uapi/linux/bpf.h).
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
const FIB_FRAG_NEEDED: i64 = 8;
const AF_INET_SYS: u8 = 2;
const AF_INET6_SYS: u8 = 10;

/// The FIB request, aligned so that it can be zeroed a word at a time.
#[repr(C, align(8))]
struct FibBuf(FibParams);
const FIB_WORDS: usize = core::mem::size_of::<FibBuf>() / 8;
const _: () =
    assert!(core::mem::size_of::<FibBuf>() == 64 && core::mem::size_of::<FibParams>() == 64);

#[inline(always)]
pub(crate) fn count(reason: u32) {
    if let Some(c) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn jvpn_relay(ctx: XdpContext) -> u32 {
    match relay_packet(&ctx) {
        Ok(action) => action,
        Err(Verdict::NotOurs) => XDP_PASS,
        Err(Verdict::Reject(reason)) => {
            count(reason);
            if JVPN_DEBUG.load() != 0 {
                debug!(&ctx, "jvpn: not relayed, reason {}", reason);
            }
            if counters::is_pass(reason) {
                XDP_PASS
            } else {
                XDP_DROP
            }
        }
    }
}

#[inline(always)]
fn relay_packet(ctx: &XdpContext) -> Result<u32, Verdict> {
    let p = relay::parse(&Ctx(ctx), JVPN_PORT.load())?;
    if p.kind == Kind::Hello {
        // The one message without a session: no lookup, the gate (hello.rs).
        return hello::on_hello(ctx, &p);
    }
    if p.kind == Kind::Reply {
        // COOKIE and TIME go from a gateway to clients, never to a gateway.
        return Err(Verdict::Reject(counters::UNEXPECTED_REPLY));
    }
    // The session's slot first (one cache line holds what steering needs), its
    // SESSIONS entry only when the slot holds no valid copy of it.
    let copy: Hot;
    let (route, [client_hop, exit_hop], stats, looked_up) = if let Some(f) = fast_copy(p.session_id)
    {
        copy = f.hot;
        let route = Route {
            forwarding: copy.forwarding,
            client: &copy.client,
            gw_client: f.gw_client,
            exit: f.exit,
            gw_exit: f.gw_exit,
        };
        (route, [copy.client_hop, copy.exit_hop], f.stats, false)
    } else {
        let Some(entry) = SESSIONS.get_ptr(p.session_id) else {
            return Err(Verdict::Reject(counters::UNKNOWN_SESSION));
        };
        // SAFETY: a map value pointer stays valid for this run (RCU, NO_PREALLOC).
        let entry = unsafe { &*entry };
        // A slot out of range (only a corrupted entry could hold one) goes uncounted.
        let stats = SESSION_STATS
            .get_ptr_mut(entry.stats_slot)
            .unwrap_or(core::ptr::null_mut());
        let hops = [entry.client_hop, entry.exit_hop];
        (Route::of(entry), hops, stats, true)
    };
    if p.kind == Kind::Control {
        if let Some(cfg) = hello::config()
            && !stats.is_null()
            && !hello::control_allowed(cfg, &p, route.client, stats)
        {
            return Err(Verdict::Reject(counters::CONTROL_LIMITED));
        }
        return Ok(XDP_PASS);
    }
    let steer = match relay::steer(&p, &route) {
        Ok(s) => s,
        Err(reason) => {
            if reason == counters::STALE_BINDING && !stats.is_null() {
                // SAFETY: `stats` points to a live array value.
                unsafe { add(&raw mut (*stats).stale_drops, 1) };
            }
            return Err(Verdict::Reject(reason));
        }
    };
    let check = relay::relayed_udp_check(&p, &steer).map_err(Verdict::Reject)?;
    let hop = match steer.dir {
        Direction::Up => exit_hop,
        Direction::Down => client_hop,
    };
    let (ifindex, smac, dmac) = match table_hop(hop, &p, &steer)? {
        Some(h) => h,
        None => {
            let h = next_hop(ctx, &p, &steer)?;
            count(counters::NEXT_HOP_FIB);
            h
        }
    };
    rewrite(ctx, &p, &steer, check, smac, dmac)?;
    if looked_up {
        count(counters::SESSION_LOOKUP);
    }

    let bytes = p.payload_len as u64;
    if !stats.is_null() {
        // SAFETY: `stats` points to a live array value.
        unsafe {
            match steer.dir {
                Direction::Up => {
                    add(&raw mut (*stats).up_packets, 1);
                    add(&raw mut (*stats).up_bytes, bytes);
                }
                Direction::Down => {
                    add(&raw mut (*stats).down_packets, 1);
                    add(&raw mut (*stats).down_bytes, bytes);
                }
            }
        }
    }

    if ifindex == ctx.ingress_ifindex() as u32 {
        Ok(XDP_TX)
    } else {
        // SAFETY: plain helper call; returns XDP_REDIRECT (flags are 0).
        Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
    }
}

/// A valid copy of session `id`'s entry in the slot its id names, with what it
/// points to.
struct Fast {
    hot: Hot,
    gw_client: &'static Endpoint,
    exit: &'static Endpoint,
    gw_exit: &'static Endpoint,
    stats: *mut SessionStats,
}

#[inline(always)]
fn fast_copy(id: u64) -> Option<Fast> {
    let stats = SESSION_STATS.get_ptr_mut(id as u32 & JVPN_SLOT_MASK.load())?;
    // SAFETY: a live array value; one volatile 8-byte load per word (never merged or
    // split), which is what the generation check relies on (jvpn_common::hot).
    let w: [u64; HOT_WORDS] = unsafe {
        let w = (&raw const (*stats).hot).cast::<u64>();
        [
            w.read_volatile(),
            w.add(1).read_volatile(),
            w.add(2).read_volatile(),
            w.add(3).read_volatile(),
            w.add(4).read_volatile(),
            w.add(5).read_volatile(),
        ]
    };
    let hot = Hot::decode(&w)?;
    if hot.id != id {
        return None;
    }
    let ep = |i: u8| {
        // SAFETY: array values live as long as the map, which outlives the program.
        let e: &'static Endpoint = unsafe { &*ENDPOINTS.get_ptr(u32::from(i))? };
        // An index nobody wrote (a lost pin): the copy is not trusted.
        (e.port_be != 0).then_some(e)
    };
    Some(Fast {
        gw_client: ep(hot.gw_client)?,
        exit: ep(hot.exit)?,
        gw_exit: ep(hot.gw_exit)?,
        hot,
        stats,
    })
}

/// `*c += n` as one BPF atomic add (`lock xadd` once JITed): other CPUs may count
/// the same session at the same time.
///
/// # Safety
/// `c` must point to a live, 8-byte aligned u64 (a field of a map value).
#[inline(always)]
unsafe fn add(c: *mut u64, n: u64) {
    // SAFETY: the caller's promise; the instruction touches only `*c`.
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) c, in(reg) n) };
}

/// The next hop from `NEXT_HOPS[hop]`, if that entry is valid (None: the slow path).
/// The packet's size is checked against the hop's MTU, as the FIB would.
#[inline(always)]
fn table_hop(
    hop: u16,
    p: &Parsed,
    s: &Steer<'_>,
) -> Result<Option<(u32, [u8; 6], [u8; 6])>, Verdict> {
    if hop == 0 {
        return Ok(None);
    }
    let Some(e) = NEXT_HOPS.get_ptr(u32::from(hop)) else {
        return Ok(None);
    };
    // SAFETY: a live array value; one volatile 8-byte load per word (never merged
    // or split), which is what the generation check relies on.
    let w = unsafe {
        let w = &raw const (*e).words;
        [
            w.cast::<u64>().read_volatile(),
            w.cast::<u64>().add(1).read_volatile(),
            w.cast::<u64>().add(2).read_volatile(),
        ]
    };
    let Some(h) = NextHop::decode(w) else {
        return Ok(None);
    };
    let l3 = relay::relayed_outer_len(s.dst.family) - jvpn_common::headers::ETH_LEN + p.payload_len;
    if l3 > h.mtu as usize {
        return Err(Verdict::Reject(counters::MTU_EXCEEDED));
    }
    Ok(Some((h.ifindex, h.smac, h.dmac)))
}

/// Asks the kernel's FIB for the egress interface and MACs of the rewritten packet,
/// before anything is modified, so that every failure leaves the frame as it came.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    p: &Parsed,
    s: &Steer<'_>,
) -> Result<(u32, [u8; 6], [u8; 6]), Verdict> {
    let mut buf = MaybeUninit::<FibBuf>::uninit();
    let zero = buf.as_mut_ptr().cast::<u64>();
    // `mem::zeroed()` here became a call to a byte-at-a-time memset subprogram: 12 %
    // of the relay's time under perf. Eight volatile word stores cannot be merged
    // back into a memset.
    for i in 0..FIB_WORDS {
        // SAFETY: `i` < FIB_WORDS words of an 8-aligned buffer of that size.
        unsafe { zero.add(i).write_volatile(0) };
    }
    // SAFETY: every byte is initialised, and all-zero is a valid (empty) request.
    let fib = unsafe { &mut (*buf.as_mut_ptr()).0 };
    fib.l4_protocol = jvpn_common::headers::IPPROTO_UDP;
    fib.sport = s.src.port_be;
    fib.dport = s.dst.port_be;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let l4_len = (jvpn_common::headers::UDP_LEN + p.payload_len) as u16;
    if s.dst.family == AF_INET {
        fib.family = AF_INET_SYS;
        fib.__bindgen_anon_1.tot_len = jvpn_common::headers::IPV4_LEN as u16 + l4_len;
        fib.__bindgen_anon_2.tos = p.tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(word(&s.src.addr, 0));
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(word(&s.dst.addr, 0));
    } else {
        fib.family = AF_INET6_SYS;
        fib.__bindgen_anon_1.tot_len = jvpn_common::headers::IPV6_LEN as u16 + l4_len;
        fib.__bindgen_anon_3.ipv6_src = words(&s.src.addr);
        fib.__bindgen_anon_4.ipv6_dst = words(&s.dst.addr);
    }
    // SAFETY: `fib` is a properly sized, initialised request on our stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc {
        FIB_SUCCESS => Ok((fib.ifindex, fib.smac, fib.dmac)),
        // The kernel resolves neighbours; the untouched packet reaches the controller's
        // socket (its own replies resolve the neighbour for the packets that follow).
        FIB_NO_NEIGH => Err(Verdict::Reject(counters::NEIGH_UNRESOLVED)),
        FIB_FRAG_NEEDED => Err(Verdict::Reject(counters::MTU_EXCEEDED)),
        _ => Err(Verdict::Reject(counters::FIB_FAILURE)),
    }
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> [u8; 4] {
    [a[i], a[i + 1], a[i + 2], a[i + 3]]
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes(word(a, 0)),
        u32::from_ne_bytes(word(a, 4)),
        u32::from_ne_bytes(word(a, 8)),
        u32::from_ne_bytes(word(a, 12)),
    ]
}

/// Replaces everything in front of the UDP payload with fresh outer headers.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    p: &Parsed,
    s: &Steer<'_>,
    check: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Result<(), Verdict> {
    let new_len = relay::relayed_outer_len(s.dst.family);
    let delta = p.outer_len as i32 - new_len as i32;
    if delta != 0 {
        // SAFETY: helper call; on failure the frame is unchanged.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
            return Err(Verdict::Reject(counters::ADJUST_HEAD_FAILED));
        }
    }
    let f = Ctx(ctx);
    if s.dst.family == AF_INET {
        let out = relay::outer_v4(s, p, check, smac, dmac);
        let dst = f
            .ptr_mut::<OuterV4>(0)
            .ok_or(Verdict::Reject(counters::ADJUST_HEAD_FAILED))?;
        // SAFETY: bounds checked by `ptr_mut`; the frame is ours until we return.
        unsafe { dst.write(out) };
    } else {
        let out = relay::outer_v6(s, p, check, smac, dmac);
        let dst = f
            .ptr_mut::<OuterV6>(0)
            .ok_or(Verdict::Reject(counters::ADJUST_HEAD_FAILED))?;
        // SAFETY: as above.
        unsafe { dst.write(out) };
    }
    Ok(())
}
