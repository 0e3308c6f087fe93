//! Token buckets for the XDP gate (docs/datapath.md, "The HELLO gate and control
//! budgets"), free of any kernel API so that the host tests run the XDP program's code.
//!
//! Tokens are counted in thousandths ("milli-tokens") and time in milliseconds, so a
//! refill is `elapsed_ms × rate` milli-tokens exactly, with no division. A burst of at
//! most [`MAX_BURST`] tokens is 10⁹ milli-tokens, which fits a `u32`.
//!
//! The XDP program updates buckets without locks: a load, this arithmetic, a store.
//! Two CPUs updating the same bucket at once may both take from the same tokens, so a
//! limit is exceeded by at most one packet per CPU racing on it. That is accepted.

/// One token, in the milli-tokens buckets count.
pub const TOKEN: u64 = 1000;
/// Largest burst the controller accepts (1,000,000 tokens: 10⁹ milli-tokens < 2³²).
pub const MAX_BURST: u32 = 1_000_000;
/// Largest rate the controller accepts, per second.
pub const MAX_RATE: u32 = 10_000_000;

/// Longest gap a refill looks at: caps `elapsed × rate` far below `u64::MAX`.
const MAX_ELAPSED_MS: u64 = 1 << 32;

/// `tokens` (milli-tokens) after `elapsed_ms` at `rate` per second, capped at `burst`.
#[inline(always)]
pub fn refill(tokens: u64, elapsed_ms: u64, rate: u32, burst: u32) -> u64 {
    let cap = burst as u64 * TOKEN;
    let elapsed = if elapsed_ms > MAX_ELAPSED_MS {
        MAX_ELAPSED_MS
    } else {
        elapsed_ms
    };
    let t = tokens + elapsed * rate as u64;
    if t > cap { cap } else { t }
}

/// A bucket packed into one `u64`, so the XDP program reads and writes it with one
/// access each: the time of the last update (milliseconds of `CLOCK_MONOTONIC`, low 32
/// bits) in the high half, milli-tokens in the low half. 0 is a fresh bucket, full.
///
/// The time wraps after 49.7 days: a bucket left untouched that long may see a small
/// elapsed time and start partly empty, and refills within its burst time.
#[inline(always)]
pub fn take_packed(state: u64, now_ms: u64, rate: u32, burst: u32) -> (u64, bool) {
    if rate == 0 || burst == 0 {
        // Not configured: no limit.
        return (state, true);
    }
    let now = now_ms as u32;
    let tokens = if state == 0 {
        burst as u64 * TOKEN
    } else {
        let last = (state >> 32) as u32;
        refill(
            state & 0xffff_ffff,
            now.wrapping_sub(last) as u64,
            rate,
            burst,
        )
    };
    let (tokens, ok) = if tokens >= TOKEN {
        (tokens - TOKEN, true)
    } else {
        (tokens, false)
    };
    // A state of exactly 0 would read as "fresh": the time part is never 0 again
    // after that, except once per wrap (then the bucket reads full for one packet).
    (((now as u64) << 32) | tokens, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        assert_eq!(refill(0, 10, 100, 200), 1000, "10 ms at 100/s: one token");
        assert_eq!(refill(500, 1, 100, 200), 600);
        assert_eq!(
            refill(0, 1_000_000, 100, 200),
            200_000,
            "capped at the burst"
        );
        // Extremes: no overflow.
        assert_eq!(
            refill(0, u64::MAX, MAX_RATE, MAX_BURST),
            u64::from(MAX_BURST) * TOKEN
        );
        assert!(u64::from(MAX_BURST) * TOKEN <= u64::from(u32::MAX));
    }

    #[test]
    fn packed_bucket_takes_a_burst_then_the_rate() {
        let (rate, burst) = (20, 5);
        let mut s = 0;
        let mut now = 1_000_000;
        let mut passed = 0;
        for _ in 0..10 {
            let (n, ok) = take_packed(s, now, rate, burst);
            s = n;
            passed += u32::from(ok);
        }
        assert_eq!(passed, 5, "the burst");
        // 50 ms at 20/s is one token.
        now += 49;
        assert!(!take_packed(s, now, rate, burst).1);
        now += 1;
        let (n, ok) = take_packed(s, now, rate, burst);
        assert!(ok);
        s = n;
        assert!(!take_packed(s, now, rate, burst).1);
        // Sub-millisecond arrivals lose nothing: the stored time is the floor of now,
        // so elapsed times add up exactly.
        let mut s = take_packed(0, 7, 1000, 1).0;
        assert_eq!(s & 0xffff_ffff, 0);
        for t in 8..20 {
            let (n, ok) = take_packed(s, t, 1000, 1);
            assert!(ok, "1000/s: one token every ms (t = {t})");
            s = n;
        }
        // Across the 32-bit wrap of the millisecond clock.
        let before = (1u64 << 32) - 5;
        let s = take_packed(0, before, 1, 1).0;
        assert!(!take_packed(s, before + 10, 1, 1).1);
        assert!(take_packed(s, before + 1000, 1, 1).1);
    }

    #[test]
    fn unconfigured_means_unlimited() {
        assert_eq!(take_packed(0, 5, 0, 5), (0, true));
        assert_eq!(take_packed(42, 5, 5, 0), (42, true));
    }
}
