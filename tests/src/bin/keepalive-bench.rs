//! What keepalives cost the controller, end to end: the lab's real gateway and exit, N
//! sessions established by protocol-library clients over one socket, then authenticated
//! KEEPALIVEs from every session's binding:
//!
//! * `saturate`: as fast as the gateway answers (a window of requests in flight), to
//!   find how many keepalives one controller core answers per second;
//! * `paced`: at a given rate for the whole set of sessions (default: the agent's
//!   default schedule for idle sessions, docs/client.md "Keepalive schedule"), to
//!   measure the controller's CPU at that load, and extrapolate it to 1,000,000.
//!
//! The controller is pinned to CPU 0 and this process to CPU 1; CPU is the
//! controller process's user + system time from /proc over the phase.
//!
//! Run as root: `cargo run --release -p jvpn-tests --bin keepalive-bench -- [--sessions N]
//! [--secs S] [--rate PER_SESSION_PER_S]`. Progress goes to stderr; the figures end as
//! one JSON object on stdout.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use jvpn_ctl::{
    lab::gateway::Transport::Wifi,
    proto::{Body, ClientSession},
    udp_batch::{RecvBatch, SendBatch},
};
use jvpn_tests::{bench::machine::cpu_secs, gwlab::GwLab, tclient::now_ms};

const USAGE: &str = "usage: keepalive-bench [--sessions N] [--secs S] [--rate PER_SESSION_PER_S]";

struct Args {
    sessions: usize,
    secs: u64,
    /// Keepalives per session per second in the paced phase.
    rate: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        sessions: 100_000,
        secs: 5,
        rate: jvpn_ctl::client::config::idle_keepalives_per_s(3),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().context(USAGE)?;
        match flag.as_str() {
            "--sessions" => {
                a.sessions = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=200_000).contains(n))
                    .with_context(|| format!("--sessions {v:?}: a number from 1 to 200000"))?
            }
            "--secs" => {
                a.secs = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=600).contains(n))
                    .with_context(|| format!("--secs {v:?}: a number from 1 to 600"))?
            }
            "--rate" => {
                a.rate = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| *r > 0.0 && *r <= 100.0)
                    .with_context(|| {
                        format!("--rate {v:?}: keepalives per session per second, (0, 100]")
                    })?
            }
            _ => bail!("unknown argument {flag:?} ({USAGE})"),
        }
    }
    Ok(a)
}

fn keepalive(s: &mut ClientSession, mac: &ring::hmac::Key, out: &mut Vec<u8>) {
    s.next_ctr += 1;
    let msg = jvpn_ctl::proto::Control {
        session_id: s.session_id,
        ctr: s.next_ctr,
        body: Body::Keepalive {
            ts_ms: now_ms(),
            pad: 0,
        },
    }
    .encode(mac)
    .expect("a keepalive encodes");
    out.clear();
    out.extend_from_slice(&msg);
}

fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only read
    // and write that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid as i32, std::mem::size_of_val(&set), &set) != 0 {
            bail!(
                "pinning pid {pid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn pin_all_threads(pid: u32, cpu: usize) -> anyhow::Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: u32 = t?.file_name().to_string_lossy().parse()?;
        pin(tid, cpu)?;
    }
    Ok(())
}

struct Phase {
    sent: u64,
    answered: u64,
    secs: f64,
    cpu: f64,
}

impl Phase {
    fn json(&self) -> serde_json::Value {
        let per_s = self.answered as f64 / self.secs;
        let us = if self.answered > 0 {
            self.cpu * self.secs * 1e6 / self.answered as f64
        } else {
            0.0
        };
        serde_json::json!({
            "sent": self.sent,
            "answered": self.answered,
            "answered_per_s": per_s.round(),
            "controller_cpu": (self.cpu * 1000.0).round() / 1000.0,
            "controller_us_per_keepalive": (us * 100.0).round() / 100.0,
        })
    }
}

struct Sender {
    sock: UdpSocket,
    gw: SocketAddr,
    sessions: Vec<(ClientSession, ring::hmac::Key)>,
    next: usize,
    out: SendBatch,
    inb: RecvBatch,
    scratch: Vec<u8>,
}

impl Sender {
    /// Queues and sends `n` keepalives, round robin over the sessions.
    fn send(&mut self, n: usize) -> anyhow::Result<u64> {
        let mut sent = 0;
        for _ in 0..n {
            let i = self.next;
            self.next = (self.next + 1) % self.sessions.len();
            let (s, mac) = &mut self.sessions[i];
            keepalive(s, mac, &mut self.scratch);
            self.out.push(&self.scratch, self.gw);
            if self.out.is_full() {
                sent += self.flush()?;
            }
        }
        Ok(sent + self.flush()?)
    }

    fn flush(&mut self) -> anyhow::Result<u64> {
        let queued = self.out.len() as u64;
        loop {
            match self.out.send(self.sock.as_raw_fd(), |_, _| {}) {
                Ok(()) => return Ok(queued),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives what is there (nonblocking); the number of answers.
    fn drain(&mut self) -> u64 {
        let mut got = 0;
        while let Ok(n) = self.inb.recv(self.sock.as_raw_fd()) {
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        got
    }
}

fn saturate(s: &mut Sender, pid: u32, secs: u64) -> anyhow::Result<Phase> {
    const WINDOW: u64 = 512;
    let cpu0 = cpu_secs(pid)?;
    let t = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if sent.saturating_sub(answered) < WINDOW {
            sent += s.send(64)?;
        }
        let got = s.drain();
        answered += got;
        if got > 0 {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_millis(20) {
            // Answers lost (a full socket somewhere): open the window again.
            answered = sent.min(answered.max(sent.saturating_sub(WINDOW / 2)));
            last_progress = Instant::now();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = (cpu_secs(pid)? - cpu0) / secs;
    std::thread::sleep(Duration::from_millis(200));
    let late = s.drain();
    Ok(Phase {
        sent,
        answered: answered + late,
        secs,
        cpu,
    })
}

fn paced(s: &mut Sender, pid: u32, secs: u64, total_rate: f64) -> anyhow::Result<Phase> {
    let cpu0 = cpu_secs(pid)?;
    let t = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    while t.elapsed() < Duration::from_secs(secs) {
        let due = (t.elapsed().as_secs_f64() * total_rate) as u64;
        if due > sent {
            sent += s.send((due - sent).min(4096) as usize)?;
        }
        answered += s.drain();
        std::thread::sleep(Duration::from_micros(500));
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = (cpu_secs(pid)? - cpu0) / secs;
    std::thread::sleep(Duration::from_millis(200));
    answered += s.drain();
    Ok(Phase {
        sent,
        answered,
        secs,
        cpu,
    })
}

fn run(a: &Args) -> anyhow::Result<serde_json::Value> {
    let n = a.sessions;
    // Sessions stay ATTACHED whatever the pacing (no timer fires during the run).
    let mut lab = GwLab::start(
        "kab",
        "transport_loss_ttl_ms = 900000\nidle_loss_ttl_ms = 900000\nmax_recovery_window_ms = 900000\n",
    );
    lab.make_room(n)?;
    let pid = lab.stack.pid("gateway").context("the gateway's pid")?;
    pin_all_threads(pid, 0)?;
    eprintln!("gateway pid {pid} pinned to CPU 0");
    jvpn_ctl::bench::cpus::pin_current_thread(1)?;

    let sock = lab.lab.client.run(|| UdpSocket::bind("10.77.1.2:0"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    jvpn_ctl::udp_batch::set_buffers(sock.as_raw_fd(), 8 << 20, 8 << 20)?;
    let sessions = lab.establish(&sock, n)?;
    sock.set_nonblocking(true)?;
    let mut s = Sender {
        sock,
        gw: Wifi.gw_addr(),
        sessions,
        next: 0,
        out: SendBatch::new(64, 128),
        inb: RecvBatch::new(64, 128),
        scratch: Vec::with_capacity(128),
    };
    // Idle for a moment: the controller's own background (ticks, exit pings).
    let cpu0 = cpu_secs(pid)?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = (cpu_secs(pid)? - cpu0) / 2.0;
    // Late answers of the handshakes (repeated CONFIRMs) are not keepalive answers.
    s.drain();

    let sat = saturate(&mut s, pid, a.secs)?;
    eprintln!("saturate: {}", sat.json());
    let total = a.rate * n as f64;
    let pace = paced(&mut s, pid, a.secs, total)?;
    eprintln!("paced at {total:.0}/s: {}", pace.json());
    let per_ka = sat.cpu * sat.secs / sat.answered.max(1) as f64;
    let million = a.rate * 1e6 * per_ka + idle;
    Ok(serde_json::json!({
        "sessions": n,
        "idle_controller_cpu": (idle * 1000.0).round() / 1000.0,
        "saturate": sat.json(),
        "keepalives_per_core_s": (1.0 / per_ka).round(),
        "paced_rate_per_session": a.rate,
        "paced": pace.json(),
        "extrapolated_1m_sessions_cpu": (million * 100.0).round() / 100.0,
        "extrapolated_1m_from_paced_cpu":
            (((pace.cpu - idle) * 1e6 / n as f64 + idle) * 100.0).round() / 100.0,
    }))
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keepalive-bench: {e}");
            std::process::exit(2);
        }
    };
    if !jvpn_tests::is_root() {
        eprintln!("keepalive-bench: needs root (network namespaces, BPF)");
        std::process::exit(1);
    }
    match run(&a) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("keepalive-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}
