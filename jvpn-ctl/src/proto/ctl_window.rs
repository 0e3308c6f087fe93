//! Anti-replay for control-message counters.
//!
//! Control messages of one session share one counter but may travel over different
//! transports (a client probes all of them), so they can arrive slightly out of
//! order. A strict "greater than the last" rule would count every reordered keepalive
//! as a replay; a 64-counter window accepts them once each and still refuses
//! duplicates and anything older, in 16 bytes per session.

/// Sliding window over the last 64 control counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtlWindow {
    /// Highest counter accepted (0: none yet; counters start at 1).
    highest: u64,
    /// Bit i set: counter `highest - i` was accepted.
    seen: u64,
}

impl CtlWindow {
    pub const WIDTH: u64 = 64;

    /// Checks and records `ctr`; false = zero, a duplicate, or more than 63 behind.
    pub fn update(&mut self, ctr: u64) -> bool {
        if ctr == 0 {
            return false;
        }
        if ctr > self.highest {
            let shift = ctr - self.highest;
            self.seen = if shift >= Self::WIDTH {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = ctr;
            return true;
        }
        let behind = self.highest - ctr;
        if behind >= Self::WIDTH || self.seen & (1 << behind) != 0 {
            return false;
        }
        self.seen |= 1 << behind;
        true
    }

    /// A window resumed from a stored high-water mark: everything up to it counts as
    /// seen (the bitmap is not stored), so nothing it accepted before is taken again.
    pub fn resume(highest: u64) -> Self {
        Self {
            highest,
            seen: u64::MAX,
        }
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn in_order_reordered_duplicate_and_old() {
        let mut w = CtlWindow::default();
        assert!(!w.update(0));
        assert!(w.update(5));
        assert!(w.update(3), "reordered within the window");
        assert!(!w.update(3), "duplicate");
        assert!(!w.update(5), "duplicate of the highest");
        assert!(w.update(70));
        assert!(w.update(7), "63 behind is still inside");
        assert!(!w.update(6), "64 behind is outside");
        assert!(w.update(1000));
        assert!(!w.update(70));
        assert_eq!(w.highest(), 1000);
    }

    /// Against a model: accepted iff never seen and within 63 of the highest so far.
    #[test]
    fn matches_model() {
        let mut w = CtlWindow::default();
        let mut seen = HashSet::new();
        let mut highest = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ctr = (i / 2 + x % 100).max(1);
            let want = !seen.contains(&ctr) && ctr + CtlWindow::WIDTH > highest;
            assert_eq!(w.update(ctr), want, "ctr {ctr} highest {highest}");
            if want {
                seen.insert(ctr);
                highest = highest.max(ctr);
            }
        }
    }
}
