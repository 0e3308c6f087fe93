//! The HELLO gate and the per-session control budgets (docs/datapath.md, "The HELLO
//! gate and control budgets"): token buckets in front of the controller, and under
//! load a stateless cookie answered from XDP, so that a spoofed source never reaches
//! signature verification. The decisions are `jvpn_common::{bucket, cookie}`; this
//! module holds the maps, the clock and the helper calls.

use crate::{ctx::Ctx, relay::count};
use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    macros::map,
    maps::{Array, LruHashMap},
    programs::XdpContext,
};
use core::ptr::{read_volatile, write_volatile};
use jvpn_common::{
    bucket::{self, TOKEN},
    cookie::{self, Source},
    counters,
    maps::{
        CookieKey, Endpoint, HELLO_SOURCES_MAX, HelloConfig, HelloState, SessionStats, SourceKey,
    },
    relay::{self, Parsed, Verdict},
    wire::{HELLO_COOKIE_LEN, HELLO_LEN},
};

/// The controller's settings; all zero (never written) disables everything here.
#[map]
static HELLO_CONFIG: Array<HelloConfig> = Array::with_max_entries(1, 0);

/// The two cookie keys, slot `seq & 1`.
#[map]
static COOKIE_KEYS: Array<CookieKey> = Array::with_max_entries(2, 0);

/// The global HELLO budget (one element, shared by all CPUs, updated without locks).
#[map]
static HELLO_STATE: Array<HelloState> = Array::with_max_entries(1, 0);

/// Per-source-prefix buckets for HELLOs with a valid cookie under load.
#[map]
static HELLO_SOURCES: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(HELLO_SOURCES_MAX, 0);

/// The settings, if the gate is on.
#[inline(always)]
pub fn config() -> Option<&'static HelloConfig> {
    match HELLO_CONFIG.get(0) {
        Some(c) if c.enabled != 0 => Some(c),
        _ => None,
    }
}

#[inline(always)]
fn now_ms() -> u64 {
    // SAFETY: plain helper call.
    (unsafe { bpf_ktime_get_ns() }) / 1_000_000
}

/// What becomes of a HELLO: `XDP_PASS` to the controller, `XDP_TX` of a COOKIE in its
/// place, or a reason to drop it.
#[inline(always)]
pub fn on_hello(ctx: &XdpContext, p: &Parsed) -> Result<u32, Verdict> {
    let Some(cfg) = config() else {
        // No controller set the gate up (or an older one runs): as before.
        return Ok(XDP_PASS);
    };
    if p.payload_len != HELLO_LEN && p.payload_len != HELLO_COOKIE_LEN {
        return Err(Verdict::Reject(counters::MALFORMED));
    }
    let Some(st) = HELLO_STATE.get_ptr_mut(0) else {
        return Ok(XDP_PASS);
    };
    let now = now_ms();
    let (rate, burst) = (cfg.hello_budget_pps, cfg.hello_budget_burst);
    let limited = rate != 0 && burst != 0;
    // Racy reads and writes, as documented: other CPUs update the same bucket.
    // SAFETY: `st` points to the live array value; u64 fields are 8-aligned.
    let (tokens, last, until) = unsafe {
        (
            read_volatile(&raw const (*st).tokens),
            read_volatile(&raw const (*st).last_ms),
            read_volatile(&raw const (*st).loaded_until_ms),
        )
    };
    let tokens = if last == 0 {
        burst as u64 * TOKEN
    } else {
        bucket::refill(tokens, now.saturating_sub(last), rate, burst)
    };
    let half = burst as u64 * TOKEN / 2;
    let hold = cfg.load_hold_ms as u64;
    let mut under_load = limited && now < until;
    if limited && tokens < half {
        under_load = true;
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut (*st).loaded_until_ms, now + hold) };
    }

    if under_load {
        let src = Source::of(p);
        let carried = cookie::hello_cookie(&Ctx(ctx), p);
        let valid = match &carried {
            Some(c) => cookie::check(c, cfg.cookie_seq, |s| COOKIE_KEYS.get(s).copied(), &src),
            None => false,
        };
        if !valid {
            if carried.is_some() {
                count(counters::COOKIE_INVALID);
            }
            // A HELLO without a cookie under load is load: the budget, which the
            // answered ones do not draw on, would refill and end it while the flood
            // goes on, letting a burst through to signature checks every hold period.
            // SAFETY: as above.
            unsafe { write_volatile(&raw mut (*st).loaded_until_ms, now + hold) };
            return send_cookie(ctx, p, cfg.cookie_seq);
        }
        if !take_source(cfg, p, now) {
            return Err(Verdict::Reject(counters::HELLO_SOURCE_LIMITED));
        }
    }
    if limited {
        if tokens < TOKEN {
            return Err(Verdict::Reject(counters::HELLO_BUDGET));
        }
        let left = tokens - TOKEN;
        // SAFETY: as above.
        unsafe {
            write_volatile(&raw mut (*st).tokens, left);
            write_volatile(&raw mut (*st).last_ms, now);
            if left < half {
                write_volatile(&raw mut (*st).loaded_until_ms, now + hold);
            }
        }
    }
    Ok(XDP_PASS)
}

/// One token from the source prefix's bucket (a new prefix starts full).
#[inline(always)]
fn take_source(cfg: &HelloConfig, p: &Parsed, now: u64) -> bool {
    let (rate, burst) = (cfg.hello_per_source_pps, cfg.hello_per_source_burst);
    let key = SourceKey::of(&p.src, p.family);
    match HELLO_SOURCES.get_ptr_mut(key) {
        Some(b) => {
            // SAFETY: a live map value; racy by design (see the module docs).
            let (next, ok) = bucket::take_packed(unsafe { read_volatile(b) }, now, rate, burst);
            unsafe { write_volatile(b, next) };
            ok
        }
        None => {
            let (next, ok) = bucket::take_packed(0, now, rate, burst);
            // A failed insert (memory) only forgets this source's bucket.
            let _ = HELLO_SOURCES.insert(key, next, 0);
            ok
        }
    }
}

/// Rewrites the HELLO into a COOKIE for its sender and sends it back.
#[inline(always)]
fn send_cookie(ctx: &XdpContext, p: &Parsed, seq: u32) -> Result<u32, Verdict> {
    let key = match COOKIE_KEYS.get(seq & 1) {
        Some(k) if !k.is_zero() => *k,
        // A controller that enabled the gate without keys: no cookie could be checked.
        _ => return Err(Verdict::Reject(counters::HELLO_BUDGET)),
    };
    let c = cookie::make(&key, seq, &Source::of(p));
    // The frame's length as a number: the verifier allows no arithmetic on data_end.
    // SAFETY: plain helper call (Linux 5.18, the documented minimum).
    let cur = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32;
    let len = cookie::write_reply(&mut Ctx(ctx), p, &c).map_err(Verdict::Reject)?;
    let delta = len as i32 - cur;
    // SAFETY: helper call; shrinking keeps at least the reply's bytes.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(Verdict::Reject(counters::ADJUST_HEAD_FAILED));
    }
    count(counters::HELLO_COOKIE_SENT);
    Ok(XDP_TX)
}

/// One token from the session's control budget: the binding's bucket for packets
/// from its binding, the other bucket for packets from anywhere else.
#[inline(always)]
pub fn control_allowed(
    cfg: &HelloConfig,
    p: &Parsed,
    binding: &Endpoint,
    stats: *mut SessionStats,
) -> bool {
    let now = now_ms();
    // SAFETY: `stats` points to the session's live SESSION_STATS value.
    let (b, rate, burst) = if relay::comes_from(p, binding) {
        (
            unsafe { &raw mut (*stats).ctl_binding },
            cfg.control_binding_pps,
            cfg.control_binding_burst,
        )
    } else {
        (
            unsafe { &raw mut (*stats).ctl_other },
            cfg.control_other_pps,
            cfg.control_other_burst,
        )
    };
    // SAFETY: as above; racy by design.
    let (next, ok) = bucket::take_packed(unsafe { read_volatile(b) }, now, rate, burst);
    unsafe { write_volatile(b, next) };
    ok
}
