//! The benchmark's baseline: the XDP relay's DATA steering (docs/datapath.md, "Per
//! packet", step 4) done the way a careful userspace program would, so the comparison
//! is with good userspace rather than with a strawman. One pinned worker per CPU with
//! its own `SO_REUSEPORT` sockets (the kernel spreads flows, nothing is shared),
//! `recvmmsg` / `sendmmsg` batches over preallocated buffers (payloads are relayed
//! from the buffer they arrived in), no lock or allocation per packet, and the same
//! header classification as the kernel (`WireHeader::classify`).
//!
//! Unlike the XDP relay it sees datagrams after the kernel's stack: the IP and UDP
//! checks of steps 1–2, IP reassembly, and the outer headers of step 6 are the
//! kernel's, and HELLO and other control messages have no controller to go to.

mod socket;
mod table;

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, bail};
use jvpn_common::maps::{Endpoint, SessionEntry};
use jvpn_ctl::bench::cpus;

use socket::{RecvBatch, SendBatch};
use table::{Reason, Table, show, steer};

pub const DEFAULT_BATCH: usize = 64;
pub const MAX_BATCH: usize = 1024;
/// Receive slot size: a jumbo frame's payload fits. Anything longer arrived as IP
/// fragments, which the XDP relay drops, so it is counted `malformed` here.
const SLOT: usize = 9216;
/// How long an idle worker sleeps in poll() before looking at the stop flag again.
const POLL_MS: libc::c_int = 50;

pub struct RelayConfig {
    /// A network namespace file (e.g. `/run/netns/NAME`) every worker enters before
    /// creating its sockets; `None` keeps the caller's.
    pub netns: Option<PathBuf>,
    /// One worker per CPU, pinned there.
    pub cpus: Vec<usize>,
    /// Datagrams per `recvmmsg`, 1..=[`MAX_BATCH`] ([`DEFAULT_BATCH`] is a good value).
    pub batch: usize,
}

/// Once traffic has stopped, `received == forwarded + dropped()`. `forwarded` counts
/// datagrams the kernel accepted for sending; `send_errors` those it refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    pub received: u64,
    pub forwarded: u64,
    pub malformed: u64,
    pub control: u64,
    pub unknown_session: u64,
    pub not_forwarding: u64,
    pub stale_binding: u64,
    pub send_errors: u64,
}

impl RelayStats {
    pub fn dropped(&self) -> u64 {
        self.malformed
            + self.control
            + self.unknown_session
            + self.not_forwarding
            + self.stale_binding
            + self.send_errors
    }

    fn to_array(self) -> [u64; 8] {
        [
            self.received,
            self.forwarded,
            self.malformed,
            self.control,
            self.unknown_session,
            self.not_forwarding,
            self.stale_binding,
            self.send_errors,
        ]
    }

    fn from_array(a: [u64; 8]) -> Self {
        let [
            received,
            forwarded,
            malformed,
            control,
            unknown_session,
            not_forwarding,
            stale_binding,
            send_errors,
        ] = a;
        Self {
            received,
            forwarded,
            malformed,
            control,
            unknown_session,
            not_forwarding,
            stale_binding,
            send_errors,
        }
    }

    fn add(&mut self, o: Self) {
        let mut a = self.to_array();
        for (x, y) in a.iter_mut().zip(o.to_array()) {
            *x += y;
        }
        *self = Self::from_array(a);
    }
}

/// A worker's counters as others may read them: written by the worker alone, once per
/// batch (plain stores, no locked instructions), on a cache line of their own. A
/// reader mid-batch may see one batch's counters partly updated.
#[repr(align(128))]
#[derive(Default)]
struct Published([AtomicU64; 8]);

impl Published {
    fn store(&self, s: &RelayStats) {
        for (a, v) in self.0.iter().zip(s.to_array()) {
            a.store(v, Relaxed);
        }
    }

    fn load(&self) -> RelayStats {
        RelayStats::from_array(std::array::from_fn(|i| self.0[i].load(Relaxed)))
    }
}

/// Pins, enters the namespace, binds: everything that can fail, done before the
/// caller of `start` is told the worker is ready.
fn setup(cpu: usize, netns: Option<&Path>, locals: &[Endpoint]) -> anyhow::Result<Vec<OwnedFd>> {
    cpus::pin_current_thread(cpu)?;
    if let Some(path) = netns {
        socket::enter_netns(path)
            .with_context(|| format!("entering the network namespace {}", path.display()))?;
    }
    locals
        .iter()
        .map(|l| {
            socket::bind_udp(l).with_context(|| format!("binding a UDP socket to {}", show(l)))
        })
        .collect()
}

/// The worker loop. A socket whose last `recvmmsg` filled the batch probably has
/// more queued and is read again without waiting; poll() is only slept in when every
/// socket came up short, and a zero-timeout poll() each round keeps a flooded socket
/// from starving the others.
fn run(
    socks: &[OwnedFd],
    table: &Table,
    batch: usize,
    stop: &AtomicBool,
    out: &Published,
) -> RelayStats {
    let mut rx = RecvBatch::new(batch, SLOT);
    let mut tx: Vec<SendBatch> = socks.iter().map(|_| SendBatch::new(batch)).collect();
    let mut pollfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut full = vec![false; socks.len()];
    let mut st = RelayStats::default();
    let mut reported = false;
    let mut report = |what: &str, e: std::io::Error| {
        if !std::mem::replace(&mut reported, true) {
            eprintln!("uspace relay worker: {what}: {e} (reported once)");
        }
    };
    while !stop.load(Relaxed) {
        let timeout = if full.contains(&true) { 0 } else { POLL_MS };
        if let Err(e) = socket::poll_readable(&mut pollfds, timeout) {
            report("poll", e);
            thread::sleep(std::time::Duration::from_millis(POLL_MS as u64));
        }
        for (k, sock) in socks.iter().enumerate() {
            if !full[k] && pollfds[k].revents == 0 {
                continue;
            }
            let n = rx.recv(sock.as_raw_fd()).unwrap_or_else(|e| {
                report("recvmmsg", e);
                0
            });
            full[k] = n == batch;
            if n == 0 {
                continue;
            }
            st.received += n as u64;
            for i in 0..n {
                let (payload, src) = rx.get(i);
                match steer(table, payload, src) {
                    Ok(hop) => tx[hop.sock].push(i, &hop.dst, hop.dst_len),
                    Err(Reason::Malformed) => st.malformed += 1,
                    Err(Reason::Control) => st.control += 1,
                    Err(Reason::UnknownSession) => st.unknown_session += 1,
                    Err(Reason::NotForwarding) => st.not_forwarding += 1,
                    Err(Reason::StaleBinding) => st.stale_binding += 1,
                }
            }
            for (t, s) in tx.iter_mut().zip(socks) {
                let (sent, failed) = t.flush(s.as_raw_fd(), &rx);
                st.forwarded += sent;
                st.send_errors += failed;
            }
            out.store(&st);
        }
    }
    st
}

struct Worker {
    published: Arc<Published>,
    thread: JoinHandle<RelayStats>,
}

pub struct UserspaceRelay {
    stop: Arc<AtomicBool>,
    workers: Vec<Worker>,
}

impl UserspaceRelay {
    /// Checks the config and the table, then starts the workers one by one, each
    /// binding all its sockets before the next starts, so that a bad CPU, namespace or
    /// address (EADDRNOTAVAIL) is an error here, naming it, rather than a silent worker.
    pub fn start(cfg: RelayConfig, sessions: HashMap<u64, SessionEntry>) -> anyhow::Result<Self> {
        if cfg.cpus.is_empty() {
            bail!("no CPUs given: the relay needs at least one worker CPU");
        }
        if let Some(c) = cfg
            .cpus
            .iter()
            .enumerate()
            .find_map(|(i, c)| cfg.cpus[..i].contains(c).then_some(c))
        {
            bail!("CPU {c} is listed twice: one worker per CPU");
        }
        cpus::check_allowed(&cfg.cpus)?;
        if !(1..=MAX_BATCH).contains(&cfg.batch) {
            bail!("batch size {} is outside 1..={MAX_BATCH}", cfg.batch);
        }
        let table = Arc::new(Table::new(&sessions)?);
        let mut relay = Self {
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
        };
        for &cpu in &cfg.cpus {
            let (ready_tx, ready) = mpsc::sync_channel(1);
            let (table, stop, netns) = (table.clone(), relay.stop.clone(), cfg.netns.clone());
            let published = Arc::new(Published::default());
            let out = published.clone();
            let batch = cfg.batch;
            let thread = thread::Builder::new()
                .name(format!("uspace-relay{cpu}"))
                .spawn(move || match setup(cpu, netns.as_deref(), &table.locals) {
                    Ok(socks) => {
                        let _ = ready_tx.send(Ok(()));
                        run(&socks, &table, batch, &stop, &out)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        RelayStats::default()
                    }
                })
                .context("spawning a relay worker")?;
            relay.workers.push(Worker { published, thread });
            // On error `relay` is dropped, which stops and joins the workers started so far.
            ready
                .recv()
                .context("relay worker died during setup")?
                .with_context(|| format!("relay worker on CPU {cpu}"))?;
        }
        Ok(relay)
    }

    /// Counters so far (summed over workers), without stopping.
    pub fn stats(&self) -> RelayStats {
        let mut total = RelayStats::default();
        for w in &self.workers {
            total.add(w.published.load());
        }
        total
    }

    /// Stops and joins the workers; returns the final counters.
    pub fn stop(mut self) -> RelayStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> RelayStats {
        self.stop.store(true, Relaxed);
        let mut total = RelayStats::default();
        for w in self.workers.drain(..) {
            match w.thread.join() {
                Ok(s) => total.add(s),
                // Re-raised unless this is already an unwind (that would abort).
                Err(p) if !thread::panicking() => std::panic::resume_unwind(p),
                Err(_) => {}
            }
        }
        total
    }
}

impl Drop for UserspaceRelay {
    fn drop(&mut self) {
        self.shutdown();
    }
}
