//! DATA packets (`proto::data`) and the receivers' anti-replay window. A raw packet
//! is opened under a key that never sealed it; then the input, read as
//! (session id, counter, plaintext), is sealed and opened, and a tampered copy is
//! refused; what is left drives `ReplayWindow` against a model of what it must
//! accept (a counter above every one seen, or within the window and never seen).
//! The plaintext also goes through the exit's and the client's decoders of what a
//! tunnel carries (`tunnel_ctl`).

#![no_main]

use std::collections::BTreeSet;

use jvpn_ctl::proto::{
    DataKey, ReplayWindow,
    data::{self, REPLAY_WINDOW, tunnel_ctl},
};
use libfuzzer_sys::fuzz_target;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, v) in b.iter().skip(at).take(8).enumerate() {
        w[i] = *v;
    }
    u64::from_le_bytes(w)
}

fuzz_target!(|input: &[u8]| {
    let key = DataKey::new(&[5; 32]);
    let _ = data::peek_session(input);
    let mut raw = input.to_vec();
    assert!(data::open(&key, &mut raw).is_err(), "a packet nobody sealed opened");

    let (sid, ctr) = (u64_at(input, 0), u64_at(input, 8));
    let plain = input.get(16..).unwrap_or(&[]);
    let _ = tunnel_ctl::parse_mtu_notice(plain);
    let mut sealed = Vec::new();
    data::seal(&key, sid, ctr, plain, &mut sealed);
    if sid == 0 {
        // Session id 0 is HELLO's: no DATA header carries it.
        assert!(data::peek_session(&sealed).is_err());
        assert!(data::open(&key, &mut sealed).is_err());
        return;
    }
    assert_eq!(data::peek_session(&sealed).ok(), Some(sid));
    let mut tampered = sealed.clone();
    let at = (ctr as usize) % tampered.len();
    tampered[at] ^= 0x80;
    assert!(data::open(&key, &mut tampered).is_err(), "a changed packet opened");
    let (s, c, p) = data::open(&key, &mut sealed).expect("a sealed packet opens");
    assert_eq!((s, c, p), (sid, ctr, plain));

    // Counters: each pair of plaintext bytes moves the next one forward or back.
    let mut w = ReplayWindow::new();
    let mut seen = BTreeSet::new();
    let mut highest: Option<u64> = None;
    let mut next = ctr >> 8;
    for step in plain.chunks(2) {
        let d = u64::from(u16::from_le_bytes([step[0], *step.get(1).unwrap_or(&0)]));
        next = if d & 1 == 0 {
            next.saturating_add(d >> 1)
        } else {
            next.saturating_sub((d >> 1) % (2 * REPLAY_WINDOW))
        };
        let want = match highest {
            None => true,
            Some(h) if next > h => true,
            Some(h) => h - next < REPLAY_WINDOW && !seen.contains(&next),
        };
        assert_eq!(w.check(next), want, "check({next}) after {highest:?}");
        assert_eq!(w.update(next), want, "update({next}) after {highest:?}");
        if want {
            seen.insert(next);
            highest = Some(highest.map_or(next, |h| h.max(next)));
        }
    }
});
