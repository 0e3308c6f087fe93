//! The XDP gate's settings (`HELLO_CONFIG`) and cookie keys (`COOKIE_KEYS`): the
//! HELLO budget, the cookies under load, the per-session control budgets
//! (docs/datapath.md, "The HELLO gate and control budgets"; docs/protocol.md, "Under
//! load: cookies").
//!
//! Both maps are pinned like the others, so the gate and its keys survive a controller
//! restart. Until a controller writes `HELLO_CONFIG` (a data plane pinned by an older
//! build gets both maps created empty) the gate is off and the relay passes HELLOs and
//! control messages as before.

use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use jvpn_common::maps::{CookieKey, HelloConfig};
use ring::rand::{SecureRandom as _, SystemRandom};

use super::{BPF_ANY, COOKIE_KEYS, DatapathError, HELLO_CONFIG};

/// The gate's limits as the gateway configures them (`[limits]`). Rates are per second,
/// bursts in packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateLimits {
    pub hello_budget_pps: u32,
    pub hello_budget_burst: u32,
    pub hello_per_source_pps: u32,
    pub hello_per_source_burst: u32,
    pub load_hold_ms: u32,
    pub control_binding_pps: u32,
    pub control_binding_burst: u32,
    pub control_other_pps: u32,
    pub control_other_burst: u32,
    /// How often the cookie key is replaced; a cookie is valid for one to two periods.
    pub cookie_rotate: Duration,
}

impl Default for GateLimits {
    /// The per-source defaults are WireGuard's (20 per second, burst 5).
    fn default() -> Self {
        Self {
            hello_budget_pps: 4_000,
            hello_budget_burst: 4_000,
            hello_per_source_pps: 20,
            hello_per_source_burst: 5,
            load_hold_ms: 1_000,
            control_binding_pps: 100,
            control_binding_burst: 200,
            control_other_pps: 50,
            control_other_burst: 100,
            cookie_rotate: Duration::from_secs(120),
        }
    }
}

impl GateLimits {
    fn config(&self, cookie_seq: u32) -> HelloConfig {
        HelloConfig {
            enabled: 1,
            cookie_seq,
            hello_budget_pps: self.hello_budget_pps,
            hello_budget_burst: self.hello_budget_burst,
            hello_per_source_pps: self.hello_per_source_pps,
            hello_per_source_burst: self.hello_per_source_burst,
            control_binding_pps: self.control_binding_pps,
            control_binding_burst: self.control_binding_burst,
            control_other_pps: self.control_other_pps,
            control_other_burst: self.control_other_burst,
            load_hold_ms: self.load_hold_ms,
            _pad: 0,
        }
    }
}

pub(super) struct Gate {
    config: Array<MapData, HelloConfig>,
    keys: Array<MapData, CookieKey>,
    rng: SystemRandom,
    /// Rotation period and the last rotation (or the start), while the gate is on.
    rotation: Option<(Duration, Instant)>,
}

fn config_err(cause: aya::maps::MapError) -> DatapathError {
    DatapathError::Map {
        name: HELLO_CONFIG,
        cause,
    }
}

fn keys_err(cause: aya::maps::MapError) -> DatapathError {
    DatapathError::Map {
        name: COOKIE_KEYS,
        cause,
    }
}

impl Gate {
    pub(super) fn new(
        config: Array<MapData, HelloConfig>,
        keys: Array<MapData, CookieKey>,
    ) -> Self {
        Self {
            config,
            keys,
            rng: SystemRandom::new(),
            rotation: None,
        }
    }

    pub(super) fn config(&self) -> Result<HelloConfig, DatapathError> {
        self.config.get(&0, 0).map_err(config_err)
    }

    pub(super) fn keys(&self) -> Result<[CookieKey; 2], DatapathError> {
        Ok([
            self.keys.get(&0, 0).map_err(keys_err)?,
            self.keys.get(&1, 0).map_err(keys_err)?,
        ])
    }

    fn new_key(&mut self, slot: u32) -> Result<(), DatapathError> {
        let mut k = [0u8; 16];
        self.rng.fill(&mut k).map_err(|_| DatapathError::Io {
            what: "drawing a cookie key".into(),
            cause: std::io::Error::other("the system random generator failed"),
        })?;
        self.keys
            .set(slot, CookieKey::from_bytes(&k), BPF_ANY)
            .map_err(keys_err)
    }

    /// Turns the gate on with `limits`. The keys and sequence number a pinned data
    /// plane already uses are kept (cookies handed out before a restart stay valid);
    /// a gate that was never on gets two fresh keys before it is switched on, so no
    /// cookie is ever checked against an unwritten (all-zero) key.
    pub(super) fn enable(&mut self, limits: &GateLimits) -> Result<(), DatapathError> {
        let cur = self.config()?;
        let keys = self.keys()?;
        if cur.enabled == 0 || keys.iter().any(CookieKey::is_zero) {
            self.new_key(0)?;
            self.new_key(1)?;
        }
        self.config
            .set(0, limits.config(cur.cookie_seq), BPF_ANY)
            .map_err(config_err)?;
        self.rotation = Some((limits.cookie_rotate, Instant::now()));
        Ok(())
    }

    /// Turns the gate off: HELLOs and control messages pass as without it.
    pub(super) fn disable(&mut self) -> Result<(), DatapathError> {
        let cur = self.config()?;
        self.config
            .set(0, HelloConfig { enabled: 0, ..cur }, BPF_ANY)
            .map_err(config_err)?;
        self.rotation = None;
        Ok(())
    }

    /// Moves to the next cookie sequence number: its key slot (`(seq + 1) & 1`, the one
    /// the previous-but-one period used) gets a fresh key first, then the sequence
    /// number moves, so the XDP program never signs with a half-written current key.
    /// Cookies of the period just ended stay valid for one more period.
    pub(super) fn rotate(&mut self) -> Result<u32, DatapathError> {
        let cur = self.config()?;
        let next = cur.cookie_seq.wrapping_add(1);
        self.new_key(next & 1)?;
        self.config
            .set(
                0,
                HelloConfig {
                    cookie_seq: next,
                    ..cur
                },
                BPF_ANY,
            )
            .map_err(config_err)?;
        if let Some((_, last)) = &mut self.rotation {
            *last = Instant::now();
        }
        Ok(next)
    }

    /// Rotates if the gate is on and its period has passed.
    pub(super) fn rotate_if_due(&mut self, now: Instant) -> Result<Option<u32>, DatapathError> {
        match self.rotation {
            Some((period, last)) if now.duration_since(last) >= period => self.rotate().map(Some),
            _ => Ok(None),
        }
    }
}
