//! The only code that touches the data plane: loads the XDP object, attaches it,
//! and owns the `SESSIONS`, `SESSION_STATS` and `DROPS` maps and the gate's
//! `HELLO_CONFIG` and `COOKIE_KEYS` (the controller's writes all go through
//! [`Datapath`]).
//!
//! Maps and XDP links are pinned under [`DatapathConfig::pin_dir`], so the relay keeps
//! forwarding while the controller restarts; a restart reuses the maps (after checking
//! their layout) and atomically swaps the new program into the existing links.

mod attach;
mod endpoints;
mod error;
mod gate;
mod mapping;
mod model;
mod nexthop;
mod pin;
mod pinned;
mod plane;
mod privilege;
mod sessions;
mod slots;
mod stats_view;

use std::path::PathBuf;

pub use attach::{AttachMode, detach, interface_index};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, MapType, PerCpuArray},
    programs::{ProgramError, Xdp},
};
pub use error::DatapathError;
pub use gate::GateLimits;
use jvpn_common::{
    DEFAULT_MAX_SESSIONS, DEFAULT_PORT, counters,
    hot::ENDPOINTS_MAX,
    maps::{
        CookieKey, Endpoint, HELLO_SOURCES_MAX, HelloConfig, HelloState, SessionEntry,
        SessionStats, SourceKey,
    },
    nexthop::{Hop, NEXT_HOPS_MAX, NextHop},
};
pub use model::{MemPlane, Relayed};
pub use nexthop::HopStats;
pub use pin::prepare_dir as prepare_pin_dir;
pub use pinned::Pinned;
pub use plane::DataPlane;
pub use privilege::check as check_privilege;

/// The XDP object built by `build.rs` from `jvpn-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jvpn"));

/// The relay, the one program of the product object.
pub const RELAY_PROGRAM: &str = "jvpn_relay";
/// Programs of the benchmark object (`bench::BENCH_OBJECT`) that labs and the
/// benchmark attach through a [`Datapath`]; it loads that object only when asked.
pub const DROP_PROGRAM: &str = "bench_drop";
pub const PASS_PROGRAM: &str = "xdp_pass";

const SESSIONS: &str = "SESSIONS";
const SESSION_STATS: &str = "SESSION_STATS";
const DROPS: &str = "DROPS";
const HELLO_CONFIG: &str = "HELLO_CONFIG";
const COOKIE_KEYS: &str = "COOKIE_KEYS";
const HELLO_STATE: &str = "HELLO_STATE";
const HELLO_SOURCES: &str = "HELLO_SOURCES";
const NEXT_HOPS: &str = "NEXT_HOPS";
const ENDPOINTS: &str = "ENDPOINTS";

// bpf_map_update_elem flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// UDP port of the protocol on the gateway.
    pub port: u16,
    /// Capacity of `SESSIONS` (and `SESSION_STATS`); fixed for the life of the pins.
    pub max_sessions: u32,
    /// Where maps and links are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// Log every rejected packet through aya-log (slow; for debugging only).
    pub debug_log: bool,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            pin_dir: PathBuf::from("/sys/fs/bpf/jvpn"),
            debug_log: false,
        }
    }
}

/// Drop counters by reason, summed over CPUs; index with `jvpn_common::counters`.
pub type Drops = [u64; counters::COUNT as usize];

pub struct Datapath {
    cfg: DatapathConfig,
    ebpf: Ebpf,
    /// `SESSIONS`, and `SESSION_STATS` mapped: the controller's polling reads it, the
    /// entries' copies are written through it.
    table: sessions::Sessions,
    /// Kept for its file descriptor, which the mapping needs alive.
    _stats: Array<MapData, SessionStats>,
    slots: slots::Slots,
    drops: PerCpuArray<MapData, u64>,
    gate: gate::Gate,
    next_hops_map: Array<MapData, NextHop>,
    /// The next-hop table, when this process follows the network for it
    /// ([`Datapath::enable_next_hops`]); without it sessions get no hops (the FIB).
    hops: Option<nexthop::NextHops>,
    /// The benchmark object, loaded the first time one of its programs is asked for
    /// (labs' `xdp_pass`, the benchmark's `bench_drop`); never by a gateway.
    aux: Option<Ebpf>,
    _logger: Option<attach::LogPump>,
}

impl Datapath {
    /// Loads the object (verifier included) and opens or creates the pinned maps.
    /// Attaches nothing: see [`Datapath::attach`].
    pub fn load(cfg: DatapathConfig) -> Result<Self, DatapathError> {
        privilege::check()?;
        pin::prepare_dir(&cfg.pin_dir)?;
        let sz = |n| u32::try_from(n).expect("small type");
        let expect = [
            pin::Expect {
                name: SESSIONS,
                map_type: MapType::Hash,
                key_size: 8,
                value_size: sz(size_of::<SessionEntry>()),
                max_entries: cfg.max_sessions,
            },
            pin::Expect {
                name: SESSION_STATS,
                map_type: MapType::Array,
                key_size: 4,
                value_size: sz(size_of::<SessionStats>()),
                max_entries: cfg.max_sessions,
            },
            pin::Expect {
                name: DROPS,
                map_type: MapType::PerCpuArray,
                key_size: 4,
                value_size: 8,
                max_entries: counters::SLOTS,
            },
            pin::Expect {
                name: HELLO_CONFIG,
                map_type: MapType::Array,
                key_size: 4,
                value_size: sz(size_of::<HelloConfig>()),
                max_entries: 1,
            },
            pin::Expect {
                name: COOKIE_KEYS,
                map_type: MapType::Array,
                key_size: 4,
                value_size: sz(size_of::<CookieKey>()),
                max_entries: 2,
            },
            pin::Expect {
                name: HELLO_STATE,
                map_type: MapType::Array,
                key_size: 4,
                value_size: sz(size_of::<HelloState>()),
                max_entries: 1,
            },
            pin::Expect {
                name: HELLO_SOURCES,
                map_type: MapType::LruHash,
                key_size: sz(size_of::<SourceKey>()),
                value_size: 8,
                max_entries: HELLO_SOURCES_MAX,
            },
            pin::Expect {
                name: NEXT_HOPS,
                map_type: MapType::Array,
                key_size: 4,
                value_size: sz(size_of::<NextHop>()),
                max_entries: NEXT_HOPS_MAX,
            },
            pin::Expect {
                name: ENDPOINTS,
                map_type: MapType::Array,
                key_size: 4,
                value_size: sz(size_of::<Endpoint>()),
                max_entries: ENDPOINTS_MAX,
            },
        ];
        let paths: Vec<PathBuf> = expect.iter().map(|e| cfg.pin_dir.join(e.name)).collect();
        // A DROPS pinned by a build with fewer reasons is replaced (its counts restart);
        // the maps the gate added are created if missing, like any other.
        pin::replace_if_outdated(&paths[2], &expect[2], pin::Outdated::Entries)?;
        // SESSION_STATS of 64-byte slots (before the entries' copies) is replaced: the
        // counters restart, the sessions keep their slots.
        pin::replace_if_outdated(&paths[1], &expect[1], pin::Outdated::ValueSize(64))?;
        // Copies in a kept SESSION_STATS name ENDPOINTS indices: without that map they
        // would name endpoints nobody wrote (a program still attached reads its own).
        let endpoints_path = cfg.pin_dir.join(ENDPOINTS);
        if paths[1].exists() && !endpoints_path.exists() {
            return Err(DatapathError::Pin {
                path: endpoints_path,
                detail: format!(
                    "missing while {SESSION_STATS} is pinned: the pin directory is incomplete; \
                     stop jvpn and remove it (`jvpn-ctl datapath down --all`)"
                ),
            });
        }
        for (e, p) in expect.iter().zip(&paths) {
            pin::check_compatible(p, e)?;
        }

        let debug = u8::from(cfg.debug_log);
        let slot_mask = sessions::slot_mask(cfg.max_sessions);
        let mut loader = EbpfLoader::new();
        loader
            .override_global("JVPN_PORT", &cfg.port, true)
            .override_global("JVPN_DEBUG", &debug, true)
            .override_global("JVPN_SLOT_MASK", &slot_mask, true)
            .map_max_entries(SESSIONS, cfg.max_sessions)
            .map_max_entries(SESSION_STATS, cfg.max_sessions);
        for (e, p) in expect.iter().zip(&paths) {
            loader.map_pin_path(e.name, p.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DatapathError::Load)?;

        let logger = if cfg.debug_log {
            Some(attach::LogPump::start(&mut ebpf))
        } else {
            None
        };
        xdp_mut(&mut ebpf, RELAY_PROGRAM)?
            .load()
            .map_err(|cause| DatapathError::Program {
                name: RELAY_PROGRAM,
                cause,
            })?;
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
        };
        let map_err = |name| move |cause| DatapathError::Map { name, cause };
        let sessions = HashMap::try_from(map(&mut ebpf, SESSIONS)?).map_err(map_err(SESSIONS))?;
        let stats =
            Array::try_from(map(&mut ebpf, SESSION_STATS)?).map_err(map_err(SESSION_STATS))?;
        let drops = PerCpuArray::try_from(map(&mut ebpf, DROPS)?).map_err(map_err(DROPS))?;
        let gate = gate::Gate::new(
            Array::try_from(map(&mut ebpf, HELLO_CONFIG)?).map_err(map_err(HELLO_CONFIG))?,
            Array::try_from(map(&mut ebpf, COOKIE_KEYS)?).map_err(map_err(COOKIE_KEYS))?,
        );
        let next_hops_map =
            Array::try_from(map(&mut ebpf, NEXT_HOPS)?).map_err(map_err(NEXT_HOPS))?;
        let endpoints = endpoints::Endpoints::open(
            Array::try_from(map(&mut ebpf, ENDPOINTS)?).map_err(map_err(ENDPOINTS))?,
        )
        .map_err(map_err(ENDPOINTS))?;
        // Sessions kept by the pins from an earlier run hold their slots.
        let held = sessions
            .iter()
            .collect::<Result<Vec<(u64, SessionEntry)>, _>>()
            .map_err(map_err(SESSIONS))?;
        let slots = slots::Slots::rebuild(
            cfg.max_sessions,
            held.iter().map(|(id, e)| (*id, e.stats_slot)),
        )?;
        let view = stats_view::StatsView::new(&stats).map_err(|cause| DatapathError::Io {
            what: format!("mapping {SESSION_STATS}"),
            cause,
        })?;
        let mut table = sessions::Sessions::new(sessions, view, endpoints, cfg.max_sessions);
        table.rebuild_copies(&held);
        Ok(Self {
            cfg,
            ebpf,
            table,
            _stats: stats,
            slots,
            drops,
            gate,
            next_hops_map,
            hops: None,
            aux: None,
            _logger: logger.flatten(),
        })
    }

    /// A loaded program, e.g. for `BPF_PROG_TEST_RUN`: the relay, or one of the
    /// benchmark object's (loaded on first use).
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp, DatapathError> {
        if name == RELAY_PROGRAM {
            return xdp_mut(&mut self.ebpf, name);
        }
        if self.aux.is_none() {
            let ebpf = EbpfLoader::new()
                .load(crate::bench::BENCH_OBJECT)
                .map_err(DatapathError::Load)?;
            self.aux = Some(ebpf);
        }
        let prog = xdp_mut(self.aux.as_mut().expect("loaded above"), name)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|cause| DatapathError::Program { name, cause })?;
        }
        Ok(prog)
    }

    /// Attaches the relay to `iface` and pins the link. Returns the mode in use.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, DatapathError> {
        let dir = self.cfg.pin_dir.clone();
        attach::attach(xdp_mut(&mut self.ebpf, RELAY_PROGRAM)?, &dir, iface, mode)
    }

    /// Attaches the relay to every interface, or to none: if one fails, the links this
    /// call created are detached again (links from an earlier run are left as they
    /// were).
    pub fn attach_all(
        &mut self,
        ifaces: &[String],
        mode: AttachMode,
    ) -> Result<Vec<AttachMode>, DatapathError> {
        let mut created = Vec::new();
        let mut used = Vec::new();
        for iface in ifaces {
            let new_link = !pin::link_path(&self.cfg.pin_dir, iface).exists();
            match self.attach(iface, mode) {
                Ok(m) => {
                    used.push(m);
                    if new_link {
                        created.push(iface);
                    }
                }
                Err(e) => {
                    for prev in created.iter().rev() {
                        let _ = detach(&self.cfg.pin_dir, prev);
                    }
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    /// Attaches another program of the object and pins its link under the pin
    /// directory, so it outlives this process (a lab left running).
    pub fn attach_pinned(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, DatapathError> {
        let dir = self.cfg.pin_dir.clone();
        attach::attach(self.program(program)?, &dir, iface, mode)
    }

    /// Attaches another program (benchmarks, redirect targets). Not pinned: it is
    /// detached when the `Datapath` is dropped.
    pub fn attach_unpinned(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, DatapathError> {
        attach::attach_unpinned(self.program(program)?, iface, mode)
    }

    /// Inserts a new session. Fails, changing nothing, if the id is taken, the entry
    /// is invalid or the table is full. Its statistics start from zero in a slot this
    /// module picks (`stats_slot` of `entry` is ignored).
    pub fn insert_session(&mut self, id: u64, entry: &SessionEntry) -> Result<(), DatapathError> {
        validate(id, entry)?;
        if self.slots.of(id).is_some() {
            return Err(DatapathError::SessionExists(id));
        }
        // The slot the id names, if free: the relay then finds the session's copy
        // there without a SESSIONS lookup. Any other free slot otherwise.
        let named = self.table.named_slot(id);
        let slot = if self.slots.take_exact(id, named) {
            named
        } else {
            self.slots
                .take(id)
                .ok_or(DatapathError::Full(self.cfg.max_sessions))?
        };
        let mut entry = SessionEntry {
            stats_slot: slot,
            ..*entry
        };
        let table = &mut self.table;
        table.view.reset_counters(slot);
        let inserted = with_hops(self.hops.as_mut(), id, &mut entry, [0, 0], |entry| {
            table
                .write(id, entry, BPF_NOEXIST)
                .map_err(|cause| DatapathError::Map {
                    name: SESSIONS,
                    cause,
                })
        });
        if inserted.is_err() {
            self.slots.release(id);
        }
        inserted
    }

    /// The relay's copy of session `id`'s entry, in the slot its id names (None: it
    /// has none there, and the relay looks the session up in `SESSIONS`).
    pub fn session_copy(&self, id: u64) -> Option<jvpn_common::hot::Hot> {
        let slot = self.table.named_slot(id);
        self.table.view.copy(slot).filter(|h| h.id == id)
    }

    /// Leaves session `id`'s copy as a reader caught in the middle of an update
    /// would see it (its last word one generation ahead), for tests of the relay.
    #[doc(hidden)]
    pub fn tear_session_copy(&self, id: u64) {
        self.table.view.tear_copy(self.table.named_slot(id));
    }

    /// Whether a new session with this id would find the slot its id names free (and
    /// so be relayed from its slot's copy): the gateway draws ids until one does.
    pub fn named_slot_free(&self, id: u64) -> bool {
        self.slots.is_free(self.table.named_slot(id))
    }

    /// Atomically replaces a session's whole entry (the binding swap): one `BPF_EXIST`
    /// update, so concurrent packets see the old entry or the new one, never a mix.
    /// The session keeps its statistics slot. Reads the entry back and returns its
    /// generation; on any error the map holds what it held before.
    pub fn replace_session(&mut self, id: u64, entry: &SessionEntry) -> Result<u32, DatapathError> {
        validate(id, entry)?;
        let slot = self.slots.of(id).ok_or(DatapathError::NoSuchSession(id))?;
        let mut entry = SessionEntry {
            stats_slot: slot,
            ..*entry
        };
        let table = &mut self.table;
        with_hops(self.hops.as_mut(), id, &mut entry, [0, 0], |entry| {
            table
                .write(id, entry, BPF_EXIST)
                .map_err(|e| session_err(id, e))
        })?;
        let found = self
            .session(id)?
            .ok_or(DatapathError::NoSuchSession(id))?
            .generation;
        if found != entry.generation {
            return Err(DatapathError::GenerationMismatch {
                id,
                wrote: entry.generation,
                found,
            });
        }
        Ok(found)
    }

    /// Removes a session and frees its statistics slot.
    pub fn remove_session(&mut self, id: u64) -> Result<(), DatapathError> {
        let removed = self
            .table
            .remove(id, self.slots.of(id))
            .map_err(|e| session_err(id, e));
        if matches!(removed, Ok(()) | Err(DatapathError::NoSuchSession(_))) {
            // Gone either way: its next-hop record goes too, or a later re-point of a
            // session that no longer exists would fail for ever.
            if let Some(h) = self.hops.as_mut() {
                h.remove(id);
            }
        }
        removed?;
        self.slots.release(id);
        Ok(())
    }

    /// Starts keeping the next-hop table (docs/datapath.md, "Next hops"): from now on
    /// this `Datapath` follows the kernel's links, routes and neighbours (call
    /// [`Datapath::process_next_hop_events`] whenever [`Datapath::next_hop_fd`] is
    /// readable), and sessions get hops. Sessions already in the map (pins of an
    /// earlier run) are given theirs, keeping the slots they name where they can.
    /// Only one process may keep the table of a pin directory: the gateway.
    pub fn enable_next_hops(&mut self) -> Result<(), DatapathError> {
        if self.hops.is_some() {
            return Ok(());
        }
        let mut h = nexthop::NextHops::open(&self.next_hops_map)?;
        // No slot becomes valid before every pinned entry names its new hop: an entry
        // not yet rewritten may still name a slot that now means another hop.
        h.suspend(true);
        let entries = self
            .table
            .map
            .iter()
            .collect::<Result<Vec<(u64, SessionEntry)>, _>>()
            .map_err(|cause| DatapathError::Map {
                name: SESSIONS,
                cause,
            })?;
        let mut rewritten = 0;
        for (id, mut e) in entries {
            let had = [e.client_hop, e.exit_hop];
            let table = &mut self.table;
            with_hops(Some(&mut h), id, &mut e, had, |e| {
                if [e.client_hop, e.exit_hop] == had {
                    return Ok(());
                }
                rewritten += 1;
                table
                    .write(id, e, BPF_EXIST)
                    .map_err(|cause| DatapathError::Map {
                        name: SESSIONS,
                        cause,
                    })
            })?;
        }
        h.suspend(false);
        let st = h.stats();
        tracing::info!(
            hops = st.hops,
            valid = st.valid,
            destinations = st.destinations,
            rewritten,
            "next-hop table kept from rtnetlink"
        );
        self.hops = Some(h);
        Ok(())
    }

    /// The descriptor that becomes readable when the kernel announces a change the
    /// next-hop table follows (None: not enabled).
    pub fn next_hop_fd(&self) -> Option<std::os::fd::RawFd> {
        self.hops.as_ref().map(|h| h.fd())
    }

    /// Applies the changes the kernel announced: neighbour changes rewrite their
    /// hops; anything else re-resolves everything and re-points the sessions whose
    /// hop changed before their hops become valid again. Failures leave entries
    /// invalid (the slow path) and are retried with the next batch.
    pub fn process_next_hop_events(&mut self) -> Result<(), DatapathError> {
        let Some(h) = self.hops.as_mut() else {
            return Ok(());
        };
        let plan = h.plan()?;
        let mut failed = Vec::new();
        for &(id, [client_hop, exit_hop]) in &plan.repoint {
            let write = match self.table.map.get(&id, 0) {
                Err(MapError::KeyNotFound) => {
                    h.remove(id);
                    continue;
                }
                Ok(e) => self.table.write(
                    id,
                    &SessionEntry {
                        client_hop,
                        exit_hop,
                        ..e
                    },
                    BPF_EXIST,
                ),
                Err(e) => Err(e),
            };
            if let Err(e) = write {
                tracing::warn!(session = format_args!("{id:#018x}"), error = %e, "re-pointing a session to its new next hop failed; retrying");
                failed.push(id);
            }
        }
        if !plan.repoint.is_empty() {
            tracing::debug!(
                sessions = plan.repoint.len(),
                failed = failed.len(),
                "sessions re-pointed to new next hops"
            );
        }
        h.complete(plan, &failed);
        Ok(())
    }

    /// The next-hop table's counts (None: not enabled).
    pub fn next_hop_stats(&self) -> Option<HopStats> {
        self.hops.as_ref().map(|h| h.stats())
    }

    /// The entry in `NEXT_HOPS[slot]` as the relay would read it (None: invalid).
    pub fn next_hop(&self, slot: u16) -> Option<Hop> {
        self.hops.as_ref().and_then(|h| h.read(slot))
    }

    /// Keeps following the network but leaves every entry invalid (`true`), so that
    /// the relay asks the FIB for every packet; `false` writes them again. For side by
    /// side measurements of the two paths.
    pub fn suspend_next_hops(&mut self, suspended: bool) {
        if let Some(h) = self.hops.as_mut() {
            h.suspend(suspended);
        }
    }

    /// Stops keeping the table: every entry invalid, the relay asks the FIB.
    pub fn disable_next_hops(&mut self) {
        self.hops = None;
    }

    pub fn session(&self, id: u64) -> Result<Option<SessionEntry>, DatapathError> {
        match self.table.map.get(&id, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(cause) => Err(DatapathError::Map {
                name: SESSIONS,
                cause,
            }),
        }
    }

    /// Kernel memory of the session maps (`SESSIONS` + `SESSION_STATS`), as the kernel
    /// accounts it (`memlock` in the maps' fdinfo: the hash table and buckets plus, for
    /// these non-preallocated maps, the elements actually allocated).
    pub fn session_map_bytes(&self) -> Result<u64, DatapathError> {
        let mut total = 0;
        for name in [SESSIONS, SESSION_STATS] {
            let map = aya::maps::MapData::from_pin(self.cfg.pin_dir.join(name))
                .map_err(|cause| DatapathError::Map { name, cause })?;
            total += memlock(&map).ok_or(DatapathError::MissingMap(name))?;
        }
        Ok(total)
    }

    /// Ids of every session in the map.
    pub fn session_ids(&self) -> Vec<u64> {
        self.table.map.keys().filter_map(Result::ok).collect()
    }

    pub fn session_count(&self) -> usize {
        self.table.map.keys().filter(Result::is_ok).count()
    }

    /// A session's counters (None: no such session).
    pub fn session_stats(&self, id: u64) -> Result<Option<SessionStats>, DatapathError> {
        let Some(slot) = self.slots.of(id) else {
            return Ok(None);
        };
        // A slot comes from `slots`, which never hands out one beyond the array.
        Ok(self.table.view.get(slot))
    }

    pub fn drops(&self) -> Result<Drops, DatapathError> {
        sum_drops(&self.drops)
    }

    /// Turns the XDP gate on (or updates it): the HELLO budget, cookies under load and
    /// the per-session control budgets. Call it before [`Datapath::attach_all`], so
    /// that the new program starts with its settings. Keys and the cookie sequence of
    /// a pinned data plane are kept; a gate that was never on gets fresh keys first.
    pub fn set_gate(&mut self, limits: &GateLimits) -> Result<(), DatapathError> {
        self.gate.enable(limits)?;
        tracing::info!(
            hello_budget_pps = limits.hello_budget_pps,
            hello_budget_burst = limits.hello_budget_burst,
            rotate_s = limits.cookie_rotate.as_secs(),
            "XDP HELLO gate on"
        );
        Ok(())
    }

    /// Turns the gate off: HELLOs and control messages pass as without it.
    pub fn disable_gate(&mut self) -> Result<(), DatapathError> {
        self.gate.disable()
    }

    /// Replaces the older cookie key and moves to the next sequence number; returns
    /// it. Cookies of the two periods before are refused from now on.
    pub fn rotate_cookie_key(&mut self) -> Result<u32, DatapathError> {
        self.gate.rotate()
    }

    /// For the controller's tick: rotates the cookie key when its period is over (the
    /// gate on). A failure is logged and retried on the next tick.
    pub fn rotate_cookie_if_due(&mut self) {
        match self.gate.rotate_if_due(std::time::Instant::now()) {
            Ok(Some(seq)) => tracing::debug!(seq, "cookie key rotated"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cookie key rotation failed; retrying"),
        }
    }

    /// The gate's settings as the relay sees them (all zero: never set, off).
    pub fn gate_config(&self) -> Result<HelloConfig, DatapathError> {
        self.gate.config()
    }

    /// The two cookie keys (slot `seq & 1` signs at sequence number `seq`).
    pub fn cookie_keys(&self) -> Result<[CookieKey; 2], DatapathError> {
        self.gate.keys()
    }
}

/// Gives `entry` its next hops (none without a table, whatever the caller put there;
/// new hops' slots from `hint` where free), writes it with `write`, and records the
/// hops for session `id` if the write succeeded or releases them if it failed.
fn with_hops<T>(
    hops: Option<&mut nexthop::NextHops>,
    id: u64,
    entry: &mut SessionEntry,
    hint: [u16; 2],
    write: impl FnOnce(&SessionEntry) -> Result<T, DatapathError>,
) -> Result<T, DatapathError> {
    let Some(h) = hops else {
        [entry.client_hop, entry.exit_hop] = [0, 0];
        return write(entry);
    };
    [entry.client_hop, entry.exit_hop] = h.acquire(entry, hint);
    let written = write(entry);
    match written {
        Ok(_) => h.commit(id, entry),
        Err(_) => h.abandon(entry),
    }
    written
}

fn sum_drops(map: &PerCpuArray<MapData, u64>) -> Result<Drops, DatapathError> {
    let mut out = [0u64; counters::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let per_cpu = match map.get(&(i as u32), 0) {
            Ok(v) => v,
            // A DROPS pinned by an older build (read by `Pinned`) has fewer slots.
            Err(MapError::OutOfBounds { .. }) => continue,
            Err(cause) => return Err(DatapathError::Map { name: DROPS, cause }),
        };
        *slot = per_cpu.iter().sum();
    }
    Ok(out)
}

/// ENOENT on `SESSIONS` means the session is not there; anything else is the map's.
fn session_err(id: u64, e: MapError) -> DatapathError {
    match e {
        MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            DatapathError::NoSuchSession(id)
        }
        cause => DatapathError::Map {
            name: SESSIONS,
            cause,
        },
    }
}

/// Retries a map update that failed with ENOMEM, for up to [`ENOMEM_BUDGET`], without
/// sleeping: the controller calls this from its event loop, which must not stall.
///
/// Maps without preallocation take elements from per-CPU caches (`bpf_mem_alloc`)
/// that the kernel refills asynchronously (an `irq_work` on the same CPU, which runs
/// as soon as this thread gives the CPU up); a burst of updates can find a cache
/// empty and get ENOMEM although memory is plentiful (measured here: after ~17,500
/// quick inserts). A failed update changes nothing, so retrying is safe; real
/// exhaustion surfaces after the budget, as a refused operation that changed nothing.
fn retry_enomem(mut update: impl FnMut() -> Result<(), MapError>) -> Result<(), MapError> {
    let deadline = std::time::Instant::now() + ENOMEM_BUDGET;
    loop {
        match update() {
            Err(MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOMEM)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}

/// How long an update is retried while the kernel refills its element caches.
const ENOMEM_BUDGET: std::time::Duration = std::time::Duration::from_millis(2);

fn validate(id: u64, e: &SessionEntry) -> Result<(), DatapathError> {
    if id == 0 {
        return Err(DatapathError::InvalidEntry(
            id,
            "session id 0 is reserved for HELLO",
        ));
    }
    if !e.is_valid() {
        return Err(DatapathError::InvalidEntry(
            id,
            "every endpoint needs a port, a family, and the family of its gateway side",
        ));
    }
    Ok(())
}

/// The XDP program `name` of a loaded object (the bench tools use it too).
pub(crate) fn xdp_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            name,
            cause: ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|cause| DatapathError::Program { name, cause })
}

/// The `memlock:` line of a map's fdinfo.
fn memlock(map: &aya::maps::MapData) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Program and map names of an object (sections of globals left out).
    fn contents(object: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
        let obj = aya_obj::Object::parse(object).expect("a BPF object");
        let maps = obj
            .maps
            .keys()
            .filter(|m| !m.starts_with('.'))
            .cloned()
            .collect();
        (obj.programs.keys().cloned().collect(), maps)
    }

    #[test]
    fn the_product_object_holds_only_the_relay() {
        let (programs, maps) = contents(EBPF_OBJECT);
        assert_eq!(programs, BTreeSet::from([RELAY_PROGRAM.to_string()]));
        let relay_maps = [
            SESSIONS,
            SESSION_STATS,
            DROPS,
            HELLO_CONFIG,
            COOKIE_KEYS,
            HELLO_STATE,
            HELLO_SOURCES,
            NEXT_HOPS,
            ENDPOINTS,
            "AYA_LOGS",
        ];
        assert_eq!(maps, relay_maps.iter().map(|m| m.to_string()).collect());
        let (programs, maps) = contents(crate::bench::BENCH_OBJECT);
        for p in [
            DROP_PROGRAM,
            PASS_PROGRAM,
            "bench_fwd",
            "jvpn_pktgen",
            "xdp_sink",
        ] {
            assert!(
                programs.contains(p),
                "{p} in the bench object: {programs:?}"
            );
        }
        assert!(!programs.contains(RELAY_PROGRAM));
        assert!(
            relay_maps[..8].iter().all(|m| !maps.contains(*m)),
            "no relay map in the bench object: {maps:?}"
        );
    }
}
