//! The whole protocol under an adversary's schedule: the simulation's client core,
//! gateway core (over the in-memory data plane) and exit engine, driven by a
//! sequence of operations read from the input — time passing, links going down and
//! up, NAT rebindings, traffic, network faults, operator calls, and any datagram
//! seen so far replayed, redirected to another address or changed in one byte.
//! Invariants, checked after every datagram by the simulation (`jvpn_ctl::sim`):
//! every forwarding entry names an address the client sent from and the
//! controller's binding for it; no more entries than sessions; the client's session
//! id changes only through TERMINATED. Nothing may panic. Crypto is real; the
//! gateway's ids and challenges come from the input's seed.

#![no_main]

use std::net::SocketAddr;

use jvpn_ctl::{
    control::api::{Request, SessionId},
    sim::{
        World, WorldConfig,
        net::{Datagram, Faults},
    },
};
use libfuzzer_sys::fuzz_target;

const ATTACKER: &str = "10.66.0.9:4444";
/// Virtual time one input may take: past the recovery window (1.5 s here) and a
/// reconnect (1 s) after it, so an input can end a session and start the next. Time
/// is what an execution costs (the client's 10 ms tick, keepalives on three
/// transports): without the bound an input of 64 long waits ran 160 s of it and the
/// target made ~165 exec/s.
const BUDGET_MS: u64 = 3_000;

fn config(seed: u64) -> WorldConfig {
    let mut cfg = WorldConfig::new(seed);
    // The simulation's windows shortened so that the budget reaches past them.
    cfg.policy.max_recovery_window_ms = 1_500;
    cfg.policy.candidate_ttl_ms = 1_000;
    cfg
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, ops)) = data.split_first_chunk::<8>() else {
        return;
    };
    let cfg = config(u64::from_le_bytes(*seed));
    debug_assert!(cfg.policy.validate().is_ok());
    let mut w = World::new(cfg);
    w.capture = true;
    let attacker: SocketAddr = ATTACKER.parse().unwrap();
    let mut ops = ops.iter().copied();
    let mut steps = 0;
    let end = w.now + BUDGET_MS;
    while let Some(op) = ops.next() {
        steps += 1;
        if steps > 64 || w.now >= end {
            break;
        }
        let arg = ops.next().unwrap_or(0);
        let t = usize::from(arg) % 3;
        match op % 10 {
            0 => {}
            1 => w.link(t, arg & 0x80 != 0),
            2 => w.rebind(t, 41_000 + u16::from(arg)),
            // Inner traffic of either family (the simulated tunnel is dual-stack).
            3 if arg & 1 == 0 => w.send_app(&[arg; 16]),
            3 => w.send_app6(&[arg; 16]),
            4 | 5 | 6 if !w.captured.is_empty() => {
                let i = usize::from(ops.next().unwrap_or(0)) % w.captured.len();
                let mut d = w.captured[i].clone();
                match op % 10 {
                    4 => {}
                    5 => d.from = attacker,
                    _ => {
                        let at = usize::from(ops.next().unwrap_or(0)) % d.data.len().max(1);
                        if let Some(b) = d.data.get_mut(at) {
                            *b ^= arg | 1;
                        }
                    }
                }
                w.inject(Datagram { ..d });
            }
            7 => w.faults(
                t,
                Faults {
                    loss: u32::from(arg % 8) * 25,
                    duplicate: u32::from(arg / 8 % 4) * 50,
                    delay_ms: (1, 1 + u64::from(arg % 32)),
                    reorder: u32::from(arg / 32) * 100,
                    reorder_ms: 20,
                },
            ),
            8 => {
                if let Some(id) = w.client.session_id() {
                    let req = if arg & 1 == 0 {
                        Request::Kill { id: SessionId(id) }
                    } else {
                        Request::Sessions
                    };
                    let _ = w.gw_request(&req);
                }
            }
            _ => {}
        }
        // Time passes after every operation: 0..2.55 s, within the budget.
        if let Err(v) = w.run_for((u64::from(arg) * 10).min(end - w.now)) {
            panic!("{}", v.0);
        }
        // Keep the replay pool bounded (and the run fast).
        if w.captured.len() > 256 {
            w.captured.drain(..128);
        }
    }
});
