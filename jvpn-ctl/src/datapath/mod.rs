//! The only code that touches the data plane: loads the XDP object, attaches it,
//! and owns the `SESSIONS`, `SESSION_STATS` and `DROPS` maps and the gate's
//! `HELLO_CONFIG` and `COOKIE_KEYS` (the controller's writes all go through
//! [`Datapath`]).
//!
//! Maps and XDP links are pinned under [`DatapathConfig::pin_dir`], so the relay keeps
//! forwarding while the controller restarts; a restart reuses the maps (after checking
//! their layout) and atomically swaps the new program into the existing links.

mod attach;
mod error;
mod gate;
mod pin;
mod pinned;
mod privilege;
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
    maps::{
        CookieKey, HELLO_SOURCES_MAX, HelloConfig, HelloState, SessionEntry, SessionStats,
        SourceKey,
    },
};
pub use pinned::Pinned;
pub use privilege::check as check_privilege;

/// The XDP object built by `build.rs` from `jvpn-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jvpn"));

/// Program names in the object.
pub const RELAY_PROGRAM: &str = "jvpn_relay";
pub const DROP_PROGRAM: &str = "bench_drop";
pub const PASS_PROGRAM: &str = "xdp_pass";

const SESSIONS: &str = "SESSIONS";
const SESSION_STATS: &str = "SESSION_STATS";
const DROPS: &str = "DROPS";
const HELLO_CONFIG: &str = "HELLO_CONFIG";
const COOKIE_KEYS: &str = "COOKIE_KEYS";
const HELLO_STATE: &str = "HELLO_STATE";
const HELLO_SOURCES: &str = "HELLO_SOURCES";

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
    sessions: HashMap<MapData, u64, SessionEntry>,
    stats: Array<MapData, SessionStats>,
    /// `stats`, mapped: what the controller's polling reads.
    stats_view: stats_view::StatsView,
    slots: slots::Slots,
    drops: PerCpuArray<MapData, u64>,
    gate: gate::Gate,
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
        ];
        let paths: Vec<PathBuf> = expect.iter().map(|e| cfg.pin_dir.join(e.name)).collect();
        // A DROPS pinned by a build with fewer reasons is replaced (its counts restart);
        // the maps the gate added are created if missing, like any other.
        pin::replace_if_resized(&paths[2], &expect[2])?;
        for (e, p) in expect.iter().zip(&paths) {
            pin::check_compatible(p, e)?;
        }

        let debug = u8::from(cfg.debug_log);
        let mut loader = EbpfLoader::new();
        loader
            .override_global("JVPN_PORT", &cfg.port, true)
            .override_global("JVPN_DEBUG", &debug, true)
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
        for name in [RELAY_PROGRAM, DROP_PROGRAM, PASS_PROGRAM] {
            xdp_mut(&mut ebpf, name)?
                .load()
                .map_err(|cause| DatapathError::Program { name, cause })?;
        }
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
        // Sessions kept by the pins from an earlier run hold their slots.
        let held = sessions
            .iter()
            .map(|r| r.map(|(id, e): (u64, SessionEntry)| (id, e.stats_slot)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(SESSIONS))?;
        let slots = slots::Slots::rebuild(cfg.max_sessions, held)?;
        Ok(Self {
            cfg,
            ebpf,
            sessions,
            stats_view: stats_view::StatsView::new(&stats).map_err(|cause| DatapathError::Io {
                what: format!("mapping {SESSION_STATS}"),
                cause,
            })?,
            stats,
            slots,
            drops,
            gate,
            _logger: logger.flatten(),
        })
    }

    /// A loaded program of the object, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp, DatapathError> {
        xdp_mut(&mut self.ebpf, name)
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
        attach::attach(xdp_mut(&mut self.ebpf, program)?, &dir, iface, mode)
    }

    /// Attaches another program of the object (benchmarks, redirect targets). Not pinned:
    /// it is detached when the `Datapath` is dropped.
    pub fn attach_unpinned(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, DatapathError> {
        attach::attach_unpinned(xdp_mut(&mut self.ebpf, program)?, iface, mode)
    }

    /// Inserts a new session. Fails, changing nothing, if the id is taken, the entry
    /// is invalid or the table is full. Its statistics start from zero in a slot this
    /// module picks (`stats_slot` of `entry` is ignored).
    pub fn insert_session(&mut self, id: u64, entry: &SessionEntry) -> Result<(), DatapathError> {
        validate(id, entry)?;
        if self.slots.of(id).is_some() {
            return Err(DatapathError::SessionExists(id));
        }
        let slot = self
            .slots
            .take(id)
            .ok_or(DatapathError::Full(self.cfg.max_sessions))?;
        let entry = SessionEntry {
            stats_slot: slot,
            ..*entry
        };
        let inserted = self
            .stats
            .set(slot, SessionStats::default(), BPF_ANY)
            .map_err(|cause| DatapathError::Map {
                name: SESSION_STATS,
                cause,
            })
            .and_then(|()| {
                retry_enomem(|| self.sessions.insert(id, entry, BPF_NOEXIST)).map_err(|cause| {
                    DatapathError::Map {
                        name: SESSIONS,
                        cause,
                    }
                })
            });
        if inserted.is_err() {
            self.slots.release(id);
        }
        inserted
    }

    /// Atomically replaces a session's whole entry (the binding swap): one `BPF_EXIST`
    /// update, so concurrent packets see the old entry or the new one, never a mix.
    /// The session keeps its statistics slot. Reads the entry back and returns its
    /// generation; on any error the map holds what it held before.
    pub fn replace_session(&mut self, id: u64, entry: &SessionEntry) -> Result<u32, DatapathError> {
        validate(id, entry)?;
        let slot = self.slots.of(id).ok_or(DatapathError::NoSuchSession(id))?;
        let entry = SessionEntry {
            stats_slot: slot,
            ..*entry
        };
        retry_enomem(|| self.sessions.insert(id, entry, BPF_EXIST))
            .map_err(|e| session_err(id, e))?;
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
        self.sessions.remove(&id).map_err(|e| session_err(id, e))?;
        self.slots.release(id);
        Ok(())
    }

    pub fn session(&self, id: u64) -> Result<Option<SessionEntry>, DatapathError> {
        match self.sessions.get(&id, 0) {
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
        self.sessions.keys().filter_map(Result::ok).collect()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.keys().filter(Result::is_ok).count()
    }

    /// A session's counters (None: no such session).
    pub fn session_stats(&self, id: u64) -> Result<Option<SessionStats>, DatapathError> {
        let Some(slot) = self.slots.of(id) else {
            return Ok(None);
        };
        // A slot comes from `slots`, which never hands out one beyond the array.
        Ok(self.stats_view.get(slot))
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

/// Retries a map update that failed with ENOMEM for up to ~100 ms.
///
/// Maps without preallocation take elements from per-CPU caches (`bpf_mem_alloc`)
/// that the kernel refills asynchronously; a burst of updates can find a cache empty
/// and get ENOMEM although memory is plentiful (measured here: after ~17,500 quick
/// inserts). A failed update changes nothing, so retrying is safe; real exhaustion
/// still surfaces after the deadline.
fn retry_enomem(mut update: impl FnMut() -> Result<(), MapError>) -> Result<(), MapError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        match update() {
            Err(MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOMEM)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            other => return other,
        }
    }
}

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
