//! Read-only access to a running data plane through its pins, without loading
//! anything: for status commands and for a controller that wants to look first.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use jvpn_common::{
    maps::SessionEntry,
    nexthop::{Hop, NextHop},
};

use super::{DROPS, DatapathError, Drops, NEXT_HOPS, SESSIONS, privilege};

pub struct Pinned {
    dir: PathBuf,
    sessions: HashMap<MapData, u64, SessionEntry>,
    drops: PerCpuArray<MapData, u64>,
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(DatapathError::BpfFs {
            path,
            detail: "no pinned data plane here (is `jvpn-ctl datapath up` running or was it ever started?)".into(),
        });
    }
    MapData::from_pin(&path).map_err(|cause| DatapathError::Map { name, cause })
}

impl Pinned {
    pub fn open(dir: &Path) -> Result<Self, DatapathError> {
        privilege::check()?;
        let map_err = |name| move |cause| DatapathError::Map { name, cause };
        Ok(Self {
            dir: dir.to_path_buf(),
            sessions: HashMap::try_from(Map::HashMap(open(dir, SESSIONS)?))
                .map_err(map_err(SESSIONS))?,
            drops: PerCpuArray::try_from(Map::PerCpuArray(open(dir, DROPS)?))
                .map_err(map_err(DROPS))?,
        })
    }

    pub fn session_count(&self) -> usize {
        self.sessions.keys().filter(Result::is_ok).count()
    }

    /// Session `id`'s entry as the relay sees it (`None`: the relay drops its
    /// packets as unknown).
    pub fn entry(&self, id: u64) -> Option<SessionEntry> {
        self.sessions.get(&id, 0).ok()
    }

    pub fn drops(&self) -> Result<Drops, DatapathError> {
        super::sum_drops(&self.drops)
    }

    /// The valid entries of the next-hop table, by slot (empty: no controller keeps
    /// it, or a data plane pinned before it: every packet takes the FIB).
    pub fn next_hops(&self) -> Result<Vec<(u16, Hop)>, DatapathError> {
        let path = self.dir.join(NEXT_HOPS);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let map = MapData::from_pin(&path).map_err(|cause| DatapathError::Map {
            name: NEXT_HOPS,
            cause,
        })?;
        let arr: Array<MapData, NextHop> =
            Array::try_from(Map::Array(map)).map_err(|cause| DatapathError::Map {
                name: NEXT_HOPS,
                cause,
            })?;
        // Read as the relay reads it: through a mapping, one load per word.
        let view =
            super::mapping::Mapping::new(&arr, false).map_err(|cause| DatapathError::Io {
                what: format!("mapping {NEXT_HOPS}"),
                cause,
            })?;
        Ok((1..view.len())
            .filter_map(|slot| {
                let p = view.get(slot)?.cast::<u64>();
                // SAFETY: inside the mapping, 8-aligned; volatile: the controller writes it.
                let w: [u64; 3] = std::array::from_fn(|i| unsafe { p.add(i).read_volatile() });
                NextHop::decode(w).map(|h| (slot as u16, h))
            })
            .collect())
    }

    /// Interfaces with a pinned relay link.
    pub fn attached(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(super::pin::LINK_PREFIX)
                    .map(String::from)
            })
            .collect();
        v.sort();
        v
    }
}
