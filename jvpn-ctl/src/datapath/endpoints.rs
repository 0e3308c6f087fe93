//! `ENDPOINTS`: the gateway's own addresses and the exit's, which slot copies
//! (jvpn_common::hot) name by a one-byte index. An index is written once, before any
//! copy names it, and never rewritten while the pins live, so a copy read at any
//! moment names what it was written with. A gateway has a handful of these; when all
//! 256 are taken (addresses changed that often without a fresh pin directory), new
//! sessions simply get no copy and are looked up in `SESSIONS`.

use std::collections::HashMap;

use aya::maps::{Array, MapData, MapError};
use jvpn_common::{hot::ENDPOINTS_MAX, maps::Endpoint};

pub struct Endpoints {
    map: Array<MapData, Endpoint>,
    index: HashMap<Endpoint, u8>,
    /// Indices written so far (they are handed out in order).
    used: u32,
    warned: bool,
}

fn key(e: &Endpoint) -> Endpoint {
    Endpoint { _pad: [0; 5], ..*e }
}

impl Endpoints {
    /// What an earlier run wrote (pins outlive the controller).
    pub fn open(map: Array<MapData, Endpoint>) -> Result<Self, MapError> {
        let mut index = HashMap::new();
        let mut used = 0;
        for i in 0..ENDPOINTS_MAX {
            let e = map.get(&i, 0)?;
            if e.is_valid() {
                index.entry(key(&e)).or_insert(i as u8);
                used = i + 1;
            }
        }
        Ok(Self {
            map,
            index,
            used,
            warned: false,
        })
    }

    /// The index of `e`, written now if it is new (None: the table is full or the
    /// write failed; the caller leaves the session without a copy).
    pub fn index(&mut self, e: &Endpoint) -> Option<u8> {
        let k = key(e);
        if let Some(&i) = self.index.get(&k) {
            return Some(i);
        }
        if self.used >= ENDPOINTS_MAX {
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    "all {ENDPOINTS_MAX} ENDPOINTS indices are taken: new sessions are looked \
                     up in SESSIONS (slower, still correct) until the pin directory is recreated"
                );
            }
            return None;
        }
        let i = self.used;
        if let Err(err) = self.map.set(i, k, 0) {
            tracing::warn!(index = i, "writing ENDPOINTS failed: {err}");
            return None;
        }
        self.used += 1;
        self.index.insert(k, i as u8);
        Some(i as u8)
    }
}
