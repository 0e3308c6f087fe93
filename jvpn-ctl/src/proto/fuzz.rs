//! Test-only mutation fuzzing shared by every decoder's tests: each message gets the
//! same treatment (every truncation, trailing bytes, every single-bit flip, thousands
//! of seeded random strings), so no decoder can be forgotten or tested more weakly.

/// SplitMix64: deterministic, seedable, good enough to generate test inputs.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        crate::splitmix::next(&mut self.0)
    }
}

const RANDOM_CASES: usize = 3000;

/// Random inputs; half of them start with a prefix of `valid` (so they get past the
/// header check and reach the body parser) and a third have exactly the valid length.
fn random_inputs(valid: &[u8], mut f: impl FnMut(&[u8])) {
    let mut rng = Rng(0xf022 ^ valid.len() as u64);
    for i in 0..RANDOM_CASES {
        let len = if i.is_multiple_of(3) {
            valid.len()
        } else {
            (rng.next() % (2 * valid.len() as u64 + 8)) as usize
        };
        let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i.is_multiple_of(2) && !valid.is_empty() {
            let k = ((rng.next() % valid.len() as u64) as usize + 1).min(len);
            v[..k].copy_from_slice(&valid[..k]);
        }
        if v != valid {
            f(&v);
        }
    }
}

/// Every mutation of `valid` is fed to `f`, which must simply not panic.
pub fn never_panics(valid: &[u8], mut f: impl FnMut(&[u8])) {
    for len in 0..=valid.len() {
        f(&valid[..len]);
    }
    for bit in 0..valid.len() * 8 {
        let mut v = valid.to_vec();
        v[bit / 8] ^= 1 << (bit % 8);
        f(&v);
    }
    random_inputs(valid, f);
}

/// For an authenticated message: `accepts(valid)` is true, and every truncation,
/// extension, single-bit flip and random string is refused (and nothing panics).
pub fn authenticated(valid: &[u8], mut accepts: impl FnMut(&[u8]) -> bool) {
    assert!(accepts(valid), "the unmodified message must be accepted");
    for len in 0..valid.len() {
        assert!(
            !accepts(&valid[..len]),
            "accepted truncation to {len} bytes"
        );
    }
    for extra in [1usize, 2, 32, 100] {
        let mut v = valid.to_vec();
        v.resize(valid.len() + extra, 0);
        assert!(!accepts(&v), "accepted {extra} trailing bytes");
    }
    for bit in 0..valid.len() * 8 {
        let mut v = valid.to_vec();
        v[bit / 8] ^= 1 << (bit % 8);
        assert!(!accepts(&v), "accepted a flip of bit {bit}");
    }
    for i in 0..valid.len() {
        let mut v = valid.to_vec();
        v[i] ^= 0xff;
        assert!(!accepts(&v), "accepted an inverted byte {i}");
    }
    random_inputs(valid, |b| {
        assert!(!accepts(b), "accepted random input {b:02x?}")
    });
}
