//! The counting sink: `xdp_sink` on the receiving end of a path under test counts
//! every frame (per CPU, optionally per session) and drops it. On a veth it also
//! serves as the XDP program that native redirects into the veth need on the peer.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap},
};
use jvpn_common::bench::{MISROUTE_WINDOWS, MisrouteWindow, SinkStats, sink_mode};

use super::BenchError;
use crate::datapath::AttachMode;

pub const SINK_PROGRAM: &str = "xdp_sink";
const STATS_MAP: &str = "SINK_STATS";
const SESSIONS_MAP: &str = "SINK_SESSIONS";
const WINDOWS_MAP: &str = "SINK_WINDOWS";

/// What the sink does with each frame besides counting and dropping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkMode {
    /// Nothing: the cheapest receiver.
    Count,
    /// Parse it with the relay's parser and count valid DATA to the port.
    Parse,
    /// Also count DATA per session id, for up to `capacity` sessions.
    PerSession { capacity: u32 },
    /// Parse, and count DATA frames that fall in a misroute window
    /// ([`Sink::set_window`]) as `misrouted`.
    Misroute,
}

pub struct Sink {
    ebpf: Ebpf,
    iface: String,
}

impl Sink {
    /// Loads the sink and attaches it to `iface` (in the calling thread's namespace).
    /// It stays attached until the `Sink` is dropped.
    pub fn attach(
        iface: &str,
        port: u16,
        mode: SinkMode,
        attach: AttachMode,
    ) -> Result<Self, BenchError> {
        let (code, capacity) = match mode {
            SinkMode::Count => (sink_mode::COUNT, 1),
            SinkMode::Parse => (sink_mode::PARSE, 1),
            SinkMode::PerSession { capacity } => (sink_mode::PER_SESSION, capacity.max(1)),
            SinkMode::Misroute => (sink_mode::MISROUTE, 1),
        };
        let mut loader = super::loader();
        loader
            .map_max_entries(SESSIONS_MAP, capacity)
            .override_global("SINK_PORT", &port, true)
            .override_global("SINK_MODE", &code, true);
        let ebpf = super::load_attached(&mut loader, SINK_PROGRAM, iface, attach)?;
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
        })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<SinkStats, BenchError> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or(BenchError::MissingMap(STATS_MAP))?;
        let map_err = |cause| BenchError::Map {
            name: STATS_MAP,
            cause,
        };
        let arr: PerCpuArray<&MapData, SinkStats> = PerCpuArray::try_from(map).map_err(map_err)?;
        let mut total = SinkStats::default();
        arr.get(&0, 0)
            .map_err(map_err)?
            .iter()
            .for_each(|s| total.merge(s));
        Ok(total)
    }

    /// Writes misroute window `slot` (0..[`MISROUTE_WINDOWS`]); misroute mode.
    pub fn set_window(&mut self, slot: u32, w: &MisrouteWindow) -> Result<(), BenchError> {
        if slot >= MISROUTE_WINDOWS {
            return Err(BenchError::Invalid(format!(
                "misroute window {slot} out of range (0..{MISROUTE_WINDOWS})"
            )));
        }
        let map = self
            .ebpf
            .map_mut(WINDOWS_MAP)
            .ok_or(BenchError::MissingMap(WINDOWS_MAP))?;
        let map_err = |cause| BenchError::Map {
            name: WINDOWS_MAP,
            cause,
        };
        let mut arr: Array<&mut MapData, MisrouteWindow> = Array::try_from(map).map_err(map_err)?;
        arr.set(slot, w, 0).map_err(map_err)
    }

    /// DATA frames per session id, summed over CPUs (per-session mode; empty otherwise).
    pub fn sessions(&self) -> Result<BTreeMap<u64, u64>, BenchError> {
        let map = self
            .ebpf
            .map(SESSIONS_MAP)
            .ok_or(BenchError::MissingMap(SESSIONS_MAP))?;
        let map_err = |cause| BenchError::Map {
            name: SESSIONS_MAP,
            cause,
        };
        let h: PerCpuHashMap<&MapData, u64, u64> = PerCpuHashMap::try_from(map).map_err(map_err)?;
        let mut out = BTreeMap::new();
        for item in h.iter() {
            let (sid, per_cpu) = item.map_err(map_err)?;
            out.insert(sid, per_cpu.iter().sum());
        }
        Ok(out)
    }
}
