//! `cargo xtask bench` (docs/bench.md): every figure of the benchmark suite measured
//! in one run, on one path, with the same packets: path ceilings, the jvpn relay, the
//! baselines a user would pick instead, per-packet cost, the binding swap, the
//! controller and memory. Writes one JSON object ([`schema::Results`], shared with the
//! report); `cargo xtask bench` renders the report from it.

mod cluster;
mod control;
mod cost;
mod flood;
pub mod machine;
mod progress;
pub mod schema;
pub mod sessions;
mod swap;
mod throughput;
pub mod topo;
mod tunnel;
mod wireguard;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use jvpn_ctl::{
    datapath::{Datapath, DatapathConfig},
    lab::netns::PinDir,
};
use schema::{Phase, Results};

/// Set by SIGINT/SIGTERM: phases stop at the next step and the run unwinds, removing
/// its namespaces.
pub static STOP: AtomicBool = AtomicBool::new(false);

pub fn stopped() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set [`STOP`] instead of killing the process, so a run ends at
/// its next step through the normal cleanup.
pub fn catch_stop_signals() {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// The value at quantile `q` (0..=1) of sorted samples (nearest rank).
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The phases' names, in the order they run ([`Phase::ALL`]).
pub const PHASES: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < names.len() {
        names[i] = Phase::ALL[i].name();
        i += 1;
    }
    names
};

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub json: PathBuf,
    /// CPUs the generator sends from (one thread each).
    pub gen_cpus: Vec<usize>,
    /// CPUs of the userspace relay's workers (one thread each).
    pub relay_cpus: Vec<usize>,
    /// Phases to leave out.
    pub skip: Vec<String>,
    /// Phases to run (empty: all but `skip`).
    pub only: Vec<String>,
}

impl Options {
    /// Whether `phase` runs: listed by `only` (when it lists any) and not skipped.
    pub fn runs(&self, phase: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|p| p == phase))
            && !self.skip.iter().any(|p| p == phase)
    }
}

/// Sizes of a run: full, or `--quick` (every phase, briefly: a smoke check).
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub seconds: f64,
    pub rounds: usize,
    pub payloads: [usize; 2],
    pub small_sessions: u64,
    pub big_sessions: u64,
    pub cost_repeat: u32,
    pub cost_rounds: usize,
    pub swaps: u32,
    pub ctl_sessions: u64,
    /// Sessions of the ctl-bench pair run without and with the durable store.
    pub store_sessions: u64,
    pub moves: usize,
    /// Reattaches at a cluster node (the `cluster` phase): at least 20 samples.
    pub cluster_moves: usize,
    /// The `flood` phase: legitimate handshakes and reattaches per window (unloaded,
    /// then under the flood), and the floods' rates (frames per second).
    pub flood_handshakes: usize,
    pub flood_reattaches: usize,
    pub flood_hello_pps: u64,
    pub flood_reattach_pps: u64,
}

impl Profile {
    pub fn new(quick: bool) -> Self {
        let full = Self {
            seconds: 3.0,
            rounds: 3,
            payloads: [64, 1400],
            small_sessions: 1_000,
            big_sessions: 1_000_000,
            cost_repeat: 2_000_000,
            cost_rounds: 5,
            swaps: 10_000,
            ctl_sessions: 1_000_000,
            store_sessions: 100_000,
            moves: 200,
            cluster_moves: 100,
            flood_handshakes: 100,
            flood_reattaches: 100,
            // 5 % over the goals' rates: the achieved rate counts the generator's start.
            flood_hello_pps: 1_050_000,
            flood_reattach_pps: 525_000,
        };
        if quick {
            Self {
                seconds: 0.5,
                rounds: 1,
                cost_repeat: 100_000,
                cost_rounds: 3,
                swaps: 1_000,
                ctl_sessions: 2_000,
                store_sessions: 2_000,
                moves: 10,
                cluster_moves: 20,
                flood_handshakes: 20,
                flood_reattaches: 20,
                ..full
            }
        } else {
            full
        }
    }
}

/// Shared by the phases: the path, the two loaded data planes (1,000 sessions and
/// 1,000,000), and the results so far (each phase sets its groups of `out`).
pub struct Bench {
    pub opts: Options,
    pub profile: Profile,
    pub topo: topo::Topology,
    pub small: Datapath,
    pub big: Datapath,
    big_filled: u64,
    pub pins: [PinDir; 2],
    out: Results,
}

impl Bench {
    /// Fills the big data plane up to `n` sessions.
    fn fill_big(&mut self, n: u64, phase: &progress::Phase) -> Result<()> {
        let start = Instant::now();
        while self.big_filled < n {
            if self.big_filled.is_multiple_of(65_536) {
                stopped()?;
                phase.live(format!("installing sessions: {}", self.big_filled));
            }
            let i = self.big_filled;
            self.big
                .insert_session(sessions::id(i), &sessions::entry(i))
                .with_context(|| format!("inserting session {i}"))?;
            self.big_filled += 1;
        }
        phase.say(format!(
            "{n} sessions installed ({:.1} s)",
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

fn load_datapath(pins: &PinDir, max: u64) -> Result<Datapath> {
    Ok(Datapath::load(DatapathConfig {
        max_sessions: u32::try_from(max).context("session count")?,
        pin_dir: pins.0.clone(),
        port: topo::GW_PORT,
        debug_log: false,
    })?)
}

/// Runs every phase not skipped. A failing phase is recorded under `errors` and the
/// others still run; the JSON is written either way. Returns the results and whether
/// every phase succeeded.
pub fn run(opts: Options) -> Result<(Results, bool)> {
    let profile = Profile::new(opts.quick);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t0 = Instant::now();
    // Two queues at least: the throughput phase's two-CPU figure sends from two.
    let queues = opts.gen_cpus.len().max(opts.relay_cpus.len()).max(2);
    let topo = topo::Topology::build(queues).context("building the namespaces")?;
    let pins = [PinDir::new("bench-s"), PinDir::new("bench-b")];
    let mut small = load_datapath(&pins[0], profile.small_sessions + 1024)?;
    let mut big = load_datapath(&pins[1], profile.big_sessions + 1024)?;
    // Both keep their next-hop tables from the gateway namespace's kernel, as a
    // gateway does; the `_fib` figures suspend them (docs/bench.md).
    for dp in [&mut small, &mut big] {
        topo.gw.run(|| dp.enable_next_hops())?;
    }
    let mut b = Bench {
        opts: opts.clone(),
        profile,
        topo,
        small,
        big,
        big_filled: 0,
        pins,
        out: Results {
            schema: schema::SCHEMA,
            quick: opts.quick,
            started_unix: started,
            machine: machine::describe(),
            setup: schema::Setup {
                generator_cpus: opts.gen_cpus.clone(),
                userspace_relay_cpus: opts.relay_cpus.clone(),
                phase_seconds: profile.seconds,
                rounds: profile.rounds,
                family: "ipv4".into(),
                payloads: profile.payloads.to_vec(),
                sessions: profile.small_sessions,
                big_sessions: profile.big_sessions,
            },
            ..Results::default()
        },
    };
    for i in 0..profile.small_sessions {
        b.small
            .insert_session(sessions::id(i), &sessions::entry(i))?;
    }
    let mut errors = BTreeMap::new();
    // Every phase starts with the CPUs the run had: one that pinned this thread (a
    // generator run on it) must not confine the next one's threads.
    let cpus = jvpn_ctl::bench::cpus::allowed()?;
    for phase in Phase::ALL {
        jvpn_ctl::bench::cpus::set_current_thread(&cpus)?;
        if !opts.runs(phase.name()) {
            eprintln!("== {}: skipped (--skip/--only)", phase.name());
            b.out.skipped.push(phase);
            continue;
        }
        let result = match phase {
            Phase::Cost => cost::run(&mut b),
            Phase::Throughput => throughput::run(&mut b),
            Phase::Swap => swap::run(&mut b),
            Phase::Controller => control::controller(&mut b),
            Phase::Reattach => control::reattach_rtt(&mut b),
            Phase::Cluster => cluster::reattach_rtt(&mut b),
            Phase::Tunnel => tunnel::run(&mut b),
            Phase::Flood => flood::run(&mut b),
        };
        if let Err(e) = result {
            eprintln!("== {}: FAILED: {e:#}", phase.name());
            errors.insert(phase, format!("{e:#}"));
            if STOP.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    let mut out = std::mem::take(&mut b.out);
    if let Some(t) = &mut out.throughput {
        derive_ratios(t);
    }
    let ok = errors.is_empty();
    out.errors = errors;
    out.seconds = (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    Ok((out, ok))
}

/// The throughput goals' ratios, from its 64-byte figures.
fn derive_ratios(t: &mut schema::Throughput) {
    let ratio = |a: Option<f64>, d: Option<f64>| match (a, d) {
        (Some(a), Some(d)) if d > 0.0 => Some((a / d * 1000.0).round() / 1000.0),
        _ => None,
    };
    let relay = t.relay_pps;
    t.relay_1m_over_1k_pps = ratio(t.relay_1m_pps, relay);
    t.relay_over_relay_fib = ratio(relay, t.relay_fib_pps);
    t.relay_2cpu_over_1cpu = ratio(t.relay_2cpu_pps, relay);
    t.relay_over_drop = ratio(relay, t.drop_pps);
    t.relay_over_fwd = ratio(relay, t.fwd_pps);
    t.relay_over_userspace = ratio(relay, t.userspace_relay_pps);
}

/// The relay's drop counters that grew between two readings, by reason name.
fn drops_delta(
    before: &jvpn_ctl::datapath::Drops,
    after: &jvpn_ctl::datapath::Drops,
) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (i, (a, b)) in after.iter().zip(before).enumerate() {
        if a > b {
            let name = jvpn_common::counters::name(i as u32);
            m.insert(name.to_string(), a - b);
        }
    }
    m
}

/// REATTACH_REQUEST out → REATTACH_ACK in round trips (µs) in one capture of a
/// client interface, in order.
pub fn reattach_rtts_us(frames: &[jvpn_ctl::lab::capture::Frame]) -> Vec<f64> {
    use jvpn_common::wire::msg_type;
    let mut rtts = Vec::new();
    let mut pending = None;
    for f in frames {
        match (f.msg_type(), f.outgoing) {
            (Some(msg_type::REATTACH_REQUEST), true) => pending = Some(f.at),
            (Some(msg_type::REATTACH_ACK), false) => {
                if let Some(at) = pending.take() {
                    rtts.push(f.at.duration_since(at).as_secs_f64() * 1e6);
                }
            }
            _ => {}
        }
    }
    rtts
}
