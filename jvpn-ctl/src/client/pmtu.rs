//! Path-MTU search for one transport, after DPLPMTUD (RFC 8899), sans I/O.
//!
//! Only an acked padded probe proves that a size crosses the path; the kernel's
//! `EMSGSIZE` / `IP_MTU` is an upper bound, never a confirmation. Sizes are outer IP
//! packet sizes (IP + UDP headers + payload): the caller converts to tunnel MTU.
//! Pure bookkeeping with time as an input, like [`super::health`].

use std::collections::VecDeque;

/// Tries per size before it counts as too big (RFC 8899 MAX_PROBES).
pub const MAX_PROBES: u8 = 3;
/// How long a search settled below the max stays settled (RFC 8899 PMTU_RAISE_TIMER).
pub const RAISE_AFTER_MS: u64 = 600_000;
/// The binary search stops when confirmed and failed sizes are closer than this, so
/// [`PathMtu::current`] ends at most `RESOLUTION - 1` bytes below the real path MTU.
pub const RESOLUTION: u16 = 8;
/// Probes remembered so that a late ack still counts.
const HISTORY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub id: u64,
    pub size: u16,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    probe: Probe,
    sent_ms: u64,
    tries: u8,
}

#[derive(Clone, Debug, Default)]
pub struct PathMtu {
    base: u16,
    max: u16,
    /// The kernel's last reported path MTU (an upper bound until the caller says otherwise).
    kernel: Option<u16>,
    /// Largest acked size, or `base`.
    current: u16,
    /// Smallest size that lost MAX_PROBES probes since the search last restarted.
    failed: Option<u16>,
    /// The raise timer fired: re-probe `failed` itself before settling again.
    recheck: bool,
    in_flight: Option<InFlight>,
    sent: VecDeque<Probe>,
    next_id: u64,
    raise_after_ms: u64,
    raise_at: Option<u64>,
}

impl PathMtu {
    /// RFC 8899 §5.1.2 BASE_PLPMTU: 1280 is the IPv6 minimum link MTU, and 1200 is the
    /// size it recommends for IPv4; both cross practically every path.
    pub fn base_for(v6: bool) -> u16 {
        if v6 { 1280 } else { 1200 }
    }

    /// `base` is assumed to work before anything is confirmed; `max` (clamped to at
    /// least `base`) is the interface/route MTU, the largest size worth trying.
    pub fn new(base: u16, max: u16, now_ms: u64) -> Self {
        let mut s = Self {
            base,
            max: max.max(base),
            current: base,
            raise_after_ms: RAISE_AFTER_MS,
            ..Self::default()
        };
        s.step(now_ms);
        s
    }

    /// Labs and tests cannot wait ten minutes for a path to grow.
    pub fn with_raise_after(mut self, ms: u64) -> Self {
        self.raise_after_ms = ms;
        self
    }

    /// The size to build the tunnel on: proven by an ack (or `base`), and never above
    /// the kernel's last word unless that is below `base` (the tunnel has no smaller floor).
    pub fn current(&self) -> u16 {
        self.current
    }

    /// Nothing left to learn until the raise timer, a too-big, a new max or a reset.
    pub fn settled(&self) -> bool {
        self.target().is_none()
    }

    /// At most one probe is outstanding, so a loss is attributable to one size; the
    /// ids are monotonic, so an ack can never be mistaken for a later probe's.
    pub fn poll_probe(&mut self, now_ms: u64, timeout_ms: u64) -> Option<Probe> {
        if let Some(f) = self.in_flight {
            if now_ms.saturating_sub(f.sent_ms) < timeout_ms {
                return None;
            }
            self.in_flight = None;
            if f.tries < MAX_PROBES {
                return Some(self.send(f.probe.size, f.tries + 1, now_ms));
            }
            let size = f.probe.size;
            self.failed = Some(self.failed.map_or(size, |x| x.min(size)));
            self.recheck = false;
            self.step(now_ms);
        }
        if self.raise_at.is_some_and(|t| now_ms >= t) {
            self.raise_at = None;
            self.recheck = true;
        }
        let size = self.target()?;
        Some(self.send(size, 1, now_ms))
    }

    /// Any remembered probe's ack proves its size, even after it was given up on (the
    /// loss was of the ack's timing, not of the path); each ack counts once.
    pub fn on_ack(&mut self, id: u64, now_ms: u64) {
        let Some(i) = self.sent.iter().position(|p| p.id == id) else {
            return;
        };
        let size = self.sent.remove(i).map_or(0, |p| p.size);
        if size <= self.current || size > self.top() {
            return;
        }
        self.current = size;
        if self.failed.is_some_and(|f| f <= size) {
            self.failed = None;
            self.recheck = false;
        }
        self.step(now_ms);
    }

    /// A confirmed size the kernel now refuses is no longer usable: this is how a smaller
    /// path (route change, ICMP too-big) is learned without waiting for probes to fail.
    /// A larger `mtu` than before (the kernel's cached PMTU expired) lifts the bound.
    pub fn on_too_big(&mut self, mtu: u16, now_ms: u64) {
        self.kernel = Some(mtu);
        if mtu < self.current {
            self.current = mtu.max(self.base);
        }
        self.step(now_ms);
    }

    /// A new link or address: the old failures and probes say nothing about it, and the
    /// new max replaces the kernel's older too-big bound (if the kernel still holds a
    /// smaller PMTU, the next send's `EMSGSIZE` reports it again).
    pub fn set_max(&mut self, max: u16, now_ms: u64) {
        self.max = max.max(self.base);
        self.kernel = None;
        self.current = self.current.min(self.max);
        self.restart(None, now_ms);
    }

    /// Black hole: the current size is the evidence, so it becomes the failed bound and
    /// the search bisects below it instead of losing MAX_PROBES probes on it again.
    pub fn reset(&mut self, now_ms: u64) {
        let failed = (self.current > self.base).then_some(self.current);
        self.current = self.base;
        self.restart(failed, now_ms);
    }

    fn restart(&mut self, failed: Option<u16>, now_ms: u64) {
        self.failed = failed;
        self.recheck = false;
        self.in_flight = None;
        self.sent.clear();
        self.raise_at = None;
        self.step(now_ms);
    }

    fn top(&self) -> u16 {
        self.kernel
            .map_or(self.max, |k| k.min(self.max))
            .max(self.base)
    }

    /// The size the search wants confirmed next: the top first (the local MTU is usually
    /// the path MTU), then the midpoint between confirmed and failed.
    fn target(&self) -> Option<u16> {
        let top = self.top();
        if self.current >= top {
            return None;
        }
        match self.failed.filter(|&f| f <= top && f > self.current) {
            None => Some(top),
            Some(f) if self.recheck => Some(f),
            Some(f) if f - self.current < RESOLUTION => None,
            Some(f) => Some(self.current + (f - self.current) / 2),
        }
    }

    /// Keeps the in-flight probe and the raise timer consistent after any change.
    fn step(&mut self, now_ms: u64) {
        let (cur, top) = (self.current, self.top());
        if self
            .in_flight
            .is_some_and(|f| f.probe.size <= cur || f.probe.size > top)
        {
            self.in_flight = None;
        }
        self.raise_at = if self.settled() && cur < top {
            Some(self.raise_at.unwrap_or(now_ms + self.raise_after_ms))
        } else {
            None
        };
    }

    fn send(&mut self, size: u16, tries: u8, now_ms: u64) -> Probe {
        let probe = Probe {
            id: self.next_id,
            size,
        };
        self.next_id += 1;
        if self.sent.len() == HISTORY {
            self.sent.pop_front();
        }
        self.sent.push_back(probe);
        self.in_flight = Some(InFlight {
            probe,
            sent_ms: now_ms,
            tries,
        });
        probe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: u64 = 40;
    const TO: u64 = 1_000;

    /// Drives `m` until settled over a path that acks the probes `pass` lets through,
    /// after one RTT (a loss costs a timeout); returns (probes sent, virtual ms).
    fn converge(m: &mut PathMtu, now: &mut u64, mut pass: impl FnMut(Probe) -> bool) -> (u32, u64) {
        let (start, mut n) = (*now, 0);
        for _ in 0..200 {
            if m.settled() {
                return (n, *now - start);
            }
            let Some(p) = m.poll_probe(*now, TO) else {
                continue;
            };
            n += 1;
            assert!(p.size >= m.base && p.size <= m.top(), "{p:?}");
            if pass(p) {
                *now += RTT;
                m.on_ack(p.id, *now);
            } else {
                *now += TO;
            }
        }
        panic!("no convergence: {m:?}");
    }

    fn path(p: u16) -> impl FnMut(Probe) -> bool {
        move |pr| pr.size <= p
    }

    #[test]
    fn converges_to_the_path_mtu_within_the_resolution() {
        let v4 = PathMtu::base_for(false);
        let v6 = PathMtu::base_for(true);
        assert_eq!((v4, v6), (1200, 1280));
        // (base, max, path MTU, probes, virtual ms)
        for (base, max, p, probes, ms) in [
            (v4, 1500, 1500, 1, RTT),
            (v4, 1500, 1400, 15, 12 * TO + 3 * RTT),
            (v6, 1500, 1492, 10, 6 * TO + 4 * RTT),
            (v6, 9000, 1280, 33, 33 * TO),
            (v4, 1500, 1200, 21, 21 * TO),
        ] {
            let (mut m, mut now) = (PathMtu::new(base, max, 0), 0);
            let got = converge(&mut m, &mut now, path(p));
            println!("{base} {max} path {p}: {} after {got:?}", m.current());
            assert!(m.current() <= p && p - m.current() < RESOLUTION, "{m:?}");
            assert_eq!(got, (probes, ms), "path {p}");
        }
    }

    #[test]
    fn common_case_is_one_probe_and_one_round_trip() {
        let (mut m, mut now) = (PathMtu::new(1280, 1500, 0), 0);
        assert_eq!(m.current(), 1280);
        assert!(!m.settled());
        assert_eq!(converge(&mut m, &mut now, path(1500)), (1, RTT));
        assert_eq!(m.current(), 1500);
        assert_eq!(m.poll_probe(now + 10 * RAISE_AFTER_MS, TO), None);
    }

    #[test]
    fn two_lost_of_three_at_a_good_size_do_not_shrink_it() {
        for p in [1500, 1400] {
            let (mut m, mut now) = (PathMtu::new(1200, 1500, 0), 0);
            let mut tries = std::collections::HashMap::new();
            converge(&mut m, &mut now, |pr| {
                let t = tries.entry(pr.size).or_insert(0);
                *t += 1;
                pr.size <= p && *t == MAX_PROBES
            });
            let mut clean = PathMtu::new(1200, 1500, 0);
            converge(&mut clean, &mut 0, path(p));
            assert_eq!(m.current(), clean.current(), "path {p}");
        }
    }

    #[test]
    fn too_big_lowers_current_at_once_and_bounds_probes() {
        let (mut m, mut now) = (PathMtu::new(1200, 1500, 0).with_raise_after(5_000), 0);
        converge(&mut m, &mut now, path(1500));
        m.on_too_big(1400, now);
        assert_eq!(m.current(), 1400);
        for t in (now..now + 20_000).step_by(100) {
            assert_eq!(m.poll_probe(t, TO), None, "settled at the kernel's bound");
        }
        m.on_too_big(1000, now);
        assert_eq!(m.current(), 1200, "base is the floor");

        // EMSGSIZE during the search: the kernel's value is tried next, without a timeout.
        let mut m = PathMtu::new(1200, 1500, 0);
        assert_eq!(m.poll_probe(0, TO).map(|p| p.size), Some(1500));
        m.on_too_big(1450, 1);
        assert_eq!(m.poll_probe(1, TO).map(|p| p.size), Some(1450));
        let mut now = 1 + TO; // that one was lost
        converge(&mut m, &mut now, |p| {
            assert!(p.size <= 1450);
            p.size <= 1420
        });
        assert!(m.current() > 1412 && m.current() <= 1420, "{m:?}");
    }

    #[test]
    fn set_max_restarts_the_search_with_the_new_bound() {
        let (mut m, mut now) = (PathMtu::new(1280, 1500, 0), 0);
        m.on_too_big(1400, 0);
        assert_eq!(converge(&mut m, &mut now, path(9000)), (1, RTT));
        assert_eq!(m.current(), 1400, "the kernel's bound is tried first");
        // A new link: its max replaces the old link's too-big bound.
        m.set_max(9000, now);
        assert!(!m.settled());
        assert_eq!(converge(&mut m, &mut now, path(9000)), (1, RTT));
        assert_eq!(m.current(), 9000);
        m.set_max(1400, now);
        assert_eq!(m.current(), 1400, "never above the max");
    }

    #[test]
    fn reset_falls_back_to_base_and_searches_below_the_black_hole() {
        let (mut m, mut now) = (PathMtu::new(1200, 1500, 0), 0);
        converge(&mut m, &mut now, path(1500));
        m.reset(now);
        assert_eq!(m.current(), 1200);
        let mut first = None;
        converge(&mut m, &mut now, |p| {
            first.get_or_insert(p.size);
            p.size <= 1400
        });
        assert!(
            first < Some(1500),
            "the black-holed size is not tried first"
        );
        assert!(1400 - m.current() < RESOLUTION, "{m:?}");
    }

    #[test]
    fn raise_timer_reprobes_and_finds_a_larger_path() {
        let (mut m, mut now) = (PathMtu::new(1200, 1500, 0).with_raise_after(10_000), 0);
        converge(&mut m, &mut now, path(1400));
        let cur = m.current();
        m.on_too_big(1500, now + 5_000); // a repeated report does not postpone the timer
        assert_eq!(m.poll_probe(now + 9_999, TO), None);
        // Still 1400: the re-probe of the failed size is lost MAX_PROBES times, and the
        // search settles again where it was.
        now += 10_000;
        let p = m.poll_probe(now, TO).expect("raise timer fired");
        assert!(p.size > cur && p.size < 1500 - RESOLUTION, "{p:?}");
        now += TO;
        let (n, _) = converge(&mut m, &mut now, path(1400));
        assert_eq!((n + 1, m.current()), (u32::from(MAX_PROBES), cur));
        // The path grew: the next re-probe succeeds and the search goes on to the max.
        now += 10_000;
        let p = m.poll_probe(now, TO).expect("raise timer re-armed");
        assert!(p.size > m.current() && p.size < 1500 - RESOLUTION, "{p:?}");
        m.on_ack(p.id, now + RTT);
        now += RTT;
        assert_eq!(converge(&mut m, &mut now, path(1500)), (1, RTT));
        assert_eq!(m.current(), 1500);
    }

    #[test]
    fn stale_and_unknown_ids_are_ignored_late_acks_count() {
        let mut m = PathMtu::new(1200, 1500, 0);
        let p = m.poll_probe(0, TO).unwrap();
        m.on_ack(p.id + 100, 1);
        assert_eq!(m.current(), 1200, "unknown id");
        m.reset(2);
        m.on_ack(p.id, 3);
        assert_eq!(
            m.current(),
            1200,
            "a probe from before a reset proves nothing"
        );

        // 1500 given up after MAX_PROBES losses: a late ack still proves it.
        let mut m = PathMtu::new(1200, 1500, 0);
        let ids: Vec<u64> = (0..3)
            .map(|i| m.poll_probe(i * TO, TO).unwrap().id)
            .collect();
        assert_eq!(m.poll_probe(3 * TO, TO).map(|p| p.size), Some(1350));
        m.on_ack(ids[0], 3 * TO + 1);
        assert_eq!(m.current(), 1500);
        assert!(m.settled());
        m.on_too_big(1400, 3 * TO + 2);
        m.on_ack(ids[1], 3 * TO + 3);
        assert_eq!(m.current(), 1400, "never above the kernel's mtu");
    }
}
