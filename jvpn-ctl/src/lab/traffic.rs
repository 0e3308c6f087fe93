//! Steady tunnel traffic for the lab: a numbered UDP stream from the client's
//! namespace (through its TUN) to an echo server on the exit's tunnel address, and
//! back. It measures what a user would notice: lost packets, duplicates, and the
//! outages (gaps between consecutive echoes). And a bulk TCP flow the same way
//! ([`TcpFlow`]), to see what a switch costs a congestion-controlled connection.

use std::{
    collections::HashSet,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
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

    /// The sequence numbers received, in order.
    pub fn seen(&self) -> Vec<u64> {
        let g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<u64> = g.set.iter().copied().collect();
        v.sort_unstable();
        v
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

/// The payload of stream packet `seq`, for a test that builds its own packets.
pub fn numbered(seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(&MAGIC.to_be_bytes());
    b[4..12].copy_from_slice(&seq.to_be_bytes());
    b
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
        let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let sock = ns.run(|| UdpSocket::bind(any))?;
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

    /// Waits until `n` echoes in all have come back; `Err` with the report if they
    /// have not within `timeout`.
    pub fn wait_echoed(&self, n: u64, timeout: Duration) -> Result<(), StreamReport> {
        let deadline = Instant::now() + timeout;
        while self.echoed() < n {
            if Instant::now() >= deadline {
                return Err(self.report());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stops sending, waits up to `drain` for the echoes still in flight (until
    /// every packet sent has come back, or the time is up: some may be lost), and
    /// reports.
    pub fn finish(mut self, drain: Duration) -> StreamReport {
        self.stop_tx.store(true, Ordering::Relaxed);
        let tx = self.threads.remove(0);
        let _ = tx.join();
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline {
            let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if g.echoed.len() as u64 >= g.sent {
                break;
            }
            drop(g);
            std::thread::sleep(Duration::from_millis(5));
        }
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

/// The sink's time resolution: stalls are measured in buckets of this many ms.
const BUCKET_MS: u64 = 10;
/// The report's goodput windows (ms).
pub const WINDOW_MS: u64 = 100;
const CHUNK: usize = 64 * 1024;

/// A bulk TCP flow through the tunnel: a sender in one namespace writing 64 KiB at a
/// time as fast as TCP lets it (or up to a rate cap), to a sink in another that
/// counts the bytes it receives per [`BUCKET_MS`]. Every switch happens with a
/// congestion window in flight, and TCP has to follow the tunnel MTU on its own.
pub struct TcpFlow {
    stop: Arc<AtomicBool>,
    sink: Arc<Mutex<Sink>>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    start: Instant,
    /// When the flow started, Unix ms (to place other clocks' events on its axis).
    pub started_unix_ms: u64,
}

#[derive(Default)]
struct Sink {
    /// Bytes received in each [`BUCKET_MS`] bucket since the start.
    buckets: Vec<u64>,
    /// The connection ended (EOF or error) before it was stopped.
    error: Option<String>,
}

/// What the flow did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpReport {
    /// Bytes the sink received.
    pub bytes: u64,
    /// Bytes the sender handed to its socket.
    pub sent: u64,
    /// From the start to the stop.
    pub duration: Duration,
    /// Mean goodput over `duration` (Mbit/s).
    pub mbit_s: f64,
    /// The longest interval with no byte received (ms, to [`BUCKET_MS`]), and when it
    /// began (ms since the start).
    pub longest_stall_ms: f64,
    pub longest_stall_at_ms: f64,
    /// Every interval of at least 50 ms with no byte received: (start, length), ms
    /// since the start, in time order.
    pub stalls: Vec<(f64, f64)>,
    /// Bytes received per [`WINDOW_MS`] window: (window start in ms since the start,
    /// bytes).
    pub windows: Vec<(u64, u64)>,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
    /// When the flow started, Unix ms (the origin of the times above).
    pub started_unix_ms: u64,
}

impl TcpReport {
    /// (bytes received, ms covered) by the windows starting in `[from_ms, to_ms)`.
    pub fn received_between(&self, from_ms: u64, to_ms: u64) -> (u64, u64) {
        let end = self.duration.as_millis() as u64;
        self.windows
            .iter()
            .filter(|(t, _)| (from_ms..to_ms).contains(t))
            // The last window stops with the flow.
            .fold((0, 0), |(b, ms), &(t, w)| {
                (b + w, ms + WINDOW_MS.min(end.saturating_sub(t)))
            })
    }

    /// Mean goodput (Mbit/s) over the windows starting in `[from_ms, to_ms)`.
    pub fn mbit_s_between(&self, from_ms: u64, to_ms: u64) -> f64 {
        let (bytes, ms) = self.received_between(from_ms, to_ms);
        mbit_s(bytes, ms)
    }
}

/// `bytes` in `ms` milliseconds, in Mbit/s (0 over no time).
pub fn mbit_s(bytes: u64, ms: u64) -> f64 {
    if ms == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / ms as f64 / 1e3
    }
}

impl TcpFlow {
    /// Listens on `to` in `sink_ns`, connects from `from_ns` and starts sending.
    /// `cap`: a rate limit in bit/s (a token bucket in front of the socket), or
    /// none (bulk: as fast as TCP goes).
    pub fn start(
        from_ns: &Netns,
        sink_ns: &Netns,
        to: SocketAddr,
        cap: Option<u64>,
    ) -> std::io::Result<Self> {
        let listener = sink_ns.run(|| TcpListener::bind(to))?;
        let tx = from_ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(3)))?;
        // The connection is established (in the listener's backlog): this returns.
        listener.set_nonblocking(true)?;
        let end = Instant::now() + Duration::from_secs(3);
        let rx = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        drop(listener);
        rx.set_nonblocking(false)?;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        // Bounded so that a stop is seen even when the window is closed.
        tx.set_write_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sink = Arc::new(Mutex::new(Sink::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let started_unix_ms = crate::control::api::unix_ms();

        let (s1, sent1) = (stop.clone(), sent.clone());
        let sender = std::thread::spawn(move || {
            let mut tx = tx;
            let buf = vec![0x5au8; CHUNK];
            let mut off = 0;
            let mut bucket = cap.map(TokenBucket::new);
            while !s1.load(Ordering::Relaxed) {
                let want = match &mut bucket {
                    Some(b) => b.take(CHUNK - off),
                    None => CHUNK - off,
                };
                if want == 0 {
                    continue;
                }
                match tx.write(&buf[off..off + want]) {
                    Ok(0) => break,
                    Ok(n) => {
                        sent1.fetch_add(n as u64, Ordering::Relaxed);
                        if let Some(b) = &mut bucket {
                            b.give_back(want - n);
                        }
                        off = (off + n) % CHUNK;
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
        });
        let (s2, sink2) = (stop.clone(), sink.clone());
        let receiver = std::thread::spawn(move || {
            let mut rx = rx;
            let mut buf = vec![0u8; 256 * 1024];
            while !s2.load(Ordering::Relaxed) {
                match rx.read(&mut buf) {
                    Ok(0) => {
                        // The sender closes once it is told to stop; before that,
                        // an EOF is the connection failing.
                        if !s2.load(Ordering::Relaxed) {
                            sink2.lock().unwrap_or_else(|e| e.into_inner()).error =
                                Some("the connection was closed".into());
                        }
                        break;
                    }
                    Ok(n) => {
                        let b = (start.elapsed().as_millis() as u64 / BUCKET_MS) as usize;
                        let mut g = sink2.lock().unwrap_or_else(|e| e.into_inner());
                        if g.buckets.len() <= b {
                            g.buckets.resize(b + 1, 0);
                        }
                        g.buckets[b] += n as u64;
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => {
                        if !s2.load(Ordering::Relaxed) {
                            sink2.lock().unwrap_or_else(|e| e.into_inner()).error =
                                Some(e.to_string());
                        }
                        break;
                    }
                }
            }
        });
        Ok(Self {
            stop,
            sink,
            sent,
            threads: vec![sender, receiver],
            start,
            started_unix_ms,
        })
    }

    /// Stops both ends and reports.
    pub fn finish(mut self) -> TcpReport {
        let duration = self.start.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let g = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let n = (duration.as_millis() as u64 / BUCKET_MS) as usize;
        let mut buckets = g.buckets.clone();
        // Only whole buckets before the stop (the ones after it are the shutdown).
        buckets.resize(n, 0);
        TcpReport {
            started_unix_ms: self.started_unix_ms,
            ..report(
                &buckets,
                duration,
                self.sent.load(Ordering::Relaxed),
                g.error.clone(),
            )
        }
    }
}

/// Bytes at `rate` bit/s, in bursts of at most one [`CHUNK`].
struct TokenBucket {
    bytes_per_s: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(bits_per_s: u64) -> Self {
        Self {
            bytes_per_s: bits_per_s as f64 / 8.0,
            tokens: 0.0,
            at: Instant::now(),
        }
    }

    /// Up to `want` bytes, waiting (at most 10 ms, then 0) for them.
    fn take(&mut self, want: usize) -> usize {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.bytes_per_s)
            .min(CHUNK as f64);
        self.at = now;
        if self.tokens < want as f64 {
            let wait = (want as f64 - self.tokens) / self.bytes_per_s;
            std::thread::sleep(Duration::from_secs_f64(wait.min(0.01)));
            return 0;
        }
        self.tokens -= want as f64;
        want
    }

    fn give_back(&mut self, n: usize) {
        self.tokens += n as f64;
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// The report from the sink's buckets (bytes per [`BUCKET_MS`] since the start).
fn report(buckets: &[u64], duration: Duration, sent: u64, error: Option<String>) -> TcpReport {
    let bytes: u64 = buckets.iter().sum();
    // Stalls: runs of empty buckets after the first byte arrived (the connection's
    // first moments are not a stall); a run still open at the stop counts.
    let mut stalls = Vec::new();
    let first = buckets.iter().position(|&b| b > 0);
    if let Some(first) = first {
        let mut run_start = None;
        for (i, &b) in buckets.iter().enumerate().skip(first) {
            match (b == 0, run_start) {
                (true, None) => run_start = Some(i),
                (false, Some(s)) => {
                    stalls.push((s, i - s));
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            stalls.push((s, buckets.len() - s));
        }
    }
    let ms = |i: usize| (i as u64 * BUCKET_MS) as f64;
    let (longest_stall_at_ms, longest_stall_ms) = stalls
        .iter()
        .max_by_key(|(_, len)| *len)
        .map_or((0.0, 0.0), |&(s, len)| (ms(s), ms(len)));
    let per = (WINDOW_MS / BUCKET_MS) as usize;
    let windows = buckets
        .chunks(per)
        .enumerate()
        .map(|(i, c)| (i as u64 * WINDOW_MS, c.iter().sum()))
        .collect();
    let secs = duration.as_secs_f64();
    TcpReport {
        bytes,
        sent,
        duration,
        mbit_s: if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        },
        longest_stall_ms,
        longest_stall_at_ms,
        stalls: stalls
            .into_iter()
            .filter(|&(_, len)| ms(len) >= 50.0)
            .map(|(s, len)| (ms(s), ms(len)))
            .collect(),
        windows,
        error,
        started_unix_ms: 0,
    }
}

impl Drop for TcpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_and_windows_from_buckets() {
        // 10 buckets of 1000 bytes, 25 empty (250 ms), 15 of 1000, 3 empty at the end.
        let mut b = vec![0u64; 2];
        b.extend([1000; 10]);
        b.extend([0; 25]);
        b.extend([1000; 15]);
        b.extend([0; 3]);
        let r = report(&b, Duration::from_millis(550), 30_000, None);
        assert_eq!(r.bytes, 25_000);
        assert_eq!(r.longest_stall_ms, 250.0);
        assert_eq!(r.longest_stall_at_ms, 120.0);
        assert_eq!(r.stalls, vec![(120.0, 250.0)]);
        assert_eq!(r.windows.len(), 6);
        assert_eq!(r.windows[0], (0, 8000));
        assert_eq!(r.windows[1], (100, 2000));
        assert_eq!(r.windows[2], (200, 0));
        // 8000 bytes in 100 ms = 0.64 Mbit/s.
        assert!((r.mbit_s_between(0, 100) - 0.64).abs() < 1e-9);
        assert_eq!(r.mbit_s_between(10_000, 20_000), 0.0);
        // The last window is 50 ms long: 2000 bytes in it.
        assert_eq!(r.windows[5], (500, 2000));
        assert!((r.mbit_s_between(500, 600) - 0.32).abs() < 1e-9);
    }
}
