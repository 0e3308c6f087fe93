//! The results file of `cargo xtask bench` (schema 1): one JSON object, written by
//! `jvpn-bench` (`tests/src/bench/`) and read by the report (`xtask/src/report/`).
//!
//! This one file is both sides' schema. The writer fills these structs and the report
//! reads them, so a renamed figure is a compile error on whichever side still uses the
//! old name. xtask compiles the same file (`#[path]` module in `xtask/src/report/`),
//! because it must build before the eBPF toolchain exists and so cannot depend on this
//! crate (docs/bench.md, "The results file"). Keep it to `std`, `serde` and
//! `serde_json`.
//!
//! The JSON is flat, as it always was: every figure is a top-level key. The keys are
//! grouped here by the step that measures them ([`Group`]), each group an `Option` of
//! [`Results`]: `None` when its phase was skipped, failed before it, or is newer than the
//! results file. A group is read as present when any of its keys holds a value, and
//! then every figure in it that is not an `Option` must be there too: loading names a
//! missing one (``the swap phase's figures: missing field `swap_lost` ``). An `Option`
//! inside a group is a figure that may legitimately be absent (a ratio whose
//! denominator was 0, a counter the interface lacks) or one that results files
//! written before it lack; the field says which.
//!
//! Serialising never skips a field (no `skip_serializing_if`): a group's keys are
//! found by serialising its `Default`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};
use serde_json::Value;

/// The results schema this file describes, written as `schema`.
pub const SCHEMA: u32 = 1;

/// The phases of the suite, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Cost,
    Throughput,
    Swap,
    Controller,
    Reattach,
    Cluster,
    Tunnel,
    Flood,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Cost,
        Phase::Throughput,
        Phase::Swap,
        Phase::Controller,
        Phase::Reattach,
        Phase::Cluster,
        Phase::Tunnel,
        Phase::Flood,
    ];

    /// As `--skip`/`--only` and the `errors` keys spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Cost => "cost",
            Phase::Throughput => "throughput",
            Phase::Swap => "swap",
            Phase::Controller => "controller",
            Phase::Reattach => "reattach",
            Phase::Cluster => "cluster",
            Phase::Tunnel => "tunnel",
            Phase::Flood => "flood",
        }
    }
}

/// What became of a phase in one results file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<'a> {
    /// It ran and succeeded.
    Ran,
    /// It failed (its error); what it measured before is still there.
    Failed(&'a str),
    /// `--skip`/`--only` left it out.
    Skipped,
    /// No trace of it: skipped by a runner that did not record skips, not reached
    /// (the run was interrupted), or newer than the results file.
    Absent,
}

/// One results file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// [`SCHEMA`].
    pub schema: u32,
    /// A `--quick` run (a smoke check: figures not comparable).
    pub quick: bool,
    pub started_unix: u64,
    pub machine: Machine,
    pub setup: Setup,
    /// The phases that failed, with their errors.
    pub errors: BTreeMap<Phase, String>,
    /// The run's length.
    pub seconds: f64,
    /// The phases `--skip`/`--only` left out (files before it lack the key).
    #[serde(default)]
    pub skipped: Vec<Phase>,
    #[serde(flatten, with = "group")]
    pub cost: Option<Cost>,
    #[serde(flatten, with = "group")]
    pub throughput: Option<Throughput>,
    #[serde(flatten, with = "group")]
    pub swap: Option<Swap>,
    #[serde(flatten, with = "group")]
    pub controller: Option<Controller>,
    #[serde(flatten, with = "group")]
    pub controller_store: Option<ControllerStore>,
    #[serde(flatten, with = "group")]
    pub controller_etcd: Option<ControllerEtcd>,
    #[serde(flatten, with = "group")]
    pub controller_cluster: Option<ControllerCluster>,
    #[serde(flatten, with = "group")]
    pub reattach: Option<Reattach>,
    #[serde(flatten, with = "group")]
    pub cluster: Option<Cluster>,
    #[serde(flatten, with = "group")]
    pub tunnel: Option<Tunnel>,
    #[serde(flatten, with = "group")]
    pub flood: Option<Flood>,
}

impl Results {
    /// Whether any figure of `phase` is in the file.
    pub fn measured(&self, phase: Phase) -> bool {
        match phase {
            Phase::Cost => self.cost.is_some(),
            Phase::Throughput => self.throughput.is_some(),
            Phase::Swap => self.swap.is_some(),
            Phase::Controller => {
                self.controller.is_some()
                    || self.controller_store.is_some()
                    || self.controller_etcd.is_some()
                    || self.controller_cluster.is_some()
            }
            Phase::Reattach => self.reattach.is_some(),
            Phase::Cluster => self.cluster.is_some(),
            Phase::Tunnel => self.tunnel.is_some(),
            Phase::Flood => self.flood.is_some(),
        }
    }

    pub fn status(&self, phase: Phase) -> Status<'_> {
        if let Some(e) = self.errors.get(&phase) {
            Status::Failed(e)
        } else if self.skipped.contains(&phase) {
            Status::Skipped
        } else if self.measured(phase) {
            Status::Ran
        } else {
            Status::Absent
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: Option<String>,
    pub cores: Option<usize>,
    pub kernel: Option<String>,
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub generator_cpus: Vec<usize>,
    pub userspace_relay_cpus: Vec<usize>,
    pub phase_seconds: f64,
    pub rounds: usize,
    /// `ipv4`.
    pub family: String,
    pub payloads: Vec<usize>,
    pub sessions: u64,
    pub big_sessions: u64,
}

/// A set of figures measured together (see the module's documentation).
pub trait Group: Serialize + DeserializeOwned + Default {
    /// For errors: "the swap phase's figures".
    const WHAT: &'static str;
}

/// `#[serde(flatten, with = "group")]` on a group: its keys are top-level keys.
mod group {
    use super::*;

    pub fn serialize<S: Serializer, T: Group>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        // A flattened `None` writes nothing.
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Group>(d: D) -> Result<Option<T>, D::Error> {
        use serde::de::Error as _;
        // Every key of the object but the named fields' (`schema`, `quick`, …).
        let map = serde_json::Map::<String, Value>::deserialize(d)?;
        let keys = match serde_json::to_value(T::default()) {
            Ok(Value::Object(keys)) => keys,
            _ => return Err(D::Error::custom(format!("{}: not a JSON object", T::WHAT))),
        };
        if !keys
            .keys()
            .any(|k| map.get(k).is_some_and(|v| !v.is_null()))
        {
            return Ok(None);
        }
        T::deserialize(Value::Object(map))
            .map(Some)
            .map_err(|e| D::Error::custom(format!("{}: {e}", T::WHAT)))
    }
}

// ---------------------------------------------------------------------------------
// cost

/// The `cost` phase: nanoseconds per packet in `BPF_PROG_TEST_RUN` repeat mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub ns_per_pkt: NsPerPkt,
    /// Relay − `XDP_DROP` at 1,000 sessions (a goal).
    pub relay_minus_drop_ns: f64,
    /// The same with the next-hop table suspended (older files lack it).
    pub relay_fib_minus_drop_ns: Option<f64>,
    /// Relay time per packet, 1M sessions / 1k (a goal; `None` without a 1M figure).
    pub relay_1m_over_1k: Option<f64>,
    // The cluster check (older files lack them; a ratio is `None` over a 0).
    pub foreign_over_relay: Option<f64>,
    pub unknown_over_relay: Option<f64>,
    pub foreign_over_unknown: Option<f64>,
    /// At the largest session count.
    pub foreign_over_unknown_big: Option<f64>,
    pub foreign_minus_drop_ns: Option<f64>,
    pub unknown_minus_drop_ns: Option<f64>,
    /// By program name.
    pub programs: BTreeMap<String, ProgramSize>,
    pub bytes_per_session_kernel: f64,
    pub kernel_map_bytes: u64,
    pub kernel_map_sessions: u64,
}

impl Group for Cost {
    const WHAT: &'static str = "the cost phase's figures";
}

/// Nanoseconds per packet by session count (JSON keys: the count as a string).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NsPerPkt {
    pub relay: BTreeMap<u64, f64>,
    /// The relay with its next-hop table suspended (older files lack it).
    #[serde(default)]
    pub relay_fib: BTreeMap<u64, f64>,
    pub drop: BTreeMap<u64, f64>,
    /// DATA of an admitted foreign session, and of an unknown id (older files lack
    /// them).
    #[serde(default)]
    pub foreign: BTreeMap<u64, f64>,
    #[serde(default)]
    pub unknown: BTreeMap<u64, f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramSize {
    /// `None`: the kernel does not say.
    pub verified_insns: Option<u32>,
    pub xlated_bytes: Option<u32>,
}

// ---------------------------------------------------------------------------------
// throughput

/// A data path the throughput phase measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    #[serde(rename = "drop")]
    Drop,
    #[serde(rename = "fwd")]
    Fwd,
    #[serde(rename = "relay_1k")]
    Relay1k,
    #[serde(rename = "relay_1m")]
    Relay1m,
    /// The relay with its next-hop table suspended: the FIB for every packet (the
    /// relay as it was before the table).
    #[serde(rename = "relay_1k_fib")]
    Relay1kFib,
    #[serde(rename = "relay_1m_fib")]
    Relay1mFib,
    /// The relay (1k sessions) with traffic from two CPUs into the two-queue veth.
    #[serde(rename = "relay_1k_2cpu")]
    Relay1k2Cpu,
    #[serde(rename = "userspace_relay")]
    Userspace,
    #[serde(rename = "kernel_fwd")]
    KernelFwd,
}

impl Mode {
    /// In the order the phase runs them and the report lists them.
    pub const ALL: [Mode; 9] = [
        Mode::Drop,
        Mode::Fwd,
        Mode::Relay1k,
        Mode::Relay1m,
        Mode::Relay1kFib,
        Mode::Relay1mFib,
        Mode::Relay1k2Cpu,
        Mode::Userspace,
        Mode::KernelFwd,
    ];

    /// As the JSON spells it.
    pub fn key(self) -> &'static str {
        match self {
            Mode::Drop => "drop",
            Mode::Fwd => "fwd",
            Mode::Relay1k => "relay_1k",
            Mode::Relay1m => "relay_1m",
            Mode::Relay1kFib => "relay_1k_fib",
            Mode::Relay1mFib => "relay_1m_fib",
            Mode::Relay1k2Cpu => "relay_1k_2cpu",
            Mode::Userspace => "userspace_relay",
            Mode::KernelFwd => "kernel_fwd",
        }
    }
}

/// The `throughput` phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Every mode and payload that was measured (a mode that failed has none).
    pub pps: Vec<PpsRow>,
    // The 64-byte figure of each mode; `None`: the mode failed (see `errors`). The
    // FIB and two-CPU ones: older files lack them.
    pub drop_pps: Option<f64>,
    pub fwd_pps: Option<f64>,
    pub relay_pps: Option<f64>,
    pub relay_1m_pps: Option<f64>,
    pub relay_fib_pps: Option<f64>,
    pub relay_1m_fib_pps: Option<f64>,
    pub relay_2cpu_pps: Option<f64>,
    pub userspace_relay_pps: Option<f64>,
    pub kernel_fwd_pps: Option<f64>,
    // Ratios of those (goals); `None` without both figures.
    pub relay_over_drop: Option<f64>,
    pub relay_over_fwd: Option<f64>,
    pub relay_over_userspace: Option<f64>,
    pub relay_1m_over_1k_pps: Option<f64>,
    pub relay_over_relay_fib: Option<f64>,
    pub relay_2cpu_over_1cpu: Option<f64>,
}

impl Group for Throughput {
    const WHAT: &'static str = "the throughput phase's figures";
}

impl Throughput {
    /// The 64-byte figure of `mode`.
    pub fn headline(&self, mode: Mode) -> Option<f64> {
        match mode {
            Mode::Drop => self.drop_pps,
            Mode::Fwd => self.fwd_pps,
            Mode::Relay1k => self.relay_pps,
            Mode::Relay1m => self.relay_1m_pps,
            Mode::Relay1kFib => self.relay_fib_pps,
            Mode::Relay1mFib => self.relay_1m_fib_pps,
            Mode::Relay1k2Cpu => self.relay_2cpu_pps,
            Mode::Userspace => self.userspace_relay_pps,
            Mode::KernelFwd => self.kernel_fwd_pps,
        }
    }

    /// The writer's (xtask compiles this file too).
    #[allow(dead_code)]
    pub fn headline_mut(&mut self, mode: Mode) -> &mut Option<f64> {
        match mode {
            Mode::Drop => &mut self.drop_pps,
            Mode::Fwd => &mut self.fwd_pps,
            Mode::Relay1k => &mut self.relay_pps,
            Mode::Relay1m => &mut self.relay_1m_pps,
            Mode::Relay1kFib => &mut self.relay_fib_pps,
            Mode::Relay1mFib => &mut self.relay_1m_fib_pps,
            Mode::Relay1k2Cpu => &mut self.relay_2cpu_pps,
            Mode::Userspace => &mut self.userspace_relay_pps,
            Mode::KernelFwd => &mut self.kernel_fwd_pps,
        }
    }
}

/// One mode at one payload: the median round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PpsRow {
    pub mode: Mode,
    pub payload: usize,
    pub frame_bytes: usize,
    /// The median over rounds.
    pub pps: f64,
    /// Of the round closest to the median.
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
    pub rounds_pps: Vec<f64>,
    /// Relay modes: frames the slow path (`next_hop_fib`) relayed (older files lack
    /// it).
    pub slow_path: Option<u64>,
}

// ---------------------------------------------------------------------------------
// swap

/// The `swap` phase: one session's binding swapped under load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Swap {
    pub swaps: u32,
    pub swap_us_p50: f64,
    pub swap_us_p99: f64,
    pub swap_us_max: f64,
    pub swap_misrouted: u64,
    pub swap_crossed: u64,
    /// The swapping thread's CPU (`None`: not pinned).
    pub swap_cpu: Option<usize>,
    pub swap_lost: u64,
    pub swap_sent: u64,
    pub swap_received: u64,
    pub swap_rate_pps: u64,
    /// `None`: the interface has no such counter.
    pub swap_veth_refused: Option<u64>,
    /// The relay's drop counters that grew, by reason.
    pub swap_relay_drops: BTreeMap<String, u64>,
}

impl Group for Swap {
    const WHAT: &'static str = "the swap phase's figures";
}

// ---------------------------------------------------------------------------------
// controller

/// What `ctl-bench` prints (its last stdout line), kept whole under `ctl_bench*`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CtlBench {
    /// With a store on disk or etcd: the restart with every session stored.
    pub restart_ms: Option<f64>,
    pub store_bytes_per_session: Option<u64>,
    pub handshakes_per_s: f64,
    pub handshake_us: f64,
    pub handshake_step_us: HandshakeSteps,
    pub reattaches_per_s: f64,
    pub reattach_us: f64,
    pub reattach_step_us: ReattachSteps,
    pub reattach_rounds: u16,
    pub bytes_per_session_ctl: f64,
    pub bytes_per_session_ctl_note: String,
    pub nonce_cache_bytes_per_session_est: f64,
    pub session_slot_bytes: usize,
    pub sessions: usize,
    pub warmup_sessions: usize,
    /// `none`, `memory`, `local`, `etcd`, `cluster` (older files lack it).
    pub db: Option<String>,
    /// etcd's round trips per operation (with etcd).
    pub etcd_per_handshake: Option<EtcdCounts>,
    pub etcd_per_reattach: Option<EtcdCounts>,
    pub etcd_txns_per_reattach: Option<f64>,
    pub etcd_txns_per_handshake: Option<f64>,
    pub etcd_rpcs_per_reattach: Option<f64>,
    pub context_us: ContextUs,
    pub cpu: String,
    pub cpu_index: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeSteps {
    pub hello: f64,
    pub confirm: f64,
    pub exit_ack: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReattachSteps {
    pub request: f64,
    pub confirm: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EtcdCounts {
    pub txn: f64,
    pub range: f64,
    pub put: f64,
    pub delete_range: f64,
    pub proposals_committed: f64,
    pub wal_fsyncs: f64,
    /// `None` without an fsync.
    pub wal_fsync_us_each: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContextUs {
    pub ed25519_sign: f64,
    pub ed25519_verify: f64,
    pub x25519_keygen_agree: f64,
    pub pool_allocate_at_end: f64,
}

/// The `controller` phase's first ctl-bench run, at `ctl_sessions` without a store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Controller {
    pub handshakes_per_s: f64,
    pub reattaches_per_s: f64,
    pub bytes_per_session_ctl: f64,
    pub ctl_bench: CtlBench,
}

impl Group for Controller {
    const WHAT: &'static str = "the controller phase's figures";
}

/// The `controller` phase's pair at `store_sessions`: without and with the durable
/// store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerStore {
    pub store_sessions: u64,
    pub handshakes_per_s_nostore: f64,
    pub handshakes_per_s_store: f64,
    pub reattaches_per_s_nostore: f64,
    pub reattaches_per_s_store: f64,
    /// Store / none (`None` over a 0); the reattaches' is a goal.
    pub handshakes_store_ratio: Option<f64>,
    pub reattaches_store_ratio: Option<f64>,
    pub restart_ms: Option<f64>,
    pub store_bytes_per_session: Option<u64>,
    pub ctl_bench_store: CtlBench,
}

impl Group for ControllerStore {
    const WHAT: &'static str = "the controller phase's store figures";
}

/// The `controller` phase's run with etcd as a single gateway's store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerEtcd {
    pub handshakes_per_s_etcd: f64,
    pub reattaches_per_s_etcd: f64,
    pub restart_ms_etcd: Option<f64>,
    pub etcd_store_txns_per_reattach: Option<f64>,
    pub ctl_bench_etcd: CtlBench,
}

impl Group for ControllerEtcd {
    const WHAT: &'static str = "the controller phase's etcd figures";
}

/// The `controller` phase's run as a cluster node commits (`--cluster`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerCluster {
    pub handshakes_per_s_cluster: f64,
    pub reattaches_per_s_cluster: f64,
    pub etcd_txns_per_reattach: Option<f64>,
    pub etcd_txns_per_handshake: Option<f64>,
    pub etcd_rpcs_per_reattach: Option<f64>,
    pub ctl_bench_cluster: CtlBench,
    // The cluster node / the other runs at the same session count (`None` over a 0).
    pub handshakes_cluster_over_nostore: Option<f64>,
    pub reattaches_cluster_over_nostore: Option<f64>,
    pub handshakes_cluster_over_store: Option<f64>,
    pub reattaches_cluster_over_store: Option<f64>,
    pub handshakes_cluster_over_etcd: Option<f64>,
    pub reattaches_cluster_over_etcd: Option<f64>,
}

impl Group for ControllerCluster {
    const WHAT: &'static str = "the controller phase's cluster figures";
}

// ---------------------------------------------------------------------------------
// reattach, cluster

/// The `reattach` phase: round trips (µs) in the lab with the real processes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reattach {
    pub reattach_rtt_us_p50: f64,
    pub reattach_rtt_us_p99: f64,
    // For the table beside the cluster's (older files lack them).
    pub reattach_rtt_us_min: Option<f64>,
    pub reattach_rtt_us_p90: Option<f64>,
    pub reattach_rtt_us_max: Option<f64>,
    /// Every sample, ascending.
    pub reattach_rtt_us: Vec<f64>,
    /// With the gateway's state on a tmpfs (older files lack them).
    pub reattach_rtt_tmpfs_us_p50: Option<f64>,
    pub reattach_rtt_tmpfs_us_p99: Option<f64>,
    /// p99 on the disk − on the tmpfs (a goal; older files lack it).
    pub reattach_rtt_store_extra_us_p99: Option<f64>,
}

impl Group for Reattach {
    const WHAT: &'static str = "the reattach phase's figures";
}

/// The `cluster` phase: round trips (µs) at the owner node of a two-node cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Every sample, ascending.
    pub cluster_reattach_rtt_us: Vec<f64>,
    pub cluster_reattach_rtt_us_min: f64,
    pub cluster_reattach_rtt_us_p50: f64,
    pub cluster_reattach_rtt_us_p90: f64,
    pub cluster_reattach_rtt_us_max: f64,
    pub cluster_reattach_setup: ClusterSetup,
}

impl Group for Cluster {
    const WHAT: &'static str = "the cluster phase's figures";
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterSetup {
    pub nodes: u32,
    pub etcd_members: u32,
    pub lease_ttl_s: u64,
    pub moves: usize,
    pub samples: usize,
    pub owner_generation_after: u32,
    pub other_node_holds_it: bool,
}

// ---------------------------------------------------------------------------------
// tunnel

/// The `tunnel` phase: TCP through the jvpn tunnel and through wireguard-go, up
/// (client → exit) and down, medians of the rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tunnel {
    pub tunnel_up_mbps: f64,
    pub tunnel_down_mbps: f64,
    pub wireguard_go_up_mbps: f64,
    pub wireguard_go_down_mbps: f64,
    /// The senders' TCP retransmits per run (`None`: iperf3 did not say).
    pub tunnel_up_retransmits: Option<u64>,
    pub tunnel_down_retransmits: Option<u64>,
    pub wireguard_go_up_retransmits: Option<u64>,
    pub wireguard_go_down_retransmits: Option<u64>,
    /// jvpn / wireguard-go (`None` over a 0).
    pub tunnel_over_wireguard_go_up: Option<f64>,
    pub tunnel_over_wireguard_go_down: Option<f64>,
    /// The lower of the two (a goal).
    pub tunnel_over_wireguard_go: Option<f64>,
    pub tunnel: TunnelSetup,
}

impl Group for Tunnel {
    const WHAT: &'static str = "the tunnel phase's figures";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelImpl {
    Tunnel,
    WireguardGo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
}

impl Tunnel {
    /// Mbit/s of `which` in direction `dir`.
    pub fn mbps(&self, which: TunnelImpl, dir: Direction) -> f64 {
        match (which, dir) {
            (TunnelImpl::Tunnel, Direction::Up) => self.tunnel_up_mbps,
            (TunnelImpl::Tunnel, Direction::Down) => self.tunnel_down_mbps,
            (TunnelImpl::WireguardGo, Direction::Up) => self.wireguard_go_up_mbps,
            (TunnelImpl::WireguardGo, Direction::Down) => self.wireguard_go_down_mbps,
        }
    }

    pub fn retransmits(&self, which: TunnelImpl, dir: Direction) -> Option<u64> {
        match (which, dir) {
            (TunnelImpl::Tunnel, Direction::Up) => self.tunnel_up_retransmits,
            (TunnelImpl::Tunnel, Direction::Down) => self.tunnel_down_retransmits,
            (TunnelImpl::WireguardGo, Direction::Up) => self.wireguard_go_up_retransmits,
            (TunnelImpl::WireguardGo, Direction::Down) => self.wireguard_go_down_retransmits,
        }
    }

    /// jvpn / wireguard-go in direction `dir`.
    pub fn ratio(&self, dir: Direction) -> Option<f64> {
        match dir {
            Direction::Up => self.tunnel_over_wireguard_go_up,
            Direction::Down => self.tunnel_over_wireguard_go_down,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelSetup {
    pub seconds_per_run: u32,
    pub rounds: usize,
    /// The jvpn tunnel's MTU (the client agent's), before and after the runs.
    pub tunnel_mtu: Option<u16>,
    pub tunnel_mtu_after: Option<u16>,
    pub wireguard_go_mtu: u16,
    pub wireguard_go_version: Option<String>,
    /// The agent's transport switches during the runs.
    pub client_switches: Option<u64>,
    pub runs: Vec<TunnelRun>,
}

/// One iperf3 run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunnelRun {
    #[serde(rename = "impl")]
    pub which: TunnelImpl,
    pub direction: Direction,
    pub round: usize,
    pub mbps: f64,
    pub retransmits: Option<u64>,
    /// iperf3's CPU use at the client and the server (% of one CPU).
    pub cpu_client_pct: Option<f64>,
    pub cpu_server_pct: Option<f64>,
}

// ---------------------------------------------------------------------------------
// flood

/// The `flood` phase: the legitimate workload unloaded, then under a flood of spoofed
/// HELLOs and forged REATTACH_REQUESTs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flood {
    /// `default`, or `open` (`JVPN_FLOOD_GATE=open`: the gate's limits wide open).
    pub flood_gate: String,
    /// The floods' achieved rates (frames the gateway's links accepted per second;
    /// goals), and what was asked.
    pub flood_hello_pps: f64,
    pub flood_reattach_pps: f64,
    pub flood_hello_target_pps: u64,
    pub flood_reattach_target_pps: u64,
    pub flood_generators: Vec<FloodGenerator>,
    /// The generator's cost per frame (repeat mode) by template: `data`, `hello`,
    /// `reattach`.
    pub flood_generator_ns_per_frame: BTreeMap<String, f64>,
    pub flood_template_checks: BTreeMap<String, bool>,
    pub flood_victims: usize,
    pub flood_keepalive_sessions: usize,
    pub keepalives_sent: u64,
    pub keepalives_answered: u64,
    /// Reattach p99 under the flood / unloaded (a goal; `None` without both).
    pub legit_reattach_p99_over_unloaded: Option<f64>,
    #[serde(flatten)]
    pub under_flood: Window,
    #[serde(flatten)]
    pub unloaded: UnloadedWindow,
}

impl Group for Flood {
    const WHAT: &'static str = "the flood phase's figures";
}

impl Flood {
    /// `[unloaded, under the flood]`.
    pub fn windows(&self) -> [Window; 2] {
        [self.unloaded.clone().into(), self.under_flood.clone()]
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FloodGenerator {
    /// `hello` or `reattach`.
    pub flood: String,
    pub sent: u64,
    pub seconds: f64,
    pub accepted: Option<u64>,
    pub refused: Option<u64>,
    pub frame_bytes: usize,
    pub cpu: Vec<usize>,
    /// What came back down the link (COOKIEs).
    pub returned_frames: u64,
}

/// The flood phase's two windows have the same figures under different keys: the
/// issue's keys as they are under the flood and with `unloaded_` before them, the
/// others with `flood_` or `unloaded_`. One list of both spellings makes both structs.
macro_rules! windows {
    ($($(#[$meta:meta])* $field:ident: $ty:ty = $loaded:literal, $unloaded:literal;)*) => {
        /// One window of the flood phase's legitimate workload (under the flood's keys)
        /// and what the gateway did meanwhile.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct Window {
            $($(#[$meta])* #[serde(rename = $loaded)] pub $field: $ty,)*
        }

        /// [`Window`] under the unloaded window's keys.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct UnloadedWindow {
            $($(#[$meta])* #[serde(rename = $unloaded)] pub $field: $ty,)*
        }

        impl From<UnloadedWindow> for Window {
            fn from(w: UnloadedWindow) -> Self {
                Self { $($field: w.$field,)* }
            }
        }

        impl From<Window> for UnloadedWindow {
            fn from(w: Window) -> Self {
                Self { $($field: w.$field,)* }
            }
        }
    };
}

windows! {
    /// Fraction of the handshakes done within 2 s (a goal under the flood).
    handshake_success: f64 = "legit_handshake_success", "unloaded_legit_handshake_success";
    handshakes: usize = "flood_legit_handshakes", "unloaded_legit_handshakes";
    handshake_ms_p50: Option<f64> = "legit_handshake_ms_p50", "unloaded_legit_handshake_ms_p50";
    handshake_ms_p99: Option<f64> = "legit_handshake_ms_p99", "unloaded_legit_handshake_ms_p99";
    handshake_ms_max: Option<f64> = "flood_legit_handshake_ms_max", "unloaded_legit_handshake_ms_max";
    /// Per handshake, ms to ESTABLISHED; `None`: none within 2 s.
    handshake_ms: Vec<Option<f64>> = "legit_handshake_ms", "unloaded_legit_handshake_ms";
    hellos_sent: u64 = "flood_legit_hellos_sent", "unloaded_legit_hellos_sent";
    cookies_received: u64 = "flood_legit_cookies_received", "unloaded_legit_cookies_received";
    reattach_success: f64 = "flood_legit_reattach_success", "unloaded_legit_reattach_success";
    reattach_rtt_us_p50: Option<f64> = "legit_reattach_rtt_us_p50", "unloaded_legit_reattach_rtt_us_p50";
    reattach_rtt_us_p99: Option<f64> = "legit_reattach_rtt_us_p99", "unloaded_legit_reattach_rtt_us_p99";
    /// Per reattach, µs from the first REQUEST to the ACK; `None`: no ACK within 2 s.
    reattach_rtt_us: Vec<Option<f64>> = "legit_reattach_rtt_us", "unloaded_legit_reattach_rtt_us";
    window_seconds: f64 = "flood_window_seconds", "unloaded_window_seconds";
    /// The gateway process's user + system CPU, in cores (a goal under the flood).
    controller_cpu: f64 = "controller_cpu", "unloaded_controller_cpu";
    /// The whole machine's, in cores (`None`: /proc/stat unreadable).
    machine_cpu: Option<f64> = "flood_machine_cpu", "unloaded_machine_cpu";
    /// The event log's growth (a goal under the flood).
    event_log_bytes_per_s: f64 = "event_log_bytes_per_s", "unloaded_event_log_bytes_per_s";
    /// XDP's counters that grew (drops, and COOKIEs answered), by reason.
    xdp_drops: BTreeMap<String, u64> = "flood_xdp_drops", "unloaded_xdp_drops";
    controller_handshakes: BTreeMap<String, u64> = "flood_controller_handshakes", "unloaded_controller_handshakes";
    controller_security_events: BTreeMap<String, u64> = "flood_controller_security_events", "unloaded_controller_security_events";
    events_suppressed: BTreeMap<String, u64> = "flood_events_suppressed", "unloaded_events_suppressed";
    keepalive_answers: BTreeMap<String, u64> = "flood_keepalive_answers", "unloaded_keepalive_answers";
    /// HELLO outcomes after the signature check.
    controller_hello_sig_verifications: u64 = "controller_hello_sig_verifications", "unloaded_controller_hello_sig_verifications";
    /// Of them, signatures that did not verify (a goal under the flood: the flood's).
    controller_hello_bad_signature: u64 = "flood_controller_hello_bad_signature", "unloaded_controller_hello_bad_signature";
    keepalive_session_transitions: u64 = "flood_keepalive_session_transitions", "unloaded_keepalive_session_transitions";
    /// Keepalive sessions that left ATTACHED (a goal under the flood).
    spurious_volatile: u64 = "spurious_volatile", "unloaded_spurious_volatile";
}

/// A complete results value (every group, every figure), for the tests of both sides.
#[cfg(test)]
pub mod example {
    use super::*;

    fn ctl_bench(handshakes: f64, reattaches: f64, db: &str) -> CtlBench {
        CtlBench {
            restart_ms: None,
            store_bytes_per_session: None,
            handshakes_per_s: handshakes,
            handshake_us: (1e6 / handshakes * 10.0).round() / 10.0,
            handshake_step_us: HandshakeSteps {
                hello: 90.0,
                confirm: 60.0,
                exit_ack: 35.0,
            },
            reattaches_per_s: reattaches,
            reattach_us: (1e6 / reattaches * 10.0).round() / 10.0,
            reattach_step_us: ReattachSteps {
                request: 40.0,
                confirm: 60.0,
            },
            reattach_rounds: 3,
            bytes_per_session_ctl: 1100.0,
            bytes_per_session_ctl_note: "controller heap only".into(),
            nonce_cache_bytes_per_session_est: 90.0,
            session_slot_bytes: 160,
            sessions: 100_000,
            warmup_sessions: 1_100,
            db: Some(db.into()),
            etcd_per_handshake: None,
            etcd_per_reattach: None,
            etcd_txns_per_reattach: None,
            etcd_txns_per_handshake: None,
            etcd_rpcs_per_reattach: None,
            context_us: ContextUs {
                ed25519_sign: 18.0,
                ed25519_verify: 40.0,
                x25519_keygen_agree: 60.0,
                pool_allocate_at_end: 0.1,
            },
            cpu: "AMD EPYC 7B13".into(),
            cpu_index: 0,
        }
    }

    fn etcd(txn: f64) -> EtcdCounts {
        EtcdCounts {
            txn,
            range: 0.0,
            put: 0.0,
            delete_range: 0.0,
            proposals_committed: txn,
            wal_fsyncs: txn,
            wal_fsync_us_each: Some(900.0),
        }
    }

    fn by_sessions(v: [f64; 3]) -> BTreeMap<u64, f64> {
        [1_000, 65_536, 1_000_000].into_iter().zip(v).collect()
    }

    /// A deterministic long-tailed spread of 2,000 round trips: p50 480 µs, p99 about
    /// 900 µs.
    pub fn rtt_samples() -> Vec<f64> {
        let mut v: Vec<f64> = (0..2000u32)
            .map(|i| {
                let u = (f64::from(i * 7919 % 2000) + 0.5) / 2000.0;
                let tail = ((1.0 - u).powf(-0.25) - 1.0) / (2f64.powf(0.25) - 1.0);
                (440.0 + 40.0 * tail).round()
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The same run with no phase's figures: every group `None`.
    pub fn nothing_ran() -> Results {
        Results {
            cost: None,
            throughput: None,
            swap: None,
            controller: None,
            controller_store: None,
            controller_etcd: None,
            controller_cluster: None,
            reattach: None,
            cluster: None,
            tunnel: None,
            flood: None,
            ..results()
        }
    }

    pub fn results() -> Results {
        let pps = [
            (Mode::Drop, 7.1e6, 2.0e6),
            (Mode::Fwd, 4.2e6, 1.9e6),
            (Mode::Relay1k, 3.9e6, 1.8e6),
            (Mode::Relay1m, 3.7e6, 1.7e6),
            (Mode::Relay1kFib, 2.9e6, 1.6e6),
            (Mode::Relay1mFib, 2.1e6, 1.5e6),
            (Mode::Relay1k2Cpu, 7.0e6, 3.0e6),
            (Mode::Userspace, 0.4e6, 0.35e6),
            (Mode::KernelFwd, 0.9e6, 0.8e6),
        ]
        .into_iter()
        .flat_map(|(mode, small, large)| {
            [(64, 106, small), (1400, 1442, large)].map(|(payload, frame_bytes, pps)| PpsRow {
                mode,
                payload,
                frame_bytes,
                pps,
                sent: (pps * 5.0) as u64,
                received: (pps * 5.0) as u64,
                seconds: 5.0,
                rounds_pps: vec![pps; 3],
                slow_path: matches!(mode, Mode::Relay1k | Mode::Relay1m).then_some(0),
            })
        })
        .collect();
        let window = |hs: Vec<f64>, ra: Vec<f64>, log: f64, cpu: f64| Window {
            handshake_success: 1.0,
            handshakes: hs.len(),
            handshake_ms_p50: None,
            handshake_ms_p99: hs.iter().copied().reduce(f64::max),
            handshake_ms_max: hs.iter().copied().reduce(f64::max),
            handshake_ms: hs.into_iter().map(Some).collect(),
            hellos_sent: 3,
            cookies_received: 0,
            reattach_success: 1.0,
            reattach_rtt_us_p50: ra.first().copied(),
            reattach_rtt_us_p99: ra.last().copied(),
            reattach_rtt_us: ra.into_iter().map(Some).collect(),
            window_seconds: 12.5,
            controller_cpu: cpu,
            machine_cpu: Some(1.9),
            event_log_bytes_per_s: log,
            xdp_drops: BTreeMap::new(),
            controller_handshakes: [("welcomed".to_string(), 3)].into(),
            controller_security_events: BTreeMap::new(),
            events_suppressed: BTreeMap::new(),
            keepalive_answers: [("from_binding".to_string(), 12)].into(),
            controller_hello_sig_verifications: 20,
            controller_hello_bad_signature: 0,
            keepalive_session_transitions: 0,
            spurious_volatile: 0,
        };
        let mut under_flood = window(vec![2.0, 1.5, 116.7], vec![1300.0, 2100.0], 68_743.0, 0.1);
        under_flood.handshake_ms_p50 = Some(2.0);
        under_flood.xdp_drops = [
            ("control_limited".to_string(), 2_029_892),
            ("hello_cookie_sent".to_string(), 4_043_859),
        ]
        .into();
        let mut unloaded = window(vec![1.7, 1.4, 1.6], vec![1200.0, 1400.0], 5486.0, 0.015);
        unloaded.handshake_ms_p50 = Some(1.6);
        Results {
            schema: SCHEMA,
            quick: false,
            started_unix: 1_795_000_000,
            machine: Machine {
                cpu_model: Some("AMD EPYC 7B13".into()),
                cores: Some(2),
                kernel: Some("6.18.0".into()),
                memory_bytes: Some(25_769_803_776),
            },
            setup: Setup {
                generator_cpus: vec![0],
                userspace_relay_cpus: vec![0, 1],
                phase_seconds: 5.0,
                rounds: 3,
                family: "ipv4".into(),
                payloads: vec![64, 1400],
                sessions: 1_000,
                big_sessions: 1_000_000,
            },
            errors: BTreeMap::new(),
            seconds: 512.3,
            skipped: Vec::new(),
            cost: Some(Cost {
                ns_per_pkt: NsPerPkt {
                    relay: by_sessions([40.1, 41.0, 45.0]),
                    relay_fib: by_sessions([140.1, 141.0, 145.0]),
                    drop: by_sessions([26.0, 26.1, 26.0]),
                    foreign: by_sessions([22.0, 22.5, 24.0]),
                    unknown: by_sessions([21.0, 21.0, 22.0]),
                },
                relay_minus_drop_ns: 14.1,
                relay_fib_minus_drop_ns: Some(114.1),
                relay_1m_over_1k: Some(1.12),
                foreign_over_relay: Some(0.26),
                unknown_over_relay: Some(0.25),
                foreign_over_unknown: Some(1.04),
                foreign_over_unknown_big: Some(1.1),
                foreign_minus_drop_ns: Some(16.0),
                unknown_minus_drop_ns: Some(15.0),
                programs: [
                    (
                        "jvpn_relay".to_string(),
                        ProgramSize {
                            verified_insns: Some(16_138),
                            xlated_bytes: Some(33_144),
                        },
                    ),
                    (
                        "bench_drop".to_string(),
                        ProgramSize {
                            verified_insns: Some(2),
                            xlated_bytes: Some(16),
                        },
                    ),
                ]
                .into(),
                bytes_per_session_kernel: 420.0,
                kernel_map_bytes: 420_000_000,
                kernel_map_sessions: 1_000_000,
            }),
            throughput: Some(Throughput {
                pps,
                drop_pps: Some(7.1e6),
                fwd_pps: Some(4.2e6),
                relay_pps: Some(3.9e6),
                relay_1m_pps: Some(3.7e6),
                relay_fib_pps: Some(2.9e6),
                relay_1m_fib_pps: Some(2.1e6),
                relay_2cpu_pps: Some(7.0e6),
                userspace_relay_pps: Some(0.4e6),
                kernel_fwd_pps: Some(0.9e6),
                relay_over_drop: Some(0.55),
                relay_over_fwd: Some(0.93),
                relay_over_userspace: Some(9.75),
                relay_1m_over_1k_pps: Some(0.95),
                relay_over_relay_fib: Some(1.345),
                relay_2cpu_over_1cpu: Some(1.795),
            }),
            swap: Some(Swap {
                swaps: 10_000,
                swap_us_p50: 2.1,
                swap_us_p99: 6.3,
                swap_us_max: 40.0,
                swap_misrouted: 0,
                swap_crossed: 12_345,
                swap_cpu: Some(1),
                swap_lost: 0,
                swap_sent: 2_000_000,
                swap_received: 2_000_000,
                swap_rate_pps: 1_000_000,
                swap_veth_refused: Some(0),
                swap_relay_drops: BTreeMap::new(),
            }),
            controller: Some(Controller {
                handshakes_per_s: 5400.0,
                reattaches_per_s: 9800.0,
                bytes_per_session_ctl: 1100.0,
                ctl_bench: CtlBench {
                    sessions: 1_000_000,
                    ..ctl_bench(5400.0, 9800.0, "none")
                },
            }),
            controller_store: Some(ControllerStore {
                store_sessions: 100_000,
                handshakes_per_s_nostore: 9000.0,
                handshakes_per_s_store: 7650.0,
                reattaches_per_s_nostore: 230_000.0,
                reattaches_per_s_store: 25_300.0,
                handshakes_store_ratio: Some(0.85),
                reattaches_store_ratio: Some(0.11),
                restart_ms: Some(646.7),
                store_bytes_per_session: Some(705),
                ctl_bench_store: CtlBench {
                    restart_ms: Some(646.7),
                    store_bytes_per_session: Some(705),
                    ..ctl_bench(7650.0, 25_300.0, "local")
                },
            }),
            controller_etcd: Some(ControllerEtcd {
                handshakes_per_s_etcd: 7400.0,
                reattaches_per_s_etcd: 22_600.0,
                restart_ms_etcd: Some(215.9),
                etcd_store_txns_per_reattach: Some(0.016),
                ctl_bench_etcd: CtlBench {
                    restart_ms: Some(215.9),
                    etcd_per_handshake: Some(etcd(0.008)),
                    etcd_per_reattach: Some(etcd(0.016)),
                    etcd_txns_per_reattach: Some(0.016),
                    etcd_txns_per_handshake: Some(0.008),
                    etcd_rpcs_per_reattach: Some(0.016),
                    ..ctl_bench(7400.0, 22_600.0, "etcd")
                },
            }),
            controller_cluster: Some(ControllerCluster {
                handshakes_per_s_cluster: 4000.0,
                reattaches_per_s_cluster: 4500.0,
                etcd_txns_per_reattach: Some(2.0),
                etcd_txns_per_handshake: Some(1.0),
                etcd_rpcs_per_reattach: Some(2.0),
                ctl_bench_cluster: CtlBench {
                    etcd_per_handshake: Some(etcd(1.0)),
                    etcd_per_reattach: Some(etcd(2.0)),
                    etcd_txns_per_reattach: Some(2.0),
                    etcd_txns_per_handshake: Some(1.0),
                    etcd_rpcs_per_reattach: Some(2.0),
                    ..ctl_bench(4000.0, 4500.0, "cluster")
                },
                handshakes_cluster_over_nostore: Some(0.444),
                reattaches_cluster_over_nostore: Some(0.02),
                handshakes_cluster_over_store: Some(0.523),
                reattaches_cluster_over_store: Some(0.178),
                handshakes_cluster_over_etcd: Some(0.541),
                reattaches_cluster_over_etcd: Some(0.199),
            }),
            reattach: Some(Reattach {
                reattach_rtt_us_p50: 480.0,
                reattach_rtt_us_p99: 900.0,
                reattach_rtt_us_min: Some(300.0),
                reattach_rtt_us_p90: Some(700.0),
                reattach_rtt_us_max: Some(1200.0),
                reattach_rtt_us: rtt_samples(),
                reattach_rtt_tmpfs_us_p50: Some(400.0),
                reattach_rtt_tmpfs_us_p99: Some(700.0),
                reattach_rtt_store_extra_us_p99: Some(200.0),
            }),
            cluster: Some(Cluster {
                cluster_reattach_rtt_us: vec![2500.0, 3000.0, 4000.0],
                cluster_reattach_rtt_us_min: 2500.0,
                cluster_reattach_rtt_us_p50: 3000.0,
                cluster_reattach_rtt_us_p90: 4000.0,
                cluster_reattach_rtt_us_max: 4000.0,
                cluster_reattach_setup: ClusterSetup {
                    nodes: 2,
                    etcd_members: 1,
                    lease_ttl_s: 2,
                    moves: 100,
                    samples: 3,
                    owner_generation_after: 101,
                    other_node_holds_it: false,
                },
            }),
            tunnel: Some(Tunnel {
                tunnel_up_mbps: 2100.0,
                tunnel_down_mbps: 1800.0,
                wireguard_go_up_mbps: 700.0,
                wireguard_go_down_mbps: 600.0,
                tunnel_up_retransmits: Some(120),
                tunnel_down_retransmits: Some(80),
                wireguard_go_up_retransmits: Some(4500),
                wireguard_go_down_retransmits: Some(3900),
                tunnel_over_wireguard_go_up: Some(3.0),
                tunnel_over_wireguard_go_down: Some(3.0),
                tunnel_over_wireguard_go: Some(3.0),
                tunnel: TunnelSetup {
                    seconds_per_run: 5,
                    rounds: 3,
                    tunnel_mtu: Some(1400),
                    tunnel_mtu_after: Some(1400),
                    wireguard_go_mtu: 1400,
                    wireguard_go_version: Some("wireguard-go v0.0.20220316".into()),
                    client_switches: Some(0),
                    runs: vec![TunnelRun {
                        which: TunnelImpl::Tunnel,
                        direction: Direction::Up,
                        round: 1,
                        mbps: 2100.0,
                        retransmits: Some(120),
                        cpu_client_pct: Some(4.3),
                        cpu_server_pct: None,
                    }],
                },
            }),
            flood: Some(Flood {
                flood_gate: "default".into(),
                flood_hello_pps: 1_002_431.0,
                flood_reattach_pps: 501_304.0,
                flood_hello_target_pps: 1_000_000,
                flood_reattach_target_pps: 500_000,
                flood_generators: vec![FloodGenerator {
                    flood: "hello".into(),
                    sent: 12_000_000,
                    seconds: 12.0,
                    accepted: Some(12_000_000),
                    refused: Some(0),
                    frame_bytes: 214,
                    cpu: vec![0],
                    returned_frames: 11_900_000,
                }],
                flood_generator_ns_per_frame: [
                    ("data".to_string(), 24.0),
                    ("hello".to_string(), 44.0),
                    ("reattach".to_string(), 50.0),
                ]
                .into(),
                flood_template_checks: [("hello".to_string(), true)].into(),
                flood_victims: 4,
                flood_keepalive_sessions: 6,
                keepalives_sent: 72,
                keepalives_answered: 72,
                legit_reattach_p99_over_unloaded: Some(1.5),
                under_flood,
                unloaded: unloaded.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every top-level key of a group.
    fn keys<T: Group>() -> Vec<String> {
        match serde_json::to_value(T::default()).unwrap() {
            Value::Object(m) => m.keys().cloned().collect(),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_full_results_value_round_trips() {
        let r = example::results();
        let v = serde_json::to_value(&r).unwrap();
        // Flat: the figures are top-level keys, as they always were.
        for key in [
            "relay_minus_drop_ns",
            "relay_pps",
            "swap_lost",
            "ctl_bench_etcd",
            "tunnel_over_wireguard_go",
            "legit_handshake_ms",
            "unloaded_legit_handshake_ms",
            "flood_controller_hello_bad_signature",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["ns_per_pkt"]["relay"]["65536"], 41.0);
        assert_eq!(v["pps"][0]["mode"], "drop");
        assert_eq!(v["errors"], serde_json::json!({}));
        let text = serde_json::to_string_pretty(&v).unwrap();
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_missing_figure_is_named() {
        let full = serde_json::to_value(example::results()).unwrap();
        for (key, group) in [
            ("swap_lost", "the swap phase's figures"),
            ("relay_minus_drop_ns", "the cost phase's figures"),
            ("unloaded_controller_cpu", "the flood phase's figures"),
            ("ctl_bench_store", "the controller phase's store figures"),
        ] {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(key).unwrap();
            let err = serde_json::from_value::<Results>(v)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("missing field `{key}`")) && err.contains(group),
                "{key}: {err}"
            );
        }
        // A figure inside one: serde names it too.
        let mut v = full.clone();
        v["ctl_bench"]
            .as_object_mut()
            .unwrap()
            .remove("handshake_us");
        let err = serde_json::from_value::<Results>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `handshake_us`"), "{err}");
        // The run's own fields are required whatever ran.
        let mut v = full.clone();
        v.as_object_mut().unwrap().remove("seconds");
        let err = serde_json::from_value::<Results>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `seconds`"), "{err}");
        // A wrong type is an error, not a missing figure.
        let mut v = full;
        v["swap_lost"] = "none".into();
        let err = serde_json::from_value::<Results>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn a_group_without_any_figure_is_not_run() {
        let mut r = example::results();
        r.swap = None;
        r.tunnel = None;
        r.controller_etcd = None;
        r.skipped = vec![Phase::Tunnel];
        r.errors
            .insert(Phase::Controller, "etcd did not answer".into());
        let mut v = serde_json::to_value(&r).unwrap();
        assert!(v.get("swap_lost").is_none() && v.get("tunnel").is_none());
        // Older runners wrote null for ratios of a phase that did not run.
        v["relay_over_fwd"] = Value::Null;
        let mut r2: Results = serde_json::from_value(v).unwrap();
        assert_eq!(r2.throughput.as_ref().unwrap().relay_over_fwd, None);
        r2.throughput.as_mut().unwrap().relay_over_fwd = Some(0.93);
        assert_eq!(r2, r);
        assert_eq!(r.status(Phase::Swap), Status::Absent);
        assert_eq!(r.status(Phase::Tunnel), Status::Skipped);
        assert_eq!(
            r.status(Phase::Controller),
            Status::Failed("etcd did not answer")
        );
        assert_eq!(r.status(Phase::Flood), Status::Ran);
        let only_nulls = serde_json::json!({
            "schema": 1, "quick": false, "started_unix": 0, "seconds": 1.0, "errors": {},
            "machine": {"cpu_model": null, "cores": null, "kernel": null, "memory_bytes": null},
            "setup": serde_json::to_value(Setup::default()).unwrap(),
            "relay_over_fwd": null, "relay_over_drop": null, "relay_over_userspace": null,
        });
        let r: Results = serde_json::from_value(only_nulls).unwrap();
        assert!(Phase::ALL.iter().all(|&p| !r.measured(p)));
    }

    #[test]
    fn no_two_groups_share_a_key() {
        let run: Vec<String> = [
            "schema",
            "quick",
            "started_unix",
            "machine",
            "setup",
            "errors",
            "seconds",
            "skipped",
        ]
        .map(String::from)
        .to_vec();
        let groups = [
            keys::<Cost>(),
            keys::<Throughput>(),
            keys::<Swap>(),
            keys::<Controller>(),
            keys::<ControllerStore>(),
            keys::<ControllerEtcd>(),
            keys::<ControllerCluster>(),
            keys::<Reattach>(),
            keys::<Cluster>(),
            keys::<Tunnel>(),
            keys::<Flood>(),
        ];
        let mut all: Vec<&String> = run.iter().chain(groups.iter().flatten()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a key in two places");
        // The full example writes exactly these.
        let v = serde_json::to_value(example::results()).unwrap();
        let written: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(written, all);
    }

    #[test]
    fn phases_and_modes_spell_as_the_json() {
        for p in Phase::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
        for m in Mode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.key());
        }
    }

    /// Every results file in bench/results/ loads, and nothing in it is lost: its
    /// keys are the schema's (figures older files lack are `Option` or default).
    #[test]
    fn the_committed_results_files_match_the_schema() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            n += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let r: Results =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let original: Value = serde_json::from_str(&text).unwrap();
            let again = serde_json::to_value(&r).unwrap();
            lost(&original, &again, &path.display().to_string());
        }
        assert!(n > 0, "no results files in {}", dir.display());
    }

    /// Panics naming any non-null value of `a` that `b` lacks or differs in.
    fn lost(a: &Value, b: &Value, at: &str) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in a {
                    if !v.is_null() {
                        let w = b.get(k).unwrap_or_else(|| panic!("{at}.{k}: lost"));
                        lost(v, w, &format!("{at}.{k}"));
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{at}");
                for (i, (v, w)) in a.iter().zip(b).enumerate() {
                    lost(v, w, &format!("{at}[{i}]"));
                }
            }
            (Value::Number(x), Value::Number(y)) => {
                assert_eq!(x.as_f64(), y.as_f64(), "{at}")
            }
            _ => assert_eq!(a, b, "{at}"),
        }
    }
}
