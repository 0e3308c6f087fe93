//! Steady tunnel traffic for the lab: a numbered UDP stream from the client's
//! namespace (through its TUN) to an echo server on the exit's tunnel address, and
//! back. It measures what a user would notice: lost packets, duplicates, and the
//! outages (gaps between consecutive echoes).

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::netns::Netns;

/// A stream packet: magic, sequence number.
const MAGIC: u32 = 0x4a56_504e;

/// Echoes every packet back and records the sequence numbers it saw.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Seen {
    set: HashSet<u64>,
    duplicates: u64,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: SocketAddr) -> std::io::Result<Self> {
        let sock = ns.run(|| UdpSocket::bind(addr))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(seq) = parse(&buf[..n]) {
                    let mut g = seen2.lock().unwrap_or_else(|e| e.into_inner());
                    if !g.set.insert(seq) {
                        g.duplicates += 1;
                    }
                }
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        Ok(Self {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// (distinct sequence numbers received, duplicates received).
    pub fn counts(&self) -> (u64, u64) {
        let g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        (g.set.len() as u64, g.duplicates)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse(b: &[u8]) -> Option<u64> {
    if b.len() < 12 || b[..4] != MAGIC.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(b[4..12].try_into().ok()?))
}

/// A stream from the client namespace, one packet every `interval`.
pub struct Stream {
    stop: Arc<AtomicBool>,
    stop_tx: Arc<AtomicBool>,
    state: Arc<Mutex<StreamState>>,
    threads: Vec<JoinHandle<()>>,
    pub interval: Duration,
}

#[derive(Default)]
struct StreamState {
    sent: u64,
    echoed: HashSet<u64>,
    duplicate_echoes: u64,
    /// Echo arrival times since the start, in ms.
    arrivals: Vec<f64>,
}

/// What the stream saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamReport {
    pub sent: u64,
    pub echoed: u64,
    pub duplicate_echoes: u64,
    /// (ms since start of the gap's beginning, gap length in ms), longest first,
    /// only gaps longer than 5 intervals.
    pub gaps: Vec<(f64, f64)>,
}

impl Stream {
    pub fn start(ns: &Netns, to: SocketAddr, interval: Duration) -> std::io::Result<Self> {
        let sock = ns.run(|| UdpSocket::bind("0.0.0.0:0"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let rx = sock.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_tx = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(StreamState::default()));
        let start = Instant::now();
        let (s1, st1) = (stop_tx.clone(), state.clone());
        let tx = std::thread::spawn(move || {
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !s1.load(Ordering::Relaxed) {
                seq += 1;
                let mut b = [0u8; 64];
                b[..4].copy_from_slice(&MAGIC.to_be_bytes());
                b[4..12].copy_from_slice(&seq.to_be_bytes());
                // No route through the TUN yet, or the link is down: count it as sent.
                let _ = sock.send_to(&b, to);
                st1.lock().unwrap_or_else(|e| e.into_inner()).sent = seq;
                next += interval;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        });
        let (s2, st2) = (stop.clone(), state.clone());
        let rxt = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) {
                let Ok(n) = rx.recv(&mut buf) else {
                    continue;
                };
                if let Some(seq) = parse(&buf[..n]) {
                    let t = start.elapsed().as_secs_f64() * 1e3;
                    let mut g = st2.lock().unwrap_or_else(|e| e.into_inner());
                    if g.echoed.insert(seq) {
                        g.arrivals.push(t);
                    } else {
                        g.duplicate_echoes += 1;
                    }
                }
            }
        });
        Ok(Self {
            stop,
            stop_tx,
            state,
            threads: vec![tx, rxt],
            interval,
        })
    }

    /// Echoes received so far.
    pub fn echoed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .echoed
            .len() as u64
    }

    pub fn report(&self) -> StreamReport {
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let min_gap = self.interval.as_secs_f64() * 1e3 * 5.0;
        let mut gaps: Vec<(f64, f64)> = g
            .arrivals
            .windows(2)
            .map(|w| (w[0], w[1] - w[0]))
            .filter(|(_, d)| *d > min_gap)
            .collect();
        gaps.sort_by(|a, b| b.1.total_cmp(&a.1));
        StreamReport {
            sent: g.sent,
            echoed: g.echoed.len() as u64,
            duplicate_echoes: g.duplicate_echoes,
            gaps,
        }
    }

    /// Stops sending, waits `drain` for the last echoes, and reports.
    pub fn finish(mut self, drain: Duration) -> StreamReport {
        self.stop_tx.store(true, Ordering::Relaxed);
        let tx = self.threads.remove(0);
        let _ = tx.join();
        std::thread::sleep(drain);
        self.report()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop_tx.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
