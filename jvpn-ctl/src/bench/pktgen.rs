//! The traffic generator: the kernel's XDP live-frames mode (`BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`, as xdp-trafficgen uses it) running `jvpn_pktgen` on a
//! template DATA frame, one thread per chosen CPU.
//!
//! Each run of `repeat` frames allocates frames from a page pool holding copies of the
//! template, runs the program on each (it stamps the next session id and fixes the UDP
//! checksum) and sends the `XDP_TX` verdicts out of the run's ingress interface, which
//! is the interface we name: a veth hands them to its peer.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use jvpn_common::{
    bench::{
        LEAD_BYTES, MAX_IDS, MAX_RANDOM_WORDS, PktgenConfig, PktgenState, TEMPLATE_LEN, header_len,
        id_mode,
    },
    maps::AF_INET,
};

use super::{
    BenchError,
    frame::FrameSpec,
    netif::{self, XdpXmit},
};
use crate::datapath::{DatapathError, xdp_mut};

pub const PKTGEN_PROGRAM: &str = "jvpn_pktgen";
const CONFIG_MAP: &str = "PKTGEN_CONFIG";
const STATE_MAP: &str = "PKTGEN_STATE";
const IDS_MAP: &str = "PKTGEN_IDS";

/// Largest batch the kernel takes (`TEST_XDP_MAX_BATCH`).
pub const MAX_BATCH: u32 = 256;
/// The kernel's default batch (`NAPI_POLL_WEIGHT`).
pub const DEFAULT_BATCH: u32 = 64;
/// Longest frame live-frames mode takes: a page less the XDP headroom, the page
/// pool's per-frame head and `skb_shared_info`. Measured on this project's kernel
/// (6.18, x86-64, 4 KiB pages): 3408 bytes pass, 3409 get EINVAL.
pub const MAX_FRAME: usize = 3_408;

/// Per-thread rate up to which paced frames go out one per run, evenly spaced.
///
/// A run of one frame costs ~15-25 µs here. A run of more than one costs ~25 ms more:
/// the kernel then swaps the program into the XDP dispatcher and back, and each swap
/// waits for an RCU grace period. Faster paced rates therefore go out in bursts.
pub const SINGLE_FRAME_MAX_RATE: f64 = 20_000.0;

/// When the generator stops (Ctrl-C stops it too, see [`Generator::run`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// After this many frames in total (split over the CPUs).
    Count(u64),
    /// After this long.
    Duration(Duration),
}

#[derive(Clone, Debug)]
pub struct Options {
    /// The interface the frames leave through.
    pub iface: String,
    /// The template frame; its `session_id` is the first session's.
    pub frame: FrameSpec,
    /// Frames cycle through `frame.session_id .. + sessions`.
    pub sessions: u64,
    /// One thread per CPU, pinned there.
    pub cpus: Vec<usize>,
    /// Frames per second in total (split evenly over the CPUs); `None`: flat out.
    pub rate: Option<u64>,
    pub limit: Limit,
    /// Frames per batch inside a run (1..=[`MAX_BATCH`]).
    pub batch: u32,
    /// Write each frame's send time (CLOCK_MONOTONIC ns) into its jvpn counter.
    pub stamp_time: bool,
    /// Vary the source port: session index `i` sends from `src.port() + i % n` (`n` a
    /// power of two, 2..=32768, with room above the base port). `None`: one port.
    pub src_ports: Option<u16>,
}

/// A flood instead of DATA (the `flood` benchmark phase, docs/bench.md): the whole
/// UDP payload of the template is given (a HELLO, a REATTACH_REQUEST), and every frame
/// gets fresh random bytes at some of its words and, optionally, a random IPv4 source
/// inside the template source's prefix, with both checksums kept valid.
#[derive(Clone, Debug, Default)]
pub struct Flood {
    /// The template's UDP payload: a jvpn message. The random words are zeroed in it.
    pub payload: Vec<u8>,
    /// Session ids: frame `i` of a CPU's cycle gets `ids[i % len]` (at most
    /// [`MAX_IDS`]). Empty: every frame keeps the payload's own (a HELLO's 0).
    pub ids: Vec<u64>,
    /// Offsets in the payload (even, at most 1022) of 8-byte words that get random
    /// bytes in every frame; at most [`MAX_RANDOM_WORDS`].
    pub random_words: Vec<u16>,
    /// IPv4 only: the source varies over the template source's `/src_prefix` (0..=32;
    /// 32 or more: a fixed source). A /10 is 4 million sources.
    pub src_prefix: u8,
    /// Every run strips [`LEAD_BYTES`] put in front of the frame, so that the kernel
    /// sets each frame's bounds afresh (`PktgenConfig::lead`): needed when the
    /// receiver sends frames back shortened (a gateway's COOKIEs). Costs one helper
    /// call per frame. Repeat mode (`BPF_PROG_TEST_RUN` without live frames) keeps the
    /// moved start from run to run, so a cost measured there needs it off.
    pub reset_bounds: bool,
}

impl Flood {
    /// The source-address bits that vary (host order).
    pub fn src_ip_mask(&self) -> u32 {
        match self.src_prefix {
            0 => u32::MAX,
            p if p >= 32 => 0,
            p => u32::MAX >> p,
        }
    }
}

/// One progress report (about once a second).
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Seconds since the start.
    pub elapsed: f64,
    /// Frames sent in total so far (kernel count).
    pub sent: u64,
    /// Frames per second since the previous report.
    pub pps: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// Frames the program stamped and sent with `XDP_TX`, from its per-CPU counters.
    pub sent: u64,
    /// Frames of the runs that completed, as userspace asked for them. Equal to
    /// `sent` unless a run was interrupted (Ctrl-C) half way.
    pub completed_runs_frames: u64,
    /// Runs of the program that found no usable frame (0 unless something is broken).
    pub program_errors: u64,
    pub seconds: f64,
    pub pps: f64,
    /// Frames the veth accepted into its peer's receive rings, and refused, during the
    /// run (`None`: the interface has no such counters, e.g. not a veth).
    pub veth_xmit: Option<u64>,
    pub veth_xmit_errors: Option<u64>,
    pub interrupted: bool,
    pub frame_bytes: usize,
    pub payload_bytes: usize,
    pub sessions: u64,
    pub cpus: Vec<usize>,
    pub iface: String,
}

pub struct Generator {
    ebpf: Ebpf,
    opts: Options,
    frame: Vec<u8>,
    ifindex: u32,
    /// `PktgenConfig::lead`.
    lead: u8,
}

impl Generator {
    /// Checks everything that can be checked (interface, MTU, CPUs, privilege), then
    /// loads the program and writes its configuration. Sends nothing.
    pub fn new(opts: Options) -> Result<Self, BenchError> {
        Self::build(opts, None)
    }

    /// As [`Generator::new`], sending the [`Flood`]'s frames instead of DATA. Of
    /// `opts.frame` only the MACs, addresses and ports are used; `opts.sessions` is
    /// replaced by the number of ids (or 1) and `opts.src_ports` must be `None`.
    pub fn flood(mut opts: Options, flood: Flood) -> Result<Self, BenchError> {
        let ids = flood.ids.len() as u64;
        if ids > u64::from(MAX_IDS) {
            return Err(BenchError::BadSessions(format!(
                "{ids} session ids for a flood: at most {MAX_IDS}"
            )));
        }
        if flood.random_words.len() > MAX_RANDOM_WORDS {
            return Err(BenchError::Invalid(format!(
                "{} random words: at most {MAX_RANDOM_WORDS}",
                flood.random_words.len()
            )));
        }
        for &w in &flood.random_words {
            if w % 2 != 0 || w > 0x3fe || usize::from(w) + 8 > flood.payload.len() {
                return Err(BenchError::Invalid(format!(
                    "random word at payload offset {w}: must be even, at most 1022, and fit \
                     the {}-byte payload",
                    flood.payload.len()
                )));
            }
        }
        if opts.src_ports.is_some() {
            return Err(BenchError::Invalid(
                "a flood varies its source address, not its port".into(),
            ));
        }
        if flood.src_ip_mask() != 0 && !opts.frame.src.is_ipv4() {
            return Err(BenchError::Invalid(
                "random source addresses are IPv4 only".into(),
            ));
        }
        opts.sessions = ids.max(1);
        opts.frame.payload_len = flood.payload.len();
        Self::build(opts, Some(flood))
    }

    fn build(opts: Options, flood: Option<Flood>) -> Result<Self, BenchError> {
        match &flood {
            None => {
                opts.frame.validate()?;
                validate_sessions(opts.frame.session_id, opts.sessions)?;
            }
            Some(f) => {
                // Checks the family and the lengths.
                opts.frame.build_with_payload(&f.payload)?;
            }
        }
        if let Some(n) = opts.src_ports {
            validate_src_ports(opts.frame.src.port(), n)?;
        }
        if opts.batch == 0 || opts.batch > MAX_BATCH {
            return Err(BenchError::BadBatch(opts.batch));
        }
        if opts.cpus.is_empty() {
            return Err(BenchError::BadCpuList {
                list: String::new(),
                detail: "no CPU".into(),
            });
        }
        super::cpus::check_allowed(&opts.cpus)?;
        let ifindex = netif::ifindex(&opts.iface)?;
        let mtu = netif::mtu(&opts.iface)?;
        if opts.frame.ip_len() > mtu as usize {
            return Err(BenchError::PayloadTooLarge {
                size: opts.frame.payload_len,
                ip_len: opts.frame.ip_len(),
                iface: opts.iface.clone(),
                mtu,
            });
        }
        if opts.frame.frame_len() > MAX_FRAME {
            return Err(BenchError::FrameTooLong {
                len: opts.frame.frame_len(),
                max: MAX_FRAME,
            });
        }
        crate::datapath::check_privilege()?;
        let frame = match &flood {
            None => opts.frame.build()?,
            Some(f) => {
                let mut payload = f.payload.clone();
                for &w in &f.random_words {
                    payload[usize::from(w)..usize::from(w) + 8].fill(0);
                }
                // The lead bytes (PktgenConfig::lead) in front, stripped by every run.
                let lead = if f.reset_bounds { LEAD_BYTES } else { 0 };
                let mut frame = vec![0u8; usize::from(lead)];
                frame.extend(opts.frame.build_with_payload(&payload)?);
                frame
            }
        };
        let lead = match &flood {
            Some(f) if f.reset_bounds => LEAD_BYTES,
            _ => 0,
        };

        let mut loader = super::loader();
        let ids = flood.as_ref().map_or(0, |f| f.ids.len() as u32);
        if ids > 0 {
            loader.map_max_entries(IDS_MAP, ids);
        }
        let mut ebpf = loader
            .load(super::BENCH_OBJECT)
            .map_err(DatapathError::Load)?;
        let mut random = [0u16; MAX_RANDOM_WORDS];
        let words = flood.as_ref().map_or(&[][..], |f| &f.random_words[..]);
        random[..words.len()].copy_from_slice(words);
        let config = PktgenConfig {
            first_id: opts.frame.session_id,
            n_sessions: opts.sessions,
            family: opts.frame.family(),
            stamp_time: u8::from(opts.stamp_time),
            src_port_mask: opts.src_ports.map_or(0, |n| n - 1),
            src_port_base: opts.frame.src.port(),
            id_mode: match &flood {
                None => id_mode::RANGE,
                Some(f) if f.ids.is_empty() => id_mode::TEMPLATE,
                Some(_) => id_mode::TABLE,
            },
            n_random: words.len() as u8,
            src_ip_mask: match &flood {
                Some(f) if opts.frame.family() == AF_INET => f.src_ip_mask(),
                _ => 0,
            },
            lead,
            _pad: [0; 3],
            random,
            header: {
                let mut h = [0u8; TEMPLATE_LEN];
                let n = header_len(opts.frame.family());
                let at = usize::from(lead);
                h[..n].copy_from_slice(&frame[at..at + n]);
                h
            },
        };
        let map = ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(BenchError::MissingMap(CONFIG_MAP))?;
        let mut cfg_map: Array<&mut MapData, PktgenConfig> =
            Array::try_from(map).map_err(|cause| BenchError::Map {
                name: CONFIG_MAP,
                cause,
            })?;
        cfg_map.set(0, config, 0).map_err(|cause| BenchError::Map {
            name: CONFIG_MAP,
            cause,
        })?;
        if let Some(f) = flood.as_ref().filter(|f| !f.ids.is_empty()) {
            let map = ebpf
                .map_mut(IDS_MAP)
                .ok_or(BenchError::MissingMap(IDS_MAP))?;
            let map_err = |cause| BenchError::Map {
                name: IDS_MAP,
                cause,
            };
            let mut arr: Array<&mut MapData, u64> = Array::try_from(map).map_err(map_err)?;
            for (i, id) in f.ids.iter().enumerate() {
                arr.set(i as u32, *id, 0).map_err(map_err)?;
            }
        }
        xdp_mut(&mut ebpf, PKTGEN_PROGRAM)?
            .load()
            .map_err(|cause| DatapathError::Program {
                name: PKTGEN_PROGRAM,
                cause,
            })?;
        Ok(Self {
            lead,
            ebpf,
            opts,
            frame,
            ifindex,
        })
    }

    /// The template frame as the kernel gets it (a flood's with its lead bytes in
    /// front: [`Generator::lead`]).
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Bytes in front of [`Generator::frame`] that each run strips (see
    /// `PktgenConfig::lead`): what a run's output lacks to be its next input.
    pub fn lead(&self) -> usize {
        usize::from(self.lead)
    }

    /// The loaded generator program (tests run it on single frames).
    pub fn program(&self) -> Result<&Xdp, BenchError> {
        self.ebpf
            .program(PKTGEN_PROGRAM)
            .ok_or(DatapathError::Program {
                name: PKTGEN_PROGRAM,
                cause: ProgramError::UnexpectedProgramType,
            })?
            .try_into()
            .map_err(|cause| {
                DatapathError::Program {
                    name: PKTGEN_PROGRAM,
                    cause,
                }
                .into()
            })
    }

    fn per_cpu_state(&self) -> Result<aya::maps::PerCpuValues<PktgenState>, BenchError> {
        let map = self
            .ebpf
            .map(STATE_MAP)
            .ok_or(BenchError::MissingMap(STATE_MAP))?;
        let map_err = |cause| BenchError::Map {
            name: STATE_MAP,
            cause,
        };
        let arr: PerCpuArray<&MapData, PktgenState> =
            PerCpuArray::try_from(map).map_err(map_err)?;
        arr.get(&0, 0).map_err(map_err)
    }

    /// The program's counters summed over CPUs: frames sent, and errors.
    pub fn counters(&self) -> Result<PktgenState, BenchError> {
        let mut total = PktgenState::default();
        for s in self.per_cpu_state()?.iter() {
            total.sent += s.sent;
            total.errors += s.errors;
        }
        Ok(total)
    }

    /// Frames the program sent on `cpu`.
    fn sent_on(&self, cpu: usize) -> Result<u64, BenchError> {
        Ok(self.per_cpu_state()?.get(cpu).map_or(0, |s| s.sent))
    }

    /// Sends until the limit, an error, or `stop` (set it from a signal handler for
    /// Ctrl-C). Calls `progress` about once a second.
    ///
    /// A run of the program is one syscall that returns when its frames are sent or
    /// when a signal reaches the thread (EINTR). A run of more than one frame also
    /// costs a fixed ~25 ms (see [`SINGLE_FRAME_MAX_RATE`]), so flat-out workers make
    /// runs as long as they can, and this thread ends them at the deadline or on
    /// `stop` with a signal ([`wake_signal`], whose handler does nothing). The frames
    /// sent are counted by the program itself.
    pub fn run(
        &self,
        stop: &AtomicBool,
        mut progress: impl FnMut(Progress),
    ) -> Result<Summary, BenchError> {
        let prog = self.program()?;
        install_wake_handler()?;
        let n = self.opts.cpus.len() as u64;
        let before = self.counters()?;
        let xmit_before = netif::xdp_xmit(&self.opts.iface)?;
        let failed: Mutex<Option<BenchError>> = Mutex::new(None);
        let halt = AtomicBool::new(false);
        let start = Instant::now();
        let deadline = match self.opts.limit {
            Limit::Duration(d) => Some(start + d),
            Limit::Count(_) => None,
        };
        let threads: Vec<Mutex<Option<libc::pthread_t>>> =
            self.opts.cpus.iter().map(|_| Mutex::new(None)).collect();

        let results = std::thread::scope(|s| {
            let workers: Vec<_> = self
                .opts
                .cpus
                .iter()
                .enumerate()
                .map(|(i, &cpu)| {
                    let quota = match self.opts.limit {
                        // Shares that add up to the count exactly.
                        Limit::Count(c) => Some(c / n + u64::from((i as u64) < c % n)),
                        Limit::Duration(_) => None,
                    };
                    let rate = self.opts.rate.map(|r| r as f64 / n as f64);
                    let (failed, halt, slot) = (&failed, &halt, &threads[i]);
                    s.spawn(move || {
                        // SAFETY: pthread_self has no preconditions.
                        *slot.lock().unwrap() = Some(unsafe { libc::pthread_self() });
                        let w = Worker {
                            owner: self,
                            prog,
                            cpu,
                            quota,
                            rate,
                            deadline,
                            halt,
                            start,
                        };
                        let r = w.run();
                        // No more wake-ups for this thread once it is off its runs.
                        *slot.lock().unwrap() = None;
                        let end = Instant::now();
                        match r {
                            Ok(frames) => (frames, end),
                            Err(e) => {
                                failed.lock().unwrap().get_or_insert(e);
                                (0, end)
                            }
                        }
                    })
                })
                .collect();

            // Progress reports once a second, from the kernel's counters; stops.
            let mut last = (0.0f64, before.sent);
            let mut tick = 1u64;
            while !workers.iter().all(|w| w.is_finished()) {
                let now = Instant::now();
                let halting = stop.load(Ordering::SeqCst)
                    || deadline.is_some_and(|d| now >= d)
                    || failed.lock().unwrap().is_some();
                if halting {
                    halt.store(true, Ordering::SeqCst);
                    // Repeated until every worker is out: one that was between its
                    // check of `halt` and its next run when a wake-up came would
                    // otherwise start a long run that nobody ends.
                    for t in &threads {
                        if let Some(tid) = *t.lock().unwrap() {
                            // SAFETY: the thread is alive (it clears its slot before
                            // it ends, under the same lock).
                            unsafe { libc::pthread_kill(tid, wake_signal()) };
                        }
                    }
                }
                let next = start + Duration::from_secs(tick);
                let mut nap = next
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(5));
                if let Some(d) = deadline.filter(|_| !halting) {
                    nap = nap.min(d.saturating_duration_since(now));
                }
                if !nap.is_zero() {
                    std::thread::sleep(nap);
                }
                if Instant::now() < next {
                    continue;
                }
                tick += 1;
                if let Ok(c) = self.counters() {
                    let t = start.elapsed().as_secs_f64();
                    let pps = (c.sent - last.1) as f64 / (t - last.0);
                    progress(Progress {
                        elapsed: t,
                        sent: c.sent - before.sent,
                        pps,
                    });
                    last = (t, c.sent);
                }
            }
            workers
                .into_iter()
                .map(|w| w.join().expect("generator thread panicked"))
                .collect::<Vec<_>>()
        });
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        let completed: u64 = results.iter().map(|r| r.0).sum();
        let last_end = results.iter().map(|r| r.1).max().unwrap_or(start);
        let after = self.counters()?;
        let xmit_after = netif::xdp_xmit(&self.opts.iface)?;
        let delta = match (xmit_before, xmit_after) {
            (Some(b), Some(a)) => Some(XdpXmit {
                xmit: a.xmit.wrapping_sub(b.xmit),
                errors: a.errors.wrapping_sub(b.errors),
            }),
            _ => None,
        };
        let seconds = (last_end - start).as_secs_f64();
        let sent = after.sent - before.sent;
        let interrupted =
            stop.load(Ordering::SeqCst) || matches!(self.opts.limit, Limit::Count(c) if sent < c);
        Ok(Summary {
            sent,
            completed_runs_frames: completed,
            program_errors: after.errors - before.errors,
            seconds,
            pps: if seconds > 0.0 {
                sent as f64 / seconds
            } else {
                0.0
            },
            veth_xmit: delta.map(|d| d.xmit),
            veth_xmit_errors: delta.map(|d| d.errors),
            interrupted,
            frame_bytes: self.frame.len() - self.lead(),
            payload_bytes: self.opts.frame.payload_len,
            sessions: self.opts.sessions,
            cpus: self.opts.cpus.clone(),
            iface: self.opts.iface.clone(),
        })
    }
}

/// The signal that ends a worker's run early (its handler does nothing; the kernel
/// sees a pending signal and returns EINTR). A real-time one, so that it collides with
/// nothing an embedding program is likely to use.
pub fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_wake(_: libc::c_int) {}

fn install_wake_handler() -> Result<(), BenchError> {
    // SAFETY: sigaction with a handler that does nothing (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(wake_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(BenchError::Io {
                what: "installing the generator's wake-up signal handler".into(),
                cause: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// One generator thread, pinned to its CPU.
struct Worker<'a> {
    owner: &'a Generator,
    prog: &'a Xdp,
    cpu: usize,
    /// Frames this thread sends (count mode).
    quota: Option<u64>,
    /// Frames per second for this thread.
    rate: Option<f64>,
    deadline: Option<Instant>,
    halt: &'a AtomicBool,
    start: Instant,
}

impl Worker<'_> {
    /// Returns the frames sent by the runs that completed (and by a run cut short by
    /// a stray signal, as the kernel counted them).
    fn run(&self) -> Result<u64, BenchError> {
        super::cpus::pin_current_thread(self.cpu)?;
        let ctx = xdp_md(self.owner.frame.len(), self.owner.ifindex);
        // The program counts per CPU, and this thread is the only sender on its CPU:
        // the kernel's figure for the CPU is what this thread has sent.
        let base = self.owner.sent_on(self.cpu)?;
        let mut done = 0u64;
        // Paced: up to SINGLE_FRAME_MAX_RATE per thread, runs of one frame, each at
        // its time. Faster, runs start on schedule and carry the frames due over
        // `period`, which follows the cost of a run (twice the last one, within
        // 5..250 ms), so the fixed cost of a run never eats the rate.
        let mut period = Duration::from_millis(10);
        loop {
            if self.halt.load(Ordering::SeqCst) {
                return Ok(done);
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                return Ok(done);
            }
            // Flat out: one run as long as the kernel takes (or the quota), ended early
            // by a wake-up signal at the deadline or on stop.
            let mut repeat = u64::from(u32::MAX);
            if let Some(q) = self.quota {
                if done >= q {
                    return Ok(done);
                }
                repeat = repeat.min(q - done);
            }
            if let Some(r) = self.rate {
                let due = self.start + Duration::from_secs_f64(done as f64 / r);
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(5)));
                    continue;
                }
                // What is due by the end of this period (at least one frame).
                let target = ((now + period - self.start).as_secs_f64() * r) as u64;
                repeat = if r <= SINGLE_FRAME_MAX_RATE {
                    1
                } else {
                    repeat.min(target.saturating_sub(done).max(1))
                };
            }
            let t = Instant::now();
            let res = self.prog.test_run(TestRunOptions {
                data_in: Some(&self.owner.frame),
                ctx_in: Some(&ctx),
                repeat: repeat as u32,
                attrs: TestRunAttrs::new().xdp_live_frames(self.owner.opts.batch),
                ..TestRunOptions::new()
            });
            match res {
                Ok(_) => done += repeat,
                // A wake-up (or Ctrl-C) during the run: the loop top decides.
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EINTR) =>
                {
                    if !self.halt.load(Ordering::SeqCst)
                        && self.deadline.is_none_or(|d| Instant::now() < d)
                    {
                        // Not a stop (e.g. Ctrl-C landed here before the main thread
                        // saw it): carry on from what the kernel says was sent.
                        done = self.owner.sent_on(self.cpu)? - base;
                        continue;
                    }
                    return Ok(done);
                }
                Err(ProgramError::SyscallError(e)) => {
                    return Err(BenchError::TestRun {
                        iface: self.owner.opts.iface.clone(),
                        cause: e.io_error,
                    });
                }
                Err(e) => {
                    return Err(BenchError::TestRun {
                        iface: self.owner.opts.iface.clone(),
                        cause: std::io::Error::other(e.to_string()),
                    });
                }
            }
            if self.rate.is_some() {
                period =
                    (t.elapsed() * 2).clamp(Duration::from_millis(5), Duration::from_millis(250));
            }
        }
    }
}

/// `struct xdp_md` for `ctx_in`: the frame spans the whole buffer, and the run's
/// ingress interface, where `XDP_TX` sends, is `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes()); // data_end
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    ctx
}

/// Session ids `first .. first + n` must all be valid DATA ids: nonzero, no wrap.
/// `n` source ports from `base`: a power of two from 2 to 32768 that fits below 65536.
pub fn validate_src_ports(base: u16, n: u16) -> Result<(), BenchError> {
    if !(2..=32768).contains(&n) || !n.is_power_of_two() {
        return Err(BenchError::Invalid(format!(
            "--src-ports {n}: must be a power of two from 2 to 32768"
        )));
    }
    if u32::from(base) + u32::from(n) > 65536 {
        return Err(BenchError::Invalid(format!(
            "--src-ports {n} from source port {base} would pass port 65535"
        )));
    }
    Ok(())
}

pub fn validate_sessions(first: u64, n: u64) -> Result<(), BenchError> {
    if n == 0 {
        return Err(BenchError::BadSessions(
            "at least one session is needed".into(),
        ));
    }
    if first == 0 {
        return Err(BenchError::BadSessions(
            "session id 0 is reserved for HELLO; start at 1 or more".into(),
        ));
    }
    if first.checked_add(n - 1).is_none() {
        return Err(BenchError::BadSessions(format!(
            "{n} sessions from {first:#x} run past the largest session id"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ranges() {
        validate_sessions(1, 1).unwrap();
        validate_sessions(u64::MAX, 1).unwrap();
        validate_sessions(u64::MAX - 9, 10).unwrap();
        assert!(validate_sessions(u64::MAX - 8, 10).is_err());
        assert!(validate_sessions(0, 10).is_err());
        assert!(validate_sessions(5, 0).is_err());
    }
}
