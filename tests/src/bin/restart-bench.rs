//! Restart-to-serving with many stored sessions, end to end: the lab's real gateway
//! and exit, N sessions established by protocol-library clients over one socket,
//! then `kill -9` of the gateway and a new one started on the same pins and store.
//! Timed from the kill to the first KEEPALIVE answered (the controller's loop runs:
//! every record is loaded and resumed) and to every session answering one.
//!
//! Run as root: `cargo run --release -p jvpn-tests --bin restart-bench -- [--sessions N]`.
//! Progress goes to stderr; the figures end as one JSON object on stdout.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use jvpn_ctl::{lab::gateway::Transport::Wifi, proto::Body};
use jvpn_tests::{gwlab::GwLab, tclient::now_ms};

const USAGE: &str = "usage: restart-bench [--sessions N]";

fn parse_args() -> anyhow::Result<usize> {
    let mut n = 100_000;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--sessions" => {
                let v = it.next().context(USAGE)?;
                n = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=200_000).contains(n))
                    .with_context(|| format!("--sessions {v:?}: a number from 1 to 200000"))?;
            }
            _ => bail!("unknown argument {flag:?} ({USAGE})"),
        }
    }
    Ok(n)
}

/// A KEEPALIVE of session `s`, with a fresh counter.
fn keepalive(s: &mut jvpn_ctl::proto::ClientSession, mac: &ring::hmac::Key) -> Vec<u8> {
    s.next_ctr += 1;
    jvpn_ctl::proto::Control {
        session_id: s.session_id,
        ctr: s.next_ctr,
        body: Body::Keepalive {
            ts_ms: now_ms(),
            pad: 0,
        },
    }
    .encode(mac)
    .expect("a keepalive encodes")
}

fn run(n: usize) -> anyhow::Result<serde_json::Value> {
    // Idle sessions stay ATTACHED for the whole run (no keepalives while N build up).
    let mut lab = GwLab::start(
        "rsb",
        "transport_loss_ttl_ms = 900000\nidle_loss_ttl_ms = 900000\nmax_recovery_window_ms = 900000\n",
    );
    lab.make_room(n)?;

    let sock = lab.lab.client.run(|| UdpSocket::bind("10.77.1.2:0"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sessions = lab.establish(&sock, n)?;
    let store = std::fs::metadata(lab.dir.join("state").join("sessions.redb"))?.len();

    // kill -9, start again; the first answer, then one from every session.
    sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let t = Instant::now();
    lab.stack.restart("gateway", true)?;
    let spawned = t.elapsed();
    let mut buf = [0u8; 2048];
    let first = loop {
        let (s, mac) = &mut sessions[0];
        let ka = keepalive(s, mac);
        sock.send_to(&ka, Wifi.gw_addr())?;
        if sock.recv_from(&mut buf).is_ok() {
            break t.elapsed();
        }
        ensure!(t.elapsed() < Duration::from_secs(120), "no answer in 120 s");
    };
    // Drain, then one KEEPALIVE per session, paced so the socket keeps up.
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut answered = 0usize;
    for chunk in sessions.chunks_mut(64) {
        for (s, mac) in chunk.iter_mut() {
            let ka = keepalive(s, mac);
            sock.send_to(&ka, Wifi.gw_addr())?;
        }
        for _ in 0..chunk.len() {
            if sock.recv_from(&mut buf).is_ok() {
                answered += 1;
            }
        }
    }
    let all = t.elapsed();
    eprintln!(
        "{n} stored sessions ({store} bytes of store): kill -9 to the first answer {first:.2?} \
         (the new process was spawned and listening after {spawned:.2?}); one KEEPALIVE from \
         every session answered ({answered} of {n}) after {all:.2?}"
    );
    ensure!(answered == n, "{answered} of {n} sessions answered");
    Ok(serde_json::json!({
        "sessions": n,
        "restart_to_first_answer_ms": (first.as_secs_f64() * 1e4).round() / 10.0,
        "restart_to_all_answered_ms": (all.as_secs_f64() * 1e4).round() / 10.0,
        "store_bytes": store,
    }))
}

fn main() {
    let n = match parse_args() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("restart-bench: {e}");
            std::process::exit(2);
        }
    };
    if !jvpn_tests::is_root() {
        eprintln!("restart-bench: needs root (network namespaces, BPF)");
        std::process::exit(1);
    }
    match run(n) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("restart-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}
